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

/// The harness's jemalloc options, read before `main`: one arena, freed pages
/// kept mapped, and small slabs carved from any free extent, so that the
/// heap `schedule` warms before it measures is the one the hollow nodes grow
/// into (`shoal_tests::bench::warm`). The `shoal` processes it starts have
/// their own options (cli/src/main.rs).
// Exporting a symbol that jemalloc's C code looks up is unsafe by nature;
// nothing else here is.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf = MallocConf(
    c"narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1,lg_extent_max_active_fit:24".as_ptr(),
);

/// A C string pointer that jemalloc reads; it points into static memory.
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);
// SAFETY: the pointer is to an immutable static string.
#[allow(unsafe_code)]
unsafe impl Sync for MallocConf {}

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
        /// MiB of heap the harness faults in and frees before it measures, so
        /// the hollow nodes grow into pages already touched (default: 4 KiB
        /// per task; 0 turns it off).
        #[arg(long)]
        harness_warm_mib: Option<usize>,
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
                harness_warm_mib,
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
                    harness_warm_mib,
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

#[cfg(test)]
mod tests {
    use shoal_tests::bench::procfs::minor_faults;
    use shoal_tests::bench::warm::warm_heap;

    /// With this binary's allocator options, memory warmed and freed serves
    /// later small allocations: fresh, 32 MiB of them would fault in more
    /// than 8,000 pages.
    #[test]
    fn a_warmed_heap_serves_small_allocations_without_fresh_pages() {
        let pid = std::process::id();
        warm_heap(64);
        let before = minor_faults(pid).expect("readable");
        let pieces: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8 | 1; 1000]).collect();
        std::hint::black_box(&pieces);
        let faulted = minor_faults(pid).expect("readable") - before;
        assert!(faulted < 1024, "{faulted} pages faulted in");
    }
}
