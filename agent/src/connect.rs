//! How the agent reaches a manager: the one place that builds a gRPC channel, so
//! that TLS (a later step) changes a single function.

use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use tonic::transport::{Channel, Endpoint};

/// Give up on a manager that does not accept the connection within this time and
/// try the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 pings find a dead connection even while no RPC is in flight.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Connects to the dispatcher of the manager at `addr`.
pub async fn dispatcher(addr: &str) -> Result<DispatcherClient<Channel>, tonic::transport::Error> {
    let channel = endpoint(addr)?.connect().await?;
    Ok(DispatcherClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}
