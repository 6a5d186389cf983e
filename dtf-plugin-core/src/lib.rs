//! # dtf-plugin-core
//!
//! The plugin architecture of a distributed testing framework: a strongly typed event model
//! for everything that happens in a test run, plugins that each run as a supervised
//! [`ractor`] actor, a bus that fans events out to the plugins that subscribe, and a manager
//! that isolates and restarts the ones that fail and lets an embedding application add,
//! remove, enable, disable and reconfigure plugins while the run goes on.
//!
//! ## Main types
//!
//! - [`Event`] (envelope: [`EventMeta`] + [`EventKind`]) and [`Hook`]/[`HookSet`] to
//!   subscribe; the expected order of events is documented in [`event`].
//! - [`Plugin`]: the trait a plugin author implements (only `on_event` is required), with a
//!   [`PluginContext`] to read typed configuration and publish.
//! - [`PluginRegistry`]: plugins by name, for coordinators configured from a file or a
//!   command line.
//! - [`PluginManager`]: assemble with [`PluginManager::builder`], publish through it or a
//!   [`Bus`] handle, manage plugins, read [`PluginStats`], [`flush`](PluginManager::flush),
//!   [`shutdown`](PluginManager::shutdown).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use dtf_plugin_core::prelude::*;
//!
//! /// Counts passed and failed tasks.
//! #[derive(Default)]
//! struct Tally { passed: u32, failed: u32 }
//!
//! impl Plugin for Tally {
//!     fn metadata(&self) -> PluginMetadata {
//!         PluginMetadata::new("tally")
//!             .kind(PluginKind::Reporter)
//!             .hooks(HookSet::of(&[Hook::TaskCompleted, Hook::CoordinatorShutdown]))
//!     }
//!
//!     async fn on_event(&mut self, _ctx: &mut PluginContext, event: &Event) -> Result<(), PluginError> {
//!         match &event.kind {
//!             EventKind::TaskCompleted(done) if done.outcome == TaskOutcome::Passed => self.passed += 1,
//!             EventKind::TaskCompleted(_) => self.failed += 1,
//!             EventKind::CoordinatorShutdown(_) => {
//!                 tracing::info!(passed = self.passed, failed = self.failed, "run finished");
//!             }
//!             _ => {}
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = PluginManager::builder().plugin(Tally::default).spawn().await?;
//! manager.publish(EventKind::coordinator_startup("run-1")).await?;
//! manager
//!     .publish(EventKind::task_completed("t1", "w1", TaskOutcome::Passed, Duration::from_millis(5)))
//!     .await?;
//! let report = manager.shutdown(ShutdownReason::Completed).await;
//! assert!(report.clean);
//! assert_eq!(report.plugins[0].stats.delivered, 2);
//! # Ok(())
//! # }
//! ```
//!
//! ## Feature flags
//!
// Feature-gated items are linked only when their feature is on, so `cargo doc
// --no-default-features` has no broken links.
#![cfg_attr(
    feature = "testing",
    doc = "- `testing`: [`testing::RecordingPlugin`], a plugin"
)]
#![cfg_attr(
    not(feature = "testing"),
    doc = "- `testing`: `testing::RecordingPlugin`, a plugin"
)]
//!   that records what it receives, for asserting on events in your own tests.
#![cfg_attr(
    feature = "config",
    doc = "- `config`: [`config::ConfigLoader`] reads a `dtf.toml`"
)]
#![cfg_attr(
    not(feature = "config"),
    doc = "- `config`: `config::ConfigLoader` reads a `dtf.toml`"
)]
//!   (manager defaults, plugin directories, per-plugin settings) with environment and
//!   command-line overrides, precise error positions and redacted printing. Adds the `toml`
//!   crate.
#![cfg_attr(
    feature = "external",
    doc = "- `external`: [`external`] runs out-of-process plugins"
)]
#![cfg_attr(
    not(feature = "external"),
    doc = "- `external`: `external` runs out-of-process plugins"
)]
//!   from plugin directories (a manifest plus any executable, newline-delimited JSON over
//!   stdin/stdout) and reloads them when they change. Implies `config`; adds tokio's `process`
//!   and `io-util`.
//!
//! ## Guarantees
//!
//! Per plugin, events arrive in publish order (global sequence numbers strictly increasing),
//! across any number of concurrent publishers. Queues are bounded with a documented
//! [`OverflowPolicy`]; control events are never dropped. A failing plugin (panic, `Err`, hung
//! handler) affects only itself: the event in hand is dead-lettered, the events behind it are
//! delivered to the restarted instance. At every quiescent point, per plugin,
//! `published == delivered + dropped + dead_lettered + queued`. The full list is in
//! `docs/event-delivery.md`.

#![forbid(unsafe_code)]
// On docs.rs (`--cfg docsrs`, nightly), items gated by a feature show a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bus;
#[cfg(feature = "config")]
pub mod config;
mod error;
pub mod event;
#[cfg(feature = "external")]
pub mod external;
mod handover;
pub mod lifecycle;
mod manager;
mod plugin;
pub mod registry;
pub mod retry;
mod runner;
mod secret;
mod supervision;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;

pub use bus::{Bus, DeadLetter, OverflowPolicy};
pub use error::{BatchClosed, ConfigError, ManagerError, PublishError};
pub use event::{Event, EventKind, EventMeta, Hook, HookSet, PluginKind, ShutdownReason};
pub use handover::Handover;
pub use manager::{
    ManagerConfig, PluginInfo, PluginManager, PluginManagerBuilder, PluginShutdown, PluginSpec,
    PluginStats, PluginStatus, ShutdownReport,
};
pub use plugin::{
    Plugin, PluginConfig, PluginContext, PluginError, PluginMetadata, Reconfigured, RestartPolicy,
    Stopping,
};
pub use registry::{
    Listing, PluginRegistry, PluginSource, RegistryEntry, RegistryError, SettingsProblem,
};
pub use secret::Secret;
pub use supervision::{Backoff, Jitter, RestartBudget};

/// What a plugin author needs, in one import: `use dtf_plugin_core::prelude::*;`.
pub mod prelude {
    pub use crate::event::{
        Capabilities, Event, EventKind, Hook, HookSet, PluginKind, Requirements, ShutdownReason,
        TaskError, TaskOutcome,
    };
    pub use crate::{
        Bus, ManagerConfig, OverflowPolicy, Plugin, PluginContext, PluginError, PluginManager,
        PluginMetadata, PluginSpec, Reconfigured, RestartPolicy, Stopping,
    };
}
