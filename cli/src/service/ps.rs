//! `shoal service ps`: every task of the services, history included, grouped by
//! slot (or node, for global services) with the newest task first, like Docker.

use std::collections::HashMap;

use shoal_proto::control_client::ControlClient;
use shoal_proto::{ListNodesRequest, ListTasksRequest, Task};
use tonic::transport::Channel;

use crate::args::{Format, PsArgs};
use crate::output::{self, TASK_HEADERS, TaskRow};

pub async fn run(client: &mut ControlClient<Channel>, args: &PsArgs) -> anyhow::Result<()> {
    // Resolve each name first so that an unknown service is an error, not an
    // empty table.
    let mut ids = Vec::new();
    for reference in &args.services {
        let service = super::get(client, reference).await?;
        // Why the cluster does nothing for it (Docker has no such state; the
        // table alone would show a service without tasks and no reason).
        if !service.error.is_empty() && !args.quiet {
            let name = service.spec.as_ref().map_or("", |s| s.name.as_str());
            eprintln!("service {name}: {}", service.error);
        }
        ids.push(service.id);
    }
    let request = ListTasksRequest {
        services: ids,
        ..Default::default()
    };
    let mut tasks = super::list_tasks(client, request).await?;
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    let hostnames: HashMap<String, String> = nodes
        .into_iter()
        .map(|n| (n.id, n.description.unwrap_or_default().hostname))
        .collect();
    order(&mut tasks);
    let rows: Vec<(bool, TaskRow)> = with_history_marks(&tasks)
        .into_iter()
        .map(|(history, t)| (history, TaskRow::new(t, &hostnames)))
        .collect();

    if args.quiet {
        for (_, row) in &rows {
            println!("{}", row.id);
        }
        return Ok(());
    }
    match args.format {
        Format::Json => {
            let plain: Vec<&TaskRow> = rows.iter().map(|(_, r)| r).collect();
            output::print_json(&plain)
        }
        Format::Table => {
            let now = shoal_proto::now_ms();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|(history, row)| row.table_row(*history, args.no_trunc, now))
                .collect();
            output::print_table(&TASK_HEADERS, &cells);
            Ok(())
        }
    }
}

/// The slot a task belongs to: its number, or its node for global services.
fn group(t: &Task) -> (&str, u64, &str) {
    let node = if t.slot == 0 { t.node_id.as_str() } else { "" };
    (t.service_name.as_str(), t.slot, node)
}

fn created(t: &Task) -> (i64, u64) {
    let m = t.meta.unwrap_or_default();
    (m.created_at, m.version)
}

/// By service, slot (or node), then newest first.
pub fn order(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| {
        group(a)
            .cmp(&group(b))
            .then_with(|| created(b).cmp(&created(a)))
    });
}

/// Marks every task after the first of its slot as history.
pub fn with_history_marks(tasks: &[Task]) -> Vec<(bool, &Task)> {
    let mut out = Vec::with_capacity(tasks.len());
    let mut previous: Option<(&str, u64, &str)> = None;
    for t in tasks {
        let g = group(t);
        out.push((previous == Some(g), t));
        previous = Some(g);
    }
    out
}

#[cfg(test)]
mod tests {
    use shoal_proto::TaskState;

    use super::*;
    use crate::testing::task;

    #[test]
    fn newest_first_within_each_slot() {
        let mut tasks: Vec<Task> = [(1, 1), (2, 1), (1, 9)]
            .into_iter()
            .map(|(slot, created)| task(slot, "n", created, TaskState::Running))
            .collect();
        order(&mut tasks);
        // (history, slot, created)
        let marked: Vec<(bool, u64, i64)> = with_history_marks(&tasks)
            .into_iter()
            .map(|(h, t)| (h, t.slot, t.meta.unwrap_or_default().created_at))
            .collect();
        assert_eq!(marked, [(false, 1, 9), (true, 1, 1), (false, 2, 1)]);
    }
}
