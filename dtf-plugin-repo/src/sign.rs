//! Keys and signatures in minisign's format: key pairs for authors, detached signatures of
//! artifacts, and their verification against the user's trusted keys.
//!
//! Signing uses the `minisign` crate; verification uses `minisign-verify`, a separate
//! implementation, so a bug in one does not hide in both.

use std::fmt;
use std::fs;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use crate::RepoError;

/// The public key file `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "dtf-plugin.pub";
/// The secret key file `keygen` writes (mode `0600`).
pub const SECRET_KEY_FILE: &str = "dtf-plugin.key";

/// The files of a new key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyFiles {
    /// The public key: give it to users (`--trusted-key`, `trusted_keys`).
    pub public: PathBuf,
    /// The secret key: keep it secret (`pack --key`).
    pub secret: PathBuf,
    /// The key id, as minisign prints it (16 hex digits).
    pub key_id: String,
}

fn key_id(keynum: &[u8]) -> String {
    let mut n = [0u8; 8];
    for (d, s) in n.iter_mut().zip(keynum) {
        *d = *s;
    }
    format!("{:016X}", u64::from_le_bytes(n))
}

fn key_error(path: &Path, reason: impl fmt::Display) -> RepoError {
    RepoError::Key {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Creates a key pair in `dir` ([`PUBLIC_KEY_FILE`], [`SECRET_KEY_FILE`]); the secret key is
/// not password-protected (it is meant for CI secrets stores; keep the file private).
///
/// # Errors
///
/// Either file exists already (nothing is overwritten), or writing failed.
pub fn keygen(dir: &Path) -> Result<KeyFiles, RepoError> {
    fs::create_dir_all(dir).map_err(RepoError::io("create", dir))?;
    let public = dir.join(PUBLIC_KEY_FILE);
    let secret = dir.join(SECRET_KEY_FILE);
    for p in [&public, &secret] {
        if p.exists() {
            return Err(key_error(p, "exists already; not overwriting a key"));
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| key_error(&secret, format!("cannot generate a key pair: {e}")))?;
    let id = key_id(pair.pk.keynum());
    let pk_box = pair
        .pk
        .to_box()
        .map_err(|e| key_error(&public, e))?
        .into_string();
    let sk_box = pair
        .sk
        .to_box(Some(&format!("dtf plugin secret key {id}")))
        .map_err(|e| key_error(&secret, e))?
        .into_string();
    write_new(&secret, sk_box.as_bytes(), true)?;
    write_new(&public, pk_box.as_bytes(), false)?;
    tracing::info!(key_id = %id, public = %public.display(), "created a plugin signing key pair");
    Ok(KeyFiles {
        public,
        secret,
        key_id: id,
    })
}

fn write_new(path: &Path, bytes: &[u8], private: bool) -> Result<(), RepoError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = options.open(path).map_err(RepoError::io("create", path))?;
    f.write_all(bytes).map_err(RepoError::io("write", path))?;
    f.sync_all().map_err(RepoError::io("write", path))
}

/// Signs the file `data` with the secret key file `secret_key` (a minisign secret key;
/// `password` for a password-protected one), with `trusted_comment`. Returns the
/// `.minisig` text.
///
/// # Errors
///
/// The key cannot be read or decrypted (the error never contains the key), or `data`
/// cannot be read.
pub fn sign_file(
    secret_key: &Path,
    password: Option<String>,
    data: &Path,
    trusted_comment: &str,
) -> Result<String, RepoError> {
    let sk = load_secret(secret_key, password)?;
    let file = fs::File::open(data).map_err(RepoError::io("read", data))?;
    sign_with(&sk, secret_key, file, trusted_comment)
}

/// [`sign_file`] for bytes in memory (`pack` signs before it writes anything).
pub(crate) fn sign_bytes(
    secret_key: &Path,
    password: Option<String>,
    data: &[u8],
    trusted_comment: &str,
) -> Result<String, RepoError> {
    let sk = load_secret(secret_key, password)?;
    sign_with(&sk, secret_key, data, trusted_comment)
}

fn load_secret(
    secret_key: &Path,
    password: Option<String>,
) -> Result<minisign::SecretKey, RepoError> {
    let text = fs::read_to_string(secret_key).map_err(RepoError::io("read", secret_key))?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|_| key_error(secret_key, "not a minisign secret key"))?;
    match password {
        Some(p) => minisign::SecretKey::from_box(sk_box, Some(p)),
        None => minisign::SecretKey::from_unencrypted_box(sk_box),
    }
    .map_err(|e| {
        key_error(
            secret_key,
            format!(
                "cannot use the secret key ({e}); if it is password-protected, give its password"
            ),
        )
    })
}

fn sign_with(
    sk: &minisign::SecretKey,
    secret_key: &Path,
    data: impl Read,
    trusted_comment: &str,
) -> Result<String, RepoError> {
    let untrusted = format!("signature from dtf plugin key {}", key_id(sk.keynum()));
    let sig = minisign::sign(None, sk, data, Some(trusted_comment), Some(&untrusted))
        .map_err(|e| key_error(secret_key, format!("cannot sign: {e}")))?;
    Ok(sig.into_string())
}

/// A public key the user trusts, read from a minisign `.pub` file.
#[derive(Clone)]
pub struct TrustedKey {
    path: PathBuf,
    id: String,
    key: minisign_verify::PublicKey,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("path", &self.path)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl TrustedKey {
    /// Reads the minisign public key file `path`.
    ///
    /// # Errors
    ///
    /// [`RepoError::Key`] if it cannot be read or is not a minisign public key.
    pub fn load(path: &Path) -> Result<Self, RepoError> {
        let text = fs::read_to_string(path).map_err(|e| key_error(path, e))?;
        let key = minisign_verify::PublicKey::decode(&text)
            .map_err(|e| key_error(path, format!("not a minisign public key: {e}")))?;
        let keynum = minisign::PublicKeyBox::from_string(&text)
            .and_then(minisign::PublicKeyBox::into_public_key)
            .map_err(|e| key_error(path, format!("not a minisign public key: {e}")))?
            .keynum()
            .to_vec();
        Ok(Self {
            path: path.to_owned(),
            id: key_id(&keynum),
            key,
        })
    }

    /// The key id (16 hex digits, as minisign prints it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The id of the key that made the signature `minisig`, read without verifying anything
/// (to refuse an untrusted signer before downloading).
///
/// # Errors
///
/// `minisig` is not a minisign signature.
pub fn signer_id(minisig: &str) -> Result<String, String> {
    minisign::SignatureBox::from_string(minisig)
        .map(|b| key_id(b.keynum()))
        .map_err(|e| format!("the signature is not in minisign's format ({e})"))
}

/// The message for a signature by `signer`, which is not among `keys`.
pub(crate) fn untrusted_signer(keys: &[TrustedKey], signer: &str) -> String {
    let trusted: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    format!(
        "it was signed by key {signer}, which is not a trusted key (trusted: {})",
        trusted.join(", ")
    )
}

/// Checks that `minisig` is a valid signature of the file `data` by one of `keys`, with the
/// trusted comment `expected_comment`. Returns the id of the key that signed.
///
/// # Errors
///
/// Why the signature is refused: not a signature, made by a key that is not trusted, not
/// matching the data, or with another trusted comment.
pub fn verify_file(
    keys: &[TrustedKey],
    minisig: &str,
    data: &Path,
    expected_comment: &str,
) -> Result<String, String> {
    let file = fs::File::open(data).map_err(|e| format!("cannot read the artifact: {e}"))?;
    verify_reader(keys, minisig, file, expected_comment)
}

/// [`verify_file`] for data read from `data` (`pack` checks bytes in memory).
pub(crate) fn verify_reader(
    keys: &[TrustedKey],
    minisig: &str,
    mut data: impl Read,
    expected_comment: &str,
) -> Result<String, String> {
    let signature = minisign_verify::Signature::decode(minisig)
        .map_err(|e| format!("the signature is not in minisign's format ({e})"))?;
    let signer = signer_id(minisig)?;
    let Some(key) = keys.iter().find(|k| k.id == signer) else {
        return Err(untrusted_signer(keys, &signer));
    };
    let mut verifier = key.key.verify_stream(&signature).map_err(|e| match e {
        minisign_verify::Error::UnsupportedLegacyMode => {
            "legacy (not pre-hashed) minisign signatures are refused; sign with minisign 0.8 or later".to_owned()
        }
        other => other.to_string(),
    })?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = data
            .read(&mut buf)
            .map_err(|e| format!("cannot read the artifact: {e}"))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]);
    }
    verifier.finalize().map_err(|_| {
        format!(
            "the signature does not match the artifact (key {}): the artifact or its signature was altered",
            key.id
        )
    })?;
    if signature.trusted_comment() != expected_comment {
        return Err(format!(
            "the signature is valid but its trusted comment is `{}`, expected `{expected_comment}`: it was made for another plugin, version or file",
            signature.trusted_comment()
        ));
    }
    Ok(key.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies_and_refuses_changes() {
        let dir = std::env::temp_dir().join(format!("dtf-sign-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let keys = keygen(&dir).unwrap();
        assert!(keygen(&dir).is_err(), "never overwrites a key");
        let data = dir.join("data");
        fs::write(&data, b"hello").unwrap();
        let sig = sign_file(&keys.secret, None, &data, "dtf-plugin name=a").unwrap();
        let trusted = [TrustedKey::load(&keys.public).unwrap()];
        assert_eq!(trusted[0].id(), keys.key_id);
        assert_eq!(
            verify_file(&trusted, &sig, &data, "dtf-plugin name=a").unwrap(),
            keys.key_id
        );
        let err = verify_file(&trusted, &sig, &data, "dtf-plugin name=b").unwrap_err();
        assert!(err.contains("trusted comment"), "{err}");
        fs::write(&data, b"hellO").unwrap();
        let err = verify_file(&trusted, &sig, &data, "dtf-plugin name=a").unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        let other = keygen(&dir.join("other")).unwrap();
        let err = verify_file(
            &[TrustedKey::load(&other.public).unwrap()],
            &sig,
            &data,
            "x",
        )
        .unwrap_err();
        assert!(err.contains("not a trusted key"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
