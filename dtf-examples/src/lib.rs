//! Runnable examples of dtf, and the library behind the reference coordinator
//! (`dtf-coordinator`): see `examples/`, the README's index and `docs/coordinator.md`.
//!
//! The coordinator assembles dtf the way an embedding application would:
//!
//! - [`taskfile`]: tasks are shell commands from a TOML file or the command line, or
//!   simulated tasks;
//! - [`executor`]: local worker actors and [`ShellExecutor`], the task-executor plugin
//!   (output captured, exit code → completed/failed, timeout → failed, retries);
//! - [`coordinator`]: [`Coordinator`] puts a [`dtf_plugin_core::PluginManager`] together
//!   with the scheduler ([`dtf_scheduler::SchedulingCoordinator`]), the executor, the
//!   workers and the optional plugins chosen by name from a
//!   [`dtf_plugin_core::PluginRegistry`], runs the tasks and returns a [`RunReport`];
//!   [`run_cli`] is the binary's entry point;
//! - [`cli`]: the command line of `dtf-coordinator` ([`cli::CoordinatorArgs`], clap derive);
//! - [`progress`]: the run tracker and the live progress line;
//! - [`scheduler_settings`]: the scheduler tuned from `[plugins.scheduler.settings]`;
//! - [`output`]: colour only on a terminal and never with `NO_COLOR`, the log subscriber;
//! - [`plugin_cli`]: `dtf-coordinator plugin …`, the plugin repository client
//!   ([`dtf_plugin_repo`]): search, install, update, remove, keygen, pack.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dtf_examples::CoordinatorError> {
//! use dtf_examples::{Coordinator, CoordinatorOptions, TaskDef};
//!
//! let mut options = CoordinatorOptions::default();
//! options.tasks = vec![TaskDef::shell("unit", "cargo test --lib"), TaskDef::shell("fmt", "cargo fmt --check")];
//! let report = Coordinator::new(options)?.run().await?;
//! if let Some(summary) = &report.summary {
//!     print!("{}", summary.render_table());
//! }
//! std::process::exit(report.exit_code());
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod cli;
pub mod console;
pub mod coordinator;
mod error;
pub mod event_log;
pub mod executor;
pub mod output;
pub mod plugin_cli;
pub mod progress;
pub mod remote;
pub mod scheduler_settings;
pub mod taskfile;

pub use coordinator::{
    Cli, Coordinator, CoordinatorOptions, DEFAULT_PLUGINS, LoadedConfig, PluginSelection,
    RunReport, load_config_and_plugin_dirs, plugin_registry, plugins_to_run, run_cli,
    select_plugins,
};
pub use error::CoordinatorError;
pub use executor::{ShellExecutor, WorkerPool};
pub use progress::{ProgressDisplay, RunTracker};
pub use taskfile::{TaskDef, TaskKind, load_task_file, simulated_tasks};
