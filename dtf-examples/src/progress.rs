//! The coordinator's own small plugins: [`RunTracker`] (tells the coordinator when tasks
//! end) and [`ProgressDisplay`] (a live status line on a terminal).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use dtf_plugin_core::event::TaskId;
use dtf_plugin_core::prelude::*;
use tokio::sync::mpsc;

/// Sends the id of each task that reaches a terminal event (`TaskCompleted`,
/// `TaskCancelled`, or a `TaskFailed` that is not retryable) to the coordinator, which
/// waits for all of them, with whether it passed (or was skipped).
#[derive(Debug, Clone)]
pub struct RunTracker {
    done: mpsc::UnboundedSender<(TaskId, bool)>,
}

impl RunTracker {
    /// The plugin's name.
    pub const NAME: &'static str = "run-tracker";

    /// A tracker reporting to `done`.
    pub fn new(done: mpsc::UnboundedSender<(TaskId, bool)>) -> Self {
        Self { done }
    }
}

impl Plugin for RunTracker {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Monitoring)
            .hooks(HookSet::of(&[
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
        let done = match &event.kind {
            EventKind::TaskCompleted(c) => Some((c.task.clone(), c.outcome != TaskOutcome::Failed)),
            EventKind::TaskCancelled(c) => Some((c.task.clone(), false)),
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

/// A one-line live display of the run: tasks done, failed, running, and what each worker is
/// doing, redrawn at most every 100 ms. The coordinator adds it only when stdout is a
/// terminal (`--progress never` turns it off).
pub struct ProgressDisplay {
    out: Box<dyn Write + Send>,
    total: usize,
    done: usize,
    failed: usize,
    retried: usize,
    workers: BTreeMap<String, Option<String>>,
    last_draw: Option<Instant>,
}

impl std::fmt::Debug for ProgressDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressDisplay")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Default for ProgressDisplay {
    fn default() -> Self {
        Self::new(Box::new(std::io::stdout()))
    }
}

impl ProgressDisplay {
    /// The plugin's name.
    pub const NAME: &'static str = "progress";

    /// A display writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            total: 0,
            done: 0,
            failed: 0,
            retried: 0,
            workers: BTreeMap::new(),
            last_draw: None,
        }
    }

    /// The status line (without terminal control codes).
    pub fn line(&self) -> String {
        let running = self.workers.values().filter(|t| t.is_some()).count();
        let mut line = format!(
            "[dtf] {}/{} done  {} failed  {} running  {} retried |",
            self.done, self.total, self.failed, running, self.retried
        );
        for (w, task) in &self.workers {
            line.push_str(&format!(" {w}: {}", task.as_deref().unwrap_or("idle")));
        }
        line
    }

    fn draw(&mut self, force: bool) -> std::io::Result<()> {
        let now = Instant::now();
        if !force
            && self
                .last_draw
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return Ok(());
        }
        self.last_draw = Some(now);
        let line = self.line();
        write!(self.out, "\r\x1b[2K{line}")?;
        self.out.flush()
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
        let mut force = false;
        match &event.kind {
            EventKind::TaskCreated(_) => self.total += 1,
            EventKind::TaskStarted(s) => {
                self.workers
                    .insert(s.worker.to_string(), Some(s.task.to_string()));
            }
            EventKind::TaskCompleted(c) => {
                self.done += 1;
                self.workers.insert(c.worker.to_string(), None);
            }
            EventKind::TaskFailed(f) => {
                if f.retryable {
                    self.retried += 1;
                } else {
                    self.done += 1;
                    self.failed += 1;
                }
                if let Some(w) = &f.worker {
                    self.workers.insert(w.to_string(), None);
                }
            }
            EventKind::TaskCancelled(_) => self.done += 1,
            EventKind::WorkerRegistered(w) => {
                self.workers.insert(w.worker.to_string(), None);
            }
            EventKind::WorkerFailed(w) => {
                self.workers
                    .insert(w.worker.to_string(), Some("FAILED".to_owned()));
                force = true;
            }
            EventKind::CoordinatorShutdown(_) => {
                self.draw(true)?;
                writeln!(self.out)?;
                return Ok(());
            }
            _ => return Ok(()),
        }
        self.draw(force)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_tasks_and_shows_workers() {
        let mut p = ProgressDisplay::new(Box::new(std::io::sink()));
        p.total = 4;
        p.done = 2;
        p.failed = 1;
        p.workers.insert("w1".into(), Some("unit".into()));
        p.workers.insert("w2".into(), None);
        assert_eq!(
            p.line(),
            "[dtf] 2/4 done  1 failed  1 running  0 retried | w1: unit w2: idle"
        );
    }
}
