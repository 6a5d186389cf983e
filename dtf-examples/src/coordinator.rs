//! The reference coordinator: assembles a plugin manager, the scheduler, local workers and
//! the configured plugins, runs the tasks, and reports.
//!
//! See `docs/coordinator.md` for the command line and the guarantees.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory as _, Parser as _};
use dtf_cluster::{Hub, HubNote};
use dtf_plugin_core::config::{
    self, Config, ConfigErrors, ConfigIssue, ConfigLoader, IssueKind, Origin,
};
use dtf_plugin_core::event::{TaskCreated, TaskId, WorkerId};
use dtf_plugin_core::external::{self, Reloader};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::registry::{PluginRegistry, PluginSource, RegistryEntry, did_you_mean};
use dtf_plugin_core::{Handover, ShutdownReport};
use dtf_plugins_ci::{
    CiReporter, ReportFile, ReportFiles, ReporterConfig, RunResult, TaskReporter,
    TaskReporterHandle, TaskSummary,
};
use dtf_scheduler::{Registry as SchedulerRegistry, SchedulerConfig, SchedulingCoordinator};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::cli::{Command, CoordinatorArgs, MAX_WORKERS};
use crate::error::CoordinatorError;
use crate::executor::{ShellExecutor, WorkerNote, WorkerPool};
use crate::output::{render_table, table};
use crate::progress::{ProgressDisplay, RunTracker};
use crate::taskfile::{TaskDef, TaskKind};

/// How often the plugin directories are checked for changed, new or removed plugins.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The optional plugins enabled when no flag says otherwise.
pub const DEFAULT_PLUGINS: &[&str] = &[TaskReporter::NAME];

/// Which optional plugins to run. The scheduler, the executor and the run tracker are the
/// coordinator itself and always run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PluginSelection {
    /// `--disable-plugins`: start from no optional plugin instead of [`DEFAULT_PLUGINS`].
    pub disable_all: bool,
    /// `--enable-plugin X` (repeatable, or comma-separated).
    pub enable: Vec<String>,
    /// `--disable-plugin Y` (repeatable, or comma-separated); wins over `enable`.
    pub disable: Vec<String>,
}

/// Everything the coordinator needs to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoordinatorOptions {
    /// The tasks.
    pub tasks: Vec<TaskDef>,
    /// Local workers (one slot each). Default 2.
    pub workers: u32,
    /// The scheduling strategy and its settings. Default `fifo`. When left at the default,
    /// the configuration file's `[plugins.scheduler.settings]` apply.
    pub scheduler: SchedulerConfig,
    /// `--scheduler NAME`: the strategy, replacing the `scheduler` of the settings in force
    /// (the file's, or [`scheduler`](Self::scheduler)) and keeping their tuning (weights,
    /// quotas, half-life, …). Default: none.
    pub scheduler_name: Option<String>,
    /// The run's id (`CoordinatorStartup`). Default `dtf-run`.
    pub run_id: String,
    /// Optional plugins.
    pub plugins: PluginSelection,
    /// `--config FILE`: the configuration file (`docs/configuration.md`); see
    /// [`load_config_and_plugin_dirs`].
    pub config_file: Option<PathBuf>,
    /// `--set key=value` (repeatable): overrides of configuration keys, above the file and
    /// the environment.
    pub config_overrides: Vec<String>,
    /// `--plugin-dirs a,b`: directories of out-of-process plugins (`docs/external-plugins.md`);
    /// they replace the file's `plugin_dirs`.
    pub plugin_dirs: Vec<PathBuf>,
    /// `--junit FILE`: enables `ci-reporter` writing JUnit XML there.
    pub junit: Option<PathBuf>,
    /// Fault injection (`--kill-worker-on-start TASK`): the worker running the first attempt
    /// of each of these tasks is killed as soon as the attempt starts.
    pub kill_worker_on_start: Vec<String>,
    /// Whether to run the live progress display ([`ProgressDisplay`]: a bar on a terminal,
    /// plain periodic lines otherwise, on stderr). Default: when stderr is a terminal (the
    /// command line's `--progress auto` turns it on everywhere).
    pub progress: bool,
    /// Stop (cancelling what is left) after this long. Default: none.
    pub run_timeout: Option<Duration>,
    /// Whether Ctrl-C cancels the run (the binary sets it). Default `false`.
    pub handle_ctrl_c: bool,
    /// `--ui ADDR`: serve the web console there ([`crate::console`]); wins over `[ui] listen`
    /// of the configuration. Default: off.
    pub ui: Option<std::net::SocketAddr>,
    /// `--listen ADDR` and friends: accept remote workers (`dtf-worker`, docs/cluster.md).
    /// Default: off.
    pub cluster: Option<crate::remote::ClusterOptions>,
}

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            workers: 2,
            scheduler: SchedulerConfig::new("fifo"),
            scheduler_name: None,
            run_id: "dtf-run".to_owned(),
            plugins: PluginSelection::default(),
            config_file: None,
            config_overrides: Vec::new(),
            plugin_dirs: Vec::new(),
            junit: None,
            kill_worker_on_start: Vec::new(),
            progress: std::io::stderr().is_terminal(),
            run_timeout: None,
            handle_ctrl_c: false,
            ui: None,
            cluster: None,
        }
    }
}

/// The optional plugins the coordinator knows: those of `dtf-plugins-ci`
/// ([`dtf_plugins_ci::register`]), the notifier ([`dtf_plugins_notify::register`]) and the
/// progress display. (The scheduler is part of the coordinator, chosen with `--scheduler`.)
pub fn plugin_registry() -> PluginRegistry {
    let mut registry = PluginRegistry::new();
    // Names are fixed and distinct, so registering cannot fail; a failure would only drop
    // plugins from the listing, which `--list-plugins` would show.
    if let Err(e) = dtf_plugins_ci::register(&mut registry) {
        tracing::error!(error = %e, "registering the CI plugins failed");
    }
    if let Err(e) = dtf_plugins_notify::register(&mut registry) {
        tracing::error!(error = %e, "registering the notifier failed");
    }
    crate::scheduler_settings::register(&mut registry);
    if let Err(e) = registry.register(
        RegistryEntry::new(|| PluginSpec::new(crate::event_log::EventLog::default))
            .description("appends every event to a file, one JSON line each")
            .built_in("dtf-examples")
            .config_type::<crate::event_log::EventLogConfig>(),
    ) {
        tracing::error!(error = %e, "registering the event log failed");
    }
    if let Err(e) = registry.register(
        RegistryEntry::new(|| PluginSpec::new(ProgressDisplay::default))
            .description(
                "live progress on stderr: a bar on a terminal, a plain line every 10 s otherwise",
            )
            .built_in("dtf-examples"),
    ) {
        tracing::error!(error = %e, "registering the progress display failed");
    }
    registry
}

/// What `--config FILE`, `DTF_*` environment variables, `--set key=value` and
/// `--plugin-dirs` give the coordinator.
#[derive(Debug)]
#[non_exhaustive]
pub struct LoadedConfig {
    /// The effective configuration: defaults < file < environment (`DTF_`) < `--set`.
    pub config: Config,
    /// The plugin directories scanned: `--plugin-dirs` when given, else the file's
    /// `plugin_dirs`.
    pub plugin_dirs: Vec<PathBuf>,
    /// The plugins registered from those directories.
    pub loaded: Vec<String>,
    /// Manifests that could not be loaded (each naming its file and key). A run goes on
    /// without those plugins; `--check-config` reports them as errors.
    pub manifest_errors: Vec<ConfigIssue>,
    /// `[ui] listen`: where to serve the web console (`--ui` wins).
    pub ui_listen: Option<std::net::SocketAddr>,
    /// `[ui] token_file`: the file holding the console's token, relative paths resolved
    /// against the configuration file's directory (`DTF_UI_TOKEN` and `DTF_UI_TOKEN_FILE`
    /// win).
    pub ui_token_file: Option<PathBuf>,
    /// `[cluster]`: accept remote workers (`--listen` and the cluster flags win).
    pub cluster: crate::remote::ClusterFile,
}

/// Loads the configuration (see [`LoadedConfig`]), registers the out-of-process plugins
/// found in the plugin directories in `registry`, and validates the whole: every configured
/// name registered, each plugin's settings against its typed configuration, `after` and
/// `requires` satisfiable. A manifest that cannot be loaded is logged and skipped; the other
/// plugins still load.
///
/// # Errors
///
/// [`CoordinatorError::MissingConfig`], [`CoordinatorError::MissingPluginDir`], and
/// [`CoordinatorError::Config`] with every problem found, each with its position.
pub fn load_config_and_plugin_dirs(
    config_file: Option<&Path>,
    plugin_dirs: &[PathBuf],
    overrides: &[String],
    registry: &mut PluginRegistry,
) -> Result<LoadedConfig, CoordinatorError> {
    load_config(
        config_file,
        plugin_dirs,
        overrides,
        registry,
        Runs::Coordinator,
    )
}

/// What a configuration is loaded for: a coordinator also checks its scheduler's section
/// ([`crate::scheduler_settings::issues`]); a worker runs no scheduler.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runs {
    Coordinator,
    Worker,
}

/// [`load_config_and_plugin_dirs`], for a coordinator or a worker.
pub(crate) fn load_config(
    config_file: Option<&Path>,
    plugin_dirs: &[PathBuf],
    overrides: &[String],
    registry: &mut PluginRegistry,
    runs: Runs,
) -> Result<LoadedConfig, CoordinatorError> {
    let mut loader = ConfigLoader::new()
        .env_prefix("DTF_")
        .cli_overrides(overrides.iter().cloned());
    if let Some(path) = config_file {
        if !path.is_file() {
            return Err(CoordinatorError::MissingConfig {
                path: path.to_owned(),
            });
        }
        loader = loader.file(path);
    }
    // Every problem is reported at once: those of the file, the environment and `--set`, and
    // those that need the plugins (names, settings, dependencies), which can only be checked
    // once the plugin directories are registered.
    let (config, mut issues) = loader.load_with_issues()?;
    let (ui_listen, ui_token_file) = ui_settings(&config, &mut issues);
    let cluster = cluster_settings(&config, &mut issues);
    let from_file = plugin_dirs.is_empty();
    let dirs = if from_file {
        config.plugin_dirs().to_vec()
    } else {
        plugin_dirs.to_vec()
    };
    let mut present = Vec::with_capacity(dirs.len());
    for (i, dir) in dirs.iter().enumerate() {
        if dir.is_dir() {
            present.push(dir.clone());
        } else if from_file {
            // Reported with the others, at the key's position in the file.
            issues.push(ConfigIssue::new(
                IssueKind::InvalidValue,
                &format!("plugin_dirs[{i}]"),
                config.origin("plugin_dirs").unwrap_or(Origin::Default),
                format!("`{}` is not a directory", dir.display()),
            ));
        } else {
            return Err(CoordinatorError::MissingPluginDir { path: dir.clone() });
        }
    }
    let report = external::register_dirs(registry, &present);
    for issue in &report.errors {
        tracing::error!(%issue, "a plugin could not be loaded; the others are");
    }
    if runs == Runs::Coordinator {
        issues.extend(crate::scheduler_settings::issues(&config));
    }
    config::validate_with_issues(&config, issues, registry)?;
    Ok(LoadedConfig {
        config,
        plugin_dirs: present,
        loaded: report.loaded,
        manifest_errors: report.errors,
        ui_listen,
        ui_token_file,
        cluster,
    })
}

/// Reads the reference coordinator's own sections of `dtf.toml` (`[cluster]`, `[ui]`): each
/// bad value is added to `issues` at its position, and never echoed.
struct SectionReader<'a> {
    config: &'a Config,
    issues: &'a mut Vec<ConfigIssue>,
}

impl SectionReader<'_> {
    fn origin(&self, key: &str) -> Origin {
        self.config.origin(key).unwrap_or(Origin::Default)
    }

    fn bad(&mut self, key: &str, message: &str) {
        let origin = self.origin(key);
        self.issues.push(ConfigIssue::new(
            IssueKind::InvalidValue,
            key,
            origin,
            message,
        ));
    }

    /// A non-empty path, relative to the directory of the file it came from.
    fn path(&mut self, key: &str) -> Option<PathBuf> {
        match self.config.get(key) {
            None => None,
            Some(serde_json::Value::String(s)) if !s.is_empty() => {
                Some(self.origin(key).resolve_path(&s))
            }
            Some(_) => {
                self.bad(key, "expected a non-empty path");
                None
            }
        }
    }
}

/// `[cluster]`: the same settings as `--listen`, `--min-workers`, `--tls-cert`, `--tls-key`,
/// `--cookie-file` and `--insecure-cluster`; paths relative to the configuration file's
/// directory.
fn cluster_settings(config: &Config, issues: &mut Vec<ConfigIssue>) -> crate::remote::ClusterFile {
    let mut r = SectionReader { config, issues };
    let mut file = crate::remote::ClusterFile::default();
    match config.get("cluster.listen") {
        None => {}
        Some(serde_json::Value::String(s)) => match s.parse() {
            Ok(addr) => file.listen = Some(addr),
            Err(_) => r.bad(
                "cluster.listen",
                "expected an address like \"127.0.0.1:7700\"",
            ),
        },
        Some(_) => r.bad(
            "cluster.listen",
            "expected a string like \"127.0.0.1:7700\"",
        ),
    }
    match config.get("cluster.min_workers") {
        None => {}
        Some(serde_json::Value::Number(n)) => {
            match n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=100_000).contains(n))
            {
                Some(n) => file.min_workers = Some(n),
                None => r.bad("cluster.min_workers", "expected a number from 1 to 100000"),
            }
        }
        Some(_) => r.bad("cluster.min_workers", "expected a number from 1 to 100000"),
    }
    match config.get("cluster.insecure") {
        None => {}
        Some(serde_json::Value::Bool(b)) => file.insecure = Some(b),
        Some(_) => r.bad("cluster.insecure", "expected true or false"),
    }
    file.tls_cert = r.path("cluster.tls_cert");
    file.tls_key = r.path("cluster.tls_key");
    file.cookie_file = r.path("cluster.cookie_file");
    file
}

/// `[ui] listen` and `token_file`, the same settings as `--ui` and `DTF_UI_TOKEN_FILE`.
fn ui_settings(
    config: &Config,
    issues: &mut Vec<ConfigIssue>,
) -> (Option<std::net::SocketAddr>, Option<PathBuf>) {
    let mut r = SectionReader { config, issues };
    let listen = match config.get("ui.listen") {
        None => None,
        Some(serde_json::Value::String(s)) => match crate::console::parse_ui(&s) {
            Ok(addr) => Some(addr),
            Err(_) => {
                r.bad(
                    "ui.listen",
                    "expected an address like \"127.0.0.1:8080\" (or a port)",
                );
                None
            }
        },
        Some(serde_json::Value::Number(n)) => match n.as_u64().map(u16::try_from) {
            Some(Ok(port)) => crate::console::parse_ui(&port.to_string()).ok(),
            _ => {
                r.bad("ui.listen", "expected a port from 0 to 65535");
                None
            }
        },
        Some(_) => {
            r.bad("ui.listen", "expected a string like \"127.0.0.1:8080\"");
            None
        }
    };
    let token_file = r.path("ui.token_file");
    (listen, token_file)
}

/// The optional plugins `selection` enables, in order, each checked against `registry`.
///
/// # Errors
///
/// [`CoordinatorError::Plugin`] for a name that is not registered, with the closest name.
pub fn select_plugins(
    registry: &PluginRegistry,
    selection: &PluginSelection,
) -> Result<Vec<String>, CoordinatorError> {
    for name in &selection.disable {
        registry
            .entry(name)
            .map_err(|source| CoordinatorError::Plugin {
                flag: "--disable-plugin",
                source,
            })?;
    }
    let mut enabled: Vec<String> = if selection.disable_all {
        Vec::new()
    } else {
        DEFAULT_PLUGINS.iter().map(|s| (*s).to_owned()).collect()
    };
    for name in &selection.enable {
        registry
            .entry(name)
            .map_err(|source| CoordinatorError::Plugin {
                flag: "--enable-plugin",
                source,
            })?;
        if !enabled.contains(name) {
            enabled.push(name.clone());
        }
    }
    enabled.retain(|n| !selection.disable.contains(n));
    Ok(enabled)
}

/// The optional plugins a run with `options` starts, in order: the defaults
/// ([`DEFAULT_PLUGINS`]), those the configuration enables (a `[plugins.NAME]` section without
/// `enabled = false`, and plugins of the plugin directories, in `after`/`requires` order),
/// `--junit`'s reporter, the progress line, then `--enable-plugin`; `enabled = false` and
/// `--disable-plugin` remove one. The command line wins over the file.
///
/// # Errors
///
/// [`CoordinatorError::Plugin`] for an unknown name, [`CoordinatorError::Config`] for a
/// configuration whose dependencies cannot be satisfied.
pub fn plugins_to_run(
    options: &CoordinatorOptions,
    registry: &PluginRegistry,
    loaded: &LoadedConfig,
) -> Result<Vec<String>, CoordinatorError> {
    let mut selection = options.plugins.clone();
    let mut enable = loaded.config.enabled_plugins(registry)?;
    enable.extend(std::mem::take(&mut selection.enable));
    for name in loaded.config.configured_plugins() {
        if !loaded.config.is_enabled(name, registry) && !enable.iter().any(|n| n == name) {
            selection.disable.push(name.to_owned());
        }
    }
    selection.enable = enable;
    if options.junit.is_some() {
        // `--junit` asks for the CI reporter: the command line wins over the file's
        // `enabled = false` (not over `--disable-plugin ci-reporter`, said on the same line).
        if !options.plugins.disable.iter().any(|n| n == "ci-reporter") {
            selection.disable.retain(|n| n != "ci-reporter");
        }
        if !selection.enable.iter().any(|n| n == "ci-reporter") {
            selection.enable.push("ci-reporter".to_owned());
        }
    }
    if options.progress && !selection.disable_all {
        selection.enable.push(ProgressDisplay::NAME.to_owned());
    }
    select_plugins(registry, &selection)
}

/// What a run produced.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunReport {
    /// Tasks in the run.
    pub tasks: usize,
    /// Tasks whose final event was a pass (or a skip).
    pub passed: usize,
    /// Tasks that failed, or were cancelled before they finished.
    pub failed: usize,
    /// The optional plugins that ran.
    pub plugins: Vec<String>,
    /// The task reporter's summary, when `task-reporter` ran.
    pub summary: Option<TaskSummary>,
    /// The task reporter's run model (tasks with attempts), when `task-reporter` ran.
    pub run: Option<RunResult>,
    /// The plugin manager's shutdown report.
    pub shutdown: ShutdownReport,
    /// The report files the CI reporter and the task reporter tried to write (JUnit, JSON,
    /// Markdown, summaries), each with its error when it could not be written.
    pub reports: Vec<ReportFile>,
}

impl RunReport {
    /// The process exit code: 0 when every task passed and every report was written, 1
    /// otherwise.
    pub fn exit_code(&self) -> i32 {
        i32::from(self.failed > 0 || self.reports.iter().any(|r| r.error.is_some()))
    }
}

/// The reference coordinator; see the [module docs](self).
pub struct Coordinator {
    options: CoordinatorOptions,
    registry: PluginRegistry,
    loaded: LoadedConfig,
    enabled: Vec<String>,
    extra: Vec<PluginSpec>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("tasks", &self.options.tasks.len())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Checks `options` (plugin names, paths, scheduler) and prepares a run.
    ///
    /// # Errors
    ///
    /// A [`CoordinatorError`] naming the flag at fault.
    pub fn new(mut options: CoordinatorOptions) -> Result<Self, CoordinatorError> {
        let mut registry = plugin_registry();
        let loaded = load_config_and_plugin_dirs(
            options.config_file.as_deref(),
            &options.plugin_dirs,
            &options.config_overrides,
            &mut registry,
        )?;
        // A task's environment is the coordinator's, less the secrets the plugins read.
        crate::executor::hide_from_tasks(crate::executor::secret_env_vars(&loaded.config));
        let mut enabled = plugins_to_run(&options, &registry, &loaded)?;
        // `--ui` wins over `[ui] listen`.
        if options.ui.is_none() {
            options.ui = loaded.ui_listen;
        }
        // `--listen` and the cluster flags win over `[cluster]`.
        loaded.cluster.apply(&mut options.cluster);
        crate::scheduler_settings::apply(&mut options, &loaded, &mut enabled)?;
        SchedulerRegistry::new().build(&options.scheduler)?;
        if options.tasks.is_empty() {
            return Err(CoordinatorError::NoTasks);
        }
        // The scheduler refuses a second task with a taken id, so it would never finish.
        let mut ids = HashSet::new();
        if let Some(dup) = options.tasks.iter().find(|t| !ids.insert(t.id.as_str())) {
            return Err(CoordinatorError::Usage(format!(
                "task id `{}` is given twice (ids must be unique across task files, --task and --simulate-tasks)",
                dup.id
            )));
        }
        if (options.workers == 0 && options.cluster.is_none()) || options.workers > MAX_WORKERS {
            return Err(CoordinatorError::Usage(format!(
                "--workers: must be from 1 to {MAX_WORKERS} (0 only with --listen: remote \
                 workers only), got {}",
                options.workers
            )));
        }
        // Fault injection kills local workers only: with none, it would inject nothing.
        if options.workers == 0 && !options.kill_worker_on_start.is_empty() {
            return Err(CoordinatorError::Usage(
                "--kill-worker-on-start: kills a local worker, and --workers 0 runs none (stop a \
                 remote `dtf-worker` yourself to test its recovery)"
                    .to_owned(),
            ));
        }
        // Fault injection names task ids; an unknown one would silently inject nothing.
        for id in &options.kill_worker_on_start {
            if !options.tasks.iter().any(|t| t.id == *id) {
                let hint = did_you_mean(id, options.tasks.iter().map(|t| t.id.as_str()))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(CoordinatorError::Usage(format!(
                    "--kill-worker-on-start: no task has the id `{id}`{hint}"
                )));
            }
        }
        Ok(Self {
            options,
            registry,
            loaded,
            enabled,
            extra: Vec::new(),
        })
    }

    /// Adds a plugin of the embedding application (or a test's recording plugin).
    pub fn with_plugin(mut self, spec: PluginSpec) -> Self {
        self.extra.push(spec);
        self
    }

    /// The optional plugins that will run.
    pub fn enabled_plugins(&self) -> &[String] {
        &self.enabled
    }

    /// Runs every task to its end and shuts the plugins down.
    ///
    /// # Errors
    ///
    /// [`CoordinatorError::Manager`] when a plugin cannot be added,
    /// [`CoordinatorError::Publish`] when the bus closes under the coordinator.
    pub async fn run(self) -> Result<RunReport, CoordinatorError> {
        let Self {
            options,
            registry,
            loaded,
            enabled,
            extra,
        } = self;
        // Listening from the start, for the whole run: a signal during start-up (plugins
        // starting, tasks being created under backpressure) stops the run as well, and none
        // is lost between two waits.
        let mut stop = StopSignal::install(options.handle_ctrl_c);
        // Counted from here: `--run-timeout` bounds the whole run, the wait for remote workers
        // and the creation of the tasks included (a run whose workers never came hung until
        // the CI system killed it, with no report).
        let deadline = options.run_timeout.map(|d| tokio::time::Instant::now() + d);
        let mut timed_out = false;
        let pool = WorkerPool::default();
        for task in &options.tasks {
            pool.add_task(task.clone());
        }
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let (notes_tx, mut notes_rx) = mpsc::unbounded_channel();

        let scheduler =
            SchedulingCoordinator::spec(Arc::new(SchedulerRegistry::new()), &options.scheduler)?;
        let executor_pool = pool.clone();
        // The run's own machinery waits for room, whatever `[manager] overflow` says for the
        // plugins (`drop_newest`, chosen to keep a slow notifier from holding the run up):
        // a `TaskCreated` dropped by the scheduler, or a result dropped by the run tracker,
        // left a task never assigned or never counted, and the run hung until
        // `--run-timeout`.
        let mut builder = PluginManager::builder()
            .config(loaded.config.manager_config().clone())
            .spec(loaded.config.with_overrides(
                crate::scheduler_settings::NAME,
                scheduler.overflow(OverflowPolicy::Backpressure),
            ))
            .spec(
                PluginSpec::new(move || ShellExecutor::new(executor_pool.clone()))
                    .overflow(OverflowPolicy::Backpressure),
            )
            .spec(
                PluginSpec::new(move || RunTracker::new(done_tx.clone()))
                    .overflow(OverflowPolicy::Backpressure),
            );
        let mut reporter: Option<TaskReporterHandle> = None;
        let ci_files = ReportFiles::new();
        for name in &enabled {
            let config = loaded.config.plugin_settings(name);
            let spec = match name.as_str() {
                TaskReporter::NAME => {
                    let (spec, handle) = TaskReporter::spec();
                    reporter = Some(handle);
                    // The run's reports wait for room too (unless their own section says
                    // otherwise): with the manager's `drop_newest` they listed tasks as
                    // incomplete that had passed.
                    let spec = spec.overflow(OverflowPolicy::Backpressure);
                    match config {
                        Some(c) => spec.config(c),
                        None => spec,
                    }
                }
                CiReporter::NAME => {
                    // Built here rather than from the registry so that the files it writes
                    // (or fails to) are known at the end of the run.
                    // A restarted instance goes on with the run recorded so far.
                    let files = ci_files.clone();
                    let handover = Handover::new();
                    let spec = PluginSpec::new(move || {
                        CiReporter::new()
                            .with_report_files(files.clone())
                            .with_handover(handover.clone())
                    })
                    .overflow(OverflowPolicy::Backpressure);
                    match config {
                        Some(mut c) => {
                            // `--junit` wins over the file's `junit` (the command line
                            // wins): CI looks for the file where the command line said.
                            if let (Some(junit), Some(settings)) =
                                (&options.junit, c.as_object_mut())
                            {
                                settings.insert("junit".to_owned(), serde_json::json!(junit));
                            }
                            spec.config(c)
                        }
                        None => {
                            let mut cfg = ReporterConfig::default();
                            cfg.junit.clone_from(&options.junit);
                            spec.config(cfg)
                        }
                    }
                }
                _ => registry
                    .spec(name, config)
                    .map_err(|source| CoordinatorError::Plugin {
                        flag: "--enable-plugin",
                        source,
                    })?,
            };
            builder = builder.spec(loaded.config.with_overrides(name, spec));
        }
        for spec in extra {
            builder = builder.spec(spec);
        }
        let manager = builder.spawn().await?;
        let console = crate::console::start(
            &manager,
            options.ui,
            &registry,
            &loaded.plugin_dirs,
            options.config_file.as_deref(),
            loaded.ui_token_file.as_deref(),
        )
        .await?;
        // Hot reload: a changed, added or removed plugin in a plugin directory is swapped in
        // while the run goes on, without losing events (`PluginManager::replace`).
        let reloader = (!loaded.plugin_dirs.is_empty()).then(|| {
            let mut r = Reloader::new(loaded.plugin_dirs.clone());
            // A manifest named like a built-in was refused at start; it must not replace or
            // remove the built-in later either.
            for entry in registry.iter() {
                if matches!(entry.plugin_source(), PluginSource::BuiltIn { .. }) {
                    r = r.reserved(entry.name());
                }
            }
            for name in loaded.config.configured_plugins() {
                if let Some(settings) = loaded.config.plugin_settings(name) {
                    r = r.settings(name, settings);
                }
            }
            for name in loaded
                .config
                .configured_plugins()
                .chain(loaded.loaded.iter().map(String::as_str))
            {
                if !enabled.iter().any(|n| n == name) {
                    r = r.disabled(name);
                }
            }
            r.spawn(manager.clone(), RELOAD_INTERVAL)
        });
        let bus = manager.bus().with_source("coordinator");
        bus.publish(EventKind::coordinator_startup(options.run_id.clone()))
            .await?;

        // Workers: spawn the actors, then announce them (an assignment can only follow the
        // announcement, and by then the mailbox exists).
        let ids: Vec<WorkerId> = (1..=options.workers)
            .map(|i| WorkerId::from(format!("worker-{i}")))
            .collect();
        let mut aborts = HashMap::new();
        let mut watch: JoinSet<(WorkerId, Result<(), tokio::task::JoinError>)> = JoinSet::new();
        let spawn = |id: &WorkerId,
                     aborts: &mut HashMap<WorkerId, tokio::task::AbortHandle>,
                     watch: &mut JoinSet<_>| {
            let handle = pool.spawn_worker(id, manager.bus(), notes_tx.clone());
            aborts.insert(id.clone(), handle.abort_handle());
            let id = id.clone();
            watch.spawn(async move { (id, handle.await) });
        };
        // Remote workers: the hub registers them on the bus; their mailboxes forward to it.
        let mut remote_ids: Vec<WorkerId> = Vec::new();
        let (hub, mut hub_notes) = match &options.cluster {
            Some(cluster) => {
                let (hub, notes) = Hub::start(cluster.hub_config()?, manager.bus()).await?;
                (Some(Arc::new(hub)), Some(notes))
            }
            None => (None, None),
        };
        let on_hub_note = async |note: HubNote, remote_ids: &mut Vec<WorkerId>| {
            let Some(hub) = &hub else { return };
            match note {
                HubNote::Registered(worker) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    pool.attach(&worker, tx);
                    crate::remote::forward(Arc::clone(hub), worker.clone(), rx);
                    remote_ids.push(worker);
                }
                // A node hosting plugins: each becomes a proxy plugin of this manager.
                HubNote::Plugins { host, plugins } => {
                    for plugin in plugins {
                        let name = plugin.name.clone();
                        let spec =
                            dtf_cluster::RemotePlugin::spec(hub.handle(), host.clone(), plugin);
                        match manager.add(spec).await {
                            Ok(()) => {
                                tracing::info!(%host, plugin = %name, "a remote plugin joined")
                            }
                            Err(e) => {
                                tracing::error!(%host, plugin = %name, error = %e, "a remote plugin could not be added")
                            }
                        }
                    }
                }
                _ => {}
            }
        };
        if let (Some(cluster), Some(notes)) = (&options.cluster, hub_notes.as_mut()) {
            if options.workers == 0 {
                let min = cluster.min_workers as usize;
                let mut said = tokio::time::Instant::now();
                tracing::warn!(
                    listen = %cluster.listen,
                    "waiting for {min} remote worker(s) to register"
                );
                while remote_ids.len() < min && !stop.is_requested() {
                    tokio::select! {
                        Some(note) = notes.recv() => on_hub_note(note, &mut remote_ids).await,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                        () = stop.requested() => break,
                        () = sleep_until(deadline) => {
                            tracing::error!(
                                "--run-timeout passed while waiting for remote workers: {} of {min} registered",
                                remote_ids.len()
                            );
                            timed_out = true;
                            break;
                        }
                    }
                    if said.elapsed() >= Duration::from_secs(5) {
                        said = tokio::time::Instant::now();
                        tracing::warn!(
                            "waiting for remote workers: {} of {min} registered",
                            remote_ids.len()
                        );
                    }
                }
            }
        }
        let capabilities = Capabilities::builder().cpu_cores(1).slots(1).build();
        for id in &ids {
            spawn(id, &mut aborts, &mut watch);
            bus.publish(EventKind::worker_registered(
                id.clone(),
                capabilities.clone(),
            ))
            .await?;
        }
        for task in &options.tasks {
            if stop.is_requested() || timed_out {
                break; // the tasks not created yet are reported cancelled
            }
            let mut metadata = BTreeMap::new();
            if let TaskKind::Shell(command) = &task.kind {
                metadata.insert("command".to_owned(), command.clone());
            }
            let created = TaskCreated::builder()
                .task(task.id.as_str())
                .name(task.name.as_str())
                .owner(task.owner.as_str())
                .priority(task.priority)
                .metadata(metadata)
                .build();
            // It may wait for room (backpressure behind a slow plugin): a stop comes first.
            tokio::select! {
                published = bus.publish(EventKind::TaskCreated(Box::new(created))) => {
                    published?;
                }
                () = stop.requested() => break,
                () = sleep_until(deadline) => {
                    timed_out = true;
                    break;
                }
            }
        }

        // Only the run's own tasks count: a task event about another task (a remote
        // publisher's, a plugin's) must not end the run while its tasks still run.
        let ours: HashSet<TaskId> = options
            .tasks
            .iter()
            .map(|t| TaskId::from(t.id.as_str()))
            .collect();
        let total = ours.len();
        let mut finished: HashSet<TaskId> = HashSet::new();
        let mut failed = 0usize;
        let mut to_kill: HashSet<TaskId> = options
            .kill_worker_on_start
            .iter()
            .map(|t| TaskId::from(t.as_str()))
            .collect();
        let mut reason = if timed_out {
            ShutdownReason::TimedOut
        } else if stop.is_requested() {
            ShutdownReason::Requested
        } else {
            ShutdownReason::Completed
        };
        while finished.len() < total && !stop.is_requested() && !timed_out {
            tokio::select! {
                Some((task, ok)) = done_rx.recv() => {
                    if ours.contains(&task) && finished.insert(task) && !ok {
                        failed += 1;
                    }
                }
                Some(note) = recv_some(&mut hub_notes) => on_hub_note(note, &mut remote_ids).await,
                Some(note) = notes_rx.recv() => {
                    let WorkerNote::Started { worker, task, attempt } = note;
                    if attempt == 1 && to_kill.remove(&task) {
                        tracing::warn!(%worker, %task, "fault injection: killing the worker");
                        if let Some(abort) = aborts.get(&worker) {
                            abort.abort();
                        }
                    }
                }
                Some(ended) = watch.join_next() => {
                    let Ok((worker, result)) = ended else { continue };
                    let why = match result {
                        Err(e) if e.is_cancelled() => "the worker was killed".to_owned(),
                        Err(e) => format!("the worker panicked: {e}"),
                        Ok(()) => "the worker stopped".to_owned(),
                    };
                    tracing::warn!(%worker, "{why}; recovering it");
                    bus.publish(EventKind::worker_failed(worker.clone(), why)).await?;
                    spawn(&worker, &mut aborts, &mut watch);
                    bus.publish(EventKind::worker_recovered(worker)).await?;
                }
                () = sleep_until(deadline) => {
                    reason = ShutdownReason::TimedOut;
                    break;
                }
                () = stop.requested() => {
                    reason = ShutdownReason::Requested;
                    break;
                }
            }
        }

        // Stop the workers and take them out of service first: after that nothing can be
        // assigned or report, so a cancellation is the last word on a task.
        for abort in aborts.values() {
            abort.abort();
        }
        watch.shutdown().await;
        let why = match &reason {
            ShutdownReason::Completed => "run finished",
            ShutdownReason::Requested => "the run was interrupted",
            _ => "the run timed out",
        };
        // Remote workers' results still in flight are dropped from here on (counted as late),
        // so that they cannot turn a task cancelled below into a passed one.
        if let Some(hub) = &hub {
            hub.abandon_jobs().await;
        }
        for id in ids.iter().chain(&remote_ids) {
            pool.close_worker(id);
            bus.publish(EventKind::worker_disconnected(id.clone(), why))
                .await?;
        }
        // Let the scheduler handle the disconnections (and anything it was still deciding),
        // then count the tasks that ended meanwhile. After a stop signal, briefly: a container
        // gets a grace period before it is killed, and the reports come after this.
        let settle_for = if reason == ShutdownReason::Requested {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if tokio::time::timeout(settle_for, manager.settle())
            .await
            .is_err()
        {
            tracing::warn!(?settle_for, "plugins still busy after the workers stopped");
        }
        while let Ok((task, ok)) = done_rx.try_recv() {
            if ours.contains(&task) && finished.insert(task) && !ok {
                failed += 1;
            }
        }
        for task in &options.tasks {
            let id = TaskId::from(task.id.as_str());
            if !finished.contains(&id) {
                failed += 1;
                bus.publish(EventKind::task_cancelled(id, why)).await?;
            }
        }
        // No flush of its own before the shutdown: `shutdown` publishes `CoordinatorShutdown`
        // behind everything (each plugin handles it after the rest, so the reporters write
        // their files then) and drains, bounded. A flush here, bounded by the same timeout,
        // held the reports back by that much behind a hung plugin.
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        if let Some(console) = console {
            console.stop().await;
        }
        let shutdown = manager.shutdown(reason).await;
        // After the manager: remote plugins get their last events first.
        if let Some(hub) = &hub {
            hub.shutdown().await;
        }
        let mut reports = ci_files.all();
        if let Some(handle) = &reporter {
            reports.extend(handle.report_files().all());
        }
        Ok(RunReport {
            tasks: total,
            passed: total.saturating_sub(failed),
            failed,
            plugins: enabled,
            summary: reporter.as_ref().map(TaskReporterHandle::summary),
            run: reporter.as_ref().map(TaskReporterHandle::run),
            shutdown,
            reports,
        })
    }
}

/// The next item of an optional receiver; pending forever without one.
async fn recv_some<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C, SIGTERM and SIGHUP for a whole run, listened to from its start by one task (a
/// listener made per wait lost a signal that came between two waits, and none existed during
/// start-up, when SIGTERM's default action killed the coordinator without a report). The
/// first signal asks the run to stop as on Ctrl-C (task process groups killed, reports
/// written, notifications flushed within the shutdown timeout); a second one exits at once,
/// with code 130.
struct StopSignal(tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    /// Starts listening (when `enabled`; otherwise no stop is ever requested).
    fn install(enabled: bool) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        if enabled {
            let Some(mut signals) = Signals::listen() else {
                tracing::warn!(
                    "stop signals cannot be listened to; Ctrl-C will not stop the run cleanly"
                );
                return Self(rx);
            };
            tokio::spawn(async move {
                let Some(signal) = signals.next().await else {
                    return;
                };
                tracing::warn!(
                    signal,
                    "stopping the run: tasks are killed and reports written; a second signal exits at once"
                );
                let _ = tx.send(true);
                if let Some(signal) = signals.next().await {
                    tracing::error!(signal, "second signal: exiting at once");
                    std::process::exit(130);
                }
            });
        }
        Self(rx)
    }

    /// Resolves once a stop was requested (never, without listening).
    async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

/// The stop signals' listeners, made once.
struct Signals {
    #[cfg(unix)]
    streams: [tokio::signal::unix::Signal; 3],
}

impl Signals {
    fn listen() -> Option<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Some(Self {
                streams: [
                    signal(SignalKind::interrupt()).ok()?,
                    signal(SignalKind::terminate()).ok()?,
                    signal(SignalKind::hangup()).ok()?,
                ],
            })
        }
        #[cfg(not(unix))]
        {
            Some(Self {})
        }
    }

    /// The next stop signal's name (`None` once they cannot be received any more).
    async fn next(&mut self) -> Option<&'static str> {
        #[cfg(unix)]
        {
            let [int, term, hup] = &mut self.streams;
            tokio::select! {
                r = int.recv() => r.map(|()| "SIGINT"),
                r = term.recv() => r.map(|()| "SIGTERM"),
                r = hup.recv() => r.map(|()| "SIGHUP"),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C")
        }
    }
}

/// Resolves on the first stop signal when `enabled` (for the waits outside a run, such as
/// `--list-plugins` waiting for the cluster's nodes).
async fn ctrl_c(enabled: bool) {
    let mut stop = StopSignal::install(enabled);
    stop.requested().await;
}

/// The parsed command line of `dtf-coordinator` (from [`crate::cli::CoordinatorArgs`]).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Cli {
    /// The options to run with.
    pub options: CoordinatorOptions,
    /// `--list-plugins`: list and exit.
    pub list_plugins: bool,
    /// `--print-config`: print the effective configuration (secrets redacted) and exit.
    pub print_config: bool,
    /// `--check-config`: validate the configuration and the plugin directories, and exit.
    pub check_config: bool,
}

impl Cli {
    /// A command line that runs with `options`, or lists, prints or checks and exits.
    pub fn new(
        options: CoordinatorOptions,
        list_plugins: bool,
        print_config: bool,
        check_config: bool,
    ) -> Self {
        Self {
            options,
            list_plugins,
            print_config,
            check_config,
        }
    }

    /// Parses `args` (without the program name). Task files are read here. `--help`,
    /// `--version` and the subcommands are handled by [`run_cli`], not here.
    ///
    /// # Errors
    ///
    /// [`CoordinatorError::Usage`] with clap's message for an unknown flag (with a
    /// did-you-mean) or a bad value (naming the flag), and for `--help`, `--version` or a
    /// subcommand; [`CoordinatorError::TaskFile`] for a task file that cannot be read or
    /// parsed.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, CoordinatorError> {
        let argv = std::iter::once("dtf-coordinator".to_owned()).chain(args);
        let parsed = CoordinatorArgs::try_parse_from(argv)
            .map_err(|e| CoordinatorError::Usage(e.render().to_string().trim_end().to_owned()))?;
        if parsed.command.is_some() {
            return Err(CoordinatorError::Usage(
                "a subcommand is not a run: use run_cli".to_owned(),
            ));
        }
        parsed.into_cli()
    }
}

/// Lists `registry`'s plugins: name, whether a run with these options starts it (`enabled`:
/// the names [`plugins_to_run`] gives), kind, version, source, description, and under it the
/// hooks it subscribes to (a whole family as `task_*`).
pub fn render_plugin_list(registry: &PluginRegistry, enabled: &[String]) -> String {
    use dtf_plugins_ci::neutralize;
    let mut table = table(
        &[
            "plugin",
            "status",
            "kind",
            "version",
            "source",
            "description / hooks",
        ],
        &[],
    );
    for e in registry.iter() {
        let m = e.metadata();
        // The scheduler is part of every run, whatever the list of optional plugins says.
        let status = if e.name() == crate::scheduler_settings::NAME {
            "always"
        } else if enabled.iter().any(|n| n == e.name()) {
            "enabled"
        } else {
            "off"
        };
        // Names and descriptions may come from plugin manifests: one line each, inert.
        table.add_row(vec![
            neutralize(e.name()).into_owned(),
            status.to_owned(),
            m.kind.to_string(),
            neutralize(&m.version).into_owned(),
            neutralize(&e.plugin_source().to_string()).into_owned(),
            format!(
                "{}\nhooks: {}",
                neutralize(e.describe()),
                hook_summary(m.hooks)
            ),
        ]);
    }
    render_table(&table)
}

/// The plugins remote nodes host, as `--list-plugins` shows them: named as the manager of a
/// run names their proxies (`NAME@HOST`).
pub fn render_hosted_list(hosted: &[(WorkerId, dtf_cluster::HostedPlugin)]) -> String {
    use dtf_plugins_ci::neutralize;
    if hosted.is_empty() {
        return "no registered node hosts plugins\n".to_owned();
    }
    let mut table = table(&["hosted plugin", "host", "kind", "version", "hooks"], &[]);
    for (host, p) in hosted {
        table.add_row(vec![
            neutralize(&format!("{}@{host}", p.name)).into_owned(),
            neutralize(host.as_str()).into_owned(),
            p.kind.to_string(),
            neutralize(&p.version).into_owned(),
            hook_summary(p.hooks.iter().copied().collect()),
        ]);
    }
    render_table(&table)
}

/// The hooks of `hooks` by their configuration names (`task_created`), a whole family as
/// `task_*`, everything as `all`.
fn hook_summary(hooks: HookSet) -> String {
    if hooks == HookSet::ALL {
        return "all".to_owned();
    }
    let name = |h: &Hook| {
        serde_json::to_value(h)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let family = |n: &str| n.split('_').next().unwrap_or_default().to_owned();
    let mut parts: Vec<String> = Vec::new();
    for h in Hook::ALL {
        let n = name(h);
        let f = family(&n);
        let members: Vec<&Hook> = Hook::ALL.iter().filter(|x| family(&name(x)) == f).collect();
        if members.iter().all(|x| hooks.contains(**x)) {
            let whole = format!("{f}_*");
            if !parts.contains(&whole) {
                parts.push(whole);
            }
        } else if hooks.contains(*h) {
            parts.push(n);
        }
    }
    parts.join(",")
}

/// Renders one line per plugin from the manager's shutdown report: events delivered,
/// dropped and dead-lettered, failures and restarts, what was left in its queue, and the
/// error of a plugin whose shutdown failed.
pub fn render_plugin_stats(report: &ShutdownReport) -> String {
    let mut table = table(
        &[
            "plugin",
            "delivered",
            "dropped",
            "dead",
            "failures",
            "restarts",
            "left",
            "shutdown",
        ],
        &[1, 2, 3, 4, 5, 6],
    );
    for p in &report.plugins {
        let s = &p.stats;
        table.add_row(vec![
            dtf_plugins_ci::neutralize(&p.name).into_owned(),
            s.delivered.to_string(),
            s.dropped.to_string(),
            s.dead_lettered.to_string(),
            s.failures.to_string(),
            s.restarts.to_string(),
            p.left_in_queue.to_string(),
            dtf_plugins_ci::neutralize(p.error.as_deref().unwrap_or("ok")).into_owned(),
        ]);
    }
    render_table(&table)
}

/// `text` with each line neutralised for CI runners (a multi-line error keeps its lines).
fn safe_lines(text: &str) -> String {
    let lines: Vec<_> = text.lines().map(dtf_plugins_ci::neutralize).collect();
    lines.join("\n")
}

/// Renders the per-task table printed after a run.
pub fn render_task_table(run: &RunResult) -> String {
    let mut table = table(
        &["task", "status", "attempts", "worker", "time", "error"],
        &[2, 4],
    );
    for t in &run.tasks {
        let error = t
            .last_failure()
            .filter(|_| !matches!(t.status, dtf_plugins_ci::TaskStatus::Passed))
            .map(|a| {
                format!(
                    "{}: {}",
                    a.error_kind.as_deref().unwrap_or(""),
                    a.message.as_deref().unwrap_or("")
                )
            })
            .unwrap_or_default();
        // Task-supplied text is neutralised (one line, no CI command), then cut.
        let mut name = dtf_plugins_ci::neutralize(&t.name).into_owned();
        if name.chars().count() > 28 {
            name = name.chars().take(27).collect::<String>() + "…";
        }
        table.add_row(vec![
            name,
            t.status.name().to_owned(),
            t.attempts.len().to_string(),
            dtf_plugins_ci::neutralize(t.worker().unwrap_or("-")).into_owned(),
            format!("{:.2}s", t.total_duration().as_secs_f64()),
            dtf_plugins_ci::neutralize(error.lines().next().unwrap_or_default()).into_owned(),
        ]);
    }
    render_table(&table)
}

/// The `dtf-coordinator` binary's whole behaviour, for the binary and for tests: parses
/// `args` (without the program name), runs, writes the results to `out` and every error to
/// `err`, and returns the exit code (0 all passed, 1 a task failed or a report could not be
/// written, 2 bad usage or configuration).
pub async fn run_cli(
    args: impl IntoIterator<Item = String>,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> i32 {
    run_cli_outer(args, out, err, false).await
}

/// [`run_cli`] with Ctrl-C handling, for the binary.
pub async fn run_cli_with_signals(
    args: impl IntoIterator<Item = String>,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> i32 {
    run_cli_outer(args, out, err, true).await
}

async fn run_cli_outer(
    args: impl IntoIterator<Item = String>,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
    signals: bool,
) -> i32 {
    let argv = std::iter::once("dtf-coordinator".to_owned()).chain(args);
    let parsed = match CoordinatorArgs::try_parse_from(argv) {
        Ok(parsed) => parsed,
        Err(e) => {
            // `--help` and `--version` are not errors: stdout, exit 0. Usage errors: stderr, 2.
            let text = e.render().to_string();
            return if e.use_stderr() {
                let _ = err.write_all(text.as_bytes());
                2
            } else {
                let _ = out.write_all(text.as_bytes());
                0
            };
        }
    };
    match parsed.command {
        Some(Command::Completions { shell }) => {
            let mut command = CoordinatorArgs::command();
            // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "dtf-coordinator", &mut script);
            return match out.write_all(&script) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(err, "error: write the completion script: {e}");
                    1
                }
            };
        }
        Some(Command::Plugin { args }) => {
            return crate::plugin_cli::run_split(args, out, err).await;
        }
        _ => {}
    }
    let result = match parsed.into_cli() {
        Ok(cli) => run_cli_inner(cli, out, err, signals).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(err, "error: {}", safe_lines(&e.to_string()));
            2
        }
    }
}

async fn run_cli_inner(
    mut cli: Cli,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
    signals: bool,
) -> Result<i32, CoordinatorError> {
    let w = |out: &mut (dyn Write + Send), s: &str| {
        let _ = out.write_all(s.as_bytes());
    };
    if cli.list_plugins || cli.print_config || cli.check_config {
        let mut registry = plugin_registry();
        let loaded = load_config_and_plugin_dirs(
            cli.options.config_file.as_deref(),
            &cli.options.plugin_dirs,
            &cli.options.config_overrides,
            &mut registry,
        )?;
        if cli.list_plugins {
            let enabled = plugins_to_run(&cli.options, &registry, &loaded)?;
            w(out, &render_plugin_list(&registry, &enabled));
            // With a cluster: the plugins the nodes host, once `min_workers` have registered.
            let mut cluster = cli.options.cluster.clone();
            loaded.cluster.apply(&mut cluster);
            if let Some(cluster) = cluster {
                let hosted = tokio::select! {
                    hosted = crate::remote::hosted_plugins(&cluster) => hosted?,
                    () = ctrl_c(signals) => return Ok(130),
                };
                w(out, "\n");
                w(out, &render_hosted_list(&hosted));
            }
        }
        if cli.print_config {
            w(out, &loaded.config.to_redacted_toml(Some(&registry)));
        }
        if cli.check_config {
            if !loaded.manifest_errors.is_empty() {
                return Err(ConfigErrors::new(loaded.manifest_errors).into());
            }
            let enabled = loaded.config.enabled_plugins(&registry)?;
            w(
                out,
                &format!(
                    "configuration is valid; plugins enabled by it: {}\n",
                    if enabled.is_empty() {
                        "none".to_owned()
                    } else {
                        enabled.join(", ")
                    }
                ),
            );
        }
        return Ok(0);
    }
    cli.options.handle_ctrl_c = signals;
    let coordinator = Coordinator::new(cli.options)?;
    let report = coordinator.run().await?;
    if let Some(run) = &report.run {
        w(out, &render_task_table(run));
    }
    if let Some(summary) = &report.summary {
        w(out, "\n");
        w(out, &summary.render_table());
    }
    w(out, "\n");
    w(out, &render_plugin_stats(&report.shutdown));
    // Every report named with its path; one that could not be written fails the run.
    let (written, failed): (Vec<_>, Vec<_>) =
        report.reports.iter().partition(|r| r.error.is_none());
    if !written.is_empty() {
        w(out, "\n");
    }
    for r in &written {
        w(
            out,
            &format!(
                "report written: {}\n",
                safe_lines(&r.path.display().to_string())
            ),
        );
    }
    for r in &failed {
        let _ = writeln!(
            err,
            "error: failed to {}",
            safe_lines(r.error.as_deref().unwrap_or("write a report"))
        );
    }
    let unwritten = if failed.is_empty() {
        String::new()
    } else {
        format!("; {} report(s) could not be written", failed.len())
    };
    w(
        out,
        &format!(
            "\n{} of {} task(s) passed; {} failed{unwritten}\n",
            report.passed, report.tasks, report.failed
        ),
    );
    Ok(report.exit_code())
}
