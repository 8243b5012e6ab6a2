//! The sled database under the Raft log: three trees of one database.
//!
//! - `raft_log`: entries keyed by their big-endian index (so key order is log order);
//! - `raft_meta`: hard state, conf state and the metadata of the last snapshot;
//! - `state`: checkpoints of the applied state, written by the actor
//!   (`super::checkpoint_due`): the whole state as `StoreSnapshot` pieces of about
//!   64 KiB under `piece/<n>`, and the index it was applied up to, replaced in
//!   one batch. The log holds every entry after it, so a checkpoint need not
//!   follow each commit, and writing a few large values costs sled far less
//!   than one insert per changed object did.
//!
//! [`super::storage::SledStorage`] is raft-rs's `Storage` over it.

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};

use super::RaftError;
use super::blobs::BlobSync;
use super::snapshot;
use crate::store::{MemState, decode};

/// Target size of one piece of a state checkpoint. sled writes a page past a
/// quarter of a segment to a blob file (see [`BlobSync`]), and a leaf page
/// holds up to 17 values: at 1/128 of a segment, a leaf of pieces (each may
/// pass the target by one object) stays inline in the segment file.
pub(crate) const STATE_PIECE_BYTES: usize = SEGMENT_SIZE / 128;
const PIECE_PREFIX: &[u8] = b"piece/";

/// sled writes values above a quarter of a segment to blob files that 0.34.7
/// does not fsync on `flush()`; 8 MiB segments keep values up to 2 MiB inline.
const SEGMENT_SIZE: usize = 8 << 20;
/// Largest proposal accepted as one entry: inline in sled with room for the
/// entry's own framing.
pub(crate) const MAX_ENTRY_BYTES: usize = SEGMENT_SIZE / 4 - 4096;

pub(super) const HARD_STATE_KEY: &[u8] = b"hard_state";
pub(super) const CONF_STATE_KEY: &[u8] = b"conf_state";
pub(super) const SNAPSHOT_KEY: &[u8] = b"snapshot";
/// Key of the applied index in the state tree (object keys all start with a
/// kind prefix such as `t/`, so it cannot collide).
pub(crate) const APPLIED_KEY: &[u8] = b"applied_index";

/// The open sled database and its trees.
#[derive(Clone)]
pub(crate) struct Disk {
    db: sled::Db,
    pub(super) log: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(crate) state: sled::Tree,
    pub(super) blobs: std::sync::Arc<BlobSync>,
}

impl Disk {
    pub(crate) fn open(path: &Path) -> Result<Disk, RaftError> {
        let open_err = |source| RaftError::Open {
            path: path.to_path_buf(),
            source,
        };
        // A handle dropped a moment ago in this process (the rewrite of
        // `--force-new-cluster`, tests) may still be held by sled's I/O
        // threads: wait for them. A database another process holds stays
        // held, and sled's open below fails naming its lock.
        wait_closed(path, CLOSE_TIMEOUT);
        let db = sled::Config::new()
            .path(path)
            .segment_size(SEGMENT_SIZE)
            // The actor flushes explicitly at the points Raft needs durability.
            .flush_every_ms(None)
            .open()
            .map_err(open_err)?;
        let log = db.open_tree("raft_log").map_err(open_err)?;
        let meta = db.open_tree("raft_meta").map_err(open_err)?;
        let state = db.open_tree("state").map_err(open_err)?;
        Ok(Disk {
            db,
            log,
            meta,
            state,
            blobs: std::sync::Arc::new(BlobSync::new(path)),
        })
    }

    /// The applied state persisted in the state tree. A tree written before
    /// checkpoints were pieces holds one object per key: those are read too,
    /// and the next checkpoint removes them.
    pub(crate) fn load_state(&self) -> Result<MemState, RaftError> {
        let mut applied = 0;
        let mut pieces = Vec::new();
        let mut objects = Vec::new();
        for item in self.state.iter() {
            let (key, value) = item?;
            if &key[..] == APPLIED_KEY {
                applied = decode_index(&value)?;
            } else if key.starts_with(PIECE_PREFIX) {
                pieces.push(value);
            } else {
                objects.push(decode(&value).map_err(|e| {
                    RaftError::Corrupt(format!("state key {}: {e}", String::from_utf8_lossy(&key)))
                })?);
            }
        }
        let mut state = snapshot::restore(pieces.iter().map(|p| &p[..]), applied)?;
        for object in objects {
            state.put(object);
        }
        Ok(state)
    }

    /// Bytes of the checkpoint on disk (the values of the state tree).
    pub(crate) fn state_bytes(&self) -> Result<u64, RaftError> {
        let mut bytes = 0;
        for value in self.state.iter().values() {
            bytes += value?.len() as u64;
        }
        Ok(bytes)
    }

    /// Replace the checkpoint by `pieces` of the state applied up to `applied`.
    pub(crate) fn write_state(&self, applied: u64, pieces: &[Vec<u8>]) -> Result<(), RaftError> {
        self.state.apply_batch(self.state_batch(applied, pieces)?)?;
        Ok(())
    }

    /// The batch that makes the state tree hold `pieces` and `applied` only.
    pub(super) fn state_batch(
        &self,
        applied: u64,
        pieces: &[Vec<u8>],
    ) -> Result<sled::Batch, RaftError> {
        let mut batch = sled::Batch::default();
        for key in self.state.iter().keys() {
            let key = key?;
            let overwritten = key == APPLIED_KEY
                || piece_number(&key).is_some_and(|n| (n as usize) < pieces.len());
            if !overwritten {
                batch.remove(key);
            }
        }
        for (n, piece) in pieces.iter().enumerate() {
            batch.insert(piece_key(n as u32), piece.as_slice());
        }
        batch.insert(APPLIED_KEY, &applied.to_be_bytes());
        Ok(batch)
    }

    /// First and last index present in the log tree, for tests.
    #[cfg(test)]
    pub(crate) fn log_bounds(&self) -> (Option<u64>, Option<u64>) {
        let index =
            |kv: Option<(sled::IVec, sled::IVec)>| kv.map(|(k, _)| decode_index(&k).unwrap());
        (
            index(self.log.first().unwrap()),
            index(self.log.last().unwrap()),
        )
    }

    /// Forget the applied state down to `applied` without touching the log,
    /// as if the last checkpoints had not reached the disk before a crash:
    /// the checkpoint without the `remove`d objects, applied up to `applied`.
    #[cfg(test)]
    pub(crate) fn roll_back_state(&self, applied: u64, remove: &[(crate::store::Kind, &str)]) {
        let mut state = self.load_state().unwrap();
        for (kind, id) in remove {
            state.remove(*kind, id).unwrap();
        }
        let pieces = snapshot::encode(&state, STATE_PIECE_BYTES);
        self.write_state(applied, &pieces).unwrap();
        self.db.flush().unwrap();
    }

    /// Index of the recorded snapshot, for tests.
    #[cfg(test)]
    pub(crate) fn snapshot_index(&self) -> u64 {
        read_meta::<SnapshotMetadata>(&self.meta, SNAPSHOT_KEY)
            .unwrap()
            .map(|m| m.index)
            .unwrap_or_default()
    }

    /// Make everything written so far durable: the blob files first (see
    /// [`BlobSync`]), then sled's log, which points at them.
    pub(crate) fn flush(&self) -> Result<(), RaftError> {
        self.blobs.sync_new().map_err(sled::Error::Io)?;
        self.db.flush()?;
        Ok(())
    }

    /// `--force-new-cluster`: make `id` the only voter, keeping the applied
    /// state. The caller has replayed and written everything committed
    /// first; the log (nothing past the applied state but entries no
    /// quorum may have acknowledged) is dropped behind a snapshot at the
    /// applied index whose configuration is `id` alone. Returns that index.
    pub(crate) fn force_single_voter(&self, id: u64) -> Result<u64, RaftError> {
        let applied = match self.state.get(APPLIED_KEY)? {
            Some(bytes) => decode_index(&bytes)?,
            None => 0,
        };
        let old: SnapshotMetadata = read_meta(&self.meta, SNAPSHOT_KEY)?.unwrap_or_default();
        let mut hs: HardState = read_meta(&self.meta, HARD_STATE_KEY)?.unwrap_or_default();
        let term = if applied == old.index {
            old.term
        } else {
            match self.log.get(applied.to_be_bytes())? {
                Some(bytes) => Entry::parse_from_bytes(&bytes)?.term,
                None => {
                    return Err(RaftError::Corrupt(format!(
                        "applied index {applied} is neither the snapshot ({}) nor in the log",
                        old.index
                    )));
                }
            }
        };
        let mut cs = ConfState::default();
        cs.set_voters(vec![id]);
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(cs.clone());
        hs.commit = applied;
        hs.term = hs.term.max(term);
        let mut batch = sled::Batch::default();
        for key in self.log.iter().keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        self.meta.insert(SNAPSHOT_KEY, meta.write_to_bytes()?)?;
        self.meta.insert(HARD_STATE_KEY, hs.write_to_bytes()?)?;
        self.meta.insert(CONF_STATE_KEY, cs.write_to_bytes()?)?;
        self.flush()?;
        Ok(applied)
    }
}

/// How long a store being closed may take to let go of its files, as a
/// stopping node and an open wait for it.
pub(crate) const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Wait until nothing holds the database at `path` open: sled's I/O threads
/// may keep it a moment after the last handle is dropped, and an open in that
/// moment fails on sled's lock (a restart in the same process: tests, and
/// `--force-new-cluster`). Polls sled's own lock; false after `timeout`.
pub(crate) fn wait_closed(path: &Path, timeout: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // No database file: nothing to hold.
        let Ok(file) = std::fs::File::open(path.join("db")) else {
            return true;
        };
        match file.try_lock() {
            // Dropping `file` releases the lock again.
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

pub(super) fn read_meta<M: protobuf::Message>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<M>, RaftError> {
    let Some(bytes) = tree.get(key)? else {
        return Ok(None);
    };
    M::parse_from_bytes(&bytes)
        .map(Some)
        .map_err(|e| RaftError::Corrupt(format!("raft_meta {}: {e}", String::from_utf8_lossy(key))))
}

fn piece_key(n: u32) -> Vec<u8> {
    [PIECE_PREFIX, &n.to_be_bytes()[..]].concat()
}

fn piece_number(key: &[u8]) -> Option<u32> {
    let n = key.strip_prefix(PIECE_PREFIX)?;
    Some(u32::from_be_bytes(n.try_into().ok()?))
}

pub(super) fn decode_index(bytes: &[u8]) -> Result<u64, RaftError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        RaftError::Corrupt(format!("an index must be 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
