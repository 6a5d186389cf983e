//! The plugin registry view: what the embedding coordinator has installed (built in, found in a
//! plugin directory, installed from an index) and what its plugin indexes offer.
//!
//! The console does not know where plugins come from: the manager runs plugins, whatever made
//! them. The coordinator that embeds the console hands that knowledge over as a
//! [`PluginCatalog`] ([`Console::catalog`](crate::Console::catalog)); [`StaticCatalog`] is a
//! plain data implementation. Without one, the registry page lists the running plugins with an
//! unknown source and no index.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;

use crate::run::CONSOLE_PLUGIN;

/// The future [`PluginCatalog::available`] returns (boxed, so the trait stays object safe).
pub type CatalogFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where an installed plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginOrigin {
    /// Compiled into the coordinator (an in-process plugin) by this crate.
    BuiltIn {
        /// The crate that provides it (may be empty).
        krate: String,
    },
    /// An out-of-process plugin found in a plugin directory; the path is its manifest.
    Directory {
        /// Its manifest (`plugin.toml`).
        manifest: PathBuf,
    },
    /// An out-of-process plugin installed from a plugin index (`dtf-plugin-repo`).
    Index {
        /// The index it came from (a URL without credentials, or a directory).
        index: String,
        /// The id of the key that signed it, or `unsigned`.
        signed_by: String,
    },
}

impl PluginOrigin {
    /// `built-in`, `directory` or `index`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BuiltIn { .. } => "built-in",
            Self::Directory { .. } => "directory",
            Self::Index { .. } => "index",
        }
    }

    /// Where it runs: `local` (in the coordinator's process) or `external` (its own process).
    pub fn locality(&self) -> &'static str {
        match self {
            Self::BuiltIn { .. } => "local",
            Self::Directory { .. } | Self::Index { .. } => "external",
        }
    }

    /// The crate, the manifest path or the index.
    pub fn location(&self) -> String {
        match self {
            Self::BuiltIn { krate } => krate.clone(),
            Self::Directory { manifest } => manifest.display().to_string(),
            Self::Index { index, .. } => index.clone(),
        }
    }
}

/// One plugin the coordinator has installed (it may or may not be running).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InstalledPlugin {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// A one-line description (may be empty).
    pub description: String,
    /// Where it comes from.
    pub origin: PluginOrigin,
}

impl InstalledPlugin {
    /// A plugin with no description.
    pub fn new(name: impl Into<String>, version: impl Into<String>, origin: PluginOrigin) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            origin,
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }
}

/// One plugin a plugin index offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AvailablePlugin {
    /// Its name.
    pub name: String,
    /// The newest version the index lists.
    pub version: String,
    /// Its description.
    pub description: String,
    /// The newest version this coordinator can install (`None`: none can be).
    pub installable: Option<String>,
    /// The version installed from an index, if any.
    pub installed: Option<String>,
    /// The index that lists it.
    pub index: String,
}

impl AvailablePlugin {
    /// A plugin of `index` at `version`, installable at that version, not installed.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        index: impl Into<String>,
    ) -> Self {
        let version = version.into();
        Self {
            name: name.into(),
            installable: Some(version.clone()),
            version,
            description: String::new(),
            installed: None,
            index: index.into(),
        }
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Sets the newest installable version (`None`: not installable by this coordinator).
    pub fn installable(mut self, version: Option<String>) -> Self {
        self.installable = version;
        self
    }

    /// Sets the installed version.
    pub fn installed(mut self, version: Option<String>) -> Self {
        self.installed = version;
        self
    }
}

/// What the embedding coordinator knows about its plugins, for the registry page and the
/// `source` column of the plugins page.
///
/// The console calls [`installed`](Self::installed) on every read of the plugins or the
/// registry, so it should be cheap (a list computed once); [`available`](Self::available) at
/// most once per [`AVAILABLE_TTL`], and only when [`indexes`](Self::indexes) is not empty.
pub trait PluginCatalog: Send + Sync + 'static {
    /// The plugins the coordinator has: built in, found in its plugin directories, installed
    /// from an index.
    fn installed(&self) -> Vec<InstalledPlugin>;

    /// The plugin indexes configured (none: the registry page shows no available plugins).
    /// The console shows URLs without their user name, password, query and fragment.
    fn indexes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The plugins the configured indexes offer; the error is a message for the page (it
    /// must not carry credentials).
    fn available(&self) -> CatalogFuture<'_, Result<Vec<AvailablePlugin>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A [`PluginCatalog`] from plain data: what an embedding coordinator knows at start.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StaticCatalog {
    /// The installed plugins.
    pub installed: Vec<InstalledPlugin>,
    /// The indexes configured.
    pub indexes: Vec<String>,
    /// What they offer.
    pub available: Vec<AvailablePlugin>,
}

impl StaticCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an installed plugin.
    pub fn with_installed(mut self, plugin: InstalledPlugin) -> Self {
        self.installed.push(plugin);
        self
    }

    /// Adds an index and what it offers.
    pub fn with_index(
        mut self,
        index: impl Into<String>,
        offers: impl IntoIterator<Item = AvailablePlugin>,
    ) -> Self {
        self.indexes.push(index.into());
        self.available.extend(offers);
        self
    }
}

impl PluginCatalog for StaticCatalog {
    fn installed(&self) -> Vec<InstalledPlugin> {
        self.installed.clone()
    }

    fn indexes(&self) -> Vec<String> {
        self.indexes.clone()
    }

    fn available(&self) -> CatalogFuture<'_, Result<Vec<AvailablePlugin>, String>> {
        let list = self.available.clone();
        Box::pin(async move { Ok(list) })
    }
}

/// How long an answer of [`PluginCatalog::available`] is reused: a page load does not fetch
/// the indexes again.
pub const AVAILABLE_TTL: Duration = Duration::from_secs(60);

/// How long the console waits for [`PluginCatalog::available`] before answering without it.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer of [`PluginCatalog::available`].
type Available = Result<Vec<AvailablePlugin>, String>;

/// An index location as the browser may see it: a URL without its user name, password, query
/// and fragment (any of which may hold a credential); a directory as it is.
pub(crate) fn without_credentials(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_owned();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    // Up to the last `@`, not just the authority's: a password may hold a `/` (then the URL
    // does not even parse), and a path that holds an `@` only loses its start.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, after)| after);
    format!("{scheme}://{rest}")
}

/// The catalog as the handlers use it: with the console's own plugin, and the available
/// plugins cached.
#[derive(Clone)]
pub(crate) struct Catalog {
    inner: Option<Arc<dyn PluginCatalog>>,
    cache: Arc<Mutex<Option<(Instant, Available)>>>,
}

impl Catalog {
    pub(crate) fn new(inner: Option<Arc<dyn PluginCatalog>>) -> Self {
        Self {
            inner,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// Whether the embedding coordinator handed a catalog over.
    pub(crate) fn is_known(&self) -> bool {
        self.inner.is_some()
    }

    /// The installed plugins by name, the console's own among them.
    pub(crate) fn installed(&self) -> HashMap<String, InstalledPlugin> {
        let mut map: HashMap<String, InstalledPlugin> = self
            .inner
            .as_ref()
            .map(|c| c.installed())
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        map.entry(CONSOLE_PLUGIN.to_owned()).or_insert_with(|| {
            InstalledPlugin::new(
                CONSOLE_PLUGIN,
                env!("CARGO_PKG_VERSION"),
                PluginOrigin::BuiltIn {
                    krate: "dtf-console".to_owned(),
                },
            )
            .description("the web console's own plugin")
        });
        map
    }

    /// The indexes, without credentials.
    pub(crate) fn indexes(&self) -> Vec<String> {
        self.inner
            .as_ref()
            .map(|c| c.indexes())
            .unwrap_or_default()
            .iter()
            .map(|i| without_credentials(i))
            .collect()
    }

    /// What the indexes offer (cached for [`AVAILABLE_TTL`]); `None` when no index is
    /// configured.
    pub(crate) async fn available(&self) -> Option<Result<Vec<AvailablePlugin>, String>> {
        let inner = self.inner.as_ref()?;
        if inner.indexes().is_empty() {
            return None;
        }
        let mut cache = self.cache.lock().await;
        if let Some((at, answer)) = cache.as_ref() {
            if at.elapsed() < AVAILABLE_TTL {
                return Some(answer.clone());
            }
        }
        let answer = match tokio::time::timeout(AVAILABLE_TIMEOUT, inner.available()).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "the plugin indexes did not answer within {} s",
                AVAILABLE_TIMEOUT.as_secs()
            )),
        };
        if let Err(e) = &answer {
            tracing::warn!(error = %e, "the web console could not read the plugin indexes");
        }
        let answer = answer.map(|list| {
            list.into_iter()
                .map(|mut p| {
                    p.index = without_credentials(&p.index);
                    p
                })
                .collect()
        });
        *cache = Some((Instant::now(), answer.clone()));
        Some(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_name_their_source_and_locality() {
        let b = PluginOrigin::BuiltIn {
            krate: "dtf-examples".into(),
        };
        let d = PluginOrigin::Directory {
            manifest: PathBuf::from("plugins/echo/plugin.toml"),
        };
        let i = PluginOrigin::Index {
            index: "https://p.example/".into(),
            signed_by: "ABCD".into(),
        };
        assert_eq!(
            [b.as_str(), d.as_str(), i.as_str()],
            ["built-in", "directory", "index"]
        );
        assert_eq!(
            [b.locality(), d.locality(), i.locality()],
            ["local", "external", "external"]
        );
        assert_eq!(d.location(), "plugins/echo/plugin.toml");
    }

    #[test]
    fn index_locations_are_shown_without_credentials() {
        assert_eq!(
            without_credentials("https://bob:hunter2@plugins.example.invalid/dtf/?token=abc#x"),
            "https://plugins.example.invalid/dtf/"
        );
        assert_eq!(
            without_credentials("https://plugins.example.invalid"),
            "https://plugins.example.invalid"
        );
        assert_eq!(without_credentials("/srv/index"), "/srv/index");
        // A password with a `/` (base64 tokens have them): the URL does not parse, and the
        // authority is not what comes before the first `/`.
        let shown = without_credentials("https://ci:abc/def@plugins.example.invalid/dtf/?t=x");
        assert_eq!(shown, "https://plugins.example.invalid/dtf/");
    }

    #[tokio::test]
    async fn without_a_catalog_only_the_console_is_known_and_no_index() {
        let c = Catalog::new(None);
        assert!(!c.is_known());
        let installed = c.installed();
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[CONSOLE_PLUGIN].origin.locality(), "local");
        assert!(c.available().await.is_none());
    }

    #[tokio::test]
    async fn available_plugins_are_asked_once_per_ttl() {
        struct Counting(std::sync::atomic::AtomicUsize);
        impl PluginCatalog for Counting {
            fn installed(&self) -> Vec<InstalledPlugin> {
                Vec::new()
            }
            fn indexes(&self) -> Vec<String> {
                vec!["idx".into()]
            }
            fn available(&self) -> CatalogFuture<'_, Result<Vec<AvailablePlugin>, String>> {
                let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Box::pin(
                    async move { Ok(vec![AvailablePlugin::new(format!("p{n}"), "1.0.0", "idx")]) },
                )
            }
        }
        let counting = Arc::new(Counting(std::sync::atomic::AtomicUsize::new(0)));
        let c = Catalog::new(Some(counting.clone()));
        let first = c.available().await.and_then(Result::ok).unwrap_or_default();
        let second = c.available().await.and_then(Result::ok).unwrap_or_default();
        assert_eq!(first, second);
        assert_eq!(first[0].name, "p0");
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
