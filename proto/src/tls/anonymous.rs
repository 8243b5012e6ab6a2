//! The short leash of a connection without a client certificate.
//!
//! Such a connection is a node joining: it may call only the CA's join RPCs
//! (the services refuse everything else per request), one or two calls in a
//! row. Without a leash, a client that finishes its handshake and then sends
//! nothing would hold a file descriptor for ever, and 20,000 of them used to
//! exhaust the manager's. So an anonymous connection is closed
//!
//! - [`FIRST_CALL`] after its handshake if no call has started by then,
//! - [`AFTER_CALL`] after its last call ended (long enough for a client that
//!   makes its next call on the same channel at once, as the tests do),
//! - [`LIFETIME`] after its handshake whatever it is doing.
//!
//! A call in flight (the CA writing a new certificate through Raft) keeps the
//! connection open, up to the lifetime. Calls are counted at the HTTP level by
//! [`TrackAnonymousCalls`], not by bytes: HTTP/2 pings do not keep a silent
//! client connected, and a slow response does not cut a live call.
//!
//! Invariant: the leash only ever makes the connection read end-of-file, which
//! hyper answers by dropping it; nothing is written on its behalf.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tonic::codegen::http;

use super::server::ConnInfo;

/// An anonymous connection that has made no call by then is closed.
pub const FIRST_CALL: Duration = Duration::from_secs(5);
/// An anonymous connection is closed this long after its last call ended.
pub const AFTER_CALL: Duration = Duration::from_secs(1);
/// No anonymous connection lives longer than this, calls or not.
pub const LIFETIME: Duration = Duration::from_secs(30);

/// The calls of one anonymous connection, shared between its [`Leash`] and
/// the [`TrackAnonymousCalls`] layer (through its [`ConnInfo`]).
#[derive(Debug, Default)]
pub struct Calls {
    in_flight: AtomicUsize,
    last_end: Mutex<Option<Instant>>,
}

impl Calls {
    fn start(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }
}

/// One call in flight; its drop ends the call (the response was produced,
/// or the call was abandoned).
struct CallGuard(Arc<Calls>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The end time first: the leash never sees zero calls in flight with
        // an older end time than this call's.
        *self.0.last_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decides when an anonymous connection must close; polled by its reads.
pub(crate) struct Leash {
    calls: Arc<Calls>,
    born: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Leash {
    pub(crate) fn new(calls: Arc<Calls>) -> Self {
        let born = Instant::now();
        Leash {
            calls,
            born,
            sleep: Box::pin(tokio::time::sleep_until(born + FIRST_CALL)),
        }
    }

    /// Ready once the connection must close; otherwise the task is woken at
    /// the next moment that could change that.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let now = Instant::now();
            let end_of_life = self.born + LIFETIME;
            if now >= end_of_life {
                return Poll::Ready(());
            }
            let deadline = if self.calls.in_flight.load(Ordering::SeqCst) > 0 {
                // Look again later: the call may end at any time.
                now + AFTER_CALL
            } else {
                match *self
                    .calls
                    .last_end
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                {
                    Some(ended) => ended + AFTER_CALL,
                    None => self.born + FIRST_CALL,
                }
            };
            if deadline <= now {
                return Poll::Ready(());
            }
            let wake_at = deadline.min(end_of_life);
            if self.sleep.deadline() != wake_at {
                self.sleep.as_mut().reset(wake_at);
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => continue,
            }
        }
    }
}

/// A tower layer for the TCP server: counts the calls in flight on each
/// anonymous connection, which its [`Leash`] reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackAnonymousCalls;

impl<S> tower::Layer<S> for TrackAnonymousCalls {
    type Service = Tracked<S>;
    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner }
    }
}

/// The service [`TrackAnonymousCalls`] makes.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<ConnInfo>()
            .and_then(|info| info.calls.as_ref())
            .map(Calls::start);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(guard);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(leash: &mut Leash) -> bool {
        leash
            .poll_expired(&mut Context::from_waker(std::task::Waker::noop()))
            .is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_first_call_deadline() {
        let mut leash = Leash::new(Arc::default());
        assert!(!expired(&mut leash));
        tokio::time::advance(FIRST_CALL - Duration::from_millis(10)).await;
        assert!(!expired(&mut leash));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(expired(&mut leash));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_in_flight_holds_the_connection_until_the_lifetime() {
        let calls = Arc::<Calls>::default();
        let mut leash = Leash::new(calls.clone());
        let call = calls.start();
        tokio::time::advance(LIFETIME - Duration::from_secs(1)).await;
        assert!(!expired(&mut leash), "a live call was cut");
        drop(call);
        tokio::time::advance(AFTER_CALL - Duration::from_millis(10)).await;
        assert!(!expired(&mut leash));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(expired(&mut leash), "closed after its call");

        let calls = Arc::<Calls>::default();
        let mut leash = Leash::new(calls.clone());
        let _call = calls.start();
        tokio::time::advance(LIFETIME).await;
        assert!(expired(&mut leash), "the lifetime is a cap");
    }
}
