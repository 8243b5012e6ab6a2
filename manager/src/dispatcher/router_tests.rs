//! Unit tests of the assignment router (`router.rs`).

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
