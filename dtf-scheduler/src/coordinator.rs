//! [`SchedulingCoordinator`]: the engine as a plugin on the bus.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dtf_plugin_core::Handover;
use dtf_plugin_core::event::{TaskId, WorkerId};
use dtf_plugin_core::prelude::*;

use crate::config::SchedulerConfig;
use crate::engine::Engine;
use crate::error::SchedulerError;
use crate::framework::{Round, TaskSpec};
use crate::registry::Registry;

/// Runs an [`Engine`] as a plugin on the bus: it keeps the queue and the workers' load from
/// the events it hears and publishes its decisions.
///
/// It listens to `TaskCreated`, `TaskCompleted`, `TaskFailed`, `TaskCancelled`,
/// `WorkerRegistered`, `WorkerDisconnected`, `WorkerFailed` and `WorkerRecovered` (and to its
/// own [`WAKE_EVENT`](Self::WAKE_EVENT), a custom event; other custom events are ignored), and
/// publishes, following the event lifecycle:
///
/// - `TaskAssigned` for each placement (attempt 1, then + 1 for each re-placement);
/// - `TaskFailed` with error kind `Unschedulable` and `retryable: false` (and a warning in
///   the log) for a task no registered worker can run;
/// - `RecoveryStarted` then `RecoveryCompleted` when a failed worker's tasks are re-queued
///   (on `WorkerFailed`), followed by their new `TaskAssigned`. `WorkerDisconnected` only
///   takes the worker out of service: its tasks wait for it (it may reconnect) until
///   `WorkerFailed` or `WorkerRecovered`.
///
/// A retryable `TaskFailed` queues the task again; a non-retryable one, a `TaskCompleted` or
/// a `TaskCancelled` forgets it. Events of remote publishers
/// ([`EventMeta::remote_publisher`](dtf_plugin_core::EventMeta::remote_publisher)) are
/// ignored: their tasks and workers are a harness's on another machine, which runs them
/// itself, so none of its tasks is ever placed on the coordinator's workers and none of its
/// workers gets one (the first such task of each publisher is logged once). Its configuration
/// is a [`SchedulerConfig`]; an unknown scheduler name or a bad value fails `on_start`. Time
/// is taken from the events' timestamps.
///
/// **Its state survives a restart.** An instance made by [`spec`](Self::spec)'s factory hands
/// its queue, workers and clock to the next instance of the same factory when it is dropped
/// (after a panic, or a restart from the web console), which continues with the next event:
/// the run goes on. Started empty, it would have forgotten every task, ignored their later
/// events as unknown and placed nothing again, and the run would have waited forever. Its
/// settings cannot change during a run ([`Plugin::on_reconfigure`] refuses a change, naming
/// why): the queues were ordered by the old ones. While the plugin is disabled it hears
/// nothing, so a scheduler disabled mid-run and enabled again has missed what happened
/// meanwhile.
pub struct SchedulingCoordinator {
    registry: Arc<Registry>,
    /// Where the state goes when this instance is dropped, for the factory's next instance.
    kept: Handover<Kept>,
    /// The settings `engine` was built with.
    config: Option<SchedulerConfig>,
    engine: Option<Engine>,
    epoch: Option<SystemTime>,
    now: Duration,
    /// When the wake-up asked for by a held retry fires (engine time), if one is pending.
    wake_at: Option<Duration>,
    /// Remote publishers whose tasks were logged as not scheduled (once each).
    remote_told: HashSet<String>,
}

/// What one instance hands to the next ([`SchedulingCoordinator`]'s restart).
struct Kept {
    config: SchedulerConfig,
    engine: Engine,
    epoch: Option<SystemTime>,
    now: Duration,
    wake_at: Option<Duration>,
    remote_told: HashSet<String>,
}

impl Drop for SchedulingCoordinator {
    fn drop(&mut self) {
        let (Some(config), Some(engine)) = (self.config.take(), self.engine.take()) else {
            return;
        };
        let kept = Kept {
            config,
            engine,
            epoch: self.epoch,
            now: self.now,
            wake_at: self.wake_at,
            remote_told: std::mem::take(&mut self.remote_told),
        };
        self.kept.put(kept);
    }
}

impl std::fmt::Debug for SchedulingCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulingCoordinator")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Default for SchedulingCoordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl SchedulingCoordinator {
    /// The plugin's name.
    pub const NAME: &'static str = "scheduler";

    /// A coordinator choosing among the built-in strategies.
    pub fn new() -> Self {
        Self::with_registry(Arc::new(Registry::new()))
    }

    /// A coordinator choosing among the strategies of `registry`.
    pub fn with_registry(registry: Arc<Registry>) -> Self {
        Self {
            registry,
            kept: Handover::new(),
            config: None,
            engine: None,
            epoch: None,
            now: Duration::ZERO,
            wake_at: None,
            remote_told: HashSet::new(),
        }
    }

    /// The custom event the coordinator publishes to itself when a retry held for another
    /// worker ([`SchedulerConfig::retry_elsewhere_secs`]) stops waiting, so that a round runs
    /// then even if nothing else happens on the bus.
    pub const WAKE_EVENT: &'static str = "dtf.scheduler.wake";

    /// A plugin spec for a coordinator running the strategy `config` names, checked now so a
    /// bad name or value is an error here rather than a plugin that cannot start. It uses
    /// [`RestartPolicy::Transient`]: a coordinator that fails to start is not retried.
    ///
    /// # Errors
    ///
    /// What [`Registry::build`] returns for `config`.
    pub fn spec(
        registry: Arc<Registry>,
        config: &SchedulerConfig,
    ) -> Result<PluginSpec, SchedulerError> {
        registry.build(config)?;
        Ok(PluginSpec::new(Self::factory(registry))
            .config(config)
            .restart_policy(RestartPolicy::Transient))
    }

    /// A factory whose instances hand their state to the next one (one [`Handover`] per
    /// factory: make one per spec).
    pub(crate) fn factory(registry: Arc<Registry>) -> impl Fn() -> Self + Send + Sync + 'static {
        let kept = Handover::new();
        move || {
            let mut c = Self::with_registry(Arc::clone(&registry));
            c.kept = kept.clone();
            c
        }
    }

    /// Moves the clock to `time` (relative to the first event seen; never backwards).
    fn tick(&mut self, time: SystemTime) -> Duration {
        let epoch = *self.epoch.get_or_insert(time);
        self.now = self.now.max(time.duration_since(epoch).unwrap_or_default());
        self.now
    }
}

/// Takes a lost worker out of service and re-queues its tasks, announcing the recovery.
fn recover(
    ctx: &PluginContext,
    engine: &mut Engine,
    worker: &WorkerId,
    seq: u64,
    now: Duration,
) -> Result<(), SchedulerError> {
    let tasks = engine.lose_worker(worker, now)?;
    if tasks.is_empty() {
        return Ok(());
    }
    // The event's sequence number makes the id unique on this bus, across restarts too.
    let id = format!("{}-{worker}-{seq}", ctx.name());
    let n = tasks.len() as u32;
    tracing::info!(%worker, tasks = n, "re-queueing the tasks of a lost worker");
    publish(
        ctx,
        EventKind::recovery_started(id.clone(), Some(worker.clone()), tasks),
    );
    publish(ctx, EventKind::recovery_completed(id, n));
    Ok(())
}

/// Publishes from the plugin; after shutdown the bus is closed and there is no one to tell.
fn publish(ctx: &PluginContext, kind: EventKind) {
    if let Err(e) = ctx.publish(kind) {
        tracing::debug!(error = %e, "bus closed, decision not published");
    }
}

fn publish_round(ctx: &PluginContext, round: Round) {
    for spec in round.unschedulable {
        let error = SchedulerError::unschedulable(&spec.id, &spec.requirements);
        tracing::warn!(task = %spec.id, owner = %spec.owner, "{error}");
        let error = TaskError::builder()
            .kind("Unschedulable")
            .message(error.to_string())
            .build();
        publish(ctx, EventKind::task_failed(spec.id, error, false));
    }
    for p in round.placements {
        publish(ctx, EventKind::task_assigned(p.task, p.worker, p.attempt));
    }
}

impl Plugin for SchedulingCoordinator {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Scheduler)
            .hooks(HookSet::of(&[
                Hook::TaskCreated,
                Hook::TaskCompleted,
                Hook::TaskFailed,
                Hook::TaskCancelled,
                Hook::WorkerRegistered,
                Hook::WorkerDisconnected,
                Hook::WorkerFailed,
                Hook::WorkerRecovered,
                // Only its own wake-up event (`WAKE_EVENT`); other custom events are ignored.
                Hook::Custom,
            ]))
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        let config: SchedulerConfig = ctx.config()?;
        if let Some(k) = self.kept.take().filter(|k| k.config == config) {
            tracing::info!(
                scheduler = k.engine.scheduler_name(),
                waiting = k.engine.waiting(),
                running = k.engine.running(),
                "scheduling coordinator restarted; it goes on with its queue and workers"
            );
            (self.engine, self.epoch, self.now) = (Some(k.engine), k.epoch, k.now);
            self.remote_told = k.remote_told;
            self.config = Some(config);
            if k.wake_at.is_some() {
                // The wake-up asked for may have come while no instance heard it: a round
                // now re-arms what is still held (`wake_at` stays clear until then).
                publish(
                    ctx,
                    EventKind::custom(Self::WAKE_EVENT, serde_json::Value::Null),
                );
            }
            return Ok(());
        }
        let scheduler = self.registry.build(&config)?;
        tracing::info!(
            scheduler = scheduler.name(),
            "scheduling coordinator started"
        );
        self.engine = Some(Engine::new(scheduler).retry_elsewhere(config.retry_elsewhere()?));
        self.config = Some(config);
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        let config: SchedulerConfig = ctx.config()?;
        if self.config.as_ref() == Some(&config) {
            return Ok(Reconfigured::Applied);
        }
        Err(
            "the scheduler's settings cannot change during a run (its queues are ordered by \
             the current ones): set them for the next run (`[plugins.scheduler.settings]` or \
             --scheduler)"
                .into(),
        )
    }

    async fn on_event(
        &mut self,
        ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        let wake = matches!(&event.kind, EventKind::Custom(c) if c.name == Self::WAKE_EVENT);
        if wake {
            self.wake_at = None;
        } else if &*event.meta.source == ctx.name() {
            // Our own `TaskFailed` (unschedulable) comes back to us: it is already handled.
            return Ok(());
        } else if matches!(event.kind, EventKind::Custom(_)) {
            return Ok(());
        } else if let Some(publisher) = event.meta.remote_publisher() {
            // A harness elsewhere runs its own tests on its own machines.
            if matches!(event.kind, EventKind::TaskCreated(_))
                && self.remote_told.insert(publisher.to_owned())
            {
                tracing::info!(
                    publisher,
                    "tasks created by a remote publisher are not scheduled: its harness runs them"
                );
            }
            return Ok(());
        }
        let now = self.tick(event.meta.time);
        let seq = event.meta.seq;
        let Some(engine) = self.engine.as_mut() else {
            return Err("the scheduling coordinator received an event before on_start".into());
        };
        // The result of an attempt that was taken back (its worker taken for lost, then back)
        // after a later attempt was placed: that one's result is still to come (or, if it was
        // taken back too, a further attempt's). Applied, it would end the task and free the
        // later attempt's slot while it still runs there, or leave the task finished here
        // while the run tracker, which applies the same rule, waits for it.
        let stale = match &event.kind {
            EventKind::TaskCompleted(t) => stale_attempt(engine, &t.task, t.attempt),
            EventKind::TaskFailed(f) if f.worker.is_some() => {
                stale_attempt(engine, &f.task, f.attempt)
            }
            _ => None,
        };
        if let Some(latest) = stale {
            tracing::warn!(
                seq,
                latest,
                "ignoring the result of an earlier attempt of a task whose attempt {latest} was placed"
            );
            return Ok(());
        }
        let result = match &event.kind {
            EventKind::TaskCreated(t) => engine.submit(TaskSpec::from(&**t), now),
            EventKind::TaskCompleted(t) => engine.finish(&t.task, now).map(drop),
            EventKind::TaskFailed(f) if f.retryable => engine.retry(&f.task, now),
            EventKind::TaskFailed(f) => engine.finish(&f.task, now).map(drop),
            EventKind::TaskCancelled(t) => engine.finish(&t.task, now).map(drop),
            EventKind::WorkerRegistered(w) => {
                engine.add_worker(w.worker.clone(), w.capabilities.clone());
                Ok(())
            }
            EventKind::WorkerRecovered(w) => engine.recover_worker(&w.worker),
            EventKind::WorkerFailed(w) => recover(ctx, engine, &w.worker, seq, now),
            // A disconnected worker may come back (a remote one within its reconnect grace):
            // nothing new goes to it, its tasks wait; `WorkerFailed` re-queues them.
            EventKind::WorkerDisconnected(w) => engine.suspend_worker(&w.worker),
            _ => Ok(()),
        };
        if let Err(e) = result {
            // A publisher's mistake (an unknown id, a duplicate) must not stop scheduling.
            tracing::warn!(error = %e, seq, "ignoring an event");
        }
        let round = engine.schedule(now);
        publish_round(ctx, round);
        // A retry held for another worker must get a round when its wait ends, even if no
        // other event comes: wake ourselves then (one pending wake-up at a time, the earliest).
        if let Some(until) = engine.hold_until() {
            if self.wake_at.is_none_or(|w| until < w) {
                self.wake_at = Some(until);
                let bus = ctx.bus().clone();
                let delay = until.saturating_sub(now);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // After shutdown there is no one to wake.
                    let _ = bus
                        .publish(EventKind::custom(Self::WAKE_EVENT, serde_json::Value::Null))
                        .await;
                });
            }
        }
        Ok(())
    }
}

/// The latest attempt of `task` placed, when it is a later one than `attempt`.
fn stale_attempt(engine: &Engine, task: &TaskId, attempt: u32) -> Option<u32> {
    engine.attempts(task).filter(|&latest| attempt < latest)
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use dtf_plugin_core::EventMeta;
    use dtf_plugin_core::event::TaskCompleted;

    use super::*;

    fn event(seq: u64, secs: u64, kind: EventKind) -> Event {
        Event {
            meta: EventMeta {
                seq,
                time: UNIX_EPOCH + Duration::from_secs(1_000 + secs),
                source: "harness".into(),
            },
            kind,
        }
    }

    #[tokio::test]
    async fn an_unknown_scheduler_fails_on_start_naming_the_available_ones() {
        let config = serde_json::json!({ "scheduler": "quickest" });
        let mut ctx = PluginContext::detached(SchedulingCoordinator::NAME, config);
        let mut c = SchedulingCoordinator::new();
        let err = c.on_start(&mut ctx).await.err().map(|e| e.to_string());
        assert!(
            err.unwrap_or_default()
                .contains("available: fairness, fifo")
        );
        let early = c
            .on_event(&mut ctx, &event(1, 0, EventKind::worker_recovered("w")))
            .await;
        assert!(
            early.is_err(),
            "an event before a successful start is refused"
        );
    }

    #[tokio::test]
    async fn keeps_the_queue_and_load_from_events_and_ignores_its_own() {
        let mut ctx = PluginContext::detached(SchedulingCoordinator::NAME, serde_json::Value::Null);
        let mut c = SchedulingCoordinator::new();
        c.on_start(&mut ctx).await.unwrap();
        let events = [
            EventKind::worker_registered("w", Capabilities::builder().slots(1).build()),
            EventKind::task_created("t1", "a"),
            EventKind::task_created("t2", "b"),
            EventKind::task_completed("t1", "w", TaskOutcome::Passed, Duration::from_secs(3)),
            // Unknown ids are logged and ignored, not fatal.
            EventKind::task_cancelled("nope", "x"),
        ];
        for (i, kind) in events.into_iter().enumerate() {
            let e = event(i as u64 + 1, i as u64, kind);
            c.on_event(&mut ctx, &e).await.unwrap();
        }
        let engine = c.engine.as_ref().unwrap();
        assert_eq!((engine.running(), engine.waiting()), (1, 0));
        assert_eq!(c.now, Duration::from_secs(4));
        // Its own events (source = its name) change nothing.
        let mut own = event(9, 9, EventKind::task_cancelled("t2", "x"));
        own.meta.source = SchedulingCoordinator::NAME.into();
        c.on_event(&mut ctx, &own).await.unwrap();
        assert_eq!(c.engine.as_ref().unwrap().running(), 1);
    }

    /// `t1`'s completion by `worker`, attempt `attempt`.
    fn completed(worker: &str, attempt: u32) -> EventKind {
        EventKind::TaskCompleted(Box::new(
            TaskCompleted::builder()
                .task("t1")
                .worker(worker)
                .attempt(attempt)
                .outcome(TaskOutcome::Passed)
                .duration(Duration::from_secs(1))
                .build(),
        ))
    }

    /// A started coordinator that handled `events`, in order: `t1` placed on `w1`, `w1` lost,
    /// and whatever follows.
    async fn fed(events: Vec<EventKind>) -> (SchedulingCoordinator, PluginContext) {
        let mut ctx = PluginContext::detached(SchedulingCoordinator::NAME, serde_json::Value::Null);
        let mut c = SchedulingCoordinator::new();
        c.on_start(&mut ctx).await.unwrap();
        let slots = Capabilities::builder().slots(1).build();
        let start = [
            EventKind::worker_registered("w1", slots),
            EventKind::task_created("t1", "a"),
            EventKind::worker_failed("w1", "no heartbeat"),
        ];
        for (i, kind) in start.into_iter().chain(events).enumerate() {
            c.on_event(&mut ctx, &event(i as u64 + 1, i as u64, kind))
                .await
                .unwrap();
        }
        (c, ctx)
    }

    /// The result of attempt 1, whose worker was taken for lost, arrives while attempt 2 runs
    /// elsewhere: it is ignored. Applied, it ended the task and freed attempt 2's slot while
    /// attempt 2 still ran there, so that worker got one task more than its slots (found by a
    /// review).
    #[tokio::test]
    async fn the_result_of_an_attempt_taken_back_is_ignored_while_a_later_one_runs() {
        let w2 = EventKind::worker_registered("w2", Capabilities::builder().slots(1).build());
        let running =
            |c: &SchedulingCoordinator| match c.engine.as_ref().unwrap().task(&"t1".into()) {
                Some(crate::engine::TaskStatus::Running { worker, attempt }) => {
                    Some((worker.to_string(), attempt))
                }
                _ => None,
            };
        let (c, _) = fed(vec![w2.clone()]).await;
        assert_eq!(running(&c), Some(("w2".to_owned(), 2)));
        let (c, _) = fed(vec![w2.clone(), completed("w1", 1)]).await;
        assert_eq!(
            running(&c),
            Some(("w2".to_owned(), 2)),
            "attempt 2 still runs"
        );
        assert_eq!(c.engine.as_ref().unwrap().running(), 1);
        // Attempt 2's own result ends it.
        let (c, _) = fed(vec![w2, completed("w1", 1), completed("w2", 2)]).await;
        assert_eq!(running(&c), None);
        assert_eq!(c.engine.as_ref().unwrap().running(), 0);
    }

    /// The same late result while attempt 2 was taken back too and the task waits for
    /// attempt 3: still ignored, as the run tracker ignores it (it goes by the latest attempt
    /// assigned). Applied, it ended the task here while the tracker waited for it: a run that
    /// never ended (found by a review).
    #[tokio::test]
    async fn a_late_result_is_ignored_while_a_later_attempt_waits_to_be_placed() {
        let (c, _) = fed(vec![
            EventKind::worker_registered("w2", Capabilities::builder().slots(1).build()),
            EventKind::worker_failed("w2", "no heartbeat"),
            completed("w1", 1),
        ])
        .await;
        let engine = c.engine.as_ref().unwrap();
        assert_eq!(engine.attempts(&"t1".into()), Some(2));
        assert_eq!(engine.waiting(), 1, "t1 waits for its third attempt");
    }

    /// A remote publisher's tasks and workers are its harness's: a task it creates is never
    /// placed (it held a slot of the coordinator's worker until the harness reported the
    /// test's end, forever if the harness died), and a worker it registers gets no task.
    #[tokio::test]
    async fn a_remote_publishers_tasks_and_workers_are_not_scheduled() {
        let mut ctx = PluginContext::detached(SchedulingCoordinator::NAME, serde_json::Value::Null);
        let mut c = SchedulingCoordinator::new();
        c.on_start(&mut ctx).await.unwrap();
        let remote = |seq: u64, kind: EventKind| {
            let mut e = event(seq, seq, kind);
            e.meta.source = "remote:harness-7".into();
            e
        };
        let slots = |n| Capabilities::builder().slots(n).build();
        let events = [
            event(1, 1, EventKind::worker_registered("w", slots(1))),
            remote(2, EventKind::worker_registered("device-3", slots(4))),
            remote(3, EventKind::task_created("harness/t1", "a")),
            remote(4, EventKind::task_created("harness/t2", "a")),
            event(5, 5, EventKind::task_created("t1", "a")),
            event(6, 6, EventKind::task_created("t2", "a")),
        ];
        for e in &events {
            c.on_event(&mut ctx, e).await.unwrap();
        }
        let engine = c.engine.as_ref().unwrap();
        assert_eq!(engine.workers().count(), 1, "only the coordinator's worker");
        assert!(engine.task(&TaskId::from("harness/t1")).is_none());
        // The coordinator's own tasks: one runs on its one slot, the other waits for it.
        assert_eq!((engine.running(), engine.waiting()), (1, 1));
        assert!(engine.task(&TaskId::from("t1")).is_some());
        // The harness's result for its own task changes nothing here either.
        let done = EventKind::task_completed(
            "harness/t1",
            "device-3",
            TaskOutcome::Passed,
            Duration::from_secs(1),
        );
        c.on_event(&mut ctx, &remote(7, done)).await.unwrap();
        let engine = c.engine.as_ref().unwrap();
        assert_eq!((engine.running(), engine.waiting()), (1, 1));
        assert_eq!(c.remote_told.len(), 1, "told once per publisher");
    }
}
