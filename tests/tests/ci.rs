//! The CI integration: the JUnit report against the Jenkins JUnit schema (with `xmllint`
//! when it is installed), snapshots of every rendered dialect, escaping property tests with
//! an independent decoder per dialect, and both plugins on a real plugin manager.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "in tests, a failed unwrap is a failed test"
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dtf_plugin_core::event::{EventMeta, TaskCompleted, TaskCreated, TaskFailed};
use dtf_plugin_core::prelude::*;
use dtf_plugins_ci::{
    CiReporter, RunRecorder, RunResult, TaskReporter, TaskStatus, TeamcityLive, azure, github,
    junit, render_azure_issues, render_github_annotations, render_junit, render_markdown,
    render_teamcity,
};
use proptest::prelude::*;

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/junit/JUnit.xsd");

fn at(secs: u64) -> SystemTime {
    // 2026-11-26T00:00:00Z.
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_651_200 + secs)
}

fn event(seq: u64, time: SystemTime, kind: EventKind) -> Event {
    Event {
        meta: EventMeta {
            seq,
            time,
            source: "test".into(),
        },
        kind,
    }
}

/// Records `kinds` one second apart.
fn record(kinds: Vec<EventKind>) -> RunResult {
    let mut rec = RunRecorder::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        rec.record(&event(i as u64 + 1, at(i as u64), kind));
    }
    rec.result()
}

fn error(kind: &str, message: &str, details: &str) -> TaskError {
    TaskError::builder()
        .kind(kind)
        .message(message)
        .details(details)
        .build()
}

fn failed(task: &str, worker: &str, attempt: u32, err: TaskError, retryable: bool) -> EventKind {
    EventKind::TaskFailed(Box::new(
        TaskFailed::builder()
            .task(task)
            .worker(worker)
            .attempt(attempt)
            .error(err)
            .retryable(retryable)
            .build(),
    ))
}

fn completed(
    task: &str,
    worker: &str,
    attempt: u32,
    outcome: TaskOutcome,
    ms: u64,
    output: &str,
) -> EventKind {
    EventKind::TaskCompleted(Box::new(
        TaskCompleted::builder()
            .task(task)
            .worker(worker)
            .attempt(attempt)
            .outcome(outcome)
            .duration(Duration::from_millis(ms))
            .output(output)
            .build(),
    ))
}

/// A small run: one pass, one assertion failure, one skip.
fn small_run() -> RunResult {
    record(vec![
        EventKind::coordinator_startup("run-1"),
        EventKind::task_created("t1", "math::adds"),
        EventKind::task_created("t2", "math::divides"),
        EventKind::task_created("t3", "math::slow"),
        completed("t1", "w1", 1, TaskOutcome::Passed, 1500, ""),
        completed("t2", "w1", 1, TaskOutcome::Failed, 250, "left: 1\nright: 2"),
        completed("t3", "w2", 1, TaskOutcome::Skipped, 0, ""),
        EventKind::coordinator_shutdown(ShutdownReason::Completed),
    ])
}

/// Everything at once: failures, errors, skips, cancellations, retries, a lost worker, an
/// unfinished task, duplicate names, and names and messages full of markup and control
/// characters.
fn rich_run() -> RunResult {
    let nasty =
        "it <breaks> & \"quotes\" 'apostrophes'\u{0}\u{1b}[31m\u{7}\r\n]]> %0A ::error::x |[';";
    let with_file = TaskCreated::builder()
        .task("t-file")
        .name("src/lib.rs::parses")
        .metadata(BTreeMap::from([
            ("file".to_owned(), "src/lib.rs".to_owned()),
            ("line".to_owned(), "42".to_owned()),
        ]))
        .build();
    record(vec![
        EventKind::coordinator_startup("run <&> 7"),
        EventKind::worker_registered("w1", Capabilities::default()),
        EventKind::worker_registered("w<2>", Capabilities::default()),
        EventKind::task_created("pass", "suite::passes"),
        EventKind::task_created("fail", "suite::fails"),
        EventKind::TaskCreated(Box::new(with_file)),
        EventKind::task_created("nasty", format!("suite::{nasty}")),
        EventKind::task_created("dup1", "suite::twice"),
        EventKind::task_created("dup2", "suite::twice"),
        EventKind::task_created("flaky", "suite::flaky"),
        EventKind::task_created("skip", "suite::skipped"),
        EventKind::task_created("cancel", "suite::cancelled"),
        EventKind::task_created("hang", "suite::hangs"),
        EventKind::task_created("unsched", "suite::needs_gpu"),
        completed("pass", "w1", 1, TaskOutcome::Passed, 1200, "all good"),
        EventKind::task_started("fail", "w1", 1),
        completed(
            "fail",
            "w1",
            1,
            TaskOutcome::Failed,
            300,
            "assertion failed",
        ),
        failed(
            "t-file",
            "w<2>",
            1,
            error("Panic", "index out of bounds", "at src/lib.rs:42"),
            false,
        ),
        EventKind::task_started("nasty", "w<2>", 1),
        failed("nasty", "w<2>", 1, error(nasty, nasty, nasty), false),
        completed("dup1", "w1", 1, TaskOutcome::Passed, 10, ""),
        completed("dup2", "w1", 1, TaskOutcome::Passed, 10, ""),
        EventKind::task_assigned("flaky", "w1", 1),
        EventKind::task_started("flaky", "w1", 1),
        EventKind::worker_failed("w1", "oom"),
        EventKind::task_assigned("flaky", "w<2>", 1),
        EventKind::task_started("flaky", "w<2>", 1),
        failed("flaky", "w<2>", 1, error("Timeout", "took 30s", ""), true),
        EventKind::task_assigned("flaky", "w<2>", 2),
        completed(
            "flaky",
            "w<2>",
            2,
            TaskOutcome::Passed,
            800,
            "second time lucky",
        ),
        completed("skip", "w1", 1, TaskOutcome::Skipped, 0, ""),
        EventKind::task_assigned("cancel", "w1", 1),
        EventKind::task_cancelled("cancel", "fail-fast <stop>"),
        EventKind::task_started("hang", "w1", 1),
        EventKind::task_failed(
            "unsched",
            error("Unschedulable", "no worker has cuda", ""),
            false,
        ),
        EventKind::coordinator_shutdown(ShutdownReason::Completed),
    ])
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtf-ci-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Whether xmllint is installed. Under CI (`CI=true`, set by the CI runner) it must be:
/// `.ci/run` installs it, and a silently skipped schema check would prove nothing.
fn xmllint_available() -> bool {
    let found = Command::new("xmllint").arg("--version").output().is_ok();
    if !found && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("xmllint is required under CI (apt-get install libxml2-utils)");
    }
    found
}

/// Validates `file` against the JUnit schema with xmllint, if installed; returns whether it
/// ran.
fn validate_with_xmllint(file: &Path) -> bool {
    if !xmllint_available() {
        eprintln!("notice: xmllint is not on PATH; skipping the JUnit schema validation");
        return false;
    }
    let out = Command::new("xmllint")
        .args(["--noout", "--schema", SCHEMA])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xmllint rejected {}:\n{}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    true
}

#[test]
fn records_the_rich_run() {
    let run = rich_run();
    let status = |id: &str| run.tasks.iter().find(|t| t.id == id).map(|t| t.status);
    assert_eq!(status("pass"), Some(TaskStatus::Passed));
    assert_eq!(status("fail"), Some(TaskStatus::Failed));
    assert_eq!(status("flaky"), Some(TaskStatus::Flaky));
    assert_eq!(status("skip"), Some(TaskStatus::Skipped));
    assert_eq!(status("cancel"), Some(TaskStatus::Cancelled));
    assert_eq!(status("hang"), Some(TaskStatus::Incomplete));
    assert_eq!(status("unsched"), Some(TaskStatus::Failed));
    let t = run.totals;
    assert_eq!((t.tasks, t.passed, t.failed, t.flaky), (11, 3, 4, 1));
    assert_eq!((t.skipped, t.cancelled, t.incomplete), (1, 1, 1));
    assert_eq!(run.wall_time, Duration::from_secs(35));
}

#[test]
fn junit_snapshot_of_a_small_run() {
    let xml = render_junit(&small_run());
    let expected = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="dtf.w1" package="dtf.w1" id="0" timestamp="2026-11-26T00:00:00" hostname="w1" tests="2" failures="1" errors="0" skipped="0" time="1.750">
    <properties>
      <property name="run_id" value="run-1"/>
      <property name="worker" value="w1"/>
    </properties>
    <testcase name="adds" classname="math" time="1.500"/>
    <testcase name="divides" classname="math" time="0.250">
      <failure message="the test reported failure" type="TestFailure">left: 1
right: 2</failure>
    </testcase>
    <system-out>=== output of math.divides, attempt 1 ===
left: 1
right: 2
</system-out>
    <system-err></system-err>
  </testsuite>
  <testsuite name="dtf.w2" package="dtf.w2" id="1" timestamp="2026-11-26T00:00:00" hostname="w2" tests="1" failures="0" errors="0" skipped="1" time="0.000">
    <properties>
      <property name="run_id" value="run-1"/>
      <property name="worker" value="w2"/>
    </properties>
    <testcase name="slow" classname="math" time="0.000">
      <skipped/>
    </testcase>
    <system-out></system-out>
    <system-err></system-err>
  </testsuite>
</testsuites>
"#;
    assert_eq!(xml, expected);
}

#[test]
fn junit_rich_report_is_well_formed_and_valid_against_the_schema() {
    let xml = render_junit(&rich_run());
    check_xml(&xml);
    // Unique case names, retries and the lost worker recorded where the schema allows.
    assert!(
        xml.contains(r#"<testcase name="twice" classname="suite""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="twice (2)" classname="suite""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<property name="dtf.attempts.suite.flaky" value="3"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains("[suite.flaky] flaky after 3 attempts:"),
        "{xml}"
    );
    assert!(
        xml.contains("attempt 1 on w&lt;2&gt;: errored: took 30s"),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<skipped message="cancelled: fail-fast &lt;stop&gt;"/>"#),
        "{xml}"
    );
    assert!(xml.contains(r#"<error type="Incomplete""#), "{xml}");
    assert!(
        xml.contains(r#"<error message="no worker has cuda" type="Unschedulable"></error>"#),
        "{xml}"
    );
    assert!(xml.contains(r#"<testsuite name="dtf.unassigned""#), "{xml}");
    assert!(!xml.contains('\u{0}') && !xml.contains('\u{1b}') && !xml.contains('\u{7}'));

    let file = temp_path("rich-junit.xml");
    std::fs::write(&file, &xml).unwrap();
    validate_with_xmllint(&file);
}

#[test]
fn xmllint_rejects_an_invalid_report() {
    // The schema check must be able to fail: a testcase without `time` is invalid.
    let file = temp_path("invalid-junit.xml");
    let xml = render_junit(&small_run()).replace(r#" time="1.500""#, "");
    std::fs::write(&file, xml).unwrap();
    if !xmllint_available() {
        eprintln!("notice: xmllint is not on PATH; skipping the JUnit schema validation");
        return;
    }
    let out = Command::new("xmllint")
        .args(["--noout", "--schema", SCHEMA])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn github_annotations_snapshot_and_cap() {
    let out = render_github_annotations(&small_run());
    assert_eq!(
        out,
        "::error title=math%3A%3Adivides failed::TestFailure: the test reported failure%0A(worker w1, 1 attempt(s))\n"
    );

    let rich = render_github_annotations(&rich_run());
    assert!(
        rich.contains("::error file=src/lib.rs,line=42,title=src/lib.rs%3A%3Aparses failed::Panic: index out of bounds%0Aat src/lib.rs:42%0A(worker w<2>, 1 attempt(s))\n"),
        "{rich}"
    );
    assert!(
        rich.contains("::warning title=suite%3A%3Aflaky is flaky::Timeout: took 30s"),
        "{rich}"
    );

    // Fifteen failures: the first ten by end time are annotated, the rest counted.
    let mut kinds = Vec::new();
    for i in 0..15 {
        kinds.push(EventKind::task_created(
            format!("t{i}"),
            format!("case{i:02}"),
        ));
    }
    for i in (0..15).rev() {
        kinds.push(completed(
            &format!("t{i}"),
            "w",
            1,
            TaskOutcome::Failed,
            1,
            "",
        ));
    }
    let capped = render_github_annotations(&record(kinds));
    let lines: Vec<&str> = capped.lines().collect();
    assert_eq!(lines.len(), 11, "{capped}");
    assert!(lines[0].contains("title=case14 failed"), "{capped}");
    assert!(lines[9].contains("title=case05 failed"), "{capped}");
    assert!(
        lines[10].starts_with("::notice title=dtf::5 more failed and 0 more flaky tasks"),
        "{capped}"
    );
}

#[test]
fn github_summary_is_markdown_under_the_limit() {
    let md = render_markdown(&rich_run());
    assert!(md.starts_with("## dtf test run: ❌ failed\n"), "{md}");
    assert!(md.contains("| 11 | 3 | 4 | 1 | 1 | 1 | 1 |"), "{md}");
    assert!(md.contains("### Failed tasks"), "{md}");
    assert!(
        md.contains("| src/lib.rs::parses | w&lt;2&gt; | 1 | `Panic: index out of bounds` |"),
        "{md}"
    );
    assert!(md.contains("### Flaky tasks"), "{md}");
    // HTML only ever appears inside code spans, where Markdown shows it as text.
    assert!(
        md.contains("| suite::it &lt;breaks&gt; &amp; \"quotes\""),
        "{md}"
    );
    assert!(
        md.contains("| `it <breaks> & \"quotes\" 'apostrophes'[31m…` |"),
        "{md}"
    );
    assert_eq!(md.matches("<breaks>").count(), 1, "{md}");

    let path = temp_path("step-summary.md");
    std::fs::write(&path, "previous step\n").unwrap();
    github::append_step_summary(&path, &small_run()).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.starts_with("previous step\n## dtf test run: ❌ failed"),
        "{written}"
    );

    // A huge run is cut to GitHub's 1 MiB with a marker.
    let mut kinds = Vec::new();
    for i in 0..6000 {
        kinds.push(EventKind::task_created(
            format!("t{i}"),
            format!("{i}{}", "x".repeat(150)),
        ));
        kinds.push(failed(
            &format!("t{i}"),
            "w",
            1,
            error("E", &"m".repeat(300), ""),
            false,
        ));
    }
    let summary = dtf_plugins_ci::render_github_summary(&record(kinds));
    assert!(summary.len() <= github::STEP_SUMMARY_LIMIT);
    assert!(summary.ends_with(github::TRUNCATED_MARKER));
}

#[test]
fn teamcity_snapshot() {
    assert_eq!(
        render_teamcity(&small_run()),
        "##teamcity[testRetrySupport enabled='true']\n\
         ##teamcity[testStarted name='math::adds' captureStandardOutput='false' flowId='t1']\n\
         ##teamcity[testFinished name='math::adds' duration='1500' flowId='t1']\n\
         ##teamcity[testStarted name='math::divides' captureStandardOutput='false' flowId='t2']\n\
         ##teamcity[testFailed name='math::divides' message='TestFailure: the test reported failure' details='left: 1|nright: 2' flowId='t2']\n\
         ##teamcity[testFinished name='math::divides' duration='250' flowId='t2']\n\
         ##teamcity[testStarted name='math::slow' captureStandardOutput='false' flowId='t3']\n\
         ##teamcity[testIgnored name='math::slow' message='skipped' flowId='t3']\n\
         ##teamcity[testFinished name='math::slow' duration='0' flowId='t3']\n"
    );
    for line in render_teamcity(&rich_run()).lines() {
        parse_teamcity(line).unwrap_or_else(|| panic!("unparsable: {line}"));
    }
}

#[test]
fn azure_snapshot() {
    assert_eq!(
        render_azure_issues(&small_run()),
        "##vso[task.logissue type=error;code=TestFailure;]math::divides failed: the test reported failure\n"
    );
    let rich = render_azure_issues(&rich_run());
    assert!(
        rich.contains("##vso[task.logissue type=error;sourcepath=src/lib.rs;linenumber=42;code=Panic;]src/lib.rs::parses failed: index out of bounds\n"),
        "{rich}"
    );
    assert!(
        rich.contains(
            "##vso[task.logissue type=warning;code=Timeout;]suite::flaky is flaky: took 30s\n"
        ),
        "{rich}"
    );
    assert_eq!(rich.lines().count(), 6, "{rich}");
}

#[test]
fn json_report_has_the_run() {
    let json: serde_json::Value =
        serde_json::from_str(&dtf_plugins_ci::render_json(&small_run()).unwrap()).unwrap();
    assert_eq!(json["run_id"], "run-1");
    assert_eq!(json["totals"]["failed"], 1);
    assert_eq!(json["wall_time_secs"], 7.0);
    assert_eq!(json["started_at"], "2026-11-26T00:00:00Z");
    assert_eq!(json["tasks"][1]["status"], "failed");
    assert_eq!(json["tasks"][1]["attempts"][0]["duration_secs"], 0.25);
}

// ---------------------------------------------------------------------------------------
// Independent decoders, written from each service's documentation, not from the encoders.

fn decode_percent(s: &str, table: &[(&str, char)]) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '%' {
            let (code, ch) = table.iter().find(|(code, _)| rest.starts_with(code))?;
            out.push(*ch);
            rest = &rest[code.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(out)
}

const GITHUB_CODES: &[(&str, char)] = &[
    ("%25", '%'),
    ("%0D", '\r'),
    ("%0A", '\n'),
    ("%3A", ':'),
    ("%2C", ','),
];
const AZURE_CODES: &[(&str, char)] = &[
    ("%AZP25", '%'),
    ("%0D", '\r'),
    ("%0A", '\n'),
    ("%5D", ']'),
    ("%3B", ';'),
];

/// A parsed command: name, properties, data.
type Command3 = (String, Vec<(String, String)>, String);

/// `::cmd k=v,k=v::data` → (cmd, props, data), as the runner parses it.
fn parse_github(line: &str) -> Option<Command3> {
    let body = line.strip_prefix("::")?;
    let (head, data) = body.split_once("::")?;
    let (cmd, props) = head.split_once(' ').unwrap_or((head, ""));
    let props = props
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.to_owned(), decode_percent(v, GITHUB_CODES)?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((
        cmd.to_owned(),
        props,
        decode_percent(data, &GITHUB_CODES[..3])?,
    ))
}

/// `##vso[area.cmd k=v;k=v;]data` → (cmd, props, data), as the agent parses it.
fn parse_azure(line: &str) -> Option<Command3> {
    let body = line.strip_prefix("##vso[")?;
    let (head, data) = body.split_once(']')?;
    let (cmd, props) = head.split_once(' ').unwrap_or((head, ""));
    let props = props
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=')?;
            Some((k.to_owned(), decode_percent(v, AZURE_CODES)?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((
        cmd.to_owned(),
        props,
        decode_percent(data, &AZURE_CODES[..3])?,
    ))
}

/// `##teamcity[name k='v' k='v']` → (name, attributes), decoding `|` escapes; `None` unless
/// the whole line is consumed.
fn parse_teamcity(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let body = line.strip_prefix("##teamcity[")?;
    let name_end = body.find([' ', ']'])?;
    let name = body[..name_end].to_owned();
    let mut chars = body[name_end..].chars().peekable();
    let mut attrs = Vec::new();
    loop {
        match chars.next()? {
            ']' => return chars.next().is_none().then_some((name, attrs)),
            ' ' => {}
            _ => return None,
        }
        let mut key = String::new();
        loop {
            match chars.next()? {
                '=' => break,
                c => key.push(c),
            }
        }
        if chars.next()? != '\'' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\'' => break,
                '|' => match chars.next()? {
                    'n' => value.push('\n'),
                    'r' => value.push('\r'),
                    c @ ('|' | '\'' | '[' | ']') => value.push(c),
                    '0' => {
                        if chars.next()? != 'x' {
                            return None;
                        }
                        let hex: String = (0..4).map(|_| chars.next()).collect::<Option<_>>()?;
                        value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    _ => return None,
                },
                c if c.is_control() => return None,
                c => value.push(c),
            }
        }
        attrs.push((key, value));
    }
}

/// A tolerant XML check: every tag is well formed with quoted attributes, no `<` or raw `&`
/// appears in text or attribute values, no character illegal in XML 1.0 appears at all.
/// Returns the decoded attribute values.
fn check_xml(xml: &str) -> Vec<String> {
    fn decode_entities(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('&') {
            out.push_str(&rest[..i]);
            let end = rest[i..]
                .find(';')
                .unwrap_or_else(|| panic!("bare & in {s:?}"))
                + i;
            let entity = &rest[i + 1..end];
            let c = match entity {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                e => {
                    let n = e
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("unknown entity &{e};"));
                    char::from_u32(n.parse().unwrap()).unwrap()
                }
            };
            out.push(c);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }
    for c in xml.chars() {
        assert!(junit::is_xml_char(c), "illegal character {c:?} in {xml}");
    }
    let mut values = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        decode_entities(&rest[..open]); // text: panics on a bare `&`
        assert!(
            !rest[..open].contains('>'),
            "raw `>` in text: {}",
            &rest[..open]
        );
        let close = rest[open..].find('>').expect("unclosed tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "`<` inside a tag: {tag}");
        // Attributes: name="value" pairs after the element name.
        let mut attrs = tag.trim_end_matches(['/', '?']);
        attrs = attrs.split_once(' ').map_or("", |(_, a)| a);
        let mut a = attrs.trim();
        while !a.is_empty() {
            let (name, after) = a
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad attribute in {tag}"));
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{tag}"
            );
            let end = after.find('"').expect("unterminated attribute");
            values.push(decode_entities(&after[..end]));
            a = after[end + 1..].trim_start();
        }
        rest = &rest[close + 1..];
    }
    values
}

fn interesting() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 ]{1,5}",
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just("\r\n".to_owned()),
        Just("]".to_owned()),
        Just("[".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("|".to_owned()),
        Just("%".to_owned()),
        Just("%25".to_owned()),
        Just("%0A".to_owned()),
        Just("%AZP25".to_owned()),
        Just(";".to_owned()),
        Just("::".to_owned()),
        Just(",".to_owned()),
        Just("<".to_owned()),
        Just("&".to_owned()),
        Just("&amp;".to_owned()),
        Just("]]>".to_owned()),
        Just("##vso[task.complete result=Failed]".to_owned()),
        Just("##teamcity[buildStop]".to_owned()),
        "[\u{0}-\u{1f}\u{7f}-\u{9f}\u{2028}\u{2029}\u{FFFE}\u{FFFF}]",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn github_commands_round_trip(prop in interesting(), data in interesting()) {
        let line = format!("::error title={}::{}", github::escape_property(&prop), github::escape_data(&data));
        prop_assert!(!line.contains(['\n', '\r']));
        let (cmd, props, decoded) = parse_github(&line).unwrap();
        prop_assert_eq!(cmd, "error");
        prop_assert_eq!(props, vec![("title".to_owned(), prop.clone())]);
        prop_assert_eq!(&decoded, &data);

        // Through the renderer: a task named `prop` failing with message `data`.
        let run = record(vec![
            EventKind::task_created("t", prop.clone()),
            failed("t", "w", 1, error("E", &data, ""), false),
        ]);
        let out = render_github_annotations(&run);
        prop_assert_eq!(out.matches('\n').count(), 1);
        let (_, props, msg) = parse_github(out.trim_end_matches('\n')).unwrap();
        prop_assert_eq!(&props[0].1, &format!("{prop} failed"));
        prop_assert!(msg.starts_with(&format!("E: {data}")), "{:?}", msg);
    }

    #[test]
    fn azure_commands_round_trip(prop in interesting(), data in interesting()) {
        let line = format!("##vso[task.logissue type=error;code={};]{}", azure::escape_property(&prop), azure::escape_data(&data));
        prop_assert!(!line.contains(['\n', '\r']));
        let (cmd, props, decoded) = parse_azure(&line).unwrap();
        prop_assert_eq!(cmd, "task.logissue");
        prop_assert_eq!(props, vec![("type".to_owned(), "error".to_owned()), ("code".to_owned(), prop.clone())]);
        prop_assert_eq!(&decoded, &data);

        let run = record(vec![
            EventKind::task_created("t", data.clone()),
            failed("t", "w", 1, error(&prop, &data, ""), false),
        ]);
        let out = render_azure_issues(&run);
        prop_assert_eq!(out.matches('\n').count(), 1);
        let (_, props, msg) = parse_azure(out.trim_end_matches('\n')).unwrap();
        prop_assert_eq!(&props[1].1, &prop);
        prop_assert_eq!(msg, format!("{data} failed: {data}"));
    }

    #[test]
    fn teamcity_messages_round_trip(name in interesting(), message in interesting(), task in interesting()) {
        let run = record(vec![
            EventKind::task_created(task.clone(), name.clone()),
            EventKind::task_started(task.clone(), "w1", 1),
            failed(&task, "w1", 1, error("E", &message, &message), false),
        ]);
        let out = render_teamcity(&run);
        prop_assert_eq!(out.matches('\n').count(), 4);
        let (first, _) = parse_teamcity(out.lines().next().unwrap()).unwrap();
        prop_assert_eq!(first, "testRetrySupport");
        for line in out.lines().skip(1) {
            prop_assert!(!line.contains('\r'));
            let (_, attrs) = parse_teamcity(line).unwrap();
            prop_assert_eq!(&attrs[0], &("name".to_owned(), name.clone()));
            // Each task is its own flow.
            prop_assert_eq!(&attrs.last().unwrap().1, &task);
        }
        let (cmd, attrs) = parse_teamcity(out.lines().nth(2).unwrap()).unwrap();
        prop_assert_eq!(cmd, "testFailed");
        prop_assert_eq!(&attrs[1].1, &format!("E: {message}"));
        prop_assert_eq!(&attrs[2].1, &message);
    }

    #[test]
    fn junit_never_lets_markup_through(name in interesting(), message in interesting(), worker in interesting()) {
        let run = record(vec![
            EventKind::task_created("t", name),
            EventKind::task_started("t", worker.clone(), 1),
            failed("t", &worker, 1, error(&message, &message, &message), false),
        ]);
        let xml = render_junit(&run);
        let values = check_xml(&xml);
        let clean: String = message.chars().filter(|c| junit::is_xml_char(*c)).collect();
        prop_assert!(values.contains(&clean), "{:?} not in {:?}", clean, values);
        prop_assert_eq!(xml.matches("<testcase ").count(), 1);
        prop_assert_eq!(xml.matches("<error ").count(), 1);
    }
}

// ---------------------------------------------------------------------------------------
// CI-safe plain output: reference parsers of what each CI runner reads as a command.
//
// They are stricter than the real runners (any command name counts, Azure and TeamCity
// markers count anywhere in a line and in any case), so 0 here means 0 there.

/// Lines as a runner reads them: split at `\r\n`, `\r` and `\n`.
fn runner_lines(out: &str) -> impl Iterator<Item = &str> {
    out.split('\n').flat_map(|l| l.split('\r'))
}

/// What a runner may skip before a command: whitespace and invisible format characters.
fn trim_runner(line: &str) -> &str {
    line.trim_start_matches(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{AD}'
            )
    })
}

/// GitHub Actions: `::name …::data` (workflow commands, v2) or `##[name …]data` (v1) at the
/// start of a line after leading whitespace (the runner's `ActionCommand.TryParseV2` and
/// `TryParse`).
fn github_command_count(out: &str) -> usize {
    runner_lines(out)
        .map(trim_runner)
        .filter(|l| {
            l.strip_prefix("::").is_some_and(|rest| rest.contains("::"))
                || l.strip_prefix("##[").is_some_and(|rest| rest.contains(']'))
        })
        .count()
}

/// Azure Pipelines: `##vso[area.event …]data` anywhere in a line (the agent's
/// `Command.TryParse` searches the whole line), and `##[…]` formatting commands at the start.
fn azure_command_count(out: &str) -> usize {
    runner_lines(out)
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower
                .find("##vso[")
                .is_some_and(|i| lower[i..].contains(']'))
                || trim_runner(l).starts_with("##[")
        })
        .count()
}

/// TeamCity: `##teamcity[name …]`, counted anywhere in a line.
fn teamcity_command_count(out: &str) -> usize {
    runner_lines(out)
        .filter(|l| l.to_ascii_lowercase().contains("##teamcity["))
        .count()
}

fn command_counts(out: &str) -> [usize; 3] {
    [
        github_command_count(out),
        azure_command_count(out),
        teamcity_command_count(out),
    ]
}

/// Task-supplied text built from pieces that CI runners react to.
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => interesting(),
        1 => Just("::add-mask::".to_owned()),
        1 => Just("::error file=x::".to_owned()),
        1 => Just("##vso[task.setvariable variable=X]y".to_owned()),
        1 => Just("##VSO[".to_owned()),
        1 => Just("##[group]".to_owned()),
        1 => Just("##teamcity[buildStop]".to_owned()),
        1 => Just("#".to_owned()),
        1 => Just("##".to_owned()),
        1 => Just("vso[".to_owned()),
        1 => Just("::".to_owned()),
        1 => Just("  ".to_owned()),
        1 => Just("\u{FEFF}".to_owned()),
        1 => Just("\u{2028}".to_owned()),
        1 => Just("\n".to_owned()),
        1 => Just("\r".to_owned()),
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

/// A run where every task-supplied field is `text`: a failed task, a flaky one and a
/// passed one, on worker `text`, owned by `text`.
fn hostile_run(text: &str) -> Vec<EventKind> {
    let created = |id: &str| {
        EventKind::TaskCreated(Box::new(
            TaskCreated::builder()
                .task(id)
                .name(text)
                .owner(text)
                .build(),
        ))
    };
    vec![
        EventKind::coordinator_startup("run"),
        created("a"),
        created("b"),
        created("c"),
        EventKind::task_started("a", text, 1),
        failed("a", text, 1, error(text, text, text), false),
        EventKind::task_started("b", text, 1),
        failed("b", text, 1, error(text, text, text), true),
        EventKind::task_started("b", text, 2),
        completed("b", text, 2, TaskOutcome::Passed, 5, text),
        EventKind::task_started("c", text, 1),
        completed("c", text, 1, TaskOutcome::Passed, 9, text),
    ]
}

/// Everything the coordinator prints from task-supplied text: its task table, the task
/// reporter's summary table, and log lines through [`dtf_plugins_ci::CiSafeWriter`].
fn plain_outputs(text: &str) -> Vec<(&'static str, String)> {
    let run = record(hostile_run(text));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(async {
        let (spec, handle) = dtf_plugins_ci::TaskReporter::spec();
        let manager = PluginManager::builder().spec(spec).spawn().await.unwrap();
        for e in hostile_run(text) {
            manager.publish(e).await.unwrap();
        }
        manager.shutdown(ShutdownReason::Completed).await;
        handle.summary()
    });
    let logs = SharedBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || dtf_plugins_ci::CiSafeWriter::new(writer.clone()))
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::warn!(task = %text, worker = %text, "task {text} failed: {text}");
        tracing::warn!("{text}");
    });
    vec![
        (
            "task table",
            dtf_examples::coordinator::render_task_table(&run),
        ),
        ("summary", summary.render_table()),
        ("logs", logs.text()),
    ]
}

#[test]
fn the_reference_parsers_find_injected_commands() {
    // The parsers can fail: raw task text injects in each dialect.
    assert_eq!(command_counts("x\n::add-mask::secret\n"), [1, 0, 0]);
    assert_eq!(command_counts("  ::set-output name=a::b"), [1, 0, 0]);
    assert_eq!(
        command_counts("ok ##vso[task.setvariable variable=X]y"),
        [0, 1, 0]
    );
    assert_eq!(command_counts("##[group]x"), [1, 1, 0]);
    assert_eq!(command_counts("t ##teamcity[buildStop]"), [0, 0, 1]);
    // And neutralised, the same text injects nothing.
    for raw in [
        "x\n::add-mask::secret\n",
        "  ::set-output name=a::b",
        "ok ##vso[task.setvariable variable=X]y",
        "##[group]x",
        "t ##teamcity[buildStop]",
        "\u{FEFF}::error::x",
    ] {
        let safe = dtf_plugins_ci::neutralize(raw);
        assert_eq!(command_counts(&safe), [0, 0, 0], "{safe:?}");
        assert!(!safe.contains(['\n', '\r']), "{safe:?}");
    }
}

#[test]
fn a_task_named_like_a_command_is_printed_inert() {
    let name = "x\n::add-mask::secret";
    for (what, out) in plain_outputs(name) {
        assert_eq!(command_counts(&out), [0, 0, 0], "{what}:\n{out}");
        assert!(out.contains("x\\n::add-mask::secret"), "{what}:\n{out}");
    }
    let name = "##vso[task.setvariable variable=X]y";
    for (what, out) in plain_outputs(name) {
        assert_eq!(command_counts(&out), [0, 0, 0], "{what}:\n{out}");
        assert!(out.contains("#\\#vso[task.setvariable"), "{what}:\n{out}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn plain_output_carries_no_ci_command(text in hostile()) {
        for (what, out) in plain_outputs(&text) {
            prop_assert_eq!(command_counts(&out), [0, 0, 0], "{}:\n{}", what, out);
        }
    }

    #[test]
    fn neutralized_fields_stay_inert_anywhere_on_a_line(a in hostile(), b in hostile()) {
        let (a, b) = (dtf_plugins_ci::neutralize(&a), dtf_plugins_ci::neutralize(&b));
        for line in [format!("{a}"), format!("  {a} {b}"), format!("{a}\t{b}\n{b}")] {
            prop_assert_eq!(command_counts(&line), [0, 0, 0], "{:?}", line);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The plugins on a real manager.

#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[tokio::test]
async fn reporter_plugin_writes_the_configured_reports_at_shutdown() {
    let dir = temp_path("plugin");
    let _ = std::fs::remove_dir_all(&dir);
    let out = SharedBuf::default();
    let sink = out.clone();
    let spec = PluginSpec::new(move || CiReporter::with_output(Box::new(sink.clone()))).config(
        serde_json::json!({
            "junit": dir.join("reports/junit.xml"),
            "json": dir.join("run.json"),
            "markdown": dir.join("run.md"),
            "github_step_summary": dir.join("summary.md"),
            "azure_summary": dir.join("azure.md"),
            "commands": "github",
        }),
    );
    let live_out = SharedBuf::default();
    let live_sink = live_out.clone();
    let manager = PluginManager::builder()
        .spec(spec)
        .plugin(move || TeamcityLive::with_output(Box::new(live_sink.clone())))
        .spawn()
        .await
        .unwrap();
    manager
        .publish(EventKind::coordinator_startup("run-9"))
        .await
        .unwrap();
    manager
        .publish(EventKind::task_created("a", "suite::a"))
        .await
        .unwrap();
    manager
        .publish(EventKind::task_created("b", "suite::b"))
        .await
        .unwrap();
    manager
        .publish(EventKind::task_started("a", "w1", 1))
        .await
        .unwrap();
    manager
        .publish(completed("a", "w1", 1, TaskOutcome::Passed, 5, ""))
        .await
        .unwrap();
    manager
        .publish(EventKind::task_started("b", "w1", 1))
        .await
        .unwrap();
    manager
        .publish(failed("b", "w1", 1, error("Panic", "boom", ""), false))
        .await
        .unwrap();
    manager.flush().await;
    // Live: the TeamCity messages are out before the run ends.
    let live = live_out.text();
    assert_eq!(live.lines().count(), 6, "{live}");
    assert!(
        live.contains(
            "##teamcity[testFailed name='suite::b' message='Panic: boom' details='' flowId='b']"
        ),
        "{live}"
    );
    assert!(!dir.join("reports/junit.xml").exists());

    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    let junit = std::fs::read_to_string(dir.join("reports/junit.xml")).unwrap();
    assert!(
        junit.contains(r#"tests="2" failures="0" errors="1""#),
        "{junit}"
    );
    validate_with_xmllint(&dir.join("reports/junit.xml"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(json["run_id"], "run-9");
    assert_eq!(json["totals"]["failed"], 1);
    assert!(
        std::fs::read_to_string(dir.join("run.md"))
            .unwrap()
            .contains("| suite::b | w1 | 1 | `Panic: boom` |")
    );
    assert!(
        std::fs::read_to_string(dir.join("summary.md"))
            .unwrap()
            .starts_with("## dtf test run: ❌ failed")
    );
    let commands = out.text();
    assert!(
        commands.starts_with("::error title=suite%3A%3Ab failed::Panic: boom"),
        "{commands}"
    );
    assert!(
        commands.ends_with(&format!(
            "##vso[task.uploadsummary]{}\n",
            dir.join("azure.md").display()
        )),
        "{commands}"
    );
}

#[tokio::test]
async fn reporter_plugin_rejects_unknown_configuration_keys() {
    let spec = PluginSpec::new(CiReporter::new)
        .config(serde_json::json!({ "junit_path": "x.xml" }))
        .restart_policy(RestartPolicy::Temporary);
    let manager = PluginManager::builder().spec(spec).spawn().await.unwrap();
    manager.settle().await;
    let info = manager.list().await.unwrap();
    assert_eq!(format!("{:?}", info[0].status), "Disabled", "{info:?}");
    manager.shutdown(ShutdownReason::Completed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_ten_thousand_tasks_gives_a_valid_junit_file() {
    let dir = temp_path("large");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = PluginSpec::new(|| CiReporter::with_output(Box::new(std::io::sink())))
        .config(serde_json::json!({ "junit": dir.join("junit.xml") }));
    let manager = PluginManager::builder().spec(spec).spawn().await.unwrap();
    manager
        .publish(EventKind::coordinator_startup("run-big"))
        .await
        .unwrap();
    for i in 0..10_000u32 {
        let task = format!("t{i}");
        let worker = format!("w{}", i % 8);
        manager
            .publish(EventKind::task_created(
                task.as_str(),
                format!("suite{}::case_{i}", i % 50),
            ))
            .await
            .unwrap();
        manager
            .publish(EventKind::task_started(task.as_str(), worker.as_str(), 1))
            .await
            .unwrap();
        let done = match i % 100 {
            0 => failed(
                &task,
                &worker,
                1,
                error("Panic", "assertion <failed> & more", "at x"),
                false,
            ),
            1 => completed(&task, &worker, 1, TaskOutcome::Skipped, 0, ""),
            _ => completed(
                &task,
                &worker,
                1,
                TaskOutcome::Passed,
                u64::from(i % 37),
                "ok",
            ),
        };
        manager.publish(done).await.unwrap();
    }
    let report = manager.shutdown(ShutdownReason::Completed).await;
    assert!(report.clean, "{report:?}");
    let file = dir.join("junit.xml");
    let xml = std::fs::read_to_string(&file).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 10_000);
    assert_eq!(xml.matches("<error ").count(), 100);
    assert_eq!(xml.matches("<skipped").count(), 100);
    // The tolerant checker panics on malformed markup; xmllint checks the schema.
    check_xml(&xml);
    validate_with_xmllint(&file);
}

#[test]
fn an_unknown_ci_system_name_is_an_error_listing_the_valid_names() {
    let err = "jenkinz".parse::<dtf_plugins_ci::CiSystem>().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("select CI system `jenkinz`: unknown name"),
        "{msg}"
    );
    for name in [
        "jenkins",
        "github-actions",
        "gitlab",
        "azure-devops",
        "circleci",
        "local",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!("".parse::<dtf_plugins_ci::CiSystem>().is_err());
    assert_eq!(
        "Jenkins".parse::<dtf_plugins_ci::CiSystem>().unwrap(),
        dtf_plugins_ci::CiSystem::Jenkins
    );
}

/// A reporter restarted mid-run (on request here; a panic does the same) still reports every
/// task: its instances hand the run recorded so far to the next one. Before, the new instance
/// started empty, and the JUnit file and the task summary listed only the tasks that ended
/// after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reporter_restarted_mid_run_still_reports_every_task() {
    let dir = temp_path("restarted");
    let _ = std::fs::remove_dir_all(&dir);
    let junit = dir.join("junit.xml");
    let summary_json = dir.join("summary.json");
    // Both as the registry builds them (the coordinator's path).
    let mut registry = dtf_plugin_core::PluginRegistry::new();
    dtf_plugins_ci::register(&mut registry).unwrap();
    let spec = |name: &str, config| registry.entry(name).unwrap().spec(Some(config));
    let manager = PluginManager::builder()
        .spec(spec(
            CiReporter::NAME,
            serde_json::json!({ "junit": junit }),
        ))
        .spec(spec(
            TaskReporter::NAME,
            serde_json::json!({ "summary_json": summary_json }),
        ))
        .spawn()
        .await
        .unwrap();
    let publish = async |kind: EventKind| manager.publish(kind).await.unwrap();
    publish(EventKind::coordinator_startup("run-restart")).await;
    let task = async |i: u32| {
        let id = format!("t{i}");
        publish(EventKind::task_created(
            id.as_str(),
            format!("suite::case_{i}"),
        ))
        .await;
        publish(EventKind::task_started(id.as_str(), "w", 1)).await;
        publish(completed(&id, "w", 1, TaskOutcome::Passed, 5, "")).await;
    };
    task(1).await;
    manager.settle().await;
    for name in [CiReporter::NAME, TaskReporter::NAME] {
        manager.restart(name).await.unwrap();
    }
    task(2).await;
    manager.settle().await;
    let summary = manager
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.stats.restarts, p.status))
        .collect::<Vec<_>>();
    manager.shutdown(ShutdownReason::Completed).await;
    let xml = std::fs::read_to_string(&junit).unwrap();
    for case in ["name=\"case_1\"", "name=\"case_2\""] {
        assert!(
            xml.contains(case),
            "{case} missing after a restart: {xml}\n{summary:?}"
        );
    }
    assert!(xml.contains("tests=\"2\""), "{xml}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_json).unwrap()).unwrap();
    assert_eq!(summary["totals"]["tasks"], 2, "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}
