//! Reading indexes and artifacts from `file://`, `https://` and loopback `http://` URLs,
//! with a size cap on everything read.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use reqwest::Url;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::RepoError;

/// Parses an index location: a `file://`, `https://` or loopback `http://` URL, or a local
/// directory path. The result ends with `/` so relative artifact URLs resolve inside it.
///
/// # Errors
///
/// [`RepoError::BadUrl`] for another scheme, `http://` to a host that is not loopback, or
/// a path that cannot be made absolute.
pub fn index_url(location: &str) -> Result<Url, RepoError> {
    let bad = |reason: &str| RepoError::BadUrl {
        url: redact_location(location),
        reason: reason.to_owned(),
    };
    let mut url = if location.contains("://") {
        Url::parse(location).map_err(|e| bad(&e.to_string()))?
    } else {
        let path = std::path::absolute(location).map_err(|e| bad(&e.to_string()))?;
        Url::from_directory_path(&path).map_err(|()| bad("not an absolute path"))?
    };
    check_url(&url).map_err(|reason| bad(&reason))?;
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// Whether `url` may be read: `https://`, `file://`, or `http://` to a loopback address
/// (tests and local mirrors; plain HTTP over a network would let anyone swap the index).
pub(crate) fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" | "file" => Ok(()),
        "http" => {
            let host = url.host_str().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = match host.parse::<IpAddr>() {
                Ok(ip) => ip.is_loopback(),
                Err(_) => host.eq_ignore_ascii_case("localhost"),
            };
            if loopback {
                Ok(())
            } else {
                Err("plain http:// is only allowed to a loopback address; use https://".to_owned())
            }
        }
        other => Err(format!(
            "scheme `{other}` is not supported (https://, file://, or http:// on loopback)"
        )),
    }
}

/// A URL for messages: without user name, password, query or fragment (which could hold a
/// token).
pub(crate) fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// An index location (URL or directory) as logs, messages and `Debug` may show it: a URL
/// without its user name and password (`user:pw@`), and without query and fragment when it
/// parses (any of them may hold a token); a directory as it is.
///
/// ```
/// assert_eq!(
///     dtf_plugin_repo::redact_location("https://ci:glpat-x@git.example/dtf/?token=y"),
///     "https://git.example/dtf/"
/// );
/// ```
pub fn redact_location(location: &str) -> String {
    if let Ok(url) = Url::parse(location) {
        return redact(&url);
    }
    // Not a URL the parser takes, e.g. a password with a `/` in it (`user:abc/def@host`):
    // everything up to the last `@` may be credentials, and the query and fragment may hold a
    // token, so none of them is shown (a path with an `@` in it loses its start, which only
    // shows less).
    match location.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.split(['?', '#']).next().unwrap_or_default();
            let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
            format!("{scheme}://{rest}")
        }
        None => location.to_owned(),
    }
}

/// `relative` resolved against the index URL `base`, checked like an index URL. A URL under the
/// index's own origin and path without a query of its own gets the index URL's query: an index reached
/// with `?private_token=…` (a GitLab package registry) serves its `index.toml` and artifacts
/// with the same token (before, the join dropped it and every download answered 401). Only a
/// `file://` index may point at files, and only an index on this machine at a loopback host
/// (else a remote index could make the client send requests to local services before any
/// signature is checked).
pub(crate) fn join(base: &Url, relative: &str) -> Result<Url, RepoError> {
    let mut url = base.join(relative).map_err(|e| RepoError::BadUrl {
        url: relative.to_owned(),
        reason: e.to_string(),
    })?;
    if url.query().is_none()
        && base.query().is_some()
        && url.origin() == base.origin()
        && url.path().starts_with(base.path())
    {
        url.set_query(base.query());
    }
    check_url(&url).map_err(|reason| RepoError::BadUrl {
        url: redact(&url),
        reason,
    })?;
    if url.scheme() == "file" && base.scheme() != "file" {
        return Err(RepoError::BadUrl {
            url: redact(&url),
            reason: "an index served over the network cannot point at local files".to_owned(),
        });
    }
    if is_local(&url) && !is_local(base) {
        return Err(RepoError::BadUrl {
            url: redact(&url),
            reason: "an index served over the network cannot point at this machine".to_owned(),
        });
    }
    Ok(url)
}

/// Whether `url` points at this machine: a `file://` URL, or a loopback, unspecified
/// (`0.0.0.0`) or `localhost` host.
pub(crate) fn is_local(url: &Url) -> bool {
    let local_ip = |ip: IpAddr| {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || ip.is_unspecified()
    };
    if url.scheme() == "file" {
        return true;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => local_ip(ip),
        Err(_) => {
            let d = host.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    }
}

fn file_path(url: &Url) -> Result<PathBuf, RepoError> {
    url.to_file_path().map_err(|()| RepoError::BadUrl {
        url: redact(url),
        reason: "not a local file path".to_owned(),
    })
}

/// The HTTP client: rustls (the Mozilla roots plus `extra_roots`, PEM), redirects only to
/// URLs [`check_url`] allows, at most 5.
pub(crate) fn http_client(extra_roots: &[Vec<u8>]) -> Result<reqwest::Client, RepoError> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if let Err(reason) = check_url(attempt.url()) {
            attempt.error(reason)
        } else if is_local(attempt.url()) && !attempt.previous().first().is_none_or(is_local) {
            attempt.error("a redirect from the network to this machine is refused")
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder();
    for pem in extra_roots {
        let cert = reqwest::Certificate::from_pem(pem).map_err(|e| RepoError::Fetch {
            url: String::new(),
            reason: format!("not a PEM certificate: {e}"),
        })?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .redirect(policy)
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(300))
        .user_agent(concat!("dtf-plugin-repo/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RepoError::Fetch {
            url: String::new(),
            reason: format!("cannot build the HTTP client: {e}"),
        })
}

/// Where the bytes of a download go as they arrive: a file (hashed on the way) or memory.
struct Sink {
    file: Option<(tokio::fs::File, PathBuf)>,
    memory: Vec<u8>,
    hash: Sha256,
}

impl Sink {
    async fn put(&mut self, chunk: &[u8]) -> Result<(), RepoError> {
        self.hash.update(chunk);
        match &mut self.file {
            Some((file, path)) => file
                .write_all(chunk)
                .await
                .map_err(RepoError::io("write", &*path)),
            None => {
                self.memory.extend_from_slice(chunk);
                Ok(())
            }
        }
    }
}

/// Reads `url` into `sink`, failing as soon as more than `max` bytes arrive.
async fn read_into(
    http: &reqwest::Client,
    url: &Url,
    max: u64,
    sink: &mut Sink,
) -> Result<u64, RepoError> {
    let fail = |reason: String| RepoError::Fetch {
        url: redact(url),
        reason,
    };
    let too_big = || fail(format!("larger than the {max} bytes expected"));
    let mut total: u64 = 0;
    if url.scheme() == "file" {
        let path = file_path(url)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut buf).await.map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > max {
                return Err(too_big());
            }
            sink.put(&buf[..n]).await?;
        }
        return Ok(total);
    }
    let mut response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| fail(without_url(e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    if response.content_length().is_some_and(|n| n > max) {
        return Err(too_big());
    }
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(without_url(e)))? {
        total += chunk.len() as u64;
        if total > max {
            return Err(too_big());
        }
        sink.put(&chunk).await?;
    }
    Ok(total)
}

/// reqwest's message without the URL it appends (the caller names the URL, redacted).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}

/// The bytes at `url`, at most `max`.
pub(crate) async fn get_bytes(
    http: &reqwest::Client,
    url: &Url,
    max: u64,
) -> Result<Vec<u8>, RepoError> {
    let mut sink = Sink {
        file: None,
        memory: Vec::new(),
        hash: Sha256::new(),
    };
    read_into(http, url, max, &mut sink).await?;
    Ok(sink.memory)
}

/// Downloads `url` to the new file `dest`, at most `max` bytes; returns the size and the
/// SHA-256 (lowercase hex) of what was written.
pub(crate) async fn download(
    http: &reqwest::Client,
    url: &Url,
    dest: &Path,
    max: u64,
) -> Result<(u64, String), RepoError> {
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(RepoError::io("create", dest))?;
    let mut sink = Sink {
        file: Some((file, dest.to_owned())),
        memory: Vec::new(),
        hash: Sha256::new(),
    };
    let size = read_into(http, url, max, &mut sink).await?;
    if let Some((mut file, _)) = sink.file {
        file.flush().await.map_err(RepoError::io("write", dest))?;
        file.sync_all()
            .await
            .map_err(RepoError::io("write", dest))?;
    }
    Ok((size, hex(&sink.hash.finalize())))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_https_file_and_loopback_http_only() {
        assert!(index_url("https://plugins.example.org/dtf").is_ok());
        assert!(index_url("http://127.0.0.1:8080/").is_ok());
        assert!(index_url("http://[::1]:8080/").is_ok());
        assert!(index_url("http://localhost/x").is_ok());
        assert!(index_url("file:///srv/index").is_ok());
        let err = index_url("http://plugins.example.org/")
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        let err = index_url("ftp://x/").unwrap_err().to_string();
        assert!(err.contains("ftp"), "{err}");
    }

    #[test]
    fn index_urls_end_with_a_slash_and_artifacts_resolve_inside() {
        let base = index_url("https://h.example/repo").unwrap();
        assert_eq!(base.as_str(), "https://h.example/repo/");
        assert_eq!(
            join(&base, "artifacts/a.tar.gz").unwrap().as_str(),
            "https://h.example/repo/artifacts/a.tar.gz"
        );
        assert!(join(&base, "http://evil.example/a.tar.gz").is_err());
    }

    /// An index reached with a token in its query (a GitLab package registry's
    /// `?private_token=`) keeps it for `index.toml` and the artifacts on its own origin; an
    /// artifact elsewhere never gets it, and one with a query of its own keeps that.
    #[test]
    fn the_index_urls_query_goes_under_its_own_origin_and_path_only() {
        let base = index_url(
            "https://gitlab.example/api/v4/projects/7/packages/generic/dtf?private_token=canary",
        )
        .unwrap();
        assert_eq!(
            join(&base, "index.toml").unwrap().as_str(),
            "https://gitlab.example/api/v4/projects/7/packages/generic/dtf/index.toml?private_token=canary"
        );
        assert_eq!(
            join(&base, "https://gitlab.example/a/b.tar.gz?sig=1")
                .unwrap()
                .as_str(),
            "https://gitlab.example/a/b.tar.gz?sig=1"
        );
        // Another project on the same host does not get this one's token.
        assert_eq!(
            join(&base, "https://gitlab.example/api/v4/projects/8/b.tar.gz")
                .unwrap()
                .as_str(),
            "https://gitlab.example/api/v4/projects/8/b.tar.gz"
        );
        assert_eq!(
            join(&base, "https://cdn.example/b.tar.gz")
                .unwrap()
                .as_str(),
            "https://cdn.example/b.tar.gz"
        );
    }

    /// An index read over the network cannot send the client to this machine's services.
    #[test]
    fn a_remote_index_cannot_point_at_this_machine() {
        let remote = index_url("https://plugins.example.org/dtf/").unwrap();
        for target in [
            "http://127.0.0.1:9/admin",
            "http://[::1]/x",
            "http://localhost:2375/containers/json",
            "https://localhost/x",
            "https://127.0.0.2/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://0.0.0.0/x",
        ] {
            let err = join(&remote, target).unwrap_err().to_string();
            assert!(
                err.contains("cannot point at this machine"),
                "{target}: {err}"
            );
        }
        let err = join(&remote, "file:///etc/passwd").unwrap_err().to_string();
        assert!(err.contains("cannot point at local files"), "{err}");
        // A local index may (a local mirror), and a remote one may point elsewhere.
        let local = index_url("http://127.0.0.1:8080/").unwrap();
        assert!(join(&local, "http://127.0.0.1:8080/artifacts/a.tar.gz").is_ok());
        assert!(join(&remote, "https://cdn.example.org/a.tar.gz").is_ok());
    }

    #[test]
    fn redacts_credentials_and_queries() {
        let url = Url::parse("https://user:pw@h.example/i/?token=abc#f").unwrap();
        assert_eq!(redact(&url), "https://h.example/i/");
        let err = index_url("http://user:s3cret@plugins.example.org/")
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("s3cret") && err.contains("plugins.example.org"),
            "{err}"
        );
        let err = index_url("http://user:s3cret@[bad/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        // A password with a `/` in it (base64 tokens have them): the URL does not parse, and
        // the credentials do not end at the first `/`.
        let location = "https://ci:abc/def@plugins.example.org/dtf/?token=x";
        assert_eq!(
            redact_location(location),
            "https://plugins.example.org/dtf/"
        );
        let err = index_url(location).unwrap_err().to_string();
        assert!(!err.contains("def") && !err.contains("abc"), "{err}");
    }
}
