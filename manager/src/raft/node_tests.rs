//! The Raft node (`node.rs`) and a scripted peer (Raft id 2) played by the
//! test through a capturing `Transport` and `RaftHandle::step`:
//! installing a leader's snapshot, failing waiters on lost leadership; and a
//! node whose thread panicked stops and reports it rather than serve
//! half-alive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::MessageType;
use shoal_proto::{Service, ServiceSpec, Task};
use tokio::sync::mpsc;

use crate::raft::{Transport, start, start_with_transport};
use crate::store::{Action, Object, StoreError};
use crate::test_fixtures::{
    Capture, leader_snapshot, message, next_of, raft_config, service_object, wait_for,
};

#[tokio::test]
async fn a_leaders_snapshot_replaces_the_state_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (store, raft) = start(&raft_config(dir.path(), 20)).await.unwrap();
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
    let (store, raft) = start(&raft_config(dir.path(), 20)).await.unwrap();
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
    let (_store, raft) = start(&raft_config(dir.path(), 20)).await.unwrap();
    raft.step(&leader_snapshot()).unwrap();
    wait_for("the snapshot to be installed", || {
        raft.status().applied == 100
    })
    .await;
    raft.shutdown().await;

    // Restart with voters {1, 2}; win an election by granting peer 2's votes.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let capture = Arc::new(Capture(Mutex::new(tx)));
    let mut config = raft_config(dir.path(), 20);
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

/// A transport that panics once told to, as raft-rs does on some storage
/// errors, in the middle of the Ready loop.
struct PanicsWhenArmed(std::sync::atomic::AtomicBool);

impl Transport for PanicsWhenArmed {
    fn send(&self, _messages: Vec<raft::eraftpb::Message>) {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("injected: the transport broke");
        }
    }
}

#[tokio::test]
async fn a_panic_of_the_raft_thread_is_reported_as_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let transport = std::sync::Arc::new(PanicsWhenArmed(false.into()));
    let (store, raft) = start_with_transport(&raft_config(dir.path(), 10), transport.clone())
        .await
        .unwrap();
    transport.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let write = store
        .propose(vec![Action::Create(service_object("s", "s"))])
        .await;
    assert!(write.is_err(), "no answer from a dead node: {write:?}");
    let failure = tokio::time::timeout(Duration::from_secs(10), raft.failed())
        .await
        .expect("the failure is reported");
    assert_eq!(
        failure,
        "the raft thread panicked: injected: the transport broke"
    );
    raft.shutdown().await;
}
