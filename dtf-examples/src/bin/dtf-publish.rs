//! `dtf-publish`: publishes events read from stdin onto a remote coordinator's bus
//! (docs/cluster.md, "Remote publishers").
//!
//! ```text
//! DTF_CLUSTER_COOKIE=... my-harness --json-events | dtf-publish --coordinator 10.0.0.5:7700 --ca ca.pem
//! ```
//!
//! Each line of stdin is one event in the bus's JSON form, as the `event-log` plugin writes it
//! (`{"type":"custom","data":{"name":"harness.step","payload":{}}}`). Events are sent in
//! batches (up to 1,024, or when no line came for 50 ms), each lands on the coordinator's bus
//! exactly once and in order, across reconnections. At the end of stdin it waits until the
//! coordinator has every event, then exits 0. A line that is not an event stops it: what was
//! read before is delivered, and it exits 1 naming the line and column.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dtf_cluster::RemotePublisher;
use dtf_examples::cli::NodeArgs;
use dtf_plugin_core::event::{Capabilities, EventKind};
use tokio::io::AsyncBufReadExt as _;

/// Events per batch, at most.
const BATCH: usize = 1_024;

/// How long the first event of a batch waits for more.
const LINGER: Duration = Duration::from_millis(50);

/// Publishes events from stdin (one JSON event per line) onto a dtf coordinator's bus.
#[derive(Debug, Parser)]
#[command(
    name = "dtf-publish",
    version,
    about,
    after_help = dtf_examples::cli::NODE_ENV_HELP
)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
}

async fn run(args: Args) -> Result<(), String> {
    let config = args.node.config("dtf-publish", Capabilities::default())?;
    let publisher = RemotePublisher::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut batch: Vec<EventKind> = Vec::with_capacity(BATCH);
    let mut number = 0u64;
    let mut read = 0u64;
    // What stopped the reading: a bad line, stdin's error, or an event the publisher
    // refused. Everything handed over before it is delivered all the same.
    let mut bad = None;
    loop {
        let line = if batch.is_empty() {
            lines.next_line().await
        } else {
            match tokio::time::timeout(LINGER, lines.next_line()).await {
                Ok(line) => line,
                Err(_) => {
                    if let Err(e) = publisher.publish_batch(batch.drain(..)).await {
                        bad = Some(e.to_string());
                        break;
                    }
                    continue;
                }
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                bad = Some(format!("stdin: {e}"));
                break;
            }
        };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<EventKind>(&line) {
            Ok(kind) => {
                batch.push(kind);
                read += 1;
            }
            Err(e) => {
                // serde's message names the line's column; the line is not echoed, and a
                // string value serde quotes is cut to `"…"` (it may be a token).
                let e = redact_strings(&e.to_string());
                bad = Some(format!("stdin line {number}: not an event: {e}"));
                break;
            }
        }
        if batch.len() == BATCH {
            if let Err(e) = publisher.publish_batch(batch.drain(..)).await {
                bad = Some(e.to_string());
                break;
            }
        }
    }
    // What was read before a bad line goes out too (after a refused event, nothing is left).
    if let Err(e) = publisher.publish_batch(batch).await {
        bad.get_or_insert(e.to_string());
    }
    publisher.close().await.map_err(|e| e.to_string())?;
    match bad {
        Some(bad) => Err(format!(
            "{bad} (what was handed over before it is on the coordinator's bus)"
        )),
        None => {
            tracing::info!(events = read, "every event is on the coordinator's bus");
            Ok(())
        }
    }
}

/// `message` with every string value serde quotes (`string "…"`) emptied.
fn redact_strings(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        let start = i + "string \"".len();
        out.push_str(&rest[..start]);
        out.push('…');
        match rest[start..].find('"') {
            Some(end) => rest = &rest[start + end..],
            None => {
                rest = "";
                out.push('"');
            }
        }
    }
    out.push_str(rest);
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    dtf_examples::output::init_logging("info");
    dtf_examples::cli::node_main(run(args))
}
