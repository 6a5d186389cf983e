//! The lock file of a plugin directory: what was installed from which index.

use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::RepoError;
use crate::index::is_valid_name;

/// The lock file's name in a plugin directory. It does not end in `.toml`, so the plugin
/// directory scanner does not take it for a manifest.
pub const LOCK_FILE: &str = "plugins.lock";

/// One installed plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LockedPlugin {
    /// Its name (also its folder in the plugin directory).
    pub name: String,
    /// The version installed.
    pub version: Version,
    /// The SHA-256 of the artifact it was unpacked from.
    pub sha256: String,
    /// The index it came from (URL without credentials).
    pub index: String,
    /// The id of the key that signed it, or `unsigned` when trusted without a signature.
    pub signed_by: String,
    /// The plugins it requires (names).
    #[serde(default)]
    pub requires: Vec<String>,
}

/// The contents of [`LOCK_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LockFile {
    /// The installed plugins, sorted by name.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockedPlugin>,
}

impl LockFile {
    /// Reads the lock file of `plugin_dir`; an absent file is an empty lock.
    ///
    /// # Errors
    ///
    /// It cannot be read or parsed.
    pub fn load(plugin_dir: &Path) -> Result<Self, RepoError> {
        let path = plugin_dir.join(LOCK_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lock: Self = toml::from_str(&text).map_err(|e| RepoError::Config {
                    path: path.clone(),
                    reason: e.to_string().trim().to_owned(),
                })?;
                // Names become folder names: never a path.
                if let Some(bad) = lock.plugins.iter().find(|p| !is_valid_name(&p.name)) {
                    return Err(RepoError::Config {
                        path,
                        reason: format!("`{}` is not a valid plugin name", bad.name),
                    });
                }
                Ok(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(RepoError::io("read", path)(e)),
        }
    }

    /// Writes it to `plugin_dir` atomically (a temporary file, then a rename).
    ///
    /// # Errors
    ///
    /// Writing or renaming failed.
    pub fn save(&self, plugin_dir: &Path) -> Result<(), RepoError> {
        let path = plugin_dir.join(LOCK_FILE);
        let text = toml::to_string(self).map_err(|e| RepoError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# Written by `dtf-coordinator plugin`: the plugins installed from indexes.\n{text}"
        );
        write_atomic(&path, text.as_bytes())
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&LockedPlugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Replaces or adds `plugin`.
    pub fn put(&mut self, plugin: LockedPlugin) {
        self.plugins.retain(|p| p.name != plugin.name);
        self.plugins.push(plugin);
        self.plugins.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Removes `name`; whether it was there.
    pub fn take(&mut self, name: &str) -> bool {
        let before = self.plugins.len();
        self.plugins.retain(|p| p.name != name);
        before != self.plugins.len()
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old or the new contents, never a part.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp: PathBuf = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(RepoError::io("create", &tmp))?;
    f.write_all(bytes).map_err(RepoError::io("write", &tmp))?;
    f.sync_all().map_err(RepoError::io("write", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(RepoError::io("rename", path))
}
