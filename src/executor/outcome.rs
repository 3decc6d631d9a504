//! How a job ended: [`JobOutcome`], what [`super::Executor::run`] always returns, and its
//! conversion into the history's record.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::history::{JobStatus, Outcome, StepCounts};

/// The final statuses a run can end in (the history knows more: Skipped, Interrupted …,
/// which only the scheduler records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum FinalStatus {
    /// Every step and every item succeeded.
    Completed,
    /// The job ran to its end, but items failed (`continue_on_error`) or Exchange reported
    /// non-terminating errors.
    CompletedWithErrors,
    /// A terminating error stopped the job (or it never started: bad params, policy,
    /// `max_changes`).
    Failed,
    /// The runbook's `timeout` stopped it.
    TimedOut,
    /// Stopped on request (the cancellation token).
    Cancelled,
}

impl FinalStatus {
    pub fn job_status(self) -> JobStatus {
        match self {
            FinalStatus::Completed => JobStatus::Completed,
            FinalStatus::CompletedWithErrors => JobStatus::CompletedWithErrors,
            FinalStatus::Failed => JobStatus::Failed,
            FinalStatus::TimedOut => JobStatus::TimedOut,
            FinalStatus::Cancelled => JobStatus::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.job_status().as_str()
    }
}

impl std::fmt::Display for FinalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobOutcome {
    pub status: FinalStatus,
    /// Counts per step of the last attempt, in runbook order (steps that never started
    /// are listed with zeros).
    pub steps: Vec<StepCounts>,
    /// Why the job did not complete cleanly, one line (None for Completed).
    pub error: Option<String>,
    /// From the start of the first attempt to the end of the last, retry waits included.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// Attempts made (1 + retries used).
    pub attempts: u32,
    /// Reports written by the last attempt.
    pub reports: Vec<PathBuf>,
    /// The most records held in memory at once by the last attempt's pipeline (pages in
    /// flight, channel buffers, items being processed; not `steps.x.records` kept for
    /// templates). Shows that memory follows the page size, not the number of records.
    pub peak_records_in_memory: u64,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl JobOutcome {
    /// A one-line result for lists: `find: 412 read; enable: 409 done, 3 failed`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .steps
            .iter()
            .filter(|s| s.records_read + s.done + s.failed + s.skipped + s.writes_planned > 0)
            .map(describe_counts)
            .collect();
        if parts.is_empty() {
            "nothing done".to_string()
        } else {
            parts.join("; ")
        }
    }

    /// The history's record of this outcome.
    pub fn to_history(&self) -> Outcome {
        let mut outcome = Outcome::new(self.status.job_status())
            .with_summary(self.summary())
            .with_steps(self.steps.clone());
        if let Some(error) = &self.error {
            outcome = outcome.with_error(error.clone());
        }
        outcome
    }
}

/// `enable: 409 done, 3 failed, 12 skipped` (zero counts left out).
pub fn describe_counts(counts: &StepCounts) -> String {
    let mut parts = Vec::new();
    for (n, what) in [
        (counts.records_read, "read"),
        (counts.done, "done"),
        (counts.failed, "failed"),
        (counts.skipped, "skipped"),
        (counts.writes_planned, "planned"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if parts.is_empty() {
        parts.push("nothing".to_string());
    }
    format!("{}: {}", counts.step, parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(
        step: &str,
        read: u64,
        done: u64,
        failed: u64,
        skipped: u64,
        planned: u64,
    ) -> StepCounts {
        StepCounts {
            step: step.to_string(),
            records_read: read,
            done,
            failed,
            skipped,
            writes_planned: planned,
        }
    }

    #[test]
    fn summaries_name_each_step_that_did_something() {
        let cases = [
            (vec![], "nothing done"),
            (vec![counts("find", 0, 0, 0, 0, 0)], "nothing done"),
            (
                vec![
                    counts("find", 412, 1, 0, 0, 0),
                    counts("enable", 0, 409, 3, 0, 0),
                ],
                "find: 412 read, 1 done; enable: 409 done, 3 failed",
            ),
            (
                vec![counts("clear", 0, 0, 0, 7, 2)],
                "clear: 7 skipped, 2 planned",
            ),
        ];
        for (steps, expected) in cases {
            let outcome = JobOutcome {
                status: FinalStatus::Completed,
                steps,
                error: None,
                duration: Duration::ZERO,
                attempts: 1,
                reports: Vec::new(),
                peak_records_in_memory: 0,
            };
            assert_eq!(outcome.summary(), expected);
        }
    }

    #[test]
    fn the_history_record_keeps_status_error_and_counts() {
        let outcome = JobOutcome {
            status: FinalStatus::TimedOut,
            steps: vec![counts("find", 3, 1, 0, 0, 0)],
            error: Some("timed out".into()),
            duration: Duration::from_secs(1),
            attempts: 1,
            reports: Vec::new(),
            peak_records_in_memory: 3,
        };
        let record = outcome.to_history();
        assert_eq!(record.status, JobStatus::TimedOut);
        assert_eq!(record.error.as_deref(), Some("timed out"));
        assert_eq!(record.steps, outcome.steps);
        assert_eq!(record.summary.as_deref(), Some("find: 3 read, 1 done"));
    }
}
