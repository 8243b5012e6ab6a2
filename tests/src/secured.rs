//! A manager whose root CA the test holds, for the security scenarios: it is
//! started with a root CA the test made (`--ca-cert/--ca-key`), so a test can
//! also mint the certificates a cluster would never issue (expired ones,
//! other clusters').

use std::path::Path;
use std::time::Duration;

use shoal_agent::identity::{self, JoinError};
use shoal_proto::control_client::ControlClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{Credentials, JoinToken, Role, RootCa, SharedCredentials, pki};
use shoal_proto::{GetClusterRequest, GetClusterResponse};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

use crate::process::{ManagerProcess, shoal_bin};

/// A manager whose root CA the test holds.
pub struct Secured {
    pub manager: ManagerProcess,
    pub ca: RootCa,
    pub cluster_id: String,
    _files: TempDir,
}

impl Secured {
    pub async fn start(extra: &[&str]) -> Secured {
        crate::init();
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
    pub fn mint(
        &self,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        valid: (i64, i64),
    ) -> Credentials {
        mint_with(
            &self.ca,
            self.ca.cert_pem(),
            node_id,
            role,
            cluster_id,
            valid,
        )
    }

    pub async fn channel(&self, creds: Credentials) -> Result<Channel, String> {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.manager.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5));
        let tls = ClientTls::Node(SharedCredentials::new(creds).map_err(|e| e.to_string())?);
        client::connect(endpoint, tls)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    pub async fn join(&self, token: &str) -> Result<Credentials, JoinError> {
        identity::join(
            &self.manager.addr.to_string(),
            &JoinToken::parse(token).unwrap(),
        )
        .await
    }

    /// A `shoal agent` process on the fake runtime joining with `token`; its
    /// data in `dir/data`, its log in `dir/agent.log`.
    pub fn fake_agent(
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

    pub async fn token(&self, role: &str) -> String {
        let out = self.manager.cli(&["join-token", role, "-q"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

pub fn mint_with(
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

pub fn rcgen_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().unwrap()
}

/// A CSR whose subject claims the manager role and an id of its choosing.
pub fn manager_role_csr(key: &rcgen::KeyPair) -> String {
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "wants-to-be-a-manager");
    dn.push(rcgen::DnType::OrganizationalUnitName, "manager");
    params.distinguished_name = dn;
    params.serialize_request(key).unwrap().pem().unwrap()
}

pub fn now() -> i64 {
    pki::unix_now()
}

pub fn valid() -> (i64, i64) {
    (now() - 60, now() + 3600)
}

/// The code of the first Control call over `channel`, or of the connection.
pub async fn get_cluster(channel: Result<Channel, String>) -> Result<GetClusterResponse, String> {
    let channel = channel?;
    ControlClient::new(channel)
        .get_cluster(GetClusterRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}
