//! What an agent has done so far, as counters that whoever embeds the agent
//! library can read and wait on.
//!
//! The benchmark's hollow nodes share one [`AgentStats`]: it tells the harness
//! when every task has reached its node and when every RUNNING report is
//! committed, without a watch on the manager that cost the manager about a
//! tenth of its CPU in the run it measured.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Counters of one agent, or of many agents that share them.
#[derive(Debug, Default)]
pub struct AgentStats {
    tasks_received: AtomicU64,
    running_confirmed: AtomicU64,
    assignment_messages: AtomicU64,
    status_requests: AtomicU64,
    changed: Notify,
}

impl AgentStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tasks the manager gave this agent that it did not have yet: one per
    /// task, however many times the manager sends it. The manager sends only
    /// committed assignments, so a received task is a committed one.
    pub fn tasks_received(&self) -> u64 {
        self.tasks_received.load(Ordering::Relaxed)
    }

    /// RUNNING reports the manager acknowledged. It acknowledges a report once
    /// the report is committed.
    pub fn running_confirmed(&self) -> u64 {
        self.running_confirmed.load(Ordering::Relaxed)
    }

    /// Messages received on the assignments stream, the first complete set
    /// included: with `tasks_received`, how well the manager coalesces.
    pub fn assignment_messages(&self) -> u64 {
        self.assignment_messages.load(Ordering::Relaxed)
    }

    /// Status reports sent to the manager (each a batch of task statuses).
    pub fn status_requests(&self) -> u64 {
        self.status_requests.load(Ordering::Relaxed)
    }

    /// Returns once `done` holds, checking it again after every change of a
    /// counter (no polling, and no change slips between check and wait).
    pub async fn wait_until(&self, mut done: impl FnMut(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn received_task(&self) {
        self.tasks_received.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    pub(crate) fn received_message(&self) {
        self.assignment_messages.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sent_statuses(&self) {
        self.status_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn confirmed_running(&self, count: u64) {
        if count > 0 {
            self.running_confirmed.fetch_add(count, Ordering::Relaxed);
            self.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_on_the_change_that_satisfies_it() {
        let stats = Arc::new(AgentStats::new());
        let waiter = {
            let stats = stats.clone();
            tokio::spawn(async move {
                stats
                    .wait_until(|s| s.tasks_received() >= 2 && s.running_confirmed() >= 3)
                    .await;
            })
        };
        stats.received_task();
        stats.received_task();
        stats.confirmed_running(0);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "only 2 tasks and no RUNNING yet");
        stats.confirmed_running(3);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the last change")
            .expect("waiter");
        assert_eq!((stats.tasks_received(), stats.running_confirmed()), (2, 3));
    }
}
