//! Unit tests of the assignments stream (`assignments.rs`).

use std::sync::Arc;

use shoal_proto::TaskStatus;

use super::*;
use crate::store::{Change, ChangeBatch};

/// The index of the snapshot the tests' COMPLETE messages stand for.
const SNAPSHOT: u64 = 1;

fn task(id: &str, node: &str, state: TaskState, desired: TaskState) -> Task {
    Task {
        id: id.into(),
        node_id: node.into(),
        desired_state: desired as i32,
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn change(kind: ChangeKind, new: Task, old: Option<Task>) -> Routed {
    at(2, kind, new, old)
}

fn at(index: u64, kind: ChangeKind, new: Task, old: Option<Task>) -> Routed {
    Routed::all(Arc::new(ChangeBatch {
        index,
        changes: vec![Change {
            kind,
            object: Stored::Task(new.into()),
            old: old.map(Arc::new).map(Stored::Task),
        }],
    }))
}

fn ids(message: &AssignmentsMessage) -> Vec<&str> {
    message.tasks.iter().map(|t| t.id.as_str()).collect()
}

#[test]
fn only_news_reaches_the_agent() {
    use TaskState::*;
    let mut view = NodeView::new("n1".into());
    let complete = view.complete(vec![task("a", "n1", Assigned, Running)]);
    assert_eq!(complete.sequence, 1);

    let mut p = super::Pending::default();
    // The agent's own status report: not news.
    view.absorb(
        &change(
            ChangeKind::Updated,
            task("a", "n1", Running, Running),
            Some(task("a", "n1", Assigned, Running)),
        ),
        SNAPSHOT,
        &mut p,
    );
    // The same as a report action: not news either, and nothing compared.
    view.absorb(
        &change(
            ChangeKind::Reported,
            task("a", "n1", Running, Running),
            Some(task("a", "n1", Assigned, Running)),
        ),
        SNAPSHOT,
        &mut p,
    );
    // Another node's task and a task not yet assigned: not for this agent.
    view.absorb(
        &change(
            ChangeKind::Created,
            task("b", "n2", Assigned, Running),
            None,
        ),
        SNAPSHOT,
        &mut p,
    );
    view.absorb(
        &change(ChangeKind::Created, task("c", "n1", Pending, Running), None),
        SNAPSHOT,
        &mut p,
    );
    assert!(view.incremental(p).is_none());

    let mut p = super::Pending::default();
    // The scheduler assigns c: first appearance.
    view.absorb(
        &change(
            ChangeKind::Updated,
            task("c", "n1", Assigned, Running),
            Some(task("c", "n1", Pending, Running)),
        ),
        SNAPSHOT,
        &mut p,
    );
    // The orchestrator shuts a down: desired state changed.
    view.absorb(
        &change(
            ChangeKind::Updated,
            task("a", "n1", Running, Shutdown),
            Some(task("a", "n1", Running, Running)),
        ),
        SNAPSHOT,
        &mut p,
    );
    // Then a status report of a in the same drain: the message carries the latest copy.
    view.absorb(
        &change(
            ChangeKind::Reported,
            task("a", "n1", Shutdown, Shutdown),
            Some(task("a", "n1", Running, Shutdown)),
        ),
        SNAPSHOT,
        &mut p,
    );
    let m = view.incremental(p).expect("news");
    assert_eq!(m.sequence, 2);
    assert_eq!(m.r#type, AssignmentsType::Incremental as i32);
    assert_eq!(ids(&m), vec!["a", "c"]);
    assert_eq!(
        m.tasks[0].status.as_ref().map(|s| s.state()),
        Some(Shutdown)
    );

    let mut p = super::Pending::default();
    view.absorb(
        &change(
            ChangeKind::Deleted,
            task("a", "n1", Shutdown, Shutdown),
            None,
        ),
        SNAPSHOT,
        &mut p,
    );
    // Deleting a task the agent never had is not news either.
    view.absorb(
        &change(
            ChangeKind::Deleted,
            task("b", "n2", Assigned, Running),
            None,
        ),
        SNAPSHOT,
        &mut p,
    );
    let m = view.incremental(p).expect("removal");
    assert!(m.tasks.is_empty());
    assert_eq!(m.removed, vec!["a".to_string()]);
    assert_eq!(m.sequence, 3);
}

#[test]
fn changes_the_snapshot_already_holds_are_not_sent_again() {
    use TaskState::*;
    let mut view = NodeView::new("n1".into());
    view.complete(vec![task("a", "n1", Assigned, Running)]);
    let mut p = super::Pending::default();
    // Routed before the snapshot was read, but committed at or before it.
    let assigned = || {
        (
            task("a", "n1", Assigned, Shutdown),
            Some(task("a", "n1", Assigned, Running)),
        )
    };
    for index in [SNAPSHOT - 1, SNAPSHOT] {
        let (new, old) = assigned();
        view.absorb(&at(index, ChangeKind::Updated, new, old), SNAPSHOT, &mut p);
    }
    assert!(view.incremental(p).is_none());

    let mut p = super::Pending::default();
    let (new, old) = assigned();
    view.absorb(
        &at(SNAPSHOT + 1, ChangeKind::Updated, new, old),
        SNAPSHOT,
        &mut p,
    );
    let m = view.incremental(p).expect("committed after the snapshot");
    assert_eq!(ids(&m), vec!["a"]);
}
