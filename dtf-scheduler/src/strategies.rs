//! The built-in strategies, each registered by name in [`Registry::new`](crate::Registry::new).
//! Each is a small [`Scheduler`] over the machinery the [`Engine`](crate::Engine) shares
//! between them; their bounds and measured figures are in `docs/scheduler.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};
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

/// `fairness`: weighted fair share between tenants, over time.
///
/// One queue per tenant, ordered like `priority` (priority within a tenant, with aging). The
/// next slot goes to the tenant with waiting work that fits a free worker, under its quota,
/// whose **usage divided by its weight** is the lowest, where usage is
///
/// - the slot time its tasks really ran, charged continuously while they run (never their
///   declared duration: estimates do not buy share, and a task without one costs the same),
///   **fading with a half-life** (`half_life_hours`, default 12; `fairness_window_hours = W`
///   maps to a half-life of `W / 2`): slot time used one half-life ago counts half; plus
/// - a provisional `default_duration_secs` per task running now, the same for every task,
///   so that a tenant given several slots at the same instant is charged for each at once;
///   it is dropped when the task ends (the real run time has been charged by then).
///
/// **No starvation.** A tenant with waiting work that has gone longer than the longest task
/// seen so far (finished, or running now) without a placement takes the next slot that fits
/// its work, before usage is compared: so it waits at most about twice the longest task.
///
/// Ties go to the tenant served least recently. Quotas cap a tenant's running tasks;
/// everything else is work-conserving. Selection costs `O(log tenants)` (see
/// [`Scheduler::next_queue`] and `docs/scheduler.md`).
#[derive(Debug, Clone)]
pub struct FairShare {
    /// Decay rate, per second: `ln 2 / half-life`.
    lambda: f64,
    aging: Duration,
    /// Provisional charge per running task, in slot-seconds.
    provisional: f64,
    score: ScoreWeights,
    weights: BTreeMap<String, f64>,
    default_weight: f64,
    quotas: BTreeMap<String, u32>,
    tenants: Vec<Tenant>,
    /// Usage is kept scaled by `exp(lambda × (t − origin))`: decay then changes no tenant's
    /// order, so a stored key stays valid while its tenant's allocation does not change.
    origin: Duration,
    /// Tenants with waiting work, under quota, by `(key bits, last served, queue)`.
    order: BTreeSet<(u64, u64, u32)>,
    /// Tenants with waiting work, by when they last were placed or started waiting.
    starving: BTreeSet<(Duration, u32)>,
    /// Start times of the running tasks (with counts), for the longest running task.
    starts: BTreeMap<Duration, u32>,
    /// The longest run time seen among finished tasks.
    longest_done: Duration,
    /// Placements so far (the tie-breaker: least recently served first).
    served: u64,
}

#[derive(Debug, Clone)]
struct Tenant {
    weight: f64,
    quota: Option<u32>,
    running: u32,
    /// Scaled slot-seconds charged up to `charged_at`.
    usage: f64,
    charged_at: Duration,
    /// The key in `order` (bits of a non-negative f64) and when it was computed.
    key: u64,
    keyed_at: Duration,
    last_served: u64,
    waiting: bool,
    /// When it last got a placement or started waiting (its entry in `starving`).
    since: Duration,
}

/// Past this exponent (a scale of `exp(20)` ≈ 5·10⁸, about 29 half-lives), every tenant's
/// usage is rescaled to a new origin, so scaled values never overflow.
const MAX_EXPONENT: f64 = 20.0;

impl FairShare {
    /// Reads half-life, weights, quotas, aging, default duration and score weights from
    /// `config`.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidConfig`] if a value is out of range (see
    /// [`SchedulerConfig::validate`]).
    pub fn from_config(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        config.validate()?;
        Ok(Self {
            lambda: std::f64::consts::LN_2 / config.half_life()?.as_secs_f64(),
            aging: config.aging()?,
            provisional: config.default_duration()?.as_secs_f64(),
            score: config.score.unwrap_or_default(),
            weights: config.weights.clone(),
            default_weight: config.default_weight,
            quotas: config.quotas.clone(),
            tenants: Vec::new(),
            origin: Duration::ZERO,
            order: BTreeSet::new(),
            starving: BTreeSet::new(),
            starts: BTreeMap::new(),
            longest_done: Duration::ZERO,
            served: 0,
        })
    }

    /// `exp(lambda × (t − origin))`.
    fn scale(&self, t: Duration) -> f64 {
        (self.lambda * t.saturating_sub(self.origin).as_secs_f64()).exp()
    }

    /// Charges tenant `q`'s running tasks up to `now`.
    fn settle(&mut self, q: usize, now: Duration) {
        let from = self.tenants[q].charged_at;
        if now > from {
            let (scale, lambda) = (self.scale(from), self.lambda);
            let t = &mut self.tenants[q];
            if t.running > 0 {
                let dt = (now - from).as_secs_f64();
                t.usage += f64::from(t.running) * scale * (lambda * dt).exp_m1() / lambda;
            }
            t.charged_at = now;
        }
    }

    /// Tenant `q`'s key at `now` (settling it first): scaled usage over weight, as f64 bits
    /// (which order like the non-negative values).
    fn key(&mut self, q: usize, now: Duration) -> u64 {
        self.settle(q, now);
        let scale = self.scale(now);
        let t = &self.tenants[q];
        let usage = t.usage + f64::from(t.running) * self.provisional * scale;
        (usage / t.weight).max(0.0).to_bits()
    }

    fn eligible(&self, q: usize) -> bool {
        let t = &self.tenants[q];
        t.waiting && t.quota.is_none_or(|quota| t.running < quota)
    }

    /// Takes tenant `q` out of `order`, recomputes its key, and puts it back if eligible.
    fn rekey(&mut self, q: usize, now: Duration) {
        let t = &self.tenants[q];
        self.order.remove(&(t.key, t.last_served, q as u32));
        let key = self.key(q, now);
        let t = &mut self.tenants[q];
        t.key = key;
        t.keyed_at = now;
        if self.eligible(q) {
            let t = &self.tenants[q];
            self.order.insert((t.key, t.last_served, q as u32));
        }
    }

    /// Moves the origin of the scaled unit to `now` once the scale grows large: charges every
    /// tenant up to `now`, divides, and rebuilds `order` (decay does not change its order,
    /// but the stored keys are in the old unit). `O(tenants log tenants)`, about once per 29
    /// half-lives.
    fn rebase(&mut self, now: Duration) {
        if self.lambda * now.saturating_sub(self.origin).as_secs_f64() < MAX_EXPONENT {
            return;
        }
        for q in 0..self.tenants.len() {
            self.settle(q, now);
        }
        let factor = self.scale(now);
        self.origin = now;
        for t in &mut self.tenants {
            t.usage /= factor;
        }
        self.order.clear();
        for q in 0..self.tenants.len() {
            self.tenants[q].key = self.key(q, now);
            self.tenants[q].keyed_at = now;
            if self.eligible(q) {
                let t = &self.tenants[q];
                self.order.insert((t.key, t.last_served, q as u32));
            }
        }
    }

    /// The longest task seen so far: finished, or running since the oldest start.
    fn longest_task(&self, now: Duration) -> Duration {
        let running = self
            .starts
            .first_key_value()
            .map_or(Duration::ZERO, |(&start, _)| now.saturating_sub(start));
        self.longest_done.max(running)
    }

    fn set_since(&mut self, q: usize, since: Duration) {
        let t = &mut self.tenants[q];
        self.starving.remove(&(t.since, q as u32));
        t.since = since;
        if t.waiting {
            self.starving.insert((since, q as u32));
        }
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
            running: 0,
            usage: 0.0,
            charged_at: Duration::ZERO,
            key: 0,
            keyed_at: Duration::ZERO,
            last_served: 0,
            waiting: false,
            since: Duration::ZERO,
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

    fn ranks_queues(&self) -> bool {
        true
    }

    fn on_queue_waiting(&mut self, queue: QueueId, waiting: bool, now: Duration) {
        let q = queue.index();
        if q >= self.tenants.len() {
            return;
        }
        self.rebase(now);
        self.tenants[q].waiting = waiting;
        self.set_since(q, now);
        self.rekey(q, now);
    }

    /// The starving tenants first (oldest first, if their work fits), then the others by
    /// key. The stored key of a tenant with running tasks is a lower bound (its usage grows
    /// while they run): a stale one met on the way is re-keyed and put back, so the tenant
    /// returned has the smallest true key. Each tenant is re-keyed at most once per call,
    /// and only those whose stale key is below the winner's.
    fn next_queue(
        &mut self,
        now: Duration,
        runnable: &mut dyn FnMut(QueueId) -> bool,
    ) -> Option<QueueId> {
        self.rebase(now);
        let guard = self.longest_task(now);
        let mut over: Option<(Duration, u32)> = None;
        loop {
            let next = match over {
                None => self.starving.first(),
                Some(c) => self.starving.range((Excluded(c), Unbounded)).next(),
            };
            let Some(&(since, q)) = next else { break };
            if now.saturating_sub(since) <= guard {
                break;
            }
            if self.eligible(q as usize) && runnable(QueueId(q)) {
                return Some(QueueId(q));
            }
            over = Some((since, q));
        }
        let mut cursor: Option<(u64, u64, u32)> = None;
        loop {
            let next = match cursor {
                None => self.order.first(),
                Some(c) => self.order.range((Excluded(c), Unbounded)).next(),
            };
            let &(key, served, q) = next?;
            let t = &self.tenants[q as usize];
            if t.running > 0 && t.keyed_at < now {
                let fresh = self.key(q as usize, now);
                let t = &mut self.tenants[q as usize];
                t.keyed_at = now;
                if fresh != key {
                    self.order.remove(&(key, served, q));
                    t.key = fresh;
                    self.order.insert((fresh, served, q));
                    continue;
                }
            }
            if runnable(QueueId(q)) {
                return Some(QueueId(q));
            }
            cursor = Some((key, served, q));
        }
    }

    fn score(&self, task: &TaskSpec, worker: &WorkerView<'_>) -> i64 {
        self.score.score(task, worker)
    }

    fn on_bind(
        &mut self,
        _task: &TaskSpec,
        queue: QueueId,
        _worker: &WorkerView<'_>,
        now: Duration,
    ) {
        let q = queue.index();
        if q >= self.tenants.len() {
            return;
        }
        self.rebase(now);
        *self.starts.entry(now).or_insert(0) += 1;
        // Charge the running tasks up to now before one more runs.
        self.settle(q, now);
        let t = &self.tenants[q];
        self.order.remove(&(t.key, t.last_served, q as u32));
        self.served += 1;
        let t = &mut self.tenants[q];
        t.running += 1;
        t.last_served = self.served;
        self.rekey(q, now);
        self.set_since(q, now);
    }

    fn on_release(&mut self, _task: &TaskSpec, queue: QueueId, ran_for: Duration, now: Duration) {
        let q = queue.index();
        if q >= self.tenants.len() {
            return;
        }
        self.rebase(now);
        let start = now.saturating_sub(ran_for);
        if let Some(n) = self.starts.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                self.starts.remove(&start);
            }
        }
        self.longest_done = self.longest_done.max(ran_for);
        self.settle(q, now);
        let t = &self.tenants[q];
        self.order.remove(&(t.key, t.last_served, q as u32));
        let t = &mut self.tenants[q];
        t.running = t.running.saturating_sub(1);
        self.rekey(q, now);
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

    /// Tenant 0's usage at `now`, in slot-seconds (unscaled).
    fn usage(f: &mut FairShare, now: Duration) -> f64 {
        f.settle(0, now);
        f.tenants[0].usage / f.scale(now)
    }

    #[test]
    fn usage_is_charged_while_running_and_halves_every_half_life() {
        let config = SchedulerConfig::new("fairness").half_life_hours(1.0);
        let mut f = FairShare::from_config(&config).unwrap();
        f.on_queue_created(QueueId(0), "a");
        let task = TaskSpec::builder().id("t").owner("a").build();
        let caps = dtf_plugin_core::prelude::Capabilities::builder()
            .slots(1)
            .build();
        let id = "w".into();
        let worker = WorkerView {
            id: &id,
            capabilities: &caps,
            running: 0,
        };
        f.on_bind(&task, QueueId(0), &worker, Duration::ZERO);
        // While it runs: ∫₀¹ʰ 2^-(age/1 h) = (1 − 1/2) × 3600 / ln 2 ≈ 2,597 slot-seconds.
        let expected = 0.5 * 3600.0 / std::f64::consts::LN_2;
        let at_end = usage(&mut f, HOUR);
        assert!((at_end - expected).abs() < 1e-6, "{at_end}");
        f.on_release(&task, QueueId(0), HOUR, HOUR);
        assert!((usage(&mut f, 2 * HOUR) - expected / 2.0).abs() < 1e-6);
        // Far past the rebasing point (29 half-lives), still exact.
        let late = 60 * HOUR;
        f.rebase(late);
        let left = usage(&mut f, late) / expected;
        assert!((left / 2f64.powi(-59) - 1.0).abs() < 1e-9, "{left}");
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
