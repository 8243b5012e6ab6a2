//! Issue 3's end-to-end scenarios on the real Docker engine: one `shoal manager`
//! and two `shoal agent` processes (different node names, one engine), checked
//! through the engine's own API. Every scenario removes its containers on exit,
//! pass or fail.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::docker::{self, AgentProcess, Cleanup, IMAGE, IMAGE_V2};
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    // Field order is drop order: processes stop before the cleanup runs.
    manager: ManagerProcess,
    agents: Vec<AgentProcess>,
    engine: bollard::Docker,
    _cleanup: Cleanup,
}

impl Cluster {
    async fn start() -> Cluster {
        shoal_tests::init();
        docker::ensure_images();
        let manager = ManagerProcess::start(&[]).await.unwrap();
        let cleanup = Cleanup::default();
        let cluster = manager.join_target().await.unwrap();
        let mut agents = Vec::new();
        for name in ["dock-a", "dock-b"] {
            let agent = AgentProcess::start(&cluster, name).unwrap();
            cleanup.watch_node(&agent.node_id().await.unwrap());
            agents.push(agent);
        }
        let c = Cluster {
            manager,
            agents,
            engine: docker::engine().await,
            _cleanup: cleanup,
        };
        c.wait_ready_nodes(2).await;
        c
    }

    async fn wait_ready_nodes(&self, n: usize) {
        eventually(&format!("{n} ready nodes"), WAIT, || async {
            let ready = self
                .json(&["node", "ls"])
                .await
                .iter()
                .filter(|x| x["status"] == "ready" && x["role"] == "worker")
                .count();
            if ready == n {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            }
        })
        .await
        .unwrap();
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.manager.cli(args).await;
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn fails(&self, args: &[&str]) -> String {
        let out = self.manager.cli(args).await;
        assert!(!out.status.success(), "shoal {args:?} should have failed");
        String::from_utf8(out.stderr).unwrap()
    }

    async fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = args.to_vec();
        full.extend(["--format", "json"]);
        serde_json::from_str(&self.ok(&full).await).unwrap()
    }

    fn logs(&self) -> String {
        let mut s = format!("manager log (tail):\n{}", tail(&self.manager.log()));
        for a in &self.agents {
            s += &format!("\nagent {} log (tail):\n{}", a.name, tail(&a.log()));
        }
        s
    }

    /// Wait until exactly `n` containers of `service` run, and shoal agrees.
    async fn wait_running(&self, service: &str, n: usize) -> Vec<docker::Container> {
        let r = eventually(
            &format!("{n} running containers of {service}"),
            WAIT,
            || async {
                let running = docker::running(&self.engine, service)
                    .await
                    .map_err(|e| e.to_string())?;
                let live = self
                    .json(&["service", "ps", service])
                    .await
                    .iter()
                    .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
                    .count();
                if running.len() == n && live == n {
                    Ok(running)
                } else {
                    Err(format!("{} containers, {live} tasks", running.len()))
                }
            },
        )
        .await;
        match r {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// All containers of a service, in any state.
    async fn all(&self, service: &str) -> Vec<docker::Container> {
        docker::containers(&self.engine, "shoal.service.name", service)
            .await
            .unwrap()
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn http_get(port: u16) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

#[tokio::test]
async fn replicas_run_as_labelled_containers_scale_and_go_away() {
    let c = Cluster::start().await;
    let t0 = Instant::now();
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-web",
        "--replicas",
        "3",
        "-e",
        "GREETING=hello",
        "-p",
        "80",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ])
    .await;
    let running = c.wait_running("e2e-web", 3).await;
    println!(
        "create -> 3 replicas running: {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    let service_id = c.json(&["service", "ls"]).await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nodes = std::collections::BTreeSet::new();
    for k in &running {
        for label in [
            "shoal.task.id",
            "shoal.service.id",
            "shoal.service.name",
            "shoal.node.id",
        ] {
            assert!(
                k.labels.contains_key(label),
                "{} lacks {label}: {:?}",
                k.name,
                k.labels
            );
        }
        assert_eq!(k.labels["shoal.service.id"], service_id);
        assert!(k.name.starts_with("e2e-web."), "readable name: {}", k.name);
        nodes.insert(k.labels["shoal.node.id"].clone());
        let (env, cmd) = docker::env_and_cmd(&c.engine, &k.id).await.unwrap();
        assert!(env.contains(&"GREETING=hello".to_string()), "{env:?}");
        assert_eq!(cmd, ["httpd", "-f", "-p", "80", "-h", "/www"]);
        let port = docker::host_port(&c.engine, &k.id, 80)
            .await
            .unwrap()
            .expect("a published port");
        let body = eventually("the published port to answer", WAIT, || async move {
            http_get(port).await.map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        assert!(body.contains("shoal test page v1"), "{body}");
    }
    assert_eq!(nodes.len(), 2, "3 replicas spread over both agents");

    c.ok(&["service", "scale", "-d", "e2e-web=5"]).await;
    c.wait_running("e2e-web", 5).await;
    c.ok(&["service", "scale", "-d", "e2e-web=1"]).await;
    c.wait_running("e2e-web", 1).await;
    c.ok(&["service", "rm", "e2e-web"]).await;
    eventually("no container left", WAIT, || async {
        let n = c.all("e2e-web").await.len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} left"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn twenty_replicas_converge() {
    let c = Cluster::start().await;
    let t0 = Instant::now();
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-many",
        "--replicas",
        "20",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    c.wait_running("e2e-many", 20).await;
    println!(
        "create -> 20 replicas running: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    c.ok(&["service", "rm", "e2e-many"]).await;
}

#[tokio::test]
async fn killed_and_unhealthy_containers_are_replaced() {
    let c = Cluster::start().await;
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-kill",
        "--restart-delay",
        "0s",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    let first = c.wait_running("e2e-kill", 1).await.remove(0);
    let t0 = Instant::now();
    c.engine
        .kill_container(
            &first.id,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let second = eventually("a replacement container", WAIT, || async {
        let r = docker::running(&c.engine, "e2e-kill")
            .await
            .map_err(|e| e.to_string())?;
        match r.into_iter().find(|k| k.id != first.id) {
            Some(k) => Ok(k),
            None => Err("no replacement yet".into()),
        }
    })
    .await
    .unwrap();
    println!(
        "docker kill -> replacement running: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert_ne!(
        second.labels["shoal.task.id"], first.labels["shoal.task.id"],
        "a new task"
    );

    // A health check that fails: the task never counts as running and is replaced.
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-sick",
        "--restart-delay",
        "0s",
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "200ms",
        "--health-retries",
        "1",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    eventually(
        "an unhealthy task failed with the probe output",
        WAIT,
        || async {
            let tasks = c.json(&["service", "ps", "e2e-sick"]).await;
            let failed = tasks.iter().filter(|t| t["state"] == "failed").count();
            let msg = tasks
                .iter()
                .find(|t| t["state"] == "failed")
                .map(|t| format!("{} {}", t["message"], t["error"]));
            match msg {
                Some(m) if failed >= 2 && m.contains("unhealthy") => Ok(()),
                other => Err(format!("{failed} failed: {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.ok(&["service", "rm", "e2e-kill", "e2e-sick"]).await;
}

#[tokio::test]
async fn a_killed_agent_is_replaced_and_its_stale_containers_go_on_return() {
    let mut c = Cluster::start().await;
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-ha",
        "--replicas",
        "4",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    let before = c.wait_running("e2e-ha", 4).await;
    let lost_node = c.agents[0].node_id().await.unwrap();
    let on_lost = before
        .iter()
        .filter(|k| k.labels["shoal.node.id"] == lost_node)
        .count();
    assert!(on_lost > 0, "the lost agent ran some replicas");

    let t0 = Instant::now();
    c.agents[0].kill();
    // Its containers keep running (the engine is shared); shoal must start
    // replacements on the other agent.
    let other = c.agents[1].node_id().await.unwrap();
    eventually("4 replicas on the surviving agent", WAIT, || async {
        let r = docker::running(&c.engine, "e2e-ha")
            .await
            .map_err(|e| e.to_string())?;
        let on_other = r
            .iter()
            .filter(|k| k.labels["shoal.node.id"] == other)
            .count();
        if on_other == 4 {
            Ok(())
        } else {
            Err(format!("{on_other} on the survivor"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    println!(
        "agent kill -9 -> replacements running: {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    c.agents[0].restart().unwrap();
    eventually(
        "exactly 4 containers once the agent is back",
        WAIT,
        || async {
            let all = c.all("e2e-ha").await;
            let running = all.iter().filter(|k| k.state == "running").count();
            if all.len() == 4 && running == 4 {
                Ok(())
            } else {
                Err(format!("{} containers, {running} running", all.len()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.ok(&["service", "rm", "e2e-ha"]).await;
}

#[tokio::test]
async fn an_image_update_rolls_tasks_over() {
    let c = Cluster::start().await;
    // `sleep` as PID 1 ignores SIGTERM: a short grace keeps each stop brief.
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-roll",
        "--replicas",
        "3",
        "--stop-grace-period",
        "1s",
        IMAGE,
        "sleep",
        "3600",
    ])
    .await;
    c.wait_running("e2e-roll", 3).await;
    let t0 = Instant::now();
    c.ok(&[
        "service",
        "update",
        "-d",
        "--update-parallelism",
        "1",
        "--image",
        IMAGE_V2,
        "e2e-roll",
    ])
    .await;
    eventually("3 running containers of v2", WAIT, || async {
        let tasks = c.json(&["service", "ps", "e2e-roll"]).await;
        let v2 = tasks
            .iter()
            .filter(|t| {
                t["desired_state"] == "running" && t["state"] == "running" && t["image"] == IMAGE_V2
            })
            .count();
        let containers = docker::running(&c.engine, "e2e-roll")
            .await
            .map_err(|e| e.to_string())?
            .len();
        if v2 == 3 && containers == 3 {
            Ok(())
        } else {
            Err(format!("{v2} tasks on v2, {containers} containers"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    println!(
        "rolling update of 3 replicas: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    c.ok(&["service", "rm", "e2e-roll"]).await;
}

#[tokio::test]
async fn a_missing_image_is_rejected_readably_without_a_hot_loop() {
    let c = Cluster::start().await;
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-missing",
        "shoal-test/no-such-image:1",
    ])
    .await;
    eventually("a rejected task", WAIT, || async {
        let tasks = c.json(&["service", "ps", "e2e-missing"]).await;
        match tasks.iter().find(|t| t["state"] == "rejected") {
            Some(t) if t["error"].as_str().unwrap_or("").contains("no-such-image") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // With Swarm's default 5 s restart delay, 6 s hold at most 3 attempts.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attempts = c.json(&["service", "ps", "e2e-missing"]).await.len();
    assert!(
        attempts <= 4,
        "{attempts} attempts in ~6 s: the restart loop is hot"
    );
    c.ok(&["service", "rm", "e2e-missing"]).await;
}

#[tokio::test]
async fn bad_container_input_gets_clear_errors() {
    let c = Cluster::start().await;
    for (args, needle) in [
        (
            vec!["--mount", "type=bind,source=relative/dir,target=/data"],
            "mount",
        ),
        (vec!["--mount", "type=bind,source=/tmp"], "target"),
        (vec!["-p", "70000:80"], "publish"),
    ] {
        let mut full = vec!["service", "create", "-d", "--name", "e2e-bad"];
        full.extend(args.iter().copied());
        full.push(IMAGE);
        let err = c.fails(&full).await;
        assert!(err.contains(needle), "{full:?}: {err}");
    }
    assert!(
        c.fails(&["service", "ls", "--format", "xml"])
            .await
            .contains("format")
    );

    // A host port already bound by something else: the task fails with the engine's words.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let publish = format!("published={port},target=80,mode=host");
    c.ok(&[
        "service", "create", "-d", "--name", "e2e-busy", "-p", &publish, IMAGE, "sleep", "3600",
    ])
    .await;
    eventually("the port conflict reported", WAIT, || async {
        let tasks = c.json(&["service", "ps", "e2e-busy"]).await;
        let err = tasks
            .iter()
            .map(|t| t["error"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
            .join(" | ");
        if err.contains("port") || err.contains("address already in use") {
            Ok(())
        } else {
            Err(err)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    drop(listener);
    c.ok(&["service", "rm", "e2e-busy"]).await;
}

#[tokio::test]
async fn an_agent_without_an_engine_says_so_and_joins_once_it_appears() {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let socket = dir.path().join("docker.sock");
    let log = dir.path().join("agent.log");
    let mut agent = std::process::Command::new(shoal_tests::process::shoal_bin())
        .args([
            "agent",
            "--manager",
            &m.addr.to_string(),
            "--node-name",
            "late-engine",
        ])
        .env("SHOAL_JOIN_TOKEN", m.join_target().await.unwrap().token)
        .arg("--data-dir")
        .arg(dir.path())
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let said = eventually("the agent to report the missing engine", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("not running") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    // The engine "comes up" at the path the agent keeps trying.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let joined = eventually(
        "the agent to register once the engine answers",
        WAIT,
        || async {
            let out = m.cli(&["node", "ls", "--format", "json"]).await;
            let nodes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if nodes
                .iter()
                .any(|n| n["hostname"] == "late-engine" && n["status"] == "ready")
            {
                Ok(())
            } else {
                Err(format!("{nodes:?}"))
            }
        },
    )
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    said.unwrap();
    joined.unwrap_or_else(|e| panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
}

#[tokio::test]
async fn service_logs_show_both_replicas_with_task_prefixes_tail_and_follow() {
    let c = Cluster::start().await;
    let script = "echo hello-$HOSTNAME; echo oops >&2; sleep 3600";
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-logs",
        "--replicas",
        "2",
        IMAGE,
        "sh",
        "-c",
        script,
    ])
    .await;
    let containers = c.wait_running("e2e-logs", 2).await;
    // Per task: the prefix `service logs` must print, and the container's hostname.
    let mut expected = Vec::new();
    for t in c.json(&["service", "ps", "e2e-logs"]).await {
        if t["state"] != "running" {
            continue;
        }
        let id = t["id"].as_str().unwrap();
        let prefix = format!(
            "{}.{}@{}    | ",
            t["name"].as_str().unwrap(),
            &id[..12],
            t["node"].as_str().unwrap()
        );
        let container = containers
            .iter()
            .find(|x| x.labels.get("shoal.task.id").map(String::as_str) == Some(id))
            .unwrap();
        let inspect = c
            .engine
            .inspect_container(&container.id, None)
            .await
            .unwrap();
        let hostname = inspect.config.and_then(|cfg| cfg.hostname).unwrap();
        expected.push((prefix, hostname));
    }
    assert_eq!(expected.len(), 2);

    // The containers write their lines soon after they start: poll until both are there.
    let cluster = &c;
    let run = |args: &'static [&'static str]| async move {
        let out = tokio::time::timeout(WAIT, cluster.manager.cli(args))
            .await
            .expect("service logs ends");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (out, err) = eventually("both replicas' lines", WAIT, || async {
        let (out, err) = run(&["service", "logs", "e2e-logs"]).await;
        if out.lines().count() == 2 && err.lines().count() == 2 {
            Ok((out, err))
        } else {
            Err(format!("stdout {out:?}, stderr {err:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    for (prefix, hostname) in &expected {
        let hello = format!("{prefix}hello-{hostname}");
        assert!(
            out.lines().any(|l| l == hello),
            "{hello:?} not in stdout:\n{out}"
        );
        let oops = format!("{prefix}oops");
        assert!(
            err.lines().any(|l| l == oops),
            "{oops:?} not in stderr:\n{err}"
        );
    }

    // --tail 1: one line per container (which one depends on how the engine
    // interleaved stdout and stderr).
    let (out, err) = run(&["service", "logs", "--tail", "1", "e2e-logs"]).await;
    let all: Vec<&str> = out.lines().chain(err.lines()).collect();
    assert_eq!(all.len(), 2, "{all:?}");
    for (prefix, _) in &expected {
        assert_eq!(
            all.iter()
                .filter(|l| l.starts_with(prefix.as_str()))
                .count(),
            1,
            "{prefix:?} in {all:?}"
        );
    }

    // --follow shows a line written after it started.
    let ticker = "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 1; done";
    c.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "e2e-logs-f",
        IMAGE,
        "sh",
        "-c",
        ticker,
    ])
    .await;
    c.wait_running("e2e-logs-f", 1).await;
    let started_ns = i128::from(shoal_proto::now_ms()) * 1_000_000;
    let mut follow = tokio::process::Command::new(shoal_tests::process::shoal_bin())
        .env("SHOAL_CERT_PATH", c.manager.admin_dir())
        .args([
            "--host",
            &c.manager.addr.to_string(),
            "service",
            "logs",
            "-f",
            "-t",
            "e2e-logs-f",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let fresh = tokio::time::timeout(WAIT, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("--follow ended early");
            let (stamp, rest) = line.split_once(' ').unwrap();
            let ns = shoal_proto::rfc3339::parse_ns(stamp)
                .unwrap_or_else(|| panic!("no timestamp: {line}"));
            assert!(
                rest.starts_with("e2e-logs-f.1.") && rest.contains("    | tick-"),
                "{line}"
            );
            if i128::from(ns) > started_ns + 1_000_000_000 {
                return line;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("--follow showed no new line\n{}", c.logs()));
    println!("--follow showed: {fresh}");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "--follow exited by itself"
    );
    follow.kill().await.unwrap();
}
