//! TeamCity service messages: `##teamcity[testStarted …]` and friends.
//!
//! [`render_teamcity`] writes the whole run after the fact; [`TeamcityMessages`] turns events
//! into messages as they arrive, which the [`crate::TeamcityLive`] plugin writes so the build
//! page shows progress. Each worker is its own `flowId`, so parallel tests do not interleave.

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
/// `testFinished` with the duration in milliseconds. A retried test therefore appears once
/// per attempt (TeamCity's own retry handling marks it flaky). Attempts that never finished
/// are reported as failed with the message `did not finish`.
pub fn render_teamcity(run: &RunResult) -> String {
    let mut out = String::new();
    for task in &run.tasks {
        if task.attempts.is_empty() {
            if let Some(reason) = &task.cancel_reason {
                out.push_str(&ignored(&task.name, "dtf", &format!("cancelled: {reason}")));
            }
            continue;
        }
        for a in &task.attempts {
            let flow = a.worker.as_deref().unwrap_or("dtf");
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
/// It remembers task names from `TaskCreated` and which tasks have an open `testStarted`
/// (and on which flow), so that a `TaskFailed` without a worker, a `TaskCancelled` or a lost
/// worker still closes the right test.
#[derive(Debug, Default)]
pub struct TeamcityMessages {
    names: HashMap<TaskId, String>,
    open: HashMap<TaskId, String>,
}

impl TeamcityMessages {
    /// No tasks known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages `kind` calls for (possibly none), each a line ending in `\n`.
    pub fn on_event(&mut self, kind: &EventKind) -> String {
        let mut out = String::new();
        match kind {
            EventKind::TaskCreated(c) => {
                self.names.insert(c.task.clone(), c.name.clone());
            }
            EventKind::TaskStarted(s) => {
                let name = self.name(&s.task);
                if let Some(flow) = self.open.remove(&s.task) {
                    out.push_str(&failed(
                        &name,
                        &flow,
                        "worker lost; the task was re-assigned",
                        "",
                    ));
                    out.push_str(&finished(&name, &flow, Duration::ZERO));
                }
                out.push_str(&started(&name, s.worker.as_str()));
                self.open.insert(s.task.clone(), s.worker.0.clone());
            }
            EventKind::TaskCompleted(c) => {
                let name = self.name(&c.task);
                let flow = self
                    .open
                    .remove(&c.task)
                    .unwrap_or_else(|| c.worker.0.clone());
                match c.outcome {
                    TaskOutcome::Passed => {}
                    TaskOutcome::Skipped => out.push_str(&ignored(&name, &flow, "skipped")),
                    _ => out.push_str(&failed(
                        &name,
                        &flow,
                        "the test reported failure",
                        &c.output,
                    )),
                }
                out.push_str(&finished(&name, &flow, c.duration));
            }
            EventKind::TaskFailed(f) => {
                let name = self.name(&f.task);
                let flow = self
                    .open
                    .remove(&f.task)
                    .or_else(|| f.worker.as_ref().map(|w| w.0.clone()))
                    .unwrap_or_else(|| "dtf".to_owned());
                let msg = format!("{}: {}", f.error.kind, f.error.message);
                out.push_str(&failed(&name, &flow, &msg, &f.error.details));
                out.push_str(&finished(&name, &flow, Duration::ZERO));
            }
            EventKind::TaskCancelled(c) => {
                let name = self.name(&c.task);
                let reason = format!("cancelled: {}", c.reason);
                match self.open.remove(&c.task) {
                    Some(flow) => {
                        out.push_str(&ignored(&name, &flow, &reason));
                        out.push_str(&finished(&name, &flow, Duration::ZERO));
                    }
                    None => out.push_str(&ignored(&name, "dtf", &reason)),
                }
            }
            _ => {}
        }
        out
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
            "##teamcity[testStarted name='suite::it|'s' captureStandardOutput='false' flowId='w1']\n"
        );
        assert_eq!(
            tc.on_event(&EventKind::task_completed(
                "t",
                "w1",
                TaskOutcome::Passed,
                Duration::from_millis(1234)
            )),
            "##teamcity[testFinished name='suite::it|'s' duration='1234' flowId='w1']\n"
        );
        assert_eq!(
            tc.on_event(&EventKind::task_cancelled("u", "stop")),
            "##teamcity[testIgnored name='u' message='cancelled: stop' flowId='dtf']\n"
        );
    }
}
