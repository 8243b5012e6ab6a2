//! Fixtures the manager's unit tests share: objects built with the defaults
//! the tests rely on, a scripted Raft peer, and waiting with a deadline. A
//! module's own harness stays in its `tests`; what several test modules
//! build the same way is here, once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::raft::eraftpb::{ConfState, Message, MessageType, Snapshot};
use protobuf::Message as _;
use shoal_proto::control_server::Control;
use shoal_proto::{
    Cluster, ContainerSpec, CreateServiceRequest, Meta, Node, NodeAvailability, NodeDescription,
    NodeSpec, NodeState, NodeStatus, Resources, Service, ServiceMode, ServiceSpec, StoreSnapshot,
    Task, TaskSpec, TaskState, TaskStatus,
};
use tokio::sync::mpsc;

use crate::config::ManagerConfig;
use crate::control::ControlService;
use crate::orchestrator::task::new_task;
use crate::raft::Transport;
use crate::store::{Action, Object, Store};

const GIB: i64 = 1 << 30;

/// How long a test waits for what should happen soon on a loaded machine.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// Service `id` (named `svc-{id}`) with `replicas` and an empty task
/// template, at version 1 and spec version 1.
pub(crate) fn service(id: &str, replicas: u64) -> Service {
    Service {
        id: id.into(),
        meta: Some(Meta {
            version: 1,
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            name: format!("svc-{id}"),
            replicas,
            task: Some(TaskSpec::default().into()),
            ..Default::default()
        }),
        spec_version: 1,
        ..Default::default()
    }
}

/// [`service`] in global mode.
pub(crate) fn global(id: &str) -> Service {
    let mut s = service(id, 0);
    s.spec.as_mut().unwrap().mode = ServiceMode::Global as i32;
    s
}

/// Node `id` in `state` and `availability`, at version 1.
pub(crate) fn node(id: &str, state: NodeState, availability: NodeAvailability) -> Node {
    Node {
        id: id.into(),
        meta: Some(Meta {
            version: 1,
            ..Default::default()
        }),
        spec: Some(NodeSpec {
            availability: availability as i32,
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The nodes by id.
pub(crate) fn nodes(list: Vec<Node>) -> HashMap<String, Node> {
    list.into_iter().map(|n| (n.id.clone(), n)).collect()
}

/// A task of `service` in `slot`, with the given states, created at `order`.
pub(crate) fn task(
    service: &Service,
    slot: u64,
    node: &str,
    desired: TaskState,
    observed: TaskState,
    order: i64,
) -> Task {
    let mut t = new_task(service, slot, node, desired, order);
    t.id = format!("t{slot}-{node}-{order}");
    t.meta = Some(Meta {
        version: 1,
        created_at: order,
        updated_at: order,
    });
    t.status.as_mut().unwrap().state = observed as i32;
    t
}

/// A READY node `id` (hostname `host-{id}`) with 4 CPUs, 1 GiB and `labels`,
/// as the scheduler sees it.
pub(crate) fn ready_node(id: &str, labels: &[(&str, &str)]) -> Node {
    Node {
        id: id.into(),
        meta: Some(Meta::default()),
        spec: Some(NodeSpec {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: format!("host-{id}"),
            resources: Some(Resources {
                nano_cpus: 4_000_000_000,
                memory_bytes: GIB,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: NodeState::Ready as i32,
            ..Default::default()
        }),
        manager_status: None,
    }
}

/// Task `id` of `service`, PENDING and desired RUNNING, with an empty spec.
pub(crate) fn pending(id: &str, service: &str) -> Task {
    Task {
        id: id.into(),
        meta: Some(Meta::default()),
        service_id: service.into(),
        spec_version: 1,
        desired_state: TaskState::Running as i32,
        spec: Some(TaskSpec::default().into()),
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Task `id` of service `svc` on `node`, in `state`, desired `desired`.
pub(crate) fn svc_task(id: &str, node: &str, state: TaskState, desired: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        node_id: node.into(),
        desired_state: desired as i32,
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The state a task's status reports (NEW without one).
pub(crate) fn task_state(task: &Task) -> TaskState {
    task.status.as_ref().map(|s| s.state()).unwrap_or_default()
}

/// Service spec `name`: `replicas` of `image`.
pub(crate) fn spec(name: &str, image: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas,
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// Create a service through the control API, as the CLI does.
pub(crate) async fn create_service(
    api: &ControlService,
    spec: ServiceSpec,
) -> Result<Service, tonic::Status> {
    api.create_service(tonic::Request::new(CreateServiceRequest {
        spec: Some(spec),
    }))
    .await
    .map(|r| r.into_inner().service.unwrap())
}

/// Service `id` named `name`, with nothing else set, as a store object.
pub(crate) fn service_object(id: &str, name: &str) -> Object {
    Object::Service(Box::new(Service {
        id: id.into(),
        spec: Some(ServiceSpec {
            name: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }))
}

/// Task `id` of `service` on `node`, with nothing else set, as a store object.
pub(crate) fn task_object(id: &str, service: &str, node: &str) -> Object {
    Object::Task(Box::new(Task {
        id: id.into(),
        service_id: service.into(),
        node_id: node.into(),
        ..Default::default()
    }))
}

/// A store in memory whose cluster object is `cluster`.
pub(crate) async fn store_with_cluster(cluster: Cluster) -> Store {
    let store = Store::in_memory();
    store
        .propose(vec![Action::Create(Object::Cluster(cluster.into()))])
        .await
        .unwrap();
    store
}

/// The config of a manager in `dir` whose Raft ticks every `tick_ms`.
pub(crate) fn raft_config(dir: &Path, tick_ms: u64) -> ManagerConfig {
    let mut config = ManagerConfig::new(dir);
    config.raft.tick_interval = Duration::from_millis(tick_ms);
    config
}

/// Poll `cond` until it holds, or fail naming `what` after [`DEADLINE`].
pub(crate) async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// A scripted peer (Raft id 2), played by the test: the node's messages reach
// it through a [`Capture`] transport, its own go in by `RaftHandle::step`.

/// Hands every outgoing message to the test.
pub(crate) struct Capture(pub(crate) Mutex<mpsc::UnboundedSender<Message>>);

impl Transport for Capture {
    fn send(&self, messages: Vec<Message>) {
        let tx = self.0.lock().unwrap();
        for msg in messages {
            let _ = tx.send(msg);
        }
    }
}

pub(crate) fn message(msg_type: MessageType, term: u64) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(msg_type);
    msg.from = 2;
    msg.to = 1;
    msg.term = term;
    msg
}

pub(crate) async fn next_of(
    rx: &mut mpsc::UnboundedReceiver<Message>,
    want: MessageType,
) -> Message {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(msg)) if msg.get_msg_type() == want => return msg,
            Ok(Some(_)) => {}
            _ => panic!("no {want:?} from the node"),
        }
    }
}

/// Peer 2, leader of term 5, sends node 1 a snapshot at index 100 holding
/// one service and two tasks, with voters {1, 2}.
pub(crate) fn leader_snapshot() -> Vec<u8> {
    let data = StoreSnapshot {
        services: vec![Service {
            id: "s9".into(),
            spec: Some(ServiceSpec {
                name: "db".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        tasks: (0..2)
            .map(|i| Task {
                id: format!("t9-{i}"),
                service_id: "s9".into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut snap = Snapshot::default();
    snap.set_data(prost::Message::encode_to_vec(&data).into());
    let meta = snap.mut_metadata();
    meta.index = 100;
    meta.term = 5;
    let mut cs = ConfState::default();
    cs.set_voters(vec![1, 2]);
    meta.set_conf_state(cs);
    let mut msg = message(MessageType::MsgSnapshot, 5);
    msg.set_snapshot(snap);
    msg.write_to_bytes().unwrap()
}

/// A container spec that mounts secrets `secrets` (each at a target named by
/// its id) and configs `configs` (each at `/ID`).
pub fn container_with_files(secrets: &[&str], configs: &[&str]) -> ContainerSpec {
    ContainerSpec {
        secrets: secrets
            .iter()
            .map(|id| shoal_proto::SecretReference {
                secret_id: id.to_string(),
                target: id.to_string(),
                ..Default::default()
            })
            .collect(),
        configs: configs
            .iter()
            .map(|id| shoal_proto::ConfigReference {
                config_id: id.to_string(),
                target: format!("/{id}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
