//! The cluster's certificate authority (Swarm's `ca` package, in small).
//!
//! The root CA's certificate and its key (sealed with the cluster data key)
//! live in the replicated cluster object, so every manager can sign. This
//! module creates them with a new cluster ([`bootstrap`]), serves the `Ca` gRPC
//! service (root certificate to anyone, node certificates to holders of a join
//! token, renewals to nodes), rotates join tokens, and keeps this manager's own
//! certificate fresh ([`renew_own`]). At start, [`own_identity`] finds this
//! manager's certificate or makes a new cluster.

mod identity;
mod service;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::tls::{Credentials, JoinToken, PeerIdentity, Role, RootCa, pki};
use shoal_proto::{Cluster, JoinTokens, NodeRole};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::ManagerConfig;
use crate::seal::DataKey;
use crate::store::{Action, MemState, Object, Store, StoreError};

pub use identity::{NewCluster, own as own_identity};
pub use service::CaService;

/// Why the CA could not do something.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Tls(#[from] shoal_proto::tls::TlsError),
    #[error("{0}")]
    Seal(#[from] crate::seal::SealError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the cluster has no root CA yet")]
    NoCa,
    #[error("{0}")]
    Io(String),
    #[error(
        "data-dir {} holds a cluster but no certificate ({} is missing)",
        data_dir.display(),
        cert.display()
    )]
    NoCertificate { data_dir: PathBuf, cert: PathBuf },
    #[error("the new cluster did not elect this manager within {0:?}")]
    NotElected(Duration),
}

impl From<CaError> for Status {
    fn from(err: CaError) -> Status {
        match err {
            CaError::NoCa => Status::unavailable(err.to_string()),
            CaError::Store(StoreError::NotLeader | StoreError::LeadershipLost) => {
                Status::unavailable(err.to_string())
            }
            other => Status::internal(other.to_string()),
        }
    }
}

/// The CA and its settings as the store holds them, opened with the data key.
pub struct ClusterCa {
    pub cluster_id: String,
    pub root: RootCa,
    pub lifetime: Duration,
}

impl ClusterCa {
    /// Open the CA of the cluster in `state`.
    pub fn open(state: &MemState, key: &DataKey) -> Result<Self, CaError> {
        let cluster = state.cluster().ok_or(CaError::NoCa)?;
        let ca = cluster.root_ca.as_ref().ok_or(CaError::NoCa)?;
        let key_pem = String::from_utf8(key.open(&ca.key_sealed)?)
            .map_err(|_| CaError::Io("the sealed CA key is not PEM text".into()))?;
        Ok(ClusterCa {
            cluster_id: cluster.id.clone(),
            root: RootCa::from_pem(&ca.cert_pem, &key_pem)?,
            lifetime: lifetime_of(cluster),
        })
    }

    /// A certificate for `node_id` in `role`, valid for the cluster's lifetime.
    pub fn issue(&self, csr_pem: &str, node_id: &str, role: Role) -> Result<String, CaError> {
        let identity = RootCa::identity(node_id, role, &self.cluster_id, self.lifetime);
        Ok(self.root.issue(csr_pem, &identity)?)
    }

    /// New credentials (fresh key) for `node_id` in `role`.
    pub fn credentials(&self, node_id: &str, role: Role) -> Result<Credentials, CaError> {
        let (key_pem, csr) = pki::new_key_and_csr()?;
        Ok(Credentials {
            ca_pem: self.root.cert_pem().to_string(),
            cert_pem: self.issue(&csr, node_id, role)?,
            key_pem,
        })
    }
}

fn lifetime_of(cluster: &Cluster) -> Duration {
    cluster
        .root_ca
        .as_ref()
        .map(|ca| ca.node_cert_lifetime_secs)
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(pki::DEFAULT_CERT_LIFETIME)
}

/// The join token text for `role`.
pub fn join_token(state: &MemState, key: &DataKey, role: NodeRole) -> Result<JoinToken, CaError> {
    let tokens = state
        .cluster()
        .and_then(|c| c.join_tokens.as_ref())
        .ok_or(CaError::NoCa)?;
    let sealed = match role {
        NodeRole::Worker => &tokens.worker_sealed,
        NodeRole::Manager => &tokens.manager_sealed,
    };
    let text = String::from_utf8(key.open(sealed)?)
        .map_err(|_| CaError::Io("a sealed join token is not text".into()))?;
    Ok(JoinToken::parse(&text)?)
}

/// Replace the join token of `role` with a new one and return it. Nodes that
/// already joined keep their certificates; the old token stops working.
pub async fn rotate_join_token(
    store: &Store,
    key: &DataKey,
    role: NodeRole,
) -> Result<JoinToken, CaError> {
    for _ in 0..5 {
        let (mut cluster, digest) = store.read(|s| {
            let cluster = s.cluster().cloned().ok_or(CaError::NoCa)?;
            let ca = cluster.root_ca.as_ref().ok_or(CaError::NoCa)?;
            let digest = pki::ca_digest(pki::first_cert_der(&ca.cert_pem)?.as_ref());
            Ok::<_, CaError>((cluster, digest))
        })?;
        let token = JoinToken::generate(&digest);
        let tokens = cluster.join_tokens.get_or_insert_with(Default::default);
        let sealed = key.seal(token.to_string().as_bytes());
        match role {
            NodeRole::Worker => tokens.worker_sealed = sealed,
            NodeRole::Manager => tokens.manager_sealed = sealed,
        }
        match store
            .propose(vec![Action::Update(Object::Cluster(cluster.into()))])
            .await
        {
            Ok(_) => return Ok(token),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaError::Io(
        "the cluster object kept changing; try again".into(),
    ))
}

/// What a new cluster's first manager made for itself.
pub struct Bootstrapped {
    pub node_id: String,
    pub credentials: Credentials,
    pub worker_token: JoinToken,
    pub manager_token: JoinToken,
}

/// Create a new cluster: its root CA (generated, or `config.ca.external`) and
/// join tokens in the cluster object, this manager's certificate in
/// `DATA_DIR/tls`, and the admin client certificate in `DATA_DIR/admin`. The
/// store must be empty and led by this manager.
pub async fn bootstrap(
    store: &Store,
    key: &DataKey,
    config: &ManagerConfig,
) -> Result<Bootstrapped, CaError> {
    let cluster_id = shoal_proto::ids::new_id();
    let root = match &config.ca.external {
        Some((cert_pem, key_pem)) => RootCa::from_pem(cert_pem, key_pem)?,
        None => RootCa::generate(&cluster_id)?,
    };
    let worker_token = JoinToken::generate(&root.digest());
    let manager_token = JoinToken::generate(&root.digest());
    let cluster = Cluster {
        id: cluster_id.clone(),
        meta: None,
        spec: Some(config.default_cluster_spec()),
        root_ca: Some(shoal_proto::RootCa {
            cert_pem: root.cert_pem().to_string(),
            key_sealed: key.seal(root.key_pem().as_bytes()),
            node_cert_lifetime_secs: config.ca.cert_lifetime.as_secs() as i64,
        }),
        join_tokens: Some(JoinTokens {
            worker_sealed: key.seal(worker_token.to_string().as_bytes()),
            manager_sealed: key.seal(manager_token.to_string().as_bytes()),
        }),
        removed_nodes: Default::default(),
        removed_raft_ids: Vec::new(),
        // The server records this manager once it knows its address.
        managers: Vec::new(),
        next_raft_id: 0,
    };
    store
        .propose(vec![Action::Create(Object::Cluster(cluster.into()))])
        .await?;
    let ca = store.read(|s| ClusterCa::open(s, key))?;
    let node_id = shoal_proto::ids::new_id();
    let credentials = ca.credentials(&node_id, Role::Manager)?;
    credentials.store(&config.tls_dir())?;
    refresh_admin(&ca, &config.admin_dir())?;
    Ok(Bootstrapped {
        node_id,
        credentials,
        worker_token,
        manager_token,
    })
}

/// Write a new admin client certificate to `dir` unless the one there is
/// valid for more than half its life.
pub fn refresh_admin(ca: &ClusterCa, dir: &Path) -> Result<(), CaError> {
    if let Ok(Some(current)) = Credentials::load(dir)
        && let Ok(identity) = current.identity()
        && identity.cluster_id == ca.cluster_id
        && current.ca_pem == ca.root.cert_pem()
        && now_secs() < midpoint(&identity)
    {
        return Ok(());
    }
    let id = format!("admin-{}", shoal_proto::ids::new_id());
    ca.credentials(&id, Role::Admin)?.store(dir)?;
    Ok(())
}

fn now_secs() -> i64 {
    pki::unix_now()
}

fn midpoint(identity: &PeerIdentity) -> i64 {
    identity.not_before + (identity.not_after - identity.not_before) / 2
}

/// Keep this manager's own certificate (and the admin certificate) fresh:
/// renew at [`pki::renewal_time`], signing with the cluster CA directly, store it
/// and swap it in for the next handshakes.
pub async fn renew_own(
    store: Store,
    key: DataKey,
    config: ManagerConfig,
    creds: shoal_proto::tls::SharedCredentials,
    shutdown: CancellationToken,
) {
    loop {
        let identity = match creds.get().identity() {
            Ok(identity) => identity,
            Err(e) => {
                tracing::error!(error = %e, "own certificate unreadable; not renewing it");
                return;
            }
        };
        let wait = (pki::renewal_time(&identity) - now_secs()).max(0) as u64;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
        let renewed = store.read(|s| ClusterCa::open(s, &key)).and_then(|ca| {
            let fresh = ca.credentials(&identity.node_id, identity.role)?;
            fresh.store(&config.tls_dir())?;
            refresh_admin(&ca, &config.admin_dir())?;
            Ok(fresh)
        });
        match renewed.map(|fresh| creds.replace(fresh)) {
            Ok(Ok(())) => tracing::info!(node.id = %identity.node_id, "own certificate renewed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "renewed certificate unusable"),
            Err(e) => {
                tracing::warn!(error = %e, "could not renew own certificate; retrying in a minute");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}
