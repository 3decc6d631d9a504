//! The one source of wall-clock time.
//!
//! Everything that decides by the calendar (schedules, history timestamps, token expiry)
//! asks a [`Clock`] instead of calling `Utc::now()`, so tests can move time without
//! sleeping: tokio's paused time does not move `chrono::Utc::now()`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::watch;

/// Wall-clock time and waiting for it.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Completes when [`Clock::now`] has reached `deadline` (at once if it already has).
    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Sleep in bounded slices and re-read the clock: the wall clock can be stepped
            // (NTP, VM resume) while a monotonic sleep is in progress.
            loop {
                let remaining = deadline - Utc::now();
                let Ok(remaining) = remaining.to_std() else {
                    return;
                };
                if remaining.is_zero() {
                    return;
                }
                tokio::time::sleep(remaining.min(Duration::from_secs(30))).await;
            }
        })
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let (changed, _) = watch::channel(start);
        Self {
            now: Arc::new(Mutex::new(start)),
            changed,
        }
    }

    /// Moves the clock to `to` (never backwards) and wakes every sleeper that is now due.
    pub fn set(&self, to: DateTime<Utc>) {
        let mut now = self.now.lock().expect("clock mutex poisoned");
        if to > *now {
            *now = to;
            self.changed.send_replace(to);
        }
    }

    pub fn advance(&self, by: Duration) {
        let to = self.now() + chrono::Duration::from_std(by).expect("duration in range");
        self.set(to);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().expect("clock mutex poisoned")
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut changed = self.changed.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, so a deadline already passed
            // completes at once.
            let _ = changed.wait_for(|now| *now >= deadline).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_due() {
        let start = Utc.with_ymd_and_hms(2026, 3, 29, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let sleeper = tokio::spawn(clock.sleep_until(start + chrono::Duration::seconds(10)));
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper woke")
            .unwrap();
        assert_eq!(clock.now(), start + chrono::Duration::seconds(10));
    }

    #[test]
    fn manual_clock_never_goes_backwards() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        clock.set(start - chrono::Duration::hours(1));
        assert_eq!(clock.now(), start);
    }
}
