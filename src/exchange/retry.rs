//! What to do after an attempt failed: wait and try again, refresh the token, or stop.
//! Pure: the attempt number, what happened, whether replaying is safe, the time left and
//! a random sample come in; a [`Decision`] goes out.
//!
//! | What happened | read (`Get-`, …) | write |
//! |---|---|---|
//! | 429 | wait `Retry-After` (capped) or back off | same: a throttled request was not executed |
//! | connection refused, nothing sent | back off | same |
//! | 5xx, transient exception, dropped connection | back off | **stop: outcome unknown** |
//! | 401 | refresh the token once | same |
//! | anything else | stop | stop |
//!
//! Backoff is `base · 2ⁿ` capped at `max_delay`, plus up to 25 % jitter so that clients
//! throttled together do not come back together.

use std::time::Duration;

use super::ExchangeSettings;

/// Bounds of the retry loop; built from settings, or by tests with millisecond delays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base_delay: Duration,
    /// Cap of one wait, `Retry-After` included.
    pub max_delay: Duration,
    /// Fraction of the delay added at random (0.25 → up to +25 %).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from_settings(&ExchangeSettings::default())
    }
}

impl RetryPolicy {
    pub fn from_settings(settings: &ExchangeSettings) -> Self {
        Self {
            max_attempts: settings.max_retries.saturating_add(1),
            base_delay: settings.retry_base_delay.get(),
            max_delay: settings.retry_max_delay.get(),
            jitter: 0.25,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry); `sample` in [0, 1).
    pub fn backoff(&self, retry: u32, sample: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(30);
        let nominal = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let extra = nominal.mul_f64(self.jitter * sample.clamp(0.0, 1.0));
        (nominal + extra).min(self.max_delay.max(nominal))
    }

    /// Decides after attempt number `attempt` (1-based) failed with `failure`.
    /// `replay_safe` is true for reads (and writes the caller declared idempotent);
    /// `refreshed` says the token was already refreshed once in this call; `remaining`
    /// is the time left before the deadline.
    pub fn decide(
        &self,
        attempt: u32,
        failure: &Failure,
        replay_safe: bool,
        refreshed: bool,
        remaining: Duration,
        sample: f64,
    ) -> Decision {
        let wait = match failure {
            Failure::Final => return Decision::Stop,
            Failure::Unauthorized { rbac } => {
                return if *rbac || refreshed || attempt >= self.max_attempts {
                    Decision::Stop
                } else {
                    Decision::RefreshToken
                };
            }
            Failure::Throttled { retry_after } => match retry_after {
                Some(after) => (*after).min(self.max_delay),
                None => self.backoff(attempt, sample),
            },
            Failure::NotSent => self.backoff(attempt, sample),
            Failure::ServerError | Failure::Lost => {
                if !replay_safe {
                    return Decision::OutcomeUnknown;
                }
                self.backoff(attempt, sample)
            }
        };
        if attempt >= self.max_attempts || wait >= remaining {
            return Decision::Stop;
        }
        Decision::Retry { after: wait }
    }
}

/// How an attempt failed, as far as retrying is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// 429.
    Throttled { retry_after: Option<Duration> },
    /// The request never left (connection refused, DNS): safe to send again.
    NotSent,
    /// 5xx without a definite cmdlet answer, or a transient exception name.
    ServerError,
    /// Sent, then the connection dropped or the answer never came.
    Lost,
    /// 401. `rbac` is the "User is not allowed to call …" kind, which no token fixes.
    Unauthorized { rbac: bool },
    /// A definite answer (400, 403, 404, a cmdlet exception): trying again changes nothing.
    Final,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Retry {
        after: Duration,
    },
    /// Fetch a new token (passing the claims challenge) and try again at once.
    RefreshToken,
    /// Report the failure.
    Stop,
    /// A write may have been applied: report that, never replay.
    OutcomeUnknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            jitter: 0.25,
        }
    }

    const LOTS: Duration = Duration::from_secs(3600);

    #[test]
    fn backoff_doubles_is_capped_and_jitter_only_adds() {
        let p = policy();
        let table = [
            (1, 0.0, 2_000),
            (2, 0.0, 4_000),
            (5, 0.0, 32_000),
            (6, 0.0, 60_000),
            (40, 0.0, 60_000),
            (1, 0.5, 2_250),
            (1, 0.999, 2_499),
            (6, 0.9, 60_000),
        ];
        for (retry, sample, millis) in table {
            assert_eq!(
                p.backoff(retry, sample).as_millis(),
                millis,
                "retry {retry} sample {sample}"
            );
        }
    }

    #[test]
    fn each_failure_gets_the_documented_decision() {
        let p = policy();
        let retry = |ms| Decision::Retry {
            after: Duration::from_millis(ms),
        };
        let throttled = |s: Option<f64>| Failure::Throttled {
            retry_after: s.map(Duration::from_secs_f64),
        };
        #[rustfmt::skip]
        let table: Vec<(&str, u32, Failure, bool, bool, Duration, Decision)> = vec![
            ("429 honours Retry-After for a read", 1, throttled(Some(1.5)), true, false, LOTS, retry(1500)),
            ("429 honours Retry-After for a write", 1, throttled(Some(1.5)), false, false, LOTS, retry(1500)),
            ("429 Retry-After is capped", 1, throttled(Some(600.0)), false, false, LOTS, retry(60_000)),
            ("429 without Retry-After backs off", 2, throttled(None), false, false, LOTS, retry(4000)),
            ("a 5xx read backs off", 1, Failure::ServerError, true, false, LOTS, retry(2000)),
            ("a 5xx write is not replayed", 1, Failure::ServerError, false, false, LOTS, Decision::OutcomeUnknown),
            ("a dropped read is retried", 3, Failure::Lost, true, false, LOTS, retry(8000)),
            ("a dropped write is not replayed", 1, Failure::Lost, false, false, LOTS, Decision::OutcomeUnknown),
            ("a request never sent is retried even for a write", 1, Failure::NotSent, false, false, LOTS, retry(2000)),
            ("401 refreshes once", 1, Failure::Unauthorized { rbac: false }, false, false, LOTS, Decision::RefreshToken),
            ("401 after a refresh stops", 2, Failure::Unauthorized { rbac: false }, false, true, LOTS, Decision::Stop),
            ("401 for RBAC stops at once", 1, Failure::Unauthorized { rbac: true }, true, false, LOTS, Decision::Stop),
            ("definite answers stop", 1, Failure::Final, true, false, LOTS, Decision::Stop),
            ("the last attempt stops", 6, Failure::ServerError, true, false, LOTS, Decision::Stop),
            ("a wait past the deadline stops", 1, throttled(Some(5.0)), true, false, Duration::from_secs(4), Decision::Stop),
        ];
        for (what, attempt, failure, safe, refreshed, remaining, expected) in table {
            assert_eq!(
                p.decide(attempt, &failure, safe, refreshed, remaining, 0.0),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn settings_give_attempts_and_delays() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 6);
        assert_eq!(p.base_delay, Duration::from_secs(2));
    }
}
