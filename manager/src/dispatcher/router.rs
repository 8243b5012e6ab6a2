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
mod tests {
    use shoal_proto::{Node, TaskState, TaskStatus};

    use super::*;
    use crate::store::ObjectExt;

    fn task(id: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            ..Default::default()
        }
    }

    fn updated(new: Task, old: Task) -> Change {
        Change {
            kind: ChangeKind::Updated,
            object: Stored::Task(new.into()),
            old: Some(Stored::Task(old.into())),
        }
    }

    fn created(new: Task) -> Change {
        Change {
            kind: ChangeKind::Created,
            object: Stored::Task(new.into()),
            old: None,
        }
    }

    fn batch(index: u64, changes: Vec<Change>) -> Arc<ChangeBatch> {
        Arc::new(ChangeBatch { index, changes })
    }

    fn ids(routed: &Routed) -> Vec<&str> {
        routed.changes().map(|c| c.object.id()).collect()
    }

    #[test]
    fn changes_go_to_the_nodes_of_their_tasks() {
        let b = batch(
            7,
            vec![
                created(task("pending", "")),
                updated(task("a", "n1"), task("a", "")),
                Change {
                    kind: ChangeKind::Updated,
                    object: Stored::Node(Arc::new(Node {
                        id: "n1".into(),
                        ..Default::default()
                    })),
                    old: None,
                },
                updated(task("b", "n2"), task("b", "n2")),
                // Tasks never move, but a moved one must reach both nodes.
                updated(task("c", "n2"), task("c", "n1")),
            ],
        );
        let pairs: Vec<_> = by_node(&b).collect();
        assert_eq!(pairs, vec![("n1", 1), ("n2", 3), ("n2", 4), ("n1", 4)]);

        let mut routes = Routes::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx3, mut rx3) = mpsc::channel(4);
        routes.add("n1", tx1).expect("open");
        routes.add("n3", tx3).expect("open");
        routes.deliver(&b);
        let routed = rx1.try_recv().expect("n1's share");
        assert_eq!(routed.batch.index, 7);
        assert_eq!(ids(&routed), vec!["a", "c"]);
        assert!(rx1.try_recv().is_err(), "one message per batch");
        assert!(rx3.try_recv().is_err(), "nothing for n3");
    }

    #[test]
    fn only_reports_that_end_a_task_reach_its_node() {
        let reported = |id: &str, state: TaskState| {
            let at = |state: TaskState| Task {
                status: Some(TaskStatus {
                    state: state as i32,
                    ..Default::default()
                }),
                ..task(id, "n1")
            };
            Change {
                kind: ChangeKind::Reported,
                object: Stored::Task(at(state).into()),
                old: Some(Stored::Task(at(TaskState::Assigned).into())),
            }
        };
        let b = batch(
            3,
            vec![
                reported("starting", TaskState::Starting),
                reported("running", TaskState::Running),
                reported("failed", TaskState::Failed),
                reported("complete", TaskState::Complete),
            ],
        );
        let pairs: Vec<_> = by_node(&b).collect();
        assert_eq!(pairs, vec![("n1", 2), ("n1", 3)]);
    }

    #[test]
    fn every_feed_of_a_node_gets_its_share_until_it_unregisters() {
        let mut routes = Routes::default();
        let (old_tx, mut old_rx) = mpsc::channel(4);
        let (new_tx, mut new_rx) = mpsc::channel(4);
        let old = routes.add("n1", old_tx).expect("open");
        routes.add("n1", new_tx).expect("open");
        routes.deliver(&batch(1, vec![created(task("a", "n1"))]));
        assert_eq!(ids(&old_rx.try_recv().expect("old feed")), vec!["a"]);
        assert_eq!(ids(&new_rx.try_recv().expect("new feed")), vec!["a"]);

        routes.remove("n1", old);
        routes.deliver(&batch(2, vec![created(task("b", "n1"))]));
        assert!(old_rx.try_recv().is_err());
        assert_eq!(ids(&new_rx.try_recv().expect("new feed")), vec!["b"]);
    }

    #[test]
    fn a_full_feed_is_dropped_and_so_told_to_start_over() {
        let mut routes = Routes::default();
        let (slow_tx, mut slow_rx) = mpsc::channel(2);
        let (fast_tx, mut fast_rx) = mpsc::channel(8);
        routes.add("slow", slow_tx).expect("open");
        routes.add("fast", fast_tx).expect("open");
        for index in 1..=3 {
            routes.deliver(&batch(
                index,
                vec![created(task("s", "slow")), created(task("f", "fast"))],
            ));
        }
        // The slow feed keeps what it was sent, then sees its channel closed:
        // never a silent gap.
        assert_eq!(slow_rx.try_recv().expect("first").batch.index, 1);
        assert_eq!(slow_rx.try_recv().expect("second").batch.index, 2);
        assert_eq!(
            slow_rx.try_recv().unwrap_err(),
            mpsc::error::TryRecvError::Disconnected
        );
        let fast: Vec<_> = std::iter::from_fn(|| fast_rx.try_recv().ok())
            .map(|r| r.batch.index)
            .collect();
        assert_eq!(fast, vec![1, 2, 3], "other feeds are unaffected");
        assert!(!routes.feeds.contains_key("slow"));
    }

    #[test]
    fn a_lagging_router_makes_every_feed_start_over_and_a_stopped_one_refuses_feeds() {
        let mut routes = Routes::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        routes.add("n1", tx1).expect("open");
        routes.add("n2", tx2).expect("open");
        routes.reset();
        for rx in [&mut rx1, &mut rx2] {
            assert_eq!(
                rx.try_recv().unwrap_err(),
                mpsc::error::TryRecvError::Disconnected
            );
        }
        let (tx, _rx) = mpsc::channel(4);
        assert!(routes.add("n1", tx).is_some(), "feeds come back");
        routes.close();
        let (tx, _rx) = mpsc::channel(4);
        assert!(routes.add("n1", tx).is_none());
    }

    #[tokio::test]
    async fn the_router_follows_the_store_and_unregisters_dropped_feeds() {
        let store = Store::in_memory();
        let token = CancellationToken::new();
        let (router, run) = Router::new(&store, token.clone());
        let running = tokio::spawn(run);
        let (registration, mut rx) = router.register("n1").expect("running");
        store
            .propose(vec![
                crate::store::Action::Create(crate::store::Object::Task(Box::new(task("a", "n1")))),
                crate::store::Action::Create(crate::store::Object::Task(Box::new(task("b", "n2")))),
            ])
            .await
            .expect("write");
        let routed = rx.recv().await.expect("routed");
        assert_eq!(ids(&routed), vec!["a"]);

        drop(registration);
        assert!(lock(&router.routes).feeds.is_empty());

        token.cancel();
        running.await.expect("router loop");
        assert!(router.register("n1").is_none(), "stopped");
    }
}
