//! The leader's own proposals between propose and apply, kept decoded.
//!
//! The entry at a given index and term is the one proposed there (Raft's log
//! matching property), so when this node applies an entry it proposed it can
//! use the proposal it still holds instead of decoding the entry's bytes.
//! Followers decode; both reach the same state, since a proposal survives its
//! protobuf encoding unchanged.

use std::collections::BTreeMap;

use shoal_proto::Proposal;

#[derive(Default)]
pub(crate) struct OwnProposals {
    /// By log index: the term it was proposed in, and the proposal.
    by_index: BTreeMap<u64, (u64, Proposal)>,
}

impl OwnProposals {
    /// Record that `proposal` was appended at `index` in `term`. A proposal
    /// held at that index from an earlier term was truncated away: replaced.
    pub(crate) fn proposed(&mut self, index: u64, term: u64, proposal: Proposal) {
        self.by_index.insert(index, (term, proposal));
    }

    /// The proposal this node made for the entry at `index` in `term`, if it
    /// did. Those held at lower indexes are dropped: their entries were
    /// applied (or a snapshot covered them) in the meantime.
    pub(crate) fn take(&mut self, index: u64, term: u64) -> Option<Proposal> {
        while let Some((&first, _)) = self.by_index.first_key_value()
            && first < index
        {
            self.by_index.pop_first();
        }
        let (proposed_in, proposal) = self.by_index.remove(&index)?;
        (proposed_in == term).then_some(proposal)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(id: u64) -> Proposal {
        Proposal {
            id,
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_is_matched_by_index_and_term() {
        let mut own = OwnProposals::default();
        own.proposed(5, 2, proposal(50));
        own.proposed(6, 2, proposal(60));
        assert_eq!(own.take(5, 2).map(|p| p.id), Some(50));
        assert!(own.take(5, 2).is_none(), "taken once");
        assert!(
            own.take(6, 3).is_none(),
            "another leader's entry at the same index"
        );
        assert_eq!(own.len(), 0);
    }

    #[test]
    fn skipped_and_replaced_entries_are_dropped() {
        let mut own = OwnProposals::default();
        own.proposed(3, 1, proposal(30));
        own.proposed(4, 1, proposal(40));
        own.proposed(9, 1, proposal(90));
        // A snapshot covered 3 and 4; entry 7 is someone else's.
        assert!(own.take(7, 1).is_none());
        assert_eq!(own.len(), 1, "only the entry ahead is kept");
        // Truncated and proposed again at the same index in a later term.
        own.proposed(9, 2, proposal(91));
        assert_eq!(own.take(9, 2).map(|p| p.id), Some(91));
    }

    #[test]
    fn a_proposal_survives_its_encoding_so_leader_and_followers_apply_the_same() {
        use prost::Message as _;
        use shoal_proto::{
            ActionKind, ContainerSpec, StoreAction, StoreObject, TaskSpec, TaskState,
            store_object::Object,
        };

        let mut service = crate::test_fixtures::service("svc1", 3);
        let spec = service.spec.as_mut().unwrap();
        spec.labels.insert("tier".into(), "web".into());
        spec.labels.insert("empty".into(), String::new());
        spec.task = Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox:local".into(),
                    args: vec!["sleep".into(), "3600".into()],
                    env: vec!["A=1".into(), String::new()],
                    stop_grace_period_ms: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        );
        let task = crate::orchestrator::task::new_task(&service, 2, "", TaskState::Running, 7);
        let action = |object| StoreAction {
            kind: ActionKind::Update as i32,
            object: Some(StoreObject {
                object: Some(object),
            }),
            report: None,
        };
        let original = Proposal {
            id: u64::MAX,
            timestamp: -1,
            atomic: true,
            actions: vec![
                action(Object::Service(Box::new(service))),
                action(Object::Task(Box::new(task))),
                StoreAction {
                    kind: ActionKind::Report as i32,
                    object: None,
                    report: Some(shoal_proto::TaskStatusUpdate {
                        task_id: "t1".into(),
                        status: Some(shoal_proto::TaskStatus {
                            state: TaskState::Running as i32,
                            message: "started".into(),
                            ..Default::default()
                        }),
                    }),
                },
                StoreAction::default(),
            ],
        };
        let decoded = Proposal::decode(&original.encode_to_vec()[..]).unwrap();
        assert_eq!(decoded, original);
    }
}
