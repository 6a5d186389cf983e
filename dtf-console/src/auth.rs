//! The access token that every state-changing request must carry.

use std::fmt;
use std::path::{Path, PathBuf};

use dtf_plugin_core::Secret;

use crate::ConsoleError;

/// The environment variable the token is read from.
pub const TOKEN_ENV: &str = "DTF_UI_TOKEN";

/// Where the console's token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenOrigin {
    /// The [`TOKEN_ENV`] environment variable.
    Environment,
    /// A file.
    File(PathBuf),
    /// Generated at random at start: the embedding application shows it to its user once.
    Generated,
    /// Given by the embedding application.
    Given,
}

/// The bearer token of the console: `Authorization: Bearer <token>` on every action.
///
/// `Debug` prints `***`; the value is only reachable through [`AccessToken::expose`].
#[derive(Clone)]
pub struct AccessToken {
    secret: Secret,
    origin: TokenOrigin,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"***")
            .field("origin", &self.origin)
            .finish()
    }
}

impl AccessToken {
    /// A token chosen by the embedding application.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            secret: Secret::new(value),
            origin: TokenOrigin::Given,
        }
    }

    /// 32 random bytes from the operating system, hex-encoded (64 characters).
    ///
    /// # Errors
    ///
    /// [`ConsoleError::Random`] when the operating system has no random source.
    pub fn generate() -> Result<Self, ConsoleError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| ConsoleError::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            secret: Secret::new(hex),
            origin: TokenOrigin::Generated,
        })
    }

    /// The token from [`TOKEN_ENV`] if set, else from `file` if given (surrounding whitespace
    /// trimmed), else a [generated](Self::generate) one.
    ///
    /// # Errors
    ///
    /// [`ConsoleError::TokenFile`] or [`ConsoleError::EmptyToken`] for an unreadable or empty
    /// file, [`ConsoleError::Random`].
    pub fn resolve(file: Option<&Path>) -> Result<Self, ConsoleError> {
        if let Some(secret) = Secret::from_env(TOKEN_ENV) {
            if secret.expose().trim().is_empty() {
                return Err(ConsoleError::EmptyToken {
                    from: TOKEN_ENV.to_owned(),
                });
            }
            return Ok(Self {
                secret: Secret::new(secret.expose().trim()),
                origin: TokenOrigin::Environment,
            });
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConsoleError::TokenFile {
                path: path.to_owned(),
                source,
            })?;
            let value = text.trim();
            if value.is_empty() {
                return Err(ConsoleError::EmptyToken {
                    from: path.display().to_string(),
                });
            }
            return Ok(Self {
                secret: Secret::new(value),
                origin: TokenOrigin::File(path.to_owned()),
            });
        }
        Self::generate()
    }

    /// Where the token came from.
    pub fn origin(&self) -> &TokenOrigin {
        &self.origin
    }

    /// The token itself: show it to the user once when it was generated; never log it.
    pub fn expose(&self) -> &str {
        self.secret.expose()
    }

    /// Whether an `Authorization` header value carries this token, compared in constant time
    /// (for a given length).
    pub(crate) fn accepts(&self, header: &str) -> bool {
        let Some(given) = header.strip_prefix("Bearer ") else {
            return false;
        };
        let want = self.secret.expose().as_bytes();
        let given = given.trim().as_bytes();
        if want.len() != given.len() {
            return false;
        }
        want.iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_its_own_bearer_token() {
        let t = AccessToken::new("s3cret");
        assert!(t.accepts("Bearer s3cret"));
        assert!(!t.accepts("Bearer s3cre"));
        assert!(!t.accepts("Bearer s3cres"));
        assert!(!t.accepts("s3cret"));
        assert!(!t.accepts("Basic s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn generated_tokens_differ() {
        let (a, b) = match (AccessToken::generate(), AccessToken::generate()) {
            (Ok(a), Ok(b)) => (a, b),
            _ => panic!("no random source"),
        };
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.origin(), &TokenOrigin::Generated);
    }
}
