//! The scheduler's own indexed copy of the cluster: one [`NodeInfo`] per node,
//! where each placed task sits, and the tasks waiting for a node. Fed object by
//! object from the store's snapshot and change stream; pure (no IO), so the
//! scheduling pass (`pass.rs`) can be tested and benchmarked on plain data.
//!
//! It also decides *when* a pass has work: new or changed pending tasks are
//! always tried; tasks that already failed are retried only after something that
//! could let them fit (a node appears or changes, a task ends or stops counting).

use std::borrow::Cow;
use std::collections::BTreeMap;

use shoal_proto::{Node, Placement, ResourceRequirements, Task};

use super::nodeinfo::{self, Footprint, NodeInfo};
use crate::fasthash::FastMap;

/// A task waiting for a node.
#[derive(Debug, Clone)]
pub(crate) struct PendingTask {
    /// Boxed: a task is ~800 bytes, and the map moves its values as it grows.
    pub task: Box<Task>,
    /// Already evaluated since it last changed.
    pub tried: bool,
    /// The status message we proposed and have not yet seen come back.
    pub proposed_message: Option<String>,
}

/// A task holding resources on a node.
#[derive(Debug)]
struct Placed {
    slot: usize,
    footprint: Footprint,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct SchedulerState {
    /// Node infos by slot; slots are reused, ids map to them through `by_id`.
    pub(crate) slots: Vec<Option<NodeInfo>>,
    free_slots: Vec<usize>,
    by_id: BTreeMap<String, usize>,
    /// Slots in node-id order (rank -> slot), rebuilt when nodes come or go.
    pub(crate) order: Vec<usize>,
    order_dirty: bool,
    /// Task id -> where its footprint is held, and the footprint itself.
    placed: FastMap<String, Placed>,
    pub(crate) pending: FastMap<String, PendingTask>,
    /// Something changed that could let previously unplaceable tasks fit.
    pub(crate) retry_all: bool,
    /// Some pending task has not been tried since it last changed.
    pub(crate) has_untried: bool,
}

impl SchedulerState {
    pub fn new() -> SchedulerState {
        SchedulerState::default()
    }

    /// A state loaded from a full read of the store.
    pub fn from_snapshot<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        tasks: impl IntoIterator<Item = &'a Task>,
    ) -> SchedulerState {
        let mut state = SchedulerState::new();
        for n in nodes {
            state.upsert_node(n);
        }
        for t in tasks {
            state.upsert_task(t);
        }
        state
    }

    /// True when a pass has something to try.
    pub fn needs_pass(&self) -> bool {
        !self.pending.is_empty() && (self.retry_all || self.has_untried)
    }

    /// True when some pending task has not been tried since it last changed
    /// (as opposed to only old tasks worth retrying).
    pub fn has_untried(&self) -> bool {
        self.has_untried
    }

    /// Number of tasks waiting for a node.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Number of nodes the store has.
    pub fn node_count(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|i| i.node.is_some())
            .count()
    }

    #[cfg(test)]
    pub fn node_info(&self, node_id: &str) -> Option<&NodeInfo> {
        self.by_id
            .get(node_id)
            .and_then(|s| self.slots[*s].as_ref())
    }

    /// A node was created or updated.
    pub fn upsert_node(&mut self, node: &Node) {
        let slot = self.slot_for(&node.id);
        let info = self.slots[slot].as_mut().expect("slot_for fills the slot");
        let relevant_change = match &info.node {
            None => true,
            Some(old) => {
                old.spec != node.spec
                    || old.description != node.description
                    || old.status.as_ref().map(|s| s.state) != node.status.as_ref().map(|s| s.state)
            }
        };
        info.node = Some(node.clone());
        if relevant_change {
            self.retry_all = true;
        }
    }

    /// A node was deleted. Its tasks' footprints stay until the tasks go.
    pub fn remove_node(&mut self, node_id: &str) {
        if let Some(&slot) = self.by_id.get(node_id) {
            if let Some(info) = self.slots[slot].as_mut() {
                info.node = None;
            }
            self.release_slot_if_unused(slot);
            // Messages mention node counts: let them be recomputed.
            self.retry_all = true;
        }
    }

    /// A task was created or updated.
    pub fn upsert_task(&mut self, task: &Task) {
        // Not kept: nothing to hand back, the caller still has it.
        let _ = self.upsert_owned(Cow::Borrowed(task));
    }

    /// [`SchedulerState::upsert_task`] for a task the caller may give away:
    /// a schedulable one is kept as it is, not copied. Hands the task back
    /// when it is not kept.
    pub(crate) fn upsert_owned<'a>(&mut self, task: Cow<'a, Task>) -> Option<Cow<'a, Task>> {
        self.update_footprint(&task);
        if !nodeinfo::is_schedulable(&task) {
            if !self.pending.is_empty() {
                self.pending.remove(&task.id);
            }
            return Some(task);
        }
        match self.pending.get_mut(&task.id) {
            Some(p) => {
                if !same_placement_inputs(&p.task, &task) {
                    p.tried = false;
                    self.has_untried = true;
                }
                *p.task = task.into_owned();
                p.proposed_message = None;
            }
            None => {
                self.has_untried = true;
                let task = Box::new(task.into_owned());
                self.pending.insert(
                    task.id.clone(),
                    PendingTask {
                        task,
                        tried: false,
                        proposed_message: None,
                    },
                );
            }
        }
        None
    }

    /// A task was deleted.
    pub fn remove_task(&mut self, task_id: &str) {
        self.pending.remove(task_id);
        self.drop_footprint(task_id);
    }

    /// Record a task just assigned by the pass (so holding nothing yet) as
    /// held by the node in `slot`.
    pub(crate) fn place(&mut self, task_id: String, slot: usize, footprint: Footprint) {
        if let Some(info) = self.slots[slot].as_mut() {
            info.add(&footprint);
            self.placed.insert(task_id, Placed { slot, footprint });
        }
    }

    /// The slot of a node id, if known.
    pub(crate) fn slot_of(&self, node_id: &str) -> Option<usize> {
        self.by_id.get(node_id).copied()
    }

    /// Rebuild the rank order if nodes came or went.
    pub(crate) fn ensure_order(&mut self) {
        if self.order_dirty {
            self.order = self.by_id.values().copied().collect();
            self.order_dirty = false;
        }
    }

    fn update_footprint(&mut self, task: &Task) {
        let wanted = nodeinfo::holds_resources(task).then_some(task.node_id.as_str());
        if let Some(placed) = self.placed.get_mut(&task.id) {
            let info = self.slots[placed.slot]
                .as_mut()
                .expect("placed tasks point at live slots");
            if wanted == Some(info.id.as_str()) {
                let counted = nodeinfo::is_counted(task);
                if info.set_counted(&mut placed.footprint, counted) && !counted {
                    self.retry_all = true;
                }
                return;
            }
            self.drop_footprint(&task.id);
        }
        if let Some(node_id) = wanted {
            let slot = self.slot_for(node_id);
            let info = self.slots[slot].as_mut().expect("slot_for fills the slot");
            let footprint = Footprint::of(task, nodeinfo::is_counted(task));
            info.add(&footprint);
            self.placed
                .insert(task.id.clone(), Placed { slot, footprint });
        }
    }

    fn drop_footprint(&mut self, task_id: &str) {
        if let Some(placed) = self.placed.remove(task_id) {
            if let Some(info) = self.slots[placed.slot].as_mut() {
                info.remove(&placed.footprint);
            }
            self.release_slot_if_unused(placed.slot);
            self.retry_all = true;
        }
    }

    fn slot_for(&mut self, node_id: &str) -> usize {
        if let Some(&slot) = self.by_id.get(node_id) {
            return slot;
        }
        let info = NodeInfo::new(node_id.to_string(), None);
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.slots[s] = Some(info);
                s
            }
            None => {
                self.slots.push(Some(info));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(node_id.to_string(), slot);
        self.order_dirty = true;
        slot
    }

    fn release_slot_if_unused(&mut self, slot: usize) {
        let unused = self.slots[slot]
            .as_ref()
            .is_some_and(|i| i.node.is_none() && i.task_count() == 0);
        if unused && let Some(info) = self.slots[slot].take() {
            self.by_id.remove(&info.id);
            self.free_slots.push(slot);
            self.order_dirty = true;
        }
    }
}

/// True when nothing the scheduler looks at differs between two versions of a
/// pending task (so a rewrite of its status message does not retrigger it).
fn same_placement_inputs(a: &Task, b: &Task) -> bool {
    a.node_id == b.node_id && same_requirements(a, b)
}

/// True when two tasks ask the same of a node (they may share one group).
pub(crate) fn same_requirements(a: &Task, b: &Task) -> bool {
    fn part(t: &Task) -> Option<(&Option<Placement>, &Option<ResourceRequirements>)> {
        t.spec.as_ref().map(|s| (&s.placement, &s.resources))
    }
    a.service_id == b.service_id
        && a.spec_version == b.spec_version
        && a.ports == b.ports
        && part(a) == part(b)
}
