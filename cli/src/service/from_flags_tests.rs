//! Flag-to-spec tests: real command lines parsed by clap, turned into specs.

use shoal_proto::{
    MountType, PortProtocol, PublishMode, RestartCondition, ServiceMode, ServiceSpec, UpdateOrder,
};

use super::*;
use crate::args::{Command, ServiceCommand};
use crate::testing::parse;

fn no_env(_: &str) -> Option<String> {
    None
}

fn create(args: &[&str]) -> anyhow::Result<ServiceSpec> {
    let mut argv = vec!["shoal", "service", "create"];
    argv.extend_from_slice(args);
    let Command::Service(ServiceCommand::Create(c)) = parse(&argv)? else {
        panic!("not a create command");
    };
    create_spec(&c, &no_env)
}

fn update(spec: &mut ServiceSpec, args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["shoal", "service", "update"];
    argv.extend_from_slice(args);
    argv.push("web");
    let Command::Service(ServiceCommand::Update(u)) = parse(&argv)? else {
        panic!("not an update command");
    };
    apply_update(spec, &u, &|k| {
        (k == "FROM_SHELL").then(|| "yes".to_string())
    })
}

fn container(spec: &ServiceSpec) -> &ContainerSpec {
    spec.task.as_ref().unwrap().container.as_ref().unwrap()
}

#[test]
fn common_flags_build_the_spec() {
    let spec = create(&[
        "--name",
        "web",
        "--publish",
        "8080:80",
        "--env",
        "A=1",
        "--replicas",
        "3",
        "--constraint",
        "node.labels.zone==east",
        "nginx:1.27",
        "nginx",
        "-g",
        "daemon off;",
    ])
    .unwrap();
    assert_eq!(spec.name, "web");
    assert_eq!(spec.replicas, 3);
    assert_eq!(spec.mode(), ServiceMode::Replicated);
    let c = container(&spec);
    assert_eq!(c.image, "nginx:1.27");
    assert_eq!(c.env, ["A=1"]);
    assert_eq!(c.args, ["nginx", "-g", "daemon off;"]);
    assert!(c.command.is_empty());
    let ports = &spec.endpoint.as_ref().unwrap().ports;
    assert_eq!(ports.len(), 1);
    assert_eq!((ports[0].published_port, ports[0].target_port), (8080, 80));
    assert_eq!(ports[0].publish_mode(), PublishMode::Ingress);
    let placement = spec.task.as_ref().unwrap().placement.as_ref().unwrap();
    assert_eq!(placement.constraints, ["node.labels.zone==east"]);
    // Nothing else was asked for: the manager's defaults apply.
    assert!(spec.update.is_none());
    let task = spec.task.as_ref().unwrap();
    assert!(task.restart.is_none() && task.resources.is_none());
    assert!(c.healthcheck.is_none() && c.stop_grace_period_ms.is_none());
}

#[test]
fn replicas_default_to_one_and_names_are_generated() {
    let spec = create(&["registry.local:5000/team/app:v1"]).unwrap();
    assert_eq!(spec.replicas, 1);
    assert!(spec.name.starts_with("app-"), "{}", spec.name);
    assert_eq!(validate::service_spec(&spec), Ok(()));
}

#[test]
fn policy_and_resource_flags() {
    let spec = create(&[
        "--name",
        "api",
        "--reserve-cpu",
        "0.5",
        "--limit-cpu",
        "1",
        "--reserve-memory",
        "256m",
        "--limit-memory",
        "1g",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "2s",
        "--restart-max-attempts",
        "3",
        "--update-parallelism",
        "2",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1m",
        "--health-cmd",
        "curl -f localhost",
        "--health-interval",
        "300ms",
        "--health-retries",
        "2",
        "--stop-grace-period",
        "20s",
        "--entrypoint",
        "sh -c 'run it'",
        "--mount",
        "type=bind,src=/srv,dst=/data,ro",
        "--placement-pref",
        "spread=node.labels.rack",
        "--replicas-max-per-node",
        "1",
        "-l",
        "team=a",
        "--container-label",
        "c=d",
        "-w",
        "/app",
        "-u",
        "1000",
        "--hostname",
        "h",
        "--stop-signal",
        "SIGINT",
        "alpine",
    ])
    .unwrap();
    let task = spec.task.as_ref().unwrap();
    let res = task.resources.unwrap();
    assert_eq!(res.reservations.unwrap().nano_cpus, 500_000_000);
    assert_eq!(res.limits.unwrap().memory_bytes, 1 << 30);
    assert_eq!(res.reservations.unwrap().memory_bytes, 256 << 20);
    let restart = task.restart.unwrap();
    assert_eq!(restart.condition(), RestartCondition::OnFailure);
    assert_eq!((restart.delay_ms, restart.max_attempts), (Some(2_000), 3));
    let upd = spec.update.unwrap();
    assert_eq!(upd.parallelism, Some(2));
    assert_eq!(upd.order(), UpdateOrder::StartFirst);
    assert_eq!(upd.monitor_ms, Some(60_000));
    let c = container(&spec);
    let h = c.healthcheck.as_ref().unwrap();
    assert_eq!(h.test, ["CMD-SHELL", "curl -f localhost"]);
    assert_eq!((h.interval_ms, h.retries), (300, 2));
    assert_eq!(c.stop_grace_period_ms, Some(20_000));
    assert_eq!(c.command, ["sh", "-c", "run it"]);
    assert_eq!(c.mounts[0].r#type(), MountType::Bind);
    assert!(c.mounts[0].read_only);
    assert_eq!(
        (c.dir.as_str(), c.user.as_str(), c.hostname.as_str()),
        ("/app", "1000", "h")
    );
    assert_eq!(c.stop_signal, "SIGINT");
    assert_eq!(c.labels["c"], "d");
    assert_eq!(spec.labels["team"], "a");
    let placement = task.placement.as_ref().unwrap();
    assert_eq!(
        placement.preferences[0].spread_descriptor,
        "node.labels.rack"
    );
    assert_eq!(placement.max_replicas, 1);
}

#[test]
fn bad_specs_are_refused_with_the_servers_words() {
    let err = create(&[
        "--name",
        "g",
        "--mode",
        "global",
        "--replicas",
        "2",
        "nginx",
    ])
    .unwrap_err();
    assert!(err.to_string().starts_with("replicas:"), "{err}");
    let err = create(&["--name", "x", "--constraint", "zone east", "nginx"]).unwrap_err();
    assert!(err.to_string().starts_with("constraint[0]:"), "{err}");
    let err = create(&[
        "--name",
        "x",
        "--placement-pref",
        "node.labels.rack",
        "nginx",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("--placement-pref"), "{err}");
    let err = create(&[
        "--name",
        "x",
        "--reserve-memory",
        "2g",
        "--limit-memory",
        "1g",
        "nginx",
    ])
    .unwrap_err();
    assert!(err.to_string().starts_with("reserve-memory:"), "{err}");
    let err = create(&["--name", "bad name", "nginx"]).unwrap_err();
    assert!(err.to_string().starts_with("name:"), "{err}");
    let err = create(&["--name", "x", "Nginx"]).unwrap_err();
    assert!(err.to_string().starts_with("image:"), "{err}");
    let err = create(&[
        "--name",
        "x",
        "-p",
        "80",
        "-p",
        "80:80",
        "-p",
        "published=80,target=81",
        "nginx",
    ])
    .unwrap_err();
    assert!(err.to_string().starts_with("publish[2]:"), "{err}");
    let err = create(&["--name", "x", "--replicas", "-3", "nginx"]).unwrap_err();
    assert!(err.to_string().contains("--replicas"), "{err}");
}

#[test]
fn global_mode_has_no_replicas() {
    let spec = create(&["--name", "g", "--mode", "global", "nginx"]).unwrap();
    assert_eq!(spec.mode(), ServiceMode::Global);
    assert_eq!(spec.replicas, 0);
}

#[test]
fn env_files_and_bare_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env");
    std::fs::write(&path, "# config\nA=1\nB=2\n").unwrap();
    let p = path.to_str().unwrap();
    let spec = create(&[
        "--name",
        "e",
        "--env-file",
        p,
        "-e",
        "B=3",
        "-e",
        "UNSET_KEY",
        "nginx",
    ])
    .unwrap();
    assert_eq!(container(&spec).env, ["A=1", "B=2", "B=3", "UNSET_KEY"]);
    let err = create(&["--name", "e", "--env-file", "/nonexistent/env", "nginx"]).unwrap_err();
    assert!(err.to_string().contains("--env-file"), "{err}");
}

#[test]
fn updates_add_and_remove() {
    let mut spec = create(&[
        "--name",
        "web",
        "-e",
        "A=1",
        "-e",
        "B=2",
        "-p",
        "8080:80",
        "-p",
        "53:53/udp",
        "--constraint",
        "node.role==worker",
        "-l",
        "x=1",
        "--mount",
        "type=volume,target=/data",
        "nginx",
    ])
    .unwrap();
    let before_version = spec.clone();
    update(
        &mut spec,
        &[
            "--image",
            "nginx:2",
            "--replicas",
            "5",
            "--env-add",
            "A=9",
            "--env-add",
            "FROM_SHELL",
            "--env-rm",
            "B",
            "--label-add",
            "y=2",
            "--label-rm",
            "x",
            "--publish-rm",
            "80",
            "--publish-add",
            "9090:90",
            "--constraint-rm",
            "node.role==worker",
            "--constraint-add",
            "node.labels.zone==east",
            "--mount-rm",
            "/data",
            "--update-delay",
            "10s",
        ],
    )
    .unwrap();
    assert_ne!(spec, before_version);
    let c = container(&spec);
    assert_eq!(c.image, "nginx:2");
    assert_eq!(spec.replicas, 5);
    assert_eq!(c.env, ["A=9", "FROM_SHELL=yes"]);
    assert!(c.mounts.is_empty());
    assert_eq!(spec.labels.get("y").map(String::as_str), Some("2"));
    assert!(!spec.labels.contains_key("x"));
    let ports = &spec.endpoint.as_ref().unwrap().ports;
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0].protocol(), PortProtocol::Udp);
    assert_eq!((ports[1].published_port, ports[1].target_port), (9090, 90));
    let constraints = &spec
        .task
        .as_ref()
        .unwrap()
        .placement
        .as_ref()
        .unwrap()
        .constraints;
    assert_eq!(constraints, &["node.labels.zone==east"]);
    assert_eq!(spec.update.unwrap().delay_ms, 10_000);

    let err = update(&mut spec, &["--publish-rm", "http"]).unwrap_err();
    assert!(err.to_string().contains("--publish-rm"), "{err}");
}

#[test]
fn words_split_like_a_shell() {
    assert_eq!(split_words("sh -c 'echo hi'"), ["sh", "-c", "echo hi"]);
    assert_eq!(split_words("  a  \"b c\" ''"), ["a", "b c", ""]);
    assert!(split_words("").is_empty());
}

#[test]
fn secret_and_config_flags_take_docker_syntax() {
    let spec = create(&[
        "--name",
        "web",
        "--secret",
        "db",
        "--secret",
        "source=api-key,target=key,uid=1000,gid=1000,mode=0400",
        "--config",
        "source=app,target=/etc/app.conf",
        "busybox",
    ])
    .unwrap();
    let c = container(&spec);
    let secrets: Vec<(&str, &str, u32, Option<u32>)> = c
        .secrets
        .iter()
        .map(|r| (r.secret_name.as_str(), r.target.as_str(), r.uid, r.mode))
        .collect();
    assert_eq!(
        secrets,
        vec![("db", "db", 0, None), ("api-key", "key", 1000, Some(0o400))]
    );
    assert_eq!(c.configs[0].config_name, "app");
    assert_eq!(c.configs[0].target, "/etc/app.conf");

    let err = create(&["--secret", "source=db,mode=999", "busybox"]).unwrap_err();
    assert!(err.to_string().contains("--secret"), "{err}");
    let err = create(&["--secret", "source=db,target=a/b", "busybox"]).unwrap_err();
    assert!(err.to_string().contains("secret[0].target"), "{err}");
    let err = create(&["--config", "source=app,target=rel", "busybox"]).unwrap_err();
    assert!(err.to_string().contains("config[0].target"), "{err}");
    let err = create(&["--secret", "a", "--secret", "source=b,target=a", "busybox"]).unwrap_err();
    assert!(err.to_string().contains("secret[1].target"), "{err}");
}

#[test]
fn update_adds_and_removes_secrets_and_configs() {
    let mut spec = create(&[
        "--name", "web", "--secret", "db", "--config", "app", "busybox",
    ])
    .unwrap();
    update(
        &mut spec,
        &[
            "--secret-rm",
            "db",
            "--secret-add",
            "source=db2,target=db",
            "--secret-add",
            "tls",
            "--config-rm",
            "app",
            "--config-add",
            "source=app2,target=/etc/app",
        ],
    )
    .unwrap();
    let c = container(&spec);
    let names: Vec<(&str, &str)> = c
        .secrets
        .iter()
        .map(|r| (r.secret_name.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(names, vec![("db2", "db"), ("tls", "tls")]);
    assert_eq!(c.configs.len(), 1);
    assert_eq!(c.configs[0].config_name, "app2");
    // Adding at a target that is taken replaces the reference there.
    update(&mut spec, &["--secret-add", "source=other,target=tls"]).unwrap();
    let c = container(&spec);
    assert_eq!(c.secrets.len(), 2);
    assert_eq!(c.secrets[1].secret_name, "other");
}

#[test]
fn limits_are_refused_before_anything_is_sent() {
    let err = create(&["--replicas", "1000000000", "nginx"]).unwrap_err();
    assert!(err.to_string().starts_with("replicas: "), "{err}");
    assert!(err.to_string().contains("100000"), "{err}");
    let err = create(&["--replicas", "18446744073709551615", "nginx"]).unwrap_err();
    assert!(err.to_string().starts_with("replicas: "), "{err}");
    let mut spec = create(&["--name", "web", "nginx"]).unwrap();
    let err = update(&mut spec, &["--replicas", "1000000"]).unwrap_err();
    assert!(err.to_string().starts_with("replicas: "), "{err}");

    for (flag, value, field) in [
        (
            "--update-parallelism",
            "18446744073709551615",
            "update-parallelism",
        ),
        (
            "--restart-max-attempts",
            "18446744073709551615",
            "restart-max-attempts",
        ),
        (
            "--replicas-max-per-node",
            "1000001",
            "replicas-max-per-node",
        ),
        ("--health-retries", "4294967295", "health-retries"),
        ("--hostname", &"h".repeat(65), "hostname"),
    ] {
        let err = create(&[flag, value, "nginx"]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{field}: ")), "{flag}: {err}");
    }
    // Durations, sizes and CPUs past their bound are refused by the flag's parser.
    for (flag, value) in [
        ("--restart-delay", "9000h"),
        ("--stop-grace-period", "2562047h"),
        ("--reserve-memory", "8e"),
        ("--limit-memory", "65t"),
        ("--limit-cpu", "9223372036"),
    ] {
        let err = create(&[flag, value, "nginx"]).unwrap_err().to_string();
        assert!(err.contains(flag), "{flag}: {err}");
    }
}

#[test]
fn a_131000_character_name_gets_a_short_error() {
    let name = "a".repeat(131_000);
    let err = create(&["--name", &name, "nginx"]).unwrap_err().to_string();
    assert!(err.len() < 300, "{} bytes", err.len());
    assert!(err.starts_with("name: "), "{err}");
    assert!(err.contains("(131000 bytes)"), "{err}");

    // Every flag quotes a bounded prefix, whether clap's parser or the spec refuses it.
    let huge = "9".repeat(131_000);
    for flag in [
        "--mount",
        "--publish",
        "--restart-delay",
        "--limit-memory",
        "--reserve-cpu",
        "--secret",
        "--label",
        "--replicas",
        "--constraint",
        "--placement-pref",
        "--env",
        "--workdir",
    ] {
        let value = match flag {
            "--label" => format!("={huge}"),
            "--secret" => format!("a,{huge}"),
            "--env" => format!("={huge}"),
            _ => huge.clone(),
        };
        let err = create(&["--name", "web", flag, &value, "nginx"])
            .unwrap_err()
            .to_string();
        assert!(err.len() < 600, "{flag}: {} bytes", err.len());
        assert!(err.contains("(131"), "{flag}: {err}");
    }
    let err = create(&["--name", "web", &huge]).unwrap_err().to_string();
    assert!(err.len() < 300 && err.starts_with("image: "), "{err}");
}

#[test]
fn an_env_file_of_100000_variables_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.env");
    let contents: String = (0..100_000).map(|i| format!("VAR{i}=x\n")).collect();
    std::fs::write(&path, contents).unwrap();
    let err = create(&["--env-file", path.to_str().unwrap(), "nginx"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err, "env: 100000 variables, over the limit of 1000",
        "{err}"
    );
}
