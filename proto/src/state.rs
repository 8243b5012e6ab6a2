//! The task lifecycle as an order: states only move forward.
//!
//! The manager writes `desired_state` and the observed states up to ASSIGNED; the
//! agent owns the observed state from ACCEPTED on.

use crate::v1::TaskState;

/// True for states from which a task never runs again.
pub fn is_terminal(state: TaskState) -> bool {
    state >= TaskState::Complete
}

/// True when moving a task from `from` to `to` goes forward (or stays put).
pub fn may_advance(from: TaskState, to: TaskState) -> bool {
    to >= from
}

/// Lowercase name as Docker prints it (`running`, `pending`, ...).
pub fn name(state: TaskState) -> &'static str {
    match state {
        TaskState::New => "new",
        TaskState::Pending => "pending",
        TaskState::Assigned => "assigned",
        TaskState::Accepted => "accepted",
        TaskState::Preparing => "preparing",
        TaskState::Ready => "ready",
        TaskState::Starting => "starting",
        TaskState::Running => "running",
        TaskState::Complete => "complete",
        TaskState::Shutdown => "shutdown",
        TaskState::Failed => "failed",
        TaskState::Rejected => "rejected",
        TaskState::Remove => "remove",
        TaskState::Orphaned => "orphaned",
    }
}

/// The state of a raw enum value; unknown values read as NEW.
pub fn from_i32(value: i32) -> TaskState {
    TaskState::try_from(value).unwrap_or(TaskState::New)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_the_lifecycle() {
        assert!(may_advance(TaskState::Pending, TaskState::Assigned));
        assert!(!may_advance(TaskState::Running, TaskState::Starting));
        assert!(is_terminal(TaskState::Failed));
        assert!(!is_terminal(TaskState::Running));
        assert_eq!(name(TaskState::Running), "running");
        assert_eq!(from_i32(12345), TaskState::New);
    }
}
