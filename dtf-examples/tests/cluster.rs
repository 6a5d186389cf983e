//! Multi-machine runs, as processes on 127.0.0.1 started by the tests: a `dtf-coordinator
//! --listen` and `dtf-worker`s, over TLS with certificates made per test (docs/cluster.md).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A child process killed when dropped, so that a failing test leaves no process behind.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const COOKIE: &str = "dtf-test-cookie-0123456789abcdef0123456789";

/// The web console's token, for the tests that start it (`--ui`).
const UI_TOKEN: &str = "dtf-test-ui-token-0123456789abcdef0123456789";

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a certificate for 127.0.0.1 signed by it, written under `dir/name`.
fn make_pki(dir: &Path, name: &str) -> Pki {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("dtf test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, key.serialize_pem()).unwrap();
    pki
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtf-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A free port below Linux's ephemeral range (32768–60999): worker processes bind random
/// ports for their own node servers, so a port found free by binding port 0 could be taken
/// again before the coordinator binds it.
fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as usize * 2;
    loop {
        let p = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 8_000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A task file of `n` tasks; each appends a line to `marks/<id>`, so that the test can
/// count how often each one ran.
fn task_file(dir: &Path, n: usize, command: impl Fn(usize) -> String) -> PathBuf {
    let marks = dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let mut toml = String::new();
    for i in 0..n {
        toml.push_str(&format!(
            "[[task]]\nid = \"t{i:04}\"\ncommand = '''{}'''\n\n",
            command(i)
        ));
    }
    let path = dir.join("tasks.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// A task file of one task that runs until `file` exists.
fn task_waiting_for(dir: &Path, file: &Path) {
    task_file(dir, 1, |_| {
        format!("while [ ! -f {} ]; do sleep 0.05; done", file.display())
    });
}

fn mark(dir: &Path) -> String {
    format!("echo ran >> {}/marks/$DTF_TASK_ID", dir.display())
}

fn coordinator(dir: &Path, port: u16, pki: &Pki, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"));
    // Remote workers only, unless the test says otherwise.
    if !extra.contains(&"--workers") {
        cmd.args(["--workers", "0"]);
    }
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&pki.cert)
        .arg("--tls-key")
        .arg(&pki.key)
        .arg("--tasks")
        .arg(dir.join("tasks.toml"))
        .arg("--junit")
        .arg(dir.join("junit.xml"))
        .args(["--progress", "never"])
        .args(extra)
        .env("DTF_CLUSTER_COOKIE", COOKIE)
        .env("DTF_UI_TOKEN", UI_TOKEN)
        .env("RUST_LOG", "warn,dtf_cluster=info,dtf_examples=info")
        // Files, not pipes: nobody reads a pipe before the process ends, and a full pipe
        // would block the summary table.
        .stdout(std::fs::File::create(dir.join("coordinator.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("coordinator.log")).unwrap());
    Proc(cmd.spawn().unwrap())
}

fn worker(dir: &Path, addr: &str, ca: &Path, id: &str, extra: &[&str]) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_dtf-worker"))
            .args(["--coordinator", addr, "--id", id])
            .arg("--ca")
            .arg(ca)
            .args(extra)
            .env("DTF_CLUSTER_COOKIE", COOKIE)
            .env("RUST_LOG", "warn,dtf_cluster=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Lets the run's task end (`done`), then checks that the coordinator and `node` (which logs
/// to `node_log`) exit 0 and that the node was never refused. Returns the coordinator's log.
fn end_the_run(
    dir: &Path,
    done: &Path,
    coord: &mut Child,
    node: &mut Child,
    node_log: &Path,
) -> String {
    std::fs::write(done, "").unwrap();
    let code = wait(coord, Duration::from_secs(60));
    let clog = log(dir, "coordinator.log");
    assert_eq!(code, Some(0), "{}\n{clog}", log(dir, "coordinator.out"));
    let nlog = || std::fs::read_to_string(node_log).unwrap_or_default();
    assert_eq!(wait(node, Duration::from_secs(10)), Some(0), "{}", nlog());
    assert!(!nlog().contains("refused"), "{}", nlog());
    clog
}

/// Waits for `child` up to `limit`, killing it after.
fn wait(child: &mut Child, limit: Duration) -> Option<i32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A log or output file, without ANSI colour codes.
fn log(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every task ran exactly once, and the JUnit file has one passed case per task.
fn assert_each_ran_once(dir: &Path, n: usize) {
    for i in 0..n {
        let marks = std::fs::read_to_string(dir.join(format!("marks/t{i:04}"))).unwrap_or_default();
        assert_eq!(
            marks.lines().count(),
            1,
            "task t{i:04} ran {} times",
            marks.lines().count()
        );
    }
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), n, "{junit}");
    assert_eq!(junit.matches("<failure").count(), 0, "{junit}");
}

#[test]
fn three_worker_processes_run_300_tasks_each_exactly_once() {
    let dir = temp_dir("300");
    let pki = make_pki(&dir, "ok");
    task_file(&dir, 300, |_| mark(&dir));
    let port = free_port();
    let mut coord = coordinator(&dir, port, &pki, &["--min-workers", "3"]);
    let addr = format!("127.0.0.1:{port}");
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| {
            worker(
                &dir,
                &addr,
                &pki.ca,
                &format!("remote-{i}"),
                &["--slots", "2"],
            )
        })
        .collect();
    let code = wait(&mut coord, Duration::from_secs(120));
    let out = log(&dir, "coordinator.out");
    assert_eq!(code, Some(0), "{out}\n{}", log(&dir, "coordinator.log"));
    assert_each_ran_once(&dir, 300);
    // Every worker took part, and each exits when the coordinator says the run is over.
    for (i, w) in workers.iter_mut().enumerate() {
        assert_eq!(
            wait(w, Duration::from_secs(10)),
            Some(0),
            "worker {}",
            i + 1
        );
        assert!(out.contains(&format!("remote-{}", i + 1)), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_killed_worker_fails_its_task_reruns_elsewhere_and_leaves_no_process() {
    let dir = temp_dir("kill");
    let pki = make_pki(&dir, "ok");
    let pidfile = dir.join("pid");
    // The first attempt records its pid and hangs; the re-run passes.
    task_file(&dir, 1, |_| {
        format!(
            "{}; if [ \"$DTF_ATTEMPT\" = 1 ]; then echo $$ > {}; sleep 60; fi",
            mark(&dir),
            pidfile.display()
        )
    });
    let port = free_port();
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &[
            "--min-workers",
            "2",
            "--heartbeat-timeout",
            "1",
            "--reconnect-grace",
            "1",
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let args = ["--heartbeat-timeout", "1"];
    let mut a = worker(&dir, &addr, &pki.ca, "remote-a", &args);
    let mut b = worker(&dir, &addr, &pki.ca, "remote-b", &args);
    let start = Instant::now();
    let task_pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            log(&dir, "coordinator.log")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let running_on = parent_of(task_pid).unwrap();
    let (victim, other) = if running_on == a.id() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(
        running_on,
        victim.id(),
        "the task's shell is a child of a worker"
    );
    victim.kill().unwrap(); // SIGKILL: no destructor runs
    let _ = victim.wait();
    let killed = Instant::now();
    while alive(task_pid) && killed.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(task_pid),
        "the task process outlived its killed worker by 2 s"
    );
    let code = wait(&mut coord, Duration::from_secs(60));
    let out = log(&dir, "coordinator.out");
    let log = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{out}\n{log}");
    assert!(log.contains("did not come back"), "{log}");
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 1, "{junit}");
    assert_eq!(junit.matches("<failure").count(), 0, "{junit}");
    // Ran twice: on the killed worker, then on the other one.
    let marks = std::fs::read_to_string(dir.join("marks/t0000")).unwrap();
    assert_eq!(marks.lines().count(), 2);
    assert_eq!(wait(other, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy on 127.0.0.1 that can cut every connection through it.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// While set, nothing is forwarded (the connections stay open): a network stall.
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let (c, s, f) = (Arc::clone(&cut), Arc::clone(&stop), Arc::clone(&frozen));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let generation = c.load(Ordering::Relaxed);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    let c = Arc::clone(&c);
                    let f = Arc::clone(&f);
                    from.set_read_timeout(Some(Duration::from_millis(20)))
                        .unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if c.load(Ordering::Relaxed) != generation {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            if f.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => {
                                    let _ = to.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                        }
                    });
                }
            }
        });
        Self {
            addr,
            cut,
            stop,
            frozen,
        }
    }

    /// A proxy to the coordinator listening on `port`, once it listens.
    fn to_coordinator(port: u16) -> Self {
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let start = Instant::now();
        while TcpStream::connect(target).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the coordinator never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self::start(target)
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        self.cut.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn twenty_cut_connections_during_2000_tasks_lose_and_duplicate_nothing() {
    let dir = temp_dir("cuts");
    let pki = make_pki(&dir, "ok");
    let n = 2000;
    // The first task holds the run open until the cuts are done (on a fast machine the other
    // 1,999 could all finish first).
    let cuts_done = dir.join("cuts-done");
    task_file(&dir, n, |i| {
        if i == 0 {
            format!(
                "while [ ! -f {} ]; do sleep 0.05; done; {}",
                cuts_done.display(),
                mark(&dir)
            )
        } else {
            mark(&dir)
        }
    });
    let port = free_port();
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &[
            "--min-workers",
            "3",
            "--heartbeat-timeout",
            "5",
            "--reconnect-grace",
            "60",
        ],
    );
    let proxy = Proxy::to_coordinator(port);
    let addr = proxy.addr.to_string();
    let mut workers: Vec<Proc> = (1..=3)
        .map(|i| {
            worker(
                &dir,
                &addr,
                &pki.ca,
                &format!("remote-{i}"),
                &["--slots", "2", "--heartbeat-timeout", "5"],
            )
        })
        .collect();
    // Cut 20 times while tasks run (a mark file appears per finished task).
    let marks = dir.join("marks");
    let mut cuts = 0;
    while cuts < 20 {
        std::thread::sleep(Duration::from_millis(150));
        let done = std::fs::read_dir(&marks).unwrap().count();
        if done > 0 && done < n {
            proxy.cut();
            cuts += 1;
        }
        if let Some(status) = coord.try_wait().unwrap() {
            panic!(
                "the run ended after {cuts} cuts: {status:?}\n{}",
                log(&dir, "coordinator.log")
            );
        }
    }
    std::fs::write(&cuts_done, "").unwrap();
    let code = wait(&mut coord, Duration::from_secs(120));
    // The cuts cut the workers' connections (each cut cuts all three, when connected).
    let lost: usize = (1..=3)
        .map(|i| {
            log(&dir, &format!("remote-{i}.log"))
                .matches("lost the connection to the coordinator")
                .count()
        })
        .sum();
    assert!(lost >= 10, "{lost} lost connections in 20 cuts");
    let out = log(&dir, "coordinator.out");
    let log = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{out}\n{log}");
    assert_each_ran_once(&dir, n);
    // The delivery layer's own account: resends happened, nothing applied twice.
    let stats = log
        .lines()
        .rev()
        .find(|l| l.contains("cluster delivery"))
        .unwrap_or_default();
    eprintln!("{stats}");
    assert!(stats.contains("duplicate_results=0"), "{stats}");
    assert!(stats.contains(&format!("applied={}", 2 * n)), "{stats}");
    for w in &mut workers {
        wait(w, Duration::from_secs(10));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--run-timeout` bounds the wait for remote workers too: with none coming (a firewall, a
/// wrong cookie), the run ends at the timeout, its tasks cancelled and reported, and the
/// exit code says so. Before, it waited for ever (found by a review).
#[test]
fn a_run_timeout_bounds_the_wait_for_remote_workers() {
    let dir = temp_dir("no-workers");
    let pki = make_pki(&dir, "ok");
    task_file(&dir, 3, |_| mark(&dir));
    let port = free_port();
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &["--min-workers", "2", "--run-timeout", "2"],
    );
    let code = wait(&mut coord, Duration::from_secs(60));
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(1), "{clog}");
    assert!(
        clog.contains("--run-timeout passed while waiting for remote workers: 0 of 2 registered"),
        "{clog}"
    );
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    // Never started: listed, and said to be cancelled by the timeout (the exit code is 1).
    assert!(junit.contains("tests=\"3\""), "{junit}");
    assert_eq!(
        junit.matches("cancelled: the run timed out").count(),
        3,
        "{junit}"
    );
    assert!(!dir.join("marks/t0000").exists());

    // Fault injection kills local workers: with none, it is refused rather than a run that
    // passes without the fault (found by a review).
    let mut coord = coordinator(&dir, port, &pki, &["--kill-worker-on-start", "t0000"]);
    assert_eq!(wait(&mut coord, Duration::from_secs(30)), Some(2));
    let clog = log(&dir, "coordinator.log");
    assert!(
        clog.contains("--kill-worker-on-start: kills a local worker, and --workers 0 runs none"),
        "{clog}"
    );
}

#[test]
fn refused_connections_are_logged_and_the_coordinator_keeps_serving() {
    let dir = temp_dir("refuse");
    let pki = make_pki(&dir, "ok");
    let other = make_pki(&dir, "other-ca");
    task_file(&dir, 20, |_| mark(&dir));
    let port = free_port();
    let mut coord = coordinator(&dir, port, &pki, &["--min-workers", "1"]);
    let addr = format!("127.0.0.1:{port}");
    let give_up = ["--give-up-after", "2"];
    // A certificate from another CA: the worker refuses the coordinator.
    let mut bad_ca = worker(&dir, &addr, &other.ca, "bad-ca", &give_up);
    assert_eq!(wait(&mut bad_ca, Duration::from_secs(20)), Some(1));
    assert!(
        log(&dir, "bad-ca.log").contains("cannot reach the coordinator"),
        "{}",
        log(&dir, "bad-ca.log")
    );
    // Plain TCP to the TLS listener.
    let mut plain = Command::new(env!("CARGO_BIN_EXE_dtf-worker"))
        .args([
            "--coordinator",
            &addr,
            "--id",
            "plain",
            "--insecure-cluster",
            "--give-up-after",
            "2",
        ])
        .env("DTF_CLUSTER_COOKIE", COOKIE)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(wait(&mut plain, Duration::from_secs(20)), Some(1));
    // The wrong cookie.
    let mut cookie = Command::new(env!("CARGO_BIN_EXE_dtf-worker"))
        .args([
            "--coordinator",
            &addr,
            "--id",
            "cookie",
            "--give-up-after",
            "2",
        ])
        .arg("--ca")
        .arg(&pki.ca)
        .env(
            "DTF_CLUSTER_COOKIE",
            "another-cookie-0123456789abcdef0123456789",
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(wait(&mut cookie, Duration::from_secs(20)), Some(1));
    // A cookie that is too short is refused before any connection, without echoing it.
    let short = Command::new(env!("CARGO_BIN_EXE_dtf-worker"))
        .args(["--coordinator", &addr, "--insecure-cluster"])
        .env("DTF_CLUSTER_COOKIE", "hunter2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(1));
    assert!(
        err.contains("at least 32 are required") && !err.contains("hunter2"),
        "{err}"
    );
    // 10,000 connections of garbage bytes.
    let garbage: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for _ in 0..10_000 {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(&garbage);
        }
    }
    // Still serving: a good worker registers and the run passes.
    let mut good = worker(&dir, &addr, &pki.ca, "good", &[]);
    let code = wait(&mut coord, Duration::from_secs(120));
    let out = log(&dir, "coordinator.out");
    let log = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{out}\n{log}");
    assert_each_ran_once(&dir, 20);
    assert!(
        log.contains("refused a cluster connection: TLS handshake failed"),
        "{log}"
    );
    assert!(!log.contains(COOKIE), "the cookie is never logged");
    // Refusals are rate-limited: far fewer lines than connections.
    assert!(
        log.matches("refused a cluster connection").count() < 200,
        "{log}"
    );
    assert_eq!(wait(&mut good, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_worker_back_within_the_grace_is_recovered_and_nothing_runs_twice() {
    let dir = temp_dir("grace");
    let pki = make_pki(&dir, "ok");
    let n = 40;
    task_file(&dir, n, |_| format!("{}; sleep 0.1", mark(&dir)));
    let (mut coord, proxy, mut w) = one_worker_behind_a_proxy(&dir, &pki, "30", &["--slots", "2"]);
    let start = Instant::now();
    // Stall the network for 2.5 s while tasks run: longer than the heartbeat timeout,
    // well within the grace.
    let marks = dir.join("marks");
    wait_until(&dir, start, || {
        std::fs::read_dir(&marks).unwrap().count() >= 4
    });
    // Frozen until the coordinator has noticed (however long that takes under load), and
    // 1.5 s more, so that the worker's own heartbeat timeout passes too.
    proxy.frozen.store(true, Ordering::Relaxed);
    wait_for_log(&dir, "coordinator.log", "no heartbeat for");
    std::thread::sleep(Duration::from_millis(1500));
    proxy.frozen.store(false, Ordering::Relaxed);
    let code = wait(&mut coord, Duration::from_secs(120));
    let out = log(&dir, "coordinator.out");
    let log = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{out}\n{log}");
    let disconnected = log.find("no heartbeat for").expect("reported disconnected");
    let back = log.find("the worker is back").expect("reported recovered");
    assert!(disconnected < back, "{log}");
    assert!(!log.contains("did not come back"), "{log}");
    // Its tasks waited for it: none was re-queued, none ran twice, none failed.
    assert_each_ran_once(&dir, n);
    let stats = log
        .lines()
        .rev()
        .find(|l| l.contains("cluster delivery"))
        .unwrap_or_default();
    assert!(
        stats.contains("duplicate_results=0") && stats.contains("late_results=0"),
        "{stats}"
    );
    assert_eq!(wait(&mut w, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A coordinator waiting for one remote worker (heartbeat timeout 1 s, the given reconnect
/// grace), and the worker `remote-1` reaching it through a proxy the test can freeze.
fn one_worker_behind_a_proxy(
    dir: &Path,
    pki: &Pki,
    grace: &str,
    worker_args: &[&str],
) -> (Proc, Proxy, Proc) {
    let port = free_port();
    let coord = coordinator(
        dir,
        port,
        pki,
        &[
            "--min-workers",
            "1",
            "--heartbeat-timeout",
            "1",
            "--reconnect-grace",
            grace,
        ],
    );
    let proxy = Proxy::to_coordinator(port);
    let args = [worker_args, &["--heartbeat-timeout", "1"]].concat();
    let w = worker(dir, &proxy.addr.to_string(), &pki.ca, "remote-1", &args);
    (coord, proxy, w)
}

/// Writes a task `t` (two retries) whose first attempt leaves a process running (its pid in
/// `sleep-pid`) and whose next attempt writes that process's state to `first-attempt`.
fn task_with_a_lingering_first_attempt(dir: &Path) {
    let d = dir.display();
    let command = format!(
        "if [ \"$DTF_ATTEMPT\" = 1 ]; then sleep 120 & echo $! > {d}/sleep-pid; wait; \
         else sleep 0.5; st=$(awk '{{print $3}}' /proc/$(cat {d}/sleep-pid)/stat 2>/dev/null); \
         echo \"state=$st\" > {d}/first-attempt; fi"
    );
    std::fs::write(
        dir.join("tasks.toml"),
        format!("[[task]]\nid = \"t\"\nretries = 2\ncommand = '''{command}'''\n"),
    )
    .unwrap();
}

/// Asserts that the first attempt's process of [`task_with_a_lingering_first_attempt`] was
/// gone (no `/proc` entry, or dead and not yet reaped: `Z`) when the next attempt looked.
fn assert_first_attempt_was_gone(dir: &Path, context: &str) {
    let first = std::fs::read_to_string(dir.join("first-attempt")).unwrap_or_default();
    assert!(
        first.trim() == "state=" || first.trim() == "state=Z",
        "the first attempt still ran when the second started: {first}\n{}\n{context}",
        log(dir, "remote-1.log")
    );
}

/// A worker taken for failed, and back, stops the jobs the coordinator gave up before it
/// runs their tasks again: the task's first attempt (a process in the background) is gone
/// by the time its second attempt starts on the same worker. Before, the first attempt went
/// on beside the second (two copies of one test on shared resources), the worker running
/// more jobs than its slots.
#[test]
fn a_worker_back_after_being_taken_for_failed_stops_the_jobs_given_up() {
    let dir = temp_dir("void");
    let pki = make_pki(&dir, "ok");
    task_with_a_lingering_first_attempt(&dir);
    let (mut coord, proxy, mut w) = one_worker_behind_a_proxy(&dir, &pki, "1", &[]);
    let start = Instant::now();
    wait_until(&dir, start, || dir.join("sleep-pid").exists());
    // Cut off until the coordinator has given the worker up and re-queued its task.
    proxy.frozen.store(true, Ordering::Relaxed);
    wait_for_log(&dir, "coordinator.log", "did not come back");
    proxy.frozen.store(false, Ordering::Relaxed);
    let code = wait(&mut coord, Duration::from_secs(120));
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{}\n{clog}", log(&dir, "coordinator.out"));
    assert_first_attempt_was_gone(&dir, &clog);
    // Stopped by the worker itself while cut off (its fence), or, had it come back before
    // the fence's time, as it came back (`stop_void_jobs`).
    let wlog = log(&dir, "remote-1.log");
    assert!(
        wlog.contains("gave this job up") || wlog.contains("cut off from the coordinator"),
        "{wlog}"
    );
    assert_eq!(wait(&mut w, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker cut off from the coordinator stops its jobs before the coordinator takes it for
/// failed and runs their tasks again elsewhere: while the worker stays unreachable, the
/// task's second attempt, on another worker, finds the first attempt's process gone. Before,
/// the first attempt ran on beside the second until the worker was back (two copies of one
/// test on shared resources), or for good if it never came back.
#[test]
fn a_worker_cut_off_stops_its_jobs_before_they_run_again_elsewhere() {
    let dir = temp_dir("fence");
    let pki = make_pki(&dir, "ok");
    task_with_a_lingering_first_attempt(&dir);
    let port = free_port();
    // Taken for failed after 1 + 3 s of silence; the worker stops its jobs after 2 s.
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &[
            "--min-workers",
            "1",
            "--heartbeat-timeout",
            "1",
            "--reconnect-grace",
            "3",
        ],
    );
    let proxy = Proxy::to_coordinator(port);
    let cut_off = worker(
        &dir,
        &proxy.addr.to_string(),
        &pki.ca,
        "remote-1",
        &["--heartbeat-timeout", "1"],
    );
    let start = Instant::now();
    wait_until(&dir, start, || dir.join("sleep-pid").exists());
    // The second attempt's worker, reaching the coordinator directly.
    let mut other = worker(&dir, &format!("127.0.0.1:{port}"), &pki.ca, "remote-2", &[]);
    proxy.frozen.store(true, Ordering::Relaxed);
    // Unreachable until the second attempt has looked.
    wait_until(&dir, start, || dir.join("first-attempt").exists());
    proxy.frozen.store(false, Ordering::Relaxed);
    let code = wait(&mut coord, Duration::from_secs(120));
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{}\n{clog}", log(&dir, "coordinator.out"));
    assert_first_attempt_was_gone(&dir, &clog);
    assert!(
        log(&dir, "remote-1.log").contains("cut off from the coordinator"),
        "{}",
        log(&dir, "remote-1.log")
    );
    assert_eq!(wait(&mut other, Duration::from_secs(10)), Some(0));
    // The cut-off worker may still be reconnecting when the run ends: it is killed on drop.
    drop(cut_off);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a configuration file at `file` that sets the `event-log` plugin's file to `log`
/// (and enables it, for a coordinator; a plugin host runs what `--plugins` names).
fn event_log_config(file: &Path, log: &Path, enabled: bool) {
    let enabled = if enabled { "enabled = true\n" } else { "" };
    let settings = format!("settings = {{ path = \"{}\" }}\n", log.display());
    std::fs::write(file, format!("[plugins.event-log]\n{enabled}{settings}")).unwrap();
}

/// Waits (up to 30 s) until the log file `name` under `dir` says `needle`.
fn wait_for_log(dir: &Path, name: &str, needle: &str) {
    let start = Instant::now();
    while !log(dir, name).contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            log(dir, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 60 s from `start`) until `done` holds; failing, shows the coordinator's log.
fn wait_until(dir: &Path, start: Instant, mut done: impl FnMut() -> bool) {
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            log(dir, "coordinator.log")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn plugin_host(dir: &Path, addr: &str, ca: &Path, id: &str, config: &Path) -> Proc {
    worker(
        dir,
        addr,
        ca,
        id,
        &[
            "--slots",
            "0",
            "--plugins",
            "event-log",
            "--config",
            config.to_str().unwrap(),
            "--heartbeat-timeout",
            "1",
        ],
    )
}

/// The lines of `path`, each kept once (first occurrence): a host restarted mid-run handles
/// the unacknowledged events again (at least once across a host restart).
fn distinct_lines(path: &Path) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| seen.insert(l.to_string()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_remote_plugin_host_gets_every_event_in_order_across_a_restart() {
    let dir = temp_dir("host");
    let pki = make_pki(&dir, "ok");
    let n = 120;
    task_file(&dir, n, |_| format!("{}; sleep 0.02", mark(&dir)));
    let local_log = dir.join("local.jsonl");
    let remote_log = dir.join("remote.jsonl");
    let coord_toml = dir.join("coordinator.toml");
    event_log_config(&coord_toml, &local_log, true);
    let host_toml = dir.join("host.toml");
    event_log_config(&host_toml, &remote_log, false);
    let port = free_port();
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &[
            "--min-workers",
            "2",
            "--heartbeat-timeout",
            "1",
            "--reconnect-grace",
            "30",
            "--config",
            coord_toml.to_str().unwrap(),
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let mut host = plugin_host(&dir, &addr, &pki.ca, "host-1", &host_toml);
    // The host registers first, so its plugin is added before any task event.
    let start = Instant::now();
    wait_for_log(&dir, "coordinator.log", "a remote plugin joined");
    let mut w = worker(
        &dir,
        &addr,
        &pki.ca,
        "remote-1",
        &["--slots", "2", "--heartbeat-timeout", "1"],
    );
    // Kill the host mid-run, then start it again under the same id.
    wait_until(&dir, start, || distinct_lines(&remote_log).len() >= 60);
    host.kill().unwrap();
    let _ = host.wait();
    std::thread::sleep(Duration::from_millis(1500));
    let mut host = plugin_host(&dir, &addr, &pki.ca, "host-1", &host_toml);
    let code = wait(&mut coord, Duration::from_secs(120));
    let out = log(&dir, "coordinator.out");
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{out}\n{clog}");
    assert_each_ran_once(&dir, n);
    // The host really was replaced mid-run.
    assert!(clog.contains("the worker restarted"), "{clog}");
    // Listed and counted by the coordinator's manager like a local plugin.
    assert!(out.contains("event-log@host-1"), "{out}");
    // Every event the remote plugin subscribed to since it joined, in publish order: the
    // local event log's lines from the remote one's first line on.
    let local = std::fs::read_to_string(&local_log).unwrap();
    let local: Vec<&str> = local.lines().collect();
    // The host's own manager tells its plugin that it started (once per host process):
    // not a coordinator event.
    let host_local = r#"{"type":"plugin_started","data":{"plugin":"event-log","restarts":0}}"#;
    let remote: Vec<String> = distinct_lines(&remote_log)
        .into_iter()
        .filter(|l| l != host_local)
        .collect();
    let first = local
        .iter()
        .position(|l| *l == remote[0])
        .expect("the remote plugin's first event is a local one");
    let mut seen = std::collections::HashSet::new();
    let expected: Vec<String> = local[first..]
        .iter()
        .filter(|l| seen.insert(l.to_string()))
        .map(|s| s.to_string())
        .collect();
    // The coordinator's shutdown event may arrive after the host was told goodbye; all else
    // must be there.
    let remote_cmp: Vec<String> = remote
        .iter()
        .filter(|l| !l.contains("coordinator_shutdown"))
        .cloned()
        .collect();
    let expected_cmp: Vec<String> = expected
        .iter()
        .filter(|l| !l.contains("coordinator_shutdown"))
        .cloned()
        .collect();
    assert_eq!(remote_cmp.len(), expected_cmp.len(), "{clog}");
    assert_eq!(remote_cmp, expected_cmp);
    assert!(
        remote.len() > 4 * n,
        "task events of every task: {}",
        remote.len()
    );
    assert_eq!(wait(&mut w, Duration::from_secs(10)), Some(0));
    assert_eq!(wait(&mut host, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

fn publisher(dir: &Path, addr: &str, ca: &Path, id: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_dtf-publish"))
            .args([
                "--coordinator",
                addr,
                "--id",
                id,
                "--heartbeat-timeout",
                "1",
            ])
            .arg("--ca")
            .arg(ca)
            .env("DTF_CLUSTER_COOKIE", COOKIE)
            .env("RUST_LOG", "warn,dtf_cluster=info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("publisher-{id}.log"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// A remote publisher and a worker may not share an id: whichever comes second is refused
/// and exits with an error that says why, and the first one is not disturbed (the refusal
/// goes to every node of the id, and only the refused incarnation acts on it). Before, the
/// second one waited forever for acknowledgements the hub never sent.
#[test]
fn a_publisher_and_a_worker_with_the_same_id_are_refused_and_told_why() {
    use dtf_plugin_core::event::EventKind;
    let dir = temp_dir("same-id");
    let pki = make_pki(&dir, "ok");
    let done = dir.join("done");
    task_waiting_for(&dir, &done);
    let port = free_port();
    let mut coord = coordinator(&dir, port, &pki, &["--workers", "1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut w = worker(&dir, &addr, &pki.ca, "node-w", &[]);
    wait_for_log(&dir, "coordinator.log", "a remote worker registered");
    let event = serde_json::to_string(&EventKind::custom(
        "test.published",
        serde_json::json!({ "i": 1 }),
    ))
    .unwrap();
    let publish = |id: &str| {
        let mut p = publisher(&dir, &addr, &pki.ca, id);
        let mut stdin = p.stdin.take().unwrap();
        writeln!(stdin, "{event}").unwrap();
        drop(stdin);
        p
    };

    // A publisher with the worker's id.
    let mut p = publish("node-w");
    assert_eq!(wait(&mut p, Duration::from_secs(30)), Some(1));
    let plog = log(&dir, "publisher-node-w.log");
    assert!(
        plog.contains(
            "the coordinator refused this node: the id `node-w` is a worker's in this run"
        ),
        "{plog}"
    );

    // A publisher with an id of its own, then a worker with that id.
    let mut q = publish("node-p");
    assert_eq!(wait(&mut q, Duration::from_secs(30)), Some(0));
    let mut v = worker(&dir, &addr, &pki.ca, "node-p", &[]);
    assert_eq!(wait(&mut v, Duration::from_secs(30)), Some(1));
    let vlog = log(&dir, "node-p.log");
    assert!(
        vlog.contains("the id `node-p` is a remote publisher's in this run"),
        "{vlog}"
    );

    // The worker that held its id first is still serving: the run ends normally for it.
    end_the_run(&dir, &done, &mut coord, &mut w, &dir.join("node-w.log"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node whose frame cap differs from the coordinator's is refused and exits 1 naming both
/// caps; one with the coordinator's cap serves the run. A frame over the receiver's cap closes
/// the connection, so with different caps the sender would resend such a frame after every
/// reconnect. Both sides' `--max-frame` is checked here: were the coordinator's flag not
/// applied, the second worker would be the one refused.
#[test]
fn a_node_with_another_frame_cap_is_refused_and_told_why() {
    let dir = temp_dir("frame-cap");
    let pki = make_pki(&dir, "ok");
    let done = dir.join("done");
    task_waiting_for(&dir, &done);
    let port = free_port();
    let mut coord = coordinator(&dir, port, &pki, &["--max-frame", "1048576"]);
    let addr = format!("127.0.0.1:{port}");

    let mut other = worker(&dir, &addr, &pki.ca, "node-4m", &[]);
    assert_eq!(
        wait(&mut other, Duration::from_secs(30)),
        Some(1),
        "{}",
        log(&dir, "node-4m.log")
    );
    let olog = log(&dir, "node-4m.log");
    assert!(
        olog.contains(
            "the coordinator refused this node: this node's frame cap (4194304 bytes) \
             differs from the coordinator's (1048576 bytes)"
        ),
        "{olog}"
    );
    assert!(
        log(&dir, "coordinator.log").contains("a node with another frame cap; refused"),
        "{}",
        log(&dir, "coordinator.log")
    );

    let mut same = worker(&dir, &addr, &pki.ca, "node-1m", &["--max-frame", "1048576"]);
    wait_for_log(&dir, "coordinator.log", "a remote worker registered");
    std::fs::write(&done, "").unwrap();
    let code = wait(&mut coord, Duration::from_secs(60));
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{}\n{clog}", log(&dir, "coordinator.out"));
    assert_eq!(
        wait(&mut same, Duration::from_secs(10)),
        Some(0),
        "{}",
        log(&dir, "node-1m.log")
    );
    // The refused node was never registered.
    assert_eq!(
        clog.matches("a remote worker registered").count(),
        1,
        "{clog}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two live workers with one id (pods that all run `dtf-worker` as pid 1 had the same default
/// id): the newer one takes the id, and the older one is told so and exits 1. Before, the hub
/// dropped the older one's frames silently; it took the id back at its next `Hello` after a
/// heartbeat timeout, and the two evicted each other for the rest of the run.
#[test]
fn the_older_of_two_workers_with_one_id_is_told_to_stop() {
    let dir = temp_dir("twin-ids");
    let pki = make_pki(&dir, "ok");
    let done = dir.join("done");
    task_waiting_for(&dir, &done);
    let port = free_port();
    let mut coord = coordinator(&dir, port, &pki, &["--workers", "1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut older = worker(&dir, &addr, &pki.ca, "twin", &[]);
    wait_for_log(&dir, "coordinator.log", "a remote worker registered");
    // The same id, its log in a directory of its own.
    let newer_dir = dir.join("newer");
    std::fs::create_dir_all(&newer_dir).unwrap();
    let mut newer = worker(&newer_dir, &addr, &pki.ca, "twin", &[]);
    assert_eq!(
        wait(&mut older, Duration::from_secs(30)),
        Some(1),
        "{}",
        log(&dir, "twin.log")
    );
    let olog = log(&dir, "twin.log");
    assert!(
        olog.contains(
            "the coordinator refused this node: another node took the id `twin` (a newer \
             process with the same id); give each node its own `--id`"
        ),
        "{olog}"
    );
    // The newer one serves the run to its end.
    end_the_run(
        &dir,
        &done,
        &mut coord,
        &mut newer,
        &newer_dir.join("twin.log"),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A coordinator killed and started again on the same address is a new run, which does not
/// know the numbering of the old one's nodes: a worker and a publisher of the old run are
/// refused and exit 1 saying so, instead of waiting forever (the publisher's events would have
/// been a gap to the new hub, its flush never resolving) or serving a run whose jobs they
/// cannot number. The new run registers neither.
#[test]
fn nodes_of_a_restarted_coordinators_previous_run_are_refused_and_told_why() {
    use dtf_plugin_core::event::EventKind;
    let dir = temp_dir("restart");
    let pki = make_pki(&dir, "ok");
    let done = dir.join("done");
    task_waiting_for(&dir, &done);
    let port = free_port();
    let mut old = coordinator(&dir, port, &pki, &["--workers", "1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut w = worker(
        &dir,
        &addr,
        &pki.ca,
        "node-w",
        &["--heartbeat-timeout", "1"],
    );
    let mut p = publisher(&dir, &addr, &pki.ca, "node-p");
    let mut stdin = p.stdin.take().unwrap();
    let event = |i: u64| {
        serde_json::to_string(&EventKind::custom(
            "test.published",
            serde_json::json!({ "i": i }),
        ))
        .unwrap()
    };
    writeln!(stdin, "{}", event(1)).unwrap();
    let start = Instant::now();
    loop {
        let clog = log(&dir, "coordinator.log");
        if clog.contains("a remote worker registered")
            && clog.contains("a remote publisher connected")
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{clog}");
        std::thread::sleep(Duration::from_millis(20));
    }
    old.kill().unwrap(); // SIGKILL: it says goodbye to nobody
    let _ = old.wait();
    let mut new = coordinator(&dir, port, &pki, &["--workers", "1"]);

    assert_eq!(
        wait(&mut w, Duration::from_secs(30)),
        Some(1),
        "{}",
        log(&dir, "node-w.log")
    );
    let wlog = log(&dir, "node-w.log");
    assert!(
        wlog.contains("the coordinator restarted: this node served its previous run"),
        "{wlog}"
    );
    writeln!(stdin, "{}", event(2)).unwrap();
    drop(stdin);
    assert_eq!(wait(&mut p, Duration::from_secs(30)), Some(1));
    let plog = log(&dir, "publisher-node-p.log");
    assert!(
        plog.contains("the coordinator restarted: this node served its previous run"),
        "{plog}"
    );

    std::fs::write(&done, "").unwrap();
    let code = wait(&mut new, Duration::from_secs(60));
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{}\n{clog}", log(&dir, "coordinator.out"));
    assert!(
        clog.contains("a node of the coordinator's previous run"),
        "{clog}"
    );
    assert!(!clog.contains("a remote worker registered"), "{clog}");
    assert!(!clog.contains("a remote publisher connected"), "{clog}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A remote publisher (`dtf-publish`, events on stdin) behind a proxy that cuts the
/// connection 10 times: every event lands on the coordinator's bus exactly once and in
/// order. A bad line stops a second publisher with its line number, after what came before
/// it was delivered; the coordinator's own lifecycle events from a publisher are dropped.
#[test]
fn a_remote_publisher_lands_every_event_once_in_order_across_cuts() {
    use dtf_plugin_core::event::{EventKind, ShutdownReason, TaskCompleted, TaskOutcome};
    use std::collections::BTreeMap;
    let dir = temp_dir("publish");
    let pki = make_pki(&dir, "ok");
    let done = dir.join("done");
    // One local task that keeps the run open until the test is done publishing, and a second
    // worker, idle: a task a publisher creates must not be placed on it.
    task_waiting_for(&dir, &done);
    let local_log = dir.join("local.jsonl");
    let coord_toml = dir.join("coordinator.toml");
    event_log_config(&coord_toml, &local_log, true);
    let port = free_port();
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &[
            "--workers",
            "2",
            "--heartbeat-timeout",
            "1",
            "--config",
            coord_toml.to_str().unwrap(),
        ],
    );
    let proxy = Proxy::to_coordinator(port);
    let addr = proxy.addr.to_string();
    let n = 20_000;
    let line = |i: usize| {
        serde_json::to_string(&EventKind::custom(
            "test.published",
            serde_json::json!({ "i": i }),
        ))
        .unwrap()
    };
    let mut p = publisher(&dir, &addr, &pki.ca, "pub-1");
    let mut stdin = p.stdin.take().unwrap();
    for chunk in 0..10 {
        let mut text = String::new();
        for i in chunk * n / 10..(chunk + 1) * n / 10 {
            text.push_str(&line(i));
            text.push('\n');
        }
        stdin.write_all(text.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // Under load the publisher may not have (re)connected yet: a cut then cuts nothing,
        // or a handshake, which logs no lost connection. Wait for its session.
        let start = Instant::now();
        while log(&dir, "publisher-pub-1.log")
            .matches("connected to the coordinator")
            .count()
            <= chunk
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{}",
                log(&dir, "publisher-pub-1.log")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        proxy.cut();
    }
    drop(stdin);
    assert_eq!(
        wait(&mut p, Duration::from_secs(60)),
        Some(0),
        "{}",
        log(&dir, "publisher-pub-1.log")
    );
    // A bad second line: the first is delivered, the run goes on, the error names the line.
    let mut q = publisher(&dir, &addr, &pki.ca, "pub-2");
    let mut stdin = q.stdin.take().unwrap();
    let shutdown =
        serde_json::to_string(&EventKind::coordinator_shutdown(ShutdownReason::Completed)).unwrap();
    // The bad line carries a token where an object belongs: named by position, not echoed.
    writeln!(
        stdin,
        "{}\n{shutdown}\n{{\"type\":\"custom\",\"data\":\"xoxb-not-a-real-token\"}}",
        line(n)
    )
    .unwrap();
    drop(stdin);
    assert_eq!(wait(&mut q, Duration::from_secs(60)), Some(1));
    let qlog = log(&dir, "publisher-pub-2.log");
    assert!(qlog.contains("stdin line 3: not an event"), "{qlog}");
    assert!(!qlog.contains("xoxb"), "{qlog}");
    // An event above the 4 MiB frame cap is refused, the one before it delivered.
    let mut r = publisher(&dir, &addr, &pki.ca, "pub-3");
    let mut stdin = r.stdin.take().unwrap();
    let huge = serde_json::to_string(&EventKind::custom(
        "test.huge",
        serde_json::json!("x".repeat(5 << 20)),
    ))
    .unwrap();
    // A task event about a task that is not the run's must not end the run (the local task
    // still waits for `done`), and a metric that is not a finite number (JSON has none) crosses
    // the cluster: written as "NaN". Written as `null`, as before, the coordinator could not
    // decode the frame and refused the publisher.
    let measured = serde_json::to_string(&EventKind::from(
        TaskCompleted::builder()
            .task("remote-measure")
            .worker("pub-3")
            .outcome(TaskOutcome::Passed)
            .duration(Duration::from_millis(5))
            .metrics(BTreeMap::from([
                ("ratio".to_owned(), f64::NAN),
                ("ms".to_owned(), 5.0),
            ]))
            .build(),
    ))
    .unwrap();
    // The harness runs its task itself: the coordinator's idle worker must not get it.
    let created =
        serde_json::to_string(&EventKind::task_created("remote-measure", "harness")).unwrap();
    writeln!(stdin, "{}\n{created}\n{measured}\n{huge}", line(n + 1)).unwrap();
    drop(stdin);
    assert_eq!(wait(&mut r, Duration::from_secs(60)), Some(1));
    let rlog = log(&dir, "publisher-pub-3.log");
    assert!(rlog.contains("exceeds the cluster frame cap"), "{rlog}");
    assert!(rlog.len() < 10_000, "the event is not echoed");
    std::fs::write(&done, "").unwrap();
    let code = wait(&mut coord, Duration::from_secs(60));
    let clog = log(&dir, "coordinator.log");
    assert_eq!(code, Some(0), "{}\n{clog}", log(&dir, "coordinator.out"));
    let published: Vec<usize> = std::fs::read_to_string(&local_log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("test.published"))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["data"]["payload"]["i"].as_u64().unwrap() as usize
        })
        .collect();
    assert_eq!(published, (0..=n + 1).collect::<Vec<_>>(), "{clog}");
    assert!(
        !std::fs::read_to_string(&local_log)
            .unwrap()
            .contains("test.huge")
    );
    let local = std::fs::read_to_string(&local_log).unwrap();
    let stats = clog
        .lines()
        .rev()
        .find(|l| l.contains("cluster delivery"))
        .unwrap_or_default();
    eprintln!("{stats}");
    assert!(stats.contains(&format!("applied={}", n + 4)), "{stats}");
    assert!(
        !local
            .lines()
            .any(|l| l.contains("task_assigned") && l.contains("remote-measure")),
        "a publisher's task was placed on the coordinator's worker\n{local}"
    );
    let measured = local
        .lines()
        .find(|l| l.contains("remote-measure") && l.contains("task_completed"))
        .unwrap_or_else(|| panic!("the measured task's event is not in the log\n{clog}"));
    let v: serde_json::Value = serde_json::from_str(measured).unwrap();
    assert_eq!(
        v["data"]["metrics"],
        serde_json::json!({ "ratio": "NaN", "ms": 5.0 }),
        "{measured}"
    );
    assert!(stats.contains("rejected=1"), "{stats}");
    // The cuts really cut the publisher's connection.
    let reconnects = log(&dir, "publisher-pub-1.log")
        .matches("lost the connection to the coordinator")
        .count();
    assert!(
        reconnects >= 9,
        "{reconnects} reconnects\n{}",
        log(&dir, "publisher-pub-1.log")
    );
    // No WorkerRegistered for a publisher: it is not a worker.
    assert!(
        !local.contains("pub-1"),
        "a publisher registered as a worker"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--list-plugins` with a cluster waits for the nodes and lists what they host, named as a
/// run names their proxies; the nodes are then told the run is over.
#[test]
fn list_plugins_lists_the_plugins_of_registered_hosts() {
    let dir = temp_dir("list");
    let pki = make_pki(&dir, "ok");
    task_file(&dir, 1, |_| "true".to_owned());
    let host_toml = dir.join("host.toml");
    event_log_config(&host_toml, &dir.join("events.jsonl"), false);
    let port = free_port();
    let mut coord = coordinator(&dir, port, &pki, &["--list-plugins"]);
    let addr = format!("127.0.0.1:{port}");
    let mut host = plugin_host(&dir, &addr, &pki.ca, "host-1", &host_toml);
    assert_eq!(
        wait(&mut coord, Duration::from_secs(60)),
        Some(0),
        "{}",
        log(&dir, "coordinator.log")
    );
    let out = log(&dir, "coordinator.out");
    // The local listing, then the hosted one.
    assert!(out.contains("task-reporter"), "{out}");
    let hosted = out.split("hosted plugin").nth(1).unwrap_or_default();
    assert!(hosted.contains("event-log@host-1"), "{out}");
    assert!(hosted.contains("reporter"), "{out}");
    assert_eq!(wait(&mut host, Duration::from_secs(10)), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `PUT /api/plugins/NAME/config` on the coordinator's console: the status and the body.
fn put_config(ui: u16, plugin: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", ui)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "PUT /api/plugins/{plugin}/config HTTP/1.1\r\nHost: 127.0.0.1:{ui}\r\n\
         Authorization: Bearer {UI_TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// Reconfiguring a hosted plugin's proxy on the coordinator (here from the web console)
/// reaches the host: the plugin takes the new settings in order with its events; settings
/// the host's plugin rejects are refused with the reason and the old ones stay.
#[test]
fn a_hosted_plugin_is_reconfigured_from_the_coordinator() {
    let dir = temp_dir("reconfigure");
    let pki = make_pki(&dir, "ok");
    let go = dir.join("go");
    task_waiting_for(&dir, &go);
    let (before, after) = (dir.join("before.jsonl"), dir.join("after.jsonl"));
    let host_toml = dir.join("host.toml");
    event_log_config(&host_toml, &before, false);
    let (port, ui) = (free_port(), free_port());
    let mut coord = coordinator(
        &dir,
        port,
        &pki,
        &[
            "--workers",
            "1",
            "--min-workers",
            "1",
            "--ui",
            &format!("127.0.0.1:{ui}"),
        ],
    );
    let addr = format!("127.0.0.1:{port}");
    let mut host = plugin_host(&dir, &addr, &pki.ca, "host-1", &host_toml);
    wait_for_log(&dir, "coordinator.log", "a remote plugin joined");
    let (status, response) = put_config(
        ui,
        "event-log@host-1",
        &format!("{{\"path\": \"{}\"}}", after.display()),
    );
    assert_eq!(status, 200, "{response}\n{}", log(&dir, "host-1.log"));
    let (status, response) = put_config(ui, "event-log@host-1", "{\"path\": 5}");
    assert_eq!(status, 422, "{response}");
    assert!(response.contains("path"), "names the key: {response}");
    std::fs::write(&go, "").unwrap();
    let code = wait(&mut coord, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", log(&dir, "coordinator.log"));
    assert_eq!(wait(&mut host, Duration::from_secs(10)), Some(0));
    let before = std::fs::read_to_string(&before).unwrap_or_default();
    let after = std::fs::read_to_string(&after).unwrap_or_default();
    // The task finished after the change: its events are in the new file only.
    assert!(
        after.contains("task_completed"),
        "after: {after}\nbefore: {before}"
    );
    assert!(!before.contains("task_completed"), "before: {before}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[cluster]` in dtf.toml: `listen` (with TLS paths relative to the file) turns the cluster
/// on as `--listen` does; bad values are errors at their position, never echoed, and there is
/// no cookie key.
#[test]
fn the_cluster_section_of_dtf_toml_accepts_workers() {
    let dir = temp_dir("toml");
    let pki = make_pki(&dir, "ok");
    task_file(&dir, 10, |_| mark(&dir));
    let port = free_port();
    let config = dir.join("dtf.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nlisten = \"127.0.0.1:{port}\"\nmin_workers = 1\ntls_cert = \"ok/cert.pem\"\ntls_key = \"ok/key.pem\"\n"
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dtf-coordinator"))
            .args(["--config", config.to_str().unwrap(), "--workers", "0"])
            .arg("--tasks")
            .arg(dir.join("tasks.toml"))
            .args(["--progress", "never"])
            .args(extra)
            .env("DTF_CLUSTER_COOKIE", COOKIE)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut coord = Proc(run(&[]));
    let mut w = worker(&dir, &format!("127.0.0.1:{port}"), &pki.ca, "remote-1", &[]);
    assert_eq!(wait(&mut coord, Duration::from_secs(60)), Some(0));
    assert_each_ran_once_without_junit(&dir, 10);
    assert_eq!(wait(&mut w, Duration::from_secs(10)), Some(0));

    std::fs::write(
        &config,
        "[cluster]\nlisten = \"canary-77\"\nmin_workers = 0\ncookie = \"secret-canary\"\n",
    )
    .unwrap();
    let out = run(&[]).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("dtf.toml:2:10: cluster.listen: expected an address"),
        "{err}"
    );
    assert!(
        err.contains("cluster.min_workers: expected a number from 1"),
        "{err}"
    );
    assert!(
        err.contains("cluster.cookie: unknown key `cookie`"),
        "{err}"
    );
    assert!(!err.contains("canary"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn assert_each_ran_once_without_junit(dir: &Path, n: usize) {
    for i in 0..n {
        let marks = std::fs::read_to_string(dir.join(format!("marks/t{i:04}"))).unwrap_or_default();
        assert_eq!(marks.lines().count(), 1, "task t{i:04}");
    }
}
