//! Deciding when jobs run, on the pure maths of [`crate::timing`] (cron in time zones,
//! overlap and missed-run policies): the worker's view of the runbooks folder across
//! reloads ([`catalog`], pure), the scheduler loop ([`engine`]) with the tasks it spawns
//! ([`job`] for one job's life, `sweep` for the coordination store's background work) and
//! the folder watcher ([`watch`]). The executor decides how a job runs: the loop only sees
//! it through [`job::JobRunner`].

pub mod catalog;
pub mod engine;
pub mod job;
mod sweep;
pub mod watch;

pub use crate::runbook::JobSpec;
pub use catalog::{LiveCatalog, LiveRunbook, ReloadSummary};
pub use engine::{
    Due, JobKey, LastJob, RunError, Scheduler, SchedulerHandle, SchedulerOptions, SchedulerParts,
    catch_ups, plan_next, window,
};
pub use job::{JobRunner, RunEnd};
pub use watch::{DEFAULT_DEBOUNCE, FolderWatcher, WatchError, watch_folder};
