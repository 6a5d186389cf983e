//! External plugins: every process a plugin started dies with it, including a double-forked
//! daemon (`setsid` in a subshell that exits at once), which is neither in the plugin's
//! process group nor in its process tree when the plugin goes. Linux (`/proc`); needs `sh`
//! and `setsid` on `PATH`. Feature `external`.

#![cfg(all(feature = "external", target_os = "linux"))]
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::{Path, PathBuf};
use std::time::Duration;

use dtf_plugin_core::external;
use dtf_plugin_core::prelude::*;
use dtf_plugin_core::{PluginManager, PluginRegistry, PluginStatus};

/// A plugin written in `sh` that speaks just enough of the protocol (answers `hello`, exits on
/// `shutdown`) and, before that, starts a daemon the classic way: a subshell starts it in a
/// new session (`setsid`) and exits at once, so the daemon's parent is gone and it is
/// re-parented to init (or the nearest subreaper). The daemon itself starts a child with an
/// empty environment (`env -i`), which no longer carries the instance's marker. The pids go to
/// `plugin.pid`, `daemon.pid` and `cleared.pid`.
const PLUGIN_SH: &str = r#"echo $$ > plugin.pid
( setsid sh -c 'env -i sleep 300 & echo $! > cleared.pid; echo $$ > daemon.tmp && mv daemon.tmp daemon.pid && exec sleep 300' </dev/null >/dev/null 2>&1 & )
read -r hello
echo '{"type":"hello","protocol_version":1}'
while read -r line; do
    case "$line" in
        *'"type":"shutdown"'*) exit 0 ;;
    esac
done
"#;

/// A fresh plugin directory holding the plugin `daemonizer`.
fn plugin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtf-core-descendants-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let folder = dir.join("daemonizer");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("plugin.sh"), PLUGIN_SH).unwrap();
    std::fs::write(
        folder.join("plugin.toml"),
        "name = \"daemonizer\"\nversion = \"0.1.0\"\nkind = \"monitoring\"\n\
         hooks = [\"task_created\"]\nprotocol = 1\ncommand = \"sh\"\nargs = [\"plugin.sh\"]\n",
    )
    .unwrap();
    dir
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session, ….
fn stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` runs (exists and is not a zombie waiting for its reaper).
fn runs(pid: u32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z")
}

/// Whether `pid` descends from `ancestor`, following the parents in `/proc`.
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        let Some(ppid) = stat(p).and_then(|f| f[1].parse::<u32>().ok()) else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        p = ppid;
    }
    false
}

/// Polls `check` every 10 ms until it holds or `limit` has passed.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return check();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_forked_daemon_does_not_outlive_the_plugin() {
    let dir = plugin_dir();
    let folder = dir.join("daemonizer");
    let mut registry = PluginRegistry::new();
    let report = external::register_dirs(&mut registry, std::slice::from_ref(&dir));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let manager = PluginManager::builder()
        .spec(registry.spec("daemonizer", None).unwrap())
        .spawn()
        .await
        .unwrap();
    // The plugin has answered `hello` (`list` is async, so it is polled here).
    let mut up = false;
    for _ in 0..1000 {
        let list = manager.list().await.unwrap();
        if list
            .iter()
            .any(|p| p.name == "daemonizer" && p.status == PluginStatus::Running)
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "the plugin runs: {:?}", manager.list().await);

    // The daemon runs, in a session of its own, and its parent is gone: it is no longer a
    // descendant of the plugin's process (a real double fork).
    let mut pids = None;
    let detached = eventually(Duration::from_secs(10), || {
        let (Some(plugin), Some(daemon)) = (
            read_pid(&folder.join("plugin.pid")),
            read_pid(&folder.join("daemon.pid")),
        ) else {
            return false;
        };
        pids = Some((plugin, daemon));
        runs(daemon)
            && stat(daemon).is_some_and(|f| f[3] == daemon.to_string())
            && !descends_from(daemon, plugin)
    })
    .await;
    let (plugin, daemon) = pids.expect("the plugin wrote both pids");
    assert!(
        detached,
        "the daemon {daemon} runs detached from the plugin {plugin}: {:?}",
        stat(daemon)
    );
    assert!(runs(plugin), "the plugin's process runs");
    // The daemon's child runs without the instance's marker in its environment (whatever the
    // host does to find it, it cannot be by the marker).
    let marked = |pid: u32| {
        let marker = format!("{}=", external::INSTANCE_ENV);
        std::fs::read(format!("/proc/{pid}/environ"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .any(|var| var.starts_with(marker.as_bytes()))
    };
    let cleared = read_pid(&folder.join("cleared.pid")).expect("the daemon wrote its child's pid");
    let started = eventually(Duration::from_secs(10), || {
        runs(cleared) && !marked(cleared) && descends_from(cleared, daemon)
    })
    .await;
    assert!(started, "the daemon's child runs with an empty environment");

    manager.remove("daemonizer").await.unwrap();
    let gone = eventually(Duration::from_secs(10), || {
        !runs(daemon) && !runs(cleared) && !runs(plugin)
    })
    .await;
    assert!(
        gone,
        "the double-forked daemon {daemon} (or its child {cleared}) outlived its plugin: {:?} {:?}",
        stat(daemon),
        stat(cleared)
    );
    assert!(manager.shutdown(ShutdownReason::Completed).await.clean);
    let _ = std::fs::remove_dir_all(&dir);
}
