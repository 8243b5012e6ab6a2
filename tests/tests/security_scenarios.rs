//! Cluster identity and mutual TLS against a real `shoal manager` process on
//! loopback: what the listener refuses and what each role may call. Joining,
//! removal, renewal and what stays out of logs and files are in
//! `security_membership.rs`; both use [`shoal_tests::secured::Secured`], a
//! manager whose root CA the test holds.

use std::time::Duration;

use shoal_proto::control_client::ControlClient;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{Role, RootCa};
use shoal_proto::watch_client::WatchClient;
use shoal_proto::*;
use shoal_tests::secured::*;
use shoal_tests::wait::eventually;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_listener_refuses_plaintext_foreign_expired_and_anonymous_callers() {
    let s = Secured::start(&[]).await;

    // Plaintext gRPC never reaches a service.
    let plain = Endpoint::from_shared(format!("http://{}", s.manager.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let err = ControlClient::new(channel.clone())
            .get_cluster(GetClusterRequest {})
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
        let err = DispatcherClient::new(channel)
            .heartbeat(HeartbeatRequest::default())
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }

    // A certificate from a foreign CA (trusting our CA, so only the server can refuse it).
    let foreign = RootCa::generate("elsewhere").unwrap();
    let creds = mint_with(
        &foreign,
        s.ca.cert_pem(),
        "intruder",
        Role::Admin,
        &s.cluster_id,
        valid(),
    );
    let got = get_cluster(s.channel(creds).await).await;
    assert!(got.is_err(), "a foreign certificate was accepted: {got:?}");

    // An expired certificate from the right CA.
    let creds = s.mint(
        "old-admin",
        Role::Admin,
        &s.cluster_id,
        (now() - 7200, now() - 3600),
    );
    let got = get_cluster(s.channel(creds).await).await;
    assert!(got.is_err(), "an expired certificate was accepted: {got:?}");

    // The right CA, but a certificate naming another cluster.
    let creds = s.mint("admin-x", Role::Admin, "another-cluster", valid());
    let err = get_cluster(s.channel(creds).await).await.unwrap_err();
    assert!(err.starts_with("PermissionDenied"), "{err}");

    // No certificate at all: only the CA's join RPCs answer.
    let anonymous = client::connect(
        Endpoint::from_shared(format!("http://{}", s.manager.addr)).unwrap(),
        ClientTls::Fixed(client::pinned_config(s.ca.cert_pem()).unwrap()),
    )
    .await
    .unwrap();
    let err = ControlClient::new(anonymous.clone())
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let root = ca_client::CaClient::new(anonymous)
        .get_root_ca_certificate(GetRootCaCertificateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(root.cert_pem, s.ca.cert_pem());

    // The admin certificate the manager wrote works, and the API shows
    // neither the sealed CA key nor the join tokens.
    let cluster = s
        .manager
        .control()
        .await
        .unwrap()
        .get_cluster(GetClusterRequest {})
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert!(cluster.root_ca.unwrap().key_sealed.is_empty());
    assert!(cluster.join_tokens.is_none());
}

#[tokio::test]
async fn a_worker_may_only_speak_for_its_own_node() {
    let s = Secured::start(&["--heartbeat-period", "5s"]).await;
    let token = s.token("worker").await;
    let a = s.join(&token).await.unwrap();
    let b = s.join(&token).await.unwrap();
    let a_id = a.identity().unwrap().node_id;
    let b_id = b.identity().unwrap().node_id;
    assert_eq!(a.identity().unwrap().role, Role::Worker);
    assert_ne!(a_id, b_id);
    let a_channel = s.channel(a).await.unwrap();
    let b_channel = s.channel(b).await.unwrap();

    // No control, watch or raft for a worker: every RPC of those services.
    let codes = every_control_watch_and_raft_rpc(a_channel.clone()).await;
    assert_eq!(codes.len(), 25);
    for (rpc, code) in &codes {
        assert_eq!(*code, Code::PermissionDenied, "a worker called {rpc}");
    }

    // Sessions: a worker is who its certificate says.
    let mut a_dispatcher = DispatcherClient::new(a_channel.clone());
    let mut b_dispatcher = DispatcherClient::new(b_channel);
    let err = a_dispatcher
        .session(SessionRequest {
            node_id: b_id.clone(),
            description: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut a_stream = a_dispatcher
        .session(SessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    let a_session = a_stream.message().await.unwrap().unwrap();
    assert_eq!(a_session.node_id, a_id);
    let mut b_stream = b_dispatcher
        .session(SessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    let b_session = b_stream.message().await.unwrap().unwrap();

    // A's certificate cannot use B's session.
    let err = a_dispatcher
        .heartbeat(HeartbeatRequest {
            session_id: b_session.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = a_dispatcher
        .assignments(AssignmentsRequest {
            session_id: b_session.session_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A task placed on B cannot be updated by A, even through A's own session.
    let out = s
        .manager
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "pinned",
            "--constraint",
            &format!("node.id=={b_id}"),
            "img",
            "sleep",
            "60",
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task = eventually("the task assigned to B", WAIT, || async {
        let tasks = s
            .manager
            .control()
            .await
            .map_err(|e| e.to_string())?
            .list_tasks(ListTasksRequest::default())
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .tasks;
        tasks
            .into_iter()
            .find(|t| t.node_id == b_id)
            .ok_or_else(|| "not assigned yet".to_string())
    })
    .await
    .unwrap();
    let forged = TaskStatusUpdate {
        task_id: task.id.clone(),
        status: Some(TaskStatus {
            state: TaskState::Failed as i32,
            message: "forged by A".into(),
            ..Default::default()
        }),
    };
    let err = a_dispatcher
        .update_task_status(UpdateTaskStatusRequest {
            session_id: a_session.session_id.clone(),
            updates: vec![forged.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = a_dispatcher
        .update_task_status(UpdateTaskStatusRequest {
            session_id: b_session.session_id.clone(),
            updates: vec![forged],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let after = s
        .manager
        .control()
        .await
        .unwrap()
        .get_task(GetTaskRequest {
            task: task.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_ne!(after.status.unwrap().message, "forged by A");
    // A's own session still works.
    a_dispatcher
        .heartbeat(HeartbeatRequest {
            session_id: a_session.session_id,
        })
        .await
        .unwrap();
}

/// The status code of each Control, Watch and Raft RPC called over `channel`.
async fn every_control_watch_and_raft_rpc(channel: Channel) -> Vec<(&'static str, Code)> {
    fn code<T>(r: Result<T, tonic::Status>) -> Code {
        match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }
    let mut c = ControlClient::new(channel.clone());
    let mut w = WatchClient::new(channel.clone());
    let mut r = RaftClient::new(channel);
    vec![
        (
            "CreateService",
            code(c.create_service(CreateServiceRequest::default()).await),
        ),
        (
            "GetService",
            code(c.get_service(GetServiceRequest::default()).await),
        ),
        (
            "ListServices",
            code(c.list_services(ListServicesRequest::default()).await),
        ),
        (
            "UpdateService",
            code(c.update_service(UpdateServiceRequest::default()).await),
        ),
        (
            "RemoveService",
            code(c.remove_service(RemoveServiceRequest::default()).await),
        ),
        (
            "ListTasks",
            code(c.list_tasks(ListTasksRequest::default()).await),
        ),
        ("GetTask", code(c.get_task(GetTaskRequest::default()).await)),
        (
            "ListNodes",
            code(c.list_nodes(ListNodesRequest::default()).await),
        ),
        ("GetNode", code(c.get_node(GetNodeRequest::default()).await)),
        (
            "UpdateNode",
            code(c.update_node(UpdateNodeRequest::default()).await),
        ),
        (
            "RemoveNode",
            code(c.remove_node(RemoveNodeRequest::default()).await),
        ),
        (
            "GetCluster",
            code(c.get_cluster(GetClusterRequest::default()).await),
        ),
        (
            "GetJoinToken",
            code(c.get_join_token(GetJoinTokenRequest::default()).await),
        ),
        (
            "ServiceLogs",
            code(c.service_logs(ServiceLogsRequest::default()).await),
        ),
        (
            "CreateSecret",
            code(c.create_secret(CreateSecretRequest::default()).await),
        ),
        (
            "GetSecret",
            code(c.get_secret(GetSecretRequest::default()).await),
        ),
        (
            "ListSecrets",
            code(c.list_secrets(ListSecretsRequest::default()).await),
        ),
        (
            "RemoveSecret",
            code(c.remove_secret(RemoveSecretRequest::default()).await),
        ),
        (
            "CreateConfig",
            code(c.create_config(CreateConfigRequest::default()).await),
        ),
        (
            "GetConfig",
            code(c.get_config(GetConfigRequest::default()).await),
        ),
        (
            "ListConfigs",
            code(c.list_configs(ListConfigsRequest::default()).await),
        ),
        (
            "RemoveConfig",
            code(c.remove_config(RemoveConfigRequest::default()).await),
        ),
        ("Watch", code(w.watch(WatchRequest::default()).await)),
        (
            "ProcessRaftMessage",
            code(r.process_raft_message(RaftMessageRequest::default()).await),
        ),
        (
            "StreamRaftMessage",
            code(
                r.stream_raft_message(tokio_stream::iter(vec![RaftMessageRequest::default()]))
                    .await,
            ),
        ),
    ]
}
