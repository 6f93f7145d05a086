//! Reconnection delays: exponential growth from `base`, capped at `cap`,
//! with "full jitter" (a uniformly random delay up to the current bound) so
//! that many clients that lost the same gateway do not reconnect in step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The upper bound for the next delay: `base * 2^attempt`, at most `cap`.
    pub fn bound(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay to wait, and one step more for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.bound();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = bound.as_nanos().min(u64::MAX as u128) as u64;
        // At least a tenth of the bound, so retries never become a busy loop.
        Duration::from_nanos(fastrand::u64(nanos / 10..=nanos))
    }

    /// Call after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut bounds = Vec::new();
        for _ in 0..8 {
            bounds.push(b.bound());
            let delay = b.next_delay();
            assert!(delay <= *bounds.last().unwrap());
            assert!(delay >= *bounds.last().unwrap() / 10);
        }
        let ms: Vec<u128> = bounds.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.bound(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut delays = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            b.next_delay();
            delays.insert(b.next_delay());
        }
        assert!(delays.len() > 10, "delays are randomised");
    }
}
