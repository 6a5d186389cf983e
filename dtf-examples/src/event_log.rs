//! `event-log`: appends every event it hears to a file, one JSON line per event (the event's
//! payload, `EventKind`, without the bus's sequence number and time). Useful as an audit trail
//! of a run, and to compare what two plugins saw (a local one and one on a remote plugin
//! host, docs/cluster.md).
//!
//! ```toml
//! [plugins.event-log]
//! enabled = true
//! settings = { path = "target/dtf/events.jsonl" }
//! ```

use std::io::Write as _;
use std::path::PathBuf;

use dtf_plugin_core::prelude::*;
use serde::Deserialize;

/// The plugin's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLogConfig {
    /// The file to append to (created with its directory).
    pub path: PathBuf,
}

/// The `event-log` plugin.
#[derive(Debug, Default)]
pub struct EventLog {
    file: Option<std::io::BufWriter<std::fs::File>>,
}

impl EventLog {
    /// The plugin's name.
    pub const NAME: &'static str = "event-log";
}

impl Plugin for EventLog {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Reporter)
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.file = Some(open(&ctx.config()?)?);
        Ok(())
    }

    /// New settings take effect in place: the new file is opened first, so settings that
    /// cannot be used are refused and the old file stays in use.
    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        self.file = Some(open(&ctx.config()?)?);
        Ok(Reconfigured::Applied)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        let Some(file) = self.file.as_mut() else {
            return Err("event-log: not started".into());
        };
        let line = serde_json::to_string(&event.kind)
            .map_err(|e| PluginError::from(format!("encode: {e}")))?;
        writeln!(file, "{line}")
            .and_then(|()| file.flush())
            .map_err(|e| PluginError::from(format!("write: {e}")))
    }
}

/// The file of `config`, opened for appending (created with its directory).
fn open(config: &EventLogConfig) -> Result<std::io::BufWriter<std::fs::File>, PluginError> {
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| PluginError::from(format!("create {}: {e}", dir.display())))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.path)
        .map_err(|e| PluginError::from(format!("open {}: {e}", config.path.display())))?;
    Ok(std::io::BufWriter::new(file))
}
