//! Pure translation between shoal's task model and Docker's container model: a
//! task becomes a container name and a `ContainerCreateBody`, and what the engine
//! reports (published ports, list status lines, exits and health verdicts)
//! becomes shoal values again. No IO
//! here, so every rule is unit-tested without an engine.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, HealthConfig, HealthcheckResult, HostConfig, Mount, MountType,
    PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};
use shoal_proto::{
    ContainerSpec, MountType as ShoalMountType, PortConfig, PortProtocol, PublishMode, Task,
};

use crate::runtime::{Exit, TaskFile, TaskFiles};

/// Label carrying the task id: how the runtime finds a task's container again.
pub const LABEL_TASK_ID: &str = "shoal.task.id";
pub const LABEL_SERVICE_ID: &str = "shoal.service.id";
pub const LABEL_SERVICE_NAME: &str = "shoal.service.name";
/// Label carrying the node id: how an agent lists (and adopts) its containers.
pub const LABEL_NODE_ID: &str = "shoal.node.id";
pub const LABEL_SLOT: &str = "shoal.slot";

/// Length of the id prefixes in container names (Docker's short-id length).
const ID_PREFIX_LEN: usize = 12;

/// The container name of a task: `<service>.<slot>.<task id prefix>` for a
/// replicated task, `<service>.<node id prefix>.<task id prefix>` for a global one
/// (slot 0: the node identifies the task). Deterministic, so every call can find
/// the container by name after an agent restart.
pub fn container_name(task: &Task) -> String {
    let service = if task.service_name.is_empty() {
        "task"
    } else {
        task.service_name.as_str()
    };
    let middle = if task.slot == 0 {
        let node = prefix(&task.node_id);
        if node.is_empty() {
            "global".to_string()
        } else {
            node.to_string()
        }
    } else {
        task.slot.to_string()
    };
    sanitize_name(&format!("{service}.{middle}.{}", prefix(&task.id)))
}

fn prefix(id: &str) -> &str {
    match id.char_indices().nth(ID_PREFIX_LEN) {
        Some((at, _)) => &id[..at],
        None => id,
    }
}

/// Docker accepts `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; anything else becomes `-` so a
/// surprising service name can never make container creation fail.
fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert(0, 't');
    }
    out
}

/// The labels every shoal container carries, on top of the user's.
pub fn shoal_labels(task: &Task, node_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_TASK_ID.to_string(), task.id.clone()),
        (LABEL_SERVICE_ID.to_string(), task.service_id.clone()),
        (LABEL_SERVICE_NAME.to_string(), task.service_name.clone()),
        (LABEL_NODE_ID.to_string(), node_id.to_string()),
        (LABEL_SLOT.to_string(), task.slot.to_string()),
    ])
}

/// The task's container spec, or an empty one (the manager validates specs; a
/// missing one still yields a config the engine rejects with a clear message).
pub fn container_spec(task: &Task) -> ContainerSpec {
    task.spec
        .as_ref()
        .and_then(|s| s.container.clone())
        .unwrap_or_default()
}

/// The image reference to pull: a reference without tag or digest gets `:latest`,
/// because the engine pulls *every* tag of a repository when none is named.
pub fn pull_reference(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') || image.contains('@') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// Docker's key for a port: `80/tcp`.
pub fn port_key(port: &PortConfig) -> String {
    let proto = match port.protocol() {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    };
    format!("{}/{proto}", port.target_port)
}

/// Ports this node must publish for the task. Host-mode ports by definition; and
/// ingress ports too, because there is no routing mesh yet: publishing them on the
/// host of each task is the closest behaviour (the scheduler keeps them unique).
fn published(task: &Task) -> impl Iterator<Item = &PortConfig> {
    task.ports.iter().filter(|p| {
        matches!(p.publish_mode(), PublishMode::Host | PublishMode::Ingress) && p.target_port != 0
    })
}

/// The whole container configuration for a task.
pub fn container_config(task: &Task, node_id: &str) -> ContainerCreateBody {
    let spec = container_spec(task);
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let non_empty_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());

    let mut labels = spec.labels.clone();
    // Mandatory labels win over user labels of the same name: they are how shoal
    // finds its containers.
    labels.extend(shoal_labels(task, node_id));

    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: PortMap = HashMap::new();
    for port in published(task) {
        let key = port_key(port);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        // An empty HostPort lets the engine choose a free port (published_port 0).
        let host_port = if port.published_port == 0 {
            String::new()
        } else {
            port.published_port.to_string()
        };
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: None,
                host_port: Some(host_port),
            });
    }

    let limits = task
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.limits.as_ref());
    let positive = |v: i64| (v > 0).then_some(v);

    let host_config = HostConfig {
        mounts: (!spec.mounts.is_empty()).then(|| spec.mounts.iter().map(mount).collect()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        nano_cpus: limits.and_then(|l| positive(l.nano_cpus)),
        memory: limits.and_then(|l| positive(l.memory_bytes)),
        // shoal owns restarts: a failed task is replaced by a new task, never
        // restarted in place by the engine.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };

    ContainerCreateBody {
        image: Some(spec.image.clone()),
        // Docker semantics: the service's command replaces the image ENTRYPOINT,
        // its args replace the image CMD.
        entrypoint: non_empty_vec(&spec.command),
        cmd: non_empty_vec(&spec.args),
        env: non_empty_vec(&spec.env),
        working_dir: non_empty(&spec.dir),
        user: non_empty(&spec.user),
        hostname: non_empty(&spec.hostname),
        labels: Some(labels),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck: spec.healthcheck.as_ref().and_then(healthcheck),
        stop_signal: non_empty(&spec.stop_signal),
        stop_timeout: spec.stop_grace_period_ms.map(ms_to_whole_secs),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The name of the `i`th file of a task on the host, in the task's directory
/// (`secret-0`, `config-1`): never the secret's name or target, which a
/// listing of the directory would otherwise reveal.
pub fn host_file_name(i: usize, file: &TaskFile) -> String {
    format!("{}-{i}", file.kind.name())
}

/// Read-only bind mounts of a task's secret and config files, kept in
/// `host_dir`, at their paths in the container.
pub fn file_mounts(files: &TaskFiles, host_dir: &Path) -> Vec<Mount> {
    files
        .files
        .iter()
        .enumerate()
        .map(|(i, file)| Mount {
            target: Some(file.path.clone()),
            source: Some(
                host_dir
                    .join(host_file_name(i, file))
                    .to_string_lossy()
                    .into_owned(),
            ),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        })
        .collect()
}

/// Add `mounts` to a container configuration.
pub fn add_mounts(config: &mut ContainerCreateBody, mounts: Vec<Mount>) {
    if mounts.is_empty() {
        return;
    }
    config
        .host_config
        .get_or_insert_with(Default::default)
        .mounts
        .get_or_insert_with(Vec::new)
        .extend(mounts);
}

fn mount(m: &shoal_proto::Mount) -> Mount {
    let (typ, source) = match m.r#type() {
        ShoalMountType::Bind => (MountType::BIND, Some(m.source.clone())),
        // An empty volume source asks for an anonymous volume.
        ShoalMountType::Volume => (
            MountType::VOLUME,
            (!m.source.is_empty()).then(|| m.source.clone()),
        ),
        ShoalMountType::Tmpfs => (MountType::TMPFS, None),
    };
    Mount {
        target: Some(m.target.clone()),
        source,
        typ: Some(typ),
        read_only: Some(m.read_only),
        ..Default::default()
    }
}

fn healthcheck(h: &shoal_proto::HealthConfig) -> Option<HealthConfig> {
    if h.test.is_empty() {
        return None;
    }
    let ns = |ms: i64| (ms > 0).then(|| ms.saturating_mul(1_000_000));
    Some(HealthConfig {
        test: Some(h.test.clone()),
        interval: ns(h.interval_ms),
        timeout: ns(h.timeout_ms),
        retries: (h.retries > 0).then_some(i64::from(h.retries)),
        start_period: ns(h.start_period_ms),
        start_interval: None,
    })
}

/// Docker's stop timeout is whole seconds; round up so a grace period is never
/// shortened.
pub fn ms_to_whole_secs(ms: i64) -> i64 {
    if ms <= 0 { 0 } else { (ms + 999) / 1000 }
}

/// The published ports as the engine bound them, one `PortConfig` per requested
/// port, with `published_port` set to the real host port. Ports the engine did not
/// bind (not started yet) are left out.
///
/// The engine binds IPv4 and IPv6 separately. For an engine-chosen port the two
/// can differ (Docker 20.10 picks each from the ephemeral range on its own), so
/// the IPv4 binding is the one reported, as `docker port` lists it first; an
/// IPv6-only binding is reported when it is all there is.
pub fn published_ports(requested: &[PortConfig], bound: &PortMap) -> Vec<PortConfig> {
    let mut out: Vec<PortConfig> = Vec::new();
    for port in requested {
        let Some(Some(bindings)) = bound.get(&port_key(port)) else {
            continue;
        };
        let candidates: Vec<(bool, u32)> = bindings
            .iter()
            .filter_map(|b| {
                let host_port = b.host_port.as_deref()?.parse::<u32>().ok()?;
                let ipv6 = b.host_ip.as_deref().is_some_and(|ip| ip.contains(':'));
                Some((ipv6, host_port))
            })
            .filter(|&(_, host_port)| port.published_port == 0 || port.published_port == host_port)
            .collect();
        let chosen = candidates
            .iter()
            .find(|(ipv6, _)| !ipv6)
            .or_else(|| candidates.first());
        if let Some(&(_, host_port)) = chosen {
            let found = PortConfig {
                published_port: host_port,
                ..*port
            };
            if !out.contains(&found) {
                out.push(found);
            }
        }
    }
    out
}

/// The exit code in a list status line: `Exited (3) 2 seconds ago` → 3.
pub fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.trim().parse().ok()
}

/// The exit code reported when the task ended without its process exiting (an
/// unhealthy verdict on a still-running container, a container removed or an
/// engine lost): there is no real code to give.
pub const NO_EXIT_CODE: i64 = -1;

/// How a process exit reads: "exit status N", or "killed" for SIGKILL (137: a
/// `docker kill`, or the kill after a stop's grace period) and the OOM killer.
pub fn process_exit(exit_code: i64, oom_killed: bool) -> Exit {
    let message = if oom_killed {
        "killed (out of memory)".to_string()
    } else if exit_code == 137 {
        "killed".to_string()
    } else {
        format!("exit status {exit_code}")
    };
    Exit {
        exit_code,
        message,
        unhealthy: false,
    }
}

/// The verdict of an unhealthy health check, quoting the last probe's output
/// (the engine keeps the latest probe last).
pub fn unhealthy_exit(log: &[HealthcheckResult]) -> Exit {
    let detail = match log.last() {
        Some(probe) => {
            let output = probe.output.as_deref().unwrap_or_default().trim();
            if output.is_empty() {
                format!(
                    "health check failed with exit code {}",
                    probe.exit_code.unwrap_or_default()
                )
            } else {
                output.to_string()
            }
        }
        None => "health check failed".to_string(),
    };
    Exit {
        exit_code: NO_EXIT_CODE,
        message: format!("unhealthy: {detail}"),
        unhealthy: true,
    }
}

/// What a container event says about health: `Some(true)` healthy, `Some(false)`
/// unhealthy, `None` anything else. The engine names health events
/// `health_status: healthy` (a colon and the status after the action).
pub fn health_event(action: &str) -> Option<bool> {
    let status = action
        .strip_prefix("health_status")?
        .trim_start_matches(':')
        .trim();
    match status {
        "healthy" => Some(true),
        "unhealthy" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
