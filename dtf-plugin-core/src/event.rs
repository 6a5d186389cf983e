//! The event model: an [`Event`] envelope around a typed [`EventKind`].
//!
//! # Lifecycle
//!
//! Publishers (coordinators, harnesses, plugins) are expected to emit events in the order below.
//! The bus does not enforce it, because a plugin must never be able to take a run down by
//! publishing out of order, but [`crate::lifecycle`] checks a stream against it and reporters
//! may rely on it.
//!
//! **Coordinator**: [`EventKind::CoordinatorStartup`] is the first event of a run and
//! [`EventKind::CoordinatorShutdown`] the last one the bus accepts (the manager publishes it
//! when it shuts down). Both are *control* events: they are never dropped by a full queue.
//!
//! **Task** (per task id):
//!
//! ```text
//! TaskCreated ─► TaskAssigned ─► TaskStarted ─► TaskCompleted            (terminal)
//!      │              │              └────────► TaskFailed ─┬─► (terminal unless retryable)
//!      │              │                                     └─► TaskAssigned (retry, attempt + 1)
//!      └──────────────┴──────────────┴────────► TaskCancelled            (terminal)
//! ```
//!
//! `TaskFailed` may also come straight after `TaskCreated` or `TaskAssigned` (the task could not
//! be started, e.g. no worker can ever run it), and a retryable `TaskFailed` may be followed by a
//! final one (the retry could not be scheduled) or by `TaskCancelled`.
//!
//! A `TaskAssigned` may also follow a `TaskAssigned` or `TaskStarted` when the worker holding the
//! task is lost (`WorkerFailed`/`WorkerDisconnected`) and recovery re-queues it.
//!
//! **Worker** (per worker id): `WorkerRegistered` first; then `WorkerDisconnected` or
//! `WorkerFailed`; after either, `WorkerRecovered` returns the worker to service, and
//! `WorkerRegistered` may start a new life under the same id.
//!
//! **Recovery**: `RecoveryStarted`, then exactly one of `RecoveryCompleted` or
//! `RecoveryFailed`, matched by `recovery_id`.
//!
//! **Framework events** (`Plugin*`) are published by the manager itself, with the source
//! [`MANAGER_SOURCE`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use typed_builder::TypedBuilder;

/// The `source` the plugin manager stamps on the framework events it publishes.
pub const MANAGER_SOURCE: &str = "dtf-manager";

/// One thing that happened in a test run: metadata plus the typed payload.
///
/// Events are created by the bus when they are published (it assigns the sequence number and
/// timestamp) and are shared between plugins behind an `Arc`, never cloned per plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Where and when the event was published.
    pub meta: EventMeta,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The hook this event is delivered under.
    pub fn hook(&self) -> Hook {
        self.kind.hook()
    }
}

/// Metadata the bus attaches to every published event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// Per-bus sequence number: strictly increasing in publish order, starting at 1.
    pub seq: u64,
    /// Wall-clock time taken when the event was published (the call to `publish`, before
    /// any wait for queue space; all events of one `publish_batch` share it). Unlike `seq`, it
    /// is not ordered across concurrent publishers.
    pub time: SystemTime,
    /// Who published it: the name given to the [`crate::Bus`] handle, or a plugin's name.
    /// A remote publisher's events (`dtf-cluster`) carry `remote:` and its id
    /// ([`EventMeta::remote_publisher`]).
    pub source: Arc<str>,
}

impl EventMeta {
    /// What the source of a remote publisher's event starts with; its id follows.
    pub const REMOTE_SOURCE_PREFIX: &'static str = "remote:";

    /// The id of the remote publisher that published this event, if one did (its source is
    /// [`REMOTE_SOURCE_PREFIX`](Self::REMOTE_SOURCE_PREFIX) and the id). Such an event is
    /// about the publisher's own tests and machines (a harness on another host), not the
    /// coordinator's: the scheduler, for one, never places a task it creates.
    ///
    /// ```
    /// # use dtf_plugin_core::EventMeta;
    /// # use std::time::SystemTime;
    /// let meta = EventMeta { seq: 1, time: SystemTime::now(), source: "remote:harness-7".into() };
    /// assert_eq!(meta.remote_publisher(), Some("harness-7"));
    /// ```
    pub fn remote_publisher(&self) -> Option<&str> {
        self.source.strip_prefix(Self::REMOTE_SOURCE_PREFIX)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

id_type!(
    /// Identifies a task for its whole life, across retries.
    TaskId
);
id_type!(
    /// Identifies a worker.
    WorkerId
);
id_type!(
    /// Identifies one recovery operation (matches `RecoveryStarted` with its outcome).
    RecoveryId
);

/// Free-form string metadata attached to tasks and workers.
pub type Metadata = BTreeMap<String, String>;

/// Everything that can happen in a test run.
///
/// Variants carry typed payload structs; larger payloads are boxed so the enum stays small
/// (16 bytes on 64-bit targets, checked by a test). Build one with a shorthand
/// (`EventKind::worker_failed("w1", "disk full")`) or from a payload's builder, which every
/// task, worker and recovery payload has, and `From`:
///
/// ```
/// use dtf_plugin_core::event::{EventKind, WorkerFailed};
///
/// let kind: EventKind = WorkerFailed::builder().worker("w1").error("disk full").build().into();
/// assert_eq!(kind, EventKind::worker_failed("w1", "disk full"));
/// ```
/// New variants may be added in minor releases, so match with a wildcard arm.
/// See the [module docs](self) for the order in which they are expected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The coordinator started (a control event: never dropped).
    CoordinatorStartup(Box<CoordinatorStartup>),
    /// The coordinator is shutting down (a control event: never dropped).
    CoordinatorShutdown(Box<CoordinatorShutdown>),
    /// A task entered the queue.
    TaskCreated(Box<TaskCreated>),
    /// A scheduler bound a task to a worker.
    TaskAssigned(Box<TaskAssigned>),
    /// A worker began running a task.
    TaskStarted(Box<TaskStarted>),
    /// A task finished; its [`TaskOutcome`] says how.
    TaskCompleted(Box<TaskCompleted>),
    /// A task attempt failed with an error.
    TaskFailed(Box<TaskFailed>),
    /// A task was cancelled before it finished.
    TaskCancelled(Box<TaskCancelled>),
    /// A worker joined the pool.
    WorkerRegistered(Box<WorkerRegistered>),
    /// A worker left the pool or stopped answering.
    WorkerDisconnected(Box<WorkerDisconnected>),
    /// A worker failed with an error.
    WorkerFailed(Box<WorkerFailed>),
    /// A lost worker is back in service.
    WorkerRecovered(Box<WorkerRecovered>),
    /// A recovery operation began (e.g. re-queueing a failed worker's tasks).
    RecoveryStarted(Box<RecoveryStarted>),
    /// A recovery operation succeeded.
    RecoveryCompleted(Box<RecoveryCompleted>),
    /// A recovery operation failed.
    RecoveryFailed(Box<RecoveryFailed>),
    /// A named event with a JSON payload, for plugins to talk to each other.
    Custom(Box<CustomEvent>),
    /// Framework: a plugin's actor started (first start or enable).
    PluginStarted(Box<PluginLifecycle>),
    /// Framework: a plugin failed (panic, error, or hung handler).
    PluginFailed(Box<PluginFailure>),
    /// Framework: a failed plugin was restarted from its factory.
    PluginRestarted(Box<PluginLifecycle>),
    /// Framework: a plugin was disabled (restart budget spent, or by request).
    PluginDisabled(Box<PluginDisabled>),
    /// Framework: a plugin was removed ([`crate::PluginManager::remove`]); it gets no more
    /// events and its name is free again.
    PluginRemoved(Box<PluginLifecycle>),
}

/// Payload of [`EventKind::CoordinatorStartup`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct CoordinatorStartup {
    /// A name for this run (e.g. a CI build id); free-form.
    #[builder(setter(into))]
    pub run_id: String,
    /// Extra information about the run.
    #[builder(default)]
    #[serde(default)]
    pub metadata: Metadata,
}

/// Payload of [`EventKind::CoordinatorShutdown`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct CoordinatorShutdown {
    /// Why the coordinator is stopping.
    #[builder(setter(into))]
    pub reason: ShutdownReason,
}

/// Why a coordinator shut down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", content = "detail", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ShutdownReason {
    /// All work finished.
    Completed,
    /// Someone asked it to stop (a signal, a user).
    Requested,
    /// It reached its time limit (a run timeout) with work left.
    TimedOut,
    /// It is stopping because of an error.
    Error(String),
}

/// A task's scheduling priority: higher runs first.
pub type Priority = i32;

/// Payload of [`EventKind::TaskCreated`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskCreated {
    /// The task.
    #[builder(setter(into))]
    pub task: TaskId,
    /// Human-readable name (usually the test name).
    #[builder(setter(into))]
    pub name: String,
    /// The user or tenant that owns the task (fair-share schedulers group by it).
    #[builder(default, setter(into))]
    #[serde(default)]
    pub owner: String,
    /// Scheduling priority; higher runs first. Default 0.
    #[builder(default)]
    #[serde(default)]
    pub priority: Priority,
    /// What a worker must offer to run it.
    #[builder(default)]
    #[serde(default)]
    pub requirements: Requirements,
    /// Expected run time, if known (duration-aware schedulers use it).
    #[builder(default)]
    #[serde(default)]
    pub expected_duration: Option<Duration>,
    /// Extra information.
    #[builder(default)]
    #[serde(default)]
    pub metadata: Metadata,
}

/// What a task needs from a worker. Matches [`Capabilities`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct Requirements {
    /// Minimum number of CPU cores.
    #[builder(default)]
    #[serde(default)]
    pub cpu_cores: u32,
    /// Minimum memory in MiB.
    #[builder(default)]
    #[serde(default)]
    pub memory_mib: u64,
    /// Accelerators or features the worker must have (e.g. `cuda`, `rocm`, `webgpu`).
    #[builder(default)]
    #[serde(default)]
    pub features: Vec<String>,
}

/// Payload of [`EventKind::TaskAssigned`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskAssigned {
    /// The task.
    #[builder(setter(into))]
    pub task: TaskId,
    /// The worker it was bound to.
    #[builder(setter(into))]
    pub worker: WorkerId,
    /// Attempt number, starting at 1.
    #[builder(default = 1)]
    pub attempt: u32,
}

/// Payload of [`EventKind::TaskStarted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskStarted {
    /// The task.
    #[builder(setter(into))]
    pub task: TaskId,
    /// The worker running it.
    #[builder(setter(into))]
    pub worker: WorkerId,
    /// Attempt number, starting at 1.
    #[builder(default = 1)]
    pub attempt: u32,
}

/// How a finished task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskOutcome {
    /// The test passed.
    Passed,
    /// The test ran and reported failure (an assertion, a non-zero exit).
    Failed,
    /// The test was skipped.
    Skipped,
}

/// Payload of [`EventKind::TaskCompleted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskCompleted {
    /// The task.
    #[builder(setter(into))]
    pub task: TaskId,
    /// The worker that ran it.
    #[builder(setter(into))]
    pub worker: WorkerId,
    /// Attempt number, starting at 1.
    #[builder(default = 1)]
    #[serde(default = "one")]
    pub attempt: u32,
    /// How it ended.
    pub outcome: TaskOutcome,
    /// Wall-clock run time.
    pub duration: Duration,
    /// Captured output (may be truncated by the publisher).
    #[builder(default, setter(into))]
    #[serde(default)]
    pub output: String,
    /// Numeric metrics the task reported. In JSON (the cluster's frames, the event log) a
    /// value that is not finite is written as the string `"NaN"`, `"inf"` or `"-inf"`: JSON
    /// has no number for it, and `null` would not read back as one.
    #[builder(default)]
    #[serde(default, with = "metrics_json")]
    pub metrics: BTreeMap<String, f64>,
}

fn one() -> u32 {
    1
}

/// How [`TaskCompleted::metrics`] is written in JSON and read back.
///
/// JSON has no number for NaN or the infinities, and `serde_json` writes them as `null`,
/// which does not read back as a number: an event with such a metric could be published but
/// not decoded, so a coordinator refused the remote node that sent it (as a node of another
/// version), and an event log holding it could not be read. Finite values stay numbers; the
/// others are the strings `"NaN"`, `"inf"` and `"-inf"`. Reading also takes `null` as NaN (what
/// earlier versions wrote).
mod metrics_json {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};
    use serde::{Deserialize, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        metrics: &BTreeMap<String, f64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(metrics.iter().map(|(k, v)| (k, Metric(*v))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, f64>, D::Error> {
        let metrics = BTreeMap::<String, Metric>::deserialize(d)?;
        Ok(metrics.into_iter().map(|(k, v)| (k, v.0)).collect())
    }

    struct Metric(f64);

    impl Serialize for Metric {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                v if v.is_finite() => s.serialize_f64(v),
                v if v.is_nan() => s.serialize_str("NaN"),
                v if v > 0.0 => s.serialize_str("inf"),
                _ => s.serialize_str("-inf"),
            }
        }
    }

    impl<'de> Deserialize<'de> for Metric {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(MetricVisitor)
        }
    }

    struct MetricVisitor;

    impl Visitor<'_> for MetricVisitor {
        type Value = Metric;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number, or \"NaN\", \"inf\" or \"-inf\"")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Metric, E> {
            Ok(Metric(v))
        }

        // Whole numbers in JSON: the nearest f64, as for a field of type f64.
        #[allow(clippy::cast_precision_loss)]
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Metric, E> {
            Ok(Metric(v as f64))
        }

        #[allow(clippy::cast_precision_loss)]
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Metric, E> {
            Ok(Metric(v as f64))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Metric, E> {
            match v {
                "NaN" => Ok(Metric(f64::NAN)),
                "inf" => Ok(Metric(f64::INFINITY)),
                "-inf" => Ok(Metric(f64::NEG_INFINITY)),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<Metric, E> {
            Ok(Metric(f64::NAN))
        }
    }
}

/// Payload of [`EventKind::TaskFailed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskFailed {
    /// The task.
    #[builder(setter(into))]
    pub task: TaskId,
    /// The worker it failed on, if it got that far.
    #[builder(default, setter(strip_option, into))]
    #[serde(default)]
    pub worker: Option<WorkerId>,
    /// What went wrong.
    pub error: TaskError,
    /// Attempt number, starting at 1.
    #[builder(default = 1)]
    #[serde(default = "one")]
    pub attempt: u32,
    /// Whether another attempt will be made.
    #[builder(default)]
    #[serde(default)]
    pub retryable: bool,
}

/// An error that ended a task attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskError {
    /// A short, stable classification (e.g. `TimeoutError`, `ExitCode(1)`); used for grouping.
    #[builder(setter(into))]
    pub kind: String,
    /// The human-readable message.
    #[builder(setter(into))]
    pub message: String,
    /// Captured output or backtrace, if any.
    #[builder(default, setter(into))]
    #[serde(default)]
    pub details: String,
}

/// Payload of [`EventKind::TaskCancelled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct TaskCancelled {
    /// The task.
    #[builder(setter(into))]
    pub task: TaskId,
    /// Why it was cancelled.
    #[builder(setter(into))]
    pub reason: String,
}

/// What a worker offers. Matches [`Requirements`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct Capabilities {
    /// CPU cores.
    #[builder(default)]
    #[serde(default)]
    pub cpu_cores: u32,
    /// Memory in MiB.
    #[builder(default)]
    #[serde(default)]
    pub memory_mib: u64,
    /// Accelerators and features (e.g. `cuda`, `rocm`, `webgpu`).
    #[builder(default)]
    #[serde(default)]
    pub features: Vec<String>,
    /// How many tasks it runs at once (default 1). A worker with 0 slots is registered but
    /// runs nothing (e.g. draining before maintenance).
    #[builder(default = 1)]
    #[serde(default = "one")]
    pub slots: u32,
}

impl Capabilities {
    /// Whether these capabilities satisfy `req`.
    pub fn satisfies(&self, req: &Requirements) -> bool {
        self.cpu_cores >= req.cpu_cores
            && self.memory_mib >= req.memory_mib
            && req.features.iter().all(|f| self.features.contains(f))
    }
}

/// Payload of [`EventKind::WorkerRegistered`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct WorkerRegistered {
    /// The worker.
    #[builder(setter(into))]
    pub worker: WorkerId,
    /// What it offers.
    #[builder(default)]
    pub capabilities: Capabilities,
    /// Extra information (host name, OS, ...).
    #[serde(default)]
    #[builder(default)]
    pub metadata: Metadata,
}

/// Payload of [`EventKind::WorkerDisconnected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct WorkerDisconnected {
    /// The worker.
    #[builder(setter(into))]
    pub worker: WorkerId,
    /// Why, if known.
    #[builder(default, setter(into))]
    pub reason: String,
}

/// Payload of [`EventKind::WorkerFailed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct WorkerFailed {
    /// The worker.
    #[builder(setter(into))]
    pub worker: WorkerId,
    /// What went wrong.
    #[builder(setter(into))]
    pub error: String,
}

/// Payload of [`EventKind::WorkerRecovered`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct WorkerRecovered {
    /// The worker.
    #[builder(setter(into))]
    pub worker: WorkerId,
}

/// Payload of [`EventKind::RecoveryStarted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct RecoveryStarted {
    /// Matches the outcome event.
    #[builder(setter(into))]
    pub recovery: RecoveryId,
    /// The worker being recovered from, if any.
    #[builder(default, setter(strip_option, into))]
    pub worker: Option<WorkerId>,
    /// Tasks being re-queued.
    #[builder(default)]
    pub tasks: Vec<TaskId>,
}

/// Payload of [`EventKind::RecoveryCompleted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct RecoveryCompleted {
    /// Matches the `RecoveryStarted`.
    #[builder(setter(into))]
    pub recovery: RecoveryId,
    /// How many tasks were re-queued.
    #[builder(default)]
    pub requeued: u32,
}

/// Payload of [`EventKind::RecoveryFailed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, TypedBuilder)]
#[non_exhaustive]
pub struct RecoveryFailed {
    /// Matches the `RecoveryStarted`.
    #[builder(setter(into))]
    pub recovery: RecoveryId,
    /// What went wrong.
    #[builder(setter(into))]
    pub error: String,
}

/// Payload of [`EventKind::Custom`]: a named event with a JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CustomEvent {
    /// The event's name; by convention `plugin-name.event-name`.
    pub name: String,
    /// Any JSON value.
    pub payload: serde_json::Value,
}

/// Payload of [`EventKind::PluginStarted`], [`EventKind::PluginRestarted`] and
/// [`EventKind::PluginRemoved`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginLifecycle {
    /// The plugin's name.
    pub plugin: String,
    /// How many times it has been restarted so far.
    pub restarts: u32,
}

/// Payload of [`EventKind::PluginFailed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginFailure {
    /// The plugin's name.
    pub plugin: String,
    /// What failed and how.
    pub error: String,
    /// When it will be restarted, if it will.
    pub restart_in: Option<Duration>,
}

/// Payload of [`EventKind::PluginDisabled`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PluginDisabled {
    /// The plugin's name.
    pub plugin: String,
    /// Why it was disabled.
    pub reason: String,
}

/// `From<payload> for EventKind`: `EventKind::from(payload)` (or `payload.into()`) boxes the
/// payload into its variant. [`PluginLifecycle`] is the payload of three variants and has no
/// `From`.
macro_rules! from_payload {
    ($($payload:ident => $variant:ident),* $(,)?) => {
        $(
            impl From<$payload> for EventKind {
                fn from(payload: $payload) -> Self {
                    Self::$variant(Box::new(payload))
                }
            }
        )*
    };
}

from_payload! {
    CoordinatorStartup => CoordinatorStartup,
    CoordinatorShutdown => CoordinatorShutdown,
    TaskCreated => TaskCreated,
    TaskAssigned => TaskAssigned,
    TaskStarted => TaskStarted,
    TaskCompleted => TaskCompleted,
    TaskFailed => TaskFailed,
    TaskCancelled => TaskCancelled,
    WorkerRegistered => WorkerRegistered,
    WorkerDisconnected => WorkerDisconnected,
    WorkerFailed => WorkerFailed,
    WorkerRecovered => WorkerRecovered,
    RecoveryStarted => RecoveryStarted,
    RecoveryCompleted => RecoveryCompleted,
    RecoveryFailed => RecoveryFailed,
    CustomEvent => Custom,
    PluginFailure => PluginFailed,
    PluginDisabled => PluginDisabled,
}

/// Shorthand constructors, so publishers don't spell out payload structs.
impl EventKind {
    /// `CoordinatorStartup` for run `run_id`.
    pub fn coordinator_startup(run_id: impl Into<String>) -> Self {
        Self::CoordinatorStartup(Box::new(CoordinatorStartup {
            run_id: run_id.into(),
            metadata: Metadata::new(),
        }))
    }

    /// `CoordinatorShutdown` with `reason`.
    pub fn coordinator_shutdown(reason: ShutdownReason) -> Self {
        Self::CoordinatorShutdown(Box::new(CoordinatorShutdown { reason }))
    }

    /// `TaskCreated` with just an id and a name; use [`TaskCreated::builder`] for the rest.
    pub fn task_created(task: impl Into<TaskId>, name: impl Into<String>) -> Self {
        Self::TaskCreated(Box::new(
            TaskCreated::builder().task(task).name(name).build(),
        ))
    }

    /// `TaskAssigned` for attempt `attempt`.
    pub fn task_assigned(
        task: impl Into<TaskId>,
        worker: impl Into<WorkerId>,
        attempt: u32,
    ) -> Self {
        Self::TaskAssigned(Box::new(TaskAssigned {
            task: task.into(),
            worker: worker.into(),
            attempt,
        }))
    }

    /// `TaskStarted` for attempt `attempt`.
    pub fn task_started(
        task: impl Into<TaskId>,
        worker: impl Into<WorkerId>,
        attempt: u32,
    ) -> Self {
        Self::TaskStarted(Box::new(TaskStarted {
            task: task.into(),
            worker: worker.into(),
            attempt,
        }))
    }

    /// `TaskCompleted` of attempt 1 with no output; use [`TaskCompleted::builder`] for the rest.
    pub fn task_completed(
        task: impl Into<TaskId>,
        worker: impl Into<WorkerId>,
        outcome: TaskOutcome,
        duration: Duration,
    ) -> Self {
        Self::TaskCompleted(Box::new(
            TaskCompleted::builder()
                .task(task)
                .worker(worker)
                .outcome(outcome)
                .duration(duration)
                .build(),
        ))
    }

    /// `TaskFailed`; see [`TaskFailed::builder`] for the worker and the attempt.
    pub fn task_failed(task: impl Into<TaskId>, error: TaskError, retryable: bool) -> Self {
        Self::TaskFailed(Box::new(
            TaskFailed::builder()
                .task(task)
                .error(error)
                .retryable(retryable)
                .build(),
        ))
    }

    /// `TaskCancelled` with `reason`.
    pub fn task_cancelled(task: impl Into<TaskId>, reason: impl Into<String>) -> Self {
        Self::TaskCancelled(Box::new(TaskCancelled {
            task: task.into(),
            reason: reason.into(),
        }))
    }

    /// `WorkerRegistered` with `capabilities`.
    pub fn worker_registered(worker: impl Into<WorkerId>, capabilities: Capabilities) -> Self {
        Self::WorkerRegistered(Box::new(WorkerRegistered {
            worker: worker.into(),
            capabilities,
            metadata: Metadata::new(),
        }))
    }

    /// `WorkerDisconnected` with `reason`.
    pub fn worker_disconnected(worker: impl Into<WorkerId>, reason: impl Into<String>) -> Self {
        Self::WorkerDisconnected(Box::new(WorkerDisconnected {
            worker: worker.into(),
            reason: reason.into(),
        }))
    }

    /// `WorkerFailed` with `error`.
    pub fn worker_failed(worker: impl Into<WorkerId>, error: impl Into<String>) -> Self {
        Self::WorkerFailed(Box::new(WorkerFailed {
            worker: worker.into(),
            error: error.into(),
        }))
    }

    /// `WorkerRecovered`.
    pub fn worker_recovered(worker: impl Into<WorkerId>) -> Self {
        Self::WorkerRecovered(Box::new(WorkerRecovered {
            worker: worker.into(),
        }))
    }

    /// `RecoveryStarted` for the tasks of `worker`.
    pub fn recovery_started(
        recovery: impl Into<RecoveryId>,
        worker: Option<WorkerId>,
        tasks: Vec<TaskId>,
    ) -> Self {
        Self::RecoveryStarted(Box::new(RecoveryStarted {
            recovery: recovery.into(),
            worker,
            tasks,
        }))
    }

    /// `RecoveryCompleted` having re-queued `requeued` tasks.
    pub fn recovery_completed(recovery: impl Into<RecoveryId>, requeued: u32) -> Self {
        Self::RecoveryCompleted(Box::new(RecoveryCompleted {
            recovery: recovery.into(),
            requeued,
        }))
    }

    /// `RecoveryFailed` with `error`.
    pub fn recovery_failed(recovery: impl Into<RecoveryId>, error: impl Into<String>) -> Self {
        Self::RecoveryFailed(Box::new(RecoveryFailed {
            recovery: recovery.into(),
            error: error.into(),
        }))
    }

    /// A custom event named `name` carrying `payload`.
    pub fn custom(name: impl Into<String>, payload: serde_json::Value) -> Self {
        Self::Custom(Box::new(CustomEvent {
            name: name.into(),
            payload,
        }))
    }

    /// The hook this kind is delivered under.
    pub fn hook(&self) -> Hook {
        match self {
            Self::CoordinatorStartup(_) => Hook::CoordinatorStartup,
            Self::CoordinatorShutdown(_) => Hook::CoordinatorShutdown,
            Self::TaskCreated(_) => Hook::TaskCreated,
            Self::TaskAssigned(_) => Hook::TaskAssigned,
            Self::TaskStarted(_) => Hook::TaskStarted,
            Self::TaskCompleted(_) => Hook::TaskCompleted,
            Self::TaskFailed(_) => Hook::TaskFailed,
            Self::TaskCancelled(_) => Hook::TaskCancelled,
            Self::WorkerRegistered(_) => Hook::WorkerRegistered,
            Self::WorkerDisconnected(_) => Hook::WorkerDisconnected,
            Self::WorkerFailed(_) => Hook::WorkerFailed,
            Self::WorkerRecovered(_) => Hook::WorkerRecovered,
            Self::RecoveryStarted(_) => Hook::RecoveryStarted,
            Self::RecoveryCompleted(_) => Hook::RecoveryCompleted,
            Self::RecoveryFailed(_) => Hook::RecoveryFailed,
            Self::Custom(_) => Hook::Custom,
            Self::PluginStarted(_) => Hook::PluginStarted,
            Self::PluginFailed(_) => Hook::PluginFailed,
            Self::PluginRestarted(_) => Hook::PluginRestarted,
            Self::PluginDisabled(_) => Hook::PluginDisabled,
            Self::PluginRemoved(_) => Hook::PluginRemoved,
        }
    }

    /// The task this event is about, for task events.
    pub fn task_id(&self) -> Option<&TaskId> {
        match self {
            Self::TaskCreated(p) => Some(&p.task),
            Self::TaskAssigned(p) => Some(&p.task),
            Self::TaskStarted(p) => Some(&p.task),
            Self::TaskCompleted(p) => Some(&p.task),
            Self::TaskFailed(p) => Some(&p.task),
            Self::TaskCancelled(p) => Some(&p.task),
            _ => None,
        }
    }

    /// The worker this event is about, for worker events and task events that name one.
    pub fn worker_id(&self) -> Option<&WorkerId> {
        match self {
            Self::TaskAssigned(p) => Some(&p.worker),
            Self::TaskStarted(p) => Some(&p.worker),
            Self::TaskCompleted(p) => Some(&p.worker),
            Self::TaskFailed(p) => p.worker.as_ref(),
            Self::WorkerRegistered(p) => Some(&p.worker),
            Self::WorkerDisconnected(p) => Some(&p.worker),
            Self::WorkerFailed(p) => Some(&p.worker),
            Self::WorkerRecovered(p) => Some(&p.worker),
            _ => None,
        }
    }
}

macro_rules! hooks {
    ($($(#[$doc:meta])* $name:ident = $bit:literal,)*) => {
        /// A fieldless mirror of [`EventKind`], used to subscribe.
        ///
        /// Each hook is one bit of a [`HookSet`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum Hook {
            $($(#[$doc])* $name = $bit,)*
        }

        impl Hook {
            /// Every hook, in declaration order.
            pub const ALL: &'static [Hook] = &[$(Hook::$name,)*];
        }
    };
}

hooks! {
    /// [`EventKind::CoordinatorStartup`].
    CoordinatorStartup = 0,
    /// [`EventKind::CoordinatorShutdown`].
    CoordinatorShutdown = 1,
    /// [`EventKind::TaskCreated`].
    TaskCreated = 2,
    /// [`EventKind::TaskAssigned`].
    TaskAssigned = 3,
    /// [`EventKind::TaskStarted`].
    TaskStarted = 4,
    /// [`EventKind::TaskCompleted`].
    TaskCompleted = 5,
    /// [`EventKind::TaskFailed`].
    TaskFailed = 6,
    /// [`EventKind::TaskCancelled`].
    TaskCancelled = 7,
    /// [`EventKind::WorkerRegistered`].
    WorkerRegistered = 8,
    /// [`EventKind::WorkerDisconnected`].
    WorkerDisconnected = 9,
    /// [`EventKind::WorkerFailed`].
    WorkerFailed = 10,
    /// [`EventKind::WorkerRecovered`].
    WorkerRecovered = 11,
    /// [`EventKind::RecoveryStarted`].
    RecoveryStarted = 12,
    /// [`EventKind::RecoveryCompleted`].
    RecoveryCompleted = 13,
    /// [`EventKind::RecoveryFailed`].
    RecoveryFailed = 14,
    /// [`EventKind::Custom`].
    Custom = 15,
    /// [`EventKind::PluginStarted`].
    PluginStarted = 16,
    /// [`EventKind::PluginFailed`].
    PluginFailed = 17,
    /// [`EventKind::PluginRestarted`].
    PluginRestarted = 18,
    /// [`EventKind::PluginDisabled`].
    PluginDisabled = 19,
    /// [`EventKind::PluginRemoved`].
    PluginRemoved = 20,
}

impl Hook {
    /// Control events are never dropped by a full queue, whatever the overflow policy.
    pub const fn is_control(self) -> bool {
        matches!(self, Hook::CoordinatorStartup | Hook::CoordinatorShutdown)
    }

    /// The number of hooks (the length of [`Hook::ALL`]).
    pub const COUNT: usize = 21;

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// A set of [`Hook`]s: a 64-bit bitset, so membership is one AND.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct HookSet(u64);

impl HookSet {
    /// No hooks.
    pub const EMPTY: HookSet = HookSet(0);
    /// Every hook, including the framework's `Plugin*` events.
    pub const ALL: HookSet = HookSet((1 << Hook::COUNT) - 1);
    /// The coordinator hooks.
    pub const COORDINATOR: HookSet = HookSet::EMPTY
        .with(Hook::CoordinatorStartup)
        .with(Hook::CoordinatorShutdown);
    /// The six task hooks.
    pub const TASK: HookSet = HookSet(0b1111_1100);
    /// The four worker hooks.
    pub const WORKER: HookSet = HookSet(0b1111 << 8);
    /// The three recovery hooks.
    pub const RECOVERY: HookSet = HookSet(0b111 << 12);
    /// The framework's `Plugin*` hooks.
    pub const PLUGIN: HookSet = HookSet(0b1_1111 << 16);
    /// Failures of any kind: task, worker, recovery and plugin failures, plus plugin disabled.
    pub const FAILURES: HookSet = HookSet::EMPTY
        .with(Hook::TaskFailed)
        .with(Hook::WorkerFailed)
        .with(Hook::RecoveryFailed)
        .with(Hook::PluginFailed)
        .with(Hook::PluginDisabled);

    /// A set holding exactly `hooks`.
    pub fn of(hooks: &[Hook]) -> Self {
        hooks.iter().fold(Self::EMPTY, |s, h| s.with(*h))
    }

    /// This set plus `hook`.
    pub const fn with(self, hook: Hook) -> Self {
        HookSet(self.0 | (1 << hook as u8))
    }

    /// This set without `hook`.
    pub const fn without(self, hook: Hook) -> Self {
        HookSet(self.0 & !(1 << hook as u8))
    }

    /// The union of both sets.
    pub const fn union(self, other: HookSet) -> Self {
        HookSet(self.0 | other.0)
    }

    /// The hooks in both sets.
    pub const fn intersection(self, other: HookSet) -> Self {
        HookSet(self.0 & other.0)
    }

    /// Whether every hook of `other` is in this set.
    #[inline]
    pub const fn contains_all(self, other: HookSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `hook` is in the set.
    #[inline]
    pub const fn contains(self, hook: Hook) -> bool {
        self.0 & (1 << hook as u8) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The hooks in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Hook> {
        Hook::ALL.iter().copied().filter(move |h| self.contains(*h))
    }
}

impl From<Hook> for HookSet {
    fn from(h: Hook) -> Self {
        HookSet::EMPTY.with(h)
    }
}

impl FromIterator<Hook> for HookSet {
    fn from_iter<I: IntoIterator<Item = Hook>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, |s, h| s.with(h))
    }
}

impl fmt::Debug for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The eight kinds of plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PluginKind {
    /// Decides which task runs on which worker.
    Scheduler,
    /// Runs tasks.
    TaskExecutor,
    /// Reports results (JUnit, summaries).
    Reporter,
    /// Sends notifications (Slack, email, ...).
    Notification,
    /// Watches the run (metrics, health).
    Monitoring,
    /// Talks to external systems (CI/CD).
    Integration,
    /// Enforces policy (authorisation, secrets).
    Security,
    /// Anything else.
    #[default]
    Custom,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Scheduler => "scheduler",
            Self::TaskExecutor => "task_executor",
            Self::Reporter => "reporter",
            Self::Notification => "notification",
            Self::Monitoring => "monitoring",
            Self::Integration => "integration",
            Self::Security => "security",
            Self::Custom => "custom",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_that_are_not_finite_survive_json() {
        let metrics = BTreeMap::from([
            ("nan".to_owned(), f64::NAN),
            ("up".to_owned(), f64::INFINITY),
            ("down".to_owned(), f64::NEG_INFINITY),
            ("ms".to_owned(), 12.5),
        ]);
        let event: EventKind = TaskCompleted::builder()
            .task("t1")
            .worker("w1")
            .outcome(TaskOutcome::Passed)
            .duration(Duration::from_millis(3))
            .metrics(metrics)
            .build()
            .into();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json["data"]["metrics"],
            serde_json::json!({ "nan": "NaN", "up": "inf", "down": "-inf", "ms": 12.5 })
        );
        let back: EventKind = serde_json::from_value(json).unwrap();
        let EventKind::TaskCompleted(done) = back else {
            panic!("not a TaskCompleted: {back:?}");
        };
        assert!(done.metrics["nan"].is_nan());
        assert_eq!(done.metrics["up"], f64::INFINITY);
        assert_eq!(done.metrics["down"], f64::NEG_INFINITY);
        assert_eq!(done.metrics["ms"], 12.5);

        // What earlier versions wrote for NaN (`null`) reads as NaN, whole numbers as numbers,
        // and anything else is an error that says what was expected.
        let old = r#"{"type":"task_completed","data":{"task":"t1","worker":"w1","outcome":"passed","duration":{"secs":0,"nanos":3},"metrics":{"a":null,"b":7}}}"#;
        let EventKind::TaskCompleted(done) = serde_json::from_str::<EventKind>(old).unwrap() else {
            panic!("not a TaskCompleted");
        };
        assert!(done.metrics["a"].is_nan());
        assert_eq!(done.metrics["b"], 7.0);
        let bad = old.replace("null", "\"lots\"");
        let err = serde_json::from_str::<EventKind>(&bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"a number, or "NaN", "inf" or "-inf""#),
            "{err}"
        );
    }

    #[test]
    fn payload_builders_and_from_give_the_same_events_as_the_shorthands() {
        let failed: EventKind = WorkerFailed::builder()
            .worker("w1")
            .error("disk full")
            .build()
            .into();
        assert_eq!(failed, EventKind::worker_failed("w1", "disk full"));
        let started = EventKind::from(
            RecoveryStarted::builder()
                .recovery("r1")
                .worker("w1")
                .tasks(vec![TaskId::from("t1")])
                .build(),
        );
        assert_eq!(
            started,
            EventKind::recovery_started("r1", Some(WorkerId::from("w1")), vec![TaskId::from("t1")])
        );
        let registered: EventKind = WorkerRegistered::builder().worker("w2").build().into();
        assert_eq!(registered.hook(), Hook::WorkerRegistered);
        let done: EventKind = RecoveryCompleted::builder()
            .recovery("r1")
            .requeued(1)
            .build()
            .into();
        assert_eq!(done, EventKind::recovery_completed("r1", 1));
        let assigned: EventKind = TaskAssigned::builder()
            .task("t1")
            .worker("w1")
            .build()
            .into();
        assert_eq!(assigned, EventKind::task_assigned("t1", "w1", 1));
    }

    #[test]
    fn event_kind_is_16_bytes_as_documented() {
        // The enum docs and docs/ARCHITECTURE.md state this size; change them with it.
        assert_eq!(std::mem::size_of::<EventKind>(), 16);
    }

    #[test]
    fn hook_bits_match_declaration_order_and_groups() {
        assert_eq!(Hook::ALL.len(), Hook::COUNT);
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(h.index(), i);
        }
        assert_eq!(
            HookSet::TASK,
            HookSet::of(&[
                Hook::TaskCreated,
                Hook::TaskAssigned,
                Hook::TaskStarted,
                Hook::TaskCompleted,
                Hook::TaskFailed,
                Hook::TaskCancelled
            ])
        );
        assert_eq!(
            HookSet::WORKER.iter().collect::<Vec<_>>(),
            vec![
                Hook::WorkerRegistered,
                Hook::WorkerDisconnected,
                Hook::WorkerFailed,
                Hook::WorkerRecovered
            ]
        );
        assert_eq!(HookSet::RECOVERY.iter().count(), 3);
        assert_eq!(HookSet::PLUGIN.iter().count(), 5);
        assert_eq!(HookSet::ALL.iter().count(), Hook::COUNT);
        assert!(!HookSet::TASK.contains(Hook::WorkerFailed));
    }

    #[test]
    fn events_round_trip_through_json() {
        let kinds = vec![
            EventKind::coordinator_startup("run-1"),
            EventKind::task_created("t1", "tests::a"),
            EventKind::task_failed(
                "t1",
                TaskError::builder()
                    .kind("TimeoutError")
                    .message("took 30s")
                    .build(),
                true,
            ),
            EventKind::custom("x.y", serde_json::json!({"a": 1})),
            EventKind::coordinator_shutdown(ShutdownReason::Error("boom".into())),
        ];
        for kind in kinds {
            let ev = Event {
                meta: EventMeta {
                    seq: 7,
                    time: SystemTime::UNIX_EPOCH,
                    source: "t".into(),
                },
                kind,
            };
            let json = serde_json::to_string(&ev).unwrap_or_default();
            let back: Event = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
            assert_eq!(back, ev);
        }
    }

    #[test]
    fn capabilities_match_requirements() {
        let caps = Capabilities::builder()
            .cpu_cores(8)
            .memory_mib(16_384)
            .features(vec!["cuda".into()])
            .build();
        assert!(
            caps.satisfies(
                &Requirements::builder()
                    .cpu_cores(4)
                    .features(vec!["cuda".into()])
                    .build()
            )
        );
        assert!(
            !caps.satisfies(
                &Requirements::builder()
                    .features(vec!["rocm".into()])
                    .build()
            )
        );
        assert!(!caps.satisfies(&Requirements::builder().memory_mib(32_000).build()));
    }
}
