//! # The plugin system end to end
//!
//! Demonstrates: assembling a manager with a few plugins, publishing a test run's lifecycle
//! (coordinator, workers, tasks, a lost worker and its recovery), a plugin that crashes on one
//! event and is restarted by its supervisor without losing the events behind it, a monitoring
//! plugin reacting to the framework's own `Plugin*` events, runtime management (reconfigure,
//! disable, enable), and the per-plugin stats and shutdown report.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run --example plugin_system
//! RUST_LOG=debug cargo run --example plugin_system   # more detail
//! ```

#![expect(clippy::print_stdout, reason = "an example reports to the terminal")]

use std::time::Duration;

use dtf_examples::output::duration;
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{Backoff, PluginInfo, RestartBudget};
use serde::Deserialize;

/// Tallies task outcomes; prints a one-line summary when the coordinator shuts down.
#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
    slow_threshold: Duration,
    slow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TallyConfig {
    /// Tasks slower than this (in ms) are listed.
    #[serde(default = "default_slow_ms")]
    slow_ms: u64,
}

fn default_slow_ms() -> u64 {
    1_000
}

impl Plugin for Tally {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("tally")
            .version("1.0.0")
            .kind(PluginKind::Reporter)
            .hooks(HookSet::of(&[
                Hook::TaskCompleted,
                Hook::TaskFailed,
                Hook::CoordinatorShutdown,
            ]))
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.slow_threshold = Duration::from_millis(ctx.config::<TallyConfig>()?.slow_ms);
        Ok(())
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        match &event.kind {
            EventKind::TaskCompleted(done) => {
                match done.outcome {
                    TaskOutcome::Passed => self.passed += 1,
                    _ => self.failed += 1,
                }
                if done.duration > self.slow_threshold {
                    self.slow
                        .push(format!("{} ({})", done.task, duration(done.duration)));
                }
            }
            EventKind::TaskFailed(f) if !f.retryable => self.failed += 1,
            EventKind::CoordinatorShutdown(_) => {
                println!(
                    "[tally] run finished: {} passed, {} failed; slower than {}: {}",
                    self.passed,
                    self.failed,
                    duration(self.slow_threshold),
                    if self.slow.is_empty() {
                        "none".to_owned()
                    } else {
                        self.slow.join(", ")
                    }
                );
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        self.slow_threshold = Duration::from_millis(ctx.config::<TallyConfig>()?.slow_ms);
        Ok(Reconfigured::Applied)
    }
}

/// A buggy plugin: it panics on any task whose name contains `poison`.
struct Buggy {
    seen: u32,
}

impl Plugin for Buggy {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("buggy")
            .kind(PluginKind::Custom)
            .hooks(HookSet::TASK)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        if let EventKind::TaskCreated(t) = &event.kind {
            if t.name.contains("poison") {
                panic!("buggy plugin cannot handle task {}", t.name);
            }
        }
        self.seen += 1;
        Ok(())
    }
}

/// Watches the framework's own events and says what the supervisor did.
struct Watchdog;

impl Plugin for Watchdog {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("watchdog")
            .kind(PluginKind::Monitoring)
            .hooks(HookSet::PLUGIN.union(HookSet::WORKER))
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        match &event.kind {
            EventKind::PluginFailed(f) => println!(
                "[watchdog] plugin `{}` failed: {} ({})",
                f.plugin,
                f.error,
                f.restart_in.map_or_else(
                    || "not restarted".to_owned(),
                    |d| format!("restart in {}", duration(d))
                )
            ),
            EventKind::PluginRestarted(r) => {
                println!(
                    "[watchdog] plugin `{}` restarted (restart #{})",
                    r.plugin, r.restarts
                )
            }
            EventKind::PluginDisabled(d) => {
                println!("[watchdog] plugin `{}` disabled: {}", d.plugin, d.reason)
            }
            EventKind::WorkerFailed(w) => {
                println!("[watchdog] worker {} failed: {}", w.worker, w.error)
            }
            EventKind::WorkerRecovered(w) => println!("[watchdog] worker {} is back", w.worker),
            _ => {}
        }
        Ok(())
    }
}

fn table(plugins: &[PluginInfo]) {
    println!(
        "\n{:<10} {:<13} {:<10} {:>9} {:>9} {:>7} {:>5} {:>6} {:>8}",
        "plugin",
        "kind",
        "status",
        "published",
        "delivered",
        "dropped",
        "dead",
        "queued",
        "restarts"
    );
    for p in plugins {
        let s = &p.stats;
        println!(
            "{:<10} {:<13} {:<10} {:>9} {:>9} {:>7} {:>5} {:>6} {:>8}",
            p.name,
            p.kind.to_string(),
            p.status.to_string(),
            s.published,
            s.delivered,
            s.dropped,
            s.dead_lettered,
            s.queued,
            s.restarts
        );
    }
    println!();
}

/// The plugin system end to end: a test run's lifecycle through supervised plugins. No flags;
/// `RUST_LOG=debug` for more detail.
#[derive(Debug, clap::Parser)]
#[command(name = "plugin_system", version)]
struct Cli {}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `--help` and `--version`; anything else is a usage error (exit code 2).
    let Cli {} = clap::Parser::parse();
    dtf_examples::output::init_logging("warn,dtf_plugin_core=info");
    // The buggy plugin's panic message is expected; keep the terminal readable.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("buggy plugin") {
            default_hook(info);
        }
    }));

    let manager = PluginManager::builder()
        .config(
            ManagerConfig::builder()
                .source("demo-coordinator")
                .backoff(Backoff {
                    initial: Duration::from_millis(50),
                    ..Backoff::default()
                })
                .restart_budget(RestartBudget::new(5, Duration::from_secs(30)))
                .build(),
        )
        .spec(PluginSpec::new(|| Watchdog))
        .spec(PluginSpec::new(Tally::default).config(serde_json::json!({ "slow_ms": 500 })))
        .spec(PluginSpec::new(|| Buggy { seen: 0 }))
        .spawn()
        .await?;
    println!(
        "manager started with {} plugins",
        manager.list().await?.len()
    );

    manager
        .publish(EventKind::coordinator_startup("demo-run-1"))
        .await?;
    let gpu = Capabilities::builder()
        .cpu_cores(8)
        .features(vec!["cuda".into()])
        .build();
    manager
        .publish(EventKind::worker_registered("w1", Capabilities::default()))
        .await?;
    manager
        .publish(EventKind::worker_registered("w2", gpu))
        .await?;

    let tasks = [
        ("t1", "tests::parser::round_trip", TaskOutcome::Passed, 120),
        ("t2", "tests::poison_pill", TaskOutcome::Passed, 80),
        ("t3", "tests::gpu::matmul", TaskOutcome::Passed, 900),
        ("t4", "tests::net::timeout", TaskOutcome::Failed, 30),
    ];
    for (i, (id, name, outcome, ms)) in tasks.iter().enumerate() {
        let worker = if i % 2 == 0 { "w1" } else { "w2" };
        manager.publish(EventKind::task_created(*id, *name)).await?;
        manager
            .publish(EventKind::task_assigned(*id, worker, 1))
            .await?;
        manager
            .publish(EventKind::task_started(*id, worker, 1))
            .await?;
        manager
            .publish(EventKind::task_completed(
                *id,
                worker,
                *outcome,
                Duration::from_millis(*ms),
            ))
            .await?;
    }

    // A worker dies with a task on it; the task is re-queued and re-run elsewhere.
    manager
        .publish(EventKind::task_created("t5", "tests::long"))
        .await?;
    manager
        .publish(EventKind::task_assigned("t5", "w2", 1))
        .await?;
    manager
        .publish(EventKind::task_started("t5", "w2", 1))
        .await?;
    manager
        .publish(EventKind::worker_failed("w2", "lost heartbeat"))
        .await?;
    manager
        .publish(EventKind::recovery_started(
            "r1",
            Some("w2".into()),
            vec!["t5".into()],
        ))
        .await?;
    manager
        .publish(EventKind::task_assigned("t5", "w1", 2))
        .await?;
    manager
        .publish(EventKind::recovery_completed("r1", 1))
        .await?;
    manager
        .publish(EventKind::task_started("t5", "w1", 2))
        .await?;
    manager
        .publish(EventKind::task_completed(
            "t5",
            "w1",
            TaskOutcome::Passed,
            Duration::from_millis(700),
        ))
        .await?;
    manager.publish(EventKind::worker_recovered("w2")).await?;
    manager.flush().await;

    println!("after the run (note `buggy`: one dead letter, one restart, nothing else lost):");
    table(&manager.list().await?);
    for letter in manager.dead_letters("buggy").await? {
        println!(
            "dead letter for `{}`: seq {} ({}): {}",
            letter.plugin,
            letter.event.meta.seq,
            hook_name(letter.event.hook()),
            letter.error
        );
    }

    // Runtime management while the coordinator keeps running.
    manager
        .reconfigure("tally", serde_json::json!({ "slow_ms": 100 }))
        .await?;
    match manager
        .reconfigure("tally", serde_json::json!({ "slow_ms": "fast" }))
        .await
    {
        Err(e) => println!("rejected as expected: {e}"),
        Ok(()) => println!("unexpected: a bad configuration was accepted"),
    }
    manager.disable("buggy").await?;
    manager
        .publish(EventKind::task_created("t6", "tests::while_buggy_is_off"))
        .await?;
    manager.enable("buggy").await?;
    manager.flush().await;

    let report = manager.shutdown(ShutdownReason::Completed).await;
    println!("\nshutdown report (clean: {}):", report.clean);
    for p in &report.plugins {
        println!(
            "  {:<10} delivered {:>3}, left in queue {}, error: {}",
            p.name,
            p.stats.delivered,
            p.left_in_queue,
            p.error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

/// A hook by its configuration name (`task_completed`), as `dtf.toml` writes it.
fn hook_name(hook: Hook) -> String {
    serde_json::to_value(hook)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
