//! Runbook files as operators meet them: the shipped examples, the JSON Schema and the
//! `validate` command through the real binary.

use std::collections::BTreeSet;

use runbook_worker::runbook::{self, ErrorKind, PolicySettings};

use crate::support::runbook::{MINIMAL, example_files, examples_dir, schema_path, write_runbook};
use crate::support::{run_binary, stderr, stdout};

#[test]
fn every_example_runbook_is_valid_and_described() {
    let (catalog, errors) = runbook::load_folder(&examples_dir(), &PolicySettings::default());
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{}", shown.join("\n"));
    let names: BTreeSet<&str> = catalog.names().collect();
    let expected: BTreeSet<&str> = [
        "archive-for-user-mailboxes",
        "group-calendar-access",
        "leavers-to-shared-mailboxes",
        "licence-aware-archives",
        "mailboxes-near-quota",
        "remove-external-forwarding",
        "shared-mailbox-hygiene",
        "team-calendar-access",
    ]
    .into();
    assert_eq!(names, expected);
    for rb in catalog.iter() {
        assert!(
            rb.description.len() >= 100,
            "{} needs a description that says what it does and why",
            rb.name
        );
    }
}

#[test]
fn every_example_runbook_uses_only_cmdlets_the_simulated_tenant_knows() {
    let simulated = [
        "Get-Mailbox",
        "Set-Mailbox",
        "Enable-Mailbox",
        "Get-MailboxStatistics",
        "Get-MailboxPermission",
        "Add-MailboxPermission",
        "Remove-MailboxPermission",
        "Get-CASMailbox",
        "Set-CASMailbox",
        "Get-MailboxFolderPermission",
        "Add-MailboxFolderPermission",
        "Get-OrganizationConfig",
        "Get-AcceptedDomain",
        "Set-MailboxAutoReplyConfiguration",
    ];
    let (catalog, _) = runbook::load_folder(&examples_dir(), &PolicySettings::default());
    for rb in catalog.iter() {
        // Graph steps run against the Graph simulator in tests/integration/graphsteps.rs.
        for step in rb.steps.iter().filter(|s| s.graph.is_none()) {
            assert!(
                simulated.contains(&step.cmdlet.as_str()),
                "{}: {} is not simulated",
                rb.name,
                step.cmdlet
            );
        }
    }
}

#[test]
fn the_issue_example_is_valid_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"description = "Enable the online archive for user mailboxes that have none"
schedule = "0 30 2 * * *"        # cron; 5 fields, or 6 with seconds first; a list of them is allowed
timezone = "Europe/Berlin"       # IANA name, default UTC
timeout = "45m"                  # whole job
enabled = true
identity = { client_id = "…" }   # optional, overrides [identity] for this runbook
organization = "contoso.onmicrosoft.com"   # optional, overrides [exchange]
max_changes = 200                # optional blast-radius guard, see below

[[steps]]
name = "find"
cmdlet = "Get-Mailbox"
parameters = { RecipientTypeDetails = "UserMailbox", ResultSize = "Unlimited", Filter = "ArchiveStatus -eq 'None'" }

[[steps]]
name = "enable"
cmdlet = "Enable-Mailbox"
for_each = "find"                # once per record of step `find`, streamed as pages arrive
when = "item.LitigationHoldEnabled == false"   # optional filter expression
concurrency = 4
parameters = { Identity = "{{ item.ExternalDirectoryObjectId }}", Archive = true }
"#;
    let path = write_runbook(dir.path(), "archive-for-user-mailboxes.toml", text);
    let rb = runbook::load_file(&path, &PolicySettings::default()).unwrap();
    assert_eq!(rb.name, "archive-for-user-mailboxes");
    assert_eq!(rb.steps.len(), 2);
}

/// The checked-in schema is generated from the Rust types; regenerate it with
/// `UPDATE_SCHEMA=1 cargo test --test integration runbook::the_schema_file_matches_the_rust_types`.
#[test]
fn the_schema_file_matches_the_rust_types() {
    let generated = runbook::schema::json_schema();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(schema_path(), &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(schema_path()).unwrap_or_default();
    assert!(
        on_disk == generated,
        "runbooks/runbook.schema.json is out of date; run UPDATE_SCHEMA=1 cargo test --test integration runbook::the_schema_file_matches_the_rust_types"
    );
}

#[test]
fn every_example_runbook_fits_the_schema_types_and_names_the_schema() {
    for path in example_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("#:schema ./runbook.schema.json\n"),
            "{} should start with the Taplo schema directive",
            path.display()
        );
        if let Err(e) = toml::from_str::<runbook::schema::RunbookDocument>(&text) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn the_schema_describes_every_top_level_key_for_editors() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path()).unwrap()).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    let properties = schema["properties"].as_object().unwrap();
    for key in runbook::TOP_LEVEL_KEYS {
        let description = properties[*key]["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{key} has no description");
    }
    assert_eq!(schema["required"], serde_json::json!(["steps"]));
}

#[test]
fn validate_accepts_the_examples_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let folder = examples_dir();
    let out = run_binary(dir.path(), &["validate", folder.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("8 valid, 0 invalid (0 errors)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_prints_every_error_compiler_style_and_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("runbooks")).unwrap();
    write_runbook(
        &dir.path().join("runbooks"),
        "x.toml",
        "timezone = \"Europe/Berln\"\n[[steps]]\nname = \"enable\"\ncmdlet = \"Enable-Mailbox\"\nparamters = { Archive = true }\n",
    );
    write_runbook(&dir.path().join("runbooks"), "good.toml", MINIMAL);
    write_runbook(
        &dir.path().join("runbooks"),
        "x.toml.swp",
        "not toml at all",
    );
    write_runbook(&dir.path().join("runbooks"), "broken.toml", "[[steps]\n");

    // No path: the configured runbooks folder, relative to the working directory.
    let out = run_binary(dir.path(), &["validate"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            "runbooks/broken.toml:1:9: TOML syntax: unclosed array table, expected `]`",
            "runbooks/x.toml:1:12: unknown time zone \"Europe/Berln\" (did you mean \"Europe/Berlin\"?); use an IANA name such as \"Europe/Berlin\" or \"UTC\"",
            "runbooks/x.toml:5:1: unknown key \"paramters\" in step \"enable\" (did you mean \"parameters\"?)",
        ]
    );
    assert!(
        stderr(&out).contains("1 valid, 2 invalid (3 errors)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_prints_json_with_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_runbook(
        dir.path(),
        "bad.toml",
        "[[steps]]\nname = \"a\"\ncmdlet = \"Remove-Mailbox\"\n",
    );
    let good = write_runbook(dir.path(), "good.toml", MINIMAL);
    let out = run_binary(
        dir.path(),
        &["validate", "--format", "json", "bad.toml", "good.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["runbooks"][0]["name"], "good");
    assert_eq!(report["runbooks"][0]["steps"], 1);
    assert_eq!(report["errors"].as_array().unwrap().len(), 1);
    let error = &report["errors"][0];
    assert_eq!(error["file"], "bad.toml");
    assert_eq!(error["line"], 3);
    assert_eq!(error["column"], 10);
    assert_eq!(error["key"], "steps[0].cmdlet");
    assert_eq!(error["kind"], "policy");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("[policy] allow"),
        "{error}"
    );
    assert!(bad.exists() && good.exists());
}

#[test]
fn validate_applies_the_policy_from_settings() {
    let dir = tempfile::tempdir().unwrap();
    write_runbook(
        dir.path(),
        "cleanup.toml",
        "[[steps]]\nname = \"a\"\ncmdlet = \"Remove-MailboxPermission\"\n",
    );
    let denied = run_binary(dir.path(), &["validate", "cleanup.toml"], &[]);
    assert_eq!(denied.status.code(), Some(1));
    let allowed = run_binary(
        dir.path(),
        &["validate", "cleanup.toml"],
        &[(
            "RUNBOOK_WORKER__POLICY__ALLOW",
            "Get-*,Remove-MailboxPermission",
        )],
    );
    assert!(allowed.status.success(), "{}", stdout(&allowed));
    let deny_wins = run_binary(
        dir.path(),
        &["validate", "cleanup.toml"],
        &[
            ("RUNBOOK_WORKER__POLICY__ALLOW", "Remove-*"),
            ("RUNBOOK_WORKER__POLICY__DENY", "*-MailboxPermission"),
        ],
    );
    assert_eq!(deny_wins.status.code(), Some(1));
    assert!(
        stdout(&deny_wins).contains("it matches \"*-MailboxPermission\" in [policy] deny"),
        "{}",
        stdout(&deny_wins)
    );
}

#[test]
fn validate_reports_a_missing_path_and_reads_the_folder_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(dir.path(), &["validate", "nope.toml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).starts_with("nope.toml: cannot read the file"),
        "{}",
        stdout(&out)
    );

    std::fs::create_dir(dir.path().join("drop")).unwrap();
    write_runbook(&dir.path().join("drop"), "a.toml", MINIMAL);
    let out = run_binary(
        dir.path(),
        &["validate"],
        &[("RUNBOOK_WORKER__RUNBOOKS__DIR", "drop")],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("1 valid, 0 invalid"),
        "{}",
        stderr(&out)
    );

    let out = run_binary(dir.path(), &["validate"], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the default folder runbooks/ does not exist here"
    );
    assert!(
        stdout(&out).contains("cannot read the runbooks folder"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_folder_with_two_runbooks_of_the_same_name_refuses_both() {
    let dir = tempfile::tempdir().unwrap();
    write_runbook(dir.path(), "Report.toml", MINIMAL);
    write_runbook(dir.path(), "report.toml", MINIMAL);
    let (catalog, errors) = runbook::load_folder(dir.path(), &PolicySettings::default());
    assert!(catalog.is_empty());
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e.kind == ErrorKind::Duplicate));
}

/// Runs `validate PATH` and kills it if it has not finished in `limit`: a FIFO used to
/// block the read forever.
fn validate_within(
    dir: &std::path::Path,
    path: &str,
    limit: std::time::Duration,
) -> std::process::Output {
    let mut child = std::process::Command::new(crate::support::binary())
        .current_dir(dir)
        .args(["validate", path])
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("validate {path} did not finish: {}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn validate_refuses_paths_that_are_not_runbook_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("folder.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero.toml")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe.toml"))
        .status()
        .unwrap();
    assert!(made.success());
    let cases = [
        ("folder.toml", "a directory"),
        ("zero.toml", "a character device"),
        ("pipe.toml", "a FIFO"),
        ("missing.toml", "No such file"),
    ];
    for (path, what) in cases {
        let out = validate_within(dir.path(), path, std::time::Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "{path}: {}", stderr(&out));
        let shown = stdout(&out);
        assert!(shown.starts_with(&format!("{path}: ")), "{path}: {shown}");
        assert!(shown.contains(what), "{path}: {shown}");
    }
}

#[test]
fn validate_refuses_a_file_over_one_mebibyte_and_caps_errors() {
    let dir = tempfile::tempdir().unwrap();
    let line = "unknown_key_with_a_long_name = 1\n";
    std::fs::write(
        dir.path().join("huge.toml"),
        line.repeat(1024 * 1024 / line.len() + 1),
    )
    .unwrap();
    let out = run_binary(dir.path(), &["validate", "huge.toml"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1048576-byte limit"),
        "{}",
        stdout(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 1, "{}", stdout(&out));
}
