//! # Creating a plugin
//!
//! Demonstrates, step by step, a custom plugin that reacts to task-completed and
//! worker-failed events, and how it is run by the reference coordinator:
//!
//! 1. **Metadata**: name, version, kind and the hooks it wants (only those are delivered);
//! 2. **Configuration**: a `serde` struct with defaults and `deny_unknown_fields`, read in
//!    `on_start` (a bad key fails the start with the key named);
//! 3. **Events**: `on_event` counts completed tasks, notes slow ones, and on `WorkerFailed`
//!    publishes a custom `on-call.page` event for other plugins;
//! 4. **Shutdown**: `on_shutdown` logs a one-line report;
//! 5. **Running it**: the plugin is handed to `dtf_examples::Coordinator`, which runs four real
//!    shell commands on two local workers; one worker is killed mid-task (fault injection),
//!    so the plugin sees `WorkerFailed` and the task is re-run on the other worker;
//! 6. **Testing it** without a manager, with `PluginContext::detached` (see the test at the
//!    bottom: `cargo test -p dtf-examples --example plugin_example`).
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run --example plugin_example
//! ```

#![expect(clippy::print_stdout, reason = "an example reports to the terminal")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dtf_examples::{Coordinator, CoordinatorOptions, TaskDef};
use dtf_plugin_core::prelude::*;
use serde::Deserialize;

/// Step 2: the configuration. Every key has a default, so no configuration is needed.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct OnCallConfig {
    /// A task slower than this (milliseconds) is reported as slow. Default 100.
    slow_ms: u64,
    /// Who gets paged when a worker fails. Default `#test-infra`.
    channel: String,
}

impl Default for OnCallConfig {
    fn default() -> Self {
        Self {
            slow_ms: 100,
            channel: "#test-infra".to_owned(),
        }
    }
}

/// What the plugin saw; shared with `main` so the example can print it.
#[derive(Debug, Default, Clone)]
struct Seen {
    completed: u32,
    slow: Vec<String>,
    worker_failures: Vec<String>,
}

/// The plugin: reacts to `TaskCompleted` and `WorkerFailed`.
#[derive(Default)]
struct OnCall {
    config: OnCallConfig,
    seen: Arc<Mutex<Seen>>,
}

impl Plugin for OnCall {
    // Step 1: metadata. Only the two hooks asked for are ever delivered.
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("on-call")
            .version("1.0.0")
            .kind(PluginKind::Monitoring)
            .hooks(HookSet::of(&[Hook::TaskCompleted, Hook::WorkerFailed]))
    }

    // Step 2: read the configuration; an error here names the key and stops the start.
    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.config = ctx.config()?;
        Ok(())
    }

    // Step 3: react to events, in publish order, one at a time.
    async fn on_event(
        &mut self,
        ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        match &event.kind {
            EventKind::TaskCompleted(done) => {
                let mut seen = self.seen.lock().map_err(|_| "state poisoned")?;
                seen.completed += 1;
                if done.duration > Duration::from_millis(self.config.slow_ms) {
                    seen.slow.push(format!(
                        "{} ({})",
                        done.task,
                        dtf_examples::output::duration(done.duration)
                    ));
                }
            }
            EventKind::WorkerFailed(failed) => {
                tracing::warn!(worker = %failed.worker, error = %failed.error, "worker failed");
                self.seen
                    .lock()
                    .map_err(|_| "state poisoned")?
                    .worker_failures
                    .push(format!("{}: {}", failed.worker, failed.error));
                // Tell other plugins (a notifier, say) through a custom event.
                ctx.publish(EventKind::custom(
                    "on-call.page",
                    serde_json::json!({ "channel": self.config.channel, "worker": failed.worker }),
                ))?;
            }
            _ => {}
        }
        Ok(())
    }

    // Step 4: called once at the end, after the queued events were handled.
    async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        let seen = self.seen.lock().map_err(|_| "state poisoned")?;
        tracing::info!(
            completed = seen.completed,
            slow = seen.slow.len(),
            "on-call plugin done"
        );
        Ok(())
    }
}

/// A plugin written step by step, run in the reference coordinator. No flags.
#[derive(Debug, clap::Parser)]
#[command(name = "plugin_example", version)]
struct Cli {}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `--help` and `--version`; anything else is a usage error (exit code 2).
    let Cli {} = clap::Parser::parse();
    dtf_examples::output::init_logging("warn");

    // Step 5: hand the plugin to the coordinator. The factory builds a fresh instance after a
    // restart; the shared `Seen` survives it.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    let plugin = PluginSpec::new(move || OnCall {
        config: OnCallConfig::default(),
        seen: Arc::clone(&shared),
    })
    .config(serde_json::json!({ "slow_ms": 150, "channel": "#ci" }));

    let mut options = CoordinatorOptions::default();
    options.tasks = vec![
        TaskDef::shell("compile", "sleep 0.2; echo compiled"),
        TaskDef::shell("lint", "echo no warnings"),
        // Attempt 1 is killed with its worker; the re-run on the other worker passes.
        TaskDef::shell(
            "integration",
            r#"if [ "$DTF_ATTEMPT" = 1 ]; then sleep 5; fi; echo "attempt $DTF_ATTEMPT passed""#,
        ),
        TaskDef::shell("docs", "true"),
    ];
    options.workers = 2;
    options.progress = false;
    options.kill_worker_on_start = vec!["integration".to_owned()];
    let report = Coordinator::new(options)?.with_plugin(plugin).run().await?;

    let seen = seen.lock().map_err(|_| "state poisoned")?.clone();
    println!("tasks completed:  {}", seen.completed);
    println!("slow (> 150 ms):  {}", seen.slow.join(", "));
    println!("worker failures:  {}", seen.worker_failures.join(", "));
    println!("run: {} of {} passed", report.passed, report.tasks);
    Ok(())
}

// Step 6: a plugin is plain Rust; test it without a manager.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use dtf_plugin_core::event::EventMeta;

    fn event(kind: EventKind) -> Event {
        Event {
            meta: EventMeta {
                seq: 1,
                time: std::time::SystemTime::now(),
                source: Arc::from("test"),
            },
            kind,
        }
    }

    #[tokio::test]
    async fn notes_slow_tasks_and_worker_failures() {
        let mut ctx = PluginContext::detached("on-call", serde_json::json!({ "slow_ms": 10 }));
        let mut plugin = OnCall::default();
        plugin.on_start(&mut ctx).await.unwrap();
        let done =
            EventKind::task_completed("t1", "w1", TaskOutcome::Passed, Duration::from_millis(20));
        plugin.on_event(&mut ctx, &event(done)).await.unwrap();
        plugin
            .on_event(&mut ctx, &event(EventKind::worker_failed("w1", "oom")))
            .await
            .unwrap();
        let seen = plugin.seen.lock().unwrap();
        assert_eq!(seen.completed, 1);
        assert_eq!(seen.slow.len(), 1);
        assert_eq!(seen.worker_failures, ["w1: oom"]);
    }

    #[tokio::test]
    async fn a_misspelled_key_fails_the_start() {
        let mut ctx = PluginContext::detached("on-call", serde_json::json!({ "slow_msec": 10 }));
        let err = OnCall::default().on_start(&mut ctx).await.unwrap_err();
        assert!(
            err.to_string().contains("unknown field `slow_msec`"),
            "{err}"
        );
    }
}
