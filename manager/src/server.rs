//! Wires the manager onto its listeners: gRPC over mutual TLS on TCP (control,
//! watch, dispatcher, raft, CA) and the control API on the unix socket `DATA_DIR/shoal.sock`
//! (mode 0600, like docker.sock), then runs until the shutdown token fires.
//! Both listeners cap their connections below the open files limit, which
//! the manager raises to its hard limit first (`shoal_proto::tls::listener`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::ca_server::CaServer;
use shoal_proto::tls::{self, Credentials, SharedCredentials};
use tonic::service::interceptor::InterceptedService;

use shoal_proto::RaftMember;
use shoal_proto::control_server::ControlServer;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::raft_server::RaftServer;
use shoal_proto::watch_server::WatchServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::auth::Authorize;
use crate::ca::{self, CaService};
use crate::config::ManagerConfig;
use crate::control::{ControlService, ForwardWrites, Forwarder, WatchService};
use crate::dispatcher::Dispatcher;
use crate::join::{self, JoinOptions};
use crate::leader;
use crate::raft::{self, GrpcTransport, Membership, RaftService, membership};
use crate::seal::DataKey;
use crate::store::Store;

// Largest request the Control API decodes (a little above the largest valid
// write), the Dispatcher's (agents' status batches and logs), and the largest
// reply either sends (docs/LIMITS.md).
use shoal_proto::validate::{MAX_AGENT_REQUEST_BYTES, MAX_REPLY_BYTES, MAX_REQUEST_BYTES};

/// How long a new single-manager cluster may take to elect itself.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long open streams get to finish after shutdown is requested.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 pings from the server close a connection whose peer is gone: one
/// is sent after this long without a frame from the peer (agents send a
/// heartbeat every 500 ms, so their sessions are rarely pinged)...
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed if its answer does not come in this time,
/// generous for a peer whose runtime lags under load.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the manager could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error(
        "this manager was removed from the cluster (node demote or node rm); its data dir {} is no longer a member: delete it before joining again with a token",
        .0.display()
    )]
    Removed(std::path::PathBuf),
}

/// What a manager reports once it serves.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The bound TCP address.
    pub addr: SocketAddr,
    /// This manager's node id (from its certificate).
    pub node_id: String,
    /// Set when this start created the cluster.
    pub new_cluster: Option<NewCluster>,
}

/// A cluster created by this start: what the operator needs to grow it.
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub worker_token: String,
    pub manager_token: String,
    /// The admin client certificate (`SHOAL_CERT_PATH`).
    pub admin_dir: PathBuf,
}

/// Bind `config.listen_addr` and run a manager until `shutdown` is cancelled.
pub async fn run(config: ManagerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    run_with(config, shutdown, |_| {}).await
}

/// [`run`], calling `on_ready` once the manager serves.
pub async fn run_with(
    config: ManagerConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Ready) + Send,
) -> Result<(), ServerError> {
    run_joining(config, None, shutdown, on_ready).await
}

/// [`run_with`], first joining the cluster `join` names if this data dir has
/// not joined one yet (`shoal manager --join ADDR --token T`).
pub async fn run_joining(
    config: ManagerConfig,
    join: Option<JoinOptions>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Ready) + Send,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let listener = TcpListener::bind(config.listen_addr).await.map_err(|e| {
        ServerError::Io(format!(
            "listen-addr {}: {e} (is another shoal manager running?)",
            config.listen_addr
        ))
    })?;
    serve_joining(config, join, listener, shutdown, on_ready).await
}

/// Run a manager on an already bound listener (tests bind port 0).
pub async fn serve(
    config: ManagerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    serve_with(config, listener, shutdown, |_| {}).await
}

/// Create a new cluster in an empty data dir and stop (`shoal init`).
pub async fn init(config: ManagerConfig) -> Result<NewCluster, ServerError> {
    config.validate().map_err(ServerError::Config)?;
    prepare_data_dir(&config)?;
    if Credentials::load(&config.tls_dir())
        .map_err(|e| ServerError::Config(e.to_string()))?
        .is_some()
    {
        return Err(ServerError::Config(format!(
            "data-dir {} already holds a cluster",
            config.data_dir.display()
        )));
    }
    let key = DataKey::load_or_create(&config.data_dir).map_err(seal_err)?;
    let (store, raft) = raft::start(&config)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let result = identity(&config, &store, &key).await;
    raft.shutdown().await;
    match result? {
        (_, Some(new)) => Ok(new),
        (_, None) => Err(ServerError::Config(format!(
            "data-dir {} already holds a cluster",
            config.data_dir.display()
        ))),
    }
}

/// [`serve`], calling `on_ready` once the manager serves.
pub async fn serve_with(
    config: ManagerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Ready) + Send,
) -> Result<(), ServerError> {
    serve_joining(config, None, listener, shutdown, on_ready).await
}

/// [`serve_with`], joining the cluster `join` names first (see [`run_joining`]).
pub async fn serve_joining(
    config: ManagerConfig,
    join: Option<JoinOptions>,
    listener: TcpListener,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Ready) + Send,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    prepare_data_dir(&config)?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io(e.to_string()))?;
    let advertise = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let seeds = match &join {
        Some(opts) => join_as_manager(&config, opts, &advertise).await?,
        None => {
            refuse_unfinished_join(&config)?;
            Vec::new()
        }
    };
    let key = DataKey::load_or_create(&config.data_dir).map_err(seal_err)?;
    let transport = GrpcTransport::new(shutdown.clone());
    transport.seed(&seeds);
    let (store, raft) = raft::start_with_transport(&config, Arc::new(transport.clone()))
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    transport.attach(store.clone(), raft.inbox());
    let raft_id = raft.status().id;
    let (creds, new_cluster) = match identity(&config, &store, &key).await {
        Ok(found) => found,
        Err(e) => {
            raft.shutdown().await;
            return Err(e);
        }
    };
    let node_id = creds
        .identity()
        .map_err(|e| ServerError::Config(e.to_string()))?
        .node_id;
    if let Ok(ca) = store.read(|s| ca::ClusterCa::open(s, &key))
        && let Err(e) = ca::refresh_admin(&ca, &config.admin_dir())
    {
        warn!(error = %e, "could not refresh the admin certificate");
    }
    let creds = SharedCredentials::new(creds).map_err(|e| ServerError::Config(e.to_string()))?;
    transport.set_credentials(creds.clone());
    let forwarder = Forwarder::new(store.clone(), creds.clone(), raft_id)
        .with_read_barrier(raft.inbox(), config.raft.read_timeout());
    let tls = tls::server::server_config(&creds).map_err(|e| ServerError::Config(e.to_string()))?;

    let dispatcher =
        Dispatcher::new(store.clone(), config.dispatcher.clone()).with_data_key(key.clone());
    let membership = Membership::new(store.clone(), raft.inbox(), key.clone(), raft_id);
    let control = ControlService::new(store.clone(), Some(raft.clone()))
        .with_dispatcher(dispatcher.clone())
        .with_data_key(key.clone())
        .with_membership(membership.clone(), config.raft.read_timeout() * 2);
    let watch = WatchService::new(store.clone(), shutdown.clone());

    let fds = tls::listener::raise_fd_limit();
    let limits = tls::listener::ConnLimits::for_fd_limit(fds);
    info!(open_files = fds, ?limits, "connection limits");

    let socket_path = config.control_socket();
    let _ = std::fs::remove_file(&socket_path);
    let unix = UnixListener::bind(&socket_path)
        .map_err(|e| ServerError::Io(format!("control socket {}: {e}", socket_path.display())))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::Io(format!("control socket {}: {e}", socket_path.display())))?;

    // Every TCP connection is TLS; each service checks the peer's role.
    let tcp_server = Server::builder()
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        // Connections without a certificate close once their calls are done.
        .layer(tls::anonymous::TrackAnonymousCalls)
        .add_service(InterceptedService::new(
            ForwardWrites::new(control_server(control.clone()), forwarder.clone()),
            Authorize::control(store.clone()),
        ))
        .add_service(InterceptedService::new(
            watch_server(watch.clone()),
            Authorize::control(store.clone()),
        ))
        .add_service(InterceptedService::new(
            DispatcherServer::new(dispatcher.clone())
                .max_decoding_message_size(MAX_AGENT_REQUEST_BYTES)
                .max_encoding_message_size(MAX_REPLY_BYTES),
            Authorize::dispatcher(store.clone()),
        ))
        .add_service(InterceptedService::new(
            // gRPC's default size limit: large snapshots arrive in chunks.
            RaftServer::new(RaftService::new(raft.clone()).with_membership(membership)),
            Authorize::raft(store.clone()),
        ))
        .add_service(CaServer::new(CaService::new(store.clone(), key.clone())))
        .serve_with_incoming_shutdown(
            tls::listener::incoming(listener, tls, limits),
            shutdown.clone().cancelled_owned(),
        );
    // The unix socket is the local administrator: its mode (0600) is the check.
    let unix_server = Server::builder()
        .add_service(ForwardWrites::new(control_server(control), forwarder))
        .add_service(watch_server(watch))
        .serve_with_incoming_shutdown(
            tls::listener::local_incoming(unix, limits.local),
            shutdown.clone().cancelled_owned(),
        );

    let leader = tokio::spawn(leader::run(
        store.clone(),
        config.clone(),
        dispatcher,
        shutdown.clone(),
    ));
    let register = tokio::spawn(register_while_leading(
        store.clone(),
        raft_id,
        node_id.clone(),
        advertise.clone(),
        config.raft.force_new_cluster,
        shutdown.clone(),
    ));
    let renew = tokio::spawn(ca::renew_own(
        store.clone(),
        key,
        config.clone(),
        creds,
        shutdown.clone(),
    ));
    info!(%addr, %advertise, raft.id = raft_id, node.id = %node_id, socket = %socket_path.display(), data_dir = %config.data_dir.display(), "manager listening (mutual TLS)");

    let tcp = tokio::spawn(tcp_server);
    let unix = tokio::spawn(unix_server);
    on_ready(Ready {
        addr,
        node_id,
        new_cluster,
    });
    let mut failed = None;
    let removed = tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = raft.removed() => true,
        err = raft.failed() => {
            failed = Some(err);
            false
        }
    };
    if removed {
        warn!("this manager was removed from the cluster (node demote or node rm); stopping");
    }
    shutdown.cancel();
    info!("manager shutting down");
    let _ = leader.await;
    let _ = renew.await;
    let _ = register.await;
    for (name, server) in [("tcp", tcp), ("unix", unix)] {
        match tokio::time::timeout(DRAIN_GRACE, server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(listener = name, error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => warn!(listener = name, error = %e, "gRPC server task failed"),
            Err(_) => warn!(
                listener = name,
                "open streams did not finish in {DRAIN_GRACE:?}; closing them"
            ),
        }
    }
    raft.shutdown().await;
    let _ = std::fs::remove_file(&socket_path);
    if removed {
        return Err(ServerError::Removed(config.data_dir.clone()));
    }
    if let Some(err) = failed {
        // Exit non-zero: a supervisor restarts the manager on its log.
        return Err(ServerError::Raft(format!(
            "the raft store failed ({err}); the manager stopped"
        )));
    }
    Ok(())
}

/// Join the cluster `opts` names unless this data dir already has: get a
/// manager certificate, become a voter, keep the data key and the Raft id.
/// Returns the members, whose addresses the transport starts with.
async fn join_as_manager(
    config: &ManagerConfig,
    opts: &JoinOptions,
    advertise: &str,
) -> Result<Vec<RaftMember>, ServerError> {
    let data_dir = &config.data_dir;
    if !reachable(advertise) {
        return Err(ServerError::Config(format!(
            "--advertise-addr: required when listening on {advertise}: the other managers must be able to reach this one"
        )));
    }
    if membership::load_raft_id(data_dir)
        .map_err(ServerError::Config)?
        .is_some()
    {
        info!("this manager has already joined its cluster; --join ignored");
        return Ok(Vec::new());
    }
    if data_dir.join("store").exists() {
        return Err(ServerError::Config(format!(
            "--join: data-dir {} already holds a cluster of its own; a joining manager needs an empty data dir",
            data_dir.display()
        )));
    }
    let tls_dir = config.tls_dir();
    let kept = Credentials::load(&tls_dir).map_err(|e| ServerError::Config(e.to_string()))?;
    let creds = match kept {
        Some(creds) => creds,
        None => {
            let creds = join::certificate(opts).await.map_err(ServerError::Config)?;
            creds
                .store(&tls_dir)
                .map_err(|e| ServerError::Io(format!("{}: {e}", tls_dir.display())))?;
            creds
        }
    };
    let response = join::join_cluster(opts, &creds, advertise)
        .await
        .map_err(ServerError::Config)?;
    DataKey::from_bytes(&response.data_key)
        .map_err(|_| ServerError::Config("the leader sent an unusable data key".into()))?
        .store(data_dir)
        .map_err(seal_err)?;
    membership::store_raft_id(data_dir, response.raft_id).map_err(ServerError::Io)?;
    info!(
        raft.id = response.raft_id,
        members = response.members.len(),
        "joined the cluster as a manager"
    );
    Ok(response.members)
}

/// A data dir with a certificate but neither state nor Raft id is a join that
/// did not finish: starting it without `--join` would found a new cluster.
fn refuse_unfinished_join(config: &ManagerConfig) -> Result<(), ServerError> {
    let has_state = config.data_dir.join("store").exists();
    let has_cert = config.tls_dir().join(tls::creds::CERT_FILE).exists();
    let joined = membership::load_raft_id(&config.data_dir)
        .map_err(ServerError::Config)?
        .is_some();
    if has_cert && !has_state && !joined {
        return Err(ServerError::Config(format!(
            "data-dir {} holds a manager certificate but no cluster state: a join did not finish; start again with --join ADDR --token MANAGER_TOKEN",
            config.data_dir.display()
        )));
    }
    Ok(())
}

/// Whether `addr` names a host others can connect to (not 0.0.0.0 or [::]).
fn reachable(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .map(|a| !a.ip().is_unspecified())
        .unwrap_or(true)
}

/// Keep this manager's address in the managers table whenever it leads (the
/// first manager of a cluster records itself this way; a restarted leader
/// corrects a changed address).
async fn register_while_leading(
    store: Store,
    raft_id: u64,
    node_id: String,
    advertise: String,
    forced_new_cluster: bool,
    shutdown: CancellationToken,
) {
    if !reachable(&advertise) {
        warn!(%advertise, "other managers cannot reach this address; give --advertise-addr before adding managers");
    }
    let mut leadership = store.leadership();
    loop {
        if leadership.borrow_and_update().is_leader
            && let Err(e) = membership::register(&store, raft_id, &node_id, &advertise).await
        {
            warn!(error = %e, "could not record this manager in the managers table");
        }
        if forced_new_cluster
            && leadership.borrow().is_leader
            && let Err(e) = membership::forget_others(&store, raft_id).await
        {
            warn!(error = %e, "could not drop the other managers from the managers table");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = leadership.changed() => if changed.is_err() { return },
        }
    }
}

/// This manager's credentials: those in `DATA_DIR/tls`, or, in a data dir
/// that holds no cluster yet, a new cluster's.
async fn identity(
    config: &ManagerConfig,
    store: &Store,
    key: &DataKey,
) -> Result<(Credentials, Option<NewCluster>), ServerError> {
    let found =
        Credentials::load(&config.tls_dir()).map_err(|e| ServerError::Config(e.to_string()))?;
    if let Some(creds) = found {
        return Ok((creds, None));
    }
    if store.read(|s| s.cluster().is_some()) {
        return Err(ServerError::Config(format!(
            "data-dir {} holds a cluster but no certificate ({} is missing)",
            config.data_dir.display(),
            config.tls_dir().join(tls::creds::CERT_FILE).display()
        )));
    }
    // A new cluster: a Raft group of one, which elects itself at once.
    let mut leadership = store.leadership();
    tokio::time::timeout(BOOTSTRAP_TIMEOUT, leadership.wait_for(|l| l.is_leader))
        .await
        .map_err(|_| ServerError::Raft("the new cluster did not elect this manager".into()))?
        .map_err(|_| ServerError::Raft("raft stopped".into()))?;
    let made = ca::bootstrap(store, key, config)
        .await
        .map_err(|e| ServerError::Config(format!("creating the cluster: {e}")))?;
    info!(node.id = %made.node_id, "new cluster created: root CA, join tokens, manager and admin certificates");
    let new = NewCluster {
        worker_token: made.worker_token.to_string(),
        manager_token: made.manager_token.to_string(),
        admin_dir: config.admin_dir(),
    };
    Ok((made.credentials, Some(new)))
}

fn seal_err(e: crate::seal::SealError) -> ServerError {
    ServerError::Config(e.to_string())
}

fn control_server(control: ControlService) -> ControlServer<ControlService> {
    ControlServer::new(control)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES)
}

fn watch_server(watch: WatchService) -> WatchServer<WatchService> {
    WatchServer::new(watch)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES)
}

fn prepare_data_dir(config: &ManagerConfig) -> Result<(), ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ServerError::Io(format!("data-dir {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ServerError::Io(format!("data-dir {}: {e}", dir.display())))?;
    Ok(())
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
        refuse_unfinished_join(&config).unwrap();
        std::fs::create_dir_all(config.tls_dir()).unwrap();
        std::fs::write(config.tls_dir().join(tls::creds::CERT_FILE), "").unwrap();
        let err = refuse_unfinished_join(&config).unwrap_err().to_string();
        assert!(err.contains("--join"), "{err}");
        membership::store_raft_id(dir.path(), 4).unwrap();
        refuse_unfinished_join(&config).unwrap();
    }
}
