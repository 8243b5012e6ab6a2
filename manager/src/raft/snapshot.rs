//! The applied state as `StoreSnapshot` bytes: the data of a Raft snapshot,
//! and of the checkpoints the actor writes to the state tree.
//!
//! A leader sends the snapshot to a follower whose next entry was compacted
//! away; the follower rebuilds its tables from it. The transport streams it in
//! 1 MiB chunks (`transport::requests`), so its size is bounded by memory, not
//! by gRPC's message size limit.
//!
//! Objects are encoded straight from the tables, each as one repeated field of
//! `StoreSnapshot`, so nothing is cloned, and the bytes can be cut between two
//! objects into pieces that are each a `StoreSnapshot` of their own (and whose
//! concatenation is the whole one): the state tree holds the pieces as values
//! small enough for sled to keep inline.

use prost::Message;
use shoal_proto::StoreSnapshot;

use super::RaftError;
use crate::store::{MemState, Object};

/// `StoreSnapshot` field numbers (shoal.proto).
const NODES: u32 = 1;
const SERVICES: u32 = 2;
const TASKS: u32 = 3;
const CLUSTERS: u32 = 4;
const SECRETS: u32 = 5;
const CONFIGS: u32 = 6;

/// Pieces of `StoreSnapshot` bytes, cut between objects once a piece holds
/// `piece_bytes` or more would follow (a piece holds at least one object, so
/// it may pass `piece_bytes` by at most one object).
struct Pieces {
    limit: usize,
    done: Vec<Vec<u8>>,
    open: Vec<u8>,
}

impl Pieces {
    fn push(&mut self, tag: u32, object: &impl Message) {
        let len = object.encoded_len();
        let framed =
            prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len;
        if !self.open.is_empty() && self.open.len() + framed > self.limit {
            self.done.push(std::mem::take(&mut self.open));
        }
        if self.open.is_empty() {
            self.open.reserve(framed.max(self.limit.min(1 << 20)));
        }
        prost::encoding::message::encode(tag, object, &mut self.open);
    }
}

/// The whole state, in pieces of about `piece_bytes` (`usize::MAX`: one).
pub(crate) fn encode(state: &MemState, piece_bytes: usize) -> Vec<Vec<u8>> {
    let mut pieces = Pieces {
        limit: piece_bytes,
        done: Vec::new(),
        open: Vec::new(),
    };
    state.nodes().for_each(|o| pieces.push(NODES, o));
    state.services().for_each(|o| pieces.push(SERVICES, o));
    state.tasks().for_each(|o| pieces.push(TASKS, o));
    state.clusters().for_each(|o| pieces.push(CLUSTERS, o));
    state.secrets().for_each(|o| pieces.push(SECRETS, o));
    state.configs().for_each(|o| pieces.push(CONFIGS, o));
    if !pieces.open.is_empty() {
        pieces.done.push(pieces.open);
    }
    pieces.done
}

/// The tables that `pieces` (from [`encode`], or one whole snapshot) describe,
/// applied up to Raft `index`.
pub(crate) fn restore<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    index: u64,
) -> Result<MemState, RaftError> {
    let mut state = MemState::default();
    for (n, piece) in pieces.into_iter().enumerate() {
        let snap = StoreSnapshot::decode(piece).map_err(|e| {
            RaftError::Corrupt(format!("snapshot at index {index}, piece {n}: {e}"))
        })?;
        let objects = (snap.nodes.into_iter().map(Box::new).map(Object::Node))
            .chain(snap.services.into_iter().map(Box::new).map(Object::Service))
            .chain(snap.tasks.into_iter().map(Box::new).map(Object::Task))
            .chain(snap.clusters.into_iter().map(Box::new).map(Object::Cluster))
            .chain(snap.secrets.into_iter().map(Box::new).map(Object::Secret))
            .chain(snap.configs.into_iter().map(Box::new).map(Object::Config));
        // Services come before their tasks (see `encode`), so each task
        // can take its service's spec instead of keeping the copy decoded.
        for mut object in objects {
            crate::store::share_spec(&state, &mut object);
            state.put(object);
        }
    }
    state.applied_index = index;
    Ok(state)
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
