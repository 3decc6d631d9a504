//! What the worker-process benchmarks share: the simulated tenant on 127.0.0.1, a worker
//! directory whose runbooks all fire every second, and the worker binary to measure.

// Each benchmark binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use runbook_worker::history::{HistoryReader, JobFilter, JobSummary};
use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID,
};

/// The simulated identity endpoint and Exchange tenant.
pub struct Tenant {
    pub identity: IdentitySimulator,
    pub exchange: ExchangeSimulator,
}

impl Tenant {
    pub async fn start() -> Result<Tenant, String> {
        Self::start_with(IdentitySimulatorConfig::default()).await
    }

    /// As [`Tenant::start`], with the identity endpoint configured by `identity`.
    pub async fn start_with(identity: IdentitySimulatorConfig) -> Result<Tenant, String> {
        let identity = IdentitySimulator::start(identity)
            .await
            .map_err(|e| e.to_string())?;
        let exchange = ExchangeSimulator::start(SimulatorConfig {
            tenant_id: SIMULATED_TENANT_ID.to_string(),
            mailboxes: 25,
            record_requests: false,
            ..SimulatorConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(Tenant { identity, exchange })
    }

    pub async fn stop(self) {
        self.exchange.shutdown().await;
        self.identity.stop().await;
    }
}

/// A port nobody listens on right now (bound, then released) for the worker to take.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Writes `count` runbooks that fire every second and a `worker.toml` pointing at `tenant`
/// into `dir`; returns the HTTP port the worker will listen on.
pub fn every_second_worker(dir: &Path, count: usize, tenant: &Tenant) -> Result<u16, String> {
    let runbooks = dir.join("runbooks");
    std::fs::create_dir_all(&runbooks).map_err(|e| e.to_string())?;
    for i in 0..count {
        std::fs::write(
            runbooks.join(format!("tick-{i:04}.toml")),
            "schedule = \"* * * * * *\"\n[[steps]]\nname = \"one\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = 1 }\n",
        )
        .map_err(|e| e.to_string())?;
    }
    let port = free_port();
    std::fs::write(
        dir.join("worker.toml"),
        format!(
            "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [identity]\nsource = \"imds\"\nimds_endpoint = \"{}\"\n[exchange]\nendpoint = \"{}\"\n",
            tenant.identity.base_url(),
            tenant.exchange.base_url()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(port)
}

/// The worker binary to measure: `RUNBOOK_WORKER_BIN` (e.g. the release build, to measure
/// what ships) or the bench-profile build cargo made for this benchmark.
pub fn worker_binary() -> String {
    std::env::var("RUNBOOK_WORKER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_runbook-worker").to_string())
}

/// `serve` in `dir` with its JSON log in `dir/worker.log`, with `env` only.
pub fn spawn_worker(dir: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(worker_binary())
        .current_dir(dir)
        .args(["--config", "worker.toml", "--log-format", "json", "serve"])
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("worker.log")).expect("log file"),
        ))
        .spawn()
        .expect("spawn runbook-worker serve")
}

/// SIGTERM, then the exit status must be success.
pub fn stop_worker(child: &mut Child) -> Result<(), String> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the worker exited with {status}"))
    }
}

/// Every job in the history, newest first, read page by page.
pub async fn all_jobs(reader: &HistoryReader) -> Result<Vec<JobSummary>, String> {
    let mut jobs = Vec::new();
    let mut before = None;
    loop {
        let page = reader
            .list_jobs(&JobFilter {
                limit: JobFilter::MAX_LIMIT,
                before: before.clone(),
                ..JobFilter::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        jobs.extend(page);
    }
    Ok(jobs)
}

/// Runs `run` on a two-thread runtime (the machine the figures are quoted for) and exits 1
/// with its error, naming the `benchmark`.
pub fn main_with(benchmark: &str, run: impl std::future::Future<Output = Result<(), String>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run) {
        eprintln!("{benchmark} benchmark failed: {e}");
        std::process::exit(1);
    }
}
