//! Scenarios for the Raft node on a real sled directory: commits, restarts,
//! concurrency, conflicts, compaction and large values; where a new
//! cluster's log starts, and a joined manager's first start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Message, MessageType};
use shoal_proto::{Meta, Service, Task, TaskStatus};
use tokio::sync::mpsc;

use super::disk::{self, Disk};
use super::*;
use crate::store::{Action, Kind, Object, ObjectExt, StoreError};
use crate::test_fixtures::{
    Capture, leader_snapshot, next_of, raft_config, service_object, task_object, wait_for,
};

/// Every object with its version, sorted, plus the applied index.
fn snapshot_of(store: &Store) -> (Vec<(String, u64, Vec<u8>)>, u64) {
    store.read(|s| {
        let mut objects: Vec<_> = s
            .objects()
            .map(|o| {
                (
                    o.id().to_string(),
                    o.version(),
                    crate::store::encode(&o.to_object()),
                )
            })
            .collect();
        objects.sort();
        (objects, s.applied_index)
    })
}

#[tokio::test]
async fn proposals_commit_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    assert!(store.is_leader(), "a sole voter leads at once");

    let applied = store
        .propose(vec![
            Action::Create(service_object("s1", "web")),
            Action::Create(task_object("t1", "s1", "")),
        ])
        .await
        .unwrap();
    assert_eq!(applied.batch.changes.len(), 2);
    store.read(|s| {
        assert_eq!(s.find_service("web").unwrap().id, "s1");
        assert_eq!(
            s.task("t1").unwrap().meta.as_ref().unwrap().version,
            applied.index
        );
        assert_eq!(s.applied_index, applied.index);
    });
    wait_for("status to show the apply", || {
        raft.status().applied >= applied.index
    })
    .await;
    let status = raft.status();
    assert_eq!((status.id, status.leader_id), (1, 1));
    assert!(status.commit >= applied.index && status.term >= 1);
    raft.shutdown().await;
    assert_eq!(
        store
            .propose(vec![Action::Create(task_object("t2", "s1", ""))])
            .await
            .unwrap_err(),
        StoreError::Stopped
    );
}

#[tokio::test]
async fn restart_keeps_objects_applied_index_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    store
        .propose(vec![Action::Create(service_object("s1", "web"))])
        .await
        .unwrap();
    for i in 0..5 {
        store
            .propose(vec![Action::Create(task_object(
                &format!("t{i}"),
                "s1",
                "",
            ))])
            .await
            .unwrap();
    }
    let mut t0 = store.read(|s| s.task("t0").unwrap().clone());
    t0.node_id = "n1".into();
    store
        .propose(vec![Action::Update(Object::Task(t0.into()))])
        .await
        .unwrap();
    store
        .propose(vec![Action::Delete(task_object("t4", "s1", ""))])
        .await
        .unwrap();
    let before = snapshot_of(&store);
    raft.shutdown().await;

    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    let after = snapshot_of(&store);
    assert_eq!(after.0, before.0, "every object and version survives");
    assert!(
        after.1 >= before.1,
        "applied index {} went back from {}",
        after.1,
        before.1
    );
    assert!(store.is_leader());
    store.read(|s| {
        assert!(s.task("t4").is_none());
        assert_eq!(s.tasks_on_node("n1").count(), 1);
    });
    // New writes land after the old log, with higher versions.
    let applied = store
        .propose(vec![Action::Create(task_object("t9", "s1", ""))])
        .await
        .unwrap();
    assert!(applied.index > before.1);
    raft.shutdown().await;
}

#[tokio::test]
async fn entries_whose_state_was_lost_are_replayed_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    let created = store
        .propose(vec![Action::Create(service_object("s1", "web"))])
        .await
        .unwrap();
    for i in 0..3 {
        store
            .propose(vec![Action::Create(task_object(
                &format!("t{i}"),
                "s1",
                "",
            ))])
            .await
            .unwrap();
    }
    let mut t0 = store.read(|s| s.task("t0").unwrap().clone());
    t0.node_id = "n1".into();
    store
        .propose(vec![Action::Update(Object::Task(t0.into()))])
        .await
        .unwrap();
    let before = snapshot_of(&store);
    raft.shutdown().await;

    // As if the state batches after the service's creation never reached the disk.
    let disk = Disk::open(&dir.path().join("store")).unwrap();
    disk.roll_back_state(
        created.index,
        &[(Kind::Task, "t0"), (Kind::Task, "t1"), (Kind::Task, "t2")],
    );
    drop(disk);

    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    wait_for("the log to be replayed", || {
        store.read(|s| s.applied_index) >= before.1
    })
    .await;
    assert_eq!(
        snapshot_of(&store).0,
        before.0,
        "replay rebuilt the same objects and versions"
    );
    raft.shutdown().await;
}

#[tokio::test]
async fn concurrent_proposals_each_get_their_own_result() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    let mut joins = Vec::new();
    for p in 0..20 {
        let store = store.clone();
        joins.push(tokio::spawn(async move {
            let ids: Vec<String> = (0..10).map(|i| format!("t{p}-{i}")).collect();
            let actions = ids
                .iter()
                .map(|id| Action::Create(task_object(id, "s1", "")))
                .collect();
            let applied = store.propose(actions).await.unwrap();
            (ids, applied)
        }));
    }
    let mut indexes = HashSet::new();
    for join in joins {
        let (ids, applied) = join.await.unwrap();
        let got: Vec<String> = applied
            .batch
            .changes
            .iter()
            .map(|c| c.object.id().to_string())
            .collect();
        assert_eq!(got, ids, "a waiter received another proposal's result");
        assert!(
            indexes.insert(applied.index),
            "two proposals share index {}",
            applied.index
        );
    }
    assert_eq!(store.read(|s| s.task_count()), 200);
    raft.shutdown().await;
}

#[tokio::test]
async fn a_conflicting_proposal_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    store
        .propose(vec![Action::Create(service_object("s1", "web"))])
        .await
        .unwrap();
    let mut stale = store.read(|s| s.service("s1").unwrap().clone());
    stale.meta = Some(Meta {
        version: 999,
        ..Default::default()
    });
    let mut joins = Vec::new();
    for i in 0..10 {
        let store = store.clone();
        let action = if i == 5 {
            Action::Update(Object::Service(stale.clone().into()))
        } else {
            Action::Create(task_object(&format!("t{i}"), "s1", ""))
        };
        joins.push(tokio::spawn(async move {
            (i, store.propose(vec![action]).await)
        }));
    }
    for join in joins {
        match join.await.unwrap() {
            (5, result) => assert!(
                matches!(result, Err(StoreError::Conflict { ref id, .. }) if id == "s1"),
                "{result:?}"
            ),
            (i, result) => assert!(result.is_ok(), "proposal {i}: {result:?}"),
        }
    }
    assert_eq!(store.read(|s| s.task_count()), 9);
    raft.shutdown().await;
}

#[tokio::test]
async fn compaction_keeps_state_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = raft_config(dir.path(), 10);
    config.raft.snapshot_interval = 20;
    let (store, raft) = start(&config).await.unwrap();
    store
        .propose(vec![Action::Create(service_object("s1", "web"))])
        .await
        .unwrap();
    for i in 0..100 {
        store
            .propose(vec![Action::Create(task_object(
                &format!("t{i}"),
                "s1",
                "",
            ))])
            .await
            .unwrap();
    }
    // A tick flushes the last state batch, after which compaction may run.
    let target = store.read(|s| s.applied_index);
    wait_for("status to catch up", || raft.status().applied >= target).await;
    let before = snapshot_of(&store);
    raft.shutdown().await;

    let disk = Disk::open(&dir.path().join("store")).unwrap();
    let (first, last) = disk.log_bounds();
    let snap = disk.snapshot_index();
    assert!(
        snap >= 80,
        "snapshot at {snap}, expected within 20 of {}",
        before.1
    );
    assert!(
        first.is_none_or(|f| f == snap + 1),
        "log starts at {first:?} after a snapshot at {snap}"
    );
    assert!(last.is_some_and(|l| l >= before.1) || snap >= before.1);
    drop(disk);

    let (store, raft) = start(&config).await.unwrap();
    let after = snapshot_of(&store);
    assert_eq!(after.0, before.0);
    assert_eq!(store.read(|s| s.task_count()), 100);
    let applied = store
        .propose(vec![Action::Create(task_object("t-last", "s1", ""))])
        .await
        .unwrap();
    assert!(applied.index > before.1);
    raft.shutdown().await;
}

#[tokio::test]
async fn a_value_larger_than_128_kib_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    let message: String = (0..300 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let big = Object::Task(Box::new(Task {
        id: "big".into(),
        service_id: "s1".into(),
        status: Some(TaskStatus {
            message: message.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    store.propose(vec![Action::Create(big)]).await.unwrap();
    raft.shutdown().await;

    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    let kept = store.read(|s| {
        s.task("big")
            .and_then(|t| t.status.clone())
            .map(|s| s.message)
    });
    assert_eq!(kept.map(|m| m.len()), Some(message.len()));
    raft.shutdown().await;
}

#[tokio::test]
async fn an_oversized_proposal_is_refused_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    let huge = Object::Task(Box::new(Task {
        id: "huge".into(),
        status: Some(TaskStatus {
            message: "x".repeat(3 << 20),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let err = store.propose(vec![Action::Create(huge)]).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Invalid(ref m) if m.contains("split it")),
        "{err}"
    );
    raft.shutdown().await;
}

#[tokio::test]
async fn garbage_from_a_peer_is_an_invalid_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, raft) = start(&raft_config(dir.path(), 10)).await.unwrap();
    assert!(matches!(
        raft.step(&[0xff, 0xff, 0xff]),
        Err(RaftError::InvalidMessage(_))
    ));
    raft.shutdown().await;
}

/// Placement throughput: `SHOAL_RAFT_BENCH_TASKS` task creates (default
/// 100 000) in proposals of 1 000, 8 in flight. Run with
/// `cargo test -p shoal-manager --release raft_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn raft_throughput() {
    let total: usize = std::env::var("SHOAL_RAFT_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    const PER_PROPOSAL: usize = 1_000;
    const IN_FLIGHT: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut config = raft_config(dir.path(), 10);
    config.raft.tick_interval = Duration::from_millis(100);
    let (store, raft) = start(&config).await.unwrap();

    let started = Instant::now();
    let proposals = total.div_ceil(PER_PROPOSAL);
    let mut joins = tokio::task::JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let store = store.clone();
        joins.spawn(async move {
            for p in (worker..proposals).step_by(IN_FLIGHT) {
                let actions = (p * PER_PROPOSAL..((p + 1) * PER_PROPOSAL).min(total))
                    .map(|i| {
                        Action::Create(Object::Task(Box::new(Task {
                            id: format!("task-{i:08}"),
                            service_id: format!("svc-{}", i % 50),
                            node_id: format!("node-{}", i % 200),
                            ..Default::default()
                        })))
                    })
                    .collect();
                let applied = store.propose_each(actions).await.unwrap();
                assert!(applied.refused.is_empty());
            }
        });
    }
    while let Some(done) = joins.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(store.read(|s| s.task_count()), total);
    println!(
        "raft throughput: {total} placements in {:.2?} = {:.0} placements/s",
        elapsed,
        total as f64 / elapsed.as_secs_f64()
    );
    raft.shutdown().await;
}

#[test]
fn the_state_tree_holds_one_checkpoint_and_reads_the_one_object_per_key_layout() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::open(&dir.path().join("store")).unwrap();
    // The layout before checkpoints were pieces: one object per key.
    let old = task_object("t-old", "s1", "");
    disk.state
        .insert(old.storage_key(), crate::store::encode(&old))
        .unwrap();
    disk.state
        .insert(disk::APPLIED_KEY, &4u64.to_be_bytes())
        .unwrap();
    let state = disk.load_state().unwrap();
    assert_eq!(state.applied_index, 4);
    assert!(
        state.task("t-old").is_some(),
        "an object of the old layout is read"
    );

    let mut state = state;
    for i in 0..300 {
        state.put(task_object(&format!("t{i:03}"), "s1", ""));
    }
    let pieces = snapshot::encode(&state, 512);
    assert!(pieces.len() > 3);
    disk.write_state(9, &pieces).unwrap();
    let keys = || -> Vec<Vec<u8>> {
        disk.state
            .iter()
            .keys()
            .map(|k| k.unwrap().to_vec())
            .collect()
    };
    assert_eq!(
        keys().len(),
        pieces.len() + 1,
        "pieces and the applied index only"
    );
    let loaded = disk.load_state().unwrap();
    assert_eq!((loaded.applied_index, loaded.task_count()), (9, 301));

    // A smaller checkpoint leaves no piece of the larger one behind.
    state.remove(Kind::Task, "t-old");
    disk.write_state(10, &snapshot::encode(&state, usize::MAX))
        .unwrap();
    assert_eq!(keys().len(), 2);
    let loaded = disk.load_state().unwrap();
    assert_eq!((loaded.applied_index, loaded.task_count()), (10, 300));
}

/// sled 0.34.7 writes a page whose encoding passes a quarter of a segment to a
/// blob file that its `flush()` never fsyncs: a checkpoint's pieces are cut
/// small enough never to make one, and the blob files a leaf of large log
/// entries does make are synced by the flush.
#[test]
fn checkpoints_make_no_sled_blob_files_and_a_flush_syncs_those_large_entries_make() {
    use protobuf::Message as _;
    use raft::eraftpb::Entry;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let disk = Disk::open(&path).unwrap();
    let blob_files = || -> usize { std::fs::read_dir(path.join("blobs")).map_or(0, |d| d.count()) };
    let mut state = crate::store::MemState::default();
    // About 512 bytes each, like a task with its spec.
    for i in 0..40_000 {
        state.put(Object::Task(Box::new(Task {
            id: format!("t{i:06}"),
            service_id: "s1".into(),
            service_name: "x".repeat(500),
            ..Default::default()
        })));
    }
    for applied in [5, 6, 7] {
        let pieces = snapshot::encode(&state, disk::STATE_PIECE_BYTES);
        assert!(pieces.len() > 17, "enough pieces to fill a sled leaf");
        disk.write_state(applied, &pieces).unwrap();
    }
    disk.flush().unwrap();
    assert_eq!(blob_files(), 0, "checkpoints stay in the segment file");

    // As `SledStorage::append` writes them: one batch per Ready.
    let data = vec![7u8; 512 << 10];
    for index in 1..=40u64 {
        let entry = Entry {
            index,
            term: 1,
            data: data.clone().into(),
            ..Default::default()
        };
        let mut batch = sled::Batch::default();
        batch.insert(&index.to_be_bytes(), entry.write_to_bytes().unwrap());
        disk.log.apply_batch(batch).unwrap();
    }
    assert!(blob_files() > 0, "leaves of 512 KiB entries are blobs");
    disk.flush().unwrap();
    assert_eq!(
        disk.blobs.sync_new().unwrap(),
        0,
        "the flush synced every blob file"
    );
    assert_eq!(disk.log.len(), 40);
}

/// A stopped node reports stopped only once sled has let go of its files, so
/// a restart in the same process (`--force-new-cluster`, these tests) cannot
/// meet sled's lock still held by its I/O threads.
#[test]
fn the_store_counts_as_closed_only_once_sleds_lock_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    assert!(disk::wait_closed(&path, Duration::ZERO), "no store yet");
    let open = Disk::open(&path).unwrap();
    assert!(
        !disk::wait_closed(&path, Duration::from_millis(20)),
        "held while a handle is open"
    );
    drop(open);
    assert!(disk::wait_closed(&path, Duration::from_secs(5)));
    Disk::open(&path).expect("opens again");
}

#[tokio::test]
async fn a_new_cluster_logs_after_a_bootstrap_snapshot_so_joiners_start_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 20)).await.unwrap();
    assert!(store.is_leader());
    let service = Object::Service(Box::new(Service {
        id: "s1".into(),
        ..Default::default()
    }));
    store.propose(vec![Action::Create(service)]).await.unwrap();
    raft.shutdown().await;

    let disk = disk::Disk::open(&dir.path().join("store")).unwrap();
    assert_eq!(disk.snapshot_index(), 1);
    let (first, _) = disk.log_bounds();
    assert_eq!(
        first,
        Some(2),
        "the log starts after the bootstrap snapshot"
    );
}

#[tokio::test]
async fn a_joined_manager_starts_with_its_raft_id_and_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    membership::store_raft_id(dir.path(), 5).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (store, raft) = start_with_transport(
        &raft_config(dir.path(), 20),
        Arc::new(Capture(Mutex::new(tx))),
    )
    .await
    .unwrap();
    assert_eq!(raft.status().id, 5);
    assert!(!store.is_leader());
    // The leader's snapshot, naming it a voter, is what gives it a
    // configuration and a state.
    let mut msg = Message::parse_from_bytes(&leader_snapshot()).unwrap();
    msg.to = 5;
    let mut cs = ConfState::default();
    cs.set_voters(vec![2, 5]);
    msg.mut_snapshot().mut_metadata().set_conf_state(cs);
    raft.step(&msg.write_to_bytes().unwrap()).unwrap();
    wait_for("the snapshot to be installed", || {
        store.read(|s| s.applied_index) == 100
    })
    .await;
    // It acknowledges the snapshot once it is durable (after the state is
    // visible, so wait for the answer rather than peek).
    let answer = next_of(&mut rx, MessageType::MsgAppendResponse).await;
    assert_eq!((answer.from, answer.to), (5, 2), "it answers the leader");
    raft.shutdown().await;
}
