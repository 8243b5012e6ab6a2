//! Flags to spec: builds the `ServiceSpec` of `service create` and applies the
//! changes of `service update` to the current spec. Pure except for reading
//! `--env-file`s; the environment lookup for bare `-e KEY` is passed in so tests
//! do not depend on the shell they run in.
//!
//! A value the user did not give stays unset (`None`, empty): the manager then
//! applies Swarm's defaults.

use anyhow::{Context, bail};
use shoal_proto::validate::{self, SpecError};
use shoal_proto::{
    ContainerSpec, EndpointSpec, HealthConfig, Placement, PortConfig, ResourceRequirements,
    Resources, RestartCondition, RestartPolicy, ServiceMode, ServiceSpec, SpreadPreference,
    TaskSpec, UpdateConfig, UpdateFailureAction, UpdateOrder, ids,
};

use crate::args::{
    CreateArgs, FailureActionArg, ModeArg, RestartConditionArg, TaskFlags, UpdateArgs,
    UpdateOrderArg,
};

/// Looks up a variable of the caller's environment (for `-e KEY`).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, for real runs.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The spec of `service create`, validated.
pub fn create_spec(args: &CreateArgs, env: EnvLookup<'_>) -> anyhow::Result<ServiceSpec> {
    let mut spec = ServiceSpec {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| generated_name(&args.image)),
        ..Default::default()
    };
    match args.mode {
        ModeArg::Replicated => {
            spec.mode = ServiceMode::Replicated as i32;
            spec.replicas = args.replicas.unwrap_or(1);
        }
        ModeArg::Global => {
            spec.mode = ServiceMode::Global as i32;
            // Kept so that validation refuses `--mode global --replicas N`.
            spec.replicas = args.replicas.unwrap_or(0);
        }
    }
    spec.labels = args.label.iter().cloned().collect();

    let mut env_entries = Vec::new();
    for path in &args.env_file {
        let contents = std::fs::read_to_string(path)
            .with_context(|| format!("--env-file: cannot read {}", path.display()))?;
        let entries = validate::parse_env_file(&contents)
            .map_err(|e| anyhow::anyhow!("--env-file: {}: {e}", path.display()))?;
        env_entries.extend(entries);
    }
    env_entries.extend(args.env.iter().cloned());

    let c = container(&mut spec);
    c.image = args.image.clone();
    c.args = args.args.clone();
    c.env = env_entries.iter().map(|e| resolve_env(e, env)).collect();
    c.labels = args.container_label.iter().cloned().collect();
    c.mounts = args.mount.clone();
    c.secrets = args.secret.clone();
    c.configs = args.config.clone();

    if !args.publish.is_empty() {
        spec.endpoint = Some(EndpointSpec {
            ports: args.publish.clone(),
        });
    }
    if !args.constraint.is_empty() {
        placement(&mut spec).constraints = args.constraint.clone();
    }
    for pref in &args.placement_pref {
        let p = spread(pref)?;
        placement(&mut spec).preferences.push(p);
    }
    apply_task_flags(&mut spec, &args.task);
    check(&spec)?;
    Ok(spec)
}

/// Apply `service update` flags to the current spec, then validate it.
pub fn apply_update(
    spec: &mut ServiceSpec,
    args: &UpdateArgs,
    env: EnvLookup<'_>,
) -> anyhow::Result<()> {
    if let Some(image) = &args.image {
        container(spec).image = image.clone();
    }
    if let Some(replicas) = args.replicas {
        spec.replicas = replicas;
    }
    for key in &args.label_rm {
        spec.labels.remove(key);
    }
    spec.labels.extend(args.label_add.iter().cloned());

    let c = container(spec);
    for key in &args.env_rm {
        c.env.retain(|e| env_key(e) != key);
    }
    for entry in &args.env_add {
        let entry = resolve_env(entry, env);
        c.env.retain(|e| env_key(e) != env_key(&entry));
        c.env.push(entry);
    }
    for key in &args.container_label_rm {
        c.labels.remove(key);
    }
    c.labels.extend(args.container_label_add.iter().cloned());
    for target in &args.mount_rm {
        c.mounts.retain(|m| &m.target != target);
    }
    for mount in &args.mount_add {
        c.mounts.retain(|m| m.target != mount.target);
        c.mounts.push(mount.clone());
    }
    for name in &args.secret_rm {
        c.secrets
            .retain(|r| &r.secret_name != name && &r.secret_id != name);
    }
    for add in &args.secret_add {
        c.secrets.retain(|r| r.target != add.target);
        c.secrets.push(add.clone());
    }
    for name in &args.config_rm {
        c.configs
            .retain(|r| &r.config_name != name && &r.config_id != name);
    }
    for add in &args.config_add {
        c.configs.retain(|r| r.target != add.target);
        c.configs.push(add.clone());
    }

    if !args.publish_rm.is_empty() || !args.publish_add.is_empty() {
        let ports = &mut spec.endpoint.get_or_insert_with(Default::default).ports;
        for rm in &args.publish_rm {
            let (target, protocol) = publish_rm_target(rm)?;
            ports.retain(|p| {
                !(p.target_port == target && protocol.is_none_or(|proto| p.protocol == proto))
            });
        }
        for add in &args.publish_add {
            ports.retain(|p| !same_port(p, add));
            ports.push(*add);
        }
    }

    if !args.constraint_rm.is_empty() || !args.constraint_add.is_empty() {
        let constraints = &mut placement(spec).constraints;
        constraints.retain(|c| !args.constraint_rm.contains(c));
        for c in &args.constraint_add {
            if !constraints.contains(c) {
                constraints.push(c.clone());
            }
        }
    }
    for pref in &args.placement_pref_rm {
        let rm = spread(pref)?;
        placement(spec).preferences.retain(|p| p != &rm);
    }
    for pref in &args.placement_pref_add {
        let add = spread(pref)?;
        let prefs = &mut placement(spec).preferences;
        if !prefs.contains(&add) {
            prefs.push(add);
        }
    }
    apply_task_flags(spec, &args.task);
    check(spec)
}

/// The flags `create` and `update` share; each given flag replaces one value.
pub fn apply_task_flags(spec: &mut ServiceSpec, f: &TaskFlags) {
    if let Some(n) = f.replicas_max_per_node {
        placement(spec).max_replicas = n;
    }
    if let Some(v) = f.limit_cpu {
        limits(spec).nano_cpus = v;
    }
    if let Some(v) = f.limit_memory {
        limits(spec).memory_bytes = v;
    }
    if let Some(v) = f.reserve_cpu {
        reservations(spec).nano_cpus = v;
    }
    if let Some(v) = f.reserve_memory {
        reservations(spec).memory_bytes = v;
    }

    let restart_given = f.restart_condition.is_some()
        || f.restart_delay.is_some()
        || f.restart_max_attempts.is_some()
        || f.restart_window.is_some();
    if restart_given {
        let r: &mut RestartPolicy = task(spec).restart.get_or_insert_with(Default::default);
        if let Some(c) = f.restart_condition {
            r.condition = match c {
                RestartConditionArg::None => RestartCondition::None,
                RestartConditionArg::OnFailure => RestartCondition::OnFailure,
                RestartConditionArg::Any => RestartCondition::Any,
            } as i32;
        }
        if let Some(d) = f.restart_delay {
            r.delay_ms = Some(d);
        }
        if let Some(n) = f.restart_max_attempts {
            r.max_attempts = n;
        }
        if let Some(w) = f.restart_window {
            r.window_ms = w;
        }
    }

    let update_given = f.update_parallelism.is_some()
        || f.update_delay.is_some()
        || f.update_order.is_some()
        || f.update_failure_action.is_some()
        || f.update_monitor.is_some();
    if update_given {
        let u: &mut UpdateConfig = spec.update.get_or_insert_with(Default::default);
        if let Some(p) = f.update_parallelism {
            u.parallelism = Some(p);
        }
        if let Some(d) = f.update_delay {
            u.delay_ms = d;
        }
        if let Some(o) = f.update_order {
            u.order = match o {
                UpdateOrderArg::StartFirst => UpdateOrder::StartFirst,
                UpdateOrderArg::StopFirst => UpdateOrder::StopFirst,
            } as i32;
        }
        if let Some(a) = f.update_failure_action {
            u.failure_action = match a {
                FailureActionArg::Pause => UpdateFailureAction::Pause,
                FailureActionArg::Continue => UpdateFailureAction::Continue,
            } as i32;
        }
        if let Some(m) = f.update_monitor {
            u.monitor_ms = Some(m);
        }
    }

    let c = container(spec);
    if f.no_healthcheck {
        c.healthcheck = Some(HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        });
    } else if f.health_cmd.is_some()
        || f.health_interval.is_some()
        || f.health_retries.is_some()
        || f.health_timeout.is_some()
        || f.health_start_period.is_some()
    {
        let h = c.healthcheck.get_or_insert_with(Default::default);
        if let Some(cmd) = &f.health_cmd {
            h.test = vec!["CMD-SHELL".into(), cmd.clone()];
        }
        if let Some(v) = f.health_interval {
            h.interval_ms = v;
        }
        if let Some(v) = f.health_retries {
            h.retries = v;
        }
        if let Some(v) = f.health_timeout {
            h.timeout_ms = v;
        }
        if let Some(v) = f.health_start_period {
            h.start_period_ms = v;
        }
    }
    if let Some(v) = &f.workdir {
        c.dir = v.clone();
    }
    if let Some(v) = &f.user {
        c.user = v.clone();
    }
    if let Some(v) = &f.hostname {
        c.hostname = v.clone();
    }
    if let Some(v) = &f.stop_signal {
        c.stop_signal = v.clone();
    }
    if let Some(v) = f.stop_grace_period {
        c.stop_grace_period_ms = Some(v);
    }
    if let Some(v) = &f.entrypoint {
        c.command = split_words(v);
    }
}

/// Validate with the manager's own rules, so the user gets the same words
/// before anything is sent.
fn check(spec: &ServiceSpec) -> anyhow::Result<()> {
    validate::service_spec(spec).map_err(|e: SpecError| anyhow::anyhow!(e))
}

fn task(spec: &mut ServiceSpec) -> &mut TaskSpec {
    spec.task.get_or_insert_with(Default::default)
}

fn container(spec: &mut ServiceSpec) -> &mut ContainerSpec {
    task(spec).container.get_or_insert_with(Default::default)
}

fn resources(spec: &mut ServiceSpec) -> &mut ResourceRequirements {
    task(spec).resources.get_or_insert_with(Default::default)
}

fn limits(spec: &mut ServiceSpec) -> &mut Resources {
    resources(spec).limits.get_or_insert_with(Default::default)
}

fn reservations(spec: &mut ServiceSpec) -> &mut Resources {
    resources(spec)
        .reservations
        .get_or_insert_with(Default::default)
}

fn placement(spec: &mut ServiceSpec) -> &mut Placement {
    task(spec).placement.get_or_insert_with(Default::default)
}

/// `spread=node.labels.KEY` → the spread descriptor.
fn spread(pref: &str) -> anyhow::Result<SpreadPreference> {
    match pref.split_once('=') {
        Some(("spread", descriptor)) if !descriptor.is_empty() => Ok(SpreadPreference {
            spread_descriptor: descriptor.to_string(),
        }),
        _ => bail!(
            "--placement-pref: {} is not spread=node.labels.KEY",
            validate::quoted(pref)
        ),
    }
}

/// A name for a service created without `--name`: the image's repository
/// name and a random suffix (`nginx-k3j9x`).
fn generated_name(image: &str) -> String {
    let repo = image.split('@').next().unwrap_or(image);
    let base = repo.rsplit('/').next().unwrap_or(repo);
    let base = base.split(':').next().unwrap_or(base);
    let base: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(50)
        .collect();
    let suffix = &ids::new_id()[..5];
    if base.is_empty() {
        format!("service-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `KEY` alone copies the variable from the caller's environment, as Docker does;
/// when unset it is passed as is.
fn resolve_env(entry: &str, env: EnvLookup<'_>) -> String {
    if entry.contains('=') {
        return entry.to_string();
    }
    match env(entry) {
        Some(value) => format!("{entry}={value}"),
        None => entry.to_string(),
    }
}

fn same_port(a: &PortConfig, b: &PortConfig) -> bool {
    if a.published_port == 0 || b.published_port == 0 {
        a.target_port == b.target_port
            && a.protocol == b.protocol
            && a.published_port == b.published_port
    } else {
        a.published_port == b.published_port && a.protocol == b.protocol
    }
}

/// `80` or `80/udp` for `--publish-rm`.
fn publish_rm_target(value: &str) -> anyhow::Result<(u32, Option<i32>)> {
    let (port, protocol) = match value.split_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (value, None),
    };
    // Docker also accepts PUBLISHED:TARGET here; the target is what counts.
    let port = port.rsplit(':').next().unwrap_or(port);
    let target = port
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .with_context(|| {
            format!(
                "--publish-rm: {} is not a target port (e.g. 80 or 80/udp)",
                validate::quoted(value)
            )
        })?;
    let protocol = match protocol {
        None => None,
        Some(p) => Some(
            validate::parse_publish(&format!("1:1/{p}"))
                .map_err(|e| anyhow::anyhow!("--publish-rm: {e}"))?
                .protocol,
        ),
    };
    Ok((target, protocol))
}

/// Split a command line on whitespace, honouring single and double quotes
/// (`--entrypoint "sh -c 'echo hi'"`).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for ch in line.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(ch);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

#[cfg(test)]
#[path = "from_flags_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "from_flags_proptests.rs"]
mod proptests;
