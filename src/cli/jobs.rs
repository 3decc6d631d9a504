//! `runbook-worker jobs` and `runbook-worker job ID`: read the job history of the worker
//! whose settings are loaded, read-only, also while that worker runs: the blob history the
//! replicas share with `coordination.kind = "azure-blob"`, else `<state.dir>/history.sqlite3`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use runbook_worker::coordination::CoordinationKind;
use runbook_worker::history::{
    self, Before, HistoryError, HistoryReader, JobDetail, JobFilter, JobHistory, JobId, JobStatus,
    JobSummary, LocalReports, NothingBefore, ReportBody, ReportFile,
};

use super::{Context, Output};

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only jobs of this runbook.
    #[arg(long, value_name = "NAME")]
    pub runbook: Option<String>,
    /// Only jobs with this status: Queued, Running, Completed, CompletedWithErrors, Failed,
    /// TimedOut, Cancelled, Skipped or Interrupted (any case).
    #[arg(long)]
    pub status: Option<JobStatus>,
    /// At most this many jobs, newest first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Only jobs created before this: an RFC 3339 instant (2026-03-29T10:00:00Z, as the
    /// API's `before` takes) or a job id (the last id of the previous page).
    #[arg(long, value_name = "INSTANT|ID")]
    pub before: Option<Before>,
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The job's id, as listed by `runbook-worker jobs`.
    pub id: JobId,
    /// Write this report file of the job (a `file` its `reports` list, e.g.
    /// `enable.csv`) to standard output, or to `--out`, instead of showing the job.
    #[arg(long, value_name = "FILE")]
    pub report: Option<String>,
    /// With `--report`: write the report to this file instead of standard output.
    #[arg(long, value_name = "PATH", requires = "report")]
    pub out: Option<PathBuf>,
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

/// The history the loaded settings name, for reading.
enum Reader {
    Local(HistoryReader),
    Shared(JobHistory),
}

impl Reader {
    /// Where the jobs are read from, for messages.
    fn describe(&self) -> String {
        match self {
            Reader::Local(reader) => reader.path().display().to_string(),
            Reader::Shared(_) => "the shared job history".to_string(),
        }
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, HistoryError> {
        match self {
            Reader::Local(reader) => reader.list_jobs(filter).await,
            Reader::Shared(history) => history.list_jobs(filter).await,
        }
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
        match self {
            Reader::Local(reader) => {
                let Some(mut detail) = reader.get_job(id).await? else {
                    return Ok(None);
                };
                detail.reports = self.list_reports(id).await?;
                Ok(Some(detail))
            }
            Reader::Shared(history) => history.get_job(id).await,
        }
    }

    async fn list_reports(&self, id: &JobId) -> Result<Vec<ReportFile>, HistoryError> {
        match self {
            Reader::Local(reader) => LocalReports::of(reader.path()).list(id).await,
            Reader::Shared(history) => history.list_reports(id).await,
        }
    }

    async fn open_report(
        &self,
        id: &JobId,
        file: &str,
    ) -> Result<Option<ReportBody>, HistoryError> {
        match self {
            Reader::Local(reader) => LocalReports::of(reader.path()).open(id, file).await,
            Reader::Shared(history) => history.open_report(id, file).await,
        }
    }
}

async fn open_history(ctx: Context) -> anyhow::Result<Reader> {
    if ctx.settings.coordination.kind == CoordinationKind::AzureBlob {
        let components = ctx
            .components(super::TargetArgs { simulate: false })
            .await?;
        let store = components
            .blob_history("cli")
            .context("cannot reach the shared job history")?;
        return Ok(Reader::Shared(store.into()));
    }
    let path = history::database_path(&ctx.settings.state.dir);
    // An absolute path in the message tells the operator which directory was searched.
    let path: PathBuf = std::path::absolute(&path).unwrap_or(path);
    Ok(Reader::Local(HistoryReader::open(&path)?))
}

pub async fn run_list(ctx: Context, args: JobsArgs) -> anyhow::Result<ExitCode> {
    let reader = open_history(ctx).await?;
    let before = args.before.map_or(Ok(None), Before::bound);
    let jobs = match before {
        // Before 1970: no job was created then.
        Err(NothingBefore) => Vec::new(),
        Ok(before) => {
            let filter = JobFilter {
                runbook: args.runbook,
                status: args.status,
                limit: usize::from(args.limit),
                before,
            };
            reader
                .list_jobs(&filter)
                .await
                .with_context(|| format!("cannot list jobs from {}", reader.describe()))?
        }
    };
    match args.output {
        // The same document as GET /api/jobs.
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "jobs": jobs }))?
        ),
        Output::Human if jobs.is_empty() => println!("no jobs match"),
        Output::Human => print!("{}", render_list(&jobs)),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_show(ctx: Context, args: JobArgs) -> anyhow::Result<ExitCode> {
    let reader = open_history(ctx).await?;
    if let Some(file) = &args.report {
        return write_report(&reader, &args.id, file, args.out.as_deref()).await;
    }
    let job = reader
        .get_job(&args.id)
        .await
        .with_context(|| format!("cannot read job {} from {}", args.id, reader.describe()))?;
    let Some(job) = job else {
        anyhow::bail!(
            "no job {} in {} (it may have been pruned; `runbook-worker jobs` lists the recorded ones)",
            args.id,
            reader.describe()
        );
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&job)?),
        Output::Human => print!("{}", render_detail(&job)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `job ID --report FILE [--out PATH]`: the report's bytes as stored, streamed.
async fn write_report(
    reader: &Reader,
    id: &JobId,
    file: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use futures::TryStreamExt as _;
    use tokio::io::AsyncWriteExt as _;

    let body = reader.open_report(id, file).await.with_context(|| {
        format!(
            "cannot read report {file} of job {id} from {}",
            reader.describe()
        )
    })?;
    let Some(body) = body else {
        anyhow::bail!(
            "job {id} has no report {file:?} in {} (`runbook-worker job {id}` lists its reports)",
            reader.describe()
        );
    };
    let mut target: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match out {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(tokio::io::stdout()),
    };
    let mut stream = body.stream;
    while let Some(chunk) = stream
        .try_next()
        .await
        .with_context(|| format!("cannot read report {file} of job {id}"))?
    {
        target
            .write_all(&chunk)
            .await
            .context("cannot write the report")?;
    }
    target.flush().await.context("cannot write the report")?;
    Ok(ExitCode::SUCCESS)
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

fn duration(job: &JobSummary) -> String {
    match (job.duration_ms, job.status) {
        (Some(ms), _) if ms < 1000 => "<1s".to_string(),
        (Some(ms), _) => humantime::format_duration(std::time::Duration::from_secs(
            u64::try_from(ms / 1000).unwrap_or(0),
        ))
        .to_string(),
        (None, JobStatus::Running) => "running".to_string(),
        (None, _) => "-".to_string(),
    }
}

fn render_list(jobs: &[JobSummary]) -> String {
    let header = [
        "ID",
        "RUNBOOK",
        "STATUS",
        "TRIGGER",
        "DRY RUN",
        "SCHEDULED (UTC)",
        "STARTED (UTC)",
        "DURATION",
    ];
    let rows: Vec<[String; 8]> = jobs
        .iter()
        .map(|job| {
            [
                job.id.to_string(),
                job.runbook.clone(),
                job.status.to_string(),
                job.trigger.to_string(),
                if job.dry_run { "yes" } else { "no" }.to_string(),
                time(job.scheduled_for),
                time(job.started_at),
                duration(job),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

fn render_detail(detail: &JobDetail) -> String {
    let job = &detail.job;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<11}{value}");
    };
    field("Job", job.id.as_str());
    field("Runbook", &format!("{} ({})", job.runbook, job.file_hash));
    field("Status", job.status.as_str());
    let trigger = if job.past_due {
        format!("{} (past due)", job.trigger)
    } else {
        job.trigger.to_string()
    };
    field("Trigger", &trigger);
    field("Dry run", if job.dry_run { "yes" } else { "no" });
    field("Scheduled", &time(job.scheduled_for));
    field("Created", &time(Some(job.created_at)));
    field("Started", &time(job.started_at));
    field("Ended", &time(job.ended_at));
    field("Duration", &duration(job));
    field("Replica", job.replica.as_deref().unwrap_or("-"));
    if !detail.reports.is_empty() {
        let files: Vec<String> = detail
            .reports
            .iter()
            .map(|r| format!("{} ({} bytes)", r.file, r.bytes))
            .collect();
        field("Reports", &files.join(", "));
    }
    if let Some(summary) = &job.summary {
        field("Summary", summary);
    }
    if let Some(error) = &job.error {
        field("Error", error);
    }
    field(
        "Params",
        &serde_json::to_string(&detail.params).unwrap_or_default(),
    );

    if !detail.steps.is_empty() {
        let _ = writeln!(out, "\nSteps");
        let width = detail
            .steps
            .iter()
            .map(|s| s.step.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
            "STEP", "READ", "DONE", "FAILED", "SKIPPED", "PLANNED"
        );
        for s in &detail.steps {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}",
                s.step, s.records_read, s.done, s.failed, s.skipped, s.writes_planned
            );
        }
    }

    let _ = writeln!(out, "\nStreams (UTC)");
    if detail.streams.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for entry in &detail.streams {
        let _ = writeln!(
            out,
            "  {}  {:<8}  {}",
            entry.time.format("%H:%M:%S%.3f"),
            entry.kind.as_str(),
            entry.text
        );
        if let Some(data) = &entry.data {
            let _ = writeln!(
                out,
                "  {:12}  {:<8}  {}",
                "",
                "",
                serde_json::to_string(data).unwrap_or_default()
            );
        }
    }
    for (kind, count) in &detail.dropped {
        let _ = writeln!(
            out,
            "  ({count} further {kind} entries were not kept: history.max_entries_per_stream)"
        );
    }
    out
}
