//! Cutting a pass's writes into proposals: at most [`WRITE_BATCH`] actions
//! and about [`WRITE_BATCH_BYTES`] of objects each, in order, each action
//! with the service that owns it (so a refused position names whom to retry).

use crate::store::Action;

/// Actions per proposal: one commit round trip creates a thousand tasks.
pub(super) const WRITE_BATCH: usize = 1000;
/// Encoded objects per proposal: keeps each Raft entry well below the 2 MiB
/// one entry may hold (sled's blob threshold), whatever the tasks' size.
pub(super) const WRITE_BATCH_BYTES: usize = 1 << 20;

/// Split `actions` into proposals of at most [`WRITE_BATCH`] actions and about
/// [`WRITE_BATCH_BYTES`] of objects, each with the services that own them.
pub(super) fn batches(actions: Vec<(String, Action)>) -> Vec<(Vec<String>, Vec<Action>)> {
    let mut out: Vec<(Vec<String>, Vec<Action>)> = Vec::new();
    let mut bytes = 0;
    for (owner, action) in actions {
        let size = action.encoded_len();
        let full = out.last().is_none_or(|(_, chunk)| {
            chunk.len() >= WRITE_BATCH || (!chunk.is_empty() && bytes + size > WRITE_BATCH_BYTES)
        });
        if full {
            out.push((Vec::new(), Vec::new()));
            bytes = 0;
        }
        let (owners, chunk) = out.last_mut().expect("pushed above");
        owners.push(owner);
        chunk.push(action);
        bytes += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use shoal_proto::{ContainerSpec, Task, TaskSpec};

    use crate::store::Object;

    use super::*;

    fn create(service: &str, id: &str, env_bytes: usize) -> (String, Action) {
        let task = Task {
            id: id.into(),
            service_id: service.into(),
            spec: Some(
                TaskSpec {
                    container: Some(ContainerSpec {
                        env: vec!["X".repeat(env_bytes)],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        };
        (
            service.to_string(),
            Action::Create(Object::Task(task.into())),
        )
    }

    #[test]
    fn batches_are_bounded_by_count_and_size_and_keep_order_and_owners() {
        let small: Vec<_> = (0..2500)
            .map(|i| create(if i % 2 == 0 { "a" } else { "b" }, &format!("t{i}"), 10))
            .collect();
        let split = batches(small);
        let sizes: Vec<_> = split.iter().map(|(_, c)| c.len()).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
        let (owners, chunk) = &split[1];
        assert_eq!(owners[0], "a");
        assert_eq!(owners[1], "b");
        let Action::Create(Object::Task(t)) = &chunk[0] else {
            panic!("a create");
        };
        assert_eq!(t.id, "t1000", "order kept");

        // Tasks of 300 KB: three fit in a megabyte; one alone always goes out.
        let big: Vec<_> = (0..7)
            .map(|i| create("c", &format!("b{i}"), 300_000))
            .chain([create("c", "huge", 3 << 20)])
            .collect();
        let sizes: Vec<_> = batches(big).iter().map(|(_, c)| c.len()).collect();
        assert_eq!(sizes, vec![3, 3, 1, 1]);
    }
}
