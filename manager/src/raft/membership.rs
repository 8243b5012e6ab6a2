//! Who is in the Raft group and where to reach them.
//!
//! The cluster object's `managers` table maps each Raft id to the manager's
//! node id and advertised address; it is replicated like any other write, so
//! every manager's transport can find every peer. `next_raft_id` only grows:
//! a Raft id is never handed out twice, even after its manager is gone.
//!
//! Joining ([`Membership::join`], the leader's side of `Raft.JoinCluster`)
//! records the joiner with a fresh id, then adds it as a learner with a conf
//! change (the leader promotes it to voter once it has caught up), and answers with the id, the members and the cluster data key. A
//! manager keeps its own Raft id in `DATA_DIR/raft-id`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::{JoinClusterResponse, RaftMember};
use tonic::Status;

use super::{GroupView, PeerInbox};
use crate::seal::DataKey;
use crate::store::{Action, MemState, Object, Store, StoreError};

/// How many times a write to the cluster object is retried on a version conflict.
const CONFLICT_RETRIES: usize = 10;

/// File under the data dir holding this manager's Raft id.
pub fn raft_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join("raft-id")
}

/// The Raft id recorded in the data dir, if this manager joined a cluster.
pub fn load_raft_id(data_dir: &Path) -> Result<Option<u64>, String> {
    let path = raft_id_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| format!("{}: not a raft id: {:?}", path.display(), text.trim())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Record this manager's Raft id durably (before its Raft node first starts).
pub fn store_raft_id(data_dir: &Path, id: u64) -> Result<(), String> {
    let path = raft_id_path(data_dir);
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{id}")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Every recorded manager.
pub fn members(state: &MemState) -> Vec<RaftMember> {
    state
        .cluster()
        .map(|c| c.managers.clone())
        .unwrap_or_default()
}

/// Where the manager with Raft id `id` is reached, if recorded.
pub fn addr_of(state: &MemState, id: u64) -> Option<String> {
    state
        .cluster()?
        .managers
        .iter()
        .find(|m| m.raft_id == id)
        .map(|m| m.addr.clone())
}

/// The address of the current leader, if known.
pub fn leader_addr(store: &Store) -> Option<String> {
    let leader = store.leadership().borrow().leader_id;
    if leader == 0 {
        return None;
    }
    store.read(|s| addr_of(s, leader))
}

/// `status` naming the leader's address in its metadata, when known, so
/// the caller can go there.
pub fn with_leader(mut status: Status, store: &Store) -> Status {
    if let Some(value) = leader_addr(store).and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// Record (or correct the address of) the manager `raft_id`. Leader only.
pub async fn register(
    store: &Store,
    raft_id: u64,
    node_id: &str,
    addr: &str,
) -> Result<(), StoreError> {
    update_cluster(store, |cluster| {
        match cluster.managers.iter_mut().find(|m| m.raft_id == raft_id) {
            Some(m) if m.addr == addr && m.node_id == node_id => return None,
            Some(m) => {
                m.addr = addr.to_string();
                m.node_id = node_id.to_string();
            }
            None => cluster.managers.push(RaftMember {
                raft_id,
                node_id: node_id.to_string(),
                addr: addr.to_string(),
            }),
        }
        cluster.next_raft_id = cluster.next_raft_id.max(raft_id + 1);
        Some(raft_id)
    })
    .await
    .map(|_| ())
}

/// After `--force-new-cluster`: drop every other manager from the managers
/// table, remembering their Raft ids and node ids as removed, so that none
/// of them is let back in with its old identity. Leader only.
pub async fn forget_others(store: &Store, own_id: u64) -> Result<(), StoreError> {
    update_cluster(store, |cluster| {
        let others: Vec<RaftMember> = cluster
            .managers
            .iter()
            .filter(|m| m.raft_id != own_id)
            .cloned()
            .collect();
        if others.is_empty() {
            return None;
        }
        for m in &others {
            forget_member(cluster, m);
        }
        Some(own_id)
    })
    .await
    .map(|_| ())
}

/// The member for `node_id`: its existing entry (a retried join), or a new
/// one with a fresh Raft id. Leader only.
async fn admit(
    store: &Store,
    own_id: u64,
    node_id: &str,
    addr: &str,
) -> Result<RaftMember, StoreError> {
    let raft_id = update_cluster(store, |cluster| {
        if let Some(m) = cluster.managers.iter_mut().find(|m| m.node_id == node_id) {
            if m.addr == addr {
                return None;
            }
            m.addr = addr.to_string();
            return Some(m.raft_id);
        }
        let highest = cluster
            .managers
            .iter()
            .map(|m| m.raft_id)
            .chain(cluster.removed_raft_ids.iter().copied())
            .max();
        let raft_id = cluster
            .next_raft_id
            .max(highest.unwrap_or(0) + 1)
            .max(own_id + 1);
        cluster.managers.push(RaftMember {
            raft_id,
            node_id: node_id.to_string(),
            addr: addr.to_string(),
        });
        cluster.next_raft_id = raft_id + 1;
        Some(raft_id)
    })
    .await?;
    let found = store.read(|s| {
        members(s)
            .into_iter()
            .find(|m| m.node_id == node_id || Some(m.raft_id) == raft_id)
    });
    found.ok_or_else(|| StoreError::Invalid("the new member was not recorded".into()))
}

/// Apply `change` to the cluster object and write it, retrying on conflicts.
/// `change` returns `None` when there is nothing to write.
async fn update_cluster(
    store: &Store,
    mut change: impl FnMut(&mut shoal_proto::Cluster) -> Option<u64>,
) -> Result<Option<u64>, StoreError> {
    for _ in 0..CONFLICT_RETRIES {
        let mut cluster = store
            .read(|s| s.cluster().cloned())
            .ok_or_else(|| StoreError::Invalid("the cluster is not initialised yet".into()))?;
        let Some(result) = change(&mut cluster) else {
            return Ok(None);
        };
        match store
            .propose(vec![Action::Update(Object::Cluster(cluster.into()))])
            .await
        {
            Ok(_) => return Ok(Some(result)),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Invalid(
        "the cluster object kept changing; retry the join".into(),
    ))
}

/// The leader's side of `Raft.JoinCluster`.
#[derive(Clone)]
pub struct Membership {
    store: Store,
    inbox: PeerInbox,
    key: DataKey,
    own_id: u64,
}

impl Membership {
    pub fn new(store: Store, inbox: PeerInbox, key: DataKey, own_id: u64) -> Membership {
        Membership {
            store,
            inbox,
            key,
            own_id,
        }
    }

    /// The Raft id recorded for the manager `node_id`.
    pub fn raft_id_of(&self, node_id: &str) -> Option<u64> {
        self.store.read(|s| {
            members(s)
                .iter()
                .find(|m| m.node_id == node_id)
                .map(|m| m.raft_id)
        })
    }

    /// Add the manager `node_id`, reached at `addr`: as a learner, which the
    /// leader makes a voter once it has caught up.
    pub async fn join(&self, node_id: &str, addr: &str) -> Result<JoinClusterResponse, Status> {
        if addr.is_empty() || !addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "addr: {addr:?} is not HOST:PORT (give the joining manager an --advertise-addr)"
            )));
        }
        if !self.store.is_leader() {
            let leader_addr = leader_addr(&self.store).unwrap_or_default();
            let status = Status::failed_precondition(format!(
                "this manager is not the leader; join through the leader at {}",
                if leader_addr.is_empty() {
                    "(unknown yet)"
                } else {
                    &leader_addr
                }
            ));
            return Err(with_leader(status, &self.store));
        }
        let member = admit(&self.store, self.own_id, node_id, addr)
            .await
            .map_err(store_status)?;
        tracing::info!(raft.id = member.raft_id, node.id = %node_id, %addr, "adding a manager to the raft group");
        self.inbox
            .add_learner(member.raft_id)
            .await
            .map_err(store_status)?;
        Ok(JoinClusterResponse {
            raft_id: member.raft_id,
            members: self.store.read(members),
            data_key: self.key.as_bytes().to_vec(),
        })
    }
}

/// Why a manager leaves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// `node demote`: a live manager steps out, keeping a quorum.
    Demote,
    /// `node rm`: a manager that is down (or, forced, any other manager).
    Remove { force: bool },
}

impl Membership {
    /// Take the manager `member` out of the Raft group (leader only), then
    /// out of the managers table, remembering its node id (its certificate
    /// is refused from then on) and its Raft id (never admitted again).
    ///
    /// Refused, with the reason, when it would remove the last manager,
    /// leave fewer reachable managers than a quorum of the new group, remove
    /// a reachable manager without `--force` (`node rm`), or remove the
    /// leader itself: demoting the leader hands leadership to another
    /// manager first and asks the caller to try again there.
    pub async fn remove(
        &self,
        member: &RaftMember,
        group: &GroupView,
        within: Duration,
        removal: Removal,
    ) -> Result<(), Status> {
        if !self.store.is_leader() {
            return Err(with_leader(
                Status::unavailable("this manager is not the leader; retry shortly"),
                &self.store,
            ));
        }
        let name = &member.node_id;
        let voter = group.voters.contains(&member.raft_id);
        let learner = group.learners.contains(&member.raft_id);
        if voter {
            check_removal(member, group, within, removal)?;
        }
        if member.raft_id == self.own_id {
            return Err(self.hand_over(group, within).await);
        }
        if voter || learner {
            tracing::info!(raft.id = member.raft_id, node.id = %name, ?removal, "removing a manager from the raft group");
            self.inbox
                .remove_member(member.raft_id)
                .await
                .map_err(store_status)?;
        }
        update_cluster(&self.store, |cluster| {
            forget_member(cluster, member);
            Some(member.raft_id)
        })
        .await
        .map_err(store_status)?;
        Ok(())
    }

    /// Ask the most up-to-date reachable voter to lead, wait a little for it
    /// to, and answer the status that tells the caller where to go on.
    async fn hand_over(&self, group: &GroupView, within: Duration) -> Status {
        let Some(successor) = group
            .voters
            .iter()
            .copied()
            .find(|id| *id != self.own_id && group.reachable(*id, within))
        else {
            return Status::failed_precondition(
                "this manager leads and no other manager is reachable to take over",
            );
        };
        if let Err(e) = self.inbox.transfer_leader(successor) {
            return Status::unavailable(format!("cannot hand leadership over: {e}; retry"));
        }
        let mut leadership = self.store.leadership();
        let moved = tokio::time::timeout(
            within * 2,
            leadership.wait_for(|l| l.leader_id != self.own_id && l.leader_id != 0),
        )
        .await;
        let status = match moved {
            Ok(Ok(_)) => Status::unavailable(format!(
                "the manager to demote was the leader; it handed leadership to raft id {successor}: retry to finish demoting it"
            )),
            _ => Status::unavailable(
                "the manager to demote is the leader and the hand-over has not completed yet; retry",
            ),
        };
        with_leader(status, &self.store)
    }
}

/// The checks of [`Membership::remove`] that only need the group's view.
fn check_removal(
    member: &RaftMember,
    group: &GroupView,
    within: Duration,
    removal: Removal,
) -> Result<(), Status> {
    let name = &member.node_id;
    if group.voters.len() <= 1 {
        return Err(Status::failed_precondition(format!(
            "manager {name} is the last manager of the cluster; it cannot leave"
        )));
    }
    let reachable = group.reachable(member.raft_id, within);
    if removal == (Removal::Remove { force: false }) && reachable {
        return Err(Status::failed_precondition(format!(
            "manager {name} is reachable and still in the raft group; demote it first (shoal node demote {name}) or use --force"
        )));
    }
    let remaining: Vec<u64> = group
        .voters
        .iter()
        .copied()
        .filter(|id| *id != member.raft_id)
        .collect();
    let up = remaining
        .iter()
        .filter(|id| group.reachable(**id, within))
        .count();
    let quorum = remaining.len() / 2 + 1;
    if up < quorum {
        return Err(Status::failed_precondition(format!(
            "removing manager {name} would leave {up} reachable of {} managers, fewer than the {quorum} a quorum needs; bring the others back first",
            remaining.len()
        )));
    }
    Ok(())
}

/// Remember `node_id` as removed until any certificate issued to it has
/// expired (every manager refuses it until then), forgetting the entries
/// whose time is up.
pub fn remember_removed(cluster: &mut shoal_proto::Cluster, node_id: &str) {
    let now = shoal_proto::now_ms() / 1000;
    let lifetime = cluster
        .root_ca
        .as_ref()
        .map(|ca| ca.node_cert_lifetime_secs)
        .filter(|l| *l > 0)
        .unwrap_or(shoal_proto::tls::pki::DEFAULT_CERT_LIFETIME.as_secs() as i64);
    cluster.removed_nodes.retain(|_, until| *until > now);
    cluster
        .removed_nodes
        .insert(node_id.to_string(), now + lifetime);
}

/// Take `member` out of the managers table for good: its node id is
/// refused and its Raft id never admitted again.
fn forget_member(cluster: &mut shoal_proto::Cluster, member: &RaftMember) {
    cluster.managers.retain(|m| m.raft_id != member.raft_id);
    remember_removed(cluster, &member.node_id);
    if !cluster.removed_raft_ids.contains(&member.raft_id) {
        cluster.removed_raft_ids.push(member.raft_id);
    }
}

/// gRPC metadata key naming the leader's address when a follower refuses a join.
pub const LEADER_METADATA: &str = shoal_proto::LEADER_ADDR_METADATA;

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NotLeader | StoreError::LeadershipLost | StoreError::Stopped => {
            Status::unavailable(format!("{e}; retry the join"))
        }
        other => Status::failed_precondition(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::Cluster;

    use crate::test_fixtures::store_with_cluster;

    async fn cluster_store() -> Store {
        store_with_cluster(Cluster {
            id: "c1".into(),
            ..Default::default()
        })
        .await
    }

    #[tokio::test]
    async fn joiners_get_fresh_raft_ids_that_are_never_reused() {
        let store = cluster_store().await;
        register(&store, 1, "n1", "10.0.0.1:4280").await.unwrap();
        let second = admit(&store, 1, "n2", "10.0.0.2:4280").await.unwrap();
        let third = admit(&store, 1, "n3", "10.0.0.3:4280").await.unwrap();
        assert_eq!((second.raft_id, third.raft_id), (2, 3));
        // A retried join gets its id back, with the new address.
        let again = admit(&store, 1, "n3", "10.0.0.9:4280").await.unwrap();
        assert_eq!(again.raft_id, 3);
        assert_eq!(
            store.read(|s| addr_of(s, 3)).as_deref(),
            Some("10.0.0.9:4280")
        );
        // Once 3 is gone from the table, its id still is not handed out again.
        let mut cluster = store.read(|s| s.cluster().cloned()).unwrap();
        cluster.managers.retain(|m| m.raft_id != 3);
        store
            .propose(vec![Action::Update(Object::Cluster(cluster.into()))])
            .await
            .unwrap();
        let fourth = admit(&store, 1, "n4", "10.0.0.4:4280").await.unwrap();
        assert_eq!(fourth.raft_id, 4);
        let ids: Vec<u64> = store.read(members).iter().map(|m| m.raft_id).collect();
        assert_eq!(ids, [1, 2, 4]);
    }

    fn group(voters: &[u64], heard: &[u64]) -> GroupView {
        GroupView {
            self_id: 1,
            leader_id: 1,
            voters: voters.to_vec(),
            learners: Vec::new(),
            heard: heard
                .iter()
                .map(|id| (*id, std::time::Instant::now()))
                .collect(),
        }
    }

    fn member(raft_id: u64) -> RaftMember {
        RaftMember {
            raft_id,
            node_id: format!("n{raft_id}"),
            addr: format!("10.0.0.{raft_id}:4280"),
        }
    }

    #[test]
    fn removals_that_would_break_quorum_or_drop_a_live_manager_are_refused() {
        let within = Duration::from_secs(2);
        let check = |voters: &[u64], heard: &[u64], id, removal| {
            check_removal(&member(id), &group(voters, heard), within, removal)
                .map_err(|s| s.message().to_string())
        };
        let rm = Removal::Remove { force: false };
        // 3 managers, 3 down: removing it leaves 2 of 2 reachable.
        check(&[1, 2, 3], &[2], 3, rm).unwrap();
        // A reachable manager is demoted, not removed (unless forced).
        let err = check(&[1, 2, 3], &[2, 3], 3, rm).unwrap_err();
        assert!(err.contains("demote it first"), "{err}");
        check(&[1, 2, 3], &[2, 3], 3, Removal::Remove { force: true }).unwrap();
        check(&[1, 2, 3], &[2, 3], 3, Removal::Demote).unwrap();
        // 3 managers, 2 down: demoting the live one leaves 1 of 2 reachable.
        let err = check(&[1, 2, 3], &[2], 2, Removal::Demote).unwrap_err();
        assert!(err.contains("fewer than the 2 a quorum needs"), "{err}");
        // The last manager never leaves.
        let err = check(&[1], &[], 1, Removal::Demote).unwrap_err();
        assert!(err.contains("last manager"), "{err}");
        // A peer not heard from lately is not reachable.
        let mut stale = group(&[1, 2, 3], &[]);
        stale
            .heard
            .insert(2, std::time::Instant::now() - Duration::from_secs(10));
        assert!(!stale.reachable(2, within));
        assert!(stale.reachable(1, within), "a manager reaches itself");
    }

    #[tokio::test]
    async fn removed_raft_ids_are_never_handed_out_again() {
        let store = cluster_store().await;
        register(&store, 1, "n1", "10.0.0.1:4280").await.unwrap();
        let mut cluster = store.read(|s| s.cluster().cloned()).unwrap();
        cluster.removed_raft_ids = vec![7];
        cluster.next_raft_id = 0;
        store
            .propose(vec![Action::Update(Object::Cluster(cluster.into()))])
            .await
            .unwrap();
        let joined = admit(&store, 1, "n8", "10.0.0.8:4280").await.unwrap();
        assert_eq!(joined.raft_id, 8);
    }

    #[test]
    fn the_raft_id_file_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_raft_id(dir.path()).unwrap(), None);
        store_raft_id(dir.path(), 7).unwrap();
        assert_eq!(load_raft_id(dir.path()).unwrap(), Some(7));
        std::fs::write(raft_id_path(dir.path()), "zero\n").unwrap();
        let err = load_raft_id(dir.path()).unwrap_err();
        assert!(err.contains("raft-id"), "{err}");
    }
}
