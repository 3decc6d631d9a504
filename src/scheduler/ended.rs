//! What the scheduler tells the outside when a job has its final status: one structured
//! `job_finished` log event (what Log Analytics alert rules query), the per-runbook
//! last-run and last-success gauges, and a [`JobNotice`] for whoever listens through
//! [`JobEnded`] (the notifier, wired by `app`).
//!
//! Runs in the job's own task or, for what the loop records itself (a missed occurrence,
//! an occurrence a sweep found interrupted), synchronously in the loop: [`JobEnded`] must
//! never block. Reading the previous status and the first item errors is a history read
//! made in the job's task, after its end is recorded, and only when someone listens.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::history::{JobFilter, JobId, JobStatus, Outcome, StreamKind, Trigger};
use crate::notify::{JobNotice, MAX_ITEM_ERRORS};
use crate::runbook::Runbook;

use super::job::JobContext;

/// Hears about every job that ends (and every occurrence skipped or missed) on this
/// replica. Called from job tasks and from the scheduler loop: it must return at once
/// (queue the notice, never wait on I/O).
pub trait JobEnded: Send + Sync + 'static {
    fn job_ended(&self, notice: JobNotice);
}

/// The value of the `event` field of the one log event each finished job emits.
pub const JOB_FINISHED: &str = "job_finished";

/// How many earlier jobs are read to find the previous final status (Skipped ones are
/// passed over: they did not run).
const PREVIOUS_LOOKBACK: usize = 20;

/// What is known of a job when it ends, besides its outcome.
pub(crate) struct Ended<'a> {
    pub runbook: &'a Arc<Runbook>,
    pub job_id: Option<&'a JobId>,
    pub trigger: Trigger,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub dry_run: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: DateTime<Utc>,
    /// Whether this replica owns the occurrence and so tells people (false for a queued
    /// occurrence another replica claimed and ran).
    pub notify: bool,
}

impl<'a> Ended<'a> {
    /// A job of `runbook` that ended at `ended_at` without starting, with no id yet, that
    /// this replica tells people about; callers set what else they know.
    pub fn new(
        runbook: &'a Arc<Runbook>,
        trigger: Trigger,
        scheduled_for: Option<DateTime<Utc>>,
        dry_run: bool,
        ended_at: DateTime<Utc>,
    ) -> Self {
        Ended {
            runbook,
            job_id: None,
            trigger,
            scheduled_for,
            dry_run,
            started_at: None,
            ended_at,
            notify: true,
        }
    }
}

/// Sums of the step counts, for the log event.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub records_read: u64,
    pub writes_applied: u64,
    pub writes_planned: u64,
    pub errors: u64,
}

impl Counts {
    pub fn of(outcome: &Outcome, dry_run: bool) -> Counts {
        let mut counts = Counts::default();
        for step in &outcome.steps {
            counts.records_read += step.records_read;
            counts.writes_planned += step.writes_planned;
            counts.errors += step.failed;
            // A dry run acts on nothing: its `done` items are what it would have done.
            if !dry_run {
                counts.writes_applied += step.done;
            }
        }
        counts
    }
}

/// Emits the `job_finished` log event and updates the last-run gauges (no I/O).
pub(crate) fn log_finished(ctx: &JobContext, ended: &Ended<'_>, outcome: &Outcome) {
    let counts = Counts::of(outcome, ended.dry_run);
    let duration_ms = ended
        .started_at
        .map(|start| (ended.ended_at - start).num_milliseconds().max(0))
        .unwrap_or(0);
    tracing::info!(
        event = JOB_FINISHED,
        runbook = %ended.runbook.name,
        job_id = ended.job_id.map(JobId::as_str).unwrap_or(""),
        status = outcome.status.as_str(),
        trigger = ended.trigger.as_str(),
        dry_run = ended.dry_run,
        duration_ms,
        records_read = counts.records_read,
        writes_applied = counts.writes_applied,
        writes_planned = counts.writes_planned,
        errors = counts.errors,
        error = outcome.error.as_deref().unwrap_or(""),
        "job finished"
    );
    if ended.started_at.is_some() {
        let success = outcome.status == JobStatus::Completed && !ended.dry_run;
        ctx.metrics
            .runbook_ran(&ended.runbook.name, ended.ended_at.timestamp(), success);
    }
}

/// A job recorded its final status: logs it and, when someone listens and this replica
/// owns the occurrence, hands them the notice (reading the previous status and the first
/// item errors from the history first).
pub(crate) async fn job_finished(ctx: &JobContext, ended: Ended<'_>, outcome: &Outcome) {
    log_finished(ctx, &ended, outcome);
    let Some(listener) = ctx.ended.as_ref().filter(|_| ended.notify) else {
        return;
    };
    let mut notice = notice(&ended, outcome);
    if let Some(id) = ended.job_id {
        // Only a success can be a recovery.
        if outcome.status == JobStatus::Completed {
            notice.previous = previous_status(ctx, &ended.runbook.name, id).await;
        }
        if outcome.status != JobStatus::Completed {
            notice.item_errors = item_errors(ctx, id, outcome.error.as_deref()).await;
        }
    }
    listener.job_ended(notice);
}

/// The notice for a job, without what needs the history.
pub(crate) fn notice(ended: &Ended<'_>, outcome: &Outcome) -> JobNotice {
    let mut notice = JobNotice::new(
        ended.runbook.name.clone(),
        ended.job_id.map(|id| id.as_str().to_string()),
        outcome.status,
    );
    notice.trigger = Some(ended.trigger);
    notice.scheduled_for = ended.scheduled_for;
    notice.started_at = ended.started_at;
    notice.ended_at = Some(ended.ended_at);
    notice.error = outcome.error.clone();
    notice.steps = outcome.steps.clone();
    notice.dry_run = ended.dry_run;
    notice.targets = ended.runbook.notify.clone();
    notice
}

/// The final status of the runbook's job before `id`, passing over Skipped ones.
async fn previous_status(ctx: &JobContext, runbook: &str, id: &JobId) -> Option<JobStatus> {
    let filter = JobFilter {
        runbook: Some(runbook.to_string()),
        status: None,
        limit: PREVIOUS_LOOKBACK,
        before: Some(id.clone()),
    };
    match ctx.history.list_jobs(&filter).await {
        Ok(jobs) => jobs
            .into_iter()
            .map(|j| j.status)
            .find(|s| s.is_final() && *s != JobStatus::Skipped),
        Err(e) => {
            tracing::warn!(runbook, job_id = %id, error = %e.chain(), "cannot read the previous job's status; a recovery is not announced");
            None
        }
    }
}

/// The first entries of the job's error stream other than its terminating error.
async fn item_errors(ctx: &JobContext, id: &JobId, error: Option<&str>) -> Vec<String> {
    match ctx.history.get_job(id).await {
        Ok(Some(job)) => job
            .streams
            .into_iter()
            .filter(|e| e.kind == StreamKind::Error && Some(e.text.as_str()) != error)
            .take(MAX_ITEM_ERRORS)
            .map(|e| e.text)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e.chain(), "cannot read the job's errors for its notification");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::StepCounts;

    #[test]
    fn counts_add_up_the_steps_and_a_dry_run_applies_nothing() {
        let outcome = Outcome::new(JobStatus::CompletedWithErrors).with_steps(vec![
            StepCounts {
                step: "read".into(),
                records_read: 10,
                ..StepCounts::default()
            },
            StepCounts {
                step: "write".into(),
                done: 7,
                failed: 2,
                writes_planned: 3,
                ..StepCounts::default()
            },
        ]);
        assert_eq!(
            Counts::of(&outcome, false),
            Counts {
                records_read: 10,
                writes_applied: 7,
                writes_planned: 3,
                errors: 2
            }
        );
        assert_eq!(Counts::of(&outcome, true).writes_applied, 0);
    }
}
