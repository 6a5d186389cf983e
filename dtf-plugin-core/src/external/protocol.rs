//! The wire messages of the external plugin protocol (version 1): one JSON object per line.
//! Written down in `docs/external-plugins.md`.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::plugin::PluginConfig;

/// The protocol versions this host speaks, oldest first.
pub const SUPPORTED_PROTOCOLS: &[u32] = &[1];

/// The longest line a plugin may write, in bytes (a longer one is a failure).
pub const MAX_LINE: usize = 1 << 20;

/// Host → plugin.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum HostMessage<'a> {
    /// First message: the versions the host speaks and the plugin's settings.
    Hello {
        protocol_versions: &'a [u32],
        plugin: &'a str,
        config: &'a PluginConfig,
    },
    /// One event of a subscribed hook; answer with `ack` (or `error`) carrying `id`.
    Event { id: u64, event: &'a Event },
    /// Finish and exit; the host waits a grace period, then kills the process.
    Shutdown {},
}

/// Log levels a plugin can use.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    #[serde(alias = "warning")]
    Warn,
    Error,
}

/// Plugin → host.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum PluginMessage {
    /// Answer to `hello`: the version chosen from the host's list.
    Hello {
        protocol_version: u32,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        version: Option<String>,
    },
    /// The event `id` was handled.
    Ack { id: u64 },
    /// The event `id` could not be handled: a plugin failure.
    Error { id: u64, message: String },
    /// A log line, forwarded to `tracing` at `level`.
    Log { level: Level, message: String },
    /// A custom event to publish on the bus (`EventKind::Custom`).
    Publish {
        name: String,
        #[serde(default)]
        payload: serde_json::Value,
    },
}
