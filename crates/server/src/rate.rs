//! Token bucket for an account's requests and connections. A peer that
//! has spent its tokens is not answered with errors (which would still
//! cost the gateway a parse and a reply per request) but not read from
//! until the next token: its requests wait in its own socket, at its own
//! cost. The time is always passed in, so the bucket is deterministic.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::RateLimit;

#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token if there is one; otherwise says how long until the
    /// next one.
    pub fn take_or_wait(&mut self, now: Instant) -> Result<(), Duration> {
        if self.try_take(now) {
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(Duration::from_secs_f64(
            missing / f64::from(self.limit.per_second.max(1)),
        ))
    }

    /// Would the bucket be full now? A full bucket says nothing a new one
    /// would not, so maps of buckets drop full ones.
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        let tokens = self.tokens + elapsed.as_secs_f64() * f64::from(self.limit.per_second);
        tokens >= f64::from(self.limit.burst.max(1))
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let refill = elapsed.as_secs_f64() * f64::from(self.limit.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let mut bucket = TokenBucket::new(
            RateLimit {
                per_second: 10,
                burst: 5,
            },
            Instant::now(),
        );
        let taken = (0..20).filter(|_| bucket.try_take(Instant::now())).count();
        assert_eq!(taken, 5, "a full bucket gives its burst at once");
        tokio::time::advance(Duration::from_millis(350)).await;
        let taken = (0..20).filter(|_| bucket.try_take(Instant::now())).count();
        assert_eq!(taken, 3, "then the rate: 10/s for 350 ms");
        tokio::time::advance(Duration::from_secs(60)).await;
        let taken = (0..20).filter(|_| bucket.try_take(Instant::now())).count();
        assert_eq!(taken, 5, "never more than the burst");
        let wait = bucket.take_or_wait(Instant::now()).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::advance(wait).await;
        assert_eq!(bucket.take_or_wait(Instant::now()), Ok(()));
    }
}
