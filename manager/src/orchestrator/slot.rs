//! Repairing one slot: the live tasks that share a replica number (or, for a
//! global service, a node). Shared by the replicated and global reconcilers.
//!
//! A live task is *broken* when it ended (observed state terminal) or when the
//! node under it is lost or drained. A slot with a healthy task just sheds its
//! broken ones; a slot with only broken ones gets a replacement — at once when a
//! node was lost, through the restart policy when the task ended by itself.
//! A replacement that must wait (restart delay, or an old task still stopping)
//! is created with desired state READY and promoted to RUNNING here, once its
//! start time has passed and nothing else in the slot is still running.

use shoal_proto::{Service, Task, TaskState};

use super::restart::{RestartTracker, Verdict};
use super::task::{
    NodeFate, SlotKey, desired, is_terminal, new_task, node_fate, observed, restart_delay,
    still_stopping,
};
use super::{Ctx, Op};

/// The tasks of one slot.
#[derive(Debug)]
pub struct SlotTasks<'a> {
    pub key: SlotKey,
    /// Tasks with desired state <= RUNNING.
    pub live: Vec<&'a Task>,
    /// Every task in the slot, live or not (to see which are still stopping).
    pub all: Vec<&'a Task>,
}

/// Repair one slot of `service`. `may_replace` is false where a replacement
/// must not be created (a global service on a paused node): broken tasks are
/// then only shut down.
pub fn repair(
    service: &Service,
    slot: &SlotTasks<'_>,
    may_replace: bool,
    ctx: &Ctx<'_>,
    restarts: &mut RestartTracker,
    ops: &mut Vec<Op>,
) {
    let (key, all) = (&slot.key, &slot.all);
    let (broken, healthy): (Vec<&Task>, Vec<&Task>) = slot
        .live
        .iter()
        .partition(|t| is_terminal(t) || node_fate(t, ctx.nodes) != NodeFate::Fine);

    if healthy.is_empty() {
        if broken.is_empty() {
            return;
        }
        replace_broken(service, key, &broken, may_replace, ctx, restarts, ops);
        return;
    }

    for t in &broken {
        ops.push(Op::shutdown(t));
    }
    let keep: Vec<&Task> = if healthy.len() > 1 && !ctx.updating {
        // Several healthy tasks in one slot are the leftovers of an interrupted
        // start-first update: keep the best, as the update would have.
        let best = healthy
            .iter()
            .copied()
            .max_by_key(|t| {
                (
                    t.spec_version == service.spec_version,
                    observed(t),
                    super::task::age_key(t),
                )
            })
            .expect("healthy is not empty");
        for t in &healthy {
            if t.id != best.id {
                ops.push(Op::shutdown(t));
            }
        }
        vec![best]
    } else {
        healthy
    };
    for t in keep {
        if desired(t) == TaskState::Ready {
            gate_start(t, all, ctx, ops);
        }
    }
}

/// Every live task of the slot is broken: shut them down and (if allowed)
/// create the replacement.
fn replace_broken(
    service: &Service,
    key: &SlotKey,
    broken: &[&Task],
    may_replace: bool,
    ctx: &Ctx<'_>,
    restarts: &mut RestartTracker,
    ops: &mut Vec<Op>,
) {
    let lost = broken
        .iter()
        .any(|t| node_fate(t, ctx.nodes) != NodeFate::Fine);
    if !may_replace {
        broken.iter().for_each(|t| ops.push(Op::shutdown(t)));
        return;
    }
    let (slot, node_id) = match key {
        SlotKey::Replica(n) => (*n, ""),
        SlotKey::Node(id) => (0, id.as_str()),
    };
    if lost {
        // The node is gone or drained: move on at once, without a restart delay
        // and without spending the restart policy's attempts.
        broken.iter().for_each(|t| ops.push(Op::shutdown(t)));
        ops.push(Op::Create(new_task(
            service,
            slot,
            node_id,
            TaskState::Running,
            ctx.now_ms,
        )));
        return;
    }
    // The newest dead task speaks for the slot; older ones are just shut down.
    let newest = broken
        .iter()
        .copied()
        .max_by_key(|t| super::task::age_key(t))
        .expect("broken is not empty");
    // A replacement that died while still waiting out its restart delay (it is
    // prepared during the wait, so a missing image rejects it at once) does not
    // get a successor before that delay is over: otherwise a task that fails in
    // preparation would be replaced as fast as the agent can reject it.
    if desired(newest) == TaskState::Ready
        && let Some(at) = ctx.start_at.get(&newest.id)
        && *at > ctx.now
    {
        ops.push(Op::WakeAt(*at));
        return;
    }
    match restarts.decide(newest, key, ctx.now) {
        Verdict::GiveUp => {
            tracing::info!(
                task.id = %newest.id,
                service.id = %service.id,
                slot = %key,
                "restart policy allows no restart; leaving the task in place"
            );
            for t in broken.iter().filter(|t| t.id != newest.id) {
                ops.push(Op::shutdown(t));
            }
        }
        Verdict::Restart { delay } => {
            broken.iter().for_each(|t| ops.push(Op::shutdown(t)));
            let desired = if delay.is_zero() {
                TaskState::Running
            } else {
                TaskState::Ready
            };
            let task = new_task(service, slot, node_id, desired, ctx.now_ms);
            tracing::info!(
                task.id = %newest.id,
                service.id = %service.id,
                slot = %key,
                replacement = %task.id,
                delay_ms = delay.as_millis() as u64,
                "restarting task"
            );
            if !delay.is_zero() {
                let at = ctx.now + delay;
                ops.push(Op::StartAt {
                    task_id: task.id.clone(),
                    at,
                });
                ops.push(Op::WakeAt(at));
            }
            ops.push(Op::Create(task));
        }
    }
}

/// A READY task starts once its start time has come and no other task of the
/// slot is still stopping.
fn gate_start(task: &Task, all: &[&Task], ctx: &Ctx<'_>, ops: &mut Vec<Op>) {
    let at = match ctx.start_at.get(&task.id) {
        Some(at) => *at,
        None => {
            // No timer known (a new leader): the full restart delay starts now.
            let at = ctx.now + restart_delay(task.spec.as_deref());
            ops.push(Op::StartAt {
                task_id: task.id.clone(),
                at,
            });
            at
        }
    };
    if at > ctx.now {
        ops.push(Op::WakeAt(at));
        return;
    }
    let blocked = all
        .iter()
        .any(|t| t.id != task.id && still_stopping(t, ctx.nodes));
    if !blocked {
        ops.push(Op::SetDesired {
            task: task.clone(),
            desired: TaskState::Running,
        });
    }
}
