//! raft-rs's [`Storage`] over the Raft log's sled trees ([`Disk`]).
//!
//! raft-rs reads through `&self`; every write comes from the actor through
//! `RawNode::mut_store`, so no lock is needed. Recent entries are cached because
//! raft-rs reads committed entries back right after they were appended.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use sled::Transactional as _;
use sled::transaction::TransactionError;

use super::disk::{CONF_STATE_KEY, HARD_STATE_KEY, SNAPSHOT_KEY, decode_index, read_meta};
use super::disk::{Disk, STATE_PIECE_BYTES};
use super::{RaftError, snapshot};
use crate::store::{MemState, Store};

/// Entries kept in memory after being appended.
const CACHE_MAX_ENTRIES: usize = 4096;
const CACHE_MAX_BYTES: usize = 64 << 20;

/// raft-rs [`Storage`] over [`Disk`].
pub(crate) struct SledStorage {
    disk: Disk,
    /// For building snapshots of the applied state.
    store: Store,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last snapshot; the log starts right after it.
    snapshot: SnapshotMetadata,
    last_index: u64,
    cache: VecDeque<Entry>,
    cache_bytes: usize,
}

impl SledStorage {
    /// Load the log's metadata. A fresh database is bootstrapped with
    /// `voters` as its configuration, recorded as a snapshot at index one,
    /// term one, so that the log starts at 2: a manager added later has an
    /// empty log, behind the leader's first index, so it always starts from a
    /// snapshot (which carries the configuration) rather than replaying a log
    /// that never mentions the first voters (raft-rs's advice). A joining
    /// manager passes no voters: it learns them from that snapshot.
    pub(crate) fn open(disk: Disk, store: Store, voters: &[u64]) -> Result<SledStorage, RaftError> {
        if read_meta::<ConfState>(&disk.meta, CONF_STATE_KEY)?.is_none() {
            let mut cs = ConfState::default();
            cs.set_voters(voters.to_vec());
            if !voters.is_empty() {
                let mut meta = SnapshotMetadata {
                    index: 1,
                    term: 1,
                    ..Default::default()
                };
                meta.set_conf_state(cs.clone());
                let hs = HardState {
                    term: 1,
                    commit: 1,
                    ..Default::default()
                };
                disk.meta.insert(SNAPSHOT_KEY, meta.write_to_bytes()?)?;
                disk.meta.insert(HARD_STATE_KEY, hs.write_to_bytes()?)?;
            }
            disk.meta.insert(CONF_STATE_KEY, cs.write_to_bytes()?)?;
            disk.flush()?;
        }
        let hard_state: HardState = read_meta(&disk.meta, HARD_STATE_KEY)?.unwrap_or_default();
        let snapshot: SnapshotMetadata = read_meta(&disk.meta, SNAPSHOT_KEY)?.unwrap_or_default();
        let conf_state: ConfState = read_meta(&disk.meta, CONF_STATE_KEY)?.unwrap_or_default();
        let last_index = match disk.log.last()? {
            Some((key, _)) => decode_index(&key)?.max(snapshot.index),
            None => snapshot.index,
        };
        let mut storage = SledStorage {
            disk,
            store,
            hard_state,
            conf_state,
            snapshot,
            last_index,
            cache: VecDeque::new(),
            cache_bytes: 0,
        };
        // Applying persists the commit index before the state, so this only
        // repairs a crash on a filesystem that reorders writes: the applied
        // state proves those entries were committed.
        let applied = storage.store.read(|s| s.applied_index);
        if applied > storage.hard_state.commit && applied <= storage.last_index {
            tracing::warn!(
                applied,
                commit = storage.hard_state.commit,
                "raft commit index behind applied state; raising it"
            );
            storage.set_commit(applied)?;
        }
        // A log made before the bootstrap snapshot existed starts at 1: compact
        // it behind the (durable) applied state for the same reason.
        if storage.snapshot.index == 0 && applied >= 1 && applied <= storage.last_index {
            storage.compact(applied)?;
            storage.disk.flush()?;
        }
        Ok(storage)
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    pub(crate) fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Append entries, replacing any conflicting suffix of the log.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> Result<(), RaftError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.snapshot.index {
            return Err(RaftError::Corrupt(format!(
                "append at index {} overwrites the snapshot at {}",
                first.index, self.snapshot.index
            )));
        }
        let mut batch = sled::Batch::default();
        // Entries after the new ones belong to a superseded leader.
        for index in first.index..=self.last_index {
            batch.remove(&index.to_be_bytes());
        }
        for entry in entries {
            batch.insert(&entry.index.to_be_bytes(), entry.write_to_bytes()?);
        }
        self.disk.log.apply_batch(batch)?;
        self.last_index = entries.last().map(|e| e.index).unwrap_or(self.last_index);

        while self.cache.back().is_some_and(|e| e.index >= first.index) {
            let dropped = self.cache.pop_back().expect("checked");
            self.cache_bytes -= entry_bytes(&dropped);
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.clear_cache();
        }
        for entry in entries {
            self.cache_bytes += entry_bytes(entry);
            self.cache.push_back(entry.clone());
        }
        while self.cache.len() > CACHE_MAX_ENTRIES || self.cache_bytes > CACHE_MAX_BYTES {
            let dropped = self.cache.pop_front().expect("non-empty");
            self.cache_bytes -= entry_bytes(&dropped);
        }
        Ok(())
    }

    pub(crate) fn set_hard_state(&mut self, hs: &HardState) -> Result<(), RaftError> {
        self.hard_state = hs.clone();
        self.disk
            .meta
            .insert(HARD_STATE_KEY, hs.write_to_bytes()?)?;
        Ok(())
    }

    pub(crate) fn set_commit(&mut self, commit: u64) -> Result<(), RaftError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    pub(crate) fn set_conf_state(&mut self, cs: ConfState) -> Result<(), RaftError> {
        self.disk
            .meta
            .insert(CONF_STATE_KEY, cs.write_to_bytes()?)?;
        self.conf_state = cs;
        Ok(())
    }

    /// Record a snapshot at `index` (applied, and durable in the state tree)
    /// and drop the log up to it.
    pub(crate) fn compact(&mut self, index: u64) -> Result<(), RaftError> {
        if index <= self.snapshot.index {
            return Ok(());
        }
        let mut meta = SnapshotMetadata {
            index,
            term: self.term(index)?,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        self.disk
            .meta
            .insert(SNAPSHOT_KEY, meta.write_to_bytes()?)?;
        let mut batch = sled::Batch::default();
        for key in self.disk.log.range(..=index.to_be_bytes()).keys() {
            batch.remove(key?);
        }
        self.disk.log.apply_batch(batch)?;
        self.snapshot = meta;
        self.last_index = self.last_index.max(index);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let dropped = self.cache.pop_front().expect("checked");
            self.cache_bytes -= entry_bytes(&dropped);
        }
        Ok(())
    }

    /// Install a snapshot from the leader: the state tree, the raft metadata
    /// and the emptied log change in one sled transaction, so a crash never
    /// leaves a log that starts after the applied state. Returns the state.
    pub(crate) fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<MemState, RaftError> {
        let meta = snap.get_metadata().clone();
        if meta.index < self.snapshot.index {
            return Err(RaftError::Corrupt(format!(
                "snapshot at {} is older than the one at {}",
                meta.index, self.snapshot.index
            )));
        }
        let state = snapshot::restore([&snap.data[..]], meta.index)?;
        let pieces = snapshot::encode(&state, STATE_PIECE_BYTES);
        let state_batch = self.disk.state_batch(meta.index, &pieces)?;
        let mut log_batch = sled::Batch::default();
        for key in self.disk.log.iter().keys() {
            log_batch.remove(key?);
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let (hs_bytes, cs_bytes, meta_bytes) = (
            hs.write_to_bytes()?,
            meta.get_conf_state().write_to_bytes()?,
            meta.write_to_bytes()?,
        );
        (&self.disk.state, &self.disk.meta, &self.disk.log)
            .transaction(|(state_tree, meta_tree, log_tree)| {
                state_tree.apply_batch(&state_batch)?;
                meta_tree.insert(HARD_STATE_KEY, hs_bytes.as_slice())?;
                meta_tree.insert(CONF_STATE_KEY, cs_bytes.as_slice())?;
                meta_tree.insert(SNAPSHOT_KEY, meta_bytes.as_slice())?;
                log_tree.apply_batch(&log_batch)?;
                Ok(())
            })
            .map_err(|e: TransactionError<()>| match e {
                TransactionError::Storage(e) => RaftError::Storage(e),
                TransactionError::Abort(()) => {
                    RaftError::Corrupt("snapshot transaction aborted".into())
                }
            })?;

        self.hard_state = hs;
        self.conf_state = meta.get_conf_state().clone();
        self.last_index = meta.index;
        self.snapshot = meta;
        self.clear_cache();
        Ok(state)
    }

    fn clear_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let front = self.cache.front()?.index;
        let pos = index.checked_sub(front)?;
        self.cache.get(pos as usize)
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        if let Some(entry) = self.cached(index) {
            return Ok(entry.clone());
        }
        let bytes = self
            .disk
            .log
            .get(index.to_be_bytes())
            .map_err(other)?
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        Entry::parse_from_bytes(&bytes).map_err(raft::Error::CodecError)
    }
}

impl Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low <= self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut push = |entry: Entry, out: &mut Vec<Entry>| {
            size += entry.compute_size() as u64;
            // At least one entry, as the contract requires.
            let keep = out.is_empty() || size <= max_size;
            if keep {
                out.push(entry);
            }
            keep
        };
        let cache_front = self.cache.front().map(|e| e.index).unwrap_or(u64::MAX);
        if low >= cache_front {
            for index in low..high {
                let entry = self
                    .cached(index)
                    .cloned()
                    .ok_or(raft::Error::Store(StorageError::Unavailable))?;
                if !push(entry, &mut out) {
                    break;
                }
            }
        } else {
            let range = self.disk.log.range(low.to_be_bytes()..high.to_be_bytes());
            for item in range.values() {
                let entry = Entry::parse_from_bytes(&item.map_err(other)?)
                    .map_err(raft::Error::CodecError)?;
                if !push(entry, &mut out) {
                    break;
                }
            }
            if out.is_empty() || out[0].index != low {
                return Err(raft::Error::Store(StorageError::Unavailable));
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if idx < self.snapshot.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// The applied state as of now, for a follower that lags behind the log.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (pieces, index) = self
            .store
            .read(|s| (snapshot::encode(s, usize::MAX), s.applied_index));
        if index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_data(pieces.into_iter().next().unwrap_or_default().into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = self.term(index)?;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

fn entry_bytes(entry: &Entry) -> usize {
    entry.data.len() + entry.context.len() + 32
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}
