//! [`RemotePublisher`]: events published on another machine land on the coordinator's bus,
//! in order, exactly once per publisher process (docs/cluster.md, "Remote publishers").

use std::sync::Arc;

use dtf_plugin_core::event::EventKind;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ClusterError;
use crate::worker::{self, PublisherCommand, PublisherLink, WorkerConfig, WorkerExit};

/// Events handed over and not yet acknowledged by the coordinator, at most (the default of
/// [`RemotePublisher::connect`]); a publisher past it waits.
pub const DEFAULT_PUBLISH_WINDOW: u32 = 65_536;

/// Events per frame, at most; bigger batches are split.
const MAX_FRAME_EVENTS: usize = 4_096;

/// The size a frame is cut at (below the frame cap): frames stay below glibc's threshold for
/// serving an allocation with its own `mmap` (128 KiB), so their buffers are reused instead of
/// mapped, page-faulted and unmapped per frame on both sides.
const FRAME_TARGET_BYTES: usize = 64 * 1024;

/// Room left in a frame for the envelope around the events (id, incarnation, tags).
pub(crate) const ENVELOPE_BYTES: u64 = 1_024;

/// A connection that publishes events onto a remote coordinator's bus, for a process that is
/// not a worker: a test harness on another machine, a device farm's controller, a CI
/// runner's log shipper.
///
/// Events are numbered and kept until the coordinator acknowledges them: they are resent
/// after a reconnection and deduplicated there, so each one lands on the bus exactly once
/// and in the order handed over (per publisher process; a process that restarts starts a
/// new sequence). At most `window` events are unacknowledged; past that,
/// [`publish_batch`](Self::publish_batch) waits, so a slow bus slows the publisher instead
/// of growing its memory. Encoding runs in the caller's task; consecutive batches share a
/// frame.
///
/// The coordinator accepts any event except its own `CoordinatorStartup` and
/// `CoordinatorShutdown`, which it drops and counts ([`crate::HubStats::rejected`]). A
/// publisher is not a worker: it gets no `WorkerRegistered` and no jobs. Dropping it
/// disconnects at once; [`close`](Self::close) flushes first.
///
/// ```no_run
/// # async fn demo() -> Result<(), dtf_cluster::ClusterError> {
/// use dtf_cluster::{Cookie, RemotePublisher, Transport, WorkerConfig};
/// use dtf_plugin_core::event::{Capabilities, EventKind};
///
/// let config = WorkerConfig::new(
///     "127.0.0.1:7700",
///     "harness-7",
///     Capabilities::default(),
///     Cookie::load(None)?,
///     Transport::Insecure,
/// );
/// let publisher = RemotePublisher::connect(config).await?;
/// publisher
///     .publish_batch((0..100).map(|i| EventKind::custom("harness.step", serde_json::json!({ "i": i }))))
///     .await?;
/// publisher.close().await?; // flushes first
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RemotePublisher {
    commands: mpsc::UnboundedSender<PublisherCommand>,
    window: Arc<Semaphore>,
    /// The most an event may take (the frame cap less the envelope).
    max_bytes: usize,
    /// Where frames are cut (`FRAME_TARGET_BYTES`, or less under a small cap).
    frame_target: usize,
    node: JoinHandle<Result<WorkerExit, ClusterError>>,
}

impl RemotePublisher {
    /// Connects to the coordinator at `config.coordinator` (TLS, cookie and timing as for a
    /// worker; `capabilities` and `labels` are not used) with a window of
    /// [`DEFAULT_PUBLISH_WINDOW`] events. Resolves once connected.
    ///
    /// # Errors
    ///
    /// As [`crate::run_worker`]: [`ClusterError::Unreachable`] when the coordinator cannot be
    /// reached within `give_up_after`, [`ClusterError::Start`], [`ClusterError::Tls`].
    pub async fn connect(config: WorkerConfig) -> Result<Self, ClusterError> {
        Self::with_window(config, DEFAULT_PUBLISH_WINDOW).await
    }

    /// [`connect`](Self::connect) with at most `window` events unacknowledged (at least
    /// 4,096, the most events one frame carries).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn with_window(config: WorkerConfig, window: u32) -> Result<Self, ClusterError> {
        let window = Arc::new(Semaphore::new((window as usize).max(MAX_FRAME_EVENTS)));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready) = oneshot::channel();
        let max_bytes =
            usize::try_from(config.max_frame.saturating_sub(ENVELOPE_BYTES)).unwrap_or(usize::MAX);
        let frame_target = max_bytes.min(FRAME_TARGET_BYTES);
        let link = PublisherLink {
            commands: commands_rx,
            window: Arc::clone(&window),
            ready: ready_tx,
            frame_target,
        };
        let node = tokio::spawn(worker::serve(config, None, None, Some(link)));
        if ready.await.is_err() {
            // The node ended before it connected: its error says why.
            return Err(match node.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) | Err(_) => ClusterError::Closed,
            });
        }
        Ok(Self {
            commands,
            window,
            max_bytes,
            frame_target,
            node,
        })
    }

    /// Publishes one event. Prefer [`publish_batch`](Self::publish_batch) for many: it encodes
    /// and frames them together.
    ///
    /// # Errors
    ///
    /// As [`publish_batch`](Self::publish_batch).
    pub async fn publish(&self, kind: EventKind) -> Result<(), ClusterError> {
        self.publish_batch(std::iter::once(kind)).await
    }

    /// Hands `kinds` over, in order; resolves once they are queued for sending (waiting while
    /// the window is full), not when they are on the bus: [`flush`](Self::flush) waits for
    /// that.
    ///
    /// # Errors
    ///
    /// [`ClusterError::TooLarge`] for an event whose encoding exceeds the frame cap (the
    /// events before it were handed over, none after it); [`ClusterError::Encode`] when an
    /// event cannot be encoded; [`ClusterError::Closed`] when the connection is gone for
    /// good (the coordinator ended the run or could not be reached for `give_up_after`).
    pub async fn publish_batch(
        &self,
        kinds: impl IntoIterator<Item = EventKind>,
    ) -> Result<(), ClusterError> {
        // One pass: each event is encoded straight into the current frame's array, which is
        // handed over when the next event would take it past FRAME_TARGET_BYTES or
        // MAX_FRAME_EVENTS (that event moves to the next array).
        let target = self.frame_target;
        let mut json: Vec<u8> = Vec::with_capacity(target + 1);
        let mut count = 0usize;
        for kind in kinds {
            let mark = json.len();
            json.push(if count == 0 { b'[' } else { b',' });
            serde_json::to_writer(&mut json, &kind).map_err(|e| {
                tracing::error!(error = %e, "an event could not be encoded");
                ClusterError::Encode("an event for the coordinator's bus")
            })?;
            let size = json.len() - mark - 1;
            if size + 2 > self.max_bytes {
                json.truncate(mark);
                self.hand_over(json, count).await?;
                return Err(ClusterError::TooLarge {
                    bytes: size,
                    max: self.max_bytes,
                });
            }
            if count > 0 && (json.len() + 1 > target || count == MAX_FRAME_EVENTS) {
                let tail = json.split_off(mark + 1);
                json.truncate(mark);
                self.hand_over(json, count).await?;
                json = Vec::with_capacity(target + 1);
                json.push(b'[');
                json.extend_from_slice(&tail);
                count = 0;
            }
            count += 1;
        }
        self.hand_over(json, count).await
    }

    /// Hands the array `json` (without its closing bracket) of `count` events to the node's
    /// loop, once the window has room for them.
    async fn hand_over(&self, mut json: Vec<u8>, count: usize) -> Result<(), ClusterError> {
        if count == 0 {
            return Ok(());
        }
        json.push(b']');
        // count ≤ MAX_FRAME_EVENTS ≤ the window's permits.
        let permits = u32::try_from(count).unwrap_or(u32::MAX);
        self.window
            .acquire_many(permits)
            .await
            .map_err(|_| ClusterError::Closed)?
            .forget();
        self.commands
            .send(PublisherCommand::Batch {
                count: count as u64,
                json,
            })
            .map_err(|_| ClusterError::Closed)
    }

    /// Resolves once every event handed over before the call is on the coordinator's bus
    /// (acknowledged; resent across reconnections until then).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Closed`] when the connection is gone for good first.
    pub async fn flush(&self) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(PublisherCommand::Flush(tx))
            .map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)
    }

    /// Flushes, then disconnects.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush), or the error that ended the connection: e.g.
    /// [`ClusterError::Rejected`] when the coordinator refused this publisher (its id is a
    /// worker's, the coordinator restarted since it welcomed the publisher, or it cannot decode
    /// the publisher's frames), in which case its unacknowledged events were not delivered.
    pub async fn close(self) -> Result<(), ClusterError> {
        let flushed = self.flush().await;
        let Self { commands, node, .. } = self;
        drop(commands);
        let ended = node.await.map_err(|_| ClusterError::Closed)?;
        // The node's own error (e.g. the coordinator unreachable) says more than `Closed`.
        ended?;
        flushed
    }
}
