//! The assignment router: reads the store's change stream once and hands each
//! node's assignment feed ([`super::assignments`]) only the task changes about
//! that node.
//!
//! Without it every feed would receive and scan every committed change: with
//! 1,000 nodes that is 1,000 scans of each batch, and it made the dispatcher
//! the manager's largest cost. The router groups a batch's task changes by
//! node id (the task's new and old `node_id`; tasks never move, but a task
//! being assigned has an empty old one) and sends each registered feed a
//! [`Routed`] batch: the shared batch plus the positions of its changes.
//!
//! Consistency with a feed's snapshot: a feed registers first, then reads its
//! snapshot at applied index I, and drops routed batches with index ≤ I. A
//! batch applied after the snapshot is published after the registration (the
//! snapshot read and the apply are ordered by the store's lock), so the router
//! sees the registration when it routes that batch: nothing is missed.
//!
//! Nothing is ever lost silently. A feed whose channel is full (its agent reads
//! too slowly) and, when the router itself lags on the store's stream, every
//! feed, is unregistered: its channel closes, and the feed registers again and
//! starts over from a fresh snapshot (a COMPLETE message).

use std::sync::{Arc, Mutex, MutexGuard};

use shoal_proto::Task;
use shoal_proto::state::is_terminal;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fasthash::FastMap;
use crate::store::{Change, ChangeBatch, ChangeKind, Store, Stored};

/// Routed batches buffered towards one feed before it is made to start over.
/// At ~100 committed batches a second this is seconds of slack for a feed
/// whose agent reads slowly.
const FEED_BUFFER: usize = 1024;

/// The changes of one committed batch that concern one node.
#[derive(Debug)]
pub(super) struct Routed {
    pub batch: Arc<ChangeBatch>,
    /// Positions in `batch.changes`, in order.
    pub positions: Vec<u32>,
}

impl Routed {
    /// Every change of `batch` (for tests and callers that routed nothing).
    #[cfg(test)]
    pub fn all(batch: Arc<ChangeBatch>) -> Routed {
        let positions = (0..batch.changes.len() as u32).collect();
        Routed { batch, positions }
    }

    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.positions
            .iter()
            .map(|&p| &self.batch.changes[p as usize])
    }
}

/// Handle on the router of one dispatcher run. Clone freely.
#[derive(Clone)]
pub(super) struct Router {
    routes: Arc<Mutex<Routes>>,
}

/// A feed's registration: unregisters when dropped.
pub(super) struct Registration {
    routes: Arc<Mutex<Routes>>,
    node_id: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.routes).remove(&self.node_id, self.id);
    }
}

impl Router {
    /// A router subscribed to `store`'s changes from now on, and the loop that
    /// routes them until `token` is cancelled. Subscribing here, before any
    /// feed can register, is what lets a feed trust its snapshot.
    pub fn new(
        store: &Store,
        token: CancellationToken,
    ) -> (Router, impl Future<Output = ()> + use<>) {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let mut changes = store.subscribe();
        let router = Router {
            routes: routes.clone(),
        };
        let run = async move {
            loop {
                let received = tokio::select! {
                    _ = token.cancelled() => break,
                    r = changes.recv() => r,
                };
                match received {
                    Ok(batch) => lock(&routes).deliver(&batch),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "assignment router fell behind the store; every feed starts over"
                        );
                        lock(&routes).reset();
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            lock(&routes).close();
        };
        (router, run)
    }

    /// Register a feed for `node_id`. None once the router has stopped.
    pub fn register(&self, node_id: &str) -> Option<(Registration, mpsc::Receiver<Routed>)> {
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let id = lock(&self.routes).add(node_id, tx)?;
        let registration = Registration {
            routes: self.routes.clone(),
            node_id: node_id.to_string(),
            id,
        };
        Some((registration, rx))
    }
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(|e| e.into_inner())
}

/// The registered feeds by node. Plain data: routing is tested without a runtime.
struct Routes {
    open: bool,
    next_id: u64,
    /// Usually one feed per node; two while a replaced session's stream ends.
    feeds: FastMap<String, Vec<Feed>>,
}

struct Feed {
    id: u64,
    tx: mpsc::Sender<Routed>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            open: true,
            next_id: 0,
            feeds: FastMap::default(),
        }
    }
}

impl Routes {
    fn add(&mut self, node_id: &str, tx: mpsc::Sender<Routed>) -> Option<u64> {
        if !self.open {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.feeds
            .entry(node_id.to_string())
            .or_default()
            .push(Feed { id, tx });
        Some(id)
    }

    fn remove(&mut self, node_id: &str, id: u64) {
        if let Some(feeds) = self.feeds.get_mut(node_id) {
            feeds.retain(|f| f.id != id);
            if feeds.is_empty() {
                self.feeds.remove(node_id);
            }
        }
    }

    /// Send each registered node its share of `batch`. A feed that cannot take
    /// it is dropped: its channel closes and it starts over.
    fn deliver(&mut self, batch: &Arc<ChangeBatch>) {
        if self.feeds.is_empty() {
            return;
        }
        let mut shares: FastMap<&str, Vec<u32>> = FastMap::default();
        for (node, position) in by_node(batch) {
            if self.feeds.contains_key(node) {
                shares.entry(node).or_default().push(position);
            }
        }
        for (node, positions) in shares {
            let Some(feeds) = self.feeds.get_mut(node) else {
                continue;
            };
            feeds.retain(|feed| {
                let routed = Routed {
                    batch: batch.clone(),
                    positions: positions.clone(),
                };
                match feed.tx.try_send(routed) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(node.id = %node, "assignment feed fell behind; it starts over");
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            if feeds.is_empty() {
                self.feeds.remove(node);
            }
        }
    }

    /// Drop every feed: they all start over from a snapshot.
    fn reset(&mut self) {
        self.feeds.clear();
    }

    /// The router stopped: drop every feed and refuse new ones.
    fn close(&mut self) {
        self.open = false;
        self.feeds.clear();
    }
}

/// The task changes of `batch` as (node id, position) pairs: each change under
/// its task's node, and also under the node of the value it replaced when
/// that differs. Unassigned tasks and other objects concern no node.
///
/// An agent's report on a task still under way concerns no node either: the
/// observed status is the agent's own, so the feed would drop it (see
/// `NodeView::absorb`), having woken for nothing once per node and commit. A
/// report that ends the task is routed: the task releases its secrets and
/// configs.
fn by_node(batch: &ChangeBatch) -> impl Iterator<Item = (&str, u32)> {
    batch
        .changes
        .iter()
        .enumerate()
        .flat_map(|(position, change)| {
            let Stored::Task(task) = &change.object else {
                return [None, None];
            };
            if change.kind == ChangeKind::Reported && !has_ended(task) {
                return [None, None];
            }
            let new = &task.node_id;
            let old = match &change.old {
                Some(Stored::Task(old)) if old.node_id != *new => Some(old.node_id.as_str()),
                _ => None,
            };
            [Some(new.as_str()), old]
                .map(|node| node.filter(|n| !n.is_empty()).map(|n| (n, position as u32)))
        })
        .flatten()
}

fn has_ended(task: &Task) -> bool {
    task.status.as_ref().is_some_and(|s| is_terminal(s.state()))
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
