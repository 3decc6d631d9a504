//! Watching the runbooks folder: file-system events, debounced, become one reload request
//! to the scheduler (which loads the folder again off its loop).
//!
//! Debouncing (notify-debouncer-full) waits until a file has been quiet for the debounce
//! time, so an editor's or `cp`'s partial writes produce one reload, not one per write.
//! Events on names that are not runbook files — editor swap and backup files, `.tmp`
//! files, dot files — are ignored (the loader ignores those names too), as are plain reads
//! (the loader's own). Kubernetes mounts a ConfigMap through a `..data` symlink that is
//! swapped atomically; a change of that link also reloads.

use std::path::Path;
use std::time::Duration;

use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use crate::runbook::is_runbook_file;

use super::handle::SchedulerHandle;

/// How long a file must be quiet before a change counts.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(300);

/// The name of the symlink Kubernetes swaps when a mounted ConfigMap changes.
const CONFIGMAP_LINK: &str = "..data";

/// Why the folder cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "cannot watch the runbooks folder {dir} for changes (check that it exists and is readable; SIGHUP still reloads it)"
    )]
    Watch {
        dir: String,
        #[source]
        source: notify_debouncer_full::notify::Error,
    },
}

/// Watches the folder while alive; dropping it stops the watcher.
pub struct FolderWatcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
}

impl std::fmt::Debug for FolderWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatcher").finish_non_exhaustive()
    }
}

/// Starts watching `dir` (not its subfolders) and asks `scheduler` to reload after each
/// quiet period that followed a change to a runbook file.
pub fn watch_folder(
    dir: &Path,
    scheduler: SchedulerHandle,
    debounce: Duration,
) -> Result<FolderWatcher, WatchError> {
    let watch_error = |source| WatchError::Watch {
        dir: dir.display().to_string(),
        source,
    };
    // The tick must be shorter than the debounce for the quiet period to be measured
    // precisely; a quarter keeps the delay within 25 % of it.
    let tick = (debounce / 4).max(Duration::from_millis(10));
    let mut debouncer = new_debouncer(debounce, Some(tick), move |result: DebounceEventResult| {
        match result {
            Ok(events) => {
                let relevant = events.iter().any(|event| {
                    !matches!(event.kind, EventKind::Access(_))
                        && event.paths.iter().any(|p| concerns_runbooks(p))
                });
                if relevant {
                    tracing::debug!("the runbooks folder changed; reloading");
                    scheduler.reload();
                }
            }
            Err(errors) => {
                for error in errors {
                    tracing::warn!(error = %error, "the runbooks folder watcher reported an error; SIGHUP reloads by hand");
                }
            }
        }
    })
    .map_err(watch_error)?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(watch_error)?;
    Ok(FolderWatcher {
        _debouncer: debouncer,
    })
}

/// Whether a change to `path` can change the catalog.
pub fn concerns_runbooks(path: &Path) -> bool {
    is_runbook_file(path)
        || path
            .file_name()
            .is_some_and(|name| name == std::ffi::OsStr::new(CONFIGMAP_LINK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runbook_files_and_the_configmap_link_trigger_a_reload() {
        let cases = [
            ("/r/archive.toml", true),
            ("/r/..data", true),
            ("/r/.archive.toml.swp", false),
            ("/r/archive.toml.swp", false),
            ("/r/archive.toml~", false),
            ("/r/archive.toml.tmp", false),
            ("/r/.hidden.toml", false),
            ("/r/4913", false),
            ("/r/..2026_03_29_10_00_00.123", false),
            ("/r/runbook.schema.json", false),
        ];
        for (path, expected) in cases {
            assert_eq!(concerns_runbooks(Path::new(path)), expected, "{path}");
        }
    }
}
