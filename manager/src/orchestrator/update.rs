//! The pure side of rolling updates: the update policy with Swarm's defaults,
//! which slots still run an old spec version, in what order to replace them,
//! and how the monitor window judges replaced tasks.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shoal_proto::constraint::Constraint;
use shoal_proto::{Node, Service, Task, TaskState, UpdateFailureAction, UpdateOrder};

use super::global::{Eligibility, constraints, eligibility};
use super::task::{SlotKey, is_global, is_live, is_terminal, observed, slot_key};

/// Swarm's monitor window when the spec leaves it unset.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// A service's update settings, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// Slots replaced per batch (`usize::MAX` for "all at once").
    pub parallelism: usize,
    pub delay: Duration,
    pub order: UpdateOrder,
    pub failure_action: UpdateFailureAction,
    pub monitor: Duration,
}

impl UpdatePolicy {
    pub fn of(service: &Service) -> UpdatePolicy {
        let cfg = service
            .spec
            .as_ref()
            .and_then(|s| s.update)
            .unwrap_or_default();
        let parallelism = match cfg.parallelism {
            None => 1,
            Some(0) => usize::MAX,
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        UpdatePolicy {
            parallelism,
            delay: Duration::from_millis(cfg.delay_ms.max(0) as u64),
            order: cfg.order(),
            failure_action: cfg.failure_action(),
            monitor: cfg
                .monitor_ms
                .map(|ms| Duration::from_millis(ms.max(0) as u64))
                .unwrap_or(DEFAULT_MONITOR),
        }
    }
}

/// A slot that still runs an old spec version.
#[derive(Debug, Clone)]
pub struct StaleSlot {
    pub key: SlotKey,
    /// Live tasks of an older spec version.
    pub old: Vec<Task>,
    /// A live task of the current spec version already in the slot (a restart
    /// or an interrupted update made it): the update reuses it.
    pub current: Option<Task>,
}

/// The slots of `service` whose live tasks include an old spec version, the
/// ones not running first (replacing them costs nothing), then in slot order.
/// Global services only update nodes that may run new tasks; the reconciler
/// deals with the others.
pub fn stale_slots(
    service: &Service,
    tasks: &[Task],
    nodes: &HashMap<String, Node>,
) -> Vec<StaleSlot> {
    let global = is_global(service).then(|| constraints(service));
    let mut slots: BTreeMap<SlotKey, StaleSlot> = BTreeMap::new();
    for t in tasks.iter().filter(|t| is_live(t)) {
        let key = slot_key(t);
        let slot = slots.entry(key.clone()).or_insert_with(|| StaleSlot {
            key,
            old: Vec::new(),
            current: None,
        });
        if t.spec_version == service.spec_version {
            // Prefer the most advanced current task if there are several.
            if slot
                .current
                .as_ref()
                .is_none_or(|c| observed(c) < observed(t))
                && !is_terminal(t)
            {
                slot.current = Some(t.clone());
            }
        } else {
            slot.old.push(t.clone());
        }
    }
    let mut stale: Vec<StaleSlot> = slots
        .into_values()
        .filter(|s| !s.old.is_empty())
        .filter(|s| may_update(&global, &s.key, nodes))
        .collect();
    stale.sort_by_key(|s| {
        let running = s.old.iter().any(|t| observed(t) == TaskState::Running);
        (running, s.key.clone())
    });
    stale
}

/// Whether [`stale_slots`] would find any, without building them: the
/// orchestrator asks after every change to a service's tasks, and building
/// the slots cloned every live task of the service each time.
pub fn has_stale_slots(service: &Service, tasks: &[Task], nodes: &HashMap<String, Node>) -> bool {
    let global = is_global(service).then(|| constraints(service));
    tasks
        .iter()
        .filter(|t| is_live(t) && t.spec_version != service.spec_version)
        .any(|t| may_update(&global, &slot_key(t), nodes))
}

/// Whether a slot with old tasks is the updater's to replace. `global` is
/// None for a replicated service, else the global service's constraints.
fn may_update(
    global: &Option<Option<Vec<Constraint>>>,
    key: &SlotKey,
    nodes: &HashMap<String, Node>,
) -> bool {
    match (global, key) {
        (None, _) => true,
        (Some(None), _) => false,
        (Some(Some(c)), SlotKey::Node(id)) => nodes
            .get(id)
            .is_some_and(|n| eligibility(n, c) == Eligibility::Run),
        (Some(Some(_)), SlotKey::Replica(_)) => false,
    }
}

/// A replaced task under watch: it must not fail within the monitor window
/// that starts when it reaches RUNNING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitored {
    pub task_id: String,
    /// When it was seen RUNNING (unix ms).
    pub running_since_ms: i64,
}

/// How a monitored task fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Still inside its window and fine.
    Watching,
    /// It ended within its window, by itself.
    Failed,
    /// The window passed, or the task was retired on purpose.
    Done,
}

/// Judge one monitored task (`task` is its current value, `None` once deleted).
pub fn judge(m: &Monitored, task: Option<&Task>, now_ms: i64, monitor: Duration) -> Watch {
    let window_end = m.running_since_ms + monitor.as_millis() as i64;
    let Some(task) = task else {
        return Watch::Done;
    };
    // An end the manager asked for (SHUTDOWN after desired SHUTDOWN) is a
    // retirement; any other end counts, even once the restart policy has
    // since shut the task down.
    let asked_to_stop = !is_live(task) && observed(task) == TaskState::Shutdown;
    if is_terminal(task) && !asked_to_stop {
        let ended = task.status.as_ref().map(|s| s.timestamp).unwrap_or(now_ms);
        return if ended < window_end {
            Watch::Failed
        } else {
            Watch::Done
        };
    }
    if !is_live(task) || now_ms >= window_end {
        Watch::Done
    } else {
        Watch::Watching
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{global, node, nodes, service, task};
    use shoal_proto::{NodeAvailability, NodeState, UpdateConfig};

    #[test]
    fn policy_defaults_follow_swarm() {
        let svc = service("s", 1);
        let p = UpdatePolicy::of(&svc);
        assert_eq!(p.parallelism, 1);
        assert_eq!(p.monitor, DEFAULT_MONITOR);
        assert_eq!(p.order, UpdateOrder::StopFirst);
        assert_eq!(p.failure_action, UpdateFailureAction::Pause);
        let mut all = service("s", 1);
        all.spec.as_mut().unwrap().update = Some(UpdateConfig {
            parallelism: Some(0),
            delay_ms: 20,
            monitor_ms: Some(0),
            ..Default::default()
        });
        let p = UpdatePolicy::of(&all);
        assert_eq!(
            (p.parallelism, p.delay, p.monitor),
            (usize::MAX, Duration::from_millis(20), Duration::ZERO)
        );
    }

    #[test]
    fn stale_slots_put_idle_ones_first_and_reuse_current_tasks() {
        let mut svc = service("s", 3);
        let ns = nodes(vec![node("a", NodeState::Ready, NodeAvailability::Active)]);
        let old1 = task(&svc, 1, "a", TaskState::Running, TaskState::Running, 1);
        let old2 = task(&svc, 2, "a", TaskState::Running, TaskState::Running, 2);
        let old3 = task(&svc, 3, "", TaskState::Running, TaskState::Pending, 3);
        let gone = task(&svc, 4, "a", TaskState::Shutdown, TaskState::Shutdown, 4);
        svc.spec_version = 2;
        let cur2 = task(&svc, 2, "a", TaskState::Running, TaskState::Starting, 5);
        let all = [old1, old2, old3, gone.clone(), cur2.clone()];
        assert!(has_stale_slots(&svc, &all, &ns));
        assert!(
            !has_stale_slots(&svc, &[gone, cur2], &ns),
            "a dead old task and a current one leave nothing to update"
        );
        let stale = stale_slots(&svc, &all, &ns);
        let keys: Vec<SlotKey> = stale.iter().map(|s| s.key.clone()).collect();
        assert_eq!(
            keys,
            vec![
                SlotKey::Replica(3),
                SlotKey::Replica(1),
                SlotKey::Replica(2)
            ]
        );
        assert_eq!(
            stale[2].current.as_ref().map(|t| t.id.as_str()),
            Some("t2-a-5")
        );
        assert!(stale[0].current.is_none());
    }

    #[test]
    fn global_updates_skip_nodes_that_cannot_run_new_tasks() {
        let mut svc = global("g");
        let ns = nodes(vec![
            node("a", NodeState::Ready, NodeAvailability::Active),
            node("p", NodeState::Ready, NodeAvailability::Pause),
        ]);
        let tasks = vec![
            task(&svc, 0, "a", TaskState::Running, TaskState::Running, 1),
            task(&svc, 0, "p", TaskState::Running, TaskState::Running, 2),
        ];
        svc.spec_version = 2;
        let stale = stale_slots(&svc, &tasks, &ns);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].key, SlotKey::Node("a".into()));
        assert!(has_stale_slots(&svc, &tasks, &ns));
        assert!(
            !has_stale_slots(&svc, &tasks[1..], &ns),
            "only the paused node's task is old: not the updater's"
        );
    }

    #[test]
    fn monitor_window_judges_failures() {
        let svc = service("s", 1);
        let m = Monitored {
            task_id: "t".into(),
            running_since_ms: 1_000,
        };
        let window = Duration::from_millis(500);
        let mut t = task(&svc, 1, "a", TaskState::Running, TaskState::Running, 1);
        assert_eq!(judge(&m, Some(&t), 1_200, window), Watch::Watching);
        assert_eq!(judge(&m, Some(&t), 1_500, window), Watch::Done);
        t.status.as_mut().unwrap().state = TaskState::Failed as i32;
        t.status.as_mut().unwrap().timestamp = 1_300;
        assert_eq!(judge(&m, Some(&t), 1_300, window), Watch::Failed);
        t.status.as_mut().unwrap().timestamp = 1_600;
        assert_eq!(judge(&m, Some(&t), 1_600, window), Watch::Done);
        // Failed, then shut down by the restart policy: still a failure.
        t.status.as_mut().unwrap().timestamp = 1_300;
        t.desired_state = TaskState::Shutdown as i32;
        assert_eq!(judge(&m, Some(&t), 1_400, window), Watch::Failed);
        // Retired on purpose (stopped after desired SHUTDOWN): not a failure.
        t.status.as_mut().unwrap().state = TaskState::Shutdown as i32;
        assert_eq!(judge(&m, Some(&t), 1_400, window), Watch::Done);
        assert_eq!(judge(&m, None, 1_300, window), Watch::Done);
    }
}
