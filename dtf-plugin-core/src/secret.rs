//! [`Secret`]: a token that never shows in `Debug`, `Display` or serialized output.

use serde::{Deserialize, Deserializer};

/// An API token or password. `Debug` and `Display` print `***`; the value is only reachable
/// through [`Secret::expose`], which the HTTP layer calls when it builds a request header.
///
/// It deserializes from a plain string, so a token can sit in a JSON configuration, but it
/// has no `Serialize` implementation: a configuration written back out never carries it.
///
/// ```
/// use dtf_plugin_core::Secret;
/// let token = Secret::new("ghp_example");
/// assert_eq!(format!("{token:?} {token}"), "*** ***");
/// assert_eq!(token.expose(), "ghp_example");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads the secret from environment variable `var`; `None` when it is unset, empty or
    /// not valid Unicode. (It returns no `VarError`: that error's message would carry the
    /// non-Unicode value.) Callers name `var` in their own error.
    pub fn from_env(var: &str) -> Option<Self> {
        std::env::var(var).ok().filter(|v| !v.is_empty()).map(Self)
    }

    /// The value itself. Use it only to build a request; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s: Secret = serde_json::from_value(serde_json::json!("tok-123"))
            .unwrap_or_else(|_| Secret::new(""));
        assert_eq!(s.expose(), "tok-123");
        assert_eq!(format!("{s:?}|{s}|{s:#?}"), "***|***|***");
    }

    #[test]
    fn reads_from_the_environment_or_says_it_is_missing() {
        // PATH is set in every test environment; a made-up name is not.
        assert!(Secret::from_env("PATH").is_some_and(|s| !s.expose().is_empty()));
        assert_eq!(Secret::from_env("DTF_SECRET_TEST_SURELY_UNSET"), None);
    }
}
