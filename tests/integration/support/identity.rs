//! Helpers for the identity tests: the simulator, providers pointed at it with a retry policy
//! scaled down to milliseconds, and a log capture.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use runbook_worker::clock::{ManualClock, SharedClock, SystemClock};
use runbook_worker::identity::{
    IdentityEnvironment, IdentitySettings, ProviderOptions, RetryPolicy, TokenProvider,
};
use runbook_worker::simulator::identity::{IdentitySimulator, IdentitySimulatorConfig};
use tracing_subscriber::fmt::MakeWriter;

/// The production policy with every duration divided by 1000: one "second" of Microsoft's
/// guidance is a millisecond here, and the simulator's scripts (410 windows, Retry-After
/// values, slow answers) are written in the same milliseconds. The attempt timeout stays
/// generous so that a loaded machine does not turn a normal answer into a timeout.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(30),
        max_retries: 5,
        gone_window: Duration::from_millis(70),
        gone_max_delay: Duration::from_millis(10),
        retry_after_unit: Duration::from_millis(1),
        max_retry_after: Duration::from_millis(60),
        jitter: 0.2,
        attempt_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
    }
}

/// Provider options for tests: scaled retries, the given clock, no refresh debounce.
pub fn options(clock: SharedClock) -> ProviderOptions {
    ProviderOptions {
        retry: fast_retry(),
        clock,
        min_refresh_interval: Duration::ZERO,
    }
}

/// A manual clock at a fixed, realistic instant.
pub fn manual_clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap())
}

pub async fn simulator(config: IdentitySimulatorConfig) -> IdentitySimulator {
    IdentitySimulator::start(config)
        .await
        .expect("start the identity simulator")
}

/// `[identity]` settings that send IMDS requests to the simulator.
pub fn imds_settings(sim: &IdentitySimulator) -> IdentitySettings {
    IdentitySettings {
        imds_endpoint: sim.endpoint(),
        ..IdentitySettings::default()
    }
}

pub fn env(pairs: &[(&str, &str)]) -> IdentityEnvironment {
    IdentityEnvironment::from_map(
        &pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    )
}

/// A provider from `settings` and `options` with no platform variables set.
pub fn provider_with(settings: &IdentitySettings, options: ProviderOptions) -> Arc<TokenProvider> {
    TokenProvider::with_options(settings, &IdentityEnvironment::default(), None, options)
        .expect("provider")
}

/// A provider for the simulator's IMDS endpoint with scaled retries and the system clock.
pub fn imds_provider(sim: &IdentitySimulator, settings: IdentitySettings) -> Arc<TokenProvider> {
    let provider = provider_with(&settings, options(Arc::new(SystemClock)));
    assert!(provider.describe().endpoint.starts_with(&sim.base_url()));
    provider
}

/// The simulator started with `config` and a provider for its IMDS endpoint, both on one
/// manual clock (at [`manual_clock`]'s instant) that the test moves.
pub async fn clocked_imds(
    config: IdentitySimulatorConfig,
) -> (ManualClock, IdentitySimulator, Arc<TokenProvider>) {
    let clock = manual_clock();
    let sim = simulator(config.with_clock(Arc::new(clock.clone()))).await;
    let provider = provider_with(&imds_settings(&sim), options(Arc::new(clock.clone())));
    (clock, sim, provider)
}

/// Runs the binary with `args` in an empty folder, its IMDS endpoint the simulator's.
pub async fn run_against(sim: &IdentitySimulator, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = sim.base_url();
    super::run_binary_off_runtime(
        dir.path(),
        args,
        &[("RUNBOOK_WORKER__IDENTITY__IMDS_ENDPOINT", &endpoint)],
    )
    .await
}

/// Everything written to it, for asserting on log output.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures every event at trace level on this thread until the guard drops. Tests that use
/// it run on tokio's current-thread runtime, so the provider's tasks log on this thread too.
pub fn capture_logs() -> (tracing::subscriber::DefaultGuard, CapturedLogs) {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Other tests create and drop subscribers concurrently; a callsite first seen while none
    // of them wanted it may have cached "never". Recompute with this one in place.
    tracing::callsite::rebuild_interest_cache();
    (guard, logs)
}
