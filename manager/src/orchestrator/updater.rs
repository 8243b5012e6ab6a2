//! One rolling update: replaces the tasks of a service that run an old spec
//! version, batch by batch, under the service's update policy. Runs as its own
//! tokio task, started by the driver and cancelled when the spec changes again
//! (a new updater then takes over) or the service goes.
//!
//! Stop-first shuts the old task down and creates its replacement READY in one
//! atomic write; the reconciler starts the replacement once the old task has
//! stopped. Start-first creates the replacement RUNNING and shuts the old one
//! down once the new one runs. Every replaced task is then watched for the
//! monitor window; a failure pauses the update (or is logged, with CONTINUE).
//! Progress lands in `service.update_status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::{
    Service, Task, TaskState, UpdateFailureAction, UpdateOrder, UpdateState, UpdateStatus,
};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::task::{SlotKey, is_live, is_terminal, new_task, observed, service_name};
use super::update::{Monitored, StaleSlot, UpdatePolicy, Watch, judge, stale_slots};
use crate::store::{Action, ChangeBatch, MemState, Object, Store, StoreError};

/// Start times of READY tasks, shared by the driver and the updaters.
pub type StartTimes = Arc<Mutex<HashMap<String, Instant>>>;

/// How an update ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateOutcome {
    Completed,
    /// Paused after a failure; resumes when the spec changes again.
    Paused(String),
    /// Cancelled, superseded, or the store refused to go on.
    Stopped,
}

/// What an updater reports to the driver when it ends.
#[derive(Debug, Clone)]
pub struct UpdateDone {
    pub service_id: String,
    pub spec_version: u64,
    pub outcome: UpdateOutcome,
}

/// Why an updater stops early (cancelled, service changed, store unavailable).
struct Stop;

enum SlotResult {
    /// The new task runs (since this wall-clock ms): watch it.
    Running(Monitored),
    Failed(String),
    /// The slot changed under us (its tasks were replaced elsewhere).
    Skipped,
}

/// Start the updater of `service_id` towards `spec_version`.
pub fn spawn(
    store: Store,
    service_id: String,
    spec_version: u64,
    start_at: StartTimes,
    token: CancellationToken,
    done: mpsc::UnboundedSender<UpdateDone>,
) -> tokio::task::JoinHandle<()> {
    let updater = Updater {
        store,
        service_id,
        version: spec_version,
        start_at,
        token,
    };
    tokio::spawn(async move {
        let outcome = updater.run().await.unwrap_or(UpdateOutcome::Stopped);
        let _ = done.send(UpdateDone {
            service_id: updater.service_id,
            spec_version,
            outcome,
        });
    })
}

struct Updater {
    store: Store,
    service_id: String,
    version: u64,
    start_at: StartTimes,
    token: CancellationToken,
}

impl Updater {
    async fn run(&self) -> Result<UpdateOutcome, Stop> {
        let mut rx = self.store.subscribe();
        let service = self.service()?;
        let policy = UpdatePolicy::of(&service);
        if self.stale()?.is_empty() {
            if update_state(&service) == UpdateState::Updating {
                self.set_status(UpdateState::Completed, "update completed")
                    .await?;
            }
            return Ok(UpdateOutcome::Completed);
        }
        tracing::info!(service.id = %self.service_id, service.name = %service_name(&service),
            spec_version = self.version, "rolling update started");
        self.set_status(UpdateState::Updating, "update in progress")
            .await?;

        let mut monitored: Vec<Monitored> = Vec::new();
        loop {
            if let Some(failed) = self.watch(&mut monitored, policy)? {
                return self.pause(&failed).await;
            }
            let stale = self.stale()?;
            if stale.is_empty() {
                break;
            }
            let batch = stale.into_iter().take(policy.parallelism);
            let results =
                futures::future::join_all(batch.map(|s| self.update_slot(s, policy))).await;
            for result in results {
                match result? {
                    SlotResult::Running(m) => monitored.push(m),
                    SlotResult::Failed(id) => {
                        tracing::warn!(service.id = %self.service_id, task.id = %id, "updated task failed to start");
                        if policy.failure_action == UpdateFailureAction::Pause {
                            return self.pause(&id).await;
                        }
                    }
                    SlotResult::Skipped => {}
                }
            }
            if !policy.delay.is_zero() && !self.stale()?.is_empty() {
                self.sleep(policy.delay).await?;
            }
        }
        // The last batches are judged too before the update counts as done.
        while !monitored.is_empty() {
            if let Some(failed) = self.watch(&mut monitored, policy)? {
                return self.pause(&failed).await;
            }
            let now_ms = shoal_proto::now_ms();
            let Some(next) = monitored
                .iter()
                .map(|m| m.running_since_ms + policy.monitor.as_millis() as i64)
                .min()
            else {
                break;
            };
            let wait = Duration::from_millis((next - now_ms).max(1) as u64);
            let deadline = Instant::now() + wait;
            // Wake at the next window's end, or as soon as a watched task fails.
            self.wait_for(&mut rx, Some(deadline), |s| {
                let now_ms = shoal_proto::now_ms();
                monitored
                    .iter()
                    .any(|m| judge(m, s.task(&m.task_id), now_ms, policy.monitor) == Watch::Failed)
                    .then_some(())
            })
            .await?;
        }
        self.set_status(UpdateState::Completed, "update completed")
            .await?;
        tracing::info!(service.id = %self.service_id, spec_version = self.version, "rolling update completed");
        Ok(UpdateOutcome::Completed)
    }

    /// Judge the watched tasks; the first failure that must pause the update.
    fn watch(
        &self,
        monitored: &mut Vec<Monitored>,
        policy: UpdatePolicy,
    ) -> Result<Option<String>, Stop> {
        let now_ms = shoal_proto::now_ms();
        let verdicts: Vec<Watch> = self.store.read(|s| {
            monitored
                .iter()
                .map(|m| judge(m, s.task(&m.task_id), now_ms, policy.monitor))
                .collect()
        });
        let mut failed = None;
        let mut keep = Vec::new();
        for (m, verdict) in monitored.drain(..).zip(verdicts) {
            match verdict {
                Watch::Watching => keep.push(m),
                Watch::Done => {}
                Watch::Failed => {
                    tracing::warn!(service.id = %self.service_id, task.id = %m.task_id,
                        "updated task failed within the monitor window");
                    if policy.failure_action == UpdateFailureAction::Pause && failed.is_none() {
                        failed = Some(m.task_id);
                    }
                }
            }
        }
        *monitored = keep;
        Ok(failed)
    }

    async fn pause(&self, task_id: &str) -> Result<UpdateOutcome, Stop> {
        let message =
            format!("update paused due to failure or early termination of task {task_id}");
        self.set_status(UpdateState::Paused, &message).await?;
        tracing::warn!(service.id = %self.service_id, task.id = %task_id, "rolling update paused");
        Ok(UpdateOutcome::Paused(message))
    }

    /// Replace the old tasks of one slot and wait until the new one runs.
    async fn update_slot(&self, slot: StaleSlot, policy: UpdatePolicy) -> Result<SlotResult, Stop> {
        let mut rx = self.store.subscribe();
        let reused = slot.current.is_some();
        let new_id = match slot.current {
            Some(current) => current.id,
            None => self.replace(&slot, policy.order).await?,
        };
        let outcome = self
            .wait_for(&mut rx, None, |s| {
                let Some(t) = s.task(&new_id) else {
                    return Some(None);
                };
                let state = observed(t);
                // Retired by someone else (scaled away, node lost): not ours to judge.
                if !is_live(t) && (state == TaskState::Shutdown || !is_terminal(t)) {
                    return Some(None);
                }
                (state >= TaskState::Running).then(|| Some(t.clone()))
            })
            .await?;
        let task = match outcome.flatten() {
            None => return Ok(SlotResult::Skipped),
            Some(t) if is_terminal(&t) => return Ok(SlotResult::Failed(t.id)),
            Some(t) => t,
        };
        if reused || policy.order == UpdateOrder::StartFirst {
            let old: Vec<String> = slot.old.iter().map(|t| t.id.clone()).collect();
            self.shut_down(&old).await?;
        }
        let running_since_ms = task
            .status
            .as_ref()
            .map(|s| s.timestamp)
            .unwrap_or_default();
        Ok(SlotResult::Running(Monitored {
            task_id: task.id,
            running_since_ms: if running_since_ms > 0 {
                running_since_ms
            } else {
                shoal_proto::now_ms()
            },
        }))
    }

    /// Create the replacement of a stale slot (shutting the old tasks down in
    /// the same write for stop-first). Returns the new task's id.
    async fn replace(&self, slot: &StaleSlot, order: UpdateOrder) -> Result<String, Stop> {
        let (number, node_id) = match &slot.key {
            SlotKey::Replica(n) => (*n, ""),
            SlotKey::Node(id) => (0, id.as_str()),
        };
        loop {
            let service = self.service()?;
            let old: Vec<Task> = self.store.read(|s| {
                slot.old
                    .iter()
                    .filter_map(|t| s.task(&t.id))
                    .filter(|t| is_live(t))
                    .cloned()
                    .collect()
            });
            let mut actions = Vec::new();
            let desired = match order {
                UpdateOrder::StopFirst => {
                    for mut t in old {
                        t.desired_state = TaskState::Shutdown as i32;
                        actions.push(Action::Update(Object::Task(t.into())));
                    }
                    TaskState::Ready
                }
                UpdateOrder::StartFirst => TaskState::Running,
            };
            let new = new_task(&service, number, node_id, desired, shoal_proto::now_ms());
            let id = new.id.clone();
            if desired == TaskState::Ready {
                // No restart delay for an update: start once the old task stopped.
                lock(&self.start_at).insert(id.clone(), Instant::now());
            }
            actions.push(Action::Create(Object::Task(new.into())));
            match self.store.propose(actions).await {
                Ok(_) => {
                    tracing::info!(service.id = %self.service_id, task.id = %id, slot = %slot.key, "updating slot");
                    return Ok(id);
                }
                Err(StoreError::Conflict { .. }) => {
                    lock(&self.start_at).remove(&id);
                    continue;
                }
                Err(err) => {
                    lock(&self.start_at).remove(&id);
                    tracing::warn!(service.id = %self.service_id, error = %err, "update write failed");
                    return Err(Stop);
                }
            }
        }
    }

    /// Raise the given tasks to desired SHUTDOWN, re-reading on conflicts.
    async fn shut_down(&self, ids: &[String]) -> Result<(), Stop> {
        loop {
            let actions: Vec<Action> = self.store.read(|s| {
                ids.iter()
                    .filter_map(|id| s.task(id))
                    .filter(|t| is_live(t))
                    .map(|t| {
                        let mut t = t.clone();
                        t.desired_state = TaskState::Shutdown as i32;
                        Action::Update(Object::Task(t.into()))
                    })
                    .collect()
            });
            if actions.is_empty() {
                return Ok(());
            }
            match self.store.propose(actions).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(_) => return Err(Stop),
            }
        }
    }

    /// The service, as long as it still wants this updater's spec version.
    fn service(&self) -> Result<Service, Stop> {
        if self.token.is_cancelled() {
            return Err(Stop);
        }
        self.store
            .read(|s| s.service(&self.service_id).cloned())
            .filter(|s| s.spec_version == self.version)
            .ok_or(Stop)
    }

    fn stale(&self) -> Result<Vec<StaleSlot>, Stop> {
        let service = self.service()?;
        Ok(self.store.read(|s| {
            let tasks: Vec<Task> = s.tasks_of_service(&self.service_id).cloned().collect();
            let nodes = s.nodes().map(|n| (n.id.clone(), n.clone())).collect();
            stale_slots(&service, &tasks, &nodes)
        }))
    }

    async fn set_status(&self, state: UpdateState, message: &str) -> Result<(), Stop> {
        loop {
            let mut service = self.service()?;
            let now = shoal_proto::now_ms();
            let previous = service.update_status.take().unwrap_or_default();
            let started_at = match (state, previous.state()) {
                (UpdateState::Updating, UpdateState::Updating) => previous.started_at,
                (UpdateState::Updating, _) => now,
                _ => previous.started_at,
            };
            service.update_status = Some(UpdateStatus {
                state: state as i32,
                started_at,
                completed_at: if state == UpdateState::Completed {
                    now
                } else {
                    0
                },
                message: message.to_string(),
            });
            match self
                .store
                .propose(vec![Action::Update(Object::Service(service.into()))])
                .await
            {
                Ok(_) => return Ok(()),
                // The control API writes services too: read again and retry.
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => {
                    tracing::warn!(service.id = %self.service_id, error = %err, "could not write the update status");
                    return Err(Stop);
                }
            }
        }
    }

    async fn sleep(&self, delay: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = self.token.cancelled() => Err(Stop),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    /// Wait until `check` finds what it wants in the tables (re-checked after
    /// every committed change), or until `deadline` (`Ok(None)`).
    async fn wait_for<R>(
        &self,
        rx: &mut broadcast::Receiver<Arc<ChangeBatch>>,
        deadline: Option<Instant>,
        mut check: impl FnMut(&MemState) -> Option<R>,
    ) -> Result<Option<R>, Stop> {
        loop {
            self.service()?;
            if let Some(r) = self.store.read(&mut check) {
                return Ok(Some(r));
            }
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.token.cancelled() => return Err(Stop),
                _ = timeout => return Ok(None),
                r = rx.recv() => match r {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Err(Stop),
                },
            }
        }
    }
}

fn update_state(service: &Service) -> UpdateState {
    service
        .update_status
        .as_ref()
        .map(|u| u.state())
        .unwrap_or(UpdateState::None)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "updater_tests.rs"]
mod tests;
