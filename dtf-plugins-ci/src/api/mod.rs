//! The HTTP API clients: one module per service, sharing one core (`http`) that sends a
//! request with the shared [`crate::retry`] rules and counts the outcome per target in
//! [`ApiStats`], and one helper for a pull-request comment updated in place
//! (`comment::CommentThread`).
//!
//! Each service client has the same three moments, driven by [`crate::CiApiReporter`]:
//! `start` (coordinator startup: create the check run, post a pending status), `update`
//! (rate-limited progress) and `finish` (final report and verdict). A failed call is logged
//! and counted, never returned: the run goes on.

pub(crate) mod azure_devops;
pub(crate) mod bitbucket;
pub(crate) mod comment;
mod config;
pub(crate) mod github;
pub(crate) mod gitlab;
pub(crate) mod http;
pub(crate) mod jenkins;

pub(crate) use config::check_url;
pub use config::{
    ApiConfig, ApiService, AzureDevopsConfig, BitbucketConfig, GithubConfig, GitlabConfig,
    JenkinsConfig,
};
pub use http::{ApiStats, TargetStats};

use crate::detect::{CiInfo, Env};
use crate::error::CiError;
use crate::run::RunResult;
use http::HttpCore;

/// The hidden marker that identifies our pull-request comment, so a later run edits it (with
/// the default name; see [`comment_marker`]).
pub const COMMENT_MARKER: &str = "<!-- dtf-report -->";

/// The marker of the pull-request comment of the reporter named `name`: [`COMMENT_MARKER`]
/// for the default name, else one that carries the name, so that reporters of different
/// names (the shards of a parallel job, jobs of a matrix given a name each) keep a comment
/// each instead of overwriting one another's.
pub fn comment_marker(name: &str) -> String {
    if name == DEFAULT_NAME {
        COMMENT_MARKER.to_owned()
    } else {
        // An HTML comment cannot hold `--`.
        format!("<!-- dtf-report: {} -->", name.replace("--", "- -"))
    }
}

/// The default name of the check run, status context and comment.
pub(crate) const DEFAULT_NAME: &str = "dtf";

/// One configured service client.
#[derive(Debug)]
pub(crate) enum Client {
    Github(github::Github),
    Gitlab(gitlab::Gitlab),
    AzureDevops(azure_devops::AzureDevops),
    Bitbucket(bitbucket::Bitbucket),
    Jenkins(jenkins::Jenkins),
}

impl Client {
    pub(crate) async fn start(&mut self, http: &mut HttpCore, run: &RunResult) {
        match self {
            Self::Github(c) => c.start(http, run).await,
            Self::Gitlab(c) => c.start(http, run).await,
            Self::AzureDevops(c) => c.start(http, run).await,
            Self::Bitbucket(c) => c.start(http, run).await,
            Self::Jenkins(c) => c.update(http, run).await,
        }
    }

    pub(crate) async fn update(&mut self, http: &mut HttpCore, run: &RunResult) {
        match self {
            Self::Github(c) => c.update(http, run).await,
            Self::Gitlab(_) | Self::Bitbucket(_) => {}
            Self::AzureDevops(c) => c.update(http, run).await,
            Self::Jenkins(c) => c.update(http, run).await,
        }
    }

    pub(crate) async fn finish(&mut self, http: &mut HttpCore, run: &RunResult) {
        match self {
            Self::Github(c) => c.finish(http, run).await,
            Self::Gitlab(c) => c.finish(http, run).await,
            Self::AzureDevops(c) => c.finish(http, run).await,
            Self::Bitbucket(c) => c.finish(http, run).await,
            Self::Jenkins(c) => c.finish(http, run).await,
        }
    }
}

/// Builds the clients `config` selects, filling identifiers from `info` and tokens from
/// `env`.
///
/// # Errors
///
/// [`CiError::MissingToken`] naming the variables to set, or [`CiError::MissingSetting`]
/// when a repository, project, commit or URL can be found neither in the configuration nor
/// in the environment.
pub(crate) fn build_clients(
    config: &ApiConfig,
    info: &CiInfo,
    env: &Env,
) -> Result<Vec<Client>, CiError> {
    // A shard of a parallel job reports under a name of its own: under one name the shards'
    // statuses and comments overwrote one another, and the last one to end was the page's
    // verdict, hiding a failing shard behind a passing one.
    let sharded;
    let config = match info.shard {
        Some((i, n)) if config.name == DEFAULT_NAME => {
            sharded = ApiConfig {
                name: format!("{DEFAULT_NAME} ({i}/{n})"),
                ..config.clone()
            };
            &sharded
        }
        _ => config,
    };
    let mut clients = Vec::new();
    for service in &config.services {
        let client = match service {
            ApiService::Github => Client::Github(github::Github::new(config, info, env)?),
            ApiService::Gitlab => Client::Gitlab(gitlab::Gitlab::new(config, info, env)?),
            ApiService::AzureDevops => {
                Client::AzureDevops(azure_devops::AzureDevops::new(config, info, env)?)
            }
            ApiService::Bitbucket => {
                Client::Bitbucket(bitbucket::Bitbucket::new(config, info, env)?)
            }
            ApiService::Jenkins => Client::Jenkins(jenkins::Jenkins::new(config, info, env)?),
            // CircleCI has no API to write a commit status or test results: it reads the JUnit
            // file a `store_test_results` step points at (see docs/ci.md).
            ApiService::Circleci => continue,
        };
        clients.push(client);
    }
    Ok(clients)
}

/// The first non-empty of `configured` and the environment variables `vars`.
pub(crate) fn setting(configured: Option<&str>, env: &Env, vars: &[&str]) -> Option<String> {
    configured
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            vars.iter()
                .find_map(|v| env.get(*v).filter(|s| !s.is_empty()).cloned())
        })
}

/// Like [`setting`], or [`CiError::MissingSetting`] naming the key and the variables.
pub(crate) fn required(
    service: &'static str,
    key: &'static str,
    configured: Option<&str>,
    env: &Env,
    vars: &[&str],
) -> Result<String, CiError> {
    setting(configured, env, vars).ok_or_else(|| CiError::MissingSetting {
        service,
        key,
        variables: vars.join(" or "),
    })
}

/// `base` without a trailing slash.
pub(crate) fn trim_base(base: &str) -> String {
    base.trim_end_matches('/').to_owned()
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `s` cut to at most `max` bytes at a character boundary, with a marker when cut.
pub(crate) fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let marker = "\n\n… (cut to fit the service's limit)";
    let mut end = max.saturating_sub(marker.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}

/// The one-line verdict used in statuses and descriptions (e.g. `3 passed, 1 failed`).
pub(crate) fn one_line(run: &RunResult) -> String {
    let t = &run.totals;
    let mut parts = vec![format!("{} passed", t.passed)];
    for (n, what) in [
        (t.failed, "failed"),
        (t.flaky, "flaky"),
        (t.skipped, "skipped"),
        (t.cancelled, "cancelled"),
        (t.incomplete, "unfinished"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!("dtf: {} of {} tasks", parts.join(", "), t.tasks)
}

/// The Markdown of our pull-request comment: the marker, then the report.
pub(crate) fn comment_body(marker: &str, run: &RunResult, max: usize) -> String {
    cap(
        &format!("{marker}\n{}", crate::markdown::render_markdown(run)),
        max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(segment("group/sub project"), "group%2Fsub%20project");
        assert_eq!(segment("a-b_c.d~1"), "a-b_c.d~1");
    }

    #[test]
    fn caps_at_a_character_boundary() {
        let s = "é".repeat(100);
        let c = cap(&s, 80);
        assert!(c.len() <= 80 && c.ends_with("limit)"), "{c}");
        assert_eq!(cap("short", 80), "short");
    }
}
