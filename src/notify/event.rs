//! What happened to a job, in the words targets subscribe to (pure).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::history::{JobStatus, StepCounts, Trigger};

/// An event a target can subscribe to (`events = [...]` in `[[notify.targets]]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    Failed,
    TimedOut,
    Interrupted,
    CompletedWithErrors,
    /// The overlap policy dropped an occurrence.
    Skipped,
    /// An occurrence was missed (the worker was down) and not caught up.
    Missed,
    /// The first success after a Failed, TimedOut or Interrupted job.
    Recovered,
    /// `runbook-worker notify test`: never chosen by a job, not subscribable.
    Test,
}

impl NotifyEvent {
    /// Every event a target may list, in documentation order.
    pub const SUBSCRIBABLE: [NotifyEvent; 7] = [
        NotifyEvent::Failed,
        NotifyEvent::TimedOut,
        NotifyEvent::Interrupted,
        NotifyEvent::CompletedWithErrors,
        NotifyEvent::Skipped,
        NotifyEvent::Missed,
        NotifyEvent::Recovered,
    ];

    /// What a target gets when it lists no `events`.
    pub const DEFAULT: [NotifyEvent; 4] = [
        NotifyEvent::Failed,
        NotifyEvent::TimedOut,
        NotifyEvent::Interrupted,
        NotifyEvent::Recovered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::TimedOut => "timed_out",
            NotifyEvent::Interrupted => "interrupted",
            NotifyEvent::CompletedWithErrors => "completed_with_errors",
            NotifyEvent::Skipped => "skipped",
            NotifyEvent::Missed => "missed",
            NotifyEvent::Recovered => "recovered",
            NotifyEvent::Test => "test",
        }
    }

    /// The webhook payload's `type`: `job.failed`, …; `notify.test` for a test message.
    pub fn type_name(self) -> String {
        match self {
            NotifyEvent::Test => "notify.test".to_string(),
            other => format!("job.{}", other.as_str()),
        }
    }

    /// Words for a headline: "Job failed: <runbook>".
    pub fn headline(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "Job failed",
            NotifyEvent::TimedOut => "Job timed out",
            NotifyEvent::Interrupted => "Job interrupted",
            NotifyEvent::CompletedWithErrors => "Job completed with errors",
            NotifyEvent::Skipped => "Occurrence skipped",
            NotifyEvent::Missed => "Occurrence missed",
            NotifyEvent::Recovered => "Job recovered",
            NotifyEvent::Test => "Test notification",
        }
    }

    /// A subscribable event by its settings name.
    pub fn parse(s: &str) -> Option<NotifyEvent> {
        Self::SUBSCRIBABLE.into_iter().find(|e| e.as_str() == s)
    }

    /// The event for a job that ended with `status` when the runbook's job before it ended
    /// with `previous`; `None` when nobody needs to hear about it (Completed without an
    /// earlier failure, Cancelled, or a status that is not final).
    pub fn for_job(status: JobStatus, previous: Option<JobStatus>) -> Option<NotifyEvent> {
        match status {
            JobStatus::Failed => Some(NotifyEvent::Failed),
            JobStatus::TimedOut => Some(NotifyEvent::TimedOut),
            JobStatus::Interrupted => Some(NotifyEvent::Interrupted),
            JobStatus::CompletedWithErrors => Some(NotifyEvent::CompletedWithErrors),
            JobStatus::Skipped => Some(NotifyEvent::Skipped),
            // CompletedWithErrors is not a failure here: a target on the default events
            // never heard of it, so "recovered" would answer a message it never got.
            JobStatus::Completed => previous
                .filter(|p| {
                    matches!(
                        p,
                        JobStatus::Failed | JobStatus::TimedOut | JobStatus::Interrupted
                    )
                })
                .map(|_| NotifyEvent::Recovered),
            JobStatus::Queued | JobStatus::Running | JobStatus::Cancelled => None,
        }
    }
}

impl std::fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a notification says about one job, as plain data the wiring fills in when a
/// job ends (or an occurrence is skipped or missed). See the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct JobNotice {
    pub runbook: String,
    /// The job's id; `None` for a missed occurrence that has no job.
    pub job_id: Option<String>,
    pub status: JobStatus,
    /// The final status of the runbook's job before this one, for `recovered`.
    pub previous: Option<JobStatus>,
    /// True for an occurrence that was missed and not run (`missed`); `status` is then
    /// ignored.
    pub missed: bool,
    pub trigger: Option<Trigger>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The job's terminating error, as recorded.
    pub error: Option<String>,
    /// What to do about the error, when known.
    pub hint: Option<String>,
    pub steps: Vec<StepCounts>,
    /// The first item errors (the payloads keep at most [`MAX_ITEM_ERRORS`]).
    pub item_errors: Vec<String>,
    pub dry_run: bool,
    /// The runbook's `notify` list; empty means `notify.default`.
    pub targets: Vec<String>,
}

/// How many item errors a message carries.
pub const MAX_ITEM_ERRORS: usize = 5;

impl JobNotice {
    /// A notice with only the identifying fields set; the rest start empty.
    pub fn new(runbook: impl Into<String>, job_id: Option<String>, status: JobStatus) -> Self {
        Self {
            runbook: runbook.into(),
            job_id,
            status,
            previous: None,
            missed: false,
            trigger: None,
            scheduled_for: None,
            started_at: None,
            ended_at: None,
            error: None,
            hint: None,
            steps: Vec::new(),
            item_errors: Vec::new(),
            dry_run: false,
            targets: Vec::new(),
        }
    }

    /// The event this notice is about, if any.
    pub fn event(&self) -> Option<NotifyEvent> {
        if self.missed {
            return Some(NotifyEvent::Missed);
        }
        NotifyEvent::for_job(self.status, self.previous)
    }

    /// Milliseconds from start to end, when both are known.
    pub fn duration_ms(&self) -> Option<i64> {
        match (self.started_at, self.ended_at) {
            (Some(start), Some(end)) if end >= start => Some((end - start).num_milliseconds()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_status_maps_to_the_event_people_subscribe_to() {
        use JobStatus as S;
        use NotifyEvent as E;
        let table = [
            (S::Failed, None, Some(E::Failed)),
            (S::TimedOut, Some(S::Completed), Some(E::TimedOut)),
            (S::Interrupted, None, Some(E::Interrupted)),
            (S::CompletedWithErrors, None, Some(E::CompletedWithErrors)),
            (S::Skipped, None, Some(E::Skipped)),
            (S::Completed, None, None),
            (S::Completed, Some(S::Completed), None),
            (S::Completed, Some(S::CompletedWithErrors), None),
            (S::Completed, Some(S::Cancelled), None),
            (S::Completed, Some(S::Failed), Some(E::Recovered)),
            (S::Completed, Some(S::TimedOut), Some(E::Recovered)),
            (S::Completed, Some(S::Interrupted), Some(E::Recovered)),
            (S::Cancelled, Some(S::Failed), None),
            (S::Running, None, None),
        ];
        for (status, previous, want) in table {
            assert_eq!(
                NotifyEvent::for_job(status, previous),
                want,
                "{status:?} after {previous:?}"
            );
        }
    }

    #[test]
    fn a_missed_occurrence_is_missed_whatever_its_status() {
        let mut notice = JobNotice::new("r", None, JobStatus::Skipped);
        notice.missed = true;
        assert_eq!(notice.event(), Some(NotifyEvent::Missed));
    }

    #[test]
    fn event_names_round_trip_and_test_is_not_subscribable() {
        for event in NotifyEvent::SUBSCRIBABLE {
            assert_eq!(NotifyEvent::parse(event.as_str()), Some(event));
        }
        assert_eq!(NotifyEvent::parse("test"), None);
        assert_eq!(NotifyEvent::Failed.type_name(), "job.failed");
        assert_eq!(NotifyEvent::Test.type_name(), "notify.test");
    }
}
