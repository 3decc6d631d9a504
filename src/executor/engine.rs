//! Runs a job's steps (work in progress).

use tokio_util::sync::CancellationToken;

use super::events::JobEvents;
use super::outcome::{FinalStatus, JobOutcome};
use super::{ExecutorDeps, JobSpec};

pub(crate) async fn run_job(
    _deps: &ExecutorDeps,
    job: JobSpec,
    _events: &dyn JobEvents,
    _cancel: CancellationToken,
) -> JobOutcome {
    JobOutcome {
        status: FinalStatus::Failed,
        steps: Vec::new(),
        error: Some(format!("runbook \"{}\": the executor is not finished yet", job.runbook.name)),
        duration: std::time::Duration::ZERO,
        attempts: 1,
        reports: Vec::new(),
        peak_records_in_memory: 0,
    }
}
