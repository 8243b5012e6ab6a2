//! The `Control` and `Watch` gRPC APIs: what the CLI talks to.
//!
//! Writes validate the spec (with the same `shoal_proto::validate` the CLI runs),
//! then propose atomically; the store's own checks (versions, unique names and
//! ports) are the final word, so two racing clients cannot both win. Every
//! refusal names the field or object and the problem.

mod errors;
mod nodes;
mod services;
mod watch;

use shoal_proto::control_server::Control;
use shoal_proto::*;
use tonic::{Request, Response, Status};

use crate::dispatcher::Dispatcher;
use crate::logbroker::LogStream;
use crate::raft::RaftHandle;
use crate::store::Store;

pub use errors::{lookup_status, store_status};
pub use watch::WatchService;

/// The Control API of one manager.
#[derive(Clone)]
pub struct ControlService {
    store: Store,
    raft: Option<RaftHandle>,
    /// Serves `ServiceLogs` through the agents' sessions (absent: no logs).
    dispatcher: Option<Dispatcher>,
}

impl ControlService {
    /// `raft` supplies the Raft status shown by `GetCluster` (absent in unit tests).
    pub fn new(store: Store, raft: Option<RaftHandle>) -> Self {
        ControlService {
            store,
            raft,
            dispatcher: None,
        }
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
        let tasks = self
            .store
            .read(|s| services::list_tasks(s, &req.into_inner()))?;
        Ok(Response::new(ListTasksResponse { tasks }))
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
        let mut nodes: Vec<Node> = self.store.read(|s| s.nodes().cloned().collect());
        nodes.sort_by(|a, b| hostname(a).cmp(hostname(b)).then(a.id.cmp(&b.id)));
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Reply<GetNodeResponse> {
        let reference = req.into_inner().node;
        let node = self
            .store
            .read(|s| s.find_node(&reference).cloned())
            .map_err(lookup_status)?;
        Ok(Response::new(GetNodeResponse { node: Some(node) }))
    }

    async fn update_node(&self, req: Request<UpdateNodeRequest>) -> Reply<UpdateNodeResponse> {
        let node = nodes::update(&self.store, req.into_inner()).await?;
        Ok(Response::new(UpdateNodeResponse { node: Some(node) }))
    }

    async fn remove_node(&self, req: Request<RemoveNodeRequest>) -> Reply<RemoveNodeResponse> {
        nodes::remove(&self.store, req.into_inner()).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn get_cluster(&self, _req: Request<GetClusterRequest>) -> Reply<GetClusterResponse> {
        let cluster = self.store.read(|s| s.cluster().cloned());
        let status = self.raft.as_ref().map(|r| r.status()).unwrap_or_default();
        Ok(Response::new(GetClusterResponse {
            cluster,
            raft_index: status.applied,
            raft_term: status.term,
            leader_addr: String::new(),
        }))
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
