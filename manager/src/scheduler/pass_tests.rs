//! Unit tests of the scheduling pass on plain data, including a large run.

use std::collections::HashMap;

use shoal_proto::{
    Node, NodeAvailability, NodeState, Placement, ResourceRequirements, Resources,
    SpreadPreference, Task, TaskState,
};

use super::*;
use crate::test_fixtures::{pending, ready_node};

const GIB: i64 = 1 << 30;
const MIB: i64 = 1 << 20;

fn with_placement(mut t: Task, constraints: &[&str], spread: &[&str], max_replicas: u64) -> Task {
    t.spec.get_or_insert_with(Default::default).placement = Some(Placement {
        constraints: constraints.iter().map(|s| s.to_string()).collect(),
        preferences: spread
            .iter()
            .map(|s| SpreadPreference {
                spread_descriptor: s.to_string(),
            })
            .collect(),
        max_replicas,
    });
    t
}

fn with_memory(mut t: Task, memory: i64) -> Task {
    t.spec.get_or_insert_with(Default::default).resources = Some(ResourceRequirements {
        limits: None,
        reservations: Some(Resources {
            nano_cpus: 0,
            memory_bytes: memory,
        }),
    });
    t
}

fn state(nodes: &[Node], tasks: &[Task]) -> SchedulerState {
    SchedulerState::from_snapshot(nodes, tasks)
}

fn per_node(tasks: &[Box<Task>]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for t in tasks {
        *counts.entry(t.node_id.clone()).or_default() += 1;
    }
    counts
}

/// Write the decisions back as the store would, as the driver's event stream does.
fn commit(s: &mut SchedulerState, d: &Decisions) {
    for t in d.assigned.iter().map(|b| &**b).chain(&d.messages) {
        s.upsert_task(t);
    }
}

#[test]
fn spreads_evenly_and_marks_tasks_assigned() {
    let nodes = [
        ready_node("a", &[]),
        ready_node("b", &[]),
        ready_node("c", &[]),
    ];
    let tasks: Vec<Task> = (0..6).map(|i| pending(&format!("t{i}"), "svc")).collect();
    let mut s = state(&nodes, &tasks);
    let d = s.schedule(42);
    assert_eq!(d.assigned.len(), 6);
    assert!(d.messages.is_empty());
    let counts = per_node(&d.assigned);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    for t in &d.assigned {
        let status = t.status.as_ref().unwrap();
        assert_eq!(status.state(), TaskState::Assigned);
        assert_eq!(status.message, ASSIGNED_MESSAGE);
        assert_eq!(status.timestamp, 42);
    }
    assert_eq!(s.pending_count(), 0);
    assert_eq!(s.node_info("a").unwrap().service_tasks("svc"), 2);
    // Nothing left to do, and the store's echo of the assignments changes nothing.
    commit(&mut s, &d);
    assert!(!s.needs_pass());
}

#[test]
fn prefers_nodes_with_fewer_tasks_of_the_service_then_fewer_tasks() {
    let nodes = [ready_node("a", &[]), ready_node("b", &[])];
    let mut running = pending("r1", "other");
    running.node_id = "a".into();
    running.status.as_mut().unwrap().state = TaskState::Running as i32;
    let mut s = state(&nodes, &[running, pending("t1", "svc")]);
    let d = s.schedule(0);
    assert_eq!(d.assigned[0].node_id, "b");
}

#[test]
fn explains_why_no_node_fits() {
    let mut drained = ready_node("d", &[]);
    drained.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    let mut down = ready_node("x", &[]);
    down.status.as_mut().unwrap().state = NodeState::Unknown as i32;
    let nodes = [ready_node("a", &[]), ready_node("b", &[]), drained, down];
    let big = with_memory(pending("t1", "svc"), 2 * GIB);
    let mut s = state(&nodes, &[big]);
    let d = s.schedule(0);
    assert!(d.assigned.is_empty());
    assert_eq!(d.unplaceable, 1);
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().message,
        "no suitable node (2 nodes lack 2 GiB memory; 1 node is drained; 1 node is not ready)"
    );
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().state(),
        TaskState::Pending
    );
    // The same verdict is not written twice, before or after the store echoes it.
    s.retry_all = true;
    assert!(s.schedule(0).messages.is_empty());
    commit(&mut s, &d);
    s.retry_all = true;
    assert!(s.schedule(0).messages.is_empty());
    assert!(!s.needs_pass());

    let mut empty = state(&[], &[pending("t2", "svc")]);
    let d = empty.schedule(0);
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().message,
        "no suitable node (no nodes registered)"
    );
}

#[test]
fn reservations_fill_nodes_up() {
    let mut s = state(
        &[ready_node("a", &[])],
        &(0..3)
            .map(|i| with_memory(pending(&format!("t{i}"), "svc"), 512 * MIB))
            .collect::<Vec<_>>(),
    );
    let d = s.schedule(0);
    assert_eq!(d.assigned.len(), 2);
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().message,
        "no suitable node (1 node lacks 512 MiB memory)"
    );
    commit(&mut s, &d);
    // One task ends: its memory comes back and the waiting task fits.
    let mut done = d.assigned[0].clone();
    done.status.as_mut().unwrap().state = TaskState::Complete as i32;
    s.upsert_task(&done);
    assert!(s.needs_pass());
    let d = s.schedule(0);
    assert_eq!(d.assigned.len(), 1);
}

#[test]
fn constrained_task_waits_for_a_matching_node() {
    let task = with_placement(pending("t1", "svc"), &["node.labels.zone==east"], &[], 0);
    let mut s = state(&[ready_node("a", &[("zone", "west")])], &[task]);
    let d = s.schedule(0);
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().message,
        "no suitable node (1 node does not satisfy constraint node.labels.zone==east)"
    );
    commit(&mut s, &d);
    assert!(!s.needs_pass());
    s.upsert_node(&ready_node("b", &[("zone", "east")]));
    assert!(s.needs_pass());
    let d = s.schedule(0);
    assert_eq!(d.assigned.len(), 1);
    assert_eq!(d.assigned[0].node_id, "b");
}

#[test]
fn invalid_constraint_is_reported() {
    let task = with_placement(pending("t1", "svc"), &["node.foo==x"], &[], 0);
    let mut s = state(&[ready_node("a", &[])], &[task]);
    let d = s.schedule(0);
    assert!(
        d.messages[0]
            .status
            .as_ref()
            .unwrap()
            .message
            .starts_with("cannot schedule: constraint")
    );
}

#[test]
fn max_replicas_per_node() {
    let tasks: Vec<Task> = (0..5)
        .map(|i| with_placement(pending(&format!("t{i}"), "svc"), &[], &[], 2))
        .collect();
    let mut s = state(&[ready_node("a", &[]), ready_node("b", &[])], &tasks);
    let d = s.schedule(0);
    assert_eq!(d.assigned.len(), 4);
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().message,
        "no suitable node (2 nodes already run the maximum of 2 tasks of this service)"
    );
}

#[test]
fn preassigned_tasks_are_checked_against_their_node_only() {
    let mut drained = ready_node("d", &[]);
    drained.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    let mut on_a = pending("ga", "global");
    on_a.node_id = "a".into();
    let mut on_d = pending("gd", "global");
    on_d.node_id = "d".into();
    let mut on_gone = pending("gz", "global");
    on_gone.node_id = "zz".into();
    let mut s = state(
        &[ready_node("a", &[]), ready_node("b", &[]), drained],
        &[on_a, on_d, on_gone],
    );
    let d = s.schedule(0);
    assert_eq!(d.assigned.len(), 1);
    assert_eq!(d.assigned[0].node_id, "a");
    let messages: HashMap<_, _> = d
        .messages
        .iter()
        .map(|t| (t.id.as_str(), t.status.as_ref().unwrap().message.as_str()))
        .collect();
    assert_eq!(messages["gd"], "no suitable node (1 node is drained)");
    assert_eq!(
        messages["gz"],
        "no suitable node (node zz is not registered)"
    );
}

#[test]
fn spread_preference_balances_label_values() {
    let nodes = [
        ready_node("a", &[("zone", "east")]),
        ready_node("b", &[("zone", "east")]),
        ready_node("c", &[("zone", "west")]),
    ];
    let tasks: Vec<Task> = (0..4)
        .map(|i| {
            with_placement(
                pending(&format!("t{i}"), "svc"),
                &[],
                &["node.labels.zone"],
                0,
            )
        })
        .collect();
    let mut s = state(&nodes, &tasks);
    let counts = per_node(&s.schedule(0).assigned);
    assert_eq!(counts["c"], 2, "{counts:?}");
    assert_eq!(counts["a"], 1, "{counts:?}");
    assert_eq!(counts["b"], 1, "{counts:?}");
}

#[test]
fn a_conflicting_change_puts_the_task_back() {
    let mut s = state(&[ready_node("a", &[])], &[pending("t1", "svc")]);
    let d = s.schedule(0);
    assert_eq!(s.node_info("a").unwrap().active_tasks(), 1);
    // Someone else rewrote the task before our assignment committed: the store
    // refuses ours and streams theirs, still PENDING without a node.
    let mut theirs = pending("t1", "svc");
    theirs.meta.as_mut().unwrap().version = 7;
    s.upsert_task(&theirs);
    assert_eq!(s.node_info("a").unwrap().active_tasks(), 0);
    assert_eq!(s.pending_count(), 1);
    assert_eq!(s.schedule(0).assigned.len(), 1);
    drop(d);
}

#[test]
fn tasks_being_stopped_keep_their_host_port() {
    let mut port_task = pending("old", "svc");
    port_task.ports = vec![shoal_proto::PortConfig {
        protocol: 0,
        target_port: 80,
        published_port: 8080,
        publish_mode: shoal_proto::PublishMode::Host as i32,
    }];
    let mut old = port_task.clone();
    old.node_id = "a".into();
    old.status.as_mut().unwrap().state = TaskState::Running as i32;
    old.desired_state = TaskState::Shutdown as i32;
    let mut new = port_task;
    new.id = "new".into();
    let mut s = state(&[ready_node("a", &[])], &[old.clone(), new]);
    let d = s.schedule(0);
    assert_eq!(
        d.messages[0].status.as_ref().unwrap().message,
        "no suitable node (1 node has host port 8080/tcp in use)"
    );
    old.status.as_mut().unwrap().state = TaskState::Shutdown as i32;
    s.upsert_task(&old);
    assert_eq!(s.schedule(0).assigned.len(), 1);
}

#[test]
fn new_tasks_the_pass_leaves_as_they_are_come_back_unchanged() {
    let mut s = state(&[ready_node("a", &[])], &[]);
    let mut waiting = with_placement(pending("w", "svc"), &["node.labels.zone==east"], &[], 0);
    waiting.status.as_mut().unwrap().message =
        "no suitable node (1 node does not satisfy constraint node.labels.zone==east)".into();
    let mut stopped = pending("s", "svc");
    stopped.desired_state = TaskState::Shutdown as i32;
    let (placed, decisions) = s.place_new(vec![waiting.clone(), stopped.clone()], 7);
    assert_eq!(
        placed,
        [waiting, stopped],
        "still pending, and not to schedule"
    );
    assert!(decisions.assigned.is_empty());
    assert!(
        decisions.messages.is_empty(),
        "the message was already said"
    );
    assert_eq!(s.pending.len(), 1, "the waiting task stays pending");
}

#[test]
fn new_tasks_come_back_placed_in_their_order_and_the_others_as_decisions() {
    let mut s = state(
        &[ready_node("a", &[]), ready_node("b", &[])],
        &[pending("old", "svc")],
    );
    let fresh = vec![
        pending("n1", "svc"),
        with_placement(pending("n2", "other"), &["node.labels.zone==east"], &[], 0),
        pending("n3", "svc"),
    ];
    let (placed, decisions) = s.place_new(fresh, 7);
    let ids: Vec<&str> = placed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n3"], "the order given");
    for t in [&placed[0], &placed[2]] {
        assert_eq!(t.status.as_ref().unwrap().state(), TaskState::Assigned);
        assert_eq!(t.status.as_ref().unwrap().message, ASSIGNED_MESSAGE);
        assert!(!t.node_id.is_empty());
    }
    assert_eq!(
        placed[1].status.as_ref().unwrap().state(),
        TaskState::Pending
    );
    assert_eq!(
        placed[1].status.as_ref().unwrap().message,
        "no suitable node (2 nodes do not satisfy constraint node.labels.zone==east)"
    );
    // The task already in the store is decided as before, as an update.
    let others: Vec<&str> = decisions.assigned.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(others, ["old"]);
    assert!(
        decisions.messages.is_empty(),
        "n2's message is in its creation"
    );
    // The new tasks count as placed: three of svc's tasks over two nodes.
    let counts: Vec<u32> = ["a", "b"]
        .iter()
        .map(|n| s.node_info(n).unwrap().service_tasks("svc"))
        .collect();
    assert_eq!(counts.iter().sum::<u32>(), 3, "{counts:?}");
    assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
    assert!(
        !s.needs_pass(),
        "n2 was tried: no pass until something changes"
    );
}

/// The core's throughput shape: 100 000 tasks of 10 services on 1 000 nodes,
/// placed in one pass, evenly. Not timed (debug builds are slow); the timing
/// lives in the benchmark harness.
#[test]
fn places_100k_tasks_on_1k_nodes_evenly() {
    let nodes: Vec<Node> = (0..1000)
        .map(|i| ready_node(&format!("node-{i:04}"), &[]))
        .collect();
    let tasks: Vec<Task> = (0..100_000)
        .map(|i| pending(&format!("task-{i:06}"), &format!("svc-{}", i % 10)))
        .collect();
    let mut s = state(&nodes, &tasks);
    drop(tasks);
    let started = std::time::Instant::now();
    let d = s.schedule(0);
    let elapsed = started.elapsed();
    eprintln!("placed {} tasks in {elapsed:?}", d.assigned.len());
    assert_eq!(d.assigned.len(), 100_000);
    assert_eq!(d.unplaceable, 0);
    for n in &nodes {
        let info = s.node_info(&n.id).unwrap();
        assert_eq!(info.active_tasks(), 100, "{}", n.id);
        for svc in 0..10 {
            assert_eq!(info.service_tasks(&format!("svc-{svc}")), 10, "{}", n.id);
        }
    }
}
