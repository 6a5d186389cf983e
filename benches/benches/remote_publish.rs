//! Events from a remote publisher onto the coordinator's bus (docs/cluster.md, "Figures"),
//! against raw ractor_cluster `cast` in the same run:
//!
//! - **raw ractor_cluster cast**: another process casts the events in batches to an actor
//!   here (one ractor_cluster message per batch, the events encoded with the same JSON as
//!   dtf's frames), the actor decodes and counts them; a final call returns the count, so the
//!   time ends when the last event was received;
//! - **dtf RemotePublisher**: another process publishes the same events in the same batches
//!   with [`dtf_cluster::RemotePublisher::publish_batch`] and then `flush`es: the time ends
//!   when the coordinator acknowledged the last event, i.e. when it is on the bus (numbered,
//!   deduplicated, in order, published with `Bus::publish_batch`). After each run the bench
//!   checks that the hub applied exactly the events sent.
//!
//! A second baseline casts messages of 64 KiB (the size dtf cuts its frames at) instead of one
//! per batch. Both over plain TCP on 127.0.0.1 (TLS would add the same cost to both). The sender
//! process is started per run and connects before its clock starts. Events are
//! `TaskCompleted`; `DTF_BENCH_PUBLISH_EVENTS` (default 100,000) and `DTF_BENCH_PUBLISH_BATCH`
//! (default 1,000) change the workload.

#![expect(clippy::print_stdout, reason = "a benchmark reports to the terminal")]
#![expect(
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop loudly"
)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use dtf_benches::raw;
use dtf_cluster::{Cookie, Hub, HubConfig, Transport};
use dtf_plugin_core::PluginManager;

const COOKIE: &str = "dtf-bench-cookie-0123456789abcdef0123456789";
const RAW: &str = "raw ractor_cluster cast";
const RAW_SMALL: &str = "raw cast, 64 KiB messages";
const DTF: &str = "dtf RemotePublisher";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// One run of the sender process in `mode`; its own measured time.
fn send(mode: &str, addr: SocketAddr, cookie: &Path, n: usize, batch: usize) -> Duration {
    let out = Command::new(env!("CARGO_BIN_EXE_dtf-bench-worker"))
        .arg(mode)
        .arg(addr.to_string())
        .arg(cookie)
        .arg(n.to_string())
        .arg(batch.to_string())
        .env("RUST_LOG", "error")
        .output()
        .expect("the sender process");
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nanos: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the sender's time");
    Duration::from_nanos(nanos)
}

fn main() {
    let n = env_or("DTF_BENCH_PUBLISH_EVENTS", 100_000);
    let batch = env_or("DTF_BENCH_PUBLISH_BATCH", 1_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("dtf-bench-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let cookie_file = dir.join("cookie");
    std::fs::write(&cookie_file, COOKIE).expect("cookie file");
    let runs: Arc<Mutex<Vec<(&'static str, Duration)>>> = Arc::default();

    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .sample_size(10);
    let mut group = c.benchmark_group(format!("remote-publish-{n}-events-batch-{batch}"));
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(n as u64));

    // The baseline: ractor_cluster alone.
    let raw_addr = free_addr();
    let (raw_node, receiver) = rt.block_on(async {
        let server = ractor_cluster::NodeServer::new(
            raw_addr.port(),
            COOKIE.to_owned(),
            "bench-raw-receiver".to_owned(),
            "127.0.0.1".to_owned(),
            None,
            None,
        )
        .with_listen_addr(raw_addr.ip());
        let (node, _) = ractor::Actor::spawn(None, server, ())
            .await
            .expect("the raw node");
        let (receiver, _) = ractor::Actor::spawn(None, raw::Receiver, ())
            .await
            .expect("the raw receiver");
        (node, receiver)
    });
    // dtf cuts its frames at 64 KiB; the second baseline sends messages of that size too
    // (as many events per message as fit), so that the comparison is not only with the
    // caller's batch size.
    let event_bytes = serde_json::to_vec(&dtf_benches::published(0..1000))
        .expect("encode")
        .len()
        / 1000;
    let small = (64 * 1024 / event_bytes.max(1)).clamp(1, batch);
    println!(
        "a TaskCompleted event is ~{event_bytes} bytes of JSON; the second baseline sends \
         {small} per message"
    );
    for (name, per_message) in [(RAW, batch), (RAW_SMALL, small)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let d = send("raw", raw_addr, &cookie_file, n, per_message);
                        runs.lock().expect("lock").push((name, d));
                        d
                    })
                    .sum()
            });
        });
    }
    receiver.stop(None);
    raw_node.stop(None);

    // dtf: a hub publishing on a manager's bus.
    let (manager, hub, _notes) = rt.block_on(async {
        let manager = PluginManager::builder().spawn().await.expect("manager");
        let config = HubConfig::new(
            free_addr(),
            Cookie::new(COOKIE, "the bench").expect("cookie"),
            Transport::Insecure,
        );
        let (hub, notes) = Hub::start(config, manager.bus()).await.expect("hub");
        (manager, hub, notes)
    });
    let hub_addr = hub.local_addr();
    group.bench_function(DTF, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let before = hub.stats().applied;
                    let d = send("publish", hub_addr, &cookie_file, n, batch);
                    assert_eq!(
                        hub.stats().applied - before,
                        n as u64,
                        "every event on the bus, once"
                    );
                    runs.lock().expect("lock").push((DTF, d));
                    d
                })
                .sum()
        });
    });
    group.finish();
    c.final_summary();
    rt.block_on(async {
        hub.shutdown().await;
        let _ = manager
            .shutdown(dtf_plugin_core::ShutdownReason::Completed)
            .await;
    });

    let runs = runs.lock().expect("lock");
    let median = |name: &str| {
        let mut v: Vec<Duration> = runs
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        v.get(v.len() / 2).copied()
    };
    println!("\n== {n} TaskCompleted events in batches of {batch}, median of all runs ==");
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    if let (Some(r), Some(s), Some(d)) = (median(RAW), median(RAW_SMALL), median(DTF)) {
        println!("{RAW:<26} {:>12.0} events/s", rate(r));
        println!("{RAW_SMALL:<26} {:>12.0} events/s", rate(s));
        println!("{DTF:<26} {:>12.0} events/s", rate(d));
        println!(
            "dtf / raw: {:.2}x, dtf / raw with 64 KiB messages: {:.2}x (target >= 0.8x)",
            rate(d) / rate(r),
            rate(d) / rate(s)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
