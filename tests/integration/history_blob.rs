//! The shared job history in Azure Blob Storage, against the Azurite that
//! `./scripts/test.sh history_blob` starts: the same answers as the SQLite store for the same
//! operations (one contract run on both through [`Store`]), several replicas on one
//! container, retention across replicas, conditional interrupt marking, reports, and no SAS
//! in any error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use azure_storage_blob::models::BlobClientAcquireLeaseOptions;
use chrono::{DateTime, TimeZone, Utc};
use futures::TryStreamExt as _;
use secrecy::SecretString;
use serde_json::json;

use runbook_worker::clock::{Clock as _, ManualClock, SharedClock};
use runbook_worker::coordination::StorageTarget;
use runbook_worker::history::blob::{
    BlobHistoryError, BlobHistoryOptions, BlobHistoryStore, PruneOutcome,
};
use runbook_worker::history::{
    HistoryError, HistorySettings, HistoryStore, JobFilter, JobHistory, JobId, JobStatus,
    JobSummary, NewJob, NewStreamEntry, Outcome, StepCounts, StreamKind, Trigger,
};

use crate::support::coordination::{AzuriteContainer, azurite_endpoint, emulator_sas_query};

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 5, 6, 0, 0).unwrap()
}

fn settings() -> HistorySettings {
    HistorySettings {
        max_entries_per_stream: 3,
        ..HistorySettings::default()
    }
}

fn options(replica: &str) -> BlobHistoryOptions {
    let mut options = BlobHistoryOptions::new(&settings(), Duration::from_secs(10), 1, replica);
    options.prune_lease = Duration::from_secs(15);
    options
}

fn blob_store(
    container: &AzuriteContainer,
    replica: &str,
    clock: &ManualClock,
) -> BlobHistoryStore {
    blob_store_with(container, options(replica), clock)
}

fn blob_store_with(
    container: &AzuriteContainer,
    options: BlobHistoryOptions,
    clock: &ManualClock,
) -> BlobHistoryStore {
    let shared: SharedClock = Arc::new(clock.clone());
    BlobHistoryStore::new(StorageTarget::SasUrl(container.sas_url()), options, shared)
        .expect("a valid SAS URL")
}

fn new_job(runbook: &str, trigger: Trigger, scheduled_for: Option<DateTime<Utc>>) -> NewJob {
    NewJob {
        runbook: runbook.to_string(),
        file_hash: format!("sha256:{runbook}"),
        trigger,
        scheduled_for,
        dry_run: false,
        params: json!({"older_than_days": 30}).as_object().cloned().unwrap(),
    }
}

/// The one history abstraction the worker uses ([`JobHistory`]), over either store, with
/// errors as text: the contract suite runs through it against both.
struct Store(JobHistory);

macro_rules! both {
    ($self:ident, $store:ident => $call:expr) => {{
        let $store = &$self.0;
        $call.await.map_err(|e| e.to_string())
    }};
}

impl Store {
    async fn create(&self, job: NewJob) -> Result<JobId, String> {
        both!(self, s => s.create_job(job))
    }
    async fn skipped(&self, job: NewJob, reason: &str) -> Result<JobId, String> {
        both!(self, s => s.record_skipped(job, reason))
    }
    async fn running(&self, id: &JobId) -> Result<(), String> {
        both!(self, s => s.mark_running(id))
    }
    async fn append(&self, id: &JobId, entries: Vec<NewStreamEntry>) -> Result<(), String> {
        both!(self, s => s.append_stream(id, entries))
    }
    async fn steps(&self, id: &JobId, steps: Vec<StepCounts>) -> Result<(), String> {
        both!(self, s => s.update_steps(id, steps))
    }
    async fn finish(&self, id: &JobId, outcome: Outcome) -> Result<(), String> {
        both!(self, s => s.finish(id, outcome))
    }
    async fn list(&self, filter: &JobFilter) -> Result<Vec<JobSummary>, String> {
        both!(self, s => s.list_jobs(filter))
    }
    async fn get(&self, id: &JobId) -> Result<Option<runbook_worker::history::JobDetail>, String> {
        both!(self, s => s.get_job(id))
    }
    async fn last_status(&self) -> Result<BTreeMap<String, JobSummary>, String> {
        both!(self, s => s.last_status_per_runbook())
    }
    async fn last_occurrence(&self) -> Result<BTreeMap<String, DateTime<Utc>>, String> {
        both!(self, s => s.last_occurrence_per_runbook())
    }
}

/// A list row without its id (each store makes its own ids).
type Row = (
    String,
    Option<String>,
    JobStatus,
    Trigger,
    DateTime<Utc>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn rows(jobs: &[JobSummary]) -> Vec<Row> {
    jobs.iter()
        .map(|j| {
            (
                j.runbook.clone(),
                j.replica.clone(),
                j.status,
                j.trigger,
                j.created_at,
                j.duration_ms,
                j.summary.clone(),
                j.error.clone(),
            )
        })
        .collect()
}

/// A job's kept entries (seq, kind, text), dropped counts and steps.
type Detail = (
    Vec<(u64, StreamKind, String)>,
    BTreeMap<StreamKind, u64>,
    Vec<StepCounts>,
);

/// What the contract observed, id-free so that both stores can be compared.
#[derive(Debug, PartialEq)]
struct Observed {
    lists: Vec<(String, Vec<Row>)>,
    pages: Vec<Vec<Row>>,
    detail: Detail,
    refused: Vec<String>,
    last_status: BTreeMap<String, (JobStatus, DateTime<Utc>)>,
    last_occurrence: BTreeMap<String, DateTime<Utc>>,
}

/// The shared suite: one sequence of operations and what a reader sees after it.
async fn contract(store: &Store, clock: &ManualClock) -> Observed {
    let tick = || clock.advance(Duration::from_secs(7));
    let at = |m: i64| start() + chrono::Duration::minutes(m);

    let first = store
        .create(new_job("archive", Trigger::Schedule, Some(at(0))))
        .await
        .unwrap();
    store.running(&first).await.unwrap();
    tick();
    let mut entries: Vec<NewStreamEntry> = (0..5)
        .flat_map(|i| {
            [
                NewStreamEntry::output(format!("out {i}")),
                NewStreamEntry::progress(format!("p {i}")),
            ]
        })
        .collect();
    entries.push(NewStreamEntry::plan(
        "Set-Mailbox a",
        json!({"cmdlet": "Set-Mailbox"}),
    ));
    store.append(&first, entries[..6].to_vec()).await.unwrap();
    tick();
    store.append(&first, entries[6..].to_vec()).await.unwrap();
    let steps = vec![StepCounts {
        step: "enable".into(),
        records_read: 5,
        done: 4,
        failed: 1,
        ..StepCounts::default()
    }];
    store.steps(&first, steps.clone()).await.unwrap();
    tick();
    store
        .finish(
            &first,
            Outcome::new(JobStatus::CompletedWithErrors)
                .with_summary("4 of 5")
                .with_steps(steps),
        )
        .await
        .unwrap();

    let mut ids = vec![first.clone()];
    for (i, (runbook, trigger, end)) in [
        ("quota", Trigger::Manual, Some(JobStatus::Failed)),
        ("archive", Trigger::Schedule, None),
        ("quota", Trigger::Api, Some(JobStatus::Completed)),
        ("archive", Trigger::CatchUp, Some(JobStatus::Failed)),
        ("archive", Trigger::Schedule, Some(JobStatus::Completed)),
        ("quota", Trigger::Schedule, None),
    ]
    .into_iter()
    .enumerate()
    {
        tick();
        let scheduled =
            matches!(trigger, Trigger::Schedule | Trigger::CatchUp).then(|| at(10 + i as i64));
        let job = new_job(runbook, trigger, scheduled);
        let id = if end.is_none() && runbook == "archive" {
            store
                .skipped(job, "the previous run is still running")
                .await
                .unwrap()
        } else {
            store.create(job).await.unwrap()
        };
        if let Some(status) = end {
            store.running(&id).await.unwrap();
            tick();
            store
                .finish(
                    &id,
                    Outcome::new(status).with_error(format!("{runbook} {i}")),
                )
                .await
                .unwrap();
        }
        ids.push(id);
    }
    // The last quota job stays Queued; then one is left Running.
    tick();
    let running = store
        .create(new_job("archive", Trigger::Manual, None))
        .await
        .unwrap();
    store.running(&running).await.unwrap();

    let mut refused = Vec::new();
    for result in [
        store.running(&first).await,
        store.finish(&first, Outcome::new(JobStatus::Failed)).await,
        store
            .finish(&running, Outcome::new(JobStatus::Running))
            .await,
    ] {
        let message = result.expect_err("the transition is refused");
        refused.push(message.replace(first.as_str(), "<id>"));
    }
    let unknown: JobId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
    refused.push(
        store
            .running(&unknown)
            .await
            .expect_err("unknown job")
            .replace(unknown.as_str(), "<id>"),
    );

    let mut lists = Vec::new();
    for (name, runbook, status, limit) in [
        ("all", None, None, 50),
        ("archive", Some("archive"), None, 50),
        ("failed", None, Some(JobStatus::Failed), 50),
        (
            "archive failed",
            Some("archive"),
            Some(JobStatus::Failed),
            50,
        ),
        ("running", None, Some(JobStatus::Running), 50),
        ("queued quota", Some("quota"), Some(JobStatus::Queued), 50),
        ("newest 3", None, None, 3),
        ("nothing", Some("missing"), None, 50),
    ] {
        let filter = JobFilter {
            runbook: runbook.map(str::to_string),
            status,
            limit,
            before: None,
        };
        lists.push((name.to_string(), rows(&store.list(&filter).await.unwrap())));
    }
    // `before` paging by twos walks every job once, newest first.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let filter = JobFilter {
            limit: 2,
            before: before.clone(),
            ..JobFilter::default()
        };
        let page = store.list(&filter).await.unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|j| j.id.clone());
        pages.push(rows(&page));
    }
    let detail = store.get(&first).await.unwrap().expect("the first job");
    Observed {
        lists,
        pages,
        detail: (
            detail
                .streams
                .iter()
                .map(|e| (e.seq, e.kind, e.text.clone()))
                .collect(),
            detail.dropped,
            detail.steps,
        ),
        refused,
        last_status: store
            .last_status()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, (v.status, v.created_at)))
            .collect(),
        last_occurrence: store.last_occurrence().await.unwrap(),
    }
}

#[tokio::test]
async fn the_blob_history_answers_exactly_as_the_sqlite_history() {
    let expected = sqlite_contract().await;

    let clock = ManualClock::new(start());
    let blob = blob_store(&AzuriteContainer::new(), "replica-a", &clock);
    let observed = contract(&Store(blob.into()), &clock).await;
    assert_eq!(observed, expected);

    // Both could be wrong alike: pin what the SQLite store is known to answer.
    let all = &expected.lists[0].1;
    assert_eq!(all.len(), 8);
    assert_eq!(all[0].2, JobStatus::Running);
    assert!(
        all.iter().all(|row| row.1.as_deref() == Some("replica-a")),
        "every job names the replica that ran it: {all:?}"
    );
    assert_eq!(expected.pages.concat(), *all);
    assert_eq!(expected.lists[2].1.len(), 2, "{:?}", expected.lists[2]);
    assert_eq!(expected.lists[6].1, all[..3].to_vec());
    assert_eq!(expected.lists[7].1, Vec::<Row>::new());
    let kinds: Vec<StreamKind> = expected.detail.0.iter().map(|e| e.1).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == StreamKind::Output).count(),
        3
    );
    assert_eq!(expected.detail.1.get(&StreamKind::Progress), Some(&2));
    assert_eq!(expected.last_status["archive"].0, JobStatus::Running);
    assert!(
        expected.refused[0].contains("cannot become Running"),
        "{:?}",
        expected.refused
    );
}

/// The contract's answers on SQLite, to compare a blob store with.
async fn sqlite_contract() -> Observed {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let shared: SharedClock = Arc::new(clock.clone());
    let (sqlite, _writer) = HistoryStore::open_as(
        &dir.path().join("h.sqlite3"),
        &settings(),
        shared,
        Some("replica-a".to_string()),
    )
    .await
    .unwrap();
    contract(&Store(sqlite.into()), &clock).await
}

#[tokio::test]
async fn index_heads_too_small_for_the_pages_give_the_listings_answers() {
    // Two rows per head: most pages are longer than a head, so they go through the
    // head-then-listing fallback and the heads are cut, left short and seeded again.
    let mut small = options("replica-a");
    small.head_rows = 2;
    let clock = ManualClock::new(start());
    let blob = blob_store_with(&AzuriteContainer::new(), small, &clock);
    let observed = contract(&Store(blob.into()), &clock).await;
    assert_eq!(observed, sqlite_contract().await);
}

/// The job ids a head blob holds, newest first; `None` when there is no such blob.
async fn head_ids(container: &AzuriteContainer, head: &str) -> Option<Vec<String>> {
    let blob = container
        .raw()
        .blob_client(&format!("history/heads/{head}.json"));
    let body = match blob.download(None).await {
        Ok(response) => response.body.collect().await.unwrap(),
        Err(e) if e.http_status().map(u16::from) == Some(404) => return None,
        Err(e) => panic!("reading head {head}: {e}"),
    };
    let head: serde_json::Value = serde_json::from_slice(&body).unwrap();
    Some(
        head["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|row| row["id"].as_str().expect("id").to_string())
            .collect(),
    )
}

#[tokio::test]
async fn the_newest_jobs_are_kept_in_index_heads_rebuilt_from_the_index_when_lost() {
    let container = AzuriteContainer::new();
    let clock = ManualClock::new(start());
    let mut four = options("replica-a");
    four.head_rows = 4;
    let store = blob_store_with(&container, four, &clock);
    let mut made: Vec<(JobId, JobStatus)> = Vec::new();
    for i in 0..7 {
        let id = store
            .create_job(new_job("archive", Trigger::Schedule, Some(clock.now())))
            .await
            .unwrap();
        store.mark_running(&id).await.unwrap();
        let status = if i % 3 == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        };
        store.finish(&id, Outcome::new(status)).await.unwrap();
        made.push((id, status));
        clock.advance(Duration::from_secs(60));
    }
    let newest: Vec<String> = made.iter().rev().map(|(id, _)| id.to_string()).collect();
    let failed: Vec<String> = made
        .iter()
        .rev()
        .filter(|(_, s)| *s == JobStatus::Failed)
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(
        head_ids(&container, "all").await,
        Some(newest[..4].to_vec())
    );
    assert_eq!(
        head_ids(&container, "runbook/archive").await,
        Some(newest[..4].to_vec())
    );
    assert_eq!(
        head_ids(&container, "status/Failed").await,
        Some(failed.clone())
    );
    assert_eq!(
        head_ids(&container, "status/Running").await,
        Some(Vec::new()),
        "every job left Running"
    );

    let listed = |filter: JobFilter| {
        let store = store.clone();
        async move {
            store
                .list_jobs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id.to_string())
                .collect::<Vec<_>>()
        }
    };
    let pages_of_three = || async {
        let mut all = Vec::new();
        let mut before = None;
        loop {
            let filter = JobFilter {
                limit: 3,
                before: before.clone(),
                ..JobFilter::default()
            };
            let page = store.list_jobs(&filter).await.unwrap();
            if page.is_empty() {
                return all;
            }
            before = page.last().map(|j| j.id.clone());
            all.extend(page.into_iter().map(|j| j.id.to_string()));
        }
    };
    assert_eq!(listed(JobFilter::default()).await, newest);
    assert_eq!(
        pages_of_three().await,
        newest,
        "pages across the head's end"
    );

    // Heads deleted (a restore that left them out, a hand-made clean-up): the listing answers
    // alone, and the next write seeds them again from the index.
    let raw = container.raw();
    let names: Vec<String> = {
        let mut pager = raw
            .list_blobs(Some(
                azure_storage_blob::models::BlobContainerClientListBlobsOptions {
                    prefix: Some("history/heads/".to_string()),
                    ..Default::default()
                },
            ))
            .unwrap();
        let mut names = Vec::new();
        while let Some(item) = pager.try_next().await.unwrap() {
            names.extend(item.name);
        }
        names
    };
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        raw.blob_client(name).delete(None).await.unwrap();
    }
    assert_eq!(head_ids(&container, "all").await, None);
    assert_eq!(listed(JobFilter::default()).await, newest);
    let failed_filter = JobFilter {
        status: Some(JobStatus::Failed),
        ..JobFilter::default()
    };
    assert_eq!(listed(failed_filter.clone()).await, failed);
    assert_eq!(pages_of_three().await, newest);

    let latest = store
        .create_job(new_job("archive", Trigger::Manual, None))
        .await
        .unwrap();
    let mut reseeded = vec![latest.to_string()];
    reseeded.extend(newest[..3].iter().cloned());
    assert_eq!(head_ids(&container, "all").await, Some(reseeded));
    assert_eq!(
        head_ids(&container, "status/Queued").await,
        Some(vec![latest.to_string()])
    );
    store.mark_running(&latest).await.unwrap();
    assert_eq!(
        head_ids(&container, "status/Queued").await,
        Some(Vec::new())
    );
    assert_eq!(
        listed(JobFilter {
            status: Some(JobStatus::Running),
            ..JobFilter::default()
        })
        .await,
        vec![latest.to_string()]
    );
    assert_eq!(
        listed(failed_filter).await,
        failed,
        "no head, the listing answers"
    );
}

#[tokio::test]
async fn two_replicas_on_one_container_see_each_others_jobs() {
    let container = AzuriteContainer::new();
    let clock = ManualClock::new(start());
    let a = blob_store(&container, "replica-a", &clock);
    let b = blob_store(&container, "replica-b", &clock);

    let from_a = a
        .create_job(new_job("archive", Trigger::Manual, None))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1));
    let from_b = b
        .create_job(new_job("quota", Trigger::Api, None))
        .await
        .unwrap();
    a.mark_running(&from_a).await.unwrap();
    a.finish(
        &from_a,
        Outcome::new(JobStatus::Completed).with_summary("done"),
    )
    .await
    .unwrap();

    for reader in [&a, &b] {
        let rows = reader.list_rows(&JobFilter::default()).await.unwrap();
        let seen: Vec<(JobId, String, JobStatus)> = rows
            .into_iter()
            .map(|r| (r.job.id, r.replica, r.job.status))
            .collect();
        assert_eq!(
            seen,
            [
                (from_b.clone(), "replica-b".to_string(), JobStatus::Queued),
                (
                    from_a.clone(),
                    "replica-a".to_string(),
                    JobStatus::Completed
                ),
            ]
        );
    }
    let detail = b
        .get_job(&from_a)
        .await
        .unwrap()
        .expect("a's job, read by b");
    assert_eq!(detail.job.summary.as_deref(), Some("done"));
    let unfinished = a.unfinished_jobs().await.unwrap();
    assert_eq!(
        unfinished
            .iter()
            .map(|r| r.job.id.clone())
            .collect::<Vec<_>>(),
        [from_b]
    );
}

#[tokio::test]
async fn interrupted_marking_is_conditional_and_happens_once() {
    let container = AzuriteContainer::new();
    let clock = ManualClock::new(start());
    let owner = blob_store(&container, "replica-a", &clock);
    let sweepers = [
        blob_store(&container, "replica-b", &clock),
        blob_store(&container, "replica-c", &clock),
    ];

    let id = owner
        .create_job(new_job("archive", Trigger::Schedule, Some(start())))
        .await
        .unwrap();
    owner.mark_running(&id).await.unwrap();
    owner
        .append_stream(&id, vec![NewStreamEntry::output("half way")])
        .await
        .unwrap();

    let (first, second) = tokio::join!(
        sweepers[0].mark_interrupted(std::slice::from_ref(&id)),
        sweepers[1].mark_interrupted(std::slice::from_ref(&id)),
    );
    let marked = first.unwrap().len() + second.unwrap().len();
    assert_eq!(marked, 1, "exactly one sweeper marks the job");

    // The owner, alive after all, cannot overwrite the sweep's decision.
    let err = owner
        .finish(&id, Outcome::new(JobStatus::Completed))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlobHistoryError::Job(HistoryError::InvalidTransition {
                from: JobStatus::Interrupted,
                ..
            })
        ),
        "{err}"
    );
    assert!(
        sweepers[0]
            .mark_interrupted(std::slice::from_ref(&id))
            .await
            .unwrap()
            .is_empty()
    );

    let detail = owner.get_job(&id).await.unwrap().unwrap();
    assert_eq!(detail.job.status, JobStatus::Interrupted);
    let texts: Vec<&str> = detail.streams.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[1].contains("replica replica-a stopped while this job was running"),
        "{texts:?}"
    );
    let failed = owner
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Interrupted),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    let running = owner
        .list_jobs(&JobFilter {
            status: Some(JobStatus::Running),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(running.is_empty(), "{running:?}");
}

#[tokio::test]
async fn retention_prunes_records_streams_and_reports_once_across_replicas() {
    let container = AzuriteContainer::new();
    let clock = ManualClock::new(start());
    let a = blob_store(&container, "replica-a", &clock);
    let b = blob_store(&container, "replica-b", &clock);

    let mut old = Vec::new();
    for i in 0..6 {
        let id = a
            .create_job(new_job("archive", Trigger::Schedule, Some(start())))
            .await
            .unwrap();
        a.mark_running(&id).await.unwrap();
        a.append_stream(
            &id,
            vec![
                NewStreamEntry::output(format!("o {i}")),
                NewStreamEntry::progress("p"),
            ],
        )
        .await
        .unwrap();
        a.put_report(&id, "report.csv", b"mailbox,size\n".to_vec())
            .await
            .unwrap();
        a.finish(&id, Outcome::new(JobStatus::Failed))
            .await
            .unwrap();
        old.push(id);
        clock.advance(Duration::from_secs(60));
    }
    let still_running = a
        .create_job(new_job("archive", Trigger::Manual, None))
        .await
        .unwrap();
    a.mark_running(&still_running).await.unwrap();
    clock.advance(Duration::from_secs(31 * 24 * 3600));
    let young = b
        .create_job(new_job("quota", Trigger::Schedule, Some(clock.now())))
        .await
        .unwrap();
    b.finish(&young, Outcome::new(JobStatus::Completed))
        .await
        .unwrap();

    assert_eq!(a.list_reports(&old[0]).await.unwrap().len(), 1);
    let now = clock.now();
    let (from_a, from_b) = tokio::join!(a.prune(now), b.prune(now));
    assert_eq!(
        from_a.unwrap() + from_b.unwrap(),
        6,
        "each old job is pruned once"
    );

    let remaining: Vec<JobId> = a
        .list_jobs(&JobFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(remaining, [young.clone(), still_running.clone()]);
    for id in &old {
        assert_eq!(a.get_job(id).await.unwrap(), None);
        assert!(a.list_reports(id).await.unwrap().is_empty());
    }
    let names: Vec<String> = container
        .raw()
        .list_blobs(None)
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|item| item.name)
        .collect();
    for id in &old {
        assert!(
            !names.iter().any(|n| n.contains(id.as_str())
                || n.contains(&runbook_worker::history::blob::inverted(id))),
            "{id} left {names:?}"
        );
    }
    let occurrences = a.last_occurrence_per_runbook().await.unwrap();
    assert_eq!(
        occurrences.keys().collect::<Vec<_>>(),
        ["quota"],
        "archive has only its manual job left"
    );

    // While another replica holds the prune lease, a pass is skipped.
    let lock = container.raw().blob_client("history/prune.lock");
    lock.acquire_lease(
        15,
        Some(BlobClientAcquireLeaseOptions {
            proposed_lease_id: Some(uuid::Uuid::new_v4().to_string()),
            ..Default::default()
        }),
    )
    .await
    .expect("lease the prune lock by hand");
    assert_eq!(
        a.prune_pass(now).await.unwrap(),
        PruneOutcome::HeldElsewhere
    );
}

#[tokio::test]
async fn reports_are_stored_listed_and_read_back_per_job() {
    let container = AzuriteContainer::new();
    let clock = ManualClock::new(start());
    let store = blob_store(&container, "replica-a", &clock);
    let id = store
        .create_job(new_job("quota", Trigger::Manual, None))
        .await
        .unwrap();
    store
        .put_report(&id, "quota.csv", b"a,b\n1,2\n".to_vec())
        .await
        .unwrap();
    store
        .put_report(&id, "summary.json", b"{}".to_vec())
        .await
        .unwrap();
    let listed = store.list_reports(&id).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|r| (r.name.as_str(), r.size))
            .collect::<Vec<_>>(),
        [("quota.csv", 8), ("summary.json", 2)]
    );
    assert_eq!(
        store.get_report(&id, "quota.csv").await.unwrap().as_deref(),
        Some(&b"a,b\n1,2\n"[..])
    );
    assert_eq!(store.get_report(&id, "missing.csv").await.unwrap(), None);
    let err = store
        .put_report(&id, "../escape", Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobHistoryError::InvalidReportName { .. }),
        "{err}"
    );
    let unknown: JobId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
    let err = store
        .put_report(&unknown, "x.csv", Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobHistoryError::Job(HistoryError::UnknownJob { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn errors_name_the_fix_and_never_carry_the_sas() {
    let container = AzuriteContainer::new();
    let clock = ManualClock::new(start());
    let signature = container.signature();

    // A closed port: unreachable.
    let closed = container.with_endpoint("http://127.0.0.1:1/devstoreaccount1".to_string());
    let store = blob_store(&closed, "replica-a", &clock);
    let err = store
        .create_job(new_job("a", Trigger::Manual, None))
        .await
        .unwrap_err();
    assert!(matches!(err, BlobHistoryError::Unreachable { .. }), "{err}");
    for text in [err.to_string(), format!("{err:?}"), format!("{store:?}")] {
        assert!(!text.contains(&signature), "{text}");
    }

    // A forged signature: refused, naming the role to grant.
    let forged_query = emulator_sas_query().replace("sig=", "sig=AAAA");
    let forged = SecretString::from(format!(
        "{}/{}?{forged_query}",
        azurite_endpoint(),
        container.name
    ));
    let shared: SharedClock = Arc::new(clock.clone());
    let store =
        BlobHistoryStore::new(StorageTarget::SasUrl(forged), options("replica-a"), shared).unwrap();
    let err = store.list_jobs(&JobFilter::default()).await.unwrap_err();
    assert!(
        matches!(err, BlobHistoryError::Forbidden { status: 403, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("Storage Blob Data Contributor"), "{text}");
    assert!(!text.contains("sig="), "{text}");
}
