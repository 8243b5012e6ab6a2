use shoal_proto::{Meta, Task};

use super::*;
use crate::test_fixtures::{service_object, task_object};

#[tokio::test]
async fn create_sets_version_and_indexes() {
    let store = Store::in_memory();
    let applied = store
        .propose(vec![
            Action::Create(service_object("s1", "web")),
            Action::Create(task_object("t1", "s1", "n1")),
        ])
        .await
        .unwrap();
    assert_eq!(applied.batch.changes.len(), 2);
    store.read(|s| {
        assert_eq!(s.find_service("web").unwrap().id, "s1");
        assert_eq!(
            s.service("s1").unwrap().meta.as_ref().unwrap().version,
            applied.index
        );
        assert_eq!(s.tasks_of_service("s1").count(), 1);
        assert_eq!(s.tasks_on_node("n1").count(), 1);
    });
}

#[tokio::test]
async fn stale_version_is_refused() {
    let store = Store::in_memory();
    store
        .propose(vec![Action::Create(service_object("s1", "web"))])
        .await
        .unwrap();
    let mut stale = store.read(|s| s.service("s1").unwrap().clone());
    stale.meta = Some(Meta {
        version: 999,
        ..Default::default()
    });
    let err = store
        .propose(vec![Action::Update(Object::Service(stale.into()))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn atomic_proposal_rolls_back_on_refusal() {
    let store = Store::in_memory();
    store
        .propose(vec![Action::Create(service_object("s1", "web"))])
        .await
        .unwrap();
    let err = store
        .propose(vec![
            Action::Create(task_object("t1", "s1", "n1")),
            Action::Create(service_object("s2", "web")),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    store.read(|s| {
        assert!(
            s.task("t1").is_none(),
            "the first action must be rolled back"
        );
        assert_eq!(s.tasks_on_node("n1").count(), 0);
    });
}

#[tokio::test]
async fn non_atomic_proposal_applies_what_it_can() {
    let store = Store::in_memory();
    let applied = store
        .propose_each(vec![
            Action::Create(task_object("t1", "s1", "")),
            Action::Create(task_object("t1", "s1", "")),
        ])
        .await
        .unwrap();
    assert_eq!(applied.batch.changes.len(), 1);
    assert_eq!(applied.refused.len(), 1);
    assert_eq!(applied.refused[0].0, 1);
}

#[tokio::test]
async fn reassigning_a_task_moves_it_between_node_indexes() {
    let store = Store::in_memory();
    store
        .propose(vec![Action::Create(task_object("t1", "s1", ""))])
        .await
        .unwrap();
    let mut t = store.read(|s| s.task("t1").unwrap().clone());
    t.node_id = "n2".into();
    store
        .propose(vec![Action::Update(Object::Task(t.into()))])
        .await
        .unwrap();
    store.read(|s| {
        assert_eq!(s.tasks_on_node("n2").count(), 1);
        assert_eq!(s.tasks_on_node("").count(), 0);
    });
}

/// Each listed service's and node's index entries are exactly its tasks.
fn assert_indexes_match(s: &MemState, services: &[&str], nodes: &[&str]) {
    let ids = |it: &mut dyn Iterator<Item = &Task>| {
        let mut ids: Vec<String> = it.map(|t| t.id.clone()).collect();
        ids.sort();
        ids
    };
    for id in services {
        assert_eq!(
            ids(&mut s.tasks_of_service(id)),
            ids(&mut s.tasks().filter(|t| t.service_id == *id)),
            "tasks of service {id}"
        );
    }
    for id in nodes {
        assert_eq!(
            ids(&mut s.tasks_on_node(id)),
            ids(&mut s.tasks().filter(|t| t.node_id == *id)),
            "tasks on node {id}"
        );
    }
}

#[test]
fn task_updates_keep_the_indexes_in_step() {
    let mut s = MemState::default();
    let t = |id: &str, service: &str, node: &str, version: u64| {
        let Object::Task(mut t) = task_object(id, service, node) else {
            unreachable!()
        };
        t.meta = Some(Meta {
            version,
            ..Default::default()
        });
        Object::Task(t)
    };
    let (services, nodes) = (["s1", "s2"], ["n1", "n2"]);
    assert!(s.put(t("t1", "s1", "", 1)).is_none());
    s.put(t("t2", "s1", "n1", 1));
    assert_indexes_match(&s, &services, &nodes);
    // A status report: same service, same node.
    let old = s.put(t("t2", "s1", "n1", 2)).expect("t2 was there");
    assert_eq!(old.version(), 1);
    assert_eq!(s.version_of(Kind::Task, "t2"), Some(2));
    // Assigned, moved to another node, moved to another service.
    s.put(t("t1", "s1", "n2", 2));
    assert_indexes_match(&s, &services, &nodes);
    s.put(t("t2", "s1", "n2", 3));
    assert_indexes_match(&s, &services, &nodes);
    s.put(t("t2", "s2", "n2", 4));
    assert_indexes_match(&s, &services, &nodes);
    assert_eq!(s.tasks_on_node("n1").count(), 0);
    assert_eq!(s.tasks_of_service("s2").count(), 1);
    s.remove(Kind::Task, "t2");
    assert_indexes_match(&s, &services, &nodes);
    assert_eq!(s.tasks_on_node("n2").count(), 1);
}

#[tokio::test]
async fn a_refused_atomic_proposal_puts_a_moved_task_back_in_its_indexes() {
    let store = Store::in_memory();
    store
        .propose(vec![
            Action::Create(service_object("s1", "web")),
            Action::Create(task_object("t1", "s1", "n1")),
        ])
        .await
        .unwrap();
    let mut moved = store.read(|s| s.task("t1").unwrap().clone());
    moved.node_id = "n2".into();
    let err = store
        .propose(vec![
            Action::Update(Object::Task(moved.into())),
            Action::Create(service_object("s2", "web")),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    store.read(|s| {
        assert_eq!(s.task("t1").unwrap().node_id, "n1");
        assert_indexes_match(s, &["s1"], &["n1", "n2"]);
    });
}

#[tokio::test]
async fn subscribers_see_each_committed_batch_once() {
    let store = Store::in_memory();
    store
        .propose(vec![Action::Create(service_object("s1", "a"))])
        .await
        .unwrap();
    let (count, mut rx) = store.read_and_subscribe(|s| s.services().count());
    assert_eq!(count, 1);
    store
        .propose(vec![Action::Create(service_object("s2", "b"))])
        .await
        .unwrap();
    let batch = rx.recv().await.unwrap();
    assert_eq!(batch.changes.len(), 1);
    assert_eq!(batch.changes[0].object.id(), "s2");
    assert!(rx.try_recv().is_err());
}

#[test]
fn objects_round_trip_through_their_encoding() {
    let obj = task_object("t9", "s1", "n1");
    let back = decode(&encode(&obj)).unwrap();
    assert_eq!(back.id(), "t9");
    assert_eq!(back.storage_key(), b"t/t9".to_vec());
}

#[tokio::test]
async fn queued_proposals_commit_in_queue_order() {
    let store = Store::in_memory();
    let first = store
        .queue_each(vec![Action::Create(task_object("t1", "s1", "n1"))])
        .await
        .unwrap();
    // Queued behind the create: it finds t1 even though nobody awaited it yet.
    let second = store
        .queue_each(vec![Action::Delete(task_object("t1", "s1", "n1"))])
        .await
        .unwrap();
    let (second, first) = (
        second.outcome().await.unwrap(),
        first.outcome().await.unwrap(),
    );
    assert!(first.index < second.index);
    assert!(second.refused.is_empty(), "{:?}", second.refused);
    assert!(store.read(|s| s.task("t1").is_none()));
}

#[tokio::test]
async fn a_committed_change_shares_the_tables_copy_of_each_version() {
    let store = Store::in_memory();
    let created = store
        .propose(vec![Action::Create(task_object("t1", "s1", ""))])
        .await
        .unwrap();
    let Stored::Task(first) = &created.batch.changes[0].object else {
        panic!("a task change")
    };
    let stored = store.read(|s| s.get(Kind::Task, "t1")).unwrap();
    let Stored::Task(in_table) = &stored else {
        panic!("a task")
    };
    assert!(Arc::ptr_eq(first, in_table), "one copy, not two");

    let mut moved = Task::clone(first);
    moved.node_id = "n1".into();
    let updated = store
        .propose(vec![Action::Update(Object::Task(moved.into()))])
        .await
        .unwrap();
    let change = &updated.batch.changes[0];
    let Some(Stored::Task(old)) = &change.old else {
        panic!("an update carries the value it replaced")
    };
    assert!(
        Arc::ptr_eq(old, first),
        "the replaced version is the same copy"
    );
    let Stored::Task(new) = &change.object else {
        panic!("a task change")
    };
    assert_eq!((new.node_id.as_str(), old.node_id.as_str()), ("n1", ""));
    store.read(|s| {
        let Some(Stored::Task(now)) = s.get(Kind::Task, "t1") else {
            panic!("t1 is stored")
        };
        assert!(Arc::ptr_eq(&now, new));
    });
}

#[tokio::test]
async fn a_report_changes_only_the_status_and_never_moves_it_back() {
    use shoal_proto::{TaskState, TaskStatus};
    let report = |id: &str, state: TaskState, message: &str| Action::Report {
        task_id: id.into(),
        status: TaskStatus {
            state: state as i32,
            message: message.into(),
            ..Default::default()
        },
    };
    let store = Store::in_memory();
    let created = store
        .propose(vec![Action::Create(task_object("t1", "s1", "n1"))])
        .await
        .unwrap();
    let before = store.read(|s| s.task("t1").unwrap().clone());

    let applied = store
        .propose_each(vec![
            report("t1", TaskState::Running, "started"),
            report("gone", TaskState::Running, ""),
        ])
        .await
        .unwrap();
    let change = &applied.batch.changes[0];
    assert_eq!(change.kind, ChangeKind::Reported);
    let Stored::Task(old) = change.old.as_ref().expect("the version it replaced") else {
        panic!("a task change");
    };
    assert_eq!(**old, before);
    let after = store.read(|s| s.task("t1").unwrap().clone());
    let meta = after.meta.as_ref().unwrap();
    assert_eq!(meta.version, applied.index, "versioned by its entry");
    assert_eq!(meta.created_at, before.meta.as_ref().unwrap().created_at);
    assert!(applied.index > created.index);
    assert_eq!(after.status.as_ref().unwrap().message, "started");
    assert_eq!(
        Task {
            status: None,
            meta: None,
            ..after.clone()
        },
        Task {
            status: None,
            meta: None,
            ..before
        },
        "nothing but the status and meta changed"
    );
    assert!(matches!(
        applied.refused.as_slice(),
        [(1, StoreError::NotFound { .. })]
    ));

    // A late report of an earlier state is refused; the same state again is
    // taken (it may carry a newer message).
    let applied = store
        .propose_each(vec![
            report("t1", TaskState::Starting, "late"),
            report("t1", TaskState::Running, "still up"),
        ])
        .await
        .unwrap();
    assert_eq!(
        applied.refused,
        vec![(
            0,
            StoreError::StaleReport {
                id: "t1".into(),
                current: "running",
                reported: "starting",
            }
        )]
    );
    store.read(|s| {
        let status = s.task("t1").unwrap().status.as_ref().unwrap();
        assert_eq!(
            (status.state(), status.message.as_str()),
            (TaskState::Running, "still up")
        );
    });
}

#[test]
fn a_report_survives_its_encoding() {
    let action = Action::Report {
        task_id: "t1".into(),
        status: shoal_proto::TaskStatus {
            state: shoal_proto::TaskState::Failed as i32,
            message: "exit 3".into(),
            ..Default::default()
        },
    };
    let proto = action.clone().into_proto();
    assert!(proto.object.is_none());
    let report = proto.report.expect("a report");
    assert_eq!(report.task_id, "t1");
    assert_eq!(report.status.unwrap().message, "exit 3");
    assert!(
        action.encoded_len() < 40,
        "a report costs bytes, not a task"
    );
}

#[tokio::test]
async fn a_created_task_with_its_services_spec_holds_the_services_copy() {
    let spec = |image: &str| -> shoal_proto::SharedTaskSpec {
        shoal_proto::TaskSpec::for_image(image).into()
    };
    let with_spec = |object: Object, image: &str| match object {
        Object::Service(mut s) => {
            s.spec.as_mut().unwrap().task = Some(spec(image));
            Object::Service(s)
        }
        Object::Task(mut t) => {
            t.spec = Some(spec(image));
            Object::Task(t)
        }
        other => other,
    };
    let store = Store::in_memory();
    // Equal specs, each its own copy: as a follower decodes them.
    store
        .propose(vec![
            Action::Create(with_spec(service_object("s1", "web"), "web:1")),
            Action::Create(with_spec(task_object("t1", "s1", "n1"), "web:1")),
            Action::Create(with_spec(task_object("t2", "s1", "n1"), "web:0")),
        ])
        .await
        .unwrap();
    store.read(|s| {
        let shared = s.service("s1").unwrap().spec.as_ref().unwrap().task.clone();
        let of = |id: &str| s.task(id).unwrap().spec.clone().unwrap();
        assert!(of("t1").same(shared.as_ref().unwrap()));
        assert!(!of("t2").same(shared.as_ref().unwrap()));
        assert_eq!(of("t2").image(), "web:0");
    });
}
