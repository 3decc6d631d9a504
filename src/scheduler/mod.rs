//! Deciding when jobs run, on the pure maths of [`crate::timing`] (cron in time zones,
//! overlap and missed-run policies): the worker's view of the runbooks folder across
//! reloads ([`catalog`], pure), when an occurrence fires ([`plan`], pure), the scheduler loop
//! ([`engine`]) and the messages and shared state it exchanges with callers ([`handle`]), with
//! the tasks it spawns
//! ([`job`] for one job's life, `sweep` for the coordination store's background work) and
//! the folder watcher ([`watch`]). The executor decides how a job runs: the loop only sees
//! it through [`job::JobRunner`].

pub mod catalog;
pub mod ended;
pub mod engine;
pub mod handle;
pub mod job;
pub mod plan;
mod sweep;
pub mod watch;

pub use crate::runbook::JobSpec;
pub use catalog::{LiveCatalog, LiveRunbook, ReloadSummary};
pub use ended::{JOB_FINISHED, JobEnded};
pub use engine::{Scheduler, SchedulerOptions, SchedulerParts, catch_ups};
pub use handle::{JobKey, LastJob, RunError, SchedulerHandle};
pub use job::{JobRunner, RunEnd};
pub use plan::{Due, plan_next, window};
pub use watch::{DEFAULT_DEBOUNCE, FolderWatcher, WatchError, watch_folder};
