//! The agent's configuration ([`AgentConfig`]) and the one piece of state it keeps
//! on disk: the node id the managers gave it, in `data_dir/node_id`.
//!
//! The node id must survive restarts: the agent's containers carry it as a label,
//! and adoption after a restart finds them by it.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// Name of the file under the data directory that holds the node id.
const NODE_ID_FILE: &str = "node_id";

/// How an agent is started.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    /// Managers to connect to, as `host:port` or `http://host:port`; tried in turn.
    pub managers: Vec<String>,
    /// Overrides the hostname the engine reports (`shoal agent --name`).
    pub node_name: Option<String>,
    /// Where the agent keeps its node id.
    pub data_dir: PathBuf,
    /// Labels the node registers with (`--label k=v`); they seed the node's spec labels.
    pub labels: HashMap<String, String>,
    /// The join token, needed on the first start only (`--token`).
    pub join_token: Option<String>,
}

impl AgentConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.managers.is_empty() {
            return Err(AgentError::Config(
                "managers: at least one manager address (HOST:PORT) is needed".into(),
            ));
        }
        for addr in &self.managers {
            manager_addr(addr)?;
        }
        if let Some(name) = &self.node_name
            && (name.trim().is_empty() || name.chars().any(char::is_whitespace))
        {
            return Err(AgentError::Config(format!(
                "node_name: {name:?} must be a non-empty name without spaces"
            )));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(AgentError::Config(
                "data_dir: a directory for the agent's state is needed".into(),
            ));
        }
        if let Some(key) = self.labels.keys().find(|k| k.trim().is_empty()) {
            return Err(AgentError::Config(format!(
                "labels: a label key is empty ({key:?}); use KEY=VALUE"
            )));
        }
        Ok(())
    }

    /// The manager addresses in `host:port` form.
    pub fn manager_addrs(&self) -> Result<Vec<String>, AgentError> {
        self.managers.iter().map(|a| manager_addr(a)).collect()
    }
}

/// Normalises a manager address to `host:port` (a leading `http://` is
/// tolerated; every connection is TLS whatever the scheme says).
pub fn manager_addr(addr: &str) -> Result<String, AgentError> {
    let trimmed = addr.trim();
    let bare = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    let bare = bare.trim_end_matches('/');
    if bare.contains("://") {
        return Err(AgentError::Config(format!(
            "managers: {addr:?} uses an unsupported scheme; give HOST:PORT"
        )));
    }
    let port = bare
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(bare.to_string()),
        _ => Err(AgentError::Config(format!(
            "managers: {addr:?} is not HOST:PORT (for example 10.0.0.1:4242)"
        ))),
    }
}

/// Reads the node id kept in the data directory, creating the directory if
/// needed; empty before the first session.
pub(crate) fn load_node_id(data_dir: &Path) -> Result<String, AgentError> {
    let io_err = |source| AgentError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io_err)?;
    match std::fs::read_to_string(data_dir.join(NODE_ID_FILE)) {
        Ok(id) => Ok(id.trim().to_string()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_err(e)),
    }
}

/// Stores the node id, atomically (write then rename) so that a crash never
/// leaves a half-written id that would orphan the node's containers.
pub(crate) fn store_node_id(data_dir: &Path, node_id: &str) -> Result<(), AgentError> {
    let io_err = |source| AgentError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    };
    let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{node_id}\n")).map_err(io_err)?;
    std::fs::rename(&tmp, data_dir.join(NODE_ID_FILE)).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig {
            managers: vec!["127.0.0.1:4242".into()],
            data_dir: PathBuf::from("/tmp/x"),
            ..Default::default()
        }
    }

    #[test]
    fn a_plain_config_is_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn manager_addresses_are_normalised() {
        assert_eq!(manager_addr("http://m1:4242/").unwrap(), "m1:4242");
        assert_eq!(manager_addr(" m1:4242").unwrap(), "m1:4242");
        assert_eq!(manager_addr("[::1]:4242").unwrap(), "[::1]:4242");
        for bad in ["m1", "m1:", ":4242", "m1:http", "https://m1:4242", "m1:0"] {
            let err = manager_addr(bad).unwrap_err().to_string();
            assert!(err.contains("managers"), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = config();
        c.managers.clear();
        assert!(c.validate().unwrap_err().to_string().contains("managers"));
        let mut c = config();
        c.node_name = Some("two words".into());
        assert!(c.validate().unwrap_err().to_string().contains("node_name"));
        let mut c = config();
        c.data_dir = PathBuf::new();
        assert!(c.validate().unwrap_err().to_string().contains("data_dir"));
        let mut c = config();
        c.labels.insert(" ".into(), "v".into());
        assert!(c.validate().unwrap_err().to_string().contains("labels"));
    }

    #[test]
    fn node_id_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent");
        assert_eq!(load_node_id(&data).unwrap(), "");
        store_node_id(&data, "abc").unwrap();
        assert_eq!(load_node_id(&data).unwrap(), "abc");
    }
}
