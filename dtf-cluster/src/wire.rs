//! What crosses the network: one ractor_cluster message type carrying JSON frames, and the
//! frames themselves (docs/cluster.md, "Message flow").

use std::collections::BTreeMap;

use dtf_plugin_core::Hook;
use dtf_plugin_core::event::{Capabilities, Event, EventKind, PluginKind, TaskId, WorkerId};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The process group the coordinator's inbox joins.
pub(crate) const HUB_GROUP: &str = "dtf.coordinator";

/// The process group worker `id`'s inbox joins.
pub(crate) fn worker_group(id: &str) -> String {
    format!("dtf.worker.{id}")
}

/// The only message type sent between nodes: a JSON-encoded frame.
#[derive(RactorClusterMessage)]
pub(crate) enum Wire {
    /// One frame.
    Frame(Vec<u8>),
}

/// One unit of work for a remote worker. `spec` is the embedding coordinator's own task
/// description (opaque to this crate), e.g. a shell command and its timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteJob {
    /// The task.
    pub task: TaskId,
    /// The attempt, from 1.
    pub attempt: u32,
    /// What to run.
    pub spec: serde_json::Value,
}

/// A plugin a node hosts for the coordinator (`dtf-worker --plugins NAME`): what the
/// coordinator's manager lists for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedPlugin {
    /// Its name in the coordinator's manager.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its kind.
    pub kind: PluginKind,
    /// The hooks it subscribes to.
    pub hooks: Vec<Hook>,
}

/// Worker to coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FromWorker {
    pub(crate) worker: WorkerId,
    /// Random per worker process: a new one means the worker restarted and lost its state.
    pub(crate) incarnation: u64,
    pub(crate) body: WorkerFrame,
}

/// Externally tagged (`{"events":{...}}`), unlike the internally tagged style elsewhere: serde
/// decodes an internally tagged enum by buffering the whole body first, which for a frame of
/// a thousand events doubles the hub's decoding work.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkerFrame {
    /// Sent after every (re)connection.
    Hello {
        capabilities: Capabilities,
        labels: BTreeMap<String, String>,
        /// The highest job sequence number received in order (an acknowledgement).
        jobs_received: u64,
        /// The plugins it hosts for the coordinator.
        #[serde(default)]
        plugins: Vec<HostedPlugin>,
        /// A remote publisher ([`crate::RemotePublisher`]): not a worker, runs no jobs, is
        /// not registered on the bus.
        #[serde(default)]
        publisher: bool,
        /// The id of the coordinator run that welcomed this node before (`Welcome::hub`), if
        /// any: a coordinator restarted on the same address refuses a node of its previous
        /// run, whose numbering it does not know.
        #[serde(default)]
        hub: Option<u64>,
        /// The node's frame cap (`max_frame` of its configuration). The hub refuses a node
        /// whose cap differs from its own: a frame over the receiver's cap closes the
        /// connection, and the sender would reconnect and resend it forever.
        #[serde(default)]
        max_frame: Option<u64>,
    },
    /// The hosted `plugin` handled every delivered event up to the coordinator's bus
    /// sequence number `upto` (cumulative).
    Handled { plugin: String, upto: u64 },
    /// The answer to `Reconfigure` `id` of the hosted `plugin`: `error` when its manager
    /// rejected the settings (they are not in force).
    Reconfigured {
        plugin: String,
        id: u64,
        error: Option<String>,
    },
    /// An event about a job, numbered per incarnation from 1.
    Event {
        seq: u64,
        /// The job's sequence number, so that a late result of an abandoned job is told
        /// apart from the result of the same task's re-run.
        job: u64,
        kind: EventKind,
    },
    /// Events of a remote publisher, numbered `first`, `first + 1`, … in the same sequence
    /// as `Event` frames.
    Events { first: u64, kinds: Vec<EventKind> },
    /// Every `heartbeat_interval`; also acknowledges jobs.
    Heartbeat { jobs_received: u64 },
    /// Never on the wire: made by the coordinator's inbox for a frame whose envelope decodes
    /// but whose body does not (another version), described by [`decode_failure`].
    #[serde(skip)]
    Undecodable { failure: String },
}

/// What an inbox makes of a frame it cannot decode.
pub(crate) trait Undecodable: Sized {
    /// A frame standing for `bytes`, which failed to decode with `failure`, if the inbox's
    /// owner should hear of it (by default it is only logged).
    fn undecodable(_bytes: &[u8], _failure: String) -> Option<Self> {
        None
    }
}

impl Undecodable for HubFrame {}

impl Undecodable for FromWorker {
    /// Who sent it, when the envelope decodes: the hub refuses that node rather than leave
    /// it resending a frame that will never decode.
    fn undecodable(bytes: &[u8], failure: String) -> Option<Self> {
        #[derive(Deserialize)]
        struct Envelope {
            worker: WorkerId,
            incarnation: u64,
        }
        let Envelope {
            worker,
            incarnation,
        } = serde_json::from_slice(bytes).ok()?;
        Some(FromWorker {
            worker,
            incarnation,
            body: WorkerFrame::Undecodable { failure },
        })
    }
}

/// The head of an `Events` frame as the publisher sends it, with an empty list: the events,
/// already encoded by the caller's task, are spliced in (`WorkerLoop::events_frame`). With
/// them it decodes as [`WorkerFrame::Events`].
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EncodedEvents {
    Events { first: u64, kinds: [u8; 0] },
}

/// Coordinator to worker.
/// Externally tagged, as [`WorkerFrame`] is (an event delivered to a host is decoded without
/// buffering).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HubFrame {
    /// The answer to `Hello`: events up to `events_applied` need not be resent. `hub` is
    /// the coordinator run's random id (0 from a version without it). Jobs up to
    /// `jobs_void_upto` will not come (they were abandoned: the worker was declared failed,
    /// or the run is ending): the worker's next job is numbered after them. A worker silent
    /// for `fail_after_ms` is taken for failed and its jobs given up (0 from a version
    /// without it): a worker cut off from the coordinator that long stops its jobs first.
    Welcome {
        /// The node incarnation this answers (see [`HubFrame::is_for`]).
        #[serde(default)]
        incarnation: u64,
        events_applied: u64,
        #[serde(default)]
        hub: u64,
        #[serde(default)]
        jobs_void_upto: u64,
        #[serde(default)]
        fail_after_ms: u64,
    },
    /// A job, numbered per worker incarnation from 1.
    Job {
        #[serde(default)]
        incarnation: u64,
        seq: u64,
        job: RemoteJob,
    },
    /// Events up to `upto` were applied (cumulative); also the answer to a heartbeat.
    Ack {
        #[serde(default)]
        incarnation: u64,
        upto: u64,
    },
    /// An event after `after` arrived out of order (one was lost in a cut): resend every
    /// unacknowledged event.
    Resend {
        #[serde(default)]
        incarnation: u64,
        after: u64,
    },
    /// An event for the hosted `plugin`, in the coordinator's publish order. Its bus
    /// sequence number orders and deduplicates it on the host.
    Deliver { plugin: String, event: Event },
    /// New settings for the hosted `plugin` (the coordinator's `reconfigure` of its proxy),
    /// applied by the host's manager in order with the plugin's events; `id` grows with
    /// every request.
    Reconfigure {
        plugin: String,
        id: u64,
        settings: serde_json::Value,
    },
    /// The run is over: the worker exits.
    Goodbye,
    /// The node whose incarnation is `incarnation` is refused (its id is another kind of node's in
    /// this run, an earlier coordinator run welcomed it, its frames do not decode, or its frame cap
    /// differs from the hub's): that node stops with `reason`. Sent to every node in the id's
    /// group, since a node already holding the id is in it too; the others ignore it.
    Refused { incarnation: u64, reason: String },
}

impl HubFrame {
    /// Whether the node of `incarnation` acts on this frame.
    ///
    /// Frames go to a worker id's group, and two processes with one id (a restarted node
    /// whose predecessor has not left yet, or a twin) are both in it. What a `Welcome`, `Job`,
    /// `Ack`, `Resend` or `Refused` says is about one process's numbering (its events, its
    /// jobs), so only that process acts on it: an `Ack { upto: 50 }` meant for the old process
    /// made the new one drop its first 50 events unsent, and a job numbered for the old one
    /// could run on the new one after the hub had given its task to another worker. 0 (a
    /// coordinator of a version without the field) is for every node, as before.
    /// `Deliver` and `Reconfigure` are for whichever process hosts the id's plugins now
    /// (deduplicated by bus sequence and request id), and `Goodbye` is for everyone.
    pub(crate) fn is_for(&self, incarnation: u64) -> bool {
        let to = match self {
            Self::Welcome { incarnation, .. }
            | Self::Job { incarnation, .. }
            | Self::Ack { incarnation, .. }
            | Self::Resend { incarnation, .. }
            | Self::Refused { incarnation, .. } => *incarnation,
            Self::Deliver { .. } | Self::Reconfigure { .. } | Self::Goodbye => 0,
        };
        to == 0 || to == incarnation
    }
}

/// Worker to coordinator, borrowed: serializes exactly as [`FromWorker`] without cloning the
/// id or the body (a [`WorkerFrame`] or an [`EncodedEvents`]).
#[derive(Serialize)]
pub(crate) struct FromWorkerRef<'a, B> {
    pub(crate) worker: &'a WorkerId,
    pub(crate) incarnation: u64,
    pub(crate) body: &'a B,
}

/// `frame` as the bytes of a [`Wire::Frame`].
pub(crate) fn encode<T: Serialize>(frame: &T) -> Option<Vec<u8>> {
    match serde_json::to_vec(frame) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::error!(error = %e, "a cluster frame could not be encoded");
            None
        }
    }
}

/// A node's inbox: an actor that joins `group` and hands each decoded frame to `sink`.
pub(crate) struct Inbox<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Inbox<T> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> Actor for Inbox<T>
where
    T: for<'de> Deserialize<'de> + Undecodable + Send + 'static,
{
    type Msg = Wire;
    type State = mpsc::UnboundedSender<T>;
    type Arguments = (String, mpsc::UnboundedSender<T>);

    async fn pre_start(
        &self,
        myself: ActorRef<Wire>,
        (group, sink): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(group, vec![myself.get_cell()]);
        Ok(sink)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Wire>,
        message: Wire,
        sink: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Wire::Frame(bytes) = message;
        match serde_json::from_slice::<T>(&bytes) {
            Ok(frame) => {
                let _ = sink.send(frame);
            }
            // A peer that passed the cookie handshake but speaks another protocol (or
            // another version): the frame is dropped and said once per frame. serde's message
            // is not logged: it may quote a string of the frame (an event may carry a token).
            Err(e) => {
                let failure = decode_failure(&e);
                tracing::warn!(
                    error = %failure,
                    bytes = bytes.len(),
                    "a cluster frame could not be decoded; dropped"
                );
                if let Some(frame) = T::undecodable(&bytes, failure) {
                    let _ = sink.send(frame);
                }
            }
        }
        Ok(())
    }
}

/// What went wrong in decoding a frame, without serde's message, which may quote a string of
/// the frame (an event may carry a token): the kind of error and where.
pub(crate) fn decode_failure(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a value of the wrong shape (another dtf version?)",
        serde_json::error::Category::Eof => "cut short",
    };
    format!("{kind} at line {}, column {}", e.line(), e.column())
}

/// The remote member of `group` on the newest session (the local inbox of the same group is
/// left out). After a reconnect the member of the closed session may linger in the group
/// for a moment; node ids grow with every session, so the newest is the live one.
pub(crate) fn remote_member(group: &str) -> Option<ActorRef<Wire>> {
    newest_remote(group).map(|(_, cell)| ActorRef::<Wire>::from(cell))
}

/// The node id and cell of `group`'s remote member on the newest session.
pub(crate) fn newest_remote(group: &str) -> Option<(u64, ractor::ActorCell)> {
    ractor::pg::get_members(&group.to_owned())
        .into_iter()
        .filter_map(|cell| match cell.get_id() {
            ractor::ActorId::Remote { node_id, .. } => Some((node_id, cell)),
            ractor::ActorId::Local(_) => None,
        })
        .max_by_key(|(node_id, _)| *node_id)
}

/// Sends `frame` to the remote member of `group`; `false` when there is none (the
/// connection is down) or the send failed. The caller keeps what it must resend.
pub(crate) fn send_to<T: Serialize>(group: &str, frame: &T) -> bool {
    encode(frame).is_some_and(|bytes| send_bytes(group, bytes))
}

/// Sends `frame` to every remote member of `group` (old sessions' members included).
pub(crate) fn send_to_all<T: Serialize>(group: &str, frame: &T) {
    let Some(bytes) = encode(frame) else { return };
    for cell in ractor::pg::get_members(&group.to_owned()) {
        if matches!(cell.get_id(), ractor::ActorId::Remote { .. }) {
            let _ = ActorRef::<Wire>::from(cell).cast(Wire::Frame(bytes.clone()));
        }
    }
}

/// Sends an encoded frame (see [`encode`]) to the remote member of `group`.
pub(crate) fn send_bytes(group: &str, bytes: Vec<u8>) -> bool {
    remote_member(group).is_some_and(|actor| actor.cast(Wire::Frame(bytes)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames about one process's numbering reach every process with its id: only the
    /// process they are for acts on them. A frame from a coordinator that does not say (0)
    /// is for every process, as before.
    #[test]
    fn a_frame_for_one_incarnation_is_ignored_by_another() {
        let ack: HubFrame = serde_json::from_str(r#"{"ack":{"incarnation":5,"upto":50}}"#)
            .unwrap_or(HubFrame::Goodbye);
        assert!(matches!(ack, HubFrame::Ack { upto: 50, .. }), "{ack:?}");
        assert!(ack.is_for(5));
        assert!(!ack.is_for(6), "a new process dropped events it never sent");
        let job = HubFrame::Job {
            incarnation: 5,
            seq: 1,
            job: RemoteJob {
                task: "t".into(),
                attempt: 1,
                spec: serde_json::Value::Null,
            },
        };
        assert!(job.is_for(5) && !job.is_for(6));
        let older: HubFrame =
            serde_json::from_str(r#"{"ack":{"upto":3}}"#).unwrap_or(HubFrame::Goodbye);
        assert!(matches!(
            older,
            HubFrame::Ack {
                incarnation: 0,
                upto: 3
            }
        ));
        assert!(older.is_for(5) && older.is_for(6));
        // A hosted plugin's events are for whichever process hosts it now.
        let deliver = HubFrame::Reconfigure {
            plugin: "p".to_owned(),
            id: 1,
            settings: serde_json::Value::Null,
        };
        assert!(deliver.is_for(5) && deliver.is_for(6));
    }

    #[test]
    fn a_decode_failure_says_where_but_quotes_nothing_of_the_frame() {
        // An event kind this version does not know, with a token in it.
        let frame = br#"{"worker":"p-1","incarnation":7,"body":{"events":{"first":1,"kinds":[{"type":"newer_kind","data":"xoxb-not-a-real-token"}]}}}"#;
        let Err(e) = serde_json::from_slice::<FromWorker>(frame) else {
            panic!("decoded a frame of an unknown event kind");
        };
        let said = decode_failure(&e);
        assert!(said.starts_with("a value of the wrong shape"), "{said}");
        assert!(said.contains("line 1, column "), "{said}");
        assert!(
            !said.contains("xoxb") && !said.contains("newer_kind"),
            "{said}"
        );
        // What serde itself says quotes the frame: that is why it is not logged.
        let serde_said = e.to_string();
        assert!(serde_said.contains("newer_kind"), "{serde_said}");

        // The hub hears who sent it, to refuse that node.
        let Some(FromWorker {
            worker,
            incarnation,
            body: WorkerFrame::Undecodable { failure },
        }) = FromWorker::undecodable(frame, said.clone())
        else {
            panic!("the sender of an undecodable frame was not told");
        };
        assert_eq!((worker.as_str(), incarnation, failure), ("p-1", 7, said));
        // Not even the envelope: nobody to tell.
        assert!(FromWorker::undecodable(b"{\"worker\":", String::new()).is_none());
    }
}
