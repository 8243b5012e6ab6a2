//! Unit tests of replicated reconciliation (`replicated.rs`).

use super::super::task::desired;
use super::*;
use crate::test_fixtures::{node, nodes, service, task};
use shoal_proto::{NodeAvailability, NodeState, RestartPolicy};
use std::time::{Duration, Instant};

struct World {
    nodes: HashMap<String, shoal_proto::Node>,
    start_at: HashMap<String, Instant>,
    now: Instant,
}

impl World {
    fn new() -> World {
        World {
            nodes: nodes(vec![
                node("a", NodeState::Ready, NodeAvailability::Active),
                node("b", NodeState::Ready, NodeAvailability::Active),
                node("down", NodeState::Down, NodeAvailability::Active),
                node("drained", NodeState::Ready, NodeAvailability::Drain),
            ]),
            start_at: HashMap::new(),
            now: Instant::now(),
        }
    }
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            now: self.now,
            now_ms: 1_000,
            nodes: &self.nodes,
            start_at: &self.start_at,
            updating: false,
        }
    }
}

fn created(ops: &[Op]) -> Vec<&Task> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Create(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn shut(ops: &[Op]) -> Vec<&str> {
    ops.iter()
        .filter_map(|op| match op {
            Op::SetDesired { task, desired } if *desired == TaskState::Shutdown => {
                Some(task.id.as_str())
            }
            _ => None,
        })
        .collect()
}

fn running(svc: &Service, slot: u64, node: &str, order: i64) -> Task {
    task(
        svc,
        slot,
        node,
        TaskState::Running,
        TaskState::Running,
        order,
    )
}

#[test]
fn any_number_of_replicas_is_created_a_bounded_batch_per_pass() {
    let w = World::new();
    let mut restarts = RestartTracker::default();
    for wanted in [u64::MAX, 1_000_000_000, CREATE_BATCH as u64 + 1] {
        let svc = service("s", wanted);
        let ops = reconcile(&svc, &[], &w.ctx(), &mut restarts);
        assert_eq!(created(&ops).len(), CREATE_BATCH, "{wanted} replicas");
        assert!(
            ops.iter()
                .any(|op| matches!(op, Op::WakeAt(at) if *at == w.now)),
            "the next batch is asked for at once ({wanted} replicas)"
        );
    }
    // The next pass fills the slots after those that exist.
    let svc = service("s", CREATE_BATCH as u64 + 3);
    let existing: Vec<Task> = (1..=CREATE_BATCH as u64)
        .map(|slot| running(&svc, slot, "a", slot as i64))
        .collect();
    let ops = reconcile(&svc, &existing, &w.ctx(), &mut restarts);
    let slots: Vec<u64> = created(&ops).iter().map(|t| t.slot).collect();
    let first = CREATE_BATCH as u64 + 1;
    assert_eq!(slots, vec![first, first + 1, first + 2]);
    assert!(!ops.iter().any(|op| matches!(op, Op::WakeAt(_))));
}

#[test]
fn a_replacement_rejected_during_its_delay_waits_for_that_delay() {
    let mut w = World::new();
    let svc = service("s", 1);
    let mut waiting = task(&svc, 1, "a", TaskState::Ready, TaskState::Rejected, 2);
    waiting.status.as_mut().unwrap().err = "image not found".into();
    let old = task(&svc, 1, "a", TaskState::Shutdown, TaskState::Failed, 1);
    w.start_at
        .insert(waiting.id.clone(), w.now + Duration::from_secs(5));
    let tasks = vec![old.clone(), waiting.clone()];
    let mut restarts = RestartTracker::default();
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut restarts);
    assert!(
        created(&ops).is_empty(),
        "no successor before the delay: {ops:?}"
    );
    assert!(ops.iter().any(|op| matches!(op, Op::WakeAt(_))));
    // Once the delay is over, the slot is restarted as usual.
    w.now += Duration::from_secs(6);
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut restarts);
    assert_eq!(created(&ops).len(), 1, "{ops:?}");
    assert_eq!(shut(&ops), vec![waiting.id.as_str()]);
}

#[test]
fn creates_one_task_per_missing_slot() {
    let w = World::new();
    let svc = service("s", 3);
    let existing = vec![running(&svc, 2, "a", 1)];
    let ops = reconcile(&svc, &existing, &w.ctx(), &mut RestartTracker::default());
    let slots: Vec<u64> = created(&ops).iter().map(|t| t.slot).collect();
    assert_eq!(slots, vec![1, 3]);
    assert!(
        created(&ops)
            .iter()
            .all(|t| desired(t) == TaskState::Running)
    );
    assert!(shut(&ops).is_empty());
}

#[test]
fn in_sync_service_needs_nothing() {
    let w = World::new();
    let svc = service("s", 2);
    let tasks = vec![running(&svc, 1, "a", 1), running(&svc, 2, "b", 2)];
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut RestartTracker::default());
    assert!(ops.is_empty(), "{ops:?}");
}

#[test]
fn scale_down_prefers_idle_slots_then_loaded_nodes_then_high_slots() {
    let w = World::new();
    let svc = service("s", 2);
    let tasks = vec![
        running(&svc, 1, "a", 1),
        running(&svc, 2, "a", 2),
        running(&svc, 3, "b", 3),
        task(&svc, 4, "", TaskState::Running, TaskState::Pending, 4),
    ];
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut RestartTracker::default());
    // Slot 4 is not running; then node a carries two tasks: its higher slot goes.
    assert_eq!(shut(&ops), vec!["t4--4", "t2-a-2"]);
    assert!(created(&ops).is_empty());
}

#[test]
fn tasks_on_a_lost_or_drained_node_are_replaced_at_once() {
    let w = World::new();
    let svc = service("s", 3);
    let tasks = vec![
        running(&svc, 1, "down", 1),
        running(&svc, 2, "drained", 2),
        running(&svc, 3, "gone", 3),
    ];
    let mut restarts = RestartTracker::default();
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut restarts);
    assert_eq!(shut(&ops).len(), 3);
    let new = created(&ops);
    assert_eq!(
        new.iter().map(|t| t.slot).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(new.iter().all(|t| desired(t) == TaskState::Running));
    assert_eq!(restarts.attempts("s", &SlotKey::Replica(1)), 0);
}

#[test]
fn a_failed_task_is_restarted_after_the_delay() {
    let mut w = World::new();
    let mut svc = service("s", 1);
    svc.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(RestartPolicy {
        delay_ms: Some(100),
        ..Default::default()
    });
    let dead = task(&svc, 1, "a", TaskState::Running, TaskState::Failed, 1);
    let mut restarts = RestartTracker::default();
    let ops = reconcile(&svc, std::slice::from_ref(&dead), &w.ctx(), &mut restarts);
    assert_eq!(shut(&ops), vec![dead.id.as_str()]);
    let new = created(&ops)[0].clone();
    assert_eq!((new.slot, desired(&new)), (1, TaskState::Ready));
    let at = ops
        .iter()
        .find_map(|op| match op {
            Op::StartAt { task_id, at } if *task_id == new.id => Some(*at),
            _ => None,
        })
        .expect("a start time");
    assert_eq!(at, w.now + Duration::from_millis(100));

    // Before the start time: nothing but a wake-up.
    let mut old = dead.clone();
    old.desired_state = TaskState::Shutdown as i32;
    let tasks = vec![old, new.clone()];
    w.start_at.insert(new.id.clone(), at);
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut restarts);
    assert!(
        matches!(ops.as_slice(), [Op::WakeAt(t)] if *t == at),
        "{ops:?}"
    );
    // After it: promoted to RUNNING.
    w.now = at;
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut restarts);
    assert!(
        matches!(ops.as_slice(),
        [Op::SetDesired { task, desired: TaskState::Running }] if task.id == new.id),
        "{ops:?}"
    );
}

#[test]
fn a_ready_task_waits_for_the_old_one_to_stop() {
    let mut w = World::new();
    let svc = service("s", 1);
    let old = task(&svc, 1, "a", TaskState::Shutdown, TaskState::Running, 1);
    let new = task(&svc, 1, "", TaskState::Ready, TaskState::Pending, 2);
    w.start_at.insert(new.id.clone(), w.now);
    let tasks = vec![old.clone(), new.clone()];
    let ops = reconcile(&svc, &tasks, &w.ctx(), &mut RestartTracker::default());
    assert!(ops.is_empty(), "{ops:?}");
    let mut stopped = old;
    stopped.status.as_mut().unwrap().state = TaskState::Shutdown as i32;
    let ops = reconcile(
        &svc,
        &[stopped, new],
        &w.ctx(),
        &mut RestartTracker::default(),
    );
    assert!(matches!(
        ops.as_slice(),
        [Op::SetDesired {
            desired: TaskState::Running,
            ..
        }]
    ));
}

#[test]
fn a_ready_task_without_timer_gets_the_full_delay() {
    let w = World::new();
    let svc = service("s", 1);
    let new = task(&svc, 1, "", TaskState::Ready, TaskState::Pending, 2);
    let ops = reconcile(&svc, &[new], &w.ctx(), &mut RestartTracker::default());
    assert!(
        ops.iter().any(
            |op| matches!(op, Op::StartAt { at, .. } if *at == w.now + Duration::from_secs(5))
        )
    );
}

#[test]
fn leftover_duplicates_keep_the_up_to_date_task() {
    let w = World::new();
    let mut svc = service("s", 1);
    let old = running(&svc, 1, "a", 1);
    svc.spec_version = 2;
    let new = running(&svc, 1, "b", 2);
    let ops = reconcile(
        &svc,
        &[old.clone(), new.clone()],
        &w.ctx(),
        &mut RestartTracker::default(),
    );
    assert_eq!(shut(&ops), vec![old.id.as_str()]);
    // While an update runs, the updater owns the slot.
    let ctx = Ctx {
        updating: true,
        ..w.ctx()
    };
    assert!(reconcile(&svc, &[old, new], &ctx, &mut RestartTracker::default()).is_empty());
}
