//! The network seam of the Raft node: [`Transport`] carries outgoing messages
//! to peers, [`PeerInbox`] takes incoming ones, and [`RaftService`] is the gRPC
//! `Raft` service that feeds the inbox from other managers.
//!
//! Raft messages travel as rust-protobuf bytes inside our own prost messages,
//! so raft-rs's protobuf version never meets ours.

use protobuf::Message as _;
use raft::SnapshotStatus;
use raft::eraftpb::Message;
use shoal_proto::raft_server::Raft;
use shoal_proto::{
    JoinClusterRequest, JoinClusterResponse, RaftMessageRequest, RaftMessageResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

use super::RaftError;
use super::membership::Membership;
use crate::auth::Caller;
use crate::store::StoreError;

/// Largest message a peer may send in chunks (a snapshot of the whole state).
const MAX_ASSEMBLED: usize = 2 << 30;

/// Pause before asking again for a read index the node could not serve.
const READ_RETRY: Duration = Duration::from_millis(50);

/// Sends Raft messages to the peers named by `Message::to`.
///
/// `send` must not block: the Raft task calls it between disk writes. An
/// implementation queues per peer and reports peers it cannot reach through
/// [`PeerInbox::report_unreachable`]; losing a message is safe (Raft retries).
pub trait Transport: Send + Sync + 'static {
    fn send(&self, messages: Vec<Message>);
}

/// The transport of a manager without peers: a single-voter cluster never
/// sends messages, so anything addressed to a peer is dropped and logged.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, messages: Vec<Message>) {
        for msg in messages {
            tracing::debug!(to = msg.to, msg_type = ?msg.get_msg_type(), "raft message to an unknown peer dropped");
        }
    }
}

/// What reaches the Raft task from the network side.
pub(crate) enum Inbound {
    Message(Box<Message>),
    Unreachable(u64),
    Snapshot {
        to: u64,
        status: SnapshotStatus,
    },
    /// Leader only: add a learner or remove a member; answered once the
    /// change is applied.
    ChangeMember {
        change: MemberChange,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Leader only: hand leadership to voter `to` (raft-rs's transfer).
    TransferLeader {
        to: u64,
    },
    /// A peer refused this manager as removed from the cluster.
    RemovedByPeer {
        peer: u64,
    },
    /// Confirm with a quorum the commit index a read must see, and answer
    /// once this node has applied up to it. `NoQuorum` means "not now".
    ReadIndex {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A change of the group's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    AddLearner(u64),
    Remove(u64),
}

/// Where peer messages and transport reports enter the Raft task. Clone freely.
#[derive(Clone)]
pub struct PeerInbox {
    tx: mpsc::Sender<Inbound>,
}

impl PeerInbox {
    pub(crate) fn new(tx: mpsc::Sender<Inbound>) -> PeerInbox {
        PeerInbox { tx }
    }

    /// Feed a peer's message, encoded with rust-protobuf as an `eraftpb::Message`.
    #[cfg(test)]
    pub fn step(&self, msg_bytes: &[u8]) -> Result<(), RaftError> {
        let msg = Message::parse_from_bytes(msg_bytes).map_err(RaftError::InvalidMessage)?;
        self.step_message(msg)
    }

    /// Feed a decoded peer message.
    pub fn step_message(&self, msg: Message) -> Result<(), RaftError> {
        if super::faults::blocked(msg.from) {
            return Ok(());
        }
        self.push(Inbound::Message(Box::new(msg)))
    }

    /// Tell Raft a peer could not be reached, so it stops pipelining to it.
    pub fn report_unreachable(&self, peer: u64) -> Result<(), RaftError> {
        self.push(Inbound::Unreachable(peer))
    }

    /// Tell Raft whether sending a snapshot to `peer` succeeded.
    pub fn report_snapshot(&self, peer: u64, delivered: bool) -> Result<(), RaftError> {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.push(Inbound::Snapshot { to: peer, status })
    }

    /// Leader only: propose adding `id` as a learner (the leader makes it a
    /// voter once it has caught up) and wait until the change is applied
    /// here. Fails at once if another change is still pending.
    pub async fn add_learner(&self, id: u64) -> Result<(), StoreError> {
        self.change_member(MemberChange::AddLearner(id)).await
    }

    /// Leader only: propose removing `id` (voter or learner) and wait until the change is
    /// applied here.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        self.change_member(MemberChange::Remove(id)).await
    }

    async fn change_member(&self, change: MemberChange) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        // Unlike peer traffic this is worth waiting for room.
        self.tx
            .send(Inbound::ChangeMember { change, reply })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Leader only: ask voter `to` to take over leadership. Watch the
    /// leadership to see whether it did.
    pub fn transfer_leader(&self, to: u64) -> Result<(), RaftError> {
        self.push(Inbound::TransferLeader { to })
    }

    /// The transport's report that `peer` refused this manager as removed.
    pub fn removed_by_peer(&self, peer: u64) -> Result<(), RaftError> {
        self.push(Inbound::RemovedByPeer { peer })
    }

    /// Wait until this node has applied everything committed cluster-wide
    /// when the call began (Raft's ReadIndex), so a read of the local store
    /// that follows is linearizable on any manager. A manager that cannot
    /// confirm this with a majority within `within` answers
    /// [`StoreError::NoQuorum`] instead of serving data that may be stale.
    pub async fn read_barrier(&self, within: Duration) -> Result<(), StoreError> {
        let give_up = Instant::now() + within;
        loop {
            let (reply, rx) = oneshot::channel();
            match tokio::time::timeout_at(give_up, self.tx.send(Inbound::ReadIndex { reply })).await
            {
                Err(_) => return Err(StoreError::NoQuorum),
                Ok(Err(_)) => return Err(StoreError::Stopped),
                Ok(Ok(())) => {}
            }
            match tokio::time::timeout_at(give_up, rx).await {
                Err(_) => return Err(StoreError::NoQuorum),
                Ok(Err(_)) => return Err(StoreError::Stopped),
                // No leader right now, or leadership moved while the read
                // was in flight: ask again until the deadline.
                Ok(Ok(Err(StoreError::NoQuorum))) => {
                    let retry_at = Instant::now() + READ_RETRY;
                    if retry_at >= give_up {
                        return Err(StoreError::NoQuorum);
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
                Ok(Ok(outcome)) => return outcome,
            }
        }
    }

    fn push(&self, inbound: Inbound) -> Result<(), RaftError> {
        // A full inbox drops the message rather than stalling the network:
        // Raft tolerates loss and the sender retries.
        self.tx.try_send(inbound).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RaftError::Busy,
            mpsc::error::TrySendError::Closed(_) => RaftError::Stopped,
        })
    }
}

/// The gRPC `Raft` service: decodes peer messages and steps them into the
/// node, and (given a [`Membership`]) lets managers join.
#[derive(Clone)]
pub struct RaftService {
    inbox: PeerInbox,
    membership: Option<Membership>,
}

impl RaftService {
    /// A service feeding `inbox` (a [`PeerInbox`], or a `RaftHandle`).
    pub fn new(inbox: impl Into<PeerInbox>) -> RaftService {
        RaftService {
            inbox: inbox.into(),
            membership: None,
        }
    }

    /// Serve `JoinCluster` with `membership`.
    pub fn with_membership(mut self, membership: Membership) -> RaftService {
        self.membership = Some(membership);
        self
    }

    #[cfg(test)]
    /// The tonic server to add to a router.
    pub fn into_server(self) -> shoal_proto::raft_server::RaftServer<RaftService> {
        shoal_proto::raft_server::RaftServer::new(self)
    }
}

impl RaftService {
    /// The Raft id recorded for the caller's certificate in the managers
    /// table: a manager may only send messages as itself. `None` when it is
    /// not recorded here (yet), as on a manager that is still joining.
    fn sender_of(&self, caller: &Caller) -> Option<u64> {
        let membership = self.membership.as_ref()?;
        membership.raft_id_of(caller.node_id()?)
    }

    /// Decode one peer message, check who sent it, and step it. A full inbox
    /// drops it (Raft tolerates loss); a message sent in another manager's
    /// name ends the stream.
    fn deliver(&self, bytes: &[u8], sender: Option<u64>) -> Result<(), Status> {
        let msg = Message::parse_from_bytes(bytes)
            .map_err(|e| to_status(RaftError::InvalidMessage(e)))?;
        if let Some(id) = sender
            && msg.from != id
        {
            return Err(Status::permission_denied(format!(
                "a raft message from raft id {} on the certificate of raft id {id}",
                msg.from
            )));
        }
        match self.inbox.step_message(msg) {
            Ok(()) => Ok(()),
            Err(RaftError::Busy) => {
                tracing::debug!("raft inbox full; peer message dropped");
                Ok(())
            }
            Err(err) => Err(to_status(err)),
        }
    }
}

fn to_status(err: RaftError) -> Status {
    match err {
        RaftError::InvalidMessage(_) => Status::invalid_argument(err.to_string()),
        RaftError::Busy | RaftError::Stopped => Status::unavailable(err.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn process_raft_message(
        &self,
        request: Request<RaftMessageRequest>,
    ) -> Result<Response<RaftMessageResponse>, Status> {
        let sender = self.sender_of(&Caller::of(&request));
        self.deliver(&request.into_inner().message, sender)?;
        Ok(Response::new(RaftMessageResponse {}))
    }

    async fn stream_raft_message(
        &self,
        request: Request<Streaming<RaftMessageRequest>>,
    ) -> Result<Response<RaftMessageResponse>, Status> {
        let sender = self.sender_of(&Caller::of(&request));
        let mut stream = request.into_inner();
        // The pieces of a chunked message received so far.
        let mut assembling: Vec<u8> = Vec::new();
        while let Some(req) = stream.message().await? {
            if !req.chunk.is_empty() || req.last_chunk {
                if assembling.len() + req.chunk.len() > MAX_ASSEMBLED {
                    return Err(Status::resource_exhausted(format!(
                        "a chunked raft message exceeds {MAX_ASSEMBLED} bytes"
                    )));
                }
                assembling.extend_from_slice(&req.chunk);
                if req.last_chunk {
                    self.deliver(&std::mem::take(&mut assembling), sender)?;
                }
                continue;
            }
            let messages = std::iter::once(&req.message)
                .filter(|m| !m.is_empty())
                .chain(&req.batch);
            for bytes in messages {
                self.deliver(bytes, sender)?;
            }
        }
        Ok(Response::new(RaftMessageResponse {}))
    }

    async fn join_cluster(
        &self,
        request: Request<JoinClusterRequest>,
    ) -> Result<Response<JoinClusterResponse>, Status> {
        let membership = self
            .membership
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this manager does not accept joins"))?;
        // The interceptor admitted only manager certificates.
        let node_id = Caller::of(&request)
            .node_id()
            .map(str::to_string)
            .ok_or_else(|| Status::permission_denied("joining requires a manager certificate"))?;
        let addr = request.into_inner().addr;
        membership.join(&node_id, &addr).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn garbage_bytes_are_an_invalid_argument() {
        let (tx, _rx) = mpsc::channel(4);
        let service = RaftService::new(PeerInbox::new(tx));
        let status = service
            .process_raft_message(Request::new(RaftMessageRequest {
                message: vec![0xff, 0xff, 0xff, 0xff],
                batch: Vec::new(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    }

    #[tokio::test]
    async fn a_message_reaches_the_inbox_decoded() {
        let (tx, mut rx) = mpsc::channel(4);
        let service = RaftService::new(PeerInbox::new(tx));
        let msg = Message {
            from: 2,
            to: 1,
            term: 7,
            ..Default::default()
        };
        let bytes = msg.write_to_bytes().unwrap();
        service
            .process_raft_message(Request::new(RaftMessageRequest {
                message: bytes,
                batch: Vec::new(),
                ..Default::default()
            }))
            .await
            .unwrap();
        match rx.recv().await {
            Some(Inbound::Message(m)) => assert_eq!((m.from, m.to, m.term), (2, 1, 7)),
            _ => panic!("expected a decoded message"),
        }
    }

    #[tokio::test]
    async fn a_manager_may_only_send_raft_messages_as_itself() {
        let cluster = shoal_proto::Cluster {
            id: "c1".into(),
            managers: vec![
                shoal_proto::RaftMember {
                    raft_id: 1,
                    node_id: "n1".into(),
                    addr: "10.0.0.1:4280".into(),
                },
                shoal_proto::RaftMember {
                    raft_id: 2,
                    node_id: "n2".into(),
                    addr: "10.0.0.2:4280".into(),
                },
            ],
            ..Default::default()
        };
        let store = crate::test_fixtures::store_with_cluster(cluster).await;
        let (tx, mut rx) = mpsc::channel(4);
        let inbox = PeerInbox::new(tx);
        let membership = Membership::new(store, inbox.clone(), crate::seal::DataKey::generate(), 1);
        let service = RaftService::new(inbox).with_membership(membership);
        let from = |node: &str, raft_id: u64| {
            let msg = Message {
                from: raft_id,
                to: 1,
                ..Default::default()
            };
            let mut request = Request::new(RaftMessageRequest {
                message: msg.write_to_bytes().unwrap(),
                ..Default::default()
            });
            request
                .extensions_mut()
                .insert(Caller::Peer(std::sync::Arc::new(
                    shoal_proto::tls::PeerIdentity {
                        node_id: node.into(),
                        role: shoal_proto::tls::Role::Manager,
                        cluster_id: "c1".into(),
                        not_after: i64::MAX,
                        not_before: 0,
                    },
                )));
            request
        };
        service.process_raft_message(from("n2", 2)).await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Inbound::Message(m)) if m.from == 2));
        let status = service
            .process_raft_message(from("n2", 1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(rx.try_recv().is_err(), "nothing reached the node");
        // A manager not recorded yet (still joining) is taken at its word.
        service.process_raft_message(from("n9", 9)).await.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Inbound::Message(m)) if m.from == 9));
    }

    #[test]
    fn a_full_inbox_reports_busy_and_a_closed_one_stopped() {
        let (tx, rx) = mpsc::channel(1);
        let inbox = PeerInbox::new(tx);
        inbox.report_unreachable(2).unwrap();
        assert!(matches!(inbox.report_unreachable(2), Err(RaftError::Busy)));
        drop(rx);
        assert!(matches!(
            inbox.report_unreachable(2),
            Err(RaftError::Stopped)
        ));
    }
}
