//! The filter stage: which events notify on a channel.
//!
//! Per channel: a set of event kinds (`events`, snake_case hook names) and a minimum
//! [`Severity`]. Defaults: failures (task failed, test failed, worker failed, recovery failed,
//! plugin failed/disabled), worker loss and return, recovery, and coordinator start/stop are
//! on; routine task events (created, assigned, started, passed, skipped) are off — passed and
//! skipped completions are `routine`, below the default minimum `info`.

use dtf_plugin_core::event::{Hook, HookSet};
use serde::Deserialize;

use crate::error::NotifyError;
use crate::message::{EventInfo, Severity};

/// The event kinds a channel notifies about unless configured otherwise.
pub const DEFAULT_EVENTS: HookSet = HookSet::EMPTY
    .with(Hook::CoordinatorStartup)
    .with(Hook::CoordinatorShutdown)
    .with(Hook::TaskCompleted)
    .with(Hook::TaskFailed)
    .with(Hook::WorkerDisconnected)
    .with(Hook::WorkerFailed)
    .with(Hook::WorkerRecovered)
    .with(Hook::RecoveryStarted)
    .with(Hook::RecoveryCompleted)
    .with(Hook::RecoveryFailed)
    .with(Hook::PluginFailed)
    .with(Hook::PluginDisabled);

/// The error events a JIRA channel files issues for by default (with minimum severity
/// `error`, so retryable task failures are left out).
pub const ERROR_EVENTS: HookSet = HookSet::EMPTY
    .with(Hook::TaskFailed)
    .with(Hook::WorkerFailed)
    .with(Hook::RecoveryFailed);

/// A channel's `filter` key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FilterConfig {
    /// Event kinds to notify about (`["task_failed", "worker_failed"]`). Default: the
    /// channel's defaults ([`DEFAULT_EVENTS`]; [`ERROR_EVENTS`] for JIRA).
    pub events: Option<Vec<Hook>>,
    /// Least severity to notify about. Default `info` (`error` for JIRA).
    pub min_severity: Option<Severity>,
}

/// The compiled filter of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    hooks: HookSet,
    min_severity: Severity,
}

impl Filter {
    /// Compiles `config` over the channel's defaults; `key` names it in errors.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Config`] for an empty `events` list (the channel would never notify).
    pub fn new(
        config: &FilterConfig,
        default_events: HookSet,
        default_severity: Severity,
        key: &str,
    ) -> Result<Self, NotifyError> {
        let hooks = match &config.events {
            Some(list) if list.is_empty() => {
                return Err(NotifyError::config(
                    format!("{key}.events"),
                    "empty list: the channel would never notify (remove the channel instead)",
                ));
            }
            Some(list) => list.iter().copied().collect(),
            None => default_events,
        };
        Ok(Self {
            hooks,
            min_severity: config.min_severity.unwrap_or(default_severity),
        })
    }

    /// Whether the event notifies on this channel.
    pub(crate) fn accepts(&self, info: &EventInfo) -> bool {
        self.hooks.contains(info.hook) && info.severity >= self.min_severity
    }

    /// The hooks the channel wants.
    pub fn hooks(&self) -> HookSet {
        self.hooks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtf_plugin_core::event::{Event, EventKind, EventMeta, TaskError, TaskOutcome};
    use std::time::{Duration, SystemTime};

    fn info(kind: EventKind) -> EventInfo {
        EventInfo::of(&Event {
            meta: EventMeta {
                seq: 1,
                time: SystemTime::UNIX_EPOCH,
                source: "t".into(),
            },
            kind,
        })
    }

    #[test]
    fn defaults_notify_failures_loss_recovery_and_coordinator_but_not_routine_task_events() {
        let f = Filter::new(
            &FilterConfig::default(),
            DEFAULT_EVENTS,
            Severity::Info,
            "f",
        )
        .unwrap();
        let err = TaskError::builder().kind("E").message("m").build();
        assert!(f.accepts(&info(EventKind::task_failed("t", err.clone(), false))));
        assert!(f.accepts(&info(EventKind::task_failed("t", err.clone(), true))));
        assert!(f.accepts(&info(EventKind::worker_disconnected("w", "lost"))));
        assert!(f.accepts(&info(EventKind::recovery_completed("r", 3))));
        assert!(f.accepts(&info(EventKind::coordinator_startup("run"))));
        assert!(f.accepts(&info(EventKind::task_completed(
            "t",
            "w",
            TaskOutcome::Failed,
            Duration::ZERO
        ))));
        assert!(!f.accepts(&info(EventKind::task_completed(
            "t",
            "w",
            TaskOutcome::Passed,
            Duration::ZERO
        ))));
        assert!(!f.accepts(&info(EventKind::task_created("t", "n"))));
        assert!(!f.accepts(&info(EventKind::task_started("t", "w", 1))));
        // JIRA's defaults: final failures only.
        let j = Filter::new(&FilterConfig::default(), ERROR_EVENTS, Severity::Error, "f").unwrap();
        assert!(j.accepts(&info(EventKind::task_failed("t", err.clone(), false))));
        assert!(!j.accepts(&info(EventKind::task_failed("t", err, true))));
        assert!(!j.accepts(&info(EventKind::worker_disconnected("w", "lost"))));
    }

    #[test]
    fn configured_events_and_severity_replace_the_defaults_and_empty_is_refused() {
        let cfg = FilterConfig {
            events: Some(vec![Hook::TaskCreated]),
            min_severity: Some(Severity::Routine),
        };
        let f = Filter::new(&cfg, DEFAULT_EVENTS, Severity::Info, "f").unwrap();
        assert!(f.accepts(&info(EventKind::task_created("t", "n"))));
        assert!(!f.accepts(&info(EventKind::worker_failed("w", "x"))));
        let empty = FilterConfig {
            events: Some(vec![]),
            min_severity: None,
        };
        let e =
            Filter::new(&empty, DEFAULT_EVENTS, Severity::Info, "channels[1].filter").unwrap_err();
        assert!(e.to_string().contains("channels[1].filter.events"), "{e}");
    }
}
