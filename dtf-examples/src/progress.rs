//! The coordinator's own small plugins: [`RunTracker`] (tells the coordinator when tasks
//! end) and [`ProgressDisplay`] (a progress bar on a terminal, plain periodic lines
//! elsewhere).

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal as _, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use dtf_plugin_core::event::TaskId;
use dtf_plugin_core::prelude::*;
use tokio::sync::mpsc;

/// Sends the id of each task that reaches a terminal event (`TaskCompleted`,
/// `TaskCancelled`, or a `TaskFailed` that is not retryable) to the coordinator, which
/// waits for all of them, with whether it passed (or was skipped).
///
/// A remote publisher's task events are its own harness's tests, not this run's, whatever
/// their ids; and the result of an attempt taken back while a later one was assigned (its
/// worker taken for lost, then back) is not the task's end: the later attempt's is.
#[derive(Debug, Clone)]
pub struct RunTracker {
    done: mpsc::UnboundedSender<(TaskId, bool)>,
    /// The latest attempt assigned, by task.
    assigned: HashMap<TaskId, u32>,
}

impl RunTracker {
    /// The plugin's name.
    pub const NAME: &'static str = "run-tracker";

    /// A tracker reporting to `done`.
    pub fn new(done: mpsc::UnboundedSender<(TaskId, bool)>) -> Self {
        Self {
            done,
            assigned: HashMap::new(),
        }
    }

    /// Whether a result of `attempt` of `task` comes from an attempt a later one replaced.
    fn superseded(&self, task: &TaskId, attempt: u32) -> bool {
        self.assigned
            .get(task)
            .is_some_and(|&latest| attempt < latest)
    }
}

impl Plugin for RunTracker {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Monitoring)
            .hooks(HookSet::of(&[
                Hook::TaskAssigned,
                Hook::TaskCompleted,
                Hook::TaskFailed,
                Hook::TaskCancelled,
            ]))
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        if event.meta.remote_publisher().is_some() {
            return Ok(());
        }
        let done = match &event.kind {
            EventKind::TaskAssigned(a) => {
                let latest = self.assigned.entry(a.task.clone()).or_default();
                *latest = (*latest).max(a.attempt);
                None
            }
            EventKind::TaskCompleted(c) if self.superseded(&c.task, c.attempt) => None,
            EventKind::TaskCompleted(c) => Some((c.task.clone(), c.outcome != TaskOutcome::Failed)),
            EventKind::TaskCancelled(c) => Some((c.task.clone(), false)),
            EventKind::TaskFailed(f)
                if f.worker.is_some() && self.superseded(&f.task, f.attempt) =>
            {
                None
            }
            EventKind::TaskFailed(f) if !f.retryable => Some((f.task.clone(), false)),
            _ => None,
        };
        if let Some(task) = done {
            // The coordinator stops listening only once the run is over.
            let _ = self.done.send(task);
        }
        Ok(())
    }
}

/// How often [`ProgressDisplay`] prints a plain line when stderr is not a terminal.
pub const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

/// The live progress of a run, on stderr.
///
/// On a terminal: an `indicatif` bar with tasks done out of created, the rate and the ETA, the
/// failed and retried counts, and under it one line per busy worker (its task and for how
/// long), redrawn as events arrive. Elsewhere (a CI log, a file): a plain line, the same
/// counts, at most every [`PLAIN_INTERVAL`] and once at the end of the run, so a log shows
/// the run is alive without a line per event. Task and worker names are neutralised for CI
/// runners. The coordinator adds it unless `--progress never`.
pub struct ProgressDisplay {
    mode: Mode,
    state: State,
}

/// What the display counts, whatever it draws.
#[derive(Debug, Default)]
struct State {
    total: u64,
    done: u64,
    failed: u64,
    retried: u64,
    /// Busy workers: the task each runs, since when.
    running: BTreeMap<String, (String, Instant)>,
    started: Option<Instant>,
}

enum Mode {
    Bar {
        multi: MultiProgress,
        main: ProgressBar,
        workers: BTreeMap<String, ProgressBar>,
    },
    Plain {
        out: Box<dyn Write + Send>,
        every: Duration,
        last: Option<Instant>,
    },
}

impl std::fmt::Debug for ProgressDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressDisplay")
            .field("done", &self.state.done)
            .finish_non_exhaustive()
    }
}

impl Default for ProgressDisplay {
    /// A bar when stderr is a terminal, else plain lines on stderr every [`PLAIN_INTERVAL`].
    fn default() -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar(ProgressDrawTarget::stderr())
        } else {
            Self::plain(Box::new(std::io::stderr()), PLAIN_INTERVAL)
        }
    }
}

impl ProgressDisplay {
    /// The plugin's name.
    pub const NAME: &'static str = "progress";

    /// A display drawing bars to `target` (a terminal).
    pub fn bar(target: ProgressDrawTarget) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let main = multi.add(ProgressBar::new(0));
        main.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} tasks  {rate}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
        );
        main.enable_steady_tick(Duration::from_millis(200));
        Self {
            mode: Mode::Bar {
                multi,
                main,
                workers: BTreeMap::new(),
            },
            state: State::default(),
        }
    }

    /// A display writing a plain line to `out` at most every `every`, and at the end.
    pub fn plain(out: Box<dyn Write + Send>, every: Duration) -> Self {
        Self {
            mode: Mode::Plain {
                out,
                every,
                last: None,
            },
            state: State::default(),
        }
    }

    /// The plain status line: counts, rate, elapsed time, and the busy workers' tasks.
    pub fn line(&self) -> String {
        let s = &self.state;
        let elapsed = s.started.map_or(Duration::ZERO, |t| t.elapsed());
        let mut line = format!(
            "[dtf] {}/{} done  {} failed  {} running  {} retried  {} elapsed",
            s.done,
            s.total,
            s.failed,
            s.running.len(),
            s.retried,
            crate::output::duration(elapsed)
        );
        if !s.running.is_empty() {
            line.push_str(" |");
            for (worker, (task, _)) in &s.running {
                line.push_str(&format!(" {worker}: {task}"));
            }
        }
        line
    }

    fn counts(&self) -> String {
        format!(
            "{} failed  {} retried",
            self.state.failed, self.state.retried
        )
    }

    /// Brings the display up to date with the state (`end`: the run is over).
    fn draw(&mut self, end: bool) -> std::io::Result<()> {
        let line = self.line();
        let counts = self.counts();
        let state = &self.state;
        match &mut self.mode {
            Mode::Bar {
                multi,
                main,
                workers,
            } => {
                main.set_length(state.total);
                main.set_position(state.done);
                main.set_message(counts);
                // One line per busy worker, in worker order, under the bar.
                workers.retain(|w, bar| {
                    let busy = state.running.contains_key(w);
                    if !busy {
                        bar.finish_and_clear();
                        multi.remove(bar);
                    }
                    busy
                });
                for (worker, (task, since)) in &state.running {
                    let bar = workers.entry(worker.clone()).or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("  {spinner} {prefix}: {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.set_prefix(worker.clone());
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bar
                    });
                    bar.set_message(format!(
                        "{task} ({})",
                        crate::output::duration(since.elapsed())
                    ));
                }
                if end {
                    for bar in workers.values() {
                        bar.finish_and_clear();
                    }
                    main.finish();
                }
                Ok(())
            }
            Mode::Plain { out, every, last } => {
                let now = Instant::now();
                let due = last.is_none_or(|t| now.duration_since(t) >= *every);
                if (end && state.total > 0) || (due && last.is_some()) {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                if due {
                    *last = Some(now);
                }
                Ok(())
            }
        }
    }
}

impl Plugin for ProgressDisplay {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Monitoring)
            .hooks(
                HookSet::TASK
                    .union(HookSet::WORKER)
                    .union(HookSet::COORDINATOR),
            )
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        let s = &mut self.state;
        s.started.get_or_insert_with(Instant::now);
        let name = |text: &str| dtf_plugins_ci::neutralize(text).into_owned();
        match &event.kind {
            EventKind::TaskCreated(_) => s.total += 1,
            EventKind::TaskStarted(t) => {
                s.running.insert(
                    name(t.worker.as_str()),
                    (name(t.task.as_str()), Instant::now()),
                );
            }
            EventKind::TaskCompleted(c) => {
                s.done += 1;
                s.running.remove(&name(c.worker.as_str()));
            }
            EventKind::TaskFailed(f) => {
                if f.retryable {
                    s.retried += 1;
                } else {
                    s.done += 1;
                    s.failed += 1;
                }
                if let Some(w) = &f.worker {
                    s.running.remove(&name(w.as_str()));
                }
            }
            EventKind::TaskCancelled(_) => s.done += 1,
            EventKind::WorkerFailed(w) => {
                s.running.remove(&name(w.worker.as_str()));
            }
            EventKind::WorkerDisconnected(w) => {
                s.running.remove(&name(w.worker.as_str()));
            }
            EventKind::CoordinatorShutdown(_) => {
                self.draw(true)?;
                return Ok(());
            }
            _ => return Ok(()),
        }
        self.draw(false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// The tracker ends a task on the result of its latest attempt only, and never on a remote
    /// publisher's events (its harness's tests, whatever their ids).
    #[tokio::test]
    async fn the_tracker_ignores_superseded_attempts_and_remote_publishers() {
        use dtf_plugin_core::EventMeta;
        use dtf_plugin_core::event::TaskCompleted;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut tracker = RunTracker::new(tx);
        let mut ctx = PluginContext::detached(RunTracker::NAME, serde_json::Value::Null);
        let event = |source: &str, kind| Event {
            meta: EventMeta {
                seq: 1,
                time: std::time::SystemTime::now(),
                source: source.into(),
            },
            kind,
        };
        let completed = |worker: &str, attempt, outcome| {
            EventKind::TaskCompleted(Box::new(
                TaskCompleted::builder()
                    .task("t1")
                    .worker(worker)
                    .attempt(attempt)
                    .outcome(outcome)
                    .duration(Duration::from_secs(1))
                    .build(),
            ))
        };
        let events = [
            event("scheduler", EventKind::task_assigned("t1", "w1", 1)),
            event("scheduler", EventKind::task_assigned("t1", "w2", 2)),
            // Attempt 1 comes back after its worker was taken for lost: not the end.
            event("w1", completed("w1", 1, TaskOutcome::Failed)),
            // A remote harness's test with the same id: not this run's.
            event("remote:harness", completed("h", 1, TaskOutcome::Passed)),
        ];
        for e in &events {
            tracker.on_event(&mut ctx, e).await.unwrap();
        }
        assert!(
            rx.try_recv().is_err(),
            "the task ended on a stale or foreign result"
        );
        let last = event("w2", completed("w2", 2, TaskOutcome::Passed));
        tracker.on_event(&mut ctx, &last).await.unwrap();
        assert_eq!(rx.try_recv().ok(), Some((TaskId::from("t1"), true)));
    }

    #[test]
    fn the_line_counts_tasks_and_shows_busy_workers() {
        let mut p = ProgressDisplay::plain(Box::new(std::io::sink()), PLAIN_INTERVAL);
        p.state.total = 4;
        p.state.done = 2;
        p.state.failed = 1;
        p.state
            .running
            .insert("w1".into(), ("unit".into(), Instant::now()));
        let line = p.line();
        assert!(
            line.starts_with("[dtf] 2/4 done  1 failed  1 running  0 retried  "),
            "{line}"
        );
        assert!(line.ends_with(" elapsed | w1: unit"), "{line}");
    }

    #[test]
    fn plain_lines_are_periodic_and_one_ends_the_run() {
        let buf = Buf::default();
        // An hour between lines: none while the run goes on, one at its end.
        let mut p = ProgressDisplay::plain(Box::new(buf.clone()), Duration::from_secs(3_600));
        p.state.total = 2;
        p.draw(false).unwrap();
        p.state.done = 1;
        p.draw(false).unwrap();
        assert_eq!(buf.text(), "");
        p.state.done = 2;
        p.draw(true).unwrap();
        let text = buf.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("[dtf] 2/2 done"), "{text}");

        // No interval: a line for every change after the first.
        let buf = Buf::default();
        let mut p = ProgressDisplay::plain(Box::new(buf.clone()), Duration::ZERO);
        p.state.total = 1;
        for _ in 0..3 {
            p.draw(false).unwrap();
        }
        assert_eq!(buf.text().lines().count(), 2, "{}", buf.text());
    }

    #[test]
    fn the_bar_shows_one_line_per_busy_worker() {
        let mut p = ProgressDisplay::bar(ProgressDrawTarget::hidden());
        p.state.total = 3;
        p.state
            .running
            .insert("w1".into(), ("a".into(), Instant::now()));
        p.state
            .running
            .insert("w2".into(), ("b".into(), Instant::now()));
        p.draw(false).unwrap();
        let Mode::Bar { main, workers, .. } = &p.mode else {
            panic!("not a bar");
        };
        assert_eq!((main.length(), workers.len()), (Some(3), 2));
        p.state.running.remove("w1");
        p.state.done = 1;
        p.draw(false).unwrap();
        let Mode::Bar { main, workers, .. } = &p.mode else {
            panic!("not a bar");
        };
        assert_eq!(main.position(), 1);
        assert_eq!(workers.keys().collect::<Vec<_>>(), ["w2"]);
    }
}
