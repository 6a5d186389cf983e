//! The channels: where messages go.
//!
//! A channel is one destination implementing [`Channel`]: it renders a [`Notification`] in
//! its service's format (within the service's size limits) and delivers it through the shared
//! [`Deliverer`], which applies the destination's gate, the retries and the stats.
//!
//! **Adding a channel** (e.g. email): one module here with
//! - a config struct (`serde`, `deny_unknown_fields`, fields `name: Option<String>` and
//!   `filter: FilterConfig` plus its own) implementing [`ChannelBuilder`], which validates
//!   everything and builds the channel(s);
//! - a type implementing [`Channel`];
//!
//! then one variant in [`crate::ChannelConfig`] and one arm in its `build`, behind the
//! module's cargo feature.

use crate::deliver::{Deliverer, DeliveryError, GateSpec};
use crate::error::NotifyError;
use crate::filter::Filter;
use crate::message::{Notification, Severity};

/// The `name`, `kind`, `filter` and `gate` methods of [`Channel`] for a channel struct with
/// `name`, `filter` and `gate` fields: what every built-in channel shares.
#[allow(unused_macros, reason = "used by the channel features only")]
macro_rules! channel_accessors {
    ($kind:literal) => {
        fn name(&self) -> &str {
            &self.name
        }

        fn kind(&self) -> &'static str {
            $kind
        }

        fn filter(&self) -> &crate::filter::Filter {
            &self.filter
        }

        fn gate(&self) -> &crate::deliver::GateSpec {
            &self.gate
        }
    };
}

#[cfg(feature = "discord")]
pub mod discord;
#[cfg(feature = "email")]
pub mod email;
#[cfg(feature = "jira")]
pub mod jira;
#[cfg(feature = "slack")]
pub mod slack;
#[cfg(feature = "teams")]
pub mod teams;
#[cfg(feature = "telegram")]
pub mod telegram;
#[cfg(feature = "webhook")]
pub mod webhook;

/// One destination of messages.
#[async_trait::async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The unique name: the stats target and the name in logs.
    fn name(&self) -> &str;

    /// The channel type (`"slack"`).
    fn kind(&self) -> &'static str;

    /// Which events it wants.
    fn filter(&self) -> &Filter;

    /// The gate its requests pass (rate limit, not-before).
    fn gate(&self) -> &GateSpec;

    /// The message as this channel would send it (the request body; for multi-request
    /// channels such as JIRA, each body by name). Holds no secret: used by dry runs.
    fn render(&self, message: &Notification) -> serde_json::Value;

    /// Delivers `message`, every request through `deliverer` with [`Channel::gate`].
    async fn deliver(
        &self,
        message: &Notification,
        deliverer: &Deliverer,
    ) -> Result<(), DeliveryError>;

    /// Whether this channel groups events by their [`Notification::fingerprint`] (event kind
    /// and error) instead of `group.by`: one message per error however many workers it hit.
    /// JIRA does, since it files one issue per fingerprint: grouped by worker, one error on
    /// ten workers made ten messages, one issue and nine "Seen again" comments at once.
    fn groups_by_fingerprint(&self) -> bool {
        false
    }
}

/// A channel's configuration: validates itself and builds its channel(s).
pub trait ChannelBuilder {
    /// Validates and builds; `key` is the config path (`channels[2]`), for errors.
    ///
    /// # Errors
    ///
    /// [`NotifyError::Config`] naming the key of the first bad value.
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError>;
}

/// An emoji for the severity, for channels that show one.
#[allow(dead_code, reason = "used by some channel features only")]
pub(crate) fn emoji(s: Severity) -> &'static str {
    match s {
        Severity::Routine => "⚪",
        Severity::Info => "🔵",
        Severity::Warning => "🟠",
        Severity::Error => "🔴",
        Severity::Critical => "🚨",
    }
}

#[cfg(all(
    test,
    feature = "slack",
    feature = "discord",
    feature = "telegram",
    feature = "teams",
    feature = "jira"
))]
mod limits {
    use std::time::SystemTime;

    use dtf_plugin_core::event::Hook;

    use crate::format::{TRUNCATED, utf16_len};
    use crate::message::{Notification, Severity, Span};

    /// A message far over every service's limits.
    fn huge() -> Notification {
        Notification {
            kind: Hook::TaskFailed,
            severity: Severity::Error,
            group_key: "k".repeat(3000),
            fingerprint: "0123456789abcdef".to_owned(),
            title: vec![Span::Text("T<&>".repeat(500)), Span::Code("E`".repeat(500))],
            count: 100_000,
            items: (0..50)
                .map(|i| format!("task-{i} <b>&</b> {}", "x".repeat(2000)))
                .collect(),
            more: 99_950,
            facts: (0..40)
                .map(|i| (format!("k{i}"), "v".repeat(5000)))
                .collect(),
            detail: Some("d<>&".repeat(50_000)),
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            sequence: 1,
        }
    }

    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }

    #[test]
    fn slack_sections_stay_within_3000_characters_and_50_blocks() {
        let v = super::slack::blocks(&huge());
        let blocks = v["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= 3000, "{}", t.chars().count());
            }
        }
        assert!(v["text"].as_str().unwrap().chars().count() <= 3000);
        assert!(v.to_string().contains(TRUNCATED) && v.to_string().contains("more"));
    }

    /// Cuts fall between characters of the text, never inside an entity (`&a…` would show
    /// as text), the title keeps its closing `*`, and the notification text is escaped too
    /// (a test named `<!channel>` would ping the whole channel from a preview).
    #[test]
    fn slack_cuts_never_split_an_entity_and_the_fallback_text_is_escaped() {
        let mut msg = huge();
        msg.title = vec![Span::Text(format!("<!channel> {}", "&".repeat(2000)))];
        msg.detail = Some("&".repeat(5000));
        msg.facts = vec![("Error".to_owned(), "<".repeat(500))];
        let v = super::slack::blocks(&msg);
        let mut all = Vec::new();
        strings(&v, &mut all);
        for text in &all {
            for (i, _) in text.match_indices('&') {
                let rest = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;"]
                        .iter()
                        .any(|e| rest.starts_with(e)),
                    "a split entity at {i}: {}",
                    &rest[..rest.len().min(12)]
                );
            }
            assert!(!text.contains("<!channel>"), "{text}");
        }
        let title = v["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(
            title.ends_with(&format!("{TRUNCATED}*")),
            "{}",
            &title[title.len() - 20..]
        );
        assert!(
            v["text"]
                .as_str()
                .unwrap()
                .starts_with("&lt;!channel&gt; &amp;")
        );
    }

    /// Discord answers 400 to a field without a value, and the message is lost: an empty
    /// fact (an error type `""` from an external runner) is left out.
    #[test]
    fn discord_fields_all_have_a_value() {
        let mut msg = huge();
        msg.facts = vec![
            ("Error type".to_owned(), String::new()),
            ("Worker".to_owned(), " ".to_owned()),
            ("Events".to_owned(), "2".to_owned()),
        ];
        let e = super::discord::embed(&msg);
        let fields = e["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 1, "{fields:?}");
        assert_eq!(fields[0]["value"], "2");
    }

    #[test]
    fn discord_embed_stays_within_its_limits() {
        let e = super::discord::embed(&huge());
        assert!(utf16_len(e["title"].as_str().unwrap()) <= 256);
        assert!(utf16_len(e["description"].as_str().unwrap()) <= 4096);
        let fields = e["fields"].as_array().unwrap();
        assert!(fields.len() <= 25);
        let mut all = Vec::new();
        strings(&e, &mut all);
        let total: usize = all.iter().map(|s| utf16_len(s)).sum();
        assert!(total <= 6000, "{total}");
    }

    #[test]
    fn telegram_text_stays_within_4096_visible_characters_and_is_escaped() {
        let html = super::telegram::html(&huge());
        // Visible text: tags removed, each entity one character.
        let mut visible = 0;
        let mut in_tag = false;
        let mut in_entity = false;
        for c in html.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => in_tag = false,
                '&' if !in_tag => {
                    in_entity = true;
                    visible += 1;
                }
                ';' if in_entity => in_entity = false,
                _ if in_tag || in_entity => {}
                c => visible += c.len_utf16(),
            }
        }
        assert!(visible <= 4096, "{visible}");
        assert!(!html.contains("<b>&</b>") && html.contains("&lt;b&gt;&amp;&lt;/b&gt;"));
        for tag in ["b", "code", "pre"] {
            assert_eq!(
                html.matches(&format!("<{tag}>")).count(),
                html.matches(&format!("</{tag}>")).count()
            );
        }
    }

    #[test]
    fn teams_card_stays_well_under_28_kb() {
        let card = super::teams::card(&huge());
        assert!(
            card.to_string().len() < 28_000,
            "{}",
            card.to_string().len()
        );
        assert_eq!(card["version"], "1.5");
    }

    /// Teams counts its 28 KB in bytes of the request: with CJK test names (three bytes a
    /// character) and the most items, the card's character budgets alone went over it, and
    /// Graph escapes the card once more as a JSON string. The texts are cut shorter until the
    /// whole body fits, in both modes.
    #[test]
    fn teams_requests_stay_under_28_kb_in_bytes_whatever_the_script() {
        use super::ChannelBuilder as _;
        let mut msg = huge();
        msg.title = vec![Span::Text("失敗".repeat(400))];
        msg.items = (0..50)
            .map(|i| format!("テスト{i} {}", "が失敗した\"".repeat(200)))
            .collect();
        msg.detail = Some("詳細\u{1}".repeat(5000));
        for config in [
            serde_json::json!({ "webhook_url": "https://example.invalid/hook" }),
            serde_json::json!({ "graph_token": "canary", "team_id": "t", "channel_id": "c" }),
        ] {
            let config: super::teams::TeamsConfig = serde_json::from_value(config).unwrap();
            let channels = config.build("channels[0]").unwrap();
            let body = channels[0].render(&msg).to_string();
            assert!(body.len() < 28_000, "{} bytes", body.len());
            assert!(body.contains("テスト0"), "the list is cut, not dropped");
        }
    }

    #[test]
    fn jira_adf_has_no_empty_text_nodes_and_stays_under_the_field_limit() {
        let doc = super::jira::adf(&huge(), Some("Seen again:"));
        assert!(
            doc.to_string().chars().count() < 32_767,
            "{}",
            doc.to_string().len()
        );
        let mut all = Vec::new();
        strings(&doc, &mut all);
        assert!(all.iter().all(|s| !s.is_empty()));
        let mut empty = huge();
        empty.title = vec![Span::Text(String::new()), Span::Code("E".into())];
        empty.detail = Some(String::new());
        let doc = super::jira::adf(&empty, None);
        let mut all = Vec::new();
        strings(&doc, &mut all);
        assert!(all.iter().all(|s| !s.is_empty()));
    }
}
