//! The one place that builds the worker's parts from checked settings: token providers,
//! Exchange clients, the executor, the job history and the coordination store. `serve`
//! ([`super::App`]), `run`, `invoke`, `doctor`, `token`, the tests and the benchmarks all
//! build through [`Components`], so a change to how a part is made is made once.
//!
//! Where the Azure-facing parts point is decided before anything is built, by [`Target`]:
//! the real endpoints the settings name, or the in-process simulators (`--simulate`), whose
//! addresses are known only once they listen. The loaded [`Settings`] are never edited:
//! the simulated target only changes the identity and Exchange sections the parts are
//! built from.
//!
//! Parts are built on first use, so a command pays only for what it touches (`token` never
//! builds an Exchange client; `validate` builds nothing at all).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::clock::{SharedClock, SystemClock};
use crate::coordination::{self, CoordinationError, Coordinator};
use crate::exchange::{ExchangeClient, ExchangeError, ExchangeSettings, TenantLimiter};
use crate::executor::{Assets, ExchangeClients, Executor, ExecutorDeps, ExecutorError};
use crate::graph::GraphSettings;
use crate::history::blob::{self as blob_history, BlobHistoryOptions, BlobHistoryStore};
use crate::history::{self, HistoryError, HistoryStore, JobHistory};
use crate::identity::{
    IdentityEnvironment, IdentityError, IdentitySettings, ProviderCredential, ProviderOptions,
    SourceKind, TokenProvider, TokenProviders,
};
use crate::keyvault::KeyVaultClient;
use crate::notify::{
    GraphMailSender, MailSender, Notifier, NotifierDeps, NotifyError, NotifyEvents, TargetKind,
    graph_client,
};
use crate::runbook::load_folder;
use crate::scheduler::{
    JobEnded, JobRunner, LiveCatalog, Scheduler, SchedulerHandle, SchedulerOptions, SchedulerParts,
};
use crate::settings::Settings;
use crate::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use crate::simulator::graph::{GraphSimulator, GraphSimulatorConfig};
use crate::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID, SimulatedIdentity,
};
use crate::telemetry::metrics::Metrics;

use super::runner::{IdentityHealth, ReportingTokens};

/// How long cancelled jobs get to record their end after the grace period.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// Mailboxes the simulated tenant of `--simulate` is seeded with.
pub const SIMULATED_MAILBOXES: usize = 300;

/// Where the identity and Exchange parts point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// The endpoints `[identity]` and `[exchange]` name (Azure, in production).
    #[default]
    Settings,
    /// A simulated managed-identity endpoint and Exchange Online tenant started in this
    /// process on 127.0.0.1 (`--simulate`): no Azure subscription needed.
    Simulated,
}

/// How the parts are built beyond the settings.
#[derive(Clone)]
pub struct ComponentOptions {
    /// Wall-clock time for tokens, schedules and the history (tests: a `ManualClock`).
    pub clock: SharedClock,
    /// Where identity and Exchange point.
    pub target: Target,
    /// Token retry timings (tests scale them down); its clock is replaced by `clock`.
    pub provider: ProviderOptions,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            target: Target::Settings,
            provider: ProviderOptions::default(),
        }
    }
}

/// Why a part cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("cannot set up the managed identity: {0}")]
    Identity(#[source] IdentityError),
    #[error("cannot set up the Exchange Online client: {0}")]
    Exchange(#[source] ExchangeError),
    #[error("cannot set up the job executor: {0}")]
    Executor(#[source] ExecutorError),
    #[error("cannot read a secret setting from Key Vault: {0}")]
    Secret(#[source] crate::executor::assets::AssetError),
    #[error("cannot open the job history")]
    History(#[source] HistoryError),
    #[error("cannot set up replica coordination")]
    Coordination(#[source] CoordinationError),
    #[error("cannot set up notifications")]
    Notify(#[source] NotifyError),
    #[error("loading the runbooks folder failed")]
    Loading(#[source] tokio::task::JoinError),
    #[error("cannot start the simulated {what}")]
    Simulator {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The simulators of [`Target::Simulated`].
struct Simulators {
    identity: IdentitySimulator,
    exchange: ExchangeSimulator,
    graph: GraphSimulator,
}

/// The worker's parts, built on first use from the settings and the target. See the module
/// documentation.
pub struct Components {
    settings: Settings,
    /// `[identity]` and `[exchange]` as the parts are built from them: the settings' own, or
    /// pointing at the simulators.
    identity: IdentitySettings,
    exchange: ExchangeSettings,
    /// `[graph]` as Graph clients are built from it.
    graph: GraphSettings,
    env: IdentityEnvironment,
    clock: SharedClock,
    provider_options: ProviderOptions,
    metrics: Arc<Metrics>,
    identity_health: Arc<IdentityHealth>,
    simulators: Option<Simulators>,
    providers: OnceLock<Arc<TokenProviders>>,
    exchange_clients: OnceLock<Arc<ExchangeClients>>,
    assets: OnceLock<Arc<Assets>>,
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Components")
            .field("simulated", &self.simulators.is_some())
            .finish_non_exhaustive()
    }
}

impl Components {
    /// The parts for `settings`; `env` is the process environment (the identity reads its
    /// variables from it). Starts the simulators when the target is simulated; builds
    /// nothing else yet.
    pub async fn build(
        settings: Settings,
        env: &HashMap<String, String>,
        options: ComponentOptions,
    ) -> Result<Self, ComponentError> {
        let mut graph = settings.graph.clone();
        let (identity, exchange, simulators) = match options.target {
            Target::Settings => (settings.identity.clone(), settings.exchange.clone(), None),
            Target::Simulated => {
                let simulators = start_simulators().await?;
                let identity = IdentitySettings {
                    source: SourceKind::Imds,
                    imds_endpoint: simulators.identity.endpoint(),
                    ..IdentitySettings::default()
                };
                let exchange = ExchangeSettings {
                    endpoint: Some(simulators.exchange.endpoint()),
                    organization: None,
                    ..settings.exchange.clone()
                };
                graph.endpoint = Some(simulators.graph.endpoint());
                (identity, exchange, Some(simulators))
            }
        };
        let provider_options = ProviderOptions {
            clock: options.clock.clone(),
            ..options.provider
        };
        let mut components = Self {
            settings,
            identity,
            exchange,
            graph,
            env: IdentityEnvironment::from_map(env),
            clock: options.clock,
            provider_options,
            metrics: Arc::new(Metrics::new()),
            identity_health: Arc::new(IdentityHealth::default()),
            simulators,
            providers: OnceLock::new(),
            exchange_clients: OnceLock::new(),
            assets: OnceLock::new(),
        };
        components.resolve_secret_settings().await?;
        Ok(components)
    }

    /// Secret settings written as Key Vault references (`keyvault:<name>`) get their
    /// values, before any part that uses them is built.
    async fn resolve_secret_settings(&mut self) -> Result<(), ComponentError> {
        let assets = self.assets();
        let settings = &mut self.settings;
        let mut slots: Vec<(String, &mut Option<secrecy::SecretString>)> = vec![
            ("http.api_token".to_string(), &mut settings.http.api_token),
            (
                "coordination.sas_url".to_string(),
                &mut settings.coordination.sas_url,
            ),
        ];
        for (i, target) in settings.notify.targets.iter_mut().enumerate() {
            slots.push((format!("notify.targets[{i}].url"), &mut target.url));
            slots.push((format!("notify.targets[{i}].secret"), &mut target.secret));
        }
        for (key, value) in slots {
            assets
                .resolve_setting(&key, value)
                .await
                .map_err(ComponentError::Secret)?;
        }
        Ok(())
    }

    /// The settings as loaded (never edited, whatever the target).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `[identity]` as the token providers are built from it.
    pub fn identity_settings(&self) -> &IdentitySettings {
        &self.identity
    }

    /// `[exchange]` as the Exchange clients are built from it.
    pub fn exchange_settings(&self) -> &ExchangeSettings {
        &self.exchange
    }

    /// `[graph]` as Graph clients are built from it.
    pub fn graph_settings(&self) -> &GraphSettings {
        &self.graph
    }

    /// The identity variables of the process environment.
    pub fn identity_environment(&self) -> &IdentityEnvironment {
        &self.env
    }

    /// The wall clock every part uses.
    pub fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    /// The metrics every part reports to and `/metrics` renders.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(crate) fn identity_health(&self) -> Arc<IdentityHealth> {
        self.identity_health.clone()
    }

    /// The endpoints of the simulated identity and Exchange tenant, when simulated.
    pub fn simulator_urls(&self) -> Option<(String, String)> {
        self.simulators
            .as_ref()
            .map(|s| (s.identity.base_url(), s.exchange.base_url()))
    }

    /// The token providers: the worker's own identity and each runbook's, on first use.
    pub fn token_providers(&self) -> Result<Arc<TokenProviders>, IdentityError> {
        if let Some(providers) = self.providers.get() {
            return Ok(providers.clone());
        }
        let providers = Arc::new(TokenProviders::new(
            &self.identity,
            &self.env,
            self.provider_options.clone(),
        )?);
        // A concurrent first caller may have won; both built the same thing.
        Ok(self.providers.get_or_init(|| providers).clone())
    }

    /// The worker's own identity.
    pub fn token_provider(&self) -> Result<Arc<TokenProvider>, IdentityError> {
        Ok(self.token_providers()?.default_provider())
    }

    /// The Exchange clients of runbooks, one per (tenant, identity), sharing one limiter per
    /// tenant; the worker's own identity reports to readiness.
    pub fn exchange_clients(&self) -> Result<Arc<ExchangeClients>, ComponentError> {
        if let Some(clients) = self.exchange_clients.get() {
            return Ok(clients.clone());
        }
        let tokens = Arc::new(ReportingTokens {
            providers: self.token_providers().map_err(ComponentError::Identity)?,
            health: self.identity_health.clone(),
        });
        let clients = Arc::new(
            ExchangeClients::new(self.exchange.clone(), tokens)
                .map_err(ComponentError::Executor)?
                .with_graph(self.graph.clone()),
        );
        Ok(self.exchange_clients.get_or_init(|| clients).clone())
    }

    /// A client for the worker's own identity and tenant, built from `[exchange]` as
    /// `tune` adjusts it (`doctor` shortens the timeout), with a limiter of its own.
    pub fn exchange_client(
        &self,
        tune: impl FnOnce(&mut ExchangeSettings),
    ) -> Result<ExchangeClient, ComponentError> {
        let mut settings = self.exchange.clone();
        tune(&mut settings);
        let limiter = Arc::new(TenantLimiter::from_settings(&settings));
        let tokens = self.token_provider().map_err(ComponentError::Identity)?;
        ExchangeClient::new(&settings, tokens, limiter).map_err(ComponentError::Exchange)
    }

    /// `[vars]` and `[secrets]`, with a Key Vault client on the worker's identity when
    /// `[secrets]` names any (built once; its cache is shared by every job).
    pub fn assets(&self) -> Arc<Assets> {
        self.assets
            .get_or_init(|| {
                let vault = if self.settings.secrets.0.is_empty() {
                    Err("no [secrets]".to_string())
                } else {
                    self.token_provider()
                        .map_err(|e| e.to_string())
                        .and_then(|tokens| {
                            KeyVaultClient::new(&self.settings.keyvault, tokens)
                                .map_err(|e| e.to_string())
                        })
                        .map(Arc::new)
                };
                Arc::new(Assets::new(
                    &self.settings.vars,
                    &self.settings.secrets,
                    vault,
                    self.settings.keyvault.refresh_interval.into(),
                    self.clock.clone(),
                ))
            })
            .clone()
    }

    /// The executor that runs jobs for `run`, the scheduler and the API.
    pub fn executor(&self) -> Result<Executor, ComponentError> {
        Ok(Executor::new(ExecutorDeps {
            clients: self.exchange_clients()?,
            policy: self.settings.policy.clone(),
            state_dir: self.settings.state.dir.clone(),
            clock: self.clock.clone(),
            metrics: Some(self.metrics.clone()),
            assets: self.assets(),
        }))
    }

    /// Opens the job history, recording `replica` as the replica of the jobs it creates:
    /// with `coordination.kind = "azure-blob"` the blob history every replica shares (in
    /// `history.container`, else the coordination container), otherwise SQLite under
    /// `state.dir` (marking what a dead process left running Interrupted). The returned task
    /// ends after [`JobHistory::close`].
    pub async fn open_history(
        &self,
        replica: &str,
    ) -> Result<(JobHistory, JoinHandle<()>), ComponentError> {
        self.open_history_with(replica, true).await
    }

    /// [`Self::open_history`]; `spool` false for a process that is not `serve` (`run`): the
    /// spool under `state.dir` belongs to the serving process (its open marks what it finds
    /// running Interrupted), so such a process writes to the shared history directly and
    /// reports a failure to its caller.
    pub async fn open_history_with(
        &self,
        replica: &str,
        spool: bool,
    ) -> Result<(JobHistory, JoinHandle<()>), ComponentError> {
        if self.settings.coordination.kind == coordination::CoordinationKind::AzureBlob {
            let store = self.blob_history(replica)?;
            if !spool {
                return Ok((store.into(), tokio::spawn(async {})));
            }
            // This replica's jobs go through a spool under state.dir, so that none is lost
            // while the storage does not answer.
            let (spool, spool_task) = HistoryStore::open_as(
                &history::spool_path(&self.settings.state.dir),
                &self.settings.history,
                self.clock.clone(),
                Some(replica.to_string()),
            )
            .await
            .map_err(ComponentError::History)?;
            let (shared, task) = history::SharedHistory::with_spool(
                store,
                spool,
                spool_task,
                replica,
                self.settings.history.spool_max_jobs,
                self.clock.clone(),
            )
            .await
            .map_err(ComponentError::History)?;
            return Ok((JobHistory::Shared(shared), task));
        }
        let (store, task) = HistoryStore::open_as(
            &history::database_path(&self.settings.state.dir),
            &self.settings.history,
            self.clock.clone(),
            Some(replica.to_string()),
        )
        .await
        .map_err(ComponentError::History)?;
        Ok((store.into(), task))
    }

    /// The worker's identity for the storage account, when `coordination.container_url`
    /// (not a SAS) names the container.
    fn storage_credential(
        &self,
    ) -> Result<Option<Arc<dyn azure_core::credentials::TokenCredential>>, ComponentError> {
        if self.settings.coordination.container_url.is_none() {
            return Ok(None);
        }
        let provider = self.token_provider().map_err(ComponentError::Identity)?;
        Ok(Some(ProviderCredential::new(provider) as _))
    }

    /// The shared history's blob store, in the coordination storage account.
    pub fn blob_history(&self, replica: &str) -> Result<BlobHistoryStore, ComponentError> {
        let coordination = &self.settings.coordination;
        let credential = self.storage_credential()?;
        let mut target = coordination
            .storage_target(credential)
            .map_err(ComponentError::Coordination)?;
        if let Some(container) = &self.settings.history.container {
            target = blob_history::in_container(target, container);
        }
        let options = BlobHistoryOptions::new(
            &self.settings.history,
            coordination.request_timeout.get(),
            coordination.max_retries,
            replica,
        );
        BlobHistoryStore::new(target, options, self.clock.clone())
            .map_err(|e| ComponentError::History(e.into()))
    }

    /// The coordination store `[coordination]` names; Azure storage authenticates with the
    /// worker's own identity unless a SAS URL is set.
    pub fn coordinator(&self) -> Result<Coordinator, ComponentError> {
        let credential = self.storage_credential()?;
        Coordinator::from_settings(&self.settings.coordination, credential, self.clock.clone())
            .map_err(ComponentError::Coordination)
    }

    /// The runbooks folder as the scheduler starts with it: valid runbooks plus the errors
    /// of the files that are not (read off the async runtime: a folder may be slow).
    pub async fn load_catalog(&self) -> Result<LiveCatalog, ComponentError> {
        let dir = self.settings.runbooks.dir.clone();
        let policy = self.settings.policy.clone();
        let known = self.settings.notify.target_names();
        let load_dir = dir.clone();
        let (runbooks, errors) = tokio::task::spawn_blocking(move || {
            let (mut runbooks, mut errors) = load_folder(&load_dir, &policy);
            runbooks.check_notify_targets(&known, &mut errors);
            (runbooks, errors)
        })
        .await
        .map_err(ComponentError::Loading)?;
        Ok(LiveCatalog::first(&dir, runbooks, errors))
    }

    /// The name this replica records as the owner of its occurrences:
    /// `coordination.replica_id`, else one made of the host name and process id.
    pub fn replica_id(&self, host_name: Option<&str>) -> String {
        self.settings
            .coordination
            .replica_id
            .clone()
            .unwrap_or_else(|| coordination::default_replica_id(host_name, std::process::id()))
    }

    /// The notifier of `[notify]`, reporting outcomes to `events`, or `None` when no
    /// target is defined. Email targets send through Microsoft Graph `sendMail` with the
    /// worker's own identity. The task runs until `cancel`, then drains; await it.
    pub fn notifier(
        &self,
        events: Arc<dyn NotifyEvents>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Option<(Notifier, JoinHandle<()>)>, ComponentError> {
        let settings = &self.settings.notify;
        if settings.targets.is_empty() {
            return Ok(None);
        }
        let wants_mail = settings
            .targets
            .iter()
            .any(|t| TargetKind::parse(&t.kind) == Some(TargetKind::Email));
        let mail = if wants_mail {
            let base = settings
                .mail_endpoint(self.settings.graph.endpoint.as_deref())
                .map_err(ComponentError::Notify)?;
            let tokens = self.token_provider().map_err(ComponentError::Identity)?;
            let sender: Arc<dyn MailSender> = Arc::new(GraphMailSender::new(
                tokens,
                base,
                graph_client(settings).map_err(ComponentError::Notify)?,
                self.clock.clone(),
            ));
            Some(sender)
        } else {
            None
        };
        let started = Notifier::start(
            settings,
            NotifierDeps {
                mail,
                public_url: self.settings.http.public_url.clone(),
                clock: self.clock.clone(),
                metrics: self.metrics.clone(),
                events,
            },
            cancel,
        )
        .map_err(ComponentError::Notify)?;
        Ok(Some(started))
    }

    /// The scheduler over `catalog`, recording in `history`, claiming through `coordinator`
    /// and running jobs with `runner` (the executor, or a test's), telling `ended` (the
    /// notifier) about each job end. Timings come from `[worker]` and `[coordination]`.
    pub fn scheduler(
        &self,
        history: JobHistory,
        coordinator: Coordinator,
        runner: Arc<dyn JobRunner>,
        catalog: LiveCatalog,
        replica_id: String,
        ended: Option<Arc<dyn JobEnded>>,
    ) -> (Scheduler, SchedulerHandle) {
        Scheduler::new(
            SchedulerParts {
                clock: self.clock.clone(),
                history,
                coordinator,
                runner,
                metrics: self.metrics.clone(),
                ended,
            },
            SchedulerOptions {
                replica_id,
                shutdown_grace: self.settings.worker.shutdown_grace.get(),
                cancel_wait: CANCEL_WAIT,
                // Orphans are looked for at the pace a claimer that stalled is given up.
                sweep_interval: self
                    .settings
                    .coordination
                    .orphan_grace()
                    .max(Duration::from_secs(1)),
                runbooks_dir: self.settings.runbooks.dir.clone(),
                policy: self.settings.policy.clone(),
                notify_targets: self.settings.notify.target_names(),
            },
            catalog,
        )
    }

    /// Stops the background work of whatever was built (token refreshes, simulators) and
    /// waits for it.
    pub async fn shutdown(self) {
        if let Some(clients) = self.exchange_clients.get() {
            clients.shutdown().await;
        }
        if let Some(providers) = self.providers.get() {
            providers.shutdown().await;
        }
        if let Some(simulators) = self.simulators {
            simulators.identity.stop().await;
            simulators.exchange.shutdown().await;
            simulators.graph.shutdown().await;
        }
    }
}

/// Starts the simulated identity endpoint and Exchange tenant on 127.0.0.1.
/// What the simulated machine's identity holds: Exchange, and the Graph app roles the
/// example runbooks need.
pub const SIMULATED_ROLES: &[&str] = &[
    crate::identity::claims::EXCHANGE_MANAGE_AS_APP,
    "User.Read.All",
    "GroupMember.Read.All",
    "Organization.Read.All",
    "LicenseAssignment.ReadWrite.All",
    "Mail.Send",
];

async fn start_simulators() -> Result<Simulators, ComponentError> {
    let me = SimulatedIdentity::new("system").with_roles(SIMULATED_ROLES);
    let identity =
        IdentitySimulator::start(IdentitySimulatorConfig::default().with_system_assigned(Some(me)))
            .await
            .map_err(|source| ComponentError::Simulator {
                what: "identity endpoint",
                source,
            })?;
    let exchange = ExchangeSimulator::start(SimulatorConfig {
        tenant_id: SIMULATED_TENANT_ID.to_string(),
        mailboxes: SIMULATED_MAILBOXES,
        // A long-running demo must not keep every request in memory.
        record_requests: false,
        ..SimulatorConfig::default()
    })
    .await
    .map_err(|source| ComponentError::Simulator {
        what: "Exchange tenant",
        source,
    })?;
    // The same organisation as the Exchange tenant: the same users, ids and UPNs.
    let graph = GraphSimulator::start(GraphSimulatorConfig {
        tenant_id: SIMULATED_TENANT_ID.to_string(),
        users: SIMULATED_MAILBOXES,
        record_requests: false,
        ..GraphSimulatorConfig::default()
    })
    .await
    .map_err(|source| ComponentError::Simulator {
        what: "Microsoft Graph",
        source,
    })?;
    tracing::info!(
        identity = %identity.base_url(),
        exchange = %exchange.base_url(),
        graph = %graph.base_url(),
        mailboxes = SIMULATED_MAILBOXES,
        "simulating the managed identity and an Exchange Online tenant on 127.0.0.1"
    );
    Ok(Simulators {
        identity,
        exchange,
        graph,
    })
}
