//! Free space under the Raft store, checked before the node takes on a write.
//!
//! sled 0.34.7 cannot survive a full disk: the first failed write records a
//! global error and every later call returns it, so the database is
//! poisoned until the process restarts. A full disk must therefore be kept
//! from happening, not handled: while the store's filesystem has less than
//! [`DiskSpace::reserve`] available, the leader refuses new proposals with
//! [`StoreError::NoSpace`] and a follower leaves the leader's appends
//! unacknowledged (as a slow follower would; Raft sends them again). Nothing
//! is latched: once the space returns, the next refresh sees it and writes
//! are taken again.
//!
//! The reserve is [`RESERVE`] plus the size of the last state checkpoint:
//! what sled still writes while proposals are refused (the hard state,
//! commits, the checkpoint of entries applied before the refusal) must fit.
//!
//! Invariant: the hot path costs a comparison. The figure is statvfs's,
//! refreshed at most every [`REFRESH`] by the actor's loop, and lowered by
//! the bytes of every entry taken since, so a burst between two refreshes
//! cannot run past the reserve unseen.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};

use crate::store::StoreError;

/// Space kept free beneath the writes the node takes: eight of sled's 8 MiB
/// segments. sled writes the log in whole segments and reuses one only once
/// its cleaner has moved every live value out of it, so a flush may need a
/// fresh segment while the one it fills and the one being cleaned are still
/// held; with the entries of a burst admitted between two refreshes, the
/// hard state and commit writes that continue while writes are refused, and
/// sled's own page-table snapshot, eight segments leave room to spare.
pub(crate) const RESERVE: u64 = 64 << 20;

/// How old the statvfs figure may grow before it is read again. statvfs is
/// a cheap system call; ten a second cost nothing and let writes resume
/// within a tick of the space returning.
pub(crate) const REFRESH: Duration = Duration::from_millis(100);

const MIB: u64 = 1 << 20;

/// The free space of the store's filesystem, as the actor last saw it.
pub(crate) struct DiskSpace {
    /// Where statvfs looks: the sled directory.
    store_dir: PathBuf,
    /// What the messages name: the manager's data dir.
    data_dir: String,
    /// Bytes of the last checkpoint of the applied state.
    checkpoint: u64,
    /// Bytes available at the last refresh, less those taken since; `None`
    /// when statvfs failed (writes are then not held back on a guess).
    free: Option<u64>,
    /// When statvfs was last read.
    checked: Instant,
    /// Whether the last look found too little space (logged on each change).
    low: bool,
}

impl DiskSpace {
    /// Watch the filesystem of `store_dir`; `checkpoint` is the size of the
    /// checkpoint already on disk.
    pub(crate) fn new(data_dir: &Path, store_dir: &Path, checkpoint: u64) -> DiskSpace {
        let mut space = DiskSpace {
            store_dir: store_dir.to_path_buf(),
            data_dir: data_dir.display().to_string(),
            checkpoint,
            free: None,
            checked: Instant::now(),
            low: false,
        };
        space.refresh(Instant::now());
        space
    }

    /// Space that must stay free after a write is taken.
    pub(crate) fn reserve(&self) -> u64 {
        RESERVE.saturating_add(self.checkpoint)
    }

    /// A checkpoint of `bytes` was written: the next one needs as much room.
    pub(crate) fn checkpoint_written(&mut self, bytes: u64) {
        self.checkpoint = bytes;
        self.take(bytes);
    }

    /// Read statvfs again if the last figure is older than [`REFRESH`].
    pub(crate) fn refresh_if_stale(&mut self, now: Instant) {
        if now.saturating_duration_since(self.checked) >= REFRESH {
            self.refresh(now);
        }
    }

    fn refresh(&mut self, now: Instant) {
        let free = rustix::fs::statvfs(&self.store_dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
            .map_err(std::io::Error::from);
        self.observe(free, now);
    }

    /// Take a statvfs result (`Ok(bytes available)`) as the current figure.
    pub(crate) fn observe(&mut self, free: std::io::Result<u64>, now: Instant) {
        self.checked = now;
        match free {
            Ok(bytes) => self.free = Some(bytes),
            Err(err) => {
                if self.free.is_some() {
                    tracing::warn!(path = %self.store_dir.display(), error = %err,
                        "cannot read the free space of the raft store's filesystem; writes are not held back");
                }
                self.free = None;
            }
        }
        if self.low && self.has_room(0) {
            self.low = false;
            tracing::info!(data_dir = %self.data_dir, free_mib = self.free_mib(),
                "disk space is back above the reserve: writes are taken again");
        }
    }

    /// Leader: may a proposal of `bytes` be appended? Counts it as written
    /// if so; otherwise the error says how much is free and needed.
    pub(crate) fn admit(&mut self, bytes: usize) -> Result<(), StoreError> {
        if self.room_for(bytes) {
            return Ok(());
        }
        Err(StoreError::NoSpace {
            data_dir: self.data_dir.clone(),
            free_mib: self.free_mib(),
            need_mib: self.reserve().saturating_add(bytes as u64).div_ceil(MIB),
        })
    }

    /// May entries of `bytes` be appended (a proposal, or a follower's
    /// appends from the leader)? Counts them as written if so.
    pub(crate) fn room_for(&mut self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        if !self.has_room(bytes) {
            if !self.low {
                self.low = true;
                tracing::warn!(
                    data_dir = %self.data_dir,
                    free_mib = self.free_mib(),
                    reserve_mib = self.reserve().div_ceil(MIB),
                    "the manager's disk is nearly full: new raft entries are refused until space is freed"
                );
            }
            return false;
        }
        self.take(bytes);
        true
    }

    /// May this node take `msg` from a peer? Appends with entries and
    /// snapshots add to the store; everything else (heartbeats, votes,
    /// replies) is always taken.
    pub(crate) fn room_for_message(&mut self, msg: &Message) -> bool {
        let bytes = match msg.get_msg_type() {
            MessageType::MsgAppend if !msg.entries.is_empty() => msg
                .entries
                .iter()
                .map(|e| e.data.len() + e.context.len())
                .sum(),
            MessageType::MsgSnapshot => msg.get_snapshot().data.len(),
            _ => return true,
        };
        self.room_for(bytes)
    }

    fn has_room(&self, bytes: u64) -> bool {
        self.free
            .is_none_or(|free| free >= self.reserve().saturating_add(bytes))
    }

    fn take(&mut self, bytes: u64) {
        if let Some(free) = &mut self.free {
            *free = free.saturating_sub(bytes);
        }
    }

    fn free_mib(&self) -> u64 {
        self.free.unwrap_or_default() / MIB
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn space(free: u64) -> DiskSpace {
        let dir = Path::new("/data");
        let mut space = DiskSpace {
            store_dir: dir.join("store"),
            data_dir: dir.display().to_string(),
            checkpoint: 0,
            free: None,
            checked: Instant::now(),
            low: false,
        };
        space.observe(Ok(free), Instant::now());
        space
    }

    #[test]
    fn a_write_that_would_eat_into_the_reserve_is_refused_with_the_figures() {
        let mut s = space(RESERVE + 10 * MIB);
        assert!(s.admit(MIB as usize).is_ok());
        let err = s.admit(10 * MIB as usize).unwrap_err();
        assert_eq!(
            err,
            StoreError::NoSpace {
                data_dir: "/data".into(),
                free_mib: 73,
                need_mib: 74
            }
        );
        assert_eq!(
            err.to_string(),
            "no space left on the manager's disk (/data): 73 MiB free, writes need at least 74 MiB; free space and retry"
        );
    }

    #[test]
    fn writes_taken_since_the_last_refresh_count_against_the_figure() {
        let mut s = space(RESERVE + 3 * MIB);
        for _ in 0..3 {
            assert!(s.room_for(MIB as usize));
        }
        assert!(!s.room_for(1), "the three MiB are spent");
        // statvfs confirms what was written: still full until space is freed.
        s.observe(Ok(RESERVE), Instant::now());
        assert!(!s.room_for(1));
        s.observe(Ok(RESERVE + MIB), Instant::now());
        assert!(s.room_for(1), "space came back: nothing is latched");
    }

    #[test]
    fn the_reserve_grows_with_the_checkpoint() {
        let mut s = space(RESERVE + 20 * MIB);
        assert!(s.room_for(0));
        s.checkpoint_written(16 * MIB);
        assert_eq!(s.reserve(), RESERVE + 16 * MIB);
        assert!(
            !s.room_for(0),
            "4 MiB left after the checkpoint, 16 needed for the next"
        );
    }

    #[test]
    fn an_unreadable_figure_holds_nothing_back() {
        let mut s = space(0);
        assert!(!s.room_for(1));
        s.observe(Err(std::io::Error::other("gone")), Instant::now());
        assert!(s.room_for(usize::MAX));
    }

    #[test]
    fn statvfs_is_read_again_only_once_the_figure_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskSpace::new(dir.path(), dir.path(), 0);
        let real = s.free.expect("statvfs of a temp dir");
        assert!(real > 0);
        let at = s.checked;
        s.free = Some(1);
        s.refresh_if_stale(at + REFRESH / 2);
        assert_eq!(s.free, Some(1), "fresh enough: not read again");
        s.refresh_if_stale(at + REFRESH);
        assert!(s.free > Some(1), "stale: read again");
    }
}
