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
use runbook_worker::history::{self, HistorySettings, HistoryStore, JobStatus, NewJob, StreamKind, Trigger};
use runbook_worker::runbook::{self, PolicySettings};
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

    let (outcome, events) = h.run(job(&example("archive-for-user-mailboxes"), false)).await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    let mut enabled: Vec<String> = h
        .writes()
        .iter()
        .map(|r| r.parameters().unwrap()["Identity"].as_str().unwrap().to_string())
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

    let (outcome, events) = h.run(job(&example("archive-for-user-mailboxes"), true)).await;

    assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
    assert!(h.writes().is_empty(), "{:?}", h.writes());
    assert!(
        h.sim().requests().iter().any(|r| r.cmdlet() == Some("Get-Mailbox")),
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
    assert_eq!(step(&outcome, "enable").writes_planned, expected.len() as u64);
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
    let (outcome, _) = h.run(job(&example("archive-for-user-mailboxes"), false)).await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(
        error.contains("\"Enable-Mailbox\"") && error.contains("\"Enable-*\" in [policy] deny"),
        "{error}"
    );
    assert!(h.sim().requests().is_empty());
}

#[tokio::test]
async fn an_unknown_param_fails_the_job_before_any_call() {
    let h = harness(SimulatorConfig::default()).await;
    let rb = example("team-calendar-access");

    let (outcome, _) = h
        .run(job_with_params(&rb, &[("tema", "Sales"), ("delegate", "x@contoso.com")]))
        .await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(
        error.contains("has no param \"tema\" (did you mean \"team\"?)"),
        "{error}"
    );
    assert!(h.sim().requests().is_empty());
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

    assert_eq!(outcome.status, FinalStatus::CompletedWithErrors, "{outcome:?}");
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

    assert_eq!(outcome.status, FinalStatus::CompletedWithErrors, "{outcome:?}");
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
    let jsonl = std::fs::read_to_string(report_path(state, &id, "stats", runbook::OutputFormat::Jsonl))
        .unwrap();
    assert_eq!(jsonl.lines().count(), users);
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert!(first.get("TotalItemSize").is_some(), "{first}");
    let domains = std::fs::read_to_string(report_path(state, &id, "domains", runbook::OutputFormat::Csv))
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
    assert!(!state.join("tmp").join(id.as_str()).exists(), "spools removed");
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
    assert_eq!(events.count("step_finished"), 1, "the step's end is recorded");
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
        assert!(
            wait_until(Duration::from_secs(20), || async { h.writes().len() >= 2 }).await
        );
        cancel.cancel();
        h.sim().requests().len()
    };

    let (outcome, requests_at_cancel) = tokio::join!(run, stop);

    assert_eq!(outcome.status, FinalStatus::Cancelled, "{outcome:?}");
    assert_eq!(h.sim().requests().len(), requests_at_cancel, "no call after the cancel");
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

#[tokio::test]
async fn a_failed_job_is_retried_after_its_backoff_and_each_attempt_is_announced() {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 2, 8, 0, 0).unwrap());
    let shared: SharedClock = Arc::new(clock.clone());
    let h = harness_with(
        SimulatorConfig::default(),
        Options {
            clock: shared,
            ..Options::default()
        },
    )
    .await;
    let rb = runbook(
        "retries = { attempts = 2, backoff = \"1h\" }\n[[steps]]\nname = \"tag\"\ncmdlet = \"Set-Mailbox\"\nparameters = { Identity = \"adele.vance\", CustomAttribute1 = \"Retried\" }\n",
    );
    // The write meets a 503 the client will not replay: the attempt fails.
    h.sim().inject(
        Some("Set-Mailbox"),
        Fault::ServerError {
            status: 503,
            exception: None,
            after_executing: false,
        },
        1,
    );
    let recorder = Recorder::default();
    let run = h.executor.run(job(&rb, false), &recorder, CancellationToken::new());
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
    assert!(failed.1.contains("may or may not have been applied"), "{}", failed.1);
    assert_eq!(
        h.sim().mailbox("adele.vance").unwrap().custom_attribute1.as_deref(),
        Some("Retried")
    );
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
    let rb = runbook(&format!("retries = 2\n{}", crate::support::runbook::MINIMAL));

    let outcome = h
        .executor
        .run(job(&rb, false), &Panicking, CancellationToken::new())
        .await;

    assert_eq!(outcome.status, FinalStatus::Failed);
    let error = outcome.error.clone().unwrap();
    assert!(error.contains("panicked") && error.contains("an event sink broke"), "{error}");
    assert_eq!(outcome.attempts, 1, "a bug is not retried");
}

#[tokio::test]
async fn a_for_each_over_100000_mailboxes_holds_pages_not_the_whole_tenant() {
    let h = harness(SimulatorConfig::default().with_mailboxes(100_000)).await;
    let page_size = u64::from(h.tenant.settings.page_size);
    let piped = runbook(TAG_EVERY_MAILBOX);
    // max_changes makes the executor count the writes first: the records are spooled.
    let spooled = runbook(&format!("max_changes = 200000\n{TAG_EVERY_MAILBOX}"));

    for rb in [piped, spooled] {
        let (outcome, events) = h.run(job(&rb, true)).await;
        assert_eq!(outcome.status, FinalStatus::Completed, "{outcome:?}");
        assert_eq!(step(&outcome, "find").records_read, 100_000);
        assert_eq!(step(&outcome, "tag").writes_planned, 100_000);
        assert_eq!(events.count("planned"), 100_000);
        assert!(
            outcome.peak_records_in_memory <= 2 * page_size,
            "{} records held at once (page size {page_size})",
            outcome.peak_records_in_memory
        );
        assert!(outcome.peak_records_in_memory > 0);
    }
    assert!(h.writes().is_empty());
}

const TAG_EVERY_MAILBOX: &str = r#"
[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
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

    let outcome = h.executor.run(spec, &events, CancellationToken::new()).await;
    events.finish(&outcome).await.unwrap();

    let detail = store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(detail.job.status, JobStatus::Completed);
    assert_eq!(detail.steps, outcome.steps);
    assert_eq!(detail.job.summary.as_deref(), Some(outcome.summary().as_str()));
    let plans: Vec<_> = detail
        .streams
        .iter()
        .filter(|s| s.kind == StreamKind::Plan)
        .collect();
    assert_eq!(plans.len() as u64, step(&outcome, "enable").writes_planned);
    assert!(plans[0].text.starts_with("enable: Enable-Mailbox on '"), "{}", plans[0].text);
    assert_eq!(plans[0].data.as_ref().unwrap()["parameters"]["Archive"], true);
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
