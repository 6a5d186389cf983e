//! The email channel: SMTP through [lettre], STARTTLS required by default.
//!
//! [`EmailConfig`] describes one SMTP server and its sender and recipients;
//! [`EmailConfig::validate`] checks it at start-up (every error names the key), and
//! [`EmailSender::new`] turns it into a sender that delivers [`EmailMessage`]s (a plain-text
//! body, and optionally an HTML alternative) to all recipients in one SMTP transaction.
//!
//! Transport security (`security`):
//!
//! | value | port | what happens |
//! | --- | --- | --- |
//! | `starttls` (default) | 587 | plain connection, then `STARTTLS`; a server that does not offer it is refused before any credential is sent |
//! | `tls` | 465 | TLS from the first byte ("implicit TLS", SMTPS) |
//! | `plain` | 25 | no encryption; only when configured explicitly, and never with credentials |
//!
//! TLS is rustls on the ring provider; certificates are checked against the Mozilla roots
//! (webpki-roots) plus the optional `root_certificate` PEM file (private CAs, tests).
//!
//! The password is a [`Secret`]: it is never in `Debug` output, logs or error messages; it is
//! handed to the SMTP client only to authenticate, and only on an encrypted connection.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use dtf_plugins_notify::email::{EmailConfig, EmailMessage, EmailSender};
//!
//! let config: EmailConfig = serde_json::from_value(serde_json::json!({
//!     "host": "smtp.example.com",
//!     "username": "dtf-bot",
//!     "password": "from-the-environment",
//!     "from": "dtf <dtf@example.com>",
//!     "to": ["oncall@example.com", "qa@example.com"],
//! }))?;
//! let sender = EmailSender::new(&config)?; // validates, reads the root certificate
//! assert_eq!(sender.target(), "email:smtp.example.com:587");
//! sender
//!     .send(&EmailMessage {
//!         subject: "12 tasks failed on worker w3".to_owned(),
//!         text: "12 tasks failed with TimeoutError on worker w3".to_owned(),
//!         html: Some("<p>12 tasks failed with <code>TimeoutError</code></p>".to_owned()),
//!         ..EmailMessage::default() // a fresh Message-ID, no thread
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dtf_plugin_core::Secret;
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Deserializer};

/// A secret given as a string or as `{"env": "VAR"}` (the other secrets of the notify
/// configuration take the same two forms).
fn secret_or_env<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Source {
        Value(String),
        Env { env: String },
    }
    match Option::<Source>::deserialize(d)? {
        None => Ok(None),
        Some(Source::Value(v)) => Ok(Some(Secret::new(v))),
        Some(Source::Env { env }) => Secret::from_env(&env).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "environment variable `{env}` is not set (or empty)"
            ))
        }),
    }
}

/// Default of [`EmailConfig::timeout_ms`]: 10 seconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Security {
    /// Connect in plain text, then upgrade with `STARTTLS` (RFC 3207). The upgrade is
    /// required: a server that does not offer `STARTTLS`, or whose certificate does not
    /// verify, is refused before `AUTH` or any message data is sent. Default port 587.
    /// The default.
    #[default]
    StartTls,
    /// TLS from the first byte (implicit TLS, "SMTPS", RFC 8314). Default port 465.
    Tls,
    /// No encryption at all. Only when configured explicitly, and only without credentials
    /// (a password is never sent in clear text). Default port 25.
    Plain,
}

impl Security {
    /// The port used when `port` is not set: 587, 465 or 25.
    pub fn default_port(self) -> u16 {
        match self {
            Self::StartTls => 587,
            Self::Tls => 465,
            Self::Plain => 25,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::StartTls => "starttls",
            Self::Tls => "tls",
            Self::Plain => "plain",
        }
    }
}

/// The settings of the email channel: one SMTP server, one sender, one or more recipients.
///
/// Deserializes from JSON (or any serde format) with these keys; unknown keys are an error.
/// `host`, `from` and `to` have no useful default and are checked by
/// [`validate`](Self::validate).
///
/// ```
/// use dtf_plugins_notify::email::{EmailConfig, Security};
/// let config: EmailConfig = serde_json::from_value(serde_json::json!({
///     "host": "smtp.example.com",
///     "from": "dtf@example.com",
///     "to": ["oncall@example.com"],
/// })).unwrap();
/// assert_eq!(config.security, Security::StartTls);
/// assert_eq!(config.port(), 587);
/// assert_eq!(config.timeout_ms, 10_000);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// Host name or IP address of the SMTP server, without scheme or port. Required.
    /// It is also the name the server's certificate must match.
    pub host: String,
    /// TCP port. Default: by `security`, 587 (`starttls`), 465 (`tls`) or 25 (`plain`).
    pub port: Option<u16>,
    /// Transport security: `starttls` (default), `tls` or `plain`. See [`Security`].
    pub security: Security,
    /// User name for SMTP `AUTH` (PLAIN or LOGIN, whichever the server offers). Default: none,
    /// no authentication. Needs `password`.
    pub username: Option<String>,
    /// Password for SMTP `AUTH`: a string, or `{"env": "VAR"}` to read it from the
    /// environment when the configuration is read. Default: none. Needs `username`; not
    /// allowed with `plain`.
    #[serde(deserialize_with = "secret_or_env")]
    pub password: Option<Secret>,
    /// The sender, `addr@example.com` or `Name <addr@example.com>`. Required.
    pub from: String,
    /// The recipients, same forms as `from`; all of them get the message in one SMTP
    /// transaction (one `RCPT TO` each). At least one is required.
    pub to: Vec<String>,
    /// Time limit of one send (connect, TLS, authentication and transfer), in milliseconds.
    /// Default 10000 (10 s).
    pub timeout_ms: u64,
    /// A PEM file with extra root certificates to trust, in addition to the built-in Mozilla
    /// roots: for servers with a private CA, and tests. Default: none. Read by
    /// [`EmailSender::new`].
    pub root_certificate: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: None,
            security: Security::default(),
            username: None,
            password: None,
            from: String::new(),
            to: Vec::new(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            root_certificate: None,
        }
    }
}

/// The environment variables read by [`EmailConfig::from_env`], with the key each one sets.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("SMTP_HOST", "host"),
    ("SMTP_PORT", "port"),
    ("SMTP_SECURITY", "security"),
    ("SMTP_USERNAME", "username"),
    ("SMTP_PASSWORD", "password"),
    ("SMTP_FROM", "from"),
    ("SMTP_TO", "to"),
    ("SMTP_TIMEOUT_MS", "timeout_ms"),
    ("SMTP_ROOT_CERTIFICATE", "root_certificate"),
];

impl EmailConfig {
    /// The port to connect to: `port`, or the default of `security`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.security.default_port())
    }

    /// Reads the configuration from the process environment: see [`ENV_VARS`] and
    /// [`from_lookup`](Self::from_lookup).
    pub fn from_env() -> Result<Self, EmailError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds and validates a configuration from variables looked up by `lookup`:
    /// `SMTP_HOST`, `SMTP_FROM` and `SMTP_TO` (comma-separated addresses) are required;
    /// `SMTP_PORT`, `SMTP_SECURITY` (`starttls`, `tls` or `plain`), `SMTP_USERNAME`,
    /// `SMTP_PASSWORD`, `SMTP_TIMEOUT_MS` and `SMTP_ROOT_CERTIFICATE` are optional, with the
    /// defaults of the keys they set. Empty values count as unset. Errors name the variable
    /// (and the key, for invalid values); never its value when it is the password.
    ///
    /// ```
    /// use dtf_plugins_notify::email::EmailConfig;
    /// let vars = [
    ///     ("SMTP_HOST", "smtp.example.com"),
    ///     ("SMTP_FROM", "dtf@example.com"),
    ///     ("SMTP_TO", "a@example.com, b@example.com"),
    /// ];
    /// let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
    /// let config = EmailConfig::from_lookup(lookup).unwrap();
    /// assert_eq!(config.to, ["a@example.com", "b@example.com"]);
    ///
    /// let err = EmailConfig::from_lookup(|_| None).unwrap_err();
    /// assert_eq!(err.to_string(), "configure email: `SMTP_HOST` is not set (environment variable)");
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EmailError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| {
            get(name).ok_or_else(|| config_error(name, "is not set (environment variable)"))
        };
        let mut config = Self {
            host: required("SMTP_HOST")?.trim().to_owned(),
            from: required("SMTP_FROM")?,
            to: required("SMTP_TO")?
                .split(',')
                .map(|a| a.trim().to_owned())
                .collect(),
            username: get("SMTP_USERNAME"),
            password: get("SMTP_PASSWORD").map(Secret::new),
            root_certificate: get("SMTP_ROOT_CERTIFICATE").map(PathBuf::from),
            ..Self::default()
        };
        if let Some(port) = get("SMTP_PORT") {
            config.port = Some(port.trim().parse().map_err(|_| {
                config_error(
                    "SMTP_PORT",
                    format!("`{port}` is not a port number (1-65535)"),
                )
            })?);
        }
        if let Some(security) = get("SMTP_SECURITY") {
            config.security = match security.trim().to_ascii_lowercase().as_str() {
                "starttls" => Security::StartTls,
                "tls" => Security::Tls,
                "plain" => Security::Plain,
                _ => {
                    return Err(config_error(
                        "SMTP_SECURITY",
                        format!("`{security}` is not one of `starttls`, `tls`, `plain`"),
                    ));
                }
            };
        }
        if let Some(timeout) = get("SMTP_TIMEOUT_MS") {
            config.timeout_ms = timeout.trim().parse().map_err(|_| {
                config_error(
                    "SMTP_TIMEOUT_MS",
                    format!("`{timeout}` is not a number of milliseconds"),
                )
            })?;
        }
        config.validate().map_err(|e| match e {
            EmailError::Config { key, reason } => {
                let field = key.split('[').next().unwrap_or(&key);
                match ENV_VARS.iter().find(|(_, k)| *k == field) {
                    Some((var, _)) => EmailError::Config {
                        key: (*var).to_owned(),
                        reason: format!("(key `{key}`) {reason}"),
                    },
                    None => EmailError::Config { key, reason },
                }
            }
            other => other,
        })?;
        Ok(config)
    }

    /// Checks every key without touching the network or the file system. The first problem
    /// found is returned as [`EmailError::Config`] naming the key (`to[1]` for the second
    /// recipient). Messages never contain the password.
    pub fn validate(&self) -> Result<(), EmailError> {
        self.parsed().map(|_| ())
    }

    /// Validates and parses the addresses.
    fn parsed(&self) -> Result<(Mailbox, Vec<Mailbox>), EmailError> {
        validate_host(&self.host)?;
        if self.port == Some(0) {
            return Err(config_error("port", "must be between 1 and 65535"));
        }
        if self.timeout_ms == 0 {
            return Err(config_error(
                "timeout_ms",
                "must be at least 1 (milliseconds)",
            ));
        }
        match (&self.username, &self.password) {
            (Some(user), _) if user.trim().is_empty() => {
                return Err(config_error("username", "is empty"));
            }
            (None, Some(_)) => {
                return Err(config_error(
                    "password",
                    "is set but `username` is not; set both or neither",
                ));
            }
            (Some(_), None) => {
                return Err(config_error(
                    "username",
                    "is set but `password` is not; set both or neither",
                ));
            }
            (Some(_), Some(_)) if self.security == Security::Plain => {
                return Err(config_error(
                    "security",
                    "`plain` sends everything unencrypted, so it cannot be used with \
                     `username`/`password`; use `starttls` or `tls`",
                ));
            }
            _ => {}
        }
        if matches!(&self.root_certificate, Some(path) if path.as_os_str().is_empty()) {
            return Err(config_error("root_certificate", "is an empty path"));
        }
        let from = parse_mailbox("from", &self.from)?;
        if self.to.is_empty() {
            return Err(config_error("to", "has no recipients; list at least one"));
        }
        let to = self
            .to
            .iter()
            .enumerate()
            .map(|(i, addr)| parse_mailbox(&format!("to[{i}]"), addr))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((from, to))
    }
}

fn config_error(key: impl Into<String>, reason: impl Into<String>) -> EmailError {
    EmailError::Config {
        key: key.into(),
        reason: reason.into(),
    }
}

fn parse_mailbox(key: &str, value: &str) -> Result<Mailbox, EmailError> {
    if value.trim().is_empty() {
        return Err(config_error(key, "is empty; expected an email address"));
    }
    value.trim().parse::<Mailbox>().map_err(|e| {
        config_error(
            key,
            format!(
                "`{value}` is not a valid email address (expected `user@example.com` or \
                 `Name <user@example.com>`): {e}"
            ),
        )
    })
}

/// Accepts an IP address or a DNS name (labels of letters, digits, `-` and `_`).
fn validate_host(host: &str) -> Result<(), EmailError> {
    if host.is_empty() {
        return Err(config_error(
            "host",
            "is missing; set the SMTP server's host name",
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        config_error(
            "host",
            format!(
                "`{host}` is not a host name or IP address (give the name alone, without \
                 scheme, user or port; the port goes in `port`)"
            ),
        )
    };
    if host.len() > 253 {
        return Err(bad());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// One email: a subject, a plain-text body and an optional HTML alternative, with the
/// headers that thread it.
///
/// With `html`, the message is `multipart/alternative` with the text part first and the
/// HTML part second (mail clients show the last part they can render); without it, a single
/// `text/plain; charset=utf-8` part.
///
/// Every mail has a `Message-ID`: `message_id` when set, otherwise a fresh
/// `<time.pid.counter@domain-of-from>`. `in_reply_to` and `references` (message ids with
/// their angle brackets) make mail clients show a group's messages as one thread.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmailMessage {
    /// The `Subject` header (encoded as needed for non-ASCII text).
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// An optional HTML body, sent as an alternative to `text`.
    pub html: Option<String>,
    /// The `Message-ID` (`<id@domain>`); generated when `None`.
    pub message_id: Option<String>,
    /// The `In-Reply-To` header: the message this one follows.
    pub in_reply_to: Option<String>,
    /// The `References` header: the thread's earlier messages, oldest first.
    pub references: Vec<String>,
}

/// A fresh `<…@domain>` message id, unique within the process and, through the time and the
/// process id, across runs.
pub(crate) fn fresh_message_id(domain: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "<dtf.{}.{}@{domain}>",
        run_nonce(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// This process's part of message ids: its start time (ns, hex) and process id.
pub(crate) fn run_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{nanos:x}.{:x}", std::process::id())
    })
}

/// What went wrong with a send, for retry decisions and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// Could not connect, or the connection broke (refused, reset, DNS). Retryable.
    Connection,
    /// The send took longer than `timeout_ms`. Retryable.
    Timeout,
    /// The server answered with a 4xx (transient) reply. Retryable.
    Transient,
    /// The server answered with a 5xx (permanent) reply, e.g. bad credentials or an unknown
    /// recipient. Not retryable.
    Permanent,
    /// The TLS handshake failed (e.g. the certificate does not verify). Not retryable.
    Tls,
    /// The server does not follow the protocol we need, e.g. it does not offer `STARTTLS`
    /// or none of our authentication mechanisms, or sent a malformed reply. Not retryable.
    Protocol,
}

impl fmt::Display for SendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connection => "connection failed",
            Self::Timeout => "timed out",
            Self::Transient => "transient server error",
            Self::Permanent => "permanent server error",
            Self::Tls => "TLS failed",
            Self::Protocol => "SMTP protocol error",
        })
    }
}

/// Errors of the email channel. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmailError {
    /// A configuration key has a missing or invalid value.
    #[error("configure email: `{key}` {reason}")]
    Config {
        /// The key, e.g. `host`, `to[1]`, `password`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The message could not be assembled.
    #[error("build the email message: {0}")]
    Message(String),
    /// The SMTP exchange failed.
    #[error("send email via `{target}`: {kind}: {message}")]
    Send {
        /// [`EmailSender::target`] of the sender.
        target: String,
        /// The class of failure.
        kind: SendErrorKind,
        /// The SMTP reply code, for server replies (4xx or 5xx).
        code: Option<u16>,
        /// Details from the SMTP client, password removed.
        message: String,
    },
}

impl EmailError {
    /// Whether trying the same send again later may succeed: connection errors, timeouts and
    /// SMTP 4xx replies are; 5xx replies, TLS and protocol failures and configuration or
    /// message errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Send { kind, .. } => matches!(
                kind,
                SendErrorKind::Connection | SendErrorKind::Timeout | SendErrorKind::Transient
            ),
            Self::Config { .. } | Self::Message(_) => false,
        }
    }

    /// The SMTP reply code when the server refused with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Send { code, .. } => *code,
            _ => None,
        }
    }
}

/// Sends [`EmailMessage`]s through one SMTP server. Cheap to share behind an `Arc`; each send
/// opens its own connection (no pool: notifications are rare and grouped upstream).
///
/// `Debug` shows the target, the security and whether credentials are set, never them.
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    target: String,
    security: Security,
    authenticated: bool,
    timeout: Duration,
    /// Kept only to scrub it from error messages the SMTP client might echo.
    password: Option<Secret>,
}

impl fmt::Debug for EmailSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSender")
            .field("target", &self.target)
            .field("security", &self.security)
            .field("authenticated", &self.authenticated)
            .field("recipients", &self.to.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EmailSender {
    /// Validates `config` (see [`EmailConfig::validate`]), reads `root_certificate` and builds
    /// the SMTP client. Does not connect: a wrong password or an unreachable server shows at
    /// the first [`send`](Self::send).
    pub fn new(config: &EmailConfig) -> Result<Self, EmailError> {
        let (from, to) = config.parsed()?;
        let port = config.port();
        let host = config.host.clone();
        let target = if host.contains(':') {
            format!("email:[{host}]:{port}") // an IPv6 address
        } else {
            format!("email:{host}:{port}")
        };
        let timeout = Duration::from_millis(config.timeout_ms);

        let tls = match config.security {
            Security::Plain => Tls::None,
            Security::StartTls => Tls::Required(tls_parameters(config)?),
            Security::Tls => Tls::Wrapper(tls_parameters(config)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        let authenticated = match (&config.username, &config.password) {
            (Some(user), Some(password)) => {
                builder = builder
                    .credentials(Credentials::new(user.clone(), password.expose().to_owned()))
                    .authentication(vec![Mechanism::Plain, Mechanism::Login]);
                true
            }
            _ => false,
        };
        tracing::debug!(
            target_name = %target,
            security = config.security.as_str(),
            authenticated,
            recipients = to.len(),
            "email sender configured"
        );
        Ok(Self {
            transport: builder.build(),
            from,
            to,
            target,
            security: config.security,
            authenticated,
            timeout,
            password: config.password.clone(),
        })
    }

    /// Where this sender delivers, for logs and stats: `email:<host>:<port>` (`email:[::1]:25`
    /// for an IPv6 address). No secrets.
    pub fn target(&self) -> String {
        self.target.clone()
    }

    /// The domain of the `from` address: the right-hand side of generated message ids.
    pub fn domain(&self) -> &str {
        self.from.email.domain()
    }

    /// Sends `msg` to all recipients in one SMTP transaction, within `timeout_ms`.
    ///
    /// One attempt, no retry: the caller decides with [`EmailError::is_retryable`].
    pub async fn send(&self, msg: &EmailMessage) -> Result<(), EmailError> {
        let email = self.build(msg)?;
        let started = Instant::now();
        tracing::debug!(
            target_name = %self.target,
            recipients = self.to.len(),
            subject_len = msg.subject.len(),
            html = msg.html.is_some(),
            "sending email"
        );
        let outcome = match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(self.send_error(&e)),
            Err(_elapsed) => Err(EmailError::Send {
                target: self.target.clone(),
                kind: SendErrorKind::Timeout,
                code: None,
                message: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        };
        match &outcome {
            Ok(()) => tracing::debug!(
                target_name = %self.target,
                latency_ms = started.elapsed().as_millis(),
                "email sent"
            ),
            Err(e) => tracing::debug!(
                target_name = %self.target,
                latency_ms = started.elapsed().as_millis(),
                retryable = e.is_retryable(),
                error = %e,
                "email not sent"
            ),
        }
        outcome
    }

    fn build(&self, msg: &EmailMessage) -> Result<Message, EmailError> {
        let id = msg
            .message_id
            .clone()
            .unwrap_or_else(|| fresh_message_id(self.domain()));
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(msg.subject.clone())
            .message_id(Some(id));
        if let Some(parent) = &msg.in_reply_to {
            builder = builder.in_reply_to(parent.clone());
        }
        if !msg.references.is_empty() {
            builder = builder.references(msg.references.join(" "));
        }
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let built = match &msg.html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(
                msg.text.clone(),
                html.clone(),
            )),
            None => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(msg.text.clone()),
            ),
        };
        built.map_err(|e| EmailError::Message(e.to_string()))
    }

    fn send_error(&self, e: &lettre::transport::smtp::Error) -> EmailError {
        let kind = if e.is_timeout() {
            SendErrorKind::Timeout
        } else if e.is_transient() {
            SendErrorKind::Transient
        } else if e.is_permanent() {
            SendErrorKind::Permanent
        } else if e.is_tls() || caused_by_tls(e) {
            SendErrorKind::Tls
        } else if e.is_client() || e.is_response() {
            SendErrorKind::Protocol
        } else {
            // lettre's remaining kinds: network I/O, connection and transport shutdown.
            SendErrorKind::Connection
        };
        let mut message = e.to_string();
        if let Some(password) = &self.password {
            if !password.expose().is_empty() {
                // A server may echo what it received; the password never leaves in an error.
                message = message.replace(password.expose(), "***");
            }
        }
        EmailError::Send {
            target: self.target.clone(),
            kind,
            code: e.status().map(u16::from),
            message,
        }
    }
}

/// Whether a rustls error (a failed handshake, a certificate that does not verify) is in the
/// chain: lettre reports those as connection errors, which would wrongly be retried.
fn caused_by_tls(e: &lettre::transport::smtp::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps; look at that one too.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn tls_parameters(config: &EmailConfig) -> Result<TlsParameters, EmailError> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.root_certificate {
        let pem = std::fs::read(path).map_err(|e| {
            config_error(
                "root_certificate",
                format!("cannot be read from `{}`: {e}", path.display()),
            )
        })?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            config_error(
                "root_certificate",
                format!("`{}` is not a PEM certificate: {e}", path.display()),
            )
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build_rustls().map_err(|e| {
        config_error(
            "root_certificate",
            format!("cannot set up TLS with it: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_password_can_come_from_the_environment() {
        let base = serde_json::json!({
            "host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"],
            "username": "u",
        });
        let mut with_env = base.clone();
        with_env["password"] = serde_json::json!({ "env": "PATH" });
        let c: EmailConfig = serde_json::from_value(with_env).unwrap_or_default();
        assert_eq!(
            c.password.as_ref().map(|p| p.expose().to_owned()),
            std::env::var("PATH").ok()
        );
        let mut missing = base;
        missing["password"] = serde_json::json!({ "env": "DTF_SURELY_UNSET_VARIABLE_7Q" });
        let err = serde_json::from_value::<EmailConfig>(missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("`DTF_SURELY_UNSET_VARIABLE_7Q` is not set"),
            "{err}"
        );
    }

    fn base() -> EmailConfig {
        EmailConfig {
            host: "smtp.example.com".to_owned(),
            from: "dtf <dtf@example.com>".to_owned(),
            to: vec!["a@example.com".to_owned()],
            ..EmailConfig::default()
        }
    }

    #[test]
    fn default_port_follows_security() {
        let mut c = base();
        assert_eq!(c.port(), 587);
        c.security = Security::Tls;
        assert_eq!(c.port(), 465);
        c.security = Security::Plain;
        assert_eq!(c.port(), 25);
        c.port = Some(2525);
        assert_eq!(c.port(), 2525);
    }

    #[test]
    fn hosts() {
        for ok in [
            "smtp.example.com",
            "localhost",
            "127.0.0.1",
            "::1",
            "mx_1.example.com.",
        ] {
            validate_host(ok).unwrap();
        }
        for bad in [
            "smtp://smtp.example.com",
            "smtp.example.com:587",
            "user@smtp.example.com",
            "smtp example.com",
            "-smtp.example.com",
            "smtp..example.com",
            "[::1]",
        ] {
            let err = validate_host(bad).unwrap_err();
            assert!(
                matches!(&err, EmailError::Config { key, .. } if key == "host"),
                "{bad}"
            );
        }
    }

    #[test]
    fn retry_classes() {
        let send = |kind| EmailError::Send {
            target: "email:h:587".to_owned(),
            kind,
            code: None,
            message: String::new(),
        };
        assert!(send(SendErrorKind::Connection).is_retryable());
        assert!(send(SendErrorKind::Timeout).is_retryable());
        assert!(send(SendErrorKind::Transient).is_retryable());
        assert!(!send(SendErrorKind::Permanent).is_retryable());
        assert!(!send(SendErrorKind::Tls).is_retryable());
        assert!(!send(SendErrorKind::Protocol).is_retryable());
        assert!(!config_error("host", "x").is_retryable());
        assert!(!EmailError::Message("x".to_owned()).is_retryable());
    }

    #[test]
    fn sender_and_send_future_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let sender = EmailSender::new(&base()).unwrap();
        assert_send_sync(&sender);
        let msg = EmailMessage {
            subject: String::new(),
            text: String::new(),
            html: None,
            ..EmailMessage::default()
        };
        assert_send(&sender.send(&msg));
    }

    #[test]
    fn from_lookup_names_the_variable() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        const BASE: &[(&str, &str)] = &[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_FROM", "dtf@example.com"),
            ("SMTP_TO", "a@example.com,b@example.com"),
        ];
        let c = EmailConfig::from_lookup(vars(BASE)).unwrap();
        assert_eq!(c.to, ["a@example.com", "b@example.com"]);
        assert_eq!(c.port(), 587);

        let c = EmailConfig::from_lookup(vars(&[
            ("SMTP_HOST", "smtp.example.com"),
            ("SMTP_FROM", "dtf@example.com"),
            ("SMTP_TO", "a@example.com"),
            ("SMTP_SECURITY", "TLS"),
            ("SMTP_USERNAME", "bot"),
            ("SMTP_PASSWORD", "env-canary-pw"),
            ("SMTP_TIMEOUT_MS", "2500"),
        ]))
        .unwrap();
        assert_eq!(
            (c.security, c.port(), c.timeout_ms),
            (Security::Tls, 465, 2500)
        );
        assert_eq!(
            c.password.as_ref().map(Secret::expose),
            Some("env-canary-pw")
        );

        let key_of = |pairs| match EmailConfig::from_lookup(vars(pairs)).unwrap_err() {
            EmailError::Config { key, reason } => (key, reason),
            other => panic!("{other:?}"),
        };
        assert_eq!(key_of(&[]).0, "SMTP_HOST");
        assert_eq!(
            key_of(&[("SMTP_HOST", "h"), ("SMTP_FROM", "f@x.org")]).0,
            "SMTP_TO"
        );
        let (key, reason) = key_of(&[
            ("SMTP_HOST", "h"),
            ("SMTP_FROM", "f@x.org"),
            ("SMTP_TO", "a@x.org, a@@x.org"),
        ]);
        assert_eq!(key, "SMTP_TO");
        assert!(
            reason.contains("`to[1]`") && reason.contains("a@@x.org"),
            "{reason}"
        );
        let (key, _) = key_of(&[
            ("SMTP_HOST", "h"),
            ("SMTP_FROM", "f@x.org"),
            ("SMTP_TO", "a@x.org"),
            ("SMTP_PORT", "smtp"),
        ]);
        assert_eq!(key, "SMTP_PORT");
        let (key, reason) = key_of(&[
            ("SMTP_HOST", "h"),
            ("SMTP_FROM", "f@x.org"),
            ("SMTP_TO", "a@x.org"),
            ("SMTP_PASSWORD", "env-canary-pw"),
        ]);
        assert_eq!(key, "SMTP_PASSWORD");
        assert!(!reason.contains("env-canary-pw"), "{reason}");
        assert_eq!(
            key_of(&[
                ("SMTP_HOST", "h"),
                ("SMTP_FROM", "f@x.org"),
                ("SMTP_TO", "a@x.org"),
                ("SMTP_SECURITY", "ssl"),
            ])
            .0,
            "SMTP_SECURITY"
        );
    }

    #[test]
    fn text_only_message_is_single_plain_part() {
        let sender = EmailSender::new(&base()).unwrap();
        let msg = sender
            .build(&EmailMessage {
                subject: "s".to_owned(),
                text: "only text".to_owned(),
                html: None,
                ..EmailMessage::default()
            })
            .unwrap();
        let raw = String::from_utf8(msg.formatted()).unwrap();
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(!raw.contains("multipart"), "{raw}");
        assert!(raw.contains("only text"), "{raw}");
    }

    #[test]
    fn target_names_host_and_port() {
        let mut c = base();
        assert_eq!(
            EmailSender::new(&c).unwrap().target(),
            "email:smtp.example.com:587"
        );
        c.host = "::1".to_owned();
        c.security = Security::Plain;
        assert_eq!(EmailSender::new(&c).unwrap().target(), "email:[::1]:25");
    }
}
