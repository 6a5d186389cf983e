//! The crate's error type. Messages are lowercase fragments that read after "failed to …".

use std::path::PathBuf;

/// Something the CI integration could not do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CiError {
    /// A CI system name did not match any known system.
    #[error("select CI system `{name}`: unknown name (valid names: {valid})")]
    UnknownSystem {
        /// The name asked for.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// A report format name did not match any known format.
    #[error("select report format `{name}`: unknown name (valid names: {valid})")]
    UnknownFormat {
        /// The name asked for.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// Writing a report file failed.
    #[error("write report `{}`: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing to a live output stream failed.
    #[error("write to the live output: {0}")]
    Io(#[from] std::io::Error),
    /// Serializing the JSON report failed.
    #[error("serialize the JSON report: {0}")]
    Json(#[from] serde_json::Error),
    /// A service was selected but no token was configured or found in the environment.
    #[error("configure `{service}`: no token (set {variables}, or `token` in the configuration)")]
    MissingToken {
        /// The service.
        service: &'static str,
        /// The environment variables that are read, in order.
        variables: String,
    },
    /// A token holds characters an HTTP header cannot carry (inside it: surrounding
    /// whitespace, such as the line break a file ends with, is trimmed).
    #[error(
        "configure `{service}`: the token from {from} holds characters an HTTP header cannot carry"
    )]
    BadToken {
        /// The service.
        service: &'static str,
        /// Where the token came from: the environment variable, or `token` in the
        /// configuration.
        from: String,
    },
    /// A service was selected but an identifier or URL it needs is unknown.
    #[error("configure `{service}`: no `{key}` (set it in the configuration, or {variables})")]
    MissingSetting {
        /// The service.
        service: &'static str,
        /// The configuration key.
        key: &'static str,
        /// The environment variables that are read, in order.
        variables: String,
    },
    /// An API call failed for good (after retries). The message never holds a token.
    #[error("call `{target}`: {message}")]
    Api {
        /// The target (e.g. `github.check-run`).
        target: String,
        /// What went wrong: HTTP status and the start of the response, or the transport error.
        message: String,
    },
}
