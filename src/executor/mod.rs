//! Running one job: a runbook's steps against Exchange, dry runs, safety limits, timeouts
//! and cancellation. A failed job is an outcome, never an error that reaches the scheduler.
