//! Leader-only components, started and stopped as one unit.
//!
//! When this manager becomes Raft leader, the orchestrator, the scheduler and the
//! dispatcher's loops start under one child cancellation token; when it loses
//! leadership (or shuts down) the token is cancelled and all three are joined
//! before anything else happens, so two leaders' components never overlap on
//! one manager. A leader also keeps its own address in the managers table
//! ([`register_while_leading`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shoal_proto::Cluster;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ManagerConfig;
use crate::dispatcher::Dispatcher;
use crate::store::{Action, Object, Store, StoreError};
use crate::{orchestrator, scheduler};

/// How long leader components get to stop before they are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The first pause before the leader components restart after a failure.
const RESTART_MIN: Duration = Duration::from_millis(500);
/// The longest pause between restarts.
const RESTART_MAX: Duration = Duration::from_secs(30);

/// Follow leadership until `shutdown`, running the leader-only components
/// whenever this manager leads.
pub async fn run(
    store: Store,
    config: ManagerConfig,
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
) {
    let mut leadership = store.leadership();
    loop {
        // Wait to lead.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            res = leadership.wait_for(|l| l.is_leader) => if res.is_err() { return },
        }
        let term = leadership.borrow().term;
        // A new leader holds every committed entry, but may not have applied
        // them yet (a restart replays the log after the last state
        // checkpoint). An empty proposal commits after all of them, so once it
        // is applied the store is current: only then may the components read
        // it, or they would act on a stale state (and a restarted manager
        // would found a second cluster object).
        let caught_up = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = store.propose(Vec::new()) => r,
        };
        if let Err(err) = caught_up {
            warn!(raft.term = term, error = %err, "leadership ended before the store caught up");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                res = leadership.wait_for(|l| !l.is_leader || l.term != term) => if res.is_err() { return },
            }
            continue;
        }
        info!(
            raft.term = term,
            "became leader: starting orchestrator, scheduler and dispatcher"
        );
        if let Err(err) = ensure_cluster(&store, &config).await {
            warn!(error = %err, "could not record the cluster object");
        }
        let mut backoff = Backoff::default();
        loop {
            let ended = lead(&store, &config, &dispatcher, &shutdown, &mut leadership).await;
            match ended {
                UnitEnd::Stopped => break,
                UnitEnd::Failed(component) => {
                    let pause = backoff.next();
                    warn!(component, restart_in = ?pause,
                        "a leader component failed: restarting the orchestrator, scheduler and dispatcher");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = leadership.wait_for(|l| !l.is_leader) => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// How a run of the leader components ended.
enum UnitEnd {
    /// Leadership ended or the manager shuts down.
    Stopped,
    /// This component panicked or returned while still leading; the others
    /// were stopped with it.
    Failed(&'static str),
}

/// Run the orchestrator, the scheduler and the dispatcher's loops until
/// leadership ends or one of them fails. They share channels (the
/// orchestrator hands new tasks to the scheduler), so they stop and start
/// together.
async fn lead(
    store: &Store,
    config: &ManagerConfig,
    dispatcher: &Dispatcher,
    shutdown: &CancellationToken,
    leadership: &mut tokio::sync::watch::Receiver<crate::store::Leadership>,
) -> UnitEnd {
    let unit = shutdown.child_token();
    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    // The orchestrator hands its new tasks to the scheduler, which
    // creates them already placed (scheduler::placer).
    let (placer, placements) = scheduler::placer();
    let handle = tasks.spawn(orchestrator::run_with_placer(
        store.clone(),
        config.orchestrator.clone(),
        Some(placer),
        unit.clone(),
    ));
    names.insert(handle.id(), "orchestrator");
    let handle = tasks.spawn(scheduler::driver::run_with_placer(
        store.clone(),
        Some(placements),
        unit.clone(),
    ));
    names.insert(handle.id(), "scheduler");
    let (d, token) = (dispatcher.clone(), unit.clone());
    let handle = tasks.spawn(async move { d.run(token).await });
    names.insert(handle.id(), "dispatcher");

    let ended = tokio::select! {
        _ = shutdown.cancelled() => UnitEnd::Stopped,
        _ = leadership.wait_for(|l| !l.is_leader) => {
            info!("lost leadership: stopping orchestrator, scheduler and dispatcher");
            UnitEnd::Stopped
        }
        Some(joined) = tasks.join_next_with_id() => {
            let (id, outcome) = match joined {
                Ok((id, ())) => (id, "returned while this manager leads".to_string()),
                Err(err) => (err.id(), match err.try_into_panic() {
                    Ok(panic) => format!("panicked: {}", crate::panics::panic_message(&*panic)),
                    Err(err) => err.to_string(),
                }),
            };
            let component = names.get(&id).copied().unwrap_or("leader component");
            if shutdown.is_cancelled() {
                UnitEnd::Stopped
            } else {
                tracing::error!(component, %outcome, "leader component failed");
                UnitEnd::Failed(component)
            }
        }
    };
    unit.cancel();
    let joined = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if joined.is_err() {
        warn!("leader components did not stop within {STOP_GRACE:?}; abandoning them");
        tasks.abort_all();
    }
    ended
}

/// The pause before the leader components start again after a failure:
/// doubling from [`RESTART_MIN`] to [`RESTART_MAX`], back to the start once
/// they have run for [`RESTART_MAX`] without failing.
#[derive(Default)]
struct Backoff {
    last: Option<(Instant, Duration)>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = Instant::now();
        let pause = match self.last {
            Some((at, pause)) if now.duration_since(at) < pause + RESTART_MAX => {
                (pause * 2).min(RESTART_MAX)
            }
            _ => RESTART_MIN,
        };
        self.last = Some((now, pause));
        pause
    }
}

/// Keep this manager's address in the managers table whenever it leads (the
/// first manager of a cluster records itself this way; a restarted leader
/// corrects a changed address).
pub async fn register_while_leading(
    store: Store,
    raft_id: u64,
    node_id: String,
    advertise: String,
    forced_new_cluster: bool,
    shutdown: CancellationToken,
) {
    if !crate::config::reachable(&advertise) {
        warn!(%advertise, "other managers cannot reach this address; give --advertise-addr before adding managers");
    }
    let mut leadership = store.leadership();
    loop {
        if leadership.borrow_and_update().is_leader
            && let Err(e) =
                crate::raft::membership::register(&store, raft_id, &node_id, &advertise).await
        {
            warn!(error = %e, "could not record this manager in the managers table");
        }
        if forced_new_cluster
            && leadership.borrow().is_leader
            && let Err(e) = crate::raft::membership::forget_others(&store, raft_id).await
        {
            warn!(error = %e, "could not drop the other managers from the managers table");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = leadership.changed() => if changed.is_err() { return },
        }
    }
}

/// Create the cluster object on the first leadership of a new cluster.
async fn ensure_cluster(store: &Store, config: &ManagerConfig) -> Result<(), StoreError> {
    if store.read(|s| s.cluster().is_some()) {
        return Ok(());
    }
    let cluster = Cluster {
        id: shoal_proto::ids::new_id(),
        spec: Some(config.default_cluster_spec()),
        ..Default::default()
    };
    store
        .propose(vec![Action::Create(Object::Cluster(cluster.into()))])
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_while_failures_come_quickly_and_start_over_after_a_quiet_spell() {
        let mut b = Backoff::default();
        assert_eq!(b.next(), RESTART_MIN);
        assert_eq!(b.next(), RESTART_MIN * 2);
        assert_eq!(b.next(), RESTART_MIN * 4);
        for _ in 0..10 {
            b.next();
        }
        assert_eq!(b.next(), RESTART_MAX, "capped");
        // The last failure was long ago: start over.
        let (_, pause) = b.last.unwrap();
        b.last = Some((Instant::now() - pause - RESTART_MAX - RESTART_MIN, pause));
        assert_eq!(b.next(), RESTART_MIN);
    }
}
