//! Exchange client benchmarks against the simulated tenant. Not a timed test: it prints
//! figures. Run with `cargo bench --bench exchange`.
//!
//! 1. Streaming read: `Get-Mailbox -ResultSize Unlimited` over 100,000 simulated
//!    mailboxes, consumed page by page: records per second and the peak RSS (VmHWM) of
//!    this process. The simulator runs in a child process (this binary, re-executed), so
//!    the RSS is the client's alone; the child's own peak is printed beside it.
//! 2. Throughput under the tenant cap: 2,000 `Set-Mailbox` calls from 256 concurrent
//!    callers through one `TenantLimiter` (8 in flight) against a tenant that answers in
//!    20 ms and refuses more than 8 concurrent requests with 429. Ideal: 2000 × 20 ms / 8
//!    = 5 s; reported as elapsed / ideal (target ≤ 1.10) with the 429s seen.
//!
//! Talks only to 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use runbook_worker::exchange::params::parameters;
use runbook_worker::exchange::{ExchangeClient, ExchangeSettings, Parameters, TenantLimiter};
use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatedTokens, SimulatorConfig};

/// Set in the child: `MAILBOXES,LATENCY_MS,CAP`.
const CHILD_ENV: &str = "RUNBOOK_WORKER_BENCH_SIMULATOR";

const READ_MAILBOXES: usize = 100_000;
const WRITE_CALLS: usize = 2_000;
const WRITE_LATENCY: Duration = Duration::from_millis(20);
const TENANT_CAP: usize = 8;
const CALLERS: usize = 256;

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        run_child(&spec);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        streaming_read().await;
        throughput_under_the_cap().await;
    });
}

/// Peak resident set size of this process in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The simulator, in a child process: prints `READY <base> <tenant>`, serves until its
/// stdin closes, then prints `STATS <requests> <throttled> <peak in flight> <VmHWM KiB>`.
fn run_child(spec: &str) {
    let mut parts = spec.split(',').map(|p| p.parse::<u64>().unwrap_or(0));
    let mailboxes = parts.next().unwrap_or(0) as usize;
    let latency = Duration::from_millis(parts.next().unwrap_or(0));
    let cap = parts.next().filter(|c| *c > 0).map(|c| c as usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let config = SimulatorConfig {
            mailboxes,
            latency,
            max_concurrent: cap,
            throttle_retry_after: Duration::from_millis(100),
            record_requests: false,
            ..SimulatorConfig::default()
        };
        let sim = ExchangeSimulator::start(config).await.expect("simulator");
        println!("READY {} {}", sim.base_url(), sim.tenant_id());
        std::io::stdout().flush().ok();
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            std::io::stdin().read_to_end(&mut sink)
        })
        .await;
        let stats = sim.stats();
        println!(
            "STATS {} {} {} {}",
            stats.requests,
            stats.throttled,
            stats.peak_in_flight,
            vm_hwm_kib()
        );
        std::io::stdout().flush().ok();
        sim.shutdown().await;
    });
}

struct ChildSimulator {
    child: Child,
    lines: BufReader<std::process::ChildStdout>,
    base_url: String,
    tenant_id: String,
}

#[derive(Debug, Default)]
struct ChildStats {
    requests: u64,
    throttled: u64,
    peak_in_flight: u64,
    vm_hwm_kib: u64,
}

impl ChildSimulator {
    fn start(mailboxes: usize, latency: Duration, cap: Option<usize>) -> Self {
        let exe = std::env::current_exe().expect("path of this benchmark");
        let mut child = Command::new(exe)
            .env(
                CHILD_ENV,
                format!("{mailboxes},{},{}", latency.as_millis(), cap.unwrap_or(0)),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the simulator process");
        let mut lines = BufReader::new(child.stdout.take().expect("child stdout"));
        let mut line = String::new();
        lines.read_line(&mut line).expect("simulator READY line");
        let mut words = line.split_whitespace().skip(1);
        let base_url = words.next().expect("base url").to_string();
        let tenant_id = words.next().expect("tenant id").to_string();
        Self {
            child,
            lines,
            base_url,
            tenant_id,
        }
    }

    fn stop(mut self) -> ChildStats {
        drop(self.child.stdin.take());
        let mut line = String::new();
        let _ = self.lines.read_line(&mut line);
        let _ = self.child.wait();
        let numbers: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        ChildStats {
            requests: numbers.first().copied().unwrap_or(0),
            throttled: numbers.get(1).copied().unwrap_or(0),
            peak_in_flight: numbers.get(2).copied().unwrap_or(0),
            vm_hwm_kib: numbers.get(3).copied().unwrap_or(0),
        }
    }

    fn client(&self, limiter: Arc<TenantLimiter>) -> ExchangeClient {
        let settings = ExchangeSettings {
            endpoint: Some(
                self.base_url
                    .parse()
                    .expect("the simulator printed a base URL"),
            ),
            ..ExchangeSettings::default()
        };
        let tokens = Arc::new(SimulatedTokens::for_tenant(
            &self.tenant_id,
            &settings.cloud.resource(),
            chrono::Utc::now(),
        ));
        ExchangeClient::new(&settings, tokens, limiter).expect("client")
    }
}

async fn streaming_read() {
    println!("== Get-Mailbox -ResultSize Unlimited over {READ_MAILBOXES} mailboxes, streamed ==");
    let sim = ChildSimulator::start(READ_MAILBOXES, Duration::ZERO, None);
    let client = sim.client(Arc::new(TenantLimiter::new(8)));
    let before = vm_hwm_kib();
    let started = Instant::now();
    let mut pages = client.invoke(
        "Get-Mailbox",
        parameters([("ResultSize", "Unlimited".into())]),
    );
    let mut records = 0u64;
    let mut page_count = 0u64;
    while let Some(page) = pages.next().await {
        let page = page.expect("page");
        records += page.records.len() as u64;
        page_count += 1;
    }
    let elapsed = started.elapsed();
    let after = vm_hwm_kib();
    let stats = sim.stop();
    println!("records:              {records} in {page_count} pages");
    println!("elapsed:              {:.2} s", elapsed.as_secs_f64());
    println!(
        "records per second:   {:.0}",
        records as f64 / elapsed.as_secs_f64()
    );
    println!(
        "client peak RSS:      {:.1} MiB (VmHWM; {:.1} MiB before the read; simulator in a child process)",
        after as f64 / 1024.0,
        before as f64 / 1024.0
    );
    println!(
        "simulator peak RSS:   {:.1} MiB (child process, holding the organisation; not the client's)",
        stats.vm_hwm_kib as f64 / 1024.0
    );
    println!("target:               client peak RSS < 64 MiB");
    println!();
}

fn set_mailbox(upn: &str, i: usize) -> Parameters {
    parameters([
        ("Identity", upn.into()),
        ("CustomAttribute1", format!("bench-{i}").into()),
    ])
}

async fn throughput_under_the_cap() {
    println!(
        "== {WRITE_CALLS} Set-Mailbox calls, {} ms per call, tenant cap {TENANT_CAP}, {CALLERS} callers ==",
        WRITE_LATENCY.as_millis()
    );
    let sim = ChildSimulator::start(WRITE_CALLS, WRITE_LATENCY, Some(TENANT_CAP));
    let limiter = Arc::new(TenantLimiter::new(TENANT_CAP as u32));
    let client = sim.client(limiter.clone());
    let upns: Vec<String> = client
        .invoke_all(
            "Get-Mailbox",
            parameters([("ResultSize", (WRITE_CALLS as i64).into())]),
        )
        .await
        .expect("list the mailboxes")
        .records
        .iter()
        .filter_map(|r| r.get("UserPrincipalName")?.as_str().map(str::to_string))
        .collect();
    assert_eq!(upns.len(), WRITE_CALLS);

    // What one call costs on this machine with nothing else in flight: the service's
    // 20 ms plus loopback HTTP and timer granularity. The limiter cannot beat
    // calls × this / 8, so the ratio against it shows the limiter's own overhead.
    const PROBES: usize = 40;
    let probe_started = Instant::now();
    for (i, upn) in upns.iter().take(PROBES).enumerate() {
        client
            .invoke_all("Set-Mailbox", set_mailbox(upn, i))
            .await
            .expect("probe call");
    }
    let round_trip = probe_started.elapsed().as_secs_f64() / PROBES as f64;

    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(upns.iter().enumerate())
        .map(|(i, upn)| {
            let client = client.clone();
            async move { client.invoke_all("Set-Mailbox", set_mailbox(upn, i)).await }
        })
        .buffer_unordered(CALLERS)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failures = results.iter().filter(|r| r.is_err()).count();
    let stats = sim.stop();
    let ideal = WRITE_LATENCY.as_secs_f64() * WRITE_CALLS as f64 / TENANT_CAP as f64;
    println!("elapsed:              {:.2} s", elapsed.as_secs_f64());
    println!("ideal:                {ideal:.2} s");
    println!(
        "elapsed / ideal:      {:.3} (target <= 1.10)",
        elapsed.as_secs_f64() / ideal
    );
    let achievable = round_trip * WRITE_CALLS as f64 / TENANT_CAP as f64;
    println!(
        "one call alone:       {:.2} ms (mean of {PROBES} sequential calls)",
        round_trip * 1000.0
    );
    println!(
        "elapsed / achievable: {:.3} (achievable = {WRITE_CALLS} x one call / {TENANT_CAP} = {achievable:.2} s)",
        elapsed.as_secs_f64() / achievable
    );
    println!(
        "429s seen:            {} (client limiter), {} (tenant)",
        limiter.throttles(),
        stats.throttled
    );
    println!(
        "peak in flight:       {} (tenant cap {TENANT_CAP})",
        stats.peak_in_flight
    );
    println!(
        "requests:             {} (2 for the listing, {PROBES} probes)",
        stats.requests
    );
    println!("failed calls:         {failures}");
}
