//! [`JobHistory`]: the one history the scheduler, the executor's sink, the API and the CLI
//! record in and read from, whichever store holds it: SQLite under `state.dir` for one
//! process ([`HistoryStore`]), or the blob container every replica shares
//! ([`BlobHistoryStore`]). Both answer with the same types and the same errors
//! ([`HistoryError`]), so callers never branch on the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::io::AsyncReadExt as _;

use super::blob::{BlobHistoryError, BlobHistoryStore, valid_report_name};
use super::spool::{Spool, run_uploader};
use super::{
    FailureKind, HistoryError, HistoryHealth, HistoryStore, JobDetail, JobFilter, JobId, JobStatus,
    JobSummary, NewJob, NewStreamEntry, Outcome, ReportFile, StepCounts,
};
use crate::clock::SharedClock;

/// Bytes read from a local report file per chunk of a download.
const REPORT_CHUNK: usize = 64 * 1024;

/// A report file being read: its length and its bytes as a stream, never held whole.
pub struct ReportBody {
    pub bytes: u64,
    pub stream: Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>,
}

impl std::fmt::Debug for ReportBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportBody")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// The reports of the local history: `<state.dir>/reports/<job id>/`, where the executor
/// writes them.
#[derive(Clone, Debug)]
pub struct LocalReports {
    root: PathBuf,
}

impl LocalReports {
    /// The reports beside the history database at `database`.
    pub fn of(database: &Path) -> LocalReports {
        LocalReports {
            root: database.parent().unwrap_or(Path::new(".")).join("reports"),
        }
    }

    fn folder(&self, id: &JobId) -> PathBuf {
        self.root.join(id.as_str())
    }

    pub(super) fn path(&self, id: &JobId, file: &str) -> PathBuf {
        self.folder(id).join(file)
    }

    /// The finished report files of a job, by name.
    pub async fn list(&self, id: &JobId) -> Result<Vec<ReportFile>, HistoryError> {
        let folder = self.folder(id);
        let mut entries = match tokio::fs::read_dir(&folder).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(report_error("list", &folder, e)),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| report_error("list", &folder, e))?
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A `.partial` file is a report still being written (or a dead job's).
            if !valid_report_name(&name) || name.ends_with(".partial") {
                continue;
            }
            match entry.metadata().await {
                Ok(meta) if meta.is_file() => out.push(ReportFile {
                    file: name,
                    bytes: meta.len(),
                }),
                _ => {}
            }
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// Deletes the report folders of jobs created before `cutoff` that the history no
    /// longer holds (pruned with their records). Returns how many folders it deleted.
    pub async fn prune(
        &self,
        cutoff: DateTime<Utc>,
        store: &HistoryStore,
    ) -> Result<u64, HistoryError> {
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(report_error("list", &self.root, e)),
        };
        let mut deleted = 0;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| report_error("list", &self.root, e))?
        {
            let Ok(id) = entry.file_name().to_string_lossy().parse::<JobId>() else {
                continue;
            };
            if id.created_at().is_none_or(|at| at >= cutoff) || store.get_job(&id).await?.is_some()
            {
                continue;
            }
            let folder = self.folder(&id);
            tokio::fs::remove_dir_all(&folder)
                .await
                .map_err(|e| report_error("delete", &folder, e))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// A report file, streamed; `None` when there is none of that (valid) name.
    pub async fn open(&self, id: &JobId, file: &str) -> Result<Option<ReportBody>, HistoryError> {
        if !valid_report_name(file) || file.ends_with(".partial") {
            return Ok(None);
        }
        let path = self.folder(id).join(file);
        let handle = match tokio::fs::File::open(&path).await {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(report_error("open", &path, e)),
        };
        let meta = handle
            .metadata()
            .await
            .map_err(|e| report_error("open", &path, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let stream = futures::stream::try_unfold(handle, |mut handle| async move {
            let mut buffer = vec![0u8; REPORT_CHUNK];
            let read = handle.read(&mut buffer).await?;
            if read == 0 {
                return Ok(None);
            }
            buffer.truncate(read);
            Ok(Some((Bytes::from(buffer), handle)))
        });
        Ok(Some(ReportBody {
            bytes: meta.len(),
            stream: Box::pin(stream),
        }))
    }
}

pub(super) fn report_error(action: &str, path: &Path, error: std::io::Error) -> HistoryError {
    let kind = match error.kind() {
        std::io::ErrorKind::StorageFull => FailureKind::DiskFull,
        _ => FailureKind::Io,
    };
    HistoryError::Shared {
        kind,
        detail: format!("cannot {action} the report {}: {error}", path.display()),
    }
}

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
    /// Where this replica's jobs are kept until the container holds them (`serve`, `run`);
    /// `None` for a reader.
    spool: Option<Arc<Spool>>,
}

impl SharedHistory {
    /// The shared history for reading (and writing without a spool: every failure is
    /// returned to the caller).
    pub fn new(store: BlobHistoryStore) -> SharedHistory {
        SharedHistory {
            store,
            health: HistoryHealth::default(),
            interrupted_at_open: Arc::new(Vec::new()),
            spool: None,
        }
    }

    /// The shared history with `local` as the spool of the jobs this replica runs (see
    /// [`super::spool`]). The returned task uploads what waits; it ends after
    /// [`JobHistory::close`].
    pub async fn with_spool(
        store: BlobHistoryStore,
        local: HistoryStore,
        local_task: tokio::task::JoinHandle<()>,
        replica: &str,
        max_whole_jobs: usize,
        clock: SharedClock,
    ) -> Result<(SharedHistory, tokio::task::JoinHandle<()>), HistoryError> {
        let spool = Arc::new(Spool::open(local, replica, max_whole_jobs).await?);
        let health = HistoryHealth::default();
        let uploader = tokio::spawn(run_uploader(
            spool.clone(),
            store.clone(),
            health.clone(),
            clock,
        ));
        let task = tokio::spawn(async move {
            let _ = uploader.await;
            let _ = local_task.await;
        });
        Ok((
            SharedHistory {
                store,
                health,
                interrupted_at_open: Arc::new(Vec::new()),
                spool: Some(spool),
            },
            task,
        ))
    }

    /// Jobs waiting in the spool for the container.
    pub fn pending(&self) -> usize {
        self.spool.as_ref().map_or(0, |s| s.pending_count())
    }

    /// A mirror write's result: a refusal of the job itself is the caller's; any other
    /// failure leaves the job in the spool, pending.
    fn mirrored<T>(
        &self,
        spool: &Spool,
        id: &JobId,
        result: Result<T, BlobHistoryError>,
    ) -> Result<(), HistoryError> {
        match result {
            Ok(_) => Ok(()),
            Err(BlobHistoryError::Job(e)) => Err(e),
            Err(other) => {
                spool.mark_pending(id, &HistoryError::from(other), &self.health);
                Ok(())
            }
        }
    }

    /// A job that has ended: forgotten locally once the container holds it, else uploaded
    /// now or by the uploader.
    async fn ended(&self, spool: &Spool, id: &JobId) -> Result<(), HistoryError> {
        if spool.is_pending(id) {
            spool.upload(&self.store, id, &self.health).await;
            Ok(())
        } else {
            spool.local.forget(id).await
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
            BlobHistoryError::Unreachable { .. }
            | BlobHistoryError::Forbidden { .. }
            | BlobHistoryError::HeadNotWritten { .. } => FailureKind::Io,
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

/// A job as the spool holds it, with its reports still under `state.dir`.
async fn spooled_job(spool: &Spool, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
    let Some(mut detail) = spool.local.get_job(id).await? else {
        return Ok(None);
    };
    detail.reports = spool.reports.list(id).await?;
    Ok(Some(detail))
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

/// A write to one job: with a spool, to the spool first and then to the container unless
/// the job already waits there.
macro_rules! job_write {
    ($self:ident, $id:expr, $store:ident => $call:expr) => {
        match $self {
            JobHistory::Local($store) => $call.await,
            JobHistory::Shared(shared) => match &shared.spool {
                None => {
                    let $store = &shared.store;
                    shared.observe($call.await)
                }
                Some(spool) => {
                    {
                        let $store = &spool.local;
                        match $call.await {
                            // The spool forgot the job once the container held its end; a
                            // late write (the sink's last entries) goes to the container.
                            Ok(_) | Err(HistoryError::UnknownJob { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    if spool.is_pending($id) {
                        Ok(())
                    } else {
                        let $store = &shared.store;
                        let result = $call.await;
                        shared.mirrored(spool, $id, result)
                    }
                }
            },
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
        self.insert(job, JobStatus::Queued, None).await
    }

    async fn insert(
        &self,
        job: NewJob,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<JobId, HistoryError> {
        let reason = error.clone().unwrap_or_default();
        let (shared, spool) = match self {
            JobHistory::Shared(shared) => match &shared.spool {
                Some(spool) => (shared, spool),
                None if status == JobStatus::Skipped => {
                    return on_store!(self, s => s.record_skipped(job, &reason));
                }
                None => return on_store!(self, s => s.create_job(job)),
            },
            JobHistory::Local(_) if status == JobStatus::Skipped => {
                return on_store!(self, s => s.record_skipped(job, &reason));
            }
            JobHistory::Local(_) => return on_store!(self, s => s.create_job(job)),
        };
        let id = if status == JobStatus::Skipped {
            spool.local.record_skipped(job.clone(), &reason).await?
        } else {
            spool.local.create_job(job.clone()).await?
        };
        let created_at = id.created_at().unwrap_or_else(Utc::now);
        let result = shared
            .store
            .create_job_as(id.clone(), created_at, job, status, error)
            .await;
        shared.mirrored(spool, &id, result)?;
        if status.is_final() {
            shared.ended(spool, &id).await?;
        }
        Ok(id)
    }

    /// Records an occurrence that will not run as Skipped, with `reason` as its error.
    pub async fn record_skipped(&self, job: NewJob, reason: &str) -> Result<JobId, HistoryError> {
        self.insert(job, JobStatus::Skipped, Some(reason.to_string()))
            .await
    }

    /// Queued → Running, with `started_at` now.
    pub async fn mark_running(&self, id: &JobId) -> Result<(), HistoryError> {
        job_write!(self, id, s => s.mark_running(id))
    }

    /// Appends entries to the job's streams (bounded per stream; see the stores).
    pub async fn append_stream(
        &self,
        id: &JobId,
        entries: Vec<NewStreamEntry>,
    ) -> Result<(), HistoryError> {
        job_write!(self, id, s => s.append_stream(id, entries.clone()))
    }

    /// Replaces the job's per-step counts while it runs.
    pub async fn update_steps(
        &self,
        id: &JobId,
        steps: Vec<StepCounts>,
    ) -> Result<(), HistoryError> {
        job_write!(self, id, s => s.update_steps(id, steps.clone()))
    }

    /// Queued or Running → the outcome's final status, with `ended_at` now.
    pub async fn finish(&self, id: &JobId, outcome: Outcome) -> Result<(), HistoryError> {
        let result = job_write!(self, id, s => s.finish(id, outcome.clone()));
        if let JobHistory::Shared(shared) = self
            && let Some(spool) = &shared.spool
        {
            // Whether the container took the end or refused it for good (a sweep made the
            // job Interrupted), the spool's copy has served its purpose.
            let ended = shared.ended(spool, id).await;
            result?;
            return ended;
        }
        result
    }

    /// Marks jobs a dead replica left Queued or Running as Interrupted (the coordination
    /// sweep decides which); a job that changed meanwhile is left alone. The local history
    /// holds no other replica's jobs and marks its own at open.
    pub async fn mark_interrupted(&self, ids: &[JobId]) -> Result<Vec<JobSummary>, HistoryError> {
        match self {
            JobHistory::Local(_) => Ok(Vec::new()),
            JobHistory::Shared(shared) => shared.observe(shared.store.mark_interrupted(ids).await),
        }
    }

    /// Marks the job `owner` left Queued or Running for `runbook`'s occurrence at
    /// `scheduled_for` as Interrupted: the coordination sweep found the occurrence orphaned.
    /// Returns the jobs marked (none in the local history, which holds no other replica's
    /// jobs).
    pub async fn mark_occurrence_interrupted(
        &self,
        runbook: &str,
        scheduled_for: DateTime<Utc>,
        owner: &str,
    ) -> Result<Vec<JobSummary>, HistoryError> {
        let JobHistory::Shared(shared) = self else {
            return Ok(Vec::new());
        };
        let ids: Vec<JobId> = shared
            .store
            .unfinished_jobs()
            .await?
            .into_iter()
            .filter(|row| {
                row.job.runbook == runbook
                    && row.job.scheduled_for == Some(scheduled_for)
                    && row.replica == owner
            })
            .map(|row| row.job.id)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.mark_interrupted(&ids).await
    }

    /// Deletes finished jobs older than the retention (in the shared store by the one
    /// replica holding the prune lease). Returns how many this call deleted.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        match self {
            JobHistory::Local(store) => {
                let deleted = store.prune(now).await?;
                // Reports follow their jobs (the shared store deletes them with the job).
                let cutoff = now
                    .checked_sub_signed(
                        chrono::Duration::from_std(store.retention())
                            .unwrap_or(chrono::Duration::MAX),
                    )
                    .unwrap_or(DateTime::<Utc>::MIN_UTC);
                LocalReports::of(store.path()).prune(cutoff, store).await?;
                Ok(deleted)
            }
            JobHistory::Shared(shared) => shared.observe(shared.store.prune(now).await),
        }
    }

    /// Flushes and stops the writer; reads keep working.
    pub async fn close(&self) -> Result<(), HistoryError> {
        match self {
            JobHistory::Local(store) => store.close().await,
            JobHistory::Shared(shared) => match &shared.spool {
                None => Ok(()),
                Some(spool) => {
                    spool.stop.cancel();
                    // One last try for what waits; the rest is uploaded at the next start.
                    spool.upload_all(&shared.store, &shared.health).await;
                    spool.local.close().await
                }
            },
        }
    }

    /// One job with everything recorded about it, its report files included.
    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
        if let JobHistory::Shared(shared) = self
            && let Some(spool) = &shared.spool
        {
            // A job of this replica that waits in the spool is newer there; and while the
            // storage does not answer, this replica's own jobs are still shown from it.
            let pending = spool.is_pending(id);
            let shared_copy = if pending {
                Ok(None)
            } else {
                shared.store.get_job(id).await
            };
            return match shared_copy {
                Ok(Some(mut detail)) => {
                    detail.reports = self.list_reports(id).await?;
                    Ok(Some(detail))
                }
                // Waiting in the spool, or not in the container (yet).
                Ok(None) => spooled_job(spool, id).await,
                Err(e) => match spooled_job(spool, id).await {
                    Ok(Some(detail)) => Ok(Some(detail)),
                    _ => Err(e.into()),
                },
            };
        }
        let Some(mut detail) = read_store!(self, s => s.get_job(id))? else {
            return Ok(None);
        };
        detail.reports = self.list_reports(id).await?;
        Ok(Some(detail))
    }

    /// The report files stored with a job, by name.
    pub async fn list_reports(&self, id: &JobId) -> Result<Vec<ReportFile>, HistoryError> {
        match self {
            JobHistory::Local(store) => LocalReports::of(store.path()).list(id).await,
            JobHistory::Shared(shared) => Ok(shared
                .store
                .list_reports(id)
                .await?
                .into_iter()
                .map(|r| ReportFile {
                    file: r.name,
                    bytes: r.size,
                })
                .collect()),
        }
    }

    /// A report file of a job, streamed; `None` when the job has none of that name (or the
    /// name is not a plain report file name: no path ever leaves the job's folder).
    pub async fn open_report(
        &self,
        id: &JobId,
        file: &str,
    ) -> Result<Option<ReportBody>, HistoryError> {
        if !valid_report_name(file) || file.ends_with(".partial") {
            return Ok(None);
        }
        match self {
            JobHistory::Local(store) => LocalReports::of(store.path()).open(id, file).await,
            JobHistory::Shared(shared) => Ok(shared.store.open_report(id, file).await?),
        }
    }

    /// Stores the report files a job wrote under `state.dir` with the job: in the shared
    /// history, uploaded and then removed locally (a file that cannot be uploaded stays
    /// where it is, and the error says so); the local history keeps them where they are.
    pub async fn store_reports(&self, id: &JobId, files: &[PathBuf]) -> Result<(), HistoryError> {
        let JobHistory::Shared(shared) = self else {
            return Ok(());
        };
        for path in files {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let max = shared.store.options().max_report_bytes;
            let size = tokio::fs::metadata(path)
                .await
                .map_err(|e| report_error("read", path, e))?
                .len();
            if size > max {
                return Err(BlobHistoryError::ReportTooLarge {
                    name: name.to_string(),
                    size,
                    max,
                }
                .into());
            }
            let content = tokio::fs::read(path)
                .await
                .map_err(|e| report_error("read", path, e))?;
            shared.observe(shared.store.put_report(id, name, content).await)?;
            if let Err(e) = tokio::fs::remove_file(path).await {
                tracing::warn!(job_id = %id, file = name, error = %e, "a report uploaded to the shared history could not be removed locally");
            }
        }
        Ok(())
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
