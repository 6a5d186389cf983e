//! The client: fetch indexes (cached for offline use), search, show, install, update and
//! remove plugins in a plugin directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::Url;
use semver::{Version, VersionReq};
use sha2::{Digest, Sha256};

use dtf_plugin_core::external::{MANIFEST_FILE, Manifest};

use crate::archive::{self, Limits};
use crate::fetch::{self, hex, redact, redact_location};
use crate::index::{Artifact, INDEX_FILE, Index, IndexEntry, MAX_INDEX_SIZE};
use crate::lock::{LockFile, LockedPlugin};
use crate::sign::{self, TrustedKey};
use crate::{RegistrySettings, RepoError};

/// The prefix of the temporary directories an install works in, inside the plugin
/// directory (so the final rename stays on one file system). The plugin-directory scanner
/// ignores them: they hold no `plugin.toml` at their top.
pub const STAGING_PREFIX: &str = ".dtf-staging-";

/// What the lock file says for a plugin trusted without a signature (`signed_by`).
const UNSIGNED: &str = "unsigned";

/// One index as fetched (or read from the cache).
#[derive(Clone)]
#[non_exhaustive]
pub struct IndexSnapshot {
    /// The index URL, without credentials.
    pub url: String,
    /// Its contents.
    pub index: Index,
    /// `Some(why the fetch failed)` when this is the cached copy.
    pub stale: Option<String>,
    base: Url,
}

/// A plugin found by [`RepoClient::search`]: its newest version.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SearchHit {
    /// Its name.
    pub name: String,
    /// Its newest version.
    pub version: Version,
    /// Its description.
    pub description: String,
    /// The newest version this build can install, if any.
    pub installable: Option<Version>,
    /// The version installed in the plugin directory, if any.
    pub installed: Option<Version>,
    /// The index listing it.
    pub index: String,
}

/// Everything about one plugin: [`RepoClient::info`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// The index listing it.
    pub index: String,
    /// Every version, newest first, each with why this build cannot install it (if so).
    pub versions: Vec<(IndexEntry, Option<String>)>,
    /// What is installed.
    pub installed: Option<LockedPlugin>,
    /// `Some(reason)` when the index came from the cache.
    pub stale: Option<String>,
}

/// One plugin installed or updated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Installed {
    /// Its lock entry.
    pub plugin: LockedPlugin,
    /// The version it replaced.
    pub previous: Option<Version>,
}

/// The version asked for: `NAME@1.2.3` (exact) or `NAME@^1.2` (a range).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wanted {
    /// The newest installable release (a pre-release only when no release is installable).
    Latest,
    /// This version.
    Exact(Version),
    /// The newest installable version in this range.
    Range(VersionReq),
}

impl Wanted {
    /// The same, within the comparators `held` as well; `None` for an exact version (it is
    /// either allowed or not).
    fn within(&self, held: Vec<semver::Comparator>) -> Option<Wanted> {
        let asked = match self {
            Wanted::Latest => Vec::new(),
            Wanted::Exact(_) => return None,
            Wanted::Range(r) => r.comparators.clone(),
        };
        Some(Wanted::Range(VersionReq {
            comparators: [asked, held].concat(),
        }))
    }

    fn matches(&self, v: &Version) -> bool {
        match self {
            Wanted::Latest => true,
            Wanted::Exact(w) => w == v,
            Wanted::Range(r) => r.matches(v),
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Latest => f.write_str("(any version)"),
            Wanted::Exact(v) => write!(f, "{v}"),
            Wanted::Range(r) => write!(f, "{r}"),
        }
    }
}

/// Splits `NAME[@VERSION]` (a version or a semver range).
///
/// # Errors
///
/// [`RepoError::NoVersion`] when the part after `@` is neither.
pub fn parse_spec(spec: &str) -> Result<(String, Wanted), RepoError> {
    let Some((name, v)) = spec.split_once('@') else {
        return Ok((spec.to_owned(), Wanted::Latest));
    };
    let wanted = if let Ok(exact) = Version::parse(v) {
        Wanted::Exact(exact)
    } else {
        Wanted::Range(VersionReq::parse(v).map_err(|e| RepoError::NoVersion {
            name: name.to_owned(),
            wanted: v.to_owned(),
            available: format!("nothing usable: `{v}` is not a version or range ({e})"),
        })?)
    };
    Ok((name.to_owned(), wanted))
}

// The index locations may carry credentials (`https://user:token@…`): `Debug` shows them
// without (`redact_location`), as logs and messages do.

impl std::fmt::Debug for IndexSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexSnapshot")
            .field("url", &self.url)
            .field("plugins", &self.index.plugins.len())
            .field("stale", &self.stale)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RepoClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let indexes: Vec<String> = self.indexes.iter().map(|i| redact_location(i)).collect();
        f.debug_struct("RepoClientBuilder")
            .field("indexes", &indexes)
            .field("trusted_keys", &self.trusted_keys)
            .field("allow_unsigned", &self.allow_unsigned)
            .field("plugin_dir", &self.plugin_dir)
            .field("provided", &self.provided)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RepoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let indexes: Vec<String> = self.indexes.iter().map(redact).collect();
        f.debug_struct("RepoClient")
            .field("indexes", &indexes)
            .field("keys", &self.keys)
            .field("allow_unsigned", &self.allow_unsigned)
            .field("plugin_dir", &self.plugin_dir)
            .field("cache_dir", &self.cache_dir)
            .field("provided", &self.provided)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A version chosen for installation, with where it comes from.
#[derive(Debug, Clone)]
struct Planned {
    entry: IndexEntry,
    artifact: Artifact,
    base: Url,
    index: String,
}

/// Builds a [`RepoClient`].
#[derive(Default)]
#[must_use]
pub struct RepoClientBuilder {
    indexes: Vec<String>,
    trusted_keys: Vec<PathBuf>,
    allow_unsigned: BTreeSet<String>,
    allow_signer_change: BTreeSet<String>,
    plugin_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    provided: BTreeSet<String>,
    limits: Limits,
    root_certificates: Vec<Vec<u8>>,
    root_certificate_files: Vec<PathBuf>,
}

impl RepoClientBuilder {
    /// Also trusts this CA certificate (PEM) for `https://` indexes, e.g. a company's
    /// private CA. Default: the Mozilla root store only.
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// Adds an index (URL or directory). Indexes are searched in the order added.
    pub fn index(mut self, location: impl Into<String>) -> Self {
        self.indexes.push(location.into());
        self
    }

    /// Adds a trusted public key file (minisign format).
    pub fn trusted_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.trusted_keys.push(path.into());
        self
    }

    /// Trusts plugin `name` without a signature. Default: no plugin.
    pub fn allow_unsigned(mut self, name: impl Into<String>) -> Self {
        self.allow_unsigned.insert(name.into());
        self
    }

    /// Lets plugin `name` be replaced by a version signed by another trusted key than the
    /// installed one's ([`RepoError::SignerChanged`] otherwise). Default: no plugin.
    pub fn allow_signer_change(mut self, name: impl Into<String>) -> Self {
        self.allow_signer_change.insert(name.into());
        self
    }

    /// The plugin directory to install into. Default `plugins`.
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_dir = Some(dir.into());
        self
    }

    /// Where fetched indexes are cached. Default: `$XDG_CACHE_HOME/dtf/indexes`, else
    /// `$HOME/.cache/dtf/indexes`, else `.dtf-cache` in the plugin directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Names of plugins this program provides itself (built-in plugins), which satisfy
    /// `requires` without an install and are never installed from an index
    /// ([`RepoError::BuiltIn`]). Default: none.
    pub fn provided(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.provided.extend(names.into_iter().map(Into::into));
        self
    }

    /// The caps on downloads and unpacking. Default [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Also trusts the CA certificate in the PEM file `path` (read by
    /// [`build`](Self::build)).
    pub fn root_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificate_files.push(path.into());
        self
    }

    /// Applies `[registry]` settings: its indexes, keys, unsigned exceptions and CA
    /// certificates are added, its cache directory and first plugin directory are used
    /// unless set already.
    pub fn settings(mut self, s: &RegistrySettings) -> Self {
        self.root_certificate_files
            .extend(s.ca_certificates.iter().cloned());
        self.indexes.extend(s.indexes.iter().cloned());
        self.trusted_keys.extend(s.trusted_keys.iter().cloned());
        self.allow_unsigned.extend(s.allow_unsigned.iter().cloned());
        if self.cache_dir.is_none() {
            self.cache_dir.clone_from(&s.cache_dir);
        }
        if self.plugin_dir.is_none() {
            self.plugin_dir = s.plugin_dirs.first().cloned();
        }
        self
    }

    /// Checks the index URLs and reads the trusted keys.
    ///
    /// # Errors
    ///
    /// A URL that is not allowed ([`RepoError::BadUrl`]), a key file that cannot be read
    /// ([`RepoError::Key`]), a certificate file that cannot be read or parsed.
    pub fn build(mut self) -> Result<RepoClient, RepoError> {
        for path in &self.root_certificate_files {
            let pem = std::fs::read(path).map_err(RepoError::io("read", path))?;
            self.root_certificates.push(pem);
        }
        let indexes = self
            .indexes
            .iter()
            .map(|i| fetch::index_url(i))
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self
            .trusted_keys
            .iter()
            .map(|p| TrustedKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let plugin_dir = self.plugin_dir.unwrap_or_else(|| PathBuf::from("plugins"));
        let cache_dir = self
            .cache_dir
            .unwrap_or_else(|| default_cache_dir(&plugin_dir));
        Ok(RepoClient {
            indexes,
            keys,
            allow_unsigned: self.allow_unsigned,
            allow_signer_change: self.allow_signer_change,
            plugin_dir,
            cache_dir,
            provided: self.provided,
            limits: self.limits,
            http: fetch::http_client(&self.root_certificates)?,
        })
    }
}

fn default_cache_dir(plugin_dir: &Path) -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("dtf").join("indexes");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".cache").join("dtf").join("indexes");
    }
    plugin_dir.join(".dtf-cache")
}

/// The plugin repository client. Installing never runs plugin code: it downloads, checks
/// size, SHA-256 and signature, unpacks defensively into a temporary directory and renames
/// it into place.
pub struct RepoClient {
    indexes: Vec<Url>,
    keys: Vec<TrustedKey>,
    allow_unsigned: BTreeSet<String>,
    allow_signer_change: BTreeSet<String>,
    plugin_dir: PathBuf,
    cache_dir: PathBuf,
    provided: BTreeSet<String>,
    limits: Limits,
    http: reqwest::Client,
}

static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary directory deleted when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), error = %e, "cannot remove a staging directory");
            }
        }
    }
}

impl RepoClient {
    /// A builder with no index, no trusted key and the defaults.
    pub fn builder() -> RepoClientBuilder {
        RepoClientBuilder::default()
    }

    /// The plugin directory.
    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    fn cache_file(&self, url: &Url) -> PathBuf {
        let digest = hex(&Sha256::digest(url.as_str().as_bytes()));
        self.cache_dir.join(format!("index-{}.toml", &digest[..16]))
    }

    /// Fetches every index, caching each; an index that cannot be fetched is read from the
    /// cache instead (marked [`IndexSnapshot::stale`]).
    ///
    /// # Errors
    ///
    /// No index configured; an index neither fetched nor cached ([`RepoError::Offline`]);
    /// a fetched index that is invalid (the cache is then left as it was).
    pub async fn fetch_indexes(&self) -> Result<Vec<IndexSnapshot>, RepoError> {
        if self.indexes.is_empty() {
            return Err(RepoError::NoIndex);
        }
        let mut out = Vec::new();
        for base in &self.indexes {
            let url = fetch::join(base, INDEX_FILE)?;
            let name = redact(base);
            let cache = self.cache_file(base);
            match fetch::get_bytes(&self.http, &url, MAX_INDEX_SIZE).await {
                Ok(bytes) => {
                    let text = String::from_utf8(bytes).map_err(|_| RepoError::BadIndex {
                        source_name: name.clone(),
                        reason: "not UTF-8".to_owned(),
                    })?;
                    let index = Index::parse(&name, &text)?;
                    let cached = std::fs::create_dir_all(&self.cache_dir)
                        .map_err(RepoError::io("create", &self.cache_dir))
                        .and_then(|()| crate::lock::write_atomic(&cache, text.as_bytes()));
                    if let Err(e) = cached {
                        tracing::warn!(error = %e, "cannot cache the index");
                    }
                    out.push(IndexSnapshot {
                        url: name,
                        index,
                        stale: None,
                        base: base.clone(),
                    });
                }
                Err(e) => {
                    let reason = e.to_string();
                    let Ok(text) = std::fs::read_to_string(&cache) else {
                        return Err(RepoError::Offline { url: name, reason });
                    };
                    tracing::warn!(index = %name, error = %reason, "index unreachable; using the cached copy");
                    out.push(IndexSnapshot {
                        index: Index::parse(&format!("{name} (cached)"), &text)?,
                        url: name,
                        stale: Some(reason),
                        base: base.clone(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The installed plugins (the lock file of the plugin directory).
    ///
    /// # Errors
    ///
    /// The lock file cannot be read.
    pub fn list(&self) -> Result<Vec<LockedPlugin>, RepoError> {
        Ok(LockFile::load(&self.plugin_dir)?.plugins)
    }

    /// The plugins whose name or description contains `term` (case-insensitive; all
    /// without a term), by name; a name listed by several indexes is taken from the first.
    ///
    /// # Errors
    ///
    /// As [`RepoClient::fetch_indexes`], or an unreadable lock file.
    pub async fn search(&self, term: Option<&str>) -> Result<Vec<SearchHit>, RepoError> {
        let snapshots = self.fetch_indexes().await?;
        let lock = LockFile::load(&self.plugin_dir)?;
        let term = term.map(str::to_lowercase);
        let mut seen = BTreeSet::new();
        let mut hits = Vec::new();
        for s in &snapshots {
            let names: BTreeSet<&str> = s.index.plugins.iter().map(|e| e.name.as_str()).collect();
            for name in names {
                if !seen.insert(name.to_owned()) {
                    continue;
                }
                let versions = s.index.versions(name);
                let Some(newest) = versions.first() else {
                    continue;
                };
                if let Some(t) = &term {
                    let hit = name.to_lowercase().contains(t)
                        || versions
                            .iter()
                            .any(|e| e.description.to_lowercase().contains(t));
                    if !hit {
                        continue;
                    }
                }
                hits.push(SearchHit {
                    name: name.to_owned(),
                    version: newest.version.clone(),
                    description: newest.description.clone(),
                    installable: stable_first(versions.clone())
                        .into_iter()
                        .find(|e| e.incompatibility().is_none())
                        .map(|e| e.version.clone()),
                    installed: lock.get(name).map(|l| l.version.clone()),
                    index: s.url.clone(),
                });
            }
        }
        hits.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(hits)
    }

    /// Every version of `name`, with compatibility with this build.
    ///
    /// # Errors
    ///
    /// As [`RepoClient::fetch_indexes`]; [`RepoError::NotFound`] when no index lists it.
    pub async fn info(&self, name: &str) -> Result<PluginInfo, RepoError> {
        let snapshots = self.fetch_indexes().await?;
        let s = find_index(&snapshots, name)?;
        Ok(PluginInfo {
            name: name.to_owned(),
            index: s.url.clone(),
            versions: s
                .index
                .versions(name)
                .into_iter()
                .map(|e| (e.clone(), e.incompatibility().map(|r| r.to_string())))
                .collect(),
            installed: LockFile::load(&self.plugin_dir)?.get(name).cloned(),
            stale: s.stale.clone(),
        })
    }

    /// Installs `spec` (`NAME`, `NAME@VERSION` or `NAME@RANGE`) and the plugins it
    /// requires that are missing. Everything is checked before the first download: the
    /// versions exist, speak a protocol this build speaks, have an artifact for this
    /// platform, every requirement can be met, every artifact is signed by a trusted key
    /// (or trusted without a signature). Returns what was installed or replaced (empty
    /// when the version asked for is installed already).
    ///
    /// # Errors
    ///
    /// The first problem; plugins installed before it (requirements) stay installed and
    /// locked, nothing of the failing one is left in the plugin directory.
    pub async fn install(&self, spec: &str) -> Result<Vec<Installed>, RepoError> {
        let (name, wanted) = parse_spec(spec)?;
        let snapshots = self.fetch_indexes().await?;
        let lock = LockFile::load(&self.plugin_dir)?;
        let mut plan = Vec::new();
        let mut visiting = BTreeSet::new();
        self.plan(&snapshots, &lock, &name, &wanted, &mut plan, &mut visiting)?;
        self.execute(plan, lock).await
    }

    /// Updates `name` (or every installed plugin) to the newest version this build can
    /// install that the installed plugins requiring it allow (their ranges), with missing
    /// requirements. Updating every plugin, one that no listed version fits is left as it is
    /// with a warning. The plugin's settings live in `dtf.toml` and are
    /// not touched. Returns what changed.
    ///
    /// # Errors
    ///
    /// [`RepoError::NotInstalled`] for a plugin not in the lock file, and as
    /// [`RepoClient::install`].
    pub async fn update(&self, name: Option<&str>) -> Result<Vec<Installed>, RepoError> {
        let lock = LockFile::load(&self.plugin_dir)?;
        let names: Vec<String> = match name {
            Some(n) if lock.get(n).is_none() => {
                return Err(RepoError::NotInstalled {
                    name: n.to_owned(),
                    dir: self.plugin_dir.clone(),
                });
            }
            Some(n) => vec![n.to_owned()],
            // Dependents before what they require: a dependent's new version may need a new
            // range of its requirement, which its planning then installs, and what it
            // requires is then held to the planned version's ranges, not the installed one's.
            None => dependents_first(&lock),
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let snapshots = self.fetch_indexes().await?;
        let mut plan = Vec::new();
        let mut visiting = BTreeSet::new();
        for n in &names {
            if plan.iter().any(|p: &Planned| p.entry.name == *n) {
                continue; // planned already, as what an updated dependent requires
            }
            let current = lock.get(n).map(|l| l.version.clone());
            // On a pre-release, newer pre-releases of it count too (and releases).
            let wanted = match &current {
                Some(c) if !c.pre.is_empty() => {
                    VersionReq::parse(&format!(">={c}")).map_or(Wanted::Latest, Wanted::Range)
                }
                _ => Wanted::Latest,
            };
            // The installed plugins that require it keep it within their ranges.
            let held = dependents_ranges(&snapshots, &lock, &plan, n);
            let wanted = match (held.is_empty(), wanted) {
                (true, wanted) => wanted,
                (false, Wanted::Range(r)) => Wanted::Range(VersionReq {
                    comparators: [r.comparators, held].concat(),
                }),
                (false, _) => Wanted::Range(VersionReq { comparators: held }),
            };
            let (_, entry) = match choose(&snapshots, n, &wanted) {
                Ok(found) => found,
                // Updating everything: a plugin no index lists any more stays as it is.
                Err(RepoError::NotFound { .. }) if name.is_none() => {
                    tracing::warn!(plugin = %n, "no index lists this installed plugin any more; not updated");
                    continue;
                }
                // ...and one whose dependents allow no listed version too.
                Err(RepoError::NoVersion { .. }) if name.is_none() => {
                    tracing::warn!(plugin = %n, %wanted, "no listed version meets what the installed plugins that require it allow; not updated");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if current.as_ref().is_some_and(|c| *c >= entry.version) {
                continue;
            }
            self.plan(
                &snapshots,
                &lock,
                n,
                &Wanted::Exact(entry.version.clone()),
                &mut plan,
                &mut visiting,
            )?;
        }
        self.execute(plan, lock).await
    }

    /// Removes the installed plugin `name`: its folder disappears in one rename, then its
    /// lock entry.
    ///
    /// # Errors
    ///
    /// [`RepoError::NotInstalled`]; [`RepoError::Required`] when another installed plugin
    /// requires it; a file-system error.
    pub fn remove(&self, name: &str) -> Result<LockedPlugin, RepoError> {
        let mut lock = LockFile::load(&self.plugin_dir)?;
        let Some(entry) = lock.get(name).cloned() else {
            return Err(RepoError::NotInstalled {
                name: name.to_owned(),
                dir: self.plugin_dir.clone(),
            });
        };
        let dependents: Vec<&str> = lock
            .plugins
            .iter()
            .filter(|p| p.requires.iter().any(|r| r == name))
            .map(|p| p.name.as_str())
            .collect();
        if !dependents.is_empty() {
            return Err(RepoError::Required {
                name: name.to_owned(),
                dependents: dependents.join(", "),
            });
        }
        let staging = self.staging(name)?;
        let dest = self.plugin_dir.join(name);
        if dest.exists() {
            std::fs::rename(&dest, staging.0.join("removed"))
                .map_err(RepoError::io("rename", &dest))?;
        }
        lock.take(name);
        lock.save(&self.plugin_dir)?;
        tracing::info!(plugin = name, version = %entry.version, "removed plugin");
        Ok(entry)
    }

    /// The version of a plugin folder in the plugin directory that no index installed, if
    /// its manifest reads and its version is semver.
    fn hand_installed(&self, name: &str) -> Option<Version> {
        let manifest = Manifest::load(&self.plugin_dir.join(name).join(MANIFEST_FILE)).ok()?;
        Version::parse(&manifest.version).ok()
    }

    fn staging(&self, name: &str) -> Result<Staging, RepoError> {
        std::fs::create_dir_all(&self.plugin_dir)
            .map_err(RepoError::io("create", &self.plugin_dir))?;
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .plugin_dir
            .join(format!("{STAGING_PREFIX}{name}-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(RepoError::io("create", &dir))?;
        Ok(Staging(dir))
    }

    /// Chooses `name` `wanted` and, before it, what it requires, appending to `plan` in
    /// install order. Checks everything that can be checked without downloading.
    fn plan(
        &self,
        snapshots: &[IndexSnapshot],
        lock: &LockFile,
        name: &str,
        wanted: &Wanted,
        plan: &mut Vec<Planned>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<(), RepoError> {
        if self.provided.contains(name) {
            return Err(RepoError::BuiltIn {
                name: name.to_owned(),
            });
        }
        // The installed plugins that require it keep it within their ranges: installing a
        // version they do not allow would break them. Those being planned anew here are held
        // by their new versions' requirements instead (what led to this call).
        let holders = holders(snapshots, lock, plan, visiting, name);
        let (mut s, mut entry) = choose(snapshots, name, wanted)?;
        let blocking: Vec<&Holder> = holders
            .iter()
            .filter(|h| !meets(&h.range, &entry.version))
            .collect();
        if !blocking.is_empty() {
            let held = holders
                .iter()
                .flat_map(|h| h.range.comparators.iter().cloned())
                .collect();
            (s, entry) = match wanted.within(held).map(|w| choose(snapshots, name, &w)) {
                Some(Ok(found)) => found,
                // Versions are there, only none that they allow: say who holds it back.
                None | Some(Err(RepoError::NoVersion { .. })) => {
                    return Err(RepoError::HeldBack {
                        name: name.to_owned(),
                        wanted: wanted.to_string(),
                        dependents: blocking
                            .iter()
                            .map(|h| format!("`{}` {} requires {}", h.name, h.version, h.range))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                Some(Err(e)) => return Err(e),
            };
        }
        if !visiting.insert(name.to_owned()) {
            return Ok(()); // a requirement cycle: the first visit installs it
        }
        for (req_name, req) in &entry.requires {
            let missing = || RepoError::MissingRequirement {
                name: entry.name.clone(),
                version: entry.version.to_string(),
                missing: if req.comparators.is_empty() {
                    format!("`{req_name}`")
                } else {
                    format!("`{req_name}` {req}")
                },
            };
            if self.provided.contains(req_name) {
                continue;
            }
            if let Some(p) = plan.iter().find(|p| &p.entry.name == req_name) {
                if meets(req, &p.entry.version) {
                    continue;
                }
                return Err(missing());
            }
            if lock.get(req_name).is_some_and(|l| meets(req, &l.version)) {
                continue;
            }
            if lock.get(req_name).is_none()
                && self
                    .hand_installed(req_name)
                    .is_some_and(|v| meets(req, &v))
            {
                continue; // put in the plugin directory by hand
            }
            match self.plan(
                snapshots,
                lock,
                req_name,
                &Wanted::Range(req.clone()),
                plan,
                visiting,
            ) {
                Ok(()) => {}
                Err(RepoError::NotFound { .. } | RepoError::NoVersion { .. }) => {
                    return Err(missing());
                }
                Err(e) => return Err(e),
            }
        }
        let Some(artifact) = entry.artifact_here().cloned() else {
            return Err(entry.incompatibility().unwrap_or(RepoError::NotFound {
                name: name.to_owned(),
                suggestion: None,
            }));
        };
        let installed = lock
            .get(name)
            .is_some_and(|l| l.version == entry.version && l.sha256 == artifact.sha256)
            && self.plugin_dir.join(name).is_dir();
        match &artifact.minisig {
            // Installed already (checked then): `execute` leaves it as it is.
            _ if installed => {}
            None if !self.allow_unsigned.contains(name) => {
                return Err(RepoError::Unsigned {
                    name: name.to_owned(),
                    version: entry.version.to_string(),
                });
            }
            // Trusted unsigned, but the installed version was signed: a change of signer too.
            None => {
                if let Some(l) = lock.get(name).filter(|l| l.signed_by != UNSIGNED) {
                    if !self.allow_signer_change.contains(name) {
                        return Err(RepoError::SignerChanged {
                            name: name.to_owned(),
                            version: entry.version.to_string(),
                            from: l.signed_by.clone(),
                            to: UNSIGNED.to_owned(),
                        });
                    }
                }
            }
            Some(_) if self.keys.is_empty() => {
                return Err(RepoError::NoTrustedKeys {
                    name: name.to_owned(),
                });
            }
            Some(sig) => {
                let bad = |reason: String| RepoError::BadSignature {
                    name: name.to_owned(),
                    version: entry.version.to_string(),
                    reason,
                };
                let signer = sign::signer_id(sig).map_err(bad)?;
                if !self.keys.iter().any(|k| k.id() == signer) {
                    return Err(bad(sign::untrusted_signer(&self.keys, &signer)));
                }
                // The key that signed the installed version is pinned: another trusted key
                // (another index listed first now, another publisher of the same name) does
                // not replace the plugin unless the user says so.
                if let Some(l) = lock.get(name).filter(|l| l.signed_by != UNSIGNED) {
                    if l.signed_by != signer && !self.allow_signer_change.contains(name) {
                        return Err(RepoError::SignerChanged {
                            name: name.to_owned(),
                            version: entry.version.to_string(),
                            from: l.signed_by.clone(),
                            to: signer,
                        });
                    }
                }
            }
        }
        if artifact.size > self.limits.max_download {
            return Err(RepoError::UnsafeArchive {
                name: name.to_owned(),
                reason: format!(
                    "the artifact is {} bytes, above the download cap of {} bytes",
                    artifact.size, self.limits.max_download
                ),
            });
        }
        plan.push(Planned {
            entry: entry.clone(),
            artifact,
            base: s.base.clone(),
            index: s.url.clone(),
        });
        Ok(())
    }

    async fn execute(
        &self,
        plan: Vec<Planned>,
        mut lock: LockFile,
    ) -> Result<Vec<Installed>, RepoError> {
        let mut done = Vec::new();
        for p in plan {
            let previous = lock.get(&p.entry.name).cloned();
            let present = self.plugin_dir.join(&p.entry.name).is_dir();
            if previous.as_ref().is_some_and(|l| {
                l.version == p.entry.version && l.sha256 == p.artifact.sha256 && present
            }) {
                tracing::info!(plugin = %p.entry.name, version = %p.entry.version, "already installed");
                continue;
            }
            if previous.is_none() && present {
                return Err(RepoError::BadPlugin {
                    name: p.entry.name.clone(),
                    reason: format!(
                        "{} exists and was not installed from an index; move it away first",
                        self.plugin_dir.join(&p.entry.name).display()
                    ),
                });
            }
            let locked = self.install_one(&p).await?;
            lock.put(locked.clone());
            lock.save(&self.plugin_dir)?;
            tracing::info!(plugin = %locked.name, version = %locked.version, index = %locked.index, "installed plugin");
            done.push(Installed {
                plugin: locked,
                previous: previous.map(|l| l.version),
            });
        }
        Ok(done)
    }

    async fn install_one(&self, p: &Planned) -> Result<LockedPlugin, RepoError> {
        let name = p.entry.name.clone();
        let version = p.entry.version.to_string();
        let staging = self.staging(&name)?;
        // `join` refuses a network index pointing at this machine (files or loopback).
        let url = fetch::join(&p.base, &p.artifact.url)?;
        let file = staging.0.join("artifact.tar.gz");
        // One byte more than announced, so a longer artifact is told apart from a cut one.
        let (size, sha256) = fetch::download(&self.http, &url, &file, p.artifact.size + 1).await?;
        let tampered = |reason: String| RepoError::Tampered {
            name: name.clone(),
            version: version.clone(),
            reason,
        };
        if size != p.artifact.size {
            return Err(tampered(format!(
                "it is {size} bytes, the index says {}",
                p.artifact.size
            )));
        }
        if sha256 != p.artifact.sha256 {
            return Err(tampered(format!(
                "its sha256 is {sha256}, the index says {}",
                p.artifact.sha256
            )));
        }
        let keys = self.keys.clone();
        let entry = p.entry.clone();
        let minisig = p.artifact.minisig.clone();
        let limits = self.limits;
        let root = staging.0.join(&name);
        let unpack_root = root.clone();
        let sha = sha256.clone();
        let signed_by = tokio::task::spawn_blocking(move || {
            check_and_unpack(&entry, minisig, &sha, &keys, &file, &unpack_root, &limits)
        })
        .await
        .map_err(|e| RepoError::UnsafeArchive {
            name: name.clone(),
            reason: format!("the unpacking task failed: {e}"),
        })??;
        // Into place: the old version (if any) moves into the staging directory, which is
        // deleted afterwards, and the new one takes its name.
        let dest = self.plugin_dir.join(&name);
        let old = staging.0.join("previous");
        let had_old = dest.exists();
        if had_old {
            std::fs::rename(&dest, &old).map_err(RepoError::io("rename", &dest))?;
        }
        if let Err(e) = std::fs::rename(&root, &dest) {
            if had_old {
                let _ = std::fs::rename(&old, &dest);
            }
            return Err(RepoError::io("rename", &dest)(e));
        }
        Ok(LockedPlugin {
            name,
            version: p.entry.version.clone(),
            sha256,
            index: p.index.clone(),
            signed_by,
            requires: p.entry.requires.keys().cloned().collect(),
        })
    }
}

/// Checks the signature of the downloaded `file`, unpacks it into `root` and checks the
/// unpacked manifest against `entry`. Blocking. Returns who signed it.
fn check_and_unpack(
    entry: &IndexEntry,
    minisig: Option<String>,
    sha256: &str,
    keys: &[TrustedKey],
    file: &Path,
    root: &Path,
    limits: &Limits,
) -> Result<String, RepoError> {
    let name = entry.name.clone();
    let signed_by = match minisig {
        Some(sig) => sign::verify_file(keys, &sig, file, &entry.trusted_comment(sha256)).map_err(
            |reason| RepoError::BadSignature {
                name: name.clone(),
                version: entry.version.to_string(),
                reason,
            },
        )?,
        None => {
            tracing::warn!(plugin = %name, "installing an unsigned plugin the user trusts without a signature");
            UNSIGNED.to_owned()
        }
    };
    std::fs::create_dir(root).map_err(RepoError::io("create", root))?;
    let reader = std::fs::File::open(file).map_err(RepoError::io("read", file))?;
    let unpacked = archive::unpack(std::io::BufReader::new(reader), root, limits).map_err(|r| {
        RepoError::UnsafeArchive {
            name: name.clone(),
            reason: r.to_string(),
        }
    })?;
    tracing::debug!(plugin = %name, entries = unpacked.entries, bytes = unpacked.bytes, "unpacked");
    let bad = |reason: String| RepoError::BadPlugin {
        name: name.clone(),
        reason,
    };
    let manifest_path = root.join(MANIFEST_FILE);
    if !manifest_path.is_file() {
        return Err(bad(format!(
            "the archive has no {MANIFEST_FILE} at its top"
        )));
    }
    let manifest = Manifest::load(&manifest_path).map_err(|issue| bad(issue.to_string()))?;
    if manifest.name != entry.name || manifest.version != entry.version.to_string() {
        return Err(bad(format!(
            "its {MANIFEST_FILE} says `{}` {}, the index says `{}` {}",
            manifest.name, manifest.version, entry.name, entry.version
        )));
    }
    if manifest.protocol < entry.protocol.min || manifest.protocol > entry.protocol.max {
        return Err(bad(format!(
            "its {MANIFEST_FILE} speaks protocol {}, the index says {}",
            manifest.protocol, entry.protocol
        )));
    }
    Ok(signed_by)
}

/// The first index listing `name`.
fn find_index<'a>(
    snapshots: &'a [IndexSnapshot],
    name: &str,
) -> Result<&'a IndexSnapshot, RepoError> {
    snapshots
        .iter()
        .find(|s| s.index.plugins.iter().any(|e| e.name == name))
        .ok_or_else(|| RepoError::NotFound {
            name: name.to_owned(),
            suggestion: closest(snapshots, name),
        })
}

/// The newest version of `name` matching `wanted` that this build can install; if the
/// matching versions are all incompatible, why the newest is.
fn choose<'a>(
    snapshots: &'a [IndexSnapshot],
    name: &str,
    wanted: &Wanted,
) -> Result<(&'a IndexSnapshot, &'a IndexEntry), RepoError> {
    let s = find_index(snapshots, name)?;
    let versions = s.index.versions(name);
    let mut matching: Vec<&IndexEntry> = versions
        .iter()
        .copied()
        .filter(|e| wanted.matches(&e.version))
        .collect();
    if *wanted == Wanted::Latest {
        matching = stable_first(matching);
    }
    let Some(newest) = matching.first() else {
        return Err(RepoError::NoVersion {
            name: name.to_owned(),
            wanted: wanted.to_string(),
            available: versions
                .iter()
                .map(|e| e.version.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    match matching.iter().find(|e| e.incompatibility().is_none()) {
        Some(e) => Ok((s, e)),
        None => Err(newest.incompatibility().unwrap_or(RepoError::NotFound {
            name: name.to_owned(),
            suggestion: None,
        })),
    }
}

/// The ranges within which the installed plugins that require `name` need it: what each
/// one's planned version requires if it is being updated, else its installed version, as the
/// index it came from says (the lock file lists only the names). A dependent no index lists
/// any more constrains nothing here.
fn dependents_ranges(
    snapshots: &[IndexSnapshot],
    lock: &LockFile,
    plan: &[Planned],
    name: &str,
) -> Vec<semver::Comparator> {
    holders(snapshots, lock, plan, &BTreeSet::new(), name)
        .into_iter()
        .flat_map(|h| h.range.comparators)
        .collect()
}

/// An installed plugin that requires another, and the range it requires.
struct Holder {
    name: String,
    /// Its installed version, or the planned one.
    version: Version,
    range: VersionReq,
}

/// The installed plugins that require `name`, with the range each requires: as its planned
/// version does when it is in `plan`, else as its installed version does. Those in `skip` and
/// not in `plan` are left out (being planned anew: their new version's requirement is what
/// is being met).
fn holders(
    snapshots: &[IndexSnapshot],
    lock: &LockFile,
    plan: &[Planned],
    skip: &BTreeSet<String>,
    name: &str,
) -> Vec<Holder> {
    lock.plugins
        .iter()
        .filter(|d| d.requires.iter().any(|r| r == name))
        .filter_map(|d| match plan.iter().find(|p| p.entry.name == d.name) {
            Some(p) => p.entry.requires.get(name).map(|range| Holder {
                name: d.name.clone(),
                version: p.entry.version.clone(),
                range: range.clone(),
            }),
            None if skip.contains(&d.name) => None,
            None => snapshots
                .iter()
                .filter(|s| s.url == d.index)
                .flat_map(|s| s.index.versions(&d.name))
                .find(|e| e.version == d.version)
                .and_then(|e| e.requires.get(name))
                .map(|range| Holder {
                    name: d.name.clone(),
                    version: d.version.clone(),
                    range: range.clone(),
                }),
        })
        .collect()
}

/// The installed plugins' names, each before the plugins it requires (its dependents first).
fn dependents_first(lock: &LockFile) -> Vec<String> {
    fn visit(lock: &LockFile, name: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(name.to_owned()) {
            return; // done, or a requirement cycle
        }
        for d in lock
            .plugins
            .iter()
            .filter(|d| d.requires.iter().any(|r| r == name))
        {
            visit(lock, &d.name, seen, out);
        }
        out.push(name.to_owned());
    }
    let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
    for p in &lock.plugins {
        visit(lock, &p.name, &mut seen, &mut out);
    }
    out
}

/// `versions` (newest first) with the releases before the pre-releases: without a version
/// asked for, a release candidate is installed only when no release is installable.
fn stable_first(versions: Vec<&IndexEntry>) -> Vec<&IndexEntry> {
    let (stable, pre): (Vec<_>, Vec<_>) =
        versions.into_iter().partition(|e| e.version.pre.is_empty());
    stable.into_iter().chain(pre).collect()
}

/// Whether `version` meets the requirement `req` of another plugin. A requirement without a
/// range (`requires = ["name"]`, written as `*`) is met by any version, a pre-release too
/// (semver's `*` matches no pre-release: an installed `2.0.0-rc.1` was then replaced by the
/// newest release, a downgrade).
fn meets(req: &VersionReq, version: &Version) -> bool {
    req.comparators.is_empty() || req.matches(version)
}

/// The listed name closest to `name`, if one is close (edit distance ≤ 2).
fn closest(snapshots: &[IndexSnapshot], name: &str) -> Option<String> {
    let names: BTreeSet<&str> = snapshots
        .iter()
        .flat_map(|s| s.index.plugins.iter().map(|e| e.name.as_str()))
        .collect();
    dtf_plugin_core::registry::did_you_mean(name, names).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// An index URL's user name, password and query may be credentials: `Debug` of everything
    /// that holds one shows none of them (the derived one showed them all).
    #[test]
    fn debug_output_shows_no_index_credentials() {
        let index = "https://ci:glpat-SECRET@git.example/dtf/?private_token=QUERYTOKEN";
        let builder = RepoClient::builder().index(index).plugin_dir("/tmp/none");
        let settings = RegistrySettings {
            indexes: vec![index.to_owned()],
            ..RegistrySettings::default()
        };
        let shown = format!("{builder:?} {settings:?}");
        let client = builder.build().unwrap();
        let shown = format!("{shown} {client:?}");
        for secret in ["glpat-SECRET", "QUERYTOKEN", "ci:"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("git.example/dtf/"), "{shown}");
    }
}
