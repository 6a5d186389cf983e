//! A worker node's side: connect to the coordinator, register, run jobs, send their events
//! until the coordinator acknowledges them, reconnect after a cut.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dtf_plugin_core::event::{Capabilities, Event, EventKind, TaskError, TaskId, WorkerId};
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServerMessage;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::ClusterError;
use crate::config::{Cookie, DEFAULT_MAX_FRAME, Timing, Transport, server_name};
use crate::host::PluginHost;
use crate::net::{self, Link, Refusals};
use crate::wire::{
    self, EncodedEvents, FromWorkerRef, HUB_GROUP, HubFrame, Inbox, RemoteJob, WorkerFrame,
};

/// Runs one job on a worker node and returns its result: `TaskCompleted` or `TaskFailed`.
/// The worker publishes `TaskStarted` itself before calling it. A panic in it becomes a
/// `TaskFailed` of kind `WorkerPanic`.
///
/// Dropping the returned future must stop the job (and what it started): that is how the
/// worker stops a job the coordinator gave up (when it comes back after being taken for
/// failed) and its running jobs when the node ends. A runner that hands the work to a task
/// of its own must stop that task when the future is dropped.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job` as `worker`.
    fn run(
        &self,
        worker: &WorkerId,
        job: RemoteJob,
    ) -> Pin<Box<dyn Future<Output = EventKind> + Send + 'static>>;
}

/// How a worker node joins a coordinator.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's address, `HOST:PORT`.
    pub coordinator: String,
    /// This worker's id (unique in the run).
    pub worker: WorkerId,
    /// What it offers; `slots` jobs run at once.
    pub capabilities: Capabilities,
    /// Labels such as `gpu=cuda`; each becomes a feature `key=value` that tasks can require.
    pub labels: BTreeMap<String, String>,
    /// The cluster's shared secret.
    pub cookie: Cookie,
    /// TLS (with the CA to trust), or plain TCP with an explicit opt-in.
    pub transport: Transport,
    /// Heartbeat timing; must match the coordinator's.
    pub timing: Timing,
    /// Frames above this size close the connection.
    pub max_frame: u64,
    /// The worker gives up when it cannot reach the coordinator for this long (default 60 s).
    pub give_up_after: Duration,
}

impl WorkerConfig {
    /// A configuration with default timing, frame cap and patience.
    pub fn new(
        coordinator: impl Into<String>,
        worker: impl Into<WorkerId>,
        capabilities: Capabilities,
        cookie: Cookie,
        transport: Transport,
    ) -> Self {
        Self {
            coordinator: coordinator.into(),
            worker: worker.into(),
            capabilities,
            labels: BTreeMap::new(),
            cookie,
            transport,
            timing: Timing::default(),
            max_frame: DEFAULT_MAX_FRAME,
            give_up_after: Duration::from_secs(60),
        }
    }
}

/// How a worker's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerExit {
    /// The coordinator said the run is over.
    RunOver,
    /// A remote publisher was closed by its owner.
    Closed,
}

/// Connects to the coordinator and serves jobs with `runner` until the coordinator says the
/// run is over.
///
/// # Errors
///
/// [`ClusterError::Start`] if the node cannot start; [`ClusterError::Unreachable`] if the
/// coordinator cannot be reached for `give_up_after`; [`ClusterError::Tls`] for a bad
/// server name; [`ClusterError::Rejected`] when the coordinator refuses the node (its id is a
/// remote publisher's in the run, the coordinator restarted since it welcomed the node, or
/// it cannot decode the node's frames).
pub async fn run_worker(
    config: WorkerConfig,
    runner: Arc<dyn JobRunner>,
) -> Result<WorkerExit, ClusterError> {
    run_node(config, runner, None).await
}

/// [`run_worker`] that also hosts plugins for the coordinator (docs/cluster.md, "Remote
/// plugin hosts"). With `capabilities.slots == 0` the node runs no tasks, only plugins.
///
/// # Errors
///
/// As [`run_worker`].
pub async fn run_node(
    config: WorkerConfig,
    runner: Arc<dyn JobRunner>,
    host: Option<Arc<dyn PluginHost>>,
) -> Result<WorkerExit, ClusterError> {
    serve(config, Some(runner), host, None).await
}

/// A node's loop: a worker (with a runner), a plugin host, or a remote publisher (with
/// `publisher`, and neither of the others).
pub(crate) async fn serve(
    config: WorkerConfig,
    runner: Option<Arc<dyn JobRunner>>,
    host: Option<Arc<dyn PluginHost>>,
    publisher: Option<PublisherLink>,
) -> Result<WorkerExit, ClusterError> {
    if matches!(config.transport, Transport::Insecure) {
        tracing::warn!(
            coordinator = %config.coordinator,
            "the cluster runs WITHOUT TLS (--insecure-cluster): anyone on the network path \
             can read and alter the traffic; only the cookie guards it"
        );
    }
    let incarnation = u64::from_le_bytes({
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| ClusterError::Start(format!("randomness: {e}")))?;
        b
    });
    let node = net::start_node(
        format!("dtf-worker-{}-{incarnation:x}", config.worker),
        &config.cookie,
        None,
        config.max_frame,
    )
    .await?;
    let mut links = net::watch(&node, Arc::new(Refusals::default()));
    let (frames_tx, mut frames) = mpsc::unbounded_channel::<HubFrame>();
    let (inbox, _) = Actor::spawn(
        None,
        Inbox::<HubFrame>::new(),
        (wire::worker_group(config.worker.as_str()), frames_tx),
    )
    .await
    .map_err(|e| ClusterError::Start(format!("the worker's inbox: {e}")))?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<(u64, EventKind)>();
    let (handled_tx, mut handled) = mpsc::unbounded_channel::<(String, Done)>();
    // One queue and one task per hosted plugin: its events are handled one at a time, in
    // order.
    let mut hosted = HashMap::new();
    let mut announced = Vec::new();
    if let Some(host) = &host {
        for p in host.plugins() {
            let (tx, mut rx) = mpsc::unbounded_channel::<HostedItem>();
            let (host, name, done) = (Arc::clone(host), p.name.clone(), handled_tx.clone());
            tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    let answer = match item {
                        HostedItem::Event(event) => {
                            let seq = event.meta.seq;
                            host.handle(&name, event).await;
                            Done::Event(seq)
                        }
                        HostedItem::Reconfigure(id, settings) => {
                            Done::Reconfigured(id, host.reconfigure(&name, settings).await.err())
                        }
                    };
                    let _ = done.send((name.clone(), answer));
                }
            });
            hosted.insert(
                p.name.clone(),
                Hosted {
                    queue: tx,
                    last: 0,
                    handled: 0,
                    last_request: 0,
                    answer: None,
                },
            );
            announced.push(p);
        }
    }
    let mut w = WorkerLoop {
        config,
        incarnation,
        node,
        next_seq: 0,
        outbox: VecDeque::new(),
        jobs_received: JobCursor::default(),
        fence: Arc::new(std::sync::Mutex::new(Fence {
            running: BTreeMap::new(),
            stopped: Vec::new(),
            last_contact: Instant::now(),
            stop_after: None,
        })),
        hub_node: None,
        oldest_sent: Instant::now(),
        last_heard: Instant::now(),
        runner,
        events: events_tx,
        hosted,
        announced,
        acked_upto: 0,
        hello_seq: 0,
        publisher: None,
        pending: PendingBatch::default(),
        hub: None,
    };
    let (mut commands, ready) = match publisher {
        Some(link) => {
            w.publisher = Some(Publishing {
                window: link.window,
                frame_target: link.frame_target,
                flushes: Vec::new(),
            });
            (Some(link.commands), Some(link.ready))
        }
        None => (None, None),
    };
    w.connect().await?;
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let fence = tokio::spawn(watch_fence(
        Arc::clone(&w.fence),
        (w.config.timing.heartbeat_interval / 4).max(Duration::from_millis(20)),
    ));
    let mut beat = tokio::time::interval(w.config.timing.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            Some(frame) = frames.recv() => {
                // A frame for another process with this id is no contact with the coordinator
                // for this one: a replaced process must not keep its jobs running on the
                // strength of its successor's acknowledgements.
                if frame.is_for(w.incarnation) {
                    w.last_heard = Instant::now();
                    w.fence().last_contact = w.last_heard;
                }
                if let Some(exit) = w.on_frame(frame) {
                    break exit;
                }
            }
            Some((job, kind)) = events.recv() => w.emit(job, kind),
            command = next_command(&mut commands) => match command {
                Some(command) => {
                    w.on_command(command);
                    // Drain what else is queued: consecutive batches share one frame.
                    while let Some(Ok(command)) = commands.as_mut().map(|c| c.try_recv()) {
                        w.on_command(command);
                    }
                    w.send_pending();
                }
                // Every handle on the publisher was dropped (after `close` flushed).
                None => break Ok(WorkerExit::Closed),
            },
            Some(first) = handled.recv() => {
                // One acknowledgement per plugin for everything handled by now.
                let mut upto: BTreeMap<String, u64> = BTreeMap::new();
                let mut next = Some(first);
                while let Some((plugin, done)) = next {
                    match done {
                        Done::Event(seq) => {
                            upto.insert(plugin, seq);
                        }
                        Done::Reconfigured(id, error) => {
                            if let Some(h) = w.hosted.get_mut(&plugin) {
                                h.answer = Some((id, error.clone()));
                            }
                            w.send(&WorkerFrame::Reconfigured { plugin, id, error });
                        }
                    }
                    next = handled.try_recv().ok();
                }
                for (plugin, upto) in upto {
                    if let Some(h) = w.hosted.get_mut(&plugin) {
                        h.handled = upto;
                    }
                    w.send(&WorkerFrame::Handled { plugin, upto });
                }
            }
            Some(link) = links.recv() => {
                if matches!(link, Link::Down(node) if Some(node) == w.hub_node) {
                    tracing::warn!("lost the connection to the coordinator; reconnecting");
                    if let Err(e) = w.connect().await {
                        break Err(e);
                    }
                }
            }
            _ = beat.tick() => {
                w.send(&WorkerFrame::Heartbeat {
                    jobs_received: w.jobs_received.0,
                });
                if !w.outbox.is_empty()
                    && w.oldest_sent.elapsed() > w.config.timing.heartbeat_interval * 2
                {
                    w.resend();
                }
                if w.last_heard.elapsed() > w.config.timing.heartbeat_timeout {
                    tracing::warn!("the coordinator is silent; reconnecting");
                    if let Err(e) = w.connect().await {
                        break Err(e);
                    }
                }
            }
        }
    };
    // The node ends: so do its jobs (an embedder's `run_worker` returning must not leave them
    // running; `dtf-worker` exits anyway).
    fence.abort();
    for (_, (_, run)) in std::mem::take(&mut w.fence().running) {
        run.abort();
    }
    inbox.stop(None);
    w.node.stop(None);
    if let Some(p) = &w.publisher {
        // A publisher waiting for room or a flush learns the node is gone.
        p.window.close();
    }
    result
}

/// The next command of a remote publisher; never resolves for other nodes.
async fn next_command(
    commands: &mut Option<mpsc::UnboundedReceiver<PublisherCommand>>,
) -> Option<PublisherCommand> {
    match commands {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// What a [`crate::RemotePublisher`] hands its node's loop.
pub(crate) enum PublisherCommand {
    /// `count` events, encoded as one JSON array, for one `Events` frame (consecutive batches
    /// are merged while they fit in the link's `frame_target`).
    Batch { count: u64, json: Vec<u8> },
    /// Resolve once everything handed over before it is acknowledged.
    Flush(oneshot::Sender<()>),
}

/// The channels between a [`crate::RemotePublisher`] and its node's loop.
pub(crate) struct PublisherLink {
    pub(crate) commands: mpsc::UnboundedReceiver<PublisherCommand>,
    /// One permit per event that may be unacknowledged; the loop gives them back on acks.
    pub(crate) window: Arc<Semaphore>,
    /// Told once the first connection is up.
    pub(crate) ready: oneshot::Sender<()>,
    /// How many bytes of events a merged frame may carry.
    pub(crate) frame_target: usize,
}

/// A remote publisher's state in its node's loop.
struct Publishing {
    window: Arc<Semaphore>,
    frame_target: usize,
    /// Flushes waiting: (sequence number to be acknowledged, reply).
    flushes: Vec<(u64, oneshot::Sender<()>)>,
}

/// Batches handed over and not framed yet: merged into one `Events` frame.
#[derive(Default)]
struct PendingBatch {
    count: u64,
    /// The batches as encoded by the publisher: JSON arrays, copied once, into the frame.
    parts: Vec<Vec<u8>>,
    /// Their elements' bytes.
    bytes: usize,
}

/// The jobs a worker has taken: numbered from 1, taken in order, each once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct JobCursor(u64);

impl JobCursor {
    /// Whether job `seq` is the next one (then it is taken). Lower: a resend of a job already
    /// taken. Higher: a gap, filled by the coordinator's resend after the next hello.
    fn take(&mut self, seq: u64) -> bool {
        let next = seq == self.0 + 1;
        if next {
            self.0 = seq;
        }
        next
    }

    /// Jobs up to `void_upto` will never come (`Welcome::jobs_void_upto`: abandoned when the
    /// coordinator took this node for failed, or as the run ended): the next job is numbered
    /// after them.
    fn skip_to(&mut self, void_upto: u64) {
        self.0 = self.0.max(void_upto);
    }
}

struct WorkerLoop {
    config: WorkerConfig,
    incarnation: u64,
    node: ActorRef<NodeServerMessage>,
    next_seq: u64,
    /// Events sent and not acknowledged: resent after every reconnection, when the
    /// coordinator asks, and when one stays unacknowledged for two heartbeats.
    /// Each event is kept as its encoded frame: a resend sends the same bytes again.
    /// Each entry: the frame's last sequence number, its bytes, and how many of a
    /// publisher's window permits it holds.
    outbox: VecDeque<(u64, Vec<u8>, u32)>,
    /// When the oldest unacknowledged event was last sent.
    oldest_sent: Instant,
    jobs_received: JobCursor,
    /// The jobs running, and what the fence watches (shared with the fence's task).
    fence: Arc<std::sync::Mutex<Fence>>,
    /// The node id of the session the coordinator is reached through.
    hub_node: Option<u64>,
    last_heard: Instant,
    runner: Option<Arc<dyn JobRunner>>,
    events: mpsc::UnboundedSender<(u64, EventKind)>,
    hosted: HashMap<String, Hosted>,
    announced: Vec<crate::wire::HostedPlugin>,
    /// The highest sequence number the coordinator acknowledged.
    acked_upto: u64,
    /// The highest sequence number sent before the last hello (on an older session).
    hello_seq: u64,
    /// Set on a remote publisher.
    publisher: Option<Publishing>,
    /// A publisher's batches not framed yet.
    pending: PendingBatch,
    /// The id of the coordinator run that welcomed this node (said in every hello).
    hub: Option<u64>,
}

/// The jobs a worker runs, and when it last heard from the coordinator: a worker cut off
/// from it for nearly as long as the coordinator waits before it takes the worker for failed
/// and runs its tasks again elsewhere stops its jobs first, so that no test runs twice at
/// once (before, they ran on until the worker was back, beside their next attempts).
struct Fence {
    /// The jobs running, by number: their task and a handle to stop them.
    running: BTreeMap<u64, (TaskId, tokio::task::AbortHandle)>,
    /// Jobs the fence stopped, not reported yet: at the next `Welcome`, those the
    /// coordinator did not give up are reported failed (it waits for their results); the
    /// others are not (it runs their tasks again, and records the attempts as lost).
    stopped: Vec<(u64, TaskId)>,
    /// When the last frame of the coordinator's arrived.
    last_contact: Instant,
    /// How long a silence stops the jobs: a little less than the coordinator's time to take
    /// this worker for failed (`Welcome::fail_after_ms`); `None` before a `Welcome` says it.
    stop_after: Option<Duration>,
}

impl Fence {
    /// The silence after which jobs stop, for a coordinator that gives a worker up after
    /// `fail_after` of silence and a worker that beats every `beat`: two beats earlier (the
    /// coordinator last heard this worker up to a beat after it last heard the coordinator),
    /// and at least half of it.
    fn stop_after(fail_after: Duration, beat: Duration) -> Duration {
        fail_after.saturating_sub(beat * 2).max(fail_after / 2)
    }

    /// Stops the jobs still running if the coordinator has been silent for too long; returns
    /// how long, and the jobs stopped. A job that has just ended is left to report its result.
    fn cut_off(&mut self, now: Instant) -> Option<(Duration, Vec<(u64, TaskId)>)> {
        let silent = now.saturating_duration_since(self.last_contact);
        if silent < self.stop_after? {
            return None;
        }
        let ending: Vec<u64> = self
            .running
            .iter()
            .filter(|(_, (_, run))| !run.is_finished())
            .map(|(seq, _)| *seq)
            .collect();
        if ending.is_empty() {
            return None;
        }
        let mut stopped = Vec::new();
        for seq in ending {
            if let Some((task, run)) = self.running.remove(&seq) {
                run.abort();
                stopped.push((seq, task));
            }
        }
        self.stopped.extend(stopped.iter().cloned());
        Some((silent, stopped))
    }
}

/// Stops the jobs of a worker cut off from the coordinator ([`Fence`]). Reporting them waits
/// for the next `Welcome` ([`WorkerLoop::on_frame`]).
async fn watch_fence(fence: Arc<std::sync::Mutex<Fence>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cut = fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cut_off(Instant::now());
        let Some((silent, stopped)) = cut else {
            continue;
        };
        for (seq, task) in stopped {
            tracing::warn!(
                %task,
                job = seq,
                silent_secs = silent.as_secs_f64(),
                "cut off from the coordinator, which is about to run the task again elsewhere; stopped the job"
            );
        }
    }
}

/// What a hosted plugin's task handles, in order.
enum HostedItem {
    Event(Event),
    Reconfigure(u64, serde_json::Value),
}

/// What a hosted plugin's task finished: an event (its bus sequence number) or a
/// reconfiguration (its id and the rejection, if any).
enum Done {
    Event(u64),
    Reconfigured(u64, Option<String>),
}

/// A hosted plugin's queue, and the highest bus sequence number queued for it.
struct Hosted {
    queue: mpsc::UnboundedSender<HostedItem>,
    last: u64,
    /// The highest bus sequence number handled.
    handled: u64,
    /// The id of the last reconfiguration queued.
    last_request: u64,
    /// The answer to the last reconfiguration handled, sent again for a resend of it.
    answer: Option<(u64, Option<String>)>,
}

impl WorkerLoop {
    /// The fence: the jobs running and the coordinator's last contact.
    fn fence(&self) -> std::sync::MutexGuard<'_, Fence> {
        self.fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `body` in this worker's envelope, encoded.
    fn encode<B: serde::Serialize>(&self, body: &B) -> Option<Vec<u8>> {
        wire::encode(&FromWorkerRef {
            worker: &self.config.worker,
            incarnation: self.incarnation,
            body,
        })
    }

    fn send(&self, body: &WorkerFrame) -> bool {
        self.encode(body)
            .is_some_and(|bytes| wire::send_bytes(HUB_GROUP, bytes))
    }

    /// (Re)connects on a new session until the coordinator's inbox is reachable through it,
    /// then says hello. Any older session is closed first.
    async fn connect(&mut self) -> Result<(), ClusterError> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        self.hub_node = None;
        loop {
            match self.try_connect().await {
                Ok(node) => {
                    self.hub_node = Some(node);
                    break;
                }
                Err(e) if started.elapsed() >= self.config.give_up_after => {
                    return Err(ClusterError::Unreachable(format!(
                        "{} for {:.0} s: {e}",
                        self.config.coordinator,
                        started.elapsed().as_secs_f64()
                    )));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connecting to the coordinator");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        self.last_heard = Instant::now();
        self.hello_seq = self.next_seq;
        self.send(&WorkerFrame::Hello {
            capabilities: self.config.capabilities.clone(),
            labels: self.config.labels.clone(),
            jobs_received: self.jobs_received.0,
            plugins: self.announced.clone(),
            publisher: self.publisher.is_some(),
            hub: self.hub,
            max_frame: Some(self.config.max_frame),
        });
        tracing::info!(
            coordinator = %self.config.coordinator,
            session = self.hub_node,
            unacked = self.outbox.len(),
            "connected to the coordinator"
        );
        Ok(())
    }

    async fn try_connect(&self) -> Result<u64, ClusterError> {
        self.drop_sessions().await;
        // Node ids grow with every session: the coordinator must appear on a newer one.
        let stale = wire::newest_remote(HUB_GROUP).map(|(node, _)| node);
        let addr = self.config.coordinator.clone();
        let connected = match &self.config.transport {
            Transport::Insecure => ractor_cluster::client_connect(&self.node, addr.as_str()).await,
            Transport::Tls(files) => {
                let connector = files.connector().cloned().ok_or_else(|| {
                    ClusterError::Tls("a worker needs the CA certificate to trust".to_owned())
                })?;
                ractor_cluster::client_connect_enc(
                    &self.node,
                    addr.as_str(),
                    connector,
                    server_name(&addr)?,
                )
                .await
            }
        };
        connected.map_err(|e| ClusterError::Unreachable(format!("{addr}: {e}")))?;
        // The coordinator's inbox becomes visible once the handshake and the process-group
        // exchange are done.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some((node, _)) =
                wire::newest_remote(HUB_GROUP).filter(|(n, _)| stale.is_none_or(|s| *n > s))
            {
                return Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.drop_sessions().await;
        Err(ClusterError::Unreachable(format!(
            "{addr}: connected, but the handshake did not finish (a wrong cookie or certificate?)"
        )))
    }

    async fn drop_sessions(&self) {
        if let Ok(sessions) = ractor::call_t!(self.node, NodeServerMessage::GetSessions, 1000) {
            for s in sessions.into_values() {
                s.actor.stop(Some("dtf: reconnecting".to_owned()));
            }
        }
    }

    /// Handles a frame of the coordinator's; `Some` ends the node.
    fn on_frame(&mut self, frame: HubFrame) -> Option<Result<WorkerExit, ClusterError>> {
        if !frame.is_for(self.incarnation) {
            // For another process with this id (see `HubFrame::is_for`).
            tracing::debug!("a frame for another process with this node's id; ignored");
            return None;
        }
        match frame {
            HubFrame::Welcome {
                events_applied: upto,
                hub,
                jobs_void_upto,
                fail_after_ms,
                ..
            } => {
                if hub != 0 {
                    self.hub = Some(hub);
                }
                if fail_after_ms > 0 {
                    let beat = self.config.timing.heartbeat_interval;
                    self.fence().stop_after = Some(Fence::stop_after(
                        Duration::from_millis(fail_after_ms),
                        beat,
                    ));
                }
                self.jobs_received.skip_to(jobs_void_upto);
                self.stop_void_jobs(jobs_void_upto);
                self.report_stopped(jobs_void_upto);
                // Only what was sent before this session's hello may be lost: what was sent
                // after it follows the hello on the same connection, in order.
                self.acked(upto);
                self.resend_upto(self.hello_seq);
            }
            HubFrame::Resend { after: upto, .. } => {
                self.acked(upto);
                self.resend_upto(u64::MAX);
            }
            HubFrame::Ack { upto, .. } => self.acked(upto),
            HubFrame::Job { seq, job, .. } => {
                if self.jobs_received.take(seq) {
                    self.start(seq, job);
                }
            }
            HubFrame::Deliver { plugin, event } => match self.hosted.get_mut(&plugin) {
                // A resend of what is queued or handled already: the acknowledgement of what
                // was handled may have been lost, so it is sent again.
                Some(h) if event.meta.seq <= h.last => {
                    if h.handled >= event.meta.seq {
                        let upto = h.handled;
                        self.send(&WorkerFrame::Handled { plugin, upto });
                    }
                }
                Some(h) => {
                    h.last = event.meta.seq;
                    let _ = h.queue.send(HostedItem::Event(event));
                }
                None => tracing::warn!(plugin, "an event for a plugin this node does not host"),
            },
            HubFrame::Reconfigure {
                plugin,
                id,
                settings,
            } => match self.hosted.get_mut(&plugin) {
                Some(h) if id <= h.last_request => {
                    // A resend: answer again if it was handled (the answer may be lost).
                    if let Some((answered, error)) = h.answer.clone().filter(|(a, _)| *a == id) {
                        self.send(&WorkerFrame::Reconfigured {
                            plugin,
                            id: answered,
                            error,
                        });
                    }
                }
                Some(h) => {
                    h.last_request = id;
                    let _ = h.queue.send(HostedItem::Reconfigure(id, settings));
                }
                None => {
                    let error = Some(format!("this node does not host `{plugin}`"));
                    self.send(&WorkerFrame::Reconfigured { plugin, id, error });
                }
            },
            HubFrame::Goodbye => return Some(Ok(WorkerExit::RunOver)),
            HubFrame::Refused {
                incarnation,
                reason,
            } if incarnation == self.incarnation => {
                tracing::error!(%reason, "the coordinator refused this node");
                return Some(Err(ClusterError::Rejected(reason)));
            }
            // For the other node with the same id.
            HubFrame::Refused { .. } => {}
        }
        None
    }

    /// Reports the jobs the fence stopped that the coordinator did not give up (up to
    /// `void_upto`): it waits for their results. Failed and retryable, as the coordinator
    /// runs a lost worker's tasks again whatever their retries. The others are not reported:
    /// their tasks run again elsewhere.
    fn report_stopped(&mut self, void_upto: u64) {
        let stopped = std::mem::take(&mut self.fence().stopped);
        for (seq, task) in stopped.into_iter().filter(|(seq, _)| *seq > void_upto) {
            let error = TaskError::builder()
                .kind("WorkerCutOff")
                .message(
                    "the worker heard nothing from the coordinator for too long and stopped the \
                     job, so that it could not run twice",
                )
                .build();
            self.emit(seq, EventKind::task_failed(task, error, true));
        }
    }

    /// Stops the jobs up to `void_upto` still running: the coordinator gave them up while
    /// this node was away (it took the node for failed, or the run ended) and put their tasks
    /// back in the queue. Left running, each would run alongside its own next attempt
    /// elsewhere (two copies of one test on shared resources), and this node would run more
    /// jobs than its slots until they ended. Dropping a job's future kills its process group.
    fn stop_void_jobs(&mut self, void_upto: u64) {
        let mut fence = self.fence();
        let void: Vec<u64> = fence.running.range(..=void_upto).map(|(s, _)| *s).collect();
        for seq in void {
            if let Some((task, run)) = fence.running.remove(&seq) {
                run.abort();
                tracing::warn!(
                    %task,
                    job = seq,
                    "the coordinator gave this job up while this node was away and runs the task again; stopped it"
                );
            }
        }
    }

    fn acked(&mut self, upto: u64) {
        let mut moved = false;
        let mut freed = 0usize;
        while self.outbox.front().is_some_and(|(seq, _, _)| *seq <= upto) {
            if let Some((_, _, permits)) = self.outbox.pop_front() {
                freed += permits as usize;
            }
            moved = true;
        }
        if moved {
            // The new oldest was sent at most now: count its wait from here.
            self.oldest_sent = Instant::now();
        }
        self.acked_upto = self.acked_upto.max(upto);
        if let Some(p) = &mut self.publisher {
            if freed > 0 {
                p.window.add_permits(freed);
            }
            let acked = self.acked_upto;
            let (done, waiting) = std::mem::take(&mut p.flushes)
                .into_iter()
                .partition::<Vec<_>, _>(|(target, _)| *target <= acked);
            p.flushes = waiting;
            for (_, reply) in done {
                let _ = reply.send(());
            }
        }
    }

    /// Sends every unacknowledged event again, in order.
    fn resend(&mut self) {
        self.resend_upto(u64::MAX);
    }

    /// Sends the unacknowledged frames ending at or below `upto` again, in order.
    fn resend_upto(&mut self, upto: u64) {
        self.oldest_sent = Instant::now();
        for (_, bytes, _) in self.outbox.iter().take_while(|(last, _, _)| *last <= upto) {
            wire::send_bytes(HUB_GROUP, bytes.clone());
        }
    }

    /// Keeps `bytes` (the frame ending at `last`) until acknowledged, and sends it.
    fn push(&mut self, last: u64, bytes: Vec<u8>, permits: u32) {
        if self.outbox.is_empty() {
            self.oldest_sent = Instant::now();
        }
        self.outbox.push_back((last, bytes.clone(), permits));
        wire::send_bytes(HUB_GROUP, bytes);
    }

    fn emit(&mut self, job: u64, mut kind: EventKind) {
        if !matches!(kind, EventKind::TaskStarted(_)) {
            self.fence().running.remove(&job); // its result
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        // A frame over the hub's cap would be refused, and resent after every reconnect, with
        // every later event of this worker behind it: a result's captured output is cut to
        // fit instead (the captured output may be as large as the cap).
        let limit = usize::try_from(
            self.config
                .max_frame
                .saturating_sub(crate::publisher::ENVELOPE_BYTES),
        )
        .unwrap_or(usize::MAX);
        // Every number taken must be sent: the hub applies them in order, and waits for a
        // missing one. So an event that cannot be encoded or made to fit is replaced by a short
        // failure of its task rather than left out.
        let mut bytes = None;
        for _ in 0..8 {
            let Some(b) = self.encode(&WorkerFrame::Event {
                seq,
                job,
                kind: kind.clone(),
            }) else {
                break;
            };
            if b.len() <= limit {
                bytes = Some(b);
                break;
            }
            if !cut_output(&mut kind, b.len() - limit) {
                break;
            }
        }
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => {
                tracing::error!(
                    job,
                    "a task's event could not be sent whole; its task is reported failed"
                );
                let task = match &kind {
                    EventKind::TaskCompleted(c) => c.task.clone(),
                    EventKind::TaskFailed(f) => f.task.clone(),
                    EventKind::TaskStarted(s) => s.task.clone(),
                    _ => TaskId::from(""),
                };
                let short = EventKind::task_failed(
                    task,
                    TaskError::builder()
                        .kind("ResultTooLarge")
                        .message("the task's result did not fit in a cluster frame")
                        .build(),
                    false,
                );
                match self.encode(&WorkerFrame::Event {
                    seq,
                    job,
                    kind: short,
                }) {
                    Some(bytes) => bytes,
                    None => return,
                }
            }
        };
        self.push(seq, bytes, 0);
    }

    fn on_command(&mut self, command: PublisherCommand) {
        match command {
            PublisherCommand::Batch { count, json } => {
                let items = json.len().saturating_sub(2);
                let target = self.publisher.as_ref().map_or(0, |p| p.frame_target);
                if self.pending.count > 0 && self.pending.bytes + items + 1 > target {
                    self.send_pending();
                }
                self.pending.bytes += items + 1;
                self.pending.parts.push(json);
                self.pending.count += count;
            }
            PublisherCommand::Flush(reply) => {
                self.send_pending();
                let target = self.next_seq;
                match &mut self.publisher {
                    Some(p) if target > self.acked_upto => p.flushes.push((target, reply)),
                    _ => {
                        let _ = reply.send(());
                    }
                }
            }
        }
    }

    /// Frames and sends the publisher's merged batches, if any.
    fn send_pending(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        if batch.count == 0 {
            return;
        }
        let first = self.next_seq + 1;
        self.next_seq += batch.count;
        let permits = u32::try_from(batch.count).unwrap_or(u32::MAX);
        let frame = events_frame(&self.config.worker, self.incarnation, first, &batch.parts);
        match frame {
            Some(bytes) => self.push(self.next_seq, bytes, permits),
            None => {
                // Cannot happen for arrays the publisher encoded itself; said, not hidden.
                tracing::error!(
                    events = batch.count,
                    "a publisher's batch could not be framed; dropped"
                );
                self.next_seq -= batch.count;
                if let Some(p) = &self.publisher {
                    p.window.add_permits(permits as usize);
                }
            }
        }
    }

    fn start(&mut self, seq: u64, job: RemoteJob) {
        let worker = self.config.worker.clone();
        let events = self.events.clone();
        let Some(runner) = self.runner.clone() else {
            tracing::warn!(task = %job.task, "a job for a node that runs none; ignored");
            return;
        };
        let _ = events.send((
            seq,
            EventKind::task_started(job.task.clone(), worker.clone(), job.attempt),
        ));
        let task = job.task.clone();
        let runs_on = worker.clone();
        let run = tokio::spawn(async move { runner.run(&runs_on, job).await });
        self.fence()
            .running
            .insert(seq, (task.clone(), run.abort_handle()));
        let fence = Arc::clone(&self.fence);
        tokio::spawn(async move {
            let result = run.await;
            // Whoever takes the job out of the running ones reports it: this task with its
            // result, or the fence with a failure. Taken already: stopped because the
            // coordinator gave the job up (`stop_void_jobs`: it ran the task elsewhere, and a
            // result would not count), or by the fence (which reports it at the next `Welcome` if the coordinator still waits for it).
            let ours = fence
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .running
                .remove(&seq)
                .is_some();
            if !ours {
                return;
            }
            let kind = match result {
                Ok(kind) => kind,
                Err(e) if e.is_cancelled() => return,
                Err(e) => EventKind::task_failed(
                    task,
                    TaskError::builder()
                        .kind("WorkerPanic")
                        .message(format!("the job runner failed: {e}"))
                        .build(),
                    true,
                ),
            };
            let _ = events.send((seq, kind));
        });
    }
}

/// The `Events` frame of the already encoded events `parts` (JSON arrays), without parsing
/// them again: the envelope is encoded with an empty array, which ends the frame (`"kinds"` is
/// the last field of the `events` variant, the body the envelope's last field), and the
/// arrays' elements are spliced into it, each copied once.
fn events_frame(
    worker: &WorkerId,
    incarnation: u64,
    first: u64,
    parts: &[Vec<u8>],
) -> Option<Vec<u8>> {
    const END: &[u8] = b"[]}}}";
    let mut bytes = wire::encode(&FromWorkerRef {
        worker,
        incarnation,
        body: &EncodedEvents::Events { first, kinds: [] },
    })?;
    if !bytes.ends_with(END) {
        return None;
    }
    bytes.truncate(bytes.len() - END.len() + 1);
    bytes.reserve(parts.iter().map(Vec::len).sum::<usize>() + END.len());
    let mut empty = true;
    for part in parts {
        let items = part.strip_prefix(b"[")?.strip_suffix(b"]")?;
        if items.is_empty() {
            continue;
        }
        if !empty {
            bytes.push(b',');
        }
        bytes.extend_from_slice(items);
        empty = false;
    }
    bytes.extend_from_slice(&END[1..]);
    Some(bytes)
}

/// What a result's captured output starts with when it was cut to fit a frame (its end is
/// kept: that is where a failure shows).
const CUT_NOTE: &str = "[dtf: output cut to fit the cluster's frame size]\n";

/// Shortens the longest text of a task's result (its captured output, or its error's details
/// or message) by at least `excess` encoded bytes, keeping its end, at a character boundary,
/// with a note in front; whether there was anything to cut. A character takes at least one byte
/// in JSON, so cutting `excess` bytes of text (and a little more for the note) takes at least
/// that much off the encoding.
fn cut_output(kind: &mut EventKind, excess: usize) -> bool {
    let text = match kind {
        EventKind::TaskCompleted(c) => &mut c.output,
        EventKind::TaskFailed(f) => {
            let e = &mut f.error;
            if e.details.len() >= e.message.len() {
                &mut e.details
            } else {
                &mut e.message
            }
        }
        _ => return false,
    };
    let cut = excess + CUT_NOTE.len() + 16;
    if text.len() <= cut {
        if text.is_empty() || text.as_str() == CUT_NOTE {
            return false;
        }
        *text = CUT_NOTE.to_owned();
        return true;
    }
    let mut from = cut;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    *text = format!("{CUT_NOTE}{}", &text[from..]);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task whose output fills the frame cap is reported with its output cut, not sent as a
    /// frame the hub refuses and that blocks every later event of the worker (found by a
    /// review: `--max-frame 65536` and 64 KiB of output).
    #[test]
    fn a_result_too_large_for_a_frame_has_its_output_cut() {
        let mut kind = EventKind::TaskCompleted(Box::new(
            dtf_plugin_core::event::TaskCompleted::builder()
                .task("t")
                .worker("w")
                .outcome(dtf_plugin_core::event::TaskOutcome::Passed)
                .duration(Duration::from_secs(1))
                .output("é\"".repeat(30_000))
                .build(),
        ));
        let size = |k: &EventKind| serde_json::to_vec(k).map(|b| b.len()).unwrap_or(0);
        let before = size(&kind);
        assert!(before > 64 * 1024);
        assert!(cut_output(&mut kind, before - 60 * 1024));
        assert!(size(&kind) <= 60 * 1024, "{}", size(&kind));
        let EventKind::TaskCompleted(c) = &kind else {
            panic!("not a completion")
        };
        assert!(c.output.starts_with(CUT_NOTE) && c.output.ends_with("é\""));
        // A failure's longest text is cut, whichever it is (short details, a huge message).
        let mut failed = EventKind::task_failed(
            "t",
            TaskError::builder()
                .kind("ExitCode(1)")
                .message("m".repeat(100_000))
                .details("x")
                .build(),
            true,
        );
        let before = size(&failed);
        assert!(cut_output(&mut failed, before - 60 * 1024));
        assert!(size(&failed) <= 60 * 1024, "{}", size(&failed));
        // Nothing to cut: said so.
        let mut empty = EventKind::task_failed(
            "t",
            TaskError::builder().kind("k").message("").build(),
            true,
        );
        assert!(!cut_output(&mut empty, 10));
        let mut started = EventKind::task_started("t", "w", 1);
        assert!(!cut_output(&mut started, 10));
    }
    use crate::wire::FromWorker;

    #[test]
    fn a_spliced_events_frame_decodes_as_the_events_sent() {
        let kinds = [
            EventKind::custom("a", serde_json::json!({ "i": 1 })),
            EventKind::worker_failed("w", "gone"),
        ];
        let encode = |k: &[EventKind]| serde_json::to_vec(k).unwrap_or_default();
        // One batch, a batch of one, none, and two batches merged (with an empty one).
        let cases: [(Vec<Vec<u8>>, &[EventKind]); 4] = [
            (vec![encode(&kinds)], &kinds[..]),
            (vec![encode(&kinds[..1])], &kinds[..1]),
            (vec![encode(&[])], &[]),
            (
                vec![encode(&kinds[..1]), encode(&[]), encode(&kinds[1..])],
                &kinds[..],
            ),
        ];
        for (parts, sent) in cases {
            let bytes = events_frame(&WorkerId::from("p-1"), 7, 42, &parts);
            let decoded: FromWorker =
                serde_json::from_slice(&bytes.unwrap_or_default()).expect("a frame");
            assert_eq!(decoded.worker, WorkerId::from("p-1"));
            assert_eq!(decoded.incarnation, 7);
            match decoded.body {
                WorkerFrame::Events { first, kinds } => {
                    assert_eq!((first, kinds.as_slice()), (42, sent));
                }
                other => panic!("decoded as {other:?}"),
            }
        }
    }

    /// The fence stops the running jobs once the coordinator has been silent for its time
    /// (two beats before the coordinator gives the worker up), not before, and not at all
    /// before a `Welcome` said the coordinator's time.
    #[tokio::test]
    async fn the_fence_stops_the_jobs_of_a_worker_cut_off_for_too_long() {
        let s = Duration::from_secs;
        assert_eq!(Fence::stop_after(s(20), s(1)), s(18));
        assert_eq!(Fence::stop_after(s(2), s(1)), s(1));
        let job = tokio::spawn(std::future::pending::<()>());
        // A job that has just ended reports its own result: the fence leaves it.
        let ended = tokio::spawn(async {});
        while !ended.is_finished() {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        let mut fence = Fence {
            running: BTreeMap::from([
                (3, (TaskId::from("t"), job.abort_handle())),
                (4, (TaskId::from("e"), ended.abort_handle())),
            ]),
            stopped: Vec::new(),
            last_contact: t0,
            stop_after: None,
        };
        assert!(fence.cut_off(t0 + s(600)).is_none(), "no Welcome said when");
        fence.stop_after = Some(s(18));
        assert!(fence.cut_off(t0 + s(17)).is_none());
        let (silent, stopped) = fence.cut_off(t0 + s(18)).unwrap();
        assert_eq!((silent, stopped), (s(18), vec![(3, TaskId::from("t"))]));
        assert!(job.await.unwrap_err().is_cancelled());
        assert_eq!(fence.running.keys().collect::<Vec<_>>(), [&4]);
        // Kept for the next `Welcome`, which reports it unless the coordinator gave it up.
        assert_eq!(fence.stopped, [(3, TaskId::from("t"))]);
        assert!(fence.cut_off(t0 + s(60)).is_none(), "nothing left to stop");
    }

    /// A worker the coordinator took for failed comes back having missed a job (sent as the
    /// connection dropped, then abandoned). Before `jobs_void_upto` it waited for that job,
    /// which was never resent, and took none of the jobs after it: its tasks never ran.
    #[test]
    fn a_worker_back_from_failed_takes_the_jobs_after_the_abandoned_ones() {
        let mut jobs = JobCursor::default();
        assert!(jobs.take(1));
        assert!(!jobs.take(1), "a resend is taken once");
        // Job 2 was lost and abandoned; job 3 comes after the worker is back.
        assert!(!jobs.take(3), "a gap");
        jobs.skip_to(2);
        assert!(jobs.take(3));
        // An older Welcome's value does not move it back.
        jobs.skip_to(1);
        assert_eq!(jobs, JobCursor(3));
    }

    /// A metric that is not a finite number reaches the hub. `serde_json` wrote it as `null`,
    /// which did not decode: the hub took the frame for another version's and refused the
    /// node that sent it.
    #[test]
    fn a_metric_that_is_not_a_finite_number_decodes_at_the_hub() {
        use dtf_plugin_core::event::{TaskCompleted, TaskOutcome};
        let measured: EventKind = TaskCompleted::builder()
            .task("t-1")
            .worker("p-1")
            .outcome(TaskOutcome::Passed)
            .duration(std::time::Duration::from_millis(5))
            .metrics(std::collections::BTreeMap::from([
                ("ratio".to_owned(), f64::NAN),
                ("peak".to_owned(), f64::INFINITY),
                ("ms".to_owned(), 5.0),
            ]))
            .build()
            .into();
        let part = serde_json::to_vec(&[measured]).unwrap_or_default();
        let bytes = events_frame(&WorkerId::from("p-1"), 7, 1, &[part]).unwrap_or_default();
        let decoded = serde_json::from_slice::<FromWorker>(&bytes).map(|f| f.body);
        let Ok(WorkerFrame::Events { kinds, .. }) = decoded else {
            panic!("the hub could not decode it: {decoded:?}");
        };
        let [EventKind::TaskCompleted(done)] = kinds.as_slice() else {
            panic!("decoded as {kinds:?}");
        };
        assert!(done.metrics["ratio"].is_nan());
        assert_eq!(done.metrics["peak"], f64::INFINITY);
        assert_eq!(done.metrics["ms"], 5.0);
    }
}
