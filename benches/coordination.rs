//! Coordination cost against a real Azurite: the per-occurrence overhead of exactly-once
//! (claim: create the record, acquire the lease, mark it Running; complete: write the final
//! record, release the lease, move the schedule status) and the takeover time after a holder
//! crashes without releasing its lease.
//!
//! Needs the Azurite that `scripts/test.sh` starts:
//!
//! ```sh
//! ./scripts/test.sh --exec cargo bench --bench coordination
//! ```
//!
//! A plain binary (`harness = false`) that prints its figures; not a timed test.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use runbook_worker::clock::SystemClock;
use runbook_worker::coordination::sas::{AccountSas, DEV_ACCOUNT_KEY};
use runbook_worker::coordination::{
    AzureBlobCoordinator, AzureBlobOptions, Claim, Coordinator, FinalState, StorageTarget,
};
use secrecy::SecretString;

const OCCURRENCES: usize = 200;
const WARM_UP: usize = 20;
const TAKEOVER_TRIALS: usize = 3;
/// How often the surviving replica tries to claim while the crashed one's lease runs out.
const TAKEOVER_POLL: Duration = Duration::from_millis(250);

fn main() -> ExitCode {
    let Ok(endpoint) = std::env::var("AZURITE_BLOB_ENDPOINT") else {
        eprintln!(
            "benches/coordination: AZURITE_BLOB_ENDPOINT is not set; run it with Azurite started: ./scripts/test.sh --exec cargo bench --bench coordination"
        );
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("benches/coordination: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(endpoint.trim_end_matches('/'))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("benches/coordination: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The production timings (lease 15 s, renewals every 5 s, 4 s per call).
fn production_options() -> AzureBlobOptions {
    AzureBlobOptions {
        lease_duration: Duration::from_secs(15),
        renew_interval: Duration::from_secs(5),
        request_timeout: Duration::from_secs(4),
        max_retries: 2,
        orphan_grace: Duration::from_secs(15),
    }
}

fn replica(endpoint: &str, container: &str) -> Result<Coordinator, String> {
    let sas = AccountSas::for_emulator(Utc::now() + chrono::Duration::hours(1))
        .query(DEV_ACCOUNT_KEY)
        .map_err(|e| e.to_string())?;
    let url = SecretString::from(format!("{endpoint}/{container}?{sas}"));
    AzureBlobCoordinator::new(
        StorageTarget::SasUrl(url),
        production_options(),
        Arc::new(SystemClock),
    )
    .map(Coordinator::AzureBlob)
    .map_err(|e| e.to_string())
}

fn instant(n: usize) -> DateTime<Utc> {
    let seconds = i64::try_from(n).unwrap_or(i64::MAX);
    Utc.with_ymd_and_hms(2026, 3, 29, 0, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The value below which `q` of the sorted samples fall (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(endpoint: &str) -> Result<(), String> {
    let container = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let worker = replica(endpoint, &container)?;
    worker.probe().await.map_err(|e| e.to_string())?;

    let mut claims = Vec::with_capacity(OCCURRENCES);
    let mut completions = Vec::with_capacity(OCCURRENCES);
    let mut totals = Vec::with_capacity(OCCURRENCES);
    for n in 0..WARM_UP + OCCURRENCES {
        let started = Instant::now();
        let claim = worker
            .claim("bench", instant(n), "bench-replica")
            .await
            .map_err(|e| e.to_string())?;
        let claimed = started.elapsed();
        let Claim::Acquired(guard) = claim else {
            return Err(format!("occurrence {n} was not acquired: {claim:?}"));
        };
        let completing = Instant::now();
        guard
            .complete(FinalState::Completed, Some(format!("job-{n}")))
            .await
            .map_err(|e| e.to_string())?;
        if n >= WARM_UP {
            claims.push(claimed);
            completions.push(completing.elapsed());
            totals.push(started.elapsed());
        }
    }
    for samples in [&mut claims, &mut completions, &mut totals] {
        samples.sort();
    }
    println!(
        "coordination overhead per occurrence, {OCCURRENCES} occurrences in sequence against Azurite on 127.0.0.1 (after {WARM_UP} warm-up):"
    );
    println!(
        "  total (claim + complete)     median {:6.2} ms   p99 {:6.2} ms",
        millis(quantile(&totals, 0.5)),
        millis(quantile(&totals, 0.99))
    );
    println!(
        "  claim (record, lease, Running) median {:6.2} ms   p99 {:6.2} ms",
        millis(quantile(&claims, 0.5)),
        millis(quantile(&claims, 0.99))
    );
    println!(
        "  complete (record, release, status) median {:6.2} ms   p99 {:6.2} ms",
        millis(quantile(&completions, 0.5)),
        millis(quantile(&completions, 0.99))
    );

    // Takeover: each trial on its own runbook, all at once, so the run takes one lease.
    let trials: Vec<_> = (0..TAKEOVER_TRIALS)
        .map(|trial| {
            let endpoint = endpoint.to_string();
            let container = container.clone();
            tokio::spawn(async move { takeover(&endpoint, &container, trial).await })
        })
        .collect();
    let mut takeovers = Vec::new();
    for trial in trials {
        takeovers.push(trial.await.map_err(|e| e.to_string())??);
    }
    takeovers.sort();
    let lease = production_options().lease_duration;
    let shown: Vec<String> = takeovers
        .iter()
        .map(|t| format!("{:.2} s", t.as_secs_f64()))
        .collect();
    println!(
        "takeover after a holder crash (renewals stopped, lease not released; lease {} s, renewals every 5 s, poll every {} ms), {TAKEOVER_TRIALS} trials:",
        lease.as_secs(),
        TAKEOVER_POLL.as_millis()
    );
    println!(
        "  {}  (worst: lease + {:.2} s; target lease + ~1 s)",
        shown.join(", "),
        takeovers
            .last()
            .map(|t| t.as_secs_f64() - lease.as_secs_f64())
            .unwrap_or_default()
    );
    Ok(())
}

/// A holder acquires, crashes right away (the worst case: a full lease left), and a second
/// replica tries to claim a new occurrence every poll until it gets the lock.
async fn takeover(endpoint: &str, container: &str, trial: usize) -> Result<Duration, String> {
    let runbook = format!("takeover-{trial}");
    let holder = replica(endpoint, container)?;
    let survivor = replica(endpoint, container)?;
    let claim = holder
        .claim(&runbook, instant(0), "crashing")
        .await
        .map_err(|e| e.to_string())?;
    let Claim::Acquired(guard) = claim else {
        return Err(format!("the holder did not acquire {runbook}: {claim:?}"));
    };
    // The crash: the renewal task is dropped with the guard and the lease is not released.
    drop(guard);
    let crashed = Instant::now();
    for attempt in 1.. {
        match survivor
            .claim(&runbook, instant(attempt), "survivor")
            .await
            .map_err(|e| e.to_string())?
        {
            Claim::Acquired(guard) => {
                let took = crashed.elapsed();
                guard
                    .complete(FinalState::Completed, None)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(took);
            }
            Claim::Busy | Claim::AlreadyClaimed => tokio::time::sleep(TAKEOVER_POLL).await,
        }
        if crashed.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    Err(format!("no takeover of {runbook} within 120 s"))
}
