//! Loading a folder of runbook files: the only I/O of this module.
//!
//! Returns what loaded and every error, never one or the other: a bad file must not keep
//! the good ones from running. The worker's hot reload calls [`load_folder`] again after
//! the folder changes and decides what to keep from the previous catalog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::PolicySettings;
use super::error::{ErrorKind, ValidationError};
use super::model::Runbook;
use super::parse::parse_runbook;
use super::policy::CmdletPolicy;
use crate::bounded_file::BoundedReadError;

/// The largest runbook file read, in bytes (1 MiB): the biggest real runbook is a few KiB.
pub const MAX_RUNBOOK_BYTES: u64 = 1024 * 1024;
/// Errors reported per file before the rest are summed up in one "and N more" entry.
pub const MAX_ERRORS_PER_FILE: usize = 50;

/// The valid runbooks of a folder, by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    runbooks: BTreeMap<String, Arc<Runbook>>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Arc<Runbook>> {
        self.runbooks.get(name)
    }

    /// The runbooks in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Runbook>> {
        self.runbooks.values()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.runbooks.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.runbooks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runbooks.is_empty()
    }

    /// Takes out the runbooks whose `notify` names a target `known` (the names of
    /// `[[notify.targets]]`) does not define, with an error naming the file, the target
    /// and the known ones: a typo must not silence a runbook's failures.
    pub fn check_notify_targets(&mut self, known: &[String], errors: &mut Vec<ValidationError>) {
        self.runbooks.retain(|_, runbook| {
            let unknown: Vec<&String> = runbook
                .notify
                .iter()
                .filter(|name| !known.contains(name))
                .collect();
            for name in &unknown {
                let defined = if known.is_empty() {
                    "none are defined".to_string()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                let mut error = ValidationError::whole_file(
                    runbook.file.clone(),
                    ErrorKind::Reference,
                    format!(
                        "\"notify\" names {name:?}, which no [[notify.targets]] entry in the settings defines ({defined})"
                    ),
                );
                error.key = "notify".to_string();
                errors.push(error);
            }
            unknown.is_empty()
        });
    }

    /// A catalog of these runbooks (a single file checked on its own).
    pub fn of(runbooks: impl IntoIterator<Item = Runbook>) -> Catalog {
        let mut catalog = Catalog::default();
        for runbook in runbooks {
            catalog.insert(runbook);
        }
        catalog
    }

    fn insert(&mut self, runbook: Runbook) {
        self.runbooks
            .insert(runbook.name.clone(), Arc::new(runbook));
    }
}

/// Whether a path in the runbooks folder is a runbook file: a `.toml` file whose name is
/// not hidden (`.x.toml`) and not an editor's or a copy's temporary (`x.toml~`,
/// `x.toml.swp`, `x.toml.tmp`, `#x.toml#`). Hot reload uses the same test to ignore events
/// on such files.
pub fn is_runbook_file(path: &Path) -> bool {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let temporary = file_name.starts_with('.')
        || file_name.starts_with('#')
        || file_name.starts_with("~$")
        || file_name.ends_with('~');
    !temporary
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

/// The runbook name of a file: its stem.
pub fn runbook_name(path: &Path) -> Option<&str> {
    path.file_stem().and_then(|s| s.to_str())
}

/// Reads, parses and validates one file; its name is the file stem.
pub fn load_file(path: &Path, policy: &PolicySettings) -> Result<Runbook, Vec<ValidationError>> {
    let display = path.display().to_string();
    let Some(name) = runbook_name(path) else {
        return Err(vec![ValidationError::whole_file(
            display,
            ErrorKind::Value,
            "the file name is not valid UTF-8; rename it",
        )]);
    };
    let bytes = crate::bounded_file::read(path, MAX_RUNBOOK_BYTES).map_err(|e| {
        let message = match e {
            BoundedReadError::Io(e) => format!("cannot read the file: {e}"),
            other => other.to_string(),
        };
        vec![ValidationError::whole_file(
            &display,
            ErrorKind::Io,
            message,
        )]
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        vec![ValidationError::whole_file(
            &display,
            ErrorKind::Io,
            format!(
                "the file is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ),
        )]
    })?;
    parse_runbook(name, &display, &text, &CmdletPolicy::new(policy))
        .map_err(|errors| cap_errors(errors, &display))
}

/// Keeps the first [`MAX_ERRORS_PER_FILE`] errors (they are sorted by position) and says
/// how many more there were: a file of thousands of typos must not fill memory or logs.
fn cap_errors(mut errors: Vec<ValidationError>, display: &str) -> Vec<ValidationError> {
    if errors.len() > MAX_ERRORS_PER_FILE {
        let more = errors.len() - MAX_ERRORS_PER_FILE;
        errors.truncate(MAX_ERRORS_PER_FILE);
        errors.push(ValidationError::whole_file(
            display,
            errors[0].kind,
            format!(
                "and {more} more error{}; fix the ones above first",
                if more == 1 { "" } else { "s" }
            ),
        ));
    }
    errors
}

/// Loads every runbook file of `dir` (not its subfolders), in name order. Names are
/// unique ignoring case (the API and the dashboard treat them so); two files whose stems
/// differ only in case are both refused.
pub fn load_folder(dir: &Path, policy: &PolicySettings) -> (Catalog, Vec<ValidationError>) {
    let mut catalog = Catalog::default();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ValidationError::whole_file(
                dir.display().to_string(),
                ErrorKind::Io,
                format!("cannot read the runbooks folder: {e} (check [runbooks] dir)"),
            ));
            return (catalog, errors);
        }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                if is_runbook_file(&path) && path.is_file() {
                    files.push(path);
                }
            }
            Err(e) => errors.push(ValidationError::whole_file(
                dir.display().to_string(),
                ErrorKind::Io,
                format!("cannot list the runbooks folder: {e}"),
            )),
        }
    }
    files.sort();

    let mut by_lower_name: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for path in &files {
        if let Some(name) = runbook_name(path) {
            by_lower_name
                .entry(name.to_lowercase())
                .or_default()
                .push(path);
        }
    }
    for path in &files {
        let clashes: Vec<String> = runbook_name(path)
            .and_then(|name| by_lower_name.get(&name.to_lowercase()))
            .map(|paths| {
                paths
                    .iter()
                    .filter(|p| **p != path)
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !clashes.is_empty() {
            errors.push(ValidationError::whole_file(
                path.display().to_string(),
                ErrorKind::Duplicate,
                format!(
                    "runbook names must be unique ignoring case, and {} has the same name; rename one of them",
                    clashes.join(", ")
                ),
            ));
            continue;
        }
        match load_file(path, policy) {
            Ok(runbook) => catalog.insert(runbook),
            Err(mut file_errors) => errors.append(&mut file_errors),
        }
    }
    (catalog, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n";

    #[test]
    fn a_runbook_naming_an_unknown_notify_target_is_refused_with_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("good.toml", &format!("notify = [\"ops-mail\"]\n{VALID}"));
        write("typo.toml", &format!("notify = [\"ops-mial\"]\n{VALID}"));
        write("default.toml", VALID);
        let (mut catalog, mut errors) = load_folder(dir.path(), &PolicySettings::default());
        assert_eq!(errors, Vec::new());
        let known = vec!["ops-mail".to_string(), "teams-ops".to_string()];
        catalog.check_notify_targets(&known, &mut errors);
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["default", "good"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let text = errors[0].to_string();
        assert!(text.contains("typo.toml"), "{text}");
        assert!(text.contains("\"ops-mial\""), "{text}");
        assert!(text.contains("defined: ops-mail, teams-ops"), "{text}");
        assert_eq!(errors[0].key, "notify");
    }

    #[test]
    fn temporary_and_foreign_files_are_not_runbooks() {
        let cases = [
            ("archive.toml", true),
            ("Archive.TOML", true),
            ("dir/archive.toml", true),
            (".archive.toml", false),
            (".archive.toml.swp", false),
            ("archive.toml.swp", false),
            ("archive.toml~", false),
            ("archive.toml.tmp", false),
            ("#archive.toml#", false),
            ("~$archive.toml", false),
            ("archive.json", false),
            ("runbook.schema.json", false),
            ("README.md", false),
            ("archive", false),
        ];
        for (name, expected) in cases {
            assert_eq!(is_runbook_file(Path::new(name)), expected, "{name}");
        }
    }

    #[test]
    fn a_folder_loads_valid_files_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("good.toml", VALID);
        write("bad.toml", "[[steps]]\nname = \"x\"\n");
        write("good.toml.swp", "garbage");
        write(".hidden.toml", "garbage");
        write("notes.txt", "garbage");
        std::fs::create_dir(dir.path().join("sub.toml")).unwrap();

        let (catalog, errors) = load_folder(dir.path(), &PolicySettings::default());
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["good"]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].file.ends_with("bad.toml"), "{errors:?}");
        assert!(
            errors[0].message.contains("missing key \"cmdlet\""),
            "{errors:?}"
        );
        let good = catalog.get("good").unwrap();
        assert_eq!(good.hash.len(), 64);
        assert!(good.hash.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn names_differing_only_in_case_are_both_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.toml"), VALID).unwrap();
        std::fs::write(dir.path().join("Report.toml"), VALID).unwrap();
        std::fs::write(dir.path().join("other.toml"), VALID).unwrap();
        let (catalog, errors) = load_folder(dir.path(), &PolicySettings::default());
        assert_eq!(catalog.names().collect::<Vec<_>>(), ["other"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors.iter().all(|e| e.kind == ErrorKind::Duplicate),
            "{errors:?}"
        );
    }

    #[test]
    fn a_missing_folder_is_one_error() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, errors) = load_folder(&dir.path().join("nope"), &PolicySettings::default());
        assert!(catalog.is_empty());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].kind, ErrorKind::Io);
        assert!(
            errors[0]
                .to_string()
                .contains("cannot read the runbooks folder"),
            "{errors:?}"
        );
    }

    #[test]
    fn the_hash_changes_with_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, VALID).unwrap();
        let first = load_file(&path, &PolicySettings::default()).unwrap().hash;
        std::fs::write(&path, format!("description = \"x\"\n{VALID}")).unwrap();
        let second = load_file(&path, &PolicySettings::default()).unwrap().hash;
        assert_ne!(first, second);
    }

    #[test]
    fn a_file_over_the_size_cap_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.toml");
        let line = "unknown_key = 1\n";
        let text = line.repeat(MAX_RUNBOOK_BYTES as usize / line.len() + 1);
        std::fs::write(&path, text).unwrap();
        let errors = load_file(&path, &PolicySettings::default()).unwrap_err();
        assert_eq!(errors.len(), 1, "{:?}", &errors[..2]);
        assert_eq!(errors[0].kind, ErrorKind::Io);
        assert!(
            errors[0].message.contains("1048576-byte limit"),
            "{errors:?}"
        );
    }

    #[test]
    fn errors_per_file_are_capped_with_a_count_of_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typos.toml");
        let mut text = String::from(VALID);
        for i in 0..200 {
            text.push_str(&format!(
                "[[steps]]\nname = \"s{i}\"\ncmdlet = \"Get-Mailbox\"\nbogus{i} = 1\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
        let errors = load_file(&path, &PolicySettings::default()).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS_PER_FILE + 1);
        let last = errors.last().unwrap().to_string();
        assert!(last.contains("and 150 more errors"), "{last}");
        assert!(errors[0].message.contains("bogus0"), "{:?}", errors[0]);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        std::fs::write(&path, b"description = \"\xff\"\n").unwrap();
        let errors = load_file(&path, &PolicySettings::default()).unwrap_err();
        assert!(errors[0].message.contains("not UTF-8"), "{errors:?}");
    }
}
