//! At most one message per runbook per `notify.min_interval` (pure: `now` is passed in).
//!
//! A burst of failures of one runbook sends its first message; the ones after it within
//! the interval are suppressed and counted, and the count rides on the runbook's next
//! message. `recovered` always goes out (with the count): holding it back would leave
//! people believing the runbook still fails. Memory is bounded: at most `capacity`
//! runbooks are remembered; when full, entries whose interval passed and that carry no
//! count go first, then the oldest.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// What to do with a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Send it, telling how many were suppressed since the last message.
    Send { suppressed: u64 },
    /// Hold it back (counted for the next message).
    Suppress,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    last_sent: DateTime<Utc>,
    suppressed: u64,
}

#[derive(Debug)]
pub struct Throttle {
    min_interval: chrono::Duration,
    capacity: usize,
    runbooks: HashMap<String, Entry>,
}

/// How many runbooks the throttle remembers by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

impl Throttle {
    pub fn new(min_interval: Duration, capacity: usize) -> Self {
        Self {
            min_interval: chrono::Duration::from_std(min_interval).unwrap_or(chrono::Duration::MAX),
            capacity: capacity.max(1),
            runbooks: HashMap::new(),
        }
    }

    /// Decides for a notice of `runbook` at `now`; `bypass` sends it whatever the interval
    /// (used for `recovered`).
    pub fn admit(&mut self, runbook: &str, now: DateTime<Utc>, bypass: bool) -> Admit {
        if let Some(entry) = self.runbooks.get_mut(runbook) {
            let due = now - entry.last_sent >= self.min_interval;
            if due || bypass || self.min_interval <= chrono::Duration::zero() {
                let suppressed = std::mem::take(&mut entry.suppressed);
                entry.last_sent = now;
                return Admit::Send { suppressed };
            }
            entry.suppressed = entry.suppressed.saturating_add(1);
            return Admit::Suppress;
        }
        if self.runbooks.len() >= self.capacity {
            self.evict(now);
        }
        self.runbooks.insert(
            runbook.to_string(),
            Entry {
                last_sent: now,
                suppressed: 0,
            },
        );
        Admit::Send { suppressed: 0 }
    }

    /// Runbooks remembered now (for tests of the bound).
    pub fn len(&self) -> usize {
        self.runbooks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runbooks.is_empty()
    }

    fn evict(&mut self, now: DateTime<Utc>) {
        let interval = self.min_interval;
        self.runbooks
            .retain(|_, e| e.suppressed > 0 || now - e.last_sent < interval);
        while self.runbooks.len() >= self.capacity {
            let Some(oldest) = self
                .runbooks
                .iter()
                .min_by_key(|(_, e)| e.last_sent)
                .map(|(name, _)| name.clone())
            else {
                break;
            };
            self.runbooks.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap()
            + chrono::Duration::minutes(minutes)
    }

    #[test]
    fn a_burst_sends_once_and_the_next_message_carries_the_count() {
        let mut th = Throttle::new(Duration::from_secs(15 * 60), 100);
        assert_eq!(th.admit("a", t(0), false), Admit::Send { suppressed: 0 });
        assert_eq!(th.admit("a", t(1), false), Admit::Suppress);
        assert_eq!(th.admit("a", t(2), false), Admit::Suppress);
        // Another runbook is not held back by a's burst.
        assert_eq!(th.admit("b", t(2), false), Admit::Send { suppressed: 0 });
        assert_eq!(th.admit("a", t(14), false), Admit::Suppress);
        assert_eq!(th.admit("a", t(15), false), Admit::Send { suppressed: 3 });
        assert_eq!(th.admit("a", t(16), false), Admit::Suppress);
    }

    #[test]
    fn recovered_bypasses_the_interval_and_reports_the_count() {
        let mut th = Throttle::new(Duration::from_secs(15 * 60), 100);
        th.admit("a", t(0), false);
        th.admit("a", t(1), false);
        assert_eq!(th.admit("a", t(2), true), Admit::Send { suppressed: 1 });
        assert_eq!(th.admit("a", t(3), false), Admit::Suppress);
    }

    #[test]
    fn memory_stays_bounded_and_keeps_pending_counts_first() {
        let mut th = Throttle::new(Duration::from_secs(60), 3);
        th.admit("keep", t(0), false);
        assert_eq!(th.admit("keep", t(0), false), Admit::Suppress);
        for i in 0..50 {
            th.admit(&format!("r{i}"), t(10 + i), false);
            assert!(th.len() <= 3, "{}", th.len());
        }
        assert_eq!(
            th.admit("keep", t(100), false),
            Admit::Send { suppressed: 1 }
        );
    }

    #[test]
    fn a_zero_interval_never_suppresses() {
        let mut th = Throttle::new(Duration::ZERO, 10);
        for _ in 0..3 {
            assert_eq!(th.admit("a", t(0), false), Admit::Send { suppressed: 0 });
        }
    }
}
