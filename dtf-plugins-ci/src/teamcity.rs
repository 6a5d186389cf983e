//! TeamCity service messages: `##teamcity[testStarted …]` and friends.
//!
//! [`render_teamcity`] writes the whole run after the fact; [`TeamcityMessages`] turns events
//! into messages as they arrive, which the [`crate::TeamcityLive`] plugin writes so the build
//! page shows progress.
//!
//! Each task is its own `flowId`. TeamCity takes a `testStarted` as the end of the test open
//! in the same flow, so a flow per worker closed a test as passed when its worker (with more
//! than one slot) started another one, and its failure then came outside it. Both outputs
//! begin with `testRetrySupport enabled='true'`, so that a test that failed and then passed on
//! a retry is flaky, not failed (TeamCity's "Enabling Test Retry").

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use dtf_plugin_core::event::{EventKind, TaskId, TaskOutcome};

use crate::run::{AttemptOutcome, RunResult};

/// Escapes a service-message attribute value: `|` → `||`, `'` → `|'`, `\n` → `|n`, `\r` →
/// `|r`, `[` → `|[`, `]` → `|]`, and every other control character (C0, DEL, C1, U+2028,
/// U+2029) → `|0xXXXX` (four hex digits), so the message stays on one line.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("||"),
            '\'' => out.push_str("|'"),
            '\n' => out.push_str("|n"),
            '\r' => out.push_str("|r"),
            '[' => out.push_str("|["),
            ']' => out.push_str("|]"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "|0x{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The message that makes TeamCity treat a test reported again after a failure as a retry.
const RETRY_SUPPORT: &str = "##teamcity[testRetrySupport enabled='true']\n";

/// Builds one service message line (with its trailing newline) from `name` and attributes.
fn message(name: &str, attrs: &[(&str, &str)]) -> String {
    let mut out = format!("##teamcity[{name}");
    for (key, value) in attrs {
        let _ = write!(out, " {key}='{}'", escape(value));
    }
    out.push_str("]\n");
    out
}

fn started(test: &str, flow: &str) -> String {
    message(
        "testStarted",
        &[
            ("name", test),
            ("captureStandardOutput", "false"),
            ("flowId", flow),
        ],
    )
}

fn finished(test: &str, flow: &str, duration: Duration) -> String {
    let ms = duration.as_millis().to_string();
    message(
        "testFinished",
        &[("name", test), ("duration", &ms), ("flowId", flow)],
    )
}

fn failed(test: &str, flow: &str, msg: &str, details: &str) -> String {
    message(
        "testFailed",
        &[
            ("name", test),
            ("message", msg),
            ("details", details),
            ("flowId", flow),
        ],
    )
}

fn ignored(test: &str, flow: &str, msg: &str) -> String {
    message(
        "testIgnored",
        &[("name", test), ("message", msg), ("flowId", flow)],
    )
}

/// Renders every attempt of every task of `run`: `testStarted`, then `testFailed` for a
/// failed or errored attempt or `testIgnored` for a skipped or cancelled one, then
/// `testFinished` with the duration in milliseconds, each in the task's own flow (its id). A
/// retried test therefore appears once per attempt, after `testRetrySupport`, so TeamCity
/// shows one that failed and then passed as flaky. Attempts that never finished are reported
/// as failed with the message `did not finish`.
pub fn render_teamcity(run: &RunResult) -> String {
    let mut out = String::new();
    for task in &run.tasks {
        let flow = task.id.as_str();
        if task.attempts.is_empty() {
            if let Some(reason) = &task.cancel_reason {
                out.push_str(&ignored(&task.name, flow, &format!("cancelled: {reason}")));
            }
            continue;
        }
        for a in &task.attempts {
            out.push_str(&started(&task.name, flow));
            let msg = a.message.as_deref().unwrap_or_default();
            match a.outcome {
                AttemptOutcome::Passed => {}
                AttemptOutcome::Failed | AttemptOutcome::Errored => {
                    let kind = a.error_kind.as_deref().unwrap_or("error");
                    let details = join_details(&a.details, &a.output);
                    out.push_str(&failed(
                        &task.name,
                        flow,
                        &format!("{kind}: {msg}"),
                        &details,
                    ));
                }
                AttemptOutcome::Skipped => out.push_str(&ignored(&task.name, flow, "skipped")),
                AttemptOutcome::Cancelled => {
                    out.push_str(&ignored(&task.name, flow, &format!("cancelled: {msg}")));
                }
                AttemptOutcome::Lost => out.push_str(&failed(
                    &task.name,
                    flow,
                    "worker lost; the task was re-assigned",
                    "",
                )),
                AttemptOutcome::Running => {
                    out.push_str(&failed(&task.name, flow, "did not finish", ""));
                }
            }
            out.push_str(&finished(&task.name, flow, a.duration));
        }
    }
    if !out.is_empty() {
        out.insert_str(0, RETRY_SUPPORT);
    }
    out
}

fn join_details(details: &str, output: &str) -> String {
    match (details.is_empty(), output.is_empty()) {
        (_, true) => details.to_owned(),
        (true, false) => output.to_owned(),
        (false, false) => format!("{details}\n{output}"),
    }
}

/// Turns events into service messages as they arrive (the state of [`crate::TeamcityLive`]).
///
/// It remembers task names from `TaskCreated` and which tasks have an open `testStarted`, so
/// that a `TaskCancelled` or a task started again after its worker was lost closes the right
/// test. Every message of a task is in the task's own flow (its id).
#[derive(Debug, Default)]
pub struct TeamcityMessages {
    names: HashMap<TaskId, String>,
    open: std::collections::HashSet<TaskId>,
    /// Tasks whose last result was a failure: a cancellation of their retry leaves it.
    failed: std::collections::HashSet<TaskId>,
    /// Whether `testRetrySupport` went out (before the first message).
    retry_support: bool,
}

impl TeamcityMessages {
    /// No tasks known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages `kind` calls for (possibly none), each a line ending in `\n`.
    pub fn on_event(&mut self, kind: &EventKind) -> String {
        let mut out = String::new();
        if !self.retry_support && Self::writes_for(kind) {
            self.retry_support = true;
            out.push_str(RETRY_SUPPORT);
        }
        match kind {
            EventKind::TaskCreated(c) => {
                self.names.insert(c.task.clone(), c.name.clone());
            }
            EventKind::TaskStarted(s) => {
                let (name, flow) = (self.name(&s.task), s.task.as_str());
                if self.open.remove(&s.task) {
                    out.push_str(&failed(
                        &name,
                        flow,
                        "worker lost; the task was re-assigned",
                        "",
                    ));
                    out.push_str(&finished(&name, flow, Duration::ZERO));
                }
                out.push_str(&started(&name, flow));
                self.open.insert(s.task.clone());
            }
            EventKind::TaskCompleted(c) => {
                let (name, flow) = (self.name(&c.task), c.task.as_str());
                // A test TeamCity was never told started (its start was not seen) is opened
                // first: a result outside a testStarted/testFinished pair is not one.
                if !self.open.remove(&c.task) {
                    out.push_str(&started(&name, flow));
                }
                if matches!(c.outcome, TaskOutcome::Passed | TaskOutcome::Skipped) {
                    self.failed.remove(&c.task);
                } else {
                    self.failed.insert(c.task.clone());
                }
                match c.outcome {
                    TaskOutcome::Passed => {}
                    TaskOutcome::Skipped => out.push_str(&ignored(&name, flow, "skipped")),
                    _ => out.push_str(&failed(&name, flow, "the test reported failure", &c.output)),
                }
                out.push_str(&finished(&name, flow, c.duration));
            }
            EventKind::TaskFailed(f) => {
                let (name, flow) = (self.name(&f.task), f.task.as_str());
                // Also a task that never started (unschedulable, a spawn error).
                if !self.open.remove(&f.task) {
                    out.push_str(&started(&name, flow));
                }
                self.failed.insert(f.task.clone());
                let msg = format!("{}: {}", f.error.kind, f.error.message);
                out.push_str(&failed(&name, flow, &msg, &f.error.details));
                out.push_str(&finished(&name, flow, Duration::ZERO));
            }
            EventKind::TaskCancelled(c) => {
                let (name, flow) = (self.name(&c.task), c.task.as_str());
                if self.open.remove(&c.task) {
                    // Interrupted while it ran: it did not pass (as the JUnit file says).
                    let reason = format!("interrupted: {}", c.reason);
                    out.push_str(&failed(&name, flow, &reason, ""));
                    out.push_str(&finished(&name, flow, Duration::ZERO));
                } else if !self.failed.contains(&c.task) {
                    // A retry cancelled before it started leaves the failure before it as
                    // the test's last result (with retry support, the last one counts).
                    let reason = format!("cancelled: {}", c.reason);
                    out.push_str(&ignored(&name, flow, &reason));
                }
            }
            _ => {}
        }
        out
    }

    /// Whether `kind` produces messages.
    fn writes_for(kind: &EventKind) -> bool {
        matches!(
            kind,
            EventKind::TaskStarted(_)
                | EventKind::TaskCompleted(_)
                | EventKind::TaskFailed(_)
                | EventKind::TaskCancelled(_)
        )
    }

    fn name(&self, task: &TaskId) -> String {
        self.names
            .get(task)
            .cloned()
            .unwrap_or_else(|| task.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every result is inside a testStarted/testFinished pair, also for a task that never
    /// started (unschedulable); a task cancelled while it ran failed ("interrupted"), one
    /// cancelled before it started is ignored.
    #[test]
    fn live_results_are_always_inside_a_started_test() {
        use dtf_plugin_core::event::TaskError;
        let mut m = TeamcityMessages::new();
        let err = TaskError::builder()
            .kind("Unschedulable")
            .message("no worker")
            .build();
        let out = m.on_event(&EventKind::task_failed("u", err, false));
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("testRetrySupport"))
            .collect();
        assert!(
            lines[0].starts_with("##teamcity[testStarted name='u'"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("##teamcity[testFailed name='u'"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("##teamcity[testFinished name='u'"),
            "{out}"
        );
        m.on_event(&EventKind::task_started("r", "w", 1));
        let out = m.on_event(&EventKind::task_cancelled("r", "stopped"));
        assert!(
            out.starts_with("##teamcity[testFailed name='r' message='interrupted: stopped'"),
            "{out}"
        );
        assert!(out.contains("##teamcity[testFinished name='r'"), "{out}");
        let out = m.on_event(&EventKind::task_cancelled("q", "stopped"));
        assert!(
            out.starts_with("##teamcity[testIgnored name='q' message='cancelled: stopped'"),
            "{out}"
        );
        // A failure whose retry is cancelled before it starts stays the last word.
        let err = TaskError::builder().kind("Panic").message("boom").build();
        m.on_event(&EventKind::task_started("f", "w", 1));
        m.on_event(&EventKind::task_failed("f", err, true));
        assert_eq!(m.on_event(&EventKind::task_cancelled("f", "stopped")), "");
    }

    #[test]
    fn escapes_per_teamcity_rules() {
        assert_eq!(
            escape("it's [a|b]\r\n\u{1}\u{85}ok"),
            "it|'s |[a||b|]|r|n|0x0001|0x0085ok"
        );
    }

    #[test]
    fn live_messages_follow_the_task() {
        let mut tc = TeamcityMessages::new();
        assert_eq!(
            tc.on_event(&EventKind::task_created("t", "suite::it's")),
            ""
        );
        assert_eq!(
            tc.on_event(&EventKind::task_started("t", "w1", 1)),
            "##teamcity[testRetrySupport enabled='true']\n\
             ##teamcity[testStarted name='suite::it|'s' captureStandardOutput='false' flowId='t']\n"
        );
        assert_eq!(
            tc.on_event(&EventKind::task_completed(
                "t",
                "w1",
                TaskOutcome::Passed,
                Duration::from_millis(1234)
            )),
            "##teamcity[testFinished name='suite::it|'s' duration='1234' flowId='t']\n"
        );
        assert_eq!(
            tc.on_event(&EventKind::task_cancelled("u", "stop")),
            "##teamcity[testIgnored name='u' message='cancelled: stop' flowId='u']\n"
        );
    }

    /// The tests open in each flow, as TeamCity reads the messages: a `testStarted` ends the
    /// test open in its flow. Fails on a message about a test that is not the one open in its
    /// flow (what a flow per worker produced when a worker ran two tasks at once).
    fn replay(lines: &str) -> Result<Vec<(String, String)>, String> {
        let attr = |line: &str, key: &str| {
            let start = line.find(&format!(" {key}='"))? + key.len() + 3;
            let end = line[start..].find('\'')? + start;
            Some(line[start..end].to_owned())
        };
        let mut open: HashMap<String, String> = HashMap::new();
        let mut results = Vec::new();
        for line in lines.lines() {
            let (Some(name), Some(flow)) = (attr(line, "name"), attr(line, "flowId")) else {
                continue;
            };
            if line.starts_with("##teamcity[testStarted ") {
                if let Some(before) = open.insert(flow, name.clone()) {
                    results.push((before, "passed (closed by the next start)".to_owned()));
                }
            } else if line.starts_with("##teamcity[testFailed ") {
                if open.get(&flow) != Some(&name) {
                    return Err(format!("{name} failed outside its test: {line}"));
                }
                results.push((name, "failed".to_owned()));
            } else if line.starts_with("##teamcity[testFinished ")
                && open.remove(&flow).as_ref() != Some(&name)
            {
                return Err(format!("{name} finished outside its test: {line}"));
            }
        }
        Ok(results)
    }

    #[test]
    fn two_tasks_at_once_on_one_worker_keep_their_own_results() {
        let mut tc = TeamcityMessages::new();
        let mut out = String::new();
        for kind in [
            EventKind::task_started("a", "w1", 1),
            EventKind::task_started("b", "w1", 1),
            EventKind::task_completed("a", "w1", TaskOutcome::Failed, Duration::from_millis(5)),
            EventKind::task_completed("b", "w1", TaskOutcome::Passed, Duration::from_millis(7)),
        ] {
            out.push_str(&tc.on_event(&kind));
        }
        assert_eq!(
            replay(&out),
            Ok(vec![("a".to_owned(), "failed".to_owned())]),
            "{out}"
        );
        assert_eq!(out.matches("testRetrySupport").count(), 1, "{out}");
    }
}
