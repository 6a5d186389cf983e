//! GitLab: a commit status (`running`, then `success`/`failed`) and a merge-request note
//! edited in place.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::json;

use super::comment::{CommentThread, Shape};
use super::config::token;
use super::http::{Auth, Body, Call, HttpCore};
use super::{ApiConfig, comment_body, one_line, required, segment, setting, trim_base};
use crate::detect::{CiInfo, CiSystem, Env};
use crate::error::CiError;
use crate::markdown::short;
use crate::run::{RunResult, Verdict};

/// GitLab's note limit is 1,000,000 characters; stay well under it.
const NOTE_LIMIT: usize = 1_000_000;

#[derive(Debug)]
pub(crate) struct Gitlab {
    api: String,
    sha: Option<String>,
    branch: Option<String>,
    name: String,
    target_url: Option<String>,
    /// The pipeline the status belongs to (`CI_PIPELINE_ID`): a merge-request pipeline's ref
    /// is not the branch, and without it GitLab files the status under another pipeline,
    /// which the merge request does not show. Only with the detected commit (not a `sha`
    /// setting, which may name another one).
    pipeline: Option<u64>,
    auth: Auth,
    note: Option<CommentThread>,
}

impl Gitlab {
    pub(crate) fn new(config: &ApiConfig, info: &CiInfo, env: &Env) -> Result<Self, CiError> {
        let c = &config.gitlab;
        let (token, from) = token(
            "gitlab",
            c.token.as_ref(),
            env,
            &["GITLAB_TOKEN", "CI_JOB_TOKEN"],
        )?;
        // A job token authenticates with its own header.
        let auth = if from == Some(1) {
            Auth::Header("job-token", token)
        } else {
            Auth::Header("private-token", token)
        };
        let base = setting(c.base_url.as_deref(), env, &["CI_SERVER_URL"])
            .unwrap_or_else(|| "https://gitlab.com".to_owned());
        let project = required(
            "gitlab",
            "project",
            c.project.as_deref(),
            env,
            &["CI_PROJECT_ID"],
        )?;
        let api = format!("{}/api/v4/projects/{}", trim_base(&base), segment(&project));
        let sha = c.sha.clone().or_else(|| info.commit.clone());
        if c.status && sha.is_none() {
            return Err(CiError::MissingSetting {
                service: "gitlab",
                key: "sha",
                variables: "CI_COMMIT_SHA".to_owned(),
            });
        }
        let note = c
            .merge_request
            .or(info.pull_request)
            .filter(|_| c.note)
            .map(|iid| {
                let notes = format!("{api}/merge_requests/{iid}/notes");
                CommentThread {
                    target: "gitlab.note",
                    collection_url: notes.clone(),
                    list_query: "?per_page=100",
                    item_base: notes,
                    edit_method: Method::PUT,
                    shape: Shape::Body,
                    marker: super::comment_marker(&config.name),
                }
            });
        Ok(Self {
            api,
            sha: sha.filter(|_| c.status),
            branch: info.branch.clone(),
            name: config.name.clone(),
            target_url: info.build_url.clone(),
            pipeline: (c.sha.is_none() && info.system == CiSystem::Gitlab)
                .then(|| info.build_id.as_deref()?.trim().parse().ok())
                .flatten(),
            auth,
            note,
        })
    }

    async fn status(&self, http: &mut HttpCore, state: &str, description: &str) {
        let Some(sha) = &self.sha else { return };
        let mut body = json!({
            "state": state,
            "name": self.name,
            "description": short(description, 255),
        });
        if let Some(url) = &self.target_url {
            body["target_url"] = json!(url);
        }
        if let Some(branch) = &self.branch {
            body["ref"] = json!(branch);
        }
        if let Some(id) = self.pipeline {
            body["pipeline_id"] = json!(id);
        }
        let url = format!("{}/statuses/{}", self.api, segment(sha));
        let call = Call::new("gitlab.status", Method::POST, url, Body::Json(body));
        let _ = http.send(call, &self.auth, &HeaderMap::new()).await;
    }

    pub(crate) async fn start(&mut self, http: &mut HttpCore, _run: &RunResult) {
        self.status(http, "running", "dtf: running").await;
    }

    pub(crate) async fn finish(&mut self, http: &mut HttpCore, run: &RunResult) {
        let state = match run.verdict() {
            Verdict::Passed => "success",
            Verdict::Cancelled => "canceled",
            _ => "failed",
        };
        self.status(http, state, &one_line(run)).await;
        if let Some(note) = &self.note {
            note.upsert(
                http,
                &self.auth,
                &HeaderMap::new(),
                &comment_body(&note.marker, run, NOTE_LIMIT),
            )
            .await;
        }
    }
}
