//! A worker node's side: connect to the coordinator, register, run jobs, send their events
//! until the coordinator acknowledges them, reconnect after a cut.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dtf_plugin_core::event::{Capabilities, Event, EventKind, TaskError, WorkerId};
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServerMessage;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::ClusterError;
use crate::config::{Cookie, DEFAULT_MAX_FRAME, Timing, Transport, server_name};
use crate::host::PluginHost;
use crate::net::{self, Link, Refusals};
use crate::wire::{self, FromWorkerRef, HUB_GROUP, HubFrame, Inbox, RemoteJob, WorkerFrame};

/// Runs one job on a worker node and returns its result: `TaskCompleted` or `TaskFailed`.
/// The worker publishes `TaskStarted` itself before calling it. A panic in it becomes a
/// `TaskFailed` of kind `WorkerPanic`.
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
}

/// Connects to the coordinator and serves jobs with `runner` until the coordinator says the
/// run is over.
///
/// # Errors
///
/// [`ClusterError::Start`] if the node cannot start; [`ClusterError::Unreachable`] if the
/// coordinator cannot be reached for `give_up_after`; [`ClusterError::Tls`] for a bad
/// server name.
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
    let (handled_tx, mut handled) = mpsc::unbounded_channel::<(String, u64)>();
    // One queue and one task per hosted plugin: its events are handled one at a time, in
    // order.
    let mut hosted = HashMap::new();
    let mut announced = Vec::new();
    if let Some(host) = &host {
        for p in host.plugins() {
            let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
            let (host, name, done) = (Arc::clone(host), p.name.clone(), handled_tx.clone());
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let seq = event.meta.seq;
                    host.handle(&name, event).await;
                    let _ = done.send((name.clone(), seq));
                }
            });
            hosted.insert(
                p.name.clone(),
                Hosted {
                    queue: tx,
                    last: 0,
                    handled: 0,
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
        jobs_received: 0,
        hub_node: None,
        oldest_sent: Instant::now(),
        last_heard: Instant::now(),
        runner,
        events: events_tx,
        hosted,
        announced,
    };
    w.connect().await?;
    let mut beat = tokio::time::interval(w.config.timing.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            Some(frame) = frames.recv() => {
                w.last_heard = Instant::now();
                if let Some(exit) = w.on_frame(frame) {
                    break Ok(exit);
                }
            }
            Some((job, kind)) = events.recv() => w.emit(job, kind),
            Some((plugin, upto)) = handled.recv() => {
                if let Some(h) = w.hosted.get_mut(&plugin) {
                    h.handled = upto;
                }
                w.send(&WorkerFrame::Handled { plugin, upto });
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
                w.send(&WorkerFrame::Heartbeat { jobs_received: w.jobs_received });
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
    inbox.stop(None);
    w.node.stop(None);
    result
}

struct WorkerLoop {
    config: WorkerConfig,
    incarnation: u64,
    node: ActorRef<NodeServerMessage>,
    next_seq: u64,
    /// Events sent and not acknowledged: resent after every reconnection, when the
    /// coordinator asks, and when one stays unacknowledged for two heartbeats.
    /// Each event is kept as its encoded frame: a resend sends the same bytes again.
    outbox: VecDeque<(u64, Vec<u8>)>,
    /// When the oldest unacknowledged event was last sent.
    oldest_sent: Instant,
    jobs_received: u64,
    /// The node id of the session the coordinator is reached through.
    hub_node: Option<u64>,
    last_heard: Instant,
    runner: Arc<dyn JobRunner>,
    events: mpsc::UnboundedSender<(u64, EventKind)>,
    hosted: HashMap<String, Hosted>,
    announced: Vec<crate::wire::HostedPlugin>,
}

/// A hosted plugin's queue, and the highest bus sequence number queued for it.
struct Hosted {
    queue: mpsc::UnboundedSender<Event>,
    last: u64,
    /// The highest bus sequence number handled.
    handled: u64,
}

impl WorkerLoop {
    /// `body` in this worker's envelope, encoded.
    fn encode(&self, body: &WorkerFrame) -> Option<Vec<u8>> {
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
        self.send(&WorkerFrame::Hello {
            capabilities: self.config.capabilities.clone(),
            labels: self.config.labels.clone(),
            jobs_received: self.jobs_received,
            plugins: self.announced.clone(),
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

    fn on_frame(&mut self, frame: HubFrame) -> Option<WorkerExit> {
        match frame {
            HubFrame::Welcome {
                events_applied: upto,
            }
            | HubFrame::Resend { after: upto } => {
                self.acked(upto);
                self.resend();
            }
            HubFrame::Ack { upto } => self.acked(upto),
            HubFrame::Job { seq, job } => {
                if seq == self.jobs_received + 1 {
                    self.jobs_received = seq;
                    self.start(seq, job);
                }
                // Lower: a resend of a job already running. Higher: a gap, filled by the
                // coordinator's resend after the next hello.
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
                    let _ = h.queue.send(event);
                }
                None => tracing::warn!(plugin, "an event for a plugin this node does not host"),
            },
            HubFrame::Goodbye => return Some(WorkerExit::RunOver),
        }
        None
    }

    fn acked(&mut self, upto: u64) {
        let mut moved = false;
        while self.outbox.front().is_some_and(|(seq, _)| *seq <= upto) {
            self.outbox.pop_front();
            moved = true;
        }
        if moved {
            // The new oldest was sent at most now: count its wait from here.
            self.oldest_sent = Instant::now();
        }
    }

    /// Sends every unacknowledged event again, in order.
    fn resend(&mut self) {
        self.oldest_sent = Instant::now();
        for (_, bytes) in &self.outbox {
            wire::send_bytes(HUB_GROUP, bytes.clone());
        }
    }

    fn emit(&mut self, job: u64, kind: EventKind) {
        if self.outbox.is_empty() {
            self.oldest_sent = Instant::now();
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let Some(bytes) = self.encode(&WorkerFrame::Event { seq, job, kind }) else {
            return;
        };
        self.outbox.push_back((seq, bytes.clone()));
        wire::send_bytes(HUB_GROUP, bytes);
    }

    fn start(&self, seq: u64, job: RemoteJob) {
        let worker = self.config.worker.clone();
        let events = self.events.clone();
        let runner = Arc::clone(&self.runner);
        let _ = events.send((
            seq,
            EventKind::task_started(job.task.clone(), worker.clone(), job.attempt),
        ));
        let task = job.task.clone();
        tokio::spawn(async move {
            let run = tokio::spawn(runner.run(&worker, job));
            let kind = match run.await {
                Ok(kind) => kind,
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
