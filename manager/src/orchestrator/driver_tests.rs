//! The driver end to end through the store (the harness of
//! `orchestrator/tests.rs`): scaling, restarts, lost and drained nodes, global
//! services, service removal and task history, a new leader taking over, and
//! the orchestrator with the real scheduler beside it, as on a leader, where
//! a new task is created already placed, in one write.

use std::time::{Duration, Instant};

use shoal_proto::{
    NodeAvailability, NodeState, RestartPolicy, Service, ServiceMode, Task, TaskState,
};

use crate::orchestrator::task::{desired, is_live, is_terminal, observed};
use crate::orchestrator::tests::{Harness, live, live_slots, replicated, with_restart};
use crate::store::{Action, ChangeKind, Object, Store, Stored};

#[tokio::test]
async fn replicas_are_created_and_scaled() {
    let h = Harness::start(5);
    let id = h.create_service(replicated(3)).await;
    h.eventually("3 tasks in slots 1..3", |s| {
        let tasks: Vec<Task> = s.tasks_of_service(&id).cloned().collect();
        (live_slots(&tasks) == vec![1, 2, 3]).then_some(())
    })
    .await;
    let tasks = h.tasks(&id);
    let svc = h.store.read(|s| s.service(&id).cloned()).unwrap();
    for t in &tasks {
        assert_eq!(desired(t), TaskState::Running);
        assert_eq!(observed(t), TaskState::Pending);
        assert_eq!(
            t.status.as_ref().unwrap().message,
            "pending task scheduling"
        );
        assert_eq!(t.service_name, svc.spec.as_ref().unwrap().name);
        assert_eq!(t.spec, svc.spec.as_ref().unwrap().task);
        assert_eq!(t.spec_version, 1);
    }

    h.update_service(&id, |s| s.spec.as_mut().unwrap().replicas = 5)
        .await;
    h.eventually("5 slots", |s| {
        let tasks: Vec<Task> = s.tasks_of_service(&id).cloned().collect();
        (live_slots(&tasks) == vec![1, 2, 3, 4, 5]).then_some(())
    })
    .await;

    h.update_service(&id, |s| s.spec.as_mut().unwrap().replicas = 1)
        .await;
    h.eventually("1 slot left", |s| {
        let tasks: Vec<Task> = s.tasks_of_service(&id).cloned().collect();
        (live_slots(&tasks) == vec![1]).then_some(())
    })
    .await;
    h.settle().await;
    assert_eq!(
        live_slots(&h.tasks(&id)),
        vec![1],
        "no task comes back after scaling down"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_failed_task_is_replaced_in_its_slot_after_the_delay() {
    let h = Harness::start(5);
    let delay = Duration::from_millis(300);
    let spec = with_restart(
        replicated(1),
        RestartPolicy {
            delay_ms: Some(delay.as_millis() as i64),
            ..Default::default()
        },
    );
    let id = h.create_service(spec).await;
    let first = h
        .eventually("a task", |s| s.tasks_of_service(&id).next().cloned())
        .await;
    h.set_state(&first.id, TaskState::Running).await;
    let failed_at = Instant::now();
    h.set_state(&first.id, TaskState::Failed).await;

    let replacement = h
        .eventually("a READY replacement in slot 1", |s| {
            s.tasks_of_service(&id)
                .find(|t| t.id != first.id && t.slot == 1 && desired(t) == TaskState::Ready)
                .cloned()
        })
        .await;
    let old = h.store.read(|s| s.task(&first.id).cloned()).unwrap();
    assert_eq!(desired(&old), TaskState::Shutdown);
    h.eventually("the replacement is told to run", |s| {
        s.task(&replacement.id)
            .filter(|t| desired(t) == TaskState::Running)
            .map(|_| ())
    })
    .await;
    assert!(
        failed_at.elapsed() >= delay - Duration::from_millis(20),
        "started before the restart delay"
    );
    h.stop().await;
}

#[tokio::test]
async fn max_attempts_stops_restarting() {
    let h = Harness::start(5);
    let spec = with_restart(
        replicated(1),
        RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 2,
            ..Default::default()
        },
    );
    let id = h.create_service(spec).await;
    for round in 0..3 {
        let current = h
            .eventually("a task that should run", |s| {
                s.tasks_of_service(&id)
                    .find(|t| desired(t) == TaskState::Running && !is_terminal(t))
                    .cloned()
            })
            .await;
        assert_eq!(h.tasks(&id).len(), round + 1);
        h.set_state(&current.id, TaskState::Failed).await;
    }
    h.settle().await;
    let tasks = h.tasks(&id);
    assert_eq!(tasks.len(), 3, "two restarts, then no more");
    let left = live(&tasks);
    assert_eq!(left.len(), 1, "the last dead task keeps its slot");
    assert_eq!(observed(left[0]), TaskState::Failed);
    h.stop().await;
}

#[tokio::test]
async fn tasks_of_a_down_node_are_replaced_at_once() {
    let h = Harness::start(5);
    h.ready_nodes(&["a", "b"]).await;
    let id = h.create_service(replicated(2)).await;
    let tasks = h.tasks_when(&id, 2).await;
    for t in &tasks {
        h.update_task(&t.id, |t| {
            t.node_id = "a".into();
            t.status.as_mut().unwrap().state = TaskState::Running as i32;
        })
        .await;
    }
    h.put_node("a", NodeState::Down, NodeAvailability::Active)
        .await;
    let after = h.tasks_when(&id, 4).await;
    for old in &tasks {
        let now = after.iter().find(|t| t.id == old.id).unwrap();
        assert_eq!(desired(now), TaskState::Shutdown);
    }
    let fresh = live(&after);
    assert_eq!(live_slots(&after), vec![1, 2]);
    assert!(
        fresh
            .iter()
            .all(|t| desired(t) == TaskState::Running && t.node_id.is_empty())
    );
    h.stop().await;
}

/// The scheduler placed a task from a view in which its node was up, and the
/// node went down before the assignment committed: the node's change found no
/// task on it, so the assignment itself must bring the replacement.
#[tokio::test]
async fn a_task_assigned_to_a_node_that_went_down_first_is_replaced() {
    let h = Harness::start(5);
    h.ready_nodes(&["a", "b"]).await;
    let id = h.create_service(replicated(2)).await;
    let tasks = h.tasks_when(&id, 2).await;
    h.put_node("a", NodeState::Down, NodeAvailability::Active)
        .await;
    h.settle().await;
    let assign = |node: &'static str| {
        move |t: &mut Task| {
            t.node_id = node.into();
            t.status.as_mut().unwrap().state = TaskState::Assigned as i32;
        }
    };
    h.update_task(&tasks[0].id, assign("a")).await;
    h.update_task(&tasks[1].id, assign("b")).await;
    let after = h.tasks_when(&id, 3).await;
    let lost = after.iter().find(|t| t.id == tasks[0].id).unwrap();
    assert_eq!(desired(lost), TaskState::Shutdown);
    let kept = after.iter().find(|t| t.id == tasks[1].id).unwrap();
    assert_eq!(desired(kept), TaskState::Running, "the task on b stays");
    assert_eq!(live_slots(&after), vec![1, 2]);
    h.stop().await;
}

#[tokio::test]
async fn global_service_follows_the_nodes() {
    let h = Harness::start(5);
    h.put_node("a", NodeState::Ready, NodeAvailability::Active)
        .await;
    let mut spec = replicated(0);
    spec.mode = ServiceMode::Global as i32;
    let id = h.create_service(spec).await;
    let on = |node: &'static str| {
        let id = id.clone();
        move |s: &crate::store::MemState| {
            s.tasks_of_service(&id)
                .find(|t| t.node_id == node && is_live(t))
                .cloned()
        }
    };
    let ta = h.eventually("a task on a", on("a")).await;
    assert_eq!(ta.slot, 0);

    h.put_node("b", NodeState::Unknown, NodeAvailability::Active)
        .await;
    h.settle().await;
    assert!(
        h.store.read(on("b")).is_none(),
        "no task before the node is READY"
    );
    h.put_node("b", NodeState::Ready, NodeAvailability::Active)
        .await;
    h.eventually("a task on b", on("b")).await;

    h.put_node("a", NodeState::Ready, NodeAvailability::Drain)
        .await;
    h.eventually("a's task shut down", |s| {
        s.task(&ta.id)
            .filter(|t| desired(t) == TaskState::Shutdown)
            .map(|_| ())
    })
    .await;
    h.settle().await;
    assert!(
        h.store.read(on("a")).is_none(),
        "a drained node gets no new task"
    );
    h.stop().await;
}

#[tokio::test]
async fn deleted_service_tasks_are_removed_then_deleted() {
    let h = Harness::start(5);
    h.put_node("n", NodeState::Ready, NodeAvailability::Active)
        .await;
    let id = h.create_service(replicated(2)).await;
    let tasks = h.tasks_when(&id, 2).await;
    for t in &tasks {
        h.update_task(&t.id, |t| {
            t.node_id = "n".into();
            t.status.as_mut().unwrap().state = TaskState::Running as i32;
        })
        .await;
    }
    h.delete_service(&id).await;
    h.eventually("every task desired REMOVE", |s| {
        let t: Vec<&Task> = s.tasks_of_service(&id).collect();
        (t.len() == 2 && t.iter().all(|t| desired(t) == TaskState::Remove)).then_some(())
    })
    .await;
    h.agent_pass(&id).await;
    h.eventually("tasks deleted once stopped", |s| {
        s.tasks_of_service(&id).next().is_none().then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn history_is_bounded_per_slot() {
    let h = Harness::start(2);
    let spec = with_restart(
        replicated(1),
        RestartPolicy {
            delay_ms: Some(0),
            ..Default::default()
        },
    );
    let id = h.create_service(spec).await;
    for _ in 0..5 {
        let current = h
            .eventually("a task that should run", |s| {
                s.tasks_of_service(&id)
                    .find(|t| desired(t) == TaskState::Running && !is_terminal(t))
                    .cloned()
            })
            .await;
        h.set_state(&current.id, TaskState::Failed).await;
    }
    h.eventually("one live task and two dead ones", |s| {
        let t: Vec<Task> = s.tasks_of_service(&id).cloned().collect();
        let dead = t.iter().filter(|t| !is_live(t)).count();
        (t.len() == 3 && dead == 2 && live(&t).iter().all(|t| !is_terminal(t))).then_some(())
    })
    .await;
    h.stop().await;
}

/// A pass queues each service's writes as soon as it is decided, yet small
/// services still share proposals: a proposal is sent once a thousand
/// actions wait, and the remainder goes with the next services' actions.
#[tokio::test]
async fn a_pass_writes_services_in_shared_proposals_of_a_thousand() {
    let store = Store::in_memory();
    for (n, replicas) in [3, 2_500, 3, 3, 3].into_iter().enumerate() {
        let mut spec = replicated(replicas);
        spec.name = format!("svc-{n}");
        let service = Service {
            id: shoal_proto::ids::new_id(),
            spec: Some(spec),
            spec_version: 1,
            ..Default::default()
        };
        store
            .propose(vec![Action::Create(Object::Service(service.into()))])
            .await
            .expect("create service");
    }
    // One orchestrator pass finds all five services at once.
    let h = Harness::on(store, 5);
    h.eventually("2,512 tasks", |s| (s.task_count() == 2_512).then_some(()))
        .await;
    let versions: std::collections::BTreeSet<u64> = h.store.read(|s| {
        s.tasks()
            .map(|t| t.meta.as_ref().expect("stored").version)
            .collect()
    });
    assert_eq!(
        versions.len(),
        3,
        "2,512 creations in proposals of 1,000, 1,000 and 512: {versions:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_new_leader_reconciles_what_it_finds() {
    // State written while no orchestrator ran: a service without tasks, and a
    // READY replacement whose timer died with the old leader.
    let store = Store::in_memory();
    let spec = with_restart(
        replicated(2),
        RestartPolicy {
            delay_ms: Some(100),
            ..Default::default()
        },
    );
    let service = Service {
        id: shoal_proto::ids::new_id(),
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    };
    let waiting = crate::orchestrator::task::new_task(&service, 1, "", TaskState::Ready, 1);
    store
        .propose(vec![
            Action::Create(Object::Service(service.clone().into())),
            Action::Create(Object::Task(waiting.clone().into())),
        ])
        .await
        .unwrap();

    let h = Harness::on(store, 5);
    let started = std::time::Instant::now();
    h.eventually("slot 2 filled", |s| {
        s.tasks_of_service(&service.id)
            .find(|t| t.slot == 2)
            .map(|_| ())
    })
    .await;
    h.eventually("the READY task starts after its delay", |s| {
        s.task(&waiting.id)
            .filter(|t| desired(t) == TaskState::Running)
            .map(|_| ())
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert_eq!(h.tasks(&service.id).len(), 2);
    h.stop().await;
}

fn on_node(tasks: &[Task], node: &str) -> usize {
    tasks.iter().filter(|t| t.node_id == node).count()
}

#[tokio::test]
async fn new_tasks_are_written_once_already_assigned_and_replaced_when_their_node_is_lost() {
    let h = Harness::with_scheduler(5);
    h.ready_nodes(&["a", "b", "c"]).await;
    let mut changes = h.store.subscribe();
    let id = h.create_service(replicated(6)).await;
    let tasks = h
        .eventually("6 tasks assigned", |s| {
            let t: Vec<Task> = s.tasks_of_service(&id).cloned().collect();
            (t.len() == 6 && t.iter().all(|t| observed(t) == TaskState::Assigned)).then_some(t)
        })
        .await;
    for node in ["a", "b", "c"] {
        assert_eq!(on_node(&tasks, node), 2, "spread evenly: {tasks:#?}");
    }
    let mut task_changes = Vec::new();
    while let Ok(batch) = changes.try_recv() {
        for c in &batch.changes {
            if let Stored::Task(t) = &c.object {
                task_changes.push((c.kind, t.id.clone()));
            }
        }
    }
    assert_eq!(
        task_changes.len(),
        6,
        "one write per task: {task_changes:?}"
    );
    assert!(task_changes.iter().all(|(k, _)| *k == ChangeKind::Created));

    // Node a is lost: its tasks are shut down and replaced on b and c.
    h.put_node("a", NodeState::Down, NodeAvailability::Active)
        .await;
    let live_now = h
        .eventually("6 live tasks assigned to b and c", |s| {
            let t: Vec<Task> = s
                .tasks_of_service(&id)
                .filter(|t| desired(t) <= TaskState::Running)
                .cloned()
                .collect();
            let placed = t.len() == 6
                && t.iter()
                    .all(|t| t.node_id != "a" && observed(t) == TaskState::Assigned);
            placed.then_some(t)
        })
        .await;
    assert_eq!(on_node(&live_now, "b") + on_node(&live_now, "c"), 6);
    h.stop().await;
}

#[tokio::test]
async fn a_task_no_node_can_take_is_created_pending_with_the_reason() {
    let h = Harness::with_scheduler(5);
    h.ready_nodes(&["a"]).await;
    let mut spec = replicated(2);
    spec.task.get_or_insert_with(Default::default).placement = Some(shoal_proto::Placement {
        constraints: vec!["node.labels.zone==east".into()],
        ..Default::default()
    });
    let id = h.create_service(spec).await;
    let tasks = h.tasks_when(&id, 2).await;
    for t in &tasks {
        assert_eq!(observed(t), TaskState::Pending);
        let message = t.status.as_ref().map(|s| s.message.as_str()).unwrap_or("");
        assert_eq!(
            message,
            "no suitable node (1 node does not satisfy constraint node.labels.zone==east)"
        );
    }
    h.stop().await;
}
