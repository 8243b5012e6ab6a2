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
//! cannot run past the reserve unseen. Only a refusal reads statvfs at
//! once (less what is taken but not flushed yet, which statvfs cannot see):
//! a refusal then quotes the current figure, and the first write after
//! space returns is taken.

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

/// Reads the bytes available on the store's filesystem (statvfs, or a fake
/// in tests).
type Probe = Box<dyn FnMut() -> std::io::Result<u64> + Send>;

/// The free space of the store's filesystem, as the actor last saw it.
pub(crate) struct DiskSpace {
    probe: Probe,
    /// Where statvfs looks: the sled directory.
    store_dir: PathBuf,
    /// What the messages name: the manager's data dir.
    data_dir: String,
    /// Bytes of the last checkpoint of the applied state.
    checkpoint: u64,
    /// Bytes available at the last refresh, less those taken since; `None`
    /// when statvfs failed (writes are then not held back on a guess).
    free: Option<u64>,
    /// Bytes taken since the last flush of the store.
    unflushed: u64,
    /// When statvfs was last read.
    checked: Instant,
    /// Whether the last look found too little space (logged on each change).
    low: bool,
}

impl DiskSpace {
    /// Watch the filesystem of `store_dir`; `checkpoint` is the size of the
    /// checkpoint already on disk.
    pub(crate) fn new(data_dir: &Path, store_dir: &Path, checkpoint: u64) -> DiskSpace {
        let path = store_dir.to_path_buf();
        let statvfs = move || {
            rustix::fs::statvfs(&path)
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
                .map_err(std::io::Error::from)
        };
        DiskSpace::with_probe(data_dir, store_dir, checkpoint, Box::new(statvfs))
    }

    fn with_probe(data_dir: &Path, store_dir: &Path, checkpoint: u64, probe: Probe) -> DiskSpace {
        let mut space = DiskSpace {
            probe,
            store_dir: store_dir.to_path_buf(),
            data_dir: data_dir.display().to_string(),
            checkpoint,
            free: None,
            unflushed: 0,
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

    /// Everything taken so far is on disk, and statvfs counts it.
    pub(crate) fn flushed(&mut self) {
        self.unflushed = 0;
    }

    fn refresh(&mut self, now: Instant) {
        self.checked = now;
        match (self.probe)() {
            Ok(bytes) => self.free = Some(bytes.saturating_sub(self.unflushed)),
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
            // The figure may be up to REFRESH old: look again before refusing.
            self.refresh(Instant::now());
        }
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

    /// What a storage error that stopped the node says to the operator: a
    /// full disk is named as such, with what to do.
    pub(crate) fn describe_failure(&self, err: &super::RaftError) -> String {
        match err {
            super::RaftError::Storage(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::StorageFull =>
            {
                format!(
                    "{err}; the disk under {} is full: free space, then start the manager again",
                    self.data_dir
                )
            }
            _ => err.to_string(),
        }
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
        self.unflushed = self.unflushed.saturating_add(bytes);
        if let Some(free) = &mut self.free {
            *free = free.saturating_sub(bytes);
        }
    }

    fn free_mib(&self) -> u64 {
        self.free.unwrap_or_default() / MIB
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A space over a fake disk whose available bytes the test sets.
    fn space(free: u64) -> (DiskSpace, Arc<AtomicU64>) {
        let disk = Arc::new(AtomicU64::new(free));
        let probe = {
            let disk = disk.clone();
            Box::new(move || match disk.load(Ordering::SeqCst) {
                u64::MAX => Err(std::io::Error::other("gone")),
                free => Ok(free),
            })
        };
        let dir = Path::new("/data");
        (
            DiskSpace::with_probe(dir, &dir.join("store"), 0, probe),
            disk,
        )
    }

    #[test]
    fn a_write_that_would_eat_into_the_reserve_is_refused_with_the_figures() {
        let (mut s, _) = space(RESERVE + 10 * MIB);
        assert!(s.admit(MIB as usize).is_ok());
        s.flushed();
        let err = s.admit(11 * MIB as usize).unwrap_err();
        assert_eq!(
            err,
            StoreError::NoSpace {
                data_dir: "/data".into(),
                free_mib: 74,
                need_mib: 75
            },
            "the fake disk saw nothing written: 74 MiB free"
        );
        assert_eq!(
            err.to_string(),
            "no space left on the manager's disk (/data): 74 MiB free, writes need at least 75 MiB; free space and retry"
        );
    }

    #[test]
    fn writes_not_flushed_yet_count_against_what_statvfs_says() {
        let (mut s, disk) = space(RESERVE + 3 * MIB);
        for _ in 0..3 {
            assert!(s.room_for(MIB as usize));
        }
        assert!(
            !s.room_for(1),
            "the three MiB are spent, though not on disk yet"
        );
        // Flushed: statvfs now shows them.
        disk.store(RESERVE, Ordering::SeqCst);
        s.flushed();
        assert!(!s.room_for(1));
        disk.store(RESERVE + MIB, Ordering::SeqCst);
        assert!(
            s.room_for(1),
            "space came back: a refusal looks again, nothing is latched"
        );
    }

    #[test]
    fn within_a_refresh_the_figure_is_not_read_again_while_there_is_room() {
        let (mut s, disk) = space(RESERVE + 10 * MIB);
        let at = s.checked;
        disk.store(0, Ordering::SeqCst);
        s.refresh_if_stale(at + REFRESH / 2);
        assert!(s.room_for(MIB as usize), "the cached figure answers");
        s.refresh_if_stale(at + REFRESH);
        assert!(!s.room_for(0), "stale: read again");
    }

    #[test]
    fn the_reserve_grows_with_the_checkpoint() {
        let (mut s, disk) = space(RESERVE + 20 * MIB);
        assert!(s.room_for(0));
        s.checkpoint_written(16 * MIB);
        s.flushed();
        disk.store(RESERVE + 4 * MIB, Ordering::SeqCst);
        assert_eq!(s.reserve(), RESERVE + 16 * MIB);
        assert!(
            !s.room_for(0),
            "4 MiB left after the checkpoint, 16 needed for the next"
        );
    }

    #[test]
    fn an_unreadable_figure_holds_nothing_back() {
        let (mut s, disk) = space(0);
        assert!(!s.room_for(1));
        disk.store(u64::MAX, Ordering::SeqCst);
        assert!(s.room_for(usize::MAX));
    }

    #[test]
    fn only_appends_with_entries_and_snapshots_need_room() {
        let (mut s, _) = space(0);
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgHeartbeat);
        assert!(s.room_for_message(&msg));
        msg.set_msg_type(MessageType::MsgAppend);
        assert!(s.room_for_message(&msg), "an empty append (a probe)");
        msg.mut_entries().push(raft::eraftpb::Entry {
            data: vec![1; 10].into(),
            ..Default::default()
        });
        assert!(!s.room_for_message(&msg));
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.clear_entries();
        assert!(!s.room_for_message(&msg));
    }

    #[test]
    fn statvfs_reads_the_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskSpace::new(dir.path(), dir.path(), 0);
        assert!(s.free.is_some_and(|free| free > 0));
    }
}
