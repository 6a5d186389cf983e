//! [`NotifyPlugin`]: the plugin, its background pipeline and the shutdown flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dtf_plugin_core::event::{Event, HookSet, PluginKind};
use dtf_plugin_core::{Plugin, PluginContext, PluginError, PluginMetadata, Reconfigured};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::channels::Channel;
use crate::config::NotifyConfig;
use crate::deliver::{Deliverer, Gates};
use crate::error::NotifyError;
use crate::group::{GroupSettings, Grouper};
use crate::message::{EventInfo, Notification};
use crate::stats::NotifyStats;
use crate::throttle::Throttle;
use crate::transport::{ReqwestTransport, Transport};

/// The name the plugin registers under.
pub const PLUGIN_NAME: &str = "notify";

enum Command {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

struct Running {
    tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    shutdown_timeout: Duration,
}

/// The notification plugin (kind `Notification`): filter → throttle → group → format →
/// deliver, per channel.
///
/// `on_event` only hands the event to a background task, so a slow or rate-limited service
/// never holds up the bus. `on_shutdown` flushes every pending group and waits for the
/// deliveries up to `delivery.shutdown_timeout_ms`; what is still not delivered then is
/// recorded in [`NotifyStats::undelivered`] and logged at `warn`.
///
/// ```no_run
/// use dtf_plugin_core::prelude::*;
/// use dtf_plugins_notify::{NotifyPlugin, NotifyStats};
///
/// let stats = NotifyStats::default();
/// let handle = stats.clone();
/// let spec = PluginSpec::new(move || NotifyPlugin::new().with_stats(handle.clone()))
///     .config(serde_json::json!({
///         "channels": [{ "type": "slack", "webhook_url": { "env": "SLACK_WEBHOOK_URL" } }]
///     }));
/// // … add `spec` to a PluginManager; later:
/// println!("{:?}", stats.targets());
/// ```
pub struct NotifyPlugin {
    config: Option<NotifyConfig>,
    stats: NotifyStats,
    transport: Option<Arc<dyn Transport>>,
    extra: Vec<Arc<dyn Channel>>,
    running: Option<Running>,
    /// Every destination's gate; kept across reconfigurations so that a `Retry-After` or a
    /// rate limit still holds for the new pipeline.
    gates: Gates,
}

impl std::fmt::Debug for NotifyPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyPlugin")
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for NotifyPlugin {
    fn default() -> Self {
        Self::new()
    }
}

impl NotifyPlugin {
    /// A plugin reading its [`NotifyConfig`] from the plugin configuration at start.
    pub fn new() -> Self {
        Self {
            config: None,
            stats: NotifyStats::default(),
            transport: None,
            extra: Vec::new(),
            running: None,
            gates: Gates::default(),
        }
    }

    /// Adds a channel of your own (a [`Channel`] implementation) next to the configured ones.
    /// Its name must differ from theirs.
    pub fn with_channel(mut self, channel: Arc<dyn Channel>) -> Self {
        self.extra.push(channel);
        self
    }

    /// Uses `config` instead of the plugin configuration.
    pub fn with_config(mut self, config: NotifyConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Writes statistics into `stats` (share one handle across restarts).
    pub fn with_stats(mut self, stats: NotifyStats) -> Self {
        self.stats = stats;
        self
    }

    /// Sends through `transport` instead of the default reqwest client.
    pub fn with_transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// A handle on the statistics, readable from outside the plugin.
    pub fn stats_handle(&self) -> NotifyStats {
        self.stats.clone()
    }

    /// Starts the pipeline with `config` (what `on_start` does after reading the config).
    ///
    /// # Errors
    ///
    /// [`NotifyError`] naming the first bad key.
    pub fn start(&mut self, config: &NotifyConfig) -> Result<(), NotifyError> {
        let built = config.build_channels()?;
        let mut channels: Vec<Arc<dyn Channel>> = built.into_iter().map(Arc::from).collect();
        for ch in &self.extra {
            if channels.iter().any(|c| c.name() == ch.name()) {
                return Err(NotifyError::config(
                    "channels",
                    format!(
                        "channel name `{}` is used twice (a configured channel and one added with with_channel)",
                        ch.name()
                    ),
                ));
            }
            channels.push(ch.clone());
        }
        let transport = match &self.transport {
            Some(t) => t.clone(),
            None => Arc::new(
                ReqwestTransport::new(Duration::from_millis(config.delivery.timeout_ms))
                    .map_err(|e| NotifyError::Client(e.message))?,
            ),
        };
        let deliverer = Arc::new(
            Deliverer::new(transport, config.delivery.retry, self.stats.clone())
                .with_gates(self.gates.clone()),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let groupers = channels
            .iter()
            .map(|ch| {
                Grouper::new(
                    group_settings(config, ch.as_ref()),
                    Throttle::new(Duration::from_millis(config.throttle.interval_ms)),
                )
            })
            .collect();
        let names: Vec<&str> = channels.iter().map(|c| c.name()).collect();
        tracing::info!(channels = ?names, "notifier started");
        let task = tokio::spawn(pipeline(
            rx,
            channels,
            groupers,
            deliverer,
            self.stats.clone(),
        ));
        if let Some(old) = self.running.replace(Running {
            tx,
            task,
            shutdown_timeout: Duration::from_millis(config.delivery.shutdown_timeout_ms),
        }) {
            // Replaced (reconfigured): the old pipeline flushes and ends when its sender drops.
            drop(old.tx);
        }
        Ok(())
    }

    /// Hands `event` to the pipeline (never waits).
    pub fn notify(&self, event: &Event) {
        if let Some(r) = &self.running {
            if r.tx.send(Command::Event(Box::new(event.clone()))).is_err() {
                tracing::warn!("notifier pipeline is gone; event not notified");
            }
        }
    }

    /// Flushes every pending group and waits for delivery, up to the shutdown deadline;
    /// what is left is recorded as undelivered. Returns how many messages were left.
    pub async fn flush_and_stop(&mut self) -> usize {
        let Some(r) = self.running.take() else {
            return 0;
        };
        let (done_tx, done_rx) = oneshot::channel();
        let _ = r.tx.send(Command::Flush(done_tx));
        // If this future is dropped before it ends (the manager's shutdown deadline or the
        // handler timeout came first), the guard stops the pipeline and reports what was
        // still pending: nothing is sent after the plugin is gone, nothing is lost unreported.
        let mut guard = StopGuard {
            task: Some(r.task),
            stats: self.stats.clone(),
        };
        if tokio::time::timeout(r.shutdown_timeout, done_rx)
            .await
            .is_err()
        {
            if let Some(task) = &guard.task {
                task.abort();
            }
        }
        if let Some(task) = guard.task.as_mut() {
            let _ = task.await;
        }
        guard.task = None;
        let left = self
            .stats
            .abandon_pending("shutdown deadline passed before delivery");
        if left > 0 {
            tracing::warn!(left, "notifier stopped with messages not delivered");
        } else {
            tracing::info!("notifier flushed and stopped");
        }
        left
    }
}

/// Stops the pipeline and reports its pending messages if `flush_and_stop` is cancelled.
struct StopGuard {
    task: Option<JoinHandle<()>>,
    stats: NotifyStats,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let left = self
                .stats
                .abandon_pending("the notifier's shutdown was cut short before delivery");
            if left > 0 {
                tracing::warn!(left, "notifier stopped early with messages not delivered");
            }
        }
    }
}

impl Plugin for NotifyPlugin {
    fn metadata(&self) -> PluginMetadata {
        PluginMetadata::new(PLUGIN_NAME)
            .version(env!("CARGO_PKG_VERSION"))
            .kind(PluginKind::Notification)
            .hooks(HookSet::ALL)
    }

    async fn on_start(&mut self, ctx: &mut PluginContext) -> Result<(), PluginError> {
        let config = match &self.config {
            Some(c) => c.clone(),
            None => ctx.config::<NotifyConfig>()?,
        };
        self.start(&config)?;
        Ok(())
    }

    async fn on_event(
        &mut self,
        _ctx: &mut PluginContext,
        event: &Event,
    ) -> Result<(), PluginError> {
        self.notify(event);
        Ok(())
    }

    async fn on_reconfigure(
        &mut self,
        ctx: &mut PluginContext,
    ) -> Result<Reconfigured, PluginError> {
        // Validate first: a bad configuration is rejected and the running one stays.
        let config = ctx.config::<NotifyConfig>()?;
        config.validate()?;
        self.flush_and_stop().await;
        self.start(&config)?;
        Ok(Reconfigured::Applied)
    }

    async fn on_shutdown(&mut self, _ctx: &mut PluginContext) -> Result<(), PluginError> {
        self.flush_and_stop().await;
        Ok(())
    }
}

async fn pipeline(
    mut rx: mpsc::UnboundedReceiver<Command>,
    channels: Vec<Arc<dyn Channel>>,
    mut groupers: Vec<Grouper>,
    deliverer: Arc<Deliverer>,
    stats: NotifyStats,
) {
    // One delivery task per channel: messages to one destination go out in order, one at a
    // time, through its gate; a slow destination never holds up another. Dropping the
    // JoinSet (when this task is aborted at the shutdown deadline) aborts them.
    let mut workers = JoinSet::new();
    let mut queues = Vec::with_capacity(channels.len());
    // Messages queued for each destination and not yet delivered (or given up).
    let backlogs: Vec<Arc<AtomicUsize>> = channels
        .iter()
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    for (ch, backlog) in channels.iter().zip(&backlogs) {
        let (tx, rx) = mpsc::unbounded_channel::<(Notification, u64)>();
        workers.spawn(destination(
            ch.clone(),
            rx,
            deliverer.clone(),
            Arc::clone(backlog),
        ));
        queues.push(tx);
    }
    let enqueue = |i: usize,
                   msgs: Vec<Notification>,
                   queues: &[mpsc::UnboundedSender<(Notification, u64)>]| {
        backlogs[i].fetch_add(msgs.len(), Ordering::Relaxed);
        for m in msgs {
            let ticket = stats.enqueue(channels[i].name(), &m.title_plain(), m.count);
            tracing::debug!(target_channel = channels[i].name(), title = %m.title_plain(), count = m.count, "message queued");
            if queues[i].send((m, ticket)).is_err() {
                stats.give_up(ticket, "delivery task is gone");
            }
        }
    };
    let flush_done = loop {
        // A destination with a full backlog takes no new message until it has delivered some:
        // its due groups wait, gathering events, instead of queueing without bound (a
        // destination slower than the groups fall due would fall behind for good, sending
        // stale messages long after the failures stopped). Checked again every
        // `BACKLOG_RECHECK` while it is full.
        let now = Instant::now();
        let deadline = groupers
            .iter()
            .zip(&backlogs)
            .filter_map(|(g, backlog)| {
                let due = g.next_deadline()?;
                Some(if backlog.load(Ordering::Relaxed) >= MAX_BACKLOG {
                    due.max(now + BACKLOG_RECHECK)
                } else {
                    due
                })
            })
            .min();
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Event(event)) => {
                    let info = EventInfo::of(&event);
                    let now = Instant::now();
                    let (mut accepted, mut filtered) = (0, 0);
                    for (i, ch) in channels.iter().enumerate() {
                        if ch.filter().accepts(&info) {
                            groupers[i].add(info.clone(), now);
                            accepted += 1;
                        } else {
                            filtered += 1;
                        }
                    }
                    stats.count(|c| {
                        c.events += 1;
                        c.accepted += accepted;
                        c.filtered += filtered;
                    });
                }
                Some(Command::Flush(done)) => break Some(done),
                None => break None,
            },
            () = sleep_until_opt(deadline) => {
                let now = Instant::now();
                for (i, g) in groupers.iter_mut().enumerate() {
                    let room = MAX_BACKLOG.saturating_sub(backlogs[i].load(Ordering::Relaxed));
                    if room > 0 {
                        enqueue(i, g.due_at_most(now, room), &queues);
                    }
                }
            }
        }
    };
    let now = Instant::now();
    for (i, g) in groupers.iter_mut().enumerate() {
        enqueue(i, g.flush_all(now), &queues);
    }
    drop(queues);
    while workers.join_next().await.is_some() {}
    if let Some(done) = flush_done {
        let _ = done.send(());
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Most messages queued for one destination before its due groups are held back (see
/// `pipeline`).
const MAX_BACKLOG: usize = 4;

/// How often a destination with a full backlog is checked for room.
const BACKLOG_RECHECK: Duration = Duration::from_millis(100);

async fn destination(
    channel: Arc<dyn Channel>,
    mut rx: mpsc::UnboundedReceiver<(Notification, u64)>,
    deliverer: Arc<Deliverer>,
    backlog: Arc<AtomicUsize>,
) {
    let stats = deliverer.stats().clone();
    while let Some((msg, ticket)) = rx.recv().await {
        let delivered = channel.deliver(&msg, &deliverer).await;
        backlog.fetch_sub(1, Ordering::Relaxed);
        match delivered {
            Ok(()) => {
                stats.target(channel.name(), |s| s.ok += 1);
                stats.done(ticket);
                tracing::info!(target_channel = channel.name(), title = %msg.title_plain(), "notification delivered");
            }
            Err(e) => {
                stats.target(channel.name(), |s| {
                    s.failed += 1;
                    s.last_error = Some(e.message.clone());
                });
                stats.give_up(ticket, &e.message);
            }
        }
    }
}

/// The grouping of `channel`'s events.
fn group_settings(config: &NotifyConfig, channel: &dyn Channel) -> GroupSettings {
    let mut settings = config.group_settings();
    settings.by_fingerprint = channel.groups_by_fingerprint();
    settings
}

/// One rendered message of a dry run.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Preview {
    /// The channel name.
    pub channel: String,
    /// The channel type.
    pub kind: &'static str,
    /// The message.
    pub message: Notification,
    /// What the channel would send (request body; no secrets).
    pub body: serde_json::Value,
}

/// Renders what `config`'s channels would send for `events`, without sending anything: each
/// channel's filter, then grouping as if every event arrived within one group window.
///
/// # Errors
///
/// [`NotifyError`] when the configuration is invalid.
pub fn preview(config: &NotifyConfig, events: &[Event]) -> Result<Vec<Preview>, NotifyError> {
    let channels = config.build_channels()?;
    let now = Instant::now();
    let mut out = Vec::new();
    for ch in &channels {
        let mut g = Grouper::new(
            group_settings(config, ch.as_ref()),
            Throttle::new(Duration::ZERO),
        );
        for e in events {
            let info = EventInfo::of(e);
            if ch.filter().accepts(&info) {
                g.add(info, now);
            }
        }
        for m in g.flush_all(now) {
            out.push(Preview {
                channel: ch.name().to_owned(),
                kind: ch.kind(),
                body: ch.render(&m),
                message: m,
            });
        }
    }
    Ok(out)
}
