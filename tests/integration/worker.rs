//! The worker: the scheduler loop in-process on a `ManualClock` (DST, overlap, missed runs),
//! the whole app in-process (hot reload, API auth, metrics), and the real `serve` binary
//! (kill -9 mid-job, SIGTERM with running jobs, `next`, storage faults, and several replicas
//! running each occurrence exactly once against Azurite).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Timelike as _, Utc};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use runbook_worker::coordination::OccurrenceState;
use runbook_worker::history::{self, HistoryReader, JobFilter, JobStatus, Trigger};
use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
use runbook_worker::simulator::identity::{
    IdentitySimulator, IdentitySimulatorConfig, SIMULATED_TENANT_ID,
};

use crate::support::app::TestApp;
use crate::support::coordination::{AzuriteContainer, SwitchableProxy, azurite_addr, fast_options};
use crate::support::http::{TOKEN, WRONG_TOKEN, bearer};
use crate::support::worker::{
    Engine, SOON, WorkerProcess, runbook, simulator_settings, spawn_with_fake_runner, utc,
};
use crate::support::{run_binary, stderr, stdout, wait_until};

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write a runbook");
}

fn statuses(jobs: &[history::JobSummary]) -> Vec<(String, JobStatus)> {
    jobs.iter()
        .map(|j| {
            (
                j.scheduled_for
                    .map(|t| t.format("%H:%M").to_string())
                    .unwrap_or_default(),
                j.status,
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The scheduler loop, in-process, on a ManualClock.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_engine_fires_at_the_dst_aware_instants_of_several_zones() {
    // (zone, expression, clock start, the instants the engine must fire at, why)
    let cases: &[(&str, &str, &str, &[&str], &str)] = &[
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-03-28T00:00:00Z",
            &[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
            "spring forward: 02:30 does not exist and runs once at 03:00 CEST",
        ),
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T00:00:00Z",
            &[
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
            ],
            "fall back: 02:30 happens twice and runs once, at its first occurrence",
        ),
        (
            "America/New_York",
            "0 * * * *",
            "2026-11-01T04:30:00Z",
            &[
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z",
            ],
            "hourly across fall back keeps its cadence in real time (01:00 EDT and 01:00 EST)",
        ),
        (
            "Australia/Sydney",
            "30 2 * * *",
            "2026-10-02T00:00:00Z",
            &[
                "2026-10-02T16:30:00Z",
                "2026-10-03T16:00:00Z",
                "2026-10-04T15:30:00Z",
            ],
            "southern spring forward: 02:30 runs at 03:00 AEDT",
        ),
    ];
    for (zone, expr, start, expected, why) in cases {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("runbooks")).unwrap();
        write(
            &root.path().join("runbooks"),
            "dst.toml",
            &runbook(&format!("schedule = \"{expr}\"\ntimezone = \"{zone}\"")),
        );
        let engine = Engine::start(root.path(), utc(start)).await;
        for want in *expected {
            let next = engine.next_run("dst").expect("a next run");
            assert_eq!(next, utc(want), "{zone} {expr}: {why}");
            engine.fire_and_finish("dst", next).await;
        }
        let jobs = engine
            .wait_jobs("dst", "three completed jobs", |jobs| {
                jobs.len() == 3 && jobs.iter().all(|j| j.status == JobStatus::Completed)
            })
            .await;
        let fired: Vec<DateTime<Utc>> = jobs.iter().filter_map(|j| j.scheduled_for).collect();
        let wanted: Vec<DateTime<Utc>> = expected.iter().map(|t| utc(t)).collect();
        assert_eq!(fired, wanted, "{zone} {expr}: {why}");
        assert!(jobs.iter().all(|j| j.trigger == Trigger::Schedule));
        engine.stop().await;
    }
}

#[tokio::test]
async fn overlap_skip_records_the_occurrence_as_skipped_while_the_job_runs() {
    let root = tempfile::tempdir().unwrap();
    let engine = Engine::with_tick_running(root.path(), "schedule = \"* * * * *\"").await;
    let jobs = engine.fire("tick", utc("2026-05-04T10:02:00Z")).await;
    assert_eq!(jobs[1].status, JobStatus::Skipped);
    assert!(
        jobs[1].error.as_deref().unwrap_or("").contains("overlap"),
        "{jobs:?}"
    );
    engine.runner.release("tick");
    engine
        .wait_jobs("tick", "the first job completed", |j| {
            j[0].status == JobStatus::Completed
        })
        .await;
    engine.fire("tick", utc("2026-05-04T10:03:00Z")).await;
    let jobs = engine
        .wait_jobs("tick", "the third job completed", |j| {
            j.len() == 3 && j[2].status == JobStatus::Completed
        })
        .await;
    assert_eq!(
        statuses(&jobs),
        [
            ("10:01".to_string(), JobStatus::Completed),
            ("10:02".to_string(), JobStatus::Skipped),
            ("10:03".to_string(), JobStatus::Completed),
        ]
    );
    engine.stop().await;
}

#[tokio::test]
async fn overlap_queue_keeps_one_occurrence_waiting_and_skips_the_next() {
    let root = tempfile::tempdir().unwrap();
    let engine =
        Engine::with_tick_running(root.path(), "schedule = \"* * * * *\"\noverlap = \"queue\"")
            .await;
    let jobs = engine.fire("tick", utc("2026-05-04T10:02:00Z")).await;
    assert_eq!(
        jobs[1].status,
        JobStatus::Queued,
        "recorded from the moment it is due"
    );
    let jobs = engine.fire("tick", utc("2026-05-04T10:03:00Z")).await;
    assert_eq!(jobs[2].status, JobStatus::Skipped);
    assert!(
        jobs[2].error.as_deref().unwrap_or("").contains("queue"),
        "{jobs:?}"
    );
    engine.runner.release("tick");
    let jobs = engine
        .wait_jobs("tick", "the queued job completed", |j| {
            j[0].status == JobStatus::Completed && j[1].status == JobStatus::Completed
        })
        .await;
    assert_eq!(
        statuses(&jobs),
        [
            ("10:01".to_string(), JobStatus::Completed),
            ("10:02".to_string(), JobStatus::Completed),
            ("10:03".to_string(), JobStatus::Skipped),
        ]
    );
    // The queued job ran after the first one ended, never alongside it.
    assert!(jobs[1].started_at >= jobs[0].ended_at, "{jobs:#?}");
    engine.stop().await;
}

#[tokio::test]
async fn overlap_replace_cancels_the_running_job_and_runs_the_new_occurrence() {
    let root = tempfile::tempdir().unwrap();
    let engine = Engine::with_tick_running(
        root.path(),
        "schedule = \"* * * * *\"\noverlap = \"replace\"",
    )
    .await;
    engine.fire("tick", utc("2026-05-04T10:02:00Z")).await;
    engine
        .wait_jobs(
            "tick",
            "the first job cancelled and the second running",
            |j| {
                j.len() == 2
                    && j[0].status == JobStatus::Cancelled
                    && j[1].status == JobStatus::Running
            },
        )
        .await;
    engine.runner.release("tick");
    let jobs = engine
        .wait_jobs("tick", "the replacement completed", |j| {
            j[1].status == JobStatus::Completed
        })
        .await;
    assert_eq!(
        statuses(&jobs),
        [
            ("10:01".to_string(), JobStatus::Cancelled),
            ("10:02".to_string(), JobStatus::Completed),
        ]
    );
    engine.stop().await;
}

#[tokio::test]
async fn after_downtime_run_once_catches_up_once_and_skip_does_not() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("runbooks");
    std::fs::create_dir_all(&dir).unwrap();
    write(
        &dir,
        "once.toml",
        &runbook("schedule = \"0 6 * * *\"\nmissed = \"run-once\""),
    );
    write(
        &dir,
        "skipper.toml",
        &runbook("schedule = \"0 6 * * *\"\nmissed = \"skip\""),
    );
    write(
        &dir,
        "fresh-only.toml",
        &runbook("schedule = \"0 6 * * *\"\nmissed = \"run-once\"\nmax_lateness = \"1h\""),
    );
    let first_day = utc("2026-03-02T06:00:00Z");
    let engine = Engine::start(root.path(), utc("2026-03-02T05:59:00Z")).await;
    engine.clock.set(first_day);
    for name in ["once", "skipper", "fresh-only"] {
        engine
            .wait_jobs(name, "the 06:00 job", |j| {
                j.len() == 1 && j[0].status == JobStatus::Completed
            })
            .await;
    }
    engine.stop().await;

    // Three days of downtime; the worker comes back at 08:00.
    let engine = Engine::start(root.path(), utc("2026-03-05T08:00:00Z")).await;
    let jobs = engine
        .wait_jobs("once", "one catch-up job", |j| {
            j.len() == 2 && j[1].status == JobStatus::Completed
        })
        .await;
    assert_eq!(jobs[1].trigger, Trigger::CatchUp);
    assert!(jobs[1].past_due);
    assert_eq!(jobs[1].scheduled_for, Some(utc("2026-03-05T06:00:00Z")));
    // The catch-ups are decided together at start: by now the others had their chance.
    assert_eq!(
        engine.jobs("skipper").await.len(),
        1,
        "missed = skip never catches up"
    );
    assert_eq!(
        engine.jobs("fresh-only").await.len(),
        1,
        "two hours late is beyond max_lateness = 1h"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_reload_of_a_removed_folder_keeps_every_runbook_scheduled_and_says_why() {
    let root = tempfile::tempdir().unwrap();
    let runbooks = root.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    write(
        &runbooks,
        "hourly.toml",
        &runbook("schedule = \"0 * * * *\""),
    );
    let engine = Engine::start(root.path(), utc("2026-05-04T10:00:30Z")).await;
    let before = engine.next_run("hourly");
    assert_eq!(before, Some(utc("2026-05-04T11:00:00Z")));

    std::fs::remove_dir_all(&runbooks).unwrap();
    engine.handle.reload();
    let ok = wait_until(SOON, || async {
        engine.handle.catalog().folder_error().is_some()
    })
    .await;
    assert!(ok, "the reload reports the unreadable folder");
    let catalog = engine.handle.catalog();
    let why = catalog.folder_error().unwrap();
    assert!(
        why.message.contains("cannot read the runbooks folder"),
        "{why:?}"
    );
    assert_eq!(catalog.len(), 1, "the runbook stays in force");
    // And it still fires at its next instant.
    engine.fire("hourly", utc("2026-05-04T11:00:00Z")).await;
    engine.stop().await;
}

// ---------------------------------------------------------------------------------------
// The whole app in-process: hot reload, the API, metrics.
// ---------------------------------------------------------------------------------------

async fn runbooks_view(app: &TestApp) -> Value {
    app.get_json("/api/runbooks").await
}

fn find<'a>(view: &'a Value, name: &str) -> Option<&'a Value> {
    view["runbooks"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name)
}

async fn wait_view(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let ok = wait_until(SOON, || async { check(&runbooks_view(app).await) }).await;
    let view = runbooks_view(app).await;
    assert!(ok, "timed out waiting for {what}: {view:#}");
    view
}

#[tokio::test]
async fn a_reload_applies_valid_changes_keeps_the_last_good_version_and_never_interrupts_a_job() {
    let (app, runner) = spawn_with_fake_runner(
        &[("a.toml", &runbook("description = \"version one\""))],
        &[],
    )
    .await;
    let dir = app.runbooks_dir();
    runner.hold("a");
    let job = app
        .scheduler
        .run("a", Vec::new(), false, Trigger::Manual)
        .await
        .expect("run a");

    // Invalid: the last good version stays, with the error (file, line, message) shown.
    write(
        &dir,
        "a.toml",
        "description = \"version two\"\n[[steps]]\nname = \"find\"\ncmdlet = 42\n",
    );
    let view = wait_view(&app, "the validation error of a.toml", |v| {
        find(v, "a").is_some_and(|a| !a["validation_error"].is_null())
    })
    .await;
    let a = find(&view, "a").unwrap();
    assert_eq!(a["description"], "version one");
    assert_eq!(a["validation_error"]["line"], 4);
    assert!(
        a["validation_error"]["file"]
            .as_str()
            .unwrap()
            .ends_with("a.toml")
    );
    let page = app
        .http
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("a.toml"),
        "the dashboard lists the invalid file"
    );

    // Fixed again: the new version is in force and the error is gone.
    write(&dir, "a.toml", &runbook("description = \"version three\""));
    wait_view(&app, "version three without error", |v| {
        find(v, "a")
            .is_some_and(|a| a["description"] == "version three" && a["validation_error"].is_null())
    })
    .await;

    // A file that never loaded is listed as invalid; nothing of it runs.
    write(&dir, "b.toml", "schedule = \"not cron\"\n");
    let view = wait_view(&app, "b.toml listed as invalid", |v| {
        v["invalid_files"].as_array().is_some_and(|f| !f.is_empty())
    })
    .await;
    assert!(find(&view, "b").is_none());
    assert!(
        view["invalid_files"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cron")
    );

    // Deleted: the runbook leaves the catalog; the invalid file's error goes with it.
    std::fs::remove_file(dir.join("a.toml")).unwrap();
    std::fs::remove_file(dir.join("b.toml")).unwrap();
    wait_view(&app, "an empty catalog", |v| {
        v["runbooks"].as_array().is_some_and(|r| r.is_empty())
            && v["invalid_files"].as_array().is_some_and(|f| f.is_empty())
    })
    .await;

    // The job started before all that kept running on its version and ends normally.
    let running = app.get_json(&format!("/api/jobs/{job}")).await;
    assert_eq!(running["status"], "Running", "{running:#}");
    runner.release("a");
    let ok = wait_until(SOON, || async {
        app.get_json(&format!("/api/jobs/{job}")).await["status"] == "Completed"
    })
    .await;
    assert!(ok, "the running job completes after the reloads");
    assert_eq!(runner.started()[0].runbook.description, "version one");
    app.stop().await;
}

#[tokio::test]
async fn temporary_names_are_ignored_and_a_write_in_two_parts_loads_once_complete() {
    let (app, _runner) = spawn_with_fake_runner(&[], &[]).await;
    let dir = app.runbooks_dir();
    for temp in [
        ".c.toml.swp",
        "c.toml~",
        "c.toml.tmp",
        ".hidden.toml",
        "#c.toml#",
    ] {
        write(&dir, temp, "this is not TOML [[[");
    }
    // A file written in two parts (as a slow copy does) within the debounce time.
    let text = runbook("description = \"complete\"");
    let (head, tail) = text.split_at(text.len() / 2);
    write(&dir, "c.toml", head);
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(&dir, "c.toml", &(head.to_string() + tail));
    // Written whole under a temporary name, then renamed into place.
    write(&dir, "d.toml.tmp", &runbook("description = \"renamed\""));
    std::fs::rename(dir.join("d.toml.tmp"), dir.join("d.toml")).unwrap();

    let view = wait_view(&app, "c and d loaded", |v| {
        find(v, "c").is_some() && find(v, "d").is_some()
    })
    .await;
    assert_eq!(find(&view, "c").unwrap()["description"], "complete");
    assert!(find(&view, "c").unwrap()["validation_error"].is_null());
    assert_eq!(find(&view, "d").unwrap()["description"], "renamed");
    assert_eq!(view["runbooks"].as_array().unwrap().len(), 2, "{view:#}");
    assert_eq!(
        view["invalid_files"],
        json!([]),
        "temporary names are never loaded"
    );
    app.stop().await;
}

#[tokio::test]
async fn changes_need_the_token_and_a_refused_request_changes_nothing() {
    let (app, runner) = spawn_with_fake_runner(
        &[("a.toml", &runbook(""))],
        &[("RUNBOOK_WORKER__HTTP__API_TOKEN", TOKEN)],
    )
    .await;
    let run = app.url("/api/runbooks/a/run");
    let no_header = app.http.post(&run).send().await.unwrap();
    assert_eq!(no_header.status(), 401);
    let wrong = app
        .http
        .post(&run)
        .header("authorization", bearer(WRONG_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(app.get_json("/api/jobs").await["jobs"], json!([]));
    assert!(runner.started().is_empty());

    runner.hold("a");
    let accepted = app
        .http
        .post(&run)
        .header("authorization", bearer(TOKEN))
        .json(&json!({"params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let body: Value = accepted.json().await.unwrap();
    let id = body["job_id"].as_str().unwrap().to_string();
    let job = app.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["trigger"], "api");

    let cancel = app.url(&format!("/api/jobs/{id}/cancel"));
    assert_eq!(app.http.post(&cancel).send().await.unwrap().status(), 401);
    assert_eq!(
        app.http
            .post(&cancel)
            .header("authorization", bearer(WRONG_TOKEN))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let ok = wait_until(SOON, || async {
        app.get_json(&format!("/api/jobs/{id}")).await["status"] == "Running"
    })
    .await;
    assert!(ok, "the job is still running after the refused cancels");
    let cancelled = app
        .http
        .post(&cancel)
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 202);
    let ok = wait_until(SOON, || async {
        app.get_json(&format!("/api/jobs/{id}")).await["status"] == "Cancelled"
    })
    .await;
    assert!(ok, "the job ends Cancelled");
    let again = app
        .http
        .post(&cancel)
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status(),
        409,
        "an ended job cannot be cancelled again"
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_jobs_lateness_and_runbooks_after_a_job() {
    let (app, _runner) = spawn_with_fake_runner(
        &[("a.toml", &runbook("")), ("broken.toml", "cmdlet = 1\n")],
        &[("RUNBOOK_WORKER__HTTP__API_TOKEN", TOKEN)],
    )
    .await;
    let response = app
        .http
        .post(app.url("/api/runbooks/a/run"))
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = wait_until(SOON, || async {
        app.get_json(&format!("/api/jobs/{id}")).await["status"] == "Completed"
    })
    .await;
    assert!(ok, "the job completes");
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "runbook_worker_jobs_total{runbook=\"a\",status=\"Completed\"} 1",
        "runbook_worker_job_duration_seconds_count{runbook=\"a\"} 1",
        "runbook_worker_schedule_lateness_seconds_count 1",
        "runbook_worker_runbooks_loaded 1",
        "runbook_worker_runbooks_invalid 1",
        "runbook_worker_jobs_running 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from:\n{text}"
        );
    }
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let view = runbooks_view(&app).await;
    assert_eq!(find(&view, "a").unwrap()["last_status"], "Completed");
    assert_eq!(find(&view, "a").unwrap()["last_job_id"], id.as_str());
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// The real binary.
// ---------------------------------------------------------------------------------------

/// The identity endpoint and Exchange tenant the worker processes of a test share.
struct Tenant {
    identity: IdentitySimulator,
    exchange: ExchangeSimulator,
}

impl Tenant {
    async fn start(latency: Duration) -> Tenant {
        let identity = IdentitySimulator::start(IdentitySimulatorConfig::default())
            .await
            .expect("start the identity simulator");
        let exchange = ExchangeSimulator::start(
            SimulatorConfig {
                tenant_id: SIMULATED_TENANT_ID.to_string(),
                mailboxes: 120,
                ..SimulatorConfig::default()
            }
            .with_latency(latency),
        )
        .await
        .expect("start the Exchange simulator");
        Tenant { identity, exchange }
    }

    fn settings(&self) -> String {
        simulator_settings(&self.identity.base_url(), &self.exchange.base_url())
    }
}

/// A worker directory: `runbooks/`, `state/` and `worker.toml` with `extra` appended.
fn worker_dir(tenant: &Tenant, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    let config = format!(
        "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n[http]\nlisten = \"127.0.0.1:0\"\napi_token = \"{TOKEN}\"\n{}\n{extra}\n",
        tenant.settings()
    );
    std::fs::write(dir.path().join("worker.toml"), config).unwrap();
    dir
}

async fn post_run(worker: &WorkerProcess, runbook: &str) -> String {
    let response = reqwest::Client::new()
        .post(worker.url(&format!("/api/runbooks/{runbook}/run")))
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .expect("POST run");
    assert_eq!(
        response.status(),
        202,
        "{}",
        response.text().await.unwrap_or_default()
    );
    response.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn job_status(worker: &WorkerProcess, id: &str) -> String {
    let job: Value = reqwest::get(worker.url(&format!("/api/jobs/{id}")))
        .await
        .expect("GET job")
        .json()
        .await
        .expect("job JSON");
    job["status"].as_str().unwrap_or_default().to_string()
}

/// Reads every `Get-MailboxStatistics` call for each mailbox, one at a time: about one
/// call per mailbox, each as slow as the tenant's latency.
const SLOW_STEPS: &str = "[[steps]]\nname = \"all\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = \"Unlimited\" }\n\n\
[[steps]]\nname = \"sizes\"\ncmdlet = \"Get-MailboxStatistics\"\nfor_each = \"all\"\nconcurrency = 1\nparameters = { Identity = \"{{ item.ExternalDirectoryObjectId }}\" }\n";

/// How long the history tests wait: every write the worker tries while the database is
/// locked waits out SQLite's busy timeout (5 s) before it fails.
const LOCKED_WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_history_makes_the_worker_unready_counts_dropped_occurrences_and_recovers() {
    let tenant = Tenant::start(Duration::from_secs(2)).await;
    let dir = worker_dir(&tenant, "");
    let runbooks = dir.path().join("runbooks");
    write(&runbooks, "quick.toml", &runbook(""));
    write(
        &runbooks,
        "tick.toml",
        &runbook("schedule = \"*/5 * * * * *\""),
    );
    let mut worker = WorkerProcess::spawn(dir.path(), "worker.log");
    worker.wait_ready().await;
    let quick = post_run(&worker, "quick").await;
    let ok = wait_until(SOON, || async {
        job_status(&worker, &quick).await == "Running"
    })
    .await;
    assert!(ok, "the job runs");

    // Another process holds the database: every write of the worker fails with SQLITE_BUSY.
    let lock =
        rusqlite::Connection::open(history::database_path(&dir.path().join("state"))).unwrap();
    lock.busy_timeout(Duration::from_secs(30)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let ok = wait_until(LOCKED_WAIT, || async {
        let response = reqwest::get(worker.url("/readyz")).await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        status == 503
            && body["problems"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p.as_str()
                        .is_some_and(|p| p.contains("refuses writes") && p.contains("SQLITE_BUSY"))
                })
            })
    })
    .await;
    assert!(
        ok,
        "/readyz names the locked history; log:\n{}",
        worker.logs()
    );
    let ok = wait_until(LOCKED_WAIT, || async {
        let logs = worker.logs();
        logs.lines().any(|l| {
            l.contains("cannot record a job in the history")
                && l.contains("\"tick\"")
                && l.contains("database is locked")
                && l.contains("\"locked\"")
        }) && logs.contains("cannot record the end of a job yet")
    })
    .await;
    assert!(
        ok,
        "each dropped occurrence and the unwritten end are logged with their cause; log:\n{}",
        worker.logs()
    );
    let metrics = reqwest::get(worker.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "runbook_worker_occurrences_dropped_total{runbook=\"tick\",reason=\"locked\"}"
        ),
        "{metrics}"
    );

    // The lock goes: the worker is ready again, the kept end is written, occurrences run.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let ok = wait_until(LOCKED_WAIT, || async {
        reqwest::get(worker.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok, "/readyz recovers; log:\n{}", worker.logs());
    let ok = wait_until(LOCKED_WAIT, || async {
        job_status(&worker, &quick).await == "Completed"
    })
    .await;
    assert!(
        ok,
        "the job that ended while the history was locked is recorded Completed; log:\n{}",
        worker.logs()
    );
    let ok = wait_until(LOCKED_WAIT, || async {
        let jobs: Value = reqwest::Client::new()
            .get(worker.url("/api/jobs?runbook=tick&status=Completed"))
            .header("authorization", bearer(TOKEN))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jobs["jobs"].as_array().is_some_and(|j| !j.is_empty())
    })
    .await;
    assert!(
        ok,
        "scheduled occurrences are recorded again; log:\n{}",
        worker.logs()
    );
    worker.signal(Signal::SIGTERM);
    assert!(worker.wait_exit(Duration::from_secs(60)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_sigkill_is_interrupted_at_the_next_start() {
    let tenant = Tenant::start(Duration::from_millis(200)).await;
    let dir = worker_dir(&tenant, "");
    write(&dir.path().join("runbooks"), "slow.toml", SLOW_STEPS);
    let mut worker = WorkerProcess::spawn(dir.path(), "first.log");
    worker.wait_ready().await;
    let id = post_run(&worker, "slow").await;
    let ok = wait_until(SOON, || async {
        job_status(&worker, &id).await == "Running"
    })
    .await;
    assert!(ok, "the job runs");
    worker.kill9();

    let mut restarted = WorkerProcess::spawn(dir.path(), "second.log");
    restarted.wait_ready().await;
    let job: Value = reqwest::get(restarted.url(&format!("/api/jobs/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "Interrupted", "{job:#}");
    let ready = reqwest::get(restarted.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    restarted.signal(Signal::SIGTERM);
    assert!(restarted.wait_exit(SOON).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_short_jobs_finish_cancels_long_ones_after_the_grace_and_exits_0() {
    let tenant = Tenant::start(Duration::from_millis(300)).await;
    let dir = worker_dir(&tenant, "[worker]\nshutdown_grace = \"3s\"\n");
    let runbooks = dir.path().join("runbooks");
    write(&runbooks, "quick.toml", &runbook(""));
    write(&runbooks, "long.toml", SLOW_STEPS);
    let mut worker = WorkerProcess::spawn(dir.path(), "worker.log");
    worker.wait_ready().await;

    // SIGHUP reloads the folder.
    write(&runbooks, "added.toml", &runbook(""));
    worker.signal(Signal::SIGHUP);
    let ok = wait_until(SOON, || async {
        worker.logs().contains("SIGHUP: reloading")
            && reqwest::get(worker.url("/api/runbooks/added"))
                .await
                .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ok, "SIGHUP reloads; log:\n{}", worker.logs());

    let long = post_run(&worker, "long").await;
    let quick = post_run(&worker, "quick").await;
    let ok = wait_until(SOON, || async {
        job_status(&worker, &long).await == "Running"
            && job_status(&worker, &quick).await == "Running"
    })
    .await;
    assert!(ok, "both jobs run");
    worker.signal(Signal::SIGTERM);
    let ok = wait_until(SOON, || async {
        reqwest::get(worker.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(ok, "/readyz turns 503 during the grace period");
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0; log:\n{}", worker.logs());

    let reader = HistoryReader::open(&history::database_path(&dir.path().join("state"))).unwrap();
    let jobs = reader.list_jobs(&JobFilter::default()).await.unwrap();
    let status_of = |id: &str| jobs.iter().find(|j| j.id.as_str() == id).map(|j| j.status);
    assert_eq!(status_of(&quick), Some(JobStatus::Completed), "{jobs:#?}");
    assert_eq!(status_of(&long), Some(JobStatus::Cancelled), "{jobs:#?}");
}

#[tokio::test]
async fn next_prints_fire_times_in_the_zone_and_in_utc() {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    write(
        &runbooks,
        "nightly.toml",
        &runbook("schedule = \"30 2 * * *\"\ntimezone = \"Europe/Berlin\""),
    );
    let env = [("RUNBOOK_WORKER__RUNBOOKS__DIR", "runbooks")];
    let out = run_binary(
        dir.path(),
        &[
            "next",
            "nightly",
            "-n",
            "3",
            "--from",
            "2026-03-28T00:00:00Z",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("nightly ("), "{text}");
    assert!(
        lines[0].ends_with(": 30 2 * * * in Europe/Berlin"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("Europe/Berlin") && lines[1].ends_with("UTC"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = lines[2..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "2026-03-28",
                "02:30:00",
                "CET",
                "(+01:00)",
                "2026-03-28T01:30:00Z"
            ],
            vec![
                "2026-03-29",
                "03:00:00",
                "CEST",
                "(+02:00)",
                "2026-03-29T01:00:00Z"
            ],
            vec![
                "2026-03-30",
                "02:30:00",
                "CEST",
                "(+02:00)",
                "2026-03-30T00:30:00Z"
            ],
        ],
        "{text}"
    );

    let by_file = run_binary(
        dir.path(),
        &[
            "next",
            "runbooks/nightly.toml",
            "-n",
            "2",
            "--format",
            "json",
        ],
        &env,
    );
    assert!(by_file.status.success(), "{}", stderr(&by_file));
    let report: Value = serde_json::from_str(&stdout(&by_file)).unwrap();
    assert_eq!(report["time_zone"], "Europe/Berlin");
    assert_eq!(report["next"].as_array().unwrap().len(), 2);

    let unknown = run_binary(dir.path(), &["next", "nightlee"], &env);
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("nightly"), "{}", stderr(&unknown));
}

// ---------------------------------------------------------------------------------------
// Several replicas against Azurite.
// ---------------------------------------------------------------------------------------

fn coordination_settings(sas_url: &str, replica: &str, extra: &str) -> String {
    format!(
        "[coordination]\nkind = \"azure-blob\"\nsas_url = \"{sas_url}\"\nreplica_id = \"{replica}\"\norphan_grace = \"2s\"\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_stops_work_interrupts_the_running_job_and_readiness_recovers() {
    use secrecy::ExposeSecret as _;
    let tenant = Tenant::start(Duration::from_millis(200)).await;
    let proxy = SwitchableProxy::start(azurite_addr()).await;
    let container = AzuriteContainer::new().with_endpoint(proxy.endpoint());
    let dir = worker_dir(
        &tenant,
        &coordination_settings(
            container.sas_url().expose_secret(),
            "faulty",
            "renew_interval = \"1s\"\nrequest_timeout = \"1s\"\nmax_retries = 0",
        ),
    );
    // Scheduled, so that it runs under a lease: every 5 s, one job at a time.
    write(
        &dir.path().join("runbooks"),
        "slow.toml",
        &format!("schedule = \"*/5 * * * * *\"\n{SLOW_STEPS}"),
    );
    let mut worker = WorkerProcess::spawn(dir.path(), "worker.log");
    worker.wait_ready().await;
    let running = || async {
        let jobs: Value = reqwest::get(worker.url("/api/jobs?runbook=slow&status=Running"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        jobs["jobs"][0]["id"].as_str().map(str::to_string)
    };
    let id = std::sync::Mutex::new(None);
    let ok = wait_until(Duration::from_secs(20), || async {
        let found = running().await;
        let some = found.is_some();
        *id.lock().unwrap() = found;
        some
    })
    .await;
    assert!(ok, "a scheduled job runs; log:\n{}", worker.logs());
    let id = id.into_inner().unwrap().unwrap();

    proxy.set_up(false);
    let ok = wait_until(Duration::from_secs(20), || async {
        reqwest::get(worker.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(ok, "/readyz says the store is unreachable");
    let ok = wait_until(Duration::from_secs(20), || async {
        job_status(&worker, &id).await == "Interrupted"
    })
    .await;
    assert!(
        ok,
        "the job is stopped and recorded Interrupted; log:\n{}",
        worker.logs()
    );
    let ready: Value = reqwest::get(worker.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"]["coordination"]["state"], "unreachable",
        "{ready:#}"
    );

    proxy.set_up(true);
    let ok = wait_until(Duration::from_secs(20), || async {
        reqwest::get(worker.url("/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(
        ok,
        "readiness recovers with the store; log:\n{}",
        worker.logs()
    );
    assert!(
        !worker.logs().contains(&container.signature()),
        "the SAS signature never reaches the log"
    );
    worker.signal(Signal::SIGTERM);
    assert!(worker.wait_exit(Duration::from_secs(40)).await.success());
}

/// The instants of `runbook`'s `Set-Mailbox` calls the tenant received, with how many times
/// each was received.
fn calls_per_instant(exchange: &ExchangeSimulator) -> BTreeMap<DateTime<Utc>, usize> {
    let mut out = BTreeMap::new();
    for request in exchange.requests() {
        if request.cmdlet() != Some("Set-Mailbox") {
            continue;
        }
        if let Some(at) = request
            .parameters()
            .and_then(|p| p.get("CustomAttribute1"))
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            *out.entry(at.with_timezone(&Utc)).or_insert(0) += 1;
        }
    }
    out
}

/// The first whole second at or after `t`.
fn ceil_second(t: DateTime<Utc>) -> DateTime<Utc> {
    let floor = t.with_nanosecond(0).unwrap();
    if floor == t {
        t
    } else {
        floor + chrono::Duration::seconds(1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_run_every_occurrence_exactly_once_through_a_kill_and_a_restart() {
    use secrecy::ExposeSecret as _;
    let tenant = Tenant::start(Duration::from_millis(100)).await;
    let target = tenant.exchange.mailboxes()[0].primary_smtp_address.clone();
    let container = AzuriteContainer::new();
    let sas = container.sas_url().expose_secret().to_string();
    let fast = format!(
        "schedule = \"* * * * * *\"\nmissed = \"run-once\"\n[[steps]]\nname = \"stamp\"\ncmdlet = \"Set-Mailbox\"\nparameters = {{ Identity = \"{target}\", CustomAttribute1 = \"{{{{ job.scheduled_for }}}}\" }}\n"
    );
    // Twice a minute, a job of several seconds: the one a replica dies in.
    let slow = format!("schedule = \"0,30 * * * * *\"\n{SLOW_STEPS}");

    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|i| {
            let dir = worker_dir(
                &tenant,
                &coordination_settings(&sas, &format!("replica-{i}"), ""),
            );
            write(&dir.path().join("runbooks"), "fast.toml", &fast);
            write(&dir.path().join("runbooks"), "slow.toml", &slow);
            dir
        })
        .collect();
    let mut workers: Vec<WorkerProcess> = dirs
        .iter()
        .map(|d| WorkerProcess::spawn(d.path(), "first.log"))
        .collect();
    for worker in &mut workers {
        worker.wait_ready().await;
    }
    let start = ceil_second(Utc::now()) + chrono::Duration::seconds(1);

    // Kill the replica that runs a slow job, half a second into a second (the fast job of
    // that second has ended by then), at least a second into the slow job.
    let victim = std::sync::Mutex::new(None);
    let found = wait_until(Duration::from_secs(45), || {
        let workers = &workers;
        let victim = &victim;
        async move {
            let now = Utc::now();
            if !(400..700).contains(&now.timestamp_subsec_millis()) {
                return false;
            }
            for worker in workers {
                let Ok(response) = reqwest::get(worker.url("/api/jobs?status=Running")).await
                else {
                    continue;
                };
                let Ok(jobs) = response.json::<Value>().await else {
                    continue;
                };
                let running: Vec<&Value> = jobs["jobs"].as_array().into_iter().flatten().collect();
                // Every replica's API lists every replica's jobs (one shared history): the
                // victim is the replica the slow job names, not the one that answered.
                let slow_for_a_while = running.iter().find(|j| {
                    j["runbook"] == "slow"
                        && j["started_at"]
                            .as_str()
                            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                            .is_some_and(|t| {
                                now - t.with_timezone(&Utc) > chrono::Duration::seconds(1)
                            })
                });
                let fast_running = running.iter().any(|j| j["runbook"] == "fast");
                let owner = slow_for_a_while.and_then(|j| {
                    j["replica"]
                        .as_str()
                        .and_then(|r| r.strip_prefix("replica-"))
                        .and_then(|n| n.parse::<usize>().ok())
                });
                if let Some(owner) = owner
                    && !fast_running
                {
                    *victim.lock().unwrap() = Some((owner, jobs.clone()));
                    return true;
                }
            }
            false
        }
    })
    .await;
    assert!(found, "a replica runs the slow runbook");
    let (killed, running) = victim.into_inner().unwrap().unwrap();
    workers[killed].kill9();
    let slow_instant = running["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["runbook"] == "slow")
        .and_then(|j| j["scheduled_for"].as_str())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .expect("the slow job's instant");

    // Restart another replica gracefully a little later.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let restarted = (killed + 1) % 3;
    workers[restarted].signal(Signal::SIGTERM);
    assert!(
        workers[restarted]
            .wait_exit(Duration::from_secs(30))
            .await
            .success()
    );
    workers[restarted] = WorkerProcess::spawn(dirs[restarted].path(), "second.log");
    workers[restarted].wait_ready().await;

    // Run until at least 60 occurrences have passed, and until a sweeper has marked the
    // dead replica's occurrence Interrupted (its lease expires within 15 s).
    let coordinator = container.coordinator(fast_options());
    let interrupted = wait_until(Duration::from_secs(60), || {
        let coordinator = coordinator.clone();
        async move {
            let enough = Utc::now() > start + chrono::Duration::seconds(62);
            let record = coordinator.occurrence("slow", slow_instant).await;
            enough && matches!(record, Ok(Some(r)) if r.value.state == OccurrenceState::Interrupted)
        }
    })
    .await;
    let end = ceil_second(Utc::now()) - chrono::Duration::seconds(2);
    for (i, worker) in workers.iter_mut().enumerate() {
        if i != killed {
            worker.signal(Signal::SIGTERM);
        }
    }
    for (i, worker) in workers.iter_mut().enumerate() {
        if i != killed {
            assert!(worker.wait_exit(Duration::from_secs(40)).await.success());
        }
    }
    let record = coordinator
        .occurrence("slow", slow_instant)
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(
        interrupted,
        "the killed replica's occurrence is marked Interrupted: {record:?}"
    );
    assert_eq!(record.owner, format!("replica-{killed}"));

    // Every occurrence of the window exactly once, in the tenant's log and in the records.
    let calls = calls_per_instant(&tenant.exchange);
    let records = coordinator.list_occurrences("fast", 300).await.unwrap();
    let mut per_instant: BTreeMap<DateTime<Utc>, Vec<OccurrenceState>> = BTreeMap::new();
    for record in &records {
        per_instant
            .entry(record.scheduled_for)
            .or_default()
            .push(record.state);
    }
    let mut t = start;
    let mut count = 0;
    let mut problems = Vec::new();
    while t <= end {
        let received = calls.get(&t).copied().unwrap_or(0);
        let states = per_instant.get(&t).cloned().unwrap_or_default();
        if received != 1 || states != [OccurrenceState::Completed] {
            problems.push(format!("{t}: {received} calls, records {states:?}"));
        }
        count += 1;
        t += chrono::Duration::seconds(1);
    }
    assert!(count >= 60, "the window has {count} occurrences");
    assert!(
        problems.is_empty(),
        "not exactly once:\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_writes_nothing_for_its_occurrence_after_it_wakes() {
    use secrecy::ExposeSecret as _;
    let tenant = Tenant::start(Duration::from_millis(200)).await;
    let container = AzuriteContainer::new();
    let sas = container.sas_url().expose_secret().to_string();
    let slow = format!("schedule = \"*/10 * * * * *\"\n{SLOW_STEPS}");
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|i| {
            let dir = worker_dir(
                &tenant,
                &coordination_settings(&sas, &format!("replica-{i}"), ""),
            );
            write(&dir.path().join("runbooks"), "slow.toml", &slow);
            dir
        })
        .collect();
    let mut workers: Vec<WorkerProcess> = dirs
        .iter()
        .map(|d| WorkerProcess::spawn(d.path(), "worker.log"))
        .collect();
    for worker in &mut workers {
        worker.wait_ready().await;
    }

    // Whichever replica runs the first occurrence is paused.
    let found = std::sync::Mutex::new(None);
    let ok = wait_until(Duration::from_secs(30), || async {
        for (i, worker) in workers.iter().enumerate() {
            let Ok(response) = reqwest::get(worker.url("/api/jobs?status=Running")).await else {
                continue;
            };
            let Ok(jobs) = response.json::<Value>().await else {
                continue;
            };
            if let Some(job) = jobs["jobs"].as_array().and_then(|j| j.first()) {
                *found.lock().unwrap() = Some((i, job.clone()));
                return true;
            }
        }
        false
    })
    .await;
    assert!(ok, "a replica runs the slow runbook");
    let (_, job) = found.into_inner().unwrap().unwrap();
    // The replicas share one history, so any replica lists the job: the one that runs it is
    // the replica the job names.
    let paused = (0..workers.len())
        .find(|i| job["replica"] == format!("replica-{i}"))
        .unwrap_or_else(|| panic!("the running job names its replica: {job}"));
    let id = job["id"].as_str().unwrap().to_string();
    let instant = utc(job["scheduled_for"].as_str().unwrap());
    workers[paused].signal(Signal::SIGSTOP);

    // The other replica marks the occurrence Interrupted once the lease has expired.
    let coordinator = container.coordinator(fast_options());
    let marked = wait_until(Duration::from_secs(40), || {
        let coordinator = coordinator.clone();
        async move {
            matches!(
                coordinator.occurrence("slow", instant).await,
                Ok(Some(r)) if r.value.state == OccurrenceState::Interrupted
            )
        }
    })
    .await;
    workers[paused].signal(Signal::SIGCONT);
    assert!(
        marked,
        "the other replica marks the orphaned occurrence Interrupted"
    );
    let before = coordinator
        .occurrence("slow", instant)
        .await
        .unwrap()
        .unwrap();

    // The woken replica stops the job and records it locally, but writes nothing more.
    let ok = wait_until(Duration::from_secs(30), || async {
        job_status(&workers[paused], &id).await == "Interrupted"
    })
    .await;
    assert!(
        ok,
        "the woken replica records its job Interrupted; log:\n{}",
        workers[paused].logs()
    );
    let after = coordinator
        .occurrence("slow", instant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        after, before,
        "the record is untouched by the replica that lost its lease"
    );
    assert_eq!(after.value.owner, format!("replica-{paused}"));
    for worker in &mut workers {
        worker.signal(Signal::SIGTERM);
    }
    for worker in &mut workers {
        assert!(worker.wait_exit(Duration::from_secs(40)).await.success());
    }
}

#[tokio::test]
async fn the_dashboard_of_a_running_worker_renders_in_chromium() {
    use crate::support::http::{artifacts_dir, chromium};

    let description = "Enable the archive for user mailboxes";
    let (app, _runner) = spawn_with_fake_runner(
        &[
            (
                "archive.toml",
                &runbook(&format!("description = \"{description}\"")),
            ),
            ("broken.toml", "schedule = \"61 * * * *\"\n"),
        ],
        &[("RUNBOOK_WORKER__HTTP__API_TOKEN", TOKEN)],
    )
    .await;
    let accepted = app
        .http
        .post(app.url("/api/runbooks/archive/run"))
        .header("authorization", bearer(TOKEN))
        .json(&json!({"params": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let body: Value = accepted.json().await.unwrap();
    let id = body["job_id"].as_str().unwrap().to_string();
    let done = wait_until(SOON, || async {
        app.get_json(&format!("/api/jobs/{id}")).await["status"] == "Completed"
    })
    .await;
    assert!(done, "the job ran to completion");

    // The real worker's pages, rendered by a real browser.
    let home = chromium(&app.url("/"), &["--dump-dom".to_string()]).await;
    assert!(home.contains(description), "runbook table:\n{home}");
    assert!(home.contains("broken.toml"), "invalid files:\n{home}");
    assert!(home.contains(&id), "recent jobs link the job:\n{home}");
    let job = chromium(
        &app.url(&format!("/jobs/{id}")),
        &["--dump-dom".to_string()],
    )
    .await;
    assert!(
        job.contains(&id) && job.contains("Completed"),
        "job page:\n{job}"
    );

    let shot = artifacts_dir().join("worker-dashboard.png");
    chromium(
        &app.url("/"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".to_string(),
        ],
    )
    .await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 0);
    println!("dashboard of a running worker: {}", shot.display());
    app.stop().await;
}

#[tokio::test]
async fn two_schedules_due_at_one_instant_both_run_each_with_its_params() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("runbooks")).unwrap();
    write(
        &root.path().join("runbooks"),
        "regions.toml",
        &runbook(
            "[params]\nregion = { type = \"string\" }\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { region = \"EU\" }\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { region = \"US\" }",
        ),
    );
    let engine = Engine::start(root.path(), utc("2026-05-04T01:00:00Z")).await;
    let at = utc("2026-05-04T02:00:00Z");
    assert_eq!(engine.next_run("regions"), Some(at));
    engine.clock.set(at);
    let jobs = engine
        .wait_jobs("regions", "both schedules' jobs completed", |j| {
            j.len() == 2 && j.iter().all(|j| j.status == JobStatus::Completed)
        })
        .await;
    assert!(
        jobs.iter().all(|j| j.scheduled_for == Some(at)),
        "{jobs:#?}"
    );
    let mut regions: Vec<(history::JobId, Value)> = engine
        .runner
        .started()
        .iter()
        .map(|spec| (spec.id.clone(), spec.params["region"].clone()))
        .collect();
    regions.sort_by_key(|(_, r)| r.to_string());
    assert_eq!(
        regions.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        [json!("EU"), json!("US")]
    );
    // Each job records which schedule fired it.
    for (id, region) in &regions {
        let detail = engine.history.get_job(id).await.unwrap().unwrap();
        let fired = detail
            .streams
            .iter()
            .find_map(|e| e.data.as_ref().and_then(|d| d.get("schedule")).cloned())
            .expect("a stream entry naming the schedule");
        assert_eq!(fired["params"]["region"], *region, "{fired}");
        assert_eq!(fired["cron"], json!("0 2 * * *"));
    }
    engine.stop().await;
}

#[tokio::test]
async fn next_lists_each_schedule_with_its_params_and_which_one_fires_when() {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).unwrap();
    write(
        &runbooks,
        "regions.toml",
        &runbook(
            "timezone = \"Europe/Berlin\"\n[params]\nregion = { type = \"string\" }\n[[schedules]]\ncron = \"0 2 * * *\"\nparams = { region = \"EU\" }\n[[schedules]]\ncron = \"0 9 * * *\"\ntimezone = \"America/New_York\"\nparams = { region = \"US\" }",
        ),
    );
    let env = [("RUNBOOK_WORKER__RUNBOOKS__DIR", "runbooks")];
    let args = [
        "next",
        "regions",
        "-n",
        "3",
        "--from",
        "2026-01-05T00:00:00Z",
    ];
    let human = run_binary(dir.path(), &args, &env);
    assert!(human.status.success(), "{}", stderr(&human));
    let text = stdout(&human);
    assert!(
        text.contains("schedule 0: 0 2 * * * in Europe/Berlin, params region = \"EU\"")
            && text.contains("schedule 1: 0 9 * * * in America/New_York, params region = \"US\""),
        "{text}"
    );
    let json_args: Vec<&str> = args.iter().copied().chain(["--format", "json"]).collect();
    let report: Value =
        serde_json::from_str(&stdout(&run_binary(dir.path(), &json_args, &env))).unwrap();
    let fired: Vec<(&str, u64)> = report["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["utc"].as_str().unwrap(), t["schedule"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        fired,
        [
            ("2026-01-05T01:00:00Z", 0),
            ("2026-01-05T14:00:00Z", 1),
            ("2026-01-06T01:00:00Z", 0)
        ]
    );
    assert_eq!(report["schedules"][1]["params"], json!({"region": "US"}));
    assert_eq!(report["schedules"][1]["next_run"], "2026-01-05T14:00:00Z");
}

/// Runs the binary with `dir/worker.toml` (as an operator would on replica `dir`).
fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(crate::support::binary());
    cmd.current_dir(dir)
        .args(["--config", "worker.toml"])
        .args(args)
        .env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    cmd.output().expect("run runbook-worker")
}

async fn get_job(worker: &WorkerProcess, id: &str) -> Value {
    reqwest::get(worker.url(&format!("/api/jobs/{id}")))
        .await
        .expect("GET job")
        .json()
        .await
        .expect("job JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_history_that_outlives_the_replica_that_ran_the_jobs() {
    use secrecy::ExposeSecret as _;
    let tenant = Tenant::start(Duration::from_millis(100)).await;
    let container = AzuriteContainer::new();
    let sas = container.sas_url().expose_secret().to_string();
    let quick =
        "[[steps]]\nname = \"domains\"\ncmdlet = \"Get-AcceptedDomain\"\noutput = \"csv\"\n";
    let slow = format!("schedule = \"*/5 * * * * *\"\n{SLOW_STEPS}");
    let replica = |name: &str| {
        let dir = worker_dir(&tenant, &coordination_settings(&sas, name, ""));
        write(&dir.path().join("runbooks"), "quick.toml", quick);
        write(&dir.path().join("runbooks"), "slow.toml", &slow);
        dir
    };
    let dir_a = replica("replica-a");
    let dir_b = replica("replica-b");

    // A alone first: its scheduled job runs (and will be left running).
    let mut a = WorkerProcess::spawn(dir_a.path(), "worker.log");
    a.wait_ready().await;
    let slow_id = std::sync::Mutex::new(None);
    let ok = wait_until(Duration::from_secs(30), || async {
        let jobs: Value = reqwest::get(a.url("/api/jobs?runbook=slow&status=Running"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let found = jobs["jobs"][0]["id"].as_str().map(str::to_string);
        let some = found.is_some();
        *slow_id.lock().unwrap() = found;
        some
    })
    .await;
    assert!(ok, "A runs a scheduled job; log:\n{}", a.logs());
    let slow_id = slow_id.into_inner().unwrap().unwrap();

    let mut b = WorkerProcess::spawn(dir_b.path(), "worker.log");
    b.wait_ready().await;

    // An API-triggered job and a manual `run`, both on A.
    let api_id = post_run(&a, "quick").await;
    let ok = wait_until(Duration::from_secs(30), || async {
        get_job(&a, &api_id).await["status"] == "Completed"
    })
    .await;
    assert!(ok, "the API job completes; log:\n{}", a.logs());
    let manual = cli(dir_a.path(), &["run", "quick", "--output", "json"]);
    assert!(
        manual.status.success(),
        "{}",
        String::from_utf8_lossy(&manual.stderr)
    );
    let manual_id = String::from_utf8_lossy(&manual.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "outcome")
        .and_then(|v| v["job_id"].as_str().map(str::to_string))
        .expect("the outcome line names the job");
    let report = reqwest::Client::new()
        .get(a.url(&format!("/api/jobs/{api_id}/reports/domains.csv")))
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // A dies hard and its state folder goes with it.
    a.kill9();
    let _ = a.wait_exit(Duration::from_secs(10)).await;
    drop(dir_a);

    for (id, trigger) in [(&api_id, "api"), (&manual_id, "manual")] {
        let job = get_job(&b, id).await;
        assert_eq!(job["status"], "Completed", "{job}");
        assert_eq!(job["trigger"], trigger, "{job}");
        assert_eq!(job["replica"], "replica-a", "{job}");
        assert_eq!(job["reports"][0]["file"], "domains.csv", "{job}");
        assert!(!job["streams"].as_array().unwrap().is_empty(), "{job}");
    }
    let from_b = reqwest::Client::new()
        .get(b.url(&format!("/api/jobs/{api_id}/reports/domains.csv")))
        .header("authorization", bearer(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(from_b.status(), 200);
    assert_eq!(from_b.text().await.unwrap(), report);
    // B's dashboard, as a browser renders it: A's jobs on the front page, and the job page
    // with the replica that ran it and its report.
    {
        use crate::support::http::chromium;
        let home = chromium(&b.url("/"), &["--dump-dom".to_string()]).await;
        for id in [&api_id, &manual_id] {
            assert!(
                home.contains(id.as_str()),
                "B's front page lists {id}:\n{home}"
            );
        }
        let page = chromium(
            &b.url(&format!("/jobs/{api_id}")),
            &["--dump-dom".to_string()],
        )
        .await;
        assert!(
            page.contains("replica-a"),
            "the replica that ran it:\n{page}"
        );
        assert!(page.contains("domains.csv"), "its report:\n{page}");
        assert!(page.contains("Completed"), "{page}");
    }
    let listed = cli(dir_b.path(), &["jobs", "--output", "json"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    for id in [&api_id, &manual_id, &slow_id] {
        assert!(
            listed["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["id"] == id.as_str() && j["replica"] == "replica-a"),
            "`jobs` on B lists {id}: {listed}"
        );
    }
    // The job A left running is found by B's sweep once A's lease lapses.
    let ok = wait_until(Duration::from_secs(60), || async {
        get_job(&b, &slow_id).await["status"] == "Interrupted"
    })
    .await;
    assert!(
        ok,
        "the job A left running is shown Interrupted: {}; log:\n{}",
        get_job(&b, &slow_id).await,
        b.logs()
    );
    let interrupted = get_job(&b, &slow_id).await;
    assert!(
        interrupted["error"]
            .as_str()
            .is_some_and(|e| e.contains("replica replica-a stopped")),
        "marked by B's sweep in the shared history: {interrupted}"
    );
    eprintln!("interrupted job as B shows it: {interrupted}");
    b.signal(Signal::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(40)).await.success());
}
