//! The built-in strategies, each registered by name in [`Registry::new`](crate::Registry::new).
//! Each is a small [`Scheduler`] over the machinery the [`Engine`](crate::Engine) shares
//! between them; their bounds and measured figures are in `docs/scheduler.md`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound::{Excluded, Unbounded};
use std::time::Duration;

use dtf_plugin_core::event::TaskId;

use crate::config::SchedulerConfig;
use crate::error::SchedulerError;
use crate::framework::{
    QueueHead, QueueId, Scheduler, ScoreWeights, TaskSpec, WorkerView, is_label,
};

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

    fn queue<'t>(&self, task: &'t TaskSpec) -> Cow<'t, str> {
        Cow::Borrowed(&task.owner)
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

/// `fairness`: weighted fair share between tenants, over time, per resource pool.
///
/// One queue per tenant and pool, ordered like `priority` (priority within it, with aging).
/// There are two pools: **plain** slots (workers offering no feature) and **accelerator**
/// slots (workers offering `cuda`, `rocm`, `webgpu` or any other feature); tasks requiring a
/// feature wait in their tenant's accelerator queue, the others in its plain queue. The next
/// slot goes to the queue with waiting work that fits a free worker, whose tenant is under its
/// quota, and whose tenant's **usage of that queue's pool divided by the tenant's weight** is
/// the lowest. Usage is
///
/// - the slot time its tasks really ran, charged continuously while they run, to the pool of
///   the worker they run on (never their declared duration: estimates do not buy share, and a
///   task without one costs the same), **fading with a half-life** (`half_life_hours`,
///   default 12; `fairness_window_hours = W` maps to a half-life of `W / 2`): slot time used
///   one half-life ago counts half; plus
/// - a provisional `default_duration_secs` per task running now in that pool, the same for
///   every task, so that a tenant given several slots at the same instant is charged for each
///   at once; it is dropped when the task ends (the real run time has been charged by then).
///
/// So a tenant's plain work never costs it its share of the accelerators (the property
/// dominant resource fairness is after, see `docs/scheduler.md`). A plain task that takes a
/// free accelerator slot (work-conserving) is charged to the accelerator pool.
///
/// **No starvation.** A queue with waiting work, under its tenant's quota, that has gone longer
/// than the longest task seen so far (finished, or running now) without a placement takes the
/// next slot that fits its work, before usage is compared: it waits at most about twice the
/// longest task.
///
/// Ties go to the queue served least recently. Quotas cap a tenant's running tasks (both
/// pools); everything else is work-conserving. Selection costs `O(log queues)` (see
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
    tenant_index: HashMap<String, u32>,
    /// One per engine queue (a tenant's plain or accelerator queue).
    accounts: Vec<Account>,
    /// Usage is kept scaled by `exp(lambda × (t − origin))`: decay then changes no queue's
    /// order, so a stored key stays valid while its tenant's allocation does not change.
    origin: Duration,
    /// Eligible queues (waiting work, tenant under quota) by `(key bits, last served, queue)`.
    order: BTreeSet<(u64, u64, u32)>,
    /// Eligible queues by when they last got a placement or became eligible.
    starving: BTreeSet<(Duration, u32)>,
    /// Start times of the running tasks (with counts), for the longest running task.
    starts: BTreeMap<Duration, u32>,
    /// The longest run time seen among finished tasks.
    longest_done: Duration,
    /// Placements so far (the tie-breaker: least recently served first).
    served: u64,
    /// Plain tasks running on accelerator workers (charged to the accelerator pool).
    spilled: HashSet<TaskId>,
}

/// The pools: plain slots and accelerator slots.
const PLAIN: usize = 0;
const ACCELERATOR: usize = 1;

/// Appended to the owner to name a tenant's accelerator queue.
const ACCELERATOR_QUEUE: &str = "\u{1f}accelerator";

#[derive(Debug, Clone)]
struct Tenant {
    weight: f64,
    quota: Option<u32>,
    /// Running tasks, both pools.
    running: u32,
    pools: [Pool; 2],
    /// Usage is charged up to here.
    charged_at: Duration,
    /// Its queue for each pool, once created.
    queues: [Option<u32>; 2],
    /// How many of its plain tasks run on accelerator workers.
    spilled: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Pool {
    running: u32,
    /// Scaled slot-seconds.
    usage: f64,
}

#[derive(Debug, Clone)]
struct Account {
    tenant: u32,
    pool: usize,
    /// The key in `order` (bits of a non-negative f64) and when it was computed.
    key: u64,
    keyed_at: Duration,
    last_served: u64,
    waiting: bool,
    /// When it last got a placement or became eligible (its entry in `starving`).
    since: Duration,
    /// Whether it has an entry in `order` / in `starving` (saves searching for none).
    in_order: bool,
    in_starving: bool,
}

/// Past this exponent (a scale of `exp(20)` ≈ 5·10⁸, about 29 half-lives), all usage is
/// rescaled to a new origin, so scaled values never overflow.
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
            tenant_index: HashMap::new(),
            accounts: Vec::new(),
            origin: Duration::ZERO,
            order: BTreeSet::new(),
            starving: BTreeSet::new(),
            starts: BTreeMap::new(),
            longest_done: Duration::ZERO,
            served: 0,
            spilled: HashSet::new(),
        })
    }

    /// `exp(lambda × (t − origin))`.
    fn scale(&self, t: Duration) -> f64 {
        (self.lambda * t.saturating_sub(self.origin).as_secs_f64()).exp()
    }

    /// Charges tenant `t`'s running tasks up to `now`.
    fn settle(&mut self, t: usize, now: Duration) {
        let from = self.tenants[t].charged_at;
        if now > from && self.tenants[t].pools.iter().all(|p| p.running == 0) {
            // Nothing to charge. A tenant first seen long after the scale's origin moved
            // (`charged_at` 0) would otherwise get 0 × inf = NaN, a key below every other.
            self.tenants[t].charged_at = now;
        } else if now > from {
            let factor = self.scale(from) * (self.lambda * (now - from).as_secs_f64()).exp_m1()
                / self.lambda;
            let tenant = &mut self.tenants[t];
            for pool in &mut tenant.pools {
                pool.usage += f64::from(pool.running) * factor;
            }
            tenant.charged_at = now;
        }
    }

    /// Queue `q`'s key at `now` (settling its tenant first): the tenant's scaled usage of the
    /// queue's pool over its weight, as f64 bits (which order like the non-negative values).
    fn key(&mut self, q: usize, now: Duration) -> u64 {
        let (t, p) = (self.accounts[q].tenant as usize, self.accounts[q].pool);
        self.settle(t, now);
        let scale = self.scale(now);
        let tenant = &self.tenants[t];
        let pool = tenant.pools[p];
        let usage = pool.usage + f64::from(pool.running) * self.provisional * scale;
        (usage / tenant.weight).max(0.0).to_bits()
    }

    fn eligible(&self, q: usize) -> bool {
        let a = &self.accounts[q];
        let t = &self.tenants[a.tenant as usize];
        a.waiting && t.quota.is_none_or(|quota| t.running < quota)
    }

    /// Takes queue `q` out of `order`.
    fn unorder(&mut self, q: usize) {
        let a = &mut self.accounts[q];
        if a.in_order {
            self.order.remove(&(a.key, a.last_served, q as u32));
            a.in_order = false;
        }
    }

    /// Takes queue `q` out of `order`, recomputes its key, and puts it back if eligible.
    fn rekey(&mut self, q: usize, now: Duration) {
        self.unorder(q);
        let key = self.key(q, now);
        let eligible = self.eligible(q);
        let a = &mut self.accounts[q];
        a.key = key;
        a.keyed_at = now;
        if eligible {
            self.order.insert((a.key, a.last_served, q as u32));
            a.in_order = true;
        }
    }

    /// Keeps queue `q`'s entry in `starving` right: there while it is eligible, since it last
    /// got a placement or became eligible. `placed` restarts its clock.
    fn sync_starving(&mut self, q: usize, now: Duration, placed: bool) {
        let eligible = self.eligible(q);
        let a = &mut self.accounts[q];
        if a.in_starving && (placed || !eligible) {
            self.starving.remove(&(a.since, q as u32));
            a.in_starving = false;
        }
        if eligible && !a.in_starving {
            a.since = now;
            self.starving.insert((now, q as u32));
            a.in_starving = true;
        }
    }

    /// Re-keys tenant `t`'s queues after its allocation changed; `placed` is the queue that
    /// just got a placement, if any.
    fn refresh_tenant(&mut self, t: usize, now: Duration, placed: Option<usize>) {
        for q in self.tenants[t].queues.into_iter().flatten() {
            let q = q as usize;
            self.rekey(q, now);
            self.sync_starving(q, now, placed == Some(q));
        }
    }

    /// Moves the origin of the scaled unit to `now` once the scale grows large: charges every
    /// tenant up to `now`, divides, and rebuilds `order` (decay does not change its order,
    /// but the stored keys are in the old unit). `O(queues log queues)`, about once per 29
    /// half-lives.
    fn rebase(&mut self, now: Duration) {
        if self.lambda * now.saturating_sub(self.origin).as_secs_f64() < MAX_EXPONENT {
            return;
        }
        for t in 0..self.tenants.len() {
            self.settle(t, now);
        }
        let factor = self.scale(now);
        self.origin = now;
        for tenant in &mut self.tenants {
            for pool in &mut tenant.pools {
                pool.usage /= factor;
            }
        }
        self.order.clear();
        for q in 0..self.accounts.len() {
            self.accounts[q].in_order = false;
            self.rekey(q, now);
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
}

impl Scheduler for FairShare {
    fn name(&self) -> &str {
        "fairness"
    }

    fn queue<'t>(&self, task: &'t TaskSpec) -> Cow<'t, str> {
        // A task requiring only labels (`zone=eu`) is plain work.
        if task.requirements.features.iter().all(|f| is_label(f)) {
            Cow::Borrowed(&task.owner)
        } else {
            Cow::Owned(format!("{}{ACCELERATOR_QUEUE}", task.owner))
        }
    }

    fn on_queue_created(&mut self, queue: QueueId, name: &str) {
        let (owner, pool) = match name.strip_suffix(ACCELERATOR_QUEUE) {
            Some(owner) => (owner, ACCELERATOR),
            None => (name, PLAIN),
        };
        let t = match self.tenant_index.get(owner) {
            Some(&t) => t,
            None => {
                let t = self.tenants.len() as u32;
                self.tenants.push(Tenant {
                    weight: self
                        .weights
                        .get(owner)
                        .copied()
                        .unwrap_or(self.default_weight),
                    quota: self.quotas.get(owner).copied(),
                    running: 0,
                    pools: [Pool::default(); 2],
                    charged_at: Duration::ZERO,
                    queues: [None; 2],
                    spilled: 0,
                });
                self.tenant_index.insert(owner.to_owned(), t);
                t
            }
        };
        self.tenants[t as usize].queues[pool] = Some(queue.0);
        let account = Account {
            tenant: t,
            pool,
            key: 0,
            keyed_at: Duration::ZERO,
            last_served: 0,
            waiting: false,
            since: Duration::ZERO,
            in_order: false,
            in_starving: false,
        };
        // Queues are numbered densely from 0 in creation order.
        if self.accounts.len() <= queue.index() {
            self.accounts.resize(queue.index() + 1, account);
        } else {
            self.accounts[queue.index()] = account;
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
        if q >= self.accounts.len() {
            return;
        }
        self.rebase(now);
        self.accounts[q].waiting = waiting;
        self.sync_starving(q, now, true);
        self.rekey(q, now);
    }

    /// The starving queues first (oldest first, if their work fits), then the others by
    /// key. The stored key of a queue whose pool has running tasks is a lower bound (usage
    /// grows while they run): a stale one met on the way is re-keyed and put back, so the
    /// queue returned has the smallest true key. Each queue is re-keyed at most once per
    /// call, and only those whose stale key is below the winner's.
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
            if runnable(QueueId(q)) {
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
            let a = &self.accounts[q as usize];
            let running = self.tenants[a.tenant as usize].pools[a.pool].running;
            if running > 0 && a.keyed_at < now {
                let fresh = self.key(q as usize, now);
                let a = &mut self.accounts[q as usize];
                a.keyed_at = now;
                if fresh != key {
                    self.order.remove(&(key, served, q));
                    a.key = fresh;
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

    fn on_bind(&mut self, task: &TaskSpec, queue: QueueId, worker: &WorkerView<'_>, now: Duration) {
        let q = queue.index();
        let Some(account) = self.accounts.get(q) else {
            return;
        };
        let (t, own_pool) = (account.tenant as usize, account.pool);
        // Labels (`zone=eu`, a remote worker's) do not make a worker an accelerator: with
        // them counted, every labelled worker's plain work was charged to the accelerator pool,
        // and the tenants' weights did nothing there (found by a review).
        let pool = if worker.capabilities.features.iter().all(|f| is_label(f)) {
            PLAIN
        } else {
            ACCELERATOR
        };
        self.rebase(now);
        *self.starts.entry(now).or_insert(0) += 1;
        // Charge the running tasks up to now before one more runs.
        self.settle(t, now);
        self.unorder(q);
        self.served += 1;
        self.accounts[q].last_served = self.served;
        let tenant = &mut self.tenants[t];
        tenant.running += 1;
        tenant.pools[pool].running += 1;
        if pool != own_pool {
            tenant.spilled += 1;
            self.spilled.insert(task.id.clone());
        }
        self.refresh_tenant(t, now, Some(q));
    }

    fn on_release(&mut self, task: &TaskSpec, queue: QueueId, ran_for: Duration, now: Duration) {
        let q = queue.index();
        let Some(account) = self.accounts.get(q) else {
            return;
        };
        let (t, own_pool) = (account.tenant as usize, account.pool);
        self.rebase(now);
        let start = now.saturating_sub(ran_for);
        if let Some(n) = self.starts.get_mut(&start) {
            *n -= 1;
            if *n == 0 {
                self.starts.remove(&start);
            }
        }
        self.longest_done = self.longest_done.max(ran_for);
        self.settle(t, now);
        let tenant = &mut self.tenants[t];
        // Only a plain task can run outside its own pool (on an accelerator worker).
        let pool = if tenant.spilled > 0 && self.spilled.remove(&task.id) {
            tenant.spilled -= 1;
            ACCELERATOR
        } else {
            own_pool
        };
        tenant.running = tenant.running.saturating_sub(1);
        tenant.pools[pool].running = tenant.pools[pool].running.saturating_sub(1);
        self.refresh_tenant(t, now, None);
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
        f.tenants[0].pools[PLAIN].usage / f.scale(now)
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

    /// A tenant first seen after many half-lives starts with no usage, not NaN (which keyed
    /// it below every other tenant for the rest of the run, whatever its weight).
    #[test]
    fn a_tenant_first_seen_after_many_half_lives_has_no_usage() {
        let config = SchedulerConfig::new("fairness").half_life_hours(0.01);
        let mut f = FairShare::from_config(&config).unwrap();
        f.on_queue_created(QueueId(0), "a");
        let late = 11 * HOUR; // 1,100 half-lives: exp(λ·t) overflows
        f.rebase(late);
        f.on_queue_created(QueueId(1), "b");
        let b = f.tenant_index["b"] as usize;
        f.settle(b, late);
        let usage = f.tenants[b].pools[PLAIN].usage;
        assert_eq!(usage, 0.0);
        assert!(f64::from_bits(f.key(1, late)).is_finite());
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
