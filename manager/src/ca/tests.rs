use shoal_proto::ca_server::Ca;
use shoal_proto::tls::{JoinToken, PeerIdentity, Role, pki};
use shoal_proto::{IssueNodeCertificateRequest, NodeRole};
use tonic::{Code, Request};

use super::*;
use crate::config::ManagerConfig;

async fn new_cluster() -> (Store, DataKey, Bootstrapped, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_memory();
    let key = DataKey::generate();
    let config = ManagerConfig::new(dir.path());
    let made = bootstrap(&store, &key, &config).await.unwrap();
    (store, key, made, dir)
}

fn join(token: &str) -> Request<IssueNodeCertificateRequest> {
    let (_key, csr_pem) = pki::new_key_and_csr().unwrap();
    Request::new(IssueNodeCertificateRequest {
        token: token.to_string(),
        csr_pem,
    })
}

#[tokio::test]
async fn bootstrap_seals_the_ca_key_and_tokens_and_writes_identities() {
    let (store, key, made, dir) = new_cluster().await;
    let cluster = store.read(|s| s.cluster().cloned()).unwrap();
    let ca = cluster.root_ca.as_ref().unwrap();
    assert!(!String::from_utf8_lossy(&ca.key_sealed).contains("PRIVATE KEY"));
    let sealed = &cluster.join_tokens.as_ref().unwrap().worker_sealed;
    let worker = made.worker_token.to_string();
    assert!(!String::from_utf8_lossy(sealed).contains(&worker[10..]));
    assert_eq!(
        store
            .read(|s| join_token(s, &key, NodeRole::Worker))
            .unwrap(),
        made.worker_token
    );

    let me = made.credentials.identity().unwrap();
    assert_eq!(
        (me.role, me.cluster_id.as_str()),
        (Role::Manager, cluster.id.as_str())
    );
    let config = ManagerConfig::new(dir.path());
    let on_disk = shoal_proto::tls::Credentials::load(&config.tls_dir())
        .unwrap()
        .unwrap();
    assert_eq!(on_disk, made.credentials);
    let admin = shoal_proto::tls::Credentials::load(&config.admin_dir())
        .unwrap()
        .unwrap();
    assert_eq!(admin.identity().unwrap().role, Role::Admin);
    // The control API never shows the sealed key or the tokens.
    let shown = crate::control::redact_cluster(cluster);
    assert!(shown.root_ca.unwrap().key_sealed.is_empty());
    assert!(shown.join_tokens.is_none());
}

#[tokio::test]
async fn tokens_decide_the_role_and_rotation_retires_the_old_one() {
    let (store, key, made, _dir) = new_cluster().await;
    let ca = CaService::new(store.clone(), key.clone());

    let worker = ca
        .issue_node_certificate(join(&made.worker_token.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(worker.role(), NodeRole::Worker);
    let identity = PeerIdentity::from_pem(&worker.cert_pem).unwrap();
    assert_eq!(
        (identity.node_id.as_str(), identity.role),
        (worker.node_id.as_str(), Role::Worker)
    );

    let manager = ca
        .issue_node_certificate(join(&made.manager_token.to_string()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(manager.role(), NodeRole::Manager);
    assert_ne!(manager.node_id, worker.node_id);

    let rotated = rotate_join_token(&store, &key, NodeRole::Worker)
        .await
        .unwrap();
    assert_ne!(rotated, made.worker_token);
    let err = ca
        .issue_node_certificate(join(&made.worker_token.to_string()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    ca.issue_node_certificate(join(&rotated.to_string()))
        .await
        .unwrap();
    // The manager token was not touched.
    ca.issue_node_certificate(join(&made.manager_token.to_string()))
        .await
        .unwrap();

    // A token pinning another CA, and a truncated one.
    let foreign = JoinToken::generate(&"ab".repeat(32)).to_string();
    let err = ca.issue_node_certificate(join(&foreign)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("another root CA"), "{err:?}");
    let text = rotated.to_string();
    let err = ca
        .issue_node_certificate(join(&text[..text.len() - 4]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("token:"), "{err:?}");
    // A CSR that is not one.
    let mut bad = join(&text);
    bad.get_mut().csr_pem = "garbage".into();
    let err = ca.issue_node_certificate(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[test]
fn renewal_falls_between_half_and_four_fifths_of_life() {
    let identity = RootCa::identity("n", Role::Worker, "c", Duration::from_secs(1000));
    let life = identity.not_after - identity.not_before;
    for _ in 0..200 {
        let at = pki::renewal_time(&identity) - identity.not_before;
        assert!(at >= life / 2 && at <= life * 8 / 10, "{at} of {life}");
    }
}
