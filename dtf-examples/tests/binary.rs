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
        "sleep 60",
        // For all three: generous, so that `echo ok` and `exit 4` finish in time on a
        // loaded machine.
        "--timeout",
        "3",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ExitCode(4): `exit 4` exited with code 4"),
        "{out}"
    );
    assert!(out.contains("Timeout: no exit within 3.000s"), "{out}");
    assert!(out.contains("tasks 3  passed 1  failed 2"), "{out}");
    assert!(out.ends_with("1 of 3 task(s) passed; 2 failed\n"), "{out}");
    // Not a terminal: no progress line.
    assert!(!out.contains("[dtf]"), "{out}");
}

#[test]
fn passes_with_zero_and_reports_usage_errors_with_two_on_stderr() {
    let (code, out, _) = coordinator(&["--task", "true", "--retries", "1"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err) = coordinator(&["--enable-plugin", "junit"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(err, "error: --enable-plugin: unknown plugin `junit`\n");
    let (code, out, err) = coordinator(&[]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("no tasks"), "{err}");
    // Configuration errors too.
    let (code, out, err) = coordinator(&["--config", "/nonexistent/dtf.toml", "--check-config"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.starts_with("error: --config:"), "{err}");
}

#[test]
fn help_lists_every_flag_and_the_environment_on_stdout() {
    let (code, out, err) = coordinator(&["--help"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.contains("Usage: dtf-coordinator [OPTIONS]"), "{out}");
    for flag in [
        "--tasks",
        "--task",
        "--simulate-tasks",
        "--timeout",
        "--retries",
        "--workers",
        "--scheduler",
        "--run-id",
        "--run-timeout",
        "--kill-worker-on-start",
        "--progress",
        "--ui",
        "--list-plugins",
        "--enable-plugin",
        "--disable-plugin",
        "--disable-plugins",
        "--junit",
        "--plugin-dirs",
        "--config",
        "--set",
        "--print-config",
        "--check-config",
        "completions",
        "plugin",
    ] {
        assert!(out.contains(flag), "{flag} missing from --help:\n{out}");
    }
    for var in [
        "DTF_UI_TOKEN",
        "DTF_UI_TOKEN_FILE",
        "DTF_MANAGER__QUEUE_CAPACITY",
        "NO_COLOR",
        "RUST_LOG",
    ] {
        assert!(out.contains(var), "{var} missing from --help:\n{out}");
    }
    let (code, short, _) = coordinator(&["-h"]);
    assert_eq!((code, short), (0, out));
}

#[test]
fn version_prints_the_crate_version() {
    let (code, out, err) = coordinator(&["--version"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        out,
        format!("dtf-coordinator {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_flag_is_named_with_the_closest_one() {
    let (code, out, err) = coordinator(&["--wokers", "3", "--task", "true"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("unexpected argument '--wokers'"), "{err}");
    assert!(
        err.contains("a similar argument exists: '--workers'"),
        "{err}"
    );
}

#[test]
fn out_of_range_values_are_usage_errors() {
    let (code, out, err) = coordinator(&["--workers", "1000000", "--task", "true"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.contains("invalid value '1000000' for '--workers <N>': 1000000 is not in 0..=1024"),
        "{err}"
    );
    // 0 local workers only with --listen (remote workers only).
    let (code, _, err) = coordinator(&["--workers", "0", "--task", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("0 only with --listen"), "{err}");
    // Cluster flags need --listen; TLS needs both halves.
    let (code, _, err) = coordinator(&["--min-workers", "2", "--task", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--listen"), "{err}");
    let (code, _, err) = coordinator(&[
        "--listen",
        "127.0.0.1:7799",
        "--tls-cert",
        "c.pem",
        "--task",
        "true",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-key"), "{err}");
    let (code, out, err) = coordinator(&["--retries", "4294967295", "--task", "true"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("4294967295 is not in 0..=100"), "{err}");
    let (code, _, err) = coordinator(&["--timeout", "0", "--task", "true"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'--timeout <SECS>'"), "{err}");
    let (code, out, err) = coordinator(&["--task", "true", "--kill-worker-on-start", "cmd-2"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "error: --kill-worker-on-start: no task has the id `cmd-2` (did you mean `cmd-1`?)\n"
    );
}

#[test]
fn completions_for_bash_complete_the_flags() {
    let (code, out, err) = coordinator(&["completions", "bash"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("complete -F _dtf-coordinator") || out.contains("_dtf__coordinator"),
        "{out}"
    );
    for flag in [
        "--workers",
        "--kill-worker-on-start",
        "--junit",
        "--check-config",
    ] {
        assert!(out.contains(flag), "{flag} missing from the bash script");
    }
    let (code, _, err) = coordinator(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values: bash"), "{err}");
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

/// Whether process `pid` still exists (`kill -0`).
fn alive(pid: &str) -> bool {
    Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends SIGTERM to `child` and waits (up to 20 s) for it to exit; what `context` says then
/// goes in the failure message.
fn sigterm_and_wait(
    child: &mut std::process::Child,
    context: impl Fn() -> String,
) -> std::process::ExitStatus {
    signal_and_wait(child, "TERM", 400, context)
}

/// Sends `signal` (`TERM`, `HUP`, …) to `child` and waits up to `ticks` × 50 ms for it to
/// exit.
fn signal_and_wait(
    child: &mut std::process::Child,
    signal: &str,
    ticks: u32,
    context: impl Fn() -> String,
) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    for _ in 0..ticks {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!(
        "the coordinator did not stop within {} ms of SIG{signal}\n{}",
        ticks * 50,
        context()
    );
}

#[test]
fn sigterm_stops_the_run_like_ctrl_c_kills_the_tasks_and_writes_the_report() {
    a_stop_signal_stops_the_run_like_ctrl_c("TERM");
}

/// SIGHUP (the terminal closed) is a stop signal too.
#[test]
fn sighup_stops_the_run_like_ctrl_c_kills_the_tasks_and_writes_the_report() {
    a_stop_signal_stops_the_run_like_ctrl_c("HUP");
}

fn a_stop_signal_stops_the_run_like_ctrl_c(signal: &str) {
    let dir = std::env::temp_dir().join(format!("dtf-sig{signal}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let junit = dir.join("junit.xml");
    let task = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .args(["--task", &task, "--junit"])
        .arg(&junit)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The task is running once it wrote its pid (bounded: 20 s).
    let mut task_pid = String::new();
    for _ in 0..400 {
        task_pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if !task_pid.trim().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let task_pid = task_pid.trim().to_owned();
    assert!(!task_pid.is_empty(), "the task never started");
    assert!(alive(&task_pid));
    let status = signal_and_wait(&mut child, signal, 400, String::new);
    // Interrupted with a task unfinished: not a pass, and not killed by the signal either.
    assert_eq!(status.code(), Some(1), "{status:?}");
    let report = std::fs::read_to_string(&junit).expect("the JUnit report was written");
    assert!(report.contains("<testsuite"), "{report}");
    let mut gone = false;
    for _ in 0..40 {
        if !alive(&task_pid) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        gone,
        "the task process {task_pid} outlived the coordinator by 2 s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP server on 127.0.0.1 for the notifier's webhook: it answers every request `200` and
/// keeps each body, in order. Plain `std`: one thread per connection, keep-alive served.
struct Hooks {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Hooks {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let kept = std::sync::Arc::clone(&kept);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    loop {
                        // The request line and headers, then `Content-Length` bytes of body.
                        let mut length = 0usize;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        kept.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if reader.get_mut().write_all(answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

/// SIGTERM flushes the notifications: what the notifier holds (it groups events for a while
/// before sending) and its message that the coordinator is shutting down reach its webhook (a
/// server on 127.0.0.1) before the coordinator exits.
#[test]
fn sigterm_flushes_the_notifications_before_the_coordinator_exits() {
    let hooks = Hooks::start();
    let dir = std::env::temp_dir().join(format!("dtf-sigterm-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins.notify.settings]\nchannels = [{{ type = \"webhook\", url = \"{}\" }}]\n",
            hooks.url
        ),
    )
    .unwrap();
    let log = dir.join("coordinator.log");
    let pid_file = dir.join("pid");
    let task = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .arg("--config")
        .arg(&config)
        .args(["--task", &task, "--progress", "never"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let context = || {
        format!(
            "log:\n{}\nbodies: {:?}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            hooks.bodies()
        )
    };
    // The task runs once it wrote its pid (bounded: 20 s).
    let mut started = false;
    for _ in 0..400 {
        if std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty()) {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(started, "the task never started\n{}", context());
    let status = sigterm_and_wait(&mut child, context);
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", context());
    let bodies = hooks.bodies();
    for kind in ["coordinator_startup", "coordinator_shutdown"] {
        assert!(
            bodies.iter().any(|b| b.contains(kind)),
            "no {kind} notification was sent before the exit\n{}",
            context()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while the coordinator waits for remote workers stops the run: the task is reported
/// cancelled in the JUnit file and the coordinator exits 1. Before, the signal only ended the
/// wait: the run went on to create its task, which no worker could take, and hung (a second
/// signal then exited at once, with no report).
#[test]
fn sigterm_while_waiting_for_remote_workers_stops_the_run_with_a_report() {
    let dir = std::env::temp_dir().join(format!("dtf-sigterm-wait-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let junit = dir.join("junit.xml");
    let log = dir.join("coordinator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .args([
            "--workers",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--insecure-cluster",
            "--task",
            "true",
            "--progress",
            "never",
            "--junit",
        ])
        .arg(&junit)
        .env(
            "DTF_CLUSTER_COOKIE",
            "a-cookie-long-enough-0123456789abcdef",
        )
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut waiting = false;
    for _ in 0..400 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("waiting for 1 remote worker")
        {
            waiting = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        waiting,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let status = sigterm_and_wait(&mut child, || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    assert_eq!(status.code(), Some(1), "{status:?}");
    let report = std::fs::read_to_string(&junit).expect("the JUnit report was written");
    assert!(report.contains("tests=\"1\""), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--ui`: the console serves the run's plugins while it goes on; the generated token is
/// printed once, on stderr; a token from `DTF_UI_TOKEN` is never printed.
#[test]
fn serves_the_web_console_during_the_run() {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::process::Stdio;

    let mut child = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .args([
            "--ui",
            "127.0.0.1:0",
            "--task",
            "sleep 3",
            "--progress",
            "never",
        ])
        .env("RUST_LOG", "error")
        .env_remove("DTF_UI_TOKEN")
        .env_remove("DTF_UI_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("web console: http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no console address in {line:?}"))
        .to_owned();
    let token = line
        .split("#token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 64, "{line}");
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /api/plugins HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"name\":\"dtf-console\""), "{resp}");
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(0));
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains(&token), "the token is printed once: {rest}");

    let out = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .args(["--ui", "127.0.0.1:0", "--task", "true"])
        .env("RUST_LOG", "debug")
        .env("DTF_UI_TOKEN", "from-the-environment-1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("web console: http://127.0.0.1:"), "{all}");
    assert!(!all.contains("from-the-environment-1234"), "{all}");

    let (code, out, err) = coordinator(&["--ui", "nowhere", "--task", "true"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(
        err.starts_with(
            "error: invalid value 'nowhere' for '--ui <ADDR>': expected an address like 127.0.0.1:8080 (or a port), got `nowhere`\n"
        ),
        "{err}"
    );
}

/// Logs on stderr that is not a terminal (a file, a pipe) carry no ANSI colour codes.
#[test]
fn logs_have_no_colour_when_stderr_is_not_a_terminal() {
    let out = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        // A task that outlives the injected kill: `true` could finish first, and then no
        // warning was logged at all (seen once in .ci/run); so could `sleep 0.5` under load.
        // The first attempt runs until it is killed, the retry passes at once.
        .args([
            "--task",
            "[ \"$DTF_ATTEMPT\" != 1 ] || sleep 60",
            "--kill-worker-on-start",
            "cmd-1",
            "--retries",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("fault injection"), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in {err:?}");
}

/// `[ui]` in dtf.toml: `listen` serves the console as `--ui` does, `token_file` (relative to
/// the file) holds its token, and `--ui` wins over `listen`.
#[test]
fn the_ui_section_of_dtf_toml_serves_the_console_and_the_command_line_wins() {
    let dir = std::env::temp_dir().join(format!("dtf-ui-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("token.txt"),
        "token-from-the-file-0123456789abcdef\n",
    )
    .unwrap();
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        "[ui]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"token.txt\"\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
            .args(["--config", config.to_str().unwrap(), "--task", "true"])
            .args(["--progress", "never"])
            .args(extra)
            .env("RUST_LOG", "error")
            .env_remove("DTF_UI_TOKEN")
            .env_remove("DTF_UI_TOKEN_FILE")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(0), "{err}");
    // Served, with the file's token: nothing generated, nothing printed.
    assert!(err.starts_with("web console: http://127.0.0.1:"), "{err}");
    assert!(!err.contains("#token="), "{err}");
    assert!(!err.contains("token-from-the-file"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err) = run(&["--ui", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.starts_with(&format!("web console: http://127.0.0.1:{port}/")),
        "--ui wins: {err}"
    );

    // A bad value is a configuration error at its position, not echoed; an unknown key gets
    // the closest one.
    std::fs::write(&config, "[ui]\nlisten = \"canary-77\"\nlisen = 1\n").unwrap();
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("dtf.toml:2:10: ui.listen: expected an address"),
        "{err}"
    );
    assert!(
        err.contains("ui.lisen: unknown key `lisen` (did you mean `listen`?)"),
        "{err}"
    );
    assert!(!err.contains("canary"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dtf-coordinator plugin …`: help on stdout, usage errors on stderr with exit code 2.
#[test]
fn the_plugin_subcommand_reports_usage_errors_on_stderr() {
    let (code, out, err) = coordinator(&["plugin", "--help"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(
        out.contains("Usage: dtf-coordinator plugin <COMMAND>"),
        "{out}"
    );
    let (code, out, err) = coordinator(&["plugin", "instal", "x"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("unrecognized subcommand 'instal'"), "{err}");
    assert!(err.contains("'install'"), "a suggestion: {err}");
}

/// Whether the process `pid` runs: it exists and is not a zombie waiting for its reaper.
#[cfg(target_os = "linux")]
fn runs(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            != Some("Z")
    })
}

/// A coordinator killed with `SIGKILL` takes its external plugins with it, and what they
/// started, even a process that left their group with `setsid`: its task watchdog finds them
/// by the marker they inherit. Before, only task processes were marked: the plugin (reparented
/// to init) and its children ran on. The same path serves the immediate exit at a second
/// stop signal.
#[cfg(target_os = "linux")]
#[test]
fn a_killed_coordinator_leaves_no_plugin_process_behind() {
    let dir = std::env::temp_dir().join(format!("dtf-kill-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let folder = dir.join("plugins/launcher");
    std::fs::create_dir_all(&folder).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/py-echo/plugin.py");
    std::fs::copy(script, folder.join("plugin.py")).unwrap();
    // The plugin's launcher starts a process in a session of its own, notes its pid and its
    // own (kept by `exec`), then becomes the example plugin.
    std::fs::write(
        folder.join("run.sh"),
        "setsid sleep 300 &\necho $! > \"$DTF_PLUGIN_DIR/child.pid\"\n\
         echo $$ > \"$DTF_PLUGIN_DIR/plugin.pid\"\nexec python3 plugin.py\n",
    )
    .unwrap();
    std::fs::write(
        folder.join("plugin.toml"),
        "name = \"launcher\"\nversion = \"0.1.0\"\nkind = \"monitoring\"\n\
         hooks = [\"task_created\"]\nprotocol = 1\ncommand = \"sh\"\nargs = [\"run.sh\"]\n",
    )
    .unwrap();
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dirs = [{:?}]\n",
            dir.join("plugins").display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .arg("--config")
        .arg(&config)
        .args(["--task", "sleep 60"])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let read_pid = |file: &str| {
        std::fs::read_to_string(folder.join(file))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    // Both pids are written once the plugin has started (bounded: 20 s).
    let (mut plugin, mut grandchild) = (String::new(), String::new());
    for _ in 0..400 {
        (plugin, grandchild) = (read_pid("plugin.pid"), read_pid("child.pid"));
        if !plugin.is_empty() && !grandchild.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !plugin.is_empty() && !grandchild.is_empty(),
        "the plugin never started"
    );
    assert!(runs(&plugin) && runs(&grandchild), "the plugin runs");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if !runs(&plugin) && !runs(&grandchild) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (p, g) = (runs(&plugin), runs(&grandchild));
    // Whatever the outcome, leave nothing running.
    for pid in [&plugin, &grandchild] {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    assert!(
        gone,
        "5 s after the coordinator was killed: plugin running {p}, its setsid child running {g}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second stop signal exits at once, with code 130, while the first one's shutdown waits:
/// here for an external plugin that ignores `shutdown` and has 30 s to exit. The plugin does
/// not outlive the exit (the task watchdog's path, as for a kill).
#[cfg(target_os = "linux")]
#[test]
fn a_second_stop_signal_exits_at_once_with_130() {
    let dir = std::env::temp_dir().join(format!("dtf-second-signal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let folder = dir.join("plugins/stubborn");
    std::fs::create_dir_all(&folder).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/py-echo/plugin.py");
    std::fs::copy(script, folder.join("plugin.py")).unwrap();
    std::fs::write(
        folder.join("run.sh"),
        "echo $$ > \"$DTF_PLUGIN_DIR/plugin.pid\"\nexec python3 plugin.py --ignore-shutdown\n",
    )
    .unwrap();
    std::fs::write(
        folder.join("plugin.toml"),
        "name = \"stubborn\"\nversion = \"0.1.0\"\nkind = \"monitoring\"\n\
         hooks = [\"task_created\"]\nprotocol = 1\ncommand = \"sh\"\nargs = [\"run.sh\"]\n\
         shutdown_grace = \"30s\"\n",
    )
    .unwrap();
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        format!(
            "plugin_dirs = [{:?}]\n[manager]\nhandler_timeout = \"60s\"\nshutdown_timeout = \"60s\"\n",
            dir.join("plugins").display().to_string()
        ),
    )
    .unwrap();
    let log = dir.join("coordinator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .arg("--config")
        .arg(&config)
        .args(["--task", "sleep 60"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let context = || std::fs::read_to_string(&log).unwrap_or_default();
    // The plugin has started once its pid is written (bounded: 20 s).
    let mut plugin = String::new();
    for _ in 0..400 {
        plugin = std::fs::read_to_string(folder.join("plugin.pid"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !plugin.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        !plugin.is_empty(),
        "the plugin never started\n{}",
        context()
    );
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // The first signal's shutdown waits for the plugin, up to its 30 s grace: until the log
    // says it is stopping, and then 1 s more, the coordinator is still running.
    let mut stopping = false;
    for _ in 0..400 {
        if context().contains("stopping the run") {
            stopping = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(stopping, "the first signal was not taken\n{}", context());
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal's shutdown did not wait for the plugin\n{}",
        context()
    );
    // The second one: out within 5 s, with 130.
    let status = signal_and_wait(&mut child, "TERM", 100, context);
    let mut gone = false;
    for _ in 0..100 {
        if !runs(&plugin) {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = Command::new("kill").args(["-KILL", &plugin]).status();
    assert_eq!(status.code(), Some(130), "{status:?}\n{}", context());
    assert!(
        context().contains("second signal: exiting at once"),
        "{}",
        context()
    );
    assert!(gone, "the plugin {plugin} outlived the exit by 5 s");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tasks do not see dtf's own secrets (the console's token, the cluster's cookie) nor any
/// other `DTF_…` variable (configuration overrides, any of which may be a secret): a test that
/// prints its environment when it fails would put them into its output, and from there into
/// the console, JUnit, CI pages and notifications (found by a review). Other variables pass
/// through: tests may need them.
#[test]
fn tasks_do_not_see_the_secrets_of_the_coordinator() {
    let out = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
        .args([
            "--task",
            "[ -z \"$DTF_UI_TOKEN$DTF_CLUSTER_COOKIE$DTF_NOTIFY_TOKEN$DTF_RUN_LABEL\" ] && [ \"$TEST_VISIBLE\" = yes ] && [ \"$DTF_TASK_ID\" = cmd-1 ]",
        ])
        .env("DTF_UI_TOKEN", "canary-token-1234")
        .env("DTF_CLUSTER_COOKIE", "canary-cookie-0123456789abcdef0123456789")
        .env("DTF_NOTIFY_TOKEN", "canary-notify")
        .env("DTF_RUN_LABEL", "https://ci:canary@example.invalid/")
        .env("TEST_VISIBLE", "yes")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "the task saw a secret: {all}");
}
