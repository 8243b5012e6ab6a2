//! Mutual TLS for every shoal connection, and the cluster's PKI.
//!
//! - [`pki`]: node identities in certificates, the root CA, keys and CSRs.
//! - [`token`]: join tokens that pin the CA and carry a secret.
//! - [`creds`]: a node's CA + certificate + key, on disk and in a slot that
//!   renewal swaps while connections keep using it.
//! - [`server`]: the server side of TLS; each request carries the peer's
//!   identity, read from its certificate and nothing else.
//! - [`listener`]: the manager's listeners, TCP (TLS) and unix, each with
//!   capped pools of connections; [`anonymous`]: the short leash of a
//!   connection without a certificate; [`local`]: the unix socket's
//!   tolerance of any `:authority`.
//! - [`client`]: channels to a manager over TLS; [`refusal`]: a refused
//!   certificate told in plain words.
//!
//! rustls with the ring provider, passed explicitly to every config, so no
//! process-wide default provider is needed.

pub mod anonymous;
pub mod client;
pub mod creds;
pub mod listener;
pub mod local;
pub mod pki;
pub mod refusal;
pub mod server;
pub mod token;

use std::sync::Arc;

pub use creds::{Credentials, SharedCredentials};
pub use pki::{PeerIdentity, RootCa};
pub use server::ConnInfo;
pub use token::JoinToken;

/// The name every manager certificate carries and every client verifies,
/// whatever address it dialled (managers move; the CA vouches for the role).
pub const SERVER_NAME: &str = "shoal-manager";

/// What a TLS operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Certificate(String),
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Io(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The role a certificate grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs tasks: may call the dispatcher, about its own node only.
    Worker,
    /// A cluster manager: every API, and the Raft peer service.
    Manager,
    /// A remote CLI with the admin client certificate: the control API.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s {
            "worker" => Ok(Role::Worker),
            "manager" => Ok(Role::Manager),
            "admin" => Ok(Role::Admin),
            other => Err(TlsError::Certificate(format!(
                "certificate names an unknown role {other:?}"
            ))),
        }
    }
}

/// The one crypto provider shoal uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
