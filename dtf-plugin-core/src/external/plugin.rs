//! [`ExternalPlugin`]: a [`Plugin`] that owns a child process speaking the protocol.

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::manifest::Manifest;
use super::protocol::{HostMessage, Level, MAX_LINE, PluginMessage, SUPPORTED_PROTOCOLS};
use crate::event::{Event, EventKind};
use crate::plugin::{Plugin, PluginContext, PluginError, PluginMetadata};

/// Environment variables the child gets (besides the manifest's `env` table, and the mark of
/// [`mark_plugin_processes`] if one was set). Nothing else of the coordinator's environment is
/// passed on: it may hold tokens.
///
/// `DTF_PLUGIN_INSTANCE` is a random marker, new for each plugin instance: the processes the
/// plugin starts inherit it, so that when the instance goes, the ones that left its process
/// group and tree (a double-forked daemon) are still found and killed ([`INSTANCE_ENV`]).
pub const CHILD_ENV: &[&str] = &[
    "PATH",
    "DTF_PLUGIN_NAME",
    "DTF_PLUGIN_DIR",
    "DTF_PROTOCOL_VERSION",
    INSTANCE_ENV,
];

/// The variable holding a plugin instance's random marker (128 bits, in hex). Every process
/// whose environment holds the instance's exact `DTF_PLUGIN_INSTANCE=<marker>` entry is killed
/// with the instance (Linux). A process that replaced its environment (`execve` with another
/// one, e.g. `env -i`) and also left the plugin's process group and tree escapes: see
/// `docs/external-plugins.md`, "Processes".
pub const INSTANCE_ENV: &str = "DTF_PLUGIN_INSTANCE";

/// The mark set by [`mark_plugin_processes`], given to every plugin process started after.
static PROCESS_MARK: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// Gives every external plugin process that this process starts from now on one more
/// environment variable, `name=value`, which what the plugin starts inherits as well.
///
/// A plugin's processes are killed with its instance, and the manager stops every instance
/// when it shuts down. If this process dies without shutting down (`SIGKILL`, the OOM killer,
/// an immediate exit on a second Ctrl-C), nothing of this process is left to do that: the
/// plugins run on, reparented to init. With a mark, a watchdog outside this process can find
/// them by their environment (Linux: `/proc/PID/environ`) and kill them; `dtf-coordinator`
/// gives them the marker its task watchdog already looks for.
///
/// The first mark stays: returns `false`, and changes nothing, when one was set before.
pub fn mark_plugin_processes(name: impl Into<String>, value: impl Into<String>) -> bool {
    PROCESS_MARK.set((name.into(), value.into())).is_ok()
}

/// An out-of-process plugin: spawns the manifest's command in `on_start`, speaks the
/// newline-delimited JSON protocol with it, and kills it when dropped.
///
/// - a malformed line, an `error` answer, or the process exiting is a plugin failure (the
///   manager restarts a fresh instance, hence a fresh process, within the restart budget);
/// - a plugin that does not answer is cut off by the manager's handler timeout, and its
///   process killed with the instance;
/// - `on_shutdown` sends `shutdown`, waits up to the manifest's `shutdown_grace` for the
///   process to exit, then kills it.
#[derive(Debug)]
pub struct ExternalPlugin {
    manifest: Arc<Manifest>,
    child: Option<Running>,
}

#[derive(Debug)]
struct Running {
    process: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
    /// The child's process group (its own, on Unix), killed as a whole when the plugin
    /// instance goes, so that processes the plugin started do not outlive it.
    group: Option<u32>,
    /// The plugin's descendants when it was asked to shut down, with their start times: a
    /// descendant that left the group (`setsid`) is no longer found from the plugin once the
    /// plugin has exited, so it is killed from this list (if its start time still matches,
    /// so a reused pid is never hit).
    tree: Vec<(u32, u64)>,
    /// This instance's `DTF_PLUGIN_INSTANCE` marker, inherited by every process the plugin
    /// starts unless that process replaces its environment.
    marker: String,
    /// The rate of the plugin's `log` messages, limited like its stderr: a plugin flooding
    /// the protocol with them cannot fill the disk with our log either.
    logs: LineBudget,
    /// The plugin's name, for the log.
    name: String,
}

/// Rounds of "scan, freeze what is new" before the kill: each round finds what was forked
/// before the previous round's freeze, and a round that finds nothing new ends the search.
/// The bound only keeps a fork bomb from holding the host here forever (what it forks after
/// the last round is not killed).
const FREEZE_ROUNDS: usize = 8;

impl Drop for Running {
    fn drop(&mut self) {
        let suppressed = self.logs.take_suppressed();
        if suppressed > 0 {
            tracing::warn!(plugin = %self.name, suppressed, "external plugin: `log` messages over the rate limit were not logged");
        }
        #[cfg(unix)]
        if let Some(pgid) = self.group.take() {
            // Everything the plugin started, not only its group: a descendant that called
            // `setsid` left the group but is still in the tree while its parent lives, and a
            // double-forked daemon (its parent exited) is in neither, but still carries the
            // instance's marker in its environment. The tree is walked from the plugin's
            // process only while that process is not reaped (after, its pid may be reused).
            // What is found is frozen (`SIGSTOP`, so nothing forks meanwhile), the scan
            // repeated until it finds nothing new, then all of it killed with the group.
            let marker = format!("{INSTANCE_ENV}={}", self.marker);
            let root = self.process.id();
            let mut found: Vec<(u32, u64)> = self
                .tree
                .iter()
                .filter(|p| is_alive(**p))
                .copied()
                .collect();
            signal("-STOP", &pids(&found));
            for _ in 0..FREEZE_ROUNDS {
                let new: Vec<(u32, u64)> = scan_proc(root, marker.as_bytes())
                    .into_iter()
                    .filter(|p| !found.contains(p))
                    .collect();
                if new.is_empty() {
                    break;
                }
                signal("-STOP", &pids(&new));
                found.extend(new);
            }
            // A frozen process cannot exit by itself, so a pid whose start time still matches
            // here is the process that was found, not a reused pid. `kill` on a negative pid
            // signals the whole group; std has no killpg without unsafe code. A process
            // already gone makes `kill` fail for it, which is fine.
            let mut targets = vec![format!("-{pgid}")];
            targets.extend(
                found
                    .iter()
                    .filter(|p| is_alive(**p))
                    .map(|(pid, _)| pid.to_string()),
            );
            signal("-KILL", &targets);
        }
    }
}

/// A fresh random marker for a plugin instance: 128 bits in hex, from std's randomly keyed
/// SipHash (`RandomState`) over a process-wide counter, the pid and the time: two instances,
/// in this process or another, share one only by a chance of one in 2^128.
fn instance_marker() -> String {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut words = [0u64; 2];
    for (i, word) in words.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u32(std::process::id());
        h.write_u128(nanos);
        h.write_usize(i);
        *word = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// Sends `sig` to `targets` (pids, or `-pgid` for a group) with the shell's built-in `kill`
/// (not `/bin/kill`, which slim images lack: `procps` is not installed there).
#[cfg(unix)]
fn signal<T: std::fmt::Display>(sig: &str, targets: &[T]) {
    if targets.is_empty() {
        return;
    }
    let sent = std::process::Command::new("sh")
        .arg("-c")
        .arg("kill \"$@\"")
        .arg("sh")
        .arg(sig)
        .args(targets.iter().map(ToString::to_string))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = sent {
        tracing::error!(signal = sig, error = %e, "could not signal a plugin's processes");
    }
}

fn pids(tree: &[(u32, u64)]) -> Vec<u32> {
    tree.iter().map(|(pid, _)| *pid).collect()
}

/// A process's parent and start time, from `/proc/PID/stat` (Linux): the fields after the
/// command name in parentheses are state, ppid, …, and the start time is the 22nd field.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Whether the process `pid` that started at `start` still runs (and is not a zombie).
fn is_alive((pid, start): (u32, u64)) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .is_none_or(|(_, rest)| rest.split_whitespace().next() == Some("Z"))
    });
    !zombie && proc_stat(pid).is_some_and(|(_, s)| s == start)
}

/// The processes descended from `root` with their start times, from `/proc` (Linux;
/// elsewhere none).
fn descendants(root: u32) -> Vec<(u32, u64)> {
    scan_proc(Some(root), &[])
}

/// One pass over `/proc` (Linux; elsewhere none): the processes descended from `root` (if
/// any), and, if `marker` is not empty, every process of our user whose environment holds the
/// exact entry `marker` (`KEY=value`), each with its start time. This process is never in it.
fn scan_proc(root: Option<u32>, marker: &[u8]) -> Vec<(u32, u64)> {
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    #[cfg(unix)]
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let me = std::process::id();
    let mut children: std::collections::HashMap<u32, Vec<(u32, u64)>> =
        std::collections::HashMap::new();
    let mut found: Vec<(u32, u64)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((ppid, start)) = proc_stat(pid) else {
            continue;
        };
        children.entry(ppid).or_default().push((pid, start));
        // Only our own user's processes: another user's environment is not readable (and
        // its processes not ours to kill); the check is a `stat`, reading is not tried.
        #[cfg(unix)]
        let ours = uid.is_some() && entry.metadata().ok().map(|m| m.uid()) == uid;
        #[cfg(not(unix))]
        let ours = false;
        if !marker.is_empty()
            && pid != me
            && ours
            && std::fs::read(entry.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker))
            // The start time again: the pid read is the process whose environment was read.
            && proc_stat(pid).is_some_and(|(_, s)| s == start)
            && found.len() < 4096
        {
            found.push((pid, start));
        }
    }
    // The walk starts from the plugin's process and from every marked process: a child that
    // a marked process started with a replaced environment is still found through its parent.
    let mut next: Vec<u32> = found.iter().map(|(pid, _)| *pid).chain(root).collect();
    let mut walked = std::collections::HashSet::new();
    while let Some(pid) = next.pop() {
        if !walked.insert(pid) {
            continue;
        }
        for &child in children.get(&pid).map_or(&[][..], Vec::as_slice) {
            if child.0 == me {
                continue;
            }
            if !found.contains(&child) && found.len() < 4096 {
                found.push(child);
            }
            next.push(child.0);
        }
    }
    found
}

impl ExternalPlugin {
    /// An instance for `manifest` (nothing runs until `on_start`).
    pub fn new(manifest: Arc<Manifest>) -> Self {
        Self {
            manifest,
            child: None,
        }
    }

    fn spawn(&self) -> Result<Running, PluginError> {
        let m = &self.manifest;
        let marker = instance_marker();
        let mut cmd = Command::new(m.program());
        cmd.args(&m.args)
            .current_dir(&m.dir)
            .env_clear()
            .envs(&m.env)
            .env("DTF_PLUGIN_NAME", &m.name)
            .env("DTF_PLUGIN_DIR", &m.dir)
            .env("DTF_PROTOCOL_VERSION", m.protocol.to_string())
            .env(INSTANCE_ENV, &marker)
            .envs(PROCESS_MARK.get().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: a terminal's Ctrl-C to the coordinator does not reach it
        // (the coordinator shuts it down in order), and its own children can be killed with it.
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        let mut process = cmd.spawn().map_err(|e| {
            format!(
                "start `{}` for plugin `{}`: {e}",
                m.program().display(),
                m.name
            )
        })?;
        let stdin = process.stdin.take().ok_or("the child has no stdin")?;
        let stdout = process.stdout.take().ok_or("the child has no stdout")?;
        if let Some(stderr) = process.stderr.take() {
            let name = m.name.clone();
            // The child's stderr (tracebacks, stray prints) goes to the log, line by line, as
            // lossy UTF-8 and at most 8 KiB per line, and at most `LineBudget`'s rate: a
            // flooding plugin cannot fill the disk with our log (the lines over the rate are
            // counted and the count logged). It is read to the end whatever it holds, so a
            // child never blocks or dies on a full or closed stderr pipe.
            tokio::spawn(async move {
                let mut reader = BufReader::new(stderr);
                let mut buf = Vec::new();
                let mut budget = LineBudget::new(std::time::Instant::now());
                loop {
                    buf.clear();
                    match (&mut reader)
                        .take(MAX_LOGGED as u64)
                        .read_until(b'\n', &mut buf)
                        .await
                    {
                        Ok(0) => break,
                        Ok(_) => {
                            let Some(suppressed) = budget.admit(std::time::Instant::now()) else {
                                continue;
                            };
                            let line = String::from_utf8_lossy(&buf);
                            let line = loggable(line.trim_end_matches(['\n', '\r']));
                            if suppressed > 0 {
                                tracing::warn!(plugin = %name, suppressed, "external plugin: stderr lines over the rate limit were not logged");
                            }
                            tracing::warn!(plugin = %name, stderr = %line, "external plugin wrote to stderr");
                        }
                        Err(_) => break,
                    }
                }
                let suppressed = budget.take_suppressed();
                if suppressed > 0 {
                    tracing::warn!(plugin = %name, suppressed, "external plugin: stderr lines over the rate limit were not logged");
                }
            });
        }
        let group = if cfg!(unix) { process.id() } else { None };
        Ok(Running {
            process,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            next_id: 1,
            group,
            tree: Vec::new(),
            marker,
            logs: LineBudget::new(std::time::Instant::now()),
            name: m.name.clone(),
        })
    }
}

impl Running {
    async fn send(&mut self, msg: &HostMessage<'_>) -> Result<(), PluginError> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        let stdin = self.stdin.as_mut().ok_or("stdin is closed")?;
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        }
        .await;
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .exited(&format!("cannot write to the plugin ({e})"))
                .await),
        }
    }

    /// The next message, or an error when the process wrote garbage or exited.
    async fn receive(&mut self) -> Result<PluginMessage, PluginError> {
        let mut buf = Vec::new();
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
        let n = (&mut self.stdout)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Err(self.exited("the plugin closed its output").await);
        }
        parse_line(&buf)
    }

    /// Describes an exited (or exiting) process.
    async fn exited(&mut self, what: &str) -> PluginError {
        let status =
            tokio::time::timeout(std::time::Duration::from_millis(500), self.process.wait()).await;
        match status {
            Ok(Ok(s)) => format!("{what}: the process exited ({s})").into(),
            _ => what.to_owned().into(),
        }
    }
}

/// Most bytes of one line a plugin has logged (a `log` message, a line of stderr).
const MAX_LOGGED: usize = 8 * 1024;

/// A plugin's text as it goes into our log: at most [`MAX_LOGGED`] bytes (cut at a character,
/// with how much was left out), with control characters escaped. A `log` message may be up to
/// 1 MiB, which at the rate limit was still about 50 MiB of log a second; and a line break or
/// a terminal escape inside it could forge log lines of ours.
fn loggable(text: &str) -> String {
    let mut cut = text.len().min(MAX_LOGGED);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 32);
    for c in text[..cut].chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut < text.len() {
        out.push_str(&format!(" … ({} more bytes not logged)", text.len() - cut));
    }
    out
}

fn forward_log(plugin: &str, level: Level, message: &str) {
    let message = loggable(message);
    match level {
        Level::Trace => tracing::trace!(plugin, "{message}"),
        Level::Debug => tracing::debug!(plugin, "{message}"),
        Level::Info => tracing::info!(plugin, "{message}"),
        Level::Warn => tracing::warn!(plugin, "{message}"),
        Level::Error => tracing::error!(plugin, "{message}"),
    }
}

/// Handles the messages a plugin may send at any time; returns the others. `log` messages are
/// forwarded within `logs`' rate; the others are counted, and the count logged with the next
/// one let through (or when the process goes).
fn side_message(
    ctx: &PluginContext,
    plugin: &str,
    logs: &mut LineBudget,
    msg: PluginMessage,
) -> Option<PluginMessage> {
    match msg {
        PluginMessage::Log { level, message } => {
            if let Some(suppressed) = logs.admit(std::time::Instant::now()) {
                if suppressed > 0 {
                    tracing::warn!(
                        plugin,
                        suppressed,
                        "external plugin: `log` messages over the rate limit were not logged"
                    );
                }
                forward_log(plugin, level, &message);
            }
            None
        }
        PluginMessage::Publish { name, payload } => {
            // After shutdown the bus is closed and there is no one left to tell: not a
            // failure of the plugin.
            if let Err(e) = ctx.publish(EventKind::custom(name, payload)) {
                tracing::debug!(plugin, error = %e, "event of the plugin not published");
            }
            None
        }
        other => Some(other),
    }
}

impl Plugin for ExternalPlugin {
    fn metadata(&self) -> PluginMetadata {
        let m = &self.manifest;
        PluginMetadata::new(m.name.clone())
            .version(m.version.clone())
            .kind(m.kind)
            .hooks(m.hooks)
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        let mut running = self.spawn()?;
        let name = self.manifest.name.clone();
        let config = ctx.raw_config().clone();
        running
            .send(&HostMessage::Hello {
                protocol_versions: SUPPORTED_PROTOCOLS,
                plugin: &name,
                config: &config,
            })
            .await?;
        loop {
            let msg = running.receive().await?;
            match side_message(ctx, &name, &mut running.logs, msg) {
                None => {}
                Some(PluginMessage::Hello {
                    protocol_version,
                    name: reported,
                    version,
                }) => {
                    if let Some(n) = reported.filter(|n| *n != name) {
                        let n = loggable(&n);
                        tracing::warn!(plugin = %name, process = %n, "the process reports another name than its manifest");
                    }
                    if !SUPPORTED_PROTOCOLS.contains(&protocol_version) {
                        return Err(format!(
                            "protocol version mismatch: the plugin chose {protocol_version}, this dtf speaks {SUPPORTED_PROTOCOLS:?}"
                        )
                        .into());
                    }
                    if let Some(v) = version.filter(|v| *v != self.manifest.version) {
                        let v = loggable(&v);
                        tracing::warn!(plugin = %name, manifest = %self.manifest.version, process = %v, "the process reports another version than its manifest");
                    }
                    tracing::debug!(plugin = %name, protocol_version, "external plugin ready");
                    break;
                }
                Some(other) => {
                    return Err(format!(
                        "protocol error: expected `hello`, got {}",
                        kind_of(&other)
                    )
                    .into());
                }
            }
        }
        self.child = Some(running);
        Ok(())
    }

    async fn on_event(
        &mut self,
        ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        if !self.manifest.hooks.contains(event.hook()) {
            return Ok(());
        }
        let name = &self.manifest.name;
        let running = self
            .child
            .as_mut()
            .ok_or("the plugin process is not running")?;
        let id = running.next_id;
        running.next_id += 1;
        tracing::trace!(plugin = %name, id, seq = event.meta.seq, "event sent to the plugin");
        running.send(&HostMessage::Event { id, event }).await?;
        loop {
            let msg = running.receive().await?;
            match side_message(ctx, name, &mut running.logs, msg) {
                None => {}
                Some(PluginMessage::Ack { id: got }) if got == id => {
                    tracing::trace!(plugin = %name, id, "event acknowledged");
                    return Ok(());
                }
                Some(PluginMessage::Error { id: got, message }) if got == id => {
                    // Cut and escaped: it goes into the log, `PluginFailed`, `last_error` and
                    // the dead letter.
                    let message = loggable(&message);
                    return Err(format!("the plugin reported: {message}").into());
                }
                Some(other) => {
                    return Err(format!(
                        "protocol error: expected `ack` for event {id}, got {}",
                        kind_of(&other)
                    )
                    .into());
                }
            }
        }
    }

    async fn on_shutdown(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        let Some(mut running) = self.child.take() else {
            return Ok(());
        };
        let name = self.manifest.name.clone();
        let grace = self.manifest.shutdown_grace;
        // Who may outlive it by leaving its process group: noted while it still runs.
        if let Some(pid) = running.group {
            running.tree = descendants(pid);
        }
        if let Err(e) = running.send(&HostMessage::Shutdown {}).await {
            tracing::debug!(plugin = %name, error = %e, "shutdown message not delivered");
        }
        // Closing stdin is the second signal: a plugin reading lines sees end of input.
        running.stdin = None;
        let drained = tokio::time::timeout(grace, async {
            // Log lines and publications written while finishing still count. The process's
            // exit ends the wait even when its output stays open (a process it started holds
            // the pipe; the group kill when `running` drops ends that one).
            let Running {
                process,
                stdout,
                logs,
                ..
            } = &mut running;
            let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
            let mut handle = |buf: &[u8]| match parse_line(buf) {
                Ok(msg) => {
                    if let Some(other) = side_message(ctx, &name, logs, msg) {
                        tracing::debug!(plugin = %name, message = kind_of(&other), "unexpected message during shutdown");
                    }
                    true
                }
                Err(_) => false,
            };
            let status = loop {
                let mut buf = Vec::new();
                let mut line = (&mut *stdout).take(limit);
                tokio::select! {
                    status = process.wait() => break status,
                    n = line.read_until(b'\n', &mut buf) => match n {
                        Ok(0) | Err(_) => break process.wait().await,
                        Ok(_) => {
                            if !handle(&buf) {
                                break process.wait().await;
                            }
                        }
                    },
                }
            };
            // What it wrote just before exiting is still in the pipe: read it, briefly (a
            // process it started may hold the pipe open).
            loop {
                let mut buf = Vec::new();
                let mut line = (&mut *stdout).take(limit);
                match tokio::time::timeout(
                    std::time::Duration::from_millis(200),
                    line.read_until(b'\n', &mut buf),
                )
                .await
                {
                    Ok(Ok(n)) if n > 0 && handle(&buf) => {}
                    _ => break,
                }
            }
            status
        })
        .await;
        match drained {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("the plugin exited with {status} on shutdown").into()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                tracing::warn!(plugin = %name, ?grace, "plugin did not exit in time after shutdown; killing it");
                running.process.kill().await?;
                Err(format!("did not exit within {grace:?} after shutdown; killed").into())
            }
        }
    }
}

/// One line of the plugin's output as a message. Errors say what was wrong, never what the
/// line was: it could echo a secret.
fn parse_line(buf: &[u8]) -> Result<PluginMessage, PluginError> {
    if buf.last() != Some(&b'\n') && buf.len() > MAX_LINE {
        return Err(format!("protocol error: a line longer than {MAX_LINE} bytes").into());
    }
    serde_json::from_slice(buf).map_err(|e| {
        // serde's message can quote the offending value, so only its class and place.
        let what = match e.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "not a protocol message",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        format!(
            "protocol error: malformed line ({} bytes): {what} at line {} column {}",
            buf.len(),
            e.line(),
            e.column()
        )
        .into()
    })
}

fn kind_of(msg: &PluginMessage) -> &'static str {
    match msg {
        PluginMessage::Hello { .. } => "`hello`",
        PluginMessage::Ack { .. } => "`ack` with another id",
        PluginMessage::Error { .. } => "`error` with another id",
        PluginMessage::Log { .. } => "`log`",
        PluginMessage::Publish { .. } => "`publish`",
    }
}

/// A token bucket for the lines of a plugin's stderr that reach the log: `LINES_BURST` at
/// once, then `LINES_PER_SEC` a second. Lines over it are counted, not logged.
#[derive(Debug)]
struct LineBudget {
    tokens: f64,
    last: std::time::Instant,
    suppressed: u64,
}

/// Lines of a plugin's stderr (and, apart, of its `log` messages) logged per second, sustained.
const LINES_PER_SEC: f64 = 50.0;
/// Lines of a plugin's stderr (and, apart, of its `log` messages) logged at once (a traceback
/// fits).
const LINES_BURST: f64 = 200.0;

impl LineBudget {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: LINES_BURST,
            last: now,
            suppressed: 0,
        }
    }

    /// Whether a line arriving at `now` is logged: `Some(lines suppressed since the last one
    /// logged)`, or `None` (it is counted).
    fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SEC).min(LINES_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(self.take_suppressed())
        } else {
            self.suppressed += 1;
            None
        }
    }

    fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod stderr_tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// What a plugin logs is cut and cannot forge our log lines (found by a review: a 1 MiB
    /// `log` message went into the log whole, line breaks and all).
    #[test]
    fn a_plugins_text_is_cut_and_escaped_before_it_is_logged() {
        let forged = "ok\n2026-12-05T00:00:00Z ERROR dtf: forged\r\u{1b}[2J\ttabbed";
        let logged = loggable(forged);
        assert_eq!(
            logged,
            "ok\\n2026-12-05T00:00:00Z ERROR dtf: forged\\r\\u{1b}[2J\ttabbed"
        );
        assert!(!logged.contains('\n') && !logged.contains('\r'));
        let big = "é".repeat(MAX_LOGGED);
        let logged = loggable(&big);
        assert!(logged.len() < MAX_LOGGED + 64, "{}", logged.len());
        assert!(
            logged.ends_with(&format!("({} more bytes not logged)", MAX_LOGGED)),
            "{}",
            &logged[logged.len() - 40..]
        );
        assert_eq!(loggable("plain"), "plain");
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate_and_counted() {
        let t0 = Instant::now();
        let mut budget = LineBudget::new(t0);
        // 10,000 lines in the same instant: the burst gets through, the rest is counted.
        let logged = (0..10_000).filter(|_| budget.admit(t0).is_some()).count();
        assert_eq!(logged, LINES_BURST as usize);
        // One second later the rate has refilled 50 tokens; the first line logged reports
        // what was suppressed.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(budget.admit(t1), Some(10_000 - LINES_BURST as u64));
        let more = (0..1_000).filter(|_| budget.admit(t1).is_some()).count();
        assert_eq!(more, LINES_PER_SEC as usize - 1);
        assert_eq!(budget.take_suppressed(), 1_000 - more as u64);
    }

    #[test]
    fn a_quiet_plugin_loses_nothing() {
        let t0 = Instant::now();
        let mut budget = LineBudget::new(t0);
        for i in 0..1_000u64 {
            // 20 lines a second, under the rate.
            let now = t0 + Duration::from_millis(i * 50);
            assert_eq!(budget.admit(now), Some(0), "line {i}");
        }
    }
}
