//! Cron maths in a time zone: when does a runbook's schedule fire next, and when did it
//! last fire. Pure: every instant comes in as an argument; nothing here reads the clock.
//!
//! Parsing and calendar matching (`L`, `#`, `W`, lists, ranges, steps, `@daily`, …) are
//! croner's. Croner is asked only about *wall-clock* times (it evaluates the pattern on a
//! zone without transitions), and this module maps each wall-clock match to real instants
//! with its own daylight-saving rules, because croner's own rules depend on whether a
//! pattern has exactly one hour, minute and second (a `30 2,14 * * *` job would run twice
//! on a fall-back day and not at all on a spring-forward day). The rules:
//!
//! - **Spring forward (a gap).** A wall-clock time that does not exist that day fires once,
//!   at the first instant after the gap (03:00 for a 02:30 job in Berlin). Several such
//!   times, and a regular occurrence at the gap's end, collapse into that one run, so an
//!   every-15-minutes job does not burst four times at 03:00.
//! - **Fall back (an overlap).** A wall-clock time that happens twice fires once, at its
//!   first occurrence, when the hour field names particular hours (`30 2 * * *`,
//!   `0 1-3 * * *`, `0 */2 * * *`). When the hour field is `*` (every hour: `*/5 * * * *`,
//!   `0 * * * *`) it fires at both occurrences, so the job keeps its cadence in real time.
//!
//! Several expressions make one schedule: the result is their union with identical
//! instants counted once.

use std::fmt;

use chrono::{
    DateTime, Duration, LocalResult, NaiveDateTime, Offset as _, TimeZone, Timelike as _, Utc,
};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// How far either side of an instant the zone's offsets are sampled. It must be larger
/// than the difference between any two offsets a zone has used (at most 26 hours, e.g.
/// Pacific/Apia skipping 30 December 2011) so that every wall-clock time that can map to
/// an instant after (or before) `t` is considered.
const OFFSET_WINDOW_HOURS: i64 = 48;
/// Offsets are sampled at this spacing inside the window; zones never change offset twice
/// within twelve hours.
const OFFSET_SAMPLE_HOURS: i64 = 12;
/// Upper bound on wall-clock candidates examined for one answer. Normally one or two are;
/// an every-second pattern inside an overlap needs one per second of the overlap.
const MAX_CANDIDATES: usize = 200_000;
/// A reference point for checking that an expression fires at all.
const REFERENCE_YEAR: i32 = 2000;

/// Why a schedule could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the schedule has no cron expressions (give at least one, e.g. \"0 6 * * *\")")]
    Empty,
    #[error(
        "invalid cron expression {expr:?}: {detail} (expected 5 fields `minute hour day-of-month month day-of-week`, or 6 with seconds first)"
    )]
    Invalid {
        expr: String,
        /// croner's explanation, without its trailing period.
        detail: String,
    },
    #[error("cron expression {expr:?} never fires (check the day of month against the month)")]
    NeverFires { expr: String },
}

/// One parsed expression and how it behaves in a fall-back overlap.
#[derive(Clone)]
struct Expression {
    text: String,
    cron: Cron,
    /// True when the hour field matches every hour: such patterns fire at both occurrences
    /// of a repeated wall-clock time.
    fires_twice_in_overlap: bool,
}

/// A runbook's schedule: one or more cron expressions evaluated in one IANA time zone.
#[derive(Clone)]
pub struct Schedule {
    expressions: Vec<Expression>,
    tz: Tz,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("expressions", &self.expressions())
            .field("tz", &self.tz.name())
            .finish()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.tz == other.tz && self.expressions() == other.expressions()
    }
}

/// How one wall-clock time maps to real instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolved {
    Single(DateTime<Utc>),
    /// A fall-back overlap: the earlier and the later instant.
    Ambiguous(DateTime<Utc>, DateTime<Utc>),
    /// A spring-forward gap: the first instant after it.
    Gap(DateTime<Utc>),
}

impl Resolved {
    /// The instants at which a matching expression fires, earliest first.
    fn fired(self, fires_twice_in_overlap: bool) -> impl Iterator<Item = DateTime<Utc>> {
        let (first, second) = match self {
            Resolved::Single(at) | Resolved::Gap(at) => (at, None),
            Resolved::Ambiguous(earlier, later) => {
                (earlier, fires_twice_in_overlap.then_some(later))
            }
        };
        std::iter::once(first).chain(second)
    }

    fn first(self) -> DateTime<Utc> {
        match self {
            Resolved::Single(at) | Resolved::Gap(at) | Resolved::Ambiguous(at, _) => at,
        }
    }
}

impl Schedule {
    /// Parses `exprs` (5 fields, or 6 with seconds first; `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`) to be evaluated in `tz`.
    pub fn new(exprs: &[String], tz: Tz) -> Result<Schedule, ScheduleError> {
        if exprs.is_empty() {
            return Err(ScheduleError::Empty);
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let mut expressions = Vec::with_capacity(exprs.len());
        for text in exprs {
            let text = text.trim();
            let cron = parser.parse(text).map_err(|e| ScheduleError::Invalid {
                expr: text.to_string(),
                detail: e.to_string().trim_end_matches('.').to_string(),
            })?;
            let reference = naive_reference();
            if cron
                .find_next_occurrence(&reference.and_utc(), true)
                .is_err()
            {
                return Err(ScheduleError::NeverFires {
                    expr: text.to_string(),
                });
            }
            let fires_twice_in_overlap = cron.pattern.hours.is_all_set();
            expressions.push(Expression {
                text: text.to_string(),
                cron,
                fires_twice_in_overlap,
            });
        }
        Ok(Schedule { expressions, tz })
    }

    /// The expressions as written (trimmed).
    pub fn expressions(&self) -> Vec<&str> {
        self.expressions.iter().map(|e| e.text.as_str()).collect()
    }

    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first instant strictly after `t` at which the schedule fires; `None` when it
    /// never fires again (croner searches up to the year 5000).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let bounds = self.offset_bounds(t);
        self.expressions
            .iter()
            .filter_map(|e| self.next_after_for(e, t, bounds))
            .min()
    }

    /// The last instant at or before `t` at which the schedule fired; `None` when there is
    /// none. Used to find the most recent missed occurrence after downtime.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let bounds = self.offset_bounds(t);
        self.expressions
            .iter()
            .filter_map(|e| self.latest_at_or_before_for(e, t, bounds))
            .max()
    }

    /// The next `n` instants strictly after `after`, without duplicates.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut cursor = after;
        while out.len() < n {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            out.push(next);
            cursor = next;
        }
        out
    }

    /// `bounds` are [`Schedule::offset_bounds`] of `t`.
    fn next_after_for(
        &self,
        expr: &Expression,
        t: DateTime<Utc>,
        (min_offset, _): (Duration, Duration),
    ) -> Option<DateTime<Utc>> {
        // Every wall-clock time whose instant can be after `t` is later than `t` read with
        // the smallest offset in force around `t`.
        let mut cursor = t.naive_utc().checked_add_signed(min_offset)?;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_CANDIDATES {
            let wall = next_wall_clock(&expr.cron, cursor)?;
            cursor = wall;
            let resolved = self.resolve(wall)?;
            for at in resolved.fired(expr.fires_twice_in_overlap) {
                if at > t && best.is_none_or(|b| at < b) {
                    best = Some(at);
                }
            }
            // The first instant of a wall-clock time never decreases as the wall-clock
            // time increases, so nothing later can beat an answer found by now.
            if resolved.first() > t {
                return best;
            }
        }
        best
    }

    fn latest_at_or_before_for(
        &self,
        expr: &Expression,
        t: DateTime<Utc>,
        (_, max_offset): (Duration, Duration),
    ) -> Option<DateTime<Utc>> {
        // Inclusive start: step one second past the bound, then search strictly before it.
        let mut cursor = t
            .naive_utc()
            .checked_add_signed(max_offset + Duration::seconds(1))?;
        let mut best: Option<DateTime<Utc>> = None;
        for _ in 0..MAX_CANDIDATES {
            let wall = previous_wall_clock(&expr.cron, cursor)?;
            cursor = wall;
            let resolved = self.resolve(wall)?;
            let mut last_fired = None;
            for at in resolved.fired(expr.fires_twice_in_overlap) {
                last_fired = Some(at);
                if at <= t && best.is_none_or(|b| at > b) {
                    best = Some(at);
                }
            }
            // Symmetric to `next_after_for`: the last instant at which a wall-clock time
            // fires never increases as the wall-clock time decreases.
            if last_fired.is_some_and(|at| at <= t) {
                return best;
            }
        }
        best
    }

    /// The smallest and largest UTC offsets the zone uses within the window around `t`.
    fn offset_bounds(&self, t: DateTime<Utc>) -> (Duration, Duration) {
        let mut min = i32::MAX;
        let mut max = i32::MIN;
        let mut h = -OFFSET_WINDOW_HOURS;
        while h <= OFFSET_WINDOW_HOURS {
            let at = t
                .checked_add_signed(Duration::hours(h))
                .unwrap_or(t)
                .naive_utc();
            let secs = self
                .tz
                .offset_from_utc_datetime(&at)
                .fix()
                .local_minus_utc();
            min = min.min(secs);
            max = max.max(secs);
            h += OFFSET_SAMPLE_HOURS;
        }
        (
            Duration::seconds(i64::from(min)),
            Duration::seconds(i64::from(max)),
        )
    }

    /// Maps a wall-clock time in the schedule's zone to the instant(s) it denotes.
    fn resolve(&self, wall: NaiveDateTime) -> Option<Resolved> {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(at) => Some(Resolved::Single(at.with_timezone(&Utc))),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                Some(Resolved::Ambiguous(a.min(b), a.max(b)))
            }
            LocalResult::None => self.end_of_gap(wall).map(Resolved::Gap),
        }
    }

    /// The first instant whose wall-clock time is later than `wall`, which lies in a
    /// spring-forward gap. Gaps start and end on whole minutes in every zone since the
    /// days of local mean time, so whole minutes are tried first and then refined.
    fn end_of_gap(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        let floor = wall.with_second(0)?.with_nanosecond(0)?;
        let limit = OFFSET_WINDOW_HOURS * 60;
        let mut minute = floor;
        for _ in 0..limit {
            minute = minute.checked_add_signed(Duration::minutes(1))?;
            if let Some(at) = self.tz.from_local_datetime(&minute).earliest() {
                // Walk back second by second in case the gap ended mid-minute.
                let mut first = at;
                let mut probe = minute;
                for _ in 0..59 {
                    probe = probe.checked_sub_signed(Duration::seconds(1))?;
                    if probe <= wall {
                        break;
                    }
                    match self.tz.from_local_datetime(&probe).earliest() {
                        Some(earlier) => first = earlier,
                        None => break,
                    }
                }
                return Some(first.with_timezone(&Utc));
            }
        }
        None
    }
}

/// The next wall-clock time strictly after `after` matching `cron`. Croner evaluates on
/// UTC here only because UTC has no transitions; the values are wall-clock times.
fn next_wall_clock(cron: &Cron, after: NaiveDateTime) -> Option<NaiveDateTime> {
    // Matches are whole seconds, so "after 05:59:59.5" is "after 05:59:59".
    let floor = after.with_nanosecond(0)?;
    cron.find_next_occurrence(&floor.and_utc(), false)
        .ok()
        .map(|at| at.naive_utc())
}

/// The previous wall-clock time strictly before `before` matching `cron`.
fn previous_wall_clock(cron: &Cron, before: NaiveDateTime) -> Option<NaiveDateTime> {
    // "Before 06:00:00.5" includes 06:00:00 itself.
    let floor = before.with_nanosecond(0)?;
    let inclusive = floor != before;
    cron.find_previous_occurrence(&floor.and_utc(), inclusive)
        .ok()
        .map(|at| at.naive_utc())
}

fn naive_reference() -> NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(REFERENCE_YEAR, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

/// The next `n` fire times after `now`, each in the schedule's zone and in UTC, for
/// `runbook-worker next` and the dashboard.
pub fn describe_upcoming(
    schedule: &Schedule,
    now: DateTime<Utc>,
    n: usize,
) -> Vec<(DateTime<Tz>, DateTime<Utc>)> {
    let tz = schedule.time_zone();
    schedule
        .upcoming(now, n)
        .into_iter()
        .map(|at| (at.with_timezone(&tz), at))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
            .with_timezone(&Utc)
    }

    fn schedule(exprs: &[&str], tz: &str) -> Schedule {
        let exprs: Vec<String> = exprs.iter().map(|s| s.to_string()).collect();
        Schedule::new(&exprs, tz.parse().unwrap()).unwrap()
    }

    fn upcoming(exprs: &[&str], tz: &str, after: &str, n: usize) -> Vec<String> {
        schedule(exprs, tz)
            .upcoming(utc(after), n)
            .into_iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    /// (zone, expression, search from (UTC), expected UTC fire times, why)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [&'static str],
        &'static str,
    );

    const DST_CASES: &[Case] = &[
        // Europe/Berlin 2026: 02:00 CET → 03:00 CEST on 29 March (01:00Z);
        // 03:00 CEST → 02:00 CET on 25 October (01:00Z).
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-03-28T00:00:00Z",
            &[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z",
            ],
            "spring forward: 02:30 does not exist and runs once at 03:00 CEST",
        ),
        (
            "Europe/Berlin",
            "30 2 * * *",
            "2026-10-24T00:00:00Z",
            &[
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
            ],
            "fall back: 02:30 happens twice and runs once, at the first (CEST)",
        ),
        (
            "Europe/Berlin",
            "30 2,14 * * *",
            "2026-03-28T23:00:00Z",
            &["2026-03-29T01:00:00Z", "2026-03-29T12:30:00Z"],
            "a list of hours is treated like a fixed time in the gap",
        ),
        (
            "Europe/Berlin",
            "30 2,14 * * *",
            "2026-10-24T23:00:00Z",
            &["2026-10-25T00:30:00Z", "2026-10-25T13:30:00Z"],
            "a list of hours runs once in the overlap",
        ),
        (
            "Europe/Berlin",
            "0 * * * *",
            "2026-03-28T23:30:00Z",
            &[
                "2026-03-29T00:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z",
            ],
            "hourly keeps one run per real hour across the gap (01:00, 03:00, 04:00 local)",
        ),
        (
            "Europe/Berlin",
            "0 * * * *",
            "2026-10-24T23:30:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
            ],
            "hourly runs at both 02:00s in the overlap: still one run per real hour",
        ),
        (
            "Europe/Berlin",
            "*/20 * * * *",
            "2026-03-29T00:30:00Z",
            &[
                "2026-03-29T00:40:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:20:00Z",
            ],
            "every 20 minutes collapses the missing hour into one run at 03:00",
        ),
        (
            "Europe/Berlin",
            "*/30 * * * *",
            "2026-10-24T23:45:00Z",
            &[
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z",
            ],
            "every 30 minutes keeps its real-time cadence through the repeated hour",
        ),
        (
            "Europe/Berlin",
            "15 2 * * *",
            "2026-03-29T00:59:59Z",
            &["2026-03-29T01:00:00Z"],
            "the run after the gap is strictly after the search instant",
        ),
        // America/New_York 2026: spring forward 8 March 02:00 EST → 03:00 EDT (07:00Z);
        // fall back 1 November 02:00 EDT → 01:00 EST (06:00Z).
        (
            "America/New_York",
            "30 2 * * *",
            "2026-03-07T12:00:00Z",
            &["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"],
            "spring forward in New York: 02:30 runs at 03:00 EDT",
        ),
        (
            "America/New_York",
            "30 1 * * *",
            "2026-10-31T12:00:00Z",
            &["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            "fall back in New York: 01:30 runs once, at 01:30 EDT",
        ),
        // Australia/Sydney (southern hemisphere): DST ends 5 April 2026 03:00 AEDT →
        // 02:00 AEST (4 April 16:00Z); starts 4 October 02:00 AEST → 03:00 AEDT (3 October 16:00Z).
        (
            "Australia/Sydney",
            "30 2 * * *",
            "2026-04-03T12:00:00Z",
            &[
                "2026-04-03T15:30:00Z",
                "2026-04-04T15:30:00Z",
                "2026-04-05T16:30:00Z",
            ],
            "Sydney falls back in April: 02:30 runs once, at 02:30 AEDT",
        ),
        (
            "Australia/Sydney",
            "30 2 * * *",
            "2026-10-02T12:00:00Z",
            &[
                "2026-10-02T16:30:00Z",
                "2026-10-03T16:00:00Z",
                "2026-10-04T15:30:00Z",
            ],
            "Sydney springs forward in October: 02:30 runs at 03:00 AEDT",
        ),
        // Asia/Kolkata: +05:30 all year.
        (
            "Asia/Kolkata",
            "30 2 * * *",
            "2026-03-28T00:00:00Z",
            &["2026-03-28T21:00:00Z", "2026-03-29T21:00:00Z"],
            "no DST: every day at 02:30 IST = 21:00Z the day before",
        ),
        // Pacific/Chatham: +12:45, +13:45 in summer. Springs forward 27 September 2026
        // 02:45 → 03:45 (26 September 14:00Z); falls back 5 April 2026 03:45 → 02:45
        // (4 April 14:00Z).
        (
            "Pacific/Chatham",
            "0 3 * * *",
            "2026-09-25T12:00:00Z",
            &[
                "2026-09-25T14:15:00Z",
                "2026-09-26T14:00:00Z",
                "2026-09-27T13:15:00Z",
            ],
            "Chatham's 45-minute offset: 03:00 is in the gap and runs at 03:45",
        ),
        (
            "Pacific/Chatham",
            "0 3 * * *",
            "2026-04-03T12:00:00Z",
            &[
                "2026-04-03T13:15:00Z",
                "2026-04-04T13:15:00Z",
                "2026-04-05T14:15:00Z",
            ],
            "Chatham falls back: 03:00 happens twice and runs once",
        ),
        // Australia/Lord_Howe: +10:30, +11 in summer (a 30-minute shift). Springs forward
        // 4 October 2026 02:00 → 02:30 (3 October 15:30Z); falls back 5 April 2026
        // 02:00 → 01:30 (4 April 15:00Z).
        (
            "Australia/Lord_Howe",
            "15 2 * * *",
            "2026-10-02T12:00:00Z",
            &[
                "2026-10-02T15:45:00Z",
                "2026-10-03T15:30:00Z",
                "2026-10-04T15:15:00Z",
            ],
            "Lord Howe's 30-minute gap: 02:15 runs at 02:30",
        ),
        (
            "Australia/Lord_Howe",
            "45 1 * * *",
            "2026-04-03T12:00:00Z",
            &[
                "2026-04-03T14:45:00Z",
                "2026-04-04T14:45:00Z",
                "2026-04-05T15:15:00Z",
            ],
            "Lord Howe falls back 30 minutes: 01:45 runs once",
        ),
        (
            "Australia/Lord_Howe",
            "*/15 * * * *",
            "2026-04-04T14:40:00Z",
            &[
                "2026-04-04T14:45:00Z",
                "2026-04-04T15:00:00Z",
                "2026-04-04T15:15:00Z",
                "2026-04-04T15:30:00Z",
            ],
            "every 15 minutes through a 30-minute overlap keeps its real-time cadence",
        ),
    ];

    #[test]
    fn daylight_saving_transitions_follow_the_documented_rules() {
        for (zone, expr, after, expected, why) in DST_CASES {
            let got = upcoming(&[expr], zone, after, expected.len());
            assert_eq!(&got, expected, "{zone} {expr:?} after {after}: {why}");
        }
    }

    #[test]
    fn starting_inside_the_repeated_hour_never_returns_an_earlier_instant() {
        // 02:10 CET on the fall-back day, after the first 02:30 (CEST) already passed:
        // the next 02:30 run is the next day, not the second 02:30 of today.
        let s = schedule(&["30 2 * * *"], "Europe/Berlin");
        let next = s.next_after(utc("2026-10-25T01:10:00Z")).unwrap();
        assert_eq!(next, utc("2026-10-26T01:30:00Z"));
        // An every-15-minutes job started in the second pass continues in the second pass.
        let s = schedule(&["*/15 * * * *"], "Europe/Berlin");
        let next = s.next_after(utc("2026-10-25T01:10:00Z")).unwrap();
        assert_eq!(next, utc("2026-10-25T01:15:00Z"));
        // …and started in the first pass it does not skip the second pass.
        let next = s.next_after(utc("2026-10-25T00:50:00Z")).unwrap();
        assert_eq!(next, utc("2026-10-25T01:00:00Z"));
    }

    #[test]
    fn every_minute_through_the_gap_has_no_burst_and_no_hole() {
        let s = schedule(&["* * * * *"], "Europe/Berlin");
        let times = s.upcoming(utc("2026-03-29T00:58:00Z"), 4);
        let expected: Vec<_> = [
            "2026-03-29T00:59:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:01:00Z",
            "2026-03-29T01:02:00Z",
        ]
        .iter()
        .map(|t| utc(t))
        .collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn every_minute_through_the_overlap_runs_every_real_minute() {
        let s = schedule(&["* * * * *"], "America/New_York");
        // 01:59 EDT, then the clock returns to 01:00 EST.
        let times = s.upcoming(utc("2026-11-01T05:58:30Z"), 3);
        let expected: Vec<_> = [
            "2026-11-01T05:59:00Z",
            "2026-11-01T06:00:00Z",
            "2026-11-01T06:01:00Z",
        ]
        .iter()
        .map(|t| utc(t))
        .collect();
        assert_eq!(times, expected);
    }

    #[test]
    fn calendar_features_of_croner_work() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "0 9 L * *",
                "2026-02-01T00:00:00Z",
                &["2026-02-28T09:00:00Z", "2026-03-31T09:00:00Z"],
            ),
            (
                "0 9 * * 1#2",
                "2026-02-01T00:00:00Z",
                &["2026-02-09T09:00:00Z", "2026-03-09T09:00:00Z"],
            ),
            (
                "0 9 * * 5#L",
                "2026-02-01T00:00:00Z",
                &["2026-02-27T09:00:00Z", "2026-03-27T09:00:00Z"],
            ),
            (
                "0 9 15W * *",
                "2026-02-01T00:00:00Z",
                // 15 February 2026 is a Sunday: the nearest weekday is Monday the 16th.
                &["2026-02-16T09:00:00Z", "2026-03-16T09:00:00Z"],
            ),
            (
                "0 8,17 * * MON-FRI",
                "2026-02-06T12:00:00Z",
                &["2026-02-06T17:00:00Z", "2026-02-09T08:00:00Z"],
            ),
            (
                "30 */10 9 * * *",
                "2026-02-01T09:15:00Z",
                &["2026-02-01T09:20:30Z", "2026-02-01T09:30:30Z"],
            ),
            (
                "@daily",
                "2026-02-01T12:00:00Z",
                &["2026-02-02T00:00:00Z", "2026-02-03T00:00:00Z"],
            ),
            (
                "@hourly",
                "2026-02-01T12:00:00Z",
                &["2026-02-01T13:00:00Z", "2026-02-01T14:00:00Z"],
            ),
            (
                "0 9 * * 5L",
                "2026-02-01T00:00:00Z",
                &["2026-02-27T09:00:00Z", "2026-03-27T09:00:00Z"],
            ),
            (
                // February 2026 starts on a Sunday: its first Monday is the 2nd.
                "0 9 1-7 * +MON",
                "2026-02-01T00:00:00Z",
                &["2026-02-02T09:00:00Z", "2026-03-02T09:00:00Z"],
            ),
            (
                "0 9 31 * *",
                "2026-03-31T10:00:00Z",
                // April and June have no 31st: those months are skipped.
                &["2026-05-31T09:00:00Z", "2026-07-31T09:00:00Z"],
            ),
            (
                "10-50/20 12 * * *",
                "2026-02-01T00:00:00Z",
                &[
                    "2026-02-01T12:10:00Z",
                    "2026-02-01T12:30:00Z",
                    "2026-02-01T12:50:00Z",
                ],
            ),
            (
                "0 0 29 2 *",
                "2026-01-01T00:00:00Z",
                &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"],
            ),
        ];
        for (expr, after, expected) in cases {
            let got = upcoming(&[expr], "UTC", after, expected.len());
            assert_eq!(&got, expected, "{expr:?}");
        }
    }

    #[test]
    fn several_expressions_merge_and_identical_instants_count_once() {
        let got = upcoming(
            &["0 9 * * *", "0 9,18 * * *", "0 0 9 * * *"],
            "UTC",
            "2026-02-01T00:00:00Z",
            4,
        );
        assert_eq!(
            got,
            [
                "2026-02-01T09:00:00Z",
                "2026-02-01T18:00:00Z",
                "2026-02-02T09:00:00Z",
                "2026-02-02T18:00:00Z",
            ]
        );
    }

    #[test]
    fn next_after_is_strictly_after() {
        let s = schedule(&["0 9 * * *"], "UTC");
        let at = utc("2026-02-01T09:00:00Z");
        assert_eq!(s.next_after(at), Some(utc("2026-02-02T09:00:00Z")));
        assert_eq!(
            s.next_after(at - Duration::milliseconds(1)),
            Some(at),
            "a millisecond before the instant finds the instant"
        );
    }

    #[test]
    fn latest_at_or_before_is_the_mirror_of_next_after() {
        let cases: &[(&str, &str, &str, Option<&str>)] = &[
            (
                "0 9 * * *",
                "UTC",
                "2026-02-03T10:00:00Z",
                Some("2026-02-03T09:00:00Z"),
            ),
            (
                "0 9 * * *",
                "UTC",
                "2026-02-03T09:00:00Z",
                Some("2026-02-03T09:00:00Z"),
            ),
            (
                "0 9 * * *",
                "UTC",
                "2026-02-03T08:59:59Z",
                Some("2026-02-02T09:00:00Z"),
            ),
            // In the second pass of the Berlin overlap: 02:30 only fired at its first
            // occurrence (00:30Z).
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-10-25T01:45:00Z",
                Some("2026-10-25T00:30:00Z"),
            ),
            // Every 15 minutes fired in the second pass too.
            (
                "*/15 * * * *",
                "Europe/Berlin",
                "2026-10-25T01:10:00Z",
                Some("2026-10-25T01:00:00Z"),
            ),
            // The gap's replacement run at 03:00 CEST (01:00Z).
            (
                "30 2 * * *",
                "Europe/Berlin",
                "2026-03-29T01:00:00Z",
                Some("2026-03-29T01:00:00Z"),
            ),
        ];
        for (expr, tz, at, expected) in cases {
            let got = schedule(&[expr], tz).latest_at_or_before(utc(at));
            assert_eq!(got, expected.map(utc), "{expr:?} in {tz} at or before {at}");
        }
    }

    #[test]
    fn upcoming_and_latest_agree_over_a_year_in_every_tested_zone() {
        // Whatever next_after produces, latest_at_or_before must find again.
        let zones = [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Sydney",
            "Asia/Kolkata",
            "Pacific/Chatham",
            "Australia/Lord_Howe",
        ];
        for zone in zones {
            for expr in ["30 2 * * *", "0 */4 * * *", "45 1,3 * * *"] {
                let s = schedule(&[expr], zone);
                let times = s.upcoming(utc("2026-01-01T00:00:00Z"), 800);
                for pair in times.windows(2) {
                    assert!(pair[0] < pair[1], "{zone} {expr}: not increasing");
                    assert_eq!(
                        s.latest_at_or_before(pair[1] - Duration::seconds(1)),
                        Some(pair[0]),
                        "{zone} {expr}: before {}",
                        pair[1]
                    );
                }
            }
        }
    }

    #[test]
    fn a_fixed_daily_time_fires_exactly_once_per_local_day_all_year() {
        for zone in ["Europe/Berlin", "Australia/Sydney", "Pacific/Chatham"] {
            let s = schedule(&["30 2 * * *"], zone);
            let tz: Tz = zone.parse().unwrap();
            let times = s.upcoming(utc("2026-01-01T12:00:00Z"), 365);
            let mut days: Vec<_> = times
                .iter()
                .map(|t| t.with_timezone(&tz).date_naive())
                .collect();
            let count = days.len();
            days.dedup();
            assert_eq!(days.len(), count, "{zone}: a local day fired twice");
            assert_eq!(
                (days[days.len() - 1] - days[0]).num_days() + 1,
                365,
                "{zone}: a local day was skipped"
            );
        }
    }

    #[test]
    fn instants_at_the_ends_of_time_give_none_instead_of_panicking() {
        let s = schedule(&["30 2 * * *"], "Europe/Berlin");
        assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
        assert_eq!(s.latest_at_or_before(DateTime::<Utc>::MIN_UTC), None);
        assert_eq!(s.next_after(utc("5001-01-01T00:00:00Z")), None);
        assert!(s.upcoming(DateTime::<Utc>::MAX_UTC, 3).is_empty());
        let window = crate::timing::policy::Window {
            start_at: Some(DateTime::<Utc>::MIN_UTC),
            end_at: None,
        };
        let first = window.next_fire(&s, DateTime::<Utc>::MIN_UTC);
        assert!(
            first.is_none_or(|at| at > DateTime::<Utc>::MIN_UTC),
            "{first:?}"
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_the_expression_named() {
        let tz: Tz = "UTC".parse().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "no cron expressions"),
            (&["every day"], "\"every day\""),
            (&["61 * * * *"], "\"61 * * * *\""),
            (&["0 0 * * * * 2026"], "6 with seconds first"),
            (&["0 0 31 2 *"], "never fires"),
            (&["0 9 * * *", "nope"], "\"nope\""),
        ];
        for (exprs, needle) in cases {
            let exprs: Vec<String> = exprs.iter().map(|s| s.to_string()).collect();
            let err = Schedule::new(&exprs, tz).unwrap_err().to_string();
            assert!(err.contains(needle), "{exprs:?}: {err}");
            assert!(!err.ends_with('.'), "{err}");
        }
    }

    #[test]
    fn describe_upcoming_gives_local_and_utc_times() {
        let s = schedule(&["30 2 * * *"], "Europe/Berlin");
        let rows = describe_upcoming(&s, utc("2026-03-28T12:00:00Z"), 2);
        let rendered: Vec<_> = rows
            .iter()
            .map(|(local, at)| format!("{} {}", local.to_rfc3339(), at.to_rfc3339()))
            .collect();
        assert_eq!(
            rendered,
            [
                "2026-03-29T03:00:00+02:00 2026-03-29T01:00:00+00:00",
                "2026-03-30T02:30:00+02:00 2026-03-30T00:30:00+00:00",
            ]
        );
    }
}
