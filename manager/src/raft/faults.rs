//! Partitions for the fault test suite, injected in the Raft transport.
//!
//! When the environment variable `SHOAL_RAFT_PARTITION_FILE` names a file,
//! the manager reads it every [`RELOAD`] and drops every Raft message to or
//! from the Raft ids it lists (whitespace-separated), in both directions,
//! as a network partition would. The file may be absent (no partition).
//! Without the variable nothing is read and nothing is dropped. Only Raft
//! traffic is cut: clients, agents and write relays still get through.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// The variable naming the partition file.
pub const PARTITION_FILE_ENV: &str = "SHOAL_RAFT_PARTITION_FILE";
/// How often the file is read again.
const RELOAD: Duration = Duration::from_millis(50);

static BLOCKED: OnceLock<Option<RwLock<HashSet<u64>>>> = OnceLock::new();

fn blocked_set() -> Option<&'static RwLock<HashSet<u64>>> {
    BLOCKED
        .get_or_init(|| {
            let path = PathBuf::from(std::env::var_os(PARTITION_FILE_ENV)?);
            tracing::warn!(file = %path.display(), "raft partitions are injected from this file (fault testing)");
            std::thread::Builder::new()
                .name("shoal-partition".into())
                .spawn(move || {
                    loop {
                        let ids = parse(&std::fs::read_to_string(&path).unwrap_or_default());
                        if let Some(set) = BLOCKED.get().and_then(Option::as_ref) {
                            let mut current = set.write().expect("partition lock");
                            if *current != ids {
                                tracing::warn!(blocked = ?ids, "raft partition changed");
                                *current = ids;
                            }
                        }
                        std::thread::sleep(RELOAD);
                    }
                })
                .ok()?;
            Some(RwLock::new(HashSet::new()))
        })
        .as_ref()
}

/// Whether messages to or from `peer` are dropped now.
pub fn blocked(peer: u64) -> bool {
    blocked_set().is_some_and(|set| set.read().expect("partition lock").contains(&peer))
}

fn parse(text: &str) -> HashSet<u64> {
    text.split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lists_raft_ids_and_ignores_the_rest() {
        assert_eq!(parse("2 3\n"), HashSet::from([2, 3]));
        assert_eq!(parse(""), HashSet::new());
        assert_eq!(parse("x 4"), HashSet::from([4]));
    }
}
