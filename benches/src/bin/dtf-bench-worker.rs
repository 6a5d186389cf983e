//! The remote worker process of the cluster bench (`benches/benches/cluster.rs`): the same
//! worker as `dtf-worker` (`dtf_cluster::run_worker` with `dtf-worker`'s shell job runner),
//! built with the bench so that `cargo bench` needs nothing else.
//!
//! Usage: `dtf-bench-worker ADDR ID SLOTS CA_FILE COOKIE_FILE`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use dtf_cluster::{Cookie, TlsFiles, Transport, WorkerConfig, run_worker};
use dtf_examples::remote::ShellJobRunner;
use dtf_plugin_core::event::Capabilities;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, id, slots, ca, cookie] = args.as_slice() else {
        return ExitCode::from(2);
    };
    let Ok(slots) = slots.parse::<u32>() else {
        return ExitCode::from(2);
    };
    if dtf_examples::executor::kill_tasks_on_exit().is_err() {
        return ExitCode::from(1);
    }
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        return ExitCode::from(1);
    };
    let result = rt.block_on(async {
        let cookie = Cookie::load(Some(Path::new(cookie)))?;
        let transport = Transport::Tls(Arc::new(TlsFiles::client(Path::new(ca))?));
        let caps = Capabilities::builder().cpu_cores(1).slots(slots).build();
        let config = WorkerConfig::new(addr.as_str(), id.as_str(), caps, cookie, transport);
        run_worker(config, Arc::new(ShellJobRunner)).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}
