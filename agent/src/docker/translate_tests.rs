//! Unit tests of the task → container translation (no engine needed).

use std::collections::HashMap;

use bollard::models::{MountType, PortBinding, RestartPolicyNameEnum};
use shoal_proto::{
    ContainerSpec, HealthConfig, Mount, MountType as ShoalMountType, PortConfig, PortProtocol,
    PublishMode, ResourceRequirements, Resources, Task, TaskSpec,
};

use super::*;

fn task(container: ContainerSpec) -> Task {
    Task {
        id: "abcdefghijklmnopqrstuvwxyz".into(),
        service_id: "svc-id-1".into(),
        service_name: "web".into(),
        slot: 2,
        node_id: "node0123456789abcdef".into(),
        spec: Some(
            TaskSpec {
                container: Some(container),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

fn image(image: &str) -> ContainerSpec {
    ContainerSpec {
        image: image.into(),
        ..Default::default()
    }
}

fn port(target: u32, published: u32, protocol: PortProtocol, mode: PublishMode) -> PortConfig {
    PortConfig {
        protocol: protocol as i32,
        target_port: target,
        published_port: published,
        publish_mode: mode as i32,
    }
}

#[test]
fn replicated_name_uses_slot_and_task_prefix() {
    assert_eq!(container_name(&task(image("x"))), "web.2.abcdefghijkl");
}

#[test]
fn global_name_uses_node_prefix() {
    let mut t = task(image("x"));
    t.slot = 0;
    assert_eq!(container_name(&t), "web.node01234567.abcdefghijkl");
}

#[test]
fn name_is_sanitized_for_docker() {
    let mut t = task(image("x"));
    t.service_name = "_my svc/α".into();
    t.id = "short".into();
    let name = container_name(&t);
    assert_eq!(name, "t_my-svc--.2.short");
}

#[test]
fn command_is_entrypoint_and_args_are_cmd() {
    let c = container_config(
        &task(ContainerSpec {
            command: vec!["/bin/sh".into(), "-c".into()],
            args: vec!["exit 3".into()],
            ..image("busybox")
        }),
        "n1",
    );
    assert_eq!(c.image.as_deref(), Some("busybox"));
    assert_eq!(
        c.entrypoint,
        Some(vec!["/bin/sh".to_string(), "-c".to_string()])
    );
    assert_eq!(c.cmd, Some(vec!["exit 3".to_string()]));
}

#[test]
fn empty_fields_keep_image_defaults() {
    let c = container_config(&task(image("busybox")), "n1");
    assert_eq!(c.entrypoint, None);
    assert_eq!(c.cmd, None);
    assert_eq!(c.env, None);
    assert_eq!(c.working_dir, None);
    assert_eq!(c.user, None);
    assert_eq!(c.hostname, None);
    assert_eq!(c.healthcheck, None);
    assert_eq!(c.stop_timeout, None);
    assert_eq!(c.exposed_ports, None);
    let host = c.host_config.unwrap();
    assert_eq!(host.port_bindings, None);
    assert_eq!(host.mounts, None);
    assert_eq!(host.nano_cpus, None);
    assert_eq!(host.memory, None);
    assert_eq!(
        host.restart_policy.unwrap().name,
        Some(RestartPolicyNameEnum::NO)
    );
}

#[test]
fn plain_fields_are_copied() {
    let c = container_config(
        &task(ContainerSpec {
            env: vec!["A=1".into(), "B=two".into()],
            dir: "/work".into(),
            user: "nobody".into(),
            hostname: "box".into(),
            stop_signal: "SIGINT".into(),
            stop_grace_period_ms: Some(1500),
            ..image("busybox")
        }),
        "n1",
    );
    assert_eq!(c.env, Some(vec!["A=1".to_string(), "B=two".to_string()]));
    assert_eq!(c.working_dir.as_deref(), Some("/work"));
    assert_eq!(c.user.as_deref(), Some("nobody"));
    assert_eq!(c.hostname.as_deref(), Some("box"));
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(c.stop_timeout, Some(2), "1.5 s grace rounds up, never down");
}

#[test]
fn mandatory_labels_override_user_labels() {
    let c = container_config(
        &task(ContainerSpec {
            labels: HashMap::from([
                ("team".to_string(), "blue".to_string()),
                (LABEL_TASK_ID.to_string(), "forged".to_string()),
            ]),
            ..image("busybox")
        }),
        "node-7",
    );
    let labels = c.labels.unwrap();
    assert_eq!(labels["team"], "blue");
    assert_eq!(labels[LABEL_TASK_ID], "abcdefghijklmnopqrstuvwxyz");
    assert_eq!(labels[LABEL_SERVICE_ID], "svc-id-1");
    assert_eq!(labels[LABEL_SERVICE_NAME], "web");
    assert_eq!(labels[LABEL_NODE_ID], "node-7");
    assert_eq!(labels[LABEL_SLOT], "2");
}

#[test]
fn host_and_ingress_ports_are_published() {
    let mut t = task(image("busybox"));
    t.ports = vec![
        port(80, 8080, PortProtocol::Tcp, PublishMode::Host),
        port(53, 0, PortProtocol::Udp, PublishMode::Ingress),
    ];
    let c = container_config(&t, "n1");
    let mut exposed = c.exposed_ports.unwrap();
    exposed.sort();
    assert_eq!(exposed, vec!["53/udp".to_string(), "80/tcp".to_string()]);
    let bindings = c.host_config.unwrap().port_bindings.unwrap();
    let host_port = |key: &str| {
        bindings[key].as_ref().unwrap()[0]
            .host_port
            .clone()
            .unwrap()
    };
    assert_eq!(host_port("80/tcp"), "8080");
    assert_eq!(
        host_port("53/udp"),
        "",
        "published 0 lets the engine choose"
    );
}

#[test]
fn one_target_published_twice_keeps_both_bindings() {
    let mut t = task(image("busybox"));
    t.ports = vec![
        port(80, 8080, PortProtocol::Tcp, PublishMode::Host),
        port(80, 8081, PortProtocol::Tcp, PublishMode::Host),
    ];
    let c = container_config(&t, "n1");
    assert_eq!(c.exposed_ports.unwrap(), vec!["80/tcp".to_string()]);
    let bindings = c.host_config.unwrap().port_bindings.unwrap();
    assert_eq!(bindings["80/tcp"].as_ref().unwrap().len(), 2);
}

#[test]
fn mounts_are_translated() {
    let m = |typ: ShoalMountType, source: &str, target: &str, read_only: bool| Mount {
        r#type: typ as i32,
        source: source.into(),
        target: target.into(),
        read_only,
    };
    let c = container_config(
        &task(ContainerSpec {
            mounts: vec![
                m(ShoalMountType::Bind, "/srv/data", "/data", true),
                m(ShoalMountType::Volume, "cache", "/cache", false),
                m(ShoalMountType::Volume, "", "/anon", false),
                m(ShoalMountType::Tmpfs, "ignored", "/tmp", false),
            ],
            ..image("busybox")
        }),
        "n1",
    );
    let mounts = c.host_config.unwrap().mounts.unwrap();
    assert_eq!(mounts[0].typ, Some(MountType::BIND));
    assert_eq!(mounts[0].source.as_deref(), Some("/srv/data"));
    assert_eq!(mounts[0].target.as_deref(), Some("/data"));
    assert_eq!(mounts[0].read_only, Some(true));
    assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
    assert_eq!(mounts[1].source.as_deref(), Some("cache"));
    assert_eq!(
        mounts[2].source, None,
        "empty volume source is an anonymous volume"
    );
    assert_eq!(mounts[3].typ, Some(MountType::TMPFS));
    assert_eq!(mounts[3].source, None, "tmpfs has no source");
}

#[test]
fn resource_limits_are_translated() {
    let mut t = task(image("busybox"));
    t.spec.as_mut().unwrap().resources = Some(ResourceRequirements {
        limits: Some(Resources {
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
        }),
        reservations: Some(Resources {
            nano_cpus: 1,
            memory_bytes: 1,
        }),
    });
    let host = container_config(&t, "n1").host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.memory, Some(64 << 20));
}

#[test]
fn healthcheck_durations_become_nanoseconds() {
    let c = container_config(
        &task(ContainerSpec {
            healthcheck: Some(HealthConfig {
                test: vec!["CMD-SHELL".into(), "exit 1".into()],
                interval_ms: 200,
                timeout_ms: 1000,
                retries: 1,
                start_period_ms: 0,
            }),
            ..image("busybox")
        }),
        "n1",
    );
    let h = c.healthcheck.unwrap();
    assert_eq!(
        h.test,
        Some(vec!["CMD-SHELL".to_string(), "exit 1".to_string()])
    );
    assert_eq!(h.interval, Some(200_000_000));
    assert_eq!(h.timeout, Some(1_000_000_000));
    assert_eq!(h.retries, Some(1));
    assert_eq!(h.start_period, None, "0 keeps the engine default");
}

#[test]
fn healthcheck_without_test_is_left_to_the_image() {
    let c = container_config(
        &task(ContainerSpec {
            healthcheck: Some(HealthConfig::default()),
            ..image("busybox")
        }),
        "n1",
    );
    assert_eq!(c.healthcheck, None);
}

#[test]
fn pull_reference_adds_latest_only_when_untagged() {
    assert_eq!(pull_reference("busybox"), "busybox:latest");
    assert_eq!(
        pull_reference("shoal-test/busybox:v2"),
        "shoal-test/busybox:v2"
    );
    assert_eq!(
        pull_reference("localhost:5000/app"),
        "localhost:5000/app:latest"
    );
    assert_eq!(
        pull_reference("localhost:5000/app:1"),
        "localhost:5000/app:1"
    );
    assert_eq!(pull_reference("app@sha256:abc"), "app@sha256:abc");
}

#[test]
fn published_ports_report_the_bound_host_port_once() {
    let requested = vec![
        port(80, 0, PortProtocol::Tcp, PublishMode::Host),
        port(53, 5353, PortProtocol::Udp, PublishMode::Ingress),
        port(9000, 0, PortProtocol::Tcp, PublishMode::Host),
    ];
    let binding = |ip: &str, port: &str| PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    };
    let bound = HashMap::from([
        (
            "80/tcp".to_string(),
            Some(vec![binding("0.0.0.0", "49153"), binding("::", "49153")]),
        ),
        ("53/udp".to_string(), Some(vec![binding("0.0.0.0", "5353")])),
        ("443/tcp".to_string(), None),
        // Docker 20.10 may pick different ephemeral ports for IPv6 and IPv4.
        (
            "9000/tcp".to_string(),
            Some(vec![binding("::", "32816"), binding("0.0.0.0", "32812")]),
        ),
    ]);
    let ports = published_ports(&requested, &bound);
    assert_eq!(
        ports,
        vec![
            port(80, 49153, PortProtocol::Tcp, PublishMode::Host),
            port(53, 5353, PortProtocol::Udp, PublishMode::Ingress),
            port(9000, 32812, PortProtocol::Tcp, PublishMode::Host),
        ]
    );
}

#[test]
fn exit_code_is_read_from_list_status() {
    assert_eq!(exit_code_from_status("Exited (3) 2 seconds ago"), Some(3));
    assert_eq!(
        exit_code_from_status("Exited (137) About a minute ago"),
        Some(137)
    );
    assert_eq!(exit_code_from_status("Up 3 seconds"), None);
    assert_eq!(exit_code_from_status("Created"), None);
}

#[test]
fn stop_timeout_rounds_up() {
    assert_eq!(ms_to_whole_secs(0), 0);
    assert_eq!(ms_to_whole_secs(1), 1);
    assert_eq!(ms_to_whole_secs(1000), 1);
    assert_eq!(ms_to_whole_secs(10_001), 11);
}

#[test]
fn process_exits_read_like_docker() {
    assert_eq!(process_exit(3, false).message, "exit status 3");
    assert_eq!(process_exit(0, false).message, "exit status 0");
    assert_eq!(process_exit(137, false).message, "killed");
    assert_eq!(process_exit(137, true).message, "killed (out of memory)");
    assert!(!process_exit(1, false).unhealthy);
}

#[test]
fn unhealthy_exit_quotes_the_last_probe() {
    use bollard::models::HealthcheckResult;
    let probe = |code: i64, out: &str| HealthcheckResult {
        exit_code: Some(code),
        output: Some(out.into()),
        ..Default::default()
    };
    let exit = unhealthy_exit(&[probe(1, "first\n"), probe(1, "db down\n")]);
    assert!(exit.unhealthy);
    assert_eq!(exit.message, "unhealthy: db down");
    assert_eq!(exit.exit_code, NO_EXIT_CODE);
    assert_eq!(
        unhealthy_exit(&[probe(2, "")]).message,
        "unhealthy: health check failed with exit code 2"
    );
    assert_eq!(
        unhealthy_exit(&[]).message,
        "unhealthy: health check failed"
    );
}

#[test]
fn health_events_are_recognised() {
    assert_eq!(health_event("health_status: healthy"), Some(true));
    assert_eq!(health_event("health_status: unhealthy"), Some(false));
    assert_eq!(health_event("health_status: starting"), None);
    assert_eq!(health_event("die"), None);
}

#[test]
fn secrets_and_configs_become_read_only_bind_mounts() {
    use std::sync::Arc;

    use crate::runtime::{FileKind, TaskFile, TaskFiles};

    let file = |kind, path: &str| TaskFile {
        kind,
        id: "id1".into(),
        name: "db".into(),
        path: path.into(),
        uid: 0,
        gid: 0,
        mode: 0o444,
        data: Arc::from(&b"value"[..]),
    };
    let files = TaskFiles {
        files: vec![
            file(FileKind::Secret, "/run/secrets/db"),
            file(FileKind::Config, "/etc/app.conf"),
        ],
        missing: vec![],
    };
    let mut c = image("busybox");
    c.mounts = vec![Mount {
        r#type: ShoalMountType::Tmpfs as i32,
        target: "/tmp".into(),
        ..Default::default()
    }];
    let mut config = container_config(&task(c), "n1");
    add_mounts(
        &mut config,
        file_mounts(&files, std::path::Path::new("/dev/shm/shoal/n1/t1")),
    );
    let mounts = config.host_config.unwrap().mounts.unwrap();
    assert_eq!(mounts.len(), 3, "the spec's own mount is kept");
    let got: Vec<(&str, &str, Option<MountType>, Option<bool>)> = mounts[1..]
        .iter()
        .map(|m| {
            (
                m.source.as_deref().unwrap(),
                m.target.as_deref().unwrap(),
                m.typ,
                m.read_only,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "/dev/shm/shoal/n1/t1/secret-0",
                "/run/secrets/db",
                Some(MountType::BIND),
                Some(true)
            ),
            (
                "/dev/shm/shoal/n1/t1/config-1",
                "/etc/app.conf",
                Some(MountType::BIND),
                Some(true)
            ),
        ]
    );
    // Nothing to add: the configuration is unchanged.
    let mut plain = container_config(&task(image("busybox")), "n1");
    add_mounts(
        &mut plain,
        file_mounts(&TaskFiles::default(), std::path::Path::new("/x")),
    );
    assert!(plain.host_config.unwrap().mounts.is_none());
}
