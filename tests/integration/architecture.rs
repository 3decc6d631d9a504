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

/// The top-level modules a file's code names as `crate::module`, also inside a grouped
/// `use crate::{a, b::c}`.
fn imported_modules(code: &str) -> std::collections::BTreeSet<String> {
    let ident = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = std::collections::BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The top-level items of the group: `a`, `b::c`, `d::{e, f}`.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            out.insert(name);
                        }
                        item_start = false;
                    }
                    _ => {}
                }
            }
            continue;
        }
        let name = ident(rest);
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Whether `code` names the module `name` as a path segment (`super::name::X`,
/// `crate::scheduler::name`, `use super::{name, …}`, `name::X`), not as a variable or field.
fn names_module(code: &str, name: &str) -> bool {
    let bytes = code.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    code.match_indices(name).any(|(at, _)| {
        let end = at + name.len();
        if (at > 0 && is_ident(bytes[at - 1])) || bytes.get(end).copied().is_some_and(is_ident) {
            return false;
        }
        let before = code[..at].trim_end();
        let after = code[end..].trim_start();
        after.starts_with("::")
            || before.ends_with("::")
            || ((before.ends_with('{') || before.ends_with(','))
                && (after.starts_with(',') || after.starts_with('}')))
    })
}

/// Imports of a module from a layer above the importing file's, as messages.
fn upward_imports(files: &[(String, String)]) -> Vec<String> {
    let mut upward = Vec::new();
    for (path, code) in files {
        let Some(own) = module_of(path).and_then(layer_of) else {
            continue;
        };
        for imported in imported_modules(code) {
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
    upward
}

/// Imports by the pure core of anything outside it (an adapter, orchestration, an edge).
fn impure_core_imports(files: &[(String, String)]) -> Vec<String> {
    let core = LAYERS[0].1;
    let mut out = Vec::new();
    for (path, code) in files {
        if !module_of(path).is_some_and(|m| core.contains(&m)) {
            continue;
        }
        for imported in imported_modules(code) {
            if layer_of(&imported).is_some() && !core.contains(&imported.as_str()) {
                out.push(format!("{path} imports {imported}"));
            }
        }
    }
    out
}

/// Files of the scheduler other than its `mod.rs` that name the loop (`engine`): the loop
/// drives jobs, sweeps and watches, and none of them may call back into it.
fn scheduler_files_naming_the_loop(files: &[(String, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(path, _)| path.starts_with("src/scheduler/"))
        .filter(|(path, _)| path != "src/scheduler/mod.rs" && path != "src/scheduler/engine.rs")
        .filter(|(_, code)| names_module(code, "engine"))
        .map(|(path, _)| path.clone())
        .collect()
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
    assert_eq!(upward_imports(&sources()), Vec::<String>::new());
}

#[test]
fn the_pure_core_imports_nothing_outside_it() {
    assert_eq!(impure_core_imports(&sources()), Vec::<String>::new());
}

#[test]
fn only_the_scheduler_root_knows_its_loop() {
    assert_eq!(
        scheduler_files_naming_the_loop(&sources()),
        Vec::<String>::new()
    );
}

/// A synthetic source tree: (path, code) pairs.
fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect()
}

#[test]
fn the_layer_check_sees_an_upward_import() {
    // The check above must be able to fail: a runbook file naming the scheduler is upward,
    // also inside a grouped import.
    let imported =
        imported_modules("use crate::scheduler::Scheduler;\nfn f() { crate::timing::x() }");
    assert!(imported.contains("scheduler") && imported.contains("timing"));
    let grouped = imported_modules("use crate::{\n    clock::Clock,\n    executor::{a, b},\n};");
    assert_eq!(
        grouped.into_iter().collect::<Vec<_>>(),
        vec!["clock".to_string(), "executor".to_string()]
    );
    let files = tree(&[
        (
            "src/runbook/model.rs",
            "use crate::{duration::D, scheduler::S};",
        ),
        ("src/scheduler/mod.rs", "use crate::runbook::Runbook;"),
        ("src/cli/run.rs", "use crate::app::App;"),
    ]);
    assert_eq!(
        upward_imports(&files),
        vec!["src/runbook/model.rs (runbook model) imports scheduler (orchestration)".to_string()]
    );
}

#[test]
fn the_core_check_sees_an_adapter_or_edge_import() {
    let files = tree(&[
        (
            "src/timing/schedule.rs",
            "use crate::duration::HumanDuration;",
        ),
        ("src/clock.rs", "use crate::telemetry::x;"),
        ("src/duration.rs", "fn f() { crate::settings::load() }"),
        ("src/identity/mod.rs", "use crate::clock::Clock;"),
    ]);
    assert_eq!(
        impure_core_imports(&files),
        vec![
            "src/clock.rs imports telemetry".to_string(),
            "src/duration.rs imports settings".to_string()
        ]
    );
}

#[test]
fn the_loop_check_sees_every_way_of_naming_the_engine() {
    for code in [
        "use super::engine::Event;",
        "use crate::scheduler::engine;",
        "use super::{handle::Shared, engine};",
        "use super::{\n    engine,\n    plan::Plan,\n};",
        "fn f() { engine::window() }",
    ] {
        let files = tree(&[("src/scheduler/job.rs", code)]);
        assert_eq!(
            scheduler_files_naming_the_loop(&files),
            vec!["src/scheduler/job.rs".to_string()],
            "{code}"
        );
    }
    // A variable, a field or a word in a string is not the module; mod.rs may name it.
    let files = tree(&[
        (
            "src/scheduler/job.rs",
            "let engine = 1; self.engine.run(); f(\"engine\");",
        ),
        (
            "src/scheduler/mod.rs",
            "pub mod engine;\npub use engine::Scheduler;",
        ),
    ]);
    assert_eq!(
        scheduler_files_naming_the_loop(&files),
        Vec::<String>::new()
    );
}
