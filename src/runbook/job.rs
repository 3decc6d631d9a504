//! The one job contract: what the scheduler, the API and `run` hand to whatever runs a job
//! (the executor in production, a test's runner elsewhere). Parameters arrive here already
//! resolved and checked, once, by whoever created the job, so a mistake in them never
//! becomes a job.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::history::{JobId, Trigger};

use super::Runbook;

/// One job of a runbook, ready to run.
#[derive(Clone, Debug)]
pub struct JobSpec {
    /// The job's id in the history (also names its report folder).
    pub id: JobId,
    /// The version of the runbook this job runs (a reload never changes it mid-job).
    pub runbook: Arc<Runbook>,
    pub trigger: Trigger,
    /// The occurrence's instant; for a manual or API run, when it was requested
    /// (`job.scheduled_for` in templates).
    pub scheduled_for: DateTime<Utc>,
    /// A catch-up run after downtime (Azure Functions' `IsPastDue`).
    pub past_due: bool,
    /// Every declared parameter, resolved ([`Runbook::resolve_params`]): defaults plus the
    /// run's overrides.
    pub params: BTreeMap<String, Value>,
    /// Read cmdlets run for real; every other call is only planned.
    pub dry_run: bool,
}
