//! `runbook-worker run NAME_OR_FILE [--dry-run] [--plan-file PATH] [--param k=v]…
//! [--output human|json]`: runs one job now, in the foreground, with the same executor
//! `serve` uses, shows its progress, records it in the job history (trigger `manual`) and
//! ends with a summary.
//!
//! On a terminal (`--output human`), progress is a live bar per step and a dry run ends
//! with a summary of its plan; anywhere else (a pipe, a log) it is one line per event, and
//! `--output json` one JSON event per line.
//!
//! Exit status: 0 Completed, 1 Failed (also an invalid runbook or settings), 2
//! CompletedWithErrors, 3 TimedOut, 130 Cancelled (Ctrl-C).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use runbook_worker::executor::{
    self, Both, FinalStatus, HistoryEvents, ItemOutcome, JobEvent, JobEvents, JobOutcome, JobSpec,
};
use runbook_worker::history::{self, NewJob, StepCounts, Trigger};
use runbook_worker::runbook::{self, ParamInput, Runbook};

use super::{
    Context, EXIT_CANCELLED, EXIT_COMPLETED_WITH_ERRORS, EXIT_TIMED_OUT, Output, TargetArgs,
};

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
    /// With --dry-run: also write every planned write to this file, one JSON object a line
    /// (`step`, `cmdlet`, `target`, `parameters`), the same plan the job's history keeps.
    #[arg(long, value_name = "PATH", requires = "dry_run")]
    pub plan_file: Option<PathBuf>,
    /// Override a declared runbook parameter; repeatable (`--param team=Sales`).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// `human`: progress and a summary for people (live bars on a terminal, one line per
    /// event elsewhere); `json`: one JSON event per line, the outcome last.
    #[arg(long = "output", alias = "format", value_enum, default_value_t = Output::Human)]
    pub output: Output,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// The exit status of each final status.
fn exit_code(status: FinalStatus) -> ExitCode {
    match status {
        FinalStatus::Completed => ExitCode::SUCCESS,
        FinalStatus::Failed => ExitCode::FAILURE,
        FinalStatus::CompletedWithErrors => ExitCode::from(EXIT_COMPLETED_WITH_ERRORS),
        FinalStatus::TimedOut => ExitCode::from(EXIT_TIMED_OUT),
        FinalStatus::Cancelled => ExitCode::from(EXIT_CANCELLED),
    }
}

pub async fn run(ctx: Context, args: RunArgs) -> anyhow::Result<ExitCode> {
    let display = Display::for_stdout(args.output);
    let outcome = execute(ctx, args, display, Box::new(std::io::stdout())).await?;
    Ok(exit_code(outcome.status))
}

/// How `--output human` shows a job's progress.
pub(crate) enum Display {
    /// One line per step, failure, warning and planned write (a pipe, a log, a CI job):
    /// everything stays in the output.
    Lines,
    /// A live bar per step drawn to this target, and a plan summary instead of one line
    /// per planned write (a person at a terminal).
    Bars(ProgressDrawTarget),
}

impl Display {
    /// Bars when stdout is a terminal and the output is for people.
    fn for_stdout(output: Output) -> Self {
        Self::choose(output, std::io::stdout().is_terminal())
    }

    fn choose(output: Output, terminal: bool) -> Self {
        if output == Output::Human && terminal {
            Self::Bars(ProgressDrawTarget::stdout())
        } else {
            Self::Lines
        }
    }
}

/// Runs the job with `display`, writing what `run` prints to `out`.
pub(crate) async fn execute(
    ctx: Context,
    args: RunArgs,
    display: Display,
    out: Box<dyn Write + Send>,
) -> anyhow::Result<JobOutcome> {
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
    // An unwritable plan file is a mistake found before the job exists, too.
    let plan_file = match &args.plan_file {
        Some(path) => Some(PlanFile::create(path)?),
        None => None,
    };

    let ctx_env = ctx.env.clone();
    let components = ctx.components(args.target).await?;
    let executor = components.executor().map_err(|e| anyhow!("{e}"))?;
    let replica = components.replica_id(super::host_name(&ctx_env).as_deref());
    let history_cap = components.settings().history.max_entries_per_stream;
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

    let terminal = Terminal::new(args.output, display, out, plan_file);
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

    let plan_written = terminal.close_plan_file();
    terminal.summary(
        &outcome,
        &Where {
            id: id.as_str(),
            database: &database,
            plan_file: args.plan_file.as_deref(),
            history_cap,
            dry_run: args.dry_run,
        },
    );
    recorded.context("cannot record the job's outcome in the history")?;
    closed.context("cannot close the job history")?;
    plan_written?;
    Ok(outcome)
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

/// `--plan-file`: every planned write as a JSON line, written as the job plans it.
struct PlanFile {
    path: PathBuf,
    writer: BufWriter<File>,
    /// The first write error; later lines are not attempted.
    error: Option<std::io::Error>,
}

impl PlanFile {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| {
            format!(
                "--plan-file {}: cannot create the file (check the folder exists and is writable); nothing was run or recorded",
                path.display()
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
            error: None,
        })
    }

    fn write(&mut self, line: &Value) {
        if self.error.is_none()
            && let Err(e) = writeln!(self.writer, "{line}")
        {
            self.error = Some(e);
        }
    }

    fn close(mut self) -> anyhow::Result<()> {
        let flushed = match self.error.take() {
            Some(e) => Err(e),
            None => self.writer.flush(),
        };
        flushed.with_context(|| {
            format!(
                "cannot write the plan to {} (the job's history still has it)",
                self.path.display()
            )
        })
    }
}

/// How many planned writes the summary shows one by one.
const SUMMARY_WRITES: usize = 20;

/// A dry run's plan as the summary needs it: bounded by the runbook's cmdlets and
/// [`SUMMARY_WRITES`], whatever the size of the tenant.
#[derive(Debug, Default)]
struct PlanTally {
    total: u64,
    per_cmdlet: BTreeMap<String, u64>,
    first: Vec<String>,
}

impl PlanTally {
    fn add(&mut self, cmdlet: &str, parameters: &Value) {
        self.total += 1;
        *self.per_cmdlet.entry(cmdlet.to_string()).or_default() += 1;
        if self.first.len() < SUMMARY_WRITES {
            self.first.push(executor::command_line(cmdlet, parameters));
        }
    }
}

/// Where the job and its full plan are, for the summary.
struct Where<'a> {
    id: &'a str,
    /// Where the job is recorded, as a person reads it (a database path or the shared
    /// history).
    database: &'a str,
    plan_file: Option<&'a Path>,
    /// `history.max_entries_per_stream`: the plan entries the history keeps.
    history_cap: usize,
    dry_run: bool,
}

/// The plan summary a dry run on a terminal ends with.
fn plan_summary(tally: &PlanTally, at: &Where) -> String {
    if tally.total == 0 {
        return "plan: no writes (nothing would change)".to_string();
    }
    let mut out = format!(
        "plan: {} write{} a real run would make, by cmdlet:",
        tally.total,
        if tally.total == 1 { "" } else { "s" }
    );
    let width = tally.per_cmdlet.keys().map(String::len).max().unwrap_or(0);
    for (cmdlet, count) in &tally.per_cmdlet {
        out.push_str(&format!("\n  {cmdlet:<width$}  {count:>8}"));
    }
    let shown = tally.first.len();
    out.push_str(&if u64::try_from(shown).is_ok_and(|n| n == tally.total) {
        format!("\nall {shown}:")
    } else {
        format!("\nthe first {shown}:")
    });
    for line in &tally.first {
        out.push_str(&format!("\n  {line}"));
    }
    out.push_str(&format!(
        "\nthe full plan: `runbook-worker job {}` (its plan stream)",
        at.id
    ));
    let kept_whole = u64::try_from(at.history_cap).is_ok_and(|cap| tally.total <= cap);
    if !kept_whole {
        out.push_str(&format!(
            ", which keeps the first {} (history.max_entries_per_stream)",
            at.history_cap
        ));
    }
    match at.plan_file {
        Some(path) => out.push_str(&format!(
            ", and {} (every write, one JSON line each)",
            path.display()
        )),
        None => out.push_str("; --plan-file PATH writes every write as JSON lines"),
    }
    out
}

/// The live bars of a terminal, one per step.
struct Bars {
    multi: MultiProgress,
    steps: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn bar(&self, step: &str) -> Option<ProgressBar> {
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(step)
            .cloned()
    }

    /// A bar for a step, styled by [`bar_style`].
    fn start(&self, step: &str, prefix: String, for_each: bool, total: Option<u64>) {
        let bar = match (for_each, total) {
            (true, Some(t)) => ProgressBar::new(t),
            _ => ProgressBar::no_length(),
        }
        .with_style(bar_style(for_each, total.is_some()))
        .with_prefix(prefix);
        let bar = self.multi.add(bar);
        bar.enable_steady_tick(Duration::from_millis(200));
        self.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(step.to_string(), bar);
    }

    fn counts(&self, step: &str, counts: &StepCounts, total: Option<u64>, for_each: bool) {
        let Some(bar) = self.bar(step) else { return };
        // A streamed source's total, once known: the spinner becomes a bar.
        if let (true, Some(t), None) = (for_each, total, bar.length()) {
            bar.set_length(t);
            bar.set_style(bar_style(true, true));
        }
        bar.set_position(position(counts, for_each));
        bar.set_message(counts_only(counts));
    }

    fn finish(&self, step: &str, counts: &StepCounts, for_each: bool) {
        if let Some(bar) = self.bar(step) {
            bar.set_position(position(counts, for_each));
            bar.finish_with_message(counts_only(counts));
        }
    }
}

/// A bar with items done of the total when the total is known, a spinner with a count and
/// its rate while the source still streams, records read for a single call.
fn bar_style(for_each: bool, total_known: bool) -> ProgressStyle {
    let template = match (for_each, total_known) {
        (true, true) => "{prefix} [{bar:30}] {pos}/{len} items, {rate}, ETA {eta}  {msg}",
        (true, false) => "{spinner} {prefix} {pos} items, {rate}  {msg}",
        (false, _) => "{spinner} {prefix} {pos} records read, {rate}  {msg}",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1}/s", state.per_sec());
            },
        )
        .progress_chars("=> ")
}

/// What a step's bar counts: items for a `for_each` step, records read for a single call.
fn position(counts: &StepCounts, for_each: bool) -> u64 {
    if for_each {
        handled(counts)
    } else {
        counts.records_read
    }
}

/// Items of a `for_each` step that have ended, whatever their outcome.
fn handled(counts: &StepCounts) -> u64 {
    counts.done + counts.failed + counts.skipped + counts.writes_planned
}

/// "5 done, 1 failed" (the step's counts without its name).
fn counts_only(counts: &StepCounts) -> String {
    executor::describe_counts(counts)
        .split_once(": ")
        .map(|(_, c)| c.to_string())
        .unwrap_or_default()
}

/// What `run` prints: with [`Display::Lines`], one line per step, failure, warning and
/// planned write, item counts at most once a second, then the summary; with
/// [`Display::Bars`], the same lines less the plans and counts, which bars and a plan
/// summary show; or every event as a JSON line.
struct Terminal {
    output: Output,
    out: Mutex<Box<dyn Write + Send>>,
    bars: Option<Bars>,
    last_progress: Mutex<Option<Instant>>,
    /// Steps with `for_each`, whose item counts are worth a progress line.
    for_each_steps: Mutex<Vec<String>>,
    plan: Mutex<PlanTally>,
    plan_file: Mutex<Option<PlanFile>>,
}

/// How often item counts are printed while a step runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl Terminal {
    fn new(
        output: Output,
        display: Display,
        out: Box<dyn Write + Send>,
        plan_file: Option<PlanFile>,
    ) -> Self {
        let bars = match (output, display) {
            (Output::Human, Display::Bars(target)) => Some(Bars {
                multi: MultiProgress::with_draw_target(target),
                steps: Mutex::new(HashMap::new()),
            }),
            _ => None,
        };
        Self {
            output,
            out: Mutex::new(out),
            bars,
            last_progress: Mutex::new(None),
            for_each_steps: Mutex::new(Vec::new()),
            plan: Mutex::new(PlanTally::default()),
            plan_file: Mutex::new(plan_file),
        }
    }

    /// Prints a line; above the bars, which are redrawn after it.
    fn line(&self, text: &str) {
        let write = || {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        match &self.bars {
            Some(bars) => bars.multi.suspend(write),
            None => write(),
        }
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

    /// Every event that says something about the plan, whatever the display.
    fn record_plan(&self, event: &JobEvent) {
        let JobEvent::Planned {
            step,
            cmdlet,
            target,
            parameters,
        } = event
        else {
            return;
        };
        self.plan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(cmdlet, parameters);
        if let Some(file) = self
            .plan_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            file.write(&json!({
                "step": step,
                "cmdlet": cmdlet,
                "target": target,
                "parameters": parameters,
            }));
        }
    }

    fn close_plan_file(&self) -> anyhow::Result<()> {
        match self
            .plan_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(file) => file.close(),
            None => Ok(()),
        }
    }

    /// Moves the bars; `true` when the event needs no line of its own.
    fn draw(&self, bars: &Bars, event: &JobEvent) -> bool {
        match event {
            JobEvent::StepStarted {
                step,
                cmdlet,
                for_each,
                index,
                steps,
                total,
            } => {
                let from = for_each
                    .as_deref()
                    .map(|source| format!(" for each of {source}"))
                    .unwrap_or_default();
                bars.start(
                    step,
                    format!("step {index}/{steps} {step} ({cmdlet}{from})"),
                    for_each.is_some(),
                    *total,
                );
                true
            }
            JobEvent::Item {
                step,
                outcome,
                counts,
                total,
                ..
            } => {
                bars.counts(step, counts, *total, self.iterates(step));
                *outcome != ItemOutcome::Failed
            }
            JobEvent::Progress {
                step,
                counts,
                total,
            } => {
                bars.counts(step, counts, *total, self.iterates(step));
                true
            }
            JobEvent::StepFinished { step, counts } => {
                bars.finish(step, counts, self.iterates(step));
                true
            }
            JobEvent::Planned { .. } => true,
            _ => false,
        }
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
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                Some(format!(
                    "  {step}: {}{of} items ({})",
                    handled(counts),
                    counts_only(counts)
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
            JobEvent::AssetsUsed { vars, secrets } => {
                Some(format!("  {}", executor::describe_assets(vars, secrets)))
            }
        }
    }

    fn summary(&self, outcome: &JobOutcome, at: &Where) {
        match self.output {
            Output::Json => {
                let mut value = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
                if let Value::Object(map) = &mut value {
                    map.insert("event".into(), json!("outcome"));
                    map.insert("job_id".into(), json!(at.id));
                    map.insert("summary".into(), json!(outcome.summary()));
                }
                self.line(&value.to_string());
            }
            Output::Human => {
                if let Some(bars) = &self.bars {
                    // Bars of steps an error or Ctrl-C stopped stay as they were.
                    for bar in bars
                        .steps
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .values()
                    {
                        if !bar.is_finished() {
                            bar.abandon();
                        }
                    }
                    // The bars stay on screen as last drawn; what follows is printed below
                    // them instead of redrawing them after every line.
                    bars.multi.set_draw_target(ProgressDrawTarget::hidden());
                    if at.dry_run {
                        let plan = self.plan.lock().unwrap_or_else(|p| p.into_inner());
                        self.line(&plan_summary(&plan, at));
                    }
                }
                let mut text = format!(
                    "{} in {} (job {}, recorded in {})",
                    outcome.status,
                    humantime::format_duration(Duration::from_millis(
                        u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX)
                    )),
                    at.id,
                    at.database
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
        if let JobEvent::StepStarted {
            step,
            for_each: Some(_),
            ..
        } = &event
        {
            self.for_each_steps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(step.clone());
        }
        self.record_plan(&event);
        match self.output {
            Output::Json => {
                if let Ok(text) = serde_json::to_string(&event) {
                    self.line(&text);
                }
            }
            Output::Human => {
                if let Some(bars) = &self.bars
                    && self.draw(bars, &event)
                {
                    return;
                }
                if let Some(text) = self.text(&event) {
                    self.line(&text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runbook_worker::history::{HistoryReader, StreamKind};

    /// A runbook that plans two writes for each of 30 simulated mailboxes.
    const PLANNING_RUNBOOK: &str = r#"description = "Plans many writes"
timezone = "UTC"

[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
parameters = { ResultSize = "30" }

[[steps]]
name = "hide"
cmdlet = "Set-Mailbox"
for_each = "find"
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", HiddenFromAddressListsEnabled = true }

[[steps]]
name = "archive"
cmdlet = "Enable-Mailbox"
for_each = "find"
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", Archive = true }
"#;

    /// What `run` printed, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    struct DryRun {
        dir: tempfile::TempDir,
        printed: String,
        /// The job's plan stream in the history: (step, cmdlet, parameters) of each entry.
        plan: Vec<Value>,
    }

    /// A folder with [`PLANNING_RUNBOOK`] as `bulk`, and the context of a command run in it.
    fn workspace() -> (tempfile::TempDir, Context) {
        let dir = tempfile::tempdir().unwrap();
        let runbooks = dir.path().join("runbooks");
        std::fs::create_dir(&runbooks).unwrap();
        std::fs::write(runbooks.join("bulk.toml"), PLANNING_RUNBOOK).unwrap();
        let state = dir.path().join("state");
        let env: HashMap<String, String> = [
            ("RUNBOOK_WORKER__RUNBOOKS__DIR", &runbooks),
            ("RUNBOOK_WORKER__STATE__DIR", &state),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .collect();
        let settings = runbook_worker::settings::load(None, dir.path(), &env).unwrap();
        (dir, Context { settings, env })
    }

    fn dry_run_args(plan_file: Option<PathBuf>) -> RunArgs {
        RunArgs {
            runbook: "bulk".into(),
            dry_run: true,
            plan_file,
            params: Vec::new(),
            output: Output::Human,
            target: TargetArgs { simulate: true },
        }
    }

    /// A real dry run of [`PLANNING_RUNBOOK`] against the simulated tenant.
    async fn dry_run(display: Display, plan_file: bool) -> DryRun {
        let (dir, ctx) = workspace();
        let state = ctx.settings.state.dir.clone();
        let args = dry_run_args(plan_file.then(|| dir.path().join("plan.jsonl")));
        let captured = Captured::default();
        let outcome = execute(ctx, args, display, Box::new(captured.clone()))
            .await
            .unwrap();
        assert_eq!(outcome.status, FinalStatus::Completed);
        let reader = HistoryReader::open(&history::database_path(&state)).unwrap();
        let jobs = reader
            .list_jobs(&history::JobFilter::default())
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let job = reader.get_job(&jobs[0].id).await.unwrap().unwrap();
        let plan: Vec<Value> = job
            .streams
            .iter()
            .filter(|e| e.kind == StreamKind::Plan)
            .map(|e| e.data.clone().expect("a plan entry has its call"))
            .collect();
        DryRun {
            dir,
            printed: captured.text(),
            plan,
        }
    }

    #[tokio::test]
    async fn a_dry_run_on_a_terminal_ends_with_a_plan_summary_that_matches_the_history() {
        let run = dry_run(Display::Bars(ProgressDrawTarget::hidden()), false).await;
        assert_eq!(run.plan.len(), 60, "{}", run.printed);
        let mut per_cmdlet: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in &run.plan {
            *per_cmdlet
                .entry(entry["cmdlet"].as_str().unwrap())
                .or_default() += 1;
        }
        let text = &run.printed;
        assert!(
            text.contains("plan: 60 writes a real run would make, by cmdlet:"),
            "{text}"
        );
        for (cmdlet, count) in &per_cmdlet {
            assert!(
                text.lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>()
                        == [*cmdlet, &count.to_string()]),
                "{cmdlet} {count}: {text}"
            );
        }
        let first: Vec<String> = run.plan[..SUMMARY_WRITES]
            .iter()
            .map(|e| {
                format!(
                    "  {}",
                    executor::command_line(e["cmdlet"].as_str().unwrap(), &e["parameters"])
                )
            })
            .collect();
        let after = text
            .split("the first 20:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{text}"));
        let shown: Vec<&str> = after.lines().take(SUMMARY_WRITES).collect();
        assert_eq!(shown, first);
        assert!(text.contains("`runbook-worker job "), "{text}");
        assert!(text.contains("--plan-file PATH"), "{text}");
        // One line per write is what the summary replaces.
        assert!(!text.contains("  plan: "), "{text}");
        assert!(text.contains("Completed in"), "{text}");
    }

    #[tokio::test]
    async fn the_plan_file_holds_the_same_plan_as_the_history_and_the_summary_names_it() {
        let run = dry_run(Display::Bars(ProgressDrawTarget::hidden()), true).await;
        let path = run.dir.path().join("plan.jsonl");
        let written: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls = |entries: &[Value]| -> Vec<(Value, Value, Value)> {
            entries
                .iter()
                .map(|e| {
                    (
                        e["step"].clone(),
                        e["cmdlet"].clone(),
                        e["parameters"].clone(),
                    )
                })
                .collect()
        };
        assert_eq!(written.len(), 60);
        assert_eq!(calls(&written), calls(&run.plan));
        assert!(
            written.iter().all(|w| w["target"].is_string()),
            "{written:?}"
        );
        assert!(
            run.printed
                .contains(&format!("{} (every write", path.display())),
            "{}",
            run.printed
        );
    }

    #[tokio::test]
    async fn off_a_terminal_every_planned_write_keeps_its_own_line() {
        let run = dry_run(Display::Lines, false).await;
        let plans: Vec<&str> = run
            .printed
            .lines()
            .filter(|l| l.starts_with("  plan: "))
            .collect();
        assert_eq!(plans.len(), run.plan.len(), "{}", run.printed);
        assert!(!run.printed.contains("by cmdlet"), "{}", run.printed);
    }

    #[tokio::test]
    async fn an_unwritable_plan_file_is_refused_before_a_job_is_recorded() {
        let (dir, ctx) = workspace();
        let state = ctx.settings.state.dir.clone();
        let path = dir.path().join("no-such-folder").join("plan.jsonl");
        let error = execute(
            ctx,
            dry_run_args(Some(path.clone())),
            Display::Lines,
            Box::new(Captured::default()),
        )
        .await
        .expect_err("refused");
        let message = format!("{error:#}");
        assert!(message.contains("--plan-file"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            !history::database_path(&state).exists(),
            "a job was recorded"
        );
    }

    #[test]
    fn the_summary_says_when_the_history_keeps_only_part_of_the_plan() {
        let mut tally = PlanTally::default();
        for i in 0..1500 {
            tally.add("Set-Mailbox", &json!({ "Identity": format!("m{i}") }));
        }
        let at = |history_cap, plan_file| Where {
            id: "01JQ3Z8W6V3N9R2K5T7X4B1M0C",
            database: "state/history.sqlite3",
            plan_file,
            history_cap,
            dry_run: true,
        };
        let text = plan_summary(&tally, &at(1000, None));
        assert!(text.contains("plan: 1500 writes"), "{text}");
        assert!(text.contains("the first 20:"), "{text}");
        assert!(text.contains("keeps the first 1000"), "{text}");
        assert!(text.contains("--plan-file PATH"), "{text}");
        let whole = plan_summary(&tally, &at(5000, Some(Path::new("plan.jsonl"))));
        assert!(!whole.contains("keeps the first"), "{whole}");
        assert!(whole.contains("plan.jsonl (every write"), "{whole}");

        let mut few = PlanTally::default();
        few.add("Set-Mailbox", &json!({}));
        assert!(plan_summary(&few, &at(1000, None)).contains("plan: 1 write a real run"));
        assert!(plan_summary(&few, &at(1000, None)).contains("all 1:"));
        assert_eq!(
            plan_summary(&PlanTally::default(), &at(1000, None)),
            "plan: no writes (nothing would change)"
        );
    }

    #[test]
    fn bars_only_for_people_at_a_terminal() {
        assert!(matches!(
            Display::choose(Output::Human, true),
            Display::Bars(_)
        ));
        assert!(matches!(
            Display::choose(Output::Human, false),
            Display::Lines
        ));
        assert!(matches!(
            Display::choose(Output::Json, true),
            Display::Lines
        ));
    }

    /// A terminal with hidden bars, where step `hide` (for each of `find`) has started
    /// with this total; and its bar.
    async fn started_bar(total: Option<u64>) -> (Terminal, ProgressBar) {
        let terminal = Terminal::new(
            Output::Human,
            Display::Bars(ProgressDrawTarget::hidden()),
            Box::new(Captured::default()),
            None,
        );
        terminal
            .emit(JobEvent::StepStarted {
                step: "hide".into(),
                cmdlet: "Set-Mailbox".into(),
                for_each: Some("find".into()),
                index: 2,
                steps: 2,
                total,
            })
            .await;
        let bar = terminal.bars.as_ref().unwrap().bar("hide").unwrap();
        (terminal, bar)
    }

    /// An item of step `hide` ended, leaving the step with `counts`.
    fn hide_item(outcome: ItemOutcome, counts: StepCounts, total: Option<u64>) -> JobEvent {
        JobEvent::Item {
            step: "hide".into(),
            outcome,
            target: None,
            error: None,
            counts: StepCounts {
                step: "hide".into(),
                ..counts
            },
            total,
        }
    }

    #[tokio::test]
    async fn a_bar_counts_the_items_of_its_step_against_the_total() {
        let (terminal, bar) = started_bar(Some(3)).await;
        assert_eq!((bar.position(), bar.length()), (0, Some(3)));
        for done in 1..=2 {
            let counts = StepCounts {
                done,
                ..StepCounts::default()
            };
            terminal
                .emit(hide_item(ItemOutcome::Done, counts, Some(3)))
                .await;
        }
        assert_eq!(bar.position(), 2);
        assert_eq!(bar.message(), "2 done");
        terminal
            .emit(JobEvent::StepFinished {
                step: "hide".into(),
                counts: StepCounts {
                    step: "hide".into(),
                    done: 3,
                    ..StepCounts::default()
                },
            })
            .await;
        assert!(bar.is_finished());
        assert_eq!((bar.position(), bar.message().as_str()), (3, "3 done"));
    }

    #[tokio::test]
    async fn a_step_over_a_streaming_source_gets_its_total_once_known() {
        let (terminal, bar) = started_bar(None).await;
        assert_eq!(bar.length(), None);
        for (planned, total) in [(1, None), (2, Some(5))] {
            let counts = StepCounts {
                writes_planned: planned,
                ..StepCounts::default()
            };
            terminal
                .emit(hide_item(ItemOutcome::Planned, counts, total))
                .await;
        }
        assert_eq!((bar.position(), bar.length()), (2, Some(5)));
    }
}
