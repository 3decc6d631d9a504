//! The invariants of ARCHITECTURE.md, checked by reading `src/`: which module may know what.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its path relative to the crate and its code: comment
/// lines and everything from a `#[cfg(test)]` line on (unit tests may use any fixture) are
/// left out.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|path| !path.ends_with("tests.rs"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let code: Vec<&str> = text
                .lines()
                .take_while(|line| line.trim() != "#[cfg(test)]")
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (relative, code.join("\n"))
        })
        .collect()
}

/// Files whose code contains `needle` but whose path starts with none of `allowed`.
fn offenders(needle: &str, allowed: &[&str]) -> Vec<String> {
    let files = sources();
    assert!(files.len() > 20, "src/ was read ({} files)", files.len());
    files
        .into_iter()
        .filter(|(path, code)| {
            code.contains(needle) && !allowed.iter().any(|prefix| path.starts_with(prefix))
        })
        .map(|(path, _)| path)
        .collect()
}

#[test]
fn only_http_and_the_simulators_know_axum() {
    assert_eq!(
        offenders("axum", &["src/http/", "src/simulator/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_exchange_and_its_simulator_know_the_invokecommand_json() {
    assert_eq!(
        offenders("CmdletInput", &["src/exchange/", "src/simulator/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_identity_and_its_simulator_know_token_endpoints() {
    for endpoint in ["/metadata/identity/oauth2", "oauth2/v2.0/token"] {
        assert_eq!(
            offenders(endpoint, &["src/identity/", "src/simulator/"]),
            Vec::<String>::new(),
            "{endpoint}"
        );
    }
}

#[test]
fn only_the_binary_reads_the_process_environment() {
    for call in ["env::var(", "env::vars(", "env::var_os(", "env::set_var("] {
        assert_eq!(
            offenders(call, &["src/cli/", "src/main.rs"]),
            Vec::<String>::new(),
            "{call}"
        );
    }
}

#[test]
fn identity_knows_nothing_of_exchange_and_exchange_nothing_of_runbooks() {
    assert_eq!(
        offenders("crate::exchange", &["src/exchange/"])
            .into_iter()
            .filter(|p| p.starts_with("src/identity/"))
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
    for layer in ["crate::runbook", "crate::executor", "crate::scheduler"] {
        assert_eq!(
            offenders(layer, &[])
                .into_iter()
                .filter(|p| p.starts_with("src/exchange/") || p.starts_with("src/identity/"))
                .collect::<Vec<_>>(),
            Vec::<String>::new(),
            "{layer}"
        );
    }
}
