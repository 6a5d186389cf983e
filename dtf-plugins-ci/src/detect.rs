//! Which CI system is running us, and what it says about the build.
//!
//! [`detect`] is a pure function of an environment passed in as a map, so it is tested without
//! touching the process environment; [`detect_from_process_env`] is the convenience wrapper.
//! The variables read per system are listed in `docs/ci.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CiError;

/// An environment: variable name to value. Empty values count as absent.
pub type Env = BTreeMap<String, String>;

/// A CI system dtf knows how to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CiSystem {
    /// Not in CI (or `CI=false`).
    Local,
    /// GitHub Actions.
    GithubActions,
    /// GitLab CI/CD.
    Gitlab,
    /// Jenkins.
    Jenkins,
    /// Azure Pipelines (Azure DevOps).
    AzureDevops,
    /// CircleCI.
    Circleci,
    /// Bitbucket Pipelines.
    Bitbucket,
    /// JetBrains TeamCity.
    Teamcity,
    /// Buildkite.
    Buildkite,
    /// Travis CI.
    Travis,
}

impl CiSystem {
    /// Every system, in the order [`detect`] tries them (`Local` last).
    pub const ALL: &'static [CiSystem] = &[
        Self::GithubActions,
        Self::Gitlab,
        Self::AzureDevops,
        Self::Circleci,
        Self::Bitbucket,
        Self::Buildkite,
        Self::Travis,
        Self::Teamcity,
        Self::Jenkins,
        Self::Local,
    ];

    /// The canonical name, as accepted by [`CiSystem::from_str`] (e.g. `github-actions`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::GithubActions => "github-actions",
            Self::Gitlab => "gitlab",
            Self::Jenkins => "jenkins",
            Self::AzureDevops => "azure-devops",
            Self::Circleci => "circleci",
            Self::Bitbucket => "bitbucket",
            Self::Teamcity => "teamcity",
            Self::Buildkite => "buildkite",
            Self::Travis => "travis",
        }
    }

    /// Whether this system's own marker variables are present in `env`.
    fn matches(self, env: &Env) -> bool {
        let is =
            |key: &str, want: &str| get(env, key).is_some_and(|v| v.eq_ignore_ascii_case(want));
        let has = |key: &str| get(env, key).is_some();
        match self {
            Self::Local => true,
            Self::GithubActions => is("GITHUB_ACTIONS", "true"),
            Self::Gitlab => has("GITLAB_CI"),
            Self::Jenkins => has("JENKINS_URL") || has("JENKINS_HOME"),
            Self::AzureDevops => is("TF_BUILD", "true"),
            Self::Circleci => is("CIRCLECI", "true"),
            Self::Bitbucket => has("BITBUCKET_BUILD_NUMBER"),
            Self::Teamcity => has("TEAMCITY_VERSION"),
            Self::Buildkite => is("BUILDKITE", "true"),
            Self::Travis => is("TRAVIS", "true"),
        }
    }
}

impl fmt::Display for CiSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CiSystem {
    type Err = CiError;

    /// Parses a canonical name or a common alias (`github`, `azure`, `azure-pipelines`,
    /// `circle`, `bitbucket-pipelines`, `travis-ci`, `none`), case-insensitively, with `_` or
    /// `-`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        let alias = match norm.as_str() {
            "github" | "gh" => Some(Self::GithubActions),
            "gitlab-ci" => Some(Self::Gitlab),
            "azure" | "azure-pipelines" | "ado" => Some(Self::AzureDevops),
            "circle" | "circle-ci" => Some(Self::Circleci),
            "bitbucket-pipelines" => Some(Self::Bitbucket),
            "team-city" => Some(Self::Teamcity),
            "travis-ci" => Some(Self::Travis),
            "none" => Some(Self::Local),
            _ => None,
        };
        alias
            .or_else(|| Self::ALL.iter().copied().find(|sys| sys.name() == norm))
            .ok_or_else(|| CiError::UnknownSystem {
                name: s.to_owned(),
                valid: Self::ALL
                    .iter()
                    .map(|sys| sys.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// What the CI system says about the current build. Fields the system does not expose are
/// `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CiInfo {
    /// The system.
    pub system: CiSystem,
    /// The build (run, pipeline) identifier.
    pub build_id: Option<String>,
    /// A link to the build's page.
    pub build_url: Option<String>,
    /// The commit being built. For a GitHub Actions pull-request build it is the pull
    /// request's head commit (from the event file), where GitHub shows checks and statuses:
    /// `GITHUB_SHA` is then a merge commit that the pull request does not show.
    pub commit: Option<String>,
    /// The branch being built (the source branch for pull requests, where known).
    pub branch: Option<String>,
    /// The pull (merge) request number, when the build is for one.
    pub pull_request: Option<u64>,
    /// The job (step, stage) name.
    pub job: Option<String>,
    /// Which of the copies of a parallel job this is, `(index from 1, total)`, where the
    /// system says (GitLab `parallel:`, Azure DevOps `parallel`, Bitbucket parallel steps,
    /// CircleCI `parallelism`, Buildkite `parallelism`); `None` for a job that runs once.
    /// GitHub Actions does not say which matrix entry a job is.
    pub shard: Option<(u32, u32)>,
}

impl CiInfo {
    /// Information for a local run: system [`CiSystem::Local`], every other field `None`.
    pub fn local() -> Self {
        Self {
            system: CiSystem::Local,
            build_id: None,
            build_url: None,
            commit: None,
            branch: None,
            pull_request: None,
            job: None,
            shard: None,
        }
    }

    /// Reads `system`'s variables from `env` without checking that the system is the one
    /// running (to force a system, e.g. from a `--ci jenkins` option).
    pub fn from_env(system: CiSystem, env: &Env) -> Self {
        let v = |key: &str| get(env, key).map(str::to_owned);
        let first = |keys: &[&str]| keys.iter().find_map(|k| v(k));
        let num = |key: &str| get(env, key).and_then(|s| s.trim().parse::<u64>().ok());
        // `(index, total)` from the variables naming them, the index counted from `base`; a
        // job that is one of one is no shard.
        let shard = |index: &str, total: &str, base: u64| {
            let (i, n) = (num(index)?, num(total)?);
            let i = i.checked_add(1 - base)?;
            ((1..=n).contains(&i) && n > 1)
                .then(|| Some((u32::try_from(i).ok()?, u32::try_from(n).ok()?)))
                .flatten()
        };
        let mut info = Self {
            system,
            ..Self::local()
        };
        match system {
            CiSystem::Local => {}
            CiSystem::GithubActions => {
                info.build_id = v("GITHUB_RUN_ID");
                info.build_url = match (
                    get(env, "GITHUB_SERVER_URL"),
                    get(env, "GITHUB_REPOSITORY"),
                    get(env, "GITHUB_RUN_ID"),
                ) {
                    (Some(server), Some(repo), Some(run)) => Some(format!(
                        "{}/{repo}/actions/runs/{run}",
                        server.trim_end_matches('/')
                    )),
                    _ => None,
                };
                info.commit = github_pr_head(env).or_else(|| v("GITHUB_SHA"));
                info.branch = first(&["GITHUB_HEAD_REF", "GITHUB_REF_NAME"]);
                info.pull_request = get(env, "GITHUB_REF").and_then(github_pr_number);
                info.job = v("GITHUB_JOB");
            }
            CiSystem::Gitlab => {
                info.build_id = v("CI_PIPELINE_ID");
                info.build_url = v("CI_PIPELINE_URL");
                info.commit = v("CI_COMMIT_SHA");
                info.branch = first(&["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "CI_COMMIT_REF_NAME"]);
                info.pull_request = num("CI_MERGE_REQUEST_IID");
                info.job = v("CI_JOB_NAME");
                info.shard = shard("CI_NODE_INDEX", "CI_NODE_TOTAL", 1);
            }
            CiSystem::Jenkins => {
                info.build_id = first(&["BUILD_ID", "BUILD_NUMBER"]);
                info.build_url = v("BUILD_URL");
                info.commit = v("GIT_COMMIT");
                // BRANCH_NAME comes from multibranch pipelines and is the plain name; the git
                // plugin's GIT_BRANCH carries the remote (`origin/main`).
                info.branch = v("BRANCH_NAME").or_else(|| {
                    get(env, "GIT_BRANCH")
                        .map(|b| b.strip_prefix("origin/").unwrap_or(b).to_owned())
                });
                info.pull_request = num("CHANGE_ID");
                info.job = v("JOB_NAME");
            }
            CiSystem::AzureDevops => {
                info.build_id = v("BUILD_BUILDID");
                info.build_url = match (
                    get(env, "SYSTEM_COLLECTIONURI"),
                    get(env, "SYSTEM_TEAMPROJECT"),
                    get(env, "BUILD_BUILDID"),
                ) {
                    (Some(collection), Some(project), Some(id)) => Some(format!(
                        "{}/{}/_build/results?buildId={id}",
                        collection.trim_end_matches('/'),
                        project.replace(' ', "%20")
                    )),
                    _ => None,
                };
                info.commit = v("BUILD_SOURCEVERSION");
                info.branch = get(env, "SYSTEM_PULLREQUEST_SOURCEBRANCH")
                    .map(|b| b.strip_prefix("refs/heads/").unwrap_or(b).to_owned())
                    .or_else(|| v("BUILD_SOURCEBRANCHNAME"));
                info.pull_request = num("SYSTEM_PULLREQUEST_PULLREQUESTNUMBER")
                    .or_else(|| num("SYSTEM_PULLREQUEST_PULLREQUESTID"));
                info.job = v("AGENT_JOBNAME");
                info.shard = shard("SYSTEM_JOBPOSITIONINPHASE", "SYSTEM_TOTALJOBSINPHASE", 1);
            }
            CiSystem::Circleci => {
                info.build_id = v("CIRCLE_BUILD_NUM");
                info.build_url = v("CIRCLE_BUILD_URL");
                info.commit = v("CIRCLE_SHA1");
                info.branch = v("CIRCLE_BRANCH");
                info.pull_request = num("CIRCLE_PR_NUMBER")
                    .or_else(|| get(env, "CIRCLE_PULL_REQUEST").and_then(last_number_segment));
                info.job = v("CIRCLE_JOB");
                info.shard = shard("CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL", 0);
            }
            CiSystem::Bitbucket => {
                let build = get(env, "BITBUCKET_BUILD_NUMBER");
                info.build_id = build.map(str::to_owned);
                info.build_url = match (build, get(env, "BITBUCKET_REPO_FULL_NAME")) {
                    (Some(n), Some(repo)) => Some(format!(
                        "https://bitbucket.org/{repo}/pipelines/results/{n}"
                    )),
                    (Some(n), None) => get(env, "BITBUCKET_GIT_HTTP_ORIGIN").map(|origin| {
                        format!("{}/pipelines/results/{n}", origin.trim_end_matches('/'))
                    }),
                    _ => None,
                };
                info.commit = v("BITBUCKET_COMMIT");
                info.branch = v("BITBUCKET_BRANCH");
                info.pull_request = num("BITBUCKET_PR_ID");
                info.job = v("BITBUCKET_STEP_UUID");
                info.shard = shard(
                    "BITBUCKET_PARALLEL_STEP",
                    "BITBUCKET_PARALLEL_STEP_COUNT",
                    0,
                );
            }
            CiSystem::Teamcity => {
                info.build_id = v("BUILD_NUMBER");
                info.commit = v("BUILD_VCS_NUMBER");
                info.job = v("TEAMCITY_BUILDCONF_NAME");
            }
            CiSystem::Buildkite => {
                info.build_id = first(&["BUILDKITE_BUILD_NUMBER", "BUILDKITE_BUILD_ID"]);
                info.build_url = v("BUILDKITE_BUILD_URL");
                info.commit = v("BUILDKITE_COMMIT");
                info.branch = v("BUILDKITE_BRANCH");
                // "false" when the build is not for a pull request.
                info.pull_request = num("BUILDKITE_PULL_REQUEST");
                info.job = first(&["BUILDKITE_LABEL", "BUILDKITE_STEP_KEY"]);
                info.shard = shard("BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT", 0);
            }
            CiSystem::Travis => {
                info.build_id = v("TRAVIS_BUILD_ID");
                info.build_url = v("TRAVIS_BUILD_WEB_URL");
                info.commit = v("TRAVIS_COMMIT");
                info.branch = first(&["TRAVIS_PULL_REQUEST_BRANCH", "TRAVIS_BRANCH"]);
                info.pull_request = num("TRAVIS_PULL_REQUEST");
                info.job = first(&["TRAVIS_JOB_NAME", "TRAVIS_JOB_NUMBER"]);
            }
        }
        info
    }
}

/// Detects the CI system from `env` and reads what it says about the build.
///
/// `CI=false` (or `CI=0`) forces [`CiSystem::Local`]; otherwise the systems are tried in the
/// order of [`CiSystem::ALL`] and the first whose marker variable is set wins; with none,
/// the result is [`CiInfo::local`].
///
/// ```
/// use std::collections::BTreeMap;
/// use dtf_plugins_ci::{detect, CiSystem};
///
/// let env: BTreeMap<String, String> = [
///     ("GITLAB_CI", "true"),
///     ("CI_PIPELINE_ID", "4711"),
///     ("CI_MERGE_REQUEST_IID", "12"),
/// ]
/// .into_iter()
/// .map(|(k, v)| (k.to_owned(), v.to_owned()))
/// .collect();
/// let info = detect(&env);
/// assert_eq!(info.system, CiSystem::Gitlab);
/// assert_eq!(info.build_id.as_deref(), Some("4711"));
/// assert_eq!(info.pull_request, Some(12));
/// ```
pub fn detect(env: &Env) -> CiInfo {
    if get(env, "CI").is_some_and(|v| v.eq_ignore_ascii_case("false") || v == "0") {
        return CiInfo::local();
    }
    let system = CiSystem::ALL
        .iter()
        .copied()
        .find(|sys| sys.matches(env))
        .unwrap_or(CiSystem::Local);
    CiInfo::from_env(system, env)
}

/// [`detect`] on the process environment (variables that are not valid Unicode are ignored).
pub fn detect_from_process_env() -> CiInfo {
    detect(&process_env())
}

/// The process environment as an [`Env`] (variables that are not valid Unicode are ignored).
pub fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

fn get<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.get(key)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// The head commit of the pull request a GitHub Actions build is for: `pull_request.head.sha`
/// in the event file (`GITHUB_EVENT_PATH`) of a `pull_request` or `pull_request_target` event.
/// `None` for other events, or when the file cannot be read or holds no such commit.
fn github_pr_head(env: &Env) -> Option<String> {
    if !matches!(
        get(env, "GITHUB_EVENT_NAME"),
        Some("pull_request" | "pull_request_target")
    ) {
        return None;
    }
    let path = get(env, "GITHUB_EVENT_PATH")?;
    let read = std::fs::File::open(path).and_then(|f| {
        use std::io::Read as _;
        // An event file is a few hundred KiB at most; a bound keeps a wrong path cheap.
        let mut text = String::new();
        f.take(64 << 20).read_to_string(&mut text)?;
        Ok(text)
    });
    let text = match read {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(error = %e, "GITHUB_EVENT_PATH could not be read: reporting on GITHUB_SHA");
            return None;
        }
    };
    let event: serde_json::Value = serde_json::from_str(&text).ok()?;
    let sha = event.pointer("/pull_request/head/sha")?.as_str()?;
    (sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_owned())
}

/// `refs/pull/42/merge` → 42.
fn github_pr_number(git_ref: &str) -> Option<u64> {
    git_ref
        .strip_prefix("refs/pull/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// `https://github.com/o/r/pull/42` → 42.
fn last_number_segment(url: &str) -> Option<u64> {
    url.trim_end_matches('/').rsplit('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// On a pull-request build, checks and statuses go to the pull request's head commit
    /// (from the event file), not to `GITHUB_SHA`, the merge commit the pull request does not
    /// show; on a push, and when the file is missing, `GITHUB_SHA` stays.
    #[test]
    fn a_github_pull_request_reports_on_its_head_commit() {
        let head = "0123456789abcdef0123456789abcdef01234567";
        let file = std::env::temp_dir().join(format!("dtf-gh-event-{}.json", std::process::id()));
        std::fs::write(
            &file,
            format!(r#"{{"number": 7, "pull_request": {{"head": {{"sha": "{head}"}}}}}}"#),
        )
        .unwrap();
        let path = file.display().to_string();
        let base = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_SHA", "merge"),
            ("GITHUB_EVENT_PATH", path.as_str()),
        ];
        let with = |name: &str| {
            let mut pairs = base.to_vec();
            pairs.push(("GITHUB_EVENT_NAME", name));
            detect(&env(&pairs)).commit
        };
        assert_eq!(with("pull_request").as_deref(), Some(head));
        assert_eq!(with("pull_request_target").as_deref(), Some(head));
        assert_eq!(with("push").as_deref(), Some("merge"));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(with("pull_request").as_deref(), Some("merge"), "no file");
    }

    /// The copies of a parallel job say which they are (index from 1), where the system tells;
    /// one of one is no shard.
    #[test]
    fn parallel_jobs_say_which_shard_they_are() {
        let shard = |pairs: &[(&str, &str)]| detect(&env(pairs)).shard;
        let gitlab = [
            ("GITLAB_CI", "true"),
            ("CI_NODE_INDEX", "2"),
            ("CI_NODE_TOTAL", "3"),
        ];
        assert_eq!(shard(&gitlab), Some((2, 3)));
        let circle = [
            ("CIRCLECI", "true"),
            ("CIRCLE_NODE_INDEX", "0"),
            ("CIRCLE_NODE_TOTAL", "4"),
        ];
        assert_eq!(shard(&circle), Some((1, 4)));
        let bitbucket = [
            ("BITBUCKET_BUILD_NUMBER", "7"),
            ("BITBUCKET_PARALLEL_STEP", "3"),
            ("BITBUCKET_PARALLEL_STEP_COUNT", "4"),
        ];
        assert_eq!(shard(&bitbucket), Some((4, 4)));
        let one = [
            ("GITLAB_CI", "true"),
            ("CI_NODE_INDEX", "1"),
            ("CI_NODE_TOTAL", "1"),
        ];
        assert_eq!(shard(&one), None);
        let out_of_range = [
            ("GITLAB_CI", "true"),
            ("CI_NODE_INDEX", "5"),
            ("CI_NODE_TOTAL", "3"),
        ];
        assert_eq!(shard(&out_of_range), None);
        assert_eq!(shard(&[("GITLAB_CI", "true")]), None);
    }

    #[test]
    fn detects_github_actions_pull_request() {
        let info = detect(&env(&[
            ("CI", "true"),
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_RUN_ID", "123"),
            ("GITHUB_SERVER_URL", "https://github.com/"),
            ("GITHUB_REPOSITORY", "acme/dtf"),
            ("GITHUB_SHA", "abc"),
            ("GITHUB_REF", "refs/pull/42/merge"),
            ("GITHUB_REF_NAME", "42/merge"),
            ("GITHUB_HEAD_REF", "feature/x"),
            ("GITHUB_JOB", "test"),
        ]));
        assert_eq!(
            info,
            CiInfo {
                system: CiSystem::GithubActions,
                build_id: Some("123".into()),
                build_url: Some("https://github.com/acme/dtf/actions/runs/123".into()),
                commit: Some("abc".into()),
                branch: Some("feature/x".into()),
                pull_request: Some(42),
                job: Some("test".into()),
                shard: None,
            }
        );
    }

    #[test]
    fn github_push_has_branch_and_no_pull_request() {
        let info = detect(&env(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF", "refs/heads/main"),
            ("GITHUB_REF_NAME", "main"),
            ("GITHUB_HEAD_REF", ""),
        ]));
        assert_eq!(info.branch.as_deref(), Some("main"));
        assert_eq!(info.pull_request, None);
        assert_eq!(info.build_url, None);
    }

    #[test]
    fn detects_gitlab_jenkins_azure_circle_bitbucket_teamcity() {
        let gl = detect(&env(&[
            ("GITLAB_CI", "true"),
            ("CI_PIPELINE_ID", "9"),
            ("CI_PIPELINE_URL", "https://gitlab.com/a/b/-/pipelines/9"),
            ("CI_COMMIT_SHA", "c1"),
            ("CI_COMMIT_REF_NAME", "dev"),
            ("CI_MERGE_REQUEST_IID", "7"),
            ("CI_JOB_NAME", "unit"),
        ]));
        assert_eq!(
            (gl.system, gl.pull_request, gl.branch.as_deref()),
            (CiSystem::Gitlab, Some(7), Some("dev"))
        );
        assert_eq!(
            gl.build_url.as_deref(),
            Some("https://gitlab.com/a/b/-/pipelines/9")
        );

        let jk = detect(&env(&[
            ("JENKINS_URL", "https://ci.example/"),
            ("BUILD_NUMBER", "31"),
            ("BUILD_URL", "https://ci.example/job/x/31/"),
            ("GIT_COMMIT", "c2"),
            ("GIT_BRANCH", "origin/release"),
            ("CHANGE_ID", "5"),
            ("JOB_NAME", "x"),
        ]));
        assert_eq!(jk.system, CiSystem::Jenkins);
        assert_eq!(jk.build_id.as_deref(), Some("31"));
        assert_eq!(jk.branch.as_deref(), Some("release"));
        assert_eq!(jk.pull_request, Some(5));

        let az = detect(&env(&[
            ("TF_BUILD", "True"),
            ("BUILD_BUILDID", "88"),
            ("SYSTEM_COLLECTIONURI", "https://dev.azure.com/org/"),
            ("SYSTEM_TEAMPROJECT", "My Project"),
            ("BUILD_SOURCEVERSION", "c3"),
            ("BUILD_SOURCEBRANCHNAME", "merge"),
            ("SYSTEM_PULLREQUEST_SOURCEBRANCH", "refs/heads/topic"),
            ("SYSTEM_PULLREQUEST_PULLREQUESTID", "17"),
            ("AGENT_JOBNAME", "Job"),
        ]));
        assert_eq!(az.system, CiSystem::AzureDevops);
        assert_eq!(
            az.build_url.as_deref(),
            Some("https://dev.azure.com/org/My%20Project/_build/results?buildId=88")
        );
        assert_eq!(
            (az.branch.as_deref(), az.pull_request),
            (Some("topic"), Some(17))
        );

        let cc = detect(&env(&[
            ("CIRCLECI", "true"),
            ("CIRCLE_BUILD_NUM", "3"),
            ("CIRCLE_PULL_REQUEST", "https://github.com/a/b/pull/99"),
            ("CIRCLE_JOB", "build"),
        ]));
        assert_eq!((cc.system, cc.pull_request), (CiSystem::Circleci, Some(99)));

        let bb = detect(&env(&[
            ("BITBUCKET_BUILD_NUMBER", "12"),
            ("BITBUCKET_REPO_FULL_NAME", "team/repo"),
            ("BITBUCKET_COMMIT", "c4"),
            ("BITBUCKET_PR_ID", "4"),
        ]));
        assert_eq!(bb.system, CiSystem::Bitbucket);
        assert_eq!(
            bb.build_url.as_deref(),
            Some("https://bitbucket.org/team/repo/pipelines/results/12")
        );

        let tc = detect(&env(&[
            ("TEAMCITY_VERSION", "2024.1"),
            ("BUILD_NUMBER", "100"),
            ("BUILD_VCS_NUMBER", "c5"),
        ]));
        assert_eq!(
            (tc.system, tc.build_id.as_deref(), tc.commit.as_deref()),
            (CiSystem::Teamcity, Some("100"), Some("c5"))
        );
    }

    #[test]
    fn ci_false_and_empty_env_are_local() {
        assert_eq!(detect(&env(&[])), CiInfo::local());
        assert_eq!(
            detect(&env(&[("CI", "false"), ("GITHUB_ACTIONS", "true")])),
            CiInfo::local()
        );
        // A CI variable alone names no system.
        assert_eq!(detect(&env(&[("CI", "true")])).system, CiSystem::Local);
    }

    #[test]
    fn parses_system_names_and_lists_valid_ones_on_error() {
        assert_eq!("jenkins".parse::<CiSystem>().ok(), Some(CiSystem::Jenkins));
        assert_eq!(
            "GitHub_Actions".parse::<CiSystem>().ok(),
            Some(CiSystem::GithubActions)
        );
        assert_eq!(
            "azure".parse::<CiSystem>().ok(),
            Some(CiSystem::AzureDevops)
        );
        for sys in CiSystem::ALL {
            assert_eq!(sys.name().parse::<CiSystem>().ok(), Some(*sys));
        }
        let err = "hudson".parse::<CiSystem>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "select CI system `hudson`: unknown name (valid names: github-actions, gitlab, \
                 azure-devops, circleci, bitbucket, buildkite, travis, teamcity, jenkins, local)"
            )
        );
    }

    #[test]
    fn forcing_a_system_reads_its_variables() {
        let info = CiInfo::from_env(
            CiSystem::Travis,
            &env(&[("TRAVIS_PULL_REQUEST", "false"), ("TRAVIS_BRANCH", "main")]),
        );
        assert_eq!(
            (info.pull_request, info.branch.as_deref()),
            (None, Some("main"))
        );
    }
}
