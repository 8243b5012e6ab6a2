//! Unit tests of the snapshot encoding (`snapshot.rs`).

use shoal_proto::{Service, ServiceSpec, Task};

use super::*;

#[test]
fn a_snapshot_restores_every_object_and_index() {
    let mut state = MemState::default();
    state.put(Object::Service(Box::new(Service {
        id: "s1".into(),
        spec: Some(ServiceSpec {
            name: "web".into(),
            ..Default::default()
        }),
        ..Default::default()
    })));
    for i in 0..3 {
        state.put(Object::Task(Box::new(Task {
            id: format!("t{i}"),
            service_id: "s1".into(),
            node_id: "n1".into(),
            ..Default::default()
        })));
    }
    let whole = encode(&state, usize::MAX);
    assert_eq!(whole.len(), 1);
    let restored = restore([&whole[0][..]], 42).unwrap();
    assert_eq!(restored.applied_index, 42);
    assert_eq!(restored.find_service("web").unwrap().id, "s1");
    assert_eq!(restored.tasks_of_service("s1").count(), 3);
    assert_eq!(restored.tasks_on_node("n1").count(), 3);
}

#[test]
fn restored_tasks_share_their_services_spec_when_it_is_theirs() {
    let spec = |image: &str| shoal_proto::TaskSpec::for_image(image).into();
    let mut state = MemState::default();
    state.put(Object::Service(Box::new(Service {
        id: "s1".into(),
        spec: Some(ServiceSpec {
            name: "web".into(),
            task: Some(spec("web:2")),
            ..Default::default()
        }),
        ..Default::default()
    })));
    for (id, image) in [("t1", "web:2"), ("t2", "web:2"), ("old", "web:1")] {
        state.put(Object::Task(Box::new(Task {
            id: id.into(),
            service_id: "s1".into(),
            spec: Some(spec(image)),
            ..Default::default()
        })));
    }
    let restored = restore([&encode(&state, usize::MAX)[0][..]], 7).unwrap();
    let service = restored.service("s1").unwrap();
    let of = |id: &str| restored.task(id).unwrap().spec.as_ref().unwrap();
    let shared = service.spec.as_ref().unwrap().task.as_ref().unwrap();
    assert!(of("t1").same(shared) && of("t2").same(shared));
    assert!(!of("old").same(shared));
    assert_eq!(of("old").image(), "web:1");
}

#[test]
fn secrets_and_configs_survive_a_snapshot() {
    let mut state = MemState::default();
    state.put(Object::Secret(Box::new(shoal_proto::Secret {
        id: "x1".into(),
        spec: Some(shoal_proto::SecretSpec {
            name: "db".into(),
            ..Default::default()
        }),
        data_sealed: vec![1, 2, 3],
        ..Default::default()
    })));
    state.put(Object::Config(Box::new(shoal_proto::Config {
        id: "g1".into(),
        spec: Some(shoal_proto::ConfigSpec {
            name: "app".into(),
            data: b"x".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    })));
    let restored = restore([&encode(&state, usize::MAX)[0][..]], 3).unwrap();
    assert_eq!(
        restored.find_secret("db").unwrap().data_sealed,
        vec![1, 2, 3]
    );
    assert_eq!(restored.find_config("app").unwrap().id, "g1");
}

#[test]
fn pieces_are_cut_between_objects_and_restore_the_whole_state() {
    let mut state = MemState::default();
    for i in 0..500 {
        state.put(Object::Task(Box::new(Task {
            id: format!("t{i:03}"),
            service_id: "s1".into(),
            node_id: format!("n{}", i % 7),
            ..Default::default()
        })));
    }
    let whole = encode(&state, usize::MAX).remove(0);
    let pieces = encode(&state, 1024);
    assert!(pieces.len() > 5, "{} pieces", pieces.len());
    assert_eq!(pieces.concat().len(), whole.len(), "nothing lost or added");
    for piece in &pieces {
        assert!(piece.len() <= 1024, "a piece of {} bytes", piece.len());
        StoreSnapshot::decode(&piece[..]).expect("each piece decodes alone");
    }
    let restored = restore(pieces.iter().map(|p| &p[..]), 9).unwrap();
    assert_eq!(restored.task_count(), 500);
    assert_eq!(restored.tasks_on_node("n3").count(), 71);
    assert_eq!(
        restore([&whole[..]], 9).unwrap().tasks().count(),
        restored.tasks().count()
    );
}

#[test]
fn an_object_larger_than_a_piece_gets_a_piece_of_its_own() {
    let mut state = MemState::default();
    for (id, size) in [("a", 10), ("b", 5000), ("c", 10)] {
        state.put(Object::Config(Box::new(shoal_proto::Config {
            id: id.into(),
            spec: Some(shoal_proto::ConfigSpec {
                name: id.into(),
                data: vec![7; size],
                ..Default::default()
            }),
            ..Default::default()
        })));
    }
    let pieces = encode(&state, 1000);
    let large: Vec<_> = pieces.iter().filter(|p| p.len() > 1000).collect();
    assert_eq!(large.len(), 1, "{pieces:?}");
    let alone = StoreSnapshot::decode(&large[0][..]).unwrap();
    assert_eq!(
        alone.configs.len(),
        1,
        "the large config is alone in its piece"
    );
    let restored = restore(pieces.iter().map(|p| &p[..]), 1).unwrap();
    assert_eq!(
        restored
            .find_config("b")
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .data
            .len(),
        5000
    );
}

#[test]
fn garbage_is_reported_as_corrupt() {
    let err = restore([&[0xff, 0xff, 0xff][..]], 7).unwrap_err();
    assert!(err.to_string().contains("snapshot at index 7"), "{err}");
}
