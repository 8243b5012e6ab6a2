//! `schedule`: scheduling throughput with hollow nodes (kubemark-style).
//!
//! K release `shoal manager` processes with their sled stores on disk (one, or
//! a Raft group whose first manager leads), N in-process hollow agents
//! connected to the leader (the real agent library on the fake runtime, each
//! with its own gRPC session, heartbeats and status reports), then S services
//! whose replicas add up to M, created through the leader. Timed from the first
//! `CreateService` call until every task has reached its hollow node (the
//! dispatcher sends committed assignments only, so every task is then ASSIGNED
//! and committed), and until the manager has acknowledged every task's RUNNING
//! report (it does once the report is committed); the hollow nodes count both
//! ([`AgentStats`]). A last `ListTasks` checks that the manager holds all M
//! tasks RUNNING. With `--watch` the harness follows the leader's `Watch`
//! stream instead, as it did before: that observer costs the manager about a
//! tenth of its CPU. With K > 1 every placement is committed by a majority,
//! and the followers apply it on the same cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use shoal_agent::AgentStats;
use shoal_proto::control_client::ControlClient;
use shoal_proto::{ContainerSpec, CreateServiceRequest, ServiceSpec, TaskSpec};

use super::cluster::{BenchCluster, Settled};
use super::daemons::BenchManager;
use super::figures::{
    LagProbe, RaftEventKind, figure, mib_figure, ms, nodes_marked_down, note, raft_events,
    scheduler_passes, sum_fields,
};
use super::procfs::{check_open_files, cpu_seconds, faulted_mib, lower_own_priority, minor_faults};
use super::tasks::{check_all_running, count_in_agents, follow};
use super::warm::{default_warm_mib, warm_heap};
use crate::agents::HollowAgent;
use crate::process::channel_patiently;

/// Flags of the `schedule` scenario.
#[derive(Debug, Clone)]
pub struct ScheduleArgs {
    pub nodes: usize,
    pub tasks: usize,
    pub managers: usize,
    pub services: usize,
    /// Agents' heartbeat period: thousands of nodes on 2 cores want a long one.
    pub heartbeat: String,
    pub timeout: Duration,
    /// Record a `perf` profile of the manager during the measured phase here.
    pub perf_out: Option<std::path::PathBuf>,
    /// Follow the tasks on the manager's `Watch` stream (the observer of
    /// earlier runs) instead of counting in the hollow nodes.
    pub watch: bool,
    /// Niceness the harness gives itself once the nodes are ready (0: none).
    pub harness_nice: i32,
    /// MiB of heap the harness faults in and frees before the measured phase
    /// (None: [`default_warm_mib`] of the tasks; 0: none).
    pub harness_warm_mib: Option<usize>,
}

impl Default for ScheduleArgs {
    fn default() -> Self {
        ScheduleArgs {
            nodes: 200,
            tasks: 20_000,
            managers: 1,
            services: 10,
            heartbeat: "2s".into(),
            timeout: Duration::from_secs(900),
            perf_out: None,
            watch: false,
            harness_nice: 0,
            harness_warm_mib: None,
        }
    }
}

/// The manager's log filter in benchmarks: the orchestrator logs every task it
/// creates at info, which would cost more than the scheduling being measured;
/// only the figures' lines (one per scheduling and orchestrator pass, raft
/// work summaries, under `shoal_manager::FIGURES_TARGET`) and raft-rs's few
/// lines on roles and elections are kept.
pub const BENCH_LOG: &str = "warn,shoal::figures=info,raft::raft=info";

pub async fn run(args: ScheduleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.managers > 0, "--managers must be above 0");
    anyhow::ensure!(
        args.nodes > 0 && args.tasks > 0,
        "--nodes and --tasks must be above 0"
    );
    anyhow::ensure!(args.services > 0, "--services must be above 0");
    check_open_files(args.nodes)?;

    let cluster = BenchCluster::start(
        args.managers,
        &["--heartbeat-period", &args.heartbeat],
        BENCH_LOG,
    )
    .await?;
    let settled = cluster.wait_settled(Duration::from_secs(60)).await?;
    let manager = &cluster.managers[settled.leader];
    figure("managers", args.managers);
    let settled_at = SystemTime::now();
    let started = Instant::now();
    let lag = LagProbe::start();
    let stats = Arc::new(AgentStats::new());
    let agents = start_hollow_nodes(manager, args.nodes, &stats).await?;
    figure("nodes", args.nodes);
    figure("nodes_ready_ms", ms(started.elapsed()));
    // Nodes marked DOWN while healthy: their tasks are placed twice. The
    // harness's own lag tells how much of that its 2 shared cores caused.
    let down_joining = nodes_marked_down(&manager.log());
    figure("nodes_marked_down_joining", down_joining);
    figure("harness_timer_lag_max_ms_joining", lag.take());
    if args.harness_nice > 0 {
        lower_own_priority(args.harness_nice)?;
    }
    figure("harness_nice", args.harness_nice);
    let warm_mib = args
        .harness_warm_mib
        .unwrap_or_else(|| default_warm_mib(args.tasks));
    warm_heap(warm_mib);
    figure("harness_warm_mib", warm_mib);

    let followers: Vec<&BenchManager> = cluster
        .managers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != settled.leader)
        .map(|(_, m)| m)
        .collect();
    let followers_cpu_before: Vec<Option<f64>> = followers
        .iter()
        .map(|m| m.pid().and_then(cpu_seconds))
        .collect();
    let result = measure(manager, &args, &stats).await;
    if let Err(err) = &result {
        note(format!("schedule failed: {err:#}\n{}", manager.log_tail()));
    }
    figure(
        "nodes_marked_down_scheduling",
        nodes_marked_down(&manager.log()) - down_joining,
    );
    figure("harness_timer_lag_max_ms_scheduling", lag.take());
    figure("manager_peak_rss_mib", mib_figure(manager.peak_rss_mib()));
    if !followers.is_empty() {
        let cpu: Vec<String> = followers
            .iter()
            .zip(&followers_cpu_before)
            .map(
                |(m, before)| match (before, m.pid().and_then(cpu_seconds)) {
                    (Some(before), Some(after)) => format!("{:.1}", after - before),
                    _ => "unknown".into(),
                },
            )
            .collect();
        figure("followers_cpu_s", cpu.join(","));
        let rss: Vec<String> = followers
            .iter()
            .map(|m| mib_figure(m.peak_rss_mib()))
            .collect();
        figure("followers_peak_rss_mib", rss.join(","));
        report_leadership(&cluster, settled, settled_at).await;
    }
    stop_hollow_nodes(agents).await;
    result
}

/// Whether the leader kept its term through the run: a term change under
/// load is a spurious election (the hollow nodes stay with the old leader's
/// dispatcher until redirected, so the figures would not mean much). Election
/// timeouts that fired since `since` are counted too: with pre-vote, one can
/// fire and fail without moving the term.
async fn report_leadership(cluster: &BenchCluster, before: Settled, since: SystemTime) {
    let starts = cluster
        .managers
        .iter()
        .flat_map(|m| raft_events(&m.log()))
        .filter(|e| e.kind == RaftEventKind::ElectionStarted && e.at >= since)
        .count();
    figure("raft_election_starts", starts);
    match cluster.wait_settled(Duration::from_secs(30)).await {
        Ok(after) => {
            figure("raft_term_changes", after.term.saturating_sub(before.term));
            if after.leader != before.leader {
                note(format!(
                    "leadership moved during the run: manager {} now leads (term {})",
                    cluster.managers[after.leader].addr, after.term
                ));
            }
        }
        Err(err) => note(format!("the group did not settle after the run: {err:#}")),
    }
}

/// Stop the agents before their manager goes, so that they leave quietly
/// instead of each logging a broken session.
pub async fn stop_hollow_nodes(agents: Vec<HollowAgent>) {
    futures::future::join_all(
        agents
            .into_iter()
            .map(|mut a| async move { a.stop().await }),
    )
    .await;
}

/// Start `count` hollow agents against `manager` and wait until all are READY.
/// They all count into `stats`.
pub async fn start_hollow_nodes(
    manager: &BenchManager,
    count: usize,
    stats: &Arc<AgentStats>,
) -> anyhow::Result<Vec<HollowAgent>> {
    note(format!("starting {count} hollow agents"));
    let cluster = manager.join_target().await?;
    let mut agents = Vec::with_capacity(count);
    for i in 0..count {
        agents.push(HollowAgent::start_counted(
            &cluster,
            &format!("hollow-{i:05}"),
            stats.clone(),
        ));
        // A breather every hundred sessions, so registration is not one burst
        // of thousands of connections on a 2-core machine.
        if i % 100 == 99 {
            tokio::task::yield_now().await;
        }
    }
    manager
        .wait_ready_nodes(count, Duration::from_secs(60 + count as u64 / 10))
        .await?;
    Ok(agents)
}

async fn measure(
    manager: &BenchManager,
    args: &ScheduleArgs,
    stats: &Arc<AgentStats>,
) -> anyhow::Result<()> {
    // Right after thousands of joins the manager may take longer than one
    // connect timeout to accept and finish a TLS handshake: a slow connect
    // is not a failed run.
    let channel =
        channel_patiently(manager.addr, &manager.admin_dir(), Duration::from_secs(60)).await?;
    let mut control = ControlClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let cpu_before = manager.pid().and_then(cpu_seconds);
    let faults_before = manager.pid().and_then(minor_faults);
    let harness_faults_before = minor_faults(std::process::id());
    let harness_cpu_before = cpu_seconds(std::process::id());
    let (messages_before, reports_before) = (stats.assignment_messages(), stats.status_requests());

    let perf = match (&args.perf_out, manager.pid()) {
        (Some(out), Some(pid)) => Some(Profiler::start(pid, out)?),
        _ => None,
    };
    // What the manager accepted: a service over the cluster's task cap is
    // refused, and so are the ones after it.
    let expected = Arc::new(AtomicUsize::new(args.tasks));
    let follower = if args.watch {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let follower = tokio::spawn(follow(
            manager.addr,
            manager.admin_dir(),
            args.tasks,
            args.timeout,
            ready_tx,
        ));
        ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("the task watch did not start"))?;
        follower
    } else {
        tokio::spawn(count_in_agents(
            stats.clone(),
            expected.clone(),
            args.timeout,
        ))
    };

    // The phase figures come from the log lines written from here on.
    let log_start = manager.log().len();
    let start = Instant::now();
    let services = split(args.tasks, args.services);
    let mut refused = 0;
    for (i, &replicas) in services.iter().enumerate() {
        let spec = ServiceSpec {
            name: format!("bench-{i}"),
            replicas: replicas as u64,
            task: Some(
                TaskSpec {
                    container: Some(ContainerSpec {
                        image: "bench/noop:latest".into(),
                        command: vec!["sleep".into(), "3600".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        };
        match control
            .create_service(CreateServiceRequest { spec: Some(spec) })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::ResourceExhausted && !args.watch => {
                refused = services[i..].iter().sum();
                expected.fetch_sub(refused, Ordering::Relaxed);
                note(format!(
                    "service bench-{i} and the {} after it refused: {}",
                    services.len() - i - 1,
                    status.message()
                ));
                break;
            }
            Err(status) => return Err(status.into()),
        }
    }
    let create_calls = start.elapsed();
    let tasks = args.tasks - refused;
    let marks = follower.await??;
    if let Some(perf) = perf {
        perf.stop();
    }
    let since = |at: Option<Instant>| at.map(|at| at.saturating_duration_since(start));
    let (created, assigned, running) = (
        since(marks.created),
        since(marks.assigned),
        since(marks.running),
    );

    figure("tasks", tasks);
    figure("tasks_refused", refused);
    figure("services", args.services);
    figure("create_calls_ms", ms(create_calls));
    if let Some(d) = created {
        figure("time_to_created_ms", ms(d));
    }
    if let Some(d) = assigned {
        figure("time_to_assigned_ms", ms(d));
        figure(
            "placements_per_s",
            (tasks as f64 / d.as_secs_f64().max(1e-3)).round(),
        );
    }
    for (name, at) in ["10", "50", "90"].iter().zip(marks.assigned_share) {
        if let Some(d) = since(at) {
            figure(&format!("time_to_assigned_{name}pct_ms"), ms(d));
        }
    }
    if let Some(d) = running {
        figure("time_to_running_ms", ms(d));
    }
    if args.watch {
        figure("watch_resyncs", marks.resyncs);
        // Until every task ran: creations, assignments and the agents' reports.
        figure(
            "task_writes_per_task",
            format!("{:.2}", marks.events as f64 / tasks.max(1) as f64),
        );
    }

    let passes = scheduler_passes(&manager.log());
    figure("scheduler_passes", passes.passes);
    figure("scheduler_pass_total_ms", passes.elapsed_ms);
    figure("scheduler_pass_max_ms", passes.max_pass_ms);
    let log = manager.log();
    phase_figures(log.get(log_start..).unwrap_or(""), assigned, running);
    let manager_cpu = cpu_before
        .zip(manager.pid().and_then(cpu_seconds))
        .map(|(before, after)| after - before);
    if let Some(cpu) = manager_cpu {
        figure("manager_cpu_s", format!("{cpu:.1}"));
    }
    // In MiB of 4 KiB pages, to set beside the peak RSS: more than it means
    // memory handed back to the kernel and faulted in again.
    if let (Some(before), Some(after)) = (faults_before, manager.pid().and_then(minor_faults)) {
        figure("manager_minor_faults_mib", faulted_mib(before, after));
    }
    // The harness's own: near zero when its warm heap covered its growth.
    if let (Some(before), Some(after)) = (harness_faults_before, minor_faults(std::process::id())) {
        figure("harness_minor_faults_mib", faulted_mib(before, after));
    }
    // How many messages carried the tasks to their nodes, and their reports
    // back: each costs both sides a frame, a TLS record and a syscall or two.
    figure(
        "assignment_messages",
        stats.assignment_messages() - messages_before,
    );
    figure("status_requests", stats.status_requests() - reports_before);
    // The hollow agents and the watch share the cores with the manager: what
    // they used is CPU the manager did not have.
    let harness_cpu = harness_cpu_before
        .zip(cpu_seconds(std::process::id()))
        .map(|(before, after)| after - before);
    if let Some(cpu) = harness_cpu {
        figure("harness_cpu_s", format!("{cpu:.1}"));
    }
    // On shared cores, placements/s follows the cores divided by what a task
    // costs both processes (docs/BENCHMARKS.md, stop 26). With several
    // managers the followers' CPU is measured apart, after the phase.
    if let (1, Some(m), Some(h), Some(r)) = (args.managers, manager_cpu, harness_cpu, running) {
        let (per_task_us, busy) = cpu_share(m + h, tasks, r);
        figure("cpu_us_per_task", format!("{per_task_us:.1}"));
        figure("busy_cores_until_running", format!("{busy:.2}"));
    }
    if !args.watch {
        // After the figures: the manager's answer is no part of the phase.
        check_all_running(manager.addr, &manager.admin_dir(), tasks).await?;
    }
    Ok(())
}

/// CPU microseconds per task, and the cores kept busy on average until
/// every task ran, from `cpu_s` seconds of CPU both processes spent.
fn cpu_share(cpu_s: f64, tasks: usize, running: Duration) -> (f64, f64) {
    (
        cpu_s * 1e6 / tasks.max(1) as f64,
        cpu_s / running.as_secs_f64().max(1e-3),
    )
}

/// The per-phase breakdown, from the manager's log lines of the measured
/// phase: the orchestrator's passes (deciding, then awaiting its writes'
/// commits), the Raft task's work (summed per second, so the first and last
/// seconds may hold some work from just outside the phase), and dispatch,
/// bounded by the time from every task assigned to every task running.
fn phase_figures(log: &str, assigned: Option<Duration>, running: Option<Duration>) {
    let (passes, [decide, write]) = sum_fields(log, "orchestrator pass", ["decide_ms", "write_ms"]);
    figure("orchestrator_passes", passes);
    figure("orchestrator_decide_ms", format!("{decide:.0}"));
    figure("orchestrator_write_wait_ms", format!("{write:.0}"));
    let (_, [cycles, entries, apply, persist, checkpoint]) = sum_fields(
        log,
        "raft work",
        [
            "cycles",
            "entries",
            "apply_ms",
            "persist_ms",
            "checkpoint_ms",
        ],
    );
    figure("raft_cycles", cycles);
    figure("raft_entries", entries);
    figure("raft_apply_ms", format!("{apply:.0}"));
    figure("raft_persist_ms", format!("{persist:.0}"));
    figure("raft_checkpoint_ms", format!("{checkpoint:.0}"));
    if let (Some(a), Some(r)) = (assigned, running) {
        figure("dispatch_to_running_ms", ms(r.saturating_sub(a)));
    }
}

/// `perf record` with DWARF call graphs (release builds keep no frame
/// pointers) attached to a process until stopped; CPU cycles unless
/// `SHOAL_BENCH_PERF_EVENT` names another event.
struct Profiler {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Profiler {
    fn start(pid: u32, out: &std::path::Path) -> anyhow::Result<Profiler> {
        let mut perf = std::process::Command::new("perf");
        perf.args(["record", "-F", "499", "--call-graph", "dwarf,32768"]);
        // e.g. `page-faults`, to see which code first touches memory.
        if let Some(event) = std::env::var_os("SHOAL_BENCH_PERF_EVENT") {
            perf.arg("-e").arg(event);
        }
        let child = perf
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Profiler {
            child,
            out: out.to_path_buf(),
        })
    }

    /// SIGINT makes perf write its file and exit.
    fn stop(mut self) {
        let _ = crate::process::signal(self.child.id(), "INT");
        let _ = self.child.wait();
        note(format!(
            "perf profile of the manager in {}",
            self.out.display()
        ));
    }
}

/// `total` replicas over `parts` services, as evenly as possible.
pub fn split(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_adds_up() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(20_000, 10).iter().sum::<usize>(), 20_000);
        assert_eq!(split(5, 0), vec![5]);
    }

    #[test]
    fn cpu_per_task_and_busy_cores() {
        let (per_task, busy) = cpu_share(4.0, 100_000, Duration::from_secs(2));
        assert_eq!((per_task, busy), (40.0, 2.0));
        let (per_task, busy) = cpu_share(1.0, 0, Duration::ZERO);
        assert_eq!((per_task, busy), (1e6, 1000.0));
    }
}
