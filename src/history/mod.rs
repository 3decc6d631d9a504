//! Job history in embedded SQLite: every job from the moment it is due, its status,
//! per-step counts and streams (output, warnings, errors, the dry-run plan, progress), as
//! Azure Automation keeps them.
//!
//! One writer task owns the only read-write connection; callers send it commands through a
//! [`HistoryStore`] and may await each acknowledgement. Readers ([`HistoryReader`]) use
//! their own read-only connections, so the API and the `jobs` command never wait for the
//! writer (WAL mode). A job still Queued or Running when the process died is marked
//! Interrupted at the next open. Finished jobs older than the retention are pruned in the
//! background ([`spawn_pruner`]).
//!
//! Knows nothing of Exchange, runbook files or HTTP: callers pass plain records, and must
//! keep secrets out of them (parameters and stream text are stored as given).

pub mod blob;
mod id;
mod job_history;
mod model;
mod schema;
mod spool;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

pub use id::{Before, InvalidBefore, InvalidJobId, JobId, NothingBefore};
pub use job_history::{JobHistory, LocalReports, ReportBody, SharedHistory};
pub use model::{
    JobDetail, JobFilter, JobStatus, JobSummary, NewJob, NewStreamEntry, Outcome, ReportFile,
    StepCounts, StreamEntry, StreamKind, Trigger, UnknownStatus,
};
pub use spool::{SPOOL_FILE, spool_path};
pub use store::{
    HistoryHealth, HistoryReader, HistoryStore, MAX_DATA_BYTES, MAX_TEXT_BYTES, RETRY_EVERY,
    spawn_pruner,
};

/// The database's file name inside `state.dir`.
pub const DATABASE_FILE: &str = "history.sqlite3";

/// Where the history database of a worker with this `state.dir` lives.
pub fn database_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DATABASE_FILE)
}

/// `[history]` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Jobs older than this are pruned in the background.
    pub retention: HumanDuration,
    /// Entries kept per stream of one job; further entries are counted as dropped
    /// (progress keeps its most recent entries instead).
    pub max_entries_per_stream: usize,
    /// How often the background pruner runs.
    pub prune_interval: HumanDuration,
    /// With `coordination.kind = "azure-blob"`: the container of the shared history, in the
    /// coordination storage account; default the coordination container.
    pub container: Option<String>,
    /// With `coordination.kind = "azure-blob"`: jobs kept whole in the local spool while the
    /// storage is unreachable. Older waiting jobs beyond these keep their record, step
    /// counts, warnings and errors; their output, plan and progress entries and reports are
    /// dropped (and counted), so that an outage of days cannot fill the disk.
    pub spool_max_jobs: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            retention: HumanDuration::from_secs(30 * 24 * 3600),
            max_entries_per_stream: 1000,
            prune_interval: HumanDuration::from_secs(3600),
            container: None,
            spool_max_jobs: 200,
        }
    }
}

impl HistorySettings {
    /// Values that parse but make no sense, as (`history.key`, message), for
    /// [`crate::settings::Settings::problems`].
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.retention.get() < std::time::Duration::from_secs(3600) {
            out.push((
                "history.retention".to_string(),
                format!(
                    "must be at least 1h (jobs would vanish before anyone reads them), got {}",
                    self.retention
                ),
            ));
        }
        if self.spool_max_jobs == 0 {
            out.push((
                "history.spool_max_jobs".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if self.max_entries_per_stream == 0 {
            out.push((
                "history.max_entries_per_stream".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if let Some(container) = &self.container
            && !blob::valid_container_name(container)
        {
            out.push((
                "history.container".to_string(),
                format!(
                    "{container:?} is not a blob container name: use 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
                ),
            ));
        }
        if self.prune_interval.get() < MIN_PRUNE_INTERVAL {
            out.push((
                "history.prune_interval".to_string(),
                format!("must be at least 1m, got {}", self.prune_interval),
            ));
        }
        out
    }
}

/// The pruner never runs more often than this, whatever the settings say.
pub const MIN_PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// What to check when the database cannot be opened, from SQLite's own reason: a full disk,
/// permissions and "too many open files" are different problems with different fixes.
fn open_hint(error: &rusqlite::Error) -> &'static str {
    let text = error.to_string().to_ascii_lowercase();
    if text.contains("too many open files") {
        "the process ran out of file descriptors: raise LimitNOFILE / ulimit -n, or lower http.max_connections"
    } else if text.contains("disk is full") || text.contains("no space") {
        "free disk space under state.dir"
    } else if text.contains("readonly") || text.contains("permission") || text.contains("access") {
        "check that the worker's user may write the file and state.dir"
    } else if text.contains("locked") || text.contains("busy") {
        "another process holds the database: is a second worker using this state.dir?"
    } else {
        "check the file's permissions and free disk space under state.dir"
    }
}

/// A job-history failure.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "no job history at {}: the worker creates it when `serve` first runs with this state.dir (check state.dir, --config or RUNBOOK_WORKER__STATE__DIR)",
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot create the state directory {} (check state.dir and its permissions)", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the job history database {}: {} ({})", path.display(), source, open_hint(source))]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{} is not a runbook-worker job history database (check state.dir)",
        path.display()
    )]
    NotHistory { path: PathBuf },
    #[error(
        "the job history database {} was written by a newer runbook-worker (schema {found}, this build knows {known}); upgrade runbook-worker or use another state.dir",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot {operation} in the job history")]
    Sqlite {
        operation: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no job {id} in the job history")]
    UnknownJob { id: JobId },
    #[error("job {id} is {from} and cannot become {to}")]
    InvalidTransition {
        id: JobId,
        from: JobStatus,
        to: JobStatus,
    },
    #[error("a job cannot finish as {status}: give a final status such as Completed or Failed")]
    NotFinal { status: JobStatus },
    #[error("job {id} has an unreadable {field} in the job history: {detail}")]
    Corrupt {
        id: String,
        field: &'static str,
        detail: String,
    },
    #[error("the job history is closed (the worker is shutting down)")]
    Closed,
    #[error("the job history {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A failure of the shared (blob) history, as redacted text with its kind.
    #[error("{detail}")]
    Shared { kind: FailureKind, detail: String },
}

/// Why a write to the job history failed, in one word for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// SQLITE_FULL: the disk (or the database's size limit) is full.
    DiskFull,
    /// SQLITE_BUSY or SQLITE_LOCKED: another connection holds the database.
    Locked,
    /// SQLITE_IOERR and friends: the disk failed a read or write.
    Io,
    /// The writer stopped (shutdown).
    Closed,
    /// Anything else (a bug, a corrupt row, an invalid transition).
    Other,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DiskFull => "disk_full",
            Self::Locked => "locked",
            Self::Io => "io_error",
            Self::Closed => "closed",
            Self::Other => "other",
        }
    }

    /// Whether the same write may succeed later without anyone changing the worker: space
    /// freed, the lock released, the disk back.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::DiskFull | Self::Locked | Self::Io)
    }
}

/// The kind of a SQLite failure and SQLite's own name for it.
fn sqlite_failure(error: &rusqlite::Error) -> (FailureKind, Option<&'static str>) {
    use rusqlite::ErrorCode;
    match error.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => (FailureKind::DiskFull, Some("SQLITE_FULL")),
        Some(ErrorCode::DatabaseBusy) => (FailureKind::Locked, Some("SQLITE_BUSY")),
        Some(ErrorCode::DatabaseLocked) => (FailureKind::Locked, Some("SQLITE_LOCKED")),
        Some(ErrorCode::SystemIoFailure) => (FailureKind::Io, Some("SQLITE_IOERR")),
        Some(ErrorCode::CannotOpen) => (FailureKind::Io, Some("SQLITE_CANTOPEN")),
        Some(ErrorCode::ReadOnly) => (FailureKind::Io, Some("SQLITE_READONLY")),
        _ => (FailureKind::Other, None),
    }
}

impl HistoryError {
    /// What kind of failure this is (see [`FailureKind`]).
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Sqlite { source, .. } | Self::Open { source, .. } => sqlite_failure(source).0,
            Self::CreateDir { .. } => FailureKind::Io,
            Self::Closed => FailureKind::Closed,
            Self::Shared { kind, .. } => *kind,
            _ => FailureKind::Other,
        }
    }

    /// The error with every cause, as one line: `Display` only gives the operation, and the
    /// root cause (disk full, database locked) is what an operator acts on.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        if let Self::Sqlite { source, .. } | Self::Open { source, .. } = self
            && let (_, Some(code)) = sqlite_failure(source)
        {
            text.push_str(" (");
            text.push_str(code);
            text.push(')');
        }
        text
    }
}
