//! # dtf-plugins-notify
//!
//! The notification plugin of dtf: bus events become messages on Slack, Discord, Telegram,
//! Microsoft Teams, JIRA, email (SMTP) and generic JSON webhooks, through a pipeline that never spams and
//! never silently loses a message:
//!
//! 1. **filter** ([`filter`]): which events notify, per channel, by kind and [`Severity`];
//! 2. **throttle** (`throttle`): at most one message per group key per interval (deferred,
//!    never dropped);
//! 3. **group** (`group`): Alertmanager's `group_wait`/`group_interval` — "12 tasks failed
//!    with `TimeoutError` on worker w3", first few listed;
//! 4. **format** ([`channels`]): Block Kit, embeds, Telegram HTML, Adaptive Cards, JIRA ADF —
//!    within each service's size limits, truncated with a marker;
//! 5. **deliver** ([`deliver`]): per-destination rate limits and not-before gates
//!    (`Retry-After`, Discord's headers, Telegram's `retry_after`), retries with exponential
//!    backoff and jitter, per-target [`NotifyStats`].
//!
//! Main types: [`NotifyPlugin`], [`NotifyConfig`], [`NotifyStats`], [`channels::Channel`],
//! [`transport::Transport`]. See `docs/notify.md` for every key and default.
//!
//! ```
//! use dtf_plugins_notify::{NotifyConfig, preview};
//! use dtf_plugin_core::event::{Event, EventKind, EventMeta, TaskError};
//!
//! let cfg: NotifyConfig = serde_json::from_value(serde_json::json!({
//!     "channels": [{ "type": "webhook", "url": "https://hooks.example.com/dtf" }]
//! })).unwrap();
//! let events: Vec<Event> = (0..12).map(|i| {
//!     let mut kind = EventKind::task_failed(format!("t{i}"), TaskError::builder().kind("TimeoutError").message("timed out").build(), false);
//!     if let EventKind::TaskFailed(f) = &mut kind { f.worker = Some("w3".into()); }
//!     Event { meta: EventMeta { seq: i, time: std::time::SystemTime::now(), source: "doc".into() }, kind }
//! }).collect();
//! let out = preview(&cfg, &events).unwrap();
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].message.title_plain(), "12 tasks failed with `TimeoutError` on worker w3");
//! ```
//!
//! ## Feature flags
//! `slack`, `discord`, `telegram`, `teams`, `jira`, `webhook`, `email` — one per channel, all
//! on by default. `email` brings in lettre (rustls on ring) for the SMTP channel.
//!
//! ## Guarantees
//! - Secrets (tokens, webhook URLs) are [`dtf_plugin_core::Secret`]s: never in `Debug`, logs
//!   or error messages.
//! - The configuration is validated completely at start-up.
//! - `on_event` never waits on the network.
//! - No request reaches a destination before the time it asked us to wait.
//! - Every message is delivered, or reported in [`NotifyStats::undelivered`] and logged.

#![forbid(unsafe_code)]
// On docs.rs (`--cfg docsrs`, nightly), items gated by a feature show a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod channels;
mod config;
pub mod deliver;
#[cfg(feature = "email")]
pub mod email;
mod error;
pub mod filter;
pub mod format;
mod group;
mod message;
mod plugin;
mod stats;
mod throttle;
pub mod transport;

pub use config::{
    ChannelConfig, DeliveryConfig, GroupConfig, NotifyConfig, SecretSource, ThrottleConfig,
};
pub use deliver::Refusal;
pub use error::NotifyError;
pub use group::GroupBy;
pub use message::{Notification, Severity, Span};
pub use plugin::{NotifyPlugin, PLUGIN_NAME, Preview, preview};
pub use stats::{NotifyStats, PipelineCounts, TargetStats, Undelivered};

use dtf_plugin_core::PluginSpec;
use dtf_plugin_core::registry::{PluginRegistry, RegistryEntry, RegistryError};

/// Registers the notify plugin (`notify`) in `registry`: built in from `dtf-plugins-notify`,
/// default configuration = no channels (it then only counts events).
///
/// # Errors
///
/// [`RegistryError::Duplicate`] if a plugin named `notify` is already registered.
pub fn register(registry: &mut PluginRegistry) -> Result<(), RegistryError> {
    registry.register(
        RegistryEntry::new(|| PluginSpec::new(NotifyPlugin::new))
            .built_in("dtf-plugins-notify")
            // The whole check of a start (URLs, names, intervals, secrets present), before
            // anything starts; its messages name the key and never a secret.
            .config_check::<NotifyConfig>(|c| c.validate().map_err(|e| e.to_string()))
            .description("notifications to Slack, Discord, Telegram, Teams, JIRA, email and webhooks: filtered, throttled, grouped, rate-limited, retried")
            .default_config(serde_json::json!({
                "channels": [],
                "group": { "group_wait_ms": 10_000, "group_interval_ms": 60_000 },
            })),
    )
}
