//! Who is in the Raft group and where to reach them.
//!
//! The cluster object's `managers` table maps each Raft id to the manager's
//! node id and advertised address; it is replicated like any other write, so
//! every manager's transport can find every peer. `next_raft_id` only grows:
//! a Raft id is never handed out twice, even after its manager is gone.
//!
//! Joining ([`Membership::join`], the leader's side of `Raft.JoinCluster`)
//! records the joiner with a fresh id, then adds it as a voter with a conf
//! change, and answers with the id, the members and the cluster data key. A
//! manager keeps its own Raft id in `DATA_DIR/raft-id`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use shoal_proto::{JoinClusterResponse, RaftMember};
use tonic::Status;

use super::PeerInbox;
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
        let highest = cluster.managers.iter().map(|m| m.raft_id).max();
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
            .propose(vec![Action::Update(Object::Cluster(cluster))])
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

    /// Add the manager `node_id`, reached at `addr`, as a voter.
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
            .add_voter(member.raft_id)
            .await
            .map_err(store_status)?;
        Ok(JoinClusterResponse {
            raft_id: member.raft_id,
            members: self.store.read(members),
            data_key: self.key.as_bytes().to_vec(),
        })
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

    async fn cluster_store() -> Store {
        let store = Store::in_memory();
        let cluster = Cluster {
            id: "c1".into(),
            ..Default::default()
        };
        store
            .propose(vec![Action::Create(Object::Cluster(cluster))])
            .await
            .unwrap();
        store
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
            .propose(vec![Action::Update(Object::Cluster(cluster))])
            .await
            .unwrap();
        let fourth = admit(&store, 1, "n4", "10.0.0.4:4280").await.unwrap();
        assert_eq!(fourth.raft_id, 4);
        let ids: Vec<u64> = store.read(members).iter().map(|m| m.raft_id).collect();
        assert_eq!(ids, [1, 2, 4]);
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
