//! Unit tests of which changes make a service dirty (`dirty.rs`).

use std::sync::Arc;

use shoal_proto::TaskState;

use super::*;
use crate::store::Change;
use crate::test_fixtures::svc_task;

fn reported(id: &str, state: TaskState) -> Task {
    svc_task(id, "n1", state, TaskState::Running)
}

fn dirty_after(kind: ChangeKind, new: Task, old: Option<Task>) -> bool {
    let mut dirty = Dirty::default();
    dirty.note(&ChangeBatch {
        index: 1,
        changes: vec![Change {
            kind,
            object: Stored::Task(new.into()),
            old: old.map(Arc::new).map(Stored::Task),
        }],
    });
    dirty.services.contains("svc")
}

#[test]
fn progress_reports_do_not_make_a_service_dirty_but_endings_do() {
    use TaskState::*;
    for kind in [ChangeKind::Updated, ChangeKind::Reported] {
        let update = |from, to| dirty_after(kind, reported("t", to), Some(reported("t", from)));
        assert!(!update(Assigned, Accepted), "{kind:?}");
        assert!(!update(Preparing, Running), "{kind:?}");
        assert!(
            update(Running, Failed),
            "{kind:?}: a task that ended needs a replacement"
        );
    }
    let mut pending = reported("t", Pending);
    pending.node_id.clear();
    let mut dirty = Dirty::default();
    dirty.note(&ChangeBatch {
        index: 1,
        changes: vec![Change {
            kind: ChangeKind::Updated,
            object: Stored::Task(Arc::new(reported("t", Assigned))),
            old: Some(Stored::Task(pending.into())),
        }],
    });
    assert!(
        dirty.services.is_empty() && !dirty.is_empty(),
        "an assignment is noted with its node, not as a dirty service"
    );
    assert_eq!(dirty.assigned["svc"], HashSet::from(["n1".to_string()]));
    let mut moved = reported("t", Running);
    moved.desired_state = Shutdown as i32;
    assert!(dirty_after(
        ChangeKind::Updated,
        moved,
        Some(reported("t", Running))
    ));
    assert!(dirty_after(ChangeKind::Created, reported("t", New), None));
    let created = |dirty: &mut Dirty, id: &str| {
        dirty.note(&ChangeBatch {
            index: 1,
            changes: vec![Change {
                kind: ChangeKind::Created,
                object: Stored::Task(Arc::new(reported(id, New))),
                old: None,
            }],
        })
    };
    let mut dirty = Dirty::default();
    dirty.creating("mine");
    created(&mut dirty, "mine");
    assert!(
        dirty.services.is_empty(),
        "the orchestrator's own creation, committed, is no news"
    );
    assert_eq!(
        dirty.assigned["svc"],
        HashSet::from(["n1".to_string()]),
        "but the node the scheduler placed it on must still keep it"
    );
    let mut unplaced = Dirty::default();
    unplaced.creating("pending");
    unplaced.note(&ChangeBatch {
        index: 1,
        changes: vec![Change {
            kind: ChangeKind::Created,
            object: Stored::Task(Arc::new(Task {
                node_id: String::new(),
                ..reported("pending", Pending)
            })),
            old: None,
        }],
    });
    assert!(unplaced.is_empty(), "an unplaced creation of ours: nothing");
    created(&mut dirty, "mine");
    assert!(
        dirty.services.contains("svc"),
        "a second creation of that id is not the echo"
    );
    let mut dirty = Dirty::default();
    dirty.creating("refused");
    dirty.caught_up();
    created(&mut dirty, "refused");
    assert!(
        dirty.services.contains("svc"),
        "once caught up, no creation is expected"
    );
    assert!(dirty_after(
        ChangeKind::Deleted,
        reported("t", Running),
        None
    ));
}

#[test]
fn a_node_rewritten_as_it_was_makes_nothing_dirty_but_a_state_or_spec_change_does() {
    use shoal_proto::{NodeAvailability, NodeSpec, NodeState, NodeStatus};
    let node = |state: NodeState, addr: &str| Node {
        id: "n1".into(),
        spec: Some(NodeSpec {
            availability: NodeAvailability::Active as i32,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            message: String::new(),
            addr: addr.into(),
        }),
        ..Default::default()
    };
    let dirty_nodes = |kind, new: Node, old: Option<Node>| {
        let mut dirty = Dirty::default();
        dirty.note(&ChangeBatch {
            index: 1,
            changes: vec![Change {
                kind,
                object: Stored::Node(new.into()),
                old: old.map(Arc::new).map(Stored::Node),
            }],
        });
        !dirty.nodes.is_empty()
    };
    let ready = node(NodeState::Ready, "10.0.0.1");
    assert!(
        !dirty_nodes(ChangeKind::Updated, ready.clone(), Some(ready.clone())),
        "a new session's READY rewrite"
    );
    assert!(
        !dirty_nodes(
            ChangeKind::Updated,
            node(NodeState::Ready, "10.0.0.2"),
            Some(ready.clone())
        ),
        "a new address"
    );
    assert!(dirty_nodes(
        ChangeKind::Updated,
        node(NodeState::Down, "10.0.0.1"),
        Some(ready.clone())
    ));
    assert!(dirty_nodes(
        ChangeKind::Updated,
        ready.clone(),
        Some(node(NodeState::Down, "10.0.0.1"))
    ));
    let mut drained = ready.clone();
    drained.spec.as_mut().unwrap().availability = NodeAvailability::Drain as i32;
    assert!(dirty_nodes(
        ChangeKind::Updated,
        drained,
        Some(ready.clone())
    ));
    let mut relabelled = ready.clone();
    relabelled.description = Some(shoal_proto::NodeDescription {
        hostname: "renamed".into(),
        ..Default::default()
    });
    assert!(dirty_nodes(
        ChangeKind::Updated,
        relabelled,
        Some(ready.clone())
    ));
    assert!(dirty_nodes(ChangeKind::Created, ready.clone(), None));
    assert!(dirty_nodes(ChangeKind::Deleted, ready, None));
}
