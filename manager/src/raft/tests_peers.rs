//! Scenarios with a scripted peer (Raft id 2) played by the test through a
//! capturing [`Transport`] and [`RaftHandle::step`]: installing a leader's
//! snapshot, refusing writes as a follower, failing waiters on lost leadership.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Message, MessageType, Snapshot};
use shoal_proto::{Service, ServiceSpec, StoreSnapshot, Task};
use tokio::sync::mpsc;

use super::*;
use crate::store::{Action, Object, StoreError};

/// Hands every outgoing message to the test.
pub(super) struct Capture(pub(super) Mutex<mpsc::UnboundedSender<Message>>);

impl Transport for Capture {
    fn send(&self, messages: Vec<Message>) {
        let tx = self.0.lock().unwrap();
        for msg in messages {
            let _ = tx.send(msg);
        }
    }
}

fn config(dir: &std::path::Path) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.raft.tick_interval = Duration::from_millis(20);
    config
}

pub(super) fn message(msg_type: MessageType, term: u64) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(msg_type);
    msg.from = 2;
    msg.to = 1;
    msg.term = term;
    msg
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) async fn next_of(
    rx: &mut mpsc::UnboundedReceiver<Message>,
    want: MessageType,
) -> Message {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(msg)) if msg.get_msg_type() == want => return msg,
            Ok(Some(_)) => {}
            _ => panic!("no {want:?} from the node"),
        }
    }
}

/// Peer 2, leader of term 5, sends node 1 a snapshot at index 100 holding
/// one service and two tasks, with voters {1, 2}.
pub(super) fn leader_snapshot() -> Vec<u8> {
    let data = StoreSnapshot {
        services: vec![Service {
            id: "s9".into(),
            spec: Some(ServiceSpec {
                name: "db".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        tasks: (0..2)
            .map(|i| Task {
                id: format!("t9-{i}"),
                service_id: "s9".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut snap = Snapshot::default();
    snap.set_data(prost::Message::encode_to_vec(&data).into());
    let meta = snap.mut_metadata();
    meta.index = 100;
    meta.term = 5;
    let mut cs = ConfState::default();
    cs.set_voters(vec![1, 2]);
    meta.set_conf_state(cs);
    let mut msg = message(MessageType::MsgSnapshot, 5);
    msg.set_snapshot(snap);
    msg.write_to_bytes().unwrap()
}

#[tokio::test]
async fn a_leaders_snapshot_replaces_the_state_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&config(dir.path())).await.unwrap();
    let service = Object::Service(Box::new(Service {
        id: "s1".into(),
        spec: Some(ServiceSpec {
            name: "web".into(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    store.propose(vec![Action::Create(service)]).await.unwrap();

    raft.step(&leader_snapshot()).unwrap();
    wait_for("the snapshot to be installed", || {
        store.read(|s| s.applied_index) == 100
    })
    .await;
    store.read(|s| {
        assert!(s.service("s1").is_none(), "the old state is gone");
        assert_eq!(s.find_service("db").unwrap().id, "s9");
        assert_eq!(s.tasks_of_service("s9").count(), 2);
    });
    wait_for("leadership to move to peer 2", || {
        let l = *store.leadership().borrow();
        !l.is_leader && l.leader_id == 2
    })
    .await;
    let err = store.propose(vec![Action::Delete(Object::Task(Box::new(Task {
        id: "t9-0".into(),
        ..Default::default()
    })))]);
    assert_eq!(err.await.unwrap_err(), StoreError::NotLeader);
    raft.shutdown().await;

    // Two voters now: the node restarts as a follower with the snapshot's state.
    let (store, raft) = start(&config(dir.path())).await.unwrap();
    store.read(|s| {
        assert_eq!(s.applied_index, 100);
        assert_eq!(s.tasks_of_service("s9").count(), 2);
        assert!(s.service("s1").is_none());
    });
    assert!(!store.is_leader());
    raft.shutdown().await;
}

#[tokio::test]
async fn waiters_fail_when_leadership_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, raft) = start(&config(dir.path())).await.unwrap();
    raft.step(&leader_snapshot()).unwrap();
    wait_for("the snapshot to be installed", || {
        raft.status().applied == 100
    })
    .await;
    raft.shutdown().await;

    // Restart with voters {1, 2}; win an election by granting peer 2's votes.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let capture = Arc::new(Capture(Mutex::new(tx)));
    let mut config = config(dir.path());
    // A longer election timeout keeps check_quorum from deposing the new
    // leader before the test has made its write.
    config.raft.election_ticks = 30;
    let (store, raft) = start_with_transport(&config, capture).await.unwrap();
    assert!(!store.is_leader());
    let pre_vote = next_of(&mut rx, MessageType::MsgRequestPreVote).await;
    raft.step(
        &message(MessageType::MsgRequestPreVoteResponse, pre_vote.term)
            .write_to_bytes()
            .unwrap(),
    )
    .unwrap();
    let vote = next_of(&mut rx, MessageType::MsgRequestVote).await;
    raft.step(
        &message(MessageType::MsgRequestVoteResponse, vote.term)
            .write_to_bytes()
            .unwrap(),
    )
    .unwrap();
    // Peer 2 acknowledges the new term's no-op; once it is applied, node 1
    // tells the store it leads. Then peer 2 goes silent: the write waits
    // until leadership moves.
    let noop = next_of(&mut rx, MessageType::MsgAppend).await;
    assert!(!store.is_leader(), "not before its no-op is applied");
    let mut ack = message(MessageType::MsgAppendResponse, vote.term);
    ack.index = noop.index + noop.entries.len() as u64;
    raft.step(&ack.write_to_bytes().unwrap()).unwrap();
    wait_for("node 1 to lead", || store.is_leader()).await;
    let pending = tokio::spawn({
        let store = store.clone();
        async move {
            let task = Object::Task(Box::new(Task {
                id: "t-new".into(),
                service_id: "s9".into(),
                ..Default::default()
            }));
            store.propose(vec![Action::Create(task)]).await
        }
    });
    loop {
        let append = next_of(&mut rx, MessageType::MsgAppend).await;
        if append.entries.iter().any(|e| !e.data.is_empty()) {
            break;
        }
    }
    raft.step(
        &message(MessageType::MsgHeartbeat, vote.term + 1)
            .write_to_bytes()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        pending.await.unwrap().unwrap_err(),
        StoreError::LeadershipLost
    );
    assert!(!store.is_leader());
    raft.shutdown().await;
}

#[tokio::test]
async fn a_new_cluster_logs_after_a_bootstrap_snapshot_so_joiners_start_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&config(dir.path())).await.unwrap();
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
    let (store, raft) =
        start_with_transport(&config(dir.path()), Arc::new(Capture(Mutex::new(tx))))
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

#[tokio::test]
async fn a_follower_read_waits_for_the_leaders_read_index_and_fails_fast_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut config = config(dir.path());
    // Keep node 1 a follower of the scripted peer for the whole test.
    config.raft.election_ticks = 50;
    let (store, raft) = start_with_transport(&config, Arc::new(Capture(Mutex::new(tx))))
        .await
        .unwrap();
    // A lone voter confirms its own reads.
    raft.inbox()
        .read_barrier(Duration::from_secs(5))
        .await
        .unwrap();

    raft.step(&leader_snapshot()).unwrap();
    wait_for("node 1 to follow peer 2", || {
        store.read(|s| s.applied_index) == 100 && store.leadership().borrow().leader_id == 2
    })
    .await;
    let inbox = raft.inbox();
    let read = tokio::spawn(async move { inbox.read_barrier(Duration::from_secs(5)).await });
    let ask = next_of(&mut rx, MessageType::MsgReadIndex).await;
    assert_eq!(ask.to, 2, "a follower asks the leader");
    // The leader confirms index 102, which node 1 has not applied yet.
    let mut answer = message(MessageType::MsgReadIndexResp, 5);
    answer.index = 102;
    answer.set_entries(ask.entries.clone());
    raft.step(&answer.write_to_bytes().unwrap()).unwrap();
    // A heartbeat's answer shows the node has handled the read index.
    let mut heartbeat = message(MessageType::MsgHeartbeat, 5);
    heartbeat.commit = 100;
    raft.step(&heartbeat.write_to_bytes().unwrap()).unwrap();
    next_of(&mut rx, MessageType::MsgHeartbeatResponse).await;
    assert!(!read.is_finished(), "the read waits until 102 is applied");

    let mut append = message(MessageType::MsgAppend, 5);
    append.index = 100;
    append.log_term = 5;
    append.commit = 102;
    append.set_entries(
        (101..=102)
            .map(|index| raft::eraftpb::Entry {
                index,
                term: 5,
                ..Default::default()
            })
            .collect(),
    );
    raft.step(&append.write_to_bytes().unwrap()).unwrap();
    read.await.unwrap().unwrap();
    assert!(store.read(|s| s.applied_index) >= 102);

    // Nobody answers this one: "no quorum" once the time is up, not a hang.
    let started = Instant::now();
    let err = raft
        .inbox()
        .read_barrier(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::NoQuorum);
    assert!(started.elapsed() < Duration::from_secs(3));
    raft.shutdown().await;
}
