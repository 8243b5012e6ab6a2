//! Several release managers forming one Raft group on loopback (issue 6):
//! the first founds the cluster, the others join it with the manager token.
//! The harness asks each manager's `GetCluster` (answered from its own store
//! and Raft status, never relayed) who leads, in which term, and how far it
//! has applied, to tell when the group is at rest.

use std::time::Duration;

use shoal_proto::control_client::ControlClient;
use shoal_proto::{GetClusterRequest, ListNodesRequest, Reachability};
use tonic::transport::Channel;

use super::daemons::BenchManager;
use crate::process::manager_token;
use crate::wait::eventually;

/// `count` managers of one cluster; all killed when dropped.
pub struct BenchCluster {
    pub managers: Vec<BenchManager>,
}

/// What one manager says of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Empty while it knows no leader.
    pub leader_addr: String,
    pub term: u64,
    /// The Raft index it has applied.
    pub applied: u64,
    /// Managers in the cluster object.
    pub members: usize,
}

/// The group at rest: every running manager follows `leader` in `term`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Index into [`BenchCluster::managers`].
    pub leader: usize,
    pub term: u64,
}

impl BenchCluster {
    /// Start `count` managers with `extra_args` logging at `log_filter`: the
    /// first founds the cluster and the others join through it, one at a
    /// time; then wait until all follow one leader (the founder).
    pub async fn start(
        count: usize,
        extra_args: &[&str],
        log_filter: &str,
    ) -> anyhow::Result<BenchCluster> {
        anyhow::ensure!(count >= 1, "--managers must be at least 1");
        let founder = BenchManager::start(extra_args, log_filter).await?;
        let mut managers = vec![founder];
        if count > 1 {
            let token = manager_token(&mut managers[0].control().await?).await?;
            for _ in 1..count {
                let joined =
                    BenchManager::join(&managers[0], &token, extra_args, log_filter).await?;
                managers.push(joined);
            }
        }
        let cluster = BenchCluster { managers };
        cluster.wait_settled(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Where the manager at `addr` sits in [`Self::managers`].
    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.managers
            .iter()
            .position(|m| m.addr.to_string() == addr)
    }

    /// Wait until every running manager names the same running leader in the
    /// same term, counts every manager as a member, and has applied at least
    /// what the leader had applied when they first agreed, and the leader
    /// counts every manager as a reachable voter (a joining manager is a
    /// learner until it has caught up): the whole group is up and caught up.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<Settled> {
        let catch_up_to = std::sync::Mutex::new(None::<u64>);
        let what = "every manager to follow one leader and catch up";
        let settled = eventually(what, timeout, || async {
            let mut views = Vec::new();
            for (i, m) in self.managers.iter().enumerate() {
                if m.is_running() {
                    let view = group_view(&mut m.control().await.map_err(|e| e.to_string())?)
                        .await
                        .map_err(|e| format!("manager {}: {e}", m.addr))?;
                    views.push((i, view));
                }
            }
            let (_, first) = &views[0];
            let agreed = views
                .iter()
                .all(|(_, v)| v.leader_addr == first.leader_addr && v.term == first.term);
            let leader = self
                .index_of(&first.leader_addr)
                .filter(|&i| self.managers[i].is_running());
            let all_members = views.iter().all(|(_, v)| v.members == self.managers.len());
            let (Some(leader), true, true) = (leader, agreed, all_members) else {
                return Err(format!("views: {views:?}"));
            };
            let leader_applied = views
                .iter()
                .find(|(i, _)| *i == leader)
                .map(|(_, v)| v.applied)
                .unwrap_or_default();
            let target = *catch_up_to
                .lock()
                .expect("lock")
                .get_or_insert(leader_applied);
            if !views.iter().all(|(_, v)| v.applied >= target) {
                return Err(format!("catching up to index {target}; views: {views:?}"));
            }
            let mut control = self.managers[leader]
                .control()
                .await
                .map_err(|e| e.to_string())?;
            let healthy = healthy_voters(&mut control)
                .await
                .map_err(|e| e.to_string())?;
            if healthy < self.managers.len() {
                return Err(format!(
                    "{healthy} of {} managers are reachable voters for the leader",
                    self.managers.len()
                ));
            }
            Ok(Settled {
                leader,
                term: first.term,
            })
        })
        .await;
        settled.map_err(|e| {
            let tails: Vec<String> = self.managers.iter().map(|m| m.log_tail()).collect();
            e.context(tails.join("\n"))
        })
    }
}

/// Managers that the manager behind `control` (the leader) lists as reachable
/// voters.
async fn healthy_voters(control: &mut ControlClient<Channel>) -> Result<usize, tonic::Status> {
    let nodes = control
        .list_nodes(ListNodesRequest {})
        .await?
        .into_inner()
        .nodes;
    Ok(nodes
        .iter()
        .filter_map(|n| n.manager_status.as_ref())
        .filter(|m| m.voter && m.reachability() == Reachability::Reachable)
        .count())
}

/// What the manager behind `control` says of the group.
pub async fn group_view(control: &mut ControlClient<Channel>) -> Result<GroupView, tonic::Status> {
    let info = control
        .get_cluster(GetClusterRequest {})
        .await?
        .into_inner();
    Ok(GroupView {
        leader_addr: info.leader_addr,
        term: info.raft_term,
        applied: info.raft_index,
        members: info.cluster.map(|c| c.managers.len()).unwrap_or_default(),
    })
}
