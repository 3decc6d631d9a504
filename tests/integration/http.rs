//! The HTTP surface in-process: the router over a fake worker on 127.0.0.1:0, reqwest as the
//! client, and headless Chromium for the dashboard.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Html;
use runbook_worker::http::{
    ApiAuth, CoordinationReadiness, HistoryReadiness, IdentityReadiness, JobFilter, Readiness,
    RequestedVia, RunRequest, ServerLimits,
};
use serde_json::{Value, json};

use crate::support::http::{
    Call, FakeWorker, HOSTILE_DESCRIPTION, TOKEN, WRONG_TOKEN, bearer, chromium, job, new_job_id,
    open_half_requests, params, read_until_closed, screenshot, spawn, spawn_limited, spawn_with,
    still_open,
};
use crate::support::wait_until;
use crate::support::worker::{runbook, spawn_with_fake_runner};
use runbook_worker::history::Trigger;
use runbook_worker::history::{JobStatus, StreamKind};

fn loopback_with_token() -> ApiAuth {
    ApiAuth::new(Some(TOKEN.into()), true)
}

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn probes_and_metrics_answer_without_a_token_even_off_loopback() {
    let server = spawn(ApiAuth::new(Some(TOKEN.into()), false)).await;

    let health = server.get("/healthz").await;
    assert_eq!(health.status(), 200);
    assert_eq!(json_of(health).await, json!({"status": "alive"}));

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body = json_of(ready).await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["problems"], json!([]));
    assert_eq!(body["checks"]["identity"]["state"], "ok");

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    assert_eq!(
        metrics.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(metrics.text().await.unwrap().ends_with("# EOF\n"));

    // The API itself is closed to the same anonymous client.
    assert_eq!(server.get("/api/runbooks").await.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn readyz_answers_503_with_every_reason() {
    let server = spawn(loopback_with_token()).await;
    *server.worker.readiness.lock().unwrap() = Readiness {
        runbooks_loaded: false,
        history_open: true,
        history: HistoryReadiness::Ok,
        identity: IdentityReadiness::Failing("IMDS answered 400: identity not found".into()),
        coordination: CoordinationReadiness::Unreachable("blob container answered 403".into()),
        shutting_down: true,
    };

    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let body = json_of(response).await;
    assert_eq!(body["ready"], false);
    let problems: Vec<String> = serde_json::from_value(body["problems"].clone()).unwrap();
    assert_eq!(problems.len(), 4, "{problems:?}");
    for needle in [
        "shutting down",
        "runbooks folder",
        "identity not found",
        "blob container answered 403",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle}: {problems:?}"
        );
    }
    assert_eq!(body["checks"]["runbooks_loaded"], false);
    assert_eq!(body["checks"]["coordination"]["state"], "unreachable");
    assert_eq!(
        body["checks"]["identity"]["reason"],
        "IMDS answered 400: identity not found"
    );

    // /healthz stays 200: the process is alive, just not ready.
    assert_eq!(server.get("/healthz").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn metrics_show_what_the_worker_reported() {
    let server = spawn(loopback_with_token()).await;
    let m = &server.metrics;
    m.job_finished(
        "archive-old-mailboxes",
        "Completed",
        Duration::from_secs(125),
    );
    m.job_finished("forwarding-cleanup", "Failed", Duration::from_secs(9));
    m.job_recorded("forwarding-cleanup", "Skipped");
    m.exchange_call("Get-EXOMailbox", "ok");
    m.exchange_call("Set-Mailbox", "throttled");
    m.exchange_throttle_wait(Duration::from_secs(30));
    m.token_refresh("ok");
    m.schedule_lateness(Duration::from_millis(12));
    m.set_runbooks(3, 1);
    let running = m.job_running();

    let text = server.get("/metrics").await.text().await.unwrap();
    for line in [
        r#"runbook_worker_jobs_total{runbook="archive-old-mailboxes",status="Completed"} 1"#,
        r#"runbook_worker_jobs_total{runbook="forwarding-cleanup",status="Failed"} 1"#,
        r#"runbook_worker_jobs_total{runbook="forwarding-cleanup",status="Skipped"} 1"#,
        r#"runbook_worker_job_duration_seconds_sum{runbook="archive-old-mailboxes"} 125.0"#,
        r#"runbook_worker_job_duration_seconds_count{runbook="forwarding-cleanup"} 1"#,
        r#"runbook_worker_exchange_calls_total{cmdlet="Get-EXOMailbox",outcome="ok"} 1"#,
        r#"runbook_worker_exchange_calls_total{cmdlet="Set-Mailbox",outcome="throttled"} 1"#,
        "runbook_worker_exchange_throttle_wait_seconds_total 30.0",
        r#"runbook_worker_token_refreshes_total{outcome="ok"} 1"#,
        "runbook_worker_schedule_lateness_seconds_count 1",
        r#"runbook_worker_schedule_lateness_seconds_bucket{le="0.025"} 1"#,
        "runbook_worker_runbooks_loaded 3",
        "runbook_worker_runbooks_invalid 1",
        "runbook_worker_jobs_running 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    drop(running);
    let text = server.get("/metrics").await.text().await.unwrap();
    assert!(text.lines().any(|l| l == "runbook_worker_jobs_running 0"));
    server.stop().await;
}

#[tokio::test]
async fn runbooks_are_listed_with_schedule_next_run_status_and_errors() {
    let server = spawn(loopback_with_token()).await;
    let response = server.get("/api/runbooks").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json_of(response).await;

    let runbooks = body["runbooks"].as_array().unwrap();
    assert_eq!(runbooks.len(), 3);
    let archive = &runbooks[0];
    assert_eq!(archive["name"], "archive-old-mailboxes");
    assert_eq!(archive["schedule"], "0 30 2 * * *");
    assert_eq!(archive["time_zone"], "Europe/Paris");
    assert_eq!(archive["next_run"], "2024-05-01T00:30:00Z");
    assert_eq!(archive["enabled"], true);
    assert_eq!(archive["last_status"], "Completed");
    assert_eq!(archive["last_job_id"], "01HWVD8Q0G0000000000000001");
    assert_eq!(archive["validation_error"], Value::Null);
    assert_eq!(runbooks[1]["validation_error"]["line"], 7);
    assert_eq!(runbooks[2]["schedule"], Value::Null);

    assert_eq!(
        body["invalid_files"],
        json!([{
            "file": "runbooks/mailbox-permissions.toml",
            "line": 3,
            "message": "schedule: invalid cron expression \"61 * * * *\": minute must be 0-59",
        }])
    );
    server.stop().await;
}

#[tokio::test]
async fn one_runbook_is_returned_by_name_and_an_unknown_one_is_404() {
    let server = spawn(loopback_with_token()).await;
    let response = server.get("/api/runbooks/quota-report").await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(body["name"], "quota-report");
    assert_eq!(body["enabled"], false);

    let response = server.get("/api/runbooks/nope").await;
    assert_eq!(response.status(), 404);
    let body = json_of(response).await;
    assert!(
        body["error"].as_str().unwrap().contains("\"nope\""),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn jobs_are_listed_with_the_filter_passed_through() {
    let server = spawn(loopback_with_token()).await;
    let response = server
        .get("/api/jobs?runbook=archive-old-mailboxes&status=completed&limit=5&before=2024-05-02T00:00:00Z")
        .await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], "01HWVD8Q0G0000000000000001");
    assert_eq!(
        server.worker.calls(),
        vec![Call::ListJobs(JobFilter {
            runbook: Some("archive-old-mailboxes".into()),
            status: Some("Completed".into()),
            limit: 5,
            before: chrono::DateTime::parse_from_rfc3339("2024-05-02T00:00:00Z")
                .ok()
                .map(|t| t.to_utc()),
        })]
    );

    let all = json_of(server.get("/api/jobs").await).await;
    assert_eq!(all["jobs"].as_array().unwrap().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn bad_job_queries_are_400_with_a_json_error_and_reach_no_one() {
    let server = spawn(loopback_with_token()).await;
    for (query, needle) in [
        ("status=Exploded", "unknown status"),
        ("limit=0", "from 1 to 1000"),
        ("limit=many", "from 1 to 1000"),
        ("before=tuesday", "RFC 3339"),
        ("sort=asc", "unknown query parameter"),
    ] {
        let response = server.get(&format!("/api/jobs?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let body = json_of(response).await;
        assert!(
            body["error"].as_str().unwrap().contains(needle),
            "{query}: {body}"
        );
    }
    assert_eq!(server.worker.calls(), vec![]);
    server.stop().await;
}

#[tokio::test]
async fn a_job_is_returned_with_its_streams_and_an_unknown_one_is_404() {
    let server = spawn(loopback_with_token()).await;
    let body = json_of(server.get("/api/jobs/01HWVD8Q0G0000000000000001").await).await;
    assert_eq!(body["status"], "Completed");
    assert_eq!(body["streams"].as_array().unwrap().len(), 4);
    assert_eq!(body["steps"][1]["done"], 37);

    let response = server.get("/api/jobs/01HWVD8Q0G0000000000000404").await;
    assert_eq!(response.status(), 404);
    assert!(
        json_of(response).await["error"]
            .as_str()
            .unwrap()
            .contains("01HWVD8Q0G0000000000000404")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_run_with_the_token_starts_a_job_and_answers_202() {
    let server = spawn(loopback_with_token()).await;
    let response = server
        .post(
            "/api/runbooks/archive-old-mailboxes/run",
            Some(&bearer(TOKEN)),
            Some(r#"{"params": {"days": 30, "mailbox": "bob@contoso.example"}, "dry_run": true}"#),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers()["location"],
        format!("/api/jobs/{}", new_job_id(4)).as_str()
    );
    let body = json_of(response).await;
    assert_eq!(body["job_id"], new_job_id(4));
    assert_eq!(body["runbook"], "archive-old-mailboxes");

    // No body at all is a run without parameters; the dashboard's header marks its runs.
    let response = server
        .client
        .post(server.url("/api/runbooks/archive-old-mailboxes/run"))
        .header("authorization", bearer(TOKEN))
        .header("x-runbook-worker-source", "dashboard")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    assert_eq!(
        server.worker.changes(),
        vec![
            Call::Run {
                name: "archive-old-mailboxes".into(),
                request: RunRequest {
                    params: params(&[
                        ("days", json!(30)),
                        ("mailbox", json!("bob@contoso.example"))
                    ]),
                    dry_run: true,
                    requested_via: RequestedVia::Api,
                },
            },
            Call::Run {
                name: "archive-old-mailboxes".into(),
                request: RunRequest {
                    requested_via: RequestedVia::Dashboard,
                    ..RunRequest::default()
                },
            },
        ]
    );
    // The new job is readable at once.
    assert_eq!(
        server
            .get(&format!("/api/jobs/{}", new_job_id(4)))
            .await
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn run_failures_map_to_their_statuses_without_internal_detail() {
    let server = spawn(loopback_with_token()).await;
    let auth = bearer(TOKEN);
    for (path, body, status, needle) in [
        ("/api/runbooks/nope/run", None, 404, "no runbook named"),
        ("/api/runbooks/quota-report/run", None, 409, "disabled"),
        (
            "/api/runbooks/archive-old-mailboxes/run",
            Some(r#"{"params": {"unknown": 1}}"#),
            400,
            "not declared",
        ),
        (
            "/api/runbooks/archive-old-mailboxes/run",
            Some(r#"{"parameters": {}}"#),
            400,
            "unknown field `parameters`",
        ),
        (
            "/api/runbooks/archive-old-mailboxes/run",
            Some("[1, 2]"),
            400,
            "JSON object",
        ),
        ("/api/runbooks/explodes/run", None, 500, "reference"),
    ] {
        let response = server.post(path, Some(&auth), body).await;
        assert_eq!(response.status(), status, "{path} {body:?}");
        let json = json_of(response).await;
        let error = json["error"].as_str().unwrap();
        assert!(error.contains(needle), "{path}: {error}");
        assert!(!error.contains("secret-place"), "{error}");
    }

    server.worker.readiness.lock().unwrap().shutting_down = true;
    let response = server
        .post("/api/runbooks/archive-old-mailboxes/run", Some(&auth), None)
        .await;
    assert_eq!(response.status(), 503);
    assert!(
        json_of(response).await["error"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );
    server.stop().await;
}

#[tokio::test]
async fn cancel_answers_202_409_or_404() {
    let server = spawn(loopback_with_token()).await;
    let auth = bearer(TOKEN);
    let response = server
        .post(
            "/api/jobs/01HWVD8Q0G0000000000000003/cancel",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        json_of(response).await,
        json!({"job_id": "01HWVD8Q0G0000000000000003", "cancel": "requested"})
    );

    let response = server
        .post(
            "/api/jobs/01HWVD8Q0G0000000000000001/cancel",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(response.status(), 409);
    assert!(
        json_of(response).await["error"]
            .as_str()
            .unwrap()
            .contains("Completed")
    );

    let response = server
        .post(
            "/api/jobs/01HWVD8Q0G0000000000000404/cancel",
            Some(&auth),
            None,
        )
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        server.worker.changes(),
        vec![
            Call::Cancel("01HWVD8Q0G0000000000000003".into()),
            Call::Cancel("01HWVD8Q0G0000000000000001".into()),
            Call::Cancel("01HWVD8Q0G0000000000000404".into())
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn occurrences_need_a_runbook_and_pass_the_limit_on() {
    let server = spawn(loopback_with_token()).await;
    let response = server
        .get("/api/occurrences?runbook=archive-old-mailboxes&limit=3")
        .await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(body["runbook"], "archive-old-mailboxes");
    assert_eq!(body["occurrences"].as_array().unwrap().len(), 3);
    assert_eq!(body["occurrences"][0]["utc"], "2024-05-02T00:30:00Z");

    assert_eq!(server.get("/api/occurrences").await.status(), 400);
    assert_eq!(
        server
            .get("/api/occurrences?runbook=archive-old-mailboxes&limit=101")
            .await
            .status(),
        400
    );
    assert_eq!(
        server.get("/api/occurrences?runbook=nope").await.status(),
        404
    );
    assert_eq!(
        server.worker.calls(),
        vec![
            Call::Occurrences {
                runbook: "archive-old-mailboxes".into(),
                limit: 3
            },
            Call::Occurrences {
                runbook: "nope".into(),
                limit: 10
            },
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let server = spawn(loopback_with_token()).await;
    let response = server.get("/api/nothing-here").await;
    assert_eq!(response.status(), 404);
    assert!(json_of(response).await["error"].is_string());
    assert_eq!(
        server
            .get("/api/runbooks/archive-old-mailboxes/run")
            .await
            .status(),
        405
    );
    server.stop().await;
}

/// Who may change something: every combination of configured token and presented
/// credentials, on loopback and elsewhere; a refused request never reaches the worker.
#[tokio::test]
async fn the_change_routes_need_the_right_bearer_token_and_a_refusal_changes_nothing() {
    let right = bearer(TOKEN);
    let wrong = bearer(WRONG_TOKEN);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("admin:{TOKEN}")
        )
    );
    // (token configured, loopback, Authorization, expected status)
    let cases: Vec<(bool, bool, Option<&str>, u16)> = vec![
        (false, true, None, 403),
        (false, true, Some(&right), 403),
        (false, false, Some(&right), 403),
        (true, true, None, 401),
        (true, false, None, 401),
        (true, true, Some(&wrong), 403),
        (true, false, Some(&wrong), 403),
        (true, true, Some(&basic), 403),
        (true, true, Some("Bearer"), 403),
        (true, true, Some(&right), 202),
        (true, false, Some(&right), 202),
    ];
    for (configured, loopback, authorization, want) in cases {
        let token = configured.then(|| TOKEN.into());
        let server = spawn(ApiAuth::new(token, loopback)).await;
        for path in [
            "/api/runbooks/archive-old-mailboxes/run",
            "/api/jobs/01HWVD8Q0G0000000000000003/cancel",
        ] {
            let response = server.post(path, authorization, Some("{}")).await;
            let status = response.status().as_u16();
            let challenge = response
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>();
            let body = json_of(response).await;
            let case =
                format!("{path} configured={configured} loopback={loopback} {authorization:?}");
            assert_eq!(status, want, "{case}: {body}");
            assert_eq!(
                challenge.iter().any(|c| c.starts_with("Bearer")),
                want == 401,
                "{case}: {challenge:?}"
            );
            if want == 403 && !configured {
                let error = body["error"].as_str().unwrap();
                assert!(
                    error.contains("http.api_token") && error.contains("http.api_token_file"),
                    "{case}: {error}"
                );
            }
        }
        let changes = server.worker.changes();
        if want == 202 {
            assert_eq!(changes.len(), 2, "{changes:?}");
        } else {
            assert_eq!(changes, vec![], "a refused request reached the worker");
            // Nothing changed: the job list is as canned.
            assert_eq!(server.worker.jobs.lock().unwrap().len(), 3);
        }
        server.stop().await;
    }
}

/// Who may read: open on loopback (for loopback host names), otherwise the token as a bearer
/// header or as the password of HTTP Basic.
#[tokio::test]
async fn reads_are_open_on_loopback_only_and_otherwise_need_the_token() {
    let right = bearer(TOKEN);
    let wrong = bearer(WRONG_TOKEN);
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("anyone:{TOKEN}")
        )
    );
    // (token configured, loopback, Authorization, Host override, expected status)
    type Case<'a> = (bool, bool, Option<&'a str>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (false, true, None, None, 200),
        (true, true, None, None, 200),
        (true, true, Some(&wrong), None, 200),
        (false, true, None, Some("localhost:8080"), 200),
        // A rebound DNS name pointing at loopback does not get the open reads.
        (false, true, None, Some("attacker.example"), 403),
        (true, true, Some(&right), Some("attacker.example"), 200),
        (false, false, None, None, 403),
        (false, false, Some(&right), None, 403),
        (true, false, None, None, 401),
        (true, false, Some(&wrong), None, 403),
        (true, false, Some(&right), None, 200),
        (true, false, Some(&basic), None, 200),
    ];
    for (configured, loopback, authorization, host, want) in cases {
        let token = configured.then(|| TOKEN.into());
        let server = spawn(ApiAuth::new(token, loopback)).await;
        for path in [
            "/api/runbooks",
            "/api/runbooks/quota-report",
            "/api/jobs",
            "/api/jobs/01HWVD8Q0G0000000000000001",
            "/api/occurrences?runbook=quota-report",
            "/",
            "/jobs/01HWVD8Q0G0000000000000001",
        ] {
            let mut request = server.client.get(server.url(path));
            if let Some(value) = authorization {
                request = request.header("authorization", value);
            }
            if let Some(host) = host {
                request = request.header("host", host);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenges: Vec<String> = response
                .headers()
                .get_all("www-authenticate")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            let case = format!(
                "{path} configured={configured} loopback={loopback} {authorization:?} host={host:?}"
            );
            assert_eq!(status, want, "{case}");
            if want == 401 {
                // The Basic challenge lets a browser open the dashboard with the token.
                assert!(
                    challenges.iter().any(|c| c.starts_with("Bearer"))
                        && challenges.iter().any(|c| c.starts_with("Basic")),
                    "{case}: {challenges:?}"
                );
            }
        }
        if want != 200 {
            assert_eq!(
                server.worker.calls(),
                vec![],
                "a refused read reached the worker"
            );
        }
        server.stop().await;
    }
}

/// A `MakeWriter` that keeps everything in memory.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_token_never_appears_in_a_response_or_the_log() {
    // The default current-thread runtime runs the server on this thread, so a thread-local
    // subscriber sees every event of the requests below.
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests in this binary create and drop their own subscribers concurrently; a
    // callsite first seen while none of them wanted it may have cached "never". Recompute.
    tracing::callsite::rebuild_interest_cache();

    let mut seen = String::new();
    for loopback in [true, false] {
        let server = spawn(ApiAuth::new(Some(TOKEN.into()), loopback)).await;
        for token in [TOKEN, WRONG_TOKEN] {
            let auth = bearer(token);
            let requests = [
                (
                    "POST",
                    "/api/runbooks/archive-old-mailboxes/run",
                    Some(r#"{"params": {"days": 1}}"#),
                ),
                ("POST", "/api/runbooks/explodes/run", None),
                ("POST", "/api/runbooks/nope/run", Some("not json")),
                ("POST", "/api/jobs/01HWVD8Q0G0000000000000003/cancel", None),
                ("GET", "/api/runbooks", None),
                ("GET", "/api/jobs", None),
                ("GET", "/api/jobs/01HWVD8Q0G0000000000000001", None),
                ("GET", "/", None),
                ("GET", "/jobs/01HWVD8Q0G0000000000000001", None),
                ("GET", "/jobs/missing", None),
                ("GET", "/readyz", None),
                ("GET", "/metrics", None),
            ];
            for (method, path, body) in requests {
                let mut request = match method {
                    "POST" => server.client.post(server.url(path)),
                    _ => server.client.get(server.url(path)),
                };
                request = request.header("authorization", &auth);
                if let Some(body) = body {
                    request = request.body(body);
                }
                let response = request.send().await.unwrap();
                seen.push_str(&format!("{method} {path} {}\n", response.status()));
                for (name, value) in response.headers() {
                    seen.push_str(&format!(
                        "{name}: {}\n",
                        String::from_utf8_lossy(value.as_bytes())
                    ));
                }
                seen.push_str(&response.text().await.unwrap());
            }
            // Without credentials, the refusals.
            let response = server
                .post("/api/runbooks/archive-old-mailboxes/run", None, None)
                .await;
            seen.push_str(&response.text().await.unwrap());
        }
        server.stop().await;
    }
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();

    assert!(seen.contains("01HWVD8Q0J"), "the right token did run a job");
    assert!(
        seen.contains("the API token is wrong"),
        "the wrong token was refused"
    );
    assert!(log.contains("http request"), "requests were logged:\n{log}");
    assert!(
        log.contains("refused a request"),
        "refusals were logged:\n{log}"
    );
    assert!(
        log.contains("secret-place"),
        "the internal error's detail went to the log:\n{log}"
    );
    for secret in [TOKEN, WRONG_TOKEN, "3f9a1c77e2b84d05a6c9e1f2d3b4a5c6"] {
        assert!(!seen.contains(secret), "{secret} in a response:\n{seen}");
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert!(
        !seen.contains("secret-place"),
        "internal detail in a response"
    );
}

#[tokio::test]
async fn the_dashboard_escapes_everything_it_shows() {
    let server = spawn(loopback_with_token()).await;
    let response = server.get("/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = response.text().await.unwrap();
    assert!(
        !html.contains(HOSTILE_DESCRIPTION),
        "raw description in:\n{html}"
    );
    assert!(!html.contains("<script>document"), "{html}");
    assert!(
        html.contains("&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;&#x2f;script&gt; &amp; &quot;quotes&quot;"),
        "escaped description missing in:\n{html}"
    );
    // The one script is the page's own file; nothing is loaded from elsewhere.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains(r#"<script src="/static/dashboard.js" defer>"#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    assert!(!html.contains(TOKEN));

    let job = server
        .get("/jobs/01HWVD8Q0G0000000000000001")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        job.contains("3 mailboxes on litigation hold &lt;skipped&gt;"),
        "{job}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_script_posts_to_the_api_routes_with_a_bearer_header() {
    let server = spawn(loopback_with_token()).await;
    let response = server.get("/static/dashboard.js").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let script = response.text().await.unwrap();
    for needle in [
        r#""/api/runbooks/" + encodeURIComponent(action.runbook) + "/run""#,
        r#""/api/jobs/" + encodeURIComponent(action.job) + "/cancel""#,
        r#""Authorization": "Bearer " + token"#,
        r#""X-Runbook-Worker-Source": "dashboard""#,
        r#"method: "POST""#,
    ] {
        assert!(script.contains(needle), "{needle} missing in the script");
    }
    // Nothing keeps the token beyond the page.
    for forbidden in [
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "innerHTML",
    ] {
        assert!(!script.contains(forbidden), "{forbidden} in the script");
    }
    let css = server.get("/static/dashboard.css").await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_job_page_is_a_404_page() {
    let server = spawn(loopback_with_token()).await;
    let response = server.get("/jobs/%3Cb%3Enope").await;
    assert_eq!(response.status(), 404);
    let html = response.text().await.unwrap();
    assert!(html.contains("404 Not Found"), "{html}");
    assert!(html.contains("&lt;b&gt;nope"), "{html}");
    assert!(!html.contains("<b>nope"), "{html}");
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_renders_in_headless_chromium() {
    let server = spawn(loopback_with_token()).await;

    let dom = chromium(&server.url("/"), &["--dump-dom".to_string()]).await;
    for needle in [
        "archive-old-mailboxes",
        "Archive mailboxes inactive for 90 days",
        "0 30 2 * * *",
        "2024-05-01 00:30:00 UTC",
        "2024-05-01 02:30:00 CEST",
        "runbooks/mailbox-permissions.toml",
        "minute must be 0-59",
        "did you mean `throttle`?",
        "keeps running",
        r#"class="status status-failed""#,
        r#"data-action="run" data-runbook="quota-report""#,
        r#"href="/jobs/01HWVD8Q0G0000000000000002""#,
    ] {
        assert!(dom.contains(needle), "{needle} missing in the DOM:\n{dom}");
    }
    // The hostile description is text, not a script that ran.
    assert!(dom.contains("<title>runbook-worker</title>"), "{dom}");
    assert!(!dom.contains("pwned</title>"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'"),
        "{dom}"
    );

    let dom = chromium(
        &server.url("/jobs/01HWVD8Q0G0000000000000001"),
        &["--dump-dom".to_string()],
    )
    .await;
    for needle in [
        "01HWVD8Q0G0000000000000001",
        r#"id="job-status">Completed"#,
        "enable-archive",
        "412 mailboxes read, 40 inactive for 90 days",
        "3 mailboxes on litigation hold &lt;skipped&gt;",
        r#"class="stream-warning""#,
        "2m 04s",
    ] {
        assert!(dom.contains(needle), "{needle} missing in the DOM:\n{dom}");
    }

    for (path, file) in [
        ("/", "dashboard.png"),
        ("/jobs/01HWVD8Q0G0000000000000002", "dashboard-job.png"),
    ] {
        screenshot(&server.url(path), file, &[]).await;
    }
    server.stop().await;
}

/// A page that frames the dashboard, presses Run now on one runbook, types the token and
/// a parameter into the dialog's form, submits it and copies the dialog's answer out.
const RUN_NOW_PAGE: &str = r##"<!doctype html>
<html><body>
<iframe id="app" src="/" width="1200" height="700"></iframe>
<pre id="outcome">waiting</pre>
<script>
const frame = document.getElementById("app");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument;
  doc.querySelector('button[data-action="run"][data-runbook="archive-old-mailboxes"]').click();
  doc.querySelector('input[name="token"]').value = "__TOKEN__";
  doc.querySelector('#action-dialog [data-param="days"]').value = "30";
  doc.querySelector('input[name="dry_run"]').checked = true;
  doc.querySelector("#action-dialog form").requestSubmit();
  const result = doc.querySelector("[data-result]");
  const poll = setInterval(() => {
    if (result.dataset.state === "done" || result.dataset.state === "error") {
      clearInterval(poll);
      document.getElementById("outcome").textContent =
        result.dataset.state + ": " + result.textContent;
    }
  }, 20);
});
</script>
</body></html>"##;

#[tokio::test]
async fn the_run_now_button_starts_a_job_from_a_real_browser() {
    let page = RUN_NOW_PAGE.replace("__TOKEN__", TOKEN);
    let extra = axum::Router::new().route(
        "/test/run-now",
        axum::routing::get(move || {
            let page = page.clone();
            async move { Html(page) }
        }),
    );
    let server = spawn_with(FakeWorker::canned(), loopback_with_token(), Some(extra)).await;

    // Virtual time stands still while the POST is in flight, so the budget only bounds the
    // page's own timers.
    let dom = chromium(
        &server.url("/test/run-now"),
        &[
            "--dump-dom".to_string(),
            "--virtual-time-budget=10000".to_string(),
        ],
    )
    .await;
    assert!(
        dom.contains(&format!(
            r#"<pre id="outcome">done: Started job {}</pre>"#,
            new_job_id(4)
        )),
        "the dialog did not report the job:\n{dom}"
    );
    assert_eq!(
        server.worker.changes(),
        vec![Call::Run {
            name: "archive-old-mailboxes".into(),
            request: RunRequest {
                params: params(&[("days", json!(30))]),
                dry_run: true,
                requested_via: RequestedVia::Dashboard,
            },
        }]
    );

    // The same page, photographed: the dialog with its answer.
    screenshot(
        &server.url("/test/run-now"),
        "dashboard-run-now.png",
        &["--virtual-time-budget=10000".to_string()],
    )
    .await;
    assert_eq!(server.worker.changes().len(), 2);
    server.stop().await;
}

/// Limits for the stall tests: small timeouts so they end quickly.
fn limits(max_connections: usize, header_read_timeout: Duration) -> ServerLimits {
    ServerLimits {
        header_read_timeout,
        idle_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(30),
        max_connections,
    }
}

/// 300 connections that send half a request header (the attack that used to hold every
/// connection for ever and starve the worker of file descriptors) are closed by the server
/// once the header-read timeout passes, and `/healthz` answers all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_after_the_header_timeout_while_healthz_answers() {
    const SLOW: usize = 300;
    let server = spawn_limited(
        FakeWorker::canned(),
        loopback_with_token(),
        None,
        limits(400, Duration::from_secs(5)),
    )
    .await;
    let opened = tokio::time::Instant::now();
    let slow = open_half_requests(server.addr, SLOW).await;

    for _ in 0..3 {
        let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
        let response = fresh
            .get(server.url("/healthz"))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .expect("healthz answers while the slow connections are open");
        assert_eq!(response.status(), 200);
    }
    // Checked after the probes: what is open now was open while they were answered.
    let open_during_probes = slow.iter().filter(|s| still_open(s)).count();
    assert!(
        open_during_probes > 0,
        "the slow connections were closed before healthz was asked, so this proves nothing"
    );

    let waiting_since = opened.elapsed();
    let ended = futures::future::join_all(
        slow.into_iter()
            .map(|s| read_until_closed(s, Duration::from_secs(60), 512)),
    )
    .await;
    let closed = ended.iter().filter(|e| e.closed).count();
    let first = ended.iter().map(|e| e.after).min().unwrap_or_default() + waiting_since;
    let last = ended.iter().map(|e| e.after).max().unwrap_or_default() + waiting_since;
    let refused = ended
        .iter()
        .filter(|e| e.received.starts_with(b"HTTP/1.1 503"))
        .count();
    eprintln!(
        "stall figures: {SLOW} half requests opened; 3 of 3 healthz answered; {open_during_probes} \
         still open after them; {closed} closed by the server between {:.1} s and {:.1} s \
         after opening (header_read_timeout 5 s)",
        first.as_secs_f64(),
        last.as_secs_f64()
    );
    assert_eq!(closed, SLOW, "every half request is closed by the server");
    assert_eq!(refused, 0, "below the cap no connection is refused");

    let response = server.get("/healthz").await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

/// Beyond `max_connections` a new connection gets a JSON 503 at once instead of waiting
/// in the kernel's queue, and connections are served again once the slow ones are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_a_json_503_and_service_resumes_when_they_go() {
    use tokio::io::AsyncWriteExt as _;
    const CAP: usize = 20;
    // A long header timeout: nothing may time out while the cap is full.
    let server = spawn_limited(
        FakeWorker::canned(),
        loopback_with_token(),
        None,
        limits(CAP, Duration::from_secs(300)),
    )
    .await;
    let slow = open_half_requests(server.addr, CAP).await;

    // The server accepts in order, so these come after the slow ones hold every slot.
    for _ in 0..5 {
        let mut extra = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let ended = read_until_closed(extra, Duration::from_secs(30), 4096).await;
        assert!(
            ended.closed,
            "a connection beyond the cap is answered and closed"
        );
        let text = String::from_utf8_lossy(&ended.received);
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");
        let error: Value = serde_json::from_str(body).expect("a JSON body");
        assert!(
            error["error"]
                .as_str()
                .unwrap()
                .contains("http.max_connections"),
            "{error}"
        );
    }
    let full = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = full.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 503, "the cap holds for probes too");

    drop(slow);
    let served = wait_until(Duration::from_secs(30), || async {
        let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
        matches!(
            fresh.get(server.url("/healthz")).send().await,
            Ok(r) if r.status() == 200
        )
    })
    .await;
    assert!(served, "healthz answers once the slow connections are gone");
    server.stop().await;
}

/// A handler that never answers is cut by `request_timeout` with a JSON 503.
#[tokio::test]
async fn a_request_that_outlives_the_request_timeout_gets_a_json_503() {
    let slow_route = axum::Router::new().route(
        "/api/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "never"
        }),
    );
    let server = spawn_limited(
        FakeWorker::canned(),
        loopback_with_token(),
        Some(slow_route),
        ServerLimits {
            request_timeout: Duration::from_secs(1),
            ..ServerLimits::default()
        },
    )
    .await;
    let response = server.get("/api/slow").await;
    assert_eq!(response.status(), 503);
    let body = json_of(response).await;
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http.request_timeout"),
        "{body}"
    );
    server.stop().await;
}

/// A client that asks for a large response and never reads it is cut off after the idle
/// timeout instead of holding its connection for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt as _;
    const BIG: usize = 32 * 1024 * 1024;
    let big_route =
        axum::Router::new().route("/api/big", axum::routing::get(|| async { vec![b'x'; BIG] }));
    let server = spawn_limited(
        FakeWorker::canned(),
        loopback_with_token(),
        Some(big_route),
        ServerLimits {
            idle_timeout: Duration::from_secs(1),
            max_connections: 1,
            ..ServerLimits::default()
        },
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /api/big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // The socket buffers fill and the server's writes stall. With a cap of one connection,
    // a probe is refused until the watchdog has closed the stalled one.
    let freed = wait_until(Duration::from_secs(60), || async {
        let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
        matches!(
            fresh.get(server.url("/healthz")).send().await,
            Ok(r) if r.status() == 200
        )
    })
    .await;
    assert!(freed, "the stalled connection is closed and its slot freed");
    let ended = read_until_closed(stream, Duration::from_secs(60), 0).await;
    assert!(
        ended.closed,
        "the stalled connection is closed by the server"
    );
    assert!(
        ended.total < BIG,
        "the whole body arrived ({} bytes): the client was not cut off",
        ended.total
    );
    server.stop().await;
}

/// Every error on the API is `{"error": …}`, including the ones axum produces itself.
#[tokio::test]
async fn every_api_error_is_json_even_the_ones_axum_makes() {
    let server = spawn(loopback_with_token()).await;
    let auth = bearer(TOKEN);
    let too_big = format!("{{\"params\": {{\"x\": \"{}\"}}}}", "a".repeat(300 * 1024));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            server.client.get(server.url("/api/nothing-here")),
            404,
            "no such route",
        ),
        (
            server
                .client
                .get(server.url("/api/runbooks/archive-old-mailboxes/run")),
            405,
            "method GET is not allowed",
        ),
        (
            server.client.post(server.url("/healthz")),
            405,
            "method POST is not allowed",
        ),
        (
            server
                .client
                .post(server.url("/api/runbooks/archive-old-mailboxes/run"))
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(too_big),
            413,
            "larger than 256 KiB",
        ),
        (server.client.get(server.url("/api/jobs/%FF")), 400, ""),
    ];
    for (request, status, needle) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{:?}", response.url().path());
        if status == 405 {
            assert!(response.headers().contains_key("allow"));
        }
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let body = json_of(response).await;
        let error = body["error"].as_str().expect("an error message");
        assert!(
            !error.is_empty() && error.contains(needle),
            "{status}: {error}"
        );
    }
    assert_eq!(
        server.worker.changes(),
        vec![],
        "an oversized run reached the worker"
    );
    server.stop().await;
}

/// Anonymous reads rest on the peer and a strictly parsed Host, not on a header that
/// mentions localhost; proxy headers and `http.anonymous_reads = false` turn them off.
#[tokio::test]
async fn anonymous_reads_refuse_hostile_hosts_proxied_requests_and_can_be_turned_off() {
    let open = spawn(ApiAuth::new(None, true)).await;
    for (header, value, want) in [
        ("host", "localhost:1@evil.com", 403),
        ("host", "localhost:99999", 403),
        ("host", "evil.com#@127.0.0.1", 403),
        ("x-forwarded-for", "203.0.113.9", 403),
        ("forwarded", "for=203.0.113.9", 403),
        ("host", "localhost:8080", 200),
    ] {
        let response = open.get_with("/api/runbooks", &[(header, value)]).await;
        assert_eq!(response.status(), want, "{header}: {value}");
        if want == 403 {
            assert!(json_of(response).await["error"].is_string());
        }
    }
    open.stop().await;

    let closed = spawn(ApiAuth::new(Some(TOKEN.into()), true).without_anonymous_reads()).await;
    let response = closed.get("/api/runbooks").await;
    assert_eq!(response.status(), 401);
    let response = closed
        .get_with("/api/runbooks", &[("authorization", &bearer(TOKEN))])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        closed.worker.calls(),
        vec![],
        "runbooks are not a worker call"
    );
    closed.stop().await;
}

/// Over the real worker: runbook files are shown relative to the runbooks folder (never the
/// host's absolute path), and `?before=` earlier than 1970 lists no job rather than the
/// newest ones.
#[tokio::test]
async fn the_worker_api_shows_relative_files_and_lists_nothing_before_1970() {
    let (app, _runner) = spawn_with_fake_runner(
        &[
            ("a.toml", &runbook("description = \"fine\"")),
            ("bad.toml", "this is not toml = = ="),
        ],
        &[],
    )
    .await;
    let view = app.get_json("/api/runbooks").await;
    assert_eq!(view["runbooks"][0]["file"], "a.toml", "{view:#}");
    assert_eq!(view["invalid_files"][0]["file"], "bad.toml", "{view:#}");
    let root = app.root().display().to_string();
    assert!(!view.to_string().contains(&root), "{view:#}");

    app.scheduler
        .run("a", Vec::new(), false, Trigger::Manual)
        .await
        .expect("run a");
    let listed = wait_until(Duration::from_secs(30), || async {
        app.get_json("/api/jobs").await["jobs"]
            .as_array()
            .is_some_and(|jobs| jobs.len() == 1)
    })
    .await;
    assert!(listed, "the job is listed");
    for (before, count) in [
        ("1969-12-31T23:59:59Z", 0),
        ("1900-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00Z", 0),
        ("9999-12-31T23:59:59Z", 1),
    ] {
        let jobs = app.get_json(&format!("/api/jobs?before={before}")).await;
        assert_eq!(
            jobs["jobs"].as_array().map(Vec::len),
            Some(count),
            "before={before}: {jobs}"
        );
    }
    app.stop().await;
}

/// A catalog with hundreds of runbooks and a job with a huge stream give bounded responses
/// that say how much they leave out, on the API and the dashboard.
#[tokio::test]
async fn long_lists_and_streams_are_cut_with_a_count_of_what_is_left_out() {
    const BIG_JOB: &str = "01HWVD8Q0K0000000000000001";
    let worker = FakeWorker::canned();
    {
        let mut view = worker.runbooks.lock().unwrap();
        let template = view.runbooks[2].clone();
        for i in 0..600 {
            view.runbooks.push(runbook_worker::http::RunbookView {
                name: format!("extra-{i:03}"),
                ..template.clone()
            });
        }
        let entries: Vec<(StreamKind, &str, &str)> = (0..6000)
            .map(|_| (StreamKind::Output, "2024-05-01T00:30:01Z", "line"))
            .collect();
        worker.jobs.lock().unwrap().push(job(
            BIG_JOB,
            "quota-report",
            Trigger::Manual,
            JobStatus::Completed,
            ("2024-05-01T00:30:00Z", None, None),
            vec![],
            None,
            entries,
        ));
    }
    let server = spawn_with(worker, loopback_with_token(), None).await;

    let view = json_of(server.get("/api/runbooks").await).await;
    let listed = view["runbooks"].as_array().unwrap().len();
    assert_eq!(listed, 500);
    assert_eq!(view["more_runbooks"], 603 - 500);
    assert_eq!(view["more_invalid_files"], 0);

    let job = json_of(server.get(&format!("/api/jobs/{BIG_JOB}")).await).await;
    assert_eq!(job["streams"].as_array().unwrap().len(), 5000);
    assert_eq!(job["streams_more"], 1000);

    let index = server.get("/").await.text().await.unwrap();
    assert!(
        index.contains("and 103 more runbooks"),
        "no marker on the index page"
    );
    let page = server
        .get(&format!("/jobs/{BIG_JOB}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("and 1000 more stream records"),
        "no marker on the job page"
    );
    server.stop().await;
}
