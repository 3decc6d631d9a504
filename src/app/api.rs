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
    self, Before, HistoryHealth, JobDetail, JobHistory, JobId, JobStatus, JobSummary, ReportBody,
    Trigger,
};
use crate::http::{
    ApiError, CancelOutcome, CoordinationReadiness, FileErrorView, HistoryReadiness, JobFilter,
    ParamView, Readiness, RequestedVia, RunAccepted, RunRequest, RunbookView, RunbooksView,
    ScheduleView, WorkerApi,
};
use crate::runbook::{ParamInput, Runbook, ValidationError};
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

/// The runbook's `[params]` declarations as the API lists them.
fn param_views(runbook: &Runbook) -> Vec<ParamView> {
    runbook
        .params
        .values()
        .map(|spec| ParamView {
            name: spec.name.clone(),
            kind: spec.kind.name().to_string(),
            default: spec.default.clone(),
            required: spec.default.is_none(),
            description: spec.description.clone(),
        })
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Each schedule of `r` with its next instant after `now`.
fn schedule_views(r: &crate::runbook::Runbook, now: DateTime<Utc>) -> Vec<ScheduleView> {
    let window = window(r);
    r.schedule_entries
        .iter()
        .map(|e| ScheduleView {
            index: e.index,
            cron: e.label.clone(),
            time_zone: e.timezone.name().to_string(),
            params: e.params.clone(),
            next_run: r
                .enabled
                .then(|| window.next_fire(&e.schedule, now))
                .flatten(),
        })
        .collect()
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
                    schedule: (!r.schedules.is_empty()).then(|| {
                        r.schedules
                            .iter()
                            .map(|c| c.expression.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                    time_zone: r.timezone.name().to_string(),
                    next_run: plan_next(r, now).map(|due| due.instant),
                    enabled: r.enabled,
                    last_status: last.as_ref().map(|l| l.status.as_str().to_string()),
                    last_job_id: last.map(|l| l.job_id.as_str().to_string()),
                    validation_error: (!live.errors.is_empty()).then(|| {
                        file_error(&self.runbooks_dir, &live.errors[0].file, &live.errors)
                    }),
                    params: param_views(r),
                    schedules: schedule_views(r, now),
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
        let Ok(before) = filter
            .before
            .map_or(Ok(None), |at| Before::instant(at).bound())
        else {
            // Before 1970: no job was created then.
            return Ok(Vec::new());
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

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
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
        if r.enabled {
            let window = window(r);
            let mut upcoming = Vec::new();
            for entry in &r.schedule_entries {
                // Ask for a few more than needed: some may fall outside the active window.
                for (local, utc) in describe_upcoming(&entry.schedule, now, limit.saturating_mul(2))
                {
                    if window.has_ended(utc) {
                        break;
                    }
                    if window.contains(utc) {
                        upcoming.push((utc, entry.index, local));
                    }
                }
            }
            upcoming.sort_by_key(|(utc, index, _)| (*utc, *index));
            for (utc, index, local) in upcoming.into_iter().take(limit) {
                out.push(json!({
                    "utc": rfc3339(utc),
                    "local": local.to_rfc3339_opts(SecondsFormat::Secs, true),
                    "state": "scheduled",
                    "schedule": index,
                }));
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
