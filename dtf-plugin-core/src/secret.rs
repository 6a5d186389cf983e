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
}
