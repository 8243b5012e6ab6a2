//! Secret and config files on the host, for the Docker runtime: each task's
//! live in a directory of their own, `<root>/<node id>/<task id>/`, and are
//! bind-mounted read-only into its container ([`super::translate::file_mounts`]).
//!
//! The root must be memory-backed (tmpfs or ramfs, checked against
//! `/proc/self/mountinfo` before anything is written), so a secret value
//! never reaches a disk; a task whose root is not is refused with a clear
//! message. The files go when the container is removed, and an agent that
//! starts sweeps those of tasks it no longer has.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::runtime::{RuntimeError, TaskFiles};

use super::translate::host_file_name;

/// Where the Docker runtime keeps secret and config files by default.
pub const DEFAULT_FILES_DIR: &str = "/dev/shm/shoal";

/// File systems that keep their files in memory only.
const MEMORY_FILE_SYSTEMS: [&str; 2] = ["tmpfs", "ramfs"];

/// The directory of one task's files.
pub fn task_dir(root: &Path, node_id: &str, task_id: &str) -> Result<PathBuf, RuntimeError> {
    for (what, id) in [("node", node_id), ("task", task_id)] {
        if !path_component(id) {
            return Err(RuntimeError::Invalid(format!(
                "{what} id {id:?} cannot name a directory"
            )));
        }
    }
    Ok(root.join(node_id).join(task_id))
}

fn path_component(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\0'])
}

/// Write a task's files under `root` (memory-backed, or refused); returns the
/// task's directory. Files already there with the same content are kept (a
/// running container may have them mounted); modes and owners are set anew.
pub fn write(
    root: &Path,
    node_id: &str,
    task_id: &str,
    files: &TaskFiles,
) -> Result<PathBuf, RuntimeError> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        RuntimeError::Invalid(format!("{what} {}: {e}", path.display()))
    };
    let dir = task_dir(root, node_id, task_id)?;
    private_dir(root).map_err(|e| failed("cannot create the secrets directory", root, e))?;
    check_memory_backed(root)?;
    private_dir(&dir).map_err(|e| failed("cannot create", &dir, e))?;
    for (i, file) in files.files.iter().enumerate() {
        let path = dir.join(host_file_name(i, file));
        let same = std::fs::read(&path).is_ok_and(|old| old == *file.data);
        if !same {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| failed("cannot write", &path, e))?;
            out.write_all(&file.data)
                .map_err(|e| failed("cannot write", &path, e))?;
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| failed("cannot set the mode of", &path, e))?;
        std::os::unix::fs::chown(&path, Some(file.uid), Some(file.gid)).map_err(|e| {
            RuntimeError::Invalid(format!(
                "cannot give {} {} to uid {} gid {}: {e}",
                file.kind.name(),
                file.name,
                file.uid,
                file.gid
            ))
        })?;
    }
    Ok(dir)
}

/// Remove a task's files (nothing to do when it had none).
pub fn remove(root: &Path, node_id: &str, task_id: &str) -> Result<(), RuntimeError> {
    let dir = task_dir(root, node_id, task_id)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::Other(format!(
            "cannot remove {}: {e}",
            dir.display()
        ))),
    }
}

/// Remove the files of every task of `node_id` not in `keep`; returns the
/// task ids swept.
pub fn sweep(root: &Path, node_id: &str, keep: &HashSet<String>) -> Vec<String> {
    if !path_component(node_id) {
        return Vec::new();
    }
    let node_dir = root.join(node_id);
    let Ok(entries) = std::fs::read_dir(&node_dir) else {
        return Vec::new();
    };
    let mut swept = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(&name) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => swept.push(name),
            Err(e) => tracing::warn!(path = %entry.path().display(), error = %e,
                "cannot remove the secret files of a task this node no longer runs"),
        }
    }
    swept
}

/// A directory only its owner can enter.
fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn check_memory_backed(root: &Path) -> Result<(), RuntimeError> {
    let canonical = root
        .canonicalize()
        .map_err(|e| RuntimeError::Invalid(format!("secrets directory {}: {e}", root.display())))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
        RuntimeError::Invalid(format!(
            "cannot read /proc/self/mountinfo to check that {} is memory-backed: {e}",
            root.display()
        ))
    })?;
    match file_system_of(&mountinfo, &canonical) {
        Some(fs) if MEMORY_FILE_SYSTEMS.contains(&fs.as_str()) => Ok(()),
        found => Err(RuntimeError::Invalid(format!(
            "secrets directory {} is on {}, not on a memory-backed file system (tmpfs): \
             secrets are never written to disk; start the agent with a secrets directory on a tmpfs",
            root.display(),
            found.as_deref().unwrap_or("an unknown file system")
        ))),
    }
}

/// The file system type of the mount holding `path` (absolute, canonical),
/// from the text of `/proc/self/mountinfo`: the longest mount point that
/// contains it, the last one listed when mounts are stacked.
pub fn file_system_of(mountinfo: &str, path: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let Some(fstype) = fields.skip_while(|f| *f != "-").nth(1) else {
            continue;
        };
        let mount_point = unescape(mount_point);
        if !path.starts_with(&mount_point) {
            continue;
        }
        let depth = Path::new(&mount_point).components().count();
        if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
            best = Some((depth, fstype.to_string()));
        }
    }
    best.map(|(_, fs)| fs)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if bytes[i] == b'\\'
            && let Some(b) = octal
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[path = "files_tests.rs"]
mod tests;
