//! The records of the job history as callers write and read them. These types are also the
//! JSON the HTTP API returns, so field names are part of the API.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::id::JobId;

/// Where a job is in its life. Queued and Running are the only non-final states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    /// Due and recorded; waiting to start (for a slot, or behind a running job).
    Queued,
    Running,
    /// Every step succeeded.
    Completed,
    /// The job ran to its end but some items failed (Azure Automation would say Completed
    /// with non-terminating errors).
    CompletedWithErrors,
    /// A terminating error stopped the job.
    Failed,
    /// The runbook's timeout stopped the job.
    TimedOut,
    /// Stopped on request (API, `overlap = "replace"`, or shutdown after the grace period).
    Cancelled,
    /// Never started: the occurrence was dropped by the overlap policy.
    Skipped,
    /// The worker process stopped while the job was Queued or Running; found at the next
    /// start.
    Interrupted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::CompletedWithErrors,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::Cancelled,
        JobStatus::Skipped,
        JobStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Running => "Running",
            JobStatus::Completed => "Completed",
            JobStatus::CompletedWithErrors => "CompletedWithErrors",
            JobStatus::Failed => "Failed",
            JobStatus::TimedOut => "TimedOut",
            JobStatus::Cancelled => "Cancelled",
            JobStatus::Skipped => "Skipped",
            JobStatus::Interrupted => "Interrupted",
        }
    }

    /// True once the job can no longer change.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a job status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job status {0:?} (expected one of Queued, Running, Completed, CompletedWithErrors, Failed, TimedOut, Cancelled, Skipped, Interrupted)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    /// Case-insensitive, so `--status failed` works.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// What started a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// An occurrence of the runbook's schedule.
    Schedule,
    /// The one run after downtime for a missed occurrence (`missed = "run-once"`); past due.
    CatchUp,
    /// `runbook-worker run` or the dashboard's Run-now button.
    Manual,
    /// `POST /api/runbooks/{name}/run`.
    Api,
    /// Started again after an interruption (`on_interrupt = "rerun"`).
    Retry,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch-up",
            Trigger::Manual => "manual",
            Trigger::Api => "api",
            Trigger::Retry => "retry",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Trigger> {
        [
            Trigger::Schedule,
            Trigger::CatchUp,
            Trigger::Manual,
            Trigger::Api,
            Trigger::Retry,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The streams of a job, as in Azure Automation (Verbose and Debug go to the log only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// What the job produced: record summaries, report lines.
    Output,
    Warning,
    Error,
    /// A dry run's planned writes, one entry per planned cmdlet call.
    Plan,
    /// Progress notes; only the most recent entries are kept.
    Progress,
    /// What became of the job's notifications, one entry per target (never a URL or
    /// secret); written after the job ended.
    Notifications,
}

impl StreamKind {
    pub const ALL: [StreamKind; 6] = [
        StreamKind::Output,
        StreamKind::Warning,
        StreamKind::Error,
        StreamKind::Plan,
        StreamKind::Progress,
        StreamKind::Notifications,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Output => "output",
            StreamKind::Warning => "warning",
            StreamKind::Error => "error",
            StreamKind::Plan => "plan",
            StreamKind::Progress => "progress",
            StreamKind::Notifications => "notifications",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<StreamKind> {
        StreamKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to record, as the scheduler or API knows it when the job becomes due.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub runbook: String,
    /// Hash of the runbook file the job runs (e.g. `sha256:…`), so a job can be tied to
    /// the exact version of the file.
    pub file_hash: String,
    pub trigger: Trigger,
    /// The occurrence this job is for; `None` for manual and API runs.
    pub scheduled_for: Option<DateTime<Utc>>,
    pub dry_run: bool,
    /// The job's parameter values. **Never put secrets here**: the history is readable by
    /// anyone with access to the API, the CLI or the state directory. The caller removes
    /// or masks secret parameters before recording.
    pub params: Map<String, Value>,
}

/// Counts for one step of a runbook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepCounts {
    pub step: String,
    /// Records the step read (e.g. mailboxes returned by a `Get-` cmdlet).
    pub records_read: u64,
    /// Items the step acted on successfully.
    pub done: u64,
    pub failed: u64,
    /// Items the step left alone (filtered out, already in the wanted state).
    pub skipped: u64,
    /// Writes a dry run would have made.
    pub writes_planned: u64,
}

/// How a job ended, given to [`super::HistoryStore::finish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Must be a final status.
    pub status: JobStatus,
    /// A one-line result for lists ("412 mailboxes checked, 3 archives enabled").
    pub summary: Option<String>,
    /// Why the job did not complete cleanly, one line.
    pub error: Option<String>,
    pub steps: Vec<StepCounts>,
}

impl Outcome {
    pub fn new(status: JobStatus) -> Outcome {
        Outcome {
            status,
            summary: None,
            error: None,
            steps: Vec::new(),
        }
    }

    pub fn with_summary(mut self, summary: impl Into<String>) -> Outcome {
        self.summary = Some(summary.into());
        self
    }

    pub fn with_error(mut self, error: impl Into<String>) -> Outcome {
        self.error = Some(error.into());
        self
    }

    pub fn with_steps(mut self, steps: Vec<StepCounts>) -> Outcome {
        self.steps = steps;
        self
    }
}

/// An entry to append to one of a job's streams.
#[derive(Clone, Debug, PartialEq)]
pub struct NewStreamEntry {
    pub kind: StreamKind,
    pub text: String,
    /// Structured detail (a planned cmdlet call, a record); optional.
    pub data: Option<Value>,
}

impl NewStreamEntry {
    pub fn new(kind: StreamKind, text: impl Into<String>) -> NewStreamEntry {
        NewStreamEntry {
            kind,
            text: text.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> NewStreamEntry {
        self.data = Some(data);
        self
    }

    pub fn output(text: impl Into<String>) -> NewStreamEntry {
        NewStreamEntry::new(StreamKind::Output, text)
    }

    pub fn warning(text: impl Into<String>) -> NewStreamEntry {
        NewStreamEntry::new(StreamKind::Warning, text)
    }

    pub fn error(text: impl Into<String>) -> NewStreamEntry {
        NewStreamEntry::new(StreamKind::Error, text)
    }

    pub fn plan(text: impl Into<String>, data: Value) -> NewStreamEntry {
        NewStreamEntry::new(StreamKind::Plan, text).with_data(data)
    }

    pub fn progress(text: impl Into<String>) -> NewStreamEntry {
        NewStreamEntry::new(StreamKind::Progress, text)
    }
}

/// One job in a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub id: JobId,
    pub runbook: String,
    pub file_hash: String,
    pub trigger: Trigger,
    pub status: JobStatus,
    pub dry_run: bool,
    /// True for a catch-up job, which runs after its time (Azure Functions' `IsPastDue`).
    pub past_due: bool,
    pub scheduled_for: Option<DateTime<Utc>>,
    /// When the job was recorded, i.e. became due.
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at - started_at`, when both are known.
    pub duration_ms: Option<i64>,
    pub summary: Option<String>,
    pub error: Option<String>,
    /// The replica that ran the job (`coordination.replica_id` or the host and process);
    /// `None` for jobs recorded before replicas were recorded.
    #[serde(default)]
    pub replica: Option<String>,
}

/// One entry of a job's streams.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamEntry {
    /// Position among all of the job's entries, from 1, in the order they were written.
    pub seq: u64,
    pub kind: StreamKind,
    pub time: DateTime<Utc>,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One job with everything recorded about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    pub params: Map<String, Value>,
    pub steps: Vec<StepCounts>,
    /// Every kept entry, oldest first.
    pub streams: Vec<StreamEntry>,
    /// Entries not kept because a stream reached its cap, by stream.
    pub dropped: BTreeMap<StreamKind, u64>,
    /// The job's report files (CSV or JSON lines), by name; filled in by
    /// [`super::JobHistory::get_job`].
    #[serde(default)]
    pub reports: Vec<ReportFile>,
}

/// A report file stored with a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportFile {
    /// The file name (`<step>.csv`), as `GET /api/jobs/{id}/reports/{file}` takes it.
    pub file: String,
    pub bytes: u64,
}

/// Which jobs [`super::HistoryReader::list_jobs`] returns, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    pub runbook: Option<String>,
    pub status: Option<JobStatus>,
    /// At most this many (capped at [`JobFilter::MAX_LIMIT`]).
    pub limit: usize,
    /// Only jobs created before this one: pass the last id of a page to get the next.
    pub before: Option<JobId>,
}

impl JobFilter {
    pub const DEFAULT_LIMIT: usize = 50;
    pub const MAX_LIMIT: usize = 1000;
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            runbook: None,
            status: None,
            limit: JobFilter::DEFAULT_LIMIT,
            before: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_case_insensitively_and_name_the_choices_otherwise() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().to_lowercase().parse(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                Value::String(status.as_str().to_string())
            );
        }
        let err = "Done".parse::<JobStatus>().unwrap_err().to_string();
        assert!(err.contains("CompletedWithErrors"), "{err}");
        let finals: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        assert_eq!(finals, [JobStatus::Queued, JobStatus::Running]);
    }

    #[test]
    fn triggers_and_stream_kinds_use_their_json_spelling() {
        for trigger in [
            Trigger::Schedule,
            Trigger::CatchUp,
            Trigger::Manual,
            Trigger::Api,
            Trigger::Retry,
        ] {
            assert_eq!(
                serde_json::to_value(trigger).unwrap(),
                Value::String(trigger.as_str().to_string())
            );
            assert_eq!(Trigger::parse(trigger.as_str()), Some(trigger));
        }
        for kind in StreamKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                Value::String(kind.as_str().to_string())
            );
            assert_eq!(StreamKind::parse(kind.as_str()), Some(kind));
        }
    }
}
