//! The in-process implementation (`kind = "local"`): one replica, the same semantics as the
//! Azure one.
//!
//! Records, locks and statuses live in a map behind a std mutex that is never held across an
//! `.await` (every operation here is synchronous). The keys are the same blob names as in the
//! container so listing by prefix behaves the same. A lock is a token per runbook; the guard
//! releases it when completed or dropped, so a dropped guard leaves a Running record whose
//! lock is free, which the sweep marks Interrupted, as a dead replica's would be.
//!
//! With one replica the job history is the record of what ran, so the map only has to
//! answer "was this instant claimed?" and show recent occurrences: each runbook keeps at
//! most [`KEPT_PER_RUNBOOK`] final records (the newest), and [`LocalCoordinator::prune`]
//! drops final records older than the history retention. Memory stays proportional to the
//! number of runbooks, not to the number of jobs ever run.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::record::{
    self, FinalState, InterruptedOccurrence, OccurrenceRecord, OccurrenceState, ScheduleStatus,
    Version, Versioned,
};
use super::{Claim, CoordinationError, Held, OccurrenceGuard, StorageHealth};
use crate::clock::SharedClock;

/// Final occurrence records kept per runbook (the newest); older ones are dropped as new
/// ones are written. Unfinished records (Claimed, Running) are never dropped.
pub const KEPT_PER_RUNBOOK: usize = 32;

/// In-process coordination; clones share the same state (one per process).
#[derive(Clone)]
pub struct LocalCoordinator {
    state: Arc<Mutex<LocalState>>,
    clock: SharedClock,
    health: Arc<watch::Sender<StorageHealth>>,
}

#[derive(Debug, Default)]
struct LocalState {
    records: BTreeMap<String, (OccurrenceRecord, u64)>,
    /// Runbook lock blob name → the token of the guard holding it.
    locks: HashMap<String, u64>,
    statuses: HashMap<String, (ScheduleStatus, u64)>,
    next: u64,
}

impl std::fmt::Debug for LocalCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCoordinator").finish_non_exhaustive()
    }
}

impl LocalState {
    fn next_version(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Drops the oldest final records of `runbook` beyond [`KEPT_PER_RUNBOOK`]. Names sort
    /// by instant within a runbook's prefix, so the first ones are the oldest.
    fn trim(&mut self, runbook: &str) {
        let prefix = record::occurrences_prefix(runbook);
        let finals: Vec<String> = self
            .records
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(_, (r, _))| r.state.is_final())
            .map(|(name, _)| name.clone())
            .collect();
        let excess = finals.len().saturating_sub(KEPT_PER_RUNBOOK);
        for name in &finals[..excess] {
            self.records.remove(name);
        }
    }
}

fn version(n: u64) -> Version {
    Version(n.to_string())
}

impl LocalCoordinator {
    pub fn new(clock: SharedClock) -> Self {
        let (health, _) = watch::channel(StorageHealth::Ok);
        Self {
            state: Arc::new(Mutex::new(LocalState::default())),
            clock,
            health: Arc::new(health),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        // A panic while holding this mutex cannot leave a half-written entry (each operation
        // writes whole values), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
        schedule: usize,
        replica_id: &str,
    ) -> Claim {
        let now = self.clock.now();
        let claimed = OccurrenceRecord {
            schedule,
            ..OccurrenceRecord::claimed(runbook, instant, replica_id, now)
        };
        let name = claimed.blob_name();
        let mut state = self.lock();
        if state.records.contains_key(&name) {
            return Claim::AlreadyClaimed;
        }
        self.take_lock_and_start(&mut state, name, claimed, now)
    }

    pub fn claim_rerun(&self, interrupted: &InterruptedOccurrence, replica_id: &str) -> Claim {
        let now = self.clock.now();
        let name = interrupted.record.blob_name();
        let mut state = self.lock();
        match state.records.get(&name) {
            Some((_, v)) if version(*v) == interrupted.version => {}
            _ => return Claim::AlreadyClaimed,
        }
        let claimed = interrupted.record.reclaimed(replica_id, now);
        self.take_lock_and_start(&mut state, name, claimed, now)
    }

    fn take_lock_and_start(
        &self,
        state: &mut LocalState,
        name: String,
        claimed: OccurrenceRecord,
        now: DateTime<Utc>,
    ) -> Claim {
        let lock = record::lock_blob(&claimed.runbook);
        let v = state.next_version();
        if state.locks.contains_key(&lock) {
            let runbook = claimed.runbook.clone();
            state.records.insert(name, (claimed.skipped(now), v));
            state.trim(&runbook);
            return Claim::Busy;
        }
        let token = state.next_version();
        state.locks.insert(lock.clone(), token);
        let running = claimed.started(now);
        let runbook = running.runbook.clone();
        state.records.insert(name.clone(), (running.clone(), v));
        state.trim(&runbook);
        Claim::Acquired(OccurrenceGuard {
            record: running,
            lost: CancellationToken::new(),
            held: Held::Local(LocalHold {
                coordinator: self.clone(),
                name,
                lock,
                token,
                version: v,
                released: false,
            }),
        })
    }

    pub fn sweep_interrupted(&self, runbook: &str) -> Vec<InterruptedOccurrence> {
        let now = self.clock.now();
        let prefix = record::occurrences_prefix(runbook);
        let mut state = self.lock();
        let lock_held = state.locks.contains_key(&record::lock_blob(runbook));
        let orphans: Vec<(String, OccurrenceRecord)> = state
            .records
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(_, (r, _))| !r.state.is_final() && !lock_held)
            .map(|(name, (r, _))| (name.clone(), r.clone()))
            .collect();
        let mut out = Vec::new();
        for (name, found) in orphans {
            let v = state.next_version();
            let marked = found.orphaned(now);
            state.records.insert(name, (marked.clone(), v));
            out.push(InterruptedOccurrence {
                record: marked,
                started: found.state == OccurrenceState::Running,
                version: version(v),
            });
        }
        out
    }

    pub fn list_occurrences(&self, runbook: &str, limit: usize) -> Vec<OccurrenceRecord> {
        let prefix = record::occurrences_prefix(runbook);
        let state = self.lock();
        let mut all: Vec<OccurrenceRecord> = state
            .records
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .map(|(_, (r, _))| r.clone())
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.scheduled_for));
        all.truncate(limit);
        all
    }

    pub fn occurrence(
        &self,
        runbook: &str,
        instant: DateTime<Utc>,
    ) -> Option<Versioned<OccurrenceRecord>> {
        let state = self.lock();
        state
            .records
            .get(&record::occurrence_blob(runbook, instant))
            .map(|(r, v)| Versioned {
                value: r.clone(),
                version: version(*v),
            })
    }

    pub fn schedule_status(&self, runbook: &str) -> Option<Versioned<ScheduleStatus>> {
        let state = self.lock();
        state
            .statuses
            .get(&record::status_blob(runbook))
            .map(|(s, v)| Versioned {
                value: s.clone(),
                version: version(*v),
            })
    }

    pub fn write_schedule_status(
        &self,
        status: &ScheduleStatus,
        expected: Option<&Version>,
    ) -> Result<Version, CoordinationError> {
        let name = record::status_blob(&status.runbook);
        let mut state = self.lock();
        let current = state.statuses.get(&name).map(|(_, v)| version(*v));
        if current.as_ref() != expected {
            return Err(CoordinationError::Conflict { blob: name });
        }
        let v = state.next_version();
        state.statuses.insert(name, (status.clone(), v));
        Ok(version(v))
    }

    pub fn update_status(
        &self,
        runbook: &str,
        change: impl Fn(&ScheduleStatus) -> ScheduleStatus,
    ) -> Result<ScheduleStatus, CoordinationError> {
        let name = record::status_blob(runbook);
        let mut state = self.lock();
        let current = state
            .statuses
            .get(&name)
            .map(|(s, _)| s.clone())
            .unwrap_or_else(|| ScheduleStatus::new(runbook));
        let updated = change(&current);
        let v = state.next_version();
        state.statuses.insert(name, (updated.clone(), v));
        Ok(updated)
    }

    pub fn health(&self) -> watch::Receiver<StorageHealth> {
        self.health.subscribe()
    }

    /// Drops final occurrence records scheduled before `cutoff` (also those of runbooks
    /// that were deleted, which the per-runbook cap never revisits). Returns how many.
    pub fn prune(&self, cutoff: DateTime<Utc>) -> usize {
        let mut state = self.lock();
        let before = state.records.len();
        state
            .records
            .retain(|_, (r, _)| !(r.state.is_final() && r.scheduled_for < cutoff));
        // The status of a runbook that has fired nothing since the cutoff (deleted, or
        // disabled) goes too; it is only a start-up hint with one replica.
        state.statuses.retain(|_, (s, _)| {
            s.last_fired
                .max(s.last_completed)
                .is_some_and(|t| t >= cutoff)
        });
        before - state.records.len()
    }

    /// How many occurrence records are held (for tests and the soak bench's reasoning).
    pub fn record_count(&self) -> usize {
        self.lock().records.len()
    }
}

/// A held local lock.
#[derive(Debug)]
pub(crate) struct LocalHold {
    coordinator: LocalCoordinator,
    name: String,
    lock: String,
    token: u64,
    version: u64,
    released: bool,
}

impl LocalHold {
    pub(crate) fn complete(
        mut self,
        record: &OccurrenceRecord,
        state: FinalState,
        job_id: Option<String>,
    ) -> Result<OccurrenceRecord, CoordinationError> {
        let now = self.coordinator.clock.now();
        let ended = record.ended(state, job_id, now);
        self.released = true;
        {
            let coordinator = self.coordinator.clone();
            let mut shared = coordinator.lock();
            release_lock(&mut shared, &self.lock, self.token);
            // Fencing, as with ETags: a sweeper may have marked the record in the meantime.
            let unchanged =
                matches!(shared.records.get(&self.name), Some((_, v)) if *v == self.version);
            if !unchanged {
                return Err(CoordinationError::LeaseLost {
                    runbook: record.runbook.clone(),
                    scheduled_for: record.scheduled_for,
                });
            }
            let v = shared.next_version();
            shared.records.insert(self.name.clone(), (ended.clone(), v));
            shared.trim(&record.runbook);
        }
        if state == FinalState::Completed {
            self.coordinator
                .update_status(&record.runbook, |s| s.with_completed(record.scheduled_for))?;
        }
        Ok(ended)
    }
}

fn release_lock(shared: &mut LocalState, lock: &str, token: u64) {
    if shared.locks.get(lock) == Some(&token) {
        shared.locks.remove(lock);
    }
}

impl Drop for LocalHold {
    fn drop(&mut self) {
        if !self.released {
            release_lock(&mut self.coordinator.lock(), &self.lock, self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone as _;

    use super::*;
    use crate::clock::{Clock as _, ManualClock};
    use crate::coordination::{Coordinator, spawn_pruner};

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 4, 10, 0, 0).unwrap()
    }

    async fn run_once(coordinator: &LocalCoordinator, runbook: &str, instant: DateTime<Utc>) {
        match coordinator.claim(runbook, instant, 0, "test") {
            Claim::Acquired(guard) => {
                guard
                    .complete(FinalState::Completed, Some("job".to_string()))
                    .await
                    .expect("complete");
            }
            other => panic!("the occurrence at {instant} was not acquired: {other:?}"),
        }
    }

    #[tokio::test]
    async fn two_schedules_at_one_instant_are_two_occurrences_each_claimed_once() {
        let coordinator = LocalCoordinator::new(Arc::new(ManualClock::new(start())));
        run_once(&coordinator, "a", start()).await;
        assert!(
            matches!(
                coordinator.claim("a", start(), 0, "other"),
                Claim::AlreadyClaimed
            ),
            "schedule 0's occurrence is taken"
        );
        let Claim::Acquired(second) = coordinator.claim("a", start(), 1, "test") else {
            panic!("schedule 1 at the same instant is its own occurrence");
        };
        assert!(matches!(
            coordinator.claim("a", start(), 1, "other"),
            Claim::AlreadyClaimed
        ));
        second
            .complete(FinalState::Completed, None)
            .await
            .expect("complete");
        let schedules: Vec<usize> = coordinator
            .list_occurrences("a", 10)
            .iter()
            .map(|r| r.schedule)
            .collect();
        assert_eq!(schedules.len(), 2);
        assert!(
            schedules.contains(&0) && schedules.contains(&1),
            "{schedules:?}"
        );
    }

    #[tokio::test]
    async fn each_runbook_keeps_a_bounded_number_of_final_records_and_the_unfinished_one() {
        let clock = ManualClock::new(start());
        let coordinator = LocalCoordinator::new(Arc::new(clock.clone()));
        for second in 0..(KEPT_PER_RUNBOOK as i64 * 4) {
            run_once(
                &coordinator,
                "a",
                start() + chrono::Duration::seconds(second),
            )
            .await;
        }
        assert_eq!(coordinator.record_count(), KEPT_PER_RUNBOOK);
        let Claim::Acquired(running) =
            coordinator.claim("a", start() + chrono::Duration::hours(1), 0, "test")
        else {
            panic!("a new instant is acquired");
        };
        run_once(&coordinator, "b", start()).await;
        // The newest final records stay, with the running one and the other runbook's.
        assert_eq!(coordinator.record_count(), KEPT_PER_RUNBOOK + 2);
        let newest = coordinator.list_occurrences("a", 2);
        assert_eq!(newest[0].state, OccurrenceState::Running);
        assert_eq!(
            newest[1].scheduled_for,
            start() + chrono::Duration::seconds(KEPT_PER_RUNBOOK as i64 * 4 - 1)
        );
        // A pruned instant is not claimable twice within the retention: it is still there.
        assert!(matches!(
            coordinator.claim("a", newest[1].scheduled_for, 0, "test"),
            Claim::AlreadyClaimed
        ));
        drop(running);
    }

    #[tokio::test]
    async fn the_pruner_drops_final_records_older_than_the_retention_as_the_clock_moves() {
        let clock = ManualClock::new(start());
        let coordinator = LocalCoordinator::new(Arc::new(clock.clone()));
        run_once(&coordinator, "old", start()).await;
        let Claim::Acquired(unfinished) = coordinator.claim("stuck", start(), 0, "test") else {
            panic!("acquired");
        };
        coordinator
            .update_status("old", |s| s.with_fired(start()))
            .unwrap();
        let cancel = CancellationToken::new();
        let pruner = spawn_pruner(
            Coordinator::Local(coordinator.clone()),
            Arc::new(clock.clone()),
            Duration::from_secs(3600),
            Duration::from_secs(60),
            cancel.clone(),
        );
        // Within the retention: nothing goes, however often the pruner runs.
        clock.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert_eq!(coordinator.record_count(), 2);

        clock.advance(Duration::from_secs(1860));
        run_once(&coordinator, "new", clock.now()).await;
        let pruned = async {
            while coordinator.record_count() != 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), pruned)
            .await
            .expect("the old final record is pruned");
        assert!(coordinator.occurrence("old", start()).is_none());
        assert!(
            coordinator.occurrence("stuck", start()).is_some(),
            "unfinished records stay"
        );
        assert!(coordinator.occurrence("new", clock.now()).is_some());
        assert!(
            coordinator.schedule_status("old").is_none(),
            "a stale status goes too"
        );
        cancel.cancel();
        pruner.await.unwrap();
        drop(unfinished);
    }
}
