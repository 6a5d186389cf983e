//! The plugin manager: a supervising actor plus the [`PluginManager`] handle.
//!
//! The manager actor owns the plugin table and is the ractor supervisor of every plugin actor.
//! It is *not* on the publish path: publishers enqueue straight into the plugins' slots (see
//! `bus/`), and the manager only handles management calls and supervision events.

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
    Plugin, PluginConfig, PluginContext, PluginMetadata, Reconfigured, RestartPolicy, Stopping,
};
use crate::runner::{
    PluginActor, PluginMsg, RESTART_FOR_CONFIG, RunnerArgs, RunnerFailure, ShutdownOutcome, Started,
};
use crate::supervision::{Backoff, Jitter, RestartBudget, RestartTracker};

mod actor;
mod spec;
mod types;

/// How long a shutdown waits for plugins it killed at their deadline to stop (see
/// [`PluginManager::shutdown`]).
const KILL_WAIT: Duration = Duration::from_secs(1);

use actor::*;

/// `timeout` from now, or as far ahead as the clock allows when it is too long to add: a
/// `shutdown_timeout` of centuries (a typo in the configuration) must not panic the manager
/// or its caller, only wait that long.
pub(crate) fn deadline_after(timeout: Duration) -> std::time::Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = std::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}
pub use spec::PluginSpec;
use spec::*;
pub use types::{
    ManagerConfig, PluginInfo, PluginShutdown, PluginStats, PluginStatus, ShutdownReport,
};

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
    /// they are added; at shutdown they are stopped together, each with its own deadline.
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
    /// Must be called inside a Tokio runtime with its time driver enabled.
    ///
    /// # Errors
    ///
    /// [`ManagerError::NoTimeDriver`] when the runtime has no timer; the first
    /// [`ManagerError`] of any plugin (duplicate name, no hooks, bad config), and the manager
    /// is shut down again in that case.
    pub async fn spawn(self) -> Result<PluginManager, ManagerError> {
        // Handler timeouts, restart backoff and shutdown deadlines all need tokio's timer:
        // without it they would panic later, in the middle of a run. Say so now.
        let timer = catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
        if timer.is_err() {
            return Err(ManagerError::NoTimeDriver);
        }
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

    /// Stops a plugin (it handles what is queued for it, then `on_shutdown`) and forgets it;
    /// the manager then publishes [`EventKind::PluginRemoved`].
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

    /// Starts a disabled plugin again from its factory, with a fresh restart budget. Returns
    /// once its `on_start` has run.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`], [`ManagerError::WrongState`] unless disabled,
    /// [`ManagerError::Spawn`] when the factory panicked, [`ManagerError::StartFailed`] when
    /// `on_start` failed (the plugin is then restarted within its budget, as after any
    /// failure).
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
    /// cannot be spawned, [`ManagerError::StartFailed`] when its `on_start` failed. When the
    /// old version fails while finishing its queue, the failure is counted and reported
    /// (`PluginFailed`), and the new version is started at once all the same, whatever the
    /// restart policy and without spending the restart budget: a fixed version must start.
    /// It answers once the new version has started, with the exceptions
    /// [`restart`](Self::restart) lists.
    pub async fn replace(&self, spec: PluginSpec) -> Result<(), ManagerError> {
        self.call(|r| ManagerMsg::Replace(Box::new(spec), r))
            .await?
    }

    /// Restarts a running plugin from its factory, on request (the web console's restart):
    /// like [`replace`](Self::replace) with its own factory. It handles what is queued for it
    /// (at most [`ManagerConfig::shutdown_timeout`]), shuts down (`on_shutdown`), and a new
    /// instance goes on with the next event; it stays subscribed throughout, so events
    /// published meanwhile reach the new instance: none is lost (disabling and enabling it
    /// would lose them). Not a failure: no restart budget is spent.
    ///
    /// # Errors
    ///
    /// [`ManagerError::UnknownPlugin`]; [`ManagerError::WrongState`] when it is not running
    /// (disabled, restarting after a failure, or being stopped: enable a disabled one);
    /// [`ManagerError::Spawn`] or [`ManagerError::StartFailed`] when the new instance cannot
    /// be started (then handled as a failure); [`ManagerError::ShutDown`] when the manager
    /// shuts down meanwhile. It answers once the new instance has started, with two
    /// exceptions: when the old instance fails while finishing its queue, with `Ok` once the
    /// new one's start is scheduled (at once, as for [`replace`](Self::replace)); and when a
    /// `disable` or `remove` comes first, with `Ok` once that is done.
    pub async fn restart(&self, name: &str) -> Result<(), ManagerError> {
        let name = name.to_owned();
        self.call(|r| ManagerMsg::Restart(name, r)).await?
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

    /// Shuts down gracefully, within twice [`ManagerConfig::shutdown_timeout`] (steps 2 and
    /// 3 are each bounded by it) and a little more:
    ///
    /// 1. publishes `CoordinatorShutdown { reason }` and closes the bus (later publishes fail
    ///    with [`PublishError::Closed`], handing the event back);
    /// 2. waits until every queue has drained (plugins keep being restarted meanwhile);
    /// 3. stops every plugin, each handling what is left and then running `on_shutdown`,
    ///    concurrently and each with a deadline of its own (`shutdown_timeout` from the start
    ///    of this step), so a slow plugin cannot use up another's time; a plugin still busy
    ///    at its deadline is killed, and waited for (up to 1 s) so that what it handled of
    ///    its last chunk is counted;
    /// 4. reports, per plugin, what was left and what failed.
    ///
    /// Calling it twice returns an empty report the second time.
    pub async fn shutdown(&self, reason: ShutdownReason) -> ShutdownReport {
        let deadline = Instant::from_std(deadline_after(self.config.shutdown_timeout));
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
        let stop_deadline = Instant::from_std(deadline_after(self.config.shutdown_timeout));
        let mut stopping = Vec::new();
        // Plugins a replace, restart, disable or remove is stopping already: they are
        // finishing their queue and `on_shutdown` for that, and read no second `Shutdown`
        // (asked again, each was reported "stopped without reporting" and the shutdown not
        // clean). They are waited for, within the same deadline.
        let mut already = Vec::new();
        for (name, actor, stopping_already) in live {
            let Some(actor) = actor else { continue };
            if stopping_already {
                already.push((name, actor));
                continue;
            }
            let (tx, rx) = ractor::concurrency::oneshot::<ShutdownOutcome>();
            let msg = PluginMsg::Shutdown {
                deadline: stop_deadline.into_std(),
                why: Stopping::Manager,
                reply: Some(tx.into()),
            };
            if actor.send_message(msg).is_ok() {
                stopping.push((name, actor, rx));
            }
        }
        let mut killed = Vec::new();
        for (name, actor) in already {
            let grace = stop_deadline + Duration::from_millis(100);
            let left = grace.saturating_duration_since(Instant::now());
            if actor.wait(Some(left)).await.is_err() {
                actor.kill();
                errors.insert(
                    name.clone(),
                    "did not stop before the shutdown deadline".to_owned(),
                );
                killed.push((name, actor));
            }
        }
        // Plugins that answered: their actors end just after, and one that failed while
        // draining is counted by the manager when its supervision event arrives.
        let mut answered = Vec::new();
        for (name, actor, rx) in stopping {
            // A little grace past the deadline for `on_shutdown` itself to be cut off.
            let grace = stop_deadline + Duration::from_millis(100);
            match tokio::time::timeout_at(grace, rx).await {
                Ok(Ok(outcome)) => {
                    if let Some(e) = outcome.error {
                        errors.insert(name, e);
                    }
                    answered.push(actor);
                }
                Ok(Err(_)) => {
                    errors.insert(name, "the plugin stopped without reporting".to_owned());
                    answered.push(actor);
                }
                Err(_) => {
                    actor.kill();
                    errors.insert(
                        name.clone(),
                        "did not stop before the shutdown deadline".to_owned(),
                    );
                    killed.push((name, actor));
                }
            }
        }
        // A kill takes effect on the actor's own task, which drops the chunk in hand; that
        // drop counts what the chunk handled (`Tally`). The report is read after it, or its
        // counters could miss those events. Bounded: a plugin blocking its thread never yields
        // to the kill.
        let killed_by = Instant::now() + KILL_WAIT;
        for (name, actor) in killed {
            let left = killed_by.saturating_duration_since(Instant::now());
            if actor.wait(Some(left)).await.is_err() {
                // Plugin actors are spawned without a name: the manager's name for it.
                tracing::warn!(
                    plugin = %name,
                    "a killed plugin did not stop; its counters may miss its last events"
                );
            }
        }
        // The report is read once they have ended: ractor sends an actor's supervision event
        // before it marks it stopped, and the manager handles supervision events before its
        // other messages, so the failure count of a plugin that failed while draining is in
        // the list below (it raced with it before; the error text was there either way).
        // Bounded by the same grace as the answers.
        let ended_by = stop_deadline + Duration::from_millis(100);
        for actor in answered {
            let left = ended_by.saturating_duration_since(Instant::now());
            let _ = actor.wait(Some(left.max(Duration::from_millis(10)))).await;
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
