//! One scheduling pass over the pending tasks: pure, no IO.
//!
//! Pending tasks are grouped (same service, same spec version, same placement
//! inputs): the filters run once per node and group, then the group's tasks are
//! placed one by one through the spread tree (`spread.rs`), re-checking only the
//! dynamic filters on the chosen node. Tasks created with a node already set
//! (global services) are checked against that node alone. The pass updates the
//! node infos as it assigns, so the decisions it returns are consistent with
//! each other; the driver commits them.

use shoal_proto::{Task, TaskState};

use std::borrow::Cow;
use std::hash::{BuildHasher, BuildHasherDefault};

use super::filters::{Pipeline, Rejection, Requirements, explain};
use super::nodeinfo::{Footprint, is_counted};
use super::spread::{Entry, Tree};
use super::state::{PendingTask, SchedulerState, same_requirements};
use crate::fasthash::{FastHasher, FastMap};

/// The status message of a task the scheduler placed.
pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";

/// What a pass decided.
#[derive(Debug, Default)]
pub struct Decisions {
    /// Tasks to write back ASSIGNED to their node (carrying the version read).
    /// Boxed as they were held, so a big pass moves pointers, not tasks.
    #[expect(
        clippy::vec_box,
        reason = "the state holds tasks boxed; moving the boxes is cheap"
    )]
    pub assigned: Vec<Box<Task>>,
    /// Tasks still PENDING whose status message must change to say why.
    pub messages: Vec<Task>,
    /// Tasks tried in this pass that no node could take.
    pub unplaceable: usize,
}

/// A pending task taken out of the state for the pass.
type Taken = (String, PendingTask);

/// Tasks that share their requirements; the first one stands for the group.
struct Group {
    unassigned: Vec<Taken>,
    preassigned: Vec<Taken>,
}

impl Group {
    fn leader(&self) -> &Task {
        let (_, p) = self
            .unassigned
            .first()
            .or(self.preassigned.first())
            .expect("groups are never empty");
        &p.task
    }
}

impl SchedulerState {
    /// Place what can be placed. `now_ms` stamps the assignments.
    pub fn schedule(&mut self, now_ms: i64) -> Decisions {
        let mut out = Decisions::default();
        if !self.needs_pass() {
            return out;
        }
        let retry_all = std::mem::take(&mut self.retry_all);
        self.has_untried = false;
        self.ensure_order();
        for group in self.take_groups(retry_all) {
            self.schedule_group(group, now_ms, &mut out);
        }
        out
    }

    /// Place tasks that are not in the store yet (the orchestrator's
    /// creations) together with whatever else is waiting. Returns the new
    /// tasks in the order given, each ASSIGNED or still PENDING with the
    /// message that says why, to be created as they are; and the decisions
    /// about the tasks that already exist. The new tasks are in the state as
    /// if their creation had been seen: a refused creation must be taken out
    /// again with [`SchedulerState::remove_task`].
    pub fn place_new(&mut self, tasks: Vec<Task>, now_ms: i64) -> (Vec<Task>, Decisions) {
        // Each new task by position: a schedulable one moves into the pending
        // map (no copy) and comes back as the pass decides; the others stay.
        let mut placed: Vec<Option<Task>> = Vec::with_capacity(tasks.len());
        let mut position: FastMap<String, usize> = FastMap::default();
        position.reserve(tasks.len());
        for (i, t) in tasks.into_iter().enumerate() {
            position.insert(t.id.clone(), i);
            placed.push(self.upsert_owned(Cow::Owned(t)).map(Cow::into_owned));
        }
        let mut decisions = self.schedule(now_ms);
        let mut undecided = placed.iter().filter(|t| t.is_none()).count();
        let mut others = Vec::with_capacity(decisions.assigned.len());
        for t in decisions.assigned.drain(..) {
            match position.get(&t.id) {
                Some(&i) => {
                    placed[i] = Some(*t);
                    undecided -= 1;
                }
                None => others.push(t),
            }
        }
        decisions.assigned = others;
        decisions
            .messages
            .retain_mut(|t| match position.get(&t.id) {
                Some(&i) => {
                    placed[i] = Some(std::mem::take(t));
                    undecided -= 1;
                    false
                }
                None => true,
            });
        // Left PENDING with its message unchanged: created as it waits.
        if undecided > 0 {
            for (id, &i) in &position {
                if placed[i].is_none() {
                    placed[i] = self.pending.get(id).map(|p| Task::clone(&p.task));
                }
            }
        }
        let placed = placed
            .into_iter()
            .map(|t| t.expect("the pass assigns each task it takes or leaves it pending"))
            .collect();
        (placed, decisions)
    }

    /// Move the tasks to try out of the pending map, grouped. Each one either
    /// gets assigned or goes back through [`SchedulerState::leave_pending`].
    fn take_groups(&mut self, retry_all: bool) -> Vec<Group> {
        let taken: Vec<Taken> = if retry_all {
            self.pending.drain().collect()
        } else {
            self.pending.extract_if(|_, p| !p.tried).collect()
        };
        let mut groups: Vec<Group> = Vec::new();
        // Keyed by a hash of (service, spec version): no allocation per task;
        // `same_requirements` settles equality.
        let hasher = BuildHasherDefault::<FastHasher>::default();
        let mut index: FastMap<u64, Vec<usize>> = FastMap::default();
        for (id, mut p) in taken {
            p.tried = true;
            let key = hasher.hash_one((p.task.service_id.as_str(), p.task.spec_version));
            let same_key = index.entry(key).or_default();
            let found = same_key
                .iter()
                .copied()
                .find(|&g| same_requirements(groups[g].leader(), &p.task));
            let g = found.unwrap_or_else(|| {
                groups.push(Group {
                    unassigned: Vec::new(),
                    preassigned: Vec::new(),
                });
                same_key.push(groups.len() - 1);
                groups.len() - 1
            });
            if p.task.node_id.is_empty() {
                groups[g].unassigned.push((id, p));
            } else {
                groups[g].preassigned.push((id, p));
            }
        }
        // A stable order between groups keeps passes reproducible.
        groups.sort_by_cached_key(|g| {
            let t = g.leader();
            (t.service_id.clone(), t.spec_version, t.id.clone())
        });
        groups
    }

    fn schedule_group(&mut self, group: Group, now_ms: i64, out: &mut Decisions) {
        let req = match Requirements::of(group.leader()) {
            Ok(req) => req,
            Err(e) => {
                let message = format!("cannot schedule: {e}");
                for taken in group.unassigned.into_iter().chain(group.preassigned) {
                    self.leave_pending(taken, &message, out);
                }
                return;
            }
        };
        let pipeline = Pipeline::new(&req);
        if !group.unassigned.is_empty() {
            self.place_unassigned(&req, &pipeline, group.unassigned, now_ms, out);
        }
        for taken in group.preassigned {
            self.place_preassigned(&req, &pipeline, taken, now_ms, out);
        }
    }

    fn place_unassigned(
        &mut self,
        req: &Requirements,
        pipeline: &Pipeline<'_>,
        tasks: Vec<Taken>,
        now_ms: i64,
        out: &mut Decisions,
    ) {
        // One verdict per node for the whole group; dynamic refusals found while
        // placing overwrite the entry of their node.
        let mut rejections: Vec<Option<Rejection>> = vec![None; self.order.len()];
        let mut registered = 0;
        let mut tree = {
            let mut entries = Vec::with_capacity(self.order.len());
            for (rank, &slot) in self.order.iter().enumerate() {
                let Some(info) = self.slots[slot].as_ref() else {
                    continue;
                };
                let Some(node) = info.node.as_ref() else {
                    continue;
                };
                registered += 1;
                let verdict = pipeline.check(node, info);
                entries.push(Entry {
                    rank: rank as u32,
                    service_tasks: info.service_tasks(&req.service_id),
                    total_tasks: info.active_tasks(),
                    candidate: verdict.is_ok(),
                    labels: node.spec.as_ref().map(|s| &s.labels),
                });
                rejections[rank] = verdict.err();
            }
            Tree::build(&entries, &req.spread)
        };
        let dynamic = pipeline.has_dynamic();
        out.assigned.reserve(tasks.len());
        let mut tasks = tasks.into_iter();
        for taken in tasks.by_ref() {
            let picked = {
                let (order, slots) = (&self.order, &self.slots);
                tree.pick(&mut |rank| {
                    if !dynamic {
                        return true;
                    }
                    let info = slots[order[rank as usize]]
                        .as_ref()
                        .expect("ranked slots are live");
                    let node = info
                        .node
                        .as_ref()
                        .expect("only registered nodes are in the tree");
                    match pipeline.check_dynamic(node, info) {
                        Ok(()) => true,
                        Err(r) => {
                            rejections[rank as usize] = Some(r);
                            false
                        }
                    }
                })
            };
            match picked {
                Some(rank) => self.assign(req, taken, self.order[rank as usize], now_ms, out),
                None => {
                    let message = explain(rejections.iter().flatten(), registered);
                    self.leave_pending(taken, &message, out);
                    for rest in tasks {
                        self.leave_pending(rest, &message, out);
                    }
                    return;
                }
            }
        }
    }

    fn place_preassigned(
        &mut self,
        req: &Requirements,
        pipeline: &Pipeline<'_>,
        taken: Taken,
        now_ms: i64,
        out: &mut Decisions,
    ) {
        let node_id = &taken.1.task.node_id;
        let verdict = self.slot_of(node_id).and_then(|slot| {
            let info = self.slots[slot].as_ref()?;
            let node = info.node.as_ref()?;
            Some((slot, pipeline.check(node, info)))
        });
        match verdict {
            Some((slot, Ok(()))) => self.assign(req, taken, slot, now_ms, out),
            Some((_, Err(r))) => self.leave_pending(taken, &explain([&r], 1), out),
            None => {
                let message = format!("no suitable node (node {node_id} is not registered)");
                self.leave_pending(taken, &message, out)
            }
        }
    }

    fn assign(
        &mut self,
        req: &Requirements,
        taken: Taken,
        slot: usize,
        now_ms: i64,
        out: &mut Decisions,
    ) {
        let (id, pending) = taken;
        let mut task = pending.task;
        if task.node_id.is_empty() {
            task.node_id = self.slots[slot]
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default();
        }
        let status = task.status.get_or_insert_with(Default::default);
        status.state = TaskState::Assigned as i32;
        status.message.clear();
        status.message.push_str(ASSIGNED_MESSAGE);
        status.timestamp = now_ms;
        let footprint = Footprint::with_service(req.service_id.clone(), &task, is_counted(&task));
        self.place(id, slot, footprint);
        out.assigned.push(task);
    }

    /// Put the task back, PENDING; write `message` only if it says something new.
    fn leave_pending(&mut self, taken: Taken, message: &str, out: &mut Decisions) {
        let (id, mut p) = taken;
        out.unplaceable += 1;
        let current = match &p.proposed_message {
            Some(m) => m.as_str(),
            None => p
                .task
                .status
                .as_ref()
                .map(|s| s.message.as_str())
                .unwrap_or(""),
        };
        if current != message {
            p.proposed_message = Some(message.to_string());
            let mut task = (*p.task).clone();
            task.status.get_or_insert_with(Default::default).message = message.to_string();
            out.messages.push(task);
        }
        self.pending.insert(id, p);
    }
}

#[cfg(test)]
#[path = "pass_tests.rs"]
mod tests;
