//! Nodes and connections: a ractor_cluster `NodeServer` per process, the coordinator's own
//! accept loop (TLS handshakes off the accept path, with a deadline and a cap), and the
//! log lines that say why a connection was refused, rate-limited.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    IncomingEncryptionMode, NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::ClusterError;
use crate::config::Cookie;

/// The longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// The most connections in their TLS handshake at once; more are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// Starts this process's ractor_cluster node. Its own listener is bound to a random port on
/// 127.0.0.1 (ractor_cluster always starts one; the coordinator accepts on its own loop,
/// [`accept_loop`]), with TLS when `acceptor` is given.
pub(crate) async fn start_node(
    name: String,
    cookie: &Cookie,
    acceptor: Option<TlsAcceptor>,
    max_frame: u64,
) -> Result<ActorRef<NodeServerMessage>, ClusterError> {
    let encryption = acceptor.map(IncomingEncryptionMode::Tls);
    let server = NodeServer::new(
        0,
        cookie.expose(),
        name,
        "127.0.0.1".to_owned(),
        encryption,
        None,
    )
    .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST))
    .with_max_inbound_frame_size(max_frame);
    let (node, _handle) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| ClusterError::Start(format!("the cluster node: {e}")))?;
    Ok(node)
}

/// Counts refusals and logs at most one line per second (with how many were not logged), so
/// that a flood of bad connections cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    total: AtomicU64,
    suppressed: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Refusals {
    pub(crate) fn refuse(&self, peer: &str, why: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            peer,
            suppressed,
            "refused a cluster connection: {why} (the coordinator keeps running)"
        );
    }

    /// Connections refused so far.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Accepts connections on `listener` until the task is aborted. Each handshake runs in its
/// own task with [`HANDSHAKE_DEADLINE`]; at most [`MAX_PENDING_HANDSHAKES`] at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    node: ActorRef<NodeServerMessage>,
    acceptor: Option<TlsAcceptor>,
    refusals: Arc<Refusals>,
) {
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                refusals.refuse("-", &format!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if pending.load(Ordering::Relaxed) >= MAX_PENDING_HANDSHAKES {
            refusals.refuse(&peer.to_string(), "too many connections in their handshake");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        pending.fetch_add(1, Ordering::Relaxed);
        let (node, acceptor, refusals, pending) = (
            node.clone(),
            acceptor.clone(),
            Arc::clone(&refusals),
            Arc::clone(&pending),
        );
        tokio::spawn(async move {
            let opened = match acceptor {
                None => Some(NetworkStream::Raw {
                    peer_addr: peer,
                    local_addr: local,
                    stream,
                }),
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Some(NetworkStream::TlsServer {
                            peer_addr: peer,
                            local_addr: local,
                            stream,
                        }),
                        Ok(Err(e)) => {
                            refusals
                                .refuse(&peer.to_string(), &format!("TLS handshake failed: {e}"));
                            None
                        }
                        Err(_) => {
                            refusals.refuse(&peer.to_string(), "no TLS handshake within 5 s");
                            None
                        }
                    }
                }
            };
            pending.fetch_sub(1, Ordering::Relaxed);
            if let Some(stream) = opened {
                let _ = node.cast(NodeServerMessage::ConnectionOpened {
                    stream: Box::new(stream),
                    is_server: true,
                });
            }
        });
    }
}

/// A link change seen by a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// The session with this node id finished its handshake and state exchange.
    Ready(u64),
    /// The session with this node id ended.
    Down(u64),
}

/// Reports link changes, and logs sessions that ended before authenticating (a wrong
/// cookie, or a peer that is not a dtf node).
pub(crate) struct Watch {
    pub(crate) links: mpsc::UnboundedSender<Link>,
    pub(crate) authenticated: Arc<Mutex<HashSet<ActorId>>>,
    pub(crate) refusals: Arc<Refusals>,
}

impl NodeEventSubscription for Watch {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let id = ses.actor.get_id();
        let was = self
            .authenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if was {
            let _ = self.links.send(Link::Down(ses.node_id));
        } else {
            self.refusals.refuse(
                &ses.peer_addr,
                "the session ended before authenticating (a wrong cookie, or not a dtf node)",
            );
        }
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ses.actor.get_id());
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let _ = self.links.send(Link::Ready(ses.node_id));
    }
}

/// Subscribes a [`Watch`] to `node`; returns the link changes.
pub(crate) fn watch(
    node: &ActorRef<NodeServerMessage>,
    refusals: Arc<Refusals>,
) -> mpsc::UnboundedReceiver<Link> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = node.cast(NodeServerMessage::SubscribeToEvents {
        id: "dtf-cluster".to_owned(),
        subscription: Box::new(Watch {
            links: tx,
            authenticated: Arc::default(),
            refusals,
        }),
    });
    rx
}

/// Binds the coordinator's listener.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, ClusterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ClusterError::Start(format!("listen on {addr}: {e}")))
}
