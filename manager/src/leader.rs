//! Leader-only components, started and stopped as one unit.
//!
//! When this manager becomes Raft leader, the orchestrator, the scheduler and the
//! dispatcher's loops start under one child cancellation token; when it loses
//! leadership (or shuts down) the token is cancelled and all three are joined
//! before anything else happens, so two leaders' components never overlap on
//! one manager.

use std::time::Duration;

use shoal_proto::{Cluster, ClusterSpec, DispatcherConfig, OrchestrationConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::ManagerConfig;
use crate::dispatcher::Dispatcher;
use crate::store::{Action, Object, Store, StoreError};
use crate::{orchestrator, scheduler};

/// How long leader components get to stop before they are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(5);

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
        let unit = shutdown.child_token();
        let mut tasks = JoinSet::new();
        // The orchestrator hands its new tasks to the scheduler, which
        // creates them already placed (scheduler::placer).
        let (placer, placements) = scheduler::placer();
        tasks.spawn(orchestrator::run_with_placer(
            store.clone(),
            config.orchestrator.clone(),
            Some(placer),
            unit.clone(),
        ));
        tasks.spawn(scheduler::driver::run_with_placer(
            store.clone(),
            Some(placements),
            unit.clone(),
        ));
        let d = dispatcher.clone();
        let token = unit.clone();
        tasks.spawn(async move { d.run(token).await });

        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = leadership.wait_for(|l| !l.is_leader) => {
                info!("lost leadership: stopping orchestrator, scheduler and dispatcher");
            }
        }
        unit.cancel();
        let joined = tokio::time::timeout(STOP_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            warn!("leader components did not stop within {STOP_GRACE:?}; abandoning them");
            tasks.abort_all();
        }
        if shutdown.is_cancelled() {
            return;
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
        spec: Some(default_cluster_spec(config)),
        ..Default::default()
    };
    store
        .propose(vec![Action::Create(Object::Cluster(cluster.into()))])
        .await?;
    Ok(())
}

/// The settings a new cluster starts with, from the first manager's configuration.
pub(crate) fn default_cluster_spec(config: &ManagerConfig) -> ClusterSpec {
    ClusterSpec {
        name: "default".into(),
        dispatcher: Some(DispatcherConfig {
            heartbeat_period_ms: config.dispatcher.heartbeat_period.as_millis() as i64,
            heartbeat_grace_multiplier: config.dispatcher.grace_multiplier,
        }),
        orchestration: Some(OrchestrationConfig {
            task_history_retention_limit: config.orchestrator.task_history_limit as u64,
        }),
    }
}
