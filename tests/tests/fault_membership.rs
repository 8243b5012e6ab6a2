//! Issue 6's fault suite, membership: real `shoal manager` processes on
//! loopback ports (`shoal_tests::group`).
//!
//! - `node ls` shows each manager's status as the leader sees it; `node
//!   demote` and `node rm` take managers out of the Raft group, refusing
//!   what would break quorum; a removed manager stops, and is refused if
//!   started again.
//! - `--force-new-cluster` on the survivor of a lost quorum keeps the state
//!   and the agents.
//! - 3 managers grow to 5 and shrink back while writing, the joiners
//!   catching up by snapshot.

use std::collections::BTreeSet;

use shoal_tests::agents::HollowAgent;
use shoal_tests::group::*;
use shoal_tests::process::{ManagerProcess, manager_token};
use shoal_tests::wait::eventually;

#[tokio::test]
async fn managers_are_demoted_and_removed_without_breaking_quorum() {
    let [first, mut second, mut third] = three_managers().await;
    let (id1, id2, id3) = (
        node_id(&first).await,
        node_id(&second).await,
        node_id(&third).await,
    );
    wait_listed(
        &first,
        &[(&id1, "leader"), (&id2, "reachable"), (&id3, "reachable")],
    )
    .await;
    // Node reads go to the leader, so a follower shows the same.
    wait_listed(
        &second,
        &[(&id1, "leader"), (&id2, "reachable"), (&id3, "reachable")],
    )
    .await;

    // A live manager is demoted, not removed.
    let (success, _, stderr) = cli(&first, &["node", "rm", &id3]).await;
    assert!(!success && stderr.contains("demote it first"), "{stderr}");

    // Manager 3 goes down: it shows unreachable. Demoting 2 now would leave
    // one reachable manager of two: refused. Removing 3, which is down, is fine.
    third.kill();
    wait_listed(
        &first,
        &[(&id1, "leader"), (&id2, "reachable"), (&id3, "unreachable")],
    )
    .await;
    let (success, _, stderr) = cli(&first, &["node", "demote", &id2]).await;
    assert!(
        !success && stderr.contains("a quorum needs"),
        "demoting 2 with 3 down: {stderr}"
    );
    ok(&first, &["node", "rm", &id3]).await;
    wait_listed(&first, &[(&id1, "leader"), (&id2, "reachable")]).await;

    // Started again, the removed manager is refused and stops.
    third.launch().unwrap();
    wait_removed_exit(&mut third).await;
    let info = cluster_info(&first).await.unwrap();
    let cluster = info.cluster.unwrap();
    assert!(cluster.removed_raft_ids.contains(&3), "{cluster:?}");

    // Demoting the leader hands leadership to 2 first; 1 then leaves and stops.
    let mut first = first;
    ok(&second, &["node", "demote", &id1]).await;
    wait_removed_exit(&mut first).await;
    wait_listed(&second, &[(&id2, "leader")]).await;
    ok(
        &second,
        &["service", "create", "-d", "--name", "after", "img:v1"],
    )
    .await;
    // The last manager cannot leave.
    let (success, _, stderr) = cli(&second, &["node", "demote", &id2]).await;
    assert!(!success && stderr.contains("last manager"), "{stderr}");
    second.terminate().unwrap();
}

#[tokio::test]
async fn force_new_cluster_recovers_from_a_lost_quorum_with_the_state_and_the_agents() {
    let [mut first, mut second, mut third] = three_managers().await;
    let target = first.join_target().await.unwrap();
    let _agent = HollowAgent::start(&target, "w1", &[]);
    wait_agent_ready(&first, "w1").await;
    ok(
        &first,
        &["service", "create", "-d", "--name", "kept", "img:v1"],
    )
    .await;
    let (id1, id2) = (node_id(&first).await, node_id(&second).await);

    // Two of three managers are lost for good: no write goes through.
    second.kill();
    third.kill();
    let (success, _, stderr) = cli(
        &first,
        &["service", "create", "-d", "--name", "lost", "img:v1"],
    )
    .await;
    assert!(!success, "a write without quorum: {stderr}");

    // Restarted with --force-new-cluster, the survivor leads alone, with
    // the services and the agent it had.
    first.kill();
    first.add_args(&["--force-new-cluster"]);
    first.restart().await.unwrap();
    wait_listed(&first, &[(&id1, "leader")]).await;
    let names = service_names(&first).await.unwrap();
    assert!(names.contains("kept"), "{names:?}");
    ok(
        &first,
        &["service", "create", "-d", "--name", "after", "img:v1"],
    )
    .await;
    wait_agent_ready(&first, "w1").await;
    assert!(
        first.log().contains("forced a new cluster"),
        "{}",
        first.log()
    );

    // An old manager that comes back is refused and stops.
    second.launch().unwrap();
    wait_removed_exit(&mut second).await;
    let cluster = cluster_info(&first).await.unwrap().cluster.unwrap();
    assert!(cluster.removed_nodes.contains_key(&id2), "{cluster:?}");
}

#[tokio::test]
async fn three_managers_grow_to_five_and_back_while_writing_and_joiners_catch_up_by_snapshot() {
    let first = ManagerProcess::start(&["--snapshot-interval", "100"])
        .await
        .unwrap();
    let token = manager_token(&mut first.control().await.unwrap())
        .await
        .unwrap();
    let second = ManagerProcess::join(&first, &token).await.unwrap();
    let third = ManagerProcess::join(&first, &token).await.unwrap();

    let writer = tokio::spawn(write_until_failure(
        first.socket_control().await.unwrap(),
        "w".into(),
    ));
    // Enough writes that the leader has compacted its log a few times.
    eventually("a few hundred writes", WAIT * 2, || async {
        let n = service_names(&first)
            .await
            .map_err(|e| e.to_string())?
            .len();
        if n >= 400 {
            Ok(())
        } else {
            Err(format!("{n} services"))
        }
    })
    .await
    .unwrap();

    let mut fourth = ManagerProcess::join(&first, &token).await.unwrap();
    let mut fifth = ManagerProcess::join(&second, &token).await.unwrap();
    for joiner in [&fourth, &fifth] {
        assert!(
            joiner
                .log()
                .contains("installed raft snapshot from the leader"),
            "{}",
            joiner.log()
        );
    }
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for m in [&first, &second, &third, &fourth, &fifth] {
            ids.push(node_id(m).await);
        }
        ids
    };
    wait_listed(
        &first,
        &[
            (&ids[0], "leader"),
            (&ids[1], "reachable"),
            (&ids[2], "reachable"),
            (&ids[3], "reachable"),
            (&ids[4], "reachable"),
        ],
    )
    .await;

    // Back to three, still writing.
    ok(&first, &["node", "demote", &ids[3], &ids[4]]).await;
    wait_removed_exit(&mut fourth).await;
    wait_removed_exit(&mut fifth).await;
    wait_listed(
        &first,
        &[
            (&ids[0], "leader"),
            (&ids[1], "reachable"),
            (&ids[2], "reachable"),
        ],
    )
    .await;
    let before = service_names(&first).await.unwrap().len();
    eventually("writes to go on with three managers", WAIT, || async {
        let n = service_names(&first)
            .await
            .map_err(|e| e.to_string())?
            .len();
        if n > before + 20 {
            Ok(())
        } else {
            Err(format!("{n} services"))
        }
    })
    .await
    .unwrap();

    // Stop writing (the leader goes away), then compare.
    let mut first = first;
    first.kill();
    let acked: BTreeSet<String> = writer.await.unwrap().into_iter().collect();
    first.launch().unwrap();
    for m in [&first, &second, &third] {
        eventually("every acknowledged write", WAIT, || async {
            let names = service_names(m).await.map_err(|e| e.to_string())?;
            let missing = acked.difference(&names).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} missing"))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
    }
    println!(
        "{} writes acknowledged across 3 -> 5 -> 3 managers, all on the three",
        acked.len()
    );
}
