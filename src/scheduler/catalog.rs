//! The worker's view of the runbooks folder across reloads: which version of each runbook
//! is in force, and which files fail validation.
//!
//! Pure: [`LiveCatalog::reload`] takes the previous view and a fresh
//! [`crate::runbook::load_folder`] result and returns the next view. The rules, which keep a
//! bad edit from ever taking anything down:
//!
//! - a valid file is in force as loaded (new, changed or unchanged);
//! - a file that fails validation keeps its last good version in force, with its errors
//!   attached until it is fixed; a file that never loaded is listed as invalid and nothing
//!   of it runs;
//! - a runbook whose file is gone (and has no errors) leaves the catalog, which stops its
//!   schedule; jobs already running hold their own reference and are not touched;
//! - when the folder itself cannot be read, every runbook stays as it was.
//!
//! Knows nothing of timers, jobs or the file watcher.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::runbook::{Catalog, ErrorKind, Runbook, ValidationError, runbook_name};

/// One runbook in force, with the errors of its file when the file on disk has since
/// become invalid.
#[derive(Clone, Debug)]
pub struct LiveRunbook {
    pub runbook: Arc<Runbook>,
    /// Empty while the file on disk is the version in force.
    pub errors: Vec<ValidationError>,
}

/// What a reload changed, by runbook name, for the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Runbooks whose file fails validation now and whose last good version stays in force.
    pub kept_last_good: Vec<String>,
    /// Files that fail validation and have no version in force.
    pub invalid: Vec<String>,
}

impl ReloadSummary {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.kept_last_good.is_empty()
            && self.invalid.is_empty()
    }
}

/// The runbooks in force and the files that fail validation.
#[derive(Clone, Debug, Default)]
pub struct LiveCatalog {
    runbooks: BTreeMap<String, LiveRunbook>,
    /// Files with no version in force, by file name as the loader gave it.
    invalid: BTreeMap<String, Vec<ValidationError>>,
    /// The folder could not be read at the last reload.
    folder_error: Option<ValidationError>,
}

impl LiveCatalog {
    /// The first view of a folder.
    pub fn first(dir: &Path, loaded: Catalog, errors: Vec<ValidationError>) -> LiveCatalog {
        LiveCatalog::default().reload(dir, loaded, errors).0
    }

    /// The view after loading `dir` again (see the module documentation for the rules).
    pub fn reload(
        &self,
        dir: &Path,
        loaded: Catalog,
        errors: Vec<ValidationError>,
    ) -> (LiveCatalog, ReloadSummary) {
        let folder = dir.display().to_string();
        let (folder_errors, file_errors): (Vec<_>, Vec<_>) = errors
            .into_iter()
            .partition(|e| e.file == folder && e.kind == ErrorKind::Io);
        if let Some(folder_error) = folder_errors.into_iter().next() {
            // An unreadable folder (unmounted volume, permissions) says nothing about the
            // runbooks: keep every one of them.
            let mut next = self.clone();
            next.folder_error = Some(folder_error);
            return (next, ReloadSummary::default());
        }

        let mut summary = ReloadSummary::default();
        let mut runbooks = BTreeMap::new();
        for runbook in loaded.iter() {
            let name = runbook.name.clone();
            match self.runbooks.get(&name) {
                None => summary.added.push(name.clone()),
                Some(previous) if previous.runbook.hash != runbook.hash => {
                    summary.changed.push(name.clone())
                }
                Some(_) => {}
            }
            // Keep the previous `Arc` for an unchanged file, so that callers can tell
            // "nothing changed" by pointer.
            let runbook = match self.runbooks.get(&name) {
                Some(previous) if previous.runbook.hash == runbook.hash => previous.runbook.clone(),
                _ => runbook.clone(),
            };
            runbooks.insert(
                name,
                LiveRunbook {
                    runbook,
                    errors: Vec::new(),
                },
            );
        }

        let mut by_file: BTreeMap<String, Vec<ValidationError>> = BTreeMap::new();
        for error in file_errors {
            by_file.entry(error.file.clone()).or_default().push(error);
        }
        let mut invalid = BTreeMap::new();
        for (file, errors) in by_file {
            let name = runbook_name(Path::new(&file)).map(str::to_string);
            let last_good = name
                .as_ref()
                .filter(|n| !runbooks.contains_key(*n))
                .and_then(|n| self.runbooks.get(n));
            match (name, last_good) {
                (Some(name), Some(previous)) => {
                    summary.kept_last_good.push(name.clone());
                    runbooks.insert(
                        name,
                        LiveRunbook {
                            runbook: previous.runbook.clone(),
                            errors,
                        },
                    );
                }
                _ => {
                    summary.invalid.push(file.clone());
                    invalid.insert(file, errors);
                }
            }
        }

        summary.removed = self
            .runbooks
            .keys()
            .filter(|name| !runbooks.contains_key(*name))
            .cloned()
            .collect();
        let next = LiveCatalog {
            runbooks,
            invalid,
            folder_error: None,
        };
        (next, summary)
    }

    pub fn get(&self, name: &str) -> Option<&LiveRunbook> {
        self.runbooks.get(name)
    }

    /// The runbooks in force, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &LiveRunbook> {
        self.runbooks.values()
    }

    pub fn len(&self) -> usize {
        self.runbooks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runbooks.is_empty()
    }

    /// Files that fail validation and have no version in force, with their errors.
    pub fn invalid_files(&self) -> impl Iterator<Item = (&str, &[ValidationError])> {
        self.invalid.iter().map(|(f, e)| (f.as_str(), e.as_slice()))
    }

    /// Why the folder could not be read at the last reload, if it could not.
    pub fn folder_error(&self) -> Option<&ValidationError> {
        self.folder_error.as_ref()
    }

    /// Files failing validation now: never loaded, or with a last good version in force.
    pub fn invalid_count(&self) -> usize {
        self.invalid.len()
            + self
                .runbooks
                .values()
                .filter(|r| !r.errors.is_empty())
                .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{PolicySettings, load_folder};

    const VALID_V1: &str = "[[steps]]\nname = \"find\"\ncmdlet = \"Get-Mailbox\"\n";
    const VALID_V2: &str = "[[steps]]\nname = \"find\"\ncmdlet = \"Get-Recipient\"\n";
    const INVALID: &str = "[[steps]]\nname = \"find\"\ncmdlet = 42\n";

    /// Writes `files` (name, text or `None` to delete) and reloads.
    fn step(
        dir: &Path,
        previous: &LiveCatalog,
        files: &[(&str, Option<&str>)],
    ) -> (LiveCatalog, ReloadSummary) {
        for (name, text) in files {
            let path = dir.join(name);
            match text {
                Some(text) => std::fs::write(&path, text).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
        }
        let (loaded, errors) = load_folder(dir, &PolicySettings::default());
        previous.reload(dir, loaded, errors)
    }

    fn cmdlet(catalog: &LiveCatalog, name: &str) -> Option<String> {
        catalog.get(name).map(|r| r.runbook.steps[0].cmdlet.clone())
    }

    #[test]
    fn reloads_keep_the_last_good_version_and_drop_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let empty = LiveCatalog::default();

        // (files written, expected cmdlet of "a", errors on "a", invalid files, summary)
        let (c1, s1) = step(d, &empty, &[("a.toml", Some(VALID_V1))]);
        assert_eq!(s1.added, ["a"]);
        assert_eq!(cmdlet(&c1, "a").as_deref(), Some("Get-Mailbox"));

        let (c2, s2) = step(d, &c1, &[("a.toml", Some(INVALID))]);
        assert_eq!(s2.kept_last_good, ["a"]);
        assert_eq!(cmdlet(&c2, "a").as_deref(), Some("Get-Mailbox"));
        let errors = &c2.get("a").unwrap().errors;
        assert!(!errors.is_empty());
        assert!(errors[0].line > 0, "{errors:?}");
        assert_eq!(c2.invalid_count(), 1);

        let (c3, s3) = step(d, &c2, &[("a.toml", Some(VALID_V2))]);
        assert_eq!(s3.changed, ["a"]);
        assert_eq!(cmdlet(&c3, "a").as_deref(), Some("Get-Recipient"));
        assert!(c3.get("a").unwrap().errors.is_empty());
        assert_eq!(c3.invalid_count(), 0);

        let (c4, s4) = step(d, &c3, &[("b.toml", Some(INVALID))]);
        assert_eq!(s4.invalid.len(), 1);
        assert!(c4.get("b").is_none());
        assert_eq!(c4.invalid_files().count(), 1);

        let (c5, s5) = step(d, &c4, &[("a.toml", None), ("b.toml", None)]);
        assert_eq!(s5.removed, ["a"]);
        assert!(c5.is_empty());
        assert_eq!(c5.invalid_count(), 0);
    }

    #[test]
    fn an_unchanged_file_keeps_its_runbook_instance() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = step(
            dir.path(),
            &LiveCatalog::default(),
            &[("a.toml", Some(VALID_V1))],
        );
        let (c2, summary) = step(dir.path(), &c1, &[]);
        assert!(summary.is_empty(), "{summary:?}");
        assert!(Arc::ptr_eq(
            &c1.get("a").unwrap().runbook,
            &c2.get("a").unwrap().runbook
        ));
    }

    #[test]
    fn an_unreadable_folder_keeps_every_runbook() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, _) = step(
            dir.path(),
            &LiveCatalog::default(),
            &[("a.toml", Some(VALID_V1))],
        );
        let gone = dir.path().join("gone");
        let (loaded, errors) = load_folder(&gone, &PolicySettings::default());
        let (c2, summary) = c1.reload(&gone, loaded, errors);
        assert!(summary.is_empty());
        assert!(c2.get("a").is_some());
        assert!(c2.folder_error().is_some());
    }
}
