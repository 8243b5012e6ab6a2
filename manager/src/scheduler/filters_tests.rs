//! Unit tests of each filter and of the explanation text.

use shoal_proto::{
    NodeDescription, NodeSpec, NodeStatus, Placement, PortConfig, PublishMode,
    ResourceRequirements, Resources, TaskSpec, TaskState, TaskStatus,
};

use super::*;
use crate::scheduler::nodeinfo::Footprint;

const GIB: i64 = 1 << 30;
const MIB: i64 = 1 << 20;

fn node(state: NodeState, availability: NodeAvailability, labels: &[(&str, &str)]) -> Node {
    Node {
        id: "n1".into(),
        spec: Some(NodeSpec {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            availability: availability as i32,
            ..Default::default()
        }),
        description: Some(NodeDescription {
            hostname: "host-1".into(),
            resources: Some(Resources {
                nano_cpus: 2_000_000_000,
                memory_bytes: GIB,
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn ready() -> Node {
    node(NodeState::Ready, NodeAvailability::Active, &[])
}

fn info(n: &Node) -> NodeInfo {
    NodeInfo::new(n.id.clone(), Some(n.clone()))
}

fn task(cpus: i64, memory: i64, host_port: u32, constraints: &[&str], max_replicas: u64) -> Task {
    Task {
        id: "t1".into(),
        service_id: "svc".into(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        spec: Some(
            TaskSpec {
                resources: Some(ResourceRequirements {
                    limits: None,
                    reservations: Some(Resources {
                        nano_cpus: cpus,
                        memory_bytes: memory,
                    }),
                }),
                placement: Some(Placement {
                    constraints: constraints.iter().map(|s| s.to_string()).collect(),
                    preferences: vec![],
                    max_replicas,
                }),
                ..Default::default()
            }
            .into(),
        ),
        ports: if host_port == 0 {
            vec![]
        } else {
            vec![PortConfig {
                protocol: 0,
                target_port: 80,
                published_port: host_port,
                publish_mode: PublishMode::Host as i32,
            }]
        },
        ..Default::default()
    }
}

fn plain() -> Requirements {
    Requirements::of(&task(0, 0, 0, &[], 0)).unwrap()
}

#[test]
fn ready_filter_refuses_nodes_not_ready() {
    let req = plain();
    let n = ready();
    assert_eq!(ReadyFilter.check(&req, &n, &info(&n)), Ok(()));
    for state in [NodeState::Down, NodeState::Unknown, NodeState::Disconnected] {
        let n = node(state, NodeAvailability::Active, &[]);
        assert_eq!(
            ReadyFilter.check(&req, &n, &info(&n)),
            Err(Rejection::NotReady(state))
        );
    }
    let mut n = ready();
    n.status = None;
    assert!(ReadyFilter.check(&req, &n, &info(&n)).is_err());
}

#[test]
fn availability_filter_refuses_pause_and_drain() {
    let req = plain();
    let n = ready();
    assert_eq!(AvailabilityFilter.check(&req, &n, &info(&n)), Ok(()));
    let n = node(NodeState::Ready, NodeAvailability::Pause, &[]);
    assert_eq!(
        AvailabilityFilter.check(&req, &n, &info(&n)),
        Err(Rejection::Paused)
    );
    let n = node(NodeState::Ready, NodeAvailability::Drain, &[]);
    assert_eq!(
        AvailabilityFilter.check(&req, &n, &info(&n)),
        Err(Rejection::Drained)
    );
}

#[test]
fn constraint_filter_names_the_failing_constraint() {
    let req = Requirements::of(&task(
        0,
        0,
        0,
        &["node.hostname==host-1", "node.labels.zone == east"],
        0,
    ))
    .unwrap();
    assert!(ConstraintFilter.applies(&req));
    assert!(!ConstraintFilter.applies(&plain()));
    let east = node(
        NodeState::Ready,
        NodeAvailability::Active,
        &[("zone", "east")],
    );
    assert_eq!(ConstraintFilter.check(&req, &east, &info(&east)), Ok(()));
    let west = node(
        NodeState::Ready,
        NodeAvailability::Active,
        &[("zone", "west")],
    );
    assert_eq!(
        ConstraintFilter.check(&req, &west, &info(&west)),
        Err(Rejection::Constraint("node.labels.zone==east".into()))
    );
    let bad = task(0, 0, 0, &["node.foo==x"], 0);
    assert!(
        Requirements::of(&bad)
            .unwrap_err()
            .contains("unknown key \"node.foo\"")
    );
}

#[test]
fn resource_filter_subtracts_reservations() {
    let n = ready();
    let mut i = info(&n);
    let req = Requirements::of(&task(1_000_000_000, 512 * MIB, 0, &[], 0)).unwrap();
    assert!(ResourceFilter.applies(&req));
    assert!(!ResourceFilter.applies(&plain()));
    assert_eq!(ResourceFilter.check(&req, &n, &i), Ok(()));
    let used = task(1_000_000_000, 768 * MIB, 0, &[], 0);
    i.add(&Footprint::of(&used, true));
    assert_eq!(
        ResourceFilter.check(&req, &n, &i),
        Err(Rejection::Resources {
            cpus: None,
            memory: Some(512 * MIB)
        })
    );
    let big = Requirements::of(&task(3_000_000_000, 2 * GIB, 0, &[], 0)).unwrap();
    let err = ResourceFilter.check(&big, &n, &info(&n)).unwrap_err();
    assert_eq!(err.describe(1), "1 node lacks 3 CPUs and 2 GiB memory");
}

#[test]
fn host_port_filter_refuses_ports_in_use() {
    let n = ready();
    let mut i = info(&n);
    let req = Requirements::of(&task(0, 0, 8080, &[], 0)).unwrap();
    assert!(HostPortFilter.applies(&req));
    assert_eq!(HostPortFilter.check(&req, &n, &i), Ok(()));
    i.add(&Footprint::of(&task(0, 0, 8080, &[], 0), true));
    let err = HostPortFilter.check(&req, &n, &i).unwrap_err();
    assert_eq!(err.describe(2), "2 nodes have host port 8080/tcp in use");
    // Without a routing mesh an ingress port is bound on the task's node too.
    let mut ingress = task(0, 0, 8080, &[], 0);
    ingress.ports[0].publish_mode = PublishMode::Ingress as i32;
    assert!(HostPortFilter.applies(&Requirements::of(&ingress).unwrap()));
    // A port the engine picks (published 0) never conflicts.
    let dynamic = task(0, 0, 0, &[], 0);
    assert!(!HostPortFilter.applies(&Requirements::of(&dynamic).unwrap()));
}

#[test]
fn max_replicas_filter_counts_tasks_of_the_service() {
    let n = ready();
    let mut i = info(&n);
    let req = Requirements::of(&task(0, 0, 0, &[], 2)).unwrap();
    assert!(MaxReplicasFilter.applies(&req));
    assert!(!MaxReplicasFilter.applies(&plain()));
    let t = task(0, 0, 0, &[], 2);
    i.add(&Footprint::of(&t, true));
    assert_eq!(MaxReplicasFilter.check(&req, &n, &i), Ok(()));
    let mut b = Footprint::of(&t, true);
    i.add(&b);
    let err = MaxReplicasFilter.check(&req, &n, &i).unwrap_err();
    assert_eq!(
        err.describe(1),
        "1 node already runs the maximum of 2 tasks of this service"
    );
    // A task on its way out no longer counts.
    i.set_counted(&mut b, false);
    assert_eq!(MaxReplicasFilter.check(&req, &n, &i), Ok(()));
}

#[test]
fn pipeline_reports_the_first_rejection_and_splits_dynamic_filters() {
    let req = Requirements::of(&task(0, 2 * GIB, 0, &[], 0)).unwrap();
    let p = Pipeline::new(&req);
    assert!(p.has_dynamic());
    let drained_and_small = node(NodeState::Ready, NodeAvailability::Drain, &[]);
    let i = info(&drained_and_small);
    assert_eq!(p.check(&drained_and_small, &i), Err(Rejection::Drained));
    assert!(matches!(
        p.check_dynamic(&drained_and_small, &i),
        Err(Rejection::Resources { .. })
    ));
    let plain_req = plain();
    assert!(!Pipeline::new(&plain_req).has_dynamic());
}

#[test]
fn explanation_aggregates_and_orders_reasons() {
    let mem = Rejection::Resources {
        cpus: None,
        memory: Some(512 * MIB),
    };
    let rejections = [
        Rejection::NotReady(NodeState::Unknown),
        mem.clone(),
        Rejection::Drained,
        mem,
    ];
    assert_eq!(
        explain(&rejections, 4),
        "no suitable node (2 nodes lack 512 MiB memory; 1 node is drained; 1 node is not ready)"
    );
    assert_eq!(explain([], 0), "no suitable node (no nodes registered)");
    assert_eq!(
        explain(
            &[
                Rejection::NotReady(NodeState::Down),
                Rejection::NotReady(NodeState::Down)
            ],
            2
        ),
        "no suitable node (2 nodes are down)"
    );
    assert_eq!(
        Rejection::Constraint("node.role==manager".into()).describe(3),
        "3 nodes do not satisfy constraint node.role==manager"
    );
    assert_eq!(Rejection::Paused.describe(1), "1 node is paused");
}

#[test]
fn formats_sizes_and_cpus() {
    assert_eq!(format_bytes(512 * MIB), "512 MiB");
    assert_eq!(format_bytes(3 * GIB / 2), "1.5 GiB");
    assert_eq!(format_bytes(100), "100 B");
    assert_eq!(format_cpus(1_000_000_000), "1 CPU");
    assert_eq!(format_cpus(500_000_000), "0.5 CPUs");
    assert_eq!(format_cpus(2_000_000_000), "2 CPUs");
}
