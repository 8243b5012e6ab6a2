//! When the actor writes the next checkpoint of the applied state.
//!
//! The state tree is a checkpoint, not the source of truth: every applied
//! entry is durable in the log, and a restart re-applies the entries after the
//! checkpoint's applied index. A checkpoint is the whole state (see
//! `super::storage`), so its cost grows with the state, not with what changed:
//! one is written once the changes since the last one are [`CHANGES_PER_OBJECT`]
//! times the objects the state holds (or [`MIN_CHANGES`]), which spends at
//! most about a quarter of an object's encoding per change, or once
//! [`MAX_AGE`] has passed since the oldest unwritten entry, or once as many
//! entries as the snapshot interval wait, so that compaction keeps its pace.
//! A restart then replays at most four changes per object it loads; replaying
//! a change costs about half of loading an object (docs/BENCHMARKS.md, restart
//! with 100,000 tasks), so a restart takes at most about three times as long
//! as loading the checkpoint alone, and a burst of writes, which is when the
//! Raft thread is busiest, pays for at most a quarter of the checkpoints (none
//! in the benchmark's burst of new tasks, where each task makes about two
//! changes: its creation and one report). The log is compacted only behind a
//! durable checkpoint, so deferring one never loses an entry.

use std::time::{Duration, Instant};

/// Changes that make a checkpoint due even while the state is small.
const MIN_CHANGES: usize = 16_384;
/// Changes per object of the state that make a checkpoint due.
const CHANGES_PER_OBJECT: usize = 4;
/// Age of the oldest unwritten entry that makes a checkpoint due: a quiet
/// cluster's trickle of changes still reaches the state tree.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(crate) struct Unwritten {
    /// Changes applied since the last checkpoint.
    changes: usize,
    /// The last applied index and when the oldest unwritten entry was applied.
    applied: Option<(u64, Instant)>,
}

impl Unwritten {
    /// Record that the entry at `index` was applied, with `changes` changes.
    pub(crate) fn applied(&mut self, index: u64, changes: usize, now: Instant) {
        let since = self.applied.map_or(now, |(_, since)| since);
        self.applied = Some((index, since));
        self.changes += changes;
    }

    /// True when a checkpoint should be written now. `written` is the applied
    /// index of the last checkpoint, `max_entries` how many entries may wait
    /// (the snapshot interval) and `objects` how many the state holds.
    pub(crate) fn is_due(
        &self,
        now: Instant,
        written: u64,
        max_entries: u64,
        objects: usize,
    ) -> bool {
        let Some((index, since)) = self.applied else {
            return false;
        };
        self.changes >= objects.saturating_mul(CHANGES_PER_OBJECT).max(MIN_CHANGES)
            || index.saturating_sub(written) >= max_entries.max(1)
            || now.saturating_duration_since(since) >= MAX_AGE
    }

    /// Start over after a checkpoint: the applied index it holds, or None when
    /// nothing was applied since the last one.
    pub(crate) fn take(&mut self) -> Option<u64> {
        let (index, _) = self.applied.take()?;
        self.changes = 0;
        Some(index)
    }

    /// A snapshot replaced the state tree: what was unwritten is superseded.
    pub(crate) fn clear(&mut self) {
        *self = Unwritten::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_holds_the_last_applied_index_once() {
        let now = Instant::now();
        let mut u = Unwritten::default();
        assert!(u.take().is_none());
        u.applied(5, 2, now);
        u.applied(6, 0, now); // a no-op entry
        u.applied(7, 1, now);
        assert_eq!(u.take(), Some(7));
        assert!(u.take().is_none(), "taken");
    }

    #[test]
    fn checkpoints_come_due_by_age_entries_or_changes_against_the_state_size() {
        let t0 = Instant::now();
        let mut u = Unwritten::default();
        assert!(!u.is_due(t0 + MAX_AGE, 0, 100, 0), "nothing to write");
        u.applied(11, 0, t0);
        u.applied(12, 0, t0 + MAX_AGE / 2);
        assert!(!u.is_due(t0 + MAX_AGE / 2, 10, 100, 0));
        assert!(
            u.is_due(t0 + MAX_AGE, 10, 100, 0),
            "the oldest entry is old"
        );
        assert!(u.is_due(t0, 10, 2, 0), "as many entries as may wait");

        let mut u = Unwritten::default();
        u.applied(1, MIN_CHANGES - 1, t0);
        assert!(
            !u.is_due(t0, 0, 100, 10),
            "a small state waits for MIN_CHANGES"
        );
        u.applied(2, 1, t0);
        assert!(u.is_due(t0, 0, 100, 10));
        let objects = 4 * MIN_CHANGES;
        u.applied(3, objects - MIN_CHANGES, t0);
        assert!(
            !u.is_due(t0, 0, 100, objects),
            "as many changes as objects: a large state waits longer"
        );
        u.applied(4, (CHANGES_PER_OBJECT - 1) * objects - 1, t0);
        assert!(!u.is_due(t0, 0, 100, objects));
        u.applied(5, 1, t0);
        assert!(
            u.is_due(t0, 0, 100, objects),
            "CHANGES_PER_OBJECT changes per object"
        );
        u.clear();
        assert!(!u.is_due(t0 + MAX_AGE, 0, 1, 0));
    }
}
