//! The reference coordinator's web console: `dtf-coordinator --ui 127.0.0.1:8080` mounts the
//! `dtf-console` crate on the run's plugin manager (see `docs/web-console.md`). Off by default.
//!
//! The token comes from `DTF_UI_TOKEN`, else from the file named by `DTF_UI_TOKEN_FILE`; when
//! neither is set a random one is generated and printed once, on stderr, with the console's
//! address. It is never logged.
//!
//! The console's registry page learns from [`CoordinatorCatalog`] where each plugin comes from
//! (built in, a plugin directory, installed from an index: the lock file of its plugin
//! directory says so) and, when `[registry] indexes` is set in the configuration file, what
//! those indexes offer.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use dtf_console::{
    AccessToken, AvailablePlugin, CatalogFuture, Console, ConsoleConfig, InstalledPlugin,
    PluginCatalog, PluginOrigin, RunningConsole, TokenOrigin,
};
use dtf_plugin_core::PluginManager;
use dtf_plugin_core::registry::{PluginRegistry, PluginSource};
use dtf_plugin_repo::{LockFile, RegistrySettings, RepoClient};

use crate::CoordinatorError;

/// The environment variable naming a file that holds the console's token.
pub const TOKEN_FILE_ENV: &str = "DTF_UI_TOKEN_FILE";

/// Parses the value of `--ui`: `HOST:PORT`, or a bare `PORT` (then on 127.0.0.1).
///
/// # Errors
///
/// [`CoordinatorError::Usage`] naming the flag and the value.
pub fn parse_ui(value: &str) -> Result<SocketAddr, CoordinatorError> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value.parse().map_err(|_| {
        CoordinatorError::Usage(format!(
            "--ui: expected an address like 127.0.0.1:8080 (or a port), got `{value}`"
        ))
    })
}

/// Starts the console on `manager` when `addr` is set, and says where on stderr (with the
/// token when it was generated). The token comes from `DTF_UI_TOKEN`, else the file named by
/// `DTF_UI_TOKEN_FILE`, else `token_file` (`[ui] token_file`), else it is generated.
///
/// # Errors
///
/// [`CoordinatorError::Console`] when the token file cannot be read or the address bound.
pub async fn start(
    manager: &PluginManager,
    addr: Option<SocketAddr>,
    registry: &PluginRegistry,
    plugin_dirs: &[PathBuf],
    config_file: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<Option<RunningConsole>, CoordinatorError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let catalog = CoordinatorCatalog::new(registry, plugin_dirs, config_file);
    let file = std::env::var_os(TOKEN_FILE_ENV)
        .map(PathBuf::from)
        .or_else(|| token_file.map(Path::to_owned));
    let token = AccessToken::resolve(file.as_deref())?;
    let generated = *token.origin() == TokenOrigin::Generated;
    // The fragment never reaches the server; the page keeps the token for the tab.
    let link = generated.then(|| format!("#token={}", token.expose()));
    let console = Console::attach(manager, token, ConsoleConfig::default().bind(addr))
        .await?
        .catalog(catalog);
    let running = console.serve().await?;
    let local = running.local_addr();
    let mut err = std::io::stderr();
    let _ = match link {
        Some(link) => writeln!(
            err,
            "web console: http://{local}/ (actions need the token, generated for this run; \
             open http://{local}/{link} or set DTF_UI_TOKEN)"
        ),
        None => writeln!(err, "web console: http://{local}/"),
    };
    Ok(Some(running))
}

/// What the reference coordinator knows about its plugins, for the console
/// ([`dtf_console::PluginCatalog`]): its registry (built-ins and the plugins of its plugin
/// directories, those installed from an index told apart by the directory's lock file), the
/// plugins it always runs, and a plugin repository client for `[registry] indexes`.
pub struct CoordinatorCatalog {
    installed: Vec<InstalledPlugin>,
    indexes: Vec<String>,
    /// The repository client, or why it could not be built.
    client: Option<Result<RepoClient, String>>,
}

impl std::fmt::Debug for CoordinatorCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorCatalog")
            .field("installed", &self.installed.len())
            .field(
                "indexes",
                &self
                    .indexes
                    .iter()
                    .map(|i| dtf_plugin_repo::redact_location(i))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl CoordinatorCatalog {
    /// Reads `registry`, the lock files of `plugin_dirs`, and `[registry]` of `config_file`.
    /// Problems (an unreadable lock file or `[registry]`) are logged and shown on the page,
    /// never fatal: the console is a view.
    pub fn new(
        registry: &PluginRegistry,
        plugin_dirs: &[PathBuf],
        config_file: Option<&Path>,
    ) -> Self {
        let locks: Vec<(PathBuf, LockFile)> = plugin_dirs
            .iter()
            .filter_map(|dir| match LockFile::load(dir) {
                Ok(lock) => Some((dir.clone(), lock)),
                Err(e) => {
                    tracing::warn!(error = %e, "the web console could not read a plugin lock file");
                    None
                }
            })
            .collect();
        let mut installed: Vec<InstalledPlugin> = registry
            .iter()
            .map(|e| {
                let origin = match e.plugin_source() {
                    PluginSource::Directory(manifest) => {
                        installed_from_index(&locks, e.name(), manifest).unwrap_or_else(|| {
                            PluginOrigin::Directory {
                                manifest: manifest.clone(),
                            }
                        })
                    }
                    PluginSource::BuiltIn { krate } => PluginOrigin::BuiltIn {
                        krate: krate.to_string(),
                    },
                    // A source this coordinator does not know yet: say what the core says.
                    other => PluginOrigin::BuiltIn {
                        krate: other.to_string(),
                    },
                };
                InstalledPlugin::new(e.name(), e.metadata().version.clone(), origin)
                    .description(e.describe())
            })
            .collect();
        // The plugins every run has, outside the registry.
        let always = [
            (
                dtf_scheduler::SchedulingCoordinator::NAME,
                "dtf-scheduler",
                "the scheduler (--scheduler)",
            ),
            (
                crate::ShellExecutor::NAME,
                "dtf-examples",
                "runs the tasks' commands",
            ),
            (
                crate::RunTracker::NAME,
                "dtf-examples",
                "tells the coordinator when every task is done",
            ),
        ];
        for (name, krate, what) in always {
            if !installed.iter().any(|p| p.name == name) {
                installed.push(
                    InstalledPlugin::new(
                        name,
                        env!("CARGO_PKG_VERSION"),
                        PluginOrigin::BuiltIn {
                            krate: krate.to_owned(),
                        },
                    )
                    .description(what),
                );
            }
        }
        let settings = match config_file {
            Some(path) => RegistrySettings::load(path).map_err(|e| e.to_string()),
            None => Ok(RegistrySettings::default()),
        };
        let (indexes, client) = match settings {
            Ok(settings) if settings.indexes.is_empty() => (Vec::new(), None),
            Ok(settings) => {
                let mut builder = RepoClient::builder().settings(&settings);
                if let Some(dir) = plugin_dirs.first() {
                    builder = builder.plugin_dir(dir.clone());
                }
                let provided: Vec<String> = installed.iter().map(|p| p.name.clone()).collect();
                let client = builder
                    .provided(provided)
                    .build()
                    .map_err(|e| e.to_string());
                // The console shows them without credentials.
                (settings.indexes, Some(client))
            }
            Err(e) => (
                vec!["[registry] of the configuration file".to_owned()],
                Some(Err(e)),
            ),
        };
        Self {
            installed,
            indexes,
            client,
        }
    }
}

/// The index a plugin of a plugin directory was installed from, if the directory's lock file
/// lists it (its manifest is `DIR/NAME/plugin.toml`).
fn installed_from_index(
    locks: &[(PathBuf, LockFile)],
    name: &str,
    manifest: &Path,
) -> Option<PluginOrigin> {
    let dir = manifest.parent()?.parent()?;
    let (_, lock) = locks.iter().find(|(d, _)| d == dir)?;
    let locked = lock.plugins.iter().find(|p| p.name == name)?;
    Some(PluginOrigin::Index {
        index: locked.index.clone(),
        signed_by: locked.signed_by.clone(),
    })
}

impl PluginCatalog for CoordinatorCatalog {
    fn installed(&self) -> Vec<InstalledPlugin> {
        self.installed.clone()
    }

    fn indexes(&self) -> Vec<String> {
        self.indexes.clone()
    }

    fn available(&self) -> CatalogFuture<'_, Result<Vec<AvailablePlugin>, String>> {
        Box::pin(async move {
            let client = match &self.client {
                None => return Ok(Vec::new()),
                Some(Err(e)) => return Err(e.clone()),
                Some(Ok(client)) => client,
            };
            let hits = client.search(None).await.map_err(|e| e.to_string())?;
            Ok(hits
                .into_iter()
                .map(|h| {
                    AvailablePlugin::new(h.name, h.version.to_string(), h.index)
                        .description(h.description)
                        .installable(h.installable.map(|v| v.to_string()))
                        .installed(h.installed.map(|v| v.to_string()))
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dtf_plugin_core::external;

    fn manifest(dir: &Path, name: &str, version: &str) {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("plugin.toml"),
            format!(
                "name = \"{name}\"\nversion = \"{version}\"\ndescription = \"{name} here\"\n\
                 hooks = [\"custom\"]\nprotocol = 1\ncommand = \"true\"\n"
            ),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn tells_built_in_directory_and_index_plugins_apart() {
        let dir = std::env::temp_dir().join(format!("dtf-console-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        manifest(&dir, "from-dir", "0.1.0");
        manifest(&dir, "from-index", "0.3.0");
        std::fs::write(
            dir.join(dtf_plugin_repo::LOCK_FILE),
            "[[plugin]]\nname = \"from-index\"\nversion = \"0.3.0\"\nsha256 = \"00\"\n\
             index = \"https://plugins.example.invalid/\"\nsigned_by = \"ABCD1234\"\n",
        )
        .unwrap();
        let mut registry = crate::plugin_registry();
        let report = external::register_dirs(&mut registry, std::slice::from_ref(&dir));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let catalog = CoordinatorCatalog::new(&registry, std::slice::from_ref(&dir), None);
        let installed = catalog.installed();
        let find = |n: &str| installed.iter().find(|p| p.name == n).unwrap().clone();
        assert_eq!(
            find("from-index").origin,
            PluginOrigin::Index {
                index: "https://plugins.example.invalid/".to_owned(),
                signed_by: "ABCD1234".to_owned()
            }
        );
        assert_eq!(find("from-index").version, "0.3.0");
        assert_eq!(find("from-dir").origin.as_str(), "directory");
        assert_eq!(find("from-dir").description, "from-dir here");
        assert_eq!(find("progress").origin.as_str(), "built-in");
        assert_eq!(find("scheduler").origin.as_str(), "built-in");
        assert_eq!(find("shell-executor").origin.locality(), "local");
        // No configuration file: no index, nothing available.
        assert!(catalog.indexes().is_empty());
        assert_eq!(catalog.available().await, Ok(Vec::new()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn offers_what_a_directory_index_lists_and_reports_a_bad_registry_table() {
        let dir =
            std::env::temp_dir().join(format!("dtf-console-catalog-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[registry]\nindex = []\n").unwrap();
        let catalog = CoordinatorCatalog::new(&crate::plugin_registry(), &[], Some(&bad));
        assert_eq!(catalog.indexes().len(), 1);
        let err = catalog.available().await.unwrap_err();
        assert!(err.contains("index"), "{err}");

        // A directory index with one plugin in two versions, one speaking a protocol this
        // build does not.
        let index = dir.join("index");
        std::fs::create_dir_all(&index).unwrap();
        let artifact = "[[plugin.artifact]]\nos = \"any\"\narch = \"any\"\nurl = \"a.tar.gz\"\n\
                        size = 1\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n";
        std::fs::write(
            index.join(dtf_plugin_repo::INDEX_FILE),
            format!(
                "format = 1\n[[plugin]]\nname = \"echo\"\nversion = \"0.1.0\"\ndescription = \"echoes\"\n\
                 protocol = {{ min = 1, max = 1 }}\n{artifact}\
                 [[plugin]]\nname = \"echo\"\nversion = \"0.2.0\"\ndescription = \"echoes more\"\n\
                 protocol = {{ min = 99, max = 99 }}\n{artifact}"
            ),
        )
        .unwrap();
        let good = dir.join("dtf.toml");
        std::fs::write(
            &good,
            "[registry]\nindexes = [\"index\"]\ncache_dir = \"cache\"\n",
        )
        .unwrap();
        let catalog = CoordinatorCatalog::new(&crate::plugin_registry(), &[], Some(&good));
        assert_eq!(catalog.indexes().len(), 1);
        let offered = catalog.available().await.unwrap();
        assert_eq!(offered.len(), 1, "{offered:?}");
        assert_eq!(offered[0].name, "echo");
        assert_eq!(offered[0].version, "0.2.0");
        assert_eq!(offered[0].installable.as_deref(), Some("0.1.0"));
        assert_eq!(offered[0].installed, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
