//! Partitions and delays for the fault test suite, injected in the Raft
//! transport.
//!
//! When the environment variable `SHOAL_RAFT_PARTITION_FILE` names a file,
//! the manager reads it every [`RELOAD`]. It drops every Raft message to or
//! from the Raft ids the file lists (whitespace-separated), in both
//! directions, as a network partition would; a word `delay=MS` holds each
//! batch it sends to a peer back that many milliseconds, as a slow link
//! would. The file may be absent (no fault). Without the variable nothing is
//! read, dropped or delayed. Only Raft traffic is affected: clients, agents
//! and write relays still get through.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

/// The variable naming the partition file.
pub const PARTITION_FILE_ENV: &str = "SHOAL_RAFT_PARTITION_FILE";
/// How often the file is read again.
const RELOAD: Duration = Duration::from_millis(50);

/// What the file asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Faults {
    blocked: HashSet<u64>,
    delay: Duration,
}

static BLOCKED: OnceLock<Option<RwLock<Faults>>> = OnceLock::new();

fn blocked_set() -> Option<&'static RwLock<Faults>> {
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
                                tracing::warn!(blocked = ?ids.blocked, delay = ?ids.delay, "raft faults changed");
                                *current = ids;
                            }
                        }
                        std::thread::sleep(RELOAD);
                    }
                })
                .ok()?;
            Some(RwLock::new(Faults::default()))
        })
        .as_ref()
}

/// Whether messages to or from `peer` are dropped now.
pub fn blocked(peer: u64) -> bool {
    blocked_set().is_some_and(|set| set.read().expect("partition lock").blocked.contains(&peer))
}

/// How long to hold each outgoing batch back (zero without a fault).
pub fn delay() -> Duration {
    blocked_set()
        .map(|set| set.read().expect("partition lock").delay)
        .unwrap_or_default()
}

fn parse(text: &str) -> Faults {
    let mut faults = Faults::default();
    for word in text.split_whitespace() {
        if let Some(ms) = word.strip_prefix("delay=") {
            if let Ok(ms) = ms.parse() {
                faults.delay = Duration::from_millis(ms);
            }
        } else if let Ok(id) = word.parse() {
            faults.blocked.insert(id);
        }
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lists_raft_ids_and_a_delay_and_ignores_the_rest() {
        assert_eq!(parse("2 3\n").blocked, HashSet::from([2, 3]));
        assert_eq!(parse(""), Faults::default());
        assert_eq!(parse("x 4").blocked, HashSet::from([4]));
        let slow = parse("delay=150 5");
        assert_eq!(slow.delay, Duration::from_millis(150));
        assert_eq!(slow.blocked, HashSet::from([5]));
    }
}
