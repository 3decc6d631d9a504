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

mod support;

use std::process::Child;
use std::time::{Duration, Instant};

use runbook_worker::history::{self, HistoryReader, JobStatus};
use support::{Tenant, every_second_worker, spawn_worker, stop_worker, worker_binary};

const RUNBOOKS: usize = 200;
const DEFAULT_SECONDS: u64 = 600;
/// The baseline is taken once start-up and the first jobs' allocations have settled.
const BASELINE_AT: Duration = Duration::from_secs(60);
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
const MAX_GROWTH: f64 = 0.10;

fn main() {
    support::main_with("soak", run());
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
    for job in support::all_jobs(reader).await? {
        match job.status {
            JobStatus::Completed => completed += 1,
            status if status.is_final() => other += 1,
            _ => open += 1,
        }
    }
    Ok((completed, other, open))
}

async fn run() -> Result<(), String> {
    let total = Duration::from_secs(seconds()?);
    let tenant = Tenant::start().await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = every_second_worker(dir.path(), RUNBOOKS, &tenant)?;
    let client = reqwest::Client::new();
    // Job start and end lines at info would be 400 lines a second; warnings still show.
    let mut child = spawn_worker(dir.path(), &[("RUST_LOG", "warn")]);
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
    stop_worker(&mut child)?;

    let reader = HistoryReader::open(&history::database_path(&dir.path().join("state")))
        .map_err(|e| e.to_string())?;
    let (completed, other, open) = tally(&reader).await?;
    let expected = RUNBOOKS as u64 * total.as_secs();
    println!(
        "soak: {completed} jobs completed, {other} ended otherwise, {open} left unfinished (about {expected} occurrences were due)"
    );
    tenant.stop().await;

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
