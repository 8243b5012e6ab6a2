//! Real-Docker end-to-end support: `shoal agent` and `shoal up` processes on
//! the local engine, the engine's own view of shoal's containers (through
//! bollard, not through shoal), and a guard that removes every container a
//! test's nodes made, even when the test fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use bollard::Docker;
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder};
use tempfile::TempDir;

use crate::process::{JoinTarget, shoal_bin};

/// The locally built test images (see tests/images/build-test-images.sh).
pub const IMAGE: &str = "shoal-test/busybox:latest";
pub const IMAGE_V2: &str = "shoal-test/busybox:v2";

/// Build the test images if they are missing (idempotent).
pub fn ensure_images() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("images/build-test-images.sh");
    let status = Command::new("sh")
        .arg(script)
        .status()
        .expect("run build-test-images.sh");
    assert!(status.success(), "building the test images failed");
}

/// A connection to the local engine for checking what shoal did (the API
/// version is agreed with the engine: this one is older than bollard's default).
pub async fn engine() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("the Docker engine socket")
        .negotiate_version()
        .await
        .expect("the Docker engine answers")
}

/// [`engine`], or `None` when no engine answers and the test may be skipped
/// (it says so); with `SHOAL_REQUIRE_DOCKER=1` (as `make test` sets) a
/// missing engine fails the test instead.
pub async fn engine_or_skip() -> Option<Docker> {
    let answered = async {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok::<_, bollard::errors::Error>(docker)
    };
    match answered.await {
        Ok(docker) => Some(docker),
        Err(e) if std::env::var("SHOAL_REQUIRE_DOCKER").as_deref() != Ok("1") => {
            eprintln!("skipping Docker test: no engine answers ({e})");
            None
        }
        Err(e) => panic!("SHOAL_REQUIRE_DOCKER=1 but no Docker engine answers: {e}"),
    }
}

/// A shoal container as the engine reports it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: HashMap<String, String>,
}

/// Every container (running or not) whose label `key` equals `value`.
pub async fn containers(docker: &Docker, key: &str, value: &str) -> anyhow::Result<Vec<Container>> {
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker.list_containers(Some(opts)).await?;
    Ok(list
        .into_iter()
        .map(|c| Container {
            id: c.id.unwrap_or_default(),
            name: c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
        })
        .collect())
}

/// Running containers of a service.
pub async fn running(docker: &Docker, service: &str) -> anyhow::Result<Vec<Container>> {
    Ok(containers(docker, "shoal.service.name", service)
        .await?
        .into_iter()
        .filter(|c| c.state == "running")
        .collect())
}

/// Env and command of a container, from inspect.
pub async fn env_and_cmd(docker: &Docker, id: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    let config = info.config.unwrap_or_default();
    Ok((
        config.env.unwrap_or_default(),
        config.cmd.unwrap_or_default(),
    ))
}

/// When the engine last started a container (`State.StartedAt`): unchanged
/// as long as the container was not restarted.
pub async fn started_at(docker: &Docker, id: &str) -> anyhow::Result<String> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    info.state
        .and_then(|s| s.started_at)
        .with_context(|| format!("container {id} has no start time"))
}

/// Host ports the engine bound for a container's `port/tcp`.
pub async fn host_port(docker: &Docker, id: &str, port: u16) -> anyhow::Result<Option<u16>> {
    let info = docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await?;
    let ports = info
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default();
    Ok(ports
        .get(&format!("{port}/tcp"))
        .cloned()
        .flatten()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| b.host_port.and_then(|p| p.parse().ok()))
        .next())
}

/// A `shoal agent` process on the local Docker engine.
pub struct AgentProcess {
    pub name: String,
    pub data_dir: TempDir,
    manager: SocketAddr,
    token: String,
    child: Option<Child>,
}

impl AgentProcess {
    pub fn start(cluster: &JoinTarget, name: &str) -> anyhow::Result<AgentProcess> {
        let mut a = AgentProcess {
            name: name.to_string(),
            data_dir: TempDir::new()?,
            manager: cluster.addr,
            token: cluster.token.clone(),
            child: None,
        };
        a.spawn()?;
        Ok(a)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(shoal_bin())
            .args([
                "agent",
                "--manager",
                &self.manager.to_string(),
                "--node-name",
                &self.name,
            ])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            // The environment, not argv: `ps` shows argv to everyone.
            .env("SHOAL_JOIN_TOKEN", &self.token)
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start shoal agent")?;
        self.child = Some(child);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The node id the manager gave this agent, once it has registered.
    pub async fn node_id(&self) -> anyhow::Result<String> {
        crate::process::wait_node_id(self.data_dir.path()).await
    }

    /// SIGKILL the agent: its containers stay behind, as after a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `shoal up`: the quick start's one-node cluster, a manager and an agent on
/// the local engine in one process, on its own data dir and loopback port.
pub struct UpProcess {
    pub data_dir: TempDir,
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl UpProcess {
    pub fn start() -> anyhow::Result<UpProcess> {
        let mut up = UpProcess {
            data_dir: TempDir::new()?,
            addr: crate::process::free_addr(),
            child: None,
        };
        up.launch()?;
        Ok(up)
    }

    /// Start the process (again) on the same data dir and address; its log
    /// is appended to.
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let child = Command::new(shoal_bin())
            .arg("up")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(["--listen-addr", &self.addr.to_string()])
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start shoal up")?;
        self.child = Some(child);
        Ok(())
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.path().with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The `--host` value for the control socket.
    pub fn socket_host(&self) -> String {
        format!(
            "unix://{}",
            self.data_dir.path().join("shoal.sock").display()
        )
    }

    /// Run a CLI command on the control socket.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new(shoal_bin())
            .arg("--host")
            .arg(self.socket_host())
            .args(args)
            .output()
            .await
            .expect("run the shoal CLI")
    }

    /// The node id of its agent, once it has registered.
    pub async fn node_id(&self) -> anyhow::Result<String> {
        crate::process::wait_node_id(&self.data_dir.path().join("agent")).await
    }

    /// SIGKILL the process: manager and agent die at once, the containers
    /// stay behind.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Removes, on drop, every container labelled with one of the node ids it was
/// told about: a failing test leaves nothing running.
#[derive(Default)]
pub struct Cleanup {
    node_ids: std::sync::Mutex<Vec<String>>,
}

impl Cleanup {
    pub fn watch_node(&self, node_id: &str) {
        self.node_ids.lock().unwrap().push(node_id.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in self.node_ids.lock().unwrap().iter() {
            let out = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=shoal.node.id={node}"),
                ])
                .output();
            let Ok(out) = out else { continue };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", "-v"])
                    .args(&ids)
                    .output();
            }
        }
    }
}
