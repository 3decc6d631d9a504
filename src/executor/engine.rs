//! Runs one job: its attempts (whole-job retries), each attempt's stages, each stage's
//! steps and items.
//!
//! Everything of one job runs in the caller's task: items in flight are futures polled by
//! their step (a `FuturesUnordered` of at most `concurrency`), the steps of a stage and
//! their record sinks are joined, and records move between them through bounded channels.
//! Nothing is spawned, so nothing outlives the job, and dropping the job's future aborts its
//! HTTP requests. Stopping is cooperative first: a failure, the timeout or the cancellation
//! token cancel the stage's token, which the Exchange client honours between and during
//! requests, and every step stops pulling items and waits for its calls in flight to come
//! back (each is recorded); only if that takes longer than [`STOP_GRACE`] is the attempt
//! dropped.

use super::assets::{AssetError, Assets, MaskedEvents, Masker};
use secrecy::ExposeSecret as _;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::ops::RangeInclusive;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::exchange::{ExchangeClient, ExchangeError, InvokeOptions, cmdlet};
use crate::graph::{GraphClient, GraphError, GraphRequest};
use crate::history::StepCounts;
use crate::runbook::{
    CmdletPolicy, JobInfo, MAX_KEYS, PolicyDenial, RenderedGraphCall, Runbook, Step,
    TemplateContext, param_json,
};

use super::clients::ClientError;
use super::events::{ItemOutcome, JobEvent, JobEvents};
use super::outcome::{FinalStatus, JobOutcome};
use super::plan::RunPlan;
use super::report::ReportWriter;
use super::spool::{FileError, JsonLinesWriter, Resident, Tracked, read_json_lines};
use super::{ExecutorDeps, JobSpec};

/// Records buffered between a step and its sink, and between a sink and the next step.
pub(crate) const PIPE_CAPACITY: usize = 64;
/// How long a stopping attempt may take to wind down its calls before it is dropped.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);
/// The most records of one step kept in memory for `steps.<name>.records`.
pub const MAX_KEPT_RECORDS: usize = 50_000;

/// Why an attempt stopped. Displayed as the job's error line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error(
        "cmdlet \"{cmdlet}\" of step \"{step}\" is not allowed by the cmdlet policy: {denial} (the policy changed since the runbook was loaded; change [policy] or the runbook)"
    )]
    Policy {
        step: String,
        cmdlet: String,
        denial: PolicyDenial,
    },
    #[error("{0}")]
    Client(#[source] ClientError),
    #[error(
        "step \"{step}\" would make {would} changes{}, more than max_changes = {limit} allows; nothing was changed by this step: narrow its filter or raise max_changes",
        if *made > 0 { format!(" after the {made} this job already made") } else { String::new() }
    )]
    MaxChanges {
        step: String,
        would: u64,
        made: u64,
        limit: u64,
    },
    /// An item failed in a step without `continue_on_error`.
    #[error("step \"{step}\" failed{}: {message}", target.as_deref().map(|t| format!(" on '{t}'")).unwrap_or_default())]
    Step {
        step: String,
        target: Option<String>,
        message: String,
        /// The failure may pass by itself (throttling, a token, an unreachable or failing
        /// service on a read); a definite answer (a cmdlet's error, a template) would repeat.
        transient: bool,
    },
    #[error(
        "step \"{step}\" returned more than {MAX_KEPT_RECORDS} records, which a template reads as steps.{step}.records: narrow the step's filter or stop reading its records in templates"
    )]
    TooManyKept { step: String },
    #[error(
        "keys(\"{step}\", \"{field}\") would hold more than {MAX_KEYS} keys: narrow the step's filter so that the set of keys stays small"
    )]
    TooManyKeys { step: String, field: String },
    #[error("{0}")]
    File(#[from] FileError),
    /// The timeout or the cancellation token stopped the attempt.
    #[error("stopped")]
    Stopped,
    #[error("the job panicked (a bug in runbook-worker, please report it): {0}")]
    Panicked(String),
}

impl JobError {
    /// Whether another attempt could end differently: only transient failures. Failures
    /// found before anything was called (params, policy, client set-up, `max_changes`),
    /// definite answers of a cmdlet, templates and bugs would only repeat.
    fn retryable(&self) -> bool {
        match self {
            JobError::Step { transient, .. } => *transient,
            JobError::File(_) => true,
            _ => false,
        }
    }
}

/// The writes of a whole job, across its attempts: what `max_changes` counts and what
/// decides whether a failed attempt may be retried.
#[derive(Debug, Default)]
pub(crate) struct WriteLedger {
    /// Writes sent that may have changed something: confirmed, outcome unknown, or still
    /// in flight. A write is counted before it is sent (so concurrent items cannot pass
    /// `max_changes` together) and uncounted when Exchange answers that it did nothing.
    sent: AtomicU64,
    /// Writes Exchange answered (applied, possibly with non-terminating errors).
    confirmed: AtomicU64,
}

/// A [`WriteLedger`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Writes {
    pub confirmed: u64,
    /// Sent, and neither confirmed nor refused: a 5xx, a dropped connection, no answer,
    /// or cancelled in flight.
    pub unknown: u64,
}

impl WriteLedger {
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Counts a write about to be sent, unless that passes `limit`; returns the count.
    fn reserve(&self, limit: Option<u64>) -> Result<u64, u64> {
        let made = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        match limit {
            Some(limit) if made > limit => {
                self.sent.fetch_sub(1, Ordering::SeqCst);
                Err(limit)
            }
            _ => Ok(made),
        }
    }

    /// Exchange refused the write: it changed nothing.
    fn refused(&self) {
        self.sent.fetch_sub(1, Ordering::SeqCst);
    }

    fn confirmed(&self) {
        self.confirmed.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn writes(&self) -> Writes {
        let confirmed = self.confirmed.load(Ordering::SeqCst);
        Writes {
            confirmed,
            unknown: self.sent().saturating_sub(confirmed),
        }
    }
}

impl Writes {
    fn any(&self) -> bool {
        self.confirmed > 0 || self.unknown > 0
    }
}

impl std::fmt::Display for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} write(s) applied", self.confirmed)?;
        if self.unknown > 0 {
            write!(f, " and {} whose outcome is unknown", self.unknown)?;
        }
        Ok(())
    }
}

/// Why a Failed attempt is not retried although the runbook has retries left, for the
/// job's error line; `None` when it is retried.
pub(crate) fn retry_refusal(retryable: bool, writes: Writes) -> Option<String> {
    if writes.any() {
        return Some(format!(
            "not retried: the job had sent {writes}, which another attempt would send again; check their targets, then run the job again"
        ));
    }
    (!retryable).then(|| "not retried: another attempt would fail the same way".to_string())
}

/// How one attempt ended.
struct Attempt {
    status: FinalStatus,
    error: Option<String>,
    retryable: bool,
    steps: Vec<StepCounts>,
    reports: Vec<PathBuf>,
    peak: u64,
}

pub(crate) async fn run_job(
    deps: &ExecutorDeps,
    job: JobSpec,
    events: &dyn JobEvents,
    cancel: CancellationToken,
) -> JobOutcome {
    let span = tracing::info_span!(
        "job",
        runbook = %job.runbook.name,
        job_id = %job.id,
        trigger = %job.trigger,
        dry_run = job.dry_run,
    );
    async {
        let started = Instant::now();
        let assets = match JobAssets::resolve(&deps.assets, &job.runbook).await {
            Ok(assets) => assets,
            Err(e) => {
                let error = e.to_string();
                tracing::warn!(error = %error, "the job's vars or secrets are not available");
                return JobOutcome {
                    status: FinalStatus::Failed,
                    steps: Vec::new(),
                    error: Some(error),
                    duration: started.elapsed(),
                    attempts: 1,
                    reports: Vec::new(),
                    peak_records_in_memory: 0,
                };
            }
        };
        let masked = MaskedEvents {
            inner: events,
            masker: assets.masker.clone(),
        };
        if !job.runbook.vars_used.is_empty() || !job.runbook.secrets_used.is_empty() {
            masked
                .emit(JobEvent::AssetsUsed {
                    vars: assets.vars.clone(),
                    secrets: assets.secrets.keys().cloned().collect(),
                })
                .await;
        }
        let mut outcome = run_attempts(deps, &job, &masked, &cancel, &assets).await;
        outcome.error = assets.masker.opt(outcome.error);
        outcome
    }
    .instrument(span)
    .await
}

/// The vars and secret values one job's templates read, and the masker for its records.
pub(crate) struct JobAssets {
    pub vars: BTreeMap<String, Value>,
    pub secrets: BTreeMap<String, String>,
    pub masker: Masker,
}

impl JobAssets {
    async fn resolve(assets: &Assets, runbook: &Runbook) -> Result<Self, AssetError> {
        let vars = assets.vars_for(&runbook.vars_used)?;
        let secret_values = assets.secrets_for(&runbook.secrets_used).await?;
        let masker = Masker::new(secret_values.values());
        let secrets = secret_values
            .iter()
            .map(|(k, v)| (k.clone(), v.expose_secret().to_string()))
            .collect();
        Ok(Self {
            vars,
            secrets,
            masker,
        })
    }
}

async fn run_attempts(
    deps: &ExecutorDeps,
    job: &JobSpec,
    events: &dyn JobEvents,
    cancel: &CancellationToken,
    assets: &JobAssets,
) -> JobOutcome {
    let started = Instant::now();
    let retries = job.runbook.retries;
    let attempts = retries.attempts.saturating_add(1);
    // Job-wide, never reset: `max_changes` counts every write of the job, and a write
    // that was sent in any attempt is never sent again by a retry.
    let ledger = WriteLedger::default();
    let mut attempt = 1;
    loop {
        events
            .emit(JobEvent::AttemptStarted {
                attempt,
                attempts,
                dry_run: job.dry_run,
            })
            .await;
        let result = run_attempt(deps, job, events, cancel, attempt, &ledger, assets).await;
        let mut error = assets.masker.opt(result.error);
        tracing::info!(
            attempt,
            status = %result.status,
            error = error.as_deref().unwrap_or(""),
            "job attempt ended"
        );
        let retry_in = if result.status == FinalStatus::Failed && !cancel.is_cancelled() {
            retries.delay_before_retry(attempt).and_then(|delay| {
                match retry_refusal(result.retryable, ledger.writes()) {
                    None => Some(delay),
                    Some(refusal) => {
                        error = Some(match error.take() {
                            Some(e) => format!("{e}; {refusal}"),
                            None => refusal,
                        });
                        None
                    }
                }
            })
        } else {
            None
        };
        let mut outcome = JobOutcome {
            status: result.status,
            steps: result.steps,
            error,
            duration: started.elapsed(),
            attempts: attempt,
            reports: result.reports,
            peak_records_in_memory: result.peak,
        };
        let Some(delay) = retry_in else {
            return outcome;
        };
        events
            .emit(JobEvent::AttemptFailed {
                attempt,
                error: outcome.error.clone().unwrap_or_default(),
                retry_in: delay,
            })
            .await;
        let until = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| deps.clock.now().checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        tokio::select! {
            () = deps.clock.sleep_until(until) => {}
            () = cancel.cancelled() => {
                outcome.status = FinalStatus::Cancelled;
                outcome.error = Some(format!(
                    "cancelled while waiting to retry; attempt {attempt} had failed: {}",
                    outcome.error.unwrap_or_default()
                ));
                outcome.duration = started.elapsed();
                return outcome;
            }
        }
        attempt += 1;
    }
}

async fn run_attempt(
    deps: &ExecutorDeps,
    job: &JobSpec,
    events: &dyn JobEvents,
    cancel: &CancellationToken,
    attempt: u32,
    ledger: &WriteLedger,
    assets: &JobAssets,
) -> Attempt {
    let runbook = &job.runbook;
    let attempt_cancel = cancel.child_token();
    let timed_out = AtomicBool::new(false);
    let tmp = deps.state_dir.join("tmp").join(job.id.as_str());
    let run = AttemptRun {
        deps,
        job,
        runbook,
        assets,
        events,
        cancel: attempt_cancel.clone(),
        tmp: tmp.clone(),
        plan: RunPlan::new(runbook),
        counts: runbook
            .steps
            .iter()
            .map(|s| {
                Mutex::new(StepCounts {
                    step: s.name.clone(),
                    ..StepCounts::default()
                })
            })
            .collect(),
        gauge: Arc::new(Resident::default()),
        ledger,
        planned: AtomicU64::new(0),
        item_errors: AtomicBool::new(false),
        reports: Mutex::new(Vec::new()),
    };
    let work = AssertUnwindSafe(run.run()).catch_unwind();
    let timer = async {
        tokio::time::sleep(runbook.timeout).await;
        timed_out.store(true, Ordering::SeqCst);
        attempt_cancel.cancel();
        std::future::pending::<()>().await;
    };
    let grace = async {
        attempt_cancel.cancelled().await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    let result: Result<(), JobError> = tokio::select! {
        biased;
        result = work => result.unwrap_or_else(|panic| Err(JobError::Panicked(panic_message(panic.as_ref())))),
        () = grace => {
            tracing::warn!(attempt, "calls in flight did not stop in time; the attempt was dropped");
            Err(JobError::Stopped)
        }
        () = timer => Err(JobError::Stopped),
    };
    if let Err(e) = tokio::fs::remove_dir_all(&tmp).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %tmp.display(), error = %e, "cannot remove the job's temporary folder");
    }
    // An attempt dropped after the stop grace had no chance to discard its unfinished
    // reports; a `.partial` file must not outlive the job.
    remove_partial_reports(&deps.state_dir.join("reports").join(job.id.as_str())).await;
    let stopped = attempt_cancel.is_cancelled();
    let (status, error, retryable) = match result {
        Ok(()) if run.item_errors.load(Ordering::SeqCst) => (
            FinalStatus::CompletedWithErrors,
            Some("some items failed; see the job's errors".to_string()),
            false,
        ),
        Ok(()) => (FinalStatus::Completed, None, false),
        Err(e) if stopped && !e.is_own_failure() => {
            if timed_out.load(Ordering::SeqCst) {
                (
                    FinalStatus::TimedOut,
                    Some(format!(
                        "the job did not finish within its timeout of {} (raise timeout in the runbook or make the job smaller)",
                        super::describe_delay(runbook.timeout)
                    )),
                    false,
                )
            } else {
                (FinalStatus::Cancelled, Some("cancelled".to_string()), false)
            }
        }
        Err(e) => {
            let retryable = e.retryable();
            (FinalStatus::Failed, Some(e.to_string()), retryable)
        }
    };
    Attempt {
        status,
        error,
        retryable,
        steps: run
            .counts
            .iter()
            .map(|c| c.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect(),
        reports: run
            .reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        peak: run.gauge.peak(),
    }
}

impl JobError {
    /// Failures the job itself ran into, as opposed to having been stopped (calls
    /// cancelled in flight are counted apart and never become a step's error).
    fn is_own_failure(&self) -> bool {
        !matches!(self, JobError::Stopped)
    }
}

async fn remove_partial_reports(folder: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(folder).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "partial") {
            let _ = tokio::fs::remove_file(&path).await;
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// One attempt's state, shared by its steps.
struct AttemptRun<'a> {
    deps: &'a ExecutorDeps,
    job: &'a JobSpec,
    runbook: &'a Runbook,
    assets: &'a JobAssets,
    events: &'a dyn JobEvents,
    /// Cancelled by the caller's token, the timeout, or a failure.
    cancel: CancellationToken,
    tmp: PathBuf,
    plan: RunPlan,
    counts: Vec<Mutex<StepCounts>>,
    gauge: Arc<Resident>,
    /// The job's writes, across attempts (`max_changes`, retries).
    ledger: &'a WriteLedger,
    /// Writes planned by this attempt of a dry run, for `max_changes`: a retried dry run
    /// plans them again, having changed nothing.
    planned: AtomicU64,
    /// An item failed under `continue_on_error`, or Exchange reported a non-terminating
    /// error: the job completes with errors.
    item_errors: AtomicBool,
    reports: Mutex<Vec<PathBuf>>,
}

/// Items of a `for_each` step and how many there are, when known.
struct Items<'s> {
    stream: BoxStream<'s, Result<Tracked, JobError>>,
    total: Option<u64>,
}

/// How one item ended.
enum ItemEnd {
    Done {
        target: Option<String>,
    },
    Failed {
        target: Option<String>,
        error: String,
        /// Exchange reported non-terminating errors: recorded, never stops the step.
        non_terminating: bool,
        /// The call was cancelled because the step was stopping.
        cancelled: bool,
        /// Another attempt might succeed (see [`is_transient`]).
        transient: bool,
    },
    Skipped,
    Planned {
        target: Option<String>,
    },
    /// The next step stopped taking records; the stage is stopping.
    Stopped,
}

/// What a step's sink produced.
#[derive(Default)]
struct SinkEnd {
    kept: Option<Vec<Value>>,
    /// `keys("step", field)` sets: (field, lower-cased values).
    keys: Vec<(String, HashSet<String>)>,
    report: Option<ReportWriter>,
}

/// What a finished stage hands to the template context, by step index.
#[derive(Default)]
struct StageEnd {
    kept: BTreeMap<usize, Vec<Value>>,
    keys: BTreeMap<usize, Vec<(String, HashSet<String>)>>,
}

/// The clients one job's steps call.
struct JobClients {
    exchange: ExchangeClient,
    /// Built only for runbooks with Graph steps.
    graph: Option<GraphClient>,
}

type StepFuture<'f> = Pin<Box<dyn Future<Output = Result<SinkEnd, JobError>> + Send + 'f>>;

impl<'a> AttemptRun<'a> {
    async fn run(&self) -> Result<(), JobError> {
        let runbook = self.runbook;
        let params = self.job.params.clone();
        let policy = CmdletPolicy::new(&self.deps.policy);
        for step in &runbook.steps {
            policy
                .check(&step.cmdlet)
                .map_err(|denial| JobError::Policy {
                    step: step.name.clone(),
                    cmdlet: step.cmdlet.clone(),
                    denial,
                })?;
        }
        let exchange = self
            .deps
            .clients
            .client(runbook.organization.as_deref(), runbook.identity.as_ref())
            .map_err(JobError::Client)?;
        let graph = if runbook.steps.iter().any(|s| s.graph.is_some()) {
            Some(
                self.deps
                    .clients
                    .graph_client(runbook.organization.as_deref(), runbook.identity.as_ref())
                    .map_err(JobError::Client)?,
            )
        } else {
            None
        };
        let client = JobClients { exchange, graph };
        let info = JobInfo {
            id: self.job.id.to_string(),
            runbook: runbook.name.clone(),
            scheduled_for: self.job.scheduled_for,
        };
        let mut ctx = TemplateContext::new(&info, &params, self.deps.clock.now())
            .with_assets(&self.assets.vars, &self.assets.secrets);
        for stage in self.plan.stages() {
            if self.cancel.is_cancelled() {
                return Err(JobError::Stopped);
            }
            let mut end = self.run_stage(stage.clone(), &ctx, &client).await?;
            for index in stage {
                let step = &runbook.steps[index];
                let count = self.counts(index).records_read;
                ctx = ctx.with_step(&step.name, count, end.kept.remove(&index).as_deref());
                for (field, keys) in end.keys.remove(&index).unwrap_or_default() {
                    ctx = ctx.with_keys(&step.name, &field, keys);
                }
            }
        }
        Ok(())
    }

    fn counts(&self, index: usize) -> StepCounts {
        self.counts[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update_counts(&self, index: usize, change: impl FnOnce(&mut StepCounts)) -> StepCounts {
        let mut counts = self.counts[index].lock().unwrap_or_else(|p| p.into_inner());
        change(&mut counts);
        counts.clone()
    }

    fn spool_path(&self, index: usize) -> PathBuf {
        self.tmp
            .join(format!("{index}-{}.jsonl", self.runbook.steps[index].name))
    }

    /// The items of a stage's first step: `None` for a step without `for_each` (one call),
    /// else the spooled records of its source.
    async fn stage_items(&self, index: usize) -> Result<Option<Items<'static>>, JobError> {
        let step = &self.runbook.steps[index];
        let Some(source) = &step.for_each else {
            return Ok(None);
        };
        let Some(source_index) = self.runbook.steps.iter().position(|s| &s.name == source) else {
            return Ok(None);
        };
        let total = self.counts(source_index).records_read;
        let path = self.spool_path(source_index);
        if total == 0 && !path.exists() {
            return Ok(Some(Items {
                stream: futures::stream::empty().boxed(),
                total: Some(0),
            }));
        }
        let gauge = Arc::clone(&self.gauge);
        let stream = read_json_lines(&path)
            .await?
            .map(move |r| r.map(|v| Tracked::new(v, &gauge)).map_err(JobError::from))
            .boxed();
        Ok(Some(Items {
            stream,
            total: Some(total),
        }))
    }

    /// `max_changes`: before the first write of a `for_each`, counts the writes it would
    /// make (its source has finished; `when` applied) and refuses to start above the limit.
    async fn check_max_changes(&self, index: usize, ctx: &TemplateContext) -> Result<(), JobError> {
        let Some(limit) = self.runbook.max_changes else {
            return Ok(());
        };
        let step = &self.runbook.steps[index];
        if step.is_read() {
            return Ok(());
        }
        let would = match self.stage_items(index).await? {
            None => 1,
            Some(mut items) => {
                let mut would = 0u64;
                while let Some(item) = items.stream.next().await {
                    if self.cancel.is_cancelled() {
                        return Err(JobError::Stopped);
                    }
                    let item = item?;
                    // A `when` that cannot be evaluated fails that item later without a
                    // call, so it is not a change.
                    let matches = step.when.is_none() || {
                        let item_ctx = ctx.with_item(item.value());
                        let runbook = Arc::clone(&self.job.runbook);
                        off_runtime(move || {
                            runbook.steps[index]
                                .matches_when(&item_ctx)
                                .unwrap_or(false)
                        })
                        .await
                    };
                    if matches {
                        would += 1;
                    }
                }
                would
            }
        };
        let made = if self.job.dry_run {
            self.planned.load(Ordering::SeqCst)
        } else {
            self.ledger.sent()
        };
        if made.saturating_add(would) > limit {
            return Err(JobError::MaxChanges {
                step: step.name.clone(),
                would,
                made,
                limit,
            });
        }
        Ok(())
    }

    /// Runs the steps of one stage together; returns the records kept for templates.
    async fn run_stage(
        &self,
        stage: RangeInclusive<usize>,
        ctx: &TemplateContext,
        client: &JobClients,
    ) -> Result<StageEnd, JobError> {
        let head = *stage.start();
        self.check_max_changes(head, ctx).await?;
        let stage_cancel = self.cancel.child_token();
        let mut input = self.stage_items(head).await?;
        let mut futures: Vec<(usize, bool, StepFuture<'_>)> = Vec::new();
        for index in stage.clone() {
            let step = &self.runbook.steps[index];
            let plan = self.plan.steps[index];
            let report = match &step.output {
                // A dry run plans writes: they have no records to report.
                Some(spec) if !self.job.dry_run || step.is_read() => Some(
                    ReportWriter::create(
                        &self.deps.state_dir,
                        &self.tmp,
                        &self.job.id,
                        &step.name,
                        spec,
                    )
                    .await?,
                ),
                _ => None,
            };
            let (out, next_input) = if plan.has_sink() || report.is_some() {
                let (tx, rx) = mpsc::channel::<Tracked>(PIPE_CAPACITY);
                let (forward, next_input) = if plan.pipe_to_next {
                    let (ftx, frx) = mpsc::channel::<Tracked>(PIPE_CAPACITY);
                    let stream = futures::stream::unfold(frx, |mut rx| async move {
                        rx.recv().await.map(|t| (Ok(t), rx))
                    })
                    .boxed();
                    (
                        Some(ftx),
                        Some(Items {
                            stream,
                            total: None,
                        }),
                    )
                } else {
                    (None, None)
                };
                let sink = self.sink(index, rx, forward, report);
                futures.push((index, true, Box::pin(sink)));
                (Some(tx), next_input)
            } else {
                (None, None)
            };
            let items = input.take();
            let cancel = stage_cancel.clone();
            let run = async move {
                self.run_step(index, items, out, ctx, client, &cancel)
                    .await
                    .map(|()| SinkEnd::default())
            };
            futures.push((index, false, Box::pin(run)));
            input = next_input;
        }
        let results = futures::future::join_all(futures.into_iter().map(|(index, is_sink, f)| {
            let cancel = stage_cancel.clone();
            async move {
                let result = f.await;
                if result.is_err() {
                    // One failing step or sink stops the whole stage.
                    cancel.cancel();
                }
                (index, is_sink, result)
            }
        }))
        .await;

        let mut first_error: Option<JobError> = None;
        let mut stage_end = StageEnd::default();
        let mut reports = Vec::new();
        for (index, _is_sink, result) in results {
            match result {
                Ok(end) => {
                    if let Some(records) = end.kept {
                        stage_end.kept.insert(index, records);
                    }
                    if !end.keys.is_empty() {
                        stage_end.keys.insert(index, end.keys);
                    }
                    if let Some(report) = end.report {
                        reports.push(report);
                    }
                }
                Err(e) => {
                    let replace = match &first_error {
                        None => true,
                        Some(existing) => !existing.is_own_failure() && e.is_own_failure(),
                    };
                    if replace {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(error) = first_error {
            for report in reports {
                report.discard().await;
            }
            return Err(error);
        }
        for report in reports {
            let (step, format) = (report.step.clone(), report.format);
            let (path, records) = report.finish().await?;
            self.reports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(path.clone());
            self.events
                .emit(JobEvent::Report {
                    step,
                    path,
                    format,
                    records,
                })
                .await;
        }
        Ok(stage_end)
    }

    /// Takes a step's records as they come: writes its report and spool file, keeps them
    /// for templates, forwards them to the next step.
    async fn sink(
        &self,
        index: usize,
        mut records: mpsc::Receiver<Tracked>,
        forward: Option<mpsc::Sender<Tracked>>,
        mut report: Option<ReportWriter>,
    ) -> Result<SinkEnd, JobError> {
        let plan = self.plan.steps[index];
        let step = &self.runbook.steps[index];
        let mut spool = if plan.spool {
            Some(JsonLinesWriter::create(&self.spool_path(index)).await?)
        } else {
            None
        };
        let mut kept = plan.keep.then(Vec::new);
        let mut keys: Vec<(String, HashSet<String>)> = self
            .runbook
            .key_sets_needed()
            .get(step.name.as_str())
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| (f.to_string(), HashSet::new()))
                    .collect()
            })
            .unwrap_or_default();
        let mut forward = forward;
        while let Some(record) = records.recv().await {
            for (field, set) in &mut keys {
                if let Some(key) = key_of(record.value(), field)
                    && !set.contains(&key)
                {
                    if set.len() >= MAX_KEYS {
                        return Err(JobError::TooManyKeys {
                            step: step.name.clone(),
                            field: field.clone(),
                        });
                    }
                    set.insert(key);
                }
            }
            if let Some(report) = report.as_mut() {
                report.write(record.value()).await?;
            }
            if let Some(spool) = spool.as_mut() {
                spool.write(record.value()).await?;
            }
            if let Some(kept) = kept.as_mut() {
                if kept.len() >= MAX_KEPT_RECORDS {
                    return Err(JobError::TooManyKept {
                        step: step.name.clone(),
                    });
                }
                kept.push(record.value().clone());
            }
            if let Some(next) = &forward
                && next.send(record).await.is_err()
            {
                // The next step stopped; the stage is stopping with it.
                forward = None;
            }
        }
        if let Some(spool) = spool {
            spool.finish().await?;
        }
        Ok(SinkEnd { kept, keys, report })
    }

    /// Runs one step: one call, or one per item with at most `concurrency` in flight.
    async fn run_step(
        &self,
        index: usize,
        items: Option<Items<'_>>,
        out: Option<mpsc::Sender<Tracked>>,
        ctx: &TemplateContext,
        client: &JobClients,
        stage: &CancellationToken,
    ) -> Result<(), JobError> {
        let step = &self.runbook.steps[index];
        let total = match &items {
            None => Some(1),
            Some(items) => items.total,
        };
        self.events
            .emit(JobEvent::StepStarted {
                step: step.name.clone(),
                cmdlet: step.cmdlet.clone(),
                for_each: step.for_each.clone(),
                index: index + 1,
                steps: self.runbook.steps.len(),
                total,
            })
            .await;
        let concurrency = usize::try_from(step.concurrency.max(1)).unwrap_or(1);
        let mut items = items;
        let mut single = items.is_none();
        let mut input_done = false;
        let mut in_flight = FuturesUnordered::new();
        let mut failure: Option<JobError> = None;
        let mut cancelled_calls = 0u64;
        loop {
            let stopping = failure.is_some() || stage.is_cancelled();
            let can_pull = !stopping && !input_done && in_flight.len() < concurrency;
            if !can_pull && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(end) = in_flight.next(), if !in_flight.is_empty() => {
                    self.record_item(index, end, total, stage, &mut failure, &mut cancelled_calls).await;
                }
                next = next_item(&mut items, &mut single), if can_pull => match next {
                    None => input_done = true,
                    Some(Ok(item)) => in_flight.push(self.process_item(index, item, out.clone(), ctx, client, stage)),
                    Some(Err(e)) => {
                        failure = Some(e);
                        stage.cancel();
                    }
                },
                () = stage.cancelled(), if can_pull => {}
            }
        }
        drop(out);
        if cancelled_calls > 0 {
            self.events
                .emit(JobEvent::Warning {
                    step: step.name.clone(),
                    target: None,
                    message: format!(
                        "{cancelled_calls} call(s) in flight were stopped{}",
                        if step.is_read() {
                            String::new()
                        } else {
                            "; a write among them may or may not have been applied".to_string()
                        }
                    ),
                })
                .await;
        }
        self.events
            .emit(JobEvent::StepFinished {
                step: step.name.clone(),
                counts: self.counts(index),
            })
            .await;
        match failure {
            Some(e) => Err(e),
            None if stage.is_cancelled() && !input_done => Err(JobError::Stopped),
            None => Ok(()),
        }
    }

    /// Counts an ended item, tells the events, and decides whether the step goes on.
    async fn record_item(
        &self,
        index: usize,
        end: ItemEnd,
        total: Option<u64>,
        stage: &CancellationToken,
        failure: &mut Option<JobError>,
        cancelled_calls: &mut u64,
    ) {
        let step = &self.runbook.steps[index];
        let (outcome, target, error) = match end {
            ItemEnd::Stopped => return,
            ItemEnd::Failed {
                cancelled: true, ..
            } if stage.is_cancelled() => {
                *cancelled_calls += 1;
                return;
            }
            ItemEnd::Done { target } => (ItemOutcome::Done, target, None),
            ItemEnd::Skipped => (ItemOutcome::Skipped, None, None),
            ItemEnd::Planned { target } => (ItemOutcome::Planned, target, None),
            ItemEnd::Failed {
                target,
                error,
                non_terminating,
                transient,
                ..
            } => {
                if non_terminating || step.continue_on_error {
                    self.item_errors.store(true, Ordering::SeqCst);
                } else if failure.is_none() {
                    *failure = Some(JobError::Step {
                        step: step.name.clone(),
                        target: target.clone(),
                        message: error.clone(),
                        transient,
                    });
                    stage.cancel();
                }
                (ItemOutcome::Failed, target, Some(error))
            }
        };
        let counts = self.update_counts(index, |c| match outcome {
            ItemOutcome::Done => c.done += 1,
            ItemOutcome::Failed => c.failed += 1,
            ItemOutcome::Skipped => c.skipped += 1,
            ItemOutcome::Planned => c.writes_planned += 1,
        });
        self.events
            .emit(JobEvent::Item {
                step: step.name.clone(),
                outcome,
                target,
                error,
                counts,
                total,
            })
            .await;
    }

    /// One call of a step (for one item, or the step's only call).
    async fn process_item(
        &self,
        index: usize,
        item: Option<Tracked>,
        out: Option<mpsc::Sender<Tracked>>,
        ctx: &TemplateContext,
        client: &JobClients,
        stage: &CancellationToken,
    ) -> ItemEnd {
        let step = &self.runbook.steps[index];
        let item_ctx = match &item {
            Some(item) => ctx.with_item(item.value()),
            None => ctx.clone(),
        };
        // The record is not needed once it is in the template context.
        drop(item);
        let rendered = if step.has_templates() {
            let runbook = Arc::clone(&self.job.runbook);
            off_runtime(move || render(&runbook.steps[index], &item_ctx)).await
        } else {
            render(step, &item_ctx)
        };
        let parameters = match rendered {
            Rendered::Skip => return ItemEnd::Skipped,
            Rendered::Error(error) => {
                return ItemEnd::Failed {
                    target: None,
                    error,
                    non_terminating: false,
                    cancelled: false,
                    transient: false,
                };
            }
            Rendered::Call(parameters) => parameters,
            Rendered::Graph(call) => {
                return self
                    .graph_item(index, call, out, client.graph.as_ref(), stage)
                    .await;
            }
        };
        let target = cmdlet::target(&parameters);
        if !step.is_read() {
            if self.job.dry_run {
                self.planned.fetch_add(1, Ordering::SeqCst);
                self.events
                    .emit(JobEvent::Planned {
                        step: step.name.clone(),
                        cmdlet: step.cmdlet.clone(),
                        target: target.clone(),
                        parameters: parameters_json(&parameters),
                    })
                    .await;
                return ItemEnd::Planned { target };
            }
            // max_changes was checked against a count before the step started; this is
            // the backstop should the count and the calls ever disagree.
            if let Err(limit) = self.ledger.reserve(self.runbook.max_changes) {
                return ItemEnd::Failed {
                    target,
                    error: format!("not sent: the job reached max_changes = {limit}"),
                    non_terminating: false,
                    cancelled: false,
                    transient: false,
                };
            }
        }
        let write = !step.is_read();
        let mut invocation = client.exchange.invoke_with(
            &step.cmdlet,
            parameters,
            InvokeOptions {
                cancel: stage.child_token(),
                idempotent: false,
                log_target: target.as_deref().map(|t| self.assets.masker.text(t)),
            },
        );
        let mut issues = Vec::new();
        while let Some(page) = invocation.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    self.metric(&step.cmdlet, outcome_label(&e));
                    if write {
                        if may_have_applied(&e) {
                            tracing::warn!(step = %step.name, target = self.assets.masker.text(target.as_deref().unwrap_or("")), "a write's outcome is unknown");
                        } else {
                            self.ledger.refused();
                        }
                    }
                    return ItemEnd::Failed {
                        target,
                        cancelled: matches!(e, ExchangeError::Cancelled { .. }),
                        transient: is_transient(&e),
                        error: e.to_string(),
                        non_terminating: false,
                    };
                }
            };
            for warning in page.warnings {
                self.events
                    .emit(JobEvent::Warning {
                        step: step.name.clone(),
                        target: target.clone(),
                        message: warning,
                    })
                    .await;
            }
            issues.extend(page.errors);
            let records = page.records.into_iter().map(Value::Object);
            if !self.pass_records(index, records, out.as_ref()).await {
                if write {
                    self.ledger.confirmed();
                }
                return ItemEnd::Stopped;
            }
        }
        if write {
            self.ledger.confirmed();
        }
        if issues.is_empty() {
            self.metric(&step.cmdlet, "ok");
            return ItemEnd::Done { target };
        }
        self.metric(&step.cmdlet, "completed_with_errors");
        let error = issues
            .iter()
            .map(|issue| match issue.short_class() {
                Some(class) => format!("{class}: {}", issue.message),
                None => issue.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        ItemEnd::Failed {
            target,
            error: format!("{} reported errors: {error}", step.cmdlet),
            non_terminating: true,
            cancelled: false,
            transient: false,
        }
    }

    /// Counts a page's records and hands them to the step's sink; `false` when the sink
    /// stopped taking them.
    async fn pass_records(
        &self,
        index: usize,
        records: impl ExactSizeIterator<Item = Value>,
        out: Option<&mpsc::Sender<Tracked>>,
    ) -> bool {
        let step = &self.runbook.steps[index];
        let read = records.len() as u64;
        let records: Vec<Tracked> = records.map(|r| Tracked::new(r, &self.gauge)).collect();
        let counts = self.update_counts(index, |c| c.records_read += read);
        if step.for_each.is_none() {
            self.events
                .emit(JobEvent::Progress {
                    step: step.name.clone(),
                    counts,
                    total: None,
                })
                .await;
        }
        if let Some(out) = out {
            for record in records {
                if out.send(record).await.is_err() {
                    return false;
                }
            }
        }
        true
    }

    /// One Graph call of a step. Writes are planned in a dry run and counted by the
    /// ledger; the rendered call is checked against the policy again (a record's value
    /// fills the path); pages stream into the sink as they arrive.
    async fn graph_item(
        &self,
        index: usize,
        call: RenderedGraphCall,
        out: Option<mpsc::Sender<Tracked>>,
        client: Option<&GraphClient>,
        stage: &CancellationToken,
    ) -> ItemEnd {
        let step = &self.runbook.steps[index];
        let target = Some(call.path.clone());
        let failed = |error: String| ItemEnd::Failed {
            target: target.clone(),
            error,
            non_terminating: false,
            cancelled: false,
            transient: false,
        };
        let label = call.label();
        if let Err(denial) = CmdletPolicy::new(&self.deps.policy).check(&label) {
            return failed(format!(
                "Graph call \"{label}\" is not allowed by the policy: {denial}"
            ));
        }
        let write = !step.is_read();
        if write {
            if self.job.dry_run {
                self.planned.fetch_add(1, Ordering::SeqCst);
                let mut planned = serde_json::Map::new();
                if !call.query.is_empty() {
                    planned.insert("query".into(), pairs_json(&call.query));
                }
                if let Some(body) = &call.body {
                    planned.insert("body".into(), body.clone());
                }
                self.events
                    .emit(JobEvent::Planned {
                        step: step.name.clone(),
                        cmdlet: label,
                        target: target.clone(),
                        parameters: Value::Object(planned),
                    })
                    .await;
                return ItemEnd::Planned { target };
            }
            if let Err(limit) = self.ledger.reserve(self.runbook.max_changes) {
                return failed(format!("not sent: the job reached max_changes = {limit}"));
            }
        }
        let Some(client) = client else {
            if write {
                self.ledger.refused();
            }
            return failed(super::clients::ClientError::GraphNotConfigured.to_string());
        };
        let Ok(method) = reqwest::Method::from_bytes(call.method.as_bytes()) else {
            if write {
                self.ledger.refused();
            }
            return failed(format!("\"{}\" is not an HTTP method", call.method));
        };
        // Logs and errors name the call with secrets masked; the real path goes on the wire.
        let log_path = self.assets.masker.text(&call.path);
        let mut request = GraphRequest::new(method, call.path).cancel(stage.child_token());
        request.log_path = Some(log_path);
        request.query = call.query;
        request.headers = call.headers;
        request.body = call.body;
        let mut pages = client.request(request);
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => {
                    if !self
                        .pass_records(index, page.records.into_iter(), out.as_ref())
                        .await
                    {
                        if write {
                            self.ledger.confirmed();
                        }
                        return ItemEnd::Stopped;
                    }
                }
                Err(e) => {
                    self.metric(&step.cmdlet, graph_outcome_label(&e));
                    if write {
                        if graph_may_have_applied(&e) {
                            tracing::warn!(step = %step.name, target = target.as_deref().unwrap_or(""), "a Graph write's outcome is unknown");
                        } else {
                            self.ledger.refused();
                        }
                    }
                    return ItemEnd::Failed {
                        target,
                        cancelled: matches!(e.root(), GraphError::Cancelled { .. }),
                        transient: graph_transient(&e),
                        error: e.to_string(),
                        non_terminating: false,
                    };
                }
            }
        }
        if write {
            self.ledger.confirmed();
        }
        self.metric(&step.cmdlet, "ok");
        ItemEnd::Done { target }
    }

    fn metric(&self, cmdlet: &str, outcome: &str) {
        if let Some(metrics) = &self.deps.metrics {
            metrics.exchange_call(cmdlet, outcome);
        }
    }
}

/// The next item of a step: from its items, or the one call of a step without them.
async fn next_item(
    items: &mut Option<Items<'_>>,
    single: &mut bool,
) -> Option<Result<Option<Tracked>, JobError>> {
    match items {
        None if *single => {
            *single = false;
            Some(Ok(None))
        }
        None => None,
        Some(items) => items.stream.next().await.map(|r| r.map(Some)),
    }
}

/// Runs template work on the blocking pool. A render is bounded by its budget (see
/// [`crate::runbook::TEMPLATE_FUEL`]), but even a bounded render is CPU work that must not
/// hold up the runtime's worker threads: `/healthz`, the job's timeout and the shutdown
/// signal are served there. Awaited, never detached: should the job be dropped, the render
/// ends by itself within its budget. A panic inside is re-raised in the job's task, where
/// the job's boundary records it.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // The runtime is shutting down; the job is being dropped with it.
            Err(_) => std::future::pending().await,
        },
    }
}

enum Rendered {
    Skip,
    Error(String),
    Call(crate::exchange::Parameters),
    Graph(RenderedGraphCall),
}

fn render(step: &Step, ctx: &TemplateContext) -> Rendered {
    match step.matches_when(ctx) {
        Ok(false) => return Rendered::Skip,
        Err(e) => return Rendered::Error(e.to_string()),
        Ok(true) => {}
    }
    match step.render_graph(ctx) {
        Some(Ok(call)) => return Rendered::Graph(call),
        Some(Err(e)) => return Rendered::Error(e.to_string()),
        None => {}
    }
    match step.render_parameters(ctx) {
        Ok(parameters) => Rendered::Call(parameters),
        Err(e) => Rendered::Error(e.to_string()),
    }
}

/// Whether a failed write may have changed something: the request left and no definite
/// answer came back.
fn may_have_applied(error: &ExchangeError) -> bool {
    error.may_have_applied() || matches!(error, ExchangeError::IncompleteResults { .. })
}

/// Whether a call's failure may pass by itself, so that a later attempt could succeed:
/// throttling, tokens, an unreachable service, a read that kept failing or timed out. A
/// cmdlet's own error (a 4xx such as a `TaskException`), a refusal, a missing object or an
/// unknown write outcome is definite.
fn is_transient(error: &ExchangeError) -> bool {
    match error {
        ExchangeError::Throttled { .. }
        | ExchangeError::Token { .. }
        | ExchangeError::Transport { .. }
        | ExchangeError::Unavailable { .. }
        | ExchangeError::Timeout { .. } => true,
        ExchangeError::CmdletFailed { status, .. } => *status >= 500,
        ExchangeError::IncompleteResults { source, .. } => is_transient(source),
        _ => false,
    }
}

/// The metric outcome word of a failed call.
fn outcome_label(error: &ExchangeError) -> &'static str {
    match error {
        ExchangeError::Throttled { .. } => "throttled",
        ExchangeError::Cancelled { .. } => "cancelled",
        ExchangeError::NotFound { .. } => "not_found",
        ExchangeError::OutcomeUnknown { .. } => "outcome_unknown",
        ExchangeError::Unauthorized { .. } | ExchangeError::Forbidden { .. } => "denied",
        _ => "failed",
    }
}

/// Rendered parameters as plain JSON for a plan: what the operator reads, not the wire
/// encoding (datetimes as RFC 3339, hashtables as objects).
pub(crate) fn parameters_json(parameters: &crate::exchange::Parameters) -> Value {
    Value::Object(
        parameters
            .iter()
            .map(|(k, v)| (k.clone(), param_json(v)))
            .collect(),
    )
}

fn pairs_json(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The lower-cased value of `field` in a record (the property name matched without regard
/// to case: Graph writes `userPrincipalName`, Exchange `UserPrincipalName`), for
/// `keys()`. Strings, numbers and booleans make keys; anything else does not.
fn key_of(record: &Value, field: &str) -> Option<String> {
    let object = record.as_object()?;
    let value = object.get(field).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(field))
            .map(|(_, v)| v)
    })?;
    match value {
        Value::String(s) => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether a failed Graph write may have changed something (see [`may_have_applied`]).
fn graph_may_have_applied(error: &GraphError) -> bool {
    matches!(
        error,
        GraphError::OutcomeUnknown { .. }
            | GraphError::Cancelled { .. }
            | GraphError::Timeout { .. }
            | GraphError::IncompleteResults { .. }
    )
}

/// Whether a Graph call's failure may pass by itself (see [`is_transient`]).
fn graph_transient(error: &GraphError) -> bool {
    match error {
        GraphError::Throttled { .. }
        | GraphError::Token { .. }
        | GraphError::Transport { .. }
        | GraphError::Unavailable { .. }
        | GraphError::Timeout { .. } => true,
        GraphError::IncompleteResults { source, .. } => graph_transient(source),
        _ => false,
    }
}

fn graph_outcome_label(error: &GraphError) -> &'static str {
    match error.root() {
        GraphError::Throttled { .. } => "throttled",
        GraphError::Cancelled { .. } => "cancelled",
        GraphError::NotFound { .. } => "not_found",
        GraphError::OutcomeUnknown { .. } => "outcome_unknown",
        GraphError::Unauthorized { .. } | GraphError::Forbidden { .. } => "denied",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::ParamValue;
    use serde_json::json;

    #[test]
    fn planned_parameters_read_as_plain_json() {
        let t = chrono::DateTime::parse_from_rfc3339("2025-05-01T02:30:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let parameters: crate::exchange::Parameters = [
            ("Identity".to_string(), ParamValue::from("a@contoso.com")),
            ("Archive".to_string(), ParamValue::Bool(true)),
            ("Forward".to_string(), ParamValue::Null),
            ("Since".to_string(), ParamValue::DateTime(t)),
            (
                "EmailAddresses".to_string(),
                [("Add", "smtp:x@contoso.com")].into_iter().collect(),
            ),
            ("Rights".to_string(), vec!["Reviewer"].into()),
            ("Ratio".to_string(), ParamValue::Float(f64::NAN)),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            parameters_json(&parameters),
            json!({
                "Identity": "a@contoso.com",
                "Archive": true,
                "Forward": null,
                "Since": "2025-05-01T02:30:00Z",
                "EmailAddresses": {"Add": "smtp:x@contoso.com"},
                "Rights": ["Reviewer"],
                "Ratio": null,
            })
        );
    }

    #[test]
    fn keys_are_lower_cased_values_of_a_field_matched_without_regard_to_case() {
        let record = json!({"userPrincipalName": "Adele@Contoso.COM", "Size": 7, "Tags": ["x"]});
        assert_eq!(
            key_of(&record, "UserPrincipalName").as_deref(),
            Some("adele@contoso.com")
        );
        assert_eq!(key_of(&record, "size").as_deref(), Some("7"));
        assert_eq!(key_of(&record, "Tags"), None, "arrays make no key");
        assert_eq!(key_of(&record, "missing"), None);
        let text = JobError::TooManyKeys {
            step: "disabled".into(),
            field: "userPrincipalName".into(),
        }
        .to_string();
        assert!(
            text.contains("keys(\"disabled\", \"userPrincipalName\")")
                && text.contains(&MAX_KEYS.to_string())
                && text.contains("narrow the step's filter"),
            "{text}"
        );
    }

    #[test]
    fn only_failures_of_a_running_job_are_retried() {
        let table = [
            (
                JobError::Step {
                    step: "s".into(),
                    target: None,
                    message: "m".into(),
                    transient: true,
                },
                true,
            ),
            (
                JobError::Step {
                    step: "s".into(),
                    target: None,
                    message: "TaskException".into(),
                    transient: false,
                },
                false,
            ),
            (
                JobError::MaxChanges {
                    step: "s".into(),
                    would: 3,
                    made: 0,
                    limit: 2,
                },
                false,
            ),
            (JobError::Panicked("x".into()), false),
            (JobError::Stopped, false),
        ];
        for (error, retryable) in table {
            assert_eq!(error.retryable(), retryable, "{error}");
        }
    }

    #[test]
    fn a_job_that_sent_writes_is_never_retried_and_says_so() {
        let none = Writes::default();
        let applied = Writes {
            confirmed: 2,
            unknown: 0,
        };
        let unknown = Writes {
            confirmed: 0,
            unknown: 1,
        };
        assert_eq!(retry_refusal(true, none), None);
        let refusal = retry_refusal(false, none).unwrap();
        assert!(refusal.contains("would fail the same way"), "{refusal}");
        for (retryable, writes, expected) in [
            (true, applied, "2 write(s) applied,"),
            (
                false,
                unknown,
                "0 write(s) applied and 1 whose outcome is unknown",
            ),
        ] {
            let refusal = retry_refusal(retryable, writes).unwrap();
            assert!(
                refusal.contains(expected) && refusal.contains("send again"),
                "{refusal}"
            );
        }
    }

    #[test]
    fn the_ledger_counts_every_write_of_the_job_and_uncounts_refused_ones() {
        let ledger = WriteLedger::default();
        assert_eq!(ledger.reserve(Some(2)), Ok(1));
        ledger.confirmed();
        assert_eq!(ledger.reserve(Some(2)), Ok(2));
        // Refused by Exchange (a 400, a 429): it changed nothing, so it is not a change.
        ledger.refused();
        assert_eq!(ledger.reserve(Some(2)), Ok(2));
        // Sent, never answered: an unknown outcome still counts.
        assert_eq!(ledger.reserve(Some(2)), Err(2));
        assert_eq!(
            ledger.writes(),
            Writes {
                confirmed: 1,
                unknown: 1
            }
        );
    }

    #[test]
    fn the_max_changes_message_names_the_count_and_the_limit() {
        let cases = [
            (
                0,
                "step \"enable\" would make 612 changes, more than max_changes = 500 allows; nothing was changed by this step",
            ),
            (
                7,
                "step \"enable\" would make 612 changes after the 7 this job already made, more than max_changes = 500 allows",
            ),
        ];
        for (made, expected) in cases {
            let text = JobError::MaxChanges {
                step: "enable".into(),
                would: 612,
                made,
                limit: 500,
            }
            .to_string();
            assert!(text.starts_with(expected), "{text}");
        }
    }
}
