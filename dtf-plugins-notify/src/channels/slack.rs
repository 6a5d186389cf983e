//! Slack: an incoming webhook, or the Web API `chat.postMessage` with a bot token; Block Kit.
//!
//! Requests (see `slack.yaml`): `POST <webhook_url>` with `{text, blocks}`, answered `ok`;
//! or `POST {base_url}/api/chat.postMessage` with `Authorization: Bearer <token>` and
//! `{channel, text, blocks, unfurl_links: false}`, answered `{"ok": true, …}` (an
//! `{"ok": false, "error": …}` answer is a failure). Limits: a section's text 3000
//! characters, 50 blocks; the fallback `text` is cut to 3000 too.

use dtf_plugin_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelBuilder, emoji};
use crate::config::{
    SecretSource, base_url, channel_name, interval, non_empty, parse_url, secret_key,
};
use crate::deliver::{Deliverer, DeliveryError, GateSpec, Refusal};
use crate::error::NotifyError;
use crate::filter::{DEFAULT_EVENTS, Filter, FilterConfig};
use crate::format::{code_text, escape_slack, escape_slack_within, lines_within, utf16_len};
use crate::message::{Notification, Severity, Span};
use crate::transport::{HttpRequest, HttpResponse};

/// `type = "slack"`: give `webhook_url`, or `token` and `channel`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SlackConfig {
    /// Channel name for stats and logs. Default `slack`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events. Default: see [`crate::filter`].
    #[serde(default)]
    pub filter: FilterConfig,
    /// Incoming-webhook URL (a secret).
    #[serde(default)]
    pub webhook_url: Option<SecretSource>,
    /// Bot token (`xoxb-…`) for `chat.postMessage`.
    #[serde(default)]
    pub token: Option<SecretSource>,
    /// Channel id or name for `chat.postMessage` (`C0123…` or `#alerts`).
    #[serde(default)]
    pub channel: Option<String>,
    /// Web API base URL. Default `https://slack.com`.
    #[serde(default = "default_base")]
    pub base_url: String,
    /// Least time between two messages (Slack allows about one per second per channel).
    /// Default 1000 ms.
    #[serde(default = "default_interval")]
    pub min_interval_ms: u64,
}

fn default_base() -> String {
    "https://slack.com".to_owned()
}

fn default_interval() -> u64 {
    1000
}

enum Mode {
    Webhook(Secret),
    Api {
        url: Secret,
        token: Secret,
        channel: String,
    },
}

struct Slack {
    name: String,
    filter: Filter,
    gate: GateSpec,
    mode: Mode,
}

impl ChannelBuilder for SlackConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let name = channel_name(key, self.name.as_deref(), "slack")?;
        let filter = Filter::new(
            &self.filter,
            DEFAULT_EVENTS,
            Severity::Info,
            &format!("{key}.filter"),
        )?;
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        let (mode, dest) = match (&self.webhook_url, &self.token) {
            (Some(url), None) => {
                let k = format!("{key}.webhook_url");
                let url = url.resolve(&k)?;
                parse_url(&k, url.expose(), true)?;
                let dest = secret_key("slack-webhook", &url);
                (Mode::Webhook(url), dest)
            }
            (None, Some(token)) => {
                let token = token.resolve(&format!("{key}.token"))?;
                let channel = non_empty(
                    &format!("{key}.channel"),
                    self.channel.as_deref().unwrap_or(""),
                    "the Slack channel for chat.postMessage",
                )?;
                let base = base_url(&format!("{key}.base_url"), &self.base_url)?;
                let dest = format!("slack:{base}:{channel}");
                let url = Secret::new(format!("{base}/api/chat.postMessage"));
                (
                    Mode::Api {
                        url,
                        token,
                        channel,
                    },
                    dest,
                )
            }
            (Some(_), Some(_)) => {
                return Err(NotifyError::config(
                    key,
                    "give either `webhook_url` or `token` (with `channel`), not both",
                ));
            }
            (None, None) => {
                return Err(NotifyError::config(
                    key,
                    "give `webhook_url`, or `token` and `channel`",
                ));
            }
        };
        Ok(vec![Box::new(Slack {
            name,
            filter,
            gate: GateSpec::new(dest, every),
            mode,
        })])
    }
}

/// The Block Kit message: `{text, blocks}`.
///
/// Every text from the run is escaped (`&`, `<`, `>`: a test named `<!channel>` pings no one)
/// and cut before escaping, so a cut never splits an entity or drops the title's closing `*`.
pub(crate) fn blocks(msg: &Notification) -> Value {
    let emoji = emoji(msg.severity);
    // The section's 3000 characters, less the emoji, the space and the two `*`.
    let room = 3000 - utf16_len(emoji) - 3;
    let mut title: String = msg
        .title
        .iter()
        .map(|s| match s {
            Span::Text(t) => escape_slack(t),
            Span::Code(c) => format!("`{}`", escape_slack(&code_text(c))),
        })
        .collect();
    if utf16_len(&title) > room {
        // Too long with its code spans: plain, cut (a cut code span would stay open).
        title = escape_slack_within(&msg.title_plain(), room);
    }
    let mut blocks = vec![json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": format!("{emoji} *{title}*") }
    })];
    if !msg.items.is_empty() {
        let lines: Vec<String> = msg
            .items
            .iter()
            .map(|i| format!("• {}", escape_slack_within(i, 498)))
            .collect();
        let list = lines_within(&lines, 2900, 500, msg.more);
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": list } }));
    }
    if let Some(detail) = &msg.detail {
        let d = escape_slack_within(&detail.replace("```", "ˋˋˋ"), 2800);
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("```{d}```") } }));
    }
    let facts: Vec<Value> = msg
        .facts
        .iter()
        .take(10)
        .map(|(k, v)| {
            let room = 300usize.saturating_sub(utf16_len(k) + 4);
            json!({ "type": "mrkdwn", "text": format!("*{k}:* {}", escape_slack_within(v, room)) })
        })
        .collect();
    blocks.push(json!({ "type": "context", "elements": facts }));
    // The notification text (previews, push notifications) is mrkdwn too: escaped as well.
    json!({ "text": escape_slack_within(&msg.title_plain(), 3000), "blocks": blocks })
}

fn check_api(resp: &HttpResponse) -> Result<(), Refusal> {
    let v = resp.json();
    if v.get("ok") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    let error = v
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no `ok: true` in the answer");
    let message = format!("Slack answered ok=false: {error}");
    // Slack's transient errors come as `ok: false` too (`rate_limited` is in the spec's
    // list for chat.postMessage): another try may well succeed, where `channel_not_found`
    // or `invalid_auth` never will. Not `internal_error` or `fatal_error`: Slack says the
    // message may have been posted all the same, and a retry could post it twice.
    if TRANSIENT.contains(&error) {
        return Err(Refusal::retry(message));
    }
    Err(message.into())
}

/// `ok: false` errors of Slack's Web API that are worth another try.
const TRANSIENT: [&str; 4] = [
    "rate_limited",
    "ratelimited",
    "service_unavailable",
    "request_timeout",
];

#[async_trait::async_trait]
impl Channel for Slack {
    channel_accessors!("slack");

    fn render(&self, msg: &Notification) -> Value {
        let mut body = blocks(msg);
        if let Mode::Api { channel, .. } = &self.mode {
            body["channel"] = json!(channel);
            body["unfurl_links"] = json!(false);
        }
        body
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        let body = self.render(msg);
        match &self.mode {
            Mode::Webhook(url) => {
                let req = HttpRequest::post_json("slack webhook", url.clone(), body);
                d.send(&self.name, &self.gate, req, |_| Ok(())).await?;
            }
            Mode::Api { url, token, .. } => {
                let req = HttpRequest::post_json("slack chat.postMessage", url.clone(), body)
                    .header(
                        "authorization",
                        Secret::new(format!("Bearer {}", token.expose())),
                    );
                d.send(&self.name, &self.gate, req, check_api).await?;
            }
        }
        Ok(())
    }
}
