//! Fixtures the manager's unit tests share: objects built with the defaults
//! the tests rely on, once. A module's own harness stays in its `tests`; what
//! several test modules build the same way is here.

use std::collections::HashMap;

use shoal_proto::{
    Meta, Node, NodeAvailability, NodeDescription, NodeSpec, NodeState, NodeStatus, Resources,
    Service, ServiceMode, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus,
};

use crate::orchestrator::task::new_task;

const GIB: i64 = 1 << 30;

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
