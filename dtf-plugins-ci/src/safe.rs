//! CI-safe plain output: text that came from tasks, printed where a CI runner reads it.
//!
//! CI runners scan every line a step prints for commands: GitHub Actions workflow commands
//! (`::add-mask::…`, `::error …::…`, and the legacy `##[…]` form) at the start of a line after
//! leading whitespace, Azure Pipelines logging commands (`##vso[…]`) *anywhere* in a line, and
//! TeamCity service messages (`##teamcity[…]`). A task name, an error message or an output
//! tail printed verbatim in a table or a log line can therefore mask secrets, set variables or
//! fail the build. [`neutralize`] makes one such field inert: it stays on one line and can
//! neither start nor contain a command. The dialect renderers ([`crate::github`],
//! [`crate::azure`], [`crate::teamcity`]) are the only places where dtf writes commands on
//! purpose; they escape values with each dialect's own rules instead.
//!
//! [`CiSafeWriter`] applies the same rules to whole log lines, for a `tracing` subscriber's
//! writer.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io;

/// Makes `field` safe to print in plain output that a CI runner reads:
///
/// - `\n` and `\r` become the two characters `\n` and `\r`; every other control character
///   (tab excepted) and U+2028/U+2029 become `\u{…}`, so the field stays on its line;
/// - `##` followed by `[`, `vso[` or `teamcity[` (in any case) becomes `#\#…`, so no Azure
///   logging command, TeamCity service message or legacy GitHub command appears anywhere in
///   it;
/// - a field that starts with `::` after leading whitespace gets a `\` before it, so it
///   cannot start a GitHub workflow command even at the start of a line.
///
/// Text without any of these is returned unchanged (and not copied).
///
/// ```
/// use dtf_plugins_ci::safe::neutralize;
///
/// assert_eq!(neutralize("parser::rejects_bad_input"), "parser::rejects_bad_input");
/// assert_eq!(neutralize("x\n::add-mask::secret"), "x\\n::add-mask::secret");
/// assert_eq!(neutralize("::add-mask::secret"), "\\::add-mask::secret");
/// assert_eq!(
///     neutralize("ok ##vso[task.setvariable variable=X]y"),
///     "ok #\\#vso[task.setvariable variable=X]y"
/// );
/// ```
pub fn neutralize(field: &str) -> Cow<'_, str> {
    neutralize_with(field, false)
}

/// [`neutralize`], keeping ESC (`\x1b`) as is when `keep_esc`: the ANSI colours of a log
/// formatter survive, and an escape sequence cannot start a line break or a command.
fn neutralize_with(s: &str, keep_esc: bool) -> Cow<'_, str> {
    let escaped = escape_controls(s, keep_esc);
    let changed = matches!(escaped, Cow::Owned(_));
    let broken = match break_markers(&escaped) {
        Cow::Owned(b) => Some(b),
        Cow::Borrowed(_) => None,
    };
    let text = broken.as_deref().unwrap_or(&escaped);
    if let Some(fixed) = leading_colons(text) {
        return Cow::Owned(fixed);
    }
    match (broken, changed) {
        (Some(b), _) => Cow::Owned(b),
        (None, true) => Cow::Owned(escaped.into_owned()),
        (None, false) => Cow::Borrowed(s),
    }
}

fn needs_escape(c: char, keep_esc: bool) -> bool {
    c != '\t'
        && !(keep_esc && c == '\u{1b}')
        && (c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
}

fn escape_controls(s: &str, keep_esc: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_esc)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c, keep_esc) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether `rest` (what follows a `##`) makes a command marker.
fn is_marker_tail(rest: &[u8]) -> bool {
    let starts = |p: &[u8]| rest.len() >= p.len() && rest[..p.len()].eq_ignore_ascii_case(p);
    starts(b"[") || starts(b"vso[") || starts(b"teamcity[")
}

fn break_markers(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let hit =
        |i: usize| bytes[i] == b'#' && bytes[i + 1] == b'#' && is_marker_tail(&bytes[i + 2..]);
    if !(0..bytes.len().saturating_sub(1)).any(hit) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 4);
    let mut start = 0;
    for i in 0..bytes.len().saturating_sub(1) {
        if hit(i) {
            // `#` is ASCII, so `i + 1` is a character boundary.
            out.push_str(&s[start..=i]);
            out.push('\\');
            start = i + 1;
        }
    }
    out.push_str(&s[start..]);
    Cow::Owned(out)
}

/// Characters a runner may skip before looking for `::`: whitespace and the invisible
/// format characters some trimming functions treat alike.
fn skippable(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{AD}'
        )
}

fn leading_colons(s: &str) -> Option<String> {
    let rest = s.trim_start_matches(skippable);
    if !rest.starts_with("::") {
        return None;
    }
    let at = s.len() - rest.len();
    Some(format!("{}\\{}", &s[..at], rest))
}

/// An [`io::Write`] that makes every line written through it CI-safe, for log output.
///
/// Each `write` call is taken as one or more log records (a `tracing` formatter writes one
/// record, ending in `\n`, per call): a trailing line break is kept, and the text before it
/// goes through the rules of [`neutralize`], except that ESC is kept so a formatter's ANSI
/// colours still work. A record whose message or fields carry a line break therefore stays
/// one line, and no field can smuggle a CI command into the log.
///
/// ```
/// use std::io::Write as _;
/// use dtf_plugins_ci::safe::CiSafeWriter;
///
/// let mut w = CiSafeWriter::new(Vec::new());
/// w.write_all(b"WARN task failed: boom\n::add-mask::x\n")?;
/// assert_eq!(w.into_inner(), b"WARN task failed: boom\\n::add-mask::x\n");
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// With `tracing-subscriber`: `.with_writer(|| CiSafeWriter::new(std::io::stderr()))`.
#[derive(Debug)]
pub struct CiSafeWriter<W> {
    inner: W,
}

impl<W: io::Write> CiSafeWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner }
    }

    /// The wrapped writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: io::Write> io::Write for CiSafeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body.strip_suffix('\r').unwrap_or(body), "\n"),
            None => (&*text, ""),
        };
        let safe = neutralize_with(body, true);
        self.inner.write_all(safe.as_bytes())?;
        self.inner.write_all(end.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_plain_text_alone_without_copying() {
        for s in [
            "",
            "parser::rejects_bad_input",
            "a # b ## c",
            "tab\there",
            "#[derive]",
        ] {
            assert!(matches!(neutralize(s), Cow::Borrowed(_)), "{s:?}");
        }
    }

    #[test]
    fn escapes_line_breaks_and_controls() {
        assert_eq!(
            neutralize("a\r\nb\u{0}c\u{2028}d\u{85}"),
            "a\\r\\nb\\u{0}c\\u{2028}d\\u{85}"
        );
        assert_eq!(neutralize("\u{1b}[2K"), "\\u{1b}[2K");
        assert_eq!(neutralize_with("\u{1b}[2Kx\ny", true), "\u{1b}[2Kx\\ny");
    }

    #[test]
    fn breaks_every_command_marker() {
        assert_eq!(neutralize("##vso[x]"), "#\\#vso[x]");
        assert_eq!(neutralize("a ##VSO[x]"), "a #\\#VSO[x]");
        assert_eq!(neutralize("###teamcity[x]"), "##\\#teamcity[x]");
        assert_eq!(neutralize("##[group]"), "#\\#[group]");
        assert_eq!(neutralize("  ::error::x"), "  \\::error::x");
        assert_eq!(neutralize("\u{FEFF}::error::x"), "\u{FEFF}\\::error::x");
        assert_eq!(neutralize("\n::error::x"), "\\n::error::x");
    }
}
