//! A task controller: one tokio task per assigned task, driving it through the
//! engine one state at a time as [`crate::step::next_step`] decides, and
//! reporting each transition.
//!
//! The manager's changes (the desired state) arrive on a watch channel. Long
//! engine calls (pull, start, waiting for an exit) give way when the manager asks
//! for a stop. Agent shutdown ends the controller without touching the container:
//! tasks outlive an agent restart and are adopted by the next one.

use std::future::Future;
use std::sync::Arc;

use shoal_proto::state::{from_i32, name};
use shoal_proto::{ContainerStatus, PortConfig, PortStatus, Task, TaskState, TaskStatus};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::reporter::Reporter;
use crate::runtime::{ContainerInfo, Exit, Runtime, RuntimeError, TaskFiles};
use crate::step::{
    Resume, Step, exit_outcome, failure_state, next_step, resume, state_message, stop_grace,
};

/// How an interruptible engine call ended.
enum Outcome<T> {
    Done(T),
    /// The manager asked for a stop meanwhile.
    Interrupted,
    /// The agent is shutting down.
    Shutdown,
}

/// Drives one task. Built by the worker, consumed by [`TaskController::run`].
pub struct TaskController<R> {
    runtime: Arc<R>,
    reporter: Arc<Reporter>,
    /// Shared with the worker's channel, never copied: the controller sits
    /// in its future for the task's whole life, and each engine call takes
    /// the task along.
    task: Arc<Task>,
    observed: TaskState,
    /// The engine's container id: from adoption or from `prepare`.
    container_id: String,
    updates: watch::Receiver<Arc<Task>>,
    updates_open: bool,
    shutdown: CancellationToken,
    /// Where to pick the task up, and whether its container was adopted;
    /// consumed when the controller starts.
    resume: Option<(Resume, bool)>,
    /// The task's secret and config files, values included.
    files: Arc<TaskFiles>,
}

impl<R: Runtime> TaskController<R> {
    /// A controller for the task on `updates`, resuming from the state the
    /// manager recorded and the container found on the node, if any.
    pub fn new(
        runtime: Arc<R>,
        reporter: Arc<Reporter>,
        mut updates: watch::Receiver<Arc<Task>>,
        container: Option<ContainerInfo>,
        shutdown: CancellationToken,
    ) -> Self {
        let task = updates.borrow_and_update().clone();
        let reported = task.status.as_ref().map_or(TaskState::New, |s| s.state());
        let adopted = container.is_some();
        let resume = resume(reported, container.as_ref().map(|c| c.state));
        TaskController {
            runtime,
            reporter,
            observed: reported,
            container_id: container.map(|c| c.container_id).unwrap_or_default(),
            task,
            updates,
            updates_open: true,
            shutdown,
            resume: Some((resume, adopted)),
            files: Arc::default(),
        }
    }

    /// The secret and config files the task's container gets.
    pub fn with_files(mut self, files: Arc<TaskFiles>) -> Self {
        self.files = files;
        self
    }

    /// The state the controller has reached.
    pub fn observed(&self) -> TaskState {
        match self.resume {
            Some((Resume::From(state), _)) => state,
            _ => self.observed,
        }
    }

    /// Takes the task over where it stands: an adopted container's state is
    /// reported (the manager may have missed it while the agent was away).
    async fn resume(&mut self) {
        let Some((resume, adopted)) = self.resume.take() else {
            return;
        };
        let reported = self.observed;
        match resume {
            // ASSIGNED and below are the manager's to write.
            Resume::From(state)
                if state > TaskState::Assigned
                    && (state > reported || (adopted && state == reported)) =>
            {
                let ports = if state == TaskState::Running {
                    self.runtime.ports(&self.task).await
                } else {
                    Vec::new()
                };
                self.transition(state, String::new(), None, ports);
            }
            Resume::From(state) => self.observed = state,
            Resume::Exited(code) => {
                let exit = Exit {
                    exit_code: code,
                    message: String::new(),
                    unhealthy: false,
                };
                let (state, err) = exit_outcome(&exit);
                self.transition(state, err, Some(code), Vec::new());
            }
            Resume::Lost => self.transition(
                TaskState::Failed,
                "the task's container disappeared while the agent was away".into(),
                None,
                Vec::new(),
            ),
        }
    }

    /// Runs until the task is removed or the agent shuts down.
    ///
    /// Each engine call's future is boxed: held inline, the largest of them
    /// sized this future for its whole life (4.5 KiB per task with the fake
    /// runtime), while a task mostly waits in one small call.
    pub async fn run(mut self) {
        Box::pin(self.resume()).await;
        let mut retry = Backoff::default();
        loop {
            let desired = from_i32(self.task.desired_state);
            match next_step(desired, self.observed) {
                Step::Advance(to) => self.transition(to, String::new(), None, Vec::new()),
                Step::Prepare => {
                    let (runtime, task) = (self.runtime.clone(), self.task.clone());
                    let files = self.files.clone();
                    let prepare = async move {
                        files.check()?;
                        runtime.prepare(&task, &files).await
                    };
                    match self.interruptible(Box::pin(prepare)).await {
                        Outcome::Done(Ok(container_id)) => {
                            self.container_id = container_id;
                            self.transition(TaskState::Ready, String::new(), None, Vec::new());
                        }
                        Outcome::Done(Err(e)) => self.fail(e),
                        Outcome::Interrupted => {}
                        Outcome::Shutdown => return,
                    }
                }
                Step::Start => {
                    let (runtime, task) = (self.runtime.clone(), self.task.clone());
                    let start = async move {
                        runtime.start(&task).await.map_err(Err)?;
                        runtime.wait_running(&task).await.map_err(Ok)
                    };
                    match self.interruptible(Box::pin(start)).await {
                        Outcome::Done(Ok(())) => {
                            let ports = Box::pin(self.runtime.ports(&self.task)).await;
                            self.transition(TaskState::Running, String::new(), None, ports);
                        }
                        Outcome::Done(Err(Err(e))) => self.fail(e),
                        Outcome::Done(Err(Ok(exit))) => Box::pin(self.exited(exit)).await,
                        Outcome::Interrupted => {}
                        Outcome::Shutdown => return,
                    }
                }
                Step::WaitExit => {
                    let (runtime, task) = (self.runtime.clone(), self.task.clone());
                    match self
                        .interruptible(Box::pin(async move { runtime.wait_exit(&task).await }))
                        .await
                    {
                        Outcome::Done(exit) => Box::pin(self.exited(exit)).await,
                        Outcome::Interrupted => {}
                        Outcome::Shutdown => return,
                    }
                }
                Step::Stop => {
                    let grace = stop_grace(&self.task);
                    let result = tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        r = Box::pin(self.runtime.stop(&self.task, grace)) => r,
                    };
                    match result {
                        Ok(()) | Err(RuntimeError::NotFound(_)) => {
                            retry = Backoff::default();
                            self.transition(TaskState::Shutdown, String::new(), None, Vec::new());
                        }
                        Err(e) => {
                            warn!(task.id = %self.task.id, service.name = %self.task.service_name,
                                error = %e, "cannot stop the task's container; retrying");
                            if !self.pause(&mut retry).await {
                                return;
                            }
                        }
                    }
                }
                Step::Remove => {
                    let result = tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        r = Box::pin(self.runtime.remove(&self.task)) => r,
                    };
                    match result {
                        Ok(()) | Err(RuntimeError::NotFound(_)) => {
                            info!(task.id = %self.task.id, service.name = %self.task.service_name,
                                "task removed");
                            return;
                        }
                        Err(e) => {
                            warn!(task.id = %self.task.id, service.name = %self.task.service_name,
                                error = %e, "cannot remove the task's container; retrying");
                            if !self.pause(&mut retry).await {
                                return;
                            }
                        }
                    }
                }
                Step::Idle => {
                    if !self.updates_open {
                        // Nobody can change the desired state any more.
                        return;
                    }
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        changed = self.updates.changed() => self.take_update(changed.is_ok()),
                    }
                }
            }
        }
    }

    /// Runs an engine call, giving way to a stop request or agent shutdown.
    async fn interruptible<T>(&mut self, call: impl Future<Output = T>) -> Outcome<T> {
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Outcome::Shutdown,
                changed = self.updates.changed(), if self.updates_open => {
                    self.take_update(changed.is_ok());
                    if from_i32(self.task.desired_state) > TaskState::Running {
                        return Outcome::Interrupted;
                    }
                }
                out = &mut call => return Outcome::Done(out),
            }
        }
    }

    fn take_update(&mut self, open: bool) {
        if open {
            self.task = self.updates.borrow_and_update().clone();
        } else {
            self.updates_open = false;
        }
    }

    /// Waits out a retry delay; false when the agent shuts down meanwhile.
    async fn pause(&mut self, retry: &mut Backoff) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = tokio::time::sleep(retry.next_delay()) => true,
        }
    }

    /// The runtime's error ends the task: REJECTED before it started, FAILED after.
    fn fail(&mut self, error: RuntimeError) {
        let state = failure_state(self.observed);
        self.transition(state, error.to_string(), None, Vec::new());
    }

    /// The task ended on its own (or its health check gave up).
    async fn exited(&mut self, exit: Exit) {
        if exit.unhealthy {
            // An unhealthy process is still running; the task is over, so is it.
            if let Err(e) = self.runtime.stop(&self.task, stop_grace(&self.task)).await {
                warn!(task.id = %self.task.id, error = %e, "cannot stop an unhealthy container");
            }
        }
        let (state, err) = exit_outcome(&exit);
        self.transition(state, err, Some(exit.exit_code), Vec::new());
    }

    /// Records and reports a move to `to`; `err` non-empty for failures.
    fn transition(
        &mut self,
        to: TaskState,
        err: String,
        exit_code: Option<i64>,
        ports: Vec<PortConfig>,
    ) {
        let from = self.observed;
        self.observed = to;
        let message = if err.is_empty() {
            state_message(to).to_string()
        } else {
            err.clone()
        };
        if err.is_empty() {
            info!(task.id = %self.task.id, service.name = %self.task.service_name,
                from = name(from), to = name(to), "task state changed");
        } else {
            warn!(task.id = %self.task.id, service.name = %self.task.service_name,
                from = name(from), to = name(to), error = %err, "task state changed");
        }
        let status = TaskStatus {
            state: to as i32,
            timestamp: shoal_proto::now_ms(),
            message,
            err,
            container: Some(ContainerStatus {
                container_id: self.container_id.clone(),
                pid: 0,
                exit_code: exit_code
                    .map_or(0, |c| c.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
            }),
            port_status: (!ports.is_empty()).then_some(PortStatus { ports }),
        };
        self.reporter.report(&self.task.id, status);
    }
}

#[cfg(all(test, feature = "fake"))]
#[path = "controller_tests.rs"]
mod tests;
