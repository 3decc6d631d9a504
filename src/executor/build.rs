//! Building an [`Executor`] from the worker's settings: the one code path `run` and
//! `serve` share, so a job runs the same way from the terminal and from the scheduler.

use std::sync::Arc;

use crate::clock::{SharedClock, SystemClock};
use crate::identity::{IdentityEnvironment, ProviderOptions, TokenProviders};
use crate::settings::Settings;
use crate::telemetry::metrics::Metrics;

use super::{ExchangeClients, Executor, ExecutorDeps, ExecutorError};

/// The executor for `settings`: token providers for `[identity]` (and each runbook's own
/// identity, on first use), Exchange clients for `[exchange]`, the `[policy]`, `state.dir`
/// and the system clock. Does no I/O; the first token is fetched by the first call.
pub fn build_from_settings(
    settings: &Settings,
    env: &IdentityEnvironment,
    metrics: Option<Arc<Metrics>>,
) -> Result<Executor, ExecutorError> {
    let clock: SharedClock = Arc::new(SystemClock);
    let options = ProviderOptions {
        clock: Arc::clone(&clock),
        ..ProviderOptions::default()
    };
    let providers = TokenProviders::new(&settings.identity, env, options)
        .map_err(|e| ExecutorError::Identity(Box::new(e)))?;
    let clients = ExchangeClients::new(settings.exchange.clone(), Arc::new(providers))?;
    Ok(Executor::new(ExecutorDeps {
        clients: Arc::new(clients),
        policy: settings.policy.clone(),
        state_dir: settings.state.dir.clone(),
        clock,
        metrics,
    }))
}
