//! The orchestrator's IO loop: follows the store's change stream, marks the
//! services that a batch of changes touches, and reconciles them together once
//! the available changes are drained (so a burst of agent reports costs one
//! pass). The decisions come from the pure core ([`super::reconcile_service`]);
//! the driver writes them in `propose_each` batches, keeps the timers of READY
//! tasks, and starts, cancels and hears back from the per-service updaters.
//!
//! On start (a new leader) and whenever the stream lags, it re-reads every
//! service and task: everything is derived from the store, nothing from the
//! events themselves.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_proto::{Node, Service, Task, TaskState, UpdateState};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batches::{WRITE_BATCH, batches};
use super::dirty::Dirty;
use super::restart::RestartTracker;
use super::screen::{self, Screen, mark};
use super::task::{desired, service_name};
use super::update::has_stale_slots;
use super::updater::{self, StartTimes, UpdateDone, UpdateOutcome, lock};
use super::{Ctx, Op, reconcile_service};
use crate::config::OrchestratorConfig;
use crate::scheduler::Placer;
use crate::store::{Action, Applied, Object, Queued, Store, StoreError};

/// Proposals awaiting commit at once, as many as the scheduler has
/// ([`crate::scheduler::driver::MAX_IN_FLIGHT`] says why).
const MAX_IN_FLIGHT: usize = 16;
/// Pause before retrying services whose writes were refused (lost a race).
const CONFLICT_RETRY: Duration = Duration::from_millis(20);
/// Pause before retrying after the store refused a whole proposal.
const ERROR_RETRY: Duration = Duration::from_millis(500);
/// A pass that decides for this long is logged at info even if it writes nothing.
const SLOW_PASS: Duration = Duration::from_millis(10);
/// Start times set by updaters survive this long before their task exists.
const START_TIME_GRACE: Duration = Duration::from_secs(30);

/// Run the orchestrator until `shutdown` is cancelled (leadership lost).
#[cfg(test)]
pub(crate) async fn run(store: Store, config: OrchestratorConfig, shutdown: CancellationToken) {
    run_with_placer(store, config, None, shutdown).await
}

/// [`run`], handing batches of new tasks to the scheduler through `placer`
/// so they are created already placed ([`crate::scheduler::placer`]).
pub async fn run_with_placer(
    store: Store,
    config: OrchestratorConfig,
    placer: Option<Placer>,
    shutdown: CancellationToken,
) {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        store,
        config,
        shutdown,
        restarts: RestartTracker::default(),
        start_at: StartTimes::default(),
        wakeups: BTreeMap::new(),
        updaters: HashMap::new(),
        paused: HashMap::new(),
        done_tx,
        dirty: Dirty::default(),
        placer,
        screen: Screen::default(),
    };
    tracing::info!("orchestrator started");
    driver.follow(done_rx).await;
    for (_, updater) in driver.updaters.drain() {
        updater.token.cancel();
        let _ = updater.handle.await;
    }
    tracing::info!("orchestrator stopped");
}

struct RunningUpdater {
    spec_version: u64,
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

/// One service to reconcile: its id, its value (`None` once removed), its tasks.
type Work = (String, Option<Service>, Vec<Task>);

struct Driver {
    store: Store,
    config: OrchestratorConfig,
    shutdown: CancellationToken,
    restarts: RestartTracker,
    start_at: StartTimes,
    /// When to reconcile which services again (start times coming due, retries).
    wakeups: BTreeMap<Instant, HashSet<String>>,
    updaters: HashMap<String, RunningUpdater>,
    /// Services whose update paused, at the spec version it paused on.
    paused: HashMap<String, u64>,
    done_tx: mpsc::UnboundedSender<UpdateDone>,
    dirty: Dirty,
    /// The scheduler, which places and writes batches of new tasks.
    placer: Option<Placer>,
    /// The services left alone (invalid stored specs, panics).
    screen: Screen,
}

impl Driver {
    async fn follow(&mut self, mut done_rx: mpsc::UnboundedReceiver<UpdateDone>) {
        'resync: loop {
            let (paused, mut rx) = self.store.read_and_subscribe(|s| {
                s.services()
                    .filter(|svc| {
                        svc.update_status
                            .as_ref()
                            .is_some_and(|u| u.state() == UpdateState::Paused)
                    })
                    .map(|svc| (svc.id.clone(), svc.spec_version))
                    .collect::<Vec<_>>()
            });
            for (id, version) in paused {
                self.paused.entry(id).or_insert(version);
            }
            self.dirty.all = true;
            loop {
                if !self.dirty.is_empty() {
                    self.reconcile().await;
                }
                let next_wakeup = self.wakeups.keys().next().copied();
                let wakeup = async {
                    match next_wakeup {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return,
                    received = rx.recv() => match received {
                        Ok(batch) => {
                            self.dirty.note(&batch);
                            // Coalesce whatever else is already committed.
                            loop {
                                match rx.try_recv() {
                                    Ok(batch) => self.dirty.note(&batch),
                                    Err(TryRecvError::Empty) => {
                                        // A pass awaits its writes' outcomes, which
                                        // follow their changes: all are here now.
                                        self.dirty.caught_up();
                                        break;
                                    }
                                    Err(TryRecvError::Lagged(_)) => continue 'resync,
                                    Err(TryRecvError::Closed) => return,
                                }
                            }
                        }
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "orchestrator lagged behind the store; re-reading everything");
                            continue 'resync;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    Some(done) = done_rx.recv() => self.updater_done(done),
                    _ = wakeup => self.fire_wakeups(),
                }
            }
        }
    }

    fn fire_wakeups(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.wakeups.first_entry() {
            if *entry.key() > now {
                break;
            }
            self.dirty.services.extend(entry.remove());
        }
    }

    fn wake(&mut self, at: Instant, service_id: &str) {
        self.wakeups
            .entry(at)
            .or_default()
            .insert(service_id.to_string());
    }

    fn updater_done(&mut self, done: UpdateDone) {
        let ours = self
            .updaters
            .get(&done.service_id)
            .is_some_and(|u| u.spec_version == done.spec_version);
        if !ours {
            return;
        }
        self.updaters.remove(&done.service_id);
        if let UpdateOutcome::Paused(_) = done.outcome {
            self.paused
                .insert(done.service_id.clone(), done.spec_version);
        }
        if done.outcome != UpdateOutcome::Stopped {
            // Without an updater the reconciler owns every slot again.
            self.dirty.services.insert(done.service_id);
        }
    }

    /// Reconcile every service the recent changes touched, then write.
    async fn reconcile(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        let now = Instant::now();
        // One read per service, and one for the nodes. A service's slots are
        // counted on one consistent view of its tasks; the services and the
        // nodes may be read at different indexes, which is safe because a
        // change that commits between the reads marks what it touched dirty
        // again. One read of everything held the store's lock for seconds at
        // 5,000 nodes × 150,000 tasks: the applier waited behind it, and every
        // other reader (status reports, sessions) behind the applier, each
        // blocking a runtime worker.
        let ids = self.store.read(|s| dirty.services_to_reconcile(s));
        let mut work: Vec<Work> = Vec::with_capacity(ids.len());
        for id in ids {
            let (service, tasks) = self.store.read(|s| {
                let mut tasks = Vec::with_capacity(s.task_count_of_service(&id));
                tasks.extend(s.tasks_of_service(&id).cloned());
                (s.service(&id).cloned(), tasks)
            });
            work.push((id, service, tasks));
            // Copying a large service's tasks is long: let the connections
            // sharing this worker run between services.
            tokio::task::yield_now().await;
        }
        let nodes: HashMap<String, Node> = self
            .store
            .read(|s| s.nodes().map(|n| (n.id.clone(), n.clone())).collect());
        let start_at = self.prune_start_times(&work, now);

        // Each service's writes are queued as soon as it is decided, so the
        // scheduler and Raft start on the first service's tasks while the
        // rest are decided (a pass over 90,000 new tasks decided for about
        // 300 ms with nothing else to do).
        let mut pass = PassWrites::default();
        let mut deciding = Duration::ZERO;
        for (id, service, tasks) in &work {
            let started = Instant::now();
            if let Some(service) = service
                && let Some(error) = self.screen.refusal(service)
            {
                // Left alone: its tasks run on as they are, nothing is created.
                if service.error != error {
                    tracing::warn!(service.id = %id, service.name = %service_name(service),
                        %error, "service not reconciled");
                    pass.push(id, mark(service, error));
                }
                deciding += started.elapsed();
                continue;
            }
            match service {
                Some(service) => self.manage_updater(service, tasks, &nodes),
                None => self.forget(id),
            }
            let ctx = Ctx {
                now,
                now_ms: shoal_proto::now_ms(),
                nodes: &nodes,
                start_at: &start_at,
                updating: self.updaters.contains_key(id),
            };
            let (restarts, history_limit) = (&mut self.restarts, self.config.task_history_limit);
            // A panic here is a bug deciding for this one service: the service
            // is marked with it and left alone until its spec changes, and the
            // other services are served as before.
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reconcile_service(service.as_ref(), tasks, &ctx, restarts, history_limit)
            }));
            deciding += started.elapsed();
            let planned = match (decided, service) {
                (Ok(planned), _) => planned,
                (Err(panic), Some(service)) => {
                    let error = screen::panic_error(&*panic);
                    tracing::error!(service.id = %id, service.name = %service_name(service),
                        %error, "reconcile panicked");
                    self.screen.quarantine(service);
                    pass.push(id, mark(service, error));
                    continue;
                }
                (Err(panic), None) => {
                    tracing::error!(service.id = %id, panic = %crate::panics::panic_message(&*panic),
                        "reconcile of a removed service panicked; its tasks are left as they are");
                    continue;
                }
            };
            if let Some(service) = service
                && !service.error.is_empty()
            {
                tracing::info!(service.id = %id, service.name = %service_name(service),
                    "service reconciled again");
                pass.push(id, mark(service, String::new()));
            }
            self.queue_ops(&mut pass, id, planned).await;
        }
        let services = work.len();
        let writes = self.finish(pass).await;
        let written = now.elapsed().saturating_sub(deciding);
        // One line per pass that wrote or took long (the benchmark sums them
        // into its orchestrator phase); the rest at debug. The write time
        // includes the waits for commits while deciding.
        let (decide_ms, write_ms) = (deciding.as_millis() as u64, written.as_millis() as u64);
        if writes > 0 || deciding >= SLOW_PASS {
            tracing::info!(target: crate::FIGURES_TARGET, services, writes, decide_ms, write_ms, "orchestrator pass");
        } else {
            tracing::debug!(services, writes, decide_ms, write_ms, "orchestrator pass");
        }
    }

    /// Forget start times of tasks that no longer wait for one; returns a copy
    /// for the pure core.
    fn prune_start_times(&self, work: &[Work], now: Instant) -> HashMap<String, Instant> {
        let mut start_at = lock(&self.start_at);
        for (_, _, tasks) in work {
            for t in tasks {
                if desired(t) != TaskState::Ready {
                    start_at.remove(&t.id);
                }
            }
        }
        // Entries whose task is gone or never appeared (a refused create).
        self.store.read(|s| {
            start_at.retain(|id, at| {
                *at + START_TIME_GRACE > now
                    || s.task(id).is_some_and(|t| desired(t) == TaskState::Ready)
            })
        });
        start_at.clone()
    }

    fn forget(&mut self, service_id: &str) {
        if let Some(updater) = self.updaters.remove(service_id) {
            updater.token.cancel();
        }
        self.screen.forget(service_id);
        self.paused.remove(service_id);
        self.restarts.forget_service(service_id);
    }

    /// Start an updater when the service has tasks of an old spec version (or
    /// an update to finish), replacing one that works towards an older version.
    fn manage_updater(&mut self, service: &Service, tasks: &[Task], nodes: &HashMap<String, Node>) {
        let version = service.spec_version;
        if let Some(running) = self.updaters.get(&service.id) {
            if running.spec_version == version {
                return;
            }
            running.token.cancel();
            self.updaters.remove(&service.id);
        }
        match self.paused.get(&service.id) {
            Some(v) if *v == version => return,
            Some(_) => {
                self.paused.remove(&service.id);
            }
            None => {}
        }
        let unfinished = service
            .update_status
            .as_ref()
            .is_some_and(|u| u.state() == UpdateState::Updating);
        if !unfinished && !has_stale_slots(service, tasks, nodes) {
            return;
        }
        tracing::debug!(service.id = %service.id, service.name = %service_name(service),
            spec_version = version, "starting updater");
        let token = self.shutdown.child_token();
        let handle = updater::spawn(
            self.store.clone(),
            service.id.clone(),
            version,
            Arc::clone(&self.start_at),
            token.clone(),
            self.done_tx.clone(),
        );
        self.updaters.insert(
            service.id.clone(),
            RunningUpdater {
                spec_version: version,
                token,
                handle,
            },
        );
    }

    /// Carry out one service's ops: timers in memory, task writes queued in
    /// batches, each sent once full ([`Driver::finish`] sends the rest and
    /// awaits them). Services whose writes were refused are reconciled again
    /// shortly.
    async fn queue_ops(&mut self, pass: &mut PassWrites, service_id: &str, ops: Vec<Op>) {
        let (mut created, mut changed) = (0, 0);
        for op in ops {
            match op {
                Op::Create(task) => {
                    created += 1;
                    self.dirty.creating(&task.id);
                    tracing::debug!(task.id = %task.id, service.id = %service_id, slot = task.slot,
                        node.id = %task.node_id, desired = ?desired(&task), "creating task");
                    pass.push(service_id, Action::Create(Object::Task(task.into())));
                }
                Op::SetDesired { mut task, desired } => {
                    changed += 1;
                    tracing::debug!(task.id = %task.id, service.id = %service_id,
                        from = ?super::task::desired(&task), to = ?desired, "changing desired state");
                    task.desired_state = desired as i32;
                    pass.push(service_id, Action::Update(Object::Task(task.into())));
                }
                Op::Delete(task) => {
                    tracing::debug!(task.id = %task.id, service.id = %service_id, "deleting task");
                    pass.push(service_id, Action::Delete(Object::Task(task.into())));
                }
                Op::StartAt { task_id, at } => {
                    lock(&self.start_at).entry(task_id).or_insert(at);
                }
                Op::WakeAt(at) => self.wake(at, service_id),
            }
        }
        // One info line per service and pass; a line per task (a 100k-replica
        // create would write 100k of them) only at debug.
        if created + changed > 0 {
            tracing::info!(service.id = %service_id, created, desired_changed = changed, "writing tasks");
        }
        if pass.pending.len() >= WRITE_BATCH {
            let mut chunks = batches(std::mem::take(&mut pass.pending));
            // A last, partial batch waits for the next service's actions:
            // small services share proposals.
            if chunks
                .last()
                .is_some_and(|(_, chunk)| chunk.len() < WRITE_BATCH)
            {
                let (owners, chunk) = chunks.pop().expect("checked");
                pass.pending = owners.into_iter().zip(chunk).collect();
            }
            self.send(pass, chunks).await;
        }
    }

    /// Queue the pass's remaining actions and await every outcome; returns
    /// how many actions the pass wrote.
    async fn finish(&mut self, mut pass: PassWrites) -> usize {
        let chunks = batches(std::mem::take(&mut pass.pending));
        self.send(&mut pass, chunks).await;
        while let Some((owners, result)) = pass.in_flight.next().await {
            self.written(owners, result);
        }
        pass.writes
    }

    /// Proposals are queued in order (a service's ops keep their order in
    /// the log) with a few in flight; all commit before the next reconcile
    /// reads the store, so no decision is made twice.
    async fn send(&mut self, pass: &mut PassWrites, chunks: Vec<(Vec<String>, Vec<Action>)>) {
        for (owners, chunk) in chunks {
            if pass.in_flight.len() >= MAX_IN_FLIGHT
                && let Some((owners, result)) = pass.in_flight.next().await
            {
                self.written(owners, result);
            }
            let queued = match self.hand_to_scheduler(chunk).await {
                Ok(queued) => Ok(queued),
                Err(chunk) => self.store.queue_each(chunk).await,
            };
            match queued {
                Ok(queued) => pass
                    .in_flight
                    .push_back(Box::pin(async move { (owners, queued.outcome().await) })),
                Err(err) => self.written(owners, Err(err)),
            }
        }
    }

    /// A batch of task creations goes to the scheduler, which writes the tasks
    /// already placed; anything else (or no scheduler) comes back to be
    /// written here. The batch keeps its order, so refused positions still
    /// name their owners.
    async fn hand_to_scheduler(&mut self, chunk: Vec<Action>) -> Result<Queued, Vec<Action>> {
        let creations_only = chunk
            .iter()
            .all(|a| matches!(a, Action::Create(Object::Task(_))));
        let Some(placer) = self.placer.as_ref().filter(|_| creations_only) else {
            return Err(chunk);
        };
        let tasks = chunk
            .into_iter()
            .filter_map(|a| match a {
                Action::Create(Object::Task(t)) => Some(*t),
                _ => None,
            })
            .collect();
        placer.create(tasks).await.map_err(|tasks| {
            // The scheduler has stopped (leadership is ending): write PENDING.
            self.placer = None;
            tasks
                .into_iter()
                .map(|t| Action::Create(Object::Task(t.into())))
                .collect()
        })
    }

    /// Schedule a retry of the services whose writes were refused or failed:
    /// the retry reconciles from the store again, so a write that did commit
    /// is seen there and not repeated.
    fn written(&mut self, owners: Vec<String>, result: Result<Applied, StoreError>) {
        match result {
            Ok(applied) => {
                let retry = Instant::now() + CONFLICT_RETRY;
                for (pos, err) in applied.refused {
                    tracing::debug!(service.id = %owners[pos], error = %err, "orchestrator write refused; will re-read");
                    self.wake(retry, &owners[pos]);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "orchestrator write failed; retrying");
                let retry = Instant::now() + ERROR_RETRY;
                for owner in owners {
                    self.wake(retry, &owner);
                }
            }
        }
    }
}

/// The writes of one reconcile pass, queued service by service.
#[derive(Default)]
struct PassWrites {
    /// Actions not yet in a proposal, with the services that own them.
    pending: Vec<(String, Action)>,
    /// Queued proposals awaiting their outcome, in log order.
    in_flight: futures::stream::FuturesOrdered<WriteOutcome>,
    /// Actions queued so far.
    writes: usize,
}

type WriteOutcome = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Vec<String>, Result<Applied, StoreError>)> + Send>,
>;

impl PassWrites {
    fn push(&mut self, service_id: &str, action: Action) {
        self.pending.push((service_id.to_string(), action));
        self.writes += 1;
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
