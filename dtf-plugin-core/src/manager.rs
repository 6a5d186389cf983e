//! The plugin manager: a supervising actor plus the [`PluginManager`] handle.
//!
//! The manager actor owns the plugin table and is the ractor supervisor of every plugin actor.
//! It is *not* on the publish path: publishers enqueue straight into the plugins' slots (see
//! `bus.rs`), and the manager only handles management calls and supervision events.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use typed_builder::TypedBuilder;

use crate::bus::{Bus, DeadLetter, Item, OverflowPolicy, Slot};
use crate::error::{ConfigError, ManagerError, PublishError};
use crate::event::{
    EventKind, HookSet, MANAGER_SOURCE, PluginDisabled, PluginFailure, PluginKind, PluginLifecycle,
    ShutdownReason,
};
use crate::plugin::{
    Plugin, PluginConfig, PluginContext, PluginMetadata, Reconfigured, RestartPolicy,
};
use crate::runner::{
    PluginActor, PluginMsg, RESTART_FOR_CONFIG, RunnerArgs, RunnerFailure, ShutdownOutcome,
};
use crate::supervision::{Backoff, Jitter, RestartBudget, RestartTracker};

/// Manager-wide defaults; each can be overridden per plugin on its [`PluginSpec`].
#[derive(Debug, Clone, TypedBuilder)]
#[non_exhaustive]
pub struct ManagerConfig {
    /// Events each plugin's queue holds before its overflow policy applies. Default 8192.
    #[builder(default = 8192)]
    pub queue_capacity: usize,
    /// What a full queue does. Default [`OverflowPolicy::Backpressure`].
    #[builder(default)]
    pub overflow: OverflowPolicy,
    /// How long one hook call may take before it counts as a failure. Default 30 s.
    #[builder(default = Duration::from_secs(30))]
    pub handler_timeout: Duration,
    /// What a failure leads to. Default [`RestartPolicy::Permanent`].
    #[builder(default)]
    pub restart_policy: RestartPolicy,
    /// Restarts allowed per window. Default 5 in 30 s.
    #[builder(default)]
    pub restart_budget: RestartBudget,
    /// Delay between restarts. Default 100 ms doubling to 10 s, equal jitter.
    #[builder(default)]
    pub backoff: Backoff,
    /// How long [`PluginManager::shutdown`] waits for queues to drain and plugins to stop.
    /// Default 30 s.
    #[builder(default = Duration::from_secs(30))]
    pub shutdown_timeout: Duration,
    /// Dead letters kept per plugin for inspection (all are counted). Default 1024.
    #[builder(default = 1024)]
    pub dead_letter_capacity: usize,
    /// The source stamped on events published through [`PluginManager::publish`] and
    /// [`PluginManager::bus`]. Default `"coordinator"`.
    #[builder(default = "coordinator".to_owned(), setter(into))]
    pub source: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self::builder().build()
    }
}

/// The lifecycle state of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginStatus {
    /// Its actor is running `on_start`.
    Starting,
    /// Receiving events.
    Running,
    /// Failed; waiting out the backoff before a restart. Events keep queueing.
    Restarting,
    /// Receives no events (restart budget spent, restart policy, or by request).
    Disabled,
    /// Stopped by the manager's shutdown.
    Stopped,
}

impl fmt::Display for PluginStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Disabled => "disabled",
            Self::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

/// Counters of one plugin. At every quiescent point (e.g. after [`PluginManager::flush`]):
/// `published == delivered + dropped + dead_lettered + queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct PluginStats {
    /// Events routed to this plugin (it was subscribed and enabled).
    pub published: u64,
    /// Events its handler returned `Ok` for.
    pub delivered: u64,
    /// Events not enqueued because its queue was full ([`OverflowPolicy::DropNewest`]).
    pub dropped: u64,
    /// Events its handler failed on (panic, error, timeout).
    pub dead_lettered: u64,
    /// Events waiting in its queue (including the chunk being handled).
    pub queued: u64,
    /// Restarts after failures.
    pub restarts: u32,
    /// Failures of any hook.
    pub failures: u32,
    /// Total time spent in its handlers.
    pub handler_time: Duration,
}

impl PluginStats {
    /// Whether the conservation law holds (meaningful at quiescent points).
    pub fn is_conserved(&self) -> bool {
        self.published == self.delivered + self.dropped + self.dead_lettered + self.queued
    }
}

/// What [`PluginManager::list`] says about one plugin.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PluginInfo {
    /// Its unique name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its kind.
    pub kind: PluginKind,
    /// The hooks it subscribes to.
    #[serde(skip)]
    pub hooks: HookSet,
    /// Its status.
    pub status: PluginStatus,
    /// The restart policy in force.
    pub restart_policy: RestartPolicy,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Its counters.
    pub stats: PluginStats,
}

/// What [`PluginManager::shutdown`] reports for one plugin.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PluginShutdown {
    /// The plugin.
    pub name: String,
    /// Events still queued when it stopped (not delivered).
    pub left_in_queue: u64,
    /// A failure while draining or in `on_shutdown`, or a missed deadline.
    pub error: Option<String>,
    /// Its final counters.
    pub stats: PluginStats,
}

/// What [`PluginManager::shutdown`] returns.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Per plugin, in reverse start order.
    pub plugins: Vec<PluginShutdown>,
    /// Whether every queue drained and every plugin stopped cleanly within the deadline.
    pub clean: bool,
}

/// How to build and run one plugin: a factory plus per-plugin settings.
///
/// The factory is called once right away (for the metadata; that instance is the one
/// started first) and again for every restart.
pub struct PluginSpec {
    meta: PluginMetadata,
    config: Result<PluginConfig, ConfigError>,
    queue_capacity: Option<usize>,
    overflow: Option<OverflowPolicy>,
    handler_timeout: Option<Duration>,
    restart_policy: Option<RestartPolicy>,
    restart_budget: Option<RestartBudget>,
    backoff: Option<Backoff>,
    factory: Box<dyn ErasedFactory>,
    /// Why the spec cannot be used: its factory or `metadata` panicked when it was built.
    broken: Option<String>,
}

impl fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginSpec")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl PluginSpec {
    /// A spec whose instances come from `factory`.
    pub fn new<P, F>(factory: F) -> Self
    where
        P: Plugin,
        F: Fn() -> P + Send + Sync + 'static,
    {
        // Plugin code is untrusted from the first call on: a panic in the factory or in
        // `metadata` makes a spec that `add` refuses (with the panic's message), not a panic in
        // the embedding application.
        let short = std::any::type_name::<P>()
            .rsplit("::")
            .next()
            .unwrap_or("plugin");
        let caught = |what: &str, payload| {
            format!("{what} panicked: {}", crate::runner::panic_message(payload))
        };
        let (first, meta, broken) = match catch_unwind(AssertUnwindSafe(&factory)) {
            Err(payload) => (
                None,
                PluginMetadata::new(short.to_owned()),
                Some(caught("the plugin factory", payload)),
            ),
            Ok(first) => match catch_unwind(AssertUnwindSafe(|| first.metadata())) {
                Ok(meta) => (Some(first), meta, None),
                Err(payload) => {
                    crate::runner::drop_caught(first, "a plugin instance");
                    (
                        None,
                        PluginMetadata::new(short.to_owned()),
                        Some(caught("metadata()", payload)),
                    )
                }
            },
        };
        Self {
            broken,
            meta,
            config: Ok(PluginConfig::Null),
            queue_capacity: None,
            overflow: None,
            handler_timeout: None,
            restart_policy: None,
            restart_budget: None,
            backoff: None,
            factory: Box::new(Factory {
                make: factory,
                first: Mutex::new(first),
            }),
        }
    }

    /// The plugin's metadata (with the name override, if any).
    pub fn metadata(&self) -> &PluginMetadata {
        &self.meta
    }

    /// Overrides the name from the metadata (to run two instances of one plugin type).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.meta.name = name.into().into();
        self
    }

    /// Overrides the hooks from the metadata.
    pub fn hooks(mut self, hooks: impl Into<HookSet>) -> Self {
        self.meta.hooks = hooks.into();
        self
    }

    /// The plugin's configuration, from any serializable value (a typed struct or
    /// `serde_json::json!`). The plugin reads it with [`PluginContext::config`].
    pub fn config(mut self, config: impl Serialize) -> Self {
        self.config = crate::plugin::to_config(&self.meta.name, &config);
        self
    }

    /// Overrides [`ManagerConfig::queue_capacity`].
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// Overrides [`ManagerConfig::overflow`].
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = Some(policy);
        self
    }

    /// Overrides [`ManagerConfig::handler_timeout`].
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Overrides [`ManagerConfig::restart_policy`].
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = Some(policy);
        self
    }

    /// Overrides [`ManagerConfig::restart_budget`].
    pub fn restart_budget(mut self, budget: RestartBudget) -> Self {
        self.restart_budget = Some(budget);
        self
    }

    /// Overrides [`ManagerConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

type SpawnFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ActorRef<PluginMsg>, String>> + Send + 'a>>;

/// Erases the plugin type so the manager can keep a heterogeneous table.
trait ErasedFactory: Send + Sync {
    fn spawn(
        &self,
        ctx: PluginContext,
        slot: Arc<Slot>,
        handler_timeout: Duration,
        supervisor: ActorCell,
    ) -> SpawnFuture<'_>;
}

struct Factory<P, F> {
    make: F,
    first: Mutex<Option<P>>,
}

impl<P, F> ErasedFactory for Factory<P, F>
where
    P: Plugin,
    F: Fn() -> P + Send + Sync + 'static,
{
    fn spawn(
        &self,
        ctx: PluginContext,
        slot: Arc<Slot>,
        handler_timeout: Duration,
        supervisor: ActorCell,
    ) -> SpawnFuture<'_> {
        Box::pin(async move {
            let first = self
                .first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let plugin = match first {
                Some(p) => p,
                None => catch_unwind(AssertUnwindSafe(&self.make)).map_err(|payload| {
                    format!(
                        "the plugin factory panicked: {}",
                        crate::runner::panic_message(payload)
                    )
                })?,
            };
            let args = RunnerArgs {
                plugin,
                ctx,
                slot,
                handler_timeout,
            };
            PluginActor::<P>::spawn_linked(None, PluginActor::new(), args, supervisor)
                .await
                .map(|(actor, _join)| actor)
                .map_err(|e| e.to_string())
        })
    }
}

/// Settings in force for one plugin (spec overrides applied to the manager defaults).
#[derive(Debug, Clone, Copy)]
struct Settings {
    handler_timeout: Duration,
    restart_policy: RestartPolicy,
    restart_budget: RestartBudget,
    backoff: Backoff,
}

/// What to do when a plugin's actor has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    Nothing,
    Disable,
    Remove,
    /// Start again from the (replaced) factory: [`PluginManager::replace`].
    Respawn,
}

struct Entry {
    meta: PluginMetadata,
    name: Arc<str>,
    settings: Settings,
    factory: Box<dyn ErasedFactory>,
    slot: Arc<Slot>,
    status: PluginStatus,
    actor: Option<ActorRef<PluginMsg>>,
    restarts: u32,
    failures: u32,
    tracker: RestartTracker,
    /// Bumped whenever a scheduled restart must be ignored.
    generation: u64,
    last_error: Option<String>,
    after_stop: AfterStop,
    waiting: Vec<RpcReplyPort<Result<(), ManagerError>>>,
    /// Position in start order (for reverse-order shutdown).
    order: u64,
}

impl Entry {
    fn info(&self) -> PluginInfo {
        let status = if self.status == PluginStatus::Running && !self.slot.is_attached() {
            PluginStatus::Starting
        } else {
            self.status
        };
        PluginInfo {
            name: self.name.to_string(),
            version: self.meta.version.to_string(),
            kind: self.meta.kind,
            hooks: self.meta.hooks,
            status,
            restart_policy: self.settings.restart_policy,
            last_error: self.last_error.clone(),
            stats: self.stats(),
        }
    }

    fn stats(&self) -> PluginStats {
        let c = &self.slot.counters;
        let (published, dropped, queued) = self.slot.queue_counts();
        PluginStats {
            published,
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped,
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            queued,
            restarts: self.restarts,
            failures: self.failures,
            handler_time: Duration::from_nanos(c.handler_nanos.load(Ordering::Relaxed)),
        }
    }
}

type Reply<T> = RpcReplyPort<Result<T, ManagerError>>;

/// Messages to the manager actor.
pub(crate) enum ManagerMsg {
    Add(Box<PluginSpec>, Reply<()>),
    Remove(String, Reply<()>),
    Enable(String, Reply<()>),
    Disable(String, Reply<()>),
    Replace(Box<PluginSpec>, Reply<()>),
    Reconfigure(
        String,
        PluginConfig,
        Reply<Option<oneshot::Receiver<Result<Reconfigured, String>>>>,
    ),
    List(RpcReplyPort<Vec<PluginInfo>>),
    DeadLetters(String, Reply<Vec<DeadLetter>>),
    Config(String, Reply<Arc<PluginConfig>>),
    RestartDue {
        name: String,
        generation: u64,
    },
    /// Publish coordinator-shutdown and close the bus.
    CloseBus(ShutdownReason, RpcReplyPort<()>),
    /// Stop restarting; hand out the live actors in reverse start order.
    StopPlugins(RpcReplyPort<Vec<(String, Option<ActorRef<PluginMsg>>)>>),
}

struct ManagerActor;

struct ManagerState {
    /// Publishes the framework's own events; never waits on a queue.
    bus: Bus,
    config: ManagerConfig,
    plugins: BTreeMap<String, Entry>,
    by_actor: HashMap<ActorId, String>,
    next_order: u64,
    jitter: Jitter,
    stopping: bool,
}

impl ManagerState {
    fn known(&self) -> String {
        if self.plugins.is_empty() {
            return "none".to_owned();
        }
        self.plugins.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    fn unknown(&self, name: &str) -> ManagerError {
        ManagerError::UnknownPlugin {
            name: name.to_owned(),
            known: self.known(),
        }
    }

    fn announce(&self, kind: EventKind) {
        if let Err(e) = self.bus.publish_unbounded(kind) {
            tracing::debug!(error = %e, "framework event not published");
        }
    }

    /// Spawns a fresh actor for `name` from its factory. A spawn error is handled as a failure.
    async fn spawn(&mut self, name: &str, myself: &ActorRef<ManagerMsg>) -> Result<(), String> {
        let bus = self.bus.clone();
        let Some(entry) = self.plugins.get_mut(name) else {
            return Err(format!("no plugin `{name}`"));
        };
        let ctx = PluginContext::new(
            Arc::clone(&entry.name),
            entry.slot.config(),
            bus.with_source(&entry.name),
        );
        let spawned = entry
            .factory
            .spawn(
                ctx,
                Arc::clone(&entry.slot),
                entry.settings.handler_timeout,
                myself.get_cell(),
            )
            .await;
        match spawned {
            Ok(actor) => {
                self.by_actor.insert(actor.get_id(), name.to_owned());
                entry.actor = Some(actor);
                entry.status = PluginStatus::Running;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn add(
        &mut self,
        spec: PluginSpec,
        myself: &ActorRef<ManagerMsg>,
    ) -> Result<(), ManagerError> {
        let name = spec.meta.name.to_string();
        if let Some(reason) = spec.broken {
            return Err(ManagerError::Spawn { name, reason });
        }
        if name.is_empty() {
            return Err(ManagerError::EmptyName);
        }
        if self.plugins.contains_key(&name) {
            return Err(ManagerError::DuplicateName(name));
        }
        if spec.meta.hooks.is_empty() {
            return Err(ManagerError::NoHooks(name));
        }
        let config = spec.config?;
        let d = &self.config;
        let name_arc: Arc<str> = Arc::from(name.as_str());
        let slot = Arc::new(Slot::new(
            Arc::clone(&name_arc),
            spec.meta.hooks,
            spec.queue_capacity.unwrap_or(d.queue_capacity),
            spec.overflow.unwrap_or(d.overflow),
            d.dead_letter_capacity,
            Arc::new(config),
        ));
        let settings = Settings {
            handler_timeout: spec.handler_timeout.unwrap_or(d.handler_timeout),
            restart_policy: spec.restart_policy.unwrap_or(d.restart_policy),
            restart_budget: spec.restart_budget.unwrap_or(d.restart_budget),
            backoff: spec.backoff.unwrap_or(d.backoff),
        };
        let order = self.next_order;
        self.next_order += 1;
        self.plugins.insert(
            name.clone(),
            Entry {
                meta: spec.meta,
                name: name_arc,
                settings,
                factory: spec.factory,
                slot: Arc::clone(&slot),
                status: PluginStatus::Starting,
                actor: None,
                restarts: 0,
                failures: 0,
                tracker: RestartTracker::default(),
                generation: 0,
                last_error: None,
                after_stop: AfterStop::Nothing,
                waiting: Vec::new(),
                order,
            },
        );
        // Route before spawning: every event published after `add` returns reaches the plugin
        // (it waits in the slot until the actor has started).
        self.bus.inner().route(&slot);
        if let Err(reason) = self.spawn(&name, myself).await {
            self.bus.inner().unroute(&slot);
            self.plugins.remove(&name);
            return Err(ManagerError::Spawn { name, reason });
        }
        tracing::info!(plugin = %name, "plugin started");
        self.announce(EventKind::PluginStarted(Box::new(PluginLifecycle {
            plugin: name,
            restarts: 0,
        })));
        Ok(())
    }

    /// Takes a plugin out of routing for good (until enabled again).
    fn disable_now(&mut self, name: &str, reason: String) {
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        entry.generation += 1;
        entry.status = PluginStatus::Disabled;
        self.bus.inner().unroute(&entry.slot);
        entry.slot.release();
        tracing::warn!(plugin = %name, %reason, "plugin disabled");
        self.announce(EventKind::PluginDisabled(Box::new(PluginDisabled {
            plugin: name.to_owned(),
            reason,
        })));
    }

    /// Asks the live actor to drain, shut down and stop; `then` runs when it has stopped.
    fn stop_actor(&mut self, name: &str, then: AfterStop, reply: Reply<()>) {
        let deadline = std::time::Instant::now() + self.config.shutdown_timeout;
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        self.bus.inner().unroute(&entry.slot);
        entry.after_stop = then;
        entry.generation += 1;
        match &entry.actor {
            Some(actor) => {
                entry.waiting.push(reply);
                if actor
                    .send_message(PluginMsg::Shutdown {
                        deadline,
                        reply: None,
                    })
                    .is_err()
                {
                    // Already gone: its supervision event will finish the job.
                    tracing::debug!(plugin = %name, "plugin actor already stopping");
                }
            }
            None => {
                let _ = reply.send(Ok(()));
                self.finish_stop(name);
            }
        }
    }

    /// Applies `after_stop` once a plugin's actor is gone.
    fn finish_stop(&mut self, name: &str) {
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        let then = std::mem::replace(&mut entry.after_stop, AfterStop::Nothing);
        let waiting = std::mem::take(&mut entry.waiting);
        match then {
            AfterStop::Disable => {
                entry.status = PluginStatus::Disabled;
                entry.slot.release();
                tracing::info!(plugin = %name, "plugin disabled on request");
                self.announce(EventKind::PluginDisabled(Box::new(PluginDisabled {
                    plugin: name.to_owned(),
                    reason: "disabled on request".to_owned(),
                })));
            }
            AfterStop::Remove => {
                entry.slot.release();
                self.plugins.remove(name);
                tracing::info!(plugin = %name, "plugin removed");
            }
            AfterStop::Nothing | AfterStop::Respawn => {}
        }
        for reply in waiting {
            let _ = reply.send(Ok(()));
        }
    }

    /// Swaps a plugin's factory and metadata; a running instance finishes its queue, shuts
    /// down and is started again from the new factory (`AfterStop::Respawn`). The slot stays
    /// routed throughout, so nothing published meanwhile is lost.
    fn replace(&mut self, spec: PluginSpec, reply: Reply<()>) {
        let deadline = std::time::Instant::now() + self.config.shutdown_timeout;
        let name = spec.meta.name.to_string();
        let unknown = self.unknown(&name);
        if let Some(reason) = spec.broken {
            let _ = reply.send(Err(ManagerError::Spawn { name, reason }));
            return;
        }
        let Some(entry) = self.plugins.get_mut(&name) else {
            let _ = reply.send(Err(unknown));
            return;
        };
        if entry.meta.hooks != spec.meta.hooks {
            let _ = reply.send(Err(ManagerError::HooksChanged(name)));
            return;
        }
        match spec.config {
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
            Ok(config) if !config.is_null() => entry.slot.set_config(Arc::new(config)),
            Ok(_) => {}
        }
        entry.factory = spec.factory;
        entry.meta = spec.meta;
        tracing::info!(plugin = %name, version = %entry.meta.version, "replacing plugin");
        match &entry.actor {
            Some(actor) if entry.after_stop == AfterStop::Nothing => {
                entry.after_stop = AfterStop::Respawn;
                entry.generation += 1;
                entry.waiting.push(reply);
                let msg = PluginMsg::Shutdown {
                    deadline,
                    reply: None,
                };
                if actor.send_message(msg).is_err() {
                    tracing::debug!(plugin = %name, "plugin actor already stopping");
                }
            }
            // Restarting, disabled or stopping: the next start uses the new factory.
            _ => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// A plugin failed: restart it after a backoff, or disable it.
    fn on_failure(
        &mut self,
        name: &str,
        error: String,
        start_failure: bool,
        myself: &ActorRef<ManagerMsg>,
    ) {
        let now = Instant::now();
        let unit = self.jitter.unit();
        let stopping = self.stopping;
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        entry.failures += 1;
        entry.last_error = Some(error.clone());
        tracing::warn!(plugin = %name, %error, "plugin failed");
        if entry.after_stop == AfterStop::Respawn {
            // The old version failed while finishing its queue: restart as after any failure,
            // from the new factory.
            entry.after_stop = AfterStop::Nothing;
            for reply in std::mem::take(&mut entry.waiting) {
                let _ = reply.send(Ok(()));
            }
        } else if entry.after_stop != AfterStop::Nothing {
            self.finish_stop(name);
            return;
        }
        if stopping {
            entry.status = PluginStatus::Stopped;
            return;
        }
        let s = entry.settings;
        let verdict = match s.restart_policy {
            RestartPolicy::Temporary => Err("restart policy is temporary".to_owned()),
            RestartPolicy::Transient if start_failure => {
                Err("on_start failed and restart policy is transient".to_owned())
            }
            _ if !entry.tracker.allows(&s.restart_budget, now) => Err(format!(
                "restart budget spent ({} restarts within {:?})",
                s.restart_budget.max_restarts, s.restart_budget.window
            )),
            _ => Ok(s
                .backoff
                .delay(entry.tracker.in_window(&s.restart_budget, now), unit)),
        };
        match verdict {
            Ok(delay) => {
                entry.tracker.record(now);
                entry.status = PluginStatus::Restarting;
                entry.generation += 1;
                let generation = entry.generation;
                self.announce(EventKind::PluginFailed(Box::new(PluginFailure {
                    plugin: name.to_owned(),
                    error,
                    restart_in: Some(delay),
                })));
                let name = name.to_owned();
                ractor::time::send_after(delay, myself.get_cell(), move || {
                    ManagerMsg::RestartDue { name, generation }
                });
            }
            Err(reason) => {
                self.announce(EventKind::PluginFailed(Box::new(PluginFailure {
                    plugin: name.to_owned(),
                    error,
                    restart_in: None,
                })));
                self.disable_now(name, reason);
            }
        }
    }

    async fn restart(&mut self, name: &str, myself: &ActorRef<ManagerMsg>) {
        match self.spawn(name, myself).await {
            Ok(()) => {
                let Some(entry) = self.plugins.get_mut(name) else {
                    return;
                };
                entry.restarts += 1;
                let restarts = entry.restarts;
                tracing::info!(plugin = %name, restarts, "plugin restarted");
                self.announce(EventKind::PluginRestarted(Box::new(PluginLifecycle {
                    plugin: name.to_owned(),
                    restarts,
                })));
            }
            Err(e) => self.on_failure(name, format!("respawn failed: {e}"), true, myself),
        }
    }
}

impl Actor for ManagerActor {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = (ManagerConfig, Bus);

    async fn pre_start(
        &self,
        _myself: ActorRef<ManagerMsg>,
        (config, bus): (ManagerConfig, Bus),
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState {
            bus: bus.with_source(MANAGER_SOURCE),
            config,
            plugins: BTreeMap::new(),
            by_actor: HashMap::new(),
            next_order: 0,
            jitter: Jitter::default(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Add(spec, reply) => {
                let r = if state.stopping {
                    Err(ManagerError::ShutDown)
                } else {
                    state.add(*spec, &myself).await
                };
                let _ = reply.send(r);
            }
            ManagerMsg::Remove(name, reply) => {
                if !state.plugins.contains_key(&name) {
                    let _ = reply.send(Err(state.unknown(&name)));
                } else {
                    state.stop_actor(&name, AfterStop::Remove, reply);
                }
            }
            ManagerMsg::Disable(name, reply) => match state.plugins.get(&name).map(|e| e.status) {
                None => {
                    let _ = reply.send(Err(state.unknown(&name)));
                }
                Some(status @ (PluginStatus::Disabled | PluginStatus::Stopped)) => {
                    let _ = reply.send(Err(ManagerError::WrongState {
                        action: "disable",
                        name,
                        status,
                    }));
                }
                Some(_) => state.stop_actor(&name, AfterStop::Disable, reply),
            },
            ManagerMsg::Enable(name, reply) => {
                let r = match state.plugins.get_mut(&name) {
                    None => Err(state.unknown(&name)),
                    Some(e) if e.status != PluginStatus::Disabled || e.actor.is_some() => {
                        Err(ManagerError::WrongState {
                            action: "enable",
                            name: name.clone(),
                            status: e.status,
                        })
                    }
                    Some(e) => {
                        e.tracker = RestartTracker::default();
                        let slot = Arc::clone(&e.slot);
                        state.bus.inner().route(&slot);
                        match state.spawn(&name, &myself).await {
                            Ok(()) => {
                                state.announce(EventKind::PluginStarted(Box::new(
                                    PluginLifecycle {
                                        plugin: name.clone(),
                                        restarts: state
                                            .plugins
                                            .get(&name)
                                            .map_or(0, |e| e.restarts),
                                    },
                                )));
                                Ok(())
                            }
                            Err(reason) => {
                                // Events routed to it meanwhile are kept (copied out of the
                                // log) for the next enable, as for any disabled plugin.
                                state.bus.inner().unroute(&slot);
                                slot.release();
                                Err(ManagerError::Spawn { name, reason })
                            }
                        }
                    }
                };
                let _ = reply.send(r);
            }
            ManagerMsg::Replace(spec, reply) => state.replace(*spec, reply),
            ManagerMsg::Reconfigure(name, config, reply) => {
                let r = match state.plugins.get(&name) {
                    None => Err(state.unknown(&name)),
                    Some(e)
                        if matches!(e.status, PluginStatus::Disabled | PluginStatus::Stopped) =>
                    {
                        // Not running: store it; `on_start` reads it on the next enable.
                        e.slot.set_config(Arc::new(config));
                        Ok(None)
                    }
                    Some(e) => {
                        let (tx, rx) = oneshot::channel();
                        e.slot.push_control(
                            state.bus.inner().position(),
                            Item::Reconfigure {
                                config: Arc::new(config),
                                reply: tx,
                            },
                        );
                        Ok(Some(rx))
                    }
                };
                let _ = reply.send(r);
            }
            ManagerMsg::List(reply) => {
                let mut infos: Vec<_> = state.plugins.values().collect();
                infos.sort_by_key(|e| e.order);
                let _ = reply.send(infos.into_iter().map(Entry::info).collect());
            }
            ManagerMsg::DeadLetters(name, reply) => {
                let r = match state.plugins.get(&name) {
                    None => Err(state.unknown(&name)),
                    Some(e) => Ok(e.slot.dead_letters()),
                };
                let _ = reply.send(r);
            }
            ManagerMsg::Config(name, reply) => {
                let r = match state.plugins.get(&name) {
                    None => Err(state.unknown(&name)),
                    Some(e) => Ok(e.slot.config()),
                };
                let _ = reply.send(r);
            }
            ManagerMsg::RestartDue { name, generation } => {
                let due = state.plugins.get(&name).is_some_and(|e| {
                    e.generation == generation && e.status == PluginStatus::Restarting
                });
                if due && !state.stopping {
                    state.restart(&name, &myself).await;
                }
            }
            ManagerMsg::CloseBus(reason, reply) => {
                let source: Arc<str> = Arc::from(state.config.source.as_str());
                let kind = EventKind::coordinator_shutdown(reason);
                if state.bus.inner().close_with(kind, &source).is_none() {
                    tracing::debug!("bus was already closed");
                }
                let _ = reply.send(());
            }
            ManagerMsg::StopPlugins(reply) => {
                state.stopping = true;
                let mut entries: Vec<_> = state.plugins.values_mut().collect();
                entries.sort_by_key(|e| std::cmp::Reverse(e.order));
                let list = entries
                    .into_iter()
                    .map(|e| {
                        e.generation += 1;
                        (e.name.to_string(), e.actor.clone())
                    })
                    .collect();
                let _ = reply.send(list);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ManagerMsg>,
        event: SupervisionEvent,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // Never stop the manager because a child stopped (ractor's default): that is the
        // isolation guarantee.
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(name) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let start_failure = err
                    .downcast_ref::<RunnerFailure>()
                    .is_some_and(|f| f.phase == crate::runner::Phase::Start);
                if let Some(e) = state.plugins.get_mut(&name) {
                    e.actor = None;
                    e.slot.detach();
                }
                state.on_failure(&name, err.to_string(), start_failure, &myself);
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(name) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let stopping = state.stopping;
                let Some(e) = state.plugins.get_mut(&name) else {
                    return Ok(());
                };
                e.actor = None;
                e.slot.detach();
                if e.after_stop == AfterStop::Respawn {
                    e.after_stop = AfterStop::Nothing;
                    let waiting = std::mem::take(&mut e.waiting);
                    let result = if stopping {
                        e.status = PluginStatus::Stopped;
                        Ok(())
                    } else {
                        tracing::info!(plugin = %name, "starting the replaced plugin");
                        match state.spawn(&name, &myself).await {
                            Ok(()) => Ok(()),
                            Err(err) => {
                                let reason = format!("respawn failed: {err}");
                                state.on_failure(&name, reason.clone(), true, &myself);
                                Err(reason)
                            }
                        }
                    };
                    for reply in waiting {
                        let _ = reply.send(result.clone().map_err(|reason| ManagerError::Spawn {
                            name: name.clone(),
                            reason,
                        }));
                    }
                } else if e.after_stop != AfterStop::Nothing {
                    state.finish_stop(&name);
                } else if stopping {
                    e.status = PluginStatus::Stopped;
                } else if reason.as_deref() == Some(RESTART_FOR_CONFIG) {
                    tracing::info!(plugin = %name, "restarting plugin for its new configuration");
                    if let Err(err) = state.spawn(&name, &myself).await {
                        state.on_failure(&name, format!("respawn failed: {err}"), true, &myself);
                    }
                } else {
                    // Only the manager stops plugin actors; anything else is unexpected.
                    state.on_failure(
                        &name,
                        format!("actor stopped unexpectedly ({reason:?})"),
                        false,
                        &myself,
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Assembles a [`PluginManager`]: defaults, then plugins, then [`spawn`](Self::spawn).
#[derive(Debug, Default)]
pub struct PluginManagerBuilder {
    config: ManagerConfig,
    plugins: Vec<PluginSpec>,
}

impl PluginManagerBuilder {
    /// Replaces the manager-wide defaults.
    pub fn config(mut self, config: ManagerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a plugin built by `factory` with default settings. Plugins start in the order
    /// they are added and stop in reverse.
    pub fn plugin<P, F>(self, factory: F) -> Self
    where
        P: Plugin,
        F: Fn() -> P + Send + Sync + 'static,
    {
        self.spec(PluginSpec::new(factory))
    }

    /// Adds a plugin with per-plugin settings.
    pub fn spec(mut self, spec: PluginSpec) -> Self {
        self.plugins.push(spec);
        self
    }

    /// Starts the manager actor and every plugin.
    ///
    /// Must be called inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// The first [`ManagerError`] of any plugin (duplicate name, no hooks, bad config); the
    /// manager is shut down again in that case.
    pub async fn spawn(self) -> Result<PluginManager, ManagerError> {
        let bus = Bus::new(&self.config.source);
        let (actor, join) = Actor::spawn(None, ManagerActor, (self.config.clone(), bus.clone()))
            .await
            .map_err(|e| ManagerError::Spawn {
                name: "manager".to_owned(),
                reason: e.to_string(),
            })?;
        let manager = PluginManager {
            actor,
            bus,
            config: Arc::new(self.config),
            join: Arc::new(Mutex::new(Some(join))),
        };
        for spec in self.plugins {
            if let Err(e) = manager.add(spec).await {
                let _ = manager.shutdown(ShutdownReason::Error(e.to_string())).await;
                return Err(e);
            }
        }
        Ok(manager)
    }
}

/// A handle to a running plugin manager: publish events, manage plugins, read stats.
///
/// Cheap to clone. Dropping every handle does not stop the manager: call
/// [`shutdown`](Self::shutdown).
///
/// # Example
///
/// ```
/// use dtf_plugin_core::prelude::*;
///
/// struct Hello;
///
/// impl Plugin for Hello {
///     fn metadata(&self) -> PluginMetadata {
///         PluginMetadata::new("hello").hooks(Hook::TaskCreated)
///     }
///     async fn on_event(&mut self, _ctx: &mut PluginContext, event: &Event) -> Result<(), PluginError> {
///         tracing::info!(seq = event.meta.seq, "task created");
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = PluginManager::builder().plugin(|| Hello).spawn().await?;
/// manager.publish(EventKind::task_created("t1", "tests::it_works")).await?;
/// manager.flush().await;
/// let stats = manager.stats("hello").await?;
/// assert_eq!(stats.delivered, 1);
/// let report = manager.shutdown(ShutdownReason::Completed).await;
/// assert!(report.clean);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PluginManager {
    actor: ActorRef<ManagerMsg>,
    bus: Bus,
    config: Arc<ManagerConfig>,
    join: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginManager")
            .field("source", &self.bus.source())
            .finish_non_exhaustive()
    }
}

impl PluginManager {
    /// A builder with the default [`ManagerConfig`].
    pub fn builder() -> PluginManagerBuilder {
        PluginManagerBuilder::default()
    }

    /// A publishing handle (source: [`ManagerConfig::source`]); use
    /// [`Bus::with_source`] to publish under another name.
    pub fn bus(&self) -> Bus {
        self.bus.clone()
    }

    /// Publishes one event; see [`Bus::publish`].
    ///
    /// # Errors
    ///
    /// [`PublishError::Closed`], with the event, after shutdown.
    pub async fn publish(&self, kind: EventKind) -> Result<u64, PublishError> {
        self.bus.publish(kind).await
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(RpcReplyPort<T>) -> ManagerMsg,
    ) -> Result<T, ManagerError> {
        let (tx, rx) = ractor::concurrency::oneshot();
        self.actor
            .send_message(make(tx.into()))
            .map_err(|_| ManagerError::ShutDown)?;
        rx.await.map_err(|_| ManagerError::ShutDown)
    }

    /// Adds and starts a plugin while the manager runs. Events published after this returns
    /// reach it.
    ///
    /// # Errors
    ///
    /// [`ManagerError::DuplicateName`], [`ManagerError::NoHooks`], [`ManagerError::EmptyName`],
    /// [`ManagerError::Config`], or [`ManagerError::ShutDown`].
    pub async fn add(&self, spec: PluginSpec) -> Result<(), ManagerError> {
        self.call(|r| ManagerMsg::Add(Box::new(spec), r)).await?
    }

    /// Stops a plugin (it handles what is queued for it, then `on_shutdown`) and forgets it.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`] or [`ManagerError::ShutDown`].
    pub async fn remove(&self, name: &str) -> Result<(), ManagerError> {
        let name = name.to_owned();
        self.call(|r| ManagerMsg::Remove(name, r)).await?
    }

    /// Stops routing events to a plugin; it handles what is already queued, then
    /// `on_shutdown`. Its counters are kept.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`], [`ManagerError::WrongState`] if already disabled.
    pub async fn disable(&self, name: &str) -> Result<(), ManagerError> {
        let name = name.to_owned();
        self.call(|r| ManagerMsg::Disable(name, r)).await?
    }

    /// Starts a disabled plugin again from its factory, with a fresh restart budget.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`], [`ManagerError::WrongState`] unless disabled.
    pub async fn enable(&self, name: &str) -> Result<(), ManagerError> {
        let name = name.to_owned();
        self.call(|r| ManagerMsg::Enable(name, r)).await?
    }

    /// Replaces a running plugin with a new version (hot reload): the plugin named like
    /// `spec` handles what is queued for it (until its queue is empty, at most
    /// [`ManagerConfig::shutdown_timeout`]), shuts down (`on_shutdown`), and is started again
    /// from `spec`'s factory. It stays subscribed throughout, so events
    /// published meanwhile wait in its queue and reach the new version: none is lost. A
    /// `null` configuration in `spec` keeps the current one; the per-plugin settings
    /// (timeouts, restart policy) stay those of the original spec. A restarting or disabled
    /// plugin just gets the new factory for its next start.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`], [`ManagerError::HooksChanged`] (remove and add it
    /// instead), [`ManagerError::Config`], [`ManagerError::Spawn`] when the new version
    /// cannot be spawned (it is then handled as a failure and retried within the budget).
    pub async fn replace(&self, spec: PluginSpec) -> Result<(), ManagerError> {
        self.call(|r| ManagerMsg::Replace(Box::new(spec), r))
            .await?
    }

    /// Changes a plugin's configuration while it runs. The change is applied in order with
    /// the events (everything published before this call is handled with the old one); see
    /// [`Plugin::on_reconfigure`]. A disabled plugin gets it when enabled.
    ///
    /// # Errors
    ///
    /// [`ManagerError::ConfigRejected`] when the plugin refused it (the old one stays),
    /// [`ManagerError::Config`] when `config` does not serialize, or
    /// [`ManagerError::UnknownPlugin`].
    pub async fn reconfigure(
        &self,
        name: &str,
        config: impl Serialize,
    ) -> Result<(), ManagerError> {
        let value = crate::plugin::to_config(name, &config)?;
        let owned = name.to_owned();
        let pending = self
            .call(|r| ManagerMsg::Reconfigure(owned, value, r))
            .await??;
        let Some(rx) = pending else {
            return Ok(());
        };
        match rx.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(reason)) => Err(ManagerError::ConfigRejected {
                name: name.to_owned(),
                reason,
            }),
            Err(_) => Err(ManagerError::ConfigRejected {
                name: name.to_owned(),
                reason: "the plugin stopped before applying it".to_owned(),
            }),
        }
    }

    /// Every plugin with its status and counters, in start order.
    ///
    /// # Errors
    ///
    /// [`ManagerError::ShutDown`] after shutdown.
    pub async fn list(&self) -> Result<Vec<PluginInfo>, ManagerError> {
        self.call(ManagerMsg::List).await
    }

    /// One plugin's counters.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`] or [`ManagerError::ShutDown`].
    pub async fn stats(&self, name: &str) -> Result<PluginStats, ManagerError> {
        let list = self.list().await?;
        let known = list
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        list.iter()
            .find(|p| p.name == name)
            .map(|p| p.stats)
            .ok_or_else(|| ManagerError::UnknownPlugin {
                name: name.to_owned(),
                known,
            })
    }

    /// The most recent dead letters of a plugin (up to
    /// [`ManagerConfig::dead_letter_capacity`]), oldest first.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`] or [`ManagerError::ShutDown`].
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>, ManagerError> {
        let name = name.to_owned();
        self.call(|r| ManagerMsg::DeadLetters(name, r)).await?
    }

    /// A plugin's configuration in force (the last one it accepted, or the one it will get
    /// when enabled). It is the raw value, secrets included: redact it before showing it
    /// anywhere (the web console replaces values under secret-looking keys with `***`).
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`] or [`ManagerError::ShutDown`].
    pub async fn config(&self, name: &str) -> Result<PluginConfig, ManagerError> {
        let name = name.to_owned();
        let config = self.call(|r| ManagerMsg::Config(name, r)).await??;
        Ok(PluginConfig::clone(&config))
    }

    /// Resolves when every event published before the call has been handled (or
    /// dead-lettered) by every plugin it was routed to. A plugin that is restarting is waited
    /// for; one that gets disabled no longer holds the flush up. Events that plugins publish
    /// while handling come after the flush point: see [`settle`](Self::settle) to wait for
    /// those as well.
    pub async fn flush(&self) {
        for (slot, target) in self.bus.inner().flush_targets() {
            slot.wait_handled(target).await;
        }
    }

    /// Flushes until the bus is quiet: repeats [`flush`](Self::flush) until no event was
    /// published while it ran. Use it when plugins publish in reaction to events (a scheduler
    /// publishing `TaskAssigned` for each `TaskCreated`) and you want their reactions handled
    /// too. It does not return while plugins keep publishing; bound it with
    /// `tokio::time::timeout` if yours may.
    pub async fn settle(&self) {
        loop {
            let before = self.bus.inner().last_seq();
            self.flush().await;
            if self.bus.inner().last_seq() == before {
                return;
            }
        }
    }

    /// [`flush`](Self::flush) with a time limit.
    ///
    /// # Errors
    ///
    /// [`ManagerError::FlushTimeout`] when some plugin had not caught up in time.
    pub async fn flush_timeout(&self, limit: Duration) -> Result<(), ManagerError> {
        tokio::time::timeout(limit, self.flush())
            .await
            .map_err(|_| ManagerError::FlushTimeout(limit))
    }

    /// Shuts down gracefully, within [`ManagerConfig::shutdown_timeout`]:
    ///
    /// 1. publishes `CoordinatorShutdown { reason }` and closes the bus (later publishes fail
    ///    with [`PublishError::Closed`], handing the event back);
    /// 2. waits until every queue has drained (plugins keep being restarted meanwhile);
    /// 3. stops every plugin, each handling what is left and then running `on_shutdown`,
    ///    concurrently and each with a deadline of its own (`shutdown_timeout` from the start
    ///    of this step), so a slow plugin cannot use up another's time;
    /// 4. reports, per plugin, what was left and what failed.
    ///
    /// Calling it twice returns an empty report the second time.
    pub async fn shutdown(&self, reason: ShutdownReason) -> ShutdownReport {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        let mut report = ShutdownReport {
            plugins: Vec::new(),
            clean: true,
        };
        if self
            .call(|r| ManagerMsg::CloseBus(reason, r))
            .await
            .is_err()
        {
            return report;
        }
        let drained = tokio::time::timeout_at(deadline, self.flush())
            .await
            .is_ok();
        let live = self.call(ManagerMsg::StopPlugins).await.unwrap_or_default();
        let mut errors: HashMap<String, String> = HashMap::new();
        if !drained {
            report.clean = false;
        }
        // Every plugin gets a deadline of its own, counted from here: the drain above may have
        // spent the shared one on a slow plugin, and an idle reporter stopped after it must
        // still run `on_shutdown` (and write its report). They stop concurrently, so the whole
        // stop takes one `shutdown_timeout` at most, not one per plugin.
        let stop_deadline = Instant::now() + self.config.shutdown_timeout;
        let mut stopping = Vec::new();
        for (name, actor) in live {
            let Some(actor) = actor else { continue };
            let (tx, rx) = ractor::concurrency::oneshot::<ShutdownOutcome>();
            let msg = PluginMsg::Shutdown {
                deadline: stop_deadline.into_std(),
                reply: Some(tx.into()),
            };
            if actor.send_message(msg).is_ok() {
                stopping.push((name, actor, rx));
            }
        }
        for (name, actor, rx) in stopping {
            // A little grace past the deadline for `on_shutdown` itself to be cut off.
            let grace = stop_deadline + Duration::from_millis(100);
            match tokio::time::timeout_at(grace, rx).await {
                Ok(Ok(outcome)) => {
                    if let Some(e) = outcome.error {
                        errors.insert(name, e);
                    }
                }
                Ok(Err(_)) => {
                    errors.insert(name, "the plugin stopped without reporting".to_owned());
                }
                Err(_) => {
                    actor.kill();
                    errors.insert(name, "did not stop before the shutdown deadline".to_owned());
                }
            }
        }
        self.bus.inner().unroute_all();
        let infos = self.list().await.unwrap_or_default();
        let mut infos: Vec<_> = infos.into_iter().collect();
        infos.reverse();
        for info in infos {
            let error = errors.remove(&info.name);
            if error.is_some() || info.stats.queued > 0 {
                report.clean = false;
            }
            report.plugins.push(PluginShutdown {
                left_in_queue: info.stats.queued,
                name: info.name,
                error,
                stats: info.stats,
            });
        }
        self.actor.stop(Some("dtf:shutdown".to_owned()));
        let join = self
            .join
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(join) = join {
            let _ = join.await;
        }
        report
    }
}
