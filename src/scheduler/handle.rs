//! What the scheduler loop and its callers exchange: the events the loop reacts to, the
//! keys of its jobs, the state the API reads without going through the loop, and the handle
//! that sends requests in. The loop itself is [`super::engine`]; the tasks it spawns
//! ([`super::job`], `super::sweep`) talk back to it only through these types.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::coordination::InterruptedOccurrence;
use crate::history::{HistoryError, JobId, JobStatus, Trigger};
use crate::runbook::{Catalog, ParamErrors, ParamInput, ValidationError};

use super::catalog::LiveCatalog;

/// Why a run request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no runbook named {0:?} is loaded (GET /api/runbooks lists them)")]
    NotFound(String),
    #[error(transparent)]
    Params(#[from] ParamErrors),
    #[error("{0}")]
    Busy(String),
    #[error("the worker is shutting down and starts no new jobs; try another replica or later")]
    ShuttingDown,
    #[error("cannot record the job in the history")]
    History(#[source] HistoryError),
}

/// The most recent job of a runbook, for the API and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastJob {
    pub job_id: JobId,
    pub status: JobStatus,
}

/// A job's key inside the engine (history ids exist only once the job is recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey(pub(super) u64);

/// Everything the loop reacts to, besides its own timer and the shutdown token.
#[derive(Debug)]
pub(crate) enum Event {
    /// The folder changed (watcher) or SIGHUP: load it again.
    Reload,
    /// A load finished.
    Loaded {
        catalog: Catalog,
        errors: Vec<ValidationError>,
    },
    Run {
        name: String,
        params: Vec<(String, ParamInput)>,
        dry_run: bool,
        trigger: Trigger,
        reply: oneshot::Sender<Result<JobId, RunError>>,
    },
    Cancel {
        id: JobId,
        reply: oneshot::Sender<bool>,
    },
    /// A missed occurrence found in the coordination store at start.
    CatchUp {
        name: String,
        instant: DateTime<Utc>,
        /// The schedule that missed it.
        schedule: usize,
    },
    /// An orphaned occurrence a sweep marked Interrupted.
    Interrupted(Box<InterruptedOccurrence>),
    Job(JobEvent),
}

/// What the API reads without going through the loop.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(super) catalog: RwLock<Arc<LiveCatalog>>,
    pub(super) last_jobs: Mutex<HashMap<String, LastJob>>,
    pub(super) stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn catalog(&self) -> Arc<LiveCatalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Talks to a running scheduler; cheap to clone.
#[derive(Clone, Debug)]
pub struct SchedulerHandle {
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) shared: Arc<Shared>,
}

impl SchedulerHandle {
    /// The catalog in force.
    pub fn catalog(&self) -> Arc<LiveCatalog> {
        self.shared.catalog()
    }

    /// The most recent job of `runbook` (Skipped occurrences aside).
    pub fn last_job(&self, runbook: &str) -> Option<LastJob> {
        self.shared
            .last_jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(runbook)
            .cloned()
    }

    /// True from the moment shutdown starts.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// Loads the runbooks folder again (file watcher, SIGHUP).
    pub fn reload(&self) {
        let _ = self.events.send(Event::Reload);
    }

    /// Starts a job of `runbook` now (or queues it behind a running one, per its
    /// `overlap`); answers once the job is in the history.
    pub async fn run(
        &self,
        runbook: &str,
        params: Vec<(String, ParamInput)>,
        dry_run: bool,
        trigger: Trigger,
    ) -> Result<JobId, RunError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Run {
                name: runbook.to_string(),
                params,
                dry_run,
                trigger,
                reply,
            })
            .map_err(|_| RunError::ShuttingDown)?;
        answer.await.unwrap_or(Err(RunError::ShuttingDown))
    }

    /// Tells job `id` to stop (between calls); false when it is not running or queued here.
    pub async fn cancel(&self, id: &JobId) -> bool {
        let (reply, answer) = oneshot::channel();
        if self
            .events
            .send(Event::Cancel {
                id: id.clone(),
                reply,
            })
            .is_err()
        {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// What a job task reports to the engine.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// The job is in the history (Queued).
    Recorded { key: JobKey, job_id: JobId },
    /// The job holds its occurrence and is running.
    Started { key: JobKey },
    /// The task is done. `status` is the final status recorded, `None` when the job never
    /// became this replica's (another replica claimed it). `lost_job` is set when the task
    /// died (a panic) after recording a job it could not finish.
    Finished {
        key: JobKey,
        status: Option<JobStatus>,
        job_id: Option<JobId>,
        lost_job: Option<JobId>,
    },
}
