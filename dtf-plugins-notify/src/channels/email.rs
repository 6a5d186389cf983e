//! Email over SMTP: one message per notification to every configured recipient, as a text
//! part and an HTML part, through [`crate::email::EmailSender`] (STARTTLS required by default;
//! see `docs/notify-email.md`).
//!
//! Config: `{"type": "email", "name": …, "filter": {…}, "min_interval_ms": …, "smtp": {…}}`,
//! where `smtp` is an [`EmailConfig`]. SMTP settings sit under their own key because serde's
//! `flatten` does not combine with `deny_unknown_fields`.

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use super::{Channel, ChannelBuilder};
use crate::config::{channel_name, interval};
use crate::deliver::{Attempt, Deliverer, DeliveryError, GateSpec};
use crate::email::{EmailConfig, EmailMessage, EmailSender, fresh_message_id};
use crate::error::NotifyError;
use crate::filter::{DEFAULT_EVENTS, Filter, FilterConfig};
use crate::format::{escape_html, truncate};
use crate::message::{Notification, Span};

/// Longest subject line, in characters (RFC 5322 recommends lines under 78; mail clients cut
/// long subjects anyway).
const SUBJECT_MAX: usize = 200;

/// Longest body detail, in characters (mail has no hard limit; a run's error text can be huge).
const DETAIL_MAX: usize = 20_000;

/// `type = "email"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EmailChannelConfig {
    /// Channel name for stats and logs. Default `email`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events.
    #[serde(default)]
    pub filter: FilterConfig,
    /// Least time between two mails. Default 1000 ms.
    #[serde(default = "default_interval")]
    pub min_interval_ms: u64,
    /// The SMTP server, credentials and recipients.
    pub smtp: EmailConfig,
}

fn default_interval() -> u64 {
    1_000
}

struct Email {
    name: String,
    filter: Filter,
    gate: GateSpec,
    sender: EmailSender,
    threads: Threads,
}

/// Message ids and threading: the messages of one notification group (one `group_key`, from
/// `sequence` 1 on) form one thread. The first is its root; each later one replies to the
/// previous one and references the root, so mail clients thread them. A group that starts
/// again at sequence 1 (after going idle) starts a new thread.
#[derive(Debug, Default)]
struct Threads {
    /// Per group key: the root's id and the last id sent.
    groups: Mutex<HashMap<String, (String, String)>>,
}

impl Threads {
    /// `mail` with a fresh `Message-ID` for `msg`'s place in its group's thread.
    fn thread(&self, mut mail: EmailMessage, msg: &Notification, domain: &str) -> EmailMessage {
        let id = fresh_message_id(domain);
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        match groups.get_mut(&msg.group_key) {
            Some((root, last)) if msg.sequence > 1 => {
                mail.in_reply_to = Some(last.clone());
                mail.references = if root == last {
                    vec![root.clone()]
                } else {
                    vec![root.clone(), last.clone()]
                };
                last.clone_from(&id);
            }
            _ => {
                groups.insert(msg.group_key.clone(), (id.clone(), id.clone()));
            }
        }
        mail.message_id = Some(id);
        mail
    }
}

impl ChannelBuilder for EmailChannelConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let name = channel_name(key, self.name.as_deref(), "email")?;
        let filter = Filter::new(
            &self.filter,
            DEFAULT_EVENTS,
            crate::message::Severity::Info,
            &format!("{key}.filter"),
        )?;
        // `EmailSender::new` validates every SMTP key; its errors name the key and never the
        // password.
        let sender = EmailSender::new(&self.smtp)
            .map_err(|e| NotifyError::config(format!("{key}.smtp"), e.to_string()))?;
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        Ok(vec![Box::new(Email {
            gate: GateSpec::new(format!("email:{name}"), every),
            name,
            filter,
            sender,
            threads: Threads::default(),
        })])
    }
}

/// The mail for `msg`: subject, text body and HTML body.
pub(crate) fn message(msg: &Notification) -> EmailMessage {
    let subject = truncate(
        &format!("[dtf {}] {}", msg.severity.as_str(), msg.title_text()),
        SUBJECT_MAX,
    );
    let mut text = format!("{}\n\n", msg.title_plain());
    let mut html = format!("<h2>{}</h2>\n", title_html(&msg.title));
    if !msg.items.is_empty() {
        html.push_str("<ul>\n");
        for item in &msg.items {
            let _ = writeln!(text, "- {item}");
            let _ = writeln!(html, "<li>{}</li>", escape_html(item));
        }
        html.push_str("</ul>\n");
    }
    if let Some(more) = msg.more_line() {
        let _ = writeln!(text, "{more}");
        let _ = writeln!(html, "<p>{}</p>", escape_html(&more));
    }
    if !msg.facts.is_empty() {
        text.push('\n');
        html.push_str("<table>\n");
        for (k, v) in &msg.facts {
            let _ = writeln!(text, "{k}: {v}");
            let _ = writeln!(
                html,
                "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
                escape_html(k),
                escape_html(v)
            );
        }
        html.push_str("</table>\n");
    }
    if let Some(detail) = &msg.detail {
        let detail = truncate(detail, DETAIL_MAX);
        let _ = write!(text, "\n{detail}\n");
        let _ = writeln!(html, "<pre>{}</pre>", escape_html(&detail));
    }
    EmailMessage {
        subject,
        text,
        html: Some(html),
        ..EmailMessage::default()
    }
}

fn title_html(title: &[Span]) -> String {
    title
        .iter()
        .map(|s| match s {
            Span::Text(t) => escape_html(t),
            Span::Code(c) => format!("<code>{}</code>", escape_html(c)),
        })
        .collect()
}

#[async_trait::async_trait]
impl Channel for Email {
    channel_accessors!("email");

    fn render(&self, msg: &Notification) -> Value {
        let m = message(msg);
        json!({ "subject": m.subject, "text": m.text, "html": m.html })
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        // Ids are fixed before the first attempt, so a retried mail keeps its id.
        let mail = self.threads.thread(message(msg), msg, self.sender.domain());
        d.run(&self.name, &self.gate, || async {
            match self.sender.send(&mail).await {
                Ok(()) => Attempt::Done {
                    value: (),
                    slow_down: None,
                },
                Err(e) if e.is_retryable() => Attempt::Retry {
                    after: None,
                    error: e.to_string(),
                },
                Err(e) => Attempt::Fail(e.to_string()),
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_group(key: &str, sequence: u64) -> Notification {
        Notification {
            kind: Hook::TaskFailed,
            severity: Severity::Error,
            group_key: key.to_owned(),
            fingerprint: "f".to_owned(),
            title: vec![Span::Text("t".to_owned())],
            count: 1,
            items: vec![],
            more: 0,
            facts: vec![],
            detail: None,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            sequence,
        }
    }

    #[test]
    fn messages_of_one_group_form_a_thread() {
        let threads = Threads::default();
        let mail = |key, seq| threads.thread(EmailMessage::default(), &in_group(key, seq), "x.org");
        let a1 = mail("a", 1);
        let b1 = mail("b", 1);
        let a2 = mail("a", 2);
        let a3 = mail("a", 3);
        let ids: Vec<String> = [&a1, &b1, &a2, &a3]
            .iter()
            .map(|m| m.message_id.clone().unwrap())
            .collect();
        assert!(
            ids.iter()
                .all(|id| id.starts_with("<dtf.") && id.ends_with("@x.org>"))
        );
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 4, "{ids:?}");
        // The first of each group is a root.
        assert_eq!((a1.in_reply_to.clone(), a1.references.len()), (None, 0));
        assert_eq!((b1.in_reply_to.clone(), b1.references.len()), (None, 0));
        // Later ones reply to the previous one and reference the root.
        assert_eq!(a2.in_reply_to, a1.message_id);
        assert_eq!(a2.references, vec![ids[0].clone()]);
        assert_eq!(a3.in_reply_to, a2.message_id);
        assert_eq!(a3.references, vec![ids[0].clone(), ids[2].clone()]);
        // A group starting again at 1 starts a new thread.
        let again = mail("a", 1);
        assert_eq!((again.in_reply_to, again.references.len()), (None, 0));
        assert_eq!(mail("a", 2).in_reply_to, again.message_id);
    }
    use crate::message::Severity;
    use dtf_plugin_core::event::Hook;
    use std::time::SystemTime;

    #[test]
    fn the_mail_escapes_html_and_lists_items_facts_and_detail() {
        let msg = Notification {
            kind: Hook::TaskFailed,
            severity: Severity::Error,
            group_key: "k".to_owned(),
            fingerprint: "f".to_owned(),
            title: vec![
                Span::Text("3 tasks failed with ".to_owned()),
                Span::Code("<Timeout>".to_owned()),
            ],
            count: 3,
            items: vec!["t1 & t2".to_owned()],
            more: 2,
            facts: vec![("worker".to_owned(), "w<3>".to_owned())],
            detail: Some("line\n<b>".to_owned()),
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            sequence: 1,
        };
        let m = message(&msg);
        assert_eq!(m.subject, "[dtf error] 3 tasks failed with <Timeout>");
        assert!(
            m.text
                .starts_with("3 tasks failed with `<Timeout>`\n\n- t1 & t2\n… and 2 more\n")
        );
        assert!(m.text.contains("worker: w<3>") && m.text.ends_with("line\n<b>\n"));
        let html = m.html.unwrap_or_default();
        assert!(html.contains("<code>&lt;Timeout&gt;</code>"), "{html}");
        assert!(html.contains("<li>t1 &amp; t2</li>") && html.contains("<td>w&lt;3&gt;</td>"));
        assert!(html.contains("<pre>line\n&lt;b&gt;</pre>") && !html.contains("<b>"));
    }
}
