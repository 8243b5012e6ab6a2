//! Which tasks of a service a log request covers, grouped by the node that
//! holds their containers, with the names `service logs` prints. Pure code over
//! store objects.

use std::collections::{BTreeMap, HashMap};

use shoal_proto::{Task, TaskState};

/// The tasks of one node that a subscription asks it about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct NodeTargets {
    /// Task ids, in id order.
    pub task_ids: Vec<String>,
}

/// What a log request covers: per node, its tasks; per task, its name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Targets {
    pub by_node: BTreeMap<String, NodeTargets>,
    /// task id → (node id, task name).
    pub tasks: HashMap<String, (String, String)>,
}

/// Whether the engine may hold logs for `task`: it has a node, and its agent
/// got far enough to create a container (or reported one). Tasks still waiting
/// for a node, or refused before anything ran, have none.
pub(super) fn may_have_logs(task: &Task) -> bool {
    if task.node_id.is_empty() {
        return false;
    }
    let status = task.status.clone().unwrap_or_default();
    let has_container = status
        .container
        .as_ref()
        .is_some_and(|c| !c.container_id.is_empty());
    has_container || status.state >= TaskState::Preparing as i32
}

/// `<service>.<slot>`, or `<service>.<node id>` for a global service's task:
/// the name `service ps` shows (the CLI appends the task id prefix).
pub(super) fn task_name(task: &Task) -> String {
    if task.slot > 0 {
        format!("{}.{}", task.service_name, task.slot)
    } else {
        format!("{}.{}", task.service_name, task.node_id)
    }
}

/// Group the tasks that may have logs by node.
pub(super) fn targets<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Targets {
    let mut out = Targets::default();
    for task in tasks.into_iter().filter(|t| may_have_logs(t)) {
        out.by_node
            .entry(task.node_id.clone())
            .or_default()
            .task_ids
            .push(task.id.clone());
        out.tasks
            .insert(task.id.clone(), (task.node_id.clone(), task_name(task)));
    }
    for node in out.by_node.values_mut() {
        node.task_ids.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{ContainerStatus, TaskStatus};

    fn task(id: &str, slot: u64, node: &str, state: TaskState, container: &str) -> Task {
        Task {
            id: id.into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            status: Some(TaskStatus {
                state: state as i32,
                container: (!container.is_empty()).then(|| ContainerStatus {
                    container_id: container.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_tasks_whose_engine_may_hold_logs() {
        let tasks = [
            task("running", 1, "n1", TaskState::Running, "c1"),
            task("dead", 1, "n1", TaskState::Failed, "c0"),
            task("preparing", 2, "n2", TaskState::Preparing, ""),
            task("pending", 3, "", TaskState::Pending, ""),
            task("assigned", 3, "n2", TaskState::Assigned, ""),
            task("accepted", 4, "n2", TaskState::Accepted, ""),
        ];
        let t = targets(&tasks);
        let nodes: Vec<(&str, Vec<&str>)> = t
            .by_node
            .iter()
            .map(|(n, x)| (n.as_str(), x.task_ids.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            nodes,
            vec![("n1", vec!["dead", "running"]), ("n2", vec!["preparing"])]
        );
        assert_eq!(t.tasks["running"], ("n1".into(), "web.1".into()));
        assert!(!t.tasks.contains_key("assigned"));
    }

    #[test]
    fn global_tasks_are_named_after_their_node() {
        let global = task("g", 0, "node7", TaskState::Running, "c");
        assert_eq!(task_name(&global), "web.node7");
        assert_eq!(
            task_name(&task("r", 3, "n", TaskState::Running, "c")),
            "web.3"
        );
    }
}
