//! The store: one writer task that owns the only read-write connection, and readers with
//! their own read-only connections.
//!
//! Callers hold a [`HistoryStore`] (cheap to clone) and send it commands; each command is
//! one transaction, acknowledged once committed, so a caller that awaited `finish` knows
//! the job is on disk. Reads go through [`HistoryReader`], which the CLI also opens on its
//! own against a database a running worker is writing (WAL mode allows that).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::id::{IdGenerator, JobId};
use super::model::{
    JobDetail, JobFilter, JobStatus, JobSummary, NewJob, NewStreamEntry, Outcome, StepCounts,
    StreamEntry, StreamKind, Trigger,
};
use super::schema::{self, parse_timestamp, timestamp};
use super::{HistoryError, HistorySettings};
use crate::clock::SharedClock;

/// Commands wait here when the writer is busy; a full queue makes callers wait, which is
/// the back-pressure we want from a job that logs faster than the disk writes.
const COMMAND_QUEUE: usize = 1024;
/// Read connections kept open between queries.
const IDLE_READERS: usize = 4;
/// A stream entry's text is cut at this many bytes.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;
/// A stream entry's structured data is dropped (its text kept) above this many bytes.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Jobs deleted per pruning transaction, so writes from running jobs are not held up.
const PRUNE_CHUNK: usize = 500;
/// While writes fail (disk full, database locked), the writer tries again this often: the
/// ends of jobs it could not record, or a probe write, so that health comes back by itself.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Whether the last write to the history succeeded, for `/readyz`. Cheap to clone; the
/// writer task updates it after every write.
#[derive(Clone, Debug, Default)]
pub struct HistoryHealth {
    failing: Arc<Mutex<Option<String>>>,
}

impl HistoryHealth {
    /// `None` while writes succeed; otherwise why the last one failed, with its root cause.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn set(&self, failing: Option<String>) {
        let mut state = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match (&*state, &failing) {
            (Some(_), None) => {
                tracing::info!("the job history accepts writes again");
            }
            (None, Some(reason)) => {
                tracing::error!(
                    reason,
                    "the job history refuses writes; the worker is not ready until it accepts them again"
                );
            }
            _ => {}
        }
        *state = failing;
    }

    /// Takes note of a write's result: a transient failure makes the history unhealthy, any
    /// success healthy again. Other failures (an unknown job, a bad transition) say nothing
    /// about the database.
    pub(super) fn observe<T>(&self, result: &Result<T, HistoryError>) {
        match result {
            Ok(_) => self.set(None),
            Err(e) if e.kind().is_transient() => self.set(Some(e.chain())),
            Err(_) => {}
        }
    }
}

type Ack<T> = oneshot::Sender<Result<T, HistoryError>>;

enum Command {
    Insert {
        row: InsertJob,
        ack: Ack<()>,
    },
    MarkRunning {
        id: JobId,
        at: DateTime<Utc>,
        ack: Ack<()>,
    },
    Append {
        id: JobId,
        at: DateTime<Utc>,
        entries: Vec<NewStreamEntry>,
        ack: Ack<()>,
    },
    UpdateSteps {
        id: JobId,
        steps: Vec<StepCounts>,
        ack: Ack<()>,
    },
    Finish {
        id: JobId,
        at: DateTime<Utc>,
        outcome: Outcome,
        ack: Ack<()>,
    },
    PruneChunk {
        cutoff: DateTime<Utc>,
        ack: Ack<usize>,
    },
    Forget {
        id: JobId,
        ack: Ack<()>,
    },
    TrimStreams {
        id: JobId,
        kinds: Vec<StreamKind>,
        ack: Ack<u64>,
    },
    Close {
        ack: oneshot::Sender<()>,
    },
}

struct InsertJob {
    id: JobId,
    job: NewJob,
    created_at: DateTime<Utc>,
    status: JobStatus,
    error: Option<String>,
    replica: Option<String>,
}

/// Writes to the job history. Clone it freely; every clone talks to the same writer task.
#[derive(Clone)]
pub struct HistoryStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    commands: mpsc::Sender<Command>,
    reader: HistoryReader,
    clock: SharedClock,
    ids: IdGenerator,
    retention: Duration,
    interrupted_at_open: Vec<JobSummary>,
    health: HistoryHealth,
    /// Recorded as the replica of the jobs this store creates.
    replica: Option<String>,
}

impl std::fmt::Debug for HistoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryStore")
            .field("path", &self.inner.reader.path())
            .field("retention", &self.inner.retention)
            .finish()
    }
}

impl HistoryStore {
    /// Opens (creating it and its directory if needed) the database at `path`, migrates
    /// it, marks every job a previous process left Queued or Running as Interrupted, and
    /// starts the writer task. The returned handle completes after [`HistoryStore::close`]
    /// (or once every clone of the store is dropped).
    pub async fn open(
        path: &Path,
        settings: &HistorySettings,
        clock: SharedClock,
    ) -> Result<(HistoryStore, JoinHandle<()>), HistoryError> {
        Self::open_as(path, settings, clock, None).await
    }

    /// [`HistoryStore::open`], recording `replica` as the replica of every job it creates.
    pub async fn open_as(
        path: &Path,
        settings: &HistorySettings,
        clock: SharedClock,
        replica: Option<String>,
    ) -> Result<(HistoryStore, JoinHandle<()>), HistoryError> {
        let path = path.to_path_buf();
        let max_entries = settings.max_entries_per_stream;
        let now = clock.now();
        let setup_path = path.clone();
        let (conn, interrupted, reader) = tokio::task::spawn_blocking(move || {
            if let Some(parent) = setup_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| HistoryError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            let mut conn = schema::open_writer(&setup_path)?;
            let interrupted = interrupt_leftovers(&mut conn, now, max_entries)?;
            let reader = HistoryReader::open(&setup_path)?;
            Ok::<_, HistoryError>((conn, interrupted, reader))
        })
        .await
        .map_err(|source| HistoryError::Task {
            what: "open",
            source,
        })??;
        if !interrupted.is_empty() {
            tracing::warn!(
                count = interrupted.len(),
                jobs = %interrupted.iter().map(|j| j.id.as_str()).collect::<Vec<_>>().join(","),
                "jobs left Queued or Running by the previous process are now Interrupted"
            );
        }

        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let health = HistoryHealth::default();
        let writer = Writer {
            conn,
            max_entries,
            health: health.clone(),
            failing_fast: false,
            unrecorded_ends: Vec::new(),
        };
        let handle = tokio::task::spawn_blocking(move || writer.run(receiver));
        let store = HistoryStore {
            inner: Arc::new(StoreInner {
                commands,
                reader,
                clock,
                ids: IdGenerator::default(),
                retention: settings.retention.get(),
                interrupted_at_open: interrupted,
                health,
                replica,
            }),
        };
        Ok((store, handle))
    }

    /// Whether writes succeed, for `/readyz`.
    pub fn health(&self) -> &HistoryHealth {
        &self.inner.health
    }

    /// The read side, for queries (also available directly on the store).
    pub fn reader(&self) -> &HistoryReader {
        &self.inner.reader
    }

    pub fn path(&self) -> &Path {
        self.inner.reader.path()
    }

    /// `history.retention`.
    pub fn retention(&self) -> Duration {
        self.inner.retention
    }

    /// The jobs this open found Queued or Running and marked Interrupted, for the
    /// scheduler's `on_interrupt` policy.
    pub fn interrupted_at_open(&self) -> &[JobSummary] {
        &self.inner.interrupted_at_open
    }

    /// Records a job that became due, as Queued. Its `created_at` is now.
    pub async fn create_job(&self, job: NewJob) -> Result<JobId, HistoryError> {
        self.insert(job, JobStatus::Queued, None).await
    }

    /// Records an occurrence that will not run (the overlap policy dropped it) as Skipped,
    /// with `reason` as its error summary, in one step.
    pub async fn record_skipped(&self, job: NewJob, reason: &str) -> Result<JobId, HistoryError> {
        self.insert(job, JobStatus::Skipped, Some(reason.to_string()))
            .await
    }

    async fn insert(
        &self,
        job: NewJob,
        status: JobStatus,
        error: Option<String>,
    ) -> Result<JobId, HistoryError> {
        let created_at = self.inner.clock.now();
        let id = self.inner.ids.next(created_at);
        let row = InsertJob {
            id: id.clone(),
            job,
            created_at,
            status,
            error,
            replica: self.inner.replica.clone(),
        };
        self.request(|ack| Command::Insert { row, ack }).await?;
        Ok(id)
    }

    /// Queued → Running, with `started_at` now.
    pub async fn mark_running(&self, id: &JobId) -> Result<(), HistoryError> {
        let at = self.inner.clock.now();
        let id = id.clone();
        self.request(|ack| Command::MarkRunning { id, at, ack })
            .await
    }

    /// Appends entries to the job's streams, stamped now. Each stream keeps its first
    /// `max_entries_per_stream` entries and counts the rest as dropped, except `progress`,
    /// which keeps its most recent ones. Text over [`MAX_TEXT_BYTES`] is cut; data over
    /// [`MAX_DATA_BYTES`] is left out.
    pub async fn append_stream(
        &self,
        id: &JobId,
        entries: Vec<NewStreamEntry>,
    ) -> Result<(), HistoryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let at = self.inner.clock.now();
        let id = id.clone();
        self.request(|ack| Command::Append {
            id,
            at,
            entries,
            ack,
        })
        .await
    }

    /// Replaces the job's per-step counts while it runs (the dashboard shows them live).
    pub async fn update_steps(
        &self,
        id: &JobId,
        steps: Vec<StepCounts>,
    ) -> Result<(), HistoryError> {
        let id = id.clone();
        self.request(|ack| Command::UpdateSteps { id, steps, ack })
            .await
    }

    /// Queued or Running → the outcome's final status, with `ended_at` now. When the write
    /// fails for a transient reason (disk full, database locked) the error is returned and
    /// the writer keeps the end and writes it as soon as the database takes it (or, if the
    /// process stops first, the next open marks the job Interrupted).
    pub async fn finish(&self, id: &JobId, outcome: Outcome) -> Result<(), HistoryError> {
        if !outcome.status.is_final() {
            return Err(HistoryError::NotFinal {
                status: outcome.status,
            });
        }
        let at = self.inner.clock.now();
        let id = id.clone();
        self.request(|ack| Command::Finish {
            id,
            at,
            outcome,
            ack,
        })
        .await
    }

    /// Deletes finished jobs created more than the retention before `now`, with their
    /// streams; Queued and Running jobs are never pruned. Returns how many were deleted.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64, HistoryError> {
        let retention =
            chrono::Duration::from_std(self.inner.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(retention)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut total = 0u64;
        loop {
            // One chunk per command lets other writes interleave with a large prune.
            let deleted = self
                .request(|ack| Command::PruneChunk { cutoff, ack })
                .await?;
            total += deleted as u64;
            if deleted < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    /// Deletes one job with its streams, whatever its status (the shared history's local
    /// spool forgets a job once the shared store holds it).
    pub async fn forget(&self, id: &JobId) -> Result<(), HistoryError> {
        let id = id.clone();
        self.request(|ack| Command::Forget { id, ack }).await
    }

    /// Deletes the job's kept entries of `kinds` and counts them as dropped (the spool's way to
    /// stay small, [`super::spool`]); returns how many it deleted.
    pub async fn trim_streams(
        &self,
        id: &JobId,
        kinds: &[StreamKind],
    ) -> Result<u64, HistoryError> {
        let id = id.clone();
        let kinds = kinds.to_vec();
        self.request(|ack| Command::TrimStreams { id, kinds, ack })
            .await
    }

    /// Flushes every command sent before it and stops the writer. Later writes from any
    /// clone fail with [`HistoryError::Closed`]; reads keep working.
    pub async fn close(&self) -> Result<(), HistoryError> {
        let (ack, done) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Close { ack })
            .await
            .is_err()
        {
            // Already closed: nothing left to flush.
            return Ok(());
        }
        done.await.map_err(|_| HistoryError::Closed)
    }

    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
        self.inner.reader.get_job(id).await
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, HistoryError> {
        self.inner.reader.list_jobs(filter).await
    }

    pub async fn last_status_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, JobSummary>, HistoryError> {
        self.inner.reader.last_status_per_runbook().await
    }

    pub async fn last_occurrence_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, DateTime<Utc>>, HistoryError> {
        self.inner.reader.last_occurrence_per_runbook().await
    }

    async fn request<T>(&self, make: impl FnOnce(Ack<T>) -> Command) -> Result<T, HistoryError> {
        let (ack, reply) = oneshot::channel();
        self.inner
            .commands
            .send(make(ack))
            .await
            .map_err(|_| HistoryError::Closed)?;
        reply.await.map_err(|_| HistoryError::Closed)?
    }
}

/// Prunes now and then every `interval` (at least [`super::MIN_PRUNE_INTERVAL`]) until
/// `cancel` fires or the store closes.
pub fn spawn_pruner(
    store: super::JobHistory,
    clock: SharedClock,
    interval: Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let interval = interval.max(super::MIN_PRUNE_INTERVAL);
    tokio::spawn(async move {
        let step = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::hours(1));
        loop {
            // The next pass is due one interval after this pass's `now`, not after it ends,
            // so a clock that moved meanwhile is not missed.
            let now = clock.now();
            match store.prune(now).await {
                Ok(0) => tracing::debug!("history pruning found nothing to delete"),
                Ok(deleted) => tracing::info!(deleted, "pruned jobs older than the retention"),
                Err(HistoryError::Closed) => return,
                Err(e) => tracing::warn!(error = %e, "history pruning failed; will retry"),
            }
            let deadline = now + step;
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = clock.sleep_until(deadline) => {}
            }
        }
    })
}

/// Reads the job history over read-only connections. Clone it freely.
#[derive(Clone)]
pub struct HistoryReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    path: PathBuf,
    /// Idle connections. The lock is only held to push or pop, never across an await.
    idle: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for HistoryReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryReader")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl HistoryReader {
    /// Opens an existing history database read-only: [`HistoryError::Missing`] when there
    /// is no file at `path`.
    pub fn open(path: &Path) -> Result<HistoryReader, HistoryError> {
        let conn = schema::open_reader(path)?;
        Ok(HistoryReader {
            inner: Arc::new(ReaderInner {
                path: path.to_path_buf(),
                idle: Mutex::new(vec![conn]),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// One job with its parameters, step counts and streams.
    pub async fn get_job(&self, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
        let id = id.clone();
        self.with_connection(move |conn| read_detail(conn, &id))
            .await
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, HistoryError> {
        let filter = filter.clone();
        self.with_connection(move |conn| read_list(conn, &filter))
            .await
    }

    /// The most recent job of each runbook, ignoring Skipped occurrences (which say
    /// nothing about whether the runbook works).
    pub async fn last_status_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, JobSummary>, HistoryError> {
        self.with_connection(|conn| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE id IN \
                 (SELECT max(id) FROM jobs WHERE status != 'Skipped' GROUP BY runbook)"
            );
            let jobs = query_summaries(conn, &sql, [])?;
            Ok(jobs.into_iter().map(|j| (j.runbook.clone(), j)).collect())
        })
        .await
    }

    /// The latest scheduled occurrence recorded for each runbook (fired, queued or
    /// skipped): the `last_fired` of the missed-run policy.
    pub async fn last_occurrence_per_runbook(
        &self,
    ) -> Result<BTreeMap<String, DateTime<Utc>>, HistoryError> {
        self.with_connection(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT runbook, max(scheduled_for) FROM jobs \
                     WHERE trigger IN ('schedule', 'catch-up') AND scheduled_for IS NOT NULL \
                     GROUP BY runbook",
                )
                .map_err(sql("read last occurrences"))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(sql("read last occurrences"))?;
            let mut out = BTreeMap::new();
            for row in rows {
                let (runbook, at) = row.map_err(sql("read last occurrences"))?;
                let at = parse_timestamp(&at).ok_or_else(|| HistoryError::Corrupt {
                    id: runbook.clone(),
                    field: "scheduled_for",
                    detail: at.clone(),
                })?;
                out.insert(runbook, at);
            }
            Ok(out)
        })
        .await
    }

    /// Runs `f` on an idle connection (or a new one) on the blocking pool.
    async fn with_connection<T, F>(&self, f: F) -> Result<T, HistoryError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, HistoryError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let idle = inner.idle.lock().ok().and_then(|mut idle| idle.pop());
            let conn = match idle {
                Some(conn) => conn,
                None => schema::open_reader(&inner.path)?,
            };
            let result = f(&conn);
            if let Ok(mut idle) = inner.idle.lock()
                && idle.len() < IDLE_READERS
            {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|source| HistoryError::Task {
            what: "query",
            source,
        })?
    }
}

/// The writer task's state: the only read-write connection.
struct Writer {
    conn: Connection,
    max_entries: usize,
    health: HistoryHealth,
    /// Whether the connection waits only [`FAILING_BUSY_TIMEOUT`] for a lock.
    failing_fast: bool,
    /// Ends of jobs the database refused, written again every [`RETRY_EVERY`] until it
    /// takes them, so no job stays Running in the history while this process lives.
    unrecorded_ends: Vec<UnrecordedEnd>,
}

impl Writer {
    /// Runs on the blocking pool until closed or every sender is gone. While writes fail it
    /// retries them every [`RETRY_EVERY`] between commands.
    fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let retrying = !self.unrecorded_ends.is_empty() || self.health.failing().is_some();
            let command = match next_command(&mut commands, retrying) {
                Next::Command(command) => command,
                Next::Retry => {
                    self.retry();
                    continue;
                }
                Next::Stop => break,
            };
            match command {
                Command::Insert { row, ack } => {
                    let result = insert_job(&mut self.conn, &row);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::MarkRunning { id, at, ack } => {
                    let result = mark_running(&mut self.conn, &id, at);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::Append {
                    id,
                    at,
                    entries,
                    ack,
                } => {
                    let result =
                        append_entries(&mut self.conn, &id, at, &entries, self.max_entries);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::UpdateSteps { id, steps, ack } => {
                    let result = update_steps(&self.conn, &id, &steps);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::Finish {
                    id,
                    at,
                    outcome,
                    ack,
                } => {
                    // An earlier end of this job that could not be written goes first: it is
                    // the scheduler's, and a later one (the runner's flush) must not win.
                    if self.unrecorded_ends.iter().any(|end| end.id == id) {
                        self.retry();
                    }
                    let result = finish_job(&mut self.conn, &id, at, &outcome);
                    self.observe(&result);
                    match &result {
                        Err(e) if e.kind().is_transient() => {
                            if !self.unrecorded_ends.iter().any(|end| end.id == id) {
                                self.unrecorded_ends.push(UnrecordedEnd { id, at, outcome });
                            }
                        }
                        _ => self.unrecorded_ends.retain(|end| end.id != id),
                    }
                    let _ = ack.send(result);
                }
                Command::Forget { id, ack } => {
                    let result = forget_job(&mut self.conn, &id);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::TrimStreams { id, kinds, ack } => {
                    let result = trim_streams(&mut self.conn, &id, &kinds);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::PruneChunk { cutoff, ack } => {
                    let result = prune_chunk(&mut self.conn, cutoff);
                    self.observe(&result);
                    let _ = ack.send(result);
                }
                Command::Close { ack } => {
                    // Refuse new commands; those already queued behind Close are dropped,
                    // which their senders see as Closed.
                    commands.close();
                    self.last_try();
                    if let Err((_, e)) = self.conn.close() {
                        tracing::warn!(error = %e, "closing the job history database failed");
                    }
                    let _ = ack.send(());
                    tracing::debug!("job history writer stopped");
                    return;
                }
            }
        }
        self.last_try();
        tracing::debug!("job history writer stopped: every store handle was dropped");
    }
}

enum Next {
    Command(Command),
    /// Time to retry the failed writes.
    Retry,
    /// Every sender is gone.
    Stop,
}

/// The next command; while `retrying`, gives up waiting after [`RETRY_EVERY`]. The writer
/// runs on a blocking thread, so it polls the queue rather than borrowing the runtime's
/// timers (which stop with the runtime, possibly before the writer does).
fn next_command(commands: &mut mpsc::Receiver<Command>, retrying: bool) -> Next {
    if !retrying {
        return commands.blocking_recv().map_or(Next::Stop, Next::Command);
    }
    let deadline = std::time::Instant::now() + RETRY_EVERY;
    loop {
        match commands.try_recv() {
            Ok(command) => return Next::Command(command),
            Err(mpsc::error::TryRecvError::Disconnected) => return Next::Stop,
            Err(mpsc::error::TryRecvError::Empty) => {
                if std::time::Instant::now() >= deadline {
                    return Next::Retry;
                }
                std::thread::sleep(RETRY_POLL);
            }
        }
    }
}

/// How often a retrying writer looks for new commands.
const RETRY_POLL: Duration = Duration::from_millis(20);

/// The end of a job the database refused (disk full, locked), kept to write again.
struct UnrecordedEnd {
    id: JobId,
    at: DateTime<Utc>,
    outcome: Outcome,
}

/// While the database refuses writes, a write waits this long for a lock instead of the
/// usual busy timeout: otherwise every queued command would wait the full timeout in turn
/// and the queue would back up behind a database that is known to be held.
const FAILING_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

impl Writer {
    /// Updates the health with a write's result, and fails fast while it is failing.
    fn observe<T>(&mut self, result: &Result<T, HistoryError>) {
        self.health.observe(result);
        let failing = self.health.failing().is_some();
        if failing != self.failing_fast {
            let timeout = if failing {
                FAILING_BUSY_TIMEOUT
            } else {
                super::schema::BUSY_TIMEOUT
            };
            match self.conn.busy_timeout(timeout) {
                Ok(()) => self.failing_fast = failing,
                Err(e) => tracing::warn!(error = %e, "cannot change the history's busy timeout"),
            }
        }
    }

    /// Before stopping: one more try for the kept job ends, and a word about any left.
    fn last_try(&mut self) {
        if self.unrecorded_ends.is_empty() {
            return;
        }
        self.retry();
        if !self.unrecorded_ends.is_empty() {
            let jobs: Vec<&str> = self.unrecorded_ends.iter().map(|e| e.id.as_str()).collect();
            tracing::error!(
                jobs = %jobs.join(","),
                reason = self.health.failing().unwrap_or_default(),
                "the end of these jobs could not be written before the history closed; the next start marks them Interrupted"
            );
        }
    }

    /// Writes the kept job ends again, or, with none kept, probes whether the database takes
    /// writes again; either way the health follows the result.
    fn retry(&mut self) {
        if self.unrecorded_ends.is_empty() {
            let result = probe_write(&mut self.conn);
            self.observe(&result);
            return;
        }
        let ends = std::mem::take(&mut self.unrecorded_ends);
        for end in ends {
            let result = finish_job(&mut self.conn, &end.id, end.at, &end.outcome);
            self.observe(&result);
            match result {
                Ok(()) => {
                    tracing::info!(job_id = %end.id, status = %end.outcome.status, "recorded the end of a job the history had refused earlier");
                }
                Err(e) if e.kind().is_transient() => self.unrecorded_ends.push(end),
                // Finished meanwhile, or gone: nothing left to write.
                Err(e) => {
                    tracing::warn!(job_id = %end.id, error = %e.chain(), "dropping the kept end of a job")
                }
            }
        }
    }
}

/// A write that changes nothing but needs the write lock and a page written, so it fails
/// as long as the database is locked or the disk full.
fn probe_write(conn: &mut Connection) -> Result<(), HistoryError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sql("check that the database takes writes"))?;
    tx.execute(
        "UPDATE jobs SET status = status WHERE rowid = (SELECT max(rowid) FROM jobs)",
        [],
    )
    .map_err(sql("check that the database takes writes"))?;
    tx.commit()
        .map_err(sql("check that the database takes writes"))
}

fn sql(operation: &'static str) -> impl Fn(rusqlite::Error) -> HistoryError {
    move |source| HistoryError::Sqlite { operation, source }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising maps, vectors of plain structs and JSON values cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

fn insert_job(conn: &mut Connection, row: &InsertJob) -> Result<(), HistoryError> {
    let job = &row.job;
    let created = timestamp(row.created_at);
    let ended = row.status.is_final().then(|| created.clone());
    conn.execute(
        "INSERT INTO jobs (id, runbook, file_hash, trigger, status, dry_run, scheduled_for,
                           created_at, started_at, ended_at, params, steps, summary, error,
                           replica)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, ?9, ?10, '[]', NULL, ?11, ?12)",
        params![
            row.id.as_str(),
            job.runbook,
            job.file_hash,
            job.trigger.as_str(),
            row.status.as_str(),
            job.dry_run,
            job.scheduled_for.map(timestamp),
            created,
            ended,
            to_json(&job.params),
            row.error,
            row.replica,
        ],
    )
    .map_err(sql("record a new job"))?;
    Ok(())
}

fn current_status(conn: &Connection, id: &JobId) -> Result<JobStatus, HistoryError> {
    let status: Option<String> = conn
        .query_row(
            "SELECT status FROM jobs WHERE id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )
        .optional()
        .map_err(sql("read a job's status"))?;
    let status = status.ok_or_else(|| HistoryError::UnknownJob { id: id.clone() })?;
    status.parse().map_err(|_| HistoryError::Corrupt {
        id: id.to_string(),
        field: "status",
        detail: status,
    })
}

fn mark_running(conn: &mut Connection, id: &JobId, at: DateTime<Utc>) -> Result<(), HistoryError> {
    let changed = conn
        .execute(
            "UPDATE jobs SET status = 'Running', started_at = ?2 WHERE id = ?1 AND status = 'Queued'",
            params![id.as_str(), timestamp(at)],
        )
        .map_err(sql("mark a job running"))?;
    if changed == 0 {
        return Err(HistoryError::InvalidTransition {
            id: id.clone(),
            from: current_status(conn, id)?,
            to: JobStatus::Running,
        });
    }
    Ok(())
}

fn finish_job(
    conn: &mut Connection,
    id: &JobId,
    at: DateTime<Utc>,
    outcome: &Outcome,
) -> Result<(), HistoryError> {
    let changed = conn
        .execute(
            "UPDATE jobs SET status = ?2, ended_at = ?3, steps = ?4, summary = ?5, error = ?6
             WHERE id = ?1 AND status IN ('Queued', 'Running')",
            params![
                id.as_str(),
                outcome.status.as_str(),
                timestamp(at),
                to_json(&outcome.steps),
                outcome.summary,
                outcome.error,
            ],
        )
        .map_err(sql("finish a job"))?;
    if changed == 0 {
        return Err(HistoryError::InvalidTransition {
            id: id.clone(),
            from: current_status(conn, id)?,
            to: outcome.status,
        });
    }
    Ok(())
}

fn update_steps(conn: &Connection, id: &JobId, steps: &[StepCounts]) -> Result<(), HistoryError> {
    let changed = conn
        .execute(
            "UPDATE jobs SET steps = ?2 WHERE id = ?1",
            params![id.as_str(), to_json(&steps)],
        )
        .map_err(sql("update step counts"))?;
    if changed == 0 {
        return Err(HistoryError::UnknownJob { id: id.clone() });
    }
    Ok(())
}

/// Cuts `text` to at most `max` bytes on a character boundary, saying so.
fn bounded_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [cut at {max} bytes]", &text[..end])
}

fn append_entries(
    conn: &mut Connection,
    id: &JobId,
    at: DateTime<Utc>,
    entries: &[NewStreamEntry],
    max_entries: usize,
) -> Result<(), HistoryError> {
    let tx = conn.transaction().map_err(sql("append stream entries"))?;
    current_status(&tx, id)?;
    append_in(&tx, id, at, entries, max_entries)?;
    tx.commit().map_err(sql("append stream entries"))
}

/// Appends inside the caller's transaction.
fn append_in(
    conn: &Connection,
    id: &JobId,
    at: DateTime<Utc>,
    entries: &[NewStreamEntry],
    max_entries: usize,
) -> Result<(), HistoryError> {
    let err = sql("append stream entries");
    let mut seq: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(seq), 0) FROM stream_entries WHERE job_id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )
        .map_err(&err)?;
    let mut counts: BTreeMap<StreamKind, (i64, i64)> = BTreeMap::new();
    {
        let mut stmt = conn
            .prepare_cached("SELECT kind, kept, dropped FROM stream_counts WHERE job_id = ?1")
            .map_err(&err)?;
        let rows = stmt
            .query_map([id.as_str()], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (kind, kept, dropped) = row.map_err(&err)?;
            if let Some(kind) = StreamKind::parse(&kind) {
                counts.insert(kind, (kept, dropped));
            }
        }
    }
    let cap = i64::try_from(max_entries).unwrap_or(i64::MAX);
    let time = timestamp(at);
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO stream_entries (job_id, seq, kind, time, text, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(&err)?;
    let mut evict_oldest = conn
        .prepare_cached(
            "DELETE FROM stream_entries WHERE job_id = ?1 AND seq = \
             (SELECT MIN(seq) FROM stream_entries WHERE job_id = ?1 AND kind = ?2)",
        )
        .map_err(&err)?;
    for entry in entries {
        let (kept, dropped) = counts.entry(entry.kind).or_insert((0, 0));
        if *kept >= cap {
            *dropped += 1;
            // Progress is only useful recent: make room by dropping the oldest instead.
            if entry.kind != StreamKind::Progress || cap == 0 {
                continue;
            }
            evict_oldest
                .execute(params![id.as_str(), entry.kind.as_str()])
                .map_err(&err)?;
            *kept -= 1;
        }
        let mut text = bounded_text(&entry.text, MAX_TEXT_BYTES);
        let data = match &entry.data {
            Some(value) => {
                let json = to_json(value);
                if json.len() > MAX_DATA_BYTES {
                    text.push_str(&format!(" [data of {} bytes not kept]", json.len()));
                    None
                } else {
                    Some(json)
                }
            }
            None => None,
        };
        seq += 1;
        insert
            .execute(params![
                id.as_str(),
                seq,
                entry.kind.as_str(),
                time,
                text,
                data
            ])
            .map_err(&err)?;
        *kept += 1;
    }
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO stream_counts (job_id, kind, kept, dropped) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (job_id, kind) DO UPDATE SET kept = excluded.kept, dropped = excluded.dropped",
        )
        .map_err(&err)?;
    for (kind, (kept, dropped)) in counts {
        upsert
            .execute(params![id.as_str(), kind.as_str(), kept, dropped])
            .map_err(&err)?;
    }
    Ok(())
}

fn forget_job(conn: &mut Connection, id: &JobId) -> Result<(), HistoryError> {
    let err = sql("delete a job");
    let tx = conn.transaction().map_err(&err)?;
    delete_job_rows(&tx, id.as_str(), &err)?;
    tx.commit().map_err(&err)
}

fn trim_streams(
    conn: &mut Connection,
    id: &JobId,
    kinds: &[StreamKind],
) -> Result<u64, HistoryError> {
    let err = sql("trim stream entries");
    let tx = conn.transaction().map_err(&err)?;
    let mut deleted = 0u64;
    for kind in kinds {
        let n = tx
            .prepare_cached("DELETE FROM stream_entries WHERE job_id = ?1 AND kind = ?2")
            .and_then(|mut stmt| stmt.execute(params![id.as_str(), kind.as_str()]))
            .map_err(&err)?;
        tx.prepare_cached(
            "UPDATE stream_counts SET dropped = dropped + kept, kept = 0 WHERE job_id = ?1 AND kind = ?2",
        )
        .and_then(|mut stmt| stmt.execute(params![id.as_str(), kind.as_str()]))
        .map_err(&err)?;
        deleted += n as u64;
    }
    tx.commit().map_err(&err)?;
    Ok(deleted)
}

fn delete_job_rows(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    err: &impl Fn(rusqlite::Error) -> HistoryError,
) -> Result<(), HistoryError> {
    for table_sql in [
        "DELETE FROM stream_entries WHERE job_id = ?1",
        "DELETE FROM stream_counts WHERE job_id = ?1",
        "DELETE FROM jobs WHERE id = ?1",
    ] {
        tx.prepare_cached(table_sql)
            .and_then(|mut stmt| stmt.execute([id]))
            .map_err(err)?;
    }
    Ok(())
}

fn prune_chunk(conn: &mut Connection, cutoff: DateTime<Utc>) -> Result<usize, HistoryError> {
    let err = sql("prune old jobs");
    let tx = conn.transaction().map_err(&err)?;
    let ids: Vec<String> = {
        let mut stmt = tx
            .prepare(
                "SELECT id FROM jobs WHERE created_at < ?1 AND status NOT IN ('Queued', 'Running') LIMIT ?2",
            )
            .map_err(&err)?;
        let rows = stmt
            .query_map(params![timestamp(cutoff), PRUNE_CHUNK as i64], |row| {
                row.get(0)
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)?
    };
    for id in &ids {
        delete_job_rows(&tx, id, &err)?;
    }
    tx.commit().map_err(&err)?;
    Ok(ids.len())
}

/// Marks jobs left Queued or Running by a previous process as Interrupted, with an error
/// entry saying why, and returns them.
fn interrupt_leftovers(
    conn: &mut Connection,
    now: DateTime<Utc>,
    max_entries: usize,
) -> Result<Vec<JobSummary>, HistoryError> {
    let err = sql("mark interrupted jobs");
    let tx = conn.transaction().map_err(&err)?;
    let sql_text = format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs WHERE status IN ('Queued', 'Running') ORDER BY id"
    );
    let leftovers = query_summaries(&tx, &sql_text, [])?;
    let mut interrupted = Vec::with_capacity(leftovers.len());
    for mut job in leftovers {
        let message = match job.status {
            JobStatus::Running => format!(
                "interrupted: the worker process stopped while this job was running (found at start-up at {}); it may have done part of its work",
                timestamp(now)
            ),
            _ => format!(
                "interrupted: the worker process stopped before this job started (found at start-up at {})",
                timestamp(now)
            ),
        };
        tx.execute(
            "UPDATE jobs SET status = 'Interrupted', ended_at = ?2, error = ?3 WHERE id = ?1",
            params![job.id.as_str(), timestamp(now), message],
        )
        .map_err(&err)?;
        append_in(
            &tx,
            &job.id,
            now,
            &[NewStreamEntry::error(message.clone())],
            max_entries,
        )?;
        job.status = JobStatus::Interrupted;
        job.ended_at = Some(now);
        job.duration_ms = job.started_at.map(|s| (now - s).num_milliseconds());
        job.error = Some(message);
        interrupted.push(job);
    }
    tx.commit().map_err(&err)?;
    Ok(interrupted)
}

const SUMMARY_COLUMNS: &str = "id, runbook, file_hash, trigger, status, dry_run, scheduled_for, \
     created_at, started_at, ended_at, summary, error, replica";

fn query_summaries<P: rusqlite::Params>(
    conn: &Connection,
    sql_text: &str,
    params: P,
) -> Result<Vec<JobSummary>, HistoryError> {
    let err = sql("read jobs");
    let mut stmt = conn.prepare(sql_text).map_err(&err)?;
    let rows = stmt.query_map(params, RawSummary::from_row).map_err(&err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(&err)?.into_summary()?);
    }
    Ok(out)
}

/// A `jobs` row as stored, before its text columns are checked.
struct RawSummary {
    id: String,
    runbook: String,
    file_hash: String,
    trigger: String,
    status: String,
    dry_run: bool,
    scheduled_for: Option<String>,
    created_at: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    summary: Option<String>,
    error: Option<String>,
    replica: Option<String>,
}

impl RawSummary {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<RawSummary> {
        Ok(RawSummary {
            id: row.get(0)?,
            runbook: row.get(1)?,
            file_hash: row.get(2)?,
            trigger: row.get(3)?,
            status: row.get(4)?,
            dry_run: row.get(5)?,
            scheduled_for: row.get(6)?,
            created_at: row.get(7)?,
            started_at: row.get(8)?,
            ended_at: row.get(9)?,
            summary: row.get(10)?,
            error: row.get(11)?,
            replica: row.get(12)?,
        })
    }

    fn into_summary(self) -> Result<JobSummary, HistoryError> {
        let id_text = self.id.clone();
        let corrupt = |field: &'static str, detail: &str| HistoryError::Corrupt {
            id: id_text.clone(),
            field,
            detail: detail.to_string(),
        };
        let time = |field: &'static str, text: Option<&String>| match text {
            None => Ok(None),
            Some(text) => parse_timestamp(text)
                .map(Some)
                .ok_or_else(|| corrupt(field, text)),
        };
        let id: JobId = self.id.parse().map_err(|_| corrupt("id", &self.id))?;
        let trigger =
            Trigger::parse(&self.trigger).ok_or_else(|| corrupt("trigger", &self.trigger))?;
        let status: JobStatus = self
            .status
            .parse()
            .map_err(|_| corrupt("status", &self.status))?;
        let scheduled_for = time("scheduled_for", self.scheduled_for.as_ref())?;
        let created_at = time("created_at", Some(&self.created_at))?
            .ok_or_else(|| corrupt("created_at", &self.created_at))?;
        let started_at = time("started_at", self.started_at.as_ref())?;
        let ended_at = time("ended_at", self.ended_at.as_ref())?;
        let duration_ms = match (started_at, ended_at) {
            (Some(start), Some(end)) => Some((end - start).num_milliseconds()),
            _ => None,
        };
        Ok(JobSummary {
            id,
            runbook: self.runbook,
            file_hash: self.file_hash,
            past_due: trigger == Trigger::CatchUp,
            trigger,
            status,
            dry_run: self.dry_run,
            scheduled_for,
            created_at,
            started_at,
            ended_at,
            duration_ms,
            summary: self.summary,
            error: self.error,
            replica: self.replica,
        })
    }
}

fn read_list(conn: &Connection, filter: &JobFilter) -> Result<Vec<JobSummary>, HistoryError> {
    // Only the conditions in use appear in the SQL, so SQLite can pick the matching index.
    let mut conditions = Vec::new();
    let mut values: Vec<String> = Vec::new();
    if let Some(runbook) = &filter.runbook {
        values.push(runbook.clone());
        conditions.push(format!("runbook = ?{}", values.len()));
    }
    if let Some(status) = filter.status {
        values.push(status.as_str().to_string());
        conditions.push(format!("status = ?{}", values.len()));
    }
    if let Some(before) = &filter.before {
        values.push(before.as_str().to_string());
        conditions.push(format!("id < ?{}", values.len()));
    }
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let limit = filter.limit.clamp(1, JobFilter::MAX_LIMIT);
    let sql_text =
        format!("SELECT {SUMMARY_COLUMNS} FROM jobs {where_clause} ORDER BY id DESC LIMIT {limit}");
    query_summaries(conn, &sql_text, rusqlite::params_from_iter(values))
}

fn read_detail(conn: &Connection, id: &JobId) -> Result<Option<JobDetail>, HistoryError> {
    let err = sql("read a job");
    // The job row and its streams are read in several statements; one read transaction
    // gives them one snapshot, so a prune (or a finish) between them cannot make the
    // second statement miss the row the first one found.
    let snapshot = conn.unchecked_transaction().map_err(&err)?;
    let conn: &Connection = &snapshot;
    let sql_text = format!("SELECT {SUMMARY_COLUMNS} FROM jobs WHERE id = ?1");
    let Some(job) = query_summaries(conn, &sql_text, [id.as_str()])?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let (params_text, steps_text): (String, String) = conn
        .query_row(
            "SELECT params, steps FROM jobs WHERE id = ?1",
            [id.as_str()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .map_err(&err)?;
    let corrupt = |field: &'static str, detail: String| HistoryError::Corrupt {
        id: id.to_string(),
        field,
        detail,
    };
    let params: Map<String, Value> =
        serde_json::from_str(&params_text).map_err(|e| corrupt("params", e.to_string()))?;
    let steps: Vec<StepCounts> =
        serde_json::from_str(&steps_text).map_err(|e| corrupt("steps", e.to_string()))?;

    let mut stmt = conn
        .prepare(
            "SELECT seq, kind, time, text, data FROM stream_entries WHERE job_id = ?1 ORDER BY seq",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([id.as_str()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(&err)?;
    let mut streams = Vec::new();
    for row in rows {
        let (seq, kind, time, text, data) = row.map_err(&err)?;
        let kind = StreamKind::parse(&kind).ok_or_else(|| corrupt("stream kind", kind.clone()))?;
        let time = parse_timestamp(&time).ok_or_else(|| corrupt("stream time", time.clone()))?;
        let data = match data {
            Some(text) => Some(
                serde_json::from_str(&text).map_err(|e| corrupt("stream data", e.to_string()))?,
            ),
            None => None,
        };
        streams.push(StreamEntry {
            seq: u64::try_from(seq).unwrap_or(0),
            kind,
            time,
            text,
            data,
        });
    }

    let mut stmt = conn
        .prepare("SELECT kind, dropped FROM stream_counts WHERE job_id = ?1 AND dropped > 0")
        .map_err(&err)?;
    let rows = stmt
        .query_map([id.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })
        .map_err(&err)?;
    let mut dropped = BTreeMap::new();
    for row in rows {
        let (kind, count) = row.map_err(&err)?;
        if let Some(kind) = StreamKind::parse(&kind) {
            dropped.insert(kind, u64::try_from(count).unwrap_or(0));
        }
    }

    Ok(Some(JobDetail {
        job,
        params,
        steps,
        streams,
        dropped,
        reports: Vec::new(),
    }))
}
