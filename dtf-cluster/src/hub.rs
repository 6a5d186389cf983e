//! The coordinator's side: [`Hub`] accepts worker nodes, registers them on the bus, sends
//! them jobs and applies their events exactly once per attempt.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dtf_plugin_core::Bus;
use dtf_plugin_core::event::{Capabilities, Event, EventKind, EventMeta, TaskId, WorkerId};
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServerMessage;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ClusterError;
use crate::config::{Cookie, DEFAULT_MAX_FRAME, Timing, Transport};
use crate::net::{self, Refusals};
use crate::wire::{
    self, FromWorker, HUB_GROUP, HostedPlugin, HubFrame, Inbox, RemoteJob, WorkerFrame,
};

/// How the coordinator listens for workers.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where to listen (default `127.0.0.1:7700`).
    pub listen: SocketAddr,
    /// The cluster's shared secret.
    pub cookie: Cookie,
    /// TLS, or plain TCP with an explicit opt-in.
    pub transport: Transport,
    /// The failure detector's timing.
    pub timing: Timing,
    /// Frames above this size close the connection (default [`DEFAULT_MAX_FRAME`]).
    pub max_frame: u64,
}

impl HubConfig {
    /// A configuration with the defaults: heartbeat timing from [`Timing::default`] and
    /// [`DEFAULT_MAX_FRAME`].
    pub fn new(listen: SocketAddr, cookie: Cookie, transport: Transport) -> Self {
        Self {
            listen,
            cookie,
            transport,
            timing: Timing::default(),
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

/// What the hub tells the embedding coordinator besides the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubNote {
    /// A new worker registered (`WorkerRegistered` is on the bus): jobs may be posted to it.
    Registered(WorkerId),
    /// A node registered with plugins it hosts for the coordinator: add a
    /// [`crate::RemotePlugin`] for each to the manager. Noted just before the node's
    /// `Registered`.
    Plugins {
        /// The host.
        host: WorkerId,
        /// Its plugins.
        plugins: Vec<HostedPlugin>,
    },
    /// A worker started a job (`TaskStarted` is on the bus).
    Started {
        /// The worker.
        worker: WorkerId,
        /// The task.
        task: TaskId,
        /// The attempt.
        attempt: u32,
    },
}

/// Counters of the delivery layer (docs/cluster.md, "Guarantees").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Events applied to the bus.
    pub applied: u64,
    /// Event frames received again (resent after a reconnect) and dropped.
    pub duplicates: u64,
    /// Results of an attempt already applied (from another frame) and dropped.
    pub duplicate_results: u64,
    /// Results of abandoned jobs, dropped: those of a worker declared failed (the re-run
    /// wins), and those that came after the run's end abandoned every job
    /// ([`Hub::abandon_jobs`]).
    pub late_results: u64,
    /// Jobs sent again after a reconnect.
    pub jobs_resent: u64,
    /// Connections refused (TLS, cookie, handshake deadline, too many at once).
    pub refused: u64,
    /// Events of remote publishers dropped because only the coordinator may publish them
    /// (`CoordinatorStartup`, `CoordinatorShutdown`).
    pub rejected: u64,
}

#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    duplicate_results: AtomicU64,
    late_results: AtomicU64,
    jobs_resent: AtomicU64,
    rejected: AtomicU64,
}

type Done = oneshot::Sender<Result<(), ClusterError>>;

enum Command {
    Post(WorkerId, RemoteJob),
    Deliver(WorkerId, String, Event, Done),
    WaitHost(WorkerId, oneshot::Sender<()>),
    Reconfigure(WorkerId, String, serde_json::Value, Done),
    AbandonJobs(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A cheap, clonable handle on a [`Hub`] for what talks to remote nodes: the proxies of
/// hosted plugins ([`crate::RemotePlugin`]).
#[derive(Debug, Clone)]
pub struct HubHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl HubHandle {
    /// Delivers `event` to `plugin` on `host`; resolves when the host handled it. The event is
    /// resent after reconnections until then.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unreachable`] when the host is unknown or declared failed (the event
    /// stays queued on the hub and is resent when the host is back), [`ClusterError::Closed`]
    /// after shutdown.
    pub async fn deliver(
        &self,
        host: &WorkerId,
        plugin: &str,
        event: Event,
    ) -> Result<(), ClusterError> {
        self.send(host, plugin, event)?.await
    }

    /// Hands `event` for `plugin` on `host` to the hub at once (in call order) and returns
    /// what resolves as [`deliver`](Self::deliver) does, so that several events can be in
    /// flight.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Closed`] after shutdown; the returned future as [`deliver`](Self::deliver).
    pub fn send(
        &self,
        host: &WorkerId,
        plugin: &str,
        event: Event,
    ) -> Result<Delivery, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Deliver(host.clone(), plugin.to_owned(), event, tx))
            .map_err(|_| ClusterError::Closed)?;
        Ok(Delivery(rx))
    }

    /// Applies `settings` to `plugin` on `host` (its manager's `reconfigure`, in order with
    /// the plugin's events); resolves with the host's answer. Settings applied this way are
    /// sent again to a restarted host, so they stay in force.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Refused`] with the host manager's reason (the old settings stay),
    /// [`ClusterError::Unreachable`] when the host is unknown or down (nothing changes),
    /// [`ClusterError::Closed`] after shutdown.
    pub async fn reconfigure(
        &self,
        host: &WorkerId,
        plugin: &str,
        settings: serde_json::Value,
    ) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Reconfigure(
                host.clone(),
                plugin.to_owned(),
                settings,
                tx,
            ))
            .map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)?
    }

    /// Resolves when `host` is connected (at once when it is).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Closed`] after shutdown.
    pub async fn host_up(&self, host: &WorkerId) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::WaitHost(host.clone(), tx))
            .map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)
    }
}

/// An event on its way to a hosted plugin ([`HubHandle::send`]): resolves when the host
/// handled it, or with why it could not (the hub still keeps the event for the host).
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<(), ClusterError>>);

impl Delivery {
    /// The outcome if it is known already, without waiting.
    pub fn outcome(&mut self) -> Option<Result<(), ClusterError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ClusterError::Closed)),
        }
    }
}

impl Future for Delivery {
    type Output = Result<(), ClusterError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClusterError::Closed)))
    }
}

/// The coordinator's end of the cluster. See the crate docs.
#[derive(Debug)]
pub struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    counters: Arc<Counters>,
    refusals: Arc<Refusals>,
    accept: JoinHandle<()>,
    node: ActorRef<NodeServerMessage>,
    inbox: ActorRef<wire::Wire>,
}

impl Hub {
    /// Listens for workers and publishes what they do on `bus`. Logs a warning when the
    /// transport is [`Transport::Insecure`].
    ///
    /// # Errors
    ///
    /// [`ClusterError::Start`] if the address cannot be bound or the node not started;
    /// [`ClusterError::Tls`] if a TLS transport has no server certificate.
    pub async fn start(
        config: HubConfig,
        bus: Bus,
    ) -> Result<(Self, mpsc::UnboundedReceiver<HubNote>), ClusterError> {
        let acceptor = match &config.transport {
            Transport::Tls(files) => Some(files.acceptor().cloned().ok_or_else(|| {
                ClusterError::Tls("the coordinator needs a certificate and a key".to_owned())
            })?),
            Transport::Insecure => {
                tracing::warn!(
                    listen = %config.listen,
                    "the cluster runs WITHOUT TLS (--insecure-cluster): anyone on the network \
                     path can read and alter the traffic; only the cookie guards it"
                );
                None
            }
        };
        let listener = net::bind(config.listen).await?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ClusterError::Start(format!("listen on {}: {e}", config.listen)))?;
        let node = net::start_node(
            format!("dtf-coordinator-{}", std::process::id()),
            &config.cookie,
            acceptor.clone(),
            config.max_frame,
        )
        .await?;
        let refusals = Arc::new(Refusals::default());
        let links = net::watch(&node, Arc::clone(&refusals));
        let (frames_tx, frames) = mpsc::unbounded_channel::<FromWorker>();
        let (inbox, _) = Actor::spawn(
            None,
            Inbox::<FromWorker>::new(),
            (HUB_GROUP.to_owned(), frames_tx),
        )
        .await
        .map_err(|e| ClusterError::Start(format!("the coordinator's inbox: {e}")))?;
        let accept = tokio::spawn(net::accept_loop(
            listener,
            node.clone(),
            acceptor,
            Arc::clone(&refusals),
        ));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (notes_tx, notes) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_in_order(
            bus.with_source("cluster"),
            out_rx,
            notes_tx,
            |group: &str, incarnation, upto| {
                wire::send_to(group, &HubFrame::Ack { incarnation, upto });
            },
        ));
        let state = HubLoop {
            out,
            timing: config.timing,
            workers: HashMap::new(),
            applied_results: HashSet::new(),
            counters: Arc::clone(&counters),
            next_request: 0,
            hub: hub_id()?,
            max_frame: config.max_frame,
            closing: false,
        };
        tokio::spawn(state.run(frames, commands_rx, links));
        tracing::info!(%local_addr, "the coordinator listens for workers");
        Ok((
            Self {
                commands,
                local_addr,
                counters,
                refusals,
                accept,
                node,
                inbox,
            },
            notes,
        ))
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sends `job` to `worker`, resending it after a reconnect until the worker acknowledges it.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Closed`] after [`shutdown`](Self::shutdown).
    pub fn post(&self, worker: &WorkerId, job: RemoteJob) -> Result<(), ClusterError> {
        self.commands
            .send(Command::Post(worker.clone(), job))
            .map_err(|_| ClusterError::Closed)
    }

    /// A handle for the proxies of hosted plugins.
    pub fn handle(&self) -> HubHandle {
        HubHandle {
            commands: self.commands.clone(),
        }
    }

    /// The delivery layer's counters so far.
    pub fn stats(&self) -> HubStats {
        let c = &self.counters;
        HubStats {
            applied: c.applied.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            duplicate_results: c.duplicate_results.load(Ordering::Relaxed),
            late_results: c.late_results.load(Ordering::Relaxed),
            jobs_resent: c.jobs_resent.load(Ordering::Relaxed),
            refused: self.refusals.total(),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }

    /// Abandons every job the remote workers still run, for the end of a run: their results,
    /// should they come, are dropped and counted as late ([`HubStats::late_results`]), and
    /// jobs not yet acknowledged are not resent. Resolves once every result applied before it
    /// is on the bus, so that a `TaskCancelled` published after it is the last word on its
    /// task (a result arriving later would otherwise mark a cancelled task passed).
    pub async fn abandon_jobs(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::AbandonJobs(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Tells every worker the run is over, stops listening and stops the node. Logs the
    /// delivery counters ([`HubStats`]) at `info`.
    pub async fn shutdown(&self) {
        let stats = self.stats();
        tracing::info!(
            applied = stats.applied,
            duplicates = stats.duplicates,
            duplicate_results = stats.duplicate_results,
            late_results = stats.late_results,
            jobs_resent = stats.jobs_resent,
            refused = stats.refused,
            rejected = stats.rejected,
            "cluster delivery"
        );
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
        self.accept.abort();
        // The workers leave on the goodbye, which closes their sessions: wait for that (up
        // to 2 s), so that none misses it and waits for a coordinator that is gone.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match ractor::call_t!(self.node, NodeServerMessage::GetSessions, 500) {
                Ok(sessions) if !sessions.is_empty() => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => break,
            }
        }
        self.inbox.stop(None);
        self.node.stop(None);
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Health {
    Up,
    /// Silent for `heartbeat_timeout`: `WorkerDisconnected` published.
    Silent,
    /// Silent for the grace period too: `WorkerFailed` published, its jobs abandoned.
    Failed,
}

struct RemoteWorker {
    incarnation: u64,
    health: Health,
    last_seen: Instant,
    /// Events applied, in order (the highest sequence number).
    applied: u64,
    next_job: u64,
    /// Jobs numbered up to here that were abandoned (the worker was declared failed, or the
    /// run is ending) and that it will never get (said in `Welcome`, so it takes the jobs
    /// after them).
    jobs_void_upto: u64,
    /// Jobs sent and not acknowledged (with when they were last sent), resent after a
    /// reconnect, or when a heartbeat shows they did not arrive.
    /// Each is kept as its encoded frame: a resend sends the same bytes again.
    unacked: VecDeque<(u64, Vec<u8>, Instant)>,
    /// The `applied` at which a resend was last asked for (once per gap).
    resend_asked: Option<u64>,
    /// Jobs sent and not finished: job seq → (task, attempt).
    running: HashMap<u64, (TaskId, u32)>,
    /// Jobs abandoned (the worker was declared failed, or the run is ending); their results
    /// are dropped.
    abandoned: HashSet<u64>,
    /// Incarnations a newer process under this id replaced: a `Hello` from one of them (late,
    /// or from a twin still running) is refused rather than taking the id back.
    retired: HashSet<u64>,
    /// Events for its hosted plugins not yet handled, per plugin, in bus order.
    deliveries: HashMap<String, VecDeque<Pending>>,
    /// Proxies waiting for it to be connected.
    waiting: Vec<oneshot::Sender<()>>,
    /// Reconfigurations sent and not answered: id → (plugin, settings, encoded frame, reply).
    reconfiguring: BTreeMap<u64, (String, serde_json::Value, Vec<u8>, Done)>,
    /// Settings its plugins were given through the coordinator, sent again to a restarted
    /// host (before its events).
    settings: BTreeMap<String, serde_json::Value>,
    /// `false` for a placeholder: a host a proxy waits for that has not registered yet.
    registered: bool,
    /// The node id of the session its last `Hello` came on (see [`RemoteWorker::welcomed`]).
    hello_node: Option<u64>,
    /// A remote publisher ([`crate::RemotePublisher`]): no `Worker*` events are published
    /// for it.
    publisher: bool,
    group: String,
}

struct Pending {
    /// The event's bus sequence number: the host acknowledges up to one.
    seq: u64,
    /// The encoded `Deliver` frame.
    frame: Vec<u8>,
    /// `None` once the proxy was told the host failed; the event is still resent.
    done: Option<Done>,
}

impl RemoteWorker {
    /// Abandons its jobs: results of those it runs are dropped when they come, and those it
    /// never acknowledged are not resent (their tasks are re-queued or cancelled). Should it
    /// come back, it is told to number its next job after them, or it would wait for them and
    /// take no job again.
    fn abandon_jobs(&mut self) {
        self.abandoned
            .extend(self.running.drain().map(|(seq, _)| seq));
        self.unacked.clear();
        self.jobs_void_upto = self.next_job;
    }

    fn new(incarnation: u64, group: String) -> Self {
        Self {
            incarnation,
            health: Health::Up,
            last_seen: Instant::now(),
            applied: 0,
            next_job: 0,
            jobs_void_upto: 0,
            unacked: VecDeque::new(),
            resend_asked: None,
            running: HashMap::new(),
            abandoned: HashSet::new(),
            retired: HashSet::new(),
            deliveries: HashMap::new(),
            waiting: Vec::new(),
            reconfiguring: BTreeMap::new(),
            settings: BTreeMap::new(),
            registered: true,
            hello_node: None,
            publisher: false,
            group,
        }
    }

    /// Whether the node's newest session is the one its last `Hello` came on. A host that
    /// reconnected is sent nothing new until its hello: what it missed is resent then, in
    /// order, and a newer event arriving before that resend would make the host take the
    /// resent ones for duplicates.
    fn welcomed(&self) -> bool {
        self.hello_node.is_some()
            && wire::newest_remote(&self.group).map(|(node, _)| node) == self.hello_node
    }

    /// On a hello: records the session it came on, sends every unanswered reconfiguration
    /// and unhandled delivery again, in order, and wakes the waiting proxies.
    fn on_hello(&mut self) {
        self.hello_node = wire::newest_remote(&self.group).map(|(node, _)| node);
        for (_, _, frame, _) in self.reconfiguring.values() {
            wire::send_bytes(&self.group, frame.clone());
        }
        for p in self.deliveries.values().flatten() {
            wire::send_bytes(&self.group, p.frame.clone());
        }
        for w in self.waiting.drain(..) {
            let _ = w.send(());
        }
    }
}

/// What the hub's loop hands to its publishing task, in order.
enum Out {
    /// One event for the bus.
    One(EventKind),
    /// A remote publisher's events, published together under its source (`remote:` and its
    /// id, [`EventMeta::remote_publisher`]).
    Batch(Arc<str>, Vec<EventKind>),
    /// Tell the node with this group and incarnation that its events up to here are applied:
    /// sent after everything before it is on the bus.
    Ack(String, u64, u64),
    /// Tell the embedding coordinator, after everything before it is on the bus (a worker's
    /// `Registered` after its `WorkerRegistered`, so that tasks created on that note find it).
    Note(HubNote),
    /// Answered once everything before it is on the bus.
    Published(oneshot::Sender<()>),
}

/// Publishes what the hub's loop applied, in the loop's order, and acknowledges it once it is
/// on the bus (`ack(group, upto)`). The loop itself never waits for the bus: a full queue
/// (backpressure) slows this task, while the loop goes on handling acknowledgements,
/// heartbeats and deliveries (which a hosted plugin's proxy, whose queue may be the full one,
/// waits for).
///
/// Once the bus has refused events (it refuses only when closed, which is for good), no
/// acknowledgement is sent any more: it would tell a node that events are on the bus which
/// are not, and a remote publisher's `flush` would succeed for them. The nodes' unacknowledged
/// events stay theirs, and their `flush` fails when the run's `Goodbye` comes.
async fn publish_in_order(
    bus: Bus,
    mut out: mpsc::UnboundedReceiver<Out>,
    notes: mpsc::UnboundedSender<HubNote>,
    ack: impl Fn(&str, u64, u64),
) {
    let mut refused = false;
    while let Some(item) = out.recv().await {
        match item {
            Out::One(kind) => {
                if let Err(e) = bus.publish(kind).await {
                    refused = true;
                    tracing::warn!(error = %e, "the bus refused a cluster event");
                }
            }
            Out::Batch(source, kinds) => {
                if let Err(e) = bus.with_source(&source).publish_batch(kinds).await {
                    refused = true;
                    tracing::warn!(error = %e, "the bus refused a remote publisher's events");
                }
            }
            Out::Ack(group, incarnation, upto) => {
                if refused {
                    tracing::debug!(upto, "not acknowledged: the bus is closed");
                } else {
                    ack(&group, incarnation, upto);
                }
            }
            Out::Note(note) => {
                let _ = notes.send(note);
            }
            Out::Published(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// What a batch of frames applied, per worker: the incarnation and the last event number.
type Acks = BTreeMap<WorkerId, (u64, u64)>;

struct HubLoop {
    /// To the publishing task ([`publish_in_order`]).
    out: mpsc::UnboundedSender<Out>,
    timing: Timing,
    workers: HashMap<WorkerId, RemoteWorker>,
    /// `(task, attempt)` whose result was applied: a result is applied once per attempt.
    applied_results: HashSet<(TaskId, u32)>,
    counters: Arc<Counters>,
    /// The id of the last request to a plugin host (`Reconfigure`).
    next_request: u64,
    /// This run's id, in every `Welcome`: a node that was welcomed by another run (the
    /// coordinator restarted on the same address) is refused.
    hub: u64,
    /// The coordinator's frame cap: a node must have the same.
    max_frame: u64,
    /// Set by [`Hub::abandon_jobs`]: the run is ending, and no job is posted any more.
    closing: bool,
}

/// Refuses the node `worker` of `incarnation`, which stops with `reason`. Sent to every node
/// of the id's group, since a node already holding the id is in it too; only the refused
/// incarnation acts on it.
fn refuse(worker: &WorkerId, incarnation: u64, reason: String) {
    wire::send_to_all(
        &wire::worker_group(worker.as_str()),
        &HubFrame::Refused {
            incarnation,
            reason,
        },
    );
}

/// Why a node replaced by a newer one under the same id is refused.
fn another_took_the_id(id: &WorkerId) -> String {
    format!(
        "another node took the id `{id}` (a newer process with the same id); give each node \
         its own `--id`"
    )
}

/// A random, non-zero id for this coordinator run.
fn hub_id() -> Result<u64, ClusterError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| ClusterError::Start(format!("randomness: {e}")))?;
    Ok(u64::from_le_bytes(b).max(1))
}

impl HubLoop {
    async fn run(
        mut self,
        mut frames: mpsc::UnboundedReceiver<FromWorker>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut links: mpsc::UnboundedReceiver<net::Link>,
    ) {
        let mut tick = tokio::time::interval(
            self.timing
                .heartbeat_interval
                .max(Duration::from_millis(10))
                / 2,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(frame) = frames.recv() => {
                    let mut acks = Acks::new();
                    self.on_frame(frame, &mut acks);
                    // Drain what else has arrived, then acknowledge once per worker.
                    while let Ok(frame) = frames.try_recv() {
                        self.on_frame(frame, &mut acks);
                    }
                    self.acknowledge(acks);
                }
                Some(command) = commands.recv() => match command {
                    Command::Post(worker, job) => self.post(worker, job),
                    Command::Reconfigure(host, plugin, settings, done) => {
                        self.reconfigure(host, plugin, settings, done);
                    }
                    Command::Deliver(host, plugin, event, done) => self.deliver(host, plugin, event, done),
                    Command::WaitHost(host, tx) => match self.workers.get_mut(&host) {
                        Some(w) if w.health == Health::Up => {
                            let _ = tx.send(());
                        }
                        Some(w) => w.waiting.push(tx),
                        // Not registered yet: it is waited for like a disconnected one.
                        None => {
                            let mut w = RemoteWorker::new(0, wire::worker_group(host.as_str()));
                            w.health = Health::Failed;
                            w.registered = false;
                            w.waiting.push(tx);
                            self.workers.insert(host, w);
                        }
                    },
                    Command::AbandonJobs(done) => {
                        self.abandon_jobs();
                        let _ = self.out.send(Out::Published(done));
                    }
                    Command::Shutdown(done) => {
                        for w in self.workers.values() {
                            wire::send_to(&w.group, &HubFrame::Goodbye);
                        }
                        let _ = done.send(());
                        return;
                    }
                },
                Some(_link) = links.recv() => {
                    // A session going down is noticed through the heartbeats (a worker may
                    // be behind a proxy whose connection ends without a clean close).
                }
                _ = tick.tick() => self.check_health(),
                else => return,
            }
        }
    }

    fn publish(&self, kind: EventKind) {
        let _ = self.out.send(Out::One(kind));
    }

    fn note(&self, note: HubNote) {
        let _ = self.out.send(Out::Note(note));
    }

    fn post(&mut self, worker: WorkerId, job: RemoteJob) {
        if self.closing {
            // Its task is cancelled with the others that had not ended.
            tracing::info!(%worker, task = %job.task, "a job posted after the run's end; dropped");
            return;
        }
        let Some(w) = self.workers.get_mut(&worker) else {
            tracing::warn!(%worker, task = %job.task, "a job for an unknown remote worker; dropped");
            return;
        };
        w.next_job += 1;
        let seq = w.next_job;
        w.running.insert(seq, (job.task.clone(), job.attempt));
        let Some(frame) = wire::encode(&HubFrame::Job {
            incarnation: w.incarnation,
            seq,
            job,
        }) else {
            return;
        };
        w.unacked.push_back((seq, frame.clone(), Instant::now()));
        // Sent now when the worker is connected; otherwise after its next Hello.
        wire::send_bytes(&w.group, frame);
    }

    fn reconfigure(
        &mut self,
        host: WorkerId,
        plugin: String,
        settings: serde_json::Value,
        done: Done,
    ) {
        let w = match self.workers.get_mut(&host) {
            Some(w) if w.registered && w.health != Health::Failed => w,
            _ => {
                let _ = done.send(Err(ClusterError::Unreachable(format!(
                    "the plugin host `{host}` is not connected; nothing changed"
                ))));
                return;
            }
        };
        self.next_request += 1;
        let id = self.next_request;
        let Some(frame) = wire::encode(&HubFrame::Reconfigure {
            plugin: plugin.clone(),
            id,
            settings: settings.clone(),
        }) else {
            let _ = done.send(Err(ClusterError::Encode("settings for a hosted plugin")));
            return;
        };
        if w.welcomed() {
            wire::send_bytes(&w.group, frame.clone());
        }
        w.reconfiguring.insert(id, (plugin, settings, frame, done));
    }

    fn deliver(&mut self, host: WorkerId, plugin: String, event: Event, done: Done) {
        let Some(w) = self.workers.get_mut(&host) else {
            let _ = done.send(Err(ClusterError::Unreachable(format!(
                "the plugin host `{host}` is not registered"
            ))));
            return;
        };
        let seq = event.meta.seq;
        let Some(frame) = wire::encode(&HubFrame::Deliver {
            plugin: plugin.clone(),
            event,
        }) else {
            let _ = done.send(Err(ClusterError::Encode("an event for a hosted plugin")));
            return;
        };
        if w.welcomed() {
            wire::send_bytes(&w.group, frame.clone());
        }
        let done = if w.health == Health::Failed {
            let _ = done.send(Err(ClusterError::Unreachable(format!(
                "the plugin host `{host}` is down; the event waits for it"
            ))));
            None
        } else {
            Some(done)
        };
        w.deliveries
            .entry(plugin)
            .or_default()
            .push_back(Pending { seq, frame, done });
    }

    /// Acknowledges what a batch of frames applied, once per worker, through the publishing
    /// task (an acknowledgement follows the events it covers onto the bus). Each is for the
    /// incarnation whose events it covers: if a newer process took the id later in the batch,
    /// the old one's acknowledgement is not sent (the new one would have taken it for its own
    /// and dropped as many of its events unsent).
    fn acknowledge(&self, acks: Acks) {
        for (worker, (incarnation, upto)) in acks {
            if let Some(w) = self
                .workers
                .get(&worker)
                .filter(|w| w.incarnation == incarnation)
            {
                let _ = self.out.send(Out::Ack(w.group.clone(), incarnation, upto));
            }
        }
    }

    fn on_frame(&mut self, frame: FromWorker, acks: &mut Acks) {
        let FromWorker {
            worker,
            incarnation,
            body,
        } = frame;
        if let WorkerFrame::Hello {
            capabilities,
            labels,
            jobs_received,
            plugins,
            publisher,
            hub,
            max_frame,
        } = body
        {
            if let Some(hub) = hub.filter(|h| *h != self.hub) {
                tracing::warn!(
                    %worker,
                    previous_run = format_args!("{hub:x}"),
                    "a node of the coordinator's previous run (it restarted on this address); refused"
                );
                refuse(
                    &worker,
                    incarnation,
                    "the coordinator restarted: this node served its previous run \
                     (start the node again to join the new one)"
                        .to_owned(),
                );
                return;
            }
            if let Some(theirs) = max_frame.filter(|m| *m != self.max_frame) {
                tracing::warn!(
                    %worker,
                    node_max_frame = theirs,
                    max_frame = self.max_frame,
                    "a node with another frame cap; refused"
                );
                refuse(
                    &worker,
                    incarnation,
                    format!(
                        "this node's frame cap ({theirs} bytes) differs from the \
                         coordinator's ({} bytes): a frame over either cap would close the \
                         connection and be resent forever; give both the same cap \
                         (`--max-frame` of the binaries, `max_frame` of the configuration)",
                        self.max_frame
                    ),
                );
                return;
            }
            if publisher {
                self.publisher_hello(worker, incarnation);
            } else {
                self.hello(
                    worker,
                    incarnation,
                    capabilities,
                    labels,
                    jobs_received,
                    plugins,
                );
            }
            return;
        }
        if let WorkerFrame::Undecodable { failure } = body {
            // It would resend the frame forever, and a publisher's flush would never resolve.
            tracing::warn!(%worker, %failure, "a node sent a frame this coordinator cannot decode; refused");
            refuse(
                &worker,
                incarnation,
                format!(
                    "the coordinator could not decode a frame of this node ({failure}); \
                     do both run the same dtf version?"
                ),
            );
            return;
        }
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if w.incarnation != incarnation {
            // A frame of an incarnation that has since been replaced.
            return;
        }
        w.last_seen = Instant::now();
        // Any frame of the current incarnation proves the worker alive again.
        let back = w.health != Health::Up;
        if back {
            w.health = Health::Up;
        }
        if back && !w.publisher {
            tracing::info!(%worker, "the worker is back");
            self.publish(EventKind::worker_recovered(worker.clone()));
        }
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        match body {
            // Handled above.
            WorkerFrame::Hello { .. } | WorkerFrame::Undecodable { .. } => {}
            WorkerFrame::Reconfigured { plugin, id, error } => {
                let Some((_, settings, _, done)) = w.reconfiguring.remove(&id) else {
                    // An answer to a resend already answered.
                    return;
                };
                let answer = match error {
                    None => {
                        w.settings.insert(plugin, settings);
                        Ok(())
                    }
                    Some(e) => Err(ClusterError::Refused(e)),
                };
                let _ = done.send(answer);
            }
            WorkerFrame::Handled { plugin, upto } => {
                if let Some(queue) = w.deliveries.get_mut(&plugin) {
                    while queue.front().is_some_and(|p| p.seq <= upto) {
                        if let Some(done) = queue.pop_front().and_then(|p| p.done) {
                            let _ = done.send(Ok(()));
                        }
                    }
                }
            }
            WorkerFrame::Heartbeat { jobs_received } => {
                ack_jobs(w, jobs_received);
                // A sign of life at once, acknowledging nothing: the acknowledgement below
                // waits for its events to be on the bus, and a stalled bus (a plugin with a
                // full queue) would leave the worker hearing nothing, and stopping its jobs
                // as if cut off (`Welcome::fail_after_ms`).
                wire::send_to(
                    &w.group,
                    &HubFrame::Ack {
                        incarnation,
                        upto: 0,
                    },
                );
                acks.insert(worker, (w.incarnation, w.applied));
                // A job not acknowledged two heartbeats after it was sent was lost in a cut.
                let late = self.timing.heartbeat_interval * 2;
                if w.unacked
                    .front()
                    .is_some_and(|(_, _, sent)| sent.elapsed() > late)
                {
                    let n = resend_jobs(w);
                    self.counters.jobs_resent.fetch_add(n, Ordering::Relaxed);
                }
            }
            WorkerFrame::Events { first, kinds } => {
                let Some(fresh) = self.take_fresh(&worker, first, kinds, acks) else {
                    return;
                };
                self.counters
                    .applied
                    .fetch_add(fresh.len() as u64, Ordering::Relaxed);
                let source = format!("{}{worker}", EventMeta::REMOTE_SOURCE_PREFIX);
                let _ = self.out.send(Out::Batch(source.into(), fresh));
            }
            WorkerFrame::Event { .. } if w.publisher => {
                // A job's event from a node that runs no jobs: a publisher's events come as
                // `Events`, under its own source, which the run tracker does not trust with
                // task results. This one would land under `cluster`, which it does.
                tracing::warn!(%worker, "a remote publisher sent a worker's job event; refused");
                refuse(
                    &worker,
                    incarnation,
                    "this node is a remote publisher: it runs no jobs, so it sends no job events"
                        .to_owned(),
                );
            }
            WorkerFrame::Event { seq, job, kind } => {
                if seq <= w.applied {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    acks.insert(worker, (w.incarnation, w.applied));
                    return;
                }
                if seq != w.applied + 1 {
                    // A gap (a frame lost in a cut): ask once for everything unacknowledged.
                    if w.resend_asked != Some(w.applied) {
                        w.resend_asked = Some(w.applied);
                        wire::send_to(
                            &w.group,
                            &HubFrame::Resend {
                                incarnation: w.incarnation,
                                after: w.applied,
                            },
                        );
                    }
                    return;
                }
                w.applied = seq;
                acks.insert(worker.clone(), (w.incarnation, seq));
                if w.abandoned.contains(&job) {
                    if is_result(&kind) {
                        w.abandoned.remove(&job);
                        self.counters.late_results.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%worker, job, "a late result of an abandoned job; dropped");
                    }
                    return;
                }
                match &kind {
                    EventKind::TaskStarted(s) => {
                        self.note(HubNote::Started {
                            worker: worker.clone(),
                            task: s.task.clone(),
                            attempt: s.attempt,
                        });
                    }
                    k if is_result(k) => {
                        let Some((task, attempt)) = w.running.remove(&job) else {
                            self.counters
                                .duplicate_results
                                .fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        if !self.applied_results.insert((task, attempt)) {
                            self.counters
                                .duplicate_results
                                .fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    _ => {}
                }
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
                self.publish(kind);
            }
        }
    }

    /// A remote publisher (re)connected: it is tracked for acknowledgements only, never
    /// registered as a worker.
    fn publisher_hello(&mut self, id: WorkerId, incarnation: u64) {
        let group = wire::worker_group(id.as_str());
        // An earlier publisher process under this id, told to stop below (as for workers).
        let replaced = self
            .workers
            .get(&id)
            .filter(|w| w.publisher && w.incarnation != incarnation)
            .map(|w| w.incarnation);
        let w = match self.workers.get_mut(&id) {
            Some(w) if w.incarnation == incarnation => {
                w.last_seen = Instant::now();
                w.health = Health::Up;
                w.resend_asked = None;
                tracing::info!(publisher = %id, "a remote publisher reconnected");
                w
            }
            Some(w) if w.retired.contains(&incarnation) => {
                tracing::warn!(publisher = %id, "a replaced publisher said hello again; refused");
                refuse(&id, incarnation, another_took_the_id(&id));
                return;
            }
            Some(w) if !w.publisher => {
                tracing::warn!(
                    publisher = %id,
                    "a remote publisher uses the id of a worker; refused"
                );
                refuse(
                    &id,
                    incarnation,
                    format!("the id `{id}` is a worker's in this run"),
                );
                return;
            }
            _ => {
                tracing::info!(publisher = %id, "a remote publisher connected");
                let mut retired = HashSet::new();
                if let Some(old) = replaced {
                    refuse(&id, old, another_took_the_id(&id));
                    retired = self
                        .workers
                        .get_mut(&id)
                        .map(|w| std::mem::take(&mut w.retired))
                        .unwrap_or_default();
                    retired.insert(old);
                }
                let mut w = RemoteWorker::new(incarnation, group.clone());
                w.publisher = true;
                w.retired = retired;
                self.workers.entry(id).insert_entry(w).into_mut()
            }
        };
        wire::send_to(
            &group,
            &HubFrame::Welcome {
                incarnation,
                events_applied: w.applied,
                hub: self.hub,
                jobs_void_upto: 0,
                fail_after_ms: 0, // a publisher runs no jobs
            },
        );
    }

    /// The events of an `Events` frame not applied yet, in order; `None` for a duplicate or
    /// a gap (a resend is asked for once per gap). Events only the coordinator may publish
    /// (its own startup and shutdown) are dropped and counted.
    fn take_fresh(
        &mut self,
        worker: &WorkerId,
        first: u64,
        kinds: Vec<EventKind>,
        acks: &mut Acks,
    ) -> Option<Vec<EventKind>> {
        let w = self.workers.get_mut(worker)?;
        let n = kinds.len() as u64;
        // Numbers from the network: no overflow.
        let last = first.checked_add(n)?.checked_sub(1)?;
        if first == 0 || last <= w.applied {
            self.counters.duplicates.fetch_add(n, Ordering::Relaxed);
            acks.insert(worker.clone(), (w.incarnation, w.applied));
            return None;
        }
        if first > w.applied + 1 {
            if w.resend_asked != Some(w.applied) {
                w.resend_asked = Some(w.applied);
                wire::send_to(
                    &w.group,
                    &HubFrame::Resend {
                        incarnation: w.incarnation,
                        after: w.applied,
                    },
                );
            }
            return None;
        }
        let skip = w.applied + 1 - first;
        self.counters.duplicates.fetch_add(skip, Ordering::Relaxed);
        w.applied = last;
        acks.insert(worker.clone(), (w.incarnation, last));
        let mut fresh: Vec<EventKind> = kinds.into_iter().skip(skip as usize).collect();
        let before = fresh.len();
        fresh.retain(|k| {
            !matches!(
                k,
                EventKind::CoordinatorStartup(_) | EventKind::CoordinatorShutdown(_)
            )
        });
        if fresh.len() < before {
            let dropped = (before - fresh.len()) as u64;
            self.counters.rejected.fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                publisher = %worker,
                dropped,
                "a remote publisher sent coordinator lifecycle events; dropped"
            );
        }
        Some(fresh)
    }

    fn hello(
        &mut self,
        worker: WorkerId,
        incarnation: u64,
        mut capabilities: Capabilities,
        labels: BTreeMap<String, String>,
        jobs_received: u64,
        plugins: Vec<HostedPlugin>,
    ) {
        for (k, v) in &labels {
            let label = format!("{k}={v}");
            if !capabilities.features.contains(&label) {
                capabilities.features.push(label);
            }
        }
        let group = wire::worker_group(worker.as_str());
        let now = Instant::now();
        let fail_after_ms = self.fail_after_ms();
        // A proxy may have waited for a host that had not registered yet.
        let placeholder = if self.workers.get(&worker).is_some_and(|w| !w.registered) {
            self.workers.remove(&worker)
        } else {
            None
        };
        match self.workers.get_mut(&worker) {
            Some(w) if w.retired.contains(&incarnation) => {
                // A process a newer one replaced (its hello came late, or it still runs):
                // the newer one keeps the id.
                tracing::warn!(%worker, "a replaced node said hello again; refused");
                refuse(&worker, incarnation, another_took_the_id(&worker));
            }
            Some(w) if w.publisher => {
                tracing::warn!(%worker, "a worker uses the id of a remote publisher; refused");
                refuse(
                    &worker,
                    incarnation,
                    format!("the id `{worker}` is a remote publisher's in this run"),
                );
            }
            None => {
                let mut w = RemoteWorker::new(incarnation, group.clone());
                if let Some(old) = placeholder {
                    w.deliveries = old.deliveries;
                    w.waiting = old.waiting;
                }
                w.on_hello();
                self.workers.insert(worker.clone(), w);
                tracing::info!(
                    %worker,
                    slots = capabilities.slots,
                    plugins = plugins.len(),
                    "a remote worker registered"
                );
                self.publish(EventKind::worker_registered(worker.clone(), capabilities));
                // Its plugins first: whoever sees `Registered` finds them already noted.
                if !plugins.is_empty() {
                    self.note(HubNote::Plugins {
                        host: worker.clone(),
                        plugins,
                    });
                }
                self.note(HubNote::Registered(worker));
                wire::send_to(
                    &group,
                    &HubFrame::Welcome {
                        incarnation,
                        events_applied: 0,
                        hub: self.hub,
                        jobs_void_upto: 0,
                        fail_after_ms,
                    },
                );
            }
            Some(w) if w.incarnation == incarnation => {
                // The same process, reconnected: resend what it has not acknowledged.
                w.last_seen = now;
                let was = w.health;
                w.health = Health::Up;
                ack_jobs(w, jobs_received);
                w.resend_asked = None;
                wire::send_to(
                    &group,
                    &HubFrame::Welcome {
                        incarnation,
                        events_applied: w.applied,
                        hub: self.hub,
                        jobs_void_upto: w.jobs_void_upto,
                        fail_after_ms,
                    },
                );
                let n = resend_jobs(w);
                self.counters.jobs_resent.fetch_add(n, Ordering::Relaxed);
                w.on_hello();
                if was != Health::Up {
                    tracing::info!(%worker, "the worker is back (reconnected)");
                    self.publish(EventKind::worker_recovered(worker));
                }
            }
            Some(w) => {
                // A new process under a known name: the old one's jobs are lost.
                let was = w.health;
                let old = w.incarnation;
                let lost: Vec<u64> = w.running.keys().copied().collect();
                // Hosted plugins' events are kept: the new process gets them all again
                // (at least once across a host restart).
                let deliveries = std::mem::take(&mut w.deliveries);
                let waiting = std::mem::take(&mut w.waiting);
                let reconfiguring = std::mem::take(&mut w.reconfiguring);
                let settings = std::mem::take(&mut w.settings);
                let mut retired = std::mem::take(&mut w.retired);
                retired.insert(old);
                *w = RemoteWorker::new(incarnation, group.clone());
                w.retired = retired;
                // If the old process is alive (two nodes started with one id), it is told to
                // stop rather than dropped silently: it would take the id back at its next
                // `Hello`, and the two would evict each other for the rest of the run.
                refuse(&worker, old, another_took_the_id(&worker));
                w.deliveries = deliveries;
                w.waiting = waiting;
                // A change the old process had not answered is refused: the new one starts
                // from its own configuration plus what was applied before.
                for (_, _, _, done) in reconfiguring.into_values() {
                    let _ = done.send(Err(ClusterError::Unreachable(format!(
                        "the plugin host `{worker}` restarted before it answered; nothing changed"
                    ))));
                }
                wire::send_to(
                    &group,
                    &HubFrame::Welcome {
                        incarnation,
                        events_applied: 0,
                        hub: self.hub,
                        jobs_void_upto: 0,
                        fail_after_ms,
                    },
                );
                // What the coordinator set is applied again before any event; kept (and
                // resent) until answered, like any change, and nobody waits for the answer.
                for (plugin, settings) in settings {
                    self.next_request += 1;
                    let id = self.next_request;
                    let frame = wire::encode(&HubFrame::Reconfigure {
                        plugin: plugin.clone(),
                        id,
                        settings: settings.clone(),
                    });
                    if let Some(frame) = frame {
                        let (unread, _) = oneshot::channel();
                        w.reconfiguring
                            .insert(id, (plugin.clone(), settings.clone(), frame, unread));
                    }
                    w.settings.insert(plugin, settings);
                }
                w.on_hello();
                if was != Health::Failed {
                    tracing::warn!(%worker, jobs = lost.len(), "the worker restarted; its jobs are re-queued");
                    self.publish(EventKind::worker_failed(
                        worker.clone(),
                        "the worker process restarted",
                    ));
                }
                // A new life under the same id, with the new process's capabilities (its
                // slots, features and labels may have changed with the restart): what the
                // scheduler knew of the old process must not place tasks on the new one.
                self.publish(EventKind::worker_registered(worker, capabilities));
            }
        }
    }

    /// Every job a worker runs or was sent is abandoned, and no job is posted any more
    /// ([`Hub::abandon_jobs`]).
    fn abandon_jobs(&mut self) {
        self.closing = true;
        for (id, w) in &mut self.workers {
            if w.publisher || (w.running.is_empty() && w.unacked.is_empty()) {
                continue;
            }
            tracing::info!(worker = %id, jobs = w.running.len(), "the run is ending; its jobs are abandoned");
            w.abandon_jobs();
        }
    }

    /// How long a worker is silent before it is taken for failed and its jobs given up (said
    /// in `Welcome`: a worker cut off that long stops its jobs first).
    fn fail_after_ms(&self) -> u64 {
        let after = self.timing.heartbeat_timeout + self.timing.reconnect_grace;
        u64::try_from(after.as_millis()).unwrap_or(u64::MAX)
    }

    fn check_health(&mut self) {
        let now = Instant::now();
        let mut events = Vec::new();
        for (id, w) in &mut self.workers {
            let silent = now.saturating_duration_since(w.last_seen);
            if w.publisher {
                // Not a worker: nothing is re-queued, only said.
                if w.health == Health::Up && silent >= self.timing.heartbeat_timeout {
                    w.health = Health::Silent;
                    tracing::info!(publisher = %id, "a remote publisher is silent");
                }
                continue;
            }
            match w.health {
                Health::Up if silent >= self.timing.heartbeat_timeout => {
                    w.health = Health::Silent;
                    tracing::warn!(worker = %id, "no heartbeat for {:.1} s", silent.as_secs_f64());
                    events.push(EventKind::worker_disconnected(
                        id.clone(),
                        format!(
                            "no heartbeat for {:.1} s; its tasks wait {:.1} s for it",
                            silent.as_secs_f64(),
                            self.timing.reconnect_grace.as_secs_f64()
                        ),
                    ));
                }
                Health::Silent
                    if silent >= self.timing.heartbeat_timeout + self.timing.reconnect_grace =>
                {
                    w.health = Health::Failed;
                    for (_, _, _, done) in std::mem::take(&mut w.reconfiguring).into_values() {
                        let _ = done.send(Err(ClusterError::Unreachable(format!(
                            "the plugin host `{id}` failed before it answered"
                        ))));
                    }
                    w.abandon_jobs();
                    // A hosted plugin's proxy learns it failed; its events stay queued here
                    // and are resent when the host is back.
                    for queue in w.deliveries.values_mut() {
                        for p in queue.iter_mut() {
                            if let Some(done) = p.done.take() {
                                let _ = done.send(Err(ClusterError::Unreachable(format!(
                                    "the plugin host `{id}` failed: silent for {:.1} s",
                                    silent.as_secs_f64()
                                ))));
                            }
                        }
                    }
                    tracing::warn!(worker = %id, "the worker did not come back; its tasks are re-queued");
                    events.push(EventKind::worker_failed(
                        id.clone(),
                        format!("silent for {:.1} s", silent.as_secs_f64()),
                    ));
                }
                _ => {}
            }
        }
        for e in events {
            self.publish(e);
        }
    }
}

fn is_result(kind: &EventKind) -> bool {
    matches!(kind, EventKind::TaskCompleted(_) | EventKind::TaskFailed(_))
}

fn ack_jobs(w: &mut RemoteWorker, received: u64) {
    while w
        .unacked
        .front()
        .is_some_and(|(seq, _, _)| *seq <= received)
    {
        w.unacked.pop_front();
    }
}

/// Sends every unacknowledged job again, in order; returns how many.
fn resend_jobs(w: &mut RemoteWorker) -> u64 {
    let now = Instant::now();
    for (_, frame, sent) in &mut w.unacked {
        *sent = now;
        wire::send_bytes(&w.group, frame.clone());
    }
    w.unacked.len() as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::sync::Mutex;

    use dtf_plugin_core::PluginManager;
    use dtf_plugin_core::event::ShutdownReason;

    use super::*;

    /// A hub loop with no workers and `timing`, and what it hands the publishing task.
    fn test_hub(timing: Timing) -> (HubLoop, mpsc::UnboundedReceiver<Out>) {
        let (out, out_rx) = mpsc::unbounded_channel();
        let hub = HubLoop {
            out,
            timing,
            workers: HashMap::new(),
            applied_results: HashSet::new(),
            counters: Arc::new(Counters::default()),
            next_request: 0,
            hub: 7,
            max_frame: DEFAULT_MAX_FRAME,
            closing: false,
        };
        (hub, out_rx)
    }

    /// A `Hello` of `worker`'s process `incarnation`, with default capabilities and nothing
    /// received.
    fn plain_hello(hub: &mut HubLoop, worker: &WorkerId, incarnation: u64) {
        hub.hello(
            worker.clone(),
            incarnation,
            Capabilities::default(),
            BTreeMap::new(),
            0,
            Vec::new(),
        );
    }

    /// A worker taken for failed has its unacknowledged jobs abandoned (their tasks run
    /// elsewhere) and never resent: the hub records how far they go, which its next `Welcome`
    /// says, so that the worker takes the jobs numbered after them (see the worker's
    /// `a_worker_back_from_failed_takes_the_jobs_after_the_abandoned_ones`).
    #[tokio::test]
    async fn a_failed_workers_abandoned_jobs_are_void_when_it_comes_back() {
        let (mut hub, _out_rx) = test_hub(Timing {
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::ZERO,
            reconnect_grace: Duration::ZERO,
        });
        let w1 = WorkerId::from("w1");
        let hello = |hub: &mut HubLoop, jobs_received| {
            hub.hello(
                w1.clone(),
                5,
                Capabilities::default(),
                BTreeMap::new(),
                jobs_received,
                Vec::new(),
            );
        };
        let job = |task: &str| RemoteJob {
            task: TaskId::from(task),
            attempt: 1,
            spec: serde_json::Value::Null,
        };
        hello(&mut hub, 0);
        hub.post(w1.clone(), job("a"));
        hub.post(w1.clone(), job("b"));
        assert_eq!(hub.workers[&w1].jobs_void_upto, 0);
        // Silent, then failed (both timings are zero).
        hub.check_health();
        hub.check_health();
        let w = &hub.workers[&w1];
        assert_eq!(w.health, Health::Failed);
        assert!(w.unacked.is_empty(), "abandoned jobs are not resent");
        assert_eq!(w.jobs_void_upto, 2);
        // Back with only job 1 received: its next job is 3, and job 2 is void.
        hello(&mut hub, 1);
        hub.post(w1.clone(), job("c"));
        let w = &hub.workers[&w1];
        assert_eq!(w.health, Health::Up);
        assert_eq!(w.jobs_void_upto, 2);
        assert_eq!(
            w.unacked.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(),
            [3]
        );
    }

    /// Of two processes with one id, the newer keeps it: a `Hello` from the one it replaced
    /// (late, or from a twin still running) is refused, not taken for a newer process.
    #[tokio::test]
    async fn a_replaced_incarnation_does_not_take_its_id_back() {
        let (mut hub, _out_rx) = test_hub(Timing::default());
        let w1 = WorkerId::from("w1");
        let hello = |hub: &mut HubLoop, incarnation| plain_hello(hub, &w1, incarnation);
        hello(&mut hub, 5);
        hello(&mut hub, 6);
        assert_eq!(hub.workers[&w1].incarnation, 6);
        hello(&mut hub, 5);
        assert_eq!(
            hub.workers[&w1].incarnation, 6,
            "the replaced process took the id back"
        );
        // The newer one reconnecting is still itself.
        hello(&mut hub, 6);
        assert_eq!(hub.workers[&w1].incarnation, 6);
    }

    /// A worker process restarted under its id with other capabilities (fewer slots, a new
    /// label) is registered again with them. Before, the hub published `WorkerRecovered`,
    /// and the scheduler kept placing tasks by the old process's slots and features.
    #[tokio::test]
    async fn a_restarted_worker_is_registered_with_its_new_capabilities() {
        let (mut hub, mut out_rx) = test_hub(Timing::default());
        let w1 = WorkerId::from("w1");
        let caps = |slots| Capabilities::builder().slots(slots).build();
        hub.hello(w1.clone(), 5, caps(8), BTreeMap::new(), 0, Vec::new());
        let labels = BTreeMap::from([("zone".to_owned(), "eu".to_owned())]);
        hub.hello(w1.clone(), 6, caps(2), labels, 0, Vec::new());
        let mut published = Vec::new();
        while let Ok(item) = out_rx.try_recv() {
            if let Out::One(kind) = item {
                published.push(kind);
            }
        }
        let registered: Vec<&Capabilities> = published
            .iter()
            .filter_map(|k| match k {
                EventKind::WorkerRegistered(r) if r.worker == w1 => Some(&r.capabilities),
                _ => None,
            })
            .collect();
        assert_eq!(registered.len(), 2, "{published:?}");
        assert_eq!(registered[1].slots, 2);
        assert_eq!(registered[1].features, ["zone=eu"]);
        // The old life ends first (its jobs are re-queued), and no `WorkerRecovered` claims
        // the old process is back.
        let failed = published
            .iter()
            .position(|k| matches!(k, EventKind::WorkerFailed(f) if f.worker == w1));
        let again = published
            .iter()
            .rposition(|k| matches!(k, EventKind::WorkerRegistered(_)));
        assert!(failed.is_some() && failed < again, "{published:?}");
        assert!(
            !published
                .iter()
                .any(|k| matches!(k, EventKind::WorkerRecovered(_))),
            "{published:?}"
        );
    }

    /// One batch of frames holds the old process's events and then the hello of a new process
    /// under the same id: the acknowledgement of the old one's events is not sent (the new
    /// one would take it for its own, and drop as many of its events unsent). Found by a
    /// review of the incarnation change.
    #[tokio::test]
    async fn an_acknowledgement_is_not_sent_to_the_process_that_replaced_its_own() {
        let (mut hub, mut out_rx) = test_hub(Timing::default());
        let w1 = WorkerId::from("w1");
        let hello = |hub: &mut HubLoop, incarnation| plain_hello(hub, &w1, incarnation);
        hello(&mut hub, 5);
        let mut acks = Acks::new();
        hub.on_frame(
            FromWorker {
                worker: w1.clone(),
                incarnation: 5,
                body: WorkerFrame::Events {
                    first: 1,
                    kinds: vec![EventKind::custom("step", serde_json::Value::Null); 3],
                },
            },
            &mut acks,
        );
        assert_eq!(acks.get(&w1), Some(&(5, 3)));
        hello(&mut hub, 6);
        hub.acknowledge(acks);
        while let Ok(item) = out_rx.try_recv() {
            assert!(
                !matches!(item, Out::Ack(..)),
                "acknowledged to the new process"
            );
        }
        // The same process still gets its acknowledgements.
        let mut acks = Acks::new();
        acks.insert(w1.clone(), (6, 2));
        hub.acknowledge(acks);
        let mut sent = Vec::new();
        while let Ok(item) = out_rx.try_recv() {
            if let Out::Ack(_, incarnation, upto) = item {
                sent.push((incarnation, upto));
            }
        }
        assert_eq!(sent, [(6, 2)]);
    }

    /// A remote publisher's events come as `Events` under its own source, which the run
    /// tracker does not trust with task results. A job's `Event` frame from it (it runs no
    /// jobs) is refused, not published under `cluster`.
    #[tokio::test]
    async fn a_publisher_cannot_send_a_workers_job_event() {
        let (mut hub, mut out_rx) = test_hub(Timing::default());
        let p = WorkerId::from("p-1");
        hub.publisher_hello(p.clone(), 9);
        let mut acks = Acks::new();
        hub.on_frame(
            FromWorker {
                worker: p.clone(),
                incarnation: 9,
                body: WorkerFrame::Event {
                    seq: 1,
                    job: 1,
                    kind: EventKind::task_started("t", "p-1", 1),
                },
            },
            &mut acks,
        );
        assert!(acks.is_empty(), "{acks:?}");
        assert_eq!(hub.workers[&p].applied, 0);
        while let Ok(item) = out_rx.try_recv() {
            assert!(!matches!(item, Out::One(_)), "published");
        }
    }

    /// At the end of a run the coordinator abandons the remote workers' jobs before it cancels
    /// their tasks: a result that comes after that is dropped and counted as late, not put on
    /// the bus, where it would have turned the cancelled task into a passed one.
    #[tokio::test]
    async fn results_after_the_jobs_were_abandoned_at_the_end_of_a_run_are_dropped() {
        let (mut hub, mut out_rx) = test_hub(Timing::default());
        let w1 = WorkerId::from("w1");
        hub.hello(
            w1.clone(),
            5,
            Capabilities::default(),
            BTreeMap::new(),
            0,
            Vec::new(),
        );
        for task in ["a", "b"] {
            hub.post(
                w1.clone(),
                RemoteJob {
                    task: TaskId::from(task),
                    attempt: 1,
                    spec: serde_json::Value::Null,
                },
            );
        }
        hub.abandon_jobs();
        let w = &hub.workers[&w1];
        assert!(w.running.is_empty() && w.unacked.is_empty());
        assert_eq!(w.jobs_void_upto, 2);
        // A job the scheduler posts after that (it may still be assigning) is not sent.
        hub.post(
            w1.clone(),
            RemoteJob {
                task: TaskId::from("c"),
                attempt: 1,
                spec: serde_json::Value::Null,
            },
        );
        let w = &hub.workers[&w1];
        assert!(w.running.is_empty() && w.unacked.is_empty());
        assert_eq!(w.next_job, 2);
        // Job 1's result comes after all.
        let result = FromWorker {
            worker: w1.clone(),
            incarnation: 5,
            body: WorkerFrame::Event {
                seq: 1,
                job: 1,
                kind: EventKind::task_completed(
                    "a",
                    "w1",
                    dtf_plugin_core::event::TaskOutcome::Passed,
                    Duration::from_millis(3),
                ),
            },
        };
        let mut acks = Acks::new();
        hub.on_frame(result, &mut acks);
        assert_eq!(hub.counters.late_results.load(Ordering::Relaxed), 1);
        // Acknowledged (the worker must not resend it), but not published.
        assert_eq!(acks.get(&w1), Some(&(5, 1)));
        while let Ok(item) = out_rx.try_recv() {
            if let Out::One(kind) = item {
                assert!(!is_result(&kind), "a late result was published: {kind:?}");
            }
        }
    }

    /// The bus refuses events once the run has shut down: acknowledging them (or anything
    /// after them) would make a remote publisher's `flush` succeed for events that are not on
    /// the bus.
    #[tokio::test]
    async fn nothing_is_acknowledged_once_the_bus_refused_events() {
        let manager = PluginManager::builder().spawn().await.unwrap();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let acks = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&acks);
        let task = tokio::spawn(publish_in_order(
            manager.bus(),
            out_rx,
            notes_tx,
            move |group: &str, _incarnation, upto| {
                seen.lock().unwrap().push((group.to_owned(), upto))
            },
        ));
        let events = |n: u64| {
            (0..n)
                .map(|i| EventKind::custom("harness.step", serde_json::json!({ "i": i })))
                .collect::<Vec<_>>()
        };
        // Everything before a note has been handled once the note comes out.
        let mut handled = async |out: &mpsc::UnboundedSender<Out>| {
            out.send(Out::Note(HubNote::Registered(WorkerId::from("x"))))
                .unwrap();
            notes.recv().await.unwrap();
        };

        out.send(Out::Batch("remote:publisher".into(), events(2)))
            .unwrap();
        out.send(Out::Ack("publisher".to_owned(), 1, 2)).unwrap();
        handled(&out).await;
        assert_eq!(*acks.lock().unwrap(), [("publisher".to_owned(), 2)]);

        manager.shutdown(ShutdownReason::Completed).await;
        out.send(Out::Batch("remote:publisher".into(), events(2)))
            .unwrap();
        out.send(Out::Ack("publisher".to_owned(), 1, 4)).unwrap();
        out.send(Out::One(EventKind::worker_failed("w", "gone")))
            .unwrap();
        out.send(Out::Ack("worker".to_owned(), 1, 1)).unwrap();
        handled(&out).await;
        assert_eq!(
            *acks.lock().unwrap(),
            [("publisher".to_owned(), 2)],
            "acknowledged after the bus refused events"
        );
        drop(out);
        task.await.unwrap();
    }
}
