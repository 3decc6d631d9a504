//! `runbook-worker run NAME_OR_FILE [--dry-run] [--param k=v]… [--output text|json]`:
//! runs one job now, in the foreground, with the same executor `serve` uses, streams its
//! progress, records it in the job history (trigger `manual`) and ends with a summary.
//!
//! Exit status: 0 Completed, 1 Failed (also an invalid runbook or settings), 2
//! CompletedWithErrors, 3 TimedOut, 130 Cancelled (Ctrl-C).

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use runbook_worker::executor::{
    self, Both, FinalStatus, HistoryEvents, ItemOutcome, JobEvent, JobEvents, JobOutcome, JobSpec,
};
use runbook_worker::history::{self, NewJob, Trigger};
use runbook_worker::runbook::{self, ParamInput, Runbook};

use super::{Context, Output, TargetArgs};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A runbook's name in the runbooks folder ([runbooks] dir), or the path of a runbook
    /// file.
    #[arg(value_name = "NAME_OR_FILE")]
    pub runbook: String,
    /// Run read cmdlets for real and only print (and record) the writes, with their
    /// rendered parameters.
    #[arg(long)]
    pub dry_run: bool,
    /// Override a declared runbook parameter; repeatable (`--param team=Sales`).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// `text`: progress and a summary for people; `json`: one JSON event per line, the
    /// outcome last.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The exit status of each final status.
fn exit_code(status: FinalStatus) -> ExitCode {
    ExitCode::from(match status {
        FinalStatus::Completed => 0,
        FinalStatus::Failed => 1,
        FinalStatus::CompletedWithErrors => 2,
        FinalStatus::TimedOut => 3,
        FinalStatus::Cancelled => 130,
    })
}

pub async fn run(ctx: Context, args: RunArgs) -> anyhow::Result<ExitCode> {
    let runbook = Arc::new(resolve_runbook(&args.runbook, &ctx.settings)?);
    let params = parse_params(&args.params)?;
    // Every problem with the parameters, before anything is built or recorded: a mistake
    // on the command line is not a job.
    let resolved = runbook.resolve_params(params.clone()).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        anyhow!(
            "the parameters of runbook \"{}\" are not acceptable; nothing was run or recorded:\n{}",
            runbook.name,
            lines.join("\n")
        )
    })?;

    let ctx_env = ctx.env.clone();
    let components = ctx.components(args.target).await?;
    let executor = components.executor().map_err(|e| anyhow!("{e}"))?;
    let replica = components.replica_id(super::host_name(&ctx_env).as_deref());
    let (store, writer) = components
        .open_history_with(&replica, false)
        .await
        .context("cannot open the job history to record the job")?;
    let database = if store.is_shared() {
        "the shared job history".to_string()
    } else {
        history::database_path(&components.settings().state.dir)
            .display()
            .to_string()
    };
    let recorded_params = resolved.clone().into_iter().collect::<Map<String, Value>>();
    let id = store
        .create_job(NewJob {
            runbook: runbook.name.clone(),
            file_hash: runbook.hash.clone(),
            trigger: Trigger::Manual,
            scheduled_for: None,
            dry_run: args.dry_run,
            params: recorded_params,
        })
        .await?;
    store.mark_running(&id).await?;

    let terminal = Terminal::new(args.output);
    if args.output == Output::Human {
        terminal.line(&format!(
            "job {id}: {}{}",
            runbook.name,
            if args.dry_run {
                " (dry run: reads run, writes are only planned)"
            } else {
                ""
            }
        ));
    }
    let recorder = HistoryEvents::new(store.clone(), id.clone());
    let events = Both(&terminal, &recorder);
    let spec = JobSpec {
        id: id.clone(),
        runbook: runbook.clone(),
        trigger: Trigger::Manual,
        scheduled_for: Utc::now(),
        past_due: false,
        params: resolved,
        dry_run: args.dry_run,
    };
    let cancel = CancellationToken::new();
    let job = executor.run(spec, &events, cancel.clone());
    tokio::pin!(job);
    let outcome = tokio::select! {
        outcome = &mut job => outcome,
        Ok(()) = tokio::signal::ctrl_c() => {
            eprintln!("cancelling: stopping calls in flight (Ctrl-C)");
            cancel.cancel();
            job.await
        }
    };
    let mut recorded = recorder.finish(&outcome).await;
    if recorded.is_ok() {
        recorded = store.store_reports(&id, &outcome.reports).await;
    }
    let closed = store.close().await;
    let _ = writer.await;
    executor.shutdown().await;
    components.shutdown().await;

    terminal.summary(&outcome, &id.to_string(), &database);
    recorded.context("cannot record the job's outcome in the history")?;
    closed.context("cannot close the job history")?;
    Ok(exit_code(outcome.status))
}

/// A path (it exists, or names a `.toml` file) is loaded as a file; anything else is a
/// runbook name in the runbooks folder.
fn resolve_runbook(
    name_or_file: &str,
    settings: &runbook_worker::settings::Settings,
) -> anyhow::Result<Runbook> {
    let path = Path::new(name_or_file);
    let policy = &settings.policy;
    if path.is_file() || name_or_file.ends_with(".toml") || name_or_file.contains('/') {
        return runbook::load_file(path, policy).map_err(|errors| invalid(name_or_file, &errors));
    }
    let dir = &settings.runbooks.dir;
    let (catalog, errors) = runbook::load_folder(dir, policy);
    if let Some(found) = catalog
        .iter()
        .find(|rb| rb.name.eq_ignore_ascii_case(name_or_file))
    {
        return Ok(found.as_ref().clone());
    }
    let own: Vec<_> = errors
        .iter()
        .filter(|e| {
            runbook::runbook_name(Path::new(&e.file))
                .is_some_and(|n| n.eq_ignore_ascii_case(name_or_file))
        })
        .cloned()
        .collect();
    if !own.is_empty() {
        return Err(invalid(name_or_file, &own));
    }
    let names: Vec<&str> = catalog.names().collect();
    let hint = names
        .iter()
        .map(|n| {
            (
                strsim::jaro_winkler(&n.to_lowercase(), &name_or_file.to_lowercase()),
                n,
            )
        })
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| format!(" (did you mean \"{n}\"?)"))
        .unwrap_or_else(|| {
            if names.is_empty() {
                String::new()
            } else {
                format!(" (it has {})", names.join(", "))
            }
        });
    bail!(
        "no runbook named \"{name_or_file}\" in {}{hint}; give a runbook's name or the path of a .toml file (check [runbooks] dir)",
        dir.display()
    )
}

fn invalid(name: &str, errors: &[runbook::ValidationError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    anyhow!(
        "runbook {name} is invalid ({} error{}), fix it first (`runbook-worker validate` checks it):\n{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        lines.join("\n")
    )
}

fn parse_params(params: &[String]) -> anyhow::Result<Vec<(String, ParamInput)>> {
    params
        .iter()
        .map(|p| match p.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                Ok((key.trim().to_string(), ParamInput::Text(value.to_string())))
            }
            _ => Err(anyhow!(
                "--param {p:?}: expected KEY=VALUE such as --param team=Sales"
            )),
        })
        .collect()
}

/// Progress on stdout: one line per step, failure, warning and planned write, item counts
/// at most once a second, then the summary; or every event as a JSON line.
struct Terminal {
    output: Output,
    last_progress: Mutex<Option<Instant>>,
    /// Steps with `for_each`, whose item counts are worth a progress line.
    for_each_steps: Mutex<Vec<String>>,
}

/// How often item counts are printed while a step runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Terminal {
    fn new(output: Output) -> Self {
        Self {
            output,
            last_progress: Mutex::new(None),
            for_each_steps: Mutex::new(Vec::new()),
        }
    }

    fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
    }

    fn iterates(&self, step: &str) -> bool {
        self.for_each_steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s == step)
    }

    fn progress_due(&self) -> bool {
        let mut last = self.last_progress.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    fn text(&self, event: &JobEvent) -> Option<String> {
        match event {
            JobEvent::AttemptStarted {
                attempt, attempts, ..
            } => (*attempts > 1).then(|| format!("attempt {attempt} of {attempts}")),
            JobEvent::AttemptFailed {
                attempt,
                error,
                retry_in,
            } => Some(format!(
                "attempt {attempt} failed: {error}\nretrying in {}",
                humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1)))
            )),
            JobEvent::StepStarted {
                step,
                cmdlet,
                for_each,
                index,
                steps,
                total,
            } => {
                let items = match (for_each, total) {
                    (Some(source), Some(t)) => format!(": {t} items from {source}"),
                    (Some(source), None) => format!(": items from {source} as they arrive"),
                    (None, _) => String::new(),
                };
                if for_each.is_some() {
                    self.for_each_steps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(step.clone());
                }
                Some(format!("step {index}/{steps} {step} ({cmdlet}){items}"))
            }
            JobEvent::Item {
                step,
                outcome: ItemOutcome::Failed,
                target,
                error,
                ..
            } => Some(format!(
                "  failed: {step}{}: {}",
                target
                    .as_deref()
                    .map(|t| format!(" on '{t}'"))
                    .unwrap_or_default(),
                error.as_deref().unwrap_or("failed")
            )),
            JobEvent::Item {
                step,
                counts,
                total,
                ..
            } if self.iterates(step) && self.progress_due() => {
                let handled = counts.done + counts.failed + counts.skipped + counts.writes_planned;
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                Some(format!(
                    "  {step}: {handled}{of} items ({})",
                    executor::describe_counts(counts)
                        .split_once(": ")
                        .map(|(_, c)| c.to_string())
                        .unwrap_or_default()
                ))
            }
            JobEvent::Item { .. } | JobEvent::Progress { .. } => None,
            JobEvent::Warning {
                step,
                target,
                message,
            } => Some(format!(
                "  warning: {step}{}: {message}",
                target
                    .as_deref()
                    .map(|t| format!(" on '{t}'"))
                    .unwrap_or_default()
            )),
            JobEvent::Planned {
                cmdlet, parameters, ..
            } => Some(format!(
                "  plan: {}",
                executor::command_line(cmdlet, parameters)
            )),
            JobEvent::Report {
                step,
                path,
                records,
                ..
            } => Some(format!(
                "  report of {step}: {} ({records} records)",
                path.display()
            )),
            JobEvent::StepFinished { counts, .. } => {
                Some(format!("  {}", executor::describe_counts(counts)))
            }
        }
    }

    fn summary(&self, outcome: &JobOutcome, id: &str, recorded_in: &str) {
        match self.output {
            Output::Json => {
                let mut value = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
                if let Value::Object(map) = &mut value {
                    map.insert("event".into(), json!("outcome"));
                    map.insert("job_id".into(), json!(id));
                    map.insert("summary".into(), json!(outcome.summary()));
                }
                self.line(&value.to_string());
            }
            Output::Human => {
                let mut text = format!(
                    "{} in {} (job {id}, recorded in {})",
                    outcome.status,
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX)
                    )),
                    recorded_in
                );
                if outcome.attempts > 1 {
                    text.push_str(&format!(" after {} attempts", outcome.attempts));
                }
                for counts in &outcome.steps {
                    text.push_str(&format!("\n  {}", executor::describe_counts(counts)));
                }
                if let Some(error) = &outcome.error {
                    text.push_str(&format!("\nerror: {error}"));
                }
                self.line(&text);
            }
        }
    }
}

#[async_trait]
impl JobEvents for Terminal {
    async fn emit(&self, event: JobEvent) {
        match self.output {
            Output::Json => {
                if let Ok(text) = serde_json::to_string(&event) {
                    self.line(&text);
                }
            }
            Output::Human => {
                if let Some(text) = self.text(&event) {
                    self.line(&text);
                }
            }
        }
    }
}
