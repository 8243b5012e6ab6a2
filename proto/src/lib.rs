//! shoal's wire protocol and the small helpers that belong next to the schema.
//!
//! - [`v1`] (re-exported at the root): the generated prost messages and tonic
//!   clients/servers for the `Control`, `Watch`, `Dispatcher`, `Raft` and `Ca`
//!   services.
//! - [`task_spec`]: a task's spec, shared between a service, its tasks and their
//!   versions ([`SharedTaskSpec`]).
//! - [`ids`]: object ids and prefixes.
//! - [`state`]: the forward-only order of task states.
//! - [`constraint`]: placement constraints (`node.labels.zone==east`), parsed and matched.
//! - [`validate`]: spec validation and the parsers for user-facing values
//!   (durations, sizes, ports, mounts), shared by the manager and the CLI so both
//!   refuse bad input with the same words.
//! - [`tls`]: mutual TLS for every connection, node identities, the root CA
//!   and join tokens.
//! - [`rfc3339`]: log timestamps as the engine writes them and as `service logs`
//!   prints them.
//! - [`codec`]: the gRPC codec with small initial buffers the generated code uses.

pub mod codec;
pub mod constraint;
pub mod ids;
mod redact;
pub mod rfc3339;
pub mod state;
pub mod task_spec;
pub mod tls;
pub mod validate;

/// Generated code for `proto/shoal.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub use task_spec::{SharedTaskSpec, TaskSpec};
pub use v1::*;

/// gRPC metadata a follower adds when it refuses a call only the leader
/// serves (a dispatcher session, a manager join): the leader's `HOST:PORT`.
pub const LEADER_ADDR_METADATA: &str = "shoal-leader-addr";

/// gRPC metadata a manager adds when it refuses a call for now because it
/// is busy (a session while many nodes join): milliseconds to wait before
/// calling again. A client spreads its retries around it.
pub const RETRY_AFTER_MS_METADATA: &str = "shoal-retry-after-ms";

/// Current time as unix milliseconds, the unit of every timestamp in the protocol.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
