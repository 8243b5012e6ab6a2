//! The `Assignments` stream: what a node must run.
//!
//! First a COMPLETE message (every task on the node at ASSIGNED or later; the
//! agent decides from `desired_state` what to do), then INCREMENTAL messages
//! built from the changes the [`Router`] routes to this node. Changes are
//! coalesced: whatever is available is drained into one message. A task is
//! sent again only when something the agent acts on changed (desired state,
//! spec, ...), never for the status updates the agent itself reported: with
//! 100 000 tasks, echoing every status would double the traffic for nothing.
//!
//! [`NodeView`] is what the agent has been told; anything else a node must be
//! sent alongside its tasks belongs there too: the secrets and configs its
//! tasks use ([`super::secrets`]) ride in the same messages.

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::{AssignmentsMessage, AssignmentsType, Task, TaskState};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::router::{Routed, Router};
use super::secrets::{self, Delivered};
use crate::fasthash::FastSet;
use crate::seal::DataKey;
use crate::store::{ChangeKind, MemState, Store, Stored};

/// Messages buffered towards a slow agent before the feeder waits (and
/// gathers what comes meanwhile into its next message). Each holds copies of
/// its tasks: at 10,000 nodes, 16 per node was hundreds of MiB while the
/// hollow agents read slowly.
const STREAM_BUFFER: usize = 2;

/// Boxed: a channel allocates room for 32 of its items at once, and an
/// `AssignmentsMessage` is ~180 bytes where a box is 8 (6 KiB per idle node).
type Sender = mpsc::Sender<Box<AssignmentsMessage>>;

/// What the `Assignments` RPC returns.
pub(super) type AssignmentsStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<AssignmentsMessage, Status>> + Send>>;

/// Start feeding `node_id`'s assignments until its session ends (`token`) or
/// the agent leaves.
pub(super) fn stream(
    store: Store,
    router: Router,
    node_id: String,
    token: CancellationToken,
    key: Option<DataKey>,
) -> AssignmentsStream {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(feed(store, router, node_id, token, tx, key));
    Box::pin(ReceiverStream::new(rx).map(|message| Ok(*message)))
}

async fn feed(
    store: Store,
    router: Router,
    node_id: String,
    token: CancellationToken,
    tx: Sender,
    key: Option<DataKey>,
) {
    let mut view = NodeView::new(node_id);
    // Each pass of this loop starts from a fresh snapshot: at the beginning,
    // and whenever the router dropped this feed (it fell behind, or the router
    // did: changes were lost).
    'snapshot: loop {
        // Register before reading: every change committed after the snapshot
        // is then routed here, and those up to its index are dropped.
        let Some((_registration, mut routed)) = router.register(&view.node_id) else {
            return;
        };
        let (tasks, since) = store.read(|s| (view.assigned(s), s.applied_index));
        let mut complete = view.complete(tasks);
        secrets::fill(
            &mut complete,
            &mut view.files,
            &store,
            key.as_ref(),
            &view.node_id,
        );
        if !send(&tx, &token, complete).await {
            return;
        }
        loop {
            let first = tokio::select! {
                biased;
                _ = token.cancelled() => return,
                _ = tx.closed() => return,
                r = routed.recv() => r,
            };
            let mut pending = Pending::default();
            match first {
                Some(batch) => view.absorb(&batch, since, &mut pending),
                None => continue 'snapshot,
            }
            loop {
                match routed.try_recv() {
                    Ok(batch) => view.absorb(&batch, since, &mut pending),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => continue 'snapshot,
                }
            }
            if let Some(mut message) = view.incremental(pending) {
                secrets::fill(
                    &mut message,
                    &mut view.files,
                    &store,
                    key.as_ref(),
                    &view.node_id,
                );
                if !send(&tx, &token, message).await {
                    return;
                }
            }
        }
    }
}

/// Send unless the session ended; false when the stream is over.
async fn send(tx: &Sender, token: &CancellationToken, message: AssignmentsMessage) -> bool {
    tokio::select! {
        biased;
        _ = token.cancelled() => false,
        r = tx.send(Box::new(message)) => r.is_ok(),
    }
}

/// What the agent has been told, to decide what is news.
struct NodeView {
    node_id: String,
    /// Tasks the agent knows as assigned.
    known: FastSet<String>,
    sequence: u64,
    /// The secrets and configs its tasks use, and what it was sent of them.
    files: Delivered,
}

/// The news gathered from a drain of the change stream.
#[derive(Default)]
struct Pending {
    tasks: BTreeMap<String, Task>,
    removed: BTreeSet<String>,
}

impl NodeView {
    fn new(node_id: String) -> Self {
        NodeView {
            node_id,
            known: FastSet::default(),
            sequence: 0,
            files: Delivered::default(),
        }
    }

    fn is_assigned_here(&self, task: &Task) -> bool {
        task.node_id == self.node_id
            && task
                .status
                .as_ref()
                .is_some_and(|s| s.state() >= TaskState::Assigned)
    }

    /// The node's assigned tasks in `state`.
    fn assigned(&self, state: &MemState) -> Vec<Task> {
        state
            .tasks_on_node(&self.node_id)
            .filter(|t| self.is_assigned_here(t))
            .cloned()
            .collect()
    }

    fn complete(&mut self, tasks: Vec<Task>) -> AssignmentsMessage {
        self.known = tasks.iter().map(|t| t.id.clone()).collect();
        self.files.reset(&tasks);
        self.sequence += 1;
        AssignmentsMessage {
            r#type: AssignmentsType::Complete as i32,
            tasks,
            removed: Vec::new(),
            sequence: self.sequence,
            ..Default::default()
        }
    }

    /// Fold one routed batch into `pending`, unless the snapshot the agent
    /// was given (at applied index `since`) already includes it.
    fn absorb(&mut self, routed: &Routed, since: u64, pending: &mut Pending) {
        if routed.batch.index <= since {
            return;
        }
        for change in routed.changes() {
            let Stored::Task(task) = &change.object else {
                continue;
            };
            let gone = change.kind == ChangeKind::Deleted || !self.is_assigned_here(task);
            // Every change counts here, the agent's own reports too: a task
            // that ended releases its secrets.
            if gone {
                self.files.forget(&task.id);
            } else {
                self.files.track(task);
            }
            if gone {
                if self.known.remove(&task.id) {
                    pending.tasks.remove(&task.id);
                    pending.removed.insert(task.id.clone());
                }
                continue;
            }
            let old = match &change.old {
                Some(Stored::Task(old)) => Some(old),
                _ => None,
            };
            // Already going out in this message: carry the latest copy.
            let going_out = |pending: &Pending| pending.tasks.contains_key(&task.id);
            let news = if change.kind == ChangeKind::Reported {
                // The agent's own report changed nothing it acts on.
                going_out(pending)
            } else {
                (!self.known.contains(&task.id) && self.known.insert(task.id.clone()))
                    || old.is_none_or(|old| matters_to_agent(old, task))
                    || going_out(pending)
            };
            if news {
                pending.removed.remove(&task.id);
                pending.tasks.insert(task.id.clone(), Task::clone(task));
            }
        }
    }

    fn incremental(&mut self, pending: Pending) -> Option<AssignmentsMessage> {
        if pending.tasks.is_empty() && pending.removed.is_empty() && !self.files.is_dirty() {
            return None;
        }
        self.sequence += 1;
        Some(AssignmentsMessage {
            r#type: AssignmentsType::Incremental as i32,
            tasks: pending.tasks.into_values().collect(),
            removed: pending.removed.into_iter().collect(),
            sequence: self.sequence,
            ..Default::default()
        })
    }
}

/// True when `new` differs from `old` in something the agent acts on. The
/// observed status is the agent's own report, so it is not news to it.
fn matters_to_agent(old: &Task, new: &Task) -> bool {
    old.desired_state != new.desired_state
        || old.spec_version != new.spec_version
        || old.spec != new.spec
        || old.ports != new.ports
        || old.service_labels != new.service_labels
        || old.service_name != new.service_name
}

#[cfg(test)]
#[path = "assignments_tests.rs"]
mod tests;
