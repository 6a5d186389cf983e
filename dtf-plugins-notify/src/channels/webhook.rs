//! A generic JSON webhook: `POST <url>` with the whole [`Notification`] as JSON plus a plain
//! `text` line, and any extra headers (e.g. an `Authorization` for your endpoint).
//!
//! Body: `{"source": "dtf", "text": …, "kind", "severity", "group_key", "fingerprint",
//! "title": [{"type": "text"|"code", "text": …}], "count", "items", "more", "facts": [[k, v]],
//! "detail", "first_seen", "last_seen" (Unix ms), "sequence"}`.

use std::collections::BTreeMap;

use dtf_plugin_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelBuilder};
use crate::config::{SecretSource, channel_name, interval, parse_url, secret_key};
use crate::deliver::{Deliverer, DeliveryError, GateSpec};
use crate::error::NotifyError;
use crate::filter::{DEFAULT_EVENTS, Filter, FilterConfig};
use crate::message::{Notification, Severity};
use crate::transport::HttpRequest;

/// `type = "webhook"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// Channel name for stats and logs. Default `webhook`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events.
    #[serde(default)]
    pub filter: FilterConfig,
    /// The URL (treated as a secret).
    pub url: SecretSource,
    /// Extra headers; values are secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretSource>,
    /// Least time between two messages. Default 0.
    #[serde(default)]
    pub min_interval_ms: u64,
}

struct Webhook {
    name: String,
    filter: Filter,
    gate: GateSpec,
    url: Secret,
    headers: Vec<(String, Secret)>,
}

impl ChannelBuilder for WebhookConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let name = channel_name(key, self.name.as_deref(), "webhook")?;
        let filter = Filter::new(
            &self.filter,
            DEFAULT_EVENTS,
            Severity::Info,
            &format!("{key}.filter"),
        )?;
        let k = format!("{key}.url");
        let url = self.url.resolve(&k)?;
        parse_url(&k, url.expose(), true)?;
        let mut headers = Vec::new();
        for (h, v) in &self.headers {
            let hk = format!("{key}.headers.{h}");
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
            {
                return Err(NotifyError::config(hk, "is not a valid HTTP header name"));
            }
            let value = v.resolve(&hk)?;
            if value.expose().chars().any(|c| c.is_control()) {
                return Err(NotifyError::config(
                    hk,
                    "the value holds control characters",
                ));
            }
            headers.push((h.to_ascii_lowercase(), value));
        }
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        Ok(vec![Box::new(Webhook {
            gate: GateSpec::new(secret_key("webhook", &url), every),
            name,
            filter,
            url,
            headers,
        })])
    }
}

/// The webhook body.
pub(crate) fn payload(msg: &Notification) -> Value {
    let mut v = serde_json::to_value(msg).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("source".to_owned(), json!("dtf"));
        map.insert("text".to_owned(), json!(msg.title_plain()));
    }
    v
}

#[async_trait::async_trait]
impl Channel for Webhook {
    channel_accessors!("webhook");

    fn render(&self, msg: &Notification) -> Value {
        payload(msg)
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        let mut req = HttpRequest::post_json("webhook", self.url.clone(), payload(msg));
        for (k, v) in &self.headers {
            req = req.header(k.clone(), v.clone());
        }
        d.send(&self.name, &self.gate, req, |_| Ok(())).await?;
        Ok(())
    }
}
