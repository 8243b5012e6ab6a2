//! The scheduler's IO side: follows the store, runs passes, commits decisions.
//!
//! It loads a [`SchedulerState`] from an atomic snapshot, then applies the change
//! stream to it. After draining whatever changes are available (never one pass
//! per event), it runs a pass and queues the decisions as non-atomic proposals of
//! up to [`CHUNK`] task updates, with at most [`MAX_IN_FLIGHT`] in flight. A
//! refused update only means the task changed meanwhile, and the change stream
//! brings its new value, which the state reconciles; a failed proposal or a
//! lagging subscription makes it re-read everything.
//!
//! It also serves the orchestrator's [`PlaceRequest`]s: new tasks placed on
//! the current view and created already placed, in their own proposal whose
//! outcome goes back to the orchestrator.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::nodeinfo::report_matters;
use super::placer::PlaceRequest;
use super::state::SchedulerState;
use crate::store::{Action, Applied, ChangeBatch, ChangeKind, Object, Store, StoreError, Stored};

/// Task updates per proposal.
pub const CHUNK: usize = 1000;
/// Proposals awaiting commit at once. The raft task takes every proposal
/// queued by its next cycle into one append and one fsync, so more in flight
/// means fewer, larger cycles (with three managers, fewer network round
/// trips and follower fsyncs too). At 1,000 × 100k, 16 against 8: 1.13×
/// with one manager, 1.15× with three, 1.23× at 5,000 nodes, no node marked
/// DOWN. (16 once marked thousands of healthy nodes DOWN at 5,000 nodes: the
/// hollow agents' allocator starved them; docs/BENCHMARKS.md, 2026-12-03.)
pub const MAX_IN_FLIGHT: usize = 16;
/// Passes that only retry tasks that failed before run at most this often, so
/// a churn of task ends cannot turn into a hot loop over unplaceable tasks.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Wait after a failed proposal before re-reading the store.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

type Changes = broadcast::Receiver<std::sync::Arc<ChangeBatch>>;

/// Assign PENDING tasks to nodes until `shutdown` is cancelled.
#[cfg(test)]
pub async fn run(store: Store, shutdown: CancellationToken) {
    run_with_placer(store, None, shutdown).await
}

/// [`run`], also placing the new tasks that arrive on `placements` (see
/// [`super::placer`]).
pub async fn run_with_placer(
    store: Store,
    mut placements: Option<mpsc::Receiver<PlaceRequest>>,
    shutdown: CancellationToken,
) {
    let (state, changes) = load(&store);
    tracing::info!(
        target: crate::FIGURES_TARGET,
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
                    Ok(outcome) => driver.on_committed(outcome),
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
            request = next_request(&mut placements), if placements.is_some() => match request {
                Some(request) => driver.place(request),
                None => placements = None,
            },
            _ = sleep_until(wake_at), if wake_at.is_some() => {}
        }
    }
    tracing::info!("scheduler stopped");
}

async fn next_request(rx: &mut Option<mpsc::Receiver<PlaceRequest>>) -> Option<PlaceRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// One proposal of the scheduler's.
struct Proposal {
    actions: Vec<Action>,
    /// For the creations of a [`PlaceRequest`]: their ids in order, and where
    /// the outcome goes. Dropped unsent (a resync), the orchestrator reads
    /// it as a failed write and reconciles again.
    creations: Option<(Vec<String>, Reply)>,
}

/// Where the outcome of a [`PlaceRequest`]'s creations goes.
type Reply = oneshot::Sender<Result<Applied, StoreError>>;

impl Proposal {
    fn updates(actions: Vec<Action>) -> Proposal {
        Proposal {
            actions,
            creations: None,
        }
    }
}

/// What the driver keeps of a committed proposal.
struct Outcome {
    /// Refused actions, or the error of the whole proposal.
    result: Result<usize, StoreError>,
    /// New tasks whose creation was refused: no change will bring them.
    refused_creations: Vec<String>,
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
    queue: VecDeque<Proposal>,
    in_flight: JoinSet<Outcome>,
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
                Stored::Node(n) if deleted => self.state.remove_node(&n.id),
                Stored::Node(n) => self.state.upsert_node(n),
                Stored::Task(t) if deleted => self.state.remove_task(&t.id),
                // An agent's report: it matters only when the task stops or
                // starts holding its node's resources.
                Stored::Task(t)
                    if change.kind == ChangeKind::Reported
                        && change.old.as_ref().is_some_and(
                            |old| matches!(old, Stored::Task(old) if !report_matters(old, t)),
                        ) => {}
                Stored::Task(t) => self.state.upsert_task(t),
                Stored::Service(_) | Stored::Cluster(_) | Stored::Secret(_) | Stored::Config(_) => {
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
        log_pass(&decisions, &[], now);
        self.queue_updates(decisions);
        None
    }

    /// Place an orchestrator's new tasks (after the changes already waiting,
    /// for the freshest view) and queue their creation.
    fn place(&mut self, request: PlaceRequest) {
        self.drain();
        let now = Instant::now();
        self.last_pass = Some(now);
        let ids: Vec<String> = request.tasks.iter().map(|t| t.id.clone()).collect();
        let (placed, decisions) = self.state.place_new(request.tasks, shoal_proto::now_ms());
        log_pass(&decisions, &placed, now);
        let actions = placed
            .into_iter()
            .map(|t| Action::Create(Object::Task(t.into())))
            .collect();
        self.queue.push_back(Proposal {
            actions,
            creations: Some((ids, request.reply)),
        });
        self.queue_updates(decisions);
    }

    fn queue_updates(&mut self, decisions: super::Decisions) {
        let mut updates = decisions
            .assigned
            .into_iter()
            .map(|t| *t)
            .chain(decisions.messages)
            .map(|t| Action::Update(Object::Task(t.into())))
            .peekable();
        while updates.peek().is_some() {
            self.queue
                .push_back(Proposal::updates(updates.by_ref().take(CHUNK).collect()));
        }
    }

    fn submit(&mut self) {
        while self.in_flight.len() < MAX_IN_FLIGHT
            && let Some(proposal) = self.queue.pop_front()
        {
            let store = self.store.clone();
            self.in_flight.spawn(async move {
                let result = store.propose_each(proposal.actions).await;
                let Some((ids, reply)) = proposal.creations else {
                    return Outcome {
                        result: result.map(|a| a.refused.len()),
                        refused_creations: Vec::new(),
                    };
                };
                let outcome = Outcome {
                    result: match &result {
                        Ok(a) => Ok(a.refused.len()),
                        Err(e) => Err(e.clone()),
                    },
                    refused_creations: match &result {
                        Ok(a) => a.refused.iter().map(|(pos, _)| ids[*pos].clone()).collect(),
                        Err(_) => Vec::new(),
                    },
                };
                // The orchestrator may have stopped meanwhile: nobody to tell.
                let _ = reply.send(result);
                outcome
            });
        }
    }

    /// False when the proposal failed as a whole: the copy may now be wrong.
    fn on_committed(&mut self, outcome: Outcome) -> bool {
        for id in &outcome.refused_creations {
            self.state.remove_task(id);
        }
        match outcome.result {
            Ok(refused) => {
                if refused > 0 {
                    tracing::debug!(
                        refused,
                        "scheduler writes refused (tasks changed meanwhile)"
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

/// The scheduler's one line per pass (the benchmark counts them), and a debug
/// line per assignment; `created` are the new tasks the pass placed.
fn log_pass(decisions: &super::Decisions, created: &[shoal_proto::Task], started: Instant) {
    let created_assigned = created
        .iter()
        .filter(|t| !t.node_id.is_empty() && !super::nodeinfo::is_schedulable(t));
    for t in decisions
        .assigned
        .iter()
        .map(|t| &**t)
        .chain(created_assigned.clone())
    {
        tracing::debug!(task.id = %t.id, service.id = %t.service_id, node.id = %t.node_id, "task assigned");
    }
    let assigned = decisions.assigned.len() + created_assigned.count();
    if assigned > 0 || decisions.unplaceable > 0 {
        tracing::info!(
            target: crate::FIGURES_TARGET,
            assigned,
            unplaceable = decisions.unplaceable,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "scheduling pass"
        );
    }
}
