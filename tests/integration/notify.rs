//! Notifications end to end against loopback receivers: each kind delivers, retries keep
//! the webhook-id, 410 stops, slow or dead receivers never block `job_ended`, bursts are
//! throttled, secrets stay out of logs and errors, settings errors name their key, and
//! `runbook-worker notify test` reports what happened.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use runbook_worker::clock::{ManualClock, SharedClock, SystemClock};
use runbook_worker::history::{JobStatus, StepCounts, Trigger};
use runbook_worker::notify::{DeliveryOutcome, JobNotice, NotifyEvent, Submitted};

use crate::support::notify::{
    GRAPH_TOKEN, LogCapture, Receiver, Reply, Started, down_url, in_own_process, settings, start,
    verify_standard_webhook,
};
use crate::support::{run_binary, stderr, stdout};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

fn failed(runbook: &str, job: &str) -> JobNotice {
    let start: DateTime<Utc> = Utc::now() - chrono::Duration::seconds(95);
    let mut n = JobNotice::new(runbook, Some(job.to_string()), JobStatus::Failed);
    n.trigger = Some(Trigger::Schedule);
    n.scheduled_for = Some(start);
    n.started_at = Some(start);
    n.ended_at = Some(start + chrono::Duration::seconds(90));
    n.error = Some("Get-Mailbox failed: The operation couldn't be performed".to_string());
    n.hint = Some("check the Exchange role".to_string());
    n.steps = vec![StepCounts {
        step: "convert".to_string(),
        records_read: 12,
        done: 10,
        failed: 2,
        ..StepCounts::default()
    }];
    n.item_errors = vec!["shared1@contoso.com: not found".to_string()];
    n
}

fn webhook_target(name: &str, url: &str, extra: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\n{extra}\n")
}

/// A receiver answering `replies` and a notifier whose default target `hook` (a webhook with
/// `target_extra` keys) posts to it; `notify_extra` adds `[notify]` keys.
async fn hook_notifier(
    replies: Vec<Reply>,
    notify_extra: &str,
    target_extra: &str,
    clock: SharedClock,
    public_url: Option<&str>,
) -> (Receiver, Started) {
    let receiver = Receiver::start(replies).await;
    let s = settings(&format!(
        "default = [\"hook\"]\n{notify_extra}\n{}",
        webhook_target("hook", &receiver.url("/hook"), target_extra)
    ));
    let started = start(&s, clock, public_url);
    (receiver, started)
}

#[tokio::test]
async fn a_webhook_target_gets_a_signed_json_message_and_the_metric_counts_it() {
    let (receiver, started) = hook_notifier(
        vec![Reply::Status(204)],
        "",
        &format!("secret = \"{SECRET}\""),
        system_clock(),
        Some("https://worker.example/"),
    )
    .await;
    assert_eq!(
        started.notifier.job_ended(failed("convert-shared", "j1")),
        Submitted::Queued
    );
    let reports = started.reports.wait_for(1).await;
    assert_eq!(
        reports[0].outcome,
        DeliveryOutcome::Delivered { status: 204 }
    );
    assert_eq!(reports[0].event, NotifyEvent::Failed);

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(
        verify_standard_webhook(SECRET, request, Utc::now()),
        "{request:?}"
    );
    assert!(
        !verify_standard_webhook(
            "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            request,
            Utc::now()
        ),
        "another key must not verify"
    );
    assert_eq!(
        request.header("webhook-id"),
        Some(reports[0].message_id.as_str())
    );
    let body = request.json();
    assert_eq!(body["type"], "job.failed");
    assert_eq!(body["runbook"], "convert-shared");
    assert_eq!(body["job_id"], "j1");
    assert_eq!(body["status"], "Failed");
    assert_eq!(body["trigger"], "schedule");
    assert_eq!(body["duration_ms"], 90_000);
    assert_eq!(body["hint"], "check the Exchange role");
    assert_eq!(body["steps"][0]["failed"], 2);
    assert_eq!(body["item_errors"][0], "shared1@contoso.com: not found");
    assert_eq!(body["url"], "https://worker.example/jobs/j1");
    assert_eq!(body["suppressed"], 0);

    let metrics = started.metrics.render();
    assert!(
        metrics.contains(
            "runbook_worker_notifications_total{target=\"hook\",outcome=\"delivered\"} 1"
        ),
        "{metrics}"
    );
    started.stop().await;
}

#[tokio::test]
async fn a_teams_target_gets_an_adaptive_card_that_links_to_the_job() {
    let receiver = Receiver::start(vec![Reply::Status(202)]).await;
    let s = settings(&format!(
        "[[targets]]\nname = \"teams-ops\"\nkind = \"teams\"\nurl = \"{}\"\n",
        receiver.url("/workflows/abc/triggers/manual/paths/invoke?sig=xyz")
    ));
    let started = start(&s, system_clock(), Some("https://worker.example"));
    let mut notice = failed("convert-shared", "j2");
    notice.targets = vec!["teams-ops".to_string()];
    started.notifier.job_ended(notice);
    let reports = started.reports.wait_for(1).await;
    assert_eq!(
        reports[0].outcome,
        DeliveryOutcome::Delivered { status: 202 }
    );
    let request = &receiver.requests()[0];
    assert!(request.uri.ends_with("sig=xyz"), "{}", request.uri);
    assert_eq!(request.header("webhook-signature"), None);
    let card = request.json();
    assert_eq!(card["type"], "message");
    let attachment = &card["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(
        attachment["content"]["body"][0]["text"],
        "Job failed: convert-shared"
    );
    let facts = attachment["content"]["body"][1]["facts"]
        .as_array()
        .unwrap();
    assert!(facts.iter().any(|f| f["title"] == "Error"), "{facts:?}");
    let action = &attachment["content"]["actions"][0];
    assert_eq!(action["type"], "Action.OpenUrl");
    assert_eq!(action["url"], "https://worker.example/jobs/j2");
    started.stop().await;
}

#[tokio::test]
async fn an_email_target_sends_through_graph_send_mail_with_the_identity_token() {
    let graph = Receiver::start(vec![
        Reply::Status(202),
        Reply::Full(
            403,
            vec![("content-type", "application/json".to_string())],
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}"#.to_string(),
        ),
    ])
    .await;
    let s = settings(&format!(
        "graph_endpoint = \"{}\"\ndefault = [\"mail\"]\n[[targets]]\nname = \"mail\"\nkind = \"email\"\nfrom = \"noreply@contoso.com\"\nto = [\"ops@contoso.com\", \"owner@contoso.com\"]\n",
        graph.base
    ));
    let started = start(&s, system_clock(), None);
    let mut notice = failed("a<b>", "j3");
    notice.error = Some("<b>bold</b>".to_string());
    started.notifier.job_ended(notice);
    let reports = started.reports.wait_for(1).await;
    assert_eq!(
        reports[0].outcome,
        DeliveryOutcome::Delivered { status: 202 }
    );

    let request = &graph.requests()[0];
    assert_eq!(request.uri, "/v1.0/users/noreply@contoso.com/sendMail");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {GRAPH_TOKEN}").as_str())
    );
    let body = request.json();
    assert_eq!(body["saveToSentItems"], false);
    assert_eq!(body["message"]["subject"], "Job failed: a<b>");
    assert_eq!(body["message"]["body"]["contentType"], "HTML");
    let html = body["message"]["body"]["content"].as_str().unwrap();
    assert!(
        html.contains("&lt;b&gt;bold&lt;/b&gt;") && !html.contains("<b>bold"),
        "{html}"
    );
    assert_eq!(
        body["message"]["toRecipients"][1]["emailAddress"]["address"],
        "owner@contoso.com"
    );

    // The second message is refused: no retry, and the hint names Mail.Send and RBAC.
    started.notifier.job_ended(failed("other", "j4"));
    let reports = started.reports.wait_for(2).await;
    let DeliveryOutcome::Failed {
        status,
        error,
        hint,
    } = &reports[1].outcome
    else {
        panic!("{reports:?}");
    };
    assert_eq!(*status, Some(403));
    assert!(error.contains("ErrorAccessDenied"), "{error}");
    let hint = hint.as_deref().unwrap();
    assert!(
        hint.contains("Mail.Send") && hint.contains("RBAC for Applications"),
        "{hint}"
    );
    assert_eq!(reports[1].attempts, 1);
    assert_eq!(graph.requests().len(), 2);
    started.stop().await;
}

#[tokio::test]
async fn a_receiver_that_answers_500_then_200_gets_the_message_once_more_with_the_same_id() {
    let (receiver, started) = hook_notifier(
        vec![Reply::Status(500), Reply::Status(200)],
        "",
        &format!("secret = \"{SECRET}\""),
        system_clock(),
        None,
    )
    .await;
    started.notifier.job_ended(failed("r", "j"));
    let reports = started.reports.wait_for(1).await;
    assert_eq!(
        reports[0].outcome,
        DeliveryOutcome::Delivered { status: 200 }
    );
    assert_eq!(reports[0].attempts, 2);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "one retry, then nothing more");
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id")
    );
    assert!(
        requests
            .iter()
            .all(|r| verify_standard_webhook(SECRET, r, Utc::now()))
    );
    started.stop().await;
}

#[tokio::test]
async fn a_410_stops_sending_to_that_target() {
    let (receiver, started) = hook_notifier(
        vec![Reply::Status(410)],
        "min_interval = \"0s\"",
        "",
        system_clock(),
        None,
    )
    .await;
    started.notifier.job_ended(failed("r", "j1"));
    let reports = started.reports.wait_for(1).await;
    assert_eq!(reports[0].outcome, DeliveryOutcome::Gone { status: 410 });
    assert_eq!(reports[0].attempts, 1);
    started.notifier.job_ended(failed("r", "j2"));
    let reports = started.reports.wait_for(2).await;
    assert_eq!(reports[1].outcome, DeliveryOutcome::Disabled);
    assert_eq!(receiver.requests().len(), 1);
    started.stop().await;
}

#[tokio::test]
async fn receivers_that_hang_or_are_down_never_block_job_ended_and_are_reported_failed() {
    let hanging = Receiver::start(vec![Reply::Hang]).await;
    let down = down_url().await;
    let s = settings(&format!(
        "default = [\"slow\", \"dead\"]\nqueue_capacity = 2\nmax_attempts = 2\ntimeout = \"200ms\"\n{}{}",
        webhook_target("slow", &hanging.url("/hook"), ""),
        webhook_target("dead", &down, "")
    ));
    let started = start(&s, system_clock(), None);
    // No await between the calls: the notifier's task cannot take anything yet, so the
    // queue holds two notices and the rest are dropped at once instead of waiting.
    let submitted: Vec<Submitted> = (0..20)
        .map(|i| {
            started
                .notifier
                .job_ended(failed(&format!("r{i}"), &format!("j{i}")))
        })
        .collect();
    assert_eq!(
        submitted
            .iter()
            .filter(|s| **s == Submitted::Queued)
            .count(),
        2
    );
    assert_eq!(
        submitted
            .iter()
            .filter(|s| **s == Submitted::Dropped)
            .count(),
        18
    );

    let reports = started.reports.wait_for(40).await;
    let count = |target: &str, outcome: &str| {
        reports
            .iter()
            .filter(|r| r.target == target && r.outcome.as_str() == outcome)
            .count()
    };
    assert_eq!(count("slow", "dropped"), 18);
    assert_eq!(count("dead", "dropped"), 18);
    assert_eq!(count("slow", "failed"), 2);
    assert_eq!(count("dead", "failed"), 2);
    for r in reports.iter().filter(|r| r.outcome.as_str() == "failed") {
        assert_eq!(r.attempts, 2, "{r:?}");
        let DeliveryOutcome::Failed { error, .. } = &r.outcome else {
            unreachable!()
        };
        let expected = if r.target == "slow" {
            "no answer"
        } else {
            "cannot connect"
        };
        assert!(error.contains(expected), "{error}");
    }
    let metrics = started.metrics.render();
    assert!(
        metrics
            .contains("runbook_worker_notifications_total{target=\"dead\",outcome=\"dropped\"} 18"),
        "{metrics}"
    );
    started.stop().await;
}

#[tokio::test]
async fn a_burst_of_failures_sends_one_message_and_the_next_one_counts_the_rest() {
    let clock = ManualClock::new(Utc::now());
    let (receiver, started) = hook_notifier(
        vec![Reply::Status(200)],
        "min_interval = \"15m\"",
        "",
        Arc::new(clock.clone()),
        None,
    )
    .await;
    for i in 0..4 {
        started
            .notifier
            .job_ended(failed("burst", &format!("j{i}")));
    }
    let reports = started.reports.wait_for(4).await;
    assert_eq!(
        reports
            .iter()
            .filter(|r| r.outcome == DeliveryOutcome::Suppressed)
            .count(),
        3
    );
    assert_eq!(receiver.requests().len(), 1);

    clock.advance(Duration::from_secs(15 * 60));
    started.notifier.job_ended(failed("burst", "j9"));
    started.reports.wait_for(5).await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].json()["suppressed"], 3);
    assert_eq!(requests[1].json()["job_id"], "j9");

    // A recovery is never held back, even inside the interval.
    let mut recovered = JobNotice::new("burst", Some("j10".to_string()), JobStatus::Completed);
    recovered.previous = Some(JobStatus::Failed);
    started.notifier.job_ended(recovered);
    started.reports.wait_for(6).await;
    assert_eq!(receiver.requests()[2].json()["type"], "job.recovered");
    started.stop().await;
}

#[tokio::test]
async fn dry_runs_and_unsubscribed_events_notify_nobody_unless_asked() {
    let (receiver, started) =
        hook_notifier(vec![Reply::Status(200)], "", "", system_clock(), None).await;
    let mut dry = failed("r", "j1");
    dry.dry_run = true;
    assert_eq!(started.notifier.job_ended(dry), Submitted::NotNeeded);
    let skipped = JobNotice::new("r", Some("j2".to_string()), JobStatus::Skipped);
    assert_eq!(started.notifier.job_ended(skipped), Submitted::NotNeeded);
    let ok = JobNotice::new("r", Some("j3".to_string()), JobStatus::Completed);
    assert_eq!(started.notifier.job_ended(ok), Submitted::NotNeeded);
    started.stop().await;
    assert!(receiver.requests().is_empty());

    let s = settings(&format!(
        "default = [\"hook\"]\n{}",
        webhook_target(
            "hook",
            &receiver.url("/hook"),
            "dry_runs = true\nevents = [\"failed\", \"skipped\"]"
        )
    ));
    let started = start(&s, system_clock(), None);
    let mut dry = failed("r", "j4");
    dry.dry_run = true;
    assert_eq!(started.notifier.job_ended(dry), Submitted::Queued);
    started.reports.wait_for(1).await;
    assert_eq!(receiver.requests()[0].json()["dry_run"], true);
    started.stop().await;
}

#[test]
fn secrets_never_reach_logs_errors_or_debug_output() {
    if in_own_process("notify::secrets_never_reach_logs_errors_or_debug_output") {
        let capture = LogCapture::default();
        capture.install_globally();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(secrets_stay_out_of(capture));
    }
}

async fn secrets_stay_out_of(capture: LogCapture) {
    // The Teams receiver refuses and echoes the request line back, as some proxies do.
    let teams = Receiver::start(vec![Reply::Full(
        400,
        vec![],
        "bad request: /workflows/SECRETPATH/invoke?sig=SECRETSIG".to_string(),
    )])
    .await;
    let down = down_url().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let s = settings(&format!(
        "default = [\"teams\", \"hook\"]\nmax_attempts = 2\n[[targets]]\nname = \"teams\"\nkind = \"teams\"\nurl = \"{}\"\n{}",
        teams.url("/workflows/SECRETPATH/invoke?sig=SECRETSIG"),
        webhook_target(
            "hook",
            &format!("{down}/TOKENINPATH"),
            &format!("secret_file = \"{}\"", secret_file.display())
        )
    ));
    let started = start(&s, system_clock(), None);
    started.notifier.job_ended(failed("r", "j"));
    let reports = started.reports.wait_for(2).await;
    assert!(
        reports.iter().all(|r| r.outcome.as_str() == "failed"),
        "{reports:?}"
    );

    let debug = format!("{s:?} {:?}", started.notifier);
    let report_text = format!("{reports:?} {}", serde_json::to_string(&reports).unwrap());
    let lines: String = reports.iter().map(|r| r.line()).collect();
    started.stop().await;
    let logs = capture.text();
    assert!(
        logs.contains("teams") && logs.contains("hook"),
        "the logs were captured: {logs}"
    );
    for (what, text) in [
        ("logs", &logs),
        ("reports", &report_text),
        ("lines", &lines),
        ("debug", &debug),
    ] {
        for secret in [
            "SECRETSIG",
            "SECRETPATH",
            "TOKENINPATH",
            "C2FVsBQIhrscChlQIMV",
        ] {
            assert!(!text.contains(secret), "{secret} in {what}: {text}");
        }
    }
}

#[test]
fn settings_errors_name_the_key_and_never_the_url() {
    let cases = [
        (
            "[[notify.targets]]\nname = \"a\"\nkind = \"webhook\"\n",
            "notify.targets[0].url",
            "needs `url` or `url_file`",
        ),
        (
            "[[notify.targets]]\nname = \"a\"\nkind = \"teams\"\nurl = \"http://hooks.example.net/x?sig=SECRETSIG\"\n",
            "notify.targets[0].url",
            "must use https",
        ),
        (
            "[[notify.targets]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://h.example/x\"\nevents = [\"failed\", \"exploded\"]\n",
            "notify.targets[0].events",
            "unknown event \"exploded\"",
        ),
        (
            "[[notify.targets]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://h.example/x\"\n[[notify.targets]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://h.example/y\"\n",
            "notify.targets[1].name",
            "defined twice",
        ),
        (
            "[notify]\ndefault = [\"nobody\"]\n",
            "notify.default",
            "\"nobody\"",
        ),
    ];
    for (text, key, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, text).unwrap();
        let err = runbook_worker::settings::load(Some(&file), dir.path(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(needle), "{key}: {err}");
        assert!(err.contains("worker.toml"), "{err}");
        assert!(!err.contains("SECRETSIG"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_a_test_message_and_says_what_happened() {
    let ok = Receiver::start(vec![Reply::Status(200)]).await;
    let refusing = Receiver::start(vec![Reply::Full(
        403,
        vec![("content-type", "application/json".to_string())],
        r#"{"error":{"code":"Forbidden","message":"bad signature"}}"#.to_string(),
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("runbook-worker.toml"),
        format!(
            "[notify]\nretry_delay = \"10ms\"\n[[notify.targets]]\nname = \"good\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n[[notify.targets]]\nname = \"bad\"\nkind = \"teams\"\nurl = \"{}\"\n",
            ok.url("/hook"),
            refusing.url("/workflows/x?sig=SECRETSIG")
        ),
    )
    .unwrap();
    let path = dir.path().to_path_buf();
    let run = move |args: &'static [&'static str]| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || run_binary(&path, args, &[]))
    };

    let out = run(&["notify", "test", "good"]).await.unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("delivered (200)"), "{}", stdout(&out));
    let request = &ok.requests()[0];
    assert_eq!(request.json()["type"], "notify.test");
    assert!(verify_standard_webhook(SECRET, request, Utc::now()));

    let out = run(&["notify", "test", "bad", "--output", "json"])
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["status"], 403);
    assert!(
        report["error"].as_str().unwrap().contains("bad signature"),
        "{report}"
    );
    assert!(
        report["hint"].as_str().unwrap().contains("Workflows"),
        "{report}"
    );
    assert!(!stdout(&out).contains("SECRETSIG") && !stderr(&out).contains("SECRETSIG"));

    let out = run(&["notify", "test", "nobody"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("good, bad"), "{}", stderr(&out));
}

#[test]
fn the_default_targets_can_come_from_the_environment_as_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        "[[notify.targets]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"https://h.example/a\"\n[[notify.targets]]\nname = \"b\"\nkind = \"teams\"\nurl = \"https://h.example/b\"\n",
    )
    .unwrap();
    let env = [(
        "RUNBOOK_WORKER__NOTIFY__DEFAULT".to_string(),
        "a,b".to_string(),
    )]
    .into_iter()
    .collect();
    let s = runbook_worker::settings::load(Some(&file), dir.path(), &env).unwrap();
    assert_eq!(s.notify.default, vec!["a", "b"]);
    assert_eq!(s.notify.targets.len(), 2);
}

// ---------------------------------------------------------------------------------------
// End to end: the whole worker (spawn_app, or the binary) against the simulated tenant,
// the simulated Graph `sendMail` and loopback receivers.

mod end_to_end {
    use std::time::Duration;

    use chrono::Utc;
    use serde_json::{Value, json};

    use runbook_worker::clock::ManualClock;
    use runbook_worker::simulator::graph::{GraphSimulator, GraphSimulatorConfig};
    use runbook_worker::simulator::identity::{IdentitySimulatorConfig, SimulatedIdentity};

    use super::SECRET;
    use crate::support::app::{TestApp, TestAppOptions, spawn_app_with};
    use crate::support::executor::simulators;
    use crate::support::http::{TOKEN, bearer};
    use crate::support::notify::{Receiver, Reply, down_url, verify_standard_webhook};
    use crate::support::wait_until;
    use crate::support::worker::{WorkerProcess, simulator_settings};

    /// Fails with its default parameter (no such mailbox), completes with
    /// `{"params": {"who": "adele.vance@contoso.com"}}`.
    fn flaky(notify: &str, top: &str) -> String {
        format!(
            "{notify}\n{top}\n[params]\nwho = {{ type = \"string\", default = \"nobody@contoso.com\" }}\n\n\
             [[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nparameters = {{ Identity = \"{{{{ params.who }}}}\", CustomAttribute1 = \"Audited\" }}\n"
        )
    }

    /// `[notify]` with fast retries, then `targets` (TOML of `[[notify.targets]]`).
    fn notify_settings(extra: &str, targets: &str) -> String {
        format!(
            "[http]\npublic_url = \"https://runbooks.contoso.example/\"\n\n\
             [notify]\nretry_delay = \"20ms\"\nmax_retry_delay = \"100ms\"\ntimeout = \"2s\"\ndrain_timeout = \"2s\"\n{extra}\n{targets}"
        )
    }

    fn hook(name: &str, url: &str) -> String {
        format!(
            "[[notify.targets]]\nname = \"{name}\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        )
    }

    /// The job's `notifications` stream entries, once there are `n`.
    async fn notifications(app: &TestApp, job: &str, n: usize) -> Vec<Value> {
        let path = format!("/api/jobs/{job}");
        let entries = || async {
            let job = app.get_json(&path).await;
            job["streams"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter(|e| e["kind"] == "notifications")
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let ok = wait_until(Duration::from_secs(20), || async {
            entries().await.len() >= n
        })
        .await;
        let found = entries().await;
        assert!(ok, "expected {n} notification entries on {job}: {found:#?}");
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_runbook_notifies_each_chosen_target_once_and_its_recovery_says_recovered() {
        let hook_receiver = Receiver::start(vec![Reply::Status(204)]).await;
        let teams = Receiver::start(vec![Reply::Status(202)]).await;
        let graph = GraphSimulator::start(GraphSimulatorConfig::default())
            .await
            .expect("start the Graph simulator");
        let hook_url = hook_receiver.url("/hooks/runbooks?key=hook-url-secret");
        let targets = format!(
            "{}[[notify.targets]]\nname = \"teams-ops\"\nkind = \"teams\"\nurl = \"{}\"\n\
             [[notify.targets]]\nname = \"ops-mail\"\nkind = \"email\"\nfrom = \"adele.vance@contoso.com\"\nto = [\"ops@contoso.com\"]\n\
             [[notify.targets]]\nname = \"unused\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            hook("hook", &hook_url),
            teams.url("/workflows/abc/invoke?sig=teams-url-secret"),
            hook_receiver.url("/unused"),
        );
        let app = spawn_app_with(TestAppOptions {
            settings_file: Some(notify_settings("", &targets)),
            identity: IdentitySimulatorConfig::default().with_system_assigned(Some(
                SimulatedIdentity::new("worker").with_roles(&["Exchange.ManageAsApp", "Mail.Send"]),
            )),
            ..TestAppOptions::default()
                .runbook(
                    "tag-owner.toml",
                    &flaky("notify = [\"hook\", \"teams-ops\", \"ops-mail\"]", ""),
                )
                .setting("RUNBOOK_WORKER__GRAPH__ENDPOINT", &graph.base_url())
        })
        .await;

        let failed = app.run_runbook("tag-owner", json!({})).await;
        assert_eq!(app.wait_for_job_end(&failed).await["status"], "Failed");
        let entries = notifications(&app, &failed, 3).await;
        let mut targets: Vec<&str> = entries
            .iter()
            .map(|e| e["data"]["target"].as_str().unwrap())
            .collect();
        targets.sort_unstable();
        assert_eq!(targets, ["hook", "ops-mail", "teams-ops"], "{entries:#?}");
        for entry in &entries {
            assert_eq!(entry["data"]["outcome"], "delivered", "{entry}");
            assert_eq!(entry["data"]["event"], "failed", "{entry}");
            assert!(
                entry["text"].as_str().unwrap().contains("delivered"),
                "{entry}"
            );
        }

        // The webhook: once, signed, with the job and its link.
        let hooked: Vec<_> = hook_receiver
            .requests()
            .into_iter()
            .filter(|r| r.uri.starts_with("/hooks/"))
            .collect();
        assert_eq!(hooked.len(), 1, "{hooked:?}");
        assert!(verify_standard_webhook(SECRET, &hooked[0], Utc::now()));
        let body = hooked[0].json();
        assert_eq!(body["type"], "job.failed");
        assert_eq!(body["runbook"], "tag-owner");
        assert_eq!(body["job_id"], failed.as_str());
        assert_eq!(body["status"], "Failed");
        assert_eq!(
            body["url"],
            format!("https://runbooks.contoso.example/jobs/{failed}")
        );
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("nobody@contoso.com"),
            "{body}"
        );
        // Teams: one Adaptive Card.
        let cards = teams.requests();
        assert_eq!(cards.len(), 1);
        assert!(cards[0].json().to_string().contains("AdaptiveCard"));
        // Email: Graph accepted the identity's token (audience and Mail.Send checked).
        let mail = graph.sent_mail();
        assert_eq!(mail.len(), 1, "{mail:?}");
        assert_eq!(mail[0].from, "adele.vance@contoso.com");
        assert_eq!(mail[0].to, vec!["ops@contoso.com"]);
        assert!(mail[0].subject.contains("tag-owner"), "{}", mail[0].subject);
        // A target the runbook does not choose hears nothing.
        assert!(
            hook_receiver
                .requests()
                .iter()
                .all(|r| !r.uri.starts_with("/unused"))
        );

        // The next job completes: each target hears "recovered", once.
        let recovered = app
            .run_runbook(
                "tag-owner",
                json!({"params": {"who": "adele.vance@contoso.com"}}),
            )
            .await;
        let job = app.wait_for_job_end(&recovered).await;
        assert_eq!(job["status"], "Completed", "{job}");
        let entries = notifications(&app, &recovered, 3).await;
        assert!(
            entries
                .iter()
                .all(|e| e["data"]["event"] == "recovered" && e["data"]["outcome"] == "delivered"),
            "{entries:#?}"
        );
        let hooked: Vec<_> = hook_receiver
            .requests()
            .into_iter()
            .filter(|r| r.uri.starts_with("/hooks/"))
            .collect();
        assert_eq!(hooked.len(), 2);
        assert_eq!(hooked[1].json()["type"], "job.recovered");
        assert_eq!(teams.requests().len(), 2);
        assert_eq!(graph.sent_mail().len(), 2);

        // No URL or secret in the API: jobs, runbooks, metrics.
        let mut seen = String::new();
        for path in [
            format!("/api/jobs/{failed}"),
            format!("/api/jobs/{recovered}"),
            "/api/jobs".to_string(),
            "/api/runbooks/tag-owner".to_string(),
            "/metrics".to_string(),
        ] {
            seen.push_str(&app.get(&path).await.text().await.unwrap());
        }
        for secret in [
            "hook-url-secret",
            "teams-url-secret",
            &hook_receiver.base,
            SECRET,
            SECRET.trim_start_matches("whsec_"),
        ] {
            assert!(!seen.contains(secret), "{secret} leaked into the API");
        }
        let metrics = app.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains(
                r#"runbook_worker_notifications_total{target="hook",outcome="delivered"} 2"#
            ),
            "{metrics}"
        );
        app.stop().await;
        graph.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_email_target_without_mail_send_is_recorded_as_failed_and_the_job_keeps_its_outcome()
    {
        let graph = GraphSimulator::start(GraphSimulatorConfig::default())
            .await
            .expect("start the Graph simulator");
        let targets = "[[notify.targets]]\nname = \"ops-mail\"\nkind = \"email\"\nfrom = \"adele.vance@contoso.com\"\nto = [\"ops@contoso.com\"]\n";
        let app = spawn_app_with(TestAppOptions {
            settings_file: Some(notify_settings("default = [\"ops-mail\"]", targets)),
            ..TestAppOptions::default()
                .runbook("tag-owner.toml", &flaky("", ""))
                .setting("RUNBOOK_WORKER__GRAPH__ENDPOINT", &graph.base_url())
        })
        .await;
        let failed = app.run_runbook("tag-owner", json!({})).await;
        assert_eq!(app.wait_for_job_end(&failed).await["status"], "Failed");
        let entries = notifications(&app, &failed, 1).await;
        assert_eq!(entries[0]["data"]["target"], "ops-mail");
        assert_eq!(entries[0]["data"]["outcome"], "failed");
        assert_eq!(entries[0]["data"]["status"], 403, "{entries:#?}");
        let text = entries[0]["text"].as_str().unwrap();
        assert!(text.contains("Mail.Send"), "{text}");
        assert!(graph.sent_mail().is_empty());
        let job = app.get_json(&format!("/api/jobs/{failed}")).await;
        assert_eq!(
            job["status"], "Failed",
            "a notification never changes the outcome"
        );
        app.stop().await;
        graph.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_answering_500_then_200_gets_the_job_message_once_after_a_retry() {
        let receiver = Receiver::start(vec![Reply::Status(500), Reply::Status(200)]).await;
        let app = spawn_app_with(TestAppOptions {
            settings_file: Some(notify_settings(
                "default = [\"hook\"]",
                &hook("hook", &receiver.url("/hook")),
            )),
            ..TestAppOptions::default().runbook("tag-owner.toml", &flaky("", ""))
        })
        .await;
        let failed = app.run_runbook("tag-owner", json!({})).await;
        app.wait_for_job_end(&failed).await;
        let entries = notifications(&app, &failed, 1).await;
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["data"]["outcome"], "delivered");
        assert_eq!(entries[0]["data"]["attempts"], 2);
        let requests = receiver.requests();
        assert_eq!(requests.len(), 2, "one failed attempt, one delivery");
        assert_eq!(
            requests[0].header("webhook-id"),
            requests[1].header("webhook-id"),
            "the receiver can tell it is the same message"
        );
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_is_down_or_hangs_never_delays_the_next_scheduled_job() {
        let hanging = Receiver::start(vec![Reply::Hang]).await;
        let down = down_url().await;
        let start = crate::support::worker::utc("2026-03-02T06:00:30Z");
        let clock = ManualClock::new(start);
        let targets = format!(
            "{}{}",
            hook("slow", &hanging.url("/hook")),
            hook("dead", &down)
        );
        let app = spawn_app_with(TestAppOptions {
            settings_file: Some(notify_settings(
                "default = [\"slow\", \"dead\"]\nmin_interval = \"0s\"\nmax_attempts = 5",
                &targets,
            )),
            clock: Some(std::sync::Arc::new(clock.clone())),
            ..TestAppOptions::default()
                .runbook("tag-owner.toml", &flaky("", "schedule = \"* * * * *\""))
        })
        .await;
        let ended = |n: usize| {
            let app = &app;
            async move {
                let jobs = app.get_json("/api/jobs?runbook=tag-owner").await;
                jobs["jobs"].as_array().is_some_and(|jobs| {
                    jobs.iter().filter(|j| j["status"] == "Failed").count() >= n
                })
            }
        };
        for n in 1..=3 {
            clock.set(start + chrono::Duration::seconds(60 * n as i64 - 30));
            assert!(
                wait_until(Duration::from_secs(20), || ended(n)).await,
                "scheduled job {n} ran and ended while earlier notifications hang: {} {}",
                app.get_json("/api/jobs?runbook=tag-owner").await,
                app.get_json("/api/runbooks/tag-owner").await
            );
        }
        assert!(
            !hanging.requests().is_empty(),
            "the hanging receiver was called"
        );
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_occurrence_the_scheduler_could_not_fire_in_time_is_notified_as_missed() {
        let receiver = Receiver::start(vec![Reply::Status(204)]).await;
        let start = crate::support::worker::utc("2026-03-02T06:00:30Z");
        let clock = ManualClock::new(start);
        let app = spawn_app_with(TestAppOptions {
            settings_file: Some(notify_settings(
                "default = [\"hook\"]",
                &format!(
                    "{}events = [\"missed\"]\n",
                    hook("hook", &receiver.url("/hook"))
                ),
            )),
            clock: Some(std::sync::Arc::new(clock.clone())),
            ..TestAppOptions::default()
                .runbook("tag-owner.toml", &flaky("", "schedule = \"* * * * *\""))
        })
        .await;
        // A stalled host: the loop wakes 45 s after the 06:01 occurrence (missed = "skip").
        clock.set(crate::support::worker::utc("2026-03-02T06:01:45Z"));
        let ok = wait_until(Duration::from_secs(20), || async {
            !receiver.requests().is_empty()
        })
        .await;
        assert!(ok, "no missed notice");
        let body = receiver.requests()[0].json();
        assert_eq!(body["type"], "job.missed");
        assert_eq!(body["runbook"], "tag-owner");
        assert_eq!(body["scheduled_for"], "2026-03-02T06:01:00Z");
        assert_eq!(body["job_id"], Value::Null);
        let jobs = app.get_json("/api/jobs?runbook=tag-owner").await;
        assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "{jobs}");
        app.stop().await;
    }

    /// Three replicas against Azurite run one failing scheduled runbook: every failed job is
    /// notified exactly once, by the replica that ran it. Needs Azurite: run it with
    /// `./scripts/test.sh notify`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_three_replicas_each_failure_is_notified_exactly_once() {
        use secrecy::ExposeSecret as _;

        use crate::support::coordination::AzuriteContainer;

        let receiver = Receiver::start(vec![Reply::Status(204)]).await;
        let container = AzuriteContainer::new();
        let mut replicas = Vec::new();
        for replica in ["r1", "r2", "r3"] {
            let app = spawn_app_with(TestAppOptions {
                settings_file: Some(notify_settings(
                    "default = [\"hook\"]\nmin_interval = \"0s\"",
                    &hook("hook", &receiver.url("/hook")),
                )),
                ..TestAppOptions::default()
                    .runbook("tag-owner.toml", &flaky("", "schedule = \"*/2 * * * * *\""))
                    .setting("RUNBOOK_WORKER__COORDINATION__KIND", "azure-blob")
                    .setting(
                        "RUNBOOK_WORKER__COORDINATION__SAS_URL",
                        container.sas_url().expose_secret(),
                    )
                    .setting("RUNBOOK_WORKER__COORDINATION__REPLICA_ID", replica)
            })
            .await;
            replicas.push(app);
        }
        let enough = wait_until(Duration::from_secs(60), || async {
            receiver.requests().len() >= 4
        })
        .await;
        assert!(enough, "{} messages", receiver.requests().len());
        // Stopping drains every queued notification: what was sent is all there is.
        let mut failed_jobs = Vec::new();
        for app in replicas {
            let jobs = app
                .get_json("/api/jobs?runbook=tag-owner&status=Failed&limit=1000")
                .await;
            let ids: Vec<String> = jobs["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect();
            app.stop().await;
            failed_jobs.extend(ids);
        }
        let messages: Vec<Value> = receiver.requests().iter().map(|r| r.json()).collect();
        let mut notified: Vec<String> = messages
            .iter()
            .filter(|m| m["type"] == "job.failed")
            .map(|m| m["job_id"].as_str().unwrap().to_string())
            .collect();
        notified.sort();
        let mut occurrences: Vec<&str> = messages
            .iter()
            .map(|m| m["scheduled_for"].as_str().unwrap())
            .collect();
        occurrences.sort_unstable();
        occurrences.dedup();
        assert_eq!(
            occurrences.len(),
            messages.len(),
            "an occurrence was notified twice: {messages:#?}"
        );
        // The replicas share one history: each lists every replica's jobs.
        failed_jobs.sort();
        failed_jobs.dedup();
        // Jobs that ended after the count above may have been stopped before they ended
        // Failed; every Failed job was notified and nothing else.
        assert_eq!(notified, failed_jobs, "{messages:#?}");
    }

    /// The worker binary with JSON logs: each finished job is one `job_finished` event with
    /// its counts, and neither the webhook URL nor its secret is in the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_finished_job_logs_one_job_finished_event_and_no_notification_secret() {
        let tenant = simulators(Default::default()).await;
        let receiver = Receiver::start(vec![Reply::Status(500), Reply::Status(204)]).await;
        let dir = tempfile::tempdir().unwrap();
        let runbooks = dir.path().join("runbooks");
        std::fs::create_dir_all(&runbooks).unwrap();
        std::fs::write(runbooks.join("tag-owner.toml"), flaky("", "")).unwrap();
        let config = format!(
            "[runbooks]\ndir = \"runbooks\"\n[state]\ndir = \"state\"\n{}\n\
             [http]\nlisten = \"127.0.0.1:0\"\napi_token = \"{TOKEN}\"\n\n\
             [notify]\ndefault = [\"hook\"]\nretry_delay = \"20ms\"\n\n{}",
            simulator_settings(&tenant.identity.base_url(), &tenant.exchange.base_url()),
            hook("hook", &receiver.url("/hook?key=hook-url-secret")),
        );
        std::fs::write(dir.path().join("worker.toml"), config).unwrap();
        let mut worker = WorkerProcess::spawn(dir.path(), "worker.log");
        worker.wait_ready().await;
        let client = reqwest::Client::new();
        let mut ids = Vec::new();
        for body in [
            json!({}),
            json!({"params": {"who": "adele.vance@contoso.com"}}),
        ] {
            let answer: Value = client
                .post(worker.url("/api/runbooks/tag-owner/run"))
                .header("authorization", bearer(TOKEN))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = answer["job_id"].as_str().expect("job id").to_string();
            let done = wait_until(Duration::from_secs(20), || async {
                worker
                    .logs()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .any(|v| v["event"] == "job_finished" && v["job_id"] == id.as_str())
            })
            .await;
            assert!(done, "no job_finished for {id}:\n{}", worker.logs());
            ids.push(id);
        }
        // Both notifications (failed, recovered) went out before the log is read.
        assert!(
            wait_until(Duration::from_secs(10), || async {
                receiver.requests().len() >= 3
            })
            .await
        );
        worker.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(worker.wait_exit(Duration::from_secs(30)).await.success());

        let logs = worker.logs();
        let events: Vec<Value> = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "job_finished")
            .collect();
        assert_eq!(events.len(), 2, "one event per job:\n{logs}");
        let (failed, completed) = (&events[0], &events[1]);
        assert_eq!(failed["job_id"], ids[0].as_str());
        assert_eq!(failed["runbook"], "tag-owner");
        assert_eq!(failed["status"], "Failed");
        assert_eq!(failed["trigger"], "api");
        assert_eq!(failed["errors"], 1);
        assert_eq!(failed["writes_applied"], 0);
        assert!(failed["duration_ms"].is_u64(), "{failed}");
        assert_eq!(completed["status"], "Completed");
        assert_eq!(completed["writes_applied"], 1);
        assert_eq!(completed["writes_planned"], 0);
        for secret in [
            "hook-url-secret",
            SECRET,
            SECRET.trim_start_matches("whsec_"),
        ] {
            assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
        }
        tenant.exchange.shutdown().await;
        tenant.identity.stop().await;
    }
}
