//! What the scheduler knows about one node: the node object and the footprint of
//! the tasks placed on it (tasks per service, total tasks, reserved CPU and
//! memory, host-mode ports in use), kept up to date incrementally so that the
//! filters never have to scan tasks.
//!
//! Two levels of "being on a node", as in Swarm: a task *holds* its resources and
//! host ports from ASSIGNED until it is observed finished (a task being shut down
//! still has its container and its port), and it *counts* for spreading and
//! `max_replicas` only while its desired state is at most RUNNING.

use std::fmt;
use std::sync::Arc;

use shoal_proto::{Node, PortProtocol, Task, TaskState};

use crate::fasthash::FastMap;

/// A host-mode published port: unique per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: i32,
    pub port: u32,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = if self.protocol == PortProtocol::Udp as i32 {
            "udp"
        } else {
            "tcp"
        };
        write!(f, "{}/{proto}", self.port)
    }
}

/// Host ports a task binds on its node: every fixed published port. There is
/// no routing mesh yet, so the agent publishes ingress ports on the task's own
/// node too, and two tasks with the same one cannot share a node.
pub fn host_ports(task: &Task) -> Vec<HostPort> {
    let mut ports: Vec<HostPort> = task
        .ports
        .iter()
        .filter(|p| p.published_port != 0)
        .map(|p| HostPort {
            protocol: p.protocol,
            port: p.published_port,
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// CPU (nano) and memory (bytes) reserved by a task's spec.
pub fn reservations(task: &Task) -> (i64, i64) {
    task.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map(|r| (r.nano_cpus.max(0), r.memory_bytes.max(0)))
        .unwrap_or((0, 0))
}

fn observed(task: &Task) -> TaskState {
    task.status
        .as_ref()
        .map(|s| s.state())
        .unwrap_or(TaskState::New)
}

/// True when the task occupies resources on `task.node_id`.
pub fn holds_resources(task: &Task) -> bool {
    let state = observed(task);
    !task.node_id.is_empty() && state >= TaskState::Assigned && state < TaskState::Complete
}

/// True when the task counts towards its node's task totals.
pub fn is_counted(task: &Task) -> bool {
    holds_resources(task) && task.desired_state() <= TaskState::Running
}

/// True when an agent's report, which changed only the task's status from
/// `old` to `new`, can change what the scheduler keeps of it: whether it
/// holds its node's resources (and so counts there), or waits to be placed.
pub fn report_matters(old: &Task, new: &Task) -> bool {
    holds_resources(old) != holds_resources(new) || is_schedulable(old) || is_schedulable(new)
}

/// True when the scheduler should place the task.
pub fn is_schedulable(task: &Task) -> bool {
    observed(task) == TaskState::Pending && task.desired_state() <= TaskState::Running
}

/// What one task takes from its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Shared by the tasks of a group: one allocation per group, not per task.
    pub service_id: Arc<str>,
    pub counted: bool,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub host_ports: Vec<HostPort>,
}

impl Footprint {
    pub fn of(task: &Task, counted: bool) -> Footprint {
        Footprint::with_service(Arc::from(task.service_id.as_str()), task, counted)
    }

    /// Like [`Footprint::of`], with the service id already shared.
    pub fn with_service(service_id: Arc<str>, task: &Task, counted: bool) -> Footprint {
        let (nano_cpus, memory_bytes) = reservations(task);
        Footprint {
            service_id,
            counted,
            nano_cpus,
            memory_bytes,
            host_ports: host_ports(task),
        }
    }
}

/// One node and the aggregate footprint of the tasks on it. The footprint of
/// each task is kept by the caller (`state.rs`), which hands it back to remove.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    /// `None` while tasks are known on a node the store no longer (or not yet) has.
    pub node: Option<Node>,
    holding: usize,
    tasks_by_service: FastMap<Arc<str>, u32>,
    active_tasks: u32,
    reserved_cpus: i64,
    reserved_memory: i64,
    ports_in_use: FastMap<HostPort, u32>,
}

impl NodeInfo {
    pub fn new(id: String, node: Option<Node>) -> NodeInfo {
        NodeInfo {
            id,
            node,
            holding: 0,
            tasks_by_service: FastMap::default(),
            active_tasks: 0,
            reserved_cpus: 0,
            reserved_memory: 0,
            ports_in_use: FastMap::default(),
        }
    }

    /// Tasks of `service_id` counted on this node.
    pub fn service_tasks(&self, service_id: &str) -> u32 {
        self.tasks_by_service.get(service_id).copied().unwrap_or(0)
    }

    /// Tasks counted on this node, all services.
    pub fn active_tasks(&self) -> u32 {
        self.active_tasks
    }

    /// Reserved (nano CPUs, memory bytes).
    #[cfg(test)]
    pub fn reserved(&self) -> (i64, i64) {
        (self.reserved_cpus, self.reserved_memory)
    }

    /// Capacity minus reservations: (nano CPUs, memory bytes).
    pub fn available(&self) -> (i64, i64) {
        let total = self
            .node
            .as_ref()
            .and_then(|n| n.description.as_ref())
            .and_then(|d| d.resources.as_ref())
            .map(|r| (r.nano_cpus, r.memory_bytes))
            .unwrap_or((0, 0));
        (total.0 - self.reserved_cpus, total.1 - self.reserved_memory)
    }

    pub fn port_in_use(&self, port: &HostPort) -> bool {
        self.ports_in_use.contains_key(port)
    }

    /// Number of tasks holding resources here (counted or not).
    pub fn task_count(&self) -> usize {
        self.holding
    }

    /// Take what a task holds.
    pub fn add(&mut self, footprint: &Footprint) {
        self.holding += 1;
        self.reserved_cpus += footprint.nano_cpus;
        self.reserved_memory += footprint.memory_bytes;
        for p in &footprint.host_ports {
            *self.ports_in_use.entry(*p).or_default() += 1;
        }
        if footprint.counted {
            self.count(&footprint.service_id, true);
        }
    }

    /// Give back what a task held (the footprint given to [`NodeInfo::add`]).
    pub fn remove(&mut self, footprint: &Footprint) {
        self.holding = self.holding.saturating_sub(1);
        self.reserved_cpus -= footprint.nano_cpus;
        self.reserved_memory -= footprint.memory_bytes;
        for p in &footprint.host_ports {
            if let Some(n) = self.ports_in_use.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.ports_in_use.remove(p);
                }
            }
        }
        if footprint.counted {
            self.count(&footprint.service_id, false);
        }
    }

    /// Change whether a recorded task counts; true if that changed anything.
    pub fn set_counted(&mut self, footprint: &mut Footprint, counted: bool) -> bool {
        if footprint.counted == counted {
            return false;
        }
        footprint.counted = counted;
        self.count(&footprint.service_id, counted);
        true
    }

    fn count(&mut self, service_id: &Arc<str>, up: bool) {
        if up {
            self.active_tasks += 1;
            match self.tasks_by_service.get_mut(&**service_id) {
                Some(n) => *n += 1,
                None => {
                    self.tasks_by_service.insert(service_id.clone(), 1);
                }
            }
        } else {
            self.active_tasks = self.active_tasks.saturating_sub(1);
            if let Some(n) = self.tasks_by_service.get_mut(&**service_id) {
                *n -= 1;
                if *n == 0 {
                    self.tasks_by_service.remove(&**service_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{PortConfig, ResourceRequirements, Resources, TaskSpec, TaskStatus};

    fn task(id: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "svc".into(),
            node_id: "n1".into(),
            desired_state: desired as i32,
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            spec: Some(
                TaskSpec {
                    resources: Some(ResourceRequirements {
                        limits: None,
                        reservations: Some(Resources {
                            nano_cpus: 500_000_000,
                            memory_bytes: 1 << 20,
                        }),
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ports: vec![PortConfig {
                protocol: PortProtocol::Tcp as i32,
                target_port: 80,
                published_port: 8080,
                publish_mode: shoal_proto::PublishMode::Host as i32,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn classifies_tasks() {
        let t = task("t", TaskState::Running, TaskState::Running);
        assert!(holds_resources(&t) && is_counted(&t) && !is_schedulable(&t));
        let t = task("t", TaskState::Running, TaskState::Shutdown);
        assert!(holds_resources(&t) && !is_counted(&t));
        let t = task("t", TaskState::Failed, TaskState::Running);
        assert!(!holds_resources(&t));
        let mut t = task("t", TaskState::Pending, TaskState::Ready);
        assert!(is_schedulable(&t) && !holds_resources(&t));
        t.desired_state = TaskState::Shutdown as i32;
        assert!(!is_schedulable(&t));
    }

    #[test]
    fn accounts_add_count_and_remove() {
        let t = task("t1", TaskState::Running, TaskState::Running);
        let mut info = NodeInfo::new("n1".into(), None);
        let mut fp = Footprint::of(&t, true);
        info.add(&fp);
        assert_eq!(info.service_tasks("svc"), 1);
        assert_eq!(info.active_tasks(), 1);
        assert_eq!(info.reserved(), (500_000_000, 1 << 20));
        let port = HostPort {
            protocol: 0,
            port: 8080,
        };
        assert!(info.port_in_use(&port));
        assert_eq!(port.to_string(), "8080/tcp");
        assert!(info.set_counted(&mut fp, false));
        assert!(!info.set_counted(&mut fp, false));
        assert_eq!(info.service_tasks("svc"), 0);
        assert_eq!(info.active_tasks(), 0);
        // Still holds its resources while it shuts down.
        assert!(info.port_in_use(&port));
        info.remove(&fp);
        assert!(!info.port_in_use(&port));
        assert_eq!(info.reserved(), (0, 0));
        assert_eq!(info.task_count(), 0);
    }

    #[test]
    fn only_reports_that_start_or_stop_holding_resources_matter() {
        use TaskState::*;
        let report = |from, to| report_matters(&task("t", from, Running), &task("t", to, Running));
        assert!(
            !report(Assigned, Running),
            "it held its node's resources already"
        );
        assert!(!report(Starting, Running));
        assert!(report(Running, Failed), "a task that ended frees them");
        assert!(report(Pending, Assigned), "a task waiting to be placed");
    }
}
