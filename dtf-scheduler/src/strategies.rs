//! The built-in strategies, each registered by name in [`Registry::new`](crate::Registry::new).
//! Each is a small [`Scheduler`] over the machinery the [`Engine`](crate::Engine) shares
//! between them; their bounds and measured figures are in `docs/scheduler.md`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::config::SchedulerConfig;
use crate::error::SchedulerError;
use crate::framework::{QueueHead, QueueId, Scheduler, ScoreWeights, TaskSpec, WorkerView};

/// The queue order "higher priority first, FIFO within a priority, with aging": a task waiting
/// one `aging` longer than another counts as one priority level higher. The order of two
/// tasks never changes while they wait, so it is a static heap key.
fn priority_key(task: &TaskSpec, enqueued_at: Duration, aging: Duration) -> i128 {
    nanos(enqueued_at) - i128::from(task.priority) * nanos(aging)
}

fn nanos(d: Duration) -> i128 {
    d.as_nanos() as i128
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `fifo`: one shared queue in arrival order. The baseline.
#[derive(Debug, Clone, Default)]
pub struct Fifo {
    score: ScoreWeights,
}

impl Fifo {
    /// Reads the score weights from `config`.
    pub fn from_config(config: &SchedulerConfig) -> Self {
        Self {
            score: config.score.unwrap_or_default(),
        }
    }
}

impl Scheduler for Fifo {
    fn name(&self) -> &str {
        "fifo"
    }

    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        self.score.score(task, worker)
    }
}

/// `priority`: one shared queue, higher priority first, FIFO within a priority, and aging: a
/// task that waited `aging_secs` longer counts one priority level higher, so a task of
/// priority `p` waits behind later arrivals of priority `p + d` for at most `d × aging_secs`.
#[derive(Debug, Clone)]
pub struct PriorityAging {
    aging: Duration,
    score: ScoreWeights,
}

impl PriorityAging {
    /// Reads the aging and score weights from `config`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] if `aging_secs` is not positive.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Ok(Self {
            aging: config.aging()?,
            score: config.score.unwrap_or_default(),
        })
    }
}

impl Scheduler for PriorityAging {
    fn name(&self) -> &str {
        "priority"
    }

    fn sort_key(&self, task: &TaskSpec, enqueued_at: Duration) -> i128 {
        priority_key(task, enqueued_at, self.aging)
    }

    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        self.score.score(task, worker)
    }
}

/// `round-robin`: one FIFO queue per tenant; tenants with runnable work take turns, one task
/// each, in the order they first submitted.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    last: Option<QueueId>,
    score: ScoreWeights,
}

impl RoundRobin {
    /// Reads the score weights from `config`.
    pub fn from_config(config: &SchedulerConfig) -> Self {
        Self {
            last: None,
            score: config.score.unwrap_or_default(),
        }
    }
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &str {
        "round-robin"
    }

    fn queue<'t>(&self, task: &'t TaskSpec) -> &'t str {
        &task.owner
    }

    fn pick(&mut self, heads: &[QueueHead], _now: Duration) -> Option<usize> {
        // Heads come in queue order: the first one after the last served, else wrap around.
        let next = heads.iter().position(|h| Some(h.queue) > self.last);
        next.or(if heads.is_empty() { None } else { Some(0) })
    }

    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        self.score.score(task, worker)
    }

    fn on_bind(
        &mut self,
        _task: &TaskSpec,
        queue: QueueId,
        _worker: &WorkerView<'_>,
        _now: Duration,
    ) {
        self.last = Some(queue);
    }
}

/// `fairness`: weighted fair share between tenants.
///
/// One queue per tenant, ordered like `priority` (priority within a tenant, with aging). The
/// next slot goes to the tenant with runnable work, under its quota, whose service divided by
/// its weight is the lowest, where service is
///
/// - the slot time its tasks used and that ended within the last `fairness_window_hours`
///   (kept in 48 buckets: usage stops counting between `window × 47/48` and `window` after it
///   happened), plus
/// - the expected duration of each of its tasks running now (or `default_duration_secs`),
///   so that a tenant is charged the moment it is given a slot.
///
/// Ties go to the earliest head task. Quotas cap a tenant's running tasks; everything else is
/// work-conserving.
#[derive(Debug, Clone)]
pub struct FairShare {
    window: Duration,
    aging: Duration,
    default_duration: Duration,
    score: ScoreWeights,
    weights: BTreeMap<String, f64>,
    default_weight: f64,
    quotas: BTreeMap<String, u32>,
    tenants: Vec<Tenant>,
}

#[derive(Debug, Clone)]
struct Tenant {
    weight: f64,
    quota: Option<u32>,
    in_flight_ms: u64,
    used: WindowedUsage,
}

impl FairShare {
    /// Reads window, weights, quotas, aging, default duration and score weights from `config`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] if a value is out of range (see
    /// [`SchedulerConfig::validate`]).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        Ok(Self {
            window: config.window()?,
            aging: config.aging()?,
            default_duration: config.default_duration()?,
            score: config.score.unwrap_or_default(),
            weights: config.weights.clone(),
            default_weight: config.default_weight,
            quotas: config.quotas.clone(),
            tenants: Vec::new(),
        })
    }

    fn cost_ms(&self, task: &TaskSpec) -> u64 {
        millis(task.expected_duration.unwrap_or(self.default_duration)).max(1)
    }
}

impl Scheduler for FairShare {
    fn name(&self) -> &str {
        "fairness"
    }

    fn queue<'t>(&self, task: &'t TaskSpec) -> &'t str {
        &task.owner
    }

    fn on_queue_created(&mut self, queue: QueueId, name: &str) {
        let tenant = Tenant {
            weight: self
                .weights
                .get(name)
                .copied()
                .unwrap_or(self.default_weight),
            quota: self.quotas.get(name).copied(),
            in_flight_ms: 0,
            used: WindowedUsage::new(self.window),
        };
        if self.tenants.len() <= queue.index() {
            self.tenants.resize(queue.index() + 1, tenant);
        } else {
            self.tenants[queue.index()] = tenant;
        }
    }

    fn sort_key(&self, task: &TaskSpec, enqueued_at: Duration) -> i128 {
        priority_key(task, enqueued_at, self.aging)
    }

    fn pick(&mut self, heads: &[QueueHead], now: Duration) -> Option<usize> {
        let mut best: Option<(f64, i128, u64, usize)> = None;
        for (i, h) in heads.iter().enumerate() {
            let Some(t) = self.tenants.get_mut(h.queue.index()) else {
                continue;
            };
            if t.quota.is_some_and(|q| h.running >= q as usize) {
                continue;
            }
            let service = (t.used.total(now) + t.in_flight_ms) as f64 / t.weight;
            let candidate = (service, h.key, h.arrival, i);
            if best.is_none_or(|b| (candidate.0, candidate.1, candidate.2) < (b.0, b.1, b.2)) {
                best = Some(candidate);
            }
        }
        best.map(|b| b.3)
    }

    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        self.score.score(task, worker)
    }

    fn on_bind(
        &mut self,
        task: &TaskSpec,
        queue: QueueId,
        _worker: &WorkerView<'_>,
        _now: Duration,
    ) {
        let cost = self.cost_ms(task);
        if let Some(t) = self.tenants.get_mut(queue.index()) {
            t.in_flight_ms += cost;
        }
    }

    fn on_release(&mut self, task: &TaskSpec, queue: QueueId, ran_for: Duration, now: Duration) {
        let cost = self.cost_ms(task);
        if let Some(t) = self.tenants.get_mut(queue.index()) {
            t.in_flight_ms = t.in_flight_ms.saturating_sub(cost);
            t.used.add(now.saturating_sub(ran_for), now);
        }
    }
}

/// Buckets per window: usage stops counting between `window × (BUCKETS - 1) / BUCKETS` and
/// `window` after it happened.
const BUCKETS: u64 = 48;

/// Slot time used over a sliding window, in milliseconds, bucketed so that adding and reading
/// are O(1) amortized and the total is exact integer arithmetic (no float drift).
#[derive(Debug, Clone)]
pub(crate) struct WindowedUsage {
    width_ms: u64,
    /// Bucket index (time / width) of `buckets[0]`.
    first: u64,
    buckets: VecDeque<u64>,
    total: u64,
}

impl WindowedUsage {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            width_ms: (millis(window) / BUCKETS).max(1),
            first: 0,
            buckets: VecDeque::new(),
            total: 0,
        }
    }

    /// Drops the buckets that left the window at `now`.
    fn advance(&mut self, now: Duration) {
        let oldest = (millis(now) / self.width_ms).saturating_sub(BUCKETS - 1);
        while self.first < oldest {
            match self.buckets.pop_front() {
                Some(v) => {
                    self.total -= v;
                    self.first += 1;
                }
                None => self.first = oldest,
            }
        }
    }

    /// Records that a slot was used from `start` to `end` (`end` is now).
    pub(crate) fn add(&mut self, start: Duration, end: Duration) {
        self.advance(end);
        let (start, end) = (millis(start), millis(end));
        let w = self.width_ms;
        for b in (start / w).max(self.first)..=(end / w) {
            let overlap = end.min((b + 1) * w).saturating_sub(start.max(b * w));
            if overlap == 0 {
                continue;
            }
            let i = (b - self.first) as usize;
            if self.buckets.len() <= i {
                self.buckets.resize(i + 1, 0);
            }
            self.buckets[i] += overlap;
            self.total += overlap;
        }
    }

    /// The usage still in the window at `now`, in milliseconds.
    pub(crate) fn total(&mut self, now: Duration) -> u64 {
        self.advance(now);
        self.total
    }
}

/// `longest-first`: duration-aware packing. One shared queue, longest expected duration first
/// (the LPT rule, which keeps the makespan of a batch short), placed on the fullest worker
/// that fits (`ScoreWeights::PACK`). A task's expected duration counts as time already waited,
/// so a short task waits behind later, longer arrivals at most the difference of their
/// durations: no starvation.
#[derive(Debug, Clone)]
pub struct LongestFirst {
    default_duration: Duration,
    score: ScoreWeights,
}

impl LongestFirst {
    /// Reads the default duration and score weights from `config`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] if `default_duration_secs` is not positive.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        Ok(Self {
            default_duration: config.default_duration()?,
            score: config.score.unwrap_or(ScoreWeights::PACK),
        })
    }
}

impl Scheduler for LongestFirst {
    fn name(&self) -> &str {
        "longest-first"
    }

    fn sort_key(&self, task: &TaskSpec, enqueued_at: Duration) -> i128 {
        nanos(enqueued_at) - nanos(task.expected_duration.unwrap_or(self.default_duration))
    }

    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        self.score.score(task, worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn windowed_usage_forgets_usage_older_than_the_window() {
        let mut u = WindowedUsage::new(24 * HOUR);
        u.add(Duration::ZERO, HOUR);
        assert_eq!(u.total(HOUR), 3_600_000);
        assert_eq!(u.total(20 * HOUR), 3_600_000, "still inside the window");
        assert_eq!(u.total(25 * HOUR), 0, "older than the window");
        u.add(25 * HOUR, 26 * HOUR);
        assert_eq!(u.total(26 * HOUR), 3_600_000);
    }

    #[test]
    fn windowed_usage_drops_only_the_part_outside_the_window() {
        let mut u = WindowedUsage::new(48 * Duration::from_secs(60)); // 1-minute buckets
        u.add(Duration::ZERO, Duration::from_secs(600));
        // 50 minutes later the first two minutes have left the 48-minute window.
        let total = u.total(Duration::from_secs(50 * 60));
        assert!((7 * 60_000..=9 * 60_000).contains(&total), "{total}");
    }

    #[test]
    fn priority_key_ages_one_level_per_aging_interval() {
        let aging = Duration::from_secs(60);
        let old_low = TaskSpec::builder().id("a").priority(0).build();
        let new_high = TaskSpec::builder().id("b").priority(1).build();
        let old = priority_key(&old_low, Duration::ZERO, aging);
        assert!(priority_key(&new_high, Duration::from_secs(30), aging) < old);
        assert!(priority_key(&new_high, Duration::from_secs(90), aging) > old);
    }
}
