//! Which secrets a node needs given its tasks, and what each message carries.

use shoal_proto::{Config, ConfigSpec, Secret, SecretSpec, TaskSpec, TaskStatus};

use super::*;
use crate::store::Object;
use crate::test_fixtures::container_with_files;

fn task(
    id: &str,
    secrets: &[&str],
    configs: &[&str],
    state: TaskState,
    desired: TaskState,
) -> Task {
    Task {
        id: id.into(),
        node_id: "n1".into(),
        desired_state: desired as i32,
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        spec: Some(
            TaskSpec {
                container: Some(container_with_files(secrets, configs)),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

use TaskState::*;

#[test]
fn a_node_needs_what_its_live_tasks_use() {
    let tasks = [
        task("a", &["x1", "x2"], &["g1"], Running, Running),
        task("b", &["x2", "x3"], &[], Assigned, Running),
        // Done with its files: failed, or on its way out.
        task("c", &["x4"], &["g2"], Failed, Running),
        task("d", &["x5"], &[], Running, Shutdown),
        task("e", &[], &[], Running, Running),
    ];
    let needs = needed(&tasks);
    assert_eq!(needs.secrets, ids(&["x1", "x2", "x3"]));
    assert_eq!(needs.configs, ids(&["g1"]));
    assert!(needed(&[]).is_empty());
}

#[test]
fn each_delta_sends_what_became_needed_and_drops_what_no_longer_is() {
    let mut d = Delivered::default();
    d.reset(&[
        task("a", &["x1"], &["g1"], Running, Running),
        task("b", &["x1", "x2"], &[], Assigned, Running),
    ]);
    let first = d.delta();
    assert_eq!(first.add.secrets, ids(&["x1", "x2"]));
    assert_eq!(first.add.configs, ids(&["g1"]));
    assert!(first.remove.is_empty());
    assert!(!d.is_dirty() && d.delta().is_empty());

    // b fails: x2 is no longer used, x1 still is (by a).
    d.track(&task("b", &["x1", "x2"], &[], Failed, Running));
    let delta = d.delta();
    assert!(delta.add.is_empty());
    assert_eq!(delta.remove.secrets, ids(&["x2"]));

    // A status report that changes nothing: nothing to send.
    d.track(&task("a", &["x1"], &["g1"], Running, Running));
    assert!(d.delta().is_empty());

    // A new task uses x2 again; a goes away.
    d.track(&task("c", &["x2"], &[], Assigned, Running));
    d.forget("a");
    let delta = d.delta();
    assert_eq!(delta.add.secrets, ids(&["x2"]));
    assert_eq!(delta.remove.secrets, ids(&["x1"]));
    assert_eq!(delta.remove.configs, ids(&["g1"]));

    // Added and dropped between two messages: never sent at all.
    d.track(&task("d", &["x9"], &[], Assigned, Running));
    d.forget("d");
    assert!(d.delta().is_empty());

    // What the agent holds is what its tasks need.
    let now = [
        task("a", &["x1"], &["g1"], Running, Running),
        task("b", &["x1", "x2"], &[], Failed, Running),
        task("c", &["x2"], &[], Assigned, Running),
    ];
    assert_eq!(*d.held(), needed(&now[1..]));

    // A COMPLETE message starts over: everything used is sent again.
    d.reset(&[task("c", &["x2"], &[], Running, Running)]);
    assert_eq!(d.delta().add.secrets, ids(&["x2"]));
}

#[test]
fn attach_opens_secrets_and_skips_the_missing() {
    let key = DataKey::generate();
    let mut state = MemState::default();
    state.put(Object::Secret(Box::new(Secret {
        id: "x1".into(),
        spec: Some(SecretSpec {
            name: "db".into(),
            ..Default::default()
        }),
        data_sealed: key.seal(b"hunter2"),
        ..Default::default()
    })));
    state.put(Object::Config(Box::new(Config {
        id: "g1".into(),
        spec: Some(ConfigSpec {
            name: "app".into(),
            data: b"port=80".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    })));
    let delta = Delta {
        add: Needs {
            secrets: ids(&["x1", "gone"]),
            configs: ids(&["g1"]),
        },
        remove: Needs {
            secrets: ids(&["x0"]),
            configs: BTreeSet::new(),
        },
    };
    let mut message = AssignmentsMessage::default();
    attach(&mut message, delta, &state, Some(&key), "n1");
    assert_eq!(message.secrets.len(), 1);
    assert_eq!(message.secrets[0].name, "db");
    assert_eq!(message.secrets[0].data, b"hunter2");
    assert_eq!(message.configs[0].data, b"port=80");
    assert_eq!(message.removed_secrets, vec!["x0".to_string()]);

    // Without the key nothing is sent in the clear or sealed.
    let mut message = AssignmentsMessage::default();
    let delta = Delta {
        add: Needs {
            secrets: ids(&["x1"]),
            configs: BTreeSet::new(),
        },
        ..Default::default()
    };
    attach(&mut message, delta, &state, None, "n1");
    assert!(message.secrets.is_empty());
}
