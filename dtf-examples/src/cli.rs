//! The command line of `dtf-coordinator`: one `clap` derive struct, [`CoordinatorArgs`],
//! turned into [`CoordinatorOptions`] by [`CoordinatorArgs::into_cli`].
//!
//! To add a flag: add a field with its `#[arg]` (and a `help_heading`), then carry it into
//! the options in [`CoordinatorArgs::into_cli`]. Value checks that need nothing but the value
//! (ranges, formats) belong in a `value_parser` so that clap reports them as usage errors
//! (exit code 2, on stderr); checks that need the whole run (task ids) are in
//! [`crate::Coordinator::new`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::coordinator::{Cli, CoordinatorOptions};
use crate::error::CoordinatorError;
use crate::taskfile::{MAX_RETRIES, TaskDef, load_task_file, simulated_tasks};

/// The most local workers `--workers` accepts: each is an actor with its own task slot, and
/// more than this on one machine only measures the machine.
pub const MAX_WORKERS: u32 = 1024;

/// The most simulated tasks `--simulate-tasks` accepts.
pub const MAX_SIMULATED_TASKS: u32 = 100_000;

/// The longest `--timeout` and `--run-timeout` accepted, in seconds (a week).
pub const MAX_SECONDS: f64 = 86_400.0 * 7.0;

/// The environment variables `dtf-coordinator` reads, shown at the end of `--help`.
pub const ENVIRONMENT_HELP: &str = "\
Environment:
  DTF_<KEY>__<KEY>=VALUE  override a configuration key, e.g. DTF_MANAGER__QUEUE_CAPACITY=100
                          (precedence: --set > DTF_* > --config file > defaults; docs/configuration.md)
  DTF_UI_TOKEN            the web console's access token (--ui); never printed
  DTF_UI_TOKEN_FILE       a file holding the web console's token (when DTF_UI_TOKEN is unset)
  DTF_PLUGIN_KEY_PASSWORD the password of a protected signing key (`plugin pack`)
  DTF_CLUSTER_COOKIE      the cluster's shared secret for --listen (at least 32 bytes)
  RUST_LOG                log filter for stderr, e.g. RUST_LOG=debug (default warn)
  NO_COLOR                when set (to anything), no colour in any output

Exit code: 0 all tasks passed, 1 a task failed or was cancelled or a report could not be
written, 2 bad usage or configuration.";

/// Subcommands of `dtf-coordinator`. Without one, it runs tasks.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Print a shell completion script for SHELL on stdout (e.g. `completions bash`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Search, install, update and remove signed plugins (`dtf-coordinator plugin --help`).
    #[command(disable_help_flag = true)]
    Plugin {
        /// The plugin command and its arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
}

/// The command line of `dtf-coordinator` (see `docs/coordinator.md`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dtf-coordinator",
    version,
    about = "Run tasks on local workers with dtf's scheduler and plugins, and report",
    long_about = None,
    after_help = ENVIRONMENT_HELP,
    args_conflicts_with_subcommands = true,
    max_term_width = 100
)]
#[non_exhaustive]
pub struct CoordinatorArgs {
    /// A subcommand; without one, the tasks are run.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// A TOML task file (`[[task]]` tables; see docs/coordinator.md). Repeatable.
    #[arg(long = "tasks", value_name = "FILE", help_heading = "Tasks")]
    pub task_files: Vec<PathBuf>,
    /// A shell command to run as a task (id cmd-N). Repeatable.
    #[arg(long = "task", value_name = "CMD", help_heading = "Tasks")]
    pub task_commands: Vec<String>,
    /// N simulated tasks (some flaky, some failing).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_SIMULATED_TASKS)),
        help_heading = "Tasks"
    )]
    pub simulate_tasks: u32,
    /// The per-attempt timeout of --task tasks, in seconds (above 0, at most a week).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = seconds, help_heading = "Tasks")]
    pub timeout: Duration,
    /// Retries of --task tasks (at most 100).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RETRIES)),
        help_heading = "Tasks"
    )]
    pub retries: u32,

    /// Local workers (1 to 1024; 0 with --listen: remote workers only).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_WORKERS)),
        help_heading = "Running"
    )]
    pub workers: u32,
    /// The scheduling strategy: fifo, priority, round-robin, fairness, longest-first (default
    /// fifo, or the config file's; the file's tuning of weights, quotas etc. is kept).
    #[arg(long, value_name = "NAME", help_heading = "Running")]
    pub scheduler: Option<String>,
    /// The run's id.
    #[arg(
        long,
        value_name = "ID",
        default_value = "dtf-run",
        help_heading = "Running"
    )]
    pub run_id: String,
    /// Cancel what is left after SECS (above 0, at most a week).
    #[arg(long, value_name = "SECS", value_parser = seconds, help_heading = "Running")]
    pub run_timeout: Option<Duration>,
    /// Fault injection: kill the worker when task TASK (an id) starts its first attempt.
    /// Repeatable.
    #[arg(long, value_name = "TASK", help_heading = "Running")]
    pub kill_worker_on_start: Vec<String>,
    /// The live progress on stderr: auto (a bar on a terminal, a plain line every 10 s
    /// otherwise) or never.
    #[arg(
        long,
        value_name = "WHEN",
        default_value = "auto",
        value_parser = ["auto", "never"],
        hide_possible_values = true,
        help_heading = "Running"
    )]
    pub progress: String,
    /// Serve the web console on ADDR (HOST:PORT or a port on 127.0.0.1; default off). Token
    /// from DTF_UI_TOKEN or DTF_UI_TOKEN_FILE, else generated (docs/web-console.md).
    #[arg(long, value_name = "ADDR", value_parser = ui_addr, help_heading = "Running")]
    pub ui: Option<SocketAddr>,

    /// Accept remote workers (dtf-worker) on ADDR, e.g. 127.0.0.1:7700 (docs/cluster.md).
    /// TLS needs --tls-cert and --tls-key unless --insecure-cluster.
    #[arg(long, value_name = "ADDR", help_heading = "Cluster")]
    pub listen: Option<SocketAddr>,
    /// With --workers 0: create the tasks once N remote workers registered.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=100_000),
        requires = "listen",
        help_heading = "Cluster"
    )]
    pub min_workers: u32,
    /// The coordinator's TLS certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"], help_heading = "Cluster")]
    pub tls_cert: Option<PathBuf>,
    /// The coordinator's TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_cert"], help_heading = "Cluster")]
    pub tls_key: Option<PathBuf>,
    /// Plain TCP instead of TLS: anyone on the network path can read the traffic (a warning
    /// is logged at every start).
    #[arg(long, requires = "listen", conflicts_with_all = ["tls_cert", "tls_key"], help_heading = "Cluster")]
    pub insecure_cluster: bool,
    /// Read the cluster cookie (at least 32 bytes) from FILE instead of DTF_CLUSTER_COOKIE.
    #[arg(
        long,
        value_name = "FILE",
        requires = "listen",
        help_heading = "Cluster"
    )]
    pub cookie_file: Option<PathBuf>,
    /// A remote worker silent this long is disconnected; its tasks wait for it.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds, help_heading = "Cluster")]
    pub heartbeat_timeout: Duration,
    /// Then, after this long more, its tasks are re-queued and it is failed.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = seconds, help_heading = "Cluster")]
    pub reconnect_grace: Duration,
    /// The largest cluster frame accepted, in bytes (at least 65536); every worker and
    /// publisher must use the same value (a node with another one is refused).
    #[arg(long, value_name = "BYTES", default_value_t = dtf_cluster::DEFAULT_MAX_FRAME, value_parser = max_frame, help_heading = "Cluster")]
    pub max_frame: u64,

    /// List the known plugins and exit.
    #[arg(long, help_heading = "Plugins")]
    pub list_plugins: bool,
    /// Enable plugin X (repeatable, or X,Y).
    #[arg(
        long,
        value_name = "X",
        value_delimiter = ',',
        help_heading = "Plugins"
    )]
    pub enable_plugin: Vec<String>,
    /// Disable plugin Y (repeatable, or X,Y); wins over --enable-plugin.
    #[arg(
        long,
        value_name = "Y",
        value_delimiter = ',',
        help_heading = "Plugins"
    )]
    pub disable_plugin: Vec<String>,
    /// Start from no optional plugin (default: task-reporter).
    #[arg(long, help_heading = "Plugins")]
    pub disable_plugins: bool,
    /// Enable ci-reporter writing JUnit XML to FILE.
    #[arg(long, value_name = "FILE", help_heading = "Plugins")]
    pub junit: Option<PathBuf>,
    /// Directories of out-of-process plugins (replace the file's plugin_dirs).
    #[arg(
        long,
        value_name = "A,B",
        value_delimiter = ',',
        help_heading = "Plugins"
    )]
    pub plugin_dirs: Vec<PathBuf>,

    /// dtf.toml: manager settings, plugin_dirs, `[plugins.NAME]` enabled/settings.
    #[arg(long, value_name = "FILE", help_heading = "Configuration")]
    pub config: Option<PathBuf>,
    /// Override one key, e.g. --set manager.handler_timeout=5s (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", help_heading = "Configuration")]
    pub overrides: Vec<String>,
    /// Print the effective configuration, secrets redacted, and exit.
    #[arg(long, help_heading = "Configuration")]
    pub print_config: bool,
    /// Validate the configuration and plugin directories without running, and exit.
    #[arg(long, help_heading = "Configuration")]
    pub check_config: bool,
}

impl CoordinatorArgs {
    /// The options of a run (task files are read here, `--task` commands get ids `cmd-N`
    /// skipping the ids the files use).
    ///
    /// # Errors
    ///
    /// [`CoordinatorError::TaskFile`] for a task file that cannot be read or parsed.
    pub fn into_cli(self) -> Result<Cli, CoordinatorError> {
        let mut o = CoordinatorOptions::default();
        for file in &self.task_files {
            o.tasks.extend(load_task_file(file)?);
        }
        let mut n = 0;
        for command in self.task_commands {
            let id = loop {
                n += 1;
                let id = format!("cmd-{n}");
                if !o.tasks.iter().any(|t| t.id == id) {
                    break id;
                }
            };
            o.tasks.push(
                TaskDef::shell(id, command.clone())
                    .name(command)
                    .timeout(self.timeout)
                    .retries(self.retries),
            );
        }
        o.tasks.extend(simulated_tasks(self.simulate_tasks));
        o.workers = self.workers;
        o.scheduler_name = self.scheduler;
        o.run_id = self.run_id;
        o.run_timeout = self.run_timeout;
        o.kill_worker_on_start = self.kill_worker_on_start;
        o.progress = self.progress == "auto";
        o.ui = self.ui;
        o.cluster = self.listen.map(|listen| {
            let mut c = crate::remote::ClusterOptions::new(listen);
            c.min_workers = self.min_workers;
            c.tls_cert = self.tls_cert;
            c.tls_key = self.tls_key;
            c.insecure = self.insecure_cluster;
            c.cookie_file = self.cookie_file;
            c.heartbeat_timeout = self.heartbeat_timeout;
            c.reconnect_grace = self.reconnect_grace;
            c.max_frame = self.max_frame;
            c
        });
        o.plugins.disable_all = self.disable_plugins;
        o.plugins.enable = trimmed(self.enable_plugin);
        o.plugins.disable = trimmed(self.disable_plugin);
        o.junit = self.junit;
        o.plugin_dirs = self
            .plugin_dirs
            .into_iter()
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        o.config_file = self.config;
        o.config_overrides = self.overrides;
        Ok(Cli::new(
            o,
            self.list_plugins,
            self.print_config,
            self.check_config,
        ))
    }
}

/// Names with surrounding blanks removed, empty ones dropped (`--enable-plugin "a, b,"`).
fn trimmed(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A number of seconds above 0 and at most [`MAX_SECONDS`].
fn seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| "expected a number of seconds".to_owned())?;
    if secs.is_finite() && secs > 0.0 && secs <= MAX_SECONDS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err("expected seconds above 0 and at most a week (604800)".to_owned())
    }
}

fn ui_addr(value: &str) -> Result<SocketAddr, String> {
    crate::console::parse_ui(value).map_err(|e| {
        let message = e.to_string();
        // clap names the flag itself.
        message
            .strip_prefix("--ui: ")
            .map_or_else(|| message.clone(), str::to_owned)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        CoordinatorArgs::command().debug_assert();
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(seconds("0").is_err());
        assert!(seconds("soon").is_err());
        assert!(seconds("604801").is_err());
        assert!(seconds("NaN").is_err());
    }

    #[test]
    fn a_frame_cap_is_at_least_64_kib() {
        assert_eq!(max_frame("65536"), Ok(65_536));
        assert_eq!(max_frame("4194304"), Ok(4_194_304));
        assert_eq!(
            max_frame("65535"),
            Err("65535 bytes is below the least frame cap, 65536".to_owned())
        );
        assert!(max_frame("4M").is_err());
    }
}

/// The environment variables a node binary (`dtf-worker`, `dtf-publish`) reads, for its
/// `--help`.
pub const NODE_ENV_HELP: &str = "\
Environment:
  DTF_CLUSTER_COOKIE   the cluster's shared secret (at least 32 bytes), unless --cookie-file
  RUST_LOG             log filter (default: info)";

/// The `main` of a node binary (`dtf-worker`, `dtf-publish`): runs `run` on a multi-threaded
/// tokio runtime; its error goes to stderr as `error: …` with exit code 1 (2 when the runtime
/// cannot start).
pub fn node_main(
    run: impl std::future::Future<Output = Result<(), String>>,
) -> std::process::ExitCode {
    use std::io::Write as _;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: start the tokio runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// How a node (`dtf-worker`, `dtf-publish`) reaches the coordinator: the options both
/// binaries share.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The coordinator's address, HOST:PORT (its `--listen`).
    #[arg(long, value_name = "ADDR")]
    pub coordinator: String,
    /// This node's id, unique in the run (default: the binary's name, the host's name and
    /// the pid, e.g. `dtf-worker-ci-runner-7-4242`).
    #[arg(long)]
    pub id: Option<String>,
    /// The CA certificate (PEM) the coordinator's certificate must chain to.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_cluster"
    )]
    pub ca: Option<PathBuf>,
    /// Connect over plain TCP (no TLS). Logs a warning.
    #[arg(long)]
    pub insecure_cluster: bool,
    /// Read the cookie from this file instead of DTF_CLUSTER_COOKIE.
    #[arg(long, value_name = "FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Seconds of silence after which the coordinator is taken as lost (match the
    /// coordinator's --heartbeat-timeout).
    #[arg(long, default_value = "10", value_parser = seconds, value_name = "SECS")]
    pub heartbeat_timeout: Duration,
    /// Give up when the coordinator cannot be reached for this many seconds.
    #[arg(long, default_value = "60", value_parser = seconds, value_name = "SECS")]
    pub give_up_after: Duration,
    /// The largest cluster frame accepted, in bytes (at least 65536): the coordinator's
    /// --max-frame (a node with another value is refused).
    #[arg(long, value_name = "BYTES", default_value_t = dtf_cluster::DEFAULT_MAX_FRAME, value_parser = max_frame)]
    pub max_frame: u64,
}

/// A node's id when `--id` is not given: the binary's name, the host's name and the pid. The
/// pid alone repeats across containers (each node is pid 1 in its own), and two nodes with
/// one id make the coordinator refuse the older one.
fn default_node_id(binary: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host = host.trim();
    if host.is_empty() {
        format!("{binary}-{}", std::process::id())
    } else {
        format!("{binary}-{host}-{}", std::process::id())
    }
}

/// `--max-frame`: a byte count of at least 64 KiB (a remote publisher cuts its frames at
/// 64 KiB).
fn max_frame(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes"))?;
    if n < 64 * 1024 {
        return Err(format!("{n} bytes is below the least frame cap, 65536"));
    }
    Ok(n)
}

impl NodeArgs {
    /// The node's configuration with `capabilities`; its id defaults to `BINARY-PID`.
    ///
    /// # Errors
    ///
    /// A message: an unreadable or short cookie, an unreadable CA.
    pub fn config(
        &self,
        binary: &str,
        capabilities: dtf_plugin_core::event::Capabilities,
    ) -> Result<dtf_cluster::WorkerConfig, String> {
        let cookie =
            dtf_cluster::Cookie::load(self.cookie_file.as_deref()).map_err(|e| e.to_string())?;
        let transport = crate::remote::transport(self.insecure_cluster, || match &self.ca {
            Some(ca) => Ok(dtf_cluster::TlsFiles::client(ca)?),
            None => Err(CoordinatorError::Usage(
                "--ca FILE is required unless --insecure-cluster".to_owned(),
            )),
        })
        .map_err(|e| e.to_string())?;
        let id = self.id.clone().unwrap_or_else(|| default_node_id(binary));
        let mut config = dtf_cluster::WorkerConfig::new(
            self.coordinator.clone(),
            id,
            capabilities,
            cookie,
            transport,
        );
        config.timing.heartbeat_timeout = self.heartbeat_timeout;
        config.timing.heartbeat_interval =
            crate::remote::heartbeat_interval(self.heartbeat_timeout);
        config.give_up_after = self.give_up_after;
        config.max_frame = self.max_frame;
        Ok(config)
    }
}
