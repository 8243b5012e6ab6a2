//! This manager's own identity at start: the certificate in `DATA_DIR/tls`,
//! or, in a data dir that holds no cluster yet, a new cluster made here.

use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::tls::{self, Credentials};
use tracing::info;

use super::{CaError, bootstrap};
use crate::config::ManagerConfig;
use crate::seal::DataKey;
use crate::store::{Store, StoreError};

/// How long a new single-manager cluster may take to elect itself.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// A cluster created by this start: what the operator needs to grow it.
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub worker_token: String,
    pub manager_token: String,
    /// The admin client certificate (`SHOAL_CERT_PATH`).
    pub admin_dir: PathBuf,
}

/// This manager's credentials: those in `DATA_DIR/tls`, or, in a data dir
/// whose store holds no cluster yet, a new cluster's (then also returned).
pub async fn own(
    config: &ManagerConfig,
    store: &Store,
    key: &DataKey,
) -> Result<(Credentials, Option<NewCluster>), CaError> {
    if let Some(creds) = Credentials::load(&config.tls_dir())? {
        return Ok((creds, None));
    }
    if store.read(|s| s.cluster().is_some()) {
        return Err(CaError::NoCertificate {
            data_dir: config.data_dir.clone(),
            cert: config.tls_dir().join(tls::creds::CERT_FILE),
        });
    }
    // A new cluster: a Raft group of one, which elects itself at once.
    let mut leadership = store.leadership();
    tokio::time::timeout(BOOTSTRAP_TIMEOUT, leadership.wait_for(|l| l.is_leader))
        .await
        .map_err(|_| CaError::NotElected(BOOTSTRAP_TIMEOUT))?
        .map_err(|_| StoreError::Stopped)?;
    let made = bootstrap(store, key, config).await?;
    info!(node.id = %made.node_id, "new cluster created: root CA, join tokens, manager and admin certificates");
    let new = NewCluster {
        worker_token: made.worker_token.to_string(),
        manager_token: made.manager_token.to_string(),
        admin_dir: config.admin_dir(),
    };
    Ok((made.credentials, Some(new)))
}
