//! Deciding when jobs run: cron maths in time zones ([`schedule`], pure), overlap and
//! missed-run policies, and the scheduler loop. The executor decides how.
