//! The merged configuration tree: every value remembers where it came from (file position,
//! environment variable, command-line argument, default) and whether it must be redacted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::{ConfigIssue, IssueKind};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// Built-in default.
    Default,
    /// A configuration file, at a 1-based line and column.
    File {
        /// The file.
        path: Arc<Path>,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
    },
    /// An environment variable (its name).
    Env(String),
    /// A command-line override (its key; the value is never kept here).
    Cli(String),
}

impl Origin {
    /// `value`, a path given at this origin, resolved relative to the directory of the file it
    /// came from (as is where it came from the environment or the command line, or was
    /// absolute).
    pub fn resolve_path(&self, value: &str) -> PathBuf {
        let p = PathBuf::from(value);
        match self {
            Origin::File { path, .. } if p.is_relative() => {
                path.parent().map_or_else(|| p.clone(), |dir| dir.join(&p))
            }
            _ => p,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::File { path, line: 0, .. } => write!(f, "{}", path.display()),
            Self::File { path, line, column } => {
                write!(f, "{}:{line}:{column}", path.display())
            }
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Cli(key) => write!(f, "command-line override of `{key}`"),
        }
    }
}

/// A value of the tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Table(BTreeMap<String, Node>),
    Array(Vec<Node>),
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
}

impl Value {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::Table(_) => "table",
            Self::Array(_) => "array",
            Self::String(_) => "string",
            Self::Integer(_) => "integer",
            Self::Float(_) => "float",
            Self::Bool(_) => "boolean",
            Self::Datetime(_) => "datetime",
        }
    }
}

/// One value with its origin (of the value, and of its key when it sits in a table).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Value,
    pub(crate) at: Origin,
    pub(crate) key_at: Origin,
    /// Interpolated from `${VAR}`: never printed.
    pub(crate) from_env_var: bool,
    /// The text of an override (environment, command line), so that `source=true` can
    /// still be read as the string "true".
    pub(crate) raw: Option<String>,
}

impl Node {
    pub(crate) fn new(value: Value, at: Origin) -> Self {
        Self {
            value,
            key_at: at.clone(),
            at,
            from_env_var: false,
            raw: None,
        }
    }

    pub(crate) fn table(at: Origin) -> Self {
        Self::new(Value::Table(BTreeMap::new()), at)
    }

    /// Converts to JSON for plugin settings; `${VAR}` values are kept (the plugin needs them).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Table(t) => {
                serde_json::Value::Object(t.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Node::to_json).collect()),
            Value::String(s) | Value::Datetime(s) => serde_json::Value::String(s.clone()),
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Float(x) => serde_json::Number::from_f64(*x)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Bool(b) => serde_json::Value::Bool(*b),
        }
    }

    /// The node at a path of keys (a numeric key indexes an array).
    pub(crate) fn find<'a>(&'a self, path: &[String]) -> Option<&'a Node> {
        let mut node = self;
        for seg in path {
            node = match &node.value {
                Value::Table(t) => t.get(seg)?,
                Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(node)
    }
}

/// Byte offset → 1-based line and column.
pub(crate) struct Positions<'a> {
    text: &'a str,
    path: Arc<Path>,
}

impl<'a> Positions<'a> {
    pub(crate) fn new(text: &'a str, path: &Path) -> Self {
        Self {
            text,
            path: Arc::from(path),
        }
    }

    pub(crate) fn origin(&self, offset: usize) -> Origin {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Origin::File {
            path: Arc::clone(&self.path),
            line,
            column,
        }
    }
}

/// Reads a file's parse tree into a [`Node`] tree, interpolating `${VAR}` in strings.
pub(crate) struct FileReader<'a> {
    pub(crate) pos: Positions<'a>,
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) issues: &'a mut Vec<ConfigIssue>,
    /// The names of the variables `${VAR}` read.
    pub(crate) env_vars: std::collections::BTreeSet<String>,
}

impl FileReader<'_> {
    pub(crate) fn table(&mut self, table: &DeTable<'_>, prefix: &str, at: Origin) -> Node {
        let mut out = BTreeMap::new();
        for (k, v) in table.iter() {
            let key = k.get_ref().to_string();
            let path = join(prefix, &key);
            let mut node = self.value(v.get_ref(), &path, self.pos.origin(v.span().start));
            node.key_at = self.pos.origin(k.span().start);
            out.insert(key, node);
        }
        Node::new(Value::Table(out), at)
    }

    fn value(&mut self, value: &DeValue<'_>, path: &str, at: Origin) -> Node {
        let v = match value {
            DeValue::String(s) => {
                let (s, read) = interpolate(s, self.env, path, &at, self.issues);
                let mut node = Node::new(Value::String(s), at);
                node.from_env_var = !read.is_empty();
                self.env_vars
                    .extend(read.into_iter().filter(|v| !v.is_empty()));
                return node;
            }
            DeValue::Integer(i) => {
                match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
                    Ok(n) => Value::Integer(n),
                    Err(_) => {
                        self.issues.push(ConfigIssue::new(
                            IssueKind::InvalidValue,
                            path,
                            at.clone(),
                            "integer out of range",
                        ));
                        Value::Integer(0)
                    }
                }
            }
            DeValue::Float(x) => Value::Float(x.as_str().replace('_', "").parse().unwrap_or(0.0)),
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::Datetime(d.to_string()),
            DeValue::Array(a) => {
                let items = a
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let p = format!("{path}[{i}]");
                        self.value(item.get_ref(), &p, self.pos.origin(item.span().start))
                    })
                    .collect();
                Value::Array(items)
            }
            DeValue::Table(t) => return self.table(t, path, at),
        };
        Node::new(v, at)
    }
}

pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Replaces `${VAR}` with the variable's value (`$$` is a literal `$`). Returns the names of
/// the variables read (a value that read any counts as a secret).
pub(crate) fn interpolate(
    s: &str,
    env: &BTreeMap<String, String>,
    path: &str,
    at: &Origin,
    issues: &mut Vec<ConfigIssue>,
) -> (String, Vec<String>) {
    if !s.contains('$') {
        return (s.to_owned(), Vec::new());
    }
    let mut out = String::with_capacity(s.len());
    let mut used = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                issues.push(ConfigIssue::new(
                    IssueKind::InvalidValue,
                    path,
                    at.clone(),
                    "unterminated `${` (write `$$` for a literal `$`)",
                ));
                // Counted as read: the value is not shown either way.
                used.push(String::new());
                return (out, used);
            };
            let var = &body[..end];
            used.push(var.to_owned());
            match env.get(var) {
                Some(v) => out.push_str(v),
                None => issues.push(ConfigIssue::new(
                    IssueKind::MissingEnv,
                    path,
                    at.clone(),
                    format!("environment variable `{var}` is not set"),
                )),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    (out, used)
}

/// Parses an override value (environment or command line): TOML syntax when it parses
/// (`false`, `10`, `["a", "b"]`, `"quoted"`), otherwise the raw text as a string.
pub(crate) fn parse_override(text: &str, at: Origin) -> Node {
    let trimmed = text.trim();
    if let Ok(parsed) = DeValue::parse(trimmed) {
        let env = BTreeMap::new();
        let mut issues = Vec::new();
        let mut reader = FileReader {
            pos: Positions::new(trimmed, Path::new("")),
            env: &env,
            issues: &mut issues,
            env_vars: std::collections::BTreeSet::new(),
        };
        let mut node = reader.value(parsed.get_ref(), "", at.clone());
        if issues.is_empty() {
            relocate(&mut node, &at);
            node.raw = Some(text.to_owned());
            return node;
        }
    }
    Node::new(Value::String(text.to_owned()), at)
}

/// Sets every origin in `node` to `at`.
fn relocate(node: &mut Node, at: &Origin) {
    node.at = at.clone();
    node.key_at = at.clone();
    match &mut node.value {
        Value::Table(t) => t.values_mut().for_each(|n| relocate(n, at)),
        Value::Array(a) => a.iter_mut().for_each(|n| relocate(n, at)),
        _ => {}
    }
}

/// Sets `path` (dotted keys) in `root` to `value`, creating tables on the way. Returns an
/// error message when a non-table sits on the path.
pub(crate) fn set_path(root: &mut Node, path: &[String], value: Node) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".to_owned());
    };
    let at = value.at.clone();
    let mut node = root;
    let mut walked = String::new();
    for key in parents {
        walked = join(&walked, key);
        let Value::Table(t) = &mut node.value else {
            return Err(format!("`{walked}` is not a table"));
        };
        node = t
            .entry(key.clone())
            .or_insert_with(|| Node::table(at.clone()));
    }
    match &mut node.value {
        Value::Table(t) => {
            t.insert(last.clone(), value);
            Ok(())
        }
        other => Err(format!(
            "`{walked}` is a {}, not a table",
            other.type_name()
        )),
    }
}
