//! Per-user token buckets for sends: `rate` per second sustained, bursts up
//! to twice that. Kept per replica (a user spread over replicas gets each
//! replica's allowance; see docs/runtime.md).

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::store::UserId;

/// One bucket. Pure: time is passed in.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(capacity: f64, now: Instant) -> Self {
        Self {
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, rate: f64, capacity: f64, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }
}

/// Buckets of every user seen recently.
pub struct RateLimiter {
    rate: f64,
    capacity: f64,
    buckets: Mutex<HashMap<UserId, Bucket>>,
}

impl RateLimiter {
    /// `per_second` sustained, burst `2 * per_second`.
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            capacity: rate * 2.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one send of `user`, or returns `retry_after_ms`.
    pub fn check(&self, user: UserId) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget full buckets of idle users; they start full again anyway.
            let (rate, cap) = (self.rate, self.capacity);
            buckets.retain(|_, b| {
                let mut probe = *b;
                probe.take(rate, cap, now).is_ok() && probe.tokens + 1.0 < cap
            });
        }
        buckets
            .entry(user)
            .or_insert_with(|| Bucket::new(self.capacity, now))
            .take(self.rate, self.capacity, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(4.0, t0);
        for _ in 0..4 {
            assert!(b.take(2.0, 4.0, t0).is_ok());
        }
        let retry = b.take(2.0, 4.0, t0).unwrap_err();
        assert_eq!(retry, 500, "one token every 500 ms at 2/s");
        assert!(b.take(2.0, 4.0, t0 + Duration::from_millis(500)).is_ok());
        assert!(b.take(2.0, 4.0, t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn limiter_is_per_user() {
        let l = RateLimiter::new(1);
        assert!(l.check(1).is_ok() && l.check(1).is_ok());
        assert!(l.check(1).is_err());
        assert!(l.check(2).is_ok());
    }
}
