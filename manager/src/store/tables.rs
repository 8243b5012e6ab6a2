//! The in-memory copy of the replicated state: every object, indexed the ways the
//! control API, orchestrator, scheduler and dispatcher look them up.
//!
//! sled holds the durable copy; this one answers reads without decoding. Only the
//! apply path (`apply.rs`) mutates it, through [`MemState::put`] and
//! [`MemState::remove`], which keep the indexes in step.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_proto::{Cluster, Config, Meta, Node, Secret, Service, Task};

use super::object::{Kind, Stored};
use crate::fasthash::{FastMap, FastSet};

/// Every stored object, plus the Raft index of the last applied entry. Objects
/// are held as [`Stored`] holds them, behind an `Arc` that the committed
/// change shares: apply moves a pointer into the table, not the object, and a
/// table grows by rehashing pointers. The
/// id-keyed maps use [`FastMap`]: managers generate every id, so no client
/// chooses those keys.
#[derive(Debug, Default, Clone)]
pub struct MemState {
    pub applied_index: u64,
    nodes: FastMap<String, Arc<Node>>,
    services: FastMap<String, Arc<Service>>,
    tasks: FastMap<String, Arc<Task>>,
    clusters: FastMap<String, Arc<Cluster>>,
    secrets: FastMap<String, Arc<Secret>>,
    configs: FastMap<String, Arc<Config>>,
    // Users choose names, so these keep std's SipHash.
    secret_by_name: HashMap<String, String>,
    config_by_name: HashMap<String, String>,
    service_by_name: HashMap<String, String>,
    // Hash sets, not ordered ones: with random ids, an ordered set paid a
    // dozen string comparisons (each a cache miss) for every task created.
    tasks_by_service: FastMap<String, FastSet<String>>,
    tasks_by_node: FastMap<String, FastSet<String>>,
}

/// Why a user-supplied reference (id, prefix or name) found nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("{kind} {reference} not found")]
    NotFound { kind: Kind, reference: String },
    #[error("{kind} reference {reference} is ambiguous: it matches {count} objects")]
    Ambiguous {
        kind: Kind,
        reference: String,
        count: usize,
    },
}

impl MemState {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id).map(Arc::as_ref)
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(Arc::as_ref)
    }
    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id).map(Arc::as_ref)
    }
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(Arc::as_ref)
    }
    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.service_by_name
            .get(name)
            .and_then(|id| self.service(id))
    }
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id).map(Arc::as_ref)
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(Arc::as_ref)
    }
    #[cfg(test)]
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }
    /// Tasks of one service, in no particular order.
    pub fn tasks_of_service<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_service
            .get(service_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task(id))
    }
    /// How many tasks one service has.
    pub fn task_count_of_service(&self, service_id: &str) -> usize {
        self.tasks_by_service
            .get(service_id)
            .map_or(0, FastSet::len)
    }
    /// Tasks assigned to one node, in no particular order.
    pub fn tasks_on_node<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks_by_node
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.task(id))
    }
    /// The cluster object (there is one once the first manager has started).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.clusters().next()
    }
    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values().map(Arc::as_ref)
    }
    /// How many objects the tables hold (of every kind).
    pub fn object_count(&self) -> usize {
        self.nodes.len()
            + self.services.len()
            + self.tasks.len()
            + self.clusters.len()
            + self.secrets.len()
            + self.configs.len()
    }

    pub fn secret(&self, id: &str) -> Option<&Secret> {
        self.secrets.get(id).map(Arc::as_ref)
    }
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secrets.values().map(Arc::as_ref)
    }
    pub fn secret_by_name(&self, name: &str) -> Option<&Secret> {
        self.secret_by_name.get(name).and_then(|id| self.secret(id))
    }
    pub fn config(&self, id: &str) -> Option<&Config> {
        self.configs.get(id).map(Arc::as_ref)
    }
    pub fn configs(&self) -> impl Iterator<Item = &Config> {
        self.configs.values().map(Arc::as_ref)
    }
    pub fn config_by_name(&self, name: &str) -> Option<&Config> {
        self.config_by_name.get(name).and_then(|id| self.config(id))
    }

    /// A secret by id, name, or unique id prefix.
    pub fn find_secret(&self, reference: &str) -> Result<&Secret, LookupError> {
        if let Some(s) = self.secret(reference) {
            return Ok(s);
        }
        if let Some(s) = self.secret_by_name(reference) {
            return Ok(s);
        }
        unique_prefix(Kind::Secret, reference, self.secrets(), |s| &s.id)
    }

    /// A config by id, name, or unique id prefix.
    pub fn find_config(&self, reference: &str) -> Result<&Config, LookupError> {
        if let Some(c) = self.config(reference) {
            return Ok(c);
        }
        if let Some(c) = self.config_by_name(reference) {
            return Ok(c);
        }
        unique_prefix(Kind::Config, reference, self.configs(), |c| &c.id)
    }

    /// Names of the services whose spec uses the secret or config `id`, sorted.
    pub fn services_using(&self, kind: Kind, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .values()
            .filter(|s| {
                let c = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.task.as_ref())
                    .and_then(|t| t.container.as_ref());
                c.is_some_and(|c| match kind {
                    Kind::Secret => c.secrets.iter().any(|r| r.secret_id == id),
                    Kind::Config => c.configs.iter().any(|r| r.config_id == id),
                    _ => false,
                })
            })
            .map(|s| service_name(s).to_string())
            .collect();
        names.sort();
        names
    }

    /// A service by id, name, or unique id prefix (exact id, then name, then prefix).
    pub fn find_service(&self, reference: &str) -> Result<&Service, LookupError> {
        if let Some(s) = self.service(reference) {
            return Ok(s);
        }
        if let Some(s) = self.service_by_name(reference) {
            return Ok(s);
        }
        unique_prefix(Kind::Service, reference, self.services(), |s| &s.id)
    }

    /// A node by id, hostname, or unique id prefix.
    pub fn find_node(&self, reference: &str) -> Result<&Node, LookupError> {
        if let Some(n) = self.node(reference) {
            return Ok(n);
        }
        let by_host: Vec<&Node> = self
            .nodes()
            .filter(|n| {
                n.description
                    .as_ref()
                    .is_some_and(|d| d.hostname == reference)
            })
            .collect();
        match by_host.len() {
            1 => return Ok(by_host[0]),
            0 => {}
            count => {
                return Err(LookupError::Ambiguous {
                    kind: Kind::Node,
                    reference: reference.to_string(),
                    count,
                });
            }
        }
        unique_prefix(Kind::Node, reference, self.nodes(), |n| &n.id)
    }

    /// A task by id or unique id prefix.
    pub fn find_task(&self, reference: &str) -> Result<&Task, LookupError> {
        if let Some(t) = self.task(reference) {
            return Ok(t);
        }
        unique_prefix(Kind::Task, reference, self.tasks(), |t| &t.id)
    }

    #[cfg(test)]
    /// The current value of the object with `kind` and `id`, shared.
    pub fn get(&self, kind: Kind, id: &str) -> Option<Stored> {
        match kind {
            Kind::Node => self.nodes.get(id).cloned().map(Stored::Node),
            Kind::Service => self.services.get(id).cloned().map(Stored::Service),
            Kind::Task => self.tasks.get(id).cloned().map(Stored::Task),
            Kind::Cluster => self.clusters.get(id).cloned().map(Stored::Cluster),
            Kind::Secret => self.secrets.get(id).cloned().map(Stored::Secret),
            Kind::Config => self.configs.get(id).cloned().map(Stored::Config),
        }
    }

    #[cfg(test)]
    /// Current meta.version of an object, if it exists.
    pub fn version_of(&self, kind: Kind, id: &str) -> Option<u64> {
        self.meta_of(kind, id).map(|m| m.version)
    }

    /// Current meta of an object, if it exists (the default for an object
    /// stored without one), without copying the object.
    pub fn meta_of(&self, kind: Kind, id: &str) -> Option<Meta> {
        let meta = match kind {
            Kind::Node => self.nodes.get(id).map(|o| o.meta.as_ref()),
            Kind::Service => self.services.get(id).map(|o| o.meta.as_ref()),
            Kind::Task => self.tasks.get(id).map(|o| o.meta.as_ref()),
            Kind::Cluster => self.clusters.get(id).map(|o| o.meta.as_ref()),
            Kind::Secret => self.secrets.get(id).map(|o| o.meta.as_ref()),
            Kind::Config => self.configs.get(id).map(|o| o.meta.as_ref()),
        }?;
        Some(meta.cloned().unwrap_or_default())
    }

    /// Insert or replace an object, keeping the indexes in step. Returns the old value.
    pub(crate) fn put(&mut self, object: impl Into<Stored>) -> Option<Stored> {
        match object.into() {
            Stored::Task(t) => self.put_task(t).map(Stored::Task),
            Stored::Node(n) => {
                let old = self.remove(Kind::Node, &n.id);
                self.nodes.insert(n.id.clone(), n);
                old
            }
            Stored::Service(s) => {
                let old = self.remove(Kind::Service, &s.id);
                self.service_by_name
                    .insert(service_name(&s).to_string(), s.id.clone());
                self.services.insert(s.id.clone(), s);
                old
            }
            Stored::Cluster(c) => {
                let old = self.remove(Kind::Cluster, &c.id);
                self.clusters.insert(c.id.clone(), c);
                old
            }
            Stored::Secret(s) => {
                let old = self.remove(Kind::Secret, &s.id);
                let name = s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                self.secret_by_name.insert(name, s.id.clone());
                self.secrets.insert(s.id.clone(), s);
                old
            }
            Stored::Config(c) => {
                let old = self.remove(Kind::Config, &c.id);
                let name = c.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
                self.config_by_name.insert(name, c.id.clone());
                self.configs.insert(c.id.clone(), c);
                old
            }
        }
    }

    /// Insert or replace a task. Most updates (status reports) keep the task's
    /// service and node, and leave their index entries as they are.
    fn put_task(&mut self, task: Arc<Task>) -> Option<Arc<Task>> {
        let old = self.tasks.get(&task.id);
        let new_service = old.is_none_or(|o| o.service_id != task.service_id);
        let new_node = old.is_none_or(|o| o.node_id != task.node_id);
        let stale = old
            .filter(|_| new_service || new_node)
            .map(|o| (o.service_id.clone(), o.node_id.clone()));
        if let Some((service_id, node_id)) = stale {
            if new_service {
                detach(&mut self.tasks_by_service, &service_id, &task.id);
            }
            if new_node && !node_id.is_empty() {
                detach(&mut self.tasks_by_node, &node_id, &task.id);
            }
        }
        if new_service {
            attach(&mut self.tasks_by_service, &task.service_id, &task.id);
        }
        if new_node && !task.node_id.is_empty() {
            attach(&mut self.tasks_by_node, &task.node_id, &task.id);
        }
        match self.tasks.get_mut(&task.id) {
            Some(slot) => Some(std::mem::replace(slot, task)),
            None => self.tasks.insert(task.id.clone(), task),
        }
    }

    /// Remove an object, keeping the indexes in step. Returns the old value.
    pub(crate) fn remove(&mut self, kind: Kind, id: &str) -> Option<Stored> {
        match kind {
            Kind::Node => self.nodes.remove(id).map(Stored::Node),
            Kind::Service => {
                let s = self.services.remove(id)?;
                let name = service_name(&s);
                if self.service_by_name.get(name).is_some_and(|i| i == id) {
                    self.service_by_name.remove(name);
                }
                Some(Stored::Service(s))
            }
            Kind::Task => {
                let t = self.tasks.remove(id)?;
                detach(&mut self.tasks_by_service, &t.service_id, id);
                if !t.node_id.is_empty() {
                    detach(&mut self.tasks_by_node, &t.node_id, id);
                }
                Some(Stored::Task(t))
            }
            Kind::Cluster => self.clusters.remove(id).map(Stored::Cluster),
            Kind::Secret => {
                let s = self.secrets.remove(id)?;
                let name = s.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                if self.secret_by_name.get(name).is_some_and(|i| i == id) {
                    self.secret_by_name.remove(name);
                }
                Some(Stored::Secret(s))
            }
            Kind::Config => {
                let c = self.configs.remove(id)?;
                let name = c.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
                if self.config_by_name.get(name).is_some_and(|i| i == id) {
                    self.config_by_name.remove(name);
                }
                Some(Stored::Config(c))
            }
        }
    }

    #[cfg(test)]
    /// Every object, shared.
    pub fn objects(&self) -> impl Iterator<Item = Stored> + '_ {
        let nodes = self.nodes.values().cloned().map(Stored::Node);
        let services = self.services.values().cloned().map(Stored::Service);
        let tasks = self.tasks.values().cloned().map(Stored::Task);
        let clusters = self.clusters.values().cloned().map(Stored::Cluster);
        let secrets = self.secrets.values().cloned().map(Stored::Secret);
        let configs = self.configs.values().cloned().map(Stored::Config);
        nodes
            .chain(services)
            .chain(tasks)
            .chain(clusters)
            .chain(secrets)
            .chain(configs)
    }
}

/// The name a service is known by.
pub fn service_name(service: &Service) -> &str {
    service.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

/// Add `id` under `key`; the key is copied only the first time it is seen
/// (a service's ten thousand creations share one entry).
fn attach(index: &mut FastMap<String, FastSet<String>>, key: &str, id: &str) {
    match index.get_mut(key) {
        Some(set) => {
            set.insert(id.to_string());
        }
        None => {
            index.insert(key.to_string(), FastSet::from_iter([id.to_string()]));
        }
    }
}

fn detach(index: &mut FastMap<String, FastSet<String>>, key: &str, id: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

fn unique_prefix<'a, T: 'a>(
    kind: Kind,
    reference: &str,
    items: impl Iterator<Item = &'a T>,
    id: impl Fn(&T) -> &String,
) -> Result<&'a T, LookupError> {
    let not_found = || LookupError::NotFound {
        kind,
        reference: reference.to_string(),
    };
    if reference.is_empty() {
        return Err(not_found());
    }
    let matches: Vec<&T> = items.filter(|t| id(t).starts_with(reference)).collect();
    match matches.len() {
        0 => Err(not_found()),
        1 => Ok(matches[0]),
        count => Err(LookupError::Ambiguous {
            kind,
            reference: reference.to_string(),
            count,
        }),
    }
}
