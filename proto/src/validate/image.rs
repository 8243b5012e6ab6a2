//! Image references, checked the way Docker's `reference` package parses them,
//! so that a reference the engine would refuse is refused before any task
//! is created for it.

use super::quoted;

/// Check an image reference the way Docker's `reference` package does:
/// `[DOMAIN[:PORT]/]PATH[:TAG][@sha256:DIGEST]`, with lowercase path components.
pub fn image_reference(image: &str) -> std::result::Result<(), String> {
    if image.is_empty() {
        return Err("an image is required".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid reference {}: contains whitespace",
            quoted(image)
        ));
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
                "invalid digest {} (expected sha256: and 64 lowercase hex digits)",
                quoted(digest)
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
            return Err(format!("invalid tag {} in {}", quoted(tag), quoted(image)));
        }
    }
    if name.is_empty() {
        return Err(format!(
            "invalid reference {}: the repository name is empty",
            quoted(image)
        ));
    }
    if name.len() > 255 {
        return Err(format!(
            "invalid reference {}: the repository name is longer than 255 characters",
            quoted(image)
        ));
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            domain(first).map_err(|e| {
                format!(
                    "invalid registry {} in {}: {e}",
                    quoted(first),
                    quoted(image)
                )
            })?;
            components.remove(0);
        }
    }
    for component in components {
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "invalid reference {}: repository names must be lowercase",
                quoted(image)
            ));
        }
        if !path_component(component) {
            return Err(format!(
                "invalid reference {}: {} is not a valid repository name component",
                quoted(image),
                quoted(component)
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
        return Err(format!("invalid port {}", quoted(port)));
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
