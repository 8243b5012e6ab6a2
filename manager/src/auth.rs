//! Who may call what. Identity comes from the peer's certificate only
//! ([`shoal_proto::tls::ConnInfo`]); the unix control socket (mode 0600 in the
//! data dir) is the local administrator.
//!
//! | service    | unix socket | admin | manager | worker | no certificate |
//! |------------|-------------|-------|---------|--------|----------------|
//! | Control    | yes         | yes   | yes     | no     | no             |
//! | Watch      | yes         | yes   | yes     | no     | no             |
//! | Dispatcher | —           | no    | yes     | yes, own node only | no |
//! | Raft       | —           | no    | yes     | no     | no             |
//! | Ca         | —           | root certificate and join: anyone; renewal: any node |
//!
//! A node removed from the cluster is refused at once, although its
//! certificate stays valid until it expires.

use std::sync::Arc;

use shoal_proto::Cluster;
use shoal_proto::tls::{ConnInfo, PeerIdentity, Role};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::store::Store;

/// The authenticated caller of a request, as the interceptor found it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The unix control socket, or an in-process call.
    Local,
    /// A TLS peer with a verified certificate.
    Peer(Arc<PeerIdentity>),
}

impl Caller {
    /// The caller the interceptor recorded; in-process calls (unit tests) that
    /// bypass the listeners are local.
    pub fn of<T>(request: &Request<T>) -> Caller {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Local)
    }

    /// The node the caller's certificate names, if it is a node.
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Caller::Peer(p) if p.role != Role::Admin => Some(&p.node_id),
            _ => None,
        }
    }
}

/// Refuses callers whose certificate does not grant the service, and records
/// the [`Caller`] for the handlers.
#[derive(Clone)]
pub struct Authorize {
    store: Store,
    service: &'static str,
    roles: &'static [Role],
}

impl Authorize {
    pub fn new(store: Store, service: &'static str, roles: &'static [Role]) -> Self {
        Authorize {
            store,
            service,
            roles,
        }
    }

    /// Control and Watch: administrators and managers.
    pub fn control(store: Store) -> Self {
        Self::new(store, "the control API", &[Role::Admin, Role::Manager])
    }

    /// Dispatcher: nodes (each only about itself; the handlers check that).
    pub fn dispatcher(store: Store) -> Self {
        Self::new(store, "the dispatcher", &[Role::Worker, Role::Manager])
    }

    /// Raft: managers.
    pub fn raft(store: Store) -> Self {
        Self::new(store, "the raft service", &[Role::Manager])
    }
}

impl Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = match ConnInfo::of(&request) {
            // Not a TLS connection: the unix socket.
            None => Caller::Local,
            Some(info) => {
                let peer = info.peer.clone().ok_or_else(|| {
                    Status::unauthenticated(format!(
                        "{} requires a client certificate issued by this cluster's CA",
                        self.service
                    ))
                })?;
                if !self.roles.contains(&peer.role) {
                    return Err(Status::permission_denied(format!(
                        "a {} certificate may not call {}",
                        peer.role, self.service
                    )));
                }
                admit(self.store.cluster().as_deref(), &peer)?;
                Caller::Peer(peer)
            }
        };
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// What the refusal of a removed node says (a removed manager's transport
/// looks for it to learn that it is out).
pub const REMOVED_NODE: &str = "was removed from the cluster";

/// Refuse a certificate of another cluster or of a removed node.
pub fn admit(cluster: Option<&Cluster>, peer: &PeerIdentity) -> Result<(), Status> {
    let Some(cluster) = cluster else {
        return Ok(());
    };
    if cluster.id != peer.cluster_id {
        return Err(Status::permission_denied(format!(
            "certificate belongs to cluster {}, not {}",
            peer.cluster_id, cluster.id
        )));
    }
    if cluster.removed_nodes.contains_key(&peer.node_id) {
        return Err(Status::permission_denied(format!(
            "node {} {REMOVED_NODE}; join it again with a token",
            peer.node_id
        )));
    }
    Ok(())
}

/// The node a dispatcher request may speak for: the caller's own node, or
/// anything for a local (in-process) caller.
pub fn check_node(caller: &Caller, node_id: &str) -> Result<(), Status> {
    match caller {
        Caller::Local => Ok(()),
        Caller::Peer(peer) if peer.node_id == node_id => Ok(()),
        Caller::Peer(peer) => Err(Status::permission_denied(format!(
            "node {} may not act for node {node_id}",
            peer.node_id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::Cluster;

    use super::*;
    use crate::test_fixtures::store_with_cluster;

    fn peer(role: Role, node: &str, cluster: &str) -> Arc<PeerIdentity> {
        Arc::new(PeerIdentity {
            node_id: node.into(),
            role,
            cluster_id: cluster.into(),
            not_before: 0,
            not_after: i64::MAX,
        })
    }

    fn request(peer: Option<Arc<PeerIdentity>>) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(ConnInfo::new(None, peer));
        request
    }

    async fn cluster_store() -> Store {
        let mut cluster = Cluster {
            id: "c1".into(),
            ..Default::default()
        };
        cluster.removed_nodes.insert("gone".into(), i64::MAX);
        store_with_cluster(cluster).await
    }

    #[tokio::test]
    async fn roles_map_to_services() {
        let store = cluster_store().await;
        let code = |mut auth: Authorize, req: Request<()>| match auth.call(req) {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        let worker = || request(Some(peer(Role::Worker, "n1", "c1")));
        let manager = || request(Some(peer(Role::Manager, "m1", "c1")));
        let admin = || request(Some(peer(Role::Admin, "a1", "c1")));
        use tonic::Code::{PermissionDenied, Unauthenticated};
        let ok = tonic::Code::Ok;
        assert_eq!(
            code(Authorize::control(store.clone()), worker()),
            PermissionDenied
        );
        assert_eq!(
            code(Authorize::raft(store.clone()), worker()),
            PermissionDenied
        );
        assert_eq!(code(Authorize::dispatcher(store.clone()), worker()), ok);
        assert_eq!(code(Authorize::control(store.clone()), admin()), ok);
        assert_eq!(
            code(Authorize::dispatcher(store.clone()), admin()),
            PermissionDenied
        );
        assert_eq!(
            code(Authorize::raft(store.clone()), admin()),
            PermissionDenied
        );
        assert_eq!(code(Authorize::raft(store.clone()), manager()), ok);
        assert_eq!(code(Authorize::control(store.clone()), manager()), ok);
        // TLS without a certificate, another cluster, a removed node.
        assert_eq!(
            code(Authorize::dispatcher(store.clone()), request(None)),
            Unauthenticated
        );
        let foreign = request(Some(peer(Role::Admin, "a1", "c2")));
        assert_eq!(
            code(Authorize::control(store.clone()), foreign),
            PermissionDenied
        );
        let removed = request(Some(peer(Role::Worker, "gone", "c1")));
        assert_eq!(
            code(Authorize::dispatcher(store.clone()), removed),
            PermissionDenied
        );
        // The unix socket (no TLS connection info) is the local administrator.
        let mut auth = Authorize::control(store.clone());
        let req = auth.call(Request::new(())).unwrap();
        assert!(matches!(Caller::of(&req), Caller::Local));
        // The caller is recorded for the handlers.
        let mut auth = Authorize::dispatcher(store);
        let req = auth.call(worker()).unwrap();
        let caller = Caller::of(&req);
        assert_eq!(caller.node_id(), Some("n1"));
        check_node(&caller, "n1").unwrap();
        assert_eq!(
            check_node(&caller, "n2").unwrap_err().code(),
            PermissionDenied
        );
    }
}
