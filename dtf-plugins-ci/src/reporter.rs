//! [`TaskReporter`]: follows every task through its lifecycle and sums the run up.
//!
//! The reporter folds task, worker and coordinator events with the crate's [`RunRecorder`]
//! (attempts, outcomes, retries, flaky tasks) and adds what a run summary needs on top: when
//! each task was created and first started (queue wait) and who owns it (per-tenant figures).
//! [`TaskReporterHandle::summary`] computes a [`TaskSummary`] at any time; at
//! `CoordinatorShutdown` the reporter logs it and, when configured, writes it as JSON. A
//! plugin can also ask for it on the bus with the custom event [`SUMMARY_REQUEST`]; the
//! reporter answers with the custom event [`SUMMARY_EVENT`] carrying the summary as JSON.
//!
//! With the `api` feature, events can also be sent as they happen to an external HTTP
//! endpoint, in batches, with the retry rules of [`dtf_plugin_core::retry`]: see
//! [`ExternalConfig`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use dtf_plugin_core::Secret;
use dtf_plugin_core::event::TaskId;
use dtf_plugin_core::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::CiError;
use crate::files::ReportFiles;
use crate::run::{AttemptOutcome, RunRecorder, RunResult, TaskStatus, Totals};
use crate::safe::neutralize;

#[cfg(feature = "api")]
#[path = "reporter/external.rs"]
mod external;
#[cfg(feature = "api")]
pub use external::ExternalStats;

/// The custom event a plugin publishes to ask the [`TaskReporter`] for a summary.
pub const SUMMARY_REQUEST: &str = "task-reporter.summary-request";
/// The custom event the [`TaskReporter`] answers [`SUMMARY_REQUEST`] with; its payload is the
/// [`TaskSummary`] as JSON.
pub const SUMMARY_EVENT: &str = "task-reporter.summary";

/// [`TaskReporter`]'s configuration. Every key is optional.
///
/// ```
/// let cfg: dtf_plugins_ci::TaskReporterConfig = serde_json::from_value(serde_json::json!({
///     "summary_json": "target/dtf/summary.json",
///     "slowest": 3,
/// }))?;
/// assert_eq!(cfg.slowest, 3);
/// assert!(cfg.external.is_none());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TaskReporterConfig {
    /// Where to write the summary as JSON at shutdown. Default: none.
    pub summary_json: Option<PathBuf>,
    /// How many of the slowest tasks the summary lists. Default 5.
    pub slowest: usize,
    /// Whether to log the summary (at `info`) at shutdown. Default `true`.
    pub log_summary: bool,
    /// Real-time reporting to an external HTTP endpoint (feature `api`). Default: off.
    pub external: Option<ExternalConfig>,
}

impl TaskReporterConfig {
    /// Checks what serde cannot: `external.endpoint` is an absolute `http` or `https` URL
    /// with a host (the message names the key, never the value, which may carry a key), and
    /// `external` needs the `api` feature.
    ///
    /// # Errors
    ///
    /// The first problem found.
    pub fn validate(&self) -> Result<(), String> {
        let Some(external) = &self.external else {
            return Ok(());
        };
        #[cfg(feature = "api")]
        {
            crate::api::check_url("external.endpoint", external.endpoint.expose())?;
            if external.timeout_ms == 0 {
                return Err("external.timeout_ms: must be at least 1".to_owned());
            }
            if external.final_timeout_ms == 0 {
                return Err("external.final_timeout_ms: must be at least 1".to_owned());
            }
            let token = external.token.as_ref().map(|t| t.expose().trim());
            if token.is_some_and(|t| reqwest::header::HeaderValue::from_str(t).is_err()) {
                return Err(
                    "external.token: holds characters an HTTP header cannot carry".to_owned(),
                );
            }
            if external.batch_size == 0 {
                return Err("external.batch_size: must be at least 1".to_owned());
            }
            Ok(())
        }
        #[cfg(not(feature = "api"))]
        {
            let _ = external;
            Err("`external` reporting needs dtf-plugins-ci's `api` feature".to_owned())
        }
    }
}

impl Default for TaskReporterConfig {
    fn default() -> Self {
        Self {
            summary_json: None,
            slowest: 5,
            log_summary: true,
            external: None,
        }
    }
}

/// Where and how to send events as they happen (feature `api`).
///
/// Events are queued and sent as one `POST` of JSON
/// `{"run_id": …, "events": [<Event>, …]}` to `endpoint` when `batch_size` events are
/// waiting, when `flush_interval_ms` passed since the first one queued, and at shutdown.
/// A failed batch is retried per `retry` ([`dtf_plugin_core::retry::RetryPolicy`]: 408, 429,
/// 5xx and connection errors, honouring `Retry-After`), then dropped and counted; the run
/// never waits for the endpoint except for the final flush at shutdown.
///
/// It has no `Serialize` implementation: the endpoint and the token are [`Secret`]s.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ExternalConfig {
    /// The URL events are posted to. Treated as a secret (it may carry a key): never logged.
    pub endpoint: Secret,
    /// Sent as `Authorization: Bearer <token>` when set. Default: none.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Events per request at most. Default 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest time an event waits in the queue before its batch is sent, in milliseconds.
    /// Default 1000.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Timeout of one HTTP request, in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The retry rules. Default: [`dtf_plugin_core::retry::RetryPolicy::default`].
    #[serde(default)]
    pub retry: dtf_plugin_core::retry::RetryPolicy,
    /// How long the final flush at shutdown may take, retries included, in milliseconds;
    /// past it what is left is dropped and counted (`events_dropped`), so the reporter's
    /// shutdown stays under the manager's handler timeout (30 s by default). Default 20000.
    #[serde(default = "default_final_timeout_ms")]
    pub final_timeout_ms: u64,
}

fn default_batch_size() -> usize {
    100
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_final_timeout_ms() -> u64 {
    20_000
}

impl ExternalConfig {
    /// A configuration posting to `endpoint` with every other key at its default.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: Secret::new(endpoint.into()),
            token: None,
            batch_size: default_batch_size(),
            flush_interval_ms: default_flush_interval_ms(),
            timeout_ms: default_timeout_ms(),
            retry: dtf_plugin_core::retry::RetryPolicy::default(),
            final_timeout_ms: default_final_timeout_ms(),
        }
    }
}

/// What the reporter tracks, shared between the plugin (across restarts) and its handles.
#[derive(Debug, Default)]
struct Tracker {
    recorder: RunRecorder,
    created_at: HashMap<TaskId, SystemTime>,
    first_start: HashMap<TaskId, SystemTime>,
    owner: HashMap<TaskId, String>,
}

impl Tracker {
    fn record(&mut self, event: &Event) {
        self.recorder.record(event);
        let at = event.meta.time;
        match &event.kind {
            EventKind::TaskCreated(c) => {
                self.created_at.entry(c.task.clone()).or_insert(at);
                self.owner.insert(c.task.clone(), c.owner.clone());
            }
            EventKind::TaskStarted(s) => {
                self.first_start.entry(s.task.clone()).or_insert(at);
            }
            _ => {}
        }
    }

    fn summary(&self, slowest: usize) -> TaskSummary {
        summarize(
            &self.recorder.result(),
            &self.created_at,
            &self.first_start,
            &self.owner,
            slowest,
        )
    }
}

/// A handle on a [`TaskReporter`]'s state: ask for the summary at any time, from any thread.
/// Cloning shares the state.
#[derive(Debug, Clone, Default)]
pub struct TaskReporterHandle {
    tracker: Arc<Mutex<Tracker>>,
    slowest: Arc<Mutex<usize>>,
    files: ReportFiles,
    #[cfg(feature = "api")]
    external: Arc<Mutex<ExternalStats>>,
}

impl TaskReporterHandle {
    fn lock(&self) -> MutexGuard<'_, Tracker> {
        // A panic while holding the lock leaves plain data behind; it stays usable.
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The summary of what was recorded so far; tasks still waiting or running count as
    /// incomplete.
    pub fn summary(&self) -> TaskSummary {
        let slowest = *self.slowest.lock().unwrap_or_else(PoisonError::into_inner);
        self.lock().summary(slowest)
    }

    /// The report files written (`summary_json`), or not, so far.
    pub fn report_files(&self) -> ReportFiles {
        self.files.clone()
    }

    /// The full run model (every task with its attempts), as the CI reports see it.
    pub fn run(&self) -> RunResult {
        self.lock().recorder.result()
    }

    /// Statistics of the calls to the external endpoint (all zero when it is not used).
    #[cfg(feature = "api")]
    pub fn external_stats(&self) -> ExternalStats {
        external::stats_for(self)
    }
}

/// The task reporter plugin (kind [`PluginKind::Reporter`], name `task-reporter`).
///
/// Build it with [`TaskReporter::spec`] to keep a [`TaskReporterHandle`]; every instance the
/// spec's factory builds (after a restart) shares that handle's state, so a restart loses
/// only the event that failed. It subscribes to the task, worker and coordinator hooks and to
/// custom events (for [`SUMMARY_REQUEST`]).
pub struct TaskReporter {
    handle: TaskReporterHandle,
    config: TaskReporterConfig,
    #[cfg(feature = "api")]
    external: Option<external::Sender>,
}

impl std::fmt::Debug for TaskReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskReporter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for TaskReporter {
    fn default() -> Self {
        Self::with_handle(TaskReporterHandle::default())
    }
}

impl TaskReporter {
    /// The plugin's name.
    pub const NAME: &'static str = "task-reporter";

    /// A reporter whose state lives in `handle`.
    pub fn with_handle(handle: TaskReporterHandle) -> Self {
        Self {
            handle,
            config: TaskReporterConfig::default(),
            #[cfg(feature = "api")]
            external: None,
        }
    }

    /// A spec (default configuration) and the handle to read the summary from.
    pub fn spec() -> (PluginSpec, TaskReporterHandle) {
        let handle = TaskReporterHandle::default();
        let shared = handle.clone();
        (
            PluginSpec::new(move || Self::with_handle(shared.clone())),
            handle,
        )
    }

    /// The handle on this instance's state.
    pub fn handle(&self) -> TaskReporterHandle {
        self.handle.clone()
    }

    async fn apply(&mut self, config: TaskReporterConfig) -> Result<(), PluginError> {
        // The previous configuration's sender sends what it holds first (bounded by its
        // `final_timeout_ms`), rather than going on alone behind the new one.
        #[cfg(feature = "api")]
        if let Some(old) = self.external.take() {
            old.finish().await;
        }
        *self
            .handle
            .slowest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = config.slowest;
        #[cfg(feature = "api")]
        {
            self.external = match &config.external {
                Some(ext) => Some(external::Sender::start(ext, &self.handle)?),
                None => None,
            };
        }
        #[cfg(not(feature = "api"))]
        if config.external.is_some() {
            return Err("`external` reporting needs dtf-plugins-ci's `api` feature".into());
        }
        self.config = config;
        Ok(())
    }

    fn write_summary(&self, summary: &TaskSummary) -> Result<(), CiError> {
        let Some(path) = &self.config.summary_json else {
            return Ok(());
        };
        let written = Self::write_json(path, summary);
        self.handle.files.record(path, &written);
        written
    }

    fn write_json(path: &std::path::Path, summary: &TaskSummary) -> Result<(), CiError> {
        let json = serde_json::to_string_pretty(summary)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| CiError::Write {
                path: path.to_owned(),
                source,
            })?;
        }
        std::fs::write(path, json).map_err(|source| CiError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

impl Plugin for TaskReporter {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Reporter)
            .hooks(
                HookSet::TASK
                    .union(HookSet::WORKER)
                    .union(HookSet::RECOVERY)
                    .union(HookSet::COORDINATOR)
                    .with(Hook::Custom),
            )
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        let config = ctx.config::<TaskReporterConfig>()?;
        // Checked here too: a spec built in code (or restarted) does not pass the registry.
        config.validate()?;
        self.apply(config).await
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        // Applied in place: the recorded run lives in the handle and is kept.
        let config = ctx.config::<TaskReporterConfig>()?;
        config.validate()?;
        self.apply(config).await?;
        Ok(Reconfigured::Applied)
    }

    async fn on_event(
        &mut self,
        ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        if let EventKind::Custom(custom) = &event.kind {
            if custom.name == SUMMARY_REQUEST {
                let payload = serde_json::to_value(self.handle.summary()).map_err(CiError::from)?;
                if let Err(e) = ctx.publish(EventKind::custom(SUMMARY_EVENT, payload)) {
                    tracing::debug!(error = %e, "bus closed, summary not published");
                }
            }
            return Ok(());
        }
        self.handle.lock().record(event);
        #[cfg(feature = "api")]
        if let Some(external) = &mut self.external {
            external.push(event);
        }
        if matches!(event.kind, EventKind::CoordinatorShutdown(_)) {
            let summary = self.handle.summary();
            if self.config.log_summary {
                tracing::info!(
                    tasks = summary.totals.tasks,
                    passed = summary.totals.passed,
                    failed = summary.totals.failed,
                    flaky = summary.totals.flaky,
                    retries = summary.retries,
                    pass_rate = summary.pass_rate,
                    "run summary\n{}",
                    summary.render_table()
                );
            }
            let written = self.write_summary(&summary);
            #[cfg(feature = "api")]
            if let Some(external) = self.external.take() {
                external.finish().await;
            }
            written?;
        }
        Ok(())
    }

    async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        #[cfg(feature = "api")]
        if let Some(external) = self.external.take() {
            external.finish().await;
        }
        Ok(())
    }
}

/// Percentiles of a set of durations (nearest-rank method).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DurationStats {
    /// How many values.
    pub count: usize,
    /// Median.
    #[serde(rename = "p50_secs", serialize_with = "ser_secs")]
    pub p50: Duration,
    /// 95th percentile.
    #[serde(rename = "p95_secs", serialize_with = "ser_secs")]
    pub p95: Duration,
    /// Largest value.
    #[serde(rename = "max_secs", serialize_with = "ser_secs")]
    pub max: Duration,
    /// Sum of all values.
    #[serde(rename = "total_secs", serialize_with = "ser_secs")]
    pub total: Duration,
}

impl DurationStats {
    /// The statistics of `values` (all zero when empty).
    pub fn of(mut values: Vec<Duration>) -> Self {
        values.sort_unstable();
        let count = values.len();
        Self {
            count,
            p50: percentile(&values, 50),
            p95: percentile(&values, 95),
            max: values.last().copied().unwrap_or_default(),
            total: values.iter().sum(),
        }
    }
}

/// The `p`th percentile of sorted `values`, nearest-rank: the smallest value with at least
/// `p`% of the values at or below it.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// One task in a summary list (slowest, failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TaskLine {
    /// Task id.
    pub id: String,
    /// Task name.
    pub name: String,
    /// Final status.
    pub status: TaskStatus,
    /// Attempts made.
    pub attempts: usize,
    /// Run time over all attempts.
    #[serde(rename = "duration_secs", serialize_with = "ser_secs")]
    pub duration: Duration,
    /// The last error (`kind: message`), for failed tasks.
    pub error: Option<String>,
}

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Worker id.
    pub id: String,
    /// Attempts that finished on it (passed, failed, errored, skipped).
    pub attempts: usize,
    /// Attempts that passed.
    pub passed: usize,
    /// Attempts that failed or errored.
    pub failed: usize,
    /// Attempts lost when it failed or disconnected.
    pub lost: usize,
    /// Time spent running attempts.
    #[serde(rename = "busy_secs", serialize_with = "ser_secs")]
    pub busy: Duration,
    /// Times it failed (`WorkerFailed`; disconnections are not counted).
    pub failures: usize,
    /// Returns to service.
    pub recoveries: u32,
}

/// What one tenant (task owner) got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TenantStats {
    /// The owner (empty when tasks have none).
    pub owner: String,
    /// Tasks.
    pub tasks: usize,
    /// Passed (flaky included).
    pub passed: usize,
    /// Failed or never finished.
    pub failed: usize,
    /// Run time over all its tasks' attempts.
    #[serde(rename = "run_time_secs", serialize_with = "ser_secs")]
    pub run_time: Duration,
    /// Time its tasks waited for their first start.
    #[serde(rename = "queue_wait_secs", serialize_with = "ser_secs")]
    pub queue_wait: Duration,
}

/// A run's summary: counts, pass rate, duration percentiles, slowest and flaky tasks, and
/// per-worker and per-tenant figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TaskSummary {
    /// The run's id, from `CoordinatorStartup`.
    pub run_id: Option<String>,
    /// Counts by final status (the same as the CI reports').
    pub totals: Totals,
    /// Attempts beyond each task's first.
    pub retries: usize,
    /// `(passed + flaky) / (passed + flaky + failed + incomplete)`; `None` when no task
    /// counts (skipped and cancelled tasks are left out).
    pub pass_rate: Option<f64>,
    /// Run time per task (its attempts summed), over tasks that ran.
    pub run_time: DurationStats,
    /// Per task, from `TaskCreated` to its first `TaskStarted`.
    pub queue_wait: DurationStats,
    /// The slowest tasks, slowest first.
    pub slowest: Vec<TaskLine>,
    /// Tasks that failed and then passed on a retry.
    pub flaky: Vec<TaskLine>,
    /// Tasks that failed or never finished.
    pub failed: Vec<TaskLine>,
    /// Per worker, in registration (or first appearance) order.
    pub workers: Vec<WorkerStats>,
    /// Per owner, sorted by name.
    pub tenants: Vec<TenantStats>,
    /// From startup to shutdown (or first to last event).
    #[serde(rename = "wall_time_secs", serialize_with = "ser_secs")]
    pub wall_time: Duration,
}

impl TaskSummary {
    /// Whether the run failed: a task failed, was cancelled, or never finished.
    pub fn is_failure(&self) -> bool {
        self.totals.is_failure()
    }

    /// A plain-text table for a terminal or a log. Task names, errors, worker ids and owners
    /// go through [`neutralize`], so the table is safe to print where a CI runner reads it.
    pub fn render_table(&self) -> String {
        use std::fmt::Write as _;
        let t = &self.totals;
        let mut out = String::new();
        let rate = self
            .pass_rate
            .map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
        let _ = writeln!(
            out,
            "tasks {}  passed {}  failed {}  flaky {}  skipped {}  cancelled {}  incomplete {}",
            t.tasks, t.passed, t.failed, t.flaky, t.skipped, t.cancelled, t.incomplete
        );
        let _ = writeln!(
            out,
            "attempts {}  retries {}  pass rate {rate}  wall time {}",
            t.attempts,
            self.retries,
            secs(self.wall_time)
        );
        let _ = writeln!(
            out,
            "run time p50 {}  p95 {}  max {}   queue wait p50 {}  p95 {}",
            secs(self.run_time.p50),
            secs(self.run_time.p95),
            secs(self.run_time.max),
            secs(self.queue_wait.p50),
            secs(self.queue_wait.p95)
        );
        if !self.workers.is_empty() {
            let mut table = table(Some(&[
                "worker", "attempts", "passed", "failed", "lost", "busy", "failures",
            ]));
            for w in &self.workers {
                table.add_row(vec![
                    neutralize(&w.id).into_owned(),
                    w.attempts.to_string(),
                    w.passed.to_string(),
                    w.failed.to_string(),
                    w.lost.to_string(),
                    secs(w.busy),
                    w.failures.to_string(),
                ]);
            }
            let _ = write!(out, "\n{}", render(table, &[1, 2, 3, 4, 5, 6], 0));
        }
        if self.tenants.iter().any(|t| !t.owner.is_empty()) {
            let mut table = table(Some(&[
                "tenant",
                "tasks",
                "passed",
                "failed",
                "run time",
                "queue wait",
            ]));
            for t in &self.tenants {
                table.add_row(vec![
                    if t.owner.is_empty() {
                        "-".to_owned()
                    } else {
                        neutralize(&t.owner).into_owned()
                    },
                    t.tasks.to_string(),
                    t.passed.to_string(),
                    t.failed.to_string(),
                    secs(t.run_time),
                    secs(t.queue_wait),
                ]);
            }
            let _ = write!(out, "\n{}", render(table, &[1, 2, 3, 4, 5], 0));
        }
        let mut list = |title: &str, lines: &[TaskLine]| {
            if lines.is_empty() {
                return;
            }
            let _ = writeln!(out, "\n{title}:");
            let mut table = table(None);
            for l in lines {
                table.add_row(vec![
                    neutralize(&l.name).into_owned(),
                    secs(l.duration),
                    l.status.name().to_owned(),
                    format!("{} attempt(s)", l.attempts),
                    l.error
                        .as_deref()
                        .map(|e| neutralize(&crate::markdown::short(e, 120)).into_owned())
                        .unwrap_or_default(),
                ]);
            }
            out.push_str(&render(table, &[1], 2));
        };
        list("failed", &self.failed);
        list("flaky", &self.flaky);
        list("slowest", &self.slowest);
        out
    }
}

/// A borderless table (each line a header or a row), with `header` if any. Render it with
/// [`render`] once the rows are in. Cells are one line of neutralised text.
fn table(header: Option<&[&str]>) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    if let Some(header) = header {
        table.set_header(header.to_vec());
    }
    table
}

/// `table` as text, two spaces between columns, the columns at `right_aligned` aligned
/// right, indented by `indent` spaces; each line without trailing blanks, ending with a
/// newline.
fn render(mut table: comfy_table::Table, right_aligned: &[usize], indent: u16) -> String {
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((if i == 0 { indent } else { 0 }, 2));
        if right_aligned.contains(&i) {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn summarize(
    run: &RunResult,
    created_at: &HashMap<TaskId, SystemTime>,
    first_start: &HashMap<TaskId, SystemTime>,
    owners: &HashMap<TaskId, String>,
    slowest: usize,
) -> TaskSummary {
    let line = |t: &crate::run::TaskResult| TaskLine {
        id: t.id.clone(),
        name: t.name.clone(),
        status: t.status,
        attempts: t.attempts.len(),
        duration: t.total_duration(),
        error: t.last_failure().map(|a| {
            format!(
                "{}: {}",
                a.error_kind.as_deref().unwrap_or("Error"),
                a.message.as_deref().unwrap_or("")
            )
        }),
    };
    let t = &run.totals;
    let counted = t.passed + t.flaky + t.failed + t.incomplete;
    let pass_rate = (counted > 0).then(|| (t.passed + t.flaky) as f64 / counted as f64);
    let retries = run
        .tasks
        .iter()
        .map(|t| t.attempts.len().saturating_sub(1))
        .sum();

    let ran: Vec<&crate::run::TaskResult> = run
        .tasks
        .iter()
        .filter(|t| t.attempts.iter().any(|a| a.started_at.is_some()))
        .collect();
    let run_time = DurationStats::of(ran.iter().map(|t| t.total_duration()).collect());
    let wait_of = |id: &str| -> Option<Duration> {
        let id = TaskId::from(id);
        let created = created_at.get(&id)?;
        let started = first_start.get(&id)?;
        Some(started.duration_since(*created).unwrap_or_default())
    };
    let queue_wait = DurationStats::of(run.tasks.iter().filter_map(|t| wait_of(&t.id)).collect());

    let mut by_time: Vec<&crate::run::TaskResult> = ran.clone();
    by_time.sort_by_key(|t| std::cmp::Reverse(t.total_duration()));
    let slowest = by_time.into_iter().take(slowest).map(line).collect();
    let flaky = run
        .tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Flaky)
        .map(line)
        .collect();
    let failed = run
        .tasks
        .iter()
        .filter(|t| matches!(t.status, TaskStatus::Failed | TaskStatus::Incomplete))
        .map(line)
        .collect();

    // Workers: the recorder's list (registration order) plus any worker seen only in attempts.
    let mut workers: Vec<WorkerStats> = run
        .workers
        .iter()
        .map(|w| WorkerStats {
            id: w.id.clone(),
            failures: w
                .incidents
                .iter()
                .filter(|i| i.starts_with("failed:"))
                .count(),
            recoveries: w.recoveries,
            ..WorkerStats::default()
        })
        .collect();
    for task in &run.tasks {
        for a in &task.attempts {
            let Some(id) = &a.worker else { continue };
            let i = match workers.iter().position(|w| &w.id == id) {
                Some(i) => i,
                None => {
                    workers.push(WorkerStats {
                        id: id.clone(),
                        ..WorkerStats::default()
                    });
                    workers.len() - 1
                }
            };
            let w = &mut workers[i];
            match a.outcome {
                AttemptOutcome::Running | AttemptOutcome::Cancelled => {}
                AttemptOutcome::Lost => w.lost += 1,
                outcome => {
                    w.attempts += 1;
                    w.busy += a.duration;
                    if outcome == AttemptOutcome::Passed {
                        w.passed += 1;
                    } else if outcome.is_failure() {
                        w.failed += 1;
                    }
                }
            }
        }
    }

    let mut tenants: std::collections::BTreeMap<String, TenantStats> =
        std::collections::BTreeMap::new();
    for task in &run.tasks {
        let owner = owners
            .get(&TaskId::from(task.id.as_str()))
            .cloned()
            .unwrap_or_default();
        let entry = tenants.entry(owner.clone()).or_insert_with(|| TenantStats {
            owner,
            ..TenantStats::default()
        });
        entry.tasks += 1;
        match task.status {
            TaskStatus::Passed | TaskStatus::Flaky => entry.passed += 1,
            TaskStatus::Failed | TaskStatus::Incomplete => entry.failed += 1,
            _ => {}
        }
        entry.run_time += task.total_duration();
        entry.queue_wait += wait_of(&task.id).unwrap_or_default();
    }

    TaskSummary {
        run_id: run.run_id.clone(),
        totals: run.totals,
        retries,
        pass_rate,
        run_time,
        queue_wait,
        slowest,
        flaky,
        failed,
        workers,
        tenants: tenants.into_values().collect(),
        wall_time: run.wall_time,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use dtf_plugin_core::event::{EventMeta, TaskCreated, TaskOutcome};

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn ev(seq: u64, ms: u64, kind: EventKind) -> Event {
        Event {
            meta: EventMeta {
                seq,
                time: at(ms),
                source: Arc::from("test"),
            },
            kind,
        }
    }

    fn err(kind: &str) -> TaskError {
        TaskError::builder().kind(kind).message("boom").build()
    }

    fn failed(task: &str, worker: &str, attempt: u32, retryable: bool) -> EventKind {
        EventKind::TaskFailed(Box::new(
            dtf_plugin_core::event::TaskFailed::builder()
                .task(task)
                .worker(worker)
                .attempt(attempt)
                .error(err("ExitCode(1)"))
                .retryable(retryable)
                .build(),
        ))
    }

    fn completed(task: &str, worker: &str, attempt: u32, ms: u64) -> EventKind {
        EventKind::TaskCompleted(Box::new(
            dtf_plugin_core::event::TaskCompleted::builder()
                .task(task)
                .worker(worker)
                .attempt(attempt)
                .outcome(TaskOutcome::Passed)
                .duration(Duration::from_millis(ms))
                .build(),
        ))
    }

    /// A run with a pass (alice), a flaky task (bob) and a failure (alice), on two workers.
    fn sample() -> TaskReporterHandle {
        let handle = TaskReporterHandle::default();
        *handle.slowest.lock().unwrap() = 2;
        let created = |id: &str, owner: &str| {
            EventKind::TaskCreated(Box::new(
                TaskCreated::builder()
                    .task(id)
                    .name(format!("suite::{id}"))
                    .owner(owner)
                    .build(),
            ))
        };
        let events = [
            (0, EventKind::coordinator_startup("run-9")),
            (
                0,
                EventKind::worker_registered("w1", Capabilities::default()),
            ),
            (
                0,
                EventKind::worker_registered("w2", Capabilities::default()),
            ),
            (0, created("a", "alice")),
            (0, created("b", "bob")),
            (0, created("c", "alice")),
            (10, EventKind::task_assigned("a", "w1", 1)),
            (20, EventKind::task_started("a", "w1", 1)),
            (10, EventKind::task_assigned("b", "w2", 1)),
            (40, EventKind::task_started("b", "w2", 1)),
            (120, completed("a", "w1", 1, 100)),
            (140, failed("b", "w2", 1, true)),
            (140, EventKind::task_assigned("b", "w1", 2)),
            (150, EventKind::task_started("b", "w1", 2)),
            (150, EventKind::task_assigned("c", "w2", 1)),
            (160, EventKind::task_started("c", "w2", 1)),
            (450, completed("b", "w1", 2, 300)),
            (460, failed("c", "w2", 1, false)),
            (
                500,
                EventKind::coordinator_shutdown(ShutdownReason::Completed),
            ),
        ];
        let mut tracker = handle.lock();
        for (i, (ms, kind)) in events.into_iter().enumerate() {
            tracker.record(&ev(i as u64 + 1, ms, kind));
        }
        drop(tracker);
        handle
    }

    #[test]
    fn summary_counts_rates_percentiles_and_lists() {
        let s = sample().summary();
        assert_eq!(s.run_id.as_deref(), Some("run-9"));
        assert_eq!(
            (
                s.totals.tasks,
                s.totals.passed,
                s.totals.flaky,
                s.totals.failed
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(s.totals.attempts, 4);
        assert_eq!(s.retries, 1);
        assert_eq!(s.pass_rate, Some(2.0 / 3.0));
        // Run times: a 100 ms, b 100 ms (measured) + 300 ms = 400 ms, c 300 ms (measured).
        assert_eq!(s.run_time.count, 3);
        assert_eq!(s.run_time.p50, Duration::from_millis(300));
        assert_eq!(s.run_time.p95, Duration::from_millis(400));
        assert_eq!(s.run_time.max, Duration::from_millis(400));
        // Queue waits: a 20 ms, b 40 ms, c 160 ms.
        assert_eq!(s.queue_wait.p50, Duration::from_millis(40));
        assert_eq!(s.queue_wait.p95, Duration::from_millis(160));
        let slow: Vec<_> = s.slowest.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(slow, ["b", "c"]);
        assert_eq!(s.flaky.len(), 1);
        assert_eq!(s.flaky[0].id, "b");
        assert_eq!(s.failed[0].id, "c");
        assert_eq!(s.failed[0].error.as_deref(), Some("ExitCode(1): boom"));
        assert_eq!(s.wall_time, Duration::from_millis(500));
        assert!(s.is_failure());
    }

    #[test]
    fn summary_splits_by_worker_and_tenant() {
        let s = sample().summary();
        let w1 = &s.workers[0];
        assert_eq!(
            (w1.id.as_str(), w1.attempts, w1.passed, w1.failed),
            ("w1", 2, 2, 0)
        );
        assert_eq!(w1.busy, Duration::from_millis(400));
        let w2 = &s.workers[1];
        assert_eq!(
            (w2.id.as_str(), w2.attempts, w2.passed, w2.failed),
            ("w2", 2, 0, 2)
        );
        let tenants: Vec<_> = s
            .tenants
            .iter()
            .map(|t| (t.owner.as_str(), t.tasks, t.passed, t.failed))
            .collect();
        assert_eq!(tenants, [("alice", 2, 1, 1), ("bob", 1, 1, 0)]);
        assert_eq!(s.tenants[0].queue_wait, Duration::from_millis(180));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let d = |v: &[u64]| {
            v.iter()
                .map(|&s| Duration::from_secs(s))
                .collect::<Vec<_>>()
        };
        let st = DurationStats::of(d(&[5, 1, 4, 2, 3, 6, 7, 8, 9, 10]));
        assert_eq!(st.p50, Duration::from_secs(5));
        assert_eq!(st.p95, Duration::from_secs(10));
        assert_eq!(st.total, Duration::from_secs(55));
        assert_eq!(DurationStats::of(Vec::new()), DurationStats::default());
        assert_eq!(DurationStats::of(d(&[7])).p95, Duration::from_secs(7));
    }

    #[test]
    fn table_names_failed_and_flaky_tasks() {
        let table = sample().summary().render_table();
        assert!(
            table.contains("tasks 3  passed 1  failed 1  flaky 1"),
            "{table}"
        );
        assert!(table.contains("pass rate 66.7%"), "{table}");
        assert!(table.contains("suite::c"), "{table}");
        assert!(table.contains("ExitCode(1): boom"), "{table}");
        assert!(table.contains("alice"), "{table}");
    }

    #[test]
    fn empty_run_has_no_pass_rate() {
        let s = TaskReporterHandle::default().summary();
        assert_eq!(s.pass_rate, None);
        assert!(!s.is_failure());
    }

    #[tokio::test]
    async fn answers_a_summary_request_on_the_bus() {
        use dtf_plugin_core::testing::RecordingPlugin;
        let (spec, handle) = TaskReporter::spec();
        let (rec, recording) = RecordingPlugin::spec("rec", Hook::Custom);
        let manager = PluginManager::builder()
            .spec(spec.config(serde_json::json!({ "log_summary": false })))
            .spec(rec)
            .spawn()
            .await
            .unwrap();
        manager
            .publish(EventKind::task_created("t1", "one"))
            .await
            .unwrap();
        manager
            .publish(EventKind::custom(SUMMARY_REQUEST, serde_json::Value::Null))
            .await
            .unwrap();
        manager.settle().await;
        let answer = recording
            .events()
            .into_iter()
            .find_map(|e| match e.kind {
                EventKind::Custom(c) if c.name == SUMMARY_EVENT => Some(c.payload),
                _ => None,
            })
            .unwrap();
        assert_eq!(answer["totals"]["tasks"], 1);
        assert_eq!(answer["totals"]["incomplete"], 1);
        assert_eq!(handle.summary().totals.tasks, 1);
        manager.shutdown(ShutdownReason::Completed).await;
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let err = serde_json::from_value::<TaskReporterConfig>(serde_json::json!({ "slowst": 2 }))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `slowst`"), "{err}");
    }
}
