//! Host-side secret files: the memory-backed check, writing with modes, removal
//! and the sweep of leftovers.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::runtime::{FileKind, TaskFile};

const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:23 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=1k
31 22 0:28 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
32 22 8:2 / /srv/my\\040data rw - xfs /dev/sda2 rw
33 22 8:3 / /srv/mydata2 rw - btrfs /dev/sda3 rw
";

#[test]
fn the_innermost_mount_decides() {
    let fs = |p: &str| file_system_of(MOUNTINFO, Path::new(p));
    assert_eq!(fs("/dev/shm/shoal/n1").as_deref(), Some("tmpfs"));
    assert_eq!(fs("/run/shoal").as_deref(), Some("tmpfs"));
    assert_eq!(fs("/var/lib/shoal").as_deref(), Some("ext4"));
    assert_eq!(
        fs("/srv/my data/x").as_deref(),
        Some("xfs"),
        "escaped space"
    );
    assert_eq!(fs("/srv/mydata2").as_deref(), Some("btrfs"));
    // A path component, not a string prefix: /runner is not under /run.
    assert_eq!(fs("/runner").as_deref(), Some("ext4"));
    assert_eq!(file_system_of("", Path::new("/x")), None);
}

fn file(kind: FileKind, path: &str, mode: u32, data: &[u8]) -> TaskFile {
    TaskFile {
        kind,
        id: "x1".into(),
        name: "db".into(),
        path: path.into(),
        // The test's own ids: chown to them works without root.
        uid: std::fs::metadata("/proc/self").unwrap().uid(),
        gid: std::fs::metadata("/proc/self").unwrap().gid(),
        mode,
        data: Arc::from(data),
    }
}

/// A scratch root on /dev/shm (memory-backed), removed at the end.
fn shm_root() -> Option<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("shoal-files-test")
        .tempdir_in("/dev/shm")
        .ok()
}

#[test]
fn files_are_written_with_their_mode_and_removed() {
    let Some(root) = shm_root() else {
        eprintln!("skipped: no /dev/shm");
        return;
    };
    let files = TaskFiles {
        files: vec![
            file(FileKind::Secret, "/run/secrets/db", 0o400, b"hunter2"),
            file(FileKind::Config, "/etc/app.conf", 0o444, b"port=80"),
        ],
        missing: vec![],
    };
    let dir = write(root.path(), "n1", "t1", &files).unwrap();
    assert_eq!(dir, root.path().join("n1").join("t1"));
    let secret = dir.join("secret-0");
    assert_eq!(std::fs::read(&secret).unwrap(), b"hunter2");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o400
    );
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(std::fs::read(dir.join("config-1")).unwrap(), b"port=80");
    // Idempotent.
    write(root.path(), "n1", "t1", &files).unwrap();

    remove(root.path(), "n1", "t1").unwrap();
    assert!(!dir.exists());
    remove(root.path(), "n1", "t1").unwrap();
}

#[test]
fn a_root_on_disk_is_refused() {
    let disk = tempfile::tempdir().unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fs = file_system_of(&mountinfo, &disk.path().canonicalize().unwrap());
    if fs.as_deref() == Some("tmpfs") {
        eprintln!("skipped: the temp dir is on a tmpfs here");
        return;
    }
    let files = TaskFiles {
        files: vec![file(FileKind::Secret, "/run/secrets/db", 0o400, b"x")],
        missing: vec![],
    };
    let err = write(disk.path(), "n1", "t1", &files)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not on a memory-backed file system (tmpfs)"),
        "{err}"
    );
    assert!(
        !disk.path().join("n1").join("t1").exists(),
        "nothing written"
    );
}

#[test]
fn ids_cannot_escape_the_root() {
    for (node, task) in [("..", "t"), ("n", "../x"), ("n/m", "t"), ("", "t")] {
        assert!(
            task_dir(Path::new("/r"), node, task).is_err(),
            "{node:?} {task:?}"
        );
    }
}

#[test]
fn the_sweep_keeps_only_the_tasks_with_a_container() {
    let Some(root) = shm_root() else {
        return;
    };
    let files = TaskFiles {
        files: vec![file(FileKind::Secret, "/run/secrets/db", 0o400, b"x")],
        missing: vec![],
    };
    for task in ["keep", "gone1", "gone2"] {
        write(root.path(), "n1", task, &files).unwrap();
    }
    write(root.path(), "n2", "other-node", &files).unwrap();
    let keep = HashSet::from(["keep".to_string()]);
    let mut swept = sweep(root.path(), "n1", &keep);
    swept.sort();
    assert_eq!(swept, vec!["gone1", "gone2"]);
    assert!(root.path().join("n1/keep/secret-0").exists());
    assert!(
        root.path().join("n2/other-node").exists(),
        "another node's files"
    );
}
