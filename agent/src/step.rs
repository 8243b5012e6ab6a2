//! The pure core of a task controller: given what the manager wants and where the
//! task stands, which single step comes next, and how engine outcomes map to
//! task states. No IO here, so every rule is unit-tested.
//!
//! The lifecycle moves one state at a time:
//! ASSIGNED → ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE | FAILED,
//! with SHUTDOWN when the manager asks for a stop, and REJECTED when the task
//! fails before it was ever started.

use std::time::Duration;

use shoal_proto::state::is_terminal;
use shoal_proto::{Task, TaskState};

use crate::runtime::{ContainerState, Exit};

/// Swarm's default grace between the stop signal and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What a controller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Move to this state with no engine call.
    Advance(TaskState),
    /// PREPARING: pull the image and create the container; READY or REJECTED.
    Prepare,
    /// STARTING: start the container and wait until it may be called running
    /// (healthy, with a health check); RUNNING or FAILED.
    Start,
    /// RUNNING: wait for the task to end; COMPLETE or FAILED.
    WaitExit,
    /// Stop the container; SHUTDOWN.
    Stop,
    /// Remove the container; the controller ends.
    Remove,
    /// Nothing to do until the desired state changes.
    Idle,
}

/// The next step for a task the manager wants in `desired` and that stands in
/// `observed`.
pub fn next_step(desired: TaskState, observed: TaskState) -> Step {
    let terminal = is_terminal(observed);
    if desired >= TaskState::Remove {
        return if terminal { Step::Remove } else { Step::Stop };
    }
    if desired > TaskState::Running {
        return if terminal { Step::Idle } else { Step::Stop };
    }
    if terminal {
        // A finished or rejected task never runs again: the orchestrator makes
        // a new task instead. Waiting here is what keeps a rejected task from
        // being retried in a hot loop.
        return Step::Idle;
    }
    match observed {
        TaskState::New | TaskState::Pending | TaskState::Assigned => {
            Step::Advance(TaskState::Accepted)
        }
        TaskState::Accepted => Step::Advance(TaskState::Preparing),
        TaskState::Preparing => Step::Prepare,
        TaskState::Ready if desired >= TaskState::Running => Step::Advance(TaskState::Starting),
        TaskState::Ready => Step::Idle,
        TaskState::Starting => Step::Start,
        _ => Step::WaitExit,
    }
}

/// The state a failure at `observed` leads to: REJECTED while the task was never
/// started (the manager may place its replacement elsewhere), FAILED after.
pub fn failure_state(observed: TaskState) -> TaskState {
    if observed < TaskState::Starting {
        TaskState::Rejected
    } else {
        TaskState::Failed
    }
}

/// The state and error text an ended task reports.
pub fn exit_outcome(exit: &Exit) -> (TaskState, String) {
    if exit.exit_code == 0 && !exit.unhealthy {
        return (TaskState::Complete, String::new());
    }
    let err = if exit.message.is_empty() {
        format!("task: non-zero exit ({})", exit.exit_code)
    } else {
        exit.message.clone()
    };
    (TaskState::Failed, err)
}

/// The short message Docker users see next to a state.
pub fn state_message(state: TaskState) -> &'static str {
    match state {
        TaskState::Accepted => "accepted",
        TaskState::Preparing => "preparing",
        TaskState::Ready => "prepared",
        TaskState::Starting => "starting",
        TaskState::Running => "started",
        TaskState::Complete => "finished",
        TaskState::Shutdown => "shutdown",
        _ => "",
    }
}

/// How long the task's process gets between its stop signal and SIGKILL.
pub fn stop_grace(task: &Task) -> Duration {
    task.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .and_then(|c| c.stop_grace_period_ms)
        .map_or(DEFAULT_STOP_GRACE, |ms| {
            Duration::from_millis(ms.max(0) as u64)
        })
}

/// Where a controller picks a task up, from the state the manager last recorded
/// and the container found on the node (adoption after an agent restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Continue from this state.
    From(TaskState),
    /// The container ran and exited while nobody watched it.
    Exited(i64),
    /// The task had started, but its container is gone.
    Lost,
}

/// Decides where a controller resumes a task.
pub fn resume(reported: TaskState, container: Option<ContainerState>) -> Resume {
    if is_terminal(reported) {
        return Resume::From(reported);
    }
    match container {
        Some(ContainerState::Running) => Resume::From(TaskState::Running),
        Some(ContainerState::Exited(code)) => Resume::Exited(code),
        Some(ContainerState::Created) => Resume::From(reported.max(TaskState::Ready)),
        None if reported >= TaskState::Starting => Resume::Lost,
        // Preparation was interrupted: prepare again (it is idempotent).
        None if reported >= TaskState::Preparing => Resume::From(TaskState::Preparing),
        None => Resume::From(reported.max(TaskState::Assigned)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn a_new_task_walks_to_running_one_state_at_a_time() {
        assert_eq!(next_step(Running, Assigned), Step::Advance(Accepted));
        assert_eq!(next_step(Running, Accepted), Step::Advance(Preparing));
        assert_eq!(next_step(Running, Preparing), Step::Prepare);
        assert_eq!(next_step(Running, Ready), Step::Advance(Starting));
        assert_eq!(next_step(Running, Starting), Step::Start);
        assert_eq!(next_step(Running, Running), Step::WaitExit);
    }

    #[test]
    fn desired_ready_prepares_but_does_not_start() {
        assert_eq!(next_step(Ready, Preparing), Step::Prepare);
        assert_eq!(next_step(Ready, Ready), Step::Idle);
    }

    #[test]
    fn ended_tasks_wait_instead_of_retrying() {
        for observed in [Complete, Failed, Rejected, Shutdown] {
            assert_eq!(next_step(Running, observed), Step::Idle, "{observed:?}");
            assert_eq!(next_step(Shutdown, observed), Step::Idle, "{observed:?}");
        }
    }

    #[test]
    fn shutdown_stops_whatever_is_not_finished() {
        for observed in [Assigned, Accepted, Preparing, Ready, Starting, Running] {
            assert_eq!(next_step(Shutdown, observed), Step::Stop, "{observed:?}");
            assert_eq!(next_step(Remove, observed), Step::Stop, "{observed:?}");
        }
    }

    #[test]
    fn remove_removes_once_the_task_has_ended() {
        for observed in [Complete, Failed, Rejected, Shutdown] {
            assert_eq!(next_step(Remove, observed), Step::Remove, "{observed:?}");
        }
    }

    #[test]
    fn failures_before_starting_reject() {
        assert_eq!(failure_state(Preparing), Rejected);
        assert_eq!(failure_state(Accepted), Rejected);
        assert_eq!(failure_state(Starting), Failed);
        assert_eq!(failure_state(Running), Failed);
    }

    #[test]
    fn exits_map_to_complete_or_failed() {
        let exit = |code, message: &str, unhealthy| Exit {
            exit_code: code,
            message: message.into(),
            unhealthy,
        };
        assert_eq!(exit_outcome(&exit(0, "", false)), (Complete, String::new()));
        assert_eq!(
            exit_outcome(&exit(1, "", false)),
            (Failed, "task: non-zero exit (1)".into())
        );
        assert_eq!(
            exit_outcome(&exit(0, "unhealthy: curl failed", true)),
            (Failed, "unhealthy: curl failed".into())
        );
    }

    #[test]
    fn stop_grace_defaults_to_ten_seconds() {
        let mut task = Task::default();
        assert_eq!(stop_grace(&task), DEFAULT_STOP_GRACE);
        task.spec = Some(
            shoal_proto::TaskSpec {
                container: Some(shoal_proto::ContainerSpec {
                    stop_grace_period_ms: Some(1500),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        );
        assert_eq!(stop_grace(&task), Duration::from_millis(1500));
    }

    #[test]
    fn adoption_resumes_from_the_container() {
        use ContainerState as C;
        assert_eq!(resume(Running, Some(C::Running)), Resume::From(Running));
        assert_eq!(resume(Assigned, Some(C::Running)), Resume::From(Running));
        assert_eq!(resume(Running, Some(C::Exited(3))), Resume::Exited(3));
        assert_eq!(resume(Preparing, Some(C::Created)), Resume::From(Ready));
        assert_eq!(resume(Starting, Some(C::Created)), Resume::From(Starting));
        assert_eq!(resume(Running, None), Resume::Lost);
        assert_eq!(resume(Ready, None), Resume::From(Preparing));
        assert_eq!(resume(Accepted, None), Resume::From(Accepted));
        assert_eq!(resume(Pending, None), Resume::From(Assigned));
        assert_eq!(resume(Failed, Some(C::Running)), Resume::From(Failed));
    }
}
