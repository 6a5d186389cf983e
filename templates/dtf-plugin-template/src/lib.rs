//! A template for a dtf plugin published as a crate: `failure-count` counts failed tasks and
//! publishes the running count as a custom event (`failure-count.total`) after each one.
//!
//! The convention for Rust plugins (`docs/publishing-a-plugin.md`): the crate is named
//! `dtf-plugin-<name>`, depends on `dtf-plugin-core` only through its public API, and exposes
//! `register(&mut PluginRegistry)`, which adds its plugins to the application's registry
//! with a description and default settings. The application then enables them by name
//! (`[plugins.failure-count]` in `dtf.toml`).
//!
//! ```
//! let mut registry = dtf_plugin_core::PluginRegistry::new();
//! dtf_plugin_template::register(&mut registry)?;
//! assert!(registry.get("failure-count").is_some());
//! # Ok::<(), dtf_plugin_core::RegistryError>(())
//! ```

#![forbid(unsafe_code)]

use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{PluginRegistry, RegistryEntry, RegistryError};
use serde::Deserialize;

/// The plugin's name, as users enable it.
pub const NAME: &str = "failure-count";

/// Settings (`[plugins.failure-count.settings]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Log a warning from this many failures on. Default 1.
    #[serde(default = "one")]
    pub warn_from: u64,
}

fn one() -> u64 {
    1
}

/// Counts `TaskFailed` events and publishes `failure-count.total` with `{"failed": N}`
/// after each.
#[derive(Debug, Default)]
pub struct FailureCount {
    failed: u64,
    warn_from: u64,
}

impl Plugin for FailureCount {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Monitoring)
            .hooks(HookSet::of(&[Hook::TaskFailed]))
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.warn_from = ctx.config::<Settings>()?.warn_from;
        Ok(())
    }

    async fn on_event(
        &mut self,
        ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        if let EventKind::TaskFailed(f) = &event.kind {
            self.failed += 1;
            if self.failed >= self.warn_from {
                tracing::warn!(task = %f.task, failed = self.failed, "task failed");
            }
            ctx.publish(EventKind::custom(
                format!("{NAME}.total"),
                serde_json::json!({ "failed": self.failed }),
            ))?;
        }
        Ok(())
    }
}

/// Adds `failure-count` to `registry`, disabled until the user enables it.
///
/// # Errors
///
/// [`RegistryError`] if a plugin of that name is registered already.
pub fn register(registry: &mut PluginRegistry) -> Result<(), RegistryError> {
    registry.register(
        RegistryEntry::new(|| PluginSpec::new(FailureCount::default))
            .built_in(env!("CARGO_PKG_NAME"))
            .description("counts failed tasks and publishes the running total")
            // Settings from dtf.toml are checked before anything starts.
            .config_type::<Settings>()
            .default_config(serde_json::json!({ "warn_from": 1 })),
    )
}
