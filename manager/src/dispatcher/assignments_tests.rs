//! The assignments stream (`assignments.rs`): unit tests of what a node is
//! sent for each change, then scenarios over gRPC (the harness of
//! `dispatcher/tests.rs`): complete then incremental, no echo of the agent's
//! own reports, a fresh complete set for an agent that fell behind.

use std::sync::Arc;

use shoal_proto::TaskStatus;

use super::*;
use crate::dispatcher::tests::{Harness, next};
use crate::store::{Action, Change, ChangeBatch, Object};
use crate::test_fixtures::{svc_task, task_state};

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

#[tokio::test]
async fn assignments_arrive_complete_then_as_changes() {
    let mut h = Harness::start_patient().await;
    let (first, _session) = h.open("n1", "host-a").await;
    h.create_task("t1", "n1", TaskState::Assigned).await;
    h.create_task("other", "n2", TaskState::Assigned).await;
    h.create_task("waiting", "n1", TaskState::Pending).await;

    let mut stream = h.assignments(&first.session_id).await;
    let complete = next(&mut stream).await.expect("complete");
    assert_eq!(complete.r#type(), AssignmentsType::Complete);
    let ids: Vec<_> = complete.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, vec!["t1"]);

    h.create_task("t2", "n1", TaskState::Assigned).await;
    let added = next(&mut stream).await.expect("incremental");
    assert_eq!(added.r#type(), AssignmentsType::Incremental);
    assert!(added.sequence > complete.sequence);
    assert_eq!(
        added
            .tasks
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        vec!["t2"]
    );
    assert!(added.removed.is_empty());

    let t1 = h.task("t1");
    h.write(Action::Delete(Object::Task(t1.into()))).await;
    let removed = next(&mut stream).await.expect("removal");
    assert_eq!(removed.r#type(), AssignmentsType::Incremental);
    assert!(removed.sequence > added.sequence);
    assert!(removed.tasks.is_empty());
    assert_eq!(removed.removed, vec!["t1".to_string()]);
}

#[tokio::test]
async fn agents_do_not_receive_their_own_status_back() {
    let mut h = Harness::start_patient().await;
    let (first, _session) = h.open("n1", "host-a").await;
    h.create_task("t1", "n1", TaskState::Assigned).await;
    let mut stream = h.assignments(&first.session_id).await;
    assert_eq!(next(&mut stream).await.expect("complete").tasks.len(), 1);

    h.report(&first.session_id, &[("t1", TaskState::Running)])
        .await
        .expect("report");
    // Then something the agent does care about. If the status report had been
    // echoed, it would arrive first.
    let mut t1 = h.task("t1");
    t1.desired_state = TaskState::Shutdown as i32;
    h.write(Action::Update(Object::Task(t1.into()))).await;
    let message = next(&mut stream).await.expect("desired state change");
    assert_eq!(message.tasks.len(), 1);
    assert_eq!(message.tasks[0].desired_state(), TaskState::Shutdown);
    assert_eq!(task_state(&message.tasks[0]), TaskState::Running);
}

#[tokio::test]
async fn an_agent_that_falls_behind_gets_a_fresh_complete_set() {
    let mut h = Harness::start_patient().await;
    let (first, _session) = h.open("n1", "host-a").await;
    let mut stream = h.assignments(&first.session_id).await;
    assert!(next(&mut stream).await.expect("complete").tasks.is_empty());

    // The agent does not read while far more changes than the store's watch
    // buffers are committed, each large enough to fill the transport's windows.
    let big = vec!["X".repeat(4096)];
    let count = 8000;
    for i in 0..count {
        let mut t = svc_task(
            &format!("t{i:05}"),
            "n1",
            TaskState::Assigned,
            TaskState::Running,
        );
        t.spec = Some(
            shoal_proto::TaskSpec {
                container: Some(shoal_proto::ContainerSpec {
                    env: big.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        );
        h.write(Action::Create(Object::Task(t.into()))).await;
    }

    // Replaying the messages must give exactly the store's set, and the lag
    // must have been answered with a new COMPLETE message.
    let mut assigned = std::collections::BTreeSet::new();
    let mut sequence = 1;
    let mut completes = 0;
    while assigned.len() < count {
        let message = next(&mut stream).await.expect("stream open");
        assert!(message.sequence > sequence, "sequence increases");
        sequence = message.sequence;
        if message.r#type() == AssignmentsType::Complete {
            completes += 1;
            assigned.clear();
        }
        assigned.extend(message.tasks.into_iter().map(|t| t.id));
        for id in message.removed {
            assigned.remove(&id);
        }
    }
    println!(
        "{count} changes reached a lagging agent in {} messages, {completes} of them complete",
        sequence - 1
    );
    assert!(completes >= 1, "a lagging agent gets a complete set");
    assert_eq!(
        assigned.len(),
        h.store.read(|s| s.tasks_on_node("n1").count())
    );
}
