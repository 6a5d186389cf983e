//! The plugin contract: what a plugin author implements.
//!
//! A plugin is a plain type implementing [`Plugin`]; the manager wraps each one in a private
//! supervised actor. No actor-runtime type appears in this API, so plugins can be unit tested
//! by calling their methods directly with a [`PluginContext::detached`] context.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bus::Bus;
use crate::error::ConfigError;
use crate::event::{Event, EventKind, HookSet, PluginKind};

/// The error type plugin hooks return: `Box<dyn std::error::Error + Send + Sync + 'static>`,
/// so authors can use `?` on any error type and `.into()` on a string.
///
/// It is a type alias of [`Box`], not a struct of its own (rustdoc's "Aliased Type" section
/// shows `Box`'s private fields, which says nothing about it): build one from any
/// `std::error::Error + Send + Sync` or from a `&str`/`String`, read it with `Display`, and
/// recover the concrete error with `downcast_ref`.
///
/// ```
/// use dtf_plugin_core::PluginError;
///
/// fn parse(s: &str) -> Result<u32, PluginError> {
///     if s.is_empty() {
///         return Err("no value".into()); // from a string
///     }
///     Ok(s.parse::<u32>()?) // from any error, with `?`
/// }
///
/// assert_eq!(parse("").unwrap_err().to_string(), "no value");
/// let err = parse("x").unwrap_err();
/// assert!(err.downcast_ref::<std::num::ParseIntError>().is_some());
/// ```
pub type PluginError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A plugin's configuration as the manager stores it: a JSON value (`null` when none was given).
///
/// Plugins read it into their own typed struct with [`PluginContext::config`].
pub type PluginConfig = serde_json::Value;

/// Who a plugin is: name, version, kind and the hooks it subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginMetadata {
    /// Unique name within a manager; used in logs, stats and management calls.
    pub name: Cow<'static, str>,
    /// The plugin's own version (free-form; semver by convention).
    pub version: Cow<'static, str>,
    /// What kind of plugin it is.
    pub kind: PluginKind,
    /// The hooks it wants events for. Asked once, when the plugin is added.
    pub hooks: HookSet,
}

impl PluginMetadata {
    /// Metadata with `name`, version `0.0.0`, kind [`PluginKind::Custom`], and every hook.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            version: Cow::Borrowed("0.0.0"),
            kind: PluginKind::Custom,
            hooks: HookSet::ALL,
        }
    }

    /// Sets the version.
    pub fn version(mut self, version: impl Into<Cow<'static, str>>) -> Self {
        self.version = version.into();
        self
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: PluginKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the hooks the plugin subscribes to.
    pub fn hooks(mut self, hooks: impl Into<HookSet>) -> Self {
        self.hooks = hooks.into();
        self
    }
}

/// Why [`Plugin::on_shutdown`] is called, as [`PluginContext::stopping`] tells it: whether
/// the plugin's work is over, or a new instance goes on with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopping {
    /// The manager shuts down: the run is over.
    Manager,
    /// The plugin is disabled ([`PluginManager::disable`](crate::PluginManager::disable));
    /// it may be enabled again later, as a new instance.
    Disabled,
    /// The plugin is removed ([`PluginManager::remove`](crate::PluginManager::remove)).
    Removed,
    /// A new instance takes over right after this one, and gets the events published
    /// meanwhile: a restart on request ([`PluginManager::restart`](crate::PluginManager::restart),
    /// the web console's restart) or a replacement
    /// ([`PluginManager::replace`](crate::PluginManager::replace), hot reload). A reporter
    /// keeps its final report for the instance that sees the run end (see
    /// [`Handover`](crate::Handover)).
    Replaced,
}

/// What [`Plugin::on_reconfigure`] did with a new configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reconfigured {
    /// The plugin applied it in place; it keeps running.
    Applied,
    /// The plugin wants to be restarted from its factory to pick it up (the default). Queued
    /// events are kept and delivered to the new instance; the restart does not count against
    /// the restart budget.
    Restart,
}

/// A plugin: reacts to events on the bus.
///
/// Only [`on_event`](Plugin::on_event) is required. The manager calls the hooks in this
/// order, always from the plugin's own task, never concurrently:
///
/// 1. [`metadata`](Plugin::metadata), once, when the plugin is added;
/// 2. [`on_start`](Plugin::on_start), when its actor starts (and after every restart);
/// 3. [`on_event`](Plugin::on_event) for each subscribed event, in publish order;
///    [`on_reconfigure`](Plugin::on_reconfigure) in order with the events when a new
///    configuration arrives;
/// 4. [`on_shutdown`](Plugin::on_shutdown), when the plugin is disabled, removed, or the
///    manager shuts down — not after a failure (the instance is then dropped).
///
/// A panic or an `Err` from any hook, or a handler that does not finish within the handler
/// timeout, is a *failure*: it affects only this plugin, which is restarted from its factory
/// according to its [`RestartPolicy`]. Handlers must not block the thread (use
/// `tokio::task::spawn_blocking` for blocking work): the timeout can only interrupt a handler
/// that awaits.
///
/// # Example
///
/// ```
/// use dtf_plugin_core::prelude::*;
///
/// #[derive(Default)]
/// struct CountFailures {
///     failures: u64,
/// }
///
/// impl Plugin for CountFailures {
///     fn metadata(&self) -> PluginMetadata {
///         PluginMetadata::new("count-failures")
///             .kind(PluginKind::Monitoring)
///             .hooks(HookSet::of(&[Hook::TaskFailed]))
///     }
///
///     async fn on_event(&mut self, _ctx: &mut PluginContext, event: &Event) -> Result<(), PluginError> {
///         if let EventKind::TaskFailed(failed) = &event.kind {
///             self.failures += 1;
///             tracing::warn!(task = %failed.task, "task failed");
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Plugin: Send + 'static {
    /// Name, version, kind and hooks. Defaults to the type's name, version `0.0.0`, kind
    /// `Custom`, every hook.
    fn metadata(&self) -> PluginMetadata {
        let full = std::any::type_name::<Self>();
        let short = full.rsplit("::").next().unwrap_or(full);
        PluginMetadata::new(short.to_owned())
    }

    /// Called when the plugin's actor starts, before any event. Read configuration here.
    fn on_start(
        &mut self,
        ctx: &mut PluginContext,
    ) -> impl Future<Output = Result<(), PluginError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Called for each event the plugin subscribed to, in publish order.
    fn on_event(
        &mut self,
        ctx: &mut PluginContext,
        event: &Event,
    ) -> impl Future<Output = Result<(), PluginError>> + Send;

    /// Called, in order with the events, when the plugin's configuration is changed at run
    /// time. `ctx.config()` already returns the new value. The default asks for a restart, so
    /// that `on_start` reads the new configuration.
    ///
    /// Returning `Err` rejects the configuration: the old one stays in force, the error goes
    /// back to the caller of [`crate::PluginManager::reconfigure`], and the plugin keeps running
    /// (a rejected configuration is not a failure).
    fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> impl Future<Output = Result<Reconfigured, PluginError>> + Send {
        let _ = ctx;
        async { Ok(Reconfigured::Restart) }
    }

    /// Called once when the plugin is disabled, removed, replaced by a new instance, or the
    /// manager shuts down, after the events queued for it were handled (within the shutdown
    /// deadline). [`PluginContext::stopping`] says which.
    fn on_shutdown(
        &mut self,
        ctx: &mut PluginContext,
    ) -> impl Future<Output = Result<(), PluginError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}

/// What a plugin's hooks can reach: its name, its configuration and the bus.
///
/// Its `Debug` output leaves the configuration out: configurations carry tokens and webhook
/// URLs, and a context is exactly what gets logged with `{:?}`.
#[derive(Clone)]
pub struct PluginContext {
    name: Arc<str>,
    config: Arc<PluginConfig>,
    bus: Bus,
    stopping: Option<Stopping>,
}

impl std::fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginContext")
            .field("name", &self.name)
            .field("config", &"<redacted>")
            .field("bus", &self.bus)
            .field("stopping", &self.stopping)
            .finish()
    }
}

impl PluginContext {
    pub(crate) fn new(name: Arc<str>, config: Arc<PluginConfig>, bus: Bus) -> Self {
        Self {
            name,
            config,
            bus,
            stopping: None,
        }
    }

    /// A context attached to a bus with no plugins, for unit-testing a plugin without a
    /// manager. Events it publishes go nowhere.
    pub fn detached(name: &str, config: PluginConfig) -> Self {
        let bus = Bus::detached(name);
        Self::new(Arc::from(name), Arc::new(config), bus)
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's configuration, deserialized into `T`.
    ///
    /// A `null` configuration (none given) deserializes like an empty object, so a config
    /// struct whose fields all have defaults (`#[serde(default)]`) works without one.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the plugin, the key path and the problem when the value does not
    /// fit `T`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        parse_config(&self.name, &self.config)
    }

    /// The raw configuration value.
    pub fn raw_config(&self) -> &PluginConfig {
        &self.config
    }

    /// Why the plugin is being stopped, in [`Plugin::on_shutdown`]; `None` in the other hooks.
    pub fn stopping(&self) -> Option<Stopping> {
        self.stopping
    }

    /// Marks the context for `on_shutdown` (see [`stopping`](Self::stopping)).
    pub(crate) fn set_stopping(&mut self, why: Stopping) {
        self.stopping = Some(why);
    }

    pub(crate) fn config_arc(&self) -> &Arc<PluginConfig> {
        &self.config
    }

    pub(crate) fn set_config(&mut self, config: Arc<PluginConfig>) {
        self.config = config;
    }

    /// The bus this plugin publishes on (its source is the plugin's name).
    ///
    /// From inside a hook, prefer [`publish`](Self::publish): [`Bus::publish`] waits for queue
    /// space, and a handler waiting on a queue that only plugins drain can deadlock the bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Publishes `kind` with this plugin as the source, without ever waiting (see
    /// [`bus`](Self::bus) for why). It may go past a subscriber's queue capacity, up to
    /// 8 times it; beyond that it fails, so plugins that react to each other in a loop cannot
    /// grow memory without bound. A subscriber with [`crate::OverflowPolicy::DropNewest`]
    /// drops it at its capacity, as any other event. Control events published here obey the
    /// same bound (they go past every capacity only when published from outside the plugins).
    ///
    /// # Errors
    ///
    /// [`crate::PublishError::Full`], with the event, when a subscriber is 8 times its
    /// capacity behind (nothing was enqueued anywhere); [`crate::PublishError::Closed`] after
    /// the manager shut down.
    pub fn publish(&self, kind: EventKind) -> Result<u64, crate::PublishError> {
        self.bus.publish_reaction(kind)
    }
}

/// Deserializes a plugin configuration, naming the key path in errors.
pub(crate) fn parse_config<T: DeserializeOwned>(
    plugin: &str,
    value: &PluginConfig,
) -> Result<T, ConfigError> {
    let empty = serde_json::Value::Object(serde_json::Map::new());
    let value = if value.is_null() { &empty } else { value };
    // serde_path_to_error puts the key path in front of serde's message
    // (e.g. "retry.max: invalid type: string \"x\", expected u32").
    serde_path_to_error::deserialize(value).map_err(|e| ConfigError {
        plugin: plugin.to_owned(),
        // The offending value is cut out: a secret put under the wrong key (or under an
        // enum-typed one) must not end up in an error message or a log.
        message: crate::registry::redact_values(&e.to_string()),
    })
}

/// Serializes a typed configuration into the stored form.
pub(crate) fn to_config<T: Serialize>(
    plugin: &str,
    value: &T,
) -> Result<PluginConfig, ConfigError> {
    serde_json::to_value(value).map_err(|e| ConfigError {
        plugin: plugin.to_owned(),
        message: e.to_string(),
    })
}

/// What the manager does when a plugin fails (Erlang/OTP's child restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RestartPolicy {
    /// Restart after a failure, within the restart budget (the default).
    #[default]
    Permanent,
    /// Restart after a failure, but not after a failure in `on_start`: a plugin that cannot
    /// start with its configuration is disabled at once instead of retried.
    Transient,
    /// Never restart: the first failure disables the plugin.
    Temporary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Cfg {
        retries: u32,
        #[serde(default)]
        url: String,
    }

    #[test]
    fn config_errors_name_the_key_but_not_the_value() {
        let value = serde_json::json!({ "retries": "xoxb-secret-token" });
        let err = parse_config::<Cfg>("slack", &value).unwrap_err();
        assert_eq!(err.plugin, "slack");
        assert!(
            err.message.starts_with("retries: invalid type: string"),
            "{}",
            err.message
        );
        assert!(!err.to_string().contains("xoxb"), "{err}");

        // A quote inside the value, and a value under an enum-typed key: cut whole (found by
        // a review: this path had a weaker copy of the registry's redaction).
        let value = serde_json::json!({ "retries": "xoxb-a\"xoxb-tail" });
        let err = parse_config::<Cfg>("slack", &value).unwrap_err();
        assert!(!err.to_string().contains("xoxb"), "{err}");
        #[derive(Debug, serde::Deserialize)]
        enum Level {
            Low,
        }
        #[derive(Debug, serde::Deserialize)]
        #[expect(dead_code, reason = "only deserialized")]
        struct WithEnum {
            level: Level,
        }
        let value = serde_json::json!({ "level": "xoxb-secret-token" });
        let err = parse_config::<WithEnum>("slack", &value).unwrap_err();
        assert!(err.message.starts_with("level: unknown variant"), "{err}");
        assert!(!err.to_string().contains("xoxb"), "{err}");

        let err = parse_config::<Cfg>("slack", &serde_json::json!({ "retires": 3 })).unwrap_err();
        assert!(
            err.message.contains("unknown field `retires`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_context_does_not_print_its_configuration() {
        let ctx = PluginContext::detached("p", serde_json::json!({ "token": "s3cr3t" }));
        let shown = format!("{ctx:?}");
        assert!(
            shown.contains("\"p\"") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }
}
