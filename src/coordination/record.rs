//! The records kept in the coordination container, their blob names, and the pure rules
//! applied to them (status merging, orphan decisions). No I/O.
//!
//! Layout of the container (the same names are used by the in-process implementation):
//!
//! - `occurrences/<runbook>/<instant>.json`: one [`OccurrenceRecord`] per scheduled
//!   occurrence, created with `If-None-Match: *` by the replica that runs it.
//! - `locks/<runbook>`: an empty blob whose lease is held while a job of the runbook runs.
//! - `status/<runbook>.json`: the [`ScheduleStatus`] of the runbook, updated with `If-Match`.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// Where an occurrence is in its life. Serialised in kebab case (`"running"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OccurrenceState {
    /// The record exists; its owner is acquiring the runbook's lock and has not started.
    Claimed,
    /// The owner holds the runbook's lock and the job runs.
    Running,
    Completed,
    Failed,
    /// The job was cut short (its owner lost the lock or shut down), or the owner died and
    /// another replica noticed.
    Interrupted,
    /// Another occurrence of the runbook was running (`overlap = "skip"`).
    Skipped,
}

impl OccurrenceState {
    /// Whether nothing will change the record any more (except a re-run of an interrupted one).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Claimed | Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Claimed,
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Interrupted,
            Self::Skipped,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// How the owner of an occurrence ends it through [`super::OccurrenceGuard::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinalState {
    Completed,
    Failed,
    /// Cancelled between calls (shutdown, or the executor saw the lease go).
    Interrupted,
}

impl From<FinalState> for OccurrenceState {
    fn from(state: FinalState) -> Self {
        match state {
            FinalState::Completed => Self::Completed,
            FinalState::Failed => Self::Failed,
            FinalState::Interrupted => Self::Interrupted,
        }
    }
}

/// One scheduled occurrence of a runbook, cluster-wide. Holds no secrets: names, instants,
/// the owning replica's id and the owner's job id only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OccurrenceRecord {
    pub runbook: String,
    /// The schedule instant (the key; not a clock reading).
    pub scheduled_for: DateTime<Utc>,
    /// Which of the runbook's schedules fired (its index; part of the key, so two
    /// schedules due at one instant are two occurrences). Absent in records of schedule 0
    /// and in records written before runbooks had several schedules.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub schedule: usize,
    /// The replica that created (or re-claimed) the record.
    pub owner: String,
    pub state: OccurrenceState,
    /// 1 for the first run, 2 for the first re-run of an interrupted occurrence, …
    pub attempt: u32,
    /// The owner's clock, for people reading the record; never compared across replicas.
    pub claimed_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The owner's job id in its own history database.
    pub job_id: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl OccurrenceRecord {
    pub fn claimed(
        runbook: &str,
        scheduled_for: DateTime<Utc>,
        owner: &str,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            runbook: runbook.to_string(),
            scheduled_for,
            schedule: 0,
            owner: owner.to_string(),
            state: OccurrenceState::Claimed,
            attempt: 1,
            claimed_at: now,
            started_at: None,
            ended_at: None,
            job_id: None,
        }
    }

    /// The record a re-run writes over an interrupted one.
    pub fn reclaimed(&self, owner: &str, now: DateTime<Utc>) -> Self {
        Self {
            owner: owner.to_string(),
            state: OccurrenceState::Claimed,
            attempt: self.attempt.saturating_add(1),
            claimed_at: now,
            started_at: None,
            ended_at: None,
            job_id: None,
            ..self.clone()
        }
    }

    pub fn started(&self, now: DateTime<Utc>) -> Self {
        Self {
            state: OccurrenceState::Running,
            started_at: Some(now),
            ..self.clone()
        }
    }

    pub fn skipped(&self, now: DateTime<Utc>) -> Self {
        Self {
            state: OccurrenceState::Skipped,
            ended_at: Some(now),
            ..self.clone()
        }
    }

    pub fn ended(&self, state: FinalState, job_id: Option<String>, now: DateTime<Utc>) -> Self {
        Self {
            state: state.into(),
            ended_at: Some(now),
            job_id: job_id.or_else(|| self.job_id.clone()),
            ..self.clone()
        }
    }

    /// Marked by a sweeper: the owner is gone.
    pub fn orphaned(&self, now: DateTime<Utc>) -> Self {
        Self {
            state: OccurrenceState::Interrupted,
            ended_at: Some(now),
            ..self.clone()
        }
    }
}

/// What the cluster knows about a runbook's schedule, so a replica that starts after all
/// others died can tell what was missed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleStatus {
    pub runbook: String,
    /// The latest schedule instant any replica fired (claimed or skipped).
    pub last_fired: Option<DateTime<Utc>>,
    /// The latest schedule instant whose job completed successfully.
    pub last_completed: Option<DateTime<Utc>>,
}

impl ScheduleStatus {
    pub fn new(runbook: &str) -> Self {
        Self {
            runbook: runbook.to_string(),
            last_fired: None,
            last_completed: None,
        }
    }

    /// Instants only move forward: a late writer (a replica that was paused) cannot move the
    /// status back.
    pub fn with_fired(&self, instant: DateTime<Utc>) -> Self {
        Self {
            last_fired: self.last_fired.max(Some(instant)),
            ..self.clone()
        }
    }

    pub fn with_completed(&self, instant: DateTime<Utc>) -> Self {
        Self {
            last_completed: self.last_completed.max(Some(instant)),
            ..self.clone()
        }
    }
}

/// An opaque version of a stored value (the blob's ETag, or a counter in-process); pass it
/// back to write only if nobody else wrote since.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub(crate) String);

impl Version {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A value and the version it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

/// An occurrence a sweeper marked Interrupted because its owner was gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterruptedOccurrence {
    /// The record as the sweeper wrote it (state Interrupted).
    pub record: OccurrenceRecord,
    /// Whether the job had started (the record was Running). When `false` the owner died
    /// between claiming and starting, so running it now repeats nothing whatever the
    /// runbook's `on_interrupt` says.
    pub started: bool,
    pub(crate) version: Version,
}

/// A blob path segment for a runbook name: ASCII letters, digits, `-` and `_` stay, a `.`
/// stays unless it leads, everything else becomes `~XX` per UTF-8 byte. Injective, so two
/// runbooks never share a lock.
pub fn name_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        let keep =
            byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || (byte == b'.' && i > 0);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("~{byte:02X}"));
        }
    }
    if out.is_empty() {
        out.push('~');
    }
    out
}

/// A file-name-safe, sortable form of a schedule instant: `2026-03-29T10-15-00Z` (fractional
/// seconds only when present).
pub fn instant_segment(instant: DateTime<Utc>) -> String {
    let format = if instant.nanosecond() == 0 {
        SecondsFormat::Secs
    } else {
        SecondsFormat::AutoSi
    };
    instant.to_rfc3339_opts(format, true).replace(':', "-")
}

/// Where every occurrence record lives, whatever its runbook.
pub const OCCURRENCES_ROOT: &str = "occurrences/";

pub fn occurrences_prefix(runbook: &str) -> String {
    format!("{OCCURRENCES_ROOT}{}/", name_segment(runbook))
}

/// The schedule instant in an occurrence record's name (the inverse of
/// [`occurrence_blob`]), or `None` for a name it did not make.
pub fn occurrence_instant(name: &str) -> Option<DateTime<Utc>> {
    let segment = name.strip_suffix(".json")?.rsplit('/').next()?;
    let segment = match segment.split_once(SCHEDULE_MARK) {
        Some((instant, index)) => {
            index.parse::<usize>().ok()?;
            instant
        }
        None => segment,
    };
    let (date, time) = segment.split_once('T')?;
    let text = format!("{date}T{}", time.replace('-', ":"));
    DateTime::parse_from_rfc3339(&text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn occurrence_blob(runbook: &str, instant: DateTime<Utc>) -> String {
    schedule_occurrence_blob(runbook, instant, 0)
}

/// Separates the instant from the schedule index in an occurrence record's name. Runbook
/// names are escaped with `~`, instants never contain it.
const SCHEDULE_MARK: &str = "~s";

/// The record of the occurrence at `instant` of schedule `schedule`: schedule 0 keeps the
/// name records had before runbooks had several schedules (`<instant>.json`), the others
/// add their index (`<instant>~s1.json`).
pub fn schedule_occurrence_blob(runbook: &str, instant: DateTime<Utc>, schedule: usize) -> String {
    let suffix = if schedule == 0 {
        String::new()
    } else {
        format!("{SCHEDULE_MARK}{schedule}")
    };
    format!(
        "{}{}{suffix}.json",
        occurrences_prefix(runbook),
        instant_segment(instant)
    )
}

impl OccurrenceRecord {
    /// This record's blob name.
    pub fn blob_name(&self) -> String {
        schedule_occurrence_blob(&self.runbook, self.scheduled_for, self.schedule)
    }
}

pub fn lock_blob(runbook: &str) -> String {
    format!("locks/{}", name_segment(runbook))
}

pub fn status_blob(runbook: &str) -> String {
    format!("status/{}.json", name_segment(runbook))
}

/// What a sweeper does with a record that is not final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrphanDecision {
    /// Mark it Interrupted (conditionally on the version just read).
    Interrupt { started: bool },
    /// It may be a claimer between creating the record and taking the lock: remember this
    /// version and look again after the grace period.
    Watch,
    /// Someone holds the runbook's lock; nothing to decide.
    Leave,
}

/// The orphan rule. A Running record is written only while its owner holds the runbook's
/// lock and is final before the owner releases it, so Running with the lock free means the
/// owner is gone. A Claimed record with the lock free may be a claimer a few milliseconds
/// from taking the lock, so it is interrupted only when the same version was already seen
/// orphaned at least `grace` ago (by this sweeper's monotonic clock; no wall clocks are
/// compared). `seen_since` is when this sweeper first saw this exact version.
pub fn orphan_decision(
    state: OccurrenceState,
    lock_held: bool,
    seen_since: Option<Instant>,
    now: Instant,
    grace: Duration,
) -> OrphanDecision {
    if state.is_final() || lock_held {
        return OrphanDecision::Leave;
    }
    match state {
        OccurrenceState::Running => OrphanDecision::Interrupt { started: true },
        _ => match seen_since {
            Some(since) if now.saturating_duration_since(since) >= grace => {
                OrphanDecision::Interrupt { started: false }
            }
            _ => OrphanDecision::Watch,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 29, h, m, s).unwrap()
    }

    #[test]
    fn occurrence_names_give_back_their_instant() {
        let instants = [
            at(10, 15, 0),
            at(0, 0, 59),
            at(23, 59, 1) + chrono::Duration::milliseconds(250),
        ];
        for instant in instants {
            let name = occurrence_blob("Archive mailboxes", instant);
            assert_eq!(occurrence_instant(&name), Some(instant), "{name}");
            let name = schedule_occurrence_blob("Archive mailboxes", instant, 3);
            assert_eq!(occurrence_instant(&name), Some(instant), "{name}");
        }
        assert_eq!(
            schedule_occurrence_blob("archive", at(10, 15, 0), 2),
            "occurrences/archive/2026-03-29T10-15-00Z~s2.json"
        );
        assert_eq!(
            schedule_occurrence_blob("archive", at(10, 15, 0), 0),
            occurrence_blob("archive", at(10, 15, 0))
        );
        for name in [
            "locks/a",
            "occurrences/a/garbage.json",
            "status/a.json",
            "cleanup/lease",
        ] {
            assert_eq!(occurrence_instant(name), None, "{name}");
        }
    }

    #[test]
    fn blob_names_table() {
        let instant = at(10, 15, 0);
        let cases = [
            (
                occurrence_blob("archive", instant),
                "occurrences/archive/2026-03-29T10-15-00Z.json",
            ),
            (lock_blob("archive"), "locks/archive"),
            (status_blob("archive"), "status/archive.json"),
            (lock_blob("forward clean/up"), "locks/forward~20clean~2Fup"),
            (lock_blob(".."), "locks/~2E."),
            (lock_blob("quota.v2"), "locks/quota.v2"),
            (lock_blob("ü"), "locks/~C3~BC"),
            (lock_blob(""), "locks/~"),
            (lock_blob("a~20"), "locks/a~7E20"),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn instant_segments_are_file_name_safe_and_sort_chronologically() {
        let instants = [at(9, 59, 59), at(10, 0, 0), at(10, 0, 1), at(23, 0, 0)];
        let names: Vec<String> = instants.iter().map(|i| instant_segment(*i)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| !n.contains(':')));
        let fractional = at(10, 0, 0) + chrono::Duration::milliseconds(250);
        assert_eq!(instant_segment(fractional), "2026-03-29T10-00-00.250Z");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in [
            OccurrenceState::Claimed,
            OccurrenceState::Running,
            OccurrenceState::Completed,
            OccurrenceState::Failed,
            OccurrenceState::Interrupted,
            OccurrenceState::Skipped,
        ] {
            assert_eq!(OccurrenceState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert_eq!(OccurrenceState::parse("bogus"), None);
    }

    #[test]
    fn status_instants_never_move_backwards() {
        let status = ScheduleStatus::new("r")
            .with_fired(at(10, 0, 0))
            .with_fired(at(9, 0, 0))
            .with_completed(at(8, 0, 0))
            .with_completed(at(7, 0, 0));
        assert_eq!(status.last_fired, Some(at(10, 0, 0)));
        assert_eq!(status.last_completed, Some(at(8, 0, 0)));
    }

    #[test]
    fn a_rerun_claim_counts_attempts_and_clears_the_previous_run() {
        let first = OccurrenceRecord::claimed("r", at(10, 0, 0), "a", at(10, 0, 1))
            .started(at(10, 0, 2))
            .orphaned(at(10, 1, 0));
        let again = first.reclaimed("b", at(10, 2, 0));
        assert_eq!(again.attempt, 2);
        assert_eq!(again.owner, "b");
        assert_eq!(again.state, OccurrenceState::Claimed);
        assert_eq!((again.started_at, again.ended_at), (None, None));
        assert_eq!(again.scheduled_for, at(10, 0, 0));
    }

    #[test]
    fn orphan_decision_table() {
        use OccurrenceState::*;
        let now = Instant::now();
        let grace = Duration::from_secs(15);
        let long_ago = now.checked_sub(Duration::from_secs(20));
        let just_now = now.checked_sub(Duration::from_secs(1));
        let cases = [
            (
                Running,
                false,
                None,
                OrphanDecision::Interrupt { started: true },
            ),
            (Running, true, None, OrphanDecision::Leave),
            (Claimed, false, None, OrphanDecision::Watch),
            (Claimed, false, just_now, OrphanDecision::Watch),
            (
                Claimed,
                false,
                long_ago,
                OrphanDecision::Interrupt { started: false },
            ),
            (Claimed, true, long_ago, OrphanDecision::Leave),
            (Completed, false, long_ago, OrphanDecision::Leave),
            (Skipped, false, None, OrphanDecision::Leave),
            (Interrupted, false, None, OrphanDecision::Leave),
        ];
        for (state, held, seen, expected) in cases {
            assert_eq!(
                orphan_decision(state, held, seen, now, grace),
                expected,
                "{state:?} held={held} seen={seen:?}"
            );
        }
    }
}
