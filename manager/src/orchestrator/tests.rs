//! Driver scenarios on `Store::in_memory()`: the test plays scheduler and agent
//! by writing task states by hand, and waits for the orchestrator with
//! deadlines, never fixed sleeps. This file holds the harness, used by the
//! scenarios beside the modules they drive (`driver_tests.rs`: scaling,
//! restarts, nodes, removal, history, a new leader, with the real scheduler;
//! `updater_tests.rs`: rolling updates), and the scenarios about what the
//! orchestrator leaves alone: a stored spec that today's rules refuse, and a
//! service whose reconcile panicked. Each is marked with why, the other
//! services are served as before, and fixing the spec (or removing the
//! service) ends it.

use std::time::{Duration, Instant};

use shoal_proto::{
    Node, NodeAvailability, NodeSpec, NodeState, NodeStatus, RestartPolicy, Service, ServiceSpec,
    Task, TaskState,
};
use tokio_util::sync::CancellationToken;

use super::task::{desired, is_live, is_terminal, observed};
use crate::config::OrchestratorConfig;
use crate::store::{Action, MemState, Object, Store, StoreError};
use crate::test_fixtures::{DEADLINE, spec};

/// The name of a service whose reconcile panics (a stand-in for a bug).
static PANIC_ON: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Make reconciling the service named `name` panic (`None`: none does).
pub(super) fn panic_on(name: Option<&str>) {
    *PANIC_ON.lock().unwrap() = name.map(str::to_string);
}

pub(super) fn panic_if_asked(service: Option<&Service>) {
    let name = service
        .and_then(|s| s.spec.as_ref())
        .map(|s| s.name.as_str());
    if name.is_some() && PANIC_ON.lock().unwrap().as_deref() == name {
        panic!("injected failure for {}", name.unwrap_or_default());
    }
}

pub(super) struct Harness {
    pub(super) store: Store,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub(super) fn start(history: usize) -> Harness {
        Harness::on(Store::in_memory(), history)
    }

    /// An orchestrator taking over `store` as it is (a new leader).
    pub(super) fn on(store: Store, history: usize) -> Harness {
        let shutdown = CancellationToken::new();
        let config = OrchestratorConfig {
            task_history_limit: history,
        };
        let handle = tokio::spawn(super::driver::run(store.clone(), config, shutdown.clone()));
        Harness {
            store,
            shutdown,
            handle,
            scheduler: None,
        }
    }

    /// The orchestrator with the real scheduler beside it, wired as on a
    /// leader: new tasks go to the scheduler to be created already placed.
    pub(super) fn with_scheduler(history: usize) -> Harness {
        let store = Store::in_memory();
        let shutdown = CancellationToken::new();
        let config = OrchestratorConfig {
            task_history_limit: history,
        };
        let (placer, placements) = crate::scheduler::placer();
        let handle = tokio::spawn(super::run_with_placer(
            store.clone(),
            config,
            Some(placer),
            shutdown.clone(),
        ));
        let scheduler = tokio::spawn(crate::scheduler::driver::run_with_placer(
            store.clone(),
            Some(placements),
            shutdown.clone(),
        ));
        Harness {
            store,
            shutdown,
            handle,
            scheduler: Some(scheduler),
        }
    }

    pub(super) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("the orchestrator stops when cancelled")
            .expect("the orchestrator does not panic");
        if let Some(scheduler) = self.scheduler {
            tokio::time::timeout(DEADLINE, scheduler)
                .await
                .expect("the scheduler stops when cancelled")
                .expect("the scheduler does not panic");
        }
    }

    /// Poll `f` over the tables until it yields, or fail naming `what`.
    pub(super) async fn eventually<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&MemState) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = self.store.read(&mut f) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(super) async fn create_service(&self, spec: ServiceSpec) -> String {
        let service = Service {
            id: shoal_proto::ids::new_id(),
            spec: Some(spec),
            spec_version: 1,
            ..Default::default()
        };
        let id = service.id.clone();
        self.store
            .propose(vec![Action::Create(Object::Service(service.into()))])
            .await
            .expect("create service");
        id
    }

    /// Change a service the way the control API does (re-read on conflict).
    pub(super) async fn update_service(&self, id: &str, f: impl Fn(&mut Service)) {
        loop {
            let mut svc = self
                .store
                .read(|s| s.service(id).cloned())
                .expect("service exists");
            f(&mut svc);
            match self
                .store
                .propose(vec![Action::Update(Object::Service(svc.into()))])
                .await
            {
                Ok(_) => return,
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => panic!("update service: {err}"),
            }
        }
    }

    pub(super) async fn delete_service(&self, id: &str) {
        let svc = self
            .store
            .read(|s| s.service(id).cloned())
            .expect("service exists");
        self.store
            .propose(vec![Action::Delete(Object::Service(svc.into()))])
            .await
            .expect("delete service");
    }

    /// Write a task change as the scheduler or agent would (re-read on conflict).
    pub(super) async fn update_task(&self, id: &str, f: impl Fn(&mut Task)) {
        loop {
            let Some(mut t) = self.store.read(|s| s.task(id).cloned()) else {
                return;
            };
            f(&mut t);
            match self
                .store
                .propose(vec![Action::Update(Object::Task(t.into()))])
                .await
            {
                Ok(_) => return,
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => panic!("update task: {err}"),
            }
        }
    }

    pub(super) async fn set_state(&self, id: &str, state: TaskState) {
        self.update_task(id, |t| {
            let status = t.status.get_or_insert_with(Default::default);
            status.state = state as i32;
            status.timestamp = shoal_proto::now_ms();
        })
        .await;
    }

    /// Nodes READY and active.
    pub(super) async fn ready_nodes(&self, ids: &[&str]) {
        for id in ids {
            self.put_node(id, NodeState::Ready, NodeAvailability::Active)
                .await;
        }
    }

    pub(super) async fn put_node(
        &self,
        id: &str,
        state: NodeState,
        availability: NodeAvailability,
    ) {
        let current = self.store.read(|s| s.node(id).cloned());
        let mut node = current.clone().unwrap_or_else(|| Node {
            id: id.to_string(),
            ..Default::default()
        });
        node.spec = Some(NodeSpec {
            availability: availability as i32,
            ..Default::default()
        });
        node.status = Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        });
        let action = match current {
            Some(_) => Action::Update(Object::Node(node.into())),
            None => Action::Create(Object::Node(node.into())),
        };
        self.store.propose(vec![action]).await.expect("write node");
    }

    /// Wait until the service has `count` tasks (live or not); returns them.
    pub(super) async fn tasks_when(&self, service_id: &str, count: usize) -> Vec<Task> {
        self.eventually(&format!("{count} tasks of {service_id}"), |s| {
            let t: Vec<Task> = s.tasks_of_service(service_id).cloned().collect();
            (t.len() == count).then_some(t)
        })
        .await
    }

    pub(super) fn tasks(&self, service_id: &str) -> Vec<Task> {
        self.store
            .read(|s| s.tasks_of_service(service_id).cloned().collect())
    }

    /// One pass of a well-behaved agent: start what should run, stop what should not.
    pub(super) async fn agent_pass(&self, service_id: &str) -> usize {
        let mut changed = 0;
        for t in self.tasks(service_id) {
            if desired(&t) == TaskState::Running && observed(&t) < TaskState::Running {
                self.set_state(&t.id, TaskState::Running).await;
                changed += 1;
            } else if desired(&t) > TaskState::Running && !is_terminal(&t) {
                self.set_state(&t.id, TaskState::Shutdown).await;
                changed += 1;
            }
        }
        changed
    }

    /// A barrier: once a fresh canary service has its task, every change
    /// committed before it has been reconciled (the driver works in log order).
    pub(super) async fn settle(&self) {
        let canary = self.create_service(replicated(1)).await;
        self.eventually("the canary service has its task", |s| {
            s.tasks_of_service(&canary).next().map(|_| ())
        })
        .await;
    }
}

pub(super) fn live(tasks: &[Task]) -> Vec<&Task> {
    tasks.iter().filter(|t| is_live(t)).collect()
}

pub(super) fn live_slots(tasks: &[Task]) -> Vec<u64> {
    let mut slots: Vec<u64> = live(tasks).iter().map(|t| t.slot).collect();
    slots.sort();
    slots
}

pub(super) fn replicated(replicas: u64) -> ServiceSpec {
    spec(
        &format!("web-{}", shoal_proto::ids::new_id()),
        "nginx:1",
        replicas,
    )
}

pub(super) fn with_restart(mut spec: ServiceSpec, policy: RestartPolicy) -> ServiceSpec {
    spec.task.as_mut().unwrap().restart = Some(policy);
    spec
}

fn error_of(s: &MemState, id: &str) -> Option<String> {
    s.service(id).map(|svc: &Service| svc.error.clone())
}

#[tokio::test]
async fn a_stored_spec_over_the_limits_is_marked_and_left_alone_until_fixed() {
    let h = Harness::start(5);
    // Written straight into the store, as an older version could have: the
    // control API refuses it today.
    let mut huge = replicated(1_000_000_000);
    huge.name = "huge".into();
    let huge = h.create_service(huge).await;
    let calm = h.create_service(replicated(3)).await;

    let error = h
        .eventually("the over-limit service is marked", |s| {
            error_of(s, &huge).filter(|e| !e.is_empty())
        })
        .await;
    assert!(error.contains("replicas"), "names the field: {error}");
    assert!(error.contains("not valid"), "says why: {error}");
    h.eventually("the other service gets its tasks", |s| {
        (s.tasks_of_service(&calm).count() == 3).then_some(())
    })
    .await;
    h.settle().await;
    assert_eq!(h.tasks(&huge).len(), 0, "no task is created for it");

    h.update_service(&huge, |s| s.spec.as_mut().unwrap().replicas = 2)
        .await;
    h.eventually("fixed: its tasks are created and the mark cleared", |s| {
        (s.tasks_of_service(&huge).count() == 2 && error_of(s, &huge)?.is_empty()).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_service_whose_reconcile_panics_is_marked_and_the_others_are_served() {
    let h = Harness::start(5);
    let mut boom = replicated(2);
    boom.name = "boom-in-reconcile".into();
    panic_on(Some(&boom.name));
    let boom = h.create_service(boom).await;
    let error = h
        .eventually("the failing service is marked", |s| {
            error_of(s, &boom).filter(|e| !e.is_empty())
        })
        .await;
    assert!(
        error.contains("injected failure for boom-in-reconcile"),
        "the panic's message is kept: {error}"
    );

    // The orchestrator lives on and serves every other service.
    let calm = h.create_service(replicated(2)).await;
    h.eventually("another service gets its tasks", |s| {
        (s.tasks_of_service(&calm).count() == 2).then_some(())
    })
    .await;
    assert_eq!(h.tasks(&boom).len(), 0);

    // Left alone while its spec stays the same, tried again once it changes.
    panic_on(None);
    h.settle().await;
    assert_eq!(h.tasks(&boom).len(), 0, "not retried on an unchanged spec");
    h.update_service(&boom, |s| s.spec.as_mut().unwrap().replicas = 3)
        .await;
    h.eventually("a new spec is reconciled and the mark cleared", |s| {
        (s.tasks_of_service(&boom).count() == 3 && error_of(s, &boom)?.is_empty()).then_some(())
    })
    .await;
    h.stop().await;
}
