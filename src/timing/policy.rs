//! The scheduling policies a runbook can choose, and the pure decisions they lead to:
//! catch-up after downtime (`missed`, `max_lateness`), what to do when an occurrence comes
//! while the previous job still runs (`overlap`), the per-occurrence `jitter`, and the
//! `start_at` / `end_at` window.
//!
//! Everything takes the instants it needs as arguments. The enums are also the runbook
//! file's vocabulary (`overlap = "queue"`), so the runbook module deserialises straight into
//! them; this module knows nothing else about runbook files.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::schedule::Schedule;

/// What to do with an occurrence that comes while a job of the same runbook still runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OverlapPolicy {
    /// Record the new occurrence as Skipped (Kubernetes' `Forbid`, Ofelia's `no-overlap`).
    #[default]
    Skip,
    /// Start it when the running job ends; at most one waits, later ones are Skipped.
    Queue,
    /// Cancel the running job (between two calls) and start the new one (Kubernetes'
    /// `Replace`).
    Replace,
}

/// What to do, after downtime, with occurrences that passed while the worker was down.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum MissedPolicy {
    /// Nothing: wait for the next occurrence (Azure Automation, cron).
    #[default]
    Skip,
    /// One catch-up job for the most recent missed occurrence, flagged as past due (Azure
    /// Functions' `IsPastDue`), if it is not older than `max_lateness`.
    RunOnce,
}

/// What to do at start-up with a job the previous process left Interrupted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OnInterrupt {
    /// Leave it Interrupted; the next occurrence runs as usual.
    #[default]
    Ignore,
    /// Start it again once, from the beginning (runbooks must tolerate a restart, as in
    /// Azure Automation).
    Rerun,
}

impl OverlapPolicy {
    /// The spellings runbook files use, for validation messages.
    pub const VARIANTS: &'static [(&'static str, OverlapPolicy)] = &[
        ("skip", OverlapPolicy::Skip),
        ("queue", OverlapPolicy::Queue),
        ("replace", OverlapPolicy::Replace),
    ];
}

impl MissedPolicy {
    pub const VARIANTS: &'static [(&'static str, MissedPolicy)] = &[
        ("skip", MissedPolicy::Skip),
        ("run-once", MissedPolicy::RunOnce),
    ];
}

impl OnInterrupt {
    pub const VARIANTS: &'static [(&'static str, OnInterrupt)] = &[
        ("ignore", OnInterrupt::Ignore),
        ("rerun", OnInterrupt::Rerun),
    ];
}

/// A catch-up job to start now for an occurrence missed during downtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CatchUp {
    /// The missed occurrence (the job's `scheduled_for`).
    pub scheduled_for: DateTime<Utc>,
    /// Always true: the job runs after its time, and its record says so.
    pub past_due: bool,
}

/// Decides the catch-up after downtime.
///
/// `last_fired` is the latest occurrence the worker (or any replica) handled for this
/// runbook: fired, queued or recorded as Skipped. Occurrences in `(last_fired, now]` were
/// missed. With [`MissedPolicy::RunOnce`] only the most recent of them runs, and only when
/// it is at most `max_lateness` old (`None`: no limit); older misses are dropped, however
/// many there were. Occurrences outside `window` never count. A runbook that never fired
/// (`last_fired` is `None`, e.g. a new file) has nothing to catch up.
pub fn missed_run(
    schedule: &Schedule,
    window: &Window,
    last_fired: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    policy: MissedPolicy,
    max_lateness: Option<Duration>,
) -> Option<CatchUp> {
    if policy == MissedPolicy::Skip {
        return None;
    }
    let last_fired = last_fired?;
    let latest = schedule.latest_at_or_before(now)?;
    if latest <= last_fired || !window.contains(latest) {
        return None;
    }
    if let Some(limit) = max_lateness {
        let lateness = (now - latest).to_std().unwrap_or(Duration::ZERO);
        if lateness > limit {
            return None;
        }
    }
    Some(CatchUp {
        scheduled_for: latest,
        past_due: true,
    })
}

/// Why an occurrence is recorded as Skipped instead of run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// `overlap = "skip"` and a job of the runbook is running.
    AlreadyRunning,
    /// `overlap = "queue"` and one occurrence already waits.
    QueueFull,
}

impl SkipReason {
    /// The sentence stored as the Skipped job's error summary.
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::AlreadyRunning => {
                "skipped: the previous job of this runbook was still running (overlap = \"skip\")"
            }
            SkipReason::QueueFull => {
                "skipped: a job of this runbook was running and another was already queued (overlap = \"queue\" keeps at most one waiting)"
            }
        }
    }
}

/// What to do with a new occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum OverlapDecision {
    /// Nothing of the runbook runs: start it.
    Start,
    /// Record it as Skipped, with the reason.
    Skip { reason: SkipReason },
    /// Record it as Queued and start it when the running job ends.
    Queue,
    /// Cancel the running job, then start this one.
    CancelRunningThenStart,
}

/// Decides what happens to a new occurrence given whether a job of the same runbook is
/// running and whether one already waits in its queue (the queue holds at most one, so a
/// burst of occurrences behind a long job starts one job afterwards, not a backlog).
pub fn decide_overlap(policy: OverlapPolicy, running: bool, queued: bool) -> OverlapDecision {
    if !running {
        return OverlapDecision::Start;
    }
    match policy {
        OverlapPolicy::Skip => OverlapDecision::Skip {
            reason: SkipReason::AlreadyRunning,
        },
        OverlapPolicy::Queue if queued => OverlapDecision::Skip {
            reason: SkipReason::QueueFull,
        },
        OverlapPolicy::Queue => OverlapDecision::Queue,
        OverlapPolicy::Replace => OverlapDecision::CancelRunningThenStart,
    }
}

/// A deterministic delay in `[0, jitter)` for one occurrence of one runbook, with
/// millisecond resolution.
///
/// It spreads runbooks that share a minute over `jitter` without randomness: the value is
/// derived from SHA-256 of the runbook name and the occurrence instant, so every replica
/// (and every restart) computes the same delay, and the occurrence keeps its identity
/// (`scheduled_for` stays the unjittered instant; only the start is delayed).
pub fn jitter_offset(runbook: &str, occurrence: DateTime<Utc>, jitter: Duration) -> Duration {
    let span_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    if span_ms == 0 {
        return Duration::ZERO;
    }
    let mut hasher = Sha256::new();
    hasher.update(runbook.as_bytes());
    hasher.update([0u8]);
    hasher.update(occurrence.timestamp_millis().to_be_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_be_bytes(first) % span_ms)
}

/// The `start_at` / `end_at` window of a runbook: occurrences at or after `start_at` and
/// strictly before `end_at` fire (Azure Automation's start time and expiry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
}

impl Window {
    /// No limits.
    pub const ALWAYS: Window = Window {
        start_at: None,
        end_at: None,
    };

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start_at.is_none_or(|start| at >= start) && self.end_at.is_none_or(|end| at < end)
    }

    /// True when no occurrence after `now` can fire any more.
    pub fn has_ended(&self, now: DateTime<Utc>) -> bool {
        self.end_at.is_some_and(|end| now >= end)
    }

    /// The next occurrence strictly after `after` that lies inside the window, or `None`
    /// when the schedule has ended.
    pub fn next_fire(&self, schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Searching from just before `start_at` finds an occurrence exactly at `start_at`.
        let from = match self.start_at {
            Some(start) if start > after => start
                .checked_sub_signed(chrono::Duration::nanoseconds(1))
                .unwrap_or(start),
            _ => after,
        };
        let next = schedule.next_after(from)?;
        self.contains(next).then_some(next)
    }
}

/// Whether an Interrupted job should start again.
pub fn rerun_after_interrupt(policy: OnInterrupt) -> bool {
    policy == OnInterrupt::Rerun
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
            .with_timezone(&Utc)
    }

    fn daily_at_six_utc() -> Schedule {
        Schedule::new(&["0 6 * * *".to_string()], chrono_tz::UTC).unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn missed_runs_follow_is_past_due_semantics() {
        // (policy, last fired, now, max lateness, window, expected catch-up, why)
        type Case<'a> = (
            MissedPolicy,
            Option<&'a str>,
            &'a str,
            Option<Duration>,
            Window,
            Option<&'a str>,
            &'a str,
        );
        let after_the_miss = Window {
            start_at: Some(utc("2026-03-05T07:00:00Z")),
            end_at: None,
        };
        let ended = Window {
            start_at: None,
            end_at: Some(utc("2026-03-05T06:00:00Z")),
        };
        let cases: &[Case] = &[
            (
                MissedPolicy::RunOnce,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T08:00:00Z",
                None,
                Window::ALWAYS,
                Some("2026-03-05T06:00:00Z"),
                "four misses give one catch-up, for the most recent",
            ),
            (
                MissedPolicy::Skip,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T08:00:00Z",
                None,
                Window::ALWAYS,
                None,
                "missed = skip never catches up",
            ),
            (
                MissedPolicy::RunOnce,
                Some("2026-03-05T06:00:00Z"),
                "2026-03-05T08:00:00Z",
                None,
                Window::ALWAYS,
                None,
                "nothing was missed since the last fire",
            ),
            (
                MissedPolicy::RunOnce,
                None,
                "2026-03-05T08:00:00Z",
                None,
                Window::ALWAYS,
                None,
                "a runbook that never fired has nothing to catch up",
            ),
            (
                MissedPolicy::RunOnce,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T08:00:00Z",
                Some(2 * HOUR),
                Window::ALWAYS,
                Some("2026-03-05T06:00:00Z"),
                "exactly max_lateness late still catches up",
            ),
            (
                MissedPolicy::RunOnce,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T08:00:01Z",
                Some(2 * HOUR),
                Window::ALWAYS,
                None,
                "later than max_lateness is dropped",
            ),
            (
                MissedPolicy::RunOnce,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T06:00:00Z",
                Some(Duration::ZERO),
                Window::ALWAYS,
                Some("2026-03-05T06:00:00Z"),
                "an occurrence due exactly now counts (lateness zero)",
            ),
            (
                MissedPolicy::RunOnce,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T08:00:00Z",
                None,
                after_the_miss,
                None,
                "a miss before start_at does not count",
            ),
            (
                MissedPolicy::RunOnce,
                Some("2026-03-01T06:00:00Z"),
                "2026-03-05T08:00:00Z",
                None,
                ended,
                None,
                "a miss at or after end_at does not count",
            ),
        ];
        let schedule = daily_at_six_utc();
        for (policy, last, now, max_lateness, window, expected, why) in cases {
            let got = missed_run(
                &schedule,
                window,
                last.map(utc),
                utc(now),
                *policy,
                *max_lateness,
            );
            let expected = expected.map(|at| CatchUp {
                scheduled_for: utc(at),
                past_due: true,
            });
            assert_eq!(got, expected, "{why}");
        }
    }

    #[test]
    fn overlap_decisions_cover_every_policy_and_state() {
        use OverlapDecision::*;
        use OverlapPolicy as P;
        let cases = [
            (P::Skip, false, false, Start),
            (
                P::Skip,
                true,
                false,
                Skip {
                    reason: SkipReason::AlreadyRunning,
                },
            ),
            (P::Queue, false, false, Start),
            (P::Queue, true, false, Queue),
            (
                P::Queue,
                true,
                true,
                Skip {
                    reason: SkipReason::QueueFull,
                },
            ),
            (P::Replace, false, false, Start),
            (P::Replace, true, false, CancelRunningThenStart),
            (P::Replace, true, true, CancelRunningThenStart),
        ];
        for (policy, running, queued, expected) in cases {
            assert_eq!(
                decide_overlap(policy, running, queued),
                expected,
                "{policy:?} running={running} queued={queued}"
            );
        }
    }

    #[test]
    fn jitter_is_deterministic_bounded_and_spread() {
        let at = utc("2026-03-05T06:00:00Z");
        let jitter = Duration::from_secs(60);
        let a = jitter_offset("archive-mailboxes", at, jitter);
        assert_eq!(a, jitter_offset("archive-mailboxes", at, jitter));
        assert!(a < jitter);
        assert_eq!(jitter_offset("x", at, Duration::ZERO), Duration::ZERO);

        // 200 runbooks at the same minute land in many different seconds.
        let mut seconds: Vec<u64> = (0..200)
            .map(|i| jitter_offset(&format!("runbook-{i}"), at, jitter).as_secs())
            .collect();
        assert!(seconds.iter().all(|s| *s < 60));
        seconds.sort_unstable();
        seconds.dedup();
        assert!(
            seconds.len() > 40,
            "only {} distinct seconds",
            seconds.len()
        );

        // The same runbook gets different offsets on different occurrences.
        let offsets: Vec<_> = (0..10)
            .map(|d| jitter_offset("r", at + chrono::Duration::days(d), jitter))
            .collect();
        let mut distinct = offsets.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 1, "{offsets:?}");
    }

    #[test]
    fn the_window_includes_start_and_excludes_end() {
        let schedule = daily_at_six_utc();
        let window = Window {
            start_at: Some(utc("2026-03-02T06:00:00Z")),
            end_at: Some(utc("2026-03-04T06:00:00Z")),
        };
        let cases = [
            ("2026-03-01T00:00:00Z", Some("2026-03-02T06:00:00Z")),
            ("2026-03-02T06:00:00Z", Some("2026-03-03T06:00:00Z")),
            ("2026-03-03T06:00:00Z", None),
            ("2026-03-10T00:00:00Z", None),
        ];
        for (after, expected) in cases {
            assert_eq!(
                window.next_fire(&schedule, utc(after)),
                expected.map(utc),
                "after {after}"
            );
        }
        assert!(!window.has_ended(utc("2026-03-04T05:59:59Z")));
        assert!(window.has_ended(utc("2026-03-04T06:00:00Z")));
        assert_eq!(
            Window::ALWAYS.next_fire(&schedule, utc("2026-03-10T00:00:00Z")),
            Some(utc("2026-03-10T06:00:00Z"))
        );
    }

    #[test]
    fn policies_read_their_runbook_file_spelling() {
        #[derive(Deserialize)]
        struct Keys {
            overlap: OverlapPolicy,
            missed: MissedPolicy,
            on_interrupt: OnInterrupt,
        }
        let keys: Keys = toml::from_str(
            "overlap = \"replace\"\nmissed = \"run-once\"\non_interrupt = \"rerun\"",
        )
        .unwrap();
        assert_eq!(keys.overlap, OverlapPolicy::Replace);
        assert_eq!(keys.missed, MissedPolicy::RunOnce);
        assert_eq!(keys.on_interrupt, OnInterrupt::Rerun);
        assert!(rerun_after_interrupt(keys.on_interrupt));
        assert!(!rerun_after_interrupt(OnInterrupt::default()));
        assert!(
            toml::from_str::<Keys>(
                "overlap = \"allow\"\nmissed = \"skip\"\non_interrupt = \"ignore\""
            )
            .is_err()
        );
    }
}
