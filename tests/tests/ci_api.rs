//! The CI API reporter against in-process HTTP servers on 127.0.0.1 (wiremock): the exact
//! method, path, headers and JSON body of each service's requests, a pull-request comment
//! edited in place, retries (429 with `Retry-After`, 5xx, connection errors), no retry on
//! other 4xx, per-target stats, and tokens kept out of `Debug` output and errors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dtf_plugin_core::Handover;
use dtf_plugin_core::event::TaskCreated;
use dtf_plugin_core::prelude::*;
use dtf_plugins_ci::{ApiConfig, ApiStats, CiApiReporter, CiInfo, CiSystem, Env};
use serde_json::{Value, json};
use wiremock::matchers::{
    body_json, body_partial_json, body_string_contains, header, method, path, query_param,
};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const GH_TOKEN: &str = "ghp-very-secret-token";

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn github_env() -> Env {
    env(&[
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_TOKEN", GH_TOKEN),
        ("GITHUB_REPOSITORY", "acme/widgets"),
        ("GITHUB_SHA", SHA),
        ("GITHUB_REF", "refs/pull/7/merge"),
    ])
}

/// A run: one pass, one failure with a file, one retried then passed, then shutdown.
fn events() -> Vec<EventKind> {
    let with_file = TaskCreated::builder()
        .task("t2")
        .name("parser::rejects")
        .metadata(BTreeMap::from([
            ("file".to_owned(), "src/parser.rs".to_owned()),
            ("line".to_owned(), "12".to_owned()),
        ]))
        .build();
    let boom = TaskError::builder().kind("Panic").message("boom").build();
    vec![
        EventKind::coordinator_startup("run-1"),
        EventKind::task_created("t1", "parser::accepts"),
        EventKind::TaskCreated(Box::new(with_file)),
        EventKind::task_created("t3", "net::flaky"),
        EventKind::task_started("t1", "w1", 1),
        EventKind::task_completed("t1", "w1", TaskOutcome::Passed, Duration::from_millis(5)),
        EventKind::task_started("t2", "w1", 1),
        EventKind::task_failed("t2", boom.clone(), false),
        EventKind::task_started("t3", "w2", 1),
        EventKind::task_failed("t3", boom, true),
        EventKind::task_assigned("t3", "w2", 2),
        EventKind::task_started("t3", "w2", 2),
        EventKind::task_completed("t3", "w2", TaskOutcome::Passed, Duration::from_millis(7)),
    ]
}

/// Runs `events()` through a manager holding the API reporter and returns its stats.
async fn run(env: Env, config: Value) -> ApiStats {
    run_events(env, config, events()).await
}

async fn run_events(env: Env, config: Value, events: Vec<EventKind>) -> ApiStats {
    let stats = ApiStats::default();
    let handle = stats.clone();
    let spec =
        PluginSpec::new(move || CiApiReporter::with_env(env.clone()).with_stats(handle.clone()))
            .config(config)
            .restart_policy(RestartPolicy::Temporary);
    let manager = PluginManager::builder().spec(spec).spawn().await.unwrap();
    for e in events {
        manager.publish(e).await.unwrap();
    }
    // Shutdown waits for the reporter's final report.
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    stats
}

fn github_config(server: &MockServer, extra: Value) -> Value {
    let mut cfg = json!({
        "services": ["github"],
        "update_interval_ms": 3_600_000,
        "retry": { "initial_backoff_ms": 10, "max_backoff_ms": 20 },
        "github": { "base_url": server.uri() },
    });
    merge(&mut cfg, extra);
    cfg
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn github_headers(mock: wiremock::MockBuilder) -> wiremock::MockBuilder {
    mock.and(header(
        "authorization",
        format!("Bearer {GH_TOKEN}").as_str(),
    ))
    .and(header("accept", "application/vnd.github+json"))
    .and(header("x-github-api-version", "2022-11-28"))
    .and(header(
        "user-agent",
        concat!("dtf-plugins-ci/", env!("CARGO_PKG_VERSION")),
    ))
}

async fn bodies(server: &MockServer, verb: &str, p: &str) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r: &Request| r.method.as_str() == verb && r.url.path() == p)
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(Value::Null))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_creates_a_check_run_posts_statuses_and_comments_once() {
    let server = MockServer::start().await;
    github_headers(Mock::given(method("POST")).and(path("/repos/acme/widgets/check-runs")))
        .and(body_partial_json(json!({
            "name": "dtf",
            "head_sha": SHA,
            "status": "in_progress",
            "external_id": "run-1",
            "output": { "title": "dtf: running", "summary": "The run has started." },
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 42 })))
        .expect(1)
        .mount(&server)
        .await;
    github_headers(
        Mock::given(method("POST")).and(path(format!("/repos/acme/widgets/statuses/{SHA}"))),
    )
    .and(body_json(
        json!({ "state": "pending", "description": "dtf: running", "context": "dtf" }),
    ))
    .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
    .expect(1)
    .mount(&server)
    .await;
    github_headers(Mock::given(method("PATCH")).and(path("/repos/acme/widgets/check-runs/42")))
        .and(body_partial_json(json!({
            "status": "completed",
            "conclusion": "failure",
            "output": {
                "title": "dtf: 1 passed, 1 failed, 1 flaky of 3 tasks",
                "annotations": [
                    {
                        "path": "src/parser.rs",
                        "start_line": 12,
                        "end_line": 12,
                        "annotation_level": "failure",
                        "title": "parser::rejects",
                        "message": "Panic: boom",
                    }
                ],
            },
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 42 })))
        .expect(1)
        .mount(&server)
        .await;
    github_headers(
        Mock::given(method("POST")).and(path(format!("/repos/acme/widgets/statuses/{SHA}"))),
    )
    .and(body_json(json!({
        "state": "failure",
        "description": "dtf: 1 passed, 1 failed, 1 flaky of 3 tasks",
        "context": "dtf",
    })))
    .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 2 })))
    .expect(1)
    .mount(&server)
    .await;
    // First run: no comment of ours yet → one POST.
    github_headers(Mock::given(method("GET")).and(path("/repos/acme/widgets/issues/7/comments")))
        .and(query_param("per_page", "100"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            { "id": 5, "body": "LGTM" }
        ])))
        .expect(1)
        .mount(&server)
        .await;
    github_headers(Mock::given(method("POST")).and(path("/repos/acme/widgets/issues/7/comments")))
        .and(body_string_contains("<!-- dtf-report -->"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 77 })))
        .expect(1)
        .mount(&server)
        .await;

    let stats = run(github_env(), github_config(&server, json!({}))).await;
    server.verify().await;
    let comment = &bodies(&server, "POST", "/repos/acme/widgets/issues/7/comments").await[0];
    let body = comment["body"].as_str().unwrap();
    assert!(
        body.starts_with("<!-- dtf-report -->\n## dtf test run: ❌ failed"),
        "{body}"
    );
    let check = stats.get("github.check-run").unwrap();
    assert_eq!(
        (check.ok, check.failed, check.attempts),
        (2, 0, 2),
        "{check:?}"
    );
    assert_eq!(stats.get("github.status").unwrap().ok, 2);
    assert_eq!(stats.failed(), 0);
}

/// A restart in the middle of the run (the console's restart button, or a panic) keeps the
/// run's one check run: the next instance takes the background task over, and the final
/// report counts every task, those before the restart too. Before, the new instance created
/// a second check run with the tasks after the restart, and the first stayed "in progress"
/// for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_run_keeps_the_one_check_run_and_the_whole_record() {
    let server = MockServer::start().await;
    github_headers(Mock::given(method("POST")).and(path("/repos/acme/widgets/check-runs")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 42 })))
        .expect(1)
        .mount(&server)
        .await;
    github_headers(Mock::given(method("PATCH")).and(path("/repos/acme/widgets/check-runs/42")))
        .and(body_partial_json(json!({
            "status": "completed",
            "conclusion": "failure",
            "output": { "title": "dtf: 1 passed, 1 failed, 1 flaky of 3 tasks" },
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 42 })))
        .expect(1)
        .mount(&server)
        .await;
    let config = github_config(
        &server,
        json!({ "github": { "status": false, "comment": false } }),
    );
    let handover = Handover::new();
    let spec = PluginSpec::new(move || {
        CiApiReporter::with_env(github_env()).with_handover(handover.clone())
    })
    .config(config);
    let manager = PluginManager::builder().spec(spec).spawn().await.unwrap();
    // Up to the first task's start, then the rest after the restart.
    let mut all = events();
    let later = all.split_off(5);
    for e in all {
        manager.publish(e).await.unwrap();
    }
    manager.flush().await;
    manager.restart(CiApiReporter::NAME).await.unwrap();
    for e in later {
        manager.publish(e).await.unwrap();
    }
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    server.verify().await;
}

/// A run stopped by a signal before its tasks ended is "cancelled" on the check run and an
/// "error" on the commit status, not "success"; one that timed out after a failure is a
/// "failure" (before, cancelled tasks counted for nothing and both runs showed green).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_is_cancelled_and_a_failure_before_a_timeout_fails_it() {
    let boom = TaskError::builder().kind("Panic").message("boom").build();
    for (reason, fail_first, conclusion, state) in [
        (ShutdownReason::Requested, false, "cancelled", "error"),
        (ShutdownReason::TimedOut, false, "timed_out", "error"),
        (ShutdownReason::TimedOut, true, "failure", "failure"),
    ] {
        let server = MockServer::start().await;
        github_headers(Mock::given(method("POST")).and(path("/repos/acme/widgets/check-runs")))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 42 })))
            .expect(1)
            .mount(&server)
            .await;
        github_headers(Mock::given(method("PATCH")).and(path("/repos/acme/widgets/check-runs/42")))
            .and(body_partial_json(
                json!({ "status": "completed", "conclusion": conclusion }),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 42 })))
            .expect(1)
            .mount(&server)
            .await;
        let statuses = format!("/repos/acme/widgets/statuses/{SHA}");
        github_headers(Mock::given(method("POST")).and(path(statuses.as_str())))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
            .expect(2)
            .mount(&server)
            .await;
        let mut events = vec![
            EventKind::coordinator_startup("run-1"),
            EventKind::task_created("t1", "a::passes"),
            EventKind::task_created("t2", "a::runs"),
            EventKind::task_completed("t1", "w1", TaskOutcome::Passed, Duration::from_millis(5)),
            EventKind::task_started("t2", "w1", 1),
        ];
        if fail_first {
            events.push(EventKind::task_failed("t2", boom.clone(), true));
            // Its retry is assigned, then the run ends.
            events.push(EventKind::task_assigned("t2", "w1", 2));
        }
        events.push(EventKind::task_cancelled("t2", "the run was interrupted"));
        events.push(EventKind::coordinator_shutdown(reason.clone()));
        let config = github_config(&server, json!({ "github": { "comment": false } }));
        run_events(github_env(), config, events).await;
        server.verify().await;
        let posted = bodies(&server, "POST", &statuses).await;
        assert_eq!(posted[1]["state"], state, "{reason:?}: {posted:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_comment_is_edited_in_place_on_the_second_run() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/widgets/issues/7/comments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            { "id": 5, "body": "LGTM" },
            { "id": 99, "body": "<!-- dtf-report -->\n## dtf test run: old" },
        ])))
        .expect(1)
        .mount(&server)
        .await;
    github_headers(
        Mock::given(method("PATCH")).and(path("/repos/acme/widgets/issues/comments/99")),
    )
    .and(body_string_contains("<!-- dtf-report -->"))
    .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 99 })))
    .expect(1)
    .mount(&server)
    .await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/issues/7/comments"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let cfg = github_config(
        &server,
        json!({ "github": { "checks": false, "status": false } }),
    );
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    assert_eq!(stats.get("github.comment").unwrap().ok, 2);
}

/// On a busy pull request our comment is on a later page (GitHub lists the oldest first): every
/// page is searched, and it is edited, not posted again (which notifies everyone on the pull
/// request each run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_comment_on_a_later_page_is_edited_not_duplicated() {
    let server = MockServer::start().await;
    let others = |from: u64, n: u64| {
        (from..from + n)
            .map(|id| json!({ "id": id, "body": "a bot's comment" }))
            .collect::<Vec<_>>()
    };
    github_headers(Mock::given(method("GET")).and(path("/repos/acme/widgets/issues/7/comments")))
        .and(query_param("per_page", "100"))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(others(1, 100))))
        .expect(1)
        .mount(&server)
        .await;
    let mut page2 = others(101, 30);
    page2.push(json!({ "id": 777, "body": "<!-- dtf-report -->\n## dtf test run: old" }));
    github_headers(Mock::given(method("GET")).and(path("/repos/acme/widgets/issues/7/comments")))
        .and(query_param("per_page", "100"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(page2)))
        .expect(1)
        .mount(&server)
        .await;
    github_headers(
        Mock::given(method("PATCH")).and(path("/repos/acme/widgets/issues/comments/777")),
    )
    .and(body_string_contains("<!-- dtf-report -->"))
    .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 777 })))
    .expect(1)
    .mount(&server)
    .await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/issues/7/comments"))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let cfg = github_config(
        &server,
        json!({ "github": { "checks": false, "status": false } }),
    );
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    assert_eq!(stats.get("github.comment").unwrap().ok, 3);
}

/// A manager holding a GitHub reporter of the check run only (no commit status, no comment)
/// on `server`, with live updates every 50 ms and `extra` settings.
async fn live_check_run(server: &MockServer, extra: Value) -> PluginManager {
    let mut settings = json!({
        "update_interval_ms": 50,
        "github": { "status": false, "comment": false },
    });
    merge(&mut settings, extra);
    let config = github_config(server, settings);
    let spec = PluginSpec::new(move || CiApiReporter::with_env(github_env())).config(config);
    PluginManager::builder().spec(spec).spawn().await.unwrap()
}

/// The end of the run waits behind a live update that hangs (a slow service, a rate limit)
/// for one request timeout at most: live updates are tried once, no further client is
/// updated, and the final report, with the conclusion, follows. (The request in flight is not
/// cut: it could land after the final report, or post Azure results twice.) Before,
/// `CoordinatorShutdown` waited for the whole update, each request retried (here 20 s, in
/// real life up to four request timeouts), past the manager's handler timeout, and the check
/// run could stay "in progress".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_report_does_not_wait_behind_a_hung_live_update() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/check-runs"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 9 })))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/widgets/check-runs/9"))
        .and(body_partial_json(json!({ "status": "completed" })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 9 })))
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    // Live updates (no status): answered after 20 s.
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/widgets/check-runs/9"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(20)))
        .with_priority(2)
        .mount(&server)
        .await;
    let manager = live_check_run(&server, json!({ "request_timeout_ms": 2_000 })).await;
    for e in [
        EventKind::coordinator_startup("run-1"),
        EventKind::task_created("t1", "a::b"),
        EventKind::task_completed("t1", "w1", TaskOutcome::Passed, Duration::from_millis(5)),
    ] {
        manager.publish(e).await.unwrap();
    }
    // Until the live update hangs on the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bodies(&server, "PATCH", "/repos/acme/widgets/check-runs/9")
        .await
        .iter()
        .any(|b| b.get("status").is_none())
    {
        assert!(Instant::now() < deadline, "no live update was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    manager
        .publish(EventKind::coordinator_shutdown(ShutdownReason::Completed))
        .await
        .unwrap();
    manager.flush().await;
    let waited = started.elapsed();
    server.verify().await;
    assert!(
        waited < Duration::from_secs(10),
        "the final report waited {waited:?} behind the live update"
    );
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A run whose GitHub answers say `remaining` calls are left until `reset` (seconds from
/// now, negative for a window already over), with live updates every 50 ms: the live updates
/// and conclusions the server got.
async fn live_updates_under_a_rate_limit(remaining: u64, reset: i64) -> (usize, usize) {
    let server = MockServer::start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let limited = |status: u16| {
        ResponseTemplate::new(status)
            .set_body_json(json!({ "id": 9 }))
            .insert_header("x-ratelimit-limit", "1000")
            .insert_header("x-ratelimit-remaining", remaining.to_string().as_str())
            .insert_header("x-ratelimit-reset", (now + reset).to_string().as_str())
    };
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/check-runs"))
        .respond_with(limited(201))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/widgets/check-runs/9"))
        .respond_with(limited(200))
        .mount(&server)
        .await;
    let manager = live_check_run(&server, json!({})).await;
    manager
        .publish(EventKind::coordinator_startup("run-1"))
        .await
        .unwrap();
    for i in 0..6 {
        manager
            .publish(EventKind::task_created(format!("t{i}"), "a::b"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    let patches = bodies(&server, "PATCH", "/repos/acme/widgets/check-runs/9").await;
    let live = patches.iter().filter(|b| b.get("status").is_none()).count();
    let concluded = patches
        .iter()
        .filter(|b| b.get("conclusion").is_some())
        .count();
    (live, concluded)
}

/// Live updates pause while GitHub says fewer than 100 calls are left of the token's hour (a
/// `GITHUB_TOKEN` has 1,000, shared by every job of the repository), so that the conclusion
/// still gets through; with room, or once the window has reset, they go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_live_updates_pause_when_the_rate_limit_is_nearly_spent() {
    let (live, concluded) = live_updates_under_a_rate_limit(40, 3_600).await;
    assert_eq!((live, concluded), (0, 1), "40 calls left until the reset");
    let (live, concluded) = live_updates_under_a_rate_limit(900, 3_600).await;
    assert!(live >= 2, "900 calls left: {live} live updates");
    assert_eq!(concluded, 1);
    let (live, concluded) = live_updates_under_a_rate_limit(40, -10).await;
    assert!(live >= 2, "the window is over: {live} live updates");
    assert_eq!(concluded, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_annotations_go_fifty_per_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/check-runs"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 3 })))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/widgets/check-runs/3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 3 })))
        .mount(&server)
        .await;
    let mut evs = vec![EventKind::coordinator_startup("run-2")];
    for i in 0..120 {
        let created = TaskCreated::builder()
            .task(format!("t{i}"))
            .name(format!("suite::case_{i}"))
            .metadata(BTreeMap::from([(
                "file".to_owned(),
                "src/lib.rs".to_owned(),
            )]))
            .build();
        evs.push(EventKind::TaskCreated(Box::new(created)));
        evs.push(EventKind::task_failed(
            format!("t{i}"),
            TaskError::builder().kind("Panic").message("no").build(),
            false,
        ));
    }
    let cfg = github_config(
        &server,
        json!({ "github": { "status": false, "comment": false } }),
    );
    run_events(github_env(), cfg, evs).await;
    let patches = bodies(&server, "PATCH", "/repos/acme/widgets/check-runs/3").await;
    let sizes: Vec<usize> = patches
        .iter()
        .map(|b| b["output"]["annotations"].as_array().map_or(0, Vec::len))
        .collect();
    // The conclusion goes first, with the first batch: if the final report runs out of time,
    // annotations are what is cut, not the verdict.
    assert_eq!(sizes, [50, 50, 20]);
    assert_eq!(patches[0]["conclusion"], "failure");
    assert_eq!(patches[0]["status"], "completed");
    assert!(patches[1..].iter().all(|b| b.get("conclusion").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_posts_statuses_and_edits_its_note() {
    let server = MockServer::start().await;
    let statuses = format!("/api/v4/projects/acme%2Fwidgets/statuses/{SHA}");
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .and(header("private-token", "glpat-secret"))
        .and(body_json(json!({
            "state": "running",
            "name": "dtf",
            "description": "dtf: running",
            "target_url": "https://gitlab.example.invalid/p/-/pipelines/5",
            "ref": "feature",
            // The status belongs to this pipeline (a merge-request pipeline's ref is not the
            // branch: without the id GitLab files it elsewhere, out of the merge request).
            "pipeline_id": 5,
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .and(body_partial_json(
            json!({ "state": "failed", "name": "dtf", "pipeline_id": 5 }),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 2 })))
        .expect(1)
        .mount(&server)
        .await;
    let notes = "/api/v4/projects/acme%2Fwidgets/merge_requests/4/notes";
    Mock::given(method("GET"))
        .and(path(notes))
        .and(header("private-token", "glpat-secret"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            { "id": 11, "body": "<!-- dtf-report -->\nold" }
        ])))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("{notes}/11")))
        .and(body_string_contains("<!-- dtf-report -->"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 11 })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(notes))
        .respond_with(ResponseTemplate::new(201))
        .expect(0)
        .mount(&server)
        .await;
    let env = gitlab_env(&[
        (
            "CI_PIPELINE_URL",
            "https://gitlab.example.invalid/p/-/pipelines/5",
        ),
        ("CI_PIPELINE_ID", "5"),
        ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "feature"),
    ]);
    let stats = run(env, gitlab_config(&server)).await;
    server.verify().await;
    assert_eq!(stats.failed(), 0);
}

/// A GitLab merge-request pipeline's environment (project `acme/widgets`, commit [`SHA`],
/// merge request 4), plus `extra`.
fn gitlab_env(extra: &[(&str, &str)]) -> Env {
    let mut pairs = vec![
        ("GITLAB_CI", "true"),
        ("GITLAB_TOKEN", "glpat-secret"),
        ("CI_PROJECT_ID", "acme/widgets"),
        ("CI_COMMIT_SHA", SHA),
        ("CI_MERGE_REQUEST_IID", "4"),
    ];
    pairs.extend_from_slice(extra);
    env(&pairs)
}

/// The GitLab client against `server`, with no live update during a test.
fn gitlab_config(server: &MockServer) -> Value {
    json!({
        "services": ["gitlab"],
        "update_interval_ms": 3_600_000,
        "gitlab": { "base_url": server.uri() },
    })
}

/// A shard of a parallel GitLab job (`parallel: 3`) reports under a name of its own,
/// `dtf (2/3)`, and keeps a merge-request note of its own: it leaves another reporter's note
/// alone and posts its own. Before, every shard posted the status `dtf` and edited one note,
/// so the last shard to end was the merge request's verdict and a failing shard could be
/// hidden by a passing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_of_a_parallel_job_reports_under_its_own_name_and_note() {
    let server = MockServer::start().await;
    let statuses = format!("/api/v4/projects/acme%2Fwidgets/statuses/{SHA}");
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .and(body_partial_json(json!({ "name": "dtf (2/3)" })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
        .expect(2)
        .mount(&server)
        .await;
    let notes = "/api/v4/projects/acme%2Fwidgets/merge_requests/4/notes";
    Mock::given(method("GET"))
        .and(path(notes))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            { "id": 11, "body": "<!-- dtf-report -->\nanother reporter's" },
            { "id": 12, "body": "<!-- dtf-report: dtf (1/3) -->\nthe first shard's" }
        ])))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(notes))
        .and(body_string_contains("<!-- dtf-report: dtf (2/3) -->"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 13 })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let env = gitlab_env(&[("CI_NODE_INDEX", "2"), ("CI_NODE_TOTAL", "3")]);
    let stats = run(env, gitlab_config(&server)).await;
    server.verify().await;
    assert_eq!(stats.failed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_creates_a_test_run_adds_results_and_completes_it() {
    let server = MockServer::start().await;
    let basic = "Basic OmF6dXJlLXBhdA=="; // base64(":azure-pat")
    Mock::given(method("POST"))
        .and(path("/myorg/My%20Project/_apis/test/runs"))
        .and(query_param("api-version", "7.1"))
        .and(header("authorization", basic))
        .and(body_partial_json(json!({
            "name": "dtf run-1",
            "automated": true,
            "state": "InProgress",
            "build": { "id": "77" },
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 501 })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/myorg/My%20Project/_apis/test/runs/501/results"))
        .and(query_param("api-version", "7.1"))
        .and(header("authorization", basic))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1..)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/myorg/My%20Project/_apis/test/runs/501"))
        .and(query_param("api-version", "7.1"))
        .and(body_partial_json(json!({ "state": "Completed" })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 501 })))
        .expect(1)
        .mount(&server)
        .await;
    let env = env(&[
        ("TF_BUILD", "True"),
        ("BUILD_BUILDID", "77"),
        ("AZURE_DEVOPS_TOKEN", "azure-pat"),
        ("SYSTEM_TEAMPROJECT", "My Project"),
    ]);
    let cfg = json!({
        "services": ["azure-devops"],
        "update_interval_ms": 3_600_000,
        "azure_devops": { "base_url": format!("{}/myorg/", server.uri()) },
    });
    run(env, cfg).await;
    server.verify().await;
    let results: Vec<Value> = bodies(
        &server,
        "POST",
        "/myorg/My%20Project/_apis/test/runs/501/results",
    )
    .await
    .into_iter()
    .flat_map(|b| b.as_array().cloned().unwrap_or_default())
    .collect();
    assert_eq!(results.len(), 3, "{results:?}");
    let by_name = |n: &str| {
        results
            .iter()
            .find(|r| r["testCaseTitle"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(by_name("parser::accepts")["outcome"], "Passed");
    assert_eq!(by_name("parser::rejects")["outcome"], "Failed");
    assert_eq!(by_name("parser::rejects")["errorMessage"], "Panic: boom");
    assert_eq!(by_name("net::flaky")["outcome"], "Passed");
    assert_eq!(by_name("net::flaky")["comment"], "flaky after 2 attempts");
}

/// Azure DevOps down at the start: the final report creates the test run and adds every
/// result to it. Before, the run's Tests tab stayed empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_test_run_that_could_not_be_created_at_start_is_created_at_the_end() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/myorg/P/_apis/test/runs"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/myorg/P/_apis/test/runs"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 501 })))
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/myorg/P/_apis/test/runs/501/results"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(1..)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/myorg/P/_apis/test/runs/501"))
        .and(body_partial_json(json!({ "state": "Completed" })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 501 })))
        .expect(1)
        .mount(&server)
        .await;
    let env = env(&[
        ("TF_BUILD", "True"),
        ("AZURE_DEVOPS_TOKEN", "azure-pat"),
        ("SYSTEM_TEAMPROJECT", "P"),
    ]);
    let cfg = json!({
        "services": ["azure-devops"],
        "update_interval_ms": 3_600_000,
        "retry": { "max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 20 },
        "azure_devops": { "base_url": format!("{}/myorg/", server.uri()) },
    });
    run(env, cfg).await;
    server.verify().await;
    let results = bodies(&server, "POST", "/myorg/P/_apis/test/runs/501/results")
        .await
        .into_iter()
        .flat_map(|b| b.as_array().cloned().unwrap_or_default())
        .count();
    assert_eq!(results, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_test_run_id_that_is_not_understood_is_a_counted_failure() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/myorg/P/_apis/test/runs"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "id": "run-501", "state": "x" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    let env = env(&[
        ("TF_BUILD", "True"),
        ("AZURE_DEVOPS_TOKEN", "azure-pat"),
        ("SYSTEM_TEAMPROJECT", "P"),
    ]);
    let cfg = json!({
        "services": ["azure-devops"],
        "update_interval_ms": 3_600_000,
        "azure_devops": { "base_url": format!("{}/myorg/", server.uri()) },
    });
    let stats = run(env, cfg).await;
    server.verify().await;
    // Only the create call was made (results and completion need the id), and it counts as
    // failed with a reason, not as a success.
    let s = stats.get("azure-devops.test-run").unwrap();
    assert_eq!((s.ok, s.failed), (0, 1), "{s:?}");
    let reason = s.last_error.unwrap();
    assert!(reason.contains("not a whole number (a string)"), "{reason}");
    assert!(
        !reason.contains("run-501"),
        "never echoes the answer: {reason}"
    );
    assert_eq!(stats.failed(), 1);
    assert!(stats.get("azure-devops.results").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitbucket_posts_build_statuses_and_a_comment() {
    let server = MockServer::start().await;
    let statuses = format!("/2.0/repositories/ws/repo/commit/{SHA}/statuses/build");
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .and(header("authorization", "Bearer bb-token"))
        .and(body_json(json!({
            "type": "commitstatus",
            "key": "dtf",
            "state": "INPROGRESS",
            "name": "dtf",
            "url": "https://bitbucket.org/ws/repo/pipelines/results/31",
            "description": "dtf: running",
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .and(body_partial_json(
            json!({ "state": "FAILED", "key": "dtf" }),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({})))
        .expect(1)
        .mount(&server)
        .await;
    let comments = "/2.0/repositories/ws/repo/pullrequests/12/comments";
    Mock::given(method("GET"))
        .and(path(comments))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "values": [] })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(comments))
        .and(header("authorization", "Bearer bb-token"))
        .and(body_string_contains("<!-- dtf-report -->"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
        .expect(1)
        .mount(&server)
        .await;
    let env = env(&[
        ("BITBUCKET_BUILD_NUMBER", "31"),
        ("BITBUCKET_REPO_FULL_NAME", "ws/repo"),
        ("BITBUCKET_COMMIT", SHA),
        ("BITBUCKET_PR_ID", "12"),
        ("BITBUCKET_TOKEN", "bb-token"),
    ]);
    let cfg = json!({
        "services": ["bitbucket"],
        "update_interval_ms": 3_600_000,
        "bitbucket": { "base_url": server.uri() },
    });
    run(env, cfg).await;
    server.verify().await;
    let posted = bodies(&server, "POST", comments).await;
    assert!(
        posted[0]["content"]["raw"]
            .as_str()
            .unwrap()
            .starts_with("<!-- dtf-report -->")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jenkins_sets_the_build_description_with_basic_auth() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/job/widgets/12/submitDescription"))
        .and(header("authorization", "Basic Ym9iOmplbmtpbnMtdG9r")) // bob:jenkins-tok
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains(
            "description=dtf%3A+1+passed%2C+1+failed%2C+1+flaky+of+3+tasks+%28failed%29",
        ))
        // As Jenkins does (`Run.doSubmitDescription` redirects to the build's page).
        .respond_with(ResponseTemplate::new(302).insert_header("location", "."))
        .expect(1)
        .mount(&server)
        .await;
    // The description at the start (running).
    Mock::given(method("POST"))
        .and(path("/job/widgets/12/submitDescription"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "."))
        .with_priority(10)
        .mount(&server)
        .await;
    // The redirect is not followed.
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let env = env(&[
        ("JENKINS_URL", "http://jenkins.invalid/"),
        ("BUILD_URL", &format!("{}/job/widgets/12/", server.uri())),
        ("JENKINS_USER", "bob"),
        ("JENKINS_API_TOKEN", "jenkins-tok"),
    ]);
    let cfg = json!({ "services": ["jenkins"], "update_interval_ms": 3_600_000 });
    let stats = run(env, cfg).await;
    server.verify().await;
    let described = stats.get("jenkins.description").unwrap();
    assert_eq!((described.ok, described.failed), (2, 0), "{described:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_retry_after_on_429_then_succeeds() {
    let server = MockServer::start().await;
    let statuses = format!("/repos/acme/widgets/statuses/{SHA}");
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
        .expect(2)
        .mount(&server)
        .await;
    let cfg = github_config(
        &server,
        json!({ "github": { "checks": false, "comment": false } }),
    );
    let started = Instant::now();
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    let reqs = server.received_requests().await.unwrap();
    // The retry came no earlier than the server asked (1 s), while the backoff alone would
    // have been 10–20 ms.
    let gap = started.elapsed();
    assert!(gap >= Duration::from_secs(1), "{gap:?}");
    assert_eq!(reqs.len(), 3);
    let s = stats.get("github.status").unwrap();
    assert_eq!((s.ok, s.failed, s.attempts), (2, 0, 3), "{s:?}");
    assert_eq!(
        s.rate_limited, 1,
        "the same TargetStats as the notifiers: {s:?}"
    );
    assert_eq!(s.last_status, Some(201));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_but_not_404_and_the_run_goes_on() {
    let server = MockServer::start().await;
    // The check run cannot be created: 404 is final, no retry.
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/check-runs"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({ "message": "Not Found" })))
        .expect(1)
        .mount(&server)
        .await;
    // The status endpoint has two 500s, then recovers.
    let statuses = format!("/repos/acme/widgets/statuses/{SHA}");
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 1 })))
        .expect(2)
        .mount(&server)
        .await;
    let cfg = github_config(&server, json!({ "github": { "comment": false } }));
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    let check = stats.get("github.check-run").unwrap();
    assert_eq!(
        (check.ok, check.failed, check.attempts),
        (0, 1, 1),
        "{check:?}"
    );
    assert_eq!(check.last_status, Some(404));
    let err = check.last_error.unwrap();
    assert!(err.starts_with("HTTP 404 Not Found"), "{err}");
    assert!(!err.contains(GH_TOKEN));
    let status = stats.get("github.status").unwrap();
    assert_eq!(
        (status.ok, status.failed, status.attempts),
        (2, 0, 4),
        "{status:?}"
    );
}

/// An API address that redirects (a proxy, an SSO login page) is a failure, not followed:
/// reqwest followed it before, sending the token-bearing request on (and a 302 turned the
/// POST into a GET, whose 200 counted as a check run created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_a_failure_not_followed() {
    let server = MockServer::start().await;
    let elsewhere = format!("{}/login?next=check-runs", server.uri());
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/check-runs"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", elsewhere.as_str()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 99 })))
        .expect(0)
        .mount(&server)
        .await;
    let cfg = github_config(
        &server,
        json!({ "github": { "comment": false, "status": false } }),
    );
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    let check = stats.get("github.check-run").unwrap();
    assert_eq!((check.ok, check.failed), (0, 1), "{check:?}");
    assert_eq!(check.last_status, Some(302));
    let err = check.last_error.unwrap();
    assert!(err.contains("redirect"), "{err}");
    assert!(!err.contains("login") && !err.contains(GH_TOKEN), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_are_retried_then_counted() {
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = json!({
        "services": ["github"],
        "update_interval_ms": 3_600_000,
        "retry": { "max_attempts": 3, "initial_backoff_ms": 5, "max_backoff_ms": 10 },
        "github": { "base_url": format!("http://127.0.0.1:{port}"), "checks": false, "comment": false },
    });
    let stats = run(github_env(), cfg).await;
    let s = stats.get("github.status").unwrap();
    assert_eq!((s.ok, s.failed, s.attempts), (0, 2, 6), "{s:?}");
    assert!(!s.last_error.unwrap().contains(GH_TOKEN));
}

#[tokio::test]
async fn missing_token_fails_start_up_naming_the_variable() {
    let mut env = github_env();
    env.remove("GITHUB_TOKEN");
    let mut plugin = CiApiReporter::with_env(env);
    let mut ctx = PluginContext::detached(CiApiReporter::NAME, json!({ "services": ["github"] }));
    let err = plugin.on_start(&mut ctx).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "configure `github`: no token (set GITHUB_TOKEN, or `token` in the configuration)"
    );

    let mut plugin = CiApiReporter::with_env(Env::new());
    let mut ctx = PluginContext::detached(CiApiReporter::NAME, json!({ "services": ["jenkins"] }));
    let err = plugin.on_start(&mut ctx).await.unwrap_err().to_string();
    assert!(err.contains("JENKINS_USER"), "{err}");
}

/// A check run (id 5) on `server` whose creation is answered `first.0` for the first
/// `first.1` tries and succeeds after that; its updates are accepted. Each is expected.
async fn check_run_created_after(server: &MockServer, first: Option<(ResponseTemplate, u64)>) {
    let create =
        || github_headers(Mock::given(method("POST")).and(path("/repos/acme/widgets/check-runs")));
    if let Some((answer, times)) = first {
        create()
            .respond_with(answer)
            .up_to_n_times(times)
            .with_priority(1)
            .expect(times)
            .mount(server)
            .await;
    }
    create()
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 5 })))
        .with_priority(2)
        .expect(1)
        .mount(server)
        .await;
    github_headers(Mock::given(method("PATCH")).and(path("/repos/acme/widgets/check-runs/5")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "id": 5 })))
        .expect(1..)
        .mount(server)
        .await;
}

/// A token read from a file ends with a line break: trimmed, not sent broken (GitLab's
/// `PRIVATE-TOKEN` was dropped from the request, and GitHub's calls failed with a bare
/// "builder error"). One a header cannot carry at all is refused at start, by its variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_line_break_is_trimmed_or_refused_by_name() {
    let server = MockServer::start().await;
    check_run_created_after(&server, None).await;
    let mut env = github_env();
    env.insert("GITHUB_TOKEN".to_owned(), format!("{GH_TOKEN}\n"));
    let cfg = github_config(
        &server,
        json!({ "github": { "comment": false, "status": false } }),
    );
    let stats = run(env, cfg).await;
    server.verify().await;
    let check = stats.get("github.check-run").unwrap();
    assert_eq!(check.failed, 0, "{check:?}");

    let mut env = github_env();
    env.insert(
        "GITHUB_TOKEN".to_owned(),
        "ghp-canary\nX-Injected: 1".to_owned(),
    );
    let mut plugin = CiApiReporter::with_env(env);
    let mut ctx = PluginContext::detached(CiApiReporter::NAME, json!({ "services": ["github"] }));
    let err = plugin.on_start(&mut ctx).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "configure `github`: the token from `GITHUB_TOKEN` holds characters an HTTP header cannot carry"
    );
}

/// Settings the registry would refuse are refused by the reporter itself at start (a spec
/// built in code skips the registry): a final report with no time, every call timed out at
/// once, a bad URL (found by a review: `final_timeout_ms: 0` dropped the verdict).
#[tokio::test]
async fn settings_out_of_range_fail_start_up_naming_the_key() {
    for (extra, key) in [
        (json!({ "final_timeout_ms": 0 }), "final_timeout_ms"),
        (json!({ "request_timeout_ms": 0 }), "request_timeout_ms"),
        (json!({ "update_interval_ms": 0 }), "update_interval_ms"),
        (
            json!({ "github": { "base_url": "ftp://canary-host" } }),
            "github.base_url",
        ),
    ] {
        let mut cfg = json!({ "services": ["github"] });
        merge(&mut cfg, extra);
        let mut plugin = CiApiReporter::with_env(github_env());
        let mut ctx = PluginContext::detached(CiApiReporter::NAME, cfg);
        let err = plugin.on_start(&mut ctx).await.unwrap_err().to_string();
        assert!(err.starts_with(key), "{key}: {err}");
        assert!(!err.contains("canary"), "{err}");
    }
}

/// GitHub's rate limits answer 403 too (`X-RateLimit-Remaining: 0`, or a `Retry-After` for
/// a secondary limit): tried again, where before the call failed at once, and a big run's
/// final verdict was lost (found by a review). A 403 without them (no permission) is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_rate_limit_403_is_retried_but_a_permission_403_is_not() {
    let server = MockServer::start().await;
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 5;
    let limited = ResponseTemplate::new(403)
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header("x-ratelimit-reset", past.to_string().as_str())
        .set_body_json(json!({ "message": "API rate limit exceeded" }));
    check_run_created_after(&server, Some((limited, 1))).await;
    // The commit status has no permission: final at once.
    let statuses = format!("/repos/acme/widgets/statuses/{SHA}");
    Mock::given(method("POST"))
        .and(path(statuses.as_str()))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "4999")
                .set_body_json(json!({ "message": "Resource not accessible by integration" })),
        )
        .expect(2)
        .mount(&server)
        .await;
    let cfg = github_config(&server, json!({ "github": { "comment": false } }));
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    let check = stats.get("github.check-run").unwrap();
    assert_eq!((check.failed, check.rate_limited), (0, 1), "{check:?}");
    let status = stats.get("github.status").unwrap();
    assert_eq!(
        (status.ok, status.failed, status.attempts),
        (0, 2, 2),
        "{status:?}"
    );
}

/// GitHub down at the start of the run (the check run's creation failed after its retries):
/// the final report creates it, with the verdict. Before, no check run was ever shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_run_that_could_not_be_created_at_start_is_created_at_the_end() {
    let server = MockServer::start().await;
    check_run_created_after(&server, Some((ResponseTemplate::new(503), 2))).await;
    let cfg = github_config(
        &server,
        json!({ "retry": { "max_attempts": 2 }, "github": { "comment": false, "status": false } }),
    );
    run(github_env(), cfg).await;
    server.verify().await;
    let patches = bodies(&server, "PATCH", "/repos/acme/widgets/check-runs/5").await;
    assert_eq!(patches[0]["status"], "completed", "{patches:?}");
    assert_eq!(patches[0]["conclusion"], "failure", "{patches:?}");
}

/// A secondary limit told only in the 403's message is tried again; a primary limit whose
/// reset is an hour away is not retried within the call (it would only spend the attempts
/// and the final report's time), though the final report tries the creation once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_secondary_limits_are_retried_and_a_far_reset_is_not_waited_for() {
    let server = MockServer::start().await;
    let secondary = ResponseTemplate::new(403).set_body_json(json!({
        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
    }));
    check_run_created_after(&server, Some((secondary, 1))).await;
    let cfg = github_config(
        &server,
        json!({ "github": { "comment": false, "status": false } }),
    );
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    let check = stats.get("github.check-run").unwrap();
    assert_eq!((check.failed, check.rate_limited), (0, 1), "{check:?}");

    let server = MockServer::start().await;
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    github_headers(Mock::given(method("POST")).and(path("/repos/acme/widgets/check-runs")))
        .respond_with(
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", in_an_hour.to_string().as_str()),
        )
        // Once at the start, once more in the final report: never retried within a call.
        .expect(2)
        .mount(&server)
        .await;
    let cfg = github_config(
        &server,
        json!({ "github": { "comment": false, "status": false } }),
    );
    let stats = run(github_env(), cfg).await;
    server.verify().await;
    let check = stats.get("github.check-run").unwrap();
    assert_eq!((check.attempts, check.failed), (2, 2), "{check:?}");
    let err = check.last_error.unwrap();
    assert!(
        err.contains("longer than retry.max_retry_after_ms"),
        "{err}"
    );
}

#[tokio::test]
async fn tokens_stay_out_of_debug_output_and_errors() {
    let cfg: ApiConfig = serde_json::from_value(json!({
        "services": ["github", "gitlab"],
        "github": { "token": "cfg-github-secret", "repository": "a/b", "sha": SHA, "base_url": "http://127.0.0.1:9" },
        "gitlab": { "token": "cfg-gitlab-secret", "project": "1", "sha": SHA, "base_url": "http://127.0.0.1:9" },
    }))
    .unwrap();
    let shown = format!("{cfg:?} {cfg:#?}");
    assert!(
        !shown.contains("cfg-github-secret") && !shown.contains("cfg-gitlab-secret"),
        "{shown}"
    );
    assert!(shown.contains("***"));
    // Serializing the configuration drops the tokens.
    let back = serde_json::to_string(&cfg).unwrap();
    assert!(!back.contains("secret"), "{back}");

    // A started reporter (its environment holds a token too) prints none of them.
    let mut plugin = CiApiReporter::with_env(github_env())
        .with_info(CiInfo::from_env(CiSystem::GithubActions, &github_env()));
    let mut raw = serde_json::to_value(&cfg).unwrap();
    raw["github"]["token"] = json!("cfg-github-secret");
    raw["gitlab"]["token"] = json!("cfg-gitlab-secret");
    let mut ctx = PluginContext::detached(CiApiReporter::NAME, raw);
    plugin.on_start(&mut ctx).await.unwrap();
    let shown = format!("{plugin:?}");
    for secret in ["cfg-github-secret", "cfg-gitlab-secret", GH_TOKEN] {
        assert!(!shown.contains(secret), "{shown}");
    }
    plugin.on_shutdown(&mut ctx).await.unwrap();

    // A token in the wrong place is not echoed by the configuration error.
    let mut plugin = CiApiReporter::with_env(Env::new());
    let mut ctx = PluginContext::detached(
        CiApiReporter::NAME,
        json!({ "services": ["github"], "github": { "checks": "cfg-github-secret" } }),
    );
    let err = plugin.on_start(&mut ctx).await.unwrap_err().to_string();
    assert!(
        !err.contains("cfg-github-secret") && err.contains("github.checks"),
        "{err}"
    );
}
