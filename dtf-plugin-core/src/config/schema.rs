//! Checks the merged tree against the known keys and reads it into typed values, collecting
//! every problem instead of stopping at the first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::tree::{Node, Origin, Value, join};
use super::{ConfigIssue, IssueKind};
use crate::bus::OverflowPolicy;
use crate::manager::ManagerConfig;
use crate::plugin::RestartPolicy;
use crate::registry::did_you_mean;
use crate::supervision::{Backoff, RestartBudget};

pub(crate) const TOP_KEYS: &[&str] = &[
    "manager",
    "plugin_dirs",
    "plugins",
    "registry",
    "ui",
    "cluster",
];
/// The keys of `[ui]`, the web console of an application (the reference coordinator's
/// `--ui`), which reads and checks their values; the loader only checks that no other key is
/// there.
pub(crate) const UI_KEYS: &[&str] = &["listen", "token_file"];

/// The keys of `[cluster]` (read by the embedding coordinator, docs/cluster.md). There is no
/// `cookie` key on purpose: the cookie is read from `cookie_file` or `DTF_CLUSTER_COOKIE`.
pub(crate) const CLUSTER_KEYS: &[&str] = &[
    "listen",
    "min_workers",
    "tls_cert",
    "tls_key",
    "cookie_file",
    "insecure",
];
/// The keys of `[registry]`, read by the plugin repository client (`dtf-plugin-repo`, which
/// checks their values); the loader only checks that no other key is there.
pub(crate) const REGISTRY_KEYS: &[&str] = &[
    "indexes",
    "trusted_keys",
    "allow_unsigned",
    "cache_dir",
    "ca_certificates",
];
pub(crate) const MANAGER_KEYS: &[&str] = &[
    "queue_capacity",
    "overflow",
    "handler_timeout",
    "restart_policy",
    "restart_budget",
    "backoff",
    "shutdown_timeout",
    "dead_letter_capacity",
    "source",
];
pub(crate) const PLUGIN_KEYS: &[&str] = &[
    "enabled",
    "settings",
    "queue_capacity",
    "overflow",
    "handler_timeout",
    "restart_policy",
    "restart_budget",
    "backoff",
];
const BUDGET_KEYS: &[&str] = &["max_restarts", "window"];
const BACKOFF_KEYS: &[&str] = &["initial", "max", "factor", "jitter"];
const OVERFLOW: &[&str] = &["backpressure", "drop_newest"];
const RESTART: &[&str] = &["permanent", "transient", "temporary"];

/// One `[plugins.<name>]` section, read.
#[derive(Debug, Clone)]
pub(crate) struct PluginSection {
    pub(crate) name: String,
    pub(crate) key_at: Origin,
    pub(crate) enabled: Option<bool>,
    pub(crate) settings: Option<Node>,
    pub(crate) queue_capacity: Option<usize>,
    pub(crate) overflow: Option<OverflowPolicy>,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) restart_policy: Option<RestartPolicy>,
    pub(crate) restart_budget: Option<RestartBudget>,
    pub(crate) backoff: Option<Backoff>,
}

pub(crate) struct Reader<'a> {
    pub(crate) issues: &'a mut Vec<ConfigIssue>,
}

impl Reader<'_> {
    fn push(&mut self, kind: IssueKind, key: &str, at: &Origin, message: impl Into<String>) {
        self.issues
            .push(ConfigIssue::new(kind, key, at.clone(), message));
    }

    fn wrong_type(&mut self, key: &str, node: &Node, expected: &str) {
        let message = format!(
            "wrong type: expected {expected}, found {}",
            node.value.type_name()
        );
        self.push(IssueKind::WrongType, key, &node.at, message);
    }

    /// Reports keys of `table` not in `known`, with the closest known key.
    pub(crate) fn unknown_keys(
        &mut self,
        table: &BTreeMap<String, Node>,
        prefix: &str,
        known: &[&str],
    ) {
        for (key, node) in table {
            if !known.contains(&key.as_str()) {
                let path = join(prefix, key);
                let mut issue = ConfigIssue::new(
                    IssueKind::UnknownKey,
                    &path,
                    node.key_at.clone(),
                    format!("unknown key `{key}`"),
                );
                issue.suggestion = did_you_mean(key, known.iter().copied()).map(str::to_owned);
                if issue.suggestion.is_none() {
                    issue.message = format!("unknown key `{key}` (valid: {})", known.join(", "));
                }
                self.issues.push(issue);
            }
        }
    }

    pub(crate) fn table<'n>(
        &mut self,
        node: &'n Node,
        key: &str,
    ) -> Option<&'n BTreeMap<String, Node>> {
        match &node.value {
            Value::Table(t) => Some(t),
            _ => {
                self.wrong_type(key, node, "a table");
                None
            }
        }
    }

    fn uint(
        &mut self,
        t: &BTreeMap<String, Node>,
        prefix: &str,
        key: &str,
        min: i64,
    ) -> Option<u64> {
        let node = t.get(key)?;
        let path = join(prefix, key);
        match node.value {
            Value::Integer(n) if n >= min => u64::try_from(n).ok(),
            Value::Integer(n) => {
                self.push(
                    IssueKind::InvalidValue,
                    &path,
                    &node.at,
                    format!("invalid value {n}: must be at least {min}"),
                );
                None
            }
            _ => {
                self.wrong_type(&path, node, "an integer");
                None
            }
        }
    }

    fn float(
        &mut self,
        t: &BTreeMap<String, Node>,
        prefix: &str,
        key: &str,
        range: (f64, f64),
    ) -> Option<f64> {
        let node = t.get(key)?;
        let path = join(prefix, key);
        let x = match node.value {
            Value::Float(x) => x,
            #[expect(clippy::cast_precision_loss, reason = "small config numbers")]
            Value::Integer(n) => n as f64,
            _ => {
                self.wrong_type(&path, node, "a number");
                return None;
            }
        };
        if !(range.0..=range.1).contains(&x) {
            self.push(
                IssueKind::InvalidValue,
                &path,
                &node.at,
                format!(
                    "invalid value {x}: must be between {} and {}",
                    range.0, range.1
                ),
            );
            return None;
        }
        Some(x)
    }

    pub(crate) fn bool(
        &mut self,
        t: &BTreeMap<String, Node>,
        prefix: &str,
        key: &str,
    ) -> Option<bool> {
        let node = t.get(key)?;
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong_type(&join(prefix, key), node, "a boolean (true or false)");
                None
            }
        }
    }

    fn string<'n>(
        &mut self,
        t: &'n BTreeMap<String, Node>,
        prefix: &str,
        key: &str,
    ) -> Option<&'n str> {
        let node = t.get(key)?;
        match (&node.value, &node.raw) {
            (Value::String(s), _) => Some(s),
            (
                Value::Integer(_) | Value::Float(_) | Value::Bool(_) | Value::Datetime(_),
                Some(raw),
            ) => Some(raw),
            _ => {
                self.wrong_type(&join(prefix, key), node, "a string");
                None
            }
        }
    }

    fn choice(
        &mut self,
        t: &BTreeMap<String, Node>,
        prefix: &str,
        key: &str,
        choices: &[&str],
    ) -> Option<usize> {
        let s = self.string(t, prefix, key)?;
        if let Some(i) = choices.iter().position(|c| *c == s) {
            return Some(i);
        }
        let node = t.get(key)?;
        let path = join(prefix, key);
        let mut issue = ConfigIssue::new(
            IssueKind::InvalidValue,
            &path,
            node.at.clone(),
            // The value itself is never repeated: it could be a secret put under the wrong key.
            format!("invalid value: expected one of {}", choices.join(", ")),
        );
        issue.suggestion = did_you_mean(s, choices.iter().copied()).map(str::to_owned);
        self.issues.push(issue);
        None
    }

    fn duration(
        &mut self,
        t: &BTreeMap<String, Node>,
        prefix: &str,
        key: &str,
    ) -> Option<Duration> {
        let node = t.get(key)?;
        let path = join(prefix, key);
        let s = match (&node.value, &node.raw) {
            (Value::String(s), _) => s,
            (Value::Integer(_) | Value::Float(_), Some(raw)) if parse_duration(raw).is_some() => {
                raw
            }
            _ => {
                self.wrong_type(
                    &path,
                    node,
                    "a duration string such as \"30s\" or \"250ms\"",
                );
                return None;
            }
        };
        match parse_duration(s) {
            Some(d) => Some(d),
            None => {
                self.push(
                    IssueKind::InvalidValue,
                    &path,
                    &node.at,
                    // Never the value itself: it could be a secret put under the wrong key.
                    "not a duration: use a number with a unit: ms, s, m or h (e.g. \"30s\")"
                        .to_owned(),
                );
                None
            }
        }
    }

    fn budget(&mut self, t: &BTreeMap<String, Node>, prefix: &str) -> Option<RestartBudget> {
        let node = t.get("restart_budget")?;
        let path = join(prefix, "restart_budget");
        let t = self.table(node, &path)?;
        self.unknown_keys(t, &path, BUDGET_KEYS);
        let mut b = RestartBudget::default();
        if let Some(n) = self.max_restarts(t, &path) {
            b.max_restarts = n;
        }
        if let Some(d) = self.duration(t, &path, "window") {
            b.window = d;
        }
        Some(b)
    }

    /// `max_restarts`: a count below `u32::MAX` (which [`RestartBudget::unlimited`] stands
    /// for), or `"unlimited"`. A larger count is refused, not taken as no limit.
    fn max_restarts(&mut self, t: &BTreeMap<String, Node>, prefix: &str) -> Option<u32> {
        let node = t.get("max_restarts")?;
        match &node.value {
            Value::String(s) if s == "unlimited" => {
                return Some(RestartBudget::unlimited().max_restarts);
            }
            Value::Integer(_) => {}
            _ => {
                let path = join(prefix, "max_restarts");
                self.wrong_type(&path, node, "an integer or \"unlimited\"");
                return None;
            }
        }
        let n = self.uint(t, prefix, "max_restarts", 0)?;
        match u32::try_from(n) {
            Ok(n) if n < u32::MAX => Some(n),
            _ => {
                let path = join(prefix, "max_restarts");
                self.push(
                    IssueKind::InvalidValue,
                    &path,
                    &node.at,
                    format!(
                        "invalid value {n}: must be at most {}; for no limit write \"unlimited\"",
                        u32::MAX - 1
                    ),
                );
                None
            }
        }
    }

    fn backoff(&mut self, t: &BTreeMap<String, Node>, prefix: &str) -> Option<Backoff> {
        let node = t.get("backoff")?;
        let path = join(prefix, "backoff");
        let t = self.table(node, &path)?;
        self.unknown_keys(t, &path, BACKOFF_KEYS);
        let mut b = Backoff::default();
        if let Some(d) = self.duration(t, &path, "initial") {
            b.initial = d;
        }
        if let Some(d) = self.duration(t, &path, "max") {
            b.max = d;
        }
        if let Some(x) = self.float(t, &path, "factor", (1.0, 1000.0)) {
            b.factor = x;
        }
        if let Some(x) = self.float(t, &path, "jitter", (0.0, 1.0)) {
            b.jitter = x;
        }
        Some(b)
    }

    pub(crate) fn manager(&mut self, node: Option<&Node>) -> ManagerConfig {
        let mut c = ManagerConfig::default();
        let Some(node) = node else { return c };
        let Some(t) = self.table(node, "manager") else {
            return c;
        };
        let p = "manager";
        self.unknown_keys(t, p, MANAGER_KEYS);
        if let Some(n) = self.uint(t, p, "queue_capacity", 1) {
            c.queue_capacity = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(i) = self.choice(t, p, "overflow", OVERFLOW) {
            c.overflow = overflow(i);
        }
        if let Some(d) = self.duration(t, p, "handler_timeout") {
            c.handler_timeout = d;
        }
        if let Some(i) = self.choice(t, p, "restart_policy", RESTART) {
            c.restart_policy = restart(i);
        }
        if let Some(b) = self.budget(t, p) {
            c.restart_budget = b;
        }
        if let Some(b) = self.backoff(t, p) {
            c.backoff = b;
        }
        if let Some(d) = self.duration(t, p, "shutdown_timeout") {
            c.shutdown_timeout = d;
        }
        if let Some(n) = self.uint(t, p, "dead_letter_capacity", 0) {
            c.dead_letter_capacity = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(s) = self.string(t, p, "source") {
            c.source = s.to_owned();
        }
        c
    }

    pub(crate) fn plugin_dirs(&mut self, node: Option<&Node>) -> Vec<PathBuf> {
        let Some(node) = node else { return Vec::new() };
        match &node.value {
            // From the environment: a PATH-style list.
            Value::String(s) => std::env::split_paths(s)
                .map(|p| node.at.resolve_path(&p.to_string_lossy()))
                .collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match &item.value {
                    Value::String(s) => Some(item.at.resolve_path(s)),
                    _ => {
                        self.wrong_type(&format!("plugin_dirs[{i}]"), item, "a string (a path)");
                        None
                    }
                })
                .collect(),
            _ => {
                self.wrong_type("plugin_dirs", node, "an array of paths");
                Vec::new()
            }
        }
    }

    pub(crate) fn plugins(&mut self, node: Option<&Node>) -> Vec<PluginSection> {
        let Some(node) = node else { return Vec::new() };
        let Some(t) = self.table(node, "plugins") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, node) in t {
            let p = format!("plugins.{name}");
            let Some(t) = self.table(node, &p) else {
                continue;
            };
            self.unknown_keys(t, &p, PLUGIN_KEYS);
            let settings = t.get("settings").and_then(|s| match s.value {
                Value::Table(_) => Some(s.clone()),
                _ => {
                    self.wrong_type(&join(&p, "settings"), s, "a table");
                    None
                }
            });
            out.push(PluginSection {
                name: name.clone(),
                key_at: node.key_at.clone(),
                enabled: self.bool(t, &p, "enabled"),
                settings,
                queue_capacity: self
                    .uint(t, &p, "queue_capacity", 1)
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                overflow: self.choice(t, &p, "overflow", OVERFLOW).map(overflow),
                handler_timeout: self.duration(t, &p, "handler_timeout"),
                restart_policy: self.choice(t, &p, "restart_policy", RESTART).map(restart),
                restart_budget: self.budget(t, &p),
                backoff: self.backoff(t, &p),
            });
        }
        out
    }
}

fn overflow(i: usize) -> OverflowPolicy {
    if i == 1 {
        OverflowPolicy::DropNewest
    } else {
        OverflowPolicy::Backpressure
    }
}

fn restart(i: usize) -> RestartPolicy {
    match i {
        1 => RestartPolicy::Transient,
        2 => RestartPolicy::Temporary,
        _ => RestartPolicy::Permanent,
    }
}

/// `"250ms"`, `"30s"`, `"1.5s"`, `"2m"`, `"1h"`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * scale).ok()
}

/// Renders a duration the way [`parse_duration`] reads it.
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("3 weeks"), None);
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }
}
