//! Issue 6 on the real Docker engine: a manager failover leaves running
//! containers alone. Three `shoal manager` processes and one `shoal agent`
//! on the local engine; the leader is killed with SIGKILL while two
//! replicas run. The agent, which joined through the old leader, finds the
//! new one (the session told it every manager's address) within the grace
//! period the new leader gives every READY node, so its node never goes
//! DOWN, no task is rescheduled and the same two containers keep running.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_proto::GetClusterRequest;
use shoal_tests::docker::{self, AgentProcess, Cleanup, IMAGE};
use shoal_tests::process::{ManagerProcess, manager_token};
use shoal_tests::wait::eventually;

const WAIT: Duration = Duration::from_secs(60);
/// How long the cluster is watched once the new leader answers: several
/// grace periods of the default 3 x 500 ms, and past the window it gives
/// READY nodes to find it (grace + 3 s).
const WATCH: Duration = Duration::from_secs(6);

async fn json(m: &ManagerProcess, args: &[&str]) -> Result<Vec<Value>, String> {
    let host = m.socket_host();
    let mut full = args.to_vec();
    full.extend(["--host", &host, "--format", "json"]);
    let out = tokio::process::Command::new(shoal_tests::process::shoal_bin())
        .args(&full)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// (task id, container id) of the running tasks of `service`, as `m` says,
/// and whether its agent node is READY.
async fn observe(m: &ManagerProcess, service: &str) -> Result<(BTreeSet<String>, bool), String> {
    let tasks = json(m, &["service", "ps", service]).await?;
    let running: BTreeSet<String> = tasks
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let nodes = json(m, &["node", "ls"]).await?;
    let ready = nodes
        .iter()
        .any(|n| n["role"] == "worker" && n["status"] == "ready");
    Ok((running, ready))
}

#[tokio::test]
async fn a_manager_failover_leaves_running_containers_alone() {
    shoal_tests::init();
    docker::ensure_images();
    let mut first = ManagerProcess::start(&[]).await.unwrap();
    let token = manager_token(&mut first.control().await.unwrap())
        .await
        .unwrap();
    let second = ManagerProcess::join(&first, &token).await.unwrap();
    let third = ManagerProcess::join(&first, &token).await.unwrap();
    let cleanup = Cleanup::default();
    let agent = AgentProcess::start(&first.join_target().await.unwrap(), "ha-dock").unwrap();
    cleanup.watch_node(&agent.node_id().await.unwrap());
    let engine = docker::engine().await;

    let out = first
        .cli(&[
            "service",
            "create",
            "-d",
            "--name",
            "ha-web",
            "--replicas",
            "2",
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
    let (tasks, containers) = eventually("2 running replicas", WAIT, || async {
        let (tasks, ready) = observe(&first, "ha-web").await?;
        let running = docker::running(&engine, "ha-web")
            .await
            .map_err(|e| e.to_string())?;
        if tasks.len() == 2 && running.len() == 2 && ready {
            let ids: BTreeSet<String> = running.into_iter().map(|c| c.id).collect();
            Ok((tasks, ids))
        } else {
            Err(format!(
                "{} tasks, {} containers",
                tasks.len(),
                running.len()
            ))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));

    let killed = Instant::now();
    first.kill();
    let survivors = [&second, &third];
    let leader = eventually("a new leader", WAIT, || async {
        for m in survivors {
            let mut c = m.socket_control().await.map_err(|e| e.to_string())?;
            let info = c
                .get_cluster(GetClusterRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if let Some(leader) = survivors
                .iter()
                .find(|s| s.addr.to_string() == info.leader_addr)
            {
                return Ok(*leader);
            }
        }
        Err("no leader among the survivors yet".to_string())
    })
    .await
    .unwrap();
    println!("new leader after {:?}", killed.elapsed());

    // Wait for the new leader to answer (it may still be taking over and
    // refuse reads); from then on, watch it for several grace periods: the
    // node stays READY and the same two tasks stay running, in the same two
    // containers.
    let check = |(now, ready): (BTreeSet<String>, bool)| {
        assert!(ready, "the agent's node went down after the failover");
        assert_eq!(now, tasks, "tasks changed after the failover");
    };
    check(
        eventually("the new leader to answer", WAIT, || {
            observe(leader, "ha-web")
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log())),
    );
    let answered = Instant::now();
    println!("new leader answering after {:?}", killed.elapsed());
    let (mut checks, mut refused) = (1, 0);
    while answered.elapsed() < WATCH {
        match observe(leader, "ha-web").await {
            Ok(seen) => {
                check(seen);
                checks += 1;
            }
            Err(e) => {
                println!("not answering: {e}");
                refused += 1;
            }
        }
    }
    let running: BTreeSet<String> = docker::running(&engine, "ha-web")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(running, containers, "the containers were replaced");
    println!(
        "{checks} checks over {WATCH:?} ({refused} unanswered): same tasks, same containers, \
         node ready"
    );
}
