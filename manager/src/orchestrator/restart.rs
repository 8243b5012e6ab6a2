//! The restart policy: whether a task that ended while it should run gets a
//! replacement, and after how long.
//!
//! Like Swarm, attempts are remembered in memory only, per slot (replica number
//! or, for global services, node): a new leader starts counting afresh. The
//! history of a slot restarts when its tasks come from a new spec version, so a
//! rolling update is not held back by the failures of the previous spec.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use shoal_proto::{RestartCondition, Task, TaskState};

use super::task::{SlotKey, observed, restart_condition, restart_delay};

/// What to do with a task that ended while it should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Replace it; start the replacement after `delay`.
    Restart { delay: Duration },
    /// Leave it in place: the policy does not allow another start.
    GiveUp,
}

#[derive(Debug, Default)]
struct SlotHistory {
    spec_version: u64,
    /// When each restart happened, and which dead task it replaced (so that a
    /// decision taken twice for the same task, e.g. after a refused write, is
    /// counted once).
    restarts: Vec<(Instant, String)>,
    /// Dead tasks the policy refused to restart: decided once, never revisited.
    given_up: HashSet<String>,
}

/// Restart attempts per (service, slot), in memory.
#[derive(Debug, Default)]
pub struct RestartTracker {
    slots: HashMap<(String, SlotKey), SlotHistory>,
}

impl RestartTracker {
    /// Decide for `task`, a task with desired state <= RUNNING whose observed
    /// state is terminal, and record the attempt when it is a restart.
    pub fn decide(&mut self, task: &Task, key: &SlotKey, now: Instant) -> Verdict {
        let spec = task.spec.as_deref();
        let history = self
            .slots
            .entry((task.service_id.clone(), key.clone()))
            .or_default();
        if history.spec_version != task.spec_version {
            *history = SlotHistory {
                spec_version: task.spec_version,
                ..Default::default()
            };
        }
        if history.given_up.contains(&task.id) {
            return Verdict::GiveUp;
        }
        let delay = restart_delay(spec);
        if history.restarts.iter().any(|(_, id)| *id == task.id) {
            return Verdict::Restart { delay };
        }
        if !condition_allows(task) {
            history.given_up.insert(task.id.clone());
            return Verdict::GiveUp;
        }
        let policy = spec.and_then(|s| s.restart).unwrap_or_default();
        if policy.max_attempts > 0 {
            let window = Duration::from_millis(policy.window_ms.max(0) as u64);
            let recent = history
                .restarts
                .iter()
                .filter(|(at, _)| window.is_zero() || now.saturating_duration_since(*at) < window)
                .count() as u64;
            if recent >= policy.max_attempts {
                history.given_up.insert(task.id.clone());
                return Verdict::GiveUp;
            }
        }
        history.restarts.push((now, task.id.clone()));
        Verdict::Restart { delay }
    }

    /// Restarts recorded for a slot (all of them, whatever the window).
    #[cfg(test)]
    pub fn attempts(&self, service_id: &str, key: &SlotKey) -> usize {
        self.slots
            .get(&(service_id.to_string(), key.clone()))
            .map(|h| h.restarts.len())
            .unwrap_or(0)
    }

    /// Drop what is known about a removed service.
    pub fn forget_service(&mut self, service_id: &str) {
        self.slots.retain(|(s, _), _| s != service_id);
    }
}

/// The restart condition applied to how the task ended.
fn condition_allows(task: &Task) -> bool {
    match restart_condition(task.spec.as_deref()) {
        RestartCondition::Any => true,
        RestartCondition::None => false,
        RestartCondition::OnFailure => {
            let exit_code = task
                .status
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.exit_code)
                .unwrap_or_default();
            !(observed(task) == TaskState::Complete && exit_code == 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{service, task};
    use shoal_proto::{ContainerStatus, RestartPolicy, Service};

    fn with_policy(policy: RestartPolicy) -> Service {
        let mut svc = service("s", 1);
        svc.spec.as_mut().unwrap().task.as_mut().unwrap().restart = Some(policy);
        svc
    }

    fn dead(svc: &Service, order: i64, state: TaskState) -> Task {
        task(svc, 1, "n", TaskState::Running, state, order)
    }

    #[test]
    fn any_restarts_with_default_delay() {
        let svc = service("s", 1);
        let mut tracker = RestartTracker::default();
        let v = tracker.decide(
            &dead(&svc, 1, TaskState::Complete),
            &SlotKey::Replica(1),
            Instant::now(),
        );
        assert_eq!(
            v,
            Verdict::Restart {
                delay: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn none_never_restarts_and_on_failure_spares_clean_exits() {
        let key = SlotKey::Replica(1);
        let now = Instant::now();
        let mut tracker = RestartTracker::default();
        let none = with_policy(RestartPolicy {
            condition: RestartCondition::None as i32,
            ..Default::default()
        });
        assert_eq!(
            tracker.decide(&dead(&none, 1, TaskState::Failed), &key, now),
            Verdict::GiveUp
        );

        let on_failure = with_policy(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            delay_ms: Some(10),
            ..Default::default()
        });
        let clean = dead(&on_failure, 2, TaskState::Complete);
        assert_eq!(tracker.decide(&clean, &key, now), Verdict::GiveUp);
        let mut crashed = dead(&on_failure, 3, TaskState::Complete);
        crashed.status.as_mut().unwrap().container = Some(ContainerStatus {
            exit_code: 1,
            ..Default::default()
        });
        assert_eq!(
            tracker.decide(&crashed, &key, now),
            Verdict::Restart {
                delay: Duration::from_millis(10)
            }
        );
        assert!(matches!(
            tracker.decide(&dead(&on_failure, 4, TaskState::Failed), &key, now),
            Verdict::Restart { .. }
        ));
    }

    #[test]
    fn max_attempts_counts_each_dead_task_once() {
        let svc = with_policy(RestartPolicy {
            max_attempts: 2,
            ..Default::default()
        });
        let key = SlotKey::Replica(1);
        let now = Instant::now();
        let mut tracker = RestartTracker::default();
        let first = dead(&svc, 1, TaskState::Failed);
        assert!(matches!(
            tracker.decide(&first, &key, now),
            Verdict::Restart { .. }
        ));
        // Deciding again for the same task (a retried write) is not a new attempt.
        assert!(matches!(
            tracker.decide(&first, &key, now),
            Verdict::Restart { .. }
        ));
        assert_eq!(tracker.attempts("s", &key), 1);
        assert!(matches!(
            tracker.decide(&dead(&svc, 2, TaskState::Failed), &key, now),
            Verdict::Restart { .. }
        ));
        let third = dead(&svc, 3, TaskState::Failed);
        assert_eq!(tracker.decide(&third, &key, now), Verdict::GiveUp);
        // Given up stays given up, even once the window would allow it.
        assert_eq!(
            tracker.decide(&third, &key, now + Duration::from_secs(3600)),
            Verdict::GiveUp
        );
    }

    #[test]
    fn window_forgets_old_attempts() {
        let svc = with_policy(RestartPolicy {
            max_attempts: 1,
            window_ms: 1_000,
            ..Default::default()
        });
        let key = SlotKey::Replica(1);
        let t0 = Instant::now();
        let mut tracker = RestartTracker::default();
        assert!(matches!(
            tracker.decide(&dead(&svc, 1, TaskState::Failed), &key, t0),
            Verdict::Restart { .. }
        ));
        let later = t0 + Duration::from_millis(1_500);
        assert!(matches!(
            tracker.decide(&dead(&svc, 2, TaskState::Failed), &key, later),
            Verdict::Restart { .. }
        ));
        assert_eq!(
            tracker.decide(&dead(&svc, 3, TaskState::Failed), &key, later),
            Verdict::GiveUp
        );
    }

    #[test]
    fn a_new_spec_version_resets_the_count() {
        let mut svc = with_policy(RestartPolicy {
            max_attempts: 1,
            ..Default::default()
        });
        let key = SlotKey::Replica(1);
        let now = Instant::now();
        let mut tracker = RestartTracker::default();
        assert!(matches!(
            tracker.decide(&dead(&svc, 1, TaskState::Failed), &key, now),
            Verdict::Restart { .. }
        ));
        assert_eq!(
            tracker.decide(&dead(&svc, 2, TaskState::Failed), &key, now),
            Verdict::GiveUp
        );
        svc.spec_version = 2;
        assert!(matches!(
            tracker.decide(&dead(&svc, 3, TaskState::Failed), &key, now),
            Verdict::Restart { .. }
        ));
        tracker.forget_service("s");
        assert_eq!(tracker.attempts("s", &key), 0);
    }
}
