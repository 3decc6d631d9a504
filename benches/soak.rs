//! Long-running memory: 200 runbooks firing every second for ten minutes against the
//! simulated identity endpoint and Exchange tenant (in this process), with the worker in its
//! own process. Reports the worker's resident memory at the start of the second minute and
//! at the end; the growth must stay under 10 % (nothing may grow with the number of jobs).
//!
//! A plain binary: `cargo bench --bench soak`. `SOAK_SECONDS` shortens the run for a smoke
//! test (the real run is 600 s or more); `RUNBOOK_WORKER_BIN` picks the worker binary to
//! measure, e.g. a release build made in its own target dir (`cargo bench` overwrites
//! `target/release`):
//!
//! ```text
//! CARGO_TARGET_DIR=target-soak cargo build --release
//! RUNBOOK_WORKER_BIN=target-soak/release/runbook-worker nice -n 10 cargo bench --bench soak
//! ```
//!
//! Exits non-zero when the worker does not run, or when the growth is 10 % or more.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runbook_worker::history::{self, HistoryReader, JobFilter, JobStatus};
use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID,
};

const RUNBOOKS: usize = 200;
const DEFAULT_SECONDS: u64 = 600;
/// The baseline is taken once start-up and the first jobs' allocations have settled.
const BASELINE_AT: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
const MAX_GROWTH: f64 = 0.10;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("soak benchmark failed: {e}");
        std::process::exit(1);
    }
}

fn seconds() -> Result<u64, String> {
    match std::env::var("SOAK_SECONDS") {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("SOAK_SECONDS must be a number of seconds, got {text:?}")),
        Err(_) => Ok(DEFAULT_SECONDS),
    }
}

fn worker_binary() -> String {
    std::env::var("RUNBOOK_WORKER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_runbook-worker").to_string())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

fn spawn(dir: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("worker.log")).map_err(|e| e.to_string())?;
    Command::new(worker_binary())
        .current_dir(dir)
        .args(["--config", "worker.toml", "--log-format", "json", "serve"])
        .env_clear()
        // Job start and end lines at info would be 400 lines a second; warnings still show.
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", worker_binary()))
}

fn stop(child: &mut Child) -> Result<(), String> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the worker exited with {status}"))
    }
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| "no VmRSS in /proc status".to_string())
}

async fn wait_ready(client: &reqwest::Client, port: u16, child: &mut Child) -> Result<(), String> {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(response) = client.get(&url).send().await
            && response.status() == 200
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the worker exited before it was ready ({status})"));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the worker was not ready within 60 s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (completed, other final, not final) jobs in the history.
async fn tally(reader: &HistoryReader) -> Result<(usize, usize, usize), String> {
    let (mut completed, mut other, mut open) = (0, 0, 0);
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
        for job in &page {
            match job.status {
                JobStatus::Completed => completed += 1,
                status if status.is_final() => other += 1,
                _ => open += 1,
            }
        }
    }
    Ok((completed, other, open))
}

async fn run() -> Result<(), String> {
    let total = Duration::from_secs(seconds()?);
    let identity = IdentitySimulator::start(IdentitySimulatorConfig::default())
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
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).map_err(|e| e.to_string())?;
    for i in 0..RUNBOOKS {
        std::fs::write(
            runbooks.join(format!("tick-{i:03}.toml")),
            "schedule = \"* * * * * *\"\n[[steps]]\nname = \"one\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = 1 }\n",
        )
        .map_err(|e| e.to_string())?;
    }
    let port = free_port();
    std::fs::write(
        dir.path().join("worker.toml"),
        format!(
            "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [identity]\nsource = \"imds\"\nimds_endpoint = \"{}\"\n[exchange]\nendpoint = \"{}\"\n",
            identity.base_url(),
            exchange.base_url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let client = reqwest::Client::new();
    let mut child = spawn(dir.path())?;
    wait_ready(&client, port, &mut child).await?;
    let started = Instant::now();
    println!(
        "soak: {RUNBOOKS} runbooks every second for {} s, worker {} (pid {})",
        total.as_secs(),
        worker_binary(),
        child.id()
    );

    let mut baseline = None;
    let mut next_sample = SAMPLE_EVERY.min(BASELINE_AT);
    let mut last = 0;
    while started.elapsed() < total {
        let wait = next_sample.min(total).saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the worker exited during the soak ({status})"));
        }
        last = rss_kib(child.id())?;
        let at = started.elapsed();
        if baseline.is_none() && at >= BASELINE_AT {
            baseline = Some(last);
        }
        println!(
            "soak: {:>4} s  RSS {:.1} MiB",
            at.as_secs(),
            last as f64 / 1024.0
        );
        next_sample += SAMPLE_EVERY;
    }
    stop(&mut child)?;

    let reader = HistoryReader::open(&history::database_path(&dir.path().join("state")))
        .map_err(|e| e.to_string())?;
    let (completed, other, open) = tally(&reader).await?;
    let expected = RUNBOOKS as u64 * total.as_secs();
    println!(
        "soak: {completed} jobs completed, {other} ended otherwise, {open} left unfinished (about {expected} occurrences were due)"
    );
    exchange.shutdown().await;
    identity.stop().await;

    let Some(baseline) = baseline else {
        println!(
            "soak: shorter than {} s: no baseline, no verdict",
            BASELINE_AT.as_secs()
        );
        return Ok(());
    };
    let growth = (last as f64 - baseline as f64) / baseline as f64;
    println!(
        "soak: worker RSS {:.1} MiB at {} s, {:.1} MiB at the end: growth {:+.1} % (target < {:.0} %)",
        baseline as f64 / 1024.0,
        BASELINE_AT.as_secs(),
        last as f64 / 1024.0,
        growth * 100.0,
        MAX_GROWTH * 100.0
    );
    if growth >= MAX_GROWTH {
        return Err(format!(
            "the worker's memory grew by {:.1} %",
            growth * 100.0
        ));
    }
    Ok(())
}
