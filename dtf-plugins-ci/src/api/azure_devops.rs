//! Azure DevOps: a test run (created `InProgress` at startup), its results added in batches
//! (passed and skipped tasks live, since they cannot change any more; the others at the
//! end, when retries are over), then set `Completed`.

use std::collections::HashSet;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::config::token;
use super::http::{Auth, Body, Call, HttpCore};
use super::{ApiConfig, cap, required, segment, trim_base};
use crate::detect::{CiInfo, Env};
use crate::error::CiError;
use crate::markdown::short;
use crate::run::{RunResult, TaskResult, TaskStatus, format_utc};

/// Results per request (Azure accepts up to 1000; smaller batches retry cheaper).
pub(crate) const RESULTS_PER_REQUEST: usize = 500;
const API_VERSION: &str = "api-version=7.1";

#[derive(Debug)]
pub(crate) struct AzureDevops {
    runs_url: String,
    name: String,
    build_id: Option<String>,
    auth: Auth,
    run_id: Option<u64>,
    /// Creating the test run failed on something that may pass later: tried again.
    create_again: bool,
    sent: HashSet<String>,
}

impl AzureDevops {
    pub(crate) fn new(config: &ApiConfig, info: &CiInfo, env: &Env) -> Result<Self, CiError> {
        let c = &config.azure_devops;
        let (token, from) = token(
            "azure-devops",
            c.token.as_ref(),
            env,
            &["AZURE_DEVOPS_TOKEN", "SYSTEM_ACCESSTOKEN"],
        )?;
        // A personal access token goes in Basic auth with an empty user; the pipeline's
        // System.AccessToken is an OAuth token and goes as Bearer.
        let auth = if from == Some(1) {
            Auth::Bearer(token)
        } else {
            Auth::Basic {
                user: String::new(),
                password: token,
            }
        };
        let base = required(
            "azure-devops",
            "base_url",
            c.base_url.as_deref(),
            env,
            &["SYSTEM_COLLECTIONURI"],
        )?;
        let project = required(
            "azure-devops",
            "project",
            c.project.as_deref(),
            env,
            &["SYSTEM_TEAMPROJECT"],
        )?;
        Ok(Self {
            runs_url: format!("{}/{}/_apis/test/runs", trim_base(&base), segment(&project)),
            name: config.name.clone(),
            build_id: info.build_id.clone(),
            auth,
            run_id: None,
            create_again: false,
            sent: HashSet::new(),
        })
    }

    async fn send(&self, http: &mut HttpCore, call: Call) -> Result<Value, CiError> {
        http.send(call, &self.auth, &HeaderMap::new()).await
    }

    pub(crate) async fn start(&mut self, http: &mut HttpCore, run: &RunResult) {
        self.create_run(http, run).await;
    }

    /// Creates the test run. When that fails on something that may pass later (Azure DevOps
    /// down, a rate limit), the next update and the final report try again: without a run,
    /// no result would ever reach the Tests tab.
    async fn create_run(&mut self, http: &mut HttpCore, run: &RunResult) {
        let mut body = json!({
            "name": format!("{} {}", self.name, run.run_id.as_deref().unwrap_or("run")),
            "automated": true,
            "state": "InProgress",
        });
        if let Some(t) = run.started_at {
            body["startDate"] = json!(format!("{}Z", format_utc(t)));
        }
        if let Some(id) = &self.build_id {
            body["build"] = json!({ "id": id });
        }
        let url = format!("{}?{API_VERSION}", self.runs_url);
        let created = self
            .send(
                http,
                Call::new("azure-devops.test-run", Method::POST, url, Body::Json(body)),
            )
            .await;
        let failed = created.is_err();
        self.run_id = http.answer_id("azure-devops.test-run", created);
        self.create_again = failed && http.last_failure_was_transient();
    }

    async fn add_results(&mut self, http: &mut HttpCore, run: &RunResult, all: bool) {
        if self.create_again {
            self.create_run(http, run).await;
        }
        let Some(id) = self.run_id else { return };
        let new: Vec<&TaskResult> = run
            .tasks
            .iter()
            .filter(|t| !self.sent.contains(&t.id))
            .filter(|t| all || matches!(t.status, TaskStatus::Passed | TaskStatus::Skipped))
            .collect();
        let url = format!("{}/{id}/results?{API_VERSION}", self.runs_url);
        for batch in new.chunks(RESULTS_PER_REQUEST) {
            let body = Value::Array(batch.iter().map(|t| result(t)).collect());
            let call = Call::new(
                "azure-devops.results",
                Method::POST,
                url.clone(),
                Body::Json(body),
            );
            // A failed batch is counted and logged; it is not resent, so the next update
            // does not grow without bound.
            let _ = self.send(http, call).await;
            self.sent.extend(batch.iter().map(|t| t.id.clone()));
        }
    }

    pub(crate) async fn update(&mut self, http: &mut HttpCore, run: &RunResult) {
        self.add_results(http, run, false).await;
    }

    pub(crate) async fn finish(&mut self, http: &mut HttpCore, run: &RunResult) {
        self.add_results(http, run, true).await;
        let Some(id) = self.run_id else { return };
        let mut body = json!({ "state": "Completed" });
        if let Some(t) = run.finished_at {
            body["completedDate"] = json!(format!("{}Z", format_utc(t)));
        }
        let url = format!("{}/{id}?{API_VERSION}", self.runs_url);
        let _ = self
            .send(
                http,
                Call::new(
                    "azure-devops.test-run",
                    Method::PATCH,
                    url,
                    Body::Json(body),
                ),
            )
            .await;
    }
}

/// One task as a `TestCaseResult`.
pub(crate) fn result(t: &TaskResult) -> Value {
    let outcome = match t.status {
        TaskStatus::Passed | TaskStatus::Flaky => "Passed",
        TaskStatus::Failed => "Failed",
        TaskStatus::Cancelled if t.was_interrupted() => "Aborted",
        TaskStatus::Skipped | TaskStatus::Cancelled => "NotExecuted",
        TaskStatus::Incomplete => "Aborted",
    };
    #[expect(
        clippy::cast_precision_loss,
        reason = "milliseconds of a test duration fit a double exactly"
    )]
    let ms = t.total_duration().as_millis() as f64;
    let mut r = json!({
        "testCaseTitle": t.name,
        "automatedTestName": t.name,
        "outcome": outcome,
        "state": "Completed",
        "durationInMs": ms,
    });
    if let Some(w) = t.worker() {
        r["computerName"] = json!(w);
    }
    if t.attempts.len() > 1 {
        r["comment"] = json!(format!(
            "{} after {} attempts",
            t.status.name(),
            t.attempts.len()
        ));
    }
    if let Some(f) = t.last_failure().filter(|_| t.status != TaskStatus::Flaky) {
        r["errorMessage"] = json!(short(
            &format!(
                "{}: {}",
                f.error_kind.as_deref().unwrap_or("failure"),
                f.message.as_deref().unwrap_or("")
            ),
            1000
        ));
        if !f.details.is_empty() {
            r["stackTrace"] = json!(cap(&f.details, 32_000));
        }
    }
    r
}
