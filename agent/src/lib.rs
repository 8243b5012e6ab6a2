//! The shoal agent: runs the tasks a manager assigns to this node.
//!
//! - [`config`]: [`AgentConfig`] and the node id kept in the data directory.
//! - `session`: connects to a manager, registers, heartbeats, consumes the
//!   assignments stream and reconnects with backoff ([`run`] is its entry point).
//! - [`worker`]: one [`TaskController`] per assigned task; adoption of the
//!   containers found on the node after a restart.
//! - [`controller`]: drives one task through the engine, one state at a time,
//!   as the pure [`step`] function decides.
//! - [`vault`]: the secret and config values the node's tasks use, in memory only.
//! - [`reporter`]: the outbox of task statuses, sent in batches.
//! - [`stats`]: counters of what the agent did, for whoever embeds it.
//! - [`logs`]: answers the manager's log subscriptions (`service logs`) with
//!   the runtime's logs, in batches.
//! - [`runtime`]: the container-engine seam ([`runtime::Runtime`]); `fake` (feature
//!   `fake`) is an in-memory runtime for tests and benchmarks.
//! - `docker`: the Docker runtime (bollard).
//! - [`backoff`], `connect`: reconnect delays and the one place that builds a
//!   gRPC channel to a manager.

pub mod backoff;
pub mod config;
mod connect;
pub mod controller;
pub mod docker;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod identity;
pub mod logs;
pub mod reporter;
pub mod runtime;
mod session;
mod specs;
pub mod stats;
pub mod step;
pub mod vault;
pub mod worker;

#[cfg(test)]
mod testing;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use controller::TaskController;
pub use error::{AgentError, Result};
pub use reporter::Reporter;
pub use stats::AgentStats;
pub use worker::Worker;

/// Runs the agent until `shutdown` is cancelled.
///
/// Loads (or, on first start, receives from the manager and stores) the node id,
/// then keeps a session with one of `config.managers`, reconnecting as long as it
/// takes. On shutdown the agent stops talking to the managers and ends its task
/// controllers, but leaves the containers running: the next agent on this node
/// adopts them.
pub async fn run<R: runtime::Runtime>(
    config: AgentConfig,
    runtime: Arc<R>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    run_counted(config, runtime, shutdown, Arc::default()).await
}

/// [`run`], counting what the agent does into `stats`.
pub async fn run_counted<R: runtime::Runtime>(
    config: AgentConfig,
    runtime: Arc<R>,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    config.validate()?;
    let Some(creds) = identity::load_or_join(&config, &shutdown).await? else {
        return Ok(()); // shut down while waiting for a manager
    };
    let renew = tokio::spawn(identity::renew_loop(
        config.manager_addrs()?,
        config.data_dir.clone(),
        creds.clone(),
        shutdown.child_token(),
    ));
    let reporter = Arc::new(Reporter::with_stats(stats));
    let mut worker = Worker::new(runtime.clone(), reporter.clone(), shutdown.child_token());
    let result = session::run_sessions(
        &config,
        &creds,
        runtime.as_ref(),
        &mut worker,
        &reporter,
        &shutdown,
    )
    .await;
    worker.shutdown().await;
    renew.abort();
    result
}
