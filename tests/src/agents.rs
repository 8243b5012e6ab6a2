//! Hollow agents: the real agent library (session, heartbeats, assignments,
//! status batches over real gRPC and mutual TLS, each joined with the cluster's
//! worker token) on the in-memory fake runtime, many per process.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_agent::fake::FakeRuntime;
use shoal_agent::{AgentConfig, AgentStats};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::process::JoinTarget;

/// One in-process agent on the fake runtime.
pub struct HollowAgent {
    pub name: String,
    pub runtime: Arc<FakeRuntime>,
    pub data_dir: TempDir,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
    managers: Vec<String>,
    token: String,
    labels: HashMap<String, String>,
    /// What the agent did: its own counters, or ones shared with other agents.
    stats: Arc<AgentStats>,
}

impl HollowAgent {
    /// Start an agent named `name` (its hostname) with 4 CPUs and 8 GiB.
    pub fn start(cluster: &JoinTarget, name: &str, labels: &[(&str, &str)]) -> HollowAgent {
        Self::start_with(cluster, name, labels, 4_000_000_000, 8 << 30)
    }

    /// Start an agent that counts into `stats`, which other agents may share.
    pub fn start_counted(cluster: &JoinTarget, name: &str, stats: Arc<AgentStats>) -> HollowAgent {
        Self::start_full(cluster, name, &[], 4_000_000_000, 8 << 30, stats)
    }

    /// Start an agent with the given capacity.
    pub fn start_with(
        cluster: &JoinTarget,
        name: &str,
        labels: &[(&str, &str)],
        nano_cpus: i64,
        memory_bytes: i64,
    ) -> HollowAgent {
        Self::start_full(
            cluster,
            name,
            labels,
            nano_cpus,
            memory_bytes,
            Arc::default(),
        )
    }

    fn start_full(
        cluster: &JoinTarget,
        name: &str,
        labels: &[(&str, &str)],
        nano_cpus: i64,
        memory_bytes: i64,
        stats: Arc<AgentStats>,
    ) -> HollowAgent {
        let mut agent = HollowAgent {
            name: name.to_string(),
            runtime: Arc::new(FakeRuntime::with_resources(name, nano_cpus, memory_bytes)),
            data_dir: TempDir::new().expect("agent data dir"),
            shutdown: CancellationToken::new(),
            handle: None,
            managers: vec![cluster.addr.to_string()],
            token: cluster.token.clone(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stats,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        self.shutdown = CancellationToken::new();
        let config = AgentConfig {
            managers: self.managers.clone(),
            node_name: Some(self.name.clone()),
            data_dir: self.data_dir.path().to_path_buf(),
            labels: self.labels.clone(),
            // Used on the first start; restarts reuse the certificate.
            join_token: Some(self.token.clone()),
        };
        let runtime = self.runtime.clone();
        let token = self.shutdown.clone();
        let name = self.name.clone();
        let stats = self.stats.clone();
        self.handle = Some(tokio::spawn(async move {
            if let Err(err) = shoal_agent::run_counted(config, runtime, token, stats).await {
                tracing::warn!(agent = %name, error = %err, "hollow agent stopped");
            }
        }));
    }

    /// Stop talking to the manager (like a crashed agent: no goodbye); the fake
    /// containers stay, as real ones would.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }

    /// Start again with the same node id and containers (an agent restart).
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The node id the manager gave this agent (once registered).
    pub fn node_id(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.path().join("node_id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }
}

impl Drop for HollowAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
