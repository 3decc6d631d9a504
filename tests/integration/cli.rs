//! The command line as an operator meets it.

use crate::support::{run_binary, stderr, stdout};

#[test]
fn help_lists_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(dir.path(), &["--help"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("token"), "{}", stdout(&out));
}

#[test]
fn a_bad_setting_in_the_environment_fails_with_the_key_and_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(
        dir.path(),
        &["token"],
        &[("RUNBOOK_WORKER__HTTP__LISTEN", "not-an-address")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("http.listen"), "{err}");
    assert!(err.contains("RUNBOOK_WORKER__HTTP__LISTEN"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_misspelt_variable_and_every_other_problem_are_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("runbook-worker.toml"),
        "[exchange]\npage_size = 5000\n",
    )
    .unwrap();
    let out = run_binary(
        dir.path(),
        &["validate"],
        &[("RUNBOOK_WORKER__HTTP__LISTN", "127.0.0.1:9")],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "unknown setting http.listn from environment variable RUNBOOK_WORKER__HTTP__LISTN; did you mean http.listen?"
        ),
        "{err}"
    );
    assert!(err.contains("exchange.page_size"), "{err}");
    assert!(err.contains("runbook-worker.toml"), "{err}");
    assert!(!err.contains("built-in default"), "{err}");
}

#[test]
fn a_missing_config_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(dir.path(), &["--config", "missing.toml", "token"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
}

/// A working folder with the repository's example runbooks and its own state folder, for
/// commands run with `--simulate`.
fn simulated_workspace() -> (tempfile::TempDir, Vec<(&'static str, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let runbooks = concat!(env!("CARGO_MANIFEST_DIR"), "/runbooks");
    let env = vec![
        ("RUNBOOK_WORKER__RUNBOOKS__DIR", runbooks.to_string()),
        (
            "RUNBOOK_WORKER__STATE__DIR",
            dir.path().join("state").display().to_string(),
        ),
    ];
    (dir, env)
}

/// A quick job for a history to hold: an example's dry run against the simulator.
const RECORDED_DRY_RUN: [&str; 6] = [
    "run",
    "mailboxes-near-quota",
    "--dry-run",
    "--simulate",
    "--output",
    "json",
];

fn run_simulated(args: &[&str]) -> std::process::Output {
    let (dir, env) = simulated_workspace();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_binary(dir.path(), args, &env)
}

#[test]
fn a_newcomer_dry_runs_an_example_runbook_with_simulate_and_no_subscription() {
    let out = run_simulated(&["run", "mailboxes-near-quota", "--dry-run", "--simulate"]);
    let (out_text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{out_text}\n{err}");
    assert!(err.contains("simulating the managed identity"), "{err}");
    assert!(out_text.contains("Completed"), "{out_text}");
    assert!(!err.contains("169.254.169.254"), "{err}");
}

#[test]
fn token_invoke_and_doctor_work_against_the_simulators_with_simulate() {
    let token = run_simulated(&["token", "--simulate", "--output", "json"]);
    assert!(token.status.success(), "{}", stderr(&token));
    let report: serde_json::Value = serde_json::from_str(&stdout(&token)).unwrap();
    assert_eq!(report["source"], "imds", "{report}");
    assert!(
        report["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{report}"
    );

    let invoke = run_simulated(&[
        "invoke",
        "Get-Mailbox",
        "--simulate",
        "--param",
        "ResultSize=5",
        "--output",
        "json",
    ]);
    assert!(invoke.status.success(), "{}", stderr(&invoke));
    assert_eq!(stdout(&invoke).lines().count(), 5, "{}", stdout(&invoke));

    let doctor = run_simulated(&["doctor", "--simulate", "--format", "json"]);
    let findings: Vec<serde_json::Value> = serde_json::from_str(&stdout(&doctor)).unwrap();
    let call = findings
        .iter()
        .find(|f| f["check"] == "exchange-call")
        .unwrap_or_else(|| panic!("no exchange-call check in {findings:?}"));
    assert_eq!(call["status"], "ok", "{call}");
    // The example runbooks call Graph: the simulated identity's Graph token holds the roles.
    let graph = findings
        .iter()
        .find(|f| f["check"] == "graph-roles")
        .unwrap_or_else(|| panic!("no graph-roles check in {findings:?}"));
    assert_eq!(graph["status"], "ok", "{graph}");
    assert!(
        graph["message"].as_str().unwrap().contains("User.Read.All"),
        "{graph}"
    );
}

#[test]
fn a_mistake_on_the_command_line_exits_64_not_a_job_status() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["run"][..],
        &["run", "x", "--no-such-flag"],
        // A plan file needs a dry run: a real run plans nothing.
        &["run", "x", "--plan-file", "plan.jsonl"],
        &["frobnicate"],
    ] {
        let out = run_binary(dir.path(), args, &[]);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("Usage"), "{args:?}: {}", stderr(&out));
    }
    let help = run_binary(dir.path(), &["run", "--help"], &[]);
    assert_eq!(help.status.code(), Some(0), "{}", stderr(&help));
}

#[test]
fn every_command_takes_output_human_or_json_and_the_old_spellings_still_work() {
    let (dir, env) = simulated_workspace();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // One job, so that `jobs` has a history to print.
    let out = run_binary(dir.path(), &RECORDED_DRY_RUN, &env);
    assert!(out.status.success(), "{}", stderr(&out));
    for command in ["validate", "next mailboxes-near-quota", "jobs"] {
        let mut human: Vec<&str> = command.split(' ').collect();
        human.extend(["--output", "human"]);
        let out = run_binary(dir.path(), &human, &env);
        assert!(out.status.success(), "{human:?}: {}", stderr(&out));

        for (flag, value) in [("--output", "json"), ("--format", "json")] {
            let mut json: Vec<&str> = command.split(' ').collect();
            json.extend([flag, value]);
            let out = run_binary(dir.path(), &json, &env);
            assert!(out.status.success(), "{json:?}: {}", stderr(&out));
            serde_json::from_str::<serde_json::Value>(&stdout(&out))
                .unwrap_or_else(|e| panic!("{json:?} printed no JSON ({e}): {}", stdout(&out)));
        }
        for old in ["text", "table"] {
            let mut legacy: Vec<&str> = command.split(' ').collect();
            legacy.extend(["--format", old]);
            let out = run_binary(dir.path(), &legacy, &env);
            assert!(out.status.success(), "{legacy:?}: {}", stderr(&out));
        }
        let mut help: Vec<&str> = command.split(' ').collect();
        help.push("--help");
        let text = stdout(&run_binary(dir.path(), &help, &env));
        assert!(text.contains("--output"), "{help:?}: {text}");
        assert!(
            !text.contains("--format"),
            "{help:?} shows the old flag: {text}"
        );
    }
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(dir.path(), &["--version"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("runbook-worker "), "{text}");
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {text:?}"));
    // Built from a git checkout (as here and in CI), it is that checkout's commit, possibly
    // marked dirty; only a build without git says "unknown".
    let head = std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(commit.trim_end_matches("-dirty"), head, "{text}"),
        None => assert_eq!(commit, "unknown", "{text}"),
    }
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish_without_any_settings() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_binary(
            dir.path(),
            &["--config", "does-not-exist.toml", "completions", shell],
            &[],
        );
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for word in ["serve", "validate", "doctor", "--simulate"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
}

#[test]
fn a_broken_settings_line_never_prints_the_secret_on_it() {
    let secret = "s3cr3t-TOKEN-ab12cd34ef56ab12cd34ef56";
    // The storage URL below is never contacted: the line does not parse, so `validate` stops
    // at the file.
    let files = [
        format!("[http]\napi_token = \"{secret}\" oops\n"),
        format!(
            "[coordination]\nkind = \"azure-blob\"\nsas_url = \"https://acct.blob.core.windows.net/c?sv=1&sig={secret}\" oops\n"
        ),
        format!("[http]\napi_token = [\"{secret}\"]\n"),
    ];
    for text in files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("runbook-worker.toml"), &text).unwrap();
        let out = run_binary(dir.path(), &["validate"], &[]);
        assert!(!out.status.success());
        let (err, shown) = (stderr(&out), stdout(&out));
        assert!(
            !err.contains(secret) && !shown.contains(secret),
            "{err}{shown}"
        );
        assert!(err.contains("runbook-worker.toml"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(
        dir.path(),
        &["validate"],
        &[
            ("RUNBOOK_WORKER__HTTP__API_TOKEN", secret),
            ("RUNBOOK_WORKER__HTTP__LISTEN", secret),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains(secret), "{err}");
    assert!(err.contains("http.listen"), "{err}");
}

#[test]
fn jobs_before_takes_an_instant_as_the_api_does_or_a_job_id() {
    let (dir, env) = simulated_workspace();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..2 {
        let out = run_binary(dir.path(), &RECORDED_DRY_RUN, &env);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let list = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["jobs", "--output", "json"];
        args.extend(extra);
        let out = run_binary(dir.path(), &args, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        doc["jobs"].as_array().unwrap().clone()
    };
    let all = list(&[]);
    assert_eq!(all.len(), 2, "{all:?}");
    let (newer, older) = (&all[0], &all[1]);
    let ids = |jobs: Vec<serde_json::Value>| -> Vec<String> {
        jobs.iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let older_id = older["id"].as_str().unwrap().to_string();
    for before in [
        newer["id"].as_str().unwrap(),
        newer["created_at"].as_str().unwrap(),
    ] {
        assert_eq!(
            ids(list(&["--before", before])),
            std::slice::from_ref(&older_id),
            "--before {before}"
        );
    }
    assert_eq!(ids(list(&["--before", "9999-01-01T00:00:00Z"])).len(), 2);
    assert!(list(&["--before", "1969-12-31T23:59:59Z"]).is_empty());

    let out = run_binary(dir.path(), &["jobs", "--before", "yesterday"], &env);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("RFC 3339"), "{}", stderr(&out));
}

/// Keys of a JSON object, for naming a missing one.
fn keys(value: &serde_json::Value) -> Vec<&str> {
    value
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn validate_next_and_the_api_name_the_same_facts_with_the_same_keys() {
    use crate::support::app::{TestAppOptions, spawn_app_with};

    let name = "shared-mailbox-hygiene";
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/runbooks/shared-mailbox-hygiene.toml"
    ))
    .unwrap();
    let app =
        spawn_app_with(TestAppOptions::default().runbook(&format!("{name}.toml"), &text)).await;
    let listed = app.get_json("/api/runbooks").await;
    let api = listed["runbooks"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {listed}"))
        .clone();

    let runbooks = app.runbooks_dir().display().to_string();
    let env = [("RUNBOOK_WORKER__RUNBOOKS__DIR", runbooks.as_str())];
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run_binary(app.runbooks_dir().as_path(), args, &env);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let validated = json(&["validate", "--output", "json"]);
    let validate = validated["runbooks"]
        .as_array()
        .and_then(|all| all.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {validated}"))
        .clone();
    let next = json(&["next", name, "--output", "json"]);
    app.stop().await;

    // The same fact under the same key in all three, with the same value (the API shows
    // the schedule as one string).
    let schedule = |v: &serde_json::Value| match &v["schedule"] {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        other => other.as_str().unwrap_or_default().to_string(),
    };
    for (source, doc) in [("validate", &validate), ("next", &next), ("api", &api)] {
        for key in ["name", "schedule", "time_zone", "enabled", "file"] {
            assert!(
                doc.get(key).is_some(),
                "{source} lacks {key}: {:?}",
                keys(doc)
            );
        }
        assert_eq!(doc["name"], name, "{source}");
        assert_eq!(doc["time_zone"], "Europe/London", "{source}");
        assert_eq!(doc["enabled"], true, "{source}");
        assert_eq!(schedule(doc), "0 0 6 * * 1", "{source}: {doc}");
    }
    // The first names stay for existing consumers.
    assert_eq!(validate["timezone"], validate["time_zone"]);
    assert_eq!(validate["schedules"], validate["schedule"]);
    assert_eq!(next["runbook"], next["name"]);
}

/// `run` on a real terminal (a pseudo-terminal from util-linux `script`): bars and a plan
/// summary instead of one line per planned write.
#[test]
fn a_dry_run_on_a_terminal_shows_bars_and_a_plan_summary() {
    let (dir, env) = simulated_workspace();
    let command = format!(
        "{} run shared-mailbox-hygiene --dry-run --simulate",
        crate::support::binary()
    );
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm")
        .env("RUNBOOK_WORKER__LOG__LEVEL", "warn");
    for (k, v) in &env {
        script.env(k, v);
    }
    let out = script
        .output()
        .expect("util-linux `script` runs a command on a pseudo-terminal");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("step 2/4 quota (Set-Mailbox for each of shared)"),
        "{text}"
    );
    assert!(
        text.contains("writes a real run would make, by cmdlet:"),
        "{text}"
    );
    assert!(
        text.contains("the full plan: `runbook-worker job "),
        "{text}"
    );
    // Not one line per planned write (`  plan: Set-CASMailbox -Identity …`).
    assert!(!text.contains("plan: Set-"), "{text}");

    // The same command on a pipe keeps one line per planned write.
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let piped = run_binary(
        dir.path(),
        &["run", "shared-mailbox-hygiene", "--dry-run", "--simulate"],
        &env,
    );
    let lines = stdout(&piped);
    assert!(lines.contains("  plan: Set-CASMailbox "), "{lines}");
    assert!(!lines.contains("by cmdlet"), "{lines}");
}

/// The rows of the Markdown table under `heading` in `text`: cells of each row, trimmed.
fn table_rows(text: &str, heading: &str) -> Vec<Vec<String>> {
    let section = text
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?}"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn every_exit_status_of_every_command_is_in_the_exit_codes_table() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |path: &str| std::fs::read_to_string(format!("{root}/{path}")).unwrap();
    let doc = read("docs/cli.md");
    let statuses = table_rows(&doc, "## Exit codes");
    let per_command = table_rows(&doc, "Each command's statuses:");

    // Every EXIT_* constant of the CLI, with its value, read from the source.
    let cli = read("src/cli/mod.rs");
    let constants: Vec<(String, u8)> = cli
        .lines()
        .filter_map(|l| l.strip_prefix("pub const EXIT_"))
        .map(|rest| {
            let (name, value) = rest
                .split_once(": u8 = ")
                .expect("pub const EXIT_X: u8 = N;");
            (
                format!("EXIT_{name}"),
                value.trim_end_matches(';').parse().unwrap(),
            )
        })
        .collect();
    assert!(constants.len() >= 5, "{constants:?}");

    let documented = |command: &str, status: u8| -> bool {
        per_command.iter().any(|row| {
            row[0].contains(&format!("`{command}"))
                && row[1].split(", ").any(|s| s == status.to_string())
        })
    };
    for (name, value) in &constants {
        assert!(
            statuses.iter().any(|row| row[0] == value.to_string()),
            "{name} = {value} is not in the exit codes table of docs/cli.md"
        );
    }
    // Each command's own file: the statuses it returns are listed for it. Every command
    // exits 64 on a usage mistake and 1 on an error it returns.
    let files = std::fs::read_dir(format!("{root}/src/cli")).unwrap();
    for file in files {
        let path = file.unwrap().path();
        let command = path.file_stem().unwrap().to_str().unwrap().to_string();
        if command == "mod" {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            !source.contains("ExitCode::from(0")
                && !source.contains("ExitCode::from(1")
                && !source
                    .split("ExitCode::from(")
                    .skip(1)
                    .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit())),
            "{command}: an exit status must be a named EXIT_* constant"
        );
        let mut used = vec![1u8, 64];
        if source.contains("ExitCode::SUCCESS") {
            used.push(0);
        }
        for (name, value) in &constants {
            if source.contains(name.as_str()) {
                used.push(*value);
            }
        }
        for status in used {
            assert!(
                documented(&command, status),
                "`{command}` can exit {status}, which docs/cli.md's table does not list for it"
            );
        }
    }
    // And the table's claims hold at the command line.
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(dir.path(), &["completions", "nosuchshell"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}
