//! The shoal manager: holds the desired state of the cluster and makes it so.
//!
//! Its public surface is what the `shoal` binary and the tests need: [`run`]
//! a manager with [`Options`], [`init`] a cluster, the [`config`] types, and
//! [`FIGURES_TARGET`], the log target of the figures the benchmark reads;
//! with the feature `testing`, what other crates' tests need (`testing`). The
//! modules are private; in the order they build on each other:
//!
//! - `config`, `fasthash`, `panics`, `seal`: settings, the hasher of the
//!   id-keyed maps, caught panics, the cluster data key that encrypts the CA
//!   key and secrets at rest.
//! - `store`: the replicated tables (services, tasks, nodes, cluster),
//!   proposals and the watch channel of committed changes.
//! - `grpc_status`: how the store's errors become gRPC statuses.
//! - `auth`: who may call what, from the peer certificate.
//! - `raft`: raft-rs `RawNode` driven by one task, its log and state on sled,
//!   and the membership of the managers.
//! - `scheduler`: places PENDING tasks on nodes through a filter pipeline.
//! - `orchestrator`: turns service specs into tasks (replicas, global,
//!   restart and update policies, history).
//! - `logbroker`: `service logs`: asks the agents for their tasks' logs and
//!   streams what they publish to the client.
//! - `dispatcher`: agent sessions, heartbeats, assignments and task status.
//! - `ca`: the root CA, join tokens, certificate issuance and renewal, and
//!   this manager's own identity.
//! - `control`: the `Control` and `Watch` gRPC APIs the CLI talks to.
//! - `leader`: starts the leader-only components together and stops them
//!   together.
//! - `join`: a new manager joining a cluster (certificate, then Raft
//!   membership).
//! - `server`: [`run`] wires it all onto a TCP listener and a unix socket.
//! - `testing` (feature `testing`): an in-memory manager and unchecked writes
//!   for other crates' tests.
//!
//! A module uses only modules above it in this list (`tests/tests/layers.rs`
//! checks it, so the imports have no loop).

mod auth;
mod ca;
pub mod config;
mod control;
mod dispatcher;
mod fasthash;
mod grpc_status;
mod join;
mod leader;
mod logbroker;
mod orchestrator;
mod panics;
mod raft;
mod scheduler;
mod seal;
mod server;
mod store;
#[cfg(test)]
mod test_fixtures;

pub use ca::NewCluster;
pub use config::ManagerConfig;
pub use join::{JoinError, JoinOptions};
pub use raft::faults::PARTITION_FILE_ENV;
pub use server::{Options, Ready, ServerError, init, run};

#[cfg(feature = "testing")]
pub mod testing;

/// The log target of the lines the benchmark harness reads (scheduling and
/// orchestrator passes, raft work): `SHOAL_LOG=warn,shoal::figures=info`
/// shows only them. Module paths are not part of the interface.
pub const FIGURES_TARGET: &str = "shoal::figures";

/// The Raft id this manager's data dir holds once it has joined a cluster
/// (`None` before): a manager that has joined needs no join token again.
pub fn joined_raft_id(data_dir: &std::path::Path) -> Result<Option<u64>, String> {
    raft::membership::load_raft_id(data_dir)
}
