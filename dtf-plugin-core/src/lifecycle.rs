//! Checks a stream of events against the documented lifecycle (see [`crate::event`]).
//!
//! Reporters can use it to flag a publisher that emits events out of order; tests use it to
//! assert that a coordinator follows the rules.

use std::collections::HashMap;

use crate::event::{EventKind, RecoveryId, TaskId, WorkerId};

/// Where a task is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// `TaskCreated` seen.
    Created,
    /// `TaskAssigned` seen.
    Assigned,
    /// `TaskStarted` seen.
    Started,
    /// `TaskCompleted` seen (terminal).
    Completed,
    /// `TaskFailed` seen; terminal unless `retryable`.
    Failed {
        /// Whether a retry may follow.
        retryable: bool,
    },
    /// `TaskCancelled` seen (terminal).
    Cancelled,
}

impl TaskState {
    /// Whether no further event may follow for this task.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Cancelled | Self::Failed { retryable: false }
        )
    }
}

/// Where a worker is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Registered or recovered: in service.
    Active,
    /// `WorkerDisconnected` seen.
    Disconnected,
    /// `WorkerFailed` seen.
    Failed,
}

/// An event that breaks the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("follow the event lifecycle: {event} for `{id}` after {after}")]
pub struct LifecycleError {
    /// The offending event's hook name.
    pub event: String,
    /// The task, worker or recovery id.
    pub id: String,
    /// What was seen before (`nothing` when the id was unknown).
    pub after: String,
}

/// Tracks task, worker and recovery states across a stream of events.
#[derive(Debug, Default)]
pub struct LifecycleChecker {
    tasks: HashMap<TaskId, TaskState>,
    workers: HashMap<WorkerId, WorkerState>,
    recoveries: HashMap<RecoveryId, bool>,
}

impl LifecycleChecker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of a task, if seen.
    pub fn task(&self, id: &TaskId) -> Option<TaskState> {
        self.tasks.get(id).copied()
    }

    /// The state of a worker, if seen.
    pub fn worker(&self, id: &WorkerId) -> Option<WorkerState> {
        self.workers.get(id).copied()
    }

    /// Feeds one event; events other than task, worker and recovery events are ignored.
    ///
    /// # Errors
    ///
    /// [`LifecycleError`] if the event may not follow what was seen for its id. The state is
    /// left unchanged in that case.
    pub fn observe(&mut self, kind: &EventKind) -> Result<(), LifecycleError> {
        use TaskState as T;
        let err = |id: &str, after: String| LifecycleError {
            event: format!("{:?}", kind.hook()),
            id: id.to_owned(),
            after,
        };
        if let Some(task) = kind.task_id() {
            let prev = self.tasks.get(task).copied();
            let next = match (kind, prev) {
                (EventKind::TaskCreated(_), None) => T::Created,
                (
                    EventKind::TaskAssigned(_),
                    Some(T::Created | T::Assigned | T::Started | T::Failed { retryable: true }),
                ) => T::Assigned,
                (EventKind::TaskStarted(_), Some(T::Assigned)) => T::Started,
                (EventKind::TaskCompleted(_), Some(T::Started)) => T::Completed,
                (
                    EventKind::TaskFailed(f),
                    Some(T::Created | T::Assigned | T::Started | T::Failed { retryable: true }),
                ) => T::Failed {
                    retryable: f.retryable,
                },
                (
                    EventKind::TaskCancelled(_),
                    Some(T::Created | T::Assigned | T::Started | T::Failed { retryable: true }),
                ) => T::Cancelled,
                (_, prev) => {
                    let after = prev.map_or("nothing".to_owned(), |p| format!("{p:?}"));
                    return Err(err(task.as_str(), after));
                }
            };
            self.tasks.insert(task.clone(), next);
            return Ok(());
        }
        use WorkerState as W;
        let worker_event = |w: &WorkerId| (w.clone(), self.workers.get(w).copied());
        let (id, next) = match kind {
            EventKind::WorkerRegistered(p) => match worker_event(&p.worker) {
                (id, None | Some(W::Disconnected | W::Failed)) => (id, W::Active),
                (id, Some(prev)) => return Err(err(id.as_str(), format!("{prev:?}"))),
            },
            EventKind::WorkerDisconnected(p) => match worker_event(&p.worker) {
                (id, Some(W::Active)) => (id, W::Disconnected),
                (id, prev) => return Err(err(id.as_str(), format!("{prev:?}"))),
            },
            EventKind::WorkerFailed(p) => match worker_event(&p.worker) {
                (id, Some(W::Active | W::Disconnected)) => (id, W::Failed),
                (id, prev) => return Err(err(id.as_str(), format!("{prev:?}"))),
            },
            EventKind::WorkerRecovered(p) => match worker_event(&p.worker) {
                (id, Some(W::Disconnected | W::Failed)) => (id, W::Active),
                (id, prev) => return Err(err(id.as_str(), format!("{prev:?}"))),
            },
            EventKind::RecoveryStarted(p) => {
                if self.recoveries.contains_key(&p.recovery) {
                    return Err(err(p.recovery.as_str(), "RecoveryStarted".to_owned()));
                }
                self.recoveries.insert(p.recovery.clone(), false);
                return Ok(());
            }
            EventKind::RecoveryCompleted(p) => return self.end_recovery(&p.recovery, kind),
            EventKind::RecoveryFailed(p) => return self.end_recovery(&p.recovery, kind),
            _ => return Ok(()),
        };
        self.workers.insert(id, next);
        Ok(())
    }

    fn end_recovery(&mut self, id: &RecoveryId, kind: &EventKind) -> Result<(), LifecycleError> {
        match self.recoveries.get_mut(id) {
            Some(ended @ false) => {
                *ended = true;
                Ok(())
            }
            other => Err(LifecycleError {
                event: format!("{:?}", kind.hook()),
                id: id.to_string(),
                after: match other {
                    Some(_) => "its end".to_owned(),
                    None => "nothing".to_owned(),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::event::{Capabilities, TaskError, TaskOutcome};

    fn err() -> TaskError {
        TaskError::builder().kind("E").message("m").build()
    }

    #[test]
    fn accepts_a_full_task_life_with_a_retry() {
        let mut c = LifecycleChecker::new();
        let seq = [
            EventKind::task_created("t", "n"),
            EventKind::task_assigned("t", "w", 1),
            EventKind::task_started("t", "w", 1),
            EventKind::task_failed("t", err(), true),
            EventKind::task_assigned("t", "w2", 2),
            EventKind::task_started("t", "w2", 2),
            EventKind::task_completed("t", "w2", TaskOutcome::Passed, Duration::from_secs(1)),
        ];
        for k in &seq {
            c.observe(k).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(c.task(&"t".into()), Some(TaskState::Completed));
        assert!(TaskState::Completed.is_terminal());
    }

    #[test]
    fn rejects_events_after_a_terminal_state_and_before_creation() {
        let mut c = LifecycleChecker::new();
        let e = c
            .observe(&EventKind::task_started("x", "w", 1))
            .unwrap_err();
        assert_eq!(e.after, "nothing");
        c.observe(&EventKind::task_created("t", "n"))
            .unwrap_or_default();
        c.observe(&EventKind::task_cancelled("t", "user"))
            .unwrap_or_default();
        let e = c
            .observe(&EventKind::task_assigned("t", "w", 1))
            .unwrap_err();
        assert_eq!(e.after, "Cancelled");
        assert!(e.to_string().contains("`t`"), "{e}");
        // A retryable failure may turn final (e.g. no worker can take the retry)...
        c.observe(&EventKind::task_created("r", "n"))
            .unwrap_or_default();
        c.observe(&EventKind::task_failed("r", err(), true))
            .unwrap_or_default();
        c.observe(&EventKind::task_failed("r", err(), false))
            .unwrap_or_else(|e| panic!("{e}"));
        // ...and a non-retryable failure is terminal.
        c.observe(&EventKind::task_created("u", "n"))
            .unwrap_or_default();
        c.observe(&EventKind::task_failed("u", err(), false))
            .unwrap_or_default();
        assert!(c.observe(&EventKind::task_assigned("u", "w", 2)).is_err());
        // Completed requires Started.
        c.observe(&EventKind::task_created("v", "n"))
            .unwrap_or_default();
        assert!(
            c.observe(&EventKind::task_completed(
                "v",
                "w",
                TaskOutcome::Passed,
                Duration::ZERO
            ))
            .is_err()
        );
    }

    #[test]
    fn checks_workers_and_recoveries() {
        let mut c = LifecycleChecker::new();
        assert!(c.observe(&EventKind::worker_failed("w", "oom")).is_err());
        c.observe(&EventKind::worker_registered("w", Capabilities::default()))
            .unwrap_or_default();
        assert!(c.observe(&EventKind::worker_recovered("w")).is_err());
        c.observe(&EventKind::worker_failed("w", "oom"))
            .unwrap_or_default();
        assert_eq!(c.worker(&"w".into()), Some(WorkerState::Failed));
        c.observe(&EventKind::worker_recovered("w"))
            .unwrap_or_default();
        assert_eq!(c.worker(&"w".into()), Some(WorkerState::Active));

        assert!(c.observe(&EventKind::recovery_completed("r", 0)).is_err());
        c.observe(&EventKind::recovery_started("r", None, vec![]))
            .unwrap_or_default();
        assert!(
            c.observe(&EventKind::recovery_started("r", None, vec![]))
                .is_err()
        );
        c.observe(&EventKind::recovery_failed("r", "x"))
            .unwrap_or_default();
        assert!(c.observe(&EventKind::recovery_completed("r", 0)).is_err());
    }
}
