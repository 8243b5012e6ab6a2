//! A new manager joining an existing cluster (`shoal manager --join ADDR
//! --token MANAGER_TOKEN`).
//!
//! 1. Certificate: fetch the root CA certificate from `ADDR`, trust it only if
//!    it matches the digest the token pins, then send the token and a CSR over
//!    TLS verified against that CA. The token decides the role; anything but
//!    a manager certificate ends the join (a worker token is refused here).
//! 2. Membership: with that certificate (mutual TLS), call `Raft.JoinCluster`
//!    on the leader (a follower names it; the call is repeated there). The
//!    leader adds this manager as a learner (a voter once it has caught up)
//!    and answers with its Raft id, the
//!    members and the cluster data key.
//! 3. The caller keeps the certificate, the data key and the Raft id in the
//!    data dir (the Raft id last: its presence means "joined"), then starts
//!    Raft with an empty log; the leader brings it up to date by snapshot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_proto::ca_client::CaClient;
use shoal_proto::raft_client::RaftClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{self, Credentials, JoinToken, Role, SharedCredentials, TlsError, pki};
use shoal_proto::{
    GetRootCaCertificateRequest, IssueNodeCertificateRequest, JoinClusterRequest,
    JoinClusterResponse, RaftMember,
};
use tonic::transport::{Channel, Endpoint};

use tracing::info;

use crate::config::{ManagerConfig, reachable};
use crate::raft::membership::{self, LEADER_METADATA};
use crate::seal::{DataKey, SealError};

/// How long a join keeps retrying a manager that cannot be reached or has
/// no leader yet.
const JOIN_DEADLINE: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to join.
#[derive(Clone)]
pub struct JoinOptions {
    /// `HOST:PORT` of a manager of the cluster.
    pub addr: String,
    /// The manager join token (its text; never logged).
    pub token: String,
}

impl std::fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinOptions")
            .field("addr", &self.addr)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Why this manager could not join, or start without joining.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The join cannot go on as asked; the message names the flag or the
    /// data dir and what to do.
    #[error("{0}")]
    Refused(String),
    #[error("the TLS credentials in {}", .0.display())]
    Credentials(PathBuf, #[source] TlsError),
    #[error("the cluster data key the leader sent")]
    DataKey(#[source] SealError),
}

/// Join the cluster `opts` names unless this data dir already has: get a
/// manager certificate, become a member, keep the data key and the Raft id.
/// Returns the members, whose addresses the transport starts with.
pub async fn as_manager(
    config: &ManagerConfig,
    opts: &JoinOptions,
    advertise: &str,
) -> Result<Vec<RaftMember>, JoinError> {
    let data_dir = &config.data_dir;
    if !reachable(advertise) {
        return Err(JoinError::Refused(format!(
            "--advertise-addr: required when listening on {advertise}: the other managers must be able to reach this one"
        )));
    }
    if membership::load_raft_id(data_dir)
        .map_err(JoinError::Refused)?
        .is_some()
    {
        info!("this manager has already joined its cluster; --join ignored");
        return Ok(Vec::new());
    }
    if data_dir.join("store").exists() {
        return Err(JoinError::Refused(format!(
            "--join: data-dir {} already holds a cluster of its own; a joining manager needs an empty data dir",
            data_dir.display()
        )));
    }
    let tls_dir = config.tls_dir();
    let kept =
        Credentials::load(&tls_dir).map_err(|e| JoinError::Credentials(tls_dir.clone(), e))?;
    let creds = match kept {
        Some(creds) => creds,
        None => {
            let creds = certificate(opts).await.map_err(JoinError::Refused)?;
            creds
                .store(&tls_dir)
                .map_err(|e| JoinError::Credentials(tls_dir.clone(), e))?;
            creds
        }
    };
    let response = join_cluster(opts, &creds, advertise)
        .await
        .map_err(JoinError::Refused)?;
    DataKey::from_bytes(&response.data_key)
        .and_then(|key| key.store(data_dir))
        .map_err(JoinError::DataKey)?;
    membership::store_raft_id(data_dir, response.raft_id).map_err(JoinError::Refused)?;
    info!(
        raft.id = response.raft_id,
        members = response.members.len(),
        "joined the cluster as a manager"
    );
    Ok(response.members)
}

/// A data dir with a certificate but neither state nor Raft id is a join that
/// did not finish: starting it without `--join` would found a new cluster.
pub fn refuse_unfinished(config: &ManagerConfig) -> Result<(), JoinError> {
    let has_state = config.data_dir.join("store").exists();
    let has_cert = config.tls_dir().join(tls::creds::CERT_FILE).exists();
    let joined = membership::load_raft_id(&config.data_dir)
        .map_err(JoinError::Refused)?
        .is_some();
    if has_cert && !has_state && !joined {
        return Err(JoinError::Refused(format!(
            "data-dir {} holds a manager certificate but no cluster state: a join did not finish; start again with --join ADDR --token MANAGER_TOKEN",
            config.data_dir.display()
        )));
    }
    Ok(())
}

/// Get a manager certificate with the token in `opts`.
async fn certificate(opts: &JoinOptions) -> Result<Credentials, String> {
    let token = JoinToken::parse(&opts.token).map_err(|e| format!("--token: {e}"))?;
    let addr = &opts.addr;
    let endpoint = endpoint(addr)?;
    let ca_pem = retry(addr, || async {
        let channel = client::connect(
            endpoint.clone(),
            ClientTls::Fixed(client::ca_fetch_config()),
        )
        .await
        .map_err(|e| Attempt::Retry(root_cause(&e)))?;
        let ca = CaClient::new(channel)
            .get_root_ca_certificate(GetRootCaCertificateRequest {})
            .await
            .map_err(Attempt::from)?;
        Ok(ca.into_inner().cert_pem)
    })
    .await?;
    let der = pki::first_cert_der(&ca_pem)
        .map_err(|e| format!("--join {addr}: the manager sent an unusable CA certificate: {e}"))?;
    let digest = pki::ca_digest(&der);
    if digest != token.ca_digest() {
        return Err(format!(
            "--join {addr}: the manager presented a root CA (digest {digest}) that is not the one the token pins ({}): wrong cluster, or someone in between",
            token.ca_digest()
        ));
    }
    let pinned = client::pinned_config(&ca_pem).map_err(|e| e.to_string())?;
    let (key_pem, csr_pem) = pki::new_key_and_csr().map_err(|e| e.to_string())?;
    let issued = retry(addr, || async {
        let channel = client::connect(endpoint.clone(), ClientTls::Fixed(pinned.clone()))
            .await
            .map_err(|e| Attempt::Retry(root_cause(&e)))?;
        let issued = CaClient::new(channel)
            .issue_node_certificate(IssueNodeCertificateRequest {
                token: token.to_string(),
                csr_pem: csr_pem.clone(),
            })
            .await
            .map_err(Attempt::from)?;
        Ok(issued.into_inner())
    })
    .await?;
    let creds = Credentials {
        ca_pem,
        cert_pem: issued.cert_pem,
        key_pem,
    };
    let identity = creds
        .identity()
        .map_err(|e| format!("the CA issued an unusable certificate: {e}"))?;
    if identity.role != Role::Manager {
        return Err(format!(
            "--token: this is a {} join token; a manager joins with the manager token (`shoal join-token manager` on a manager prints it)",
            identity.role
        ));
    }
    Ok(creds)
}

/// Ask the leader (found through `opts.addr`) to add this manager, reachable
/// at `advertise`, to the Raft group.
async fn join_cluster(
    opts: &JoinOptions,
    creds: &Credentials,
    advertise: &str,
) -> Result<JoinClusterResponse, String> {
    let creds = SharedCredentials::new(creds.clone()).map_err(|e| e.to_string())?;
    let mut addr = opts.addr.clone();
    let deadline = Instant::now() + JOIN_DEADLINE;
    loop {
        let attempt = async {
            let channel = client::connect(endpoint(&addr)?, ClientTls::Node(creds.clone()))
                .await
                .map_err(|e| Attempt::Retry(root_cause(&e)))?;
            raft_client(channel)
                .join_cluster(JoinClusterRequest {
                    addr: advertise.to_string(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|status| {
                    // A follower names the leader: go there.
                    match status.metadata().get(LEADER_METADATA) {
                        Some(leader) if status.code() == tonic::Code::FailedPrecondition => {
                            Attempt::Redirect(leader.to_str().unwrap_or_default().to_string())
                        }
                        _ => Attempt::from(status),
                    }
                })
        };
        match attempt.await {
            Ok(response) => return Ok(response),
            Err(Attempt::Redirect(leader)) if !leader.is_empty() => {
                tracing::info!(from = %addr, to = %leader, "joining through the leader");
                addr = leader;
            }
            Err(Attempt::Fatal(why)) => return Err(format!("--join {addr}: {why}")),
            Err(Attempt::Retry(why) | Attempt::Redirect(why)) => {
                if Instant::now() >= deadline {
                    return Err(format!("--join {addr}: {why}"));
                }
                tracing::warn!(manager = %addr, error = %why, "cannot join yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn raft_client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
}

/// How one attempt ended.
enum Attempt {
    Retry(String),
    Redirect(String),
    Fatal(String),
}

impl From<tonic::Status> for Attempt {
    fn from(status: tonic::Status) -> Attempt {
        use tonic::Code::*;
        match status.code() {
            Unavailable | DeadlineExceeded | Unknown | Aborted => {
                Attempt::Retry(status.message().to_string())
            }
            _ => Attempt::Fatal(format!("join refused: {}", status.message())),
        }
    }
}

impl From<String> for Attempt {
    fn from(why: String) -> Attempt {
        Attempt::Fatal(why)
    }
}

async fn retry<T, F, Fut>(addr: &str, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt>>,
{
    let deadline = Instant::now() + JOIN_DEADLINE;
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(Attempt::Fatal(why)) => return Err(format!("--join {addr}: {why}")),
            Err(Attempt::Retry(why) | Attempt::Redirect(why)) => {
                if Instant::now() >= deadline {
                    return Err(format!("--join {addr}: {why}"));
                }
                tracing::warn!(manager = %addr, error = %why, "cannot reach the manager yet; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
        .map_err(|e| format!("--join {addr}: not HOST:PORT ({e})"))
}

fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_not_advertisable() {
        assert!(!reachable("0.0.0.0:4280"));
        assert!(!reachable("[::]:4280"));
        assert!(reachable("10.0.0.1:4280"));
        assert!(reachable("manager-1.example:4280"));
    }

    #[test]
    fn a_certificate_without_state_or_raft_id_is_an_unfinished_join() {
        let dir = tempfile::tempdir().unwrap();
        let config = ManagerConfig::new(dir.path());
        refuse_unfinished(&config).unwrap();
        std::fs::create_dir_all(config.tls_dir()).unwrap();
        std::fs::write(config.tls_dir().join(tls::creds::CERT_FILE), "").unwrap();
        let err = refuse_unfinished(&config).unwrap_err().to_string();
        assert!(err.contains("--join"), "{err}");
        membership::store_raft_id(dir.path(), 4).unwrap();
        refuse_unfinished(&config).unwrap();
    }
}
