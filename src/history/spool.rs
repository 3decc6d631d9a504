//! The shared history's local spool: every job this replica runs is written to a small
//! SQLite history under `state.dir` (`history-spool.sqlite3`) first and mirrored to the blob
//! container. A job whose mirror write fails (storage unreachable, refused) is marked
//! pending: its later writes go to the spool only, and once it has ended it is uploaded whole
//! with [`BlobHistoryStore::upsert_job`] (record, streams and index replaced, so a retry never
//! duplicates anything), its reports after it. A job is forgotten locally once the container
//! holds its end, so the spool holds only running jobs and jobs waiting for upload.
//!
//! A process that dies with pending jobs finds them at the next start (the spool's open marks
//! the ones left running Interrupted, as the local history does) and uploads them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::blob::BlobHistoryStore;
use super::job_history::LocalReports;
use super::{HistoryError, HistoryHealth, HistoryStore, JobFilter, JobId};
use crate::clock::SharedClock;

/// The spool's file name inside `state.dir`.
pub const SPOOL_FILE: &str = "history-spool.sqlite3";

/// Where the spool of a worker with this `state.dir` lives.
pub fn spool_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SPOOL_FILE)
}

pub(super) struct Spool {
    pub(super) local: HistoryStore,
    pub(super) reports: LocalReports,
    replica: String,
    /// Jobs whose shared copy is behind the spool. The lock is never held across an await.
    pending: Mutex<Pending>,
    pub(super) stop: CancellationToken,
}

#[derive(Default)]
struct Pending {
    jobs: BTreeSet<JobId>,
    last_error: Option<String>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.local.path())
            .field("pending", &self.pending_count())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens the spool and takes every job it still holds as pending (a previous process
    /// could not upload them).
    pub(super) async fn open(local: HistoryStore, replica: &str) -> Result<Spool, HistoryError> {
        let mut left = BTreeSet::new();
        let mut before = None;
        loop {
            let page = local
                .list_jobs(&JobFilter {
                    limit: JobFilter::MAX_LIMIT,
                    before: before.clone(),
                    ..JobFilter::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.id.clone());
            left.extend(page.into_iter().map(|job| job.id));
        }
        if !left.is_empty() {
            tracing::warn!(
                count = left.len(),
                "jobs of a previous process wait to be written to the shared history"
            );
        }
        Ok(Spool {
            reports: LocalReports::of(local.path()),
            local,
            replica: replica.to_string(),
            pending: Mutex::new(Pending {
                jobs: left,
                last_error: None,
            }),
            stop: CancellationToken::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_pending(&self, id: &JobId) -> bool {
        self.lock().jobs.contains(id)
    }

    pub(super) fn pending_count(&self) -> usize {
        self.lock().jobs.len()
    }

    /// The shared store refused a write of `id`: from now on the job waits in the spool.
    pub(super) fn mark_pending(&self, id: &JobId, error: &HistoryError, health: &HistoryHealth) {
        {
            let mut pending = self.lock();
            if pending.jobs.insert(id.clone()) {
                tracing::warn!(job_id = %id, error = %error.chain(), "cannot write a job to the shared history; it is kept under state.dir and uploaded when the storage takes it");
            }
            pending.last_error = Some(error.chain());
        }
        self.report(health);
    }

    /// Readiness: not ready while jobs wait, with how many and why.
    fn report(&self, health: &HistoryHealth) {
        let pending = self.lock();
        health.set(match pending.jobs.len() {
            0 => None,
            n => Some(format!(
                "{n} job(s) wait to be written to the shared history (kept under state.dir): {}",
                pending.last_error.as_deref().unwrap_or("not written yet")
            )),
        });
    }

    /// Uploads one pending job if it has ended (a running one is uploaded at its end);
    /// returns whether it is no longer pending.
    pub(super) async fn upload(
        &self,
        store: &BlobHistoryStore,
        id: &JobId,
        health: &HistoryHealth,
    ) -> bool {
        let result = self.try_upload(store, id).await;
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                self.lock().last_error = Some(e.chain());
                false
            }
        };
        if done {
            self.lock().jobs.remove(id);
        }
        self.report(health);
        done
    }

    async fn try_upload(&self, store: &BlobHistoryStore, id: &JobId) -> Result<bool, HistoryError> {
        let Some(detail) = self.local.get_job(id).await? else {
            return Ok(true);
        };
        if !detail.job.status.is_final() {
            return Ok(false);
        }
        store.upsert_job(&detail, &self.replica).await?;
        for report in self.reports.list(id).await? {
            let path = self.reports.path(id, &report.file);
            let content = tokio::fs::read(&path)
                .await
                .map_err(|e| super::job_history::report_error("read", &path, e))?;
            store.put_report(id, &report.file, content).await?;
            if let Err(e) = tokio::fs::remove_file(&path).await {
                tracing::warn!(job_id = %id, file = %report.file, error = %e, "a report uploaded to the shared history could not be removed locally");
            }
        }
        self.local.forget(id).await?;
        tracing::info!(job_id = %id, "wrote a job kept under state.dir to the shared history");
        Ok(true)
    }

    /// One pass over the pending jobs.
    pub(super) async fn upload_all(&self, store: &BlobHistoryStore, health: &HistoryHealth) {
        let ids: Vec<JobId> = self.lock().jobs.iter().cloned().collect();
        for id in ids {
            self.upload(store, &id, health).await;
        }
    }
}

/// Uploads pending jobs every [`super::RETRY_EVERY`] until the spool stops.
pub(super) async fn run_uploader(
    spool: Arc<Spool>,
    store: BlobHistoryStore,
    health: HistoryHealth,
    clock: SharedClock,
) {
    let step =
        chrono::Duration::from_std(super::RETRY_EVERY).unwrap_or(chrono::Duration::seconds(1));
    loop {
        spool.upload_all(&store, &health).await;
        let deadline = clock.now() + step;
        tokio::select! {
            biased;
            () = spool.stop.cancelled() => return,
            () = clock.sleep_until(deadline) => {}
        }
    }
}
