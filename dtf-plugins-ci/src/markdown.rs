//! The Markdown run report (also GitHub's job summary and Azure's uploaded summary) and the
//! JSON run report.

use std::fmt::Write as _;
use std::time::Duration;

use crate::error::CiError;
use crate::run::{RunResult, TaskResult, TaskStatus, Verdict};

/// How many characters of an error message a summary table shows.
const SHORT_ERROR_CHARS: usize = 200;

/// Renders `run` as Markdown: a headline, a table of totals, then tables of the failed,
/// incomplete and flaky tasks with their short errors.
///
/// Everything taken from the run is escaped for a table cell, so a task name can neither
/// break the table nor inject HTML: names and workers have `|`, `<`, `>`, `&` as references
/// and line breaks as spaces; errors and the run id are code spans, shown exactly as written
/// (no HTML escaping inside), with only `|` escaped and line breaks as spaces.
///
/// The headline is the run's [`verdict`](RunResult::verdict): passed, failed, cancelled (the
/// run was stopped) or timed out.
pub fn render_markdown(run: &RunResult) -> String {
    render(run, false)
}

/// [`render_markdown`] for a run still going (a check run's live summary): the headline says
/// it is running, and the tasks that have not ended yet are counted, not listed as
/// incomplete.
#[cfg_attr(
    not(feature = "api"),
    allow(dead_code, reason = "only the API clients report live")
)]
pub(crate) fn render_progress(run: &RunResult) -> String {
    render(run, true)
}

fn render(run: &RunResult, live: bool) -> String {
    let t = &run.totals;
    let mut out = String::new();
    let verdict = match run.verdict() {
        _ if live => "⏳ running",
        Verdict::Passed => "✅ passed",
        Verdict::Cancelled => "⏹️ cancelled",
        Verdict::TimedOut => "⏱️ timed out",
        _ => "❌ failed",
    };
    let _ = writeln!(out, "## dtf test run: {verdict}\n");
    if let Some(id) = &run.run_id {
        let _ = writeln!(out, "Run {}.\n", code_span(id));
    }
    let unfinished = if live { "Not done yet" } else { "Incomplete" };
    let _ = writeln!(
        out,
        "| Tasks | Passed | Failed | Flaky | Skipped | Cancelled | {unfinished} | Attempts | Wall time |"
    );
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        t.tasks,
        t.passed,
        t.failed,
        t.flaky,
        t.skipped,
        t.cancelled,
        t.incomplete,
        t.attempts,
        human(run.wall_time)
    );
    section(&mut out, run, TaskStatus::Failed, "Failed tasks");
    if !live {
        section(&mut out, run, TaskStatus::Incomplete, "Incomplete tasks");
    }
    section(&mut out, run, TaskStatus::Cancelled, "Cancelled tasks");
    section(
        &mut out,
        run,
        TaskStatus::Flaky,
        "Flaky tasks (failed, then passed on a retry)",
    );
    out
}

fn section(out: &mut String, run: &RunResult, status: TaskStatus, title: &str) {
    let tasks: Vec<&TaskResult> = run.tasks.iter().filter(|t| t.status == status).collect();
    if tasks.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n### {title}\n");
    out.push_str("| Task | Worker | Attempts | Error |\n| --- | --- | ---: | --- |\n");
    for task in tasks {
        let error = match task.cancel_reason.as_deref() {
            Some(reason) if status == TaskStatus::Cancelled => {
                let what = if task.was_interrupted() {
                    "interrupted"
                } else {
                    "not run"
                };
                format!("{what}: {reason}")
            }
            _ => task
                .last_failure()
                .map(|a| {
                    let kind = a.error_kind.as_deref().unwrap_or("error");
                    format!("{kind}: {}", a.message.as_deref().unwrap_or_default())
                })
                .unwrap_or_else(|| "did not finish".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&task.name),
            cell(task.worker().unwrap_or("-")),
            task.attempts.len(),
            code_span(&short(&error, SHORT_ERROR_CHARS))
        );
    }
}

/// The first line of `s`, cut with an ellipsis to `max` characters at most, the ellipsis
/// included (services refuse a longer value).
pub(crate) fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() <= max && line.len() == s.trim_end().len() {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Escapes `s` for a Markdown table cell.
pub(crate) fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => out.push_str("&#124;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\r' | '\n' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// `s` as a Markdown code span for a table cell: shown exactly as written, so no HTML
/// escaping inside (`>&2` stays `>&2`; Markdown does not read HTML in a code span). Only what
/// would break out is changed: `|` becomes `\|` (GFM tables split cells on `|` even inside code
/// spans), line breaks become spaces, other control characters are dropped, and the fence is
/// one backtick longer than the longest run of backticks inside (padded with a space when the
/// text starts or ends with one).
pub(crate) fn code_span(s: &str) -> String {
    let mut body = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '|' => body.push_str("\\|"),
            '\r' | '\n' => body.push(' '),
            c if c.is_control() => {}
            c => body.push(c),
        }
    }
    if body.is_empty() {
        return String::new();
    }
    let mut longest = 0;
    let mut run = 0;
    for c in body.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if body.starts_with('`') || body.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{body}{pad}{fence}")
}

/// `1m 02.500s`, `3.250s`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{}m {:02}.{:03}s", secs / 60, secs % 60, d.subsec_millis())
    } else {
        format!("{secs}.{:03}s", d.subsec_millis())
    }
}

/// Renders `run` as pretty-printed JSON (the [`RunResult`] fields; durations in seconds as
/// `*_secs`, times as UTC `YYYY-MM-DDTHH:MM:SSZ`).
///
/// # Errors
///
/// [`CiError::Json`] if serialization fails (it does not for the types of this crate).
pub fn render_json(run: &RunResult) -> Result<String, CiError> {
    Ok(serde_json::to_string_pretty(run)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_tables_or_inject_html() {
        assert_eq!(cell("a|b\n<script>&"), "a&#124;b &lt;script&gt;&amp;");
    }

    #[test]
    fn code_spans_show_text_as_written_and_cannot_break_out() {
        assert_eq!(code_span("echo oops >&2"), "`echo oops >&2`");
        assert_eq!(code_span("<b>a|b</b>\nc"), "`<b>a\\|b</b> c`");
        assert_eq!(code_span("a `b` c"), "``a `b` c``");
        assert_eq!(code_span("`x``"), "``` `x`` ```");
        assert_eq!(code_span(""), "");
        assert_eq!(short("first\nsecond", 10), "first…");
        assert_eq!(short("abcdef", 3), "ab…");
        assert_eq!(short("abc", 3), "abc");
        assert_eq!(human(Duration::from_millis(62_500)), "1m 02.500s");
    }
}
