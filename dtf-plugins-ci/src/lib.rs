//! # dtf-plugins-ci
//!
//! The CI/CD integration of dtf: which CI system is running
//! ([`detect`]), a typed model of the run folded from [`dtf_plugin_core`] events
//! ([`RunRecorder`] → [`RunResult`]), and pure renderers of that model into what CI systems
//! read: JUnit XML, GitHub Actions annotations and job summaries, TeamCity service messages,
//! Azure Pipelines logging commands, JSON and Markdown. Two plugins put them on the bus; a
//! third (`CiApiReporter`, feature `api`) reports the run to CI services' HTTP APIs as it goes.
//!
//! ## Main types
//!
//! - [`detect`] / [`detect_from_process_env`] → [`CiInfo`] (system, build id and URL,
//!   commit, branch, pull request, job) for GitHub Actions, GitLab, Jenkins, Azure DevOps,
//!   CircleCI, Bitbucket, TeamCity, Buildkite and Travis; [`CiSystem`] parses a name to force
//!   one (`"jenkins".parse()`).
//! - [`RunRecorder`]: folds task, worker and coordinator events into a [`RunResult`] of
//!   [`TaskResult`]s, each with its [`Attempt`]s and a final [`TaskStatus`] (passed, failed,
//!   flaky, skipped, cancelled, incomplete), plus [`Totals`] and the wall time.
//! - Renderers, each a pure `fn(&RunResult) -> String`: [`render_junit`] ([`junit`]),
//!   [`render_github_annotations`] and [`render_github_summary`] ([`github`]),
//!   [`render_teamcity`] and the live [`TeamcityMessages`] ([`teamcity`]),
//!   [`render_azure_issues`] ([`azure`]), [`render_markdown`] and [`render_json`]
//!   ([`markdown`]). Each dialect module exposes its escaping functions.
//! - Plugins: [`CiReporter`] writes the reports a [`ReporterConfig`] selects when the
//!   coordinator shuts down; [`TeamcityLive`] writes TeamCity service messages as events
//!   arrive.
//! - [`neutralize`] and [`CiSafeWriter`] ([`safe`]): task-supplied text made inert for CI
//!   runners in plain output and logs.
// The API items exist with the `api` feature only: linked then, plain text otherwise, so
// `cargo doc --no-default-features` has no broken links.
#![cfg_attr(
    feature = "api",
    doc = "- [`CiApiReporter`], configured by an [`ApiConfig`] (module [`api`], counted in [`ApiStats`]):"
)]
#![cfg_attr(
    not(feature = "api"),
    doc = "- `CiApiReporter` (feature `api`), configured by an `ApiConfig` (module `api`, counted in `ApiStats`):"
)]
//!   GitHub check runs, commit statuses and a PR comment edited in place; GitLab commit
//!   statuses and a merge-request note; Azure DevOps test runs; Bitbucket build statuses and a
//!   PR comment; the Jenkins build description. Live updates are rate-limited; failures are
//!   retried per [`retry`]; tokens are [`Secret`]s.
//!
//! ## Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use dtf_plugin_core::prelude::*;
//! use dtf_plugins_ci::{RunRecorder, render_github_annotations, render_junit};
//!
//! let t0 = SystemTime::UNIX_EPOCH;
//! let mut recorder = RunRecorder::new();
//! recorder.record_kind(&EventKind::coordinator_startup("run-1"), t0);
//! recorder.record_kind(&EventKind::task_created("t1", "parser::rejects_bad_input"), t0);
//! let error = TaskError::builder().kind("Panic").message("expected Err, got Ok").build();
//! recorder.record_kind(&EventKind::task_failed("t1", error, false), t0 + Duration::from_secs(1));
//!
//! let run = recorder.result();
//! assert_eq!(run.totals.failed, 1);
//! assert!(render_junit(&run).contains(r#"<error message="expected Err, got Ok" type="Panic">"#));
//! assert_eq!(
//!     render_github_annotations(&run),
//!     "::error title=parser%3A%3Arejects_bad_input failed::Panic: expected Err, got Ok\
//!      %0A(worker -, 1 attempt(s))\n",
//! );
//! ```
//!
//! On a bus, register [`CiReporter`] with its configuration:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use dtf_plugin_core::prelude::*;
//! use dtf_plugins_ci::CiReporter;
//!
//! let dir = std::env::temp_dir().join(format!("dtf-ci-doc-{}", std::process::id()));
//! let manager = PluginManager::builder()
//!     .spec(CiReporter::spec().config(serde_json::json!({
//!         "junit": dir.join("junit.xml"),
//!         "markdown": dir.join("summary.md"),
//!     })))
//!     .spawn()
//!     .await?;
//! manager.publish(EventKind::coordinator_startup("run-1")).await?;
//! manager.shutdown(ShutdownReason::Completed).await;
//! assert!(dir.join("junit.xml").exists());
//! # Ok(())
//! # }
//! ```
//!
//! ## Feature flags
//!
//! - `api` (default): the HTTP API clients and `CiApiReporter`; pulls in `tokio` and
//!   `reqwest` (rustls on ring, no OpenSSL). Without it the crate depends only on
//!   `dtf-plugin-core`, `serde`, `serde_json`, `thiserror` and `tracing`: XML and the command
//!   dialects are written by hand. The API clients share one HTTP core, so they are one
//!   feature rather than one per service.
//!
//! ## Guarantees
//!
//! - **Pure parts are pure.** Detection reads an injected environment; the recorder takes
//!   times from the events; renderers do no I/O.
//! - **No injection.** Every value taken from a run is escaped for its dialect: a test name
//!   or error message renders as exactly one command line (GitHub, Azure, TeamCity) and can
//!   neither end it early nor start another; in XML it cannot open a tag or an entity, and
//!   characters XML 1.0 forbids are dropped. Property tests decode each dialect back with an
//!   independent decoder.
//! - **No injection in plain output either.** Task names, errors and worker ids printed in
//!   tables ([`TaskSummary::render_table`]) or logs go through [`neutralize`] (or
//!   [`CiSafeWriter`] for a log writer): they stay on one line and can start no GitHub, Azure
//!   or TeamCity command. A property test runs a reference parser per CI system over such
//!   output and finds no command.
//! - **Valid JUnit.** The JUnit report validates against the Jenkins JUnit schema
//!   (`tests/fixtures/junit/JUnit.xsd`), checked with `xmllint` in the integration tests.
//! - **Limits are kept.** At most 10 GitHub annotations per type, with a notice counting the
//!   rest; the GitHub job summary stays under 1 MiB, cut with a marker.
//! - **The run comes first.** An unreachable or failing CI service is retried, logged and
//!   counted, never turned into a plugin failure; live API updates go out at most once per
//!   interval from a background task, so the bus never waits for the network.
//! - **Secrets stay secret.** Tokens never appear in `Debug`, `Display`, serialized
//!   configuration, logs or error messages.
//! - **Nothing is lost silently.** The recorder never rejects an out-of-order stream; tasks
//!   still running at shutdown are reported as incomplete (an error in JUnit).
//!
//! The details, the variables read per CI system and the choices made for each dialect are in
//! `docs/ci.md`.

#![forbid(unsafe_code)]
// On docs.rs (`--cfg docsrs`, nightly), items gated by a feature show a badge naming it.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "api")]
pub mod api;
#[cfg(feature = "api")]
mod api_plugin;
pub mod azure;
mod detect;
mod error;
mod files;
pub mod github;
pub mod junit;
pub mod markdown;
mod plugin;
pub mod reporter;
/// The retry rules of every outgoing HTTP call (shared with the notifiers): see
/// [`dtf_plugin_core::retry`].
pub use dtf_plugin_core::retry;
mod run;
pub mod safe;
pub mod teamcity;

#[cfg(feature = "api")]
pub use api::{ApiConfig, ApiService, ApiStats, TargetStats};
#[cfg(feature = "api")]
pub use api_plugin::{ApiRun, CiApiReporter};
pub use azure::render_azure_issues;
pub use detect::{CiInfo, CiSystem, Env, detect, detect_from_process_env, process_env};
pub use dtf_plugin_core::Secret;
pub use error::CiError;
pub use files::{ReportFile, ReportFiles};
pub use github::{render_github_annotations, render_github_summary};
pub use junit::render_junit;
pub use markdown::{render_json, render_markdown};
pub use plugin::{CiReporter, Commands, Output, ReporterConfig, TeamcityLive};
#[cfg(feature = "api")]
pub use reporter::ExternalStats;
pub use reporter::{
    DurationStats, ExternalConfig, TaskLine, TaskReporter, TaskReporterConfig, TaskReporterHandle,
    TaskSummary, TenantStats, WorkerStats,
};
pub use run::{
    Attempt, AttemptOutcome, RunRecorder, RunResult, TaskResult, TaskStatus, Totals, Verdict,
    WorkerSummary,
};
pub use safe::{CiSafeWriter, neutralize};
pub use teamcity::{TeamcityMessages, render_teamcity};

use dtf_plugin_core::registry::{PluginRegistry, RegistryEntry, RegistryError};

/// Registers this crate's plugins in `registry` as built-in plugins of `dtf-plugins-ci`:
/// [`CiReporter`] (`ci-reporter`), [`TeamcityLive`] (`teamcity-live`), [`TaskReporter`]
/// (`task-reporter`) and, with the `api` feature, `CiApiReporter` (`ci-api-reporter`).
///
/// `teamcity-live` and `ci-reporter` write to stdout; use their constructors directly to
/// choose another writer.
///
/// ```
/// let mut registry = dtf_plugin_core::PluginRegistry::new();
/// dtf_plugins_ci::register(&mut registry)?;
/// assert!(registry.get("task-reporter").is_some());
/// assert!(registry.get("ci-reporter").is_some());
/// # Ok::<(), dtf_plugin_core::RegistryError>(())
/// ```
///
/// # Errors
///
/// [`RegistryError::Duplicate`] when one of the names is already taken.
pub fn register(registry: &mut PluginRegistry) -> Result<(), RegistryError> {
    const KRATE: &str = "dtf-plugins-ci";
    registry.register(
        RegistryEntry::new(CiReporter::spec)
            .description("writes JUnit, JSON, Markdown reports and CI status lines at shutdown")
            .config_type::<ReporterConfig>()
            .built_in(KRATE),
    )?;
    registry.register(
        RegistryEntry::new(TeamcityLive::spec)
            .description("streams TeamCity service messages as tasks run")
            .built_in(KRATE),
    )?;
    registry.register(
        RegistryEntry::new(|| TaskReporter::spec().0)
            .description(
                "tracks every task; summary with pass rate, p50/p95, slowest and flaky tasks",
            )
            .config_check::<reporter::TaskReporterConfig>(reporter::TaskReporterConfig::validate)
            .built_in(KRATE),
    )?;
    #[cfg(feature = "api")]
    registry.register(
        RegistryEntry::new(CiApiReporter::spec)
            .description("reports the run to the CI service's HTTP API (GitHub, GitLab, ...)")
            .config_check::<ApiConfig>(ApiConfig::validate)
            .built_in(KRATE),
    )?;
    Ok(())
}
