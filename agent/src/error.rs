//! The agent's error type: the failures that stop [`crate::run`], worded so that
//! the person who started the agent knows what to fix.
//!
//! Losing a manager is not among them: the session reconnects on its own and logs
//! why at warn level.

use std::path::PathBuf;

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A configuration value is wrong; the message names the field.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// Joining the cluster was refused, or the node's certificate is unusable.
    #[error("cannot join the cluster: {0}")]
    Join(String),
    /// The data directory (which keeps the node id) cannot be used.
    #[error("cannot use the data directory {}: {source} (check that it exists and is writable)", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the agent crate.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
