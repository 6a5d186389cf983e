//! `dtf-worker`: a remote worker node for `dtf-coordinator --listen` (docs/cluster.md).
//!
//! ```text
//! DTF_CLUSTER_COOKIE=... dtf-worker --coordinator 10.0.0.5:7700 --ca ca.pem --slots 4 --label gpu=cuda
//! ```
//!
//! It connects (TLS unless `--insecure-cluster`), registers with its capabilities, runs each
//! task it is given exactly as a local worker does (`sh -c` in its own process group, the
//! task's timeout, the output limit), sends the events back until they are acknowledged,
//! reconnects after a cut, and exits when the coordinator says the run is over. Every task
//! process dies with it, even on `kill -9`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dtf_cluster::{PluginHost, run_node};
use dtf_examples::cli::NodeArgs;
use dtf_examples::remote::{LocalPluginHost, ShellJobRunner};
use dtf_plugin_core::event::Capabilities;

/// A remote worker node of a dtf run.
#[derive(Debug, Parser)]
#[command(
    name = "dtf-worker",
    version,
    about,
    after_help = dtf_examples::cli::NODE_ENV_HELP
)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// How many tasks it runs at once (0: none, a plugin host only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1024))]
    slots: u32,
    /// Host these plugins for the coordinator (repeatable, or A,B): built-in ones or those of
    /// --plugin-dirs, configured from --config.
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    plugins: Vec<String>,
    /// dtf.toml for the hosted plugins' settings (`[plugins.NAME]`) and manager settings.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directories of out-of-process plugins to host.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    plugin_dirs: Vec<PathBuf>,
    /// A label KEY=VALUE (repeatable), e.g. gpu=cuda: tasks can require the feature
    /// `KEY=VALUE`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

async fn run(args: Args) -> Result<(), String> {
    let capabilities = Capabilities::builder()
        .cpu_cores(
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        )
        .memory_mib(memory_mib())
        .slots(args.slots)
        .build();
    let mut config = args.node.config("dtf-worker", capabilities)?;
    config.labels = args.labels.into_iter().collect::<BTreeMap<_, _>>();
    let host = if args.plugins.is_empty() {
        None
    } else {
        let host = LocalPluginHost::start(&args.plugins, args.config.as_deref(), &args.plugin_dirs)
            .await
            .map_err(|e| e.to_string())?;
        Some(Arc::new(host))
    };
    let as_host = host.clone().map(|h| h as Arc<dyn PluginHost>);
    let result = run_node(config, Arc::new(ShellJobRunner), as_host).await;
    if let Some(host) = host {
        host.shutdown().await;
    }
    result.map(drop).map_err(|e| e.to_string())
}

/// Total memory from /proc/meminfo, 0 when unknown.
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // One line per log record, no CI command in it, colour only on a terminal and never
    // with NO_COLOR.
    dtf_examples::output::init_logging("info");
    if let Err(e) = dtf_examples::executor::kill_tasks_on_exit() {
        tracing::warn!(error = %e, "no watchdog: task processes may outlive a killed worker");
    }
    let code = dtf_examples::cli::node_main(run(args));
    dtf_examples::executor::exiting_normally();
    code
}
