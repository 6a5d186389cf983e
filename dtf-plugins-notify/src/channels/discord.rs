//! Discord: a webhook, or a bot posting channel messages; embeds.
//!
//! Requests (see `discord.yaml`): `POST <webhook_url>?wait=true`, or
//! `POST {base_url}/api/v10/channels/{channel_id}/messages` with `Authorization: Bot <token>`;
//! body `{embeds: [{title, description, color, fields, footer}], allowed_mentions: {parse: []}}`
//! (no pings from error text). Limits: title 256, description 4096, 25 fields (name 256,
//! value 1024), footer 2048, 6000 in all. Rate limits: `429` with `retry_after` (and
//! `Retry-After`), and the `X-RateLimit-Remaining`/`X-RateLimit-Reset-After` bucket headers,
//! which the delivery gate honours even on success.

use dtf_plugin_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelBuilder, emoji};
use crate::config::{
    SecretSource, base_url, channel_name, interval, non_empty, parse_url, secret_key,
};
use crate::deliver::{Deliverer, DeliveryError, GateSpec};
use crate::error::NotifyError;
use crate::filter::{DEFAULT_EVENTS, Filter, FilterConfig};
use crate::format::{code_text, escape_discord, lines_within, truncate, utf16_len};
use crate::message::{Notification, Severity, Span};
use crate::transport::HttpRequest;

/// `type = "discord"`: give `webhook_url`, or `bot_token` and `channel_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DiscordConfig {
    /// Channel name for stats and logs. Default `discord`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Webhook URL (a secret: it holds the webhook token).
    #[serde(default)]
    pub webhook_url: Option<SecretSource>,
    /// Bot token, sent as `Authorization: Bot <token>`.
    #[serde(default)]
    pub bot_token: Option<SecretSource>,
    /// Channel id (a snowflake) for bot messages.
    #[serde(default)]
    pub channel_id: Option<String>,
    /// API base URL. Default `https://discord.com`.
    #[serde(default = "default_base")]
    pub base_url: String,
    /// Webhook display name override.
    #[serde(default)]
    pub username: Option<String>,
    /// Least time between two messages; Discord's own limits come in its headers. Default 0.
    #[serde(default)]
    pub min_interval_ms: u64,
}

fn default_base() -> String {
    "https://discord.com".to_owned()
}

struct Discord {
    name: String,
    filter: Filter,
    gate: GateSpec,
    url: Secret,
    bot_token: Option<Secret>,
    username: Option<String>,
}

impl ChannelBuilder for DiscordConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let name = channel_name(key, self.name.as_deref(), "discord")?;
        let filter = Filter::new(
            &self.filter,
            DEFAULT_EVENTS,
            Severity::Info,
            &format!("{key}.filter"),
        )?;
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        // Discord refuses a blank name (`minLength: 1`) with a 400 on every message.
        if let Some(u) = &self.username {
            non_empty(&format!("{key}.username"), u, "the webhook's display name")?;
        }
        let (url, bot_token, dest) = match (&self.webhook_url, &self.bot_token) {
            (Some(url), None) => {
                let k = format!("{key}.webhook_url");
                let url = url.resolve(&k)?;
                let mut parsed = parse_url(&k, url.expose(), true)?;
                parsed.query_pairs_mut().append_pair("wait", "true");
                let dest = secret_key("discord-webhook", &url);
                (Secret::new(parsed.to_string()), None, dest)
            }
            (None, Some(token)) => {
                let token = token.resolve(&format!("{key}.bot_token"))?;
                let k = format!("{key}.channel_id");
                let id = non_empty(
                    &k,
                    self.channel_id.as_deref().unwrap_or(""),
                    "the Discord channel id",
                )?;
                if !id.chars().all(|c| c.is_ascii_digit()) {
                    return Err(NotifyError::config(
                        k,
                        format!("`{id}` is not a Discord channel id (digits only)"),
                    ));
                }
                let base = base_url(&format!("{key}.base_url"), &self.base_url)?;
                let url = Secret::new(format!("{base}/api/v10/channels/{id}/messages"));
                (url, Some(token), format!("discord:{base}:{id}"))
            }
            (Some(_), Some(_)) => {
                return Err(NotifyError::config(
                    key,
                    "give either `webhook_url` or `bot_token` (with `channel_id`), not both",
                ));
            }
            (None, None) => {
                return Err(NotifyError::config(
                    key,
                    "give `webhook_url`, or `bot_token` and `channel_id`",
                ));
            }
        };
        Ok(vec![Box::new(Discord {
            name,
            filter,
            gate: GateSpec::new(dest, every),
            url,
            bot_token,
            username: self.username.clone(),
        })])
    }
}

fn color(s: Severity) -> u32 {
    match s {
        Severity::Routine => 0x95a5a6,
        Severity::Info => 0x3498db,
        Severity::Warning => 0xf1c40f,
        Severity::Error => 0xe74c3c,
        Severity::Critical => 0x8e44ad,
    }
}

/// The embed body.
pub(crate) fn embed(msg: &Notification) -> Value {
    let title: String = msg
        .title
        .iter()
        .map(|s| match s {
            Span::Text(t) => t.clone(),
            Span::Code(c) => code_text(c),
        })
        .collect();
    // Discord counts title, description, field names and values and the footer against 6000
    // characters per embed: the fixed parts first, the description gets what is left.
    let fields: Vec<Value> = msg
        .facts
        .iter()
        // Discord refuses a field with an empty value (400: the message would be lost).
        .filter(|(_, v)| !v.trim().is_empty())
        .take(10)
        .map(|(k, v)| json!({ "name": truncate(k, 64), "value": truncate(v, 200), "inline": true }))
        .collect();
    let title = truncate(&format!("{} {title}", emoji(msg.severity)), 256);
    let footer = truncate(&format!("dtf · {}", msg.group_key), 200);
    let fixed: usize = utf16_len(&title)
        + utf16_len(&footer)
        + fields
            .iter()
            .map(|f| {
                utf16_len(f["name"].as_str().unwrap_or(""))
                    + utf16_len(f["value"].as_str().unwrap_or(""))
            })
            .sum::<usize>();
    let budget = 4096.min(6000usize.saturating_sub(fixed));
    let lines: Vec<String> = msg
        .items
        .iter()
        .map(|i| format!("• {}", escape_discord(i)))
        .collect();
    let mut description = lines_within(
        &lines,
        budget.saturating_sub(1000).max(budget / 2),
        300,
        msg.more,
    );
    if let Some(d) = &msg.detail {
        let room = budget.saturating_sub(utf16_len(&description) + 10);
        if room > 50 {
            description = format!(
                "{description}\n```\n{}\n```",
                truncate(&d.replace("```", "ˋˋˋ"), room.min(900))
            );
        }
    }
    json!({
        "title": title,
        "description": truncate(description.trim_start(), budget),
        "color": color(msg.severity),
        "fields": fields,
        "footer": { "text": footer },
    })
}

#[async_trait::async_trait]
impl Channel for Discord {
    channel_accessors!("discord");

    fn render(&self, msg: &Notification) -> Value {
        let mut body = json!({ "embeds": [embed(msg)], "allowed_mentions": { "parse": [] } });
        if let (Some(u), None) = (&self.username, &self.bot_token) {
            body["username"] = json!(truncate(u, 80));
        }
        body
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        let body = self.render(msg);
        let req = match &self.bot_token {
            None => HttpRequest::post_json("discord webhook", self.url.clone(), body),
            Some(t) => HttpRequest::post_json("discord channel message", self.url.clone(), body)
                .header("authorization", Secret::new(format!("Bot {}", t.expose()))),
        };
        d.send(&self.name, &self.gate, req, |_| Ok(())).await?;
        Ok(())
    }
}
