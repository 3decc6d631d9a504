//! The [`WorkerApi`] the HTTP surface reads and forwards to: snapshots of the scheduler's
//! catalog, the history's readers, the coordination store's occurrence records, and run and
//! cancel requests sent through the scheduler's event channel (never run from a handler).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use crate::clock::SharedClock;
use crate::coordination::{CoordinationKind, Coordinator, StorageHealth};
use crate::history::{
    self, HistoryHealth, JobDetail, JobHistory, JobId, JobStatus, JobSummary, ReportBody, Trigger,
};
use crate::http::{
    ApiError, CancelOutcome, CoordinationReadiness, FileErrorView, HistoryReadiness, JobFilter,
    Readiness, RequestedVia, RunAccepted, RunRequest, RunbookView, RunbooksView, WorkerApi,
};
use crate::runbook::{ParamInput, ValidationError};
use crate::scheduler::{RunError, SchedulerHandle, plan_next, window};
use crate::timing::schedule::describe_upcoming;

use super::runner::IdentityHealth;

/// Flags the composition root sets as the worker starts and stops.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    pub history_open: AtomicBool,
    pub shutting_down: AtomicBool,
}

pub(crate) struct Api {
    pub scheduler: SchedulerHandle,
    pub history: JobHistory,
    pub history_health: HistoryHealth,
    pub coordinator: Coordinator,
    pub clock: SharedClock,
    pub identity: Arc<IdentityHealth>,
    pub lifecycle: Arc<Lifecycle>,
    /// The runbooks folder: files are shown relative to it.
    pub runbooks_dir: PathBuf,
}

/// `file` as the API shows it: relative to the runbooks folder, so that responses do not
/// tell how the host is laid out; unchanged when it lies elsewhere.
fn shown_path(dir: &Path, file: &str) -> String {
    match Path::new(file).strip_prefix(dir) {
        Ok(relative) if relative.as_os_str().is_empty() => ".".to_string(),
        Ok(relative) => relative.display().to_string(),
        Err(_) => file.to_string(),
    }
}

/// The file error shown for a runbook or an invalid file: the first problem's line, and
/// every problem in the message.
fn file_error(dir: &Path, file: &str, errors: &[ValidationError]) -> FileErrorView {
    let line = errors
        .iter()
        .map(|e| e.line)
        .find(|line| *line > 0)
        .and_then(|line| u32::try_from(line).ok());
    let message = errors
        .iter()
        .map(|e| {
            if e.line > 0 {
                format!("line {}, column {}: {}", e.line, e.column, e.message)
            } else {
                e.message.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    FileErrorView {
        file: shown_path(dir, file),
        line,
        message,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What `?before=` means in the history's id order.
#[derive(Debug, PartialEq, Eq)]
enum Before {
    /// Before 1970: no job was created then.
    Nothing,
    /// Beyond what a job id can hold (year 10889): every job.
    Everything,
    /// Jobs with an id below this one.
    Id(JobId),
}

/// The smallest job id created at or after `at`: ids are ULIDs, so "created before `at`" is
/// "id below this one". Instants a ULID's 48-bit millisecond time cannot hold are not
/// wrapped or dropped but mean "nothing" or "everything".
fn before_bound(at: DateTime<Utc>) -> Before {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let Ok(millis) = u128::try_from(at.timestamp_millis()) else {
        return Before::Nothing;
    };
    if millis >= 1u128 << 48 {
        return Before::Everything;
    }
    let value = millis << 80;
    let text: String = (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            char::from(ALPHABET[((value >> shift) & 0x1f) as usize])
        })
        .collect();
    match text.parse() {
        Ok(id) => Before::Id(id),
        Err(_) => Before::Everything,
    }
}

fn internal(e: history::HistoryError) -> ApiError {
    ApiError::Internal(Box::new(e))
}

#[async_trait]
impl WorkerApi for Api {
    fn runbooks(&self) -> RunbooksView {
        let catalog = self.scheduler.catalog();
        let now = self.clock.now();
        let runbooks = catalog
            .iter()
            .map(|live| {
                let r = &live.runbook;
                let last = self.scheduler.last_job(&r.name);
                RunbookView {
                    name: r.name.clone(),
                    description: Some(r.description.clone()).filter(|d| !d.is_empty()),
                    file: shown_path(&self.runbooks_dir, &r.file),
                    schedule: r.schedule.as_ref().map(|s| s.expressions().join(", ")),
                    time_zone: r.timezone.name().to_string(),
                    next_run: plan_next(r, now).map(|due| due.instant),
                    enabled: r.enabled,
                    last_status: last.as_ref().map(|l| l.status.as_str().to_string()),
                    last_job_id: last.map(|l| l.job_id.as_str().to_string()),
                    validation_error: (!live.errors.is_empty()).then(|| {
                        file_error(&self.runbooks_dir, &live.errors[0].file, &live.errors)
                    }),
                }
            })
            .collect();
        let mut invalid_files: Vec<FileErrorView> = catalog
            .invalid_files()
            .map(|(file, errors)| file_error(&self.runbooks_dir, file, errors))
            .collect();
        if let Some(error) = catalog.folder_error() {
            invalid_files.push(file_error(
                &self.runbooks_dir,
                &error.file,
                std::slice::from_ref(error),
            ));
        }
        RunbooksView {
            runbooks,
            invalid_files,
        }
    }

    fn readiness(&self) -> Readiness {
        let catalog = self.scheduler.catalog();
        let coordination = match self.coordinator.kind() {
            CoordinationKind::Local => CoordinationReadiness::NotConfigured,
            CoordinationKind::AzureBlob => match &*self.coordinator.health().borrow() {
                StorageHealth::Ok => CoordinationReadiness::Ok,
                StorageHealth::Unknown => {
                    CoordinationReadiness::Unreachable("not reached yet".to_string())
                }
                StorageHealth::Failing { reason } => {
                    CoordinationReadiness::Unreachable(reason.clone())
                }
            },
        };
        Readiness {
            runbooks_loaded: catalog.folder_error().is_none() || !catalog.is_empty(),
            history_open: self.lifecycle.history_open.load(Ordering::SeqCst),
            history: match self.history_health.failing() {
                None => HistoryReadiness::Ok,
                Some(reason) => HistoryReadiness::Failing(reason),
            },
            identity: self.identity.readiness(),
            coordination,
            shutting_down: self.lifecycle.shutting_down.load(Ordering::SeqCst)
                || self.scheduler.is_stopping(),
        }
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobSummary>, ApiError> {
        let status = match filter.status.as_deref() {
            None => None,
            Some(text) => Some(
                text.parse::<JobStatus>()
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?,
            ),
        };
        let before = match filter.before.map(before_bound) {
            Some(Before::Nothing) => return Ok(Vec::new()),
            Some(Before::Id(id)) => Some(id),
            Some(Before::Everything) | None => None,
        };
        let filter = history::JobFilter {
            runbook: filter.runbook,
            status,
            limit: filter.limit,
            before,
        };
        self.history.list_jobs(&filter).await.map_err(internal)
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobDetail>, ApiError> {
        let Ok(id) = id.parse::<JobId>() else {
            return Ok(None);
        };
        self.history.get_job(&id).await.map_err(internal)
    }

    async fn open_report(&self, id: &str, file: &str) -> Result<Option<ReportBody>, ApiError> {
        let Ok(id) = id.parse::<JobId>() else {
            return Ok(None);
        };
        self.history.open_report(&id, file).await.map_err(internal)
    }

    async fn run_runbook(&self, name: &str, request: RunRequest) -> Result<RunAccepted, ApiError> {
        let trigger = match request.requested_via {
            RequestedVia::Api => Trigger::Api,
            RequestedVia::Dashboard => Trigger::Manual,
        };
        let params = request
            .params
            .into_iter()
            .map(|(k, v)| (k, ParamInput::Json(v)))
            .collect();
        match self
            .scheduler
            .run(name, params, request.dry_run, trigger)
            .await
        {
            Ok(id) => Ok(RunAccepted {
                job_id: id.as_str().to_string(),
            }),
            Err(e) => Err(match e {
                RunError::NotFound(_) => ApiError::NotFound(e.to_string()),
                RunError::Params(_) => ApiError::BadRequest(e.to_string()),
                RunError::Busy(_) => ApiError::Conflict(e.to_string()),
                RunError::ShuttingDown => ApiError::Unavailable(e.to_string()),
                RunError::History(_) => ApiError::Internal(Box::new(e)),
            }),
        }
    }

    async fn cancel_job(&self, id: &str) -> Result<CancelOutcome, ApiError> {
        let Ok(id) = id.parse::<JobId>() else {
            return Ok(CancelOutcome::NotFound);
        };
        if self.scheduler.cancel(&id).await {
            return Ok(CancelOutcome::Requested);
        }
        match self.history.get_job(&id).await.map_err(internal)? {
            None => Ok(CancelOutcome::NotFound),
            Some(job) => Ok(CancelOutcome::NotRunning {
                status: job.job.status.as_str().to_string(),
            }),
        }
    }

    async fn occurrences(&self, runbook: &str, limit: usize) -> Result<Vec<Value>, ApiError> {
        let catalog = self.scheduler.catalog();
        let Some(live) = catalog.get(runbook) else {
            return Err(ApiError::NotFound(format!(
                "no runbook named {runbook:?} is loaded (GET /api/runbooks lists them)"
            )));
        };
        let r = &live.runbook;
        let tz = r.timezone;
        let now = self.clock.now();
        let mut out = Vec::new();
        if let (Some(schedule), true) = (r.schedule.as_ref(), r.enabled) {
            let window = window(r);
            // Ask for a few more than needed: some may fall outside the active window.
            for (local, utc) in describe_upcoming(schedule, now, limit.saturating_mul(2)) {
                if out.len() >= limit || window.has_ended(utc) {
                    break;
                }
                if window.contains(utc) {
                    out.push(json!({
                        "utc": rfc3339(utc),
                        "local": local.to_rfc3339_opts(SecondsFormat::Secs, true),
                        "state": "scheduled",
                    }));
                }
            }
        }
        // The cluster-wide records (this replica's only, with local coordination).
        // The store's listing future cannot be proven `Send` (a higher-ranked lifetime in
        // its stream of reads), which an axum handler requires: build and drive it on a
        // blocking thread instead of moving it between workers.
        let coordinator = self.coordinator.clone();
        let name = runbook.to_string();
        let runtime = tokio::runtime::Handle::current();
        let records = tokio::task::spawn_blocking(move || {
            runtime.block_on(coordinator.list_occurrences(&name, limit))
        })
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .map_err(|e| ApiError::Unavailable(format!("cannot read the occurrence records: {e}")))?;
        for record in records {
            out.push(json!({
                "utc": rfc3339(record.scheduled_for),
                "local": record.scheduled_for.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Secs, true),
                "state": record.state.as_str(),
                "owner": record.owner,
                "attempt": record.attempt,
                "job_id": record.job_id,
                "started_at": record.started_at.map(rfc3339),
                "ended_at": record.ended_at.map(rfc3339),
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_before_instant_becomes_the_first_id_of_that_millisecond() {
        let id = |at| match before_bound(at) {
            Before::Id(id) => id,
            other => panic!("{at}: {other:?}"),
        };
        let at = Utc.with_ymd_and_hms(2026, 3, 29, 10, 0, 0).unwrap();
        let bound = id(at);
        let earlier = id(at - chrono::Duration::milliseconds(1));
        let later = id(at + chrono::Duration::milliseconds(1));
        assert!(earlier < bound && bound < later);
        assert!(bound.as_str().ends_with("0000000000000000"), "{bound}");
        assert!(id(DateTime::UNIX_EPOCH).as_str().starts_with("0000000000"));
    }

    #[test]
    fn instants_a_job_id_cannot_hold_mean_nothing_or_everything() {
        for at in [
            Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).unwrap(),
            DateTime::<Utc>::MIN_UTC,
        ] {
            assert_eq!(before_bound(at), Before::Nothing, "{at}");
        }
        for at in [
            Utc.with_ymd_and_hms(10890, 1, 1, 0, 0, 0).unwrap(),
            DateTime::<Utc>::MAX_UTC,
        ] {
            assert_eq!(before_bound(at), Before::Everything, "{at}");
        }
    }

    #[test]
    fn files_are_shown_relative_to_the_runbooks_folder() {
        let dir = Path::new("/srv/runbooks");
        for (file, shown) in [
            ("/srv/runbooks/a.toml", "a.toml"),
            ("/srv/runbooks/team/b.toml", "team/b.toml"),
            ("/srv/runbooks", "."),
            ("/elsewhere/c.toml", "/elsewhere/c.toml"),
        ] {
            assert_eq!(shown_path(dir, file), shown, "{file}");
        }
    }

    #[test]
    fn file_errors_show_the_first_line_and_every_message() {
        let error = |line, message: &str| ValidationError {
            file: "runbooks/a.toml".to_string(),
            line,
            column: 3,
            key: String::new(),
            kind: crate::runbook::ErrorKind::Value,
            message: message.to_string(),
        };
        let view = file_error(
            Path::new("/srv/runbooks"),
            "runbooks/a.toml",
            &[error(4, "bad cron"), error(9, "bad zone")],
        );
        assert_eq!(view.line, Some(4));
        assert_eq!(
            view.message,
            "line 4, column 3: bad cron; line 9, column 3: bad zone"
        );
        let whole = file_error(
            Path::new("/srv/runbooks"),
            "runbooks/a.toml",
            &[error(0, "cannot read the file")],
        );
        assert_eq!(whole.line, None);
        assert_eq!(whole.message, "cannot read the file");
    }
}
