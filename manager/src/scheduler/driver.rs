//! The scheduler's IO side: follows the store, runs passes, commits decisions.
//!
//! It loads a [`SchedulerState`] from an atomic snapshot, then applies the change
//! stream to it. After draining whatever changes are available (never one pass
//! per event), it runs a pass and queues the decisions as non-atomic proposals of
//! up to [`CHUNK`] task updates, with at most [`MAX_IN_FLIGHT`] in flight. A
//! refused update only means the task changed meanwhile, and the change stream
//! brings its new value, which the state reconciles; a failed proposal or a
//! lagging subscription makes it re-read everything.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::SchedulerState;
use crate::store::{Action, Applied, ChangeBatch, ChangeKind, Object, Store, StoreError};

/// Task updates per proposal.
pub const CHUNK: usize = 1000;
/// Proposals awaiting commit at once. The raft task takes every proposal
/// queued by its next cycle into one append and one fsync, so more in flight
/// means fewer, larger cycles (with three managers, fewer network round
/// trips and follower fsyncs too). At 1,000 × 100k, 8 against 4: 1.22× with
/// one manager, 1.17× with three. 16 gave 1.37× and 1.45× there, but at
/// 5,000 nodes its bursts starved the agents' heartbeats and 1,400–3,200
/// healthy nodes were marked DOWN (docs/BENCHMARKS.md, 2026-12-03).
pub const MAX_IN_FLIGHT: usize = 8;
/// Passes that only retry tasks that failed before run at most this often, so
/// a churn of task ends cannot turn into a hot loop over unplaceable tasks.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Wait after a failed proposal before re-reading the store.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

type Changes = broadcast::Receiver<std::sync::Arc<ChangeBatch>>;

/// Assign PENDING tasks to nodes until `shutdown` is cancelled.
pub async fn run(store: Store, shutdown: CancellationToken) {
    let (state, changes) = load(&store);
    tracing::info!(
        nodes = state.node_count(),
        pending = state.pending_count(),
        "scheduler started"
    );
    let mut driver = Driver {
        store,
        state,
        changes,
        queue: VecDeque::new(),
        in_flight: JoinSet::new(),
        last_pass: None,
    };
    loop {
        let wake_at = driver.schedule_if_due();
        driver.submit();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(joined) = driver.in_flight.join_next(), if !driver.in_flight.is_empty() => {
                let ok = match joined {
                    Ok(result) => driver.on_committed(result),
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduler proposal task failed");
                        false
                    }
                };
                if !ok {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ERROR_BACKOFF) => {}
                    }
                    driver.resync();
                }
            }
            received = driver.changes.recv() => match received {
                Ok(batch) => {
                    driver.apply(&batch);
                    driver.drain();
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "scheduler fell behind the change stream; re-reading the store");
                    driver.resync();
                }
                Err(RecvError::Closed) => break,
            },
            _ = sleep_until(wake_at), if wake_at.is_some() => {}
        }
    }
    tracing::info!("scheduler stopped");
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// A consistent snapshot of the nodes and relevant tasks, and the changes after it.
fn load(store: &Store) -> (SchedulerState, Changes) {
    // Copy under the read lock, index outside it: appliers wait on the lock.
    let ((nodes, tasks), changes) = store.read_and_subscribe(|s| {
        let nodes: Vec<_> = s.nodes().cloned().collect();
        let tasks: Vec<_> = s
            .tasks()
            .filter(|t| super::nodeinfo::holds_resources(t) || super::nodeinfo::is_schedulable(t))
            .cloned()
            .collect();
        (nodes, tasks)
    });
    (SchedulerState::from_snapshot(&nodes, &tasks), changes)
}

struct Driver {
    store: Store,
    state: SchedulerState,
    changes: Changes,
    /// Proposals decided but not yet sent.
    queue: VecDeque<Vec<Action>>,
    in_flight: JoinSet<Result<Applied, StoreError>>,
    last_pass: Option<Instant>,
}

impl Driver {
    /// Apply every change already waiting, without blocking.
    fn drain(&mut self) {
        loop {
            match self.changes.try_recv() {
                Ok(batch) => self.apply(&batch),
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return,
                Err(TryRecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "scheduler fell behind the change stream; re-reading the store"
                    );
                    self.resync();
                    return;
                }
            }
        }
    }

    fn apply(&mut self, batch: &ChangeBatch) {
        for change in &batch.changes {
            let deleted = change.kind == ChangeKind::Deleted;
            match &change.object {
                Object::Node(n) if deleted => self.state.remove_node(&n.id),
                Object::Node(n) => self.state.upsert_node(n),
                Object::Task(t) if deleted => self.state.remove_task(&t.id),
                Object::Task(t) => self.state.upsert_task(t),
                Object::Service(_) | Object::Cluster(_) | Object::Secret(_) | Object::Config(_) => {
                }
            }
        }
    }

    /// Start over from the store (after lagging or a failed proposal). Queued
    /// decisions were made on the old copy: drop them, the next pass redoes them.
    fn resync(&mut self) {
        let (state, changes) = load(&self.store);
        self.state = state;
        self.changes = changes;
        self.queue.clear();
        self.last_pass = None;
    }

    /// Run a pass if one is due; otherwise return when the next one will be.
    fn schedule_if_due(&mut self) -> Option<Instant> {
        if !self.state.needs_pass() {
            return None;
        }
        let now = Instant::now();
        if !self.state.has_untried()
            && let Some(last) = self.last_pass
            && now < last + RETRY_INTERVAL
        {
            return Some(last + RETRY_INTERVAL);
        }
        self.last_pass = Some(now);
        let decisions = self.state.schedule(shoal_proto::now_ms());
        for t in &decisions.assigned {
            tracing::debug!(task.id = %t.id, service.id = %t.service_id, node.id = %t.node_id, "task assigned");
        }
        if !decisions.assigned.is_empty() || decisions.unplaceable > 0 {
            tracing::info!(
                assigned = decisions.assigned.len(),
                unplaceable = decisions.unplaceable,
                elapsed_ms = now.elapsed().as_millis() as u64,
                "scheduling pass"
            );
        }
        let mut updates = decisions
            .assigned
            .into_iter()
            .map(|t| *t)
            .chain(decisions.messages)
            .map(|t| Action::Update(Object::Task(t.into())))
            .peekable();
        while updates.peek().is_some() {
            self.queue.push_back(updates.by_ref().take(CHUNK).collect());
        }
        None
    }

    fn submit(&mut self) {
        while self.in_flight.len() < MAX_IN_FLIGHT
            && let Some(actions) = self.queue.pop_front()
        {
            let store = self.store.clone();
            self.in_flight
                .spawn(async move { store.propose_each(actions).await });
        }
    }

    /// False when the proposal failed as a whole: the copy may now be wrong.
    fn on_committed(&mut self, result: Result<Applied, StoreError>) -> bool {
        match result {
            Ok(applied) => {
                if !applied.refused.is_empty() {
                    tracing::debug!(
                        refused = applied.refused.len(),
                        "scheduler updates refused (tasks changed meanwhile)"
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduler proposal failed; re-reading the store");
                false
            }
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
