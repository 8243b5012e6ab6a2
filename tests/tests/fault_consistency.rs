//! Issue 6's fault suite, consistency: real `shoal manager` processes on
//! loopback ports (`shoal_tests::group`), crashed with SIGKILL, paused with
//! SIGSTOP, or partitioned (their Raft traffic cut both ways,
//! `shoal_manager::raft::faults`).
//!
//! - An old leader paused through an election serves no stale read when it
//!   wakes up; one partitioned away refuses reads while the majority elects
//!   and writes, then catches up when healed; a manager cut off from the
//!   majority answers "no quorum" instead of hanging.
//! - SIGKILL every manager in the middle of writes: after the restart every
//!   acknowledged write is on every manager.
//!
//! Random concurrent workloads under the same faults, checked for
//! linearizability, are in `fault_linearizability.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_tests::group::*;
use shoal_tests::wait::eventually;

#[tokio::test]
async fn a_woken_old_leader_serves_no_stale_read_and_a_minority_says_no_quorum() {
    let [first, mut second, mut third] = three_managers().await;
    ok(
        &first,
        &["service", "create", "-d", "--name", "a", "img:v1"],
    )
    .await;

    // Pause the leader; the others elect a new one and take a write.
    first.pause().unwrap();
    let new_leader = eventually("a new leader", WAIT, || async {
        for m in [&second, &third] {
            let info = cluster_info(m).await?;
            if !info.leader_addr.is_empty() && info.leader_addr != first.addr.to_string() {
                return Ok(info.leader_addr);
            }
        }
        Err("no new leader yet".to_string())
    })
    .await
    .unwrap();
    let leader = if second.addr.to_string() == new_leader {
        &second
    } else {
        &third
    };
    ok(
        leader,
        &["service", "create", "-d", "--name", "b", "img:v1"],
    )
    .await;

    // Woken up, the old leader still believes it leads until it hears
    // otherwise: each read it serves must already show "b". It may refuse
    // some while it learns of the new term; it must serve again in time.
    first.resume().unwrap();
    let woken = Instant::now();
    let (mut served, mut refused) = (0, 0);
    while served < SERVED_AFTER_WAKING {
        assert!(
            woken.elapsed() < WAIT,
            "the woken old leader served {served} reads in {WAIT:?} ({refused} refused)"
        );
        match service_names(&first).await {
            Ok(names) => {
                assert!(
                    names.contains("b"),
                    "stale read from the old leader: {names:?}"
                );
                served += 1;
            }
            Err(_) => refused += 1,
        }
    }
    println!(
        "old leader after waking: {served} reads served (all current), {refused} refused, \
         in {:?}",
        woken.elapsed()
    );

    // Cut the first manager off from the majority: it answers "no quorum"
    // within an election timeout (600 ms by default; the bound is loose, the
    // machine is shared), and no read hangs.
    second.kill();
    third.kill();
    let asked = Instant::now();
    let err = loop {
        let answer = tokio::time::timeout(NO_QUORUM_WITHIN, service_names(&first))
            .await
            .unwrap_or_else(|_| {
                panic!("a read on the cut-off manager hung for {NO_QUORUM_WITHIN:?}")
            });
        match answer {
            Err(status) if status.message().contains("no quorum") => break status,
            other => assert!(
                asked.elapsed() < NO_QUORUM_WITHIN,
                "no 'no quorum' answer within {NO_QUORUM_WITHIN:?}; last answer: {other:?}"
            ),
        }
    };
    let took = asked.elapsed();
    println!("minority read refused after {took:?}: {}", err.message());
    assert!(
        took < NO_QUORUM_WITHIN,
        "'no quorum' took {took:?}, more than {NO_QUORUM_WITHIN:?}"
    );
}

/// Reads the woken old leader must serve (all current) before the test moves on.
const SERVED_AFTER_WAKING: usize = 20;

/// How soon a manager cut off from the majority must say "no quorum": the
/// README promises an election timeout (about a second); this allows for a
/// loaded machine and fails a hang.
const NO_QUORUM_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn no_acknowledged_write_is_lost_when_every_manager_is_killed() {
    let mut managers = three_managers().await;
    let mut writers = Vec::new();
    for (i, m) in managers.iter().enumerate() {
        for w in 0..2 {
            let control = m.socket_control().await.unwrap();
            writers.push(tokio::spawn(write_until_failure(
                control,
                format!("m{i}w{w}"),
            )));
        }
    }
    // Let some writes through, then SIGKILL all three at once.
    eventually("writes to be acknowledged", WAIT, || async {
        let names = service_names(&managers[0])
            .await
            .map_err(|e| e.to_string())?;
        if names.len() >= 50 {
            Ok(())
        } else {
            Err(format!("{} services", names.len()))
        }
    })
    .await
    .unwrap();
    for m in managers.iter_mut() {
        m.kill();
    }
    let mut acked = BTreeSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    println!("{} writes acknowledged before the kill", acked.len());

    for m in managers.iter_mut() {
        m.launch().unwrap();
    }
    for m in &managers {
        let names = eventually("the restarted manager to answer", WAIT, || async {
            let names = service_names(m).await.map_err(|e| e.to_string())?;
            let missing: Vec<_> = acked.difference(&names).collect();
            if missing.is_empty() {
                Ok(names)
            } else {
                Err(format!("{} acknowledged writes missing", missing.len()))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
        assert!(names.is_superset(&acked));
    }
    // And the three agree on the whole store, acknowledged or not.
    let all = eventually("the managers to agree", WAIT, || async {
        let mut sets = Vec::new();
        for m in &managers {
            sets.push(service_names(m).await.map_err(|e| e.to_string())?);
        }
        if sets.iter().all(|s| *s == sets[0]) {
            Ok(sets.remove(0))
        } else {
            Err(format!(
                "sizes {:?}",
                sets.iter().map(BTreeSet::len).collect::<Vec<_>>()
            ))
        }
    })
    .await
    .unwrap();
    println!("{} services on every manager after the restart", all.len());
}

#[tokio::test]
async fn a_leader_partitioned_away_serves_no_stale_read_and_catches_up_when_healed() {
    let [first, second, third] = three_managers().await;
    ok(
        &first,
        &["service", "create", "-d", "--name", "a", "img:v1"],
    )
    .await;
    let ids = [
        raft_id(&first).await,
        raft_id(&second).await,
        raft_id(&third).await,
    ];
    // Cut the leader's Raft traffic to and from the other two, both ways.
    let cut = Instant::now();
    first.cut_off_from(&ids[1..]).unwrap();
    second.cut_off_from(&ids[..1]).unwrap();
    third.cut_off_from(&ids[..1]).unwrap();

    // The majority elects a leader of its own and takes a write (made on a
    // follower of the majority, it is relayed to that leader).
    let new_leader = eventually("a leader in the majority", WAIT, || async {
        let info = cluster_info(&second).await?;
        if !info.leader_addr.is_empty() && info.leader_addr != first.addr.to_string() {
            Ok(info.leader_addr)
        } else {
            Err(format!("leader {:?}", info.leader_addr))
        }
    })
    .await
    .unwrap();
    println!("majority leader {new_leader} after {:?}", cut.elapsed());
    ok(
        &second,
        &["service", "create", "-d", "--name", "b", "img:v1"],
    )
    .await;

    // The old leader cannot know of "b": for a while (a watch, not a wait)
    // it must refuse reads, promptly, not serve the old list; a write there
    // is not acknowledged.
    let (mut refused, mut slowest) = (0, Duration::ZERO);
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let asked = Instant::now();
        let answer = tokio::time::timeout(NO_QUORUM_WITHIN, service_names(&first))
            .await
            .unwrap_or_else(|_| {
                panic!("a read on the partitioned old leader hung for {NO_QUORUM_WITHIN:?}")
            });
        slowest = slowest.max(asked.elapsed());
        match answer {
            Ok(names) => panic!("stale read from the partitioned old leader: {names:?}"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                refused += 1;
            }
        }
    }
    let (success, _, stderr) = cli(
        &first,
        &["service", "create", "-d", "--name", "c", "img:v1"],
    )
    .await;
    assert!(
        !success,
        "a write acknowledged by the cut-off manager: {stderr}"
    );
    println!(
        "partitioned old leader: {refused} reads refused (the slowest in {slowest:?}), none served"
    );

    // Healed: the old leader follows and catches up.
    for m in [&first, &second, &third] {
        m.cut_off_from(&[]).unwrap();
    }
    eventually("the old leader to catch up", WAIT, || async {
        let names = service_names(&first).await.map_err(|e| e.to_string())?;
        let info = cluster_info(&first).await?;
        if names.contains("b") && info.leader_addr == new_leader {
            Ok(())
        } else {
            Err(format!("{names:?}, leader {:?}", info.leader_addr))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nold leader log:\n{}", first.log()));
    let names = service_names(&first).await.unwrap();
    assert!(
        !names.contains("c"),
        "an unacknowledged write of the old term survived: {names:?}"
    );
}
