//! Out-of-process plugins from plugin directories, and hot reload. Feature `external`.
//!
//! Loading compiled Rust plugins as shared libraries is unsound (Rust has no stable ABI), so
//! dtf does what Nushell and HashiCorp's go-plugin do: a plugin is a separate process, in any
//! language, that speaks a small documented protocol — newline-delimited JSON over its
//! stdin/stdout (see `docs/external-plugins.md`). Each one runs inside an [`ExternalPlugin`],
//! an ordinary [`Plugin`](crate::Plugin), so the manager supervises it like any other: a
//! crash or garbage output is a failure and restarts it within the budget, a hang is cut by
//! the handler timeout.
//!
//! A plugin directory holds one folder per plugin with a [`MANIFEST_FILE`] (or a
//! `<name>.toml` manifest directly in the directory). [`register_dirs`] adds every valid
//! manifest to a [`PluginRegistry`] as [`PluginSource::Directory`]; a bad manifest is
//! reported and skipped, the others load. [`Reloader`] polls the directories and replaces,
//! unloads and loads plugins in a running [`PluginManager`](crate::PluginManager).
//!
//! ```no_run
//! use dtf_plugin_core::PluginRegistry;
//! use dtf_plugin_core::external;
//!
//! let mut registry = PluginRegistry::new();
//! let report = external::register_dirs(&mut registry, &["plugins".into()]);
//! for problem in &report.errors {
//!     eprintln!("skipped a plugin: {problem}");
//! }
//! ```

mod manifest;
mod plugin;
mod protocol;
mod reload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use manifest::{MANIFEST_FILE, Manifest};
pub use plugin::{CHILD_ENV, ExternalPlugin, INSTANCE_ENV, mark_plugin_processes};
pub use protocol::{MAX_LINE, SUPPORTED_PROTOCOLS};
pub use reload::{ReloadEvent, Reloader};

use crate::config::{ConfigIssue, IssueKind, Origin};
use crate::manager::PluginSpec;
use crate::registry::{PluginRegistry, PluginSource, RegistryEntry};

/// The manifests of the plugin directories `dirs`, sorted by path, and the problems of the
/// ones that could not be read. A missing directory is a problem too.
pub fn scan_dirs(dirs: &[PathBuf]) -> (Vec<Manifest>, Vec<ConfigIssue>) {
    let mut manifests = Vec::new();
    let mut errors = Vec::new();
    for dir in dirs {
        let unreadable = |e: std::io::Error| {
            ConfigIssue::new(
                IssueKind::Io,
                "plugin_dirs",
                Origin::File {
                    path: Arc::from(dir.as_path()),
                    line: 0,
                    column: 0,
                },
                format!("cannot read the plugin directory: {e}"),
            )
        };
        let mut paths = Vec::new();
        match std::fs::read_dir(dir) {
            Err(e) => {
                errors.push(unreadable(e));
                continue;
            }
            Ok(entries) => {
                for entry in entries {
                    // An entry that cannot be read (too many open files, a network file
                    // system's hiccup) is a problem of the directory: the reloader then keeps
                    // every plugin of it rather than taking them for removed.
                    let entry = match entry {
                        Ok(entry) => entry,
                        Err(e) => {
                            errors.push(unreadable(e));
                            continue;
                        }
                    };
                    let p = entry.path();
                    let manifest = p.join(MANIFEST_FILE);
                    if p.is_dir() && manifest.is_file() {
                        paths.push(manifest);
                    } else if p.is_file() && p.extension().is_some_and(|e| e == "toml") {
                        paths.push(p);
                    }
                }
            }
        }
        paths.sort();
        for path in paths {
            match Manifest::load(&path) {
                Ok(m) => manifests.push(m),
                Err(issue) => errors.push(issue),
            }
        }
    }
    (manifests, errors)
}

/// A registry entry for an external plugin: its spec runs an [`ExternalPlugin`].
pub fn entry(manifest: Manifest) -> RegistryEntry {
    let manifest = Arc::new(manifest);
    let m = Arc::clone(&manifest);
    let mut entry = RegistryEntry::new(move || spec(&m))
        .description(manifest.description.clone())
        .source(PluginSource::Directory(manifest.path.clone()))
        .enabled_by_default(true);
    for a in &manifest.after {
        entry = entry.after(a.clone());
    }
    for r in &manifest.requires {
        entry = entry.requires(r.clone());
    }
    entry
}

/// A plugin spec running `manifest` (default settings).
pub fn spec(manifest: &Arc<Manifest>) -> PluginSpec {
    let m = Arc::clone(manifest);
    PluginSpec::new(move || ExternalPlugin::new(Arc::clone(&m)))
}

/// What [`register_dirs`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct DirReport {
    /// The names registered.
    pub loaded: Vec<String>,
    /// Manifests that were refused (bad key, unsupported protocol, duplicate name), each
    /// naming its file. They do not stop the others.
    pub errors: Vec<ConfigIssue>,
}

/// Scans `dirs` and registers every valid manifest as [`PluginSource::Directory`],
/// enabled by default.
pub fn register_dirs(registry: &mut PluginRegistry, dirs: &[PathBuf]) -> DirReport {
    let (manifests, mut errors) = scan_dirs(dirs);
    let mut loaded = Vec::new();
    for m in manifests {
        let name = m.name.clone();
        let path = m.path.clone();
        match registry.register(entry(m)) {
            Ok(()) => loaded.push(name),
            Err(e) => errors.push(ConfigIssue::new(
                IssueKind::InvalidValue,
                "name",
                manifest_origin(&path),
                e.to_string(),
            )),
        }
    }
    for e in &errors {
        tracing::warn!(problem = %e, "plugin not loaded");
    }
    DirReport { loaded, errors }
}

fn manifest_origin(path: &Path) -> Origin {
    Origin::File {
        path: Arc::from(path),
        line: 0,
        column: 0,
    }
}
