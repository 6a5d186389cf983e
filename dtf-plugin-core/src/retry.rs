//! The retry rules for outgoing HTTP calls, in one place so every client (the CI API
//! reporters of `dtf-plugins-ci`, the notifiers of `dtf-plugins-notify`, the task reporter's
//! external endpoint) retries the same way.
//!
//! - **What is retried:** connection errors, timeouts, and the statuses
//!   [`is_retryable_status`] names (408, 429 and every 5xx). Other 4xx are the caller's
//!   mistake (bad token, unknown repository) and are never retried.
//! - **How long to wait:** the server's `Retry-After` in seconds when it sends one (capped at
//!   [`RetryPolicy::max_retry_after_ms`]), otherwise exponential backoff with equal jitter:
//!   half of `initial * 2^retry` (capped at [`RetryPolicy::max_backoff_ms`]) plus a random
//!   part of the other half, so clients that failed together do not retry together.
//! - **How often:** at most [`RetryPolicy::max_attempts`] attempts in all.
//!
//! Everything here is pure; the caller sleeps.

use std::time::Duration;

use crate::supervision::Backoff;

use serde::{Deserialize, Serialize};

/// How many times to try a request and how long to wait in between.
///
/// ```
/// use std::time::Duration;
/// use dtf_plugin_core::retry::RetryPolicy;
/// let policy = RetryPolicy::default();
/// // Without jitter: 500 ms, 1 s, 2 s, … capped at 8 s.
/// assert_eq!(policy.backoff(0, 1.0), Duration::from_millis(500));
/// assert_eq!(policy.backoff(1, 1.0), Duration::from_secs(1));
/// assert_eq!(policy.backoff(10, 1.0), Duration::from_secs(8));
/// // The server's Retry-After wins over the backoff.
/// assert_eq!(policy.delay(0, Some(Duration::from_secs(3)), 0.5), Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 4; `1` disables retries.
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds. Default 500.
    pub initial_backoff_ms: u64,
    /// Longest backoff, in milliseconds. Default 8000.
    pub max_backoff_ms: u64,
    /// Longest `Retry-After` honoured, in milliseconds; a longer one is cut to this. Default
    /// 30000.
    pub max_retry_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 8_000,
            max_retry_after_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_attempts` attempts and the default waits.
    pub fn with_attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            ..Self::default()
        }
    }

    /// Sets the backoff range (initial and longest), in milliseconds.
    pub fn backoff_ms(mut self, initial: u64, max: u64) -> Self {
        self.initial_backoff_ms = initial;
        self.max_backoff_ms = max;
        self
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The backoff before retry number `retry` (0-based), with `jitter` in `[0, 1]`: half the
    /// exponential delay plus `jitter` times the other half.
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        // The core's restart backoff computes the same curve; its jitter counts down from the
        // full delay, ours up from half of it.
        Backoff {
            initial: Duration::from_millis(self.initial_backoff_ms),
            max: Duration::from_millis(self.max_backoff_ms),
            factor: 2.0,
            jitter: 0.5,
        }
        .delay(retry, 1.0 - jitter.clamp(0.0, 1.0))
    }

    /// The wait before retry number `retry`: the server's `Retry-After` (capped) if it sent
    /// one, else [`backoff`](Self::backoff). A `Retry-After` of zero (or a date already
    /// past) says nothing about how long to wait: the backoff applies, or every retry would
    /// go out at once.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        match retry_after.filter(|d| !d.is_zero()) {
            Some(d) => d.min(Duration::from_millis(self.max_retry_after_ms)),
            None => self.backoff(retry, jitter),
        }
    }
}

/// Whether an HTTP status is worth retrying: 408, 429 and 5xx.
pub fn is_retryable_status(status: u16) -> bool {
    status == 408 || status == 429 || (500..600).contains(&status)
}

/// Parses a `Retry-After` value given in seconds (`"120"`). The HTTP-date form is not
/// supported and gives `None` (the backoff applies then).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Parses a `Retry-After` value in either form RFC 9110 allows: delay seconds (`"120"`) or an
/// HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`, the IMF-fixdate form), relative to `now`. A
/// date in the past gives zero; anything else unparsable gives `None`.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use dtf_plugin_core::retry::parse_retry_after_at;
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_475); // 07:27:55 GMT
/// assert_eq!(parse_retry_after_at("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(5)));
/// assert_eq!(parse_retry_after_at("3", now), Some(Duration::from_secs(3)));
/// ```
pub fn parse_retry_after_at(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    if let Some(d) = parse_retry_after(value) {
        return Some(d);
    }
    let at = parse_http_date(value.trim())?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only HTTP-date form senders
/// may generate.
fn parse_http_date(s: &str) -> Option<std::time::SystemTime> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    // A four-digit year, as the format says: a larger one (from the network) would overflow
    // the arithmetic below and `SystemTime`.
    if !(1..=31).contains(&day) || !(1970..=9999).contains(&year) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970 on.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let secs = days * 86_400 + h * 3600 + m * 60 + sec;
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// The wait a JSON error body asks for: Discord's top-level `retry_after` (seconds, may be
/// fractional) or Telegram's `parameters.retry_after` (whole seconds). `None` when neither is
/// there or the value is negative or not a number.
///
/// ```
/// use std::time::Duration;
/// use dtf_plugin_core::retry::retry_after_from_json;
/// let discord = serde_json::json!({ "message": "You are being rate limited.", "retry_after": 1.5, "global": false });
/// assert_eq!(retry_after_from_json(&discord), Some(Duration::from_millis(1500)));
/// let telegram = serde_json::json!({ "ok": false, "error_code": 429, "parameters": { "retry_after": 3 } });
/// assert_eq!(retry_after_from_json(&telegram), Some(Duration::from_secs(3)));
/// ```
pub fn retry_after_from_json(body: &serde_json::Value) -> Option<Duration> {
    let v = body
        .get("retry_after")
        .or_else(|| body.get("parameters").and_then(|p| p.get("retry_after")))?;
    let secs = v.as_f64()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Discord's bucket headers: when `X-RateLimit-Remaining` is `0`, the wait until the bucket
/// resets, from `X-RateLimit-Reset-After` (seconds, fractional). `None` while requests remain
/// or when a header is missing or malformed.
///
/// ```
/// use std::time::Duration;
/// use dtf_plugin_core::retry::discord_bucket_wait;
/// assert_eq!(discord_bucket_wait(Some("0"), Some("2.250")), Some(Duration::from_millis(2250)));
/// assert_eq!(discord_bucket_wait(Some("4"), Some("2.250")), None);
/// ```
pub fn discord_bucket_wait(remaining: Option<&str>, reset_after: Option<&str>) -> Option<Duration> {
    if remaining?.trim() != "0" {
        return None;
    }
    let secs: f64 = reset_after?.trim().parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// The random source for jitter: the core's, so restarts and retries share one generator type.
pub use crate::supervision::Jitter;

/// What happened to the calls of one target, the same for every HTTP client: a notify
/// channel (`slack`, `telegram/-100123`) or a CI API target (`github.check-run`). One type
/// for both, so tools read them alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TargetStats {
    /// Calls that succeeded (after any retries).
    pub ok: u64,
    /// Calls that failed for good.
    pub failed: u64,
    /// Requests sent, retries included.
    pub attempts: u64,
    /// Responses that asked us to slow down (429, or a drained Discord bucket).
    pub rate_limited: u64,
    /// The HTTP status of the last response.
    pub last_status: Option<u16>,
    /// How long the last request took.
    pub last_latency: Option<Duration>,
    /// The last error, without secrets.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_only_transient_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 201, 301, 400, 401, 403, 404, 409, 422] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0, 0.0), Duration::from_millis(250));
        assert_eq!(p.backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(8));
        let mut j = Jitter::seeded(7);
        for retry in 0..6 {
            let d = p.backoff(retry, j.unit());
            let full = p.backoff(retry, 1.0);
            assert!(d >= full / 2 && d <= full, "{d:?} vs {full:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        assert_eq!(parse_retry_after(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(1)), 0.9),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(30)
        );
        // `Retry-After: 0` is no wait at all: the backoff applies (found by a review: every
        // attempt left went out at once).
        assert_eq!(p.delay(2, Some(Duration::ZERO), 1.0), p.backoff(2, 1.0));
        assert!(p.backoff(2, 1.0) > Duration::ZERO);
        assert!(p.allows_another(3) && !p.allows_another(4));
    }

    #[test]
    fn http_dates_and_service_specific_waits_are_parsed() {
        use std::time::UNIX_EPOCH;
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after_at("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after_at("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after_at("Tue, 29 Feb 2000 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(951_782_400))
        );
        for bad in [
            "soon",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "-1",
            // Years a server (or anyone in the middle) may send that overflowed the date
            // arithmetic or `SystemTime`, a panic in the notifier's task (found by a review).
            "Mon, 01 Jan 400000000000 00:00:00 GMT",
            "Mon, 01 Jan 18446744073709551615 00:00:00 GMT",
            "Fri, 31 Dec 10000 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after_at(bad, now), None, "{bad}");
        }
        let j = serde_json::json!({ "retry_after": -1 });
        assert_eq!(retry_after_from_json(&j), None);
        assert_eq!(
            retry_after_from_json(&serde_json::json!({ "ok": true })),
            None
        );
        assert_eq!(discord_bucket_wait(None, Some("1")), None);
        assert_eq!(discord_bucket_wait(Some("0"), Some("x")), None);
    }

    #[test]
    fn jitter_stays_in_the_unit_interval() {
        let mut j = Jitter::seeded(42);
        for _ in 0..10_000 {
            let u = j.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
