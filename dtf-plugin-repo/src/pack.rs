//! `pack`: build a plugin's artifact, sign it and add it to an index directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::{Version, VersionReq};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use dtf_plugin_core::external::MANIFEST_FILE;

use crate::fetch::hex;
use crate::index::{
    ANY, Artifact, INDEX_FILE, Index, IndexEntry, ProtocolRange, is_valid_name, trusted_comment,
};
use crate::lock::write_atomic;
use crate::sign::TrustedKey;
use crate::{RepoError, archive, sign};

/// The folder of an index directory that `pack` writes artifacts to.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// Options of [`pack`].
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct PackOptions {
    /// The secret key file to sign with; `None` packs an unsigned artifact.
    pub secret_key: Option<PathBuf>,
    /// The secret key's password, if it has one.
    pub password: Option<String>,
    /// The OS the artifact runs on; default `any`.
    pub os: Option<String>,
    /// The architecture; default `any`.
    pub arch: Option<String>,
    /// The index entry's homepage.
    pub homepage: Option<String>,
    /// The index entry's license.
    pub license: Option<String>,
    /// The protocol versions spoken; default the manifest's `protocol`, alone.
    pub protocol: Option<ProtocolRange>,
    /// Keys the new signature must verify with before anything is written (a CI job's check
    /// that it signs with the published key); none: not checked.
    pub verify_with: Vec<TrustedKey>,
}

impl std::fmt::Debug for PackOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackOptions")
            .field("secret_key", &self.secret_key)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("os", &self.os)
            .field("arch", &self.arch)
            .field("homepage", &self.homepage)
            .field("license", &self.license)
            .field("protocol", &self.protocol)
            .field("verify_with", &self.verify_with)
            .finish()
    }
}

impl PackOptions {
    /// Signs with the secret key file `path`.
    pub fn secret_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_key = Some(path.into());
        self
    }

    /// The secret key's password.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The platform (`os`, `arch`; `any` for either).
    pub fn platform(mut self, os: impl Into<String>, arch: impl Into<String>) -> Self {
        self.os = Some(os.into());
        self.arch = Some(arch.into());
        self
    }

    /// The homepage.
    pub fn homepage(mut self, url: impl Into<String>) -> Self {
        self.homepage = Some(url.into());
        self
    }

    /// The license.
    pub fn license(mut self, license: impl Into<String>) -> Self {
        self.license = Some(license.into());
        self
    }

    /// The protocol versions spoken.
    pub fn protocol(mut self, range: ProtocolRange) -> Self {
        self.protocol = Some(range);
        self
    }

    /// The signature must verify with one of `keys`, checked before the index directory is
    /// touched.
    pub fn verify_with(mut self, keys: Vec<TrustedKey>) -> Self {
        self.verify_with = keys;
        self
    }
}

/// The fields of `plugin.toml` the index needs, read leniently so that plugins for other
/// protocol versions can be packed too.
#[derive(Deserialize)]
struct PackManifest {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    protocol: u32,
    #[serde(default)]
    requires: Vec<String>,
}

/// Packs the plugin folder `dir` (its `plugin.toml` gives name, version, description,
/// protocol and requires) into `INDEX_DIR/artifacts/NAME-VERSION[-OS-ARCH].tar.gz`, signs
/// it (writing the `.minisig` beside it too), and adds or updates its entry in
/// `INDEX_DIR/index.toml` (created when missing). Returns the entry.
///
/// # Errors
///
/// A missing or invalid manifest, a version that is not semver, an unreadable or
/// password-protected key without its password, a file-system error.
pub fn pack(dir: &Path, index_dir: &Path, options: &PackOptions) -> Result<IndexEntry, RepoError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text =
        std::fs::read_to_string(&manifest_path).map_err(RepoError::io("read", &manifest_path))?;
    let bad = |reason: String| RepoError::BadPlugin {
        name: dir.display().to_string(),
        reason,
    };
    let m: PackManifest = toml::from_str(&text).map_err(|e| {
        bad(format!(
            "{}: {}",
            manifest_path.display(),
            e.to_string().trim()
        ))
    })?;
    if !is_valid_name(&m.name) {
        return Err(bad(format!("`{}` is not a valid plugin name", m.name)));
    }
    let version = Version::parse(&m.version).map_err(|e| {
        bad(format!(
            "version `{}` is not semver ({e}); the index orders versions by semver",
            m.version
        ))
    })?;
    let os = options.os.clone().unwrap_or_else(|| ANY.to_owned());
    let arch = options.arch.clone().unwrap_or_else(|| ANY.to_owned());
    let file_name = if os == ANY && arch == ANY {
        format!("{}-{version}.tar.gz", m.name)
    } else {
        format!("{}-{version}-{os}-{arch}.tar.gz", m.name)
    };
    // Everything is built, signed and checked in memory first: a failure (a key without its
    // password, a signature the trusted keys refuse) leaves the index directory as it was.
    // Then the artifact, its signature and the index are written, each atomically, in that
    // order.
    let mut bytes = Vec::new();
    archive::pack_dir(dir, &mut bytes).map_err(RepoError::io("pack", dir))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let comment = trusted_comment(&m.name, &version, &sha256);
    let minisig = match &options.secret_key {
        Some(key) => Some(sign::sign_bytes(
            key,
            options.password.clone(),
            &bytes,
            &comment,
        )?),
        None => None,
    };
    if !options.verify_with.is_empty() {
        let refused = |reason: String| RepoError::BadSignature {
            name: m.name.clone(),
            version: version.to_string(),
            reason,
        };
        let sig = minisig
            .as_deref()
            .ok_or_else(|| refused("the artifact is not signed".to_owned()))?;
        sign::verify_reader(&options.verify_with, sig, bytes.as_slice(), &comment)
            .map_err(refused)?;
    }
    let index_path = index_dir.join(INDEX_FILE);
    let mut index = match std::fs::read_to_string(&index_path) {
        Ok(text) => Index::parse(&index_path.display().to_string(), &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
        Err(e) => return Err(RepoError::io("read", &index_path)(e)),
    };
    let artifacts = index_dir.join(ARTIFACTS_DIR);
    std::fs::create_dir_all(&artifacts).map_err(RepoError::io("create", &artifacts))?;
    let path = artifacts.join(&file_name);
    write_atomic(&path, &bytes)?;
    if let Some(sig) = &minisig {
        write_atomic(
            &path.with_file_name(format!("{file_name}.minisig")),
            sig.as_bytes(),
        )?;
    }
    let entry = IndexEntry {
        name: m.name.clone(),
        version,
        description: m.description,
        homepage: options.homepage.clone(),
        license: options.license.clone(),
        protocol: options
            .protocol
            .unwrap_or(ProtocolRange::new(m.protocol, m.protocol)),
        requires: m
            .requires
            .into_iter()
            .map(|r| (r, VersionReq::STAR))
            .collect::<BTreeMap<_, _>>(),
        artifacts: vec![Artifact {
            os,
            arch,
            url: format!("{ARTIFACTS_DIR}/{file_name}"),
            size: bytes.len() as u64,
            sha256,
            minisig,
        }],
    };
    index.upsert(entry.clone());
    write_atomic(&index_path, index.to_toml()?.as_bytes())?;
    tracing::info!(plugin = %entry.name, version = %entry.version, index = %index_path.display(), "packed plugin");
    Ok(entry)
}
