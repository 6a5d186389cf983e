//! The scheduler's settings from `dtf.toml`, for the reference coordinator.
//!
//! The coordinator always runs its scheduler; `[plugins.scheduler.settings]` tunes it with the
//! keys of [`SchedulerConfig`] (strategy, weights, quotas, half-life or window, aging, default
//! duration, score weights), checked with the rest of the file: a bad value is reported with
//! its key and position (`dtf.toml:7:7: plugins.scheduler.settings.weights.alice: must be a
//! positive number (got -1)`). `--scheduler NAME` on the command line chooses the strategy over the
//! file's and keeps the file's tuning.
//!
//! ```toml
//! [plugins.scheduler.settings]
//! scheduler = "fairness"
//! half_life_hours = 6
//! weights = { alice = 2, bob = 1 }
//! quotas = { bob = 4 }
//! ```

use dtf_plugin_core::config::{Config, ConfigIssue, IssueKind, Origin};
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

/// The scheduler configuration a run uses: `base` when it is not the default (`fifo` with no
/// settings: an embedding program chose it), else the file's `[plugins.scheduler.settings]`,
/// else `base`; then `name` (`--scheduler`), if given, replaces its strategy and keeps its
/// tuning. So `--scheduler fairness` with the file's weights and quotas runs fairness with
/// them, and an explicit `--scheduler fifo` wins over the file's strategy.
///
/// # Errors
///
/// [`CoordinatorError::Usage`] if the settings do not parse (they were checked when the file
/// was loaded, so only a caller that skipped that check can see this).
pub fn resolve(
    base: &SchedulerConfig,
    name: Option<&str>,
    loaded: &LoadedConfig,
) -> Result<SchedulerConfig, CoordinatorError> {
    let mut config = match loaded.config.plugin_settings(NAME) {
        Some(settings) if *base == SchedulerConfig::new("fifo") => serde_json::from_value(settings)
            .map_err(|e| CoordinatorError::Usage(format!("plugins.{NAME}.settings: {e}")))?,
        _ => base.clone(),
    };
    if let Some(name) = name {
        name.clone_into(&mut config.scheduler);
    }
    Ok(config)
}

/// The values of `[plugins.scheduler]` that the scheduler cannot honour, each an issue at its
/// position, so that they are refused with the rest of the configuration's problems rather than
/// accepted and ignored: `overflow = "drop_newest"` (a dropped `TaskCreated` is a task never
/// assigned) and `restart_policy = "temporary"` (a scheduler that fails once would leave the
/// run waiting for ever). Its `queue_capacity`, `handler_timeout`, `restart_budget` and
/// `backoff` apply to the scheduler as to any plugin: the coordinator passes its spec through
/// [`Config::with_overrides`]. `enabled` does not apply: the scheduler runs in every run
/// (`--print-config` prints `enabled = false` for it, as for any plugin that is off unless
/// enabled, and its output must load again); `--list-plugins` shows it as `always`.
/// The coordinator's loader checks these; a worker's, which runs no scheduler, does not.
pub fn issues(config: &Config) -> Vec<ConfigIssue> {
    let refused = [
        (
            "overflow",
            serde_json::json!("drop_newest"),
            "the scheduler must see every task, so it always waits for room (only `backpressure` is allowed)",
        ),
        (
            "restart_policy",
            serde_json::json!("temporary"),
            "a scheduler that is not restarted leaves the run waiting for ever (`transient` or `permanent`)",
        ),
    ];
    refused
        .into_iter()
        .filter_map(|(key, value, why)| {
            let key = format!("plugins.{NAME}.{key}");
            (config.get(&key) == Some(value)).then(|| {
                // `get` found the key, so it has an origin.
                let origin = config.origin(&key).unwrap_or(Origin::Default);
                ConfigIssue::new(IssueKind::InvalidValue, &key, origin, why)
            })
        })
        .collect()
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
    options.scheduler = resolve(
        &options.scheduler,
        options.scheduler_name.as_deref(),
        loaded,
    )?;
    enabled.retain(|name| name != NAME);
    Ok(())
}
