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
