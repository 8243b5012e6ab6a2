//! Replicated services: exactly `replicas` occupied slots, one live task each.
//!
//! Scaling down shuts down whole slots, choosing first those whose task is not
//! running, then those on the nodes that run the most tasks of the service, then
//! the highest slot numbers. Scaling up fills the lowest free slot numbers, so a
//! service that was never scaled down has slots 1..=replicas.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use shoal_proto::{Service, Task, TaskState};

use super::restart::RestartTracker;
use super::slot::{SlotTasks, repair};
use super::task::{SlotKey, is_live, new_task, observed, replicas};
use super::{Ctx, Op};

/// Most tasks one pass creates for one service: as many as a valid spec may
/// ask for ([`shoal_proto::validate::MAX_REPLICAS`]), so a valid service gets
/// its tasks in one pass, and a pass stays bounded whatever a stored spec
/// says. Smaller batches cost a large service dearly: with 25,000, 100,000
/// replicas took four passes, each re-reading the tasks the last one wrote
/// and waiting for all its writes, and placed 0.75x as many tasks a second.
pub const CREATE_BATCH: usize = shoal_proto::validate::MAX_REPLICAS as usize;

/// The actions that bring a replicated service's tasks in line with its spec.
pub fn reconcile(
    service: &Service,
    tasks: &[Task],
    ctx: &Ctx<'_>,
    restarts: &mut RestartTracker,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut slots: BTreeMap<u64, SlotTasks<'_>> = BTreeMap::new();
    for t in tasks {
        let slot = slots.entry(t.slot).or_insert_with(|| SlotTasks {
            key: SlotKey::Replica(t.slot),
            live: Vec::new(),
            all: Vec::new(),
        });
        slot.all.push(t);
        if is_live(t) {
            slot.live.push(t);
        }
    }
    slots.retain(|_, s| !s.live.is_empty());
    // Slot 0 has no meaning for a replicated service: never keep it.
    if let Some(zero) = slots.remove(&0) {
        zero.live.iter().for_each(|t| ops.push(Op::shutdown(t)));
    }

    let wanted = replicas(service) as usize;
    if slots.len() > wanted {
        for slot in scale_down_victims(&slots, slots.len() - wanted) {
            let victim = slots.remove(&slot).expect("victims are occupied slots");
            victim.live.iter().for_each(|t| ops.push(Op::shutdown(t)));
        }
    }

    for slot in slots.values() {
        repair(service, slot, true, ctx, restarts, &mut ops);
    }

    let occupied: BTreeSet<u64> = slots.keys().copied().collect();
    let missing = wanted.saturating_sub(occupied.len());
    // Memory follows the tasks that exist, not the number asked for: a pass
    // creates at most CREATE_BATCH, and the next pass (as soon as these are
    // written) creates more.
    let missing = if missing > CREATE_BATCH {
        ops.push(Op::WakeAt(ctx.now));
        CREATE_BATCH
    } else {
        missing
    };
    // Sized once: grown by doubling, 10,000 new tasks were copied about
    // twice over into fresh pages.
    ops.reserve(missing);
    for slot in (1u64..).filter(|n| !occupied.contains(n)).take(missing) {
        ops.push(Op::Create(new_task(
            service,
            slot,
            "",
            TaskState::Running,
            ctx.now_ms,
        )));
    }
    ops
}

/// The `count` slots to shut down when scaling down, best victims first.
fn scale_down_victims(slots: &BTreeMap<u64, SlotTasks<'_>>, count: usize) -> Vec<u64> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for slot in slots.values() {
        for t in &slot.live {
            if !t.node_id.is_empty() {
                *per_node.entry(t.node_id.as_str()).or_default() += 1;
            }
        }
    }
    let mut ranked: Vec<(bool, Reverse<usize>, Reverse<u64>)> = slots
        .iter()
        .map(|(n, slot)| {
            let running = slot.live.iter().any(|t| observed(t) == TaskState::Running);
            let load = slot
                .live
                .iter()
                .filter_map(|t| per_node.get(t.node_id.as_str()))
                .max()
                .copied()
                .unwrap_or(0);
            (running, Reverse(load), Reverse(*n))
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(count)
        .map(|(_, _, Reverse(n))| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::task::desired;
    use super::super::task::fixtures::*;
    use super::*;
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
        assert!(ops.iter().any(
            |op| matches!(op, Op::StartAt { at, .. } if *at == w.now + Duration::from_secs(5))
        ));
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
}
