//! Fault tests: how many kill points, and a generator that can replay a run.

use std::time::Duration;

/// Kill points of one fault test: `TANDEM_FAULT_POINTS` if set, else `default` (small,
/// for CI).
pub fn fault_points(default: u32) -> u32 {
    std::env::var("TANDEM_FAULT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift64*) for fault tests, seeded from
/// `TANDEM_FAULT_SEED` or the clock and printed, so that a failing run can be replayed.
pub struct FaultRng {
    state: u64,
    pub seed: u64,
}

impl FaultRng {
    pub fn new() -> FaultRng {
        let seed = std::env::var("TANDEM_FAULT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("fault seed: {seed}");
        FaultRng { state: seed, seed }
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    /// A duration of `0..=max` milliseconds.
    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

impl Default for FaultRng {
    fn default() -> Self {
        Self::new()
    }
}
