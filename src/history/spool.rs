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
//!
//! The spool is bounded by `history.spool_max_jobs`: the newest waiting jobs are kept whole;
//! an ended job older than those keeps its record, step counts, warnings and errors, and its
//! output, plan and progress entries and report files are deleted (counted as dropped, with
//! a warning entry on the job saying so). So a long outage costs a few KiB per job, and the
//! outcome of every job still reaches the shared history.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::blob::BlobHistoryStore;
use super::job_history::LocalReports;
use super::{
    HistoryError, HistoryHealth, HistoryStore, JobFilter, JobId, NewStreamEntry, StreamKind,
};
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
    /// `history.spool_max_jobs`.
    max_whole_jobs: usize,
    /// Jobs whose shared copy is behind the spool. The lock is never held across an await.
    pending: Mutex<Pending>,
    pub(super) stop: CancellationToken,
}

#[derive(Default)]
struct Pending {
    jobs: BTreeSet<JobId>,
    /// Pending jobs already cut down to their record (a subset of `jobs`).
    trimmed: BTreeSet<JobId>,
    last_error: Option<String>,
}

/// The streams a job cut down in the spool loses; warnings and errors (each capped by
/// `max_entries_per_stream`) say what went wrong and are kept.
const TRIMMED_STREAMS: [StreamKind; 3] =
    [StreamKind::Output, StreamKind::Plan, StreamKind::Progress];

/// Which pending jobs to cut down: the ended ones not yet cut, oldest first, beyond the
/// newest `max_whole` pending jobs (ids sort by creation time).
fn to_trim(pending: &BTreeSet<JobId>, trimmed: &BTreeSet<JobId>, max_whole: usize) -> Vec<JobId> {
    let beyond = pending.len().saturating_sub(max_whole);
    pending
        .iter()
        .take(beyond)
        .filter(|id| !trimmed.contains(*id))
        .cloned()
        .collect()
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
    pub(super) async fn open(
        local: HistoryStore,
        replica: &str,
        max_whole_jobs: usize,
    ) -> Result<Spool, HistoryError> {
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
            max_whole_jobs: max_whole_jobs.max(1),
            pending: Mutex::new(Pending {
                jobs: left,
                trimmed: BTreeSet::new(),
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
            let mut pending = self.lock();
            pending.jobs.remove(id);
            pending.trimmed.remove(id);
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

    /// Cuts the ended pending jobs beyond the newest `history.spool_max_jobs` down to their
    /// record (see the module doc). Returns how many it cut.
    pub(super) async fn enforce_cap(&self) -> usize {
        let candidates = {
            let pending = self.lock();
            to_trim(&pending.jobs, &pending.trimmed, self.max_whole_jobs)
        };
        let mut cut = 0;
        for id in candidates {
            match self.trim(&id).await {
                Ok(true) => {
                    self.lock().trimmed.insert(id);
                    cut += 1;
                }
                // Still running: cut once it has ended, at a later pass.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e.chain(), "cannot cut down a job waiting in the spool");
                }
            }
        }
        cut
    }

    async fn trim(&self, id: &JobId) -> Result<bool, HistoryError> {
        let Some(detail) = self.local.get_job(id).await? else {
            return Ok(true);
        };
        if !detail.job.status.is_final() {
            return Ok(false);
        }
        let entries = self.local.trim_streams(id, &TRIMMED_STREAMS).await?;
        let mut reports = 0usize;
        for report in self.reports.list(id).await? {
            let path = self.reports.path(id, &report.file);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => reports += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(super::job_history::report_error("remove", &path, e)),
            }
        }
        let message = format!(
            "the shared history was unreachable while more than {} jobs of this replica waited for it (history.spool_max_jobs): {entries} output, plan and progress entries and {reports} report file(s) of this job were dropped; its status, step counts, warnings and errors are kept",
            self.max_whole_jobs
        );
        self.local
            .append_stream(id, vec![NewStreamEntry::warning(message)])
            .await?;
        tracing::warn!(job_id = %id, entries, reports, max_jobs = self.max_whole_jobs, "cut a job waiting in the spool down to its record");
        Ok(true)
    }

    /// One pass over the pending jobs.
    pub(super) async fn upload_all(&self, store: &BlobHistoryStore, health: &HistoryHealth) {
        self.enforce_cap().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::id::IdGenerator;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_oldest_waiting_jobs_beyond_the_cap_are_cut_once() {
        let ids = IdGenerator::default();
        let made: Vec<JobId> = (0..5)
            .map(|m| ids.next(Utc.with_ymd_and_hms(2026, 3, 1, 6, m, 0).unwrap()))
            .collect();
        let pending: BTreeSet<JobId> = made.iter().cloned().collect();
        assert_eq!(to_trim(&pending, &BTreeSet::new(), 5), Vec::<JobId>::new());
        assert_eq!(to_trim(&pending, &BTreeSet::new(), 3), made[..2].to_vec());
        let trimmed: BTreeSet<JobId> = [made[0].clone()].into();
        assert_eq!(to_trim(&pending, &trimmed, 3), made[1..2].to_vec());
        assert_eq!(to_trim(&pending, &trimmed, 1), made[1..4].to_vec());
    }
}
