//! # Embedding dtf in an existing test harness
//!
//! Demonstrates how a test suite that already has its own runner gets dtf's reports — JUnit
//! XML, the CI system's status lines, the task reporter's summary, and any plugin you add
//! (notifications, the CI API) — by adding a few lines. The harness here is
//! [`libtest-mimic`](https://docs.rs/libtest-mimic), the usual base of `harness = false`
//! test binaries: it keeps `cargo test`'s command line (`--list`, filters, `--ignored`,
//! `--include-ignored`, `--test-threads`) and output.
//!
//! The lines added to the harness are marked `// dtf:` below. [`Dtf`] is about sixty lines
//! you copy once: it starts a plugin manager, wraps each trial so that it publishes
//! `TaskCreated` → `TaskAssigned` → `TaskStarted` → `TaskCompleted`/`TaskFailed` (panics are
//! caught and reported), reports ignored trials as skipped, and shuts down at the end.
//!
//! Run it from the workspace root (a few seconds; all tests pass, exit code 0):
//!
//! ```text
//! cargo run --example embed_in_harness
//! cargo run --example embed_in_harness -- --include-ignored   # one failure, exit code 101
//! cargo run --example embed_in_harness -- parse               # a filter, as with cargo test
//! ```
//!
//! The JUnit report goes to `$DTF_JUNIT` (default: `dtf-embed-junit.xml` in the temporary
//! directory). On GitHub Actions, Azure Pipelines or TeamCity the failures are also printed
//! as that system's annotations.

#![expect(clippy::print_stdout, reason = "an example reports to the terminal")]

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dtf_plugin_core::event::{TaskCompleted, TaskFailed};
use dtf_plugin_core::prelude::*;
use dtf_plugins_ci::{CiReporter, CiSystem, TaskReporter, TaskReporterHandle, detect, process_env};
use libtest_mimic::{Arguments, Failed, Trial};

/// A test of the suite.
type TestFn = fn() -> Result<(), Failed>;

// ---------------------------------------------------------------------------------------
// The suite as it was before dtf: plain test functions.

fn parses_a_version() -> Result<(), Failed> {
    let parts = "1.84.0"
        .split('.')
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()?;
    if parts != [1, 84, 0] {
        return Err(format!("got {parts:?}").into());
    }
    Ok(())
}

fn sorts_stably() -> Result<(), Failed> {
    let mut v = vec![(2, 'a'), (1, 'b'), (2, 'c')];
    v.sort_by_key(|p| p.0);
    assert_eq!(v, [(1, 'b'), (2, 'a'), (2, 'c')]);
    Ok(())
}

fn reads_its_own_source() -> Result<(), Failed> {
    let src = std::fs::read_to_string(file!()).or_else(|_| {
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/embed_in_harness.rs"
        ))
    })?;
    if !src.contains("libtest-mimic") {
        return Err("unexpected contents".into());
    }
    Ok(())
}

fn waits_for_a_timer() -> Result<(), Failed> {
    std::thread::sleep(Duration::from_millis(50));
    Ok(())
}

/// Ignored by default, as a known failure would be: `--include-ignored` runs it.
fn talks_to_a_flaky_service() -> Result<(), Failed> {
    let answer: Option<u32> = None;
    assert!(answer.is_some(), "the service did not answer");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The few lines that connect it to dtf.

/// A plugin manager for the harness, and the wrapper that turns trials into task events.
struct Dtf {
    runtime: tokio::runtime::Runtime,
    manager: PluginManager,
    summary: TaskReporterHandle,
    ran: Arc<Mutex<HashSet<String>>>,
    junit: PathBuf,
}

impl Dtf {
    /// Starts the manager with the CI reporter (JUnit plus the detected CI system's status
    /// lines) and the task reporter. Add your own plugins (notifiers, the CI API) here.
    fn start(run_id: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let runtime = tokio::runtime::Runtime::new()?;
        let junit = std::env::var_os("DTF_JUNIT").map_or_else(
            || std::env::temp_dir().join("dtf-embed-junit.xml"),
            PathBuf::from,
        );
        let commands = match detect(&process_env()).system {
            CiSystem::GithubActions => "github",
            CiSystem::AzureDevops => "azure",
            CiSystem::Teamcity => "teamcity",
            _ => "none",
        };
        let (reporter, summary) = TaskReporter::spec();
        let manager = runtime.block_on(
            PluginManager::builder()
                .spec(CiReporter::spec().config(serde_json::json!({
                    "junit": junit, "commands": commands,
                })))
                .spec(reporter.config(serde_json::json!({ "log_summary": false })))
                .spawn(),
        )?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        runtime.block_on(async {
            manager
                .publish(EventKind::coordinator_startup(run_id))
                .await?;
            let caps = Capabilities::builder().slots(threads).build();
            manager
                .publish(EventKind::worker_registered("local", caps))
                .await
        })?;
        Ok(Self {
            runtime,
            manager,
            summary,
            ran: Arc::default(),
            junit,
        })
    }

    fn publish(bus: &Bus, handle: &tokio::runtime::Handle, kind: EventKind) {
        if let Err(e) = handle.block_on(bus.publish(kind)) {
            tracing::warn!(error = %e, "event not published");
        }
    }

    /// Wraps a test function into a trial that reports itself to dtf.
    fn trial(&self, name: &str, test: TestFn) -> Trial {
        let (bus, handle, ran) = (
            self.manager.bus(),
            self.runtime.handle().clone(),
            Arc::clone(&self.ran),
        );
        let id = name.to_owned();
        Trial::test(name, move || {
            ran.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone());
            for kind in [
                EventKind::task_created(id.as_str(), id.as_str()),
                EventKind::task_assigned(id.as_str(), "local", 1),
                EventKind::task_started(id.as_str(), "local", 1),
            ] {
                Self::publish(&bus, &handle, kind);
            }
            let started = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(test)).unwrap_or_else(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "the test panicked".to_owned());
                Err(msg.into())
            });
            let done = match &result {
                Ok(()) => EventKind::TaskCompleted(Box::new(
                    TaskCompleted::builder()
                        .task(id.as_str())
                        .worker("local")
                        .outcome(TaskOutcome::Passed)
                        .duration(started.elapsed())
                        .build(),
                )),
                Err(failed) => {
                    let message = failed.message().unwrap_or("failed").to_owned();
                    let error = TaskError::builder()
                        .kind("TestFailure")
                        .message(message)
                        .build();
                    EventKind::TaskFailed(Box::new(
                        TaskFailed::builder()
                            .task(id.as_str())
                            .worker("local")
                            .error(error)
                            .build(),
                    ))
                }
            };
            Self::publish(&bus, &handle, done);
            result
        })
    }

    /// Reports ignored trials that did not run as skipped, shuts the plugins down (which
    /// writes the reports) and prints the summary.
    fn finish(self, ignored: &[&str]) {
        let ran = self
            .ran
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.runtime.block_on(async {
            for name in ignored.iter().filter(|n| !ran.contains(**n)) {
                for kind in [
                    EventKind::task_created(*name, *name),
                    EventKind::task_assigned(*name, "local", 1),
                    EventKind::task_started(*name, "local", 1),
                    EventKind::task_completed(*name, "local", TaskOutcome::Skipped, Duration::ZERO),
                ] {
                    let _ = self.manager.publish(kind).await;
                }
            }
            let _ = self
                .manager
                .publish(EventKind::worker_disconnected("local", "suite finished"))
                .await;
            self.manager.shutdown(ShutdownReason::Completed).await
        });
        let summary = self.summary.summary();
        println!("\n--- dtf ---\n{}", summary.render_table());
        println!("JUnit: {}", self.junit.display());
        println!(
            "CI status: {}",
            if summary.is_failure() {
                "failure"
            } else {
                "success"
            }
        );
    }
}

/// The test harness's command line: libtest's flags (libtest-mimic's `Arguments`, itself a
/// clap derive struct), plus `--version`.
#[derive(Debug, clap::Parser)]
#[command(name = "embed_in_harness", version)]
struct Cli {
    #[command(flatten)]
    tests: Arguments,
    /// Print version (libtest's flags turn clap's own `--version` off, so it is added here).
    #[arg(short = 'V', long, action = clap::ArgAction::Version)]
    version: Option<bool>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = <Cli as clap::Parser>::parse().tests;
    let dtf = Dtf::start("embed-in-harness")?; // dtf: start
    let tests: [(&str, TestFn); 4] = [
        ("parser::parses_a_version", parses_a_version),
        ("collections::sorts_stably", sorts_stably),
        ("fs::reads_its_own_source", reads_its_own_source),
        ("time::waits_for_a_timer", waits_for_a_timer),
    ];
    let mut trials: Vec<Trial> = tests.iter().map(|(name, f)| dtf.trial(name, *f)).collect(); // dtf: wrap
    let ignored = ["net::talks_to_a_flaky_service"];
    trials.push(
        dtf.trial(ignored[0], talks_to_a_flaky_service)
            .with_ignored_flag(true),
    );
    let listing = args.list;
    let conclusion = libtest_mimic::run(&args, trials);
    if !listing {
        dtf.finish(&ignored); // dtf: report
    }
    conclusion.exit()
}
