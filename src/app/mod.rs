//! The composition root of `serve`: builds every component from the settings, wires them
//! together, runs them, and stops them in order.
//!
//! [`App::build`] opens the history (marking a dead process's leftovers Interrupted), sets
//! up the identity, the executor and the coordination store (probed once so readiness is
//! known), loads the runbooks folder and binds the HTTP listener; [`App::run_until_stopped`]
//! starts the scheduler loop, the folder watcher, the history pruner and the HTTP server,
//! and when the shutdown future completes stops them: no more firing and `/readyz` 503 at
//! once, running jobs finish within `worker.shutdown_grace` (then are cancelled between
//! calls), the history is flushed and closed, HTTP stops last so probes see the shutdown.
//!
//! Owns the root cancellation tokens and every task it starts. Knows no signals or
//! process environment: the binary passes the environment map and the shutdown future in.

mod api;
mod runner;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};
use crate::coordination::{self, CoordinationError, CoordinationKind, Coordinator};
use crate::executor::{ExchangeClients, Executor, ExecutorDeps, ExecutorError};
use crate::history::{self, HistoryError, HistoryStore};
use crate::http::{self, ApiAuth, HttpError};
use crate::identity::{
    IdentityEnvironment, IdentityError, ProviderCredential, ProviderOptions, TokenProviders,
};
use crate::runbook::load_folder;
use crate::scheduler::{
    DEFAULT_DEBOUNCE, JobRunner, LiveCatalog, Scheduler, SchedulerHandle, SchedulerOptions,
    SchedulerParts, watch_folder,
};
use crate::settings::Settings;
use crate::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use crate::simulator::identity::{IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID};
use crate::telemetry::metrics::Metrics;

use api::{Api, Lifecycle};
use runner::{ExecutorRunner, IdentityHealth, ReportingTokens};

/// Mailboxes the tenant of `serve --simulate` is seeded with.
pub const SIMULATED_MAILBOXES: usize = 300;
/// How long the HTTP server may take to finish requests in flight at the very end.
const HTTP_STOP_WAIT: Duration = Duration::from_secs(5);
/// How long cancelled jobs get to record their end after the grace period.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// How the app is built beyond the settings.
#[derive(Clone)]
pub struct AppOptions {
    /// Wall-clock time for schedules and the history (tests: a `ManualClock`).
    pub clock: SharedClock,
    /// Start the in-process simulated identity endpoint and Exchange tenant and point the
    /// identity and Exchange settings at them (`serve --simulate`).
    pub simulate: bool,
    /// Runs jobs instead of the executor (tests).
    pub runner: Option<Arc<dyn JobRunner>>,
    /// The host name, the default replica id.
    pub host_name: Option<String>,
    /// How long the runbooks folder must be quiet before a change is loaded.
    pub watch_debounce: Duration,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            simulate: false,
            runner: None,
            host_name: None,
            watch_debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the job history")]
    History(#[source] HistoryError),
    #[error("cannot set up the managed identity")]
    Identity(#[source] IdentityError),
    #[error("cannot set up the job executor")]
    Executor(#[source] ExecutorError),
    #[error("cannot set up replica coordination")]
    Coordination(#[source] CoordinationError),
    #[error("cannot set up the HTTP API")]
    Http(#[source] HttpError),
    #[error(
        "cannot listen on {listen} (check http.listen or RUNBOOK_WORKER__HTTP__LISTEN; is another process using the port?)"
    )]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the simulated {what}")]
    Simulator {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The simulators of `serve --simulate`.
struct Simulators {
    identity: IdentitySimulator,
    exchange: ExchangeSimulator,
}

/// A built worker, ready to run.
pub struct App {
    settings: Settings,
    clock: SharedClock,
    listener: TcpListener,
    http_addr: SocketAddr,
    router: crate::http::Router,
    scheduler: Scheduler,
    handle: SchedulerHandle,
    history: HistoryStore,
    history_task: JoinHandle<()>,
    coordinator: Coordinator,
    providers: Arc<TokenProviders>,
    executor: Option<Arc<Executor>>,
    lifecycle: Arc<Lifecycle>,
    simulators: Option<Simulators>,
    watch_debounce: Duration,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the worker; see the module documentation. `env` is the process environment
    /// (the identity reads its variables from it).
    pub async fn build(
        mut settings: Settings,
        env: &HashMap<String, String>,
        options: AppOptions,
    ) -> Result<App, AppError> {
        let clock = options.clock.clone();
        let simulators = if options.simulate {
            Some(start_simulators(&mut settings).await?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());

        let identity_env = IdentityEnvironment::from_map(env);
        let providers = Arc::new(
            TokenProviders::new(
                &settings.identity,
                &identity_env,
                ProviderOptions {
                    clock: clock.clone(),
                    ..ProviderOptions::default()
                },
            )
            .map_err(AppError::Identity)?,
        );
        let identity_health = Arc::new(IdentityHealth::default());

        let (history, history_task) = HistoryStore::open(
            &history::database_path(&settings.state.dir),
            &settings.history,
            clock.clone(),
        )
        .await
        .map_err(AppError::History)?;
        let lifecycle = Arc::new(Lifecycle::default());
        lifecycle.history_open.store(true, Ordering::SeqCst);

        let (runner, executor): (Arc<dyn JobRunner>, Option<Arc<Executor>>) = match options.runner {
            Some(runner) => (runner, None),
            None => {
                let tokens = Arc::new(ReportingTokens {
                    providers: providers.clone(),
                    health: identity_health.clone(),
                });
                let clients = ExchangeClients::new(settings.exchange.clone(), tokens)
                    .map_err(AppError::Executor)?;
                let executor = Arc::new(Executor::new(ExecutorDeps {
                    clients: Arc::new(clients),
                    policy: settings.policy.clone(),
                    state_dir: settings.state.dir.clone(),
                    clock: clock.clone(),
                    metrics: Some(metrics.clone()),
                }));
                let runner = Arc::new(ExecutorRunner {
                    executor: executor.clone(),
                    history: history.clone(),
                });
                (runner, Some(executor))
            }
        };

        let credential = settings
            .coordination
            .container_url
            .is_some()
            .then(|| ProviderCredential::new(providers.default_provider()) as _);
        let coordinator =
            Coordinator::from_settings(&settings.coordination, credential, clock.clone())
                .map_err(AppError::Coordination)?;
        if coordinator.kind() == CoordinationKind::AzureBlob {
            // Health starts Unknown; one call tells readiness where it stands. A failure is
            // not fatal: the replica takes no work and keeps probing until the store answers.
            if let Err(e) = coordinator.probe().await {
                tracing::warn!(error = %e, "the coordination storage does not answer yet; this replica takes no work until it does");
            }
        }

        let dir = settings.runbooks.dir.clone();
        let policy = settings.policy.clone();
        let load_dir = dir.clone();
        let (loaded, errors) = tokio::task::spawn_blocking(move || load_folder(&load_dir, &policy))
            .await
            .map_err(|source| AppError::Task {
                what: "runbook loading",
                source,
            })?;
        let catalog = LiveCatalog::first(&dir, loaded, errors);

        let replica_id = settings.coordination.replica_id.clone().unwrap_or_else(|| {
            coordination::default_replica_id(options.host_name.as_deref(), std::process::id())
        });
        let (scheduler, handle) = Scheduler::new(
            SchedulerParts {
                clock: clock.clone(),
                history: history.clone(),
                coordinator: coordinator.clone(),
                runner,
                metrics: metrics.clone(),
            },
            SchedulerOptions {
                replica_id,
                shutdown_grace: settings.worker.shutdown_grace.get(),
                cancel_wait: CANCEL_WAIT,
                // Orphans are looked for at the pace a claimer that stalled is given up.
                sweep_interval: settings
                    .coordination
                    .orphan_grace()
                    .max(Duration::from_secs(1)),
                runbooks_dir: dir,
                policy: settings.policy.clone(),
            },
            catalog,
        );

        let listener = TcpListener::bind(&settings.http.listen)
            .await
            .map_err(|source| AppError::Listen {
                listen: settings.http.listen.clone(),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| AppError::Listen {
            listen: settings.http.listen.clone(),
            source,
        })?;
        let auth = ApiAuth::from_settings(&settings.http, http_addr).map_err(AppError::Http)?;
        let api = Arc::new(Api {
            scheduler: handle.clone(),
            history: history.reader().clone(),
            history_health: history.health().clone(),
            coordinator: coordinator.clone(),
            clock: clock.clone(),
            identity: identity_health,
            lifecycle: lifecycle.clone(),
        });
        let router = http::router(api, metrics, auth);

        Ok(App {
            settings,
            clock,
            listener,
            http_addr,
            router,
            scheduler,
            handle,
            history,
            history_task,
            coordinator,
            providers,
            executor,
            lifecycle,
            simulators,
            watch_debounce: options.watch_debounce,
        })
    }

    /// Where the HTTP API listens (the port the kernel chose for `:0`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Talks to the scheduler: reload (SIGHUP), run and cancel requests, the catalog.
    pub fn scheduler(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// The endpoints of `--simulate`'s identity endpoint and Exchange tenant.
    pub fn simulator_urls(&self) -> Option<(String, String)> {
        self.simulators
            .as_ref()
            .map(|s| (s.identity.base_url(), s.exchange.base_url()))
    }

    /// Runs until `shutdown` completes, then stops in order (see the module documentation).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let App {
            settings,
            clock,
            listener,
            http_addr,
            router,
            scheduler,
            handle,
            history,
            history_task,
            coordinator,
            providers,
            executor,
            lifecycle,
            simulators,
            watch_debounce,
        } = self;

        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(listener, router, http_stop.clone()));
        let background = CancellationToken::new();
        let pruner = history::spawn_pruner(
            history.clone(),
            clock.clone(),
            settings.history.prune_interval.get(),
            background.clone(),
        );
        // Occurrence records follow the history's retention, at the history's pruning pace.
        let coordination_pruner = coordination::spawn_pruner(
            coordinator.clone(),
            clock.clone(),
            settings.history.retention.get(),
            settings
                .history
                .prune_interval
                .get()
                .max(history::MIN_PRUNE_INTERVAL),
            background.clone(),
        );
        let watcher = match watch_folder(&settings.runbooks.dir, handle.clone(), watch_debounce) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "runbook files are not watched; send SIGHUP to reload");
                None
            }
        };
        let stop = CancellationToken::new();
        let mut scheduler_task = tokio::spawn(scheduler.run(stop.clone()));
        tracing::info!(
            listen = %http_addr,
            runbooks = handle.catalog().len(),
            invalid = handle.catalog().invalid_count(),
            "runbook-worker is ready"
        );

        let ended_early = tokio::select! {
            () = shutdown => None,
            ended = &mut scheduler_task => Some(ended),
        };
        lifecycle.shutting_down.store(true, Ordering::SeqCst);
        drop(watcher);
        stop.cancel();
        let scheduler_result = match ended_early {
            Some(ended) => {
                tracing::error!("the scheduler stopped on its own; shutting down");
                ended
            }
            None => scheduler_task.await,
        };

        background.cancel();
        let _ = pruner.await;
        let _ = coordination_pruner.await;
        if let Err(e) = history.close().await {
            tracing::error!(error = %e, "cannot flush the job history");
        }
        lifecycle.history_open.store(false, Ordering::SeqCst);
        drop(history);
        let _ = history_task.await;

        http_stop.cancel();
        match tokio::time::timeout(HTTP_STOP_WAIT, http_task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
            Err(_) => tracing::warn!("the HTTP server did not stop in time; leaving it"),
        }
        if let Some(executor) = executor {
            executor.shutdown().await;
        }
        providers.shutdown().await;
        if let Some(simulators) = simulators {
            simulators.identity.stop().await;
            simulators.exchange.shutdown().await;
        }
        tracing::info!("runbook-worker stopped");
        scheduler_result.map_err(|source| AppError::Task {
            what: "scheduler",
            source,
        })
    }
}

/// Starts the simulated identity endpoint and Exchange tenant and points the settings at
/// them: IMDS for the identity, the tenant's URL for Exchange.
async fn start_simulators(settings: &mut Settings) -> Result<Simulators, AppError> {
    let identity = IdentitySimulator::start(IdentitySimulatorConfig::default())
        .await
        .map_err(|source| AppError::Simulator {
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
    .map_err(|source| AppError::Simulator {
        what: "Exchange tenant",
        source,
    })?;
    settings.identity = crate::identity::IdentitySettings {
        source: crate::identity::SourceKind::Imds,
        imds_endpoint: identity.base_url(),
        ..crate::identity::IdentitySettings::default()
    };
    settings.exchange.endpoint = Some(exchange.base_url());
    settings.exchange.organization = None;
    tracing::info!(
        identity = %identity.base_url(),
        exchange = %exchange.base_url(),
        mailboxes = SIMULATED_MAILBOXES,
        "simulating the managed identity and an Exchange Online tenant on 127.0.0.1"
    );
    Ok(Simulators { identity, exchange })
}
