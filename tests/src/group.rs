//! Scenarios with several `shoal manager` processes (the fault suite of
//! issue 6): starting a three-manager group, the CLI on a manager's unix
//! socket, and what the managers say about themselves (the managers table,
//! `node ls`, services), each waited for with a deadline.

use std::collections::BTreeSet;
use std::time::Duration;

use shoal_proto::control_client::ControlClient;
use shoal_proto::{
    ContainerSpec, CreateServiceRequest, GetClusterRequest, GetClusterResponse,
    ListServicesRequest, ServiceSpec, TaskSpec,
};
use tonic::transport::Channel;

use crate::process::{ManagerProcess, manager_token, shoal_bin};
use crate::wait::eventually;

pub const WAIT: Duration = Duration::from_secs(30);

/// Three managers: the first leads, the others joined with the manager token.
pub async fn three_managers() -> [ManagerProcess; 3] {
    let first = ManagerProcess::start(&[]).await.unwrap();
    let token = manager_token(&mut first.control().await.unwrap())
        .await
        .unwrap();
    let second = ManagerProcess::join(&first, &token).await.unwrap();
    let third = ManagerProcess::join(&first, &token).await.unwrap();
    [first, second, third]
}

/// Run the CLI on `m`'s unix socket; (success, stdout, stderr).
pub async fn cli(m: &ManagerProcess, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(shoal_bin())
        .arg("--host")
        .arg(m.socket_host())
        .args(args)
        .output()
        .await
        .expect("run the shoal CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn ok(m: &ManagerProcess, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(m, args).await;
    assert!(
        success,
        "shoal {args:?} failed: {stderr}\nmanager log:\n{}",
        m.log()
    );
    stdout
}

pub async fn cluster_info(m: &ManagerProcess) -> Result<GetClusterResponse, String> {
    let mut c: ControlClient<Channel> = m.socket_control().await.map_err(|e| e.to_string())?;
    c.get_cluster(GetClusterRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

/// Manager `m`'s entry in the managers table.
pub async fn member(m: &ManagerProcess) -> shoal_proto::RaftMember {
    let info = cluster_info(m).await.unwrap();
    let addr = m.addr.to_string();
    info.cluster
        .unwrap()
        .managers
        .into_iter()
        .find(|member| member.addr == addr)
        .expect("the manager is in the managers table")
}

/// The node id of manager `m`, from the managers table.
pub async fn node_id(m: &ManagerProcess) -> String {
    member(m).await.node_id
}

/// The rows of `node ls --format json` on `m`.
async fn node_rows(m: &ManagerProcess) -> Result<Vec<serde_json::Value>, String> {
    let (success, stdout, stderr) = cli(m, &["node", "ls", "--format", "json"]).await;
    if !success {
        return Err(stderr);
    }
    serde_json::from_str(&stdout).map_err(|e| e.to_string())
}

/// `node ls --format json` on `m`: (node id, manager status) per manager.
pub async fn managers_listed(m: &ManagerProcess) -> Result<BTreeSet<(String, String)>, String> {
    Ok(node_rows(m)
        .await?
        .iter()
        .filter(|r| r["role"] == "manager")
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["manager_status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Wait until `node ls` on `m` shows exactly `want` (id, status) for managers.
pub async fn wait_listed(m: &ManagerProcess, want: &[(&str, &str)]) {
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|(id, status)| (id.to_string(), status.to_string()))
        .collect();
    eventually("node ls to show the managers", WAIT, || async {
        let seen = managers_listed(m).await?;
        if seen == want {
            Ok(())
        } else {
            Err(format!("{seen:?}, want {want:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
}

/// Wait for `m` to exit on its own; its log must say it was removed.
pub async fn wait_removed_exit(m: &mut ManagerProcess) {
    let status = eventually("the removed manager to stop", WAIT, || {
        let exited = m.exited();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
    assert!(!status.success(), "a removed manager exits with an error");
    assert!(m.log().contains("removed from the cluster"), "{}", m.log());
}

/// Every service name `m` lists, or why it could not answer.
pub async fn service_names(m: &ManagerProcess) -> Result<BTreeSet<String>, tonic::Status> {
    let mut c = m
        .socket_control()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let services = c
        .list_services(ListServicesRequest::default())
        .await?
        .into_inner()
        .services;
    Ok(services
        .iter()
        .filter_map(|s| Some(s.service.as_ref()?.spec.as_ref()?.name.clone()))
        .collect())
}

/// Create services `prefix-0`, `prefix-1`, ... through `control` until it
/// fails; returns the names acknowledged.
pub async fn write_until_failure(
    mut control: ControlClient<Channel>,
    prefix: String,
) -> Vec<String> {
    let mut acked = Vec::new();
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let request = CreateServiceRequest {
            spec: Some(tiny_service(name.clone())),
        };
        match tokio::time::timeout(Duration::from_secs(5), control.create_service(request)).await {
            Ok(Ok(_)) => acked.push(name),
            _ => break,
        }
    }
    acked
}

/// Agent nodes `m` lists as ready, by hostname.
pub async fn ready_agents(m: &ManagerProcess) -> Result<BTreeSet<String>, String> {
    Ok(node_rows(m)
        .await?
        .iter()
        .filter(|r| r["role"] == "worker" && r["status"] == "ready")
        .filter_map(|r| r["hostname"].as_str().map(str::to_string))
        .collect())
}

/// The Raft id of manager `m`, from the managers table.
pub async fn raft_id(m: &ManagerProcess) -> u64 {
    member(m).await.raft_id
}

/// A service with no replicas: one small object to write, nothing for the
/// orchestrator or the scheduler to do.
pub fn tiny_service(name: String) -> ServiceSpec {
    ServiceSpec {
        name,
        replicas: 0,
        task: Some(
            TaskSpec {
                container: Some(ContainerSpec {
                    image: "img:v1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
        ),
        ..Default::default()
    }
}

/// Wait until `m` lists the agent `hostname` as ready.
pub async fn wait_agent_ready(m: &ManagerProcess, hostname: &str) {
    eventually(&format!("agent {hostname} to be ready"), WAIT, || async {
        let ready = ready_agents(m).await?;
        if ready.contains(hostname) {
            Ok(())
        } else {
            Err(format!("{ready:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nmanager log:\n{}", m.log()));
}
