//! `converge`: time for N replicas of a local image to run on the real engine,
//! side by side in one run: (a) shoal (release manager + Docker agent
//! processes, `shoal service create -d`), (b) Docker Swarm on the same engine
//! (`docker service create --no-resolve-image --detach`), (c) plain `docker run -d`
//! with P commands at a time, the engine's own floor. Each is timed from the
//! command's start until the engine itself reports N running containers, then
//! removed, and waited for until its containers are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::daemons::{BenchAgent, BenchManager, ensure_test_images};
use super::figures::{figure, ms, note, ratio};
use super::schedule::BENCH_LOG;
use super::swarm::{SwarmMode, docker_cli, remove_labelled, wait_gone, wait_running};
use crate::docker::{IMAGE, engine};

const SHOAL_SERVICE: &str = "benchconverge";
const SWARM_SERVICE: &str = "shoal-bench-converge";
/// The label of the floor's `docker run` containers.
const FLOOR_LABEL: &str = "shoal-bench=floor";

pub async fn run(replicas: usize, parallelism: usize) -> anyhow::Result<()> {
    anyhow::ensure!(replicas > 0, "--replicas must be above 0");
    anyhow::ensure!(parallelism > 0, "--parallelism must be above 0");
    ensure_test_images()?;
    figure("replicas", replicas);
    // Leftovers of an interrupted run would be counted as converged.
    remove_labelled(None, FLOOR_LABEL);
    let _ = docker_cli(None, &["service", "rm", SWARM_SERVICE]).await;

    let shoal = shoal_converge(replicas).await?;
    figure("shoal_ms", ms(shoal));
    let swarm = swarm_converge(replicas).await?;
    figure("swarm_ms", ms(swarm));
    let floor = floor_converge(replicas, parallelism).await?;
    figure("docker_run_parallelism", parallelism);
    figure("docker_run_ms", ms(floor));
    figure("converge_ratio_vs_swarm", ratio(ms(shoal), ms(swarm)));
    figure("converge_ratio_vs_floor", ratio(ms(shoal), ms(floor)));
    Ok(())
}

/// A single-node shoal cluster (manager and Docker agent processes, default
/// settings) whose containers are removed at the end, even on error.
pub struct ShoalNode {
    pub manager: BenchManager,
    pub agent: BenchAgent,
    pub node_id: String,
}

impl ShoalNode {
    pub async fn start(name: &str) -> anyhow::Result<ShoalNode> {
        let manager = BenchManager::start(&[], BENCH_LOG).await?;
        let agent = BenchAgent::start(&manager.join_target().await?, name)?;
        let node_id = agent.node_id().await?;
        manager.wait_ready_nodes(1, Duration::from_secs(30)).await?;
        Ok(ShoalNode {
            manager,
            agent,
            node_id,
        })
    }
}

impl Drop for ShoalNode {
    fn drop(&mut self) {
        self.agent.kill();
        remove_labelled(None, &format!("shoal.node.id={}", self.node_id));
    }
}

async fn shoal_converge(replicas: usize) -> anyhow::Result<Duration> {
    note("shoal: starting a manager and an agent");
    let node = ShoalNode::start("shoal-bench-converge").await?;
    let docker = engine().await;
    let label = format!("shoal.service.name={SHOAL_SERVICE}");
    let n = replicas.to_string();
    let start = Instant::now();
    node.manager
        .cli(&[
            "service",
            "create",
            "--name",
            SHOAL_SERVICE,
            "--replicas",
            &n,
            "-d",
            IMAGE,
            "sleep",
            "3600",
        ])
        .await?;
    wait_running(&docker, &[&label], replicas, timeout_for(replicas)).await?;
    let took = start.elapsed();
    note(format!(
        "shoal: {replicas} running after {} ms; removing",
        ms(took)
    ));
    node.manager.cli(&["service", "rm", SHOAL_SERVICE]).await?;
    wait_gone(&docker, &[&label], timeout_for(replicas)).await?;
    Ok(took)
}

async fn swarm_converge(replicas: usize) -> anyhow::Result<Duration> {
    note("swarm: entering Swarm mode on the engine");
    let swarm = SwarmMode::enter().await?;
    let result = async {
        let docker = engine().await;
        let label = format!("com.docker.swarm.service.name={SWARM_SERVICE}");
        let n = replicas.to_string();
        let start = Instant::now();
        docker_cli(
            None,
            &[
                "service",
                "create",
                "--no-resolve-image",
                "--detach",
                "--replicas",
                &n,
                "--name",
                SWARM_SERVICE,
                IMAGE,
                "sleep",
                "3600",
            ],
        )
        .await?;
        wait_running(&docker, &[&label], replicas, timeout_for(replicas)).await?;
        let took = start.elapsed();
        note(format!(
            "swarm: {replicas} running after {} ms; removing",
            ms(took)
        ));
        docker_cli(None, &["service", "rm", SWARM_SERVICE]).await?;
        wait_gone(&docker, &[&label], timeout_for(replicas)).await?;
        anyhow::Ok(took)
    }
    .await;
    if result.is_err() {
        let _ = docker_cli(None, &["service", "rm", SWARM_SERVICE]).await;
    }
    drop(swarm);
    result
}

async fn floor_converge(replicas: usize, parallelism: usize) -> anyhow::Result<Duration> {
    note(format!(
        "docker run: {replicas} containers, {parallelism} at a time"
    ));
    let docker = engine().await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..parallelism.min(replicas) {
        let next = next.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= replicas {
                    return anyhow::Ok(());
                }
                let name = format!("shoal-bench-run-{i}");
                docker_cli(
                    None,
                    &[
                        "run",
                        "-d",
                        "--label",
                        FLOOR_LABEL,
                        "--name",
                        &name,
                        IMAGE,
                        "sleep",
                        "3600",
                    ],
                )
                .await?;
            }
        });
    }
    let result = async {
        while let Some(joined) = workers.join_next().await {
            joined??;
        }
        wait_running(&docker, &[FLOOR_LABEL], replicas, timeout_for(replicas)).await?;
        anyhow::Ok(start.elapsed())
    }
    .await;
    // Removal is not part of the figure: plain `docker rm -f` of them all.
    remove_labelled(None, FLOOR_LABEL);
    result
}

fn timeout_for(replicas: usize) -> Duration {
    Duration::from_secs(60 + 3 * replicas as u64)
}
