//! # Choosing, writing and measuring a scheduler
//!
//! Demonstrates:
//!
//! 1. writing a custom scheduling strategy (`shortest-first`, below) against the
//!    `dtf_scheduler::Scheduler` extension points and registering it by name next to the
//!    built-ins (`fifo`, `priority`, `round-robin`, `fairness`, `longest-first`);
//! 2. running the chosen strategy inside the `SchedulingCoordinator` plugin on a real plugin
//!    manager: workers and tasks are published on the bus, assignments come back as events;
//! 3. measuring it with the deterministic simulator on a contended workload — one tenant
//!    submits 10× the tasks of each other, at priority 0, while the others submit at
//!    priority 1 (so `priority` differs from `fifo`) — and printing the metrics table
//!    (Jain's fairness index, each tenant's share against its weight, wait p50/p95/p99,
//!    the longest time a tenant with waiting work went without a placement, makespan,
//!    utilisation), the worst Jain's index over sliding windows, and each tenant's share
//!    over time, for the chosen scheduler and for `fifo`, side by side.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run --example custom_scheduler -- --scheduler fairness
//! cargo run --example custom_scheduler -- --scheduler fairness --weights a=3,b=2,c=1
//! cargo run --example custom_scheduler -- --scheduler shortest-first --tenants 5 --seed 7
//! cargo run --example custom_scheduler -- --list-schedulers
//! ```
//!
//! Flags: `--help` lists them (the `Cli` struct below).

#![expect(clippy::print_stdout, reason = "an example reports to the terminal")]

use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser};

use dtf_plugin_core::event::TaskCreated;
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::testing::RecordingPlugin;
use dtf_scheduler::sim::{self, Generator, Report, TenantLoad, Workload};
use dtf_scheduler::{
    Registry, Scheduler, SchedulerConfig, SchedulerError, SchedulingCoordinator, TaskSpec,
    parse_weights,
};

/// A custom strategy: shortest expected duration first (minimises mean wait when estimates
/// are good). Only `name` is required; it overrides queue-sort and keeps the default filter,
/// score (spread + hardware affinity) and bind.
struct ShortestFirst;

impl Scheduler for ShortestFirst {
    fn name(&self) -> &str {
        "shortest-first"
    }

    fn sort_key(&self, task: &TaskSpec, _enqueued_at: Duration) -> i128 {
        // Unknown durations go last.
        task.expected_duration.map_or(i128::MAX, |d| {
            i128::try_from(d.as_millis()).unwrap_or(i128::MAX)
        })
    }
}

/// The built-ins plus ours.
fn registry() -> Result<Registry, SchedulerError> {
    let mut registry = Registry::new();
    registry.register("shortest-first", |_config| Ok(Box::new(ShortestFirst)))?;
    Ok(registry)
}

/// Run a scheduling strategy on the bus, then measure it against fifo with the simulator.
#[derive(Debug, Parser)]
#[command(name = "custom_scheduler", version)]
struct Cli {
    /// The strategy to run (--list-schedulers lists them).
    #[arg(long, value_name = "NAME", default_value = "fairness")]
    scheduler: String,
    /// fairness: the half-life of usage, in hours [default: 12].
    #[arg(long, value_name = "H")]
    half_life_hours: Option<f64>,
    /// fairness: the older window setting, a half-life of H/2.
    #[arg(long, value_name = "H")]
    fairness_window_hours: Option<f64>,
    /// Simulated workers, one slot each.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    workers: u32,
    /// Total simulated tasks, exactly.
    #[arg(long, value_name = "N", default_value_t = 7_200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    tasks: u32,
    /// Tenants; the first submits 10x each other's share.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    tenants: u32,
    /// Fairness weights, e.g. a=2,b=1 [default: all 1].
    #[arg(long, value_name = "A=W,...")]
    weights: Option<String>,
    /// The workload's seed.
    #[arg(long, value_name = "N", default_value_t = 42)]
    seed: u64,
    /// Print the registered strategies and exit.
    #[arg(long)]
    list_schedulers: bool,
}

struct Args {
    config: SchedulerConfig,
    workers: usize,
    tasks: usize,
    tenants: usize,
    seed: u64,
    list: bool,
}

/// The parsed command line; a usage error exits with code 2 (clap's message on stderr).
fn parse_args() -> Args {
    let cli = Cli::parse();
    let mut config = SchedulerConfig::new(cli.scheduler);
    config.half_life_hours = cli.half_life_hours;
    config.fairness_window_hours = cli.fairness_window_hours;
    if let Some(weights) = &cli.weights {
        match parse_weights(weights) {
            Ok(w) => config.weights = w,
            Err(e) => Cli::command()
                .error(
                    ErrorKind::ValueValidation,
                    format!("--weights: failed to {e}"),
                )
                .exit(),
        }
    }
    let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
    Args {
        config,
        workers: n(cli.workers),
        tasks: n(cli.tasks),
        tenants: n(cli.tenants),
        seed: cli.seed,
        list: cli.list_schedulers,
    }
}

fn tenant_name(i: usize) -> String {
    match u8::try_from(i) {
        Ok(i) if i < 26 => char::from(b'a' + i).to_string(),
        _ => format!("t{i}"),
    }
}

/// The contended workload: tenant `a` submits 10 parts at priority 0, every other tenant 1
/// part at priority 1, all at once, onto a cluster far too small to run them together.
/// Exactly `--tasks` tasks: the remainder of the division goes to `a`.
fn workload(args: &Args) -> Result<Workload, SchedulerError> {
    let parts = 10 + args.tenants - 1;
    let light = args.tasks / parts;
    let tenants = (0..args.tenants)
        .map(|i| {
            let n = if i == 0 {
                args.tasks - light * (args.tenants - 1)
            } else {
                light
            };
            TenantLoad::new(tenant_name(i), n)
        })
        .collect();
    let mut workload = Workload::generate(
        &Generator::builder()
            .seed(args.seed)
            .workers(args.workers)
            .tenants(tenants)
            .mean_duration(Duration::from_secs(60))
            .build(),
    )?;
    let heavy = tenant_name(0);
    for task in &mut workload.tasks {
        task.spec.priority = i32::from(task.spec.owner != heavy);
    }
    Ok(workload)
}

/// Runs the chosen strategy as the coordinator plugin on a real bus, for a handful of tasks.
async fn on_the_bus(
    registry: Registry,
    config: &SchedulerConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let coordinator = SchedulingCoordinator::spec(Arc::new(registry), config)?;
    let (recorder, recording) = RecordingPlugin::spec("recorder", HookSet::TASK);
    let manager = PluginManager::builder()
        .spec(coordinator)
        .spec(recorder)
        .spawn()
        .await?;
    let gpu = Capabilities::builder()
        .cpu_cores(16)
        .features(vec!["cuda".into()])
        .slots(1)
        .build();
    manager
        .publish(EventKind::worker_registered("gpu-1", gpu))
        .await?;
    let cpu = Capabilities::builder().cpu_cores(8).slots(2).build();
    manager
        .publish(EventKind::worker_registered("cpu-1", cpu))
        .await?;
    let tasks = [
        ("unit", "a", 10, vec![]),
        ("train", "b", 600, vec!["cuda"]),
        ("lint", "a", 5, vec![]),
    ];
    for (id, owner, secs, features) in tasks {
        let created = TaskCreated::builder()
            .task(id)
            .name(format!("tests::{id}"))
            .owner(owner)
            .requirements(
                Requirements::builder()
                    .features(features.into_iter().map(String::from).collect())
                    .build(),
            )
            .expected_duration(Some(Duration::from_secs(secs)))
            .build();
        manager
            .publish(EventKind::TaskCreated(Box::new(created)))
            .await?;
    }
    // The coordinator publishes while handling; the second flush waits for those events.
    manager.flush().await;
    manager.flush().await;
    println!("On the bus, `{}` assigned:", config.scheduler);
    for event in recording.events() {
        if let EventKind::TaskAssigned(a) = &event.kind {
            println!("  {:<6} -> {} (attempt {})", a.task, a.worker, a.attempt);
        }
    }
    manager.shutdown(ShutdownReason::Completed).await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    dtf_examples::output::init_logging("warn");
    let args = parse_args();
    let registry = registry()?;
    if args.list {
        println!("{}", registry.names().collect::<Vec<_>>().join("\n"));
        return Ok(());
    }
    // Check the choice up front: an unknown name lists the available ones.
    if let Err(e) = registry.build(&args.config) {
        eprintln!("error: failed to {e}");
        std::process::exit(2);
    }

    on_the_bus(registry.clone(), &args.config).await?;

    let workload = workload(&args)?;
    let counts: Vec<String> = (0..args.tenants)
        .map(|i| {
            let name = tenant_name(i);
            let n = workload
                .tasks
                .iter()
                .filter(|t| t.spec.owner == name)
                .count();
            format!("{name}: {n}")
        })
        .collect();
    println!(
        "\nSimulated workload (seed {}): {} workers × 1 slot, tasks per tenant {{{}}}, all \
         submitted at t=0 (`a` at priority 0, the others at 1), run times 30–90 s, \
         fairness half-life {:.1} h.\n",
        args.seed,
        args.workers,
        counts.join(", "),
        args.config.half_life()?.as_secs_f64() / 3600.0
    );
    let chosen = sim::simulate(&workload, &registry, &args.config)?;
    println!("{chosen}\n");
    let fifo = if args.config.scheduler == "fifo" {
        chosen.clone()
    } else {
        let mut config = args.config.clone();
        config.scheduler = "fifo".into();
        let fifo = sim::simulate(&workload, &registry, &config)?;
        println!("{fifo}\n");
        fifo
    };
    compare(&chosen, &fifo);
    Ok(())
}

fn compare(chosen: &Report, fifo: &Report) {
    let s = |d: Duration| format!("{:.0}s", d.as_secs_f64());
    println!("{:<28} {:>14} {:>14}", "", chosen.scheduler, fifo.scheduler);
    println!(
        "{:<28} {:>14.5} {:>14.5}",
        "Jain's fairness index", chosen.jain_index, fifo.jain_index
    );
    let worst = |r: &Report| {
        r.tenants
            .iter()
            .map(|t| (t.share - t.weight_share).abs() / t.weight_share)
            .fold(0.0, f64::max)
    };
    println!(
        "{:<28} {:>13.1}% {:>13.1}%",
        "worst share off its weight",
        100.0 * worst(chosen),
        100.0 * worst(fifo)
    );
    // The light tenants (all but `a`): how long their work waits.
    let light = |r: &Report| {
        r.tenants
            .iter()
            .skip(1)
            .map(|t| t.wait.p50)
            .max()
            .unwrap_or_default()
    };
    println!(
        "{:<28} {:>14} {:>14}",
        "light tenants' wait p50",
        s(light(chosen)),
        s(light(fifo))
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "overall wait p99",
        s(chosen.wait.p99),
        s(fifo.wait.p99)
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "makespan",
        s(chosen.makespan),
        s(fifo.makespan)
    );
    println!(
        "{:<28} {:>13.1}% {:>13.1}%",
        "utilisation",
        100.0 * chosen.utilisation,
        100.0 * fifo.utilisation
    );
    // Figures an average cannot hide: the worst Jain's index over sliding windows (a tenth
    // of the contended period each) and the longest drought of a tenant with waiting work.
    let width = |r: &Report| (r.period.1 - r.period.0) / 10;
    let worst_window = |r: &Report| r.worst_window_jain(width(r)).map_or(1.0, |(_, j)| j);
    println!(
        "{:<28} {:>14.5} {:>14.5}",
        "worst sliding-window Jain",
        worst_window(chosen),
        worst_window(fifo)
    );
    println!(
        "{:<28} {:>14} {:>14}",
        "longest gap with work queued",
        s(chosen.longest_gap),
        s(fifo.longest_gap)
    );
    for r in [chosen, fifo] {
        share_over_time(r);
    }
}

/// Each tenant's share in ten windows of the run: share over time.
fn share_over_time(r: &Report) {
    let names: Vec<&str> = r.tenants.iter().map(|t| t.name.as_str()).collect();
    println!(
        "\nShare over time, `{}` (windows of a tenth of the run; tenants {}):",
        r.scheduler,
        names.join(", ")
    );
    for w in r.timeline(Duration::ZERO, r.makespan, r.makespan / 10) {
        let shares: Vec<String> = w
            .shares
            .iter()
            .map(|s| format!("{:>5.1}%", 100.0 * s))
            .collect();
        println!(
            "  {:>6.0}s–{:>6.0}s  {}",
            w.start.as_secs_f64(),
            w.end.as_secs_f64(),
            shares.join(" ")
        );
    }
}
