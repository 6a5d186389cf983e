//! The web console's JSON API with a real HTTP client against the console on 127.0.0.1:
//! every endpoint, the token rules, each kind of bad input, secrets kept out of answers, the
//! live stream with its hook filter, and the OpenAPI file checked against the running server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

mod console_common;

use std::collections::BTreeMap;
use std::time::Duration;

use console_common::{Fixture, INDEX, PICKY_SECRET, TOKEN, start, start_with};
use dtf_console::{AccessToken, Console, ConsoleConfig};
use dtf_plugin_core::prelude::*;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn config() -> ConsoleConfig {
    ConsoleConfig::default().body_limit(4096)
}

/// Sends a request (with the token when `auth`), returns the status and the JSON body.
async fn call(
    fx: &Fixture,
    method: Method,
    path: &str,
    body: Option<&str>,
    auth: bool,
) -> (StatusCode, Value) {
    let mut req = client().request(method, format!("{}{path}", fx.base));
    if auth {
        req = req.bearer_auth(TOKEN);
    }
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (status, json)
}

fn state_of(list: &Value, name: &str) -> String {
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no plugin {name} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_plugins_with_state_counters_and_paging() {
    let fx = start(3, config().await).await;
    let (status, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "picky",
            "flaky",
            "quiet",
            "victim",
            "victim2",
            "p0000",
            "p0001",
            "p0002",
            "dtf-console"
        ]
    );
    let picky = &list[0];
    assert_eq!(picky["state"], "running");
    assert_eq!(picky["kind"], "notification");
    assert_eq!(picky["version"], "1.2.3");
    assert_eq!(picky["hooks"], json!(["task_completed"]));
    for field in [
        "queue_depth",
        "delivered",
        "dead_letters",
        "restarts",
        "published",
        "dropped",
    ] {
        assert!(picky[field].is_u64(), "{field} in {picky}");
    }
    assert!(picky["last_error"].is_null());
    assert_eq!(list[8]["console"], true);

    let resp = client()
        .get(format!("{}/api/plugins?q=p000&offset=1&limit=1", fx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-total-count"], "3");
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["name"], "p0001");

    let (status, one) = call(&fx, Method::GET, "/api/plugins/quiet", None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["hooks"], json!(["task_created", "task_started"]));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_token_and_refuse_a_wrong_one() {
    let fx = start(0, config().await).await;
    let resp = client()
        .post(format!("{}/api/plugins/quiet/disable", fx.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "token_required");

    let resp = client()
        .post(format!("{}/api/plugins/quiet/disable", fx.base))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "token_refused");
    assert!(!body.to_string().contains(TOKEN));

    for (method, path) in [
        (Method::PUT, "/api/plugins/picky/config"),
        (Method::DELETE, "/api/plugins/victim"),
        (Method::POST, "/api/plugins/victim/remove"),
        (Method::POST, "/api/plugins/quiet/enable"),
        (Method::POST, "/api/plugins/quiet/restart"),
    ] {
        let (status, body) = call(&fx, method.clone(), path, Some("{}"), false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
    }
    // Nothing changed.
    let (_, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(state_of(&list, "quiet"), "running");
    assert_eq!(state_of(&list, "victim"), "running");
    assert_eq!(fx.manager.config("picky").await.unwrap()["limit"], 10);

    // No GET changes anything: the action paths answer GET with 405.
    let (status, body) = call(&fx, Method::GET, "/api/plugins/quiet/disable", None, true).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["code"], "method_not_allowed");
    let (_, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(state_of(&list, "quiet"), "running");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_the_token_when_configured_so() {
    let fx = start(0, config().await.reads_need_token(true)).await;
    for path in [
        "/api/plugins",
        "/api/run",
        "/api/plugins/picky/config",
        "/api/events",
    ] {
        let resp = client()
            .get(format!("{}{path}", fx.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _) = call(&fx, Method::GET, "/api/plugins", None, true).await;
    assert_eq!(status, StatusCode::OK);
    // The page shell is served, without data.
    let page = client().get(format!("{}/", fx.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("enter the token"));
    assert!(!html.contains("picky"));
    fx.stop().await;
}

/// DNS rebinding: a page of another site whose name resolves to 127.0.0.1 sends its own name
/// as `Host`; it reads like a remote client (token needed), even though the console is on
/// loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_under_a_foreign_host_name_need_the_token() {
    let fx = start(0, config().await).await;
    let get = |host: String, auth: bool| {
        let mut req = client()
            .get(format!("{}/api/plugins", fx.base))
            .header("host", host);
        if auth {
            req = req.bearer_auth(TOKEN);
        }
        req.send()
    };
    let port = fx.addr.port();
    assert_eq!(
        get(format!("evil.example:{port}"), false)
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(format!("evil.example:{port}"), true)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(format!("localhost:{port}"), false)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(format!("127.0.0.1:{port}"), false)
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        get(format!("[::1]:{port}"), false).await.unwrap().status(),
        StatusCode::OK
    );
    let html = client()
        .get(format!("{}/", fx.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("enter the token"));
    assert!(!html.contains("picky"));
    fx.stop().await;
}

/// The run page and `/api/run` stay small at 100,000 tasks (counts, not lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_counts_stay_small_at_100000_tasks() {
    // A queue for the whole burst: this test is about sizes, not about dropping.
    let fx = start(0, config().await.queue_capacity(200_000)).await;
    let bus = fx.manager.bus();
    for i in 0..100_000 {
        bus.publish(EventKind::task_created(format!("t{i}"), "case"))
            .await
            .unwrap();
    }
    for i in 0..40_000 {
        bus.publish(EventKind::task_completed(
            format!("t{i}"),
            format!("w{}", i % 50),
            dtf_plugin_core::event::TaskOutcome::Passed,
            Duration::from_millis(1),
        ))
        .await
        .unwrap();
    }
    fx.manager.flush().await;
    let resp = client()
        .get(format!("{}/api/run", fx.base))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.len() < 20_000, "/api/run is {} bytes", text.len());
    let run: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(run["console_dropped"], 0);
    assert_eq!(run["tasks_total"], 100_000);
    assert_eq!(run["tasks_done"], 40_000);
    assert_eq!(run["tasks_by_state"]["queued"], 60_000);
    assert_eq!(run["workers"].as_array().unwrap().len(), 50);
    assert!(run["eta_ms"].is_u64());
    let html = client()
        .get(format!("{}/run", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.len() < 50_000, "/run is {} bytes", html.len());
    assert!(html.contains("40000 / 100000 tasks done"));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_restart_and_remove_plugins() {
    let fx = start(0, config().await).await;
    let (status, done) = call(&fx, Method::POST, "/api/plugins/quiet/disable", None, true).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done,
        json!({"plugin": "quiet", "action": "disable", "state": "disabled"})
    );
    let (status, err) = call(&fx, Method::POST, "/api/plugins/quiet/disable", None, true).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["code"], "wrong_state");
    assert!(err["error"].as_str().unwrap().contains("disabled"), "{err}");

    // Enabled: its actor may still be starting when the answer is sent.
    let (status, done) = call(&fx, Method::POST, "/api/plugins/quiet/enable", None, true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        matches!(done["state"].as_str(), Some("running" | "starting")),
        "{done}"
    );

    let (status, done) = call(&fx, Method::POST, "/api/plugins/quiet/restart", None, true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        matches!(done["state"].as_str(), Some("running" | "starting")),
        "{done}"
    );
    // It receives events again.
    fx.manager
        .publish(EventKind::task_created("t1", "t1"))
        .await
        .unwrap();
    fx.manager.flush().await;
    assert_eq!(fx.manager.stats("quiet").await.unwrap().delivered, 1);
    let (_, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(state_of(&list, "quiet"), "running");

    let (status, done) = call(&fx, Method::DELETE, "/api/plugins/victim", None, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        done,
        json!({"plugin": "victim", "action": "remove", "state": null})
    );
    let (status, done) = call(&fx, Method::POST, "/api/plugins/victim2/remove", None, true).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let (status, err) = call(&fx, Method::GET, "/api/plugins/victim", None, false).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["code"], "unknown_plugin");
    let (_, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(list.as_array().unwrap().len(), 4);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_plugins_and_paths_get_404_with_a_message() {
    let fx = start(0, config().await).await;
    for (method, path) in [
        (Method::GET, "/api/plugins/nope"),
        (Method::POST, "/api/plugins/nope/enable"),
        (Method::POST, "/api/plugins/nope/disable"),
        (Method::POST, "/api/plugins/nope/restart"),
        (Method::POST, "/api/plugins/nope/remove"),
        (Method::DELETE, "/api/plugins/nope"),
        (Method::GET, "/api/plugins/nope/config"),
        (Method::PUT, "/api/plugins/nope/config"),
        (Method::GET, "/api/plugins/nope/dead-letters"),
        (Method::GET, "/plugins/nope"),
    ] {
        let (status, err) = call(&fx, method.clone(), path, Some("{}"), true).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {err}");
        assert_eq!(err["code"], "unknown_plugin", "{method} {path}");
        assert!(err["error"].as_str().unwrap().contains("`nope`"), "{err}");
    }
    let (status, err) = call(&fx, Method::GET, "/api/nothing-here", None, true).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["code"], "not_found");
    let (status, err) = call(&fx, Method::GET, "/api/plugins?offset=x", None, true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["code"], "bad_query");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfigure_shows_the_precise_error_and_keeps_the_old_config() {
    let fx = start(0, config().await).await;
    let (status, got) = call(&fx, Method::GET, "/api/plugins/picky/config", None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got,
        json!({"plugin": "picky", "config": {"limit": 10, "token": "***"}})
    );

    // Rejected by the plugin: 422 with its reason; the old configuration stays.
    let (status, err) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some(r#"{"limit": 1000, "token": "***"}"#),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["code"], "config_rejected");
    assert_eq!(
        err["error"],
        "reconfigure plugin `picky`: limit: must be at most 100, got 1000"
    );
    // A value of the wrong type: the key path and the expected type, not the value.
    let (status, err) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some(r#"{"limit": "lots-of-them", "token": "***"}"#),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("limit") && msg.contains("expected u32"),
        "{msg}"
    );
    assert!(!msg.contains("lots-of-them"), "{msg}");
    assert_eq!(
        fx.manager.config("picky").await.unwrap(),
        json!({"limit": 10, "token": PICKY_SECRET})
    );

    // Accepted; "***" keeps the secret, which never comes back.
    let (status, got) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some(r#"{"limit": 42, "token": "***"}"#),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        got,
        json!({"plugin": "picky", "config": {"limit": 42, "token": "***"}})
    );
    assert_eq!(
        fx.manager.config("picky").await.unwrap(),
        json!({"limit": 42, "token": PICKY_SECRET})
    );
    // Nowhere in the API or the pages.
    for path in [
        "/api/plugins",
        "/api/plugins/picky",
        "/plugins/picky",
        "/",
        "/api/run",
    ] {
        let text = client()
            .get(format!("{}{path}", fx.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!text.contains(PICKY_SECRET), "{path} shows the secret");
    }

    // Disabled, it cannot check new settings: refused (before, they were stored unchecked, the
    // good ones lost, and the next enable failed with a 500).
    let (status, _) = call(&fx, Method::POST, "/api/plugins/picky/disable", None, true).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some(r#"{"limit": 1000, "token": "***"}"#),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "wrong_state");
    assert!(
        err["error"].as_str().unwrap().contains("enable it first"),
        "{err}"
    );
    assert_eq!(
        fx.manager.config("picky").await.unwrap(),
        json!({"limit": 42, "token": PICKY_SECRET})
    );
    let (status, _) = call(&fx, Method::POST, "/api/plugins/picky/enable", None, true).await;
    assert_eq!(status, StatusCode::OK);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_4xx_with_a_message() {
    let fx = start(0, config().await).await;
    let (status, err) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some("{not json"),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["code"], "malformed_json");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON")
    );

    let big = format!(r#"{{"limit": 1, "token": "{}"}}"#, "x".repeat(10_000));
    let (status, err) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some(&big),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(err["code"], "body_too_large");

    let (status, err) = call(
        &fx,
        Method::PUT,
        "/api/plugins/picky/config",
        Some(""),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(fx.manager.config("picky").await.unwrap()["limit"], 10);
    // A plugin name that is not valid UTF-8 once decoded.
    let (status, err) = call(&fx, Method::GET, "/api/plugins/%FF", None, true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["code"], "bad_path");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_run_counts() {
    let fx = start(0, config().await).await;
    let bus = fx.manager.bus();
    bus.publish(EventKind::coordinator_startup("run-42"))
        .await
        .unwrap();
    bus.publish(EventKind::custom("x.ok", json!({"fail": false})))
        .await
        .unwrap();
    bus.publish(EventKind::custom("x.bad", json!({"fail": true})))
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish(EventKind::task_created(format!("t{i}"), "a test"))
            .await
            .unwrap();
    }
    bus.publish(EventKind::task_started("t0", "w1", 1))
        .await
        .unwrap();
    bus.publish(EventKind::task_completed(
        "t0",
        "w1",
        dtf_plugin_core::event::TaskOutcome::Passed,
        Duration::from_millis(3),
    ))
    .await
    .unwrap();
    fx.manager.flush().await;

    let (status, letters) = call(
        &fx,
        Method::GET,
        "/api/plugins/flaky/dead-letters",
        None,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["hook"], "custom");
    assert!(
        letters[0]["error"]
            .as_str()
            .unwrap()
            .contains("flaky: refused this event")
    );
    assert_eq!(letters[0]["event"]["kind"]["data"]["name"], "x.bad");
    let (_, list) = call(&fx, Method::GET, "/api/plugins/flaky", None, false).await;
    assert_eq!(list["dead_letters"], 1);

    let (status, run) = call(&fx, Method::GET, "/api/run", None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["run_id"], "run-42");
    assert_eq!(run["tasks_total"], 5);
    assert_eq!(run["tasks_done"], 1);
    assert_eq!(run["tasks_by_state"]["queued"], 4);
    assert_eq!(run["tasks_by_state"]["passed"], 1);
    assert_eq!(run["events_by_hook"]["task_created"], 5);
    assert_eq!(run["events_by_hook"]["custom"], 2);
    assert_eq!(run["workers"][0]["worker"], "w1");
    assert_eq!(run["console_dropped"], 0);
    fx.stop().await;
}

/// Reads the SSE stream until `want` returns true for one `(event type, data)`; returns all
/// `(type, data)` seen.
async fn read_stream(
    resp: &mut reqwest::Response,
    mut want: impl FnMut(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut buf = String::new();
    let mut seen = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the stream goes on")
            .unwrap()
            .expect("the stream is not closed");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let mut kind = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(t) = line.strip_prefix("event:") {
                    kind = t.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&data).unwrap();
            let done = want(&kind, &value);
            seen.push((kind, value));
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_is_live_and_filtered_by_hook() {
    let fx = start(0, config().await).await;
    let mut resp = client()
        .get(format!(
            "{}/api/events?hook=task_completed,task_failed",
            fx.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // The first run tick tells us the subscription is in place.
    read_stream(&mut resp, |kind, _| kind == "run").await;
    let bus = fx.manager.bus();
    bus.publish(EventKind::task_created("t1", "t1"))
        .await
        .unwrap();
    bus.publish(EventKind::custom("x", json!({})))
        .await
        .unwrap();
    bus.publish(EventKind::task_completed(
        "t1",
        "w",
        dtf_plugin_core::event::TaskOutcome::Passed,
        Duration::from_millis(1),
    ))
    .await
    .unwrap();
    let seen = read_stream(&mut resp, |kind, _| kind == "bus").await;
    let bus_events: Vec<&Value> = seen
        .iter()
        .filter(|(k, _)| k == "bus")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(bus_events.len(), 1);
    assert_eq!(bus_events[0]["kind"]["type"], "task_completed");

    // An action through the console shows up as a `plugin` notice.
    let (status, _) = call(&fx, Method::POST, "/api/plugins/quiet/disable", None, true).await;
    assert_eq!(status, StatusCode::OK);
    let seen = read_stream(&mut resp, |kind, _| kind == "plugin").await;
    assert_eq!(
        seen.last().unwrap().1,
        json!({"plugin": "quiet", "action": "disable"})
    );
    drop(resp);

    let (status, err) = call(
        &fx,
        Method::GET,
        "/api/events?hook=task_finished",
        None,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["code"], "unknown_hook");
    assert!(err["error"].as_str().unwrap().contains("task_completed"));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_and_stay_small_at_1000_plugins() {
    let fx = start(1000, config().await).await;
    let html = client()
        .get(format!("{}/", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("1–100 of 1006"), "pager");
    assert_eq!(html.matches("<tr data-name=").count(), 100);
    assert!(
        html.len() < 200_000,
        "the plugins page is {} bytes",
        html.len()
    );
    let page3 = client()
        .get(format!("{}/?page=3", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page3.contains("data-name=\"p0195\""));
    // Any page number: past the end, an empty page (a huge one overflowed the offset and
    // dropped the connection).
    let resp = client()
        .get(format!("{}/?page={}", fx.base, usize::MAX))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let far = resp.text().await.unwrap();
    assert_eq!(far.matches("<tr data-name=").count(), 0);
    let filtered = client()
        .get(format!("{}/?q=p099", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(filtered.matches("<tr data-name=").count(), 10);
    // The registry lists every plugin (1,000 of them with no known source) in one answer.
    let registry = client()
        .get(format!("{}/api/registry", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!("registry answer at 1,006 plugins: {} bytes", registry.len());
    assert!(
        registry.len() < 250_000,
        "the registry answer is {} bytes",
        registry.len()
    );
    for path in [
        "/plugins/picky",
        "/run",
        "/registry",
        "/static/console.js",
        "/static/console.css",
    ] {
        let resp = client()
            .get(format!("{}{path}", fx.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    let script = client()
        .get(format!("{}/static/console.js", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !script.contains("http://") && !script.contains("https://"),
        "the script loads nothing from elsewhere"
    );
    fx.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The plugin registry and the source column.

fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_lists_installed_plugins_with_their_source_and_the_index_offer() {
    let fx = start(0, config().await).await;
    fx.manager.disable("quiet").await.unwrap();
    let (status, reg) = call(&fx, Method::GET, "/api/registry", None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reg["catalog"], true);
    let installed = &reg["installed"];
    // Installed from the index, running: the index and the signer are shown.
    let picky = entry(installed, "picky");
    assert_eq!(picky["source"], "index");
    assert_eq!(picky["locality"], "external");
    assert_eq!(picky["location"], INDEX);
    assert_eq!(picky["signed_by"], "5F3C2A1B");
    assert_eq!(picky["version"], "1.2.3");
    assert_eq!(picky["state"], "running");
    assert_eq!(picky["description"], "accepts small limits");
    let flaky = entry(installed, "flaky");
    assert_eq!(flaky["source"], "directory");
    assert_eq!(flaky["location"], "plugins/flaky/plugin.toml");
    assert_eq!(flaky["signed_by"], Value::Null);
    let quiet = entry(installed, "quiet");
    assert_eq!(quiet["source"], "built-in");
    assert_eq!(quiet["locality"], "local");
    assert_eq!(quiet["state"], "disabled");
    // Installed, not in this run.
    let sleepy = entry(installed, "sleepy");
    assert_eq!(sleepy["state"], Value::Null);
    assert_eq!(sleepy["running_version"], Value::Null);
    assert_eq!(sleepy["version"], "0.4.0");
    // Running, but the coordinator did not say where it comes from.
    let victim = entry(installed, "victim");
    assert_eq!(victim["source"], Value::Null);
    assert_eq!(victim["state"], "running");
    // The console knows its own plugin.
    assert_eq!(entry(installed, "dtf-console")["source"], "built-in");
    let names: Vec<&str> = installed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "by name");
    assert_eq!(names.len(), 7, "{names:?}");
    // What the index offers.
    assert_eq!(reg["indexes"], json!([INDEX]));
    assert_eq!(reg["index_error"], Value::Null);
    let available = &reg["available"];
    assert_eq!(entry(available, "echo")["installable"], "0.2.0");
    assert_eq!(entry(available, "picky")["installed"], "1.2.3");
    assert_eq!(entry(available, "picky")["version"], "1.3.0");
    assert_eq!(entry(available, "future")["installable"], Value::Null);

    // The plugins list and page say local or external.
    let (_, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(entry(&list, "picky")["source"], "external");
    assert_eq!(entry(&list, "flaky")["source"], "external");
    assert_eq!(entry(&list, "quiet")["source"], "local");
    assert_eq!(entry(&list, "victim")["source"], Value::Null);
    let (_, one) = call(&fx, Method::GET, "/api/plugins/picky", None, false).await;
    assert_eq!(one["source"], "external");
    let html = client()
        .get(format!("{}/", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<th>Source</th>"));
    assert!(html.contains("<td data-f=\"source\">external</td>"));
    assert!(html.contains("<td data-f=\"source\">local</td>"));
    // The registry page is a shell the script fills from the API, linked from every page.
    let page = client()
        .get(format!("{}/registry", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"installed\"") && page.contains("id=\"available\""));
    assert!(html.contains("href=\"/registry\""));
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_without_a_catalog_lists_the_running_plugins_and_no_index() {
    let fx = start_with(0, config().await, None).await;
    let (status, reg) = call(&fx, Method::GET, "/api/registry", None, false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reg["catalog"], false);
    assert_eq!(reg["indexes"], json!([]));
    assert_eq!(reg["available"], Value::Null);
    assert_eq!(reg["index_error"], Value::Null);
    let installed = reg["installed"].as_array().unwrap();
    assert_eq!(installed.len(), 6, "the five test plugins and the console");
    assert_eq!(entry(&reg["installed"], "picky")["source"], Value::Null);
    assert_eq!(entry(&reg["installed"], "picky")["version"], "1.2.3");
    let (_, list) = call(&fx, Method::GET, "/api/plugins", None, false).await;
    assert_eq!(entry(&list, "picky")["source"], Value::Null);
    assert_eq!(entry(&list, "dtf-console")["source"], "local");
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_never_shows_the_credentials_of_an_index_url() {
    use dtf_console::{AvailablePlugin, InstalledPlugin, PluginOrigin, StaticCatalog};
    let secret_index = "https://bob:hunter2@plugins.example.invalid/dtf/?token=s3cr3t";
    let catalog = StaticCatalog::new()
        .with_installed(InstalledPlugin::new(
            "picky",
            "1.2.3",
            PluginOrigin::Index {
                index: secret_index.to_owned(),
                signed_by: "5F3C2A1B".to_owned(),
            },
        ))
        .with_index(
            secret_index,
            [AvailablePlugin::new("echo", "0.2.0", secret_index)],
        );
    let fx = start_with(0, config().await, Some(catalog)).await;
    let text = client()
        .get(format!("{}/api/registry", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t") && !text.contains("bob"),
        "{text}"
    );
    let reg: Value = serde_json::from_str(&text).unwrap();
    let shown = "https://plugins.example.invalid/dtf/";
    assert_eq!(reg["indexes"], json!([shown]));
    assert_eq!(entry(&reg["installed"], "picky")["location"], shown);
    assert_eq!(entry(&reg["available"], "echo")["index"], shown);
    fx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_reads_need_the_token_when_configured_so() {
    let fx = start(0, config().await.reads_need_token(true)).await;
    let (status, body) = call(&fx, Method::GET, "/api/registry", None, false).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "token_required");
    let (status, _) = call(&fx, Method::GET, "/api/registry", None, true).await;
    assert_eq!(status, StatusCode::OK);
    // The page shell carries no data.
    let page = client()
        .get(format!("{}/registry", fx.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("picky"));
    fx.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI file against the running server.

fn openapi() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/console-openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Follows a `$ref` inside the document.
fn resolve<'a>(doc: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        Some(r) => {
            let mut cur = doc;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            resolve(doc, cur)
        }
        None => node,
    }
}

/// Checks `value` against the schema's `type`, `required`, `properties`, `items` and `enum`.
fn check_shape(doc: &Yaml, schema: &Yaml, value: &Value, at: &str) {
    let schema = resolve(doc, schema);
    if value.is_null() && schema["nullable"].as_bool() == Some(true) {
        return;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let obj = value
                .as_object()
                .unwrap_or_else(|| panic!("{at}: not an object: {value}"));
            if let Some(req) = schema["required"].as_vec() {
                for k in req {
                    let k = k.as_str().unwrap();
                    assert!(obj.contains_key(k), "{at}: missing `{k}` in {value}");
                }
            }
            if let Some(props) = schema["properties"].as_hash() {
                for (k, sub) in props {
                    let k = k.as_str().unwrap();
                    if let Some(v) = obj.get(k) {
                        check_shape(doc, sub, v, &format!("{at}.{k}"));
                    }
                }
            }
        }
        Some("array") => {
            let items = value
                .as_array()
                .unwrap_or_else(|| panic!("{at}: not an array: {value}"));
            for (i, v) in items.iter().enumerate() {
                check_shape(doc, &schema["items"], v, &format!("{at}[{i}]"));
            }
        }
        Some("string") => assert!(value.is_string(), "{at}: not a string: {value}"),
        Some("integer") => assert!(
            value.is_u64() || value.is_i64(),
            "{at}: not an integer: {value}"
        ),
        Some("boolean") => assert!(value.is_boolean(), "{at}: not a boolean: {value}"),
        _ => {}
    }
    if let (Some(allowed), Some(s)) = (schema["enum"].as_vec(), value.as_str()) {
        assert!(
            allowed.iter().any(|a| a.as_str() == Some(s)),
            "{at}: `{s}` not in the enum"
        );
    }
}

fn documented(op: &Yaml) -> BTreeMap<u16, Yaml> {
    op["responses"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let code = k
                .as_str()
                .map_or_else(|| k.as_i64().unwrap() as u16, |s| s.parse().unwrap());
            (code, v.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_of_the_openapi_file_answers_as_documented() {
    let doc = openapi();
    let fx = start(0, config().await).await;
    fx.manager
        .publish(EventKind::custom("x.bad", json!({"fail": true})))
        .await
        .unwrap();
    fx.manager.flush().await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_hash().unwrap() {
        let path = path.as_str().unwrap();
        for method in ["get", "post", "put", "delete"] {
            let op = &item[method];
            if op.is_badvalue() {
                continue;
            }
            let codes = documented(op);
            let op_id = op["operationId"].as_str().unwrap();
            // A plugin for which the operation succeeds.
            let name = match op_id {
                "deletePlugin" => "victim",
                "removePlugin" => "victim2",
                "getDeadLetters" => "flaky",
                "enablePlugin" => {
                    fx.manager.disable("quiet").await.unwrap();
                    "quiet"
                }
                "getPluginConfig" | "putPluginConfig" => "picky",
                _ => "quiet",
            };
            let url = format!("{}{}", fx.base, path.replace("{name}", name));
            let mut req = client()
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    &url,
                )
                .bearer_auth(TOKEN);
            if method == "put" {
                req = req.body(r#"{"limit": 7, "token": "***"}"#);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            assert!(
                status / 100 == 2 && codes.contains_key(&status),
                "{method} {path}: {status} is not a documented success ({:?})",
                codes.keys()
            );
            let content = resolve(&doc, &codes[&status])["content"].clone();
            if op_id == "streamEvents" {
                assert!(!content["text/event-stream"].is_badvalue());
                assert!(
                    resp.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .starts_with("text/event-stream")
                );
                drop(resp);
            } else {
                let body: Value = resp.json().await.unwrap();
                check_shape(
                    &doc,
                    &content["application/json"]["schema"],
                    &body,
                    &format!("{method} {path}"),
                );
            }
            // Each documented error code that a test can provoke here answers as documented.
            let mut errors: Vec<(u16, reqwest::RequestBuilder)> = Vec::new();
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if path.contains("{name}") {
                let url = format!("{}{}", fx.base, path.replace("{name}", "no-such-plugin"));
                errors.push((
                    404,
                    client()
                        .request(m.clone(), url)
                        .bearer_auth(TOKEN)
                        .body("{}"),
                ));
            }
            if method != "get" {
                errors.push((401, client().request(m.clone(), &url).body("{}")));
                errors.push((
                    403,
                    client()
                        .request(m.clone(), &url)
                        .bearer_auth("wrong")
                        .body("{}"),
                ));
            }
            if op_id == "putPluginConfig" {
                errors.push((400, client().put(&url).bearer_auth(TOKEN).body("{")));
                errors.push((
                    413,
                    client().put(&url).bearer_auth(TOKEN).body("x".repeat(5000)),
                ));
                errors.push((
                    422,
                    client()
                        .put(&url)
                        .bearer_auth(TOKEN)
                        .body(r#"{"limit": 500, "token": "***"}"#),
                ));
            }
            if op_id == "listPlugins" {
                let url = format!("{url}?limit=-1");
                errors.push((400, client().get(url)));
            }
            if op_id == "streamEvents" {
                errors.push((400, client().get(format!("{url}?hook=nope"))));
            }
            if op_id == "enablePlugin" || op_id == "disablePlugin" {
                // Now in the state the action leads to: the same action again is a conflict.
                errors.push((409, client().post(&url).bearer_auth(TOKEN)));
            }
            for (want, req) in errors {
                assert!(
                    codes.contains_key(&want),
                    "{method} {path}: {want} is not documented"
                );
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status().as_u16(), want, "{method} {path}");
                let body: Value = resp.json().await.unwrap();
                check_shape(
                    &doc,
                    &resolve(&doc, &codes[&want])["content"]["application/json"]["schema"],
                    &body,
                    &format!("{method} {path} {want}"),
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13, "operations checked");
    fx.stop().await;
}

/// A console that falls behind drops its own copies and never makes the publisher wait: on a
/// single-threaded runtime the console's actor cannot run while the publisher publishes, so
/// its queue of 8 overflows at once. Its counts then say exactly what they missed.
#[tokio::test(flavor = "current_thread")]
async fn a_console_that_falls_behind_drops_its_own_events_not_the_bus() {
    let fx = start(0, config().await.queue_capacity(8)).await;
    let bus = fx.manager.bus();
    // `flaky` (the other subscriber of custom events) has room for all of them.
    for i in 0..5_000 {
        bus.publish(EventKind::custom("burst", json!({"n": i})))
            .await
            .unwrap();
    }
    fx.manager.flush().await;
    let console = fx.manager.stats(dtf_console::CONSOLE_PLUGIN).await.unwrap();
    assert!(console.dropped >= 4_000, "{console:?}");
    assert!(console.is_conserved(), "{console:?}");
    let flaky = fx.manager.stats("flaky").await.unwrap();
    assert_eq!(
        flaky.delivered, 5_000,
        "the bus delivered everything to the others"
    );
    assert_eq!(flaky.dropped, 0);
    let (_, run) = call(&fx, Method::GET, "/api/run", None, false).await;
    assert_eq!(run["console_dropped"], console.dropped);
    assert_eq!(run["events_total"], console.delivered);
    fx.stop().await;
}

/// A router kept without its `Console` (as an embedding server mounts it) serves a live event
/// stream: before, dropping the console ended every stream at once, and the page flapped
/// between offline and reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_kept_without_its_console_streams_live_events() {
    let manager = PluginManager::builder().spawn().await.unwrap();
    let router = Console::attach(&manager, AccessToken::new(TOKEN), config().await)
        .await
        .unwrap()
        .router(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let mut resp = client()
        .get(format!("http://{addr}/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Two run ticks: the stream is still open after the first.
    let mut ticks = 0;
    read_stream(&mut resp, |kind, _| {
        ticks += usize::from(kind == "run");
        ticks == 2
    })
    .await;
    server.abort();
    manager.shutdown(ShutdownReason::Completed).await;
}
