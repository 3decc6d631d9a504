//! Helpers for runbook tests: the shipped examples and temporary runbook folders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The smallest valid runbook.
pub const MINIMAL: &str = "[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n";

/// The repository's `runbooks/` folder (the shipped examples and the schema).
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks")
}

/// The checked-in JSON Schema.
pub fn schema_path() -> PathBuf {
    examples_dir().join("runbook.schema.json")
}

/// Writes `text` as `dir/name` and returns the path.
pub fn write_runbook(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write runbook");
    path
}

/// The example runbook files, sorted.
pub fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("read runbooks/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}
