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
mod components;
mod notify;
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
use crate::coordination::{self, CoordinationKind, Coordinator};
use crate::executor::Executor;
use crate::history::{self, JobHistory};
use crate::http::{self, ApiAuth, HttpError};
use crate::scheduler::{
    DEFAULT_DEBOUNCE, JobEnded, JobRunner, Scheduler, SchedulerHandle, watch_folder,
};
use crate::settings::Settings;

pub use components::{ComponentError, ComponentOptions, Components, SIMULATED_MAILBOXES, Target};

use api::{Api, Lifecycle};
use runner::ExecutorRunner;

/// How long the HTTP server may take to finish requests in flight at the very end.
const HTTP_STOP_WAIT: Duration = Duration::from_secs(5);

/// How the app is built beyond the settings.
#[derive(Clone)]
pub struct AppOptions {
    /// Wall-clock time for schedules and the history (tests: a `ManualClock`).
    pub clock: SharedClock,
    /// Where identity and Exchange point: the settings' endpoints, or the in-process
    /// simulators (`serve --simulate`).
    pub target: Target,
    /// Runs jobs instead of the executor (tests).
    pub runner: Option<Arc<dyn JobRunner>>,
    /// The host name, the default replica id.
    pub host_name: Option<String>,
    /// How long the runbooks folder must be quiet before a change is loaded.
    pub watch_debounce: Duration,
    /// More routes served next to the product's (tests: pages that drive the dashboard
    /// from the same origin).
    pub extra_routes: Option<http::Router>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            target: Target::Settings,
            runner: None,
            host_name: None,
            watch_debounce: DEFAULT_DEBOUNCE,
            extra_routes: None,
        }
    }
}

/// Why the worker cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Component(#[from] ComponentError),
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
    #[error("the {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// The notifier's tasks: the notifier itself and the recorder of its outcomes.
struct Notifications {
    /// Stops the notifier, which then sends what is queued for `notify.drain_timeout`.
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Stops the recorder once the notifier has reported everything.
    recorder_stop: CancellationToken,
    recorder: JoinHandle<()>,
}

impl Notifications {
    /// Runs after the scheduler stopped (every job end is handed over) and before the
    /// history closes (every outcome is recorded).
    async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the notifier task failed");
        }
        self.recorder_stop.cancel();
        let _ = self.recorder.await;
    }
}

/// A built worker, ready to run.
pub struct App {
    components: Components,
    listener: TcpListener,
    http_addr: SocketAddr,
    router: crate::http::Router,
    scheduler: Scheduler,
    handle: SchedulerHandle,
    history: JobHistory,
    history_task: JoinHandle<()>,
    coordinator: Coordinator,
    executor: Option<Arc<Executor>>,
    lifecycle: Arc<Lifecycle>,
    watch_debounce: Duration,
    notifications: Option<Notifications>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("http_addr", &self.http_addr)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Builds the worker from `settings`; see the module documentation. `env` is the
    /// process environment (the identity reads its variables from it).
    pub async fn build(
        settings: Settings,
        env: &HashMap<String, String>,
        options: AppOptions,
    ) -> Result<App, AppError> {
        let components = Components::build(
            settings,
            env,
            ComponentOptions {
                clock: options.clock.clone(),
                target: options.target,
                ..ComponentOptions::default()
            },
        )
        .await?;
        Self::from_components(components, options).await
    }

    /// Builds the worker from parts already chosen (the clock and target of `options` are
    /// those of `components`).
    pub async fn from_components(
        components: Components,
        options: AppOptions,
    ) -> Result<App, AppError> {
        let settings = components.settings();
        let clock = components.clock();
        let metrics = components.metrics();

        let replica_id = components.replica_id(options.host_name.as_deref());
        let (history, history_task) = components.open_history(&replica_id).await?;
        let lifecycle = Arc::new(Lifecycle::default());
        lifecycle.history_open.store(true, Ordering::SeqCst);

        let (runner, executor): (Arc<dyn JobRunner>, Option<Arc<Executor>>) = match options.runner {
            Some(runner) => (runner, None),
            None => {
                let executor = Arc::new(components.executor()?);
                let runner = Arc::new(ExecutorRunner {
                    executor: executor.clone(),
                    history: history.clone(),
                });
                (runner, Some(executor))
            }
        };

        let coordinator = components.coordinator()?;
        if coordinator.kind() == CoordinationKind::AzureBlob {
            // Health starts Unknown; one call tells readiness where it stands. A failure is
            // not fatal: the replica takes no work and keeps probing until the store answers.
            if let Err(e) = coordinator.probe().await {
                tracing::warn!(error = %e, "the coordination storage does not answer yet; this replica takes no work until it does");
            }
        }

        let catalog = components.load_catalog().await?;
        let recorder_stop = CancellationToken::new();
        let (record, recorder) = notify::record_on_job(history.clone(), recorder_stop.clone());
        let stop_notifier = CancellationToken::new();
        let (ended, notifications) = match components.notifier(record, stop_notifier.clone()) {
            Ok(Some((notifier, task))) => (
                Some(Arc::new(notify::NotifyOnEnd(notifier)) as Arc<dyn JobEnded>),
                Some(Notifications {
                    stop: stop_notifier,
                    task,
                    recorder_stop,
                    recorder,
                }),
            ),
            Ok(None) => {
                recorder_stop.cancel();
                let _ = recorder.await;
                (None, None)
            }
            Err(e) => {
                recorder_stop.cancel();
                let _ = recorder.await;
                return Err(e.into());
            }
        };
        let (scheduler, handle) = components.scheduler(
            history.clone(),
            coordinator.clone(),
            runner,
            catalog,
            replica_id,
            ended,
        );

        let listener = TcpListener::bind(settings.http.listen)
            .await
            .map_err(|source| AppError::Listen {
                listen: settings.http.listen.to_string(),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| AppError::Listen {
            listen: settings.http.listen.to_string(),
            source,
        })?;
        let auth = ApiAuth::from_settings(&settings.http, http_addr).map_err(AppError::Http)?;
        let api = Arc::new(Api {
            scheduler: handle.clone(),
            history_health: history.health().clone(),
            history: history.clone(),
            coordinator: coordinator.clone(),
            clock: clock.clone(),
            identity: components.identity_health(),
            lifecycle: lifecycle.clone(),
            runbooks_dir: settings.runbooks.dir.clone(),
        });
        let limits = http::ServerLimits::from_settings(&settings.http);
        let mut router = http::router_with_limits(api, metrics, auth, &limits);
        if let Some(extra) = options.extra_routes {
            router = router.merge(extra);
        }

        Ok(App {
            components,
            listener,
            http_addr,
            router,
            scheduler,
            handle,
            history,
            history_task,
            coordinator,
            executor,
            lifecycle,
            watch_debounce: options.watch_debounce,
            notifications,
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
        self.components.simulator_urls()
    }

    /// Runs until `shutdown` completes, then stops in order (see the module documentation).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let App {
            components,
            listener,
            http_addr,
            router,
            scheduler,
            handle,
            history,
            history_task,
            coordinator,
            executor,
            lifecycle,
            watch_debounce,
            notifications,
        } = self;
        let settings = components.settings();
        let clock = components.clock();

        let http_stop = CancellationToken::new();
        let http_task = tokio::spawn(http::serve(
            listener,
            router,
            http::ServerLimits::from_settings(&settings.http),
            http_stop.clone(),
        ));
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

        if let Some(notifications) = notifications {
            notifications.stop().await;
        }
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
        components.shutdown().await;
        tracing::info!("runbook-worker stopped");
        scheduler_result.map_err(|source| AppError::Task {
            what: "scheduler",
            source,
        })
    }
}
