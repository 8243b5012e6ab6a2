//! The task reaper: bounded history per slot, and the end of removed services.
//!
//! A *dead* task is one the manager no longer wants (desired state above
//! RUNNING) that will never run again: it reported an end, nobody ever took it,
//! or its node is gone. Each slot keeps its newest `history_limit` dead tasks
//! (what `service ps` shows as history); older ones are deleted. A removed
//! service's tasks get desired state REMOVE and are deleted once dead.

use std::collections::BTreeMap;
use std::collections::HashMap;

use shoal_proto::{Node, Task, TaskState};

use super::Op;
use super::task::{
    NodeFate, age_key, desired, is_live, is_terminal, never_assigned, node_fate, slot_key,
};

/// True when no agent will ever run `task` again.
pub fn is_dead(task: &Task, nodes: &HashMap<String, Node>) -> bool {
    !is_live(task)
        && (is_terminal(task) || never_assigned(task) || node_fate(task, nodes) == NodeFate::Lost)
}

/// Deletions that keep at most `history_limit` dead tasks per slot, and remove
/// dead tasks whose desired state is REMOVE.
pub fn reap(tasks: &[Task], nodes: &HashMap<String, Node>, history_limit: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut history: BTreeMap<_, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| is_dead(t, nodes)) {
        if desired(t) >= TaskState::Remove {
            ops.push(Op::Delete(t.clone()));
        } else {
            history.entry(slot_key(t)).or_default().push(t);
        }
    }
    for (_, mut dead) in history {
        if dead.len() <= history_limit {
            continue;
        }
        dead.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
        let excess = dead.len() - history_limit;
        ops.extend(dead.into_iter().take(excess).map(|t| Op::Delete(t.clone())));
    }
    ops
}

/// A removed service: every task it had is to be removed.
pub fn remove_service_tasks(tasks: &[Task]) -> Vec<Op> {
    tasks
        .iter()
        .filter(|t| desired(t) < TaskState::Remove)
        .map(|t| Op::SetDesired {
            task: t.clone(),
            desired: TaskState::Remove,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{node, nodes, service, task};
    use shoal_proto::{NodeAvailability, NodeState};

    fn deleted(ops: &[Op]) -> Vec<&str> {
        let mut ids: Vec<&str> = ops
            .iter()
            .map(|op| match op {
                Op::Delete(t) => t.id.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn history_keeps_the_newest_dead_tasks_per_slot() {
        let svc = service("s", 2);
        let ns = nodes(vec![node("a", NodeState::Ready, NodeAvailability::Active)]);
        let mut tasks: Vec<Task> = (1..=4)
            .map(|i| task(&svc, 1, "a", TaskState::Shutdown, TaskState::Failed, i))
            .collect();
        tasks.push(task(
            &svc,
            1,
            "a",
            TaskState::Running,
            TaskState::Running,
            5,
        ));
        // Slot 2: two dead tasks, within the limit.
        tasks.push(task(
            &svc,
            2,
            "a",
            TaskState::Shutdown,
            TaskState::Complete,
            6,
        ));
        tasks.push(task(
            &svc,
            2,
            "a",
            TaskState::Shutdown,
            TaskState::Shutdown,
            7,
        ));
        // Told to stop, still running: not dead, not counted.
        tasks.push(task(
            &svc,
            2,
            "a",
            TaskState::Shutdown,
            TaskState::Running,
            8,
        ));
        assert_eq!(deleted(&reap(&tasks, &ns, 2)), vec!["t1-a-1", "t1-a-2"]);
        assert_eq!(deleted(&reap(&tasks, &ns, 0)).len(), 6);
    }

    #[test]
    fn never_assigned_and_lost_tasks_are_dead() {
        let svc = service("s", 1);
        let ns = nodes(vec![node(
            "down",
            NodeState::Down,
            NodeAvailability::Active,
        )]);
        let pending = task(&svc, 1, "", TaskState::Shutdown, TaskState::Pending, 1);
        let lost = task(&svc, 1, "down", TaskState::Shutdown, TaskState::Running, 2);
        assert!(is_dead(&pending, &ns));
        assert!(is_dead(&lost, &ns));
        assert_eq!(deleted(&reap(&[pending, lost], &ns, 1)), vec!["t1--1"]);
    }

    #[test]
    fn removed_tasks_go_once_dead() {
        let svc = service("s", 2);
        let ns = nodes(vec![node("a", NodeState::Ready, NodeAvailability::Active)]);
        let tasks = vec![
            task(&svc, 1, "a", TaskState::Running, TaskState::Running, 1),
            task(&svc, 2, "", TaskState::Shutdown, TaskState::Pending, 2),
        ];
        let marks = remove_service_tasks(&tasks);
        assert_eq!(marks.len(), 2);
        assert!(marks.iter().all(|op| matches!(
            op,
            Op::SetDesired {
                desired: TaskState::Remove,
                ..
            }
        )));

        let mut removing: Vec<Task> = tasks.clone();
        for t in &mut removing {
            t.desired_state = TaskState::Remove as i32;
        }
        // The running one must first stop; the never-assigned one goes at once.
        assert_eq!(deleted(&reap(&removing, &ns, 5)), vec!["t2--2"]);
        removing[0].status.as_mut().unwrap().state = TaskState::Shutdown as i32;
        assert_eq!(deleted(&reap(&removing, &ns, 5)).len(), 2);
        assert!(remove_service_tasks(&removing).is_empty());
    }
}
