//! The Raft actor: the one task that owns the `RawNode`.
//!
//! It selects over ticks, peer messages and proposals, then processes every
//! `Ready` in the order the raft-rs docs give: send messages, install a
//! snapshot, apply committed entries, append entries, persist the hard state,
//! flush sled, send the persisted messages, advance and handle the
//! `LightReady` (where a single voter's commits arrive).
//!
//! Each proposal's caller waits on a registry keyed by proposal id, never on
//! log order; all waiters fail when leadership is lost. Applied changes reach
//! the state tree in checkpoints ([`Unwritten`] says when): the whole state in
//! one sled batch of a few large values, written after the commit index so a
//! crash never leaves the state ahead of the commit. Replies need no
//! checkpoint: the entries themselves are durable in the log and a restart
//! re-applies those after the last checkpoint.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType};
use raft::{RawNode, StateRole};
use shoal_proto::Proposal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::checkpoint_due::Unwritten;
use super::disk::{MAX_ENTRY_BYTES, STATE_PIECE_BYTES};
use super::own_proposals::OwnProposals;
use super::phase_timing::{Phase, Work};
use super::service::{Inbound, Transport};
use super::space::DiskSpace;
use super::storage::SledStorage;
use super::{GroupView, RaftError, RaftStatus, snapshot};
use crate::store::{Applied, Leadership, ProposeRequest, Store, StoreError};

/// Proposals or peer messages taken from a channel before handling a Ready:
/// large enough to batch many appends into one fsync, small enough to tick.
const MAX_DRAIN: usize = 1024;
/// A learner this close to the commit index is caught up enough to vote.
pub(crate) const PROMOTE_LAG: u64 = 64;

type Reply = oneshot::Sender<Result<Applied, StoreError>>;
pub(crate) type ConfReply = oneshot::Sender<Result<(), StoreError>>;
pub(crate) type ReadReply = oneshot::Sender<Result<(), StoreError>>;

pub(crate) struct Node {
    pub(crate) raw: RawNode<SledStorage>,
    pub(crate) store: Store,
    pub(crate) transport: std::sync::Arc<dyn Transport>,
    pub(crate) proposals: mpsc::Receiver<ProposeRequest>,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    pub(crate) leadership: watch::Sender<Leadership>,
    pub(crate) status: watch::Sender<RaftStatus>,
    pub(crate) tick_interval: Duration,
    pub(crate) snapshot_interval: u64,
    /// Callers waiting for their proposal, by proposal id.
    pub(crate) waiters: HashMap<u64, Reply>,
    /// This node's proposals not yet applied, still decoded.
    pub(crate) own: OwnProposals,
    /// Callers waiting for their conf change, by the id in the entry's context.
    pub(crate) conf_waiters: HashMap<u64, ConfReply>,
    /// Last conf change waiter id handed out (unique for this node's life).
    pub(crate) next_conf_waiter: u64,
    /// Applied changes not yet written to the state tree.
    pub(crate) unwritten: Unwritten,
    /// Time spent per phase, logged about once a second.
    pub(crate) work: Work,
    /// Applied index last written to the state tree.
    pub(crate) written_applied: u64,
    /// Applied index known durable (written before the last flush).
    pub(crate) durable_applied: u64,
    /// Writes not yet flushed.
    pub(crate) dirty: bool,
    /// Reads waiting for the leader to confirm their read index, by context.
    pub(crate) reads: HashMap<Vec<u8>, ReadReply>,
    /// Reads whose index is confirmed, waiting for this node to apply it.
    pub(crate) confirmed_reads: Vec<(u64, ReadReply)>,
    /// Prefix of this node's read contexts: its Raft id and a per-start
    /// nonce, so contexts never collide on the leader, which keys pending
    /// reads from every manager by context.
    pub(crate) read_prefix: [u8; 16],
    /// Last read context number handed out.
    pub(crate) next_read: u64,
    /// Term of the last published status; reads in flight across a term
    /// change are asked again.
    pub(crate) read_term: u64,
    /// Set once this manager is out of the group; the server then stops.
    pub(crate) removed: watch::Sender<bool>,
    /// When each peer was last heard from.
    pub(crate) heard: HashMap<u64, Instant>,
    /// What the rest of the manager may see of the group, refreshed each tick.
    pub(crate) group: std::sync::Arc<std::sync::Mutex<GroupView>>,
    /// Free space under the store: new entries wait while it is short.
    pub(crate) space: DiskSpace,
    /// Set once a storage error stopped the node; the manager then exits.
    pub(crate) failure: watch::Sender<Option<String>>,
}

impl Node {
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        let mut failed = None;
        loop {
            // Ticks come before work so that a flood of proposals cannot starve
            // heartbeats and elections.
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    self.space.refresh_if_stale(Instant::now());
                    self.raw.tick();
                    // Readers that gave up (timed out) leave their waiter behind.
                    self.reads.retain(|_, reply| !reply.is_closed());
                    self.share_group();
                    self.promote_caught_up_learners();
                    if let Err(err) = self.checkpoint_if_due().and_then(|()| self.flush_if_dirty()) {
                        failed = Some(err);
                        break;
                    }
                    self.work.log_if_due();
                }
                Some(first) = self.inbound.recv() => {
                    self.space.refresh_if_stale(Instant::now());
                    self.step(first);
                    for _ in 1..MAX_DRAIN {
                        match self.inbound.try_recv() {
                            Ok(next) => self.step(next),
                            Err(_) => break,
                        }
                    }
                }
                Some(first) = self.proposals.recv() => {
                    self.space.refresh_if_stale(Instant::now());
                    self.propose(first);
                    for _ in 1..MAX_DRAIN {
                        match self.proposals.try_recv() {
                            Ok(next) => self.propose(next),
                            Err(_) => break,
                        }
                    }
                }
            }
            if let Err(err) = self.handle_ready() {
                failed = Some(err);
                break;
            }
        }
        match failed {
            Some(err) => self.fail(err),
            None => self.stop(),
        }
    }

    fn step(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Message(msg) => {
                if msg.from != raft::INVALID_ID {
                    self.heard.insert(msg.from, Instant::now());
                }
                // A follower short of space leaves the leader's appends
                // unanswered, as a slow follower would: the leader sends
                // them again, and a majority elsewhere still commits.
                if !self.space.room_for_message(&msg) {
                    return;
                }
                if let Err(err) = self.raw.step(*msg) {
                    tracing::debug!(error = %err, "raft message ignored");
                }
            }
            Inbound::Unreachable(peer) => self.raw.report_unreachable(peer),
            Inbound::Snapshot { to, status } => self.raw.report_snapshot(to, status),
            Inbound::ChangeMember { change, reply } => self.propose_member_change(change, reply),
            Inbound::TransferLeader { to } => {
                if self.raw.raft.state == StateRole::Leader && to != self.raw.raft.id {
                    tracing::info!(raft.to = to, "handing leadership over");
                    self.raw.transfer_leader(to);
                }
            }
            Inbound::RemovedByPeer { peer } => {
                tracing::warn!(
                    raft.peer = peer,
                    "a manager refused this one as removed from the cluster"
                );
                self.mark_removed();
            }
            Inbound::ReadIndex { reply } => self.read_index(reply),
        }
    }

    fn propose(&mut self, req: ProposeRequest) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = req.reply.send(Err(StoreError::NotLeader));
            return;
        }
        let id = req.proposal.id;
        let data = req.data;
        if data.len() > MAX_ENTRY_BYTES {
            let _ = req.reply.send(Err(StoreError::Invalid(format!(
                "proposal is {} bytes, more than the {} bytes one raft entry may hold; split it into smaller writes",
                data.len(),
                MAX_ENTRY_BYTES
            ))));
            return;
        }
        if let Err(err) = self.space.admit(data.len()) {
            let _ = req.reply.send(Err(err));
            return;
        }
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let (index, term) = (self.raw.raft.raft_log.last_index(), self.raw.raft.term);
                self.own.proposed(index, term, req.proposal);
                if let Some(old) = self.waiters.insert(id, req.reply) {
                    let _ = old.send(Err(StoreError::Invalid(format!(
                        "proposal id {id} was reused"
                    ))));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "proposal dropped by raft");
                let _ = req.reply.send(Err(StoreError::NotLeader));
            }
        }
    }

    /// Process every pending Ready, in the documented order.
    pub(crate) fn handle_ready(&mut self) -> Result<(), RaftError> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            self.transport.send(rd.take_messages());
            self.confirm_reads(rd.take_read_states());

            let installed_snapshot = !rd.snapshot().is_empty();
            if installed_snapshot {
                let state = self.raw.mut_store().apply_snapshot(rd.snapshot())?;
                let index = state.applied_index;
                self.store.replace_state(state);
                self.unwritten.clear();
                self.written_applied = index;
                tracing::info!(index, "installed raft snapshot from the leader");
            }

            let committed = rd.take_committed_entries();
            let mut applied = committed.len();
            let started = Instant::now();
            self.apply_entries(committed)?;
            self.work.add(Phase::Apply, started.elapsed());

            let must_flush = installed_snapshot || !rd.entries().is_empty() || rd.hs().is_some();
            let started = Instant::now();
            self.raw.mut_store().append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs)?;
            }
            if must_flush {
                self.flush()?;
            }
            self.work.add(Phase::Persist, started.elapsed());
            self.transport.send(rd.take_persisted_messages());

            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                // Persist the commit index before applying up to it.
                self.raw.mut_store().set_commit(commit)?;
                self.dirty = true;
            }
            self.transport.send(light.take_messages());
            let committed = light.take_committed_entries();
            applied += committed.len();
            let started = Instant::now();
            self.apply_entries(committed)?;
            self.work.add(Phase::Apply, started.elapsed());
            self.work.cycle(applied);
            self.raw.advance_apply();
            self.answer_reads();

            self.checkpoint_if_due()?;
            self.maybe_compact()?;
        }
        self.publish();
        Ok(())
    }

    /// Apply committed entries to the tables, keep their changes for the next
    /// checkpoint, and answer their waiters.
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for entry in entries {
            let index = entry.index;
            let now = Instant::now();
            match entry.get_entry_type() {
                // The no-op a new leader appends to commit its term. (An empty
                // conf change is not one: raft-rs uses it to leave a joint config.)
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.store.set_applied_index(index);
                    self.unwritten.applied(index, 0, now);
                }
                EntryType::EntryNormal => self.apply_proposal(&entry, now),
                EntryType::EntryConfChange => {
                    let result = ConfChange::parse_from_bytes(&entry.data)
                        .map(|cc| self.raw.apply_conf_change(&cc));
                    self.apply_conf_change(index, &entry.context, result)?;
                    self.unwritten.applied(index, 0, now);
                }
                EntryType::EntryConfChangeV2 => {
                    let result = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map(|cc| self.raw.apply_conf_change(&cc));
                    self.apply_conf_change(index, &entry.context, result)?;
                    self.unwritten.applied(index, 0, now);
                }
            }
        }
        Ok(())
    }

    /// Persist the configuration a conf change entry produced. A change raft
    /// refuses is refused identically on every manager, so it is skipped, not fatal.
    fn apply_conf_change(
        &mut self,
        index: u64,
        context: &[u8],
        result: Result<raft::Result<ConfState>, protobuf::ProtobufError>,
    ) -> Result<(), RaftError> {
        let outcome = match result {
            Ok(Ok(cs)) => {
                tracing::info!(index, voters = ?cs.voters, learners = ?cs.learners, "raft configuration changed");
                let id = self.raw.raft.id;
                let member = cs.voters.contains(&id) || cs.learners.contains(&id);
                self.raw.mut_store().set_conf_state(cs)?;
                if !member {
                    self.mark_removed();
                }
                Ok(())
            }
            Ok(Err(err)) => {
                tracing::error!(index, error = %err, "raft refused a configuration change; skipped");
                Err(StoreError::Invalid(format!(
                    "raft refused the membership change: {err}"
                )))
            }
            Err(err) => {
                tracing::error!(index, error = %err, "undecodable configuration change; skipped");
                Err(StoreError::Invalid(format!(
                    "undecodable membership change: {err}"
                )))
            }
        };
        self.store.set_applied_index(index);
        // Contexts are only matched on the node that proposed the change.
        if let Ok(waiter) = <[u8; 8]>::try_from(context)
            && let Some(reply) = self.conf_waiters.remove(&u64::from_be_bytes(waiter))
        {
            let _ = reply.send(outcome);
        }
        Ok(())
    }

    fn apply_proposal(&mut self, entry: &Entry, now: Instant) {
        let index = entry.index;
        let decoded = match self.own.take(index, entry.term) {
            Some(proposal) => Ok(proposal),
            None => Proposal::decode(&entry.data[..]),
        };
        let proposal = match decoded {
            Ok(p) => p,
            Err(err) => {
                // Every manager skips the same bad entry, so they stay in step.
                tracing::error!(index, error = %err, "committed raft entry is not a proposal; skipped");
                self.store.set_applied_index(index);
                self.unwritten.applied(index, 0, now);
                return;
            }
        };
        let id = proposal.id;
        let applied = self.store.apply_committed(proposal, index);
        self.unwritten
            .applied(index, applied.batch.changes.len(), now);
        if let Some(reply) = self.waiters.remove(&id) {
            let _ = reply.send(applied.into_result());
        }
    }

    fn checkpoint_if_due(&mut self) -> Result<(), RaftError> {
        let objects = self.store.read(|s| s.object_count());
        let due = self.unwritten.is_due(
            Instant::now(),
            self.written_applied,
            self.snapshot_interval,
            objects,
        );
        if !due {
            return Ok(());
        }
        let started = Instant::now();
        let written = self.checkpoint();
        self.work.add(Phase::Checkpoint, started.elapsed());
        written
    }

    /// Write the whole applied state and its index in one batch.
    fn checkpoint(&mut self) -> Result<(), RaftError> {
        if self.unwritten.take().is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let (applied, pieces) = self
            .store
            .read(|s| (s.applied_index, snapshot::encode(s, STATE_PIECE_BYTES)));
        self.raw.mut_store().disk().write_state(applied, &pieces)?;
        let bytes = pieces.iter().map(Vec::len).sum::<usize>();
        self.space.checkpoint_written(bytes as u64);
        tracing::debug!(
            applied,
            pieces = pieces.len(),
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "state checkpoint written"
        );
        self.written_applied = applied;
        self.dirty = true;
        Ok(())
    }

    /// Every `snapshot_interval` entries, snapshot at the durable applied index
    /// and drop the log behind it. Only a flushed state may replace the log.
    fn maybe_compact(&mut self) -> Result<(), RaftError> {
        let storage = self.raw.store();
        if self.durable_applied < storage.snapshot_index() + self.snapshot_interval.max(1) {
            return Ok(());
        }
        let index = self.durable_applied;
        self.raw.mut_store().compact(index)?;
        self.dirty = true;
        tracing::debug!(index, "raft log compacted behind a snapshot");
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RaftError> {
        let written = self.written_applied;
        self.raw.store().disk().flush()?;
        self.space.flushed();
        self.durable_applied = written;
        self.dirty = false;
        Ok(())
    }

    fn flush_if_dirty(&mut self) -> Result<(), RaftError> {
        if self.dirty {
            self.flush()?;
            self.maybe_compact()?;
        }
        Ok(())
    }

    /// Publish leadership and status; fail waiters once this node leads no more.
    ///
    /// The store is told it leads only once it has applied an entry of its own
    /// term (the new leader's no-op): everything committed under earlier
    /// leaders is applied by then, so leader-only components never start on a
    /// state that is still catching up (and never, say, found a second
    /// cluster object before the log's one is replayed).
    pub(crate) fn publish(&mut self) {
        let raft = &self.raw.raft;
        let is_leader = raft.state == StateRole::Leader;
        let applied_own_term = raft
            .raft_log
            .term(raft.raft_log.applied)
            .is_ok_and(|term| term == raft.term);
        let leadership = Leadership {
            is_leader: is_leader && applied_own_term,
            term: raft.term,
            leader_id: raft.leader_id,
        };
        let status = RaftStatus {
            id: raft.id,
            term: raft.term,
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            leader_id: raft.leader_id,
        };
        let newly_leading = leadership.is_leader && !self.leadership.borrow().is_leader;
        if newly_leading {
            // A follower mostly hears the old leader: start the new leader's
            // view of who is reachable afresh (each voter answers within a
            // heartbeat).
            self.heard.clear();
        }
        self.leadership.send_if_modified(|current| {
            let changed = *current != leadership;
            if changed {
                tracing::info!(
                    term = leadership.term,
                    leader_id = leadership.leader_id,
                    is_leader = leadership.is_leader,
                    "raft leadership changed"
                );
                *current = leadership;
            }
            changed
        });
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
        if !is_leader && !self.waiters.is_empty() {
            for (_, reply) in self.waiters.drain() {
                let _ = reply.send(Err(StoreError::LeadershipLost));
            }
        }
        if !is_leader {
            for (_, reply) in self.conf_waiters.drain() {
                let _ = reply.send(Err(StoreError::LeadershipLost));
            }
        }
        // A new term drops the read requests raft-rs had in flight: their
        // callers ask again (confirmed reads stay valid and keep waiting).
        if self.read_term != raft.term {
            self.read_term = raft.term;
            for (_, reply) in self.reads.drain() {
                let _ = reply.send(Err(StoreError::NoQuorum));
            }
        }
    }

    /// A storage failure stops the node: continuing could acknowledge writes
    /// that are not durable, and sled, once a write failed, fails every later
    /// one. Nothing is written on the way out; the manager watching
    /// [`super::RaftHandle::failed`] exits so that a supervisor restarts it on
    /// the log, which holds every acknowledged write.
    fn fail(&mut self, err: RaftError) {
        tracing::error!(error = %err, "raft node stopped on a storage error; the manager exits");
        let message = self.space.describe_failure(&err);
        self.proposals.close();
        while let Ok(req) = self.proposals.try_recv() {
            let _ = req.reply.send(Err(StoreError::Storage(message.clone())));
        }
        for (_, reply) in self.waiters.drain() {
            let _ = reply.send(Err(StoreError::Storage(message.clone())));
        }
        for (_, reply) in self.conf_waiters.drain() {
            let _ = reply.send(Err(StoreError::Storage(message.clone())));
        }
        self.reads.clear();
        self.confirmed_reads.clear();
        let _ = self.leadership.send(Leadership::default());
        self.failure.send_replace(Some(message));
    }

    fn stop(&mut self) {
        self.proposals.close();
        while let Ok(req) = self.proposals.try_recv() {
            let _ = req.reply.send(Err(StoreError::Stopped));
        }
        for (_, reply) in self.waiters.drain() {
            let _ = reply.send(Err(StoreError::Stopped));
        }
        for (_, reply) in self.conf_waiters.drain() {
            let _ = reply.send(Err(StoreError::Stopped));
        }
        self.reads.clear();
        self.confirmed_reads.clear();
        // Not needed for safety (the log has every entry), but it spares the
        // next start a replay.
        if let Err(err) = self.checkpoint() {
            tracing::error!(error = %err, "writing the state tree on shutdown failed");
        }
        if let Err(err) = self.raw.store().disk().flush() {
            tracing::error!(error = %err, "flushing the raft store on shutdown failed");
        }
        let _ = self.leadership.send(Leadership::default());
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
