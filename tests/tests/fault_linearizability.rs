//! Issue 6's fault suite, linearizability: six clients work on three real
//! `shoal manager` processes while a nemesis kills, pauses, partitions away
//! (`shoal_manager::raft::faults`) or slows down one manager at a time, and
//! every answer is checked (`shoal_tests::linearizability`).
//!
//! - Four registers, the `gen` label of four services, written with
//!   `UpdateService` and read with `GetService` on random managers.
//! - The tasks of those services: each register write also scales its service
//!   between one and two replicas, so the orchestrator keeps creating, stopping
//!   and deleting tasks (no agent runs them). Clients list a service's tasks
//!   or inspect one task; every task's version must move forward in real time
//!   and a deleted task must not come back, and a task built from a `gen`
//!   value proves that value's write was applied before the task was seen.
//! - The cluster object, read with `GetCluster` (the cluster spec read) and
//!   written by rotating the worker join token (there is no cluster update
//!   API): its version must move forward, past every acknowledged rotation.
//!
//! The cluster must keep serving through the faults (a cluster that refused
//! everything would pass every check), and the managers end with identical
//! stores.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    CreateServiceRequest, GetClusterRequest, GetJoinTokenRequest, GetServiceRequest,
    GetTaskRequest, ListServicesRequest, ListTasksRequest, NodeRole, ServiceSpec, Task,
    UpdateServiceRequest,
};
use shoal_tests::group::*;
use shoal_tests::linearizability::objects::{self, Cover, Seen};
use shoal_tests::linearizability::{self, History, Op, OpResult};
use shoal_tests::process::ManagerProcess;
use shoal_tests::wait::eventually;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const KEYS: u64 = 4;

const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Register writes acknowledged and register reads answered, at least, over
/// the eight faults (thousands of each in a run on a loaded 2-core machine).
const MIN_SERVED: usize = 100;

/// Task reads (lists and inspections) and cluster reads answered, at least:
/// a few hundred and about a hundred in a run on a loaded 2-core machine.
const MIN_TASK_READS: usize = 100;
const MIN_CLUSTER_READS: usize = 20;

/// The cluster object, as the object checks name it.
const CLUSTER: &str = "cluster";

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

/// Register `key` holding `value` (absent: no label): the `gen` label, and
/// one or two replicas depending on the value, so writes make task churn.
fn register_spec(key: &str, value: Option<u64>) -> ServiceSpec {
    ServiceSpec {
        labels: value
            .map(|v| [("gen".to_string(), v.to_string())].into())
            .unwrap_or_default(),
        replicas: 1 + value.map_or(0, |v| v % 2),
        ..tiny_service(key.to_string())
    }
}

/// A task as the object checks see it: built from its service's `gen`.
fn seen_task(task: &Task) -> Seen {
    Seen {
        object: task.id.clone(),
        scope: task.service_name.clone(),
        version: task.meta.as_ref().map_or(0, |m| m.version),
        built_from: task.service_labels.get("gen").and_then(|v| v.parse().ok()),
    }
}

/// One client: random operations on random managers, each recorded in
/// `history`, until `stop`.
struct Client {
    id: usize,
    sockets: Vec<PathBuf>,
    history: History,
    next_value: Arc<AtomicU64>,
    rng: Rng,
    /// Task ids this client has seen listed, to inspect one of them.
    known_tasks: Vec<String>,
}

impl Client {
    async fn run(mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let socket = &self.sockets[self.rng.below(self.sockets.len() as u64) as usize];
            // Not connected: nothing was sent, nothing is recorded but a
            // write's invocation (failed: it cannot have been applied).
            let control = shoal_tests::process::socket_control_at(socket).await.ok();
            let key = format!("k{}", self.rng.below(KEYS));
            match (self.rng.below(20), control) {
                (0..8, control) => self.write(&key, control).await,
                (_, None) => {}
                (8..14, Some(c)) => self.read(&key, c).await,
                (14..17, Some(c)) => self.list_tasks(&key, c).await,
                (17, Some(c)) => self.inspect_task(&key, c).await,
                (18, Some(c)) => self.read_cluster(c).await,
                (_, Some(c)) => self.rotate_token(c).await,
            }
        }
    }

    async fn write(&mut self, key: &str, control: Option<ControlClient<Channel>>) {
        let value = self.next_value.fetch_add(1, Ordering::Relaxed);
        let op = self.history.invoke(self.id, Op::write(key, value));
        let result = match control {
            None => OpResult::Failed,
            Some(mut c) => {
                let request = UpdateServiceRequest {
                    service: key.to_string(),
                    version: 0,
                    spec: Some(register_spec(key, Some(value))),
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
        self.history.complete(op, result);
    }

    async fn read(&mut self, key: &str, mut c: ControlClient<Channel>) {
        let op = self.history.invoke(self.id, Op::read(key));
        let request = GetServiceRequest {
            service: key.to_string(),
        };
        let read = match tokio::time::timeout(OP_TIMEOUT, c.get_service(request)).await {
            Ok(Ok(r)) => r.into_inner().service.map(|s| {
                s.spec
                    .unwrap_or_default()
                    .labels
                    .get("gen")
                    .and_then(|v| v.parse::<u64>().ok())
            }),
            _ => None,
        };
        // A failed read constrains nothing and is left out.
        self.history.complete(
            op,
            match read {
                Some(value) => OpResult::Read(value),
                None => OpResult::Failed,
            },
        );
    }

    /// Every task of service `key`.
    async fn list_tasks(&mut self, key: &str, mut c: ControlClient<Channel>) {
        let call = self.history.now();
        let request = ListTasksRequest {
            services: vec![key.to_string()],
            ..Default::default()
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(OP_TIMEOUT, c.list_tasks(request)).await {
            let tasks = reply.into_inner().tasks;
            let seen = tasks.iter().map(seen_task).collect();
            self.history
                .read_objects(self.id, call, Cover::Scope(key.to_string()), seen);
            self.known_tasks = tasks.into_iter().map(|t| t.id).collect();
        }
    }

    /// One task this client saw listed (a list first if it knows none).
    async fn inspect_task(&mut self, key: &str, mut c: ControlClient<Channel>) {
        if self.known_tasks.is_empty() {
            return self.list_tasks(key, c).await;
        }
        let pick = self.rng.below(self.known_tasks.len() as u64) as usize;
        let id = self.known_tasks[pick].clone();
        let call = self.history.now();
        let request = GetTaskRequest { task: id.clone() };
        let seen = match tokio::time::timeout(OP_TIMEOUT, c.get_task(request)).await {
            Ok(Ok(reply)) => reply.into_inner().task.map(|t| seen_task(&t)),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => None,
            _ => return,
        };
        self.history
            .read_objects(self.id, call, Cover::Object(id), seen.into_iter().collect());
    }

    /// The cluster object's version (`GetCluster`, the cluster spec read).
    async fn read_cluster(&mut self, mut c: ControlClient<Channel>) {
        let call = self.history.now();
        let Ok(Ok(reply)) =
            tokio::time::timeout(OP_TIMEOUT, c.get_cluster(GetClusterRequest {})).await
        else {
            return;
        };
        let seen = reply.into_inner().cluster.map(|cluster| Seen {
            object: CLUSTER.to_string(),
            scope: CLUSTER.to_string(),
            version: cluster.meta.map_or(0, |m| m.version),
            built_from: None,
        });
        self.history.read_objects(
            self.id,
            call,
            Cover::Object(CLUSTER.to_string()),
            seen.into_iter().collect(),
        );
    }

    /// Rotate the worker join token: a write of the cluster object.
    async fn rotate_token(&mut self, mut c: ControlClient<Channel>) {
        let call = self.history.now();
        let request = GetJoinTokenRequest {
            role: NodeRole::Worker as i32,
            rotate: true,
        };
        if let Ok(Ok(_)) = tokio::time::timeout(OP_TIMEOUT, c.get_join_token(request)).await {
            self.history.bump(self.id, CLUSTER, call);
        }
    }
}

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
    let stop = CancellationToken::new();
    let sockets: Vec<_> = managers
        .iter()
        .map(|m| m.data_dir.join("shoal.sock"))
        .collect();
    let next_value = Arc::new(AtomicU64::new(1));
    let clients: Vec<_> = (0..6)
        .map(|id| {
            let client = Client {
                id,
                sockets: sockets.clone(),
                history: history.clone(),
                next_value: next_value.clone(),
                rng: Rng(seed.wrapping_add(id as u64 * 7919) | 1),
                known_tasks: Vec::new(),
            };
            tokio::spawn(client.run(stop.clone()))
        })
        .collect();

    // The nemesis: one manager at a time is killed, paused, partitioned away
    // or slowed down, then brought back, for a few rounds.
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
    check_history(&history);
    wait_identical_stores(&managers).await;
}

/// Check the registers (with what the tasks witnessed) and the objects, and
/// that the cluster kept serving.
fn check_history(history: &History) {
    let mut ops = history.ops();
    let (reads, bumps) = (history.object_reads(), history.bumps());
    let witnessed = objects::apply_witnesses(&mut ops, &reads);
    let report = linearizability::check(&ops);
    let object_report = objects::check_objects(&reads, &bumps);

    let (writes, register_reads) = ops.iter().fold((0, 0), |(w, r), o| match o.op {
        Op::Write { .. } => (w + 1, r),
        Op::Read { .. } => (w, r + 1),
    });
    let acknowledged = ops
        .iter()
        .filter(|o| matches!(o.op, Op::Write { .. }) && o.result == OpResult::Ok)
        .count();
    let answered = ops
        .iter()
        .filter(|o| matches!(o.result, OpResult::Read(_)))
        .count();
    let cluster_reads = reads
        .iter()
        .filter(|r| r.cover == Cover::Object(CLUSTER.to_string()))
        .count();
    let task_reads = reads.len() - cluster_reads;
    println!(
        "registers: {} operations ({writes} writes, {acknowledged} acknowledged; \
         {register_reads} reads, {answered} answered) checked: {} anomalies, {} keys undecided",
        report.ops_checked,
        report.anomalies.len(),
        report.unknown_keys.len()
    );
    println!(
        "objects: {task_reads} task reads and {cluster_reads} cluster reads answered, {} \
         rotations acknowledged; {} objects in {} observations checked: {} anomalies; tasks \
         bounded {} register writes, {} witnesses no write explains",
        bumps.len(),
        object_report.objects,
        object_report.observations,
        object_report.anomalies.len(),
        witnessed.bounded,
        witnessed.anomalies.len()
    );
    for anomaly in report
        .anomalies
        .iter()
        .chain(&object_report.anomalies)
        .chain(&witnessed.anomalies)
    {
        println!("{anomaly}");
    }
    assert!(
        report.anomalies.is_empty()
            && object_report.anomalies.is_empty()
            && witnessed.anomalies.is_empty(),
        "the history is not linearizable"
    );
    assert!(report.unknown_keys.is_empty(), "{:?}", report.unknown_keys);
    // A cluster that refused everything would be trivially linearizable:
    // the faults must leave it serving, most of the time.
    assert!(
        acknowledged >= MIN_SERVED && answered >= MIN_SERVED,
        "under the faults the cluster acknowledged {acknowledged} writes and answered \
         {answered} reads, fewer than {MIN_SERVED} of each"
    );
    assert!(
        task_reads >= MIN_TASK_READS && cluster_reads >= MIN_CLUSTER_READS,
        "under the faults the cluster answered {task_reads} task reads (fewer than \
         {MIN_TASK_READS}?) and {cluster_reads} cluster reads (fewer than {MIN_CLUSTER_READS}?)"
    );
    // Tasks were seen coming and going, and built from written values: the
    // object checks had something to check.
    let witnesses = reads
        .iter()
        .flat_map(|r| &r.seen)
        .filter(|s| s.built_from.is_some())
        .count();
    assert!(
        object_report.objects > KEYS as usize && witnesses > 0 && !bumps.is_empty(),
        "{} objects, {witnesses} tasks built from a written value, {} rotations",
        object_report.objects,
        bumps.len()
    );
}

/// Healed, every manager ends with the same services (versions and values),
/// tasks (versions) and cluster version.
async fn wait_identical_stores(managers: &[ManagerProcess]) {
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
            let tasks = c
                .list_tasks(ListTasksRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .tasks;
            let mut tasks: Vec<(String, u64)> = tasks
                .iter()
                .map(|t| (t.id.clone(), t.meta.as_ref().map_or(0, |m| m.version)))
                .collect();
            tasks.sort();
            let cluster = c
                .get_cluster(GetClusterRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .cluster
                .and_then(|c| c.meta)
                .map_or(0, |m| m.version);
            Ok::<_, String>((seen, tasks, cluster))
        }
    };
    let (services, tasks, cluster) =
        eventually("identical stores on every manager", WAIT, || async {
            let mut all = Vec::new();
            for m in managers {
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
    println!(
        "final store on all three managers: {services:?}, {} tasks, cluster version {cluster}",
        tasks.len()
    );
}
