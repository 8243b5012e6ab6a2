//! Task status reports (`status.rs`): unit tests of merging and screening,
//! then scenarios over gRPC (the harness of `dispatcher/tests.rs`): updates
//! only move forward and only on their own node, the reporting stream, and
//! batching.

use shoal_proto::Task;
use tonic::Code;

use super::*;
use crate::dispatcher::tests::{Harness, answer, status_request};
use crate::store::Object;
use crate::test_fixtures::{svc_task, task_state};

fn status(state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        state: state as i32,
        message: message.into(),
        ..Default::default()
    }
}

#[test]
fn merging_keeps_the_furthest_state() {
    let merged = merge(
        [
            ("a".to_string(), status(TaskState::Running, "up")),
            ("a".to_string(), status(TaskState::Starting, "late")),
            ("b".to_string(), status(TaskState::Running, "first")),
            ("b".to_string(), status(TaskState::Running, "second")),
        ]
        .into_iter(),
    );
    assert_eq!(merged["a"].message, "up");
    assert_eq!(merged["b"].message, "second");
}

#[tokio::test]
async fn screening_refuses_other_nodes_and_drops_backward_moves() {
    let store = Store::in_memory();
    let mk = |id: &str, node: &str, state: TaskState| {
        Action::Create(Object::Task(Box::new(Task {
            id: id.into(),
            node_id: node.into(),
            status: Some(status(state, "")),
            ..Default::default()
        })))
    };
    store
        .propose(vec![
            mk("mine", "n1", TaskState::Running),
            mk("theirs", "n2", TaskState::Assigned),
        ])
        .await
        .expect("seed");
    let u = |id: &str, state: TaskState| TaskStatusUpdate {
        task_id: id.into(),
        status: Some(status(state, "")),
    };
    let updates = vec![
        u("mine", TaskState::Starting),
        u("mine", TaskState::Complete),
        u("theirs", TaskState::Running),
        u("reaped", TaskState::Running),
    ];
    let screened = store.read(|s| screen(s, "n1", updates));
    assert_eq!(screened.refused, vec!["theirs".to_string()]);
    let accepted: Vec<_> = screened
        .accepted
        .iter()
        .map(|(id, s)| (id.as_str(), s.state()))
        .collect();
    assert_eq!(accepted, vec![("mine", TaskState::Complete)]);
}

#[tokio::test]
async fn status_updates_only_move_forward_and_only_on_their_own_node() {
    let mut h = Harness::start_patient().await;
    let (first, _session) = h.open("n1", "host-a").await;
    h.create_task("mine", "n1", TaskState::Assigned).await;
    h.create_task("theirs", "n2", TaskState::Assigned).await;
    let sid = first.session_id.clone();

    // The reply comes after the commit: no polling needed.
    h.report(&sid, &[("mine", TaskState::Running)])
        .await
        .expect("forward");
    assert_eq!(task_state(&h.task("mine")), TaskState::Running);

    h.report(
        &sid,
        &[
            ("mine", TaskState::Starting),
            ("reaped-already", TaskState::Running),
        ],
    )
    .await
    .expect("a backward move and an unknown task are ignored, not errors");
    assert_eq!(task_state(&h.task("mine")), TaskState::Running);

    let err = h
        .report(
            &sid,
            &[
                ("theirs", TaskState::Running),
                ("mine", TaskState::Complete),
            ],
        )
        .await
        .expect_err("another node's task");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("theirs"), "{}", err.message());
    assert_eq!(task_state(&h.task("theirs")), TaskState::Assigned);
    assert_eq!(
        task_state(&h.task("mine")),
        TaskState::Complete,
        "valid updates still apply"
    );

    let err = h
        .report("no-such-session", &[("mine", TaskState::Complete)])
        .await
        .expect_err("unknown session");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn reports_on_one_stream_are_answered_in_order_once_committed_until_one_fails() {
    let mut h = Harness::start_patient().await;
    let (first, _session) = h.open("n1", "host-a").await;
    for (id, node) in [("a", "n1"), ("b", "n1"), ("theirs", "n2")] {
        h.create_task(id, node, TaskState::Assigned).await;
    }
    let sid = first.session_id.clone();
    let (requests, mut answers) = h.status_stream().await;

    for id in ["a", "b"] {
        let request = status_request(&sid, &[(id, TaskState::Running)]);
        requests.send(request).await.expect("stream open");
        answer(&mut answers)
            .await
            .expect("an answer")
            .expect("accepted");
        // Answered after the commit, as the unary call is.
        assert_eq!(task_state(&h.task(id)), TaskState::Running, "task {id}");
    }

    let request = status_request(&sid, &[("theirs", TaskState::Running)]);
    requests.send(request).await.expect("stream open");
    let err = answer(&mut answers)
        .await
        .expect("an answer")
        .expect_err("another node's task");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("theirs"), "{}", err.message());
    assert_eq!(task_state(&h.task("theirs")), TaskState::Assigned);
    assert!(
        answer(&mut answers).await.is_none(),
        "the error ends the stream"
    );
}

#[tokio::test]
async fn a_status_stream_ends_with_its_session() {
    let mut h = Harness::start_patient().await;
    let (old, _old_session) = h.open("n1", "host-a").await;
    h.create_task("a", "n1", TaskState::Assigned).await;
    let (requests, mut answers) = h.status_stream().await;
    let request = status_request(&old.session_id, &[("a", TaskState::Starting)]);
    requests.send(request).await.expect("stream open");
    answer(&mut answers)
        .await
        .expect("an answer")
        .expect("accepted");

    // A second session for the node ends the first, and its stream with it.
    let (_new, _new_session) = h.open("n1", "host-a").await;
    let err = answer(&mut answers)
        .await
        .expect("a last answer")
        .expect_err("the session ended");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert_eq!(task_state(&h.task("a")), TaskState::Starting);
}

#[tokio::test]
async fn many_concurrent_reports_are_all_committed() {
    let mut h = Harness::start_patient().await;
    let (first, _session) = h.open("n1", "host-a").await;
    let ids: Vec<String> = (0..300).map(|i| format!("t{i:03}")).collect();
    let creates = ids
        .iter()
        .map(|id| {
            Action::Create(Object::Task(Box::new(svc_task(
                id,
                "n1",
                TaskState::Assigned,
                TaskState::Running,
            ))))
        })
        .collect();
    h.store.propose(creates).await.expect("seed");
    let index_before = h.store.read(|s| s.applied_index);
    let reports = ids.iter().map(|id| {
        let mut client = h.client.clone();
        let request = UpdateTaskStatusRequest {
            session_id: first.session_id.clone(),
            updates: vec![TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(TaskStatus {
                    state: TaskState::Running as i32,
                    ..Default::default()
                }),
            }],
        };
        async move { client.update_task_status(request).await }
    });
    for result in futures::future::join_all(reports).await {
        result.expect("report");
    }
    assert!(
        ids.iter()
            .all(|id| task_state(&h.task(id)) == TaskState::Running)
    );
    let entries = h.store.read(|s| s.applied_index) - index_before;
    println!("300 concurrent status reports committed in {entries} store entries");
    assert!(entries < 300, "reports are batched");
}
