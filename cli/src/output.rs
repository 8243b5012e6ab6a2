//! What the client commands print: aligned tables like Docker's, JSON rows
//! (small serde structs, enums as lowercase words) for `--format json`, and
//! errors in one line for the user ([`describe`]).

use std::collections::HashMap;

use serde::Serialize;
use shoal_proto::{
    MountType, Node, NodeAvailability, NodeRole, NodeState, PortConfig, PortProtocol, PublishMode,
    RestartCondition, ServiceMode, ServiceSummary, Task, UpdateFailureAction, UpdateOrder, ids,
    state,
};

use crate::connect;

/// Print rows under headers, columns padded like Docker's tabwriter (3 spaces).
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 3;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Print list rows the docker way: ids only with `-q`, else JSON or a table.
pub fn print_list<R: Serialize>(
    rows: &[R],
    quiet: bool,
    format: crate::args::Format,
    headers: &[&str],
    id: impl Fn(&R) -> &str,
    cells: impl Fn(&R) -> Vec<String>,
) -> anyhow::Result<()> {
    if quiet {
        for row in rows {
            println!("{}", id(row));
        }
        return Ok(());
    }
    match format {
        crate::args::Format::Json => print_json(rows),
        crate::args::Format::Table => {
            let table: Vec<Vec<String>> = rows.iter().map(cells).collect();
            print_table(headers, &table);
            Ok(())
        }
    }
}

/// Print a value as pretty JSON.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `Running` from `running`, for tables.
pub fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub fn mode_name(mode: i32) -> &'static str {
    match ServiceMode::try_from(mode) {
        Ok(ServiceMode::Global) => "global",
        _ => "replicated",
    }
}

pub fn node_state_name(value: i32) -> &'static str {
    match NodeState::try_from(value).unwrap_or(NodeState::Unknown) {
        NodeState::Unknown => "unknown",
        NodeState::Down => "down",
        NodeState::Ready => "ready",
        NodeState::Disconnected => "disconnected",
    }
}

pub fn availability_name(value: i32) -> &'static str {
    match NodeAvailability::try_from(value).unwrap_or(NodeAvailability::Active) {
        NodeAvailability::Active => "active",
        NodeAvailability::Pause => "pause",
        NodeAvailability::Drain => "drain",
    }
}

pub fn role_name(value: i32) -> &'static str {
    match NodeRole::try_from(value).unwrap_or(NodeRole::Worker) {
        NodeRole::Worker => "worker",
        NodeRole::Manager => "manager",
    }
}

pub fn mount_type_name(value: i32) -> &'static str {
    match MountType::try_from(value).unwrap_or(MountType::Volume) {
        MountType::Bind => "bind",
        MountType::Volume => "volume",
        MountType::Tmpfs => "tmpfs",
    }
}

pub fn restart_condition_name(value: i32) -> &'static str {
    match RestartCondition::try_from(value).unwrap_or(RestartCondition::Any) {
        RestartCondition::Any => "any",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::None => "none",
    }
}

pub fn update_order_name(value: i32) -> &'static str {
    match UpdateOrder::try_from(value).unwrap_or(UpdateOrder::StopFirst) {
        UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

pub fn failure_action_name(value: i32) -> &'static str {
    match UpdateFailureAction::try_from(value).unwrap_or(UpdateFailureAction::Pause) {
        UpdateFailureAction::Pause => "pause",
        UpdateFailureAction::Continue => "continue",
    }
}

pub fn protocol_name(value: i32) -> &'static str {
    match PortProtocol::try_from(value).unwrap_or(PortProtocol::Tcp) {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

pub fn publish_mode_name(value: i32) -> &'static str {
    match PublishMode::try_from(value).unwrap_or(PublishMode::Ingress) {
        PublishMode::Ingress => "ingress",
        PublishMode::Host => "host",
    }
}

/// Docker's port notation: `*:8080->80/tcp`.
pub fn port_text(p: &PortConfig) -> String {
    let published = if p.published_port == 0 {
        String::new()
    } else {
        p.published_port.to_string()
    };
    format!(
        "*:{published}->{}/{}",
        p.target_port,
        protocol_name(p.protocol)
    )
}

/// "5 seconds ago", like Docker's `HumanDuration`.
pub fn ago(timestamp_ms: i64, now_ms: i64) -> String {
    if timestamp_ms <= 0 {
        return String::new();
    }
    let secs = (now_ms - timestamp_ms).max(0) / 1000;
    let text = match secs {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", secs / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", secs / 3600),
        172_800..=1_209_599 => format!("{} days", secs / 86_400),
        _ => format!("{} weeks", secs / 604_800),
    };
    format!("{text} ago")
}

/// One row of `service ls --format json`.
#[derive(Debug, Serialize)]
pub struct ServiceRow {
    pub id: String,
    pub name: String,
    pub mode: &'static str,
    /// Desired number of tasks.
    pub replicas: u64,
    pub running: u64,
    pub image: String,
    pub ports: Vec<String>,
}

impl ServiceRow {
    pub fn from_summary(summary: &ServiceSummary) -> Self {
        let service = summary.service.clone().unwrap_or_default();
        let spec = service.spec.unwrap_or_default();
        let image = spec
            .task
            .as_ref()
            .and_then(|t| t.container.as_ref())
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let ports = spec
            .endpoint
            .iter()
            .flat_map(|e| e.ports.iter())
            .map(port_text)
            .collect();
        ServiceRow {
            id: service.id,
            name: spec.name,
            mode: mode_name(spec.mode),
            replicas: summary.desired_tasks,
            running: summary.running_tasks,
            image,
            ports,
        }
    }

    pub fn table_row(&self) -> Vec<String> {
        vec![
            ids::short(&self.id).to_string(),
            self.name.clone(),
            self.mode.to_string(),
            format!("{}/{}", self.running, self.replicas),
            self.image.clone(),
            self.ports.join(", "),
        ]
    }
}

pub const SERVICE_HEADERS: [&str; 6] = ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"];

/// One row of `service ps --format json`.
#[derive(Debug, Serialize)]
pub struct TaskRow {
    pub id: String,
    /// `service.slot` (replicated) or `service.node-id` (global).
    pub name: String,
    pub service: String,
    pub slot: u64,
    pub image: String,
    /// Hostname of the node (its id when the node is unknown).
    pub node: String,
    pub node_id: String,
    pub desired_state: &'static str,
    pub state: &'static str,
    pub message: String,
    pub error: String,
    /// When the task entered its current state (unix ms).
    pub timestamp: i64,
    pub ports: Vec<String>,
}

impl TaskRow {
    pub fn new(task: &Task, hostnames: &HashMap<String, String>) -> Self {
        let status = task.status.clone().unwrap_or_default();
        let image = task
            .spec
            .as_ref()
            .and_then(|t| t.container.as_ref())
            .map(|c| c.image.clone())
            .unwrap_or_default();
        let name = if task.slot > 0 {
            format!("{}.{}", task.service_name, task.slot)
        } else {
            format!("{}.{}", task.service_name, task.node_id)
        };
        let ports = status
            .port_status
            .iter()
            .flat_map(|p| p.ports.iter())
            .filter(|p| PublishMode::try_from(p.publish_mode) == Ok(PublishMode::Host))
            .map(port_text)
            .collect();
        TaskRow {
            id: task.id.clone(),
            name,
            service: task.service_name.clone(),
            slot: task.slot,
            image,
            node: hostnames
                .get(&task.node_id)
                .cloned()
                .unwrap_or_else(|| task.node_id.clone()),
            node_id: task.node_id.clone(),
            desired_state: state::name(state::from_i32(task.desired_state)),
            state: state::name(state::from_i32(status.state)),
            message: status.message,
            error: status.err,
            timestamp: status.timestamp,
            ports,
        }
    }

    /// A table row; `history` rows get Docker's ` \_ ` before the name.
    pub fn table_row(&self, history: bool, no_trunc: bool, now_ms: i64) -> Vec<String> {
        let id = if no_trunc {
            self.id.clone()
        } else {
            ids::short(&self.id).to_string()
        };
        let name = if history {
            format!(" \\_ {}", self.name)
        } else {
            self.name.clone()
        };
        let error = if self.error.is_empty() {
            String::new()
        } else if no_trunc || self.error.chars().count() <= 30 {
            format!("\"{}\"", self.error)
        } else {
            format!("\"{}…\"", self.error.chars().take(29).collect::<String>())
        };
        vec![
            id,
            name,
            self.image.clone(),
            self.node.clone(),
            capitalize(self.desired_state),
            format!("{} {}", capitalize(self.state), ago(self.timestamp, now_ms))
                .trim_end()
                .to_string(),
            error,
            self.ports.join(", "),
        ]
    }
}

pub const TASK_HEADERS: [&str; 8] = [
    "ID",
    "NAME",
    "IMAGE",
    "NODE",
    "DESIRED STATE",
    "CURRENT STATE",
    "ERROR",
    "PORTS",
];

/// One row of `node ls --format json`.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub status: &'static str,
    pub availability: &'static str,
    pub role: &'static str,
    /// `leader`, `reachable` or `unreachable` for managers, empty for workers.
    pub manager_status: String,
    pub engine_version: String,
    pub addr: String,
    pub labels: HashMap<String, String>,
}

impl NodeRow {
    pub fn new(node: &Node, leader_addr: &str) -> Self {
        let spec = node.spec.clone().unwrap_or_default();
        let description = node.description.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let role = role_name(spec.role);
        let manager_status = match (&node.manager_status, role) {
            (Some(m), _) if m.leader => "leader",
            (Some(m), _) if m.reachability() == shoal_proto::Reachability::Unreachable => {
                "unreachable"
            }
            (Some(m), _) if m.reachability() == shoal_proto::Reachability::Reachable => "reachable",
            (_, "manager") if !leader_addr.is_empty() && status.addr == leader_addr => "leader",
            (_, "manager") => "reachable",
            _ => "",
        };
        NodeRow {
            id: node.id.clone(),
            hostname: description.hostname,
            status: node_state_name(status.state),
            availability: availability_name(spec.availability),
            role,
            manager_status: manager_status.to_string(),
            engine_version: description.engine_version,
            addr: status.addr,
            labels: spec.labels,
        }
    }

    pub fn table_row(&self) -> Vec<String> {
        vec![
            ids::short(&self.id).to_string(),
            self.hostname.clone(),
            capitalize(self.status),
            capitalize(self.availability),
            capitalize(&self.manager_status),
            self.engine_version.clone(),
        ]
    }
}

pub const NODE_HEADERS: [&str; 6] = [
    "ID",
    "HOSTNAME",
    "STATUS",
    "AVAILABILITY",
    "MANAGER STATUS",
    "ENGINE VERSION",
];

/// One line for the user: a refused certificate says so (whatever the failed
/// call shows); a gRPC status shows only its message (the manager words it
/// for people); anything else shows its chain of causes.
pub fn describe(err: &anyhow::Error) -> String {
    if let Some(why) = connect::refusal() {
        return why;
    }
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                    if status.message().is_empty() =>
                {
                    format!("the manager failed: {status}")
                }
                tonic::Code::Unavailable => {
                    format!("the manager is unavailable: {}", status.message())
                }
                _ => status.message().to_string(),
            };
        }
    }
    chain(err).replace('\n', " ")
}

/// The causes of `err` joined with ": ", skipping one whose text the previous
/// cause already shows (many errors print their source in their own message).
fn chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let this = cause.to_string();
        if !previous.is_empty() && previous.contains(&this) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&this);
        previous = this;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{failed, task};

    #[test]
    fn a_cause_shown_in_its_parent_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the store: {0}")]
        struct Open(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("starting raft")]
        struct Start(#[source] Open);
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let err = anyhow::Error::new(Start(Open(io)));
        assert_eq!(
            describe(&err),
            "starting raft: cannot open the store: permission denied"
        );
        let plain = anyhow::anyhow!("outer").context("context");
        assert_eq!(describe(&plain), "context: outer");
    }

    #[test]
    fn tables_align_columns() {
        let out = render_table(
            &["ID", "NAME"],
            &[
                vec!["abc".into(), "web".into()],
                vec!["a".into(), "".into()],
            ],
        );
        assert_eq!(out, "ID    NAME\nabc   web\na\n");
    }

    #[test]
    fn words_and_times_read_like_docker() {
        assert_eq!(capitalize("running"), "Running");
        assert_eq!(ago(1_000, 6_500), "5 seconds ago");
        assert_eq!(ago(0, 6_500), "");
        assert_eq!(ago(1, 1 + 90_000), "About a minute ago");
        assert_eq!(ago(1, 1 + 3 * 3600 * 1000), "3 hours ago");
        let port = PortConfig {
            published_port: 8080,
            target_port: 80,
            protocol: PortProtocol::Udp as i32,
            publish_mode: 0,
        };
        assert_eq!(port_text(&port), "*:8080->80/udp");
    }

    #[test]
    fn task_rows_name_slots_and_nodes() {
        let mut t = failed(
            task(2, "n1", 1, shoal_proto::TaskState::Rejected),
            "no such image",
        );
        t.id = "abcdefghijklmnopqrstuvwxy".into();
        t.status.as_mut().unwrap().timestamp = 1_000;
        let hosts = HashMap::from([("n1".to_string(), "box1".to_string())]);
        let row = TaskRow::new(&t, &hosts);
        assert_eq!(row.name, "web.2");
        assert_eq!(row.node, "box1");
        assert_eq!((row.desired_state, row.state), ("running", "rejected"));
        let cells = row.table_row(true, false, 3_000);
        assert_eq!(cells[0], "abcdefghijkl");
        assert_eq!(cells[1], " \\_ web.2");
        assert_eq!(cells[5], "Rejected 2 seconds ago");
        assert_eq!(cells[6], "\"no such image\"");
    }

    #[test]
    fn grpc_errors_show_their_message() {
        let err = anyhow::Error::new(tonic::Status::invalid_argument(
            "replicas: must not be negative",
        ));
        assert_eq!(describe(&err), "replicas: must not be negative");
        let err = anyhow::Error::new(tonic::Status::not_found("service web not found"))
            .context("ignored");
        assert_eq!(describe(&err), "service web not found");
        let err = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(describe(&err), "outer: root cause");
    }
}
