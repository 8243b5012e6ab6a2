//! The session's unit tests: how a busy manager's retry hint is read, and
//! (with the fake runtime) whole agents against a tiny in-test dispatcher on
//! 127.0.0.1:0 over mutual TLS: registration, node id storage, status
//! batches, reconnects, and shutdown.

use super::*;

fn busy(code: tonic::Code, hint: Option<&str>) -> tonic::Status {
    let mut status = tonic::Status::new(code, "the manager is busy admitting nodes");
    if let Some(hint) = hint {
        status.metadata_mut().insert(
            shoal_proto::RETRY_AFTER_MS_METADATA,
            hint.parse().expect("ascii"),
        );
    }
    status
}

#[test]
fn a_busy_managers_hint_is_read_and_bounded() {
    let hint = |s: &tonic::Status| retry_after(s);
    assert_eq!(
        hint(&busy(tonic::Code::ResourceExhausted, Some("2500"))),
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        hint(&busy(tonic::Code::ResourceExhausted, Some("99999999"))),
        Some(Duration::from_secs(60))
    );
    // A full disk (no hint), another code, or a garbled hint: the
    // session ends and the usual backoff applies.
    assert_eq!(hint(&busy(tonic::Code::ResourceExhausted, None)), None);
    assert_eq!(hint(&busy(tonic::Code::Unavailable, Some("100"))), None);
    assert_eq!(
        hint(&busy(tonic::Code::ResourceExhausted, Some("soon"))),
        None
    );
}

#[cfg(feature = "fake")]
mod with_a_dispatcher {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use shoal_proto::dispatcher_server::{Dispatcher, DispatcherServer};
    use shoal_proto::tls::{Credentials, Role, RootCa, SharedCredentials, pki};
    use shoal_proto::{
        AssignmentsMessage, AssignmentsRequest, AssignmentsType, HeartbeatRequest,
        HeartbeatResponse, SessionMessage, SessionRequest, Task, TaskState, TaskStatusUpdate,
        UpdateTaskStatusRequest, UpdateTaskStatusResponse,
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tokio_util::sync::CancellationToken;
    use tonic::{Request, Response, Status};

    use crate::config::AgentConfig;
    use crate::fake::FakeRuntime;
    use crate::testing::{eventually, eventually_within, task};

    const NODE_ID: &str = "n1";

    type Sender<T> = mpsc::Sender<Result<T, Status>>;

    /// Records what agents send; hands every session the same task set.
    #[derive(Default)]
    struct TestDispatcher {
        tasks: Vec<Task>,
        sessions: Mutex<Vec<SessionRequest>>,
        heartbeats: Mutex<usize>,
        /// How long each heartbeat takes to be answered.
        heartbeat_delay: Mutex<Duration>,
        /// The grace the sessions announce (0: none, as an older manager).
        grace_ms: i64,
        /// Refuse `ReportTaskStatus` as unknown, as an older manager.
        unary_only: bool,
        /// Shared with the tasks that serve status streams.
        updates: Arc<Mutex<Vec<TaskStatusUpdate>>>,
        // Held to keep the streams open; dropping them ends the session.
        open_sessions: Mutex<Vec<Sender<SessionMessage>>>,
        open_assignments: Mutex<Vec<Sender<AssignmentsMessage>>>,
    }

    impl TestDispatcher {
        fn current_session(&self) -> String {
            format!("s{}", self.sessions.lock().unwrap().len())
        }

        fn latest_state(&self, task_id: &str) -> Option<TaskState> {
            let updates = self.updates.lock().unwrap();
            let update = updates.iter().rev().find(|u| u.task_id == task_id)?;
            Some(update.status.as_ref()?.state())
        }

        /// Wait until the latest status reported for `task_id` is `state`.
        async fn wait_reported(&self, task_id: &str, state: TaskState) {
            eventually(&format!("{task_id} reported {state:?}"), || async {
                (self.latest_state(task_id) == Some(state)).then_some(())
            })
            .await;
        }

        fn close_sessions(&self) {
            self.open_sessions.lock().unwrap().clear();
            self.open_assignments.lock().unwrap().clear();
        }
    }

    #[tonic::async_trait]
    impl Dispatcher for TestDispatcher {
        type SessionStream = ReceiverStream<Result<SessionMessage, Status>>;
        type AssignmentsStream = ReceiverStream<Result<AssignmentsMessage, Status>>;
        type ReportTaskStatusStream = ReceiverStream<Result<UpdateTaskStatusResponse, Status>>;
        type LogSubscriptionsStream = ReceiverStream<Result<shoal_proto::LogSubscription, Status>>;

        async fn log_subscriptions(
            &self,
            _request: Request<shoal_proto::LogSubscriptionsRequest>,
        ) -> Result<Response<Self::LogSubscriptionsStream>, Status> {
            Err(Status::unimplemented("this test dispatcher serves no logs"))
        }

        async fn publish_logs(
            &self,
            _request: Request<tonic::Streaming<shoal_proto::PublishLogsMessage>>,
        ) -> Result<Response<shoal_proto::PublishLogsResponse>, Status> {
            Err(Status::unimplemented("this test dispatcher serves no logs"))
        }

        async fn session(
            &self,
            request: Request<SessionRequest>,
        ) -> Result<Response<Self::SessionStream>, Status> {
            self.sessions.lock().unwrap().push(request.into_inner());
            let (tx, rx) = mpsc::channel(4);
            let first = SessionMessage {
                session_id: self.current_session(),
                node_id: NODE_ID.into(),
                heartbeat_period_ms: 50,
                heartbeat_grace_ms: self.grace_ms,
                managers: vec![],
            };
            tx.send(Ok(first)).await.unwrap();
            self.open_sessions.lock().unwrap().push(tx);
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn heartbeat(
            &self,
            request: Request<HeartbeatRequest>,
        ) -> Result<Response<HeartbeatResponse>, Status> {
            let delay = *self.heartbeat_delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if request.into_inner().session_id != self.current_session() {
                return Err(Status::not_found("unknown session"));
            }
            *self.heartbeats.lock().unwrap() += 1;
            Ok(Response::new(HeartbeatResponse { period_ms: 50 }))
        }

        async fn assignments(
            &self,
            _request: Request<AssignmentsRequest>,
        ) -> Result<Response<Self::AssignmentsStream>, Status> {
            let (tx, rx) = mpsc::channel(4);
            let msg = AssignmentsMessage {
                r#type: AssignmentsType::Complete as i32,
                tasks: self.tasks.clone(),
                removed: vec![],
                sequence: 1,
                ..Default::default()
            };
            tx.send(Ok(msg)).await.unwrap();
            self.open_assignments.lock().unwrap().push(tx);
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn update_task_status(
            &self,
            request: Request<UpdateTaskStatusRequest>,
        ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
            self.updates
                .lock()
                .unwrap()
                .extend(request.into_inner().updates);
            Ok(Response::new(UpdateTaskStatusResponse {}))
        }

        async fn report_task_status(
            &self,
            request: Request<tonic::Streaming<UpdateTaskStatusRequest>>,
        ) -> Result<Response<Self::ReportTaskStatusStream>, Status> {
            if self.unary_only {
                return Err(Status::unimplemented("an older manager"));
            }
            let mut requests = request.into_inner();
            let updates = self.updates.clone();
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                while let Ok(Some(request)) = requests.message().await {
                    updates.lock().unwrap().extend(request.updates);
                    if tx.send(Ok(UpdateTaskStatusResponse {})).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    /// Serves `dispatcher` on a free loopback port until `stop`; returns the address.
    async fn serve(dispatcher: Arc<TestDispatcher>, stop: CancellationToken) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let creds = SharedCredentials::new(credentials("m1", Role::Manager)).unwrap();
        let tls = shoal_proto::tls::server::server_config(&creds).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DispatcherServer::from_arc(dispatcher))
                .serve_with_incoming_shutdown(
                    shoal_proto::tls::server::incoming(listener, tls),
                    stop.cancelled_owned(),
                ),
        );
        addr
    }

    /// The test cluster's CA, shared by the test dispatcher and the agents.
    fn test_ca() -> &'static RootCa {
        static CA: OnceLock<RootCa> = OnceLock::new();
        CA.get_or_init(|| RootCa::generate("test-cluster").unwrap())
    }

    fn credentials(node_id: &str, role: Role) -> Credentials {
        let ca = test_ca();
        let (key_pem, csr) = pki::new_key_and_csr().unwrap();
        let identity = RootCa::identity(node_id, role, "test-cluster", pki::DEFAULT_CERT_LIFETIME);
        Credentials {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: ca.issue(&csr, &identity).unwrap(),
            key_pem,
        }
    }

    /// An agent config whose data dir already holds node `NODE_ID`'s certificate.
    fn config(addr: &str, data_dir: &std::path::Path) -> AgentConfig {
        let tls = crate::identity::tls_dir(data_dir);
        if !tls.exists() {
            credentials(NODE_ID, Role::Worker).store(&tls).unwrap();
        }
        AgentConfig {
            managers: vec![format!("http://{addr}")],
            node_name: Some("worker-1".into()),
            data_dir: data_dir.to_path_buf(),
            labels: HashMap::from([("zone".to_string(), "east".to_string())]),
            join_token: None,
        }
    }

    /// Start an agent for the manager at `addr` on `runtime`, with its data in
    /// `dir`; it runs until the returned token is cancelled.
    fn start_agent(
        addr: &str,
        dir: &std::path::Path,
        runtime: Arc<FakeRuntime>,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), crate::error::AgentError>>,
    ) {
        start_counted(addr, dir, runtime, Arc::default())
    }

    /// [`start_agent`], counting into `stats`.
    fn start_counted(
        addr: &str,
        dir: &std::path::Path,
        runtime: Arc<FakeRuntime>,
        stats: Arc<crate::AgentStats>,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), crate::error::AgentError>>,
    ) {
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(crate::run_counted(
            config(addr, dir),
            runtime,
            shutdown.clone(),
            stats,
        ));
        (shutdown, agent)
    }

    fn assigned_task(id: &str) -> Task {
        let mut t = task(id, "nginx", TaskState::Running);
        t.node_id = NODE_ID.into();
        t
    }

    /// A dispatcher serving one task, t1, assigned to this node; stopped with the
    /// token.
    async fn serve_t1() -> (Arc<TestDispatcher>, CancellationToken, String) {
        serve_t1_with(TestDispatcher::default()).await
    }

    /// [`serve_t1`] from a dispatcher set up otherwise as the test likes.
    async fn serve_t1_with(
        dispatcher: TestDispatcher,
    ) -> (Arc<TestDispatcher>, CancellationToken, String) {
        let dispatcher = Arc::new(TestDispatcher {
            tasks: vec![assigned_task("t1")],
            ..dispatcher
        });
        let server_stop = CancellationToken::new();
        let addr = serve(dispatcher.clone(), server_stop.clone()).await;
        (dispatcher, server_stop, addr)
    }

    #[tokio::test]
    async fn an_agent_registers_runs_its_task_and_survives_a_lost_session() {
        let (dispatcher, server_stop, addr) = serve_t1().await;
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::with_resources(
            "host-a",
            2_000_000_000,
            1 << 30,
        ));
        let (shutdown, agent) = start_agent(&addr, dir.path(), fake.clone());

        dispatcher.wait_reported("t1", TaskState::Running).await;
        {
            let sessions = dispatcher.sessions.lock().unwrap();
            assert_eq!(
                sessions[0].node_id, NODE_ID,
                "the id comes from the certificate"
            );
            let description = sessions[0].description.as_ref().unwrap();
            assert_eq!(description.hostname, "worker-1");
            assert_eq!(description.engine_labels["zone"], "east");
            assert_eq!(description.resources.unwrap().memory_bytes, 1 << 30);
        }
        let stored = std::fs::read_to_string(dir.path().join("node_id")).unwrap();
        assert_eq!(stored.trim(), NODE_ID);
        eventually("a heartbeat", || async {
            (*dispatcher.heartbeats.lock().unwrap() > 0).then_some(())
        })
        .await;

        // The manager ends the session: the agent comes back with its node id, and
        // the task keeps running in the same container.
        dispatcher.close_sessions();
        eventually("a second session", || async {
            (dispatcher.sessions.lock().unwrap().len() >= 2).then_some(())
        })
        .await;
        assert_eq!(dispatcher.sessions.lock().unwrap()[1].node_id, NODE_ID);
        fake.exit("t1", 1);
        dispatcher.wait_reported("t1", TaskState::Failed).await;
        assert_eq!(fake.created_count(), 1);

        shutdown.cancel();
        agent.await.unwrap().unwrap();
        server_stop.cancel();
    }

    #[tokio::test]
    async fn the_counters_see_a_task_received_and_its_running_report_acknowledged() {
        let (dispatcher, server_stop, addr) = serve_t1().await;
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(crate::AgentStats::new());
        let (shutdown, agent) = start_counted(
            &addr,
            dir.path(),
            Arc::new(FakeRuntime::default()),
            stats.clone(),
        );

        tokio::time::timeout(
            Duration::from_secs(30),
            stats.wait_until(|s| s.running_confirmed() >= 1),
        )
        .await
        .expect("RUNNING acknowledged");
        assert_eq!(stats.tasks_received(), 1);
        assert_eq!(
            dispatcher.latest_state("t1"),
            Some(TaskState::Running),
            "confirmed only once the manager has it"
        );

        shutdown.cancel();
        agent.await.unwrap().unwrap();
        server_stop.cancel();
    }

    #[tokio::test]
    async fn statuses_reach_a_manager_without_the_status_stream_one_call_each() {
        let (dispatcher, server_stop, addr) = serve_t1_with(TestDispatcher {
            unary_only: true,
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::default());
        let (shutdown, agent) = start_agent(&addr, dir.path(), fake.clone());

        // RUNNING, then FAILED: two batches, each its own call.
        dispatcher.wait_reported("t1", TaskState::Running).await;
        fake.exit("t1", 1);
        dispatcher.wait_reported("t1", TaskState::Failed).await;
        assert_eq!(
            dispatcher.sessions.lock().unwrap().len(),
            1,
            "one session throughout"
        );

        shutdown.cancel();
        agent.await.unwrap().unwrap();
        server_stop.cancel();
    }

    #[tokio::test]
    async fn a_slow_heartbeat_keeps_the_session_until_the_grace_runs_out() {
        // Period 50 ms, grace 4 s: answers 1.2 s late are slow, not lost (the old
        // agent gave a session up after max(period, 1 s)).
        let dispatcher = Arc::new(TestDispatcher {
            grace_ms: 4_000,
            ..Default::default()
        });
        *dispatcher.heartbeat_delay.lock().unwrap() = Duration::from_millis(1_200);
        let server_stop = CancellationToken::new();
        let addr = serve(dispatcher.clone(), server_stop.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let (shutdown, agent) = start_agent(&addr, dir.path(), Arc::new(FakeRuntime::default()));
        // Each step takes seconds by design: a longer limit than `eventually`'s.
        let limit = Duration::from_secs(20);
        eventually_within(limit, "two slow heartbeats answered", || async {
            (*dispatcher.heartbeats.lock().unwrap() >= 2).then_some(())
        })
        .await;
        assert_eq!(
            dispatcher.sessions.lock().unwrap().len(),
            1,
            "slow heartbeats within the grace must not end the session"
        );

        // No answer at all: once the grace is over the agent opens a new session.
        *dispatcher.heartbeat_delay.lock().unwrap() = Duration::from_secs(60);
        eventually_within(limit, "a second session", || async {
            (dispatcher.sessions.lock().unwrap().len() >= 2).then_some(())
        })
        .await;
        shutdown.cancel();
        agent.await.unwrap().unwrap();
        server_stop.cancel();
    }

    #[tokio::test]
    async fn tasks_keep_running_when_the_agent_stops() {
        let (dispatcher, server_stop, addr) = serve_t1().await;
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeRuntime::default());
        let (shutdown, agent) = start_agent(&addr, dir.path(), fake.clone());
        dispatcher.wait_reported("t1", TaskState::Running).await;
        shutdown.cancel();
        agent.await.unwrap().unwrap();
        assert_eq!(fake.running(), vec!["t1".to_string()]);

        // A new agent on the same node adopts the container instead of creating one.
        let (shutdown, agent) = start_agent(&addr, dir.path(), fake.clone());
        eventually("a second session", || async {
            (dispatcher.sessions.lock().unwrap().len() >= 2).then_some(())
        })
        .await;
        assert_eq!(dispatcher.sessions.lock().unwrap()[1].node_id, NODE_ID);
        fake.exit("t1", 0);
        dispatcher.wait_reported("t1", TaskState::Complete).await;
        assert_eq!(fake.created_count(), 1);
        shutdown.cancel();
        agent.await.unwrap().unwrap();
        server_stop.cancel();
    }

    #[tokio::test]
    async fn an_unreachable_manager_is_retried_until_shutdown() {
        // A port that was just free: nothing listens there.
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let dir = tempfile::tempdir().unwrap();
        let (shutdown, agent) = start_agent(&addr, dir.path(), Arc::new(FakeRuntime::default()));
        tokio::task::yield_now().await;
        assert!(!agent.is_finished());
        shutdown.cancel();
        agent.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_invalid_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config("nowhere", dir.path());
        config.managers = vec!["nowhere".into()];
        let err = crate::run(
            config,
            Arc::new(FakeRuntime::default()),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("managers"), "{err}");
    }
}
