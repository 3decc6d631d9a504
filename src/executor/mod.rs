//! Running one job: a runbook's steps against Exchange Online, for real or as a dry run,
//! with its safety limits (cmdlet policy re-checked, `max_changes`), `continue_on_error`,
//! reports, the whole-job timeout, cancellation and whole-job retries.
//!
//! Writes are never repeated blindly: the job keeps one ledger of its writes across
//! attempts, and a retry (which starts again from the first step) only happens when that
//! ledger is empty and the failure was transient. Template rendering, bounded by its work
//! budget, runs on the blocking pool so that no runbook can hold up the runtime.
//!
//! A failed job is an outcome, never an error that reaches the caller: [`Executor::run`]
//! always returns a [`JobOutcome`], also when a step panics (caught at the job's boundary
//! and recorded as Failed). What happens while the job runs is told to a [`JobEvents`]
//! sink as [`JobEvent`]s; [`HistoryEvents`] writes them into the job history, the `run`
//! command prints them.
//!
//! Memory stays bounded by the pages in flight, not by the number of records: a step's
//! records flow through bounded channels straight into the `for_each` step that follows
//! it, and records that must be kept (for a later consumer, a `max_changes` count or a
//! report's column union) are spooled to JSON-lines files under the job's temporary folder.
//! Only `steps.<name>.records` that a template reads are held in memory, because the
//! template needs them as one value.
//!
//! Layout: `plan` decides (purely, from the runbook) where each step's records go;
//! `engine` runs the steps; `spool` and `report` are the files; `clients` hands out one
//! [`ExchangeClient`](crate::exchange::ExchangeClient) per (organization, identity);
//! `history` is the [`HistoryEvents`] adapter. The composition root
//! (`app::Components`) builds it for `run`, `serve` and the API.
//!
//! Knows nothing of schedules (when a job runs is the scheduler's business), of HTTP, or
//! of the InvokeCommand wire format (that is the exchange module's).

pub mod assets;
mod clients;
mod engine;
mod events;
mod history;
mod outcome;
mod plan;
mod report;
mod spool;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::identity::IdentityError;
use crate::runbook::PolicySettings;
use crate::telemetry::metrics::Metrics;

pub use crate::history::StepCounts;
pub use assets::{Assets, MASK, Masker, describe_assets};
pub use clients::{ClientError, ExchangeClients, FixedTokens, TokenSources};
pub use engine::MAX_KEPT_RECORDS;
pub use events::{Both, ItemOutcome, JobEvent, JobEvents, NoEvents, command_line};
pub use history::HistoryEvents;
pub use outcome::{FinalStatus, JobOutcome, describe_counts};
pub use report::report_path;

pub use crate::runbook::JobSpec;

/// What a job needs from the rest of the worker.
pub struct ExecutorDeps {
    /// Exchange clients per (organization, identity), sharing limiters and tokens.
    pub clients: Arc<ExchangeClients>,
    /// The `[policy]` settings every call is checked against at run time.
    pub policy: PolicySettings,
    /// `state.dir`: reports go to `<state_dir>/reports/<job id>/`, spool files to
    /// `<state_dir>/tmp/<job id>/` (removed when the job ends).
    pub state_dir: PathBuf,
    /// `now` for templates and the job's timestamps.
    pub clock: SharedClock,
    /// Exchange calls per cmdlet and outcome are counted here when given.
    pub metrics: Option<Arc<Metrics>>,
    /// `[vars]` and `[secrets]` for templates.
    pub assets: Arc<Assets>,
}

/// Runs jobs. Cheap to share (`Arc<Executor>`); jobs run concurrently on one executor.
pub struct Executor {
    deps: ExecutorDeps,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("state_dir", &self.deps.state_dir)
            .field("policy", &self.deps.policy)
            .finish_non_exhaustive()
    }
}

/// Why the executor cannot be built (settings that cannot work). A job's own failures
/// are [`JobOutcome`]s, never this. The sources are boxed to keep `Result`s small.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The `[identity]` settings or the environment do not name a usable identity.
    #[error("cannot set up the managed identity: {0}")]
    Identity(#[source] Box<IdentityError>),
    /// The `[exchange]` settings cannot work.
    #[error("cannot set up the Exchange Online client: {0}")]
    Exchange(#[source] Box<crate::exchange::ExchangeError>),
}

impl Executor {
    pub fn new(deps: ExecutorDeps) -> Self {
        Self { deps }
    }

    /// The Exchange clients jobs use (the scheduler's `doctor`-style checks may share them).
    pub fn clients(&self) -> &Arc<ExchangeClients> {
        &self.deps.clients
    }

    /// Runs `job` to its end and returns how it ended; never panics and never returns an
    /// error. Whole-job retries (`retries` in the runbook) happen inside, after the
    /// runbook's backoff, and never send a write twice: only an attempt that failed
    /// transiently (throttling, tokens, an unreachable service, a failing read) while the
    /// job had sent no write is retried. A write that was sent — confirmed, or with an
    /// unknown outcome — ends the job at that attempt, with a message saying how many
    /// writes were applied or unknown; definite errors (a cmdlet's 4xx, templates, policy,
    /// params, `max_changes`), CompletedWithErrors, TimedOut and Cancelled are never
    /// retried. `max_changes` counts the writes of every attempt. Each attempt is announced
    /// with [`JobEvent::AttemptStarted`]. `cancel` stops the job between calls and aborts
    /// calls in flight; the outcome is then Cancelled. The runbook's `timeout` applies to
    /// each attempt.
    pub async fn run(
        &self,
        job: JobSpec,
        events: &dyn JobEvents,
        cancel: CancellationToken,
    ) -> JobOutcome {
        engine::run_job(&self.deps, job, events, cancel).await
    }

    /// Stops the token providers' background refreshes and waits for them.
    pub async fn shutdown(&self) {
        self.deps.clients.shutdown().await;
    }
}

/// A delay for messages, to the millisecond (`1m 30s`, `250ms`).
pub(crate) fn describe_delay(d: Duration) -> String {
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_executor_can_be_shared_by_every_job() {
        fn assert_shareable<T: Send + Sync>() {}
        assert_shareable::<Executor>();
        assert_shareable::<HistoryEvents>();
    }

    #[test]
    fn a_job_can_run_on_any_worker_thread() {
        fn assert_send<T: Send>(_: &T) {}
        fn check(executor: &Executor, job: JobSpec) {
            let future = executor.run(job, &NoEvents, CancellationToken::new());
            assert_send(&future);
        }
        let _ = check;
    }
}
