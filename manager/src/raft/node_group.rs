//! The Raft actor's group work: linearizable reads (ReadIndex), membership
//! changes (learners added, caught-up learners promoted, members removed),
//! noticing its own removal, and the view of the group it shares with the
//! control service.

use raft::StateRole;
use raft::eraftpb::{ConfChange, ConfChangeType};

use super::GroupView;
use super::node::{ConfReply, Node, PROMOTE_LAG, ReadReply};
use super::service::MemberChange;
use crate::store::StoreError;

impl Node {
    /// Ask the leader (or, leading, a quorum) for the index a read must see.
    pub(super) fn read_index(&mut self, reply: ReadReply) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(StoreError::NoQuorum));
            return;
        }
        self.next_read += 1;
        let mut ctx = self.read_prefix.to_vec();
        ctx.extend_from_slice(&self.next_read.to_be_bytes());
        self.raw.read_index(ctx.clone());
        self.reads.insert(ctx, reply);
    }

    /// Leader only: make a learner whose log is within [`PROMOTE_LAG`]
    /// entries of the commit index a voter, one change at a time. A manager
    /// thus votes only once it can, and a slow joiner never counts towards
    /// (or against) a quorum while it catches up.
    pub(super) fn promote_caught_up_learners(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.pending_conf_index > raft.raft_log.applied {
            return;
        }
        let committed = raft.raft_log.committed;
        let ready = self
            .raw
            .store()
            .conf_state()
            .learners
            .iter()
            .copied()
            .find(|id| {
                raft.prs()
                    .get(*id)
                    // matched > 0: it has at least installed a snapshot
                    // (a new learner's progress starts at 0, which a young
                    // cluster's commit index would otherwise be close to).
                    .is_some_and(|pr| pr.matched > 0 && pr.matched + PROMOTE_LAG >= committed)
            });
        let Some(id) = ready else {
            return;
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::AddNode);
        cc.node_id = id;
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => tracing::info!(
                raft.id = id,
                "the joining manager caught up; making it a voter"
            ),
            Err(err) => tracing::warn!(raft.id = id, error = %err, "could not promote a learner"),
        }
    }

    /// This manager is no longer in the Raft group: say so once.
    pub(super) fn mark_removed(&mut self) {
        self.removed.send_if_modified(|removed| {
            let first = !*removed;
            if first {
                tracing::warn!("this manager has been removed from the raft group");
            }
            *removed = true;
            first
        });
    }

    /// Copy the voters and when each peer was last heard from where the
    /// control service reads them (`node ls`'s manager status).
    pub(super) fn share_group(&mut self) {
        let cs = self.raw.store().conf_state();
        let view = GroupView {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            heard: self.heard.clone(),
            self_id: self.raw.raft.id,
            leader_id: self.raw.raft.leader_id,
        };
        *self.group.lock().expect("group lock") = view;
    }

    /// Match confirmed read indexes to their waiters.
    pub(super) fn confirm_reads(&mut self, states: Vec<raft::ReadState>) {
        for state in states {
            if let Some(reply) = self.reads.remove(&state.request_ctx) {
                self.confirmed_reads.push((state.index, reply));
            }
        }
    }

    /// Answer the reads whose index this node has applied.
    pub(super) fn answer_reads(&mut self) {
        if self.confirmed_reads.is_empty() {
            return;
        }
        let applied = self.raw.raft.raft_log.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirmed_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.confirmed_reads = waiting;
        for (_, reply) in ready {
            let _ = reply.send(Ok(()));
        }
    }

    /// Propose a conf change adding a learner or removing a member; its context carries
    /// a fresh waiter id so the reply is matched when the entry is applied.
    pub(super) fn propose_member_change(&mut self, change: MemberChange, reply: ConfReply) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            let _ = reply.send(Err(StoreError::NotLeader));
            return;
        }
        if raft.pending_conf_index > raft.raft_log.applied {
            let _ = reply.send(Err(StoreError::Invalid(
                "another membership change is in progress; retry shortly".into(),
            )));
            return;
        }
        self.next_conf_waiter += 1;
        let waiter = self.next_conf_waiter;
        let mut cc = ConfChange::default();
        let id = match change {
            // A new manager starts as a learner; the leader promotes it
            // once it has caught up (`promote_caught_up_learners`).
            MemberChange::AddLearner(id) => {
                cc.set_change_type(ConfChangeType::AddLearnerNode);
                id
            }
            MemberChange::Remove(id) => {
                cc.set_change_type(ConfChangeType::RemoveNode);
                id
            }
        };
        cc.node_id = id;
        match self
            .raw
            .propose_conf_change(waiter.to_be_bytes().to_vec(), cc)
        {
            Ok(()) => {
                tracing::info!(raft.id = id, ?change, "proposed a membership change");
                self.conf_waiters.insert(waiter, reply);
            }
            Err(err) => {
                let _ = reply.send(Err(StoreError::Invalid(format!(
                    "raft refused the membership change: {err}"
                ))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Linearizable reads on a follower, with a scripted leader (Raft id 2).

    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use protobuf::Message as _;
    use raft::eraftpb::MessageType;
    use tokio::sync::mpsc;

    use crate::raft::start_with_transport;
    use crate::store::StoreError;
    use crate::test_fixtures::{Capture, leader_snapshot, message, next_of, raft_config, wait_for};

    #[tokio::test]
    async fn a_follower_read_waits_for_the_leaders_read_index_and_fails_fast_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut config = raft_config(dir.path(), 20);
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
}
