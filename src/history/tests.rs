//! The store against real SQLite files in temp directories, with a manual clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::{ManualClock, SharedClock};

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 5, 6, 0, 0).unwrap()
}

fn new_job(runbook: &str) -> NewJob {
    NewJob {
        runbook: runbook.to_string(),
        file_hash: "sha256:abc".to_string(),
        trigger: Trigger::Schedule,
        scheduled_for: Some(start()),
        dry_run: false,
        params: json!({"days": 30}).as_object().cloned().unwrap_or_default(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    clock: ManualClock,
    store: HistoryStore,
    writer: tokio::task::JoinHandle<()>,
}

async fn open_with(settings: HistorySettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = database_path(&dir.path().join("state"));
    let clock = ManualClock::new(start());
    let shared: SharedClock = Arc::new(clock.clone());
    let (store, writer) = HistoryStore::open(&path, &settings, shared).await.unwrap();
    Fixture {
        _dir: dir,
        path,
        clock,
        store,
        writer,
    }
}

async fn open() -> Fixture {
    open_with(HistorySettings::default()).await
}

#[tokio::test]
async fn a_job_goes_from_queued_to_running_to_completed_with_its_times_and_counts() {
    let f = open().await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    let queued = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(queued.job.status, JobStatus::Queued);
    assert_eq!(queued.job.created_at, start());
    assert_eq!(queued.params["days"], 30);

    f.clock.advance(Duration::from_secs(2));
    f.store.mark_running(&id).await.unwrap();
    let steps = vec![StepCounts {
        step: "enable-archive".to_string(),
        records_read: 412,
        done: 3,
        failed: 1,
        skipped: 408,
        writes_planned: 0,
    }];
    f.store.update_steps(&id, steps.clone()).await.unwrap();
    let running = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(running.job.status, JobStatus::Running);
    assert_eq!(running.steps, steps);

    f.clock.advance(Duration::from_secs(90));
    f.store
        .finish(
            &id,
            Outcome::new(JobStatus::CompletedWithErrors)
                .with_summary("412 checked, 3 archives enabled")
                .with_error("1 mailbox failed")
                .with_steps(steps.clone()),
        )
        .await
        .unwrap();
    let done = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(done.job.status, JobStatus::CompletedWithErrors);
    assert_eq!(
        done.job.started_at,
        Some(start() + chrono::Duration::seconds(2))
    );
    assert_eq!(
        done.job.ended_at,
        Some(start() + chrono::Duration::seconds(92))
    );
    assert_eq!(done.job.duration_ms, Some(90_000));
    assert_eq!(
        done.job.summary.as_deref(),
        Some("412 checked, 3 archives enabled")
    );
    assert_eq!(done.job.error.as_deref(), Some("1 mailbox failed"));
    assert_eq!(done.steps, steps);
}

#[tokio::test]
async fn impossible_transitions_are_refused_with_both_states_named() {
    let f = open().await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    f.store.mark_running(&id).await.unwrap();
    let err = f.store.mark_running(&id).await.unwrap_err();
    assert!(
        matches!(
            err,
            HistoryError::InvalidTransition {
                from: JobStatus::Running,
                to: JobStatus::Running,
                ..
            }
        ),
        "{err:?}"
    );
    f.store
        .finish(&id, Outcome::new(JobStatus::Failed))
        .await
        .unwrap();
    let err = f
        .store
        .finish(&id, Outcome::new(JobStatus::Completed))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is Failed and cannot become Completed"),
        "{err}"
    );

    let err = f
        .store
        .finish(&id, Outcome::new(JobStatus::Running))
        .await
        .unwrap_err();
    assert!(matches!(err, HistoryError::NotFinal { .. }), "{err:?}");

    let unknown: JobId = "01JQ3Z8W6V3N9R2K5T7X4B1M0C".parse().unwrap();
    for err in [
        f.store.mark_running(&unknown).await.unwrap_err(),
        f.store
            .append_stream(&unknown, vec![NewStreamEntry::output("x")])
            .await
            .unwrap_err(),
        f.store.update_steps(&unknown, vec![]).await.unwrap_err(),
    ] {
        assert!(matches!(err, HistoryError::UnknownJob { .. }), "{err:?}");
    }
    assert_eq!(f.store.get_job(&unknown).await.unwrap(), None);
}

#[tokio::test]
async fn a_queued_job_can_be_cancelled_before_it_starts() {
    let f = open().await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    f.store
        .finish(
            &id,
            Outcome::new(JobStatus::Cancelled).with_error("replaced"),
        )
        .await
        .unwrap();
    let job = f.store.get_job(&id).await.unwrap().unwrap().job;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.started_at, None);
    assert_eq!(job.duration_ms, None);
}

#[tokio::test]
async fn a_skipped_occurrence_is_recorded_final_in_one_step() {
    let f = open().await;
    let id = f
        .store
        .record_skipped(new_job("archive"), "skipped: still running")
        .await
        .unwrap();
    let job = f.store.get_job(&id).await.unwrap().unwrap().job;
    assert_eq!(job.status, JobStatus::Skipped);
    assert_eq!(job.ended_at, Some(start()));
    assert_eq!(job.error.as_deref(), Some("skipped: still running"));
}

#[tokio::test]
async fn streams_keep_their_order_and_each_is_capped_with_the_rest_counted() {
    let f = open_with(HistorySettings {
        max_entries_per_stream: 3,
        ..HistorySettings::default()
    })
    .await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.push(NewStreamEntry::output(format!("out {i}")));
        batch.push(NewStreamEntry::progress(format!("progress {i}")));
    }
    batch.push(NewStreamEntry::warning("careful"));
    f.store.append_stream(&id, batch).await.unwrap();
    f.clock.advance(Duration::from_secs(1));
    f.store
        .append_stream(
            &id,
            vec![
                NewStreamEntry::plan("Set-Mailbox a", json!({"Identity": "a"})),
                NewStreamEntry::output("out late"),
            ],
        )
        .await
        .unwrap();

    let job = f.store.get_job(&id).await.unwrap().unwrap();
    let texts: Vec<_> = job
        .streams
        .iter()
        .map(|e| format!("{}:{}", e.kind, e.text))
        .collect();
    assert_eq!(
        texts,
        [
            "output:out 0",
            "output:out 1",
            "output:out 2",
            "progress:progress 2",
            "progress:progress 3",
            "progress:progress 4",
            "warning:careful",
            "plan:Set-Mailbox a",
        ]
    );
    let seqs: Vec<_> = job.streams.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(job.streams[7].data, Some(json!({"Identity": "a"})));
    assert_eq!(job.streams[7].time, start() + chrono::Duration::seconds(1));
    assert_eq!(job.dropped.get(&StreamKind::Output), Some(&3));
    assert_eq!(job.dropped.get(&StreamKind::Progress), Some(&2));
    assert_eq!(job.dropped.get(&StreamKind::Warning), None);
}

#[tokio::test]
async fn long_text_is_cut_and_oversized_data_is_left_out() {
    let f = open().await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    let long = "é".repeat(MAX_TEXT_BYTES);
    let big = json!({"blob": "x".repeat(MAX_DATA_BYTES)});
    f.store
        .append_stream(
            &id,
            vec![
                NewStreamEntry::output(long),
                NewStreamEntry::plan("big plan", big),
            ],
        )
        .await
        .unwrap();
    let job = f.store.get_job(&id).await.unwrap().unwrap();
    assert!(job.streams[0].text.len() < MAX_TEXT_BYTES + 64);
    assert!(job.streams[0].text.ends_with("[cut at 8192 bytes]"));
    assert_eq!(job.streams[1].data, None);
    assert!(
        job.streams[1].text.contains("not kept"),
        "{}",
        job.streams[1].text
    );
}

#[tokio::test]
async fn listing_filters_by_runbook_and_status_and_pages_newest_first() {
    let f = open().await;
    let mut ids = Vec::new();
    for (i, runbook) in ["a", "b", "a", "a", "b"].iter().enumerate() {
        let id = f.store.create_job(new_job(runbook)).await.unwrap();
        let status = if i % 2 == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Completed
        };
        f.store.finish(&id, Outcome::new(status)).await.unwrap();
        ids.push(id);
    }
    let list = |filter: JobFilter| {
        let store = f.store.clone();
        async move {
            store
                .list_jobs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(JobFilter::default()).await,
        ids.iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        list(JobFilter {
            runbook: Some("a".into()),
            ..JobFilter::default()
        })
        .await,
        [ids[3].clone(), ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        list(JobFilter {
            runbook: Some("a".into()),
            status: Some(JobStatus::Failed),
            ..JobFilter::default()
        })
        .await,
        [ids[2].clone(), ids[0].clone()]
    );
    let first_page = list(JobFilter {
        limit: 2,
        ..JobFilter::default()
    })
    .await;
    assert_eq!(first_page, [ids[4].clone(), ids[3].clone()]);
    let second_page = list(JobFilter {
        limit: 2,
        before: first_page.last().cloned(),
        ..JobFilter::default()
    })
    .await;
    assert_eq!(second_page, [ids[2].clone(), ids[1].clone()]);
}

#[tokio::test]
async fn last_status_ignores_skips_and_last_occurrence_feeds_the_missed_policy() {
    let f = open().await;
    let ran = f.store.create_job(new_job("a")).await.unwrap();
    f.store
        .finish(&ran, Outcome::new(JobStatus::Failed))
        .await
        .unwrap();
    let mut later = new_job("a");
    later.scheduled_for = Some(start() + chrono::Duration::hours(1));
    f.store.record_skipped(later, "skipped").await.unwrap();
    let mut manual = new_job("b");
    manual.trigger = Trigger::Manual;
    manual.scheduled_for = None;
    let b = f.store.create_job(manual).await.unwrap();

    let last = f.store.last_status_per_runbook().await.unwrap();
    assert_eq!(last["a"].id, ran);
    assert_eq!(last["a"].status, JobStatus::Failed);
    assert_eq!(last["b"].id, b);

    let occurrences = f.store.last_occurrence_per_runbook().await.unwrap();
    assert_eq!(
        occurrences.get("a"),
        Some(&(start() + chrono::Duration::hours(1)))
    );
    assert_eq!(
        occurrences.get("b"),
        None,
        "manual runs are not occurrences"
    );
}

#[tokio::test]
async fn jobs_left_running_by_a_previous_process_are_interrupted_at_the_next_open() {
    let f = open().await;
    let running = f.store.create_job(new_job("archive")).await.unwrap();
    f.store.mark_running(&running).await.unwrap();
    f.store
        .append_stream(&running, vec![NewStreamEntry::output("half way")])
        .await
        .unwrap();
    let queued = f.store.create_job(new_job("report")).await.unwrap();
    let finished = f.store.create_job(new_job("quota")).await.unwrap();
    f.store
        .finish(&finished, Outcome::new(JobStatus::Completed))
        .await
        .unwrap();
    // No close: the handles are dropped the way a dying process drops them.
    let Fixture {
        _dir,
        path,
        writer,
        store,
        ..
    } = f;
    drop(store);
    writer.await.unwrap();

    let later = start() + chrono::Duration::minutes(10);
    let clock: SharedClock = Arc::new(ManualClock::new(later));
    let (store, _writer) = HistoryStore::open(&path, &HistorySettings::default(), clock)
        .await
        .unwrap();
    let interrupted: Vec<_> = store
        .interrupted_at_open()
        .iter()
        .map(|j| j.id.clone())
        .collect();
    assert_eq!(interrupted, [running.clone(), queued.clone()]);

    let job = store.get_job(&running).await.unwrap().unwrap();
    assert_eq!(job.job.status, JobStatus::Interrupted);
    assert_eq!(job.job.ended_at, Some(later));
    assert!(
        job.job
            .error
            .as_deref()
            .unwrap_or("")
            .contains("stopped while this job was running")
    );
    let texts: Vec<_> = job
        .streams
        .iter()
        .map(|e| (e.kind, e.text.as_str()))
        .collect();
    assert_eq!(texts[0], (StreamKind::Output, "half way"));
    assert_eq!(texts[1].0, StreamKind::Error);
    assert!(texts[1].1.contains("interrupted"), "{texts:?}");

    let queued_job = store.get_job(&queued).await.unwrap().unwrap().job;
    assert_eq!(queued_job.status, JobStatus::Interrupted);
    assert!(
        queued_job
            .error
            .as_deref()
            .unwrap_or("")
            .contains("before this job started")
    );
    let finished_job = store.get_job(&finished).await.unwrap().unwrap().job;
    assert_eq!(finished_job.status, JobStatus::Completed);
}

#[tokio::test]
async fn close_flushes_everything_sent_before_and_refuses_later_writes() {
    let f = open().await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    let clone = f.store.clone();
    f.store.close().await.unwrap();
    f.writer.await.unwrap();
    let err = clone.create_job(new_job("archive")).await.unwrap_err();
    assert!(matches!(err, HistoryError::Closed), "{err:?}");
    // Reads keep working, and a fresh reader sees the job on disk.
    assert!(clone.get_job(&id).await.unwrap().is_some());
    let reader = HistoryReader::open(&f.path).unwrap();
    assert!(reader.get_job(&id).await.unwrap().is_some());
    // Closing twice is harmless.
    clone.close().await.unwrap();
}

#[tokio::test]
async fn pruning_deletes_only_finished_jobs_older_than_the_retention() {
    let f = open_with(HistorySettings {
        retention: crate::duration::HumanDuration::from_secs(24 * 3600),
        ..HistorySettings::default()
    })
    .await;
    let old_done = f.store.create_job(new_job("a")).await.unwrap();
    f.store
        .append_stream(&old_done, vec![NewStreamEntry::output("x")])
        .await
        .unwrap();
    f.store
        .finish(&old_done, Outcome::new(JobStatus::Completed))
        .await
        .unwrap();
    let old_running = f.store.create_job(new_job("a")).await.unwrap();
    f.store.mark_running(&old_running).await.unwrap();
    f.clock.advance(Duration::from_secs(20 * 3600));
    let recent = f.store.create_job(new_job("a")).await.unwrap();
    f.store
        .finish(&recent, Outcome::new(JobStatus::Completed))
        .await
        .unwrap();

    let now = start() + chrono::Duration::hours(25);
    assert_eq!(f.store.prune(now).await.unwrap(), 1);
    assert_eq!(f.store.get_job(&old_done).await.unwrap(), None);
    assert!(f.store.get_job(&old_running).await.unwrap().is_some());
    assert!(f.store.get_job(&recent).await.unwrap().is_some());
    assert_eq!(f.store.prune(now).await.unwrap(), 0);
    // The pruned job's stream entries and counters went with it.
    let conn = rusqlite::Connection::open(&f.path).unwrap();
    for table in ["stream_entries", "stream_counts"] {
        let left: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE job_id = ?1"),
                [old_done.as_str()],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(left, 0, "{table}");
    }
}

#[tokio::test]
async fn pruning_a_backlog_larger_than_one_chunk_deletes_it_all() {
    let f = open_with(HistorySettings {
        retention: crate::duration::HumanDuration::from_secs(3600),
        ..HistorySettings::default()
    })
    .await;
    for _ in 0..1100 {
        f.store
            .record_skipped(new_job("a"), "skipped")
            .await
            .unwrap();
    }
    let deleted = f
        .store
        .prune(start() + chrono::Duration::hours(2))
        .await
        .unwrap();
    assert_eq!(deleted, 1100);
    assert!(
        f.store
            .list_jobs(&JobFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_background_pruner_runs_when_the_clock_passes_its_interval() {
    let f = open_with(HistorySettings {
        retention: crate::duration::HumanDuration::from_secs(3600),
        ..HistorySettings::default()
    })
    .await;
    let id = f
        .store
        .record_skipped(new_job("a"), "skipped")
        .await
        .unwrap();
    let shared: SharedClock = Arc::new(f.clock.clone());
    let cancel = CancellationToken::new();
    let pruner = spawn_pruner(
        f.store.clone().into(),
        shared,
        Duration::from_secs(600),
        cancel.clone(),
    );
    // The first pass runs at once and finds nothing old enough.
    tokio::task::yield_now().await;
    assert!(f.store.get_job(&id).await.unwrap().is_some());

    // Two hours later the job is past the retention and the next pass removes it.
    f.clock.advance(Duration::from_secs(2 * 3600));
    let mut gone = false;
    for _ in 0..500 {
        if f.store.get_job(&id).await.unwrap().is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the pruner did not delete the expired job");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), pruner)
        .await
        .expect("the pruner stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn the_detail_serialises_flat_for_the_api() {
    let f = open().await;
    let mut job = new_job("archive");
    job.trigger = Trigger::CatchUp;
    let id = f.store.create_job(job).await.unwrap();
    let detail = f.store.get_job(&id).await.unwrap().unwrap();
    let value = serde_json::to_value(&detail).unwrap();
    assert_eq!(value["id"], id.as_str());
    assert_eq!(value["status"], "Queued");
    assert_eq!(value["trigger"], "catch-up");
    assert_eq!(value["past_due"], true);
    assert_eq!(value["scheduled_for"], "2026-03-05T06:00:00Z");
    assert_eq!(value["params"]["days"], 30);
    assert!(value["streams"].as_array().is_some_and(|s| s.is_empty()));
    let back: JobDetail = serde_json::from_value(value).unwrap();
    assert_eq!(back, detail);
}

#[test]
fn the_database_lives_in_the_state_directory() {
    assert_eq!(
        database_path(std::path::Path::new("/var/lib/rw")),
        std::path::Path::new("/var/lib/rw/history.sqlite3")
    );
    assert_eq!(
        HistorySettings::default().retention.get().as_secs(),
        30 * 24 * 3600
    );
}

#[test]
fn settings_that_make_no_sense_are_reported_by_key() {
    assert!(HistorySettings::default().problems().is_empty());
    let bad = HistorySettings {
        retention: crate::duration::HumanDuration::from_secs(60),
        max_entries_per_stream: 0,
        prune_interval: crate::duration::HumanDuration::from_secs(0),
        container: Some("Bad_Name".into()),
        spool_max_jobs: 0,
    };
    let keys: Vec<_> = bad.problems().into_iter().map(|(key, _)| key).collect();
    assert_eq!(
        keys,
        [
            "history.retention",
            "history.spool_max_jobs",
            "history.max_entries_per_stream",
            "history.container",
            "history.prune_interval"
        ]
    );
}

#[test]
fn sqlite_failures_are_classified_and_named_with_their_root_cause() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.sqlite3");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
    // A real SQLITE_FULL without filling a disk: cap the database at its current size.
    let pages: i64 = conn
        .pragma_query_value(None, "page_count", |row| row.get(0))
        .unwrap();
    conn.pragma_update(None, "max_page_count", pages).unwrap();
    let full = conn
        .execute("INSERT INTO t VALUES (zeroblob(100000))", [])
        .unwrap_err();
    let full = HistoryError::Sqlite {
        operation: "record a new job",
        source: full,
    };
    assert_eq!(full.kind(), FailureKind::DiskFull);
    assert!(full.kind().is_transient());
    let text = full.chain();
    assert!(
        text.starts_with("cannot record a new job in the job history: ")
            && text.contains("full")
            && text.ends_with("(SQLITE_FULL)"),
        "{text}"
    );

    // SQLITE_BUSY: another connection holds the database.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other.busy_timeout(Duration::ZERO).unwrap();
    let busy = other.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
    let busy = HistoryError::Sqlite {
        operation: "finish a job",
        source: busy,
    };
    assert_eq!(busy.kind(), FailureKind::Locked);
    let text = busy.chain();
    assert!(
        text.contains("database is locked") && text.ends_with("(SQLITE_BUSY)"),
        "{text}"
    );

    let table = [
        (HistoryError::Closed, FailureKind::Closed, false),
        (
            HistoryError::NotFinal {
                status: JobStatus::Running,
            },
            FailureKind::Other,
            false,
        ),
    ];
    for (error, kind, transient) in table {
        assert_eq!(error.kind(), kind, "{error}");
        assert_eq!(kind.is_transient(), transient, "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_job_refused_by_a_locked_database_is_kept_and_written_once_it_is_free() {
    let f = open().await;
    let id = f.store.create_job(new_job("archive")).await.unwrap();
    f.store.mark_running(&id).await.unwrap();
    assert_eq!(f.store.health().failing(), None);

    let holder = rusqlite::Connection::open(&f.path).unwrap();
    holder.busy_timeout(Duration::from_secs(30)).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = f
        .store
        .finish(&id, Outcome::new(JobStatus::Completed).with_summary("done"))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), FailureKind::Locked, "{}", refused.chain());
    let failing = f
        .store
        .health()
        .failing()
        .expect("the history reports unhealthy");
    assert!(failing.contains("SQLITE_BUSY"), "{failing}");
    // Readers still see it Running meanwhile (WAL).
    let job = f.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(job.job.status, JobStatus::Running);

    holder.execute_batch("ROLLBACK").unwrap();
    let written = async {
        loop {
            let job = f.store.get_job(&id).await.unwrap().unwrap();
            if job.job.status == JobStatus::Completed && f.store.health().failing().is_none() {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let job = tokio::time::timeout(Duration::from_secs(30), written)
        .await
        .expect("the kept end is written and the history is healthy again");
    assert_eq!(job.job.summary.as_deref(), Some("done"));
    f.store.close().await.unwrap();
    drop(f.store);
    f.writer.await.unwrap();
}

#[tokio::test]
async fn pruning_the_local_history_deletes_the_reports_of_the_jobs_it_prunes() {
    let f = open_with(HistorySettings {
        retention: crate::duration::HumanDuration::from_secs(24 * 3600),
        ..HistorySettings::default()
    })
    .await;
    let history = crate::history::JobHistory::from(f.store.clone());
    let reports_of = |id: &JobId| f.path.parent().unwrap().join("reports").join(id.as_str());
    let old = f.store.create_job(new_job("a")).await.unwrap();
    f.store
        .finish(&old, Outcome::new(JobStatus::Completed))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(20 * 3600));
    let recent = f.store.create_job(new_job("a")).await.unwrap();
    f.store
        .finish(&recent, Outcome::new(JobStatus::Completed))
        .await
        .unwrap();
    for id in [&old, &recent] {
        std::fs::create_dir_all(reports_of(id)).unwrap();
        std::fs::write(reports_of(id).join("users.csv"), "a,b\n1,2\n").unwrap();
    }
    let listed = history.get_job(&old).await.unwrap().unwrap().reports;
    assert_eq!(
        listed,
        [crate::history::ReportFile {
            file: "users.csv".into(),
            bytes: 8
        }]
    );

    let now = start() + chrono::Duration::hours(25);
    assert_eq!(history.prune(now).await.unwrap(), 1);
    assert!(
        !reports_of(&old).exists(),
        "the pruned job's reports are gone"
    );
    assert!(reports_of(&recent).join("users.csv").exists());
    assert_eq!(
        history
            .get_job(&recent)
            .await
            .unwrap()
            .unwrap()
            .reports
            .len(),
        1
    );
}
