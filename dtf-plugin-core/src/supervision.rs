//! Restart budget and backoff: pure logic, unit tested without actors.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// At most `max_restarts` restarts within any `window`; one more failure disables the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBudget {
    /// Restarts allowed within the window. Default 5. `u32::MAX` is no limit at all
    /// ([`RestartBudget::unlimited`]; `"unlimited"` in a configuration file).
    pub max_restarts: u32,
    /// The sliding window. Default 30 s.
    pub window: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(30),
        }
    }
}

impl RestartBudget {
    /// `max_restarts` within `window`.
    pub const fn new(max_restarts: u32, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
        }
    }

    /// No limit: the plugin is restarted after every failure.
    pub const fn unlimited() -> Self {
        Self {
            max_restarts: u32::MAX,
            window: Duration::from_secs(1),
        }
    }
}

/// Exponential backoff between restarts: `initial · factorⁿ`, capped at `max`, where `n` is the
/// number of restarts still inside the budget window; then jittered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay. Default 100 ms.
    pub initial: Duration,
    /// The cap. Default 10 s.
    pub max: Duration,
    /// The growth factor. Default 2.
    pub factor: f64,
    /// Fraction of the delay that is randomized, in `0.0..=1.0`: the delay is drawn uniformly
    /// from `[d·(1−jitter), d]`. Default 0.5 ("equal jitter"); 0 makes delays exact.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// No delay at all (for tests and plugins that must come back at once).
    pub const fn none() -> Self {
        Self {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            factor: 1.0,
            jitter: 0.0,
        }
    }

    /// The delay before restart number `n + 1` (`n` restarts already in the window), with
    /// `unit` a uniform random number in `[0, 1)`.
    pub fn delay(&self, n: u32, unit: f64) -> Duration {
        let exp = self
            .factor
            .max(1.0)
            .powi(i32::try_from(n).unwrap_or(i32::MAX));
        let raw = self.initial.as_secs_f64() * exp;
        let capped = raw.min(self.max.as_secs_f64()).max(0.0);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let d = capped * (1.0 - jitter * unit.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(d).unwrap_or(self.max)
    }
}

/// The restarts of one plugin inside the budget window.
#[derive(Debug, Default)]
pub(crate) struct RestartTracker {
    recent: VecDeque<Instant>,
}

/// Restarts remembered under [`RestartBudget::unlimited`]: only the backoff's exponent reads
/// them, and it reaches its cap long before.
const UNLIMITED_HISTORY: usize = 64;

impl RestartTracker {
    /// Forgets restarts older than the window; returns how many remain.
    pub(crate) fn in_window(&mut self, budget: &RestartBudget, now: Instant) -> u32 {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= budget.window)
        {
            self.recent.pop_front();
        }
        u32::try_from(self.recent.len()).unwrap_or(u32::MAX)
    }

    /// Whether another restart fits the budget.
    pub(crate) fn allows(&mut self, budget: &RestartBudget, now: Instant) -> bool {
        self.in_window(budget, now) < budget.max_restarts
    }

    /// Records a restart. The history holds at most `max_restarts` entries, which is all the
    /// budget check needs (with that many inside the window, the next failure disables the
    /// plugin): any budget is enforced exactly, in memory proportional to it. The unlimited
    /// budget keeps only enough for the backoff's exponent.
    pub(crate) fn record(&mut self, budget: &RestartBudget, now: Instant) {
        let cap = if budget.max_restarts == u32::MAX {
            UNLIMITED_HISTORY
        } else {
            usize::try_from(budget.max_restarts)
                .unwrap_or(usize::MAX)
                .max(1)
        };
        while self.recent.len() >= cap {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
    }
}

/// A tiny xorshift random source for jittering delays (not for anything security-related):
/// no dependency, no global state. Shared by the manager's restart backoff and the HTTP retry
/// rules of the plugin crates.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Default for Jitter {
    /// Seeded from the clock and the process id, so processes that failed together don't
    /// retry together.
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
        Self::seeded(nanos ^ (u64::from(std::process::id()) << 32))
    }
}

impl Jitter {
    /// A generator with a fixed seed (deterministic; for tests).
    pub fn seeded(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_10s() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let ms: Vec<u128> = (0..9).map(|n| b.delay(n, 0.7).as_millis()).collect();
        assert_eq!(
            ms,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
    }

    #[test]
    fn jitter_stays_within_the_documented_band() {
        let b = Backoff::default();
        let mut j = Jitter::seeded(42);
        for n in 0..6 {
            let full = Backoff { jitter: 0.0, ..b }.delay(n, 0.0);
            for _ in 0..100 {
                let d = b.delay(n, j.unit());
                assert!(
                    d <= full && d >= full / 2,
                    "{d:?} outside [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn budget_counts_restarts_in_a_sliding_window() {
        let budget = RestartBudget::new(2, Duration::from_secs(10));
        let mut t = RestartTracker::default();
        let t0 = Instant::now();
        assert!(t.allows(&budget, t0));
        t.record(&budget, t0);
        t.record(&budget, t0 + Duration::from_secs(5));
        assert!(!t.allows(&budget, t0 + Duration::from_secs(6)));
        // The first restart leaves the window at t0 + 10 s.
        assert!(t.allows(&budget, t0 + Duration::from_secs(10)));
        assert_eq!(t.in_window(&budget, t0 + Duration::from_secs(15)), 0);
    }

    #[test]
    fn a_budget_above_4096_restarts_is_enforced_exactly() {
        // The history used to be capped at 4,096 entries, so any larger budget never ran out.
        for max in [4_097, 10_000] {
            let budget = RestartBudget::new(max, Duration::from_secs(3_600));
            let mut t = RestartTracker::default();
            let t0 = Instant::now();
            for i in 0..max {
                let now = t0 + Duration::from_millis(u64::from(i));
                assert!(t.allows(&budget, now), "restart {i} of {max} refused");
                t.record(&budget, now);
            }
            let next = t0 + Duration::from_millis(u64::from(max));
            assert!(!t.allows(&budget, next), "restart {max} of {max} allowed");
            assert_eq!(t.in_window(&budget, next), max);
        }
    }

    #[test]
    fn the_unlimited_budget_keeps_a_bounded_history() {
        let budget = RestartBudget::unlimited();
        let mut t = RestartTracker::default();
        let t0 = Instant::now();
        for i in 0..100_000 {
            let now = t0 + Duration::from_nanos(i);
            assert!(t.allows(&budget, now));
            t.record(&budget, now);
        }
        assert_eq!(t.recent.len(), UNLIMITED_HISTORY);
    }

    #[test]
    fn jitter_is_uniform_enough() {
        let mut j = Jitter::seeded(7);
        let xs: Vec<f64> = (0..10_000).map(|_| j.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
