//! GitHub: a check run (created `in_progress` at startup, its output updated live, its
//! annotations sent 50 per request, completed with `success`/`failure`), a commit status
//! (`pending`, then `success`/`failure`), and a pull-request comment edited in place.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::comment::{CommentThread, Shape};
use super::config::token;
use super::http::{Auth, Body, Call, HttpCore, headers};
use super::{ApiConfig, cap, comment_body, one_line, required, segment, trim_base};
use crate::detect::{CiInfo, Env};
use crate::error::CiError;
use crate::markdown::{render_markdown, render_progress, short};
use crate::run::{RunResult, TaskStatus, Verdict, format_utc};

/// The Checks API takes at most 50 annotations per request.
pub(crate) const ANNOTATIONS_PER_REQUEST: usize = 50;
/// GitHub's limit on `output.summary` and comment bodies.
const TEXT_LIMIT: usize = 65_535;
/// Calls of the token's rate limit that live updates leave to the final report: below this
/// many left (`X-RateLimit-Remaining`, until `X-RateLimit-Reset`), live updates pause. The
/// final report needs a few (the conclusion, the commit status, annotations 50 per call, the
/// comment), and a `GITHUB_TOKEN` shares its 1,000 calls an hour with every job of the
/// repository.
pub(crate) const LIVE_RESERVE: u64 = 100;

#[derive(Debug)]
pub(crate) struct Github {
    api: String,
    sha: Option<String>,
    name: String,
    details_url: Option<String>,
    auth: Auth,
    headers: HeaderMap,
    checks: bool,
    status: bool,
    comment: Option<CommentThread>,
    check_run: Option<u64>,
    /// Creating the check run failed on something that may pass later: tried again.
    create_again: bool,
    /// Live updates are paused for the rate limit ([`LIVE_RESERVE`]): said once per pause.
    paused: bool,
}

impl Github {
    pub(crate) fn new(config: &ApiConfig, info: &CiInfo, env: &Env) -> Result<Self, CiError> {
        let c = &config.github;
        let (token, _) = token("github", c.token.as_ref(), env, &["GITHUB_TOKEN"])?;
        let base = super::setting(c.base_url.as_deref(), env, &["GITHUB_API_URL"])
            .unwrap_or_else(|| "https://api.github.com".to_owned());
        let repo = required(
            "github",
            "repository",
            c.repository.as_deref(),
            env,
            &["GITHUB_REPOSITORY"],
        )?;
        let (owner, name) = repo.split_once('/').ok_or(CiError::MissingSetting {
            service: "github",
            key: "repository (as owner/repo)",
            variables: "GITHUB_REPOSITORY".to_owned(),
        })?;
        let api = format!(
            "{}/repos/{}/{}",
            trim_base(&base),
            segment(owner),
            segment(name)
        );
        let sha = c.sha.clone().or_else(|| info.commit.clone());
        if (c.checks || c.status) && sha.is_none() {
            return Err(CiError::MissingSetting {
                service: "github",
                key: "sha",
                variables: "GITHUB_SHA".to_owned(),
            });
        }
        let pr = c.pull_request.or(info.pull_request).filter(|_| c.comment);
        let comment = pr.map(|n| CommentThread {
            target: "github.comment",
            collection_url: format!("{api}/issues/{n}/comments"),
            list_query: "?per_page=100",
            item_base: format!("{api}/issues/comments"),
            edit_method: Method::PATCH,
            shape: Shape::Body,
            marker: super::comment_marker(&config.name),
        });
        Ok(Self {
            api,
            sha,
            name: config.name.clone(),
            details_url: info.build_url.clone(),
            auth: Auth::Bearer(token),
            headers: headers(&[
                ("accept", "application/vnd.github+json"),
                ("x-github-api-version", "2022-11-28"),
            ]),
            checks: c.checks,
            status: c.status,
            comment,
            check_run: None,
            create_again: false,
            paused: false,
        })
    }

    async fn send(&self, http: &mut HttpCore, call: Call) -> Result<Value, CiError> {
        http.send(call, &self.auth, &self.headers).await
    }

    async fn post_status(&self, http: &mut HttpCore, state: &str, description: &str) {
        let (true, Some(sha)) = (self.status, &self.sha) else {
            return;
        };
        let mut body = json!({
            "state": state,
            "description": short(description, 140),
            "context": self.name,
        });
        if let Some(url) = &self.details_url {
            body["target_url"] = json!(url);
        }
        let url = format!("{}/statuses/{}", self.api, segment(sha));
        let _ = self
            .send(
                http,
                Call::new("github.status", Method::POST, url, Body::Json(body)),
            )
            .await;
    }

    pub(crate) async fn start(&mut self, http: &mut HttpCore, run: &RunResult) {
        self.create_check_run(http, run).await;
        self.post_status(http, "pending", "dtf: running").await;
    }

    /// Creates the check run (`in_progress`). When that fails on something that may pass
    /// later (GitHub down, a rate limit), the next update and the final report try again:
    /// without a check run, the run's verdict would never be shown.
    async fn create_check_run(&mut self, http: &mut HttpCore, run: &RunResult) {
        self.create_again = false;
        if let (true, Some(sha)) = (self.checks, &self.sha) {
            let mut body = json!({
                "name": self.name,
                "head_sha": sha,
                "status": "in_progress",
                "output": { "title": "dtf: running", "summary": "The run has started." },
            });
            if let Some(t) = run.started_at {
                body["started_at"] = json!(format!("{}Z", format_utc(t)));
            }
            if let Some(id) = &run.run_id {
                body["external_id"] = json!(id);
            }
            if let Some(url) = &self.details_url {
                body["details_url"] = json!(url);
            }
            let url = format!("{}/check-runs", self.api);
            let created = self
                .send(
                    http,
                    Call::new("github.check-run", Method::POST, url, Body::Json(body)),
                )
                .await;
            let failed = created.is_err();
            self.check_run = http.answer_id("github.check-run", created);
            self.create_again = failed && http.last_failure_was_transient();
        }
    }

    /// The check run's output: a live one while the run goes on, the final one with its
    /// verdict at the end.
    fn output(run: &RunResult, annotations: &[Value], live: bool) -> Value {
        let summary = if live {
            render_progress(run)
        } else {
            render_markdown(run)
        };
        json!({
            "title": one_line(run),
            "summary": cap(&summary, TEXT_LIMIT),
            "annotations": annotations,
        })
    }

    /// Live progress: the check run's title and summary (annotations wait for the end,
    /// because a failed task may still pass on a retry and annotations cannot be removed).
    pub(crate) async fn update(&mut self, http: &mut HttpCore, run: &RunResult) {
        // Paused, not even a failed creation is tried again here: the final report tries it.
        match http.rate_low("github", LIVE_RESERVE) {
            Some(remaining) => {
                if !self.paused {
                    tracing::warn!(
                        remaining,
                        reserve = LIVE_RESERVE,
                        "GitHub's rate limit is nearly spent: live updates pause until it resets; the final report keeps its calls"
                    );
                    self.paused = true;
                }
                return;
            }
            None if self.paused => {
                tracing::info!("GitHub's rate limit has room again: live updates resume");
                self.paused = false;
            }
            None => {}
        }
        if self.create_again {
            self.create_check_run(http, run).await;
        }
        let Some(id) = self.check_run else { return };
        let url = format!("{}/check-runs/{id}", self.api);
        let body = json!({ "output": Self::output(run, &[], true) });
        let _ = self.send(http, patch(&url, body).once()).await;
    }

    pub(crate) async fn finish(&mut self, http: &mut HttpCore, run: &RunResult) {
        if self.create_again {
            self.create_check_run(http, run).await;
        }
        let verdict = run.verdict();
        let annotations = annotations(run);
        let mut batches = annotations.chunks(ANNOTATIONS_PER_REQUEST);
        let url = self
            .check_run
            .map(|id| format!("{}/check-runs/{id}", self.api));
        // The verdicts first (the check run's conclusion with the first annotations, then the
        // commit status), the rest after: if the final report runs out of time, what is cut
        // is annotations, never the verdict (a check run left "in progress" for good).
        if let Some(url) = &url {
            let mut body = json!({
                "status": "completed",
                "conclusion": match verdict {
                    Verdict::Passed => "success",
                    Verdict::Cancelled => "cancelled",
                    Verdict::TimedOut => "timed_out",
                    _ => "failure",
                },
                "output": Self::output(run, batches.next().unwrap_or(&[]), false),
            });
            if let Some(t) = run.finished_at {
                body["completed_at"] = json!(format!("{}Z", format_utc(t)));
            }
            let _ = self.send(http, patch(url, body)).await;
        }
        // A commit status has no "cancelled": a run that did not get to its end is an error.
        let state = match verdict {
            Verdict::Passed => "success",
            Verdict::Cancelled | Verdict::TimedOut => "error",
            _ => "failure",
        };
        self.post_status(http, state, &one_line(run)).await;
        // Annotations accumulate over updates, also on a completed check run.
        if let Some(url) = &url {
            for batch in batches {
                let body = json!({ "output": Self::output(run, batch, false) });
                let _ = self.send(http, patch(url, body)).await;
            }
        }
        if let Some(thread) = &self.comment {
            thread
                .upsert(
                    http,
                    &self.auth,
                    &self.headers,
                    &comment_body(&thread.marker, run, TEXT_LIMIT),
                )
                .await;
        }
    }
}

/// A `PATCH` of the check run at `url` with `body`.
fn patch(url: &str, body: Value) -> Call {
    Call::new(
        "github.check-run",
        Method::PATCH,
        url.to_owned(),
        Body::Json(body),
    )
}

/// One annotation per failed, unfinished or flaky task that names a `file` in its metadata
/// (GitHub requires a path; the others are in the summary).
pub(crate) fn annotations(run: &RunResult) -> Vec<Value> {
    run.tasks
        .iter()
        .filter_map(|t| {
            let level = match t.status {
                TaskStatus::Failed | TaskStatus::Incomplete => "failure",
                TaskStatus::Flaky => "warning",
                _ => return None,
            };
            let path = t.metadata.get("file")?;
            let line: u64 = t
                .metadata
                .get("line")
                .and_then(|l| l.parse().ok())
                .unwrap_or(1);
            let failure = t.last_failure();
            let message = failure
                .map(|a| {
                    format!(
                        "{}: {}",
                        a.error_kind.as_deref().unwrap_or("failure"),
                        a.message.as_deref().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| format!("{} is {}", t.name, t.status.name()));
            let mut a = json!({
                "path": path,
                "start_line": line,
                "end_line": line,
                "annotation_level": level,
                "title": short(&t.name, 255),
                "message": cap(&message, 60_000),
            });
            if let Some(f) = failure.filter(|f| !f.details.is_empty()) {
                a["raw_details"] = json!(cap(&f.details, 60_000));
            }
            Some(a)
        })
        .collect()
}
