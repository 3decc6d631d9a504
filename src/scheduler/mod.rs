//! Deciding when jobs run: cron maths in time zones ([`schedule`], pure), overlap and
//! missed-run policies ([`policy`], pure), and the scheduler loop. The executor decides how.

pub mod policy;
pub mod schedule;
