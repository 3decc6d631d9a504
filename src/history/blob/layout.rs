//! The blob names of the shared history and the pure decisions taken on them: inverted
//! keys, which index a filter reads, the list row carried in an index blob's metadata,
//! which jobs a prune pass deletes. No I/O; time comes in as an argument.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::coordination::record::name_segment;
use crate::history::{JobFilter, JobId, JobStatus, JobSummary};

/// Crockford base32 as job ids use it; position `i` inverts to position `31 - i`.
const DIGITS: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The metadata key of an index blob that holds its list row.
pub(super) const ROW_METADATA: &str = "row";
/// A row is left out of the metadata above this encoded size (the service allows 8 KiB of
/// metadata per blob); a reader then downloads the record instead.
pub(super) const MAX_ROW_METADATA: usize = 6 * 1024;
/// Report names: at most this long, and only the characters [`valid_report_name`] allows.
pub(super) const MAX_REPORT_NAME: usize = 128;

/// The complement of a job id, digit by digit: a newer id gives a smaller key, so a list in
/// name order (the only order Blob Storage lists in) returns the newest job first.
pub fn inverted(id: &JobId) -> String {
    id.as_str()
        .bytes()
        .map(|b| {
            let pos = DIGITS.iter().position(|d| *d == b).unwrap_or(0);
            char::from(DIGITS[31 - pos])
        })
        .collect()
}

/// The id an inverted key stands for; `None` for a name nobody wrote through this module.
pub fn id_from_inverted(key: &str) -> Option<JobId> {
    if key.len() != 26 {
        return None;
    }
    let mut out = String::with_capacity(26);
    for b in key.bytes() {
        let pos = DIGITS.iter().position(|d| *d == b)?;
        out.push(char::from(DIGITS[31 - pos]));
    }
    out.parse().ok()
}

/// The creation time in a job id (its first 48 bits, milliseconds since the epoch).
pub fn id_time(id: &JobId) -> Option<DateTime<Utc>> {
    let mut value: u64 = 0;
    for b in id.as_str().bytes().take(10) {
        let pos = DIGITS.iter().position(|d| *d == b)?;
        value = (value << 5) | pos as u64;
    }
    // Ten digits hold 50 bits; the top two of a valid id are zero.
    DateTime::from_timestamp_millis(i64::try_from(value).ok()?)
}

/// Every blob name of the history, under one prefix (`history/` by default) so that it can
/// share the coordination container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix` is used as given; a trailing `/` is added when missing.
    pub fn new(prefix: &str) -> Layout {
        let mut prefix = prefix.trim_start_matches('/').to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Layout { prefix }
    }

    pub fn jobs_prefix(&self) -> String {
        format!("{}jobs/", self.prefix)
    }

    pub fn record(&self, id: &JobId) -> String {
        format!("{}{id}.json", self.jobs_prefix())
    }

    /// The job's id from the name of its record, for a prune pass listing `jobs/`.
    pub fn id_of_record(&self, name: &str) -> Option<JobId> {
        name.strip_prefix(&self.jobs_prefix())?
            .strip_suffix(".json")?
            .parse()
            .ok()
    }

    pub fn streams_prefix(&self, id: &JobId) -> String {
        format!("{}streams/{id}/", self.prefix)
    }

    /// One append's kept entries, named by the seq of its first entry.
    pub fn stream_chunk(&self, id: &JobId, first_seq: u64) -> String {
        format!("{}{first_seq:010}.jsonl", self.streams_prefix(id))
    }

    /// The kept progress entries, rewritten whole (it keeps its most recent ones).
    pub fn progress(&self, id: &JobId) -> String {
        format!("{}progress.jsonl", self.streams_prefix(id))
    }

    pub fn reports_prefix(&self, id: &JobId) -> String {
        format!("{}reports/{id}/", self.prefix)
    }

    pub fn report(&self, id: &JobId, name: &str) -> String {
        format!("{}{name}", self.reports_prefix(id))
    }

    pub fn index_all(&self) -> String {
        format!("{}index/all/", self.prefix)
    }

    pub fn index_runbook(&self, runbook: &str) -> String {
        format!("{}index/runbook/{}/", self.prefix, name_segment(runbook))
    }

    pub fn index_status(&self, status: JobStatus) -> String {
        format!("{}index/status/{status}/", self.prefix)
    }

    pub fn index_runbook_status(&self, runbook: &str, status: JobStatus) -> String {
        format!(
            "{}index/runbook-status/{}/{status}/",
            self.prefix,
            name_segment(runbook)
        )
    }

    /// The head blob of the index under `index` (a prefix from one of the `index_*`
    /// methods): `heads/all.json`, `heads/runbook/{runbook}.json`, and so on.
    pub fn head(&self, index: &str) -> String {
        let under = format!("{}index/", self.prefix);
        let rest = index.strip_prefix(&under).unwrap_or(index);
        format!("{}heads/{}.json", self.prefix, rest.trim_end_matches('/'))
    }

    /// The indexes whose row of a job changes with it (all jobs, the runbook's).
    pub fn row_indexes(&self, runbook: &str) -> [String; 2] {
        [self.index_all(), self.index_runbook(runbook)]
    }

    /// The indexes of the jobs in `status` (all runbooks', the runbook's).
    pub fn status_indexes(&self, runbook: &str, status: JobStatus) -> [String; 2] {
        [
            self.index_status(status),
            self.index_runbook_status(runbook, status),
        ]
    }

    /// The index that answers `filter` (the narrowest one it names).
    pub fn index_for(&self, filter: &JobFilter) -> String {
        match (&filter.runbook, filter.status) {
            (Some(runbook), Some(status)) => self.index_runbook_status(runbook, status),
            (Some(runbook), None) => self.index_runbook(runbook),
            (None, Some(status)) => self.index_status(status),
            (None, None) => self.index_all(),
        }
    }

    /// The index entries that carry a row whose status changes with the job.
    pub fn row_entries(&self, id: &JobId, runbook: &str) -> [String; 2] {
        let key = inverted(id);
        [
            format!("{}{key}", self.index_all()),
            format!("{}{key}", self.index_runbook(runbook)),
        ]
    }

    /// The status index entries of a job in `status`.
    pub fn status_entries(&self, id: &JobId, runbook: &str, status: JobStatus) -> [String; 2] {
        let key = inverted(id);
        [
            format!("{}{key}", self.index_status(status)),
            format!("{}{key}", self.index_runbook_status(runbook, status)),
        ]
    }

    /// Every index entry a job that went through `statuses` can have.
    pub fn all_entries(&self, id: &JobId, runbook: &str, statuses: &[JobStatus]) -> Vec<String> {
        let mut out: Vec<String> = self.row_entries(id, runbook).into();
        for status in statuses {
            out.extend(self.status_entries(id, runbook, *status));
        }
        out
    }

    pub fn runbooks_prefix(&self) -> String {
        format!("{}runbooks/", self.prefix)
    }

    /// One small blob per runbook ever recorded: the list of runbooks without a scan, and
    /// its latest scheduled occurrence in the metadata.
    pub fn runbook_marker(&self, runbook: &str) -> String {
        format!("{}{}", self.runbooks_prefix(), name_segment(runbook))
    }

    /// The blob whose lease makes one replica the pruner of a pass.
    pub fn prune_lock(&self) -> String {
        format!("{}prune.lock", self.prefix)
    }
}

/// What a list shows of one job, carried (base64 JSON) in the metadata of its index blobs so
/// that a page of 50 is one list call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListRow {
    /// With the replica that recorded (and ran) the job in `job.replica`.
    #[serde(flatten)]
    pub job: JobSummary,
}

/// The metadata value for `row`, or `None` when it would be too large (long summary or error
/// text): the reader then downloads the record.
pub fn encode_row(row: &ListRow) -> Option<String> {
    let json = serde_json::to_vec(row).ok()?;
    let encoded = URL_SAFE_NO_PAD.encode(json);
    (encoded.len() <= MAX_ROW_METADATA).then_some(encoded)
}

pub fn decode_row(value: &str) -> Option<ListRow> {
    let json = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The latest scheduled occurrence of one runbook, in its marker's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunbookMarker {
    pub runbook: String,
    pub last_occurrence: Option<DateTime<Utc>>,
}

pub fn encode_marker(marker: &RunbookMarker) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(marker).unwrap_or_default())
}

pub fn decode_marker(value: &str) -> Option<RunbookMarker> {
    let json = URL_SAFE_NO_PAD.decode(value.trim()).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Jobs created before this instant are due for pruning.
pub fn prune_cutoff(now: DateTime<Utc>, retention: std::time::Duration) -> DateTime<Utc> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    now.checked_sub_signed(retention)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// What a prune pass does with the next record name in `jobs/` (listed oldest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneStep {
    /// Created before the cutoff: read its record, delete it unless it is still running.
    Candidate(JobId),
    /// Not a record name this module writes; left alone.
    Foreign,
    /// Created at or after the cutoff: this and every later name are kept, the pass ends.
    Stop,
}

pub fn prune_step(layout: &Layout, name: &str, cutoff: DateTime<Utc>) -> PruneStep {
    let Some(id) = layout.id_of_record(name) else {
        return PruneStep::Foreign;
    };
    match id_time(&id) {
        Some(created) if created < cutoff => PruneStep::Candidate(id),
        Some(_) => PruneStep::Stop,
        None => PruneStep::Foreign,
    }
}

/// Report names become blob names: a plain file name, no path.
pub fn valid_report_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_REPORT_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::id::IdGenerator;
    use chrono::TimeZone;

    fn at(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, 6, 0, 0).unwrap()
    }

    #[test]
    fn inverted_keys_sort_newest_first_and_round_trip() {
        let ids = IdGenerator::default();
        let made: Vec<JobId> = (1..=20).map(|day| ids.next(at(day))).collect();
        let mut keys: Vec<String> = made.iter().map(inverted).collect();
        keys.sort();
        let back: Vec<JobId> = keys.iter().filter_map(|k| id_from_inverted(k)).collect();
        let mut newest_first = made.clone();
        newest_first.reverse();
        assert_eq!(back, newest_first);
        assert_eq!(id_from_inverted("short"), None);
    }

    #[test]
    fn the_id_time_is_the_creation_millisecond() {
        let t = at(5) + chrono::Duration::milliseconds(123);
        let id = IdGenerator::default().next(t);
        assert_eq!(id_time(&id), Some(t));
    }

    #[test]
    fn filters_pick_the_narrowest_index() {
        let layout = Layout::new("history");
        let filter = |runbook: Option<&str>, status| JobFilter {
            runbook: runbook.map(str::to_string),
            status,
            ..JobFilter::default()
        };
        assert_eq!(layout.index_for(&filter(None, None)), "history/index/all/");
        assert_eq!(
            layout.index_for(&filter(Some("a.b"), None)),
            "history/index/runbook/a.b/"
        );
        assert_eq!(
            layout.index_for(&filter(None, Some(JobStatus::Failed))),
            "history/index/status/Failed/"
        );
        assert_eq!(
            layout.index_for(&filter(Some("x y"), Some(JobStatus::Running))),
            "history/index/runbook-status/x~20y/Running/"
        );
    }

    #[test]
    fn each_index_has_its_own_head_outside_the_index() {
        let layout = Layout::new("history");
        assert_eq!(layout.head(&layout.index_all()), "history/heads/all.json");
        assert_eq!(
            layout.head(&layout.index_runbook("x y")),
            "history/heads/runbook/x~20y.json"
        );
        assert_eq!(
            layout.head(&layout.index_runbook_status("r", JobStatus::Failed)),
            "history/heads/runbook-status/r/Failed.json"
        );
        let [all, runbook] = layout.row_indexes("r");
        let [status, both] = layout.status_indexes("r", JobStatus::Failed);
        let heads: std::collections::BTreeSet<String> = [all, runbook, status, both]
            .iter()
            .map(|index| layout.head(index))
            .collect();
        assert_eq!(heads.len(), 4, "{heads:?}");
        assert!(heads.iter().all(|h| !h.starts_with("history/index/")));
    }

    #[test]
    fn prune_steps_stop_at_the_first_record_inside_the_retention() {
        let layout = Layout::new("h/");
        let ids = IdGenerator::default();
        let old = ids.next(at(1));
        let young = ids.next(at(20));
        let cutoff = prune_cutoff(at(21), std::time::Duration::from_secs(10 * 24 * 3600));
        assert_eq!(
            prune_step(&layout, &layout.record(&old), cutoff),
            PruneStep::Candidate(old.clone())
        );
        assert_eq!(
            prune_step(&layout, &layout.record(&young), cutoff),
            PruneStep::Stop
        );
        assert_eq!(
            prune_step(&layout, "h/jobs/notes.txt", cutoff),
            PruneStep::Foreign
        );
    }

    #[test]
    fn rows_too_large_for_metadata_are_left_out() {
        let id = IdGenerator::default().next(at(1));
        let mut row = ListRow {
            job: JobSummary {
                id,
                runbook: "r".into(),
                file_hash: "sha256:x".into(),
                trigger: crate::history::Trigger::Manual,
                status: JobStatus::Failed,
                dry_run: false,
                past_due: false,
                scheduled_for: None,
                created_at: at(1),
                started_at: None,
                ended_at: Some(at(1)),
                duration_ms: None,
                summary: None,
                error: Some("boom ✗".into()),
                replica: Some("pod-1".into()),
            },
        };
        let encoded = encode_row(&row).expect("a small row fits");
        assert!(encoded.is_ascii());
        assert_eq!(decode_row(&encoded), Some(row.clone()));
        row.job.error = Some("x".repeat(MAX_ROW_METADATA));
        assert_eq!(encode_row(&row), None);
    }

    #[test]
    fn report_names_are_plain_file_names() {
        for good in ["report.csv", "quota-2026_03.json", "a"] {
            assert!(valid_report_name(good), "{good}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(200)] {
            assert!(!valid_report_name(bad), "{bad}");
        }
    }
}
