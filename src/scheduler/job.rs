//! One job's life as the scheduler sees it, in its own task: wait in the queue if it must,
//! claim the occurrence from the coordination store, record it in the history, hand it to
//! the [`JobRunner`] (the executor), record the outcome and tell the engine.
//!
//! The scheduler decides *when*; how a job runs is the runner's. This module only knows the
//! runner's contract: it gets a [`JobSpec`] and a cancellation token, writes its streams
//! itself, and returns a [`history::Outcome`](crate::history::Outcome) — a failed job is an
//! outcome, never an error. A runner that panics is caught here and recorded as Failed.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::coordination::{
    Claim, CoordinationError, Coordinator, FinalState, InterruptedOccurrence, OccurrenceGuard,
};
use crate::history::{
    JobHistory, JobId, JobStatus, NewJob, NewStreamEntry, Outcome, StreamKind, Trigger,
};
use crate::runbook::{JobSpec, Runbook};
use crate::telemetry::metrics::Metrics;

use super::ended::{self, Ended, JobEnded};
use super::handle::{Event, JobEvent, JobKey, RunError};

/// How a runner's job ended.
pub struct RunEnd {
    /// Must have a final status.
    pub outcome: Outcome,
    /// Stream entries the runner still buffers, written after the scheduler recorded the
    /// end (appending to a finished job is allowed; its status no longer changes).
    pub flush: Option<BoxFuture<'static, ()>>,
}

impl RunEnd {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            flush: None,
        }
    }
}

impl std::fmt::Debug for RunEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEnd")
            .field("outcome", &self.outcome)
            .field("flush", &self.flush.is_some())
            .finish()
    }
}

/// Runs one job: the executor, or a stand-in in tests.
#[async_trait::async_trait]
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job` to its end. When `cancel` fires the runner stops between two calls and
    /// returns a Cancelled outcome. It records its streams and step counts itself but not
    /// the end: the scheduler records the returned outcome (it may turn a job stopped by a
    /// lost lease into Interrupted), then awaits [`RunEnd::flush`].
    async fn run(&self, job: JobSpec, cancel: CancellationToken) -> RunEnd;
}

/// What a job must claim before it runs.
#[derive(Clone, Debug)]
pub(crate) enum ClaimKind {
    /// A manual or API run: no occurrence, nothing to claim.
    Nothing,
    /// A scheduled or catch-up occurrence at this instant of the schedule with this
    /// index (two schedules firing at one instant are two occurrences).
    Occurrence(DateTime<Utc>, usize),
    /// An occurrence a sweep found interrupted, run again.
    Rerun(Box<InterruptedOccurrence>),
}

/// When a job may start.
pub(crate) enum StartWhen {
    Now,
    /// Prepared ahead of its fire time: claimed and recorded at once, started at this
    /// instant (cancelling before then ends it Cancelled without running).
    At(DateTime<Utc>),
    /// Queued behind a running job of the same runbook: recorded Queued at once, started
    /// when the engine sends the signal (a dropped sender cancels it).
    Signalled(oneshot::Receiver<()>),
}

/// Everything the engine decided about one job.
pub(crate) struct JobOrder {
    pub key: JobKey,
    pub runbook: Arc<Runbook>,
    pub trigger: Trigger,
    pub claim: ClaimKind,
    /// The schedule whose occurrence this is (`None` for manual and API runs).
    pub schedule: Option<usize>,
    /// The occurrence's instant (`None` for manual and API runs).
    pub scheduled_for: Option<DateTime<Utc>>,
    /// When it should have started (the instant plus jitter), for the lateness metric.
    pub due_at: DateTime<Utc>,
    pub params: BTreeMap<String, Value>,
    pub dry_run: bool,
    pub start: StartWhen,
    /// For API runs: answered once the job is in the history.
    pub reply: Option<oneshot::Sender<Result<JobId, RunError>>>,
    pub cancel: CancellationToken,
}

/// What every job task shares.
pub(crate) struct JobContext {
    pub clock: SharedClock,
    pub history: JobHistory,
    pub coordinator: Coordinator,
    pub runner: Arc<dyn JobRunner>,
    pub metrics: Arc<Metrics>,
    pub replica_id: String,
    /// Azure mode: keep the cluster-wide schedule status (last fired) up to date.
    pub record_fired: bool,
    pub events: mpsc::UnboundedSender<Event>,
    /// Hears about every job end (notifications); see [`ended`].
    pub ended: Option<Arc<dyn JobEnded>>,
}

/// Sends `Finished` when the task ends, also when it unwinds from a panic, so the engine
/// never waits for a job that is gone.
struct FinishNotice {
    key: JobKey,
    events: mpsc::UnboundedSender<Event>,
    job_id: Option<JobId>,
    sent: bool,
}

impl FinishNotice {
    fn send(mut self, status: Option<JobStatus>) {
        self.sent = true;
        let _ = self.events.send(Event::Job(JobEvent::Finished {
            key: self.key,
            status,
            job_id: self.job_id.clone(),
            lost_job: None,
        }));
    }
}

impl Drop for FinishNotice {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.events.send(Event::Job(JobEvent::Finished {
                key: self.key,
                status: None,
                job_id: self.job_id.clone(),
                lost_job: self.job_id.clone(),
            }));
        }
    }
}

/// The reason recorded when another replica ran an occurrence this replica had queued.
const CLAIMED_ELSEWHERE: &str =
    "skipped: another replica claimed this occurrence first and runs it (see /api/occurrences)";
/// The reason recorded when the coordination lock of the runbook is held elsewhere.
const BUSY_ELSEWHERE: &str = "skipped: a job of this runbook was still running on another replica (overlap = \"skip\" across replicas)";

/// Runs one job task to its end. Never returns an error: every failure is recorded.
pub(crate) async fn run_job(ctx: Arc<JobContext>, order: JobOrder) {
    let JobOrder {
        key,
        runbook,
        trigger,
        claim,
        schedule,
        scheduled_for,
        due_at,
        params,
        dry_run,
        start,
        mut reply,
        cancel,
    } = order;
    let name = runbook.name.clone();
    let mut notice = FinishNotice {
        key,
        events: ctx.events.clone(),
        job_id: None,
        sent: false,
    };
    let new_job = NewJob {
        runbook: name.clone(),
        file_hash: runbook.hash.clone(),
        trigger,
        scheduled_for,
        dry_run,
        params: params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Map<String, Value>>(),
    };

    let ended_at = |job_id, started_at, notify| Ended {
        job_id,
        started_at,
        notify,
        ..Ended::new(&runbook, trigger, scheduled_for, dry_run, ctx.clock.now())
    };

    // 1. Queued behind another job: in the history from the moment it is due.
    let mut job_id = None;
    let mut start_at = None;
    if let StartWhen::At(at) = start {
        start_at = Some(at);
    } else if let StartWhen::Signalled(go) = start {
        let id = match record_queued(&ctx, &new_job, key, &mut reply).await {
            Some(id) => id,
            None => return notice.send(None),
        };
        notice.job_id = Some(id.clone());
        job_id = Some(id.clone());
        let started = tokio::select! {
            biased;
            () = cancel.cancelled() => false,
            signal = go => signal.is_ok(),
        };
        if !started {
            let outcome = Outcome::new(JobStatus::Cancelled)
                .with_error("cancelled while queued: it never started");
            finish(&ctx, &name, &id, outcome.clone(), None).await;
            ended::job_finished(&ctx, ended_at(Some(&id), None, true), &outcome).await;
            return notice.send(Some(JobStatus::Cancelled));
        }
    }

    // 2. Claim the occurrence: exactly one replica runs it.
    let guard = match claim_occurrence(&ctx, &runbook, &claim).await {
        Claimed::Acquired(guard) => guard,
        Claimed::Nothing => None,
        Claimed::Elsewhere => {
            if let Some(id) = &job_id {
                let outcome = Outcome::new(JobStatus::Skipped).with_error(CLAIMED_ELSEWHERE);
                finish(&ctx, &name, id, outcome.clone(), None).await;
                // The replica that ran it tells people.
                ended::job_finished(&ctx, ended_at(Some(id), None, false), &outcome).await;
                return notice.send(Some(JobStatus::Skipped));
            }
            return notice.send(None);
        }
        Claimed::Busy => {
            let id = record_skip(&ctx, &new_job, job_id.as_ref(), BUSY_ELSEWHERE).await;
            let outcome = Outcome::new(JobStatus::Skipped).with_error(BUSY_ELSEWHERE);
            ended::job_finished(&ctx, ended_at(id.as_ref(), None, true), &outcome).await;
            return notice.send(Some(JobStatus::Skipped));
        }
        Claimed::Failed(e) => {
            let reason = format!("not run: the coordination storage failed ({e})");
            tracing::warn!(runbook = %name, scheduled_for = ?scheduled_for, error = %e, "cannot claim an occurrence; this replica does not run it");
            if let Some(id) = &job_id {
                let outcome = Outcome::new(JobStatus::Skipped).with_error(reason);
                finish(&ctx, &name, id, outcome.clone(), None).await;
                ended::job_finished(&ctx, ended_at(Some(id), None, false), &outcome).await;
                return notice.send(Some(JobStatus::Skipped));
            }
            return notice.send(None);
        }
    };

    // 3. This replica's job from here on: record it (unless it was recorded as Queued).
    let job_id = match job_id {
        Some(id) => id,
        None => match record_queued(&ctx, &new_job, key, &mut reply).await {
            Some(id) => id,
            None => {
                if let Some(guard) = guard {
                    complete_occurrence(&name, guard, FinalState::Failed, None).await;
                }
                return notice.send(None);
            }
        },
    };
    notice.job_id = Some(job_id.clone());

    // Prepared ahead: wait for the fire time itself.
    if let Some(at) = start_at {
        let cancelled = tokio::select! {
            biased;
            () = cancel.cancelled() => true,
            () = ctx.clock.sleep_until(at) => false,
        };
        if cancelled {
            let outcome = Outcome::new(JobStatus::Cancelled)
                .with_error("cancelled before its start time: it never started");
            if let Some(guard) = guard {
                complete_occurrence(&name, guard, FinalState::Interrupted, Some(&job_id)).await;
            }
            finish(&ctx, &name, &job_id, outcome.clone(), None).await;
            ended::job_finished(&ctx, ended_at(Some(&job_id), None, true), &outcome).await;
            return notice.send(Some(JobStatus::Cancelled));
        }
    }

    if let Some(entry) =
        schedule.and_then(|i| runbook.schedule_entries.iter().find(|e| e.index == i))
    {
        record_schedule(&ctx, &job_id, entry, &params).await;
    }

    // The job starts now; its Running record is written alongside. The history's writer
    // takes commands in order, so the runner's first stream entries still land after it.
    let started_at = ctx.clock.now();
    let mark_running = async {
        if let Err(e) = ctx.history.mark_running(&job_id).await {
            tracing::error!(runbook = %name, job_id = %job_id, error = %e.chain(), "cannot record the job as running");
        }
    };
    let _ = ctx.events.send(Event::Job(JobEvent::Started { key }));
    ctx.metrics
        .schedule_lateness((started_at - due_at).to_std().unwrap_or_default());
    let running_gauge = ctx.metrics.job_running();
    tracing::info!(runbook = %name, job_id = %job_id, trigger = %trigger, scheduled_for = ?scheduled_for, "job started");

    // 4. Run it, cancelled by the engine (API, replace, shutdown) or by a lost lease.
    let spec = JobSpec {
        id: job_id.clone(),
        runbook: runbook.clone(),
        trigger,
        scheduled_for: scheduled_for.unwrap_or(started_at),
        past_due: trigger == Trigger::CatchUp,
        params,
        dry_run,
    };
    let lost = guard.as_ref().map(OccurrenceGuard::lost);
    let fired = async {
        if ctx.record_fired
            && let Some(instant) = scheduled_for
            && let Err(e) = ctx.coordinator.record_fired(&name, instant).await
        {
            tracing::warn!(runbook = %name, error = %e, "cannot update the schedule status in the coordination store");
        }
    };
    // `join!` polls in order: the Running record is sent before anything the runner sends.
    let ((), RunEnd { outcome, flush }, ()) = tokio::join!(
        mark_running,
        run_guarded(ctx.runner.clone(), spec, cancel, lost.clone()),
        fired
    );
    let outcome = if outcome.status.is_final() {
        outcome
    } else {
        // A runner must end with a final status; treat anything else as a failure.
        Outcome::new(JobStatus::Failed).with_error(format!(
            "the job ended without a final status ({}); please report it",
            outcome.status
        ))
    };
    let lease_lost = lost.is_some_and(|l| l.is_cancelled());
    let outcome = if lease_lost && outcome.status != JobStatus::Completed {
        let mut outcome = outcome;
        outcome.status = JobStatus::Interrupted;
        outcome.error = Some(
            "interrupted: this replica lost its coordination lease, so the job was stopped between calls (another replica may mark or rerun the occurrence)"
                .to_string(),
        );
        outcome
    } else {
        outcome
    };
    drop(running_gauge);

    // 5. Record the end: cluster-wide first (fenced), then locally.
    let status = outcome.status;
    if let Some(guard) = guard {
        complete_occurrence(&name, guard, final_state(status), Some(&job_id)).await;
    }
    let duration = (ctx.clock.now() - started_at).to_std().unwrap_or_default();
    finish(&ctx, &name, &job_id, outcome.clone(), Some(duration)).await;
    if let Some(flush) = flush {
        flush.await;
    }
    // The engine hears of the end first: a queued job of the runbook need not wait for the
    // history reads of the notice.
    notice.send(Some(status));
    ended::job_finished(
        &ctx,
        ended_at(Some(&job_id), Some(started_at), true),
        &outcome,
    )
    .await;
}

enum Claimed {
    Acquired(Option<OccurrenceGuard>),
    Nothing,
    Elsewhere,
    Busy,
    Failed(CoordinationError),
}

async fn claim_occurrence(ctx: &JobContext, runbook: &Runbook, claim: &ClaimKind) -> Claimed {
    let answer = match claim {
        ClaimKind::Nothing => return Claimed::Nothing,
        ClaimKind::Occurrence(instant, schedule) => {
            ctx.coordinator
                .claim_schedule(&runbook.name, *instant, *schedule, &ctx.replica_id)
                .await
        }
        ClaimKind::Rerun(interrupted) => {
            ctx.coordinator
                .claim_rerun(interrupted, &ctx.replica_id)
                .await
        }
    };
    match answer {
        Ok(Claim::Acquired(guard)) => Claimed::Acquired(Some(guard)),
        Ok(Claim::AlreadyClaimed) => Claimed::Elsewhere,
        Ok(Claim::Busy) => Claimed::Busy,
        Err(e) => Claimed::Failed(e),
    }
}

/// Records the job as Queued, tells the engine its id and answers the API caller.
async fn record_queued(
    ctx: &JobContext,
    job: &NewJob,
    key: JobKey,
    reply: &mut Option<oneshot::Sender<Result<JobId, RunError>>>,
) -> Option<JobId> {
    match ctx.history.create_job(job.clone()).await {
        Ok(id) => {
            let _ = ctx.events.send(Event::Job(JobEvent::Recorded {
                key,
                job_id: id.clone(),
            }));
            if let Some(reply) = reply.take() {
                let _ = reply.send(Ok(id.clone()));
            }
            Some(id)
        }
        Err(e) => {
            let reason = e.kind().as_str();
            tracing::error!(runbook = %job.runbook, scheduled_for = ?job.scheduled_for, reason, error = %e.chain(), "cannot record a job in the history; it does not run");
            ctx.metrics.occurrence_dropped(&job.runbook, reason);
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(RunError::History(e)));
            }
            None
        }
    }
}

/// Writes which schedule fired the job, and with which params, as the job's first Output
/// entry (`data.schedule`), so the history, the API and the dashboard show it.
async fn record_schedule(
    ctx: &JobContext,
    id: &JobId,
    entry: &crate::runbook::ScheduleEntry,
    params: &BTreeMap<String, Value>,
) {
    let text = format!(
        "fired by schedule {} ({}, {})",
        entry.index, entry.label, entry.timezone
    );
    let data = serde_json::json!({
        "schedule": {
            "index": entry.index,
            "cron": entry.label,
            "timezone": entry.timezone.name(),
            "params": entry.params,
        },
        "params": params,
    });
    let line = NewStreamEntry {
        kind: StreamKind::Output,
        text,
        data: Some(data),
    };
    if let Err(e) = ctx.history.append_stream(id, vec![line]).await {
        tracing::warn!(job_id = %id, error = %e.chain(), "cannot record which schedule fired the job");
    }
}

/// Records a Skipped occurrence; returns its job id when it is in the history.
async fn record_skip(
    ctx: &JobContext,
    job: &NewJob,
    recorded: Option<&JobId>,
    reason: &str,
) -> Option<JobId> {
    let result = match recorded {
        Some(id) => ctx
            .history
            .finish(id, Outcome::new(JobStatus::Skipped).with_error(reason))
            .await
            .map(|()| id.clone()),
        None => ctx.history.record_skipped(job.clone(), reason).await,
    };
    match result {
        Ok(id) => {
            ctx.metrics
                .job_recorded(&job.runbook, JobStatus::Skipped.as_str());
            Some(id)
        }
        Err(e) => {
            let reason = e.kind().as_str();
            tracing::warn!(runbook = %job.runbook, scheduled_for = ?job.scheduled_for, reason, error = %e.chain(), "cannot record a skipped occurrence");
            if recorded.is_none() {
                ctx.metrics.occurrence_dropped(&job.runbook, reason);
            }
            None
        }
    }
}

/// Records an overlap skip decided by the engine.
pub(crate) async fn record_overlap_skip(
    ctx: Arc<JobContext>,
    runbook: Arc<Runbook>,
    job: NewJob,
    reason: &'static str,
) {
    tracing::info!(runbook = %job.runbook, scheduled_for = ?job.scheduled_for, reason, "occurrence skipped");
    let id = record_skip(&ctx, &job, None, reason).await;
    let ended = Ended {
        job_id: id.as_ref(),
        ..Ended::new(
            &runbook,
            job.trigger,
            job.scheduled_for,
            job.dry_run,
            ctx.clock.now(),
        )
    };
    let outcome = Outcome::new(JobStatus::Skipped).with_error(reason);
    ended::job_finished(&ctx, ended, &outcome).await;
}

async fn finish(
    ctx: &JobContext,
    runbook: &str,
    id: &JobId,
    outcome: Outcome,
    ran_for: Option<std::time::Duration>,
) {
    let status = outcome.status;
    if let Err(e) = ctx.history.finish(id, outcome).await {
        if e.kind().is_transient() {
            tracing::error!(runbook, job_id = %id, status = %status, error = %e.chain(), "cannot record the end of a job yet; the history writer keeps it and writes it as soon as the database takes writes");
        } else {
            tracing::error!(runbook, job_id = %id, status = %status, error = %e.chain(), "cannot record the end of a job");
        }
    }
    match ran_for {
        Some(duration) => ctx.metrics.job_finished(runbook, status.as_str(), duration),
        None => ctx.metrics.job_recorded(runbook, status.as_str()),
    }
}

/// Runs the job, forwarding a lost lease to its cancellation, and turns a panic into a
/// Failed outcome.
async fn run_guarded(
    runner: Arc<dyn JobRunner>,
    spec: JobSpec,
    cancel: CancellationToken,
    lost: Option<CancellationToken>,
) -> RunEnd {
    let run_cancel = cancel.child_token();
    let run = AssertUnwindSafe(runner.run(spec, run_cancel.clone())).catch_unwind();
    tokio::pin!(run);
    let lost = lost.unwrap_or_default();
    let mut forwarded = false;
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            () = lost.cancelled(), if !forwarded => {
                forwarded = true;
                run_cancel.cancel();
            }
        }
    };
    match result {
        Ok(end) => end,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            tracing::error!(detail, "a job panicked; recorded as Failed");
            RunEnd::new(Outcome::new(JobStatus::Failed).with_error(format!(
                "the job stopped on an internal error (a panic: {detail}); please report it"
            )))
        }
    }
}

/// The cluster-wide record of a job that ended with `status`.
pub(crate) fn final_state(status: JobStatus) -> FinalState {
    match status {
        JobStatus::Completed | JobStatus::CompletedWithErrors => FinalState::Completed,
        JobStatus::Cancelled | JobStatus::Interrupted => FinalState::Interrupted,
        _ => FinalState::Failed,
    }
}

async fn complete_occurrence(
    runbook: &str,
    guard: OccurrenceGuard,
    state: FinalState,
    job_id: Option<&JobId>,
) {
    let scheduled_for = guard.scheduled_for();
    if let Err(e) = guard
        .complete(state, job_id.map(|id| id.as_str().to_string()))
        .await
    {
        tracing::warn!(runbook, %scheduled_for, error = %e, "cannot write the end of the occurrence to the coordination store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_statuses_map_to_occurrence_states() {
        let cases = [
            (JobStatus::Completed, FinalState::Completed),
            (JobStatus::CompletedWithErrors, FinalState::Completed),
            (JobStatus::Failed, FinalState::Failed),
            (JobStatus::TimedOut, FinalState::Failed),
            (JobStatus::Cancelled, FinalState::Interrupted),
            (JobStatus::Interrupted, FinalState::Interrupted),
        ];
        for (status, state) in cases {
            assert_eq!(final_state(status), state, "{status}");
        }
    }
}
