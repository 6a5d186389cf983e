//! The seam between the delivery stage and the network: "send this request, get the status,
//! headers and body back".
//!
//! Every channel builds [`HttpRequest`]s and the delivery stage hands them to a [`Transport`].
//! [`ReqwestTransport`] is the one used everywhere (tested against wiremock servers on
//! loopback). The seam exists so the virtual-time test can drive the whole pipeline through an
//! in-process simulated server: tokio's paused clock auto-advances while a task waits on real
//! socket I/O, so real sockets and virtual time do not mix (see docs/notify.md).

use std::time::Duration;

use dtf_plugin_core::Secret;

/// The HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Body {
    /// No body.
    Empty,
    /// `application/json`.
    Json(serde_json::Value),
    /// `application/x-www-form-urlencoded`.
    Form(Vec<(String, String)>),
}

/// One HTTP request. The URL and every header value are [`Secret`]s: webhook URLs and the
/// Telegram bot URL carry the token in the path, and headers carry credentials. `label` is
/// what logs and stats show instead (e.g. `slack webhook`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpRequest {
    /// What logs show: never the URL.
    pub label: String,
    /// The method.
    pub method: Method,
    /// The full URL, query included.
    pub url: Secret,
    /// Extra headers (auth among them).
    pub headers: Vec<(String, Secret)>,
    /// The body.
    pub body: Body,
}

impl HttpRequest {
    /// A `POST` with a JSON body.
    pub fn post_json(label: impl Into<String>, url: Secret, body: serde_json::Value) -> Self {
        Self {
            label: label.into(),
            method: Method::Post,
            url,
            headers: Vec::new(),
            body: Body::Json(body),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: Secret) -> Self {
        self.headers.push((name.into(), value));
        self
    }
}

/// A response: status, headers (names lowercase) and the body as text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpResponse {
    /// The HTTP status.
    pub status: u16,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The body (empty if it was not text).
    pub body: String,
}

impl HttpResponse {
    /// A response with `status`, `headers` and `body` (for custom transports).
    pub fn new(status: u16, headers: Vec<(String, String)>, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            body: body.into(),
        }
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A request that got no response. The message never contains the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct TransportError {
    /// What went wrong (URL stripped).
    pub message: String,
    /// Whether trying again may help (connection errors and timeouts).
    pub retryable: bool,
}

impl TransportError {
    /// A transport error.
    pub fn new(message: impl Into<String>, retryable: bool) -> Self {
        Self {
            message: message.into(),
            retryable,
        }
    }
}

/// Sends requests. Implemented by [`ReqwestTransport`]; implement it yourself only to put
/// another HTTP stack (or a simulation, in tests) under the pipeline.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` once (no retries: the delivery stage retries).
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// The [`Transport`] over one shared `reqwest` client (rustls, connection pooling).
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A transport whose requests time out after `timeout`.
    ///
    /// # Errors
    ///
    /// [`TransportError`] when the TLS backend cannot be initialised.
    pub fn new(timeout: Duration) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("dtf-plugins-notify/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            // Redirects are not followed: reqwest would send the webhook URL (path and query,
            // where the token is) to the new host as `Referer`, secret headers with it, and
            // turn a POST into a GET whose 200 would count as delivered. A 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TransportError::new(format!("build the HTTP client: {e}"), false))?;
        Ok(Self { client })
    }
}

#[async_trait::async_trait]
impl Transport for ReqwestTransport {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
        };
        let mut builder = self.client.request(method, request.url.expose());
        for (name, value) in &request.headers {
            let mut v = reqwest::header::HeaderValue::from_str(value.expose()).map_err(|_| {
                TransportError::new(
                    format!("header `{name}` holds characters not allowed in HTTP headers"),
                    false,
                )
            })?;
            v.set_sensitive(true);
            builder = builder.header(name.as_str(), v);
        }
        builder = match &request.body {
            Body::Empty => builder,
            Body::Json(v) => builder.json(v),
            Body::Form(f) => builder.form(f),
        };
        // reqwest puts the URL into its errors' Display; the URL may hold a token, so it is
        // stripped from every error before it goes anywhere.
        let resp = builder.send().await.map_err(|e| {
            let retryable = !e.is_builder() && (e.is_connect() || e.is_timeout() || e.is_request());
            TransportError::new(error_chain(&e.without_url()), retryable)
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = match resp.text().await {
            Ok(body) => body,
            // The service took the request (2xx) and the answer's body was lost: sending it
            // again would post the message twice. It stands as delivered with an empty body
            // (a channel that needs the body refuses it, for good). A lookup is tried again.
            Err(e) if (200..300).contains(&status) && request.method != Method::Get => {
                tracing::warn!(label = %request.label, error = %error_chain(&e.without_url()), "the answer's body was lost after a success; not sent again");
                String::new()
            }
            Err(e) => return Err(TransportError::new(error_chain(&e.without_url()), true)),
        };
        Ok(HttpResponse::new(status, headers, body))
    }
}

/// An error and its sources, "a: b: c".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}
