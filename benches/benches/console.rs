//! What the web console costs the bus: 10,000 custom events per iteration published to 8
//! subscribed no-op plugins, without the console, with the console attached (its plugin
//! subscribes to every hook, `DropNewest`), and with the console served and one browser-like
//! client reading the live stream (every event serialized and written to a socket).
//!
//! Two figures per case: the time until every plugin (the console included) has handled the
//! events (`publish+flush`), and the time the publisher spent in `publish` alone
//! (`publisher`), which is what "does not slow the bus" is about.
//!
//! Run with `cargo bench -p dtf-benches --bench console`; results in `docs/web-console.md`.

#![expect(clippy::print_stdout, reason = "a benchmark reports to the terminal")]
#![expect(
    clippy::expect_used,
    reason = "a benchmark that cannot set up should stop loudly"
)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dtf_console::{AccessToken, Console, ConsoleConfig, RunningConsole};
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{PluginManager, PluginSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const EVENTS: u64 = 10_000;
const PLUGINS: usize = 8;

struct Noop;

impl Plugin for Noop {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new("noop").hooks(Hook::Custom)
    }

    async fn on_event(&mut self, _ctx: &mut PluginContext, _e: &Event) -> Result<(), PluginError> {
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    NoConsole,
    Attached,
    Streaming,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Self::NoConsole => "no-console",
            Self::Attached => "console-attached",
            Self::Streaming => "console-streaming-to-1-client",
        }
    }
}

async fn setup(case: Case) -> (PluginManager, Option<RunningConsole>) {
    let mut b = PluginManager::builder();
    for i in 0..PLUGINS {
        b = b.spec(PluginSpec::new(|| Noop).name(format!("noop-{i}")));
    }
    let manager = b.spawn().await.expect("manager");
    if case == Case::NoConsole {
        return (manager, None);
    }
    let config = ConsoleConfig::default().bind(([127, 0, 0, 1], 0).into());
    let console = Console::attach(&manager, AccessToken::new("bench"), config)
        .await
        .expect("console");
    if case == Case::Attached {
        return (manager, None);
    }
    let running = console.serve().await.expect("serve");
    let addr = running.local_addr();
    // A client that reads the unfiltered live stream and throws it away.
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut first = [0u8; 64];
    let n = conn.read(&mut first).await.expect("response");
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "the stream answers"
    );
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    (manager, Some(running))
}

fn bench(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("console/10000-events/8-plugins");
    group.throughput(Throughput::Elements(EVENTS));
    for case in [Case::NoConsole, Case::Attached, Case::Streaming] {
        let (manager, running) = rt.block_on(setup(case));
        let bus = manager.bus();
        for measure_publisher_only in [false, true] {
            let what = if measure_publisher_only {
                "publisher"
            } else {
                "publish+flush"
            };
            group.bench_function(format!("{}/{what}", case.name()), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let start = Instant::now();
                            for i in 0..EVENTS {
                                bus.publish(EventKind::custom("bench", serde_json::json!(i)))
                                    .await
                                    .expect("publish");
                            }
                            let published = start.elapsed();
                            manager.flush().await;
                            total += if measure_publisher_only {
                                published
                            } else {
                                start.elapsed()
                            };
                        }
                        total
                    })
                });
            });
        }
        rt.block_on(async {
            if let Some(r) = running {
                r.stop().await;
            }
            let dropped = manager
                .stats(dtf_console::CONSOLE_PLUGIN)
                .await
                .map(|s| s.dropped)
                .unwrap_or(0);
            println!(
                "{}: events the console dropped over the whole case: {dropped}",
                case.name()
            );
            manager.shutdown(ShutdownReason::Completed).await;
        });
    }
    group.finish();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, &rt);
    c.final_summary();
}
