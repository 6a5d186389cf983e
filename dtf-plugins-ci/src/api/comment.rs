//! A pull-request comment kept up to date in place: list the comments, find ours by
//! [`super::COMMENT_MARKER`], edit it if found, else create it. GitHub issue comments, GitLab
//! merge-request notes and Bitbucket pull-request comments differ only in URLs, the edit
//! method and the JSON shape, which [`CommentThread`] describes.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::COMMENT_MARKER;
use super::http::{Auth, Body, Call, HttpCore};

/// The JSON shape of a service's comments.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    /// `{"body": …}`; the list is a JSON array (GitHub, GitLab).
    Body,
    /// `{"content": {"raw": …}}`; the list is `{"values": […]}` (Bitbucket).
    ContentRaw,
}

/// Where one service keeps the comments of one pull request.
#[derive(Debug, Clone)]
pub(crate) struct CommentThread {
    pub(crate) target: &'static str,
    /// The comments collection: listed with GET (plus `list_query`), created with POST.
    pub(crate) collection_url: String,
    /// The query that asks for the largest page (only the first page is searched).
    pub(crate) list_query: &'static str,
    /// One comment's URL is `item_base/{id}`.
    pub(crate) item_base: String,
    pub(crate) edit_method: Method,
    pub(crate) shape: Shape,
}

impl CommentThread {
    fn body(&self, text: &str) -> Value {
        match self.shape {
            Shape::Body => json!({ "body": text }),
            Shape::ContentRaw => json!({ "content": { "raw": text } }),
        }
    }

    /// The id of the first comment carrying our marker.
    fn find(&self, listed: &Value) -> Option<u64> {
        let items = match self.shape {
            Shape::Body => listed.as_array(),
            Shape::ContentRaw => listed.get("values").and_then(Value::as_array),
        }?;
        items.iter().find_map(|c| {
            let text = match self.shape {
                Shape::Body => c.get("body"),
                Shape::ContentRaw => c.get("content").and_then(|x| x.get("raw")),
            }?;
            text.as_str()
                .filter(|t| t.contains(COMMENT_MARKER))
                .and(c.get("id"))
                .and_then(Value::as_u64)
        })
    }

    /// Edits our comment to `text`, or creates it. Failures are counted and logged by
    /// `http`; a failed listing falls back to creating a comment would risk duplicates, so
    /// it gives up instead.
    pub(crate) async fn upsert(
        &self,
        http: &mut HttpCore,
        auth: &Auth,
        headers: &HeaderMap,
        text: &str,
    ) {
        let list = Call::new(
            self.target,
            Method::GET,
            format!("{}{}", self.collection_url, self.list_query),
            Body::None,
        );
        let Ok(listed) = http.send(list, auth, headers).await else {
            return;
        };
        let call = match self.find(&listed) {
            Some(id) => Call::new(
                self.target,
                self.edit_method.clone(),
                format!("{}/{id}", self.item_base),
                Body::Json(self.body(text)),
            ),
            None => Call::new(
                self.target,
                Method::POST,
                self.collection_url.clone(),
                Body::Json(self.body(text)),
            ),
        };
        let _ = http.send(call, auth, headers).await;
    }
}
