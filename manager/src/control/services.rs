//! Service writes and the service/task reads of the Control API.

use shoal_proto::{
    ListTasksRequest, Service, ServiceMode, ServiceSpec, ServiceSummary, Task, TaskState, ids,
    validate,
};
use tonic::Status;

use crate::grpc_status::{lookup_status, spec_status, store_status};
use crate::store::{Action, MemState, Object, Store, StoreError};

/// Validate and store a new service. The orchestrator takes it from there.
pub async fn create(store: &Store, mut spec: ServiceSpec) -> Result<Service, Status> {
    validate::service_spec(&spec).map_err(spec_status)?;
    store.read(|s| super::secrets::resolve_references(s, &mut spec))?;
    if spec.mode() == ServiceMode::Global {
        spec.replicas = 0;
    }
    store.read(|s| within_cluster_tasks(s, &spec, None))?;
    // A friendly early refusal; the store enforces the same rule on commit.
    if store.read(|s| s.service_by_name(&spec.name).is_some()) {
        return Err(Status::already_exists(format!(
            "name: a service named {} already exists",
            spec.name
        )));
    }
    let service = Service {
        id: ids::new_id(),
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    };
    let id = service.id.clone();
    store
        .propose(vec![Action::Create(Object::Service(service.into()))])
        .await
        .map_err(store_status)?;
    store
        .read(|s| s.service(&id).cloned())
        .ok_or_else(|| Status::internal("service vanished right after its creation"))
}

/// Replace a service's spec. Changing the task template or the ports bumps
/// `spec_version`, which makes the orchestrator roll the tasks over; scaling
/// alone does not.
pub async fn update(
    store: &Store,
    req: shoal_proto::UpdateServiceRequest,
) -> Result<Service, Status> {
    let mut spec = req.spec.unwrap_or_default();
    validate::service_spec(&spec).map_err(spec_status)?;
    store.read(|s| super::secrets::resolve_references(s, &mut spec))?;
    let mut service = store
        .read(|s| s.find_service(&req.service).cloned())
        .map_err(lookup_status)?;
    let current = service.spec.clone().unwrap_or_default();
    let version = service.meta.as_ref().map(|m| m.version).unwrap_or_default();
    if req.version != 0 && req.version != version {
        return Err(store_status(StoreError::Conflict {
            kind: crate::store::Kind::Service,
            id: service.id.clone(),
            expected: req.version,
            actual: version,
        }));
    }
    if spec.name != current.name {
        return Err(Status::invalid_argument(format!(
            "name: renaming a service is not supported (service is named {})",
            current.name
        )));
    }
    if spec.mode != current.mode {
        return Err(Status::invalid_argument(
            "mode: a service's mode cannot be changed; remove and create it again",
        ));
    }
    if spec.mode() == ServiceMode::Global {
        spec.replicas = 0;
    }
    if spec.replicas > current.replicas {
        store.read(|s| within_cluster_tasks(s, &spec, Some(&service.id)))?;
    }
    if spec.task != current.task || spec.endpoint != current.endpoint {
        service.spec_version += 1;
        service.previous_spec = Some(current);
        // A new template starts a new rollout: an old PAUSED verdict no longer applies.
        service.update_status = None;
    }
    service.spec = Some(spec);
    let id = service.id.clone();
    store
        .propose(vec![Action::Update(Object::Service(service.into()))])
        .await
        .map_err(store_status)?;
    store
        .read(|s| s.service(&id).cloned())
        .ok_or_else(|| Status::not_found(format!("service {id} was removed meanwhile")))
}

/// Most tasks the services of a cluster may ask for together: replicas of
/// the replicated services, plus one task per node for each global service.
/// Fewer in a cluster of more than 2,500 nodes: [`cluster_task_limit`].
pub const MAX_CLUSTER_TASKS: u64 = 200_000;

/// What a node costs the manager, in tasks: a node's session (its TLS
/// connection, four streams, its assignment feed) holds about 56 KiB, a task
/// 3–4.7 KiB while it is placed (docs/LIMITS.md has the figures).
pub const NODE_TASK_WEIGHT: u64 = 16;

/// The manager is sized to stay under 1 GiB with its nodes and tasks: 10,000
/// hollow nodes hold 570 MiB, and placing 120,000 tasks on them took it to
/// 1.13–1.19 GiB. Tasks plus [`NODE_TASK_WEIGHT`] per node may not exceed
/// this: 80,000 tasks at 10,000 nodes.
pub const CLUSTER_LOAD: u64 = 240_000;

/// Most tasks the services of a cluster of `nodes` nodes may ask for: what
/// [`CLUSTER_LOAD`] leaves after its nodes, and never over [`MAX_CLUSTER_TASKS`].
pub fn cluster_task_limit(nodes: u64) -> u64 {
    CLUSTER_LOAD
        .saturating_sub(nodes.saturating_mul(NODE_TASK_WEIGHT))
        .min(MAX_CLUSTER_TASKS)
}

/// Refuse `spec` if, with it, the services would ask for more than
/// [`cluster_task_limit`] tasks (`replacing`: the service it updates).
/// Checked before the write, not at commit: two writes racing may pass it
/// together. Nodes that join later are not refused: the limit applies to
/// what the services ask for.
fn within_cluster_tasks(
    state: &MemState,
    spec: &ServiceSpec,
    replacing: Option<&str>,
) -> Result<(), Status> {
    let nodes = state.nodes().count() as u64;
    let asks = |s: &ServiceSpec| match s.mode() {
        ServiceMode::Global => nodes,
        _ => s.replicas,
    };
    let others: u64 = state
        .services()
        .filter(|s| Some(s.id.as_str()) != replacing)
        .filter_map(|s| s.spec.as_ref())
        .map(asks)
        .fold(0, u64::saturating_add);
    let total = others.saturating_add(asks(spec));
    let limit = cluster_task_limit(nodes);
    if total > limit {
        let field = if spec.mode() == ServiceMode::Global {
            "mode"
        } else {
            "replicas"
        };
        let why = if limit < MAX_CLUSTER_TASKS {
            format!(
                "the limit of {limit} for a cluster of {nodes} nodes (each node counts as \
                 {NODE_TASK_WEIGHT} tasks against {CLUSTER_LOAD})"
            )
        } else {
            format!("the limit of {limit}")
        };
        return Err(Status::resource_exhausted(format!(
            "{field}: the cluster's services would ask for {total} tasks, more than {why} \
             (the other services ask for {others}); scale others down first"
        )));
    }
    Ok(())
}

/// Remove a service; the orchestrator shuts its tasks down.
pub async fn remove(store: &Store, reference: &str) -> Result<(), Status> {
    let service = store
        .read(|s| s.find_service(reference).cloned())
        .map_err(lookup_status)?;
    let mut gone = service;
    gone.meta.get_or_insert_with(Default::default).version = 0;
    store
        .propose(vec![Action::Delete(Object::Service(gone.into()))])
        .await
        .map_err(store_status)?;
    Ok(())
}

/// Every service with its running and desired task counts, by name.
pub fn summaries(state: &MemState) -> Vec<ServiceSummary> {
    let mut out: Vec<ServiceSummary> = state
        .services()
        .map(|service| {
            let live = |t: &&Task| t.desired_state() == TaskState::Running;
            let running = state
                .tasks_of_service(&service.id)
                .filter(live)
                .filter(|t| {
                    t.status
                        .as_ref()
                        .is_some_and(|s| s.state() == TaskState::Running)
                        && node_is_up(state, &t.node_id)
                })
                .count() as u64;
            let spec = service.spec.as_ref();
            let desired = match spec.map(|s| s.mode()) {
                Some(ServiceMode::Global) => {
                    state.tasks_of_service(&service.id).filter(live).count() as u64
                }
                _ => spec.map(|s| s.replicas).unwrap_or_default(),
            };
            ServiceSummary {
                service: Some(service.clone()),
                running_tasks: running,
                desired_tasks: desired,
            }
        })
        .collect();
    out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    out
}

fn name_of(s: &ServiceSummary) -> &str {
    s.service
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .map(|s| s.name.as_str())
        .unwrap_or("")
}

fn node_is_up(state: &MemState, node_id: &str) -> bool {
    state
        .node(node_id)
        .and_then(|n| n.status.as_ref())
        .is_some_and(|s| s.state() == shoal_proto::NodeState::Ready)
}

/// Most bytes of tasks one page of `ListTasks` holds: far under a client's
/// message limit, and large enough that a page holds thousands of tasks.
pub const TASK_PAGE_BYTES: usize = 2 << 20;

/// Tasks matching the request's filters, ordered by service, slot, node, then
/// newest first; one page of them if the request asks for pages, with where
/// the next page starts.
pub fn list_tasks(state: &MemState, req: &ListTasksRequest) -> Result<(Vec<Task>, String), Status> {
    let services = req
        .services
        .iter()
        .map(|r| state.find_service(r).map(|s| s.id.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(lookup_status)?;
    let nodes = req
        .nodes
        .iter()
        .map(|r| state.find_node(r).map(|n| n.id.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(lookup_status)?;
    let after = if req.after.is_empty() {
        None
    } else {
        Some(PageKey::decode(&req.after).ok_or_else(|| {
            Status::invalid_argument("after: not a page position that this manager gave out")
        })?)
    };
    let candidates: Box<dyn Iterator<Item = &Task>> = if !services.is_empty() {
        Box::new(services.iter().flat_map(|id| state.tasks_of_service(id)))
    } else if !nodes.is_empty() {
        Box::new(nodes.iter().flat_map(|id| state.tasks_on_node(id)))
    } else {
        Box::new(state.tasks())
    };
    // Sorted by reference: a page clones only the tasks it returns.
    let mut tasks: Vec<&Task> = candidates
        .filter(|t| nodes.is_empty() || nodes.contains(&t.node_id))
        .filter(|t| req.desired_states.is_empty() || req.desired_states.contains(&t.desired_state))
        .filter(|t| after.as_ref().is_none_or(|a| PageKey::of(t) > a.borrowed()))
        .collect();
    tasks.sort_by(|a, b| PageKey::of(a).cmp(&PageKey::of(b)));
    if !req.paged {
        return Ok((tasks.into_iter().cloned().collect(), String::new()));
    }
    let mut page = Vec::new();
    let mut bytes = 0;
    for t in &tasks {
        let size = prost::Message::encoded_len(*t) + 8;
        if !page.is_empty() && bytes + size > TASK_PAGE_BYTES {
            break;
        }
        bytes += size;
        page.push((*t).clone());
    }
    let next = match page.last() {
        Some(last) if page.len() < tasks.len() => PageKey::of(last).encode(),
        _ => String::new(),
    };
    Ok((page, next))
}

/// A task's place in the listing order: service name, slot, node, newest
/// first, then id (so the order is total and a page position is exact).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct PageKey<'a> {
    service: std::borrow::Cow<'a, str>,
    slot: u64,
    node: std::borrow::Cow<'a, str>,
    newest_first: std::cmp::Reverse<i64>,
    id: std::borrow::Cow<'a, str>,
}

impl<'a> PageKey<'a> {
    fn of(t: &'a Task) -> PageKey<'a> {
        PageKey {
            service: t.service_name.as_str().into(),
            slot: t.slot,
            node: t.node_id.as_str().into(),
            newest_first: std::cmp::Reverse(created(t)),
            id: t.id.as_str().into(),
        }
    }

    fn borrowed(&self) -> PageKey<'_> {
        PageKey {
            service: self.service.as_ref().into(),
            slot: self.slot,
            node: self.node.as_ref().into(),
            newest_first: self.newest_first,
            id: self.id.as_ref().into(),
        }
    }

    /// Five fields joined by NUL, which none of them can hold.
    fn encode(&self) -> String {
        format!(
            "{}\0{}\0{}\0{}\0{}",
            self.service, self.slot, self.node, self.newest_first.0, self.id
        )
    }

    fn decode(text: &str) -> Option<PageKey<'static>> {
        let mut parts = text.split('\0');
        let key = PageKey {
            service: parts.next()?.to_string().into(),
            slot: parts.next()?.parse().ok()?,
            node: parts.next()?.to_string().into(),
            newest_first: std::cmp::Reverse(parts.next()?.parse().ok()?),
            id: parts.next()?.to_string().into(),
        };
        parts.next().is_none().then_some(key)
    }
}

fn created(t: &Task) -> i64 {
    t.meta.as_ref().map(|m| m.created_at).unwrap_or_default()
}
