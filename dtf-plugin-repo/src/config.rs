//! The `[registry]` table of `dtf.toml` (and its `plugin_dirs`).

use std::path::{Path, PathBuf};

use dtf_plugin_core::config::{Config, ConfigLoader, Origin};

use crate::RepoError;

/// The keys of `[registry]`.
pub const REGISTRY_KEYS: &[&str] = &[
    "indexes",
    "trusted_keys",
    "allow_unsigned",
    "cache_dir",
    "ca_certificates",
];

/// `[registry]` of `dtf.toml`, paths resolved against the file's directory. Its `Debug` shows
/// the indexes without credentials ([`redact_location`](crate::redact_location)).
#[derive(Clone, Default, PartialEq, Eq)]
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

impl std::fmt::Debug for RegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let indexes: Vec<String> = self
            .indexes
            .iter()
            .map(|i| crate::redact_location(i))
            .collect();
        f.debug_struct("RegistrySettings")
            .field("indexes", &indexes)
            .field("trusted_keys", &self.trusted_keys)
            .field("allow_unsigned", &self.allow_unsigned)
            .field("cache_dir", &self.cache_dir)
            .field("ca_certificates", &self.ca_certificates)
            .field("plugin_dirs", &self.plugin_dirs)
            .finish()
    }
}

impl RegistrySettings {
    /// Reads `[registry]` and `plugin_dirs` of the configuration file `path` as
    /// `dtf-coordinator` reads it: `${VAR}` interpolation, and the `DTF_…` environment
    /// variables over the file (`DTF_PLUGIN_DIRS`, say), so that a plugin is installed where
    /// the coordinator looks for it.
    ///
    /// # Errors
    ///
    /// [`RepoError::Config`] if the file cannot be read or is invalid (each problem with its
    /// key and position, never its value), or a `[registry]` value has the wrong type.
    pub fn load(path: &Path) -> Result<Self, RepoError> {
        Self::from_loader(
            &ConfigLoader::new().env_prefix("DTF_").file(path),
            Some(path),
        )
    }

    /// Like [`RegistrySettings::load`] without a file: the `DTF_…` environment variables only.
    ///
    /// # Errors
    ///
    /// As [`RegistrySettings::load`].
    pub fn from_env() -> Result<Self, RepoError> {
        Self::from_loader(&ConfigLoader::new().env_prefix("DTF_"), None)
    }

    /// Like [`RegistrySettings::load`], with the file's text given and no environment.
    ///
    /// # Errors
    ///
    /// As [`RegistrySettings::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Self, RepoError> {
        Self::from_loader(&ConfigLoader::new().source(path, text), Some(path))
    }

    fn from_loader(loader: &ConfigLoader, path: Option<&Path>) -> Result<Self, RepoError> {
        let config = loader.load().map_err(|e| RepoError::Config {
            path: path.map_or_else(|| PathBuf::from("the environment"), Path::to_owned),
            reason: e.to_string().trim().replace('\n', "; "),
        })?;
        Self::from_config(&config)
    }

    /// The settings of a configuration already loaded (the coordinator's). Relative paths
    /// are resolved against the directory of the file that set them.
    ///
    /// # Errors
    ///
    /// [`RepoError::Config`] naming the key and its position when a `[registry]` value has
    /// the wrong type (the value itself is not repeated: it may hold a credential).
    pub fn from_config(config: &Config) -> Result<Self, RepoError> {
        let key = |name: &str| format!("registry.{name}");
        let strings = |name: &str| -> Result<Vec<String>, RepoError> {
            let key = key(name);
            match config.get(&key) {
                None => Ok(Vec::new()),
                Some(v) => serde_json::from_value(v).map_err(|_| wrong_type(config, &key)),
            }
        };
        // Relative to the directory of the file that set the key (the working directory for
        // a key from the environment).
        let base = |name: &str| match config.origin(&key(name)) {
            Some(Origin::File { path, .. }) => {
                path.parent().map(Path::to_owned).unwrap_or_default()
            }
            _ => PathBuf::new(),
        };
        let paths = |name: &str| -> Result<Vec<PathBuf>, RepoError> {
            let base = base(name);
            Ok(strings(name)?
                .into_iter()
                .map(|p| base.join(p)) // an absolute path stays as it is
                .collect())
        };
        let cache_dir = match config.get(&key("cache_dir")) {
            None => None,
            Some(v) => {
                let dir: String =
                    serde_json::from_value(v).map_err(|_| wrong_type(config, &key("cache_dir")))?;
                Some(base("cache_dir").join(dir))
            }
        };
        let index_base = base("indexes");
        Ok(Self {
            // A relative index directory is relative to the file, like every other path.
            indexes: strings("indexes")?
                .into_iter()
                .map(|i| {
                    if i.contains("://") || Path::new(&i).is_absolute() {
                        i
                    } else {
                        index_base.join(i).to_string_lossy().into_owned()
                    }
                })
                .collect(),
            trusted_keys: paths("trusted_keys")?,
            allow_unsigned: strings("allow_unsigned")?,
            cache_dir,
            ca_certificates: paths("ca_certificates")?,
            plugin_dirs: config.plugin_dirs().to_vec(),
        })
    }
}

/// A `[registry]` value of the wrong type, by key and position (never by value).
fn wrong_type(config: &Config, key: &str) -> RepoError {
    let (path, at) = match config.origin(key) {
        Some(Origin::File { path, line, column }) => {
            (path.to_path_buf(), format!("line {line}, column {column}"))
        }
        Some(other) => (PathBuf::from(other.to_string()), String::new()),
        None => (PathBuf::from("the configuration"), String::new()),
    };
    let what = if key == "registry.cache_dir" {
        "a path"
    } else {
        "an array of strings"
    };
    RepoError::Config {
        path,
        reason: if at.is_empty() {
            format!("`{key}` must be {what}")
        } else {
            format!("`{key}` at {at} must be {what}")
        },
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

    /// Read as the coordinator reads the file: `${VAR}` is interpolated (it was taken
    /// literally, so `plugin install` wrote into a directory named `${…}` the coordinator
    /// never scans, and an index's `${TOKEN}` was sent as is).
    #[test]
    fn interpolates_variables_like_the_coordinator() {
        let home = std::env::var("HOME").unwrap();
        let text =
            "plugin_dirs = [\"${HOME}/plugins\"]\n[registry]\nindexes = [\"${HOME}/index\"]\n";
        let s = RegistrySettings::parse(Path::new("/etc/dtf/dtf.toml"), text).unwrap();
        assert_eq!(s.plugin_dirs, [PathBuf::from(format!("{home}/plugins"))]);
        assert_eq!(s.indexes, [format!("{home}/index")]);
    }

    /// A value of the wrong type is named by key and position, and not repeated: it may hold
    /// a credential (toml's own message quoted the whole line, and the console showed it).
    #[test]
    fn a_wrong_type_names_the_key_and_position_but_not_the_value() {
        let text = "[registry]\nindexes = \"https://ci:glpat-SECRET@git.example/dtf/\"\n";
        let err = RegistrySettings::parse(Path::new("dtf.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`registry.indexes` at line 2"), "{err}");
        assert!(err.contains("dtf.toml"), "{err}");
        assert!(!err.contains("glpat"), "{err}");
        let text = "[registry]\nindexes = [\"https://ci:glpat-SECRET@git.example/dtf/\"\n";
        let err = RegistrySettings::parse(Path::new("dtf.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("glpat"), "a syntax error: {err}");
    }

    #[test]
    fn refuses_unknown_registry_keys() {
        let err = RegistrySettings::parse(Path::new("dtf.toml"), "[registry]\nindex = []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("index"), "{err}");
    }
}
