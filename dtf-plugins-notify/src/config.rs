//! The typed configuration of the notify plugin and its validation.
//!
//! Everything is checked when the plugin starts ([`NotifyConfig::validate`]), so a malformed
//! URL, an unknown channel type, an empty recipient list or a bad interval is an error naming
//! the key at start-up, never at the first send.

use std::time::Duration;

use dtf_plugin_core::Secret;
use dtf_plugin_core::retry::RetryPolicy;
use serde::{Deserialize, Deserializer};

use crate::channels::Channel;
use crate::error::NotifyError;
use crate::group::{GroupBy, GroupSettings};

/// The notify plugin's configuration.
///
/// ```
/// use dtf_plugins_notify::NotifyConfig;
/// let cfg: NotifyConfig = serde_json::from_value(serde_json::json!({
///     "channels": [
///         { "type": "webhook", "url": "https://hooks.example.com/dtf" },
///         { "type": "slack", "name": "ops", "webhook_url": { "env": "DTF_DOC_SLACK_URL" } }
///     ],
///     "group": { "group_wait_ms": 5000 }
/// })).unwrap();
/// assert_eq!(cfg.channels.len(), 2);
/// // The Slack URL is read from the environment at validation; it is not set here.
/// let err = cfg.validate().unwrap_err().to_string();
/// assert!(err.contains("channels[1].webhook_url") && err.contains("DTF_DOC_SLACK_URL"), "{err}");
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct NotifyConfig {
    /// Where messages go. Default: none (the plugin then only counts events).
    pub channels: Vec<ChannelConfig>,
    /// The group stage.
    pub group: GroupConfig,
    /// The throttle stage.
    pub throttle: ThrottleConfig,
    /// The deliver stage.
    pub delivery: DeliveryConfig,
}

/// The group stage: Alertmanager's `group_wait` / `group_interval`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GroupConfig {
    /// How long the first event of a new group waits for others. Default 10 000 ms; 0 sends
    /// at once.
    pub group_wait_ms: u64,
    /// Least time between two messages of one group. Default 60 000 ms; must be > 0.
    pub group_interval_ms: u64,
    /// What besides the event kind makes a group: any of `error`, `worker`, `task`,
    /// `subject`. Default `["error", "worker", "subject"]`.
    pub by: Vec<GroupBy>,
    /// Events listed per message; the rest are counted ("… and 7 more"). Default 5, 1–50.
    pub max_items: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            group_wait_ms: 10_000,
            group_interval_ms: 60_000,
            by: vec![GroupBy::Error, GroupBy::Worker, GroupBy::Subject],
            max_items: 5,
        }
    }
}

/// The throttle stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ThrottleConfig {
    /// At most one message per group key per this interval, per channel; later messages are
    /// deferred (their events still counted), never dropped. Default 0 (off: the group
    /// interval already spaces messages).
    pub interval_ms: u64,
}

/// The deliver stage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DeliveryConfig {
    /// Retries (attempts, backoff, longest `Retry-After` honoured). Default: 4 attempts,
    /// 500 ms doubling to 8 s, `Retry-After` up to 30 s.
    pub retry: RetryPolicy,
    /// Timeout of one HTTP request. Default 10 000 ms.
    pub timeout_ms: u64,
    /// How long shutdown waits for pending messages before reporting them undelivered.
    /// Default 15 000 ms.
    pub shutdown_timeout_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            timeout_ms: 10_000,
            shutdown_timeout_ms: 15_000,
        }
    }
}

/// A secret in the configuration: the value itself (`"xoxb-…"`) or the environment variable
/// holding it (`{ "env": "SLACK_BOT_TOKEN" }`), read when the plugin starts.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretSource {
    /// The value.
    Value(Secret),
    /// The name of an environment variable.
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("***"),
            Self::Env(var) => write!(f, "env({var})"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Self::Value(Secret::new(s))),
            serde_json::Value::Object(map) if map.len() == 1 => match map.get("env") {
                Some(serde_json::Value::String(var)) if !var.is_empty() => {
                    Ok(Self::Env(var.clone()))
                }
                _ => Err(serde::de::Error::custom(
                    "expected a string or { \"env\": \"VARIABLE\" }",
                )),
            },
            // The value is not echoed: it may be a secret under the wrong shape.
            _ => Err(serde::de::Error::custom(
                "expected a string or { \"env\": \"VARIABLE\" }",
            )),
        }
    }
}

/// A gate key for a destination known only by a secret (a webhook URL, a bot token): a hash,
/// so that two channels posting to one destination share its gate (rate limit and
/// `Retry-After`) while the secret stays out of the key, which appears in logs.
#[cfg_attr(
    not(any(
        feature = "slack",
        feature = "discord",
        feature = "telegram",
        feature = "teams",
        feature = "webhook"
    )),
    expect(dead_code, reason = "only the channels addressed by a secret use it")
)]
pub(crate) fn secret_key(kind: &str, secret: &Secret) -> String {
    format!(
        "{kind}:{:016x}",
        crate::message::fnv1a(secret.expose().as_bytes())
    )
}

impl SecretSource {
    /// An environment-variable source.
    pub fn env(var: impl Into<String>) -> Self {
        Self::Env(var.into())
    }

    /// The secret; `key` names the setting in errors.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Config`] when the variable is unset or the value is empty.
    pub fn resolve(&self, key: &str) -> Result<Secret, NotifyError> {
        let s = match self {
            Self::Value(s) => s.clone(),
            Self::Env(var) => Secret::from_env(var).ok_or_else(|| {
                NotifyError::config(
                    key,
                    format!("environment variable `{var}` is not set (or empty)"),
                )
            })?,
        };
        // A value read from a file or an environment variable often ends in a newline; no
        // token or URL has whitespace at its ends, and one inside would fail every request.
        let trimmed = s.expose().trim();
        if trimmed.is_empty() {
            return Err(NotifyError::config(key, "is empty"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NotifyError::config(
                key,
                "holds control characters (a line break inside the value?)",
            ));
        }
        Ok(if trimmed.len() == s.expose().len() {
            s
        } else {
            Secret::new(trimmed)
        })
    }
}

impl From<Secret> for SecretSource {
    fn from(s: Secret) -> Self {
        Self::Value(s)
    }
}

/// One channel: `type` selects it (`slack`, `discord`, `telegram`, `teams`, `jira`,
/// `webhook`; each needs its cargo feature). Every channel also takes `name` (default: the
/// type; names must be unique) and `filter` ([`crate::filter::FilterConfig`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChannelConfig {
    /// Slack.
    #[cfg(feature = "slack")]
    Slack(crate::channels::slack::SlackConfig),
    /// Discord.
    #[cfg(feature = "discord")]
    Discord(crate::channels::discord::DiscordConfig),
    /// Telegram.
    #[cfg(feature = "telegram")]
    Telegram(crate::channels::telegram::TelegramConfig),
    /// Microsoft Teams.
    #[cfg(feature = "teams")]
    Teams(crate::channels::teams::TeamsConfig),
    /// JIRA.
    #[cfg(feature = "jira")]
    Jira(crate::channels::jira::JiraConfig),
    /// A generic JSON webhook.
    #[cfg(feature = "webhook")]
    Webhook(crate::channels::webhook::WebhookConfig),
    /// Email over SMTP.
    #[cfg(feature = "email")]
    Email(crate::channels::email::EmailChannelConfig),
}

impl ChannelConfig {
    /// Builds the channel(s); `key` is the config path (`channels[0]`).
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        // Adding a channel: one module under `channels/` with a config type implementing
        // `channels::ChannelBuilder`, one variant above, one arm here.
        #[allow(
            unreachable_patterns,
            reason = "no arm when every channel feature is off"
        )]
        match self {
            #[cfg(feature = "slack")]
            Self::Slack(c) => crate::channels::ChannelBuilder::build(c, key),
            #[cfg(feature = "discord")]
            Self::Discord(c) => crate::channels::ChannelBuilder::build(c, key),
            #[cfg(feature = "telegram")]
            Self::Telegram(c) => crate::channels::ChannelBuilder::build(c, key),
            #[cfg(feature = "teams")]
            Self::Teams(c) => crate::channels::ChannelBuilder::build(c, key),
            #[cfg(feature = "jira")]
            Self::Jira(c) => crate::channels::ChannelBuilder::build(c, key),
            #[cfg(feature = "webhook")]
            Self::Webhook(c) => crate::channels::ChannelBuilder::build(c, key),
            #[cfg(feature = "email")]
            Self::Email(c) => crate::channels::ChannelBuilder::build(c, key),
            _ => {
                let _ = key;
                Ok(Vec::new())
            }
        }
    }
}

/// Longest interval accepted anywhere (catches seconds given as milliseconds × 1000).
const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;

impl NotifyConfig {
    /// Checks everything and builds the channels (secrets resolved, URLs parsed).
    ///
    /// # Errors
    ///
    /// The first problem found, as [`NotifyError::Config`] naming the key.
    pub fn validate(&self) -> Result<(), NotifyError> {
        self.build_channels().map(|_| ())
    }

    pub(crate) fn group_settings(&self) -> GroupSettings {
        GroupSettings {
            group_wait: Duration::from_millis(self.group.group_wait_ms),
            group_interval: Duration::from_millis(self.group.group_interval_ms),
            by: self.group.by.clone(),
            max_items: self.group.max_items,
            by_fingerprint: false,
        }
    }

    /// Validates and builds the channels.
    pub(crate) fn build_channels(&self) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let g = &self.group;
        if g.group_interval_ms == 0 {
            return Err(NotifyError::config(
                "group.group_interval_ms",
                "must be greater than 0",
            ));
        }
        for (key, v) in [
            ("group.group_wait_ms", g.group_wait_ms),
            ("group.group_interval_ms", g.group_interval_ms),
            ("throttle.interval_ms", self.throttle.interval_ms),
            (
                "delivery.shutdown_timeout_ms",
                self.delivery.shutdown_timeout_ms,
            ),
            ("delivery.timeout_ms", self.delivery.timeout_ms),
        ] {
            if v > MAX_INTERVAL_MS {
                return Err(NotifyError::config(
                    key,
                    format!("{v} ms is more than 24 hours; is it in milliseconds?"),
                ));
            }
        }
        if !(1..=50).contains(&g.max_items) {
            return Err(NotifyError::config(
                "group.max_items",
                "must be between 1 and 50",
            ));
        }
        if self.delivery.timeout_ms == 0 {
            return Err(NotifyError::config(
                "delivery.timeout_ms",
                "must be greater than 0",
            ));
        }
        let r = &self.delivery.retry;
        if r.max_attempts == 0 {
            return Err(NotifyError::config(
                "delivery.retry.max_attempts",
                "must be at least 1",
            ));
        }
        if r.initial_backoff_ms > r.max_backoff_ms {
            return Err(NotifyError::config(
                "delivery.retry.initial_backoff_ms",
                "is greater than delivery.retry.max_backoff_ms",
            ));
        }
        let mut all: Vec<Box<dyn Channel>> = Vec::new();
        for (i, c) in self.channels.iter().enumerate() {
            let key = format!("channels[{i}]");
            for ch in c.build(&key)? {
                if all.iter().any(|o| o.name() == ch.name()) {
                    return Err(NotifyError::config(
                        format!("{key}.name"),
                        format!(
                            "channel name `{}` is used twice; give each channel its own `name`",
                            ch.name()
                        ),
                    ));
                }
                all.push(ch);
            }
        }
        Ok(all)
    }
}

/// Parses an `http(s)` URL. `secret`: the URL holds a token, so the error must not show it.
#[allow(
    dead_code,
    reason = "used by the channel features; unused when all are off"
)]
pub(crate) fn parse_url(key: &str, value: &str, secret: bool) -> Result<reqwest::Url, NotifyError> {
    let shown = if secret {
        String::new()
    } else {
        format!(" `{value}`")
    };
    let url = reqwest::Url::parse(value.trim())
        .map_err(|e| NotifyError::config(key, format!("not a valid URL{shown}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NotifyError::config(
            key,
            format!("URL{shown} must use http or https"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(NotifyError::config(key, format!("URL{shown} has no host")));
    }
    Ok(url)
}

/// A base URL without its trailing slash.
#[allow(
    dead_code,
    reason = "used by the channel features; unused when all are off"
)]
pub(crate) fn base_url(key: &str, value: &str) -> Result<String, NotifyError> {
    parse_url(key, value, false)?;
    Ok(value.trim().trim_end_matches('/').to_owned())
}

/// A required, non-blank string.
#[allow(
    dead_code,
    reason = "used by the channel features; unused when all are off"
)]
pub(crate) fn non_empty(key: &str, value: &str, what: &str) -> Result<String, NotifyError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(NotifyError::config(key, format!("{what} is empty")));
    }
    Ok(v.to_owned())
}

/// A channel name: letters, digits, `-`, `_`, `.`, `#`, `@`, `/`.
#[allow(
    dead_code,
    reason = "used by the channel features; unused when all are off"
)]
pub(crate) fn channel_name(
    key: &str,
    name: Option<&str>,
    default: &str,
) -> Result<String, NotifyError> {
    let n = name.unwrap_or(default).trim();
    if n.is_empty()
        || !n
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.#@/".contains(c))
    {
        return Err(NotifyError::config(
            format!("{key}.name"),
            format!("`{n}` is not a valid channel name (letters, digits, - _ . # @ /)"),
        ));
    }
    Ok(n.to_owned())
}

/// A rate-limit interval in milliseconds.
#[allow(
    dead_code,
    reason = "used by the channel features; unused when all are off"
)]
pub(crate) fn interval(key: &str, ms: u64) -> Result<Duration, NotifyError> {
    if ms > MAX_INTERVAL_MS {
        return Err(NotifyError::config(
            key,
            format!("{ms} ms is more than 24 hours"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_trimmed_and_control_characters_refused() {
        let s = SecretSource::Value(Secret::new("xoxb-123\n"))
            .resolve("channels[0].token")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.expose(), "xoxb-123");
        let err = SecretSource::Value(Secret::new("xoxb\n123"))
            .resolve("channels[0].token")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("channels[0].token") && err.contains("control characters"),
            "{err}"
        );
        assert!(!err.contains("xoxb"), "{err}");
    }

    #[test]
    fn one_destination_gets_one_gate_key_whatever_the_channel_name() {
        let a = secret_key("slack-webhook", &Secret::new("https://hooks.example/T/B/x"));
        let b = secret_key("slack-webhook", &Secret::new("https://hooks.example/T/B/x"));
        let c = secret_key("slack-webhook", &Secret::new("https://hooks.example/T/B/y"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!a.contains("hooks.example"));
    }
}
