//! Remote plugin hosts: a node runs plugins for the coordinator (a notifier on the one machine
//! allowed to reach Slack, a reporter next to a results store).
//!
//! On the coordinator each hosted plugin is a [`RemotePlugin`], an ordinary plugin of its
//! manager: listed, counted, enabled, disabled and supervised like a local one, its events
//! queued under the same bound and overflow policy. Its `on_event` hands the event to the hub
//! and returns when the host acknowledged it; a host declared failed is a plugin failure
//! (the plugin restarts when the host is back: `on_start` waits for it). On the host a
//! [`PluginHost`] runs the plugin; events arrive in the coordinator's publish order and are
//! deduplicated by their bus sequence number.

use std::future::Future;
use std::pin::Pin;

use dtf_plugin_core::event::{Event, HookSet, WorkerId};
use dtf_plugin_core::{
    Plugin, PluginContext, PluginError, PluginMetadata, PluginSpec, Reconfigured,
};

use crate::hub::HubHandle;
use crate::wire::HostedPlugin;

/// The coordinator's proxy of a plugin hosted on a remote node.
#[derive(Debug, Clone)]
pub struct RemotePlugin {
    hub: HubHandle,
    host: WorkerId,
    plugin: HostedPlugin,
}

impl RemotePlugin {
    /// The spec to add to the coordinator's manager for `plugin` on `host`.
    pub fn spec(hub: HubHandle, host: WorkerId, plugin: HostedPlugin) -> PluginSpec {
        let proxy = Self { hub, host, plugin };
        PluginSpec::new(move || proxy.clone())
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
        self.hub
            .deliver(&self.host, &self.plugin.name, event.clone())
            .await
            .map_err(|e| PluginError::from(e.to_string()))
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
