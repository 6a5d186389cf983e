//! Local worker actors and the task-executor plugin that hands them work.
//!
//! A worker is an actor: a tokio task owning a mailbox of [`Job`]s, which it runs one at a
//! time (one slot). [`ShellExecutor`] (kind [`PluginKind::TaskExecutor`]) hears the
//! scheduler's `TaskAssigned` and posts the job to the worker's mailbox; the worker publishes
//! `TaskStarted`, runs the command in `sh` in its own process group, and publishes the
//! outcome:
//!
//! | what happened | event | error kind | retryable |
//! | --- | --- | --- | --- |
//! | exit code 0 | `TaskCompleted` (passed) | – | – |
//! | exit code 127 (`sh`: command not found) | `TaskFailed` | `CommandNotFound` | no |
//! | exit code 126 (not executable) | `TaskFailed` | `CommandNotExecutable` | no |
//! | other exit code `n` | `TaskFailed` | `ExitCode(n)` | if attempts remain |
//! | killed by signal `s` | `TaskFailed` | `Signal(s)` | if attempts remain |
//! | no exit within the timeout | `TaskFailed` | `Timeout` | if attempts remain |
//! | `sh` could not be started | `TaskFailed` | `SpawnError` | no |
//!
//! The command sees `DTF_TASK_ID` and `DTF_ATTEMPT` (from 1) in its environment (and,
//! under [`kill_tasks_on_exit`], `DTF_TASK_WATCH`, the watchdog's marker). Output
//! (stdout then stderr) is captured, keeping the last [`OUTPUT_LIMIT`] bytes; it goes
//! in `TaskCompleted::output` or `TaskError::details`. On a timeout, and when a worker is
//! killed, the whole process group is killed (`kill -KILL -<pgid>`), so no grandchild
//! outlives its task. With [`kill_tasks_on_exit`] this holds for a worker killed with
//! `SIGKILL` at any moment, even right after it started the shell (see there).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dtf_plugin_core::event::{TaskCompleted, TaskFailed, TaskId, WorkerId};
use dtf_plugin_core::prelude::*;
use tokio::sync::mpsc;

use crate::taskfile::{TaskDef, TaskKind};

/// The most output kept per attempt, in bytes (the end is kept).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// One attempt for a worker to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The task.
    pub task: Arc<TaskDef>,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// What workers tell the coordinator besides the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerNote {
    /// `worker` published `TaskStarted` for `task`'s attempt `attempt` and is running it.
    Started {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
}

#[derive(Debug, Default)]
struct PoolState {
    mailboxes: HashMap<WorkerId, mpsc::UnboundedSender<Job>>,
    /// Jobs for workers without a mailbox yet: a remote worker is on the bus (and can be
    /// assigned tasks) before the coordinator has attached its mailbox.
    parked: HashMap<WorkerId, Vec<Job>>,
    tasks: HashMap<TaskId, Arc<TaskDef>>,
}

/// The workers' mailboxes and the task definitions, shared by the coordinator (which
/// spawns and replaces workers) and [`ShellExecutor`] (which posts jobs). Cloning shares.
#[derive(Debug, Clone, Default)]
pub struct WorkerPool {
    state: Arc<Mutex<PoolState>>,
}

impl WorkerPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `task` known to the executor.
    pub fn add_task(&self, task: TaskDef) {
        self.lock()
            .tasks
            .insert(TaskId::from(task.id.as_str()), Arc::new(task));
    }

    /// Spawns worker `id`'s actor (replacing a dead one's mailbox) and returns its handle.
    /// The actor publishes through `bus` and reports to `notes`.
    pub fn spawn_worker(
        &self,
        id: &WorkerId,
        bus: Bus,
        notes: mpsc::UnboundedSender<WorkerNote>,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().mailboxes.insert(id.clone(), tx);
        tokio::spawn(worker_loop(
            id.clone(),
            rx,
            bus.with_source(id.as_str()),
            notes,
        ))
    }

    /// Attaches a mailbox for worker `id` that is not a local actor (a remote worker: the
    /// jobs are forwarded to it, [`crate::remote`]), and hands it the jobs assigned to the
    /// worker before it had one.
    pub fn attach(&self, id: &WorkerId, mailbox: mpsc::UnboundedSender<Job>) {
        let mut state = self.lock();
        for job in state.parked.remove(id).unwrap_or_default() {
            let task = job.task.id.clone();
            if mailbox.send(job).is_err() {
                tracing::warn!(%task, worker = %id, "worker `{id}` is gone");
            }
        }
        state.mailboxes.insert(id.clone(), mailbox);
    }

    /// Closes worker `id`'s mailbox: the actor ends after its current job.
    pub fn close_worker(&self, id: &WorkerId) {
        let mut state = self.lock();
        state.mailboxes.remove(id);
        state.parked.remove(id);
    }

    /// Forgets the jobs kept for worker `id` until its mailbox came (it failed before that:
    /// recovery gives its tasks to other workers).
    fn drop_parked(&self, id: &WorkerId) {
        if let Some(jobs) = self.lock().parked.remove(id) {
            tracing::warn!(
                worker = %id,
                jobs = jobs.len(),
                "the worker left before its mailbox was attached; its tasks go elsewhere"
            );
        }
    }

    fn post(&self, worker: &WorkerId, task: &TaskId, attempt: u32) -> Result<(), String> {
        let mut state = self.lock();
        let def = state
            .tasks
            .get(task)
            .ok_or_else(|| format!("task `{task}` is not known to the executor"))?;
        let job = Job {
            task: Arc::clone(def),
            attempt,
        };
        match state.mailboxes.get(worker) {
            Some(mailbox) => mailbox
                .send(job)
                .map_err(|_| format!("worker `{worker}` is gone")),
            None => {
                // Registered on the bus, mailbox not attached yet: it gets the job then.
                state.parked.entry(worker.clone()).or_default().push(job);
                Ok(())
            }
        }
    }
}

/// The task-executor plugin: posts each `TaskAssigned` to the assigned worker's mailbox.
#[derive(Debug, Clone)]
pub struct ShellExecutor {
    pool: WorkerPool,
}

impl ShellExecutor {
    /// The plugin's name.
    pub const NAME: &'static str = "shell-executor";

    /// An executor posting to `pool`'s workers.
    pub fn new(pool: WorkerPool) -> Self {
        Self { pool }
    }
}

impl Plugin for ShellExecutor {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::TaskExecutor)
            .hooks(HookSet::from(Hook::TaskAssigned).with(Hook::WorkerFailed))
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        let a = match &event.kind {
            EventKind::TaskAssigned(a) => a,
            // Not on a disconnection: a worker back within its grace keeps its tasks (the
            // scheduler keeps them on it), so it must get them.
            EventKind::WorkerFailed(w) => {
                self.pool.drop_parked(&w.worker);
                return Ok(());
            }
            _ => return Ok(()),
        };
        if let Err(message) = self.pool.post(&a.worker, &a.task, a.attempt) {
            // The worker died between the assignment and now: recovery re-queues the task
            // when the coordinator reports the worker lost, so this is not the task's end.
            tracing::warn!(task = %a.task, worker = %a.worker, "{message}");
        }
        Ok(())
    }
}

async fn worker_loop(
    id: WorkerId,
    mut rx: mpsc::UnboundedReceiver<Job>,
    bus: Bus,
    notes: mpsc::UnboundedSender<WorkerNote>,
) {
    while let Some(job) = rx.recv().await {
        let task = TaskId::from(job.task.id.as_str());
        if bus
            .publish(EventKind::task_started(
                task.clone(),
                id.clone(),
                job.attempt,
            ))
            .await
            .is_err()
        {
            return;
        }
        let _ = notes.send(WorkerNote::Started {
            worker: id.clone(),
            task: task.clone(),
            attempt: job.attempt,
        });
        let result = run_job(&job).await;
        let kind = result.into_event(&job, &id);
        if bus.publish(kind).await.is_err() {
            return;
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobResult {
    /// Exit code 0.
    Passed {
        /// Run time.
        duration: Duration,
        /// Captured output.
        output: String,
    },
    /// Anything else.
    Failed {
        /// Error classification (`ExitCode(1)`, `Timeout`, ...).
        kind: String,
        /// Human-readable message.
        message: String,
        /// Captured output.
        output: String,
        /// Whether another attempt could help.
        retry_helps: bool,
    },
}

impl JobResult {
    /// The event reporting this result of `job` on `worker`.
    pub fn into_event(self, job: &Job, worker: &WorkerId) -> EventKind {
        let task = job.task.id.as_str();
        match self {
            Self::Passed { duration, output } => EventKind::TaskCompleted(Box::new(
                TaskCompleted::builder()
                    .task(task)
                    .worker(worker.clone())
                    .attempt(job.attempt)
                    .outcome(TaskOutcome::Passed)
                    .duration(duration)
                    .output(output)
                    .build(),
            )),
            Self::Failed {
                kind,
                message,
                output,
                retry_helps,
            } => EventKind::TaskFailed(Box::new(
                TaskFailed::builder()
                    .task(task)
                    .worker(worker.clone())
                    .attempt(job.attempt)
                    .error(
                        TaskError::builder()
                            .kind(kind)
                            .message(message)
                            .details(output)
                            .build(),
                    )
                    .retryable(retry_helps && job.attempt < job.task.max_attempts())
                    .build(),
            )),
        }
    }
}

/// Runs one attempt of `job` (the shell command, or the simulation).
pub async fn run_job(job: &Job) -> JobResult {
    match &job.task.kind {
        TaskKind::Shell(command) => run_shell(command, job, job.task.timeout).await,
        TaskKind::Simulated {
            duration,
            fail_attempts,
        } => {
            let started = Instant::now();
            tokio::time::sleep(*duration).await;
            if job.attempt <= *fail_attempts {
                JobResult::Failed {
                    kind: "ExitCode(1)".to_owned(),
                    message: format!("simulated failure of attempt {}", job.attempt),
                    output: String::new(),
                    retry_helps: true,
                }
            } else {
                JobResult::Passed {
                    duration: started.elapsed(),
                    output: String::new(),
                }
            }
        }
    }
}

/// The watchdog of [`kill_tasks_on_exit`]: a `sh` reading `+ PGID` / `- PGID` lines (and
/// `x 0` when its owner ends normally); at end of input (its owner died, however) it kills
/// the groups still listed, then, unless told of a normal end, every process whose
/// environment carries its owner's marker (`$1`: `MARKER_VAR=marker`), with its group: a
/// task started and not listed yet, and what tasks started and left behind.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
l=" "
e=
while read -r op g; do
  case $op in
    +) l="$l$g " ;;
    -) n=" "; for x in $l; do [ "$x" = "$g" ] || n="$n$x "; done; l=$n ;;
    x) e=normal ;;
  esac
done
for g in $l; do kill -KILL "-$g" 2>/dev/null; done
[ -z "$e" ] || exit 0
for f in $(grep -l -a -s -F "$1" /proc/[0-9]*/environ); do
  p=${f#/proc/}; p=${p%/environ}
  read -r st < "/proc/$p/stat" 2>/dev/null || continue
  set -- ${st##*) }
  kill -KILL "-$3" 2>/dev/null; kill -KILL "$p" 2>/dev/null
done"#;

/// The environment variable that marks the task processes of this process for the watchdog
/// (its value is [`MARKER`]).
const MARKER_VAR: &str = "DTF_TASK_WATCH";

/// This process's marker, set by [`kill_tasks_on_exit`].
static MARKER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

static WATCHDOG_PIPE: Mutex<Option<std::process::ChildStdin>> = Mutex::new(None);

/// Tasks see none of the `DTF_…` variables of the process that starts them, only the ones set
/// for them ([`FOR_TASKS`]): those hold dtf's own secrets (the web console's token, the
/// cluster's cookie, the plugin signing key's password) and configuration overrides, any of
/// which may be a secret (a token, a webhook URL, an index URL with credentials, a whole
/// channel table). A test that prints its environment when it fails would otherwise put them
/// into its output, and from there into the console, JUnit files, CI pages and notifications;
/// and a test holding the token could drive the console.
const HIDDEN_PREFIX: &str = "DTF_";

/// The `DTF_…` variables a task does get: set for it, not inherited.
const FOR_TASKS: [&str; 3] = ["DTF_TASK_ID", "DTF_ATTEMPT", MARKER_VAR];

/// More variables hidden from tasks ([`hide_from_tasks`]).
static HIDDEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps `vars` out of the environment of every task started from now on, besides the `DTF_…`
/// variables, which tasks never inherit. The coordinator (and a `dtf-worker` hosting plugins)
/// hides the variables its configuration takes secrets from ([`secret_env_vars`]); other
/// variables pass through, since tests may need them.
pub fn hide_from_tasks(vars: impl IntoIterator<Item = String>) {
    let mut hidden = HIDDEN.lock().unwrap_or_else(PoisonError::into_inner);
    for var in vars {
        if !hidden.contains(&var) {
            hidden.push(var);
        }
    }
}

/// The environment variables a configuration names as the source of a secret
/// (`{ env = "NAME" }`), and those its file reads with `${NAME}` (whose values count as
/// secrets too: `webhook_url = "${SLACK_WEBHOOK}"`).
pub fn secret_env_vars(config: &dtf_plugin_core::config::Config) -> Vec<String> {
    fn named(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let (1, Some(serde_json::Value::String(var))) = (map.len(), map.get("env")) {
                    out.push(var.clone());
                }
                map.values().for_each(|v| named(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| named(v, out)),
            _ => {}
        }
    }
    let mut vars = Vec::new();
    if let Some(plugins) = config.get("plugins") {
        named(&plugins, &mut vars);
    }
    vars.extend(config.env_vars().iter().cloned());
    vars.sort();
    vars.dedup();
    vars
}

/// Makes every task process group started from now on die with this process, even when it
/// is killed with `SIGKILL` (which runs no destructor): a watchdog process in its own group
/// holds the read end of a pipe; when this process ends, the pipe closes and the watchdog
/// kills the groups of the tasks still running. A task is listed once it has started; one
/// killed in between (this process killed right after starting it) is found by a marker in
/// its environment, which what it starts inherits (Linux: `/proc/PID/environ`).
/// External plugin processes started from now on carry the same marker
/// ([`mark_plugin_processes`](dtf_plugin_core::external::mark_plugin_processes)), so they, and
/// what they started, die with this process too when it ends without shutting them down (a
/// `SIGKILL`, or the immediate exit at a second stop signal).
/// `dtf-worker` and `dtf-coordinator` call it at start.
///
/// # Errors
///
/// The watchdog (`sh`) could not be started.
pub fn kill_tasks_on_exit() -> std::io::Result<()> {
    let marker = MARKER.get_or_init(new_marker);
    // Not waited for: it outlives this process by design (a zombie until then, at most).
    let (_watchdog, stdin) = start_watchdog(marker)?;
    *WATCHDOG_PIPE.lock().unwrap_or_else(PoisonError::into_inner) = Some(stdin);
    dtf_plugin_core::external::mark_plugin_processes(MARKER_VAR, marker.as_str());
    Ok(())
}

/// Starts a watchdog for the processes marked `marker`: the process, and its input.
fn start_watchdog(
    marker: &str,
) -> std::io::Result<(std::process::Child, std::process::ChildStdin)> {
    use std::os::unix::process::CommandExt as _;
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(format!("{MARKER_VAR}={marker}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the watchdog has no stdin"))?;
    Ok((child, stdin))
}

/// A marker unlikely to occur anywhere else: this process's id, the time and a random
/// hasher's output, in hex.
fn new_marker() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:x}-{:016x}", std::process::id(), h.finish())
}

/// Tells the watchdog of [`kill_tasks_on_exit`] that this process ends normally: tasks still
/// running are killed as ever, but what finished tasks started and left running (a server
/// for later tasks, say) is left alone. Without it, as after a `SIGKILL`, the watchdog kills
/// every process a task of this process started. Call it just before exiting.
pub fn exiting_normally() {
    tell_watchdog('x', 0);
}

fn tell_watchdog(op: char, pgid: u32) {
    use std::io::Write as _;
    let mut pipe = WATCHDOG_PIPE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(stdin) = pipe.as_mut() {
        if writeln!(stdin, "{op} {pgid}").is_err() {
            *pipe = None;
        }
    }
}

/// Kills a process group when dropped, unless disarmed: a timed-out attempt, or a worker
/// killed mid-task (its future is dropped), leaves no process behind.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn new(pgid: Option<u32>) -> Self {
        if let Some(pgid) = pgid {
            tell_watchdog('+', pgid);
        }
        Self(pgid)
    }

    /// The group exited by itself: nothing to kill.
    fn disarm(&mut self) {
        if let Some(pgid) = self.0.take() {
            tell_watchdog('-', pgid);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // `kill` on a negative pid signals the whole group; std has no killpg without
            // unsafe code. The shell's built-in `kill`, not `/bin/kill`: slim images
            // (`debian:*-slim`) have no `procps`, and the group's children were orphaned. A
            // group that already exited makes `kill` fail, which is fine.
            let killed = std::process::Command::new("sh")
                .arg("-c")
                .arg("kill -KILL \"-$1\"")
                .arg("sh")
                .arg(pgid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Err(e) = killed {
                tracing::error!(pgid, error = %e, "could not kill a task's process group; the watchdog keeps it");
                return;
            }
            // Only now: until the group is killed, the watchdog is its last resort.
            tell_watchdog('-', pgid);
        }
    }
}

async fn run_shell(command: &str, job: &Job, timeout: Duration) -> JobResult {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("DTF_TASK_ID", &job.task.id)
        .env("DTF_ATTEMPT", job.attempt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(marker) = MARKER.get() {
        // Found by the watchdog even before its group is listed below.
        cmd.env(MARKER_VAR, marker);
    }
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if name.starts_with(HIDDEN_PREFIX) && !FOR_TASKS.contains(&name.as_ref()) {
            cmd.env_remove(&var);
        }
    }
    for var in HIDDEN.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        cmd.env_remove(var);
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return JobResult::Failed {
                kind: "SpawnError".to_owned(),
                message: format!("start `sh -c {command}`: {e}"),
                output: String::new(),
                retry_helps: false,
            };
        }
    };
    let mut child = child;
    let mut guard = GroupGuard::new(child.id());
    let (mut stdout, mut stderr) = (Tail::default(), Tail::default());
    let (out_pipe, err_pipe) = (child.stdout.take(), child.stderr.take());
    // Boxed so that dropping it ends its borrows of the two buffers.
    let mut reading = Box::pin(async {
        tokio::join!(drain(out_pipe, &mut stdout), drain(err_pipe, &mut stderr));
    });
    // The shell's exit ends the attempt, not the end of its output: a process it left in the
    // background may hold the pipes open for as long as it runs.
    let mut read_all = false;
    let waited = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                status = child.wait() => break status,
                () = &mut reading, if !read_all => read_all = true,
            }
        }
    })
    .await;
    let status = match waited {
        Err(_) => {
            drop(guard); // kills the group
            // What it wrote before the timeout (the pipes close with the group).
            let _ = tokio::time::timeout(AFTER_KILL, &mut reading).await;
            drop(reading);
            return JobResult::Failed {
                kind: "Timeout".to_owned(),
                message: format!("no exit within {:.3}s: `{command}`", timeout.as_secs_f64()),
                output: joined(stdout, stderr, ""),
                retry_helps: true,
            };
        }
        Ok(Err(e)) => {
            return JobResult::Failed {
                kind: "WaitError".to_owned(),
                message: format!("wait for `{command}`: {e}"),
                output: String::new(),
                retry_helps: true,
            };
        }
        Ok(Ok(status)) => status,
    };
    // The attempt's time ends with its shell, not with the wait for what it left behind.
    let duration = started.elapsed();
    let left_behind = !read_all
        && tokio::time::timeout(LEFT_BEHIND_GRACE, &mut reading)
            .await
            .is_err();
    // Whether the processes holding the output are gone (the group kill reaches only those
    // still in the group: one that called `setsid` escapes it).
    let mut killed = true;
    if left_behind {
        // Processes of the attempt still hold its output: they would outlive it.
        drop(guard); // kills the group
        killed = tokio::time::timeout(AFTER_KILL, &mut reading).await.is_ok();
    } else {
        guard.disarm();
    }
    drop(reading);
    let stderr_line = String::from_utf8_lossy(&stderr.buf)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned();
    let note = match (left_behind, killed) {
        (false, _) => "",
        (true, true) => LEFT_BEHIND_NOTE,
        (true, false) => ESCAPED_NOTE,
    };
    let output = joined(stdout, stderr, note);
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(0), _) => JobResult::Passed { duration, output },
        (Some(127), _) => JobResult::Failed {
            kind: "CommandNotFound".to_owned(),
            message: format!("command not found: `{command}` ({stderr_line})"),
            output,
            retry_helps: false,
        },
        (Some(126), _) => JobResult::Failed {
            kind: "CommandNotExecutable".to_owned(),
            message: format!("command not executable: `{command}` ({stderr_line})"),
            output,
            retry_helps: false,
        },
        (Some(code), _) => JobResult::Failed {
            kind: format!("ExitCode({code})"),
            message: if stderr_line.is_empty() {
                format!("`{command}` exited with code {code}")
            } else {
                format!("`{command}` exited with code {code}: {stderr_line}")
            },
            output,
            retry_helps: true,
        },
        (None, signal) => {
            let signal = signal.unwrap_or_default();
            JobResult::Failed {
                kind: format!("Signal({signal})"),
                message: format!("`{command}` was killed by signal {signal}"),
                output,
                retry_helps: true,
            }
        }
    }
}

/// How long the output pipes may stay open after the task's shell exited: longer, and a
/// process the task left in the background holds them, and its group is killed.
const LEFT_BEHIND_GRACE: Duration = Duration::from_millis(200);

/// How long the rest of the output is read after the group was killed.
const AFTER_KILL: Duration = Duration::from_secs(1);

/// Added to the output of an attempt whose background processes were killed.
const LEFT_BEHIND_NOTE: &str = "\n[dtf: processes the task left running still held its output when it exited; they were killed]\n";

/// Added to the output of an attempt whose background processes left its process group
/// (`setsid`) and still held its output after the group was killed.
const ESCAPED_NOTE: &str = "\n[dtf: processes the task left running still held its output when it exited; they had left its process group and were not killed]\n";

/// Reads `pipe` to its end into `tail` (what was read stays there if this is dropped).
async fn drain(pipe: Option<impl tokio::io::AsyncRead + Unpin>, tail: &mut Tail) {
    use tokio::io::AsyncReadExt as _;
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0u8; 8192];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        tail.push(&chunk[..n]);
    }
}

/// The end of one output stream, at most `2 ×` [`OUTPUT_LIMIT`] bytes in memory however much
/// the task writes (a test that logs gigabytes must not take the worker's memory with it), and
/// how many bytes before it were let go.
#[derive(Debug, Default)]
struct Tail {
    buf: Vec<u8>,
    cut: usize,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= 2 * OUTPUT_LIMIT {
            self.trim(OUTPUT_LIMIT);
        }
    }

    /// Keeps at most the last `limit` bytes, starting on a UTF-8 character boundary when the
    /// text is UTF-8 (a continuation byte never starts it; at most 3 are skipped).
    fn trim(&mut self, limit: usize) {
        let Some(mut start) = self.buf.len().checked_sub(limit) else {
            return;
        };
        let end = (start + 3).min(self.buf.len());
        while start < end && self.buf[start] & 0xC0 == 0x80 {
            start += 1;
        }
        self.buf.drain(..start);
        self.cut += start;
    }
}

/// stdout then stderr then `note`, as text: the last [`OUTPUT_LIMIT`] bytes of it, marked
/// with how many bytes before them were cut.
fn joined(mut stdout: Tail, mut stderr: Tail, note: &str) -> String {
    let limit = OUTPUT_LIMIT.saturating_sub(note.len());
    stderr.trim(limit);
    stdout.trim(limit - stderr.buf.len().min(limit));
    let mut cut = stdout.cut + stderr.cut;
    let mut output = String::from_utf8_lossy(&stdout.buf).into_owned();
    output.push_str(&String::from_utf8_lossy(&stderr.buf));
    // Bytes that are not UTF-8 each became a 3-byte replacement character: cut again, on a
    // character boundary, so the text stays within the limit.
    if output.len() > limit {
        let mut start = output.len() - limit;
        while !output.is_char_boundary(start) {
            start += 1;
        }
        output.drain(..start);
        cut += start;
    }
    output.push_str(note);
    if cut == 0 {
        output
    } else {
        format!("[… {cut} bytes cut]\n{output}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn job(command: &str, timeout_ms: u64, retries: u32) -> Job {
        Job {
            task: Arc::new(
                TaskDef::shell("t", command)
                    .timeout(Duration::from_millis(timeout_ms))
                    .retries(retries),
            ),
            attempt: 1,
        }
    }

    /// A remote worker is on the bus, and can be assigned tasks, before the coordinator has
    /// attached its mailbox (the hub's note comes through the coordinator's loop, which may be
    /// busy creating tasks): the job waits for the mailbox instead of being dropped, which
    /// left the task assigned and never run (found by a review).
    #[test]
    fn a_job_for_a_worker_without_a_mailbox_yet_waits_for_it() {
        let pool = WorkerPool::default();
        pool.add_task(TaskDef::shell("t1", "true"));
        pool.add_task(TaskDef::shell("t2", "true"));
        let w = WorkerId::from("remote-1");
        pool.post(&w, &TaskId::from("t1"), 1).unwrap();
        pool.post(&w, &TaskId::from("t2"), 2).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pool.attach(&w, tx);
        let got: Vec<(String, u32)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|j| (j.task.id.clone(), j.attempt))
            .collect();
        assert_eq!(got, [("t1".to_owned(), 1), ("t2".to_owned(), 2)]);
        // Later jobs go straight to the mailbox.
        pool.post(&w, &TaskId::from("t1"), 3).unwrap();
        assert_eq!(rx.try_recv().map(|j| j.attempt).ok(), Some(3));
    }

    /// A worker that fails before its mailbox comes loses the jobs kept for it (recovery gives
    /// its tasks to others): attached later, it must not run them as well.
    #[tokio::test]
    async fn the_jobs_kept_for_a_worker_that_failed_are_dropped() {
        let pool = WorkerPool::default();
        pool.add_task(TaskDef::shell("t1", "true"));
        let w = WorkerId::from("remote-1");
        let mut executor = ShellExecutor::new(pool.clone());
        let mut ctx = PluginContext::detached("test", serde_json::Value::Null);
        let event = |kind| Event {
            meta: dtf_plugin_core::event::EventMeta {
                seq: 1,
                time: std::time::SystemTime::now(),
                source: Arc::from("test"),
            },
            kind,
        };
        let assigned = event(EventKind::task_assigned(TaskId::from("t1"), w.clone(), 1));
        executor.on_event(&mut ctx, &assigned).await.unwrap();
        // A disconnection is not the end: a worker back within its grace keeps its tasks.
        let gone = event(EventKind::worker_disconnected(w.clone(), "no heartbeat"));
        executor.on_event(&mut ctx, &gone).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pool.attach(&w, tx);
        assert_eq!(rx.try_recv().map(|j| j.attempt).ok(), Some(1));
        // A failure is: its tasks go to other workers.
        pool.close_worker(&w);
        executor.on_event(&mut ctx, &assigned).await.unwrap();
        let failed = event(EventKind::worker_failed(w.clone(), "lost"));
        executor.on_event(&mut ctx, &failed).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pool.attach(&w, tx);
        assert!(
            rx.try_recv().is_err(),
            "a job of a failed worker was handed over"
        );
    }

    /// The variables a configuration names as the source of a secret are hidden from tasks.
    #[test]
    fn secret_env_vars_are_the_ones_the_configuration_names() {
        let config = dtf_plugin_core::config::ConfigLoader::new()
            .source(
                "dtf.toml",
                r#"
[plugins.notify.settings]
channels = [{ type = "slack", token = { env = "MY_SLACK_TOKEN" } }]
[plugins.other.settings]
webhook_url = { env = "MY_HOOK" }
name = "not-a-secret"
[plugins.third.settings]
url = "https://hooks.example/${MY_INTERPOLATED_HOOK}"
"#,
            )
            .env_vars([("MY_INTERPOLATED_HOOK".to_owned(), "T0K".to_owned())])
            .load()
            .unwrap();
        let vars = secret_env_vars(&config);
        assert!(vars.contains(&"MY_SLACK_TOKEN".to_owned()), "{vars:?}");
        assert!(vars.contains(&"MY_HOOK".to_owned()), "{vars:?}");
        // Read with `${…}`, the headline form of the docs (found by a review: it was passed
        // to every task).
        assert!(
            vars.contains(&"MY_INTERPOLATED_HOOK".to_owned()),
            "{vars:?}"
        );
        assert!(!vars.iter().any(|v| v == "not-a-secret"), "{vars:?}");
    }

    #[tokio::test]
    async fn maps_exit_codes_timeouts_and_missing_commands() {
        let r = run_job(&job(
            "echo hi $DTF_TASK_ID $DTF_ATTEMPT $# $0; cat; echo err >&2",
            5000,
            0,
        ))
        .await;
        // As under `sh -c`: no positional parameters, `$0` is `sh`, stdin is empty.
        assert!(
            matches!(&r, JobResult::Passed { output, .. } if output == "hi t 1 0 sh\nerr\n"),
            "{r:?}"
        );

        let r = run_job(&job("echo bad >&2; exit 3", 5000, 0)).await;
        assert!(
            matches!(&r, JobResult::Failed { kind, message, retry_helps: true, .. }
                if kind == "ExitCode(3)" && message.ends_with("exited with code 3: bad")),
            "{r:?}"
        );

        let r = run_job(&job("dtf-no-such-command-xyz --flag", 5000, 0)).await;
        assert!(
            matches!(&r, JobResult::Failed { kind, message, retry_helps: false, .. }
                if kind == "CommandNotFound" && message.contains("dtf-no-such-command-xyz")),
            "{r:?}"
        );

        // A timed-out attempt keeps what it wrote before the timeout.
        let r = run_job(&job("echo before; sleep 5", 300, 0)).await;
        assert!(
            matches!(&r, JobResult::Failed { kind, output, retry_helps: true, .. }
                if kind == "Timeout" && output == "before\n"),
            "{r:?}"
        );
    }

    /// A task that starts a server in the background and exits: the attempt ends with its
    /// shell, not when the server stops writing to the task's output. Waiting for the output to
    /// close instead made it a `Timeout` (after the whole timeout, its output lost). The
    /// processes left running are killed and the output says so.
    #[tokio::test]
    async fn a_process_left_in_the_background_does_not_hold_the_attempt() {
        let started = Instant::now();
        let r = run_job(&job("sleep 30 & echo pid $!; echo done", 20_000, 0)).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let JobResult::Passed { output, .. } = &r else {
            panic!("{r:?}");
        };
        assert!(output.contains("\ndone\n"), "{output}");
        assert!(output.ends_with(LEFT_BEHIND_NOTE), "{output}");
        let pid = output
            .lines()
            .find_map(|l| l.strip_prefix("pid "))
            .unwrap()
            .to_owned();
        // Killed with its group: gone from /proc once reaped, a zombie until then (where
        // nothing reaps orphans, it stays one).
        let alive = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // The state follows the command name in parentheses.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
        };
        let gone = Instant::now();
        while alive(&pid) {
            assert!(
                gone.elapsed() < Duration::from_secs(5),
                "`sleep 30` ({pid}) outlived its task"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // One whose output closes with it is not killed and gets no note.
        let r = run_job(&job("echo quiet", 5000, 0)).await;
        assert!(
            matches!(&r, JobResult::Passed { output, .. } if output == "quiet\n"),
            "{r:?}"
        );
    }

    /// The regression for a task that outlived its `SIGKILL`ed worker: the worker was killed
    /// after starting the task and before listing its group with the watchdog. The watchdog
    /// finds such a task by its marker; an unmarked process is left alone.
    #[test]
    fn the_watchdog_kills_a_marked_task_it_was_never_told_of() {
        use std::os::unix::process::CommandExt as _;
        let marker = new_marker();
        let (mut dog, watchdog) = start_watchdog(&marker).unwrap();
        let spawn = |marked: bool| {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "sleep 60"]).process_group(0);
            if marked {
                cmd.env(MARKER_VAR, &marker);
            }
            cmd.spawn().unwrap()
        };
        let (mut task, mut other) = (spawn(true), spawn(false));
        drop(watchdog); // what the watchdog sees when its owner dies
        dog.wait().unwrap();
        let start = Instant::now();
        let task_gone = loop {
            if task.try_wait().unwrap().is_some() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(10) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let other_runs = other.try_wait().unwrap().is_none();
        let _ = (task.kill(), other.kill(), task.wait(), other.wait());
        assert!(task_gone, "the marked task outlived the watchdog's owner");
        assert!(other_runs, "an unmarked process was killed");

        // An owner that ends normally leaves what finished tasks left running alone.
        let (mut dog, mut watchdog) = start_watchdog(&marker).unwrap();
        let mut left = spawn(true);
        {
            use std::io::Write as _;
            writeln!(watchdog, "x 0").unwrap();
        }
        drop(watchdog);
        dog.wait().unwrap(); // done with whatever it was going to kill
        let left_runs = left.try_wait().unwrap().is_none();
        let _ = (left.kill(), left.wait());
        assert!(left_runs, "killed after a normal end");
    }

    #[test]
    fn retryable_only_while_attempts_remain() {
        let failed = || JobResult::Failed {
            kind: "ExitCode(1)".into(),
            message: "m".into(),
            output: String::new(),
            retry_helps: true,
        };
        let mut j = job("x", 1, 1);
        let retryable = |k: EventKind| matches!(k, EventKind::TaskFailed(f) if f.retryable);
        assert!(retryable(failed().into_event(&j, &"w".into())));
        j.attempt = 2;
        assert!(!retryable(failed().into_event(&j, &"w".into())));
    }

    #[test]
    fn keeps_the_tail_of_long_output() {
        let mut t = Tail::default();
        t.push("é".repeat(10).as_bytes());
        t.trim(5);
        // Two whole characters: the cut does not start inside one.
        assert_eq!(
            (t.cut, String::from_utf8(t.buf).unwrap()),
            (16, "éé".to_owned())
        );
    }

    /// A task's output is read as it comes, and only its end is kept: memory stays bounded
    /// however much it writes (it was all kept until the task ended, then cut), and the cut
    /// says how much went.
    #[tokio::test]
    async fn a_task_that_writes_megabytes_keeps_only_the_end_in_memory() {
        let mut stdout = Tail::default();
        let block = [b'x'; 1000];
        for _ in 0..10_000 {
            stdout.push(&block);
            assert!(stdout.buf.len() < 2 * OUTPUT_LIMIT);
        }
        assert_eq!(stdout.cut + stdout.buf.len(), 10_000_000);

        let command = "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo last words >&2; exit 3";
        let result = run_shell(command, &job(command, 10_000, 1), Duration::from_secs(10)).await;
        let JobResult::Failed {
            output,
            kind,
            message,
            ..
        } = result
        else {
            panic!("{result:?}")
        };
        assert_eq!(kind, "ExitCode(3)");
        assert!(message.ends_with("last words"), "{message}");
        let header = format!("[… {} bytes cut]\n", 3_000_001 + 11 - OUTPUT_LIMIT);
        assert!(output.starts_with(&header), "{}", &output[..60]);
        assert_eq!(output.len(), header.len() + OUTPUT_LIMIT);
        assert!(output.ends_with("aaaa\nlast words\n"));

        // Bytes that are not UTF-8 become replacement characters, and the text still keeps
        // to the limit.
        let mut binary = Tail::default();
        binary.push(&vec![0xff; 3 * OUTPUT_LIMIT]);
        let text = joined(binary, Tail::default(), "");
        let body = text.split_once('\n').map_or("", |(_, b)| b);
        assert!(body.len() <= OUTPUT_LIMIT, "{}", body.len());
        assert!(text.starts_with("[… "), "{}", &text[..20]);
    }
}
