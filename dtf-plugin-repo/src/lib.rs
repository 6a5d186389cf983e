//! A plugin repository for dtf, the way krew and Helm chart repositories work: a **static
//! index** anyone can host (`index.toml` plus `.tar.gz` artifacts, each with a detached
//! minisign signature) and a **client** that searches it and installs external plugins
//! into a plugin directory safely.
//!
//! Main types:
//! - [`Index`], [`IndexEntry`], [`Artifact`]: the index format (`docs/plugin-index.md`);
//! - [`RepoClient`]: fetch indexes (cached for offline `search`/`info`), [`search`],
//!   [`info`], [`list`], [`install`], [`update`], [`remove`];
//! - [`pack`] and [`keygen`] for plugin authors;
//! - [`archive::unpack`]: the defensive unpacker; [`Limits`]: its caps.
//!
//! [`search`]: RepoClient::search
//! [`info`]: RepoClient::info
//! [`list`]: RepoClient::list
//! [`install`]: RepoClient::install
//! [`update`]: RepoClient::update
//! [`remove`]: RepoClient::remove
//!
//! ```no_run
//! # async fn demo() -> Result<(), dtf_plugin_repo::RepoError> {
//! use dtf_plugin_repo::RepoClient;
//!
//! let client = RepoClient::builder()
//!     .index("https://plugins.example.org/dtf/")
//!     .trusted_key("keys/example.pub")
//!     .plugin_dir("plugins")
//!     .build()?;
//! for hit in client.search(Some("slack")).await? {
//!     println!("{} {} — {}", hit.name, hit.version, hit.description);
//! }
//! client.install("py-echo@0.1.0").await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - **Installing never runs plugin code.** It downloads, checks, unpacks and renames.
//! - **Checked before download:** the version exists, speaks a plugin protocol this build
//!   speaks ([`dtf_plugin_core::external::SUPPORTED_PROTOCOLS`]), has an artifact for this
//!   platform, its `requires` can be met, it is signed by a trusted key (or the user trusts
//!   it without a signature).
//! - **Checked after download, before unpacking:** the size and SHA-256 the index gives, and
//!   the signature, whose trusted comment must name this plugin, version and SHA-256.
//! - **Unpacking is defensive** ([`archive`]): no absolute paths, no `..`, no links out, capped
//!   size and entry count; into a temporary directory inside the plugin directory, then one
//!   rename. A failed install leaves the plugin directory and lock file as they were.
//! - Plain `http://` is allowed to loopback addresses only.
//!
//! Concurrent installs into one plugin directory are not coordinated (the last lock-file
//! write wins).

#![forbid(unsafe_code)]

pub mod archive;
mod client;
mod config;
mod error;
mod fetch;
pub mod index;
mod lock;
mod pack;
mod sign;

pub use archive::Limits;
pub use client::{
    IndexSnapshot, Installed, PluginInfo, RepoClient, RepoClientBuilder, STAGING_PREFIX, SearchHit,
    Wanted, parse_spec,
};
pub use config::{REGISTRY_KEYS, RegistrySettings};
pub use error::RepoError;
pub use fetch::{index_url, redact_location};
pub use index::{Artifact, INDEX_FILE, Index, IndexEntry, ProtocolRange};
pub use lock::{LOCK_FILE, LockFile, LockedPlugin};
pub use pack::{ARTIFACTS_DIR, PackOptions, pack};
pub use sign::{
    KeyFiles, PUBLIC_KEY_FILE, SECRET_KEY_FILE, TrustedKey, keygen, sign_file, signer_id,
    verify_file,
};
