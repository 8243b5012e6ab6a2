//! The Raft node on a disk that fills: what sled 0.34.7 does on ENOSPC (it
//! fails the write and then every later one: the reason `space` refuses
//! writes before the disk is full), and that a node whose store failed stops
//! and reports it rather than serve half-alive.
//!
//! The disk tests mount a small tmpfs of their own, so they need root;
//! without it a test says so and passes vacuously (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::*;
use crate::raft::{RaftError, disk, space, start, start_with_transport};
use crate::store::{Action, Object, Store, StoreError};
use crate::test_fixtures::{
    Capture, leader_snapshot, message, next_of, raft_config, service_object,
};

/// A tmpfs mounted on a temp dir for one test, unmounted however it ends.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount `mib` MiB, or `None` (with a message) when not root.
    fn mount(mib: u64) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs: {status}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write a file until the filesystem is full (ENOSPC); returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5_u8; 64 << 10];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                    break;
                }
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // Fill the last partial page too, a byte at a time.
        while matches!(file.write(&[0]), Ok(1)) {}
        path
    }

    /// [`Tmpfs::fill`], then give `keep` bytes back.
    fn fill_but(&self, keep: u64) -> PathBuf {
        let path = self.fill();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(keep)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // sled's threads may hold the store a moment after the last handle.
        disk::wait_closed(&self.dir.path().join("store"), disk::CLOSE_TIMEOUT);
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file (a sled thread): detach it now,
            // the kernel frees it once the last file closes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// ENOSPC, as sled reports it: the OS error the first time, then a copy
/// of its kind (sled clones the error it recorded for every later call).
fn is_enospc(err: &RaftError) -> bool {
    match err {
        RaftError::Storage(sled::Error::Io(io)) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

#[test]
fn sled_fails_every_write_once_one_failed_for_lack_of_space() {
    let Some(fs) = Tmpfs::mount(64) else { return };
    let disk = Disk::open(&fs.path().join("store")).unwrap();
    let filler = fs.fill_but(16 << 20);
    let value = vec![7_u8; 64 << 10];
    let mut first_error = None;
    for n in 0_u64..10_000 {
        let written = disk
            .log
            .insert(n.to_be_bytes(), value.as_slice())
            .map_err(RaftError::from)
            .and_then(|_| disk.flush());
        if let Err(err) = written {
            first_error = Some((n, err));
            break;
        }
    }
    let (n, err) = first_error.expect("16 MiB fill up");
    assert!(
        is_enospc(&err),
        "the write that did not fit fails with ENOSPC: {err}"
    );
    assert!(n > 16, "about 16 MiB went in first, only {n} entries did");

    // Space comes back, but sled has recorded the error: a later write,
    // however small, fails the same way.
    std::fs::remove_file(filler).unwrap();
    let again = disk
        .meta
        .insert(b"after", b"x".as_slice())
        .map_err(RaftError::from)
        .and_then(|_| disk.flush());
    let again = again.expect_err("sled is poisoned after an I/O error");
    assert!(is_enospc(&again), "the first error again: {again}");
}

/// Service `id`, named `id`.
fn service(id: &str) -> Object {
    service_object(id, id)
}

#[tokio::test]
async fn a_full_disk_refuses_proposals_with_the_figures_and_takes_them_once_freed() {
    let Some(fs) = Tmpfs::mount(96) else { return };
    let (store, raft) = start(&raft_config(fs.path(), 10)).await.unwrap();
    store
        .propose(vec![Action::Create(service("before"))])
        .await
        .expect("room at first");

    // Leave a few MiB, far under the reserve, for what sled still writes.
    let filler = fs.fill_but(8 << 20);
    let refused = wait_refused(&store).await;
    let StoreError::NoSpace {
        data_dir,
        free_mib,
        need_mib,
    } = &refused
    else {
        panic!("refused for another reason: {refused}");
    };
    assert_eq!(data_dir, &fs.path().display().to_string());
    assert!((4..=8).contains(free_mib), "{refused}");
    assert!(*need_mib >= space::RESERVE >> 20, "{refused}");
    assert!(
        refused.to_string().starts_with(&format!(
            "no space left on the manager's disk ({}): ",
            fs.path().display()
        )),
        "{refused}"
    );
    assert!(
        store.read(|s| s.find_service("before").is_ok()),
        "reads go on"
    );

    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.propose(vec![Action::Create(service("after"))]).await {
            Ok(_) => break,
            Err(StoreError::NoSpace { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(err) => panic!("writes did not resume once space was freed: {err}"),
        }
    }
    raft.shutdown().await;
    let (store, raft) = start(&raft_config(fs.path(), 10)).await.unwrap();
    assert!(store.read(|s| s.find_service("before").is_ok() && s.find_service("after").is_ok()));
    raft.shutdown().await;
}

/// The first refusal of a write once the disk is short of space (the
/// figure is refreshed every `space::REFRESH`).
async fn wait_refused(store: &Store) -> StoreError {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        match store
            .propose(vec![Action::Create(service(&format!("probe{n}")))])
            .await
        {
            Err(err) => return err,
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "writes still taken on a full disk"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn a_write_that_fails_for_lack_of_space_stops_the_node_and_reports_it() {
    let Some(fs) = Tmpfs::mount(96) else { return };
    let (store, raft) = start(&raft_config(fs.path(), 10)).await.unwrap();
    store
        .propose(vec![Action::Create(service("before"))])
        .await
        .unwrap();
    let _filler = fs.fill();
    // A membership change is not held back by the reserve (it is a few
    // bytes, and may be what frees a cluster from a full manager): with
    // nothing left at all, one of them fails to reach the disk.
    let inbox = raft.inbox();
    let mut changes = 0;
    let failure = loop {
        tokio::select! {
            failure = raft.failed() => break failure,
            outcome = async {
                if changes % 2 == 0 { inbox.add_learner(7).await } else { inbox.remove_member(7).await }
            } => {
                changes += 1;
                assert!(changes < 10_000, "the disk never refused a write: {outcome:?}");
            }
        }
    };
    assert!(
        failure.contains("No space left on device"),
        "the failure names the cause: {failure}"
    );
    // The node is gone, not half-alive: writes fail at once instead of
    // waiting for a leader.
    let err = store
        .propose(vec![Action::Create(service("after"))])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Stopped | StoreError::Storage(_)),
        "{err}"
    );
    assert!(!store.is_leader());
    raft.shutdown().await;
}

#[tokio::test]
async fn a_follower_short_of_space_leaves_appends_unanswered_and_takes_them_once_freed() {
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, MessageType};

    let Some(fs) = Tmpfs::mount(96) else { return };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let capture = std::sync::Arc::new(Capture(std::sync::Mutex::new(tx)));
    let (store, raft) = start_with_transport(&raft_config(fs.path(), 10), capture)
        .await
        .unwrap();
    // Peer 2 leads term 5 and brings node 1 to index 100 with a snapshot.
    raft.step(&leader_snapshot()).unwrap();
    let ack = next_of(&mut rx, MessageType::MsgAppendResponse).await;
    assert_eq!(ack.index, 100);

    // The leader's append of entry `index`, right after `index - 1`.
    let append = |index: u64| {
        let mut append = message(MessageType::MsgAppend, 5);
        append.index = index - 1;
        append.log_term = 5;
        append.commit = 100;
        append.mut_entries().push(Entry {
            term: 5,
            index,
            data: vec![1; 1024].into(),
            ..Default::default()
        });
        append.write_to_bytes().unwrap()
    };
    let mut heartbeat = message(MessageType::MsgHeartbeat, 5);
    heartbeat.commit = 100;
    let heartbeat = heartbeat.write_to_bytes().unwrap();

    let filler = fs.fill_but(8 << 20);
    // The node reads the free space every 100 ms: an append in that moment
    // is still taken (the reserve is there for it). Send the next entry
    // until one goes unanswered; the inbox is handled in order, so the
    // heartbeat's answer comes after whatever its append got.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut next = 101;
    loop {
        raft.step(&append(next)).unwrap();
        raft.step(&heartbeat).unwrap();
        let mut acked = false;
        loop {
            let msg = rx.recv().await.expect("the node answers");
            match msg.get_msg_type() {
                MessageType::MsgHeartbeatResponse => break,
                MessageType::MsgAppendResponse => {
                    assert_eq!(msg.index, next);
                    acked = true;
                }
                _ => {}
            }
        }
        if !acked {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a full follower still takes appends"
        );
        next += 1;
    }

    std::fs::remove_file(filler).unwrap();
    raft.step(&append(next)).unwrap();
    let ack = next_of(&mut rx, MessageType::MsgAppendResponse).await;
    assert!(!ack.reject);
    assert_eq!(ack.index, next, "the append is taken once space is back");
    assert!(raft.failure.borrow().is_none(), "the node never failed");
    assert!(!store.is_leader());
    raft.shutdown().await;
}
