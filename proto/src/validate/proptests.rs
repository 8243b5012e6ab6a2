//! Property tests: arbitrary specs and strings through every check and parser.
//! Nothing panics, every refusal names a known field, and no error is longer
//! than [`MAX_ERROR_LEN`] whatever the input's size.
//!
//! The strategies reach every field, with sizes around each limit (one under,
//! at, one over, and far over), negative and extreme numbers, and enum values
//! no version of the schema defines. `SHOAL_PROPTEST_CASES` sets the case count
//! (default 256, which keeps CI under a few seconds); the dedicated run is in
//! docs/LIMITS.md.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::v1::{
    ConfigReference, ConfigSpec, ContainerSpec, EndpointSpec, HealthConfig, Mount, Placement,
    PortConfig, ResourceRequirements, Resources, RestartPolicy, SecretReference, SecretSpec,
    SpreadPreference,
};

/// Longest error any check or parser may return.
const MAX_ERROR_LEN: usize = 512;

/// The fields a refusal may name, as the user knows them (flags and spec paths).
const FIELDS: &[&str] = &[
    "name",
    "mode",
    "replicas",
    "label",
    "image",
    "entrypoint",
    "args",
    "env",
    "workdir",
    "user",
    "hostname",
    "stop-signal",
    "stop-grace-period",
    "container-label",
    "mount",
    "secret",
    "config",
    "health-cmd",
    "health-interval",
    "health-timeout",
    "health-start-period",
    "health-retries",
    "limit-cpu",
    "limit-memory",
    "reserve-cpu",
    "reserve-memory",
    "restart-condition",
    "restart-delay",
    "restart-window",
    "restart-max-attempts",
    "replicas-max-per-node",
    "constraint",
    "placement-pref",
    "update-parallelism",
    "update-delay",
    "update-monitor",
    "update-order",
    "update-failure-action",
    "publish",
    "availability",
    "role",
    "data",
];

/// Sub-fields of an indexed item (`mount[2].source`).
const SUBFIELDS: &[&str] = &["target", "source", "type", "published", "protocol", "mode"];

fn cases() -> u32 {
    std::env::var("SHOAL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// `env`, `env[3]`, `mount[0].target`: a known field, an index, a known sub-field.
fn known_field(field: &str) -> bool {
    let Some((base, rest)) = field.split_once('[') else {
        return FIELDS.contains(&field);
    };
    if !FIELDS.contains(&base) {
        return false;
    }
    let Some((index, after)) = rest.split_once(']') else {
        return false;
    };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    after.is_empty()
        || after
            .strip_prefix('.')
            .is_some_and(|s| SUBFIELDS.contains(&s))
}

fn check_refusal(result: Result) -> std::result::Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(known_field(&e.field), "unknown field {:?} in {e}", e.field);
        prop_assert!(!e.message.is_empty(), "empty message for {}", e.field);
        let len = e.to_string().len();
        prop_assert!(
            len < MAX_ERROR_LEN,
            "{len}-byte error: {}",
            quoted(&e.to_string())
        );
    }
    Ok(())
}

fn check_parse<T>(
    result: std::result::Result<T, String>,
) -> std::result::Result<(), TestCaseError> {
    if let Err(e) = result {
        prop_assert!(!e.is_empty());
        prop_assert!(
            e.len() < MAX_ERROR_LEN,
            "{}-byte error: {}",
            e.len(),
            quoted(&e)
        );
    }
    Ok(())
}

/// Lengths around every string limit, and far beyond.
const LENGTHS: &[usize] = &[
    63, 64, 65, 255, 256, 257, 1024, 1025, 4096, 4097, 5184, 5185, 32768, 32769, 65537, 131_000,
];

/// A string: usually short and plausible, sometimes any short text, sometimes
/// one character repeated to a length around a limit.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_./:=@-]{0,12}",
        2 => any::<String>().prop_map(|s| s.chars().take(24).collect()),
        1 => (prop::sample::select(LENGTHS), any::<char>())
            .prop_map(|(n, c)| c.to_string().repeat(n / c.len_utf8().max(1))),
    ]
    .boxed()
}

/// A list: usually short, sometimes over a count limit (1,001 is over every
/// one). A long list repeats a small filler, so that no case allocates
/// thousands of huge strings.
fn list<T: Clone + std::fmt::Debug + 'static>(
    item: BoxedStrategy<T>,
    filler: T,
) -> BoxedStrategy<Vec<T>> {
    prop_oneof![
        20 => prop::collection::vec(item, 0..4),
        1 => prop::sample::select(&[11usize, 101, 1_001][..])
            .prop_map(move |n| vec![filler.clone(); n]),
    ]
    .boxed()
}

fn words() -> BoxedStrategy<Vec<String>> {
    list(text(), "A=1".to_string())
}

fn label_map() -> BoxedStrategy<HashMap<String, String>> {
    prop_oneof![
        20 => prop::collection::hash_map(text(), text(), 0..4),
        1 => (prop::sample::select(&[16usize, 257][..]), 0..5000usize)
            .prop_map(|(n, len)| (0..n).map(|i| (format!("k{i}"), "v".repeat(len))).collect()),
    ]
    .boxed()
}

fn int64() -> BoxedStrategy<i64> {
    prop_oneof![
        -1..100_000i64,
        any::<i64>(),
        prop::sample::select(
            &[
                i64::MIN,
                -1,
                0,
                MAX_DURATION_MS,
                MAX_DURATION_MS + 1,
                MAX_NANO_CPUS,
                MAX_NANO_CPUS + 1,
                MAX_MEMORY_BYTES,
                MAX_MEMORY_BYTES + 1,
                i64::MAX,
            ][..]
        ),
    ]
    .boxed()
}

fn uint64() -> BoxedStrategy<u64> {
    prop_oneof![
        0..1_000u64,
        any::<u64>(),
        prop::sample::select(&[MAX_REPLICAS, MAX_REPLICAS + 1, 1_000_000_000, u64::MAX][..]),
    ]
    .boxed()
}

/// An enum as the wire carries it: a defined value, or any number.
fn enum_value() -> BoxedStrategy<i32> {
    prop_oneof![4 => 0..3i32, 1 => any::<i32>()].boxed()
}

fn mount() -> BoxedStrategy<Mount> {
    (enum_value(), text(), text(), any::<bool>())
        .prop_map(|(r#type, source, target, read_only)| Mount {
            r#type,
            source,
            target: if target.len() % 2 == 0 {
                format!("/{target}")
            } else {
                target
            },
            read_only,
        })
        .boxed()
}

fn health() -> BoxedStrategy<HealthConfig> {
    (words(), int64(), int64(), any::<u32>(), int64())
        .prop_map(
            |(test, interval_ms, timeout_ms, retries, start_period_ms)| HealthConfig {
                test,
                interval_ms,
                timeout_ms,
                retries,
                start_period_ms,
            },
        )
        .boxed()
}

fn secret_ref() -> BoxedStrategy<SecretReference> {
    (text(), text(), text(), any::<u32>(), any::<Option<u32>>())
        .prop_map(
            |(secret_id, secret_name, target, uid, mode)| SecretReference {
                secret_id,
                secret_name,
                target,
                uid,
                gid: uid,
                mode,
            },
        )
        .boxed()
}

fn config_ref() -> BoxedStrategy<ConfigReference> {
    (text(), text(), text(), any::<Option<u32>>())
        .prop_map(|(config_id, config_name, target, mode)| ConfigReference {
            config_id,
            config_name,
            target: format!("/{target}"),
            mode,
            ..Default::default()
        })
        .boxed()
}

fn container() -> BoxedStrategy<ContainerSpec> {
    let words = (words(), words(), words());
    let strings = (text(), text(), text(), text(), text());
    let rest = (
        label_map(),
        list(mount(), Mount::default()),
        proptest::option::of(health()),
        proptest::option::of(int64()),
        list(secret_ref(), SecretReference::default()),
        list(config_ref(), ConfigReference::default()),
    );
    (
        prop_oneof![Just("nginx:1.27".to_string()), text()],
        words,
        strings,
        rest,
    )
        .prop_map(
            |(image, (command, args, env), (dir, user, hostname, stop_signal, _), r)| {
                ContainerSpec {
                    image,
                    command,
                    args,
                    env,
                    dir,
                    user,
                    labels: r.0,
                    mounts: r.1,
                    healthcheck: r.2,
                    stop_signal,
                    stop_grace_period_ms: r.3,
                    hostname,
                    secrets: r.4,
                    configs: r.5,
                }
            },
        )
        .boxed()
}

fn task() -> BoxedStrategy<TaskSpec> {
    let resources =
        (int64(), int64(), int64(), int64()).prop_map(|(a, b, c, d)| ResourceRequirements {
            limits: Some(Resources {
                nano_cpus: a,
                memory_bytes: b,
            }),
            reservations: Some(Resources {
                nano_cpus: c,
                memory_bytes: d,
            }),
        });
    let restart = (
        enum_value(),
        proptest::option::of(int64()),
        uint64(),
        int64(),
    )
        .prop_map(
            |(condition, delay_ms, max_attempts, window_ms)| RestartPolicy {
                condition,
                delay_ms,
                max_attempts,
                window_ms,
            },
        );
    let pref = text().prop_map(|d| SpreadPreference {
        spread_descriptor: format!("node.labels.{d}"),
    });
    let placement = (
        words(),
        list(pref.boxed(), SpreadPreference::default()),
        uint64(),
    )
        .prop_map(|(constraints, preferences, max_replicas)| Placement {
            constraints,
            preferences,
            max_replicas,
        });
    (
        proptest::option::of(container()),
        proptest::option::of(resources),
        proptest::option::of(restart),
        proptest::option::of(placement),
    )
        .prop_map(|(container, resources, restart, placement)| TaskSpec {
            container,
            resources,
            restart,
            placement,
        })
        .boxed()
}

fn service() -> BoxedStrategy<ServiceSpec> {
    let port = (enum_value(), any::<u32>(), 0..70_000u32, enum_value()).prop_map(
        |(protocol, target_port, published_port, publish_mode)| PortConfig {
            protocol,
            target_port: target_port % 70_000,
            published_port,
            publish_mode,
        },
    );
    let update = (
        proptest::option::of(uint64()),
        int64(),
        enum_value(),
        enum_value(),
        proptest::option::of(int64()),
    )
        .prop_map(
            |(parallelism, delay_ms, order, failure_action, monitor_ms)| UpdateConfig {
                parallelism,
                delay_ms,
                order,
                failure_action,
                monitor_ms,
            },
        );
    (
        prop_oneof![Just("web".to_string()), text()],
        label_map(),
        proptest::option::of(task()),
        enum_value(),
        uint64(),
        proptest::option::of(update),
        proptest::option::of(
            list(port.boxed(), PortConfig::default()).prop_map(|ports| EndpointSpec { ports }),
        ),
    )
        .prop_map(
            |(name, labels, task, mode, replicas, update, endpoint)| ServiceSpec {
                name,
                labels,
                task: task.map(Into::into),
                mode,
                replicas,
                update,
                endpoint,
            },
        )
        .boxed()
}

/// Text shaped like the values the parsers take, and any text.
fn parser_input() -> BoxedStrategy<String> {
    prop_oneof![
        "[0-9.]{0,25}(ns|us|µs|ms|s|m|h|k|kb|m|g|gib|t|p|pb|x)?([0-9.]{0,25}(s|ms|h))?",
        "[0-9]{0,6}(:[0-9]{0,6})?(/(tcp|udp|x))?",
        "((type|source|src|target|dst|readonly|ro|mode|published|protocol|uid|gid|x)(=[a-z0-9/.]{0,6})?,?){0,5}",
        "(node\\.(id|hostname|role|labels\\.[a-z]{0,4}|x)|[a-z ]{0,3})( ?(==|!=|=) ?[a-z=!]{0,5})?",
        "[A-Za-z_ =#\n\t\u{0}\u{feff}]{0,40}",
        text(),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn service_specs_are_refused_by_field(spec in service()) {
        check_refusal(service_spec(&spec))?;
    }

    #[test]
    fn node_secret_and_config_specs_are_refused_by_field(
        name in text(),
        labels in label_map(),
        // Mostly small values: a 500 KiB value per case would make the
        // dedicated run mostly memset.
        data_len in prop_oneof![
            8 => 0..3usize,
            1 => prop::sample::select(&[MAX_DATA_SIZE, MAX_DATA_SIZE + 1][..]),
        ],
        role in enum_value(),
        availability in enum_value(),
    ) {
        check_refusal(node_spec(&NodeSpec { labels: labels.clone(), role, availability }))?;
        let secret = SecretSpec { name, labels, data: vec![0u8; data_len] };
        check_refusal(secret_spec(&secret))?;
        let SecretSpec { name, labels, data } = secret;
        check_refusal(config_spec(&ConfigSpec { name, labels, data }))?;
    }

    #[test]
    fn parsers_never_panic_and_errors_stay_short(input in parser_input()) {
        check_parse(parse_duration(&input))?;
        check_parse(parse_bytes(&input))?;
        check_parse(parse_cpus(&input))?;
        check_parse(parse_publish(&input))?;
        check_parse(parse_mount(&input))?;
        check_parse(parse_label(&input))?;
        check_parse(parse_env_file(&input))?;
        check_parse(parse_secret_ref(&input))?;
        check_parse(parse_config_ref(&input))?;
        check_parse(crate::constraint::Constraint::parse(&input))?;
        check_parse(crate::constraint::parse_spread(&input))?;
        check_parse(image_reference(&input))?;
    }
}

#[test]
fn field_names_are_recognised() {
    for good in ["env", "env[3]", "mount[0].target", "publish[12].published"] {
        assert!(known_field(good), "{good}");
    }
    for bad in ["", "spec", "env[", "env[x]", "mount[0].nope", "env[1]x"] {
        assert!(!known_field(bad), "{bad}");
    }
}
