//! [`JobHistory`]: the one history the scheduler, the executor's sink, the API and the CLI
//! record in and read from, whichever store holds it: SQLite under `state.dir` for one
//! process ([`HistoryStore`]), or the blob container every replica shares
//! ([`BlobHistoryStore`]). Both answer with the same types and the same errors
//! ([`HistoryError`]), so callers never branch on the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::blob::{BlobHistoryError, BlobHistoryStore};
use super::{
    FailureKind, HistoryError, HistoryHealth, HistoryStore, JobDetail, JobFilter, JobId,
    JobSummary, NewJob, NewStreamEntry, Outcome, StepCounts,
};

/// The job history of this worker; cheap to clone.
#[derive(Clone, Debug)]
pub enum JobHistory {
    /// SQLite under `state.dir` (`coordination.kind = "local"`).
    Local(HistoryStore),
    /// The blob container the replicas share (`coordination.kind = "azure-blob"`).
    Shared(SharedHistory),
}

/// The blob store with what the worker keeps beside it: whether its writes succeed.
#[derive(Clone, Debug)]
pub struct SharedHistory {
    store: BlobHistoryStore,
    health: HistoryHealth,
    interrupted_at_open: Arc<Vec<JobSummary>>,
}

impl SharedHistory {
    pub fn new(store: BlobHistoryStore) -> SharedHistory {
        SharedHistory {
            store,
            health: HistoryHealth::default(),
            interrupted_at_open: Arc::new(Vec::new()),
        }
    }

    pub fn store(&self) -> &BlobHistoryStore {
        &self.store
    }

    /// Takes note of a write's result for readiness, and gives it the common error type.
    fn observe<T>(&self, result: Result<T, BlobHistoryError>) -> Result<T, HistoryError> {
        let result = result.map_err(HistoryError::from);
        self.health.observe(&result);
        result
    }
}

impl From<BlobHistoryError> for HistoryError {
    fn from(error: BlobHistoryError) -> HistoryError {
        let kind = match &error {
            BlobHistoryError::Job(_) => FailureKind::Other,
            // The storage did not answer, refused the identity (an expired SAS, a role not yet
            // granted) or kept changing: the same write may succeed later.
            BlobHistoryError::Unreachable { .. } | BlobHistoryError::Forbidden { .. } => {
                FailureKind::Io
            }
            BlobHistoryError::Conflict { .. } => FailureKind::Locked,
            _ => FailureKind::Other,
        };
        match error {
            BlobHistoryError::Job(inner) => inner,
            other => HistoryError::Shared {
                kind,
                detail: other.to_string(),
            },
        }
    }
}

impl From<HistoryStore> for JobHistory {
    fn from(store: HistoryStore) -> JobHistory {
        JobHistory::Local(store)
    }
}

impl From<BlobHistoryStore> for JobHistory {
    fn from(store: BlobHistoryStore) -> JobHistory {
        JobHistory::Shared(SharedHistory::new(store))
    }
}

/// The same call on either store: the shared one's result goes through its health.
macro_rules! on_store {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            JobHistory::Local($store) => $call.await,
            JobHistory::Shared(shared) => {
                let $store = &shared.store;
                shared.observe($call.await)
            }
        }
    };
}

/// The same read on either store; reads say nothing about whether writes succeed.
macro_rules! read_store {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            JobHistory::Local($store) => $call.await,
            JobHistory::Shared(shared) => {
                let $store = &shared.store;
                $call.await.map_err(HistoryError::from)
            }
        }
    };
}

impl JobHistory {
    /// Whether writes succeed, for `/readyz`.
    pub fn health(&self) -> &HistoryHealth {
        match self {
            JobHistory::Local(store) => store.health(),
            JobHistory::Shared(shared) => &shared.health,
        }
    }

    /// Whether the history is the one the replicas share.
    pub fn is_shared(&self) -> bool {
        matches!(self, JobHistory::Shared(_))
    }

    /// The jobs the open found Queued or Running and marked Interrupted, for the scheduler's
    /// `on_interrupt` policy. The shared history leaves that to the coordination sweep,
    /// which knows which replicas are gone.
    pub fn interrupted_at_open(&self) -> &[JobSummary] {
        match self {
            JobHistory::Local(store) => store.interrupted_at_open(),
            JobHistory::Shared(shared) => &shared.interrupted_at_open,
        }
    }

    /// Records a job that became due, as Queued. Its `created_at` is now.
    pub async fn create_job(&self, job: NewJob) -> Result<JobId, HistoryError> {
        on_store!(self, s => s.create_job(job))
    }

    /// Records an occurrence that will not run as Skipped, with `reason` as its error.
    pub async fn record_skipped(&self, job: NewJob, reason: &str) -> Result<JobId, HistoryError> {
        on_store!(self, s => s.record_skipped(job, reason))
    }

    /// Queued → Running, with `started_at` now.
    pub async fn mark_running(&self, id: &JobId) -> Result<(), HistoryError> {
        on_store!(self, s => s.mark_running(id))
    }

    /// Appends entries to the job's streams (bounded per stream; see the stores).
    pub async fn append_stream(
        &self,
        id: &JobId,
        entries: Vec<NewStreamEntry>,
    ) -> Result<(), HistoryError> {
        on_store!(self, s => s.append_stream(id, entries))
    }

    /// Replaces the job's per-step counts while it runs.
    pub async fn update_steps(
        &self,
        id: &JobId,
        steps: Vec<StepCounts>,
    ) -> Result<(), HistoryError> {
        on_store!(self, s => s.update_steps(id, steps))
    }

    /// Queued or Running → the outcome's final status, with `ended_at` now.
    pub async fn finish(&self, id: &JobId, outcome: Outcome) -> Result<(), HistoryError> {
        on_store!(self, s => s.finish(id, outcome))
    }

    /// Deletes finished jobs older than the retention (in the shared store by the one
    /// replica holding the prune lease). Returns how many this call deleted.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        on_store!(self, s => s.prune(now))
    }

    /// Flushes and stops the writer; reads keep working.
    pub async fn close(&self) -> Result<(), HistoryError> {
        match self {
            JobHistory::Local(store) => store.close().await,
            JobHistory::Shared(_) => Ok(()),
        }
    }

    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
        read_store!(self, s => s.get_job(id))
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, HistoryError> {
        read_store!(self, s => s.list_jobs(filter))
    }

    pub async fn last_status_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, JobSummary>, HistoryError> {
        read_store!(self, s => s.last_status_per_runbook())
    }

    pub async fn last_occurrence_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, DateTime<Utc>>, HistoryError> {
        read_store!(self, s => s.last_occurrence_per_runbook())
    }
}
