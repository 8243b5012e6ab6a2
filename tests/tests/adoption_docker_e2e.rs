//! Adoption on the real Docker engine: an agent killed with SIGKILL leaves its
//! containers running, and started again on the same data dir it adopts them
//! (the README's "the next `make up` adopts them") instead of starting new
//! ones. Two cases: `shoal up`, manager and agent in one process, and a
//! `shoal agent` process beside a `shoal manager` that keeps running.
//!
//! Each is checked on the engine, not only through shoal: after the restart
//! the node has exactly the containers it had, the same ids, none added, none
//! restarted (`State.StartedAt` unchanged). Without an engine the tests are
//! skipped with a note, unless `SHOAL_REQUIRE_DOCKER=1`. Containers are
//! removed on exit, pass or fail (the `Cleanup` guard).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::docker::{self, AgentProcess, Cleanup, IMAGE, UpProcess};
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);
const REPLICAS: usize = 3;
/// What the agent logs for each container it adopts.
const ADOPTING: &str = "adopting the task's container";

/// What a case restarts, and how the test talks to its cluster.
trait Restartable {
    async fn cli(&self, args: &[&str]) -> Output;
    /// The agent's log so far (`shoal up` logs manager and agent together).
    fn agent_log(&self) -> String;
    /// SIGKILL the agent (and whatever shares its process), start it again.
    fn kill_and_start(&mut self);
}

impl Restartable for UpProcess {
    async fn cli(&self, args: &[&str]) -> Output {
        UpProcess::cli(self, args).await
    }

    fn agent_log(&self) -> String {
        self.log()
    }

    fn kill_and_start(&mut self) {
        self.kill();
        self.launch().expect("start shoal up again");
    }
}

/// A manager that keeps running and the agent process that is restarted.
struct ManagerAndAgent {
    manager: ManagerProcess,
    agent: AgentProcess,
}

impl Restartable for ManagerAndAgent {
    async fn cli(&self, args: &[&str]) -> Output {
        self.manager.cli(args).await
    }

    fn agent_log(&self) -> String {
        self.agent.log()
    }

    fn kill_and_start(&mut self) {
        self.agent.restart().expect("start the agent again");
    }
}

async fn json<R: Restartable>(cluster: &R, args: &[&str]) -> Result<Vec<Value>, String> {
    let mut full = args.to_vec();
    full.extend(["--format", "json"]);
    let out = cluster.cli(&full).await;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Ids of the tasks of `service` shoal says run, and whether the node is READY.
async fn running_tasks<R: Restartable>(
    cluster: &R,
    service: &str,
) -> Result<(BTreeSet<String>, bool), String> {
    let tasks = json(cluster, &["service", "ps", service]).await?;
    let running = tasks
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let nodes = json(cluster, &["node", "ls"]).await?;
    let ready = nodes
        .iter()
        .any(|n| n["role"] == "worker" && n["status"] == "ready");
    Ok((running, ready))
}

/// Every container of `service` on `node`, whatever its state, as the engine
/// reports it: id -> (state, StartedAt).
async fn containers_on_engine(
    engine: &bollard::Docker,
    node: &str,
    service: &str,
) -> Result<BTreeMap<String, (String, String)>, String> {
    let all = docker::containers(engine, "shoal.node.id", node)
        .await
        .map_err(|e| e.to_string())?;
    let mut found = BTreeMap::new();
    for c in all {
        if c.labels.get("shoal.service.name").map(String::as_str) != Some(service) {
            continue;
        }
        let started = docker::started_at(engine, &c.id)
            .await
            .map_err(|e| e.to_string())?;
        found.insert(c.id, (c.state, started));
    }
    Ok(found)
}

/// Run `service` with three replicas on `cluster`'s node, SIGKILL the agent,
/// start it again, and check it adopted the very same containers.
async fn adopts_after_kill<R: Restartable>(
    engine: &bollard::Docker,
    cluster: &mut R,
    node: &str,
    service: &str,
) {
    let replicas = REPLICAS.to_string();
    let out = cluster
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            service,
            "--replicas",
            &replicas,
            IMAGE,
            "sleep",
            "3600",
        ])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (tasks, before) = eventually(&format!("{REPLICAS} running replicas"), WAIT, || async {
        let (tasks, ready) = running_tasks(cluster, service).await?;
        let containers = containers_on_engine(engine, node, service).await?;
        let running = containers.values().filter(|(s, _)| s == "running").count();
        if tasks.len() == REPLICAS && running == REPLICAS && containers.len() == REPLICAS && ready {
            Ok((tasks, containers))
        } else {
            Err(format!("{} tasks, containers {containers:?}", tasks.len()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", tail(&cluster.agent_log())));

    let logged = cluster.agent_log().len();
    cluster.kill_and_start();
    let restarted = Instant::now();
    // The containers outlive the agent: the engine still runs them.
    let meanwhile = containers_on_engine(engine, node, service).await.unwrap();
    assert_eq!(
        meanwhile, before,
        "the containers changed when the agent died"
    );

    // Converged again: the new agent adopted each container (it says so once
    // it has its first assignment set from the manager), and shoal shows the
    // same tasks running on a READY node.
    eventually("the containers to be adopted", WAIT, || async {
        let log = cluster.agent_log();
        let since = &log[logged.min(log.len())..];
        let adopted: Vec<&str> = since.lines().filter(|l| l.contains(ADOPTING)).collect();
        let missing: Vec<&String> = before
            .keys()
            .filter(|id| !adopted.iter().any(|l| l.contains(id.as_str())))
            .collect();
        if !missing.is_empty() {
            return Err(format!("not adopted yet: {missing:?}"));
        }
        let (now, ready) = running_tasks(cluster, service).await?;
        if now == tasks && ready {
            Ok(())
        } else {
            Err(format!(
                "tasks {now:?} (were {tasks:?}), node ready: {ready}"
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", tail(&cluster.agent_log())));
    println!(
        "kill -9 -> {REPLICAS} containers adopted: {:.2} s",
        restarted.elapsed().as_secs_f64()
    );

    // The engine agrees: the same containers, running, none added, none
    // restarted.
    let after = containers_on_engine(engine, node, service).await.unwrap();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the node's containers of {service} changed: before {before:?}, after {after:?}"
    );
    for (id, (state, started)) in &after {
        assert_eq!(state, "running", "container {id}");
        assert_eq!(
            started, &before[id].1,
            "container {id} was restarted (StartedAt changed)"
        );
    }
    let log = cluster.agent_log();
    assert_eq!(
        log[logged..].matches(ADOPTING).count(),
        REPLICAS,
        "each container adopted once:\n{}",
        tail(&log)
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test]
async fn a_killed_shoal_up_adopts_its_containers_when_started_again() {
    shoal_tests::init();
    let Some(engine) = docker::engine_or_skip().await else {
        return;
    };
    docker::ensure_images();
    // Declared first, dropped last: the process dies before the cleanup runs.
    let cleanup = Cleanup::default();
    let mut up = UpProcess::start().unwrap();
    let node = up
        .node_id()
        .await
        .unwrap_or_else(|e| panic!("{e}\nlog:\n{}", tail(&up.log())));
    cleanup.watch_node(&node);
    adopts_after_kill(&engine, &mut up, &node, "adopt-up").await;
}

#[tokio::test]
async fn a_killed_agent_adopts_its_containers_when_started_again() {
    shoal_tests::init();
    let Some(engine) = docker::engine_or_skip().await else {
        return;
    };
    docker::ensure_images();
    let cleanup = Cleanup::default();
    // A 30 s grace period (500 ms x 60): what is tested is adoption by the
    // restarted agent, not whether a debug build restarts within the
    // default 1.5 s on a loaded machine (past it the node would go DOWN and
    // its tasks be replaced, which other scenarios cover).
    let manager = ManagerProcess::start(&["--heartbeat-grace-multiplier", "60"])
        .await
        .unwrap();
    let agent = AgentProcess::start(&manager.join_target().await.unwrap(), "adopt-dock").unwrap();
    let node = agent.node_id().await.unwrap();
    cleanup.watch_node(&node);
    let mut cluster = ManagerAndAgent { manager, agent };
    adopts_after_kill(&engine, &mut cluster, &node, "adopt-agent").await;
}
