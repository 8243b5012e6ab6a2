//! Writes sent to a follower go to the leader: [`ForwardWrites`] wraps the
//! `Control` server and, on a manager that does not lead, relays each
//! request of a writing method (and the ones only the leader can serve, such
//! as service logs, which need the agents' sessions) unchanged to the
//! leader's `Control` service, over mutual TLS with this manager's
//! certificate. Reads are answered from the local store once a ReadIndex
//! round ([`PeerInbox::read_barrier`]) has shown it holds every write
//! committed when the read arrived: any manager serves linearizable reads,
//! and one cut off from the majority answers "no quorum" within an election
//! timeout instead of stale data.
//!
//! The caller is authorised here first (the interceptor runs before); the
//! leader then sees this manager as the caller. A relayed request carries a
//! marker header, so a manager whose view of the leader is stale answers
//! "unavailable" instead of relaying it again.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use shoal_proto::tls::SharedCredentials;
use shoal_proto::tls::client::{self, ClientTls};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt as _};

use crate::grpc_status::store_status;
use crate::raft::{PeerInbox, membership};
use crate::store::Store;

/// Header marking a request relayed by another manager.
const FORWARDED: &str = "shoal-forwarded-by";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Control methods answered from the local store on any manager. Node reads
/// are not among them: only the leader hears every manager, so it alone can
/// say which managers are reachable.
const LOCAL_METHODS: &[&str] = &[
    "GetService",
    "ListServices",
    "ListTasks",
    "GetTask",
    "GetCluster",
    "GetSecret",
    "ListSecrets",
    "GetConfig",
    "ListConfigs",
];

/// Finds the leader and keeps a channel to it. Clone freely.
#[derive(Clone)]
pub struct Forwarder {
    store: Store,
    creds: SharedCredentials,
    /// This manager's raft id, to name the relay.
    own_id: u64,
    channel: Arc<Mutex<Option<(String, Channel)>>>,
    /// Where reads confirm their read index, and for how long they may try.
    reads: Option<(PeerInbox, Duration)>,
}

impl Forwarder {
    pub fn new(store: Store, creds: SharedCredentials, own_id: u64) -> Forwarder {
        Forwarder {
            store,
            creds,
            own_id,
            channel: Arc::new(Mutex::new(None)),
            reads: None,
        }
    }

    /// Serve local reads only after a ReadIndex round through `inbox`,
    /// answering "no quorum" if it takes longer than `timeout`.
    pub fn with_read_barrier(mut self, inbox: PeerInbox, timeout: Duration) -> Forwarder {
        self.reads = Some((inbox, timeout));
        self
    }

    /// A channel to the leader, or why there is none.
    fn leader(&self) -> Result<Channel, tonic::Status> {
        let leader_id = self.store.leadership().borrow().leader_id;
        if leader_id == 0 {
            return Err(tonic::Status::unavailable(
                "no leader is elected at the moment; retry shortly",
            ));
        }
        let addr = self
            .store
            .read(|s| membership::addr_of(s, leader_id))
            .ok_or_else(|| {
                tonic::Status::unavailable(format!(
                    "the address of the leader (raft id {leader_id}) is not known yet; retry shortly"
                ))
            })?;
        let mut cached = self.channel.lock().expect("channel lock");
        if let Some((known, channel)) = cached.as_ref()
            && *known == addr
        {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| tonic::Status::internal(format!("leader address {addr}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = client::connect_lazy(endpoint, ClientTls::Node(self.creds.clone()));
        *cached = Some((addr, channel.clone()));
        Ok(channel)
    }
}

/// The `Control` server `S`, relaying leader-only methods on a follower.
#[derive(Clone)]
pub struct ForwardWrites<S> {
    inner: S,
    forwarder: Forwarder,
}

impl<S> ForwardWrites<S> {
    pub fn new(inner: S, forwarder: Forwarder) -> Self {
        ForwardWrites { inner, forwarder }
    }
}

impl<S: NamedService> NamedService for ForwardWrites<S> {
    const NAME: &'static str = S::NAME;
}

/// Reads that only the leader serves; it too confirms its read index first
/// (a deposed leader must not answer them from a stale state: a join token
/// shown after it was rotated away would be refused when used).
const LEADER_READS: &[&str] = &["ListNodes", "GetNode", "GetJoinToken"];

/// The method of `path` (`/shoal.v1.Control/Method`).
fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// Whether `path` must be served by the leader.
fn leader_only(path: &str) -> bool {
    !LOCAL_METHODS.contains(&method(path))
}

impl<S> ForwardWrites<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    /// Serve a read once the read barrier confirms this manager's state is
    /// current (or at once, without a Raft node).
    fn read_after_barrier(
        &mut self,
        request: http::Request<Body>,
    ) -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
        let Some((inbox, timeout)) = self.forwarder.reads.clone() else {
            return Box::pin(self.inner.call(request));
        };
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            match inbox.read_barrier(timeout).await {
                Ok(()) => inner.call(request).await,
                Err(e) => Ok(store_status(e).into_http()),
            }
        })
    }
}

impl<S> Service<http::Request<Body>> for ForwardWrites<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // A new leader still applying its no-op serves writes itself.
        let leadership = *self.forwarder.store.leadership().borrow();
        let leads = leadership.is_leader || leadership.leader_id == self.forwarder.own_id;
        let path = request.uri().path();
        if !leader_only(path) || (leads && LEADER_READS.contains(&method(path))) {
            return self.read_after_barrier(request);
        }
        if leads {
            return Box::pin(self.inner.call(request));
        }
        if request.headers().contains_key(FORWARDED) {
            let status =
                tonic::Status::unavailable("this manager is no longer the leader; retry shortly");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let channel = match self.forwarder.leader() {
            Ok(channel) => channel,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        if let Ok(value) = self.forwarder.own_id.to_string().parse() {
            request.headers_mut().insert(FORWARDED, value);
        }
        let path = request.uri().path().to_string();
        Box::pin(async move {
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(e) => {
                    tracing::debug!(%path, error = %e, "relaying a request to the leader failed");
                    Ok(tonic::Status::unavailable(format!(
                        "cannot reach the leader to relay this request: {e}; retry shortly"
                    ))
                    .into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stay_local_and_everything_else_goes_to_the_leader() {
        assert!(!leader_only("/shoal.v1.Control/ListServices"));
        assert!(!leader_only("/shoal.v1.Control/GetCluster"));
        assert!(leader_only("/shoal.v1.Control/ListNodes"));
        assert!(leader_only("/shoal.v1.Control/CreateService"));
        assert!(leader_only("/shoal.v1.Control/RemoveNode"));
        assert!(leader_only("/shoal.v1.Control/ServiceLogs"));
        assert!(leader_only("/shoal.v1.Control/GetJoinToken"));
    }
}
