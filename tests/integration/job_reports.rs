//! Reports are part of the job, in both history stores: listed on `/api/jobs/{id}`,
//! downloadable only with the API token (even on loopback), names checked; and with the
//! shared (blob) history, every replica sees every replica's jobs, streams and reports, also
//! after the replica that ran them is gone with its state folder.

use serde_json::{Value, json};

use crate::support::app::{API_TOKEN, TestApp, TestAppOptions, spawn_app_with};
use crate::support::coordination::AzuriteContainer;

const REPORTING_RUNBOOK: &str = r#"description = "Lists the accepted domains"
schedule = "0 0 2 * * *"
timezone = "UTC"

[[steps]]
name = "domains"
cmdlet = "Get-AcceptedDomain"
output = "csv"
"#;

fn options() -> TestAppOptions {
    TestAppOptions::default().runbook("domains.toml", REPORTING_RUNBOOK)
}

/// The settings of a replica sharing `container` (history included).
fn shared(options: TestAppOptions, container: &AzuriteContainer, replica: &str) -> TestAppOptions {
    use secrecy::ExposeSecret as _;
    options
        .setting("RUNBOOK_WORKER__COORDINATION__KIND", "azure-blob")
        .setting(
            "RUNBOOK_WORKER__COORDINATION__SAS_URL",
            container.sas_url().expose_secret(),
        )
        .setting("RUNBOOK_WORKER__COORDINATION__REPLICA_ID", replica)
}

async fn download(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("GET")
}

/// Runs the reporting runbook through the API and checks its entry lists the report and
/// the replica; returns the job.
async fn run_and_check(app: &TestApp, replica: Option<&str>) -> Value {
    let id = app.run_runbook("domains", json!({})).await;
    let job = app.wait_for_job_end(&id).await;
    assert_eq!(job["status"], "Completed", "{job}");
    let reports = job["reports"].as_array().expect("reports listed");
    assert_eq!(reports.len(), 1, "{job}");
    assert_eq!(reports[0]["file"], "domains.csv");
    assert!(reports[0]["bytes"].as_u64().unwrap() > 0, "{job}");
    if let Some(replica) = replica {
        assert_eq!(job["replica"], replica, "{job}");
    }
    assert!(job["replica"].is_string(), "{job}");
    job
}

/// What every store must do with a job's report.
async fn report_contract(app: &TestApp, job: &Value) -> String {
    let id = job["id"].as_str().unwrap();
    let path = format!("/api/jobs/{id}/reports/domains.csv");

    // Loopback and anonymous reads on: the report still needs the token.
    let anonymous = download(app, &path, None).await;
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.text().await.unwrap().contains("mailbox data"),
        "the refusal says why"
    );
    assert_eq!(download(app, &path, Some("wrong")).await.status(), 403);

    let response = download(app, &path, Some(API_TOKEN)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("domains.csv")
    );
    let body = response.text().await.unwrap();
    assert_eq!(
        body.len() as u64,
        job["reports"][0]["bytes"].as_u64().unwrap()
    );
    assert!(body.lines().count() > 1, "a header and rows: {body}");

    // No way out of the job's folder, and no report that is not there.
    for (name, status) in [
        ("..%2Fhistory.sqlite3", 400),
        (".partial", 400),
        ("a%20b.csv", 400),
        ("missing.csv", 404),
    ] {
        let response = download(
            app,
            &format!("/api/jobs/{id}/reports/{name}"),
            Some(API_TOKEN),
        )
        .await;
        assert_eq!(response.status(), status, "{name}");
    }
    let other = download(
        app,
        "/api/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/reports/domains.csv",
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(other.status(), 404);
    body
}

#[tokio::test]
async fn a_local_job_lists_its_report_and_serves_it_only_with_the_token() {
    let app = spawn_app_with(options()).await;
    let job = run_and_check(&app, None).await;
    let body = report_contract(&app, &job).await;
    let id = job["id"].as_str().unwrap();
    let on_disk =
        std::fs::read_to_string(app.state_dir().join("reports").join(id).join("domains.csv"))
            .expect("the local history keeps reports under state.dir");
    assert_eq!(body, on_disk);
    app.stop().await;
}

#[tokio::test]
async fn replicas_sharing_a_container_see_each_others_jobs_streams_and_reports() {
    let container = AzuriteContainer::new();
    let a = spawn_app_with(shared(options(), &container, "replica-a")).await;
    let b = spawn_app_with(shared(options(), &container, "replica-b")).await;

    let job = run_and_check(&a, Some("replica-a")).await;
    let id = job["id"].as_str().unwrap().to_string();
    let from_a = report_contract(&a, &job).await;
    // The sink's last entries (written after the end) reach the shared history too.
    let seen_on_a = a.get_json(&format!("/api/jobs/{id}")).await;
    assert!(
        seen_on_a["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["text"]
                .as_str()
                .unwrap_or_default()
                .starts_with("report of step")),
        "{seen_on_a}"
    );
    // Uploaded with the job, not left in A's state folder.
    assert!(
        !a.state_dir()
            .join("reports")
            .join(&id)
            .join("domains.csv")
            .exists(),
        "the shared history holds the report"
    );

    // B sees A's job, its streams and its report; then A is gone with its state folder.
    let seen = b.get_json(&format!("/api/jobs/{id}")).await;
    assert_eq!(seen["replica"], "replica-a", "{seen}");
    assert_eq!(seen["streams"], seen_on_a["streams"]);
    assert_eq!(seen["reports"], job["reports"]);
    a.stop().await;

    let listed = b.get_json("/api/jobs?runbook=domains").await;
    let jobs = listed["jobs"].as_array().expect("jobs");
    assert!(
        jobs.iter()
            .any(|j| j["id"] == id.as_str() && j["replica"] == "replica-a"),
        "{listed}"
    );
    let from_b = download(
        &b,
        &format!("/api/jobs/{id}/reports/domains.csv"),
        Some(API_TOKEN),
    )
    .await;
    assert_eq!(from_b.status(), 200);
    assert_eq!(from_b.text().await.unwrap(), from_a);
    // B's own job goes to the same place.
    let own = run_and_check(&b, Some("replica-b")).await;
    report_contract(&b, &own).await;
    b.stop().await;
}

const SLOW_RUNBOOK: &str = r#"description = "Reads every mailbox's statistics, one at a time"
schedule = "0 0 2 * * *"
timezone = "UTC"

[[steps]]
name = "users"
cmdlet = "Get-Mailbox"
parameters = { ResultSize = "Unlimited" }

[[steps]]
name = "stats"
cmdlet = "Get-MailboxStatistics"
for_each = "users"
concurrency = 1
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}" }
output = "jsonl"
"#;

/// A reader of the container that does not go through the proxy.
fn direct_reader(container: &AzuriteContainer) -> runbook_worker::history::JobHistory {
    use runbook_worker::history::blob::{BlobHistoryOptions, BlobHistoryStore};
    let options = BlobHistoryOptions::new(
        &runbook_worker::history::HistorySettings::default(),
        std::time::Duration::from_secs(5),
        1,
        "reader",
    );
    BlobHistoryStore::new(
        runbook_worker::coordination::StorageTarget::SasUrl(container.sas_url()),
        options,
        std::sync::Arc::new(runbook_worker::clock::SystemClock),
    )
    .expect("a reader")
    .into()
}

#[tokio::test]
async fn a_job_that_runs_while_storage_is_down_reaches_the_container_once_it_is_back() {
    use crate::support::coordination::{SwitchableProxy, azurite_addr};
    use crate::support::wait_until;
    use runbook_worker::history::{HistoryReader, JobId, spool_path};
    use std::time::Duration;

    let container = AzuriteContainer::new();
    let proxy = SwitchableProxy::start(azurite_addr()).await;
    let through_proxy = container.with_endpoint(proxy.endpoint());
    let mut options = shared(
        TestAppOptions::default().runbook("slow.toml", SLOW_RUNBOOK),
        &through_proxy,
        "replica-a",
    )
    .setting("RUNBOOK_WORKER__COORDINATION__REQUEST_TIMEOUT", "2s")
    .setting("RUNBOOK_WORKER__COORDINATION__MAX_RETRIES", "0");
    options.tenant.latency = Duration::from_millis(150);
    let app = spawn_app_with(options).await;

    let id = app.run_runbook("slow", json!({})).await;
    let path = format!("/api/jobs/{id}");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            app.get_json(&path).await["status"] == "Running"
        })
        .await,
        "the job starts"
    );
    proxy.set_up(false);

    // While the storage is down the job goes on into the spool, and readiness says so.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let ready = app.get_json("/readyz").await;
            ready["checks"]["history"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("wait to be written to the shared history"))
        })
        .await,
        "readiness names the jobs waiting: {}",
        app.get_json("/readyz").await
    );
    let job_id: JobId = id.parse().unwrap();
    let spool = HistoryReader::open(&spool_path(&app.state_dir())).expect("the spool");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            spool
                .get_job(&job_id)
                .await
                .unwrap()
                .is_some_and(|j| j.job.status.is_final())
        })
        .await,
        "the job ends while the storage is down"
    );
    let kept = spool.get_job(&job_id).await.unwrap().expect("kept locally");

    proxy.set_up(true);
    let reader = direct_reader(&container);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            reader
                .get_job(&job_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|j| j.job.status == kept.job.status)
        })
        .await,
        "the job's end reaches the container after the outage"
    );
    let stored = reader.get_job(&job_id).await.unwrap().unwrap();
    // Everything the replica kept, once: seqs 1..=n without a gap or a repeat, and what the
    // spool held when the job ended comes first (the sink may still flush entries after).
    let seqs: Vec<u64> = stored.streams.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no entry twice"
    );
    let entries = |streams: &[runbook_worker::history::StreamEntry]| {
        streams
            .iter()
            .map(|e| (e.seq, e.text.clone()))
            .collect::<Vec<_>>()
    };
    let kept_entries = entries(&kept.streams);
    assert!(!kept_entries.is_empty());
    assert_eq!(
        entries(&stored.streams)[..kept_entries.len()],
        kept_entries[..]
    );
    assert_eq!(stored.job.replica.as_deref(), Some("replica-a"));
    let listed = reader
        .list_jobs(&runbook_worker::history::JobFilter::default())
        .await
        .unwrap();
    assert_eq!(
        listed.iter().filter(|j| j.id == job_id).count(),
        1,
        "listed once"
    );
    // Readiness comes back and the spool lets go of the job.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            app.get_json("/readyz").await["checks"]["history"]["state"] == "ok"
        })
        .await,
        "{}",
        app.get_json("/readyz").await
    );
    assert!(spool.get_job(&job_id).await.unwrap().is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_long_outage_keeps_the_spool_bounded_and_every_outcome() {
    use crate::support::coordination::{SwitchableProxy, azurite_addr};
    use crate::support::wait_until;
    use runbook_worker::history::{HistoryReader, JobId, StreamKind, spool_path};
    use std::time::Duration;

    let container = AzuriteContainer::new();
    let proxy = SwitchableProxy::start(azurite_addr()).await;
    let through_proxy = container.with_endpoint(proxy.endpoint());
    let app = spawn_app_with(
        shared(options(), &through_proxy, "replica-a")
            .setting("RUNBOOK_WORKER__COORDINATION__REQUEST_TIMEOUT", "2s")
            .setting("RUNBOOK_WORKER__COORDINATION__MAX_RETRIES", "0")
            .setting("RUNBOOK_WORKER__HISTORY__SPOOL_MAX_JOBS", "1"),
    )
    .await;
    proxy.set_up(false);

    // Three jobs while the storage is down: one more than the spool keeps whole... twice.
    let mut ids: Vec<JobId> = Vec::new();
    for _ in 0..3 {
        let id = app.run_runbook("domains", json!({})).await;
        let job = app.wait_for_job_end(&id).await;
        assert_eq!(job["status"], "Completed", "{job}");
        ids.push(id.parse().unwrap());
    }
    let spool = HistoryReader::open(&spool_path(&app.state_dir())).expect("the spool");
    let cut = |detail: &runbook_worker::history::JobDetail| {
        detail
            .streams
            .iter()
            .any(|e| e.kind == StreamKind::Warning && e.text.contains("history.spool_max_jobs"))
    };
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let mut cut_down = 0;
            for id in &ids[..2] {
                if spool.get_job(id).await.unwrap().is_some_and(|d| cut(&d)) {
                    cut_down += 1;
                }
            }
            cut_down == 2
        })
        .await,
        "the two oldest waiting jobs are cut down to their record"
    );
    let newest = spool.get_job(&ids[2]).await.unwrap().expect("kept whole");
    assert!(!cut(&newest));

    proxy.set_up(true);
    let reader = direct_reader(&container);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            let mut there = 0;
            for id in &ids {
                if reader.get_job(id).await.ok().flatten().is_some() {
                    there += 1;
                }
            }
            there == 3
        })
        .await,
        "every job's outcome reaches the container"
    );
    for (i, id) in ids.iter().enumerate() {
        let stored = reader.get_job(id).await.unwrap().unwrap();
        assert_eq!(
            stored.job.status,
            runbook_worker::history::JobStatus::Completed
        );
        let outputs = stored
            .streams
            .iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    StreamKind::Output | StreamKind::Plan | StreamKind::Progress
                )
            })
            .count();
        if i < 2 {
            assert!(cut(&stored), "{:?}", stored.streams);
            assert_eq!(outputs, 0, "{:?}", stored.streams);
            assert!(stored.reports.is_empty(), "{:?}", stored.reports);
            assert!(
                stored.dropped.values().sum::<u64>() > 0,
                "what was dropped is counted: {:?}",
                stored.dropped
            );
        } else {
            assert!(!cut(&stored));
            assert!(outputs > 0, "{:?}", stored.streams);
            assert_eq!(stored.reports.len(), 1, "{:?}", stored.reports);
        }
    }
    assert!(
        wait_until(Duration::from_secs(30), || async {
            app.get_json("/readyz").await["checks"]["history"]["state"] == "ok"
        })
        .await,
        "{}",
        app.get_json("/readyz").await
    );
    app.stop().await;
}
