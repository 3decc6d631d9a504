//! The job record as stored in `jobs/{id}.json`, and its transitions. Pure: every change
//! takes its instant as an argument, and the store writes the result with `If-Match`.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound as _, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::history::{
    JobId, JobStatus, JobSummary, MAX_DATA_BYTES, MAX_TEXT_BYTES, NewJob, NewStreamEntry, Outcome,
    StepCounts, StreamEntry, StreamKind, Trigger,
};

/// The version of the record format; a reader refuses records of a newer one.
pub const RECORD_SCHEMA: u32 = 1;

/// One job, everything but its stream entries and reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub schema: u32,
    pub id: JobId,
    pub runbook: String,
    pub file_hash: String,
    pub trigger: Trigger,
    pub status: JobStatus,
    pub dry_run: bool,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub summary: Option<String>,
    pub error: Option<String>,
    /// The replica that recorded the job (and runs it).
    pub replica: String,
    pub params: Map<String, Value>,
    pub steps: Vec<StepCounts>,
    /// Every status the job has been in, oldest first: the status index entries to delete
    /// when the job is pruned.
    pub statuses: Vec<JobStatus>,
    pub streams: StreamCounts,
}

/// Where the job's streams stand; an append reserves its seqs by writing this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCounts {
    /// The seq of the last kept entry (0 before the first).
    pub last_seq: u64,
    pub kept: BTreeMap<StreamKind, u64>,
    pub dropped: BTreeMap<StreamKind, u64>,
}

/// The entries an append keeps, with their seqs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendPlan {
    /// Output, warning, error and plan entries: one new chunk blob.
    pub chunk: Vec<StreamEntry>,
    /// Progress entries: merged into the progress blob, which keeps the most recent.
    pub progress: Vec<StreamEntry>,
}

/// Times are kept to the millisecond, as the SQLite store keeps them, so both stores answer
/// alike.
pub fn truncate(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(3)
}

impl JobRecord {
    pub fn new(
        id: JobId,
        job: NewJob,
        created_at: DateTime<Utc>,
        status: JobStatus,
        error: Option<String>,
        replica: &str,
    ) -> JobRecord {
        let created_at = truncate(created_at);
        JobRecord {
            schema: RECORD_SCHEMA,
            id,
            runbook: job.runbook,
            file_hash: job.file_hash,
            trigger: job.trigger,
            status,
            dry_run: job.dry_run,
            scheduled_for: job.scheduled_for.map(truncate),
            created_at,
            started_at: None,
            ended_at: status.is_final().then_some(created_at),
            summary: None,
            error,
            replica: replica.to_string(),
            params: job.params,
            steps: Vec::new(),
            statuses: vec![status],
            streams: StreamCounts::default(),
        }
    }

    pub fn summary(&self) -> JobSummary {
        JobSummary {
            id: self.id.clone(),
            runbook: self.runbook.clone(),
            file_hash: self.file_hash.clone(),
            trigger: self.trigger,
            status: self.status,
            dry_run: self.dry_run,
            past_due: self.trigger == Trigger::CatchUp,
            scheduled_for: self.scheduled_for,
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            duration_ms: match (self.started_at, self.ended_at) {
                (Some(start), Some(end)) => Some((end - start).num_milliseconds()),
                _ => None,
            },
            summary: self.summary.clone(),
            error: self.error.clone(),
            replica: Some(self.replica.clone()),
        }
    }

    fn enter(&mut self, status: JobStatus) {
        self.status = status;
        if !self.statuses.contains(&status) {
            self.statuses.push(status);
        }
    }

    /// Queued → Running; `Err(current status)` from any other status.
    pub fn mark_running(&mut self, at: DateTime<Utc>) -> Result<(), JobStatus> {
        if self.status != JobStatus::Queued {
            return Err(self.status);
        }
        self.enter(JobStatus::Running);
        self.started_at = Some(truncate(at));
        Ok(())
    }

    /// Queued or Running → the outcome's (final) status; `Err(current status)` otherwise.
    pub fn finish(&mut self, at: DateTime<Utc>, outcome: &Outcome) -> Result<(), JobStatus> {
        if self.status.is_final() {
            return Err(self.status);
        }
        self.enter(outcome.status);
        self.ended_at = Some(truncate(at));
        self.steps = outcome.steps.clone();
        self.summary = outcome.summary.clone();
        self.error = outcome.error.clone();
        Ok(())
    }

    /// A job whose replica died: Interrupted, with the reason as its error (also returned, for
    /// the error stream). `None` when the job already ended.
    pub fn interrupt(&mut self, at: DateTime<Utc>) -> Option<String> {
        if self.status.is_final() {
            return None;
        }
        let at = truncate(at);
        let stamp = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let message = match self.status {
            JobStatus::Running => format!(
                "interrupted: replica {} stopped while this job was running (found at {stamp}); it may have done part of its work",
                self.replica
            ),
            _ => format!(
                "interrupted: replica {} stopped before this job started (found at {stamp})",
                self.replica
            ),
        };
        self.enter(JobStatus::Interrupted);
        self.ended_at = Some(at);
        self.error = Some(message.clone());
        Some(message)
    }

    /// Applies the stream caps to `entries` exactly as the SQLite store does: each stream
    /// keeps its first `max_entries` and counts the rest as dropped, except progress, which
    /// drops its oldest instead. Text and data are cut to [`MAX_TEXT_BYTES`] and
    /// [`MAX_DATA_BYTES`]. Updates the counts and reserves the seqs.
    pub fn plan_append(
        &mut self,
        at: DateTime<Utc>,
        entries: &[NewStreamEntry],
        max_entries: usize,
    ) -> AppendPlan {
        let cap = u64::try_from(max_entries).unwrap_or(u64::MAX);
        let time = truncate(at);
        let mut plan = AppendPlan::default();
        for entry in entries {
            let kept = self.streams.kept.entry(entry.kind).or_insert(0);
            if *kept >= cap {
                *self.streams.dropped.entry(entry.kind).or_insert(0) += 1;
                if entry.kind != StreamKind::Progress || cap == 0 {
                    continue;
                }
                // The progress blob drops its oldest entry when this one is merged in.
                *kept -= 1;
            }
            *kept += 1;
            self.streams.last_seq += 1;
            let (text, data) = bounded_entry(entry);
            let kept_entry = StreamEntry {
                seq: self.streams.last_seq,
                kind: entry.kind,
                time,
                text,
                data,
            };
            if entry.kind == StreamKind::Progress {
                plan.progress.push(kept_entry);
            } else {
                plan.chunk.push(kept_entry);
            }
        }
        plan
    }

    /// The dropped counts as [`crate::history::JobDetail`] shows them (streams that dropped
    /// something).
    pub fn dropped(&self) -> BTreeMap<StreamKind, u64> {
        self.streams
            .dropped
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(kind, count)| (*kind, *count))
            .collect()
    }
}

/// The text and data of an entry as stored.
fn bounded_entry(entry: &NewStreamEntry) -> (String, Option<Value>) {
    let mut text = if entry.text.len() > MAX_TEXT_BYTES {
        let end = (0..=MAX_TEXT_BYTES)
            .rev()
            .find(|i| entry.text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}… [cut at {MAX_TEXT_BYTES} bytes]", &entry.text[..end])
    } else {
        entry.text.clone()
    };
    let data = entry.data.as_ref().and_then(|value| {
        let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0);
        if size > MAX_DATA_BYTES {
            text.push_str(&format!(" [data of {size} bytes not kept]"));
            None
        } else {
            Some(value.clone())
        }
    });
    (text, data)
}

/// The progress entries kept after merging `new` into `current`: the most recent `cap`.
pub fn merge_progress(
    mut current: Vec<StreamEntry>,
    new: Vec<StreamEntry>,
    cap: usize,
) -> Vec<StreamEntry> {
    current.extend(new);
    current.sort_by_key(|e| e.seq);
    let excess = current.len().saturating_sub(cap);
    current.drain(..excess);
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::id::IdGenerator;
    use chrono::TimeZone;

    fn record() -> JobRecord {
        let at = Utc.with_ymd_and_hms(2026, 3, 5, 6, 0, 0).unwrap();
        JobRecord::new(
            IdGenerator::default().next(at),
            NewJob {
                runbook: "r".into(),
                file_hash: "sha256:r".into(),
                trigger: Trigger::Manual,
                scheduled_for: None,
                dry_run: false,
                params: Map::new(),
            },
            at,
            JobStatus::Queued,
            None,
            "pod-a",
        )
    }

    #[test]
    fn streams_keep_their_first_entries_and_progress_its_last() {
        let mut job = record();
        let at = job.created_at;
        let entries: Vec<NewStreamEntry> = (0..5)
            .flat_map(|i| {
                [
                    NewStreamEntry::output(format!("out {i}")),
                    NewStreamEntry::progress(format!("step {i}")),
                ]
            })
            .collect();
        let first = job.plan_append(at, &entries[..4], 3);
        let second = job.plan_append(at, &entries[4..], 3);
        let outputs: Vec<_> = first
            .chunk
            .iter()
            .chain(&second.chunk)
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(outputs, ["out 0", "out 1", "out 2"]);
        let progress = merge_progress(first.progress, second.progress, 3);
        let texts: Vec<_> = progress.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["step 2", "step 3", "step 4"]);
        assert_eq!(
            job.dropped(),
            BTreeMap::from([(StreamKind::Output, 2), (StreamKind::Progress, 2)])
        );
        assert_eq!(job.streams.last_seq, 8);
    }

    #[test]
    fn long_text_is_cut_and_large_data_left_out() {
        let mut job = record();
        let big = NewStreamEntry::output("é".repeat(MAX_TEXT_BYTES))
            .with_data(Value::String("x".repeat(MAX_DATA_BYTES + 1)));
        let plan = job.plan_append(job.created_at, &[big], 10);
        let entry = &plan.chunk[0];
        assert!(
            entry.text.contains("[cut at 8192 bytes]"),
            "{}",
            &entry.text[..40]
        );
        assert!(entry.text.ends_with("bytes not kept]"));
        assert_eq!(entry.data, None);
    }

    #[test]
    fn transitions_follow_the_sqlite_store() {
        let mut job = record();
        let at = job.created_at + chrono::Duration::seconds(5);
        assert_eq!(
            job.finish(at, &Outcome::new(JobStatus::Completed))
                .map(|_| job.status),
            Ok(JobStatus::Completed)
        );
        assert_eq!(job.mark_running(at), Err(JobStatus::Completed));
        assert_eq!(job.interrupt(at), None);
        let mut job = record();
        job.mark_running(at).unwrap();
        let message = job.interrupt(at).expect("a running job is interrupted");
        assert!(
            message.contains("pod-a") && message.contains("running"),
            "{message}"
        );
        assert_eq!(
            job.statuses,
            [
                JobStatus::Queued,
                JobStatus::Running,
                JobStatus::Interrupted
            ]
        );
        assert_eq!(job.summary().duration_ms, Some(0));
    }
}
