//! A Graph step feeding a cmdlet step, through the worker binary: `run` of a runbook whose
//! first step reads 100,000 simulated users from Microsoft Graph (999 per page) and whose
//! second step plans a `Set-Mailbox` for each (a dry run: every record flows through the
//! pipe, the templates and the plan, and nothing is written). Prints the worker's peak RSS
//! (VmHWM, read from /proc while it runs) and records per second; target peak RSS < 64 MB,
//! as for Exchange streaming.
//!
//! `cargo bench --bench graph_steps` (set `RUNBOOK_WORKER_BIN` to measure another build,
//! such as a release build in its own target dir). The simulators run in this process on
//! 127.0.0.1; nothing else is contacted.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runbook_worker::simulator::graph::{GraphSimulator, GraphSimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulatorConfig, SIMULATED_TENANT_ID, SimulatedIdentity,
};

const USERS: usize = 100_000;

const RUNBOOK: &str = r#"description = "benchmark: Graph users feeding a cmdlet step"
[[steps]]
name = "users"
graph = "GET /v1.0/users"
query = { "$select" = "id,userPrincipalName,accountEnabled", "$top" = 999 }

[[steps]]
name = "hide"
cmdlet = "Set-Mailbox"
for_each = "users"
concurrency = 8
parameters = { Identity = "{{ item.id }}", HiddenFromAddressListsEnabled = "{{ not item.accountEnabled }}" }
"#;

fn main() {
    support::main_with("graph_steps", run());
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn run() -> Result<(), String> {
    let me =
        SimulatedIdentity::new("worker").with_roles(&["Exchange.ManageAsApp", "User.Read.All"]);
    let support::Tenant { identity, exchange } = support::Tenant::start_with(
        IdentitySimulatorConfig::default().with_system_assigned(Some(me)),
    )
    .await?;
    let graph = GraphSimulator::start(GraphSimulatorConfig {
        tenant_id: SIMULATED_TENANT_ID.to_string(),
        users: USERS,
        record_requests: false,
        ..GraphSimulatorConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir.path().join("runbooks")).map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("runbooks/feed.toml"), RUNBOOK).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.path().join("worker.toml"),
        format!(
            "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n\
             [identity]\nsource = \"imds\"\nimds_endpoint = \"{}\"\n[exchange]\nendpoint = \"{}\"\n[graph]\nendpoint = \"{}\"\n",
            identity.base_url(),
            exchange.base_url(),
            graph.base_url()
        ),
    )
    .map_err(|e| e.to_string())?;

    let started = Instant::now();
    let mut child = Command::new(support::worker_binary())
        .current_dir(dir.path())
        .args([
            "--config",
            "worker.toml",
            "run",
            "feed",
            "--dry-run",
            "--output",
            "json",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("run.jsonl")).map_err(|e| e.to_string())?,
        ))
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("run.log")).map_err(|e| e.to_string())?,
        ))
        .spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(dir.path().join("run.jsonl")).unwrap_or_default();
    let outcome: serde_json::Value = output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "outcome")
        .ok_or_else(|| {
            format!(
                "no outcome ({status}); log:\n{}",
                std::fs::read_to_string(dir.path().join("run.log")).unwrap_or_default()
            )
        })?;
    let steps = outcome["steps"].as_array().cloned().unwrap_or_default();
    let read = steps
        .first()
        .and_then(|s| s["records_read"].as_u64())
        .unwrap_or(0);
    let planned = steps
        .get(1)
        .and_then(|s| s["writes_planned"].as_u64())
        .unwrap_or(0);
    if outcome["status"] != "Completed" || read != USERS as u64 || planned != USERS as u64 {
        return Err(format!("unexpected outcome: {outcome}"));
    }
    let mib = peak as f64 / 1024.0;
    println!(
        "graph step → cmdlet step, {USERS} users, 999 per page, dry run (plans {planned} Set-Mailbox)"
    );
    println!(
        "elapsed:              {:.2} s (worker start to exit)",
        elapsed.as_secs_f64()
    );
    println!(
        "records per second:   {:.0}",
        USERS as f64 / elapsed.as_secs_f64()
    );
    println!(
        "worker peak RSS:      {mib:.1} MiB (VmHWM; peak records in memory {})",
        outcome["peak_records_in_memory"]
    );
    println!(
        "target:               peak RSS < 64 MB: {}",
        if mib * 1.048_576 < 64.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    graph.shutdown().await;
    exchange.shutdown().await;
    identity.stop().await;
    Ok(())
}
