//! The `[registry]` table of `dtf.toml` (and its `plugin_dirs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::RepoError;

/// The keys of `[registry]`.
pub const REGISTRY_KEYS: &[&str] = &[
    "indexes",
    "trusted_keys",
    "allow_unsigned",
    "cache_dir",
    "ca_certificates",
];

/// `[registry]` of `dtf.toml`, paths resolved against the file's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrySettings {
    /// Index URLs (or directories), searched in this order: the first index listing a name
    /// is where that plugin comes from.
    pub indexes: Vec<String>,
    /// Public key files whose signatures are trusted.
    pub trusted_keys: Vec<PathBuf>,
    /// Plugins the user trusts without a signature.
    pub allow_unsigned: Vec<String>,
    /// Where fetched indexes are cached (default: the user's cache directory).
    pub cache_dir: Option<PathBuf>,
    /// Extra CA certificates (PEM files) trusted for `https://` indexes.
    pub ca_certificates: Vec<PathBuf>,
    /// The file's `plugin_dirs`: the first one is where plugins are installed by default.
    pub plugin_dirs: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    registry: Option<Section>,
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    indexes: Vec<String>,
    #[serde(default)]
    trusted_keys: Vec<PathBuf>,
    #[serde(default)]
    allow_unsigned: Vec<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    ca_certificates: Vec<PathBuf>,
}

impl RegistrySettings {
    /// Reads `[registry]` and `plugin_dirs` of the configuration file `path`; the other
    /// tables are left to the coordinator's loader.
    ///
    /// # Errors
    ///
    /// [`RepoError::Config`] if the file cannot be read, is not TOML, or `[registry]` has an
    /// unknown key or a value of the wrong type.
    pub fn load(path: &Path) -> Result<Self, RepoError> {
        let text = std::fs::read_to_string(path).map_err(RepoError::io("read", path))?;
        Self::parse(path, &text)
    }

    /// Like [`RegistrySettings::load`], with the file's text given.
    ///
    /// # Errors
    ///
    /// As [`RegistrySettings::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, RepoError> {
        let file: File = toml::from_str(text).map_err(|e| RepoError::Config {
            path: path.to_owned(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let indexes = file
            .registry
            .as_ref()
            .map(|r| r.indexes.clone())
            .unwrap_or_default();
        let section = file.registry.unwrap_or(Section {
            indexes: Vec::new(),
            trusted_keys: Vec::new(),
            allow_unsigned: Vec::new(),
            cache_dir: None,
            ca_certificates: Vec::new(),
        });
        Ok(Self {
            // A relative index directory is relative to the file, like every other path.
            indexes: indexes
                .into_iter()
                .map(|i| {
                    if i.contains("://") || Path::new(&i).is_absolute() {
                        i
                    } else {
                        base.join(i).to_string_lossy().into_owned()
                    }
                })
                .collect(),
            trusted_keys: section.trusted_keys.into_iter().map(resolve).collect(),
            allow_unsigned: section.allow_unsigned,
            cache_dir: section.cache_dir.map(resolve),
            ca_certificates: section.ca_certificates.into_iter().map(resolve).collect(),
            plugin_dirs: file.plugin_dirs.into_iter().map(resolve).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_registry_table_and_resolves_paths_against_the_file() {
        let text = "plugin_dirs = [\"plugins\"]\n[manager]\nqueue_capacity = 3\n\
                    [registry]\nindexes = [\"https://p.example/\", \"local-index\"]\n\
                    trusted_keys = [\"keys/a.pub\"]\nallow_unsigned = [\"mine\"]\n";
        let s = RegistrySettings::parse(Path::new("/etc/dtf/dtf.toml"), text).unwrap();
        assert_eq!(s.indexes, ["https://p.example/", "/etc/dtf/local-index"]);
        assert_eq!(s.trusted_keys, [PathBuf::from("/etc/dtf/keys/a.pub")]);
        assert_eq!(s.plugin_dirs, [PathBuf::from("/etc/dtf/plugins")]);
        assert_eq!(s.allow_unsigned, ["mine"]);
    }

    #[test]
    fn refuses_unknown_registry_keys() {
        let err = RegistrySettings::parse(Path::new("dtf.toml"), "[registry]\nindex = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("index"), "{err}");
    }
}
