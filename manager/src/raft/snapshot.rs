//! Raft snapshot data: the whole applied state as one `StoreSnapshot` message.
//!
//! A leader sends it to a follower whose next entry was compacted away; the
//! follower rebuilds its tables from it. The transport streams it to the
//! follower in 1 MiB chunks (`transport::requests`), so its size is bounded
//! by memory, not by gRPC's message size limit.

use prost::Message as _;
use shoal_proto::StoreSnapshot;

use super::RaftError;
use crate::store::{MemState, Object};

/// Copy every object of `state` into a snapshot message.
pub(crate) fn capture(state: &MemState) -> StoreSnapshot {
    let mut snap = StoreSnapshot::default();
    for object in state.objects() {
        match object {
            Object::Node(n) => snap.nodes.push(n),
            Object::Service(s) => snap.services.push(s),
            Object::Task(t) => snap.tasks.push(t),
            Object::Cluster(c) => snap.clusters.push(c),
            Object::Secret(s) => snap.secrets.push(s),
            Object::Config(c) => snap.configs.push(c),
        }
    }
    snap
}

pub(crate) fn encode(snap: &StoreSnapshot) -> Vec<u8> {
    snap.encode_to_vec()
}

/// The tables a snapshot taken at Raft `index` describes.
pub(crate) fn restore(data: &[u8], index: u64) -> Result<MemState, RaftError> {
    let snap = StoreSnapshot::decode(data)
        .map_err(|e| RaftError::Corrupt(format!("snapshot at index {index}: {e}")))?;
    let mut state = MemState::default();
    let objects = (snap.nodes.into_iter().map(Object::Node))
        .chain(snap.services.into_iter().map(Object::Service))
        .chain(snap.tasks.into_iter().map(Object::Task))
        .chain(snap.clusters.into_iter().map(Object::Cluster))
        .chain(snap.secrets.into_iter().map(Object::Secret))
        .chain(snap.configs.into_iter().map(Object::Config));
    for object in objects {
        state.put(object);
    }
    state.applied_index = index;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use shoal_proto::{Service, ServiceSpec, Task};

    use super::*;

    #[test]
    fn a_snapshot_restores_every_object_and_index() {
        let mut state = MemState::default();
        state.put(Object::Service(Service {
            id: "s1".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        for i in 0..3 {
            state.put(Object::Task(Task {
                id: format!("t{i}"),
                service_id: "s1".into(),
                node_id: "n1".into(),
                ..Default::default()
            }));
        }
        let bytes = encode(&capture(&state));
        let restored = restore(&bytes, 42).unwrap();
        assert_eq!(restored.applied_index, 42);
        assert_eq!(restored.find_service("web").unwrap().id, "s1");
        assert_eq!(restored.tasks_of_service("s1").count(), 3);
        assert_eq!(restored.tasks_on_node("n1").count(), 3);
    }

    #[test]
    fn secrets_and_configs_survive_a_snapshot() {
        let mut state = MemState::default();
        state.put(Object::Secret(shoal_proto::Secret {
            id: "x1".into(),
            spec: Some(shoal_proto::SecretSpec {
                name: "db".into(),
                ..Default::default()
            }),
            data_sealed: vec![1, 2, 3],
            ..Default::default()
        }));
        state.put(Object::Config(shoal_proto::Config {
            id: "g1".into(),
            spec: Some(shoal_proto::ConfigSpec {
                name: "app".into(),
                data: b"x".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let restored = restore(&encode(&capture(&state)), 3).unwrap();
        assert_eq!(
            restored.find_secret("db").unwrap().data_sealed,
            vec![1, 2, 3]
        );
        assert_eq!(restored.find_config("app").unwrap().id, "g1");
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        let err = restore(&[0xff, 0xff, 0xff], 7).unwrap_err();
        assert!(err.to_string().contains("snapshot at index 7"), "{err}");
    }
}
