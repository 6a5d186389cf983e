//! Text helpers shared by the channel renderers: truncation with a marker, escaping for each
//! markup, and list rendering.

/// The marker appended to text cut to fit a service's limit.
pub const TRUNCATED: &str = "… (truncated)";

/// `s` cut to at most `max` UTF-16 code units (the unit Telegram, Discord and Teams count in;
/// never fewer than the characters Slack and JIRA count), ending with [`TRUNCATED`] when cut.
/// Cuts on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if utf16_len(s) <= max {
        return s.to_owned();
    }
    let budget = max.saturating_sub(utf16_len(TRUNCATED));
    let mut used = 0;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        if used + c.len_utf16() > budget {
            break;
        }
        used += c.len_utf16();
        end = i + c.len_utf8();
    }
    format!("{}{TRUNCATED}", &s[..end])
}

/// Length in UTF-16 code units.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Escapes `&`, `<` and `>` (Slack mrkdwn and Telegram/Teams HTML text).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes Slack mrkdwn control characters (`&`, `<`, `>`; Slack's rules).
pub fn escape_slack(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// [`escape_slack`] of `s`, cut to at most `max` UTF-16 units (the cut marked as by
/// [`truncate`]) between characters of `s`: never inside an entity (`&amp;` cut to `&a`
/// shows as text).
pub fn escape_slack_within(s: &str, max: usize) -> String {
    let escaped = escape_slack(s);
    if utf16_len(&escaped) <= max {
        return escaped;
    }
    let budget = max.saturating_sub(utf16_len(TRUNCATED));
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let entity = match c {
            '&' => Some("&amp;"),
            '<' => Some("&lt;"),
            '>' => Some("&gt;"),
            _ => None,
        };
        let add = entity.map_or(c.len_utf16(), str::len);
        if used + add > budget {
            break;
        }
        used += add;
        match entity {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    out.push_str(TRUNCATED);
    out
}

/// Escapes Discord markdown (`\ * _ ~ ` | >` and `@` of mass mentions are neutralised by
/// `allowed_mentions`).
pub fn escape_discord(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Code text for markdown flavours: backticks inside are replaced by `ˋ` so the span cannot
/// be closed early.
pub fn code_text(s: &str) -> String {
    s.replace('`', "ˋ")
}

/// Builds text out of lines until adding the next one would pass `max` (UTF-16 units), then
/// ends with "… and N more", N counting the lines left out plus `more` (events that were
/// never listed). Each line is first cut to `max_line`.
pub fn lines_within(lines: &[String], max: usize, max_line: usize, more: u64) -> String {
    let overflow = |left: usize| {
        let n = left as u64 + more;
        (n > 0).then(|| format!("… and {n} more"))
    };
    let mut out = String::new();
    let mut left = 0;
    for (i, line) in lines.iter().enumerate() {
        let line = truncate(line, max_line);
        let tail = overflow(lines.len() - i - 1).map_or(0, |t| utf16_len(&t) + 1);
        if utf16_len(&out) + utf16_len(&line) + 1 + tail > max {
            left = lines.len() - i;
            break;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&line);
    }
    if let Some(t) = overflow(left) {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&t);
    }
    truncate(&out, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_the_limit_and_char_boundaries() {
        assert_eq!(truncate("short", 10), "short");
        let long = "é".repeat(100);
        let t = truncate(&long, 50);
        assert!(utf16_len(&t) <= 50 && t.ends_with(TRUNCATED), "{t}");
        let emoji = "😀".repeat(40); // 2 UTF-16 units each
        let t = truncate(&emoji, 30);
        assert!(utf16_len(&t) <= 30, "{}", utf16_len(&t));
    }

    #[test]
    fn escaping_neutralises_markup() {
        assert_eq!(
            escape_html("<b>&\"x\"</b>"),
            "&lt;b&gt;&amp;&quot;x&quot;&lt;/b&gt;"
        );
        assert_eq!(
            escape_slack("<!channel> & <@U1>"),
            "&lt;!channel&gt; &amp; &lt;@U1&gt;"
        );
        assert_eq!(
            escape_discord("*bold* _x_ `c`"),
            "\\*bold\\* \\_x\\_ \\`c\\`"
        );
    }

    #[test]
    fn line_lists_stop_with_an_overflow_line_inside_the_limit() {
        let lines: Vec<String> = (0..100).map(|i| format!("task-{i:03} failed")).collect();
        let text = lines_within(&lines, 200, 50, 0);
        assert!(utf16_len(&text) <= 200, "{}", text.len());
        assert!(text.starts_with("task-000 failed\n"));
        let shown = text.lines().count() - 1;
        assert!(
            text.ends_with(&format!("… and {} more", 100 - shown)),
            "{text}"
        );
        let few = lines_within(&lines[..2], 200, 50, 0);
        assert_eq!(few, "task-000 failed\ntask-001 failed");
        let unlisted = lines_within(&lines[..2], 200, 50, 10);
        assert_eq!(unlisted, "task-000 failed\ntask-001 failed\n… and 10 more");
    }
}
