//! The crate's error type. Messages are lowercase fragments that read after "failed to …".

use dtf_plugin_core::event::{Requirements, TaskId, WorkerId};

/// Something the scheduler could not do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// No scheduler is registered under this name.
    #[error("build scheduler `{name}`: no scheduler has this name (available: {available})")]
    UnknownScheduler {
        /// The name asked for.
        name: String,
        /// The registered names, comma-separated.
        available: String,
    },
    /// A scheduler with this name is already registered.
    #[error("register scheduler `{0}`: a scheduler with this name already exists")]
    DuplicateScheduler(String),
    /// A configuration value is out of range.
    #[error("configure scheduler: `{key}` {problem}")]
    InvalidConfig {
        /// The configuration key (e.g. `weights.alice`).
        key: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// A task with this id is already waiting or running.
    #[error("submit task `{0}`: a task with this id is already waiting or running")]
    DuplicateTask(TaskId),
    /// No waiting or running task has this id.
    #[error("find task `{0}`: no waiting or running task has this id")]
    UnknownTask(TaskId),
    /// No worker with this id was ever registered.
    #[error("find worker `{0}`: no worker with this id was registered")]
    UnknownWorker(WorkerId),
    /// No worker the scheduler has seen can satisfy the task's requirements.
    #[error(
        "schedule task `{task}`: no registered worker satisfies its requirements ({requirements})"
    )]
    Unschedulable {
        /// The task.
        task: TaskId,
        /// Its requirements, rendered.
        requirements: String,
    },
    /// A generated workload's parameters make no sense.
    #[error("generate workload: {0}")]
    InvalidWorkload(String),
}

impl SchedulerError {
    /// The error reported for a task no known worker can run.
    pub fn unschedulable(task: &TaskId, requirements: &Requirements) -> Self {
        Self::Unschedulable {
            task: task.clone(),
            requirements: describe(requirements),
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidConfig {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Renders requirements for messages: `cpu_cores >= 4, memory_mib >= 0, features [cuda]`.
fn describe(req: &Requirements) -> String {
    format!(
        "cpu_cores >= {}, memory_mib >= {}, features [{}]",
        req.cpu_cores,
        req.memory_mib,
        req.features.join(", ")
    )
}
