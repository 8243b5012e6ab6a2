//! The long-running commands: `shoal manager`, `shoal agent` and `shoal up`
//! (both in one process). They turn flags into the libraries' typed configs,
//! start the libraries' `run` functions under one root cancellation token, and
//! share one shutdown story: SIGINT/SIGTERM cancels the root token, then every
//! task gets [`GRACE`](crate::supervise::GRACE) to finish before it is abandoned.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_agent::AgentConfig;
use shoal_agent::docker::DockerRuntime;
use shoal_agent::fake::FakeRuntime;
use shoal_manager::ManagerConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::args::{AgentArgs, InitArgs, ManagerArgs, RuntimeArg, UpArgs};
use crate::connect::default_data_dir;
use crate::join_tokens;
use crate::supervise::{shutdown_on_signal, spawn, supervise};

/// How often the agent retries a Docker engine that is not running.
const ENGINE_RETRY: Duration = Duration::from_secs(2);

pub async fn manager(args: ManagerArgs) -> anyhow::Result<()> {
    let config = manager_config(&args)?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        listen_addr = %config.listen_addr,
        "starting manager"
    );
    let root = shutdown_on_signal();
    let join = match &args.join {
        // A manager that has joined ignores --join: it needs no token file.
        Some(_) if args.token.is_none() && has_joined_as_manager(&config)? => None,
        Some(addr) => match join_token(&args, &root).await? {
            Some(token) => Some(shoal_manager::JoinOptions {
                addr: addr.clone(),
                token,
            }),
            None => return Ok(()),
        },
        None => None,
    };
    let mut tasks = JoinSet::new();
    let (created, new_cluster) = tokio::sync::oneshot::channel();
    spawn(
        &mut tasks,
        "manager",
        run_manager(config, join, root.child_token(), move |ready| {
            if let Some(new) = ready.new_cluster {
                let _ = created.send(new);
            }
        }),
    );
    let export_dir = args.export_join_tokens.clone();
    let stop = root.child_token();
    spawn(&mut tasks, "new-cluster", async move {
        // Only a start that creates the cluster sends; otherwise the sender
        // is dropped once the manager serves.
        if let Ok(new) = new_cluster.await {
            match &export_dir {
                Some(dir) => export_new_cluster(dir, &new)?,
                None => print_new_cluster(&new),
            }
        }
        stop.cancelled().await;
        Ok(())
    });
    supervise(root, tasks).await
}

/// The manager join token of `--join`: `--token`, or `--token-file` (waited
/// for). `None` when shut down while waiting.
async fn join_token(
    args: &ManagerArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<String>> {
    match (&args.token, &args.token_file) {
        (Some(token), _) => Ok(Some(token.clone())),
        (None, Some(path)) => {
            let timeout = join_tokens::TOKEN_FILE_WAIT;
            join_tokens::wait_for_token("--token-file", path, timeout, shutdown).await
        }
        (None, None) => anyhow::bail!("--join: needs --token or --token-file"),
    }
}

/// Whether this manager's data dir has joined its cluster (it has a Raft id).
fn has_joined_as_manager(config: &ManagerConfig) -> anyhow::Result<bool> {
    let id = shoal_manager::joined_raft_id(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("--data-dir: {e}"))?;
    Ok(id.is_some())
}

/// `--export-join-tokens`: the tokens go to files, and only their paths to
/// stdout.
fn export_new_cluster(dir: &Path, new: &shoal_manager::NewCluster) -> anyhow::Result<()> {
    join_tokens::export(dir, &new.manager_token, &new.worker_token)?;
    let manager = dir.join(join_tokens::MANAGER_TOKEN_FILE);
    let worker = dir.join(join_tokens::WORKER_TOKEN_FILE);
    tracing::info!(
        manager_token = %manager.display(),
        worker_token = %worker.display(),
        "join tokens written"
    );
    println!(
        "Cluster initialized: this manager is its first member.\n\n\
         The join tokens are in {} and {} (mode 0600). Add a worker with:\n\n    \
         shoal agent --manager MANAGER_ADDR --token-file {}\n\n\
         and a manager with:\n\n    \
         shoal manager --join MANAGER_ADDR --token-file {} --data-dir DIR --listen-addr HOST:PORT\n",
        manager.display(),
        worker.display(),
        worker.display(),
        manager.display(),
    );
    Ok(())
}

/// `shoal init`: create the cluster, print how to grow it, exit.
pub async fn init(args: InitArgs) -> anyhow::Result<()> {
    let manager_args = ManagerArgs {
        data_dir: args.data_dir,
        listen_addr: "127.0.0.1:0".into(),
        advertise_addr: None,
        heartbeat_period: None,
        heartbeat_grace_multiplier: None,
        join: None,
        token: None,
        token_file: None,
        export_join_tokens: None,
        snapshot_interval: None,
        force_new_cluster: false,
        ca: args.ca,
    };
    let config = manager_config(&manager_args)?;
    let new = shoal_manager::init(config).await?;
    print_new_cluster(&new);
    Ok(())
}

/// What `shoal manager` and `shoal init` print when they create a cluster
/// (on stdout, never in the logs: the tokens are credentials).
fn print_new_cluster(new: &shoal_manager::NewCluster) {
    println!(
        "Cluster initialized: this manager is its first member.\n\n\
         To add a worker to this cluster, run the following command:\n\n    \
         shoal agent --manager MANAGER_ADDR --token {}\n\n\
         To add a manager, run on the new machine:\n\n    \
         shoal manager --join MANAGER_ADDR --token {} --data-dir DIR --listen-addr HOST:PORT\n\n\
         A remote CLI authenticates with the admin certificate in {}:\n\n    \
         SHOAL_CERT_PATH={} SHOAL_HOST=MANAGER_ADDR shoal node ls\n",
        new.worker_token,
        new.manager_token,
        new.admin_dir.display(),
        new.admin_dir.display(),
    );
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut config = AgentConfig {
        managers: args.managers.clone(),
        node_name: args.node_name.clone(),
        data_dir: args
            .data_dir
            .clone()
            .unwrap_or_else(|| default_data_dir().join("agent")),
        labels: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        join_token: args.token.clone(),
    };
    config.validate()?;
    let root = shutdown_on_signal();
    if let Some(path) = &args.token_file
        && !has_joined(&config.data_dir)
    {
        let wait =
            join_tokens::wait_for_token("--token-file", path, join_tokens::TOKEN_FILE_WAIT, &root);
        match wait.await? {
            Some(token) => config.join_token = Some(token),
            None => return Ok(()),
        }
    }
    let mut tasks = JoinSet::new();
    spawn(
        &mut tasks,
        "agent",
        run_agent(
            config,
            args.runtime,
            args.secrets_dir.clone(),
            root.child_token(),
        ),
    );
    supervise(root, tasks).await
}

/// Whether the agent with this data dir holds its node certificate (it
/// needs no join token then).
fn has_joined(data_dir: &Path) -> bool {
    shoal_agent::identity::tls_dir(data_dir)
        .join("cert.pem")
        .exists()
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let manager_args = ManagerArgs {
        data_dir: Some(data_dir.clone()),
        listen_addr: args.listen_addr.clone(),
        advertise_addr: None,
        heartbeat_period: None,
        heartbeat_grace_multiplier: None,
        join: None,
        token: None,
        token_file: None,
        export_join_tokens: None,
        snapshot_interval: None,
        force_new_cluster: false,
        ca: Default::default(),
    };
    let config = manager_config(&manager_args)?;
    let socket = config.control_socket();
    let mut agent_config = AgentConfig {
        managers: vec![dial_addr(config.listen_addr).to_string()],
        node_name: hostname(),
        data_dir: data_dir.join("agent"),
        labels: HashMap::new(),
        join_token: None,
    };
    agent_config.validate()?;
    let banner = format!(
        "shoal is up: manager on {}, control socket {}; try: shoal service create --name web --replicas 2 IMAGE",
        config.listen_addr,
        socket.display()
    );

    let root = shutdown_on_signal();
    let mut tasks = JoinSet::new();
    spawn(
        &mut tasks,
        "manager",
        run_manager(config, None, root.child_token(), |_| {}),
    );
    let agent_token = root.child_token();
    spawn(&mut tasks, "agent", async move {
        // Start the agent once the manager serves, so its first connection works.
        if !wait_for_socket(&socket, &agent_token).await {
            return Ok(());
        }
        // The agent joins its own cluster over TLS like any other node, with
        // the worker token the manager hands out on its control socket.
        if !shoal_agent::identity::tls_dir(&agent_config.data_dir)
            .join("cert.pem")
            .exists()
        {
            let host = format!("unix://{}", socket.display());
            let mut control = crate::connect::control(Some(&host)).await?;
            let token = control
                .get_join_token(shoal_proto::GetJoinTokenRequest {
                    role: shoal_proto::NodeRole::Worker as i32,
                    rotate: false,
                })
                .await?
                .into_inner()
                .token;
            agent_config.join_token = Some(token);
        }
        println!("{banner}");
        run_agent(agent_config, RuntimeArg::Docker, None, agent_token).await
    });
    supervise(root, tasks).await
}

/// Flags → [`ManagerConfig`], validated before anything is bound.
pub fn manager_config(args: &ManagerArgs) -> anyhow::Result<ManagerConfig> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut config = ManagerConfig::new(data_dir);
    config.listen_addr = listen_addr(&args.listen_addr)?;
    config.advertise_addr = args.advertise_addr.clone();
    if let Some(ms) = args.heartbeat_period {
        config.dispatcher.heartbeat_period = Duration::from_millis(ms.max(0) as u64);
    }
    if let Some(n) = args.heartbeat_grace_multiplier {
        config.dispatcher.grace_multiplier = n;
    }
    if let Some(n) = args.snapshot_interval {
        config.raft.snapshot_interval = n;
    }
    config.raft.force_new_cluster = args.force_new_cluster;
    if let Some(ms) = args.ca.cert_expiry {
        config.ca.cert_lifetime = Duration::from_millis(ms.max(0) as u64);
    }
    if let (Some(cert), Some(key)) = (&args.ca.ca_cert, &args.ca.ca_key) {
        let read = |flag: &str, path: &Path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("{flag}: cannot read {}", path.display()))
        };
        config.ca.external = Some((read("--ca-cert", cert)?, read("--ca-key", key)?));
    }
    config.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(config)
}

/// `HOST:PORT`, or a bare `PORT` on 127.0.0.1: listening on every interface
/// must be asked for explicitly (`0.0.0.0:PORT`).
pub fn listen_addr(value: &str) -> anyhow::Result<SocketAddr> {
    let value = value.trim();
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| format!("--listen-addr: {value:?} is not HOST:PORT or PORT"))
}

/// The address a local client dials to reach a listener (`0.0.0.0` → loopback).
fn dial_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if listen.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

async fn run_manager(
    config: ManagerConfig,
    join: Option<shoal_manager::JoinOptions>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(shoal_manager::Ready) + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let options = shoal_manager::Options::new(config)
        .join(join)
        .on_ready(on_ready);
    shoal_manager::run(options, shutdown).await?;
    Ok(())
}

async fn run_agent(
    config: AgentConfig,
    runtime: RuntimeArg,
    secrets_dir: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match runtime {
        RuntimeArg::Fake => {
            let name = config
                .node_name
                .clone()
                .or_else(hostname)
                .unwrap_or_else(|| "fake".into());
            let fake = FakeRuntime::with_resources(&name, 4_000_000_000, 8 << 30);
            shoal_agent::run(config, Arc::new(fake), shutdown).await?;
        }
        RuntimeArg::Docker => {
            let Some(mut docker) = connect_docker(&shutdown).await else {
                return Ok(());
            };
            if let Some(dir) = secrets_dir {
                docker = docker.with_files_dir(dir);
            }
            shoal_agent::run(config, Arc::new(docker), shutdown).await?;
        }
    }
    Ok(())
}

/// Connect to the Docker engine, waiting for it if it is not running yet;
/// `None` when shut down first.
async fn connect_docker(shutdown: &CancellationToken) -> Option<DockerRuntime> {
    let mut last_error = String::new();
    loop {
        match DockerRuntime::connect().await {
            Ok(runtime) => {
                if !last_error.is_empty() {
                    tracing::info!("connected to the Docker engine");
                }
                return Some(runtime);
            }
            Err(e) => {
                let message = e.to_string();
                if message != last_error {
                    tracing::error!(
                        error = %message,
                        "cannot reach the Docker engine; is it running? retrying every {}s",
                        ENGINE_RETRY.as_secs()
                    );
                    last_error = message;
                } else {
                    tracing::debug!(error = %message, "Docker engine still unreachable");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(ENGINE_RETRY) => {}
        }
    }
}

/// Wait until the manager has created its control socket; false on shutdown.
async fn wait_for_socket(socket: &Path, shutdown: &CancellationToken) -> bool {
    let mut warned = false;
    let started = tokio::time::Instant::now();
    loop {
        if socket.exists() {
            return true;
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            tracing::warn!(socket = %socket.display(), "the manager has not opened its control socket yet");
            warned = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            listen_addr("4281").unwrap(),
            "127.0.0.1:4281".parse().unwrap()
        );
        assert_eq!(
            listen_addr("0.0.0.0:4280").unwrap(),
            "0.0.0.0:4280".parse().unwrap()
        );
        assert_eq!(
            listen_addr("[::1]:4280").unwrap(),
            "[::1]:4280".parse().unwrap()
        );
        assert!(listen_addr("localhost:4280").unwrap().ip().is_loopback());
        let err = listen_addr("nope").unwrap_err().to_string();
        assert!(err.starts_with("--listen-addr"), "{err}");
        assert_eq!(
            dial_addr("0.0.0.0:1".parse().unwrap()),
            "127.0.0.1:1".parse().unwrap()
        );
    }

    #[test]
    fn manager_flags_become_a_config() {
        let args = ManagerArgs {
            data_dir: Some("/tmp/shoal-test".into()),
            listen_addr: "4290".into(),
            advertise_addr: Some("10.0.0.1:4290".into()),
            heartbeat_period: Some(200),
            heartbeat_grace_multiplier: Some(3),
            join: None,
            token: None,
            token_file: None,
            export_join_tokens: None,
            snapshot_interval: None,
            force_new_cluster: false,
            ca: Default::default(),
        };
        let config = manager_config(&args).unwrap();
        assert_eq!(config.listen_addr, "127.0.0.1:4290".parse().unwrap());
        assert_eq!(
            config.dispatcher.heartbeat_period,
            Duration::from_millis(200)
        );
        assert_eq!(config.dispatcher.grace_multiplier, 3);
        assert_eq!(
            config.control_socket(),
            Path::new("/tmp/shoal-test/shoal.sock")
        );

        let bad = ManagerArgs {
            heartbeat_period: Some(1),
            ..args
        };
        let err = manager_config(&bad).unwrap_err().to_string();
        assert!(err.contains("heartbeat-period"), "{err}");
    }
}
