//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the plugin repository. Messages are lowercase fragments
/// that read after "failed to …"; none contains a secret key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// An index or artifact URL that is not allowed (scheme, or `http://` off loopback).
    #[error("use `{url}`: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// No index URL is configured.
    #[error(
        "search the plugin indexes: none is configured (--index URL or `indexes` in [registry])"
    )]
    NoIndex,
    /// Reading an index or an artifact failed (network, HTTP status, file).
    #[error("fetch {url}: {reason}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// No copy of an index could be fetched and none is cached.
    #[error("fetch the index {url}: {reason}; no cached copy either")]
    Offline {
        /// The index.
        url: String,
        /// Why the fetch failed.
        reason: String,
    },
    /// An `index.toml` that does not follow the format.
    #[error("read the index {source_name}: {reason}")]
    BadIndex {
        /// The index URL or file.
        source_name: String,
        /// What is wrong, with the key when known.
        reason: String,
    },
    /// No index has a plugin of that name.
    #[error("find plugin `{name}`: no index lists it{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    NotFound {
        /// The name asked for.
        name: String,
        /// The closest name listed, if one is close.
        suggestion: Option<String>,
    },
    /// The plugin exists, but no listed version matches what was asked for.
    #[error("find plugin `{name}` {wanted}: the index has {available}")]
    NoVersion {
        /// The plugin.
        name: String,
        /// The version or range asked for.
        wanted: String,
        /// The versions listed, comma-separated.
        available: String,
    },
    /// The plugin speaks a protocol version this build does not speak. Raised before any
    /// download.
    #[error(
        "install plugin `{name}` {version}: it speaks plugin protocol version {theirs}, this dtf speaks {ours}"
    )]
    IncompatibleProtocol {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
        /// The protocol versions it speaks (`2` or `2..=3`).
        theirs: String,
        /// The versions this build speaks (`[1]`).
        ours: String,
    },
    /// No artifact of that version runs on this platform.
    #[error(
        "install plugin `{name}` {version}: no artifact for {os}/{arch} (the index has {available})"
    )]
    NoArtifact {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
        /// This platform's OS.
        os: String,
        /// This platform's architecture.
        arch: String,
        /// The platforms listed.
        available: String,
    },
    /// A requirement of the plugin is neither installed, provided by this build, nor in an
    /// index. Raised before any download.
    #[error(
        "install plugin `{name}` {version}: it requires {missing}, which is not installed, not built in and not in any index"
    )]
    MissingRequirement {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
        /// The requirement (`base` or `base ^0.2`).
        missing: String,
    },
    /// The artifact has no signature and the user did not trust it without one. Raised
    /// before any download.
    #[error(
        "install plugin `{name}` {version}: its artifact is not signed; refusing it (trust it explicitly with --allow-unsigned {name} or `allow_unsigned` in [registry])"
    )]
    Unsigned {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
    },
    /// The artifact is signed but there is no trusted key to check it with.
    #[error(
        "install plugin `{name}`: no trusted key is configured (--trusted-key FILE or `trusted_keys` in [registry])"
    )]
    NoTrustedKeys {
        /// The plugin.
        name: String,
    },
    /// The signature does not verify, or was made by a key that is not trusted.
    #[error("verify the signature of plugin `{name}` {version}: {reason}")]
    BadSignature {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
        /// What is wrong.
        reason: String,
    },
    /// The artifact's size or sha256 differs from the index.
    #[error("verify the artifact of plugin `{name}` {version}: {reason}")]
    Tampered {
        /// The plugin.
        name: String,
        /// Its version.
        version: String,
        /// What differs.
        reason: String,
    },
    /// The archive holds something the unpacker refuses (absolute path, `..`, a link out,
    /// a device, too much data or too many files).
    #[error("unpack plugin `{name}`: {reason}")]
    UnsafeArchive {
        /// The plugin.
        name: String,
        /// The offending entry and why.
        reason: String,
    },
    /// An index lists a plugin under the name of one this program has built in: installed, it
    /// would not load (two plugins cannot share a name), or would shadow the built-in.
    #[error(
        "install plugin `{name}`: a built-in plugin has that name; an installed one could not load next to it"
    )]
    BuiltIn {
        /// The plugin.
        name: String,
    },
    /// A version signed by another key than the installed one's: another publisher's plugin
    /// of the same name (an index listed first now, a renamed key) does not replace it
    /// unless the user allows it.
    #[error(
        "install plugin `{name}` {version}: its signer is {to}, the installed version's {from}; refusing a change of signer (allow it with --allow-signer-change {name})"
    )]
    SignerChanged {
        /// The plugin.
        name: String,
        /// The version refused.
        version: String,
        /// The key that signed the installed version.
        from: String,
        /// The key that signed the new one (`unsigned` for none).
        to: String,
    },
    /// The unpacked plugin is not a valid plugin folder (no or bad `plugin.toml`, or one that
    /// does not match the index entry).
    #[error("check plugin `{name}`: {reason}")]
    BadPlugin {
        /// The plugin.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `remove`/`update` of a plugin the lock file does not list.
    #[error("find installed plugin `{name}`: it is not installed in {}", dir.display())]
    NotInstalled {
        /// The plugin.
        name: String,
        /// The plugin directory.
        dir: PathBuf,
    },
    /// `install` of a version of a plugin that the installed plugins requiring it do not
    /// allow (it would have replaced the version they need). Raised before any download.
    #[error(
        "install plugin `{name}` {wanted}: installed {dependents}; update or remove them first, or install a version they allow"
    )]
    HeldBack {
        /// The plugin.
        name: String,
        /// The version or range asked for.
        wanted: String,
        /// The installed plugins requiring it, each with the range it requires, e.g. "`a`
        /// 1.0.0 requires ^1".
        dependents: String,
    },
    /// `remove` of a plugin other installed plugins require.
    #[error("remove plugin `{name}`: {dependents} require it")]
    Required {
        /// The plugin.
        name: String,
        /// The installed plugins requiring it, comma-separated.
        dependents: String,
    },
    /// A key file that cannot be read or used.
    #[error("use the key {}: {reason}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// The `[registry]` table of `dtf.toml`, or a lock file, is invalid.
    #[error("read {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `rename`, …).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl RepoError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
