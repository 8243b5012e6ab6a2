//! How many silent nodes the monitor may mark DOWN within a grace period.
//!
//! A node silent for the grace period is marked DOWN and its tasks are
//! replaced elsewhere. When a large share of the nodes falls silent at once,
//! the likelier cause is this manager (overloaded, it reads heartbeats late)
//! or its own network, not that many machines died in the same seconds. Marking
//! them all DOWN then feeds the overload: every DOWN node's tasks are created,
//! scheduled and dispatched again, and its agent opens a new session and
//! receives its whole assignment set. At 5,000 hollow nodes on two cores that
//! loop marked thousands of healthy nodes DOWN in one run (docs/BENCHMARKS.md).
//!
//! So within any grace period at most [`share`] of the nodes (never fewer
//! than [`MIN_BURST`]) are marked DOWN, the longest silent first. The others
//! keep their sessions: a heartbeat that arrives late saves them. A node
//! silent for [`LONG_GRACE`] grace periods is marked DOWN whatever the budget,
//! which bounds how late a real mass failure is acted on. Kubernetes' node
//! controller makes the same bet with its eviction rate and unhealthy-zone
//! threshold; Swarm marks every silent node DOWN.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Nodes that may always go DOWN within one grace period: small clusters
/// and single failures are never held back.
pub(super) const MIN_BURST: usize = 5;

/// The share of the nodes, in percent, that may go DOWN within one grace
/// period. 5 % let 2,800 of 10,000 healthy hollow nodes go DOWN while they
/// joined (docs/BENCHMARKS.md); Kubernetes evicts 0.1 node a second by default.
pub(super) const SHARE_PERCENT: usize = 1;

/// Grace periods of silence after which a node goes DOWN whatever the budget.
pub(super) const LONG_GRACE: u32 = 4;

/// How many of `nodes` may go DOWN within one grace period.
pub(super) fn share(nodes: usize) -> usize {
    (nodes * SHARE_PERCENT / 100).max(MIN_BURST)
}

/// The times of the recent mark-downs, oldest first.
#[derive(Default)]
pub(super) struct DownBudget {
    marks: VecDeque<Instant>,
}

impl DownBudget {
    /// Of the candidates whose `silences` are given longest first, how many
    /// (from the front) go DOWN now; the rest wait. `nodes` counts every
    /// node the monitor follows, the candidates included. Admitted ones are
    /// charged to the budget.
    pub fn admit(
        &mut self,
        now: Instant,
        grace: Duration,
        nodes: usize,
        silences: &[Duration],
    ) -> usize {
        while self
            .marks
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= grace)
        {
            self.marks.pop_front();
        }
        let left = share(nodes).saturating_sub(self.marks.len());
        let overdue = silences
            .iter()
            .take_while(|s| **s > grace * LONG_GRACE)
            .count();
        let admitted = overdue.max(left.min(silences.len()));
        self.marks.extend(std::iter::repeat_n(now, admitted));
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(6);

    fn silences(n: usize, each: Duration) -> Vec<Duration> {
        vec![each; n]
    }

    #[test]
    fn the_share_never_falls_below_the_minimum_burst() {
        assert_eq!(share(0), MIN_BURST);
        assert_eq!(share(3), MIN_BURST);
        assert_eq!(share(1000), 10);
        assert_eq!(share(5000), 50);
    }

    #[test]
    fn a_few_silent_nodes_all_go_down_at_once() {
        let mut budget = DownBudget::default();
        let now = Instant::now();
        let silent = silences(3, GRACE + Duration::from_millis(1));
        assert_eq!(budget.admit(now, GRACE, 10, &silent), 3);
        // Even all of a small cluster.
        let mut budget = DownBudget::default();
        assert_eq!(
            budget.admit(now, GRACE, 5, &silences(5, GRACE * 2)),
            5,
            "five of five"
        );
    }

    #[test]
    fn a_mass_silence_goes_down_at_the_budgets_pace() {
        let mut budget = DownBudget::default();
        let t0 = Instant::now();
        let silent = silences(700, GRACE + Duration::from_secs(1));
        assert_eq!(budget.admit(t0, GRACE, 5000, &silent), 50);
        // The budget is spent for the rest of this grace period.
        let later = t0 + GRACE - Duration::from_millis(1);
        assert_eq!(budget.admit(later, GRACE, 5000, &silent[50..]), 0);
        // One grace period after the first marks, it is whole again.
        assert_eq!(budget.admit(t0 + GRACE, GRACE, 5000, &silent[50..]), 50);
    }

    #[test]
    fn a_node_silent_for_the_long_grace_goes_down_whatever_the_budget() {
        let mut budget = DownBudget::default();
        let t0 = Instant::now();
        assert_eq!(
            budget.admit(t0, GRACE, 100, &silences(5, GRACE * 2)),
            5,
            "the budget of 100 nodes is spent"
        );
        let mut silent = silences(3, GRACE * LONG_GRACE + Duration::from_millis(1));
        silent.extend(silences(4, GRACE * 2));
        assert_eq!(
            budget.admit(t0 + Duration::from_secs(1), GRACE, 100, &silent),
            3,
            "only the three overdue nodes"
        );
        // Exactly the long grace is not overdue yet.
        assert_eq!(
            budget.admit(
                t0 + Duration::from_secs(2),
                GRACE,
                100,
                &[GRACE * LONG_GRACE]
            ),
            0
        );
    }

    #[test]
    fn the_budget_is_shared_between_ticks() {
        let mut budget = DownBudget::default();
        let t0 = Instant::now();
        let one = [GRACE + Duration::from_millis(1)];
        for tick in 0..MIN_BURST {
            let now = t0 + Duration::from_millis(500 * tick as u64);
            assert_eq!(budget.admit(now, GRACE, 20, &one), 1, "tick {tick}");
        }
        let now = t0 + Duration::from_millis(500 * MIN_BURST as u64);
        assert_eq!(
            budget.admit(now, GRACE, 20, &one),
            0,
            "sixth within a grace"
        );
    }
}
