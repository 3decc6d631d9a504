//! Listing cost of the shared job history against a real Azurite: seeds finished job records
//! (100,000 by default, over 30 days, 10 runbooks, 5 % failed) with 64 uploads in flight, then
//! times the first page (50) of the newest jobs, of one runbook's jobs and of the failed jobs
//! (answered by the index heads), and a page 200 jobs back (listed from the index), p50 and
//! p99 over 50 runs each.
//!
//! ```sh
//! ./scripts/test.sh --exec cargo bench --bench history_blob
//! HISTORY_BLOB_JOBS=20000 ./scripts/test.sh --exec cargo bench --bench history_blob
//! ```
//!
//! A plain binary (`harness = false`) that prints its figures; not a timed test.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use futures::StreamExt as _;
use runbook_worker::clock::SystemClock;
use runbook_worker::coordination::StorageTarget;
use runbook_worker::coordination::sas::{AccountSas, DEV_ACCOUNT_KEY};
use runbook_worker::history::blob::{BlobHistoryOptions, BlobHistoryStore};
use runbook_worker::history::{
    HistorySettings, JobDetail, JobFilter, JobId, JobStatus, JobSummary, Trigger,
};
use secrecy::SecretString;

const DEFAULT_JOBS: usize = 100_000;
const IN_FLIGHT: usize = 64;
const RUNS: usize = 50;
const PAGE: usize = 50;
const RUNBOOKS: usize = 10;

fn main() -> ExitCode {
    let Ok(endpoint) = std::env::var("AZURITE_BLOB_ENDPOINT") else {
        eprintln!(
            "benches/history_blob: AZURITE_BLOB_ENDPOINT is not set; run it with Azurite started: ./scripts/test.sh --exec cargo bench --bench history_blob"
        );
        return ExitCode::FAILURE;
    };
    let jobs = std::env::var("HISTORY_BLOB_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_JOBS);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("benches/history_blob: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(endpoint.trim_end_matches('/'), jobs)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("benches/history_blob: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The `i`-th seeded job: ids and times spread evenly over 30 days, oldest first.
fn job(i: usize, jobs: usize) -> JobDetail {
    let start = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    let span_ms: i64 = 30 * 24 * 3600 * 1000;
    let created = start + chrono::Duration::milliseconds(span_ms * i as i64 / jobs as i64);
    // A ULID from the time and the index: unique, sorted like the creation.
    let value: u128 = ((created.timestamp_millis() as u128) << 80) | (i as u128);
    let alphabet = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let id: String = (0..26)
        .map(|k| char::from(alphabet[((value >> (5 * (25 - k))) & 0x1f) as usize]))
        .collect();
    let id: JobId = id.parse().expect("a valid ULID");
    let status = if i % 20 == 7 {
        JobStatus::Failed
    } else {
        JobStatus::Completed
    };
    let ended = created + chrono::Duration::seconds(40);
    JobDetail {
        job: JobSummary {
            id,
            runbook: format!("runbook-{:02}", i % RUNBOOKS),
            file_hash: "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
                .to_string(),
            trigger: Trigger::Schedule,
            status,
            dry_run: false,
            past_due: false,
            scheduled_for: Some(created),
            created_at: created,
            started_at: Some(created),
            ended_at: Some(ended),
            duration_ms: Some(40_000),
            summary: Some("412 mailboxes checked, 3 archives enabled".to_string()),
            error: (status == JobStatus::Failed)
                .then(|| "Set-Mailbox failed for 3 mailboxes".to_string()),
            replica: None,
        },
        params: serde_json::Map::new(),
        steps: Vec::new(),
        streams: Vec::new(),
        dropped: Default::default(),
        reports: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(endpoint: &str, jobs: usize) -> Result<(), String> {
    let sas = AccountSas::for_emulator(Utc::now() + chrono::Duration::hours(6))
        .query(DEV_ACCOUNT_KEY)
        .map_err(|e| e.to_string())?;
    let container = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let url = SecretString::from(format!("{endpoint}/{container}?{sas}"));
    let mut options = BlobHistoryOptions::new(
        &HistorySettings::default(),
        Duration::from_secs(30),
        3,
        "bench",
    );
    // Old seeded jobs must not be pruned by anything during the run.
    options.retention = Duration::from_secs(3650 * 24 * 3600);
    let store = BlobHistoryStore::new(StorageTarget::SasUrl(url), options, Arc::new(SystemClock))
        .map_err(|e| e.to_string())?;

    println!(
        "history_blob: seeding {jobs} finished jobs ({RUNBOOKS} runbooks, 5% failed, 30 days) with {IN_FLIGHT} imports in flight"
    );
    let seeding = Instant::now();
    let mut done = 0usize;
    // Newest first: each runbook's marker then takes its latest occurrence once, and the
    // other imports of that runbook leave it alone (as live jobs, which are always newer, do).
    let mut imports = futures::stream::iter((0..jobs).rev().map(|i| {
        let store = store.clone();
        async move { store.import_job(&job(i, jobs), "bench").await }
    }))
    .buffer_unordered(IN_FLIGHT);
    while let Some(result) = imports.next().await {
        result.map_err(|e| e.to_string())?;
        done += 1;
        if done.is_multiple_of(10_000) {
            println!(
                "history_blob:   {done} jobs after {:.1} s",
                seeding.elapsed().as_secs_f64()
            );
        }
    }
    let setup = seeding.elapsed();
    println!(
        "history_blob: setup {jobs} jobs in {:.1} s ({:.0} jobs/s; a record and 4 index entries each, heads rewritten)",
        setup.as_secs_f64(),
        jobs as f64 / setup.as_secs_f64()
    );

    let newest = JobFilter {
        limit: PAGE,
        ..JobFilter::default()
    };
    let one_runbook = JobFilter {
        runbook: Some("runbook-03".to_string()),
        limit: PAGE,
        ..JobFilter::default()
    };
    let failed = JobFilter {
        status: Some(JobStatus::Failed),
        limit: PAGE,
        ..JobFilter::default()
    };
    // A page the index head (120 rows) cannot answer: it is listed from the index.
    let beyond_the_head = JobFilter {
        limit: PAGE,
        before: Some(job(jobs.saturating_sub(200), jobs).job.id),
        ..JobFilter::default()
    };
    let newest_time = job(jobs - 1, jobs).job.created_at;
    for (name, filter) in [
        ("newest jobs", newest),
        ("jobs of one runbook", one_runbook),
        ("failed jobs", failed),
        ("jobs 200 back (listed, past the head)", beyond_the_head),
    ] {
        let mut times = Vec::with_capacity(RUNS);
        let mut rows = Vec::new();
        for _ in 0..RUNS {
            let started = Instant::now();
            rows = store.list_jobs(&filter).await.map_err(|e| e.to_string())?;
            times.push(started.elapsed());
        }
        times.sort();
        let within_a_day = rows
            .iter()
            .filter(|j| newest_time - j.created_at <= chrono::Duration::days(1))
            .count();
        if rows.len() != PAGE {
            return Err(format!(
                "{name}: expected a page of {PAGE}, got {}",
                rows.len()
            ));
        }
        println!(
            "history_blob: {name}: p50 {:.1} ms, p99 {:.1} ms over {RUNS} runs ({} rows, {within_a_day} from the last day)",
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.99).as_secs_f64() * 1000.0,
            rows.len()
        );
    }
    Ok(())
}
