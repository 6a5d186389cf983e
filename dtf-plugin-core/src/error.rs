//! Errors of the core crate. Messages are lowercase fragments that read after "failed to …".

use std::time::Duration;

use crate::event::EventKind;

/// Publishing an event failed; the event is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The manager has shut down; the bus accepts no more events.
    #[error("publish event: the bus is closed (the manager shut down)")]
    Closed(EventKind),
    /// `try_publish` only: a subscribed plugin's queue is full and its overflow policy is
    /// backpressure. Retry later or use the async `publish`.
    #[error("publish event: the queue of plugin `{plugin}` is full")]
    Full {
        /// The event, unpublished.
        event: EventKind,
        /// The first plugin whose queue was full.
        plugin: String,
    },
}

impl PublishError {
    /// The event that was not published.
    pub fn into_event(self) -> EventKind {
        match self {
            Self::Closed(e) | Self::Full { event: e, .. } => e,
        }
    }
}

/// Publishing a batch failed; the events are handed back, none was published.
#[derive(Debug, thiserror::Error)]
#[error("publish batch of {} events: the bus is closed (the manager shut down)", .0.len())]
pub struct BatchClosed(pub Vec<EventKind>);

/// A plugin configuration did not fit the plugin's config type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read configuration of plugin `{plugin}`: {message}")]
pub struct ConfigError {
    /// The plugin.
    pub plugin: String,
    /// What was wrong, naming the key (from serde).
    pub message: String,
}

/// A management call on the [`crate::PluginManager`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// A plugin with this name is already registered.
    #[error("add plugin `{0}`: a plugin with this name already exists")]
    DuplicateName(String),
    /// The plugin's metadata subscribes to no hook, so it could never receive an event.
    #[error("add plugin `{0}`: it subscribes to no hook (metadata().hooks is empty)")]
    NoHooks(String),
    /// The plugin's name is empty.
    #[error("add plugin: the name is empty")]
    EmptyName,
    /// No plugin has this name.
    #[error("find plugin `{name}`: no such plugin (known: {known})")]
    UnknownPlugin {
        /// The name asked for.
        name: String,
        /// The names that exist, comma-separated.
        known: String,
    },
    /// The plugin is not in a state that allows the call (e.g. enabling an enabled plugin).
    #[error("{action} plugin `{name}`: it is {status}")]
    WrongState {
        /// What was attempted.
        action: &'static str,
        /// The plugin.
        name: String,
        /// Its current status.
        status: crate::PluginStatus,
    },
    /// The plugin rejected a new configuration; the old one stays in force.
    #[error("reconfigure plugin `{name}`: {reason}")]
    ConfigRejected {
        /// The plugin.
        name: String,
        /// Why, as the plugin reported it.
        reason: String,
    },
    /// [`crate::PluginManager::replace`] was given a spec with other hooks.
    #[error(
        "replace plugin `{0}`: the new version subscribes to other hooks (remove and add it instead)"
    )]
    HooksChanged(String),
    /// A typed configuration could not be serialized or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugin's actor could not be spawned.
    #[error("spawn plugin `{name}`: {reason}")]
    Spawn {
        /// The plugin.
        name: String,
        /// The actor runtime's reason.
        reason: String,
    },
    /// The plugin's `on_start` failed (it is then restarted within its budget, as after any
    /// failure).
    #[error("start plugin `{name}`: {reason}")]
    StartFailed {
        /// The plugin.
        name: String,
        /// How `on_start` failed.
        reason: String,
    },
    /// [`crate::PluginManagerBuilder::spawn`] ran on a tokio runtime without its time driver.
    #[error(
        "spawn the plugin manager: the tokio runtime has no time driver (build it with \
         `enable_time()` or `enable_all()`; `#[tokio::main]` and `#[tokio::test]` have it)"
    )]
    NoTimeDriver,
    /// The manager is shutting down or has stopped.
    #[error("reach the plugin manager: it has shut down")]
    ShutDown,
    /// A flush did not finish within the given time.
    #[error("flush the bus: not every plugin caught up within {0:?}")]
    FlushTimeout(Duration),
}
