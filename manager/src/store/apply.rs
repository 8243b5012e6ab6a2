//! The replicated state machine: applying one committed [`Proposal`] to the
//! in-memory tables. Deterministic (it reads only the proposal, the state and the
//! entry index), so every manager reaches the same state and the same verdicts.
//!
//! Each action checks optimistic concurrency (`meta.version`) and the store-wide
//! invariants (unique service, secret and config names, unique ingress ports,
//! services refer only to existing secrets and configs, which cannot be removed
//! while a service uses them). An atomic proposal
//! applies all of its actions or none; a non-atomic one applies those that pass
//! and reports the rest.

use std::sync::Arc;

use shoal_proto::state::{may_advance, name};
use shoal_proto::{
    ActionKind, Proposal, PublishMode, Service, StoreAction, Task, TaskState, TaskStatusUpdate,
};

use super::object::{Kind, Object, ObjectExt, Stored};
use super::tables::{MemState, service_name};
use super::{Change, ChangeKind, StoreError};

/// What applying a proposal did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Applied changes, in action order.
    pub changes: Vec<Change>,
    /// Refused actions: (position in the proposal, why). For an atomic proposal
    /// any refusal means nothing was applied.
    pub refused: Vec<(usize, StoreError)>,
}

/// Apply `proposal`, committed at Raft `index`, to `state`.
pub fn apply(state: &mut MemState, proposal: Proposal, index: u64) -> Outcome {
    // Sized up front: grown by doubling, a batch's list of changes was
    // copied about twice over into freshly faulted pages.
    let mut outcome = Outcome {
        changes: Vec::with_capacity(proposal.actions.len()),
        refused: Vec::new(),
    };
    let mut undo: Vec<(Kind, String, Option<Stored>)> = if proposal.atomic {
        Vec::with_capacity(proposal.actions.len())
    } else {
        Vec::new()
    };
    for (pos, action) in proposal.actions.into_iter().enumerate() {
        match apply_action(state, action, index, proposal.timestamp) {
            Ok(change) => {
                if proposal.atomic {
                    undo.push((
                        change.object.kind(),
                        change.object.id().to_string(),
                        change.old.clone(),
                    ));
                }
                outcome.changes.push(change);
            }
            Err(err) => {
                outcome.refused.push((pos, err));
                if proposal.atomic {
                    for (kind, id, old) in undo.into_iter().rev() {
                        match old {
                            Some(old) => {
                                state.put(old);
                            }
                            None => {
                                state.remove(kind, &id);
                            }
                        }
                    }
                    outcome.changes.clear();
                    state.applied_index = index;
                    return outcome;
                }
            }
        }
    }
    state.applied_index = index;
    outcome
}

fn apply_action(
    state: &mut MemState,
    action: StoreAction,
    index: u64,
    timestamp: i64,
) -> Result<Change, StoreError> {
    let kind = ActionKind::try_from(action.kind).unwrap_or(ActionKind::Create);
    if kind == ActionKind::Report {
        return apply_report(state, action.report, index, timestamp);
    }
    let mut object = action
        .object
        .and_then(|o| o.object)
        .ok_or(StoreError::Invalid("store action without an object".into()))?;
    let (k, id) = (object.kind(), object.id().to_string());
    if id.is_empty() {
        return Err(StoreError::Invalid(format!("{k} without an id")));
    }
    let current_meta = state.meta_of(k, &id);
    let current = current_meta.as_ref().map(|m| m.version);
    match kind {
        ActionKind::Create => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists { kind: k, what: id });
            }
            check_invariants(state, &object)?;
            share_spec(state, &mut object);
            let meta = object.meta_mut();
            meta.version = index;
            meta.created_at = timestamp;
            meta.updated_at = timestamp;
            let object = Stored::from(object);
            state.put(object.clone());
            Ok(Change {
                kind: ChangeKind::Created,
                object,
                old: None,
            })
        }
        ActionKind::Update => {
            let current = current.ok_or(StoreError::NotFound {
                kind: k,
                id: id.clone(),
            })?;
            let given = object.version();
            if given != current {
                return Err(StoreError::Conflict {
                    kind: k,
                    id,
                    expected: given,
                    actual: current,
                });
            }
            check_invariants(state, &object)?;
            share_spec(state, &mut object);
            let created_at = current_meta.map_or(timestamp, |m| m.created_at);
            let meta = object.meta_mut();
            meta.version = index;
            meta.created_at = created_at;
            meta.updated_at = timestamp;
            let object = Stored::from(object);
            let old = state.put(object.clone());
            Ok(Change {
                kind: ChangeKind::Updated,
                object,
                old,
            })
        }
        ActionKind::Report => unreachable!("handled above"),
        ActionKind::Delete => {
            let current = current.ok_or(StoreError::NotFound {
                kind: k,
                id: id.clone(),
            })?;
            let given = object.version();
            if given != 0 && given != current {
                return Err(StoreError::Conflict {
                    kind: k,
                    id,
                    expected: given,
                    actual: current,
                });
            }
            check_removable(state, k, &id)?;
            let old = state.remove(k, &id).expect("checked above");
            Ok(Change {
                kind: ChangeKind::Deleted,
                object: old,
                old: None,
            })
        }
    }
}

/// An agent's report: the task as it is now, with the reported status. No
/// version check (the agent owns the observed status, and the report was
/// screened against the node's own tasks); the state only moves forward.
fn apply_report(
    state: &mut MemState,
    report: Option<TaskStatusUpdate>,
    index: u64,
    timestamp: i64,
) -> Result<Change, StoreError> {
    let invalid = |what: &str| StoreError::Invalid(format!("status report without {what}"));
    let report = report.ok_or_else(|| invalid("a task and a status"))?;
    let status = report.status.ok_or_else(|| invalid("a status"))?;
    let id = report.task_id;
    let current = state.task(&id).ok_or_else(|| StoreError::NotFound {
        kind: Kind::Task,
        id: id.clone(),
    })?;
    let from = current
        .status
        .as_ref()
        .map_or(TaskState::New, |s| s.state());
    if !may_advance(from, status.state()) {
        return Err(StoreError::StaleReport {
            id,
            current: name(from),
            reported: name(status.state()),
        });
    }
    let mut task = Task::clone(current);
    task.status = Some(status);
    let meta = task.meta.get_or_insert_with(Default::default);
    meta.version = index;
    meta.updated_at = timestamp;
    let object = Stored::Task(Arc::new(task));
    let old = state.put(object.clone());
    Ok(Change {
        kind: ChangeKind::Reported,
        object,
        old,
    })
}

/// A task whose spec equals its service's current one holds the service's
/// copy. Tasks the orchestrator makes already do; a task decoded from the log
/// (a follower, a restart) would otherwise keep a copy of its own.
pub(crate) fn share_spec(state: &MemState, object: &mut Object) {
    let Object::Task(task) = object else {
        return;
    };
    let Some(spec) = task.spec.as_mut() else {
        return;
    };
    let service = state.service(&task.service_id);
    if let Some(shared) = service.and_then(|s| s.spec.as_ref()?.task.as_ref())
        && shared == spec
    {
        *spec = shared.clone();
    }
}

/// Store-wide invariants that concurrent writers could otherwise break.
fn check_invariants(state: &MemState, object: &Object) -> Result<(), StoreError> {
    let service = match object {
        Object::Service(service) => service,
        Object::Secret(secret) => {
            let name = secret.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            return unique_name(
                Kind::Secret,
                name,
                state.secret_by_name(name).map(|o| &o.id),
                &secret.id,
            );
        }
        Object::Config(config) => {
            let name = config.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            return unique_name(
                Kind::Config,
                name,
                state.config_by_name(name).map(|o| &o.id),
                &config.id,
            );
        }
        _ => return Ok(()),
    };
    if let Some(c) = service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
    {
        for r in &c.secrets {
            if state.secret(&r.secret_id).is_none() {
                return Err(StoreError::NotFound {
                    kind: Kind::Secret,
                    id: format!("{} ({})", r.secret_name, r.secret_id),
                });
            }
        }
        for r in &c.configs {
            if state.config(&r.config_id).is_none() {
                return Err(StoreError::NotFound {
                    kind: Kind::Config,
                    id: format!("{} ({})", r.config_name, r.config_id),
                });
            }
        }
    }
    let name = service_name(service);
    if let Some(other) = state.service_by_name(name)
        && other.id != service.id
    {
        return Err(StoreError::AlreadyExists {
            kind: Kind::Service,
            what: format!("name {name}"),
        });
    }
    for port in ingress_ports(service) {
        if let Some(other) = state
            .services()
            .find(|s| s.id != service.id && ingress_ports(s).any(|p| p == port))
        {
            return Err(StoreError::PortInUse {
                port: port.1,
                protocol: if port.0 == 1 { "udp" } else { "tcp" },
                service: service_name(other).to_string(),
            });
        }
    }
    Ok(())
}

fn unique_name(
    kind: Kind,
    name: &str,
    holder: Option<&String>,
    id: &str,
) -> Result<(), StoreError> {
    match holder {
        Some(other) if other != id => Err(StoreError::AlreadyExists {
            kind,
            what: format!("name {name}"),
        }),
        _ => Ok(()),
    }
}

/// A secret or config cannot go while a service uses it.
fn check_removable(state: &MemState, kind: Kind, id: &str) -> Result<(), StoreError> {
    let name = match kind {
        Kind::Secret => state
            .secret(id)
            .and_then(|s| s.spec.as_ref())
            .map(|s| &s.name),
        Kind::Config => state
            .config(id)
            .and_then(|c| c.spec.as_ref())
            .map(|s| &s.name),
        _ => return Ok(()),
    };
    let services = state.services_using(kind, id);
    if services.is_empty() {
        return Ok(());
    }
    Err(StoreError::InUse {
        kind,
        name: name.cloned().unwrap_or_else(|| id.to_string()),
        services,
    })
}

/// (protocol, published port) of every ingress-published port of a service.
pub fn ingress_ports(service: &Service) -> impl Iterator<Item = (i32, u32)> + '_ {
    service
        .spec
        .iter()
        .flat_map(|s| s.endpoint.iter())
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.publish_mode == PublishMode::Ingress as i32 && p.published_port != 0)
        .map(|p| (p.protocol, p.published_port))
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
