//! The orchestrator: reconciles each service's spec with its tasks (Swarm's
//! `manager/orchestrator`).
//!
//! The decisions are a pure core — functions from a service, its tasks and the
//! nodes to a list of [`Op`]s — unit-tested without IO:
//! - [`replicated`]: exactly `replicas` slots, one live task each (scaling).
//! - [`global`]: one live task per eligible node.
//! - [`slot`]: repairing one slot: tasks on lost or drained nodes, dead tasks
//!   and the [`restart`] policy, READY tasks waiting to start.
//! - [`reaper`]: bounded history per slot, removal of a deleted service's tasks.
//! - [`update`]: what a rolling update must replace, and in which batches.
//!
//! Around it, the IO: [`driver`] follows the store's change stream, coalesces
//! changes ([`dirty`]: which services they touch), reconciles the touched
//! services, except those [`screen`] leaves alone, and writes the ops in
//! proposals ([`batches`]);
//! [`updater`] runs one rolling update per service as its own tokio task.
//!
//! Desired states only move forward (READY → RUNNING → SHUTDOWN → REMOVE), and
//! a slot is occupied by its tasks whose desired state is at most RUNNING.

mod batches;
mod dirty;
pub mod driver;
pub mod global;
pub mod reaper;
pub mod replicated;
pub mod restart;
mod screen;
pub mod slot;
pub mod task;
pub mod update;
pub mod updater;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::Instant;

use shoal_proto::{Node, Service, Task, TaskState};

pub use driver::run_with_placer;
use restart::RestartTracker;

/// One decision of the pure core, for the driver to carry out.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create this new task.
    Create(Task),
    /// Raise the desired state of `task` (the copy that was read, with its
    /// version) to `desired`.
    SetDesired { task: Task, desired: TaskState },
    /// Delete this task (the copy that was read).
    Delete(Task),
    /// Remember that the READY task `task_id` may start at `at`.
    StartAt { task_id: String, at: Instant },
    /// Reconcile the service again at `at` (a start time comes due).
    WakeAt(Instant),
}

impl Op {
    pub fn shutdown(task: &Task) -> Op {
        Op::SetDesired {
            task: task.clone(),
            desired: TaskState::Shutdown,
        }
    }
}

/// What the pure core reads besides the service and its tasks.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub now: Instant,
    /// Wall-clock time for the timestamps of new tasks (unix ms).
    pub now_ms: i64,
    pub nodes: &'a HashMap<String, Node>,
    /// Start times of READY tasks, by task id.
    pub start_at: &'a HashMap<String, Instant>,
    /// A rolling update of the service is in progress: it owns slots with
    /// several live tasks.
    pub updating: bool,
}

/// Every decision for one service: `service` is `None` when it was removed.
pub fn reconcile_service(
    service: Option<&Service>,
    tasks: &[Task],
    ctx: &Ctx<'_>,
    restarts: &mut RestartTracker,
    history_limit: usize,
) -> Vec<Op> {
    #[cfg(test)]
    tests::panic_if_asked(service);
    let (mut ops, history_limit) = match service {
        // The REMOVE marks and the history reaping would touch the same dead
        // tasks: for a removed service, reap only what is marked REMOVE.
        None => (reaper::remove_service_tasks(tasks), usize::MAX),
        Some(s) if task::is_global(s) => {
            (global::reconcile(s, tasks, ctx, restarts), history_limit)
        }
        Some(s) => (
            replicated::reconcile(s, tasks, ctx, restarts),
            history_limit,
        ),
    };
    ops.extend(reaper::reap(tasks, ctx.nodes, history_limit));
    ops
}
