//! `failover`: the leader manager killed with SIGKILL, timed until a write is
//! accepted again (issue 4 item 4, issue 6).
//!
//! K release managers form one cluster. Each trial waits until the group is
//! at rest, starts one writer per follower (each creating tiny services, one
//! at a time, through its follower, which relays writes to the leader), kills
//! the leader once writes flow, and times from the kill to the
//! acknowledgement of the first write *sent* after the kill (a write in
//! flight at the kill cannot count). The managers' logs (info level) time
//! the steps in between: when a survivor won the election (raft-rs's
//! `became leader`) and when its store started leading (its no-op applied),
//! and count the election timeouts that fired. Then the killed manager is
//! restarted on its data dir and the group must be whole and caught up again
//! before the next trial.

use std::time::{Duration, Instant, SystemTime};

use shoal_manager::config::RaftConfig;
use shoal_proto::CreateServiceRequest;
use shoal_proto::control_client::ControlClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::cluster::BenchCluster;
use super::figures::{RaftEvent, RaftEventKind, figure, ms, note, percentile, raft_events};
use crate::group::tiny_service;

/// Flags of the `failover` scenario.
#[derive(Debug, Clone)]
pub struct FailoverArgs {
    pub trials: usize,
    pub managers: usize,
}

/// Managers log at info: elections and leadership changes are in the logs,
/// and without agents there is little else.
const FAILOVER_LOG: &str = "info";

/// Each writer sends at most one write per this period (and one at a time):
/// a steady stream that resolves the failover time to a few milliseconds
/// without loading the 2 cores the managers share.
const WRITE_PERIOD: Duration = Duration::from_millis(10);

/// A write not answered within this is abandoned and the next one sent.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Acknowledged writes from each writer before the leader is killed.
const WARM_UP_WRITES: usize = 5;

/// Give up on a trial after this long without a write accepted.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(60);

/// One measured failover.
#[derive(Debug, Clone)]
struct Trial {
    /// Kill → first write sent after the kill acknowledged.
    write: Duration,
    /// Kill → a survivor won the election (its log's `became leader`).
    election: Option<Duration>,
    /// Kill → the new leader's store leads (its no-op applied; it serves writes).
    store_leads: Option<Duration>,
    /// Terms the group went through (1 for one clean election).
    term_delta: u64,
    /// Writes that failed or timed out between the kill and the first ack.
    failed_writes: u64,
    /// Election timeouts that fired on any manager between the kill and the
    /// first ack (pre-vote rounds included).
    election_starts: usize,
    /// Restart of the killed manager → group whole and caught up.
    rejoin: Duration,
    /// Election timeouts that fired while the killed manager rejoined.
    rejoin_election_starts: usize,
    /// Election timeouts that fired with every manager up, before this kill.
    quiet_election_starts: usize,
    /// Term moves with every manager up (before the kill, or while rejoining).
    unexpected_terms: u64,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.managers >= 3,
        "--managers must be at least 3: the survivors of a kill must be a majority"
    );
    anyhow::ensure!(args.trials > 0, "--trials must be above 0");
    print_timing_config();

    let mut cluster = BenchCluster::start(args.managers, &[], FAILOVER_LOG).await?;
    figure("managers", args.managers);
    let mut trials = Vec::with_capacity(args.trials);
    let mut quiet = Quiet {
        since: SystemTime::now(),
        term: None,
    };
    let mut result = Ok(());
    for n in 1..=args.trials {
        match trial(&mut cluster, n, &mut quiet).await {
            Ok(t) => {
                let at = |d: Option<Duration>| {
                    d.map(|d| format!("{} ms", ms(d)))
                        .unwrap_or_else(|| "unknown".into())
                };
                note(format!(
                    "trial {n}/{}: write accepted {} ms after the kill; leader elected at {}, \
                     serving at {}; {} term(s), {} election start(s), {} failed writes; \
                     rejoined in {} ms",
                    args.trials,
                    ms(t.write),
                    at(t.election),
                    at(t.store_leads),
                    t.term_delta,
                    t.election_starts,
                    t.failed_writes,
                    ms(t.rejoin)
                ));
                trials.push(t);
            }
            Err(err) => {
                result = Err(err.context(format!("failover trial {n}")));
                break;
            }
        }
    }
    print_figures(&trials);
    result
}

/// The Raft timing compiled into the manager (manager/src/config.rs;
/// raft-rs draws each election timeout in [election, 2 × election) ticks).
/// The harness reads the defaults of its own build of shoal-manager, which
/// is the measured binary's unless `SHOAL_BENCH_BIN` names another.
fn print_timing_config() {
    let raft = RaftConfig::default();
    let tick = ms(raft.tick_interval);
    figure("raft_tick_ms", tick);
    figure("raft_election_ticks", raft.election_ticks);
    figure("raft_heartbeat_ticks", raft.heartbeat_ticks);
    figure(
        "raft_election_timeout_ms",
        format!(
            "{}..{}",
            tick * raft.election_ticks as u128,
            tick * 2 * raft.election_ticks as u128
        ),
    );
}

fn print_figures(trials: &[Trial]) {
    let writes: Vec<u128> = trials.iter().map(|t| ms(t.write)).collect();
    let elections: Vec<u128> = trials.iter().filter_map(|t| t.election.map(ms)).collect();
    let serving: Vec<u128> = trials
        .iter()
        .filter_map(|t| t.store_leads.map(ms))
        .collect();
    let rejoins: Vec<u128> = trials.iter().map(|t| ms(t.rejoin)).collect();
    let list = |v: &[u128]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let pct = |v: &[u128], p: f64| {
        percentile(v, p)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "n/a".into())
    };
    let sum = |f: fn(&Trial) -> u64| trials.iter().map(f).sum::<u64>();
    figure("failover_trials", trials.len());
    figure("failover_trials_ms", list(&writes));
    figure("failover_p50_ms", pct(&writes, 50.0));
    figure("failover_p99_ms", pct(&writes, 99.0));
    figure("failover_max_ms", pct(&writes, 100.0));
    figure("failover_election_trials_ms", list(&elections));
    figure("failover_election_ms_p50", pct(&elections, 50.0));
    figure("failover_election_ms_p99", pct(&elections, 99.0));
    figure("failover_serving_ms_p50", pct(&serving, 50.0));
    figure("failover_serving_ms_p99", pct(&serving, 99.0));
    figure(
        "failover_term_delta_max",
        trials
            .iter()
            .map(|t| t.term_delta)
            .max()
            .unwrap_or_default(),
    );
    figure("failover_failed_writes", sum(|t| t.failed_writes));
    figure(
        "failover_election_starts",
        sum(|t| t.election_starts as u64),
    );
    figure("failover_rejoin_ms_p50", pct(&rejoins, 50.0));
    figure("failover_rejoin_ms_max", pct(&rejoins, 100.0));
    figure(
        "failover_rejoin_election_starts",
        sum(|t| t.rejoin_election_starts as u64),
    );
    figure(
        "failover_quiet_election_starts",
        sum(|t| t.quiet_election_starts as u64),
    );
    figure(
        "failover_unexpected_term_changes",
        sum(|t| t.unexpected_terms),
    );
}

/// Since when every manager has been up, and in which term the group was.
struct Quiet {
    since: SystemTime,
    term: Option<u64>,
}

async fn trial(cluster: &mut BenchCluster, n: usize, quiet: &mut Quiet) -> anyhow::Result<Trial> {
    let settled = cluster.wait_settled(Duration::from_secs(60)).await?;
    let mut unexpected_terms = quiet.term.map_or(0, |t| settled.term.saturating_sub(t));
    if unexpected_terms > 0 {
        note(format!(
            "trial {n}: the term moved {unexpected_terms} time(s) with every manager up"
        ));
    }
    let leader = settled.leader;
    let leader_addr = cluster.managers[leader].addr.to_string();
    let followers: Vec<usize> = (0..cluster.managers.len())
        .filter(|&i| i != leader)
        .collect();

    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<Ack>();
    let mut writers = Vec::new();
    for (index, &i) in followers.iter().enumerate() {
        let writer = Writer {
            index,
            control: cluster.managers[i].control().await?,
            prefix: format!("fo-{n}-{i}"),
            acks: acks_tx.clone(),
            stop: stop.clone(),
        };
        writers.push(tokio::spawn(writer.run()));
    }
    drop(acks_tx);

    let mut warm = vec![0usize; followers.len()];
    let warm_up = tokio::time::timeout(TRIAL_TIMEOUT, async {
        while warm.iter().any(|&w| w < WARM_UP_WRITES) {
            let ack = acks.recv().await.expect("writers run until stopped");
            warm[ack.writer] += 1;
        }
    });
    warm_up
        .await
        .map_err(|_| anyhow::anyhow!("writes through the followers did not flow: {warm:?}"))?;

    let killed_at = Instant::now();
    let killed_wall = SystemTime::now();
    cluster.managers[leader].kill();
    let first = tokio::time::timeout(TRIAL_TIMEOUT, async {
        loop {
            let ack = acks.recv().await.expect("writers run until stopped");
            if ack.sent_at >= killed_at {
                return ack;
            }
        }
    })
    .await
    .map_err(|_| {
        let tails: Vec<String> = cluster.managers.iter().map(|m| m.log_tail()).collect();
        anyhow::anyhow!(
            "no write accepted within {TRIAL_TIMEOUT:?} of killing the leader {leader_addr}\n{}",
            tails.join("\n")
        )
    })?;
    let write = first.acked_at - killed_at;
    let acked_wall = killed_wall + write;
    stop.cancel();
    let mut failed_writes = 0;
    for w in writers {
        failed_writes += w.await?.failed_between(killed_at, first.acked_at);
    }

    let restart_wall = SystemTime::now();
    let restart_at = Instant::now();
    cluster.managers[leader].restart().await?;
    let after = cluster.wait_settled(Duration::from_secs(60)).await?;
    let rejoin = restart_at.elapsed();
    let rejoined_wall = SystemTime::now();

    let events: Vec<RaftEvent> = cluster
        .managers
        .iter()
        .flat_map(|m| raft_events(&m.log()))
        .collect();
    let starts_between = |from: SystemTime, to: SystemTime| {
        events
            .iter()
            .filter(|e| e.kind == RaftEventKind::ElectionStarted && e.at >= from && e.at < to)
            .count()
    };
    let since_kill = |at: SystemTime| at.duration_since(killed_wall).ok();
    let won = events
        .iter()
        .filter_map(|e| match e.kind {
            RaftEventKind::BecameLeader { term } if term > settled.term && e.at >= killed_wall => {
                Some((e.at, term))
            }
            _ => None,
        })
        .min();
    let new_term = won.map_or(after.term, |(_, term)| term);
    let serving = events
        .iter()
        .filter(|e| e.kind == RaftEventKind::StoreLeads { term: new_term })
        .map(|e| e.at)
        .min();
    if after.term != new_term {
        note(format!(
            "trial {n}: the term moved from {new_term} to {} while the killed manager rejoined",
            after.term
        ));
        unexpected_terms += after.term.saturating_sub(new_term);
    }
    let trial = Trial {
        write,
        election: won.and_then(|(at, _)| since_kill(at)),
        store_leads: serving.and_then(since_kill),
        term_delta: new_term.saturating_sub(settled.term),
        failed_writes,
        election_starts: starts_between(killed_wall, acked_wall),
        rejoin,
        rejoin_election_starts: starts_between(restart_wall, rejoined_wall),
        quiet_election_starts: starts_between(quiet.since, killed_wall),
        unexpected_terms,
    };
    *quiet = Quiet {
        since: rejoined_wall,
        term: Some(after.term),
    };
    Ok(trial)
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
struct Ack {
    /// Which writer (index among the followers).
    writer: usize,
    sent_at: Instant,
    acked_at: Instant,
}

/// Creates services named `PREFIX-SEQ` with no replicas through one manager,
/// one at a time, at most one per [`WRITE_PERIOD`], until stopped.
struct Writer {
    /// Index among the followers, named in its acks.
    index: usize,
    control: ControlClient<Channel>,
    prefix: String,
    acks: mpsc::UnboundedSender<Ack>,
    stop: CancellationToken,
}

/// When a writer's writes failed.
struct Failures(Vec<Instant>);

impl Failures {
    /// Failed writes sent in `[from, to)`.
    fn failed_between(&self, from: Instant, to: Instant) -> u64 {
        self.0.iter().filter(|&&at| at >= from && at < to).count() as u64
    }
}

impl Writer {
    async fn run(mut self) -> Failures {
        let mut failures = Vec::new();
        let mut seq = 0u64;
        while !self.stop.is_cancelled() {
            seq += 1;
            let sent_at = Instant::now();
            let request = CreateServiceRequest {
                spec: Some(tiny_service(format!("{}-{seq}", self.prefix))),
            };
            let sent = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = tokio::time::timeout(WRITE_TIMEOUT, self.control.create_service(request)) => r,
            };
            match sent {
                Ok(Ok(_)) => {
                    let ack = Ack {
                        writer: self.index,
                        sent_at,
                        acked_at: Instant::now(),
                    };
                    let _ = self.acks.send(ack);
                }
                _ => failures.push(sent_at),
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep_until((sent_at + WRITE_PERIOD).into()) => {}
            }
        }
        Failures(failures)
    }
}
