//! What the agent's tests share: a test task, and waiting on a condition
//! with a deadline.

use std::future::Future;
use std::time::Duration;

use shoal_proto::{ContainerSpec, Task, TaskSpec, TaskState, TaskStatus};

use crate::reporter::Reporter;

/// The node every test task is assigned to.
pub const NODE: &str = "node1";

/// A task of service `web` with `image`, in state ASSIGNED, wanted in `desired`.
pub fn task(id: &str, image: &str, desired: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "svc1".into(),
        service_name: "web".into(),
        node_id: NODE.into(),
        slot: 1,
        spec: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: image.into(),
                    stop_grace_period_ms: Some(100),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        desired_state: desired as i32,
        status: Some(TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after 5 s.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(5), what, check).await
}

/// [`eventually`] with another limit, for steps that take seconds by design.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the reporter holds `state` for `task_id`, and returns that status.
pub async fn reported(reporter: &Reporter, task_id: &str, state: TaskState) -> TaskStatus {
    eventually(&format!("{task_id} to report {state:?}"), || async {
        reporter.pending(task_id).filter(|s| s.state() == state)
    })
    .await
}
