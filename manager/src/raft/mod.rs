//! Raft consensus for the store: raft-rs `RawNode` driven by one task, with its
//! log, hard state and snapshot metadata on sled.
//!
//! [`start`] opens `DATA_DIR/store`, reloads the applied state, builds the
//! node and spawns its actor ([`node`]) on a thread of its own, so sled's
//! fsyncs never stall the async workers. It returns the [`Store`] the rest of
//! the manager uses and a [`RaftHandle`] to watch and stop the node. Peers
//! reach the node through [`RaftService`] (gRPC) or a [`PeerInbox`]; the node
//! reaches peers through a [`Transport`]: [`GrpcTransport`] between managers,
//! [`NoPeers`] in tests of a lone node.
//!
//! - [`storage`]: raft-rs `Storage` over sled (log, metadata, state trees).
//! - [`snapshot`]: the applied state as a `StoreSnapshot`.
//! - [`node`]: the actor and its Ready loop; [`node_group`]: its reads
//!   (ReadIndex) and membership changes.
//! - [`space`]: free space under the store; writes wait while it is short.
//! - [`faults`]: partitions injected by the fault tests.
//! - [`service`]: transport seam and the gRPC service.
//! - [`transport`]: the gRPC transport between managers.
//! - [`membership`]: the managers table, Raft ids, and joining.
//! - [`own_proposals`]: the leader's proposals kept decoded until applied.
//! - [`checkpoint_due`]: when the next checkpoint of the applied state is written.
//! - [`phase_timing`]: where the raft task's time goes, logged for the benchmark.
//! - `disk`: the sled database and its trees; `blobs`: fsyncs for the blob
//!   files sled writes beside them.

mod blobs;
mod checkpoint_due;
mod disk;
pub mod faults;
pub mod membership;
mod node;
mod node_group;
mod own_proposals;
mod phase_timing;
mod service;
mod snapshot;
mod space;
mod storage;
mod transport;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use raft::{RawNode, StateRole};
use slog::Drain as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use membership::Membership;
pub use service::{NoPeers, PeerInbox, RaftService, Transport};
pub use transport::GrpcTransport;

use crate::config::ManagerConfig;
use crate::store::{Leadership, Store};
use disk::Disk;
use node::Node;
use storage::SledStorage;

/// Proposals queued before `Store::propose` waits.
const PROPOSAL_QUEUE: usize = 4096;
/// Peer messages queued before new ones are dropped.
const INBOX_QUEUE: usize = 4096;
/// Largest append message to a follower.
const MAX_SIZE_PER_MSG: u64 = 1 << 20;

/// Why the Raft node could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("cannot open the raft store at {}: {source}", path.display())]
    Open { path: PathBuf, source: sled::Error },
    #[error("raft store I/O failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("raft store is corrupt: {0}")]
    Corrupt(String),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("invalid raft message: {0}")]
    InvalidMessage(#[from] protobuf::ProtobufError),
    #[error("the raft node is overloaded; the message was dropped")]
    Busy,
    #[error("the raft node has stopped")]
    Stopped,
    #[error("cannot start the raft thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The node's progress, as last published by the actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node's Raft id.
    pub id: u64,
    pub term: u64,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the store.
    pub applied: u64,
    /// Raft id of the leader, 0 when unknown.
    pub leader_id: u64,
}

/// The group as this manager last saw it (refreshed every tick).
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    /// This manager's Raft id.
    pub self_id: u64,
    /// The leader's Raft id, 0 when none is known.
    pub leader_id: u64,
    /// The voters of the applied configuration.
    pub voters: Vec<u64>,
    /// Its learners: joining managers still catching up.
    pub learners: Vec<u64>,
    /// When each peer was last heard from (a leader hears every voter at
    /// least once a heartbeat; a follower mostly hears the leader).
    pub heard: HashMap<u64, std::time::Instant>,
}

impl GroupView {
    /// Whether `id` is this manager or was heard from within `within`.
    pub fn reachable(&self, id: u64, within: std::time::Duration) -> bool {
        id == self.self_id || self.heard.get(&id).is_some_and(|at| at.elapsed() <= within)
    }
}

/// Control over a running Raft node. Clone freely; any clone may shut it down.
#[derive(Clone)]
pub struct RaftHandle {
    inbox: PeerInbox,
    status: watch::Receiver<RaftStatus>,
    shutdown: CancellationToken,
    /// Becomes true (or closes, if the thread panicked) once the node has
    /// stopped and sled is closed.
    stopped: watch::Receiver<bool>,
    /// Becomes true once this manager is out of the Raft group.
    removed: watch::Receiver<bool>,
    /// Holds the error once the node stopped on a storage error or a panic.
    failure: watch::Receiver<Option<String>>,
    group: Arc<std::sync::Mutex<GroupView>>,
}

impl RaftHandle {
    /// Latest status; cheap (a watch channel read).
    pub fn status(&self) -> RaftStatus {
        *self.status.borrow()
    }

    /// The voters and which peers were heard from lately.
    pub fn group(&self) -> GroupView {
        self.group.lock().expect("group lock").clone()
    }

    /// Resolves once this manager has been removed from the Raft group
    /// (`node demote` or `node rm`); never, if the node stops first.
    pub async fn removed(&self) {
        let mut removed = self.removed.clone();
        if removed.wait_for(|r| *r).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves with the error once the node has stopped on its own: a
    /// storage error (sled fails every write after one failed) or a panic
    /// of its thread. The manager cannot serve on without it and should exit
    /// non-zero so that a supervisor restarts it. Never resolves otherwise.
    pub async fn failed(&self) -> String {
        let mut failure = self.failure.clone();
        // The watch's read guard is not Send: let it go before waiting on.
        let failed = failure
            .wait_for(Option::is_some)
            .await
            .map(|failure| failure.clone().unwrap_or_default());
        match failed {
            Ok(failure) => failure,
            Err(_) => std::future::pending().await,
        }
    }

    /// Feed a peer's message (a rust-protobuf encoded `eraftpb::Message`).
    #[cfg(test)]
    pub fn step(&self, msg_bytes: &[u8]) -> Result<(), RaftError> {
        self.inbox.step(msg_bytes)
    }

    /// Where peer messages and transport reports enter the node.
    pub fn inbox(&self) -> PeerInbox {
        self.inbox.clone()
    }

    /// Stop the actor (pending proposals fail with `StoreError::Stopped`),
    /// flush sled and wait for the thread to end. The database is closed when
    /// this returns, so the same directory can be opened again.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if self.stopped.wait_for(|stopped| *stopped).await.is_err() {
            tracing::error!("the raft thread ended without stopping cleanly");
        }
    }
}

impl From<RaftHandle> for PeerInbox {
    fn from(handle: RaftHandle) -> PeerInbox {
        handle.inbox
    }
}

/// Start the Raft node of this manager with no peers (a one-manager cluster).
pub async fn start(config: &ManagerConfig) -> Result<(Store, RaftHandle), RaftError> {
    start_with_transport(config, Arc::new(NoPeers)).await
}

/// Start the Raft node, sending peer messages through `transport`.
pub async fn start_with_transport(
    config: &ManagerConfig,
    transport: Arc<dyn Transport>,
) -> Result<(Store, RaftHandle), RaftError> {
    let config = config.clone();
    if config.raft.force_new_cluster {
        force_new_cluster(&config).await?;
    }
    // Opening sled and reading the state tree is blocking I/O.
    tokio::task::spawn_blocking(move || open(&config, transport))
        .await
        .map_err(|e| RaftError::Thread(std::io::Error::other(e)))?
}

/// `--force-new-cluster`: start the node once without peers so that it
/// applies and writes everything committed, then rewrite its Raft metadata
/// so that this manager is the only voter. The next start leads at once,
/// with all the state; the other managers' removal from the managers table
/// follows once it leads ([`membership::forget_others`]).
async fn force_new_cluster(config: &ManagerConfig) -> Result<(), RaftError> {
    let mut replay = config.clone();
    replay.raft.force_new_cluster = false;
    let (_, handle) = tokio::task::spawn_blocking(move || open(&replay, Arc::new(NoPeers)))
        .await
        .map_err(|e| RaftError::Thread(std::io::Error::other(e)))??;
    let id = handle.status().id;
    handle.shutdown().await;
    let path = config.data_dir.join("store");
    let index = tokio::task::spawn_blocking(move || {
        Disk::open(&path).and_then(|disk| disk.force_single_voter(id))
    })
    .await
    .map_err(|e| RaftError::Thread(std::io::Error::other(e)))??;
    tracing::warn!(
        raft.id = id,
        index,
        "forced a new cluster: this manager is now the only voter, with the state applied up to {index}"
    );
    Ok(())
}

fn open(
    config: &ManagerConfig,
    transport: Arc<dyn Transport>,
) -> Result<(Store, RaftHandle), RaftError> {
    // A manager that joined a cluster keeps the Raft id it was given; it
    // starts with no configuration and learns it from the leader's snapshot.
    let joined = membership::load_raft_id(&config.data_dir).map_err(RaftError::Corrupt)?;
    let id = joined.unwrap_or(config.raft.id);
    let disk = Disk::open(&config.data_dir.join("store"))?;
    let state = disk.load_state()?;
    let space = space::DiskSpace::new(
        &config.data_dir,
        &config.data_dir.join("store"),
        disk.state_bytes()?,
    );
    let applied = state.applied_index;

    let (proposals_tx, proposals_rx) = mpsc::channel(PROPOSAL_QUEUE);
    let (leadership_tx, leadership_rx) = watch::channel(Leadership::default());
    let store = Store::new(state, proposals_tx, leadership_rx);

    let bootstrap_voters = if joined.is_some() { vec![] } else { vec![id] };
    let storage = SledStorage::open(disk, store.clone(), &bootstrap_voters)?;
    let removed_at_start = {
        let cs = storage.conf_state();
        !cs.voters.is_empty() && !cs.voters.contains(&id) && !cs.learners.contains(&id)
    };
    let sole_voter = {
        let cs = storage.conf_state();
        cs.voters == [id] && cs.learners.is_empty() && cs.voters_outgoing.is_empty()
    };
    let raft_config = raft::Config {
        id,
        election_tick: config.raft.election_ticks,
        heartbeat_tick: config.raft.heartbeat_ticks,
        applied,
        max_size_per_msg: MAX_SIZE_PER_MSG,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate()?;
    let logger = slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!());
    let mut raw = RawNode::new(&raft_config, storage, &logger)?;
    if sole_voter {
        // Nobody else can win an election: lead at once instead of waiting
        // for an election timeout.
        raw.campaign()?;
    }
    tracing::info!(
        raft.id = id,
        applied,
        term = raw.raft.term,
        is_leader = raw.raft.state == StateRole::Leader,
        "raft node started"
    );

    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_QUEUE);
    let inbox = PeerInbox::new(inbox_tx);
    if removed_at_start {
        tracing::warn!(
            raft.id = id,
            "this manager is not in the raft group it last saw: it was removed"
        );
    }
    let (removed_tx, removed_rx) = watch::channel(removed_at_start);
    let (failure_tx, failure_rx) = watch::channel(None);
    let group = Arc::new(std::sync::Mutex::new(GroupView {
        self_id: id,
        ..Default::default()
    }));
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        id,
        ..Default::default()
    });
    let mut node = Node {
        raw,
        store: store.clone(),
        transport,
        proposals: proposals_rx,
        inbound: inbox_rx,
        leadership: leadership_tx,
        status: status_tx,
        tick_interval: config.raft.tick_interval,
        snapshot_interval: config.raft.snapshot_interval,
        waiters: HashMap::new(),
        conf_waiters: HashMap::new(),
        next_conf_waiter: 0,
        unwritten: Default::default(),
        work: Default::default(),
        written_applied: applied,
        durable_applied: applied,
        dirty: false,
        reads: HashMap::new(),
        confirmed_reads: Vec::new(),
        own: Default::default(),
        read_prefix: read_prefix(id),
        next_read: 0,
        read_term: 0,
        removed: removed_tx,
        heard: HashMap::new(),
        group: group.clone(),
        space,
        failure: failure_tx.clone(),
    };
    // Process the first Ready before returning: a sole voter then has
    // replayed its log and applied its no-op, and is seen leading at once.
    node.handle_ready()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stopped_tx, stopped) = watch::channel(false);
    let store_path = config.data_dir.join("store");
    std::thread::Builder::new()
        .name(format!("shoal-raft-{id}"))
        .spawn(move || {
            // `run` consumes the node, and with it the last handle on sled;
            // stopped once sled's threads have let go of the files too. A
            // panic (raft-rs panics on some storage errors) is a failure like
            // a storage error: the manager exits rather than serve without
            // its node.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(node.run(token))
            }));
            drop(runtime);
            if let Err(panic) = ran {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(error = %what, "the raft thread panicked; the manager exits");
                failure_tx.send_replace(Some(format!("the raft thread panicked: {what}")));
            }
            if !disk::wait_closed(&store_path, disk::CLOSE_TIMEOUT) {
                tracing::warn!(path = %store_path.display(), "the raft store is still held open after the raft node stopped");
            }
            let _ = stopped_tx.send(true);
        })?;
    Ok((
        store,
        RaftHandle {
            inbox,
            status: status_rx,
            shutdown,
            stopped,
            removed: removed_rx,
            failure: failure_rx,
            group,
        },
    ))
}

/// The raft id and a nonce for this start (the clock's nanoseconds), so a
/// restarted node's read contexts do not repeat its earlier ones.
fn read_prefix(id: u64) -> [u8; 16] {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut prefix = [0; 16];
    prefix[..8].copy_from_slice(&id.to_be_bytes());
    prefix[8..].copy_from_slice(&nonce.to_be_bytes());
    prefix
}

#[cfg(test)]
mod tests;
