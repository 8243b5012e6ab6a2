//! Node writes of the Control API: availability, labels, removal.

use shoal_proto::{Node, NodeState, RemoveNodeRequest, UpdateNodeRequest, validate};
use tonic::Status;

use super::errors::{lookup_status, spec_status, store_status};
use crate::store::{Action, Kind, Object, Store, StoreError};

/// Replace a node's spec (availability, labels). Role changes arrive with
/// multi-manager support.
pub async fn update(store: &Store, req: UpdateNodeRequest) -> Result<Node, Status> {
    let spec = req.spec.unwrap_or_default();
    validate::node_spec(&spec).map_err(spec_status)?;
    let mut node = store
        .read(|s| s.find_node(&req.node).cloned())
        .map_err(lookup_status)?;
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
        return Err(Status::invalid_argument(
            "role: promoting or demoting nodes is not supported yet (it comes with multi-manager clusters)",
        ));
    }
    node.spec = Some(spec);
    let id = node.id.clone();
    store
        .propose(vec![Action::Update(Object::Node(node))])
        .await
        .map_err(store_status)?;
    store
        .read(|s| s.node(&id).cloned())
        .ok_or_else(|| Status::not_found(format!("node {id} was removed meanwhile")))
}

/// Remove a node from the cluster: refused while it is up unless forced, as in Swarm.
pub async fn remove(store: &Store, req: RemoveNodeRequest) -> Result<(), Status> {
    let mut node = store
        .read(|s| s.find_node(&req.node).cloned())
        .map_err(lookup_status)?;
    let state = node.status.as_ref().map(|s| s.state()).unwrap_or_default();
    if state == NodeState::Ready && !req.force {
        return Err(Status::failed_precondition(format!(
            "node {} is ready and may still run tasks; stop its agent first, or use --force",
            node.id
        )));
    }
    node.meta.get_or_insert_with(Default::default).version = 0;
    for _ in 0..5 {
        let mut actions = vec![Action::Delete(Object::Node(node.clone()))];
        // Its certificate stays valid until it expires: remember the node
        // until then, so that every manager refuses it at once.
        if let Some(mut cluster) = store.read(|s| s.cluster().cloned()) {
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
                .insert(node.id.clone(), now + lifetime);
            actions.push(Action::Update(Object::Cluster(cluster)));
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
