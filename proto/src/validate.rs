//! Spec validation and the parsers for user-facing values.
//!
//! The manager validates every spec it receives and the CLI validates the spec it
//! built before sending it, with these same functions, so a user sees the same
//! words either way. A [`SpecError`] names the field the way the user wrote it
//! (the Docker flag or spec path: `replicas`, `publish[0].target`, `mount[1].source`)
//! and says what is wrong with it.

mod files;
mod parse;

pub use files::{
    DEFAULT_FILE_MODE, MAX_DATA_SIZE, MAX_OBJECT_NAME_LEN, SECRETS_DIR, config_spec,
    parse_config_ref, parse_secret_ref, secret_path, secret_spec,
};
pub use parse::{
    parse_bytes, parse_cpus, parse_duration, parse_env_file, parse_label, parse_mount,
    parse_publish,
};

use std::collections::{HashMap, HashSet};

use crate::constraint;
use crate::spec::TaskSpec;
use crate::v1::{
    ContainerSpec, HealthConfig, MountType, NodeAvailability, NodeRole, NodeSpec, PortProtocol,
    PublishMode, ResourceRequirements, RestartCondition, ServiceMode, ServiceSpec, UpdateConfig,
    UpdateFailureAction, UpdateOrder,
};

/// A spec field with a bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The flag or spec path, e.g. `publish[0].target`.
    pub field: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, SpecError>;

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(SpecError::new(field, message))
}

/// Maximum length of a service name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Most replicas one service may ask for. The orchestrator and the store hold a
/// task per replica, so this bounds what one spec can make the manager allocate;
/// the manager is measured at 1,000 nodes x 100,000 tasks of one service.
pub const MAX_REPLICAS: u64 = 100_000;

/// Check a service spec before it is stored or sent.
pub fn service_spec(spec: &ServiceSpec) -> Result {
    name(&spec.name)?;
    match ServiceMode::try_from(spec.mode) {
        Ok(ServiceMode::Global) if spec.replicas != 0 => {
            return fail("replicas", "cannot be set for a global service");
        }
        Ok(_) if spec.replicas > MAX_REPLICAS => {
            return fail(
                "replicas",
                format!(
                    "{} is over the limit of {MAX_REPLICAS} replicas per service",
                    spec.replicas
                ),
            );
        }
        Ok(_) => {}
        Err(_) => {
            return fail(
                "mode",
                format!("unknown mode {} (use replicated or global)", spec.mode),
            );
        }
    }
    labels("label", &spec.labels)?;
    let Some(task) = &spec.task else {
        return fail("image", "an image is required");
    };
    task_spec(task)?;
    if let Some(update) = &spec.update {
        update_config(update)?;
    }
    if let Some(endpoint) = &spec.endpoint {
        ports(endpoint)?;
    }
    Ok(())
}

/// Check a node spec (`shoal node update`).
pub fn node_spec(spec: &NodeSpec) -> Result {
    if NodeAvailability::try_from(spec.availability).is_err() {
        return fail(
            "availability",
            "unknown availability (use active, pause or drain)",
        );
    }
    if NodeRole::try_from(spec.role).is_err() {
        return fail("role", "unknown role (use worker or manager)");
    }
    labels("label", &spec.labels)
}

/// Docker's rule for service names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63 characters.
fn name(name: &str) -> Result {
    docker_name("service", name, MAX_NAME_LEN)
}

/// Docker's rule for object names (`kind` says which, for the message):
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most `max_len` characters.
fn docker_name(kind: &str, name: &str, max_len: usize) -> Result {
    if name.is_empty() {
        return fail("name", format!("a {kind} name is required"));
    }
    if name.len() > max_len {
        return fail(
            "name",
            format!("{name:?} is longer than {max_len} characters"),
        );
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return fail(
            "name",
            format!(
                "invalid name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
            ),
        );
    }
    Ok(())
}

fn labels(field: &str, labels: &HashMap<String, String>) -> Result {
    if labels.keys().any(|k| k.trim().is_empty()) {
        return fail(field, "label keys must not be empty");
    }
    Ok(())
}

fn task_spec(task: &TaskSpec) -> Result {
    let Some(container) = &task.container else {
        return fail("image", "an image is required");
    };
    container_spec(container)?;
    if let Some(resources) = &task.resources {
        resource_requirements(resources)?;
    }
    if let Some(restart) = &task.restart {
        if RestartCondition::try_from(restart.condition).is_err() {
            return fail(
                "restart-condition",
                "unknown condition (use none, on-failure or any)",
            );
        }
        non_negative("restart-delay", restart.delay_ms.unwrap_or(0))?;
        non_negative("restart-window", restart.window_ms)?;
    }
    if let Some(placement) = &task.placement {
        for (i, c) in placement.constraints.iter().enumerate() {
            constraint::Constraint::parse_all(std::slice::from_ref(c))
                .map_err(|e| SpecError::new(format!("constraint[{i}]"), e))?;
        }
        for (i, p) in placement.preferences.iter().enumerate() {
            constraint::parse_spread(&p.spread_descriptor)
                .map_err(|e| SpecError::new(format!("placement-pref[{i}]"), e))?;
        }
    }
    Ok(())
}

fn container_spec(c: &ContainerSpec) -> Result {
    image_reference(&c.image).map_err(|e| SpecError::new("image", e))?;
    for (i, entry) in c.env.iter().enumerate() {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        if key.is_empty() {
            return fail(
                format!("env[{i}]"),
                format!("{entry:?} has an empty variable name"),
            );
        }
        if entry.contains('\0') {
            return fail(format!("env[{i}]"), "contains a NUL byte");
        }
    }
    labels("container-label", &c.labels)?;
    for (i, m) in c.mounts.iter().enumerate() {
        let field = |f: &str| format!("mount[{i}].{f}");
        if m.target.is_empty() {
            return fail(field("target"), "a target path is required");
        }
        if !m.target.starts_with('/') {
            return fail(
                field("target"),
                format!("{:?} is not an absolute path", m.target),
            );
        }
        match MountType::try_from(m.r#type) {
            Ok(MountType::Bind) => {
                if m.source.is_empty() {
                    return fail(field("source"), "a bind mount needs a source path");
                }
                if !m.source.starts_with('/') {
                    return fail(
                        field("source"),
                        format!("{:?} is not an absolute path", m.source),
                    );
                }
            }
            Ok(MountType::Volume) => {
                if !m.source.is_empty() && !volume_name(&m.source) {
                    return fail(
                        field("source"),
                        format!(
                            "invalid volume name {:?}: use letters, digits, '_', '.' and '-'",
                            m.source
                        ),
                    );
                }
            }
            Ok(MountType::Tmpfs) => {
                if !m.source.is_empty() {
                    return fail(field("source"), "a tmpfs mount takes no source");
                }
            }
            Err(_) => return fail(field("type"), "unknown type (use bind, volume or tmpfs)"),
        }
    }
    if let Some(health) = &c.healthcheck {
        healthcheck(health)?;
    }
    if let Some(grace) = c.stop_grace_period_ms {
        non_negative("stop-grace-period", grace)?;
    }
    files::references(&c.secrets, &c.configs)
}

fn volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn healthcheck(h: &HealthConfig) -> Result {
    non_negative("health-interval", h.interval_ms)?;
    non_negative("health-timeout", h.timeout_ms)?;
    non_negative("health-start-period", h.start_period_ms)?;
    match h.test.first().map(String::as_str) {
        // No test: inherit the image's HEALTHCHECK with these timings.
        None => Ok(()),
        Some("NONE") => Ok(()),
        Some("CMD" | "CMD-SHELL") if h.test.len() > 1 && !h.test[1].trim().is_empty() => Ok(()),
        Some("CMD" | "CMD-SHELL") => fail("health-cmd", "the health command is empty"),
        Some(other) => fail(
            "health-cmd",
            format!("test must start with CMD, CMD-SHELL or NONE, not {other:?}"),
        ),
    }
}

fn resource_requirements(r: &ResourceRequirements) -> Result {
    let limits = r.limits.unwrap_or_default();
    let reservations = r.reservations.unwrap_or_default();
    non_negative("limit-cpu", limits.nano_cpus)?;
    non_negative("limit-memory", limits.memory_bytes)?;
    non_negative("reserve-cpu", reservations.nano_cpus)?;
    non_negative("reserve-memory", reservations.memory_bytes)?;
    // Zero means "not set" for both.
    if limits.nano_cpus > 0 && reservations.nano_cpus > limits.nano_cpus {
        return fail(
            "reserve-cpu",
            format!(
                "the reservation ({} CPUs) exceeds the limit ({} CPUs)",
                reservations.nano_cpus as f64 / 1e9,
                limits.nano_cpus as f64 / 1e9
            ),
        );
    }
    if limits.memory_bytes > 0 && reservations.memory_bytes > limits.memory_bytes {
        return fail(
            "reserve-memory",
            format!(
                "the reservation ({} bytes) exceeds the limit ({} bytes)",
                reservations.memory_bytes, limits.memory_bytes
            ),
        );
    }
    Ok(())
}

fn update_config(u: &UpdateConfig) -> Result {
    non_negative("update-delay", u.delay_ms)?;
    non_negative("update-monitor", u.monitor_ms.unwrap_or(0))?;
    if UpdateOrder::try_from(u.order).is_err() {
        return fail(
            "update-order",
            "unknown order (use start-first or stop-first)",
        );
    }
    if UpdateFailureAction::try_from(u.failure_action).is_err() {
        return fail(
            "update-failure-action",
            "unknown action (use pause or continue)",
        );
    }
    Ok(())
}

fn ports(endpoint: &crate::v1::EndpointSpec) -> Result {
    let mut seen = HashSet::new();
    for (i, p) in endpoint.ports.iter().enumerate() {
        let field = |f: &str| format!("publish[{i}].{f}");
        if !(1..=65535).contains(&p.target_port) {
            return fail(
                field("target"),
                format!("port {} is out of range (1-65535)", p.target_port),
            );
        }
        if p.published_port > 65535 {
            return fail(
                field("published"),
                format!("port {} is out of range (0-65535)", p.published_port),
            );
        }
        let protocol = PortProtocol::try_from(p.protocol)
            .map_err(|_| SpecError::new(field("protocol"), "unknown protocol (use tcp or udp)"))?;
        let mode = PublishMode::try_from(p.publish_mode)
            .map_err(|_| SpecError::new(field("mode"), "unknown mode (use ingress or host)"))?;
        if p.published_port == 0 {
            if mode != PublishMode::Host {
                return fail(
                    field("published"),
                    "a published port is required in ingress mode (or use mode=host to let the engine choose one)",
                );
            }
            continue;
        }
        if !seen.insert((p.published_port, protocol)) {
            return fail(
                format!("publish[{i}]"),
                format!(
                    "port {}/{} is published more than once",
                    p.published_port,
                    protocol
                        .as_str_name()
                        .trim_start_matches("PORT_PROTOCOL_")
                        .to_lowercase()
                ),
            );
        }
    }
    Ok(())
}

fn non_negative(field: &str, value: i64) -> Result {
    if value < 0 {
        return fail(field, "must not be negative");
    }
    Ok(())
}

/// Check an image reference the way Docker's `reference` package does:
/// `[DOMAIN[:PORT]/]PATH[:TAG][@sha256:DIGEST]`, with lowercase path components.
pub fn image_reference(image: &str) -> std::result::Result<(), String> {
    if image.is_empty() {
        return Err("an image is required".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("invalid reference {image:?}: contains whitespace"));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !valid {
            return Err(format!(
                "invalid digest {digest:?} (expected sha256: and 64 lowercase hex digits)"
            ));
        }
    }
    // The tag is after the last ':' that follows the last '/' (a ':' before a '/'
    // belongs to a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let ok = tag.len() <= 128
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(format!("invalid tag {tag:?} in {image:?}"));
        }
    }
    if name.is_empty() {
        return Err(format!(
            "invalid reference {image:?}: the repository name is empty"
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "invalid reference {image:?}: the repository name is longer than 255 characters"
        ));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            domain(first).map_err(|e| format!("invalid registry {first:?} in {image:?}: {e}"))?;
            components.remove(0);
        }
    }
    for component in components {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "invalid reference {image:?}: repository names must be lowercase"
            ));
        }
        if !path_component(component) {
            return Err(format!(
                "invalid reference {image:?}: {component:?} is not a valid repository name component"
            ));
        }
    }
    Ok(())
}

fn domain(domain: &str) -> std::result::Result<(), String> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("invalid port {port:?}"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err("invalid host name".into());
    }
    Ok(())
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
