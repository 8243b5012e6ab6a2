//! The heartbeat monitor: ends sessions whose agent fell silent for the grace
//! period and marks their nodes DOWN in the store, which makes the
//! orchestrator replace their tasks elsewhere.
//!
//! It ticks a few times per heartbeat period and scans the sessions: a scan is
//! a pass over a small map, far cheaper than a timer per node, and detection
//! lags the grace period by at most one tick. How many nodes may go DOWN
//! within a grace period is bounded ([`super::budget`]), and the grace period
//! stretches by as much as this manager has lagged of late ([`super::lag`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_proto::{NodeState, NodeStatus};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::lag::MAX_DISCOUNT;
use super::session::Expired;
use super::{Inner, lock};
use crate::store::{Action, MemState, Object, StoreError};

/// Nodes the store believes READY.
pub(super) fn ready_nodes(state: &MemState) -> Vec<String> {
    state
        .nodes()
        .filter(|n| {
            n.status
                .as_ref()
                .is_some_and(|s| s.state() == NodeState::Ready)
        })
        .map(|n| n.id.clone())
        .collect()
}

/// Expire silent sessions until `token` is cancelled.
pub(super) async fn run(inner: Arc<Inner>, token: CancellationToken) {
    let grace = inner.config.grace_period();
    let tick = (inner.config.heartbeat_period / 4).max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut holding = false;
    let mut behind = Behind::new(Instant::now());
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = interval.tick() => {}
        }
        // The manager's own delay is never charged to a node ([`super::lag`]).
        let now = Instant::now();
        let lag = inner.lag.recent(now, grace).min(grace * MAX_DISCOUNT);
        let scan = {
            let mut sessions = lock(&inner.sessions);
            behind.turned_away += sessions.take_turned_away();
            sessions.expire(now, grace + lag)
        };
        behind.report(&inner, now, grace);
        log_held(&mut holding, scan.held, grace + lag);
        let expired = scan.expired;
        if expired.is_empty() {
            continue;
        }
        for e in &expired {
            if let Some(session_id) = &e.session_id {
                tracing::info!(node.id = %e.node_id, session.id = %session_id,
                    silent_ms = e.silent_for.as_millis() as u64,
                    manager_lag_ms = lag.as_millis() as u64, "session expired");
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            result = mark_down(&inner, &expired) => {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "could not mark silent nodes down");
                }
            }
        }
    }
}

/// What the monitor says about this manager falling behind: every
/// [`Behind::EVERY`] at most, and only when it did.
struct Behind {
    since: Instant,
    turned_away: u64,
}

impl Behind {
    const EVERY: Duration = Duration::from_secs(10);
    /// Lateness worth a line.
    const NOTABLE: Duration = Duration::from_millis(250);

    fn new(now: Instant) -> Self {
        Behind {
            since: now,
            turned_away: 0,
        }
    }

    fn report(&mut self, inner: &Inner, now: Instant, grace: Duration) {
        if now.saturating_duration_since(self.since) < Self::EVERY {
            return;
        }
        let lag = inner.lag.recent(now, Self::EVERY);
        if lag >= Self::NOTABLE || self.turned_away > 0 {
            tracing::warn!(
                lag_ms = lag.as_millis() as u64,
                sessions_turned_away = self.turned_away,
                grace_ms = (grace + lag.min(grace * MAX_DISCOUNT)).as_millis() as u64,
                "this manager is behind: heartbeats get a longer grace period and new \
                 sessions wait their turn (figures over the last {}s)",
                Self::EVERY.as_secs()
            );
        }
        *self = Behind::new(now);
    }
}

/// Say when silent nodes start and stop being held back from DOWN: once
/// each way, not on every tick.
fn log_held(holding: &mut bool, held: usize, grace: Duration) {
    if held > 0 && !*holding {
        tracing::warn!(
            held,
            "many nodes fell silent at once, more than the DOWN budget of one grace \
             period: the rest keep their sessions (this manager may be the one behind) \
             and go DOWN if still silent after {}",
            human(grace * super::budget::LONG_GRACE)
        );
    } else if held == 0 && *holding {
        tracing::info!("no silent node held back from DOWN any more");
    }
    *holding = held > 0;
}

/// What a DOWN node's status says.
pub(super) fn down_message(silent_for: Duration) -> String {
    format!("heartbeat failure: no heartbeat for {}", human(silent_for))
}

/// `850ms`, `2s`, `2.3s`.
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths.is_multiple_of(10) {
        format!("{}s", tenths / 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

/// Mark the nodes of `expired` DOWN in one proposal. A node that opened a new
/// session meanwhile, is already not READY, or was removed is left alone.
async fn mark_down(inner: &Inner, expired: &[Expired]) -> Result<(), StoreError> {
    let mut todo: Vec<&Expired> = expired.iter().collect();
    // One retry: a conflict means the node changed between read and commit
    // (typically its agent reconnected); the re-read decides again.
    for _attempt in 0..2 {
        // Read the node before checking for a session: a session opened after
        // the check writes READY after our read, so our write then conflicts
        // instead of overwriting it.
        let nodes: Vec<_> = inner.store.read(|s| {
            todo.iter()
                .filter_map(|e| s.node(&e.node_id).cloned().map(|n| (*e, n)))
                .collect()
        });
        let mut actions = Vec::new();
        let mut targets = Vec::new();
        {
            let sessions = lock(&inner.sessions);
            for (e, mut node) in nodes {
                let ready = node
                    .status
                    .as_ref()
                    .is_some_and(|s| s.state() == NodeState::Ready);
                if !ready || sessions.has_node(&e.node_id) {
                    continue;
                }
                let addr = node.status.take().map(|s| s.addr).unwrap_or_default();
                node.status = Some(NodeStatus {
                    state: NodeState::Down as i32,
                    message: down_message(e.silent_for),
                    addr,
                });
                actions.push(Action::Update(Object::Node(node.into())));
                targets.push(e);
            }
        }
        if actions.is_empty() {
            return Ok(());
        }
        let applied = inner.store.propose_each(actions).await?;
        let mut retry = Vec::new();
        for (pos, target) in targets.iter().enumerate() {
            match applied.refused.iter().find(|(p, _)| *p == pos) {
                None => tracing::warn!(node.id = %target.node_id,
                    silent_ms = target.silent_for.as_millis() as u64, "node down: heartbeat failure"),
                Some((_, StoreError::Conflict { .. })) => retry.push(*target),
                Some((_, err)) => {
                    tracing::debug!(node.id = %target.node_id, error = %err, "node not marked down")
                }
            }
        }
        if retry.is_empty() {
            return Ok(());
        }
        todo = retry;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_messages_give_the_real_silence() {
        assert_eq!(
            down_message(Duration::from_millis(2010)),
            "heartbeat failure: no heartbeat for 2s"
        );
        assert_eq!(
            down_message(Duration::from_millis(320)),
            "heartbeat failure: no heartbeat for 320ms"
        );
        assert_eq!(
            down_message(Duration::from_millis(2340)),
            "heartbeat failure: no heartbeat for 2.3s"
        );
        assert_eq!(
            down_message(Duration::from_millis(2960)),
            "heartbeat failure: no heartbeat for 3s"
        );
    }
}
