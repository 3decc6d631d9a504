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
}

#[test]
fn a_mistake_on_the_command_line_exits_64_not_a_job_status() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["run"][..],
        &["run", "x", "--no-such-flag"],
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
    let run = [
        "run",
        "mailboxes-near-quota",
        "--dry-run",
        "--simulate",
        "--output",
        "json",
    ];
    let out = run_binary(dir.path(), &run, &env);
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
