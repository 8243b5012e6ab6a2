//! The TLS side of the manager's listener: the server config and the
//! connection type tonic serves ([`super::listener`] accepts them).
//!
//! Every connection is TLS; a plaintext client fails the handshake and never
//! reaches a service. A client certificate is asked for and verified against the
//! cluster CA (expired or foreign ones fail the handshake), but it may be
//! absent: a node that is joining has none yet and may only call the CA's
//! join RPCs, which check a token instead, and such a connection is on the
//! short leash of [`super::anonymous`]. Each request carries a [`ConnInfo`]
//! with the peer's identity, read from its certificate; the services
//! authorise from that alone.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::anonymous::{Calls, Leash};
use super::{PeerIdentity, SharedCredentials, TlsError};

/// What a request knows about the connection it came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// The verified client certificate's identity; `None` for a client that
    /// presented no certificate (a node joining).
    pub peer: Option<Arc<PeerIdentity>>,
    /// The calls in flight on an anonymous connection (its leash reads them).
    pub(crate) calls: Option<Arc<Calls>>,
}

impl ConnInfo {
    /// The info of a connection from `remote_addr` whose certificate names
    /// `peer` (tests build requests with it).
    pub fn new(remote_addr: Option<SocketAddr>, peer: Option<Arc<PeerIdentity>>) -> Self {
        ConnInfo {
            remote_addr,
            peer,
            calls: None,
        }
    }

    /// The connection info of a request served by [`incoming`].
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&ConnInfo> {
        request.extensions().get::<ConnInfo>()
    }
}

/// The server config: our certificate from `creds` (swapped on renewal),
/// client certificates verified against the cluster CA but optional.
pub fn server_config(creds: &SharedCredentials) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = super::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(creds.get().roots()?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(creds.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Resolver(SharedCredentials);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

/// TLS connections accepted on `listener`, within the caps that fit this
/// process's open files limit (see [`super::listener::incoming`]).
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let limits = super::listener::ConnLimits::for_fd_limit(super::listener::fd_limit());
    super::listener::incoming(listener, config, limits)
}

/// One accepted TLS connection. It holds its place under the listener's cap
/// until it is dropped.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
    /// Set for a connection without a client certificate.
    leash: Option<Leash>,
    _permit: OwnedSemaphorePermit,
}

impl TlsConn {
    /// Whether the client presented a certificate (verified in the handshake).
    pub(crate) fn has_certificate(stream: &TlsStream<TcpStream>) -> bool {
        stream.get_ref().1.peer_certificates().is_some()
    }

    pub(crate) fn new(
        stream: TlsStream<TcpStream>,
        remote: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|der| match PeerIdentity::from_der(der) {
                Ok(identity) => Some(Arc::new(identity)),
                Err(e) => {
                    // Signed by our CA but not shaped by it: treat as no identity.
                    tracing::warn!(%remote, error = %e, "client certificate names no shoal identity");
                    None
                }
            });
        let mut info = ConnInfo::new(Some(remote), peer);
        let leash = (!Self::has_certificate(&stream)).then(|| {
            let calls = Arc::<Calls>::default();
            info.calls = Some(calls.clone());
            Leash::new(calls)
        });
        TlsConn {
            stream,
            info,
            leash,
            _permit: permit,
        }
    }
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // The leash first, so that a client that never stops sending is cut
        // at the end of its lifetime too.
        if let Some(leash) = &mut this.leash
            && leash.poll_expired(cx).is_ready()
        {
            tracing::debug!(remote = ?this.info.remote_addr, "closing a connection without a client certificate: its time is up");
            // End of file: hyper drops the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
