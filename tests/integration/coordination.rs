//! Coordination: each occurrence runs exactly once. The semantic tests run against both
//! implementations (in-process, and Azure Blob Storage in the Azurite that
//! `scripts/test.sh` starts); the fault tests need real leases and run against Azurite only.
//! Every Azurite test uses its own container, so they all run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::http::RequestContent;
use azure_storage_blob::models::{BlobClientUploadOptions, LeaseState};
use runbook_worker::coordination::record::{OccurrenceRecord, occurrence_blob};
use runbook_worker::coordination::{
    AzureBlobOptions, Claim, CoordinationError, Coordinator, FinalState, InterruptedOccurrence,
    OccurrenceGuard, OccurrenceState, ScheduleStatus, StorageHealth,
};

use crate::support::coordination::{
    AzuriteContainer, Backend, SwitchableProxy, azurite_addr, fast_options, instant,
};
use crate::support::{closed_port, wait_until};

fn acquired(claim: Claim) -> OccurrenceGuard {
    match claim {
        Claim::Acquired(guard) => guard,
        other => panic!("expected the claim to be acquired, got {other:?}"),
    }
}

async fn stored(replica: &Coordinator, runbook: &str, minute: u32) -> OccurrenceRecord {
    replica
        .occurrence(runbook, instant(minute))
        .await
        .expect("read the occurrence")
        .expect("the occurrence exists")
        .value
}

// ---------------------------------------------------------------------------------------
// The same semantics for both implementations.
// ---------------------------------------------------------------------------------------

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::local()).await
                }
            )*
        }
        mod azurite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::azure()).await
                }
            )*
        }
    };
}

on_both_backends!(
    exactly_one_of_five_concurrent_claimers_wins,
    an_occurrence_due_while_another_runs_is_skipped_across_replicas,
    an_orphan_is_marked_interrupted_exactly_once_by_racing_sweepers_and_rerun_once,
    a_schedule_status_write_with_a_stale_version_conflicts,
    concurrent_fired_instants_keep_the_latest,
    occurrences_are_listed_newest_first_up_to_the_limit,
    final_records_before_the_cutoff_are_pruned_once_across_replicas,
    two_schedules_due_at_one_instant_are_claimed_once_each,
);

async fn two_schedules_due_at_one_instant_are_claimed_once_each(backend: Backend) {
    let replicas = backend.replicas(2);
    let (a, b) = (&replicas[0], &replicas[1]);
    let first = acquired(
        a.claim_schedule("regions", instant(0), 0, "a")
            .await
            .unwrap(),
    );
    assert!(matches!(
        b.claim_schedule("regions", instant(0), 0, "b")
            .await
            .unwrap(),
        Claim::AlreadyClaimed
    ));
    first
        .complete(FinalState::Completed, None)
        .await
        .expect("complete");
    // The second schedule's occurrence at the same instant is its own, claimed once.
    let second = acquired(
        b.claim_schedule("regions", instant(0), 1, "b")
            .await
            .unwrap(),
    );
    assert_eq!(second.record().schedule, 1);
    assert!(matches!(
        a.claim_schedule("regions", instant(0), 1, "a")
            .await
            .unwrap(),
        Claim::AlreadyClaimed
    ));
    second
        .complete(FinalState::Completed, None)
        .await
        .expect("complete");
    let records = a.list_occurrences("regions", 10).await.unwrap();
    let mut schedules: Vec<(usize, &str)> = records
        .iter()
        .map(|r| (r.schedule, r.owner.as_str()))
        .collect();
    schedules.sort();
    assert_eq!(schedules, [(0, "a"), (1, "b")]);
}

async fn exactly_one_of_five_concurrent_claimers_wins(backend: Backend) {
    let replicas = backend.replicas(5);
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let replica = replica.clone();
            tokio::spawn(async move {
                let claim = replica
                    .claim("archive", instant(0), &format!("replica-{i}"))
                    .await
                    .expect("claim");
                (i, claim)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut already_claimed = 0;
    for task in tasks {
        match task.await.unwrap() {
            (i, Claim::Acquired(guard)) => winners.push((i, guard)),
            (_, Claim::AlreadyClaimed) => already_claimed += 1,
            (i, Claim::Busy) => panic!("replica-{i} saw Busy for the only occurrence"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner");
    assert_eq!(already_claimed, 4);

    let (winner, guard) = winners.pop().unwrap();
    assert_eq!(guard.record().state, OccurrenceState::Running);
    let done = guard
        .complete(FinalState::Completed, Some("job-17".to_string()))
        .await
        .expect("complete");
    let record = stored(&replicas[0], "archive", 0).await;
    assert_eq!(record, done);
    assert_eq!(record.state, OccurrenceState::Completed);
    assert_eq!(record.owner, format!("replica-{winner}"));
    assert_eq!(record.job_id.as_deref(), Some("job-17"));
    let status = replicas[1]
        .schedule_status("archive")
        .await
        .unwrap()
        .expect("a completed job moves the status");
    assert_eq!(status.value.last_completed, Some(instant(0)));
}

async fn an_occurrence_due_while_another_runs_is_skipped_across_replicas(backend: Backend) {
    let replicas = backend.replicas(2);
    let (a, b) = (&replicas[0], &replicas[1]);
    let first = acquired(a.claim("report", instant(0), "a").await.unwrap());

    let second = b.claim("report", instant(1), "b").await.unwrap();
    assert!(matches!(second, Claim::Busy), "{second:?}");
    let skipped = stored(b, "report", 1).await;
    assert_eq!(skipped.state, OccurrenceState::Skipped);
    assert_eq!(skipped.owner, "b");
    // The skipped occurrence is decided: nobody else claims it again.
    assert!(matches!(
        a.claim("report", instant(1), "a").await.unwrap(),
        Claim::AlreadyClaimed
    ));
    // Another runbook is not affected by this one's lock.
    acquired(b.claim("other", instant(1), "b").await.unwrap())
        .complete(FinalState::Failed, None)
        .await
        .unwrap();

    first.complete(FinalState::Completed, None).await.unwrap();
    let third = acquired(b.claim("report", instant(2), "b").await.unwrap());
    third.complete(FinalState::Completed, None).await.unwrap();
    assert_eq!(stored(a, "other", 1).await.state, OccurrenceState::Failed);
}

async fn an_orphan_is_marked_interrupted_exactly_once_by_racing_sweepers_and_rerun_once(
    backend: Backend,
) {
    let replicas = backend.replicas(3);
    let guard = acquired(replicas[0].claim("purge", instant(0), "a").await.unwrap());
    // A finished occurrence of the same runbook must not be touched by the sweep.
    backend.crash(guard).await;

    let sweeps: Vec<_> = replicas[1..]
        .iter()
        .map(|replica| {
            let replica = replica.clone();
            tokio::spawn(async move { replica.sweep_interrupted("purge").await.expect("sweep") })
        })
        .collect();
    let mut marked: Vec<InterruptedOccurrence> = Vec::new();
    for sweep in sweeps {
        marked.extend(sweep.await.unwrap());
    }
    assert_eq!(marked.len(), 1, "exactly one sweeper marks the orphan");
    assert!(marked[0].started, "the job had started");
    assert_eq!(marked[0].record.state, OccurrenceState::Interrupted);
    assert_eq!(
        stored(&replicas[0], "purge", 0).await.state,
        OccurrenceState::Interrupted
    );
    // A later sweep finds nothing new.
    assert!(
        replicas[2]
            .sweep_interrupted("purge")
            .await
            .unwrap()
            .is_empty()
    );

    // Re-running it (on_interrupt = "rerun"): two replicas try, one gets it.
    let interrupted = marked.pop().unwrap();
    let reruns: Vec<_> = replicas[1..]
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let replica = replica.clone();
            let interrupted = interrupted.clone();
            tokio::spawn(async move {
                replica
                    .claim_rerun(&interrupted, &format!("rerunner-{i}"))
                    .await
                    .expect("claim rerun")
            })
        })
        .collect();
    let mut guards = Vec::new();
    for rerun in reruns {
        if let Claim::Acquired(guard) = rerun.await.unwrap() {
            guards.push(guard);
        }
    }
    assert_eq!(guards.len(), 1, "exactly one replica re-runs it");
    let guard = guards.pop().unwrap();
    assert_eq!(guard.record().attempt, 2);
    guard.complete(FinalState::Completed, None).await.unwrap();
    let record = stored(&replicas[0], "purge", 0).await;
    assert_eq!(
        (record.state, record.attempt),
        (OccurrenceState::Completed, 2)
    );
}

async fn a_schedule_status_write_with_a_stale_version_conflicts(backend: Backend) {
    let replicas = backend.replicas(2);
    let (a, b) = (&replicas[0], &replicas[1]);
    assert!(a.schedule_status("quota").await.unwrap().is_none());

    let first = ScheduleStatus::new("quota").with_fired(instant(0));
    let v1 = a.write_schedule_status(&first, None).await.unwrap();
    // Creating it again is a conflict: somebody already did.
    assert!(matches!(
        b.write_schedule_status(&first, None).await,
        Err(CoordinationError::Conflict { .. })
    ));

    // Two replicas read the same version; the second writer loses.
    let seen_by_a = a.schedule_status("quota").await.unwrap().unwrap();
    let seen_by_b = b.schedule_status("quota").await.unwrap().unwrap();
    assert_eq!(seen_by_a.version, v1);
    assert_eq!(seen_by_b.version, v1);
    let v2 = a
        .write_schedule_status(
            &seen_by_a.value.with_fired(instant(1)),
            Some(&seen_by_a.version),
        )
        .await
        .unwrap();
    assert_ne!(v2, v1);
    let stale = b
        .write_schedule_status(
            &seen_by_b.value.with_fired(instant(2)),
            Some(&seen_by_b.version),
        )
        .await;
    assert!(
        matches!(stale, Err(CoordinationError::Conflict { .. })),
        "{stale:?}"
    );
    let now = b.schedule_status("quota").await.unwrap().unwrap();
    assert_eq!(now.value.last_fired, Some(instant(1)));
    assert_eq!(now.version, v2);
}

async fn concurrent_fired_instants_keep_the_latest(backend: Backend) {
    let replicas = backend.replicas(4);
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let replica = replica.clone();
            tokio::spawn(async move {
                let minute = u32::try_from(i).unwrap();
                replica.record_fired("sync", instant(minute)).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("record_fired retries conflicts");
    }
    let status = replicas[0].schedule_status("sync").await.unwrap().unwrap();
    assert_eq!(status.value.last_fired, Some(instant(3)));
    // A late, older instant does not move it back.
    replicas[1].record_fired("sync", instant(1)).await.unwrap();
    let status = replicas[0].schedule_status("sync").await.unwrap().unwrap();
    assert_eq!(status.value.last_fired, Some(instant(3)));
}

async fn occurrences_are_listed_newest_first_up_to_the_limit(backend: Backend) {
    let replica = &backend.replicas(1)[0];
    // A name with a space, a slash and a non-ASCII letter still maps to its own blobs.
    let runbook = "quota report/v2 ü";
    for minute in [3, 0, 4, 1, 2] {
        acquired(replica.claim(runbook, instant(minute), "a").await.unwrap())
            .complete(FinalState::Completed, None)
            .await
            .unwrap();
    }
    acquired(replica.claim("unrelated", instant(9), "a").await.unwrap())
        .complete(FinalState::Completed, None)
        .await
        .unwrap();
    let listed = replica.list_occurrences(runbook, 3).await.unwrap();
    let instants: Vec<_> = listed.iter().map(|r| r.scheduled_for).collect();
    assert_eq!(instants, vec![instant(4), instant(3), instant(2)]);
    assert!(listed.iter().all(|r| r.runbook == runbook));
    assert_eq!(
        replica.list_occurrences(runbook, 100).await.unwrap().len(),
        5
    );
    assert!(
        replica
            .list_occurrences(runbook, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn final_records_before_the_cutoff_are_pruned_once_across_replicas(backend: Backend) {
    let replicas = backend.replicas(3);
    for minute in 0..5 {
        acquired(
            replicas[0]
                .claim("report", instant(minute), "a")
                .await
                .unwrap(),
        )
        .complete(FinalState::Completed, None)
        .await
        .unwrap();
    }
    // Still running, however old: never pruned.
    let running = acquired(replicas[1].claim("long", instant(0), "b").await.unwrap());

    let passes: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let replica = replica.clone();
            tokio::spawn(async move { replica.prune(instant(3)).await })
        })
        .collect();
    let mut deleted = 0;
    for pass in passes {
        deleted += pass.await.unwrap().expect("a pruning pass");
    }
    assert_eq!(deleted, 3, "minutes 0, 1 and 2 are deleted, each once");

    let left: Vec<_> = replicas[2]
        .list_occurrences("report", 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.scheduled_for)
        .collect();
    assert_eq!(left, vec![instant(4), instant(3)]);
    assert_eq!(
        stored(&replicas[2], "long", 0).await.state,
        OccurrenceState::Running
    );
    // A pass with nothing old left deletes nothing.
    assert_eq!(replicas[0].prune(instant(3)).await.unwrap(), 0);
    running.complete(FinalState::Completed, None).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Leases, fencing and outages: Azurite only.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_renewal_fails_sees_lost_and_its_completion_is_refused() {
    let container = AzuriteContainer::new();
    let holder = container.coordinator(fast_options());
    let other = container.coordinator(fast_options());
    let guard = acquired(holder.claim("purge", instant(0), "a").await.unwrap());
    let lost = guard.lost();
    assert!(!lost.is_cancelled());

    container.break_lock("purge").await;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let lost = lost.clone();
            async move { lost.is_cancelled() }
        })
        .await,
        "the next renewal fails and fires lost()"
    );
    assert!(guard.check().is_err());
    let refused = guard.complete(FinalState::Completed, None).await;
    assert!(
        matches!(refused, Err(CoordinationError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert_eq!(
        stored(&other, "purge", 0).await.state,
        OccurrenceState::Running,
        "the holder wrote nothing after losing the lease"
    );
    let swept = other.sweep_interrupted("purge").await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(
        stored(&other, "purge", 0).await.state,
        OccurrenceState::Interrupted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_a_sweeper_marked_the_record_is_refused_by_its_etag() {
    let container = AzuriteContainer::new();
    // Renewals far apart, so that the holder has not noticed anything when it completes:
    // only the record's ETag can stop its write.
    let slow = AzureBlobOptions {
        renew_interval: Duration::from_secs(10),
        ..fast_options()
    };
    let holder = container.coordinator(slow);
    let sweeper = container.coordinator(fast_options());
    let guard = acquired(holder.claim("archive", instant(0), "a").await.unwrap());

    container.break_lock("archive").await;
    assert_eq!(sweeper.sweep_interrupted("archive").await.unwrap().len(), 1);
    assert!(guard.check().is_ok(), "locally the lease still looks valid");

    let refused = guard
        .complete(FinalState::Completed, Some("job-1".to_string()))
        .await;
    assert!(
        matches!(refused, Err(CoordinationError::LeaseLost { .. })),
        "{refused:?}"
    );
    let record = stored(&sweeper, "archive", 0).await;
    assert_eq!(record.state, OccurrenceState::Interrupted);
    assert_eq!(record.job_id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_keep_the_lock_past_the_lease_duration() {
    let container = AzuriteContainer::new();
    let options = fast_options();
    let holder = container.coordinator(options.clone());
    let other = container.coordinator(options.clone());
    let guard = acquired(holder.claim("long", instant(0), "a").await.unwrap());
    let lost = guard.lost();

    // Time passing is the point of this test: hold the lock for longer than one lease.
    tokio::select! {
        _ = tokio::time::sleep(options.lease_duration + Duration::from_secs(3)) => {}
        _ = lost.cancelled() => panic!("the lease was lost while renewals were running"),
    }
    assert_eq!(container.lock_state("long").await, Some(LeaseState::Leased));
    assert!(matches!(
        other.claim("long", instant(1), "b").await.unwrap(),
        Claim::Busy
    ));
    assert!(guard.check().is_ok());
    guard.complete(FinalState::Completed, None).await.unwrap();
    assert_ne!(container.lock_state("long").await, Some(LeaseState::Leased));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_is_taken_over_and_cannot_write_when_it_wakes() {
    let container = AzuriteContainer::new();
    let paused = container.coordinator(fast_options());
    let taker = container.coordinator(fast_options());
    let guard = acquired(paused.claim("report", instant(0), "a").await.unwrap());
    let lost = guard.lost();
    guard.pause_renewals();

    // Frozen: no renewals and no loss signal; the service expires the lease by itself.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            container.lock_state("report").await != Some(LeaseState::Leased)
        })
        .await,
        "the lease expires without renewals"
    );
    let takeover = acquired(taker.claim("report", instant(1), "b").await.unwrap());

    guard.resume_renewals();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let lost = lost.clone();
            async move { lost.is_cancelled() }
        })
        .await,
        "on waking, the holder sees its lease lapsed and does not renew it back"
    );
    let refused = guard.complete(FinalState::Completed, None).await;
    assert!(
        matches!(refused, Err(CoordinationError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert_eq!(
        stored(&taker, "report", 0).await.state,
        OccurrenceState::Running,
        "the paused holder wrote nothing after waking"
    );
    assert_eq!(
        container.lock_state("report").await,
        Some(LeaseState::Leased),
        "the new holder keeps the lock"
    );
    assert!(takeover.check().is_ok());
    takeover
        .complete(FinalState::Completed, None)
        .await
        .unwrap();

    let swept = taker.sweep_interrupted("report").await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].record.scheduled_for, instant(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimer_that_died_before_starting_is_swept_as_never_started() {
    let container = AzuriteContainer::new();
    let sweeper = container.coordinator(fast_options());
    // Make sure the container exists, then leave a Claimed record behind as a replica that
    // died between creating the record and taking the lock would.
    sweeper.probe().await.unwrap();
    let claimed = OccurrenceRecord::claimed("sync", instant(0), "dead", chrono::Utc::now());
    container
        .raw()
        .blob_client(&occurrence_blob("sync", instant(0)))
        .upload(
            RequestContent::from(serde_json::to_vec(&claimed).unwrap()),
            Some(BlobClientUploadOptions {
                metadata: Some(HashMap::from([(
                    "state".to_string(),
                    "claimed".to_string(),
                )])),
                ..Default::default()
            }),
        )
        .await
        .unwrap();

    // The first sweep only starts watching it: it could be a claimer a moment from the lock.
    assert!(sweeper.sweep_interrupted("sync").await.unwrap().is_empty());
    let marked: Arc<Mutex<Vec<InterruptedOccurrence>>> = Arc::default();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let sweeper = sweeper.clone();
            let marked = marked.clone();
            async move {
                let found = sweeper.sweep_interrupted("sync").await.unwrap();
                let mut marked = marked.lock().unwrap();
                marked.extend(found);
                !marked.is_empty()
            }
        })
        .await,
        "after the grace period the orphaned claim is marked"
    );
    let marked = marked.lock().unwrap().clone();
    assert_eq!(marked.len(), 1);
    assert!(!marked[0].started, "the job never started");
    let rerun = acquired(sweeper.claim_rerun(&marked[0], "b").await.unwrap());
    rerun.complete(FinalState::Completed, None).await.unwrap();
    let record = stored(&sweeper, "sync", 0).await;
    assert_eq!(
        (record.state, record.owner.as_str()),
        (OccurrenceState::Completed, "b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_storage_fails_claims_within_the_budget_and_reports_unhealthy() {
    let unreachable = AzuriteContainer::new().with_endpoint(format!(
        "http://127.0.0.1:{}/devstoreaccount1",
        closed_port()
    ));
    let options = fast_options();
    let replica = unreachable.coordinator(options.clone());
    let health = replica.health();
    assert_eq!(*health.borrow(), StorageHealth::Unknown);

    let started = Instant::now();
    let error = replica
        .claim("archive", instant(0), "a")
        .await
        .expect_err("no storage, no claim");
    let took = started.elapsed();
    assert!(
        matches!(error, CoordinationError::Unavailable { .. }),
        "{error:?}"
    );
    // The requirement is a bound, not a speed: retries end well inside one lease.
    assert!(took < options.lease_duration, "took {took:?}");
    assert!(matches!(*health.borrow(), StorageHealth::Failing { .. }));

    let shown = format!("{error} {error:?} {replica:?} {:?}", *health.borrow());
    let signature = unreachable.signature();
    let encoded: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
    assert!(!shown.contains(&signature), "{shown}");
    assert!(!shown.contains(&encoded), "{shown}");
    assert!(
        shown.contains("127.0.0.1"),
        "the error still says where: {shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_no_work_while_storage_is_down_and_recovers() {
    let azurite = AzuriteContainer::new();
    let proxy = SwitchableProxy::start(azurite_addr()).await;
    let replica = azurite
        .with_endpoint(proxy.endpoint())
        .coordinator(fast_options());
    let observer = azurite.coordinator(fast_options());
    let health = replica.health();

    acquired(replica.claim("sync", instant(0), "a").await.unwrap())
        .complete(FinalState::Completed, None)
        .await
        .unwrap();
    assert!(health.borrow().is_ok());

    proxy.set_up(false);
    let refused = replica.claim("sync", instant(1), "a").await;
    assert!(
        matches!(refused, Err(CoordinationError::Unavailable { .. })),
        "{refused:?}"
    );
    assert!(!health.borrow().is_ok());
    assert!(replica.probe().await.is_err());
    assert!(
        observer
            .occurrence("sync", instant(1))
            .await
            .unwrap()
            .is_none(),
        "nothing was claimed while storage was down"
    );

    proxy.set_up(true);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let replica = replica.clone();
            async move { replica.probe().await.is_ok() }
        })
        .await,
        "the replica sees the storage again"
    );
    assert!(health.borrow().is_ok());
    acquired(replica.claim("sync", instant(2), "a").await.unwrap())
        .complete(FinalState::Completed, None)
        .await
        .unwrap();
}
