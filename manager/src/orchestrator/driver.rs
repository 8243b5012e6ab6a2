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

use shoal_proto::{Node, Service, Task, TaskState, UpdateState};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::restart::RestartTracker;
use super::task::{desired, service_name};
use super::update::stale_slots;
use super::updater::{self, StartTimes, UpdateDone, UpdateOutcome, lock};
use super::{Ctx, Op, reconcile_service};
use crate::config::OrchestratorConfig;
use crate::store::{Action, ChangeBatch, Object, Store};

/// Actions per proposal: keeps each Raft entry far below sled's blob threshold.
const WRITE_BATCH: usize = 100;
/// Pause before retrying services whose writes were refused (lost a race).
const CONFLICT_RETRY: Duration = Duration::from_millis(20);
/// Pause before retrying after the store refused a whole proposal.
const ERROR_RETRY: Duration = Duration::from_millis(500);
/// Start times set by updaters survive this long before their task exists.
const START_TIME_GRACE: Duration = Duration::from_secs(30);

/// Run the orchestrator until `shutdown` is cancelled (leadership lost).
pub async fn run(store: Store, config: OrchestratorConfig, shutdown: CancellationToken) {
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

/// What changed since the last pass.
#[derive(Default)]
struct Dirty {
    all: bool,
    services: HashSet<String>,
    nodes: HashSet<String>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty() && self.nodes.is_empty()
    }

    fn note(&mut self, batch: &ChangeBatch) {
        for change in &batch.changes {
            match &change.object {
                Object::Service(s) => {
                    self.services.insert(s.id.clone());
                }
                Object::Task(t) => {
                    self.services.insert(t.service_id.clone());
                }
                Object::Node(n) => {
                    self.nodes.insert(n.id.clone());
                }
                Object::Cluster(_) => {}
            }
        }
    }
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
                                    Err(TryRecvError::Empty) => break,
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
        let (work, nodes) = self.store.read(|s| {
            let mut ids: HashSet<String> = dirty.services;
            if dirty.all {
                ids.extend(s.services().map(|svc| svc.id.clone()));
                ids.extend(s.tasks().map(|t| t.service_id.clone()));
            }
            if !dirty.nodes.is_empty() {
                for node in &dirty.nodes {
                    ids.extend(s.tasks_on_node(node).map(|t| t.service_id.clone()));
                }
                ids.extend(
                    s.services()
                        .filter(|svc| super::task::is_global(svc))
                        .map(|svc| svc.id.clone()),
                );
            }
            let work: Vec<Work> = ids
                .into_iter()
                .map(|id| {
                    let service = s.service(&id).cloned();
                    let tasks = s.tasks_of_service(&id).cloned().collect();
                    (id, service, tasks)
                })
                .collect();
            let nodes: HashMap<String, Node> =
                s.nodes().map(|n| (n.id.clone(), n.clone())).collect();
            (work, nodes)
        });
        let start_at = self.prune_start_times(&work, now);

        let mut ops: Vec<(String, Op)> = Vec::new();
        for (id, service, tasks) in &work {
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
            let planned = reconcile_service(
                service.as_ref(),
                tasks,
                &ctx,
                &mut self.restarts,
                self.config.task_history_limit,
            );
            ops.extend(planned.into_iter().map(|op| (id.clone(), op)));
        }
        self.write(ops).await;
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
        if !unfinished && stale_slots(service, tasks, nodes).is_empty() {
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

    /// Carry out the ops: timers in memory, task writes in batches. Services
    /// whose writes were refused are reconciled again shortly.
    async fn write(&mut self, ops: Vec<(String, Op)>) {
        let mut actions: Vec<(String, Action)> = Vec::new();
        for (service_id, op) in ops {
            match op {
                Op::Create(task) => {
                    tracing::info!(task.id = %task.id, service.id = %service_id, slot = task.slot,
                        node.id = %task.node_id, desired = ?desired(&task), "creating task");
                    actions.push((service_id, Action::Create(Object::Task(task))));
                }
                Op::SetDesired { mut task, desired } => {
                    tracing::info!(task.id = %task.id, service.id = %service_id,
                        from = ?super::task::desired(&task), to = ?desired, "changing desired state");
                    task.desired_state = desired as i32;
                    actions.push((service_id, Action::Update(Object::Task(task))));
                }
                Op::Delete(task) => {
                    tracing::debug!(task.id = %task.id, service.id = %service_id, "deleting task");
                    actions.push((service_id, Action::Delete(Object::Task(task))));
                }
                Op::StartAt { task_id, at } => {
                    lock(&self.start_at).entry(task_id).or_insert(at);
                }
                Op::WakeAt(at) => self.wake(at, &service_id),
            }
        }
        let mut actions = actions.into_iter().peekable();
        while actions.peek().is_some() {
            let (owners, chunk): (Vec<String>, Vec<Action>) =
                actions.by_ref().take(WRITE_BATCH).unzip();
            match self.store.propose_each(chunk).await {
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
}
