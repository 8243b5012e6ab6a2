//! Parsers for the values users type on the command line (`5s`, `512m`, `0.5`,
//! `8080:80/udp`, `type=bind,source=/a,target=/b`). They follow Docker's syntax
//! so a Docker user's flags work unchanged, and return plain-word errors that the
//! caller prefixes with the flag name.

use super::{MAX_DURATION_MS, MAX_MEMORY_BYTES, MAX_NANO_CPUS, quoted};
use crate::v1::{Mount, MountType, PortConfig, PortProtocol, PublishMode};

/// Parse a Go-style duration (`300ms`, `5s`, `1m30s`, `1.5h`) into milliseconds.
///
/// Units: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. A bare `0` is accepted;
/// any other number needs a unit. Sub-millisecond remainders are truncated.
pub fn parse_duration(input: &str) -> Result<i64, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration (use e.g. 5s, 300ms or 1m30s)".into());
    }
    if s.starts_with('-') {
        return Err(format!("duration {} must not be negative", quoted(input)));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(num_len);
        if number.is_empty() || number == "." {
            return Err(format!(
                "invalid duration {} (use e.g. 5s, 300ms or 1m30s)",
                quoted(input)
            ));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                // The number itself makes the example, unless it is absurdly long.
                let example = if number.len() <= 20 { number } else { "5" };
                return Err(format!(
                    "missing unit in duration {} (use e.g. {example}s or {example}ms)",
                    quoted(input)
                ));
            }
            other => {
                return Err(format!(
                    "unknown unit {} in duration {} (units: ns, us, ms, s, m, h)",
                    quoted(other),
                    quoted(input)
                ));
            }
        };
        let (whole, frac) = split_decimal(number).ok_or_else(|| {
            format!(
                "invalid number {} in duration {}",
                quoted(number),
                quoted(input)
            )
        })?;
        let mut part = whole
            .checked_mul(unit_ns)
            .ok_or_else(|| format!("duration {} is too large", quoted(input)))?;
        if !frac.is_empty() {
            // Exact decimal arithmetic: "0.3s" must be 300 ms, not 299.999...
            // 20 digits are far below a nanosecond of any unit and keep the
            // product within u128.
            let digits = frac.len().min(20) as u32;
            let frac_value: u128 = frac[..digits as usize].parse().map_err(|_| {
                format!(
                    "invalid number {} in duration {}",
                    quoted(number),
                    quoted(input)
                )
            })?;
            part += frac_value * unit_ns / 10u128.pow(digits);
        }
        total_ns = total_ns
            .checked_add(part)
            .ok_or_else(|| format!("duration {} is too large", quoted(input)))?;
        rest = next;
    }
    let ms = total_ns / 1_000_000;
    if ms > MAX_DURATION_MS as u128 {
        return Err(format!(
            "duration {} is over the limit of one year",
            quoted(input)
        ));
    }
    Ok(ms as i64)
}

/// Split `"12.5"` into `(12, "5")`; `None` when it is not a plain decimal.
fn split_decimal(number: &str) -> Option<(u128, &str)> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if frac.contains('.') || (whole.is_empty() && frac.is_empty()) {
        return None;
    }
    let whole_value = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    Some((whole_value, frac))
}

/// Parse a size like Docker's `--memory`: `1024`, `100k`, `512m`, `1g`, `2GiB`,
/// `1.5g`. Units b, k, m, g, t, p are binary multiples (k = 1024); an optional
/// `b` or `ib` may follow the unit.
pub fn parse_bytes(input: &str) -> Result<i64, String> {
    let s = input.trim();
    let bad = || {
        format!(
            "invalid size {} (use e.g. 512m, 1g or a number of bytes)",
            quoted(input)
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    if s.starts_with('-') {
        return Err(format!("size {} must not be negative", quoted(input)));
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (body, suffix) = s.split_at(num_end);
    // Docker accepts one space between the number and the unit ("1 GiB").
    let suffix = suffix
        .strip_prefix(' ')
        .unwrap_or(suffix)
        .to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(bad()),
    };
    let (whole, frac) = split_decimal(body).ok_or_else(bad)?;
    let unit: u128 = 1u128 << shift;
    let mut total = whole
        .checked_mul(unit)
        .ok_or_else(|| format!("size {} is too large", quoted(input)))?;
    if !frac.is_empty() {
        let digits = frac.len().min(20) as u32;
        let frac_value: u128 = frac[..digits as usize].parse().map_err(|_| bad())?;
        total = total
            .checked_add(frac_value * unit / 10u128.pow(digits))
            .ok_or_else(|| format!("size {} is too large", quoted(input)))?;
    }
    if total > MAX_MEMORY_BYTES as u128 {
        return Err(format!(
            "size {} is over the limit of {} TiB",
            quoted(input),
            MAX_MEMORY_BYTES >> 40
        ));
    }
    Ok(total as i64)
}

/// Parse a number of CPUs (`0.5`, `2`) into nano-CPUs (1e9 = one CPU).
pub fn parse_cpus(input: &str) -> Result<i64, String> {
    let s = input.trim();
    if s.starts_with('-') {
        return Err(format!("CPU count {} must not be negative", quoted(input)));
    }
    let bad = || format!("invalid CPU count {} (use e.g. 0.5 or 2)", quoted(input));
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return Err(bad());
    }
    let (whole, frac) = split_decimal(s).ok_or_else(bad)?;
    if frac.len() > 9 {
        return Err(format!(
            "CPU count {} is too precise (at most 9 decimals)",
            quoted(input)
        ));
    }
    let frac_nanos: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().map_err(|_| bad())? * 10u128.pow(9 - frac.len() as u32)
    };
    let total = whole
        .checked_mul(1_000_000_000)
        .and_then(|w| w.checked_add(frac_nanos))
        .ok_or_else(|| format!("CPU count {} is too large", quoted(input)))?;
    if total > MAX_NANO_CPUS as u128 {
        return Err(format!(
            "CPU count {} is over the limit of {} CPUs",
            quoted(input),
            MAX_NANO_CPUS / 1_000_000_000
        ));
    }
    Ok(total as i64)
}

/// Parse a `--publish` value.
///
/// Short form `[PUBLISHED:]TARGET[/PROTOCOL]`; a bare target (`80`) publishes in
/// host mode on a port the engine chooses, since ingress mode needs an explicit
/// published port here. Long form: `published=8080,target=80,mode=host,protocol=udp`.
pub fn parse_publish(input: &str) -> Result<PortConfig, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty port specification (use e.g. 8080:80)".into());
    }
    if s.contains('=') {
        return parse_publish_long(s);
    }
    let (ports, protocol) = match s.split_once('/') {
        Some((p, proto)) => (p, parse_protocol(proto)?),
        None => (s, PortProtocol::Tcp),
    };
    let (published, target, mode) = match ports.split_once(':') {
        Some((published, target)) => {
            if target.contains(':') {
                return Err(format!(
                    "invalid port specification {}: binding to a host IP is not supported (use PUBLISHED:TARGET)",
                    quoted(input)
                ));
            }
            (
                parse_port(published, "published")?,
                parse_port(target, "target")?,
                PublishMode::Ingress,
            )
        }
        None => (0, parse_port(ports, "target")?, PublishMode::Host),
    };
    Ok(PortConfig {
        protocol: protocol as i32,
        target_port: target,
        published_port: published,
        publish_mode: mode as i32,
    })
}

fn parse_publish_long(s: &str) -> Result<PortConfig, String> {
    let mut port = PortConfig::default();
    let mut target_seen = false;
    for field in s.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid field {}: expected key=value", quoted(field)))?;
        match key.trim().to_ascii_lowercase().as_str() {
            "published" => port.published_port = parse_port(value, "published")?,
            "target" => {
                port.target_port = parse_port(value, "target")?;
                target_seen = true;
            }
            "protocol" => port.protocol = parse_protocol(value)? as i32,
            "mode" => {
                port.publish_mode = match value.trim() {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    other => {
                        return Err(format!(
                            "invalid publish mode {} (use ingress or host)",
                            quoted(other)
                        ));
                    }
                } as i32
            }
            other => {
                return Err(format!(
                    "unknown field {} (use published, target, mode, protocol)",
                    quoted(other)
                ));
            }
        }
    }
    if !target_seen {
        return Err("missing target port (e.g. target=80)".into());
    }
    Ok(port)
}

fn parse_port(value: &str, what: &str) -> Result<u32, String> {
    let v = value.trim();
    if v.contains('-') {
        return Err(format!(
            "{what} port {}: port ranges are not supported",
            quoted(v)
        ));
    }
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 => Ok(p),
        Ok(p) => Err(format!("{what} port {p} is out of range (0-65535)")),
        Err(_) => Err(format!("invalid {what} port {}", quoted(v))),
    }
}

fn parse_protocol(value: &str) -> Result<PortProtocol, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "tcp" => Ok(PortProtocol::Tcp),
        "udp" => Ok(PortProtocol::Udp),
        other => Err(format!(
            "invalid protocol {} (use tcp or udp)",
            quoted(other)
        )),
    }
}

/// Parse a `--mount` value: comma-separated `key=value` fields
/// (`type=bind,source=/a,target=/b,readonly`). Keys: `type` (bind, volume —
/// the default — or tmpfs), `source`/`src`, `target`/`destination`/`dst`,
/// `readonly`/`ro` (bare or `=true|false|1|0`).
pub fn parse_mount(input: &str) -> Result<Mount, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty mount specification (use e.g. type=bind,source=/a,target=/b)".into());
    }
    let mut mount = Mount {
        r#type: MountType::Volume as i32,
        ..Mount::default()
    };
    let mut target_seen = false;
    for field in s.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("readonly" | "ro", None) => mount.read_only = true,
            ("readonly" | "ro", Some(v)) => {
                mount.read_only = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(format!(
                            "invalid readonly value {} (use true or false)",
                            quoted(other)
                        ));
                    }
                }
            }
            ("type", Some(v)) => {
                mount.r#type = match v.to_ascii_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "volume" => MountType::Volume,
                    "tmpfs" => MountType::Tmpfs,
                    other => {
                        return Err(format!(
                            "invalid mount type {} (use bind, volume or tmpfs)",
                            quoted(other)
                        ));
                    }
                } as i32
            }
            ("source" | "src", Some(v)) => mount.source = v.to_string(),
            ("target" | "destination" | "dst", Some(v)) => {
                mount.target = v.to_string();
                target_seen = true;
            }
            (k, None) => return Err(format!("invalid field {}: expected key=value", quoted(k))),
            (k, Some(_)) => {
                return Err(format!(
                    "unknown mount option {} (supported: type, source, target, readonly)",
                    quoted(k)
                ));
            }
        }
    }
    if !target_seen || mount.target.is_empty() {
        return Err("missing target (e.g. target=/data)".into());
    }
    Ok(mount)
}

/// Parse `KEY=VALUE` (or a bare `KEY`, meaning an empty value) for labels.
pub fn parse_label(input: &str) -> Result<(String, String), String> {
    let (key, value) = input.split_once('=').unwrap_or((input, ""));
    if key.trim().is_empty() {
        return Err(format!("invalid label {}: the key is empty", quoted(input)));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parse the contents of an `--env-file`: one `KEY=VALUE` per line, blank lines
/// and `#` comments skipped. A bare `KEY` line is returned as is; the caller
/// resolves it from its own environment, as Docker does.
pub fn parse_env_file(contents: &str) -> Result<Vec<String>, String> {
    let contents = contents.strip_prefix('\u{feff}').unwrap_or(contents);
    let mut env = Vec::new();
    for (index, raw) in contents.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() {
            return Err(format!("line {}: variable name is empty", index + 1));
        }
        if key.chars().any(char::is_whitespace) {
            return Err(format!(
                "line {}: variable name {} contains whitespace",
                index + 1,
                quoted(key)
            ));
        }
        if line.contains('\0') {
            return Err(format!("line {}: contains a NUL byte", index + 1));
        }
        env.push(line.to_string());
    }
    Ok(env)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
