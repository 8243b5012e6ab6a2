//! The replicated store: what every manager agrees on.
//!
//! A write is a [`Proposal`]: a batch of [`Action`]s that becomes one Raft entry.
//! When the entry commits, the raft task applies it ([`apply`]) to the in-memory
//! tables ([`MemState`]) and to sled, then publishes one [`ChangeBatch`] on the
//! watch channel. Everything else on a manager reads the tables and follows the
//! watch; nothing polls.
//!
//! [`Store`] is the cheap, cloneable handle. It does not know how proposals
//! reach consensus: the raft task (`crate::raft`) or, in unit tests,
//! [`Store::in_memory`] drains its proposal channel and calls
//! [`Store::apply_committed`].

mod apply;
mod object;
mod tables;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use shoal_proto::{
    ActionKind, Cluster, Proposal, StoreAction, StoreObject, TaskStatus, TaskStatusUpdate,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub(crate) use apply::share_spec;
#[cfg(test)]
pub use object::encode;
pub use object::{Kind, Object, ObjectExt, Stored, decode};
pub use tables::{LookupError, MemState, service_name};

/// Number of change batches a slow subscriber may fall behind before it is told
/// it lagged (it must then re-read the tables).
const WATCH_CAPACITY: usize = 4096;

/// One write of a proposal.
#[derive(Debug, Clone)]
pub enum Action {
    /// Fails if the id exists.
    Create(Object),
    /// Fails unless the object's `meta.version` is the stored one.
    Update(Object),
    /// Fails if absent, or if `meta.version` is non-zero and not the stored one.
    Delete(Object),
    /// A task's status as its agent reported it: replaces the status of the
    /// task as it is when the entry applies. Fails if the task is gone or the
    /// report would move its state backwards.
    Report { task_id: String, status: TaskStatus },
}

impl Action {
    /// About the bytes it takes in a proposal.
    pub fn encoded_len(&self) -> usize {
        use prost::Message as _;
        match self {
            Action::Create(o) | Action::Update(o) | Action::Delete(o) => o.encoded_len(),
            Action::Report { task_id, status } => task_id.len() + status.encoded_len(),
        }
    }

    fn into_proto(self) -> StoreAction {
        let (kind, object) = match self {
            Action::Create(o) => (ActionKind::Create, o),
            Action::Update(o) => (ActionKind::Update, o),
            Action::Delete(o) => (ActionKind::Delete, o),
            Action::Report { task_id, status } => {
                return StoreAction {
                    kind: ActionKind::Report as i32,
                    object: None,
                    report: Some(TaskStatusUpdate {
                        task_id,
                        status: Some(status),
                    }),
                };
            }
        };
        StoreAction {
            kind: kind as i32,
            object: Some(StoreObject {
                object: Some(object),
            }),
            report: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
    /// A task updated by its agent's report ([`Action::Report`]): only its
    /// status (and `meta`) differ from `old`. Its agent knows it already.
    Reported,
}

impl ChangeKind {
    /// An update of an existing object, whoever wrote it.
    pub fn is_update(self) -> bool {
        matches!(self, ChangeKind::Updated | ChangeKind::Reported)
    }
}

/// One applied change. `object` is the new value (the removed value for a
/// delete); `old` is the value it replaced, for updates.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    pub object: Stored,
    pub old: Option<Stored>,
}

/// The changes of one committed entry.
#[derive(Debug, Default)]
pub struct ChangeBatch {
    pub index: u64,
    pub changes: Vec<Change>,
}

/// Why a write was refused. Messages name the object and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: Kind, id: String },
    #[error("{kind} with {what} already exists")]
    AlreadyExists { kind: Kind, what: String },
    #[error(
        "{kind} {id} was changed concurrently (version {expected} is stale, current is {actual}); read it again and retry"
    )]
    Conflict {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("published port {port}/{protocol} is already used by service {service}")]
    PortInUse {
        port: u32,
        protocol: &'static str,
        service: String,
    },
    #[error("{kind} {name} is in use by {}: {}; remove it from them first", plural(.services.len()), .services.join(", "))]
    InUse {
        kind: Kind,
        name: String,
        services: Vec<String>,
    },
    #[error("invalid store action: {0}")]
    Invalid(String),
    #[error("task {id} is {current}: a report of {reported} comes too late")]
    StaleReport {
        id: String,
        current: &'static str,
        reported: &'static str,
    },
    #[error("this manager is not the leader")]
    NotLeader,
    #[error("leadership changed before the write committed; it may or may not have been applied")]
    LeadershipLost,
    #[error(
        "no quorum: this manager cannot confirm with a majority of managers that its data is current; retry, or ask a manager that can reach the others"
    )]
    NoQuorum,
    #[error("the store is shutting down")]
    Stopped,
    #[error("storage error: {0}")]
    Storage(String),
    /// The leader's disk is too full to take the write (see `raft::space`).
    #[error(
        "no space left on the manager's disk ({data_dir}): {free_mib} MiB free, writes need at least {need_mib} MiB; free space and retry"
    )]
    NoSpace {
        data_dir: String,
        free_mib: u64,
        need_mib: u64,
    },
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "service" } else { "services" }
}

/// A committed write: its Raft index and what it changed.
#[derive(Debug, Default)]
pub struct Applied {
    #[cfg_attr(not(test), expect(dead_code, reason = "read by tests only"))]
    pub index: u64,
    #[cfg_attr(not(test), expect(dead_code, reason = "read by tests only"))]
    pub batch: Arc<ChangeBatch>,
    /// Actions refused in a non-atomic proposal.
    pub refused: Vec<(usize, StoreError)>,
}

/// Who leads the Raft group, as this manager sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leadership {
    pub is_leader: bool,
    pub term: u64,
    /// Raft id of the leader, 0 when unknown.
    pub leader_id: u64,
}

/// A proposal on its way to consensus, with the caller waiting for its outcome.
pub struct ProposeRequest {
    pub proposal: Proposal,
    /// `proposal` encoded, by the caller rather than the single Raft thread.
    pub data: Vec<u8>,
    pub reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// Handle on the store. Clone freely.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<MemState>,
    /// The cluster object as of the last apply, outside `state`'s lock: every
    /// RPC's admission check reads it, and a read of `state` waits while the
    /// applier holds or awaits the write lock, which stalled the runtime's
    /// workers (and with them heartbeats) behind large applies. Written only
    /// when the cluster object changes.
    cluster: RwLock<Option<Arc<Cluster>>>,
    changes: broadcast::Sender<Arc<ChangeBatch>>,
    proposals: mpsc::Sender<ProposeRequest>,
    leadership: watch::Receiver<Leadership>,
    next_proposal: AtomicU64,
}

impl Store {
    /// A handle over `state` whose proposals go to `proposals` and whose
    /// leadership is reported on `leadership`. The consensus side must call
    /// [`Store::apply_committed`] for each committed proposal.
    pub fn new(
        state: MemState,
        proposals: mpsc::Sender<ProposeRequest>,
        leadership: watch::Receiver<Leadership>,
    ) -> Store {
        let (changes, _) = broadcast::channel(WATCH_CAPACITY);
        // Proposal ids must not repeat across restarts of this manager while an
        // old entry could still be in the log: start from random high bits.
        let seed = rand::random::<u64>() & 0xffff_ffff_0000_0000;
        let cluster = state.cluster().cloned().map(Arc::new);
        Store {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                cluster: RwLock::new(cluster),
                changes,
                proposals,
                leadership,
                next_proposal: AtomicU64::new(seed),
            }),
        }
    }

    #[cfg(any(test, feature = "testing"))]
    /// A store without Raft or disk, that commits every proposal at once: for
    /// unit tests of the components that sit on the store.
    pub fn in_memory() -> Store {
        let (tx, mut rx) = mpsc::channel::<ProposeRequest>(1024);
        let (_lead_tx, lead_rx) = watch::channel(Leadership {
            is_leader: true,
            term: 1,
            leader_id: 1,
        });
        let store = Store::new(MemState::default(), tx, lead_rx);
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let _keep_leadership = _lead_tx;
            while let Some(req) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let store = Store { inner };
                let index = store.read(|s| s.applied_index) + 1;
                let result = store.apply_committed(req.proposal, index);
                let _ = req.reply.send(result.into_result());
            }
        });
        store
    }

    /// Read the tables. Keep `f` short: appliers wait while it runs.
    pub fn read<R>(&self, f: impl FnOnce(&MemState) -> R) -> R {
        let guard = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// The cluster object as last applied, read without waiting for appliers:
    /// for checks on every request (see [`crate::auth::admit`]).
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.inner
            .cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publish `state`'s cluster object to [`Store::cluster`]'s readers.
    fn publish_cluster(&self, state: &MemState) {
        let cluster = state.cluster().cloned().map(Arc::new);
        *self
            .inner
            .cluster
            .write()
            .unwrap_or_else(|e| e.into_inner()) = cluster;
    }

    /// Read the tables and subscribe to the changes that follow, atomically:
    /// no change is missed or seen twice between the two.
    pub fn read_and_subscribe<R>(
        &self,
        f: impl FnOnce(&MemState) -> R,
    ) -> (R, broadcast::Receiver<Arc<ChangeBatch>>) {
        let guard = self.inner.state.read().unwrap_or_else(|e| e.into_inner());
        let rx = self.inner.changes.subscribe();
        (f(&guard), rx)
    }

    /// Subscribe to changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChangeBatch>> {
        self.inner.changes.subscribe()
    }

    /// Leadership as this manager sees it, with change notification.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.leadership.borrow().is_leader
    }

    /// Propose actions that must all apply or none (control API writes).
    pub async fn propose(&self, actions: Vec<Action>) -> Result<Applied, StoreError> {
        self.submit(actions, true).await
    }

    /// Propose actions that apply independently: those that conflict are
    /// skipped and listed in [`Applied::refused`] (scheduler and status batches).
    pub async fn propose_each(&self, actions: Vec<Action>) -> Result<Applied, StoreError> {
        self.submit(actions, false).await
    }

    /// Queue actions that apply independently, like [`Store::propose_each`],
    /// and return once the proposal is queued. Proposals queued one after
    /// another commit in that order, while their outcomes are awaited
    /// together (several proposals in flight).
    pub async fn queue_each(&self, actions: Vec<Action>) -> Result<Queued, StoreError> {
        self.queue(actions, false).await
    }

    async fn submit(&self, actions: Vec<Action>, atomic: bool) -> Result<Applied, StoreError> {
        self.queue(actions, atomic).await?.outcome().await
    }

    async fn queue(&self, actions: Vec<Action>, atomic: bool) -> Result<Queued, StoreError> {
        let proposal = Proposal {
            id: self.inner.next_proposal.fetch_add(1, Ordering::Relaxed),
            timestamp: shoal_proto::now_ms(),
            atomic,
            actions: actions.into_iter().map(Action::into_proto).collect(),
        };
        let data = prost::Message::encode_to_vec(&proposal);
        let (reply, rx) = oneshot::channel();
        self.inner
            .proposals
            .send(ProposeRequest {
                proposal,
                data,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        Ok(Queued(rx))
    }

    /// Apply a committed proposal to the tables and publish its changes. Called
    /// by the consensus side only, in log order. The returned [`Applied`] lists
    /// the changes, for persisting them.
    pub fn apply_committed(&self, proposal: Proposal, index: u64) -> AppliedEntry {
        let atomic = proposal.atomic;
        let mut guard = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        let outcome = apply::apply(&mut guard, proposal, index);
        if outcome
            .changes
            .iter()
            .any(|c| matches!(c.object, Stored::Cluster(_)))
        {
            // Before the state's lock is released: no request is admitted by
            // an older cluster object once a reader can see the new one.
            self.publish_cluster(&guard);
        }
        let batch = Arc::new(ChangeBatch {
            index,
            changes: outcome.changes,
        });
        if !batch.changes.is_empty() {
            // Sent under the lock so that read_and_subscribe sees a clean cut.
            let _ = self.inner.changes.send(batch.clone());
        }
        drop(guard);
        AppliedEntry {
            index,
            atomic,
            batch,
            refused: outcome.refused,
        }
    }

    /// Mark an entry without a proposal (a Raft no-op or conf change) as applied.
    pub fn set_applied_index(&self, index: u64) {
        let mut guard = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        guard.applied_index = guard.applied_index.max(index);
    }

    /// Replace the whole state (restoring a snapshot). Subscribers are not told
    /// object by object; leader-only components restart on such an event.
    pub fn replace_state(&self, state: MemState) {
        let mut guard = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
        *guard = state;
        self.publish_cluster(&guard);
    }
}

/// A queued proposal ([`Store::queue_each`]) awaiting its commit.
pub struct Queued(oneshot::Receiver<Result<Applied, StoreError>>);

impl Queued {
    /// A proposal queued on our behalf by another component, which answers
    /// with its outcome (a dropped sender reads as [`StoreError::Stopped`]).
    pub fn from_receiver(rx: oneshot::Receiver<Result<Applied, StoreError>>) -> Queued {
        Queued(rx)
    }

    /// The proposal's outcome, once committed (or failed).
    pub async fn outcome(self) -> Result<Applied, StoreError> {
        self.0.await.map_err(|_| StoreError::Stopped)?
    }
}

/// The result of applying one committed entry.
pub struct AppliedEntry {
    pub index: u64,
    pub atomic: bool,
    /// The published changes (also what must be persisted).
    pub batch: Arc<ChangeBatch>,
    pub refused: Vec<(usize, StoreError)>,
}

impl AppliedEntry {
    /// The proposer's view: an atomic proposal with a refusal is an error.
    pub fn into_result(self) -> Result<Applied, StoreError> {
        if self.atomic
            && let Some((_, err)) = self.refused.first()
        {
            return Err(err.clone());
        }
        Ok(Applied {
            index: self.index,
            batch: self.batch,
            refused: self.refused,
        })
    }
}

#[cfg(test)]
mod tests;
