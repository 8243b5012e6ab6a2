//! Wires the manager onto its listeners: gRPC on TCP (control, watch,
//! dispatcher, raft) and the control API on the unix socket `DATA_DIR/shoal.sock`
//! (mode 0600, like docker.sock), then runs until the shutdown token fires.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use shoal_proto::control_server::ControlServer;
use shoal_proto::dispatcher_server::DispatcherServer;
use shoal_proto::raft_server::RaftServer;
use shoal_proto::watch_server::WatchServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::config::ManagerConfig;
use crate::control::{ControlService, WatchService};
use crate::dispatcher::Dispatcher;
use crate::leader;
use crate::raft::{self, RaftService};

/// Largest message the APIs accept or send: task lists of a large cluster
/// exceed gRPC's 4 MiB default.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// How long open streams get to finish after shutdown is requested.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Why the manager could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Bind `config.listen_addr` and run a manager until `shutdown` is cancelled.
pub async fn run(config: ManagerConfig, shutdown: CancellationToken) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    let listener = TcpListener::bind(config.listen_addr).await.map_err(|e| {
        ServerError::Io(format!(
            "listen-addr {}: {e} (is another shoal manager running?)",
            config.listen_addr
        ))
    })?;
    serve(config, listener, shutdown).await
}

/// Run a manager on an already bound listener (tests bind port 0).
pub async fn serve(
    config: ManagerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    config.validate().map_err(ServerError::Config)?;
    prepare_data_dir(&config)?;
    let (store, raft) = raft::start(&config)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io(e.to_string()))?;

    let dispatcher = Dispatcher::new(store.clone(), config.dispatcher.clone());
    let control =
        ControlService::new(store.clone(), Some(raft.clone())).with_dispatcher(dispatcher.clone());
    let watch = WatchService::new(store.clone(), shutdown.clone());

    let socket_path = config.control_socket();
    let _ = std::fs::remove_file(&socket_path);
    let unix = UnixListener::bind(&socket_path)
        .map_err(|e| ServerError::Io(format!("control socket {}: {e}", socket_path.display())))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ServerError::Io(format!("control socket {}: {e}", socket_path.display())))?;

    let tcp_server = Server::builder()
        .add_service(control_server(control.clone()))
        .add_service(watch_server(watch.clone()))
        .add_service(
            DispatcherServer::new(dispatcher.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            RaftServer::new(RaftService::new(raft.clone())).max_decoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    let unix_server = Server::builder()
        .add_service(control_server(control))
        .add_service(watch_server(watch))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(unix),
            shutdown.clone().cancelled_owned(),
        );

    let leader = tokio::spawn(leader::run(
        store.clone(),
        config.clone(),
        dispatcher,
        shutdown.clone(),
    ));
    info!(%addr, socket = %socket_path.display(), data_dir = %config.data_dir.display(), "manager listening");

    let tcp = tokio::spawn(tcp_server);
    let unix = tokio::spawn(unix_server);
    shutdown.cancelled().await;
    info!("manager shutting down");
    let _ = leader.await;
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
    Ok(())
}

fn control_server(control: ControlService) -> ControlServer<ControlService> {
    ControlServer::new(control)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

fn watch_server(watch: WatchService) -> WatchServer<WatchService> {
    WatchServer::new(watch).max_encoding_message_size(MAX_MESSAGE)
}

fn prepare_data_dir(config: &ManagerConfig) -> Result<(), ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| ServerError::Io(format!("data-dir {}: {e}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ServerError::Io(format!("data-dir {}: {e}", dir.display())))?;
    Ok(())
}
