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
