//! The progress display: the summary of a task list, the state machine fed
//! with watch events, and [`watch`] against a manager's `Control` and `Watch`
//! services in process.

use shoal_manager::testing::MemoryManager;
use shoal_proto::{StoreObject, TaskStatus};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::connect;
use crate::testing::{SERVICE_ID, failed, service, spec, task};

fn goal(replicas: u64) -> Goal {
    Goal::of(&service(spec("web", replicas)))
}

#[test]
fn counts_running_slots() {
    let tasks = vec![
        task(1, "n", 1, TaskState::Running),
        task(2, "n", 1, TaskState::Preparing),
    ];
    let p = summarize(&tasks, goal(3));
    assert_eq!(
        p.lines,
        [
            "overall progress: 1 out of 3 tasks",
            "1/3: running",
            "2/3: preparing",
            "3/3: new"
        ]
    );
    assert!(!p.converged);
}

#[test]
fn shows_the_newest_task_and_its_error() {
    let mut old = failed(task(1, "n", 1, TaskState::Rejected), "no such image");
    old.desired_state = TaskState::Shutdown as i32;
    let tasks = vec![
        old,
        failed(task(1, "n", 5, TaskState::Rejected), "still no image"),
        task(2, "n", 1, TaskState::Running),
        task(3, "n", 1, TaskState::Running),
    ];
    let p = summarize(&tasks, goal(3));
    assert_eq!(p.lines[1], "1/3: rejected: still no image");
    assert_eq!(p.last_error.as_deref(), Some("still no image"));
    assert!(!p.converged);
}

#[test]
fn converges_only_on_the_current_spec_version() {
    let mut tasks: Vec<Task> = (1..=3)
        .map(|s| task(s, "n", 1, TaskState::Running))
        .collect();
    assert!(summarize(&tasks, goal(3)).converged);
    let updating = Goal {
        spec_version: 2,
        ..goal(3)
    };
    assert!(!summarize(&tasks, updating).converged);
    for t in &mut tasks {
        t.spec_version = 2;
    }
    assert!(summarize(&tasks, updating).converged);
}

#[test]
fn global_services_count_nodes() {
    let goal = Goal {
        global: true,
        replicas: 0,
        spec_version: 1,
    };
    assert!(!summarize(&[], goal).converged);
    let tasks = vec![
        task(0, "node-a", 1, TaskState::Running),
        task(0, "node-b", 1, TaskState::Starting),
    ];
    let p = summarize(&tasks, goal);
    assert_eq!(p.lines[0], "overall progress: 1 out of 2 tasks");
    assert_eq!(p.lines[1], "node-a: running");
}

#[test]
fn scaled_to_zero_is_converged() {
    assert!(summarize(&[], goal(0)).converged);
}

fn event(kind: WatchKind, object: Object) -> WatchEvent {
    WatchEvent {
        kind: kind as i32,
        object: Some(StoreObject {
            object: Some(object),
        }),
        index: 0,
    }
}

fn changed(t: &Task) -> WatchEvent {
    event(WatchKind::Update, Object::Task(Box::new(t.clone())))
}

#[test]
fn events_move_the_counts() {
    let mut tasks = Tasks::new(
        SERVICE_ID,
        vec![
            task(1, "n", 1, TaskState::Running),
            task(2, "n", 1, TaskState::Pending),
        ],
    );
    assert_eq!(
        tasks.summarize(goal(3)).lines[0],
        "overall progress: 1 out of 3 tasks"
    );
    let third = task(3, "n", 2, TaskState::Assigned);
    let created = event(WatchKind::Create, Object::Task(Box::new(third.clone())));
    assert_eq!(tasks.apply(&created), Seen::Changed);
    assert_eq!(tasks.summarize(goal(3)).lines[3], "3/3: assigned");

    let running = |t: &Task| {
        let mut t = t.clone();
        t.status = Some(TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        });
        t.meta.as_mut().unwrap().version += 10;
        t
    };
    let second = running(&task(2, "n", 1, TaskState::Pending));
    assert_eq!(tasks.apply_all(&[changed(&second)]), Seen::Changed);
    let p = tasks.summarize(goal(3));
    assert_eq!(p.lines[0], "overall progress: 2 out of 3 tasks");
    assert!(!p.converged);
    assert_eq!(tasks.apply_all(&[changed(&running(&third))]), Seen::Changed);
    let p = tasks.summarize(goal(3));
    assert_eq!(p.lines[0], "overall progress: 3 out of 3 tasks");
    assert!(p.converged);

    // A deleted task leaves its slot empty until another one comes.
    let gone = event(WatchKind::Delete, Object::Task(Box::new(second)));
    assert_eq!(tasks.apply(&gone), Seen::Changed);
    assert_eq!(tasks.summarize(goal(3)).lines[2], "2/3: new");
    assert_eq!(tasks.apply(&gone), Seen::Unchanged);
}

#[test]
fn stale_repeated_and_foreign_events_change_nothing() {
    let mut newer = task(1, "n", 1, TaskState::Running);
    newer.meta.as_mut().unwrap().version = 7;
    let mut tasks = Tasks::new(SERVICE_ID, vec![newer.clone()]);
    // A copy older than the listing's: the watch opened before the list.
    let older = task(1, "n", 1, TaskState::Starting);
    assert_eq!(tasks.apply(&changed(&older)), Seen::Unchanged);
    assert_eq!(tasks.apply(&changed(&newer)), Seen::Unchanged);
    let mut other = task(2, "n", 9, TaskState::Running);
    other.service_id = "svc2".into();
    assert_eq!(tasks.apply(&changed(&other)), Seen::Unchanged);
    let empty = WatchEvent::default();
    assert_eq!(tasks.apply_all(&[empty, changed(&other)]), Seen::Unchanged);
    assert_eq!(tasks.summarize(goal(1)).lines[1], "1/1: running");
}

#[test]
fn removing_the_service_is_seen() {
    let mut tasks = Tasks::new(SERVICE_ID, Vec::new());
    let web = service(spec("web", 1));
    let updated = event(WatchKind::Update, Object::Service(Box::new(web.clone())));
    assert_eq!(tasks.apply(&updated), Seen::Unchanged);
    let mut other = web.clone();
    other.id = "svc2".into();
    let removed_other = event(WatchKind::Delete, Object::Service(Box::new(other)));
    assert_eq!(tasks.apply(&removed_other), Seen::Unchanged);
    let removed = event(WatchKind::Delete, Object::Service(Box::new(web)));
    let first = changed(&task(1, "n", 1, TaskState::Running));
    assert_eq!(tasks.apply_all(&[first, removed]), Seen::ServiceRemoved);
}

/// A manager's `Control` and `Watch` services on `manager`, on a unix socket;
/// cancelling `shutdown` ends its watch streams. Returns the `--host` value.
fn serve(manager: &MemoryManager, shutdown: CancellationToken) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.sock");
    manager.serve(&path, shutdown).unwrap();
    (dir, format!("unix://{}", path.display()))
}

/// A manager holding service [`SERVICE_ID`] with `replicas` pending tasks.
async fn manager_with(replicas: u64) -> MemoryManager {
    let manager = MemoryManager::new();
    let web = service(spec("web", replicas));
    let pending = (1..=replicas)
        .map(|slot| task(slot, "n", 0, TaskState::Pending))
        .collect();
    manager.create(web, pending).await.unwrap();
    manager
}

/// [`watch`] as `service create` runs it, against the manager at `host`.
async fn watch_at(host: &str, replicas: u64) -> anyhow::Result<()> {
    let channel = connect::dial(Some(host)).await?;
    let mut control = connect::control_client(channel.clone());
    let mut watcher = connect::watch_client(channel);
    let shown = watch(&mut control, &mut watcher, SERVICE_ID, goal(replicas));
    tokio::time::timeout(Duration::from_secs(20), shown)
        .await
        .expect("watch returned")
}

#[tokio::test]
async fn watch_follows_the_tasks_until_they_run() {
    let manager = manager_with(2).await;
    let (_dir, host) = serve(&manager, CancellationToken::new());
    let shown = tokio::spawn(async move { watch_at(&host, 2).await });
    // Whether these land before the watch opens or after, it ends converged.
    for id in manager.task_ids() {
        for state in [TaskState::Assigned, TaskState::Running] {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let status = TaskStatus {
                state: state as i32,
                ..Default::default()
            };
            manager.report(&id, status).await.unwrap();
        }
    }
    shown.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_watch_that_ends_stops_with_an_error() {
    let manager = manager_with(1).await;
    let shutdown = CancellationToken::new();
    let (_dir, host) = serve(&manager, shutdown.clone());
    let shown = tokio::spawn(async move { watch_at(&host, 1).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    let err = shown.await.unwrap().unwrap_err();
    let text = crate::output::describe(&err);
    assert!(
        text.contains("the watch of service svc1's tasks ended before it converged"),
        "{text}"
    );
    assert!(text.contains("shoal service ps svc1"), "{text}");
}

#[tokio::test]
async fn a_removed_service_is_not_found() {
    let manager = manager_with(1).await;
    let (_dir, host) = serve(&manager, CancellationToken::new());
    let shown = tokio::spawn(async move { watch_at(&host, 1).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Removed before the listing or after the watch opened: the same words.
    manager.remove(service(spec("web", 1))).await.unwrap();
    let err = shown.await.unwrap().unwrap_err();
    assert_eq!(crate::output::describe(&err), "service svc1 not found");
}
