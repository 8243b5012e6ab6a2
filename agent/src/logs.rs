//! `service logs` on the agent: for as long as a session lives, follow the
//! manager's log subscriptions and answer each one on its own `PublishLogs`
//! stream with the runtime's logs of the tasks it names.
//!
//! Lines are sent in batches (up to [`BATCH_LINES`] lines, or whatever arrived
//! within [`BATCH_WAIT`] of a batch's first line), so a chatty container costs
//! few messages and a quiet one is still seen at once. A subscription ends with
//! `close` once every task's log is read (with `follow`: once every container
//! stopped), or silently on `cancel` or when the manager refuses a publish (the
//! client left). Log trouble never ends the session itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use shoal_proto::dispatcher_client::DispatcherClient;
use shoal_proto::{LogMessage, LogSubscription, LogSubscriptionsRequest, PublishLogsMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tracing::{debug, warn};

use crate::runtime::{LogOptions, Runtime, RuntimeError};

/// Most lines in one `PublishLogs` message.
pub const BATCH_LINES: usize = 100;
/// Longest a line waits for others to share its message.
pub const BATCH_WAIT: Duration = Duration::from_millis(50);
/// Delay before reopening a broken subscriptions stream.
const RETRY: Duration = Duration::from_secs(1);

/// Serve log subscriptions for the session `session_id` of `node_id`. Never
/// returns: the session's end drops it.
pub(crate) async fn serve<R: Runtime>(
    client: DispatcherClient<Channel>,
    runtime: &R,
    node_id: &str,
    session_id: &str,
) -> Infallible {
    loop {
        match listen(client.clone(), runtime, node_id, session_id).await {
            // The manager ended the stream: the session is ending, and the
            // session's other streams will say so.
            Ok(()) => break,
            Err(status) if status.code() == Code::Unimplemented => {
                warn!(node.id = %node_id, "the manager does not serve logs: `service logs` will not show this node's tasks");
                break;
            }
            Err(status) => {
                warn!(node.id = %node_id, error = %status, "log subscriptions stream broke; reopening in {RETRY:?}");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    std::future::pending().await
}

/// Follow the subscriptions stream, running each subscription until it ends
/// or is cancelled.
async fn listen<R: Runtime>(
    mut client: DispatcherClient<Channel>,
    runtime: &R,
    node_id: &str,
    session_id: &str,
) -> Result<(), tonic::Status> {
    let request = LogSubscriptionsRequest {
        session_id: session_id.to_string(),
    };
    let mut subscriptions = client.log_subscriptions(request).await?.into_inner();
    let mut active: HashMap<String, CancellationToken> = HashMap::new();
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            msg = subscriptions.message() => match msg? {
                None => return Ok(()),
                Some(sub) if sub.cancel => {
                    if let Some(token) = active.remove(&sub.id) {
                        debug!(subscription.id = %sub.id, "log subscription cancelled");
                        token.cancel();
                    }
                }
                Some(sub) if active.contains_key(&sub.id) => {}
                Some(sub) => {
                    let token = CancellationToken::new();
                    active.insert(sub.id.clone(), token.clone());
                    running.push(publish(client.clone(), runtime, node_id, session_id, sub, token));
                }
            },
            Some(id) = running.next(), if !running.is_empty() => {
                active.remove(&id);
            }
        }
    }
}

/// Answer one subscription; returns its id when done.
async fn publish<R: Runtime>(
    mut client: DispatcherClient<Channel>,
    runtime: &R,
    node_id: &str,
    session_id: &str,
    sub: LogSubscription,
    cancel: CancellationToken,
) -> String {
    let options = LogOptions {
        follow: sub.follow,
        tail: u64::try_from(sub.tail).ok(),
    };
    let mut logs = Vec::new();
    for task_id in &sub.task_ids {
        match runtime.logs(node_id, task_id, options).await {
            Ok(lines) => {
                let task_id = task_id.clone();
                logs.push(lines.filter_map(move |line| {
                    let message = match line {
                        Ok(line) => Some(LogMessage {
                            task_id: task_id.clone(),
                            task_name: String::new(),
                            node_id: String::new(),
                            stream: line.stream as i32,
                            timestamp_ns: line.timestamp_ns,
                            data: line.data,
                        }),
                        Err(e) => {
                            warn!(task.id = %task_id, error = %e, "reading the task's log failed");
                            None
                        }
                    };
                    futures::future::ready(message)
                }));
            }
            // Removed already (or never created): nothing to show.
            Err(RuntimeError::NotFound(_)) => {
                debug!(task.id = %task_id, "no container for the task: no logs");
            }
            Err(e) => warn!(task.id = %task_id, error = %e, "cannot read the task's log"),
        }
    }
    let lines = futures::stream::select_all(logs);
    let (tx, rx) = mpsc::channel(4);
    let (session, subscription) = (session_id.to_string(), sub.id.clone());
    let message = move |messages, close| PublishLogsMessage {
        session_id: session.clone(),
        subscription_id: subscription.clone(),
        messages,
        close,
    };
    let produce = async move {
        let flush = |messages| {
            let tx = tx.clone();
            let msg = message(messages, false);
            async move { tx.send(msg).await.is_ok() }
        };
        let complete = tokio::select! {
            _ = cancel.cancelled() => false,
            sent = batch(lines, BATCH_LINES, BATCH_WAIT, flush) => sent,
        };
        if complete {
            let _ = tx.send(message(Vec::new(), true)).await;
        }
    };
    let rpc = client.publish_logs(ReceiverStream::new(rx));
    tokio::pin!(rpc, produce);
    let result = tokio::select! {
        // The manager answered before we were done: it refused something.
        result = &mut rpc => result,
        () = &mut produce => rpc.await,
    };
    match result {
        Ok(_) => debug!(subscription.id = %sub.id, "log subscription answered"),
        Err(status) if status.code() == Code::NotFound => {
            debug!(subscription.id = %sub.id, "log subscription over: {}", status.message());
        }
        Err(status) => warn!(subscription.id = %sub.id, error = %status, "publishing logs failed"),
    }
    sub.id
}

/// Gather `lines` into batches of at most `max_lines`, each sent (`flush`) once
/// full or `max_wait` after its first line, and the rest at the end. False when
/// a `flush` failed (the receiver is gone).
pub async fn batch<S, F, Fut>(
    mut lines: S,
    max_lines: usize,
    max_wait: Duration,
    mut flush: F,
) -> bool
where
    S: Stream<Item = LogMessage> + Unpin,
    F: FnMut(Vec<LogMessage>) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut pending = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline {
            None => Some(lines.next().await),
            Some(at) => tokio::select! {
                line = lines.next() => Some(line),
                _ = tokio::time::sleep_until(at) => None,
            },
        };
        match next {
            Some(Some(line)) => {
                if pending.is_empty() {
                    deadline = Some(tokio::time::Instant::now() + max_wait);
                }
                pending.push(line);
                if pending.len() < max_lines {
                    continue;
                }
            }
            Some(None) => return pending.is_empty() || flush(pending).await,
            // The wait is over: send what there is.
            None => {}
        }
        deadline = None;
        if !flush(std::mem::take(&mut pending)).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn line(n: usize) -> LogMessage {
        LogMessage {
            data: n.to_string().into_bytes(),
            ..Default::default()
        }
    }

    type Sent = Arc<Mutex<Vec<Vec<String>>>>;

    fn recorder() -> (
        Sent,
        impl FnMut(Vec<LogMessage>) -> futures::future::Ready<bool>,
    ) {
        let sent: Sent = Arc::default();
        let s = sent.clone();
        let flush = move |batch: Vec<LogMessage>| {
            let texts = batch
                .into_iter()
                .map(|m| String::from_utf8(m.data).unwrap())
                .collect();
            s.lock().unwrap().push(texts);
            futures::future::ready(true)
        };
        (sent, flush)
    }

    #[tokio::test]
    async fn full_batches_go_at_once_and_the_rest_at_the_end() {
        let (sent, flush) = recorder();
        let lines = futures::stream::iter((0..250).map(line));
        assert!(batch(lines, 100, Duration::from_secs(3600), flush).await);
        let sizes: Vec<usize> = sent.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(sent.lock().unwrap()[2][49], "249");
    }

    #[tokio::test]
    async fn a_quiet_stream_is_flushed_after_the_wait() {
        let (tx, rx) = mpsc::channel(8);
        let (sent, flush) = recorder();
        let batcher = tokio::spawn(batch(ReceiverStream::new(rx), 100, BATCH_WAIT, flush));
        tx.send(line(1)).await.unwrap();
        tx.send(line(2)).await.unwrap();
        // The stream stays open: only the timer can send these two.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sent.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the batch was never flushed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            *sent.lock().unwrap(),
            vec![vec!["1".to_string(), "2".into()]]
        );
        tx.send(line(3)).await.unwrap();
        drop(tx);
        assert!(batcher.await.unwrap());
        assert_eq!(sent.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_flush_stops_the_batcher() {
        let lines = futures::stream::iter((0..1000).map(line));
        let mut calls = 0;
        let flush = |_| {
            calls += 1;
            futures::future::ready(false)
        };
        assert!(!batch(lines, 10, BATCH_WAIT, flush).await);
        assert_eq!(calls, 1);
    }
}
