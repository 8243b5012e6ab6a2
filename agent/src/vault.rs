//! The secrets and configs the manager sent this node, in memory only: never
//! written to the data directory, never logged. The assignments stream brings
//! the values a node's tasks use and says which to forget; [`Vault::files_for`]
//! turns a task's references into the files its container gets.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use shoal_proto::validate::{DEFAULT_FILE_MODE, secret_path};
use shoal_proto::{AssignmentsMessage, AssignmentsType, Payload, Task};

use crate::runtime::{FileKind, TaskFile, TaskFiles};

/// Values by id. Its `Debug` shows counts only.
#[derive(Default)]
pub struct Vault {
    secrets: HashMap<String, Value>,
    configs: HashMap<String, Value>,
}

struct Value {
    name: String,
    data: Arc<[u8]>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("secrets", &self.secrets.len())
            .field("configs", &self.configs.len())
            .finish()
    }
}

impl Vault {
    /// Take the values out of an assignments message (the message keeps none)
    /// and forget those it says to. A COMPLETE message replaces everything.
    pub fn absorb(&mut self, msg: &mut AssignmentsMessage) {
        if msg.r#type() == AssignmentsType::Complete {
            self.secrets.clear();
            self.configs.clear();
        }
        for id in &msg.removed_secrets {
            self.secrets.remove(id);
        }
        for id in &msg.removed_configs {
            self.configs.remove(id);
        }
        let insert = |map: &mut HashMap<String, Value>, payloads: Vec<Payload>| {
            for p in payloads {
                map.insert(
                    p.id,
                    Value {
                        name: p.name,
                        data: p.data.into(),
                    },
                );
            }
        };
        insert(&mut self.secrets, std::mem::take(&mut msg.secrets));
        insert(&mut self.configs, std::mem::take(&mut msg.configs));
    }

    /// Number of (secrets, configs) held.
    pub fn len(&self) -> (usize, usize) {
        (self.secrets.len(), self.configs.len())
    }

    /// The files of `task`'s container; references without a value are listed
    /// in [`TaskFiles::missing`].
    pub fn files_for(&self, task: &Task) -> TaskFiles {
        let mut out = TaskFiles::default();
        let Some(c) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            return out;
        };
        let refs = c
            .secrets
            .iter()
            .map(|r| {
                let id = (&r.secret_id, &r.secret_name);
                (FileKind::Secret, id, secret_path(r), r.uid, r.gid, r.mode)
            })
            .chain(c.configs.iter().map(|r| {
                let id = (&r.config_id, &r.config_name);
                (FileKind::Config, id, r.target.clone(), r.uid, r.gid, r.mode)
            }));
        for (kind, (id, name), path, uid, gid, mode) in refs {
            let map = match kind {
                FileKind::Secret => &self.secrets,
                FileKind::Config => &self.configs,
            };
            match map.get(id) {
                Some(value) => out.files.push(TaskFile {
                    kind,
                    id: id.clone(),
                    name: value.name.clone(),
                    path,
                    uid,
                    gid,
                    mode: mode.unwrap_or(DEFAULT_FILE_MODE),
                    data: value.data.clone(),
                }),
                None => out
                    .missing
                    .push(format!("{} {name} (id {id})", kind.name())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::{ConfigReference, ContainerSpec, SecretReference, TaskSpec};

    use super::*;

    fn payload(id: &str, name: &str, data: &[u8]) -> Payload {
        Payload {
            id: id.into(),
            name: name.into(),
            data: data.to_vec(),
        }
    }

    fn task() -> Task {
        Task {
            id: "t1".into(),
            spec: Some(
                TaskSpec {
                    container: Some(ContainerSpec {
                        secrets: vec![SecretReference {
                            secret_id: "x1".into(),
                            secret_name: "db".into(),
                            target: "password".into(),
                            uid: 1000,
                            gid: 1001,
                            mode: Some(0o400),
                        }],
                        configs: vec![ConfigReference {
                            config_id: "g1".into(),
                            config_name: "app".into(),
                            target: "/etc/app.conf".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_gets_its_files_from_the_values_held() {
        let mut vault = Vault::default();
        let mut msg = AssignmentsMessage {
            r#type: AssignmentsType::Complete as i32,
            secrets: vec![payload("x1", "db", b"hunter2")],
            configs: vec![payload("g1", "app", b"port=80")],
            ..Default::default()
        };
        vault.absorb(&mut msg);
        assert!(msg.secrets.is_empty(), "the message keeps no value");
        assert_eq!(vault.len(), (1, 1));
        assert_eq!(format!("{vault:?}"), "Vault { secrets: 1, configs: 1 }");

        let files = vault.files_for(&task());
        assert!(files.missing.is_empty());
        let secret = &files.files[0];
        assert_eq!(secret.kind, FileKind::Secret);
        assert_eq!(secret.path, "/run/secrets/password");
        assert_eq!((secret.uid, secret.gid, secret.mode), (1000, 1001, 0o400));
        assert_eq!(&*secret.data, b"hunter2");
        assert!(!format!("{files:?}").contains("hunter2"));
        let config = &files.files[1];
        assert_eq!(config.path, "/etc/app.conf");
        assert_eq!(config.mode, 0o444, "Docker's default mode");
        assert_eq!(&*config.data, b"port=80");
    }

    #[test]
    fn removed_values_are_forgotten_and_reported_missing() {
        let mut vault = Vault::default();
        vault.absorb(&mut AssignmentsMessage {
            r#type: AssignmentsType::Complete as i32,
            secrets: vec![payload("x1", "db", b"a"), payload("x2", "other", b"b")],
            ..Default::default()
        });
        vault.absorb(&mut AssignmentsMessage {
            r#type: AssignmentsType::Incremental as i32,
            removed_secrets: vec!["x1".into()],
            ..Default::default()
        });
        assert_eq!(vault.len(), (1, 0));
        let files = vault.files_for(&task());
        assert_eq!(
            files.missing,
            vec![
                "secret db (id x1)".to_string(),
                "config app (id g1)".to_string()
            ]
        );
        let err = files.check().unwrap_err().to_string();
        assert!(
            err.contains("secret db (id x1)") && err.contains("not available"),
            "{err}"
        );
        // A COMPLETE message replaces everything.
        vault.absorb(&mut AssignmentsMessage {
            r#type: AssignmentsType::Complete as i32,
            ..Default::default()
        });
        assert_eq!(vault.len(), (0, 0));
    }
}
