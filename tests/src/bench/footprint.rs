//! `footprint`: resident memory of the daemons. The idle manager (leading a
//! cluster with no nodes), a Docker agent running 20 tasks, and a manager with
//! N hollow nodes connected and heartbeating (current and peak RSS).

use std::time::Duration;

use super::converge::ShoalNode;
use super::daemons::{BenchManager, ensure_test_images};
use super::figures::{figure, mib_figure, note};
use super::procfs::proc_mib;
use super::schedule::{BENCH_LOG, start_hollow_nodes, stop_hollow_nodes};
use super::swarm::wait_running;
use crate::docker::{IMAGE, engine};

/// How long a daemon is left alone before its idle memory is read: long
/// enough for start-up allocations to settle and a few heartbeats to pass.
const SETTLE: Duration = Duration::from_secs(3);

pub async fn run(nodes: usize) -> anyhow::Result<()> {
    ensure_test_images()?;

    let idle = BenchManager::start(&[], BENCH_LOG).await?;
    tokio::time::sleep(SETTLE).await;
    figure("manager_idle_rss_mib", mib_figure(idle.rss_mib()));
    drop(idle);

    note("agent: a single-node cluster with a 20-replica service");
    let node = ShoalNode::start("shoal-bench-footprint").await?;
    node.manager
        .cli(&[
            "service",
            "create",
            "--name",
            "benchfootprint",
            "--replicas",
            "20",
            "-d",
            IMAGE,
            "sleep",
            "3600",
        ])
        .await?;
    let label = "shoal.service.name=benchfootprint";
    wait_running(&engine().await, &[label], 20, Duration::from_secs(180)).await?;
    tokio::time::sleep(SETTLE).await;
    figure(
        "agent_rss_mib_20_tasks",
        mib_figure(node.agent.pid().and_then(|p| proc_mib(p, "VmRSS"))),
    );
    figure(
        "manager_rss_mib_1_node_20_tasks",
        mib_figure(node.manager.rss_mib()),
    );
    node.manager
        .cli(&["service", "rm", "benchfootprint"])
        .await?;
    drop(node);

    note(format!("manager with {nodes} hollow nodes"));
    let manager = BenchManager::start(&["--heartbeat-period", "2s"], BENCH_LOG).await?;
    let agents = start_hollow_nodes(&manager, nodes, &Default::default()).await?;
    tokio::time::sleep(SETTLE).await;
    figure(
        &format!("manager_rss_mib_{nodes}_nodes"),
        mib_figure(manager.rss_mib()),
    );
    figure(
        &format!("manager_peak_rss_mib_{nodes}_nodes"),
        mib_figure(manager.peak_rss_mib()),
    );
    stop_hollow_nodes(agents).await;
    Ok(())
}
