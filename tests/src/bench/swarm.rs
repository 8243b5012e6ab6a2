//! Docker itself, the anchor the figures are compared with: the `docker` CLI,
//! counting containers through the engine API, Swarm mode on the local engine
//! (entered for a run and left after it), and extra `dockerd` daemons, each with
//! its own data root, exec root, pidfile and socket, that make a multi-node
//! Swarm on one machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use tempfile::TempDir;

use super::figures::note;
use crate::wait::eventually;

/// Run the `docker` CLI (against `host`, or the default engine); its stdout.
pub async fn docker_cli(host: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("docker");
    if let Some(host) = host {
        cmd.args(["-H", host]);
    }
    let out = cmd
        .args(args)
        .output()
        .await
        .context("run the docker CLI")?;
    anyhow::ensure!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Containers that carry every one of `labels` (`key=value`): (running, all).
pub async fn count(docker: &Docker, labels: &[&str]) -> anyhow::Result<(usize, usize)> {
    let filters: HashMap<String, Vec<String>> = HashMap::from([(
        "label".to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
    )]);
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker.list_containers(Some(opts)).await?;
    let running = list
        .iter()
        .filter(|c| c.state.as_ref().is_some_and(|s| s.to_string() == "running"))
        .count();
    Ok((running, list.len()))
}

/// Wait until `want` containers with all of `labels` run (poll every 50 ms: the same
/// rate for shoal, Swarm and `docker run`, so the three are timed alike).
pub async fn wait_running(
    docker: &Docker,
    labels: &[&str],
    want: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually(
        &format!("{want} running containers with {labels:?}"),
        timeout,
        || async move {
            match count(docker, labels).await {
                Ok((running, _)) if running >= want => Ok(()),
                Ok((running, all)) => Err(format!("{running} running, {all} in all")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// Wait until no container with `labels` is left (running or not).
pub async fn wait_gone(docker: &Docker, labels: &[&str], timeout: Duration) -> anyhow::Result<()> {
    eventually(
        &format!("no container with {labels:?}"),
        timeout,
        || async move {
            match count(docker, labels).await {
                Ok((_, 0)) => Ok(()),
                Ok((running, all)) => Err(format!("{running} running, {all} in all")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// Remove every container with `label` (cleanup; errors are only reported).
pub fn remove_labelled(host: Option<&str>, label: &str) {
    let mut ps = Command::new("docker");
    if let Some(h) = host {
        ps.args(["-H", h]);
    }
    let Ok(out) = ps
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let mut rm = Command::new("docker");
        if let Some(h) = host {
            rm.args(["-H", h]);
        }
        let _ = rm.args(["rm", "-f", "-v"]).args(&ids).output();
    }
}

/// Swarm mode on the default engine for the length of a run: initialised if
/// the engine is not in a swarm yet, and left again when dropped (only then).
pub struct SwarmMode {
    joined_by_us: bool,
    /// Swarm creates `docker_gwbridge` on first use and leaving keeps it.
    had_gwbridge: bool,
}

impl SwarmMode {
    pub async fn enter() -> anyhow::Result<SwarmMode> {
        let state = docker_cli(None, &["info", "--format", "{{.Swarm.LocalNodeState}}"]).await?;
        if state == "active" {
            note("the engine is already in a swarm: using it, and leaving it as it is");
            return Ok(SwarmMode {
                joined_by_us: false,
                had_gwbridge: true,
            });
        }
        let had_gwbridge = docker_cli(None, &["network", "inspect", "docker_gwbridge"])
            .await
            .is_ok();
        docker_cli(None, &["swarm", "init", "--advertise-addr", "127.0.0.1"]).await?;
        Ok(SwarmMode {
            joined_by_us: true,
            had_gwbridge,
        })
    }
}

impl Drop for SwarmMode {
    fn drop(&mut self) {
        if self.joined_by_us {
            let _ = Command::new("docker")
                .args(["swarm", "leave", "--force"])
                .output();
            if !self.had_gwbridge {
                let _ = Command::new("docker")
                    .args(["network", "rm", "docker_gwbridge"])
                    .output();
            }
        }
    }
}

/// An extra `dockerd` with its own state, on its own socket, its own bridge
/// and no iptables rules, so that it cannot disturb the main engine.
///
/// It shares the host's network namespace, so `--bridge none` (the obvious
/// choice) is a trap: a daemon started with it deletes the host's `docker0`
/// interface at start-up, breaking the main engine's default network. Each
/// extra daemon gets a bridge of its own instead.
pub struct ExtraDaemon {
    pub name: String,
    pub host: String,
    bridge: String,
    dir: TempDir,
    child: Option<Child>,
}

impl ExtraDaemon {
    /// Start daemon number `index` (1..=250), wait until it answers, and load
    /// `image` into it from the main engine (no registry is reachable).
    pub async fn start(name: &str, index: u8, image: &str) -> anyhow::Result<ExtraDaemon> {
        let dir = TempDir::with_prefix("shoal-bench-dockerd-")?;
        // The main daemon.json names a data root: a config file of our own
        // keeps the flags from clashing with it.
        std::fs::write(dir.path().join("daemon.json"), "{}")?;
        let host = format!("unix://{}", dir.path().join("docker.sock").display());
        let bridge = format!("sbench{index}");
        create_bridge(&bridge, &format!("10.213.{index}.1/24"))?;
        let mut d = ExtraDaemon {
            name: name.into(),
            host,
            bridge,
            dir,
            child: None,
        };
        d.spawn()?;
        d.wait_answering().await?;
        let load = format!("docker save {image} | docker -H {} load -q", d.host);
        // Its "Loaded image" line must not land among the figures on stdout.
        let out = Command::new("sh").args(["-c", &load]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "loading {image} into {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(d)
    }

    fn path(&self, leaf: &str) -> PathBuf {
        self.dir.path().join(leaf)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(self.path("daemon.json"))
            .arg("--data-root")
            .arg(self.path("root"))
            .arg("--exec-root")
            .arg(self.path("exec"))
            .arg("--pidfile")
            .arg(self.path("dockerd.pid"))
            .args([
                "-H",
                &self.host,
                "--bridge",
                &self.bridge,
                "--iptables=false",
                "--ip-masq=false",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start dockerd")?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_answering(&self) -> anyhow::Result<()> {
        let host = self.host.clone();
        eventually(
            &format!("dockerd {} to answer", self.name),
            Duration::from_secs(60),
            || {
                let host = host.clone();
                async move {
                    docker_cli(Some(&host), &["version", "-f", "{{.Server.Version}}"])
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await
        .map(|_| ())
    }

    /// An engine API client for this daemon.
    pub async fn client(&self) -> anyhow::Result<Docker> {
        let socket = self.host.trim_start_matches("unix://");
        Ok(
            Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)?
                .negotiate_version()
                .await?,
        )
    }

    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        docker_cli(Some(&self.host), args).await
    }

    /// SIGKILL the daemon (its containers may live on in their shims).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_answering().await
    }

    /// Orderly teardown: leave the swarm, remove containers, stop the daemon,
    /// then end whatever a killed daemon left behind and unmount its layers.
    fn teardown(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("docker")
                .args(["-H", &self.host, "swarm", "leave", "--force"])
                .output();
            let rm = format!(
                "docker -H {0} ps -aq | xargs -r docker -H {0} rm -f -v",
                self.host
            );
            let _ = Command::new("sh").args(["-c", &rm]).output();
        }
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        kill_leftovers(self.dir.path());
        unmount_under(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

impl Drop for ExtraDaemon {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A bridge interface with an address, replacing any stale one of that name.
fn create_bridge(name: &str, cidr: &str) -> anyhow::Result<()> {
    let _ = Command::new("ip").args(["link", "del", name]).output();
    for args in [
        vec!["link", "add", name, "type", "bridge"],
        vec!["addr", "add", cidr, "dev", name],
        vec!["link", "set", name, "up"],
    ] {
        let out = Command::new("ip").args(&args).output().context("run ip")?;
        anyhow::ensure!(
            out.status.success(),
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Swarm on the extra daemons creates a `docker_gwbridge` interface in the
/// shared network namespace; this guard removes it again if it was not there
/// before and the main engine has no network of that name.
pub struct GwBridgeGuard {
    existed: bool,
}

impl GwBridgeGuard {
    pub fn observe() -> GwBridgeGuard {
        let existed = Command::new("ip")
            .args(["link", "show", "docker_gwbridge"])
            .output()
            .is_ok_and(|o| o.status.success());
        GwBridgeGuard { existed }
    }
}

impl Drop for GwBridgeGuard {
    fn drop(&mut self) {
        let main_uses_it = Command::new("docker")
            .args(["network", "inspect", "docker_gwbridge"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !self.existed && !main_uses_it {
            let _ = Command::new("ip")
                .args(["link", "del", "docker_gwbridge"])
                .output();
        }
    }
}

/// After a daemon was killed, its containerd and container shims keep running:
/// end every process whose command line names this daemon's directory, and
/// the containers' processes under the shims.
fn kill_leftovers(dir: &Path) {
    let needle = dir.to_string_lossy().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &pid.to_string()])
                .status();
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Lazily unmount the overlay layers and namespaces a daemon mounted, deepest
/// first, so that the temp dir can be removed.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.to_string_lossy().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}
