//! The console's own plugin: it subscribes to every hook, keeps the run's counts and fans the
//! events out to the live streams.
//!
//! It runs in its own plugin actor with [`OverflowPolicy::DropNewest`]: when it falls behind,
//! the bus drops events *for the console only* (counted in its `dropped` counter) and never
//! waits for it, so watching a run cannot slow the run down. The live streams are a
//! [`broadcast`] channel: a browser that reads too slowly misses updates (it is told how many)
//! and never holds the console plugin up either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dtf_plugin_core::event::{TaskId, TaskOutcome, WorkerId};
use dtf_plugin_core::{
    Event, EventKind, Hook, HookSet, Plugin, PluginContext, PluginError, PluginKind, PluginMetadata,
};
use serde::Serialize;
use tokio::sync::broadcast;

/// The name the console's plugin is registered under.
pub const CONSOLE_PLUGIN: &str = "dtf-console";

/// Failures kept for the run page.
const FAILURES_KEPT: usize = 50;
/// Bytes of a failure's details (its output tail) kept.
const TAIL_BYTES: usize = 2048;

/// What the live streams carry.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    /// A bus event, serialized once for every stream.
    Event { hook: Hook, json: Arc<str> },
    /// A plugin was changed through the console (enable, disable, restart, remove, config).
    Plugin { json: Arc<str> },
}

/// State shared by the console plugin and the HTTP handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) run: Mutex<RunState>,
    pub(crate) tx: broadcast::Sender<Notice>,
}

impl Shared {
    pub(crate) fn new(stream_capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(stream_capacity.max(16));
        Self {
            run: Mutex::new(RunState::new()),
            tx,
        }
    }

    pub(crate) fn snapshot(&self) -> RunSnapshot {
        self.run
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot()
    }

    /// Tells the live streams that a plugin was changed through the console.
    pub(crate) fn plugin_changed(&self, plugin: &str, action: &str) {
        let json = serde_json::json!({ "plugin": plugin, "action": action }).to_string();
        // No receiver is fine: nobody is watching.
        let _ = self.tx.send(Notice::Plugin { json: json.into() });
    }
}

/// The console's plugin.
pub(crate) struct ConsolePlugin {
    pub(crate) shared: Arc<Shared>,
}

impl Plugin for ConsolePlugin {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(CONSOLE_PLUGIN)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Monitoring)
            .hooks(HookSet::ALL)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        self.shared
            .run
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(event);
        // Serialize once, and only when someone is watching.
        if self.shared.tx.receiver_count() > 0 {
            let json = serde_json::to_string(event)?;
            let _ = self.shared.tx.send(Notice::Event {
                hook: event.hook(),
                json: json.into(),
            });
        }
        Ok(())
    }
}

/// Where a task is in its lifecycle, as far as the console has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TaskState {
    Queued,
    Assigned,
    Running,
    Passed,
    Failed,
    Skipped,
    Cancelled,
}

impl TaskState {
    const ALL: [TaskState; 7] = [
        Self::Queued,
        Self::Assigned,
        Self::Running,
        Self::Passed,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    fn is_done(self) -> bool {
        matches!(
            self,
            Self::Passed | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// One worker's row on the run page.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct WorkerRow {
    worker: String,
    state: &'static str,
    running: u64,
    passed: u64,
    failed: u64,
}

/// One failed task on the run page.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FailureRow {
    task: String,
    kind: String,
    message: String,
    /// The end of the failure's details (its output tail).
    tail: String,
    attempt: u32,
    retryable: bool,
    /// Milliseconds since the Unix epoch.
    time_ms: u64,
}

/// The run's counts, as the console plugin has seen them.
#[derive(Debug)]
pub(crate) struct RunState {
    started: Instant,
    run_id: Option<String>,
    finished: bool,
    events: u64,
    by_hook: BTreeMap<Hook, u64>,
    tasks: HashMap<TaskId, TaskState>,
    /// The worker each running task runs on (the one its `TaskStarted` named): its end
    /// frees that worker's count whatever the ending event names (a `TaskCancelled` names
    /// none, a `TaskFailed` may not).
    running_on: HashMap<TaskId, WorkerId>,
    by_state: BTreeMap<TaskState, u64>,
    workers: BTreeMap<WorkerId, WorkerRow>,
    failures: VecDeque<FailureRow>,
}

/// What `GET /api/run` returns.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunSnapshot {
    pub(crate) run_id: Option<String>,
    pub(crate) finished: bool,
    pub(crate) elapsed_ms: u64,
    pub(crate) eta_ms: Option<u64>,
    pub(crate) events_total: u64,
    pub(crate) events_by_hook: BTreeMap<Hook, u64>,
    pub(crate) tasks_total: u64,
    pub(crate) tasks_done: u64,
    pub(crate) tasks_by_state: BTreeMap<TaskState, u64>,
    pub(crate) workers: Vec<WorkerRow>,
    pub(crate) failures: Vec<FailureRow>,
    /// Events the console's own queue dropped (it never slows the bus): the counts above
    /// miss them. Filled in by the handler from the plugin's stats.
    pub(crate) console_dropped: u64,
}

impl RunState {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            run_id: None,
            finished: false,
            events: 0,
            by_hook: BTreeMap::new(),
            tasks: HashMap::new(),
            running_on: HashMap::new(),
            by_state: BTreeMap::new(),
            workers: BTreeMap::new(),
            failures: VecDeque::new(),
        }
    }

    fn set_task(&mut self, task: &TaskId, state: TaskState) {
        let old = self.tasks.insert(task.clone(), state);
        if let Some(n) = old.and_then(|old| self.by_state.get_mut(&old)) {
            *n = n.saturating_sub(1);
        }
        *self.by_state.entry(state).or_default() += 1;
    }

    /// The task is no longer running (it ended, or starts again elsewhere): its worker's
    /// running count goes down.
    fn stop_running(&mut self, task: &TaskId) {
        if let Some(worker) = self.running_on.remove(task) {
            let w = self.worker(&worker);
            w.running = w.running.saturating_sub(1);
        }
    }

    fn worker(&mut self, worker: &WorkerId) -> &mut WorkerRow {
        self.workers
            .entry(worker.clone())
            .or_insert_with(|| WorkerRow {
                worker: worker.to_string(),
                state: "registered",
                ..WorkerRow::default()
            })
    }

    pub(crate) fn record(&mut self, event: &Event) {
        self.events += 1;
        *self.by_hook.entry(event.hook()).or_default() += 1;
        match &event.kind {
            EventKind::CoordinatorStartup(s) => {
                self.run_id = Some(s.run_id.clone());
                self.started = Instant::now();
            }
            EventKind::CoordinatorShutdown(_) => self.finished = true,
            EventKind::TaskCreated(t) => self.set_task(&t.task, TaskState::Queued),
            EventKind::TaskAssigned(t) => self.set_task(&t.task, TaskState::Assigned),
            EventKind::TaskStarted(t) => {
                self.stop_running(&t.task);
                self.set_task(&t.task, TaskState::Running);
                self.worker(&t.worker).running += 1;
                self.running_on.insert(t.task.clone(), t.worker.clone());
            }
            EventKind::TaskCompleted(t) => {
                self.stop_running(&t.task);
                let state = match t.outcome {
                    TaskOutcome::Passed => TaskState::Passed,
                    TaskOutcome::Skipped => TaskState::Skipped,
                    _ => TaskState::Failed,
                };
                self.set_task(&t.task, state);
                let w = self.worker(&t.worker);
                if state == TaskState::Failed {
                    w.failed += 1;
                } else {
                    w.passed += 1;
                }
            }
            EventKind::TaskFailed(t) => {
                self.stop_running(&t.task);
                self.set_task(&t.task, TaskState::Failed);
                if let Some(worker) = &t.worker {
                    self.worker(worker).failed += 1;
                }
                if self.failures.len() == FAILURES_KEPT {
                    self.failures.pop_front();
                }
                self.failures.push_back(FailureRow {
                    task: t.task.to_string(),
                    kind: t.error.kind.clone(),
                    message: t.error.message.clone(),
                    tail: tail(&t.error.details, TAIL_BYTES),
                    attempt: t.attempt,
                    retryable: t.retryable,
                    time_ms: epoch_ms(event.meta.time),
                });
            }
            EventKind::TaskCancelled(t) => {
                self.stop_running(&t.task);
                self.set_task(&t.task, TaskState::Cancelled);
            }
            EventKind::WorkerRegistered(w) => self.worker(&w.worker).state = "registered",
            EventKind::WorkerDisconnected(w) => self.worker(&w.worker).state = "disconnected",
            EventKind::WorkerFailed(w) => self.worker(&w.worker).state = "failed",
            EventKind::WorkerRecovered(w) => self.worker(&w.worker).state = "recovered",
            _ => {}
        }
    }

    fn snapshot(&self) -> RunSnapshot {
        let elapsed = self.started.elapsed();
        let total = self.tasks.len() as u64;
        let done: u64 = self
            .by_state
            .iter()
            .filter(|(s, _)| s.is_done())
            .map(|(_, n)| n)
            .sum();
        // A linear estimate: the time the done tasks took, scaled to the rest.
        let eta_ms = (done > 0 && done < total && !self.finished).then(|| {
            let per_task = elapsed.as_millis() as f64 / done as f64;
            (per_task * (total - done) as f64) as u64
        });
        let mut by_state = BTreeMap::new();
        for s in TaskState::ALL {
            by_state.insert(s, self.by_state.get(&s).copied().unwrap_or(0));
        }
        RunSnapshot {
            run_id: self.run_id.clone(),
            finished: self.finished,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            eta_ms,
            events_total: self.events,
            events_by_hook: self.by_hook.clone(),
            tasks_total: total,
            tasks_done: done,
            tasks_by_state: by_state,
            workers: self.workers.values().take(1000).cloned().collect(),
            failures: self.failures.iter().rev().cloned().collect(),
            console_dropped: 0,
        }
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Milliseconds since the Unix epoch.
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtf_plugin_core::event::TaskError;
    use std::time::Duration;

    fn ev(kind: EventKind, seq: u64) -> Event {
        Event {
            meta: dtf_plugin_core::EventMeta {
                seq,
                time: SystemTime::now(),
                source: Arc::from("test"),
            },
            kind,
        }
    }

    #[test]
    fn counts_tasks_by_their_latest_state() {
        let mut run = RunState::new();
        run.record(&ev(EventKind::task_created("a", "a"), 1));
        run.record(&ev(EventKind::task_created("b", "b"), 2));
        run.record(&ev(EventKind::task_started("a", "w1", 1), 3));
        run.record(&ev(
            EventKind::task_completed("a", "w1", TaskOutcome::Passed, Duration::from_millis(5)),
            4,
        ));
        let err = TaskError::builder()
            .kind("exit")
            .message("exit code 1")
            .details("x".repeat(5000))
            .build();
        run.record(&ev(EventKind::task_failed("b", err, false), 5));
        let s = run.snapshot();
        assert_eq!(s.tasks_total, 2);
        assert_eq!(s.tasks_done, 2);
        assert_eq!(s.tasks_by_state[&TaskState::Passed], 1);
        assert_eq!(s.tasks_by_state[&TaskState::Failed], 1);
        assert_eq!(s.tasks_by_state[&TaskState::Queued], 0);
        assert_eq!(s.events_total, 5);
        assert_eq!(s.events_by_hook[&Hook::TaskCreated], 2);
        assert_eq!(s.workers.len(), 1);
        assert_eq!(s.workers[0].passed, 1);
        assert_eq!(s.workers[0].running, 0);
        assert_eq!(s.failures.len(), 1);
        assert!(s.failures[0].tail.len() <= TAIL_BYTES + '…'.len_utf8());
    }

    /// A running task's end frees its worker's count whatever the ending event names: a
    /// cancellation names no worker, a failure may not, and a task started again elsewhere
    /// (its worker lost) leaves the old one (before, these counts stayed up for good).
    #[test]
    fn a_running_task_frees_its_worker_however_it_ends() {
        let mut run = RunState::new();
        let err = || TaskError::builder().kind("lost").message("gone").build();
        let events = [
            EventKind::task_started("a", "w1", 1),
            EventKind::task_started("b", "w1", 1),
            EventKind::task_started("c", "w1", 1),
            EventKind::task_cancelled("a", "the run ended"),
            EventKind::task_failed("b", err(), true), // no worker named
            EventKind::task_started("c", "w2", 2),    // w1 was lost: c runs again on w2
        ];
        for (i, kind) in events.into_iter().enumerate() {
            run.record(&ev(kind, i as u64 + 1));
        }
        let running = |run: &RunState| -> Vec<(String, u64)> {
            run.snapshot()
                .workers
                .iter()
                .map(|w| (w.worker.clone(), w.running))
                .collect()
        };
        assert_eq!(running(&run), [("w1".to_owned(), 0), ("w2".to_owned(), 1)]);
        run.record(&ev(
            EventKind::task_completed("c", "w2", TaskOutcome::Passed, Duration::ZERO),
            7,
        ));
        assert_eq!(running(&run), [("w1".to_owned(), 0), ("w2".to_owned(), 0)]);
    }

    #[test]
    fn tail_cuts_at_a_character_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("ééé", 3), "…é");
    }
}
