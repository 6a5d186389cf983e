//! Placement cost of `dtf-scheduler`: the time of one placement decision with 10,000 waiting
//! tasks and 100 busy workers, for `fairness` and the `fifo` baseline in the same run, with 10
//! and with 10,000 tenants (target: at most 2 µs).
//!
//! Each measured iteration is one steady-state step: the oldest running task finishes (its
//! slot frees), it is submitted again (the queue stays at 10,000), and `Engine::schedule`
//! makes exactly one placement — so the figure includes the `finish` and `submit` that
//! trigger a decision. Tasks belong to 10 or 10,000 tenants, round-robin, with 5 priority
//! levels.
//!
//! Run with `cargo bench -p dtf-benches --bench scheduler`; record results in
//! `docs/scheduler.md`.

#![expect(
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop loudly"
)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use dtf_plugin_core::event::TaskId;
use dtf_plugin_core::prelude::Capabilities;
use dtf_scheduler::{Engine, Registry, SchedulerConfig, TaskSpec};

const WAITING: usize = 10_000;
const WORKERS: usize = 100;
const TENANTS: [usize; 2] = [10, 10_000];

/// An engine with every worker busy and `WAITING` tasks queued, and the running tasks in the
/// order they were placed.
fn saturated(scheduler: &str, tenants: usize) -> (Engine, VecDeque<TaskId>) {
    let config = SchedulerConfig::new(scheduler);
    let mut engine = Engine::new(Registry::new().build(&config).expect("built-in scheduler"));
    for w in 0..WORKERS {
        let caps = Capabilities::builder()
            .cpu_cores(8)
            .memory_mib(16_384)
            .slots(1)
            .build();
        engine.add_worker(format!("w{w:03}"), caps);
    }
    for i in 0..WAITING + WORKERS {
        let spec = TaskSpec::builder()
            .id(format!("t{i}"))
            .owner(format!("tenant{}", i % tenants))
            .priority((i % 5) as i32)
            .expected_duration(Duration::from_secs(60 + (i % 7) as u64))
            .build();
        engine.submit(spec, Duration::ZERO).expect("unique ids");
    }
    let running = engine
        .schedule(Duration::ZERO)
        .placements
        .into_iter()
        .map(|p| p.task)
        .collect::<VecDeque<_>>();
    assert_eq!((running.len(), engine.waiting()), (WORKERS, WAITING));
    (engine, running)
}

fn bench_placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement/10000-waiting/100-workers");
    for (scheduler, tenants) in TENANTS.iter().flat_map(|&t| [("fairness", t), ("fifo", t)]) {
        let (mut engine, mut running) = saturated(scheduler, tenants);
        let mut now = Duration::ZERO;
        let id = BenchmarkId::new(scheduler, format!("{tenants}-tenants"));
        group.bench_function(id, |b| {
            b.iter(|| {
                now += Duration::from_millis(10);
                let done = running.pop_front().expect("a running task");
                let spec = engine.finish(&done, now).expect("known task");
                engine.submit(spec, now).expect("id free again");
                let round = engine.schedule(now);
                debug_assert_eq!(round.placements.len(), 1);
                running.extend(round.placements.into_iter().map(|p| p.task));
                black_box(&engine);
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench_placement(&mut c);
    c.final_summary();
}
