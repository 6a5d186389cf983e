//! The built `dtf-coordinator` binary, run as a user would: exit codes and output.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::process::Command;

fn coordinator(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn runs_shell_tasks_and_exits_non_zero_when_one_fails() {
    let (code, out, _) = coordinator(&[
        "--task",
        "echo ok",
        "--task",
        "exit 4",
        "--task",
        "sleep 5",
        "--timeout",
        "0.3",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ExitCode(4): `exit 4` exited with code 4"),
        "{out}"
    );
    assert!(out.contains("Timeout: no exit within 0.300s"), "{out}");
    assert!(out.contains("tasks 3  passed 1  failed 2"), "{out}");
    assert!(out.ends_with("1 of 3 task(s) passed; 2 failed\n"), "{out}");
    // Not a terminal: no progress line.
    assert!(!out.contains("[dtf]"), "{out}");
}

#[test]
fn passes_with_zero_and_reports_usage_errors_with_two() {
    let (code, out, _) = coordinator(&["--task", "true", "--retries", "1"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = coordinator(&["--enable-plugin", "junit"]);
    assert_eq!(code, 2);
    assert_eq!(out, "error: --enable-plugin: unknown plugin `junit`\n");
    let (code, out, _) = coordinator(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("usage: dtf-coordinator"), "{out}");
    let (code, out, _) = coordinator(&[]);
    assert_eq!(code, 2);
    assert!(out.contains("no tasks"), "{out}");
}

#[test]
fn the_sample_task_file_parses() {
    let tasks = dtf_examples::load_task_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks.toml"),
    )
    .unwrap();
    assert_eq!(tasks.len(), 4);
    assert_eq!(tasks[3].retries, 1);
}
