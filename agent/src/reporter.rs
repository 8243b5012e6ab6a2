//! Task status reporting: controllers drop their latest [`TaskStatus`] here, and
//! the session sends what accumulated as one request per batch, on its
//! `ReportTaskStatus` stream.
//!
//! Only the latest status of each task is kept (states only move forward, so
//! the newest one says everything). Updates survive a lost session: a batch the
//! manager did not acknowledge goes back, unless a newer status replaced it.
//! The reporter also carries the agent's [`AgentStats`], which the worker
//! and the acknowledgements of this outbox count into.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{
    TaskState, TaskStatus, TaskStatusUpdate, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::stats::AgentStats;

/// How long updates are collected before a batch goes out: long enough for a
/// burst of transitions (a service of 100 tasks starting) to share one RPC.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// At most this many updates per RPC, to stay far below gRPC's message limit.
const MAX_BATCH: usize = 2_000;

/// The outbox of task statuses, shared by all controllers of an agent.
#[derive(Debug, Default)]
pub struct Reporter {
    // A std mutex: the critical sections are map operations, never held across
    // an await, and controllers report from synchronous code.
    pending: Mutex<HashMap<String, TaskStatus>>,
    notify: Notify,
    stats: Arc<AgentStats>,
}

impl Reporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A reporter that counts into `stats` (which others may share).
    pub fn with_stats(stats: Arc<AgentStats>) -> Self {
        Reporter {
            stats,
            ..Self::default()
        }
    }

    /// The agent's counters.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// Queues `status` for `task_id`, replacing any unsent one.
    pub fn report(&self, task_id: &str, status: TaskStatus) {
        self.lock().insert(task_id.to_string(), status);
        self.notify.notify_one();
    }

    /// The unsent status of a task, if any.
    pub fn pending(&self, task_id: &str) -> Option<TaskStatus> {
        self.lock().get(task_id).cloned()
    }

    /// Number of tasks with an unsent status.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` unsent updates.
    pub fn take(&self, max: usize) -> Vec<TaskStatusUpdate> {
        let mut pending = self.lock();
        if pending.len() <= max {
            return pending
                .drain()
                .map(|(task_id, status)| TaskStatusUpdate {
                    task_id,
                    status: Some(status),
                })
                .collect();
        }
        let ids: Vec<String> = pending.keys().take(max).cloned().collect();
        ids.into_iter()
            .filter_map(|id| {
                let status = pending.remove(&id)?;
                Some(TaskStatusUpdate {
                    task_id: id,
                    status: Some(status),
                })
            })
            .collect()
    }

    /// Returns updates that could not be sent; a status reported since wins.
    pub fn put_back(&self, updates: Vec<TaskStatusUpdate>) {
        let mut pending = self.lock();
        for update in updates {
            if let Some(status) = update.status {
                pending.entry(update.task_id).or_insert(status);
            }
        }
        drop(pending);
        self.notify.notify_one();
    }

    /// Resolves when a status may have been reported since the last call.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskStatus>> {
        // A poisoned map still holds valid statuses: a panicking reporter cannot
        // leave it half-updated.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends queued statuses to the manager for as long as the session lives;
/// returns the error that ended it. A batch in flight when the session ends (the
/// error, or this future being dropped) goes back to the queue.
///
/// The batches go on one `ReportTaskStatus` stream, opened with the first:
/// each is answered once committed, and the next goes out after the answer,
/// as with one `UpdateTaskStatus` call per batch but without a new HTTP/2
/// stream, header block and authentication each time. A manager that does not
/// know the stream gets one `UpdateTaskStatus` call per batch instead.
pub(crate) async fn send_loop(
    reporter: &Reporter,
    mut client: DispatcherClient<Channel>,
    session_id: String,
) -> tonic::Status {
    let mut stream: Option<StatusStream> = None;
    let mut unary = false;
    loop {
        if reporter.is_empty() {
            reporter.changed().await;
        }
        tokio::time::sleep(BATCH_WINDOW).await;
        let batch = InFlight {
            reporter,
            updates: reporter.take(MAX_BATCH),
        };
        if batch.updates.is_empty() {
            continue;
        }
        let request = UpdateTaskStatusRequest {
            session_id: session_id.clone(),
            updates: batch.updates.clone(),
        };
        reporter.stats.sent_statuses();
        let sent = match stream.as_mut() {
            _ if unary => client.update_task_status(request).await.map(|_| ()),
            Some(open) => open.send(request).await,
            None => match StatusStream::open(&mut client).await {
                Ok(open) => stream.insert(open).send(request).await,
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    unary = true;
                    client.update_task_status(request).await.map(|_| ())
                }
                Err(status) => Err(status),
            },
        };
        if let Err(status) = sent {
            return status;
        }
        let running = batch
            .updates
            .iter()
            .filter(|u| u.status.as_ref().map(TaskStatus::state) == Some(TaskState::Running))
            .count();
        reporter.stats.confirmed_running(running as u64);
        batch.acknowledged();
    }
}

/// An open `ReportTaskStatus` stream: requests out, one answer each back.
struct StatusStream {
    requests: mpsc::Sender<UpdateTaskStatusRequest>,
    answers: tonic::Streaming<UpdateTaskStatusResponse>,
}

impl StatusStream {
    async fn open(client: &mut DispatcherClient<Channel>) -> Result<Self, tonic::Status> {
        let (requests, outgoing) = mpsc::channel(1);
        let answers = client
            .report_task_status(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        Ok(StatusStream { requests, answers })
    }

    /// Send one batch and wait for its answer: Ok once it is committed.
    async fn send(&mut self, request: UpdateTaskStatusRequest) -> Result<(), tonic::Status> {
        let closed = || tonic::Status::unavailable("the manager closed the status stream");
        self.requests.send(request).await.map_err(|_| closed())?;
        match self.answers.message().await? {
            Some(_) => Ok(()),
            None => Err(closed()),
        }
    }
}

/// A batch being sent: back to the queue when dropped unacknowledged. The
/// manager may have applied it anyway; sending a status twice is harmless.
struct InFlight<'a> {
    reporter: &'a Reporter,
    updates: Vec<TaskStatusUpdate>,
}

impl InFlight<'_> {
    fn acknowledged(mut self) {
        self.updates.clear();
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.updates.is_empty() {
            self.reporter.put_back(std::mem::take(&mut self.updates));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn the_latest_status_of_a_task_wins() {
        let r = Reporter::new();
        r.report("a", status(TaskState::Accepted));
        r.report("a", status(TaskState::Running));
        r.report("b", status(TaskState::Accepted));
        let mut batch = r.take(10);
        batch.sort_by(|x, y| x.task_id.cmp(&y.task_id));
        assert_eq!(batch.len(), 2);
        assert_eq!(
            batch[0].status.as_ref().unwrap().state(),
            TaskState::Running
        );
        assert!(r.is_empty());
    }

    #[test]
    fn unsent_updates_go_back_unless_superseded() {
        let r = Reporter::new();
        r.report("a", status(TaskState::Running));
        r.report("b", status(TaskState::Running));
        let batch = r.take(10);
        r.report("a", status(TaskState::Failed));
        r.put_back(batch);
        assert_eq!(r.pending("a").unwrap().state(), TaskState::Failed);
        assert_eq!(r.pending("b").unwrap().state(), TaskState::Running);
    }

    #[test]
    fn a_dropped_batch_goes_back() {
        let r = Reporter::new();
        r.report("a", status(TaskState::Running));
        let batch = InFlight {
            reporter: &r,
            updates: r.take(10),
        };
        assert!(r.is_empty());
        drop(batch);
        assert_eq!(r.pending("a").unwrap().state(), TaskState::Running);
        let batch = InFlight {
            reporter: &r,
            updates: r.take(10),
        };
        batch.acknowledged();
        assert!(r.is_empty());
    }

    #[test]
    fn batches_are_bounded() {
        let r = Reporter::new();
        for i in 0..5 {
            r.report(&i.to_string(), status(TaskState::Running));
        }
        assert_eq!(r.take(3).len(), 3);
        assert_eq!(r.take(3).len(), 2);
    }
}
