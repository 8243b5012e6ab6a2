//! The vocabulary every reconciler shares: what a task's desired and observed
//! states mean for its slot, whether the node under it can still run it, and
//! how a new task is stamped out of its service.

use std::collections::HashMap;
use std::time::Duration;

use shoal_proto::state::from_i32;
use shoal_proto::{
    Node, NodeAvailability, NodeState, RestartCondition, Service, ServiceMode, Task, TaskSpec,
    TaskState, TaskStatus,
};

/// Swarm's restart delay when the policy leaves it unset.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Status message of a task nobody has placed yet.
pub const PENDING_MESSAGE: &str = "pending task scheduling";

/// Where a task lives within its service: a replica number, or (global mode)
/// the node it runs on. One live task per key is the goal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKey {
    Replica(u64),
    Node(String),
}

impl std::fmt::Display for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotKey::Replica(n) => write!(f, "slot {n}"),
            SlotKey::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// The slot key of a task: its slot number, or its node for slot 0 (global).
pub fn slot_key(task: &Task) -> SlotKey {
    if task.slot > 0 {
        SlotKey::Replica(task.slot)
    } else {
        SlotKey::Node(task.node_id.clone())
    }
}

pub fn desired(task: &Task) -> TaskState {
    from_i32(task.desired_state)
}

pub fn observed(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .map(|s| from_i32(s.state))
        .unwrap_or(TaskState::New)
}

/// A task that still holds its slot: the manager wants it prepared or running.
pub fn is_live(task: &Task) -> bool {
    desired(task) <= TaskState::Running
}

/// The task's process is over (or will never start).
pub fn is_terminal(task: &Task) -> bool {
    shoal_proto::state::is_terminal(observed(task))
}

/// No agent ever took the task, so no agent will ever report on it.
pub fn never_assigned(task: &Task) -> bool {
    task.node_id.is_empty() || observed(task) < TaskState::Assigned
}

pub fn is_global(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .is_some_and(|s| s.mode() == ServiceMode::Global)
}

pub fn replicas(service: &Service) -> u64 {
    service.spec.as_ref().map(|s| s.replicas).unwrap_or(0)
}

pub fn service_name(service: &Service) -> &str {
    crate::store::service_name(service)
}

/// What the node under a task says about the task's future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFate {
    /// Not assigned yet, or on a node that can keep running it.
    Fine,
    /// The node is DOWN or gone: whatever ran there is lost.
    Lost,
    /// The node is drained: its tasks must move.
    Drained,
}

pub fn node_fate(task: &Task, nodes: &HashMap<String, Node>) -> NodeFate {
    if task.node_id.is_empty() {
        return NodeFate::Fine;
    }
    fate_on(nodes.get(&task.node_id))
}

/// The fate of the tasks on `node` (`None`: a node that is gone).
pub fn fate_on(node: Option<&Node>) -> NodeFate {
    match node {
        None => NodeFate::Lost,
        Some(node) if node_state(node) == NodeState::Down => NodeFate::Lost,
        Some(node) if availability(node) == NodeAvailability::Drain => NodeFate::Drained,
        Some(_) => NodeFate::Fine,
    }
}

pub fn node_state(node: &Node) -> NodeState {
    node.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(NodeState::Unknown)
}

pub fn availability(node: &Node) -> NodeAvailability {
    node.spec
        .as_ref()
        .map(|s| s.availability())
        .unwrap_or(NodeAvailability::Active)
}

/// True while a task that was told to stop may still be running: its agent took
/// it, has not reported an end, and its node is alive to report one.
pub fn still_stopping(task: &Task, nodes: &HashMap<String, Node>) -> bool {
    !is_live(task)
        && !is_terminal(task)
        && !never_assigned(task)
        && node_fate(task, nodes) != NodeFate::Lost
}

/// The restart policy's delay (Swarm's 5 s when unset).
pub fn restart_delay(spec: Option<&TaskSpec>) -> Duration {
    match spec
        .and_then(|s| s.restart.as_ref())
        .and_then(|r| r.delay_ms)
    {
        Some(ms) => Duration::from_millis(ms.max(0) as u64),
        None => DEFAULT_RESTART_DELAY,
    }
}

pub fn restart_condition(spec: Option<&TaskSpec>) -> RestartCondition {
    spec.and_then(|s| s.restart.as_ref())
        .map(|r| r.condition())
        .unwrap_or(RestartCondition::Any)
}

/// A fresh task for `slot` (0 with `node_id` for global services), built from
/// the service's current template.
pub fn new_task(
    service: &Service,
    slot: u64,
    node_id: &str,
    desired: TaskState,
    now_ms: i64,
) -> Task {
    // Borrowed, not copied: a creation pass makes thousands of tasks from
    // one service, and the task spec is shared with each of them.
    let spec = service.spec.as_ref();
    Task {
        id: shoal_proto::ids::new_id(),
        meta: None,
        service_id: service.id.clone(),
        service_name: spec.map(|s| s.name.clone()).unwrap_or_default(),
        slot,
        node_id: node_id.to_string(),
        spec: spec.and_then(|s| s.task.clone()),
        spec_version: service.spec_version,
        desired_state: desired as i32,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            timestamp: now_ms,
            message: PENDING_MESSAGE.to_string(),
            ..Default::default()
        }),
        ports: spec
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| e.ports.clone())
            .unwrap_or_default(),
        service_labels: spec.map(|s| s.labels.clone()).unwrap_or_default(),
    }
}

/// Creation order, oldest first: store creation time, then status time, then id.
pub fn age_key(task: &Task) -> (i64, i64, &str) {
    let created = task.meta.as_ref().map(|m| m.created_at).unwrap_or(i64::MAX);
    let status = task
        .status
        .as_ref()
        .map(|s| s.timestamp)
        .unwrap_or_default();
    (created, status, task.id.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{node, nodes, service, task};

    #[test]
    fn new_task_copies_the_template() {
        let svc = service("s1", 2);
        let t = new_task(&svc, 2, "", TaskState::Running, 42);
        assert_eq!(t.service_id, "s1");
        assert_eq!(t.service_name, "svc-s1");
        assert_eq!(t.slot, 2);
        assert_eq!(desired(&t), TaskState::Running);
        assert_eq!(observed(&t), TaskState::Pending);
        assert_eq!(t.status.as_ref().unwrap().message, PENDING_MESSAGE);
        assert_eq!(t.id.len(), shoal_proto::ids::ID_LEN);
    }

    #[test]
    fn node_fate_reads_state_and_availability() {
        let svc = service("s", 1);
        let ns = nodes(vec![
            node("up", NodeState::Ready, NodeAvailability::Active),
            node("down", NodeState::Down, NodeAvailability::Active),
            node("drained", NodeState::Ready, NodeAvailability::Drain),
        ]);
        let on = |n: &str| task(&svc, 1, n, TaskState::Running, TaskState::Running, 1);
        assert_eq!(node_fate(&on(""), &ns), NodeFate::Fine);
        assert_eq!(node_fate(&on("up"), &ns), NodeFate::Fine);
        assert_eq!(node_fate(&on("down"), &ns), NodeFate::Lost);
        assert_eq!(node_fate(&on("gone"), &ns), NodeFate::Lost);
        assert_eq!(node_fate(&on("drained"), &ns), NodeFate::Drained);
    }

    #[test]
    fn stopping_means_assigned_alive_and_not_over() {
        let svc = service("s", 1);
        let ns = nodes(vec![
            node("up", NodeState::Ready, NodeAvailability::Active),
            node("down", NodeState::Down, NodeAvailability::Active),
        ]);
        let t = |n: &str, d, o| task(&svc, 1, n, d, o, 1);
        assert!(still_stopping(
            &t("up", TaskState::Shutdown, TaskState::Running),
            &ns
        ));
        assert!(!still_stopping(
            &t("up", TaskState::Shutdown, TaskState::Shutdown),
            &ns
        ));
        assert!(!still_stopping(
            &t("up", TaskState::Running, TaskState::Running),
            &ns
        ));
        assert!(!still_stopping(
            &t("down", TaskState::Shutdown, TaskState::Running),
            &ns
        ));
        assert!(!still_stopping(
            &t("", TaskState::Shutdown, TaskState::Pending),
            &ns
        ));
    }

    #[test]
    fn restart_delay_defaults_to_five_seconds() {
        assert_eq!(restart_delay(None), DEFAULT_RESTART_DELAY);
        let spec = TaskSpec {
            restart: Some(shoal_proto::RestartPolicy {
                delay_ms: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(restart_delay(Some(&spec)), Duration::ZERO);
    }
}
