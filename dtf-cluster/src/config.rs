//! What both ends of a cluster connection are configured with: the cookie, TLS, timeouts.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::ClusterError;

/// The environment variable the cookie is read from.
pub const COOKIE_ENV: &str = "DTF_CLUSTER_COOKIE";

/// The shortest cookie accepted, in bytes.
pub const MIN_COOKIE_LEN: usize = 32;

/// The largest frame a node accepts by default (4 MiB); a peer sending more is disconnected.
pub const DEFAULT_MAX_FRAME: u64 = 4 * 1024 * 1024;

/// The shared secret every node of a cluster proves it knows (ractor_cluster's challenge–
/// response handshake). At least [`MIN_COOKIE_LEN`] bytes, from [`COOKIE_ENV`] or a file,
/// never from a command-line value. Its `Debug` output is `Cookie(***)`.
#[derive(Clone)]
pub struct Cookie(String);

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(***)")
    }
}

impl Cookie {
    /// A cookie from `value`; `origin` names where it came from, for the error.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Cookie`] if it is shorter than [`MIN_COOKIE_LEN`] bytes (after
    /// trimming a trailing newline); the error never contains the value.
    pub fn new(value: impl Into<String>, origin: &str) -> Result<Self, ClusterError> {
        let value = value.into();
        let value = value.trim_end_matches(['\n', '\r']).to_owned();
        if value.len() < MIN_COOKIE_LEN {
            return Err(ClusterError::Cookie(format!(
                "the cookie from {origin} is {} bytes long; at least {MIN_COOKIE_LEN} are required",
                value.len()
            )));
        }
        Ok(Self(value))
    }

    /// The cookie in `file` when given, else in [`COOKIE_ENV`].
    ///
    /// # Errors
    ///
    /// [`ClusterError::Cookie`] if neither is set, the file cannot be read, or the cookie is
    /// too short.
    pub fn load(file: Option<&Path>) -> Result<Self, ClusterError> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ClusterError::Cookie(format!("read the cookie file {}: {e}", file.display()))
            })?;
            return Self::new(text, &format!("file {}", file.display()));
        }
        match std::env::var(COOKIE_ENV) {
            Ok(v) => Self::new(v, COOKIE_ENV),
            Err(_) => Err(ClusterError::Cookie(format!(
                "no cluster cookie: set {COOKIE_ENV} or give a cookie file (at least \
                 {MIN_COOKIE_LEN} bytes, the same on every node)"
            ))),
        }
    }

    pub(crate) fn expose(&self) -> String {
        self.0.clone()
    }
}

/// How connections are protected.
#[derive(Clone)]
pub enum Transport {
    /// TLS (rustls on ring). The coordinator presents `cert_chain`; workers check it against
    /// their trusted CA.
    Tls(Arc<TlsFiles>),
    /// Plain TCP, only with an explicit `--insecure-cluster`: a warning is logged at every
    /// start. The cookie handshake still runs.
    Insecure,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tls(files) => write!(f, "Tls({:?})", files.paths),
            Self::Insecure => f.write_str("Insecure"),
        }
    }
}

/// The certificates of a TLS transport, loaded and checked at start.
pub struct TlsFiles {
    paths: Vec<PathBuf>,
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // Chosen explicitly: with ractor_cluster in the build, rustls has two providers and
    // would refuse to pick one itself.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ClusterError::Tls(format!("read certificates from {}: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(ClusterError::Tls(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl TlsFiles {
    /// The coordinator's side: its certificate chain and private key (PEM files).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Tls`] naming the file that cannot be read or used.
    pub fn server(cert_chain: &Path, key: &Path) -> Result<Self, ClusterError> {
        let certs = read_certs(cert_chain)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            ClusterError::Tls(format!("read the private key {}: {e}", key.display()))
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| ClusterError::Tls(format!("the certificate and key: {e}")))?;
        Ok(Self {
            paths: vec![cert_chain.to_owned()],
            acceptor: Some(TlsAcceptor::from(Arc::new(config))),
            connector: None,
        })
    }

    /// A worker's side: the CA certificate(s) the coordinator's certificate must chain to.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Tls`] naming the file that cannot be read or used.
    pub fn client(ca: &Path) -> Result<Self, ClusterError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots.add(cert).map_err(|e| {
                ClusterError::Tls(format!("a CA certificate in {}: {e}", ca.display()))
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClusterError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            paths: vec![ca.to_owned()],
            acceptor: None,
            connector: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    pub(crate) fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    pub(crate) fn connector(&self) -> Option<&TlsConnector> {
        self.connector.as_ref()
    }
}

/// The name a worker expects in the coordinator's certificate: the host part of `addr`
/// (an IP address or a DNS name).
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, ClusterError> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_owned())
        .map_err(|e| ClusterError::Tls(format!("`{host}` is not a valid server name: {e}")))
}

/// Timing of the failure detector (docs/cluster.md, "Failures").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often a worker sends a heartbeat (default 1 s).
    pub heartbeat_interval: Duration,
    /// A worker silent this long is reported `WorkerDisconnected` (default 10 s).
    pub heartbeat_timeout: Duration,
    /// After the disconnection, how long its tasks wait for it before they are re-queued and
    /// it is reported `WorkerFailed` (default 10 s).
    pub reconnect_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            reconnect_grace: Duration::from_secs(10),
        }
    }
}
