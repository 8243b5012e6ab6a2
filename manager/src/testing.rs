//! What other crates' tests need from a manager (feature `testing`): its
//! `Control` and `Watch` APIs over an in-memory store, with no Raft, TLS or
//! agents, and writes that skip the API's checks.

use std::path::Path;

use shoal_proto::control_server::ControlServer;
use shoal_proto::watch_server::WatchServer;
use shoal_proto::{Service, Task, TaskStatus};
use tokio_util::sync::CancellationToken;

use crate::config::ManagerConfig;
use crate::control::{ControlService, WatchService};
use crate::server::ServerError;
use crate::store::{Action, Object, Store, StoreError};

/// A store in memory, written directly, served on a unix socket.
#[derive(Clone)]
pub struct MemoryManager {
    store: Store,
}

impl Default for MemoryManager {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryManager {
    pub fn new() -> Self {
        MemoryManager {
            store: Store::in_memory(),
        }
    }

    /// Serve `Control` and `Watch` on a new unix socket at `path` until the
    /// task is dropped; cancelling `shutdown` ends the watch streams.
    pub fn serve(&self, path: &Path, shutdown: CancellationToken) -> std::io::Result<()> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let server = tonic::transport::Server::builder()
            .add_service(ControlServer::new(ControlService::new(
                self.store.clone(),
                None,
            )))
            .add_service(WatchServer::new(WatchService::new(
                self.store.clone(),
                shutdown,
            )))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener));
        tokio::spawn(server);
        Ok(())
    }

    /// Create `service` and `tasks` in one write, without the API's checks.
    pub async fn create(&self, service: Service, tasks: Vec<Task>) -> Result<(), StoreError> {
        let mut actions = vec![Action::Create(Object::Service(Box::new(service)))];
        actions.extend(
            tasks
                .into_iter()
                .map(|t| Action::Create(Object::Task(Box::new(t)))),
        );
        self.store.propose(actions).await.map(|_| ())
    }

    /// Record `status` for task `task_id`, as its agent would.
    pub async fn report(&self, task_id: &str, status: TaskStatus) -> Result<(), StoreError> {
        let report = Action::Report {
            task_id: task_id.to_string(),
            status,
        };
        self.store.propose(vec![report]).await.map(|_| ())
    }

    /// Remove `service` (not its tasks).
    pub async fn remove(&self, service: Service) -> Result<(), StoreError> {
        let remove = Action::Delete(Object::Service(Box::new(service)));
        self.store.propose(vec![remove]).await.map(|_| ())
    }

    /// The ids of the tasks the store holds.
    pub fn task_ids(&self) -> Vec<String> {
        self.store
            .read(|s| s.tasks().map(|t| t.id.clone()).collect())
    }
}

/// Write `services` into the store of the stopped manager whose data dir
/// `config` names, straight through Raft and without the API's checks: how
/// tests model a store that an older version wrote.
pub async fn write_unchecked(
    config: &ManagerConfig,
    services: Vec<Service>,
) -> Result<(), ServerError> {
    let (store, raft) = crate::raft::start(config).await?;
    let mut leadership = store.leadership();
    let written = async {
        leadership
            .wait_for(|l| l.is_leader)
            .await
            .map_err(|_| StoreError::Stopped)?;
        let actions = services
            .into_iter()
            .map(|s| Action::Create(Object::Service(Box::new(s))))
            .collect();
        store.propose(actions).await
    }
    .await;
    raft.shutdown().await;
    written.map_err(|e| ServerError::Config(format!("writing around the API: {e}")))?;
    Ok(())
}
