//! Tests of spec validation: a valid spec passes, and each kind of bad value is
//! refused with the field the user would recognise.

use super::*;
use crate::v1::{ContainerSpec, MountType, ResourceRequirements};
use crate::v1::{
    EndpointSpec, HealthConfig, Mount, Placement, PortConfig, Resources, RestartPolicy,
    SpreadPreference,
};

fn valid() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        replicas: 2,
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: "nginx:1.27".into(),
                    env: vec!["A=1".into(), "EMPTY=".into(), "BARE".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn container(spec: &mut ServiceSpec) -> &mut ContainerSpec {
    spec.task.as_mut().unwrap().container.as_mut().unwrap()
}

fn field_of(spec: &ServiceSpec) -> String {
    service_spec(spec)
        .expect_err("spec should be refused")
        .field
}

#[test]
fn a_plain_spec_is_valid() {
    assert_eq!(service_spec(&valid()), Ok(()));
}

#[test]
fn names_follow_dockers_rule() {
    for good in ["web", "a", "Web_1.x-y", "9lives"] {
        let mut s = valid();
        s.name = good.into();
        assert_eq!(service_spec(&s), Ok(()), "{good}");
    }
    for bad in ["", "-web", "we b", "web/1", "_x", &"a".repeat(64)] {
        let mut s = valid();
        s.name = bad.into();
        assert_eq!(field_of(&s), "name", "{bad:?}");
    }
}

#[test]
fn image_references() {
    for good in [
        "nginx",
        "nginx:1.27-alpine",
        "library/nginx",
        "localhost:5000/team/app:v1",
        "registry.example.com/a/b__c/d-e.f",
        "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "my-registry:5000/x",
    ] {
        assert_eq!(image_reference(good), Ok(()), "{good}");
    }
    let cases = [
        ("", "required"),
        ("nginx latest", "whitespace"),
        ("Nginx", "lowercase"),
        ("team/Nginx:1", "lowercase"),
        ("nginx:", "tag"),
        ("nginx:-x", "tag"),
        ("nginx@sha256:abc", "digest"),
        ("a//b", "component"),
        ("-nginx", "component"),
        ("nginx.", "component"),
        ("a___b", "component"),
        (":tag", "empty"),
    ];
    for (bad, word) in cases {
        let err = image_reference(bad).expect_err(bad);
        assert!(err.contains(word), "{bad:?}: {err}");
    }
    let mut s = valid();
    container(&mut s).image = "Bad Image".into();
    assert_eq!(field_of(&s), "image");
    s.task = None;
    assert_eq!(field_of(&s), "image");
}

#[test]
fn replicas_are_bounded() {
    let mut s = valid();
    s.replicas = MAX_REPLICAS;
    assert_eq!(service_spec(&s), Ok(()));
    for too_many in [MAX_REPLICAS + 1, 1_000_000_000, 1 << 31, u64::MAX] {
        s.replicas = too_many;
        let err = service_spec(&s).expect_err("over the limit");
        assert_eq!(err.field, "replicas");
        assert!(err.message.contains("100000"), "{err}");
    }
}

#[test]
fn global_mode_refuses_replicas() {
    let mut s = valid();
    s.mode = ServiceMode::Global as i32;
    assert_eq!(field_of(&s), "replicas");
    s.replicas = 0;
    assert_eq!(service_spec(&s), Ok(()));
    s.mode = 7;
    assert_eq!(field_of(&s), "mode");
}

#[test]
fn env_entries_need_a_key_and_no_nul() {
    let mut s = valid();
    container(&mut s).env.push("=1".into());
    assert_eq!(field_of(&s), "env[3]");
    let mut s = valid();
    container(&mut s).env[1] = "A=\0".into();
    assert_eq!(field_of(&s), "env[1]");
}

fn with_ports(ports: Vec<PortConfig>) -> ServiceSpec {
    let mut s = valid();
    s.endpoint = Some(EndpointSpec { ports });
    s
}

fn port(published: u32, target: u32, host: bool, udp: bool) -> PortConfig {
    PortConfig {
        published_port: published,
        target_port: target,
        publish_mode: if host {
            PublishMode::Host
        } else {
            PublishMode::Ingress
        } as i32,
        protocol: if udp {
            PortProtocol::Udp
        } else {
            PortProtocol::Tcp
        } as i32,
    }
}

#[test]
fn ports_are_checked() {
    let ok = with_ports(vec![
        port(8080, 80, false, false),
        port(8080, 80, false, true),
        port(0, 81, true, false),
        port(0, 82, true, false),
    ]);
    assert_eq!(service_spec(&ok), Ok(()));
    assert_eq!(
        field_of(&with_ports(vec![port(8080, 0, false, false)])),
        "publish[0].target"
    );
    assert_eq!(
        field_of(&with_ports(vec![port(8080, 70000, false, false)])),
        "publish[0].target"
    );
    assert_eq!(
        field_of(&with_ports(vec![port(70000, 80, false, false)])),
        "publish[0].published"
    );
    assert_eq!(
        field_of(&with_ports(vec![port(0, 80, false, false)])),
        "publish[0].published"
    );
    let dup = with_ports(vec![
        port(8080, 80, false, false),
        port(8080, 81, true, false),
    ]);
    let err = service_spec(&dup).unwrap_err();
    assert_eq!(err.field, "publish[1]");
    assert!(err.message.contains("8080/tcp"), "{err}");
}

fn with_mount(r#type: MountType, source: &str, target: &str) -> ServiceSpec {
    let mut s = valid();
    container(&mut s).mounts.push(Mount {
        r#type: r#type as i32,
        source: source.into(),
        target: target.into(),
        read_only: false,
    });
    s
}

#[test]
fn mounts_are_checked() {
    assert_eq!(
        service_spec(&with_mount(MountType::Bind, "/src", "/dst")),
        Ok(())
    );
    assert_eq!(
        service_spec(&with_mount(MountType::Volume, "", "/dst")),
        Ok(())
    );
    assert_eq!(
        service_spec(&with_mount(MountType::Volume, "data_1", "/dst")),
        Ok(())
    );
    assert_eq!(
        service_spec(&with_mount(MountType::Tmpfs, "", "/tmp")),
        Ok(())
    );
    assert_eq!(
        field_of(&with_mount(MountType::Bind, "/src", "")),
        "mount[0].target"
    );
    assert_eq!(
        field_of(&with_mount(MountType::Bind, "/src", "dst")),
        "mount[0].target"
    );
    assert_eq!(
        field_of(&with_mount(MountType::Bind, "src", "/dst")),
        "mount[0].source"
    );
    assert_eq!(
        field_of(&with_mount(MountType::Bind, "", "/dst")),
        "mount[0].source"
    );
    assert_eq!(
        field_of(&with_mount(MountType::Volume, "bad/name", "/dst")),
        "mount[0].source"
    );
    assert_eq!(
        field_of(&with_mount(MountType::Tmpfs, "x", "/tmp")),
        "mount[0].source"
    );
}

fn with_resources(limit: Resources, reserve: Resources) -> ServiceSpec {
    let mut s = valid();
    s.task.as_mut().unwrap().resources = Some(ResourceRequirements {
        limits: Some(limit),
        reservations: Some(reserve),
    });
    s
}

#[test]
fn resources_are_checked() {
    let r = |cpu, mem| Resources {
        nano_cpus: cpu,
        memory_bytes: mem,
    };
    assert_eq!(service_spec(&with_resources(r(2, 100), r(1, 100))), Ok(()));
    assert_eq!(service_spec(&with_resources(r(0, 0), r(5, 500))), Ok(()));
    assert_eq!(field_of(&with_resources(r(-1, 0), r(0, 0))), "limit-cpu");
    assert_eq!(
        field_of(&with_resources(r(0, 0), r(0, -1))),
        "reserve-memory"
    );
    assert_eq!(field_of(&with_resources(r(1, 0), r(2, 0))), "reserve-cpu");
    assert_eq!(
        field_of(&with_resources(r(0, 100), r(0, 200))),
        "reserve-memory"
    );
}

#[test]
fn policies_and_timings_are_checked() {
    let mut s = valid();
    s.task.as_mut().unwrap().restart = Some(RestartPolicy {
        delay_ms: Some(-1),
        ..Default::default()
    });
    assert_eq!(field_of(&s), "restart-delay");
    s.task.as_mut().unwrap().restart = Some(RestartPolicy {
        window_ms: -1,
        ..Default::default()
    });
    assert_eq!(field_of(&s), "restart-window");

    let mut s = valid();
    s.update = Some(UpdateConfig {
        delay_ms: -5,
        ..Default::default()
    });
    assert_eq!(field_of(&s), "update-delay");
    s.update = Some(UpdateConfig {
        monitor_ms: Some(-5),
        ..Default::default()
    });
    assert_eq!(field_of(&s), "update-monitor");
    s.update = Some(UpdateConfig {
        order: 9,
        ..Default::default()
    });
    assert_eq!(field_of(&s), "update-order");

    let mut s = valid();
    container(&mut s).stop_grace_period_ms = Some(-1);
    assert_eq!(field_of(&s), "stop-grace-period");
}

#[test]
fn healthchecks_are_checked() {
    let mut s = valid();
    let health = |test: &[&str], interval| HealthConfig {
        test: test.iter().map(|t| t.to_string()).collect(),
        interval_ms: interval,
        ..Default::default()
    };
    for good in [
        &[][..],
        &["NONE"],
        &["CMD-SHELL", "curl -f localhost"],
        &["CMD", "true"],
    ] {
        container(&mut s).healthcheck = Some(health(good, 1000));
        assert_eq!(service_spec(&s), Ok(()), "{good:?}");
    }
    container(&mut s).healthcheck = Some(health(&["CMD-SHELL", " "], 1000));
    assert_eq!(field_of(&s), "health-cmd");
    container(&mut s).healthcheck = Some(health(&["curl"], 1000));
    assert_eq!(field_of(&s), "health-cmd");
    container(&mut s).healthcheck = Some(health(&["NONE"], -1));
    assert_eq!(field_of(&s), "health-interval");
}

#[test]
fn placement_is_parsed() {
    let mut s = valid();
    s.task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.labels.zone==east".into(), "zone east".into()],
        ..Default::default()
    });
    assert_eq!(field_of(&s), "constraint[1]");

    s.task.as_mut().unwrap().placement = Some(Placement {
        constraints: vec!["node.hostname!=a".into()],
        preferences: vec![SpreadPreference {
            spread_descriptor: "node.labels.rack".into(),
        }],
        max_replicas: 1,
    });
    assert_eq!(service_spec(&s), Ok(()));
    s.task
        .as_mut()
        .unwrap()
        .placement
        .as_mut()
        .unwrap()
        .preferences[0]
        .spread_descriptor = "rack".into();
    assert_eq!(field_of(&s), "placement-pref[0]");
}

#[test]
fn label_keys_must_not_be_empty() {
    let mut s = valid();
    s.labels.insert(String::new(), "x".into());
    assert_eq!(field_of(&s), "label");
    let mut s = valid();
    container(&mut s).labels.insert(" ".into(), "x".into());
    assert_eq!(field_of(&s), "container-label");

    let mut n = NodeSpec::default();
    assert_eq!(node_spec(&n), Ok(()));
    n.labels.insert(String::new(), "x".into());
    assert_eq!(node_spec(&n).unwrap_err().field, "label");
    let n = NodeSpec {
        availability: 42,
        ..Default::default()
    };
    assert_eq!(node_spec(&n).unwrap_err().field, "availability");
}

#[test]
fn errors_read_field_then_message() {
    let err = SpecError::new("replicas", "cannot be set for a global service");
    assert_eq!(
        err.to_string(),
        "replicas: cannot be set for a global service"
    );
}
