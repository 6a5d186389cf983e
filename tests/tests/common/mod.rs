//! Helpers shared by the integration test binaries.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    reason = "shared by several test binaries, each using a part"
)]

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{PluginManager, PluginSpec};
use tokio::sync::watch;

/// What a [`Probe`] does with one event.
#[derive(Clone)]
pub enum Action {
    Ok,
    Panic,
    Fail,
    Hang,
    Sleep(Duration),
    Gate(watch::Receiver<bool>),
}

type Behaviour = Arc<dyn Fn(&Event) -> Action + Send + Sync>;

/// A test plugin: records what it handled and acts as `behaviour` says.
#[derive(Clone)]
pub struct Probe {
    pub name: String,
    pub hooks: HookSet,
    pub seen: Arc<Mutex<Vec<Event>>>,
    pub starts: Arc<Mutex<Vec<tokio::time::Instant>>>,
    pub shutdowns: Arc<Mutex<u32>>,
    pub behaviour: Behaviour,
    pub fail_start: bool,
}

impl Probe {
    pub fn new(name: &str, hooks: impl Into<HookSet>) -> Self {
        Self {
            name: name.to_owned(),
            hooks: hooks.into(),
            seen: Arc::default(),
            starts: Arc::default(),
            shutdowns: Arc::default(),
            behaviour: Arc::new(|_| Action::Ok),
            fail_start: false,
        }
    }

    pub fn behaving(mut self, f: impl Fn(&Event) -> Action + Send + Sync + 'static) -> Self {
        self.behaviour = Arc::new(f);
        self
    }

    pub fn failing_start(mut self) -> Self {
        self.fail_start = true;
        self
    }

    pub fn spec(&self) -> PluginSpec {
        let template = self.clone();
        PluginSpec::new(move || template.clone())
    }

    pub fn seen(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.seen().iter().map(|e| e.meta.seq).collect()
    }

    /// The numbers carried by the `n` custom events seen, in order.
    pub fn numbers(&self) -> Vec<u64> {
        self.seen().iter().filter_map(number).collect()
    }

    pub fn starts(&self) -> Vec<tokio::time::Instant> {
        self.starts.lock().unwrap().clone()
    }

    pub fn shutdowns(&self) -> u32 {
        *self.shutdowns.lock().unwrap()
    }
}

/// The number of a `n` custom event.
pub fn number(e: &Event) -> Option<u64> {
    match &e.kind {
        EventKind::Custom(c) if c.name == "n" => c.payload.as_u64(),
        _ => None,
    }
}

/// A custom event carrying `n`.
pub fn n(n: u64) -> EventKind {
    EventKind::custom("n", serde_json::json!(n))
}

/// Panic message our poison-pill plugins use; the panic hook keeps them off stderr.
pub const POISON: &str = "dtf-test-poison";

pub fn quiet_poison_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.contains(POISON) {
                default(info);
            }
        }));
    });
}

impl Plugin for Probe {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(self.name.clone()).hooks(self.hooks)
    }

    async fn on_start(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.starts
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        if self.fail_start {
            return Err("probe configured to fail on start".into());
        }
        Ok(())
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        match (self.behaviour)(event) {
            Action::Ok => {}
            Action::Panic => panic!("{POISON}: seq {}", event.meta.seq),
            Action::Fail => return Err(format!("probe failed on seq {}", event.meta.seq).into()),
            Action::Hang => std::future::pending::<()>().await,
            Action::Sleep(d) => tokio::time::sleep(d).await,
            Action::Gate(mut rx) => {
                while !*rx.borrow_and_update() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            }
        }
        self.seen.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        *self.shutdowns.lock().unwrap() += 1;
        Ok(())
    }
}

/// Asserts `published == delivered + dropped + dead_lettered + queued` for every plugin.
pub async fn assert_conserved(manager: &PluginManager) {
    for info in manager.list().await.unwrap() {
        let s = info.stats;
        assert!(
            s.is_conserved(),
            "conservation broken for `{}`: {s:?}",
            info.name
        );
    }
}

/// The names of the manager's plugins, in its list's order (start order).
pub async fn plugin_names(manager: &PluginManager) -> Vec<String> {
    manager
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// The numbers of the `n` events dead-lettered for plugin `name`, in order.
pub async fn dead_numbers(manager: &PluginManager, name: &str) -> Vec<u64> {
    manager
        .dead_letters(name)
        .await
        .unwrap()
        .iter()
        .map(|d| number(&d.event).expect("only `n` events are dead-lettered"))
        .collect()
}

/// Polls `cond` every 2 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cond()
}
