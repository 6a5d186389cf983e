//! The manager actor: the plugin table, management calls, supervision (restart with backoff,
//! disable after the budget) and the messages it takes.

use super::*;

/// How long a new instance waits for the previous one to be dropped (see `Entry::last_task`).
const PREVIOUS_INSTANCE_GRACE: Duration = Duration::from_secs(1);

/// Settings in force for one plugin (spec overrides applied to the manager defaults).
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) handler_timeout: Duration,
    pub(super) restart_policy: RestartPolicy,
    pub(super) restart_budget: RestartBudget,
    pub(super) backoff: Backoff,
}

/// What to do when a plugin's actor has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterStop {
    Nothing,
    Disable,
    Remove,
    /// Start again from the (replaced) factory: [`PluginManager::replace`].
    Respawn,
}

pub(super) struct Entry {
    pub(super) meta: PluginMetadata,
    pub(super) name: Arc<str>,
    pub(super) settings: Settings,
    pub(super) factory: Box<dyn ErasedFactory>,
    pub(super) slot: Arc<Slot>,
    pub(super) status: PluginStatus,
    pub(super) actor: Option<ActorRef<PluginMsg>>,
    /// The task of the last actor, or the one dropping its stopped instance: a new instance
    /// starts once it ended (waiting at most `PREVIOUS_INSTANCE_GRACE`), so the old instance
    /// is dropped first (its `Drop` may hand state to the new `on_start`, `Handover`).
    pub(super) last_task: Option<tokio::task::JoinHandle<()>>,
    pub(super) restarts: u32,
    pub(super) failures: u32,
    pub(super) tracker: RestartTracker,
    /// Bumped whenever a scheduled restart must be ignored.
    pub(super) generation: u64,
    pub(super) last_error: Option<String>,
    /// Disabled by [`crate::PluginManager::disable`], not by its failures.
    pub(super) disabled_on_request: bool,
    pub(super) after_stop: AfterStop,
    pub(super) waiting: Vec<RpcReplyPort<Result<(), ManagerError>>>,
    /// Position in start order (for reverse-order shutdown).
    pub(super) order: u64,
}

impl Entry {
    pub(super) fn info(&self) -> PluginInfo {
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
            disabled_on_request: self.status == PluginStatus::Disabled && self.disabled_on_request,
            stats: self.stats(),
        }
    }

    pub(super) fn stats(&self) -> PluginStats {
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

pub(super) type Reply<T> = RpcReplyPort<Result<T, ManagerError>>;

/// Messages to the manager actor.
pub(crate) enum ManagerMsg {
    Add(Box<PluginSpec>, Reply<()>),
    Remove(String, Reply<()>),
    Enable(String, Reply<()>),
    Disable(String, Reply<()>),
    Replace(Box<PluginSpec>, Reply<()>),
    Restart(String, Reply<()>),
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
    /// Every plugin, latest added first, with its live actor and whether a stop of its own
    /// (a replace, restart, disable or remove) is under way.
    StopPlugins(RpcReplyPort<Vec<ToStop>>),
}

// ractor's `cluster` feature (linked by `dtf-cluster`) drops its blanket `Message` impl; the
// message never leaves the process, so the default (non-serializable) methods are right.
#[cfg(feature = "cluster")]
impl ractor::Message for ManagerMsg {}

/// A plugin to stop at shutdown: its name, its live actor, and whether a stop of its own is
/// under way.
pub(super) type ToStop = (String, Option<ActorRef<PluginMsg>>, bool);

pub(super) struct ManagerActor;

pub(super) struct ManagerState {
    /// Publishes the framework's own events; never waits on a queue.
    pub(super) bus: Bus,
    pub(super) config: ManagerConfig,
    pub(super) plugins: BTreeMap<String, Entry>,
    pub(super) by_actor: HashMap<ActorId, String>,
    pub(super) next_order: u64,
    pub(super) jitter: Jitter,
    pub(super) stopping: bool,
}

impl ManagerState {
    pub(super) fn known(&self) -> String {
        if self.plugins.is_empty() {
            return "none".to_owned();
        }
        self.plugins.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    pub(super) fn unknown(&self, name: &str) -> ManagerError {
        ManagerError::UnknownPlugin {
            name: name.to_owned(),
            known: self.known(),
        }
    }

    pub(super) fn announce(&self, kind: EventKind) {
        if let Err(e) = self.bus.publish_unbounded(kind) {
            tracing::debug!(error = %e, "framework event not published");
        }
    }

    /// Spawns a fresh actor for `name` from its factory. A spawn error is handled as a failure.
    pub(super) async fn spawn(
        &mut self,
        name: &str,
        myself: &ActorRef<ManagerMsg>,
    ) -> Result<(), String> {
        self.spawn_telling(name, myself, None).await
    }

    /// [`spawn`](Self::spawn), telling `started` how the instance's `on_start` went.
    pub(super) async fn spawn_telling(
        &mut self,
        name: &str,
        myself: &ActorRef<ManagerMsg>,
        started: Option<Started>,
    ) -> Result<(), String> {
        let bus = self.bus.clone();
        let Some(entry) = self.plugins.get_mut(name) else {
            return Err(format!("no plugin `{name}`"));
        };
        if let Some(last) = entry.last_task.take() {
            // Normally over already (a failed instance is dropped as its task ends, before the
            // backoff); bounded, since a plugin's `Drop` is untrusted code.
            if tokio::time::timeout(PREVIOUS_INSTANCE_GRACE, last)
                .await
                .is_err()
            {
                tracing::warn!(plugin = %name, "the previous instance is still being dropped; starting the new one anyway");
            }
        }
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
                started,
            )
            .await;
        match spawned {
            Ok((actor, task)) => {
                self.by_actor.insert(actor.get_id(), name.to_owned());
                entry.actor = Some(actor);
                entry.last_task = Some(task);
                entry.status = PluginStatus::Running;
                entry.disabled_on_request = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn add(
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
        let overflow = spec.overflow.unwrap_or(d.overflow);
        let slot = Arc::new(Slot::new(
            self.bus.inner().group(spec.meta.hooks, overflow),
            Arc::clone(&name_arc),
            spec.meta.hooks,
            spec.queue_capacity.unwrap_or(d.queue_capacity),
            overflow,
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
                last_task: None,
                restarts: 0,
                failures: 0,
                tracker: RestartTracker::default(),
                generation: 0,
                last_error: None,
                disabled_on_request: false,
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
    pub(super) fn disable_now(&mut self, name: &str, reason: String) {
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        entry.generation += 1;
        entry.status = PluginStatus::Disabled;
        entry.disabled_on_request = false;
        self.bus.inner().unroute(&entry.slot);
        entry.slot.release();
        tracing::warn!(plugin = %name, %reason, "plugin disabled");
        self.announce(EventKind::PluginDisabled(Box::new(PluginDisabled {
            plugin: name.to_owned(),
            reason,
        })));
    }

    /// Asks the live actor to drain, shut down and stop; `then` runs when it has stopped.
    pub(super) fn stop_actor(&mut self, name: &str, then: AfterStop, reply: Reply<()>) {
        let deadline = super::deadline_after(self.config.shutdown_timeout);
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        if entry.after_stop == AfterStop::Remove && entry.actor.is_some() {
            // A removal is under way (the plugin finishes its queue): it wins. A `disable`
            // meanwhile answers with it; before, it turned the removal into a disable, and
            // the plugin stayed listed with no `PluginRemoved`.
            entry.waiting.push(reply);
            return;
        }
        self.bus.inner().unroute(&entry.slot);
        entry.after_stop = then;
        entry.generation += 1;
        match &entry.actor {
            Some(actor) => {
                entry.waiting.push(reply);
                if actor
                    .send_message(PluginMsg::Shutdown {
                        deadline,
                        why: if then == AfterStop::Remove {
                            Stopping::Removed
                        } else {
                            Stopping::Disabled
                        },
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
    pub(super) fn finish_stop(&mut self, name: &str) {
        let Some(entry) = self.plugins.get_mut(name) else {
            return;
        };
        let then = std::mem::replace(&mut entry.after_stop, AfterStop::Nothing);
        let waiting = std::mem::take(&mut entry.waiting);
        match then {
            AfterStop::Disable => {
                entry.status = PluginStatus::Disabled;
                entry.disabled_on_request = true;
                entry.slot.release();
                tracing::info!(plugin = %name, "plugin disabled on request");
                self.announce(EventKind::PluginDisabled(Box::new(PluginDisabled {
                    plugin: name.to_owned(),
                    reason: "disabled on request".to_owned(),
                })));
            }
            AfterStop::Remove => {
                entry.slot.release();
                let restarts = entry.restarts;
                self.plugins.remove(name);
                tracing::info!(plugin = %name, "plugin removed");
                self.announce(EventKind::PluginRemoved(Box::new(PluginLifecycle {
                    plugin: name.to_owned(),
                    restarts,
                })));
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
    pub(super) fn replace(&mut self, spec: PluginSpec, reply: Reply<()>) {
        let deadline = super::deadline_after(self.config.shutdown_timeout);
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
            Some(_) if entry.after_stop == AfterStop::Nothing => {
                Self::respawn(&name, entry, deadline, reply);
            }
            // Restarting, disabled or stopping: the next start uses the new factory.
            _ => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// A running instance finishes its queue, shuts down and is started again from its
    /// factory (`AfterStop::Respawn`), staying routed: `reply` once the new one runs.
    fn respawn(name: &str, entry: &mut Entry, deadline: std::time::Instant, reply: Reply<()>) {
        let Some(actor) = &entry.actor else {
            let _ = reply.send(Ok(()));
            return;
        };
        entry.after_stop = AfterStop::Respawn;
        entry.generation += 1;
        entry.waiting.push(reply);
        let msg = PluginMsg::Shutdown {
            deadline,
            why: Stopping::Replaced,
            reply: None,
        };
        if actor.send_message(msg).is_err() {
            tracing::debug!(plugin = %name, "plugin actor already stopping");
        }
    }

    /// [`PluginManager::restart`](super::PluginManager::restart).
    pub(super) fn restart_on_request(&mut self, name: &str, reply: Reply<()>) {
        let deadline = super::deadline_after(self.config.shutdown_timeout);
        let unknown = self.unknown(name);
        let Some(entry) = self.plugins.get_mut(name) else {
            let _ = reply.send(Err(unknown));
            return;
        };
        if entry.actor.is_none() || entry.after_stop != AfterStop::Nothing {
            let _ = reply.send(Err(ManagerError::WrongState {
                action: "restart",
                name: name.to_owned(),
                status: entry.status,
            }));
            return;
        }
        tracing::info!(plugin = %name, "restarting plugin on request");
        Self::respawn(name, entry, deadline, reply);
    }

    /// A plugin failed: restart it after a backoff, or disable it.
    pub(super) fn on_failure(
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
        // A replace or restart waiting for the old instance to finish its queue: answered
        // below, once the new instance's start is scheduled.
        let mut respawn_waiting = Vec::new();
        let respawn = entry.after_stop == AfterStop::Respawn;
        if respawn {
            // The old instance (or version) failed while finishing its queue: the new one is
            // started all the same, at once, as the replace or restart asked; the old one's
            // failure is counted and reported, but spends no restart budget and does not
            // disable the plugin (a fixed version dropped in must start).
            entry.after_stop = AfterStop::Nothing;
            respawn_waiting = std::mem::take(&mut entry.waiting);
        } else if entry.after_stop != AfterStop::Nothing {
            // Disabled or removed as asked; the failure is reported first.
            self.announce(EventKind::PluginFailed(Box::new(PluginFailure {
                plugin: name.to_owned(),
                error,
                restart_in: None,
            })));
            self.finish_stop(name);
            return;
        }
        if stopping {
            entry.status = PluginStatus::Stopped;
            for reply in respawn_waiting {
                let _ = reply.send(Err(ManagerError::ShutDown));
            }
            return;
        }
        let s = entry.settings;
        let verdict = match s.restart_policy {
            _ if respawn => Ok(Duration::ZERO),
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
                if !respawn {
                    entry.tracker.record(&s.restart_budget, now);
                }
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
                // It restarts (from the new factory, for a replace), as asked.
                for reply in respawn_waiting {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(reason) => {
                self.announce(EventKind::PluginFailed(Box::new(PluginFailure {
                    plugin: name.to_owned(),
                    error: error.clone(),
                    restart_in: None,
                })));
                for reply in respawn_waiting {
                    let _ = reply.send(Err(ManagerError::StartFailed {
                        name: name.to_owned(),
                        reason: format!(
                            "it failed while finishing its queue ({error}) and was disabled: {reason}"
                        ),
                    }));
                }
                self.disable_now(name, reason);
            }
        }
    }

    pub(super) async fn restart(&mut self, name: &str, myself: &ActorRef<ManagerMsg>) {
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
                    // The plugins are being stopped: a new instance would miss the stop list,
                    // never get `on_shutdown`, and be killed with the manager.
                    _ if state.stopping => Err(ManagerError::ShutDown),
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
                        let (tx, rx) = oneshot::channel();
                        match state.spawn_telling(&name, &myself, Some(tx)).await {
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
                                // `enable` answers once `on_start` has run, with its error if
                                // it failed (the failure itself is handled as any other: a
                                // restart within the budget). Waited for outside the manager,
                                // so a slow `on_start` never blocks it.
                                tokio::spawn(async move {
                                    let r = match rx.await {
                                        Ok(Ok(())) => Ok(()),
                                        Ok(Err(reason)) => {
                                            Err(ManagerError::StartFailed { name, reason })
                                        }
                                        Err(_) => Err(ManagerError::StartFailed {
                                            name,
                                            reason: "the plugin stopped before it started"
                                                .to_owned(),
                                        }),
                                    };
                                    let _ = reply.send(r);
                                });
                                return Ok(());
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
            ManagerMsg::Restart(name, reply) => state.restart_on_request(&name, reply),
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
                        let stopping = e.after_stop != AfterStop::Nothing;
                        (e.name.to_string(), e.actor.clone(), stopping)
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
            SupervisionEvent::ActorTerminated(cell, old_state, reason) => {
                // The stopped instance rides in the event. It is dropped off the manager's task
                // (its `Drop` is untrusted code), and a new instance waits for that, bounded
                // (`last_task`): its `Drop` may hand state over (`Handover`) to the next
                // `on_start`.
                let dropping = tokio::task::spawn_blocking(move || drop(old_state));
                let Some(name) = state.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let stopping = state.stopping;
                let Some(e) = state.plugins.get_mut(&name) else {
                    return Ok(());
                };
                e.last_task = Some(dropping);
                e.actor = None;
                e.slot.detach();
                if e.after_stop == AfterStop::Respawn {
                    e.after_stop = AfterStop::Nothing;
                    let waiting = std::mem::take(&mut e.waiting);
                    if stopping {
                        e.status = PluginStatus::Stopped;
                        for reply in waiting {
                            let _ = reply.send(Err(ManagerError::ShutDown));
                        }
                        return Ok(());
                    }
                    tracing::info!(plugin = %name, "starting the replaced or restarted plugin");
                    let (tx, rx) = oneshot::channel();
                    match state.spawn_telling(&name, &myself, Some(tx)).await {
                        // Answered once the new instance's `on_start` has run (outside the
                        // manager: a slow `on_start` never blocks it), with its error if it
                        // failed (handled as any failure: a restart within the budget).
                        Ok(()) => {
                            tokio::spawn(async move {
                                let r = match rx.await {
                                    Ok(Ok(())) => Ok(()),
                                    Ok(Err(reason)) => Err(reason),
                                    Err(_) => {
                                        Err("the plugin stopped before it started".to_owned())
                                    }
                                };
                                for reply in waiting {
                                    let _ = reply.send(r.clone().map_err(|reason| {
                                        ManagerError::StartFailed {
                                            name: name.clone(),
                                            reason,
                                        }
                                    }));
                                }
                            });
                        }
                        Err(err) => {
                            let reason = format!("respawn failed: {err}");
                            state.on_failure(&name, reason.clone(), true, &myself);
                            for reply in waiting {
                                let _ = reply.send(Err(ManagerError::Spawn {
                                    name: name.clone(),
                                    reason: reason.clone(),
                                }));
                            }
                        }
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
