//! The manager's listeners: TLS connections on TCP ([`incoming`]) and the
//! local administrator's unix socket ([`local_incoming`]), each under a cap.
//!
//! Every connection holds a permit of one pool, and the pools together stay
//! below the process's file descriptor limit, so that no client can make
//! `accept` fail for the others:
//!
//! - *handshaking*: TCP connections in their TLS handshake (no identity yet),
//!   for at most [`HANDSHAKE_TIMEOUT`];
//! - *anonymous*: handshake done without a client certificate (nodes
//!   joining), on the short leash of [`super::anonymous`];
//! - *authenticated*: handshake done with a certificate of this cluster's CA;
//! - *local*: the unix socket, a listener of its own.
//!
//! Unauthenticated connections are first in line to be refused: their pools
//! are much smaller than the authenticated one, and filling them takes
//! nothing from nodes and administrators, who only pass through the
//! handshaking pool for the length of a handshake. A refused connection is
//! closed at once; each refusal is logged at debug level, and a warning sums
//! them up at most every [`WARN_EVERY`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::local::LocalConn;
use super::server::TlsConn;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TCP keepalive: a peer that vanished without a word (a host that lost
/// power, a cut link) is found and its connection closed after about
/// `KEEPALIVE_IDLE` plus nine probes `KEEPALIVE_INTERVAL` apart, even where
/// no HTTP/2 ping is due.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Refusals are summed up in one warning at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// File descriptors kept out of the connection pools: sled's files, Raft
/// peers, the engine socket, logs.
const RESERVED_FDS: u64 = 1024;

/// How many connections of each kind a listener serves at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub handshaking: usize,
    pub anonymous: usize,
    pub authenticated: usize,
    /// Connections on the unix socket.
    pub local: usize,
}

impl ConnLimits {
    /// Caps that fit a process allowed `fds` open files: the pools together
    /// leave [`RESERVED_FDS`] (or half of a small limit) for everything else.
    /// Unauthenticated pools are capped in absolute numbers too (a joining
    /// burst of nodes needs hundreds, not tens of thousands, and each open
    /// connection costs memory); nodes get the rest, up to 65,536.
    pub fn for_fd_limit(fds: u64) -> ConnLimits {
        let usable = if fds >= 2 * RESERVED_FDS {
            fds - RESERVED_FDS
        } else {
            fds / 2
        };
        let usable = usize::try_from(usable).unwrap_or(usize::MAX);
        let local = (usable / 32).clamp(4, 256);
        let handshaking = (usable / 16).clamp(4, 1024);
        let anonymous = (usable / 4).clamp(4, 4096);
        let authenticated = usable
            .saturating_sub(local + handshaking + anonymous)
            .clamp(4, 65_536);
        ConnLimits {
            handshaking,
            anonymous,
            authenticated,
            local,
        }
    }
}

/// Raise this process's soft limit on open files to its hard limit (the
/// default soft limit, 1,024, is far below what a manager of thousands of
/// nodes needs) and return the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // The kernel refuses more than fs.nr_open (1,048,576 by default) anyway.
    const CEILING: u64 = 1 << 20;
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(CEILING).min(CEILING);
    let soft = limit.current.unwrap_or(CEILING);
    if soft < hard {
        let raised = Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return hard,
            Err(e) => {
                tracing::warn!(error = %e, soft, hard, "could not raise the open files limit")
            }
        }
    }
    soft
}

/// This process's soft limit on open files.
pub fn fd_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// The pools of one TCP listener.
struct Pools {
    limits: ConnLimits,
    handshaking: Arc<Semaphore>,
    anonymous: Arc<Semaphore>,
    authenticated: Arc<Semaphore>,
    refusals: Refusals,
}

/// TLS connections accepted on `listener` within `limits`, for
/// `Server::serve_with_incoming*`. Handshakes run concurrently, so a slow or
/// silent client holds up no one; failed handshakes are logged at debug level
/// and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: ConnLimits,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let pools = Arc::new(Pools {
        limits,
        handshaking: Arc::new(Semaphore::new(limits.handshaking)),
        anonymous: Arc::new(Semaphore::new(limits.anonymous)),
        authenticated: Arc::new(Semaphore::new(limits.authenticated)),
        refusals: Refusals::default(),
    });
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(handshaking) = pools.handshaking.clone().try_acquire_owned() else {
                pools
                    .refusals
                    .note(remote, "in their TLS handshake", pools.limits.handshaking);
                continue;
            };
            configure(&tcp);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let pools = pools.clone();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    acceptor.accept(tcp).into_fallible(),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err((e, tcp))) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake refused");
                        linger(tcp).await;
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let (pool, kind, cap) = if TlsConn::has_certificate(&stream) {
                    (
                        &pools.authenticated,
                        "with a client certificate",
                        pools.limits.authenticated,
                    )
                } else {
                    (
                        &pools.anonymous,
                        "without a client certificate",
                        pools.limits.anonymous,
                    )
                };
                let Ok(permit) = pool.clone().try_acquire_owned() else {
                    pools.refusals.note(remote, kind, cap);
                    return;
                };
                drop(handshaking);
                let _ = tx.send(Ok(TlsConn::new(stream, remote, permit))).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Connections on the local administrator's unix socket, at most `cap` at once.
pub fn local_incoming(
    listener: UnixListener,
    cap: usize,
) -> ReceiverStream<Result<LocalConn, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let pool = Arc::new(Semaphore::new(cap));
    let refusals = Refusals::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the control socket");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = pool.clone().try_acquire_owned() else {
                refusals.note("the control socket", "on the control socket", cap);
                continue;
            };
            if tx.send(Ok(LocalConn::new(stream, permit))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// No delay for small writes, and TCP keepalive probes.
fn configure(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not enable TCP keepalive");
    }
}

/// Refused connections: each at debug level, a warning now and then.
#[derive(Default)]
struct Refusals {
    since_warning: AtomicU64,
    last_warning: std::sync::Mutex<Option<Instant>>,
}

impl Refusals {
    fn note(&self, remote: impl std::fmt::Display, kind: &str, cap: usize) {
        tracing::debug!(%remote, cap, "connection refused: too many connections {kind}");
        let refused = self.since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.since_warning.fetch_sub(refused, Ordering::Relaxed);
        tracing::warn!(
            refused,
            cap,
            "refusing connections: too many connections {kind} (more refusals are summed up every {WARN_EVERY:?})"
        );
    }
}

/// How long a connection whose handshake failed is drained before it closes.
const LINGER: Duration = Duration::from_secs(1);

/// Close a connection whose handshake failed so that the client reads the
/// alert saying why (`unknown_ca`, `certificate_expired`). With TLS 1.3 the
/// client sends its first requests right after its half of the handshake; a
/// socket closed with those bytes unread is reset, and the reset discards the
/// alert at the client before it reads it (the CLI then said only
/// "operation was canceled", now and then). So: stop writing (a FIN after the
/// alert), and read and discard what the client sends until it closes or
/// [`LINGER`] passes.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        let mut drained = 0usize;
        while let Ok(n) = tcp.read(&mut buf).await {
            drained += n;
            if n == 0 || drained > 1 << 20 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fit_the_file_descriptor_limit() {
        for fds in [64, 1024, 4096, 20_000, 1 << 20] {
            let l = ConnLimits::for_fd_limit(fds);
            let total = (l.handshaking + l.anonymous + l.authenticated + l.local) as u64;
            assert!(total < fds, "{fds}: {l:?}");
            assert!(
                l.anonymous + l.handshaking < l.authenticated,
                "unauthenticated connections must be the smaller share: {fds}: {l:?}"
            );
        }
        // This machine kind's limit: room for 10,000 nodes and a 2,000-strong
        // crowd of anonymous connections besides.
        let l = ConnLimits::for_fd_limit(20_000);
        assert!(l.authenticated > 10_000 && l.anonymous >= 2_000, "{l:?}");
    }
}
