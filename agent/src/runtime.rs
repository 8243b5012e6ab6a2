//! The seam to the container engine: a narrow trait with a Docker implementation
//! (`crate::docker`, bollard) and an in-memory fake (`crate::fake`, feature
//! `fake`) for manager tests and hollow-node benchmarks.
//!
//! Every call names the task it is about; a runtime finds the task's container by
//! the `shoal.task.id` label or the name it gave it, so calls are idempotent and
//! survive an agent restart (adoption).

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use shoal_proto::{LogStream, PortConfig, Task};

/// What the engine says about the machine, sent when the agent registers.
#[derive(Debug, Clone, Default)]
pub struct EngineInfo {
    pub hostname: String,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub engine_version: String,
    pub os: String,
    pub arch: String,
}

/// Where a container of a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created (prepared) but not started.
    Created,
    Running,
    /// Exited with this code.
    Exited(i64),
}

/// A container the runtime holds for a task (found by its labels).
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub task_id: String,
    pub container_id: String,
    pub state: ContainerState,
}

/// How a started task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i64,
    /// Why, in words: "exit status 1", "unhealthy: <last probe output>", "killed".
    pub message: String,
    /// True when the health check, not the process, ended the task.
    pub unhealthy: bool,
}

/// What to read of a task's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Keep the stream open for new lines until the container stops.
    pub follow: bool,
    /// Only the last `n` lines written so far (None: all of them).
    pub tail: Option<u64>,
}

/// One line a container wrote, without its line end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    /// Unix nanoseconds as the engine recorded them (0 if unknown).
    pub timestamp_ns: i64,
    pub data: Vec<u8>,
}

/// A task's log lines, oldest first.
pub type LogLines = BoxStream<'static, Result<LogLine, RuntimeError>>;

/// Where a [`TaskFile`]'s value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Secret,
    Config,
}

impl FileKind {
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }
}

/// One file a task's container gets from a secret or a config.
#[derive(Clone)]
pub struct TaskFile {
    pub kind: FileKind,
    /// The secret's or config's id and name.
    pub id: String,
    pub name: String,
    /// Absolute path in the container (`/run/secrets/<target>` for a secret).
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// The value, shared with the agent's in-memory copy. Never logged.
    pub data: Arc<[u8]>,
}

impl fmt::Debug for TaskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFile")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("path", &self.path)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:#o}", self.mode))
            .field(
                "data",
                &format_args!("<redacted, {} bytes>", self.data.len()),
            )
            .finish()
    }
}

/// The secret and config files of one task, values included: what
/// [`Runtime::prepare`] mounts into the container. Held in memory only.
#[derive(Debug, Clone, Default)]
pub struct TaskFiles {
    pub files: Vec<TaskFile>,
    /// References whose value this node was not given ("secret db (id x)"):
    /// the task cannot be prepared.
    pub missing: Vec<String>,
}

impl TaskFiles {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.missing.is_empty()
    }

    /// Refuses a task whose files are not all available, naming them.
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.missing.is_empty() {
            return Ok(());
        }
        Err(RuntimeError::Invalid(format!(
            "{} not available on this node (removed, or not sent by the manager)",
            self.missing.join(", ")
        )))
    }
}

/// Failures a runtime reports. The message is shown to the user as the task's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present locally and cannot be pulled.
    #[error("image {image} is not available: {reason}")]
    ImageNotFound { image: String, reason: String },
    /// The engine refused the container's configuration (bad mount, port in use...).
    #[error("{0}")]
    Invalid(String),
    /// The engine cannot be reached.
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    /// No container exists for the task.
    #[error("no container for task {0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

/// The operations a task controller needs from a container engine.
///
/// All methods are idempotent: preparing a prepared task, stopping a stopped one
/// or removing a removed one succeeds.
pub trait Runtime: Send + Sync + 'static {
    /// The machine and engine, for node registration.
    fn describe(&self) -> impl Future<Output = Result<EngineInfo, RuntimeError>> + Send;

    /// Every container carrying the label `shoal.node.id=<node_id>`.
    fn list(
        &self,
        node_id: &str,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;

    /// Make the task ready to start: ensure its image, create its container
    /// with `files` (its secrets and configs) mounted. Returns the container's
    /// id (reported in the task status).
    fn prepare(
        &self,
        task: &Task,
        files: &TaskFiles,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Start the prepared container; returns once the engine has started it.
    fn start(&self, task: &Task) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Resolve once the task may be called RUNNING: at once without a health
    /// check, once healthy with one. An exit or an unhealthy verdict first is
    /// returned as `Err(exit)`.
    fn wait_running(&self, task: &Task) -> impl Future<Output = Result<(), Exit>> + Send;

    /// Resolve when the started task ends (process exit, kill outside shoal, or
    /// unhealthy).
    fn wait_exit(&self, task: &Task) -> impl Future<Output = Exit> + Send;

    /// Stop the container: its stop signal, then SIGKILL after `grace`.
    fn stop(
        &self,
        task: &Task,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Remove the container (and anonymous volumes), and the files it was given.
    fn remove(&self, task: &Task) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Remove the secret and config files a previous run of the agent left on
    /// node `node_id` for tasks other than `keep` (those with a container).
    fn sweep_files(
        &self,
        node_id: &str,
        keep: &HashSet<String>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (node_id, keep);
        async {}
    }

    /// Published ports as the engine bound them (host mode), for the task status.
    fn ports(&self, task: &Task) -> impl Future<Output = Vec<PortConfig>> + Send;

    /// The log of the container of task `task_id` on node `node_id` (the
    /// labels, not the assignment set, say which: the task may be long dead).
    /// `NotFound` when the node holds no container for the task. The stream
    /// borrows nothing, so it can outlive the call.
    fn logs(
        &self,
        node_id: &str,
        task_id: &str,
        options: LogOptions,
    ) -> impl Future<Output = Result<LogLines, RuntimeError>> + Send;
}
