//! Nodes in the Control API: the agents' Node objects, and the managers,
//! which have none of their own and are listed from the managers table with
//! their place in the Raft group ([`manager_nodes`]). Writes: availability,
//! labels, removal, and for managers demotion and removal from the group.

use std::time::Duration;

use shoal_proto::{
    ManagerStatus, Node, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus, RaftMember,
    Reachability, RemoveNodeRequest, UpdateNodeRequest, validate,
};
use tonic::Status;

use crate::grpc_status::{lookup_status, spec_status, store_status};
use crate::raft::GroupView;
use crate::raft::membership::{self, Membership, Removal};
use crate::store::{Action, Kind, LookupError, MemState, Object, Store, StoreError};

/// What the manager-facing node calls need: the group's view and how to
/// change it. Absent for a store without Raft (unit tests).
#[derive(Clone)]
pub struct Managers {
    pub membership: Membership,
    pub group: std::sync::Arc<dyn Fn() -> GroupView + Send + Sync>,
    /// A peer heard from within this long counts as reachable.
    pub within: Duration,
}

/// The managers as nodes: role manager, READY while reachable, with their
/// manager status. Only the leader hears every manager, so only its answer
/// is complete (the Control API relays node reads to it).
pub fn manager_nodes(state: &MemState, group: &GroupView, within: Duration) -> Vec<Node> {
    membership::members(state)
        .iter()
        .map(|m| manager_node(m, group, within))
        .collect()
}

fn manager_node(member: &RaftMember, group: &GroupView, within: Duration) -> Node {
    let reachable = group.reachable(member.raft_id, within);
    let host = member
        .addr
        .rsplit_once(':')
        .map(|(host, _)| host)
        .unwrap_or(&member.addr);
    Node {
        id: member.node_id.clone(),
        spec: Some(NodeSpec {
            role: NodeRole::Manager as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: host.to_string(),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: if reachable {
                NodeState::Ready
            } else {
                NodeState::Down
            } as i32,
            addr: member.addr.clone(),
            ..Default::default()
        }),
        manager_status: Some(ManagerStatus {
            raft_id: member.raft_id,
            leader: member.raft_id == group.leader_id,
            reachability: if reachable {
                Reachability::Reachable
            } else {
                Reachability::Unreachable
            } as i32,
            addr: member.addr.clone(),
            voter: group.voters.contains(&member.raft_id),
        }),
        ..Default::default()
    }
}

/// The manager `reference` names: its node id or a unique prefix of it.
pub fn find_manager(state: &MemState, reference: &str) -> Result<RaftMember, LookupError> {
    let members = membership::members(state);
    if let Some(m) = members.iter().find(|m| m.node_id == reference) {
        return Ok(m.clone());
    }
    let matching: Vec<&RaftMember> = members
        .iter()
        .filter(|m| !reference.is_empty() && m.node_id.starts_with(reference))
        .collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(LookupError::NotFound {
            kind: Kind::Node,
            reference: reference.to_string(),
        }),
        many => Err(LookupError::Ambiguous {
            kind: Kind::Node,
            reference: reference.to_string(),
            count: many.len(),
        }),
    }
}

/// A node (agent or manager) by id, id prefix or hostname, for reads.
pub fn find(
    state: &MemState,
    reference: &str,
    managers: Option<&Managers>,
) -> Result<Node, LookupError> {
    match state.find_node(reference) {
        Ok(node) => Ok(node.clone()),
        Err(LookupError::NotFound { .. }) if managers.is_some() => {
            let managers = managers.expect("checked");
            let member = find_manager(state, reference)?;
            Ok(manager_node(&member, &(managers.group)(), managers.within))
        }
        Err(e) => Err(e),
    }
}

/// What a node reference names for a write: an agent's Node object, or
/// (with no such agent) a manager.
enum Target<'a> {
    Agent(Node),
    Manager(&'a Managers, RaftMember),
}

fn target<'a>(
    store: &Store,
    managers: Option<&'a Managers>,
    reference: &str,
) -> Result<Target<'a>, Status> {
    match (store.read(|s| s.find_node(reference).cloned()), managers) {
        (Ok(node), _) => Ok(Target::Agent(node)),
        (Err(LookupError::NotFound { .. }), Some(managers)) => {
            let member = store
                .read(|s| find_manager(s, reference))
                .map_err(lookup_status)?;
            Ok(Target::Manager(managers, member))
        }
        (Err(e), _) => Err(lookup_status(e)),
    }
}

/// `node update` of a manager: only its role may change, to worker (demote).
async fn update_manager(
    managers: &Managers,
    member: &RaftMember,
    spec: &NodeSpec,
) -> Result<Node, Status> {
    if spec.role() != NodeRole::Worker {
        return Err(Status::invalid_argument(format!(
            "spec: manager {} runs no tasks: only its role can change (shoal node demote)",
            member.node_id
        )));
    }
    let group = (managers.group)();
    managers
        .membership
        .remove(member, &group, managers.within, Removal::Demote)
        .await?;
    let mut node = manager_node(member, &group, managers.within);
    node.spec = Some(spec.clone());
    node.manager_status = None;
    Ok(node)
}

/// Replace a node's spec (availability, labels); for a manager, demote it.
pub async fn update(
    store: &Store,
    managers: Option<&Managers>,
    req: UpdateNodeRequest,
) -> Result<Node, Status> {
    let spec = req.spec.unwrap_or_default();
    validate::node_spec(&spec).map_err(spec_status)?;
    let mut node = match target(store, managers, &req.node)? {
        Target::Agent(node) => node,
        Target::Manager(managers, member) => {
            return update_manager(managers, &member, &spec).await;
        }
    };
    let version = node.meta.as_ref().map(|m| m.version).unwrap_or_default();
    if req.version != 0 && req.version != version {
        return Err(store_status(StoreError::Conflict {
            kind: Kind::Node,
            id: node.id.clone(),
            expected: req.version,
            actual: version,
        }));
    }
    if spec.role != node.spec.as_ref().map(|s| s.role).unwrap_or_default() {
        return Err(Status::invalid_argument(format!(
            "role: node {} is an agent, which cannot turn into a manager in place; start `shoal manager --join LEADER_ADDR --token MANAGER_TOKEN` on that machine instead",
            node.id
        )));
    }
    node.spec = Some(spec);
    let id = node.id.clone();
    store
        .propose(vec![Action::Update(Object::Node(node.into()))])
        .await
        .map_err(store_status)?;
    store
        .read(|s| s.node(&id).cloned())
        .ok_or_else(|| Status::not_found(format!("node {id} was removed meanwhile")))
}

/// Remove a node from the cluster: refused while it is up unless forced, as in Swarm.
pub async fn remove(
    store: &Store,
    managers: Option<&Managers>,
    req: RemoveNodeRequest,
) -> Result<(), Status> {
    let mut node = match target(store, managers, &req.node)? {
        Target::Agent(node) => node,
        Target::Manager(managers, member) => {
            let group = (managers.group)();
            let removal = Removal::Remove { force: req.force };
            return managers
                .membership
                .remove(&member, &group, managers.within, removal)
                .await;
        }
    };
    let state = node.status.as_ref().map(|s| s.state()).unwrap_or_default();
    if state == NodeState::Ready && !req.force {
        return Err(Status::failed_precondition(format!(
            "node {} is ready and may still run tasks; stop its agent first, or use --force",
            node.id
        )));
    }
    node.meta.get_or_insert_with(Default::default).version = 0;
    for _ in 0..5 {
        let mut actions = vec![Action::Delete(Object::Node(node.clone().into()))];
        // Its certificate stays valid until it expires: remember the node
        // until then, so that every manager refuses it at once.
        if let Some(mut cluster) = store.read(|s| s.cluster().cloned()) {
            membership::remember_removed(&mut cluster, &node.id);
            actions.push(Action::Update(Object::Cluster(cluster.into())));
        }
        match store.propose(actions).await {
            Ok(_) => return Ok(()),
            Err(crate::store::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_status(e)),
        }
    }
    Err(Status::aborted(
        "the cluster object kept changing while removing the node; try again",
    ))
}
