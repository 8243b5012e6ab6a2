//! Real `shoal` processes: the binary is built once per test run with cargo, each
//! daemon gets its own temp data dir and loopback port, and is killed when its
//! handle drops (even when the test fails).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use shoal_proto::control_client::ControlClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::wait::eventually;

/// Path of the `shoal` binary, built on first use (cargo makes it a no-op when fresh).
pub fn shoal_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-q", "-p", "shoal-cli", "--bin", "shoal"])
            .current_dir(&root);
        // The test process carries the CARGO_* variables cargo set for *this*
        // crate; passed on, they change rustc's environment and make cargo
        // rebuild the whole workspace on every call.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().to_string();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
                build.env_remove(key);
            }
        }
        let status = build
            .status()
            .expect("run cargo build for the shoal binary");
        assert!(status.success(), "building the shoal binary failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        target.join("debug").join("shoal")
    })
    .clone()
}

/// A free loopback port (bound and released: a tiny race, fine for tests).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap()
}

/// A `shoal manager` process.
pub struct ManagerProcess {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _dir: Option<TempDir>,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl ManagerProcess {
    /// Start a manager on a fresh data dir and wait until it leads.
    pub async fn start(extra_args: &[&str]) -> anyhow::Result<ManagerProcess> {
        let dir = TempDir::new()?;
        let mut m = ManagerProcess {
            addr: free_addr(),
            data_dir: dir.path().to_path_buf(),
            _dir: Some(dir),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        m.spawn().await?;
        Ok(m)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.data_dir.with_extension("log"))?;
        let child = Command::new(shoal_bin())
            .arg("manager")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-addr")
            .arg(self.addr.to_string())
            .args(&self.extra_args)
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start shoal manager")?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Wait until the manager answers and has created its cluster object (it leads).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let addr = self.addr;
        eventually(
            "the manager to lead",
            Duration::from_secs(30),
            || async move {
                let mut c = control(addr).await.map_err(|e| e.to_string())?;
                let info = c
                    .get_cluster(shoal_proto::GetClusterRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                info.cluster
                    .map(|_| ())
                    .ok_or_else(|| "no cluster object yet".to_string())
            },
        )
        .await
    }

    /// The manager's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL the process (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the process and wait for it to exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("manager not running")?;
        signal(c.id(), "TERM")?;
        Ok(c.wait()?)
    }

    /// Start the process again on the same data dir and address.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Run a CLI command against this manager; returns the raw output. Async, so
    /// that in-process agents keep heartbeating while a command waits.
    pub async fn cli(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(shoal_bin())
            .arg("--host")
            .arg(self.addr.to_string())
            .args(args)
            .output()
            .await
            .expect("run the shoal CLI")
    }

    /// The `--host` value for the unix control socket.
    pub fn socket_host(&self) -> String {
        format!("unix://{}", self.data_dir.join("shoal.sock").display())
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Control client over TCP.
pub async fn control(addr: SocketAddr) -> anyhow::Result<ControlClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(ControlClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

/// Send a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}
