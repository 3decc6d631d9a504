//! The scheduler's background work against the coordination store (Azure mode): the
//! periodic sweep for occurrences whose owner died, the probe that tells `/readyz` when the
//! store is back, and the start-up reading of each runbook's schedule status for missed-run
//! catch-ups. These are storage calls, so they run in their own tasks and report to the
//! loop as events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::coordination::Coordinator;
use crate::runbook::Runbook;

use super::handle::{Event, Shared};
use super::plan::missed_occurrences;

/// Runbooks swept at once.
const SWEEP_CONCURRENCY: usize = 4;
/// How often an unreachable store is probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Sweeps every runbook for orphaned occurrences every `interval` (and at once), reporting
/// the ones this replica marked Interrupted; while the store is unreachable it only probes,
/// every second, so readiness comes back as soon as the store does.
pub(crate) async fn run_sweeper(
    coordinator: Coordinator,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    interval: Duration,
    stop: CancellationToken,
) {
    let health = coordinator.health();
    loop {
        let healthy = health.borrow().is_ok();
        let pause = if healthy {
            sweep_all(&coordinator, &shared, &events).await;
            interval
        } else {
            match coordinator.probe().await {
                Ok(()) => {
                    tracing::info!("the coordination storage answers again");
                    Duration::ZERO
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the coordination storage is still unreachable");
                    PROBE_INTERVAL
                }
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

async fn sweep_all(
    coordinator: &Coordinator,
    shared: &Shared,
    events: &mpsc::UnboundedSender<Event>,
) {
    let names: Vec<String> = shared
        .catalog()
        .iter()
        .map(|l| l.runbook.name.clone())
        .collect();
    let mut sweeps = futures::stream::iter(names.into_iter().map(|name| async move {
        let result = coordinator.sweep_interrupted(&name).await;
        (name, result)
    }))
    .buffer_unordered(SWEEP_CONCURRENCY);
    while let Some((name, result)) = sweeps.next().await {
        match result {
            Ok(marked) => {
                for interrupted in marked {
                    let _ = events.send(Event::Interrupted(Box::new(interrupted)));
                }
            }
            Err(e) => {
                tracing::warn!(runbook = %name, error = %e, "cannot sweep for orphaned occurrences");
                // The store is failing: the probe loop takes over.
                if !coordinator.health().borrow().is_ok() {
                    return;
                }
            }
        }
    }
}

/// At start in Azure mode: reads each runbook's schedule status (the last instant any
/// replica fired) and reports the one catch-up occurrence `missed = "run-once"` asks for.
pub(crate) async fn catch_up_from_store(
    coordinator: Coordinator,
    clock: SharedClock,
    runbooks: Vec<Arc<Runbook>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut reads = futures::stream::iter(runbooks.into_iter().map(|runbook| {
        let coordinator = coordinator.clone();
        async move {
            let status = coordinator.schedule_status(&runbook.name).await;
            (runbook, status)
        }
    }))
    .buffer_unordered(SWEEP_CONCURRENCY);
    while let Some((runbook, status)) = reads.next().await {
        let last_fired = match status {
            Ok(status) => status.and_then(|s| s.value.last_fired),
            Err(e) => {
                tracing::warn!(runbook = %runbook.name, error = %e, "cannot read the schedule status; no catch-up run for this runbook");
                continue;
            }
        };
        for (instant, schedule) in missed_occurrences(&runbook, last_fired, clock.now()) {
            tracing::info!(runbook = %runbook.name, %instant, schedule, "an occurrence was missed while no replica ran: one catch-up run");
            let _ = events.send(Event::CatchUp {
                name: runbook.name.clone(),
                instant,
                schedule,
            });
        }
    }
}
