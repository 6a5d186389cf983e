//! Multi-machine runs for dtf on `ractor_cluster`, ractor's own distributed engine.
//!
//! A coordinator starts a [`Hub`]: it listens (on 127.0.0.1 unless told otherwise), and every
//! worker node that connects with [`run_worker`] and the cluster's [`Cookie`] is registered
//! on the coordinator's bus (`WorkerRegistered`) with its capabilities. The scheduler places
//! tasks on it as on a local worker; the coordinator hands each job to [`Hub::post`]; the
//! worker runs it with the embedding application's [`JobRunner`] and its `TaskStarted`,
//! `TaskCompleted` and `TaskFailed` arrive on the coordinator's bus.
//!
//! ractor_cluster promises nothing across a reconnect, so this crate does
//! (docs/cluster.md):
//!
//! - every frame carries the worker's *incarnation* (random per process) and a sequence
//!   number; the receiver acknowledges cumulatively; what is unacknowledged is resent after
//!   every reconnection; duplicates are dropped and counted ([`HubStats`]);
//! - a result is applied once per attempt; a worker silent for `heartbeat_timeout` is
//!   `WorkerDisconnected`, and after `reconnect_grace` more `WorkerFailed` (its tasks are
//!   re-queued); a late result of a job abandoned that way is dropped: **the re-run wins**;
//! - TLS (rustls on ring) unless [`Transport::Insecure`] is chosen explicitly, which logs a
//!   warning at every start; the cookie is at least 32 bytes; frames above 4 MiB close the
//!   connection; TLS handshakes run off the accept path with a 5 s deadline, at most 256 at
//!   once; refusals are logged, at most one line per second.
//!
//! ```no_run
//! # async fn demo(bus: dtf_plugin_core::Bus) -> Result<(), dtf_cluster::ClusterError> {
//! use dtf_cluster::{Cookie, Hub, HubConfig, HubNote, Transport};
//!
//! let cookie = Cookie::load(None)?; // DTF_CLUSTER_COOKIE
//! let config = HubConfig::new("127.0.0.1:7700".parse().expect("an address"), cookie, Transport::Insecure);
//! let (hub, mut notes) = Hub::start(config, bus).await?;
//! while let Some(note) = notes.recv().await {
//!     if let HubNote::Registered(worker) = note {
//!         tracing::info!(%worker, "a worker joined");
//!     }
//! }
//! hub.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod host;
mod hub;
mod net;
mod publisher;
mod wire;
mod worker;

pub use config::{
    COOKIE_ENV, Cookie, DEFAULT_MAX_FRAME, MIN_COOKIE_LEN, Timing, TlsFiles, Transport,
};
pub use host::{DELIVERY_WINDOW, PluginHost, RemotePlugin};
pub use hub::{Delivery, Hub, HubConfig, HubHandle, HubNote, HubStats};
pub use net::{HANDSHAKE_DEADLINE, MAX_PENDING_HANDSHAKES};
pub use publisher::{DEFAULT_PUBLISH_WINDOW, RemotePublisher};
pub use wire::{HostedPlugin, RemoteJob};
pub use worker::{JobRunner, WorkerConfig, WorkerExit, run_node, run_worker};

/// What can go wrong in the cluster layer. No variant's message contains the cookie.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The cookie is missing, unreadable or too short.
    #[error("cluster cookie: {0}")]
    Cookie(String),
    /// A certificate or key cannot be read or used.
    #[error("cluster TLS: {0}")]
    Tls(String),
    /// The node or its listener cannot start.
    #[error("cluster start: {0}")]
    Start(String),
    /// The coordinator cannot be reached.
    #[error("cannot reach the coordinator at {0}")]
    Unreachable(String),
    /// A frame could not be encoded (logged with serde's reason).
    #[error("a cluster frame could not be encoded: {0}")]
    Encode(&'static str),
    /// A plugin host refused a request (e.g. its manager rejected new settings).
    #[error("the plugin host refused: {0}")]
    Refused(String),
    /// An event is bigger than a frame may be; it was not sent.
    #[error("an event of {bytes} bytes exceeds the cluster frame cap ({max} bytes); not sent")]
    TooLarge {
        /// The event's encoded size.
        bytes: usize,
        /// What a frame may carry.
        max: usize,
    },
    /// The hub was shut down, or a node's connection is gone for good.
    #[error("the cluster connection is closed")]
    Closed,
    /// The coordinator refused this node, e.g. because its id belongs to another kind of node
    /// in the run (a remote publisher using a worker's id, or the reverse).
    #[error("the coordinator refused this node: {0}")]
    Rejected(String),
}
