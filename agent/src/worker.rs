//! The worker: turns the manager's assignment set into one [`TaskController`] per
//! task, and removes what is no longer assigned.
//!
//! It lives as long as the agent, across sessions: a lost manager does not stop
//! any task. The first complete assignment set after the agent starts triggers
//! adoption: containers this node already runs are handed to the controllers of
//! their tasks (never recreated), and containers of tasks the manager no longer
//! wants are stopped and removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use shoal_proto::state::{from_i32, is_terminal};
use shoal_proto::{AssignmentsMessage, AssignmentsType, Task, TaskState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::controller::TaskController;
use crate::reporter::Reporter;
use crate::runtime::{ContainerInfo, Runtime, RuntimeError};
use crate::specs::Specs;
use crate::step::DEFAULT_STOP_GRACE;
use crate::vault::Vault;

/// Owns the task controllers of the node.
pub struct Worker<R> {
    runtime: Arc<R>,
    reporter: Arc<Reporter>,
    /// The latest version of each assigned task, watched by its controller,
    /// which shares it rather than holding a copy.
    controllers: HashMap<String, watch::Sender<Arc<Task>>>,
    adopted: bool,
    /// The secret and config values the node's tasks use, in memory only.
    vault: Vault,
    /// One copy of each service's task spec, shared by its tasks.
    specs: Specs,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl<R: Runtime> Worker<R> {
    /// A worker whose controllers end (leaving their containers alone) when
    /// `shutdown` is cancelled.
    pub fn new(runtime: Arc<R>, reporter: Arc<Reporter>, shutdown: CancellationToken) -> Self {
        Worker {
            runtime,
            reporter,
            controllers: HashMap::new(),
            adopted: false,
            vault: Vault::default(),
            specs: Specs::default(),
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// Number of tasks currently assigned.
    pub fn assigned(&self) -> usize {
        self.controllers.len()
    }

    /// Applies one message of the assignments stream. Fails only when adoption
    /// cannot list the node's containers; the caller retries with a new session.
    pub async fn apply(
        &mut self,
        node_id: &str,
        mut msg: AssignmentsMessage,
    ) -> Result<(), RuntimeError> {
        debug!(node.id = %node_id, sequence = msg.sequence, tasks = msg.tasks.len(),
            removed = msg.removed.len(), secrets = msg.secrets.len(), configs = msg.configs.len(),
            "assignments");
        self.reporter.stats().received_message();
        // Values first: the tasks of the same message use them.
        self.vault.absorb(&mut msg);
        match msg.r#type() {
            AssignmentsType::Complete => {
                let mut found = if self.adopted {
                    HashMap::new()
                } else {
                    self.adopt(node_id, &msg.tasks).await?
                };
                let assigned: HashMap<&str, ()> =
                    msg.tasks.iter().map(|t| (t.id.as_str(), ())).collect();
                let gone: Vec<String> = self
                    .controllers
                    .keys()
                    .filter(|id| !assigned.contains_key(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    self.unassign(&id);
                }
                for task in msg.tasks {
                    let container = found.remove(&task.id);
                    self.assign(task, container);
                }
            }
            AssignmentsType::Incremental => {
                for id in &msg.removed {
                    self.unassign(id);
                }
                for task in msg.tasks {
                    self.assign(task, None);
                }
            }
        }
        Ok(())
    }

    /// Ends every controller without touching the containers, and waits for them.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Finds the node's containers; returns those to adopt by task id, and
    /// stops and removes the others in the background.
    async fn adopt(
        &mut self,
        node_id: &str,
        tasks: &[Task],
    ) -> Result<HashMap<String, ContainerInfo>, RuntimeError> {
        let containers = self.runtime.list(node_id).await?;
        self.adopted = true;
        // Files of tasks without a container are leftovers; those of the
        // containers about to be removed go with them.
        let keep: HashSet<String> = containers.iter().map(|c| c.task_id.clone()).collect();
        self.runtime.sweep_files(node_id, &keep).await;
        let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut adopted = HashMap::new();
        for container in containers {
            match by_id.get(container.task_id.as_str()) {
                Some(task) if wanted(task) => {
                    info!(task.id = %container.task_id, service.name = %task.service_name,
                        container = %container.container_id, "adopting the task's container");
                    adopted.insert(container.task_id.clone(), container);
                }
                known => {
                    let task = known.map(|t| (*t).clone()).unwrap_or_else(|| Task {
                        id: container.task_id.clone(),
                        node_id: node_id.to_string(),
                        ..Default::default()
                    });
                    self.spawn_cleanup(task, container);
                }
            }
        }
        Ok(adopted)
    }

    fn spawn_cleanup(&self, task: Task, container: ContainerInfo) {
        let runtime = self.runtime.clone();
        let shutdown = self.shutdown.clone();
        info!(task.id = %task.id, container = %container.container_id,
            "removing a container of a task this node no longer runs");
        self.tracker.spawn(async move {
            let grace = crate::step::stop_grace(&task).min(DEFAULT_STOP_GRACE);
            let cleanup = async {
                runtime.stop(&task, grace).await?;
                runtime.remove(&task).await
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = cleanup => if let Err(e) = result {
                    warn!(task.id = %task.id, error = %e, "cannot remove a stale container");
                }
            }
        });
    }

    /// Starts a controller for a new task, or hands a changed one to its controller.
    fn assign(&mut self, mut task: Task, container: Option<ContainerInfo>) {
        if let Some(tx) = self.controllers.get(&task.id) {
            // Only the desired state changes in an assigned task; skip no-op
            // updates so a repeated full set does not wake every controller.
            if tx.borrow().desired_state != task.desired_state {
                self.specs.share(&mut task);
                tx.send_replace(Arc::new(task));
            }
            return;
        }
        self.specs.share(&mut task);
        let id = task.id.clone();
        let files = Arc::new(self.vault.files_for(&task));
        let (tx, rx) = watch::channel(Arc::new(task));
        let controller = TaskController::new(
            self.runtime.clone(),
            self.reporter.clone(),
            rx,
            container,
            self.shutdown.clone(),
        )
        .with_files(files);
        self.tracker.spawn(controller.run());
        self.controllers.insert(id, tx);
        self.reporter.stats().received_task();
    }

    /// The task is no longer assigned: its controller stops and removes it, then ends.
    fn unassign(&mut self, id: &str) {
        if let Some(tx) = self.controllers.remove(id) {
            tx.send_modify(|t| Arc::make_mut(t).desired_state = TaskState::Remove as i32);
        }
    }
}

/// A task whose container should keep existing and (if started) running.
fn wanted(task: &Task) -> bool {
    let reported = task.status.as_ref().map_or(TaskState::New, |s| s.state());
    from_i32(task.desired_state) <= TaskState::Running && !is_terminal(reported)
}

#[cfg(all(test, feature = "fake"))]
#[path = "worker_tests.rs"]
mod tests;
