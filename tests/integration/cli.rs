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
fn a_missing_config_file_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_binary(dir.path(), &["--config", "missing.toml", "token"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
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
