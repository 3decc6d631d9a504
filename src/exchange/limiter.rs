//! The tenant-wide limit on requests in flight, shared by every job of one tenant so that
//! parallel runbooks cannot storm it.
//!
//! Exchange Online counts concurrent requests per tenant and answers the excess with 429
//! "maximum number of concurrent requests per tenant". The limit adapts the way TCP does
//! (additive increase, multiplicative decrease): a 429 halves it (never below 1), each
//! success adds `1/limit`, so it climbs back by one per window of successful requests,
//! never above the configured maximum. Only one halving happens per "generation": requests
//! that were already in flight when the limit dropped report their 429s against the old
//! limit and are ignored, so a burst of eight simultaneous 429s halves once, not eight
//! times.
//!
//! [`AimdPolicy`] is the pure arithmetic; [`TenantLimiter`] holds permits on a fair
//! (FIFO) semaphore whose size follows the policy.

use std::sync::Mutex;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Additive-increase / multiplicative-decrease arithmetic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AimdPolicy {
    pub max: u32,
}

impl AimdPolicy {
    /// The limit after a successful request.
    pub fn after_success(&self, limit: f64) -> f64 {
        (limit + 1.0 / limit.max(1.0)).min(f64::from(self.max.max(1)))
    }

    /// The limit after a 429.
    pub fn after_throttle(&self, limit: f64) -> f64 {
        (limit / 2.0).floor().max(1.0)
    }

    /// Requests allowed in flight for a limit.
    pub fn slots(&self, limit: f64) -> u32 {
        // The limit is kept within 1..=max, so the cast cannot truncate anything real.
        (limit.floor() as u32).clamp(1, self.max.max(1))
    }
}

#[derive(Debug)]
struct State {
    limit: f64,
    /// Permits the semaphore stands for (available + held) minus `debt`.
    slots: u32,
    /// Permits to swallow as they come back, after a decrease that could not take them
    /// from the available pool because they were held.
    debt: u32,
    generation: u64,
    in_flight: u32,
    throttles: u64,
}

/// The shared limiter. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct TenantLimiter {
    policy: AimdPolicy,
    semaphore: Semaphore,
    state: Mutex<State>,
}

/// The right to send one request. Released on drop; report the outcome with
/// [`LimiterPermit::succeeded`] or [`LimiterPermit::throttled`] first.
#[derive(Debug)]
pub struct LimiterPermit<'a> {
    limiter: &'a TenantLimiter,
    permit: Option<SemaphorePermit<'a>>,
    generation: u64,
}

impl TenantLimiter {
    /// A limiter allowing up to `max` requests in flight (at least 1).
    pub fn new(max: u32) -> Self {
        let max = max.max(1);
        Self {
            policy: AimdPolicy { max },
            semaphore: Semaphore::new(max as usize),
            state: Mutex::new(State {
                limit: f64::from(max),
                slots: max,
                debt: 0,
                generation: 0,
                in_flight: 0,
                throttles: 0,
            }),
        }
    }

    pub fn from_settings(settings: &super::ExchangeSettings) -> Self {
        Self::new(settings.max_concurrency)
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> LimiterPermit<'_> {
        // The semaphore is never closed, so acquiring cannot fail; a closed one would
        // mean "no limit", which is the safe reading for a limiter.
        let permit = self.semaphore.acquire().await.ok();
        self.granted(permit)
    }

    /// A slot if one is free now.
    pub fn try_acquire(&self) -> Option<LimiterPermit<'_>> {
        let permit = self.semaphore.try_acquire().ok()?;
        Some(self.granted(Some(permit)))
    }

    fn granted<'a>(&'a self, permit: Option<SemaphorePermit<'a>>) -> LimiterPermit<'a> {
        let mut state = self.lock();
        state.in_flight += 1;
        LimiterPermit {
            limiter: self,
            permit,
            generation: state.generation,
        }
    }

    /// The current limit (fractional: it grows by `1/limit` per success).
    pub fn limit(&self) -> f64 {
        self.lock().limit
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.lock().in_flight
    }

    /// 429s reported so far.
    pub fn throttles(&self) -> u64 {
        self.lock().throttles
    }

    pub fn max(&self) -> u32 {
        self.policy.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain numbers;
        // they are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the semaphore to the slots `limit` allows.
    fn resize(&self, state: &mut State) {
        let wanted = self.policy.slots(state.limit);
        if wanted < state.slots {
            let excess = state.slots - wanted;
            let taken = self.semaphore.forget_permits(excess as usize) as u32;
            state.debt += excess - taken;
        } else if wanted > state.slots {
            let grow = wanted - state.slots;
            let forgiven = grow.min(state.debt);
            state.debt -= forgiven;
            self.semaphore.add_permits((grow - forgiven) as usize);
        }
        state.slots = wanted;
    }
}

impl LimiterPermit<'_> {
    /// The request succeeded: the limit creeps up.
    pub fn succeeded(self) {
        let limiter = self.limiter;
        let mut state = limiter.lock();
        state.limit = limiter.policy.after_success(state.limit);
        limiter.resize(&mut state);
        drop(state);
    }

    /// The request got a 429: the limit halves, once per generation.
    pub fn throttled(self) {
        let limiter = self.limiter;
        let mut state = limiter.lock();
        state.throttles += 1;
        if self.generation == state.generation {
            state.limit = limiter.policy.after_throttle(state.limit);
            state.generation += 1;
            limiter.resize(&mut state);
        }
        // The guard goes before `self`, whose drop takes the same lock.
        drop(state);
    }
}

impl Drop for LimiterPermit<'_> {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(permit) = self.permit.take() {
            if state.debt > 0 {
                state.debt -= 1;
                permit.forget();
            } else {
                drop(permit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_halves_on_throttling_and_creeps_back() {
        let p = AimdPolicy { max: 8 };
        let table = [
            (8.0, "throttle", 4.0),
            (5.0, "throttle", 2.0),
            (1.0, "throttle", 1.0),
            (4.0, "success", 4.25),
            (1.0, "success", 2.0),
            (8.0, "success", 8.0),
            (7.9, "success", 8.0),
        ];
        for (limit, event, expected) in table {
            let after = match event {
                "throttle" => p.after_throttle(limit),
                _ => p.after_success(limit),
            };
            assert!((after - expected).abs() < 1e-9, "{limit} {event} → {after}");
        }
        assert_eq!(p.slots(4.9), 4);
        assert_eq!(p.slots(0.2), 1);
        assert_eq!(p.slots(99.0), 8);
    }

    #[test]
    fn climbing_back_from_one_to_eight_takes_a_window_per_step() {
        let p = AimdPolicy { max: 8 };
        let mut limit = 1.0;
        let mut successes = 0;
        while p.slots(limit) < 8 {
            limit = p.after_success(limit);
            successes += 1;
        }
        // About 1 + 2 + … + 7 = 28 successes: each step needs a window of the current
        // size (a little more, as the window grows within the step).
        assert!((28..=35).contains(&successes), "{successes}");
    }

    #[tokio::test]
    async fn a_throttle_halves_the_slots_even_while_they_are_held() {
        let limiter = TenantLimiter::new(8);
        let held: Vec<_> = (0..8).map(|_| limiter.try_acquire().unwrap()).collect();
        assert!(limiter.try_acquire().is_none());
        let mut held = held.into_iter();
        held.next().unwrap().throttled();
        // Later 429s of the same generation do not halve again.
        held.next().unwrap().throttled();
        assert_eq!(limiter.limit(), 4.0);
        assert_eq!(limiter.throttles(), 2);
        drop(held);
        let now: Vec<_> = std::iter::from_fn(|| limiter.try_acquire()).collect();
        assert_eq!(now.len(), 4);
        assert_eq!(limiter.in_flight(), 4);
    }

    #[tokio::test]
    async fn successes_give_the_slots_back_up_to_the_maximum() {
        let limiter = TenantLimiter::new(4);
        limiter.try_acquire().unwrap().throttled();
        assert_eq!(limiter.limit(), 2.0);
        for _ in 0..20 {
            limiter.try_acquire().unwrap().succeeded();
        }
        assert_eq!(limiter.limit(), 4.0);
        let now: Vec<_> = std::iter::from_fn(|| limiter.try_acquire()).collect();
        assert_eq!(now.len(), 4);
    }
}
