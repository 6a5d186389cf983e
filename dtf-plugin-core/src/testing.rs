//! Test helpers for users of the crate (feature `testing`).
//!
//! [`RecordingPlugin`] records every event it receives into a shared [`Recording`], so a test
//! can publish through a real manager and assert on what a plugin saw.
//!
//! ```
//! use dtf_plugin_core::prelude::*;
//! use dtf_plugin_core::testing::RecordingPlugin;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (plugin, recording) = RecordingPlugin::spec("rec", HookSet::TASK);
//! let manager = PluginManager::builder().spec(plugin).spawn().await?;
//! manager.publish(EventKind::task_created("t1", "a")).await?;
//! manager.flush().await;
//! assert_eq!(recording.hooks(), vec![Hook::TaskCreated]);
//! manager.shutdown(ShutdownReason::Completed).await;
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use crate::event::{Event, Hook, HookSet, PluginKind};
use crate::manager::PluginSpec;
use crate::plugin::{Plugin, PluginContext, PluginError, PluginMetadata};

/// The events a [`RecordingPlugin`] received, shared across restarts of the plugin.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    events: Arc<Mutex<Vec<Event>>>,
    starts: Arc<Mutex<u32>>,
    shutdowns: Arc<Mutex<u32>>,
}

impl Recording {
    /// A copy of the events received so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The hooks of the events received so far, in order.
    pub fn hooks(&self) -> Vec<Hook> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(Event::hook)
            .collect()
    }

    /// The sequence numbers received so far, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|e| e.meta.seq)
            .collect()
    }

    /// How many events were received.
    pub fn len(&self) -> usize {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times `on_start` ran (first start plus restarts and re-enables).
    pub fn starts(&self) -> u32 {
        *self.starts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times `on_shutdown` ran.
    pub fn shutdowns(&self) -> u32 {
        *self
            .shutdowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A plugin that records every event it is subscribed to.
#[derive(Debug, Clone)]
pub struct RecordingPlugin {
    name: String,
    hooks: HookSet,
    recording: Recording,
}

impl RecordingPlugin {
    /// A spec for a recording plugin named `name` subscribed to `hooks`, and the handle to
    /// read what it records. Every instance the factory builds shares the recording.
    pub fn spec(name: &str, hooks: impl Into<HookSet>) -> (PluginSpec, Recording) {
        let recording = Recording::default();
        let template = RecordingPlugin {
            name: name.to_owned(),
            hooks: hooks.into(),
            recording: recording.clone(),
        };
        (PluginSpec::new(move || template.clone()), recording)
    }
}

impl Plugin for RecordingPlugin {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(self.name.clone())
            .kind(PluginKind::Monitoring)
            .hooks(self.hooks)
    }

    async fn on_start(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        *self
            .recording
            .starts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        Ok(())
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        self.recording
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
        Ok(())
    }

    async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        *self
            .recording
            .shutdowns
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
        Ok(())
    }
}
