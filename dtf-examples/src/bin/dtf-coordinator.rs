//! `dtf-coordinator`: the reference coordinator. Runs shell commands (from a TOML task file
//! or `--task`) or simulated tasks on local workers, with the scheduler and the configured
//! plugins, prints a summary, and exits non-zero when a task failed.
//!
//! ```text
//! cargo run -p dtf-examples --bin dtf-coordinator -- --help
//! cargo run -p dtf-examples --bin dtf-coordinator -- --simulate-tasks 20 --workers 4
//! cargo run -p dtf-examples --bin dtf-coordinator -- --tasks dtf-examples/tasks.toml --junit target/dtf/junit.xml
//! cargo run -p dtf-examples --bin dtf-coordinator -- plugin --help
//! ```
//!
//! Logs go to stderr (`RUST_LOG=debug` for more); see `docs/coordinator.md`.

use std::io::Write as _;

fn main() {
    // Log lines carry task names and errors: each one line with no CI command in it, colour
    // only on a terminal and never with NO_COLOR.
    dtf_examples::output::init_logging("warn");
    // Task process groups die with the coordinator, even on SIGKILL.
    if let Err(e) = dtf_examples::executor::kill_tasks_on_exit() {
        tracing::warn!(error = %e, "no watchdog: task processes may outlive a killed coordinator");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: start the tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        let mut out = std::io::stdout();
        let mut err = std::io::stderr();
        // `dtf-coordinator plugin …` (the plugin repository client, plugin_cli.rs) and
        // `dtf-coordinator completions SHELL` are subcommands of the same command line.
        dtf_examples::coordinator::run_cli_with_signals(
            std::env::args().skip(1),
            &mut out,
            &mut err,
        )
        .await
    });
    let _ = std::io::stdout().flush();
    drop(runtime);
    dtf_examples::executor::exiting_normally();
    std::process::exit(code);
}
