//! `shoal node ...`: list, inspect and update nodes through the `Control` API.

use anyhow::bail;
use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    GetClusterRequest, GetNodeRequest, ListNodesRequest, Node, NodeAvailability, NodeRole,
    UpdateNodeRequest, validate,
};
use tonic::transport::Channel;

use crate::args::{AvailabilityArg, ListArgs, NodeCommand, NodeInspectArgs, NodeUpdateArgs};
use crate::output::{self, NODE_HEADERS, NodeRow};
use crate::{connect, inspect};

type Client = ControlClient<Channel>;

pub async fn run(host: Option<&str>, command: NodeCommand) -> anyhow::Result<()> {
    let mut client = connect::control(host).await?;
    match command {
        NodeCommand::Ls(args) => list(&mut client, &args).await,
        NodeCommand::Inspect(args) => inspect_nodes(&mut client, &args).await,
        NodeCommand::Update(args) => update(&mut client, &args).await,
        NodeCommand::Rm(args) => remove(&mut client, &args).await,
        NodeCommand::Demote(args) => demote(&mut client, &args.nodes).await,
        NodeCommand::Promote(args) => promote(&mut client, &args.nodes).await,
    }
}

/// How long `node demote` keeps retrying while leadership moves.
const DEMOTE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// `node demote`: each manager leaves the raft group, as in `docker node
/// demote`. Demoting the leader first hands leadership over; the manager
/// answering then says "retry", which is done here.
async fn demote(client: &mut Client, nodes: &[String]) -> anyhow::Result<()> {
    for reference in nodes {
        let deadline = tokio::time::Instant::now() + DEMOTE_PATIENCE;
        loop {
            match set_role(client, reference, NodeRole::Worker).await {
                Ok(()) => break,
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(message = status.message(), "demote: retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
                Err(status) => bail!("{reference}: {}", status.message()),
            }
        }
        println!("Manager {reference} demoted in the cluster.");
    }
    Ok(())
}

/// `node promote`: an agent cannot become a manager in place; the manager
/// says how to add one, and that is the error shown.
async fn promote(client: &mut Client, nodes: &[String]) -> anyhow::Result<()> {
    for reference in nodes {
        let node = get(client, reference).await?;
        if node.manager_status.is_some() {
            println!("Node {reference} is already a manager.");
            continue;
        }
        if let Err(status) = set_role(client, reference, NodeRole::Manager).await {
            bail!("{reference}: {}", status.message());
        }
    }
    Ok(())
}

async fn set_role(
    client: &mut Client,
    reference: &str,
    role: NodeRole,
) -> Result<(), tonic::Status> {
    let node = client
        .get_node(GetNodeRequest {
            node: reference.to_string(),
        })
        .await?
        .into_inner()
        .node
        .ok_or_else(|| tonic::Status::not_found(format!("node {reference} not found")))?;
    let mut spec = node.spec.clone().unwrap_or_default();
    spec.role = role as i32;
    client
        .update_node(UpdateNodeRequest {
            node: node.id.clone(),
            version: node.meta.unwrap_or_default().version,
            spec: Some(spec),
        })
        .await?;
    Ok(())
}

/// `node rm`: like `docker node rm`, each node in turn, its id printed once
/// removed; the first refusal is the error after the others were tried.
async fn remove(client: &mut Client, args: &crate::args::NodeRemoveArgs) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for reference in &args.nodes {
        match client
            .remove_node(shoal_proto::RemoveNodeRequest {
                node: reference.clone(),
                force: args.force,
            })
            .await
        {
            Ok(_) => println!("{reference}"),
            Err(status) => {
                eprintln!("Error: {reference}: {}", status.message());
                failed.push(reference.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not remove {}", failed.join(", "));
    }
    Ok(())
}

async fn get(client: &mut Client, reference: &str) -> anyhow::Result<Node> {
    let response = client
        .get_node(GetNodeRequest {
            node: reference.to_string(),
        })
        .await?
        .into_inner();
    match response.node {
        Some(node) => Ok(node),
        None => bail!("node {reference} not found"),
    }
}

async fn list(client: &mut Client, args: &ListArgs) -> anyhow::Result<()> {
    let mut nodes = client
        .list_nodes(ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    // The leader's address marks its node as "Leader"; without it every
    // manager reads "Reachable", which is still true.
    let leader_addr = match client.get_cluster(GetClusterRequest {}).await {
        Ok(r) => r.into_inner().leader_addr,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the cluster's leader");
            String::new()
        }
    };
    nodes.sort_by_key(|n| {
        n.description
            .as_ref()
            .map(|d| d.hostname.clone())
            .unwrap_or_default()
    });
    let rows: Vec<NodeRow> = nodes
        .iter()
        .map(|n| NodeRow::new(n, &leader_addr))
        .collect();
    output::print_list(
        &rows,
        args.quiet,
        args.format,
        &NODE_HEADERS,
        |r| &r.id,
        NodeRow::table_row,
    )
}

async fn inspect_nodes(client: &mut Client, args: &NodeInspectArgs) -> anyhow::Result<()> {
    let mut values = Vec::new();
    for reference in &args.nodes {
        values.push(inspect::node(&get(client, reference).await?));
    }
    output::print_json(&values)
}

async fn update(client: &mut Client, args: &NodeUpdateArgs) -> anyhow::Result<()> {
    let node = get(client, &args.node).await?;
    let mut spec = node.spec.clone().unwrap_or_default();
    if let Some(a) = args.availability {
        spec.availability = match a {
            AvailabilityArg::Active => NodeAvailability::Active,
            AvailabilityArg::Pause => NodeAvailability::Pause,
            AvailabilityArg::Drain => NodeAvailability::Drain,
        } as i32;
    }
    for key in &args.label_rm {
        if spec.labels.remove(key).is_none() {
            bail!("--label-rm: node {} has no label {key:?}", args.node);
        }
    }
    spec.labels.extend(args.label_add.iter().cloned());
    validate::node_spec(&spec)?;
    let request = UpdateNodeRequest {
        node: node.id.clone(),
        version: node.meta.unwrap_or_default().version,
        spec: Some(spec),
    };
    client.update_node(request).await?;
    println!("{}", args.node);
    Ok(())
}

/// `shoal join-token worker|manager [--rotate] [-q]`, worded like Docker's.
pub async fn join_token(
    host: Option<&str>,
    args: crate::args::JoinTokenArgs,
) -> anyhow::Result<()> {
    use crate::args::RoleArg;
    let role = match args.role {
        RoleArg::Worker => shoal_proto::NodeRole::Worker,
        RoleArg::Manager => shoal_proto::NodeRole::Manager,
    };
    let mut client = connect::control(host).await?;
    let token = client
        .get_join_token(shoal_proto::GetJoinTokenRequest {
            role: role as i32,
            rotate: args.rotate,
        })
        .await?
        .into_inner()
        .token;
    if args.quiet {
        println!("{token}");
        return Ok(());
    }
    let name = if role == shoal_proto::NodeRole::Worker {
        "worker"
    } else {
        "manager"
    };
    if args.rotate {
        println!("Successfully rotated {name} join token.\n");
    }
    match role {
        shoal_proto::NodeRole::Worker => println!(
            "To add a worker to this cluster, run the following command:\n\n    shoal agent --manager MANAGER_ADDR --token {token}\n"
        ),
        shoal_proto::NodeRole::Manager => println!(
            "To add a manager to this cluster, run the following command on its machine:\n\n    shoal manager --join LEADER_ADDR --token {token} --listen-addr ADDR --advertise-addr ADDR\n"
        ),
    }
    Ok(())
}
