//! `plugin.toml`: what an external plugin is and how to run it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::de::DeTable;

use super::protocol::SUPPORTED_PROTOCOLS;
use crate::config::{ConfigIssue, IssueKind, Origin};
use crate::event::{Hook, HookSet, PluginKind};
use crate::registry::did_you_mean;

/// The file name of a manifest inside a plugin's folder.
pub const MANIFEST_FILE: &str = "plugin.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    kind: PluginKind,
    hooks: Vec<Hook>,
    protocol: u32,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    shutdown_grace: Option<String>,
}

/// A parsed, checked `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Manifest {
    /// The plugin's unique name (letters, digits, `-`, `_`).
    pub name: String,
    /// Its version (free-form; semver by convention).
    pub version: String,
    /// One line for listings.
    pub description: String,
    /// What kind of plugin it is. Default `custom`.
    pub kind: PluginKind,
    /// The hooks it subscribes to (at least one).
    pub hooks: HookSet,
    /// The protocol version it speaks; one of [`SUPPORTED_PROTOCOLS`].
    pub protocol: u32,
    /// The program: a path relative to the plugin's folder when it contains a `/`, else
    /// looked up in `PATH`.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Plugins it starts after, when they are enabled.
    pub after: Vec<String>,
    /// Plugins that must be enabled for it to run.
    pub requires: Vec<String>,
    /// Extra environment variables for the child (literal values only).
    pub env: BTreeMap<String, String>,
    /// How long the process may take to exit after `shutdown` before it is killed.
    /// Default 2 s.
    pub shutdown_grace: Duration,
    /// The manifest file.
    pub path: PathBuf,
    /// The plugin's folder (the child's working directory).
    pub dir: PathBuf,
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    ///
    /// # Errors
    ///
    /// A [`ConfigIssue`] naming the file, line, column and key.
    pub fn load(path: &Path) -> Result<Self, ConfigIssue> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigIssue::new(
                IssueKind::Io,
                "",
                Origin::File {
                    path: Arc::from(path),
                    line: 0,
                    column: 0,
                },
                format!("cannot read the plugin manifest: {e}"),
            )
        })?;
        Self::parse(path, &text)
    }

    /// Parses manifest `text` as if read from `path`.
    ///
    /// # Errors
    ///
    /// A [`ConfigIssue`] naming the file, line, column and key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigIssue> {
        let at = |offset: usize| crate::config::file_position(text, path, offset);
        let file: ManifestFile = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => return Err(describe(path, text, &e)),
        };
        let doc = DeTable::parse(text).ok();
        let value_at = |key: &str| {
            doc.as_ref()
                .and_then(|d| d.get_ref().get(key))
                .map_or_else(|| at(0), |v| at(v.span().start))
        };
        let bad = |key: &str, message: String| {
            ConfigIssue::new(IssueKind::InvalidValue, key, value_at(key), message)
        };
        if file.name.is_empty()
            || !file
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "name",
                "invalid plugin name: use letters, digits, `-` and `_`".to_owned(),
            ));
        }
        if file.hooks.is_empty() {
            return Err(bad(
                "hooks",
                "no hooks: the plugin would never receive an event".to_owned(),
            ));
        }
        if !SUPPORTED_PROTOCOLS.contains(&file.protocol) {
            return Err(bad(
                "protocol",
                format!(
                    "plugin `{}` speaks protocol version {}, which this dtf does not support (supported: {})",
                    file.name,
                    file.protocol,
                    SUPPORTED_PROTOCOLS
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if file.command.trim().is_empty() {
            return Err(bad("command", "the command is empty".to_owned()));
        }
        let shutdown_grace = match &file.shutdown_grace {
            None => Duration::from_secs(2),
            Some(s) => crate::config::parse_duration(s).ok_or_else(|| {
                bad(
                    "shutdown_grace",
                    format!("invalid duration \"{s}\": use a number with a unit: ms, s, m or h"),
                )
            })?,
        };
        Ok(Self {
            name: file.name,
            version: file.version,
            description: file.description,
            kind: file.kind,
            hooks: HookSet::of(&file.hooks),
            protocol: file.protocol,
            command: file.command,
            args: file.args,
            after: file.after,
            requires: file.requires,
            env: file.env,
            shutdown_grace,
            path: path.to_owned(),
            // Absolute: the plugin runs in its folder, so a relative plugin directory
            // (`--plugin-dirs plugins`) would make `./run.sh` resolve against itself twice.
            dir: path.parent().map_or_else(PathBuf::new, |d| {
                std::path::absolute(d).unwrap_or_else(|_| d.to_owned())
            }),
        })
    }

    /// The program to run: relative paths resolved against the plugin's folder.
    pub fn program(&self) -> PathBuf {
        if self.command.contains('/') {
            self.dir.join(&self.command)
        } else {
            PathBuf::from(&self.command)
        }
    }

    /// The files whose change means a new version: the manifest, and the command and
    /// arguments that name files in the plugin's folder.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        for candidate in std::iter::once(&self.command).chain(&self.args) {
            let p = self.dir.join(candidate);
            if p.is_file() && !files.contains(&p) {
                files.push(p);
            }
        }
        files
    }
}

/// Turns a toml/serde error into an issue naming the key.
fn describe(path: &Path, text: &str, e: &toml::de::Error) -> ConfigIssue {
    let offset = e.span().map_or(0, |s| s.start);
    let origin = crate::config::file_position(text, path, offset);
    let message = e.message().trim().to_owned();
    // The key: the one named in the message, or the top-level key whose value holds the span.
    let named = message
        .split('`')
        .nth(1)
        .filter(|_| message.starts_with("unknown field") || message.starts_with("missing field"))
        .map(str::to_owned);
    let key = named.or_else(|| {
        let doc = DeTable::parse(text).ok()?;
        let span = e.span()?;
        doc.get_ref()
            .iter()
            .find(|(k, v)| {
                let s = v.span();
                (s.start <= span.start && span.start < s.end.max(s.start + 1))
                    || k.span().start == span.start
            })
            .map(|(k, _)| k.get_ref().to_string())
    });
    let kind = if message.starts_with("unknown field") {
        IssueKind::UnknownKey
    } else if message.starts_with("invalid type") {
        IssueKind::WrongType
    } else if message.starts_with("missing field") || message.starts_with("unknown variant") {
        IssueKind::InvalidValue
    } else {
        IssueKind::Syntax
    };
    let mut issue = ConfigIssue::new(kind, key.as_deref().unwrap_or(""), origin, message.clone());
    if message.starts_with("unknown field") || message.starts_with("unknown variant") {
        let mut parts = message.split('`').skip(1).step_by(2);
        if let Some(word) = parts.next() {
            let expected: Vec<&str> = parts.collect();
            issue.suggestion = did_you_mean(word, expected).map(str::to_owned);
        }
    }
    issue
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// A plugin in a relative plugin directory (`--plugin-dirs plugins`) runs `./run.sh`
    /// from its folder: the program's path is absolute, not relative to a folder the plugin
    /// already runs in (which pointed at `plugins/x/plugins/x/run.sh`).
    #[test]
    fn a_relative_plugin_directory_gives_an_absolute_program() {
        let text = "name = \"x\"\nversion = \"0.1.0\"\nkind = \"monitoring\"\n\
                    hooks = [\"task_created\"]\nprotocol = 1\ncommand = \"./run.sh\"\n";
        let m = Manifest::parse(Path::new("plugins/x/plugin.toml"), text).unwrap();
        assert!(m.dir.is_absolute(), "{}", m.dir.display());
        assert!(m.program().is_absolute(), "{}", m.program().display());
        assert!(m.program().ends_with("plugins/x/./run.sh"));
    }
}
