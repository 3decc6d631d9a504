//! The executor wired to a simulated tenant: a temporary state folder, an event recorder,
//! job ids, and both simulators started for runs of the real binary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use runbook_worker::clock::{SharedClock, SystemClock};
use runbook_worker::exchange::ExchangeSettings;
use runbook_worker::executor::{
    ExchangeClients, Executor, ExecutorDeps, FixedTokens, ItemOutcome, JobEvent, JobEvents,
    JobOutcome, JobSpec,
};
use runbook_worker::history::{JobId, Trigger};
use runbook_worker::runbook::{CmdletPolicy, ParamInput, PolicySettings, Runbook, parse_runbook};
use runbook_worker::simulator::exchange::{ExchangeSimulator, RecordedRequest, SimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID,
};
use runbook_worker::telemetry::metrics::Metrics;

use super::exchange::{Tenant, tenant_with};

/// How a [`Harness`] is set up.
pub struct Options {
    pub policy: PolicySettings,
    pub clock: SharedClock,
    pub adjust: Box<dyn FnOnce(&mut ExchangeSettings) + Send>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: PolicySettings::default(),
            clock: Arc::new(SystemClock),
            adjust: Box::new(|_| {}),
        }
    }
}

/// An executor talking to a simulated tenant, with a temporary `state.dir`.
pub struct Harness {
    pub tenant: Tenant,
    pub state: tempfile::TempDir,
    pub executor: Executor,
    pub metrics: Arc<Metrics>,
}

pub async fn harness(config: SimulatorConfig) -> Harness {
    harness_with(config, Options::default()).await
}

pub async fn harness_with(config: SimulatorConfig, options: Options) -> Harness {
    let tenant = tenant_with(config, options.adjust).await;
    let state = tempfile::tempdir().expect("state dir");
    let metrics = Arc::new(Metrics::new());
    let clients = ExchangeClients::new(
        tenant.settings.clone(),
        Arc::new(FixedTokens(tenant.tokens.clone())),
    )
    .expect("clients from valid settings");
    let executor = Executor::new(ExecutorDeps {
        clients: Arc::new(clients),
        policy: options.policy,
        state_dir: state.path().to_path_buf(),
        assets: Arc::new(runbook_worker::executor::Assets::none(
            options.clock.clone(),
        )),
        clock: options.clock,
        metrics: Some(metrics.clone()),
    });
    Harness {
        tenant,
        state,
        executor,
        metrics,
    }
}

impl Harness {
    pub fn sim(&self) -> &ExchangeSimulator {
        &self.tenant.sim
    }

    /// Runs `job` with a fresh recorder and no cancellation.
    pub async fn run(&self, job: JobSpec) -> (JobOutcome, Recorder) {
        let recorder = Recorder::default();
        let outcome = self
            .executor
            .run(job, &recorder, CancellationToken::new())
            .await;
        (outcome, recorder)
    }

    /// Requests whose cmdlet is not a read, in arrival order.
    pub fn writes(&self) -> Vec<RecordedRequest> {
        writes(&self.sim().requests())
    }
}

/// The requests that carry a cmdlet other than a read.
pub fn writes(requests: &[RecordedRequest]) -> Vec<RecordedRequest> {
    requests
        .iter()
        .filter(|r| {
            r.cmdlet()
                .is_some_and(|c| !runbook_worker::runbook::is_read_cmdlet(c))
        })
        .cloned()
        .collect()
}

/// A runbook parsed from text with the default policy (plus `Remove-*` allowed).
pub fn runbook(text: &str) -> Arc<Runbook> {
    let policy = CmdletPolicy::new(&PolicySettings {
        allow: vec!["*".to_string(), "Remove-*".to_string()],
        deny: Vec::new(),
    });
    Arc::new(
        parse_runbook("test-runbook", "test-runbook.toml", text, &policy).unwrap_or_else(
            |errors| {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                panic!("invalid test runbook:\n{}", lines.join("\n"))
            },
        ),
    )
}

/// A fresh job id (a ULID made of 128 random bits).
pub fn job_id() -> JobId {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value = uuid::Uuid::new_v4().as_u128();
    let text: String = (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            let digit = if shift >= 128 {
                0
            } else {
                (value >> shift) & 0x1f
            };
            char::from(ALPHABET[digit as usize])
        })
        .collect();
    text.parse().expect("a valid job id")
}

/// A manual job of `runbook` with its parameters' defaults.
pub fn job(runbook: &Arc<Runbook>, dry_run: bool) -> JobSpec {
    job_resolved(runbook, &[], dry_run)
}

/// As [`job`], with `--param`-style overrides, resolved as `run` and the API resolve them.
pub fn job_with_params(runbook: &Arc<Runbook>, params: &[(&str, &str)]) -> JobSpec {
    job_resolved(runbook, params, false)
}

fn job_resolved(runbook: &Arc<Runbook>, params: &[(&str, &str)], dry_run: bool) -> JobSpec {
    let params = runbook
        .resolve_params(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), ParamInput::Text(v.to_string()))),
        )
        .unwrap_or_else(|e| panic!("test parameters of {} must resolve: {e}", runbook.name));
    JobSpec {
        id: job_id(),
        runbook: runbook.clone(),
        trigger: Trigger::Manual,
        scheduled_for: Utc::now(),
        past_due: false,
        params,
        dry_run,
    }
}

/// Keeps every event except the many per-item ones, which it counts (keeping the first
/// [`Recorder::KEEP`] of each kind), so a 100,000-item job does not fill the test's memory.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<RecorderState>,
}

#[derive(Default)]
struct RecorderState {
    events: Vec<JobEvent>,
    counts: BTreeMap<String, u64>,
}

impl Recorder {
    pub const KEEP: u64 = 1000;

    pub fn events(&self) -> Vec<JobEvent> {
        self.inner.lock().unwrap().events.clone()
    }

    /// How many events of a kind (`item.done`, `item.failed`, `planned`, `warning`, …).
    pub fn count(&self, kind: &str) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .counts
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn planned(&self) -> Vec<(String, serde_json::Value)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                JobEvent::Planned {
                    cmdlet, parameters, ..
                } => Some((cmdlet, parameters)),
                _ => None,
            })
            .collect()
    }

    /// (target, error) of each failed item.
    pub fn failures(&self) -> Vec<(Option<String>, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                JobEvent::Item {
                    outcome: ItemOutcome::Failed,
                    target,
                    error,
                    ..
                } => Some((target, error.unwrap_or_default())),
                _ => None,
            })
            .collect()
    }

    pub fn warnings(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                JobEvent::Warning { message, .. } => Some(message),
                _ => None,
            })
            .collect()
    }
}

fn kind(event: &JobEvent) -> String {
    match event {
        JobEvent::AttemptStarted { .. } => "attempt_started".into(),
        JobEvent::AttemptFailed { .. } => "attempt_failed".into(),
        JobEvent::StepStarted { .. } => "step_started".into(),
        JobEvent::Item { outcome, .. } => format!(
            "item.{}",
            match outcome {
                ItemOutcome::Done => "done",
                ItemOutcome::Failed => "failed",
                ItemOutcome::Skipped => "skipped",
                ItemOutcome::Planned => "planned",
            }
        ),
        JobEvent::Progress { .. } => "progress".into(),
        JobEvent::Warning { .. } => "warning".into(),
        JobEvent::Planned { .. } => "planned".into(),
        JobEvent::Report { .. } => "report".into(),
        JobEvent::StepFinished { .. } => "step_finished".into(),
        JobEvent::AssetsUsed { .. } => "assets_used".into(),
    }
}

#[async_trait]
impl JobEvents for Recorder {
    async fn emit(&self, event: JobEvent) {
        let kind = kind(&event);
        let mut state = self.inner.lock().unwrap();
        let seen = state.counts.entry(kind).or_default();
        *seen += 1;
        if *seen <= Self::KEEP {
            state.events.push(event);
        }
    }
}

/// Both simulators on 127.0.0.1 as the binary sees them: the identity endpoint hands out
/// tokens of [`SIMULATED_TENANT_ID`], which the simulated tenant accepts.
pub struct Simulators {
    pub identity: IdentitySimulator,
    pub exchange: ExchangeSimulator,
}

pub async fn simulators(config: SimulatorConfig) -> Simulators {
    simulators_with(config, IdentitySimulatorConfig::default()).await
}

/// As [`simulators`], with the identity endpoint's own configuration (e.g. app roles).
pub async fn simulators_with(
    config: SimulatorConfig,
    identity: IdentitySimulatorConfig,
) -> Simulators {
    let identity = IdentitySimulator::start(identity)
        .await
        .expect("start the identity simulator");
    let exchange = ExchangeSimulator::start(SimulatorConfig {
        tenant_id: SIMULATED_TENANT_ID.to_string(),
        ..config
    })
    .await
    .expect("start the simulated tenant");
    Simulators { identity, exchange }
}

impl Simulators {
    /// The environment that points the binary at both simulators, with `state.dir` and
    /// the runbooks folder.
    pub fn env(
        &self,
        state_dir: &std::path::Path,
        runbooks: &std::path::Path,
    ) -> Vec<(String, String)> {
        vec![
            ("RUNBOOK_WORKER__IDENTITY__SOURCE".into(), "imds".into()),
            (
                "RUNBOOK_WORKER__IDENTITY__IMDS_ENDPOINT".into(),
                self.identity.base_url(),
            ),
            (
                "RUNBOOK_WORKER__EXCHANGE__ENDPOINT".into(),
                self.exchange.base_url(),
            ),
            (
                "RUNBOOK_WORKER__EXCHANGE__ORGANIZATION".into(),
                self.exchange.initial_domain().to_string(),
            ),
            (
                "RUNBOOK_WORKER__STATE__DIR".into(),
                state_dir.display().to_string(),
            ),
            (
                "RUNBOOK_WORKER__RUNBOOKS__DIR".into(),
                runbooks.display().to_string(),
            ),
            ("RUNBOOK_WORKER__LOG__LEVEL".into(), "warn".into()),
        ]
    }
}
