//! The index format: `index.toml`, a list of plugin versions and their artifacts.
//! The format is documented (with a JSON Schema) in `docs/plugin-index.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

use dtf_plugin_core::external::SUPPORTED_PROTOCOLS;

use crate::RepoError;

/// The file name of an index, at the root of the index URL.
pub const INDEX_FILE: &str = "index.toml";

/// The version of the index format this crate reads and writes (`format = 1`).
pub const INDEX_FORMAT: u32 = 1;

/// The largest `index.toml` read (16 MiB).
pub const MAX_INDEX_SIZE: u64 = 16 << 20;

/// An `index.toml`: every version of every plugin the index offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Index {
    /// The format version; must be [`INDEX_FORMAT`].
    pub format: u32,
    /// One entry per plugin version (`[[plugin]]` tables).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<IndexEntry>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            format: INDEX_FORMAT,
            plugins: Vec::new(),
        }
    }
}

/// One version of one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IndexEntry {
    /// The plugin's name, as in its `plugin.toml` (letters, digits, `-`, `_`).
    pub name: String,
    /// Its version (semver), as in its `plugin.toml`.
    pub version: Version,
    /// One line for listings.
    #[serde(default)]
    pub description: String,
    /// Where to read more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// Its license (an SPDX expression by convention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The plugin protocol versions it speaks (`docs/external-plugins.md`).
    pub protocol: ProtocolRange,
    /// Plugins it needs, by name, each with a semver range (`"*"` for any version).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, VersionReq>,
    /// Its artifacts, one per platform (`[[plugin.artifact]]`).
    #[serde(rename = "artifact")]
    pub artifacts: Vec<Artifact>,
}

/// A range of plugin protocol versions, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProtocolRange {
    /// The lowest version spoken.
    pub min: u32,
    /// The highest version spoken.
    pub max: u32,
}

impl ProtocolRange {
    /// The range `min..=max`.
    pub fn new(min: u32, max: u32) -> Self {
        Self { min, max }
    }

    /// Whether this build speaks one of these versions ([`SUPPORTED_PROTOCOLS`]).
    pub fn is_supported(&self) -> bool {
        SUPPORTED_PROTOCOLS
            .iter()
            .any(|v| (self.min..=self.max).contains(v))
    }
}

impl fmt::Display for ProtocolRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}..={}", self.min, self.max)
        }
    }
}

/// The protocol versions this build speaks, for messages (`[1]`).
pub fn supported_protocols() -> String {
    format!("{SUPPORTED_PROTOCOLS:?}")
}

/// The platform value that matches every OS or architecture (script plugins).
pub const ANY: &str = "any";

/// One downloadable archive of a plugin version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Artifact {
    /// The OS it runs on, as Rust's `std::env::consts::OS` spells it (`linux`, `macos`,
    /// `windows`), or `any`.
    pub os: String,
    /// The architecture, as `std::env::consts::ARCH` spells it (`x86_64`, `aarch64`), or
    /// `any`.
    pub arch: String,
    /// Where the `.tar.gz` is, relative to the index's URL (or absolute).
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its detached minisign signature (the whole `.minisig` text). Absent: unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minisig: Option<String>,
}

impl Artifact {
    /// Whether it runs on `os`/`arch`.
    pub fn fits(&self, os: &str, arch: &str) -> bool {
        (self.os == ANY || self.os == os) && (self.arch == ANY || self.arch == arch)
    }

    /// `os/arch`, for messages.
    pub fn platform(&self) -> String {
        format!("{}/{}", self.os, self.arch)
    }
}

impl IndexEntry {
    /// The artifact for `os`/`arch`: an exact match first, then one with `any`.
    pub fn artifact_for(&self, os: &str, arch: &str) -> Option<&Artifact> {
        self.artifacts
            .iter()
            .filter(|a| a.fits(os, arch))
            .min_by_key(|a| u8::from(a.os == ANY) + u8::from(a.arch == ANY))
    }

    /// The artifact for the platform this program runs on.
    pub fn artifact_here(&self) -> Option<&Artifact> {
        self.artifact_for(std::env::consts::OS, std::env::consts::ARCH)
    }

    /// The text a signature of this version's artifact must carry as its trusted comment,
    /// so that a signed artifact cannot be passed off as another plugin or version.
    pub fn trusted_comment(&self, sha256: &str) -> String {
        trusted_comment(&self.name, &self.version, sha256)
    }

    /// Why this version cannot be installed by this build on this platform, if it cannot.
    pub fn incompatibility(&self) -> Option<RepoError> {
        if !self.protocol.is_supported() {
            return Some(RepoError::IncompatibleProtocol {
                name: self.name.clone(),
                version: self.version.to_string(),
                theirs: self.protocol.to_string(),
                ours: supported_protocols(),
            });
        }
        if self.artifact_here().is_none() {
            return Some(RepoError::NoArtifact {
                name: self.name.clone(),
                version: self.version.to_string(),
                os: std::env::consts::OS.to_owned(),
                arch: std::env::consts::ARCH.to_owned(),
                available: self
                    .artifacts
                    .iter()
                    .map(Artifact::platform)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        None
    }
}

/// The trusted comment of a signature of `name` `version` whose artifact has `sha256`.
pub fn trusted_comment(name: &str, version: &Version, sha256: &str) -> String {
    format!("dtf-plugin name={name} version={version} sha256={sha256}")
}

/// Whether `name` is a valid plugin name (as `plugin.toml` requires).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Index {
    /// Parses and checks an `index.toml`; `source` names it in errors.
    ///
    /// # Errors
    ///
    /// [`RepoError::BadIndex`] naming the first problem: TOML syntax, an unknown key, a
    /// format version other than [`INDEX_FORMAT`], an invalid name or checksum, an empty
    /// protocol range, a version listed twice, a version without artifacts.
    pub fn parse(source: &str, text: &str) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::BadIndex {
            source_name: source.to_owned(),
            reason,
        };
        let index: Index =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim().to_owned()))?;
        if index.format != INDEX_FORMAT {
            return Err(bad(format!(
                "format {} is not supported (this dtf reads format {INDEX_FORMAT})",
                index.format
            )));
        }
        let mut seen = BTreeSet::new();
        for e in &index.plugins {
            let what = format!("plugin `{}` {}", e.name, e.version);
            if !is_valid_name(&e.name) {
                return Err(bad(format!(
                    "plugin name `{}` is not valid (letters, digits, `-`, `_`)",
                    e.name
                )));
            }
            if !seen.insert((e.name.clone(), e.version.clone())) {
                return Err(bad(format!("{what} is listed twice")));
            }
            if e.protocol.min > e.protocol.max {
                return Err(bad(format!("{what}: protocol.min is above protocol.max")));
            }
            if e.artifacts.is_empty() {
                return Err(bad(format!("{what} has no artifact")));
            }
            for r in e.requires.keys() {
                if !is_valid_name(r) {
                    return Err(bad(format!(
                        "{what}: requires `{r}`, not a valid plugin name"
                    )));
                }
            }
            for a in &e.artifacts {
                if a.sha256.len() != 64
                    || !a
                        .sha256
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(bad(format!(
                        "{what}: sha256 must be 64 lowercase hex digits"
                    )));
                }
                if a.os.is_empty() || a.arch.is_empty() || a.url.is_empty() {
                    return Err(bad(format!(
                        "{what}: an artifact has an empty os, arch or url"
                    )));
                }
            }
        }
        Ok(index)
    }

    /// The index as `index.toml` text.
    ///
    /// # Errors
    ///
    /// [`RepoError::BadIndex`] if it cannot be written as TOML (not expected).
    pub fn to_toml(&self) -> Result<String, RepoError> {
        toml::to_string(self).map_err(|e| RepoError::BadIndex {
            source_name: INDEX_FILE.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The entries of `name`, highest version first.
    pub fn versions(&self, name: &str) -> Vec<&IndexEntry> {
        let mut v: Vec<&IndexEntry> = self.plugins.iter().filter(|e| e.name == name).collect();
        v.sort_by(|a, b| b.version.cmp(&a.version));
        v
    }

    /// Adds `entry`, or merges it into the entry of the same name and version (its
    /// artifacts replace those of the same platform; the other fields are replaced).
    pub fn upsert(&mut self, entry: IndexEntry) {
        if let Some(old) = self
            .plugins
            .iter_mut()
            .find(|e| e.name == entry.name && e.version == entry.version)
        {
            let mut artifacts: Vec<Artifact> = old
                .artifacts
                .drain(..)
                .filter(|a| {
                    !entry
                        .artifacts
                        .iter()
                        .any(|n| n.os == a.os && n.arch == a.arch)
                })
                .collect();
            artifacts.extend(entry.artifacts.iter().cloned());
            *old = IndexEntry { artifacts, ..entry };
        } else {
            self.plugins.push(entry);
        }
        self.plugins
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn sample() -> String {
        format!(
            "format = 1\n\n[[plugin]]\nname = \"echo\"\nversion = \"0.2.0\"\ndescription = \"Echo\"\n\
             protocol = {{ min = 1, max = 1 }}\nrequires = {{ base = \"^0.1\" }}\n\n\
             [[plugin.artifact]]\nos = \"any\"\narch = \"any\"\nurl = \"a/echo.tar.gz\"\nsize = 10\nsha256 = \"{SHA}\"\n"
        )
    }

    #[test]
    fn parses_and_round_trips() {
        let index = Index::parse("t", &sample()).unwrap();
        assert_eq!(index.plugins[0].requires["base"].to_string(), "^0.1");
        let again = Index::parse("t", &index.to_toml().unwrap()).unwrap();
        assert_eq!(index, again);
    }

    #[test]
    fn refuses_unknown_keys_bad_hashes_and_other_formats() {
        let typo = sample()
            .replace("homepage", "x")
            .replace("license", "y")
            .replace("description", "descripton");
        let err = Index::parse("t", &typo).unwrap_err().to_string();
        assert!(err.contains("descripton"), "{err}");
        let err = Index::parse("t", &sample().replace(SHA, "abc"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256"), "{err}");
        let err = Index::parse("t", &sample().replace("format = 1", "format = 2"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("format 2"), "{err}");
    }

    #[test]
    fn picks_the_exact_platform_before_any() {
        let mut e = Index::parse("t", &sample()).unwrap().plugins.remove(0);
        let mut linux = e.artifacts[0].clone();
        linux.os = "linux".into();
        linux.url = "linux".into();
        e.artifacts.push(linux);
        assert_eq!(e.artifact_for("linux", "x86_64").unwrap().url, "linux");
        assert_eq!(
            e.artifact_for("macos", "aarch64").unwrap().url,
            "a/echo.tar.gz"
        );
        e.artifacts.retain(|a| a.os == "linux");
        assert!(e.artifact_for("macos", "aarch64").is_none());
    }

    #[test]
    fn protocol_ranges_against_this_build() {
        assert!(ProtocolRange::new(1, 1).is_supported());
        assert!(ProtocolRange::new(0, 3).is_supported());
        assert!(!ProtocolRange::new(2, 3).is_supported());
        assert_eq!(ProtocolRange::new(2, 3).to_string(), "2..=3");
    }
}
