//! The filter pipeline: small checks that decide whether a node may take a task,
//! each naming itself and explaining a refusal in plain words. The explanations
//! of all refused nodes are aggregated into the task's status message
//! (`no suitable node (2 nodes lack 512 MiB memory; 1 node is drained)`).
//!
//! A filter is *static* when its verdict cannot change while the scheduler
//! places tasks of one group (node state, availability, constraints): those run
//! once per node and group. The *dynamic* ones (resources, host ports, max
//! replicas) are checked again before each placement.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_proto::constraint::{self, Constraint};
use shoal_proto::{Node, NodeAvailability, NodeState, Task};

use super::nodeinfo::{self, HostPort, NodeInfo};

/// What a group of identical tasks asks of a node.
#[derive(Debug, Clone, Default)]
pub struct Requirements {
    pub service_id: Arc<str>,
    pub constraints: Vec<Constraint>,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub host_ports: Vec<HostPort>,
    /// 0: unlimited.
    pub max_replicas: u64,
    /// Label keys to spread over, outermost first.
    pub spread: Vec<String>,
}

impl Requirements {
    /// The requirements of `task`; an error names an invalid placement field.
    pub fn of(task: &Task) -> Result<Requirements, String> {
        let placement = task.spec.as_ref().and_then(|s| s.placement.as_ref());
        let (constraints, spread, max_replicas) = match placement {
            Some(p) => (
                Constraint::parse_all(&p.constraints)?,
                p.preferences
                    .iter()
                    .map(|pref| constraint::parse_spread(&pref.spread_descriptor))
                    .collect::<Result<Vec<_>, _>>()?,
                p.max_replicas,
            ),
            None => (Vec::new(), Vec::new(), 0),
        };
        let (nano_cpus, memory_bytes) = nodeinfo::reservations(task);
        Ok(Requirements {
            service_id: Arc::from(task.service_id.as_str()),
            constraints,
            nano_cpus,
            memory_bytes,
            host_ports: nodeinfo::host_ports(task),
            max_replicas,
            spread,
        })
    }
}

/// Why a node was refused. Equal rejections aggregate in the explanation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rejection {
    NotReady(NodeState),
    Paused,
    Drained,
    /// The first constraint the node fails, as written.
    Constraint(String),
    /// What is lacking: requested nano CPUs and/or memory bytes.
    Resources {
        cpus: Option<i64>,
        memory: Option<i64>,
    },
    HostPort(HostPort),
    MaxReplicas(u64),
}

impl Rejection {
    /// "1 node is drained", "2 nodes lack 512 MiB memory", ...
    pub fn describe(&self, nodes: usize) -> String {
        let one = nodes == 1;
        let verb =
            |singular: &'static str, plural: &'static str| if one { singular } else { plural };
        let what = match self {
            Rejection::NotReady(NodeState::Down) => format!("{} down", verb("is", "are")),
            Rejection::NotReady(NodeState::Disconnected) => {
                format!("{} disconnected", verb("is", "are"))
            }
            Rejection::NotReady(_) => format!("{} not ready", verb("is", "are")),
            Rejection::Paused => format!("{} paused", verb("is", "are")),
            Rejection::Drained => format!("{} drained", verb("is", "are")),
            Rejection::Constraint(c) => {
                format!("{} not satisfy constraint {c}", verb("does", "do"))
            }
            Rejection::Resources { cpus, memory } => {
                let mut parts = Vec::new();
                if let Some(c) = cpus {
                    parts.push(format_cpus(*c));
                }
                if let Some(m) = memory {
                    parts.push(format!("{} memory", format_bytes(*m)));
                }
                format!("{} {}", verb("lacks", "lack"), parts.join(" and "))
            }
            Rejection::HostPort(p) => format!("{} host port {p} in use", verb("has", "have")),
            Rejection::MaxReplicas(max) => format!(
                "already {} the maximum of {max} task{} of this service",
                verb("runs", "run"),
                if *max == 1 { "" } else { "s" }
            ),
        };
        format!("{nodes} node{} {what}", if one { "" } else { "s" })
    }
}

/// The status message of a task no node accepts. `registered` is the number of
/// nodes the store knows; the rejections come one per refused node.
pub fn explain<'a>(
    rejections: impl IntoIterator<Item = &'a Rejection>,
    registered: usize,
) -> String {
    if registered == 0 {
        return "no suitable node (no nodes registered)".to_string();
    }
    let mut counts: HashMap<&Rejection, usize> = HashMap::new();
    for r in rejections {
        *counts.entry(r).or_default() += 1;
    }
    let mut parts: Vec<(usize, String)> = counts
        .into_iter()
        .map(|(r, n)| (n, r.describe(n)))
        .collect();
    // Biggest reasons first; the text breaks ties so the message is stable and
    // does not cause needless rewrites of the task.
    parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let parts: Vec<String> = parts.into_iter().map(|(_, s)| s).collect();
    format!("no suitable node ({})", parts.join("; "))
}

/// `512 MiB`, `1.5 GiB`, `100 B`.
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", trim_number(value), UNITS[unit])
}

/// `1 CPU`, `0.5 CPUs`.
pub fn format_cpus(nano: i64) -> String {
    let cpus = nano as f64 / 1e9;
    let text = trim_number(cpus);
    format!("{text} CPU{}", if text == "1" { "" } else { "s" })
}

fn trim_number(value: f64) -> String {
    let s = format!("{value:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One check of the pipeline.
pub trait Filter: Send + Sync {
    /// True when the verdict cannot change while tasks of one group are placed.
    fn is_static(&self) -> bool;
    /// False when the requirements give this filter nothing to check.
    fn applies(&self, _req: &Requirements) -> bool {
        true
    }
    fn check(&self, req: &Requirements, node: &Node, info: &NodeInfo) -> Result<(), Rejection>;
}

/// The node's agent is connected and healthy.
pub struct ReadyFilter;
impl Filter for ReadyFilter {
    fn is_static(&self) -> bool {
        true
    }
    fn check(&self, _: &Requirements, node: &Node, _: &NodeInfo) -> Result<(), Rejection> {
        let state = node
            .status
            .as_ref()
            .map(|s| s.state())
            .unwrap_or(NodeState::Unknown);
        if state == NodeState::Ready {
            Ok(())
        } else {
            Err(Rejection::NotReady(state))
        }
    }
}

/// Paused and drained nodes take no new tasks.
pub struct AvailabilityFilter;
impl Filter for AvailabilityFilter {
    fn is_static(&self) -> bool {
        true
    }
    fn check(&self, _: &Requirements, node: &Node, _: &NodeInfo) -> Result<(), Rejection> {
        match node
            .spec
            .as_ref()
            .map(|s| s.availability())
            .unwrap_or(NodeAvailability::Active)
        {
            NodeAvailability::Active => Ok(()),
            NodeAvailability::Pause => Err(Rejection::Paused),
            NodeAvailability::Drain => Err(Rejection::Drained),
        }
    }
}

/// Placement constraints (`node.labels.zone==east`).
pub struct ConstraintFilter;
impl Filter for ConstraintFilter {
    fn is_static(&self) -> bool {
        true
    }
    fn applies(&self, req: &Requirements) -> bool {
        !req.constraints.is_empty()
    }
    fn check(&self, req: &Requirements, node: &Node, _: &NodeInfo) -> Result<(), Rejection> {
        match req.constraints.iter().find(|c| !c.matches(node)) {
            None => Ok(()),
            Some(c) => Err(Rejection::Constraint(c.to_string())),
        }
    }
}

/// CPU and memory reservations fit in what the node has left.
pub struct ResourceFilter;
impl Filter for ResourceFilter {
    fn is_static(&self) -> bool {
        false
    }
    fn applies(&self, req: &Requirements) -> bool {
        req.nano_cpus > 0 || req.memory_bytes > 0
    }
    fn check(&self, req: &Requirements, _: &Node, info: &NodeInfo) -> Result<(), Rejection> {
        let (cpus, memory) = info.available();
        let cpus = (req.nano_cpus > cpus).then_some(req.nano_cpus);
        let memory = (req.memory_bytes > memory).then_some(req.memory_bytes);
        if cpus.is_none() && memory.is_none() {
            Ok(())
        } else {
            Err(Rejection::Resources { cpus, memory })
        }
    }
}

/// The fixed published ports are free on the node.
pub struct HostPortFilter;
impl Filter for HostPortFilter {
    fn is_static(&self) -> bool {
        false
    }
    fn applies(&self, req: &Requirements) -> bool {
        !req.host_ports.is_empty()
    }
    fn check(&self, req: &Requirements, _: &Node, info: &NodeInfo) -> Result<(), Rejection> {
        match req.host_ports.iter().find(|p| info.port_in_use(p)) {
            None => Ok(()),
            Some(p) => Err(Rejection::HostPort(*p)),
        }
    }
}

/// At most `max_replicas` tasks of the service per node.
pub struct MaxReplicasFilter;
impl Filter for MaxReplicasFilter {
    fn is_static(&self) -> bool {
        false
    }
    fn applies(&self, req: &Requirements) -> bool {
        req.max_replicas > 0
    }
    fn check(&self, req: &Requirements, _: &Node, info: &NodeInfo) -> Result<(), Rejection> {
        if u64::from(info.service_tasks(&req.service_id)) < req.max_replicas {
            Ok(())
        } else {
            Err(Rejection::MaxReplicas(req.max_replicas))
        }
    }
}

/// The filters that apply to one group of tasks, in order.
pub struct Pipeline<'a> {
    req: &'a Requirements,
    all: Vec<&'static dyn Filter>,
    dynamic: Vec<&'static dyn Filter>,
}

/// Every filter, cheapest and most telling first: a node refused for several
/// reasons is reported for the first one.
pub static FILTERS: [&dyn Filter; 6] = [
    &ReadyFilter,
    &AvailabilityFilter,
    &ConstraintFilter,
    &ResourceFilter,
    &HostPortFilter,
    &MaxReplicasFilter,
];

impl<'a> Pipeline<'a> {
    pub fn new(req: &'a Requirements) -> Pipeline<'a> {
        let all: Vec<&'static dyn Filter> =
            FILTERS.iter().copied().filter(|f| f.applies(req)).collect();
        let dynamic = all.iter().copied().filter(|f| !f.is_static()).collect();
        Pipeline { req, all, dynamic }
    }

    /// Every filter, first rejection wins.
    pub fn check(&self, node: &Node, info: &NodeInfo) -> Result<(), Rejection> {
        self.all
            .iter()
            .try_for_each(|f| f.check(self.req, node, info))
    }

    /// Only the filters whose verdict changes as tasks are placed.
    pub fn check_dynamic(&self, node: &Node, info: &NodeInfo) -> Result<(), Rejection> {
        self.dynamic
            .iter()
            .try_for_each(|f| f.check(self.req, node, info))
    }

    pub fn has_dynamic(&self) -> bool {
        !self.dynamic.is_empty()
    }
}

#[cfg(test)]
#[path = "filters_tests.rs"]
mod tests;
