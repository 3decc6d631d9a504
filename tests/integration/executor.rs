//! Running jobs against the simulated tenant, in-process: every execution rule asserted on
//! what reached the wire and what changed in the organisation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use tokio_util::sync::CancellationToken;

use runbook_worker::clock::{ManualClock, SharedClock};
use runbook_worker::executor::{
    FinalStatus, HistoryEvents, JobEvent, JobEvents, JobOutcome, report_path,
};
use runbook_worker::history::{
    self, HistorySettings, HistoryStore, JobStatus, NewJob, StreamKind, Trigger,
};
use runbook_worker::runbook::{self, ParamInput, PolicySettings};
use runbook_worker::simulator::exchange::{Fault, RecipientTypeDetails, SimulatorConfig};

use crate::support::executor::{
    Harness, Options, Recorder, harness, harness_with, job, job_with_params, runbook,
};
use crate::support::runbook::examples_dir;
use crate::support::wait_until;

fn example(name: &str) -> Arc<runbook::Runbook> {
    let path = examples_dir().join(format!("{name}.toml"));
    Arc::new(runbook::load_file(&path, &PolicySettings::default()).expect("valid example"))
}

/// The user mailboxes the archive example selects: no archive, not on litigation hold.
fn archive_candidates(h: &Harness) -> Vec<String> {
    h.sim()
        .mailboxes()
        .into_iter()
        .filter(|m| {
            m.recipient_type_details == RecipientTypeDetails::UserMailbox
                && m.archive.is_none()
                && !m.litigation_hold_enabled
        })
        .map(|m| m.external_directory_object_id.to_string())
        .collect()
}

fn step<'a>(outcome: &'a JobOutcome, name: &str) -> &'a runbook_worker::executor::StepCounts {
    outcome
        .steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no step {name} in {:?}", outcome.steps))
}

#[tokio::test]
async fn a_for_each_enables_archives_for_exactly_the_mailboxes_its_filter_selects() {
    let h = harness(SimulatorConfig::default()).await;
    let mut expected = archive_candidates(&h);
    assert!(expected.len() >= 3, "the seed has candidates");
    let held = h
        .sim()
        .mailboxes()
        .into_iter()
        .filter(|m| m.litigation_hold_enabled && m.archive.is_none())
        .count();

    let (outcome, events) = h
        .run(job(&example("archive-for-user-mailboxes"), false))
        .await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    let mut enabled: Vec<String> = h
        .writes()
        .iter()
        .map(|r| {
            r.parameters().unwrap()["Identity"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    enabled.sort();
    expected.sort();
    assert_eq!(enabled, expected);
    for id in &expected {
        assert!(h.sim().mailbox(id).unwrap().archive.is_some(), "{id}");
    }
    let after_held = h
        .sim()
        .mailboxes()
        .into_iter()
        .filter(|m| m.litigation_hold_enabled && m.archive.is_none())
        .count();
    assert_eq!(after_held, held, "mailboxes on hold are left alone");
    let enable = step(&outcome, "enable");
    assert_eq!(enable.done, expected.len() as u64);
    assert_eq!(
        enable.done + enable.skipped,
        step(&outcome, "find").records_read,
        "{:?}",
        outcome.steps
    );
    // One event per enabled archive, and one for the read's single call.
    assert_eq!(events.count("item.done"), expected.len() as u64 + 1);
    assert_eq!(outcome.attempts, 1);
    let metrics = h.metrics.render();
    let line = format!(
        "runbook_worker_exchange_calls_total{{cmdlet=\"Enable-Mailbox\",outcome=\"ok\"}} {}",
        expected.len()
    );
    assert!(metrics.contains(&line), "{metrics}");
}

#[tokio::test]
async fn a_dry_run_sends_the_reads_and_only_plans_the_writes() {
    let h = harness(SimulatorConfig::default()).await;
    let mut expected = archive_candidates(&h);

    let (outcome, events) = h
        .run(job(&example("archive-for-user-mailboxes"), true))
        .await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    assert!(h.writes().is_empty(), "{:?}", h.writes());
    assert!(
        h.sim()
            .requests()
            .iter()
            .any(|r| r.cmdlet() == Some("Get-Mailbox")),
        "the read ran for real"
    );
    let mut planned: Vec<String> = events
        .planned()
        .into_iter()
        .map(|(cmdlet, parameters)| {
            assert_eq!(cmdlet, "Enable-Mailbox");
            assert_eq!(parameters["Archive"], true, "{parameters}");
            parameters["Identity"].as_str().unwrap().to_string()
        })
        .collect();
    planned.sort();
    expected.sort();
    assert_eq!(planned, expected, "each write with its rendered parameters");
    assert_eq!(
        step(&outcome, "enable").writes_planned,
        expected.len() as u64
    );
    assert_eq!(step(&outcome, "enable").done, 0);
    assert!(h.sim().mailboxes().iter().all(|m| {
        !expected.contains(&m.external_directory_object_id.to_string()) || m.archive.is_none()
    }));
}

#[tokio::test]
async fn more_writes_than_max_changes_fail_the_job_before_the_first_write() {
    let h = harness(SimulatorConfig::default()).await;
    let candidates = archive_candidates(&h).len();
    let text = std::fs::read_to_string(examples_dir().join("archive-for-user-mailboxes.toml"))
        .unwrap()
        .replace("max_changes = 500", "max_changes = 2");

    let (outcome, _) = h.run(job(&runbook(&text), false)).await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(
        error.contains(&format!("would make {candidates} changes"))
            && error.contains("max_changes = 2"),
        "{error}"
    );
    assert!(h.writes().is_empty(), "{:?}", h.writes());
    assert_eq!(outcome.attempts, 1, "a retry cannot change the count");
}

#[tokio::test]
async fn a_cmdlet_the_policy_now_denies_stops_the_job_before_any_call() {
    let h = harness_with(
        SimulatorConfig::default(),
        Options {
            policy: PolicySettings {
                allow: vec!["*".into()],
                deny: vec!["Enable-*".into()],
            },
            ..Options::default()
        },
    )
    .await;

    // Validated under the old (default) policy, run under the new one.
    let (outcome, _) = h
        .run(job(&example("archive-for-user-mailboxes"), false))
        .await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(
        error.contains("\"Enable-Mailbox\"") && error.contains("\"Enable-*\" in [policy] deny"),
        "{error}"
    );
    assert!(h.sim().requests().is_empty());
}

#[test]
fn an_unknown_param_never_becomes_a_job() {
    // Parameters are resolved when a job is made (run, API, scheduler), never by the
    // executor: a JobSpec only ever holds resolved ones.
    let rb = example("team-calendar-access");
    let error = rb
        .resolve_params(vec![
            ("tema".to_string(), ParamInput::Text("Sales".into())),
            (
                "delegate".to_string(),
                ParamInput::Text("x@contoso.com".into()),
            ),
        ])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("has no param \"tema\" (did you mean \"team\"?)"),
        "{error}"
    );
    assert!(
        error.contains("param \"team\""),
        "the missing one too: {error}"
    );
}

#[tokio::test]
async fn templates_see_params_the_job_earlier_steps_and_now_from_the_clock() {
    let start = Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(start));
    let h = harness_with(
        SimulatorConfig::default(),
        Options {
            clock,
            ..Options::default()
        },
    )
    .await;
    let rb = runbook(
        r#"
[params]
label = "weekly"

[[steps]]
name = "domains"
cmdlet = "Get-AcceptedDomain"

[[steps]]
name = "tag"
cmdlet = "Set-Mailbox"
parameters = { Identity = "adele.vance", CustomAttribute1 = "{{ params.label }} {{ job.runbook }} {{ job.id }} {{ now }} {{ steps.domains.count }}" }
"#,
    );
    let mut spec = job_with_params(&rb, &[("label", "manual")]);
    spec.dry_run = true;
    let id = spec.id.clone();

    let (outcome, events) = h.run(spec).await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    let planned = events.planned();
    assert_eq!(
        planned[0].1["CustomAttribute1"],
        format!("manual test-runbook {id} 2026-03-02T08:00:00Z 2")
    );
}

const TAG_USERS: &str = r#"
[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
parameters = { RecipientTypeDetails = "UserMailbox", ResultSize = "Unlimited" }

[[steps]]
name = "tag"
cmdlet = "Set-Mailbox"
for_each = "find"
concurrency = CONCURRENCY
CONTINUE
parameters = { Identity = "{% if item.Alias == 'adele.vance' %}nobody@contoso.com{% else %}{{ item.ExternalDirectoryObjectId }}{% endif %}", CustomAttribute1 = "Audited" }
"#;

fn tag_users(concurrency: u32, continue_on_error: bool) -> Arc<runbook::Runbook> {
    runbook(
        &TAG_USERS
            .replace("CONCURRENCY", &concurrency.to_string())
            .replace(
                "CONTINUE",
                if continue_on_error {
                    "continue_on_error = true"
                } else {
                    ""
                },
            ),
    )
}

fn users(h: &Harness) -> usize {
    h.sim()
        .mailboxes()
        .iter()
        .filter(|m| m.recipient_type_details == RecipientTypeDetails::UserMailbox)
        .count()
}

#[tokio::test]
async fn with_continue_on_error_a_failed_item_is_recorded_and_the_rest_go_on() {
    let h = harness(SimulatorConfig::default()).await;
    let users = users(&h);

    let (outcome, events) = h.run(job(&tag_users(4, true), false)).await;

    assert_eq!(
        outcome.status,
        FinalStatus::CompletedWithErrors,
        "{outcome:?}"
    );
    let tag = step(&outcome, "tag");
    assert_eq!((tag.done, tag.failed), (users as u64 - 1, 1));
    let failures = events.failures();
    assert_eq!(failures.len(), 1);
    let (target, error) = &failures[0];
    assert_eq!(target.as_deref(), Some("nobody@contoso.com"));
    assert!(
        error.contains("Set-Mailbox on 'nobody@contoso.com'") && error.contains("not found"),
        "{error}"
    );
    let tagged = h
        .sim()
        .mailboxes()
        .iter()
        .filter(|m| m.custom_attribute1.as_deref() == Some("Audited"))
        .count();
    assert_eq!(tagged, users - 1);
}

#[tokio::test]
async fn without_continue_on_error_the_first_failure_stops_the_step_and_fails_the_job() {
    let h = harness(SimulatorConfig::default()).await;
    let users = users(&h);

    let (outcome, _) = h.run(job(&tag_users(4, false), false)).await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(
        error.starts_with("step \"tag\" failed on 'nobody@contoso.com': Set-Mailbox"),
        "{error}"
    );
    // adele.vance comes first: at most the calls already in flight follow it.
    let sent = h.writes().len();
    assert!(sent <= 4 && sent < users, "{sent} writes of {users}");
    assert_eq!(step(&outcome, "tag").failed, 1);
}

#[tokio::test]
async fn non_terminating_errors_count_as_item_errors_and_warnings_are_recorded() {
    let h = harness(SimulatorConfig::default()).await;
    let rb = runbook(
        r#"
[[steps]]
name = "stats"
cmdlet = "Get-MailboxStatistics"
parameters = { Identity = ["adele.vance", "nobody"] }

[[steps]]
name = "audit"
cmdlet = "Set-Mailbox"
parameters = { Identity = "adele.vance", AuditEnabled = true }
"#,
    );

    let (outcome, events) = h.run(job(&rb, false)).await;

    assert_eq!(
        outcome.status,
        FinalStatus::CompletedWithErrors,
        "{outcome:?}"
    );
    let stats = step(&outcome, "stats");
    assert_eq!((stats.records_read, stats.failed), (1, 1));
    assert!(
        events.failures()[0].1.contains("couldn't be found"),
        "{:?}",
        events.failures()
    );
    // The job went on to the next step, whose "nothing changed" warning is kept.
    assert_eq!(step(&outcome, "audit").done, 1);
    assert!(
        events.warnings().iter().any(|w| w.contains("no settings")),
        "{:?}",
        events.warnings()
    );
}

#[tokio::test]
async fn reports_are_written_by_job_id_and_a_dry_run_writes_those_of_reads() {
    let h = harness(SimulatorConfig::default()).await;
    let users = users(&h);
    let rb = runbook(
        r#"
[[steps]]
name = "users"
cmdlet = "Get-Mailbox"
parameters = { RecipientTypeDetails = "UserMailbox", ResultSize = "Unlimited" }
output = { format = "csv", columns = ["DisplayName", "PrimarySmtpAddress"] }

[[steps]]
name = "stats"
cmdlet = "Get-MailboxStatistics"
for_each = "users"
concurrency = 4
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}" }
output = "jsonl"

[[steps]]
name = "domains"
cmdlet = "Get-AcceptedDomain"
output = "csv"

[[steps]]
name = "tag"
cmdlet = "Set-Mailbox"
for_each = "users"
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", CustomAttribute1 = "x" }
output = "csv"
"#,
    );
    let spec = job(&rb, true);
    let id = spec.id.clone();
    let state = h.state.path();

    let (outcome, events) = h.run(spec).await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    let csv = std::fs::read_to_string(report_path(state, &id, "users", runbook::OutputFormat::Csv))
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("DisplayName,PrimarySmtpAddress"));
    assert_eq!(lines.count(), users);
    assert!(csv.contains("Adele Vance,adele.vance@contoso.com"), "{csv}");
    let jsonl = std::fs::read_to_string(report_path(
        state,
        &id,
        "stats",
        runbook::OutputFormat::Jsonl,
    ))
    .unwrap();
    assert_eq!(jsonl.lines().count(), users);
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert!(first.get("TotalItemSize").is_some(), "{first}");
    let domains = std::fs::read_to_string(report_path(
        state,
        &id,
        "domains",
        runbook::OutputFormat::Csv,
    ))
    .unwrap();
    let header = domains.lines().next().unwrap();
    assert!(header.split(',').any(|c| c == "DomainName"), "{header}");
    assert_eq!(domains.lines().count(), 3, "{domains}");
    // The planned write has no records and no report; nothing half-written is left.
    let folder = state.join("reports").join(id.as_str());
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["domains.csv", "stats.jsonl", "users.csv"]);
    assert_eq!(outcome.reports.len(), 3);
    assert_eq!(events.count("report"), 3);
    assert!(
        !state.join("tmp").join(id.as_str()).exists(),
        "spools removed"
    );
}

#[tokio::test]
async fn the_timeout_stops_a_call_in_flight_and_the_job_ends_timed_out() {
    let h = harness(SimulatorConfig::default().with_latency(Duration::from_secs(30))).await;
    let rb = runbook(
        "timeout = \"300ms\"\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = \"Unlimited\" }\noutput = \"csv\"\n",
    );
    let spec = job(&rb, false);
    let id = spec.id.clone();

    let (outcome, events) = h.run(spec).await;

    assert_eq!(outcome.status, FinalStatus::TimedOut, "{outcome:?}");
    let error = outcome.error.clone().unwrap();
    assert!(error.contains("timeout of 300ms"), "{error}");
    assert_eq!(
        events.count("step_finished"),
        1,
        "the step's end is recorded"
    );
    assert_eq!(outcome.steps.len(), 1);
    let reports = h.state.path().join("reports").join(id.as_str());
    let left: Vec<_> = std::fs::read_dir(&reports)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "no half-written report: {left:?}");
    assert!(!h.state.path().join("tmp").join(id.as_str()).exists());
}

#[tokio::test]
async fn cancelling_stops_between_calls_and_aborts_the_calls_in_flight() {
    // Every call takes a second: the read, then the writes two at a time.
    let h = harness(SimulatorConfig::default().with_latency(Duration::from_secs(1))).await;
    let rb = tag_users(2, true);
    let recorder = Recorder::default();
    let cancel = CancellationToken::new();
    let run = h.executor.run(job(&rb, false), &recorder, cancel.clone());
    let stop = async {
        assert!(wait_until(Duration::from_secs(20), || async { h.writes().len() >= 2 }).await);
        cancel.cancel();
        h.sim().requests().len()
    };

    let (outcome, requests_at_cancel) = tokio::join!(run, stop);

    assert_eq!(outcome.status, FinalStatus::Cancelled, "{outcome:?}");
    assert_eq!(
        h.sim().requests().len(),
        requests_at_cancel,
        "no call after the cancel"
    );
    assert!(
        recorder
            .warnings()
            .iter()
            .any(|w| w.contains("in flight were stopped") && w.contains("may or may not")),
        "{:?}",
        recorder.warnings()
    );
    assert!(step(&outcome, "tag").done < users(&h) as u64);
}

/// A harness whose Exchange client gives up on the first transient failure, so that one
/// scripted fault fails the attempt.
async fn harness_without_client_retries(clock: SharedClock) -> Harness {
    harness_with(
        SimulatorConfig::default(),
        Options {
            clock,
            adjust: Box::new(|s| s.max_retries = 0),
            ..Options::default()
        },
    )
    .await
}

/// How many requests of `cmdlet` reached the simulated tenant.
fn sent(h: &Harness, cmdlet: &str) -> usize {
    h.sim()
        .requests()
        .iter()
        .filter(|r| r.cmdlet() == Some(cmdlet))
        .count()
}

fn server_error(status: u16, exception: Option<&str>) -> Fault {
    Fault::ServerError {
        status,
        exception: exception.map(str::to_string),
        after_executing: false,
    }
}

const TAG_ADELE_THEN_READ: &str = "retries = { attempts = 2, backoff = \"1ms\" }\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nparameters = { Identity = \"adele.vance\", CustomAttribute1 = \"Retried\" }\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = \"Unlimited\" }\n";

#[tokio::test]
async fn a_read_that_failed_before_any_write_is_retried_after_its_backoff_and_each_attempt_is_announced()
 {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap());
    let h = harness_without_client_retries(Arc::new(clock.clone())).await;
    let rb = runbook(
        "retries = { attempts = 2, backoff = \"1h\" }\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = \"Unlimited\" }\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nparameters = { Identity = \"adele.vance\", CustomAttribute1 = \"Retried\" }\n",
    );
    // The read meets a 503: nothing was written, so the whole job may run again.
    h.sim()
        .inject(Some("Get-Mailbox"), server_error(503, None), 1);
    let recorder = Recorder::default();
    let run = h
        .executor
        .run(job(&rb, false), &recorder, CancellationToken::new());
    let advance = async {
        assert!(
            wait_until(Duration::from_secs(10), || async {
                recorder.count("attempt_failed") == 1
            })
            .await
        );
        clock.advance(Duration::from_secs(3600));
    };

    let (outcome, ()) = tokio::join!(run, advance);

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    assert_eq!(recorder.count("attempt_started"), 2);
    let failed = recorder
        .events()
        .into_iter()
        .find_map(|e| match e {
            JobEvent::AttemptFailed {
                retry_in, error, ..
            } => Some((retry_in, error)),
            _ => None,
        })
        .unwrap();
    assert_eq!(failed.0, Duration::from_secs(3600));
    assert!(failed.1.contains("Get-Mailbox"), "{}", failed.1);
    assert_eq!(sent(&h, "Set-Mailbox"), 1, "the write is sent once");
    assert_eq!(
        h.sim()
            .mailbox("adele.vance")
            .unwrap()
            .custom_attribute1
            .as_deref(),
        Some("Retried")
    );
}

/// One write of adele.vance, with retries left.
const TAG_ADELE: &str = "retries = { attempts = 2, backoff = \"1ms\" }\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nparameters = { Identity = \"adele.vance\", CustomAttribute1 = \"Once\" }\n";

/// Runs `text` after scripting `fault` three times on `cmdlet` (more than the retries),
/// and checks that the job failed at its first attempt with the write sent exactly once
/// and an error that says every one of `parts`.
async fn fails_once_without_sending_again(text: &str, cmdlet: &str, fault: Fault, parts: &[&str]) {
    let h = harness_without_client_retries(Arc::new(runbook_worker::clock::SystemClock)).await;
    h.sim().inject(Some(cmdlet), fault, 3);

    let (outcome, events) = h.run(job(&runbook(text), false)).await;

    assert_eq!(outcome.status, FinalStatus::Failed, "{outcome:?}");
    assert_eq!(outcome.attempts, 1);
    assert_eq!(events.count("attempt_failed"), 0);
    assert_eq!(sent(&h, "Set-Mailbox"), 1, "the write is sent exactly once");
    let error = outcome.error.unwrap();
    for part in parts {
        assert!(error.contains(part), "{part}: {error}");
    }
}

#[tokio::test]
async fn a_write_answered_with_500_is_sent_exactly_once_and_the_job_is_not_retried() {
    fails_once_without_sending_again(
        TAG_ADELE,
        "Set-Mailbox",
        server_error(500, None),
        &[
            "may or may not have been applied",
            "0 write(s) applied and 1 whose outcome is unknown",
            "not retried",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_write_that_succeeded_is_not_sent_again_when_a_later_read_fails() {
    fails_once_without_sending_again(
        TAG_ADELE_THEN_READ,
        "Get-Mailbox",
        server_error(503, None),
        &["Get-Mailbox", "1 write(s) applied,", "not retried"],
    )
    .await;
}

#[tokio::test]
async fn a_cmdlet_task_exception_is_definite_and_not_retried() {
    fails_once_without_sending_again(
        TAG_ADELE,
        "Set-Mailbox",
        server_error(
            400,
            Some("Microsoft.Exchange.Management.Tasks.TaskException"),
        ),
        &[
            "TaskException",
            "not retried: another attempt would fail the same way",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_job_that_completed_with_errors_is_not_retried() {
    let h = harness(SimulatorConfig::default()).await;
    let text = TAG_USERS
        .replace("CONCURRENCY", "4")
        .replace("CONTINUE", "continue_on_error = true");
    let rb = runbook(&format!("retries = 3\n{text}"));

    let (outcome, events) = h.run(job(&rb, false)).await;

    assert_eq!(outcome.status, FinalStatus::CompletedWithErrors);
    assert_eq!(outcome.attempts, 1);
    assert_eq!(events.count("attempt_started"), 1);
}

/// Every parameter value renders a loop that never ends in practice: 10^10 iterations.
const ENDLESS_TEMPLATE: &str =
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}";

#[tokio::test]
async fn a_template_that_would_run_forever_fails_the_job_naming_the_step_and_its_budget() {
    let h = harness(SimulatorConfig::default()).await;
    let rb = runbook(&format!(
        "retries = 2\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nparameters = {{ Identity = \"adele.vance\", CustomAttribute1 = \"{ENDLESS_TEMPLATE}\" }}\n"
    ));

    let (outcome, _) = h.run(job(&rb, false)).await;

    assert_eq!(outcome.status, FinalStatus::Failed, "{outcome:?}");
    assert_eq!(
        outcome.attempts, 1,
        "a template over its budget would be again"
    );
    let error = outcome.error.unwrap();
    assert!(
        error.contains("parameter \"CustomAttribute1\" of step \"tag\"")
            && error.contains("exceeded its work budget"),
        "{error}"
    );
    assert_eq!(sent(&h, "Set-Mailbox"), 0);
}

/// A dry run over many mailboxes whose every call renders a template that does a lot of
/// work (within its budget, or just over it): the job takes far longer than its timeout.
fn template_heavy(timeout: &str) -> Arc<runbook::Runbook> {
    runbook(&format!(
        "timeout = \"{timeout}\"\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = {{ ResultSize = \"Unlimited\" }}\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\ncontinue_on_error = true\nconcurrency = 4\nparameters = {{ Identity = \"{{{{ item.Alias }}}}\", CustomAttribute1 = \"{{% for a in range(100000) %}}{{% for b in range(20) %}}{{% endfor %}}{{% endfor %}}\" }}\n"
    ))
}

#[tokio::test]
async fn a_job_busy_rendering_templates_still_ends_by_its_timeout() {
    let h = harness(SimulatorConfig::default().with_mailboxes(5000)).await;

    let (outcome, _) = h.run(job(&template_heavy("1s"), true)).await;

    assert_eq!(outcome.status, FinalStatus::TimedOut, "{outcome:?}");
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap_or("")
            .contains("timeout of 1s"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_job_busy_rendering_templates_is_cancelled_when_asked() {
    let h = harness(SimulatorConfig::default().with_mailboxes(5000)).await;
    let recorder = Recorder::default();
    let cancel = CancellationToken::new();
    let run = h
        .executor
        .run(job(&template_heavy("1h"), true), &recorder, cancel.clone());
    let stop = async {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                recorder.count("step_started") == 2
            })
            .await
        );
        cancel.cancel();
    };

    let (outcome, ()) = tokio::join!(run, stop);

    assert_eq!(outcome.status, FinalStatus::Cancelled, "{outcome:?}");
}

/// Reads the mailboxes of a team and tags each: the team comes from a parameter.
const TAG_TEAM: &str = "[params]\nteam = \"nobody\"\n[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\nparameters = { ResultSize = \"Unlimited\", Filter = \"CustomAttribute1 -eq FILTER_VALUE\" }\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nfor_each = \"find\"\nparameters = { Identity = \"{{ item.Alias }}\", CustomAttribute2 = \"tagged\" }\n";

#[tokio::test]
async fn a_parameter_value_cannot_widen_an_opath_filter() {
    let h = harness(SimulatorConfig::default()).await;
    // Unquoted, the value would end the literal and add a clause that matches everyone;
    // `validate` refuses that form.
    let unquoted = TAG_TEAM.replace("FILTER_VALUE", "'{{ params.team }}'");
    let errors =
        runbook::parse_runbook("t", "t.toml", &unquoted, &runbook::CmdletPolicy::default())
            .unwrap_err();
    assert!(
        errors.iter().any(|e| e.to_string().contains("| opath")),
        "{errors:?}"
    );
    let rb = runbook(&TAG_TEAM.replace("FILTER_VALUE", "{{ params.team | opath }}"));

    for hostile in [
        "x' -or Name -like '*",
        "x\u{2019} -or Name -like \u{2018}*",
        "x\u{201B} -or Name -like \u{201A}*",
    ] {
        let (outcome, _) = h.run(job_with_params(&rb, &[("team", hostile)])).await;

        assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
        assert_eq!(step(&outcome, "find").records_read, 0, "{hostile}");
        assert!(h.writes().is_empty(), "{hostile}: {:?}", h.writes());
    }
}

struct Panicking;

#[async_trait]
impl JobEvents for Panicking {
    async fn emit(&self, event: JobEvent) {
        if matches!(event, JobEvent::StepStarted { .. }) {
            panic!("an event sink broke");
        }
    }
}

#[tokio::test]
async fn a_panic_inside_a_job_is_recorded_as_failed_not_propagated() {
    let h = harness(SimulatorConfig::default()).await;
    let rb = runbook(&format!(
        "retries = 2\n{}",
        crate::support::runbook::MINIMAL
    ));

    let outcome = h
        .executor
        .run(job(&rb, false), &Panicking, CancellationToken::new())
        .await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(
        error.contains("panicked") && error.contains("an event sink broke"),
        "{error}"
    );
    assert_eq!(outcome.attempts, 1, "a bug is not retried");
}

#[tokio::test]
async fn a_for_each_over_100000_mailboxes_holds_pages_in_memory_not_the_tenant() {
    let h = harness(SimulatorConfig::default().with_mailboxes(100_000)).await;
    let page_size = u64::from(h.tenant.settings.page_size.get());

    // A dry run: the read streams for real, each of its records becomes a planned write.
    let (outcome, events) = h.run(job(&runbook(TAG_EVERY_MAILBOX), true)).await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    assert_eq!(step(&outcome, "find").records_read, 100_000);
    assert_eq!(step(&outcome, "tag").writes_planned, 100_000);
    assert_eq!(events.count("planned"), 100_000);
    assert!(
        outcome.peak_records_in_memory > 0 && outcome.peak_records_in_memory <= 2 * page_size,
        "{} records held at once (page size {page_size})",
        outcome.peak_records_in_memory
    );
    assert!(h.writes().is_empty());
}

#[tokio::test]
async fn records_kept_for_a_max_changes_count_wait_on_disk_not_in_memory() {
    // Small pages make the bound visible with fewer records: memory follows the page size.
    let h = harness_with(
        SimulatorConfig::default().with_mailboxes(10_000),
        Options {
            adjust: Box::new(|s| {
                s.page_size = runbook_worker::exchange::PageSize::new(100).unwrap()
            }),
            ..Options::default()
        },
    )
    .await;

    let rb = runbook(&format!("max_changes = 20000\n{TAG_EVERY_MAILBOX}"));
    let (outcome, _) = h.run(job(&rb, true)).await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    assert_eq!(step(&outcome, "tag").writes_planned, 10_000);
    assert!(
        outcome.peak_records_in_memory > 0 && outcome.peak_records_in_memory <= 200,
        "{} records held at once (page size 100)",
        outcome.peak_records_in_memory
    );

    // The same count over the limit refuses the job before any write.
    let rb = runbook(&format!("max_changes = 9999\n{TAG_EVERY_MAILBOX}"));
    let (outcome, _) = h.run(job(&rb, false)).await;
    assert_eq!(outcome.status, FinalStatus::Failed);
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap()
            .contains("would make 10000 changes"),
        "{:?}",
        outcome.error
    );
    assert!(h.writes().is_empty());
}

const TAG_EVERY_MAILBOX: &str = r#"
[[steps]]
name = "find"
cmdlet = "Get-EXOMailbox"
parameters = { ResultSize = "Unlimited" }

[[steps]]
name = "tag"
cmdlet = "Set-Mailbox"
for_each = "find"
concurrency = 8
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", CustomAttribute1 = "x" }
"#;

#[tokio::test]
async fn the_history_adapter_records_the_plan_the_counts_and_the_outcome() {
    let h = harness(SimulatorConfig::default()).await;
    let clock: SharedClock = Arc::new(runbook_worker::clock::SystemClock);
    let (store, writer) = HistoryStore::open(
        &history::database_path(h.state.path()),
        &HistorySettings::default(),
        clock,
    )
    .await
    .unwrap();
    let rb = example("archive-for-user-mailboxes");
    let id = store
        .create_job(NewJob {
            runbook: rb.name.clone(),
            file_hash: rb.hash.clone(),
            trigger: Trigger::Manual,
            scheduled_for: None,
            dry_run: true,
            params: Default::default(),
        })
        .await
        .unwrap();
    store.mark_running(&id).await.unwrap();
    let events = HistoryEvents::new(store.clone(), id.clone());
    let mut spec = job(&rb, true);
    spec.id = id.clone();

    let outcome = h
        .executor
        .run(spec, &events, CancellationToken::new())
        .await;
    events.finish(&outcome).await.unwrap();

    let detail = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(detail.job.status, JobStatus::Completed);
    assert_eq!(detail.steps, outcome.steps);
    assert_eq!(
        detail.job.summary.as_deref(),
        Some(outcome.summary().as_str())
    );
    let plans: Vec<_> = detail
        .streams
        .iter()
        .filter(|s| s.kind == StreamKind::Plan)
        .collect();
    assert_eq!(plans.len() as u64, step(&outcome, "enable").writes_planned);
    assert!(
        plans[0].text.starts_with("enable: Enable-Mailbox on '"),
        "{}",
        plans[0].text
    );
    assert_eq!(
        plans[0].data.as_ref().unwrap()["parameters"]["Archive"],
        true
    );
    assert!(
        detail
            .streams
            .iter()
            .any(|s| s.kind == StreamKind::Progress && s.text.starts_with("find: ")),
        "{:?}",
        detail.streams
    );
    store.close().await.unwrap();
    writer.await.unwrap();
}

// ---------------------------------------------------------------------------------------
// `runbook-worker run` through the real binary, against both simulators.

mod binary {
    use std::path::Path;
    use std::process::Output;
    use std::time::Duration;

    use runbook_worker::history::{HistoryReader, JobFilter, JobStatus, JobSummary, Trigger};
    use runbook_worker::simulator::exchange::{
        Mailbox, Quota, RecipientTypeDetails, SimulatorConfig,
    };

    use crate::support::executor::{Simulators, simulators, writes};
    use crate::support::runbook::examples_dir;
    use crate::support::{stderr, stdout, wait_until};

    /// Runs `runbook-worker run ARGS…` with the examples folder as `[runbooks] dir` and a
    /// fresh `state.dir`.
    async fn run(sims: &Simulators, state: &Path, args: &[&str]) -> Output {
        let env = sims.env(state, &examples_dir());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        crate::support::run_binary_off_runtime(state, &argv, &env).await
    }

    fn jobs(state: &Path) -> Vec<JobSummary> {
        let reader = HistoryReader::open(&runbook_worker::history::database_path(state))
            .expect("the run recorded a history");
        futures::executor::block_on(reader.list_jobs(&JobFilter::default())).unwrap()
    }

    fn edit(sims: &Simulators, identity: &str, change: impl FnOnce(&mut Mailbox)) {
        sims.exchange.with_org(|org| {
            let position = org.resolve(identity).expect("a seeded mailbox");
            let mut mailbox = org.mailbox_at(position).unwrap().clone();
            change(&mut mailbox);
            org.replace(position, mailbox);
        });
    }

    fn of_type(sims: &Simulators, kind: RecipientTypeDetails) -> Vec<Mailbox> {
        sims.exchange
            .mailboxes()
            .into_iter()
            .filter(|m| m.recipient_type_details == kind)
            .collect()
    }

    fn plans(out: &Output) -> Vec<String> {
        stdout(out)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("plan: ").map(str::to_string))
            .collect()
    }

    fn assert_exit(out: &Output, code: i32) {
        assert_eq!(
            out.status.code(),
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        );
    }

    #[tokio::test]
    async fn the_archive_example_plans_then_enables_exactly_the_selected_archives() {
        let sims = simulators(SimulatorConfig::default()).await;
        let state = tempfile::tempdir().unwrap();
        let mut expected: Vec<String> = of_type(&sims, RecipientTypeDetails::UserMailbox)
            .into_iter()
            .filter(|m| m.archive.is_none() && !m.litigation_hold_enabled)
            .map(|m| m.external_directory_object_id.to_string())
            .collect();
        expected.sort();

        let dry = run(
            &sims,
            state.path(),
            &["archive-for-user-mailboxes", "--dry-run"],
        )
        .await;
        assert_exit(&dry, 0);
        assert!(writes(&sims.exchange.requests()).is_empty());
        let mut planned: Vec<String> = plans(&dry);
        planned.sort();
        let lines: Vec<String> = expected
            .iter()
            .map(|id| format!("Enable-Mailbox -Archive:$true -Identity '{id}'"))
            .collect();
        assert_eq!(planned, lines);

        let real = run(&sims, state.path(), &["archive-for-user-mailboxes"]).await;
        assert_exit(&real, 0);
        assert!(stdout(&real).contains("Completed in"), "{}", stdout(&real));
        let mut enabled: Vec<String> = writes(&sims.exchange.requests())
            .iter()
            .map(|r| {
                r.parameters().unwrap()["Identity"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        enabled.sort();
        assert_eq!(enabled, expected);
        let with_archive: Vec<String> = of_type(&sims, RecipientTypeDetails::UserMailbox)
            .into_iter()
            .filter(|m| m.archive.is_some())
            .map(|m| m.external_directory_object_id.to_string())
            .collect();
        assert!(expected.iter().all(|id| with_archive.contains(id)));

        let jobs = jobs(state.path());
        assert_eq!(jobs.len(), 2);
        assert!(
            jobs.iter()
                .all(|j| j.status == JobStatus::Completed && j.trigger == Trigger::Manual)
        );
        assert_eq!(jobs.iter().filter(|j| j.dry_run).count(), 1);
    }

    #[tokio::test]
    async fn the_forwarding_example_clears_external_forwarding_and_keeps_internal() {
        let sims = simulators(SimulatorConfig::default()).await;
        let state = tempfile::tempdir().unwrap();
        edit(&sims, "adele.vance", |m| {
            m.forwarding_smtp_address = Some("smtp:adele@fabrikam.com".into());
            m.deliver_to_mailbox_and_forward = true;
        });
        edit(&sims, "alex.wilber", |m| {
            m.forwarding_smtp_address = Some("smtp:adele.vance@contoso.com".into());
        });
        let external: Vec<String> = sims
            .exchange
            .mailboxes()
            .into_iter()
            .filter(|m| {
                m.forwarding_smtp_address
                    .as_deref()
                    .is_some_and(|f| !f.to_lowercase().ends_with("@contoso.com"))
            })
            .map(|m| m.external_directory_object_id.to_string())
            .collect();

        let dry = run(
            &sims,
            state.path(),
            &["remove-external-forwarding", "--dry-run"],
        )
        .await;
        assert_exit(&dry, 0);
        assert!(writes(&sims.exchange.requests()).is_empty());
        assert_eq!(plans(&dry).len(), external.len(), "{}", stdout(&dry));
        assert!(plans(&dry).iter().all(|p| p.starts_with(
            "Set-Mailbox -DeliverToMailboxAndForward:$false -ForwardingSmtpAddress $null -Identity '"
        )));

        let real = run(&sims, state.path(), &["remove-external-forwarding"]).await;
        assert_exit(&real, 0);
        let adele = sims.exchange.mailbox("adele.vance").unwrap();
        assert_eq!(adele.forwarding_smtp_address, None);
        assert!(!adele.deliver_to_mailbox_and_forward);
        assert_eq!(
            sims.exchange
                .mailbox("alex.wilber")
                .unwrap()
                .forwarding_smtp_address
                .as_deref(),
            Some("smtp:adele.vance@contoso.com"),
            "internal forwarding stays"
        );
        assert_eq!(writes(&sims.exchange.requests()).len(), external.len());
    }

    #[tokio::test]
    async fn the_shared_mailbox_example_caps_unlimited_quotas_and_turns_off_protocols() {
        let sims = simulators(SimulatorConfig::default()).await;
        let state = tempfile::tempdir().unwrap();
        edit(&sims, "sales", |m| {
            m.issue_warning_quota = Quota::Unlimited;
            m.prohibit_send_quota = Quota::Unlimited;
            m.prohibit_send_receive_quota = Quota::Unlimited;
        });
        let shared = of_type(&sims, RecipientTypeDetails::SharedMailbox);
        let protocols_on = shared
            .iter()
            .filter(|m| m.cas.pop_enabled || m.cas.imap_enabled || m.cas.active_sync_enabled)
            .count();
        assert!(protocols_on >= 1);

        let dry = run(
            &sims,
            state.path(),
            &["shared-mailbox-hygiene", "--dry-run"],
        )
        .await;
        assert_exit(&dry, 0);
        assert!(writes(&sims.exchange.requests()).is_empty());
        let planned = plans(&dry);
        assert_eq!(
            planned
                .iter()
                .filter(|p| p.starts_with("Set-Mailbox "))
                .count(),
            1,
            "{planned:?}"
        );
        assert_eq!(
            planned
                .iter()
                .filter(|p| p.starts_with("Set-CASMailbox "))
                .count(),
            protocols_on
        );

        let real = run(&sims, state.path(), &["shared-mailbox-hygiene"]).await;
        assert_exit(&real, 0);
        let sales = sims.exchange.mailbox("sales").unwrap();
        assert_eq!(
            (
                sales.issue_warning_quota,
                sales.prohibit_send_quota,
                sales.prohibit_send_receive_quota
            ),
            (Quota::gb(45), Quota::gb(49), Quota::gb(50))
        );
        for m in of_type(&sims, RecipientTypeDetails::SharedMailbox) {
            assert!(
                !m.cas.pop_enabled && !m.cas.imap_enabled && !m.cas.active_sync_enabled,
                "{}",
                m.alias
            );
        }
        assert!(
            of_type(&sims, RecipientTypeDetails::UserMailbox)
                .iter()
                .any(|m| m.cas.pop_enabled),
            "user mailboxes are left alone"
        );
    }

    #[tokio::test]
    async fn the_calendar_example_grants_the_team_once_and_reports_repeats_as_errors() {
        let sims = simulators(SimulatorConfig::default()).await;
        let state = tempfile::tempdir().unwrap();
        let users = of_type(&sims, RecipientTypeDetails::UserMailbox);
        let team: Vec<String> = users
            .iter()
            .skip(2)
            .take(3)
            .map(|m| m.alias.clone())
            .collect();
        for alias in team
            .iter()
            .chain(std::iter::once(&"adele.vance".to_string()))
        {
            edit(&sims, alias, |m| m.custom_attribute1 = Some("Sales".into()));
        }
        let params = [
            "--param",
            "team=Sales",
            "--param",
            "delegate=adele.vance@contoso.com",
        ];

        let mut args = vec!["team-calendar-access", "--dry-run"];
        args.extend_from_slice(&params);
        let dry = run(&sims, state.path(), &args).await;
        assert_exit(&dry, 0);
        assert!(writes(&sims.exchange.requests()).is_empty());
        assert_eq!(plans(&dry).len(), team.len(), "{}", stdout(&dry));
        assert!(
            plans(&dry)[0]
                .starts_with("Add-MailboxFolderPermission -AccessRights 'Reviewer' -Identity '")
        );

        let mut args = vec!["team-calendar-access"];
        args.extend_from_slice(&params);
        let real = run(&sims, state.path(), &args).await;
        assert_exit(&real, 0);
        for alias in &team {
            let granted = sims.exchange.with_org(|org| {
                let position = org.resolve(alias).unwrap();
                org.folder_permissions
                    .get(&(position, "calendar".to_string()))
                    .is_some_and(|entries| {
                        entries
                            .iter()
                            .any(|e| e.user == "Adele Vance" && e.access_rights == ["Reviewer"])
                    })
            });
            assert!(granted, "{alias}");
        }

        // Again: Exchange refuses each existing entry; the job completes with errors.
        let again = run(&sims, state.path(), &args).await;
        assert_exit(&again, 2);
        assert!(
            stdout(&again).contains("CompletedWithErrors"),
            "{}",
            stdout(&again)
        );
        assert!(
            stdout(&again).contains("UserAlreadyExistsInPermissionEntryException"),
            "{}",
            stdout(&again)
        );
        let statuses: Vec<JobStatus> = jobs(state.path()).iter().map(|j| j.status).collect();
        assert!(
            statuses.contains(&JobStatus::CompletedWithErrors),
            "{statuses:?}"
        );
    }

    #[tokio::test]
    async fn the_quota_report_example_writes_both_reports_also_in_a_dry_run() {
        let sims = simulators(SimulatorConfig::default()).await;
        let state = tempfile::tempdir().unwrap();
        edit(&sims, "adele.vance", |m| {
            m.usage.total_item_bytes = 100 * (1 << 30);
        });
        let users = of_type(&sims, RecipientTypeDetails::UserMailbox).len();

        for dry_run in [true, false] {
            let mut args = vec!["mailboxes-near-quota", "--output", "json"];
            if dry_run {
                args.push("--dry-run");
            }
            let out = run(&sims, state.path(), &args).await;
            assert_exit(&out, 0);
            let text = stdout(&out);
            let last: serde_json::Value =
                serde_json::from_str(text.lines().last().unwrap()).unwrap();
            assert_eq!(last["event"], "outcome");
            assert_eq!(last["status"], "Completed");
            let id = last["job_id"].as_str().unwrap();
            let folder = state.path().join("reports").join(id);
            let usage = std::fs::read_to_string(folder.join("usage.csv")).unwrap();
            assert_eq!(
                usage.lines().next(),
                Some("DisplayName,TotalItemSize,ItemCount,StorageLimitStatus,LastLogonTime")
            );
            assert_eq!(usage.lines().count(), users + 1);
            let near = std::fs::read_to_string(folder.join("near_quota.csv")).unwrap();
            let rows: Vec<&str> = near.lines().skip(1).collect();
            assert_eq!(rows.len(), 1, "{near}");
            assert!(
                rows[0].starts_with("Adele Vance,adele.vance@contoso.com,"),
                "{near}"
            );
            assert!(text.lines().any(|l| l.contains("\"event\":\"report\"")));
        }
        assert!(
            writes(&sims.exchange.requests()).is_empty(),
            "a report only reads"
        );
    }

    #[tokio::test]
    async fn ctrl_c_cancels_the_job_cleanly_and_records_it() {
        let sims =
            simulators(SimulatorConfig::default().with_latency(Duration::from_millis(500))).await;
        let state = tempfile::tempdir().unwrap();
        let env = sims.env(state.path(), &examples_dir());
        let mut child = std::process::Command::new(crate::support::binary())
            .current_dir(state.path())
            .args(["run", "archive-for-user-mailboxes"])
            .env_clear()
            .envs(env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || async {
                !writes(&sims.exchange.requests()).is_empty()
            })
            .await
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let out = tokio::task::spawn_blocking(move || {
            let _ = &mut child;
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();

        assert_exit(&out, 130);
        assert!(stdout(&out).contains("Cancelled in"), "{}", stdout(&out));
        let jobs = jobs(state.path());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].status, JobStatus::Cancelled);
    }

    #[tokio::test]
    async fn a_mistyped_runbook_name_or_param_is_refused_before_anything_runs() {
        let sims = simulators(SimulatorConfig::default()).await;
        let state = tempfile::tempdir().unwrap();

        let out = run(&sims, state.path(), &["archive-for-user-mailbox"]).await;
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains("no runbook named \"archive-for-user-mailbox\"")
                && stderr(&out).contains("did you mean \"archive-for-user-mailboxes\""),
            "{}",
            stderr(&out)
        );
        let out = run(
            &sims,
            state.path(),
            &["team-calendar-access", "--param", "team"],
        )
        .await;
        assert_exit(&out, 1);
        assert!(
            stderr(&out).contains("expected KEY=VALUE"),
            "{}",
            stderr(&out)
        );

        // A misspelt param (so the declared one is missing too): every problem is named at
        // once, and nothing is run or recorded.
        let out = run(
            &sims,
            state.path(),
            &[
                "team-calendar-access",
                "--param",
                "team=x",
                "--param",
                "delegat=y",
            ],
        )
        .await;
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(
            err.contains("has no param \"delegat\" (did you mean \"delegate\"?)"),
            "{err}"
        );
        assert!(
            err.contains("param \"delegate\" of runbook \"team-calendar-access\" has no default"),
            "{err}"
        );
        assert!(err.contains("nothing was run or recorded"), "{err}");
        assert!(sims.exchange.requests().is_empty());
        assert!(
            !runbook_worker::history::database_path(state.path()).exists(),
            "no job history was even created"
        );
    }
}
