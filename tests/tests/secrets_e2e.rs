//! Secrets and configs end to end, on real processes and the real Docker
//! engine: a `shoal manager` and a `shoal agent`, a service that uses a secret
//! and a config, checked from inside its container, on the host, in the
//! manager's data directory and in every log. Containers are removed on exit,
//! pass or fail (the `Cleanup` guard).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::docker::{self, AgentProcess, Cleanup, IMAGE};
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);

/// Where the Docker runtime keeps the tasks' files (its default).
const FILES_DIR: &str = "/dev/shm/shoal";

/// The secret: distinctive enough that finding it anywhere is no accident.
const SECRET: &str = "e2e-s3cret-Vx7q9ZpL2wR";
const CONFIG: &str = "listen=8080\n";

struct Cluster {
    // Field order is drop order: processes stop before the cleanup runs.
    manager: ManagerProcess,
    agent: AgentProcess,
    node_id: String,
    /// A second node whose tasks use no secret.
    other: AgentProcess,
    other_id: String,
    scratch: tempfile::TempDir,
    _cleanup: Cleanup,
}

impl Cluster {
    async fn start() -> Cluster {
        shoal_tests::init();
        docker::ensure_images();
        let manager = ManagerProcess::start(&[]).await.unwrap();
        let cleanup = Cleanup::default();
        let join = manager.join_target().await.unwrap();
        let agent = AgentProcess::start(&join, "secrets-a").unwrap();
        let node_id = agent.node_id().await.unwrap();
        cleanup.watch_node(&node_id);
        let other = AgentProcess::start(&join, "secrets-b").unwrap();
        let other_id = other.node_id().await.unwrap();
        cleanup.watch_node(&other_id);
        Cluster {
            manager,
            agent,
            node_id,
            other,
            other_id,
            scratch: tempfile::tempdir().unwrap(),
            _cleanup: cleanup,
        }
    }

    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.manager.cli(args).await;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "shoal {args:?} failed: {stderr}\n{}", self.logs());
        stdout
    }

    async fn fails(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(!ok, "shoal {args:?} should have failed: {stdout}");
        stderr
    }

    fn logs(&self) -> String {
        format!(
            "manager log:\n{}\nagent log:\n{}",
            self.manager.log(),
            self.agent.log()
        )
    }

    /// A file in the scratch dir holding `data`, for `create NAME FILE`.
    fn file(&self, name: &str, data: &[u8]) -> String {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, data).unwrap();
        path.to_string_lossy().into_owned()
    }

    /// The one running container of `service`, once shoal says it runs.
    async fn running_container(&self, service: &str) -> String {
        let engine = docker::engine().await;
        eventually(&format!("{service} to run"), WAIT, || async {
            let running = docker::running(&engine, service)
                .await
                .map_err(|e| e.to_string())?;
            let ps = self
                .ok(&["service", "ps", service, "--format", "json"])
                .await;
            let tasks: Vec<Value> = serde_json::from_str(&ps).map_err(|e| e.to_string())?;
            let live = tasks.iter().any(|t| t["state"] == "running");
            match running.first() {
                Some(c) if live => Ok(c.id.clone()),
                _ => Err(format!("{} containers; tasks: {ps}", running.len())),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    fn task_files_dir(&self) -> std::path::PathBuf {
        Path::new(FILES_DIR).join(&self.node_id)
    }

    fn other_files_dir(&self) -> std::path::PathBuf {
        Path::new(FILES_DIR).join(&self.other_id)
    }
}

impl Drop for Cluster {
    /// A failed run leaves no secret files behind on the host either.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.task_files_dir());
        let _ = std::fs::remove_dir_all(self.other_files_dir());
    }
}

fn exec(container: &str, script: &str) -> String {
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", script])
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "docker exec {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn a_service_reads_its_secret_from_memory_and_the_value_leaks_nowhere() {
    let c = Cluster::start().await;

    // Create: the ids come back; bad values are refused with the field named.
    let secret_file = c.file("pw", SECRET.as_bytes());
    let id = c
        .ok(&[
            "secret",
            "create",
            "--label",
            "team=db",
            "e2e-pw",
            &secret_file,
        ])
        .await;
    assert!(!id.trim().is_empty());
    let config_file = c.file("app", CONFIG.as_bytes());
    c.ok(&["config", "create", "e2e-app", &config_file]).await;
    let big = c.file("big", &vec![b'x'; 500 * 1024 + 1]);
    let err = c.fails(&["secret", "create", "e2e-big", &big]).await;
    assert!(err.contains("data: the secret is 512001 bytes"), "{err}");
    let exactly = c.file("max", &vec![b'x'; 500 * 1024]);
    c.ok(&["secret", "create", "e2e-max", &exactly]).await;
    let err = c.fails(&["secret", "create", "e2e-pw", &secret_file]).await;
    assert!(err.contains("already exists"), "{err}");

    // ls and inspect name them, without the value.
    let ls = c.ok(&["secret", "ls"]).await;
    assert!(ls.starts_with("ID") && ls.contains("e2e-pw"), "{ls}");
    let inspect = c.ok(&["secret", "inspect", "e2e-pw"]).await;
    assert!(inspect.contains("\"team\""), "{inspect}");
    let listed = c.ok(&["secret", "ls", "--format", "json"]).await;
    for shown in [&ls, &inspect, &listed] {
        assert!(!shown.contains(SECRET), "the value is shown: {shown}");
    }
    // A config is shown, base64 like Docker's.
    let config = c.ok(&["config", "inspect", "e2e-app"]).await;
    assert!(config.contains("bGlzdGVuPTgwODAK"), "{config}");

    // Unknown names are refused, naming the flag and the name.
    let err = c
        .fails(&[
            "service", "create", "-d", "--name", "e2e-nope", "--secret", "nope", IMAGE,
        ])
        .await;
    assert!(
        err.contains("secret[0]") && err.contains("\"nope\""),
        "{err}"
    );

    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-sec",
        "--constraint",
        &format!("node.id=={}", c.node_id),
        "--stop-grace-period",
        "1s",
        "--secret",
        "source=e2e-pw,target=password,uid=1000,gid=1000,mode=0400",
        "--config",
        "source=e2e-app,target=/etc/app.conf",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    let container = c.running_container("e2e-sec").await;
    // The service shows its references, never the value.
    let inspect = c.ok(&["service", "inspect", "e2e-sec"]).await;
    assert!(
        inspect.contains("/run/secrets/password") && inspect.contains("\"0400\""),
        "{inspect}"
    );
    assert!(!inspect.contains(SECRET), "{inspect}");
    // A service on the other node that uses no secret.
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-plain",
        "--constraint",
        &format!("node.id=={}", c.other_id),
        "--stop-grace-period",
        "1s",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    let plain = c.running_container("e2e-plain").await;

    // Inside: the value, mode and owner asked for, on a tmpfs, read-only.
    let seen = exec(
        &container,
        "cat /run/secrets/password; echo; stat -c '%a %u:%g' /run/secrets/password; \
         grep ' /run/secrets/password ' /proc/mounts; cat /etc/app.conf; \
         stat -c '%a' /etc/app.conf",
    );
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], SECRET, "{seen}");
    assert_eq!(lines[1], "400 1000:1000", "{seen}");
    assert!(
        lines[2].starts_with("tmpfs /run/secrets/password tmpfs ro"),
        "{seen}"
    );
    assert_eq!(lines[3], CONFIG.trim_end(), "{seen}");
    assert_eq!(lines[4], "444", "Docker's default mode: {seen}");

    // On the host the files live in the agent's tmpfs directory.
    let host_dir = c.task_files_dir();
    let host_files = files_containing(&host_dir, SECRET.as_bytes());
    assert_eq!(host_files.len(), 1, "{host_files:?}");

    // The other node never got it: no file, no mount, nothing in its data
    // dir or log (the dispatcher sends a secret only to nodes whose tasks use it).
    assert!(files_containing(&c.other_files_dir(), SECRET.as_bytes()).is_empty());
    let mounts = exec(&plain, "grep -c /run/secrets /proc/mounts || true");
    assert_eq!(
        mounts.trim(),
        "0",
        "the other node's task has secret mounts"
    );
    assert!(files_containing(c.other.data_dir.path(), SECRET.as_bytes()).is_empty());
    assert!(
        !c.other.log().contains(SECRET),
        "the other agent logged the value"
    );

    // The value is in no manager file (sled, raft log, snapshots, keys) and
    // no log line, on either side.
    let leaked = files_containing(&c.manager.data_dir, SECRET.as_bytes());
    assert!(
        leaked.is_empty(),
        "plaintext in the manager's files: {leaked:?}"
    );
    let leaked = files_containing(c.agent.data_dir.path(), SECRET.as_bytes());
    assert!(
        leaked.is_empty(),
        "plaintext in the agent's data dir: {leaked:?}"
    );
    assert!(
        !c.manager.log().contains(SECRET),
        "the manager logged the value"
    );
    assert!(
        !c.agent.log().contains(SECRET),
        "the agent logged the value"
    );
    // The data dir is not empty: the sled files were searched.
    assert!(!files_containing(&c.manager.data_dir, b"e2e-pw").is_empty());

    // In use: refused, naming the service; the unused one goes.
    let err = c.fails(&["secret", "rm", "e2e-pw"]).await;
    assert!(err.contains("in use by service: e2e-sec"), "{err}");
    let err = c.fails(&["config", "rm", "e2e-app"]).await;
    assert!(err.contains("e2e-sec"), "{err}");
    assert_eq!(c.ok(&["secret", "rm", "e2e-max"]).await.trim(), "e2e-max");

    // Once the service is gone: the host files go with its container, and
    // the secret can be removed.
    c.ok(&["service", "rm", "e2e-sec", "e2e-plain"]).await;
    eventually("the task's host files to be removed", WAIT, || async {
        let left = files_containing(&host_dir, SECRET.as_bytes());
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.ok(&["secret", "rm", "e2e-pw"]).await;
    c.ok(&["config", "rm", "e2e-app"]).await;
    let ls = c.ok(&["secret", "ls", "-q"]).await;
    assert!(ls.trim().is_empty(), "{ls}");
    assert!(!c.manager.log().contains(SECRET) && !c.agent.log().contains(SECRET));
}
