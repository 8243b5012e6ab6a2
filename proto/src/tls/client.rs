//! gRPC channels to a manager over TLS.
//!
//! tonic's own TLS settings cannot take a custom rustls config, so the channel
//! dials TCP and runs the handshake itself (tokio-rustls) in a connector. That
//! lets a renewed certificate be used at the next reconnect, lets a
//! joining node fetch the CA certificate before it can verify anything, and
//! lets a client learn why a manager refused its certificate
//! ([`connect_watched`], [`super::refusal`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::refusal::RefusalWatch;
use super::{Credentials, SERVER_NAME, SharedCredentials, TlsError};

/// How a channel authenticates.
#[derive(Clone, Debug)]
pub enum ClientTls {
    /// A node's certificate, re-read at every (re)connect.
    Node(SharedCredentials),
    /// A fixed config: the pinned-CA join step, or the CA fetch.
    Fixed(Arc<ClientConfig>),
}

impl ClientTls {
    fn config(&self) -> Arc<ClientConfig> {
        match self {
            ClientTls::Node(creds) => creds.client_config(),
            ClientTls::Fixed(config) => config.clone(),
        }
    }
}

/// Client config that presents `creds`' certificate and trusts only its CA.
pub fn client_config(creds: &Credentials) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(creds.roots()?)
        .with_client_auth_cert(creds.cert_chain()?, creds.private_key()?)
        .map_err(|e| TlsError::Certificate(format!("unusable client certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client config without a certificate that trusts only `ca_pem`: a joining
/// node, once it has pinned the CA, sends its token and CSR this way.
pub fn pinned_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(super::creds::roots(ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client config that accepts any server certificate. Used for exactly one
/// call: fetching the root CA certificate, which the caller then checks
/// against the digest in its join token before trusting it.
pub fn ca_fetch_config() -> Arc<ClientConfig> {
    let provider = super::provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A host that does not complete the TCP handshake within this time is down
/// or cut off. The TLS handshake that follows has the rest of the endpoint's
/// connect timeout: a busy manager accepts TCP at once (the kernel does) but
/// may take a while to answer the handshake, and abandoning it then only
/// repeats the work.
const TCP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A channel to `endpoint` (an `http://HOST:PORT` endpoint; the scheme is
/// ignored, the connection is always TLS). Connects now.
pub async fn connect(
    endpoint: Endpoint,
    tls: ClientTls,
) -> Result<Channel, tonic::transport::Error> {
    connect_watched(endpoint, tls, RefusalWatch::default()).await
}

/// [`connect`], keeping in `watch` the first TLS error of its connections
/// (a manager's refusal of our certificate arrives after the handshake,
/// where a failed call no longer shows it).
pub async fn connect_watched(
    endpoint: Endpoint,
    tls: ClientTls,
    watch: RefusalWatch,
) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_with_connector(connector(tls, watch)).await
}

/// Like [`connect`], but connects at the first call.
pub fn connect_lazy(endpoint: Endpoint, tls: ClientTls) -> Channel {
    endpoint.connect_with_connector_lazy(connector(tls, RefusalWatch::default()))
}

fn connector(
    tls: ClientTls,
    watch: RefusalWatch,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<Watched>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<Watched>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let config = tls.config();
        let watch = watch.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "address has no port")
            })?;
            let tcp = tokio::time::timeout(
                TCP_CONNECT_TIMEOUT,
                TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TCP connect timed out after {TCP_CONNECT_TIMEOUT:?}"),
                )
            })??;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .inspect_err(|e| watch.record(e))?;
            Ok(TokioIo::new(Watched { stream, watch }))
        }
    })
}

/// A client TLS stream whose read and write errors go to a [`RefusalWatch`].
pub struct Watched {
    stream: TlsStream<TcpStream>,
    watch: RefusalWatch,
}

impl Watched {
    fn seen<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &poll {
            self.watch.record(e);
        }
        poll
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.seen(poll)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.seen(poll)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.seen(poll)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.seen(poll)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts any server certificate, but still checks that the server holds
/// the certificate's key (the handshake signature).
#[derive(Debug)]
struct UnverifiedServer(Arc<CryptoProvider>);

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
