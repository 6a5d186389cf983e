//! JUnit XML in the Jenkins/Ant dialect, valid against the `JUnit.xsd` of
//! windyroad/JUnit-Schema (the schema Jenkins' own parser follows).
//!
//! That schema shapes the output: it has no `flakyFailure`/`rerunFailure` (Surefire's rerun
//! elements), no per-case `properties` or `system-out`, and no attributes on `<testsuites>`.
//! So each worker's tasks form one `<testsuite>` whose `<properties>` carry the worker, the
//! run id and, for every task run more than once, `dtf.attempts.<case>`; the history of each
//! retried task (which attempt failed how) and the captured output go to the suite's
//! `<system-out>`. A flaky task is a passing `<testcase>`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use crate::run::{AttemptOutcome, RunResult, TaskResult, TaskStatus, format_utc};

/// The suite name for tasks that never reached a worker.
pub const UNASSIGNED_SUITE: &str = "unassigned";

/// Renders `run` as a JUnit XML document: one `<testsuite>` per worker (in order of first
/// appearance), one `<testcase>` per task.
///
/// Mapping: failed → `<failure>` when the test reported failure, `<error>` when the attempt
/// ended with an error (crash, timeout); incomplete → `<error type="Incomplete">`; skipped →
/// `<skipped>`; cancelled → `<skipped message="cancelled: …">`; flaky and passed → no child.
/// Case names are `name` with its last `::`/`.` segment as `name` and the rest as
/// `classname` (`dtf` when there is none); duplicates get a ` (2)`, ` (3)` … suffix.
pub fn render_junit(run: &RunResult) -> String {
    let mut groups: Vec<(String, Vec<&TaskResult>)> = Vec::new();
    for task in &run.tasks {
        let worker = task.worker().unwrap_or(UNASSIGNED_SUITE);
        match groups.iter_mut().find(|(w, _)| w == worker) {
            Some((_, tasks)) => tasks.push(task),
            None => groups.push((worker.to_owned(), vec![task])),
        }
    }
    let timestamp = format_utc(run.started_at.unwrap_or(std::time::UNIX_EPOCH));
    let mut seen = HashSet::new();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for (id, (worker, tasks)) in groups.iter().enumerate() {
        render_suite(&mut out, run, id, worker, tasks, &timestamp, &mut seen);
    }
    out.push_str("</testsuites>\n");
    out
}

fn render_suite(
    out: &mut String,
    run: &RunResult,
    id: usize,
    worker: &str,
    tasks: &[&TaskResult],
    timestamp: &str,
    seen: &mut HashSet<(String, String)>,
) {
    let mut cases = String::new();
    let mut properties = BTreeMap::new();
    properties.insert("worker".to_owned(), worker.to_owned());
    if let Some(run_id) = &run.run_id {
        properties.insert("run_id".to_owned(), run_id.clone());
    }
    let mut system_out = String::new();
    let (mut failures, mut errors, mut skipped) = (0usize, 0usize, 0usize);
    let mut time = Duration::ZERO;
    for task in tasks {
        let (classname, name) = case_name(task, seen);
        let full = format!("{classname}.{name}");
        time += task.total_duration();
        if task.attempts.len() > 1 {
            properties.insert(
                format!("dtf.attempts.{full}"),
                task.attempts.len().to_string(),
            );
            let _ = writeln!(
                system_out,
                "[{full}] {} after {} attempts:",
                task.status.name(),
                task.attempts.len()
            );
            for a in &task.attempts {
                let _ = writeln!(
                    system_out,
                    "  attempt {} on {}: {}{}",
                    a.number,
                    a.worker.as_deref().unwrap_or("-"),
                    a.outcome.name(),
                    a.message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                );
            }
        }
        for a in task.attempts.iter().filter(|a| !a.output.is_empty()) {
            let _ = writeln!(
                system_out,
                "=== output of {full}, attempt {} ===\n{}",
                a.number, a.output
            );
        }
        let _ = write!(
            cases,
            "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
            escape_attr(&name),
            escape_attr(&classname),
            secs(task.total_duration())
        );
        match task.status {
            TaskStatus::Passed | TaskStatus::Flaky => cases.push_str("/>\n"),
            TaskStatus::Skipped => {
                skipped += 1;
                cases.push_str(">\n      <skipped/>\n    </testcase>\n");
            }
            // Interrupted while it ran: the test did not pass, and a skip would hide that.
            TaskStatus::Cancelled if task.was_interrupted() => {
                errors += 1;
                let reason = task.cancel_reason.as_deref().unwrap_or_default();
                let _ = write!(
                    cases,
                    ">\n      <error type=\"Cancelled\" message=\"{}\"/>\n    </testcase>\n",
                    escape_attr(&format!("interrupted: {reason}"))
                );
            }
            TaskStatus::Cancelled => {
                skipped += 1;
                let reason = task.cancel_reason.as_deref().unwrap_or_default();
                let _ = write!(
                    cases,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                    escape_attr(&format!("cancelled: {reason}"))
                );
            }
            TaskStatus::Incomplete => {
                errors += 1;
                cases.push_str(
                    ">\n      <error type=\"Incomplete\" message=\"the task did not finish before \
                     the run ended\"/>\n    </testcase>\n",
                );
            }
            TaskStatus::Failed => {
                let last = task.last_failure();
                let element = if last.is_some_and(|a| a.outcome == AttemptOutcome::Errored) {
                    errors += 1;
                    "error"
                } else {
                    failures += 1;
                    "failure"
                };
                let message = last.and_then(|a| a.message.as_deref()).unwrap_or("failed");
                let kind = last
                    .and_then(|a| a.error_kind.as_deref())
                    .unwrap_or("Failure");
                let mut body = last.map(|a| a.details.clone()).unwrap_or_default();
                if let Some(output) = last.map(|a| a.output.as_str()).filter(|o| !o.is_empty()) {
                    if !body.is_empty() {
                        body.push('\n');
                    }
                    body.push_str(output);
                }
                let _ = write!(
                    cases,
                    ">\n      <{element} message=\"{}\" type=\"{}\">{}</{element}>\n    </testcase>\n",
                    escape_attr(message),
                    escape_attr(kind),
                    escape_text(&body)
                );
            }
        }
    }
    let suite = format!("dtf.{worker}");
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" package=\"{}\" id=\"{id}\" timestamp=\"{timestamp}\" \
         hostname=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" \
         skipped=\"{skipped}\" time=\"{}\">",
        escape_attr(&suite),
        escape_attr(&suite),
        escape_attr(&non_empty_token(worker, "localhost")),
        tasks.len(),
        secs(time)
    );
    out.push_str("    <properties>\n");
    for (name, value) in &properties {
        let _ = writeln!(
            out,
            "      <property name=\"{}\" value=\"{}\"/>",
            escape_attr(&non_empty_token(name, "property")),
            escape_attr(value)
        );
    }
    out.push_str("    </properties>\n");
    out.push_str(&cases);
    let _ = writeln!(
        out,
        "    <system-out>{}</system-out>",
        escape_text(&system_out)
    );
    out.push_str("    <system-err></system-err>\n  </testsuite>\n");
}

/// Splits a task name into `(classname, name)` and makes the pair unique within the report.
fn case_name(task: &TaskResult, seen: &mut HashSet<(String, String)>) -> (String, String) {
    let full = task.name.as_str();
    let (classname, name) = match full.rfind("::") {
        Some(i) if i > 0 && i + 2 < full.len() => (&full[..i], &full[i + 2..]),
        _ => match full.rfind('.') {
            Some(i) if i > 0 && i + 1 < full.len() => (&full[..i], &full[i + 1..]),
            _ => ("dtf", full),
        },
    };
    let classname = classname.to_owned();
    let mut candidate = name.to_owned();
    let mut n = 1;
    while !seen.insert((classname.clone(), candidate.clone())) {
        n += 1;
        candidate = format!("{name} ({n})");
    }
    (classname, candidate)
}

/// Seconds with millisecond precision, as `xs:decimal`.
fn secs(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// `s` if it holds something other than whitespace (the schema's tokens of minimum length 1),
/// else `fallback`.
fn non_empty_token(s: &str, fallback: &str) -> String {
    let cleaned: String = s.chars().filter(|c| is_xml_char(*c)).collect();
    if cleaned.trim().is_empty() {
        fallback.to_owned()
    } else {
        s.to_owned()
    }
}

/// Whether `c` may appear in an XML 1.0 document.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes `s` for XML character data: `&`, `<`, `>` and `\r` become references; characters
/// not allowed in XML 1.0 (most control characters, U+FFFE, U+FFFF) are dropped.
pub fn escape_text(s: &str) -> String {
    escape(s, false)
}

/// Escapes `s` for a double- or single-quoted XML attribute: as [`escape_text`], plus `"`,
/// `'`, tab and newline (which attribute normalisation would otherwise turn into spaces).
pub fn escape_attr(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, attr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            '"' if attr => out.push_str("&quot;"),
            '\'' if attr => out.push_str("&apos;"),
            '\n' if attr => out.push_str("&#10;"),
            '\t' if attr => out.push_str("&#9;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_strips_illegal_characters() {
        assert_eq!(
            escape_attr("a<b>&\"c'\n\t\r\u{0}\u{1b}\u{FFFE}z"),
            "a&lt;b&gt;&amp;&quot;c&apos;&#10;&#9;&#13;z"
        );
        assert_eq!(
            escape_text("x < y && ']]>'\n"),
            "x &lt; y &amp;&amp; ']]&gt;'\n"
        );
        assert_eq!(escape_text("emoji 🦀 stays"), "emoji 🦀 stays");
    }

    #[test]
    fn duplicate_case_names_get_a_suffix() {
        let mut seen = HashSet::new();
        let task = |name: &str| TaskResult {
            id: name.into(),
            name: name.into(),
            metadata: BTreeMap::new(),
            attempts: Vec::new(),
            status: TaskStatus::Passed,
            cancel_reason: None,
        };
        assert_eq!(
            case_name(&task("a::b::c"), &mut seen),
            ("a::b".into(), "c".into())
        );
        assert_eq!(
            case_name(&task("a::b::c"), &mut seen),
            ("a::b".into(), "c (2)".into())
        );
        assert_eq!(
            case_name(&task("a::b::c"), &mut seen),
            ("a::b".into(), "c (3)".into())
        );
        assert_eq!(
            case_name(&task("plain"), &mut seen),
            ("dtf".into(), "plain".into())
        );
        assert_eq!(
            case_name(&task("pkg.Class.m"), &mut seen),
            ("pkg.Class".into(), "m".into())
        );
    }
}
