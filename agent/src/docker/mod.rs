//! The Docker runtime: [`DockerRuntime`] implements [`Runtime`] on the local
//! Docker engine through bollard. The pure task → container translation lives in
//! [`spec`]; this module makes the calls and turns the engine's answers and errors
//! into shoal's ([`RuntimeError`], [`ContainerInfo`]); waiting for health and exit
//! is in `wait`, reading task logs in `logs`. Containers are addressed by their deterministic name
//! ([`translate::container_name`]) and recognised by their `shoal.task.id` label, so
//! every call is idempotent and survives an agent restart. Secret and config
//! files are written to a memory-backed directory on the host and bind-mounted
//! read-only (`files`).

pub mod files;
mod logs;
pub mod test_image;
pub mod translate;
mod wait;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerInspectResponse, ContainerSummaryStateEnum};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use shoal_proto::{PortConfig, Task};

use crate::runtime::{
    ContainerInfo, ContainerState, EngineInfo, Exit, LogLines, LogOptions, Runtime, RuntimeError,
    TaskFiles,
};
use translate::{LABEL_NODE_ID, LABEL_TASK_ID, container_name};

/// Time allowed for the engine to answer a request (streams: to start answering).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Margin added to the request timeout of a stop, which lasts as long as the
/// grace period plus the kill.
const STOP_TIMEOUT_MARGIN: Duration = Duration::from_secs(30);

/// A [`Runtime`] backed by the local Docker engine.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Where the engine is, for error messages.
    socket: String,
    /// Memory-backed root of the tasks' secret and config files.
    files_dir: PathBuf,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("socket", &self.socket)
            .field("files_dir", &self.files_dir)
            .finish()
    }
}

/// bollard's default socket (its constant is private).
const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";

/// The socket bollard's `connect_with_local_defaults` would use: `DOCKER_HOST` when it
/// is a `unix://` URL, else the standard one.
fn local_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| h.starts_with("unix://"))
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string())
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` when it is a `unix://` URL,
    /// else `/var/run/docker.sock`).
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        Self::connect_to(&local_socket()).await
    }

    /// Connects to the engine at a unix socket path, agrees on an API version
    /// (bollard speaks a newer API than many engines, e.g. 20.10's 1.41) and checks
    /// the engine answers `ping`.
    pub async fn connect_to(socket: &str) -> Result<DockerRuntime, RuntimeError> {
        let socket = socket.trim_start_matches("unix://").to_string();
        let unavailable = |e: &dyn std::fmt::Display| {
            RuntimeError::Unavailable(format!("the Docker engine is not running at {socket}: {e}"))
        };
        let docker =
            Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| unavailable(&e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unavailable(&e))?;
        docker.ping().await.map_err(|e| unavailable(&e))?;
        Ok(DockerRuntime {
            docker,
            socket,
            files_dir: PathBuf::from(files::DEFAULT_FILES_DIR),
        })
    }

    /// Keep the tasks' secret and config files under `dir` (default
    /// [`files::DEFAULT_FILES_DIR`]), which must be on a tmpfs.
    pub fn with_files_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.files_dir = dir.into();
        self
    }

    /// Write a task's files (blocking IO, off the async threads); returns
    /// their mounts.
    async fn write_files(
        &self,
        task: &Task,
        files: &TaskFiles,
    ) -> Result<Vec<bollard::models::Mount>, RuntimeError> {
        if files.files.is_empty() {
            return Ok(Vec::new());
        }
        let (root, node, id, owned) = (
            self.files_dir.clone(),
            task.node_id.clone(),
            task.id.clone(),
            files.clone(),
        );
        let dir = tokio::task::spawn_blocking(move || files::write(&root, &node, &id, &owned))
            .await
            .map_err(|e| RuntimeError::Other(format!("writing the task's files: {e}")))??;
        Ok(translate::file_mounts(files, &dir))
    }

    /// The bollard client, for callers (and tests) that need more than the trait.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Maps an engine error of any call: a lost engine is `Unavailable`, anything
    /// else keeps the engine's own words.
    fn error(&self, e: DockerError) -> RuntimeError {
        if is_unavailable(&e) {
            return RuntimeError::Unavailable(format!(
                "the Docker engine is not running at {}: {e}",
                self.socket
            ));
        }
        match e {
            DockerError::DockerResponseServerError { message, .. } => RuntimeError::Other(message),
            other => RuntimeError::Other(other.to_string()),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The image is present, or pulled now; otherwise `ImageNotFound` saying why.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(self.error(e)),
        }
        let reference = translate::pull_reference(image);
        tracing::info!(image = %reference, "image not present locally, pulling");
        let options = CreateImageOptionsBuilder::new()
            .from_image(&reference)
            .build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(item) = progress.next().await {
            match item {
                Ok(_) => {}
                Err(e) if is_unavailable(&e) => return Err(self.error(e)),
                Err(e) => {
                    return Err(RuntimeError::ImageNotFound {
                        image: image.to_string(),
                        reason: format!(
                            "not found locally and the pull failed: {}",
                            engine_message(&e)
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether an existing container named like the task is the task's own.
    fn check_owner(
        task: &Task,
        name: &str,
        existing: &ContainerInspectResponse,
    ) -> Result<String, RuntimeError> {
        let owner = existing
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(LABEL_TASK_ID));
        if owner.map(String::as_str) == Some(task.id.as_str()) {
            Ok(existing.id.clone().unwrap_or_default())
        } else {
            Err(RuntimeError::Invalid(format!(
                "a container named {name} already exists and does not belong to task {}",
                task.id
            )))
        }
    }
}

/// Errors that mean the engine could not be reached (as opposed to an answer).
fn is_unavailable(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::HyperLegacyError { .. }
            | DockerError::RequestTimeoutError
            | DockerError::SocketNotFoundError(_)
    )
}

/// The HTTP status of an engine answer.
fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own message, without bollard's "Docker responded with..." frame.
fn engine_message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

impl Runtime for DockerRuntime {
    async fn describe(&self) -> Result<EngineInfo, RuntimeError> {
        let info = self.docker.info().await.map_err(|e| self.error(e))?;
        Ok(EngineInfo {
            hostname: info.name.unwrap_or_default(),
            nano_cpus: info.ncpu.unwrap_or_default().saturating_mul(1_000_000_000),
            memory_bytes: info.mem_total.unwrap_or_default(),
            engine_version: info.server_version.unwrap_or_default(),
            os: info.os_type.unwrap_or_default(),
            arch: info.architecture.unwrap_or_default(),
        })
    }

    async fn list(&self, node_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE_ID}={node_id}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error(e))?;
        let mut out = Vec::with_capacity(summaries.len());
        for c in summaries {
            let (Some(container_id), Some(task_id)) = (
                c.id.clone(),
                c.labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_TASK_ID))
                    .cloned(),
            ) else {
                continue;
            };
            let state = match c.state {
                Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
                Some(
                    ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::PAUSED
                    | ContainerSummaryStateEnum::RESTARTING,
                ) => ContainerState::Running,
                _ => {
                    // The list has only a status line; inspect when it says nothing.
                    let code = match c
                        .status
                        .as_deref()
                        .and_then(translate::exit_code_from_status)
                    {
                        Some(code) => code,
                        None => self
                            .inspect(&container_id)
                            .await?
                            .and_then(|i| i.state?.exit_code)
                            .unwrap_or_default(),
                    };
                    ContainerState::Exited(code)
                }
            };
            out.push(ContainerInfo {
                task_id,
                container_id,
                state,
            });
        }
        Ok(out)
    }

    async fn prepare(&self, task: &Task, files: &TaskFiles) -> Result<String, RuntimeError> {
        let name = container_name(task);
        // Written even for an existing container: a reboot empties the tmpfs.
        let file_mounts = self.write_files(task, files).await?;
        if let Some(existing) = self.inspect(&name).await? {
            return Self::check_owner(task, &name, &existing);
        }
        let mut config = translate::container_config(task, &task.node_id);
        translate::add_mounts(&mut config, file_mounts);
        let image = config.image.clone().unwrap_or_default();
        if image.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "task {} has no image: container.image is empty",
                task.id
            )));
        }
        self.ensure_image(&image).await?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        match self.docker.create_container(Some(options), config).await {
            Ok(created) => {
                tracing::info!(task.id = %task.id, service.name = %task.service_name, container.id = %created.id, "container created");
                Ok(created.id)
            }
            // Created meanwhile (a concurrent prepare): reuse it if it is ours.
            Err(e) if status(&e) == Some(409) => match self.inspect(&name).await? {
                Some(existing) => Self::check_owner(task, &name, &existing),
                None => Err(RuntimeError::Invalid(engine_message(&e))),
            },
            // The image vanished between the check and the create.
            Err(e) if status(&e) == Some(404) => Err(RuntimeError::ImageNotFound {
                image,
                reason: engine_message(&e),
            }),
            Err(e) if status(&e) == Some(400) => Err(RuntimeError::Invalid(engine_message(&e))),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn start(&self, task: &Task) -> Result<(), RuntimeError> {
        let name = container_name(task);
        // A started container answers 304, which bollard reports as success.
        match self.docker.start_container(&name, None).await {
            Ok(()) => {
                tracing::info!(task.id = %task.id, service.name = %task.service_name, "container started");
                Ok(())
            }
            Err(e) if status(&e) == Some(404) => Err(RuntimeError::NotFound(task.id.clone())),
            // Everything the engine refuses at start is about the configuration:
            // a host port already bound, a mount that cannot be made...
            Err(e) if status(&e).is_some() => Err(RuntimeError::Invalid(engine_message(&e))),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn wait_running(&self, task: &Task) -> Result<(), Exit> {
        wait::wait_running(self, task).await
    }

    async fn wait_exit(&self, task: &Task) -> Exit {
        wait::wait_exit(self, task).await
    }

    async fn stop(&self, task: &Task, grace: Duration) -> Result<(), RuntimeError> {
        let name = container_name(task);
        let secs = i32::try_from(grace.as_millis().div_ceil(1000)).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::new().t(secs).build();
        // The call lasts as long as the grace period: widen the request timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + STOP_TIMEOUT_MARGIN);
        match docker.stop_container(&name, Some(options)).await {
            // 304 (not running) is reported as success by bollard.
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn remove(&self, task: &Task) -> Result<(), RuntimeError> {
        let name = container_name(task);
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(&name, Some(options)).await {
            Ok(()) => {
                tracing::info!(task.id = %task.id, service.name = %task.service_name, "container removed");
            }
            Err(e) if status(&e) == Some(404) => {}
            // Another remove of the same container is under way.
            Err(e)
                if status(&e) == Some(409)
                    && engine_message(&e).contains("already in progress") => {}
            Err(e) => return Err(self.error(e)),
        }
        // The container is gone: so go its secret and config files.
        let (root, node, id) = (
            self.files_dir.clone(),
            task.node_id.clone(),
            task.id.clone(),
        );
        tokio::task::spawn_blocking(move || files::remove(&root, &node, &id))
            .await
            .map_err(|e| RuntimeError::Other(format!("removing the task's files: {e}")))?
    }

    async fn sweep_files(&self, node_id: &str, keep: &HashSet<String>) {
        let (root, node, keep) = (self.files_dir.clone(), node_id.to_string(), keep.clone());
        let swept = tokio::task::spawn_blocking(move || files::sweep(&root, &node, &keep))
            .await
            .unwrap_or_default();
        if !swept.is_empty() {
            tracing::info!(node.id = %node_id, tasks = swept.len(),
                "removed the secret and config files of tasks this node no longer runs");
        }
    }

    async fn ports(&self, task: &Task) -> Vec<PortConfig> {
        if task.ports.is_empty() {
            return Vec::new();
        }
        match self.inspect(&container_name(task)).await {
            Ok(Some(c)) => match c.network_settings.and_then(|n| n.ports) {
                Some(bound) => translate::published_ports(&task.ports, &bound),
                None => Vec::new(),
            },
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(task.id = %task.id, error = %e, "cannot read the published ports");
                Vec::new()
            }
        }
    }

    async fn logs(
        &self,
        node_id: &str,
        task_id: &str,
        options: LogOptions,
    ) -> Result<LogLines, RuntimeError> {
        logs::logs(self, node_id, task_id, options).await
    }
}

#[cfg(test)]
mod tests;
