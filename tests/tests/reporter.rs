//! The task reporter on a real plugin manager: summary at shutdown (logged and written as
//! JSON), and real-time reporting to an external HTTP endpoint on loopback (batches, bearer
//! token, retries, losses counted, the endpoint never in an error).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use dtf_plugin_core::event::TaskFailed;
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::registry::PluginRegistry;
use dtf_plugins_ci::{TaskReporter, TaskReporterHandle};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn run(config: Value, events: Vec<EventKind>) -> TaskReporterHandle {
    let (spec, handle) = TaskReporter::spec();
    let manager = PluginManager::builder()
        .spec(spec.config(config))
        .spawn()
        .await
        .unwrap();
    for e in events {
        manager.publish(e).await.unwrap();
    }
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    handle
}

/// Startup and one task that fails once and passes on its retry: 8 events, plus the
/// shutdown the manager publishes.
fn flaky_run() -> Vec<EventKind> {
    let error = TaskError::builder()
        .kind("ExitCode(1)")
        .message("flake")
        .build();
    vec![
        EventKind::coordinator_startup("run-42"),
        EventKind::worker_registered("w1", Capabilities::default()),
        EventKind::task_created("t1", "suite::flaky"),
        EventKind::task_assigned("t1", "w1", 1),
        EventKind::task_started("t1", "w1", 1),
        EventKind::TaskFailed(Box::new(
            TaskFailed::builder()
                .task("t1")
                .worker("w1")
                .attempt(1)
                .error(error)
                .retryable(true)
                .build(),
        )),
        EventKind::task_assigned("t1", "w1", 2),
        EventKind::task_started("t1", "w1", 2),
    ]
}

#[tokio::test]
async fn writes_the_summary_as_json_at_shutdown() {
    let dir = std::env::temp_dir().join(format!("dtf-reporter-{}", std::process::id()));
    let file = dir.join("nested").join("summary.json");
    let mut events = flaky_run();
    events.push(EventKind::TaskCompleted(Box::new(
        dtf_plugin_core::event::TaskCompleted::builder()
            .task("t1")
            .worker("w1")
            .attempt(2)
            .outcome(TaskOutcome::Passed)
            .duration(Duration::from_millis(250))
            .build(),
    )));
    let handle = run(json!({ "summary_json": file, "slowest": 1 }), events).await;
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written["run_id"], "run-42");
    assert_eq!(written["totals"]["tasks"], 1);
    assert_eq!(written["totals"]["flaky"], 1);
    assert_eq!(written["retries"], 1);
    assert_eq!(written["pass_rate"], 1.0);
    assert_eq!(written["flaky"][0]["name"], "suite::flaky");
    assert_eq!(written["slowest"].as_array().unwrap().len(), 1);
    assert_eq!(written["workers"][0]["id"], "w1");
    assert_eq!(written["workers"][0]["attempts"], 2);
    // The handle gives the same summary after the run.
    assert_eq!(
        serde_json::to_value(handle.summary()).unwrap()["totals"],
        written["totals"]
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn external(server: &MockServer, extra: Value) -> Value {
    let mut cfg = json!({
        "endpoint": format!("{}/events?key=s3cr3t-key", server.uri()),
        "token": "tok-123",
        "batch_size": 3,
        // Long enough that only the batch size and the shutdown cut batches.
        "flush_interval_ms": 60_000,
        "retry": { "max_attempts": 3, "initial_backoff_ms": 1, "max_backoff_ms": 2 },
    });
    if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
        cfg.extend(extra.clone());
    }
    json!({ "log_summary": false, "external": cfg })
}

#[tokio::test]
async fn posts_events_in_batches_with_the_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/events"))
        .and(query_param("key", "s3cr3t-key"))
        .and(header("authorization", "Bearer tok-123"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(202))
        .expect(3)
        .mount(&server)
        .await;
    let handle = run(external(&server, json!({})), flaky_run()).await;

    let requests = server.received_requests().await.unwrap();
    let bodies: Vec<Value> = requests
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let types = |b: &Value| -> Vec<String> {
        b["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"]["type"].as_str().unwrap().to_owned())
            .collect()
    };
    // 8 events + the shutdown, in publish order, 3 per request; every batch names the run.
    assert_eq!(
        bodies.iter().map(types).collect::<Vec<_>>(),
        [
            vec!["coordinator_startup", "worker_registered", "task_created"],
            vec!["task_assigned", "task_started", "task_failed"],
            vec!["task_assigned", "task_started", "coordinator_shutdown"],
        ]
    );
    assert!(bodies.iter().all(|b| b["run_id"] == "run-42"), "{bodies:?}");
    assert_eq!(bodies[1]["events"][2]["kind"]["data"]["retryable"], true);
    let seqs: Vec<u64> = bodies
        .iter()
        .flat_map(|b| b["events"].as_array().unwrap().clone())
        .map(|e| e["meta"]["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let stats = handle.external_stats();
    assert_eq!((stats.batches_sent, stats.events_sent), (3, 9));
    assert_eq!((stats.batches_failed, stats.attempts), (0, 3));
}

#[tokio::test]
async fn retries_server_errors_and_counts_what_is_lost() {
    let server = MockServer::start().await;
    // The first batch meets two 503s, then is accepted; later batches get a 400, which is
    // never retried.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "0"))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad schema"))
        .with_priority(3)
        .mount(&server)
        .await;
    let handle = run(external(&server, json!({})), flaky_run()).await;

    let stats = handle.external_stats();
    assert_eq!((stats.batches_sent, stats.events_sent), (1, 3));
    assert_eq!((stats.batches_failed, stats.events_dropped), (2, 6));
    assert_eq!(stats.attempts, 5);
    let last = stats.last_error.unwrap();
    assert!(
        last.starts_with("HTTP 400") && last.contains("bad schema"),
        "{last}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 5);
}

/// An endpoint that does not answer cannot hold the reporter's shutdown past
/// `final_timeout_ms`: what was not sent is counted as dropped. Before, the final flush
/// waited for every batch's every try (here 3 batches, 3 tries of 5 s each), past the
/// handler timeout, and the events left behind were counted nowhere (found by a review).
#[tokio::test]
async fn the_final_flush_is_bounded_and_what_it_leaves_is_counted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let handle = run(
        external(
            &server,
            json!({ "timeout_ms": 5_000, "final_timeout_ms": 300 }),
        ),
        flaky_run(),
    )
    .await;
    let stats = handle.external_stats();
    // The 8 events of the run and the shutdown.
    assert_eq!(
        (stats.events_sent, stats.events_dropped),
        (0, 9),
        "{stats:?}"
    );
    let last = stats.last_error.unwrap();
    assert!(last.contains("final_timeout_ms (300 ms)"), "{last}");
    assert!(!last.contains("s3cr3t"), "{last}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_never_shows_its_key_and_never_fails_the_run() {
    // A port nobody listens on: connection refused, retried, then given up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = json!({
        "log_summary": false,
        "external": {
            "endpoint": format!("http://127.0.0.1:{port}/events?key=s3cr3t-key"),
            "batch_size": 100,
            "retry": { "max_attempts": 2, "initial_backoff_ms": 1, "max_backoff_ms": 2 },
        },
    });
    let handle = run(config, flaky_run()).await;
    let stats = handle.external_stats();
    assert_eq!(
        (stats.batches_failed, stats.events_dropped, stats.attempts),
        (1, 9, 2)
    );
    let last = stats.last_error.clone().unwrap();
    assert!(
        !last.contains("s3cr3t") && !last.contains("/events"),
        "{last}"
    );
    assert!(!format!("{stats:?}").contains("s3cr3t"));
    // The run itself is unaffected: the summary is complete.
    assert_eq!(handle.summary().totals.tasks, 1);
}

#[tokio::test]
async fn a_bad_external_configuration_names_the_key() {
    let (spec, _handle) = TaskReporter::spec();
    let (rec, recording) = dtf_plugin_core::testing::RecordingPlugin::spec("rec", HookSet::PLUGIN);
    let manager = PluginManager::builder()
        .spec(rec)
        .spec(
            spec.config(
                json!({ "external": { "endpoint": "http://127.0.0.1:1/", "batch_sise": 2 } }),
            )
            .restart_policy(RestartPolicy::Transient),
        )
        .spawn()
        .await
        .unwrap();
    manager.settle().await;
    let failure = recording
        .events()
        .into_iter()
        .find_map(|e| match e.kind {
            EventKind::PluginFailed(f) if f.plugin == "task-reporter" => Some(f.error),
            _ => None,
        })
        .expect("the reporter fails to start");
    assert!(
        failure.contains("external.batch_sise: unknown field `batch_sise`"),
        "{failure}"
    );
    assert!(!failure.contains("127.0.0.1"), "{failure}");
    manager.shutdown(ShutdownReason::Completed).await;
}

/// A token read from a file ends with a line break: trimmed (every batch was dropped as
/// "builder error" before); one a header cannot carry at all is refused at start, by its key.
#[tokio::test]
async fn the_endpoints_token_is_trimmed_or_refused_by_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("authorization", "Bearer tok-123"))
        .respond_with(ResponseTemplate::new(202))
        .expect(3)
        .mount(&server)
        .await;
    let handle = run(
        external(&server, json!({ "token": "tok-123\n" })),
        flaky_run(),
    )
    .await;
    assert_eq!(handle.external_stats().events_sent, 9);

    let mut plugin = TaskReporter::default();
    let config = external(&server, json!({ "token": "tok-123\nX-Injected: 1" }));
    let mut ctx = PluginContext::detached("task-reporter", config);
    let err = plugin.on_start(&mut ctx).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "external.token: holds characters an HTTP header cannot carry"
    );
}

#[test]
fn register_adds_the_ci_plugins_and_the_task_reporter() {
    let mut registry = PluginRegistry::new();
    dtf_plugins_ci::register(&mut registry).unwrap();
    let names: Vec<_> = registry.names().collect();
    assert_eq!(
        names,
        [
            "ci-api-reporter",
            "ci-reporter",
            "task-reporter",
            "teamcity-live"
        ]
    );
    let entry = registry.get("task-reporter").unwrap();
    assert_eq!(entry.metadata().kind, PluginKind::Reporter);
    assert_eq!(
        entry.plugin_source().to_string(),
        "built-in (dtf-plugins-ci)"
    );
    // Twice is a duplicate, named.
    let err = dtf_plugins_ci::register(&mut registry).unwrap_err();
    assert!(err.to_string().contains("registered twice"), "{err}");
}
