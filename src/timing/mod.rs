//! The timing core: pure calendar and policy maths that both the runbook file model and the
//! scheduler build on. [`schedule`] maps cron expressions in a time zone to instants with
//! our daylight-saving rules; [`policy`] holds the overlap, missed-run, jitter and window
//! rules and the pure decisions they lead to.
//!
//! It sits below `runbook` so imports point one way (runbook model → timing ← scheduler):
//! nothing here knows runbook files, the scheduler loop, or any I/O; every instant is an
//! argument.

pub mod policy;
pub mod schedule;

pub use policy::{MissedPolicy, OnInterrupt, OverlapPolicy, Window};
pub use schedule::Schedule;
