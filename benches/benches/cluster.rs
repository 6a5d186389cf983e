//! Cost per task of remote workers (docs/cluster.md, "Figures"): the same 10,000 `true`
//! tasks run, in the same process run,
//!
//! - by `xargs -P 8` (`sh -c true` per task): the physical limit of this machine;
//! - by the reference coordinator on 8 local worker slots;
//! - by the reference coordinator on 4 remote worker processes with 2 slots each, over TLS
//!   on 127.0.0.1 (the coordinator in this process, the workers started per run).
//!
//! One criterion iteration is one whole run (registration of the remote workers included).
//! A fourth case runs the same tasks on 200 worker nodes with 1 slot each (200 processes:
//! ractor_cluster numbers remote actors per node server, so two nodes in one process would
//! collide), and before the cases the bench measures, for 200 nodes connecting to one hub, the
//! registration time and the coordinator's memory per node.
//! `DTF_BENCH_CLUSTER_TASKS` sets another task count (the default is the 10,000).

#![expect(clippy::print_stdout, reason = "a benchmark reports to the terminal")]
#![expect(
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop loudly"
)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use dtf_examples::remote::ClusterOptions;
use dtf_examples::{Coordinator, CoordinatorOptions, PluginSelection, TaskDef};

const SAMPLES: usize = 10;

/// Every run's time, per case.
type Runs = Vec<(&'static str, Vec<Duration>)>;

fn tasks() -> usize {
    std::env::var("DTF_BENCH_CLUSTER_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A CA and a certificate for 127.0.0.1, and a cookie file, under `dir`.
fn credentials(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("bench dir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("cert");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("cookie"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    std::fs::write(&paths.3, "dtf-bench-cookie-0123456789abcdef0123456789").expect("write");
    paths
}

fn options(n: usize, workers: u32) -> CoordinatorOptions {
    let mut o = CoordinatorOptions::default();
    o.tasks = (0..n)
        .map(|i| TaskDef::shell(format!("t{i}"), "true"))
        .collect();
    o.workers = workers;
    let mut plugins = PluginSelection::default();
    plugins.disable_all = true;
    o.plugins = plugins;
    o.progress = false;
    o
}

/// A free port below Linux's ephemeral range (32768–60999): the 200 worker processes each
/// bind a random port for their own node server, so a port found free by binding port 0
/// could be taken again before the coordinator binds it.
fn free_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 2;
    loop {
        let p = base + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 8_000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p)) {
            return l.local_addr().expect("an address");
        }
    }
}

fn run(rt: &tokio::runtime::Runtime, options: CoordinatorOptions, n: usize) -> Duration {
    let start = Instant::now();
    let report = rt
        .block_on(async { Coordinator::new(options)?.run().await })
        .expect("the run");
    let took = start.elapsed();
    assert_eq!((report.tasks, report.passed), (n, n), "every task passed");
    took
}

/// This process's resident memory in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

const SCALE_NODES: usize = 200;

/// Waits up to 5 s for the nodes to leave after the run (they do on the coordinator's
/// goodbye), then kills what is left.
fn reap(children: &mut [Child]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for c in children.iter_mut() {
        while Instant::now() < deadline {
            if c.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Starts `nodes` worker processes (`node-1` …) with `slots` each.
fn spawn_nodes(addr: SocketAddr, ca: &Path, cookie: &Path, nodes: usize, slots: u32) -> Vec<Child> {
    (1..=nodes)
        .map(|p| {
            Command::new(env!("CARGO_BIN_EXE_dtf-bench-worker"))
                .arg(addr.to_string())
                .arg(format!("node-{p}"))
                .arg(slots.to_string())
                .arg(ca)
                .arg(cookie)
                .spawn()
                .expect("worker")
        })
        .collect()
}

/// 200 worker nodes connect to one hub: how long until all registered, and the hub
/// process's memory per node (resident set before the hub and after the registrations).
fn scale(
    rt: &tokio::runtime::Runtime,
    ca: &Path,
    cert: &Path,
    key: &Path,
    cookie: &Path,
) -> (Duration, f64) {
    rt.block_on(async {
        let manager = dtf_plugin_core::PluginManager::builder()
            .spawn()
            .await
            .expect("manager");
        let before = rss_kib();
        let addr = free_addr();
        let config = dtf_cluster::HubConfig::new(
            addr,
            dtf_cluster::Cookie::load(Some(cookie)).expect("cookie"),
            dtf_cluster::Transport::Tls(Arc::new(
                dtf_cluster::TlsFiles::server(cert, key).expect("tls"),
            )),
        );
        let (hub, mut notes) = dtf_cluster::Hub::start(config, manager.bus())
            .await
            .expect("hub");
        let start = Instant::now();
        let mut children = spawn_nodes(addr, ca, cookie, SCALE_NODES, 1);
        let mut registered = 0;
        while registered < SCALE_NODES {
            match tokio::time::timeout(Duration::from_secs(120), notes.recv()).await {
                Ok(Some(dtf_cluster::HubNote::Registered(_))) => registered += 1,
                Ok(Some(_)) => {}
                _ => panic!("only {registered} of {SCALE_NODES} nodes registered"),
            }
        }
        let took = start.elapsed();
        // Let the sessions settle (heartbeats flowing) before reading memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let per_node = (rss_kib().saturating_sub(before)) as f64 / SCALE_NODES as f64;
        hub.shutdown().await;
        reap(&mut children);
        manager
            .shutdown(dtf_plugin_core::ShutdownReason::Completed)
            .await;
        (took, per_node)
    })
}

fn main() {
    let n = tasks();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("dtf-bench-cluster-{}", std::process::id()));
    let (ca, cert, key, cookie) = credentials(&dir);
    let medians: Arc<Mutex<Runs>> = Arc::default();
    let record = |name: &'static str, d: Duration| {
        let mut m = medians.lock().expect("lock");
        match m.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(d),
            None => m.push((name, vec![d])),
        }
    };

    let mut scale_runs = Vec::new();
    for _ in 0..3 {
        scale_runs.push(scale(&rt, &ca, &cert, &key, &cookie));
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .sample_size(SAMPLES);
    let mut group = c.benchmark_group(format!("cluster-{n}-true-tasks"));
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("xargs -P 8", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(format!("seq {n} | xargs -P 8 -I{{}} sh -c true"))
                    .status()
                    .expect("xargs");
                assert!(status.success());
                let d = start.elapsed();
                record("xargs -P 8", d);
                total += d;
            }
            total
        });
    });

    group.bench_function("dtf local, 8 slots", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = run(&rt, options(n, 8), n);
                record("dtf local, 8 slots", d);
                total += d;
            }
            total
        });
    });

    // One remote run: `nodes` worker processes with `slots` each, the coordinator here.
    let remote = |nodes: usize, slots: u32| {
        let addr = free_addr();
        let mut o = options(n, 0);
        let mut cluster = ClusterOptions::new(addr);
        cluster.min_workers = nodes as u32;
        cluster.tls_cert = Some(cert.clone());
        cluster.tls_key = Some(key.clone());
        cluster.cookie_file = Some(cookie.clone());
        o.cluster = Some(cluster);
        let mut workers = spawn_nodes(addr, &ca, &cookie, nodes, slots);
        let d = run(&rt, o, n);
        reap(&mut workers);
        d
    };
    for (label, name, nodes, slots) in [
        (
            "dtf remote, 4 processes x 2 slots, TLS",
            "dtf remote, 4x2 slots",
            4,
            2,
        ),
        (
            "dtf remote, 200 nodes x 1 slot, TLS",
            "dtf remote, 200 nodes",
            SCALE_NODES,
            1,
        ),
    ] {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = remote(nodes, slots);
                    record(name, d);
                    total += d;
                }
                total
            });
        });
    }
    group.finish();
    c.final_summary();

    let m = medians.lock().expect("lock");
    let median = |name: &str| {
        m.iter().find(|(n, _)| *n == name).map(|(_, v)| {
            let mut v = v.clone();
            v.sort();
            v[v.len() / 2]
        })
    };
    println!(
        "\n== {n} `true` tasks, median of all runs (criterion's one warm-up run per case included) =="
    );
    for (name, _) in m.iter() {
        if let Some(d) = median(name) {
            println!(
                "{name:<24} {:>8.2} s  {:>8.1} µs/task",
                d.as_secs_f64(),
                d.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
    for (i, (took, per_node)) in scale_runs.iter().enumerate() {
        // Later runs reuse the memory the first one freed (the resident set does not
        // shrink), so only the first run's figure is the cost of a node.
        let memory = if i == 0 {
            format!("; hub process memory {per_node:.0} KiB per node")
        } else {
            String::new()
        };
        println!(
            "{SCALE_NODES} nodes (one process each) registered in {:.2} s (run {}){memory}",
            took.as_secs_f64(),
            i + 1,
        );
    }
    if let (Some(x), Some(l), Some(r)) = (
        median("xargs -P 8"),
        median("dtf local, 8 slots"),
        median("dtf remote, 4x2 slots"),
    ) {
        println!(
            "remote / local: {:.2}x   local / xargs -P 8: {:.2}x   remote / xargs -P 8: {:.2}x",
            r.as_secs_f64() / l.as_secs_f64(),
            l.as_secs_f64() / x.as_secs_f64(),
            r.as_secs_f64() / x.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
