//! The one way into a manager: [`run`] joins a cluster if asked
//! ([`crate::join`]), opens Raft and this manager's identity
//! ([`crate::ca::own_identity`]), then wires the services onto gRPC over mutual
//! TLS on TCP (control, watch, dispatcher, raft, CA) and the control API on the
//! unix socket `DATA_DIR/shoal.sock` (mode 0600, like docker.sock), and runs
//! until the shutdown token fires. [`init`] creates a cluster and stops.
//! Both listeners cap their connections below the open files limit, which
//! the manager raises to its hard limit first (`shoal_proto::tls::listener`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::ca_server::CaServer;
use shoal_proto::control_server::ControlServer;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::raft_server::RaftServer;
use shoal_proto::tls::{self, Credentials, SharedCredentials, TlsError};
use shoal_proto::watch_server::WatchServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::auth::Authorize;
use crate::ca::{self, CaError, CaService, NewCluster};
use crate::config::ManagerConfig;
use crate::control::{ControlService, ForwardWrites, Forwarder, WatchService};
use crate::dispatcher::Dispatcher;
use crate::join::{self, JoinError, JoinOptions};
use crate::leader;
use crate::raft::{self, GrpcTransport, Membership, RaftError, RaftService};
use crate::seal::{DataKey, SealError};

// Largest request the Control API decodes (a little above the largest valid
// write), the Dispatcher's (agents' status batches and logs), and the largest
// reply either sends (docs/LIMITS.md).
use shoal_proto::validate::{MAX_AGENT_REQUEST_BYTES, MAX_REPLY_BYTES, MAX_REQUEST_BYTES};

/// How long open streams get to finish after shutdown is requested.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// HTTP/2 pings from the server close a connection whose peer is gone: one
/// is sent after this long without a frame from the peer (agents send a
/// heartbeat every 500 ms, so their sessions are rarely pinged)...
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed if its answer does not come in this time,
/// generous for a peer whose runtime lags under load.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the manager could not run. The variants keep their cause: the CLI
/// prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("listen-addr {addr} (is another shoal manager running?)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data-dir {} already holds a cluster", .0.display())]
    AlreadyInitialized(PathBuf),
    #[error("this manager's TLS credentials")]
    Tls(#[from] TlsError),
    #[error("the cluster data key in the data dir")]
    DataKey(#[from] SealError),
    #[error("joining the cluster")]
    Join(#[from] JoinError),
    #[error("this manager's certificate")]
    Identity(#[from] CaError),
    #[error("starting raft")]
    Raft(#[from] RaftError),
    #[error("raft: the raft store failed ({0}); the manager stopped")]
    RaftFailed(String),
    #[error(
        "this manager was removed from the cluster (node demote or node rm); its data dir {} is no longer a member: delete it before joining again with a token",
        .0.display()
    )]
    Removed(PathBuf),
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

/// How a manager starts: its configuration, and optionally a listener bound
/// already, a cluster to join first, and whom to tell once it serves.
pub struct Options {
    config: ManagerConfig,
    listener: Option<TcpListener>,
    join: Option<JoinOptions>,
    on_ready: Option<Box<dyn FnOnce(Ready) + Send>>,
}

impl Options {
    /// Bind `config.listen_addr`, found a cluster in an empty data dir.
    pub fn new(config: ManagerConfig) -> Self {
        Options {
            config,
            listener: None,
            join: None,
            on_ready: None,
        }
    }

    /// Serve on `listener` instead of binding `listen_addr` (tests bind port 0).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// First join the cluster `join` names, unless this data dir has joined
    /// one already (`shoal manager --join ADDR --token T`).
    pub fn join(mut self, join: Option<JoinOptions>) -> Self {
        self.join = join;
        self
    }

    /// Call `on_ready` once the manager serves.
    pub fn on_ready(mut self, on_ready: impl FnOnce(Ready) + Send + 'static) -> Self {
        self.on_ready = Some(Box::new(on_ready));
        self
    }
}

/// Run a manager until `shutdown` is cancelled, Raft fails, or the cluster
/// removes it.
pub async fn run(options: Options, shutdown: CancellationToken) -> Result<(), ServerError> {
    let Options {
        config,
        listener,
        join,
        on_ready,
    } = options;
    config.validate().map_err(ServerError::Config)?;
    let listener = match listener {
        Some(listener) => listener,
        None => TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen_addr,
                source,
            })?,
    };
    prepare_data_dir(&config)?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: config.listen_addr,
            source,
        })?;
    let advertise = config
        .advertise_addr
        .clone()
        .unwrap_or_else(|| addr.to_string());
    let seeds = match &join {
        Some(opts) => join::as_manager(&config, opts, &advertise).await?,
        None => {
            join::refuse_unfinished(&config)?;
            Vec::new()
        }
    };
    let key = DataKey::load_or_create(&config.data_dir)?;
    let transport = GrpcTransport::new(shutdown.clone());
    transport.seed(&seeds);
    let (store, raft) = raft::start_with_transport(&config, Arc::new(transport.clone())).await?;
    transport.attach(store.clone(), raft.inbox());
    let raft_id = raft.status().id;
    let (creds, new_cluster) = match ca::own_identity(&config, &store, &key).await {
        Ok(found) => found,
        Err(e) => {
            raft.shutdown().await;
            return Err(e.into());
        }
    };
    let node_id = creds.identity()?.node_id;
    if let Ok(ca) = store.read(|s| ca::ClusterCa::open(s, &key))
        && let Err(e) = ca::refresh_admin(&ca, &config.admin_dir())
    {
        warn!(error = %e, "could not refresh the admin certificate");
    }
    let creds = SharedCredentials::new(creds)?;
    transport.set_credentials(creds.clone());
    let forwarder = Forwarder::new(store.clone(), creds.clone(), raft_id)
        .with_read_barrier(raft.inbox(), config.raft.read_timeout());
    let tls = tls::server::server_config(&creds)?;

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
    let socket_err = |source| ServerError::Io {
        what: "control socket",
        path: socket_path.clone(),
        source,
    };
    let unix = UnixListener::bind(&socket_path).map_err(socket_err)?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_err)?;

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
    let register = tokio::spawn(leader::register_while_leading(
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
    on_ready.unwrap_or_else(|| Box::new(|_| {}))(Ready {
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
        return Err(ServerError::RaftFailed(err));
    }
    Ok(())
}

/// Create a new cluster in an empty data dir and stop (`shoal init`).
pub async fn init(config: ManagerConfig) -> Result<NewCluster, ServerError> {
    config.validate().map_err(ServerError::Config)?;
    prepare_data_dir(&config)?;
    if Credentials::load(&config.tls_dir())?.is_some() {
        return Err(ServerError::AlreadyInitialized(config.data_dir.clone()));
    }
    let key = DataKey::load_or_create(&config.data_dir)?;
    let (store, raft) = raft::start(&config).await?;
    let result = ca::own_identity(&config, &store, &key).await;
    raft.shutdown().await;
    match result? {
        (_, Some(new)) => Ok(new),
        (_, None) => Err(ServerError::AlreadyInitialized(config.data_dir.clone())),
    }
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
    let dir_err = |source| ServerError::Io {
        what: "data-dir",
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    Ok(())
}
