//! Applied changes not yet written to the state tree.
//!
//! The state tree is a checkpoint, not the source of truth: every applied
//! entry is durable in the log, and a restart re-applies the entries after the
//! checkpoint's applied index. So the actor writes the state tree only every
//! so often, and then only the latest value of each object: a task created,
//! assigned and reported running between two checkpoints costs one sled write
//! instead of four. (sled's per-key insert was the largest cost of the raft
//! thread when every Ready cycle wrote its changes.) The log is compacted only
//! behind a durable checkpoint, so deferring it never loses an entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::scheduler::fasthash::FastSet;
use crate::store::{ChangeBatch, ChangeKind, ObjectExt, encode};

/// Unwritten changes that force a checkpoint: bounds the memory they hold
/// (each keeps its object and the value it replaced, shared with the change
/// stream's other readers).
const MAX_CHANGES: usize = 131_072;
/// Age of the oldest unwritten entry that forces a checkpoint: bounds how
/// much a restart replays. A task is written 3-4 times within a few seconds
/// of its creation (created, assigned, its agent's reports), so a window of
/// 5 s writes most tasks once where 1 s wrote them two or three times: at
/// 1,000 nodes x 100k tasks, 1.16x the placements per second and 0.88x the
/// manager's CPU (docs/BENCHMARKS.md). The cost: a restart replays up to
/// 5 s of entries instead of 1 s (not timed yet).
pub(crate) const MAX_AGE: Duration = Duration::from_secs(5);

/// One write of a checkpoint: a key and its new value (None: removed).
pub(crate) type Write = (Vec<u8>, Option<Vec<u8>>);

#[derive(Default)]
pub(crate) struct Unwritten {
    /// Applied batches, oldest first.
    batches: Vec<Arc<ChangeBatch>>,
    changes: usize,
    /// The last applied index and when the oldest unwritten entry was applied.
    applied: Option<(u64, Instant)>,
}

impl Unwritten {
    /// Record that the entry at `index` was applied, with its changes if any.
    pub(crate) fn applied(&mut self, index: u64, batch: Option<&Arc<ChangeBatch>>, now: Instant) {
        let since = self.applied.map_or(now, |(_, since)| since);
        self.applied = Some((index, since));
        if let Some(batch) = batch.filter(|b| !b.changes.is_empty()) {
            self.changes += batch.changes.len();
            self.batches.push(batch.clone());
        }
    }

    /// True when a checkpoint should be written now. `written` is the applied
    /// index of the last checkpoint and `max_entries` how many entries may
    /// wait (the snapshot interval, so that compaction keeps its pace).
    pub(crate) fn is_due(&self, now: Instant, written: u64, max_entries: u64) -> bool {
        let Some((index, since)) = self.applied else {
            return false;
        };
        self.changes >= MAX_CHANGES
            || index.saturating_sub(written) >= max_entries.max(1)
            || now.saturating_duration_since(since) >= MAX_AGE
    }

    /// The checkpoint: the applied index and the latest write of every key
    /// changed since the last one. None when nothing was applied since.
    pub(crate) fn take(&mut self) -> Option<(u64, Vec<Write>)> {
        let (index, _) = self.applied.take()?;
        let batches = std::mem::take(&mut self.batches);
        self.changes = 0;
        let mut seen: FastSet<Vec<u8>> = FastSet::default();
        let mut writes = Vec::new();
        for change in batches.iter().rev().flat_map(|b| b.changes.iter().rev()) {
            let key = change.object.storage_key();
            if !seen.insert(key.clone()) {
                continue;
            }
            let value = match change.kind {
                ChangeKind::Deleted => None,
                ChangeKind::Created | ChangeKind::Updated => Some(encode(&change.object)),
            };
            writes.push((key, value));
        }
        Some((index, writes))
    }

    /// A snapshot replaced the state tree: what was unwritten is superseded.
    pub(crate) fn clear(&mut self) {
        *self = Unwritten::default();
    }
}

#[cfg(test)]
mod unit {
    use shoal_proto::{Task, TaskStatus};

    use super::*;
    use crate::store::{Change, Object, decode};

    fn task(id: &str, state: i32) -> Object {
        Object::Task(Task {
            id: id.into(),
            status: Some(TaskStatus {
                state,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn batch(index: u64, changes: Vec<(ChangeKind, Object)>) -> Arc<ChangeBatch> {
        Arc::new(ChangeBatch {
            index,
            changes: changes
                .into_iter()
                .map(|(kind, object)| Change {
                    kind,
                    object,
                    old: None,
                })
                .collect(),
        })
    }

    #[test]
    fn a_checkpoint_writes_the_latest_value_of_each_key_once() {
        use ChangeKind::*;
        let now = Instant::now();
        let mut u = Unwritten::default();
        assert!(u.take().is_none());
        u.applied(
            5,
            Some(&batch(
                5,
                vec![(Created, task("a", 1)), (Created, task("b", 1))],
            )),
            now,
        );
        u.applied(6, None, now); // a no-op entry
        u.applied(7, Some(&batch(7, vec![(Updated, task("a", 2))])), now);
        u.applied(8, Some(&batch(8, vec![(Deleted, task("b", 1))])), now);
        u.applied(9, Some(&batch(9, vec![(Updated, task("a", 3))])), now);

        let (index, mut writes) = u.take().expect("applied entries");
        assert_eq!(index, 9);
        writes.sort();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].0, b"t/a");
        let a = decode(writes[0].1.as_ref().expect("a is written")).expect("decodes");
        assert_eq!(a, task("a", 3));
        assert_eq!(writes[1], (b"t/b".to_vec(), None));
        assert!(u.take().is_none(), "taken");
    }

    #[test]
    fn checkpoints_come_due_by_age_entries_or_volume() {
        let t0 = Instant::now();
        let mut u = Unwritten::default();
        assert!(!u.is_due(t0 + MAX_AGE, 0, 100), "nothing to write");
        u.applied(11, None, t0);
        u.applied(12, None, t0 + MAX_AGE / 2);
        assert!(!u.is_due(t0 + MAX_AGE / 2, 10, 100));
        assert!(u.is_due(t0 + MAX_AGE, 10, 100), "the oldest entry is old");
        assert!(u.is_due(t0, 10, 2), "as many entries as may wait");

        let mut u = Unwritten::default();
        let many = (0..MAX_CHANGES)
            .map(|i| (ChangeKind::Created, task(&i.to_string(), 1)))
            .collect();
        u.applied(1, Some(&batch(1, many)), t0);
        assert!(u.is_due(t0, 0, 100), "enough changes held in memory");
        u.clear();
        assert!(!u.is_due(t0 + MAX_AGE, 0, 1));
    }
}
