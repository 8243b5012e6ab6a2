//! The worker against the fake runtime: adoption after a restart, complete sets
//! replacing the task set, incremental changes.

use std::sync::Arc;

use shoal_proto::{AssignmentsMessage, AssignmentsType, Task, TaskState};
use tokio_util::sync::CancellationToken;

use crate::fake::FakeRuntime;
use crate::reporter::Reporter;
use crate::runtime::ContainerState;
use crate::testing::{NODE, eventually, reported, task};
use crate::worker::Worker;

fn complete(tasks: Vec<Task>) -> AssignmentsMessage {
    AssignmentsMessage {
        r#type: AssignmentsType::Complete as i32,
        tasks,
        removed: vec![],
        sequence: 1,
        ..Default::default()
    }
}

fn incremental(tasks: Vec<Task>, removed: Vec<&str>) -> AssignmentsMessage {
    AssignmentsMessage {
        r#type: AssignmentsType::Incremental as i32,
        tasks,
        removed: removed.into_iter().map(String::from).collect(),
        sequence: 2,
        ..Default::default()
    }
}

fn worker(fake: &Arc<FakeRuntime>) -> (Worker<FakeRuntime>, Arc<Reporter>) {
    let reporter = Arc::new(Reporter::new());
    (
        Worker::new(fake.clone(), reporter.clone(), CancellationToken::new()),
        reporter,
    )
}

fn running_task(id: &str) -> Task {
    let mut t = task(id, "nginx", TaskState::Running);
    t.status.as_mut().unwrap().state = TaskState::Running as i32;
    t
}

#[tokio::test]
async fn adoption_keeps_wanted_containers_and_removes_the_rest() {
    let fake = Arc::new(FakeRuntime::default());
    let a_container = fake.insert(NODE, "A", ContainerState::Running);
    fake.insert(NODE, "B", ContainerState::Running);
    let (mut worker, reporter) = worker(&fake);

    worker
        .apply(NODE, complete(vec![running_task("A")]))
        .await
        .unwrap();

    eventually("B's container to be removed", || async {
        (fake.container_state("B").is_none()).then_some(())
    })
    .await;
    let status = reported(&reporter, "A", TaskState::Running).await;
    assert_eq!(status.container.unwrap().container_id, a_container);
    assert_eq!(fake.running(), vec!["A".to_string()]);
    assert_eq!(fake.created_count(), 2, "A was recreated");
    // The adopted task is watched: its crash is reported.
    fake.exit("A", 3);
    assert_eq!(
        reported(&reporter, "A", TaskState::Failed)
            .await
            .container
            .unwrap()
            .exit_code,
        3
    );
}

#[tokio::test]
async fn adoption_reports_a_container_that_exited_meanwhile() {
    let fake = Arc::new(FakeRuntime::default());
    fake.insert(NODE, "A", ContainerState::Exited(0));
    let (mut worker, reporter) = worker(&fake);
    worker
        .apply(NODE, complete(vec![running_task("A")]))
        .await
        .unwrap();
    reported(&reporter, "A", TaskState::Complete).await;
    assert_eq!(fake.created_count(), 1);
}

#[tokio::test]
async fn a_complete_set_replaces_the_tasks() {
    let fake = Arc::new(FakeRuntime::default());
    let (mut worker, reporter) = worker(&fake);
    let x = task("X", "nginx", TaskState::Running);
    let y = task("Y", "nginx", TaskState::Running);
    worker
        .apply(NODE, complete(vec![x, y.clone()]))
        .await
        .unwrap();
    reported(&reporter, "X", TaskState::Running).await;
    reported(&reporter, "Y", TaskState::Running).await;

    worker.apply(NODE, complete(vec![y])).await.unwrap();
    eventually("X's container to be removed", || async {
        (fake.container_state("X").is_none()).then_some(())
    })
    .await;
    assert_eq!(fake.running(), vec!["Y".to_string()]);
    assert_eq!(worker.assigned(), 1);
    assert_eq!(fake.created_count(), 2, "Y was recreated");
    assert_eq!(
        reporter.stats().tasks_received(),
        2,
        "Y, sent twice, counts once"
    );
}

#[tokio::test]
async fn incremental_changes_add_update_and_remove() {
    let fake = Arc::new(FakeRuntime::default());
    let (mut worker, reporter) = worker(&fake);
    worker.apply(NODE, complete(vec![])).await.unwrap();

    worker
        .apply(
            NODE,
            incremental(vec![task("X", "nginx", TaskState::Running)], vec![]),
        )
        .await
        .unwrap();
    reported(&reporter, "X", TaskState::Running).await;

    worker
        .apply(
            NODE,
            incremental(vec![task("X", "nginx", TaskState::Shutdown)], vec![]),
        )
        .await
        .unwrap();
    reported(&reporter, "X", TaskState::Shutdown).await;
    assert!(fake.running().is_empty());

    worker
        .apply(NODE, incremental(vec![], vec!["X"]))
        .await
        .unwrap();
    eventually("X's container to be removed", || async {
        (fake.container_count() == 0).then_some(())
    })
    .await;
    assert_eq!(worker.assigned(), 0);
}

#[tokio::test]
async fn shutdown_ends_controllers_but_keeps_containers() {
    let fake = Arc::new(FakeRuntime::default());
    let (mut worker, reporter) = worker(&fake);
    worker
        .apply(NODE, complete(vec![task("X", "nginx", TaskState::Running)]))
        .await
        .unwrap();
    reported(&reporter, "X", TaskState::Running).await;
    worker.shutdown().await;
    assert_eq!(fake.running(), vec!["X".to_string()]);
}

#[tokio::test]
async fn thousands_of_tasks_run_on_one_worker() {
    let fake = Arc::new(FakeRuntime::default());
    let (mut worker, reporter) = worker(&fake);
    let tasks = (0..5_000)
        .map(|i| task(&format!("t{i}"), "nginx", TaskState::Running))
        .collect();
    worker.apply(NODE, complete(tasks)).await.unwrap();
    eventually("every task running", || async {
        (fake.running().len() == 5_000).then_some(())
    })
    .await;
    reported(&reporter, "t4999", TaskState::Running).await;
    assert_eq!(fake.created_count(), 5_000);
}

fn with_secret(mut t: Task, secret_id: &str) -> Task {
    let c = t.spec.as_mut().unwrap().container.as_mut().unwrap();
    c.secrets.push(shoal_proto::SecretReference {
        secret_id: secret_id.into(),
        secret_name: "db".into(),
        target: "password".into(),
        uid: 1000,
        gid: 1000,
        mode: Some(0o400),
    });
    t
}

#[tokio::test]
async fn a_task_gets_the_secrets_of_its_message_and_fails_without_them() {
    let fake = Arc::new(FakeRuntime::default());
    let (mut worker, reporter) = worker(&fake);
    let mut msg = complete(vec![with_secret(
        task("A", "nginx", TaskState::Running),
        "x1",
    )]);
    msg.secrets = vec![shoal_proto::Payload {
        id: "x1".into(),
        name: "db".into(),
        data: b"hunter2".to_vec(),
    }];
    worker.apply(NODE, msg).await.unwrap();
    reported(&reporter, "A", TaskState::Running).await;
    let files = fake.files_of("A").expect("A's container got files");
    assert_eq!(files.files.len(), 1);
    let f = &files.files[0];
    assert_eq!(f.path, "/run/secrets/password");
    assert_eq!((f.uid, f.gid, f.mode), (1000, 1000, 0o400));
    assert_eq!(&*f.data, b"hunter2");

    // The manager says to forget it; a new task that still refers to it is refused.
    let mut msg = incremental(
        vec![with_secret(task("B", "nginx", TaskState::Running), "x1")],
        vec![],
    );
    msg.removed_secrets = vec!["x1".into()];
    worker.apply(NODE, msg).await.unwrap();
    let status = reported(&reporter, "B", TaskState::Rejected).await;
    assert!(
        status.err.contains("secret db (id x1)") && status.err.contains("not available"),
        "{}",
        status.err
    );
    assert!(fake.files_of("B").is_none());

    // Removing A's container drops what the runtime was given.
    worker
        .apply(NODE, incremental(vec![], vec!["A"]))
        .await
        .unwrap();
    eventually("A's container to be removed", || async {
        fake.container_state("A").is_none().then_some(())
    })
    .await;
    assert!(fake.files_of("A").is_none());
}
