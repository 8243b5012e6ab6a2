//! The node's identity: the certificate the cluster CA issued to it.
//!
//! On first start the agent joins with a token (`shoal agent --token`): it
//! fetches the root CA certificate, refuses it unless it matches the digest in
//! the token, then, trusting only that CA, sends the token and a CSR for a key
//! it made, and keeps the certificate it gets in `DATA_DIR/tls`. Its node id is
//! the one the certificate names. Later starts need no token. A background
//! loop renews the certificate at a random point between 50 % and 80 % of its
//! life; the next connection uses the new one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::ca_client::CaClient;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{Credentials, JoinToken, SharedCredentials, pki};
use shoal_proto::{
    GetRootCaCertificateRequest, IssueNodeCertificateRequest, RenewNodeCertificateRequest,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::connect;
use crate::error::AgentError;

/// Directory under the data dir that holds `ca.pem`, `cert.pem`, `key.pem`.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The node's credentials: those kept in the data dir, or new ones got by
/// joining with `config.join_token`. Retries managers that cannot be reached
/// until `shutdown`; a refused token is an error at once.
pub async fn load_or_join(
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> Result<Option<SharedCredentials>, AgentError> {
    let dir = tls_dir(&config.data_dir);
    let kept =
        Credentials::load(&dir).map_err(|e| AgentError::Join(format!("{}: {e}", dir.display())))?;
    if let Some(creds) = kept {
        let identity = creds
            .identity()
            .map_err(|e| AgentError::Join(format!("{}: {e}", dir.display())))?;
        if identity.not_after > pki::unix_now() {
            return shared(creds).map(Some);
        }
        if config.join_token.is_none() {
            return Err(AgentError::Join(format!(
                "the node certificate in {} expired; join again with --token",
                dir.display()
            )));
        }
        warn!(node.id = %identity.node_id, "node certificate expired; joining again with the token");
    }
    let Some(text) = config.join_token.as_deref() else {
        return Err(AgentError::Config(
            "token: this node has not joined a cluster yet; give the worker join token \
             (`shoal join-token worker` on a manager prints it)"
                .into(),
        ));
    };
    let token = JoinToken::parse(text).map_err(|e| AgentError::Config(format!("token: {e}")))?;
    let managers = config.manager_addrs()?;
    let mut backoff = Backoff::default();
    let mut next = 0usize;
    loop {
        let addr = &managers[next % managers.len()];
        match join(addr, &token).await {
            Ok(creds) => {
                creds
                    .store(&dir)
                    .map_err(|e| AgentError::Join(format!("{}: {e}", dir.display())))?;
                let identity = creds
                    .identity()
                    .map_err(|e| AgentError::Join(e.to_string()))?;
                info!(manager = %addr, node.id = %identity.node_id, role = %identity.role,
                    "joined the cluster");
                return shared(creds).map(Some);
            }
            Err(JoinError::Refused(why)) => return Err(AgentError::Join(why)),
            Err(JoinError::Unreachable(why)) => {
                next += 1;
                let delay = backoff.next_delay();
                warn!(manager = %addr, error = %why, "cannot join through this manager yet; retrying in {delay:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn shared(creds: Credentials) -> Result<SharedCredentials, AgentError> {
    SharedCredentials::new(creds).map_err(|e| AgentError::Join(e.to_string()))
}

/// Why a join attempt failed.
#[derive(Debug)]
pub enum JoinError {
    /// The manager or the CA said no: retrying will not help.
    Refused(String),
    /// The manager could not be reached: try again, or another one.
    Unreachable(String),
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Refused(why) | JoinError::Unreachable(why) => f.write_str(why),
        }
    }
}

fn rpc_error(status: tonic::Status) -> JoinError {
    use tonic::Code::*;
    match status.code() {
        Unavailable | DeadlineExceeded | Unknown | Internal | Aborted => {
            JoinError::Unreachable(status.message().to_string())
        }
        _ => JoinError::Refused(format!("join refused: {}", status.message())),
    }
}

/// Join through the manager at `addr` (`HOST:PORT`) with `token`.
pub async fn join(addr: &str, token: &JoinToken) -> Result<Credentials, JoinError> {
    let endpoint =
        connect::endpoint(addr).map_err(|e| JoinError::Refused(format!("manager {addr}: {e}")))?;
    // 1. The CA certificate, from a server we cannot verify yet...
    let channel = client::connect(
        endpoint.clone(),
        ClientTls::Fixed(client::ca_fetch_config()),
    )
    .await
    .map_err(|e| JoinError::Unreachable(format!("{addr}: {}", connect::root_cause(&e))))?;
    let ca_pem = CaClient::new(channel)
        .get_root_ca_certificate(GetRootCaCertificateRequest {})
        .await
        .map_err(rpc_error)?
        .into_inner()
        .cert_pem;
    // ...so it is trusted only if it is the one the token pins.
    let der = pki::first_cert_der(&ca_pem).map_err(|e| {
        JoinError::Refused(format!("the manager sent an unusable CA certificate: {e}"))
    })?;
    let digest = pki::ca_digest(&der);
    if digest != token.ca_digest() {
        return Err(JoinError::Refused(format!(
            "the manager at {addr} presented a root CA (digest {digest}) that is not the one the token pins ({}): wrong cluster, or someone in between",
            token.ca_digest()
        )));
    }
    // 2. Token and CSR, to a server verified against that CA.
    let pinned = client::pinned_config(&ca_pem).map_err(|e| JoinError::Refused(e.to_string()))?;
    let channel = client::connect(endpoint, ClientTls::Fixed(pinned))
        .await
        .map_err(|e| JoinError::Unreachable(format!("{addr}: {}", connect::root_cause(&e))))?;
    let (key_pem, csr_pem) =
        pki::new_key_and_csr().map_err(|e| JoinError::Refused(e.to_string()))?;
    let issued = CaClient::new(channel)
        .issue_node_certificate(IssueNodeCertificateRequest {
            token: token.to_string(),
            csr_pem,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let creds = Credentials {
        ca_pem,
        cert_pem: issued.cert_pem,
        key_pem,
    };
    creds
        .identity()
        .map_err(|e| JoinError::Refused(format!("the CA issued an unusable certificate: {e}")))?;
    Ok(creds)
}

/// Renew the certificate at [`pki::renewal_time`] through any of `managers`,
/// keep it in the data dir and use it from the next connection on.
pub async fn renew_loop(
    managers: Vec<String>,
    data_dir: PathBuf,
    creds: SharedCredentials,
    shutdown: CancellationToken,
) {
    let mut next = 0usize;
    loop {
        let Ok(identity) = creds.get().identity() else {
            return;
        };
        let wait = (pki::renewal_time(&identity) - pki::unix_now()).max(0) as u64;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
        loop {
            let addr = &managers[next % managers.len()];
            match renew(addr, &creds).await {
                Ok(fresh) => {
                    if let Err(e) = fresh.store(&tls_dir(&data_dir)) {
                        warn!(error = %e, "cannot keep the renewed certificate");
                    }
                    match creds.replace(fresh) {
                        Ok(()) => info!(node.id = %identity.node_id, "node certificate renewed"),
                        Err(e) => warn!(error = %e, "renewed certificate unusable"),
                    }
                    break;
                }
                Err(e) => {
                    next += 1;
                    warn!(manager = %addr, error = %e, "certificate renewal failed; retrying in 30s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                }
            }
        }
    }
}

async fn renew(addr: &str, creds: &SharedCredentials) -> Result<Credentials, JoinError> {
    let endpoint =
        connect::endpoint(addr).map_err(|e| JoinError::Refused(format!("manager {addr}: {e}")))?;
    let channel = client::connect(endpoint, ClientTls::Node(creds.clone()))
        .await
        .map_err(|e| JoinError::Unreachable(connect::root_cause(&e)))?;
    let (key_pem, csr_pem) =
        pki::new_key_and_csr().map_err(|e| JoinError::Refused(e.to_string()))?;
    let issued = CaClient::new(channel)
        .renew_node_certificate(RenewNodeCertificateRequest { csr_pem })
        .await
        .map_err(rpc_error)?
        .into_inner();
    Ok(Credentials {
        ca_pem: issued.ca_pem,
        cert_pem: issued.cert_pem,
        key_pem,
    })
}
