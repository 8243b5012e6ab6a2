//! The log broker: `service logs` without the manager ever reading a log.
//!
//! A [`LogBroker::subscribe`] call (the `ServiceLogs` RPC) picks the service's
//! tasks whose engine may hold logs ([`targets`]), sends one `LogSubscription`
//! to the agent of each node involved through the stream that agent keeps open
//! ([`LogBroker::listen`], the `LogSubscriptions` RPC), and forwards what the
//! agents publish ([`LogBroker::publish`], the `PublishLogs` RPC) to the
//! client. Without `follow` the client's stream ends once every node has sent
//! `close` or lost its session; with it, it also ends when the client leaves,
//! and the agents still publishing get a `cancel`.
//!
//! Nodes without a session are skipped (there is no one to ask). An agent may
//! publish only for subscriptions sent to its node and only about the tasks the
//! subscription named there; the broker fills in the task names and node ids
//! from the store, so what the client sees never depends on an agent's word.
//!
//! Everything is in memory and only the leader's broker has listeners (agents
//! keep their sessions with the leader).

mod targets;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_proto::{
    LogMessage, LogSubscription, PublishLogsMessage, ServiceLogsMessage, ServiceLogsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::grpc_status::lookup_status;
use crate::store::Store;

/// Subscriptions queued towards one agent before the broker waits for it.
const LISTENER_QUEUE: usize = 64;
/// Batches queued between the agents and one client: a slow client slows the
/// agents' `PublishLogs` streams instead of growing memory.
const EVENT_QUEUE: usize = 64;
/// Batches queued towards the client's gRPC stream.
const CLIENT_QUEUE: usize = 16;

/// The stream a `LogSubscriptions` RPC returns.
pub type SubscriptionStream = ReceiverStream<Result<LogSubscription, Status>>;
/// The stream a `ServiceLogs` RPC returns.
pub type LogStream = ReceiverStream<Result<ServiceLogsMessage, Status>>;

/// Routes log subscriptions to agents and their logs back. Clone freely.
#[derive(Clone, Default)]
pub struct LogBroker {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The open `LogSubscriptions` stream of each node.
    listeners: HashMap<String, Listener>,
    subscriptions: HashMap<String, Subscription>,
    /// Tells apart successive listeners of one node.
    generation: u64,
}

struct Listener {
    generation: u64,
    tx: mpsc::Sender<Result<LogSubscription, Status>>,
}

struct Subscription {
    /// Nodes that have not finished yet, with the listener they were asked through.
    pending: HashMap<String, u64>,
    /// task id → (node id, task name), for the tasks the subscription covers.
    tasks: HashMap<String, (String, String)>,
    events: mpsc::Sender<Event>,
}

/// What reaches a subscription's forwarder, in the order agents sent it.
enum Event {
    Messages(Vec<LogMessage>),
    /// A node finished (closed or gone); sent once per node.
    NodeDone,
}

impl LogBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few map operations: consistent after a panic.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    /// Number of live subscriptions (for tests and metrics).
    pub fn subscription_count(&self) -> usize {
        self.state().subscriptions.len()
    }

    #[cfg(test)]
    /// Whether `node_id` has an open subscriptions stream.
    pub fn is_listening(&self, node_id: &str) -> bool {
        self.state().listeners.contains_key(node_id)
    }

    /// The `LogSubscriptions` RPC of `node_id`'s session: the stream lives until
    /// `session_end` fires or the agent drops it. A node has one stream; a new
    /// one replaces the previous.
    pub fn listen(&self, node_id: &str, session_end: CancellationToken) -> SubscriptionStream {
        let (tx, rx) = mpsc::channel(LISTENER_QUEUE);
        let generation = {
            let mut state = self.state();
            state.generation += 1;
            let generation = state.generation;
            state.listeners.insert(
                node_id.to_string(),
                Listener {
                    generation,
                    tx: tx.clone(),
                },
            );
            generation
        };
        tracing::debug!(node.id = %node_id, "agent listens for log subscriptions");
        let broker = self.clone();
        let node_id = node_id.to_string();
        tokio::spawn(async move {
            tokio::select! {
                _ = session_end.cancelled() => {}
                _ = tx.closed() => {}
            }
            broker.unlisten(&node_id, generation).await;
        });
        ReceiverStream::new(rx)
    }

    /// The node's listener `generation` is gone: forget it, and every
    /// subscription still waiting on the node through it finishes the node.
    async fn unlisten(&self, node_id: &str, generation: u64) {
        let finished: Vec<mpsc::Sender<Event>> = {
            let mut state = self.state();
            if state
                .listeners
                .get(node_id)
                .is_some_and(|l| l.generation == generation)
            {
                state.listeners.remove(node_id);
            }
            state
                .subscriptions
                .values_mut()
                .filter(|s| s.pending.get(node_id) == Some(&generation))
                .map(|s| {
                    s.pending.remove(node_id);
                    s.events.clone()
                })
                .collect()
        };
        tracing::debug!(node.id = %node_id, subscriptions = finished.len(), "log listener gone");
        for events in finished {
            let _ = events.send(Event::NodeDone).await;
        }
    }

    /// The `ServiceLogs` RPC: ask the agents, return the client's stream.
    pub async fn subscribe(
        &self,
        store: &Store,
        request: ServiceLogsRequest,
    ) -> Result<LogStream, Status> {
        let (service_name, targets) = store
            .read(|s| {
                let service = s.find_service(&request.service)?;
                let name = crate::store::service_name(service).to_string();
                Ok((name, targets::targets(s.tasks_of_service(&service.id))))
            })
            .map_err(lookup_status)?;
        let id = shoal_proto::ids::new_id();
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let mut asked = Vec::new();
        {
            let mut state = self.state();
            let mut pending = HashMap::new();
            for node_id in targets.by_node.keys() {
                match state.listeners.get(node_id) {
                    Some(l) => {
                        pending.insert(node_id.clone(), l.generation);
                        asked.push((node_id.clone(), l.tx.clone()));
                    }
                    None => {
                        tracing::warn!(node.id = %node_id, service.name = %service_name,
                            "node has no session: its tasks' logs are left out");
                    }
                }
            }
            state.subscriptions.insert(
                id.clone(),
                Subscription {
                    pending,
                    tasks: targets.tasks,
                    events: events_tx,
                },
            );
        }
        tracing::info!(subscription.id = %id, service.name = %service_name, nodes = asked.len(),
            follow = request.follow, "log subscription");
        // The forwarder owns the subscription from here (its guard removes
        // it); it runs before the agents are asked so their answers never wait
        // for a reader.
        let (client_tx, client_rx) = mpsc::channel(CLIENT_QUEUE);
        let guard = SubscriptionGuard {
            broker: self.clone(),
            id: id.clone(),
        };
        tokio::spawn(forward(guard, events_rx, client_tx));
        for (node_id, tx) in asked {
            let sub = LogSubscription {
                id: id.clone(),
                task_ids: targets.by_node[&node_id].task_ids.clone(),
                follow: request.follow,
                tail: request.tail,
                timestamps: request.timestamps,
                cancel: false,
            };
            if tx.send(Ok(sub)).await.is_err() {
                self.finish(&id, &node_id).await;
            }
        }
        Ok(ReceiverStream::new(client_rx))
    }

    /// One `PublishLogs` message from `node_id`'s session.
    pub async fn publish(&self, node_id: &str, msg: PublishLogsMessage) -> Result<(), Status> {
        let events = {
            let state = self.state();
            let Some(sub) = state.subscriptions.get(&msg.subscription_id) else {
                return Err(Status::not_found(format!(
                    "log subscription {} is over (the client left); stop publishing",
                    msg.subscription_id
                )));
            };
            if !sub.pending.contains_key(node_id) {
                return Err(Status::permission_denied(format!(
                    "log subscription {} is not waiting for node {node_id}",
                    msg.subscription_id
                )));
            }
            sub.events.clone()
        };
        if !msg.messages.is_empty() {
            let messages = self.screen(node_id, &msg.subscription_id, msg.messages)?;
            if events.send(Event::Messages(messages)).await.is_err() {
                return Err(Status::not_found(format!(
                    "log subscription {} is over (the client left); stop publishing",
                    msg.subscription_id
                )));
            }
        }
        if msg.close {
            self.finish(&msg.subscription_id, node_id).await;
        }
        Ok(())
    }

    /// Check that every message is about a task the subscription asked
    /// `node_id` for, and name it as the store does.
    fn screen(
        &self,
        node_id: &str,
        subscription_id: &str,
        mut messages: Vec<LogMessage>,
    ) -> Result<Vec<LogMessage>, Status> {
        let state = self.state();
        let Some(sub) = state.subscriptions.get(subscription_id) else {
            return Err(Status::not_found(format!(
                "log subscription {subscription_id} is over"
            )));
        };
        for (i, m) in messages.iter_mut().enumerate() {
            match sub.tasks.get(&m.task_id) {
                Some((node, name)) if node == node_id => {
                    m.task_name = name.clone();
                    m.node_id = node.clone();
                }
                _ => {
                    return Err(Status::permission_denied(format!(
                        "messages[{i}].task_id: task {} is not one node {node_id} was asked about",
                        m.task_id
                    )));
                }
            }
        }
        Ok(messages)
    }

    /// `node_id` has nothing more for the subscription (it closed, or its
    /// publishing stream ended). Idempotent.
    pub async fn finish(&self, subscription_id: &str, node_id: &str) {
        let events = {
            let mut state = self.state();
            let Some(sub) = state.subscriptions.get_mut(subscription_id) else {
                return;
            };
            if sub.pending.remove(node_id).is_none() {
                return;
            }
            sub.events.clone()
        };
        let _ = events.send(Event::NodeDone).await;
    }
}

/// Removes a subscription when its forwarder ends, and tells the agents still
/// publishing for it to stop.
struct SubscriptionGuard {
    broker: LogBroker,
    id: String,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let mut state = self.broker.state();
        let Some(sub) = state.subscriptions.remove(&self.id) else {
            return;
        };
        for (node_id, generation) in sub.pending {
            let Some(listener) = state.listeners.get(&node_id) else {
                continue;
            };
            if listener.generation != generation {
                continue;
            }
            let cancel = LogSubscription {
                id: self.id.clone(),
                cancel: true,
                ..Default::default()
            };
            // A full queue only delays the agent's stop: its next publish for
            // this subscription is refused, which stops it too.
            if listener.tx.try_send(Ok(cancel)).is_err() {
                tracing::debug!(node.id = %node_id, subscription.id = %self.id,
                    "could not queue the log cancel; the agent stops at its next publish");
            }
        }
        tracing::debug!(subscription.id = %self.id, "log subscription ended");
    }
}

/// Moves a subscription's batches to its client until every node is done or
/// the client leaves.
async fn forward(
    guard: SubscriptionGuard,
    mut events: mpsc::Receiver<Event>,
    client: mpsc::Sender<Result<ServiceLogsMessage, Status>>,
) {
    loop {
        // Checked under the lock: a node's NodeDone is queued after it leaves
        // `pending`, so an empty set means every event is already queued.
        let all_done = guard
            .broker
            .state()
            .subscriptions
            .get(&guard.id)
            .is_none_or(|s| s.pending.is_empty());
        if all_done {
            // Drain what is already queued, then end.
            while let Ok(event) = events.try_recv() {
                if let Event::Messages(messages) = event
                    && client
                        .send(Ok(ServiceLogsMessage { messages }))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            return;
        }
        tokio::select! {
            _ = client.closed() => return,
            event = events.recv() => match event {
                Some(Event::Messages(messages)) => {
                    if client.send(Ok(ServiceLogsMessage { messages })).await.is_err() {
                        return;
                    }
                }
                Some(Event::NodeDone) => {}
                None => return,
            },
        }
    }
}
