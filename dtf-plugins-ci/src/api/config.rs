//! [`ApiConfig`]: which services [`crate::CiApiReporter`] talks to, and how.

use serde::{Deserialize, Serialize};

use crate::detect::Env;
use crate::error::CiError;
use crate::retry::RetryPolicy;
use dtf_plugin_core::Secret;

/// A service the API reporter can talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ApiService {
    /// GitHub: check run, commit status, pull-request comment.
    Github,
    /// GitLab: commit status, merge-request note.
    Gitlab,
    /// Azure DevOps: a test run with its results.
    AzureDevops,
    /// Bitbucket Cloud: commit build status, pull-request comment.
    Bitbucket,
    /// Jenkins: the build description.
    Jenkins,
    /// CircleCI: accepted, but no HTTP calls: CircleCI reads test results from the JUnit
    /// file a `store_test_results` step points at (configure [`crate::CiReporter`]'s `junit`).
    Circleci,
}

/// [`crate::CiApiReporter`]'s configuration. Every field is optional; the default talks to
/// no service.
///
/// Identifiers default to what the CI system's environment says (see each service's
/// fields); tokens come from the configuration or, more usually, the environment. Tokens are
/// [`Secret`]s: they deserialize from strings and are never serialized back.
///
/// ```
/// let cfg: dtf_plugins_ci::ApiConfig = serde_json::from_value(serde_json::json!({
///     "services": ["github"],
///     "update_interval_ms": 5000,
///     "github": { "base_url": "https://github.example.com/api/v3", "comment": false },
/// }))?;
/// assert_eq!(cfg.update_interval_ms, 5000);
/// assert!(!cfg.github.comment);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ApiConfig {
    /// The services to report to. Default: none.
    pub services: Vec<ApiService>,
    /// Live updates are sent at most once per this many milliseconds, coalescing whatever
    /// changed meanwhile. Default 10000 (10 s).
    pub update_interval_ms: u64,
    /// The time limit of one HTTP attempt, in milliseconds. Default 10000.
    pub request_timeout_ms: u64,
    /// How long the final report may take, retries included, in milliseconds; past it the
    /// remaining calls are abandoned (and logged) so that shutdown is never held up. Keep it
    /// under the manager's handler timeout (30 s by default). Default 20000.
    pub final_timeout_ms: u64,
    /// Retries of failed calls. Default [`RetryPolicy::default`].
    pub retry: RetryPolicy,
    /// The name of the check run, status context, status key. Default `dtf`.
    pub name: String,
    /// GitHub settings.
    pub github: GithubConfig,
    /// GitLab settings.
    pub gitlab: GitlabConfig,
    /// Azure DevOps settings.
    pub azure_devops: AzureDevopsConfig,
    /// Bitbucket settings.
    pub bitbucket: BitbucketConfig,
    /// Jenkins settings.
    pub jenkins: JenkinsConfig,
}

impl ApiConfig {
    /// Checks what serde cannot: every URL given (`github.base_url`, `gitlab.base_url`,
    /// `azure_devops.base_url`, `bitbucket.base_url`, `jenkins.build_url`) is an absolute
    /// `http` or `https` URL with a host, and no time setting is 0 (a final report with no
    /// time at all, every call timing out at once, or a live update after every event). The
    /// message names the key, never the value. The reporter checks it at every start and
    /// reconfiguration too, not only the registry.
    ///
    /// # Errors
    ///
    /// A message per bad setting, joined with `; `.
    pub fn validate(&self) -> Result<(), String> {
        let urls = [
            ("github.base_url", self.github.base_url.as_deref()),
            ("gitlab.base_url", self.gitlab.base_url.as_deref()),
            (
                "azure_devops.base_url",
                self.azure_devops.base_url.as_deref(),
            ),
            ("bitbucket.base_url", self.bitbucket.base_url.as_deref()),
            ("jenkins.build_url", self.jenkins.build_url.as_deref()),
        ];
        let mut problems: Vec<String> = urls
            .into_iter()
            .filter_map(|(key, url)| check_url(key, url?).err())
            .collect();
        for (key, ms) in [
            ("update_interval_ms", self.update_interval_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("final_timeout_ms", self.final_timeout_ms),
        ] {
            if ms == 0 {
                problems.push(format!("{key}: must be at least 1"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// `url` is an absolute `http`/`https` URL with a host; the error names `key`, never `url`
/// (it may carry a key or a token).
pub(crate) fn check_url(key: &str, url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!("{key}: not an http or https URL with a host")),
        Err(e) => Err(format!("{key}: not a URL ({e})")),
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            update_interval_ms: 10_000,
            request_timeout_ms: 10_000,
            final_timeout_ms: 20_000,
            retry: RetryPolicy::default(),
            name: super::DEFAULT_NAME.to_owned(),
            github: GithubConfig::default(),
            gitlab: GitlabConfig::default(),
            azure_devops: AzureDevopsConfig::default(),
            bitbucket: BitbucketConfig::default(),
            jenkins: JenkinsConfig::default(),
        }
    }
}

/// GitHub (github.com or GitHub Enterprise Server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GithubConfig {
    /// API base URL. Default `GITHUB_API_URL`, else `https://api.github.com` (Enterprise
    /// Server: `https://HOST/api/v3`).
    pub base_url: Option<String>,
    /// `owner/repo`. Default `GITHUB_REPOSITORY`.
    pub repository: Option<String>,
    /// The commit. Default the detected commit (`GITHUB_SHA`).
    pub sha: Option<String>,
    /// The pull request to comment on. Default the detected one.
    pub pull_request: Option<u64>,
    /// The token. Default `GITHUB_TOKEN`.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// Create and update a check run. Default true.
    pub checks: bool,
    /// Post commit statuses. Default true.
    pub status: bool,
    /// Keep one pull-request comment with the report up to date. Default true.
    pub comment: bool,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            repository: None,
            sha: None,
            pull_request: None,
            token: None,
            checks: true,
            status: true,
            comment: true,
        }
    }
}

/// GitLab (gitlab.com or self-managed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct GitlabConfig {
    /// Server URL (without `/api/v4`). Default `CI_SERVER_URL`, else `https://gitlab.com`.
    pub base_url: Option<String>,
    /// Project id or `group/project` path. Default `CI_PROJECT_ID`.
    pub project: Option<String>,
    /// The commit. Default the detected commit (`CI_COMMIT_SHA`).
    pub sha: Option<String>,
    /// The merge request IID to comment on. Default the detected one.
    pub merge_request: Option<u64>,
    /// The token, sent as `PRIVATE-TOKEN`. Default `GITLAB_TOKEN`, else `CI_JOB_TOKEN`
    /// (sent as `JOB-TOKEN`).
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// Post commit statuses. Default true.
    pub status: bool,
    /// Keep one merge-request note with the report up to date. Default true.
    pub note: bool,
}

impl Default for GitlabConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            project: None,
            sha: None,
            merge_request: None,
            token: None,
            status: true,
            note: true,
        }
    }
}

/// Azure DevOps (Services or Server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AzureDevopsConfig {
    /// The organization (collection) URL, e.g. `https://dev.azure.com/org`. Default
    /// `SYSTEM_COLLECTIONURI`.
    pub base_url: Option<String>,
    /// The project. Default `SYSTEM_TEAMPROJECT`.
    pub project: Option<String>,
    /// A personal access token (Basic auth with an empty user). Default
    /// `AZURE_DEVOPS_TOKEN`, else `SYSTEM_ACCESSTOKEN` (the pipeline's OAuth token, sent as
    /// Bearer).
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
}

/// Bitbucket Cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BitbucketConfig {
    /// API base URL. Default `https://api.bitbucket.org`.
    pub base_url: Option<String>,
    /// `workspace/repo`. Default `BITBUCKET_REPO_FULL_NAME`.
    pub repository: Option<String>,
    /// The commit. Default the detected commit (`BITBUCKET_COMMIT`).
    pub sha: Option<String>,
    /// The pull request to comment on. Default the detected one.
    pub pull_request: Option<u64>,
    /// An access token (Bearer). Default `BITBUCKET_TOKEN`.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
    /// Post build statuses. Default true.
    pub status: bool,
    /// Keep one pull-request comment with the report up to date. Default true.
    pub comment: bool,
}

impl Default for BitbucketConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            repository: None,
            sha: None,
            pull_request: None,
            token: None,
            status: true,
            comment: true,
        }
    }
}

/// Jenkins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct JenkinsConfig {
    /// The build's URL (`{job_url}/{build}/`). Default `BUILD_URL`.
    pub build_url: Option<String>,
    /// The user the API token belongs to. Default `JENKINS_USER`.
    pub user: Option<String>,
    /// The API token. Default `JENKINS_API_TOKEN`.
    #[serde(skip_serializing)]
    pub token: Option<Secret>,
}

/// The configured token, else the first environment variable of `vars` that is set, with
/// the index of that variable (`None` for a configured token). Surrounding whitespace is
/// trimmed (a token read from a file ends with a line break), and a token an HTTP header
/// cannot carry is refused here, naming where it came from: sent, it was dropped from the
/// request (GitLab's `PRIVATE-TOKEN`, then a 401 with no hint why) or failed every call.
pub(crate) fn token(
    service: &'static str,
    configured: Option<&Secret>,
    env: &Env,
    vars: &[&str],
) -> Result<(Secret, Option<usize>), CiError> {
    let checked = |t: &str, from: &dyn Fn() -> String| {
        let t = t.trim();
        match reqwest::header::HeaderValue::from_str(t) {
            Ok(_) => Ok(Secret::new(t.to_owned())),
            Err(_) => Err(CiError::BadToken {
                service,
                from: from(),
            }),
        }
    };
    if let Some(t) = configured.filter(|t| !t.expose().trim().is_empty()) {
        let token = checked(t.expose(), &|| format!("`{service}.token`"))?;
        return Ok((token, None));
    }
    let found = vars.iter().enumerate().find_map(|(i, v)| {
        env.get(*v)
            .filter(|s| !s.trim().is_empty())
            .map(|s| (i, *v, s))
    });
    match found {
        Some((i, var, s)) => Ok((checked(s, &|| format!("`{var}`"))?, Some(i))),
        None => Err(CiError::MissingToken {
            service,
            variables: vars.join(" or "),
        }),
    }
}
