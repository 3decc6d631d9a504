//! Graph client benchmark against the simulated directory. Not a timed test: it prints
//! figures. Run with `cargo bench --bench graph`.
//!
//! Streams `GET /v1.0/users?$top=999` over 100,000 simulated users through `GraphClient`,
//! page by page, and reports records per second and the peak RSS (VmHWM) of this
//! process. The simulator runs **in this process** (it holds the whole directory and
//! renders each page), so the peak covers both; the RSS after seeding, before the first
//! request, is printed beside it so the client's share can be read off. The worker-level
//! memory target is measured once Graph steps run inside runbooks.
//!
//! Talks only to 127.0.0.1.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use runbook_worker::exchange::{Cloud, TenantLimiter};
use runbook_worker::graph::{GraphClient, GraphRequest, GraphSettings};
use runbook_worker::simulator::exchange::SimulatedTokens;
use runbook_worker::simulator::graph::{GRAPH_RESOURCE, GraphSimulator, GraphSimulatorConfig};
use serde_json::json;

const USERS: usize = 100_000;

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

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let config = GraphSimulatorConfig {
            record_requests: false,
            ..GraphSimulatorConfig::default().with_users(USERS)
        };
        let sim = GraphSimulator::start(config).await.expect("simulator");
        let seeded_kib = vm_hwm_kib();
        let tokens = Arc::new(SimulatedTokens::with_claims(json!({
            "aud": GRAPH_RESOURCE,
            "roles": ["User.Read.All"],
            "exp": chrono::Utc::now().timestamp() + 3600,
        })));
        let settings = GraphSettings {
            endpoint: Some(sim.endpoint()),
            ..GraphSettings::default()
        };
        let client = GraphClient::new(&settings, Cloud::Global, tokens, Arc::new(TenantLimiter::new(4)))
            .expect("client");
        let started = Instant::now();
        let mut pages = client.request(
            GraphRequest::get("/v1.0/users")
                .query("$select", "id,userPrincipalName,displayName,mail,accountEnabled,assignedLicenses")
                .query("$top", "999"),
        );
        let (mut records, mut count) = (0u64, 0u64);
        while let Some(page) = pages.next().await {
            records += page.expect("page").records.len() as u64;
            count += 1;
        }
        let elapsed = started.elapsed();
        assert_eq!(records, USERS as u64, "every user streamed");
        println!(
            "graph streaming read: {records} users in {count} pages, {:.2} s, {:.0} records/s",
            elapsed.as_secs_f64(),
            records as f64 / elapsed.as_secs_f64()
        );
        println!(
            "peak RSS (VmHWM, simulator in-process): {:.1} MiB; after seeding the simulator, before the first request: {:.1} MiB",
            vm_hwm_kib() as f64 / 1024.0,
            seeded_kib as f64 / 1024.0
        );
        sim.shutdown().await;
    });
}
