//! A task controller against the fake runtime: the happy path, crashes,
//! rejection without retries, shutdown, and leaving containers alone when the
//! agent stops.

use std::sync::Arc;

use shoal_proto::{Task, TaskState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controller::TaskController;
use crate::fake::FakeRuntime;
use crate::reporter::Reporter;
use crate::runtime::{ContainerState, Runtime};
use crate::testing::{NODE, reported, task};

struct Harness {
    fake: Arc<FakeRuntime>,
    reporter: Arc<Reporter>,
    updates: watch::Sender<Arc<Task>>,
    handle: JoinHandle<()>,
    shutdown: CancellationToken,
}

fn start(task: Task) -> Harness {
    let fake = Arc::new(FakeRuntime::default());
    let reporter = Arc::new(Reporter::new());
    let shutdown = CancellationToken::new();
    let (updates, rx) = watch::channel(Arc::new(task));
    let controller =
        TaskController::new(fake.clone(), reporter.clone(), rx, None, shutdown.clone());
    let handle = tokio::spawn(controller.run());
    Harness {
        fake,
        reporter,
        updates,
        handle,
        shutdown,
    }
}

impl Harness {
    fn desire(&self, state: TaskState) {
        self.updates
            .send_modify(|t| Arc::make_mut(t).desired_state = state as i32);
    }
}

#[tokio::test]
async fn an_assigned_task_runs() {
    let h = start(task("t1", "nginx", TaskState::Running));
    let status = reported(&h.reporter, "t1", TaskState::Running).await;
    assert_eq!(h.fake.running(), vec!["t1".to_string()]);
    assert_eq!(status.message, "started");
    assert!(status.timestamp > 0);
    assert_eq!(h.fake.created_count(), 1);
}

#[tokio::test]
async fn desired_ready_prepares_without_starting() {
    let h = start(task("t1", "nginx", TaskState::Ready));
    reported(&h.reporter, "t1", TaskState::Ready).await;
    assert_eq!(h.fake.container_state("t1"), Some(ContainerState::Created));
    h.desire(TaskState::Running);
    reported(&h.reporter, "t1", TaskState::Running).await;
}

#[tokio::test]
async fn a_crash_fails_the_task_with_its_exit_code() {
    let h = start(task("t1", "nginx", TaskState::Running));
    reported(&h.reporter, "t1", TaskState::Running).await;
    h.fake.exit("t1", 1);
    let status = reported(&h.reporter, "t1", TaskState::Failed).await;
    assert_eq!(status.container.unwrap().exit_code, 1);
    assert!(status.err.contains("non-zero exit (1)"), "{}", status.err);
}

#[tokio::test]
async fn a_clean_exit_completes_the_task() {
    let h = start(task("t1", "nginx", TaskState::Running));
    reported(&h.reporter, "t1", TaskState::Running).await;
    h.fake.exit("t1", 0);
    let status = reported(&h.reporter, "t1", TaskState::Complete).await;
    assert_eq!(status.container.unwrap().exit_code, 0);
}

#[tokio::test]
async fn a_missing_image_rejects_the_task_once() {
    let h = start(task("t1", "missing/app", TaskState::Running));
    let status = reported(&h.reporter, "t1", TaskState::Rejected).await;
    assert!(status.message.contains("missing/app"), "{}", status.message);
    assert_eq!(status.err, status.message);
    h.reporter.take(10);
    // A repeated assignment wakes the controller; it must not try again.
    h.updates.send_modify(|_| {});
    h.desire(TaskState::Remove);
    h.handle.await.unwrap();
    assert!(h.reporter.is_empty(), "a rejected task reported again");
    assert_eq!(h.fake.created_count(), 0);
}

#[tokio::test]
async fn shutdown_stops_the_container() {
    let h = start(task("t1", "nginx", TaskState::Running));
    reported(&h.reporter, "t1", TaskState::Running).await;
    h.desire(TaskState::Shutdown);
    reported(&h.reporter, "t1", TaskState::Shutdown).await;
    assert!(h.fake.running().is_empty());
    assert!(matches!(
        h.fake.container_state("t1"),
        Some(ContainerState::Exited(_))
    ));
    // The stopped container stays (for logs) until the task is removed.
    h.desire(TaskState::Remove);
    h.handle.await.unwrap();
    assert_eq!(h.fake.container_count(), 0);
}

#[tokio::test]
async fn remove_stops_then_removes_and_ends() {
    let h = start(task("t1", "nginx", TaskState::Running));
    reported(&h.reporter, "t1", TaskState::Running).await;
    h.desire(TaskState::Remove);
    h.handle.await.unwrap();
    assert_eq!(
        h.reporter.pending("t1").unwrap().state(),
        TaskState::Shutdown
    );
    assert_eq!(h.fake.container_count(), 0);
}

#[tokio::test]
async fn agent_shutdown_leaves_the_container_running() {
    let h = start(task("t1", "nginx", TaskState::Running));
    reported(&h.reporter, "t1", TaskState::Running).await;
    h.shutdown.cancel();
    h.handle.await.unwrap();
    assert_eq!(h.fake.running(), vec!["t1".to_string()]);
}

#[tokio::test]
async fn an_adopted_running_container_is_watched_not_recreated() {
    let fake = Arc::new(FakeRuntime::default());
    fake.insert(NODE, "t1", ContainerState::Running);
    let mut t = task("t1", "nginx", TaskState::Running);
    t.status.as_mut().unwrap().state = TaskState::Running as i32;
    let container = fake.list(NODE).await.unwrap().pop();
    let reporter = Arc::new(Reporter::new());
    let (_updates, rx) = watch::channel(Arc::new(t));
    let controller = TaskController::new(
        fake.clone(),
        reporter.clone(),
        rx,
        container,
        CancellationToken::new(),
    );
    assert_eq!(controller.observed(), TaskState::Running);
    tokio::spawn(controller.run());
    fake.exit("t1", 2);
    let status = reported(&reporter, "t1", TaskState::Failed).await;
    assert_eq!(status.container.unwrap().exit_code, 2);
    assert_eq!(fake.created_count(), 1);
}

/// Every assigned task keeps one controller future alive (100,000 of them in a
/// benchmark's hollow agents): the task and the engine calls are boxed so
/// that neither sizes the future for the task's whole life (it was 4,504
/// bytes, 656 once boxed).
#[tokio::test]
async fn a_controllers_future_does_not_hold_its_engine_calls_inline() {
    let fake = Arc::new(FakeRuntime::default());
    let reporter = Arc::new(Reporter::new());
    let (_updates, rx) = watch::channel(Arc::new(Task::default()));
    let controller = TaskController::new(fake, reporter, rx, None, CancellationToken::new());
    let future = controller.run();
    let size = std::mem::size_of_val(&future);
    assert!(size <= 1024, "the future is {size} bytes");
}
