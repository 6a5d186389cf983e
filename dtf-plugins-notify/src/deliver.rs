//! The deliver stage: per-destination gates (rate limit and "not before"), retries with
//! exponential backoff and jitter, and per-target statistics.
//!
//! Every request to a destination goes through that destination's gate ([`GateSpec`]). A gate lets one
//! request through at a time, no sooner than `min_interval` after the previous one (Slack
//! about 1/s per channel, Telegram about 1/s per chat), and never before its *not-before*
//! instant, which a `Retry-After` header, Discord's `retry_after`/bucket headers or Telegram's
//! `parameters.retry_after` set. Because every pending message to that destination waits on
//! the same gate, none of them can reach a throttled destination before the time it gave.
//! A channel can also name a shared gate (Telegram's ~30 messages/s per bot over all chats).
//!
//! Retries: connection errors, timeouts, 408, 429 and 5xx, up to
//! [`RetryPolicy::max_attempts`](dtf_plugin_core::retry::RetryPolicy) attempts; other 4xx fail
//! at once. A `Retry-After` longer than `max_retry_after_ms` is still honoured by the gate
//! but the message gives up instead of waiting that long.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dtf_plugin_core::retry::{
    Jitter, RetryPolicy, discord_bucket_wait, is_retryable_status, parse_retry_after_at,
    retry_after_from_json,
};
use tokio::time::Instant;

use crate::stats::NotifyStats;
use crate::transport::{HttpRequest, HttpResponse, Transport};

/// Which gates a destination's requests pass.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateSpec {
    /// The destination's gate key (e.g. `slack:#alerts`).
    pub key: String,
    /// Least time between two requests to it.
    pub min_interval: Duration,
    /// A gate shared with other destinations (key, least time between requests), if any.
    pub shared: Option<(String, Duration)>,
}

impl GateSpec {
    /// A gate `key` with `min_interval` between requests and no shared gate.
    pub fn new(key: impl Into<String>, min_interval: Duration) -> Self {
        Self {
            key: key.into(),
            min_interval,
            shared: None,
        }
    }

    /// Adds a shared gate.
    pub fn shared(mut self, key: impl Into<String>, min_interval: Duration) -> Self {
        self.shared = Some((key.into(), min_interval));
        self
    }
}

/// The longest wait a destination can impose (a `Retry-After` beyond it is read as this), so a
/// wild value from a proxy cannot overflow the clock.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// `now + wait`, with `wait` capped at [`MAX_WAIT`].
fn later(now: Instant, wait: Duration) -> Instant {
    now + wait.min(MAX_WAIT)
}

#[derive(Debug)]
struct Gate {
    next_free: Instant,
    not_before: Instant,
}

type GateRef = Arc<tokio::sync::Mutex<Gate>>;

/// Every destination's gate, by key. Shared by the deliverers of one plugin across
/// reconfigurations, so a `Retry-After` outlives the pipeline that received it.
#[derive(Clone, Default)]
pub(crate) struct Gates(Arc<Mutex<HashMap<String, GateRef>>>);

/// What one attempt of an operation gave.
#[derive(Debug)]
#[non_exhaustive]
pub enum Attempt<T> {
    /// It worked. `slow_down`: the destination asked for a pause before the next request
    /// (Discord's drained bucket) even though this one succeeded.
    Done {
        /// The result.
        value: T,
        /// A pause to respect before the next request to this destination.
        slow_down: Option<Duration>,
    },
    /// A transient failure: try again, not before `after` if the server said so.
    Retry {
        /// The server's wait, if it gave one.
        after: Option<Duration>,
        /// What went wrong (no secrets).
        error: String,
    },
    /// A permanent failure.
    Fail(String),
}

/// A delivery that failed for good. The message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct DeliveryError {
    /// What went wrong, after how many attempts.
    pub message: String,
}

impl DeliveryError {
    /// A delivery error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// The deliver stage shared by every channel: transport, retry policy, gates and stats.
pub struct Deliverer {
    transport: Arc<dyn Transport>,
    policy: RetryPolicy,
    gates: Gates,
    jitter: Mutex<Jitter>,
    stats: NotifyStats,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A deliverer over `transport`.
    pub fn new(transport: Arc<dyn Transport>, policy: RetryPolicy, stats: NotifyStats) -> Self {
        Self {
            transport,
            policy,
            gates: Gates::default(),
            jitter: Mutex::new(Jitter::default()),
            stats,
        }
    }

    /// Uses `gates` (a previous deliverer's) instead of fresh ones.
    pub(crate) fn with_gates(mut self, gates: Gates) -> Self {
        self.gates = gates;
        self
    }

    /// The statistics this deliverer writes.
    pub fn stats(&self) -> &NotifyStats {
        &self.stats
    }

    fn gate(&self, key: &str) -> GateRef {
        let mut gates = self
            .gates
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gates
            .entry(key.to_owned())
            .or_insert_with(|| {
                let now = Instant::now();
                Arc::new(tokio::sync::Mutex::new(Gate {
                    next_free: now,
                    not_before: now,
                }))
            })
            .clone()
    }

    fn jitter(&self) -> f64 {
        self.jitter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .unit()
    }

    /// Runs `op` through `gate`, retrying transient failures; counts attempts for `target`.
    /// Use it for non-HTTP channels (email); HTTP channels use [`send`](Self::send).
    ///
    /// # Errors
    ///
    /// [`DeliveryError`] when `op` fails for good or the retries are used up.
    pub async fn run<T, F, Fut>(
        &self,
        target: &str,
        gate: &GateSpec,
        mut op: F,
    ) -> Result<T, DeliveryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let dest = self.gate(&gate.key);
        let shared = gate.shared.as_ref().map(|(k, d)| (self.gate(k), *d));
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            // Held for the whole attempt: one request at a time per destination, and nothing
            // passes while a not-before instant is in the future.
            let mut g = dest.lock().await;
            tokio::time::sleep_until(g.next_free.max(g.not_before)).await;
            if let Some((shared, interval)) = &shared {
                let mut s = shared.lock().await;
                tokio::time::sleep_until(s.next_free.max(s.not_before)).await;
                s.next_free = Instant::now() + *interval;
            }
            let started = Instant::now();
            let outcome = op().await;
            let now = Instant::now();
            g.next_free = started + gate.min_interval;
            self.stats.target(target, |s| {
                s.attempts += 1;
                s.last_latency = Some(now - started);
            });
            let (after, error) = match outcome {
                Attempt::Done { value, slow_down } => {
                    if let Some(wait) = slow_down {
                        g.not_before = g.not_before.max(later(now, wait));
                        self.stats.target(target, |s| s.rate_limited += 1);
                        tracing::debug!(
                            target_channel = target,
                            ?wait,
                            "destination asked to slow down"
                        );
                    }
                    return Ok(value);
                }
                Attempt::Fail(error) => {
                    self.stats
                        .target(target, |s| s.last_error = Some(error.clone()));
                    return Err(DeliveryError::new(format!(
                        "{error} (attempt {attempt}, not retried)"
                    )));
                }
                Attempt::Retry { after, error } => (after, error),
            };
            if let Some(wait) = after {
                // Honoured in full by every later request to this destination, whatever the cap,
                // and by the shared gate too: Telegram's flood control and Discord's global
                // limit hold the whole bot, so no other chat may go first.
                g.not_before = g.not_before.max(later(now, wait));
                if let Some((shared, _)) = &shared {
                    let mut s = shared.lock().await;
                    s.not_before = s.not_before.max(later(now, wait));
                }
                self.stats.target(target, |s| s.rate_limited += 1);
            }
            drop(g);
            self.stats
                .target(target, |s| s.last_error = Some(error.clone()));
            let cap = Duration::from_millis(self.policy.max_retry_after_ms);
            if after.is_some_and(|a| a > cap) {
                return Err(DeliveryError::new(format!(
                    "{error}; the server asked to wait longer than max_retry_after_ms ({} ms), giving up after attempt {attempt}",
                    self.policy.max_retry_after_ms
                )));
            }
            if !self.policy.allows_another(attempt) {
                return Err(DeliveryError::new(format!(
                    "{error} (gave up after {attempt} attempts)"
                )));
            }
            // A wait of zero (`Retry-After: 0`, a date already past) says nothing about how
            // long to wait: the backoff applies, or every attempt left would go out at once.
            if after.is_none_or(|a| a.is_zero()) {
                let delay = self.policy.backoff(attempt - 1, self.jitter());
                tracing::warn!(target_channel = target, attempt, ?delay, %error, "delivery failed; retrying");
                tokio::time::sleep(delay).await;
            } else {
                tracing::warn!(target_channel = target, attempt, ?after, %error, "rate limited; retrying when the destination allows");
            }
        }
    }

    /// Sends `request` through `gate` with retries. `check` looks at a 2xx response and may
    /// still call it a failure ([`Refusal`]: Slack's `{"ok": false}`, a Teams webhook's
    /// "delivery failed" in a 200), retried or not; its message must hold no secret.
    ///
    /// # Errors
    ///
    /// [`DeliveryError`] when the request fails for good; the message is scrubbed of the
    /// request's URL and header values.
    pub async fn send(
        &self,
        target: &str,
        gate: &GateSpec,
        request: HttpRequest,
        check: impl Fn(&HttpResponse) -> Result<(), Refusal>,
    ) -> Result<HttpResponse, DeliveryError> {
        let scrub = |msg: String| scrub(msg, &request);
        let result = self
            .run(target, gate, || {
                let req = request.clone();
                let check = &check;
                async move {
                    let label = req.label.clone();
                    match self.transport.send(req).await {
                        Err(e) if e.retryable => Attempt::Retry {
                            after: None,
                            error: scrub(format!("{label}: {}", e.message)),
                        },
                        Err(e) => Attempt::Fail(scrub(format!("{label}: {}", e.message))),
                        Ok(resp) => {
                            self.stats
                                .target(target, |s| s.last_status = Some(resp.status));
                            classify(&label, resp, check, &scrub)
                        }
                    }
                }
            })
            .await;
        if result.is_ok() {
            tracing::debug!(target_channel = target, label = %request.label, "request delivered");
        }
        result
    }
}

/// Why a channel's check refused a 2xx answer: the message (no secret in it), and whether
/// the request is worth another try (the service says it was throttled) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was wrong with the answer.
    pub message: String,
    /// Whether to try again (within the retry policy).
    pub retry: bool,
}

impl Refusal {
    /// A refusal worth another try.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }
}

/// A refusal for good.
impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self {
            message,
            retry: false,
        }
    }
}

fn classify(
    label: &str,
    resp: HttpResponse,
    check: &impl Fn(&HttpResponse) -> Result<(), Refusal>,
    scrub: &impl Fn(String) -> String,
) -> Attempt<HttpResponse> {
    let status = resp.status;
    if (200..300).contains(&status) {
        let slow_down = discord_bucket_wait(
            resp.header("x-ratelimit-remaining"),
            resp.header("x-ratelimit-reset-after"),
        );
        return match check(&resp) {
            Ok(()) => Attempt::Done {
                value: resp,
                slow_down,
            },
            Err(r) if r.retry => Attempt::Retry {
                after: None,
                error: scrub(format!("{label}: {}", r.message)),
            },
            Err(r) => Attempt::Fail(scrub(format!("{label}: {}", r.message))),
        };
    }
    let error = scrub(format!(
        "{label}: HTTP {status}: {}",
        short(&resp.body, 200)
    ));
    if !is_retryable_status(status) {
        return Attempt::Fail(error);
    }
    let after = resp
        .header("retry-after")
        .and_then(|v| parse_retry_after_at(v, SystemTime::now()))
        .or_else(|| retry_after_from_json(&resp.json()))
        .or_else(|| {
            (status == 429)
                .then(|| discord_bucket_wait(Some("0"), resp.header("x-ratelimit-reset-after")))
                .flatten()
        });
    Attempt::Retry { after, error }
}

/// Replaces in `msg` the request's URL, the path segments and query values of 9 or more
/// characters that could be tokens (webhook tokens, Telegram's `bot<token>`), and the header
/// values, with `***`. Segments that are part of the request's label (`sendMessage`) stay.
fn scrub(mut msg: String, request: &HttpRequest) -> String {
    let url = request.url.expose();
    let mut secrets: Vec<String> = vec![url.to_owned()];
    for (_, v) in &request.headers {
        let v = v.expose();
        secrets.push(v.to_owned());
        // The credential without its scheme (`Bearer xoxb-…` → `xoxb-…`): servers echo it.
        if let Some((_, credential)) = v.split_once(' ') {
            secrets.push(credential.trim().to_owned());
        }
    }
    if let Ok(parsed) = reqwest::Url::parse(url) {
        if let Some(segments) = parsed.path_segments() {
            secrets.extend(segments.map(str::to_owned));
        }
        secrets.extend(parsed.query_pairs().map(|(_, v)| v.into_owned()));
    }
    // Longest first, so a token is replaced whole before any part of it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets {
        if s.len() > 8 && !request.label.contains(&s) && msg.contains(&s) {
            msg = msg.replace(&s, "***");
        }
    }
    msg
}

/// At most `max` characters of `s`, "…" appended when cut.
pub(crate) fn short(s: &str, max: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_a_bare_token_the_server_echoes() {
        let req = HttpRequest::post_json(
            "slack chat.postMessage",
            dtf_plugin_core::Secret::new("https://slack.example/api/chat.postMessage"),
            serde_json::json!({}),
        )
        .header(
            "authorization",
            dtf_plugin_core::Secret::new("Bearer xoxb-canary-123456789"),
        );
        let msg = scrub("401: invalid token xoxb-canary-123456789".to_owned(), &req);
        assert_eq!(msg, "401: invalid token ***");
    }

    #[test]
    fn a_wild_retry_after_is_capped_not_overflowed() {
        let now = Instant::now();
        assert_eq!(later(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(
            later(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
    }

    #[test]
    fn scrub_removes_url_tokens_and_header_values() {
        let req = HttpRequest::post_json(
            "telegram sendMessage",
            dtf_plugin_core::Secret::new("https://h.example/bot123456:SECRETTOKEN/sendMessage"),
            serde_json::Value::Null,
        )
        .header(
            "authorization",
            dtf_plugin_core::Secret::new("Bearer abcdef"),
        );
        let msg = scrub(
            "failed https://h.example/bot123456:SECRETTOKEN/sendMessage and bot123456:SECRETTOKEN, Bearer abcdef".to_owned(),
            &req,
        );
        assert!(
            !msg.contains("SECRETTOKEN") && !msg.contains("abcdef"),
            "{msg}"
        );
        let kept = scrub(
            "telegram sendMessage: HTTP 400: chat not found".to_owned(),
            &req,
        );
        assert_eq!(kept, "telegram sendMessage: HTTP 400: chat not found");
    }

    #[test]
    fn classifies_statuses_and_reads_every_kind_of_wait() {
        let check = |_: &HttpResponse| Ok(());
        let id = |s: String| s;
        let r = HttpResponse::new(429, vec![("Retry-After".into(), "3".into())], "");
        assert!(
            matches!(classify("l", r, &check, &id), Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(3))
        );
        let r = HttpResponse::new(
            429,
            vec![],
            r#"{"ok":false,"error_code":429,"parameters":{"retry_after":7}}"#,
        );
        assert!(
            matches!(classify("l", r, &check, &id), Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(7))
        );
        let r = HttpResponse::new(503, vec![], "");
        assert!(matches!(
            classify("l", r, &check, &id),
            Attempt::Retry { after: None, .. }
        ));
        let r = HttpResponse::new(400, vec![], "bad");
        assert!(
            matches!(classify("l", r, &check, &id), Attempt::Fail(m) if m.contains("HTTP 400"))
        );
        let r = HttpResponse::new(
            200,
            vec![
                ("X-RateLimit-Remaining".into(), "0".into()),
                ("X-RateLimit-Reset-After".into(), "1.5".into()),
            ],
            "",
        );
        assert!(
            matches!(classify("l", r, &check, &id), Attempt::Done { slow_down: Some(d), .. } if d == Duration::from_millis(1500))
        );
        let failing = |_: &HttpResponse| Err("ok=false: channel_not_found".to_owned().into());
        let r = HttpResponse::new(200, vec![], "");
        assert!(matches!(classify("l", r, &failing, &id), Attempt::Fail(_)));
        let throttled = |_: &HttpResponse| Err(Refusal::retry("throttled"));
        let r = HttpResponse::new(200, vec![], "");
        assert!(matches!(
            classify("l", r, &throttled, &id),
            Attempt::Retry { after: None, .. }
        ));
    }
}
