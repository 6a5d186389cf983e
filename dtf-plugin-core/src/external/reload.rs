//! Hot reload: a poll-based watcher over the plugin directories.
//!
//! Polling (reading each manifest and the metadata of the files it runs, every interval, on a
//! blocking thread) needs no platform file-watching crate
//! and behaves the same on every OS and file system, including network mounts where change
//! notifications are unreliable.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::manifest::Manifest;
use super::scan_dirs;
use crate::config::Origin;
use crate::error::ManagerError;
use crate::manager::{PluginManager, PluginSpec};
use crate::plugin::PluginConfig;

/// What one [`Reloader::poll`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReloadEvent {
    /// A new plugin appeared and was started.
    Loaded {
        /// Its name.
        name: String,
        /// Its version.
        version: String,
    },
    /// A plugin's manifest or executable changed; the new version replaced the old one.
    Replaced {
        /// Its name.
        name: String,
        /// The new version.
        version: String,
    },
    /// A plugin's folder or manifest disappeared; it was stopped and removed.
    Unloaded {
        /// Its name.
        name: String,
    },
    /// Something could not be applied (a bad manifest, a failed start); the running
    /// version, if any, keeps running.
    Failed {
        /// The plugin, when known.
        name: Option<String>,
        /// What went wrong.
        error: String,
    },
}

struct Known {
    manifest: Arc<Manifest>,
    fingerprint: u64,
    /// Whether the manager's plugin of this name is this manifest's (taken as running at
    /// start, or added or replaced by a poll). A manifest whose name another plugin holds (its
    /// `add` failed) is remembered so that it is not retried every poll, but the other plugin
    /// is never replaced or removed for it.
    ours: bool,
}

/// Watches plugin directories and applies changes to a running manager: see the
/// [module docs](super).
///
/// The plugins present when the reloader is created are taken as already running (started
/// from the configuration); only later changes are applied. A plugin the manager holds under
/// the same name that is not from the directories (a built-in, named with
/// [`reserved`](Self::reserved), or one a manifest's `add` found there) is never replaced or
/// removed by a change in the directories.
pub struct Reloader {
    dirs: Vec<PathBuf>,
    known: BTreeMap<String, Known>,
    settings: BTreeMap<String, PluginConfig>,
    disabled: BTreeSet<String>,
    reserved: BTreeSet<String>,
    /// Reserved names whose manifest was reported, once each.
    refused: BTreeSet<String>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("dirs", &self.dirs)
            .field("plugins", &self.known.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What identifies a plugin's version on disk: the manifest's contents, and the identity of
/// the files it runs (size, modification and change times, inode), not their contents. A
/// plugin's program may be a large binary: reading and hashing it at every poll cost a second
/// of I/O each interval and stalled the runtime's worker meanwhile. Replaced (an install
/// renames a new file in) or rewritten in place, the file gets a new inode or times.
fn fingerprint(m: &Manifest) -> u64 {
    let mut h = DefaultHasher::new();
    for (i, file) in m.watched_files().into_iter().enumerate() {
        file.hash(&mut h);
        if i == 0 {
            // The manifest itself (small): its contents.
            match std::fs::read(&file) {
                Ok(bytes) => bytes.hash(&mut h),
                Err(e) => e.kind().to_string().hash(&mut h),
            }
            continue;
        }
        match std::fs::metadata(&file) {
            Ok(md) => {
                (md.len(), md.modified().ok()).hash(&mut h);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt as _;
                    (md.ino(), md.dev(), md.ctime(), md.ctime_nsec()).hash(&mut h);
                }
            }
            Err(e) => e.kind().to_string().hash(&mut h),
        }
    }
    h.finish()
}

/// Scans `dirs` and fingerprints what it finds, on a blocking thread (file-system work off
/// the runtime's workers).
async fn scan(
    dirs: Vec<PathBuf>,
) -> Option<(Vec<(Manifest, u64)>, Vec<crate::config::ConfigIssue>)> {
    let scanned = tokio::task::spawn_blocking(move || {
        let (manifests, errors) = scan_dirs(&dirs);
        let manifests = manifests
            .into_iter()
            .map(|m| {
                let fp = fingerprint(&m);
                (m, fp)
            })
            .collect();
        (manifests, errors)
    })
    .await;
    match scanned {
        Ok(scanned) => Some(scanned),
        Err(e) => {
            // Not "every plugin is gone": nothing is known about the directories this time.
            tracing::warn!(error = %e, "hot reload: the scan of the plugin directories failed");
            None
        }
    }
}

impl Reloader {
    /// A reloader over `dirs`, taking what is there now as the running state.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        let (manifests, _) = scan_dirs(&dirs);
        let known = manifests
            .into_iter()
            .map(|m| {
                let fingerprint = fingerprint(&m);
                (
                    m.name.clone(),
                    Known {
                        manifest: Arc::new(m),
                        fingerprint,
                        ours: true,
                    },
                )
            })
            .collect();
        Self {
            dirs,
            known,
            settings: BTreeMap::new(),
            disabled: BTreeSet::new(),
            reserved: BTreeSet::new(),
            refused: BTreeSet::new(),
        }
    }

    /// Plugin `name` is not from the plugin directories (a built-in of the program): a
    /// manifest with that name is reported once and ignored, and never replaces or removes it.
    pub fn reserved(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.known.remove(&name);
        self.reserved.insert(name);
        self
    }

    /// A reloader over a configuration's `plugin_dirs`, giving plugins their configured
    /// settings and leaving out the ones with `enabled = false`.
    #[cfg(feature = "config")]
    pub fn from_config(config: &crate::config::Config) -> Self {
        let mut r = Self::new(config.plugin_dirs().to_vec());
        for name in config.configured_plugins() {
            if let Some(s) = config.plugin_settings(name) {
                r.settings.insert(name.to_owned(), s);
            }
            if config.get(&format!("plugins.{name}.enabled"))
                == Some(serde_json::Value::Bool(false))
            {
                r = r.disabled(name);
            }
        }
        r
    }

    async fn disabled_on_request(manager: &PluginManager, name: &str) -> bool {
        manager
            .list()
            .await
            .is_ok_and(|list| list.iter().any(|p| p.name == name && p.disabled_on_request))
    }

    async fn disabled_by_failures(manager: &PluginManager, name: &str) -> bool {
        manager.list().await.is_ok_and(|list| {
            list.iter().any(|p| {
                p.name == name
                    && p.status == crate::PluginStatus::Disabled
                    && !p.disabled_on_request
            })
        })
    }

    /// Gives plugin `name` these settings when it is (re)loaded.
    pub fn settings(mut self, name: impl Into<String>, config: PluginConfig) -> Self {
        self.settings.insert(name.into(), config);
        self
    }

    /// Never loads plugin `name` (it is disabled in the configuration).
    pub fn disabled(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        // Not running, so never "gone" either: taken as running, it was removed (and reported
        // `Unloaded`) at the first poll.
        self.known.remove(&name);
        self.disabled.insert(name);
        self
    }

    fn spec(&self, m: &Arc<Manifest>) -> PluginSpec {
        let spec = super::spec(m);
        match self.settings.get(&m.name) {
            Some(s) => spec.config(s),
            None => spec,
        }
    }

    /// The spec of `m`, a new version of a plugin the manager runs, with the configuration in
    /// force for the running version: a change made while it ran (the web console's, or any
    /// [`PluginManager::reconfigure`]) outlives the new version, rather than being replaced by
    /// the settings the reloader was given at the start.
    async fn next_version(&self, manager: &PluginManager, m: &Arc<Manifest>) -> PluginSpec {
        match manager.config(&m.name).await {
            Ok(config) => super::spec(m).config(config),
            Err(_) => self.spec(m),
        }
    }

    /// Scans the directories once and applies what changed: new plugins are added, changed
    /// ones replaced with [`PluginManager::replace`] (no event lost, the configuration in
    /// force kept), removed ones removed.
    pub async fn poll(&mut self, manager: &PluginManager) -> Vec<ReloadEvent> {
        let Some((manifests, errors)) = scan(self.dirs.clone()).await else {
            return vec![ReloadEvent::Failed {
                name: None,
                error: "the scan of the plugin directories failed; nothing changed".to_owned(),
            }];
        };
        let mut events = Vec::new();
        // A plugin whose manifest became unreadable keeps running its last good version.
        let mut broken = BTreeSet::new();
        for e in errors {
            if let Origin::File { path, .. } = &e.origin {
                broken.insert(path.to_path_buf());
            }
            events.push(ReloadEvent::Failed {
                name: None,
                error: e.to_string(),
            });
        }
        let mut seen = BTreeSet::new();
        for (m, fp) in manifests {
            let name = m.name.clone();
            if self.disabled.contains(&name) || !seen.insert(name.clone()) {
                continue;
            }
            if self.reserved.contains(&name) {
                if self.refused.insert(name.clone()) {
                    events.push(ReloadEvent::Failed {
                        error: format!(
                            "{}: a built-in plugin is named `{name}`; this manifest is ignored",
                            m.path.display()
                        ),
                        name: Some(name),
                    });
                }
                continue;
            }
            let m = Arc::new(m);
            match self.known.get(&name) {
                Some(k) if k.fingerprint == fp => {}
                Some(k) if k.ours => {
                    let same_hooks = k.manifest.hooks == m.hooks;
                    let r = if same_hooks {
                        match manager.replace(self.next_version(manager, &m).await).await {
                            // A version disabled by its failures (budget spent, or a failed
                            // start) gets a fresh start with the new one: that is what a fix
                            // dropped into the directory is for. One disabled on request (a
                            // console's button) stays disabled.
                            Ok(()) if Self::disabled_by_failures(manager, &name).await => {
                                manager.enable(&name).await
                            }
                            r => r,
                        }
                    } else {
                        // Other hooks need other routing: stop the old one, start the new one.
                        // Events published between the two are not delivered to it.
                        tracing::warn!(
                            plugin = %name,
                            "hooks changed: the plugin is removed and added again; events published meanwhile do not reach it"
                        );
                        let on_request = Self::disabled_on_request(manager, &name).await;
                        let next = self.next_version(manager, &m).await;
                        match manager.remove(&name).await {
                            Ok(()) | Err(ManagerError::UnknownPlugin { .. }) => {
                                match manager.add(next).await {
                                    // Disabled on request, it stays so with the new version.
                                    Ok(()) if on_request => manager.disable(&name).await,
                                    r => r,
                                }
                            }
                            Err(e) => Err(e),
                        }
                    };
                    events.push(match r {
                        Ok(()) => ReloadEvent::Replaced {
                            name: name.clone(),
                            version: m.version.clone(),
                        },
                        Err(e) => ReloadEvent::Failed {
                            name: Some(name.clone()),
                            error: e.to_string(),
                        },
                    });
                    // Replaced or not, the manager's plugin of this name is still this
                    // manifest's (a failed replace keeps the old version running).
                    self.known.insert(
                        name,
                        Known {
                            manifest: m,
                            fingerprint: fp,
                            ours: true,
                        },
                    );
                }
                // New, or taken by another plugin when last seen (tried again as it changed).
                Some(_) | None => {
                    let r = manager.add(self.spec(&m)).await;
                    let ours = r.is_ok();
                    events.push(match r {
                        Ok(()) => ReloadEvent::Loaded {
                            name: name.clone(),
                            version: m.version.clone(),
                        },
                        Err(e) => ReloadEvent::Failed {
                            name: Some(name.clone()),
                            error: e.to_string(),
                        },
                    });
                    self.known.insert(
                        name,
                        Known {
                            manifest: m,
                            fingerprint: fp,
                            ours,
                        },
                    );
                }
            }
        }
        let gone: Vec<String> = self
            .known
            .iter()
            // A manifest that could not be read, or one in a directory that could not be read
            // (its path is the directory's), is not gone: its plugin keeps running.
            .filter(|(n, k)| {
                !seen.contains(*n) && !broken.iter().any(|b| k.manifest.path.starts_with(b))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            if self.known.remove(&name).is_some_and(|k| !k.ours) {
                continue; // the plugin of this name is another's
            }
            events.push(match manager.remove(&name).await {
                Ok(()) | Err(ManagerError::UnknownPlugin { .. }) => ReloadEvent::Unloaded { name },
                Err(e) => ReloadEvent::Failed {
                    name: Some(name),
                    error: e.to_string(),
                },
            });
        }
        for e in &events {
            match e {
                ReloadEvent::Failed { name, error } => {
                    tracing::warn!(plugin = ?name, %error, "hot reload: change not applied");
                }
                other => tracing::info!(change = ?other, "hot reload"),
            }
        }
        events
    }

    /// Polls every `every` in a background task until the manager shuts down.
    pub fn spawn(mut self, manager: PluginManager, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if manager.list().await.is_err() {
                    return;
                }
                self.poll(&manager).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// The program's identity on disk decides, not its contents (which are not read): a
    /// rewrite in place or a replacement by rename changes the fingerprint, nothing else does.
    #[test]
    fn a_program_rewritten_or_replaced_changes_the_fingerprint() {
        let dir = std::env::temp_dir().join(format!("dtf-reload-fp-{}", std::process::id()));
        let plugin = dir.join("p");
        std::fs::create_dir_all(&plugin).unwrap();
        std::fs::write(
            plugin.join("plugin.toml"),
            "name = \"p\"\nversion = \"0.1.0\"\nkind = \"monitoring\"\nhooks = [\"task_created\"]\n\
             protocol = 1\ncommand = \"run.sh\"\n",
        )
        .unwrap();
        let program = plugin.join("run.sh");
        std::fs::write(&program, "echo one").unwrap();
        let fp = || {
            let (m, errors) = scan_dirs(std::slice::from_ref(&dir));
            assert!(errors.is_empty(), "{errors:?}");
            assert_eq!(m[0].watched_files().len(), 2);
            fingerprint(&m[0])
        };
        let first = fp();
        assert_eq!(fp(), first, "unchanged");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&program, "echo two").unwrap(); // same size, in place
        let rewritten = fp();
        assert_ne!(rewritten, first);
        let new = plugin.join("run.sh.new");
        std::fs::write(&new, "echo two").unwrap();
        std::fs::rename(&new, &program).unwrap(); // same contents, a new file
        assert_ne!(fp(), rewritten);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
