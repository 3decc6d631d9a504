//! When to refresh a token and how to retry a failed token request. Pure: every function
//! takes the times and the random jitter sample as arguments and does no I/O, so the rules
//! are checked by table-driven tests below.
//!
//! The refresh rule follows MSAL and the issue: tokens that live longer than two hours are
//! refreshed at half their lifetime, others five minutes before they expire. The retry rule
//! follows Microsoft's managed-identity guidance: 404, 408, 410, 429 and 5xx are transient
//! and retried with exponential backoff and jitter, 410 for at least 70 seconds; 400 and
//! other 4xx are never retried.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::EndpointFault;

/// Refresh this long before expiry at the latest (the SDKs' and MSAL's convention).
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Tokens that live longer than this are refreshed at half their lifetime.
pub const HALF_LIFE_ABOVE: Duration = Duration::from_secs(2 * 60 * 60);
/// A cached token is handed out until this long before it expires (or a tenth of its
/// lifetime for very short tokens), so a request that starts with it does not carry an
/// already-expired token.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// When to refresh a token fetched at `issued` that expires at `expires`; never earlier than
/// `now` (a result equal to `now` means "refresh at once").
///
/// Tokens over two hours: half-life (a 24 h IMDS token is refreshed after 12 h, leaving
/// hours to ride out an endpoint outage). Others: five minutes before expiry, but never
/// before half-life, so a token shorter than ten minutes is not refetched on every call (the
/// SDK's weakness with tokens under five minutes).
pub fn refresh_at(
    issued: DateTime<Utc>,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let lifetime = expires - issued;
    let half_life = issued + lifetime / 2;
    let at = if lifetime > chrono_duration(HALF_LIFE_ABOVE) {
        half_life
    } else {
        (expires - chrono_duration(REFRESH_BEFORE_EXPIRY)).max(half_life)
    };
    at.max(now)
}

/// Until when a cached token is handed out to callers.
pub fn usable_until(issued: DateTime<Utc>, expires: DateTime<Utc>) -> DateTime<Utc> {
    let lifetime = (expires - issued).max(chrono::Duration::zero());
    expires - (lifetime / 10).min(chrono_duration(EXPIRY_MARGIN))
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What to do about a failed token request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// Retry with backoff (404, 408, 410, 429, 5xx, a timeout, a connection that broke, or
    /// a refused connection at an endpoint that has answered before).
    Transient,
    /// 400: the identity is not assigned, or several are and none was named. Never retried.
    NotAssigned,
    /// Another 4xx (401, 403, 405 …): a bug or a misconfigured endpoint. Never retried.
    Rejected,
    /// Nothing listens at the endpoint and nothing ever has: not on Azure, or the wrong
    /// source. Failing at once keeps `runbook-worker token` fast off Azure.
    NoEndpoint,
}

/// Classifies a fault. `reached_before` says whether this endpoint has ever answered: a
/// refused connection is then an endpoint restarting (transient), not a missing one.
pub fn classify(fault: &EndpointFault, reached_before: bool) -> FaultClass {
    match fault {
        EndpointFault::Status { status, .. } => match *status {
            400 => FaultClass::NotAssigned,
            404 | 408 | 410 | 429 | 500..=599 => FaultClass::Transient,
            _ => FaultClass::Rejected,
        },
        EndpointFault::Timeout { .. } | EndpointFault::Broken { .. } => FaultClass::Transient,
        EndpointFault::Unreachable { .. } if reached_before => FaultClass::Transient,
        EndpointFault::Unreachable { .. } => FaultClass::NoEndpoint,
    }
}

/// Retry timings for token requests, in one place. [`RetryPolicy::default`] holds the
/// production values; tests build one with milliseconds so that a scripted outage of
/// "70 units" takes 70 ms instead of 70 s.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry; doubles with each further retry.
    pub initial_delay: Duration,
    /// Upper bound of one backoff delay.
    pub max_delay: Duration,
    /// Retries of a transient fault other than 410 before giving up.
    pub max_retries: u32,
    /// 410 ("IMDS is updating, available within 70 s") is retried until this long after
    /// the first 410, whatever `max_retries` says.
    pub gone_window: Duration,
    /// Upper bound of one delay while retrying 410 (MSAL polls every 10 s).
    pub gone_max_delay: Duration,
    /// What one unit of a `Retry-After` header is worth: one second in production; tests
    /// scale it down with everything else.
    pub retry_after_unit: Duration,
    /// `Retry-After` values beyond this are capped.
    pub max_retry_after: Duration,
    /// Each delay is varied by up to this fraction either way, so replicas and processes
    /// sharing an endpoint do not retry in step.
    pub jitter: f64,
    /// How long one attempt may take (connect, answer, body) before it counts as a timeout.
    pub attempt_timeout: Duration,
    /// How long connecting may take; a failure to connect means "no endpoint".
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    /// Production values: Microsoft's guidance (exponential backoff from 1 s; 410 for at
    /// least 70 s; honour Retry-After) with a 2 s connect timeout so that off Azure the
    /// answer comes in seconds rather than after the SDK's 20 s.
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_retries: 5,
            gone_window: Duration::from_secs(70),
            gone_max_delay: Duration::from_secs(10),
            retry_after_unit: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(60),
            jitter: 0.2,
            attempt_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// The un-jittered backoff before retry number `retries_done + 1`.
    pub fn backoff(&self, retries_done: u32) -> Duration {
        let factor = 2u32.checked_pow(retries_done.min(20)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// `delay` varied by the jitter fraction; `sample` is uniform in `[0, 1)`.
    pub fn jittered(&self, delay: Duration, sample: f64) -> Duration {
        let spread = self.jitter.clamp(0.0, 1.0) * (2.0 * sample.clamp(0.0, 1.0) - 1.0);
        delay.mul_f64((1.0 + spread).max(0.0))
    }

    /// How long to wait before retrying `fault`, or `None` to give up. `retries_done` counts
    /// the retries already made in this fetch; `gone_for` is how long the endpoint has been
    /// answering 410 (since its first 410 in this fetch); `sample` is uniform in `[0, 1)`.
    /// Only meaningful for faults [`classify`] calls transient.
    pub fn next_delay(
        &self,
        fault: &EndpointFault,
        retries_done: u32,
        gone_for: Option<Duration>,
        sample: f64,
    ) -> Option<Duration> {
        if let EndpointFault::Status { status: 410, .. } = fault {
            if gone_for.unwrap_or_default() >= self.gone_window {
                return None;
            }
            let delay = self.backoff(retries_done).min(self.gone_max_delay);
            return Some(self.jittered(delay, sample));
        }
        if retries_done >= self.max_retries {
            return None;
        }
        let delay = self.jittered(self.backoff(retries_done), sample);
        let retry_after = match fault {
            EndpointFault::Status {
                retry_after: Some(units),
                ..
            } => Some(
                self.retry_after_unit
                    .checked_mul(u32::try_from(*units).unwrap_or(u32::MAX))
                    .unwrap_or(self.max_retry_after)
                    .min(self.max_retry_after),
            ),
            _ => None,
        };
        // As the SDKs do: the server's hint wins when it asks for longer than our backoff.
        Some(retry_after.map_or(delay, |hint| hint.max(delay)))
    }

    /// The pause between two failed background refresh rounds (each round already made its
    /// own retries): a slower cadence than within a fetch, so a long outage does not turn
    /// into a request storm.
    pub fn refresh_round_delay(&self, failed_rounds: u32, sample: f64) -> Duration {
        self.jittered(self.backoff(failed_rounds.saturating_add(2)), sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    const MIN: i64 = 60;
    const HOUR: i64 = 3600;

    #[test]
    fn refresh_happens_at_half_life_or_five_minutes_before_expiry() {
        // (issued, expires, now, expected refresh time)
        let cases = [
            // 24 h IMDS token: half-life.
            (0, 24 * HOUR, 0, 12 * HOUR),
            // Just over 2 h: half-life is earlier than 5 min before expiry.
            (0, 2 * HOUR + 2 * MIN, 0, HOUR + MIN),
            // Exactly 2 h is not "over 2 h": 5 min before expiry.
            (0, 2 * HOUR, 0, 2 * HOUR - 5 * MIN),
            // 1 h token: 5 min before expiry.
            (0, HOUR, 0, 55 * MIN),
            // 4 min token: half-life rather than "already due".
            (0, 4 * MIN, 0, 2 * MIN),
            // 60 s token: half-life.
            (100, 160, 100, 130),
            // Due in the past (a refresh failed and time went on): now.
            (0, HOUR, 58 * MIN, 58 * MIN),
            // Expired on arrival: now.
            (0, 0, 10, 10),
        ];
        for (issued, expires, now, expected) in cases {
            assert_eq!(
                refresh_at(t(issued), t(expires), t(now)),
                t(expected),
                "issued {issued}, expires {expires}, now {now}"
            );
        }
    }

    #[test]
    fn a_token_is_usable_until_shortly_before_it_expires() {
        let cases = [
            // (issued, expires, usable until)
            (0, 24 * HOUR, 24 * HOUR - 30),
            (0, 60, 54),
            (0, 0, 0),
            (10, 0, 0),
        ];
        for (issued, expires, expected) in cases {
            assert_eq!(
                usable_until(t(issued), t(expires)),
                t(expected),
                "{issued}..{expires}"
            );
        }
    }

    fn status(status: u16) -> EndpointFault {
        EndpointFault::Status {
            status,
            retry_after: None,
            error: None,
            description: None,
        }
    }

    #[test]
    fn faults_are_classified_per_microsofts_guidance() {
        let unreachable = EndpointFault::Unreachable {
            endpoint: "http://169.254.169.254".into(),
            reason: "connection refused".into(),
        };
        let timeout = EndpointFault::Timeout {
            endpoint: "http://169.254.169.254".into(),
            timeout: Duration::from_secs(1),
        };
        let cases = [
            (status(400), false, FaultClass::NotAssigned),
            (status(401), true, FaultClass::Rejected),
            (status(403), true, FaultClass::Rejected),
            (status(405), true, FaultClass::Rejected),
            (status(404), true, FaultClass::Transient),
            (status(408), true, FaultClass::Transient),
            (status(410), true, FaultClass::Transient),
            (status(429), true, FaultClass::Transient),
            (status(500), true, FaultClass::Transient),
            (status(503), false, FaultClass::Transient),
            (status(599), true, FaultClass::Transient),
            (timeout.clone(), false, FaultClass::Transient),
            (
                EndpointFault::Broken {
                    endpoint: "http://169.254.169.254".into(),
                    reason: "connection reset".into(),
                },
                false,
                FaultClass::Transient,
            ),
            (unreachable.clone(), false, FaultClass::NoEndpoint),
            (unreachable, true, FaultClass::Transient),
        ];
        for (fault, reached, expected) in cases {
            assert_eq!(classify(&fault, reached), expected, "{fault:?} {reached}");
        }
    }

    #[test]
    fn production_backoff_doubles_from_one_second_and_gives_up_after_five_retries() {
        let policy = RetryPolicy::default();
        // A sample of 0.5 means no jitter.
        let delays: Vec<_> = (0..7)
            .map(|n| policy.next_delay(&status(500), n, None, 0.5))
            .collect();
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            delays,
            vec![secs(1), secs(2), secs(4), secs(8), secs(16), None, None]
        );
        assert_eq!(policy.backoff(10), Duration::from_secs(30), "capped");
    }

    #[test]
    fn gone_is_retried_for_at_least_seventy_seconds_whatever_the_retry_count() {
        let policy = RetryPolicy::default();
        let gone = status(410);
        // (retries done, time since the first 410, expected delay in s or None)
        let cases = [
            (0, 0, Some(1)),
            (3, 15, Some(8)),
            (4, 31, Some(10)),
            (9, 69, Some(10)),
            (20, 69, Some(10)),
            (5, 70, None),
            (6, 95, None),
        ];
        for (retries, gone_for, expected) in cases {
            assert_eq!(
                policy.next_delay(&gone, retries, Some(Duration::from_secs(gone_for)), 0.5),
                expected.map(Duration::from_secs),
                "retries {retries}, gone for {gone_for} s"
            );
        }
        // The delays of a persistent 410 add up to more than the window before giving up.
        let mut elapsed = Duration::ZERO;
        let mut retries = 0;
        while let Some(delay) = policy.next_delay(&gone, retries, Some(elapsed), 0.5) {
            elapsed += delay;
            retries += 1;
        }
        assert!(elapsed >= policy.gone_window, "{elapsed:?}");
    }

    #[test]
    fn retry_after_wins_when_longer_than_the_backoff_and_is_capped() {
        let policy = RetryPolicy::default();
        let throttled = |secs| EndpointFault::Status {
            status: 429,
            retry_after: Some(secs),
            error: None,
            description: None,
        };
        let cases = [(5, 0, 5), (1, 3, 8), (3600, 0, 60)];
        for (retry_after, retries, expected) in cases {
            assert_eq!(
                policy.next_delay(&throttled(retry_after), retries, None, 0.5),
                Some(Duration::from_secs(expected)),
                "Retry-After {retry_after} after {retries} retries"
            );
        }
    }

    #[test]
    fn jitter_spreads_delays_within_the_configured_fraction() {
        let policy = RetryPolicy::default();
        let base = Duration::from_secs(10);
        assert_eq!(policy.jittered(base, 0.0), Duration::from_secs(8));
        assert_eq!(policy.jittered(base, 0.5), base);
        assert!(policy.jittered(base, 0.999_999) <= Duration::from_secs(12));
        assert_eq!(
            policy.jittered(base, 7.0),
            Duration::from_secs(12),
            "clamped"
        );
    }

    #[test]
    fn failed_refresh_rounds_back_off_more_slowly_than_retries() {
        let policy = RetryPolicy::default();
        let rounds: Vec<_> = (0..5)
            .map(|n| policy.refresh_round_delay(n, 0.5).as_secs())
            .collect();
        assert_eq!(rounds, vec![4, 8, 16, 30, 30]);
    }
}
