//! Global services: one live task on every eligible node.
//!
//! A node gets a task when it is READY, ACTIVE and matches the placement
//! constraints. It keeps its task while it is not DOWN, not drained and still
//! matches; a PAUSE node keeps what it runs but gets no replacement. Global
//! tasks are created with their node set (slot 0), so the scheduler only
//! confirms them.

use std::collections::BTreeMap;

use shoal_proto::constraint::Constraint;
use shoal_proto::{Node, NodeAvailability, NodeState, Service, Task, TaskState};

use super::restart::RestartTracker;
use super::slot::{SlotTasks, repair};
use super::task::{SlotKey, availability, is_live, new_task, node_state};
use super::{Ctx, Op};

/// How a node stands towards a global service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eligibility {
    /// Gets a task (and replacements).
    Run,
    /// Keeps a running task, gets no new one (paused, or not READY yet).
    Keep,
    /// Must not run the service (down, drained, or not matching).
    None,
}

pub fn eligibility(node: &Node, constraints: &[Constraint]) -> Eligibility {
    let state = node_state(node);
    let avail = availability(node);
    if state == NodeState::Down
        || avail == NodeAvailability::Drain
        || !constraints.iter().all(|c| c.matches(node))
    {
        return Eligibility::None;
    }
    if state == NodeState::Ready && avail == NodeAvailability::Active {
        Eligibility::Run
    } else {
        Eligibility::Keep
    }
}

/// The service's placement constraints; an unparsable list matches no node
/// (the control API refuses such specs, so this is a defence, not a path).
pub fn constraints(service: &Service) -> Option<Vec<Constraint>> {
    let list = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .map(|p| p.constraints.as_slice())
        .unwrap_or_default();
    match Constraint::parse_all(list) {
        Ok(c) => Some(c),
        Err(err) => {
            tracing::warn!(service.id = %service.id, error = %err, "invalid placement constraints; no node is eligible");
            None
        }
    }
}

/// The actions that bring a global service's tasks in line with the nodes.
pub fn reconcile(
    service: &Service,
    tasks: &[Task],
    ctx: &Ctx<'_>,
    restarts: &mut RestartTracker,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let constraints = constraints(service);
    let mut by_node: BTreeMap<&str, SlotTasks<'_>> = BTreeMap::new();
    for t in tasks {
        let slot = by_node
            .entry(t.node_id.as_str())
            .or_insert_with(|| SlotTasks {
                key: SlotKey::Node(t.node_id.clone()),
                live: Vec::new(),
                all: Vec::new(),
            });
        slot.all.push(t);
        if is_live(t) {
            slot.live.push(t);
        }
    }

    for (node_id, slot) in &by_node {
        if slot.live.is_empty() {
            continue;
        }
        let verdict = match (ctx.nodes.get(*node_id), &constraints) {
            (Some(node), Some(c)) => eligibility(node, c),
            _ => Eligibility::None,
        };
        match verdict {
            Eligibility::None => slot.live.iter().for_each(|t| ops.push(Op::shutdown(t))),
            Eligibility::Keep => repair(service, slot, false, ctx, restarts, &mut ops),
            Eligibility::Run => repair(service, slot, true, ctx, restarts, &mut ops),
        }
    }

    let Some(constraints) = constraints else {
        return ops;
    };
    let mut fresh: Vec<&Node> = ctx
        .nodes
        .values()
        .filter(|n| by_node.get(n.id.as_str()).is_none_or(|s| s.live.is_empty()))
        .filter(|n| eligibility(n, &constraints) == Eligibility::Run)
        .collect();
    fresh.sort_by(|a, b| a.id.cmp(&b.id));
    for node in fresh {
        ops.push(Op::Create(new_task(
            service,
            0,
            &node.id,
            TaskState::Running,
            ctx.now_ms,
        )));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::super::task::desired;
    use super::*;
    use crate::test_fixtures::{global, node, nodes, task};
    use shoal_proto::{NodeSpec, Placement};
    use std::collections::HashMap;
    use std::time::Instant;

    fn run(svc: &Service, tasks: &[Task], nodes: &HashMap<String, Node>) -> Vec<Op> {
        let start_at = HashMap::new();
        let ctx = Ctx {
            now: Instant::now(),
            now_ms: 1,
            nodes,
            start_at: &start_at,
            updating: false,
        };
        reconcile(svc, tasks, &ctx, &mut RestartTracker::default())
    }

    fn summary(ops: &[Op]) -> (Vec<String>, Vec<String>) {
        let mut created = Vec::new();
        let mut shut = Vec::new();
        for op in ops {
            match op {
                Op::Create(t) => {
                    assert_eq!(t.slot, 0);
                    assert_eq!(desired(t), TaskState::Running);
                    created.push(t.node_id.clone());
                }
                Op::SetDesired {
                    task,
                    desired: TaskState::Shutdown,
                } => shut.push(task.node_id.clone()),
                other => panic!("unexpected {other:?}"),
            }
        }
        (created, shut)
    }

    #[test]
    fn one_task_per_ready_active_node() {
        let svc = global("g");
        let ns = nodes(vec![
            node("a", NodeState::Ready, NodeAvailability::Active),
            node("b", NodeState::Ready, NodeAvailability::Active),
            node("new", NodeState::Unknown, NodeAvailability::Active),
            node("paused", NodeState::Ready, NodeAvailability::Pause),
            node("down", NodeState::Down, NodeAvailability::Active),
        ]);
        let existing = vec![task(
            &svc,
            0,
            "a",
            TaskState::Running,
            TaskState::Running,
            1,
        )];
        let (created, shut) = summary(&run(&svc, &existing, &ns));
        assert_eq!(created, vec!["b"]);
        assert!(shut.is_empty());
    }

    #[test]
    fn drained_down_removed_and_unmatched_nodes_lose_their_task() {
        let mut svc = global("g");
        svc.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(Placement {
            constraints: vec!["node.labels.zone==east".into()],
            ..Default::default()
        });
        let mut east = node("east", NodeState::Ready, NodeAvailability::Active);
        east.spec = Some(NodeSpec {
            labels: [("zone".to_string(), "east".to_string())].into(),
            ..Default::default()
        });
        let ns = nodes(vec![
            east,
            node("west", NodeState::Ready, NodeAvailability::Active),
            node("drained", NodeState::Ready, NodeAvailability::Drain),
            node("down", NodeState::Down, NodeAvailability::Active),
            node("paused", NodeState::Ready, NodeAvailability::Pause),
        ]);
        let on = |n: &str| task(&svc, 0, n, TaskState::Running, TaskState::Running, 1);
        let tasks: Vec<Task> = ["west", "drained", "down", "gone"]
            .iter()
            .map(|n| on(n))
            .collect();
        let (created, mut shut) = summary(&run(&svc, &tasks, &ns));
        shut.sort();
        assert_eq!(created, vec!["east"]);
        assert_eq!(shut, vec!["down", "drained", "gone", "west"]);
    }

    #[test]
    fn a_paused_node_keeps_its_task_but_gets_no_replacement() {
        let svc = global("g");
        let ns = nodes(vec![node("p", NodeState::Ready, NodeAvailability::Pause)]);
        let alive = task(&svc, 0, "p", TaskState::Running, TaskState::Running, 1);
        assert!(run(&svc, std::slice::from_ref(&alive), &ns).is_empty());
        let dead = task(&svc, 0, "p", TaskState::Running, TaskState::Failed, 1);
        let (created, shut) = summary(&run(&svc, &[dead], &ns));
        assert!(created.is_empty());
        assert_eq!(shut, vec!["p"]);
    }

    #[test]
    fn a_failed_task_is_restarted_on_its_node() {
        let svc = global("g");
        let ns = nodes(vec![node("a", NodeState::Ready, NodeAvailability::Active)]);
        let dead = task(&svc, 0, "a", TaskState::Running, TaskState::Failed, 1);
        let ops = run(&svc, &[dead], &ns);
        let new = ops
            .iter()
            .find_map(|op| match op {
                Op::Create(t) => Some(t),
                _ => None,
            })
            .expect("a replacement");
        assert_eq!(
            (new.node_id.as_str(), desired(new)),
            ("a", TaskState::Ready)
        );
    }
}
