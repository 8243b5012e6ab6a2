//! Service writes and the service/task reads of the Control API.

use shoal_proto::{
    ListTasksRequest, Service, ServiceMode, ServiceSpec, ServiceSummary, Task, TaskState, ids,
    validate,
};
use tonic::Status;

use super::errors::{lookup_status, spec_status, store_status};
use crate::store::{Action, MemState, Object, Store, StoreError};

/// Validate and store a new service. The orchestrator takes it from there.
pub async fn create(store: &Store, mut spec: ServiceSpec) -> Result<Service, Status> {
    validate::service_spec(&spec).map_err(spec_status)?;
    store.read(|s| super::secrets::resolve_references(s, &mut spec))?;
    if spec.mode() == ServiceMode::Global {
        spec.replicas = 0;
    }
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

/// Tasks matching the request's filters, ordered by service, slot, then newest first.
pub fn list_tasks(state: &MemState, req: &ListTasksRequest) -> Result<Vec<Task>, Status> {
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
    let candidates: Box<dyn Iterator<Item = &Task>> = if !services.is_empty() {
        Box::new(services.iter().flat_map(|id| state.tasks_of_service(id)))
    } else if !nodes.is_empty() {
        Box::new(nodes.iter().flat_map(|id| state.tasks_on_node(id)))
    } else {
        Box::new(state.tasks())
    };
    let mut tasks: Vec<Task> = candidates
        .filter(|t| nodes.is_empty() || nodes.contains(&t.node_id))
        .filter(|t| req.desired_states.is_empty() || req.desired_states.contains(&t.desired_state))
        .cloned()
        .collect();
    tasks.sort_by(|a, b| {
        (&a.service_name, a.slot, &a.node_id)
            .cmp(&(&b.service_name, b.slot, &b.node_id))
            .then_with(|| created(b).cmp(&created(a)))
    });
    Ok(tasks)
}

fn created(t: &Task) -> i64 {
    t.meta.as_ref().map(|m| m.created_at).unwrap_or_default()
}
