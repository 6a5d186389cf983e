//! Configuration files: one TOML file (`dtf.toml`) for the manager's defaults, the plugin
//! directories and each plugin's `enabled` flag and settings, with environment and
//! command-line overrides. Feature `config`.
//!
//! Precedence, highest first: command-line overrides > environment variables > the file >
//! built-in defaults. Every problem of a file is reported at once ([`ConfigErrors`]), each
//! naming the key path, the file, line and column, and the closest valid key. `${VAR}` in a
//! string reads the environment; such values, and the values of secret-named keys
//! ([`is_secret_key`]), are redacted wherever the configuration is printed.
//!
//! ```
//! use dtf_plugin_core::config::ConfigLoader;
//!
//! let config = ConfigLoader::new()
//!     .source("dtf.toml", "[manager]\nqueue_capacity = 100\nhandler_timeout = \"5s\"\n")
//!     .env_vars([("DTF_MANAGER__QUEUE_CAPACITY".to_owned(), "200".to_owned())])
//!     .env_prefix("DTF_")
//!     .cli_override("manager.dead_letter_capacity=16")
//!     .load()?;
//! let m = config.manager_config();
//! assert_eq!(m.queue_capacity, 200); // the environment beats the file
//! assert_eq!(m.handler_timeout, std::time::Duration::from_secs(5));
//! assert_eq!(m.dead_letter_capacity, 16);
//!
//! let err = ConfigLoader::new()
//!     .source("dtf.toml", "[manager]\nqueue_capacty = 100\n")
//!     .load()
//!     .unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "dtf.toml:2:1: manager.queue_capacty: unknown key `queue_capacty` (did you mean `queue_capacity`?)"
//! );
//! # Ok::<(), dtf_plugin_core::config::ConfigErrors>(())
//! ```
//!
//! The keys, their defaults and the override syntax are in `docs/configuration.md`.

mod schema;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::DeTable;

use crate::manager::{ManagerConfig, PluginManagerBuilder, PluginSpec};
use crate::plugin::PluginConfig;
use crate::registry::{PluginRegistry, RegistryError, did_you_mean};
use schema::{
    CLUSTER_KEYS, PluginSection, REGISTRY_KEYS, Reader, TOP_KEYS, UI_KEYS, format_duration,
};
pub use tree::Origin;
use tree::{FileReader, Node, Positions, Value, set_path};

#[cfg(feature = "external")]
pub(crate) use schema::parse_duration;

/// The origin of byte `offset` of `text`, read from `path`.
#[cfg_attr(
    not(feature = "external"),
    expect(dead_code, reason = "used by manifests")
)]
pub(crate) fn file_position(text: &str, path: &Path, offset: usize) -> Origin {
    Positions::new(text, path).origin(offset)
}

/// What kind of problem a [`ConfigIssue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IssueKind {
    /// The file could not be read.
    Io,
    /// The file is not valid TOML (including a key or table defined twice).
    Syntax,
    /// A key that does not exist at that place.
    UnknownKey,
    /// A value of the wrong type.
    WrongType,
    /// A value of the right type that is not allowed.
    InvalidValue,
    /// `${VAR}` names an unset environment variable.
    MissingEnv,
    /// A plugin name that no registered plugin has.
    UnknownPlugin,
    /// A plugin's settings do not fit its configuration type.
    Settings,
    /// `after`/`requires` cannot be satisfied (missing requirement, cycle).
    Dependency,
}

/// One problem in a configuration: where, which key, what, and a suggestion.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigIssue {
    /// The kind of problem.
    pub kind: IssueKind,
    /// Dotted key path (`plugins.slack.settings.retries`); empty for syntax errors.
    pub key: String,
    /// Where the offending key or value is.
    pub origin: Origin,
    /// What is wrong. Never contains a value of a secret key.
    pub message: String,
    /// The closest valid key or value, when one is close.
    pub suggestion: Option<String>,
}

impl ConfigIssue {
    /// An issue of `kind` at `key`, found at `origin` (for callers that check more than the
    /// loader does, such as a coordinator checking that directories exist).
    pub fn new(kind: IssueKind, key: &str, origin: Origin, message: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.to_owned(),
            origin,
            message: message.into(),
            suggestion: None,
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.origin)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// Every problem found in a configuration; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct ConfigErrors {
    /// The problems, in file order (then environment, command line, plugins).
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// Errors made of `issues` (for a caller that collected some itself).
    pub fn new(issues: Vec<ConfigIssue>) -> Self {
        Self { issues }
    }

    fn check(issues: Vec<ConfigIssue>) -> Result<(), Self> {
        if issues.is_empty() {
            Ok(())
        } else {
            Err(Self { issues })
        }
    }
}

/// Whether a key's value is a secret by its name (`token`, `password`, `secret`,
/// `webhook_url`, `api_key`, `headers`, …): such values are printed as `"***"` (a table's
/// values, at any depth).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    // Whole keys that hold a secret in dtf's plugins: the task reporter's `endpoint` and the
    // webhook channel's `url` carry credentials in their path or query, and the webhook
    // channel's `headers` are credentials under any name (`X-Functions-Key`, `Cookie`).
    if matches!(k.as_str(), "url" | "endpoint" | "headers") {
        return true;
    }
    [
        "token",
        "password",
        "passwd",
        "secret",
        "webhook",
        "api_key",
        "apikey",
        "credential",
        "private_key",
        "authorization",
        "api-key",
        "auth",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Builds a [`Config`] from a file, the environment and command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    text: Option<(PathBuf, String)>,
    env_prefix: Option<String>,
    env: Option<BTreeMap<String, String>>,
    cli: Vec<String>,
}

impl ConfigLoader {
    /// A loader with no file, no environment overrides and no command-line overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the configuration from the TOML file at `path`.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Reads the configuration from `text`, reporting positions as `name:line:column`
    /// (instead of [`file`](Self::file)).
    pub fn source(mut self, name: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        self.text = Some((name.into(), text.into()));
        self
    }

    /// Turns on environment overrides: `<PREFIX>MANAGER__QUEUE_CAPACITY=100` sets
    /// `manager.queue_capacity` (`__` separates keys, names are lowercased). Variables whose
    /// first key is not a top-level section (`manager`, `plugin_dirs`, `plugins`, `registry`,
    /// `ui`, `cluster`) are ignored.
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.env_prefix = Some(prefix.into());
        self
    }

    /// Uses `vars` instead of the process environment, for `${VAR}` and for overrides
    /// (tests, or an embedding application with its own environment).
    pub fn env_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = Some(vars.into_iter().collect());
        self
    }

    /// Adds a command-line override, `dotted.key=value`. The value is TOML when it parses
    /// (`false`, `10`, `["a"]`, `"text"`), otherwise taken as a string. Later overrides of the
    /// same key win.
    pub fn cli_override(mut self, arg: impl Into<String>) -> Self {
        self.cli.push(arg.into());
        self
    }

    /// Adds several command-line overrides.
    pub fn cli_overrides(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.cli.extend(args.into_iter().map(Into::into));
        self
    }

    /// Reads, merges and checks everything except what needs the plugins (names, settings,
    /// dependencies: see [`Config::validate`]).
    ///
    /// # Errors
    ///
    /// Every problem found, together.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        let (config, issues) = self.load_with_issues()?;
        ConfigErrors::check(issues)?;
        Ok(config)
    }

    /// Like [`load`](Self::load), but once the file parses it returns the configuration even
    /// when some values are wrong (those keep their defaults), together with every problem
    /// found, so a caller can add the registry's checks ([`Config::problems`]) and report
    /// everything at once. [`check`] does that.
    ///
    /// # Errors
    ///
    /// Syntax errors of the file (nothing else can be read then), every one of them.
    pub fn load_with_issues(&self) -> Result<(Config, Vec<ConfigIssue>), ConfigErrors> {
        let env = self
            .env
            .clone()
            .unwrap_or_else(|| std::env::vars().collect());
        let mut issues = Vec::new();
        let mut root = defaults_tree(&ManagerConfig::default());
        let mut file_name = None;
        let mut env_vars = BTreeSet::new();

        let text = match (&self.text, &self.file) {
            (Some((name, text)), _) => Some((name.clone(), text.clone())),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(text) => Some((path.clone(), text)),
                Err(e) => {
                    issues.push(ConfigIssue::new(
                        IssueKind::Io,
                        "",
                        file_origin(path),
                        format!("cannot read the file: {e}"),
                    ));
                    None
                }
            },
            (None, None) => None,
        };
        if let Some((path, text)) = &text {
            file_name = Some(path.clone());
            let pos = Positions::new(text, path);
            let (table, errors) = DeTable::parse_recoverable(text);
            if !errors.is_empty() {
                for e in errors {
                    let origin = e
                        .span()
                        .map_or_else(|| file_origin(path), |s| pos.origin(s.start));
                    let message = e.message().trim().to_owned();
                    issues.push(ConfigIssue::new(IssueKind::Syntax, "", origin, message));
                }
                return Err(ConfigErrors { issues });
            }
            let mut reader = FileReader {
                pos: Positions::new(text, path),
                env: &env,
                issues: &mut issues,
                env_vars: BTreeSet::new(),
            };
            let file_tree = reader.table(table.get_ref(), "", pos.origin(0));
            env_vars = std::mem::take(&mut reader.env_vars);
            // Unknown top-level keys are checked here, where the file's positions are known.
            if let Value::Table(t) = &file_tree.value {
                Reader {
                    issues: &mut issues,
                }
                .unknown_keys(t, "", TOP_KEYS);
            }
            merge(&mut root, file_tree);
        }

        if let Some(prefix) = &self.env_prefix {
            for (var, value) in &env {
                let Some(rest) = var.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
                if !path.first().is_some_and(|k| TOP_KEYS.contains(&k.as_str())) {
                    tracing::debug!(variable = %var, "environment variable ignored: not a configuration key");
                    continue;
                }
                let node = tree::parse_override(value, Origin::Env(var.clone()));
                if let Err(message) = set_path(&mut root, &path, node) {
                    issues.push(ConfigIssue::new(
                        IssueKind::InvalidValue,
                        &path.join("."),
                        Origin::Env(var.clone()),
                        message,
                    ));
                }
            }
        }

        for (i, arg) in self.cli.iter().enumerate() {
            let Some((key, value)) = arg.split_once('=') else {
                // Not echoed: without `=` there is no telling a key from a pasted secret.
                issues.push(ConfigIssue::new(
                    IssueKind::InvalidValue,
                    "",
                    Origin::Cli(format!("argument {}", i + 1)),
                    "expected `key=value` (the argument is not shown: it could hold a secret)",
                ));
                continue;
            };
            let key = key.trim();
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let at = Origin::Cli(key.to_owned());
            if !TOP_KEYS.contains(&path[0].as_str()) {
                let mut issue = ConfigIssue::new(
                    IssueKind::UnknownKey,
                    key,
                    at,
                    format!("unknown key `{}`", path[0]),
                );
                issue.suggestion =
                    did_you_mean(&path[0], TOP_KEYS.iter().copied()).map(str::to_owned);
                issues.push(issue);
                continue;
            }
            let node = tree::parse_override(value, at.clone());
            if let Err(message) = set_path(&mut root, &path, node) {
                issues.push(ConfigIssue::new(IssueKind::InvalidValue, key, at, message));
            }
        }

        let Value::Table(top) = &root.value else {
            return Err(ConfigErrors { issues });
        };
        let mut reader = Reader {
            issues: &mut issues,
        };
        let manager = reader.manager(top.get("manager"));
        let plugin_dirs = reader.plugin_dirs(top.get("plugin_dirs"));
        let plugins = reader.plugins(top.get("plugins"));
        if let Some(registry) = top
            .get("registry")
            .and_then(|n| reader.table(n, "registry"))
        {
            reader.unknown_keys(registry, "registry", REGISTRY_KEYS);
        }
        if let Some(ui) = top.get("ui").and_then(|n| reader.table(n, "ui")) {
            reader.unknown_keys(ui, "ui", UI_KEYS);
        }
        if let Some(cluster) = top.get("cluster").and_then(|n| reader.table(n, "cluster")) {
            reader.unknown_keys(cluster, "cluster", CLUSTER_KEYS);
        }
        issues.sort_by_key(|a| order_key(&a.origin));
        issues.dedup();
        Ok((
            Config {
                tree: root,
                manager,
                plugin_dirs,
                plugins,
                file: file_name,
                env_vars,
            },
            issues,
        ))
    }
}

fn file_origin(path: &Path) -> Origin {
    Origin::File {
        path: Arc::from(path),
        line: 0,
        column: 0,
    }
}

/// File problems first, by position; then environment; then command line.
fn order_key(o: &Origin) -> (u8, usize, usize, String) {
    match o {
        Origin::File { line, column, .. } => (0, *line, *column, String::new()),
        Origin::Env(v) => (1, 0, 0, v.clone()),
        Origin::Cli(v) => (2, 0, 0, v.clone()),
        Origin::Default => (3, 0, 0, String::new()),
    }
}

/// Overlays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Node, over: Node) {
    match (&mut base.value, over.value) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if matches!(existing.value, Value::Table(_)) => {
                        existing.key_at = v.key_at.clone();
                        merge(existing, v);
                    }
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, value) => {
            base.value = value;
            base.at = over.at;
            base.key_at = over.key_at;
            base.from_env_var = over.from_env_var;
            base.raw = over.raw;
        }
    }
}

fn defaults_tree(c: &ManagerConfig) -> Node {
    let d = Origin::Default;
    let leaf = |v: Value| Node::new(v, Origin::Default);
    let s = |x: &str| leaf(Value::String(x.to_owned()));
    let int = |n: u64| leaf(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
    let dur = |t| s(&format_duration(t));
    let table = |items: Vec<(&str, Node)>| {
        leaf(Value::Table(
            items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
    };
    let overflow = match c.overflow {
        crate::bus::OverflowPolicy::DropNewest => "drop_newest",
        _ => "backpressure",
    };
    let restart = match c.restart_policy {
        crate::plugin::RestartPolicy::Transient => "transient",
        crate::plugin::RestartPolicy::Temporary => "temporary",
        _ => "permanent",
    };
    let manager = table(vec![
        ("queue_capacity", int(c.queue_capacity as u64)),
        ("overflow", s(overflow)),
        ("handler_timeout", dur(c.handler_timeout)),
        ("restart_policy", s(restart)),
        (
            "restart_budget",
            table(vec![
                (
                    "max_restarts",
                    if c.restart_budget.max_restarts == u32::MAX {
                        s("unlimited")
                    } else {
                        int(u64::from(c.restart_budget.max_restarts))
                    },
                ),
                ("window", dur(c.restart_budget.window)),
            ]),
        ),
        (
            "backoff",
            table(vec![
                ("initial", dur(c.backoff.initial)),
                ("max", dur(c.backoff.max)),
                ("factor", leaf(Value::Float(c.backoff.factor))),
                ("jitter", leaf(Value::Float(c.backoff.jitter))),
            ]),
        ),
        ("shutdown_timeout", dur(c.shutdown_timeout)),
        ("dead_letter_capacity", int(c.dead_letter_capacity as u64)),
        ("source", s(&c.source)),
    ]);
    let mut root = Node::table(d);
    if let Value::Table(t) = &mut root.value {
        t.insert("manager".to_owned(), manager);
        t.insert("plugin_dirs".to_owned(), leaf(Value::Array(Vec::new())));
        t.insert("plugins".to_owned(), table(Vec::new()));
    }
    root
}

/// A loaded configuration: the effective values, where each came from, and the typed
/// [`ManagerConfig`]. Its `Debug` output shows no plugin settings (they hold secrets).
#[derive(Clone)]
pub struct Config {
    tree: Node,
    manager: ManagerConfig,
    plugin_dirs: Vec<PathBuf>,
    plugins: Vec<PluginSection>,
    file: Option<PathBuf>,
    /// The variables the file's `${VAR}` read.
    env_vars: BTreeSet<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("manager", &self.manager)
            .field("plugin_dirs", &self.plugin_dirs)
            .field(
                "plugins",
                &self.plugins.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The environment variables the file's `${VAR}` read. Their values count as secrets
    /// (never printed), so a program that starts other processes should keep them from those
    /// (`dtf-coordinator` hides them from its tasks).
    pub fn env_vars(&self) -> &BTreeSet<String> {
        &self.env_vars
    }

    /// The manager-wide defaults.
    pub fn manager_config(&self) -> &ManagerConfig {
        &self.manager
    }

    /// The plugin directories, relative paths resolved against the file's directory.
    pub fn plugin_dirs(&self) -> &[PathBuf] {
        &self.plugin_dirs
    }

    /// The plugins that have a `[plugins.<name>]` section.
    pub fn configured_plugins(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(|p| p.name.as_str())
    }

    /// The effective value at a dotted key path, as JSON (secrets included: do not log it).
    pub fn get(&self, key: &str) -> Option<serde_json::Value> {
        self.node(key).map(Node::to_json)
    }

    /// Where the effective value at a dotted key path came from.
    pub fn origin(&self, key: &str) -> Option<Origin> {
        self.node(key).map(|n| n.at.clone())
    }

    fn node(&self, key: &str) -> Option<&Node> {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        self.tree.find(&path)
    }

    fn section(&self, name: &str) -> Option<&PluginSection> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Whether plugin `name` runs: its `enabled` key, `true` when it has a section without
    /// one, else the registry's default for it.
    pub fn is_enabled(&self, name: &str, registry: &PluginRegistry) -> bool {
        match self.section(name) {
            Some(s) => s.enabled.unwrap_or(true),
            None => registry
                .get(name)
                .is_some_and(crate::RegistryEntry::is_enabled_by_default),
        }
    }

    /// The settings of plugin `name` as given (`None` when it has no `settings` table).
    pub fn plugin_settings(&self, name: &str) -> Option<PluginConfig> {
        self.section(name)
            .and_then(|s| s.settings.as_ref())
            .map(Node::to_json)
    }

    /// Checks what needs the plugins: every configured name is registered, each plugin's
    /// settings fit its typed configuration, and `after`/`requires` can be satisfied. This
    /// plus [`ConfigLoader::load`] is "validate without running".
    ///
    /// # Errors
    ///
    /// Every problem found, together, with positions.
    pub fn validate(&self, registry: &PluginRegistry) -> Result<(), ConfigErrors> {
        self.enabled_plugins(registry).map(|_| ())
    }

    /// What [`validate`](Self::validate) finds, as a list (empty when valid).
    pub fn problems(&self, registry: &PluginRegistry) -> Vec<ConfigIssue> {
        self.validate(registry)
            .err()
            .map(|e| e.issues)
            .unwrap_or_default()
    }

    /// The enabled plugins in start order (after [`validate`](Self::validate)'s checks).
    ///
    /// # Errors
    ///
    /// Every problem found, together.
    pub fn enabled_plugins(&self, registry: &PluginRegistry) -> Result<Vec<String>, ConfigErrors> {
        let mut issues = Vec::new();
        for section in &self.plugins {
            let Some(entry) = registry.get(&section.name) else {
                let mut issue = ConfigIssue::new(
                    IssueKind::UnknownPlugin,
                    &format!("plugins.{}", section.name),
                    section.key_at.clone(),
                    format!("unknown plugin `{}`", section.name),
                );
                issue.suggestion = did_you_mean(&section.name, registry.names()).map(str::to_owned);
                issues.push(issue);
                continue;
            };
            let Some(settings) = &section.settings else {
                continue;
            };
            for problem in entry.validate(&settings.to_json()) {
                let node = settings.find(&problem.path);
                let unknown = problem.message.starts_with("unknown key");
                let origin = match node {
                    Some(n) if unknown => n.key_at.clone(),
                    Some(n) => n.at.clone(),
                    None => settings.at.clone(),
                };
                let mut key = format!("plugins.{}.settings", section.name);
                for p in &problem.path {
                    key.push('.');
                    key.push_str(p);
                }
                let mut issue =
                    ConfigIssue::new(IssueKind::Settings, &key, origin, problem.message.clone());
                issue.suggestion = problem.suggestion.clone();
                issues.push(issue);
            }
        }
        let enabled: Vec<String> = registry
            .names()
            .filter(|n| self.is_enabled(n, registry))
            .map(str::to_owned)
            .collect();
        let order = match registry.start_order(&enabled) {
            Ok(order) => order,
            Err(e) => {
                let (name, kind) = match &e {
                    RegistryError::MissingRequirement { plugin, .. } => {
                        (plugin.clone(), IssueKind::Dependency)
                    }
                    RegistryError::Cycle { plugins } => (
                        plugins.first().cloned().unwrap_or_default(),
                        IssueKind::Dependency,
                    ),
                    _ => (String::new(), IssueKind::UnknownPlugin),
                };
                let origin = self
                    .section(&name)
                    .map_or(Origin::Default, |s| s.key_at.clone());
                issues.push(ConfigIssue::new(
                    kind,
                    &format!("plugins.{name}"),
                    origin,
                    e.to_string(),
                ));
                Vec::new()
            }
        };
        issues.sort_by_key(|a| order_key(&a.origin));
        ConfigErrors::check(issues)?;
        Ok(order)
    }

    /// A [`PluginSpec`] for every enabled plugin, in start order, with its settings (or the
    /// registry's defaults) and per-plugin overrides applied. Add them to a
    /// [`PluginManagerBuilder`] in this order, with [`manager_config`](Self::manager_config);
    /// or use [`apply`](Self::apply).
    ///
    /// # Errors
    ///
    /// What [`validate`](Self::validate) reports.
    pub fn plugin_specs(&self, registry: &PluginRegistry) -> Result<Vec<PluginSpec>, ConfigErrors> {
        let order = self.enabled_plugins(registry)?;
        let mut specs = Vec::with_capacity(order.len());
        for name in order {
            let settings = self.plugin_settings(&name);
            let spec = registry.spec(&name, settings).map_err(|e| ConfigErrors {
                issues: vec![ConfigIssue::new(
                    IssueKind::UnknownPlugin,
                    &format!("plugins.{name}"),
                    Origin::Default,
                    e.to_string(),
                )],
            })?;
            specs.push(self.with_overrides(&name, spec));
        }
        Ok(specs)
    }

    /// `spec` with the per-plugin overrides of `[plugins.<name>]` applied (queue capacity,
    /// overflow, handler timeout, restart policy, restart budget, backoff), for a coordinator
    /// that builds some specs itself rather than through [`plugin_specs`](Self::plugin_specs).
    pub fn with_overrides(&self, name: &str, mut spec: PluginSpec) -> PluginSpec {
        let Some(s) = self.section(name) else {
            return spec;
        };
        if let Some(v) = s.queue_capacity {
            spec = spec.queue_capacity(v);
        }
        if let Some(v) = s.overflow {
            spec = spec.overflow(v);
        }
        if let Some(v) = s.handler_timeout {
            spec = spec.handler_timeout(v);
        }
        if let Some(v) = s.restart_policy {
            spec = spec.restart_policy(v);
        }
        if let Some(v) = s.restart_budget {
            spec = spec.restart_budget(v);
        }
        if let Some(v) = s.backoff {
            spec = spec.backoff(v);
        }
        spec
    }

    /// Sets `builder`'s manager config and adds every enabled plugin, in start order.
    ///
    /// # Errors
    ///
    /// What [`validate`](Self::validate) reports.
    pub fn apply(
        &self,
        builder: PluginManagerBuilder,
        registry: &PluginRegistry,
    ) -> Result<PluginManagerBuilder, ConfigErrors> {
        let specs = self.plugin_specs(registry)?;
        Ok(specs.into_iter().fold(
            builder.config(self.manager.clone()),
            PluginManagerBuilder::spec,
        ))
    }

    /// The effective configuration as TOML, secrets as `"***"`, each value followed by a
    /// comment saying where it came from. With a registry, plugins without a section are
    /// listed with their default `enabled`.
    pub fn to_redacted_toml(&self, registry: Option<&PluginRegistry>) -> String {
        let mut tree = self.tree.clone();
        if let (Some(registry), Value::Table(top)) = (registry, &mut tree.value) {
            let plugins = top
                .entry("plugins".to_owned())
                .or_insert_with(|| Node::table(Origin::Default));
            if let Value::Table(p) = &mut plugins.value {
                for entry in registry.iter() {
                    p.entry(entry.name().to_owned()).or_insert_with(|| {
                        let mut t = BTreeMap::new();
                        t.insert(
                            "enabled".to_owned(),
                            Node::new(Value::Bool(entry.is_enabled_by_default()), Origin::Default),
                        );
                        Node::new(Value::Table(t), Origin::Default)
                    });
                }
            }
        }
        let mut out = String::from("# effective dtf configuration (secrets redacted)\n");
        render_table(&tree, &[], false, &mut out);
        out
    }
}

fn render_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_owned()
    } else {
        toml::Value::String(k.to_owned()).to_string()
    }
}

fn render_inline(node: &Node, secret: bool) -> String {
    if secret || node.from_env_var {
        return "\"***\"".to_owned();
    }
    match &node.value {
        Value::String(s) | Value::Datetime(s) => toml::Value::String(s.clone()).to_string(),
        Value::Integer(n) => n.to_string(),
        Value::Float(x) => toml::Value::Float(*x).to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| render_inline(i, false))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{} = {}", render_key(k), render_inline(v, is_secret_key(k))))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn render_table(node: &Node, path: &[String], secret: bool, out: &mut String) {
    let Value::Table(t) = &node.value else {
        return;
    };
    let scalars: Vec<_> = t
        .iter()
        .filter(|(_, v)| !matches!(v.value, Value::Table(_)))
        .collect();
    let tables: Vec<_> = t
        .iter()
        .filter(|(_, v)| matches!(v.value, Value::Table(_)))
        .collect();
    if !path.is_empty() && (!scalars.is_empty() || tables.is_empty()) {
        let header: Vec<String> = path.iter().map(|k| render_key(k)).collect();
        out.push_str(&format!("\n[{}]\n", header.join(".")));
    }
    for (k, v) in scalars {
        let redact = secret || is_secret_key(k);
        out.push_str(&format!(
            "{} = {}  # {}\n",
            render_key(k),
            render_inline(v, redact),
            v.at
        ));
    }
    for (k, v) in tables {
        let mut p = path.to_vec();
        p.push(k.clone());
        render_table(v, &p, secret || is_secret_key(k), out);
    }
}

/// Loads with `loader` and validates against `registry` without starting anything: the
/// coordinator's `--check`. Returns the configuration when it is valid.
///
/// # Errors
///
/// Every problem of the file, the environment, the command line and the plugins' settings.
pub fn check(loader: &ConfigLoader, registry: &PluginRegistry) -> Result<Config, ConfigErrors> {
    let (config, issues) = loader.load_with_issues()?;
    validate_with_issues(&config, issues, registry)?;
    Ok(config)
}

/// Adds the registry's checks of `config` ([`Config::problems`]) to `issues` (what
/// [`ConfigLoader::load_with_issues`] found) and fails with all of them, in file order. For a
/// coordinator that registers plugins between loading and validating (plugin directories named
/// in the file), so that every problem is still reported at once.
///
/// # Errors
///
/// Every problem, when there is any.
pub fn validate_with_issues(
    config: &Config,
    mut issues: Vec<ConfigIssue>,
    registry: &PluginRegistry,
) -> Result<(), ConfigErrors> {
    issues.extend(config.problems(registry));
    issues.sort_by_key(|a| order_key(&a.origin));
    issues.dedup();
    ConfigErrors::check(issues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_table_is_accepted_and_its_keys_checked() {
        let ok = "[registry]\nindexes = [\"https://p.example/\"]\ntrusted_keys = [\"k.pub\"]\n";
        assert!(ConfigLoader::new().source("dtf.toml", ok).load().is_ok());
        let err = ConfigLoader::new()
            .source("dtf.toml", "[registry]\nindex = []\n")
            .load()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dtf.toml:2:1: registry.index: unknown key `index` (valid: indexes, trusted_keys, allow_unsigned, cache_dir, ca_certificates)"
        );
    }

    #[test]
    fn secret_keys_include_endpoints_and_urls_but_not_base_urls() {
        for k in [
            "endpoint",
            "url",
            "webhook_url",
            "token",
            "x-api-key",
            "SMTP_PASSWORD",
            "headers",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["base_url", "graph_base_url", "channel", "queue_capacity"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
