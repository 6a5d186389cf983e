//! The email channel against real SMTP servers on 127.0.0.1.
//!
//! The in-process server is the SMTP state machine of the `mailin` crate (commands, replies,
//! `STARTTLS`, `AUTH PLAIN`/`LOGIN`, dot-unstuffing) driven over tokio sockets, with TLS by
//! tokio-rustls and a certificate generated per test by rcgen. It records every line it
//! receives (and whether TLS was on at the time), the credentials it was given and the mails
//! it accepted, so the tests can assert on what really crossed the wire.
//!
//! A second, independent peer, Python's `aiosmtpd`, is started by `.ci/run` (see the
//! `DTF_AIOSMTPD_*` variables below); the test using it returns early when they are unset,
//! except under `CI=true`, where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dtf_plugin_core::Secret;
use dtf_plugins_notify::email::{
    EmailConfig, EmailError, EmailMessage, EmailSender, Security, SendErrorKind,
};
use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

const USER: &str = "dtf-bot";
/// The secret canary: it must reach the server's AUTH handler and nothing else.
const PASSWORD: &str = "canary-pw-7f3a9c1e";

// ---------------------------------------------------------------------------------------------
// The in-process SMTP server.

/// How the test server behaves.
#[derive(Clone, Copy)]
enum ServerTls {
    /// No TLS at all; `STARTTLS` is not offered.
    None,
    /// `STARTTLS` offered (and `AUTH` only after it).
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

#[derive(Clone)]
struct ServerOptions {
    tls: ServerTls,
    /// Offer `AUTH PLAIN LOGIN`.
    auth: bool,
    /// Offer `AUTH` on an unencrypted connection too (a server that invites a leak).
    plaintext_auth: bool,
    /// Reply with this instead of 250 to every `RCPT TO`.
    rcpt_reply: Option<(u16, &'static str)>,
    /// On a failed AUTH, echo the password it received in the 535 reply (a careless server).
    echo_bad_password: bool,
}

impl ServerOptions {
    fn new(tls: ServerTls) -> Self {
        Self {
            tls,
            auth: false,
            plaintext_auth: false,
            rcpt_reply: None,
            echo_bad_password: false,
        }
    }
    fn with_auth(mut self) -> Self {
        self.auth = true;
        self
    }
}

#[derive(Debug, Clone)]
struct Line {
    tls: bool,
    text: String,
}

#[derive(Debug, Clone)]
struct Auth {
    user: String,
    password: String,
    tls: bool,
}

#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
    tls: bool,
}

#[derive(Debug, Default)]
struct Recorded {
    lines: Vec<Line>,
    auths: Vec<Auth>,
    mails: Vec<Mail>,
}

struct TestServer {
    addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    /// The PEM of the server's self-signed certificate, written to a file.
    cert_path: PathBuf,
    _dir: TempDir,
}

impl TestServer {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap()
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "dtf-notify-email-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// The per-connection `mailin` handler: records AUTH and mails into the shared state.
struct Recorder {
    recorded: Arc<Mutex<Recorded>>,
    tls: Arc<AtomicBool>,
    rcpt_reply: Option<(u16, &'static str)>,
    echo_bad_password: bool,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Recorder {
    fn auth(&mut self, user: &str, password: &str) -> Response {
        self.recorded.lock().unwrap().auths.push(Auth {
            user: user.to_owned(),
            password: password.to_owned(),
            tls: self.tls.load(Ordering::SeqCst),
        });
        if user == USER && password == PASSWORD {
            response::AUTH_OK
        } else if self.echo_bad_password {
            Response::custom(535, format!("5.7.8 bad password {password} for {user}"))
        } else {
            response::INVALID_CREDENTIALS
        }
    }
}

impl Handler for Recorder {
    fn rcpt(&mut self, _to: &str) -> Response {
        match self.rcpt_reply {
            Some((code, text)) => Response::custom(code, text.to_owned()),
            None => response::OK,
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.recorded.lock().unwrap().mails.push(Mail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
            tls: self.tls.load(Ordering::SeqCst),
        });
        response::OK
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.auth(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.auth(user, password)
    }
}

fn tls_acceptor(dir: &Path) -> (TlsAcceptor, PathBuf) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert_path = dir.join("server-cert.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    (TlsAcceptor::from(Arc::new(config)), cert_path)
}

async fn start_server(options: ServerOptions) -> TestServer {
    captured();
    let dir = TempDir::new("server");
    let (acceptor, cert_path) = tls_acceptor(&dir.0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let shared = recorded.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_connection(
                stream,
                peer.ip(),
                options.clone(),
                acceptor.clone(),
                shared.clone(),
            ));
        }
    });
    TestServer {
        addr,
        recorded,
        cert_path,
        _dir: dir,
    }
}

enum SessionEnd {
    Closed,
    UpgradeTls,
}

async fn serve_connection(
    stream: TcpStream,
    peer: IpAddr,
    options: ServerOptions,
    acceptor: TlsAcceptor,
    recorded: Arc<Mutex<Recorded>>,
) -> io::Result<()> {
    let mut builder = SessionBuilder::new("mailin.test");
    if matches!(options.tls, ServerTls::StartTls) {
        builder.enable_start_tls();
    }
    if options.auth {
        builder.enable_auth(AuthMechanism::Plain);
        builder.enable_auth(AuthMechanism::Login);
    }
    if options.plaintext_auth {
        builder.insecure_enable_plaintext_auth();
    }
    let tls = Arc::new(AtomicBool::new(false));
    let handler = Recorder {
        recorded: recorded.clone(),
        tls: tls.clone(),
        rcpt_reply: options.rcpt_reply,
        echo_bad_password: options.echo_bad_password,
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut session = builder.build(peer, handler);

    if matches!(options.tls, ServerTls::Implicit) {
        let stream = acceptor.accept(stream).await?;
        tls.store(true, Ordering::SeqCst);
        session.tls_active();
        let mut io = BufStream::new(stream);
        write_response(&mut io, &session.greeting()).await?;
        run_session(&mut session, &mut io, &recorded, true).await?;
        return Ok(());
    }

    let mut io = BufStream::new(stream);
    write_response(&mut io, &session.greeting()).await?;
    if let SessionEnd::UpgradeTls = run_session(&mut session, &mut io, &recorded, false).await? {
        let stream = acceptor.accept(io.into_inner()).await?;
        tls.store(true, Ordering::SeqCst);
        session.tls_active();
        let mut io = BufStream::new(stream);
        run_session(&mut session, &mut io, &recorded, true).await?;
    }
    Ok(())
}

async fn run_session<H: Handler, S: AsyncBufRead + AsyncWrite + Unpin>(
    session: &mut mailin::Session<H>,
    io: &mut S,
    recorded: &Mutex<Recorded>,
    tls: bool,
) -> io::Result<SessionEnd> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if io.read_until(b'\n', &mut line).await? == 0 {
            return Ok(SessionEnd::Closed);
        }
        recorded.lock().unwrap().lines.push(Line {
            tls,
            text: String::from_utf8_lossy(&line).into_owned(),
        });
        let res = session.process(&line);
        match res.action {
            Action::Reply => write_response(io, &res).await?,
            Action::Close => {
                write_response(io, &res).await?;
                return Ok(SessionEnd::Closed);
            }
            Action::UpgradeTls => {
                write_response(io, &res).await?;
                return Ok(SessionEnd::UpgradeTls);
            }
            Action::NoReply => {}
        }
    }
}

async fn write_response<S: AsyncWrite + Unpin>(io: &mut S, res: &Response) -> io::Result<()> {
    let mut buf = Vec::new();
    res.write_to(&mut buf)?;
    io.write_all(&buf).await?;
    io.flush().await
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn config(server: &TestServer, security: Security) -> EmailConfig {
    EmailConfig {
        host: "127.0.0.1".to_owned(),
        port: Some(server.addr.port()),
        security,
        from: "dtf notifier <dtf@example.com>".to_owned(),
        to: vec![
            "oncall@example.com".to_owned(),
            "QA Team <qa@example.org>".to_owned(),
            "lead@example.net".to_owned(),
        ],
        timeout_ms: 5_000,
        root_certificate: Some(server.cert_path.clone()),
        ..EmailConfig::default()
    }
}

fn with_credentials(mut config: EmailConfig) -> EmailConfig {
    config.username = Some(USER.to_owned());
    config.password = Some(Secret::new(PASSWORD));
    config
}

fn message() -> EmailMessage {
    EmailMessage {
        subject: "12 tasks failed with TimeoutError on worker w3".to_owned(),
        text: "12 tasks failed with TimeoutError on worker w3.\nFirst: t-001, t-002, t-003."
            .to_owned(),
        html: Some(
            "<p>12 tasks failed with <code>TimeoutError</code> on worker <b>w3</b>.</p>".to_owned(),
        ),
        ..EmailMessage::default()
    }
}

/// One MIME entity: unfolded headers (name lower-cased) and the raw body.
struct Entity {
    headers: Vec<(String, String)>,
    body: String,
}

impl Entity {
    fn parse(raw: &str) -> Self {
        let raw = raw.replace("\r\n", "\n");
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                let last = headers.last_mut().expect("continuation without a header");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        Self {
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> &str {
        let found: Vec<_> = self.headers.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "header {name} once in {:?}", self.headers);
        &found[0].1
    }

    /// The parts of a multipart entity, in order.
    fn parts(&self) -> Vec<Entity> {
        let content_type = self.header("content-type");
        let boundary = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .expect("a multipart boundary")
            .trim_matches('"');
        let delimiter = format!("--{boundary}");
        let closing = format!("--{boundary}--");
        assert!(
            self.body.contains(&closing),
            "closing boundary in {}",
            self.body
        );
        let inner = self.body.split(&closing).next().unwrap();
        inner
            .split(&delimiter)
            .skip(1) // the preamble
            .map(|p| Entity::parse(p.trim_start_matches('\n')))
            .collect()
    }
}

/// Checks the mail as the server stored it: headers, the multipart/alternative structure and
/// both bodies.
fn assert_message(raw: &str) {
    let mail = Entity::parse(raw);
    assert_eq!(mail.header("from"), "\"dtf notifier\" <dtf@example.com>");
    assert_eq!(
        mail.header("to"),
        "oncall@example.com, \"QA Team\" <qa@example.org>, lead@example.net"
    );
    assert_eq!(
        mail.header("subject"),
        "12 tasks failed with TimeoutError on worker w3"
    );
    assert_eq!(mail.header("mime-version"), "1.0");
    assert!(!mail.header("date").is_empty());
    // Every mail has a Message-ID, on the from address's domain.
    let id = mail.header("message-id");
    assert!(
        id.starts_with('<') && id.ends_with("@example.com>") && !id.contains(' '),
        "{id}"
    );
    assert!(
        mail.header("content-type")
            .starts_with("multipart/alternative;")
    );
    let parts = mail.parts();
    assert_eq!(parts.len(), 2, "text and HTML parts");
    assert_eq!(parts[0].header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(parts[0].header("content-transfer-encoding"), "7bit");
    assert_eq!(
        parts[0].body.trim_end(),
        "12 tasks failed with TimeoutError on worker w3.\nFirst: t-001, t-002, t-003."
    );
    assert_eq!(parts[1].header("content-type"), "text/html; charset=utf-8");
    assert_eq!(parts[1].header("content-transfer-encoding"), "7bit");
    assert_eq!(
        parts[1].body.trim_end(),
        "<p>12 tasks failed with <code>TimeoutError</code> on worker <b>w3</b>.</p>"
    );
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every form in which the password could leak: as is, and base64-encoded the ways AUTH
/// PLAIN and AUTH LOGIN carry it.
fn password_forms() -> Vec<String> {
    vec![
        PASSWORD.to_owned(),
        base64(PASSWORD.as_bytes()),
        base64(format!("\0{USER}\0{PASSWORD}").as_bytes()),
        // A fragment of the PLAIN encoding that does not depend on the 3-byte alignment of
        // the user name: the base64 of the password alone at each of the three offsets.
        base64(format!("\0{PASSWORD}").as_bytes()),
        base64(format!("\0\0{PASSWORD}").as_bytes()),
    ]
}

fn assert_no_password(what: &str, text: &str) {
    for form in password_forms() {
        // Compare on a long prefix: base64 of a shifted input differs only at the edges.
        let probe = &form[..form.len().min(16)];
        assert!(
            !text.contains(probe),
            "the password ({form}) leaked into {what}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. STARTTLS, AUTH, multipart, several recipients.

#[tokio::test]
async fn starttls_auth_delivers_multipart_to_all_recipients() {
    let server = start_server(ServerOptions::new(ServerTls::StartTls).with_auth()).await;
    let sender = EmailSender::new(&with_credentials(config(&server, Security::StartTls))).unwrap();
    assert_eq!(
        sender.target(),
        format!("email:127.0.0.1:{}", server.addr.port())
    );

    sender.send(&message()).await.unwrap();

    let rec = server.recorded();
    // The client upgraded before anything but EHLO, and authenticated once, under TLS, with
    // the configured credentials.
    let plain: Vec<&str> = rec
        .lines
        .iter()
        .filter(|l| !l.tls)
        .map(|l| l.text.trim_end())
        .collect();
    assert_eq!(plain.len(), 2, "{plain:?}");
    assert!(plain[0].starts_with("EHLO "), "{plain:?}");
    assert_eq!(plain[1], "STARTTLS");
    let auth_lines: Vec<&Line> = rec
        .lines
        .iter()
        .filter(|l| l.text.starts_with("AUTH"))
        .collect();
    assert_eq!(auth_lines.len(), 1, "{:?}", rec.lines);
    assert!(auth_lines[0].tls);
    assert_eq!(rec.auths.len(), 1);
    assert_eq!(rec.auths[0].user, USER);
    assert_eq!(rec.auths[0].password, PASSWORD);
    assert!(rec.auths[0].tls);

    assert_eq!(rec.mails.len(), 1);
    let mail = &rec.mails[0];
    assert!(mail.tls);
    assert_eq!(mail.from, "dtf@example.com");
    assert_eq!(
        mail.to,
        ["oncall@example.com", "qa@example.org", "lead@example.net"]
    );
    assert_message(&mail.data);
}

#[tokio::test]
async fn thread_headers_reach_the_server() {
    let server = start_server(ServerOptions::new(ServerTls::StartTls).with_auth()).await;
    let sender = EmailSender::new(&with_credentials(config(&server, Security::StartTls))).unwrap();
    let root = "<dtf.1.0@example.com>".to_owned();
    let parent = "<dtf.1.1@example.com>".to_owned();
    sender
        .send(&EmailMessage {
            message_id: Some("<dtf.1.2@example.com>".to_owned()),
            in_reply_to: Some(parent.clone()),
            references: vec![root.clone(), parent.clone()],
            ..message()
        })
        .await
        .unwrap();
    sender.send(&message()).await.unwrap();
    let rec = server.recorded();
    assert_eq!(rec.mails.len(), 2);
    let reply = Entity::parse(&rec.mails[0].data);
    assert_eq!(reply.header("message-id"), "<dtf.1.2@example.com>");
    assert_eq!(reply.header("in-reply-to"), parent);
    assert_eq!(reply.header("references"), format!("{root} {parent}"));
    // Without ids set, the sender makes a fresh one, different each time.
    let plain = Entity::parse(&rec.mails[1].data);
    assert_ne!(plain.header("message-id"), reply.header("message-id"));
    assert!(
        !plain
            .headers
            .iter()
            .any(|(n, _)| n == "in-reply-to" || n == "references")
    );
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let server = start_server(ServerOptions::new(ServerTls::Implicit).with_auth()).await;
    let sender = EmailSender::new(&with_credentials(config(&server, Security::Tls))).unwrap();
    sender.send(&message()).await.unwrap();

    let rec = server.recorded();
    assert!(rec.lines.iter().all(|l| l.tls), "every byte under TLS");
    assert_eq!(rec.auths.len(), 1);
    assert_eq!(rec.auths[0].password, PASSWORD);
    assert_eq!(rec.mails.len(), 1);
    assert_message(&rec.mails[0].data);
}

#[tokio::test]
async fn text_only_message_is_a_single_plain_part() {
    let server = start_server(ServerOptions::new(ServerTls::StartTls)).await;
    let sender = EmailSender::new(&config(&server, Security::StartTls)).unwrap();
    sender
        .send(&EmailMessage {
            subject: "worker w3 lost".to_owned(),
            text: "worker w3 stopped answering".to_owned(),
            html: None,
            ..EmailMessage::default()
        })
        .await
        .unwrap();
    let rec = server.recorded();
    assert!(rec.auths.is_empty(), "no credentials configured, none sent");
    let mail = Entity::parse(&rec.mails[0].data);
    assert_eq!(mail.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(mail.body.trim_end(), "worker w3 stopped answering");
}

// ---------------------------------------------------------------------------------------------
// 2. A server without STARTTLS is refused, and never sees the credentials.

#[tokio::test]
async fn server_without_starttls_is_refused_before_any_credential() {
    // The server even advertises AUTH on the clear connection, inviting the client to leak.
    let mut options = ServerOptions::new(ServerTls::None).with_auth();
    options.plaintext_auth = true;
    let server = start_server(options).await;
    let sender = EmailSender::new(&with_credentials(config(&server, Security::StartTls))).unwrap();

    let err = sender.send(&message()).await.unwrap_err();
    assert!(
        matches!(
            &err,
            EmailError::Send {
                kind: SendErrorKind::Protocol,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("STARTTLS"), "{err}");
    assert!(!err.is_retryable());

    let rec = server.recorded();
    assert!(
        !rec.lines.is_empty(),
        "the client did connect: {:?}",
        rec.lines
    );
    assert!(rec.auths.is_empty(), "{:?}", rec.auths);
    let transcript: String = rec.lines.iter().map(|l| l.text.as_str()).collect();
    assert!(
        !transcript.to_ascii_uppercase().contains("AUTH"),
        "{transcript}"
    );
    assert!(!transcript.contains("MAIL FROM"), "{transcript}");
    assert_no_password("the server's transcript", &transcript);
    assert!(rec.mails.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 3. Plain SMTP when configured explicitly.

#[tokio::test]
async fn explicit_plain_delivers_to_a_plain_server() {
    let server = start_server(ServerOptions::new(ServerTls::None)).await;
    let mut config = config(&server, Security::Plain);
    config.root_certificate = None;
    let sender = EmailSender::new(&config).unwrap();
    sender.send(&message()).await.unwrap();

    let rec = server.recorded();
    assert!(rec.lines.iter().all(|l| !l.tls));
    assert!(rec.auths.is_empty());
    assert_eq!(rec.mails.len(), 1);
    assert!(!rec.mails[0].tls);
    assert_eq!(rec.mails[0].to.len(), 3);
    assert_message(&rec.mails[0].data);
}

// ---------------------------------------------------------------------------------------------
// Failures and their retry class.

#[tokio::test]
async fn untrusted_certificate_is_refused_before_any_credential() {
    let server = start_server(ServerOptions::new(ServerTls::StartTls).with_auth()).await;
    let mut config = with_credentials(config(&server, Security::StartTls));
    config.root_certificate = None; // the self-signed certificate is not trusted
    let err = EmailSender::new(&config)
        .unwrap()
        .send(&message())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            EmailError::Send {
                kind: SendErrorKind::Tls,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let rec = server.recorded();
    assert!(rec.auths.is_empty());
    assert!(rec.lines.iter().all(|l| !l.text.starts_with("AUTH")));
}

#[tokio::test]
async fn wrong_password_is_permanent_and_not_echoed() {
    // The server echoes the password it got in its 535 reply; our error must not carry it.
    let mut options = ServerOptions::new(ServerTls::StartTls).with_auth();
    options.echo_bad_password = true;
    let server = start_server(options).await;
    let mut config = config(&server, Security::StartTls);
    config.username = Some(USER.to_owned());
    config.password = Some(Secret::new("wrong-canary-pw-31d4"));
    let err = EmailSender::new(&config)
        .unwrap()
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(535), "{err:?}");
    assert!(
        matches!(
            &err,
            EmailError::Send {
                kind: SendErrorKind::Permanent,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-canary-pw-31d4"), "{shown}");
    assert!(
        shown.contains("bad password *** for dtf-bot"),
        "the echo, scrubbed: {shown}"
    );
    assert_eq!(server.recorded().auths[0].password, "wrong-canary-pw-31d4");
    assert!(server.recorded().mails.is_empty());
}

#[tokio::test]
async fn transient_4xx_is_retryable() {
    let mut options = ServerOptions::new(ServerTls::StartTls);
    options.rcpt_reply = Some((451, "4.3.0 try again later"));
    let server = start_server(options).await;
    let err = EmailSender::new(&config(&server, Security::StartTls))
        .unwrap()
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(451), "{err:?}");
    assert!(err.is_retryable(), "{err:?}");
    assert!(server.recorded().mails.is_empty());
}

#[tokio::test]
async fn permanent_5xx_recipient_is_not_retryable() {
    let mut options = ServerOptions::new(ServerTls::StartTls);
    options.rcpt_reply = Some((550, "5.1.1 no such user"));
    let server = start_server(options).await;
    let err = EmailSender::new(&config(&server, Security::StartTls))
        .unwrap()
        .send(&message())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(550), "{err:?}");
    assert!(!err.is_retryable());
}

/// Sends the test message to `127.0.0.1:port`, expecting it to fail.
async fn send_error_to(port: u16, timeout_ms: u64) -> EmailError {
    let config = EmailConfig {
        host: "127.0.0.1".to_owned(),
        port: Some(port),
        timeout_ms,
        ..valid()
    };
    EmailSender::new(&config)
        .unwrap()
        .send(&message())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    captured();
    // Bind, learn a free port, close it: nothing listens there any more.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = send_error_to(port, 5_000).await;
    assert!(
        matches!(
            &err,
            EmailError::Send {
                kind: SendErrorKind::Connection,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn silent_server_times_out_retryably() {
    captured();
    // Accepts the connection and never greets.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let err = send_error_to(port, 200).await;
    assert!(
        matches!(
            &err,
            EmailError::Send {
                kind: SendErrorKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    hold.abort();
}

// ---------------------------------------------------------------------------------------------
// 4. aiosmtpd, a second and independent SMTP implementation (started by .ci/run).

/// `host:port` of the aiosmtpd started by `.ci/run` (STARTTLS required by the server).
const AIOSMTPD_ADDR: &str = "DTF_AIOSMTPD_ADDR";
/// Its maildir (`new/` holds one file per received mail).
const AIOSMTPD_MAILDIR: &str = "DTF_AIOSMTPD_MAILDIR";
/// The PEM certificate it presents.
const AIOSMTPD_CERT: &str = "DTF_AIOSMTPD_CERT";

#[tokio::test]
async fn aiosmtpd_receives_over_starttls() {
    captured();
    let vars: Vec<Option<String>> = [AIOSMTPD_ADDR, AIOSMTPD_MAILDIR, AIOSMTPD_CERT]
        .iter()
        .map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .collect();
    let [Some(addr), Some(maildir), Some(cert)] = vars.as_slice() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "under CI=true, .ci/run must start aiosmtpd and set {AIOSMTPD_ADDR}, \
             {AIOSMTPD_MAILDIR} and {AIOSMTPD_CERT}"
        );
        eprintln!(
            "note: aiosmtpd_receives_over_starttls skipped: {AIOSMTPD_ADDR}, \
             {AIOSMTPD_MAILDIR} and {AIOSMTPD_CERT} are not set (.ci/run sets them)"
        );
        return;
    };
    let (host, port) = addr.rsplit_once(':').unwrap();
    let new_dir = Path::new(maildir).join("new");
    let before: Vec<_> = std::fs::read_dir(&new_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();

    // A unique subject finds our mail among others a previous run may have left.
    let subject = format!("aiosmtpd check {}", rand_suffix());
    let mut msg = message();
    msg.subject.clone_from(&subject);
    let config = EmailConfig {
        host: host.to_owned(),
        port: Some(port.parse().unwrap()),
        security: Security::StartTls,
        from: "dtf notifier <dtf@example.com>".to_owned(),
        to: vec![
            "oncall@example.com".to_owned(),
            "QA Team <qa@example.org>".to_owned(),
            "lead@example.net".to_owned(),
        ],
        root_certificate: Some(PathBuf::from(cert)),
        ..EmailConfig::default()
    };
    EmailSender::new(&config).unwrap().send(&msg).await.unwrap();

    let ours: Vec<String> = std::fs::read_dir(&new_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !before.contains(p))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .filter(|m| m.contains(&subject))
        .collect();
    assert_eq!(ours.len(), 1, "one stored mail with subject {subject}");
    // aiosmtpd's Mailbox stores the message as received, with its own headers added on top
    // (X-Peer, X-MailFrom, X-RcptTo); replace the subject back to check the rest as usual.
    let stored = &ours[0];
    let entity = Entity::parse(stored);
    assert_eq!(entity.header("x-mailfrom"), "dtf@example.com");
    assert_eq!(
        entity.header("x-rcptto"),
        "oncall@example.com, qa@example.org, lead@example.net"
    );
    let without_added: String = stored
        .lines()
        .filter(|l| {
            !l.starts_with("X-Peer:")
                && !l.starts_with("X-MailFrom:")
                && !l.starts_with("X-RcptTo:")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert_message(
        &without_added.replace(&subject, "12 tasks failed with TimeoutError on worker w3"),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input, and the secret canary.

fn valid() -> EmailConfig {
    EmailConfig {
        host: "smtp.example.com".to_owned(),
        from: "dtf@example.com".to_owned(),
        to: vec!["oncall@example.com".to_owned()],
        ..EmailConfig::default()
    }
}

#[test]
fn bad_input_is_a_config_error_naming_the_key() {
    type Edit = fn(&mut EmailConfig);
    let cases: &[(&str, Edit, &str, &str)] = &[
        (
            "missing host",
            |c| c.host = String::new(),
            "host",
            "missing",
        ),
        (
            "host with scheme",
            |c| c.host = "smtp://smtp.example.com".to_owned(),
            "host",
            "smtp://smtp.example.com",
        ),
        (
            "host with port",
            |c| c.host = "smtp.example.com:587".to_owned(),
            "host",
            "`port`",
        ),
        (
            "host with space",
            |c| c.host = "smtp example.com".to_owned(),
            "host",
            "not a host name",
        ),
        (
            "port 0",
            |c| c.port = Some(0),
            "port",
            "between 1 and 65535",
        ),
        (
            "timeout 0",
            |c| c.timeout_ms = 0,
            "timeout_ms",
            "at least 1",
        ),
        (
            "invalid from",
            |c| c.from = "not-an-address".to_owned(),
            "from",
            "not-an-address",
        ),
        ("empty from", |c| c.from = String::new(), "from", "empty"),
        ("empty recipients", |c| c.to.clear(), "to", "no recipients"),
        (
            "invalid second recipient",
            |c| c.to.push("a@@example.com".to_owned()),
            "to[1]",
            "a@@example.com",
        ),
        (
            "recipient without domain",
            |c| c.to = vec!["oncall".to_owned()],
            "to[0]",
            "not a valid email address",
        ),
        (
            "blank recipient",
            |c| c.to = vec!["  ".to_owned()],
            "to[0]",
            "empty",
        ),
        (
            "password without username",
            |c| c.password = Some(Secret::new(PASSWORD)),
            "password",
            "`username`",
        ),
        (
            "username without password",
            |c| c.username = Some(USER.to_owned()),
            "username",
            "`password`",
        ),
        (
            "empty username",
            |c| {
                c.username = Some(String::new());
                c.password = Some(Secret::new(PASSWORD));
            },
            "username",
            "empty",
        ),
        (
            "credentials over plain",
            |c| {
                c.security = Security::Plain;
                c.username = Some(USER.to_owned());
                c.password = Some(Secret::new(PASSWORD));
            },
            "security",
            "unencrypted",
        ),
        (
            "empty root certificate path",
            |c| c.root_certificate = Some(PathBuf::new()),
            "root_certificate",
            "empty path",
        ),
    ];
    for (name, edit, key, needle) in cases {
        let mut config = valid();
        edit(&mut config);
        let err = config.validate().unwrap_err();
        match &err {
            EmailError::Config { key: got, .. } => assert_eq!(got, key, "{name}: {err}"),
            other => panic!("{name}: not a config error: {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("`{key}`")),
            "{name}: key not named: {text}"
        );
        assert!(text.contains(needle), "{name}: {needle:?} not in {text}");
        assert!(!err.is_retryable(), "{name}");
        // EmailSender::new refuses the same configuration with the same error.
        let again = EmailSender::new(&config).unwrap_err();
        assert_eq!(again.to_string(), text, "{name}");
        for shown in [text, format!("{err:?}"), format!("{config:?}")] {
            assert_no_password(name, &shown);
        }
    }
    valid().validate().unwrap();
}

#[test]
fn unreadable_root_certificate_fails_at_construction() {
    let mut config = valid();
    config.root_certificate = Some(PathBuf::from("/nonexistent/dtf-ca.pem"));
    config.validate().unwrap(); // no file system access in validate
    let err = EmailSender::new(&config).unwrap_err();
    assert!(
        matches!(&err, EmailError::Config { key, .. } if key == "root_certificate"),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/dtf-ca.pem"), "{err}");

    let dir = TempDir::new("badpem");
    let path = dir.0.join("not-a-cert.pem");
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    config.root_certificate = Some(path);
    let err = EmailSender::new(&config).unwrap_err();
    assert!(
        matches!(&err, EmailError::Config { key, .. } if key == "root_certificate"),
        "{err:?}"
    );
}

#[test]
fn config_from_json_has_documented_defaults_and_rejects_unknown_keys() {
    let config: EmailConfig = serde_json::from_value(serde_json::json!({
        "host": "smtp.example.com",
        "username": USER,
        "password": PASSWORD,
        "from": "dtf@example.com",
        "to": ["a@example.com", "b@example.com"],
    }))
    .unwrap();
    assert_eq!(config.security, Security::StartTls);
    assert_eq!(config.port(), 587);
    assert_eq!(config.timeout_ms, 10_000);
    assert_eq!(config.root_certificate, None);
    config.validate().unwrap();
    assert_no_password("EmailConfig's Debug", &format!("{config:?}"));

    for (security, port) in [("tls", 465), ("plain", 25), ("starttls", 587)] {
        let c: EmailConfig =
            serde_json::from_value(serde_json::json!({ "security": security })).unwrap();
        assert_eq!(c.port(), port, "{security}");
    }

    let err = serde_json::from_value::<EmailConfig>(serde_json::json!({ "hots": "x" }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `hots`"), "{err}");
    let err = serde_json::from_value::<EmailConfig>(serde_json::json!({ "security": "ssl" }))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `ssl`"), "{err}");
}

/// A `MakeWriter` collecting everything the fmt layer writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Everything written by tracing in this test binary, at TRACE: a global subscriber, installed
/// by the first test that sends, so the secret canary also covers the sends of every other
/// test. (A global one rather than a scoped `with_default`: tracing caches per-callsite
/// interest, and callsites first hit by a concurrent test without a subscriber would stay off.)
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        captured
    })
}

/// Runs sends (a success, a rejected recipient, a refused server without STARTTLS) with
/// tracing at TRACE captured, then looks for the password in every output: the captured log
/// (which also holds the other tests' sends), errors (`Display` and `Debug`) and the sender's
/// `Debug`.
#[tokio::test]
async fn password_never_appears_in_logs_errors_or_debug() {
    let log = captured();
    let mut outputs = Vec::new();

    let good = start_server(ServerOptions::new(ServerTls::StartTls).with_auth()).await;
    let sender = EmailSender::new(&with_credentials(config(&good, Security::StartTls))).unwrap();
    outputs.push(format!("{sender:?}"));
    sender.send(&message()).await.unwrap();
    assert_eq!(
        good.recorded().auths[0].password,
        PASSWORD,
        "the canary was used"
    );

    // An error path with the password in play.
    let mut options = ServerOptions::new(ServerTls::StartTls).with_auth();
    options.rcpt_reply = Some((550, "5.1.1 rejected"));
    let rejecting = start_server(options).await;
    let err = EmailSender::new(&with_credentials(config(&rejecting, Security::StartTls)))
        .unwrap()
        .send(&message())
        .await
        .unwrap_err();
    outputs.push(format!("{err} {err:?}"));

    let mut options = ServerOptions::new(ServerTls::None).with_auth();
    options.plaintext_auth = true;
    let clear = start_server(options).await;
    let err = EmailSender::new(&with_credentials(config(&clear, Security::StartTls)))
        .unwrap()
        .send(&message())
        .await
        .unwrap_err();
    outputs.push(format!("{err} {err:?}"));

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let port = |s: &TestServer| format!("email:127.0.0.1:{}", s.addr.port());
    for (server, outcome) in [
        (&good, "email sent"),
        (&rejecting, "email not sent"),
        (&clear, "email not sent"),
    ] {
        let ours: Vec<&str> = text.lines().filter(|l| l.contains(&port(server))).collect();
        assert!(
            ours.iter().any(|l| l.contains("sending email")),
            "TRACE output captured: {text}"
        );
        assert!(
            ours.iter().any(|l| l.contains(outcome)),
            "{outcome}: {text}"
        );
    }
    assert_no_password("the TRACE log", &text);
    for output in &outputs {
        assert_no_password("an error or Debug output", output);
    }
}

// ---------------------------------------------------------------------------------------------
// The email channel inside the notify plugin, on a real bus.

/// The whole path: task failures published on the bus are grouped by the notify plugin into
/// one mail, which the channel delivers over STARTTLS with AUTH to the in-process server at
/// shutdown (long before the group's 60 s wait); the coordinator's shutdown gets its own mail.
#[tokio::test]
async fn the_notify_plugin_mails_grouped_failures_through_the_email_channel() {
    use dtf_plugin_core::prelude::*;
    use dtf_plugins_notify::{NotifyPlugin, NotifyStats};

    let server = start_server(ServerOptions::new(ServerTls::StartTls).with_auth()).await;
    let stats = NotifyStats::default();
    let handle = stats.clone();
    let config = serde_json::json!({
        "channels": [{
            "type": "email",
            "name": "oncall-mail",
            "smtp": {
                "host": "127.0.0.1",
                "port": server.addr.port(),
                "username": USER,
                "password": PASSWORD,
                "from": "dtf <dtf@example.com>",
                "to": ["oncall@example.com", "qa@example.org"],
                "root_certificate": server.cert_path,
            }
        }],
        "group": { "group_wait_ms": 60_000 }
    });
    let manager = PluginManager::builder()
        .spec(
            PluginSpec::new(move || NotifyPlugin::new().with_stats(handle.clone())).config(config),
        )
        .spawn()
        .await
        .unwrap();
    for i in 0..5 {
        let mut kind = EventKind::task_failed(
            format!("t{i}"),
            TaskError::builder()
                .kind("TimeoutError")
                .message("timed out after 30s")
                .build(),
            false,
        );
        if let EventKind::TaskFailed(f) = &mut kind {
            f.worker = Some("w3".into());
        }
        manager.publish(kind).await.unwrap();
    }
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");

    let rec = server.recorded();
    assert_eq!(rec.mails.len(), 2, "the failures and the shutdown");
    assert!(rec.mails.iter().all(|m| m.tls));
    assert_eq!(rec.auths.len(), 2);
    assert!(rec.auths.iter().all(|a| a.tls && a.password == PASSWORD));
    let subjects: Vec<String> = rec
        .mails
        .iter()
        .map(|m| Entity::parse(&m.data).header("subject").to_owned())
        .collect();
    assert!(
        subjects.contains(&"[dtf error] 5 tasks failed with TimeoutError on worker w3".to_owned()),
        "{subjects:?}"
    );
    let failures = rec
        .mails
        .iter()
        .map(|m| Entity::parse(&m.data))
        .find(|e| e.header("subject").contains("tasks failed"))
        .unwrap();
    let parts = failures.parts();
    assert_eq!(parts.len(), 2);
    assert!(parts[0].body.contains("TimeoutError"), "{}", parts[0].body);
    assert!(
        parts[1].body.contains("<code>TimeoutError</code>"),
        "{}",
        parts[1].body
    );
    assert_eq!(rec.mails[0].to, ["oncall@example.com", "qa@example.org"]);
    // Two groups, two threads: distinct Message-IDs, neither replying to the other.
    let ids: Vec<String> = rec
        .mails
        .iter()
        .map(|m| Entity::parse(&m.data).header("message-id").to_owned())
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert!(
        ids.iter().all(|id| id.ends_with("@example.com>")),
        "{ids:?}"
    );
    drop(rec);

    let target = &stats.targets()["oncall-mail"];
    assert_eq!((target.ok, target.failed), (2, 0));
    assert!(stats.undelivered().is_empty());
    // The password reached the server's AUTH handler and nothing the user can print.
    assert_no_password("stats", &format!("{:?}", stats.targets()));
}
