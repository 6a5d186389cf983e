//! End-to-end runs of the reference coordinator (`dtf-examples`): real shell commands on
//! local worker actors, with the task reporter and a recording plugin.
//!
//! The tests drive the coordinator as a library ([`Coordinator`], and [`run_cli`], the entry
//! point the `dtf-coordinator` binary calls). The built binary itself is exercised by
//! `dtf-examples/tests/binary.rs`, the only place `CARGO_BIN_EXE_dtf-coordinator` exists.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use dtf_examples::{Coordinator, CoordinatorOptions, PluginSelection, TaskDef, run_cli};
use dtf_plugin_core::lifecycle::LifecycleChecker;
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::testing::{Recording, RecordingPlugin};

/// A fresh, empty temporary directory for one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtf-coord-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn options(tasks: Vec<TaskDef>, workers: u32) -> CoordinatorOptions {
    let mut o = CoordinatorOptions::default();
    o.tasks = tasks;
    o.workers = workers;
    o.progress = false;
    // A safety net only: every test finishes well before it.
    o.run_timeout = Some(Duration::from_secs(20));
    o
}

fn recorder() -> (PluginSpec, Recording) {
    RecordingPlugin::spec(
        "recording",
        HookSet::TASK
            .union(HookSet::WORKER)
            .union(HookSet::RECOVERY)
            .union(HookSet::COORDINATOR),
    )
}

/// One task event, reduced to what the lifecycle fixes: hook, attempt, worker, retryable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Created,
    Assigned(u32, String),
    Started(u32, String),
    Completed(u32, String, TaskOutcome),
    Failed(u32, String, bool),
    Cancelled,
}

fn steps(recording: &Recording) -> BTreeMap<String, Vec<Step>> {
    let mut out: BTreeMap<String, Vec<Step>> = BTreeMap::new();
    for e in recording.events() {
        let (task, step) = match &e.kind {
            EventKind::TaskCreated(t) => (t.task.to_string(), Step::Created),
            EventKind::TaskAssigned(t) => (
                t.task.to_string(),
                Step::Assigned(t.attempt, t.worker.to_string()),
            ),
            EventKind::TaskStarted(t) => (
                t.task.to_string(),
                Step::Started(t.attempt, t.worker.to_string()),
            ),
            EventKind::TaskCompleted(t) => (
                t.task.to_string(),
                Step::Completed(t.attempt, t.worker.to_string(), t.outcome),
            ),
            EventKind::TaskFailed(t) => (
                t.task.to_string(),
                Step::Failed(
                    t.attempt,
                    t.worker
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    t.retryable,
                ),
            ),
            EventKind::TaskCancelled(t) => (t.task.to_string(), Step::Cancelled),
            _ => continue,
        };
        out.entry(task).or_default().push(step);
    }
    out
}

/// The worker of the step (assigned, started, completed, failed).
fn worker_of(step: &Step) -> &str {
    match step {
        Step::Assigned(_, w) | Step::Started(_, w) | Step::Completed(_, w, _) => w,
        Step::Failed(_, w, _) => w,
        _ => "",
    }
}

/// Checks the recorded stream against the documented lifecycle.
fn assert_lifecycle(recording: &Recording) {
    let mut checker = LifecycleChecker::new();
    for e in recording.events() {
        checker
            .observe(&e.kind)
            .unwrap_or_else(|err| panic!("lifecycle broken at seq {}: {err}", e.meta.seq));
    }
}

fn error_of(recording: &Recording, task: &str, attempt: u32) -> TaskError {
    recording
        .events()
        .into_iter()
        .find_map(|e| match e.kind {
            EventKind::TaskFailed(f) if f.task.as_str() == task && f.attempt == attempt => {
                Some(f.error)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no TaskFailed for {task} attempt {attempt}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_commands_follow_the_lifecycle_and_sum_up() {
    let dir = temp_dir("lifecycle");
    let marker = dir.join("tried-once");
    let tasks = vec![
        TaskDef::shell("pass-echo", "echo one"),
        TaskDef::shell("pass-true", "true").owner("alice"),
        TaskDef::shell("fail", "echo broken >&2; exit 3").owner("alice"),
        TaskDef::shell("timeout", "sleep 5").timeout(Duration::from_millis(300)),
        TaskDef::shell(
            "retry",
            format!(
                "if [ -f '{m}' ]; then echo second; else touch '{m}'; exit 1; fi",
                m = marker.display()
            ),
        )
        .retries(1),
    ];
    let (rec, recording) = recorder();
    let report = Coordinator::new(options(tasks, 2))
        .unwrap()
        .with_plugin(rec)
        .run()
        .await
        .unwrap();

    assert_lifecycle(&recording);
    let steps = steps(&recording);
    use Step::*;
    // Per task: the exact sequence; workers consistent within each attempt.
    for id in ["pass-echo", "pass-true"] {
        let s = &steps[id];
        let w = worker_of(&s[1]).to_owned();
        assert_eq!(
            s,
            &[
                Created,
                Assigned(1, w.clone()),
                Started(1, w.clone()),
                Completed(1, w, TaskOutcome::Passed)
            ],
            "{id}"
        );
    }
    for id in ["fail", "timeout"] {
        let s = &steps[id];
        let w = worker_of(&s[1]).to_owned();
        assert_eq!(
            s,
            &[
                Created,
                Assigned(1, w.clone()),
                Started(1, w.clone()),
                Failed(1, w, false)
            ],
            "{id}"
        );
    }
    let s = &steps["retry"];
    let (w1, w2) = (worker_of(&s[1]).to_owned(), worker_of(&s[4]).to_owned());
    assert_eq!(
        s,
        &[
            Created,
            Assigned(1, w1.clone()),
            Started(1, w1.clone()),
            Failed(1, w1, true),
            Assigned(2, w2.clone()),
            Started(2, w2.clone()),
            Completed(2, w2, TaskOutcome::Passed)
        ]
    );

    // Errors say what happened.
    let fail = error_of(&recording, "fail", 1);
    assert_eq!(fail.kind, "ExitCode(3)");
    assert!(
        fail.message.ends_with("exited with code 3: broken"),
        "{}",
        fail.message
    );
    assert_eq!(fail.details, "broken\n");
    let timeout = error_of(&recording, "timeout", 1);
    assert_eq!(timeout.kind, "Timeout");
    assert_eq!(error_of(&recording, "retry", 1).kind, "ExitCode(1)");
    let output = recording.events().into_iter().find_map(|e| match e.kind {
        EventKind::TaskCompleted(c) if c.task.as_str() == "pass-echo" => Some(c.output),
        _ => None,
    });
    assert_eq!(output.as_deref(), Some("one\n"));

    // The run's frame: startup first, shutdown last, both workers in and out.
    let hooks = recording.hooks();
    assert_eq!(hooks.first(), Some(&Hook::CoordinatorStartup));
    assert_eq!(hooks.last(), Some(&Hook::CoordinatorShutdown));
    let count = |h: Hook| hooks.iter().filter(|x| **x == h).count();
    assert_eq!(count(Hook::WorkerRegistered), 2);
    assert_eq!(count(Hook::WorkerDisconnected), 2);
    assert_eq!(count(Hook::WorkerFailed), 0);

    // The reporter's numbers and the exit code.
    let summary = report
        .summary
        .clone()
        .expect("task-reporter is on by default");
    let t = summary.totals;
    assert_eq!(
        (
            t.tasks,
            t.passed,
            t.flaky,
            t.failed,
            t.incomplete,
            t.attempts
        ),
        (5, 2, 1, 2, 0, 6)
    );
    assert_eq!(summary.retries, 1);
    assert_eq!(summary.pass_rate, Some(0.6));
    assert_eq!(summary.flaky.len(), 1);
    assert_eq!(summary.flaky[0].id, "retry");
    let failed: Vec<_> = summary.failed.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(failed, ["fail", "timeout"]);
    assert!(summary.run_time.max >= Duration::from_millis(300));
    let alice = summary.tenants.iter().find(|t| t.owner == "alice").unwrap();
    assert_eq!((alice.tasks, alice.passed, alice.failed), (2, 1, 1));
    assert_eq!((report.tasks, report.passed, report.failed), (5, 3, 2));
    assert_eq!(report.exit_code(), 1);
    assert!(report.shutdown.clean, "{:?}", report.shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_is_recovered_and_the_task_reruns_elsewhere() {
    // Attempt 1 would run for 5 s; the worker is killed as soon as it starts it.
    let task = TaskDef::shell(
        "victim",
        r#"if [ "$DTF_ATTEMPT" = 1 ]; then sleep 5; fi; echo "attempt $DTF_ATTEMPT""#,
    );
    let mut o = options(vec![task], 2);
    o.kill_worker_on_start = vec!["victim".to_owned()];
    let (rec, recording) = recorder();
    let report = Coordinator::new(o)
        .unwrap()
        .with_plugin(rec)
        .run()
        .await
        .unwrap();

    assert_lifecycle(&recording);
    let s = &steps(&recording)["victim"];
    use Step::*;
    let (first, second) = (worker_of(&s[1]).to_owned(), worker_of(&s[3]).to_owned());
    assert_ne!(first, second, "the re-run must go to the other worker");
    assert_eq!(
        s,
        &[
            Created,
            Assigned(1, first.clone()),
            Started(1, first.clone()),
            Assigned(2, second.clone()),
            Started(2, second.clone()),
            Completed(2, second, TaskOutcome::Passed)
        ]
    );

    // WorkerFailed, then the recovery of its task, then the re-assignment, in this order.
    let events = recording.events();
    let pos = |f: &dyn Fn(&EventKind) -> bool| {
        events
            .iter()
            .position(|e| f(&e.kind))
            .expect("event not recorded")
    };
    let failed = pos(&|k| matches!(k, EventKind::WorkerFailed(w) if w.worker.as_str() == first));
    let started = pos(&|k| {
        matches!(k, EventKind::RecoveryStarted(r)
            if r.worker.as_ref().map(|w| w.as_str()) == Some(first.as_str())
                && r.tasks.iter().map(|t| t.as_str()).eq(["victim"]))
    });
    let completed = pos(&|k| matches!(k, EventKind::RecoveryCompleted(r) if r.requeued == 1));
    let reassigned = pos(&|k| matches!(k, EventKind::TaskAssigned(a) if a.attempt == 2));
    let recovered =
        pos(&|k| matches!(k, EventKind::WorkerRecovered(w) if w.worker.as_str() == first));
    assert!(failed < started && started < completed && completed < reassigned);
    assert!(failed < recovered);
    match &events[failed].kind {
        EventKind::WorkerFailed(w) => assert_eq!(w.error, "the worker was killed"),
        _ => unreachable!(),
    }
    let output = events.iter().find_map(|e| match &e.kind {
        EventKind::TaskCompleted(c) => Some(c.output.clone()),
        _ => None,
    });
    assert_eq!(output.as_deref(), Some("attempt 2\n"));

    let summary = report.summary.clone().unwrap();
    assert_eq!((summary.totals.passed, summary.totals.failed), (1, 0));
    let lost = summary.workers.iter().find(|w| w.id == first).unwrap();
    assert_eq!((lost.lost, lost.failures), (1, 1));
    assert_eq!(report.exit_code(), 0);
}

/// The README's demo: the killed worker is back at once while the other worker is busy; the
/// retry waits for the other worker rather than going back to the one it was killed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_reruns_on_another_worker_even_when_that_one_is_busy() {
    let victim = TaskDef::shell(
        "victim",
        r#"if [ "$DTF_ATTEMPT" = 1 ]; then sleep 5; fi; echo "attempt $DTF_ATTEMPT""#,
    )
    .retries(1);
    let busy = TaskDef::shell("busy", "sleep 0.5");
    let mut o = options(vec![victim, busy], 2);
    o.kill_worker_on_start = vec!["victim".to_owned()];
    let report = Coordinator::new(o).unwrap().run().await.unwrap();
    assert_eq!(report.exit_code(), 0);
    let run = report.run.unwrap();
    let victim = run
        .tasks
        .iter()
        .find(|t| t.id.as_str() == "victim")
        .unwrap();
    let workers: Vec<_> = victim.attempts.iter().map(|a| a.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "{workers:?}");
    assert_ne!(
        workers[0], workers[1],
        "the re-run went back to the killed worker"
    );
    let busy = run.tasks.iter().find(|t| t.id.as_str() == "busy").unwrap();
    assert_eq!(
        busy.attempts[0].worker, workers[1],
        "it waited for the busy worker"
    );
}

/// Runs the CLI entry point and returns (exit code, stdout, stderr).
async fn cli_streams(args: &[&str]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    args.extend(["--progress".to_owned(), "never".to_owned()]);
    let code = run_cli(args, &mut out, &mut err).await;
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// Runs the CLI entry point and returns (exit code, output): stdout for a run (0 or 1) and
/// stderr for a usage or configuration error (2), checking that a usage error prints nothing
/// on stdout and a passing run nothing on stderr.
async fn cli(args: &[&str]) -> (i32, String) {
    let (code, out, err) = cli_streams(args).await;
    match code {
        2 => {
            assert!(out.is_empty(), "a usage error printed on stdout: {out}");
            (code, err)
        }
        0 => {
            assert!(err.is_empty(), "a passing run printed on stderr: {err}");
            (code, out)
        }
        _ => (code, out),
    }
}

/// Each report is named with its path at the end; one that cannot be written fails the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_named_at_the_end_and_an_unwritable_one_fails_the_run() {
    let dir = temp_dir("reports");
    let junit = dir.join("junit.xml");
    let (code, out, err) =
        cli_streams(&["--task", "true", "--junit", junit.to_str().unwrap()]).await;
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert!(
        out.ends_with(&format!(
            "report written: {}\n\n1 of 1 task(s) passed; 0 failed\n",
            junit.display()
        )),
        "{out}"
    );
    assert!(
        std::fs::read_to_string(&junit)
            .unwrap()
            .contains("<testsuite")
    );

    let (code, out, err) = cli_streams(&["--task", "true", "--junit", "/proc/nope/x.xml"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("error: failed to write report `/proc/nope/x.xml`: "),
        "{err}"
    );
    assert!(!out.contains("report written"), "{out}");
    assert!(
        out.ends_with("1 of 1 task(s) passed; 0 failed; 1 report(s) could not be written\n"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_fails_its_task_with_a_clear_error() {
    let (code, out) = cli(&["--task", "dtf-no-such-command-xyz --help", "--task", "true"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("CommandNotFound: command not found: `dtf-no-such-command-xyz --help`"),
        "{out}"
    );
    assert!(out.contains("1 of 2 task(s) passed; 1 failed"), "{out}");
}

#[tokio::test]
async fn bad_plugin_names_and_paths_are_clear_errors() {
    let (code, out) = cli(&["--enable-plugin", "task-reportr", "--task", "true"]).await;
    assert_eq!(code, 2);
    assert_eq!(
        out,
        "error: --enable-plugin: unknown plugin `task-reportr` (did you mean `task-reporter`?)\n"
    );
    let (code, out) = cli(&["--disable-plugin", "ci-reportr", "--task", "true"]).await;
    assert_eq!(code, 2);
    assert!(out.contains("did you mean `ci-reporter`?"), "{out}");

    let dir = temp_dir("paths");
    let missing = dir.join("no-such-dir");
    let dirs = format!("{},{}", dir.display(), missing.display());
    let (code, out) = cli(&["--plugin-dirs", &dirs, "--task", "true"]).await;
    assert_eq!(code, 2);
    assert_eq!(
        out,
        format!(
            "error: --plugin-dirs: `{}` is not a directory\n",
            missing.display()
        )
    );
    let config = dir.join("dtf.toml");
    let (code, out) = cli(&["--config", config.to_str().unwrap(), "--list-plugins"]).await;
    assert_eq!(code, 2);
    assert!(out.contains("is not a file"), "{out}");

    let tasks = dir.join("tasks.toml");
    std::fs::write(
        &tasks,
        "[[task]]\ncommand = \"true\"\ntimeout_secs = \"soon\"\n",
    )
    .unwrap();
    let (code, out) = cli(&["--tasks", tasks.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(
        out.contains("tasks.toml") && out.contains("line 3"),
        "{out}"
    );

    let (code, out) = cli(&["--workers", "many", "--task", "true"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.starts_with("error: invalid value 'many' for '--workers <N>'"),
        "{out}"
    );
    let (code, out) = cli(&["--scheduler", "fastest", "--task", "true"]).await;
    assert_eq!(code, 2);
    assert!(
        out.starts_with("error: --scheduler:") && out.contains("fifo"),
        "{out}"
    );
}

#[tokio::test]
async fn plugin_flags_select_from_the_registry() {
    let (code, out) = cli(&["--list-plugins"]).await;
    assert_eq!(code, 0);
    for name in [
        "task-reporter",
        "ci-reporter",
        "teamcity-live",
        "ci-api-reporter",
        "progress",
    ] {
        assert!(out.contains(name), "{name} missing from\n{out}");
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("task-reporter"))
        .unwrap();
    assert!(
        line.contains(" enabled ")
            && line.contains(" reporter ")
            && line.contains("built-in (dtf-plugins-ci)"),
        "{line}"
    );
    let teamcity = out
        .lines()
        .find(|l| l.starts_with("teamcity-live"))
        .unwrap();
    assert!(teamcity.contains(" off "), "{teamcity}");
    // The scheduler runs in every run: never listed as off.
    let scheduler = out.lines().find(|l| l.starts_with("scheduler")).unwrap();
    assert!(scheduler.contains(" always "), "{scheduler}");
    // The hooks line under each plugin: whole families abbreviated.
    assert!(
        out.contains("hooks: coordinator_*,task_*,worker_*,recovery_*,custom"),
        "{out}"
    );

    let selection = |disable_all, enable: &[&str], disable: &[&str]| {
        let mut o = options(vec![TaskDef::shell("t", "true")], 1);
        o.plugins = PluginSelection::default();
        o.plugins.disable_all = disable_all;
        o.plugins.enable = enable.iter().map(|s| (*s).to_owned()).collect();
        o.plugins.disable = disable.iter().map(|s| (*s).to_owned()).collect();
        Coordinator::new(o).unwrap().enabled_plugins().to_vec()
    };
    assert_eq!(selection(false, &[], &[]), ["task-reporter"]);
    assert_eq!(
        selection(false, &["ci-reporter"], &[]),
        ["task-reporter", "ci-reporter"]
    );
    assert!(selection(true, &[], &[]).is_empty());
    assert_eq!(selection(true, &["teamcity-live"], &[]), ["teamcity-live"]);
    assert_eq!(
        selection(false, &["ci-reporter"], &["task-reporter", "ci-reporter"]),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_tasks_write_junit_and_exit_non_zero() {
    let dir = temp_dir("simulate");
    let junit = dir.join("junit.xml");
    let (code, out) = cli(&[
        "--simulate-tasks",
        "12",
        "--workers",
        "3",
        "--junit",
        junit.to_str().unwrap(),
    ])
    .await;
    // Task 11 fails every attempt; task 7 is flaky.
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("tasks 12  passed 10  failed 1  flaky 1"),
        "{out}"
    );
    assert!(out.contains("11 of 12 task(s) passed; 1 failed"), "{out}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 12, "{xml}");
    assert!(
        xml.contains(r#"<testcase name="test_011" classname="simulated""#),
        "{xml}"
    );

    // Without the task reporter there is no task table and no summary: only the plugin
    // table (the coordinator's own plugins) and the verdict.
    let (code, out) = cli(&["--simulate-tasks", "3", "--disable-plugins"]).await;
    assert_eq!(code, 0, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("plugin ") && lines[1].contains("delivered"),
        "{out}"
    );
    let plugins: Vec<&str> = lines[2..]
        .iter()
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        plugins,
        ["run-tracker", "shell-executor", "scheduler"],
        "{out}"
    );
    assert!(
        out.ends_with("\n\n3 of 3 task(s) passed; 0 failed\n"),
        "{out}"
    );
    assert!(!out.contains("pass rate"), "{out}");
}

/// `[manager] overflow = "drop_newest"` (chosen to keep a slow notifier from holding the run
/// up) with small queues does not touch the run's own machinery: the scheduler, the executor,
/// the run tracker and the run's reports wait for room. Before, a burst of `TaskCreated` overflowed the
/// scheduler's queue, the dropped tasks were never assigned, and the run hung until
/// `--run-timeout` (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_for_the_plugins_never_drops_the_runs_own_events() {
    let tasks = (0..200)
        .map(|i| TaskDef::shell(format!("t{i}"), "true"))
        .collect();
    let mut o = options(tasks, 2);
    o.config_overrides = vec![
        "manager.overflow=drop_newest".to_owned(),
        "manager.queue_capacity=2".to_owned(),
    ];
    let report = Coordinator::new(o).unwrap().run().await.unwrap();
    let summary = report.summary.clone().unwrap();
    assert_eq!(
        (summary.totals.passed, summary.totals.cancelled),
        (200, 0),
        "{summary:?}"
    );
    assert_eq!(report.exit_code(), 0);
}

/// `--junit FILE` wins over the configuration file: over its `junit` setting, and over
/// `enabled = false` for the CI reporter. Before, the file's path was used (CI found no file
/// where the command line said), or no JUnit file was written at all (found by a review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junit_on_the_command_line_wins_over_the_configuration_file() {
    let dir = temp_dir("junit-wins");
    for (i, section) in [
        format!(
            "[plugins.ci-reporter.settings]\njunit = {:?}\n",
            dir.join("from-file.xml").display().to_string()
        ),
        "[plugins.ci-reporter]\nenabled = false\n".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let config = dir.join(format!("dtf-{i}.toml"));
        std::fs::write(&config, section).unwrap();
        let cli = dir.join(format!("cli-{i}.xml"));
        let mut o = options(vec![TaskDef::shell("ok", "true")], 1);
        o.config_file = Some(config);
        o.junit = Some(cli.clone());
        let report = Coordinator::new(o).unwrap().run().await.unwrap();
        assert_eq!(report.exit_code(), 0);
        let junit = std::fs::read_to_string(&cli).unwrap_or_default();
        assert!(junit.contains("<testcase "), "case {i}: {junit:?}");
        assert!(!dir.join("from-file.xml").exists(), "case {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_timeout_cancels_what_is_left_and_kills_its_processes() {
    let dir = temp_dir("run-timeout");
    let pidfile = dir.join("pid");
    let slow = TaskDef::shell(
        "slow",
        format!("echo $$ > '{}'; sleep 60", pidfile.display()),
    );
    // One worker: `waiting` never starts. 3 s: `slow` starts well before, even under load.
    let mut o = options(vec![slow, TaskDef::shell("waiting", "true")], 1);
    o.run_timeout = Some(Duration::from_secs(3));
    let (rec, recording) = recorder();
    let report = Coordinator::new(o)
        .unwrap()
        .with_plugin(rec)
        .run()
        .await
        .unwrap();

    assert_lifecycle(&recording);
    let steps = steps(&recording);
    use Step::*;
    assert_eq!(
        steps["slow"],
        [
            Created,
            Assigned(1, "worker-1".into()),
            Started(1, "worker-1".into()),
            Cancelled
        ]
    );
    assert_eq!(steps["waiting"], [Created, Cancelled]);
    let summary = report.summary.clone().unwrap();
    assert_eq!(summary.totals.cancelled, 2);
    assert_eq!((report.failed, report.exit_code()), (2, 1));
    // The command's process group was killed with its worker.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let alive = || {
        // A zombie has exited: only a running process counts.
        std::fs::read_to_string(&stat).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let start = std::time::Instant::now();
    while alive() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(), "the timed-out command kept running");
}

/// The example external plugin's directory (Python, standard library only).
fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dtf-examples/plugins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_and_a_plugin_directory_drive_the_run() {
    let dir = temp_dir("config-run");
    let junit = dir.join("junit.xml");
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dirs = [{plugins:?}]\n\
             [manager]\nhandler_timeout = \"5s\"\n\
             [plugins.ci-reporter.settings]\njunit = {junit:?}\n\
             [plugins.task-reporter]\nenabled = false\n",
            plugins = plugins_dir().display().to_string(),
            junit = junit.display().to_string(),
        ),
    )
    .unwrap();
    let mut o = options(
        vec![
            TaskDef::shell("ok", "true"),
            // py-echo exits on events of the task with id `crash` (creation, completion).
            TaskDef::shell("crash", "true"),
        ],
        2,
    );
    o.config_file = Some(config.clone());
    // The command line wins over the file: the task reporter comes back.
    o.plugins.enable.push("task-reporter".to_owned());
    let (rec, recording) = RecordingPlugin::spec("recording", HookSet::of(&[Hook::Custom]));
    let coordinator = Coordinator::new(o).unwrap();
    assert_eq!(
        coordinator.enabled_plugins(),
        ["task-reporter", "ci-reporter", "py-echo"]
    );
    let report = coordinator.with_plugin(rec).run().await.unwrap();
    assert_eq!(report.exit_code(), 0);
    assert!(
        report.summary.is_some(),
        "--enable-plugin wins over enabled = false"
    );

    // The Python plugin got the task events, and published one custom event back for each
    // it handled; the two events of task `crash` each killed it and were dead-lettered.
    let echo = report
        .shutdown
        .plugins
        .iter()
        .find(|p| p.name == "py-echo")
        .unwrap();
    assert_eq!(echo.stats.dead_lettered, 2, "{echo:?}");
    assert_eq!(echo.stats.restarts, 2, "{echo:?}");
    assert!(echo.stats.is_conserved(), "{echo:?}");
    let received: Vec<String> = recording
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Custom(c) if c.name == "py-echo.received" => {
                Some(c.payload["task"].as_str().unwrap_or("-").to_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        received.iter().filter(|t| *t == "ok").count(),
        2,
        "created and completed: {received:?}"
    );
    assert!(!received.iter().any(|t| t == "crash"), "{received:?}");
    // The file's settings reached the CI reporter.
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase ").count(), 2, "{xml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_are_all_reported_with_positions_and_print_config_redacts_secrets() {
    let dir = temp_dir("config-errors");
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        "[manager]\nqueue_capacty = 10\n\n[plugins.task-reportr]\nenabled = true\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (code, out) = cli(&["--config", path, "--check-config"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("error: invalid configuration:\n"), "{out}");
    assert!(
        out.contains(&format!(
            "{path}:2:1: manager.queue_capacty: unknown key `queue_capacty` (did you mean `queue_capacity`?)"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "plugins.task-reportr: unknown plugin `task-reportr` (did you mean `task-reporter`?)"
        ),
        "{out}"
    );

    // Secrets (a secret-named key, a value read from the environment) are used but never
    // printed; `--set` wins over the file.
    std::fs::write(
        &config,
        "[manager]\nqueue_capacity = 10\n\n\
         [plugins.notify.settings]\n\
         channels = [\n\
           { type = \"slack\", webhook_url = \"https://hooks.example/T0/B0/canary-5d1f\" },\n\
           { type = \"webhook\", url = \"https://127.0.0.1:9${HOME}/hook\" },\n\
         ]\n",
    )
    .unwrap();
    let (code, out) = cli(&[
        "--config",
        path,
        "--set",
        "manager.queue_capacity=64",
        "--print-config",
        "--check-config",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("canary-5d1f"), "{out}");
    assert!(out.contains("webhook_url = \"***\""), "{out}");
    assert!(!out.contains("/hook\""), "{out}");
    assert!(out.contains(" url = \"***\""), "{out}");
    assert!(
        out.contains("queue_capacity = 64  # command-line override"),
        "{out}"
    );
    assert!(
        out.contains("configuration is valid; plugins enabled by it: notify"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_typos_missing_directories_and_duplicate_task_ids_are_refused_up_front() {
    let dir = temp_dir("refused");
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        "plugin_dirs = [\"no-such-dir\"]\n\
         [plugins.task-reporter.settings]\nslowst = 3\n\
         [plugins.notify.settings]\nchannels = [{ type = \"slack\", webhook_url = \"not a url\" }]\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (code, out) = cli(&["--config", path, "--check-config"]).await;
    assert_eq!(code, 2, "{out}");
    // All three, together, each with its position.
    assert!(
        out.contains(&format!("{path}:1:15: plugin_dirs[0]:"))
            && out.contains("is not a directory"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{path}:3:1: plugins.task-reporter.settings.slowst: unknown key `slowst`"
        )) && out.contains("did you mean `slowest`?"),
        "{out}"
    );
    assert!(out.contains("plugins.notify.settings"), "{out}");
    assert!(out.contains("channels[0].webhook_url"), "{out}");
    assert!(!out.contains("not a url"), "the value is not echoed: {out}");

    // URLs are checked up front too, named by key and never echoed: the task reporter's
    // external endpoint and the CI API reporter's base URLs; an out-of-range or misspelt
    // enum value and a bad duration are not echoed either.
    std::fs::write(
        &config,
        "[manager]\noverflow = \"canary-overflow-77\"\nhandler_timeout = \"canary-duration-77\"\n\
         [plugins.task-reporter.settings.external]\nendpoint = \"canary-endpoint-77\"\n\
         [plugins.ci-api-reporter.settings]\ngitlab = { base_url = \"ftp://canary-url-77/\" }\n",
    )
    .unwrap();
    let (code, out) = cli(&["--config", path, "--check-config"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("external.endpoint: not a URL"), "{out}");
    assert!(
        out.contains("gitlab.base_url: not an http or https URL with a host"),
        "{out}"
    );
    assert!(
        out.contains("manager.overflow: invalid value: expected one of"),
        "{out}"
    );
    assert!(
        out.contains("manager.handler_timeout: not a duration"),
        "{out}"
    );
    assert!(!out.contains("canary"), "no value is echoed: {out}");

    // The scheduler's section: what it cannot honour is refused with its position, not
    // accepted and ignored, and with the file's other problems. (`enabled` does not apply to
    // it: it runs in every run, and `--print-config` prints `enabled = false` for it.)
    std::fs::write(
        &config,
        "[plugins.scheduler]\nqueue_capacity = 64\nenabled = false\noverflow = \"drop_newest\"\n\
         restart_policy = \"temporary\"\n[manager]\nqueue_capacty = 8\n",
    )
    .unwrap();
    let (code, out) = cli(&["--config", path, "--check-config"]).await;
    assert_eq!(code, 2, "{out}");
    for expected in [
        "4:12: plugins.scheduler.overflow: the scheduler must see every task",
        "5:18: plugins.scheduler.restart_policy: a scheduler that is not restarted",
        "7:1: manager.queue_capacty: unknown key",
    ] {
        assert!(out.contains(&format!("{path}:{expected}")), "{out}");
    }
    assert!(!out.contains("plugins.scheduler.enabled"), "{out}");
    let (code, out) = cli(&["--config", path, "--task", "true"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("plugins.scheduler.overflow"), "{out}");
    // What `--print-config` prints loads again.
    let (code, printed) = cli(&["--print-config"]).await;
    assert_eq!(code, 0, "{printed}");
    std::fs::write(&config, printed).unwrap();
    let (code, out) = cli(&["--config", path, "--check-config"]).await;
    assert_eq!(code, 0, "{out}");

    // Ids clash between a task file and --task: refused, not a run that never ends.
    let tasks = dir.join("tasks.toml");
    std::fs::write(&tasks, "[[task]]\nid = \"a\"\ncommand = \"true\"\n").unwrap();
    let t = tasks.to_str().unwrap();
    let (code, out) = cli(&["--tasks", t, "--tasks", t]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("task id `a` is given twice"), "{out}");
    // `--task` ids skip the ids a task file already uses.
    std::fs::write(&tasks, "[[task]]\nid = \"cmd-1\"\ncommand = \"true\"\n").unwrap();
    let (code, out) = cli(&["--tasks", t, "--task", "true"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 of 2 task(s) passed"), "{out}");
}
