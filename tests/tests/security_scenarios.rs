//! Cluster identity and mutual TLS, against a real `shoal manager` process on
//! loopback: what the listener refuses, what each role may call, joining with
//! tokens, rotation, node removal, and what stays out of logs and files.
//!
//! The manager is started with a root CA the test made (`--ca-cert/--ca-key`),
//! so the test can also mint the certificates a cluster would never issue
//! (expired ones, other clusters').

use std::path::Path;
use std::time::Duration;

use shoal_agent::identity::{self, JoinError};
use shoal_proto::control_client::ControlClient;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{Credentials, JoinToken, Role, RootCa, SharedCredentials, pki};
use shoal_proto::watch_client::WatchClient;
use shoal_proto::*;
use shoal_tests::process::{ManagerProcess, shoal_bin};
use shoal_tests::wait::eventually;
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(20);

/// A manager whose root CA the test holds.
struct Secured {
    manager: ManagerProcess,
    ca: RootCa,
    cluster_id: String,
    _files: TempDir,
}

impl Secured {
    async fn start(extra: &[&str]) -> Secured {
        shoal_tests::init();
        let ca = RootCa::generate("test-made-ca").unwrap();
        let files = TempDir::new().unwrap();
        let cert = files.path().join("ca.pem");
        let key = files.path().join("ca-key.pem");
        std::fs::write(&cert, ca.cert_pem()).unwrap();
        std::fs::write(&key, ca.key_pem()).unwrap();
        let mut args = vec![
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let manager = ManagerProcess::start(&args).await.unwrap();
        let cluster_id = manager
            .control()
            .await
            .unwrap()
            .get_cluster(GetClusterRequest {})
            .await
            .unwrap()
            .into_inner()
            .cluster
            .unwrap()
            .id;
        Secured {
            manager,
            ca,
            cluster_id,
            _files: files,
        }
    }

    /// Credentials the cluster CA signs for any identity and validity.
    fn mint(&self, node_id: &str, role: Role, cluster_id: &str, valid: (i64, i64)) -> Credentials {
        mint_with(
            &self.ca,
            self.ca.cert_pem(),
            node_id,
            role,
            cluster_id,
            valid,
        )
    }

    async fn channel(&self, creds: Credentials) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.manager.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        let tls = ClientTls::Node(SharedCredentials::new(creds).map_err(|e| e.to_string())?);
        client::connect(endpoint, tls)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn join(&self, token: &str) -> Result<Credentials, JoinError> {
        identity::join(
            &self.manager.addr.to_string(),
            &JoinToken::parse(token).unwrap(),
        )
        .await
    }

    /// A `shoal agent` process on the fake runtime joining with `token`; its
    /// data in `dir/data`, its log in `dir/agent.log`.
    fn fake_agent(
        &self,
        name: &str,
        token: &str,
        dir: &Path,
        log_level: &str,
    ) -> std::process::Child {
        std::process::Command::new(shoal_bin())
            .args(["agent", "--manager", &self.manager.addr.to_string()])
            .args(["--runtime", "fake", "--node-name", name])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("SHOAL_JOIN_TOKEN", token)
            .env("SHOAL_LOG", log_level)
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .unwrap()
    }

    async fn token(&self, role: &str) -> String {
        let out = self.manager.cli(&["join-token", role, "-q"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

fn mint_with(
    signer: &RootCa,
    ca_pem: &str,
    node_id: &str,
    role: Role,
    cluster_id: &str,
    (not_before, not_after): (i64, i64),
) -> Credentials {
    let (key_pem, csr) = pki::new_key_and_csr().unwrap();
    let mut identity = RootCa::identity(node_id, role, cluster_id, pki::DEFAULT_CERT_LIFETIME);
    identity.not_before = not_before;
    identity.not_after = not_after;
    Credentials {
        ca_pem: ca_pem.to_string(),
        cert_pem: signer.issue(&csr, &identity).unwrap(),
        key_pem,
    }
}

fn rcgen_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().unwrap()
}

/// A CSR whose subject claims the manager role and an id of its choosing.
fn manager_role_csr(key: &rcgen::KeyPair) -> String {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "wants-to-be-a-manager");
    dn.push(rcgen::DnType::OrganizationalUnitName, "manager");
    params.distinguished_name = dn;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn now() -> i64 {
    pki::unix_now()
}

fn valid() -> (i64, i64) {
    (now() - 60, now() + 3600)
}

/// The code of the first Control call over `channel`, or of the connection.
async fn get_cluster(channel: Result<Channel, String>) -> Result<GetClusterResponse, String> {
    let channel = channel?;
    ControlClient::new(channel)
        .get_cluster(GetClusterRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

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

#[tokio::test]
async fn joining_pins_the_ca_checks_the_token_and_rotation_retires_it() {
    let s = Secured::start(&[]).await;
    let worker = s.token("worker").await;
    let manager = s.token("manager").await;
    assert_ne!(worker, manager);

    // The role comes from the token.
    let joined = s.join(&worker).await.unwrap();
    assert_eq!(joined.identity().unwrap().role, Role::Worker);
    assert_eq!(joined.identity().unwrap().cluster_id, s.cluster_id);
    assert_eq!(
        s.join(&manager).await.unwrap().identity().unwrap().role,
        Role::Manager
    );

    // A token pinning another CA: the joiner refuses the manager's CA.
    let parsed = JoinToken::parse(&worker).unwrap();
    let other = parsed.with_digest(&"0".repeat(64)).to_string();
    match s.join(&other).await {
        Err(JoinError::Refused(why)) => {
            assert!(why.contains("not the one the token pins"), "{why}")
        }
        other => panic!("joined with a token for another CA: {other:?}"),
    }

    // A truncated token: the agent says what is wrong and exits.
    let dir = TempDir::new().unwrap();
    let out = tokio::process::Command::new(shoal_bin())
        .args([
            "agent",
            "--manager",
            &s.manager.addr.to_string(),
            "--runtime",
            "fake",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("SHOAL_JOIN_TOKEN", &worker[..worker.len() - 5])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token: join token is invalid"), "{stderr}");
    assert!(!dir.path().join("tls").join("cert.pem").exists());

    // The manager itself refuses a truncated token (the agent's own check
    // bypassed), and a worker token gets a worker certificate whatever the
    // CSR asks for.
    let anonymous = ca_client::CaClient::new(
        client::connect(
            Endpoint::from_shared(format!("http://{}", s.manager.addr)).unwrap(),
            ClientTls::Fixed(client::pinned_config(s.ca.cert_pem()).unwrap()),
        )
        .await
        .unwrap(),
    );
    let (_key, csr_pem) = pki::new_key_and_csr().unwrap();
    let err = anonymous
        .clone()
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: worker[..worker.len() - 5].to_string(),
            csr_pem,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let key = rcgen_key();
    let greedy_csr = manager_role_csr(&key);
    let issued = anonymous
        .clone()
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: worker.clone(),
            csr_pem: greedy_csr,
        })
        .await
        .unwrap()
        .into_inner();
    let identity = pki::PeerIdentity::from_pem(&issued.cert_pem).unwrap();
    assert_eq!(identity.role, Role::Worker);
    assert_ne!(identity.node_id, "wants-to-be-a-manager");

    // Rotation: the old token stops working, the new one works, joined
    // nodes are not disturbed.
    let out = s
        .manager
        .cli(&["join-token", "worker", "--rotate", "-q"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(rotated, worker);
    assert_eq!(s.token("worker").await, rotated);
    match s.join(&worker).await {
        Err(JoinError::Refused(why)) => assert!(why.contains("not valid"), "{why}"),
        other => panic!("a rotated token still joins: {other:?}"),
    }
    s.join(&rotated).await.unwrap();
    assert_eq!(
        s.token("manager").await,
        manager,
        "rotating one token changed the other"
    );
    let mut dispatcher = DispatcherClient::new(s.channel(joined).await.unwrap());
    let mut stream = dispatcher
        .session(SessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());

    // A node renews its certificate with the one it has.
    let node = s.join(&rotated).await.unwrap();
    let before = node.identity().unwrap();
    let channel = s.channel(node).await.unwrap();
    let (_key, csr_pem) = pki::new_key_and_csr().unwrap();
    let renewed = ca_client::CaClient::new(channel)
        .renew_node_certificate(RenewNodeCertificateRequest { csr_pem })
        .await
        .unwrap()
        .into_inner();
    let after = pki::PeerIdentity::from_pem(&renewed.cert_pem).unwrap();
    assert_eq!(
        (after.node_id.as_str(), after.role),
        (before.node_id.as_str(), Role::Worker)
    );
    assert!(after.not_after >= before.not_after);
}

#[tokio::test]
async fn a_removed_node_is_refused_at_once_and_nothing_secret_leaks() {
    let s = Secured::start(&[]).await;
    let token = s.token("worker").await;
    let dir = TempDir::new().unwrap();
    let log = dir.path().join("agent.log");
    let mut agent = s.fake_agent("doomed", &token, dir.path(), "debug");
    let node_id = eventually("the agent to join and register", WAIT, || async {
        let creds = Credentials::load(&dir.path().join("data").join("tls"))
            .map_err(|e| e.to_string())?
            .ok_or("no certificate yet")?;
        let id = creds.identity().map_err(|e| e.to_string())?.node_id;
        let out = s.manager.cli(&["node", "inspect", &id]).await;
        out.status
            .success()
            .then_some(id)
            .ok_or_else(|| "not registered yet".into())
    })
    .await
    .unwrap();

    let out = s.manager.cli(&["node", "rm", "--force", &node_id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its certificate is still valid, but every call is refused.
    let creds = Credentials::load(&dir.path().join("data").join("tls"))
        .unwrap()
        .unwrap();
    let err = DispatcherClient::new(s.channel(creds).await.unwrap())
        .session(SessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("removed"), "{err:?}");
    let log_text = eventually("the agent to be refused", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("was removed from the cluster")
            .then_some(text)
            .ok_or_else(|| "not yet".to_string())
    })
    .await
    .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    // And it does not come back by itself.
    let out = s.manager.cli(&["node", "ls", "-q"]).await;
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&node_id));

    // Secrets stay out of logs and of the store's files.
    let secret = token.rsplit('-').next().unwrap();
    assert!(
        !log_text.contains(secret),
        "the agent logged its join token"
    );
    assert!(
        !s.manager.log().contains(secret),
        "the manager logged a join token"
    );
    let ca_key = s.ca.key_pem();
    let key_body: String = ca_key.lines().nth(1).unwrap().to_string();
    for file in files_under(&s.manager.data_dir) {
        if file.starts_with(s.manager.data_dir.join("tls"))
            || file.starts_with(s.manager.data_dir.join("admin"))
        {
            continue; // this node's own key files
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key_body),
            "the CA key is in the clear in {}",
            file.display()
        );
        assert!(
            !text.contains(secret),
            "a join token is in the clear in {}",
            file.display()
        );
    }
    // Private files are private.
    use std::os::unix::fs::PermissionsExt;
    for private in [
        s.manager.data_dir.join("shoal.sock"),
        s.manager.data_dir.join("keys").join("data.key"),
        s.manager.data_dir.join("tls").join("key.pem"),
        s.manager.admin_dir().join("key.pem"),
        dir.path().join("data").join("tls").join("key.pem"),
    ] {
        let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is mode {mode:o}", private.display());
    }
}

/// Certificate lifetime in the renewal scenario: each side renews 13.5 to
/// 23.4 s after issuance (half to four fifths of the life, counted from the
/// 3 s backdate), so at least 6.6 s before expiry, a margin no scheduling
/// delay on a loaded machine eats (12 s left 2.6 s).
const SHORT_LIFE: i64 = 30;
/// Deadline for each step of the renewal scenario: past the whole lifetime.
const RENEWAL_WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn certificates_renew_without_dropping_the_agent_session() {
    let s = Secured::start(&["--cert-expiry", &format!("{SHORT_LIFE}s")]).await;
    let token = s.token("worker").await;
    let dir = TempDir::new().unwrap();
    let tls = dir.path().join("data").join("tls");
    let log = dir.path().join("agent.log");
    let mut agent = s.fake_agent("renewing", &token, dir.path(), "info");
    let first = eventually("the agent to join", WAIT, || async {
        Credentials::load(&tls)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no certificate yet".to_string())?
            .identity()
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert!(first.not_after - now() <= SHORT_LIFE, "{first:?}");

    // Renewed before it expires, and the manager renewed its own too.
    let renewed = eventually(
        "the agent to renew its certificate",
        RENEWAL_WAIT,
        || async {
            let current = Credentials::load(&tls)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no certificate".to_string())?
                .identity()
                .map_err(|e| e.to_string())?;
            (current.not_after > first.not_after)
                .then_some(current)
                .ok_or_else(|| "not renewed yet".to_string())
        },
    )
    .await
    .unwrap();
    assert_eq!(renewed.node_id, first.node_id);
    // When it was issued, from the certificate itself (not when this test
    // happened to look): before the first one expired.
    let issued = renewed.not_after - SHORT_LIFE;
    assert!(
        issued < first.not_after,
        "renewed only after expiry: issued at {issued}, the first expired at {}",
        first.not_after
    );
    eventually(
        "the manager to renew its own certificate",
        RENEWAL_WAIT,
        || async {
            s.manager
                .log()
                .contains("own certificate renewed")
                .then_some(())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await
    .unwrap();

    // Past the first certificate's expiry the session that was opened with
    // it is still the only one, and the node is still ready.
    eventually("the first certificate to expire", RENEWAL_WAIT, || async {
        (now() > first.not_after + 1)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await
    .unwrap();
    let out = s.manager.cli(&["node", "inspect", &first.node_id]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("\"ready\""), "{text}");
    let _ = agent.kill();
    let _ = agent.wait();
    let agent_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        agent_log.contains("node certificate renewed"),
        "{agent_log}"
    );
    assert_eq!(
        agent_log.matches("session opened").count(),
        1,
        "the session was dropped: {agent_log}"
    );
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

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                out.push(path);
            }
        }
    }
    out
}
