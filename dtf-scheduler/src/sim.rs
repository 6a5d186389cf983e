//! A deterministic simulator: feeds a [`Workload`] through a scheduler on a virtual clock and
//! reports fairness, wait times, makespan and utilisation.
//!
//! Workloads are generated ([`Workload::generate`], seeded), recorded from a real run
//! ([`Workload::from_events`]), or written by hand (they are plain serde data). Tasks run for
//! exactly their `duration`; workers never fail. The same workload and seed give the same
//! report, bit for bit.
//!
//! ```
//! use std::time::Duration;
//! use dtf_scheduler::sim::{self, Generator, TenantLoad, Workload};
//! use dtf_scheduler::{Registry, SchedulerConfig};
//!
//! let workload = Workload::generate(
//!     &Generator::builder()
//!         .seed(7)
//!         .workers(4)
//!         .tenants(vec![TenantLoad::new("a", 100), TenantLoad::new("b", 10)])
//!         .build(),
//! )?;
//! let report = sim::simulate(&workload, &Registry::new(), &SchedulerConfig::new("fairness"))?;
//! assert!(report.jain_index > 0.9);
//! let table = report.to_string(); // a readable table of the figures
//! assert!(table.contains("Jain's fairness index"));
//! # Ok::<(), dtf_scheduler::SchedulerError>(())
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use dtf_plugin_core::event::{TaskId, WorkerId};
use dtf_plugin_core::prelude::{Capabilities, Event, EventKind};
use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

use crate::config::SchedulerConfig;
use crate::engine::Engine;
use crate::error::SchedulerError;
use crate::framework::TaskSpec;
use crate::registry::Registry;
use crate::rng::SplitMix64;

/// Workers and timed task arrivals to simulate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Workload {
    /// The workers, all in service from time zero.
    pub workers: Vec<SimWorker>,
    /// The tasks; arrivals at the same time are submitted in this order.
    pub tasks: Vec<SimTask>,
}

/// A worker of a [`Workload`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SimWorker {
    /// The worker.
    pub id: WorkerId,
    /// What it offers, including its slots.
    pub capabilities: Capabilities,
}

impl SimWorker {
    /// A worker `id` offering `capabilities`.
    pub fn new(id: impl Into<WorkerId>, capabilities: Capabilities) -> Self {
        Self {
            id: id.into(),
            capabilities,
        }
    }
}

/// A task of a [`Workload`]: when it arrives and how long it really runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SimTask {
    /// Arrival time on the virtual clock.
    pub at: Duration,
    /// What the scheduler sees (its `expected_duration` may differ from `duration`).
    pub spec: TaskSpec,
    /// How long it runs once placed.
    pub duration: Duration,
}

impl SimTask {
    /// `spec` arriving at `at` and running for `duration`.
    pub fn new(at: Duration, spec: TaskSpec, duration: Duration) -> Self {
        Self { at, spec, duration }
    }
}

/// One tenant of a generated workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TenantLoad {
    /// The tenant (task owner).
    pub name: String,
    /// How many tasks it submits.
    pub tasks: usize,
}

impl TenantLoad {
    /// `tasks` tasks owned by `name`.
    pub fn new(name: impl Into<String>, tasks: usize) -> Self {
        Self {
            name: name.into(),
            tasks,
        }
    }
}

/// Parameters of a generated workload: identical homogeneous workers (8 cores, 16 GiB) and
/// tenants whose tasks arrive uniformly at random within `arrival_window`, in random order.
#[derive(Debug, Clone, PartialEq, TypedBuilder)]
#[non_exhaustive]
pub struct Generator {
    /// Seed of the random generator. Default 1.
    #[builder(default = 1)]
    pub seed: u64,
    /// Number of workers. Default 10.
    #[builder(default = 10)]
    pub workers: usize,
    /// Slots per worker. Default 1.
    #[builder(default = 1)]
    pub slots_per_worker: u32,
    /// The tenants and how many tasks each submits.
    pub tenants: Vec<TenantLoad>,
    /// Mean run time; run times are uniform in `[0.5, 1.5] × mean`. Default 60 s.
    #[builder(default = Duration::from_secs(60))]
    pub mean_duration: Duration,
    /// Arrivals are uniform in `[0, arrival_window]`. Default 0: everything at once.
    #[builder(default)]
    pub arrival_window: Duration,
    /// Expected durations are off by up to this fraction of the real one. Default 0.25.
    #[builder(default = 0.25)]
    pub estimate_error: f64,
    /// Priorities are uniform in `0..priority_levels`. Default 1 (all 0).
    #[builder(default = 1)]
    pub priority_levels: u32,
}

impl Workload {
    /// Generates a workload from `params`, deterministically from its seed.
    ///
    /// # Errors
    ///
    /// [`SchedulerError::InvalidWorkload`] for no worker, no slot, no tenant, a zero mean
    /// duration, an estimate error outside `[0, 1)` or no priority level.
    pub fn generate(params: &Generator) -> Result<Self, SchedulerError> {
        let bad = |m: &str| Err(SchedulerError::InvalidWorkload(m.to_owned()));
        if params.workers == 0 || params.slots_per_worker == 0 {
            return bad("a workload needs at least one worker with one slot");
        }
        if params.tenants.is_empty() {
            return bad("a workload needs at least one tenant");
        }
        if params.mean_duration.is_zero() {
            return bad("the mean duration must be positive");
        }
        if !(0.0..1.0).contains(&params.estimate_error) || params.priority_levels == 0 {
            return bad("the estimate error must be in [0, 1) and there must be a priority level");
        }
        let mut rng = SplitMix64::new(params.seed);
        let workers = (0..params.workers)
            .map(|i| {
                let caps = Capabilities::builder()
                    .cpu_cores(8)
                    .memory_mib(16_384)
                    .slots(params.slots_per_worker)
                    .build();
                SimWorker::new(format!("w{i:03}"), caps)
            })
            .collect();
        let mean = params.mean_duration.as_secs_f64();
        let window = params.arrival_window.as_secs_f64();
        let err = params.estimate_error;
        let mut tasks = Vec::new();
        for tenant in &params.tenants {
            for i in 0..tenant.tasks {
                // At least 1 ms: a task takes time.
                let duration = (mean * (0.5 + rng.unit())).max(0.001);
                let expected = duration * (1.0 - err + 2.0 * err * rng.unit());
                let spec = TaskSpec::builder()
                    .id(format!("{}-{i}", tenant.name))
                    .owner(tenant.name.clone())
                    .priority(rng.below(u64::from(params.priority_levels)) as i32)
                    .expected_duration(secs(expected))
                    .build();
                tasks.push(SimTask::new(
                    secs(window * rng.unit()),
                    spec,
                    secs(duration),
                ));
            }
        }
        // Interleave the tenants at random (Fisher-Yates), then order by arrival (stable).
        for i in (1..tasks.len()).rev() {
            tasks.swap(i, rng.below(i as u64 + 1) as usize);
        }
        tasks.sort_by_key(|t| t.at);
        Ok(Self { workers, tasks })
    }

    /// A workload recorded from a run's events: the workers registered, each task arriving
    /// when its `TaskCreated` was published (relative to the first event) and running as long
    /// as its `TaskCompleted` says, or its expected duration, or `default_duration`.
    pub fn from_events(events: &[Event], default_duration: Duration) -> Self {
        let epoch = events
            .first()
            .map_or(SystemTime::UNIX_EPOCH, |e| e.meta.time);
        let mut durations = HashMap::new();
        for e in events {
            if let EventKind::TaskCompleted(t) = &e.kind {
                durations.insert(t.task.clone(), t.duration);
            }
        }
        let mut workload = Self::default();
        let mut seen = BTreeSet::new();
        for e in events {
            match &e.kind {
                EventKind::WorkerRegistered(w) if seen.insert(w.worker.clone()) => {
                    workload
                        .workers
                        .push(SimWorker::new(w.worker.clone(), w.capabilities.clone()));
                }
                EventKind::TaskCreated(t) => {
                    let duration = durations
                        .get(&t.task)
                        .copied()
                        .or(t.expected_duration)
                        .unwrap_or(default_duration);
                    let at = e.meta.time.duration_since(epoch).unwrap_or_default();
                    workload
                        .tasks
                        .push(SimTask::new(at, TaskSpec::from(&**t), duration));
                }
                _ => {}
            }
        }
        workload
    }

    /// The tenants (task owners), sorted.
    pub fn tenants(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.tasks.iter().map(|t| t.spec.owner.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// Seconds to a duration, rounded to the millisecond (so reports read cleanly).
fn secs(s: f64) -> Duration {
    Duration::from_millis((s * 1000.0).round() as u64)
}

/// What happened to one task in a simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskRecord {
    /// The task.
    pub id: TaskId,
    /// Its tenant.
    pub owner: String,
    /// When it arrived.
    pub arrival: Duration,
    /// When it was placed, if it was.
    pub start: Option<Duration>,
    /// When it finished, if it did.
    pub end: Option<Duration>,
    /// Where it ran.
    pub worker: Option<WorkerId>,
    /// Whether it was rejected as unschedulable.
    pub unschedulable: bool,
}

impl TaskRecord {
    /// How long it waited for a worker.
    pub fn wait(&self) -> Option<Duration> {
        self.start.map(|s| s.saturating_sub(self.arrival))
    }
}

/// Wait-time percentiles (nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitStats {
    /// How many waits.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Longest.
    pub max: Duration,
}

impl WaitStats {
    fn of(mut waits: Vec<Duration>) -> Self {
        waits.sort_unstable();
        let rank = |p: f64| {
            let i = ((p / 100.0) * waits.len() as f64).ceil() as usize;
            waits.get(i.saturating_sub(1)).copied().unwrap_or_default()
        };
        Self {
            count: waits.len(),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: waits.last().copied().unwrap_or_default(),
        }
    }
}

/// One tenant's figures in a [`Report`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TenantReport {
    /// The tenant.
    pub name: String,
    /// Its weight (from the configuration).
    pub weight: f64,
    /// Tasks it submitted.
    pub tasks: usize,
    /// Slot time its tasks used within the measured period.
    pub service: Duration,
    /// Its fraction of all service within the measured period.
    pub share: f64,
    /// Its weight over the sum of weights: the share weighted fairness aims at.
    pub weight_share: f64,
    /// Its tasks' waits.
    pub wait: WaitStats,
    /// The longest time it had tasks waiting without getting a placement (from the moment
    /// it started waiting, or from its previous placement).
    pub longest_gap: Duration,
}

/// The figures of one simulation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// The strategy's name.
    pub scheduler: String,
    /// Per tenant, sorted by name.
    pub tenants: Vec<TenantReport>,
    /// All tasks' waits.
    pub wait: WaitStats,
    /// Jain's fairness index of the tenants' weight-normalised service within the measured
    /// period: `(Σx)² / (n·Σx²)`, 1 when perfectly fair, `1/n` when one tenant gets it all.
    pub jain_index: f64,
    /// The period service is measured over: the contended period if there was one, else the
    /// whole run.
    pub period: (Duration, Duration),
    /// Whether `period` is contended: from the first moment every tenant had tasks waiting to
    /// the first moment one had none left.
    pub contended: bool,
    /// From time zero to the last completion.
    pub makespan: Duration,
    /// Busy slot time over total slot time within the makespan.
    pub utilisation: f64,
    /// The longest time any tenant with waiting tasks went without a placement: the
    /// largest `TenantReport::longest_gap` (a starvation figure no average can hide).
    pub longest_gap: Duration,
    /// Every task, in workload order.
    pub tasks: Vec<TaskRecord>,
}

/// The tenants' service within one window of time, from [`Report::timeline`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WindowShares {
    /// Where the window starts.
    pub start: Duration,
    /// Where it ends.
    pub end: Duration,
    /// Each tenant's fraction of the service in the window, in [`Report::tenants`] order
    /// (all 0 when nothing ran).
    pub shares: Vec<f64>,
    /// Jain's index of the weight-normalised service in the window.
    pub jain: f64,
}

impl Report {
    /// The tenants' shares in consecutive windows of `width` (the last one may be shorter),
    /// from `from` to `to`: share over time.
    pub fn timeline(&self, from: Duration, to: Duration, width: Duration) -> Vec<WindowShares> {
        let mut out = Vec::new();
        if width.is_zero() {
            return out;
        }
        let mut start = from;
        while start < to {
            let end = (start + width).min(to);
            out.push(self.window(start, end));
            start = end;
        }
        out
    }

    /// Jain's index over sliding windows of `width` (stepped by `width / 2`) inside the
    /// contended period, or the whole run if it was not contended: the worst window, and
    /// where it starts. `None` if the period is shorter than `width`.
    pub fn worst_window_jain(&self, width: Duration) -> Option<(Duration, f64)> {
        let (from, to) = self.period;
        if width.is_zero() {
            return None;
        }
        let step = (width / 2).max(Duration::from_millis(1));
        let mut worst: Option<(Duration, f64)> = None;
        let mut start = from;
        while start + width <= to {
            let w = self.window(start, start + width);
            if worst.is_none_or(|(_, j)| w.jain < j) {
                worst = Some((start, w.jain));
            }
            start += step;
        }
        worst
    }

    /// The tenants' service within `[start, end)`.
    fn window(&self, start: Duration, end: Duration) -> WindowShares {
        let mut service = vec![0.0; self.tenants.len()];
        let index: HashMap<&str, usize> = self
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        for t in &self.tasks {
            if let (Some(s), Some(e), Some(&i)) = (t.start, t.end, index.get(t.owner.as_str())) {
                service[i] += e.min(end).saturating_sub(s.max(start)).as_secs_f64();
            }
        }
        let total: f64 = service.iter().sum();
        let normalised: Vec<f64> = service
            .iter()
            .zip(&self.tenants)
            .map(|(s, t)| s / t.weight)
            .collect();
        WindowShares {
            start,
            end,
            shares: service
                .iter()
                .map(|s| if total > 0.0 { s / total } else { 0.0 })
                .collect(),
            jain: jain(&normalised),
        }
    }
}

/// Jain's fairness index `(Σx)² / (n·Σx²)`; 1 for no or all-zero values.
fn jain(x: &[f64]) -> f64 {
    let (sum, sum_sq) = (x.iter().sum::<f64>(), x.iter().map(|v| v * v).sum::<f64>());
    if sum_sq > 0.0 {
        sum * sum / (x.len() as f64 * sum_sq)
    } else {
        1.0
    }
}

/// The longest time `tasks` (one tenant's) had some task waiting without a placement.
fn longest_gap<'a>(tasks: impl Iterator<Item = &'a TaskRecord>) -> Duration {
    // (time, 0 = arrival / 1 = placement); arrivals first at equal times.
    let mut events: Vec<(Duration, u8)> = Vec::new();
    for t in tasks.filter(|t| !t.unschedulable) {
        events.push((t.arrival, 0));
        if let Some(s) = t.start {
            events.push((s, 1));
        }
    }
    events.sort_unstable();
    let (mut waiting, mut since, mut longest) = (0usize, Duration::ZERO, Duration::ZERO);
    for (at, kind) in events {
        if kind == 0 {
            if waiting == 0 {
                since = at;
            }
            waiting += 1;
        } else {
            longest = longest.max(at.saturating_sub(since));
            since = at;
            waiting = waiting.saturating_sub(1);
        }
    }
    longest
}

/// Runs `workload` through the strategy `config` names, on a virtual clock.
///
/// # Errors
///
/// What [`Registry::build`] returns for `config`, or [`SchedulerError::InvalidWorkload`] if a
/// task id appears twice.
pub fn simulate(
    workload: &Workload,
    registry: &Registry,
    config: &SchedulerConfig,
) -> Result<Report, SchedulerError> {
    let mut engine = Engine::new(registry.build(config)?);
    for w in &workload.workers {
        engine.add_worker(w.id.clone(), w.capabilities.clone());
    }
    let tenants = workload.tenants();
    let tenant_of: HashMap<&str, usize> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut index = HashMap::with_capacity(workload.tasks.len());
    let mut records = Vec::with_capacity(workload.tasks.len());
    for (i, t) in workload.tasks.iter().enumerate() {
        if index.insert(t.spec.id.clone(), i).is_some() {
            return Err(SchedulerError::InvalidWorkload(format!(
                "task id `{}` appears twice",
                t.spec.id
            )));
        }
        records.push(TaskRecord {
            id: t.spec.id.clone(),
            owner: t.spec.owner.clone(),
            arrival: t.at,
            start: None,
            end: None,
            worker: None,
            unschedulable: false,
        });
    }
    let mut order: Vec<usize> = (0..workload.tasks.len()).collect();
    order.sort_by_key(|&i| workload.tasks[i].at);
    let tenant = |i: usize| {
        tenant_of
            .get(workload.tasks[i].spec.owner.as_str())
            .copied()
            .unwrap_or(0)
    };

    let mut waiting = vec![0usize; tenants.len()];
    let mut done: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    let (mut next, mut contended) = (0, (None, None));
    loop {
        let arrival = order.get(next).map(|&i| workload.tasks[i].at);
        let completion = done.peek().map(|Reverse((t, _))| *t);
        let now = match (arrival, completion) {
            (Some(a), Some(c)) => a.min(c),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => break,
        };
        while let Some(&Reverse((t, i))) = done.peek() {
            if t > now {
                break;
            }
            done.pop();
            engine.finish(&workload.tasks[i].spec.id, now)?;
            records[i].end = Some(now);
        }
        while let Some(&i) = order.get(next).filter(|&&i| workload.tasks[i].at <= now) {
            engine.submit(workload.tasks[i].spec.clone(), now)?;
            waiting[tenant(i)] += 1;
            next += 1;
        }
        let round = engine.schedule(now);
        for p in round.placements {
            let i = index[&p.task];
            records[i].start = Some(now);
            records[i].worker = Some(p.worker);
            waiting[tenant(i)] -= 1;
            done.push(Reverse((now + workload.tasks[i].duration, i)));
        }
        for spec in round.unschedulable {
            let i = index[&spec.id];
            records[i].unschedulable = true;
            waiting[tenant(i)] -= 1;
        }
        let all_backlogged = waiting.iter().all(|&n| n > 0);
        match contended {
            (None, _) if all_backlogged => contended.0 = Some(now),
            (Some(_), None) if !all_backlogged => contended.1 = Some(now),
            _ => {}
        }
    }
    let slots: u64 = workload
        .workers
        .iter()
        .map(|w| u64::from(w.capabilities.slots))
        .sum();
    Ok(report(
        engine.scheduler_name(),
        config,
        &tenants,
        records,
        contended,
        slots,
    ))
}

fn report(
    scheduler: &str,
    config: &SchedulerConfig,
    tenants: &[String],
    tasks: Vec<TaskRecord>,
    contended: (Option<Duration>, Option<Duration>),
    slots: u64,
) -> Report {
    let makespan = tasks.iter().filter_map(|t| t.end).max().unwrap_or_default();
    let (period, is_contended) = match contended {
        (Some(s), e) if e.unwrap_or(makespan) > s => ((s, e.unwrap_or(makespan)), true),
        _ => ((Duration::ZERO, makespan), false),
    };
    let ran = |t: &TaskRecord| t.start.zip(t.end);
    let overlap = |(s, e): (Duration, Duration)| e.min(period.1).saturating_sub(s.max(period.0));
    let total_weight: f64 = tenants.iter().map(|t| config.weight_of(t)).sum();
    let mut rows: Vec<TenantReport> = tenants
        .iter()
        .map(|name| {
            let own = || tasks.iter().filter(move |t| &t.owner == name);
            let weight = config.weight_of(name);
            TenantReport {
                name: name.clone(),
                weight,
                tasks: own().count(),
                service: own().filter_map(ran).map(overlap).sum(),
                share: 0.0,
                weight_share: weight / total_weight,
                wait: WaitStats::of(own().filter_map(TaskRecord::wait).collect()),
                longest_gap: longest_gap(own()),
            }
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.service.as_secs_f64()).sum();
    for r in &mut rows {
        r.share = if total > 0.0 {
            r.service.as_secs_f64() / total
        } else {
            0.0
        };
    }
    let x: Vec<f64> = rows
        .iter()
        .map(|r| r.service.as_secs_f64() / r.weight)
        .collect();
    let jain_index = jain(&x);
    let busy: Duration = tasks.iter().filter_map(ran).map(|(s, e)| e - s).sum();
    let capacity = makespan.as_secs_f64() * slots as f64;
    let longest_gap = rows.iter().map(|r| r.longest_gap).max().unwrap_or_default();
    Report {
        scheduler: scheduler.to_owned(),
        wait: WaitStats::of(tasks.iter().filter_map(TaskRecord::wait).collect()),
        tenants: rows,
        jain_index,
        period,
        contended: is_contended,
        longest_gap,
        makespan,
        utilisation: if capacity > 0.0 {
            busy.as_secs_f64() / capacity
        } else {
            0.0
        },
        tasks,
    }
}

/// Renders the report as a table.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        let period = if self.contended {
            "contended period"
        } else {
            "whole run"
        };
        writeln!(
            f,
            "scheduler `{}` — service measured over the {period} {}–{}",
            self.scheduler,
            s(self.period.0),
            s(self.period.1)
        )?;
        writeln!(
            f,
            "{:<12} {:>6} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "tenant",
            "weight",
            "tasks",
            "share",
            "fair share",
            "wait p50",
            "wait p95",
            "wait p99",
            "max gap"
        )?;
        for t in &self.tenants {
            writeln!(
                f,
                "{:<12} {:>6.2} {:>7} {:>6.1}% {:>9.1}% {:>10} {:>10} {:>10} {:>10}",
                t.name,
                t.weight,
                t.tasks,
                100.0 * t.share,
                100.0 * t.weight_share,
                s(t.wait.p50),
                s(t.wait.p95),
                s(t.wait.p99),
                s(t.longest_gap)
            )?;
        }
        writeln!(
            f,
            "{:<12} {:>6} {:>7} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "(all)",
            "",
            self.tasks.len(),
            "",
            "",
            s(self.wait.p50),
            s(self.wait.p95),
            s(self.wait.p99),
            s(self.longest_gap)
        )?;
        let width = (self.period.1 - self.period.0) / 10;
        if let Some((at, j)) = self.worst_window_jain(width) {
            writeln!(
                f,
                "worst Jain over sliding {} windows of the {period}: {j:.4} (window from {})",
                s(width),
                s(at)
            )?;
        }
        write!(
            f,
            "Jain's fairness index {:.4} · makespan {} · utilisation {:.1}%",
            self.jain_index,
            s(self.makespan),
            100.0 * self.utilisation
        )
    }
}
