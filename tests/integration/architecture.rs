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

/// The library's modules by layer, lowest first. A module may import modules of its own
/// layer or below, never above: the pure core knows no adapter, adapters know no
/// orchestration, orchestration knows no edge. (Within a layer the finer rules above hold,
/// e.g. identity knows nothing of exchange.)
const LAYERS: &[(&str, &[&str])] = &[
    (
        "pure core",
        &["duration", "base_url", "clock", "timing", "bounded_file"],
    ),
    (
        "adapters",
        &[
            "identity",
            "exchange",
            "graph",
            "keyvault",
            "coordination",
            "history",
            "telemetry",
            "notify",
        ],
    ),
    ("runbook model", &["runbook"]),
    ("orchestration", &["executor", "scheduler"]),
    ("edges", &["http", "doctor", "settings", "simulator", "app"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`src/app/mod.rs` → `app`).
fn module_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    Some(first.strip_suffix(".rs").unwrap_or(first))
}

/// The top-level modules a file's code names as `crate::module`.
fn imported_modules(code: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_library_module_has_a_layer() {
    let unplaced: Vec<String> = sources()
        .iter()
        .filter_map(|(path, _)| module_of(path))
        .filter(|m| !["lib", "main", "cli"].contains(m) && layer_of(m).is_none())
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(unplaced, Vec::<String>::new(), "add them to LAYERS");
}

#[test]
fn no_module_imports_one_from_a_layer_above_it() {
    let mut upward = Vec::new();
    for (path, code) in sources() {
        let Some(module) = module_of(&path) else {
            continue;
        };
        let Some(own) = layer_of(module) else {
            continue;
        };
        for imported in imported_modules(&code) {
            if let Some(theirs) = layer_of(&imported)
                && theirs > own
            {
                upward.push(format!(
                    "{path} ({}) imports {imported} ({})",
                    LAYERS[own].0, LAYERS[theirs].0
                ));
            }
        }
    }
    assert_eq!(upward, Vec::<String>::new());
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    // The check above must be able to fail: a runbook file naming the scheduler is upward.
    let imported =
        imported_modules("use crate::scheduler::Scheduler;\nfn f() { crate::timing::x() }");
    assert!(imported.contains("scheduler") && imported.contains("timing"));
    assert!(layer_of("scheduler") > layer_of("runbook"));
    assert!(layer_of("timing") < layer_of("runbook"));
}
