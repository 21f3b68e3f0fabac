//! client::backoff: the delays between connection attempts.
//!
//! Owns the exponential backoff with jitter: the n-th delay in a row is drawn uniformly
//! from `min ..= min(max, min * 2^n)`, so it never falls below `min` (a relay that closes
//! at once cannot make the client spin) and attempts from many phones do not line up.
//! Must not: sleep, or decide when the series starts over (the client resets it after a
//! login that lasted, or when connectivity returns).

use std::time::Duration;

use ring::rand::{SecureRandom as _, SystemRandom};

/// The series of reconnect delays.
#[derive(Debug)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Delays handed out since the last reset: the exponent of the current cap.
    attempts: u32,
    /// The system CSPRNG (a handle, no state): only for jitter, but already in the tree.
    rng: SystemRandom,
}

impl Backoff {
    /// A series from `min` up to `max` (`max` below `min` counts as `min`; a zero `min`
    /// counts as 1 ms, so that no delay is ever zero).
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            attempts: 0,
            rng: SystemRandom::new(),
        }
    }

    /// The next delay of the series.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempts = self.attempts.saturating_add(1);
        let spread = cap.saturating_sub(self.min);
        let spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX);
        if spread_ms == 0 {
            return self.min;
        }
        let mut bytes = [0u8; 8];
        let jitter_ms = match self.rng.fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes) % (spread_ms + 1),
            // Without randomness, the middle of the range still backs off.
            Err(_) => spread_ms / 2,
        };
        self.min.saturating_add(Duration::from_millis(jitter_ms))
    }

    /// The largest delay the next call may return.
    pub(crate) fn cap(&self) -> Duration {
        // min * 2^attempts, without overflowing: past 2^20 the cap is max anyway.
        let factor = 1u32 << self.attempts.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Starts the series over: the next delay is `min` again.
    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The largest delay of the series.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_within_bounds_and_resets() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let caps: Vec<u64> = (0..7)
            .map(|_| {
                let cap = backoff.cap();
                let delay = backoff.next_delay();
                assert!(delay >= 100 * MS && delay <= cap, "{delay:?} > {cap:?}");
                cap.as_millis() as u64
            })
            .collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.cap(), 100 * MS);
        assert_eq!(backoff.next_delay(), 100 * MS);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut backoff = Backoff::new(10 * MS, 10_000 * MS);
        let delays: std::collections::HashSet<Duration> = (0..40)
            .map(|_| {
                backoff.attempts = 10;
                backoff.next_delay()
            })
            .collect();
        assert!(delays.len() > 20, "{delays:?}");
    }

    #[test]
    fn degenerate_bounds_never_give_zero() {
        let mut backoff = Backoff::new(Duration::ZERO, Duration::ZERO);
        for _ in 0..100 {
            assert_eq!(backoff.next_delay(), MS);
        }
        let mut backoff = Backoff::new(50 * MS, 10 * MS);
        assert_eq!(backoff.max(), 50 * MS);
        assert_eq!(backoff.next_delay(), 50 * MS);
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::MAX);
        for _ in 0..100 {
            assert!(backoff.next_delay() >= Duration::from_secs(3600));
        }
    }
}
