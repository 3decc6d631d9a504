//! Runbooks that start from Microsoft Graph: the example runbooks run through the binary
//! against the simulated tenant (`--simulate`: identity, Exchange and Graph over the same
//! users), for real and as a dry run, with their results checked against the simulated
//! directory.

use serde_json::Value;

use runbook_worker::app::SIMULATED_MAILBOXES;
use runbook_worker::simulator::exchange::org::{Organisation, RecipientTypeDetails};
use runbook_worker::simulator::graph::{Directory, SKU_E3, SKU_E5};
use runbook_worker::simulator::identity::SIMULATED_TENANT_ID;

use crate::support::{run_binary, stderr, stdout};

/// The organisation `--simulate` serves (the simulators' default seed).
fn organisation() -> (Organisation, Directory) {
    let org = Organisation::seeded("contoso", SIMULATED_TENANT_ID, SIMULATED_MAILBOXES, 1);
    let directory = Directory::from_organisation(&org, 1);
    (org, directory)
}

/// Runs an example runbook with `--simulate --output json`; returns its outcome line.
fn run_example(name: &str, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = concat!(env!("CARGO_MANIFEST_DIR"), "/runbooks");
    let state = dir.path().join("state").display().to_string();
    let env = [
        ("RUNBOOK_WORKER__RUNBOOKS__DIR", runbooks),
        ("RUNBOOK_WORKER__STATE__DIR", state.as_str()),
    ];
    let mut args = vec!["run", name, "--simulate", "--output", "json"];
    args.extend_from_slice(extra);
    let out = run_binary(dir.path(), &args, &env);
    let text = stdout(&out);
    assert!(out.status.success(), "{args:?}\n{text}\n{}", stderr(&out));
    let outcome: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "outcome")
        .unwrap_or_else(|| panic!("no outcome line in {text}"));
    assert_eq!(outcome["status"], "Completed", "{outcome}");
    outcome
}

/// (done, skipped, writes_planned) of one step in an outcome.
fn counts(outcome: &Value, step: &str) -> (u64, u64, u64) {
    let s = outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == step)
        .unwrap_or_else(|| panic!("no step {step} in {outcome}"));
    let n = |k: &str| s[k].as_u64().unwrap();
    (n("done"), n("skipped"), n("writes_planned"))
}

#[test]
fn leavers_to_shared_mailboxes_converts_exactly_the_disabled_users_mailboxes() {
    let (org, directory) = organisation();
    let user_mailboxes = org
        .mailboxes()
        .iter()
        .filter(|m| m.recipient_type_details == RecipientTypeDetails::UserMailbox)
        .count() as u64;
    let leavers = org
        .mailboxes()
        .iter()
        .zip(&directory.users)
        .filter(|(m, u)| {
            m.recipient_type_details == RecipientTypeDetails::UserMailbox && !u.account_enabled
        })
        .count() as u64;
    assert!(leavers > 0, "the simulated tenant has leavers");

    let dry = run_example("leavers-to-shared-mailboxes", &["--dry-run"]);
    for step in ["convert", "auto_reply"] {
        assert_eq!(
            counts(&dry, step),
            (0, user_mailboxes - leavers, leavers),
            "{step}: {dry}"
        );
    }
    let real = run_example("leavers-to-shared-mailboxes", &[]);
    for step in ["convert", "auto_reply"] {
        assert_eq!(
            counts(&real, step),
            (leavers, user_mailboxes - leavers, 0),
            "{step}: {real}"
        );
    }
}

#[test]
fn group_calendar_access_grants_every_transitive_member() {
    let (_, directory) = organisation();
    let sales = directory
        .groups
        .iter()
        .position(|g| g.display_name == "Sales Team")
        .unwrap();
    let members = directory
        .transitive_members(sales)
        .iter()
        .filter(|m| {
            matches!(
                m,
                runbook_worker::simulator::graph::directory::Member::User(_)
            )
        })
        .count() as u64;
    assert!(members > 3, "nested members included");
    let group = format!("group={}", directory.groups[sales].id);
    let params = ["--param", &group, "--param", "calendar=sales@contoso.com"];

    let mut dry_args = params.to_vec();
    dry_args.push("--dry-run");
    let dry = run_example("group-calendar-access", &dry_args);
    assert_eq!(counts(&dry, "grant"), (0, 0, members), "{dry}");
    let real = run_example("group-calendar-access", &params);
    assert_eq!(counts(&real, "grant"), (members, 0, 0), "{real}");
}

#[test]
fn licence_aware_archives_enables_archives_only_for_licensed_owners() {
    let (org, directory) = organisation();
    let expected = org
        .mailboxes()
        .iter()
        .zip(&directory.users)
        .filter(|(m, u)| {
            m.recipient_type_details == RecipientTypeDetails::UserMailbox
                && m.archive.is_none()
                && u.licenses.iter().any(|l| l == SKU_E3 || l == SKU_E5)
        })
        .count() as u64;
    let candidates = org
        .mailboxes()
        .iter()
        .filter(|m| {
            m.recipient_type_details == RecipientTypeDetails::UserMailbox && m.archive.is_none()
        })
        .count() as u64;
    assert!(expected > 0 && expected < candidates, "some are unlicensed");

    let dry = run_example("licence-aware-archives", &["--dry-run"]);
    assert_eq!(
        counts(&dry, "enable"),
        (0, candidates - expected, expected),
        "{dry}"
    );
    let real = run_example("licence-aware-archives", &[]);
    assert_eq!(
        counts(&real, "enable"),
        (expected, candidates - expected, 0),
        "{real}"
    );
}

#[test]
fn permissions_lists_each_graph_role_with_its_id_and_the_grant_command() {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = concat!(env!("CARGO_MANIFEST_DIR"), "/runbooks");
    let out = run_binary(
        dir.path(),
        &["permissions", runbooks, "--output", "json"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let needs: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let roles: Vec<(&str, &str)> = needs["graph"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["role"].as_str().unwrap(), g["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        [
            (
                "GroupMember.Read.All",
                "98830695-27a2-44f7-8c18-0c3ebc9698f6"
            ),
            ("User.Read.All", "df021288-bdef-4463-88db-98f22de89214"),
        ]
    );
    assert_eq!(needs["exchange"]["app_role"], "Exchange.ManageAsApp");
    assert_eq!(
        needs["exchange"]["directory_role"],
        "Exchange Recipient Administrator"
    );
    let command = needs["grant_command"].as_str().unwrap();
    assert!(
        command.ends_with("--graph-role GroupMember.Read.All --graph-role User.Read.All"),
        "{command}"
    );
    // Every option the command uses is one the script takes.
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/permissions/grant-exchange-permissions.sh"
    ))
    .unwrap();
    for option in command.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            script.contains(&format!("{option})")) || script.contains(&format!("{option} |")),
            "{option}"
        );
    }

    // A read-only runbook folder needs only Global Reader.
    let only = dir.path().join("reads");
    std::fs::create_dir(&only).unwrap();
    std::fs::copy(
        format!("{runbooks}/mailboxes-near-quota.toml"),
        only.join("mailboxes-near-quota.toml"),
    )
    .unwrap();
    let out = run_binary(dir.path(), &["permissions", only.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("\"Global Reader\""), "{text}");
    assert!(text.contains("Microsoft Graph: nothing"), "{text}");
}

mod executor {
    use std::sync::Arc;

    use runbook_worker::clock::SystemClock;
    use runbook_worker::executor::{
        ExchangeClients, Executor, ExecutorDeps, FinalStatus, FixedTokens,
    };
    use runbook_worker::runbook::PolicySettings;
    use runbook_worker::simulator::exchange::{ExchangeSimulator, SimulatorConfig};
    use runbook_worker::simulator::graph::Fault;
    use runbook_worker::simulator::identity::SIMULATED_TENANT_ID;

    use crate::support::exchange::settings_for;
    use crate::support::executor::{Recorder, job, runbook};
    use crate::support::graph::{World, graph_settings, world};

    const USERS: usize = 8;

    /// Every enabled user (3 per page) gets a licence: a Graph read feeding a Graph write.
    const LICENCES: &str = r#"retries = { attempts = 2, backoff = "1s" }
[[steps]]
name = "users"
graph = "GET /v1.0/users"
query = { "$filter" = "accountEnabled eq true", "$select" = "id,userPrincipalName", "$top" = 3 }

[[steps]]
name = "licence"
graph = "POST /v1.0/users/{{ item.id }}/assignLicense"
for_each = "users"
body = { addLicenses = [{ skuId = "05e9a617-0261-4cee-bb44-138d3ef5d965" }], removeLicenses = [] }
"#;

    struct Setup {
        world: World,
        _exchange: ExchangeSimulator,
        _state: tempfile::TempDir,
        executor: Executor,
    }

    async fn setup() -> Setup {
        let world = world(&["User.Read.All", "LicenseAssignment.ReadWrite.All"], USERS).await;
        let exchange = ExchangeSimulator::start(SimulatorConfig {
            tenant_id: SIMULATED_TENANT_ID.to_string(),
            mailboxes: USERS,
            ..SimulatorConfig::default()
        })
        .await
        .unwrap();
        let clients = ExchangeClients::new(
            settings_for(&exchange),
            Arc::new(FixedTokens(world.tokens.clone())),
        )
        .unwrap()
        .with_graph(graph_settings(&world.graph));
        let state = tempfile::tempdir().unwrap();
        let executor = Executor::new(ExecutorDeps {
            clients: Arc::new(clients),
            policy: PolicySettings::default(),
            state_dir: state.path().to_path_buf(),
            assets: Arc::new(runbook_worker::executor::Assets::none(Arc::new(
                SystemClock,
            ))),
            clock: Arc::new(SystemClock),
            metrics: None,
        });
        Setup {
            world,
            _exchange: exchange,
            _state: state,
            executor,
        }
    }

    fn posts(world: &World) -> usize {
        world
            .graph
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count()
    }

    #[tokio::test]
    async fn graph_pages_feed_graph_writes_which_a_dry_run_only_plans() {
        let s = setup().await;
        let enabled = s
            .world
            .graph
            .with_directory(|d| d.users.iter().filter(|u| u.account_enabled).count());
        assert!(enabled > 3, "more than one page");
        let rb = runbook(LICENCES);
        let recorder = Recorder::default();
        let dry = s
            .executor
            .run(job(&rb, true), &recorder, Default::default())
            .await;
        assert_eq!(dry.status, FinalStatus::Completed, "{:?}", dry.error);
        assert_eq!(dry.steps[0].records_read, enabled as u64);
        assert_eq!(dry.steps[1].writes_planned, enabled as u64);
        assert_eq!(posts(&s.world), 0, "a dry run sends no Graph write");
        let (label, planned) = recorder.planned().remove(0);
        assert!(
            label.starts_with("POST /v1.0/users/") && label.ends_with("/assignLicense"),
            "{label}"
        );
        assert_eq!(planned["body"]["removeLicenses"], serde_json::json!([]));
        // Paging: one GET per page of 3, following @odata.nextLink.
        let gets = s
            .world
            .graph
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count();
        assert_eq!(gets, enabled.div_ceil(3));

        // Throttled once: the GET is retried after Retry-After and the job completes.
        s.world.graph.inject(
            Some(reqwest::Method::GET),
            Some("/v1.0/users"),
            Fault::Throttle {
                retry_after: Some("0".into()),
            },
            1,
        );
        let real = s
            .executor
            .run(job(&rb, false), &Recorder::default(), Default::default())
            .await;
        assert_eq!(real.status, FinalStatus::Completed, "{:?}", real.error);
        assert_eq!(real.steps[1].done, enabled as u64);
        assert_eq!(posts(&s.world), enabled);
        assert_eq!(s.world.graph.pending_faults(), 0);
    }

    #[tokio::test]
    async fn a_graph_write_with_an_unknown_outcome_is_never_sent_again() {
        let s = setup().await;
        s.world.graph.inject(
            Some(reqwest::Method::POST),
            Some("assignLicense"),
            Fault::ServerError {
                status: 503,
                after_executing: true,
            },
            1,
        );
        let outcome = s
            .executor
            .run(
                job(&runbook(LICENCES), false),
                &Recorder::default(),
                Default::default(),
            )
            .await;
        assert_eq!(outcome.status, FinalStatus::Failed);
        assert_eq!(outcome.attempts, 1, "retries are refused after a write");
        let error = outcome.error.unwrap();
        assert!(error.contains("not retried"), "{error}");
        assert!(error.contains("outcome is unknown"), "{error}");
        assert_eq!(
            posts(&s.world),
            1,
            "the write was sent once, never replayed"
        );
    }
}
