//! Remote plugin hosts: a node runs plugins for the coordinator (a notifier on the one machine
//! allowed to reach Slack, a reporter next to a results store).
//!
//! On the coordinator each hosted plugin is a [`RemotePlugin`], an ordinary plugin of its
//! manager: listed, counted, enabled, disabled, reconfigured and supervised like a local one,
//! its events queued under the same bound and overflow policy. Its `on_event` hands the event
//! to the hub, with up to [`DELIVERY_WINDOW`] events in flight; a host declared failed is a
//! plugin failure (the plugin restarts when the host is back: `on_start` waits for it). On the host a
//! [`PluginHost`] runs the plugin; events arrive in the coordinator's publish order and are
//! deduplicated by their bus sequence number.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use dtf_plugin_core::event::{Event, HookSet, WorkerId};
use dtf_plugin_core::{
    Plugin, PluginContext, PluginError, PluginMetadata, PluginSpec, Reconfigured,
};

use crate::hub::{Delivery, HubHandle};
use crate::wire::HostedPlugin;

/// Events a proxy keeps in flight to its host before it waits for the oldest to be handled.
pub const DELIVERY_WINDOW: usize = 256;

/// The coordinator's proxy of a plugin hosted on a remote node.
///
/// Up to [`DELIVERY_WINDOW`] events are in flight at once (sent, not yet handled by the host),
/// so throughput is not one network round trip per event. `on_event` returns once its event
/// is with the hub, which keeps it until the host acknowledges it; a failure of the host
/// surfaces on a later event (or at shutdown) as this plugin's failure, and the events not
/// yet handled are delivered when the host is back. `on_shutdown` waits for every event in
/// flight to be handled.
pub struct RemotePlugin {
    hub: HubHandle,
    host: WorkerId,
    plugin: HostedPlugin,
    in_flight: VecDeque<Delivery>,
}

impl std::fmt::Debug for RemotePlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePlugin")
            .field("host", &self.host)
            .field("plugin", &self.plugin.name)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl RemotePlugin {
    /// The spec to add to the coordinator's manager for `plugin` on `host`.
    pub fn spec(hub: HubHandle, host: WorkerId, plugin: HostedPlugin) -> PluginSpec {
        PluginSpec::new(move || Self {
            hub: hub.clone(),
            host: host.clone(),
            plugin: plugin.clone(),
            in_flight: VecDeque::new(),
        })
    }

    /// Waits for the oldest event in flight; its failure is this plugin's.
    async fn settle_oldest(&mut self) -> Result<(), PluginError> {
        match self.in_flight.pop_front() {
            Some(handled) => handled.await.map_err(|e| PluginError::from(e.to_string())),
            None => Ok(()),
        }
    }

    /// Drops the events in flight known to be handled, oldest first, without waiting; the
    /// first known failure is this plugin's.
    fn settle_done(&mut self) -> Result<(), PluginError> {
        while let Some(oldest) = self.in_flight.front_mut() {
            match oldest.outcome() {
                None => break,
                Some(Ok(())) => {
                    self.in_flight.pop_front();
                }
                Some(Err(e)) => {
                    self.in_flight.pop_front();
                    return Err(PluginError::from(e.to_string()));
                }
            }
        }
        Ok(())
    }
}

impl Plugin for RemotePlugin {
    /// Named `NAME@HOST` in the coordinator's manager: where it runs, and no clash with a
    /// local plugin of the same name.
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(format!("{}@{}", self.plugin.name, self.host))
            .version(self.plugin.version.clone())
            .kind(self.plugin.kind)
            .hooks(self.plugin.hooks.iter().copied().collect::<HookSet>())
    }

    async fn on_start(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        // After a failure the plugin restarts when its host is back.
        self.hub
            .host_up(&self.host)
            .await
            .map_err(|e| PluginError::from(e.to_string()))
    }

    /// The new settings go to the host, whose manager applies them to the plugin in order
    /// with its events; its answer is this answer. The plugin keeps running either way.
    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        // Every event before the change is handled first, so that no resend after a cut can
        // put an older event behind the new settings.
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        self.hub
            .reconfigure(&self.host, &self.plugin.name, ctx.raw_config().clone())
            .await
            .map(|()| Reconfigured::Applied)
            .map_err(|e| PluginError::from(e.to_string()))
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        // The event goes to the hub first, whatever happened to earlier ones: the hub keeps it
        // for the host, so a failure reported below costs the host nothing.
        let handled = self
            .hub
            .send(&self.host, &self.plugin.name, event.clone())
            .map_err(|e| PluginError::from(e.to_string()))?;
        self.in_flight.push_back(handled);
        self.settle_done()?;
        while self.in_flight.len() > DELIVERY_WINDOW {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }
}

/// What a node hosts for the coordinator (`dtf-worker --plugins NAME`).
pub trait PluginHost: Send + Sync + 'static {
    /// The plugins, announced when the node registers.
    fn plugins(&self) -> Vec<HostedPlugin>;

    /// Hands `event` to `plugin`; resolves once the plugin handled it (or failed on it: that
    /// is the host's own plugin failure, accounted there). Called in the coordinator's publish
    /// order, one event at a time per plugin.
    fn handle(&self, plugin: &str, event: Event) -> Pin<Box<dyn Future<Output = ()> + Send>>;

    /// Applies `settings` to `plugin` (the coordinator reconfigured its proxy); resolves with
    /// the rejection, if any, which names what is wrong without echoing values. Called in
    /// order with `handle`. The default refuses: a host that cannot change its plugins'
    /// settings says so.
    fn reconfigure(
        &self,
        plugin: &str,
        settings: serde_json::Value,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        let _ = settings;
        let plugin = plugin.to_owned();
        Box::pin(async move { Err(format!("this host cannot reconfigure `{plugin}`")) })
    }
}
