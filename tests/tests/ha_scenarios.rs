//! Issue 6's first scenarios: several `shoal manager` processes on loopback
//! ports forming one Raft group over mutual TLS. Managers 2 and 3 join with
//! the manager token; writes made through any manager (a follower relays them
//! to the leader) show up on the others' unix sockets; killing the leader
//! with SIGKILL leaves a majority that elects a new leader and accepts writes;
//! the old leader, restarted, follows and catches up, and so does a restarted
//! joined manager. A worker token cannot make a manager. An agent that knows
//! only a follower is sent to the leader.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_proto::control_client::ControlClient;
use shoal_proto::{GetClusterRequest, GetClusterResponse, ListNodesRequest};
use shoal_tests::agents::HollowAgent;
use shoal_tests::group::service_names;
use shoal_tests::process::{
    JoinTarget, ManagerProcess, free_addr, manager_token, shoal_bin, worker_token,
};
use shoal_tests::wait::eventually;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

/// Run a CLI command on `m`'s unix socket that must succeed.
async fn ok_on_socket(m: &ManagerProcess, args: &[&str]) -> String {
    let out = tokio::process::Command::new(shoal_bin())
        .arg("--host")
        .arg(m.socket_host())
        .args(args)
        .output()
        .await
        .expect("run the shoal CLI");
    assert!(
        out.status.success(),
        "shoal {args:?} failed: {}\nmanager log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn cluster_info(m: &ManagerProcess) -> Result<GetClusterResponse, String> {
    let mut c: ControlClient<Channel> = m.socket_control().await.map_err(|e| e.to_string())?;
    c.get_cluster(GetClusterRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

/// Wait until `m`'s own store lists a service named `name`.
async fn sees_service(m: &ManagerProcess, name: &str) {
    eventually(
        &format!("manager {} to list service {name}", m.addr),
        WAIT,
        || async {
            let names = service_names(m).await.map_err(|e| e.to_string())?;
            if names.contains(name) {
                Ok(())
            } else {
                Err(format!("services: {names:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
}

/// Wait until `m`'s own store holds exactly the services `names`.
async fn has_services(m: &ManagerProcess, names: &[&str]) {
    let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    eventually(
        &format!("manager {} to hold services {names:?}", m.addr),
        WAIT,
        || async {
            let found = service_names(m).await.map_err(|e| e.to_string())?;
            if found == want {
                Ok(())
            } else {
                Err(format!("services: {found:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
}

#[tokio::test]
async fn three_managers_replicate_and_survive_the_loss_of_the_leader() {
    let mut first = ManagerProcess::start(&[]).await.unwrap();
    let token = manager_token(&mut first.control().await.unwrap())
        .await
        .unwrap();
    let second = ManagerProcess::join(&first, &token).await.unwrap();
    // Joining through a follower: it issues the certificate, then names the
    // leader, which adds the manager.
    let third = ManagerProcess::join(&second, &token).await.unwrap();

    // Every manager knows the whole group and who leads it.
    let before = cluster_info(&first).await.unwrap();
    let members = &before.cluster.as_ref().unwrap().managers;
    let mut ids: Vec<u64> = members.iter().map(|m| m.raft_id).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "members: {members:?}");
    assert_eq!(before.leader_addr, first.addr.to_string());

    ok_on_socket(
        &first,
        &["service", "create", "-d", "--name", "web", "img:v1"],
    )
    .await;
    sees_service(&second, "web").await;
    sees_service(&third, "web").await;
    for m in [&second, &third] {
        let info = cluster_info(m).await.unwrap();
        assert_eq!(info.leader_addr, first.addr.to_string());
    }
    // A write sent to a follower is relayed to the leader.
    ok_on_socket(
        &third,
        &["service", "create", "-d", "--name", "db", "img:v1"],
    )
    .await;
    sees_service(&first, "db").await;
    sees_service(&second, "db").await;

    // SIGKILL the leader: the other two elect one of themselves.
    let killed_at = Instant::now();
    first.kill();
    let survivors = [&second, &third];
    let leader_addr = eventually("a new leader among the survivors", WAIT, || async {
        let mut seen = Vec::new();
        for m in survivors {
            let info = cluster_info(m).await?;
            seen.push((info.raft_term, info.leader_addr.clone()));
        }
        let (term, addr) = &seen[0];
        let agreed = seen.iter().all(|(t, a)| t == term && a == addr);
        let is_survivor = survivors.iter().any(|m| m.addr.to_string() == *addr);
        if agreed && is_survivor && *term > before.raft_term {
            Ok(addr.clone())
        } else {
            Err(format!("(term, leader) per survivor: {seen:?}"))
        }
    })
    .await
    .unwrap();
    println!(
        "new leader {leader_addr} seen by both survivors {:?} after the SIGKILL",
        killed_at.elapsed()
    );

    let (leader, follower) = if second.addr.to_string() == leader_addr {
        (&second, &third)
    } else {
        (&third, &second)
    };
    ok_on_socket(
        leader,
        &["service", "create", "-d", "--name", "api", "img:v1"],
    )
    .await;
    sees_service(follower, "api").await;
    sees_service(follower, "web").await;

    // The old leader comes back as a follower, catches up, and relays writes.
    first.restart().await.unwrap();
    sees_service(&first, "api").await;
    let info = cluster_info(&first).await.unwrap();
    assert_eq!(info.leader_addr, leader_addr, "the old leader follows");
    ok_on_socket(&first, &["service", "rm", "web"]).await;
    has_services(leader, &["api", "db"]).await;

    // A joined follower, killed and restarted with the same flags, starts from
    // its own data (--join is ignored once joined) and keeps following.
    let mut joined = if second.addr.to_string() == leader_addr {
        third
    } else {
        second
    };
    joined.restart().await.unwrap();
    eventually("the restarted manager to find the leader", WAIT, || async {
        let info = cluster_info(&joined).await?;
        if info.leader_addr == leader_addr {
            Ok(())
        } else {
            Err(format!("leader: {:?}", info.leader_addr))
        }
    })
    .await
    .unwrap();
    ok_on_socket(
        &joined,
        &["service", "create", "-d", "--name", "cache", "img:v1"],
    )
    .await;
    has_services(&joined, &["api", "cache", "db"]).await;
    has_services(&first, &["api", "cache", "db"]).await;
    assert!(joined.log().contains("--join ignored"), "{}", joined.log());
}

#[tokio::test]
async fn a_worker_token_cannot_join_as_a_manager() {
    let first = ManagerProcess::start(&[]).await.unwrap();
    let token = worker_token(&mut first.control().await.unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr().to_string();
    let join = first.addr.to_string();
    let run = tokio::process::Command::new(shoal_bin())
        .args(["manager", "--data-dir"])
        .arg(dir.path())
        .args(["--listen-addr", &listen, "--join", &join, "--token", &token])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("the joining manager should give up at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "joined with a worker token: {stderr}"
    );
    assert!(
        stderr.contains("--token") && stderr.contains("worker join token"),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "the token must not be printed");
    assert!(
        !dir.path().join("raft-id").exists() && !dir.path().join("keys").exists(),
        "a refused join keeps no raft id or data key"
    );
}

#[tokio::test]
async fn an_agent_pointed_at_a_follower_reaches_the_leader() {
    let first = ManagerProcess::start(&[]).await.unwrap();
    let mut control = first.control().await.unwrap();
    let token = manager_token(&mut control).await.unwrap();
    let second = ManagerProcess::join(&first, &token).await.unwrap();
    // The agent knows only the follower: it joins there, is told where the
    // leader is, and opens its session with the leader's dispatcher.
    let follower = JoinTarget {
        addr: second.addr,
        token: worker_token(&mut control).await.unwrap(),
    };
    let agent = HollowAgent::start(&follower, "w1", &[]);
    let node_id = eventually("the agent's node on the leader", WAIT, || async {
        let mut c = first.socket_control().await.map_err(|e| e.to_string())?;
        let nodes = c
            .list_nodes(ListNodesRequest::default())
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .nodes;
        let agents: Vec<_> = nodes
            .into_iter()
            .filter(|n| n.manager_status.is_none())
            .collect();
        match agents.as_slice() {
            [node] => Ok(node.id.clone()),
            other => Err(format!("{} nodes", other.len())),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nfollower log:\n{}", second.log()));
    assert_eq!(Some(node_id), agent.node_id());
}
