//! server::quota: token buckets for the relay's rate limits (registration codes per
//! address and in total, each sender's messages and bytes).
//!
//! Owns the arithmetic only: a [`Rate`] (so many units per period, a whole period's worth
//! at once at most) and a [`Bucket`] that holds the units still allowed. Every operation
//! is O(1) and allocation-free, so the hub can check a quota on every request.
//! Must not: know what is limited, or keep any clock but the `now` it is given.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// So many units per period; a bucket holds at most one period's worth.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rate {
    capacity: f64,
    per_sec: f64,
}

impl Rate {
    /// `amount` units per `period`; `None` when `amount` is 0 (no limit).
    pub(super) fn per(amount: u64, period: Duration) -> Option<Rate> {
        if amount == 0 || period.is_zero() {
            return None;
        }
        let capacity = amount as f64;
        Some(Rate {
            capacity,
            per_sec: capacity / period.as_secs_f64(),
        })
    }
}

/// The units a [`Rate`] still allows now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A bucket that allows a whole period's worth at once.
    pub(super) fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.capacity,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.capacity);
        self.at = now;
    }

    /// How long until `amount` units are allowed: zero if they are now. An amount
    /// larger than the bucket counts as a full bucket.
    pub(super) fn wait(&mut self, rate: Rate, now: Instant, amount: u64) -> Duration {
        self.refill(rate, now);
        let missing = (amount as f64).min(rate.capacity) - self.tokens;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        // Rounded up to a millisecond, so that a retry after it succeeds.
        let ms = (missing / rate.per_sec * 1000.0).ceil();
        Duration::from_millis(ms as u64)
    }

    /// Uses `amount` units (after a `wait` that said zero).
    pub(super) fn take(&mut self, rate: Rate, now: Instant, amount: u64) {
        self.refill(rate, now);
        self.tokens = (self.tokens - (amount as f64).min(rate.capacity)).max(0.0);
    }

    /// Whether the bucket is full again: it then says nothing a new one would not.
    pub(super) fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.capacity
    }
}

/// Whom an address-based limit counts as one: an IPv4 address, or an IPv6 /64 (what
/// one subscriber usually gets; an IPv4-mapped address counts as its IPv4 address).
pub(super) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_period_at_once_then_refills() {
        let rate = Rate::per(3, Duration::from_secs(60)).expect("a rate");
        assert!(Rate::per(0, Duration::from_secs(60)).is_none());
        let start = Instant::now();
        let mut bucket = Bucket::full(rate, start);
        for _ in 0..3 {
            assert_eq!(bucket.wait(rate, start, 1), Duration::ZERO);
            bucket.take(rate, start, 1);
        }
        // One unit comes back every 20 s.
        assert_eq!(bucket.wait(rate, start, 1), Duration::from_secs(20));
        let later = start + Duration::from_secs(10);
        assert_eq!(bucket.wait(rate, later, 1), Duration::from_secs(10));
        assert_eq!(bucket.wait(rate, later, 2), Duration::from_secs(30));
        let later = start + Duration::from_secs(20);
        assert_eq!(bucket.wait(rate, later, 1), Duration::ZERO);
        assert!(!bucket.is_full(rate, later));
        assert!(bucket.is_full(rate, start + Duration::from_secs(3600)));
        // Never more than a period's worth, however long it waited.
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(bucket.wait(rate, much_later, 3), Duration::ZERO);
        assert_eq!(bucket.wait(rate, much_later, 4), Duration::ZERO, "capped");
        bucket.take(rate, much_later, 3);
        assert_eq!(bucket.wait(rate, much_later, 1), Duration::from_secs(20));
    }

    #[test]
    fn addresses_count_per_ipv4_address_and_ipv6_64() {
        let key = |s: &str| address_key(s.parse().expect("an address"));
        assert_eq!(key("192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }
}
