//! The notify pipeline under tokio's paused clock: 10,000 failure events per second for 60
//! seconds, in two groups, against a destination that answers 429 with `Retry-After` (1–5 s)
//! on half of the attempts.
//!
//! The destination here is an **in-process simulation** plugged in at the transport seam
//! ([`dtf_plugins_notify::transport::Transport`]), not a real HTTP server: tokio's paused
//! clock auto-advances while a task waits on real socket I/O, so real sockets and virtual
//! time do not mix. The reqwest transport and every request format are tested against real
//! wiremock servers on loopback in `notify.rs`. The simulation records the virtual time of
//! every request and checks each against the `Retry-After` it gave last.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dtf_plugin_core::EventMeta;
use dtf_plugin_core::prelude::*;
use dtf_plugins_notify::NotifyPlugin;
use dtf_plugins_notify::transport::{Body, HttpRequest, HttpResponse, Transport, TransportError};
use serde_json::{Value, json};
use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Delivered {
    at: Duration,
    group: String,
    count: u64,
    sequence: u64,
}

#[derive(Default)]
struct SimState {
    attempts: u64,
    /// No request may arrive before this (set by each 429's Retry-After).
    not_before: Option<Instant>,
    /// Request times, relative to the start.
    requests: Vec<Duration>,
    early: Vec<(Duration, Duration)>,
    delivered: Vec<Delivered>,
}

/// A simulated webhook endpoint: every other attempt is answered 429 with a Retry-After of
/// 1, 2, 3, 4, 5, 1, … seconds; the others 200.
struct SimServer {
    start: Instant,
    state: Mutex<SimState>,
}

#[async_trait::async_trait]
impl Transport for SimServer {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        let at = now - self.start;
        s.requests.push(at);
        if let Some(nb) = s.not_before {
            if now < nb {
                s.early.push((at, nb - self.start));
            }
        }
        s.attempts += 1;
        if s.attempts % 2 == 1 {
            let secs = 1 + (s.attempts / 2) % 5;
            s.not_before = Some(now + Duration::from_secs(secs));
            return Ok(HttpResponse::new(
                429,
                vec![("Retry-After".into(), secs.to_string())],
                "",
            ));
        }
        let Body::Json(body) = &request.body else {
            panic!("not JSON")
        };
        s.delivered.push(Delivered {
            at,
            group: body["group_key"].as_str().unwrap().to_owned(),
            count: body["count"].as_u64().unwrap(),
            sequence: body["sequence"].as_u64().unwrap(),
        });
        Ok(HttpResponse::new(200, vec![], ""))
    }
}

fn failure(seq: u64, error: &str) -> Event {
    let mut kind = EventKind::task_failed(
        format!("t{seq}"),
        TaskError::builder()
            .kind(error)
            .message("timed out")
            .build(),
        false,
    );
    if let EventKind::TaskFailed(f) = &mut kind {
        f.worker = Some("w3".into());
    }
    Event {
        meta: EventMeta {
            seq,
            time: SystemTime::now(),
            source: "load".into(),
        },
        kind,
    }
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_failures_a_second_give_one_message_per_group_window_and_respect_retry_after()
{
    let start = Instant::now();
    let sim = Arc::new(SimServer {
        start,
        state: Mutex::new(SimState::default()),
    });
    let config = json!({
        "channels": [{ "type": "webhook", "url": "https://sim.invalid/hook" }],
        "group": { "group_wait_ms": 5_000, "group_interval_ms": 10_000, "max_items": 5 },
    });
    let mut plugin = NotifyPlugin::new().with_transport(sim.clone());
    let stats = plugin.stats_handle();
    let mut ctx = PluginContext::detached("notify", config);
    plugin.on_start(&mut ctx).await.unwrap();

    // 10 events per virtual millisecond for 60 s, alternating between two error types, so two
    // groups flush at the same instants and their messages queue for the same destination.
    let mut seq = 0;
    for _ms in 0..60_000 {
        for i in 0..10 {
            seq += 1;
            let error = if i % 2 == 0 {
                "TimeoutError"
            } else {
                "AssertionError"
            };
            plugin
                .on_event(&mut ctx, &failure(seq, error))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Let the last window (due at 65 s) go out on its own, then shut down.
    tokio::time::sleep(Duration::from_secs(30)).await;
    plugin.on_shutdown(&mut ctx).await.unwrap();

    let s = sim.state.lock().unwrap();
    assert!(
        s.early.is_empty(),
        "requests before the Retry-After expired: {:?}",
        s.early
    );
    // Windows: the first message after group_wait (5 s), then one per group_interval while
    // events keep coming (15, 25, 35, 45, 55 s), then the rest at 65 s.
    let dues: Vec<u64> = vec![5, 15, 25, 35, 45, 55, 65];
    for group in [
        "task_failed/TimeoutError/w3/-",
        "task_failed/AssertionError/w3/-",
    ] {
        let mut msgs: Vec<&Delivered> = s.delivered.iter().filter(|d| d.group == group).collect();
        msgs.sort_by_key(|d| d.sequence);
        assert_eq!(msgs.len(), dues.len(), "{group}: {msgs:?}");
        for (k, (m, due)) in msgs.iter().zip(&dues).enumerate() {
            // Exactly one delivery per window, in order, no duplicate sequence numbers.
            assert_eq!(m.sequence, k as u64 + 1, "{group}: {msgs:?}");
            let due = Duration::from_secs(*due);
            assert!(
                m.at >= due && m.at < due + Duration::from_secs(10),
                "{group} window {k}: delivered at {:?}",
                m.at
            );
            assert!(m.count > 0);
        }
        // Nothing lost, nothing counted twice.
        assert_eq!(
            msgs.iter().map(|m| m.count).sum::<u64>(),
            300_000,
            "{group}"
        );
    }
    // Every message was refused once, then accepted: two requests per message.
    assert_eq!(s.requests.len(), 2 * 2 * dues.len());
    let t = stats.get("webhook").unwrap();
    assert_eq!(
        (t.ok, t.failed, t.attempts, t.rate_limited),
        (14, 0, 28, 14)
    );
    assert!(stats.undelivered().is_empty());
    assert_eq!(stats.counts().events, 600_000);
    let _: Value = Value::Null;
}

/// The shutdown deadline: a destination that keeps answering 429 with a long Retry-After
/// holds the message past the deadline, and the message is reported, not dropped silently.
#[tokio::test(start_paused = true)]
async fn messages_still_pending_at_the_shutdown_deadline_are_reported_undelivered() {
    struct AlwaysLimited;
    #[async_trait::async_trait]
    impl Transport for AlwaysLimited {
        async fn send(&self, _: HttpRequest) -> Result<HttpResponse, TransportError> {
            Ok(HttpResponse::new(
                429,
                vec![("retry-after".into(), "20".into())],
                "",
            ))
        }
    }
    let config = json!({
        "channels": [{ "type": "webhook", "url": "https://sim.invalid/hook" }],
        "group": { "group_wait_ms": 60_000 },
        "delivery": { "shutdown_timeout_ms": 5_000, "retry": { "max_attempts": 10, "max_retry_after_ms": 60_000 } },
    });
    let mut plugin = NotifyPlugin::new().with_transport(Arc::new(AlwaysLimited));
    let stats = plugin.stats_handle();
    let mut ctx = PluginContext::detached("notify", config);
    plugin.on_start(&mut ctx).await.unwrap();
    for i in 0..3 {
        plugin
            .on_event(&mut ctx, &failure(i, "TimeoutError"))
            .await
            .unwrap();
    }
    let before = Instant::now();
    plugin.on_shutdown(&mut ctx).await.unwrap();
    assert!(Instant::now() - before <= Duration::from_secs(6));
    let u = stats.undelivered();
    assert_eq!(u.len(), 1, "{u:?}");
    assert_eq!(u[0].events, 3);
    assert!(u[0].reason.contains("shutdown deadline"), "{}", u[0].reason);
    assert_eq!(stats.get("webhook").unwrap().attempts, 1);
}

/// Records the virtual time, URL-free label and body of every request; answers from a script
/// (then `200 {"ok": true}`).
struct Recorder {
    start: Instant,
    script: Mutex<std::collections::VecDeque<HttpResponse>>,
    log: Mutex<Vec<(Duration, String, Value)>>,
}

impl Recorder {
    fn new(script: Vec<HttpResponse>) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            script: Mutex::new(script.into()),
            log: Mutex::new(Vec::new()),
        })
    }

    fn times(&self) -> Vec<Duration> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _, _)| *t)
            .collect()
    }
}

#[async_trait::async_trait]
impl Transport for Recorder {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let body = match &request.body {
            Body::Json(v) => v.clone(),
            Body::Form(f) => Value::Object(f.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
            _ => Value::Null,
        };
        self.log
            .lock()
            .unwrap()
            .push((Instant::now() - self.start, request.label.clone(), body));
        Ok(self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| HttpResponse::new(200, vec![], r#"{"ok":true,"result":{}}"#)))
    }
}

async fn feed(
    transport: Arc<Recorder>,
    config: Value,
    events: Vec<Event>,
) -> dtf_plugins_notify::NotifyStats {
    let mut plugin = NotifyPlugin::new().with_transport(transport);
    let stats = plugin.stats_handle();
    let mut ctx = PluginContext::detached("notify", config);
    plugin.on_start(&mut ctx).await.unwrap();
    for e in &events {
        plugin.on_event(&mut ctx, e).await.unwrap();
    }
    plugin.on_shutdown(&mut ctx).await.unwrap();
    stats
}

/// Five groups fall due at once: Slack gets them one second apart (its ~1/s per channel).
#[tokio::test(start_paused = true)]
async fn slack_messages_to_one_channel_are_spaced_by_its_rate_limit() {
    let rec = Recorder::new(vec![]);
    let events = (0..5).map(|i| failure(i, &format!("Error{i}"))).collect();
    let stats = feed(
        rec.clone(),
        json!({ "channels": [{ "type": "slack", "webhook_url": "https://hooks.invalid/services/T/B/x" }], "group": { "group_wait_ms": 1000 } }),
        events,
    )
    .await;
    let t = rec.times();
    assert_eq!(t.len(), 5);
    for w in t.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(1), "{t:?}");
    }
    assert_eq!(stats.get("slack").unwrap().ok, 5);
}

/// Telegram: about one message per second per chat, and all chats of the bot share ~30/s.
#[tokio::test(start_paused = true)]
async fn telegram_respects_the_per_chat_and_per_bot_pace() {
    let rec = Recorder::new(vec![]);
    let events = (0..3).map(|i| failure(i, &format!("Error{i}"))).collect();
    feed(
        rec.clone(),
        json!({ "channels": [{ "type": "telegram", "bot_token": "1:x", "chat_ids": ["1", "2", "3"], "base_url": "https://tg.invalid" }], "group": { "group_wait_ms": 0 } }),
        events,
    )
    .await;
    let log = rec.log.lock().unwrap().clone();
    assert_eq!(log.len(), 9);
    for chat in ["1", "2", "3"] {
        let times: Vec<Duration> = log
            .iter()
            // Numeric chat ids go out as JSON integers.
            .filter(|(_, _, b)| b["chat_id"] == json!(chat.parse::<i64>().unwrap()))
            .map(|(t, _, _)| *t)
            .collect();
        assert_eq!(times.len(), 3);
        for w in times.windows(2) {
            assert!(
                w[1] - w[0] >= Duration::from_secs(1),
                "chat {chat}: {times:?}"
            );
        }
    }
    let mut all: Vec<Duration> = log.iter().map(|(t, _, _)| *t).collect();
    all.sort();
    for w in all.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(34), "{all:?}");
    }
}

/// Discord's drained bucket on a *successful* answer holds the next request until the reset.
#[tokio::test(start_paused = true)]
async fn discord_bucket_headers_hold_the_next_request_until_the_reset() {
    let drained = HttpResponse::new(
        200,
        vec![
            ("X-RateLimit-Remaining".into(), "0".into()),
            ("X-RateLimit-Reset-After".into(), "2.5".into()),
        ],
        "{}",
    );
    let rec = Recorder::new(vec![drained]);
    let events = (0..2).map(|i| failure(i, &format!("Error{i}"))).collect();
    let stats = feed(
        rec.clone(),
        json!({ "channels": [{ "type": "discord", "webhook_url": "https://discord.invalid/api/webhooks/1/x" }], "group": { "group_wait_ms": 0 } }),
        events,
    )
    .await;
    let t = rec.times();
    assert_eq!(t.len(), 2);
    assert!(t[1] - t[0] >= Duration::from_millis(2500), "{t:?}");
    let s = stats.get("discord").unwrap();
    assert_eq!((s.ok, s.rate_limited), (2, 1));
}

fn too_many_requests(seconds: &str) -> HttpResponse {
    HttpResponse::new(429, vec![("retry-after".into(), seconds.into())], "")
}

/// Two channels posting to one Slack webhook share its gate: the first one's 429 holds the
/// second, so no request reaches the webhook before its `Retry-After` expires.
#[tokio::test(start_paused = true)]
async fn two_channels_on_one_webhook_share_its_retry_after() {
    let rec = Recorder::new(vec![too_many_requests("5")]);
    let hook = "https://hooks.invalid/services/T/B/shared";
    feed(
        rec.clone(),
        json!({
            "channels": [
                { "type": "slack", "name": "alerts-a", "webhook_url": hook },
                { "type": "slack", "name": "alerts-b", "webhook_url": hook },
            ],
            "group": { "group_wait_ms": 0 },
        }),
        vec![failure(1, "TimeoutError")],
    )
    .await;
    let t = rec.times();
    assert_eq!(t.len(), 3, "one 429, then both messages: {t:?}");
    for later in &t[1..] {
        assert!(*later - t[0] >= Duration::from_secs(5), "{t:?}");
    }
}

/// A `Retry-After` far beyond any sane value (a buggy proxy) neither panics nor stops the
/// channel: the message gives up (it exceeds `max_retry_after_ms`) and says why.
#[tokio::test(start_paused = true)]
async fn an_absurd_retry_after_fails_the_message_not_the_channel() {
    let rec = Recorder::new(vec![too_many_requests("18446744073709551615")]);
    let stats = feed(
        rec.clone(),
        json!({
            "channels": [{ "type": "webhook", "url": "https://sim.invalid/hook" }],
            "group": { "group_wait_ms": 0 },
            "delivery": { "shutdown_timeout_ms": 1_000 },
        }),
        vec![failure(1, "TimeoutError")],
    )
    .await;
    let undelivered = stats.undelivered();
    assert_eq!(undelivered.len(), 1, "{undelivered:?}");
    assert!(
        undelivered[0].reason.contains("max_retry_after_ms"),
        "{undelivered:?}"
    );
}

/// A reconfiguration starts a new pipeline, but the destinations' gates carry over: a
/// `Retry-After` received before it still holds after it.
#[tokio::test(start_paused = true)]
async fn a_retry_after_outlives_a_reconfiguration() {
    let rec = Recorder::new(vec![too_many_requests("20")]);
    let config = json!({
        "channels": [{ "type": "webhook", "url": "https://sim.invalid/hook" }],
        "group": { "group_wait_ms": 0 },
        "delivery": { "retry": { "max_attempts": 1 }, "shutdown_timeout_ms": 60_000 },
    });
    let mut plugin = NotifyPlugin::new().with_transport(rec.clone());
    let mut ctx = PluginContext::detached("notify", config);
    plugin.on_start(&mut ctx).await.unwrap();
    plugin
        .on_event(&mut ctx, &failure(1, "TimeoutError"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rec.times().len(), 1, "the 429");
    plugin.on_reconfigure(&mut ctx).await.unwrap();
    plugin
        .on_event(&mut ctx, &failure(2, "AssertionError"))
        .await
        .unwrap();
    plugin.on_shutdown(&mut ctx).await.unwrap();
    let t = rec.times();
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(t[1] - t[0] >= Duration::from_secs(20), "{t:?}");
}

/// When the manager cuts the plugin's shutdown short (its deadline or the handler timeout
/// comes before the notifier's own `shutdown_timeout_ms`), what was pending is reported and
/// nothing more is sent afterwards.
#[tokio::test(start_paused = true)]
async fn a_shutdown_cut_short_reports_what_was_pending_and_sends_nothing_after() {
    let rec = Recorder::new((0..20).map(|_| too_many_requests("5")).collect());
    let config = json!({
        "channels": [{ "type": "webhook", "url": "https://sim.invalid/hook" }],
        "group": { "group_wait_ms": 0 },
        "delivery": { "shutdown_timeout_ms": 60_000, "retry": { "max_attempts": 20 } },
    });
    let mut plugin = NotifyPlugin::new().with_transport(rec.clone());
    let stats = plugin.stats_handle();
    let mut ctx = PluginContext::detached("notify", config);
    plugin.on_start(&mut ctx).await.unwrap();
    plugin
        .on_event(&mut ctx, &failure(1, "TimeoutError"))
        .await
        .unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(2), plugin.on_shutdown(&mut ctx)).await;
    assert!(cut.is_err(), "the shutdown was cut short");
    let undelivered = stats.undelivered();
    assert_eq!(undelivered.len(), 1, "{undelivered:?}");
    assert!(
        undelivered[0].reason.contains("cut short"),
        "{undelivered:?}"
    );
    let sent = rec.times().len();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(rec.times().len(), sent, "nothing is sent after the cut");
}
