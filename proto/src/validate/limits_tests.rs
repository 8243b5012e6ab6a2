//! Tests of the limits: each bound accepts its largest value and refuses the next,
//! naming the field; the largest valid writes fit in a request; errors quote a
//! bounded prefix of what they refuse.

use std::collections::HashMap;

use prost::Message;

use crate::v1::{
    ConfigReference, ConfigSpec, ContainerSpec, EndpointSpec, HealthConfig, Mount, MountType,
    Placement, PortConfig, PublishMode, ResourceRequirements, Resources, RestartPolicy,
    SecretReference, SecretSpec, SpreadPreference,
};
use crate::validate::*;

/// A change to a valid spec, with the field its refusal must name.
type Edit = Box<dyn Fn(&mut ServiceSpec)>;

fn valid() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        replicas: 2,
        task: Some(TaskSpec::for_image("nginx:1.27").into()),
        ..Default::default()
    }
}

fn container(spec: &mut ServiceSpec) -> &mut ContainerSpec {
    spec.task.as_mut().unwrap().container.as_mut().unwrap()
}

fn task(spec: &mut ServiceSpec) -> &mut TaskSpec {
    spec.task.as_mut().unwrap()
}

/// The refusal of `spec`, checked to be short whatever was refused.
fn refusal(spec: &ServiceSpec) -> SpecError {
    let err = service_spec(spec).expect_err("spec should be refused");
    assert!(
        err.to_string().len() < 512,
        "{} bytes",
        err.to_string().len()
    );
    err
}

fn labels(n: usize, key_len: usize, value_len: usize) -> HashMap<String, String> {
    (0..n)
        .map(|i| {
            let key = format!("{i:0width$}", width = key_len);
            (key, "v".repeat(value_len))
        })
        .collect()
}

#[test]
fn quoted_values_are_bounded() {
    assert_eq!(quoted("web"), r#""web""#);
    assert_eq!(quoted("a\"b\n"), r#""a\"b\n""#);
    assert_eq!(quoted("it's"), r#""it's""#);
    let long = "a".repeat(131_000);
    assert_eq!(
        quoted(&long),
        format!("\"{}…\" (131000 bytes)", "a".repeat(QUOTE_CHARS))
    );
    // Escapes count against the bound too: no value makes a quote grow.
    let nasty = "\u{0}\u{10ffff}\u{7f}".repeat(1000);
    assert!(
        quoted(&nasty).len() < QUOTE_CHARS + 40,
        "{}",
        quoted(&nasty)
    );
}

#[test]
fn a_131000_character_name_gets_a_short_error() {
    let mut s = valid();
    s.name = "a".repeat(131_000);
    let err = refusal(&s);
    assert_eq!(err.field, "name");
    assert!(err.message.contains("(131000 bytes)"), "{err}");
    assert!(err.message.contains("63"), "{err}");
    s.name = "é".repeat(70_000);
    assert_eq!(refusal(&s).field, "name");
}

#[test]
fn counts_are_bounded_and_named() {
    let cases: Vec<(&str, Edit)> = vec![
        (
            "label",
            Box::new(|s| s.labels = labels(MAX_LABELS + 1, 4, 1)),
        ),
        (
            "container-label",
            Box::new(|s| container(s).labels = labels(MAX_LABELS + 1, 4, 1)),
        ),
        (
            "env",
            Box::new(|s| container(s).env = vec!["A=1".into(); MAX_ENV + 1]),
        ),
        (
            "entrypoint",
            Box::new(|s| container(s).command = vec!["x".into(); MAX_ARGS + 1]),
        ),
        (
            "args",
            Box::new(|s| container(s).args = vec!["x".into(); MAX_ARGS + 1]),
        ),
        (
            "mount",
            Box::new(|s| {
                let m = Mount {
                    r#type: MountType::Tmpfs as i32,
                    target: "/t".into(),
                    ..Default::default()
                };
                container(s).mounts = vec![m; MAX_MOUNTS + 1];
            }),
        ),
        (
            "secret",
            Box::new(|s| {
                container(s).secrets = vec![SecretReference::default(); MAX_FILE_REFS + 1]
            }),
        ),
        (
            "config",
            Box::new(|s| {
                container(s).configs = vec![ConfigReference::default(); MAX_FILE_REFS + 1]
            }),
        ),
        (
            "publish",
            Box::new(|s| {
                s.endpoint = Some(EndpointSpec {
                    ports: vec![PortConfig::default(); MAX_PORTS + 1],
                })
            }),
        ),
        (
            "constraint",
            Box::new(|s| {
                task(s).placement = Some(Placement {
                    constraints: vec!["node.id==a".into(); MAX_CONSTRAINTS + 1],
                    ..Default::default()
                })
            }),
        ),
        (
            "placement-pref",
            Box::new(|s| {
                let p = SpreadPreference {
                    spread_descriptor: "node.labels.zone".into(),
                };
                task(s).placement = Some(Placement {
                    preferences: vec![p; MAX_PREFERENCES + 1],
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, set) in cases {
        let mut s = valid();
        set(&mut s);
        let err = refusal(&s);
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains("over the limit of"), "{err}");
    }
}

#[test]
fn sizes_are_bounded_and_named() {
    let big = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, Edit)> = vec![
        ("label", Box::new(|s| s.labels = labels(1, 1025, 0))),
        ("label", Box::new(|s| s.labels = labels(1, 4, 4097))),
        // 16 labels of 4 KiB: each within bounds, too much together.
        ("label", Box::new(|s| s.labels = labels(16, 4, 4096))),
        (
            "env[0]",
            Box::new(move |s| container(s).env = vec![big(MAX_ITEM_LEN + 1)]),
        ),
        (
            "args[0]",
            Box::new(move |s| container(s).args = vec![big(MAX_ITEM_LEN + 1)]),
        ),
        (
            "workdir",
            Box::new(move |s| container(s).dir = big(MAX_PATH_LEN + 1)),
        ),
        (
            "user",
            Box::new(move |s| container(s).user = big(MAX_SHORT_LEN + 1)),
        ),
        (
            "hostname",
            Box::new(move |s| container(s).hostname = big(65)),
        ),
        (
            "stop-signal",
            Box::new(move |s| container(s).stop_signal = big(257)),
        ),
        (
            "mount[0].target",
            Box::new(move |s| {
                container(s).mounts = vec![Mount {
                    target: format!("/{}", big(MAX_PATH_LEN)),
                    ..Default::default()
                }]
            }),
        ),
        (
            "constraint[0]",
            Box::new(move |s| {
                task(s).placement = Some(Placement {
                    constraints: vec![format!("node.labels.a=={}", big(MAX_CONSTRAINT_LEN))],
                    ..Default::default()
                })
            }),
        ),
        (
            "health-cmd[1]",
            Box::new(move |s| {
                container(s).healthcheck = Some(HealthConfig {
                    test: vec!["CMD-SHELL".into(), big(MAX_ITEM_LEN + 1)],
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, set) in cases {
        let mut s = valid();
        set(&mut s);
        let err = refusal(&s);
        assert_eq!(err.field, field, "{err}");
    }
}

#[test]
fn numbers_are_bounded() {
    let mut s = valid();
    task(&mut s).restart = Some(RestartPolicy {
        delay_ms: Some(MAX_DURATION_MS),
        window_ms: MAX_DURATION_MS,
        max_attempts: MAX_RESTART_ATTEMPTS,
        ..Default::default()
    });
    task(&mut s).resources = Some(ResourceRequirements {
        limits: Some(Resources {
            nano_cpus: MAX_NANO_CPUS,
            memory_bytes: MAX_MEMORY_BYTES,
        }),
        reservations: None,
    });
    s.update = Some(UpdateConfig {
        parallelism: Some(MAX_REPLICAS),
        ..Default::default()
    });
    assert_eq!(service_spec(&s), Ok(()));

    let cases: Vec<(&str, Edit)> = vec![
        (
            "restart-delay",
            Box::new(|s| task(s).restart.as_mut().unwrap().delay_ms = Some(i64::MAX)),
        ),
        (
            "restart-window",
            Box::new(|s| task(s).restart.as_mut().unwrap().window_ms = MAX_DURATION_MS + 1),
        ),
        (
            "restart-max-attempts",
            Box::new(|s| task(s).restart.as_mut().unwrap().max_attempts = u64::MAX),
        ),
        (
            "limit-cpu",
            Box::new(|s| {
                let r = task(s).resources.as_mut().unwrap();
                r.limits.as_mut().unwrap().nano_cpus = i64::MAX;
            }),
        ),
        (
            "reserve-memory",
            Box::new(|s| {
                let r = task(s).resources.as_mut().unwrap();
                r.reservations = Some(Resources {
                    nano_cpus: 0,
                    memory_bytes: i64::MAX,
                });
            }),
        ),
        (
            "update-parallelism",
            Box::new(|s| s.update.as_mut().unwrap().parallelism = Some(u64::MAX)),
        ),
        (
            "update-delay",
            Box::new(|s| s.update.as_mut().unwrap().delay_ms = i64::MAX),
        ),
        (
            "update-monitor",
            Box::new(|s| s.update.as_mut().unwrap().monitor_ms = Some(i64::MAX)),
        ),
        (
            "replicas-max-per-node",
            Box::new(|s| {
                task(s).placement = Some(Placement {
                    max_replicas: u64::MAX,
                    ..Default::default()
                })
            }),
        ),
        (
            "health-retries",
            Box::new(|s| {
                container(s).healthcheck = Some(HealthConfig {
                    retries: u32::MAX,
                    ..Default::default()
                })
            }),
        ),
        (
            "health-interval",
            Box::new(|s| {
                container(s).healthcheck = Some(HealthConfig {
                    interval_ms: i64::MAX,
                    ..Default::default()
                })
            }),
        ),
        (
            "stop-grace-period",
            Box::new(|s| container(s).stop_grace_period_ms = Some(MAX_DURATION_MS + 1)),
        ),
    ];
    for (field, set) in cases {
        let mut over = s.clone();
        set(&mut over);
        let err = refusal(&over);
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains("limit"), "{err}");
    }
}

#[test]
fn a_spec_too_big_in_sum_names_its_largest_field() {
    let mut s = valid();
    // Each entry and the count are within bounds; 80 KiB of environment is not.
    container(&mut s).env = (0..80)
        .map(|i| format!("V{i}={}", "x".repeat(1020)))
        .collect();
    container(&mut s).args = vec!["y".repeat(2000)];
    let err = refusal(&s);
    assert_eq!(err.field, "env", "{err}");
    assert!(
        err.message.starts_with("the spec is 8") && err.message.contains("over the 64 KiB limit"),
        "{err}"
    );
    assert!(err.message.contains("env takes 80.0 KiB of it"), "{err}");

    // Just under the limit passes.
    container(&mut s).env.truncate(55);
    assert!(s.encoded_len() <= MAX_SPEC_BYTES);
    assert_eq!(service_spec(&s), Ok(()));
}

/// The largest service spec validation lets through: every count and size at
/// its bound, until the whole-spec rule stops it.
fn largest_service_spec() -> ServiceSpec {
    let mut s = valid();
    s.name = "n".repeat(MAX_NAME_LEN);
    container(&mut s).env = (0..MAX_ENV)
        .map(|i| format!("V{i:04}={}", "x".repeat(200)))
        .collect();
    while s.encoded_len() > MAX_SPEC_BYTES {
        container(&mut s).env.pop();
    }
    s
}

#[test]
fn the_largest_writes_fit_in_a_request() {
    let service = largest_service_spec();
    assert_eq!(service_spec(&service), Ok(()));
    assert!(service.encoded_len() > MAX_SPEC_BYTES - 300);

    // The largest secret: the largest value, the longest name, labels at their
    // byte limit.
    let mut secret_labels = HashMap::new();
    for i in 0..8 {
        secret_labels.insert(format!("{i:01024}"), "v".repeat(MAX_LABEL_VALUE_LEN - 1024));
    }
    assert_eq!(
        secret_labels
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>(),
        MAX_LABELS_BYTES
    );
    let secret = SecretSpec {
        name: "s".repeat(MAX_OBJECT_NAME_LEN),
        labels: secret_labels.clone(),
        data: vec![7; MAX_DATA_SIZE],
    };
    assert_eq!(secret_spec(&secret), Ok(()));
    let config = ConfigSpec {
        name: "c".repeat(MAX_OBJECT_NAME_LEN),
        labels: secret_labels,
        data: vec![7; MAX_DATA_SIZE],
    };
    assert_eq!(config_spec(&config), Ok(()));

    // Requests wrap a spec with a few small fields (an id, a version): 1 KiB of room.
    for (what, len) in [
        ("service", service.encoded_len()),
        ("secret", secret.encoded_len()),
        ("config", config.encoded_len()),
    ] {
        assert!(
            len + 1024 < MAX_REQUEST_BYTES,
            "the largest {what} spec is {len} bytes"
        );
    }
    // And the largest request stays far from the Raft entry limit (~2 MiB).
    const { assert!(MAX_REQUEST_BYTES * 3 / 2 < 2 * 1024 * 1024) };
}

#[test]
fn secrets_configs_and_nodes_bound_their_labels_and_references() {
    let secret = SecretSpec {
        name: "s".into(),
        labels: labels(MAX_LABELS + 1, 4, 1),
        data: vec![1],
    };
    assert_eq!(secret_spec(&secret).unwrap_err().field, "label");
    let node = NodeSpec {
        labels: labels(1, 4, MAX_LABEL_VALUE_LEN + 1),
        ..Default::default()
    };
    assert_eq!(node_spec(&node).unwrap_err().field, "label");

    let mut s = valid();
    container(&mut s).secrets = vec![SecretReference {
        secret_name: "n".repeat(MAX_OBJECT_NAME_LEN + 1),
        target: "t".into(),
        ..Default::default()
    }];
    assert_eq!(refusal(&s).field, "secret[0].source");
    container(&mut s).secrets = vec![];
    container(&mut s).configs = vec![ConfigReference {
        config_name: "c".into(),
        target: format!("/{}", "t".repeat(MAX_PATH_LEN)),
        ..Default::default()
    }];
    assert_eq!(refusal(&s).field, "config[0].target");
}

#[test]
fn huge_values_are_quoted_briefly_everywhere() {
    let huge = "Z".repeat(131_000);
    let mut s = valid();
    container(&mut s).image = huge.clone();
    assert_eq!(refusal(&s).field, "image");
    container(&mut s).image = format!("nginx:{huge}");
    assert_eq!(refusal(&s).field, "image");
    let mut s = valid();
    container(&mut s).env = vec![format!("={huge}")];
    assert_eq!(refusal(&s).field, "env[0]");
    let mut s = valid();
    container(&mut s).mounts = vec![Mount {
        r#type: MountType::Volume as i32,
        source: format!("-{}", "v".repeat(4000)),
        target: "/data".into(),
        ..Default::default()
    }];
    assert_eq!(refusal(&s).field, "mount[0].source");
    let mut s = valid();
    s.endpoint = Some(EndpointSpec {
        ports: vec![PortConfig {
            target_port: 80,
            published_port: 0,
            publish_mode: PublishMode::Host as i32,
            ..Default::default()
        }],
    });
    assert_eq!(service_spec(&s), Ok(()));
    task(&mut s).placement = Some(Placement {
        constraints: vec![format!("node.{}==x", "k".repeat(4000))],
        ..Default::default()
    });
    assert_eq!(refusal(&s).field, "constraint[0]");
    assert!(
        crate::constraint::Constraint::parse(&huge)
            .unwrap_err()
            .len()
            < 300
    );
    assert!(crate::constraint::parse_spread(&huge).unwrap_err().len() < 300);
    assert!(image_reference(&huge).unwrap_err().len() < 300);
}
