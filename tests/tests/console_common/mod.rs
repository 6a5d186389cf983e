//! A plugin manager with a few test plugins and the web console on 127.0.0.1 (port 0), shared
//! by the console's API and browser tests.

#![allow(dead_code, reason = "each test binary uses part of it")]

use std::net::SocketAddr;

use dtf_console::{
    AccessToken, AvailablePlugin, Console, ConsoleConfig, InstalledPlugin, PluginOrigin,
    RunningConsole, StaticCatalog,
};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{PluginManager, PluginSpec, Reconfigured};
use serde::Deserialize;
use serde_json::json;

pub(crate) const TOKEN: &str = "console-test-token-7d1f";
/// The secret in `picky`'s settings: it must never reach a client.
pub(crate) const PICKY_SECRET: &str = "xoxb-picky-secret-value";

/// Accepts a configuration only when `limit` is at most 100.
pub(crate) struct Picky;

#[derive(Deserialize)]
struct PickyConfig {
    limit: u32,
    #[serde(rename = "token")]
    _token: String,
}

impl Plugin for Picky {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("picky")
            .version("1.2.3")
            .kind(PluginKind::Notification)
            .hooks(Hook::TaskCompleted)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        _event: &Event,
    ) -> Result<(), PluginError> {
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        let c: PickyConfig = ctx.config()?;
        if c.limit > 100 {
            return Err(format!("limit: must be at most 100, got {}", c.limit).into());
        }
        Ok(Reconfigured::Applied)
    }
}

/// Fails on custom events whose payload says `{"fail": true}` (they become dead letters).
pub(crate) struct Flaky;

impl Plugin for Flaky {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("flaky").hooks(Hook::Custom)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        match &event.kind {
            EventKind::Custom(c) if c.payload.get("fail") == Some(&json!(true)) => {
                Err("flaky: refused this event".into())
            }
            _ => Ok(()),
        }
    }
}

/// Does nothing with task events.
pub(crate) struct Quiet;

impl Plugin for Quiet {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("quiet")
            .hooks(HookSet::from_iter([Hook::TaskCreated, Hook::TaskStarted]))
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        _event: &Event,
    ) -> Result<(), PluginError> {
        Ok(())
    }
}

pub(crate) struct Fixture {
    pub(crate) manager: PluginManager,
    pub(crate) console: RunningConsole,
    pub(crate) base: String,
    pub(crate) addr: SocketAddr,
}

/// The index of [`catalog`].
pub(crate) const INDEX: &str = "https://plugins.example.invalid/dtf/";

/// What the test coordinator tells the console about its plugins: `picky` was installed from
/// an index, `flaky` comes from a plugin directory, `quiet` is built in, `sleepy` is installed
/// (from a plugin directory) but does not run; the index offers `echo` (installable), a newer
/// `picky`, and `future` (not installable by this build). The others are not listed.
pub(crate) fn catalog() -> StaticCatalog {
    StaticCatalog::new()
        .with_installed(
            InstalledPlugin::new(
                "picky",
                "1.2.3",
                PluginOrigin::Index {
                    index: INDEX.to_owned(),
                    signed_by: "5F3C2A1B".to_owned(),
                },
            )
            .description("accepts small limits"),
        )
        .with_installed(InstalledPlugin::new(
            "flaky",
            "0.0.0",
            PluginOrigin::Directory {
                manifest: "plugins/flaky/plugin.toml".into(),
            },
        ))
        .with_installed(InstalledPlugin::new(
            "quiet",
            "0.0.0",
            PluginOrigin::BuiltIn {
                krate: "dtf-tests".to_owned(),
            },
        ))
        .with_installed(
            InstalledPlugin::new(
                "sleepy",
                "0.4.0",
                PluginOrigin::Directory {
                    manifest: "plugins/sleepy/plugin.toml".into(),
                },
            )
            .description("installed, disabled in dtf.toml"),
        )
        .with_index(
            INDEX,
            [
                AvailablePlugin::new("echo", "0.2.0", INDEX).description("prints every event"),
                AvailablePlugin::new("picky", "1.3.0", INDEX)
                    .installed(Some("1.2.3".to_owned()))
                    .description("accepts small limits"),
                AvailablePlugin::new("future", "9.0.0", INDEX)
                    .installable(None)
                    .description("speaks a newer plugin protocol"),
            ],
        )
}

/// Starts a manager with `picky`, `flaky`, `quiet`, `victim`, `victim2` and `extra` more
/// plugins (`p0000`…), attaches the console with [`catalog`] and serves it on 127.0.0.1:0.
pub(crate) async fn start(extra: usize, config: ConsoleConfig) -> Fixture {
    start_with(extra, config, Some(catalog())).await
}

/// Like [`start`], with the catalog given (`None`: the console is told nothing).
pub(crate) async fn start_with(
    extra: usize,
    config: ConsoleConfig,
    catalog: Option<StaticCatalog>,
) -> Fixture {
    let mut builder = PluginManager::builder()
        .spec(PluginSpec::new(|| Picky).config(json!({"limit": 10, "token": PICKY_SECRET})))
        .plugin(|| Flaky)
        .plugin(|| Quiet)
        .spec(PluginSpec::new(|| Quiet).name("victim"))
        .spec(PluginSpec::new(|| Quiet).name("victim2"));
    for i in 0..extra {
        builder = builder.spec(PluginSpec::new(|| Quiet).name(format!("p{i:04}")));
    }
    let manager = builder.spawn().await.expect("manager starts");
    let config = config.bind(SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut console = Console::attach(&manager, AccessToken::new(TOKEN), config)
        .await
        .expect("console attaches");
    if let Some(catalog) = catalog {
        console = console.catalog(catalog);
    }
    let console = console.serve().await.expect("console serves");
    let addr = console.local_addr();
    Fixture {
        manager,
        base: format!("http://{addr}"),
        addr,
        console,
    }
}

impl Fixture {
    pub(crate) async fn stop(self) {
        self.console.stop().await;
        self.manager.shutdown(ShutdownReason::Completed).await;
    }
}
