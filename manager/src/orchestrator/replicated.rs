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
#[path = "replicated_tests.rs"]
mod tests;
