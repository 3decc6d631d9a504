//! Job-history fixtures: databases prepared through the library, as the worker would
//! write them, for the `jobs` and `job` commands to read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use runbook_worker::clock::{ManualClock, SharedClock};
use runbook_worker::history::{
    self, HistorySettings, HistoryStore, JobId, JobStatus, NewJob, NewStreamEntry, Outcome,
    StepCounts, Trigger,
};

/// The instant the seeded history starts at.
pub fn seeded_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 5, 6, 0, 0).unwrap()
}

pub fn new_job(runbook: &str, trigger: Trigger) -> NewJob {
    NewJob {
        runbook: runbook.to_string(),
        file_hash: format!("sha256:{runbook}"),
        trigger,
        scheduled_for: matches!(trigger, Trigger::Schedule | Trigger::CatchUp).then(seeded_start),
        dry_run: false,
        params: json!({"older_than_days": 30})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    }
}

/// The ids of a seeded history, oldest first.
pub struct Seeded {
    pub database: PathBuf,
    /// archive-mailboxes, Completed, with steps and output.
    pub completed: JobId,
    /// archive-mailboxes, Failed, with an error entry.
    pub failed: JobId,
    /// quota-report, CompletedWithErrors, dry run with a plan entry.
    pub dry_run: JobId,
    /// quota-report, Skipped.
    pub skipped: JobId,
}

/// Opens a store on `<state_dir>/history.sqlite3` with a manual clock at
/// [`seeded_start`]; the caller closes it.
pub async fn open_store(state_dir: &Path) -> (HistoryStore, ManualClock) {
    let clock = ManualClock::new(seeded_start());
    let shared: SharedClock = Arc::new(clock.clone());
    let (store, _writer) = HistoryStore::open(
        &history::database_path(state_dir),
        &HistorySettings::default(),
        shared,
    )
    .await
    .expect("open the history store");
    (store, clock)
}

/// Writes four finished jobs to `<state_dir>/history.sqlite3` and closes the store.
pub async fn seed(state_dir: &Path) -> Seeded {
    let (store, clock) = open_store(state_dir).await;
    let tick = || clock.advance(std::time::Duration::from_secs(30));

    let completed = store
        .create_job(new_job("archive-mailboxes", Trigger::Schedule))
        .await
        .unwrap();
    store.mark_running(&completed).await.unwrap();
    tick();
    store
        .append_stream(
            &completed,
            vec![NewStreamEntry::output("412 mailboxes checked")],
        )
        .await
        .unwrap();
    store
        .finish(
            &completed,
            Outcome::new(JobStatus::Completed)
                .with_summary("3 archives enabled")
                .with_steps(vec![StepCounts {
                    step: "enable-archive".to_string(),
                    records_read: 412,
                    done: 3,
                    failed: 0,
                    skipped: 409,
                    writes_planned: 0,
                }]),
        )
        .await
        .unwrap();

    tick();
    let failed = store
        .create_job(new_job("archive-mailboxes", Trigger::Manual))
        .await
        .unwrap();
    store.mark_running(&failed).await.unwrap();
    store
        .append_stream(
            &failed,
            vec![NewStreamEntry::error("Get-Mailbox: 403 Forbidden")],
        )
        .await
        .unwrap();
    tick();
    store
        .finish(
            &failed,
            Outcome::new(JobStatus::Failed).with_error("Get-Mailbox: 403 Forbidden"),
        )
        .await
        .unwrap();

    tick();
    let mut report = new_job("quota-report", Trigger::CatchUp);
    report.dry_run = true;
    let dry_run = store.create_job(report).await.unwrap();
    store.mark_running(&dry_run).await.unwrap();
    store
        .append_stream(
            &dry_run,
            vec![
                NewStreamEntry::plan(
                    "Set-Mailbox alice@contoso.com",
                    json!({"cmdlet": "Set-Mailbox", "parameters": {"Identity": "alice@contoso.com"}}),
                ),
                NewStreamEntry::warning("bob@contoso.com has no quota"),
            ],
        )
        .await
        .unwrap();
    tick();
    store
        .finish(&dry_run, Outcome::new(JobStatus::CompletedWithErrors))
        .await
        .unwrap();

    tick();
    let skipped = store
        .record_skipped(
            new_job("quota-report", Trigger::Schedule),
            "skipped: the previous job was still running",
        )
        .await
        .unwrap();

    store.close().await.unwrap();
    Seeded {
        database: history::database_path(state_dir),
        completed,
        failed,
        dry_run,
        skipped,
    }
}
