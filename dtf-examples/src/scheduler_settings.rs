//! The scheduler's settings from `dtf.toml`, for the reference coordinator.
//!
//! The coordinator always runs its scheduler; `[plugins.scheduler.settings]` tunes it with the
//! keys of [`SchedulerConfig`] (strategy, weights, quotas, half-life or window, aging, default
//! duration, score weights), checked with the rest of the file: a bad value is reported with
//! its key and position (`dtf.toml:7:7: plugins.scheduler.settings.weights.alice: must be a
//! positive number (got -1)`). `--scheduler NAME` on the command line wins over the file.
//!
//! ```toml
//! [plugins.scheduler.settings]
//! scheduler = "fairness"
//! half_life_hours = 6
//! weights = { alice = 2, bob = 1 }
//! quotas = { bob = 4 }
//! ```

use dtf_plugin_core::registry::PluginRegistry;
use dtf_scheduler::SchedulerConfig;

use crate::coordinator::{CoordinatorOptions, LoadedConfig};
use crate::error::CoordinatorError;

/// The scheduler's name in the plugin registry and in `[plugins.NAME]`.
pub const NAME: &str = "scheduler";

/// Registers the scheduler's entry (its typed settings) so that `[plugins.scheduler]` is
/// known and its settings are checked when the configuration is loaded.
pub fn register(registry: &mut PluginRegistry) {
    // The name is fixed and registered once, so this cannot fail; a failure would only show
    // as `[plugins.scheduler]` being refused as unknown.
    if let Err(e) = dtf_scheduler::register(registry) {
        tracing::error!(error = %e, "registering the scheduler's settings failed");
    }
}

/// The scheduler configuration a run uses: `cli` when the command line chose a scheduler
/// (anything but the default `fifo` without settings), else the file's
/// `[plugins.scheduler.settings]`, else `cli` (the default).
///
/// # Errors
///
/// [`CoordinatorError::Usage`] if the settings do not parse (they were checked when the file
/// was loaded, so only a caller that skipped that check can see this).
pub fn resolve(
    cli: &SchedulerConfig,
    loaded: &LoadedConfig,
) -> Result<SchedulerConfig, CoordinatorError> {
    if *cli != SchedulerConfig::new("fifo") {
        return Ok(cli.clone());
    }
    match loaded.config.plugin_settings(NAME) {
        Some(settings) => serde_json::from_value(settings)
            .map_err(|e| CoordinatorError::Usage(format!("plugins.{NAME}.settings: {e}"))),
        None => Ok(cli.clone()),
    }
}

/// Applies the file's scheduler settings to `options` ([`resolve`]) and takes the scheduler
/// out of `enabled`: it is part of the coordinator, not an optional plugin to start twice.
///
/// # Errors
///
/// What [`resolve`] returns.
pub fn apply(
    options: &mut CoordinatorOptions,
    loaded: &LoadedConfig,
    enabled: &mut Vec<String>,
) -> Result<(), CoordinatorError> {
    options.scheduler = resolve(&options.scheduler, loaded)?;
    enabled.retain(|name| name != NAME);
    Ok(())
}
