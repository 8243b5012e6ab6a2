//! What a task runs: the container spec (image, command, environment, mounts,
//! health check, files) and its resources. Counts are checked before items, so
//! a 100,000-entry environment is refused in one step, not item by item.

use super::{
    MAX_ARGS, MAX_ENV, MAX_FILE_REFS, MAX_HEALTH_RETRIES, MAX_HOSTNAME_LEN, MAX_ITEM_LEN,
    MAX_MEMORY_BYTES, MAX_MOUNTS, MAX_NANO_CPUS, MAX_PATH_LEN, MAX_SHORT_LEN, Result, SpecError,
    at_most, duration, fail, files, image_reference, labels, quoted, text,
};
use crate::v1::{ContainerSpec, HealthConfig, Mount, MountType, ResourceRequirements};

pub(super) fn container_spec(c: &ContainerSpec) -> Result {
    image_reference(&c.image).map_err(|e| SpecError::new("image", e))?;
    items("entrypoint", &c.command, MAX_ARGS)?;
    items("args", &c.args, MAX_ARGS)?;
    env(&c.env)?;
    text("workdir", &c.dir, MAX_PATH_LEN)?;
    text("user", &c.user, MAX_SHORT_LEN)?;
    text("hostname", &c.hostname, MAX_HOSTNAME_LEN)?;
    text("stop-signal", &c.stop_signal, MAX_SHORT_LEN)?;
    labels("container-label", &c.labels)?;
    at_most("mount", c.mounts.len(), MAX_MOUNTS, "mounts")?;
    for (i, m) in c.mounts.iter().enumerate() {
        mount(i, m)?;
    }
    if let Some(health) = &c.healthcheck {
        healthcheck(health)?;
    }
    if let Some(grace) = c.stop_grace_period_ms {
        duration("stop-grace-period", grace)?;
    }
    at_most("secret", c.secrets.len(), MAX_FILE_REFS, "secrets")?;
    at_most("config", c.configs.len(), MAX_FILE_REFS, "configs")?;
    files::references(&c.secrets, &c.configs)
}

/// A list of command-line words: at most `max` of them, each at most
/// [`MAX_ITEM_LEN`] bytes.
fn items(field: &str, items: &[String], max: usize) -> Result {
    at_most(field, items.len(), max, "items")?;
    for (i, item) in items.iter().enumerate() {
        text(&format!("{field}[{i}]"), item, MAX_ITEM_LEN)?;
    }
    Ok(())
}

fn env(env: &[String]) -> Result {
    at_most("env", env.len(), MAX_ENV, "variables")?;
    for (i, entry) in env.iter().enumerate() {
        let field = format!("env[{i}]");
        text(&field, entry, MAX_ITEM_LEN)?;
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        if key.is_empty() {
            return fail(
                field,
                format!("{} has an empty variable name", quoted(entry)),
            );
        }
        if entry.contains('\0') {
            return fail(field, "contains a NUL byte");
        }
    }
    Ok(())
}

fn mount(i: usize, m: &Mount) -> Result {
    let field = |f: &str| format!("mount[{i}].{f}");
    text(&field("target"), &m.target, MAX_PATH_LEN)?;
    text(&field("source"), &m.source, MAX_PATH_LEN)?;
    if m.target.is_empty() {
        return fail(field("target"), "a target path is required");
    }
    if !m.target.starts_with('/') {
        return fail(
            field("target"),
            format!("{} is not an absolute path", quoted(&m.target)),
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
                    format!("{} is not an absolute path", quoted(&m.source)),
                );
            }
        }
        Ok(MountType::Volume) => {
            if !m.source.is_empty() && !volume_name(&m.source) {
                return fail(
                    field("source"),
                    format!(
                        "invalid volume name {}: use letters, digits, '_', '.' and '-'",
                        quoted(&m.source)
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
    Ok(())
}

fn volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn healthcheck(h: &HealthConfig) -> Result {
    duration("health-interval", h.interval_ms)?;
    duration("health-timeout", h.timeout_ms)?;
    duration("health-start-period", h.start_period_ms)?;
    if h.retries > MAX_HEALTH_RETRIES {
        return fail(
            "health-retries",
            format!(
                "{} is over the limit of {MAX_HEALTH_RETRIES} retries",
                h.retries
            ),
        );
    }
    items("health-cmd", &h.test, MAX_ARGS)?;
    match h.test.first().map(String::as_str) {
        // No test: inherit the image's HEALTHCHECK with these timings.
        None => Ok(()),
        Some("NONE") => Ok(()),
        Some("CMD" | "CMD-SHELL") if h.test.len() > 1 && !h.test[1].trim().is_empty() => Ok(()),
        Some("CMD" | "CMD-SHELL") => fail("health-cmd", "the health command is empty"),
        Some(other) => fail(
            "health-cmd",
            format!(
                "test must start with CMD, CMD-SHELL or NONE, not {}",
                quoted(other)
            ),
        ),
    }
}

pub(super) fn resource_requirements(r: &ResourceRequirements) -> Result {
    let limits = r.limits.unwrap_or_default();
    let reservations = r.reservations.unwrap_or_default();
    cpus("limit-cpu", limits.nano_cpus)?;
    memory("limit-memory", limits.memory_bytes)?;
    cpus("reserve-cpu", reservations.nano_cpus)?;
    memory("reserve-memory", reservations.memory_bytes)?;
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

fn cpus(field: &str, nano_cpus: i64) -> Result {
    if nano_cpus < 0 {
        return fail(field, "must not be negative");
    }
    if nano_cpus > MAX_NANO_CPUS {
        return fail(
            field,
            format!(
                "{} CPUs is over the limit of {} CPUs",
                nano_cpus as f64 / 1e9,
                MAX_NANO_CPUS / 1_000_000_000
            ),
        );
    }
    Ok(())
}

fn memory(field: &str, bytes: i64) -> Result {
    if bytes < 0 {
        return fail(field, "must not be negative");
    }
    if bytes > MAX_MEMORY_BYTES {
        return fail(
            field,
            format!(
                "{bytes} bytes is over the limit of {MAX_MEMORY_BYTES} bytes ({} TiB)",
                MAX_MEMORY_BYTES >> 40
            ),
        );
    }
    Ok(())
}
