//! When a runbook's next occurrence fires: the earliest of its schedules in its active
//! window, plus its jitter. Pure: the instant to plan from is an argument.
//!
//! A runbook with several schedules (`[[schedules]]`) has one pending occurrence at a time,
//! like any other: the earliest `(instant, schedule index)`. Two schedules that fire at the
//! same instant are two occurrences, planned one after the other in index order, each with
//! its own parameters and its own coordination record.

use chrono::{DateTime, Utc};

use crate::runbook::Runbook;
use crate::timing::policy::{Window, jitter_offset, missed_run};

/// A due occurrence: the schedule's instant, when it fires (the instant plus jitter) and
/// which schedule of the runbook it belongs to ([`crate::runbook::ScheduleEntry::index`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    pub instant: DateTime<Utc>,
    pub fire_at: DateTime<Utc>,
    pub schedule: usize,
}

/// The next occurrence of `runbook` strictly after `after`, or `None` when it has no
/// schedule, is disabled or its window has ended. Pure.
pub fn plan_next(runbook: &Runbook, after: DateTime<Utc>) -> Option<Due> {
    if !runbook.enabled {
        return None;
    }
    let window = window(runbook);
    let (instant, schedule) = runbook
        .schedule_entries
        .iter()
        .filter_map(|e| Some((window.next_fire(&e.schedule, after)?, e.index)))
        .min()?;
    Some(due(runbook, instant, schedule))
}

/// The occurrence after `previous`: another schedule of the runbook at the same instant
/// (a higher index), else the next one strictly after that instant. Pure.
pub fn plan_after(runbook: &Runbook, previous: &Due) -> Option<Due> {
    if !runbook.enabled {
        return None;
    }
    let window = window(runbook);
    let just_before = previous.instant - chrono::Duration::nanoseconds(1);
    let sibling = runbook
        .schedule_entries
        .iter()
        .filter(|e| e.index > previous.schedule)
        .find(|e| window.next_fire(&e.schedule, just_before) == Some(previous.instant));
    match sibling {
        Some(e) => Some(due(runbook, previous.instant, e.index)),
        None => plan_next(runbook, previous.instant),
    }
}

fn due(runbook: &Runbook, instant: DateTime<Utc>, schedule: usize) -> Due {
    let offset = jitter_offset(&runbook.name, instant, runbook.jitter);
    let fire_at = chrono::Duration::from_std(offset)
        .ok()
        .and_then(|o| instant.checked_add_signed(o))
        .unwrap_or(instant);
    Due {
        instant,
        fire_at,
        schedule,
    }
}

/// The catch-up occurrences of `runbook` after downtime (`missed = "run-once"`), one per
/// schedule that missed something since `last_fired`, as `(instant, schedule index)`. Pure.
pub fn missed_occurrences(
    runbook: &Runbook,
    last_fired: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, usize)> {
    if !runbook.enabled {
        return Vec::new();
    }
    let window = window(runbook);
    runbook
        .schedule_entries
        .iter()
        .filter_map(|e| {
            let catch_up = missed_run(
                &e.schedule,
                &window,
                last_fired,
                now,
                runbook.missed,
                runbook.max_lateness,
            )?;
            Some((catch_up.scheduled_for, e.index))
        })
        .collect()
}

/// The schedule a recorded occurrence at `instant` belongs to when nothing else says so
/// (a job the previous process left Interrupted): the first schedule that fires then.
pub fn schedule_at(runbook: &Runbook, instant: DateTime<Utc>) -> usize {
    let just_before = instant - chrono::Duration::nanoseconds(1);
    runbook
        .schedule_entries
        .iter()
        .find(|e| e.schedule.next_after(just_before) == Some(instant))
        .map_or(0, |e| e.index)
}

/// The active window of a runbook.
pub fn window(runbook: &Runbook) -> Window {
    Window {
        start_at: runbook.start_at,
        end_at: runbook.end_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runbook::{CmdletPolicy, parse_runbook};

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn runbook(top: &str) -> Runbook {
        let text = format!("{top}\n[[steps]]\nname = \"a\"\ncmdlet = \"Get-Mailbox\"\n");
        parse_runbook("r", "r.toml", &text, &CmdletPolicy::default()).unwrap()
    }

    #[test]
    fn schedules_firing_at_the_same_instant_are_planned_one_after_the_other() {
        let r = runbook(
            r#"
[params]
region = "ALL"
[[schedules]]
cron = "0 2 * * *"
params = { region = "EU" }
[[schedules]]
cron = ["0 2 * * *", "0 5 * * *"]
params = { region = "US" }
"#,
        );
        let first = plan_next(&r, utc("2026-03-05T00:00:00Z")).unwrap();
        assert_eq!(
            (first.instant, first.schedule),
            (utc("2026-03-05T02:00:00Z"), 0)
        );
        let second = plan_after(&r, &first).unwrap();
        assert_eq!(
            (second.instant, second.schedule),
            (utc("2026-03-05T02:00:00Z"), 1)
        );
        let third = plan_after(&r, &second).unwrap();
        assert_eq!(
            (third.instant, third.schedule),
            (utc("2026-03-05T05:00:00Z"), 1)
        );
        let fourth = plan_after(&r, &third).unwrap();
        assert_eq!(
            (fourth.instant, fourth.schedule),
            (utc("2026-03-06T02:00:00Z"), 0)
        );
    }

    #[test]
    fn each_schedule_reads_its_cron_in_its_own_time_zone() {
        let r = runbook(
            r#"
timezone = "Europe/Berlin"
[[schedules]]
cron = "0 9 * * *"
[[schedules]]
cron = "0 9 * * *"
timezone = "America/New_York"
"#,
        );
        let first = plan_next(&r, utc("2026-01-05T00:00:00Z")).unwrap();
        assert_eq!(
            (first.instant, first.schedule),
            (utc("2026-01-05T08:00:00Z"), 0)
        );
        let second = plan_after(&r, &first).unwrap();
        assert_eq!(
            (second.instant, second.schedule),
            (utc("2026-01-05T14:00:00Z"), 1)
        );
    }
}
