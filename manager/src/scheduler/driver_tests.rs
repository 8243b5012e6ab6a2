//! The driver against `Store::in_memory()`: snapshot, change stream, batching.

use std::collections::HashMap;
use std::time::Duration;

use shoal_proto::{Node, Task, TaskState};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::scheduler::pass::ASSIGNED_MESSAGE;
use crate::store::{Action, Object, Store};
use crate::test_fixtures::{pending, ready_node, task_state};

async fn create(store: &Store, objects: Vec<Object>) {
    let actions = objects.into_iter().map(Action::Create).collect();
    store.propose(actions).await.expect("create");
}

fn nodes(ids: &[&str]) -> Vec<Object> {
    ids.iter()
        .map(|id| Object::Node(Box::new(ready_node(id, &[]))))
        .collect()
}

fn tasks(prefix: &str, n: usize) -> Vec<Object> {
    (0..n)
        .map(|i| Object::Task(Box::new(pending(&format!("{prefix}{i:05}"), "svc"))))
        .collect()
}

/// Poll the store until `check` holds, or fail after a deadline.
async fn eventually(store: &Store, what: &str, check: impl Fn(&[Task]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all: Vec<Task> = store.read(|s| s.tasks().cloned().collect());
        if check(&all) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start(store: &Store) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run(store.clone(), shutdown.clone()));
    (shutdown, handle)
}

#[tokio::test]
async fn assigns_pending_tasks_evenly() {
    let store = Store::in_memory();
    create(&store, nodes(&["a", "b", "c"])).await;
    // Some tasks exist before the scheduler starts, others arrive after.
    create(&store, tasks("early", 3)).await;
    let (shutdown, handle) = start(&store);
    create(&store, tasks("late", 3)).await;
    eventually(&store, "6 assigned tasks", |all| {
        all.len() == 6 && all.iter().all(|t| task_state(t) == TaskState::Assigned)
    })
    .await;
    let all: Vec<Task> = store.read(|s| s.tasks().cloned().collect());
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for t in &all {
        *per_node.entry(t.node_id.as_str()).or_default() += 1;
        assert_eq!(t.status.as_ref().unwrap().message, ASSIGNED_MESSAGE);
        assert!(t.status.as_ref().unwrap().timestamp > 0);
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn constrained_task_waits_with_a_reason_then_lands_on_a_matching_node() {
    let store = Store::in_memory();
    create(&store, nodes(&["a"])).await;
    let (shutdown, handle) = start(&store);
    let mut task = pending("t1", "svc");
    task.spec.as_mut().unwrap().placement = Some(shoal_proto::Placement {
        constraints: vec!["node.labels.zone==east".into()],
        ..Default::default()
    });
    create(&store, vec![Object::Task(task.into())]).await;
    let reason = "no suitable node (1 node does not satisfy constraint node.labels.zone==east)";
    eventually(&store, "an explained pending task", |all| {
        all[0].status.as_ref().unwrap().message == reason
    })
    .await;
    assert_eq!(
        task_state(&store.read(|s| s.task("t1").cloned()).unwrap()),
        TaskState::Pending
    );

    let east: Node = ready_node("east-1", &[("zone", "east")]);
    create(&store, vec![Object::Node(east.into())]).await;
    eventually(&store, "the task assigned to east-1", |all| {
        task_state(&all[0]) == TaskState::Assigned && all[0].node_id == "east-1"
    })
    .await;
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn commits_large_batches_in_chunks() {
    let store = Store::in_memory();
    create(&store, nodes(&["a", "b", "c", "d"])).await;
    let (shutdown, handle) = start(&store);
    // More than CHUNK * MAX_IN_FLIGHT updates in one pass.
    let n = CHUNK * MAX_IN_FLIGHT + 500;
    create(&store, tasks("t", n)).await;
    eventually(&store, "all tasks assigned", |all| {
        all.len() == n && all.iter().all(|t| task_state(t) == TaskState::Assigned)
    })
    .await;
    let per_node = store.read(|s| ["a", "b", "c", "d"].map(|id| s.tasks_on_node(id).count()));
    assert!(per_node.iter().all(|&c| c == n / 4), "{per_node:?}");
    shutdown.cancel();
    handle.await.unwrap();
}

fn start_with_placer(
    store: &Store,
) -> (
    crate::scheduler::Placer,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (placer, placements) = crate::scheduler::placer();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(run_with_placer(
        store.clone(),
        Some(placements),
        shutdown.clone(),
    ));
    (placer, shutdown, handle)
}

#[tokio::test]
async fn new_tasks_handed_over_are_written_once_already_placed() {
    let store = Store::in_memory();
    create(&store, nodes(&["a", "b"])).await;
    let (placer, shutdown, handle) = start_with_placer(&store);
    let mut changes = store.subscribe();
    let mut constrained = pending("east", "svc");
    constrained.spec.as_mut().unwrap().placement = Some(shoal_proto::Placement {
        constraints: vec!["node.labels.zone==east".into()],
        ..Default::default()
    });
    let fresh: Vec<Task> = (0..4)
        .map(|i| pending(&format!("t{i}"), "svc"))
        .chain([constrained])
        .collect();
    let Ok(queued) = placer.create(fresh).await else {
        panic!("the scheduler is running");
    };
    let applied = queued.outcome().await.expect("committed");
    assert!(applied.refused.is_empty());

    let all: Vec<Task> = store.read(|s| s.tasks().cloned().collect());
    assert_eq!(all.len(), 5);
    let assigned: Vec<&Task> = all
        .iter()
        .filter(|t| task_state(t) == TaskState::Assigned)
        .collect();
    assert_eq!(assigned.len(), 4);
    assert_eq!(assigned.iter().filter(|t| t.node_id == "a").count(), 2);
    let east = store.read(|s| s.task("east").cloned()).unwrap();
    assert_eq!(task_state(&east), TaskState::Pending);
    let message = east
        .status
        .as_ref()
        .map(|s| s.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("do not satisfy constraint node.labels.zone==east"),
        "the reason is written with the task: {east:?}"
    );
    // One change per task, a creation: no second write to assign it.
    let mut writes = 0;
    while let Ok(batch) = changes.try_recv() {
        for c in &batch.changes {
            assert_eq!(c.kind, crate::store::ChangeKind::Created, "{c:?}");
            writes += 1;
        }
    }
    assert_eq!(writes, 5);
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_refused_creation_gives_its_place_back() {
    let store = Store::in_memory();
    create(&store, nodes(&["a"])).await;
    // A task of that id exists already (finished, so the scheduler ignores it).
    let mut done = pending("dup", "other");
    done.status.as_mut().unwrap().state = TaskState::Complete as i32;
    done.desired_state = TaskState::Shutdown as i32;
    create(&store, vec![Object::Task(done.into())]).await;
    let (placer, shutdown, handle) = start_with_placer(&store);
    let one_per_node = |id: &str| {
        let mut t = pending(id, "svc");
        t.spec.as_mut().unwrap().placement = Some(shoal_proto::Placement {
            max_replicas: 1,
            ..Default::default()
        });
        t
    };
    let Ok(queued) = placer.create(vec![one_per_node("dup")]).await else {
        panic!("the scheduler is running");
    };
    let applied = queued.outcome().await.expect("committed");
    assert_eq!(applied.refused.len(), 1, "the id is taken");
    // The refused task held node a's only place for svc: it must be free again.
    let Ok(queued) = placer.create(vec![one_per_node("next")]).await else {
        panic!("the scheduler is running");
    };
    queued.outcome().await.expect("committed");
    let next = store.read(|s| s.task("next").cloned()).unwrap();
    assert_eq!(task_state(&next), TaskState::Assigned, "{next:?}");
    assert_eq!(next.node_id, "a");
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_stopped_scheduler_gives_the_tasks_back() {
    let store = Store::in_memory();
    let (placer, shutdown, handle) = start_with_placer(&store);
    shutdown.cancel();
    handle.await.unwrap();
    let back = placer.create(vec![pending("t", "svc")]).await;
    assert!(matches!(back, Err(tasks) if tasks.len() == 1 && tasks[0].id == "t"));
}
