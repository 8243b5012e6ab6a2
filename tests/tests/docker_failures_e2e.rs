//! Issue 3's end-to-end scenarios on the real Docker engine, the failures:
//! killed and unhealthy containers are replaced, a killed agent's tasks move
//! and its stale containers go on its return, a missing image and bad
//! container input get readable errors, and an agent without an engine says
//! so. The lifecycle is in `docker_e2e.rs`.

use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::docker::{self, IMAGE};
use shoal_tests::docker_cluster::*;
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;

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
