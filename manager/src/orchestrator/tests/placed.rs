//! The orchestrator and the real scheduler together, as on a leader: a new
//! task is created already placed, in one write.

use super::*;
use crate::store::{ChangeKind, Stored};

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
