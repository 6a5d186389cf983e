//! # Reporting a test run to CI
//!
//! Demonstrates the `dtf-plugins-ci` plugins on a real plugin manager:
//!
//! 1. CI detection from the environment, or a system forced with `--ci-system`;
//! 2. [`CiReporter`] writing JUnit XML, JSON and Markdown reports (to a temporary directory)
//!    and printing the CI system's status lines (GitHub annotations, Azure logging
//!    commands, TeamCity service messages) at shutdown;
//! 3. [`TeamcityLive`] streaming TeamCity service messages as tasks run;
//! 4. [`CiApiReporter`] for the system's HTTP API — only with `--enable-external-reporting`
//!    *and* a base URL in `DTF_CI_API_BASE_URL` (tokens and identifiers from the usual
//!    variables, see `docs/ci.md`); otherwise the example lists the calls it would make;
//! 5. [`TaskReporter`], whose summary (pass rate, p50/p95, slowest and flaky tasks, per
//!    worker and tenant) is printed at the end; with `--enable-external-reporting` and
//!    `DTF_REPORT_ENDPOINT` set, it also posts the events to that URL in batches (bearer
//!    token from `DTF_REPORT_TOKEN`, if set).
//!
//! The tasks are simulated tasks of the reference coordinator (`dtf_examples::Coordinator`):
//! they go through the real scheduler, local worker actors and the task-executor plugin;
//! every 7th fails once and passes on its retry (flaky), every 11th fails.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run --example run_test_plugins -- --ci-system jenkins --simulate-tasks 10
//! cargo run --example run_test_plugins -- --ci-system github --plugins ci-reporter,teamcity-live
//! DTF_CI_API_BASE_URL=http://127.0.0.1:8080 GITHUB_TOKEN=… GITHUB_REPOSITORY=o/r GITHUB_SHA=… \
//!   cargo run --example run_test_plugins -- --ci-system github --enable-external-reporting
//! ```
//!
//! Flags (`--help`): `--plugins <list>` (comma-separated from `ci-reporter`, `teamcity-live`,
//! `ci-api`, `task-reporter`; default `ci-reporter,ci-api,task-reporter`),
//! `--enable-external-reporting`, `--ci-system <name>` (default: detected),
//! `--simulate-tasks <n>` (default 10). An unknown CI system or flag exits with code 2.

#![expect(clippy::print_stdout, reason = "an example reports to the terminal")]

use clap::Parser;
use dtf_examples::{Coordinator, CoordinatorOptions, simulated_tasks};
use dtf_plugin_core::prelude::*;
use dtf_plugins_ci::{
    ApiStats, CiApiReporter, CiInfo, CiReporter, CiSystem, TaskReporter, TeamcityLive, detect,
    process_env,
};

struct Args {
    plugins: Vec<String>,
    external: bool,
    system: Option<CiSystem>,
    tasks: u32,
}

const PLUGINS: &[&str] = &["ci-reporter", "teamcity-live", "ci-api", "task-reporter"];

/// Report a simulated test run to CI: JUnit/JSON/Markdown, status lines, the CI API.
#[derive(Debug, Parser)]
#[command(name = "run_test_plugins", version)]
struct Cli {
    /// The plugins to run, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "ci-reporter,ci-api,task-reporter",
        value_parser = PLUGINS.to_vec()
    )]
    plugins: Vec<String>,
    /// Call the CI system's HTTP API (needs DTF_CI_API_BASE_URL) and post task events (needs
    /// DTF_REPORT_ENDPOINT).
    #[arg(long)]
    enable_external_reporting: bool,
    /// The CI system (github, gitlab, azure, jenkins, ...) [default: detected].
    #[arg(long, value_name = "NAME", value_parser = ci_system)]
    ci_system: Option<CiSystem>,
    /// How many simulated tasks.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    simulate_tasks: u32,
}

fn ci_system(value: &str) -> Result<CiSystem, String> {
    value.parse().map_err(|e| format!("failed to {e}"))
}

fn parse_args() -> Args {
    let cli = Cli::parse();
    Args {
        plugins: cli.plugins,
        external: cli.enable_external_reporting,
        system: cli.ci_system,
        tasks: cli.simulate_tasks,
    }
}

/// The commands dialect `CiReporter` prints for `system`.
fn commands_for(system: CiSystem) -> &'static str {
    match system {
        CiSystem::GithubActions => "github",
        CiSystem::AzureDevops => "azure",
        CiSystem::Teamcity => "teamcity",
        _ => "none",
    }
}

/// The API service for `system`, and the calls it makes.
fn api_for(system: CiSystem) -> Option<(&'static str, &'static [&'static str])> {
    Some(match system {
        CiSystem::GithubActions => (
            "github",
            &[
                "POST /repos/{owner}/{repo}/check-runs (in_progress)",
                "POST /repos/{owner}/{repo}/statuses/{sha} (pending)",
                "PATCH /repos/{owner}/{repo}/check-runs/{id} (progress, annotations by 50, conclusion)",
                "POST /repos/{owner}/{repo}/statuses/{sha} (success|failure)",
                "GET + PATCH|POST /repos/{owner}/{repo}/issues/{n}/comments (report comment)",
            ],
        ),
        CiSystem::Gitlab => (
            "gitlab",
            &[
                "POST /api/v4/projects/{id}/statuses/{sha} (running, then success|failed)",
                "GET + PUT|POST /api/v4/projects/{id}/merge_requests/{iid}/notes (report note)",
            ],
        ),
        CiSystem::AzureDevops => (
            "azure-devops",
            &[
                "POST {org}/{project}/_apis/test/runs?api-version=7.1",
                "POST {org}/{project}/_apis/test/runs/{id}/results (batches)",
                "PATCH {org}/{project}/_apis/test/runs/{id} (Completed)",
            ],
        ),
        CiSystem::Bitbucket => (
            "bitbucket",
            &[
                "POST /2.0/repositories/{ws}/{repo}/commit/{sha}/statuses/build",
                "GET + PUT|POST /2.0/repositories/{ws}/{repo}/pullrequests/{id}/comments",
            ],
        ),
        CiSystem::Jenkins => (
            "jenkins",
            &["POST {BUILD_URL}/submitDescription (description)"],
        ),
        CiSystem::Circleci => (
            "circleci",
            &["no HTTP call: store_test_results reads the JUnit file"],
        ),
        _ => return None,
    })
}

#[tokio::main]
async fn main() {
    // A usage error exits with code 2, clap's message on stderr.
    let args = parse_args();
    dtf_examples::output::init_logging("warn");
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let env = process_env();
    let info = match args.system {
        Some(system) => CiInfo::from_env(system, &env),
        None => detect(&env),
    };
    let forced = if args.system.is_some() {
        "forced"
    } else {
        "detected"
    };
    println!("CI system ({forced}): {}", info.system.name());
    println!(
        "  build {} · url {} · commit {} · branch {} · PR {}",
        info.build_id.as_deref().unwrap_or("-"),
        info.build_url.as_deref().unwrap_or("-"),
        info.commit.as_deref().unwrap_or("-"),
        info.branch.as_deref().unwrap_or("-"),
        info.pull_request.map_or("-".to_owned(), |n| n.to_string()),
    );

    let dir = std::env::temp_dir().join(format!("dtf-run-test-plugins-{}", std::process::id()));
    let mut specs: Vec<PluginSpec> = Vec::new();
    let wants = |p: &str| args.plugins.iter().any(|x| x == p);
    if wants("ci-reporter") {
        specs.push(CiReporter::spec().config(serde_json::json!({
            "junit": dir.join("junit.xml"),
            "json": dir.join("run.json"),
            "markdown": dir.join("summary.md"),
            "commands": commands_for(info.system),
        })));
    }
    if wants("teamcity-live") {
        specs.push(TeamcityLive::spec());
    }
    let stats = ApiStats::default();
    let mut api_enabled = false;
    if wants("ci-api") {
        match api_for(info.system) {
            None => println!(
                "external reporting: {} has no API client",
                info.system.name()
            ),
            Some((service, calls)) => {
                let base = env.get("DTF_CI_API_BASE_URL").filter(|b| !b.is_empty());
                match (args.external, base) {
                    (true, Some(base)) => {
                        let key = service.replace('-', "_");
                        let mut config = serde_json::json!({
                            "services": [service],
                            "update_interval_ms": 2000,
                        });
                        let url_key = if service == "jenkins" {
                            "build_url"
                        } else {
                            "base_url"
                        };
                        config[key] = serde_json::json!({ url_key: base });
                        let (info, env, stats) = (info.clone(), env.clone(), stats.clone());
                        specs.push(
                            PluginSpec::new(move || {
                                CiApiReporter::with_env(env.clone())
                                    .with_info(info.clone())
                                    .with_stats(stats.clone())
                            })
                            .config(config)
                            .restart_policy(RestartPolicy::Temporary),
                        );
                        api_enabled = true;
                        println!("external reporting: {service} at {base}");
                    }
                    (enabled, _) => {
                        let why = if enabled {
                            "DTF_CI_API_BASE_URL is not set"
                        } else {
                            "--enable-external-reporting not given"
                        };
                        println!("external reporting: off ({why}); {service} would call:");
                        for call in calls {
                            println!("  {call}");
                        }
                    }
                }
            }
        }
    }

    let mut reporter = None;
    if wants("task-reporter") {
        let (spec, handle) = TaskReporter::spec();
        let mut config = serde_json::json!({ "log_summary": false });
        match env.get("DTF_REPORT_ENDPOINT").filter(|e| !e.is_empty()) {
            Some(endpoint) if args.external => {
                config["external"] = serde_json::json!({ "endpoint": endpoint });
                if let Some(token) = env.get("DTF_REPORT_TOKEN") {
                    config["external"]["token"] = serde_json::json!(token);
                }
                println!("task events: posted in batches to the endpoint in DTF_REPORT_ENDPOINT");
            }
            _ => println!(
                "task events: not posted (needs --enable-external-reporting and DTF_REPORT_ENDPOINT)"
            ),
        }
        specs.push(spec.config(config));
        reporter = Some(handle);
    }

    // The reference coordinator runs the tasks; this example picks every optional plugin
    // itself, so the coordinator's defaults are off.
    let mut options = CoordinatorOptions::default();
    options.tasks = simulated_tasks(args.tasks);
    options.workers = 3;
    options.progress = false;
    options.run_id = "example-run".to_owned();
    options.plugins.disable_all = true;
    let mut coordinator = Coordinator::new(options)?;
    for spec in specs {
        coordinator = coordinator.with_plugin(spec);
    }
    println!("--- CI status lines ---");
    let report = coordinator.run().await?;
    println!("--- end ---");
    if let Some(handle) = &reporter {
        println!("--- task reporter summary ---");
        print!("{}", handle.summary().render_table());
        if args.external {
            let s = handle.external_stats();
            println!(
                "task events sent: {} in {} batch(es); dropped {}",
                s.events_sent, s.batches_sent, s.events_dropped
            );
        }
    }
    println!(
        "CI status: {} ({} of {} tasks passed)",
        if report.exit_code() == 0 {
            "success"
        } else {
            "failure"
        },
        report.passed,
        report.tasks
    );
    let report = report.shutdown;
    for p in &report.plugins {
        if let Some(error) = &p.error {
            println!("plugin {} reported: {error}", p.name);
        }
    }
    if wants("ci-reporter") {
        // Jenkins, GitLab and the others read the report files rather than status lines.
        if let Ok(summary) = std::fs::read_to_string(dir.join("summary.md")) {
            println!("verdict: {}", summary.lines().next().unwrap_or_default());
        }
        println!("reports written:");
        for name in ["junit.xml", "run.json", "summary.md"] {
            let path = dir.join(name);
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            println!("  {} ({size} bytes)", path.display());
        }
    }
    if api_enabled {
        for (target, s) in stats.snapshot() {
            println!(
                "api {target}: ok {} failed {} attempts {} last error {}",
                s.ok,
                s.failed,
                s.attempts,
                s.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}
