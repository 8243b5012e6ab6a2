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
//! - Six clients read and write four registers (a label of four services)
//!   on random managers while managers are killed, paused, partitioned away
//!   or slowed down (each Raft batch held back 50–400 ms); the checker
//!   (`shoal_tests::linearizability`) finds no anomaly, and the managers end
//!   with identical stores.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_proto::{CreateServiceRequest, ListServicesRequest, ServiceSpec};
use shoal_tests::group::*;
use shoal_tests::linearizability::{self, History, Op, OpResult};
use shoal_tests::process::ManagerProcess;
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
    // otherwise: each read it serves must already show "b".
    first.resume().unwrap();
    let started = Instant::now();
    let (mut served, mut refused) = (0, 0);
    while started.elapsed() < Duration::from_secs(3) {
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
    println!("old leader after waking: {served} reads served (all current), {refused} refused");
    assert!(served > 0, "the old leader serves reads once it follows");

    // Cut the first manager off from the majority: it answers "no quorum".
    second.kill();
    third.kill();
    let asked = Instant::now();
    let err = eventually("a 'no quorum' answer", WAIT, || async {
        match service_names(&first).await {
            Err(status) if status.message().contains("no quorum") => Ok(status),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    println!(
        "minority read refused after {:?}: {}",
        asked.elapsed(),
        err.message()
    );
}

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

/// A small xorshift generator: the schedule of faults and operations is
/// printed as its seed, so a failing run can be replayed in kind.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn register_spec(key: &str, value: Option<u64>) -> ServiceSpec {
    ServiceSpec {
        labels: value
            .map(|v| [("gen".to_string(), v.to_string())].into())
            .unwrap_or_default(),
        ..tiny_service(key.to_string())
    }
}

/// One client: random reads and writes of random keys on random managers,
/// each recorded in `history`, until `stop`.
async fn client(
    id: usize,
    sockets: Vec<std::path::PathBuf>,
    history: History,
    next_value: std::sync::Arc<std::sync::atomic::AtomicU64>,
    seed: u64,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rng = Rng(seed | 1);
    while !stop.is_cancelled() {
        let socket = &sockets[rng.below(sockets.len() as u64) as usize];
        let key = format!("k{}", rng.below(KEYS));
        let write = rng.below(2) == 0;
        let control = shoal_tests::process::socket_control_at(socket).await;
        if write {
            let value = next_value.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let op = history.invoke(id, Op::write(&key, value));
            let result = match control {
                // Not sent: it cannot have been applied.
                Err(_) => OpResult::Failed,
                Ok(mut c) => {
                    let request = shoal_proto::UpdateServiceRequest {
                        service: key.clone(),
                        version: 0,
                        spec: Some(register_spec(&key, Some(value))),
                    };
                    match tokio::time::timeout(OP_TIMEOUT, c.update_service(request)).await {
                        Ok(Ok(_)) => OpResult::Ok,
                        // Refused at apply time on a version conflict, or
                        // invalid: never applied.
                        Ok(Err(s))
                            if matches!(
                                s.code(),
                                tonic::Code::Aborted | tonic::Code::InvalidArgument
                            ) =>
                        {
                            OpResult::Failed
                        }
                        // Timeouts, lost leaders, broken relays: maybe.
                        _ => OpResult::Unknown,
                    }
                }
            };
            history.complete(op, result);
        } else {
            let op = history.invoke(id, Op::read(&key));
            let read = match control {
                Err(_) => None,
                Ok(mut c) => {
                    let request = shoal_proto::GetServiceRequest {
                        service: key.clone(),
                    };
                    match tokio::time::timeout(OP_TIMEOUT, c.get_service(request)).await {
                        Ok(Ok(r)) => r.into_inner().service.map(|s| {
                            s.spec
                                .unwrap_or_default()
                                .labels
                                .get("gen")
                                .and_then(|v| v.parse::<u64>().ok())
                        }),
                        _ => None,
                    }
                }
            };
            // A failed read constrains nothing and is left out.
            history.complete(
                op,
                match read {
                    Some(value) => OpResult::Read(value),
                    None => OpResult::Failed,
                },
            );
        }
    }
}

const KEYS: u64 = 4;

const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Writes acknowledged and reads answered, at least, over the eight faults
/// (thousands of each in a run on a loaded 2-core machine).
const MIN_SERVED: usize = 100;

#[tokio::test]
async fn concurrent_reads_and_writes_under_kills_pauses_partitions_and_delays_are_linearizable() {
    let mut managers = three_managers().await;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let mut c = managers[0].socket_control().await.unwrap();
        c.create_service(CreateServiceRequest {
            spec: Some(register_spec(&key, None)),
        })
        .await
        .unwrap();
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Rng(seed | 1);
    let mut raft_ids = Vec::new();
    for m in &managers {
        raft_ids.push(raft_id(m).await);
    }
    let history = History::new();
    let stop = tokio_util::sync::CancellationToken::new();
    let sockets: Vec<_> = managers
        .iter()
        .map(|m| m.data_dir.join("shoal.sock"))
        .collect();
    let next_value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let clients: Vec<_> = (0..6)
        .map(|id| {
            tokio::spawn(client(
                id,
                sockets.clone(),
                history.clone(),
                next_value.clone(),
                seed.wrapping_add(id as u64 * 7919),
                stop.clone(),
            ))
        })
        .collect();

    // The nemesis: one manager at a time is killed, paused, partitioned away
    // or slowed down, then brought
    // back, for a few rounds.
    let mut faults = Vec::new();
    for _ in 0..8 {
        let victim = rng.below(3) as usize;
        let others: Vec<usize> = (0..managers.len()).filter(|i| *i != victim).collect();
        let fault = rng.below(4);
        let lasting = Duration::from_millis(500 + rng.below(2000));
        let slowness = Duration::from_millis(50 + rng.below(350));
        match fault {
            0 => managers[victim].kill(),
            1 => managers[victim].pause().unwrap(),
            2 => {
                let cut: Vec<u64> = others.iter().map(|i| raft_ids[*i]).collect();
                managers[victim].cut_off_from(&cut).unwrap();
                for i in &others {
                    managers[*i].cut_off_from(&[raft_ids[victim]]).unwrap();
                }
            }
            _ => managers[victim].slow_down(slowness).unwrap(),
        }
        // The fault lasts this long (a schedule, not a wait for a condition).
        tokio::time::sleep(lasting).await;
        match fault {
            0 => managers[victim].launch().unwrap(),
            1 => managers[victim].resume().unwrap(),
            _ => {
                for m in managers.iter() {
                    m.cut_off_from(&[]).unwrap();
                }
            }
        }
        let what = match fault {
            0 => "killed".to_string(),
            1 => "paused".to_string(),
            2 => "partitioned away".to_string(),
            _ => format!("slowed by {slowness:?}"),
        };
        faults.push(format!("{what} manager {} for {lasting:?}", victim + 1));
        // Let the cluster settle a little between faults.
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
    }
    stop.cancel();
    for c in clients {
        c.await.unwrap();
    }
    println!("faults: {faults:?}");

    let ops = history.ops();
    let report = linearizability::check(&ops);
    let (writes, reads) = ops.iter().fold((0, 0), |(w, r), o| match o.op {
        Op::Write { .. } => (w + 1, r),
        Op::Read { .. } => (w, r + 1),
    });
    // A cluster that refused everything would be trivially linearizable:
    // the faults must leave it serving, most of the time.
    let acknowledged = ops
        .iter()
        .filter(|o| matches!(o.op, Op::Write { .. }) && o.result == OpResult::Ok)
        .count();
    let answered = ops
        .iter()
        .filter(|o| matches!(o.result, OpResult::Read(_)))
        .count();
    println!(
        "{} operations ({writes} writes, {acknowledged} acknowledged; {reads} reads, \
         {answered} answered) checked: {} anomalies, {} keys undecided",
        report.ops_checked,
        report.anomalies.len(),
        report.unknown_keys.len()
    );
    for anomaly in &report.anomalies {
        println!("{anomaly}");
    }
    assert!(
        report.anomalies.is_empty(),
        "the history is not linearizable"
    );
    assert!(report.unknown_keys.is_empty(), "{:?}", report.unknown_keys);
    assert!(
        acknowledged >= MIN_SERVED && answered >= MIN_SERVED,
        "under the faults the cluster acknowledged {acknowledged} writes and answered \
         {answered} reads, fewer than {MIN_SERVED} of each"
    );

    // Healed, every manager ends with the same services and versions, and
    // every acknowledged write's value is either the last or overwritten.
    let snapshot = |m: &ManagerProcess| {
        let socket = m.data_dir.join("shoal.sock");
        async move {
            let mut c = shoal_tests::process::socket_control_at(&socket)
                .await
                .map_err(|e| e.to_string())?;
            let services = c
                .list_services(ListServicesRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .services;
            let mut seen: Vec<(String, u64, Option<String>)> = services
                .into_iter()
                .filter_map(|s| {
                    let service = s.service?;
                    let spec = service.spec?;
                    Some((
                        spec.name,
                        service.meta.map(|m| m.version).unwrap_or_default(),
                        spec.labels.get("gen").cloned(),
                    ))
                })
                .collect();
            seen.sort();
            Ok::<_, String>(seen)
        }
    };
    let stores = eventually("identical stores on every manager", WAIT, || async {
        let mut all = Vec::new();
        for m in &managers {
            all.push(snapshot(m).await?);
        }
        if all.iter().all(|s| *s == all[0]) {
            Ok(all.remove(0))
        } else {
            Err(format!("{all:?}"))
        }
    })
    .await
    .unwrap();
    println!("final store on all three managers: {stores:?}");
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

    // The old leader cannot know of "b": it must refuse reads, not serve
    // the old list; a write there is not acknowledged.
    let mut refused = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        match service_names(&first).await {
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
    println!("partitioned old leader: {refused} reads refused, none served");

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
