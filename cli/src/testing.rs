//! Fixtures shared by the CLI's unit tests: command lines parsed as `main`
//! parses them, and the services and tasks a manager sends back.

use clap::Parser;
use shoal_proto::{
    ContainerSpec, Meta, Service, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus,
};

use crate::args::{Cli, Command};

/// The id of the [`service`] that every fixture [`task`] belongs to.
pub const SERVICE_ID: &str = "svc1";

/// A whole command line (`["shoal", ...]`) parsed as `main` parses it; a
/// refusal is clap's message.
pub fn parse(argv: &[&str]) -> anyhow::Result<Command> {
    Cli::try_parse_from(argv)
        .map(|cli| cli.command)
        .map_err(|e| anyhow::anyhow!(e.to_string()))
}

/// A replicated service spec: `replicas` of `img:1`.
pub fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        replicas,
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: "img:1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// Service [`SERVICE_ID`] with `spec`, at spec version 1.
pub fn service(spec: ServiceSpec) -> Service {
    Service {
        id: SERVICE_ID.into(),
        spec: Some(spec),
        spec_version: 1,
        ..Default::default()
    }
}

/// A task of service [`SERVICE_ID`] (`web`) for `slot` (0 for a global
/// service) on `node`, desired running, at spec version 1, now `state`.
/// `created` (unix ms) is also its `meta.version`: a later task is newer.
pub fn task(slot: u64, node: &str, created: i64, state: TaskState) -> Task {
    Task {
        id: format!("t{slot}-{node}-{created}"),
        service_id: SERVICE_ID.into(),
        service_name: "web".into(),
        slot,
        node_id: node.into(),
        spec_version: 1,
        desired_state: TaskState::Running as i32,
        meta: Some(Meta {
            created_at: created,
            version: created as u64,
            ..Default::default()
        }),
        status: Some(TaskStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `task` with `err` as its status's error.
pub fn failed(mut task: Task, err: &str) -> Task {
    task.status.get_or_insert_with(Default::default).err = err.into();
    task
}
