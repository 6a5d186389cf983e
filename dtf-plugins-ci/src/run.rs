//! The run model: [`RunRecorder`] folds dtf events into a [`RunResult`], which every report
//! renders.
//!
//! The fold follows the lifecycle documented in [`dtf_plugin_core::event`] but never fails on
//! a stream that breaks it: an event for a task never created creates it (named by its id), an
//! attempt still open when a new `TaskAssigned` arrives is recorded as
//! [`AttemptOutcome::Lost`] (its worker was lost and recovery re-queued the task).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use dtf_plugin_core::event::{Event, EventKind, ShutdownReason, TaskId, TaskOutcome};
use serde::Serialize;

/// How one attempt at a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// Assigned or started, not finished yet (or never, if the run ended).
    Running,
    /// The test passed.
    Passed,
    /// The test ran and reported failure (`TaskCompleted` with outcome `Failed`).
    Failed,
    /// The attempt ended with an error (`TaskFailed`: a crash, a timeout, unschedulable).
    Errored,
    /// The test was skipped.
    Skipped,
    /// The task was cancelled during this attempt.
    Cancelled,
    /// The task was re-assigned before this attempt finished (its worker was lost).
    Lost,
}

impl AttemptOutcome {
    /// Lowercase name, as in the JSON report.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Errored => "errored",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::Lost => "lost",
        }
    }

    /// Whether the attempt counts as a failure (failed or errored).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Errored)
    }
}

/// One attempt at running a task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Attempt {
    /// Attempt number, starting at 1.
    pub number: u32,
    /// The worker it ran (or was assigned) on.
    pub worker: Option<String>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// When the worker started it, if known.
    #[serde(serialize_with = "ser_time_opt")]
    pub started_at: Option<SystemTime>,
    /// When it ended, if it did.
    #[serde(serialize_with = "ser_time_opt")]
    pub finished_at: Option<SystemTime>,
    /// Run time: as reported by `TaskCompleted`, or measured from `TaskStarted` to the end.
    #[serde(rename = "duration_secs", serialize_with = "ser_secs")]
    pub duration: Duration,
    /// The error's classification (`TaskError::kind`), for failed and errored attempts.
    pub error_kind: Option<String>,
    /// The error message (or the cancel reason).
    pub message: Option<String>,
    /// Error details (a backtrace, captured output), possibly empty.
    pub details: String,
    /// Captured output of the attempt, possibly empty.
    pub output: String,
}

impl Attempt {
    fn new(number: u32, worker: Option<String>) -> Self {
        Self {
            number,
            worker,
            outcome: AttemptOutcome::Running,
            started_at: None,
            finished_at: None,
            duration: Duration::ZERO,
            error_kind: None,
            message: None,
            details: String::new(),
            output: String::new(),
        }
    }

    fn close(&mut self, outcome: AttemptOutcome, at: SystemTime) {
        self.outcome = outcome;
        self.finished_at = Some(at);
        if self.duration.is_zero() {
            if let Some(start) = self.started_at {
                self.duration = at.duration_since(start).unwrap_or_default();
            }
        }
    }
}

/// A task's final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskStatus {
    /// The last attempt failed or errored.
    Failed,
    /// Failed at least once, then passed on a retry.
    Flaky,
    /// Never finished: the run ended while it waited or ran.
    Incomplete,
    /// Cancelled before it finished.
    Cancelled,
    /// Skipped.
    Skipped,
    /// Passed on the first attempt that finished.
    Passed,
}

impl TaskStatus {
    /// Lowercase name, as in the JSON report.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Flaky => "flaky",
            Self::Incomplete => "incomplete",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
            Self::Passed => "passed",
        }
    }
}

/// Everything recorded about one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TaskResult {
    /// The task's id.
    pub id: String,
    /// Its human-readable name (the id when no `TaskCreated` was seen).
    pub name: String,
    /// Metadata from `TaskCreated` (reports read `file` and `line` from it).
    pub metadata: BTreeMap<String, String>,
    /// Attempts in order.
    pub attempts: Vec<Attempt>,
    /// The final status.
    pub status: TaskStatus,
    /// Why it was cancelled, when it was.
    pub cancel_reason: Option<String>,
}

impl TaskResult {
    /// The worker of the last attempt, if any.
    pub fn worker(&self) -> Option<&str> {
        self.attempts.iter().rev().find_map(|a| a.worker.as_deref())
    }

    /// The sum of all attempts' durations.
    pub fn total_duration(&self) -> Duration {
        self.attempts.iter().map(|a| a.duration).sum()
    }

    /// Whether it was cancelled while an attempt of it ran (its worker had started it): it
    /// was interrupted, not only never run.
    pub fn was_interrupted(&self) -> bool {
        self.status == TaskStatus::Cancelled
            && self
                .attempts
                .iter()
                .any(|a| a.outcome == AttemptOutcome::Cancelled && a.started_at.is_some())
    }

    /// The last failed or errored attempt, if any.
    pub fn last_failure(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| a.outcome.is_failure())
    }

    /// When the task's last attempt ended, if it did.
    pub fn finished_at(&self) -> Option<SystemTime> {
        self.attempts.iter().rev().find_map(|a| a.finished_at)
    }

    fn compute_status(&self) -> TaskStatus {
        // A cancelled attempt ended nothing: the last one that did decides (a failure whose
        // retry, assigned or running, was cancelled stays a failure).
        let finished: Vec<_> = self
            .attempts
            .iter()
            .filter(|a| {
                !matches!(
                    a.outcome,
                    AttemptOutcome::Running | AttemptOutcome::Lost | AttemptOutcome::Cancelled
                )
            })
            .collect();
        match finished.last().map(|a| a.outcome) {
            Some(AttemptOutcome::Passed) if finished.iter().any(|a| a.outcome.is_failure()) => {
                TaskStatus::Flaky
            }
            Some(AttemptOutcome::Passed) => TaskStatus::Passed,
            Some(AttemptOutcome::Skipped) => TaskStatus::Skipped,
            // A failure stays one when the retry that could have mended it is cancelled (the
            // run was stopped or timed out meanwhile).
            Some(AttemptOutcome::Failed | AttemptOutcome::Errored) => TaskStatus::Failed,
            _ if self.cancel_reason.is_some() => TaskStatus::Cancelled,
            _ => TaskStatus::Incomplete,
        }
    }
}

/// What happened to one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerSummary {
    /// The worker's id.
    pub id: String,
    /// Failures and disconnections, in order (`failed: …`, `disconnected: …`).
    pub incidents: Vec<String>,
    /// Times it returned to service after an incident.
    pub recoveries: u32,
}

/// Counts over all tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Totals {
    /// Tasks seen.
    pub tasks: usize,
    /// Passed on the first finished attempt.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Failed, then passed on a retry.
    pub flaky: usize,
    /// Skipped.
    pub skipped: usize,
    /// Cancelled.
    pub cancelled: usize,
    /// Never finished.
    pub incomplete: usize,
    /// Attempts over all tasks.
    pub attempts: usize,
}

impl Totals {
    /// Whether the run failed: a task failed, was cancelled, or never finished (as
    /// `dtf-coordinator`'s exit code has it: a run stopped before its tests ended did not pass).
    pub fn is_failure(&self) -> bool {
        self.failed > 0 || self.cancelled > 0 || self.incomplete > 0
    }
}

/// How a run ended, for a CI page's verdict: [`RunResult::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// Every task passed (flaky ones included) or was skipped.
    Passed,
    /// A task failed, or the run ended with tasks cancelled or unfinished, or on an error.
    Failed,
    /// The run was stopped on request (a signal, a user) before its tasks ended, and none of
    /// them had failed.
    Cancelled,
    /// The run reached its time limit before its tasks ended, and none of them had failed.
    TimedOut,
}

impl Verdict {
    /// Lowercase words, for a one-line description ("passed", "timed out").
    pub const fn words(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed out",
        }
    }
}

/// The result of a run: tasks in creation order, workers, totals and timing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RunResult {
    /// The run's id from `CoordinatorStartup`.
    pub run_id: Option<String>,
    /// When the run started (`CoordinatorStartup`, else the first event).
    #[serde(serialize_with = "ser_time_opt")]
    pub started_at: Option<SystemTime>,
    /// When it ended (`CoordinatorShutdown`, else the last event).
    #[serde(serialize_with = "ser_time_opt")]
    pub finished_at: Option<SystemTime>,
    /// `finished_at - started_at`.
    #[serde(rename = "wall_time_secs", serialize_with = "ser_secs")]
    pub wall_time: Duration,
    /// The shutdown reason, when the run shut down.
    pub shutdown: Option<String>,
    /// Counts.
    pub totals: Totals,
    /// Tasks in creation order.
    pub tasks: Vec<TaskResult>,
    /// Workers in registration order.
    pub workers: Vec<WorkerSummary>,
}

impl RunResult {
    /// The run's verdict. A failed task decides it (even in a run stopped later); otherwise a
    /// run stopped on request, or by its time limit, with tasks left is
    /// [`Cancelled`](Verdict::Cancelled) or [`TimedOut`](Verdict::TimedOut); otherwise tasks
    /// cancelled or unfinished, or a shutdown on an error, fail it.
    pub fn verdict(&self) -> Verdict {
        let t = &self.totals;
        let unfinished = t.cancelled > 0 || t.incomplete > 0;
        match self.shutdown.as_deref() {
            _ if t.failed > 0 => Verdict::Failed,
            Some("requested") if unfinished => Verdict::Cancelled,
            Some("timed out") if unfinished => Verdict::TimedOut,
            Some(s) if s.starts_with("error") => Verdict::Failed,
            _ if t.is_failure() => Verdict::Failed,
            _ => Verdict::Passed,
        }
    }
}

/// Folds dtf events into a [`RunResult`]. Pure: no I/O, no clock (times come from the events).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use dtf_plugin_core::prelude::*;
/// use dtf_plugins_ci::{RunRecorder, TaskStatus};
///
/// let t0 = SystemTime::UNIX_EPOCH;
/// let mut rec = RunRecorder::new();
/// rec.record_kind(&EventKind::task_created("t1", "tests::flaky"), t0);
/// rec.record_kind(&EventKind::task_started("t1", "w1", 1), t0);
/// let err = TaskError::builder().kind("Timeout").message("took too long").build();
/// rec.record_kind(&EventKind::task_failed("t1", err, true), t0 + Duration::from_secs(2));
/// rec.record_kind(&EventKind::task_assigned("t1", "w2", 2), t0 + Duration::from_secs(2));
/// rec.record_kind(
///     &EventKind::task_completed("t1", "w2", TaskOutcome::Passed, Duration::from_secs(1)),
///     t0 + Duration::from_secs(3),
/// );
/// let run = rec.result();
/// assert_eq!(run.tasks[0].status, TaskStatus::Flaky);
/// assert_eq!(run.tasks[0].attempts.len(), 2);
/// assert_eq!(run.totals.flaky, 1);
/// assert_eq!(run.wall_time, Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, Default)]
pub struct RunRecorder {
    run_id: Option<String>,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    first_event: Option<SystemTime>,
    last_event: Option<SystemTime>,
    shutdown: Option<String>,
    tasks: Vec<TaskResult>,
    index: HashMap<TaskId, usize>,
    workers: Vec<WorkerSummary>,
    worker_index: HashMap<String, usize>,
}

impl RunRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event`, at its bus timestamp.
    pub fn record(&mut self, event: &Event) {
        self.record_kind(&event.kind, event.meta.time);
    }

    /// Records an event kind that happened at `at`.
    pub fn record_kind(&mut self, kind: &EventKind, at: SystemTime) {
        self.first_event.get_or_insert(at);
        self.last_event = Some(at);
        match kind {
            EventKind::CoordinatorStartup(s) => {
                self.run_id = Some(s.run_id.clone());
                self.started_at = Some(at);
            }
            EventKind::CoordinatorShutdown(s) => {
                self.finished_at = Some(at);
                self.shutdown = Some(match &s.reason {
                    ShutdownReason::Completed => "completed".to_owned(),
                    ShutdownReason::Requested => "requested".to_owned(),
                    ShutdownReason::TimedOut => "timed out".to_owned(),
                    ShutdownReason::Error(e) => format!("error: {e}"),
                    _ => "other".to_owned(),
                });
            }
            EventKind::TaskCreated(c) => {
                let task = self.task(&c.task);
                task.name.clone_from(&c.name);
                task.metadata.clone_from(&c.metadata);
            }
            EventKind::TaskAssigned(a) => {
                let task = self.task(&a.task);
                if let Some(open) = task
                    .attempts
                    .last_mut()
                    .filter(|x| x.outcome == AttemptOutcome::Running)
                {
                    open.close(AttemptOutcome::Lost, at);
                }
                task.attempts
                    .push(Attempt::new(a.attempt, Some(a.worker.0.clone())));
            }
            EventKind::TaskStarted(s) => {
                let attempt = self.open_attempt(&s.task, s.attempt, Some(s.worker.as_str()));
                attempt.started_at = Some(at);
            }
            EventKind::TaskCompleted(c) => {
                let attempt = self.open_attempt(&c.task, c.attempt, Some(c.worker.as_str()));
                attempt.duration = c.duration;
                attempt.output.clone_from(&c.output);
                let outcome = match c.outcome {
                    TaskOutcome::Passed => AttemptOutcome::Passed,
                    TaskOutcome::Skipped => AttemptOutcome::Skipped,
                    _ => AttemptOutcome::Failed,
                };
                if outcome == AttemptOutcome::Failed {
                    attempt.error_kind = Some("TestFailure".to_owned());
                    attempt.message = Some("the test reported failure".to_owned());
                }
                attempt.close(outcome, at);
            }
            EventKind::TaskFailed(f) => {
                let attempt =
                    self.open_attempt(&f.task, f.attempt, f.worker.as_ref().map(|w| w.as_str()));
                attempt.error_kind = Some(f.error.kind.clone());
                attempt.message = Some(f.error.message.clone());
                attempt.details.clone_from(&f.error.details);
                attempt.close(AttemptOutcome::Errored, at);
            }
            EventKind::TaskCancelled(c) => {
                let task = self.task(&c.task);
                task.cancel_reason = Some(c.reason.clone());
                if let Some(open) = task
                    .attempts
                    .last_mut()
                    .filter(|x| x.outcome == AttemptOutcome::Running)
                {
                    open.message = Some(c.reason.clone());
                    open.close(AttemptOutcome::Cancelled, at);
                }
            }
            EventKind::WorkerRegistered(w) => {
                self.worker(w.worker.as_str());
            }
            EventKind::WorkerDisconnected(w) => {
                let reason = format!("disconnected: {}", w.reason);
                self.worker(w.worker.as_str()).incidents.push(reason);
            }
            EventKind::WorkerFailed(w) => {
                let reason = format!("failed: {}", w.error);
                self.worker(w.worker.as_str()).incidents.push(reason);
            }
            EventKind::WorkerRecovered(w) => {
                self.worker(w.worker.as_str()).recoveries += 1;
            }
            _ => {}
        }
    }

    /// The run so far. Tasks still running are [`TaskStatus::Incomplete`].
    pub fn result(&self) -> RunResult {
        let mut totals = Totals::default();
        let tasks: Vec<TaskResult> = self
            .tasks
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.status = t.compute_status();
                totals.tasks += 1;
                totals.attempts += t.attempts.len();
                match t.status {
                    TaskStatus::Passed => totals.passed += 1,
                    TaskStatus::Failed => totals.failed += 1,
                    TaskStatus::Flaky => totals.flaky += 1,
                    TaskStatus::Skipped => totals.skipped += 1,
                    TaskStatus::Cancelled => totals.cancelled += 1,
                    TaskStatus::Incomplete => totals.incomplete += 1,
                }
                t
            })
            .collect();
        let started_at = self.started_at.or(self.first_event);
        let finished_at = self.finished_at.or(self.last_event);
        let wall_time = match (started_at, finished_at) {
            (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default(),
            _ => Duration::ZERO,
        };
        RunResult {
            run_id: self.run_id.clone(),
            started_at,
            finished_at,
            wall_time,
            shutdown: self.shutdown.clone(),
            totals,
            tasks,
            workers: self.workers.clone(),
        }
    }

    fn task(&mut self, id: &TaskId) -> &mut TaskResult {
        let next = self.tasks.len();
        let i = *self.index.entry(id.clone()).or_insert(next);
        if i == next {
            self.tasks.push(TaskResult {
                id: id.0.clone(),
                name: id.0.clone(),
                metadata: BTreeMap::new(),
                attempts: Vec::new(),
                status: TaskStatus::Incomplete,
                cancel_reason: None,
            });
        }
        &mut self.tasks[i]
    }

    /// The running attempt of `id`, opened (numbered `number`) if there is none.
    ///
    /// An open attempt is reused whatever number the event carries: the shorthand
    /// constructors (`EventKind::task_completed`, `task_failed`) always say attempt 1, so a
    /// mismatch is more likely a publisher's shortcut than a new attempt. A number other than 1
    /// replaces the recorded one.
    fn open_attempt(&mut self, id: &TaskId, number: u32, worker: Option<&str>) -> &mut Attempt {
        let task = self.task(id);
        let reuse = task
            .attempts
            .last()
            .is_some_and(|a| a.outcome == AttemptOutcome::Running);
        if !reuse {
            task.attempts.push(Attempt::new(number, None));
        }
        let len = task.attempts.len();
        let attempt = &mut task.attempts[len - 1];
        if number != 1 {
            attempt.number = number;
        }
        if let Some(w) = worker {
            attempt.worker = Some(w.to_owned());
        }
        attempt
    }

    fn worker(&mut self, id: &str) -> &mut WorkerSummary {
        let next = self.workers.len();
        let i = *self.worker_index.entry(id.to_owned()).or_insert(next);
        if i == next {
            self.workers.push(WorkerSummary {
                id: id.to_owned(),
                incidents: Vec::new(),
                recoveries: 0,
            });
        }
        &mut self.workers[i]
    }
}

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS` in UTC (no zone suffix, as the JUnit schema wants).
pub(crate) fn format_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn ser_time_opt<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&format!("{}Z", format_utc(*t))),
        None => s.serialize_none(),
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtf_plugin_core::event::{TaskCompleted, TaskError, TaskFailed};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn err(msg: &str) -> TaskError {
        TaskError::builder()
            .kind("Boom")
            .message(msg)
            .details("trace")
            .build()
    }

    /// A run stopped or timed out before its tasks ended is not a pass: its verdict says how
    /// it ended, and a failure before the stop outweighs it. A task whose retry was cancelled
    /// stays failed; one cancelled while it ran was interrupted, one never started was not.
    #[test]
    fn a_stopped_or_timed_out_run_is_not_a_pass_and_a_failure_outweighs_the_stop() {
        let run = |reason: ShutdownReason, fail_first: bool| {
            let mut r = RunRecorder::new();
            r.record_kind(&EventKind::coordinator_startup("run"), at(0));
            for id in ["t1", "t2", "t3"] {
                r.record_kind(&EventKind::task_created(id, id), at(0));
            }
            r.record_kind(
                &EventKind::task_completed("t1", "w", TaskOutcome::Passed, Duration::ZERO),
                at(1),
            );
            r.record_kind(&EventKind::task_started("t2", "w", 1), at(1));
            if fail_first {
                r.record_kind(&EventKind::task_failed("t2", err("boom"), true), at(2));
                // Its retry is assigned, then the run is stopped.
                r.record_kind(&EventKind::task_assigned("t2", "w", 2), at(2));
            }
            r.record_kind(&EventKind::task_cancelled("t2", "stopped"), at(3));
            r.record_kind(&EventKind::task_cancelled("t3", "stopped"), at(3));
            r.record_kind(&EventKind::coordinator_shutdown(reason), at(3));
            r.result()
        };
        let stopped = run(ShutdownReason::Requested, false);
        assert_eq!(stopped.verdict(), Verdict::Cancelled);
        assert!(stopped.totals.is_failure(), "{:?}", stopped.totals);
        assert_eq!(stopped.totals.cancelled, 2);
        assert!(stopped.tasks[1].was_interrupted(), "t2 ran when cancelled");
        assert!(!stopped.tasks[2].was_interrupted(), "t3 never started");
        // The JUnit file shows the interrupted test as an error, the other as skipped.
        let xml = crate::junit::render_junit(&stopped);
        assert!(
            xml.contains(r#"<error type="Cancelled" message="interrupted: stopped"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<skipped message="cancelled: stopped"/>"#),
            "{xml}"
        );
        let md = crate::markdown::render_markdown(&stopped);
        assert!(md.starts_with("## dtf test run: ⏹️ cancelled"), "{md}");
        assert!(md.contains("`interrupted: stopped`"), "{md}");
        // While it runs, the live summary says so, whatever has happened so far.
        let live = crate::markdown::render_progress(&stopped);
        assert!(live.starts_with("## dtf test run: ⏳ running"), "{live}");
        assert_eq!(
            run(ShutdownReason::TimedOut, false).verdict(),
            Verdict::TimedOut
        );
        // The failure of t2's first attempt decides, though its retry was cancelled.
        let failed = run(ShutdownReason::TimedOut, true);
        assert_eq!(failed.tasks[1].status, TaskStatus::Failed);
        assert_eq!(failed.verdict(), Verdict::Failed);
        // Cancelled tasks in a run that says it completed: not a pass either.
        assert_eq!(
            run(ShutdownReason::Completed, false).verdict(),
            Verdict::Failed
        );
    }

    #[test]
    fn folds_every_final_status() {
        let mut r = RunRecorder::new();
        r.record_kind(&EventKind::coordinator_startup("run-7"), at(100));
        for (id, name) in [
            ("p", "a::pass"),
            ("f", "a::fail"),
            ("s", "a::skip"),
            ("c", "a::cancel"),
            ("i", "a::hang"),
            ("e", "a::crash"),
        ] {
            r.record_kind(&EventKind::task_created(id, name), at(100));
        }
        r.record_kind(
            &EventKind::task_completed("p", "w1", TaskOutcome::Passed, Duration::from_millis(1500)),
            at(102),
        );
        r.record_kind(&EventKind::task_started("f", "w1", 1), at(102));
        let failed = TaskCompleted::builder()
            .task("f")
            .worker("w1")
            .outcome(TaskOutcome::Failed)
            .duration(Duration::from_secs(1))
            .output("assert left == right")
            .build();
        r.record_kind(&EventKind::TaskCompleted(Box::new(failed)), at(103));
        r.record_kind(
            &EventKind::task_completed("s", "w2", TaskOutcome::Skipped, Duration::ZERO),
            at(103),
        );
        r.record_kind(&EventKind::task_assigned("c", "w2", 1), at(103));
        r.record_kind(&EventKind::task_cancelled("c", "fail-fast"), at(104));
        r.record_kind(&EventKind::task_started("i", "w2", 1), at(104));
        let crash = TaskFailed::builder()
            .task("e")
            .worker("w1")
            .error(err("segfault"))
            .build();
        r.record_kind(&EventKind::TaskFailed(Box::new(crash)), at(105));
        r.record_kind(
            &EventKind::coordinator_shutdown(ShutdownReason::Completed),
            at(110),
        );

        let run = r.result();
        let statuses: Vec<_> = run
            .tasks
            .iter()
            .map(|t| (t.id.as_str(), t.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("p", TaskStatus::Passed),
                ("f", TaskStatus::Failed),
                ("s", TaskStatus::Skipped),
                ("c", TaskStatus::Cancelled),
                ("i", TaskStatus::Incomplete),
                ("e", TaskStatus::Failed),
            ]
        );
        assert_eq!(run.run_id.as_deref(), Some("run-7"));
        assert_eq!(run.wall_time, Duration::from_secs(10));
        assert_eq!(run.shutdown.as_deref(), Some("completed"));
        assert_eq!(run.totals.tasks, 6);
        assert_eq!(
            (run.totals.passed, run.totals.failed, run.totals.skipped),
            (1, 2, 1)
        );
        assert_eq!(
            (
                run.totals.cancelled,
                run.totals.incomplete,
                run.totals.flaky
            ),
            (1, 1, 0)
        );
        assert!(run.totals.is_failure());
        // The failed test's measured duration wins over the started-to-completed gap.
        assert_eq!(run.tasks[1].attempts[0].duration, Duration::from_secs(1));
        assert_eq!(run.tasks[1].attempts[0].output, "assert left == right");
        assert_eq!(
            run.tasks[5].attempts[0].message.as_deref(),
            Some("segfault")
        );
        assert_eq!(run.tasks[5].attempts[0].error_kind.as_deref(), Some("Boom"));
        assert_eq!(run.tasks[3].cancel_reason.as_deref(), Some("fail-fast"));
    }

    #[test]
    fn retry_then_pass_is_flaky_and_lost_worker_is_recorded() {
        let mut r = RunRecorder::new();
        r.record_kind(&EventKind::task_created("t", "flaky"), at(0));
        r.record_kind(&EventKind::task_assigned("t", "w1", 1), at(0));
        r.record_kind(&EventKind::task_started("t", "w1", 1), at(1));
        // w1 is lost; recovery re-assigns the same attempt elsewhere.
        r.record_kind(&EventKind::worker_failed("w1", "oom"), at(2));
        r.record_kind(&EventKind::task_assigned("t", "w2", 1), at(2));
        r.record_kind(&EventKind::task_started("t", "w2", 1), at(3));
        let f = TaskFailed::builder()
            .task("t")
            .worker("w2")
            .error(err("x"))
            .retryable(true)
            .build();
        r.record_kind(&EventKind::TaskFailed(Box::new(f)), at(5));
        r.record_kind(&EventKind::task_assigned("t", "w3", 2), at(5));
        let done = TaskCompleted::builder()
            .task("t")
            .worker("w3")
            .attempt(2)
            .outcome(TaskOutcome::Passed)
            .duration(Duration::from_secs(1))
            .build();
        r.record_kind(&EventKind::TaskCompleted(Box::new(done)), at(7));
        r.record_kind(&EventKind::worker_recovered("w1"), at(8));

        let run = r.result();
        let t = &run.tasks[0];
        let outcomes: Vec<_> = t.attempts.iter().map(|a| (a.number, a.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                (1, AttemptOutcome::Lost),
                (1, AttemptOutcome::Errored),
                (2, AttemptOutcome::Passed)
            ]
        );
        assert_eq!(t.status, TaskStatus::Flaky);
        assert_eq!(t.worker(), Some("w3"));
        assert_eq!(t.attempts[1].duration, Duration::from_secs(2));
        assert_eq!(t.total_duration(), Duration::from_secs(4));
        assert_eq!(run.workers[0].incidents, ["failed: oom"]);
        assert_eq!(run.workers[0].recoveries, 1);
    }

    #[test]
    fn retry_that_fails_again_is_failed_and_unknown_tasks_are_named_by_id() {
        let mut r = RunRecorder::new();
        r.record_kind(&EventKind::task_failed("ghost", err("one"), true), at(0));
        r.record_kind(&EventKind::task_failed("ghost", err("two"), false), at(1));
        let run = r.result();
        assert_eq!(run.tasks[0].name, "ghost");
        assert_eq!(run.tasks[0].status, TaskStatus::Failed);
        assert_eq!(run.tasks[0].attempts.len(), 2);
        assert_eq!(
            run.tasks[0]
                .last_failure()
                .and_then(|a| a.message.as_deref()),
            Some("two")
        );
    }

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(format_utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00");
        assert_eq!(format_utc(at(951_782_400 + 3661)), "2000-02-29T01:01:01");
        assert_eq!(format_utc(at(1_795_651_200)), "2026-11-26T00:00:00");
    }
}
