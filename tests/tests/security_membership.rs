//! Cluster membership against a real `shoal manager` process on loopback:
//! joining with tokens, rotation, node removal, certificate renewal, and what
//! stays out of logs and files. What the listener refuses and what each role
//! may call are in `security_scenarios.rs`.

use std::path::Path;
use std::time::Duration;

use shoal_agent::identity::JoinError;
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{Credentials, JoinToken, Role, pki};
use shoal_proto::*;
use shoal_tests::process::shoal_bin;
use shoal_tests::secured::*;
use shoal_tests::wait::eventually;
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Endpoint;

const WAIT: Duration = Duration::from_secs(20);

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
