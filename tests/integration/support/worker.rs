//! Helpers for the worker tests: a scripted job runner, the scheduler in-process on a
//! `ManualClock`, the whole app in-process, and the real `serve` binary as a child process
//! (its HTTP port read from its JSON log).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use runbook_worker::app::{ComponentOptions, Components};
use runbook_worker::clock::{Clock as _, ManualClock};
use runbook_worker::history::{JobFilter, JobHistory, JobStatus, JobSummary, Outcome};
use runbook_worker::scheduler::{JobRunner, JobSpec, RunEnd, SchedulerHandle};
use runbook_worker::settings::Settings;

use super::app::{TestApp, TestAppOptions, spawn_app_with};
use super::wait_until;

/// How long a test waits for something the worker does at once.
pub const SOON: Duration = Duration::from_secs(10);

/// An RFC 3339 instant.
pub fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
        .with_timezone(&Utc)
}

/// A runbook file with one read step and the given top-level lines.
pub fn runbook(top: &str) -> String {
    format!(
        "{top}\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = {{ ResultSize = 1 }}\n"
    )
}

/// A job runner whose jobs complete at once, or, for runbooks put on hold, wait until
/// released (Completed) or cancelled (Cancelled). Records every job it was given.
#[derive(Debug)]
pub struct FakeRunner {
    started: Mutex<Vec<JobSpec>>,
    held: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl FakeRunner {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Mutex::new(Vec::new()),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// Jobs of `runbook` wait from now on until [`FakeRunner::release`].
    pub fn hold(&self, runbook: &str) {
        let (gate, _) = watch::channel(false);
        self.held.lock().unwrap().insert(runbook.to_string(), gate);
    }

    /// Lets the waiting (and future) jobs of `runbook` complete.
    pub fn release(&self, runbook: &str) {
        if let Some(gate) = self.held.lock().unwrap().remove(runbook) {
            gate.send_replace(true);
        }
    }

    pub fn started(&self) -> Vec<JobSpec> {
        self.started.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl JobRunner for FakeRunner {
    async fn run(&self, job: JobSpec, cancel: CancellationToken) -> RunEnd {
        let gate = self
            .held
            .lock()
            .unwrap()
            .get(&job.runbook.name)
            .map(|g| g.subscribe());
        self.started.lock().unwrap().push(job);
        if let Some(mut gate) = gate {
            tokio::select! {
                () = cancel.cancelled() => {
                    return RunEnd::new(Outcome::new(JobStatus::Cancelled).with_error("cancelled"));
                }
                _ = gate.wait_for(|open| *open) => {}
            }
        }
        RunEnd::new(Outcome::new(JobStatus::Completed).with_summary("done"))
    }
}

/// The scheduler alone, in-process: a runbooks folder, a history, local coordination, a
/// [`FakeRunner`] and a `ManualClock`.
pub struct Engine {
    pub dir: PathBuf,
    pub clock: ManualClock,
    pub runner: Arc<FakeRunner>,
    pub history: JobHistory,
    pub handle: SchedulerHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    history_task: tokio::task::JoinHandle<()>,
}

impl Engine {
    /// Starts the scheduler over `root/runbooks` with its history in `root/state`, the clock
    /// at `now`.
    pub async fn start(root: &Path, now: DateTime<Utc>) -> Engine {
        Self::start_with(root, now, Duration::from_secs(25)).await
    }

    pub async fn start_with(root: &Path, now: DateTime<Utc>, grace: Duration) -> Engine {
        let dir = root.join("runbooks");
        std::fs::create_dir_all(&dir).unwrap();
        let clock = ManualClock::new(now);
        let mut settings = Settings::default();
        settings.runbooks.dir = dir.clone();
        settings.state.dir = root.join("state");
        settings.worker.shutdown_grace = grace.into();
        // Never the real IMDS address: the fake runner asks for no token.
        settings.identity.imds_endpoint = "http://127.0.0.1:9".parse().unwrap();
        let components = Components::build(
            settings,
            &HashMap::new(),
            ComponentOptions {
                clock: Arc::new(clock.clone()),
                ..ComponentOptions::default()
            },
        )
        .await
        .expect("build the components");
        let (history, history_task) = components
            .open_history("test")
            .await
            .expect("open the history");
        let catalog = components.load_catalog().await.expect("load the runbooks");
        assert!(catalog.invalid_count() == 0, "test runbooks must be valid");
        let runner = FakeRunner::new();
        let (scheduler, handle) = components.scheduler(
            history.clone(),
            components.coordinator().expect("local coordination"),
            runner.clone(),
            catalog,
            "test".to_string(),
            None,
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(scheduler.run(stop.clone()));
        Engine {
            dir,
            clock,
            runner,
            history,
            handle,
            stop,
            task,
            history_task,
        }
    }

    /// An engine over `tick.toml` (the [`runbook`] with `top`, which must schedule it every
    /// minute) whose 10:01 occurrence of 4 May 2026 is running, held by the fake runner.
    pub async fn with_tick_running(root: &Path, top: &str) -> Engine {
        let runbooks = root.join("runbooks");
        std::fs::create_dir_all(&runbooks).unwrap();
        std::fs::write(runbooks.join("tick.toml"), runbook(top)).unwrap();
        let engine = Engine::start(root, utc("2026-05-04T10:00:30Z")).await;
        engine.runner.hold("tick");
        engine.fire("tick", utc("2026-05-04T10:01:00Z")).await;
        engine
            .wait_jobs("tick", "the first job running", |j| {
                j[0].status == JobStatus::Running
            })
            .await;
        engine
    }

    /// Every job of `runbook`, oldest first.
    pub async fn jobs(&self, runbook: &str) -> Vec<JobSummary> {
        let mut jobs = self
            .history
            .list_jobs(&JobFilter {
                runbook: Some(runbook.to_string()),
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .expect("list jobs");
        jobs.reverse();
        jobs
    }

    /// Waits until `runbook` has jobs for which `check` holds.
    pub async fn wait_jobs(
        &self,
        runbook: &str,
        what: &str,
        check: impl Fn(&[JobSummary]) -> bool,
    ) -> Vec<JobSummary> {
        let ok = wait_until(SOON, || async { check(&self.jobs(runbook).await) }).await;
        let jobs = self.jobs(runbook).await;
        assert!(
            ok,
            "timed out waiting for {what}; jobs of {runbook}: {jobs:#?}"
        );
        jobs
    }

    /// The next instant the scheduler fires `runbook` at (as the API shows it).
    pub fn next_run(&self, runbook: &str) -> Option<DateTime<Utc>> {
        let catalog = self.handle.catalog();
        let live = catalog.get(runbook)?;
        runbook_worker::scheduler::plan_next(&live.runbook, self.clock.now()).map(|d| d.instant)
    }

    /// Moves the clock to `at` and waits until `runbook` has a job for that occurrence.
    pub async fn fire(&self, runbook: &str, at: DateTime<Utc>) -> Vec<JobSummary> {
        self.clock.set(at);
        self.wait_jobs(runbook, &format!("a job scheduled for {at}"), |jobs| {
            jobs.iter().any(|j| j.scheduled_for == Some(at))
        })
        .await
    }

    /// As [`Engine::fire`], then waits until the scheduler itself has seen that job end (not
    /// only the history), so the next occurrence never meets it as "still running".
    pub async fn fire_and_finish(&self, runbook: &str, at: DateTime<Utc>) {
        let jobs = self.fire(runbook, at).await;
        let Some(job) = jobs.iter().find(|j| j.scheduled_for == Some(at)) else {
            panic!("no job for {runbook} at {at}");
        };
        let id = job.id.clone();
        let ended = wait_until(SOON, || async {
            self.handle
                .last_job(runbook)
                .is_some_and(|last| last.job_id == id && last.status.is_final())
        })
        .await;
        assert!(
            ended,
            "the scheduler did not see the job of {runbook} at {at} end"
        );
    }

    /// Stops the scheduler (graceful shutdown) and closes the history.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("scheduler task");
        self.history.close().await.expect("close the history");
        drop(self.history);
        self.history_task.await.expect("history writer");
    }
}

/// The whole worker in-process ([`spawn_app_with`]) with a [`FakeRunner`] instead of the
/// executor: `files` in the runbooks folder, `settings` as `RUNBOOK_WORKER__*` variables.
pub async fn spawn_with_fake_runner(
    files: &[(&str, &str)],
    settings: &[(&str, &str)],
) -> (TestApp, Arc<FakeRunner>) {
    let runner = FakeRunner::new();
    let mut options = TestAppOptions::default().with_runner(runner.clone());
    for (name, text) in files {
        options = options.runbook(name, text);
    }
    for (key, value) in settings {
        options = options.setting(key, value);
    }
    (spawn_app_with(options).await, runner)
}

/// A `runbook-worker serve` child process in its own directory.
pub struct WorkerProcess {
    pub dir: PathBuf,
    child: Child,
    log: PathBuf,
    pub addr: Option<String>,
}

impl WorkerProcess {
    /// Starts `serve` in `dir` with `dir/worker.toml` (which the caller wrote); stderr (JSON
    /// logs) goes to `dir/<log_name>`.
    pub fn spawn(dir: &Path, log_name: &str) -> WorkerProcess {
        let log = dir.join(log_name);
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = Command::new(super::binary());
        cmd.current_dir(dir)
            .args(["--config", "worker.toml", "--log-format", "json", "serve"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        let child = cmd.spawn().expect("spawn runbook-worker serve");
        WorkerProcess {
            dir: dir.to_path_buf(),
            child,
            log,
            addr: None,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the "ready" log line and remembers the HTTP address it names.
    pub async fn wait_ready(&mut self) -> String {
        let mut found = None;
        let ok = wait_until(Duration::from_secs(30), || {
            let logs = self.logs();
            found = logs
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == "runbook-worker is ready")
                .and_then(|v| v["listen"].as_str().map(str::to_string));
            let ready = found.is_some();
            async move { ready }
        })
        .await;
        assert!(
            ok,
            "the worker did not become ready; its log:\n{}",
            self.logs()
        );
        let addr = found.expect("address");
        self.addr = Some(addr.clone());
        addr
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.addr.as_deref().expect("wait_ready first")
        )
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("send a signal");
    }

    /// Waits for the process to exit (up to `timeout`) and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        let exited = wait_until(timeout, || {
            status = self.child.try_wait().expect("try_wait");
            let exited = status.is_some();
            async move { exited }
        })
        .await;
        assert!(exited, "the worker did not exit; its log:\n{}", self.logs());
        status.expect("status")
    }

    pub fn kill9(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `[identity]` and `[exchange]` sections pointing at simulators in the test process.
pub fn simulator_settings(identity_url: &str, exchange_url: &str) -> String {
    format!(
        "[identity]\nsource = \"imds\"\nimds_endpoint = \"{identity_url}\"\n\n\
         [exchange]\nendpoint = \"{exchange_url}\"\nretry_base_delay = \"10ms\"\nretry_max_delay = \"100ms\"\n"
    )
}
