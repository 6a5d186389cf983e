//! The HTTP core shared by every service client: one `reqwest` client, the retry rules of
//! [`crate::retry`], and per-target statistics ([`ApiStats`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::CiError;
use crate::retry::{Jitter, RetryPolicy, is_retryable_status, parse_retry_after};
use dtf_plugin_core::Secret;

/// What happened to the calls of one target (e.g. `github.check-run`): the type the notify
/// channels use too, from [`dtf_plugin_core::retry`].
pub use dtf_plugin_core::retry::TargetStats;

/// Per-target statistics of the API calls, shared between the reporter and whoever holds a
/// clone (cloning shares, it does not copy).
#[derive(Debug, Clone, Default)]
pub struct ApiStats(Arc<Mutex<BTreeMap<String, TargetStats>>>);

impl ApiStats {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, TargetStats>> {
        // A panic while holding the lock leaves plain counters behind; they stay usable.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The statistics of `target`, if it was called.
    pub fn get(&self, target: &str) -> Option<TargetStats> {
        self.lock().get(target).cloned()
    }

    /// Every target's statistics.
    pub fn snapshot(&self) -> BTreeMap<String, TargetStats> {
        self.lock().clone()
    }

    /// Calls that failed for good, over all targets.
    pub fn failed(&self) -> u64 {
        self.lock().values().map(|s| s.failed).sum()
    }

    fn update(&self, target: &str, f: impl FnOnce(&mut TargetStats)) {
        f(self.lock().entry(target.to_owned()).or_default());
    }
}

/// How a service authenticates.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// `Authorization: Basic base64(user:password)`.
    Basic { user: String, password: Secret },
    /// A header of its own carrying the token (GitLab's `PRIVATE-TOKEN`).
    Header(&'static str, Secret),
}

/// A request body.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    None,
    Json(serde_json::Value),
    Form(Vec<(&'static str, String)>),
}

/// One logical call: target name (for stats and logs), method, URL and body.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) target: &'static str,
    pub(crate) method: Method,
    pub(crate) url: String,
    pub(crate) body: Body,
    /// Whether a transient failure is retried (per the policy).
    pub(crate) retry: bool,
    /// Whether a redirect answers the call as done (see [`Call::done_by_redirect`]).
    pub(crate) redirect_is_done: bool,
}

impl Call {
    pub(crate) fn new(target: &'static str, method: Method, url: String, body: Body) -> Self {
        Self {
            target,
            method,
            url,
            body,
            retry: true,
            redirect_is_done: false,
        }
    }

    /// A form post that the service answers with a redirect when it is done (Jenkins'
    /// `submitDescription` redirects to the build's page). The redirect is not followed (no
    /// redirect is), but for this call it means success rather than failure.
    pub(crate) fn done_by_redirect(mut self) -> Self {
        self.redirect_is_done = true;
        self
    }

    /// Tried once: a live progress update, which the next one supersedes. Retrying it (up to
    /// minutes behind a rate limit) would hold back the final report behind it.
    pub(crate) fn once(mut self) -> Self {
        self.retry = false;
        self
    }
}

/// The client, the retry policy and the stats.
#[derive(Debug)]
pub(crate) struct HttpCore {
    client: reqwest::Client,
    policy: RetryPolicy,
    stats: ApiStats,
    jitter: Jitter,
    /// Whether the last call that failed gave up on a failure that may pass later (a 5xx, a
    /// rate limit, a connection error, after its retries), rather than one that will not (a
    /// 4xx, a request that cannot be built).
    transient: bool,
    /// What each service (the part of a call's target before the dot) last said of its
    /// primary rate limit (`X-RateLimit-Remaining`, `X-RateLimit-Reset`), from any answer.
    budgets: BTreeMap<&'static str, RateBudget>,
}

/// Calls left in a service's rate-limit window, and when the window resets.
#[derive(Debug, Clone, Copy)]
struct RateBudget {
    remaining: u64,
    /// Seconds since the epoch (`X-RateLimit-Reset`); `None` when not given.
    reset: Option<u64>,
}

impl HttpCore {
    pub(crate) fn new(
        timeout: Duration,
        policy: RetryPolicy,
        stats: ApiStats,
    ) -> Result<Self, CiError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("dtf-plugins-ci/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            // Redirects are not followed: reqwest would send the webhook URL (path and query,
            // where the token is) to the new host as `Referer`, secret headers with it, and
            // turn a POST into a GET whose 200 would count as delivered. A 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CiError::Api {
                target: "client".to_owned(),
                message: format!("build the HTTP client: {e}"),
            })?;
        Ok(Self {
            client,
            policy,
            stats,
            jitter: Jitter::default(),
            transient: false,
            budgets: BTreeMap::new(),
        })
    }

    /// The calls left in `service`'s rate-limit window when it said that fewer than `reserve`
    /// are, and when its window resets, which has not come yet (by this machine's clock);
    /// `None` otherwise. Live updates stop then, so that the final report still has calls to
    /// make.
    pub(crate) fn rate_low(&self, service: &str, reserve: u64) -> Option<u64> {
        let budget = self.budgets.get(service)?;
        // Without a reset time there is no telling when the window ends, and paused updates
        // make no call that would say: no pause rather than one for the rest of the run.
        let at = budget.reset?;
        let reset_passed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .is_ok_and(|now| now.as_secs() >= at);
        (budget.remaining < reserve && !reset_passed).then_some(budget.remaining)
    }

    /// Whether the last failed call failed on something that may pass later (see
    /// [`HttpCore::send`]): worth trying again at the next update, unlike a 403 or 404.
    pub(crate) fn last_failure_was_transient(&self) -> bool {
        self.transient
    }

    /// The numeric `id` of an answer that must carry one (a created test run or check run),
    /// or `None`. A call that failed is already counted; an answer that succeeded but has no
    /// `id` this client understands (missing, not a number) is counted as a failure of
    /// `target` (moved from `ok` to `failed`) and logged, never silently skipped.
    pub(crate) fn answer_id(
        &self,
        target: &'static str,
        answer: Result<serde_json::Value, CiError>,
    ) -> Option<u64> {
        let value = answer.ok()?;
        let id = value.get("id");
        let parsed = id.and_then(|id| match id {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        });
        if parsed.is_none() {
            // Name the shape, never the values: an answer may echo what we sent.
            let found = match id {
                None => "no `id`".to_owned(),
                Some(v) => format!("an `id` that is not a whole number ({})", json_type(v)),
            };
            let message = format!("unusable answer: {found}; later calls that need it are skipped");
            tracing::warn!(target_name = target, error = %message, "API answer not understood; the run goes on");
            self.stats.update(target, |s| {
                s.ok = s.ok.saturating_sub(1);
                s.failed += 1;
                s.last_error = Some(message);
            });
        }
        parsed
    }

    /// Sends `call` with `auth` and `headers`, retrying transient failures, and returns the
    /// JSON response (`null` when the body is empty or not JSON). The outcome is counted in
    /// the stats and a failure is logged.
    pub(crate) async fn send(
        &mut self,
        call: Call,
        auth: &Auth,
        headers: &HeaderMap,
    ) -> Result<serde_json::Value, CiError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let result = self.request(&call, auth, headers).send().await;
            let latency = started.elapsed();
            self.stats.update(call.target, |s| {
                s.attempts += 1;
                s.last_latency = Some(latency);
            });
            let (retry_after, message) = match result {
                Ok(resp) => {
                    let status = resp.status();
                    let limited = rate_limited_403(&resp);
                    if let Some(budget) = rate_budget(&resp) {
                        let service = call.target.split('.').next().unwrap_or(call.target);
                        self.budgets.insert(service, budget);
                    }
                    self.stats.update(call.target, |s| {
                        s.last_status = Some(status.as_u16());
                        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || limited.is_some() {
                            s.rate_limited += 1;
                        }
                    });
                    if status.is_success() || (call.redirect_is_done && status.is_redirection()) {
                        let text = resp.text().await.unwrap_or_default();
                        self.stats.update(call.target, |s| s.ok += 1);
                        tracing::debug!(target_api = call.target, %status, ?latency, "API call done");
                        return Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null));
                    }
                    let (retry_after, message) = failed_answer(resp).await;
                    // GitHub's secondary limits may come as a bare 403 whose message says so.
                    let secondary = status == reqwest::StatusCode::FORBIDDEN
                        && limited.is_none()
                        && message
                            .to_ascii_lowercase()
                            .contains("secondary rate limit");
                    if secondary {
                        self.stats.update(call.target, |s| s.rate_limited += 1);
                    }
                    if !is_retryable_status(status.as_u16()) && limited.is_none() && !secondary {
                        self.transient = false;
                        return Err(self.fail(&call, message));
                    }
                    let wait = retry_after.or(limited.flatten());
                    let cap = Duration::from_millis(self.policy.max_retry_after_ms);
                    if wait.is_some_and(|w| w > cap) {
                        // A primary rate limit an hour from its reset: a retry within the cap
                        // would only spend the attempts (and the final report's time).
                        self.transient = true;
                        let message = format!(
                            "{message}; the server asked to wait longer than \
                             retry.max_retry_after_ms ({} ms), not retried",
                            self.policy.max_retry_after_ms
                        );
                        return Err(self.fail(&call, message));
                    }
                    (wait, message)
                }
                Err(e) => {
                    // Connection failures and timeouts are transient; a request that could
                    // not even be built (bad URL) is not. reqwest's message names the URL,
                    // which may carry credentials: not kept.
                    let builder = e.is_builder();
                    let message = e.without_url().to_string();
                    if builder {
                        self.transient = false;
                        return Err(self.fail(&call, message));
                    }
                    (None, message)
                }
            };
            if !call.retry || !self.policy.allows_another(attempt) {
                self.transient = true;
                return Err(self.fail(&call, message));
            }
            let delay = self
                .policy
                .delay(attempt - 1, retry_after, self.jitter.unit());
            tracing::warn!(
                target_api = call.target,
                attempt,
                ?delay,
                error = %message,
                "API call failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    fn request(&self, call: &Call, auth: &Auth, headers: &HeaderMap) -> reqwest::RequestBuilder {
        let mut req = self
            .client
            .request(call.method.clone(), &call.url)
            .headers(headers.clone());
        req = match auth {
            Auth::Bearer(t) => req.bearer_auth(t.expose()),
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::Header(name, t) => match HeaderValue::from_str(t.expose()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    req.header(HeaderName::from_static(name), v)
                }
                Err(_) => req,
            },
        };
        match &call.body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Form(fields) => req.form(fields),
        }
    }

    fn fail(&self, call: &Call, message: String) -> CiError {
        tracing::error!(
            target_api = call.target,
            method = %call.method,
            url = %loggable(&call.url),
            error = %message,
            "API call failed; the run goes on"
        );
        self.stats.update(call.target, |s| {
            s.failed += 1;
            s.last_error = Some(message.clone());
        });
        CiError::Api {
            target: call.target.to_owned(),
            message,
        }
    }
}

/// A header map from static pairs.
/// `url` for a log: without user information and query, which may hold credentials (a base URL
/// with `user:token@`, a `?private_token=`).
fn loggable(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<an invalid URL>".to_owned(),
    }
}

pub(crate) fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
        .collect()
}

/// What a failed answer says: its `Retry-After` wait, if any, and `HTTP <status>: <start of
/// the body>` for the error.
/// GitHub answers its rate limits with 403 as well as 429: a secondary limit with a
/// `Retry-After`, the primary one with `X-RateLimit-Remaining: 0` (and the reset time, in
/// seconds since the epoch, in `X-RateLimit-Reset`). Such a 403 is worth another try, unlike
/// one for missing permissions: `Some` with the wait the headers give (if any) when `resp` is
/// one. Before, the final verdict of a big run that hit the limit was dropped, and the check
/// run stayed "in progress".
fn rate_limited_403(resp: &reqwest::Response) -> Option<Option<Duration>> {
    if resp.status() != reqwest::StatusCode::FORBIDDEN {
        return None;
    }
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after");
    let exhausted = header("x-ratelimit-remaining").map(str::trim) == Some("0");
    if retry_after.is_none() && !exhausted {
        return None;
    }
    if let Some(wait) = retry_after.and_then(parse_retry_after) {
        return Some(Some(wait));
    }
    let reset = header("x-ratelimit-reset")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .and_then(|at| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?;
            Some(Duration::from_secs(at.saturating_sub(now.as_secs())))
        });
    Some(reset)
}

/// The rate-limit window an answer describes, when it says how many calls are left.
fn rate_budget(resp: &reqwest::Response) -> Option<RateBudget> {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(RateBudget {
        remaining: header("x-ratelimit-remaining")?,
        reset: header("x-ratelimit-reset"),
    })
}

pub(crate) async fn failed_answer(resp: reqwest::Response) -> (Option<Duration>, String) {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    if status.is_redirection() {
        // Where it points is not repeated: it may carry the request's credentials.
        let message = format!(
            "HTTP {status}: the API answered with a redirect, which is not followed (it would \
             take the token to another address): configure the address it finally serves from"
        );
        return (None, message);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = format!("HTTP {status}: {}", crate::markdown::short(&text, 200));
    (retry_after, message)
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
