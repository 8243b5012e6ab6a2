//! Raft between managers over gRPC: the [`Transport`] that carries a node's
//! messages to its peers on their mutual-TLS `Raft` service.
//!
//! Each peer gets a queue and a task that keeps one `StreamRaftMessage`
//! stream open to it, sending what is queued in batches. A broken stream is
//! reopened with exponential backoff; meanwhile the peer is reported
//! unreachable (so raft-rs stops pipelining to it) and its messages are
//! dropped, which Raft tolerates. Snapshots are reported delivered once handed
//! to a stream on an established connection, or failed when dropped. Peer addresses come from the
//! replicated `managers` table ([`super::membership`]), or from seeds given by
//! the join before this manager's store has caught up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use shoal_proto::raft_client::RaftClient;
use shoal_proto::tls::SharedCredentials;
use shoal_proto::tls::client::{self, ClientTls};
use shoal_proto::{RaftMember, RaftMessageRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::membership;
use super::service::{PeerInbox, Transport};
use crate::store::Store;

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Messages sent in one stream item.
const MAX_BATCH: usize = 256;
/// Stream items buffered ahead of the connection.
const STREAM_BUFFER: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A stream that lived this long resets the backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message sent whole; larger ones (snapshots) go in chunks this size.
pub(super) const CHUNK_BYTES: usize = 1 << 20;
/// Bytes of small messages sharing one request.
const BATCH_BYTES: usize = 2 << 20;

/// The gRPC transport of a manager. Clone freely.
#[derive(Clone)]
pub struct GrpcTransport {
    inner: Arc<Inner>,
}

struct Inner {
    /// The manager's runtime: `send` is called on the Raft thread, whose own
    /// runtime must not run the network.
    runtime: tokio::runtime::Handle,
    creds: OnceLock<SharedCredentials>,
    /// Set once the node has started.
    wiring: OnceLock<(Store, PeerInbox)>,
    /// Addresses known before the store has the managers table.
    seeds: Mutex<HashMap<u64, String>>,
    peers: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    shutdown: CancellationToken,
}

impl GrpcTransport {
    /// A transport whose peer tasks run on the current runtime until `shutdown`.
    pub fn new(shutdown: CancellationToken) -> GrpcTransport {
        GrpcTransport {
            inner: Arc::new(Inner {
                runtime: tokio::runtime::Handle::current(),
                creds: OnceLock::new(),
                wiring: OnceLock::new(),
                seeds: Mutex::new(HashMap::new()),
                peers: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// The certificate to present to peers (a new cluster has none until its
    /// CA exists; it has no peers then either).
    pub fn set_credentials(&self, creds: SharedCredentials) {
        let _ = self.inner.creds.set(creds);
    }

    /// Where addresses are looked up and transport reports go.
    pub fn attach(&self, store: Store, inbox: PeerInbox) {
        let _ = self.inner.wiring.set((store, inbox));
    }

    /// Addresses to use until the managers table has them.
    pub fn seed(&self, members: &[RaftMember]) {
        let mut seeds = self.inner.seeds.lock().expect("seeds lock");
        for m in members {
            seeds.insert(m.raft_id, m.addr.clone());
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut peers = self.inner.peers.lock().expect("peers lock");
        for msg in messages {
            let to = msg.to;
            if super::faults::blocked(to) {
                self.inner.dropped(to, &msg);
                continue;
            }
            let queue = peers.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                self.inner
                    .runtime
                    .spawn(run_peer(self.inner.clone(), to, rx));
                tx
            });
            if let Err(e) = queue.try_send(msg) {
                let msg = match e {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                };
                tracing::debug!(raft.peer = to, "raft peer queue full; message dropped");
                self.inner.dropped(to, &msg);
            }
        }
    }
}

impl Inner {
    fn addr_of(&self, id: u64) -> Option<String> {
        let (store, _) = self.wiring.get()?;
        store
            .read(|s| membership::addr_of(s, id))
            .or_else(|| self.seeds.lock().expect("seeds lock").get(&id).cloned())
    }

    fn report_unreachable(&self, id: u64) {
        if let Some((_, inbox)) = self.wiring.get() {
            let _ = inbox.report_unreachable(id);
        }
    }

    fn report_removed(&self, id: u64) {
        if let Some((_, inbox)) = self.wiring.get() {
            let _ = inbox.removed_by_peer(id);
        }
    }

    fn report_snapshot(&self, id: u64, delivered: bool) {
        if let Some((_, inbox)) = self.wiring.get() {
            let _ = inbox.report_snapshot(id, delivered);
        }
    }

    /// A message that will never reach `to`.
    fn dropped(&self, to: u64, msg: &Message) {
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.report_snapshot(to, false);
        }
    }

    /// Connect now (not lazily), so that a peer that is down is found before
    /// anything is handed to a stream that could never carry it.
    async fn client(&self, addr: &str) -> Result<RaftClient<Channel>, String> {
        let creds = self
            .creds
            .get()
            .ok_or_else(|| "this manager has no certificate yet".to_string())?;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("address {addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = client::connect(endpoint, ClientTls::Node(creds.clone()))
            .await
            .map_err(|e| root_cause(&e))?;
        Ok(RaftClient::new(channel))
    }
}

/// Why a stream to a peer ended.
enum Ended {
    /// Shutdown, or the transport is gone: stop for good.
    Stop,
    /// The stream broke: reconnect after a backoff.
    Broken(String),
}

/// One peer: keep a stream open and feed it from `queue`.
async fn run_peer(inner: Arc<Inner>, id: u64, mut queue: mpsc::Receiver<Message>) {
    let mut backoff = BACKOFF_MIN;
    let mut last_error = String::new();
    loop {
        let why = match inner.addr_of(id) {
            None => format!("no address is known for raft id {id}"),
            Some(addr) => match inner.client(&addr).await {
                Err(e) => format!("{addr}: {e}"),
                Ok(client) => {
                    let opened = Instant::now();
                    match stream_to(&inner, id, client, &mut queue).await {
                        Ended::Stop => return,
                        Ended::Broken(why) => {
                            if opened.elapsed() >= HEALTHY_STREAM {
                                backoff = BACKOFF_MIN;
                            }
                            format!("{addr}: {why}")
                        }
                    }
                }
            },
        };
        // Log each distinct failure once, not every retry.
        if why != last_error {
            tracing::warn!(raft.peer = id, error = %why, "raft peer unreachable; retrying");
            last_error = why;
        }
        inner.report_unreachable(id);
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = &mut pause => break,
                msg = queue.recv() => match msg {
                    None => return,
                    Some(msg) => inner.dropped(id, &msg),
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream_to(
    inner: &Inner,
    id: u64,
    mut client: RaftClient<Channel>,
    queue: &mut mpsc::Receiver<Message>,
) -> Ended {
    let (tx, rx) = mpsc::channel::<RaftMessageRequest>(STREAM_BUFFER);
    let call = client.stream_raft_message(ReceiverStream::new(rx));
    tokio::pin!(call);
    let broken = |result: Result<tonic::Response<_>, tonic::Status>| match result {
        Ok(_) => Ended::Broken("the peer closed the stream".into()),
        Err(status) => {
            if status.code() == tonic::Code::PermissionDenied
                && status.message().contains(crate::auth::REMOVED_NODE)
            {
                inner.report_removed(id);
            }
            Ended::Broken(format!("{}: {}", status.code(), status.message()))
        }
    };
    loop {
        let first = tokio::select! {
            _ = inner.shutdown.cancelled() => return Ended::Stop,
            result = &mut call => return broken(result),
            msg = queue.recv() => match msg {
                None => return Ended::Stop,
                Some(msg) => msg,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        let snapshots = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count();
        let mut encoded = Vec::with_capacity(batch.len());
        for msg in &batch {
            match msg.write_to_bytes() {
                Ok(bytes) => encoded.push(bytes),
                Err(e) => {
                    tracing::error!(raft.peer = id, error = %e, "cannot encode a raft message")
                }
            }
        }
        let delay = super::faults::delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for request in requests(encoded) {
            tokio::select! {
                sent = tx.send(request) => if sent.is_err() {
                    for msg in &batch { inner.dropped(id, msg); }
                    return Ended::Broken("the stream closed".into());
                },
                result = &mut call => {
                    for msg in &batch { inner.dropped(id, msg); }
                    return broken(result);
                }
            }
        }
        for _ in 0..snapshots {
            inner.report_snapshot(id, true);
        }
    }
}

/// The stream items for a batch of encoded messages, in order: several
/// small messages share a request up to [`BATCH_BYTES`]; one larger than
/// [`CHUNK_BYTES`] (a snapshot) goes alone, in chunks, so no request nears
/// gRPC's message size limit whatever the size of the state.
pub(super) fn requests(encoded: Vec<Vec<u8>>) -> Vec<RaftMessageRequest> {
    let mut out = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut current_bytes = 0;
    let flush = |current: &mut Vec<Vec<u8>>, out: &mut Vec<RaftMessageRequest>| {
        if current.is_empty() {
            return;
        }
        let mut messages = std::mem::take(current).into_iter();
        let message = messages.next().unwrap_or_default();
        out.push(RaftMessageRequest {
            message,
            batch: messages.collect(),
            ..Default::default()
        });
    };
    for bytes in encoded {
        if bytes.len() > CHUNK_BYTES {
            flush(&mut current, &mut out);
            current_bytes = 0;
            let pieces = bytes.len().div_ceil(CHUNK_BYTES);
            for (i, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
                out.push(RaftMessageRequest {
                    chunk: piece.to_vec(),
                    last_chunk: i + 1 == pieces,
                    ..Default::default()
                });
            }
            continue;
        }
        if current_bytes + bytes.len() > BATCH_BYTES {
            flush(&mut current, &mut out);
            current_bytes = 0;
        }
        current_bytes += bytes.len();
        current.push(bytes);
    }
    flush(&mut current, &mut out);
    out
}

/// The innermost cause (a refused connection, a bad certificate) where the
/// outer layers only say "transport error".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
