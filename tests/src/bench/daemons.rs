//! Release-built `shoal` daemons for the benchmarks: the binary (built with
//! `cargo build --release` on first use; cargo makes that a no-op when fresh),
//! a manager process (founding a cluster or joining one, killed and restarted
//! at will) and Docker agent processes, each with a temp data dir and a log
//! file, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use shoal_proto::control_client::ControlClient;
use shoal_proto::{ListNodesRequest, NodeState};
use tempfile::TempDir;
use tonic::transport::Channel;

use super::figures::note;
use super::procfs::proc_mib;
use crate::process::{JoinTarget, control, free_addr, wait_leading, wait_node_id, worker_token};
use crate::wait::eventually;

/// Path of the release `shoal` binary, built once per run. Figures come from
/// release builds only: a debug manager is an order of magnitude slower.
/// `SHOAL_BENCH_BIN=/path/to/shoal` skips the build (e.g. to measure a binary
/// kept aside while the tree changes).
pub fn release_shoal_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    if let Some(bin) = std::env::var_os("SHOAL_BENCH_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.exists(),
            "SHOAL_BENCH_BIN: no file at {}",
            bin.display()
        );
        return Ok(BIN.get_or_init(|| bin).clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?
        .to_path_buf();
    note("building the release shoal binary (a no-op when it is fresh)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "shoal-cli",
            "--bin",
            "shoal",
        ])
        .current_dir(&root);
    // `cargo run` gives this process the CARGO_* variables of the tests crate;
    // passed on, they change rustc's environment and make cargo rebuild the
    // whole workspace instead of finding it fresh.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            build.env_remove(key);
        }
    }
    let status = build
        .status()
        .context("run cargo build --release for shoal")?;
    anyhow::ensure!(status.success(), "building the release shoal binary failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("release").join("shoal");
    anyhow::ensure!(bin.exists(), "no release binary at {}", bin.display());
    Ok(BIN.get_or_init(|| bin).clone())
}

/// Build the local test images if missing (tests/images/build-test-images.sh),
/// keeping the script's chatter off stdout, which holds only figures.
pub fn ensure_test_images() -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build-test-images.sh");
    let out = Command::new("sh")
        .arg(&script)
        .output()
        .context("run build-test-images.sh")?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    anyhow::ensure!(
        out.status.success(),
        "building the test images failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A `shoal manager` process on a loopback port with its sled store in a temp
/// dir. It can be killed and restarted on the same data dir and address (the
/// log file is appended to, so it keeps every life of the manager).
pub struct BenchManager {
    pub addr: SocketAddr,
    dir: TempDir,
    /// Client certificate the harness reaches it with over TCP: its own admin
    /// certificate for the founding manager; a copy of the founder's for one
    /// that joined (a joined manager writes none, and the CA is the same).
    admin: PathBuf,
    args: Vec<String>,
    log_filter: String,
    child: Option<Child>,
}

impl BenchManager {
    /// Start a manager with `extra_args` (e.g. `--heartbeat-period 2s`) logging
    /// at `log_filter`, and wait until it leads.
    pub async fn start(extra_args: &[&str], log_filter: &str) -> anyhow::Result<BenchManager> {
        let dir = TempDir::with_prefix("shoal-bench-manager-")?;
        let admin = dir.path().join("data").join("admin");
        let mut manager = BenchManager {
            addr: free_addr(),
            dir,
            admin,
            args: extra_args.iter().map(|a| a.to_string()).collect(),
            log_filter: log_filter.to_string(),
            child: None,
        };
        manager.spawn()?;
        manager.wait_has_cluster().await?;
        Ok(manager)
    }

    /// Start a manager that joins `through`'s cluster with the manager join
    /// token `token`, and wait until its own store holds the cluster object
    /// (it has caught up at least to its own join). Restarts keep the flags:
    /// the manager ignores `--join` once it has joined.
    pub async fn join(
        through: &BenchManager,
        token: &str,
        extra_args: &[&str],
        log_filter: &str,
    ) -> anyhow::Result<BenchManager> {
        let dir = TempDir::with_prefix("shoal-bench-manager-")?;
        let admin = dir.path().join("admin-client");
        copy_files(&through.admin, &admin)?;
        let mut args = vec![
            "--join".to_string(),
            through.addr.to_string(),
            "--token".to_string(),
            token.to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let mut manager = BenchManager {
            addr: free_addr(),
            dir,
            admin,
            args,
            log_filter: log_filter.to_string(),
            child: None,
        };
        manager.spawn()?;
        manager.wait_has_cluster().await?;
        Ok(manager)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("manager.log"))?;
        let child = Command::new(release_shoal_bin()?)
            .arg("manager")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-addr")
            .arg(self.addr.to_string())
            .args(&self.args)
            .env("SHOAL_LOG", log_filter(&self.log_filter))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start shoal manager")?;
        note(format!("manager pid={} on {}", child.id(), self.addr));
        self.child = Some(child);
        Ok(())
    }

    /// Wait until the manager answers over mutual TLS and its store holds the
    /// cluster object: the founder leads; a joined manager has caught up with
    /// its join; a restarted one has at least reopened its store.
    async fn wait_has_cluster(&self) -> anyhow::Result<()> {
        wait_leading(self.addr, &self.admin, Duration::from_secs(60))
            .await
            .with_context(|| self.log_tail())
    }

    /// SIGKILL (no clean shutdown) and reap the process; a no-op when it is
    /// not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Start the manager again on the same data dir, address and flags, and
    /// wait until it answers (not until it has caught up with the leader).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_has_cluster().await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory now, MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        proc_mib(self.pid()?, "VmRSS")
    }

    /// Peak resident memory since start, MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        proc_mib(self.pid()?, "VmHWM")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("manager.log")).unwrap_or_default()
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "manager {} log tail:\n{}",
            self.addr,
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// The client certificate the harness reaches this manager with (an
    /// admin certificate of the cluster).
    pub fn admin_dir(&self) -> PathBuf {
        self.admin.clone()
    }

    pub async fn control(&self) -> anyhow::Result<ControlClient<Channel>> {
        control(self.addr, &self.admin_dir()).await
    }

    /// The address and worker token nodes join with.
    pub async fn join_target(&self) -> anyhow::Result<JoinTarget> {
        Ok(JoinTarget {
            addr: self.addr,
            token: worker_token(&mut self.control().await?).await?,
        })
    }

    /// Wait until `count` nodes are READY; returns how long that took.
    pub async fn wait_ready_nodes(&self, count: usize, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.addr;
        let admin = self.admin_dir();
        eventually(&format!("{count} nodes to be READY"), timeout, || async {
            let mut c = control(addr, &admin).await.map_err(|e| e.to_string())?;
            let nodes = c
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .nodes;
            // Managers are listed as nodes too: count the agents only.
            let ready = nodes
                .iter()
                .filter(|n| n.manager_status.is_none())
                .filter(|n| {
                    // Agents only: `node ls` lists the managers too.
                    n.manager_status.is_none()
                        && n.status
                            .as_ref()
                            .is_some_and(|s| s.state() == NodeState::Ready)
                })
                .count();
            if ready >= count {
                Ok(())
            } else {
                // Polling thousands of nodes is not free: do it at a low rate.
                tokio::time::sleep(Duration::from_millis(450)).await;
                Err(format!(
                    "{ready} of {count} READY ({} registered)",
                    nodes.iter().filter(|n| n.manager_status.is_none()).count()
                ))
            }
        })
        .await
    }

    /// Run the release CLI against this manager, with the admin certificate
    /// TCP needs; fails with its stderr.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = tokio::process::Command::new(release_shoal_bin()?)
            .arg("--host")
            .arg(self.addr.to_string())
            .arg("--tls-dir")
            .arg(&self.admin)
            .args(args)
            .output()
            .await
            .context("run the shoal CLI")?;
        anyhow::ensure!(
            out.status.success(),
            "shoal {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Copy the files (not subdirectories) of `from` into a new directory `to`.
/// The managers' log filter: the scenario's, with `SHOAL_BENCH_LOG` appended
/// when set (say `shoal_manager::dispatcher=info` to see every session).
fn log_filter(scenario: &str) -> String {
    match std::env::var("SHOAL_BENCH_LOG") {
        Ok(extra) if !extra.is_empty() => format!("{scenario},{extra}"),
        _ => scenario.to_string(),
    }
}

fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

impl Drop for BenchManager {
    fn drop(&mut self) {
        self.kill();
        keep_log(&self.dir.path().join("manager.log"), self.addr);
    }
}

/// With `SHOAL_BENCH_KEEP_LOGS=DIR`, copy a manager's log to
/// `DIR/manager-PORT.log` before its temp dir goes (to read what happened in
/// a run after the fact, e.g. an election under load).
fn keep_log(log: &Path, addr: SocketAddr) {
    let Some(dir) = std::env::var_os("SHOAL_BENCH_KEEP_LOGS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let kept = dir.join(format!("manager-{}.log", addr.port()));
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::copy(log, &kept)) {
        Ok(_) => note(format!("manager log kept in {}", kept.display())),
        Err(e) => note(format!(
            "could not keep the manager log in {}: {e}",
            dir.display()
        )),
    }
}

/// A release `shoal agent` process on the local Docker engine.
pub struct BenchAgent {
    pub name: String,
    manager: SocketAddr,
    token: String,
    dir: TempDir,
    child: Option<Child>,
}

impl BenchAgent {
    pub fn start(cluster: &JoinTarget, name: &str) -> anyhow::Result<BenchAgent> {
        let mut agent = BenchAgent {
            name: name.to_string(),
            manager: cluster.addr,
            token: cluster.token.clone(),
            dir: TempDir::with_prefix("shoal-bench-agent-")?,
            child: None,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))?;
        let child = Command::new(release_shoal_bin()?)
            .args([
                "agent",
                "--manager",
                &self.manager.to_string(),
                "--node-name",
                &self.name,
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env("SHOAL_JOIN_TOKEN", &self.token)
            .env("SHOAL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start shoal agent")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node id the manager gave this agent, once it has registered.
    pub async fn node_id(&self) -> anyhow::Result<String> {
        wait_node_id(&self.dir.path().join("data")).await
    }

    /// SIGKILL: the containers stay behind, as after a crash.
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

impl Drop for BenchAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
