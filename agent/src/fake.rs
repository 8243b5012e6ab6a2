//! An in-memory [`Runtime`] for manager tests and hollow-node benchmarks: no
//! engine, tasks start at once, and tests drive crashes by hand.
//!
//! It must stay cheap at 100 000 tasks in one process: a container is a map entry
//! and a watch channel, and no call spawns anything. Its containers "write"
//! [`FAKE_LOG_LINES`] synthetic lines ([`fake_log_line`]; the last on stderr), so
//! `service logs` can be tested end to end on hollow nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use shoal_proto::{LogStream, PortConfig, PublishMode, Task};
use tokio::sync::watch;

use crate::runtime::{
    ContainerInfo, ContainerState, EngineInfo, Exit, LogLine, LogLines, LogOptions, Runtime,
    RuntimeError, TaskFiles,
};

/// Lines in the log of every fake container.
pub const FAKE_LOG_LINES: u64 = 3;

/// Line `n` (1-based) of the log of task `task_id`'s fake container. The last
/// line goes to stderr, the others to stdout.
pub fn fake_log_line(task_id: &str, n: u64) -> String {
    format!("fake log line {n} for task {task_id}")
}

/// Exit code of a container stopped by shoal (SIGTERM).
const STOPPED_EXIT_CODE: i64 = 143;

struct FakeContainer {
    id: String,
    node_id: String,
    state: ContainerState,
    /// When it was created (unix ns): the fake log's lines are stamped from it.
    created_ns: i64,
    /// `Some` once the current run ended; replaced by `None` on each start.
    exit: watch::Sender<Option<Exit>>,
}

#[derive(Default)]
struct FakeState {
    containers: HashMap<String, FakeContainer>,
    by_node: HashMap<String, HashSet<String>>,
    created: u64,
    next_port: u32,
    /// The secret and config files each task's container was given (only
    /// tasks that have some), until its removal.
    files: HashMap<String, TaskFiles>,
}

/// The in-memory runtime.
pub struct FakeRuntime {
    info: EngineInfo,
    // A std mutex: every critical section is a few map operations, never an await.
    state: Mutex<FakeState>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new(EngineInfo {
            hostname: "fake".into(),
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
            engine_version: "fake".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
        })
    }
}

impl FakeRuntime {
    /// A runtime that describes itself with `info`.
    pub fn new(info: EngineInfo) -> Self {
        FakeRuntime {
            info,
            state: Mutex::new(FakeState::default()),
        }
    }

    /// A runtime for a machine called `hostname` with these resources.
    pub fn with_resources(hostname: &str, nano_cpus: i64, memory_bytes: i64) -> Self {
        let mut info = Self::default().info;
        info.hostname = hostname.into();
        info.nano_cpus = nano_cpus;
        info.memory_bytes = memory_bytes;
        Self::new(info)
    }

    /// Test hook: the task's process exits with `code` (a crash when non-zero).
    pub fn exit(&self, task_id: &str, code: i64) {
        let mut state = self.lock();
        if let Some(c) = state.containers.get_mut(task_id)
            && c.state == ContainerState::Running
        {
            c.state = ContainerState::Exited(code);
            c.exit.send_replace(Some(Exit {
                exit_code: code,
                message: if code == 0 {
                    String::new()
                } else {
                    format!("task: non-zero exit ({code})")
                },
                unhealthy: false,
            }));
        }
    }

    /// Test hook: a container already on the node (as after an agent restart).
    pub fn insert(&self, node_id: &str, task_id: &str, container_state: ContainerState) -> String {
        let mut state = self.lock();
        let id = state.create(node_id, task_id);
        if let Some(c) = state.containers.get_mut(task_id) {
            c.state = container_state;
        }
        id
    }

    /// Ids of the tasks whose container is running, sorted.
    pub fn running(&self) -> Vec<String> {
        let state = self.lock();
        let mut ids: Vec<String> = state
            .containers
            .iter()
            .filter(|(_, c)| c.state == ContainerState::Running)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Number of containers, whatever their state.
    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }

    /// Number of containers ever created (a recreated task counts twice).
    pub fn created_count(&self) -> u64 {
        self.lock().created
    }

    /// The secret and config files the container of `task_id` was given.
    pub fn files_of(&self, task_id: &str) -> Option<TaskFiles> {
        self.lock().files.get(task_id).cloned()
    }

    /// The state of the task's container, if it has one.
    pub fn container_state(&self, task_id: &str) -> Option<ContainerState> {
        self.lock().containers.get(task_id).map(|c| c.state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Containers a runtime makes room for at its first: a hollow node of the
/// benchmark holds about a hundred, and each doubling of the maps from a
/// handful rehashed them into fresh memory, which this VM charges per page.
/// Buckets are only touched when filled, so the room costs little unused.
const FIRST_ROOM: usize = 128;

impl FakeState {
    fn create(&mut self, node_id: &str, task_id: &str) -> String {
        if let Some(c) = self.containers.get(task_id) {
            return c.id.clone();
        }
        if self.containers.capacity() == 0 {
            self.containers.reserve(FIRST_ROOM);
        }
        self.created += 1;
        let id = container_id(self.created);
        self.containers.insert(
            task_id.to_string(),
            FakeContainer {
                id: id.clone(),
                node_id: node_id.to_string(),
                state: ContainerState::Created,
                created_ns: shoal_proto::now_ms().saturating_mul(1_000_000),
                exit: watch::channel(None).0,
            },
        );
        match self.by_node.get_mut(node_id) {
            Some(tasks) => {
                tasks.insert(task_id.to_string());
            }
            None => {
                let mut tasks = HashSet::with_capacity(FIRST_ROOM);
                tasks.insert(task_id.to_string());
                self.by_node.insert(node_id.to_string(), tasks);
            }
        }
        id
    }
}

/// `fake` and the counter in 16 hex digits.
fn container_id(n: u64) -> String {
    let mut id = String::with_capacity(20);
    id.push_str("fake");
    for shift in (0..16).rev() {
        let digit = ((n >> (shift * 4)) & 0xf) as u32;
        id.push(char::from_digit(digit, 16).expect("a digit below 16"));
    }
    id
}

fn image(task: &Task) -> &str {
    task.spec.as_ref().map_or("", |s| s.image())
}

impl Runtime for FakeRuntime {
    async fn describe(&self) -> Result<EngineInfo, RuntimeError> {
        Ok(self.info.clone())
    }

    async fn list(&self, node_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let state = self.lock();
        let Some(tasks) = state.by_node.get(node_id) else {
            return Ok(Vec::new());
        };
        Ok(tasks
            .iter()
            .filter_map(|id| state.containers.get(id).map(|c| (id, c)))
            .map(|(id, c)| ContainerInfo {
                task_id: id.clone(),
                container_id: c.id.clone(),
                state: c.state,
            })
            .collect())
    }

    async fn prepare(&self, task: &Task, files: &TaskFiles) -> Result<String, RuntimeError> {
        let image = image(task);
        if image.starts_with("missing") {
            return Err(RuntimeError::ImageNotFound {
                image: image.to_string(),
                reason: "no such image in the fake runtime".into(),
            });
        }
        let mut state = self.lock();
        if !files.is_empty() {
            state.files.insert(task.id.clone(), files.clone());
        }
        Ok(state.create(&task.node_id, &task.id))
    }

    async fn start(&self, task: &Task) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let c = state
            .containers
            .get_mut(&task.id)
            .ok_or_else(|| RuntimeError::NotFound(task.id.clone()))?;
        if c.state != ContainerState::Running {
            c.state = ContainerState::Running;
            c.exit.send_replace(None);
        }
        Ok(())
    }

    async fn wait_running(&self, task: &Task) -> Result<(), Exit> {
        match self
            .lock()
            .containers
            .get(&task.id)
            .map(|c| (c.state, c.exit.borrow().clone()))
        {
            Some((ContainerState::Running, _)) => Ok(()),
            Some((_, Some(exit))) => Err(exit),
            _ => Err(gone(&task.id)),
        }
    }

    async fn wait_exit(&self, task: &Task) -> Exit {
        let rx = self
            .lock()
            .containers
            .get(&task.id)
            .map(|c| c.exit.subscribe());
        let Some(mut rx) = rx else {
            return gone(&task.id);
        };
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or_else(|| gone(&task.id)),
            Err(_) => gone(&task.id),
        }
    }

    async fn stop(&self, task: &Task, _grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        if let Some(c) = state.containers.get_mut(&task.id)
            && c.state == ContainerState::Running
        {
            c.state = ContainerState::Exited(STOPPED_EXIT_CODE);
            c.exit.send_replace(Some(Exit {
                exit_code: STOPPED_EXIT_CODE,
                message: "stopped".into(),
                unhealthy: false,
            }));
        }
        Ok(())
    }

    async fn remove(&self, task: &Task) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.files.remove(&task.id);
        if let Some(c) = state.containers.remove(&task.id)
            && let Some(tasks) = state.by_node.get_mut(&c.node_id)
        {
            tasks.remove(&task.id);
            if tasks.is_empty() {
                state.by_node.remove(&c.node_id);
            }
        }
        Ok(())
    }

    async fn ports(&self, task: &Task) -> Vec<PortConfig> {
        let mut state = self.lock();
        task.ports
            .iter()
            .filter(|p| p.publish_mode() == PublishMode::Host)
            .map(|p| {
                let mut p = *p;
                if p.published_port == 0 {
                    // Like the engine, pick a port from the ephemeral range.
                    p.published_port = 32768 + state.next_port % 28000;
                    state.next_port += 1;
                }
                p
            })
            .collect()
    }

    async fn logs(
        &self,
        node_id: &str,
        task_id: &str,
        options: LogOptions,
    ) -> Result<LogLines, RuntimeError> {
        let (created_ns, mut exit) = {
            let state = self.lock();
            match state.containers.get(task_id) {
                Some(c) if c.node_id == node_id => (c.created_ns, c.exit.subscribe()),
                _ => return Err(RuntimeError::NotFound(task_id.to_string())),
            }
        };
        let lines = futures::stream::iter(
            fake_log(task_id, created_ns, options.tail)
                .into_iter()
                .map(Ok),
        );
        if !options.follow {
            return Ok(lines.boxed());
        }
        // Like the engine: following ends when the container stops (or is removed).
        let until_stopped = futures::stream::once(async move {
            let _ = exit.wait_for(Option::is_some).await;
        })
        .filter_map(|()| async { None });
        Ok(lines.chain(until_stopped).boxed())
    }
}

/// The fake log of a container created at `created_ns`, honouring `tail`.
fn fake_log(task_id: &str, created_ns: i64, tail: Option<u64>) -> Vec<LogLine> {
    let first = match tail {
        Some(n) => FAKE_LOG_LINES.saturating_sub(n) + 1,
        None => 1,
    };
    (first..=FAKE_LOG_LINES)
        .map(|n| LogLine {
            stream: if n == FAKE_LOG_LINES {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            },
            timestamp_ns: created_ns + n as i64 * 1_000_000,
            data: fake_log_line(task_id, n).into_bytes(),
        })
        .collect()
}

/// The exit reported for a container that no longer exists.
fn gone(task_id: &str) -> Exit {
    Exit {
        exit_code: -1,
        message: format!("the container of task {task_id} is gone"),
        unhealthy: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_the_counter_in_sixteen_hex_digits() {
        for n in [0, 1, 0x1f, 0xdead_beef, u64::MAX] {
            assert_eq!(container_id(n), format!("fake{n:016x}"));
        }
    }

    #[test]
    fn containers_are_listed_per_node_and_forgotten_on_removal() {
        let fake = FakeRuntime::default();
        fake.insert("n1", "t1", ContainerState::Running);
        fake.insert("n1", "t2", ContainerState::Created);
        fake.insert("n2", "t3", ContainerState::Running);
        let listed = |node: &str| {
            let mut ids: Vec<String> = futures::executor::block_on(fake.list(node))
                .expect("listed")
                .into_iter()
                .map(|c| c.task_id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(listed("n1"), ["t1", "t2"]);
        assert_eq!(listed("n2"), ["t3"]);
        assert_eq!(fake.created_count(), 3);
        let task = Task {
            id: "t1".into(),
            node_id: "n1".into(),
            ..Default::default()
        };
        futures::executor::block_on(fake.remove(&task)).expect("removed");
        assert_eq!(listed("n1"), ["t2"]);
        assert_eq!(fake.container_count(), 2);
    }
}
