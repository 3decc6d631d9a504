//! The job history as an operator reads it (`jobs`, `job ID` through the real binary) and
//! its durability when the process is killed.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use runbook_worker::history::{JobStatus, NewStreamEntry, StreamKind, Trigger};

use crate::support::history::{new_job, open_store, seed};
use crate::support::{run_binary, stderr, stdout};

#[tokio::test]
async fn jobs_lists_the_recorded_jobs_newest_first_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    // The default state.dir is `state` in the working directory.
    let seeded = seed(&dir.path().join("state")).await;

    let out = run_binary(dir.path(), &["jobs"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("ID"), "{text}");
    assert!(
        lines[0].contains("STATUS") && lines[0].contains("DURATION"),
        "{text}"
    );
    let order: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
        [
            seeded.skipped.as_str(),
            seeded.dry_run.as_str(),
            seeded.failed.as_str(),
            seeded.completed.as_str(),
        ]
    );
    let failed_row = lines[3];
    assert!(failed_row.contains("archive-mailboxes"), "{failed_row}");
    assert!(failed_row.contains("Failed"), "{failed_row}");
    assert!(failed_row.contains("manual"), "{failed_row}");
    assert!(lines[4].contains("2026-03-05 06:00:00"), "{}", lines[4]);
    assert!(lines[4].contains("30s"), "{}", lines[4]);
}

#[tokio::test]
async fn jobs_filters_by_runbook_status_and_limit_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("elsewhere");
    let seeded = seed(&state).await;
    let state_env = state.to_string_lossy().into_owned();
    let env = [("RUNBOOK_WORKER__STATE__DIR", state_env.as_str())];

    let ids = |args: &[&str]| -> Vec<String> {
        let out = run_binary(dir.path(), args, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let jobs: Value = serde_json::from_str(&stdout(&out)).expect("JSON output");
        jobs["jobs"]
            .as_array()
            .expect("{\"jobs\": [...]}, as GET /api/jobs")
            .iter()
            .map(|j| j["id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        ids(&["jobs", "--runbook", "archive-mailboxes", "--output", "json"]),
        [seeded.failed.to_string(), seeded.completed.to_string()]
    );
    assert_eq!(
        ids(&["jobs", "--status", "failed", "--output", "json"]),
        [seeded.failed.to_string()]
    );
    assert_eq!(
        ids(&["jobs", "--limit", "1", "--output", "json"]),
        [seeded.skipped.to_string()]
    );
    assert_eq!(
        ids(&[
            "jobs",
            "--before",
            seeded.dry_run.as_str(),
            "--limit",
            "1",
            "--output",
            "json"
        ]),
        [seeded.failed.to_string()]
    );

    let out = run_binary(dir.path(), &["jobs", "--output", "json"], &env);
    let jobs: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let dry_run = &jobs["jobs"][1];
    assert_eq!(dry_run["status"], "CompletedWithErrors");
    assert_eq!(dry_run["trigger"], "catch-up");
    assert_eq!(dry_run["past_due"], true);
    assert_eq!(dry_run["dry_run"], true);
}

#[tokio::test]
async fn jobs_refuses_an_unknown_status_and_lists_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("state")).await;
    let out = run_binary(dir.path(), &["jobs", "--status", "Done"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("CompletedWithErrors"), "{err}");
}

#[tokio::test]
async fn job_shows_the_record_its_steps_and_its_streams() {
    let dir = tempfile::tempdir().unwrap();
    let seeded = seed(&dir.path().join("state")).await;

    let out = run_binary(dir.path(), &["job", seeded.completed.as_str()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        seeded.completed.as_str(),
        "archive-mailboxes (sha256:archive-mailboxes)",
        "Completed",
        "3 archives enabled",
        "enable-archive",
        "412",
        "409",
        "output    412 mailboxes checked",
        "\"older_than_days\":30",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    // Lower-case ids work too, and JSON carries the plan's structured data.
    let lower = seeded.dry_run.as_str().to_lowercase();
    let out = run_binary(dir.path(), &["job", &lower, "--output", "json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(job["id"], seeded.dry_run.as_str());
    assert_eq!(job["streams"][0]["kind"], "plan");
    assert_eq!(job["streams"][0]["data"]["cmdlet"], "Set-Mailbox");
    assert_eq!(job["streams"][1]["kind"], "warning");
}

#[tokio::test]
async fn job_with_an_unknown_or_malformed_id_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("state")).await;

    let out = run_binary(dir.path(), &["job", "01JQ3Z8W6V3N9R2K5T7X4B1M0C"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no job 01JQ3Z8W6V3N9R2K5T7X4B1M0C"), "{err}");
    assert!(err.contains("history.sqlite3"), "{err}");

    let out = run_binary(dir.path(), &["job", "last-night"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a job id"), "{}", stderr(&out));
}

#[test]
fn jobs_without_a_history_names_the_path_it_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(
        dir.path(),
        &["jobs"],
        &[("RUNBOOK_WORKER__STATE__DIR", "no-such-dir")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no job history at"), "{err}");
    assert!(err.contains("no-such-dir/history.sqlite3"), "{err}");
    assert!(err.contains("state.dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "reading must not create the state directory"
    );
}

#[tokio::test]
async fn the_cli_reads_while_a_worker_holds_the_database_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _clock) = open_store(&dir.path().join("state")).await;
    let id = store
        .create_job(new_job("archive-mailboxes", Trigger::Api))
        .await
        .unwrap();
    store.mark_running(&id).await.unwrap();

    // The store is still open: the job is only in the write-ahead log so far.
    let out = run_binary(dir.path(), &["jobs", "--status", "running"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(id.as_str()), "{}", stdout(&out));
    assert!(stdout(&out).contains("running"), "{}", stdout(&out));

    // The reader did not disturb the writer.
    store
        .finish(
            &id,
            runbook_worker::history::Outcome::new(JobStatus::Completed),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
}

/// Set in the child process of the SIGKILL test, to the state directory it writes to.
const CHILD_STATE_DIR: &str = "RUNBOOK_WORKER_TEST_KILLED_CHILD_STATE";
/// Entries the child appends (each acknowledged) before it reports ready.
const CHILD_ENTRIES: usize = 200;

/// This test runs twice: as the parent, which re-runs the test binary filtered to this
/// test with [`CHILD_STATE_DIR`] set, and as that child, which records a running job and
/// waits to be killed. A real process killed with SIGKILL is the only honest way to show
/// that acknowledged writes survive it.
#[tokio::test]
async fn a_job_running_when_the_process_is_killed_is_interrupted_at_the_next_start() {
    if let Ok(state) = std::env::var(CHILD_STATE_DIR) {
        let (store, _clock) = open_store(std::path::Path::new(&state)).await;
        let id = store
            .create_job(new_job("archive-mailboxes", Trigger::Schedule))
            .await
            .unwrap();
        store.mark_running(&id).await.unwrap();
        for i in 0..CHILD_ENTRIES {
            store
                .append_stream(&id, vec![NewStreamEntry::output(format!("mailbox {i}"))])
                .await
                .unwrap();
        }
        println!("CHILD-READY {id}");
        // Wait to be killed; never close the store.
        std::future::pending::<()>().await;
    }

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let test_name = format!(
        "{}::a_job_running_when_the_process_is_killed_is_interrupted_at_the_next_start",
        module_path!()
            .split_once("::")
            .map(|(_, rest)| rest)
            .unwrap_or(module_path!())
    );
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            test_name.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE_DIR, &state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("re-run the test binary as the child");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let id = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints the test's name on the same line first.
            if let Some((_, id)) = line.split_once("CHILD-READY ") {
                return id.trim().to_string();
            }
        }
        panic!("the child exited without recording its job");
    })
    .await
    .expect("the child reports its job within a minute");

    let pid = nix::unistd::Pid::from_raw(child.id().expect("child pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "the child died of SIGKILL");

    // Before any worker starts again, the operator can already read what was recorded
    // (SQLite recovers the write-ahead log the killed process left behind).
    let out = run_binary(dir.path(), &["job", &id], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Running"), "{}", stdout(&out));
    assert!(stdout(&out).contains("mailbox 199"), "{}", stdout(&out));

    let (store, _clock) = open_store(&state).await;
    let id: runbook_worker::history::JobId = id.parse().unwrap();
    let interrupted: Vec<_> = store.interrupted_at_open().iter().map(|j| &j.id).collect();
    assert_eq!(interrupted, [&id]);
    let job = store.get_job(&id).await.unwrap().expect("the job survived");
    assert_eq!(job.job.status, JobStatus::Interrupted);
    let outputs = job
        .streams
        .iter()
        .filter(|e| e.kind == StreamKind::Output)
        .count();
    assert_eq!(outputs, CHILD_ENTRIES, "every acknowledged entry survived");
    let last = job.streams.last().unwrap();
    assert_eq!(last.kind, StreamKind::Error);
    assert!(
        last.text.contains("stopped while this job was running"),
        "{}",
        last.text
    );
    store.close().await.unwrap();

    // The operator sees it too.
    let out = run_binary(dir.path(), &["job", id.as_str()], &[]);
    assert!(stdout(&out).contains("Interrupted"), "{}", stdout(&out));
}
