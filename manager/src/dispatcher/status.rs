//! Task status reports: screening (a node reports only its own tasks, states
//! only move forward) and the batcher that commits the reports of all agents
//! in few, large proposals.
//!
//! One Raft entry per report would cap the cluster at a few thousand status
//! changes per second (an fsync each); the batcher takes whatever queued up
//! while the previous commit was in flight, merges reports about the same task
//! and commits them together, as [`Action::Report`]s: the task id and the
//! status, applied to the task as it is at commit. Each RPC replies once its
//! own updates are committed, so an agent that got `Ok` knows its report is
//! durable.

use std::collections::HashMap;

use futures::future::join_all;
use shoal_proto::{
    TaskState, TaskStatus, TaskStatusUpdate, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::{Dispatcher, Running, store_status};
use crate::auth::Caller;
use crate::store::{Action, MemState, Store, StoreError};

/// Reports (RPCs) queued towards the batcher before senders wait.
pub(super) const QUEUE_CAPACITY: usize = 1024;
/// Task updates gathered into one round of proposals.
const MAX_ROUND: usize = 4096;
/// Reports per proposal: each is a task id and a status (a hundred bytes or
/// so), so an entry stays far below the size sled stores out of line (a
/// quarter of its segment size).
const MAX_PER_PROPOSAL: usize = 1024;

/// One RPC's screened updates, waiting for their commit.
pub(super) struct StatusRequest {
    updates: Vec<(String, TaskStatus)>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// Serve one `ReportTaskStatus` stream: answer each request in order once it
/// is committed, until the agent closes the stream, the reply cannot be sent,
/// a request fails (its error is the stream's last message), or the session
/// the first request named ends.
pub(super) async fn serve_stream(
    dispatcher: Dispatcher,
    caller: Caller,
    mut reports: Streaming<UpdateTaskStatusRequest>,
    replies: mpsc::Sender<Result<UpdateTaskStatusResponse, Status>>,
) {
    let mut session: Option<CancellationToken> = None;
    loop {
        let ended = async {
            match &session {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let request = tokio::select! {
            biased;
            _ = ended => {
                let _ = replies.send(Err(Status::unavailable("the session ended"))).await;
                return;
            }
            r = reports.message() => match r {
                Ok(Some(request)) => request,
                // The agent closed the stream, or went away.
                Ok(None) | Err(_) => return,
            },
        };
        if session.is_none()
            && let Ok((_, token)) = dispatcher.session_of(&caller, &request.session_id)
        {
            session = Some(token);
        }
        let reply = dispatcher
            .report(&caller, request)
            .await
            .map(|()| UpdateTaskStatusResponse {});
        let failed = reply.is_err();
        if replies.send(reply).await.is_err() || failed {
            return;
        }
    }
}

/// The `UpdateTaskStatus` RPC for `node_id`: queue the acceptable updates,
/// wait for their commit, then refuse the updates about other nodes' tasks.
pub(super) async fn update(
    store: &Store,
    running: &Running,
    node_id: &str,
    updates: Vec<TaskStatusUpdate>,
) -> Result<(), Status> {
    for (i, u) in updates.iter().enumerate() {
        if u.task_id.is_empty() {
            return Err(Status::invalid_argument(format!(
                "updates[{i}].task_id: must not be empty"
            )));
        }
        if u.status.is_none() {
            return Err(Status::invalid_argument(format!(
                "updates[{i}].status: missing for task {}",
                u.task_id
            )));
        }
    }
    let screened = store.read(|s| screen(s, node_id, updates));
    if !screened.accepted.is_empty() {
        let (reply, done) = oneshot::channel();
        let request = StatusRequest {
            updates: screened.accepted,
            reply,
        };
        let stopped =
            || Status::unavailable("the dispatcher stopped; report the status to the new leader");
        running.status.send(request).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?.map_err(store_status)?;
    }
    if !screened.refused.is_empty() {
        return Err(Status::permission_denied(format!(
            "node {node_id} may only report the status of its own tasks; refused: task {}",
            screened.refused.join(", task ")
        )));
    }
    Ok(())
}

/// Updates split by what may be done with them.
#[derive(Debug, Default, PartialEq)]
struct Screened {
    accepted: Vec<(String, TaskStatus)>,
    /// Tasks of other nodes.
    refused: Vec<String>,
}

/// Sort `node_id`'s updates: its own tasks moving forward are accepted, other
/// nodes' tasks refused. Unknown tasks (perhaps reaped already) and backward
/// moves (a late, reordered report) are dropped silently: they are not errors
/// the agent could fix.
fn screen(state: &MemState, node_id: &str, updates: Vec<TaskStatusUpdate>) -> Screened {
    let mut out = Screened::default();
    for u in updates {
        let (Some(task), Some(status)) = (state.task(&u.task_id), u.status) else {
            continue;
        };
        if task.node_id != node_id {
            out.refused.push(u.task_id);
        } else if moves_forward(task.status.as_ref(), &status) {
            out.accepted.push((u.task_id, status));
        }
    }
    out
}

fn moves_forward(current: Option<&TaskStatus>, new: &TaskStatus) -> bool {
    let from = current.map(|s| s.state()).unwrap_or(TaskState::New);
    shoal_proto::state::may_advance(from, new.state())
}

/// Commit queued reports until `token` is cancelled.
pub(super) async fn run_batcher(
    store: Store,
    mut queue: mpsc::Receiver<StatusRequest>,
    token: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = token.cancelled() => break,
            r = queue.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        let mut count = first.updates.len();
        let mut round = vec![first];
        while count < MAX_ROUND {
            match queue.try_recv() {
                Ok(r) => {
                    count += r.updates.len();
                    round.push(r);
                }
                Err(_) => break,
            }
        }
        let merged = merge(
            round
                .iter_mut()
                .flat_map(|r| std::mem::take(&mut r.updates)),
        );
        let result = tokio::select! {
            _ = token.cancelled() => Err(StoreError::Stopped),
            r = commit(&store, merged) => r,
        };
        for request in round {
            let _ = request.reply.send(result.clone());
        }
    }
    // Whoever is still queued hears that the dispatcher stopped (their reply
    // senders drop), and reports again to the next leader.
    queue.close();
}

/// One status per task: the furthest state wins; among equal states the later
/// report (it may carry a newer message or exit code).
fn merge(updates: impl Iterator<Item = (String, TaskStatus)>) -> HashMap<String, TaskStatus> {
    let mut merged: HashMap<String, TaskStatus> = HashMap::new();
    for (id, status) in updates {
        match merged.get(&id) {
            Some(kept) if kept.state() > status.state() => {}
            _ => {
                merged.insert(id, status);
            }
        }
    }
    merged
}

/// Commit `merged` as report actions, in proposals of bounded size sent
/// together. A report carries only the task's id and status: the raft task
/// applies it to the task as it is then, so nothing is read or copied here and
/// no concurrent write can make it conflict. Reports of tasks reaped since, or
/// overtaken by a further state, are refused by apply and dropped.
async fn commit(store: &Store, merged: HashMap<String, TaskStatus>) -> Result<(), StoreError> {
    let mut proposals = Vec::new();
    let mut rest = merged.into_iter().peekable();
    while rest.peek().is_some() {
        let actions = rest
            .by_ref()
            .take(MAX_PER_PROPOSAL)
            .map(|(task_id, status)| Action::Report { task_id, status })
            .collect();
        proposals.push(store.propose_each(actions));
    }
    for result in join_all(proposals).await {
        for (_, err) in result?.refused {
            tracing::debug!(error = %err, "status report dropped");
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
