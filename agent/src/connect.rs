//! How the agent reaches a manager: the one place that builds a gRPC channel.
//! Every connection is mutual TLS with the node's certificate.

use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::tls::SharedCredentials;
use shoal_proto::tls::client::{self, ClientTls};
use tonic::transport::{Channel, Endpoint};

/// Give up on a manager that does not complete the TLS handshake within this
/// time and try the next one (one that does not even accept TCP is given up
/// after 2 s). Under a join burst a manager answers handshakes late; a shorter
/// limit made agents abandon handshakes the manager had half done and start
/// them again, a retry storm.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 pings find a dead connection even while no RPC is in flight. The
/// heartbeats find a lost manager within the grace period anyway; a ping
/// unanswered for 5 s (a busy manager, not a dead one) closed live sessions
/// and fed a reconnect storm at 10,000 nodes, so the timeout is the manager's.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// A full assignment set for a busy node can be large.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The endpoint for a manager at `addr` (`host:port`).
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Connects to the dispatcher of the manager at `addr` with the node's certificate.
pub async fn dispatcher(
    addr: &str,
    creds: &SharedCredentials,
) -> Result<DispatcherClient<Channel>, tonic::transport::Error> {
    let channel = client::connect(endpoint(addr)?, ClientTls::Node(creds.clone())).await?;
    Ok(DispatcherClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// The innermost cause of an error, which says what went wrong (a refused
/// connection, a bad certificate) where the outer layers only say "transport error".
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
