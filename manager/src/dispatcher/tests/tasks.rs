//! Tasks: the assignments stream and status reports.

use super::*;

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
            Action::Create(Object::Task(Box::new(task(
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
        let mut t = task(
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
