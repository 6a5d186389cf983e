//! Benchmarks only: see `benches/dispatch.rs` and `README.md`. The library holds what the
//! benches share with their helper process `dtf-bench-worker`: the raw ractor_cluster
//! baseline of the remote-publish bench ([`raw`]) and its events ([`published`]).

pub mod raw {
    //! The baseline of `benches/remote_publish.rs`: events cast to a remote actor with
    //! ractor_cluster alone, encoded with the same JSON as dtf's frames, decoded and counted
    //! by the receiver. No numbering, no acknowledgement, no resend, no bus.

    use dtf_plugin_core::event::EventKind;
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
    use ractor_cluster::RactorClusterMessage;

    /// The process group the receiver joins.
    pub const GROUP: &str = "dtf.bench.raw";

    /// A batch of events as one ractor_cluster message.
    #[derive(Debug)]
    pub struct Events(pub Vec<EventKind>);

    impl ractor::BytesConvertable for Events {
        fn into_bytes(self) -> Vec<u8> {
            serde_json::to_vec(&self.0).unwrap_or_default()
        }

        fn from_bytes(bytes: Vec<u8>) -> Self {
            // A frame that does not decode counts as no events: the sender's check of the
            // count then fails loudly.
            Self(serde_json::from_slice(&bytes).unwrap_or_default())
        }
    }

    /// What the baseline sends.
    #[derive(RactorClusterMessage)]
    pub enum RawMsg {
        /// Events to count.
        Batch(Events),
        /// How many events arrived since the last ask (answered after every batch sent
        /// before it: one connection keeps its order).
        #[rpc]
        Count(RpcReplyPort<u64>),
    }

    /// The receiver: counts events.
    #[derive(Debug)]
    pub struct Receiver;

    impl Actor for Receiver {
        type Msg = RawMsg;
        type State = u64;
        type Arguments = ();

        async fn pre_start(
            &self,
            myself: ActorRef<RawMsg>,
            (): (),
        ) -> Result<u64, ActorProcessingErr> {
            ractor::pg::join(GROUP.to_owned(), vec![myself.get_cell()]);
            Ok(0)
        }

        async fn handle(
            &self,
            _myself: ActorRef<RawMsg>,
            message: RawMsg,
            count: &mut u64,
        ) -> Result<(), ActorProcessingErr> {
            match message {
                RawMsg::Batch(Events(events)) => *count += events.len() as u64,
                RawMsg::Count(reply) => {
                    let _ = reply.send(std::mem::take(count));
                }
            }
            Ok(())
        }
    }
}

/// The events both sides of the remote-publish bench send: `TaskCompleted` of task
/// `t<i>` on `worker-<i % 8>`, the event a big run publishes most.
pub fn published(range: std::ops::Range<usize>) -> Vec<dtf_plugin_core::event::EventKind> {
    use dtf_plugin_core::event::{EventKind, TaskOutcome};
    range
        .map(|i| {
            EventKind::task_completed(
                format!("t{i}"),
                format!("worker-{}", i % 8),
                TaskOutcome::Passed,
                std::time::Duration::from_millis(i as u64 % 1000),
            )
        })
        .collect()
}
