//! JIRA Cloud REST v3: an issue per error, de-duplicated by fingerprint. Data Center and
//! Server speak REST v2 with wiki-markup descriptions instead of v3's ADF: not supported.
//!
//! For each message (by default only final task failures, worker failures and recovery
//! failures): the label `dtf-fp-<fingerprint>` identifies the error (event kind + error type,
//! not the task or the worker, see [`Notification::fingerprint`]). The channel looks for an
//! open issue carrying it — first in its own memory of issues it created, then with
//! `GET {base_url}/rest/api/3/search/jql?jql=project = "KEY" AND labels = "dtf-fp-…" AND
//! statusCategory != Done ORDER BY created DESC&maxResults=1&fields=key` — and comments on it
//! (`POST /rest/api/3/issue/{key}/comment`, body in ADF); only when there is none does it
//! create one (`POST /rest/api/3/issue` with project, summary ≤ 255 characters, issue type,
//! labels and an ADF description). Auth: `Authorization: Basic base64(email:api_token)` when
//! `email` is given (an API token), else `Authorization: Bearer <token>` (an OAuth 2.0 access
//! token, with `base_url` `https://api.atlassian.com/ex/jira/<cloud id>`).

use std::collections::HashMap;
use std::sync::Mutex;

use dtf_plugin_core::Secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Channel, ChannelBuilder};
use crate::config::{SecretSource, base_url, channel_name, interval, non_empty};
use crate::deliver::{Deliverer, DeliveryError, GateSpec, Refusal};
use crate::error::NotifyError;
use crate::filter::{ERROR_EVENTS, Filter, FilterConfig};
use crate::format::truncate;
use crate::message::{Notification, Severity, Span};
use crate::transport::{Body, HttpRequest, HttpResponse, Method};

/// `type = "jira"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JiraConfig {
    /// Channel name for stats and logs. Default `jira`.
    #[serde(default)]
    pub name: Option<String>,
    /// Which events. Default: task failed, worker failed, recovery failed, severity ≥ error.
    #[serde(default)]
    pub filter: FilterConfig,
    /// The site, e.g. `https://example.atlassian.net`.
    pub base_url: String,
    /// Account e-mail for basic auth with an API token; leave out to send the token as a
    /// Bearer token (OAuth 2.0).
    #[serde(default)]
    pub email: Option<String>,
    /// API token (with `email`) or OAuth 2.0 access token (without).
    pub api_token: SecretSource,
    /// Project key, e.g. `OPS`.
    pub project_key: String,
    /// Issue type name. Default `Bug`.
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// Extra labels (no spaces). `dtf` and the fingerprint label are always added.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Comment on an open issue with the same fingerprint instead of creating one. Default
    /// true.
    #[serde(default = "default_true")]
    pub dedupe: bool,
    /// Least time between two requests. Default 100 ms.
    #[serde(default = "default_interval")]
    pub min_interval_ms: u64,
}

fn default_issue_type() -> String {
    "Bug".to_owned()
}

fn default_interval() -> u64 {
    100
}

fn default_true() -> bool {
    true
}

struct Jira {
    name: String,
    filter: Filter,
    gate: GateSpec,
    base: String,
    auth: Secret,
    project: String,
    issue_type: String,
    labels: Vec<String>,
    dedupe: bool,
    /// The ids of issues this channel created, by fingerprint. JIRA's search is eventually
    /// consistent, so a just-created issue may not be found yet: the search names it in
    /// `reconcileIssues`, which makes JIRA check it as of now. The search still decides:
    /// an issue resolved since is not commented on.
    known: Mutex<HashMap<String, u64>>,
}

impl ChannelBuilder for JiraConfig {
    fn build(&self, key: &str) -> Result<Vec<Box<dyn Channel>>, NotifyError> {
        let name = channel_name(key, self.name.as_deref(), "jira")?;
        let filter = Filter::new(
            &self.filter,
            ERROR_EVENTS,
            Severity::Error,
            &format!("{key}.filter"),
        )?;
        let base = base_url(&format!("{key}.base_url"), &self.base_url)?;
        let token = self.api_token.resolve(&format!("{key}.api_token"))?;
        let project = non_empty(
            &format!("{key}.project_key"),
            &self.project_key,
            "the project key",
        )?;
        if !project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(NotifyError::config(
                format!("{key}.project_key"),
                format!("`{project}` is not a project key"),
            ));
        }
        let issue_type = non_empty(
            &format!("{key}.issue_type"),
            &self.issue_type,
            "the issue type",
        )?;
        for (i, l) in self.labels.iter().enumerate() {
            if l.is_empty() || l.contains(char::is_whitespace) {
                return Err(NotifyError::config(
                    format!("{key}.labels[{i}]"),
                    "labels must be non-empty and hold no spaces",
                ));
            }
        }
        let auth = match &self.email {
            Some(email) => {
                let email = non_empty(&format!("{key}.email"), email, "the e-mail")?;
                if !email.contains('@') {
                    return Err(NotifyError::config(
                        format!("{key}.email"),
                        format!("`{email}` is not an e-mail address"),
                    ));
                }
                Secret::new(format!(
                    "Basic {}",
                    base64(format!("{email}:{}", token.expose()).as_bytes())
                ))
            }
            None => Secret::new(format!("Bearer {}", token.expose())),
        };
        let every = interval(&format!("{key}.min_interval_ms"), self.min_interval_ms)?;
        Ok(vec![Box::new(Jira {
            name,
            filter,
            gate: GateSpec::new(format!("jira:{base}"), every),
            base,
            auth,
            project,
            issue_type,
            labels: self.labels.clone(),
            dedupe: self.dedupe,
            known: Mutex::new(HashMap::new()),
        })])
    }
}

fn text(t: &str) -> Value {
    json!({ "type": "text", "text": t })
}

fn paragraph(content: Vec<Value>) -> Value {
    json!({ "type": "paragraph", "content": content })
}

/// The ADF document describing `msg`; `intro` is a leading sentence for comments.
pub(crate) fn adf(msg: &Notification, intro: Option<&str>) -> Value {
    let mut content = Vec::new();
    if let Some(i) = intro {
        content.push(paragraph(vec![text(i)]));
    }
    let title: Vec<Value> = msg
        .title
        .iter()
        .filter_map(|s| match s {
            Span::Text(t) if !t.is_empty() => Some(text(&truncate(t, 500))),
            Span::Code(c) if !c.is_empty() => Some(
                json!({ "type": "text", "text": truncate(c, 200), "marks": [{ "type": "code" }] }),
            ),
            _ => None,
        })
        .collect();
    content.push(paragraph(title));
    // JIRA stores at most 32,767 characters per field, ADF markup included: at most 20 items
    // of 300 characters, 8000 of detail.
    let listed: Vec<&String> = msg
        .items
        .iter()
        .filter(|i| !i.is_empty())
        .take(20)
        .collect();
    if !listed.is_empty() {
        let items: Vec<Value> = listed
            .iter()
            .map(|i| json!({ "type": "listItem", "content": [paragraph(vec![text(&truncate(i, 300))])] }))
            .collect();
        content.push(json!({ "type": "bulletList", "content": items }));
    }
    let more = msg.more + (msg.items.len() - listed.len()) as u64;
    if more > 0 {
        content.push(paragraph(vec![text(&format!("… and {more} more"))]));
    }
    if let Some(d) = msg.detail.as_deref().filter(|d| !d.is_empty()) {
        content.push(json!({ "type": "codeBlock", "content": [text(&truncate(d, 8_000))] }));
    }
    let facts: Vec<String> = msg.facts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    content.push(paragraph(vec![text(&truncate(&facts.join(" · "), 1000))]));
    json!({ "type": "doc", "version": 1, "content": content })
}

impl Jira {
    fn label(msg: &Notification) -> String {
        format!("dtf-fp-{}", msg.fingerprint)
    }

    fn create_body(&self, msg: &Notification) -> Value {
        let mut labels = vec!["dtf".to_owned(), Self::label(msg)];
        labels.extend(self.labels.iter().cloned());
        json!({
            "fields": {
                "project": { "key": self.project },
                "summary": truncate(&msg.title_text(), 255),
                "issuetype": { "name": self.issue_type },
                "labels": labels,
                "description": adf(msg, None),
            }
        })
    }

    fn comment_body(msg: &Notification) -> Value {
        json!({ "body": adf(msg, Some("Seen again:")) })
    }

    fn jql(&self, msg: &Notification) -> String {
        format!(
            "project = \"{}\" AND labels = \"{}\" AND statusCategory != Done ORDER BY created DESC",
            self.project,
            Self::label(msg)
        )
    }

    fn request(&self, label: &str, method: Method, url: String, body: Body) -> HttpRequest {
        let mut r = HttpRequest::post_json(label, Secret::new(url), Value::Null)
            .header("authorization", self.auth.clone())
            .header("accept", Secret::new("application/json"));
        r.method = method;
        r.body = body;
        r
    }

    async fn find_open(
        &self,
        msg: &Notification,
        d: &Deliverer,
    ) -> Result<Option<String>, DeliveryError> {
        let created = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&msg.fingerprint)
            .copied();
        let mut url = reqwest::Url::parse(&format!("{}/rest/api/3/search/jql", self.base))
            .map_err(|e| DeliveryError::new(format!("jira search URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("jql", &self.jql(msg))
            .append_pair("maxResults", "1")
            .append_pair("fields", "key");
        if let Some(id) = created {
            url.query_pairs_mut()
                .append_pair("reconcileIssues", &id.to_string());
        }
        let req = self.request("jira search", Method::Get, url.to_string(), Body::Empty);
        let resp = d.send(&self.name, &self.gate, req, |_| Ok(())).await?;
        let open = resp
            .json()
            .get("issues")
            .and_then(|i| i.get(0))
            .and_then(|i| i.get("key"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if open.is_none() && created.is_some() {
            // Resolved (or deleted) since this channel created it: a new issue is due.
            self.known
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&msg.fingerprint);
        }
        Ok(open)
    }
}

fn created_key(resp: &HttpResponse) -> Result<(), Refusal> {
    match resp.json().get("key") {
        Some(Value::String(_)) => Ok(()),
        _ => Err("JIRA answered without the new issue's `key`"
            .to_owned()
            .into()),
    }
}

#[async_trait::async_trait]
impl Channel for Jira {
    channel_accessors!("jira");

    fn render(&self, msg: &Notification) -> Value {
        json!({
            "search_jql": self.jql(msg),
            "create_issue": self.create_body(msg),
            "add_comment": Self::comment_body(msg),
        })
    }

    fn groups_by_fingerprint(&self) -> bool {
        self.dedupe
    }

    async fn deliver(&self, msg: &Notification, d: &Deliverer) -> Result<(), DeliveryError> {
        let open = if self.dedupe {
            self.find_open(msg, d).await?
        } else {
            None
        };
        match open {
            Some(issue) => {
                let url = format!("{}/rest/api/3/issue/{issue}/comment", self.base);
                let req = self.request(
                    "jira add comment",
                    Method::Post,
                    url,
                    Body::Json(Self::comment_body(msg)),
                );
                d.send(&self.name, &self.gate, req, |_| Ok(())).await?;
                tracing::debug!(target_channel = %self.name, %issue, "commented on the open issue");
            }
            None => {
                let url = format!("{}/rest/api/3/issue", self.base);
                let req = self.request(
                    "jira create issue",
                    Method::Post,
                    url,
                    Body::Json(self.create_body(msg)),
                );
                let resp = d.send(&self.name, &self.gate, req, created_key).await?;
                let created = resp.json();
                if let Some(k) = created.get("key").and_then(Value::as_str) {
                    tracing::info!(target_channel = %self.name, issue = k, "created an issue");
                }
                // JIRA answers the id as a string of digits.
                let id = created.get("id").and_then(|id| match id {
                    Value::String(s) => s.parse::<u64>().ok(),
                    other => other.as_u64(),
                });
                if let Some(id) = id {
                    self.known
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(msg.fingerprint.clone(), id);
                }
            }
        }
        Ok(())
    }
}

/// Standard base64 with padding (for the Basic auth header; no dependency for 20 lines).
fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(A[(n >> 18) as usize & 63] as char);
        out.push(A[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
