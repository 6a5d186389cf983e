//! The helper process of the cluster benches, built with them so that `cargo bench` needs
//! nothing else:
//!
//! - `dtf-bench-worker ADDR ID SLOTS CA_FILE COOKIE_FILE`: a remote worker
//!   (`benches/cluster.rs`), the same as `dtf-worker` (`dtf_cluster::run_worker` with
//!   `dtf-worker`'s shell job runner);
//! - `dtf-bench-worker publish ADDR COOKIE_FILE N BATCH`: a [`dtf_cluster::RemotePublisher`]
//!   that publishes N events in batches of BATCH and flushes (`benches/remote_publish.rs`);
//! - `dtf-bench-worker raw ADDR COOKIE_FILE N BATCH`: the same events cast in batches to a
//!   remote actor with ractor_cluster alone, then one call that returns the count.
//!
//! The last two print the nanoseconds from the first send to the last acknowledgement (the
//! flush, or the call's answer) on stdout, after connecting (not timed).

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "reports its time (or why it has none) to the bench"
)]

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtf_benches::{published, raw};
use dtf_cluster::{Cookie, RemotePublisher, TlsFiles, Transport, WorkerConfig, run_worker};
use dtf_examples::remote::ShellJobRunner;
use dtf_plugin_core::event::Capabilities;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::from(1);
    };
    match args.first().map(String::as_str) {
        Some(mode @ ("publish" | "raw")) => {
            let [_, addr, cookie, n, batch] = args.as_slice() else {
                return ExitCode::from(2);
            };
            let (Ok(n), Ok(batch)) = (n.parse::<usize>(), batch.parse::<usize>()) else {
                return ExitCode::from(2);
            };
            let took = rt.block_on(async {
                if mode == "publish" {
                    publish(addr, Path::new(cookie), n, batch).await
                } else {
                    cast(addr, Path::new(cookie), n, batch).await
                }
            });
            match took {
                Ok(took) => {
                    println!("{}", took.as_nanos());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        _ => worker(&rt, &args),
    }
}

fn worker(rt: &tokio::runtime::Runtime, args: &[String]) -> ExitCode {
    let [addr, id, slots, ca, cookie] = args else {
        return ExitCode::from(2);
    };
    let Ok(slots) = slots.parse::<u32>() else {
        return ExitCode::from(2);
    };
    if dtf_examples::executor::kill_tasks_on_exit().is_err() {
        return ExitCode::from(1);
    }
    let result = rt.block_on(async {
        let cookie = Cookie::load(Some(Path::new(cookie)))?;
        let transport = Transport::Tls(Arc::new(TlsFiles::client(Path::new(ca))?));
        let caps = Capabilities::builder().cpu_cores(1).slots(slots).build();
        let config = WorkerConfig::new(addr.as_str(), id.as_str(), caps, cookie, transport);
        run_worker(config, Arc::new(ShellJobRunner)).await
    });
    dtf_examples::executor::exiting_normally();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

async fn publish(addr: &str, cookie: &Path, n: usize, batch: usize) -> Result<Duration, String> {
    let cookie = Cookie::load(Some(cookie)).map_err(|e| e.to_string())?;
    let config = WorkerConfig::new(
        addr,
        format!("bench-publisher-{}", std::process::id()),
        Capabilities::default(),
        cookie,
        Transport::Insecure,
    );
    let publisher = RemotePublisher::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    for from in (0..n).step_by(batch.max(1)) {
        publisher
            .publish_batch(published(from..(from + batch).min(n)))
            .await
            .map_err(|e| e.to_string())?;
    }
    publisher.flush().await.map_err(|e| e.to_string())?;
    let took = start.elapsed();
    publisher.close().await.map_err(|e| e.to_string())?;
    Ok(took)
}

async fn cast(addr: &str, cookie: &Path, n: usize, batch: usize) -> Result<Duration, String> {
    let cookie = std::fs::read_to_string(cookie).map_err(|e| e.to_string())?;
    let server = ractor_cluster::NodeServer::new(
        0,
        cookie.trim().to_owned(),
        format!("bench-raw-{}", std::process::id()),
        "127.0.0.1".to_owned(),
        None,
        None,
    );
    let (node, _) = ractor::Actor::spawn(None, server, ())
        .await
        .map_err(|e| e.to_string())?;
    ractor_cluster::client_connect(&node, addr)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let receiver = loop {
        if let Some(cell) = ractor::pg::get_members(&raw::GROUP.to_owned())
            .into_iter()
            .find(|c| !c.get_id().is_local())
        {
            break ractor::ActorRef::<raw::RawMsg>::from(cell);
        }
        if Instant::now() > deadline {
            return Err("the raw receiver never appeared".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let start = Instant::now();
    for from in (0..n).step_by(batch.max(1)) {
        receiver
            .cast(raw::RawMsg::Batch(raw::Events(published(
                from..(from + batch).min(n),
            ))))
            .map_err(|e| e.to_string())?;
    }
    let count =
        ractor::call_t!(receiver, raw::RawMsg::Count, 120_000).map_err(|e| e.to_string())?;
    let took = start.elapsed();
    node.stop(None);
    if count != n as u64 {
        return Err(format!("the receiver counted {count} of {n} events"));
    }
    Ok(took)
}
