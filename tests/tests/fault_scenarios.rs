//! Issue 6's fault suite on real processes: three `shoal manager` processes
//! on loopback ports, crashed with SIGKILL and paused with SIGSTOP.
//!
//! - Membership: `node ls` shows each manager's status as the leader sees
//!   it; `node demote` and `node rm` take managers out of the Raft group,
//!   refusing what would break quorum; a removed manager stops, and is
//!   refused if started again.
//! - Reads: an old leader paused through an election serves no stale read
//!   when it wakes up; one partitioned away (its Raft traffic cut both ways,
//!   `shoal_manager::raft::faults`) refuses reads while the majority elects
//!   and writes, then catches up when healed; a manager cut off from the
//!   majority answers "no quorum" instead of hanging.
//! - Durability: SIGKILL every manager in the middle of writes; after the
//!   restart every acknowledged write is on every manager.
//! - Recovery and growth: `--force-new-cluster` on the survivor of a lost
//!   quorum keeps the state and the agents; 3 managers grow to 5 and shrink
//!   back while writing, the joiners catching up by snapshot.
//! - Linearizability: six clients read and write four registers (a label
//!   of four services) on random managers while managers are killed and
//!   paused; the checker (`shoal_tests::linearizability`) finds no anomaly,
//!   and the managers end with identical stores.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    ContainerSpec, CreateServiceRequest, GetClusterRequest, GetClusterResponse,
    ListServicesRequest, ServiceSpec, TaskSpec,
};
use shoal_tests::agents::HollowAgent;
use shoal_tests::linearizability::{self, History, Op, OpResult};
use shoal_tests::process::{ManagerProcess, manager_token, shoal_bin};
use shoal_tests::wait::eventually;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

/// Three managers: the first leads, the others joined with the manager token.
async fn three_managers() -> [ManagerProcess; 3] {
    let first = ManagerProcess::start(&[]).await.unwrap();
    let token = manager_token(&mut first.control().await.unwrap())
        .await
        .unwrap();
    let second = ManagerProcess::join(&first, &token).await.unwrap();
    let third = ManagerProcess::join(&first, &token).await.unwrap();
    [first, second, third]
}

/// Run the CLI on `m`'s unix socket; (success, stdout, stderr).
async fn cli(m: &ManagerProcess, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(shoal_bin())
        .arg("--host")
        .arg(m.socket_host())
        .args(args)
        .output()
        .await
        .expect("run the shoal CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(m: &ManagerProcess, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(m, args).await;
    assert!(
        success,
        "shoal {args:?} failed: {stderr}\nmanager log:\n{}",
        m.log()
    );
    stdout
}

async fn cluster_info(m: &ManagerProcess) -> Result<GetClusterResponse, String> {
    let mut c: ControlClient<Channel> = m.socket_control().await.map_err(|e| e.to_string())?;
    c.get_cluster(GetClusterRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

/// The node id of manager `m`, from the managers table.
async fn node_id(m: &ManagerProcess) -> String {
    let info = cluster_info(m).await.unwrap();
    let addr = m.addr.to_string();
    info.cluster
        .unwrap()
        .managers
        .iter()
        .find(|member| member.addr == addr)
        .map(|member| member.node_id.clone())
        .expect("the manager is in the managers table")
}

/// `node ls --format json` on `m`: (node id, role, manager status) per row.
async fn managers_listed(m: &ManagerProcess) -> Result<BTreeSet<(String, String)>, String> {
    let (success, stdout, stderr) = cli(m, &["node", "ls", "--format", "json"]).await;
    if !success {
        return Err(stderr);
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .filter(|r| r["role"] == "manager")
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["manager_status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Wait until `node ls` on `m` shows exactly `want` (id, status) for managers.
async fn wait_listed(m: &ManagerProcess, want: &[(&str, &str)]) {
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|(id, status)| (id.to_string(), status.to_string()))
        .collect();
    eventually("node ls to show the managers", WAIT, || async {
        let seen = managers_listed(m).await?;
        if seen == want {
            Ok(())
        } else {
            Err(format!("{seen:?}, want {want:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
}

/// Wait for `m` to exit on its own; its log must say it was removed.
async fn wait_removed_exit(m: &mut ManagerProcess) {
    let status = eventually("the removed manager to stop", WAIT, || {
        let exited = m.exited();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
    assert!(!status.success(), "a removed manager exits with an error");
    assert!(m.log().contains("removed from the cluster"), "{}", m.log());
}

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

/// Every service name `m` lists, or why it could not answer.
async fn service_names(m: &ManagerProcess) -> Result<BTreeSet<String>, tonic::Status> {
    let mut c = m
        .socket_control()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let services = c
        .list_services(ListServicesRequest::default())
        .await?
        .into_inner()
        .services;
    Ok(services
        .iter()
        .filter_map(|s| Some(s.service.as_ref()?.spec.as_ref()?.name.clone()))
        .collect())
}

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

/// Create services `prefix-0`, `prefix-1`, ... through `control` until it
/// fails; returns the names acknowledged.
async fn write_until_failure(mut control: ControlClient<Channel>, prefix: String) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let spec = ServiceSpec {
            name: name.clone(),
            replicas: 0,
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "img:v1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = CreateServiceRequest { spec: Some(spec) };
        match tokio::time::timeout(Duration::from_secs(5), control.create_service(request)).await {
            Ok(Ok(_)) => acked.push(name),
            _ => break,
        }
    }
    acked
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
        name: key.to_string(),
        labels: value
            .map(|v| [("gen".to_string(), v.to_string())].into())
            .unwrap_or_default(),
        replicas: 0,
        task: Some(TaskSpec {
            container: Some(ContainerSpec {
                image: "img:v1".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
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

#[tokio::test]
async fn concurrent_reads_and_writes_under_kills_and_pauses_are_linearizable() {
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

    // The nemesis: one manager at a time is killed or paused, then brought
    // back, for a few rounds.
    let mut faults = Vec::new();
    for _ in 0..6 {
        let victim = rng.below(3) as usize;
        let kill = rng.below(2) == 0;
        let down_for = Duration::from_millis(500 + rng.below(2000));
        if kill {
            managers[victim].kill();
        } else {
            managers[victim].pause().unwrap();
        }
        tokio::time::sleep(down_for).await;
        if kill {
            managers[victim].launch().unwrap();
        } else {
            managers[victim].resume().unwrap();
        }
        faults.push(format!(
            "{} manager {} for {down_for:?}",
            if kill { "killed" } else { "paused" },
            victim + 1
        ));
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
    println!(
        "{} operations ({writes} writes, {reads} reads) checked: {} anomalies, {} keys undecided",
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
    assert!(reads > 0 && writes > 0);

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

/// Agent nodes `m` lists as ready, by hostname.
async fn ready_agents(m: &ManagerProcess) -> Result<BTreeSet<String>, String> {
    let (success, stdout, stderr) = cli(m, &["node", "ls", "--format", "json"]).await;
    if !success {
        return Err(stderr);
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .filter(|r| r["role"] == "worker" && r["status"] == "ready")
        .filter_map(|r| r["hostname"].as_str().map(str::to_string))
        .collect())
}

#[tokio::test]
async fn force_new_cluster_recovers_from_a_lost_quorum_with_the_state_and_the_agents() {
    let [mut first, mut second, mut third] = three_managers().await;
    let target = first.join_target().await.unwrap();
    let _agent = HollowAgent::start(&target, "w1", &[]);
    eventually("the agent to be ready", WAIT, || async {
        let ready = ready_agents(&first).await?;
        if ready.contains("w1") {
            Ok(())
        } else {
            Err(format!("{ready:?}"))
        }
    })
    .await
    .unwrap();
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
    eventually("the agent to be ready again", WAIT, || async {
        let ready = ready_agents(&first).await?;
        if ready.contains("w1") {
            Ok(())
        } else {
            Err(format!("{ready:?}"))
        }
    })
    .await
    .unwrap();
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

/// The Raft id of manager `m`, from the managers table.
async fn raft_id(m: &ManagerProcess) -> u64 {
    let info = cluster_info(m).await.unwrap();
    let addr = m.addr.to_string();
    info.cluster
        .unwrap()
        .managers
        .iter()
        .find(|member| member.addr == addr)
        .map(|member| member.raft_id)
        .expect("the manager is in the managers table")
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
