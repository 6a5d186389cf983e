//! `dtf-coordinator plugin …`: the plugin repository client on the command line, a thin
//! layer over [`dtf_plugin_repo`]. See `docs/plugin-index.md` and
//! `docs/publishing-a-plugin.md`.
//!
//! ```text
//! dtf-coordinator plugin search [TERM]            [--index URL]… [--trusted-key FILE]… [--config dtf.toml]
//! dtf-coordinator plugin info NAME
//! dtf-coordinator plugin list                     [--plugin-dir DIR]
//! dtf-coordinator plugin install NAME[@VERSION]   [--plugin-dir DIR] [--allow-unsigned NAME]…
//! dtf-coordinator plugin update [NAME]            [--plugin-dir DIR]
//! dtf-coordinator plugin remove NAME              [--plugin-dir DIR]
//! dtf-coordinator plugin keygen --out DIR
//! dtf-coordinator plugin pack DIR --key SECRET_KEY_FILE --index INDEX_DIR [--trusted-key PUB]
//! ```
//!
//! `--index` and `--trusted-key` replace `[registry] indexes`/`trusted_keys` of the
//! configuration file given with `--config`; `--plugin-dir` replaces its first
//! `plugin_dirs` entry (default `plugins`). Exit code 0 on success, 1 when the operation
//! failed, 2 for a usage error.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use dtf_plugin_repo::{
    PackOptions, ProtocolRange, RegistrySettings, RepoClient, RepoError, TrustedKey, keygen, pack,
};

/// The environment variable holding the password of a password-protected secret key.
pub const KEY_PASSWORD_ENV: &str = "DTF_PLUGIN_KEY_PASSWORD";

#[derive(Debug, Parser)]
#[command(
    name = "dtf-coordinator plugin",
    bin_name = "dtf-coordinator plugin",
    about = "Search, install, update and remove signed plugins from plugin indexes",
    disable_version_flag = true
)]
struct PluginCli {
    #[command(subcommand)]
    command: Command,
}

/// Options every client command takes.
#[derive(Debug, Args)]
struct Common {
    /// An index: https://, file://, http:// on loopback, or a directory. Repeatable;
    /// replaces `[registry] indexes`.
    #[arg(long = "index", value_name = "URL")]
    indexes: Vec<String>,
    /// A trusted public key (minisign). Repeatable; replaces `[registry] trusted_keys`.
    #[arg(long = "trusted-key", value_name = "FILE")]
    trusted_keys: Vec<PathBuf>,
    /// The configuration file with `[registry]` and `plugin_dirs`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where fetched indexes are cached.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Also trust this CA certificate (PEM) for https:// indexes. Repeatable; replaces
    /// `[registry] ca_certificates`.
    #[arg(long = "ca-cert", value_name = "FILE")]
    ca_certs: Vec<PathBuf>,
}

/// Options of the commands that touch a plugin directory.
#[derive(Debug, Args)]
struct Target {
    /// The plugin directory (default: the first of `plugin_dirs`, else `plugins`).
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,
    /// Trust this plugin without a signature. Repeatable.
    #[arg(long = "allow-unsigned", value_name = "NAME")]
    allow_unsigned: Vec<String>,
    /// Let this plugin be replaced by a version signed by another trusted key than the
    /// installed one's. Repeatable.
    #[arg(long = "allow-signer-change", value_name = "NAME")]
    allow_signer_change: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plugins whose name or description contains TERM (all without one).
    Search {
        /// What to look for (case-insensitive).
        term: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every version of a plugin and whether this build can install it.
    Info {
        /// The plugin.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// The plugins installed in the plugin directory.
    List {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
    /// Download, check and install a plugin (and what it requires).
    Install {
        /// NAME, NAME@VERSION or NAME@RANGE (`echo@^0.2`).
        spec: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
    /// Update a plugin (or all) to the newest version this build can install.
    Update {
        /// The plugin (default: every installed plugin).
        name: Option<String>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
    /// Remove an installed plugin.
    Remove {
        /// The plugin.
        name: String,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        target: Target,
    },
    /// Create a signing key pair (dtf-plugin.pub, dtf-plugin.key) in DIR.
    Keygen {
        /// The directory to write the keys to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Build a plugin's artifact, sign it and add it to an index directory.
    Pack {
        /// The plugin's folder (with plugin.toml).
        dir: PathBuf,
        /// The secret key to sign with (password from DTF_PLUGIN_KEY_PASSWORD if it has one).
        #[arg(
            long,
            value_name = "SECRET_KEY_FILE",
            required_unless_present = "unsigned"
        )]
        key: Option<PathBuf>,
        /// Publish without a signature (users must trust it explicitly).
        #[arg(long, conflicts_with = "key")]
        unsigned: bool,
        /// The index directory (index.toml and artifacts/ are written there).
        #[arg(long, value_name = "INDEX_DIR")]
        index: PathBuf,
        /// Check the new signature against this public key.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
        /// The OS the artifact runs on (`linux`, `macos`, `windows`, or `any`).
        #[arg(long, default_value = "any")]
        os: String,
        /// The architecture (`x86_64`, `aarch64`, or `any`).
        #[arg(long, default_value = "any")]
        arch: String,
        /// The plugin's homepage.
        #[arg(long)]
        homepage: Option<String>,
        /// Its license (SPDX).
        #[arg(long)]
        license: Option<String>,
        /// The highest protocol version it speaks (default: its manifest's `protocol`).
        #[arg(long, value_name = "N")]
        protocol_max: Option<u32>,
    },
}

/// Runs `dtf-coordinator plugin ARGS…` (`args` without `plugin`), writing everything to
/// `out` (errors last); returns the exit code. See [`run_split`].
pub async fn run(args: impl IntoIterator<Item = String>, out: &mut (dyn Write + Send)) -> i32 {
    let mut err = Vec::new();
    let code = run_split(args, out, &mut err).await;
    let _ = out.write_all(&err);
    code
}

/// Runs `dtf-coordinator plugin ARGS…` (`args` without `plugin`): results and `--help` to
/// `out`, usage errors (exit code 2) and failures (exit code 1) to `err`; returns the exit
/// code.
pub async fn run_split(
    args: impl IntoIterator<Item = String>,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> i32 {
    let argv = std::iter::once("plugin".to_owned()).chain(args);
    let cli = match PluginCli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            return if e.use_stderr() {
                let _ = write!(err, "{}", e.render());
                2
            } else {
                let _ = write!(out, "{}", e.render());
                0
            };
        }
    };
    match execute(cli.command, out).await {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "error: failed to {e}");
            1
        }
    }
}

fn client(common: Common, target: Option<Target>) -> Result<RepoClient, RepoError> {
    let mut settings = match &common.config {
        Some(path) => RegistrySettings::load(path)?,
        None => RegistrySettings::from_env()?,
    };
    if !common.indexes.is_empty() {
        settings.indexes = common.indexes;
    }
    if !common.trusted_keys.is_empty() {
        settings.trusted_keys = common.trusted_keys;
    }
    if !common.ca_certs.is_empty() {
        settings.ca_certificates = common.ca_certs;
    }
    let mut builder = RepoClient::builder();
    if let Some(target) = target {
        if let Some(dir) = target.plugin_dir {
            builder = builder.plugin_dir(dir);
        }
        for name in target.allow_unsigned {
            builder = builder.allow_unsigned(name);
        }
        for name in target.allow_signer_change {
            builder = builder.allow_signer_change(name);
        }
    }
    if let Some(dir) = common.cache_dir {
        builder = builder.cache_dir(dir);
    }
    // Built-in plugins satisfy `requires` without an install.
    let registry = crate::plugin_registry();
    builder
        .provided(registry.names().chain([
            dtf_scheduler::SchedulingCoordinator::NAME,
            crate::ShellExecutor::NAME,
        ]))
        .settings(&settings)
        .build()
}

async fn execute(command: Command, out: &mut (dyn Write + Send)) -> Result<(), RepoError> {
    let mut w = |s: String| {
        let _ = out.write_all(s.as_bytes());
    };
    match command {
        Command::Search { term, common } => {
            let hits = client(common, None)?.search(term.as_deref()).await?;
            if hits.is_empty() {
                w("no plugin found\n".to_owned());
            }
            let width = hits.iter().map(|h| h.name.len()).max().unwrap_or(4).max(4);
            for h in hits {
                let state = match (&h.installed, &h.installable) {
                    (Some(v), _) => format!("installed {v}"),
                    (None, Some(v)) if *v == h.version => String::new(),
                    (None, Some(v)) => format!("installable: {v}"),
                    (None, None) => "not installable by this build".to_owned(),
                };
                w(format!(
                    "{:width$}  {:10}  {}{}\n",
                    h.name,
                    h.version.to_string(),
                    h.description,
                    bracket(&state)
                ));
            }
        }
        Command::Info { name, common } => {
            let info = client(common, None)?.info(&name).await?;
            w(format!("{}  (index {})\n", info.name, info.index));
            if let Some(reason) = &info.stale {
                w(format!("  from the cached index: {reason}\n"));
            }
            match &info.installed {
                Some(l) => w(format!(
                    "  installed: {} (signed by {})\n",
                    l.version, l.signed_by
                )),
                None => w("  installed: no\n".to_owned()),
            }
            for (e, why) in &info.versions {
                w(format!(
                    "  {}  protocol {}  {}\n",
                    e.version,
                    e.protocol,
                    why.as_deref()
                        .map_or("ok for this build".to_owned(), |r| format!(
                            "NOT installable: {r}"
                        ))
                ));
                if !e.description.is_empty() {
                    w(format!("      {}\n", e.description));
                }
                if let Some(h) = &e.homepage {
                    w(format!("      homepage: {h}\n"));
                }
                if let Some(l) = &e.license {
                    w(format!("      license: {l}\n"));
                }
                if !e.requires.is_empty() {
                    let r: Vec<String> =
                        e.requires.iter().map(|(n, v)| format!("{n} {v}")).collect();
                    w(format!("      requires: {}\n", r.join(", ")));
                }
                let p: Vec<String> = e
                    .artifacts
                    .iter()
                    .map(|a| {
                        format!(
                            "{}{}",
                            a.platform(),
                            if a.minisig.is_some() {
                                ""
                            } else {
                                " (unsigned)"
                            }
                        )
                    })
                    .collect();
                w(format!("      platforms: {}\n", p.join(", ")));
            }
        }
        Command::List { common, target } => {
            let c = client(common, Some(target))?;
            let list = c.list()?;
            if list.is_empty() {
                w(format!(
                    "no plugin installed in {}\n",
                    c.plugin_dir().display()
                ));
            }
            for p in list {
                w(format!(
                    "{}  {}  signed by {}  from {}\n",
                    p.name, p.version, p.signed_by, p.index
                ));
            }
        }
        Command::Install {
            spec,
            common,
            target,
        } => {
            let done = client(common, Some(target))?.install(&spec).await?;
            if done.is_empty() {
                w(format!("{spec} is installed already\n"));
            }
            report(&mut w, &done);
        }
        Command::Update {
            name,
            common,
            target,
        } => {
            let done = client(common, Some(target))?
                .update(name.as_deref())
                .await?;
            if done.is_empty() {
                w("everything is up to date\n".to_owned());
            }
            report(&mut w, &done);
        }
        Command::Remove {
            name,
            common,
            target,
        } => {
            let c = client(common, Some(target))?;
            let removed = c.remove(&name)?;
            w(format!(
                "removed {} {} from {}\n",
                removed.name,
                removed.version,
                c.plugin_dir().display()
            ));
        }
        Command::Keygen { out: dir } => {
            let keys = keygen(&dir)?;
            w(format!(
                "key id {}\npublic key (give it to users): {}\nsecret key (keep it secret): {}\n",
                keys.key_id,
                keys.public.display(),
                keys.secret.display()
            ));
        }
        Command::Pack {
            dir,
            key,
            unsigned: _,
            index,
            trusted_keys,
            os,
            arch,
            homepage,
            license,
            protocol_max,
        } => {
            let mut options = PackOptions::default().platform(os, arch);
            if let Some(k) = key {
                options = options.secret_key(k);
            }
            if let Ok(p) = std::env::var(KEY_PASSWORD_ENV) {
                options = options.password(p);
            }
            if let Some(h) = homepage {
                options = options.homepage(h);
            }
            if let Some(l) = license {
                options = options.license(l);
            }
            if let Some(max) = protocol_max {
                let min = manifest_protocol(&dir).unwrap_or(max);
                options = options.protocol(ProtocolRange::new(min.min(max), max));
            }
            // Checked before the index directory is touched: a wrong key in CI leaves the
            // published index and artifacts as they were.
            let keys = trusted_keys
                .iter()
                .map(|p| TrustedKey::load(p))
                .collect::<Result<Vec<_>, _>>()?;
            let verified = !keys.is_empty();
            let entry = pack(&dir, &index, &options.verify_with(keys))?;
            let artifact = &entry.artifacts[0];
            w(format!(
                "packed {} {} for {} into {}\n  size {}  sha256 {}\n",
                entry.name,
                entry.version,
                artifact.platform(),
                index.join(&artifact.url).display(),
                artifact.size,
                artifact.sha256
            ));
            match &artifact.minisig {
                Some(sig) => {
                    w(format!(
                        "  signed by key {}\n",
                        dtf_plugin_repo::signer_id(sig).unwrap_or_default()
                    ));
                    if verified {
                        w("  the signature verifies with the trusted key\n".to_owned());
                    }
                }
                None => w("  UNSIGNED: users must trust it with --allow-unsigned\n".to_owned()),
            }
        }
    }
    Ok(())
}

fn bracket(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("  [{s}]")
    }
}

fn report(w: &mut impl FnMut(String), done: &[dtf_plugin_repo::Installed]) {
    for d in done {
        let p = &d.plugin;
        match &d.previous {
            Some(prev) => w(format!(
                "updated {} {prev} -> {} (signed by {})\n",
                p.name, p.version, p.signed_by
            )),
            None => w(format!(
                "installed {} {} (signed by {})\n",
                p.name, p.version, p.signed_by
            )),
        }
    }
}

/// The `protocol` of `dir/plugin.toml`, if it can be read.
fn manifest_protocol(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("plugin.toml")).ok()?;
    let value: toml::Table = toml::from_str(&text).ok()?;
    value.get("protocol")?.as_integer()?.try_into().ok()
}
