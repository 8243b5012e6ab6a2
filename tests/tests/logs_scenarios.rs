//! `service logs` on hollow nodes: a real `shoal manager` process and the real
//! CLI, with in-process agents on the fake runtime, whose containers each
//! "write" the same few synthetic lines (`shoal_agent::fake::fake_log_line`).

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use shoal_agent::fake::{FAKE_LOG_LINES, fake_log_line};
use shoal_tests::agents::HollowAgent;
use shoal_tests::process::{ManagerProcess, shoal_bin};
use shoal_tests::wait::eventually;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

async fn ok(m: &ManagerProcess, args: &[&str]) -> (String, String) {
    let out = tokio::time::timeout(WAIT, m.cli(args))
        .await
        .unwrap_or_else(|_| panic!("shoal {args:?} did not finish in {WAIT:?}\n{}", m.log()));
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}\nmanager log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A running task: (id, `service.slot`, node hostname).
type RunningTask = (String, String, String);

async fn running_tasks(m: &ManagerProcess, service: &str, n: usize) -> Vec<RunningTask> {
    eventually(&format!("{n} running tasks of {service}"), WAIT, || async {
        let (out, _) = ok(m, &["service", "ps", service, "--format", "json"]).await;
        let tasks: Vec<Value> = serde_json::from_str(&out).unwrap();
        let running: Vec<RunningTask> = tasks
            .iter()
            .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap().to_string();
                (s("id"), s("name"), s("node"))
            })
            .collect();
        if running.len() == n {
            Ok(running)
        } else {
            Err(format!("{} running", running.len()))
        }
    })
    .await
    .unwrap()
}

/// The line `service logs` prints for line `n` of a task.
fn expected((id, name, node): &RunningTask, n: u64) -> String {
    format!("{name}.{}@{node}    | {}", &id[..12], fake_log_line(id, n))
}

async fn cluster(agents: usize) -> (ManagerProcess, Vec<HollowAgent>) {
    shoal_tests::init();
    let m = ManagerProcess::start(&[]).await.unwrap();
    let cluster = m.join_target().await.unwrap();
    let started: Vec<HollowAgent> = (1..=agents)
        .map(|i| HollowAgent::start(&cluster, &format!("node-{i}"), &[]))
        .collect();
    // Every node ready before a service is created, or the scheduler places
    // all its tasks on the nodes that happened to register first.
    eventually(&format!("{agents} ready nodes"), WAIT, || async {
        let (out, _) = ok(&m, &["node", "ls", "--format", "json"]).await;
        let nodes: Vec<Value> = serde_json::from_str(&out).unwrap();
        let ready = nodes
            .iter()
            .filter(|n| n["status"] == "ready" && n["role"] == "worker")
            .count();
        if ready == agents {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await
    .unwrap();
    (m, started)
}

#[tokio::test]
async fn service_logs_show_every_tasks_lines_prefixed_by_task_name() {
    let (m, _agents) = cluster(2).await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "3",
            "img:v1",
        ],
    )
    .await;
    let tasks = running_tasks(&m, "web", 3).await;
    let nodes: std::collections::BTreeSet<&str> = tasks.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(nodes.len(), 2, "tasks spread over both nodes: {tasks:?}");

    // Everything: stdout lines on stdout, the last (stderr) line on stderr.
    let (out, err) = ok(&m, &["service", "logs", "web"]).await;
    let (out, err): (Vec<&str>, Vec<&str>) = (out.lines().collect(), err.lines().collect());
    assert_eq!(
        out.len(),
        tasks.len() * (FAKE_LOG_LINES as usize - 1),
        "{out:#?}"
    );
    assert_eq!(err.len(), tasks.len(), "{err:#?}");
    for task in &tasks {
        for n in 1..FAKE_LOG_LINES {
            assert!(
                out.contains(&expected(task, n).as_str()),
                "{:?} missing from {out:#?}",
                expected(task, n)
            );
        }
        assert!(
            err.contains(&expected(task, FAKE_LOG_LINES).as_str()),
            "{err:#?}"
        );
        // A task's lines keep their order.
        let first = out.iter().position(|l| *l == expected(task, 1)).unwrap();
        let second = out.iter().position(|l| *l == expected(task, 2)).unwrap();
        assert!(first < second);
    }

    // --tail 1: the last line of each task only (the stderr one).
    let (out, err) = ok(&m, &["service", "logs", "--tail", "1", "web"]).await;
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), tasks.len(), "{err}");

    // --timestamps: an RFC 3339 time first; --no-task-ids, --raw.
    let (out, _) = ok(&m, &["service", "logs", "-t", "--no-task-ids", "web"]).await;
    for line in out.lines() {
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert!(shoal_proto::rfc3339::parse_ns(stamp).is_some(), "{line}");
        let (prefix, _) = rest.split_once("    | ").unwrap();
        let (name, node) = prefix.split_once('@').unwrap();
        assert!(
            name.starts_with("web.") && name.matches('.').count() == 1,
            "{line}"
        );
        assert!(node.starts_with("node-"), "{line}");
    }
    let (out, _) = ok(&m, &["service", "logs", "--raw", "web"]).await;
    assert!(out.lines().all(|l| l.starts_with("fake log line")), "{out}");

    // An unknown service is an error naming it.
    let out = m.cli(&["service", "logs", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[tokio::test]
async fn service_logs_follow_streams_until_the_client_leaves() {
    let (m, _agents) = cluster(1).await;
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
    let tasks = running_tasks(&m, "web", 2).await;

    let mut child = tokio::process::Command::new(shoal_bin())
        .env("SHOAL_CERT_PATH", m.admin_dir())
        .args([
            "--host",
            &m.addr.to_string(),
            "service",
            "logs",
            "--follow",
            "web",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut want: Vec<String> = tasks
        .iter()
        .flat_map(|t| (1..FAKE_LOG_LINES).map(|n| expected(t, n)))
        .collect();
    tokio::time::timeout(WAIT, async {
        while !want.is_empty() {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the follow stream ended early");
            want.retain(|w| *w != line);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("lines never shown: {want:#?}"));
    // Still following: the fake containers run on.
    assert!(
        child.try_wait().unwrap().is_none(),
        "--follow exited by itself"
    );
    child.kill().await.unwrap();
    // The manager drops the subscription once the client is gone; a new
    // request is served as before.
    let (out, _) = ok(&m, &["service", "logs", "web"]).await;
    assert_eq!(out.lines().count(), 2 * (FAKE_LOG_LINES as usize - 1));
}

#[tokio::test]
async fn service_logs_leave_out_nodes_without_an_agent() {
    let (m, mut agents) = cluster(2).await;
    ok(
        &m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "4",
            "img:v1",
        ],
    )
    .await;
    let tasks = running_tasks(&m, "web", 4).await;
    agents[1].stop().await;
    // The command ends even though node-2 cannot answer, with node-1's lines.
    let (out, _) = ok(&m, &["service", "logs", "web"]).await;
    let on_node1: Vec<&RunningTask> = tasks.iter().filter(|t| t.2 == "node-1").collect();
    assert!(!on_node1.is_empty());
    for task in on_node1 {
        assert!(out.contains(&expected(task, 1)), "{out}");
    }
    assert!(!out.contains("@node-2"), "{out}");
}
