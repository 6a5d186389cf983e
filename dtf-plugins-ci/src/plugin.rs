//! The bus plugins: [`CiReporter`] (writes the selected reports at shutdown) and
//! [`TeamcityLive`] (writes TeamCity service messages as events arrive).

use std::io::Write;
use std::path::{Path, PathBuf};

use dtf_plugin_core::Handover;
use dtf_plugin_core::prelude::*;
use serde::{Deserialize, Serialize};

use crate::azure::{render_azure_issues, upload_summary_command};
use crate::error::CiError;
use crate::files::ReportFiles;
use crate::github::{append_step_summary, render_github_annotations};
use crate::junit::render_junit;
use crate::markdown::{render_json, render_markdown};
use crate::run::{RunRecorder, RunResult};
use crate::teamcity::{TeamcityMessages, render_teamcity};

/// A writer for command lines (annotations, service messages): stdout by default.
pub type Output = Box<dyn Write + Send>;

/// Which CI system's commands [`CiReporter`] prints to its output at shutdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Commands {
    /// None (the default).
    #[default]
    None,
    /// GitHub Actions annotations (`::error …`).
    Github,
    /// Azure Pipelines `##vso[task.logissue …]`.
    Azure,
    /// TeamCity service messages for the whole run (use [`TeamcityLive`] for live progress).
    Teamcity,
}

/// [`CiReporter`]'s configuration, read with `ctx.config::<ReporterConfig>()`. Every field is
/// optional; the defaults write nothing.
///
/// ```
/// let cfg: dtf_plugins_ci::ReporterConfig = serde_json::from_value(serde_json::json!({
///     "junit": "target/dtf/junit.xml",
///     "commands": "github",
/// }))?;
/// assert_eq!(cfg.junit.as_deref(), Some(std::path::Path::new("target/dtf/junit.xml")));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ReporterConfig {
    /// Where to write the JUnit XML report. Default: none.
    pub junit: Option<PathBuf>,
    /// Where to write the JSON run report. Default: none.
    pub json: Option<PathBuf>,
    /// Where to write the Markdown run report. Default: none.
    pub markdown: Option<PathBuf>,
    /// The file to append GitHub's job summary to (the value of `GITHUB_STEP_SUMMARY`).
    /// Default: none.
    pub github_step_summary: Option<PathBuf>,
    /// Where to write a Markdown summary that is then attached to an Azure Pipelines build
    /// with `##vso[task.uploadsummary]` (printed to the output). Default: none.
    pub azure_summary: Option<PathBuf>,
    /// Which commands to print to the output at shutdown. Default: [`Commands::None`].
    pub commands: Commands,
}

/// Records the run from task, worker and coordinator events and, at `CoordinatorShutdown`,
/// writes the reports its [`ReporterConfig`] selects.
///
/// Report files are written in order (JUnit, JSON, Markdown, GitHub summary, Azure summary);
/// parent directories are created. A report that cannot be written is logged and the others
/// are still written; the handler then returns the first error, so the failure shows in the
/// plugin's stats.
///
/// Built by [`CiReporter::spec`] (as the registry does), an instance hands the run recorded
/// so far to the next one after a restart ([`Handover`]), so the reports still list every
/// task; a reporter built by hand with [`CiReporter::new`] starts empty after a restart.
pub struct CiReporter {
    recorder: RunRecorder,
    config: ReporterConfig,
    output: Output,
    files: ReportFiles,
    handover: Handover<RunRecorder>,
    /// `on_start` ran to its end (and took what the previous instance left): only then is
    /// this instance's record the run's, to hand over.
    started: bool,
    /// The reports were written: nothing to hand over.
    written: bool,
}

impl Drop for CiReporter {
    fn drop(&mut self) {
        // An instance that never started (a bad configuration) must not replace the record
        // the previous one left with an empty one.
        if self.started && !self.written {
            self.handover.put(std::mem::take(&mut self.recorder));
        }
    }
}

impl std::fmt::Debug for CiReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CiReporter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for CiReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl CiReporter {
    /// The plugin's name.
    pub const NAME: &'static str = "ci-reporter";

    /// A reporter printing commands to stdout.
    pub fn new() -> Self {
        Self::with_output(Box::new(std::io::stdout()))
    }

    /// A reporter printing commands to `output`.
    pub fn with_output(output: Output) -> Self {
        Self {
            recorder: RunRecorder::new(),
            config: ReporterConfig::default(),
            output,
            files: ReportFiles::new(),
            handover: Handover::new(),
            started: false,
            written: false,
        }
    }

    /// A spec whose instances hand the run recorded so far to the next one after a restart
    /// (printing commands to stdout).
    pub fn spec() -> PluginSpec {
        let handover = Handover::new();
        PluginSpec::new(move || Self::new().with_handover(handover.clone()))
    }

    /// Takes the run recorded by the previous instance from `handover` at start, and leaves
    /// its own there when dropped before writing the reports (see [`CiReporter::spec`]).
    pub fn with_handover(mut self, handover: Handover<RunRecorder>) -> Self {
        self.handover = handover;
        self
    }

    /// Records every report file written (or not) in `files`, for the application to name
    /// them after the run and to fail it when one could not be written.
    pub fn with_report_files(mut self, files: ReportFiles) -> Self {
        self.files = files;
        self
    }

    /// The run recorded so far.
    pub fn result(&self) -> RunResult {
        self.recorder.result()
    }

    fn write_reports(&mut self) -> Result<(), CiError> {
        let run = self.recorder.result();
        let cfg = &self.config;
        let mut first_error = None;
        let files = self.files.clone();
        let keep_file = |path: &Path, r: Result<(), CiError>| -> Result<(), CiError> {
            files.record(path, &r);
            r
        };
        let mut keep = |r: Result<(), CiError>| {
            if let Err(e) = r {
                tracing::error!(error = %e, "failed to write a CI report");
                first_error.get_or_insert(e);
            }
        };
        if let Some(path) = &cfg.junit {
            keep(keep_file(path, write_file(path, &render_junit(&run))));
        }
        if let Some(path) = &cfg.json {
            keep(keep_file(
                path,
                render_json(&run).and_then(|json| write_file(path, &json)),
            ));
        }
        if let Some(path) = &cfg.markdown {
            keep(keep_file(path, write_file(path, &render_markdown(&run))));
        }
        if let Some(path) = &cfg.github_step_summary {
            keep(keep_file(path, append_step_summary(path, &run)));
        }
        let mut commands = match cfg.commands {
            Commands::Github => render_github_annotations(&run),
            Commands::Azure => render_azure_issues(&run),
            Commands::Teamcity => render_teamcity(&run),
            Commands::None => String::new(),
        };
        if let Some(path) = &cfg.azure_summary {
            let written = keep_file(path, write_file(path, &render_markdown(&run)));
            if written.is_ok() {
                commands.push_str(&upload_summary_command(path));
            }
            keep(written);
        }
        if !commands.is_empty() {
            keep(
                self.output
                    .write_all(commands.as_bytes())
                    .and_then(|()| self.output.flush())
                    .map_err(CiError::from),
            );
        }
        tracing::info!(
            tasks = run.totals.tasks,
            failed = run.totals.failed,
            flaky = run.totals.flaky,
            "CI reports written"
        );
        first_error.map_or(Ok(()), Err)
    }
}

/// Writes `contents` to `path`, creating parent directories.
fn write_file(path: &Path, contents: &str) -> Result<(), CiError> {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, contents)
    };
    write().map_err(|source| CiError::Write {
        path: path.to_owned(),
        source,
    })
}

impl Plugin for CiReporter {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Reporter)
            .hooks(
                HookSet::TASK
                    .union(HookSet::WORKER)
                    .union(HookSet::COORDINATOR),
            )
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.config = ctx.config::<ReporterConfig>()?;
        if let Some(recorder) = self.handover.take() {
            self.recorder = recorder;
        }
        self.started = true;
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        // Applied in place so the events recorded so far are kept.
        self.config = ctx.config::<ReporterConfig>()?;
        Ok(Reconfigured::Applied)
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        self.recorder.record(event);
        if matches!(event.kind, EventKind::CoordinatorShutdown(_)) {
            // The reports are small and written once, at the very end of the run; blocking
            // the handler for that is cheaper than handing the state to a blocking thread.
            self.written = true;
            self.write_reports()?;
        }
        Ok(())
    }
}

/// Writes TeamCity service messages as task events arrive, so TeamCity's build page shows
/// tests starting and finishing live. Each task is its own `flowId`.
///
/// Its writer is injected ([`TeamcityLive::with_output`]); [`TeamcityLive::new`] writes to
/// stdout, which is where TeamCity reads service messages from. Built by
/// [`TeamcityLive::spec`] (as the registry does), an instance hands the tests it has open to
/// the next one after a restart, so a test started before the restart still finishes.
pub struct TeamcityLive {
    messages: TeamcityMessages,
    output: Output,
    handover: Handover<TeamcityMessages>,
    /// `on_start` took what the previous instance left (see [`CiReporter`]'s).
    started: bool,
}

impl Drop for TeamcityLive {
    fn drop(&mut self) {
        if self.started {
            self.handover.put(std::mem::take(&mut self.messages));
        }
    }
}

impl std::fmt::Debug for TeamcityLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamcityLive").finish_non_exhaustive()
    }
}

impl Default for TeamcityLive {
    fn default() -> Self {
        Self::new()
    }
}

impl TeamcityLive {
    /// The plugin's name.
    pub const NAME: &'static str = "teamcity-live";

    /// Writes to stdout.
    pub fn new() -> Self {
        Self::with_output(Box::new(std::io::stdout()))
    }

    /// Writes to `output` (flushed after every event that produced messages).
    pub fn with_output(output: Output) -> Self {
        Self {
            messages: TeamcityMessages::new(),
            output,
            handover: Handover::new(),
            started: false,
        }
    }

    /// A spec whose instances hand their open tests to the next one after a restart (writing
    /// to stdout).
    pub fn spec() -> PluginSpec {
        let handover = Handover::new();
        PluginSpec::new(move || {
            let mut live = Self::new();
            live.handover = handover.clone();
            live
        })
    }
}

impl Plugin for TeamcityLive {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(Self::NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Reporter)
            .hooks(HookSet::TASK)
    }

    async fn on_start(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        if let Some(messages) = self.handover.take() {
            self.messages = messages;
        }
        self.started = true;
        Ok(())
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        let lines = self.messages.on_event(&event.kind);
        if !lines.is_empty() {
            self.output
                .write_all(lines.as_bytes())
                .map_err(CiError::from)?;
            self.output.flush().map_err(CiError::from)?;
        }
        Ok(())
    }
}
