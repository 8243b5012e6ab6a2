//! The whole-spec size rule: a service spec, encoded, stays within
//! [`MAX_SPEC_BYTES`], and a spec over it is refused naming the field that
//! takes the most room, so the user knows what to shrink.
//!
//! It runs after every count and length rule: each of those names its own field
//! with a specific message, and this one only catches what is within every
//! per-field bound yet too much in sum.

use prost::Message;

use super::{MAX_SPEC_BYTES, Result, fail};
use crate::v1::ServiceSpec;

/// Refuse a spec whose encoding is over [`MAX_SPEC_BYTES`].
pub(super) fn service_spec_size(spec: &ServiceSpec) -> Result {
    let total = spec.encoded_len();
    if total <= MAX_SPEC_BYTES {
        return Ok(());
    }
    let (field, largest) = field_sizes(spec)
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .unwrap_or(("name", 0));
    fail(
        field,
        format!(
            "the spec is {} encoded, over the {} limit; {field} takes {} of it",
            kib(total),
            kib(MAX_SPEC_BYTES),
            kib(largest)
        ),
    )
}

/// What each user-facing field adds to the encoded spec, named as its flag.
fn field_sizes(spec: &ServiceSpec) -> Vec<(&'static str, usize)> {
    let mut sizes = vec![("name", spec.name.len()), ("label", map_len(&spec.labels))];
    if let Some(endpoint) = &spec.endpoint {
        sizes.push(("publish", endpoint.encoded_len()));
    }
    if let Some(update) = &spec.update {
        sizes.push(("update-parallelism", update.encoded_len()));
    }
    let Some(task) = &spec.task else {
        return sizes;
    };
    if let Some(placement) = &task.placement {
        sizes.push(("constraint", strings_len(&placement.constraints)));
        let prefs: usize = placement.preferences.iter().map(|p| p.encoded_len()).sum();
        sizes.push(("placement-pref", prefs));
    }
    if let Some(c) = &task.container {
        sizes.extend([
            ("image", c.image.len()),
            ("entrypoint", strings_len(&c.command)),
            ("args", strings_len(&c.args)),
            ("env", strings_len(&c.env)),
            ("workdir", c.dir.len()),
            ("user", c.user.len()),
            ("hostname", c.hostname.len()),
            ("stop-signal", c.stop_signal.len()),
            ("container-label", map_len(&c.labels)),
            ("mount", c.mounts.iter().map(|m| m.encoded_len()).sum()),
            ("secret", c.secrets.iter().map(|r| r.encoded_len()).sum()),
            ("config", c.configs.iter().map(|r| r.encoded_len()).sum()),
        ]);
        if let Some(h) = &c.healthcheck {
            sizes.push(("health-cmd", strings_len(&h.test)));
        }
    }
    sizes
}

fn strings_len(items: &[String]) -> usize {
    items.iter().map(String::len).sum()
}

fn map_len(map: &std::collections::HashMap<String, String>) -> usize {
    map.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// `80.0 KiB`, `64 KiB`: one decimal unless it is whole.
fn kib(bytes: usize) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
