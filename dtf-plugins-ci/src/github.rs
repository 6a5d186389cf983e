//! GitHub Actions: workflow-command annotations and the Markdown job summary.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::error::CiError;
use crate::markdown::render_markdown;
use crate::run::{RunResult, TaskResult, TaskStatus};

/// GitHub shows at most this many annotations of each type (error, warning, notice) per step.
pub const MAX_ANNOTATIONS_PER_TYPE: usize = 10;

/// GitHub rejects a job summary larger than this (1 MiB).
pub const STEP_SUMMARY_LIMIT: usize = 1024 * 1024;

/// The marker that ends a job summary cut to [`STEP_SUMMARY_LIMIT`].
pub const TRUNCATED_MARKER: &str =
    "\n\n**… summary truncated: GitHub limits job summaries to 1 MiB.**\n";

/// The longest annotation message, in characters, before it is cut.
const MAX_MESSAGE_CHARS: usize = 4000;

/// Renders annotations for `run`: `::error` for failed and incomplete tasks, `::warning` for
/// flaky ones, each type sorted by the time the task ended and capped at
/// [`MAX_ANNOTATIONS_PER_TYPE`], plus one `::notice` counting what was left out.
///
/// `file` and `line` come from the task's `TaskCreated` metadata keys `file` and `line`
/// when present. Every value is escaped ([`escape_data`], [`escape_property`]), so each
/// annotation is exactly one line and a task name or message cannot start a new command.
pub fn render_github_annotations(run: &RunResult) -> String {
    let mut out = String::new();
    let failed = by_end_time(run, |s| {
        matches!(s, TaskStatus::Failed | TaskStatus::Incomplete)
    });
    let flaky = by_end_time(run, |s| s == TaskStatus::Flaky);
    for task in failed.iter().take(MAX_ANNOTATIONS_PER_TYPE) {
        annotation(&mut out, "error", task, &format!("{} failed", task.name));
    }
    for task in flaky.iter().take(MAX_ANNOTATIONS_PER_TYPE) {
        annotation(
            &mut out,
            "warning",
            task,
            &format!("{} is flaky", task.name),
        );
    }
    let left_failed = failed.len().saturating_sub(MAX_ANNOTATIONS_PER_TYPE);
    let left_flaky = flaky.len().saturating_sub(MAX_ANNOTATIONS_PER_TYPE);
    if left_failed + left_flaky > 0 {
        let _ = writeln!(
            out,
            "::notice title=dtf::{left_failed} more failed and {left_flaky} more flaky tasks \
             were not annotated (GitHub shows {MAX_ANNOTATIONS_PER_TYPE} per type); see the job \
             summary or the JUnit report"
        );
    }
    out
}

fn by_end_time(run: &RunResult, want: impl Fn(TaskStatus) -> bool) -> Vec<&TaskResult> {
    let mut tasks: Vec<&TaskResult> = run.tasks.iter().filter(|t| want(t.status)).collect();
    // Tasks that never ended sort last; the sort is stable, so ties keep creation order.
    tasks.sort_by_key(|t| (t.finished_at().is_none(), t.finished_at()));
    tasks
}

fn annotation(out: &mut String, level: &str, task: &TaskResult, title: &str) {
    let mut props = Vec::new();
    if let Some(file) = task.metadata.get("file") {
        props.push(format!("file={}", escape_property(file)));
        if let Some(line) = task.metadata.get("line") {
            props.push(format!("line={}", escape_property(line)));
        }
    }
    props.push(format!("title={}", escape_property(title)));
    let mut message = match task.last_failure() {
        Some(a) => {
            let mut m = format!(
                "{}: {}",
                a.error_kind.as_deref().unwrap_or("error"),
                a.message.as_deref().unwrap_or_default()
            );
            if !a.details.is_empty() {
                m.push('\n');
                m.push_str(&a.details);
            }
            m
        }
        None => "the task did not finish before the run ended".to_owned(),
    };
    let _ = write!(
        message,
        "\n(worker {}, {} attempt(s))",
        task.worker().unwrap_or("-"),
        task.attempts.len()
    );
    if message.chars().count() > MAX_MESSAGE_CHARS {
        message = message.chars().take(MAX_MESSAGE_CHARS).collect();
        message.push('…');
    }
    let _ = writeln!(
        out,
        "::{level} {}::{}",
        props.join(","),
        escape_data(&message)
    );
}

/// Escapes a workflow-command message: `%` → `%25`, `\r` → `%0D`, `\n` → `%0A`.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a workflow-command property value: as [`escape_data`], plus `:` → `%3A` and
/// `,` → `%2C`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// The job summary: [`render_markdown`] cut to [`STEP_SUMMARY_LIMIT`] bytes (at a character
/// boundary, ending with [`TRUNCATED_MARKER`]).
pub fn render_github_summary(run: &RunResult) -> String {
    cap_summary(render_markdown(run), STEP_SUMMARY_LIMIT)
}

pub(crate) fn cap_summary(mut summary: String, limit: usize) -> String {
    if summary.len() <= limit {
        return summary;
    }
    let mut cut = limit.saturating_sub(TRUNCATED_MARKER.len());
    while !summary.is_char_boundary(cut) {
        cut -= 1;
    }
    summary.truncate(cut);
    summary.push_str(TRUNCATED_MARKER);
    summary
}

/// Appends [`render_markdown`] to `path` (the file `GITHUB_STEP_SUMMARY` names), creating it
/// if needed. GitHub drops a step's whole summary when the file is over
/// [`STEP_SUMMARY_LIMIT`], so the report is cut to the room the file has left (what the step
/// wrote before counts), ending with [`TRUNCATED_MARKER`]; with no room for even that, nothing
/// is appended (and a warning logged).
///
/// # Errors
///
/// [`CiError::Write`] if the file cannot be opened or written.
pub fn append_step_summary(path: &Path, run: &RunResult) -> Result<(), CiError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let used = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        // Room for the report and its final line break.
        let room = STEP_SUMMARY_LIMIT.saturating_sub(used).saturating_sub(1);
        if room < TRUNCATED_MARKER.len() {
            tracing::warn!(
                path = %path.display(),
                used,
                "the job summary file is full (GitHub's limit is 1 MiB): the report is not appended"
            );
            return Ok(());
        }
        let summary = cap_summary(render_markdown(run), room);
        file.write_all(summary.as_bytes())?;
        file.write_all(b"\n")
    };
    write().map_err(|source| CiError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_per_github_rules() {
        assert_eq!(escape_data("50%\r\n::x"), "50%25%0D%0A::x");
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");
    }

    #[test]
    fn caps_summary_at_a_char_boundary_with_a_marker() {
        let long = "é".repeat(100);
        let capped = cap_summary(long.clone(), 120);
        assert!(capped.len() <= 120, "{}", capped.len());
        assert!(capped.ends_with(TRUNCATED_MARKER));
        assert_eq!(cap_summary("short".into(), 120), "short");
    }

    /// The report goes in the room the step's summary file has left: file and report
    /// together stay within GitHub's 1 MiB (over it, GitHub shows no summary at all).
    #[test]
    fn the_step_summary_fits_in_what_the_file_has_left() {
        use dtf_plugin_core::prelude::*;
        let mut rec = crate::RunRecorder::new();
        let t0 = std::time::SystemTime::UNIX_EPOCH;
        let err = TaskError::builder()
            .kind("Panic")
            .message("x".repeat(150))
            .build();
        for i in 0..10_000 {
            let id = format!("t{i}");
            rec.record_kind(
                &EventKind::task_created(id.as_str(), format!("suite::case_{i}")),
                t0,
            );
            rec.record_kind(&EventKind::task_failed(id.as_str(), err.clone(), false), t0);
        }
        let run = rec.result();
        assert!(render_markdown(&run).len() > STEP_SUMMARY_LIMIT / 2);
        let path = std::env::temp_dir().join(format!("dtf-step-summary-{}", std::process::id()));
        std::fs::write(&path, "a".repeat(STEP_SUMMARY_LIMIT / 2 + 7)).unwrap();
        append_step_summary(&path, &run).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= STEP_SUMMARY_LIMIT, "{}", text.len());
        assert!(text.ends_with(&format!("{TRUNCATED_MARKER}\n")));
        // A full file gets nothing more.
        append_step_summary(&path, &run).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), text.len());
        std::fs::remove_file(&path).unwrap();
    }
}
