//! Agent sessions: the in-memory registry (who is connected, when each last
//! heartbeated, which nodes are still awaited after a leader change) and the
//! `Session` RPC that registers a node and opens its session stream.
//!
//! A node has at most one session: a new one replaces the old, whose streams
//! end. The registry is plain data over `Instant`s so expiry is tested without
//! clocks or IO; the monitor drives it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{
    Node, NodeAvailability, NodeDescription, NodeRole, NodeSpec, NodeState, NodeStatus,
    SessionMessage, SessionRequest,
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::budget::DownBudget;
use super::{Inner, Running, lock, store_status};
use crate::auth::Caller;
use crate::store::{Action, Object, Store, StoreError};
use shoal_proto::tls::Role;

/// Sessions opened at once, at most: each is a store write of its node in
/// flight, and an agent cannot heartbeat before its write commits.
pub(super) const MAX_OPENING: usize = 256;

/// The manager admits new sessions while its runtime lags less than this or
/// half a heartbeat period, whichever is longer ([`super::lag`]).
const ADMIT_LAG: Duration = Duration::from_millis(500);

/// How long a refused agent is told to wait, at least and at most.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Whether a new session may open now: `opening` sessions are being
/// registered and the runtime lagged `lag` of late. The refusal says why and
/// when to come back: twice the lag (a saturated manager needs about as long
/// again to catch up), within [`RETRY_MIN`]..[`RETRY_MAX`].
pub(super) fn admit(opening: usize, lag: Duration, period: Duration) -> Result<(), Status> {
    let limit = ADMIT_LAG.max(period / 2);
    let why = if opening >= MAX_OPENING {
        format!("{opening} nodes are opening sessions")
    } else if lag > limit {
        format!("it answers {} ms late", lag.as_millis())
    } else {
        return Ok(());
    };
    let retry = (lag * 2).clamp(RETRY_MIN, RETRY_MAX);
    let mut status = Status::resource_exhausted(format!(
        "the manager is busy admitting nodes ({why}); retry in {} ms",
        retry.as_millis()
    ));
    if let Ok(value) = retry.as_millis().to_string().parse() {
        status
            .metadata_mut()
            .insert(shoal_proto::RETRY_AFTER_MS_METADATA, value);
    }
    Err(status)
}

/// What the `Session` RPC returns: the session's first message, then
/// nothing until the session ends.
pub(crate) type SessionStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<SessionMessage, Status>> + Send>>;

/// The error that makes an agent open a new session.
pub(super) fn unknown(session_id: &str) -> Status {
    Status::not_found(format!(
        "session {session_id} is unknown; open a new session"
    ))
}

struct Entry {
    node_id: String,
    last_heartbeat: Instant,
    /// Opened, but the node is still being written READY: not expired, since
    /// the agent cannot heartbeat before it has the session's first message.
    opening: bool,
    /// Cancelled when the session ends; its streams watch it.
    token: CancellationToken,
}

/// A session (or an awaited node) whose grace period ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Expired {
    pub node_id: String,
    /// None for a node that never opened a session with this leader.
    pub session_id: Option<String>,
    /// How long the node has been silent.
    pub silent_for: Duration,
}

/// What one expiry scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Expiry {
    /// Removed and ended: their nodes are to be marked DOWN.
    pub expired: Vec<Expired>,
    /// Silent past the grace period but kept, the DOWN budget being spent
    /// ([`super::budget`]); a heartbeat still saves them.
    pub held: usize,
}

/// Live sessions, by session id and by node.
#[derive(Default)]
pub(super) struct Sessions {
    by_id: HashMap<String, Entry>,
    by_node: HashMap<String, String>,
    /// Nodes the store says READY that have not connected to this leader yet,
    /// with the time the wait started.
    /// Nodes expected to connect: when they started to be awaited, and
    /// until when they may.
    awaiting: HashMap<String, (Instant, Instant)>,
    budget: DownBudget,
    /// Entries still `opening`: their node's READY write is in flight.
    opening: usize,
    /// Sessions refused for now since the monitor last asked.
    turned_away: u64,
}

impl Sessions {
    /// Register a session for `node_id`, ending the node's previous one (whose
    /// id is returned). It does not expire until [`Sessions::established`].
    pub fn open(
        &mut self,
        node_id: &str,
        session_id: &str,
        token: CancellationToken,
        now: Instant,
    ) -> Option<String> {
        self.awaiting.remove(node_id);
        let previous = self
            .by_node
            .insert(node_id.to_string(), session_id.to_string());
        if let Some(old) = previous.as_ref().and_then(|id| self.by_id.remove(id)) {
            old.token.cancel();
            if old.opening {
                self.opening -= 1;
            }
        }
        self.opening += 1;
        self.by_id.insert(
            session_id.to_string(),
            Entry {
                node_id: node_id.to_string(),
                last_heartbeat: now,
                opening: true,
                token,
            },
        );
        previous
    }

    /// The node of `session_id` is registered and the agent gets the session:
    /// its grace period starts now. False when the session was replaced.
    pub fn established(&mut self, session_id: &str, now: Instant) -> bool {
        match self.by_id.get_mut(session_id) {
            Some(entry) => {
                if entry.opening {
                    entry.opening = false;
                    self.opening -= 1;
                }
                entry.last_heartbeat = now;
                true
            }
            None => false,
        }
    }

    /// End `session_id` if it is still live.
    pub fn close(&mut self, session_id: &str) {
        if let Some(entry) = self.by_id.remove(session_id) {
            entry.token.cancel();
            if entry.opening {
                self.opening -= 1;
            }
            if self
                .by_node
                .get(&entry.node_id)
                .is_some_and(|s| s == session_id)
            {
                self.by_node.remove(&entry.node_id);
            }
        }
    }

    /// Record a heartbeat. False when the session is unknown or expired.
    pub fn heartbeat(&mut self, session_id: &str, now: Instant) -> bool {
        match self.by_id.get_mut(session_id) {
            Some(entry) => {
                entry.last_heartbeat = now;
                true
            }
            None => false,
        }
    }

    /// The node and the end-of-session token of a live session.
    pub fn lookup(&self, session_id: &str) -> Option<(String, CancellationToken)> {
        self.by_id
            .get(session_id)
            .map(|e| (e.node_id.clone(), e.token.clone()))
    }

    pub fn has_node(&self, node_id: &str) -> bool {
        self.by_node.contains_key(node_id)
    }

    /// Sessions refused for now since the last call.
    pub fn take_turned_away(&mut self) -> u64 {
        std::mem::take(&mut self.turned_away)
    }

    /// Sessions whose node is still being written READY.
    pub fn opening(&self) -> usize {
        self.opening
    }

    /// `node_id` asked for a session that this manager refused for now: it
    /// is alive. Its live session counts that as a heartbeat, and an awaited
    /// node gets `window` more to connect.
    pub fn turned_away(&mut self, node_id: &str, now: Instant, window: Duration) {
        self.turned_away += 1;
        if let Some(entry) = self
            .by_node
            .get(node_id)
            .and_then(|id| self.by_id.get_mut(id))
        {
            entry.last_heartbeat = entry.last_heartbeat.max(now);
        }
        if let Some((_, until)) = self.awaiting.get_mut(node_id) {
            *until = (*until).max(now + window);
        }
    }

    /// Give each of `nodes` until `now + window` to connect.
    pub fn await_nodes(
        &mut self,
        nodes: impl IntoIterator<Item = String>,
        now: Instant,
        window: Duration,
    ) {
        for node in nodes {
            if !self.by_node.contains_key(&node) {
                self.awaiting.insert(node, (now, now + window));
            }
        }
    }

    /// Remove (and end) the sessions silent for longer than `grace` and the
    /// awaited nodes that did not connect within their window, as many as
    /// the DOWN budget admits, the longest silent first.
    pub fn expire(&mut self, now: Instant, grace: Duration) -> Expiry {
        let mut candidates: Vec<Expired> = self
            .by_id
            .iter()
            .filter(|(_, e)| !e.opening && now.saturating_duration_since(e.last_heartbeat) > grace)
            .map(|(id, e)| Expired {
                node_id: e.node_id.clone(),
                session_id: Some(id.clone()),
                silent_for: now.saturating_duration_since(e.last_heartbeat),
            })
            .collect();
        candidates.extend(
            self.awaiting
                .iter()
                .filter(|(_, (_, until))| now > *until)
                .map(|(node, (since, _))| Expired {
                    node_id: node.clone(),
                    session_id: None,
                    silent_for: now.saturating_duration_since(*since),
                }),
        );
        if candidates.is_empty() {
            return Expiry::default();
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.silent_for));
        let silences: Vec<Duration> = candidates.iter().map(|c| c.silent_for).collect();
        let nodes = self.by_id.len() + self.awaiting.len();
        let admitted = self.budget.admit(now, grace, nodes, &silences);
        let held = candidates.len() - admitted;
        candidates.truncate(admitted);
        for e in &candidates {
            match &e.session_id {
                Some(session_id) => self.close(session_id),
                None => {
                    self.awaiting.remove(&e.node_id);
                }
            }
        }
        Expiry {
            expired: candidates,
            held,
        }
    }

    /// End every session (the dispatcher stops).
    pub fn clear(&mut self) {
        for (_, entry) in self.by_id.drain() {
            entry.token.cancel();
        }
        self.by_node.clear();
        self.awaiting.clear();
        self.budget = DownBudget::default();
        self.opening = 0;
    }
}

/// The `Session` RPC: register the node as READY and open its session stream.
pub(super) async fn open(
    inner: &Arc<Inner>,
    running: &Running,
    caller: &Caller,
    request: SessionRequest,
    addr: String,
) -> Result<SessionStream, Status> {
    // A node is who its certificate says; only in-process callers (tests) name
    // themselves or get a fresh id.
    let (node_id, role) = match caller {
        Caller::Peer(peer) => {
            if !request.node_id.is_empty() && request.node_id != peer.node_id {
                return Err(Status::permission_denied(format!(
                    "node_id: this certificate belongs to node {}, not {}",
                    peer.node_id, request.node_id
                )));
            }
            let role = match peer.role {
                Role::Manager => NodeRole::Manager,
                Role::Worker => NodeRole::Worker,
                Role::Admin => {
                    return Err(Status::permission_denied(
                        "an admin certificate cannot open a node session",
                    ));
                }
            };
            (peer.node_id.clone(), role)
        }
        Caller::Local if request.node_id.is_empty() => {
            (shoal_proto::ids::new_id(), NodeRole::Worker)
        }
        Caller::Local => (request.node_id, NodeRole::Worker),
    };
    // Admission: the nodes already served keep their heartbeats answered
    // while the manager is behind; the others come back later. A refused call
    // still proves its node alive.
    {
        let now = Instant::now();
        let lag = inner.lag.recent(now, super::lag::ADMISSION_WINDOW);
        let mut sessions = lock(&inner.sessions);
        if let Err(refused) = admit(sessions.opening(), lag, inner.config.heartbeat_period) {
            sessions.turned_away(&node_id, now, inner.config.grace_period());
            tracing::debug!(node.id = %node_id, reason = %refused.message(), "session refused for now");
            return Err(refused);
        }
    }
    let session_id = shoal_proto::ids::new_id();
    let token = running.token.child_token();
    // The session is registered before the node is written READY, so the
    // monitor (which reads the node, then checks for a session) can never
    // mark a node DOWN over a session that is being opened.
    let replaced = lock(&inner.sessions).open(&node_id, &session_id, token.clone(), Instant::now());
    if let Some(old) = replaced {
        tracing::info!(node.id = %node_id, session.id = %old, "session replaced by a new one");
    }
    let description = request.description.unwrap_or_default();
    if let Err(err) = register_node(&inner.store, &node_id, role, description, addr).await {
        lock(&inner.sessions).close(&session_id);
        tracing::warn!(node.id = %node_id, error = %err, "could not register node");
        return Err(store_status(err));
    }
    // Under a join burst the write above can take longer than the grace
    // period, and the agent cannot heartbeat before it has the first message:
    // the session's clock starts when that message goes out.
    if !lock(&inner.sessions).established(&session_id, Instant::now()) {
        return Err(Status::aborted(
            "a newer session of this node replaced this one while it opened",
        ));
    }
    tracing::info!(node.id = %node_id, session.id = %session_id, "session opened");

    let first = SessionMessage {
        session_id: session_id.clone(),
        node_id: node_id.clone(),
        heartbeat_period_ms: inner.config.heartbeat_period.as_millis() as i64,
        heartbeat_grace_ms: inner.config.grace_period().as_millis() as i64,
        managers: inner.store.read(|s| {
            crate::raft::membership::members(s)
                .into_iter()
                .map(|m| m.addr)
                .collect()
        }),
    };
    // The first message, then nothing until the session ends: a stream, not
    // a channel and a task (a channel allocates room for 32 messages). The
    // agent dropping the stream does not end the session: its heartbeats (or
    // their absence) still decide.
    let end = async move {
        token.cancelled().await;
        tracing::info!(node.id = %node_id, session.id = %session_id, "session closed");
        None
    };
    Ok(Box::pin(
        futures::stream::once(async move { Some(Ok(first)) })
            .chain(futures::stream::once(end))
            .filter_map(|m| m),
    ))
}

/// Create or update the node: its description, READY status and address. A
/// new node starts as an active worker labelled with its engine labels.
async fn register_node(
    store: &Store,
    node_id: &str,
    role: NodeRole,
    description: NodeDescription,
    addr: String,
) -> Result<(), StoreError> {
    let status = NodeStatus {
        state: NodeState::Ready as i32,
        message: String::new(),
        addr,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let action = match store.read(|s| s.node(node_id).cloned()) {
            Some(mut node) => {
                node.description = Some(description.clone());
                node.status = Some(status.clone());
                Action::Update(Object::Node(node.into()))
            }
            None => Action::Create(Object::Node(Box::new(Node {
                id: node_id.to_string(),
                meta: None,
                spec: Some(NodeSpec {
                    labels: description.engine_labels.clone(),
                    role: role as i32,
                    availability: NodeAvailability::Active as i32,
                }),
                description: Some(description.clone()),
                status: Some(status.clone()),
                manager_status: None,
            }))),
        };
        match store.propose(vec![action]).await {
            Ok(_) => return Ok(()),
            // Someone wrote the node between our read and our write (the
            // monitor, the control API): read it again.
            Err(
                StoreError::Conflict { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. },
            ) if attempt < 5 => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
