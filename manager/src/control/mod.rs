//! The `Control` and `Watch` gRPC APIs: what the CLI talks to.
//!
//! Writes validate the spec (with the same `shoal_proto::validate` the CLI runs),
//! then propose atomically; the store's own checks (versions, unique names and
//! ports) are the final word, so two racing clients cannot both win. Every
//! refusal names the field or object and the problem. On a follower, writes
//! are relayed to the leader ([`ForwardWrites`]); reads use the local store.

mod forward;
mod nodes;
mod secrets;
mod services;
mod watch;

use shoal_proto::control_server::Control;
use shoal_proto::*;
use tonic::{Request, Response, Status};

use crate::dispatcher::Dispatcher;
use crate::grpc_status::lookup_status;
use crate::logbroker::LogStream;
use crate::raft::RaftHandle;
use crate::seal::DataKey;
use crate::store::{Object, Store};

pub use forward::{ForwardWrites, Forwarder};
pub use watch::WatchService;

/// The Control API of one manager.
#[derive(Clone)]
pub struct ControlService {
    store: Store,
    raft: Option<RaftHandle>,
    /// Serves `ServiceLogs` through the agents' sessions (absent: no logs).
    dispatcher: Option<Dispatcher>,
    /// Opens what the store keeps sealed (join tokens, secrets); absent in
    /// unit tests that do not need it.
    data_key: Option<DataKey>,
    /// The managers' side of the node calls (absent without Raft).
    managers: Option<nodes::Managers>,
}

impl ControlService {
    /// `raft` supplies the Raft status shown by `GetCluster` (absent in unit tests).
    pub fn new(store: Store, raft: Option<RaftHandle>) -> Self {
        ControlService {
            store,
            raft,
            dispatcher: None,
            data_key: None,
            managers: None,
        }
    }

    /// List managers as nodes and demote or remove them through `membership`.
    pub fn with_membership(
        mut self,
        membership: crate::raft::Membership,
        within: std::time::Duration,
    ) -> Self {
        if let Some(raft) = self.raft.clone() {
            self.managers = Some(nodes::Managers {
                membership,
                group: std::sync::Arc::new(move || raft.group()),
                within,
            });
        }
        self
    }

    /// Open sealed values (join tokens, secrets) with the cluster data key.
    pub fn with_data_key(mut self, key: DataKey) -> Self {
        self.data_key = Some(key);
        self
    }

    fn data_key(&self) -> Result<&DataKey, Status> {
        self.data_key
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this manager holds no cluster data key"))
    }

    /// Serve `ServiceLogs` through `dispatcher`, whose sessions reach the agents.
    pub fn with_dispatcher(mut self, dispatcher: Dispatcher) -> Self {
        self.dispatcher = Some(dispatcher);
        self
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Control for ControlService {
    type ServiceLogsStream = LogStream;

    async fn service_logs(
        &self,
        req: Request<ServiceLogsRequest>,
    ) -> Reply<Self::ServiceLogsStream> {
        let Some(dispatcher) = &self.dispatcher else {
            return Err(Status::unimplemented("this manager does not serve logs"));
        };
        // Agents keep their sessions with the leader only.
        if !dispatcher.is_running() {
            return Err(Status::unavailable(
                "logs are gathered by the leader manager, and this manager is not the leader; \
                 connect to the leader",
            ));
        }
        let stream = dispatcher
            .log_broker()
            .subscribe(&self.store, req.into_inner())
            .await?;
        Ok(Response::new(stream))
    }

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Reply<CreateServiceResponse> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let service = services::create(&self.store, spec).await?;
        Ok(Response::new(CreateServiceResponse {
            service: Some(service),
        }))
    }

    async fn get_service(&self, req: Request<GetServiceRequest>) -> Reply<GetServiceResponse> {
        let reference = req.into_inner().service;
        let service = self
            .store
            .read(|s| s.find_service(&reference).cloned())
            .map_err(lookup_status)?;
        Ok(Response::new(GetServiceResponse {
            service: Some(service),
        }))
    }

    async fn list_services(
        &self,
        _req: Request<ListServicesRequest>,
    ) -> Reply<ListServicesResponse> {
        Ok(Response::new(ListServicesResponse {
            services: self.store.read(services::summaries),
        }))
    }

    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Reply<UpdateServiceResponse> {
        let service = services::update(&self.store, req.into_inner()).await?;
        Ok(Response::new(UpdateServiceResponse {
            service: Some(service),
        }))
    }

    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Reply<RemoveServiceResponse> {
        services::remove(&self.store, &req.into_inner().service).await?;
        Ok(Response::new(RemoveServiceResponse {}))
    }

    async fn list_tasks(&self, req: Request<ListTasksRequest>) -> Reply<ListTasksResponse> {
        let (tasks, next) = self
            .store
            .read(|s| services::list_tasks(s, &req.into_inner()))?;
        Ok(Response::new(ListTasksResponse { tasks, next }))
    }

    async fn get_task(&self, req: Request<GetTaskRequest>) -> Reply<GetTaskResponse> {
        let reference = req.into_inner().task;
        let task = self
            .store
            .read(|s| s.find_task(&reference).cloned())
            .map_err(lookup_status)?;
        Ok(Response::new(GetTaskResponse { task: Some(task) }))
    }

    async fn list_nodes(&self, _req: Request<ListNodesRequest>) -> Reply<ListNodesResponse> {
        let mut nodes: Vec<Node> = self.store.read(|s| {
            let mut nodes: Vec<Node> = s.nodes().cloned().collect();
            if let Some(m) = &self.managers {
                nodes.extend(nodes::manager_nodes(s, &(m.group)(), m.within));
            }
            nodes
        });
        nodes.sort_by(|a, b| hostname(a).cmp(hostname(b)).then(a.id.cmp(&b.id)));
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Reply<GetNodeResponse> {
        let reference = req.into_inner().node;
        let node = self
            .store
            .read(|s| nodes::find(s, &reference, self.managers.as_ref()))
            .map_err(lookup_status)?;
        Ok(Response::new(GetNodeResponse { node: Some(node) }))
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Reply<UpdateNodeResponse> {
        let node = nodes::update(&self.store, self.managers.as_ref(), req.into_inner()).await?;
        Ok(Response::new(UpdateNodeResponse { node: Some(node) }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Reply<RemoveNodeResponse> {
        nodes::remove(&self.store, self.managers.as_ref(), req.into_inner()).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Reply<GetJoinTokenResponse> {
        let req = req.into_inner();
        let role = NodeRole::try_from(req.role)
            .map_err(|_| Status::invalid_argument(format!("role: unknown role {}", req.role)))?;
        let key = self.data_key()?;
        let token = if req.rotate {
            let token = crate::ca::rotate_join_token(&self.store, key, role).await?;
            tracing::info!(role = ?role, "join token rotated");
            token
        } else {
            self.store.read(|s| crate::ca::join_token(s, key, role))?
        };
        Ok(Response::new(GetJoinTokenResponse {
            token: token.to_string(),
        }))
    }

    async fn create_secret(
        &self,
        req: Request<CreateSecretRequest>,
    ) -> Reply<CreateSecretResponse> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let secret = secrets::create_secret(&self.store, self.data_key()?, spec).await?;
        Ok(Response::new(CreateSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn get_secret(&self, req: Request<GetSecretRequest>) -> Reply<GetSecretResponse> {
        let reference = req.into_inner().secret;
        let secret = self.store.read(|s| secrets::get_secret(s, &reference))?;
        Ok(Response::new(GetSecretResponse {
            secret: Some(secret),
        }))
    }

    async fn list_secrets(&self, _req: Request<ListSecretsRequest>) -> Reply<ListSecretsResponse> {
        Ok(Response::new(ListSecretsResponse {
            secrets: self.store.read(secrets::list_secrets),
        }))
    }

    async fn remove_secret(
        &self,
        req: Request<RemoveSecretRequest>,
    ) -> Reply<RemoveSecretResponse> {
        secrets::remove_secret(&self.store, &req.into_inner().secret).await?;
        Ok(Response::new(RemoveSecretResponse {}))
    }

    async fn create_config(
        &self,
        req: Request<CreateConfigRequest>,
    ) -> Reply<CreateConfigResponse> {
        let spec = req.into_inner().spec.unwrap_or_default();
        let config = secrets::create_config(&self.store, spec).await?;
        Ok(Response::new(CreateConfigResponse {
            config: Some(config),
        }))
    }

    async fn get_config(&self, req: Request<GetConfigRequest>) -> Reply<GetConfigResponse> {
        let reference = req.into_inner().config;
        let config = self.store.read(|s| secrets::get_config(s, &reference))?;
        Ok(Response::new(GetConfigResponse {
            config: Some(config),
        }))
    }

    async fn list_configs(&self, _req: Request<ListConfigsRequest>) -> Reply<ListConfigsResponse> {
        Ok(Response::new(ListConfigsResponse {
            configs: self.store.read(secrets::list_configs),
        }))
    }

    async fn remove_config(
        &self,
        req: Request<RemoveConfigRequest>,
    ) -> Reply<RemoveConfigResponse> {
        secrets::remove_config(&self.store, &req.into_inner().config).await?;
        Ok(Response::new(RemoveConfigResponse {}))
    }

    async fn get_cluster(&self, _req: Request<GetClusterRequest>) -> Reply<GetClusterResponse> {
        let cluster = self
            .store
            .read(|s| s.cluster().cloned())
            .map(redact_cluster);
        let status = self.raft.as_ref().map(|r| r.status()).unwrap_or_default();
        Ok(Response::new(GetClusterResponse {
            cluster,
            raft_index: status.applied,
            raft_term: status.term,
            leader_addr: self
                .store
                .read(|s| crate::raft::membership::addr_of(s, status.leader_id))
                .unwrap_or_default(),
        }))
    }
}

/// What no API sends of the cluster object: the sealed CA key and the sealed
/// join tokens (`GetJoinToken` shows a token on request).
pub(crate) fn redact_cluster(mut cluster: Cluster) -> Cluster {
    if let Some(ca) = cluster.root_ca.as_mut() {
        ca.key_sealed.clear();
    }
    cluster.join_tokens = None;
    cluster
}

/// An object as the APIs may show it.
pub(crate) fn redacted(object: Object) -> Object {
    match object {
        Object::Cluster(c) => Object::Cluster(Box::new(redact_cluster(*c))),
        Object::Secret(s) => Object::Secret(Box::new(secrets::redact_secret(*s))),
        other => other,
    }
}

fn hostname(node: &Node) -> &str {
    node.description
        .as_ref()
        .map(|d| d.hostname.as_str())
        .unwrap_or("")
}

#[cfg(test)]
mod tests;
