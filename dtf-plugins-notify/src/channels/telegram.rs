//! Telegram: Bot API `sendMessage` in HTML parse mode.
//!
//! Request (see `telegram.yaml`): `POST {base_url}/bot<token>/sendMessage` with a JSON body
//! `{"chat_id", "text", "parse_mode": "HTML", "link_preview_options": {"is_disabled": true}}`
//! (a numeric chat id as a JSON integer; object parameters as JSON objects, not strings). The text
//! escapes `&`, `<`, `>` (and `"`) everywhere it is not markup, and is kept under Telegram's
//! 4096 characters. One channel per chat id, named `<name>/<chat_id>`; each chat has its own
//! gate (about one message per second), and all chats of one bot share a gate of about 30
//! messages per second. A `429` carries `parameters.retry_after`, which the gate honours.

use dtf_plugin_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelBuilder, emoji};
use crate::config::{SecretSource, base_url, channel_name, interval, secret_key};
use crate::deliver::{Deliverer, DeliveryError, GateSpec, Refusal};
use crate::error::NotifyError;
use crate::filter::{DEFAULT_EVENTS, Filter, FilterConfig};
use crate::format::{escape_html, lines_within, truncate};
use crate::message::{Notification, Severity, Span};
use crate::transport::{HttpRequest, HttpResponse};

/// `type = "telegram"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TelegramConfig {
    /// Channel name prefix for stats and logs. Default `telegram`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Bot token from @BotFather (a secret).
    pub bot_token: SecretSource,
    /// Chat ids (`-1001234567890`) or channel usernames (`@alerts`); at least one.
    pub chat_ids: Vec<String>,
    /// Bot API base URL. Default `https://api.telegram.org`.
    #[serde(default = "default_base")]
    pub base_url: String,
    /// Least time between two messages to one chat. Default 1000 ms.
    #[serde(default = "default_chat_interval")]
    pub min_interval_ms: u64,
    /// Least time between two messages of this bot over all chats. Default 34 ms (~30/s).
    #[serde(default = "default_bot_interval")]
    pub bot_min_interval_ms: u64,
}

fn default_base() -> String {
    "https://api.telegram.org".to_owned()
}

fn default_chat_interval() -> u64 {
    1000
}

fn default_bot_interval() -> u64 {
    34
}

struct Telegram {
    name: String,
    filter: Filter,
    gate: GateSpec,
    url: Secret,
    chat_id: String,
}

fn valid_chat(id: &str) -> bool {
    let numeric = id.strip_prefix('-').unwrap_or(id);
    let numeric_ok = !numeric.is_empty() && numeric.chars().all(|c| c.is_ascii_digit());
    let user_ok = id.strip_prefix('@').is_some_and(|u| {
        (5..=32).contains(&u.len()) && u.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    numeric_ok || user_ok
}

impl ChannelBuilder for TelegramConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let prefix = channel_name(key, self.name.as_deref(), "telegram")?;
        let filter = Filter::new(
            &self.filter,
            DEFAULT_EVENTS,
            Severity::Info,
            &format!("{key}.filter"),
        )?;
        let token = self.bot_token.resolve(&format!("{key}.bot_token"))?;
        if token.expose().contains(['/', '?', '#', ' ']) {
            return Err(NotifyError::config(
                format!("{key}.bot_token"),
                "is not a bot token (it holds `/`, `?`, `#` or spaces)",
            ));
        }
        let base = base_url(&format!("{key}.base_url"), &self.base_url)?;
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        let bot_every = interval(
            &format!("{key}.bot_min_interval_ms"),
            self.bot_min_interval_ms,
        )?;
        if self.chat_ids.is_empty() {
            return Err(NotifyError::config(
                format!("{key}.chat_ids"),
                "is empty: give at least one chat id",
            ));
        }
        let url = Secret::new(format!("{base}/bot{}/sendMessage", token.expose()));
        let mut out: Vec<Box<dyn Channel>> = Vec::new();
        for (i, id) in self.chat_ids.iter().enumerate() {
            let id = id.trim();
            if !valid_chat(id) {
                return Err(NotifyError::config(
                    format!("{key}.chat_ids[{i}]"),
                    format!(
                        "`{id}` is neither a chat id (digits, may start with -) nor a channel username (@name)"
                    ),
                ));
            }
            out.push(Box::new(Telegram {
                name: format!("{prefix}/{id}"),
                filter,
                gate: GateSpec::new(format!("telegram:{base}:{id}"), every)
                    .shared(secret_key("telegram-bot", &token), bot_every),
                url: url.clone(),
                chat_id: id.to_owned(),
            }));
        }
        Ok(out)
    }
}

/// The HTML text of a message, within 4096 characters of visible text: title ≤ 500, list
/// ≤ 2000, detail ≤ 800, facts ≤ 8 × 84.
pub(crate) fn html(msg: &Notification) -> String {
    let title: String = msg
        .title
        .iter()
        .map(|s| match s {
            Span::Text(t) => escape_html(&truncate(t, 300)),
            Span::Code(c) => format!("<code>{}</code>", escape_html(&truncate(c, 200))),
        })
        .collect();
    let mut text = format!("{} <b>{title}</b>", emoji(msg.severity));
    if !msg.items.is_empty() {
        let lines: Vec<String> = msg.items.iter().map(|i| format!("• {i}")).collect();
        let list = lines_within(&lines, 2000, 300, msg.more);
        text.push_str("\n\n");
        text.push_str(&escape_html(&list));
    }
    if let Some(d) = &msg.detail {
        text.push_str(&format!(
            "\n\n<pre>{}</pre>",
            escape_html(&truncate(d, 800))
        ));
    }
    let facts: Vec<String> = msg
        .facts
        .iter()
        .take(8)
        .map(|(k, v)| {
            format!(
                "<b>{}:</b> {}",
                escape_html(&truncate(k, 20)),
                escape_html(&truncate(v, 60))
            )
        })
        .collect();
    text.push_str("\n\n");
    text.push_str(&facts.join(" · "));
    text
}

fn check(resp: &HttpResponse) -> Result<(), Refusal> {
    match resp.json().get("ok") {
        Some(Value::Bool(true)) => Ok(()),
        _ => Err("Telegram answered without `ok: true`".to_owned().into()),
    }
}

#[async_trait::async_trait]
impl Channel for Telegram {
    channel_accessors!("telegram");

    fn render(&self, msg: &Notification) -> Value {
        // A numeric chat id goes out as a JSON integer, a `@username` as a string (the
        // spec's `anyOf: [integer, string]`); object parameters are JSON objects.
        let chat_id = self
            .chat_id
            .parse::<i64>()
            .map_or_else(|_| json!(self.chat_id), |n| json!(n));
        json!({
            "chat_id": chat_id,
            "text": html(msg),
            "parse_mode": "HTML",
            "link_preview_options": { "is_disabled": true },
        })
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        let req =
            HttpRequest::post_json("telegram sendMessage", self.url.clone(), self.render(msg));
        d.send(&self.name, &self.gate, req, check).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_ids_are_numbers_or_usernames() {
        for ok in ["-1001234567890", "12345", "@dtf_alerts"] {
            assert!(valid_chat(ok), "{ok}");
        }
        for bad in ["", "-", "@ab", "12a", "@bad name", "https://t.me/x"] {
            assert!(!valid_chat(bad), "{bad}");
        }
    }
}
