//! Issue 30, defect 3: a manager whose disk fills. A real `shoal manager`
//! runs on a small tmpfs the test mounts (root only; unmounted however the
//! test ends), with a hollow agent running its tasks, driven through the
//! real CLI.
//!
//! - Filled to under the reserve, it refuses writes with an error that
//!   says so, keeps answering reads and its agent's session, and takes
//!   writes again by itself once the space is freed; nothing acknowledged
//!   is lost.
//! - Filled to the last byte, the write that no longer fits (a checkpoint
//!   is written whatever the reserve) stops the manager with a non-zero
//!   exit, never a half-alive process; restarted once space is back, it has
//!   every acknowledged write.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::agents::HollowAgent;
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs mounted for one test, unmounted when dropped (lazily if a
/// process still holds a file in it).
struct Tmpfs {
    _parent: tempfile::TempDir,
    mount: PathBuf,
}

impl Tmpfs {
    /// Mount `mib` MiB at `<temp dir>/data`, so that files the harness keeps
    /// beside a data dir (its log) are not on it. `None` when not root.
    fn mount(mib: u64) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: this test mounts a tmpfs, which needs root (CI runs as root)");
            return None;
        }
        let parent = tempfile::tempdir().unwrap();
        let mount = parent.path().join("data");
        std::fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&mount)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs on {}", mount.display());
        Some(Tmpfs {
            _parent: parent,
            mount,
        })
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    /// Bytes available, as statvfs counts them.
    fn available(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.mount).unwrap();
        s.f_bavail * s.f_frsize
    }

    /// Fill the filesystem with a file, leaving `keep` bytes available.
    fn fill_but(&self, keep: u64) -> PathBuf {
        use std::io::Write as _;
        let path = self.mount.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x5a_u8; 1 << 20];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last partial chunk, a byte at a time.
        while matches!(file.write(&[0]), Ok(1)) {}
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(keep)).unwrap();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// Run a CLI command that must succeed; returns stdout.
async fn ok(m: &ManagerProcess, args: &[&str]) -> String {
    let out = m.cli(args).await;
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}\nmanager log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn service_names(m: &ManagerProcess) -> Vec<String> {
    let out = ok(m, &["service", "ls", "--format", "json"]).await;
    let services: Vec<Value> = serde_json::from_str(&out).expect("a JSON array");
    let mut names: Vec<String> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

async fn running_tasks(m: &ManagerProcess, service: &str) -> usize {
    let out = ok(m, &["service", "ps", service, "--format", "json"]).await;
    let tasks: Vec<Value> = serde_json::from_str(&out).expect("a JSON array");
    tasks.iter().filter(|t| t["state"] == "running").count()
}

#[tokio::test]
async fn a_full_disk_refuses_writes_serves_reads_and_takes_writes_again_once_freed() {
    shoal_tests::init();
    let Some(fs) = Tmpfs::mount(192) else { return };
    let mut m = ManagerProcess::start_in(fs.path(), &[]).await.unwrap();
    let cluster = m.join_target().await.unwrap();
    let _agent = HollowAgent::start(&cluster, "node-1", &[]);
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "img:v1",
        ],
    )
    .await;
    for name in ["a", "b", "c"] {
        ok(&m, &["service", "create", "-d", "--name", name, "img:v1"]).await;
    }
    eventually("web running on the agent", WAIT, || async {
        match running_tasks(&m, "web").await {
            2 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await
    .unwrap();
    let before = service_names(&m).await;
    assert_eq!(before, ["a", "b", "c", "web"]);

    // 16 MiB left: far under the reserve (64 MiB and a checkpoint).
    let filler = fs.fill_but(16 << 20);
    // The manager reads the free space every 100 ms: a write in that
    // moment is still taken (the reserve is there for it), and must last.
    let taken = std::cell::RefCell::new(Vec::new());
    let stderr = eventually("a write to be refused", WAIT, || async {
        let name = format!("during{}", taken.borrow().len());
        let out = m
            .cli(&["service", "create", "-d", "--name", &name, "img:v1"])
            .await;
        if out.status.success() {
            taken.borrow_mut().push(name);
            return Err("a write was taken".to_string());
        }
        Ok(String::from_utf8_lossy(&out.stderr).to_string())
    })
    .await
    .unwrap();
    let mut before = before;
    before.extend(taken.into_inner());
    before.sort();
    let expected = format!(
        "no space left on the manager's disk ({}): ",
        fs.path().display()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert!(
        stderr.contains("MiB free, writes need at least")
            && stderr.contains("free space and retry"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    // Reads still answer, the agent's session stays up, tasks keep running.
    assert_eq!(service_names(&m).await, before);
    let inspect = ok(&m, &["service", "inspect", "web"]).await;
    assert!(inspect.contains("img:v1"), "{inspect}");
    assert_eq!(running_tasks(&m, "web").await, 2);
    let nodes: Vec<Value> =
        serde_json::from_str(&ok(&m, &["node", "ls", "--format", "json"]).await).unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n["hostname"] == "node-1" && n["status"] == "ready"),
        "{nodes:?}"
    );
    assert!(m.exited().is_none(), "the manager is still up");

    // Space comes back: writes are taken again without a restart.
    std::fs::remove_file(&filler).unwrap();
    eventually("a write to be taken again", WAIT, || async {
        let out = m
            .cli(&["service", "create", "-d", "--name", "after", "img:v1"])
            .await;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    })
    .await
    .unwrap();
    assert!(m.exited().is_none(), "never restarted");
    let log = m.log();
    assert!(
        log.contains("the manager's disk is nearly full")
            && log.contains("disk space is back above the reserve"),
        "the operator is told both ways:\n{log}"
    );
    let mut all = before.clone();
    all.push("after".into());
    all.sort();
    assert_eq!(service_names(&m).await, all);

    // And all of it is durable.
    m.restart().await.unwrap();
    assert_eq!(service_names(&m).await, all);
    m.kill();
}

#[tokio::test]
async fn a_write_that_no_longer_fits_stops_the_manager_non_zero_and_a_restart_has_every_write() {
    shoal_tests::init();
    let Some(fs) = Tmpfs::mount(128) else { return };
    let mut m = ManagerProcess::start_in(fs.path(), &[]).await.unwrap();
    for name in ["a", "b", "c"] {
        ok(&m, &["service", "create", "-d", "--name", name, "img:v1"]).await;
    }
    // Not a byte left. Proposals are refused, but the checkpoint of what
    // was applied (due within 30 s) is written whatever the reserve: it
    // fails, and sled fails every write after that one.
    let filler = fs.fill_but(0);
    assert!(fs.available() < 4096);
    let status = eventually("the manager to exit", Duration::from_secs(90), || {
        let exited = m.exited();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await
    .unwrap();
    let log = m.log();
    assert!(!status.success(), "a non-zero exit: {status}\n{log}");
    assert!(
        log.contains("raft node stopped on a storage error"),
        "the cause is logged:\n{log}"
    );
    assert!(log.contains("No space left on device"), "{log}");
    assert!(
        log.contains("Error: manager failed: raft: the raft store failed")
            && log.contains("is full: free space, then start the manager again"),
        "the exit names why:\n{log}"
    );

    std::fs::remove_file(&filler).unwrap();
    m.restart().await.unwrap();
    assert_eq!(service_names(&m).await, ["a", "b", "c"]);
    m.kill();
}
