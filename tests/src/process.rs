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
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::tls::{Credentials, SharedCredentials};
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

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
    /// Joined another manager's cluster: it has no admin certificate, so it
    /// is checked through its unix socket.
    joined: bool,
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
            joined: false,
        };
        m.spawn().await?;
        Ok(m)
    }

    /// [`ManagerProcess::start`] on the data dir `data_dir` the caller owns
    /// (a filesystem it mounted); its log goes beside it.
    pub async fn start_in(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<ManagerProcess> {
        let mut m = ManagerProcess {
            addr: free_addr(),
            data_dir: data_dir.to_path_buf(),
            _dir: None,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            joined: false,
        };
        m.spawn().await?;
        Ok(m)
    }

    /// Start a manager that joins `through`'s cluster with the manager token
    /// `token`, and wait until it has caught up (its unix socket shows the
    /// cluster object) and the leader has made it a voter. Later restarts
    /// keep the flags; the manager ignores `--join` once it has joined.
    pub async fn join(through: &ManagerProcess, token: &str) -> anyhow::Result<ManagerProcess> {
        let dir = TempDir::new()?;
        let mut m = ManagerProcess {
            addr: free_addr(),
            data_dir: dir.path().to_path_buf(),
            _dir: Some(dir),
            child: None,
            extra_args: vec![
                "--join".into(),
                through.addr.to_string(),
                "--token".into(),
                token.to_string(),
            ],
            joined: true,
        };
        m.spawn().await?;
        // It joined as a learner: wait until the leader has made it a voter.
        let addr = m.addr.to_string();
        eventually(
            "the joined manager to become a voter",
            Duration::from_secs(30),
            || async {
                let mut c = through.socket_control().await.map_err(|e| e.to_string())?;
                let nodes = c
                    .list_nodes(shoal_proto::ListNodesRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .nodes;
                let voter = nodes
                    .iter()
                    .filter_map(|n| n.manager_status.as_ref())
                    .any(|s| s.addr == addr && s.voter);
                if voter {
                    Ok(())
                } else {
                    Err("not a voter yet".to_string())
                }
            },
        )
        .await?;
        Ok(m)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        self.launch()?;
        self.wait_ready().await
    }

    /// Start the process without waiting for it to serve (its log is kept
    /// across restarts, appended to).
    pub fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))?;
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
            .env(shoal_manager::PARTITION_FILE_ENV, self.partition_file())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start shoal manager")?;
        self.child = Some(child);
        Ok(())
    }

    /// The file through which the test cuts this manager's Raft traffic.
    fn partition_file(&self) -> PathBuf {
        self.data_dir.with_extension("partition")
    }

    /// Drop this manager's Raft messages to and from the managers with these
    /// Raft ids (an empty list heals the partition).
    pub fn cut_off_from(&self, raft_ids: &[u64]) -> anyhow::Result<()> {
        self.set_raft_faults(raft_ids, Duration::ZERO)
    }

    /// Hold each batch of Raft messages this manager sends back by `delay`
    /// (zero: no delay), as a slow link would.
    pub fn slow_down(&self, delay: Duration) -> anyhow::Result<()> {
        self.set_raft_faults(&[], delay)
    }

    fn set_raft_faults(&self, cut_off_from: &[u64], delay: Duration) -> anyhow::Result<()> {
        let mut words: Vec<String> = cut_off_from.iter().map(u64::to_string).collect();
        if !delay.is_zero() {
            words.push(format!("delay={}", delay.as_millis()));
        }
        let tmp = self.partition_file().with_extension("partition.tmp");
        std::fs::write(&tmp, words.join(" "))?;
        std::fs::rename(&tmp, self.partition_file())?;
        Ok(())
    }

    /// Flags added to every later start (for example `--force-new-cluster`).
    pub fn add_args(&mut self, args: &[&str]) {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
    }

    /// The exit status, once the process has ended on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGSTOP the process (it holds its sockets but answers nothing).
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.child.as_ref().context("not running")?.id(), "STOP")
    }

    /// SIGCONT a paused process.
    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.child.as_ref().context("not running")?.id(), "CONT")
    }

    /// Wait until the manager answers over mutual TLS (with the admin
    /// certificate it wrote) and has created its cluster object (it leads).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        if self.joined {
            return eventually(
                "the manager to catch up",
                Duration::from_secs(30),
                || async {
                    let mut c = self.socket_control().await.map_err(|e| e.to_string())?;
                    has_cluster(&mut c).await
                },
            )
            .await;
        }
        wait_leading(self.addr, &self.admin_dir(), Duration::from_secs(30)).await
    }

    /// The admin client certificate the manager wrote (`SHOAL_CERT_PATH`).
    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir.join("admin")
    }

    /// A Control client over TCP with the admin certificate.
    pub async fn control(&self) -> anyhow::Result<ControlClient<Channel>> {
        control(self.addr, &self.admin_dir()).await
    }

    /// Where and how nodes join this manager's cluster (the worker token).
    pub async fn join_target(&self) -> anyhow::Result<JoinTarget> {
        Ok(JoinTarget {
            addr: self.addr,
            token: worker_token(&mut self.control().await?).await?,
        })
    }

    /// The manager's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL the process (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused process dies of SIGKILL too; CONT is for tidiness.
            let _ = signal(c.id(), "CONT");
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
            .env("SHOAL_CERT_PATH", self.admin_dir())
            .args(args)
            .output()
            .await
            .expect("run the shoal CLI")
    }

    /// A Control client on the unix control socket (the local administrator).
    pub async fn socket_control(&self) -> anyhow::Result<ControlClient<Channel>> {
        socket_control_at(&self.data_dir.join("shoal.sock")).await
    }

    /// The `--host` value for the unix control socket.
    pub fn socket_host(&self) -> String {
        format!("unix://{}", self.data_dir.join("shoal.sock").display())
    }
}

/// A Control client on the manager control socket at `path`.
pub async fn socket_control_at(path: &Path) -> anyhow::Result<ControlClient<Channel>> {
    let path = path.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(ControlClient::new(channel).max_decoding_message_size(256 * 1024 * 1024))
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A channel to the manager at `addr` over mutual TLS with the credentials
/// in `tls_dir` (the admin certificate, usually).
pub async fn channel(addr: SocketAddr, tls_dir: &Path) -> anyhow::Result<Channel> {
    let creds = Credentials::load(tls_dir)?
        .with_context(|| format!("no certificate in {} yet", tls_dir.display()))?;
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(2));
    Ok(client::connect(endpoint, ClientTls::Node(SharedCredentials::new(creds)?)).await?)
}

/// [`channel`], retried for up to `within`: a manager busy with thousands of
/// agents (the benchmark's join burst) can take longer than one connect
/// timeout to accept a connection and finish its handshake.
pub async fn channel_patiently(
    addr: SocketAddr,
    tls_dir: &Path,
    within: Duration,
) -> anyhow::Result<Channel> {
    crate::wait::eventually(&format!("a connection to {addr}"), within, || async {
        channel(addr, tls_dir).await.map_err(|e| format!("{e:#}"))
    })
    .await
}

/// A Control client over TCP with the credentials in `tls_dir`.
pub async fn control(addr: SocketAddr, tls_dir: &Path) -> anyhow::Result<ControlClient<Channel>> {
    Ok(ControlClient::new(channel(addr, tls_dir).await?)
        .max_decoding_message_size(256 * 1024 * 1024))
}

/// Wait until the manager at `addr` answers with the credentials in `tls_dir`
/// and has created its cluster object (it leads).
pub async fn wait_leading(
    addr: SocketAddr,
    tls_dir: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    eventually("the manager to lead", timeout, || async {
        let mut c = control(addr, tls_dir).await.map_err(|e| e.to_string())?;
        has_cluster(&mut c).await
    })
    .await
}

/// Ok once the manager behind `c` holds the cluster object.
async fn has_cluster(c: &mut ControlClient<Channel>) -> Result<(), String> {
    let info = c
        .get_cluster(shoal_proto::GetClusterRequest {})
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    info.cluster
        .map(|_| ())
        .ok_or_else(|| "no cluster object yet".to_string())
}

/// The node id an agent keeps in `data_dir/node_id`, once it has registered.
pub async fn wait_node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node_id");
    eventually("the agent to register", Duration::from_secs(30), || {
        let path = path.clone();
        async move {
            std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| "no node_id file yet".to_string())
        }
    })
    .await
}

/// The cluster's worker join token.
pub async fn worker_token(control: &mut ControlClient<Channel>) -> anyhow::Result<String> {
    Ok(control
        .get_join_token(shoal_proto::GetJoinTokenRequest {
            role: shoal_proto::NodeRole::Worker as i32,
            rotate: false,
        })
        .await?
        .into_inner()
        .token)
}

/// The cluster's manager join token.
pub async fn manager_token(control: &mut ControlClient<Channel>) -> anyhow::Result<String> {
    Ok(control
        .get_join_token(shoal_proto::GetJoinTokenRequest {
            role: shoal_proto::NodeRole::Manager as i32,
            rotate: false,
        })
        .await?
        .into_inner()
        .token)
}

/// What a node needs to join a cluster: a manager's address and a token.
#[derive(Debug, Clone)]
pub struct JoinTarget {
    pub addr: SocketAddr,
    pub token: String,
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
