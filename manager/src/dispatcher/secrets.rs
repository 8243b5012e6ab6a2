//! Which secrets and configs a node must hold, and sending their values.
//!
//! A node is sent the secrets and configs its tasks use, and only those: a
//! task uses them from its assignment until it reaches a terminal state or
//! is no longer wanted running ([`uses_files`]). [`Delivered`] keeps, per
//! node, how many of its tasks use each one and what the agent holds, so each
//! assignments message carries the values that became needed and the ids
//! that no longer are. Values are opened with the cluster data key only here,
//! just before they go out on the node's (mutually authenticated) session.

use std::collections::{BTreeSet, HashMap};

use shoal_proto::state::{from_i32, is_terminal};
use shoal_proto::{AssignmentsMessage, Payload, Task, TaskState};

use crate::seal::DataKey;
use crate::store::MemState;

/// Secret and config ids.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Needs {
    pub secrets: BTreeSet<String>,
    pub configs: BTreeSet<String>,
}

impl Needs {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.configs.is_empty()
    }
}

/// True while `task` may still create or start its container: it is not in
/// a terminal state, and wanted at most running.
pub(super) fn uses_files(task: &Task) -> bool {
    let observed = task.status.as_ref().map_or(TaskState::New, |s| s.state());
    !is_terminal(observed) && from_i32(task.desired_state) <= TaskState::Running
}

/// What one task needs now (nothing once it is done with its files).
pub(super) fn needs_of(task: &Task) -> Needs {
    let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
        return Needs::default();
    };
    if (c.secrets.is_empty() && c.configs.is_empty()) || !uses_files(task) {
        return Needs::default();
    }
    Needs {
        secrets: c.secrets.iter().map(|r| r.secret_id.clone()).collect(),
        configs: c.configs.iter().map(|r| r.config_id.clone()).collect(),
    }
}

/// The secrets and configs a node needs, given its tasks: the definition
/// [`Delivered`] keeps up incrementally (the tests hold it to it).
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn needed<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Needs {
    let mut out = Needs::default();
    for task in tasks {
        let n = needs_of(task);
        out.secrets.extend(n.secrets);
        out.configs.extend(n.configs);
    }
    out
}

/// Changes to send: values to add, ids to drop.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub add: Needs,
    pub remove: Needs,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// What one node's agent was sent, and what its tasks use.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    /// Tasks that use something, with what.
    by_task: HashMap<String, Needs>,
    /// How many tasks use each secret / config.
    secret_users: HashMap<String, usize>,
    config_users: HashMap<String, usize>,
    /// What the agent holds.
    sent: Needs,
    /// Ids whose count changed since the last [`Delivered::delta`].
    touched: Needs,
}

impl Delivered {
    /// Start over (a COMPLETE message): the agent holds nothing but what the
    /// next delta sends.
    pub fn reset<'a>(&mut self, tasks: impl IntoIterator<Item = &'a Task>) {
        *self = Delivered::default();
        for task in tasks {
            self.track(task);
        }
    }

    /// `task` changed: count what it uses now.
    pub fn track(&mut self, task: &Task) {
        let now = needs_of(task);
        if now.is_empty() {
            self.forget(&task.id);
            return;
        }
        match self.by_task.get(&task.id) {
            Some(before) if *before == now => {}
            _ => {
                self.forget(&task.id);
                count(
                    &mut self.secret_users,
                    &mut self.touched.secrets,
                    &now.secrets,
                    true,
                );
                count(
                    &mut self.config_users,
                    &mut self.touched.configs,
                    &now.configs,
                    true,
                );
                self.by_task.insert(task.id.clone(), now);
            }
        }
    }

    /// Task `id` is gone from the node.
    pub fn forget(&mut self, id: &str) {
        if let Some(before) = self.by_task.remove(id) {
            count(
                &mut self.secret_users,
                &mut self.touched.secrets,
                &before.secrets,
                false,
            );
            count(
                &mut self.config_users,
                &mut self.touched.configs,
                &before.configs,
                false,
            );
        }
    }

    /// What the agent holds (as far as the messages so far go).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn held(&self) -> &Needs {
        &self.sent
    }

    /// True when the next [`Delivered::delta`] may have something to send.
    pub fn is_dirty(&self) -> bool {
        !self.touched.is_empty()
    }

    /// What the agent must be sent to hold exactly what its tasks use; from
    /// now on it is considered to hold it.
    pub fn delta(&mut self) -> Delta {
        let touched = std::mem::take(&mut self.touched);
        let mut delta = Delta::default();
        settle(
            &self.secret_users,
            &mut self.sent.secrets,
            touched.secrets,
            &mut delta.add.secrets,
            &mut delta.remove.secrets,
        );
        settle(
            &self.config_users,
            &mut self.sent.configs,
            touched.configs,
            &mut delta.add.configs,
            &mut delta.remove.configs,
        );
        delta
    }
}

fn count(
    users: &mut HashMap<String, usize>,
    touched: &mut BTreeSet<String>,
    ids: &BTreeSet<String>,
    up: bool,
) {
    for id in ids {
        let n = users.entry(id.clone()).or_default();
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(id);
            }
        }
        touched.insert(id.clone());
    }
}

fn settle(
    users: &HashMap<String, usize>,
    sent: &mut BTreeSet<String>,
    touched: BTreeSet<String>,
    add: &mut BTreeSet<String>,
    remove: &mut BTreeSet<String>,
) {
    for id in touched {
        let used = users.contains_key(&id);
        if used && sent.insert(id.clone()) {
            add.insert(id);
        } else if !used && sent.remove(&id) {
            remove.insert(id);
        }
    }
}

/// Put `delta` into `message`: the values to add, opened with `key`, and the
/// ids to drop. A secret that is gone or does not open is left out (and
/// logged by id): the agent then fails the task that needs it, saying so.
pub(super) fn attach(
    message: &mut AssignmentsMessage,
    delta: Delta,
    state: &MemState,
    key: Option<&DataKey>,
    node_id: &str,
) {
    for id in delta.add.secrets {
        let Some(secret) = state.secret(&id) else {
            tracing::warn!(node.id = %node_id, secret.id = %id, "a task uses a secret that no longer exists");
            continue;
        };
        let name = secret
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let opened = match key {
            Some(key) => key.open(&secret.data_sealed).map_err(|e| e.to_string()),
            None => Err("this manager holds no cluster data key".to_string()),
        };
        match opened {
            Ok(data) => message.secrets.push(Payload { id, name, data }),
            Err(e) => {
                tracing::error!(node.id = %node_id, secret.id = %id, secret.name = %name, error = %e,
                    "cannot open a secret to send it")
            }
        }
    }
    for id in delta.add.configs {
        match state.config(&id) {
            Some(config) => {
                let spec = config.spec.clone().unwrap_or_default();
                message.configs.push(Payload {
                    id,
                    name: spec.name,
                    data: spec.data,
                });
            }
            None => {
                tracing::warn!(node.id = %node_id, config.id = %id, "a task uses a config that no longer exists")
            }
        }
    }
    message.removed_secrets = delta.remove.secrets.into_iter().collect();
    message.removed_configs = delta.remove.configs.into_iter().collect();
}

/// Put into `message` what the agent must be sent of its tasks' secrets and
/// configs since the last message (everything, after [`Delivered::reset`]).
pub(super) fn fill(
    message: &mut AssignmentsMessage,
    delivered: &mut Delivered,
    store: &crate::store::Store,
    key: Option<&DataKey>,
    node_id: &str,
) {
    let delta = delivered.delta();
    if !delta.is_empty() {
        store.read(|state| attach(message, delta, state, key, node_id));
    }
}

#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
