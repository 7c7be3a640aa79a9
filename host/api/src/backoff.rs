//! Capped exponential backoff with jitter, shared by every reconnect and retry loop.

use std::time::Duration;

use rand::Rng;

/// First delay after a failure: short enough to ride out a blip.
pub const DEFAULT_BASE: Duration = Duration::from_millis(500);
/// Longest delay: an exchange that is down for an hour is retried once a minute, not hammered.
pub const DEFAULT_CAP: Duration = Duration::from_secs(60);

/// Delays grow as base * 2^attempt up to `cap`; each is drawn uniformly between `base` and that
/// ceiling ("full jitter" above a floor), so a burst of disconnects does not come back as a
/// burst of reconnects, and no delay is ever zero (no tight crash loop).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap: cap.max(base), attempt: 0 }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        if ceiling <= self.base {
            return self.base;
        }
        let ms = rand::rng().random_range(self.base.as_millis() as u64..=ceiling.as_millis() as u64);
        Duration::from_millis(ms)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BASE, DEFAULT_CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_between_base_and_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut max_seen = Duration::ZERO;
        for i in 0..50 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100), "attempt {i}: {d:?}");
            assert!(d <= Duration::from_secs(2), "attempt {i}: {d:?}");
            max_seen = max_seen.max(d);
        }
        assert!(max_seen > Duration::from_millis(400), "never grew: {max_seen:?}");
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
