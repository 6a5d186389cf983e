//! Microsoft Teams: an incoming webhook or Workflows ("When a Teams webhook request is
//! received") URL posting an Adaptive Card 1.5, or a Graph API channel message.
//!
//! Requests (see `msteams.yaml`): `POST <webhook_url>` with
//! `{type: "message", attachments: [{contentType: "application/vnd.microsoft.card.adaptive",
//! contentUrl: null, content: <card>}]}` (answered `200 1` or `202`); or
//! `POST {graph_base_url}/v1.0/teams/{team_id}/channels/{channel_id}/messages` with
//! `Authorization: Bearer <token>` and `{body: {contentType: "html", content: "<attachment
//! id=\"…\"></attachment>"}, attachments: [{id, contentType, contentUrl: null, content:
//! "<card as a JSON string>"}]}` (answered `201`). The card stays well under the 28 KB
//! message limit: the list is cut at 6000 characters and the detail at 2000.
//!
//! The Graph token is used as given: obtaining and refreshing it (OAuth client credentials)
//! is not done here.

use dtf_plugin_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelBuilder};
use crate::config::{
    SecretSource, base_url, channel_name, interval, non_empty, parse_url, secret_key,
};
use crate::deliver::{Deliverer, DeliveryError, GateSpec, Refusal, short};
use crate::error::NotifyError;
use crate::filter::{DEFAULT_EVENTS, Filter, FilterConfig};
use crate::format::{lines_within, truncate};
use crate::message::{Notification, Severity};
use crate::transport::{HttpRequest, HttpResponse};

/// `type = "teams"`: give `webhook_url`, or `graph_token`, `team_id` and `channel_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TeamsConfig {
    /// Channel name for stats and logs. Default `teams`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Incoming webhook or Workflows URL (a secret: it carries a signature).
    #[serde(default)]
    pub webhook_url: Option<SecretSource>,
    /// Graph access token with `ChannelMessage.Send`.
    #[serde(default)]
    pub graph_token: Option<SecretSource>,
    /// Team id (Graph).
    #[serde(default)]
    pub team_id: Option<String>,
    /// Channel id (Graph), e.g. `19:…@thread.tacv2`.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Graph base URL. Default `https://graph.microsoft.com`.
    #[serde(default = "default_graph")]
    pub graph_base_url: String,
    /// Least time between two messages. Default 1000 ms.
    #[serde(default = "default_interval")]
    pub min_interval_ms: u64,
}

fn default_graph() -> String {
    "https://graph.microsoft.com".to_owned()
}

fn default_interval() -> u64 {
    1000
}

enum Mode {
    Webhook(Secret),
    Graph { url: Secret, token: Secret },
}

struct Teams {
    name: String,
    filter: Filter,
    gate: GateSpec,
    mode: Mode,
}

impl ChannelBuilder for TeamsConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let name = channel_name(key, self.name.as_deref(), "teams")?;
        let filter = Filter::new(
            &self.filter,
            DEFAULT_EVENTS,
            Severity::Info,
            &format!("{key}.filter"),
        )?;
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        let (mode, dest) = match (&self.webhook_url, &self.graph_token) {
            (Some(url), None) => {
                let k = format!("{key}.webhook_url");
                let url = url.resolve(&k)?;
                parse_url(&k, url.expose(), true)?;
                let dest = secret_key("teams-webhook", &url);
                (Mode::Webhook(url), dest)
            }
            (None, Some(token)) => {
                let token = token.resolve(&format!("{key}.graph_token"))?;
                let team = non_empty(
                    &format!("{key}.team_id"),
                    self.team_id.as_deref().unwrap_or(""),
                    "the team id",
                )?;
                let chan = non_empty(
                    &format!("{key}.channel_id"),
                    self.channel_id.as_deref().unwrap_or(""),
                    "the channel id",
                )?;
                let base = base_url(&format!("{key}.graph_base_url"), &self.graph_base_url)?;
                let mut url = reqwest::Url::parse(&base).map_err(|e| {
                    NotifyError::config(format!("{key}.graph_base_url"), e.to_string())
                })?;
                url.path_segments_mut()
                    .map_err(|()| {
                        NotifyError::config(format!("{key}.graph_base_url"), "cannot be a base URL")
                    })?
                    .pop_if_empty()
                    .extend(["v1.0", "teams", &team, "channels", &chan, "messages"]);
                let dest = format!("teams:{base}:{team}:{chan}");
                (
                    Mode::Graph {
                        url: Secret::new(url.to_string()),
                        token,
                    },
                    dest,
                )
            }
            (Some(_), Some(_)) => {
                return Err(NotifyError::config(
                    key,
                    "give either `webhook_url` or `graph_token`, not both",
                ));
            }
            (None, None) => {
                return Err(NotifyError::config(
                    key,
                    "give `webhook_url`, or `graph_token`, `team_id` and `channel_id`",
                ));
            }
        };
        Ok(vec![Box::new(Teams {
            name,
            filter,
            gate: GateSpec::new(dest, every),
            mode,
        })])
    }
}

/// The most bytes a request body may have: Teams refuses a message over about 28 KB, counted
/// in bytes of the whole request (a character of a CJK test name is three of them, and Graph
/// escapes the card once more as a JSON string).
const MAX_BODY_BYTES: usize = 27_000;

/// The Adaptive Card (1.5) with its full budgets.
#[cfg(test)]
pub(crate) fn card(msg: &Notification) -> Value {
    card_within(msg, 1)
}

/// The card with its texts' budgets divided by `div`.
fn card_within(msg: &Notification, div: usize) -> Value {
    let color = match msg.severity {
        Severity::Routine | Severity::Info => "Default",
        Severity::Warning => "Warning",
        Severity::Error | Severity::Critical => "Attention",
    };
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": truncate(&msg.title_text(), 400 / div),
        "weight": "Bolder",
        "size": "Medium",
        "color": color,
        "wrap": true,
    })];
    if !msg.items.is_empty() {
        let lines: Vec<String> = msg.items.iter().map(|i| format!("- {i}")).collect();
        let list = lines_within(&lines, 6000 / div, 400 / div, msg.more);
        body.push(json!({ "type": "TextBlock", "text": list, "wrap": true }));
    }
    if let Some(d) = &msg.detail {
        body.push(json!({ "type": "TextBlock", "text": truncate(d, 2000 / div), "wrap": true, "fontType": "Monospace", "isSubtle": true }));
    }
    let facts: Vec<Value> = msg
        .facts
        .iter()
        .take(10)
        .map(|(k, v)| json!({ "title": truncate(k, 100), "value": truncate(v, 300 / div) }))
        .collect();
    body.push(json!({ "type": "FactSet", "facts": facts }));
    json!({
        "type": "AdaptiveCard",
        "version": "1.5",
        "body": body,
        "fallbackText": truncate(&msg.title_text(), 400 / div),
    })
}

impl Teams {
    /// The request body, within [`MAX_BODY_BYTES`]: the card's texts are cut shorter until it
    /// fits.
    fn body(&self, msg: &Notification) -> Value {
        let mut div = 1;
        loop {
            let body = self.body_with(msg, card_within(msg, div));
            if div >= 64 || body.to_string().len() <= MAX_BODY_BYTES {
                return body;
            }
            div *= 2;
        }
    }

    fn body_with(&self, msg: &Notification, card: Value) -> Value {
        match &self.mode {
            Mode::Webhook(_) => json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": card,
                }],
            }),
            Mode::Graph { .. } => {
                let id = format!("dtf-{}-{}", msg.fingerprint, msg.sequence);
                json!({
                    "subject": truncate(&msg.title_text(), 200),
                    "importance": if msg.severity >= Severity::Error { "high" } else { "normal" },
                    "body": { "contentType": "html", "content": format!("<attachment id=\"{id}\"></attachment>") },
                    "attachments": [{
                        "id": id,
                        "contentType": "application/vnd.microsoft.card.adaptive",
                        "contentUrl": null,
                        "content": card.to_string(),
                    }],
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl Channel for Teams {
    channel_accessors!("teams");

    fn render(&self, msg: &Notification) -> Value {
        self.body(msg)
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        let body = self.body(msg);
        let req = match &self.mode {
            Mode::Webhook(url) => HttpRequest::post_json("teams webhook", url.clone(), body),
            Mode::Graph { url, token } => {
                HttpRequest::post_json("teams graph channel message", url.clone(), body).header(
                    "authorization",
                    Secret::new(format!("Bearer {}", token.expose())),
                )
            }
        };
        match &self.mode {
            Mode::Webhook(_) => d.send(&self.name, &self.gate, req, check_webhook).await?,
            Mode::Graph { .. } => d.send(&self.name, &self.gate, req, |_| Ok(())).await?,
        };
        Ok(())
    }
}

/// A Teams webhook answers `200` also when Teams did not post the message: the body then
/// says so ("Webhook message delivery failed with error: Microsoft Teams endpoint returned
/// HTTP error 429 …", Microsoft's documented behaviour). Delivered: `202` (Workflows), or a
/// body of `1` (connectors) or none. Throttled (`HTTP error 429`) or a server error: tried
/// again; anything else (a card too large, a removed channel): a failure, not a delivery.
fn check_webhook(resp: &HttpResponse) -> Result<(), Refusal> {
    let body = resp.body.trim();
    if resp.status == 202 || body.is_empty() || body == "1" {
        return Ok(());
    }
    let message = format!("Teams did not post the message: {}", short(body, 300));
    if body.contains("HTTP error 429") || body.contains("HTTP error 5") {
        Err(Refusal::retry(message))
    } else {
        Err(message.into())
    }
}
