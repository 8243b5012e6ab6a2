//! One `shoal manager` and two `shoal agent` processes (different node names,
//! one engine) for the Docker end-to-end scenarios, checked through the
//! engine's own API. Dropping it stops the processes, then removes their
//! containers, pass or fail.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::{self, AgentProcess, Cleanup};
use crate::process::ManagerProcess;
use crate::wait::eventually;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Cluster {
    // Field order is drop order: processes stop before the cleanup runs.
    pub manager: ManagerProcess,
    pub agents: Vec<AgentProcess>,
    pub engine: bollard::Docker,
    _cleanup: Cleanup,
}

impl Cluster {
    pub async fn start() -> Cluster {
        crate::init();
        docker::ensure_images();
        let manager = ManagerProcess::start(&[]).await.unwrap();
        let cleanup = Cleanup::default();
        let cluster = manager.join_target().await.unwrap();
        let mut agents = Vec::new();
        for name in ["dock-a", "dock-b"] {
            let agent = AgentProcess::start(&cluster, name).unwrap();
            cleanup.watch_node(&agent.node_id().await.unwrap());
            agents.push(agent);
        }
        let c = Cluster {
            manager,
            agents,
            engine: docker::engine().await,
            _cleanup: cleanup,
        };
        c.wait_ready_nodes(2).await;
        c
    }

    pub async fn wait_ready_nodes(&self, n: usize) {
        eventually(&format!("{n} ready nodes"), WAIT, || async {
            let ready = self
                .json(&["node", "ls"])
                .await
                .iter()
                .filter(|x| x["status"] == "ready" && x["role"] == "worker")
                .count();
            if ready == n {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            }
        })
        .await
        .unwrap();
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.manager.cli(args).await;
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub async fn fails(&self, args: &[&str]) -> String {
        let out = self.manager.cli(args).await;
        assert!(!out.status.success(), "shoal {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    pub async fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = args.to_vec();
        full.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&full).await).unwrap()
    }

    pub fn logs(&self) -> String {
        let mut s = format!("manager log (tail):\n{}", tail(&self.manager.log()));
        for a in &self.agents {
            s += &format!("\nagent {} log (tail):\n{}", a.name, tail(&a.log()));
        }
        s
    }

    /// Wait until exactly `n` containers of `service` run, and shoal agrees.
    pub async fn wait_running(&self, service: &str, n: usize) -> Vec<docker::Container> {
        let r = eventually(
            &format!("{n} running containers of {service}"),
            WAIT,
            || async {
                let running = docker::running(&self.engine, service)
                    .await
                    .map_err(|e| e.to_string())?;
                let live = self
                    .json(&["service", "ps", service])
                    .await
                    .iter()
                    .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
                    .count();
                if running.len() == n && live == n {
                    Ok(running)
                } else {
                    Err(format!("{} containers, {live} tasks", running.len()))
                }
            },
        )
        .await;
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// All containers of a service, in any state.
    pub async fn all(&self, service: &str) -> Vec<docker::Container> {
        docker::containers(&self.engine, "shoal.service.name", service)
            .await
            .unwrap()
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

pub async fn http_get(port: u16) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}
