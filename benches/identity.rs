//! Token provider benchmark against the simulated IMDS endpoint on 127.0.0.1 (never a real
//! endpoint). Reports endpoint requests for 500 concurrent first callers and for 10,000
//! sequential calls (both must be 1), and the median cost of a cached `token()` call
//! (target < 1 µs). A plain binary: `cargo bench --bench identity`. Exits non-zero when a
//! request count is not 1, so a regression in single flight or caching cannot go unnoticed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use runbook_worker::identity::{
    IdentityEnvironment, IdentitySettings, ProviderOptions, TokenProvider, TokenSource,
};
use runbook_worker::simulator::identity::{IdentitySimulator, IdentitySimulatorConfig};
use tokio::sync::Barrier;

const EXCHANGE: &str = "https://outlook.office365.com";
const STORAGE: &str = "https://storage.azure.com";
const CONCURRENT_CALLERS: usize = 500;
const SEQUENTIAL_CALLS: usize = 10_000;
/// Cached gets are timed in batches (one `Instant` pair per batch keeps the clock's own
/// cost out of the figure); the median is over batch averages.
const BATCHES: usize = 2_000;
const BATCH_SIZE: usize = 100;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(run());
    if !ok {
        std::process::exit(1);
    }
}

fn provider(sim: &IdentitySimulator) -> Arc<TokenProvider> {
    let settings = IdentitySettings {
        imds_endpoint: sim.endpoint(),
        ..IdentitySettings::default()
    };
    TokenProvider::with_options(
        &settings,
        &IdentityEnvironment::default(),
        None,
        ProviderOptions::default(),
    )
    .expect("provider")
}

async fn run() -> bool {
    let sim = IdentitySimulator::start(IdentitySimulatorConfig::default())
        .await
        .expect("simulator on 127.0.0.1");

    // 500 tasks released together by a barrier onto an empty cache.
    let concurrent = provider(&sim);
    let barrier = Arc::new(Barrier::new(CONCURRENT_CALLERS));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT_CALLERS {
        let (provider, barrier) = (concurrent.clone(), barrier.clone());
        callers.spawn(async move {
            barrier.wait().await;
            provider.token(EXCHANGE).await
        });
    }
    while let Some(result) = callers.join_next().await {
        result.expect("caller task").expect("token");
    }
    let concurrent_requests = sim.token_requests();

    // 10,000 calls one after another on another provider, from an empty cache.
    let sequential = provider(&sim);
    let before = sim.token_requests();
    for _ in 0..SEQUENTIAL_CALLS {
        sequential.token(STORAGE).await.expect("token");
    }
    let sequential_requests = sim.token_requests() - before;

    // Cached gets: warm up, then time batches.
    for _ in 0..10_000 {
        sequential.token(STORAGE).await.expect("token");
    }
    let mut per_call_ns: Vec<f64> = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let started = Instant::now();
        for _ in 0..BATCH_SIZE {
            let token = sequential.token(STORAGE).await.expect("token");
            std::hint::black_box(token);
        }
        per_call_ns.push(started.elapsed().as_nanos() as f64 / BATCH_SIZE as f64);
    }
    per_call_ns.sort_by(f64::total_cmp);
    let percentile = |p: f64| per_call_ns[((per_call_ns.len() - 1) as f64 * p) as usize];
    let median = percentile(0.5);

    concurrent.shutdown().await;
    sequential.shutdown().await;
    sim.stop().await;

    let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
    println!("identity benchmark (simulated IMDS on 127.0.0.1, production retry policy)");
    println!(
        "  {CONCURRENT_CALLERS} concurrent first callers: {concurrent_requests} endpoint request(s) (must be 1: {})",
        verdict(concurrent_requests == 1)
    );
    println!(
        "  {SEQUENTIAL_CALLS} sequential calls:         {sequential_requests} endpoint request(s) (must be 1: {})",
        verdict(sequential_requests == 1)
    );
    println!(
        "  cached get:                    median {median:.0} ns, p10 {:.0} ns, p90 {:.0} ns over {BATCHES} batches of {BATCH_SIZE} (target < 1 µs: {})",
        percentile(0.1),
        percentile(0.9),
        verdict(Duration::from_nanos(median as u64) < Duration::from_micros(1))
    );
    concurrent_requests == 1 && sequential_requests == 1
}
