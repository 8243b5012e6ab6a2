//! The dispatcher over real gRPC, in process: a tonic server on a port-0
//! listener, an in-memory store, and the generated client playing the agent.
//! Timing waits poll with a deadline; measured times are printed, not asserted
//! against upper bounds (the machine is shared).
//!
//! This file holds the harness, used by the scenarios beside the modules they
//! drive (`session_tests.rs`: sessions, heartbeats, expiry, admission;
//! `assignments_tests.rs` and `status_tests.rs`: the assignments stream and
//! status reports), and the scenario about the dispatcher as a whole: who may
//! serve.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::{
    AssignmentsMessage, AssignmentsRequest, HeartbeatRequest, Node, NodeDescription, NodeState,
    SessionMessage, SessionRequest, Task, TaskState, TaskStatus, TaskStatusUpdate,
    UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};
use tonic::{Code, Streaming};

use super::Dispatcher;
use crate::config::DispatcherConfig;
use crate::store::{Action, Object, Store};
use crate::test_fixtures::{DEADLINE, svc_task};

pub(super) const PERIOD: Duration = Duration::from_millis(100);

pub(super) struct Harness {
    pub(super) store: Store,
    pub(super) dispatcher: Dispatcher,
    pub(super) client: DispatcherClient<Channel>,
    pub(super) shutdown: CancellationToken,
}

impl Harness {
    /// 100 ms × 3: expiry within a third of a second, for the session tests.
    pub(super) async fn start() -> Harness {
        Harness::start_with(Store::in_memory(), 3).await
    }

    /// A 3 s grace period, for tests about tasks: hundreds of RPCs on a shared
    /// 2-core machine can delay a heartbeat past 300 ms, and an expired
    /// session there would be a false failure.
    pub(super) async fn start_patient() -> Harness {
        Harness::start_with(Store::in_memory(), 30).await
    }

    /// Serve a dispatcher over `store`, running its leader loops.
    pub(super) async fn start_with(store: Store, grace_multiplier: u32) -> Harness {
        let config = DispatcherConfig {
            heartbeat_period: PERIOD,
            grace_multiplier,
        };
        let dispatcher = Dispatcher::new(store.clone(), config);
        let shutdown = CancellationToken::new();
        let (d, token) = (dispatcher.clone(), shutdown.clone());
        tokio::spawn(async move { d.run(token).await });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = Server::builder()
            .add_service(DispatcherServer::new(dispatcher.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        // A COMPLETE set of thousands of tasks exceeds tonic's default 4 MiB
        // decoding limit; agents must raise it too.
        let client = DispatcherClient::connect(format!("http://{addr}"))
            .await
            .expect("connect")
            .max_decoding_message_size(256 << 20);
        eventually("dispatcher running", || {
            dispatcher.is_running().then_some(())
        })
        .await;
        Harness {
            store,
            dispatcher,
            client,
            shutdown,
        }
    }

    /// Open a session kept alive by a background heartbeat (at half the
    /// period, as a margin against a loaded machine) until it is refused.
    pub(super) async fn open(
        &mut self,
        node_id: &str,
        hostname: &str,
    ) -> (SessionMessage, Streaming<SessionMessage>) {
        let (first, stream) = self.open_quiet(node_id, hostname).await;
        let mut client = self.client.clone();
        let (session_id, stop) = (first.session_id.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut beats = tokio::time::interval(PERIOD / 2);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = beats.tick() => {}
                }
                let request = HeartbeatRequest {
                    session_id: session_id.clone(),
                };
                if client.heartbeat(request).await.is_err() {
                    return;
                }
            }
        });
        (first, stream)
    }

    /// Open a session whose heartbeats are up to the test.
    pub(super) async fn open_quiet(
        &mut self,
        node_id: &str,
        hostname: &str,
    ) -> (SessionMessage, Streaming<SessionMessage>) {
        let request = SessionRequest {
            node_id: node_id.into(),
            description: Some(NodeDescription {
                hostname: hostname.into(),
                engine_labels: HashMap::from([("zone".to_string(), "east".to_string())]),
                ..Default::default()
            }),
        };
        let mut stream = self
            .client
            .session(request)
            .await
            .expect("session")
            .into_inner();
        let first = next(&mut stream).await.expect("first session message");
        (first, stream)
    }

    pub(super) async fn heartbeat(&mut self, session_id: &str) -> Result<i64, tonic::Status> {
        let request = HeartbeatRequest {
            session_id: session_id.into(),
        };
        Ok(self.client.heartbeat(request).await?.into_inner().period_ms)
    }

    pub(super) async fn assignments(&mut self, session_id: &str) -> Streaming<AssignmentsMessage> {
        let request = AssignmentsRequest {
            session_id: session_id.into(),
        };
        self.client
            .assignments(request)
            .await
            .expect("assignments")
            .into_inner()
    }

    pub(super) async fn report(
        &mut self,
        session_id: &str,
        updates: &[(&str, TaskState)],
    ) -> Result<(), tonic::Status> {
        let request = status_request(session_id, updates);
        self.client.update_task_status(request).await.map(|_| ())
    }

    /// Open a `ReportTaskStatus` stream: requests go in through the sender.
    pub(super) async fn status_stream(
        &mut self,
    ) -> (
        tokio::sync::mpsc::Sender<UpdateTaskStatusRequest>,
        Streaming<UpdateTaskStatusResponse>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let answers = self
            .client
            .report_task_status(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("status stream")
            .into_inner();
        (tx, answers)
    }

    pub(super) fn node(&self, id: &str) -> Node {
        self.store
            .read(|s| s.node(id).cloned())
            .expect("node in the store")
    }

    pub(super) fn task(&self, id: &str) -> Task {
        self.store
            .read(|s| s.task(id).cloned())
            .expect("task in the store")
    }

    /// Create task `id` on `node` in `state`, desired RUNNING.
    pub(super) async fn create_task(&self, id: &str, node: &str, state: TaskState) {
        let task = svc_task(id, node, state, TaskState::Running);
        self.write(Action::Create(Object::Task(Box::new(task))))
            .await;
    }

    pub(super) async fn write(&self, action: Action) {
        self.store.propose(vec![action]).await.expect("store write");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(super) fn node_state(node: &Node) -> NodeState {
    node.status.as_ref().map(|s| s.state()).unwrap_or_default()
}

/// A status report of `updates` for `session_id`.
pub(super) fn status_request(
    session_id: &str,
    updates: &[(&str, TaskState)],
) -> UpdateTaskStatusRequest {
    UpdateTaskStatusRequest {
        session_id: session_id.into(),
        updates: updates
            .iter()
            .map(|(id, state)| TaskStatusUpdate {
                task_id: id.to_string(),
                status: Some(TaskStatus {
                    state: *state as i32,
                    ..Default::default()
                }),
            })
            .collect(),
    }
}

/// The next answer of a stream, errors included; None when it ended.
pub(super) async fn answer<T>(stream: &mut Streaming<T>) -> Option<Result<T, tonic::Status>> {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(result) => result.transpose(),
        Err(_) => panic!("no stream message within {DEADLINE:?}"),
    }
}

/// The next message of a stream; None when it ended (or failed).
pub(super) async fn next<T>(stream: &mut Streaming<T>) -> Option<T> {
    match tokio::time::timeout(DEADLINE, stream.message()).await {
        Ok(result) => result.ok().flatten(),
        Err(_) => panic!("no stream message within {DEADLINE:?}"),
    }
}

/// Poll `check` until it gives a value, or fail after the deadline.
pub(super) async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with a deadline of its own.
pub(super) async fn eventually_within<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "{what}: not reached within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn only_a_running_leader_dispatcher_serves_agents() {
    let mut h = Harness::start().await;
    let (first, mut stream) = h.open("n1", "host-a").await;
    h.shutdown.cancel();
    eventually("dispatcher stopped", || {
        (!h.dispatcher.is_running()).then_some(())
    })
    .await;
    assert!(
        next(&mut stream).await.is_none(),
        "sessions end when the dispatcher stops"
    );

    // A dispatcher whose run never started refuses agents with a clear reason.
    let idle = Dispatcher::new(Store::in_memory(), DispatcherConfig::default());
    use shoal_proto::dispatcher_server::Dispatcher as _;
    let request = tonic::Request::new(HeartbeatRequest {
        session_id: first.session_id,
    });
    let err = idle.heartbeat(request).await.expect_err("not running");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("not the leader"),
        "{}",
        err.message()
    );
}
