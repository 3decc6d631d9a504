//! The worker process: start-to-ready time and idle memory with 100 runbooks loaded, and
//! fire precision with 1,000 runbooks firing every second. Everything runs on 127.0.0.1:
//! the worker binary (built with the bench profile) and, for the precision run, the
//! simulated identity endpoint and Exchange tenant in this process.
//!
//! A plain binary: `cargo bench --bench worker`. It prints the figures with their targets
//! (start to ready < 100 ms, idle RSS < 20 MB, lateness p99 < 50 ms); timings depend on the
//! machine, so it reports rather than fails, except when the worker does not run at all.

mod support;

use std::collections::HashMap;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use runbook_worker::app::{ComponentOptions, Components};
use runbook_worker::history::{self, HistoryReader, JobStatus, Outcome};
use runbook_worker::scheduler::{JobRunner, JobSpec, RunEnd};
use runbook_worker::settings::Settings;
use tokio_util::sync::CancellationToken;

const IDLE_RUNBOOKS: usize = 100;
const STARTS: usize = 7;
const FIRING_RUNBOOKS: usize = 1_000;
const FIRING_SECONDS: i64 = 10;

fn main() {
    support::main_with("worker", run());
}

async fn run() -> Result<(), String> {
    idle().await?;
    precision().await?;
    precision_in_process().await
}

use support::{Tenant, every_second_worker, free_port, spawn_worker, stop_worker as stop};

async fn wait_ready(
    client: &reqwest::Client,
    port: u16,
    child: &mut Child,
) -> Result<Duration, String> {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        if let Ok(response) = client.get(&url).send().await
            && response.status() == 200
        {
            return Ok(started.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the worker exited before it was ready ({status})"));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the worker was not ready within 30 s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `RssAnon`, `RssFile`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A realistic daily runbook: a read, a filtered `for_each` write, a report.
fn daily_runbook(i: usize) -> String {
    format!(
        "description = \"Generated runbook {i}\"\nschedule = \"0 {} {} * * *\"\ntimezone = \"Europe/Berlin\"\noverlap = \"skip\"\n\n\
[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = {{ RecipientTypeDetails = \"UserMailbox\", ResultSize = \"Unlimited\" }}\n\n\
[[steps]]\nname = \"fix\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\nwhen = \"item.CustomAttribute1 != 'done'\"\nconcurrency = 4\n\
parameters = {{ Identity = \"{{{{ item.ExternalDirectoryObjectId }}}}\", CustomAttribute1 = \"done\" }}\n",
        i % 60,
        i % 24
    )
}

async fn idle() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).map_err(|e| e.to_string())?;
    for i in 0..IDLE_RUNBOOKS {
        std::fs::write(
            runbooks.join(format!("daily-{i:03}.toml")),
            daily_runbook(i),
        )
        .map_err(|e| e.to_string())?;
    }
    let client = reqwest::Client::new();
    let mut readies = Vec::new();
    let mut rss = Vec::new();
    let mut anon = Vec::new();
    for _ in 0..STARTS {
        let port = free_port();
        // No job runs while idle, so the identity is never asked; it points at a closed
        // loopback port all the same.
        std::fs::write(
            dir.path().join("worker.toml"),
            format!(
                "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [identity]\nsource = \"imds\"\nimds_endpoint = \"http://127.0.0.1:9\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut child = spawn_worker(dir.path(), &[]);
        readies.push(wait_ready(&client, port, &mut child).await?);
        // Let start-up allocations settle before reading the resident size.
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss.push(status_kib(child.id(), "VmRSS").ok_or("cannot read VmRSS")?);
        anon.push(status_kib(child.id(), "RssAnon").ok_or("cannot read RssAnon")?);
        stop(&mut child)?;
    }
    readies.sort();
    rss.sort();
    anon.sort();
    let median_ready = readies[readies.len() / 2];
    let median_rss = rss[rss.len() / 2] as f64 / 1024.0;
    println!(
        "worker start to ready, {IDLE_RUNBOOKS} runbooks: median {:.1} ms (min {:.1}, max {:.1}, {STARTS} starts); target < 100 ms: {}",
        ms(median_ready),
        ms(readies[0]),
        ms(readies[readies.len() - 1]),
        verdict(median_ready < Duration::from_millis(100))
    );
    // RSS counts the executable's code pages mapped from the page cache (shared with every
    // other process running the same binary, and larger for an unstripped, un-LTO'd bench
    // build); the anonymous part is the worker's own memory.
    println!(
        "worker idle RSS, {IDLE_RUNBOOKS} runbooks: median {median_rss:.1} MiB (min {:.1}, max {:.1}), of which anonymous {:.1} MiB; target < 20 MB: {}",
        rss[0] as f64 / 1024.0,
        rss[rss.len() - 1] as f64 / 1024.0,
        anon[anon.len() / 2] as f64 / 1024.0,
        verdict(median_rss * 1.048_576 < 20.0)
    );
    Ok(())
}

async fn precision() -> Result<(), String> {
    let tenant = Tenant::start().await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = every_second_worker(dir.path(), FIRING_RUNBOOKS, &tenant)?;
    let client = reqwest::Client::new();
    let mut child = spawn_worker(dir.path(), &[]);
    wait_ready(&client, port, &mut child).await?;
    // The first second warms the token cache and connections; measure the ten after it.
    let from = next_second(Utc::now()) + chrono::Duration::seconds(1);
    let until = from + chrono::Duration::seconds(FIRING_SECONDS);
    let wait = (until - Utc::now() + chrono::Duration::milliseconds(1500))
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    stop(&mut child)?;

    let reader = HistoryReader::open(&history::database_path(&dir.path().join("state")))
        .map_err(|e| e.to_string())?;
    let (lateness_ms, skipped, other) = lateness(&reader, from, until).await?;
    report_lateness(
        "fire precision, end to end (worker process, executor, simulated tenant)",
        lateness_ms,
        skipped,
        other,
    )?;
    tenant.stop().await;
    Ok(())
}

/// Lateness of the jobs of `reader` scheduled in `[from, until)`: (milliseconds, skipped, not
/// started).
async fn lateness(
    reader: &HistoryReader,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<(Vec<i64>, usize, usize), String> {
    let mut lateness_ms = Vec::new();
    let (mut skipped, mut other) = (0usize, 0usize);
    for job in support::all_jobs(reader).await? {
        let Some(at) = job.scheduled_for.filter(|t| *t >= from && *t < until) else {
            continue;
        };
        match (job.status, job.started_at) {
            (JobStatus::Skipped, _) => skipped += 1,
            (_, Some(started)) => lateness_ms.push((started - at).num_milliseconds()),
            _ => other += 1,
        }
    }
    Ok((lateness_ms, skipped, other))
}

fn report_lateness(
    what: &str,
    mut lateness_ms: Vec<i64>,
    skipped: usize,
    other: usize,
) -> Result<(), String> {
    lateness_ms.sort_unstable();
    let expected = FIRING_RUNBOOKS * FIRING_SECONDS as usize;
    if lateness_ms.is_empty() {
        return Err("no job started in the measured window".to_string());
    }
    let pick = |q: f64| lateness_ms[((lateness_ms.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what}, {FIRING_RUNBOOKS} runbooks every second for {FIRING_SECONDS} s: {} of {expected} occurrences started ({skipped} skipped by overlap, {other} not started); lateness p50 {} ms, p99 {} ms, max {} ms; target p99 < 50 ms: {}",
        lateness_ms.len(),
        pick(0.5),
        pick(0.99),
        lateness_ms[lateness_ms.len() - 1],
        verdict(pick(0.99) < 50)
    );
    Ok(())
}

/// A job that does nothing: what is left is the scheduler's own cost.
struct NoOp;

#[async_trait::async_trait]
impl JobRunner for NoOp {
    async fn run(&self, _job: JobSpec, _cancel: CancellationToken) -> RunEnd {
        RunEnd::new(Outcome::new(JobStatus::Completed))
    }
}

/// The same firing load on the scheduler alone (in this process, no executor): claims,
/// history records and the loop.
async fn precision_in_process() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).map_err(|e| e.to_string())?;
    for i in 0..FIRING_RUNBOOKS {
        std::fs::write(
            runbooks.join(format!("tick-{i:04}.toml")),
            "schedule = \"* * * * * *\"\n[[steps]]\nname = \"one\"\ncmdlet = \"Get-Mailbox\"\n",
        )
        .map_err(|e| e.to_string())?;
    }
    let mut settings = Settings::default();
    settings.runbooks.dir = runbooks.clone();
    settings.state.dir = dir.path().join("state");
    settings.worker.shutdown_grace = Duration::from_secs(5).into();
    // Jobs are no-ops: nothing asks for a token, but nothing may point off this machine.
    settings.identity.imds_endpoint = "http://127.0.0.1:9".parse()?;
    let components = Components::build(settings, &HashMap::new(), ComponentOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let (history, writer) = components
        .open_history("bench")
        .await
        .map_err(|e| e.to_string())?;
    let catalog = components.load_catalog().await.map_err(|e| e.to_string())?;
    let coordinator = components.coordinator().map_err(|e| e.to_string())?;
    let (scheduler, _handle) = components.scheduler(
        history.clone(),
        coordinator,
        Arc::new(NoOp),
        catalog,
        "bench".to_string(),
        None,
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(stop.clone()));
    let from = next_second(Utc::now()) + chrono::Duration::seconds(1);
    let until = from + chrono::Duration::seconds(FIRING_SECONDS);
    let wait = (until - Utc::now() + chrono::Duration::milliseconds(1500))
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait).await;
    stop.cancel();
    task.await.map_err(|e| e.to_string())?;
    let (lateness_ms, skipped, other) = lateness(
        &HistoryReader::open(&history::database_path(&dir.path().join("state")))
            .map_err(|e| e.to_string())?,
        from,
        until,
    )
    .await?;
    history.close().await.map_err(|e| e.to_string())?;
    drop(history);
    let _ = writer.await;
    report_lateness(
        "fire precision, scheduler alone (no-op jobs, in-process)",
        lateness_ms,
        skipped,
        other,
    )
}

fn next_second(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp() + 1, 0).unwrap_or(t)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}
