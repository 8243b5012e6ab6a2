//! Secrets and configs in the Control API: create, read, list, remove, and
//! the resolution of a service spec's references to them.
//!
//! A secret's value is sealed with the cluster data key before it is
//! proposed, so neither the Raft log, the snapshots nor the sled files hold
//! it in the clear, and no answer carries it back ([`redact_secret`]). Only
//! the dispatcher opens it, for the nodes whose tasks use it. Configs are not
//! secret: stored and shown as they are. Both are immutable once created.

use shoal_proto::{
    Config, ConfigSpec, Secret, SecretSpec, ServiceSpec, ids,
    validate::{self, SpecError},
};
use tonic::Status;

use crate::grpc_status::{lookup_status, spec_status, store_status};
use crate::seal::DataKey;
use crate::store::{Action, Kind, MemState, Object, Store};

/// A secret as the APIs show it: no value, not even sealed.
pub(crate) fn redact_secret(mut secret: Secret) -> Secret {
    secret.data_sealed.clear();
    if let Some(spec) = secret.spec.as_mut() {
        spec.data.clear();
    }
    secret
}

/// Validate, seal and store a new secret; returns it redacted.
pub async fn create_secret(
    store: &Store,
    key: &DataKey,
    spec: SecretSpec,
) -> Result<Secret, Status> {
    validate::secret_spec(&spec).map_err(spec_status)?;
    // A friendly early refusal; the store enforces the same rule on commit.
    if store.read(|s| s.secret_by_name(&spec.name).is_some()) {
        return Err(Status::already_exists(format!(
            "name: a secret named {} already exists",
            spec.name
        )));
    }
    let SecretSpec { name, labels, data } = spec;
    let secret = Secret {
        id: ids::new_id(),
        data_sealed: key.seal(&data),
        spec: Some(SecretSpec {
            name,
            labels,
            data: Vec::new(),
        }),
        ..Default::default()
    };
    drop(data);
    let id = secret.id.clone();
    store
        .propose(vec![Action::Create(Object::Secret(secret.into()))])
        .await
        .map_err(store_status)?;
    let created = store
        .read(|s| s.secret(&id).cloned())
        .ok_or_else(|| Status::internal("secret vanished right after its creation"))?;
    tracing::info!(secret.id = %id, secret.name = %name_of_secret(&created), "secret created");
    Ok(redact_secret(created))
}

/// A secret by id, prefix or name, redacted.
pub fn get_secret(state: &MemState, reference: &str) -> Result<Secret, Status> {
    state
        .find_secret(reference)
        .map(|s| redact_secret(s.clone()))
        .map_err(lookup_status)
}

/// Every secret, redacted, by name.
pub fn list_secrets(state: &MemState) -> Vec<Secret> {
    let mut out: Vec<Secret> = state.secrets().cloned().map(redact_secret).collect();
    out.sort_by(|a, b| name_of_secret(a).cmp(name_of_secret(b)));
    out
}

/// Remove a secret no service uses.
pub async fn remove_secret(store: &Store, reference: &str) -> Result<(), Status> {
    let secret = store
        .read(|s| s.find_secret(reference).cloned())
        .map_err(lookup_status)?;
    let mut gone = redact_secret(secret);
    gone.meta.get_or_insert_with(Default::default).version = 0;
    let (id, name) = (gone.id.clone(), name_of_secret(&gone).to_string());
    store
        .propose(vec![Action::Delete(Object::Secret(gone.into()))])
        .await
        .map_err(store_status)?;
    tracing::info!(secret.id = %id, secret.name = %name, "secret removed");
    Ok(())
}

/// Validate and store a new config.
pub async fn create_config(store: &Store, spec: ConfigSpec) -> Result<Config, Status> {
    validate::config_spec(&spec).map_err(spec_status)?;
    if store.read(|s| s.config_by_name(&spec.name).is_some()) {
        return Err(Status::already_exists(format!(
            "name: a config named {} already exists",
            spec.name
        )));
    }
    let config = Config {
        id: ids::new_id(),
        spec: Some(spec),
        ..Default::default()
    };
    let id = config.id.clone();
    store
        .propose(vec![Action::Create(Object::Config(config.into()))])
        .await
        .map_err(store_status)?;
    store
        .read(|s| s.config(&id).cloned())
        .ok_or_else(|| Status::internal("config vanished right after its creation"))
}

/// A config by id, prefix or name.
pub fn get_config(state: &MemState, reference: &str) -> Result<Config, Status> {
    state.find_config(reference).cloned().map_err(lookup_status)
}

/// Every config, by name.
pub fn list_configs(state: &MemState) -> Vec<Config> {
    let mut out: Vec<Config> = state.configs().cloned().collect();
    out.sort_by(|a, b| name_of_config(a).cmp(name_of_config(b)));
    out
}

/// Remove a config no service uses.
pub async fn remove_config(store: &Store, reference: &str) -> Result<(), Status> {
    let config = store
        .read(|s| s.find_config(reference).cloned())
        .map_err(lookup_status)?;
    let mut gone = config;
    gone.meta.get_or_insert_with(Default::default).version = 0;
    store
        .propose(vec![Action::Delete(Object::Config(gone.into()))])
        .await
        .map_err(store_status)?;
    Ok(())
}

/// Point a service spec's secret and config references at the stored
/// objects: each reference is looked up by name (by id when it has no name)
/// and gets both. An unknown one is refused, naming the reference.
pub fn resolve_references(state: &MemState, spec: &mut ServiceSpec) -> Result<(), Status> {
    let Some(c) = spec.task.as_mut().and_then(|t| t.container.as_mut()) else {
        return Ok(());
    };
    for (i, r) in c.secrets.iter_mut().enumerate() {
        let found = if r.secret_name.is_empty() {
            state.secret(&r.secret_id)
        } else {
            state.secret_by_name(&r.secret_name)
        };
        let Some(secret) = found else {
            return Err(not_found(Kind::Secret, i, &r.secret_name, &r.secret_id));
        };
        r.secret_id = secret.id.clone();
        r.secret_name = name_of_secret(secret).to_string();
    }
    for (i, r) in c.configs.iter_mut().enumerate() {
        let found = if r.config_name.is_empty() {
            state.config(&r.config_id)
        } else {
            state.config_by_name(&r.config_name)
        };
        let Some(config) = found else {
            return Err(not_found(Kind::Config, i, &r.config_name, &r.config_id));
        };
        r.config_id = config.id.clone();
        r.config_name = name_of_config(config).to_string();
    }
    Ok(())
}

fn not_found(kind: Kind, i: usize, name: &str, id: &str) -> Status {
    let what = if name.is_empty() {
        format!("no {kind} with id {id}")
    } else {
        format!("no {kind} named {name:?}")
    };
    let err = SpecError::new(
        format!("{kind}[{i}].source"),
        format!("{what} (create it with `shoal {kind} create`)"),
    );
    Status::not_found(err.to_string())
}

fn name_of_secret(s: &Secret) -> &str {
    s.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

fn name_of_config(c: &Config) -> &str {
    c.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("")
}

#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
