//! `shoal-bench`: the benchmark harness of issue 4. Each scenario prints its
//! figures as `key=value` lines on stdout (progress goes to stderr); see
//! docs/BENCHMARKS.md for what each one measures and the last figures.
//!
//! `cargo run --release -p shoal-tests --bin shoal-bench -- SCENARIO [flags]`

use std::time::Duration;

use clap::{Parser, Subcommand};
use shoal_tests::bench::{converge, failover, footprint, recover, schedule};

/// The allocator of the `shoal` binary, so the hollow agents cost what real
/// agents cost: with glibc's malloc a third of the harness's samples were the
/// allocator and its page faults, CPU taken from the manager it measures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "shoal-bench",
    about = "Benchmarks for shoal; prints key=value figures"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Scheduling throughput: hollow nodes, services adding up to M tasks.
    Schedule {
        /// Hollow nodes (in-process agents on the fake runtime).
        #[arg(long, default_value_t = 200)]
        nodes: usize,
        /// Tasks in all (replicas over all services).
        #[arg(long, default_value_t = 20_000)]
        tasks: usize,
        /// Managers in the cluster (3 share the machine's cores; hollow nodes
        /// connect to the leader).
        #[arg(long, default_value_t = 1)]
        managers: usize,
        /// Services the tasks are split over.
        #[arg(long, default_value_t = 10)]
        services: usize,
        /// Agents' heartbeat period.
        #[arg(long, default_value = "2s")]
        heartbeat_period: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
        /// Record a `perf record -g` profile of the manager while measuring.
        #[arg(long)]
        perf_out: Option<std::path::PathBuf>,
        /// Follow the tasks on the manager's Watch stream (the observer of
        /// runs before 2026-12-06) instead of counting in the hollow nodes;
        /// also prints task_writes_per_task.
        #[arg(long)]
        watch: bool,
        /// Set the harness's niceness to this (1-19) once the nodes are
        /// ready: the hollow nodes stand in for other machines, so they yield
        /// the shared cores to the manager. 0 (the default) leaves it as it is.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
        harness_nice: i32,
    },
    /// Convergence on the real engine: shoal, Docker Swarm, plain `docker run`.
    Converge {
        /// Replicas to run.
        #[arg(long, default_value_t = 10)]
        replicas: usize,
        /// `docker run` commands at once for the floor.
        #[arg(long, default_value_t = 8)]
        parallelism: usize,
    },
    /// Recovery: an agent killed, its replicas running elsewhere (shoal, Swarm).
    Recover {
        /// Trials per side.
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Skip the Swarm side (extra dockerd daemons).
        #[arg(long)]
        no_swarm: bool,
    },
    /// Leader failover: the leader killed -9, time until a write is accepted.
    Failover {
        /// Leaders killed, one after the other.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Managers in the cluster (at least 3).
        #[arg(long, default_value_t = 3)]
        managers: usize,
    },
    /// Resident memory of the daemons.
    Footprint {
        /// Hollow nodes for the loaded manager reading.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.scenario {
            Scenario::Schedule {
                nodes,
                tasks,
                managers,
                services,
                heartbeat_period,
                timeout_s,
                perf_out,
                watch,
                harness_nice,
            } => {
                schedule::run(schedule::ScheduleArgs {
                    nodes,
                    tasks,
                    managers,
                    services,
                    heartbeat: heartbeat_period,
                    timeout: Duration::from_secs(timeout_s),
                    perf_out,
                    watch,
                    harness_nice,
                })
                .await
            }
            Scenario::Converge {
                replicas,
                parallelism,
            } => converge::run(replicas, parallelism).await,
            Scenario::Recover { trials, no_swarm } => recover::run(trials, !no_swarm).await,
            Scenario::Failover { trials, managers } => {
                failover::run(failover::FailoverArgs { trials, managers }).await
            }
            Scenario::Footprint { nodes } => footprint::run(nodes).await,
        }
    })
}
