//! Spec validation and the parsers for user-facing values.
//!
//! The manager validates every spec it receives and the CLI validates the spec it
//! built before sending it, with these same functions, so a user sees the same
//! words either way. A [`SpecError`] names the field the way the user wrote it
//! (the Docker flag or spec path: `replicas`, `publish[0].target`, `mount[1].source`)
//! and says what is wrong with it.
//!
//! Every input is bounded ([`limits`](self#constants), listed with their reasons in
//! docs/LIMITS.md): counts and lengths first, each naming its own field, then the
//! size of the whole spec. An error quotes a bad value through [`quoted`], so its
//! length never follows the input's.

mod container;
mod files;
mod image;
mod limits;
mod parse;
mod size;

pub use files::{
    DEFAULT_FILE_MODE, MAX_DATA_SIZE, MAX_OBJECT_NAME_LEN, SECRETS_DIR, config_spec,
    parse_config_ref, parse_secret_ref, secret_path, secret_spec,
};
pub use image::image_reference;
pub use limits::*;
pub use parse::{
    parse_bytes, parse_cpus, parse_duration, parse_env_file, parse_label, parse_mount,
    parse_publish,
};

use std::collections::{HashMap, HashSet};

use crate::constraint;
use crate::task_spec::TaskSpec;
use crate::v1::{
    NodeAvailability, NodeRole, NodeSpec, PortProtocol, PublishMode, RestartCondition, ServiceMode,
    ServiceSpec, UpdateConfig, UpdateFailureAction, UpdateOrder,
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

/// A value as an error quotes it: in full, escaped and in double quotes, when
/// it is short; otherwise its first [`QUOTE_CHARS`] bytes (escaped) and its size,
/// `"aaaa…" (131000 bytes)`. An error must stay readable, and fit in a gRPC
/// status header, whatever the user sent.
pub fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        let escaped: String = match c {
            // `char::escape_debug` escapes a single quote, which a string does not need.
            '\'' => "'".into(),
            _ => c.escape_debug().collect(),
        };
        if out.len() - 1 + escaped.len() > QUOTE_CHARS {
            out.push_str("…\"");
            return format!("{out} ({} bytes)", value.len());
        }
        out.push_str(&escaped);
    }
    out.push('"');
    out
}

/// Refuse a list longer than `max`: `env: 100000 variables, over the limit of 1000`.
fn at_most(field: &str, len: usize, max: usize, what: &str) -> Result {
    if len > max {
        return fail(field, format!("{len} {what}, over the limit of {max}"));
    }
    Ok(())
}

/// Refuse a string longer than `max` bytes, quoting its start.
fn text(field: &str, value: &str, max: usize) -> Result {
    if value.len() > max {
        return fail(
            field,
            format!("{} is longer than the limit of {max} bytes", quoted(value)),
        );
    }
    Ok(())
}

/// A duration in milliseconds: not negative, at most [`MAX_DURATION_MS`].
fn duration(field: &str, ms: i64) -> Result {
    if ms < 0 {
        return fail(field, "must not be negative");
    }
    if ms > MAX_DURATION_MS {
        return fail(
            field,
            format!("{ms} ms is over the limit of one year ({MAX_DURATION_MS} ms)"),
        );
    }
    Ok(())
}

/// A count a spec sets (parallelism, max replicas per node, restart attempts):
/// at most `max`.
fn count(field: &str, value: u64, max: u64) -> Result {
    if value > max {
        return fail(field, format!("{value} is over the limit of {max}"));
    }
    Ok(())
}

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
    size::service_spec_size(spec)
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
            format!("{} is longer than {max_len} characters", quoted(name)),
        );
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return fail(
            "name",
            format!(
                "invalid name {}: use letters, digits, '_', '.' and '-', starting with a letter or digit",
                quoted(name)
            ),
        );
    }
    Ok(())
}

/// A label map: at most [`MAX_LABELS`] labels of bounded keys and values,
/// [`MAX_LABELS_BYTES`] in all, no empty key. Checked in key order, so the same
/// map always gets the same error.
fn labels(field: &str, labels: &HashMap<String, String>) -> Result {
    at_most(field, labels.len(), MAX_LABELS, "labels")?;
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    let mut total = 0;
    for key in keys {
        let value = &labels[key];
        if key.trim().is_empty() {
            return fail(field, "label keys must not be empty");
        }
        if key.len() > MAX_LABEL_KEY_LEN {
            return fail(
                field,
                format!(
                    "key {} is longer than the limit of {MAX_LABEL_KEY_LEN} bytes",
                    quoted(key)
                ),
            );
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            return fail(
                field,
                format!(
                    "the value of {} is {} bytes, over the limit of {MAX_LABEL_VALUE_LEN} bytes",
                    quoted(key),
                    value.len()
                ),
            );
        }
        total += key.len() + value.len();
    }
    if total > MAX_LABELS_BYTES {
        return fail(
            field,
            format!("the labels take {total} bytes, over the limit of {MAX_LABELS_BYTES} bytes"),
        );
    }
    Ok(())
}

fn task_spec(task: &TaskSpec) -> Result {
    let Some(container) = &task.container else {
        return fail("image", "an image is required");
    };
    container::container_spec(container)?;
    if let Some(resources) = &task.resources {
        container::resource_requirements(resources)?;
    }
    if let Some(restart) = &task.restart {
        if RestartCondition::try_from(restart.condition).is_err() {
            return fail(
                "restart-condition",
                "unknown condition (use none, on-failure or any)",
            );
        }
        duration("restart-delay", restart.delay_ms.unwrap_or(0))?;
        duration("restart-window", restart.window_ms)?;
        count(
            "restart-max-attempts",
            restart.max_attempts,
            MAX_RESTART_ATTEMPTS,
        )?;
    }
    if let Some(placement) = &task.placement {
        count(
            "replicas-max-per-node",
            placement.max_replicas,
            MAX_REPLICAS,
        )?;
        at_most(
            "constraint",
            placement.constraints.len(),
            MAX_CONSTRAINTS,
            "constraints",
        )?;
        for (i, c) in placement.constraints.iter().enumerate() {
            let field = format!("constraint[{i}]");
            text(&field, c, MAX_CONSTRAINT_LEN)?;
            constraint::Constraint::parse(c).map_err(|e| SpecError::new(field, e))?;
        }
        at_most(
            "placement-pref",
            placement.preferences.len(),
            MAX_PREFERENCES,
            "preferences",
        )?;
        for (i, p) in placement.preferences.iter().enumerate() {
            let field = format!("placement-pref[{i}]");
            text(&field, &p.spread_descriptor, MAX_CONSTRAINT_LEN)?;
            constraint::parse_spread(&p.spread_descriptor).map_err(|e| SpecError::new(field, e))?;
        }
    }
    Ok(())
}

fn update_config(u: &UpdateConfig) -> Result {
    count(
        "update-parallelism",
        u.parallelism.unwrap_or(0),
        MAX_REPLICAS,
    )?;
    duration("update-delay", u.delay_ms)?;
    duration("update-monitor", u.monitor_ms.unwrap_or(0))?;
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
    at_most("publish", endpoint.ports.len(), MAX_PORTS, "ports")?;
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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;
