//! Jenkins: the build's description, set with `POST {build_url}/submitDescription` (form
//! field `description`) and Basic auth `user:api-token`. Requests authenticated with an API
//! token are exempt from CSRF protection, so no crumb is fetched.

use reqwest::Method;
use reqwest::header::HeaderMap;

use super::config::token;
use super::http::{Auth, Body, Call, HttpCore};
use super::{ApiConfig, one_line, required, setting, trim_base};
use crate::detect::{CiInfo, Env};
use crate::error::CiError;
use crate::run::RunResult;

#[derive(Debug)]
pub(crate) struct Jenkins {
    url: String,
    auth: Auth,
}

impl Jenkins {
    pub(crate) fn new(config: &ApiConfig, _info: &CiInfo, env: &Env) -> Result<Self, CiError> {
        let c = &config.jenkins;
        let user =
            setting(c.user.as_deref(), env, &["JENKINS_USER"]).ok_or(CiError::MissingToken {
                service: "jenkins",
                variables: "JENKINS_USER".to_owned(),
            })?;
        let (password, _) = token("jenkins", c.token.as_ref(), env, &["JENKINS_API_TOKEN"])?;
        let build = required(
            "jenkins",
            "build_url",
            c.build_url.as_deref(),
            env,
            &["BUILD_URL"],
        )?;
        Ok(Self {
            url: format!("{}/submitDescription", trim_base(&build)),
            auth: Auth::Basic { user, password },
        })
    }

    async fn describe(&self, http: &mut HttpCore, text: String, live: bool) {
        // Jenkins answers with a redirect to the build's page once the description is set.
        let mut call = Call::new(
            "jenkins.description",
            Method::POST,
            self.url.clone(),
            Body::Form(vec![("description", text)]),
        )
        .done_by_redirect();
        if live {
            call = call.once();
        }
        let _ = http.send(call, &self.auth, &HeaderMap::new()).await;
    }

    /// Live progress in the description.
    pub(crate) async fn update(&mut self, http: &mut HttpCore, run: &RunResult) {
        self.describe(http, format!("{} (running)", one_line(run)), true)
            .await;
    }

    pub(crate) async fn finish(&mut self, http: &mut HttpCore, run: &RunResult) {
        let verdict = run.verdict().words();
        self.describe(http, format!("{} ({verdict})", one_line(run)), false)
            .await;
    }
}
