//! The manager's modules build on each other in one direction: the crate doc
//! (`manager/src/lib.rs`) lists them in layers, and a module may use only
//! modules of the layers above its own. This test reads the `crate::` paths
//! of each module's non-test code and fails on any that points sideways or
//! down, so the import graph stays free of loops:
//!
//!     cargo nextest run -p shoal-tests --test layers

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn manager_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manager/src")
}

/// The layers as the crate doc lists them: each `//! - ` bullet names its
/// modules in backquotes before the first colon.
fn layers(lib_rs: &str) -> BTreeMap<String, usize> {
    let mut layer_of = BTreeMap::new();
    let bullets = lib_rs
        .lines()
        .filter_map(|l| l.strip_prefix("//! - "))
        .filter(|l| l.starts_with('`'));
    for (layer, bullet) in bullets.enumerate() {
        let head = bullet.split(':').next().unwrap_or_default();
        for name in head.split('`').skip(1).step_by(2) {
            layer_of.insert(name.to_string(), layer);
        }
    }
    layer_of
}

/// Whether `path` holds only tests (`tests.rs`, `x_tests.rs`,
/// `x_proptests.rs`, a `tests/` folder) or their fixtures (`test_x.rs`).
fn is_test_file(path: &Path) -> bool {
    path.components().any(|c| {
        let name = c.as_os_str().to_string_lossy();
        name.contains("tests") || name.starts_with("test_")
    })
}

/// `source` without comments and without `#[cfg(test)]` items (the braced
/// block or the `;`-ended item that follows the attribute).
fn code_only(source: &str) -> String {
    let uncommented: String = source
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = uncommented.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let brace = item.find('{');
        let semi = item.find(';');
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => s + 1,
            (Some(b), _) => matching_brace(item, b).map_or(item.len(), |e| e + 1),
            (None, Some(s)) => s + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The top-level modules `code` names through `crate::a` or `crate::{a, b}`.
fn crate_uses(code: &str) -> Vec<String> {
    let mut used = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let after = &code[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = matching_brace(after, 0).unwrap_or(after.len());
            for part in group[..end.saturating_sub(1)].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                used.push(name);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.push(name);
        }
    }
    used
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the manager's sources") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn manager_modules_use_only_the_layers_above_them() {
    let src = manager_src();
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let layer_of = layers(&lib_rs);
    assert!(
        layer_of.len() >= 15,
        "the crate doc should list the modules in layers: {layer_of:?}"
    );
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        if relative == Path::new("lib.rs") || is_test_file(relative) {
            continue;
        }
        let first = relative.components().next().expect("a first component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(&own) = layer_of.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in the crate doc's layers",
                relative.display()
            ));
            continue;
        };
        let code = code_only(&std::fs::read_to_string(&file).expect("read a source file"));
        for used in crate_uses(&code) {
            checked += 1;
            if used == module || used.is_empty() || used == "FIGURES_TARGET" {
                continue;
            }
            match layer_of.get(&used) {
                Some(&layer) if layer < own => {}
                Some(_) => wrong.push(format!(
                    "{}: `{module}` uses `crate::{used}`, which is not in a layer above it",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{}: `crate::{used}` is not in the crate doc's layers",
                    relative.display()
                )),
            }
        }
    }
    assert!(checked > 100, "only {checked} crate:: paths found");
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_a_loop() {
    let lib_rs = "//! - `a`: bottom\n//! - `b`, `c`: middle\n//! - `d`: top\n";
    let layer_of = layers(lib_rs);
    assert_eq!(layer_of["a"], 0);
    assert_eq!(layer_of["c"], 1);
    let code = code_only(
        "use crate::{a, b::X};\n// crate::d in a comment\n#[cfg(test)]\nmod tests { use crate::d; }\nfn f() { crate::c::g(); }",
    );
    assert_eq!(crate_uses(&code), ["a", "b", "c"]);
}
