//! The plugin repository (`dtf-plugin-repo`) against indexes these tests build with `pack`,
//! served over HTTP (and HTTPS, with a self-signed CA) by in-process servers on 127.0.0.1 and
//! from `file://`: install, list,
//! update, remove; tampered, wrongly signed, unknown-key and unsigned artifacts; hostile
//! archives (`..`, absolute paths, links out, a 1 GiB bomb, an entry-count bomb);
//! incompatible protocol and unmet `requires` refused before download; offline use from the
//! cache; a running manager with hot reload starting what was installed.
//! The hot-reload test needs `python3` on `PATH` (it runs the example plugin).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dtf_plugin_core::external::Reloader;
use dtf_plugin_core::{PluginManager, PluginStatus};
use dtf_plugin_repo::{
    Artifact, INDEX_FILE, Index, IndexEntry, KeyFiles, LOCK_FILE, Limits, PackOptions,
    ProtocolRange, RepoClient, RepoError, STAGING_PREFIX, index::trusted_comment, keygen, pack,
    sign_file,
};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::any};

fn py_echo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dtf-examples/plugins/py-echo")
}

/// A fresh directory for one test: `index/`, `plugins/`, `cache/`, `keys/`, `src/`.
struct Fixture {
    root: PathBuf,
    keys: KeyFiles,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("dtf-repo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let keys = keygen(&root.join("keys")).unwrap();
        Self { root, keys }
    }

    fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    fn plugin_dir(&self) -> PathBuf {
        self.root.join("plugins")
    }

    /// A plugin folder `src/<name>-<version>` running the example Python plugin, with
    /// `extra` manifest lines.
    fn plugin_src(&self, name: &str, version: &str, extra: &str) -> PathBuf {
        let dir = self.root.join("src").join(format!("{name}-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(py_echo().join("plugin.py"), dir.join("plugin.py")).unwrap();
        let protocol = if extra.contains("protocol") {
            ""
        } else {
            "protocol = 1\n"
        };
        std::fs::write(
            dir.join("plugin.toml"),
            format!(
                "name = \"{name}\"\nversion = \"{version}\"\ndescription = \"The {name} test plugin\"\n\
                 hooks = [\"task_created\"]\n{protocol}command = \"python3\"\nargs = [\"plugin.py\"]\n{extra}"
            ),
        )
        .unwrap();
        dir
    }

    /// Packs `src` into the index, signed with the fixture's key.
    fn pack(&self, src: &Path) -> IndexEntry {
        pack(
            src,
            &self.index_dir(),
            &PackOptions::default().secret_key(&self.keys.secret),
        )
        .unwrap()
    }

    /// A client on `index` trusting the fixture's key.
    fn client(&self, index: &str) -> RepoClient {
        self.client_with(index, |b| b)
    }

    fn client_with(
        &self,
        index: &str,
        f: impl FnOnce(dtf_plugin_repo::RepoClientBuilder) -> dtf_plugin_repo::RepoClientBuilder,
    ) -> RepoClient {
        f(RepoClient::builder()
            .index(index)
            .trusted_key(&self.keys.public)
            .plugin_dir(self.plugin_dir())
            .cache_dir(self.root.join("cache")))
        .build()
        .unwrap()
    }

    fn file_url(&self) -> String {
        format!("file://{}", self.index_dir().display())
    }

    /// Edits `index.toml` in place.
    fn edit_index(&self, f: impl FnOnce(&mut Index)) {
        let path = self.index_dir().join(INDEX_FILE);
        let mut index = Index::parse("test", &std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut index);
        std::fs::write(&path, index.to_toml().unwrap()).unwrap();
    }

    /// Adds `bytes` as the artifact of `name` 0.1.0 (a valid-looking entry), signed with
    /// `key` (None: unsigned).
    fn add_raw_artifact(&self, name: &str, bytes: &[u8], key: Option<&Path>) {
        let dir = self.index_dir().join("artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.tar.gz"));
        std::fs::write(&file, bytes).unwrap();
        let sha = sha256_hex(bytes);
        let version = semver::Version::new(0, 1, 0);
        let minisig =
            key.map(|k| sign_file(k, None, &file, &trusted_comment(name, &version, &sha)).unwrap());
        let path = self.index_dir().join(INDEX_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "format = 1\n".to_owned());
        let mut index = Index::parse("test", &text).unwrap();
        let mut template = self.template_entry();
        template.name = name.to_owned();
        template.artifacts = vec![artifact(
            format!("artifacts/{name}.tar.gz"),
            bytes.len() as u64,
            sha,
            minisig,
        )];
        index.upsert(template);
        std::fs::write(&path, index.to_toml().unwrap()).unwrap();
    }

    /// An entry of a real packed plugin, to copy fields from.
    fn template_entry(&self) -> IndexEntry {
        let scratch = self.root.join("scratch-index");
        let src = self.plugin_src("template", "0.1.0", "");
        pack(&src, &scratch, &PackOptions::default()).unwrap()
    }

    /// Nothing of `name` in the plugin directory, no staging directory left, not locked.
    fn assert_not_installed(&self, name: &str) {
        let dir = self.plugin_dir();
        assert!(!dir.join(name).exists(), "{name} must not be installed");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !n.starts_with(STAGING_PREFIX),
                    "staging directory left behind: {n}"
                );
            }
        }
        let lock = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap_or_default();
        assert!(
            !lock.contains(&format!("name = \"{name}\"")),
            "{name} must not be locked:\n{lock}"
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn artifact(url: String, size: u64, sha256: String, minisig: Option<String>) -> Artifact {
    let text = format!(
        "os = \"any\"\narch = \"any\"\nurl = \"{url}\"\nsize = {size}\nsha256 = \"{sha256}\"\n"
    );
    let mut a: Artifact = toml::from_str(&text).unwrap();
    a.minisig = minisig;
    a
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves the files of a directory, like any static web server.
struct Files(PathBuf);

impl Respond for Files {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        match std::fs::read(self.0.join(request.url.path().trim_start_matches('/'))) {
            Ok(bytes) => ResponseTemplate::new(200).set_body_bytes(bytes),
            Err(_) => ResponseTemplate::new(404),
        }
    }
}

/// A server of its own (not from wiremock's pool, so dropping it stops it).
async fn serve(dir: &Path) -> MockServer {
    let server = MockServer::builder().start().await;
    Mock::given(any())
        .respond_with(Files(dir.to_owned()))
        .mount(&server)
        .await;
    server
}

/// The paths the server was asked for.
async fn requested(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect()
}

fn downloaded_an_artifact(paths: &[String]) -> bool {
    paths.iter().any(|p| p.contains("artifacts/"))
}

#[tokio::test]
async fn installs_lists_updates_and_removes_over_http_and_from_file_urls() {
    let fx = Fixture::new("lifecycle");
    fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    let server = serve(&fx.index_dir()).await;
    for index in [format!("{}/", server.uri()), fx.file_url()] {
        let client = fx.client(&index);
        let hits = client.search(Some("ECHO")).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].installable.as_ref().unwrap().to_string(), "0.1.0");
        assert!(hits[0].installed.is_none());

        let done = client.install("echo").await.unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].plugin.signed_by, fx.keys.key_id);
        let manifest = std::fs::read_to_string(fx.plugin_dir().join("echo/plugin.toml")).unwrap();
        assert!(manifest.contains("version = \"0.1.0\""));
        let listed = client.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].name.as_str(), listed[0].version.to_string()),
            ("echo", "0.1.0".to_owned())
        );
        assert!(
            listed[0].index.starts_with(index.trim_end_matches('/')),
            "{}",
            listed[0].index
        );
        assert!(
            client.install("echo").await.unwrap().is_empty(),
            "installed already"
        );
        let keyless = RepoClient::builder()
            .index(&index)
            .plugin_dir(fx.plugin_dir())
            .cache_dir(fx.root.join("cache"))
            .build()
            .unwrap();
        assert!(
            keyless.install("echo").await.unwrap().is_empty(),
            "an installed version needs no key to be left as it is"
        );

        // A new version appears in the index; update picks it up.
        fx.pack(&fx.plugin_src("echo", "0.2.0", ""));
        let info = client.info("echo").await.unwrap();
        let versions: Vec<String> = info
            .versions
            .iter()
            .map(|(e, _)| e.version.to_string())
            .collect();
        assert_eq!(versions, ["0.2.0", "0.1.0"]);
        assert!(info.versions.iter().all(|(_, why)| why.is_none()));
        let updated = client.update(None).await.unwrap();
        assert_eq!(updated.len(), 1);
        assert_eq!(updated[0].previous.as_ref().unwrap().to_string(), "0.1.0");
        assert_eq!(client.list().unwrap()[0].version.to_string(), "0.2.0");
        let manifest = std::fs::read_to_string(fx.plugin_dir().join("echo/plugin.toml")).unwrap();
        assert!(manifest.contains("version = \"0.2.0\""));
        assert!(
            client.update(Some("echo")).await.unwrap().is_empty(),
            "up to date"
        );

        // An exact older version on request.
        client.install("echo@0.1.0").await.unwrap();
        assert_eq!(client.list().unwrap()[0].version.to_string(), "0.1.0");

        let removed = client.remove("echo").unwrap();
        assert_eq!(removed.name, "echo");
        fx.assert_not_installed("echo");
        assert!(client.list().unwrap().is_empty());
        let err = client.remove("echo").unwrap_err();
        assert!(matches!(err, RepoError::NotInstalled { .. }), "{err}");

        // Back to one version for the next round.
        fx.edit_index(|i| i.plugins.retain(|e| e.version.to_string() == "0.1.0"));
    }
}

#[tokio::test]
async fn a_tampered_artifact_is_refused_and_nothing_is_installed() {
    let fx = Fixture::new("tampered");
    let entry = fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    let file = fx.index_dir().join(&entry.artifacts[0].url);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let server = serve(&fx.index_dir()).await;
    let err = fx.client(&server.uri()).install("echo").await.unwrap_err();
    assert!(matches!(err, RepoError::Tampered { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    fx.assert_not_installed("echo");

    // One byte more than the index says.
    bytes[middle] ^= 0x01;
    bytes.push(0);
    std::fs::write(&file, &bytes).unwrap();
    let err = fx.client(&server.uri()).install("echo").await.unwrap_err();
    assert!(err.to_string().contains("bytes, the index says"), "{err}");
    fx.assert_not_installed("echo");

    // An index on the network pointing at a local file.
    bytes.pop();
    std::fs::write(&file, &bytes).unwrap();
    fx.edit_index(|i| i.plugins[0].artifacts[0].url = format!("file://{}", file.display()));
    let err = fx.client(&server.uri()).install("echo").await.unwrap_err();
    assert!(matches!(err, RepoError::BadUrl { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot point at local files"),
        "{err}"
    );
    fx.assert_not_installed("echo");
}

#[tokio::test]
async fn an_artifact_altered_together_with_its_index_entry_fails_the_signature() {
    let fx = Fixture::new("resigned");
    let entry = fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    // Whoever controls the server but not the key swaps in another archive and fixes the
    // size and sha256 in the index; the signature still covers the original.
    let other = fx.template_entry();
    let evil = std::fs::read(fx.root.join("scratch-index").join(&other.artifacts[0].url)).unwrap();
    std::fs::write(fx.index_dir().join(&entry.artifacts[0].url), &evil).unwrap();
    fx.edit_index(|i| {
        let a = &mut i.plugins[0].artifacts[0];
        a.size = evil.len() as u64;
        a.sha256 = sha256_hex(&evil);
    });
    let err = fx.client(&fx.file_url()).install("echo").await.unwrap_err();
    assert!(matches!(err, RepoError::BadSignature { .. }), "{err}");
    assert!(
        err.to_string().contains("does not match the artifact"),
        "{err}"
    );
    fx.assert_not_installed("echo");

    // A valid signature of the same key, made for another plugin, does not transfer.
    fx.edit_index(|i| {
        let a = &mut i.plugins[0].artifacts[0];
        let sig = sign_file(
            &fx.keys.secret,
            None,
            &fx.index_dir().join(&a.url),
            &trusted_comment("template", &semver::Version::new(0, 1, 0), &a.sha256),
        )
        .unwrap();
        a.minisig = Some(sig);
    });
    let err = fx.client(&fx.file_url()).install("echo").await.unwrap_err();
    assert!(err.to_string().contains("trusted comment"), "{err}");
    fx.assert_not_installed("echo");
}

#[tokio::test]
async fn a_signature_by_an_unknown_key_is_refused_before_download() {
    let fx = Fixture::new("unknown-key");
    let stranger = keygen(&fx.root.join("stranger")).unwrap();
    pack(
        &fx.plugin_src("echo", "0.1.0", ""),
        &fx.index_dir(),
        &PackOptions::default().secret_key(&stranger.secret),
    )
    .unwrap();
    let server = serve(&fx.index_dir()).await;
    let err = fx.client(&server.uri()).install("echo").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RepoError::BadSignature { .. }), "{msg}");
    assert!(
        msg.contains(&stranger.key_id)
            && msg.contains("not a trusted key")
            && msg.contains(&fx.keys.key_id),
        "{msg}"
    );
    assert!(!downloaded_an_artifact(&requested(&server).await));
    fx.assert_not_installed("echo");

    // Without any trusted key, a signed artifact cannot be checked: refused too.
    let keyless = RepoClient::builder()
        .index(server.uri())
        .plugin_dir(fx.plugin_dir())
        .cache_dir(fx.root.join("cache"))
        .build()
        .unwrap();
    let err = keyless.install("echo").await.unwrap_err();
    assert!(matches!(err, RepoError::NoTrustedKeys { .. }), "{err}");
    assert!(!downloaded_an_artifact(&requested(&server).await));
}

#[tokio::test]
async fn unsigned_artifacts_are_refused_unless_the_user_trusts_them_explicitly() {
    let fx = Fixture::new("unsigned");
    pack(
        &fx.plugin_src("echo", "0.1.0", ""),
        &fx.index_dir(),
        &PackOptions::default(),
    )
    .unwrap();
    let server = serve(&fx.index_dir()).await;
    let err = fx.client(&server.uri()).install("echo").await.unwrap_err();
    assert!(matches!(err, RepoError::Unsigned { .. }), "{err}");
    assert!(err.to_string().contains("--allow-unsigned echo"), "{err}");
    assert!(!downloaded_an_artifact(&requested(&server).await));
    fx.assert_not_installed("echo");

    // Trusting another plugin without a signature does not cover this one.
    let other = fx.client_with(&server.uri(), |b| b.allow_unsigned("other"));
    assert!(matches!(
        other.install("echo").await,
        Err(RepoError::Unsigned { .. })
    ));

    let trusting = fx.client_with(&server.uri(), |b| b.allow_unsigned("echo"));
    let done = trusting.install("echo").await.unwrap();
    assert_eq!(done[0].plugin.signed_by, "unsigned");
    assert!(fx.plugin_dir().join("echo/plugin.toml").is_file());
}

// ---- hostile archives ------------------------------------------------------------------

/// One raw tar entry: the path and link name are written as bytes, bypassing the `tar`
/// crate's own checks, as an attacker's tool would.
struct Raw<'a> {
    path: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Raw<'a> {
    Raw {
        path,
        kind: tar::EntryType::Regular,
        link: "",
        data,
    }
}

fn link<'a>(path: &'a str, kind: tar::EntryType, target: &'a str) -> Raw<'a> {
    Raw {
        path,
        kind,
        link: target,
        data: b"",
    }
}

fn raw_header(path: &str, kind: tar::EntryType, link: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn raw_tar_gz(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for e in entries {
        let header = raw_header(e.path, e.kind, e.link, e.data.len() as u64);
        builder.append(&header, e.data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

const MANIFEST: &[u8] = b"name = \"evil\"\nversion = \"0.1.0\"\nhooks = [\"task_created\"]\nprotocol = 1\ncommand = \"true\"\n";

#[tokio::test]
async fn archives_that_try_to_escape_are_refused_and_write_nothing_outside() {
    let fx = Fixture::new("escape");
    let outside = fx.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let abs = format!("{}/abs-escape", outside.display());
    let cases: Vec<(&str, Vec<Raw<'_>>, &str)> = vec![
        (
            "dot-dot",
            vec![
                file("plugin.toml", MANIFEST),
                file("../../outside/dotdot", b"x"),
            ],
            "`..`",
        ),
        (
            "dot-dot-inside",
            vec![file("a/../../../outside/dotdot2", b"x")],
            "`..`",
        ),
        (
            "absolute",
            vec![file("plugin.toml", MANIFEST), file(&abs, b"x")],
            "absolute path",
        ),
        (
            "symlink-out",
            vec![
                file("plugin.toml", MANIFEST),
                link("out", tar::EntryType::Symlink, "../../outside"),
                file("out/through", b"x"),
            ],
            "could leave",
        ),
        (
            "symlink-absolute",
            vec![link("etc", tar::EntryType::Symlink, "/etc")],
            "could leave",
        ),
        (
            "write-through-inner-symlink",
            vec![
                file("plugin.toml", MANIFEST),
                link("sub", tar::EntryType::Symlink, "inner"),
                file("sub/x", b"x"),
            ],
            "through links",
        ),
        (
            "hardlink-out",
            vec![
                file("plugin.toml", MANIFEST),
                link("h", tar::EntryType::Link, "../../outside/secret"),
            ],
            "`..`",
        ),
        (
            "hardlink-absolute",
            vec![link("passwd", tar::EntryType::Link, "/etc/passwd")],
            "absolute path",
        ),
        (
            "hardlink-missing",
            vec![link("h", tar::EntryType::Link, "nothing-here")],
            "not a file unpacked before it",
        ),
        (
            "device",
            vec![link("dev", tar::EntryType::Char, "")],
            "are refused",
        ),
    ];
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let client = fx.client(&fx.file_url());
    for (name, entries, expected) in &cases {
        fx.add_raw_artifact(name, &raw_tar_gz(entries), Some(&fx.keys.secret));
        let err = client.install(name).await.unwrap_err();
        assert!(
            matches!(err, RepoError::UnsafeArchive { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(expected), "{name}: {err}");
        fx.assert_not_installed(name);
    }
    let mut left: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["secret"],
        "nothing was written outside the plugin directory"
    );
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");

    // The same rules allow links that stay inside.
    let manifest = String::from_utf8(MANIFEST.to_vec())
        .unwrap()
        .replace("evil", "fine");
    let fine = raw_tar_gz(&[
        file("plugin.toml", manifest.as_bytes()),
        file("lib/real.txt", b"data"),
        link("alias", tar::EntryType::Symlink, "lib/real.txt"),
        link("hard", tar::EntryType::Link, "lib/real.txt"),
    ]);
    fx.add_raw_artifact("fine", &fine, Some(&fx.keys.secret));
    client.install("fine").await.unwrap();
    let dir = fx.plugin_dir().join("fine");
    assert_eq!(std::fs::read(dir.join("alias")).unwrap(), b"data");
    assert_eq!(std::fs::read(dir.join("hard")).unwrap(), b"data");
    assert!(
        std::fs::symlink_metadata(dir.join("alias"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A gzip-compressed tar holding one entry of `size` zero bytes (`size` a multiple of
/// 512), built without compressing them: the compressed form of 1 MiB of zeros after a
/// sync flush is repeated, then the trailer (CRC and length of the whole) is written. The
/// archive is about 1 KiB per MiB; the data never exists in memory or on disk.
fn zeros_bomb(path: &str, size: u64) -> Vec<u8> {
    const MIB: u64 = 1 << 20;
    assert!(size % MIB == 0 || size % 512 == 0);
    let header = raw_header(path, tar::EntryType::Regular, "", size);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(header.as_bytes()).unwrap();
    enc.flush().unwrap();
    let zeros = vec![0u8; MIB as usize];
    let mut chunks = Vec::new();
    for _ in 0..3 {
        let before = enc.get_ref().len();
        enc.write_all(&zeros).unwrap();
        enc.flush().unwrap();
        chunks.push(enc.get_ref()[before..].to_vec());
    }
    assert_eq!(chunks[1], chunks[2], "the steady-state chunk repeats");
    // The tar data plus its two zero end blocks, in whole MiB.
    let total_zeros = size + 1024;
    let whole = total_zeros / MIB;
    let rest = total_zeros % MIB;
    let mut out =
        enc.get_ref()[..enc.get_ref().len() - chunks.iter().map(Vec::len).sum::<usize>()].to_vec();
    out.extend_from_slice(&chunks[0]);
    for _ in 1..whole {
        out.extend_from_slice(&chunks[1]);
    }
    // The remainder, compressed on its own after zeros (any window of zeros is the same).
    let mut tail = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    tail.write_all(&vec![0u8; rest as usize]).unwrap();
    let tail = tail.finish().unwrap();
    out.extend_from_slice(&tail); // a final block: ends the deflate stream
    let mut crc = flate2::Crc::new();
    crc.update(header.as_bytes());
    let mut mib_crc = flate2::Crc::new();
    mib_crc.update(&zeros);
    for _ in 0..whole {
        crc.combine(&mib_crc);
    }
    let mut rest_crc = flate2::Crc::new();
    rest_crc.update(&vec![0u8; rest as usize]);
    crc.combine(&rest_crc);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&((512 + total_zeros) as u32).to_le_bytes());
    out
}

#[tokio::test]
async fn a_one_gib_bomb_is_refused_before_anything_of_it_is_written() {
    let fx = Fixture::new("bomb");
    let bomb = zeros_bomb("plugin.py", (1 << 30) - 1024);
    assert!(
        bomb.len() < 2 << 20,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    // It is a real archive: its entry announces 1 GiB and the first MiB decompresses.
    {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bomb[..]));
        let mut first = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(first.header().size().unwrap(), (1 << 30) - 1024);
        let mut buf = vec![1u8; 1 << 20];
        std::io::Read::read_exact(&mut first, &mut buf).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }
    // The unpacker stops at the entry's header: it reads a few KiB of the ~1 MiB archive.
    struct Counting<'a>(&'a [u8], usize);
    impl std::io::Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = std::io::Read::read(&mut self.0, buf)?;
            self.1 += n;
            Ok(n)
        }
    }
    let target = fx.root.join("direct");
    std::fs::create_dir_all(&target).unwrap();
    let mut source = Counting(&bomb, 0);
    let refused = dtf_plugin_repo::archive::unpack(&mut source, &target, &Limits::default());
    assert!(refused.is_err());
    assert!(
        source.1 <= 64 << 10,
        "read {} bytes of the archive",
        source.1
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written"
    );

    fx.add_raw_artifact("bomb", &bomb, Some(&fx.keys.secret));
    let client = fx.client(&fx.file_url());
    let err = client.install("bomb").await.unwrap_err();
    assert!(matches!(err, RepoError::UnsafeArchive { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("would exceed the cap of 268435456 bytes"),
        "{err}"
    );
    fx.assert_not_installed("bomb");

    // Under a lower cap, many small files stop at the cap too.
    let many: Vec<(String, Vec<u8>)> = (0..64)
        .map(|i| (format!("f{i}"), vec![0u8; 64 << 10]))
        .collect();
    let entries: Vec<Raw<'_>> = many.iter().map(|(p, d)| file(p, d)).collect();
    fx.add_raw_artifact("many", &raw_tar_gz(&entries), Some(&fx.keys.secret));
    let capped = fx.client_with(&fx.file_url(), |b| {
        b.limits(Limits::default().max_unpacked(1 << 20))
    });
    let err = capped.install("many").await.unwrap_err();
    assert!(
        err.to_string().contains("exceed the cap of 1048576 bytes"),
        "{err}"
    );
    fx.assert_not_installed("many");
}

#[tokio::test]
async fn an_entry_count_bomb_stops_at_the_cap() {
    let fx = Fixture::new("count");
    let names: Vec<String> = (0..5000).map(|i| format!("d/{i}")).collect();
    let entries: Vec<Raw<'_>> = names.iter().map(|n| file(n, b"")).collect();
    fx.add_raw_artifact("count", &raw_tar_gz(&entries), Some(&fx.keys.secret));
    let client = fx.client_with(&fx.file_url(), |b| {
        b.limits(Limits::default().max_entries(1000))
    });
    let err = client.install("count").await.unwrap_err();
    assert!(err.to_string().contains("more than 1000 entries"), "{err}");
    fx.assert_not_installed("count");
}

#[tokio::test]
async fn an_incompatible_protocol_is_refused_before_download_naming_both_versions() {
    let fx = Fixture::new("protocol");
    fx.pack(&fx.plugin_src("future", "1.0.0", "protocol = 2\n"));
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    let err = client.install("future").await.unwrap_err();
    assert!(
        matches!(err, RepoError::IncompatibleProtocol { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "install plugin `future` 1.0.0: it speaks plugin protocol version 2, this dtf speaks [1]"
    );
    assert!(!downloaded_an_artifact(&requested(&server).await));
    fx.assert_not_installed("future");
    // search and info say so too.
    let hits = client.search(None).await.unwrap();
    assert!(hits[0].installable.is_none());
    let info = client.info("future").await.unwrap();
    assert!(
        info.versions[0]
            .1
            .as_ref()
            .unwrap()
            .contains("protocol version 2")
    );

    // With an older compatible version listed, that one is chosen.
    fx.pack(&fx.plugin_src("future", "0.9.0", ""));
    let done = client.install("future").await.unwrap();
    assert_eq!(done[0].plugin.version.to_string(), "0.9.0");
    // Asking for the incompatible version explicitly is refused, before download.
    let before = requested(&server).await.len();
    let err = client.install("future@1.0.0").await.unwrap_err();
    assert!(
        matches!(err, RepoError::IncompatibleProtocol { .. }),
        "{err}"
    );
    let after = requested(&server).await;
    assert!(!downloaded_an_artifact(&after[before..]));
}

#[tokio::test]
async fn unmet_requires_are_refused_before_download_and_met_ones_are_installed_first() {
    let fx = Fixture::new("requires");
    fx.pack(&fx.plugin_src("app", "0.1.0", "requires = [\"base\"]\n"));
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    let err = client.install("app").await.unwrap_err();
    assert!(matches!(err, RepoError::MissingRequirement { .. }), "{err}");
    assert!(err.to_string().contains("requires `base`"), "{err}");
    assert!(!downloaded_an_artifact(&requested(&server).await));
    fx.assert_not_installed("app");

    // Put in the plugin directory by hand at a matching version: satisfied, left alone.
    let hand = fx.plugin_src("base", "0.1.0", "");
    std::fs::create_dir_all(fx.plugin_dir()).unwrap();
    std::fs::rename(&hand, fx.plugin_dir().join("base")).unwrap();
    assert_eq!(client.install("app").await.unwrap().len(), 1);
    client.remove("app").unwrap();
    std::fs::remove_dir_all(fx.plugin_dir().join("base")).unwrap();

    // Built into this program: satisfied without an install.
    let provided = fx.client_with(&server.uri(), |b| b.provided(["base"]));
    assert_eq!(provided.install("app").await.unwrap().len(), 1);
    provided.remove("app").unwrap();
    // ...and never installed from an index under the built-in's name (it could not load next
    // to it, and hot reload would have taken it for the built-in).
    fx.pack(&fx.plugin_src("base", "0.2.0", ""));
    let err = provided.install("base").await.unwrap_err();
    assert!(matches!(err, RepoError::BuiltIn { .. }), "{err}");
    assert!(
        err.to_string().contains("a built-in plugin has that name"),
        "{err}"
    );
    fx.assert_not_installed("base");

    // In the index: installed first.
    fx.pack(&fx.plugin_src("base", "0.3.0", ""));
    let done = client.install("app").await.unwrap();
    let names: Vec<&str> = done.iter().map(|d| d.plugin.name.as_str()).collect();
    assert_eq!(names, ["base", "app"]);
    let err = client.remove("base").unwrap_err();
    assert!(matches!(err, RepoError::Required { .. }), "{err}");
    assert!(err.to_string().contains("app require it"), "{err}");

    // A version range nothing satisfies.
    fx.edit_index(|i| {
        let app = i.plugins.iter_mut().find(|e| e.name == "app").unwrap();
        app.requires
            .insert("base".into(), semver::VersionReq::parse("^1.0").unwrap());
        app.version = semver::Version::new(0, 2, 0);
    });
    let err = client.update(Some("app")).await.unwrap_err();
    assert!(err.to_string().contains("requires `base` ^1.0"), "{err}");
}

#[tokio::test]
async fn offline_search_and_info_use_the_cache_and_install_fails_clearly() {
    let fx = Fixture::new("offline");
    fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    let server = serve(&fx.index_dir()).await;
    let uri = server.uri();
    let client = fx.client(&uri);
    assert_eq!(
        client.search(None).await.unwrap().len(),
        1,
        "online: fetched and cached"
    );
    let address = *server.address();
    drop(server); // the index goes away
    let mut closed = false;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(address).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the server stopped listening");

    let hits = client.search(Some("echo")).await.unwrap();
    assert_eq!(hits.len(), 1);
    let info = client.info("echo").await.unwrap();
    assert!(
        info.stale.is_some(),
        "info says the index came from the cache"
    );
    let err = client.install("echo").await.unwrap_err();
    assert!(matches!(err, RepoError::Fetch { .. }), "{err}");
    assert!(
        err.to_string().contains("artifacts/echo-0.1.0.tar.gz"),
        "{err}"
    );
    fx.assert_not_installed("echo");

    // Never fetched and unreachable: a clear error, no cached copy.
    let fresh = RepoClient::builder()
        .index(uri)
        .plugin_dir(fx.plugin_dir())
        .cache_dir(fx.root.join("other-cache"))
        .build()
        .unwrap();
    let err = fresh.search(None).await.unwrap_err();
    assert!(matches!(err, RepoError::Offline { .. }), "{err}");
    assert!(err.to_string().contains("no cached copy"), "{err}");
}

#[tokio::test]
async fn refuses_plain_http_off_loopback_and_unknown_names_with_a_suggestion() {
    let err = RepoClient::builder()
        .index("http://plugins.example.org/")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    let fx = Fixture::new("names");
    fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    let err = fx.client(&fx.file_url()).install("ecoh").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "find plugin `ecoh`: no index lists it (did you mean `echo`?)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_manager_with_hot_reload_starts_an_installed_plugin_within_two_seconds() {
    let fx = Fixture::new("reload");
    fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    std::fs::create_dir_all(fx.plugin_dir()).unwrap();
    let manager = PluginManager::builder().spawn().await.unwrap();
    let reloader =
        Reloader::new(vec![fx.plugin_dir()]).spawn(manager.clone(), Duration::from_millis(200));

    client.install("echo").await.unwrap();
    let installed = tokio::time::Instant::now();
    let running = wait_for(&manager, "echo", "0.1.0", Duration::from_secs(2)).await;
    assert!(
        running,
        "started within 2 s of the install: {:?}",
        manager.list().await
    );
    assert!(installed.elapsed() <= Duration::from_secs(2));

    fx.pack(&fx.plugin_src("echo", "0.2.0", ""));
    client.update(Some("echo")).await.unwrap();
    assert!(
        wait_for(&manager, "echo", "0.2.0", Duration::from_secs(2)).await,
        "the update replaced it: {:?}",
        manager.list().await
    );

    client.remove("echo").unwrap();
    let gone = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            let list = manager.list().await.unwrap();
            if list.iter().all(|p| p.name != "echo") {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(gone, "the removal unloaded it");
    reloader.abort();
    manager
        .shutdown(dtf_plugin_core::ShutdownReason::Completed)
        .await;
}

/// Polls the manager until `name` runs at `version`, at most `limit`.
async fn wait_for(manager: &PluginManager, name: &str, version: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let list = manager.list().await.unwrap();
        if list
            .iter()
            .any(|p| p.name == name && p.version == version && p.status == PluginStatus::Running)
        {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn protocol_ranges_are_written_by_pack() {
    let fx = Fixture::new("range");
    let entry = pack(
        &fx.plugin_src("wide", "0.1.0", ""),
        &fx.index_dir(),
        &PackOptions::default().protocol(ProtocolRange::new(1, 3)),
    )
    .unwrap();
    assert_eq!(entry.protocol.to_string(), "1..=3");
    let text = std::fs::read_to_string(fx.index_dir().join(INDEX_FILE)).unwrap();
    assert!(text.contains("[[plugin.artifact]]"), "{text}");
    assert!(entry.artifacts[0].minisig.is_none());
}

/// Runs `dtf-coordinator plugin ARGS` in-process; returns the exit code and the output.
async fn cli(args: &[&str]) -> (i32, String) {
    let mut out = Vec::new();
    let code = dtf_examples::plugin_cli::run(args.iter().map(|a| (*a).to_owned()), &mut out).await;
    (code, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn the_plugin_subcommand_reads_the_registry_table_and_flags_override_it() {
    let fx = Fixture::new("cli");
    let root = fx.root.display().to_string();
    let (code, text) = cli(&["keygen", "--out", &format!("{root}/author")]).await;
    assert_eq!(code, 0, "{text}");
    let src = fx.plugin_src("echo", "0.1.0", "");
    let (code, text) = cli(&[
        "pack",
        src.to_str().unwrap(),
        "--key",
        &format!("{root}/author/dtf-plugin.key"),
        "--index",
        &format!("{root}/index"),
        "--trusted-key",
        &format!("{root}/author/dtf-plugin.pub"),
        "--license",
        "MIT",
    ])
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("the signature verifies with the trusted key"),
        "{text}"
    );
    // Re-packed with changes, signed by a key the trusted key does not match: refused before
    // the index directory is touched (before, the artifact and `index.toml` were already
    // rewritten when the check failed).
    let index_toml = fx.root.join("index").join(dtf_plugin_repo::INDEX_FILE);
    let artifact = fx.root.join("index/artifacts/echo-0.1.0.tar.gz");
    let before = (
        std::fs::read(&index_toml).unwrap(),
        std::fs::read(&artifact).unwrap(),
    );
    std::fs::write(src.join("extra.txt"), "changed").unwrap();
    let (code, text) = cli(&[
        "pack",
        src.to_str().unwrap(),
        "--key",
        fx.keys.secret.to_str().unwrap(),
        "--index",
        &format!("{root}/index"),
        "--trusted-key",
        &format!("{root}/author/dtf-plugin.pub"),
    ])
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not a trusted key"), "{text}");
    let after = (
        std::fs::read(&index_toml).unwrap(),
        std::fs::read(&artifact).unwrap(),
    );
    assert!(before == after, "the index directory changed");
    std::fs::remove_file(src.join("extra.txt")).unwrap();
    // The configuration names the index, the author's key and the plugin directory.
    let config = fx.root.join("dtf.toml");
    std::fs::write(
        &config,
        "plugin_dirs = [\"plugins\"]\n[registry]\nindexes = [\"index\"]\ntrusted_keys = [\"author/dtf-plugin.pub\"]\ncache_dir = \"cache\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (code, text) = cli(&["search", "echo", "--config", config]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("echo  0.1.0"), "{text}");
    let (code, text) = cli(&["info", "echo", "--config", config]).await;
    assert!(
        code == 0 && text.contains("license: MIT") && text.contains("ok for this build"),
        "{text}"
    );
    let (code, text) = cli(&["install", "echo", "--config", config]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.starts_with("installed echo 0.1.0 (signed by "),
        "{text}"
    );
    assert!(fx.root.join("plugins/echo/plugin.toml").is_file());
    let (code, text) = cli(&["list", "--config", config]).await;
    assert!(
        code == 0 && text.starts_with("echo  0.1.0  signed by"),
        "{text}"
    );

    // --trusted-key replaces the configured keys: the fixture's key did not sign it.
    let (code, text) = cli(&[
        "install",
        "echo",
        "--config",
        config,
        "--plugin-dir",
        &format!("{root}/other-plugins"),
        "--trusted-key",
        fx.keys.public.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not a trusted key"), "{text}");
    assert!(!fx.root.join("other-plugins/echo").exists());

    let (code, text) = cli(&["remove", "echo", "--config", config]).await;
    assert!(
        code == 0 && text.starts_with("removed echo 0.1.0"),
        "{text}"
    );
    let (code, text) = cli(&["instal", "echo"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unrecognized subcommand"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_coordinator_starts_a_plugin_installed_during_the_run_within_two_seconds() {
    use dtf_examples::{Coordinator, CoordinatorOptions, TaskDef};
    use dtf_plugin_core::testing::RecordingPlugin;
    use dtf_plugin_core::{EventKind, Hook, HookSet};

    let fx = Fixture::new("coordinator");
    let src = fx.plugin_src("echo", "0.1.0", "");
    let manifest = src.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "hooks = [\"task_created\"]",
            "hooks = [\"task_started\", \"task_completed\"]",
        ),
    )
    .unwrap();
    fx.pack(&src);
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    std::fs::create_dir_all(fx.plugin_dir()).unwrap();

    // One worker runs 40 tasks of 100 ms one after the other: task events keep coming for
    // about 4 s, whenever the plugin starts.
    let mut options = CoordinatorOptions::default();
    options.tasks = (0..40)
        .map(|i| TaskDef::shell(format!("t{i}"), "sleep 0.1"))
        .collect();
    options.workers = 1;
    options.progress = false;
    options.run_timeout = Some(Duration::from_secs(30));
    options.plugin_dirs = vec![fx.plugin_dir()];
    let (rec, recording) =
        RecordingPlugin::spec("recording", HookSet::of(&[Hook::TaskStarted, Hook::Custom]));
    let run = tokio::spawn(Coordinator::new(options).unwrap().with_plugin(rec).run());

    // Once the run is under way, install the plugin into its plugin directory.
    let mut started = false;
    for _ in 0..1000 {
        if !recording.events().is_empty() {
            started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started, "the run started");
    client.install("echo").await.unwrap();
    let installed = std::time::SystemTime::now();

    let report = run.await.unwrap().unwrap();
    assert_eq!(report.exit_code(), 0);
    let echoed: Vec<std::time::SystemTime> = recording
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Custom(c) if c.name == "echo.received" => Some(e.meta.time),
            _ => None,
        })
        .collect();
    let first = *echoed
        .first()
        .expect("the installed plugin handled task events");
    let after = first.duration_since(installed).unwrap_or_default();
    assert!(
        after <= Duration::from_secs(2),
        "the plugin's first event came {after:?} after the install"
    );
    let echo = report.shutdown.plugins.iter().find(|p| p.name == "echo");
    assert!(
        echo.is_some_and(|p| p.stats.delivered > 0),
        "{:?}",
        report.shutdown.plugins
    );
}

/// A minimal HTTPS static file server on 127.0.0.1 (one request per connection) with a
/// self-signed certificate; returns its URL and the certificate (PEM).
async fn serve_https(dir: PathBuf) -> (String, String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;

    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let dir = dir.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // a client that does not trust the certificate
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let response = match std::fs::read(dir.join(path.trim_start_matches('/'))) {
                    Ok(body) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                    Err(_) => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, cert.pem(), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_over_https_trusting_a_private_ca_and_refuses_an_untrusted_certificate() {
    let fx = Fixture::new("https");
    fx.pack(&fx.plugin_src("echo", "0.1.0", ""));
    let (url, ca, server) = serve_https(fx.index_dir()).await;

    let untrusting = fx.client(&url);
    let err = untrusting.search(None).await.unwrap_err();
    assert!(matches!(err, RepoError::Offline { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let client = fx.client_with(&url, |b| b.root_certificate(ca.clone().into_bytes()));
    let done = client.install("echo").await.unwrap();
    assert_eq!(done[0].plugin.index, url);
    assert!(fx.plugin_dir().join("echo/plugin.toml").is_file());

    // The same from the command line, with the CA in a file.
    let ca_file = fx.root.join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let other = fx.root.join("cli-plugins");
    let (code, text) = cli(&[
        "install",
        "echo",
        "--index",
        &url,
        "--trusted-key",
        fx.keys.public.to_str().unwrap(),
        "--plugin-dir",
        other.to_str().unwrap(),
        "--cache-dir",
        fx.root.join("cli-cache").to_str().unwrap(),
        "--ca-cert",
        ca_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{text}");
    assert!(other.join("echo/plugin.toml").is_file());
    server.abort();
}

/// Without a version asked for, a release is installed, not a newer pre-release (before, the
/// newest version won, so `install` and `update` moved users onto release candidates); a
/// pre-release asked for meets a plain `requires` of another plugin (before, semver's `*`
/// refused it, and installing that plugin replaced the candidate with the older release);
/// and `update` on a pre-release takes a newer pre-release.
#[tokio::test]
async fn releases_win_over_pre_releases_unless_one_is_asked_for() {
    let fx = Fixture::new("pre");
    fx.pack(&fx.plugin_src("foo", "1.4.0", ""));
    fx.pack(&fx.plugin_src("foo", "2.0.0-rc.1", ""));
    fx.pack(&fx.plugin_src("bar", "0.1.0", "requires = [\"foo\"]\n"));
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    let hits = client.search(Some("foo")).await.unwrap();
    assert_eq!(hits[0].installable.as_ref().unwrap().to_string(), "1.4.0");
    let done = client.install("foo").await.unwrap();
    assert_eq!(done[0].plugin.version.to_string(), "1.4.0");
    client.remove("foo").unwrap();

    let done = client.install("foo@2.0.0-rc.1").await.unwrap();
    assert_eq!(done[0].plugin.version.to_string(), "2.0.0-rc.1");
    let done = client.install("bar").await.unwrap();
    let names: Vec<&str> = done.iter().map(|d| d.plugin.name.as_str()).collect();
    assert_eq!(names, ["bar"], "foo is left as it is");

    fx.pack(&fx.plugin_src("foo", "2.0.0-rc.2", ""));
    let done = client.update(Some("foo")).await.unwrap();
    assert_eq!(done[0].plugin.version.to_string(), "2.0.0-rc.2");
}

/// The key that signed an installed plugin is pinned: a version signed by another trusted
/// key (another publisher's plugin of the same name, in an index listed first now) is refused
/// unless the user allows the change. Before, any trusted key's newer version replaced it.
#[tokio::test]
async fn an_update_signed_by_another_key_is_refused_unless_allowed() {
    let fx = Fixture::new("signer");
    fx.pack(&fx.plugin_src("foo", "1.0.0", ""));
    let server = serve(&fx.index_dir()).await;
    let other = keygen(&fx.root.join("other-key")).unwrap();
    let client = fx.client_with(&server.uri(), |b| b.trusted_key(&other.public));
    client.install("foo").await.unwrap();
    pack(
        &fx.plugin_src("foo", "2.0.0", ""),
        &fx.index_dir(),
        &PackOptions::default().secret_key(&other.secret),
    )
    .unwrap();
    let before = requested(&server).await.len();
    let err = client.update(Some("foo")).await.unwrap_err();
    assert!(matches!(err, RepoError::SignerChanged { .. }), "{err}");
    assert!(!downloaded_an_artifact(&requested(&server).await[before..]));
    let text = err.to_string();
    assert!(
        text.contains(&other.key_id) && text.contains(&fx.keys.key_id),
        "{text}"
    );
    assert!(text.contains("--allow-signer-change foo"), "{text}");
    let allowed = fx.client_with(&server.uri(), |b| {
        b.trusted_key(&other.public).allow_signer_change("foo")
    });
    let done = allowed.update(Some("foo")).await.unwrap();
    assert_eq!(done[0].plugin.version.to_string(), "2.0.0");
    assert_eq!(done[0].plugin.signed_by, other.key_id);
}

/// `update` keeps a plugin within the ranges of the installed plugins that require it (their
/// index entries say which): before, it moved it to the newest version and broke them.
#[tokio::test]
async fn update_keeps_a_plugin_within_what_its_dependents_require() {
    let fx = Fixture::new("ranges");
    fx.pack(&fx.plugin_src("b", "1.2.0", ""));
    fx.pack(&fx.plugin_src("a", "1.0.0", "requires = [\"b\"]\n"));
    fx.edit_index(|i| {
        let a = i.plugins.iter_mut().find(|e| e.name == "a").unwrap();
        a.requires
            .insert("b".into(), semver::VersionReq::parse("^1").unwrap());
    });
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    let done = client.install("a").await.unwrap();
    let names: Vec<&str> = done.iter().map(|d| d.plugin.name.as_str()).collect();
    assert_eq!(names, ["b", "a"]);

    fx.pack(&fx.plugin_src("b", "2.0.0", ""));
    assert!(
        client.update(None).await.unwrap().is_empty(),
        "b 2 breaks a"
    );
    assert!(client.update(Some("b")).await.unwrap().is_empty());
    fx.pack(&fx.plugin_src("b", "1.3.0", ""));
    let done = client.update(None).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (
            done[0].plugin.name.as_str(),
            done[0].plugin.version.to_string()
        ),
        ("b", "1.3.0".to_owned())
    );
}

/// `install` keeps a plugin within what the installed plugins requiring it allow, as `update`
/// does: asked for any version it installs the newest they allow, and a version they do not
/// allow (asked for, or needed by a new plugin) is refused before any download, naming them.
/// Before, `install b@2.0.0` replaced the `b` that `a` needs, and so did installing a plugin
/// that requires `b` ^2.
#[tokio::test]
async fn install_keeps_a_plugin_within_what_its_dependents_require() {
    let fx = Fixture::new("install-held");
    let ranges = |i: &mut Index| {
        for (dependent, range) in [("a", "^1"), ("c", "^2")] {
            for e in i.plugins.iter_mut().filter(|e| e.name == dependent) {
                e.requires
                    .insert("b".into(), semver::VersionReq::parse(range).unwrap());
            }
        }
    };
    fx.pack(&fx.plugin_src("b", "1.2.0", ""));
    fx.pack(&fx.plugin_src("a", "1.0.0", "requires = [\"b\"]\n"));
    fx.edit_index(ranges);
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    client.install("a").await.unwrap();
    fx.pack(&fx.plugin_src("b", "1.3.0", ""));
    fx.pack(&fx.plugin_src("b", "2.0.0", ""));
    fx.pack(&fx.plugin_src("c", "1.0.0", "requires = [\"b\"]\n"));
    fx.edit_index(ranges);

    let done = client.install("b").await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].plugin.version.to_string(),
        "1.3.0",
        "the newest `a` allows"
    );

    let artifacts = |paths: Vec<String>| paths.iter().filter(|p| p.contains("artifacts/")).count();
    let before = artifacts(requested(&server).await);
    for spec in ["b@2.0.0", "c"] {
        let err = client.install(spec).await.unwrap_err();
        assert!(matches!(err, RepoError::HeldBack { .. }), "{spec}: {err}");
        let text = err.to_string();
        assert!(text.contains("`a` 1.0.0 requires ^1"), "{spec}: {text}");
        let b = client.info("b").await.unwrap().installed.unwrap();
        assert_eq!(b.version.to_string(), "1.3.0", "{spec}");
    }
    assert_eq!(
        artifacts(requested(&server).await),
        before,
        "nothing downloaded"
    );
    assert!(client.info("c").await.unwrap().installed.is_none());
}

/// Updating everything, a dependent's new version that needs the next major of what it
/// requires takes both along (dependents are planned first, and what they require is held to
/// the planned version's range, not the installed one's), whatever the names' order.
#[tokio::test]
async fn update_moves_a_dependency_to_the_range_a_dependents_new_version_needs() {
    let fx = Fixture::new("ranges-major");
    let major_ranges = |i: &mut Index| {
        for e in i.plugins.iter_mut().filter(|e| e.name == "zeta") {
            let range = format!("^{}", e.version.major);
            e.requires
                .insert("alpha".into(), semver::VersionReq::parse(&range).unwrap());
        }
    };
    fx.pack(&fx.plugin_src("alpha", "1.2.0", ""));
    fx.pack(&fx.plugin_src("zeta", "1.0.0", "requires = [\"alpha\"]\n"));
    fx.edit_index(major_ranges);
    let server = serve(&fx.index_dir()).await;
    let client = fx.client(&server.uri());
    client.install("zeta").await.unwrap();
    fx.pack(&fx.plugin_src("alpha", "1.3.0", ""));
    fx.pack(&fx.plugin_src("alpha", "2.0.0", ""));
    fx.pack(&fx.plugin_src("zeta", "2.0.0", "requires = [\"alpha\"]\n"));
    fx.edit_index(major_ranges);
    let done = client.update(None).await.unwrap();
    let mut got: Vec<(String, String)> = done
        .iter()
        .map(|d| (d.plugin.name.clone(), d.plugin.version.to_string()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("alpha".to_owned(), "2.0.0".to_owned()),
            ("zeta".to_owned(), "2.0.0".to_owned())
        ]
    );
}

/// A signed plugin is not replaced by an unsigned version of the same name either, even one
/// the user trusts without a signature (a name left in `allow_unsigned` from development),
/// unless the change of signer is allowed.
#[tokio::test]
async fn a_signed_plugin_is_not_replaced_by_an_unsigned_version() {
    let fx = Fixture::new("signer-unsigned");
    fx.pack(&fx.plugin_src("foo", "1.0.0", ""));
    let server = serve(&fx.index_dir()).await;
    fx.client(&server.uri()).install("foo").await.unwrap();
    pack(
        &fx.plugin_src("foo", "2.0.0", ""),
        &fx.index_dir(),
        &PackOptions::default(),
    )
    .unwrap();
    let trusting = fx.client_with(&server.uri(), |b| b.allow_unsigned("foo"));
    let err = trusting.update(Some("foo")).await.unwrap_err();
    assert!(
        matches!(&err, RepoError::SignerChanged { to, .. } if to == "unsigned"),
        "{err}"
    );
    let allowed = fx.client_with(&server.uri(), |b| {
        b.allow_unsigned("foo").allow_signer_change("foo")
    });
    let done = allowed.update(Some("foo")).await.unwrap();
    assert_eq!(done[0].plugin.signed_by, "unsigned");
}
