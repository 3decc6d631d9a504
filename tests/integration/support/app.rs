//! `spawn_app()`: the whole worker in-process, as `serve` builds it, against the simulated
//! identity endpoint and Exchange tenant on 127.0.0.1, with HTTP on port 0, a temporary
//! runbooks folder and state folder. The settings go through the real loader (from
//! `RUNBOOK_WORKER__*` variables, as the binary reads them), and the app is built by the
//! real composition root, so a test exercises exactly what production runs; only the
//! endpoints differ. Tests of the process itself (signals, kill -9) use `WorkerProcess`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use runbook_worker::app::{App, AppError, AppOptions, ComponentOptions, Components};
use runbook_worker::clock::SharedClock;
use runbook_worker::identity::ProviderOptions;
use runbook_worker::scheduler::{JobRunner, SchedulerHandle};
use runbook_worker::settings;
use runbook_worker::simulator::exchange::{RecordedRequest, SimulatorConfig};
use runbook_worker::simulator::identity::IdentitySimulatorConfig;

use super::executor::{Simulators, simulators_with};
use super::wait_until;

/// The API token every `TestApp` is given (changes need it; reads on loopback do not).
pub const API_TOKEN: &str = "test-api-token-0123456789abcdef";

/// What a test may choose before the app is built.
pub struct TestAppOptions {
    /// Runbook files (name, text) in the runbooks folder at start.
    pub runbooks: Vec<(String, String)>,
    /// The simulated tenant.
    pub tenant: SimulatorConfig,
    /// More `RUNBOOK_WORKER__SECTION__KEY` settings, as an operator would set them.
    pub settings: Vec<(String, String)>,
    /// Wall-clock time (a `ManualClock` for schedules); the system clock by default.
    pub clock: Option<SharedClock>,
    /// Runs jobs instead of the executor (scheduler tests that need no tenant).
    pub runner: Option<Arc<dyn JobRunner>>,
    /// A settings file (TOML) for what variables cannot say well (`[[notify.targets]]`).
    pub settings_file: Option<String>,
    /// The simulated identity endpoint (e.g. the app roles of the worker's identity).
    pub identity: IdentitySimulatorConfig,
    /// Test pages served next to the worker's routes, from the same origin.
    pub extra_routes: Option<runbook_worker::http::Router>,
}

impl Default for TestAppOptions {
    fn default() -> Self {
        Self {
            runbooks: Vec::new(),
            tenant: SimulatorConfig {
                mailboxes: 20,
                ..SimulatorConfig::default()
            },
            settings: Vec::new(),
            clock: None,
            runner: None,
            settings_file: None,
            identity: IdentitySimulatorConfig::default(),
            extra_routes: None,
        }
    }
}

impl TestAppOptions {
    pub fn runbook(mut self, name: &str, text: &str) -> Self {
        self.runbooks.push((name.to_string(), text.to_string()));
        self
    }

    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    pub fn with_runner(mut self, runner: Arc<dyn JobRunner>) -> Self {
        self.runner = Some(runner);
        self
    }
}

/// A built app running in a task of the test, stopped as SIGTERM would stop it.
pub struct RunningApp {
    pub addr: SocketAddr,
    pub scheduler: SchedulerHandle,
    stop: CancellationToken,
    task: JoinHandle<Result<(), AppError>>,
}

impl RunningApp {
    pub fn start(app: App) -> Self {
        let addr = app.http_addr();
        let scheduler = app.scheduler();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(app.run_until_stopped(async move { stopped.cancelled().await }));
        Self {
            addr,
            scheduler,
            stop,
            task,
        }
    }

    /// Stops the app and checks that it stopped cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("app task")
            .expect("the app stops cleanly");
    }
}

/// A running worker and what a test needs to talk to it and to look behind it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub simulators: Simulators,
    pub scheduler: SchedulerHandle,
    root: tempfile::TempDir,
    running: RunningApp,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestAppOptions::default()).await
}

pub async fn spawn_app_with(options: TestAppOptions) -> TestApp {
    let simulators = simulators_with(options.tenant, options.identity).await;
    let root = tempfile::tempdir().unwrap();
    let runbooks = root.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    for (name, text) in &options.runbooks {
        std::fs::write(runbooks.join(name), text).unwrap();
    }

    let mut env: HashMap<String, String> = simulators
        .env(&root.path().join("state"), &runbooks)
        .into_iter()
        .collect();
    env.insert(
        "RUNBOOK_WORKER__HTTP__LISTEN".into(),
        "127.0.0.1:0".to_string(),
    );
    env.insert(
        "RUNBOOK_WORKER__HTTP__API_TOKEN".into(),
        API_TOKEN.to_string(),
    );
    env.extend(options.settings);
    let file = options.settings_file.map(|text| {
        let path = root.path().join("settings.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let settings = settings::load(file.as_deref(), root.path(), &env).expect("test settings load");

    let mut component_options = ComponentOptions {
        provider: ProviderOptions::default(),
        ..ComponentOptions::default()
    };
    if let Some(clock) = &options.clock {
        component_options.clock = clock.clone();
    }
    let components = Components::build(settings, &env, component_options)
        .await
        .expect("build the components");
    let app = App::from_components(
        components,
        AppOptions {
            runner: options.runner,
            extra_routes: options.extra_routes,
            watch_debounce: Duration::from_millis(100),
            ..AppOptions::default()
        },
    )
    .await
    .expect("build the app");
    let running = RunningApp::start(app);
    TestApp {
        addr: running.addr,
        http: reqwest::Client::new(),
        simulators,
        scheduler: running.scheduler.clone(),
        root,
        running,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The temporary folder holding `runbooks/` and `state/`.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn runbooks_dir(&self) -> PathBuf {
        self.root.path().join("runbooks")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// GET as an anonymous reader on loopback.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {status}: {e}: {text}"))
    }

    /// POST a JSON body with the API token.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// Starts a job of `runbook` through the API and returns its id.
    pub async fn run_runbook(&self, runbook: &str, body: Value) -> String {
        let response = self
            .post_json(&format!("/api/runbooks/{runbook}/run"), &body)
            .await;
        let status = response.status();
        let answer: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 202, "run {runbook}: {answer}");
        answer["job_id"].as_str().expect("job_id").to_string()
    }

    /// The job's API entry once it has ended (any final status).
    pub async fn wait_for_job_end(&self, id: &str) -> Value {
        let path = format!("/api/jobs/{id}");
        let ended = wait_until(Duration::from_secs(30), || async {
            let job = self.get_json(&path).await;
            let status = job["status"].as_str().unwrap_or_default().to_string();
            !matches!(status.as_str(), "" | "Queued" | "Running")
        })
        .await;
        let job = self.get_json(&path).await;
        assert!(ended, "job {id} did not end: {job}");
        job
    }

    /// Every request the simulated tenant received.
    pub fn exchange_requests(&self) -> Vec<RecordedRequest> {
        self.simulators.exchange.requests()
    }

    /// Stops the app as SIGTERM would and checks that it stopped cleanly.
    pub async fn stop(self) {
        self.running.stop().await;
        self.simulators.exchange.shutdown().await;
        self.simulators.identity.stop().await;
    }
}
