//! A pull-request comment kept up to date in place: list the comments, find ours by
//! its marker ([`super::comment_marker`]), edit it if found, else create it. GitHub issue comments, GitLab
//! merge-request notes and Bitbucket pull-request comments differ only in URLs, the edit
//! method and the JSON shape, which [`CommentThread`] describes.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::http::{Auth, Body, Call, HttpCore};

/// Comments per listed page (what each service's `list_query` asks for).
pub(crate) const PAGE_SIZE: usize = 100;

/// Most pages of comments searched for ours.
pub(crate) const MAX_PAGES: u32 = 20;

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
    /// The query that asks for the largest page ([`PAGE_SIZE`] comments); `&page=N` is added
    /// for each page.
    pub(crate) list_query: &'static str,
    /// One comment's URL is `item_base/{id}`.
    pub(crate) item_base: String,
    pub(crate) edit_method: Method,
    pub(crate) shape: Shape,
    /// What identifies our comment ([`super::comment_marker`]).
    pub(crate) marker: String,
}

impl CommentThread {
    fn body(&self, text: &str) -> Value {
        match self.shape {
            Shape::Body => json!({ "body": text }),
            Shape::ContentRaw => json!({ "content": { "raw": text } }),
        }
    }

    /// The comments of one listed page.
    fn items<'a>(&self, listed: &'a Value) -> &'a [Value] {
        match self.shape {
            Shape::Body => listed.as_array(),
            Shape::ContentRaw => listed.get("values").and_then(Value::as_array),
        }
        .map_or(&[], Vec::as_slice)
    }

    /// Whether `listed` is the last page: Bitbucket says so by leaving out `next` (it may
    /// cut pages shorter than asked); GitHub and GitLab by a page shorter than asked.
    fn last_page(&self, listed: &Value) -> bool {
        match self.shape {
            Shape::Body => self.items(listed).len() < PAGE_SIZE,
            Shape::ContentRaw => listed.get("next").is_none_or(Value::is_null),
        }
    }

    /// The id of the first comment carrying our marker.
    fn find(&self, listed: &Value) -> Option<u64> {
        self.items(listed).iter().find_map(|c| {
            let text = match self.shape {
                Shape::Body => c.get("body"),
                Shape::ContentRaw => c.get("content").and_then(|x| x.get("raw")),
            }?;
            text.as_str()
                .filter(|t| t.contains(self.marker.as_str()))
                .and(c.get("id"))
                .and_then(Value::as_u64)
        })
    }

    /// Edits our comment to `text`, or creates it. Every page of comments is searched (up to
    /// [`MAX_PAGES`]): on a busy pull request ours is not on the first page (GitHub and
    /// Bitbucket list the oldest first), and creating another comment each run would notify
    /// everyone on it each time. Failures are counted and logged by `http`; a failed listing,
    /// or a thread longer than [`MAX_PAGES`] pages, gives up rather than risk a duplicate.
    pub(crate) async fn upsert(
        &self,
        http: &mut HttpCore,
        auth: &Auth,
        headers: &HeaderMap,
        text: &str,
    ) {
        let mut found = None;
        for page in 1..=MAX_PAGES {
            let list = Call::new(
                self.target,
                Method::GET,
                format!("{}{}&page={page}", self.collection_url, self.list_query),
                Body::None,
            );
            let Ok(listed) = http.send(list, auth, headers).await else {
                return;
            };
            found = self.find(&listed);
            if found.is_some() || self.last_page(&listed) {
                break;
            }
            if page == MAX_PAGES {
                tracing::warn!(
                    target = self.target,
                    pages = MAX_PAGES,
                    "the pull request has more comments than are searched; the report comment \
                     is not posted, to avoid a duplicate"
                );
                return;
            }
        }
        let call = match found {
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
