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
