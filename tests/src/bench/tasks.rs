//! Following every task's state from outside the manager, through the `Watch`
//! API, to time when all of them were created, assigned and running.
//!
//! Each task's highest observed state is kept (states only move forward), so
//! events may arrive in any order and a resync from `ListTasks` merges in
//! safely. When the watch stream falls behind (the manager drops a lagging
//! watcher), the tracker subscribes again and re-reads every task once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_agent::AgentStats;
use shoal_proto::store_object::Object;
use shoal_proto::watch_client::WatchClient;
use shoal_proto::{ListTasksRequest, Task, TaskState, WatchRequest};

use super::figures::{figure, note};

/// Counts of tasks by the furthest state they reached.
#[derive(Debug, Default)]
pub struct TaskCounts {
    furthest: HashMap<String, i32>,
    pub assigned: usize,
    pub running: usize,
}

impl TaskCounts {
    /// Merge one observation of a task.
    pub fn observe(&mut self, id: &str, state: i32) {
        let assigned = TaskState::Assigned as i32;
        let running = TaskState::Running as i32;
        let before = self.furthest.get(id).copied();
        if before.is_some_and(|b| b >= state) {
            return;
        }
        let was = before.unwrap_or(i32::MIN);
        if was < assigned && state >= assigned {
            self.assigned += 1;
        }
        // RUNNING exactly: a task that went past it (failed, shut down) does not
        // run; the fake runtime keeps them running, so this stays simple.
        if was < running && state >= running {
            self.running += 1;
        }
        self.furthest.insert(id.to_string(), state);
    }

    pub fn created(&self) -> usize {
        self.furthest.len()
    }
}

/// When each milestone was first seen.
#[derive(Debug, Default, Clone)]
pub struct Milestones {
    pub created: Option<Instant>,
    pub assigned: Option<Instant>,
    pub running: Option<Instant>,
    /// When a tenth, half and nine tenths of the tasks had reached their
    /// nodes (the hollow nodes' count only): the shape of the burst.
    pub assigned_share: [Option<Instant>; 3],
    pub resyncs: u32,
    /// Task events the watch delivered: the manager's writes per task, in all.
    pub events: u64,
}

/// Follow task events until `expected` tasks run, or `timeout`. `ready` is told
/// once the watch is subscribed, so that no event of the measured phase is missed.
pub async fn follow(
    addr: SocketAddr,
    admin: std::path::PathBuf,
    expected: usize,
    timeout: Duration,
    ready: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<Milestones> {
    let mut counts = TaskCounts::default();
    let mut marks = Milestones::default();
    let mut ready = Some(ready);
    let deadline = Instant::now() + timeout;
    loop {
        let mut stream = watch_tasks(addr, &admin).await?;
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        } else {
            // A new subscription after a lag: catch up on what was missed.
            marks.resyncs += 1;
            for task in list_tasks(addr, &admin).await? {
                observe(&mut counts, &task);
            }
            mark(&counts, expected, &mut marks);
        }
        loop {
            if marks.running.is_some() {
                return Ok(marks);
            }
            let next = tokio::time::timeout_at(deadline.into(), stream.next()).await;
            let Ok(next) = next else {
                anyhow::bail!(
                    "timed out: {} tasks created, {} assigned, {} running of {expected}",
                    counts.created(),
                    counts.assigned,
                    counts.running
                );
            };
            match next {
                Some(Ok(msg)) => {
                    marks.events += msg.events.len() as u64;
                    for event in msg.events {
                        if let Some(Object::Task(task)) = event.object.and_then(|o| o.object) {
                            observe(&mut counts, &task);
                        }
                    }
                    mark(&counts, expected, &mut marks);
                }
                Some(Err(status)) => {
                    note(format!(
                        "watch ended ({}); subscribing again",
                        status.message()
                    ));
                    break;
                }
                None => {
                    note("watch stream closed; subscribing again");
                    break;
                }
            }
        }
    }
}

fn observe(counts: &mut TaskCounts, task: &Task) {
    let state = task.status.as_ref().map(|s| s.state).unwrap_or_default();
    counts.observe(&task.id, state);
}

fn mark(counts: &TaskCounts, expected: usize, marks: &mut Milestones) {
    let now = Instant::now();
    if marks.created.is_none() && counts.created() >= expected {
        marks.created = Some(now);
    }
    if marks.assigned.is_none() && counts.assigned >= expected {
        marks.assigned = Some(now);
    }
    if marks.running.is_none() && counts.running >= expected {
        marks.running = Some(now);
    }
}

/// How long the watch may take to connect: the manager is busiest exactly
/// when it resyncs.
const PATIENCE: Duration = Duration::from_secs(60);

async fn watch_tasks(
    addr: SocketAddr,
    admin: &std::path::Path,
) -> anyhow::Result<tonic::Streaming<shoal_proto::WatchMessage>> {
    let channel = crate::process::channel_patiently(addr, admin, PATIENCE).await?;
    let mut client = WatchClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    Ok(client
        .watch(WatchRequest {
            kinds: vec!["task".into()],
        })
        .await?
        .into_inner())
}

/// The shares of the tasks at which `Milestones::assigned_share` is marked.
pub const ASSIGNED_SHARES: [(u64, u64); 3] = [(1, 10), (1, 2), (9, 10)];

/// The milestones as the hollow nodes count them into `stats`: every task
/// received by its node (the dispatcher sends committed assignments only) and
/// every task's RUNNING report acknowledged (the manager acknowledges once it
/// is committed). The manager does no work for this observer.
pub async fn count_in_agents(
    stats: Arc<AgentStats>,
    expected: Arc<AtomicUsize>,
    timeout: Duration,
) -> anyhow::Result<Milestones> {
    let mut marks = Milestones::default();
    // `expected` shrinks when the manager refuses a service (the cluster's
    // task cap): the shares follow it.
    let all_running = stats.wait_until(|s| {
        let expected = expected.load(Ordering::Relaxed) as u64;
        let received = s.tasks_received();
        let shares = ASSIGNED_SHARES.map(|(n, d)| expected * n / d);
        for (mark, share) in marks.assigned_share.iter_mut().zip(shares) {
            if mark.is_none() && received >= share {
                *mark = Some(Instant::now());
            }
        }
        if marks.assigned.is_none() && received >= expected {
            marks.assigned = Some(Instant::now());
        }
        s.running_confirmed() >= expected
    });
    if tokio::time::timeout(timeout, all_running).await.is_err() {
        anyhow::bail!(
            "timed out: {} tasks received by their nodes, {} RUNNING reports acknowledged, of {}",
            stats.tasks_received(),
            stats.running_confirmed(),
            expected.load(Ordering::Relaxed)
        );
    }
    marks.running = Some(Instant::now());
    Ok(marks)
}

/// Check with the manager what the hollow nodes counted: it holds exactly
/// `expected` tasks RUNNING and meant to run. Tasks beyond those are ones
/// placed again after their node was marked DOWN (`nodes_marked_down_*`
/// counts such nodes); their old copies count in the hollow nodes too, as they
/// did on the watch. Replacements may still be under way when the hollow
/// nodes have counted enough: the check asks again until the cluster has
/// converged, for up to [`CONVERGE`], and says how long that took.
pub async fn check_all_running(
    addr: SocketAddr,
    admin: &std::path::Path,
    expected: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let tasks = list_tasks(addr, admin).await?;
        // Copies left on a node marked DOWN are told to stop (their desired
        // state), and report it once their node is back: not the tasks asked for.
        let running = tasks
            .iter()
            .filter(|t| {
                t.desired_state() == TaskState::Running
                    && t.status.as_ref().map(|s| s.state()) == Some(TaskState::Running)
            })
            .count();
        if running == expected {
            figure("converged_after_ms", started.elapsed().as_millis());
            if tasks.len() > expected {
                note(format!(
                    "the manager holds {} tasks: {} were placed again after their node was marked DOWN",
                    tasks.len(),
                    tasks.len() - expected
                ));
            }
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < CONVERGE,
            "the hollow nodes counted {expected} tasks running, but after {}s the manager \
             holds {} tasks of which {running} RUNNING and meant to run",
            CONVERGE.as_secs(),
            tasks.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// How long [`check_all_running`] waits for the cluster to converge.
const CONVERGE: Duration = Duration::from_secs(120);

/// Every task, a page at a time (as `service ps` reads them): one reply of
/// 200,000 tasks would cost the manager hundreds of MiB for the check alone.
async fn list_tasks(addr: SocketAddr, admin: &std::path::Path) -> anyhow::Result<Vec<Task>> {
    let channel = crate::process::channel_patiently(addr, admin, PATIENCE).await?;
    let mut c = shoal_proto::control_client::ControlClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024);
    let mut tasks = Vec::new();
    let mut after = String::new();
    loop {
        let request = ListTasksRequest {
            paged: true,
            after,
            ..Default::default()
        };
        // A manager busy with its nodes may not confirm its leadership in
        // time for a read ("no quorum"): that is worth a retry.
        let mut attempts = 0;
        let page = loop {
            match c.list_tasks(request.clone()).await {
                Ok(page) => break page.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable && attempts < 10 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(status) => return Err(status.into()),
            }
        };
        tasks.extend(page.tasks);
        if page.next.is_empty() {
            return Ok(tasks);
        }
        after = page.next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_task_once_whatever_the_order() {
        let mut c = TaskCounts::default();
        c.observe("a", TaskState::New as i32);
        c.observe("a", TaskState::Pending as i32);
        c.observe("b", TaskState::Running as i32); // first seen already running
        c.observe("a", TaskState::Assigned as i32);
        c.observe("a", TaskState::Pending as i32); // a stale event changes nothing
        c.observe("b", TaskState::Assigned as i32);
        assert_eq!((c.created(), c.assigned, c.running), (2, 2, 1));
        c.observe("a", TaskState::Running as i32);
        c.observe("a", TaskState::Running as i32);
        assert_eq!((c.created(), c.assigned, c.running), (2, 2, 2));
    }

    #[test]
    fn milestones_are_marked_once() {
        let mut c = TaskCounts::default();
        let mut marks = Milestones::default();
        c.observe("a", TaskState::Assigned as i32);
        mark(&c, 2, &mut marks);
        assert!(marks.created.is_none() && marks.assigned.is_none());
        c.observe("b", TaskState::Assigned as i32);
        mark(&c, 2, &mut marks);
        let first = marks.assigned;
        assert!(first.is_some() && marks.created.is_some() && marks.running.is_none());
        mark(&c, 2, &mut marks);
        assert_eq!(marks.assigned, first);
    }
}
