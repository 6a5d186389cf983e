//! Cost per task of remote workers (docs/cluster.md, "Figures"): the same 10,000 `true`
//! tasks run, in the same process run,
//!
//! - by `xargs -P 8` (`sh -c true` per task): the physical limit of this machine;
//! - by the reference coordinator on 8 local worker slots;
//! - by the reference coordinator on 4 remote worker processes with 2 slots each, over TLS
//!   on 127.0.0.1 (the coordinator in this process, the workers started per run).
//!
//! One criterion iteration is one whole run (registration of the remote workers included).
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

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
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

    group.bench_function("dtf remote, 4 processes x 2 slots, TLS", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let addr = free_addr();
                let mut o = options(n, 0);
                let mut cluster = ClusterOptions::new(addr);
                cluster.min_workers = 4;
                cluster.tls_cert = Some(cert.clone());
                cluster.tls_key = Some(key.clone());
                cluster.cookie_file = Some(cookie.clone());
                o.cluster = Some(cluster);
                let mut workers: Vec<Child> = (1..=4)
                    .map(|i| {
                        Command::new(env!("CARGO_BIN_EXE_dtf-bench-worker"))
                            .arg(addr.to_string())
                            .arg(format!("remote-{i}"))
                            .arg("2")
                            .arg(&ca)
                            .arg(&cookie)
                            .spawn()
                            .expect("worker")
                    })
                    .collect();
                let d = run(&rt, o, n);
                for w in &mut workers {
                    let _ = w.wait();
                }
                record("dtf remote, 4x2 slots", d);
                total += d;
            }
            total
        });
    });
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
