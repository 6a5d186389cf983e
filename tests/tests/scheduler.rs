//! The scheduler: safety and liveness invariants (proptest, every built-in strategy), the
//! fairness figures on the simulator, the fairness window on a virtual clock, bad input, and
//! the scheduling coordinator end to end on a real plugin manager.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use dtf_plugin_core::event::{TaskId, WorkerId};
use dtf_plugin_core::lifecycle::LifecycleChecker;
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::testing::{Recording, RecordingPlugin};
use dtf_scheduler::sim::{self, Generator, Report, SimTask, TenantLoad, Workload};
use dtf_scheduler::{
    Engine, Registry, SchedulerConfig, SchedulerError, SchedulingCoordinator, TaskSpec, TaskStatus,
    parse_weights,
};
use proptest::prelude::*;

const HOUR: Duration = Duration::from_secs(3600);
const MEAN: Duration = Duration::from_secs(60);

fn engine(config: &SchedulerConfig) -> Engine {
    Engine::new(Registry::new().build(config).unwrap())
}

fn caps(cpu: u32, features: &[&str], slots: u32) -> Capabilities {
    Capabilities::builder()
        .cpu_cores(cpu)
        .memory_mib(16_384)
        .features(features.iter().map(|f| (*f).to_owned()).collect())
        .slots(slots)
        .build()
}

fn task(id: &str, owner: &str, expected: Duration) -> TaskSpec {
    TaskSpec::builder()
        .id(id)
        .owner(owner)
        .expected_duration(expected)
        .build()
}

fn run(workload: &Workload, config: &SchedulerConfig) -> Report {
    sim::simulate(workload, &Registry::new(), config).unwrap()
}

fn tenant<'r>(report: &'r Report, name: &str) -> &'r sim::TenantReport {
    report.tenants.iter().find(|t| t.name == name).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Invariants, for every built-in strategy.
// ---------------------------------------------------------------------------------------------

const FEATURES: [&str; 3] = ["cuda", "rocm", "webgpu"];

fn features(mask: u8) -> Vec<String> {
    FEATURES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, f)| (*f).to_owned())
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    AddWorker {
        w: u8,
        cpu: u32,
        features: u8,
        slots: u32,
    },
    Submit {
        tenant: u8,
        priority: i32,
        cpu: u32,
        features: u8,
        secs: u64,
    },
    Complete(usize),
    Retry(usize),
    Cancel(usize),
    Lose(u8),
    Recover(u8),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..6, 1u32..16, 0u8..8, 0u32..4)
            .prop_map(|(w, cpu, features, slots)| Op::AddWorker { w, cpu, features, slots }),
        4 => (0u8..3, -2i32..3, 0u32..20, 0u8..8, 1u64..600).prop_map(
            |(tenant, priority, cpu, f, secs)| Op::Submit {
                tenant,
                priority,
                cpu,
                // Mostly no feature, sometimes one or more.
                features: if f < 5 { 0 } else { f },
                secs,
            }
        ),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Retry),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0u8..6).prop_map(Op::Lose),
        1 => (0u8..6).prop_map(Op::Recover),
        1 => (1u64..3600).prop_map(Op::Advance),
    ]
}

/// What the test believes, checked against every decision the engine makes.
#[derive(Default)]
struct Model {
    workers: HashMap<WorkerId, (Capabilities, bool)>,
    tasks: HashMap<TaskId, (Requirements, Option<WorkerId>)>,
    created: Vec<TaskId>,
    ended: HashSet<TaskId>,
}

impl Model {
    fn load(&self, w: &WorkerId) -> u32 {
        self.tasks
            .values()
            .filter(|(_, on)| on.as_ref() == Some(w))
            .count() as u32
    }

    fn nth_running(&self, i: usize) -> Option<TaskId> {
        let mut running: Vec<&TaskId> = self
            .tasks
            .iter()
            .filter(|(_, (_, on))| on.is_some())
            .map(|(t, _)| t)
            .collect();
        running.sort();
        (!running.is_empty()).then(|| running[i % running.len()].clone())
    }

    fn nth_live(&self, i: usize) -> Option<TaskId> {
        let mut live: Vec<&TaskId> = self.tasks.keys().collect();
        live.sort();
        (!live.is_empty()).then(|| live[i % live.len()].clone())
    }

    /// Schedules and checks the round: no double placement, requirements and capacity
    /// respected, unschedulable only when no known worker could ever run the task, and
    /// work-conserving afterwards.
    fn schedule(&mut self, engine: &mut Engine, now: Duration) {
        let round = engine.schedule(now);
        for p in &round.placements {
            let (req, on) = self.tasks.get(&p.task).expect("placed an unknown task");
            assert!(on.is_none(), "{} placed while already on {on:?}", p.task);
            let (caps, up) = &self.workers[&p.worker];
            assert!(
                *up,
                "{} placed on {}, which is out of service",
                p.task, p.worker
            );
            assert!(
                caps.satisfies(req),
                "{} placed on {}, which lacks {req:?}",
                p.task,
                p.worker
            );
            assert!(
                self.load(&p.worker) < caps.slots,
                "{} placed on full {}",
                p.task,
                p.worker
            );
            let req = req.clone();
            self.tasks
                .insert(p.task.clone(), (req, Some(p.worker.clone())));
        }
        for spec in &round.unschedulable {
            let (req, on) = self
                .tasks
                .remove(&spec.id)
                .expect("rejected an unknown task");
            assert!(on.is_none());
            assert!(
                !self.workers.is_empty()
                    && !self
                        .workers
                        .values()
                        .any(|(c, _)| c.slots > 0 && c.satisfies(&req)),
                "{} rejected though a known worker can run it",
                spec.id
            );
            self.ended.insert(spec.id.clone());
        }
        // Work-conserving: nothing waiting fits a free slot.
        for waiting in engine.waiting_tasks() {
            for w in engine.workers().filter(|w| w.free_slots() > 0) {
                assert!(
                    !w.capabilities.satisfies(&waiting.requirements),
                    "{} waits while {} has a free slot it fits",
                    waiting.id,
                    w.id
                );
            }
        }
        assert_eq!(
            engine.running(),
            self.tasks.values().filter(|t| t.1.is_some()).count()
        );
        assert_eq!(engine.waiting() + engine.running(), self.tasks.len());
    }

    fn apply(&mut self, engine: &mut Engine, op: Op, now: &mut Duration, next_id: &mut u32) {
        match op {
            Op::AddWorker {
                w,
                cpu,
                features: f,
                slots,
            } => {
                let id = WorkerId::from(format!("w{w}"));
                let caps = Capabilities::builder()
                    .cpu_cores(cpu)
                    .memory_mib(16_384)
                    .features(features(f))
                    .slots(slots)
                    .build();
                engine.add_worker(id.clone(), caps.clone());
                self.workers.insert(id, (caps, true));
            }
            Op::Submit {
                tenant,
                priority,
                cpu,
                features: f,
                secs,
            } => {
                let id = TaskId::from(format!("t{next_id}"));
                *next_id += 1;
                let req = Requirements::builder()
                    .cpu_cores(cpu)
                    .features(features(f))
                    .build();
                let spec = TaskSpec::builder()
                    .id(id.clone())
                    .owner(format!("tenant{tenant}"))
                    .priority(priority)
                    .requirements(req.clone())
                    .expected_duration(Duration::from_secs(secs))
                    .build();
                engine.submit(spec, *now).unwrap();
                self.tasks.insert(id.clone(), (req, None));
                self.created.push(id);
            }
            Op::Complete(i) => {
                if let Some(t) = self.nth_running(i) {
                    engine.finish(&t, *now).unwrap();
                    self.tasks.remove(&t);
                    self.ended.insert(t);
                }
            }
            Op::Retry(i) => {
                if let Some(t) = self.nth_running(i) {
                    engine.retry(&t, *now).unwrap();
                    self.tasks.get_mut(&t).unwrap().1 = None;
                }
            }
            Op::Cancel(i) => {
                if let Some(t) = self.nth_live(i) {
                    engine.finish(&t, *now).unwrap();
                    self.tasks.remove(&t);
                    self.ended.insert(t);
                }
            }
            Op::Lose(w) => {
                let id = WorkerId::from(format!("w{w}"));
                match self.workers.get_mut(&id) {
                    Some(entry) => {
                        entry.1 = false;
                        let mut requeued = engine.lose_worker(&id, *now).unwrap();
                        let mut expected: Vec<TaskId> = Vec::new();
                        for (t, (_, on)) in &mut self.tasks {
                            if on.as_ref() == Some(&id) {
                                expected.push(t.clone());
                                *on = None;
                            }
                        }
                        requeued.sort();
                        expected.sort();
                        assert_eq!(requeued, expected, "tasks re-queued from {id}");
                    }
                    None => assert!(matches!(
                        engine.lose_worker(&id, *now),
                        Err(SchedulerError::UnknownWorker(_))
                    )),
                }
            }
            Op::Recover(w) => {
                let id = WorkerId::from(format!("w{w}"));
                if let Some(entry) = self.workers.get_mut(&id) {
                    entry.1 = true;
                    engine.recover_worker(&id).unwrap();
                }
            }
            Op::Advance(secs) => *now += Duration::from_secs(secs),
        }
        self.schedule(engine, *now);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Any sequence of workers coming and going and tasks arriving, finishing, failing and
    /// being cancelled: no task is placed twice, on a worker lacking its requirements, on a
    /// full or lost worker; nothing fitting a free slot waits; and once workers are back and
    /// tasks complete, every created task ended completed, cancelled or unschedulable.
    #[test]
    fn placements_are_safe_work_conserving_and_every_task_ends(
        ops in prop::collection::vec(op(), 1..80),
        scheduler in prop::sample::select(Registry::BUILTINS.to_vec()),
    ) {
        let mut engine = engine(&SchedulerConfig::new(scheduler));
        let mut model = Model::default();
        let (mut now, mut next_id) = (Duration::ZERO, 0);
        for op in ops {
            model.apply(&mut engine, op, &mut now, &mut next_id);
        }
        // Drain: every worker back in service (one added if none was ever seen), then
        // complete whatever runs until nothing is left.
        if model.workers.is_empty() {
            model.apply(&mut engine, Op::AddWorker { w: 0, cpu: 1, features: 0, slots: 1 }, &mut now, &mut next_id);
        }
        for w in 0..6 {
            model.apply(&mut engine, Op::Recover(w), &mut now, &mut next_id);
        }
        let mut guard = 0;
        while engine.running() > 0 {
            model.apply(&mut engine, Op::Advance(1), &mut now, &mut next_id);
            while let Some(t) = model.nth_running(0) {
                engine.finish(&t, now).unwrap();
                model.tasks.remove(&t);
                model.ended.insert(t);
            }
            model.schedule(&mut engine, now);
            guard += 1;
            prop_assert!(guard < 10_000, "the drain does not end");
        }
        for t in &model.created {
            prop_assert!(model.ended.contains(t), "{t} did not end: {:?}", engine.task(t));
            prop_assert!(engine.task(t).is_none());
        }
        prop_assert_eq!(engine.waiting() + engine.running(), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Fairness figures on the simulator.
// ---------------------------------------------------------------------------------------------

fn ten_to_one() -> Workload {
    Workload::generate(
        &Generator::builder()
            .seed(42)
            .workers(20)
            .tenants(vec![
                TenantLoad::new("a", 6_000),
                TenantLoad::new("b", 600),
                TenantLoad::new("c", 600),
            ])
            .build(),
    )
    .unwrap()
}

#[test]
fn fairness_keeps_jain_index_above_0_99_when_one_tenant_submits_ten_times_more() {
    let workload = ten_to_one();
    let fair = run(&workload, &SchedulerConfig::new("fairness"));
    let fifo = run(&workload, &SchedulerConfig::new("fifo"));
    println!("{fair}\n\n{fifo}");
    assert!(fair.contended, "the cluster must be contended");
    assert!(
        fair.period.1 - fair.period.0 > 50 * MEAN,
        "a long contended period: {:?}",
        fair.period
    );
    assert!(
        fair.jain_index >= 0.99,
        "fairness: Jain {}",
        fair.jain_index
    );
    for t in &fair.tenants {
        assert!(
            (t.share - 1.0 / 3.0).abs() < 0.01,
            "{}: share {}",
            t.name,
            t.share
        );
    }
    // FIFO serves tenants in proportion to what they submit: far from fair.
    assert!(fifo.jain_index < 0.6, "fifo: Jain {}", fifo.jain_index);
    assert!(tenant(&fifo, "a").share > 0.8);
    // Work-conserving: the saturated cluster stays busy either way.
    assert!(
        fair.utilisation > 0.99 && fifo.utilisation > 0.99,
        "{} {}",
        fair.utilisation,
        fifo.utilisation
    );
}

/// Three backlogged tenants weighted 3:2:1 on 30 workers, each offering `features`: every
/// tenant's share of the slot time within 3 % of its weight's share. Returns the report.
#[allow(
    clippy::print_stdout,
    reason = "the report, for a failing run, as the tests print it"
)]
fn weighted_shares_within_3_percent(features: &[&str]) -> Report {
    let mut workload = Workload::generate(
        &Generator::builder()
            .seed(7)
            .workers(30)
            .tenants(vec![
                TenantLoad::new("a", 3_000),
                TenantLoad::new("b", 3_000),
                TenantLoad::new("c", 3_000),
            ])
            .build(),
    )
    .unwrap();
    for w in &mut workload.workers {
        w.capabilities
            .features
            .extend(features.iter().map(|f| (*f).to_owned()));
    }
    let config = SchedulerConfig::new("fairness").weights(parse_weights("a=3,b=2,c=1").unwrap());
    let report = run(&workload, &config);
    println!("{report}");
    assert!(report.contended);
    for t in &report.tenants {
        let off = (t.share - t.weight_share).abs() / t.weight_share;
        assert!(
            off <= 0.03,
            "{}: share {:.4} vs weight share {:.4}",
            t.name,
            t.share,
            t.weight_share
        );
    }
    report
}

#[test]
fn weighted_shares_stay_within_3_percent_of_weights_when_all_are_backlogged() {
    let report = weighted_shares_within_3_percent(&[]);
    assert!(
        report.jain_index >= 0.99,
        "Jain over weight-normalised service: {}",
        report.jain_index
    );
}

/// The same on workers that carry labels, as remote workers do (`zone=eu`, sent as features):
/// labels do not make a worker an accelerator, so plain work on it is charged to the plain
/// pool and the weights hold. With labels counted as hardware every tenant's plain usage stayed
/// 0 and the order fell back to round-robin: shares of a third each (found by a review).
#[test]
fn weighted_shares_hold_on_labelled_workers() {
    weighted_shares_within_3_percent(&["zone=eu"]);
}

#[test]
fn a_newcomer_waits_only_for_the_next_slot_behind_a_backlog_of_10000() {
    let mut workload = Workload::generate(
        &Generator::builder()
            .seed(3)
            .workers(10)
            .tenants(vec![TenantLoad::new("big", 10_000)])
            .build(),
    )
    .unwrap();
    let arrival = HOUR;
    workload
        .tasks
        .push(SimTask::new(arrival, task("newcomer", "small", MEAN), MEAN));
    let max_duration = workload.tasks.iter().map(|t| t.duration).max().unwrap();

    for name in ["fairness", "round-robin"] {
        let report = run(&workload, &SchedulerConfig::new(name));
        let record = report
            .tasks
            .iter()
            .find(|t| t.id.as_str() == "newcomer")
            .unwrap();
        // Its fair turn is the first slot released after it arrives: the earliest end among
        // the tasks running at that moment.
        let next_release = report
            .tasks
            .iter()
            .filter(|t| t.start.is_some_and(|s| s <= arrival) && t.end.is_some_and(|e| e > arrival))
            .filter_map(|t| t.end)
            .min()
            .unwrap();
        assert_eq!(record.start, Some(next_release), "{name}");
        assert!(
            record.wait().unwrap() <= max_duration,
            "{name}: waited {:?}",
            record.wait()
        );
    }
    // FIFO makes it wait for the whole backlog ahead of it.
    let fifo = run(&workload, &SchedulerConfig::new("fifo"));
    let record = fifo
        .tasks
        .iter()
        .find(|t| t.id.as_str() == "newcomer")
        .unwrap();
    assert!(
        record.wait().unwrap() > 10 * HOUR,
        "fifo: waited {:?}",
        record.wait()
    );
}

#[test]
fn priority_aging_bounds_how_long_later_higher_priorities_overtake() {
    // One worker; a stream of priority-5 tasks, and one priority-0 task arriving into it.
    let mut workload = Workload::default();
    workload
        .workers
        .push(sim::SimWorker::new("w", caps(8, &[], 1)));
    for i in 0..500u64 {
        let spec = TaskSpec::builder()
            .id(format!("hi{i}"))
            .owner("hi")
            .priority(5)
            .build();
        workload
            .tasks
            .push(SimTask::new(Duration::from_secs(10 * i), spec, MEAN));
    }
    let low_at = Duration::from_secs(100);
    let spec = TaskSpec::builder().id("lo").owner("lo").priority(0).build();
    workload.tasks.push(SimTask::new(low_at, spec, MEAN));
    let aging = Duration::from_secs(60);
    let report = run(
        &workload,
        &SchedulerConfig::new("priority").aging_secs(60.0),
    );
    let lo = report.tasks.iter().find(|t| t.id.as_str() == "lo").unwrap();
    let lo_start = lo.start.unwrap();
    // No task arriving more than 5 priority levels × aging after it went first.
    for t in report
        .tasks
        .iter()
        .filter(|t| t.start.is_some_and(|s| s < lo_start))
    {
        assert!(t.arrival <= low_at + 5 * aging, "{} overtook lo", t.id);
    }
    assert!(
        lo_start < Duration::from_secs(500 * 60),
        "lo was not starved"
    );
}

#[test]
fn round_robin_alternates_between_tenants() {
    let mut e = engine(&SchedulerConfig::new("round-robin"));
    for i in 0..20 {
        e.submit(task(&format!("a{i}"), "a", MEAN), Duration::ZERO)
            .unwrap();
    }
    for i in 0..5 {
        e.submit(task(&format!("b{i}"), "b", MEAN), Duration::ZERO)
            .unwrap();
    }
    e.add_worker("w", caps(8, &[], 10));
    let round = e.schedule(Duration::ZERO);
    let owners: String = round
        .placements
        .iter()
        .map(|p| &p.task.as_str()[..1])
        .collect();
    assert_eq!(owners, "ababababab");
}

#[test]
fn longest_first_places_long_tasks_first_and_packs_workers() {
    let mut e = engine(&SchedulerConfig::new("longest-first"));
    e.add_worker("w1", caps(8, &[], 2));
    e.add_worker("w2", caps(8, &[], 2));
    for (id, mins) in [("short", 1), ("long", 9), ("mid", 5)] {
        e.submit(
            task(id, "t", Duration::from_secs(60 * mins)),
            Duration::ZERO,
        )
        .unwrap();
    }
    let round = e.schedule(Duration::ZERO);
    let placed: Vec<(&str, &str)> = round
        .placements
        .iter()
        .map(|p| (p.task.as_str(), p.worker.as_str()))
        .collect();
    // Longest first; the second goes onto the worker already in use (packing).
    assert_eq!(placed, [("long", "w1"), ("mid", "w1"), ("short", "w2")]);
}

#[test]
fn tasks_avoid_accelerator_workers_they_do_not_need_until_nothing_else_is_free() {
    let mut e = engine(&SchedulerConfig::new("fifo"));
    e.add_worker("gpu", caps(8, &["cuda"], 1));
    e.add_worker("cpu", caps(8, &[], 1));
    e.submit(task("plain", "t", MEAN), Duration::ZERO).unwrap();
    e.submit(task("plain2", "t", MEAN), Duration::ZERO).unwrap();
    let round = e.schedule(Duration::ZERO);
    assert_eq!(round.placements[0].worker.as_str(), "cpu");
    assert_eq!(
        round.placements[1].worker.as_str(),
        "gpu",
        "work-conserving"
    );
}

#[test]
fn quotas_cap_a_tenants_running_tasks_and_the_rest_goes_to_others() {
    let config = SchedulerConfig::new("fairness").quota("a", 2);
    let mut e = engine(&config);
    e.add_worker("w", caps(8, &[], 6));
    for i in 0..10 {
        e.submit(task(&format!("a{i}"), "a", MEAN), Duration::ZERO)
            .unwrap();
        e.submit(task(&format!("b{i}"), "b", MEAN), Duration::ZERO)
            .unwrap();
    }
    let round = e.schedule(Duration::ZERO);
    let a = round
        .placements
        .iter()
        .filter(|p| p.task.as_str().starts_with('a'))
        .count();
    assert_eq!(
        (a, round.placements.len()),
        (2, 6),
        "a capped at 2, b takes the other 4"
    );
    // Freeing one of a's slots lets a run one more, not more.
    let first_a = round
        .placements
        .iter()
        .find(|p| p.task.as_str().starts_with('a'))
        .unwrap();
    e.finish(&first_a.task, MEAN).unwrap();
    let round = e.schedule(MEAN);
    assert_eq!(round.placements.len(), 1);
    assert!(round.placements[0].task.as_str().starts_with('a'));
}

// Fair over time: decayed usage, elapsed-time charging, no starvation (simulator).
// ---------------------------------------------------------------------------------------------

/// A task running for `secs`, declaring `expected` (or nothing).
fn sim_task(
    at: Duration,
    id: String,
    owner: &str,
    secs: u64,
    expected: Option<Duration>,
) -> SimTask {
    let spec = match expected {
        Some(e) => TaskSpec::builder()
            .id(id)
            .owner(owner)
            .expected_duration(e)
            .build(),
        None => TaskSpec::builder().id(id).owner(owner).build(),
    };
    SimTask::new(at, spec, Duration::from_secs(secs))
}

/// Run times of 30 to 90 s, spread deterministically.
fn spread(i: u64) -> u64 {
    30 + (i * 37) % 61
}

#[test]
fn a_late_tenant_and_the_incumbent_share_evenly_after_one_half_life_and_neither_starves() {
    // `a` has used all 10 workers for 24 h when `b` arrives; both stay backlogged.
    let mut workload = Workload::default();
    for w in 0..10 {
        workload
            .workers
            .push(sim::SimWorker::new(format!("w{w}"), caps(8, &[], 1)));
    }
    for i in 0..30_000u64 {
        let secs = spread(i);
        workload.tasks.push(sim_task(
            Duration::ZERO,
            format!("a{i}"),
            "a",
            secs,
            Some(Duration::from_secs(secs)),
        ));
    }
    let arrival = 24 * HOUR;
    for i in 0..15_000u64 {
        let secs = spread(i + 7);
        workload
            .tasks
            .push(sim_task(arrival, format!("b{i}"), "b", secs, None));
    }
    let config = SchedulerConfig::new("fairness");
    let half_life = config.half_life().unwrap();
    assert_eq!(half_life, 12 * HOUR, "the documented default");
    let report = run(&workload, &config);
    println!("{report}");
    let longest = workload.tasks.iter().map(|t| t.duration).max().unwrap();

    // From one half-life after b's arrival, every 1 h window is within ±10 % of 50 %, as long
    // as both are backlogged (b runs out first, well after 46 h).
    let from = arrival + half_life;
    let to = 46 * HOUR;
    assert!(
        report
            .tasks
            .iter()
            .any(|t| t.owner == "b" && t.start.is_none_or(|s| s > to))
    );
    for w in report.timeline(from, to, HOUR) {
        println!("{:?}–{:?}: {:?}", w.start, w.end, w.shares);
        for share in &w.shares {
            assert!(
                (share - 0.5).abs() <= 0.05,
                "window from {:?}: shares {:?}",
                w.start,
                w.shares
            );
        }
    }
    // No starvation: neither goes more than 2 × the longest task without a placement, even
    // while b catches up (the bound the guard gives: the longest task, then the next slot).
    for t in &report.tenants {
        assert!(
            t.longest_gap <= 2 * longest,
            "{}: {:?} without a placement (longest task {longest:?})",
            t.name,
            t.longest_gap
        );
    }
    // And the old hard window's alternating monopolies are gone: fifo-like 12 h droughts
    // would show up here.
    assert!(report.longest_gap < 5 * MEAN, "{:?}", report.longest_gap);
}

#[test]
fn estimates_off_by_100x_or_missing_buy_no_share_and_starve_no_one() {
    // a declares 1 s for 100 s tasks, b 1000 s for 10 s tasks, c declares nothing (50 s).
    let mut workload = Workload::default();
    for w in 0..20 {
        workload
            .workers
            .push(sim::SimWorker::new(format!("w{w}"), caps(8, &[], 1)));
    }
    let tenants = [
        ("a", 100, Some(Duration::from_secs(1)), 1_500),
        ("b", 10, Some(Duration::from_secs(1_000)), 12_000),
        ("c", 50, None, 3_000),
    ];
    for (owner, secs, expected, count) in tenants {
        for i in 0..count {
            workload.tasks.push(sim_task(
                Duration::ZERO,
                format!("{owner}{i}"),
                owner,
                secs,
                expected,
            ));
        }
    }
    let config = SchedulerConfig::new("fairness").weights(parse_weights("a=2,b=1,c=1").unwrap());
    let report = run(&workload, &config);
    println!("{report}");
    assert!(
        report.contended && report.period.1 > 2 * HOUR,
        "{:?}",
        report.period
    );
    for t in &report.tenants {
        let off = (t.share - t.weight_share).abs() / t.weight_share;
        assert!(
            off <= 0.05,
            "{}: share {:.4} vs weight share {:.4}",
            t.name,
            t.share,
            t.weight_share
        );
    }
    let longest = Duration::from_secs(100);
    for t in &report.tenants {
        assert!(
            t.longest_gap <= longest,
            "{}: {:?} without a placement",
            t.name,
            t.longest_gap
        );
    }
    // Trusting the estimates instead (the old behaviour) is what FIFO-by-estimate would do;
    // here the liar gets exactly its weight.
    let a = tenant(&report, "a");
    assert!((a.share - 0.5).abs() < 0.025, "a: {}", a.share);
}

/// `owner`'s slot time on the workers whose id starts with `prefix`, within `[0, until)`.
fn service_on(report: &Report, owner: &str, prefix: &str, until: Duration) -> f64 {
    report
        .tasks
        .iter()
        .filter(|t| t.owner == owner)
        .filter(|t| {
            t.worker
                .as_ref()
                .is_some_and(|w| w.as_str().starts_with(prefix))
        })
        .filter_map(|t| t.start.zip(t.end))
        .map(|(s, e)| e.min(until).saturating_sub(s).as_secs_f64())
        .sum()
}

#[test]
fn a_tenants_plain_work_does_not_cost_it_its_share_of_the_accelerators() {
    // 16 plain workers and 4 cuda workers. `a` keeps every plain slot busy and also wants
    // the GPUs; `b` wants only the GPUs. With one usage figure per tenant, a's plain usage
    // would keep it off the GPUs; with usage per pool they split the GPUs evenly.
    let mut workload = Workload::default();
    for w in 0..16 {
        workload
            .workers
            .push(sim::SimWorker::new(format!("cpu{w:02}"), caps(8, &[], 1)));
    }
    for w in 0..4 {
        workload.workers.push(sim::SimWorker::new(
            format!("gpu{w}"),
            caps(8, &["cuda"], 1),
        ));
    }
    let cuda = Requirements::builder()
        .features(vec!["cuda".into()])
        .build();
    let mut add = |id: String, owner: &str, gpu: bool, secs: u64| {
        let mut spec = TaskSpec::builder().id(id).owner(owner).build();
        if gpu {
            spec.requirements = cuda.clone();
        }
        workload.tasks.push(SimTask::new(
            Duration::ZERO,
            spec,
            Duration::from_secs(secs),
        ));
    };
    for i in 0..4_000u64 {
        add(format!("a-cpu{i}"), "a", false, spread(i));
    }
    for i in 0..400u64 {
        add(format!("a-gpu{i}"), "a", true, spread(i + 3));
        add(format!("b-gpu{i}"), "b", true, spread(i + 5));
    }
    let report = run(&workload, &SchedulerConfig::new("fairness"));
    println!("{report}");
    // While both have GPU work waiting: until the first of them places its last GPU task.
    let last_gpu_start = |owner: &str| {
        report
            .tasks
            .iter()
            .filter(|t| t.owner == owner && t.id.as_str().contains("gpu"))
            .filter_map(|t| t.start)
            .max()
            .unwrap()
    };
    let until = last_gpu_start("a").min(last_gpu_start("b"));
    assert!(until > HOUR, "a long contended period: {until:?}");
    let (a, b) = (
        service_on(&report, "a", "gpu", until),
        service_on(&report, "b", "gpu", until),
    );
    let a_share = a / (a + b);
    println!("GPU time until {until:?}: a {a:.0}s, b {b:.0}s, a's share {a_share:.3}");
    assert!((a_share - 0.5).abs() <= 0.05, "a's GPU share {a_share}");
    // And a keeps the plain workers: no GPU task ever ran there, and a's plain work ran on
    // them throughout.
    let plain_a = service_on(&report, "a", "cpu", until);
    assert!(plain_a >= 0.99 * 16.0 * until.as_secs_f64(), "{plain_a}");
    assert!(report.longest_gap <= 2 * Duration::from_secs(90));
}

#[test]
fn the_fairness_window_maps_onto_a_half_life_of_half_the_window() {
    let window = SchedulerConfig::new("fairness").fairness_window_hours(24.0);
    assert_eq!(window.half_life().unwrap(), 12 * HOUR);
    let both = window.clone().half_life_hours(6.0);
    let err = both.validate().unwrap_err().to_string();
    assert!(
        err.contains("fairness_window_hours") && err.contains("half_life_hours"),
        "{err}"
    );
    assert_eq!(
        SchedulerConfig::new("fairness")
            .half_life_hours(6.0)
            .half_life()
            .unwrap(),
        6 * HOUR
    );
}

/// Tenant `a` uses 10 workers for 2 hours (20 slot-hours); then, at `then`, `a` and `b` each
/// submit 10 one-hour tasks at once. Returns how many of the 10 slots `b` gets.
fn b_slots_after_a_used_the_cluster(config: &SchedulerConfig, then: Duration) -> usize {
    let mut e = engine(config);
    for w in 0..10 {
        e.add_worker(format!("w{w}"), caps(8, &[], 1));
    }
    for i in 0..20 {
        e.submit(task(&format!("old{i}"), "a", HOUR), Duration::ZERO)
            .unwrap();
    }
    assert_eq!(e.schedule(Duration::ZERO).placements.len(), 10);
    for hour in 1..=2u32 {
        let now = HOUR * hour;
        let running: Vec<TaskId> = (0..20)
            .map(|i| TaskId::from(format!("old{i}")))
            .filter(|t| matches!(e.task(t), Some(TaskStatus::Running { .. })))
            .collect();
        for t in running {
            e.finish(&t, now).unwrap();
        }
        e.schedule(now);
    }
    assert_eq!(e.running() + e.waiting(), 0);
    for i in 0..10 {
        e.submit(task(&format!("a{i}"), "a", HOUR), then).unwrap();
        e.submit(task(&format!("b{i}"), "b", HOUR), then).unwrap();
    }
    let round = e.schedule(then);
    assert_eq!(round.placements.len(), 10);
    round
        .placements
        .iter()
        .filter(|p| p.task.as_str().starts_with('b'))
        .count()
}

#[test]
fn past_usage_fades_with_the_half_life_instead_of_falling_off_a_cliff() {
    // Half-life 1 h; every placement is provisionally charged 1 h (`default_duration_secs`),
    // so b takes slots while its provisional charges are below a's faded usage.
    let config = SchedulerConfig::new("fairness")
        .half_life_hours(1.0)
        .default_duration_secs(3600.0);
    // a's usage when its tasks end at 2 h: 10 slots × ∫ 2^-(age/1 h) over 2 h = 10 × 0.75 ×
    // 1 h / ln 2 ≈ 38,955 slot-seconds, more than b's 10 provisional hours: b takes every slot.
    assert_eq!(b_slots_after_a_used_the_cluster(&config, 2 * HOUR), 10);
    // Two half-lives later a's usage counts a quarter (≈ 9,739 s): b takes 3 slots (0, 3,600
    // and 7,200 s are below it), then they alternate (a at 9,739, b at 10,800, ...): b gets 6.
    assert_eq!(b_slots_after_a_used_the_cluster(&config, 4 * HOUR), 6);
    // 10 half-lives later (about 1/1000): an even split.
    assert_eq!(b_slots_after_a_used_the_cluster(&config, 12 * HOUR), 5);
}

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// Bad input.
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_scheduler_name_is_an_error_listing_the_available_ones() {
    let err = Registry::new()
        .build(&SchedulerConfig::new("fastest"))
        .err()
        .unwrap();
    assert!(matches!(err, SchedulerError::UnknownScheduler { .. }));
    assert_eq!(
        err.to_string(),
        "build scheduler `fastest`: no scheduler has this name \
         (available: fairness, fifo, longest-first, priority, round-robin)"
    );
    let spec = SchedulingCoordinator::spec(Arc::new(Registry::new()), &SchedulerConfig::new("x"));
    assert!(spec.is_err());
    let mut registry = Registry::new();
    let dup = registry.register("fifo", |_| {
        Err(SchedulerError::DuplicateScheduler("x".into()))
    });
    assert_eq!(
        dup.err(),
        Some(SchedulerError::DuplicateScheduler("fifo".into()))
    );
}

#[test]
fn weights_and_windows_must_be_positive() {
    let registry = Registry::new();
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let config = SchedulerConfig::new("fairness").weight("alice", bad);
        let err = registry.build(&config).err().unwrap();
        assert!(
            matches!(&err, SchedulerError::InvalidConfig { key, .. } if key == "weights.alice"),
            "{err}"
        );
        let config = SchedulerConfig::new("fairness").fairness_window_hours(bad);
        let err = registry.build(&config).err().unwrap();
        assert!(
            err.to_string()
                .starts_with("configure scheduler: `fairness_window_hours` must be"),
            "{err}"
        );
    }
    assert!(parse_weights("a=0").is_err());
    assert!(parse_weights("a=2,b").is_err());
    assert!(
        registry
            .build(&SchedulerConfig::new("fairness").quota("a", 0))
            .is_err()
    );
    // Unknown configuration keys are rejected too.
    assert!(serde_json::from_value::<SchedulerConfig>(serde_json::json!({"windw": 3})).is_err());
    let ok: SchedulerConfig = serde_json::from_value(serde_json::json!({
        "scheduler": "fairness", "fairness_window_hours": 6, "weights": {"a": 2}
    }))
    .unwrap();
    assert!(registry.build(&ok).is_ok());
}

#[test]
fn a_task_no_worker_can_run_is_reported_not_dropped() {
    let mut e = engine(&SchedulerConfig::new("fairness"));
    let rocm = Requirements::builder()
        .features(vec!["rocm".into()])
        .build();
    let spec = TaskSpec::builder()
        .id("needs-rocm")
        .owner("a")
        .requirements(rocm)
        .build();
    // Before any worker registers nothing can be judged: it waits.
    e.submit(spec, Duration::ZERO).unwrap();
    assert_eq!(e.schedule(Duration::ZERO), Default::default());
    assert_eq!(e.waiting(), 1);
    e.add_worker("cuda", caps(8, &["cuda"], 1));
    let round = e.schedule(Duration::ZERO);
    assert_eq!(round.unschedulable.len(), 1);
    assert_eq!(round.unschedulable[0].id.as_str(), "needs-rocm");
    assert!(round.placements.is_empty());
    assert_eq!(e.waiting(), 0);
    assert!(matches!(
        e.finish(&"needs-rocm".into(), Duration::ZERO),
        Err(SchedulerError::UnknownTask(_))
    ));
    // A duplicate id is refused while the first is live.
    e.submit(task("t", "a", MEAN), Duration::ZERO).unwrap();
    assert!(matches!(
        e.submit(task("t", "a", MEAN), Duration::ZERO),
        Err(SchedulerError::DuplicateTask(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// End to end: the coordinator as a plugin on a real manager.
// ---------------------------------------------------------------------------------------------

fn assigned(rec: &Recording) -> Vec<(String, String, u32)> {
    rec.events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskAssigned(a) => {
                Some((a.task.to_string(), a.worker.to_string(), a.attempt))
            }
            _ => None,
        })
        .collect()
}

/// Events published from inside a plugin come after the flush that delivered their cause;
/// `settle` also waits for the coordinator's decisions to reach the recorder.
async fn settle(manager: &PluginManager) {
    manager.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_assigns_recovers_and_rejects_on_a_real_bus() {
    let hooks = HookSet::TASK
        .union(HookSet::WORKER)
        .union(HookSet::RECOVERY);
    let (rec_spec, rec) = RecordingPlugin::spec("rec", hooks);
    let config = SchedulerConfig::new("fairness");
    let spec = SchedulingCoordinator::spec(Arc::new(Registry::new()), &config).unwrap();
    let manager = PluginManager::builder()
        .spec(spec)
        .spec(rec_spec)
        .spawn()
        .await
        .unwrap();

    manager
        .publish(EventKind::worker_registered("cpu", caps(8, &[], 2)))
        .await
        .unwrap();
    manager
        .publish(EventKind::worker_registered("gpu", caps(8, &["cuda"], 1)))
        .await
        .unwrap();
    let created = |id: &str, owner: &str, features: &[&str]| {
        let req = Requirements::builder()
            .features(features.iter().map(|f| (*f).to_owned()).collect())
            .build();
        let t = dtf_plugin_core::event::TaskCreated::builder()
            .task(id)
            .name(format!("tests::{id}"))
            .owner(owner)
            .requirements(req)
            .expected_duration(Some(MEAN))
            .build();
        EventKind::TaskCreated(Box::new(t))
    };
    manager.publish(created("t1", "a", &[])).await.unwrap();
    manager.publish(created("t2", "b", &[])).await.unwrap();
    manager
        .publish(created("t3", "a", &["cuda"]))
        .await
        .unwrap();
    manager.publish(created("t4", "b", &[])).await.unwrap();
    manager
        .publish(created("t5", "b", &["rocm"]))
        .await
        .unwrap();
    settle(&manager).await;
    assert_eq!(
        assigned(&rec),
        [
            ("t1".into(), "cpu".into(), 1),
            ("t2".into(), "cpu".into(), 1),
            ("t3".into(), "gpu".into(), 1)
        ]
    );
    let unschedulable: Vec<_> = rec
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TaskFailed(f) => {
                Some((f.task.to_string(), f.error.kind.clone(), f.retryable))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        unschedulable,
        [("t5".into(), "Unschedulable".into(), false)]
    );

    // t1 runs and completes: t4 gets its slot.
    manager
        .publish(EventKind::task_started("t1", "cpu", 1))
        .await
        .unwrap();
    manager
        .publish(EventKind::task_completed(
            "t1",
            "cpu",
            TaskOutcome::Passed,
            MEAN,
        ))
        .await
        .unwrap();
    settle(&manager).await;
    assert_eq!(assigned(&rec).last(), Some(&("t4".into(), "cpu".into(), 1)));

    // The GPU worker fails: t3 is re-queued (recovery events), waits for a cuda worker, and
    // is placed again, as attempt 2, when the worker recovers.
    manager
        .publish(EventKind::worker_failed("gpu", "driver crash"))
        .await
        .unwrap();
    settle(&manager).await;
    let recovery: Vec<_> = rec
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::RecoveryStarted(r) => Some(format!("started {:?}", r.tasks)),
            EventKind::RecoveryCompleted(r) => Some(format!("completed {}", r.requeued)),
            _ => None,
        })
        .collect();
    assert_eq!(recovery, ["started [TaskId(\"t3\")]", "completed 1"]);
    assert_eq!(assigned(&rec).len(), 4, "no cuda worker in service");
    manager
        .publish(EventKind::worker_recovered("gpu"))
        .await
        .unwrap();
    // Cancelling t2 frees a cpu slot that nothing waits for.
    manager
        .publish(EventKind::task_cancelled("t2", "user"))
        .await
        .unwrap();
    settle(&manager).await;
    assert_eq!(assigned(&rec).last(), Some(&("t3".into(), "gpu".into(), 2)));
    assert_eq!(assigned(&rec).len(), 5);

    // Every event on the bus, the coordinator's included, follows the lifecycle.
    let mut checker = LifecycleChecker::new();
    for e in rec.events() {
        checker
            .observe(&e.kind)
            .unwrap_or_else(|err| panic!("{err}"));
    }
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_task_is_assigned_to_another_worker_on_a_real_bus() {
    let (rec_spec, rec) = RecordingPlugin::spec("rec", HookSet::TASK);
    let spec =
        SchedulingCoordinator::spec(Arc::new(Registry::new()), &SchedulerConfig::new("fifo"))
            .unwrap();
    let manager = PluginManager::builder()
        .spec(spec)
        .spec(rec_spec)
        .spawn()
        .await
        .unwrap();
    for w in ["w1", "w2"] {
        manager
            .publish(EventKind::worker_registered(w, caps(8, &[], 1)))
            .await
            .unwrap();
    }
    manager
        .publish(EventKind::task_created("t", "tests::flaky"))
        .await
        .unwrap();
    settle(&manager).await;
    assert_eq!(assigned(&rec), [("t".into(), "w1".into(), 1)]);
    // The attempt on w1 fails and will be retried: both workers are free, and the retry goes
    // to w2, although w1 wins every tie.
    manager
        .publish(EventKind::task_started("t", "w1", 1))
        .await
        .unwrap();
    let error = TaskError::builder()
        .kind("ExitCode(1)")
        .message("flake")
        .build();
    manager
        .publish(EventKind::task_failed("t", error, true))
        .await
        .unwrap();
    settle(&manager).await;
    assert_eq!(
        assigned(&rec),
        [("t".into(), "w1".into(), 1), ("t".into(), "w2".into(), 2)]
    );
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A retry whose old worker is the only free one waits for the other (busy) worker; when that
/// one stays busy past `retry_elsewhere_secs`, the coordinator wakes itself and the retry goes
/// back to the free worker, with no other event on the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_retry_is_placed_when_its_wait_ends_without_another_event() {
    let (rec_spec, rec) = RecordingPlugin::spec("rec", HookSet::TASK);
    // Long enough that settling the bus on a loaded machine does not outlast it.
    let config = SchedulerConfig::new("fifo").retry_elsewhere_secs(2.0);
    let spec = SchedulingCoordinator::spec(Arc::new(Registry::new()), &config).unwrap();
    let manager = PluginManager::builder()
        .spec(spec)
        .spec(rec_spec)
        .spawn()
        .await
        .unwrap();
    for w in ["w1", "w2"] {
        manager
            .publish(EventKind::worker_registered(w, caps(8, &[], 1)))
            .await
            .unwrap();
    }
    for t in ["a", "b"] {
        manager
            .publish(EventKind::task_created(t, t))
            .await
            .unwrap();
    }
    settle(&manager).await;
    assert_eq!(
        assigned(&rec),
        [("a".into(), "w1".into(), 1), ("b".into(), "w2".into(), 1)]
    );
    manager
        .publish(EventKind::task_started("a", "w1", 1))
        .await
        .unwrap();
    let error = TaskError::builder()
        .kind("ExitCode(1)")
        .message("flake")
        .build();
    let failed_at = std::time::Instant::now();
    manager
        .publish(EventKind::task_failed("a", error, true))
        .await
        .unwrap();
    settle(&manager).await;
    // Held for w2, which runs `b`.
    assert_eq!(assigned(&rec).len(), 2);
    // No event comes; the wake-up places it on w1 once the wait is over (bounded: 10 s).
    let mut placed = Vec::new();
    for _ in 0..200 {
        placed = assigned(&rec);
        if placed.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        placed.get(2),
        Some(&("a".into(), "w1".into(), 2)),
        "{placed:?}"
    );
    assert!(failed_at.elapsed() >= Duration::from_secs(2));
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_in_the_simulator() {
    let (rec_spec, rec) = RecordingPlugin::spec("rec", HookSet::TASK.union(HookSet::WORKER));
    let manager = PluginManager::builder()
        .spec(rec_spec)
        .spawn()
        .await
        .unwrap();
    manager
        .publish(EventKind::worker_registered("w", caps(8, &[], 1)))
        .await
        .unwrap();
    for i in 0..3 {
        let t = dtf_plugin_core::event::TaskCreated::builder()
            .task(format!("t{i}"))
            .name("n")
            .owner("a")
            .build();
        manager
            .publish(EventKind::TaskCreated(Box::new(t)))
            .await
            .unwrap();
    }
    manager
        .publish(EventKind::task_completed(
            "t0",
            "w",
            TaskOutcome::Passed,
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    manager.flush().await;
    let workload = Workload::from_events(&rec.events(), MEAN);
    assert_eq!(workload.workers.len(), 1);
    assert_eq!(workload.tasks.len(), 3);
    assert_eq!(workload.tasks[0].duration, Duration::from_secs(5));
    assert_eq!(workload.tasks[1].duration, MEAN);
    let report = run(&workload, &SchedulerConfig::new("fifo"));
    assert_eq!(report.tasks.iter().filter(|t| t.end.is_some()).count(), 3);
    manager.shutdown(ShutdownReason::Completed).await;
}

// ---------------------------------------------------------------------------------------------
// The scheduler configured from dtf.toml, in the reference coordinator.
// ---------------------------------------------------------------------------------------------

async fn coordinator_cli(args: &[&str]) -> (i32, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    args.extend(["--progress".to_owned(), "never".to_owned()]);
    let code = dtf_examples::run_cli(args, &mut out, &mut err).await;
    // Errors go to stderr, results to stdout: the test reads whichever the exit code says.
    let (out, err) = (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    );
    (code, if code == 2 { err } else { out })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_reads_the_scheduler_from_dtf_toml_and_reports_bad_keys_with_positions() {
    let dir = std::env::temp_dir().join(format!("dtf-sched-toml-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("dtf.toml");
    let path = file.to_str().unwrap();

    std::fs::write(
        &file,
        "[plugins.scheduler.settings]\n\
         scheduler = \"fairness\"\n\
         half_lifee_hours = 3\n\
         weights = { alice = -1, bob = 2 }\n",
    )
    .unwrap();
    let (code, out) = coordinator_cli(&["--config", path, "--check-config"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "{path}:3:1: plugins.scheduler.settings.half_lifee_hours: unknown key `half_lifee_hours` (did you mean `half_life_hours`?)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{path}:4:21: plugins.scheduler.settings.weights.alice: must be a positive number (got -1)"
        )),
        "{out}"
    );

    // A valid section: the run uses it (resolved from the loaded file), the scheduler is not
    // started a second time as an optional plugin, and the tasks run.
    std::fs::write(
        &file,
        "[plugins.scheduler.settings]\n\
         scheduler = \"fairness\"\n\
         half_life_hours = 6\n\
         weights = { alice = 3 }\n\
         quotas = { bob = 2 }\n",
    )
    .unwrap();
    let mut registry = dtf_examples::plugin_registry();
    let loaded =
        dtf_examples::load_config_and_plugin_dirs(Some(&file), &[], &[], &mut registry).unwrap();
    let resolve = |base: &SchedulerConfig, name: Option<&str>| {
        dtf_examples::scheduler_settings::resolve(base, name, &loaded).unwrap()
    };
    let fifo = SchedulerConfig::new("fifo");
    let from_file = SchedulerConfig::new("fairness")
        .half_life_hours(6.0)
        .weight("alice", 3.0)
        .quota("bob", 2);
    assert_eq!(resolve(&fifo, None), from_file);
    // `--scheduler` on the command line chooses the strategy and keeps the file's tuning
    // (before, it threw the weights and quotas away), even when it names the default `fifo`
    // (before, that was taken for no choice, and the file's strategy ran).
    let mut chosen = from_file.clone();
    chosen.scheduler = "round-robin".into();
    assert_eq!(resolve(&fifo, Some("round-robin")), chosen);
    chosen.scheduler = "fifo".into();
    assert_eq!(resolve(&fifo, Some("fifo")), chosen);
    // A program that set its own settings keeps them.
    let own = SchedulerConfig::new("priority");
    assert_eq!(resolve(&own, None), own);
    let (code, out) = coordinator_cli(&[
        "--config", path, "--task", "true", "--task", "true", "--task", "true",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 of 3 task(s) passed"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A restarted scheduler goes on with its queue and workers, and hears what was published
/// while it restarted (before, the console's restart was a disable and an enable: the new
/// instance started empty and the events in between never reached it, so every waiting task
/// was forgotten and the run waited forever). Its settings cannot change during a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_keeps_its_queue_and_misses_no_event() {
    let (rec_spec, rec) = RecordingPlugin::spec("rec", HookSet::TASK);
    let config = SchedulerConfig::new("fifo");
    let spec = SchedulingCoordinator::spec(Arc::new(Registry::new()), &config).unwrap();
    let manager = PluginManager::builder()
        .spec(spec)
        .spec(rec_spec)
        .spawn()
        .await
        .unwrap();
    let publish = async |kind: EventKind| manager.publish(kind).await.unwrap();
    publish(EventKind::worker_registered("w", caps(8, &[], 1))).await;
    for t in ["t1", "t2", "t3"] {
        publish(EventKind::task_created(t, "a")).await;
    }
    settle(&manager).await;
    assert_eq!(assigned(&rec), [("t1".into(), "w".into(), 1)]);

    // The first task ends while the scheduler restarts.
    let name = SchedulingCoordinator::NAME;
    let (restarted, ()) = tokio::join!(manager.restart(name), async {
        let done = EventKind::task_completed("t1", "w", TaskOutcome::Passed, Duration::ZERO);
        manager.publish(done).await.unwrap();
    });
    restarted.unwrap();
    settle(&manager).await;
    assert_eq!(assigned(&rec)[1], ("t2".into(), "w".into(), 1));
    let stats = manager.stats(name).await.unwrap();
    assert_eq!((stats.restarts, stats.failures), (0, 0), "{stats:?}");

    // The same settings are accepted; others are refused, and it goes on.
    manager.reconfigure(name, &config).await.unwrap();
    let other = SchedulerConfig::new("fairness");
    let err = manager.reconfigure(name, &other).await.unwrap_err();
    assert!(
        err.to_string().contains("cannot change during a run"),
        "{err}"
    );
    publish(EventKind::task_completed(
        "t2",
        "w",
        TaskOutcome::Passed,
        Duration::ZERO,
    ))
    .await;
    settle(&manager).await;
    assert_eq!(assigned(&rec).len(), 3, "{:?}", assigned(&rec));
    manager.restart("nope").await.unwrap_err();
    manager.shutdown(ShutdownReason::Completed).await;
}
