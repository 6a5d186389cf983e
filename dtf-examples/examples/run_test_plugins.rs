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
//!    variables, see `docs/ci.md`); otherwise the example lists the calls it would make.
//!
//! The tasks are simulated: the core has no task-executor or task-reporter plugin yet (that
//! is another issue), so the example publishes the task events a coordinator would —
//! created, assigned, started, then passed, failed or skipped — and one task fails on its
//! first attempt and passes on the retry.
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
//! Flags: `--plugins <list>` (comma-separated from `ci-reporter`, `teamcity-live`,
//! `ci-api`; default `ci-reporter,ci-api`), `--enable-external-reporting`, `--ci-system
//! <name>` (default: detected), `--simulate-tasks <n>` (default 10). An unknown CI system
//! or flag exits with code 2.

#![expect(clippy::print_stdout, reason = "an example reports to the terminal")]

use std::time::Duration;

use dtf_plugin_core::event::{TaskCompleted, TaskFailed};
use dtf_plugin_core::prelude::*;
use dtf_plugins_ci::{
    ApiStats, CiApiReporter, CiInfo, CiReporter, CiSystem, TeamcityLive, detect, process_env,
};

struct Args {
    plugins: Vec<String>,
    external: bool,
    system: Option<CiSystem>,
    tasks: u32,
}

const PLUGINS: &[&str] = &["ci-reporter", "teamcity-live", "ci-api"];

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        plugins: vec!["ci-reporter".to_owned(), "ci-api".to_owned()],
        external: false,
        system: None,
        tasks: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--enable-external-reporting" {
            args.external = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("`{flag}` needs a value"))?;
        match flag.as_str() {
            "--plugins" => {
                args.plugins = value.split(',').map(|p| p.trim().to_owned()).collect();
                if let Some(bad) = args.plugins.iter().find(|p| !PLUGINS.contains(&p.as_str())) {
                    return Err(format!(
                        "unknown plugin `{bad}` (valid: {})",
                        PLUGINS.join(", ")
                    ));
                }
            }
            "--ci-system" => {
                args.system = Some(value.parse().map_err(|e| format!("failed to {e}"))?)
            }
            "--simulate-tasks" => {
                args.tasks = value
                    .parse()
                    .map_err(|_| format!("`--simulate-tasks` wants a number, got `{value}`"))?;
            }
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    Ok(args)
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

/// The events of task `i`: most pass, every fourth fails, every seventh is skipped, task 1
/// fails once and passes on the retry.
fn task_events(i: u32) -> Vec<EventKind> {
    let task = format!("t{i}");
    let worker = format!("w{}", i % 3);
    let mut events = vec![
        EventKind::task_created(task.as_str(), format!("example::suite{}::case_{i}", i % 2)),
        EventKind::task_assigned(task.as_str(), worker.as_str(), 1),
        EventKind::task_started(task.as_str(), worker.as_str(), 1),
    ];
    let done = |attempt: u32, outcome: TaskOutcome| {
        EventKind::TaskCompleted(Box::new(
            TaskCompleted::builder()
                .task(task.as_str())
                .worker(worker.as_str())
                .attempt(attempt)
                .outcome(outcome)
                .duration(Duration::from_millis(u64::from(10 + i * 7 % 90)))
                .build(),
        ))
    };
    if i == 1 {
        let error = TaskError::builder()
            .kind("ConnectionReset")
            .message("peer reset the connection")
            .build();
        events.push(EventKind::TaskFailed(Box::new(
            TaskFailed::builder()
                .task(task.as_str())
                .worker(worker.as_str())
                .attempt(1)
                .error(error)
                .retryable(true)
                .build(),
        )));
        events.push(EventKind::task_assigned(task.as_str(), worker.as_str(), 2));
        events.push(EventKind::task_started(task.as_str(), worker.as_str(), 2));
        events.push(done(2, TaskOutcome::Passed));
    } else if i % 4 == 3 {
        events.push(done(1, TaskOutcome::Failed));
    } else if i % 7 == 5 {
        events.push(done(1, TaskOutcome::Skipped));
    } else {
        events.push(done(1, TaskOutcome::Passed));
    }
    events
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
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
    let mut builder = PluginManager::builder();
    let wants = |p: &str| args.plugins.iter().any(|x| x == p);
    if wants("ci-reporter") {
        builder = builder.spec(PluginSpec::new(CiReporter::new).config(serde_json::json!({
            "junit": dir.join("junit.xml"),
            "json": dir.join("run.json"),
            "markdown": dir.join("summary.md"),
            "commands": commands_for(info.system),
        })));
    }
    if wants("teamcity-live") {
        builder = builder.plugin(TeamcityLive::new);
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
                        builder = builder.spec(
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

    let manager = builder.spawn().await?;
    manager
        .publish(EventKind::coordinator_startup("example-run"))
        .await?;
    for i in 0..args.tasks {
        for event in task_events(i) {
            manager.publish(event).await?;
        }
    }
    println!("--- CI status lines ---");
    let report = manager.shutdown(ShutdownReason::Completed).await;
    println!("--- end ---");
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
