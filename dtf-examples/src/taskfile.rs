//! Tasks the reference coordinator runs: shell commands from a TOML file or the command
//! line, or simulated tasks.
//!
//! ```toml
//! [defaults]            # optional; every key optional
//! timeout_secs = 60.0   # per attempt; default 60
//! retries = 0           # extra attempts after a failure; default 0, at most 100
//! owner = ""            # the tenant fair-share schedulers group by; default none
//!
//! [[task]]
//! id = "unit"                  # optional; default "task-<n>" (1-based)
//! name = "unit tests"          # optional; default the id
//! command = "cargo test --lib" # required; run with `sh -c`
//! timeout_secs = 600.0         # optional; default from [defaults]
//! retries = 1                  # optional
//! owner = "alice"              # optional
//! priority = 0                 # optional; higher runs first
//! ```

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::CoordinatorError;

/// The most retries a task may have (`--retries`, `retries` in a task file): a task that
/// fails this often is failing, and a larger number would keep a worker busy for nothing.
pub const MAX_RETRIES: u32 = 100;

/// What a task does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskKind {
    /// A shell command, run with `sh -c`.
    Shell(String),
    /// A simulated task: sleeps for `duration`, and fails its first `fail_attempts` attempts.
    Simulated {
        /// How long each attempt takes.
        duration: Duration,
        /// How many attempts fail before one passes (`u32::MAX`: never passes).
        fail_attempts: u32,
    },
}

/// One task of a run. It travels to remote workers as JSON ([`crate::remote`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskDef {
    /// Unique id.
    pub id: String,
    /// Human-readable name (JUnit test name).
    pub name: String,
    /// What it does.
    pub kind: TaskKind,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Extra attempts after a failure (0: one attempt in all).
    pub retries: u32,
    /// Tenant.
    pub owner: String,
    /// Scheduling priority; higher runs first.
    pub priority: i32,
}

impl TaskDef {
    /// A shell task `id` running `command`, with a 60 s timeout, no retries, no owner.
    pub fn shell(id: impl Into<String>, command: impl Into<String>) -> Self {
        let id = id.into();
        Self {
            name: id.clone(),
            id,
            kind: TaskKind::Shell(command.into()),
            timeout: Duration::from_secs(60),
            retries: 0,
            owner: String::new(),
            priority: 0,
        }
    }

    /// Sets the name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the per-attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the number of retries.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the owner.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    task: Vec<RawTask>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    timeout_secs: Option<f64>,
    retries: Option<u32>,
    owner: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: Option<String>,
    name: Option<String>,
    command: String,
    timeout_secs: Option<f64>,
    retries: Option<u32>,
    owner: Option<String>,
    #[serde(default)]
    priority: i32,
}

/// Reads a task file (format in the [module docs](self)).
///
/// # Errors
///
/// [`CoordinatorError::TaskFile`] naming the file and, for syntax and type errors, the line
/// and column; for bad values, the key (`task[2].timeout_secs`).
pub fn load_task_file(path: &Path) -> Result<Vec<TaskDef>, CoordinatorError> {
    let text = std::fs::read_to_string(path).map_err(|e| CoordinatorError::TaskFile {
        path: path.to_owned(),
        message: format!("read: {e}"),
    })?;
    parse_tasks(&text).map_err(|message| CoordinatorError::TaskFile {
        path: path.to_owned(),
        message,
    })
}

/// Parses the text of a task file; the error is a message without the file name.
pub fn parse_tasks(text: &str) -> Result<Vec<TaskDef>, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let d = raw.defaults;
    let default_timeout = check_timeout(d.timeout_secs.unwrap_or(60.0), "defaults.timeout_secs")?;
    let mut seen = HashSet::new();
    let mut tasks = Vec::with_capacity(raw.task.len());
    for (i, t) in raw.task.into_iter().enumerate() {
        let key = format!("task[{}]", i + 1);
        if t.command.trim().is_empty() {
            return Err(format!("{key}.command: must not be empty"));
        }
        let id = t.id.unwrap_or_else(|| format!("task-{}", i + 1));
        if id.is_empty() {
            return Err(format!("{key}.id: must not be empty"));
        }
        if !seen.insert(id.clone()) {
            return Err(format!("{key}.id: `{id}` is used by an earlier task"));
        }
        let retries = t.retries.or(d.retries).unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(format!(
                "{key}.retries: must be at most {MAX_RETRIES}, got {retries}"
            ));
        }
        let timeout = match t.timeout_secs {
            Some(s) => check_timeout(s, &format!("{key}.timeout_secs"))?,
            None => default_timeout,
        };
        tasks.push(TaskDef {
            name: t.name.unwrap_or_else(|| id.clone()),
            id,
            kind: TaskKind::Shell(t.command),
            timeout,
            retries,
            owner: t.owner.or_else(|| d.owner.clone()).unwrap_or_default(),
            priority: t.priority,
        });
    }
    Ok(tasks)
}

fn check_timeout(secs: f64, key: &str) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 * 7.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "{key}: must be a number of seconds above 0 and at most a week, got {secs}"
        ))
    }
}

/// `n` simulated tasks with deterministic durations (20–100 ms) and results: every 7th task
/// fails once and passes on its retry (flaky), every 11th fails every attempt; each has one
/// retry. Owners rotate over `team-a`, `team-b`, `team-c`.
pub fn simulated_tasks(n: u32) -> Vec<TaskDef> {
    (1..=n)
        .map(|i| {
            let fail_attempts = if i % 11 == 0 {
                u32::MAX
            } else if i % 7 == 0 {
                1
            } else {
                0
            };
            TaskDef {
                id: format!("sim-{i}"),
                name: format!("simulated::test_{i:03}"),
                kind: TaskKind::Simulated {
                    duration: Duration::from_millis(20 + u64::from(i * 37 % 80)),
                    fail_attempts,
                },
                timeout: Duration::from_secs(10),
                retries: 1,
                owner: ["team-a", "team-b", "team-c"][(i % 3) as usize].to_owned(),
                priority: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn parses_defaults_and_overrides() {
        let tasks = parse_tasks(
            r#"
            [defaults]
            timeout_secs = 2.5
            retries = 1
            owner = "ci"

            [[task]]
            command = "true"

            [[task]]
            id = "lint"
            name = "clippy"
            command = "cargo clippy"
            timeout_secs = 30
            retries = 0
            owner = "alice"
            priority = 5
            "#,
        )
        .unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].id, "task-1");
        assert_eq!(tasks[0].name, "task-1");
        assert_eq!(tasks[0].timeout, Duration::from_millis(2500));
        assert_eq!((tasks[0].retries, tasks[0].owner.as_str()), (1, "ci"));
        assert_eq!(tasks[1].kind, TaskKind::Shell("cargo clippy".into()));
        assert_eq!(
            (tasks[1].name.as_str(), tasks[1].retries, tasks[1].priority),
            ("clippy", 0, 5)
        );
        assert_eq!(tasks[1].timeout, Duration::from_secs(30));
    }

    #[test]
    fn errors_name_the_key_and_position() {
        let err = parse_tasks("[[task]]\ncommand = \"x\"\ntimeout = 3\n").unwrap_err();
        assert!(
            err.contains("line 3") && err.contains("unknown field `timeout`"),
            "{err}"
        );
        let err = parse_tasks("[[task]]\ncommand = \"x\"\ntimeout_secs = -1\n").unwrap_err();
        assert!(err.starts_with("task[1].timeout_secs: must be"), "{err}");
        let err = parse_tasks(
            "[[task]]\nid = \"a\"\ncommand = \"x\"\n[[task]]\nid = \"a\"\ncommand = \"y\"\n",
        )
        .unwrap_err();
        assert_eq!(err, "task[2].id: `a` is used by an earlier task");
        let err =
            parse_tasks("[defaults]\nretries = 101\n[[task]]\ncommand = \"x\"\n").unwrap_err();
        assert_eq!(err, "task[1].retries: must be at most 100, got 101");
        let err = parse_tasks("[[task]]\ncommand = \" \"\n").unwrap_err();
        assert_eq!(err, "task[1].command: must not be empty");
        let err = parse_tasks("[[task]]\nname = \"x\"\n").unwrap_err();
        assert!(err.contains("missing field `command`"), "{err}");
    }

    #[test]
    fn simulated_tasks_are_deterministic() {
        let a = simulated_tasks(22);
        assert_eq!(a, simulated_tasks(22));
        assert!(matches!(
            a[6].kind,
            TaskKind::Simulated {
                fail_attempts: 1,
                ..
            }
        ));
        assert!(matches!(
            a[10].kind,
            TaskKind::Simulated {
                fail_attempts: u32::MAX,
                ..
            }
        ));
    }
}
