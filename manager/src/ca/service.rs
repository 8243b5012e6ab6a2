//! The `Ca` gRPC service: how nodes join and renew.

use shoal_proto::ca_server::Ca;
use shoal_proto::tls::{ConnInfo, JoinToken, Role, pki};
use shoal_proto::{
    GetRootCaCertificateRequest, GetRootCaCertificateResponse, IssueNodeCertificateRequest,
    IssueNodeCertificateResponse, NodeRole, RenewNodeCertificateRequest,
};
use tonic::{Request, Response, Status};

use super::{ClusterCa, join_token};
use crate::auth;
use crate::seal::DataKey;
use crate::store::Store;

/// Serves the cluster CA on every manager.
#[derive(Clone)]
pub struct CaService {
    store: Store,
    key: DataKey,
}

impl CaService {
    pub fn new(store: Store, key: DataKey) -> Self {
        CaService { store, key }
    }

    fn open(&self) -> Result<ClusterCa, Status> {
        Ok(self.store.read(|s| ClusterCa::open(s, &self.key))?)
    }
}

fn role_of(role: Role) -> NodeRole {
    match role {
        Role::Manager => NodeRole::Manager,
        Role::Worker | Role::Admin => NodeRole::Worker,
    }
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn get_root_ca_certificate(
        &self,
        _request: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        let cert_pem = self
            .store
            .read(|s| {
                s.cluster()
                    .and_then(|c| c.root_ca.as_ref())
                    .map(|ca| ca.cert_pem.clone())
            })
            .ok_or_else(|| Status::unavailable("the cluster has no root CA yet"))?;
        Ok(Response::new(GetRootCaCertificateResponse { cert_pem }))
    }

    async fn issue_node_certificate(
        &self,
        request: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let remote = ConnInfo::of(&request).and_then(|i| i.remote_addr);
        let request = request.into_inner();
        let offered = JoinToken::parse(&request.token)
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        let ca = self.open()?;
        if offered.ca_digest() != ca.root.digest() {
            return Err(Status::permission_denied(
                "token: it pins another root CA than this cluster's (wrong cluster, or the CA was rotated)",
            ));
        }
        // Check both secrets whatever the first gives, so the time taken does
        // not tell which one matched.
        let (worker, manager) = self.store.read(|s| {
            Ok::<_, super::CaError>((
                join_token(s, &self.key, NodeRole::Worker)?,
                join_token(s, &self.key, NodeRole::Manager)?,
            ))
        })?;
        let is_worker = worker.secret_matches(&offered);
        let is_manager = manager.secret_matches(&offered);
        let role = match (is_worker, is_manager) {
            (true, _) => Role::Worker,
            (false, true) => Role::Manager,
            (false, false) => {
                tracing::warn!(remote = ?remote, "join refused: the token's secret is not valid");
                return Err(Status::permission_denied(
                    "token: not valid for this cluster (it was rotated, or mistyped)",
                ));
            }
        };
        let node_id = shoal_proto::ids::new_id();
        let cert_pem = ca
            .issue(&request.csr_pem, &node_id, role)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        tracing::info!(node.id = %node_id, %role, remote = ?remote, "node joined: certificate issued");
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id,
            role: role_of(role) as i32,
            cert_pem,
            ca_pem: ca.root.cert_pem().to_string(),
        }))
    }

    async fn renew_node_certificate(
        &self,
        request: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let peer = ConnInfo::of(&request)
            .and_then(|i| i.peer.clone())
            .ok_or_else(|| {
                Status::unauthenticated("renewal requires the node's current certificate")
            })?;
        auth::admit(self.store.cluster().as_deref(), &peer)?;
        // The role follows the node's current role in the store (promote and
        // demote), never the request.
        let role = match peer.role {
            Role::Admin => Role::Admin,
            role => self
                .store
                .read(|s| s.node(&peer.node_id).and_then(|n| n.spec.clone()))
                .map(|spec| match spec.role() {
                    NodeRole::Manager => Role::Manager,
                    NodeRole::Worker => Role::Worker,
                })
                .unwrap_or(role),
        };
        let ca = self.open()?;
        let cert_pem = ca
            .issue(&request.into_inner().csr_pem, &peer.node_id, role)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let expires = pki::PeerIdentity::from_pem(&cert_pem)
            .map(|i| i.not_after)
            .unwrap_or_default();
        tracing::info!(node.id = %peer.node_id, %role, expires, "certificate renewed");
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id: peer.node_id.clone(),
            role: role_of(role) as i32,
            cert_pem,
            ca_pem: ca.root.cert_pem().to_string(),
        }))
    }
}
