//! Secrets and configs: their specs, the references a container spec makes to
//! them, and the `--secret` / `--config` flag syntax (Docker's:
//! `NAME` or `source=NAME,target=T,uid=U,gid=G,mode=0400`).
//!
//! A secret becomes the file `/run/secrets/<target>` in the container, so its
//! target is a plain file name; a config goes wherever its absolute target
//! says. Two references of one spec never share a target.

use std::collections::HashSet;

use super::{MAX_PATH_LEN, MAX_SHORT_LEN, Result, SpecError, fail, quoted, text};
use crate::v1::{ConfigReference, ConfigSpec, SecretReference, SecretSpec};

/// Largest secret or config value, as in Docker (500 KiB).
pub const MAX_DATA_SIZE: usize = 500 * 1024;

/// Longest secret or config name, as in Docker.
pub const MAX_OBJECT_NAME_LEN: usize = 64;

/// Where secrets appear in a container.
pub const SECRETS_DIR: &str = "/run/secrets";

/// File mode of a secret or config file when the reference sets none (Docker's).
pub const DEFAULT_FILE_MODE: u32 = 0o444;

/// Check a new secret: name, labels, value size.
pub fn secret_spec(spec: &SecretSpec) -> Result {
    object_name("secret", &spec.name)?;
    super::labels("label", &spec.labels)?;
    data_size("secret", spec.data.len())
}

/// Check a new config: name, labels, value size.
pub fn config_spec(spec: &ConfigSpec) -> Result {
    object_name("config", &spec.name)?;
    super::labels("label", &spec.labels)?;
    data_size("config", spec.data.len())
}

/// Docker's rule for secret and config names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`,
/// at most 64 characters.
fn object_name(kind: &str, name: &str) -> Result {
    super::docker_name(kind, name, MAX_OBJECT_NAME_LEN)
}

fn data_size(kind: &str, len: usize) -> Result {
    if len == 0 {
        return fail("data", format!("the {kind} is empty"));
    }
    if len > MAX_DATA_SIZE {
        return fail(
            "data",
            format!(
                "the {kind} is {len} bytes, more than the limit of {MAX_DATA_SIZE} bytes (500 KiB)"
            ),
        );
    }
    Ok(())
}

/// The path in the container of a secret reference's file.
pub fn secret_path(reference: &SecretReference) -> String {
    format!("{SECRETS_DIR}/{}", reference.target)
}

/// Check the secret and config references of a container spec.
pub(super) fn references(secrets: &[SecretReference], configs: &[ConfigReference]) -> Result {
    let mut targets: HashSet<String> = HashSet::new();
    for (i, r) in secrets.iter().enumerate() {
        let field = |f: &str| format!("secret[{i}].{f}");
        if r.secret_name.is_empty() && r.secret_id.is_empty() {
            return fail(field("source"), "the secret's name is required");
        }
        text(&field("source"), &r.secret_name, MAX_OBJECT_NAME_LEN)?;
        text(&field("source"), &r.secret_id, MAX_OBJECT_NAME_LEN)?;
        let t = &r.target;
        text(&field("target"), t, MAX_SHORT_LEN)?;
        if t.is_empty() {
            return fail(field("target"), "a file name is required");
        }
        if t.contains('/') || t == "." || t == ".." || t.contains('\0') {
            return fail(
                field("target"),
                format!(
                    "{} must be a file name without '/' (the file is {SECRETS_DIR}/<target>)",
                    quoted(t)
                ),
            );
        }
        mode(&field("mode"), r.mode)?;
        if !targets.insert(secret_path(r)) {
            return fail(
                field("target"),
                format!(
                    "another secret or config is already mounted at {}",
                    quoted(t)
                ),
            );
        }
    }
    for (i, r) in configs.iter().enumerate() {
        let field = |f: &str| format!("config[{i}].{f}");
        if r.config_name.is_empty() && r.config_id.is_empty() {
            return fail(field("source"), "the config's name is required");
        }
        text(&field("source"), &r.config_name, MAX_OBJECT_NAME_LEN)?;
        text(&field("source"), &r.config_id, MAX_OBJECT_NAME_LEN)?;
        let t = &r.target;
        text(&field("target"), t, MAX_PATH_LEN)?;
        if !t.starts_with('/') {
            return fail(
                field("target"),
                format!("{} is not an absolute path", quoted(t)),
            );
        }
        if t.ends_with('/') || t.contains('\0') || t.split('/').any(|c| c == "..") {
            return fail(
                field("target"),
                format!("{} must name a file (no trailing '/', no '..')", quoted(t)),
            );
        }
        mode(&field("mode"), r.mode)?;
        if !targets.insert(t.clone()) {
            return fail(
                field("target"),
                format!(
                    "another secret or config is already mounted at {}",
                    quoted(t)
                ),
            );
        }
    }
    Ok(())
}

fn mode(field: &str, mode: Option<u32>) -> Result {
    match mode {
        Some(m) if m > 0o777 => Err(SpecError::new(
            field,
            format!("{m:#o} is not a file mode (at most 0777)"),
        )),
        _ => Ok(()),
    }
}

/// The fields of `--secret` / `--config`.
struct RefFields {
    source: String,
    target: Option<String>,
    uid: u32,
    gid: u32,
    mode: Option<u32>,
}

/// Parse `--secret`: `NAME` or `source=NAME[,target=FILE][,uid=U][,gid=G][,mode=0400]`.
/// The target defaults to the name.
pub fn parse_secret_ref(input: &str) -> std::result::Result<SecretReference, String> {
    let f = parse_ref_fields(input)?;
    Ok(SecretReference {
        secret_id: String::new(),
        target: f.target.unwrap_or_else(|| f.source.clone()),
        secret_name: f.source,
        uid: f.uid,
        gid: f.gid,
        mode: f.mode,
    })
}

/// Parse `--config`: like `--secret`; the target defaults to `/<name>`.
pub fn parse_config_ref(input: &str) -> std::result::Result<ConfigReference, String> {
    let f = parse_ref_fields(input)?;
    Ok(ConfigReference {
        config_id: String::new(),
        target: f.target.unwrap_or_else(|| format!("/{}", f.source)),
        config_name: f.source,
        uid: f.uid,
        gid: f.gid,
        mode: f.mode,
    })
}

fn parse_ref_fields(input: &str) -> std::result::Result<RefFields, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty reference (use NAME, NAME,target=... or source=NAME,target=...)".into());
    }
    let mut fields = RefFields {
        source: String::new(),
        target: None,
        uid: 0,
        gid: 0,
        mode: None,
    };
    if !s.contains('=') {
        if s.contains(',') {
            return Err(format!(
                "invalid reference {}: use source=NAME,target=...",
                quoted(s)
            ));
        }
        fields.source = s.to_string();
        return Ok(fields);
    }
    for (i, part) in s.split(',').enumerate() {
        // `NAME,target=...`: a bare first field is the source.
        if i == 0 && !part.contains('=') {
            fields.source = part.trim().to_string();
            continue;
        }
        let (key, value) = part
            .split_once('=')
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
            .ok_or_else(|| format!("invalid field {}: expected key=value", quoted(part)))?;
        match key.as_str() {
            "source" | "src" => fields.source = value.to_string(),
            "target" => fields.target = Some(value.to_string()),
            "uid" => fields.uid = id_number("uid", value)?,
            "gid" => fields.gid = id_number("gid", value)?,
            "mode" => {
                let m = u32::from_str_radix(value, 8).map_err(|_| {
                    format!(
                        "invalid mode {}: use octal digits, e.g. 0400",
                        quoted(value)
                    )
                })?;
                fields.mode = Some(m);
            }
            other => {
                return Err(format!(
                    "unknown option {} (supported: source, target, uid, gid, mode)",
                    quoted(other)
                ));
            }
        }
    }
    if fields.source.is_empty() {
        return Err("missing source (e.g. source=db-password)".into());
    }
    if fields.target.as_deref() == Some("") {
        return Err("target is empty".into());
    }
    Ok(fields)
}

/// A numeric uid or gid (names cannot be resolved outside the container).
fn id_number(what: &str, value: &str) -> std::result::Result<u32, String> {
    value
        .parse()
        .map_err(|_| format!("invalid {what} {}: use a number", quoted(value)))
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
