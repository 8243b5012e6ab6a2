//! The broker alone: an in-memory store, listeners standing in for agents'
//! `LogSubscriptions` streams, and `publish` calls standing in for their
//! `PublishLogs` streams.

use futures::StreamExt;
use shoal_proto::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::{LogBroker, LogStream, SubscriptionStream};
use crate::store::{Action, Object, Store};
use crate::test_fixtures::DEADLINE;

/// A service "web" with a running task in slot 1 on n1 and slot 2 on n2, and
/// one still pending.
async fn store() -> Store {
    let store = Store::in_memory();
    let service = Service {
        id: "svc".into(),
        spec: Some(ServiceSpec {
            name: "web".into(),
            replicas: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    let task = |id: &str, slot: u64, node: &str, state: TaskState| {
        Object::Task(Box::new(Task {
            id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot,
            node_id: node.into(),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }))
    };
    store
        .propose(vec![
            Action::Create(Object::Service(service.into())),
            Action::Create(task("t1", 1, "n1", TaskState::Running)),
            Action::Create(task("t2", 2, "n2", TaskState::Running)),
            Action::Create(task("t3", 3, "", TaskState::Pending)),
        ])
        .await
        .expect("seed the store");
    store
}

fn request(follow: bool) -> ServiceLogsRequest {
    ServiceLogsRequest {
        service: "web".into(),
        follow,
        tail: -1,
        timestamps: false,
    }
}

fn line(task: &str, text: &str) -> LogMessage {
    LogMessage {
        task_id: task.into(),
        data: text.as_bytes().to_vec(),
        // Whatever an agent claims here is replaced from the store.
        task_name: "forged".into(),
        ..Default::default()
    }
}

fn publish(sub: &str, messages: Vec<LogMessage>, close: bool) -> PublishLogsMessage {
    PublishLogsMessage {
        session_id: String::new(),
        subscription_id: sub.into(),
        messages,
        close,
    }
}

async fn next_subscription(stream: &mut SubscriptionStream) -> LogSubscription {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a subscription in time")
        .expect("stream open")
        .expect("not an error")
}

/// Every line of the client's stream, until it ends.
async fn collect(stream: LogStream) -> Vec<(String, String, String)> {
    let batches: Vec<_> = tokio::time::timeout(DEADLINE, stream.collect::<Vec<_>>())
        .await
        .expect("the client stream ends");
    batches
        .into_iter()
        .flat_map(|b| b.expect("not an error").messages)
        .map(|m| (m.task_name, m.node_id, String::from_utf8(m.data).unwrap()))
        .collect()
}

#[tokio::test]
async fn each_node_is_asked_for_its_tasks_and_the_stream_ends_when_all_closed() {
    let store = store().await;
    let broker = LogBroker::new();
    let (end1, end2) = (CancellationToken::new(), CancellationToken::new());
    let mut n1 = broker.listen("n1", end1.clone());
    let mut n2 = broker.listen("n2", end2.clone());
    let client = broker.subscribe(&store, request(false)).await.unwrap();

    let s1 = next_subscription(&mut n1).await;
    let s2 = next_subscription(&mut n2).await;
    assert_eq!(s1.task_ids, vec!["t1"]);
    assert_eq!(s2.task_ids, vec!["t2"]);
    assert_eq!(s1.id, s2.id);
    assert_eq!(s1.tail, -1);
    assert!(!s1.follow && !s1.cancel);

    broker
        .publish(
            "n1",
            publish(&s1.id, vec![line("t1", "a"), line("t1", "b")], true),
        )
        .await
        .unwrap();
    broker
        .publish("n2", publish(&s2.id, vec![line("t2", "c")], false))
        .await
        .unwrap();
    broker
        .publish("n2", publish(&s2.id, vec![], true))
        .await
        .unwrap();

    let lines = collect(client).await;
    let expect =
        |name: &str, node: &str, text: &str| (name.to_string(), node.to_string(), text.to_string());
    assert_eq!(lines.len(), 3);
    for l in [
        expect("web.1", "n1", "a"),
        expect("web.1", "n1", "b"),
        expect("web.2", "n2", "c"),
    ] {
        assert!(lines.contains(&l), "{l:?} missing from {lines:?}");
    }
    // A node's lines keep their order.
    let n1_lines: Vec<_> = lines
        .iter()
        .filter(|l| l.1 == "n1")
        .map(|l| l.2.as_str())
        .collect();
    assert_eq!(n1_lines, ["a", "b"]);
    assert_eq!(broker.subscription_count(), 0);
}

#[tokio::test]
async fn nodes_without_a_session_are_skipped_and_lost_sessions_finish_their_node() {
    let store = store().await;
    let broker = LogBroker::new();
    // n2 never listens: only n1 is asked.
    let end1 = CancellationToken::new();
    let mut n1 = broker.listen("n1", end1.clone());
    let client = broker.subscribe(&store, request(false)).await.unwrap();
    let sub = next_subscription(&mut n1).await;
    broker
        .publish(
            "n1",
            publish(&sub.id, vec![line("t1", "before the end")], false),
        )
        .await
        .unwrap();
    // The session ends without a close: the stream still ends, with what came.
    end1.cancel();
    let lines = collect(client).await;
    assert_eq!(
        lines,
        vec![("web.1".into(), "n1".into(), "before the end".into())]
    );
    assert!(!broker.is_listening("n1"));

    // With no node to ask at all, the stream ends at once.
    let lines = collect(broker.subscribe(&store, request(false)).await.unwrap()).await;
    assert!(lines.is_empty());
}

#[tokio::test]
async fn agents_publish_only_for_their_own_node_and_tasks() {
    let store = store().await;
    let broker = LogBroker::new();
    let mut n1 = broker.listen("n1", CancellationToken::new());
    let _n2 = broker.listen("n2", CancellationToken::new());
    let client = broker.subscribe(&store, request(true)).await.unwrap();
    let sub = next_subscription(&mut n1).await;

    // n3 was never asked.
    let err = broker
        .publish("n3", publish(&sub.id, vec![line("t1", "x")], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // n1 was asked, but about t1 only.
    let err = broker
        .publish("n1", publish(&sub.id, vec![line("t2", "x")], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("messages[0].task_id"),
        "{}",
        err.message()
    );
    // Unknown subscription.
    let err = broker
        .publish("n1", publish("nope", vec![], true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    drop(client);
}

#[tokio::test]
async fn a_leaving_client_cancels_the_agents_subscription() {
    let store = store().await;
    let broker = LogBroker::new();
    let mut n1 = broker.listen("n1", CancellationToken::new());
    let _n2 = broker.listen("n2", CancellationToken::new());
    let mut client = broker.subscribe(&store, request(true)).await.unwrap();
    let sub = next_subscription(&mut n1).await;
    assert!(sub.follow);
    broker
        .publish("n1", publish(&sub.id, vec![line("t1", "live")], false))
        .await
        .unwrap();
    let first = tokio::time::timeout(DEADLINE, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.messages[0].data, b"live");

    drop(client);
    let cancel = next_subscription(&mut n1).await;
    assert_eq!((cancel.id.as_str(), cancel.cancel), (sub.id.as_str(), true));
    assert_eq!(broker.subscription_count(), 0);
    let err = broker
        .publish("n1", publish(&sub.id, vec![line("t1", "late")], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn an_unknown_service_is_not_found() {
    let store = store().await;
    let mut req = request(false);
    req.service = "nope".into();
    let err = LogBroker::new().subscribe(&store, req).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nope"), "{}", err.message());
}
