//! Issue 3's end-to-end scenarios on the real Docker engine, the lifecycle:
//! replicas run as labelled containers, scale, converge, roll over to a new
//! image, and show their logs. Failures (killed containers and agents, bad
//! images and input, no engine) are in `docker_failures_e2e.rs`. Both use
//! [`shoal_tests::docker_cluster::Cluster`]: every scenario removes its
//! containers on exit, pass or fail.

use std::time::Instant;

use shoal_tests::docker::{self, IMAGE, IMAGE_V2};
use shoal_tests::docker_cluster::*;
use shoal_tests::wait::eventually;

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
