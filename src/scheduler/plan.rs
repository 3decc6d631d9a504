//! When a runbook's next occurrence fires: its schedule in its active window, plus its
//! jitter. Pure: the instant to plan from is an argument.

use chrono::{DateTime, Utc};

use crate::runbook::Runbook;
use crate::timing::policy::{Window, jitter_offset};

/// A due occurrence: the schedule's instant and when it fires (the instant plus jitter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub instant: DateTime<Utc>,
    pub fire_at: DateTime<Utc>,
}

/// The next occurrence of `runbook` strictly after `after`, or `None` when it has no
/// schedule, is disabled or its window has ended. Pure.
pub fn plan_next(runbook: &Runbook, after: DateTime<Utc>) -> Option<Due> {
    if !runbook.enabled {
        return None;
    }
    let schedule = runbook.schedule.as_ref()?;
    let instant = window(runbook).next_fire(schedule, after)?;
    let offset = jitter_offset(&runbook.name, instant, runbook.jitter);
    let fire_at = chrono::Duration::from_std(offset)
        .ok()
        .and_then(|o| instant.checked_add_signed(o))
        .unwrap_or(instant);
    Some(Due { instant, fire_at })
}

/// The active window of a runbook.
pub fn window(runbook: &Runbook) -> Window {
    Window {
        start_at: runbook.start_at,
        end_at: runbook.end_at,
    }
}
