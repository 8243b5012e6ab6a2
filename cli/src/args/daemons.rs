//! Flags of the daemons (`shoal manager`, `agent`, `up`) and of the commands
//! that set a cluster up (`shoal init`, `join-token`).

use std::path::PathBuf;

use clap::{ArgGroup, Args, ValueEnum};

use super::values::{Quoting, choice, duration, label};
use crate::join_tokens::{export_dir_flag, path_flag};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("join_token").args(["token", "token_file"])))]
pub struct ManagerArgs {
    /// Where the manager keeps its state (default: $SHOAL_DATA_DIR, /var/lib/shoal
    /// for root, else ~/.local/share/shoal).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, HOST:PORT or a bare PORT (host 127.0.0.1).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4280")]
    pub listen_addr: String,
    /// Address other nodes use to reach this manager (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_addr: Option<String>,
    /// Period the agents heartbeat on (e.g. 500ms).
    #[arg(long, value_name = "DURATION", value_parser = Quoting(duration))]
    pub heartbeat_period: Option<i64>,
    /// A node missing heartbeats for period × this is marked down.
    #[arg(long, value_name = "N")]
    pub heartbeat_grace_multiplier: Option<u32>,
    /// Join the cluster of the manager at this address as a manager (with
    /// --token or --token-file; only on the first start, with an empty data
    /// directory).
    #[arg(long, value_name = "HOST:PORT", requires = "join_token")]
    pub join: Option<String>,
    /// The manager join token (`shoal join-token manager` on a manager prints it).
    #[arg(long, value_name = "TOKEN", requires = "join")]
    pub token: Option<String>,
    /// Read the manager join token from this file, waiting for it to appear
    /// (written by a first manager started with --export-join-tokens).
    #[arg(long, value_name = "PATH", requires = "join", value_parser = Quoting(path_flag))]
    pub token_file: Option<PathBuf>,
    /// When this start creates the cluster, write its join tokens to
    /// DIR/manager.token and DIR/worker.token (mode 0600) instead of printing
    /// them (for --token-file of the nodes that join).
    #[arg(long, value_name = "DIR", conflicts_with = "join", value_parser = Quoting(export_dir_flag))]
    pub export_join_tokens: Option<PathBuf>,
    /// Take a Raft snapshot and compact the log every N applied entries
    /// (default 10000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_interval: Option<u64>,
    /// Recover from the loss of a quorum: restart this manager as the only
    /// member of its Raft group, with all the state and its agents; the other
    /// managers are removed (join new ones afterwards).
    #[arg(long, conflicts_with = "join")]
    pub force_new_cluster: bool,
    #[command(flatten)]
    pub ca: CaArgs,
}

/// How a new cluster's CA is set up (used only when the cluster is created).
#[derive(Debug, Args, Default, Clone)]
pub struct CaArgs {
    /// Lifetime of node certificates (default 90 days; values under an hour are
    /// for tests).
    #[arg(long, value_name = "DURATION", value_parser = Quoting(duration))]
    pub cert_expiry: Option<i64>,
    /// Use this root CA certificate (PEM) instead of generating one; needs --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --ca-cert.
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where the manager will keep its state; must not hold a cluster yet.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub ca: CaArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Worker,
    Manager,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Which token.
    #[arg(value_parser = choice::<RoleArg>())]
    pub role: RoleArg,
    /// Replace the token with a new one; joined nodes are not affected.
    #[arg(long)]
    pub rotate: bool,
    /// Print the token only.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeArg {
    Docker,
    /// An in-memory engine: tasks "run" without containers (tests, benchmarks).
    Fake,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Manager address HOST:PORT (repeat for several managers).
    #[arg(long = "manager", value_name = "HOST:PORT", required = true)]
    pub managers: Vec<String>,
    /// Node name (default: the engine's hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Where the agent keeps its certificate and node id (default: the default
    /// data dir + /agent).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Node label KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = Quoting(label))]
    pub labels: Vec<(String, String)>,
    /// Join token (`shoal join-token worker` on a manager); needed on the
    /// first start only.
    #[arg(
        long,
        env = "SHOAL_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Read the join token from this file, waiting for it to appear, unless
    /// the agent has joined already (for a first manager started with
    /// --export-join-tokens: its worker.token).
    #[arg(long, value_name = "PATH", conflicts_with = "token", value_parser = Quoting(path_flag))]
    pub token_file: Option<PathBuf>,
    /// Container engine.
    #[arg(long, value_parser = choice::<RuntimeArg>(), default_value = "docker")]
    pub runtime: RuntimeArg,
    /// Memory-backed (tmpfs) directory where tasks' secrets and configs are
    /// written before they are mounted (default /dev/shm/shoal).
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the cluster keeps its state.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address, HOST:PORT or a bare PORT (host 127.0.0.1).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4280")]
    pub listen_addr: String,
}
