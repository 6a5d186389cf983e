//! Bitbucket Cloud: a commit build status (`INPROGRESS`, then `SUCCESSFUL`/`FAILED`) and a
//! pull-request comment edited in place.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::json;

use super::comment::{CommentThread, Shape};
use super::config::token;
use super::http::{Auth, Body, Call, HttpCore};
use super::{ApiConfig, comment_body, one_line, required, segment, setting, trim_base};
use crate::detect::{CiInfo, Env};
use crate::error::CiError;
use crate::markdown::short;
use crate::run::{RunResult, Verdict};

/// Bitbucket's comment limit is not documented; 32 KiB renders reliably.
const COMMENT_LIMIT: usize = 32_768;

#[derive(Debug)]
pub(crate) struct Bitbucket {
    status_url: Option<String>,
    name: String,
    url: String,
    auth: Auth,
    comment: Option<CommentThread>,
}

impl Bitbucket {
    pub(crate) fn new(config: &ApiConfig, info: &CiInfo, env: &Env) -> Result<Self, CiError> {
        let c = &config.bitbucket;
        let (token, _) = token("bitbucket", c.token.as_ref(), env, &["BITBUCKET_TOKEN"])?;
        let base = setting(c.base_url.as_deref(), env, &[])
            .unwrap_or_else(|| "https://api.bitbucket.org".to_owned());
        let repo = required(
            "bitbucket",
            "repository",
            c.repository.as_deref(),
            env,
            &["BITBUCKET_REPO_FULL_NAME"],
        )?;
        let (ws, slug) = repo.split_once('/').ok_or(CiError::MissingSetting {
            service: "bitbucket",
            key: "repository (as workspace/repo)",
            variables: "BITBUCKET_REPO_FULL_NAME".to_owned(),
        })?;
        let api = format!(
            "{}/2.0/repositories/{}/{}",
            trim_base(&base),
            segment(ws),
            segment(slug)
        );
        let sha = c.sha.clone().or_else(|| info.commit.clone());
        if c.status && sha.is_none() {
            return Err(CiError::MissingSetting {
                service: "bitbucket",
                key: "sha",
                variables: "BITBUCKET_COMMIT".to_owned(),
            });
        }
        // Bitbucket requires a URL on every status; without a build page, link the commit.
        let url = info.build_url.clone().unwrap_or_else(|| {
            format!(
                "https://bitbucket.org/{repo}/commits/{}",
                sha.as_deref().unwrap_or_default()
            )
        });
        let comment = c
            .pull_request
            .or(info.pull_request)
            .filter(|_| c.comment)
            .map(|id| {
                let comments = format!("{api}/pullrequests/{id}/comments");
                CommentThread {
                    target: "bitbucket.comment",
                    collection_url: comments.clone(),
                    list_query: "?pagelen=100",
                    item_base: comments,
                    edit_method: Method::PUT,
                    shape: Shape::ContentRaw,
                    marker: super::comment_marker(&config.name),
                }
            });
        Ok(Self {
            status_url: sha
                .filter(|_| c.status)
                .map(|sha| format!("{api}/commit/{}/statuses/build", segment(&sha))),
            name: config.name.clone(),
            url,
            auth: Auth::Bearer(token),
            comment,
        })
    }

    async fn status(&self, http: &mut HttpCore, state: &str, description: &str) {
        let Some(status_url) = &self.status_url else {
            return;
        };
        let body = json!({
            "type": "commitstatus",
            "key": self.name,
            "state": state,
            "name": self.name,
            "url": self.url,
            "description": short(description, 255),
        });
        let call = Call::new(
            "bitbucket.status",
            Method::POST,
            status_url.clone(),
            Body::Json(body),
        );
        let _ = http.send(call, &self.auth, &HeaderMap::new()).await;
    }

    pub(crate) async fn start(&mut self, http: &mut HttpCore, _run: &RunResult) {
        self.status(http, "INPROGRESS", "dtf: running").await;
    }

    pub(crate) async fn finish(&mut self, http: &mut HttpCore, run: &RunResult) {
        let state = match run.verdict() {
            Verdict::Passed => "SUCCESSFUL",
            Verdict::Cancelled => "STOPPED",
            _ => "FAILED",
        };
        self.status(http, state, &one_line(run)).await;
        if let Some(thread) = &self.comment {
            thread
                .upsert(
                    http,
                    &self.auth,
                    &HeaderMap::new(),
                    &comment_body(&thread.marker, run, COMMENT_LIMIT),
                )
                .await;
        }
    }
}
