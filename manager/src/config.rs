//! Manager configuration: a typed struct with defaults and `validate()`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default TCP port of the manager's gRPC listener.
pub const DEFAULT_PORT: u16 = 4280;

/// Everything a manager needs to start.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// sled database, control socket (`shoal.sock`) and identity live here.
    pub data_dir: PathBuf,
    /// Address of the gRPC listener (dispatcher, control, raft).
    pub listen_addr: SocketAddr,
    /// Address other nodes use to reach this manager (defaults to `listen_addr`).
    pub advertise_addr: Option<String>,
    pub dispatcher: DispatcherConfig,
    pub orchestrator: OrchestratorConfig,
    pub raft: RaftConfig,
    pub ca: CaConfig,
}

/// Shortest node certificate lifetime. Anything under an hour is for tests
/// (renewal every few seconds).
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(10);

/// How a new cluster's CA is made. Read once, when the cluster is created.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// Lifetime of node certificates (Swarm's `--cert-expiry`, default 90 days).
    pub cert_lifetime: Duration,
    /// Use this root CA (certificate PEM, key PEM) instead of generating one.
    pub external: Option<(String, String)>,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            cert_lifetime: shoal_proto::tls::pki::DEFAULT_CERT_LIFETIME,
            external: None,
        }
    }
}

/// What a new leader adds to the grace period for agents to find it.
pub const FAILOVER_ALLOWANCE: Duration = Duration::from_secs(3);

/// How agents keep their sessions alive.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Period the agents are told to heartbeat on.
    pub heartbeat_period: Duration,
    /// A node that has not heartbeated for `heartbeat_period * grace_multiplier`
    /// is marked DOWN and its tasks are replaced elsewhere.
    pub grace_multiplier: u32,
}

impl DispatcherConfig {
    pub fn grace_period(&self) -> Duration {
        self.heartbeat_period * self.grace_multiplier
    }

    /// How long a new leader waits for the nodes the store believes READY
    /// to open a session before it marks them DOWN: the grace period plus
    /// [`FAILOVER_ALLOWANCE`], the time their agents need to notice the old
    /// leader is gone and find this one among the managers (each failed
    /// attempt costs them a backoff delay).
    pub fn reconnect_window(&self) -> Duration {
        self.grace_period() + FAILOVER_ALLOWANCE
    }
}

impl Default for DispatcherConfig {
    /// 500 ms × 3: a lost node is DOWN after 1.5 s. Three periods is Swarm's
    /// own multiplier (5 s × 3, ~20 s in practice): a blip of up to three
    /// missed heartbeats costs nothing. A closed session stream does not
    /// shorten the wait: an agent being restarted closes it too, and must not
    /// see its tasks rescheduled. A heartbeat is a few hundred bytes, so even
    /// a loaded 2-core machine keeps far inside a 1.5 s window.
    fn default() -> Self {
        DispatcherConfig {
            heartbeat_period: Duration::from_millis(500),
            grace_multiplier: 3,
        }
    }
}

/// Orchestration settings.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Dead tasks kept per slot (Swarm's `--task-history-limit`, default 5).
    pub task_history_limit: usize,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            task_history_limit: 5,
        }
    }
}

/// Raft timing and log settings.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Raft id of this manager (1 for the first manager of a cluster).
    pub id: u64,
    pub tick_interval: Duration,
    /// raft-rs draws each election timeout in [election_ticks, 2 ×
    /// election_ticks) ticks. 6 ticks of 100 ms (0.6–1.2 s) repair a
    /// leader's loss in ~0.7 s (p99 ~1.1 s) and, measured under the 3-manager
    /// scheduling benchmark on 2 busy cores, caused no spurious election
    /// (docs/BENCHMARKS.md, failover); 10 ticks gave p99 ~1.9 s.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log every this many applied entries.
    pub snapshot_interval: u64,
    /// Restart as the only voter of the group, keeping the state (recovery
    /// from the loss of a quorum of managers).
    pub force_new_cluster: bool,
}

impl RaftConfig {
    /// How long a read waits to confirm with a quorum that it sees every
    /// committed write: one election timeout, past which a manager cut off
    /// from the majority answers "no quorum" rather than hang.
    pub fn read_timeout(&self) -> Duration {
        self.tick_interval * self.election_ticks as u32
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            id: 1,
            tick_interval: Duration::from_millis(100),
            election_ticks: 6,
            heartbeat_ticks: 1,
            snapshot_interval: 10_000,
            force_new_cluster: false,
        }
    }
}

impl ManagerConfig {
    /// Defaults for a manager keeping its state in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ManagerConfig {
            data_dir: data_dir.into(),
            listen_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            advertise_addr: None,
            dispatcher: DispatcherConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            raft: RaftConfig::default(),
            ca: CaConfig::default(),
        }
    }

    /// This manager's certificate, key and the CA certificate.
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The admin client certificate for remote CLIs (`SHOAL_CERT_PATH`).
    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir.join("admin")
    }

    /// The unix socket of the local control API.
    pub fn control_socket(&self) -> PathBuf {
        self.data_dir.join("shoal.sock")
    }

    /// The settings a new cluster starts with, from its first manager's configuration.
    pub fn default_cluster_spec(&self) -> shoal_proto::ClusterSpec {
        shoal_proto::ClusterSpec {
            name: "default".into(),
            dispatcher: Some(shoal_proto::DispatcherConfig {
                heartbeat_period_ms: self.dispatcher.heartbeat_period.as_millis() as i64,
                heartbeat_grace_multiplier: self.dispatcher.grace_multiplier,
            }),
            orchestration: Some(shoal_proto::OrchestrationConfig {
                task_history_retention_limit: self.orchestrator.task_history_limit as u64,
            }),
        }
    }

    /// Check the values before anything is bound or written.
    pub fn validate(&self) -> Result<(), String> {
        if self.data_dir.as_os_str().is_empty() {
            return Err("data-dir: must not be empty".into());
        }
        if self.dispatcher.heartbeat_period < Duration::from_millis(50) {
            return Err("heartbeat-period: must be at least 50ms".into());
        }
        if self.dispatcher.grace_multiplier < 2 {
            return Err("heartbeat grace multiplier: must be at least 2".into());
        }
        if self.ca.cert_lifetime < MIN_CERT_LIFETIME {
            return Err(format!(
                "cert-expiry: must be at least {}s",
                MIN_CERT_LIFETIME.as_secs()
            ));
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return Err("raft: election ticks must exceed heartbeat ticks".into());
        }
        Ok(())
    }
}

/// Whether `addr` names a host others can connect to (not `0.0.0.0` or `[::]`).
pub fn reachable(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .map(|a| !a.ip().is_unspecified())
        .unwrap_or(true)
}
