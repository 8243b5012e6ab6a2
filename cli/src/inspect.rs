//! `inspect` output: whole objects as JSON that mirrors the protocol's field
//! names, with enums as lowercase words and durations in milliseconds, plus the
//! `--pretty` text form of a service.

use serde_json::{Value, json};
use shoal_proto::{
    ContainerSpec, Meta, Node, Placement, ResourceRequirements, Service, ServiceSpec, TaskSpec,
};

use crate::output::{
    availability_name, failure_action_name, mode_name, mount_type_name, node_state_name, port_text,
    protocol_name, publish_mode_name, restart_condition_name, role_name, update_order_name,
};

fn meta(m: &Option<Meta>) -> Value {
    let m = m.unwrap_or_default();
    json!({ "version": m.version, "created_at": m.created_at, "updated_at": m.updated_at })
}

pub fn service(s: &Service) -> Value {
    let update_status = s.update_status.as_ref().map(|u| {
        let state = shoal_proto::UpdateState::try_from(u.state)
            .map(|st| {
                st.as_str_name()
                    .trim_start_matches("UPDATE_STATE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        json!({
            "state": state,
            "started_at": u.started_at,
            "completed_at": u.completed_at,
            "message": u.message,
        })
    });
    json!({
        "id": s.id,
        "meta": meta(&s.meta),
        "spec": s.spec.as_ref().map(service_spec),
        "previous_spec": s.previous_spec.as_ref().map(service_spec),
        "spec_version": s.spec_version,
        "update_status": update_status,
        "error": (!s.error.is_empty()).then_some(&s.error),
    })
}

pub fn service_spec(spec: &ServiceSpec) -> Value {
    let ports: Vec<Value> = spec
        .endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .map(|p| {
            json!({
                "protocol": protocol_name(p.protocol),
                "target_port": p.target_port,
                "published_port": p.published_port,
                "publish_mode": publish_mode_name(p.publish_mode),
            })
        })
        .collect();
    let update = spec.update.map(|u| {
        json!({
            "parallelism": u.parallelism,
            "delay_ms": u.delay_ms,
            "order": update_order_name(u.order),
            "failure_action": failure_action_name(u.failure_action),
            "monitor_ms": u.monitor_ms,
        })
    });
    json!({
        "name": spec.name,
        "labels": spec.labels,
        "mode": mode_name(spec.mode),
        "replicas": spec.replicas,
        "task": spec.task.as_deref().map(task_spec),
        "update": update,
        "endpoint": { "ports": ports },
    })
}

fn task_spec(t: &TaskSpec) -> Value {
    let restart = t.restart.map(|r| {
        json!({
            "condition": restart_condition_name(r.condition),
            "delay_ms": r.delay_ms,
            "max_attempts": r.max_attempts,
            "window_ms": r.window_ms,
        })
    });
    json!({
        "container": t.container.as_ref().map(container),
        "resources": t.resources.as_ref().map(resources),
        "restart": restart,
        "placement": t.placement.as_ref().map(placement),
    })
}

fn container(c: &ContainerSpec) -> Value {
    let mounts: Vec<Value> = c
        .mounts
        .iter()
        .map(|m| {
            json!({
                "type": mount_type_name(m.r#type),
                "source": m.source,
                "target": m.target,
                "read_only": m.read_only,
            })
        })
        .collect();
    let health = c.healthcheck.as_ref().map(|h| {
        json!({
            "test": h.test,
            "interval_ms": h.interval_ms,
            "timeout_ms": h.timeout_ms,
            "retries": h.retries,
            "start_period_ms": h.start_period_ms,
        })
    });
    json!({
        "image": c.image,
        "command": c.command,
        "args": c.args,
        "env": c.env,
        "dir": c.dir,
        "user": c.user,
        "hostname": c.hostname,
        "labels": c.labels,
        "mounts": mounts,
        "secrets": c.secrets.iter().map(|r| json!({
            "secret_id": r.secret_id,
            "secret_name": r.secret_name,
            "target": format!("/run/secrets/{}", r.target),
            "uid": r.uid,
            "gid": r.gid,
            "mode": format!("{:04o}", r.mode.unwrap_or(0o444)),
        })).collect::<Vec<_>>(),
        "configs": c.configs.iter().map(|r| json!({
            "config_id": r.config_id,
            "config_name": r.config_name,
            "target": r.target,
            "uid": r.uid,
            "gid": r.gid,
            "mode": format!("{:04o}", r.mode.unwrap_or(0o444)),
        })).collect::<Vec<_>>(),
        "healthcheck": health,
        "stop_signal": c.stop_signal,
        "stop_grace_period_ms": c.stop_grace_period_ms,
    })
}

fn resources(r: &ResourceRequirements) -> Value {
    let res = |x: Option<shoal_proto::Resources>| {
        x.map(|x| json!({ "nano_cpus": x.nano_cpus, "memory_bytes": x.memory_bytes }))
    };
    json!({ "limits": res(r.limits), "reservations": res(r.reservations) })
}

fn placement(p: &Placement) -> Value {
    let prefs: Vec<Value> = p
        .preferences
        .iter()
        .map(|s| json!({ "spread": s.spread_descriptor }))
        .collect();
    json!({ "constraints": p.constraints, "preferences": prefs, "max_replicas": p.max_replicas })
}

pub fn node(n: &Node) -> Value {
    let spec = n.spec.clone().unwrap_or_default();
    let d = n.description.clone().unwrap_or_default();
    let st = n.status.clone().unwrap_or_default();
    let r = d.resources.unwrap_or_default();
    json!({
        "id": n.id,
        "meta": meta(&n.meta),
        "spec": {
            "labels": spec.labels,
            "role": role_name(spec.role),
            "availability": availability_name(spec.availability),
        },
        "description": {
            "hostname": d.hostname,
            "resources": { "nano_cpus": r.nano_cpus, "memory_bytes": r.memory_bytes },
            "engine_version": d.engine_version,
            "engine_labels": d.engine_labels,
            "os": d.os,
            "arch": d.arch,
        },
        "status": { "state": node_state_name(st.state), "message": st.message, "addr": st.addr },
    })
}

/// The `--pretty` form, close to `docker service inspect --pretty`.
pub fn service_pretty(s: &Service) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let c = task.container.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<15}{v}\n"));
    line("ID:", s.id.clone());
    line("Name:", spec.name.clone());
    for (k, v) in sorted(&spec.labels) {
        line(" Label:", format!("{k}={v}"));
    }
    line("Mode:", mode_name(spec.mode).to_string());
    if mode_name(spec.mode) == "replicated" {
        line(" Replicas:", spec.replicas.to_string());
    }
    line("Image:", c.image.clone());
    if !s.error.is_empty() {
        line("Error:", s.error.clone());
    }
    if !c.command.is_empty() {
        line("Entrypoint:", c.command.join(" "));
    }
    if !c.args.is_empty() {
        line("Args:", c.args.join(" "));
    }
    for e in &c.env {
        line(" Env:", e.clone());
    }
    for m in &c.mounts {
        let ro = if m.read_only { ",readonly" } else { "" };
        line(
            " Mount:",
            format!(
                "type={},source={},target={}{ro}",
                mount_type_name(m.r#type),
                m.source,
                m.target
            ),
        );
    }
    if let Some(p) = &task.placement {
        for constraint in &p.constraints {
            line(" Constraint:", constraint.clone());
        }
        for pref in &p.preferences {
            line(" Preference:", format!("spread={}", pref.spread_descriptor));
        }
    }
    for p in spec.endpoint.iter().flat_map(|e| e.ports.iter()) {
        line(
            " Port:",
            format!("{} ({})", port_text(p), publish_mode_name(p.publish_mode)),
        );
    }
    out
}

fn sorted(map: &std::collections::HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, SERVICE_ID, spec};

    #[test]
    fn service_json_uses_words_for_enums() {
        let s = testing::service(ServiceSpec {
            mode: shoal_proto::ServiceMode::Global as i32,
            ..spec("web", 0)
        });
        let v = service(&s);
        assert_eq!(v["id"], SERVICE_ID);
        assert_eq!(v["spec"]["mode"], "global");
        assert_eq!(v["spec"]["name"], "web");
        assert!(service_pretty(&s).contains("Mode:          global"));
    }
}
