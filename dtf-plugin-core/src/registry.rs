//! A catalogue of plugins by name, so a coordinator can enable, disable and configure them
//! from a command line or a configuration file.
//!
//! Each dtf crate that ships plugins has a `register(&mut PluginRegistry)` function that adds
//! its built-in plugins; plugins found in plugin directories are added with
//! [`PluginSource::Directory`]. The registry only describes and builds plugins: a
//! [`PluginSpec`] from [`PluginRegistry::spec`] is then added to a
//! [`PluginManager`](crate::PluginManager) like any other.
//!
//! ```
//! use dtf_plugin_core::prelude::*;
//! use dtf_plugin_core::registry::{PluginRegistry, RegistryEntry, RegistryError};
//!
//! #[derive(Default)]
//! struct Echo;
//! impl Plugin for Echo {
//!     fn metadata(&self) -> PluginMetadata {
//!         PluginMetadata::new("echo").version("1.2.0").kind(PluginKind::Monitoring)
//!     }
//!     async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = PluginRegistry::new();
//! registry.register(
//!     RegistryEntry::new(|| PluginSpec::new(Echo::default))
//!         .description("logs every event")
//!         .default_config(serde_json::json!({ "level": "info" })),
//! )?;
//! assert_eq!(registry.get("echo").map(|e| e.metadata().version.as_ref()), Some("1.2.0"));
//! let spec = registry.spec("echo", None)?; // default config
//! assert_eq!(spec.metadata().name, "echo");
//! match registry.spec("ecoh", None) {
//!     Err(RegistryError::Unknown { suggestion, .. }) => assert_eq!(suggestion.as_deref(), Some("echo")),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), RegistryError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::manager::PluginSpec;
use crate::plugin::{PluginConfig, PluginMetadata};

/// Where a registered plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginSource {
    /// Compiled into the coordinator, from the named crate.
    BuiltIn {
        /// The crate that registered it, e.g. `"dtf-plugins-ci"`.
        krate: Cow<'static, str>,
    },
    /// An out-of-process plugin found in a plugin directory; the path is its manifest.
    Directory(PathBuf),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn { krate } => write!(f, "built-in ({krate})"),
            Self::Directory(path) => write!(f, "directory ({})", path.display()),
        }
    }
}

type MakeSpec = Arc<dyn Fn() -> PluginSpec + Send + Sync>;

/// One plugin in a [`PluginRegistry`]: how to build it and what it is.
#[derive(Clone)]
pub struct RegistryEntry {
    metadata: PluginMetadata,
    description: Cow<'static, str>,
    source: PluginSource,
    default_config: PluginConfig,
    make: MakeSpec,
}

impl fmt::Debug for RegistryEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The default configuration is left out: it may hold secrets read from the environment.
        f.debug_struct("RegistryEntry")
            .field("metadata", &self.metadata)
            .field("description", &self.description)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RegistryEntry {
    /// An entry whose specs come from `make`. The metadata (name, version, kind, hooks) is
    /// read from one spec built now. The source defaults to built-in from an unnamed crate;
    /// set it with [`source`](Self::source) or [`built_in`](Self::built_in).
    pub fn new(make: impl Fn() -> PluginSpec + Send + Sync + 'static) -> Self {
        let metadata = make().metadata().clone();
        Self {
            metadata,
            description: Cow::Borrowed(""),
            source: PluginSource::BuiltIn {
                krate: Cow::Borrowed(""),
            },
            default_config: PluginConfig::Null,
            make: Arc::new(make),
        }
    }

    /// Sets a one-line description shown in listings.
    pub fn description(mut self, description: impl Into<Cow<'static, str>>) -> Self {
        self.description = description.into();
        self
    }

    /// Marks the entry as built into the coordinator by crate `krate`.
    pub fn built_in(mut self, krate: impl Into<Cow<'static, str>>) -> Self {
        self.source = PluginSource::BuiltIn {
            krate: krate.into(),
        };
        self
    }

    /// Sets where the plugin comes from.
    pub fn source(mut self, source: PluginSource) -> Self {
        self.source = source;
        self
    }

    /// Sets the configuration used when none is given (shown by "print the effective
    /// configuration"; never put secrets here).
    pub fn default_config(mut self, config: PluginConfig) -> Self {
        self.default_config = config;
        self
    }

    /// Name, version, kind and hooks.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The one-line description.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Where the plugin comes from.
    pub fn plugin_source(&self) -> &PluginSource {
        &self.source
    }

    /// The configuration used when none is given.
    pub fn defaults(&self) -> &PluginConfig {
        &self.default_config
    }

    /// A fresh spec with `config` (or the default configuration when `None`).
    pub fn spec(&self, config: Option<PluginConfig>) -> PluginSpec {
        (self.make)().config(config.unwrap_or_else(|| self.default_config.clone()))
    }
}

/// Errors of the [`PluginRegistry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two plugins were registered under one name.
    #[error("plugin `{name}` is registered twice ({first} and {second})")]
    Duplicate {
        /// The name.
        name: String,
        /// The source of the entry registered first.
        first: String,
        /// The source of the entry that was refused.
        second: String,
    },
    /// No plugin has this name.
    #[error("unknown plugin `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown {
        /// The name asked for.
        name: String,
        /// The closest registered name, if one is close.
        suggestion: Option<String>,
    },
}

/// Plugins by name: see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    entries: BTreeMap<String, RegistryEntry>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` under its metadata name; refuses a name that is already taken.
    pub fn register(&mut self, entry: RegistryEntry) -> Result<(), RegistryError> {
        let name = entry.name().to_owned();
        if let Some(first) = self.entries.get(&name) {
            return Err(RegistryError::Duplicate {
                name,
                first: first.source.to_string(),
                second: entry.source.to_string(),
            });
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Removes and returns the entry named `name` (an unloaded directory plugin).
    pub fn unregister(&mut self, name: &str) -> Option<RegistryEntry> {
        self.entries.remove(name)
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&RegistryEntry> {
        self.entries.get(name)
    }

    /// The entry named `name`, or [`RegistryError::Unknown`] with the closest name.
    pub fn entry(&self, name: &str) -> Result<&RegistryEntry, RegistryError> {
        self.entries
            .get(name)
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_owned(),
                suggestion: did_you_mean(name, self.names()).map(str::to_owned),
            })
    }

    /// A spec for the plugin named `name` with `config` (its defaults when `None`).
    pub fn spec(
        &self,
        name: &str,
        config: Option<PluginConfig>,
    ) -> Result<PluginSpec, RegistryError> {
        self.entry(name).map(|e| e.spec(config))
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The entries, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &RegistryEntry> {
        self.entries.values()
    }

    /// How many plugins are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no plugin is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely
/// typo (at most a third of the word's length, and at least one edit allowed).
///
/// ```
/// use dtf_plugin_core::registry::did_you_mean;
/// assert_eq!(did_you_mean("retires", ["retries", "timeout"]), Some("retries"));
/// assert_eq!(did_you_mean("zzz", ["retries", "timeout"]), None);
/// ```
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_typos() {
        assert_eq!(edit_distance("retries", "retries"), 0);
        assert_eq!(edit_distance("retires", "retries"), 1);
        assert_eq!(edit_distance("retry", "retries"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions_pick_the_closest_and_refuse_far_ones() {
        let keys = ["queue_capacity", "overflow", "handler_timeout"];
        assert_eq!(did_you_mean("queue_capacty", keys), Some("queue_capacity"));
        assert_eq!(did_you_mean("overflw", keys), Some("overflow"));
        assert_eq!(did_you_mean("colour", keys), None);
    }
}
