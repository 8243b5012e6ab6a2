//! The dispatcher: the agents' side door (Swarm's `manager/dispatcher`).
//!
//! An agent opens a session ([`session`]), heartbeats on the period it is told,
//! follows its assignments as a stream (the full set first, then changes:
//! [`assignments`]) and reports task status, which a batcher commits to the store
//! in large proposals ([`status`]). A node that stops heartbeating for the grace
//! period is marked DOWN ([`monitor`]), and the orchestrator replaces its tasks.
//! A session also carries `service logs` traffic ([`logs`]): log subscriptions
//! to the agent and the logs it publishes, routed by a [`LogBroker`].
//!
//! Sessions and heartbeats live in memory only: a heartbeat never becomes a Raft
//! entry. That is also why only the leader serves agents: the RPCs answer
//! `unavailable` unless this manager leads and [`Dispatcher::run`] is active.

mod assignments;
mod budget;
mod lag;
mod logs;
mod monitor;
mod router;
mod secrets;
mod session;
mod status;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use shoal_proto::dispatcher_server;
use shoal_proto::{
    AssignmentsRequest, HeartbeatRequest, HeartbeatResponse, SessionRequest,
    UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Caller};
use crate::config::DispatcherConfig;
use crate::logbroker::{LogBroker, SubscriptionStream};
use crate::seal::DataKey;
use crate::store::{Store, StoreError};

/// Serves the `Dispatcher` gRPC service. Clone freely: clones share sessions.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: DispatcherConfig,
    /// Sessions of the connected agents. A std mutex: every critical section is
    /// a few map operations and never spans an await.
    sessions: Mutex<session::Sessions>,
    /// Set while [`Dispatcher::run`] is active.
    running: Mutex<Option<Running>>,
    /// Tells apart successive `run` calls, so that a stale one cannot clear its
    /// successor's state when it ends.
    epoch: AtomicU64,
    /// Routes `service logs` between clients and agents.
    logs: LogBroker,
    /// Opens the secrets the nodes' tasks use ([`Dispatcher::with_data_key`]).
    data_key: OnceLock<DataKey>,
    /// How far behind this manager's runtime is ([`lag`]).
    lag: lag::Lag,
}

/// What the RPCs need from an active `run`.
#[derive(Clone)]
struct Running {
    epoch: u64,
    /// Cancelled when `run` stops; every session token is a child of it, so
    /// stopping ends every stream.
    token: CancellationToken,
    /// Queue of the status batcher.
    status: mpsc::Sender<status::StatusRequest>,
    /// Routes committed task changes to the nodes' assignment feeds.
    router: router::Router,
}

impl Dispatcher {
    pub fn new(store: Store, config: crate::config::DispatcherConfig) -> Self {
        Dispatcher {
            inner: Arc::new(Inner {
                store,
                config,
                sessions: Mutex::new(session::Sessions::default()),
                running: Mutex::new(None),
                epoch: AtomicU64::new(0),
                logs: LogBroker::new(),
                data_key: OnceLock::new(),
                lag: lag::Lag::default(),
            }),
        }
    }

    /// Run the leader-side loops (heartbeat expiry, status batcher) until
    /// `shutdown` is cancelled. The RPCs are served only while this runs. On
    /// stop, every session ends and its agent reconnects (to the next leader).
    pub async fn run(&self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let epoch = inner.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let token = shutdown.child_token();
        let (status_tx, status_rx) = mpsc::channel(status::QUEUE_CAPACITY);
        let (router, routing) = router::Router::new(&inner.store, token.clone());
        {
            let mut running = lock(&inner.running);
            if let Some(previous) = running.take() {
                previous.token.cancel();
            }
            // Nodes the store believes READY get a grace period and the time
            // to find this leader before they are marked DOWN: no mass
            // rescheduling after a manager restart or failover.
            let ready = inner.store.read(monitor::ready_nodes);
            let mut sessions = lock(&inner.sessions);
            sessions.clear();
            sessions.await_nodes(
                ready,
                std::time::Instant::now(),
                inner.config.reconnect_window(),
            );
            *running = Some(Running {
                epoch,
                token: token.clone(),
                status: status_tx,
                router,
            });
        }
        let _stop = StopGuard {
            inner: inner.clone(),
            epoch,
            token: token.clone(),
        };
        tracing::info!(
            heartbeat_period_ms = inner.config.heartbeat_period.as_millis() as u64,
            grace_ms = inner.config.grace_period().as_millis() as u64,
            "dispatcher started"
        );
        tokio::join!(
            inner.lag.probe(token.clone()),
            monitor::run(inner.clone(), token.clone()),
            status::run_batcher(inner.store.clone(), status_rx, token.clone()),
            routing,
        );
        tracing::info!("dispatcher stopped");
    }

    /// True while [`Dispatcher::run`] is active on the leader: the RPCs are served.
    pub fn is_running(&self) -> bool {
        self.inner.store.is_leader() && lock(&self.inner.running).is_some()
    }

    /// Open the secrets sent to the nodes with the cluster data key (without
    /// it, no secret is sent and tasks that use one fail on their node).
    pub fn with_data_key(self, key: DataKey) -> Self {
        let _ = self.inner.data_key.set(key);
        self
    }

    /// The log broker that serves `ServiceLogs` through this dispatcher's sessions.
    pub fn log_broker(&self) -> LogBroker {
        self.inner.logs.clone()
    }

    /// The live session `session_id`, if it belongs to `caller`'s node.
    fn session_of(
        &self,
        caller: &Caller,
        session_id: &str,
    ) -> Result<(String, CancellationToken), Status> {
        let live = lock(&self.inner.sessions).lookup(session_id);
        let Some((node_id, token)) = live else {
            return Err(session::unknown(session_id));
        };
        auth::check_node(caller, &node_id)?;
        Ok((node_id, token))
    }

    /// One batch of status reports from `caller`: screened, committed, then
    /// answered (`UpdateTaskStatus`, and each request of `ReportTaskStatus`).
    async fn report(
        &self,
        caller: &Caller,
        request: UpdateTaskStatusRequest,
    ) -> Result<(), Status> {
        let running = self.running()?;
        let (node_id, _) = self.session_of(caller, &request.session_id)?;
        status::update(&self.inner.store, &running, &node_id, request.updates).await
    }

    /// The active run, or the error agents get from a manager that cannot serve them.
    fn running(&self) -> Result<Running, Status> {
        let running = lock(&self.inner.running).clone();
        match running {
            Some(r) if self.inner.store.is_leader() && !r.token.is_cancelled() => Ok(r),
            _ => Err(crate::raft::membership::with_leader(
                Status::unavailable(
                    "this manager is not the leader (or its dispatcher is not running); \
                     connect to the leader",
                ),
                &self.inner.store,
            )),
        }
    }
}

/// Cleans up when `run` ends or its future is dropped: every session ends.
struct StopGuard {
    inner: Arc<Inner>,
    epoch: u64,
    token: CancellationToken,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.token.cancel();
        let mut running = lock(&self.inner.running);
        if running.as_ref().is_some_and(|r| r.epoch == self.epoch) {
            *running = None;
            lock(&self.inner.sessions).clear();
        }
    }
}

/// Lock a mutex, ignoring poisoning: the maps stay consistent after any panic
/// because every critical section is a handful of infallible map operations.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The status an agent gets for a failed store write.
fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::NotLeader | StoreError::LeadershipLost | StoreError::Stopped => {
            Status::unavailable(format!("{err}; reconnect to the leader"))
        }
        // The agent backs off and retries; its log says why.
        StoreError::NoSpace { .. } => Status::resource_exhausted(err.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl dispatcher_server::Dispatcher for Dispatcher {
    type SessionStream = session::SessionStream;
    type AssignmentsStream = assignments::AssignmentsStream;
    type ReportTaskStatusStream = ReceiverStream<Result<UpdateTaskStatusResponse, Status>>;
    type LogSubscriptionsStream = SubscriptionStream;

    async fn log_subscriptions(
        &self,
        request: Request<shoal_proto::LogSubscriptionsRequest>,
    ) -> Result<Response<Self::LogSubscriptionsStream>, Status> {
        self.running()?;
        let caller = Caller::of(&request);
        let session_id = request.into_inner().session_id;
        self.session_of(&caller, &session_id)?;
        let stream = logs::subscriptions(&self.inner, &session_id)?;
        Ok(Response::new(stream))
    }

    async fn publish_logs(
        &self,
        request: Request<tonic::Streaming<shoal_proto::PublishLogsMessage>>,
    ) -> Result<Response<shoal_proto::PublishLogsResponse>, Status> {
        self.running()?;
        let caller = Caller::of(&request);
        let response = logs::publish(&self.inner, &caller, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let running = self.running()?;
        let caller = Caller::of(&request);
        let addr = shoal_proto::tls::ConnInfo::of(&request)
            .and_then(|info| info.remote_addr)
            .or_else(|| request.remote_addr())
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let stream =
            session::open(&self.inner, &running, &caller, request.into_inner(), addr).await?;
        Ok(Response::new(stream))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.running()?;
        let caller = Caller::of(&request);
        let session_id = request.into_inner().session_id;
        self.session_of(&caller, &session_id)?;
        if !lock(&self.inner.sessions).heartbeat(&session_id, std::time::Instant::now()) {
            return Err(session::unknown(&session_id));
        }
        Ok(Response::new(HeartbeatResponse {
            period_ms: self.inner.config.heartbeat_period.as_millis() as i64,
        }))
    }

    async fn assignments(
        &self,
        request: Request<AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let running = self.running()?;
        let caller = Caller::of(&request);
        let session_id = request.into_inner().session_id;
        let (node_id, token) = self.session_of(&caller, &session_id)?;
        let stream = assignments::stream(
            self.inner.store.clone(),
            running.router,
            node_id,
            token,
            self.inner.data_key.get().cloned(),
        );
        Ok(Response::new(stream))
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let caller = Caller::of(&request);
        self.report(&caller, request.into_inner()).await?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    async fn report_task_status(
        &self,
        request: Request<Streaming<UpdateTaskStatusRequest>>,
    ) -> Result<Response<Self::ReportTaskStatusStream>, Status> {
        let caller = Caller::of(&request);
        let reports = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(status::serve_stream(self.clone(), caller, reports, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
