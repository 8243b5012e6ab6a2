//! What changed since the orchestrator's last pass: the services a batch of
//! committed changes touches, and which of them a pass must reconcile. Agents'
//! progress reports, the scheduler's assignments onto healthy nodes and a
//! reconnecting agent's rewrite of its node touch none, which spares a pass
//! over every task of the service per batch.

use std::collections::{HashMap, HashSet};

use shoal_proto::{Node, Task};

use super::task::{NodeFate, fate_on, is_global, is_live, is_terminal, never_assigned, node_state};
use crate::store::{ChangeBatch, ChangeKind, MemState, Stored};

/// What changed since the last pass.
#[derive(Default)]
pub(super) struct Dirty {
    pub(super) all: bool,
    pub(super) services: HashSet<String>,
    nodes: HashSet<String>,
    /// Services whose live tasks were only assigned, with the nodes they went
    /// to: reconciled only if one of those nodes cannot keep them.
    assigned: HashMap<String, HashSet<String>>,
    /// Tasks this orchestrator's last pass created, whose creation has not
    /// been seen committed yet: that change only echoes a decision the pass
    /// already made, and reconciling the service again would be a pass over
    /// all its tasks that finds nothing to do.
    created: HashSet<String>,
}

impl Dirty {
    /// The pass is about to create `task_id`.
    pub(super) fn creating(&mut self, task_id: &str) {
        self.created.insert(task_id.to_string());
    }

    /// Every committed change up to now has been noted: creations still
    /// expected were refused or failed (the driver retries those services),
    /// so none of them will come.
    pub(super) fn caught_up(&mut self) {
        self.created.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty() && self.nodes.is_empty() && self.assigned.is_empty()
    }

    pub(super) fn note(&mut self, batch: &ChangeBatch) {
        for change in &batch.changes {
            match &change.object {
                Stored::Service(s) => {
                    self.services.insert(s.id.clone());
                }
                Stored::Task(t) => {
                    let old = match &change.old {
                        Some(Stored::Task(old)) => Some(old),
                        _ => None,
                    };
                    if change.kind == ChangeKind::Updated
                        && old.is_some_and(|old| is_assignment(old, t))
                    {
                        self.note_assigned(t);
                    } else if change.kind == ChangeKind::Created && self.created.remove(&t.id) {
                        // Our own creation, committed as decided; the
                        // scheduler may have placed it on the way, onto a
                        // node that has since been lost.
                        if !t.node_id.is_empty() {
                            self.note_assigned(t);
                        }
                    } else if !change.kind.is_update()
                        || old.is_none_or(|old| affects_reconcile(old, t))
                    {
                        self.services.insert(t.service_id.clone());
                    }
                }
                Stored::Node(n) => {
                    let old = match &change.old {
                        Some(Stored::Node(old)) => Some(old),
                        _ => None,
                    };
                    if !change.kind.is_update()
                        || old.is_none_or(|old| node_affects_reconcile(old, n))
                    {
                        self.nodes.insert(n.id.clone());
                    }
                }
                // Other kinds (cluster settings, ...) change no reconcile decision.
                _ => {}
            }
        }
    }

    /// `t` went to its node: its service is reconciled only if that node
    /// cannot keep it. Copies the ids only the first time (a batch holds
    /// thousands of tasks of one service over a few nodes).
    fn note_assigned(&mut self, t: &Task) {
        match self.assigned.get_mut(&t.service_id) {
            Some(nodes) => {
                if !nodes.contains(&t.node_id) {
                    nodes.insert(t.node_id.clone());
                }
            }
            None => {
                self.assigned
                    .insert(t.service_id.clone(), HashSet::from([t.node_id.clone()]));
            }
        }
    }

    /// The services to reconcile, read against the tables: those marked, those
    /// with tasks just assigned to a node that cannot keep them, every service
    /// after a lag, and, after a node changed, the services with tasks on it
    /// and every global service.
    pub(super) fn services_to_reconcile(self, s: &MemState) -> HashSet<String> {
        let mut ids = self.services;
        for (id, nodes) in self.assigned {
            if nodes.iter().any(|n| fate_on(s.node(n)) != NodeFate::Fine) {
                ids.insert(id);
            }
        }
        if self.all {
            ids.extend(s.services().map(|svc| svc.id.clone()));
            ids.extend(s.tasks().map(|t| t.service_id.clone()));
        }
        if !self.nodes.is_empty() {
            for node in &self.nodes {
                ids.extend(s.tasks_on_node(node).map(|t| t.service_id.clone()));
            }
            ids.extend(
                s.services()
                    .filter(|svc| is_global(svc))
                    .map(|svc| svc.id.clone()),
            );
        }
        ids
    }
}

/// True when a task update can change a reconcile decision. An agent's
/// progress reports (ACCEPTED … RUNNING) cannot: the pure core reads the
/// observed state only to see whether a task ended ([`is_terminal`]) or was
/// ever assigned ([`never_assigned`]), and ranks by it only while doing
/// something else. Skipping those reports spares a pass over every task of
/// the service per report batch.
fn affects_reconcile(old: &Task, new: &Task) -> bool {
    old.desired_state != new.desired_state
        || old.node_id != new.node_id
        || old.slot != new.slot
        || old.spec_version != new.spec_version
        || old.service_id != new.service_id
        || is_terminal(old) != is_terminal(new)
        || never_assigned(old) != never_assigned(new)
}

/// True when a node update can change a reconcile decision: its state (a DOWN
/// node loses its tasks, a global service starts only on READY nodes), its
/// spec (availability, role, labels) or its description (what constraints
/// match). Its status message and address cannot. Every new session of an
/// agent rewrites its node READY with the same description; when a node
/// change still dirtied every service with a task there, 5,000 agents
/// reconnecting under load kept the orchestrator copying every task of every
/// service, pass after pass.
fn node_affects_reconcile(old: &Node, new: &Node) -> bool {
    node_state(old) != node_state(new) || old.spec != new.spec || old.description != new.description
}

/// True when the scheduler's assignment of a live task is all that changed.
/// Onto a node that keeps its tasks, that changes no reconcile decision: the
/// task fills its slot as before, and a scale-down (which prefers tasks never
/// assigned) was decided when the spec changed. Onto a node that went down or
/// was drained before the assignment committed, it does, and the node's own
/// change came too early to find the task there; so the driver checks the
/// nodes before it skips the service.
fn is_assignment(old: &Task, new: &Task) -> bool {
    old.node_id.is_empty()
        && !new.node_id.is_empty()
        && is_live(new)
        && !is_terminal(old)
        && !is_terminal(new)
        && old.desired_state == new.desired_state
        && old.slot == new.slot
        && old.spec_version == new.spec_version
        && old.service_id == new.service_id
}

#[cfg(test)]
#[path = "dirty_tests.rs"]
mod tests;
