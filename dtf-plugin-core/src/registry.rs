//! A catalogue of plugins by name, so a coordinator can enable, disable and configure them
//! from a command line or a configuration file.
//!
//! Each dtf crate that ships plugins has a `register(&mut PluginRegistry)` function that adds
//! its built-in plugins; plugins found in plugin directories are added with
//! [`PluginSource::Directory`]. The registry only describes and builds plugins: a
//! [`PluginSpec`] from [`PluginRegistry::spec`] is then added to a
//! [`PluginManager`](crate::PluginManager) like any other.
//!
//! ```
//! use dtf_plugin_core::prelude::*;
//! use dtf_plugin_core::registry::{PluginRegistry, RegistryEntry, RegistryError};
//!
//! #[derive(Default)]
//! struct Echo;
//! impl Plugin for Echo {
//!     fn metadata(&self) -> PluginMetadata {
//!         PluginMetadata::new("echo").version("1.2.0").kind(PluginKind::Monitoring)
//!     }
//!     async fn on_event(&mut self, _: &mut PluginContext, _: &Event) -> Result<(), PluginError> {
//!         Ok(())
//!     }
//! }
//!
//! let mut registry = PluginRegistry::new();
//! registry.register(
//!     RegistryEntry::new(|| PluginSpec::new(Echo::default))
//!         .description("logs every event")
//!         .default_config(serde_json::json!({ "level": "info" })),
//! )?;
//! assert_eq!(registry.get("echo").map(|e| e.metadata().version.as_ref()), Some("1.2.0"));
//! let spec = registry.spec("echo", None)?; // default config
//! assert_eq!(spec.metadata().name, "echo");
//! match registry.spec("ecoh", None) {
//!     Err(RegistryError::Unknown { suggestion, .. }) => assert_eq!(suggestion.as_deref(), Some("echo")),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), RegistryError>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::manager::PluginSpec;
use crate::plugin::{PluginConfig, PluginMetadata};

/// Where a registered plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginSource {
    /// Compiled into the coordinator, from the named crate.
    BuiltIn {
        /// The crate that registered it, e.g. `"dtf-plugins-ci"`.
        krate: Cow<'static, str>,
    },
    /// An out-of-process plugin found in a plugin directory; the path is its manifest.
    Directory(PathBuf),
}

impl fmt::Display for PluginSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn { krate } => write!(f, "built-in ({krate})"),
            Self::Directory(path) => write!(f, "directory ({})", path.display()),
        }
    }
}

type MakeSpec = Arc<dyn Fn() -> PluginSpec + Send + Sync>;
type Validate = Arc<dyn Fn(&PluginConfig) -> Vec<SettingsProblem> + Send + Sync>;

/// A problem a plugin's typed configuration found in its settings (see
/// [`RegistryEntry::config_type`]). Never carries the offending value: it may be a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettingsProblem {
    /// Key path inside the settings (keys, and array indexes as numbers).
    pub path: Vec<String>,
    /// What is wrong (serde's message, values removed).
    pub message: String,
    /// For an unknown key: the closest valid key.
    pub suggestion: Option<String>,
}

/// One plugin in a [`PluginRegistry`]: how to build it and what it is.
#[derive(Clone)]
pub struct RegistryEntry {
    metadata: PluginMetadata,
    description: Cow<'static, str>,
    source: PluginSource,
    default_config: PluginConfig,
    make: MakeSpec,
    validate: Option<Validate>,
    after: Vec<String>,
    requires: Vec<String>,
    enabled_by_default: bool,
}

impl fmt::Debug for RegistryEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The default configuration is left out: it may hold secrets read from the environment.
        f.debug_struct("RegistryEntry")
            .field("metadata", &self.metadata)
            .field("description", &self.description)
            .field("source", &self.source)
            .field("after", &self.after)
            .field("requires", &self.requires)
            .finish_non_exhaustive()
    }
}

impl RegistryEntry {
    /// An entry whose specs come from `make`. The metadata (name, version, kind, hooks) is
    /// read from one spec built now. The source defaults to built-in from an unnamed crate;
    /// set it with [`source`](Self::source) or [`built_in`](Self::built_in).
    pub fn new(make: impl Fn() -> PluginSpec + Send + Sync + 'static) -> Self {
        let metadata = make().metadata().clone();
        Self {
            metadata,
            description: Cow::Borrowed(""),
            source: PluginSource::BuiltIn {
                krate: Cow::Borrowed(""),
            },
            default_config: PluginConfig::Null,
            make: Arc::new(make),
            validate: None,
            after: Vec::new(),
            requires: Vec::new(),
            enabled_by_default: false,
        }
    }

    /// Declares the plugin's typed configuration, so settings from a configuration file are
    /// checked before anything starts (unknown keys with suggestions, wrong types), with
    /// positions in the file.
    pub fn config_type<T: DeserializeOwned + 'static>(self) -> Self {
        self.config_check::<T>(|_| Ok(()))
    }

    /// Like [`config_type`](Self::config_type), plus `check` on the parsed value for rules
    /// serde cannot express (ranges, names that must exist). `check` returns a message.
    pub fn config_check<T: DeserializeOwned + 'static>(
        mut self,
        check: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validate = Some(Arc::new(move |config| validate_as::<T>(config, &check)));
        self
    }

    /// Problems of `config` for this plugin's typed configuration (none when no type was
    /// declared).
    pub fn validate(&self, config: &PluginConfig) -> Vec<SettingsProblem> {
        self.validate
            .as_ref()
            .map(|v| v(config))
            .unwrap_or_default()
    }

    /// Starts this plugin after `other` when both are enabled (no requirement).
    pub fn after(mut self, other: impl Into<String>) -> Self {
        self.after.push(other.into());
        self
    }

    /// Requires `other` to be enabled too, and starts this plugin after it.
    pub fn requires(mut self, other: impl Into<String>) -> Self {
        self.requires.push(other.into());
        self
    }

    /// Whether the plugin runs when a configuration does not mention it. Default `false`
    /// for built-ins; plugins found in plugin directories are enabled by default.
    pub fn enabled_by_default(mut self, enabled: bool) -> Self {
        self.enabled_by_default = enabled;
        self
    }

    /// The plugins this one starts after, when enabled.
    pub fn starts_after(&self) -> &[String] {
        &self.after
    }

    /// The plugins this one requires.
    pub fn requirements(&self) -> &[String] {
        &self.requires
    }

    /// Whether the plugin runs when a configuration does not mention it.
    pub fn is_enabled_by_default(&self) -> bool {
        self.enabled_by_default
    }

    /// Sets a one-line description shown in listings.
    pub fn description(mut self, description: impl Into<Cow<'static, str>>) -> Self {
        self.description = description.into();
        self
    }

    /// Marks the entry as built into the coordinator by crate `krate`.
    pub fn built_in(mut self, krate: impl Into<Cow<'static, str>>) -> Self {
        self.source = PluginSource::BuiltIn {
            krate: krate.into(),
        };
        self
    }

    /// Sets where the plugin comes from.
    pub fn source(mut self, source: PluginSource) -> Self {
        self.source = source;
        self
    }

    /// Sets the configuration used when none is given (shown by "print the effective
    /// configuration"; never put secrets here).
    pub fn default_config(mut self, config: PluginConfig) -> Self {
        self.default_config = config;
        self
    }

    /// Name, version, kind and hooks.
    pub fn metadata(&self) -> &PluginMetadata {
        &self.metadata
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The one-line description.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// Where the plugin comes from.
    pub fn plugin_source(&self) -> &PluginSource {
        &self.source
    }

    /// The configuration used when none is given.
    pub fn defaults(&self) -> &PluginConfig {
        &self.default_config
    }

    /// A fresh spec with `config` (or the default configuration when `None`).
    pub fn spec(&self, config: Option<PluginConfig>) -> PluginSpec {
        (self.make)().config(config.unwrap_or_else(|| self.default_config.clone()))
    }
}

/// Errors of the [`PluginRegistry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two plugins were registered under one name.
    #[error("plugin `{name}` is registered twice ({first} and {second})")]
    Duplicate {
        /// The name.
        name: String,
        /// The source of the entry registered first.
        first: String,
        /// The source of the entry that was refused.
        second: String,
    },
    /// No plugin has this name.
    #[error("unknown plugin `{name}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    Unknown {
        /// The name asked for.
        name: String,
        /// The closest registered name, if one is close.
        suggestion: Option<String>,
    },
    /// `after`/`requires` form a cycle.
    #[error("plugins {} depend on each other in a cycle ({})", plugins.join(", "), cycle_text(plugins))]
    Cycle {
        /// The plugins on the cycle, in order.
        plugins: Vec<String>,
    },
    /// A plugin requires one that is not registered or not enabled.
    #[error("plugin `{plugin}` requires plugin `{requires}`, which is {}", if *registered { "not enabled" } else { "not registered" })]
    MissingRequirement {
        /// The plugin with the requirement.
        plugin: String,
        /// The plugin it requires.
        requires: String,
        /// Whether the required plugin exists but is not enabled.
        registered: bool,
    },
}

fn cycle_text(plugins: &[String]) -> String {
    let mut parts = plugins.to_vec();
    if let Some(first) = plugins.first() {
        parts.push(first.clone());
    }
    parts.join(" -> ")
}

fn validate_as<T: DeserializeOwned>(
    config: &PluginConfig,
    check: &dyn Fn(&T) -> Result<(), String>,
) -> Vec<SettingsProblem> {
    let mut value = if config.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        config.clone()
    };
    let mut problems = Vec::new();
    // serde stops at the first error; unknown keys are removed and the rest checked again so
    // that every unknown key of a section is reported in one run.
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(parsed) => {
                if let Err(message) = check(&parsed) {
                    problems.push(SettingsProblem {
                        path: Vec::new(),
                        message,
                        suggestion: None,
                    });
                }
                break;
            }
            Err(e) => {
                let mut path: Vec<String> = e
                    .path()
                    .iter()
                    .filter_map(|seg| match seg {
                        serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                        _ => None,
                    })
                    .collect();
                let message = redact_values(&e.into_inner().to_string());
                if let Some((field, expected)) = unknown_field(&message) {
                    if path.last() != Some(&field) {
                        path.push(field.clone());
                    }
                    let suggestion = did_you_mean(&field, expected.iter().map(String::as_str))
                        .map(str::to_owned);
                    let removed = remove_path(&mut value, &path);
                    problems.push(SettingsProblem {
                        path,
                        message: format!("unknown key `{field}`"),
                        suggestion,
                    });
                    if removed {
                        continue;
                    }
                } else {
                    problems.push(SettingsProblem {
                        path,
                        message,
                        suggestion: None,
                    });
                }
                break;
            }
        }
    }
    problems
}

/// `unknown field `x`, expected one of `a`, `b`` → (`x`, [`a`, `b`]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let field = rest[..end].to_owned();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field, expected))
}

fn remove_path(value: &mut serde_json::Value, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut v = value;
    for p in parents {
        v = match v {
            serde_json::Value::Object(m) => match m.get_mut(p) {
                Some(x) => x,
                None => return false,
            },
            serde_json::Value::Array(a) => match p.parse::<usize>().ok().and_then(|i| a.get_mut(i))
            {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match v {
        serde_json::Value::Object(m) => m.remove(last).is_some(),
        _ => false,
    }
}

/// Removes quoted values from a serde message so a misplaced secret never reaches an error
/// (the registry's settings check, and `PluginContext::config` at run time).
pub(crate) fn redact_values(message: &str) -> String {
    // serde quotes a bad string as `string "…"` (with `\"` escapes inside) and an unknown
    // enum value as `unknown variant `…``: both are cut out.
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    let mut suggestion = None;
    loop {
        let string = rest.find("string \"").map(|i| (i, "string \"", '"'));
        let variant = rest
            .find("unknown variant `")
            .map(|i| (i, "unknown variant `", '`'));
        let next = match (string, variant) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some((i, opener, close)) = next else {
            break;
        };
        let start = i + opener.len();
        out.push_str(&rest[..start]);
        out.push('…');
        let tail = &rest[start..];
        let mut end = None;
        let mut escaped = false;
        for (j, c) in tail.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                c if c == close && !escaped => {
                    end = Some(j);
                    break;
                }
                _ => escaped = false,
            }
        }
        match end {
            Some(j) => {
                if close == '`' {
                    // A typo (`slak`) is still helped: the closest of the expected values is
                    // named, never the value itself.
                    suggestion = suggestion.or_else(|| closest_expected(&tail[..j], &tail[j..]));
                }
                rest = &tail[j..];
            }
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    if let Some(s) = suggestion {
        out.push_str(&format!(" (did you mean `{s}`?)"));
    }
    out
}

/// The value of serde's "expected one of `a`, `b`" (or "expected `a`") in `after` closest to
/// `value`, if one is close.
fn closest_expected(value: &str, after: &str) -> Option<String> {
    let list = after
        .split_once("expected one of ")
        .or_else(|| after.split_once("expected "))?
        .1;
    let candidates: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
    did_you_mean(value, candidates).map(str::to_owned)
}

/// One row of [`PluginRegistry::listing`]: what a plugin is, where it comes from, and its
/// status in a running manager.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listing {
    /// The registered name.
    pub name: String,
    /// Its version (the running one's, when it runs).
    pub version: String,
    /// Its kind.
    pub kind: crate::PluginKind,
    /// The hooks it subscribes to.
    pub hooks: crate::HookSet,
    /// Built in (which crate) or from a plugin directory (which manifest).
    pub source: PluginSource,
    /// Its status in the manager; `None` when it is not loaded (disabled in the
    /// configuration, or never added).
    pub status: Option<crate::PluginStatus>,
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hooks: Vec<String> = self.hooks.iter().map(|h| format!("{h:?}")).collect();
        write!(
            f,
            "{}  {}  {}  [{}]  {}  {}",
            self.name,
            self.version,
            self.kind,
            hooks.join(", "),
            self.source,
            self.status
                .map_or_else(|| "not loaded".to_owned(), |s| s.to_string())
        )
    }
}

/// Plugins by name: see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct PluginRegistry {
    entries: BTreeMap<String, RegistryEntry>,
}

impl PluginRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` under its metadata name; refuses a name that is already taken.
    pub fn register(&mut self, entry: RegistryEntry) -> Result<(), RegistryError> {
        let name = entry.name().to_owned();
        if let Some(first) = self.entries.get(&name) {
            return Err(RegistryError::Duplicate {
                name,
                first: first.source.to_string(),
                second: entry.source.to_string(),
            });
        }
        self.entries.insert(name, entry);
        Ok(())
    }

    /// Removes and returns the entry named `name` (an unloaded directory plugin).
    pub fn unregister(&mut self, name: &str) -> Option<RegistryEntry> {
        self.entries.remove(name)
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&RegistryEntry> {
        self.entries.get(name)
    }

    /// The entry named `name`, or [`RegistryError::Unknown`] with the closest name.
    pub fn entry(&self, name: &str) -> Result<&RegistryEntry, RegistryError> {
        self.entries
            .get(name)
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_owned(),
                suggestion: did_you_mean(name, self.names()).map(str::to_owned),
            })
    }

    /// A spec for the plugin named `name` with `config` (its defaults when `None`).
    pub fn spec(
        &self,
        name: &str,
        config: Option<PluginConfig>,
    ) -> Result<PluginSpec, RegistryError> {
        self.entry(name).map(|e| e.spec(config))
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The order to start `enabled` plugins in: each after the plugins it `requires` and the
    /// enabled plugins it starts `after`; otherwise in the given order.
    ///
    /// # Errors
    ///
    /// [`RegistryError::MissingRequirement`] when a requirement is not registered or not in
    /// `enabled`, [`RegistryError::Cycle`] naming the plugins of a cycle,
    /// [`RegistryError::Unknown`] for an unregistered name in `enabled`.
    pub fn start_order(&self, enabled: &[String]) -> Result<Vec<String>, RegistryError> {
        let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for name in enabled {
            let entry = self.entry(name)?;
            let mut d = Vec::new();
            for r in &entry.requires {
                if !enabled.contains(r) {
                    return Err(RegistryError::MissingRequirement {
                        plugin: name.clone(),
                        requires: r.clone(),
                        registered: self.entries.contains_key(r),
                    });
                }
                d.push(r.as_str());
            }
            d.extend(
                entry
                    .after
                    .iter()
                    .filter(|a| enabled.contains(a))
                    .map(String::as_str),
            );
            deps.insert(name.as_str(), d);
        }
        // Depth-first, in the given order; a grey node met again closes a cycle.
        let mut order = Vec::new();
        let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
        let mut stack: Vec<&str> = Vec::new();
        fn visit<'a>(
            n: &'a str,
            deps: &BTreeMap<&'a str, Vec<&'a str>>,
            state: &mut BTreeMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
            order: &mut Vec<String>,
        ) -> Result<(), RegistryError> {
            match state.get(n) {
                Some(2) => return Ok(()),
                Some(_) => {
                    let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                    return Err(RegistryError::Cycle {
                        plugins: stack[from..].iter().map(|s| (*s).to_owned()).collect(),
                    });
                }
                None => {}
            }
            state.insert(n, 1);
            stack.push(n);
            for d in deps.get(n).map(Vec::as_slice).unwrap_or_default() {
                visit(d, deps, state, stack, order)?;
            }
            stack.pop();
            state.insert(n, 2);
            order.push(n.to_owned());
            Ok(())
        }
        for name in enabled {
            visit(name, &deps, &mut state, &mut stack, &mut order)?;
        }
        Ok(order)
    }

    /// Every registered plugin with its status in a running manager (`running` is
    /// [`PluginManager::list`](crate::PluginManager::list)), sorted by name; plugins that run
    /// without being registered (added directly to the manager) are listed too, as built in
    /// from an unnamed crate.
    pub fn listing(&self, running: &[crate::PluginInfo]) -> Vec<Listing> {
        let mut rows: Vec<Listing> = self
            .entries
            .values()
            .map(|e| {
                let live = running.iter().find(|p| p.name == e.name());
                Listing {
                    name: e.name().to_owned(),
                    version: live
                        .map_or_else(|| e.metadata.version.to_string(), |p| p.version.clone()),
                    kind: e.metadata.kind,
                    hooks: e.metadata.hooks,
                    source: e.source.clone(),
                    status: live.map(|p| p.status),
                }
            })
            .collect();
        for p in running {
            if !self.entries.contains_key(&p.name) {
                rows.push(Listing {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    kind: p.kind,
                    hooks: p.hooks,
                    source: PluginSource::BuiltIn {
                        krate: Cow::Borrowed(""),
                    },
                    status: Some(p.status),
                });
            }
        }
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// The entries, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &RegistryEntry> {
        self.entries.values()
    }

    /// How many plugins are registered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no plugin is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely
/// typo (at most a third of the word's length, and at least one edit allowed).
///
/// ```
/// use dtf_plugin_core::registry::did_you_mean;
/// assert_eq!(did_you_mean("retires", ["retries", "timeout"]), Some("retries"));
/// assert_eq!(did_you_mean("zzz", ["retries", "timeout"]), None);
/// ```
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_out_of_serde_messages() {
        assert_eq!(
            redact_values(r#"invalid type: string "ghp_x\"y", expected u32"#),
            r#"invalid type: string "…", expected u32"#
        );
        assert_eq!(
            redact_values("unknown variant `ghp_TopSecret`, expected one of `a`, `b`"),
            "unknown variant `…`, expected one of `a`, `b`"
        );
        // A typo is helped by the closest expected value, never by the value itself.
        assert_eq!(
            redact_values(
                "channels[0]: unknown variant `slak`, expected one of `slack`, `discord`"
            ),
            "channels[0]: unknown variant `…`, expected one of `slack`, `discord` (did you mean `slack`?)"
        );
        assert_eq!(
            redact_values("unknown variant `xoxb-1234`, expected `slack`"),
            "unknown variant `…`, expected `slack`"
        );
    }

    #[test]
    fn edit_distance_counts_typos() {
        assert_eq!(edit_distance("retries", "retries"), 0);
        assert_eq!(edit_distance("retires", "retries"), 1);
        assert_eq!(edit_distance("retry", "retries"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestions_pick_the_closest_and_refuse_far_ones() {
        let keys = ["queue_capacity", "overflow", "handler_timeout"];
        assert_eq!(did_you_mean("queue_capacty", keys), Some("queue_capacity"));
        assert_eq!(did_you_mean("overflw", keys), Some("overflow"));
        assert_eq!(did_you_mean("colour", keys), None);
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only deserialized")]
    struct Cfg {
        retries: u32,
        #[serde(default)]
        token: String,
    }

    struct Nop;
    impl crate::Plugin for Nop {
        async fn on_event(
            &mut self,
            _: &mut crate::PluginContext,
            _: &crate::Event,
        ) -> Result<(), crate::PluginError> {
            Ok(())
        }
    }

    fn entry(name: &'static str) -> RegistryEntry {
        RegistryEntry::new(move || PluginSpec::new(|| Nop).name(name))
    }

    #[test]
    fn settings_problems_name_every_unknown_key_and_hide_values() {
        let e = entry("a").config_type::<Cfg>();
        let problems = e.validate(&serde_json::json!({
            "retires": 1, "tokn": "x", "retries": 2
        }));
        let shown: Vec<_> = problems
            .iter()
            .map(|p| (p.path.join("."), p.suggestion.clone()))
            .collect();
        assert_eq!(
            shown,
            [
                ("retires".to_owned(), Some("retries".to_owned())),
                ("tokn".to_owned(), Some("token".to_owned()))
            ]
        );
        let problems = e.validate(&serde_json::json!({ "retries": "xoxb-secret" }));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, ["retries"]);
        assert!(
            !problems[0].message.contains("xoxb"),
            "{}",
            problems[0].message
        );
        assert!(e.validate(&serde_json::json!({ "retries": 1 })).is_empty());
    }

    #[test]
    fn start_order_follows_requirements_and_refuses_cycles() {
        let mut r = PluginRegistry::new();
        r.register(entry("a").requires("b")).unwrap();
        r.register(entry("b").after("c")).unwrap();
        r.register(entry("c")).unwrap();
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            r.start_order(&names(&["a", "b", "c"])).unwrap(),
            ["c", "b", "a"]
        );
        assert_eq!(r.start_order(&names(&["a", "b"])).unwrap(), ["b", "a"]);
        let err = r.start_order(&names(&["a"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin `a` requires plugin `b`, which is not enabled"
        );
        let mut r = PluginRegistry::new();
        r.register(entry("x").after("y")).unwrap();
        r.register(entry("y").requires("z")).unwrap();
        r.register(entry("z").after("x")).unwrap();
        let err = r.start_order(&names(&["x", "y", "z"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugins x, y, z depend on each other in a cycle (x -> y -> z -> x)"
        );
    }
}
