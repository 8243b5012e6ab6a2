//! Integration tests of [`DockerRuntime`] against the real local engine, on the
//! locally built `shoal-test/busybox` image. Each test labels its containers with
//! its own node id and removes them when it ends, even on failure. Without an
//! engine the tests are skipped with a note, unless `SHOAL_REQUIRE_DOCKER=1`.

use std::time::Duration;

use bollard::query_parameters::KillContainerOptionsBuilder;
use shoal_proto::{
    ContainerSpec, HealthConfig, Mount, MountType, PortConfig, PortProtocol, PublishMode, Task,
    TaskSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::test_image::ensure_test_image;
use super::translate::{LABEL_NODE_ID, LABEL_SERVICE_NAME, LABEL_TASK_ID, container_name};
use super::*;

/// Generous bound for anything the engine should do "at once" on a busy machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// A runtime, a test image and a node id of its own; removes its containers on drop.
struct Fixture {
    rt: DockerRuntime,
    image: String,
    node_id: String,
}

impl Fixture {
    async fn new() -> Option<Fixture> {
        let rt = match DockerRuntime::connect().await {
            Ok(rt) => rt,
            Err(e) if std::env::var("SHOAL_REQUIRE_DOCKER").as_deref() != Ok("1") => {
                eprintln!("skipping Docker test: {e}");
                return None;
            }
            Err(e) => panic!("{e}"),
        };
        let image = ensure_test_image(rt.client()).await.expect("test image");
        let node_id = format!("test-node-{:016x}", rand::random::<u64>());
        Some(Fixture { rt, image, node_id })
    }

    fn task(&self, slot: u64, container: ContainerSpec) -> Task {
        let id = format!("task{:020x}", rand::random::<u128>() >> 48);
        Task {
            id,
            service_id: "svc-test".into(),
            service_name: "shoaltest".into(),
            slot,
            node_id: self.node_id.clone(),
            spec: Some(
                TaskSpec {
                    container: Some(ContainerSpec {
                        image: self.image.clone(),
                        ..container
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    async fn launch(&self, task: &Task) {
        self.rt
            .prepare(task, &TaskFiles::default())
            .await
            .expect("prepare");
        self.rt.start(task).await.expect("start");
    }
}

impl Drop for Fixture {
    /// Removes every container of this test's node, through the CLI because Drop
    /// cannot await (and must work while a panic unwinds).
    fn drop(&mut self) {
        let filter = format!("label={LABEL_NODE_ID}={}", self.node_id);
        let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
}

fn shell(script: &str) -> ContainerSpec {
    ContainerSpec {
        command: vec!["sh".into(), "-c".into()],
        args: vec![script.into()],
        ..Default::default()
    }
}

fn host_port(target: u32, published: u32) -> PortConfig {
    PortConfig {
        protocol: PortProtocol::Tcp as i32,
        target_port: target,
        published_port: published,
        publish_mode: PublishMode::Host as i32,
    }
}

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {DEADLINE:?}"))
}

#[tokio::test]
async fn exit_code_env_labels_and_list() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let task = fx.task(
        1,
        ContainerSpec {
            env: vec!["CODE=3".into()],
            ..shell("sleep 1; exit $CODE")
        },
    );
    fx.rt
        .prepare(&task, &TaskFiles::default())
        .await
        .expect("prepare");
    fx.rt
        .prepare(&task, &TaskFiles::default())
        .await
        .expect("prepare is idempotent");

    let listed = fx.rt.list(&fx.node_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].task_id, task.id);
    assert_eq!(listed[0].state, ContainerState::Created);

    fx.rt.start(&task).await.expect("start");
    fx.rt.start(&task).await.expect("start is idempotent");
    // Without a health check the task is running at once (or already done).
    match within("wait_running", fx.rt.wait_running(&task)).await {
        Ok(()) => {}
        Err(exit) => assert_eq!(exit.exit_code, 3, "{exit:?}"),
    }
    let exit = within("wait_exit", fx.rt.wait_exit(&task)).await;
    assert_eq!(
        exit,
        Exit {
            exit_code: 3,
            message: "exit status 3".into(),
            unhealthy: false
        }
    );

    let inspect = fx
        .rt
        .client()
        .inspect_container(&container_name(&task), None)
        .await
        .unwrap();
    assert_eq!(
        inspect.name.as_deref(),
        Some(format!("/{}", container_name(&task)).as_str())
    );
    let labels = inspect.config.unwrap().labels.unwrap();
    assert_eq!(labels[LABEL_TASK_ID], task.id);
    assert_eq!(labels[LABEL_NODE_ID], fx.node_id);
    assert_eq!(labels[LABEL_SERVICE_NAME], "shoaltest");

    let listed = fx.rt.list(&fx.node_id).await.unwrap();
    assert_eq!(listed[0].state, ContainerState::Exited(3));
    assert!(
        fx.rt
            .list("some-other-node")
            .await
            .unwrap()
            .iter()
            .all(|c| c.task_id != task.id)
    );
}

#[tokio::test]
async fn published_port_is_reachable_and_stop_remove_are_idempotent() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut task = fx.task(1, shell("exec httpd -f -p 8080 -h /www"));
    task.ports = vec![host_port(8080, 0)];
    fx.launch(&task).await;
    within("wait_running", fx.rt.wait_running(&task))
        .await
        .expect("running");

    let ports = fx.rt.ports(&task).await;
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].target_port, 8080);
    let port = ports[0].published_port;
    assert_ne!(port, 0, "the engine chose a port");

    // httpd starts listening a moment after the container starts: poll.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let attempt = async {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port as u16)).await?;
            conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
            let mut body = String::new();
            conn.read_to_string(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        match attempt.await {
            Ok(body) if body.contains("shoal test page") => break,
            other if tokio::time::Instant::now() > deadline => {
                panic!("no page on port {port}: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    fx.rt
        .stop(&task, Duration::from_secs(1))
        .await
        .expect("stop");
    let exit = within("wait_exit after stop", fx.rt.wait_exit(&task)).await;
    assert!(!exit.unhealthy);
    fx.rt
        .stop(&task, Duration::from_secs(1))
        .await
        .expect("stop is idempotent");
    fx.rt.remove(&task).await.expect("remove");
    fx.rt.remove(&task).await.expect("remove is idempotent");
    fx.rt
        .stop(&task, Duration::from_secs(1))
        .await
        .expect("stop after remove");
    assert!(fx.rt.list(&fx.node_id).await.unwrap().is_empty());
    assert!(fx.rt.ports(&task).await.is_empty());
}

fn healthcheck(script: &str) -> Option<HealthConfig> {
    Some(HealthConfig {
        test: vec!["CMD-SHELL".into(), script.into()],
        interval_ms: 200,
        timeout_ms: 2000,
        retries: 1,
        start_period_ms: 0,
    })
}

#[tokio::test]
async fn failing_healthcheck_is_unhealthy() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let task = fx.task(
        1,
        ContainerSpec {
            healthcheck: healthcheck("echo probe says no; exit 1"),
            ..shell("exec sleep 300")
        },
    );
    fx.launch(&task).await;
    let exit = within("wait_running", fx.rt.wait_running(&task))
        .await
        .expect_err("unhealthy");
    assert!(exit.unhealthy, "{exit:?}");
    assert_eq!(exit.message, "unhealthy: probe says no");
    let exit = within("wait_exit", fx.rt.wait_exit(&task)).await;
    assert!(exit.unhealthy, "{exit:?}");
}

#[tokio::test]
async fn kill_outside_shoal_ends_the_wait() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    // With and without a health check: the two take different wait paths.
    for (slot, health) in [(1, None), (2, healthcheck("true"))] {
        let task = fx.task(
            slot,
            ContainerSpec {
                healthcheck: health,
                ..shell("exec sleep 300")
            },
        );
        fx.launch(&task).await;
        within("wait_running", fx.rt.wait_running(&task))
            .await
            .expect("running (healthy)");
        let waiter = {
            let (rt, task) = (fx.rt.clone(), task.clone());
            tokio::spawn(async move { rt.wait_exit(&task).await })
        };
        let kill = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        fx.rt
            .client()
            .kill_container(&container_name(&task), Some(kill))
            .await
            .expect("kill");
        let exit = within("wait_exit after kill", waiter).await.unwrap();
        assert_eq!(
            exit,
            Exit {
                exit_code: 137,
                message: "killed".into(),
                unhealthy: false
            }
        );
    }
}

#[tokio::test]
async fn missing_image_is_image_not_found() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let mut task = fx.task(1, shell("true"));
    task.spec
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = "shoal-test/absent:never".into();
    match fx.rt.prepare(&task, &TaskFiles::default()).await {
        Err(RuntimeError::ImageNotFound { image, reason }) => {
            assert_eq!(image, "shoal-test/absent:never");
            assert!(
                reason.starts_with("not found locally and the pull failed: "),
                "{reason}"
            );
        }
        other => panic!("expected ImageNotFound, got {other:?}"),
    }
    task.spec
        .as_mut()
        .unwrap()
        .container
        .as_mut()
        .unwrap()
        .image = String::new();
    match fx.rt.prepare(&task, &TaskFiles::default()).await {
        Err(RuntimeError::Invalid(message)) => {
            assert!(message.contains("container.image is empty"), "{message}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(fx.rt.list(&fx.node_id).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_bind_source_is_invalid() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let task = fx.task(
        1,
        ContainerSpec {
            mounts: vec![Mount {
                r#type: MountType::Bind as i32,
                source: "/nonexistent/shoal-test-source".into(),
                target: "/data".into(),
                read_only: true,
            }],
            ..shell("true")
        },
    );
    match fx.rt.prepare(&task, &TaskFiles::default()).await {
        Err(RuntimeError::Invalid(message)) => assert!(
            message.contains("/nonexistent/shoal-test-source"),
            "{message}"
        ),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn host_port_in_use_fails_start() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let first = {
        let mut t = fx.task(1, shell("exec sleep 300"));
        t.ports = vec![host_port(80, 0)];
        t
    };
    fx.launch(&first).await;
    let taken = fx.rt.ports(&first).await[0].published_port;
    let mut second = fx.task(2, shell("exec sleep 300"));
    second.ports = vec![host_port(80, taken)];
    fx.rt
        .prepare(&second, &TaskFiles::default())
        .await
        .expect("prepare");
    match fx.rt.start(&second).await {
        Err(RuntimeError::Invalid(message)) => {
            assert!(message.contains(&taken.to_string()), "{message}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn describe_reports_the_engine() {
    let Some(fx) = Fixture::new().await else {
        return;
    };
    let info = fx.rt.describe().await.unwrap();
    assert!(info.nano_cpus >= 1_000_000_000, "{info:?}");
    assert!(info.memory_bytes > 0, "{info:?}");
    assert!(
        !info.engine_version.is_empty() && !info.hostname.is_empty(),
        "{info:?}"
    );
    assert_eq!(info.os, "linux");
}

#[tokio::test]
async fn missing_socket_is_unavailable() {
    match DockerRuntime::connect_to("/nonexistent/docker.sock").await {
        Err(RuntimeError::Unavailable(message)) => {
            assert!(
                message.contains("the Docker engine is not running at /nonexistent/docker.sock"),
                "{message}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn engine_gone_mid_way_is_unavailable() {
    // A client whose socket existed at creation but no longer answers: what the
    // agent sees when the engine stops under it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let docker =
        bollard::Docker::connect_with_unix(path.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION)
            .unwrap();
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    let rt = DockerRuntime {
        docker,
        socket: path.display().to_string(),
        files_dir: files::DEFAULT_FILES_DIR.into(),
    };
    let task = Task {
        id: "gone".into(),
        service_name: "svc".into(),
        slot: 1,
        ..Default::default()
    };

    let unavailable = |r: Result<(), RuntimeError>| match r {
        Err(RuntimeError::Unavailable(message)) => {
            assert!(message.contains("not running at"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    };
    unavailable(rt.describe().await.map(|_| ()));
    unavailable(rt.list("n").await.map(|_| ()));
    unavailable(rt.prepare(&task, &TaskFiles::default()).await.map(|_| ()));
    unavailable(rt.start(&task).await);
    unavailable(rt.stop(&task, Duration::from_secs(1)).await);
    unavailable(rt.remove(&task).await);
    assert!(rt.ports(&task).await.is_empty());
    let exit = within("wait_exit", rt.wait_exit(&task)).await;
    assert!(exit.message.contains("not running at"), "{exit:?}");
    let exit = within("wait_running", rt.wait_running(&task))
        .await
        .expect_err("no engine");
    assert!(exit.message.contains("not running at"), "{exit:?}");
}
