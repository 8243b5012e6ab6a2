//! `recover`: a node's agent is killed (-9) and its replicas must run elsewhere.
//!
//! shoal: a manager (default heartbeat settings) and two Docker agent processes
//! on the one engine (distinct node names), a service of 4 replicas. Swarm: the
//! same shape with extra `dockerd` daemons, one Swarm manager and two workers,
//! the replicas constrained to the workers; the killed "agent" is a worker's
//! daemon. Each trial kills the node that holds replicas and times, from the
//! kill, until the engine shows the 4 replicas running on the other node; then
//! the killed one is restarted and left to clean up its old containers. Trials
//! alternate between the two nodes, since after a trial all replicas sit on the
//! survivor.

use std::time::{Duration, Instant};

use bollard::Docker;

use super::daemons::{BenchAgent, BenchManager, ensure_test_images};
use super::figures::{figure, ms, note, percentile};
use super::schedule::BENCH_LOG;
use super::swarm::{ExtraDaemon, GwBridgeGuard, count, docker_cli, remove_labelled, wait_running};
use crate::docker::{IMAGE, engine};
use crate::wait::eventually;

const SERVICE: &str = "benchrecover";
const REPLICAS: usize = 4;
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(trials: usize, with_swarm: bool) -> anyhow::Result<()> {
    anyhow::ensure!(trials > 0, "--trials must be above 0");
    ensure_test_images()?;
    figure("trials", trials);
    let mut shoal = ShoalPair::start().await?;
    let times = run_trials(&mut shoal, trials, "shoal").await?;
    drop(shoal);
    print_percentiles("recover", &times);
    if with_swarm {
        let swarm = async {
            let mut swarm = SwarmPair::start().await?;
            run_trials(&mut swarm, trials, "swarm").await
        };
        match swarm.await {
            Ok(times) => print_percentiles("swarm_recover", &times),
            Err(err) => figure(
                "swarm_recover",
                format!(
                    "unavailable reason={}",
                    format!("{err:#}").replace('\n', " ")
                ),
            ),
        }
    }
    Ok(())
}

fn print_percentiles(prefix: &str, times: &[u128]) {
    let list: Vec<String> = times.iter().map(u128::to_string).collect();
    figure(&format!("{prefix}_trials_ms"), list.join(","));
    if let Some(p50) = percentile(times, 50.0) {
        figure(&format!("{prefix}_p50_ms"), p50);
    }
    if let Some(p95) = percentile(times, 95.0) {
        figure(&format!("{prefix}_p95_ms"), p95);
    }
}

/// Two nodes running one 4-replica service.
trait Pair {
    /// Replicas of the service running on node `i` (0 or 1), as its engine says.
    async fn running_on(&self, i: usize) -> anyhow::Result<usize>;
    /// Kill node `i`'s agent with SIGKILL.
    fn kill(&mut self, i: usize);
    /// Start node `i`'s agent again and wait until the cluster sees it ready.
    async fn restart(&mut self, i: usize) -> anyhow::Result<()>;
}

async fn run_trials<P: Pair>(pair: &mut P, trials: usize, side: &str) -> anyhow::Result<Vec<u128>> {
    let mut times = Vec::with_capacity(trials);
    for trial in 1..=trials {
        let victim = if pair.running_on(0).await? > 0 { 0 } else { 1 };
        let survivor = 1 - victim;
        let start = Instant::now();
        pair.kill(victim);
        let pair_ref = &*pair;
        eventually(
            "the replicas to run on the surviving node",
            STEP_TIMEOUT,
            || async move {
                match pair_ref.running_on(survivor).await {
                    Ok(n) if n >= REPLICAS => Ok(()),
                    Ok(n) => Err(format!("{n} running on the survivor")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
        let took = start.elapsed();
        note(format!("{side} trial {trial}: {} ms", ms(took)));
        times.push(ms(took));

        pair.restart(victim).await?;
        let pair_ref = &*pair;
        eventually(
            "the restarted node to stop its old replicas",
            STEP_TIMEOUT,
            || async move {
                match pair_ref.running_on(victim).await {
                    Ok(0) => Ok(()),
                    Ok(n) => Err(format!("{n} still running")),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;
    }
    Ok(times)
}

/// shoal: a manager and two agents on the one engine.
struct ShoalPair {
    manager: BenchManager,
    agents: [BenchAgent; 2],
    node_ids: [String; 2],
    docker: Docker,
}

impl ShoalPair {
    async fn start() -> anyhow::Result<ShoalPair> {
        note("shoal: a manager (default heartbeat settings) and two agents");
        let manager = BenchManager::start(&[], BENCH_LOG).await?;
        let cluster = manager.join_target().await?;
        let agents = [
            BenchAgent::start(&cluster, "shoal-bench-recover-a")?,
            BenchAgent::start(&cluster, "shoal-bench-recover-b")?,
        ];
        let node_ids = [agents[0].node_id().await?, agents[1].node_id().await?];
        let pair = ShoalPair {
            manager,
            agents,
            node_ids,
            docker: engine().await,
        };
        pair.manager.wait_ready_nodes(2, STEP_TIMEOUT).await?;
        pair.manager
            .cli(&[
                "service",
                "create",
                "--name",
                SERVICE,
                "--replicas",
                "4",
                "-d",
                IMAGE,
                "sleep",
                "3600",
            ])
            .await?;
        let label = format!("shoal.service.name={SERVICE}");
        wait_running(&pair.docker, &[&label], REPLICAS, STEP_TIMEOUT).await?;
        Ok(pair)
    }
}

impl Pair for ShoalPair {
    async fn running_on(&self, i: usize) -> anyhow::Result<usize> {
        let service = format!("shoal.service.name={SERVICE}");
        let node = format!("shoal.node.id={}", self.node_ids[i]);
        Ok(count(&self.docker, &[&service, &node]).await?.0)
    }

    fn kill(&mut self, i: usize) {
        self.agents[i].kill();
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.agents[i].restart()?;
        self.manager.wait_ready_nodes(2, STEP_TIMEOUT).await
    }
}

impl Drop for ShoalPair {
    fn drop(&mut self) {
        for (agent, id) in self.agents.iter_mut().zip(&self.node_ids) {
            agent.kill();
            remove_labelled(None, &format!("shoal.node.id={id}"));
        }
    }
}

/// Swarm: a manager daemon and two worker daemons, all extra `dockerd`s.
struct SwarmPair {
    manager: ExtraDaemon,
    workers: [ExtraDaemon; 2],
    node_ids: [String; 2],
    clients: [Docker; 2],
    // Last: fields drop in order, and this one must go after the daemons.
    _gwbridge: GwBridgeGuard,
}

impl SwarmPair {
    async fn start() -> anyhow::Result<SwarmPair> {
        note("swarm: starting three extra dockerd daemons (a manager, two workers)");
        let gwbridge = GwBridgeGuard::observe();
        let manager = ExtraDaemon::start("swarm-manager", 1, IMAGE).await?;
        let workers = [
            ExtraDaemon::start("swarm-worker-a", 2, IMAGE).await?,
            ExtraDaemon::start("swarm-worker-b", 3, IMAGE).await?,
        ];
        let addr = crate::process::free_addr().to_string();
        // A data-path port of its own: the main engine may hold the default 4789.
        let data_port = (crate::process::free_addr().port()).to_string();
        manager
            .cli(&[
                "swarm",
                "init",
                "--listen-addr",
                &addr,
                "--advertise-addr",
                &addr,
                "--data-path-port",
                &data_port,
            ])
            .await?;
        let token = manager
            .cli(&["swarm", "join-token", "-q", "worker"])
            .await?;
        let mut node_ids = Vec::new();
        for w in &workers {
            let own = crate::process::free_addr().to_string();
            w.cli(&[
                "swarm",
                "join",
                "--token",
                &token,
                "--listen-addr",
                &own,
                "--advertise-addr",
                &own,
                &addr,
            ])
            .await?;
            node_ids.push(w.cli(&["info", "--format", "{{.Swarm.NodeID}}"]).await?);
        }
        let clients = [workers[0].client().await?, workers[1].client().await?];
        let node_ids: [String; 2] = [node_ids[0].clone(), node_ids[1].clone()];
        let pair = SwarmPair {
            manager,
            workers,
            node_ids,
            clients,
            _gwbridge: gwbridge,
        };
        pair.manager
            .cli(&[
                "service",
                "create",
                "--no-resolve-image",
                "--detach",
                "--replicas",
                "4",
                "--constraint",
                "node.role==worker",
                "--name",
                SERVICE,
                IMAGE,
                "sleep",
                "3600",
            ])
            .await?;
        eventually("the swarm service to run 4 replicas", STEP_TIMEOUT, || {
            let pair = &pair;
            async move {
                let a = pair.running_on(0).await.map_err(|e| e.to_string())?;
                let b = pair.running_on(1).await.map_err(|e| e.to_string())?;
                if a + b >= REPLICAS {
                    Ok(())
                } else {
                    Err(format!("{a} + {b} running"))
                }
            }
        })
        .await?;
        Ok(pair)
    }
}

impl Pair for SwarmPair {
    async fn running_on(&self, i: usize) -> anyhow::Result<usize> {
        let label = format!("com.docker.swarm.service.name={SERVICE}");
        Ok(count(&self.clients[i], &[&label]).await?.0)
    }

    fn kill(&mut self, i: usize) {
        self.workers[i].kill();
    }

    async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.workers[i].restart().await?;
        self.clients[i] = self.workers[i].client().await?;
        let host = self.manager.host.clone();
        let id = self.node_ids[i].clone();
        eventually(
            "the restarted worker to be ready in the swarm",
            STEP_TIMEOUT,
            || {
                let (host, id) = (host.clone(), id.clone());
                async move {
                    let state = docker_cli(
                        Some(&host),
                        &["node", "inspect", &id, "--format", "{{.Status.State}}"],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    if state == "ready" { Ok(()) } else { Err(state) }
                }
            },
        )
        .await
    }
}
