//! Azure Pipelines logging commands: `##vso[task.logissue …]` and `##vso[task.uploadsummary]`.

use std::fmt::Write as _;
use std::path::Path;

use crate::run::{RunResult, TaskStatus};

/// Escapes a logging-command message (the part after `]`) as the agent's task library does:
/// `%` → `%AZP25`, `\r` → `%0D`, `\n` → `%0A`.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%AZP25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a logging-command property value: as [`escape_data`], plus `]` → `%5D` and
/// `;` → `%3B`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(']', "%5D").replace(';', "%3B")
}

/// Renders one `##vso[task.logissue type=error;…]` per failed or incomplete task and one
/// `type=warning` per flaky task, in creation order. `sourcepath` and `linenumber` come from
/// the task's `TaskCreated` metadata keys `file` and `line` when present; `code` is the error
/// kind.
pub fn render_azure_issues(run: &RunResult) -> String {
    let mut out = String::new();
    for task in &run.tasks {
        let level = match task.status {
            TaskStatus::Failed | TaskStatus::Incomplete => "error",
            TaskStatus::Flaky => "warning",
            _ => continue,
        };
        let mut props = vec![format!("type={level}")];
        if let Some(file) = task.metadata.get("file") {
            props.push(format!("sourcepath={}", escape_property(file)));
            if let Some(line) = task.metadata.get("line") {
                props.push(format!("linenumber={}", escape_property(line)));
            }
        }
        let failure = task.last_failure();
        if let Some(kind) = failure.and_then(|a| a.error_kind.as_deref()) {
            props.push(format!("code={}", escape_property(kind)));
        }
        let what = if level == "warning" {
            "is flaky"
        } else {
            "failed"
        };
        let detail = failure
            .and_then(|a| a.message.as_deref())
            .unwrap_or("the task did not finish before the run ended");
        let message = format!("{} {what}: {detail}", task.name);
        let _ = writeln!(
            out,
            "##vso[task.logissue {};]{}",
            props.join(";"),
            escape_data(&message)
        );
    }
    out
}

/// `##vso[task.uploadsummary]<path>`: attaches the Markdown file at `path` to the build's
/// summary page.
pub fn upload_summary_command(path: &Path) -> String {
    format!(
        "##vso[task.uploadsummary]{}\n",
        escape_data(&path.to_string_lossy())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_per_azure_rules() {
        assert_eq!(escape_data("100%;]\r\n"), "100%AZP25;]%0D%0A");
        assert_eq!(escape_property("a;b]c%\n"), "a%3Bb%5Dc%AZP25%0A");
        assert_eq!(
            upload_summary_command(Path::new("/tmp/s.md")),
            "##vso[task.uploadsummary]/tmp/s.md\n"
        );
    }
}
