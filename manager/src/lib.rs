//! The shoal manager: holds the desired state of the cluster and makes it so.
//!
//! - [`auth`]: who may call what, from the peer certificate.
//! - [`ca`]: the root CA, join tokens, certificate issuance and renewal.
//! - [`store`]: the replicated tables (services, tasks, nodes, cluster), proposals
//!   and the watch channel of committed changes.
//! - [`raft`]: raft-rs `RawNode` driven by one task, its log and state on sled.
//! - [`orchestrator`]: turns service specs into tasks (replicas, global, restart
//!   and update policies, history).
//! - [`scheduler`]: places PENDING tasks on nodes through a filter pipeline.
//! - [`dispatcher`]: agent sessions, heartbeats, assignments and task status.
//! - [`control`]: the `Control` and `Watch` gRPC APIs the CLI talks to.
//! - [`logbroker`]: `service logs`: asks the agents for their tasks' logs and
//!   streams what they publish to the client.
//! - [`join`]: a new manager joining a cluster (certificate, then Raft membership).
//! - [`leader`]: starts the leader-only components together and stops them together.
//! - [`seal`]: the cluster data key that encrypts the CA key and secrets at rest.
//! - [`server`]: [`server::run`] wires it all onto a TCP listener and a unix socket.

pub mod auth;
pub mod ca;
pub mod config;
pub mod control;
pub mod dispatcher;
pub mod join;
pub mod leader;
pub mod logbroker;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod seal;
pub mod server;
pub mod store;

pub use config::ManagerConfig;
