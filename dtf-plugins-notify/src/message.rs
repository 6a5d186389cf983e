//! The message model every channel renders: what one group of events amounts to.
//!
//! A [`Notification`] is channel-neutral: a title made of [`Span`]s (plain text and code, so
//! each channel can mark `TimeoutError` up its own way), a count, the first few events listed,
//! facts (key/value pairs) and a fingerprint for de-duplication.

use std::time::SystemTime;

use dtf_plugin_core::event::{Event, EventKind, Hook, ShutdownReason, TaskOutcome};
use serde::{Deserialize, Serialize};

/// How serious an event is. Ordered: `Routine < Info < Warning < Error < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Severity {
    /// Routine progress (task created/assigned/started/passed, worker registered).
    Routine,
    /// Worth knowing (coordinator start/stop, worker recovered, recovery completed).
    Info,
    /// Something went wrong but is being handled (retryable task failure, worker lost,
    /// recovery started, shutdown requested).
    Warning,
    /// A failure (task failed for good, test failed, worker failed, recovery failed, plugin
    /// failed, shutdown on error).
    Error,
    /// A part of the system is gone (plugin disabled).
    Critical,
}

impl Severity {
    /// The lowercase name (`"error"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routine => "routine",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
        }
    }
}

/// A piece of a title: plain text or code (an error type, a run id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "text", rename_all = "snake_case")]
pub enum Span {
    /// Plain text.
    Text(String),
    /// Code: rendered in a monospace font where the channel has one.
    Code(String),
}

/// One message: a group of similar events, ready to be rendered by a channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Notification {
    /// The kind of events grouped.
    pub kind: Hook,
    /// The highest severity among them.
    pub severity: Severity,
    /// The group key (e.g. `task_failed/TimeoutError/w3`).
    pub group_key: String,
    /// A stable hash of the error (kind + normalized error type or message), for
    /// de-duplication across messages and runs (JIRA label `dtf-fp-<fingerprint>`).
    pub fingerprint: String,
    /// The headline, e.g. "12 tasks failed with `TimeoutError` on worker w3".
    pub title: Vec<Span>,
    /// Events in this message.
    pub count: u64,
    /// The first few events, one line each.
    pub items: Vec<String>,
    /// Events in this message not listed in `items`.
    pub more: u64,
    /// Key/value facts (worker, error type, first message, run).
    pub facts: Vec<(String, String)>,
    /// The first event's longer text (error message, details), if any.
    pub detail: Option<String>,
    /// When the first event of this message was published.
    #[serde(with = "unix_ms")]
    pub first_seen: SystemTime,
    /// When the last event of this message was published.
    #[serde(with = "unix_ms")]
    pub last_seen: SystemTime,
    /// 1 for the first message of its group, then 2, 3, …
    pub sequence: u64,
}

impl Notification {
    /// The title as plain text, code in backticks.
    pub fn title_plain(&self) -> String {
        self.title
            .iter()
            .map(|s| match s {
                Span::Text(t) => t.clone(),
                Span::Code(c) => format!("`{c}`"),
            })
            .collect()
    }

    /// The title with code spans as plain text (for fields that have no markup).
    pub fn title_text(&self) -> String {
        self.title
            .iter()
            .map(|s| match s {
                Span::Text(t) | Span::Code(t) => t.as_str(),
            })
            .collect()
    }

    /// "… and 7 more" when events were left out of the list.
    pub fn more_line(&self) -> Option<String> {
        (self.more > 0).then(|| format!("… and {} more", self.more))
    }
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub(super) fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        s.serialize_u128(ms)
    }
}

/// What the pipeline needs to know about one event: its severity, grouping parts, and the line
/// it contributes to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventInfo {
    pub(crate) hook: Hook,
    pub(crate) severity: Severity,
    /// The error classification (`TaskError::kind`), when the event has one.
    pub(crate) error_type: Option<String>,
    /// The worker concerned, if any.
    pub(crate) worker: Option<String>,
    /// The task concerned, if any.
    pub(crate) task: Option<String>,
    /// Another subject (recovery id, plugin name, run id, custom event name).
    pub(crate) subject: Option<String>,
    /// The line listed in a message.
    pub(crate) item: String,
    /// Longer text (an error message).
    pub(crate) detail: Option<String>,
    pub(crate) time: SystemTime,
}

impl EventInfo {
    /// Extracts the notification-relevant facts of `event`.
    pub(crate) fn of(event: &Event) -> Self {
        let mut info = Self {
            hook: event.hook(),
            severity: Severity::Routine,
            error_type: None,
            worker: event.kind.worker_id().map(|w| w.to_string()),
            task: event.kind.task_id().map(|t| t.to_string()),
            subject: None,
            item: String::new(),
            detail: None,
            time: event.meta.time,
        };
        match &event.kind {
            EventKind::CoordinatorStartup(e) => {
                info.severity = Severity::Info;
                info.subject = Some(e.run_id.clone());
                info.item = format!("run {}", e.run_id);
            }
            EventKind::CoordinatorShutdown(e) => {
                let (sev, text) = match &e.reason {
                    ShutdownReason::Completed => (Severity::Info, "completed".to_owned()),
                    ShutdownReason::Requested => (Severity::Warning, "requested".to_owned()),
                    ShutdownReason::TimedOut => (Severity::Error, "timed out".to_owned()),
                    ShutdownReason::Error(m) => (Severity::Error, format!("error: {m}")),
                    _ => (Severity::Warning, "other".to_owned()),
                };
                info.severity = sev;
                info.subject = Some(text.clone());
                info.item = format!("shutdown: {text}");
            }
            EventKind::TaskFailed(e) => {
                info.severity = if e.retryable {
                    Severity::Warning
                } else {
                    Severity::Error
                };
                info.error_type = Some(e.error.kind.clone());
                info.item = format!(
                    "{} (attempt {}): {}",
                    e.task,
                    e.attempt,
                    first_line(&e.error.message)
                );
                info.detail = Some(if e.error.details.is_empty() {
                    e.error.message.clone()
                } else {
                    format!("{}\n{}", e.error.message, e.error.details)
                });
            }
            EventKind::TaskCompleted(e) => {
                info.severity = if e.outcome == TaskOutcome::Failed {
                    Severity::Error
                } else {
                    Severity::Routine
                };
                let outcome = match e.outcome {
                    TaskOutcome::Passed => "passed",
                    TaskOutcome::Failed => "failed",
                    TaskOutcome::Skipped => "skipped",
                    _ => "finished",
                };
                info.subject = Some(outcome.to_owned());
                info.item = format!("{} {outcome} in {:.1?}", e.task, e.duration);
                if !e.output.is_empty() {
                    info.detail = Some(e.output.clone());
                }
            }
            EventKind::TaskCancelled(e) => {
                info.item = format!("{} cancelled: {}", e.task, first_line(&e.reason));
            }
            EventKind::WorkerDisconnected(e) => {
                info.severity = Severity::Warning;
                info.item = format!("{} disconnected: {}", e.worker, first_line(&e.reason));
                info.detail = Some(e.reason.clone());
            }
            EventKind::WorkerFailed(e) => {
                info.severity = Severity::Error;
                info.item = format!("{} failed: {}", e.worker, first_line(&e.error));
                info.detail = Some(e.error.clone());
                info.error_type = Some(normalize(&e.error));
            }
            EventKind::WorkerRecovered(e) => {
                info.severity = Severity::Info;
                info.item = format!("{} recovered", e.worker);
            }
            EventKind::RecoveryStarted(e) => {
                info.severity = Severity::Warning;
                info.subject = Some(e.recovery.to_string());
                info.worker = e.worker.as_ref().map(|w| w.to_string());
                info.item = format!("{} started ({} tasks)", e.recovery, e.tasks.len());
            }
            EventKind::RecoveryCompleted(e) => {
                info.severity = Severity::Info;
                info.subject = Some(e.recovery.to_string());
                info.item = format!("{} completed: {} tasks re-queued", e.recovery, e.requeued);
            }
            EventKind::RecoveryFailed(e) => {
                info.severity = Severity::Error;
                info.subject = Some(e.recovery.to_string());
                info.item = format!("{} failed: {}", e.recovery, first_line(&e.error));
                info.detail = Some(e.error.clone());
                info.error_type = Some(normalize(&e.error));
            }
            EventKind::PluginFailed(e) => {
                info.severity = Severity::Error;
                info.subject = Some(e.plugin.clone());
                info.item = format!("{} failed: {}", e.plugin, first_line(&e.error));
                info.detail = Some(e.error.clone());
            }
            EventKind::PluginDisabled(e) => {
                info.severity = Severity::Critical;
                info.subject = Some(e.plugin.clone());
                info.item = format!("{} disabled: {}", e.plugin, first_line(&e.reason));
            }
            EventKind::Custom(e) => {
                info.severity = Severity::Info;
                info.subject = Some(e.name.clone());
                info.item = format!("{}: {}", e.name, e.payload);
            }
            other => {
                info.item = match (other.task_id(), other.worker_id()) {
                    (Some(t), Some(w)) => format!("{t} on {w}"),
                    (Some(t), None) => t.to_string(),
                    (None, Some(w)) => w.to_string(),
                    (None, None) => hook_name(info.hook).to_owned(),
                };
            }
        }
        info
    }

    /// The fingerprint of the error: event kind plus the error type (or the subject for
    /// events without one), FNV-1a hashed, 16 hex digits. Task ids, attempt numbers and
    /// workers are left out, so a recurring failure keeps its fingerprint across runs.
    pub(crate) fn fingerprint(&self) -> String {
        let basis = format!(
            "{}|{}",
            hook_name(self.hook),
            self.error_type
                .as_deref()
                .or(self.subject.as_deref())
                .unwrap_or("")
        );
        format!("{:016x}", fnv1a(basis.as_bytes()))
    }
}

/// The snake_case name of a hook (`task_failed`), as in configurations.
pub(crate) fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::CoordinatorStartup => "coordinator_startup",
        Hook::CoordinatorShutdown => "coordinator_shutdown",
        Hook::TaskCreated => "task_created",
        Hook::TaskAssigned => "task_assigned",
        Hook::TaskStarted => "task_started",
        Hook::TaskCompleted => "task_completed",
        Hook::TaskFailed => "task_failed",
        Hook::TaskCancelled => "task_cancelled",
        Hook::WorkerRegistered => "worker_registered",
        Hook::WorkerDisconnected => "worker_disconnected",
        Hook::WorkerFailed => "worker_failed",
        Hook::WorkerRecovered => "worker_recovered",
        Hook::RecoveryStarted => "recovery_started",
        Hook::RecoveryCompleted => "recovery_completed",
        Hook::RecoveryFailed => "recovery_failed",
        Hook::Custom => "custom",
        Hook::PluginStarted => "plugin_started",
        Hook::PluginFailed => "plugin_failed",
        Hook::PluginRestarted => "plugin_restarted",
        Hook::PluginDisabled => "plugin_disabled",
        Hook::PluginRemoved => "plugin_removed",
        _ => "event",
    }
}

/// The headline for `count` events like `first`, of `tasks` distinct tasks and `workers`
/// distinct workers (a worker is named only when there is one).
pub(crate) fn title(first: &EventInfo, count: u64, tasks: u64, workers: u64) -> Vec<Span> {
    let t = |s: String| Span::Text(s);
    let on_worker = |w: &Option<String>| {
        w.as_ref()
            .filter(|_| workers <= 1)
            .map(|w| format!(" on worker {w}"))
            .unwrap_or_default()
    };
    let many = count > 1;
    let subject = first.subject.clone().unwrap_or_default();
    match first.hook {
        Hook::TaskFailed => {
            let task = first.task.clone().unwrap_or_default();
            // Attempts are not tasks: a test that failed three times (then perhaps passed on
            // a retry) is not three failed tasks.
            let head = match (many, tasks) {
                (false, _) => format!("Task {task} failed with "),
                (true, 1) => format!("Task {task} failed {count} times with "),
                (true, n) if n >= count || n == 0 => format!("{count} tasks failed with "),
                (true, n) => format!("{count} failures of {n} tasks with "),
            };
            vec![
                t(head),
                Span::Code(first.error_type.clone().unwrap_or_default()),
                t(on_worker(&first.worker)),
            ]
        }
        Hook::TaskCompleted => {
            let head = if many {
                format!("{count} tasks {subject}")
            } else {
                format!("Task {} {subject}", first.task.clone().unwrap_or_default())
            };
            vec![t(format!("{head}{}", on_worker(&first.worker)))]
        }
        Hook::WorkerFailed | Hook::WorkerDisconnected | Hook::WorkerRecovered => {
            let verb = match first.hook {
                Hook::WorkerFailed => "failed",
                Hook::WorkerDisconnected => "disconnected",
                _ => "recovered",
            };
            let times = |n: u64| {
                if n > 1 {
                    format!(" ({n} times)")
                } else {
                    String::new()
                }
            };
            if tasks > 1 {
                // Workers here: the group spans them.
                let extra = if count > tasks {
                    times(count)
                } else {
                    String::new()
                };
                vec![t(format!("{tasks} workers {verb}{extra}"))]
            } else {
                vec![t(format!(
                    "Worker {} {verb}{}",
                    first.worker.clone().unwrap_or_default(),
                    times(count)
                ))]
            }
        }
        Hook::RecoveryStarted | Hook::RecoveryCompleted | Hook::RecoveryFailed => {
            let verb = match first.hook {
                Hook::RecoveryStarted => "started",
                Hook::RecoveryCompleted => "completed",
                _ => "failed",
            };
            if many {
                // The group spans workers (and recoveries).
                vec![t(format!("{count} recoveries {verb}"))]
            } else {
                vec![t(format!(
                    "Recovery {subject} {verb}{}",
                    on_worker(&first.worker)
                ))]
            }
        }
        Hook::CoordinatorStartup => vec![
            t("Coordinator started run ".to_owned()),
            Span::Code(subject),
        ],
        Hook::CoordinatorShutdown => vec![t(format!("Coordinator shutting down ({subject})"))],
        Hook::PluginFailed | Hook::PluginDisabled => {
            let verb = if first.hook == Hook::PluginFailed {
                "failed"
            } else {
                "was disabled"
            };
            let times = if many {
                format!(" ({count} times)")
            } else {
                String::new()
            };
            vec![
                t("Plugin ".to_owned()),
                Span::Code(subject),
                t(format!(" {verb}{times}")),
            ]
        }
        Hook::Custom => vec![
            t("Event ".to_owned()),
            Span::Code(subject),
            t(if many {
                format!(" ({count} times)")
            } else {
                String::new()
            }),
        ],
        other => vec![t(format!("{count} × {}", hook_name(other)))],
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Replaces runs of digits with `#` so "timed out after 31 s" and "after 30 s" share a
/// fingerprint and a group.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(120));
    let mut in_digits = false;
    for c in first_line(s).chars().take(120) {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    out
}

/// 64-bit FNV-1a: stable across Rust versions and processes (unlike `DefaultHasher`), which a
/// fingerprint stored in JIRA needs.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtf_plugin_core::event::{EventMeta, TaskError};
    use std::sync::Arc;

    pub(crate) fn ev(kind: EventKind) -> Event {
        Event {
            meta: EventMeta {
                seq: 1,
                time: SystemTime::UNIX_EPOCH,
                source: Arc::from("test"),
            },
            kind,
        }
    }

    fn failed(task: &str, kind: &str, worker: &str) -> Event {
        let mut k = EventKind::task_failed(
            task,
            TaskError::builder().kind(kind).message("boom 42").build(),
            false,
        );
        if let EventKind::TaskFailed(f) = &mut k {
            f.worker = Some(worker.into());
        }
        ev(k)
    }

    #[test]
    fn task_failures_name_count_error_type_and_worker() {
        let info = EventInfo::of(&failed("t1", "TimeoutError", "w3"));
        assert_eq!(info.severity, Severity::Error);
        let title = title(&info, 12, 12, 1);
        let n = Notification {
            kind: Hook::TaskFailed,
            severity: Severity::Error,
            group_key: String::new(),
            fingerprint: info.fingerprint(),
            title,
            count: 12,
            items: vec![],
            more: 0,
            facts: vec![],
            detail: None,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            sequence: 1,
        };
        assert_eq!(
            n.title_plain(),
            "12 tasks failed with `TimeoutError` on worker w3"
        );
        assert_eq!(info.item, "t1 (attempt 1): boom 42");
        assert_eq!(
            title_of(&failed("t9", "X", "w1"), 1),
            "Task t9 failed with `X` on worker w1"
        );
        // Attempts are not tasks.
        let plain = |count, tasks| {
            super::title(&info, count, tasks, 1)
                .iter()
                .map(|s| match s {
                    Span::Text(t) | Span::Code(t) => t.clone(),
                })
                .collect::<String>()
        };
        assert_eq!(
            plain(3, 1),
            "Task t1 failed 3 times with TimeoutError on worker w3"
        );
        assert_eq!(
            plain(5, 2),
            "5 failures of 2 tasks with TimeoutError on worker w3"
        );
    }

    fn title_of(e: &Event, n: u64) -> String {
        title(&EventInfo::of(e), n, n, 1)
            .iter()
            .map(|s| match s {
                Span::Text(t) => t.clone(),
                Span::Code(c) => format!("`{c}`"),
            })
            .collect()
    }

    #[test]
    fn fingerprint_ignores_task_and_worker_but_not_the_error_type() {
        let a = EventInfo::of(&failed("t1", "TimeoutError", "w3")).fingerprint();
        let b = EventInfo::of(&failed("t2", "TimeoutError", "w7")).fingerprint();
        let c = EventInfo::of(&failed("t1", "AssertionError", "w3")).fingerprint();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 16);
        let w1 = EventInfo::of(&ev(EventKind::worker_failed("w1", "oom after 31 s")));
        let w2 = EventInfo::of(&ev(EventKind::worker_failed("w2", "oom after 30 s")));
        assert_eq!(w1.fingerprint(), w2.fingerprint());
    }

    #[test]
    fn severities_follow_the_issue_defaults() {
        assert_eq!(
            EventInfo::of(&ev(EventKind::task_created("t", "n"))).severity,
            Severity::Routine
        );
        assert_eq!(
            EventInfo::of(&ev(EventKind::worker_disconnected("w", "gone"))).severity,
            Severity::Warning
        );
        assert_eq!(
            EventInfo::of(&ev(EventKind::recovery_failed("r", "x"))).severity,
            Severity::Error
        );
        assert_eq!(
            EventInfo::of(&ev(EventKind::coordinator_startup("run-1"))).severity,
            Severity::Info
        );
        assert!(Severity::Routine < Severity::Info && Severity::Error < Severity::Critical);
    }
}
