//! The crate's error type.

/// Errors of the notifier. Messages never contain a token, password or webhook URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A configuration value is wrong; `key` is its path (`channels[0].webhook_url`).
    #[error("invalid notify configuration at `{key}`: {message}")]
    Config {
        /// The key path.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The configuration does not have the expected shape (unknown key, wrong type, unknown
    /// channel type); the message names the key path.
    #[error(transparent)]
    Parse(#[from] dtf_plugin_core::ConfigError),
    /// The HTTP client could not be built.
    #[error("build the HTTP client: {0}")]
    Client(String),
}

impl NotifyError {
    /// A [`NotifyError::Config`] for `key`.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}
