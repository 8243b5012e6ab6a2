//! The session registry and admission (`session.rs`): unit tests of the
//! registry, then scenarios over gRPC (the harness of `dispatcher/tests.rs`):
//! registration, heartbeats, expiry, replacement, a manager behind.

use shoal_proto::HeartbeatRequest;
use tonic::Code;

use super::*;
use crate::dispatcher::tests::{Harness, PERIOD, eventually, eventually_within, next, node_state};
use crate::test_fixtures::DEADLINE;

/// The grace period of the unit tests, and of the harness (100 ms × 3).
const GRACE: Duration = Duration::from_millis(300);

#[test]
fn a_new_session_replaces_and_ends_the_old_one() {
    let mut s = Sessions::default();
    let now = Instant::now();
    let first = CancellationToken::new();
    assert_eq!(s.open("n1", "s1", first.clone(), now), None);
    assert_eq!(
        s.open("n1", "s2", CancellationToken::new(), now),
        Some("s1".into())
    );
    assert!(first.is_cancelled());
    assert!(s.lookup("s1").is_none());
    assert_eq!(s.lookup("s2").map(|l| l.0), Some("n1".to_string()));
    assert!(!s.heartbeat("s1", now));
    // Closing the replaced session must not unregister the node's new one.
    s.close("s1");
    assert!(s.has_node("n1"));
}

#[test]
fn silent_sessions_expire_after_the_grace_period() {
    let mut s = Sessions::default();
    let t0 = Instant::now();
    let token = CancellationToken::new();
    s.open("quiet", "s1", token.clone(), t0);
    s.open("chatty", "s2", CancellationToken::new(), t0);
    s.established("s1", t0);
    s.established("s2", t0);
    assert!(s.heartbeat("s2", t0 + Duration::from_millis(250)));
    assert!(
        s.expire(t0 + GRACE, GRACE).expired.is_empty(),
        "exactly the grace period is still alive"
    );
    let expired = s.expire(t0 + Duration::from_millis(400), GRACE).expired;
    assert_eq!(
        expired,
        vec![Expired {
            node_id: "quiet".into(),
            session_id: Some("s1".into()),
            silent_for: Duration::from_millis(400),
        }]
    );
    assert!(token.is_cancelled());
    assert!(!s.has_node("quiet"));
    assert!(s.has_node("chatty"));
}

#[test]
fn a_session_is_not_expired_while_its_node_is_registered() {
    let mut s = Sessions::default();
    let t0 = Instant::now();
    s.open("n1", "s1", CancellationToken::new(), t0);
    assert!(
        s.expire(t0 + GRACE * 10, GRACE).expired.is_empty(),
        "the node's READY write is still in flight"
    );
    // Registered at last: the grace period counts from here.
    assert!(s.established("s1", t0 + GRACE * 10));
    assert!(s.expire(t0 + GRACE * 11, GRACE).expired.is_empty());
    let expired = s
        .expire(t0 + GRACE * 11 + Duration::from_millis(1), GRACE)
        .expired;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].silent_for, GRACE + Duration::from_millis(1));
    assert!(!s.established("s1", t0 + GRACE * 12), "gone once expired");
}

#[test]
fn awaited_nodes_get_their_window_to_connect() {
    let mut s = Sessions::default();
    let t0 = Instant::now();
    s.open("connected", "s1", CancellationToken::new(), t0);
    s.await_nodes(
        ["connected".to_string(), "late".into(), "gone".into()],
        t0,
        GRACE,
    );
    s.open(
        "late",
        "s2",
        CancellationToken::new(),
        t0 + Duration::from_millis(200),
    );
    s.heartbeat("s1", t0 + Duration::from_millis(350));
    let expired = s.expire(t0 + Duration::from_millis(350), GRACE).expired;
    let nodes: Vec<_> = expired
        .iter()
        .map(|e| (e.node_id.as_str(), e.session_id.is_some()))
        .collect();
    assert_eq!(nodes, vec![("gone", false)]);
    assert!(
        s.expire(t0 + Duration::from_millis(360), GRACE)
            .expired
            .is_empty(),
        "reported once"
    );
}

#[test]
fn a_new_leader_awaits_nodes_longer_than_a_grace_period() {
    let mut s = Sessions::default();
    let t0 = Instant::now();
    s.await_nodes(["slow".to_string()], t0, GRACE * 3);
    assert!(
        s.expire(t0 + GRACE * 2, GRACE).expired.is_empty(),
        "still awaited"
    );
    let expired = s
        .expire(t0 + GRACE * 3 + Duration::from_millis(1), GRACE)
        .expired;
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].node_id, "slow");
    assert!(expired[0].silent_for > GRACE * 3);
}

#[test]
fn a_mass_silence_keeps_the_sessions_the_budget_does_not_admit() {
    let mut s = Sessions::default();
    let t0 = Instant::now();
    let n = 20;
    for i in 0..n {
        let session = format!("s{i}");
        s.open(&format!("n{i}"), &session, CancellationToken::new(), t0);
        s.established(&session, t0);
    }
    // n0 went quiet first: it is the longest silent.
    for i in 1..n {
        s.heartbeat(&format!("s{i}"), t0 + Duration::from_millis(10));
    }
    let scan = s.expire(t0 + GRACE * 2, GRACE);
    let budget = super::super::budget::MIN_BURST;
    assert_eq!(scan.expired.len(), budget);
    assert_eq!(scan.held, n - budget);
    assert_eq!(scan.expired[0].node_id, "n0", "the longest silent first");
    let held: Vec<String> = (0..n)
        .map(|i| format!("n{i}"))
        .filter(|node| s.has_node(node))
        .collect();
    assert_eq!(held.len(), n - budget, "the held sessions live on");
    // A late heartbeat saves a held node.
    let saved = held[0].clone();
    let saved_session = s.by_node[&saved].clone();
    let late = t0 + GRACE * super::super::budget::LONG_GRACE + Duration::from_millis(20);
    assert!(s.heartbeat(&saved_session, late));
    // Past the long grace, the rest go DOWN whatever the budget.
    let scan = s.expire(late, GRACE);
    assert_eq!(scan.held, 0);
    assert_eq!(scan.expired.len(), n - budget - 1);
    assert!(s.has_node(&saved));
}

#[test]
fn the_sessions_being_opened_are_counted() {
    let mut s = Sessions::default();
    let now = Instant::now();
    s.open("n1", "s1", CancellationToken::new(), now);
    s.open("n2", "s2", CancellationToken::new(), now);
    assert_eq!(s.opening(), 2);
    s.established("s1", now);
    s.established("s1", now);
    assert_eq!(s.opening(), 1, "established once");
    // Replaced while opening, then closed while opening.
    s.open("n2", "s3", CancellationToken::new(), now);
    assert_eq!(s.opening(), 1);
    s.close("s3");
    assert_eq!(s.opening(), 0);
    s.open("n4", "s4", CancellationToken::new(), now);
    s.clear();
    assert_eq!(s.opening(), 0);
}

#[test]
fn a_refused_call_keeps_its_node_alive() {
    let mut s = Sessions::default();
    let t0 = Instant::now();
    s.open("n1", "s1", CancellationToken::new(), t0);
    s.established("s1", t0);
    s.await_nodes(["awaited".to_string()], t0, GRACE);
    let later = t0 + GRACE;
    s.turned_away("n1", later, GRACE);
    s.turned_away("awaited", later, GRACE);
    s.turned_away("stranger", later, GRACE);
    assert_eq!(s.take_turned_away(), 3);
    assert_eq!(s.take_turned_away(), 0);
    assert!(
        s.expire(later + GRACE, GRACE).expired.is_empty(),
        "both heard from within the grace period"
    );
    let expired = s
        .expire(later + GRACE + Duration::from_millis(1), GRACE)
        .expired;
    assert_eq!(expired.len(), 2);
    assert!(
        !s.has_node("stranger"),
        "a refused newcomer leaves no trace"
    );
}

#[test]
fn admission_refuses_with_a_bounded_hint() {
    let period = Duration::from_secs(2);
    assert!(admit(0, Duration::from_millis(900), period).is_ok());
    let busy = admit(0, Duration::from_millis(1100), period).expect_err("behind");
    assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
    assert!(
        busy.message().contains("1100 ms late"),
        "{}",
        busy.message()
    );
    let hint = |status: &Status| {
        status
            .metadata()
            .get(shoal_proto::RETRY_AFTER_MS_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(hint(&busy).as_deref(), Some("2200"));
    let crowded = admit(MAX_OPENING, Duration::ZERO, period).expect_err("crowded");
    assert!(crowded.message().contains("256 nodes are opening sessions"));
    assert_eq!(hint(&crowded).as_deref(), Some("1000"), "at least a second");
    let far = admit(0, Duration::from_secs(60), period).expect_err("far behind");
    assert_eq!(hint(&far).as_deref(), Some("10000"), "at most ten seconds");
    // Short periods: half a second of lag is tolerated whatever the period.
    assert!(admit(0, Duration::from_millis(400), Duration::from_millis(100)).is_ok());
}

#[tokio::test]
async fn a_session_registers_a_ready_node() {
    let mut h = Harness::start().await;
    let (first, _stream) = h.open("", "host-a").await;
    assert!(!first.node_id.is_empty(), "a node id is assigned");
    assert!(!first.session_id.is_empty());
    assert_eq!(first.heartbeat_period_ms, 100);
    assert_eq!(
        first.heartbeat_grace_ms, 300,
        "the agent learns how long a heartbeat may take"
    );
    assert!(first.managers.is_empty());
    let node = h.node(&first.node_id);
    assert_eq!(node_state(&node), NodeState::Ready);
    let status = node.status.as_ref().expect("status");
    assert_eq!(status.addr, "127.0.0.1");
    assert_eq!(
        node.description.as_ref().map(|d| d.hostname.as_str()),
        Some("host-a")
    );
    let spec = node.spec.expect("spec");
    assert_eq!(spec.role(), NodeRole::Worker);
    assert_eq!(spec.labels.get("zone").map(String::as_str), Some("east"));
    // A given node id is kept.
    let (again, _stream) = h.open("chosen-id", "host-b").await;
    assert_eq!(again.node_id, "chosen-id");
    assert_eq!(node_state(&h.node("chosen-id")), NodeState::Ready);
}

#[tokio::test]
async fn heartbeats_keep_a_node_ready_and_silence_marks_it_down() {
    let mut h = Harness::start().await;
    let (first, mut stream) = h.open_quiet("", "host-a").await;
    let node_id = first.node_id.clone();
    // Heartbeat for well over the grace period, at half the period as a margin
    // against scheduling delays on a loaded machine.
    let mut beats = tokio::time::interval(PERIOD / 2);
    for _ in 0..16 {
        beats.tick().await;
        assert_eq!(
            h.heartbeat(&first.session_id).await.expect("heartbeat"),
            100
        );
    }
    assert_eq!(node_state(&h.node(&node_id)), NodeState::Ready);

    let silent_since = Instant::now();
    h.heartbeat(&first.session_id)
        .await
        .expect("last heartbeat");
    eventually("node down", || {
        (node_state(&h.node(&node_id)) == NodeState::Down).then_some(())
    })
    .await;
    let took = silent_since.elapsed();
    println!("node marked down {took:?} after its last heartbeat (grace {GRACE:?})");
    assert!(
        took >= GRACE,
        "down before the grace period ran out ({took:?})"
    );
    let message = h.node(&node_id).status.expect("status").message;
    assert!(
        message.starts_with("heartbeat failure: no heartbeat for "),
        "{message}"
    );

    // The session is over: its stream ends and its heartbeats are refused.
    assert!(next(&mut stream).await.is_none(), "session stream ends");
    let err = h
        .heartbeat(&first.session_id)
        .await
        .expect_err("expired session");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("open a new session"),
        "{}",
        err.message()
    );

    // Reconnecting makes the node READY again.
    let (second, _stream) = h.open(&node_id, "host-a").await;
    assert_eq!(second.node_id, node_id);
    assert_ne!(second.session_id, first.session_id);
    assert_eq!(node_state(&h.node(&node_id)), NodeState::Ready);
    assert_eq!(h.node(&node_id).status.expect("status").message, "");
}

#[tokio::test]
async fn a_second_session_for_the_node_ends_the_first() {
    let mut h = Harness::start().await;
    let (old, mut old_stream) = h.open("n1", "host-a").await;
    let mut old_assignments = h.assignments(&old.session_id).await;
    assert!(next(&mut old_assignments).await.is_some(), "complete set");

    let (new, _new_stream) = h.open("n1", "host-a").await;
    assert_ne!(new.session_id, old.session_id);
    assert!(
        next(&mut old_stream).await.is_none(),
        "old session stream ends"
    );
    assert!(
        next(&mut old_assignments).await.is_none(),
        "old assignments stream ends"
    );
    assert_eq!(
        h.heartbeat(&old.session_id)
            .await
            .expect_err("old session")
            .code(),
        Code::NotFound
    );
    h.heartbeat(&new.session_id)
        .await
        .expect("new session lives");
}

#[tokio::test]
async fn nodes_ready_before_a_leader_change_get_one_grace_period() {
    let store = Store::in_memory();
    let ready = |id: &str| {
        Action::Create(Object::Node(Box::new(Node {
            id: id.into(),
            status: Some(NodeStatus {
                state: NodeState::Ready as i32,
                ..Default::default()
            }),
            ..Default::default()
        })))
    };
    store
        .propose(vec![ready("returning"), ready("lost")])
        .await
        .expect("seed");
    let started = Instant::now();
    let mut h = Harness::start_with(store, 3).await;
    // The returning node connects (and keeps heartbeating); the lost one never does.
    let (_first, _session) = h.open("returning", "host-a").await;
    eventually("lost node down", || {
        (node_state(&h.node("lost")) == NodeState::Down).then_some(())
    })
    .await;
    let took = started.elapsed();
    println!(
        "node without a session marked down {took:?} after the dispatcher started (grace {GRACE:?})"
    );
    assert!(took >= GRACE, "no grace period given ({took:?})");
    assert_eq!(node_state(&h.node("returning")), NodeState::Ready);
}

#[tokio::test]
async fn nodes_silent_at_once_beyond_the_budget_keep_their_sessions_for_a_while() {
    // The held sessions live about one grace period past the first marks
    // (until those leave the budget's window): that is the time the test has
    // to see the marks and answer for the others. 5 s (100 ms x 50), not
    // 1 s: a loaded machine must not be what decides.
    let grace = PERIOD * 50;
    let mut h = Harness::start_with(Store::in_memory(), 50).await;
    let silent = crate::dispatcher::budget::MIN_BURST + 3;
    let mut sessions = Vec::new();
    for i in 0..silent {
        let (first, stream) = h.open_quiet("", &format!("host-{i}")).await;
        sessions.push((first, stream));
    }
    // Their silence starts together.
    let silent_since = Instant::now();
    for (first, _) in &sessions {
        h.heartbeat(&first.session_id).await.expect("heartbeat");
    }
    let ids: Vec<String> = sessions.iter().map(|(f, _)| f.node_id.clone()).collect();
    let down = |h: &Harness| {
        ids.iter()
            .filter(|id| node_state(&h.node(id)) == NodeState::Down)
            .count()
    };
    eventually_within("the first silent nodes down", grace * 12, || {
        (down(&h) >= crate::dispatcher::budget::MIN_BURST).then_some(())
    })
    .await;
    let reacted = Instant::now();
    assert!(
        silent_since.elapsed() >= grace,
        "nodes went down before the grace period ran out ({:?})",
        silent_since.elapsed()
    );
    // The others are held: their sessions still answer, which saves them.
    let mut saved = Vec::new();
    for (first, _) in &sessions {
        if node_state(&h.node(&first.node_id)) == NodeState::Ready {
            h.heartbeat(&first.session_id)
                .await
                .expect("a held session still answers");
            saved.push(first.node_id.clone());
        }
    }
    println!(
        "held sessions saved within {:?} of seeing the first marks (grace {grace:?})",
        reacted.elapsed()
    );
    assert_eq!(
        saved.len(),
        silent - crate::dispatcher::budget::MIN_BURST,
        "one grace period's budget went DOWN, no more"
    );
    assert_eq!(down(&h), crate::dispatcher::budget::MIN_BURST);
    for id in &saved {
        assert_eq!(node_state(&h.node(id)), NodeState::Ready, "{id} was saved");
    }
}

#[tokio::test]
async fn a_manager_behind_turns_new_sessions_away_with_a_time_to_come_back() {
    let mut h = Harness::start().await;
    let (served, _stream) = h.open("served", "host-a").await;
    // A probe runs 2 s late: the manager is behind. (Stamped a second
    // ahead, so that a slow test machine still finds it in the window.)
    let at = Instant::now() + Duration::from_secs(1);
    h.dispatcher
        .inner
        .lag
        .record(at - Duration::from_secs(2), at);
    let request = SessionRequest {
        node_id: "newcomer".into(),
        description: Some(NodeDescription::default()),
    };
    let refused = h
        .client
        .session(request.clone())
        .await
        .expect_err("refused while behind");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("busy admitting nodes") && refused.message().contains("late"),
        "{}",
        refused.message()
    );
    let retry: u64 = refused
        .metadata()
        .get(shoal_proto::RETRY_AFTER_MS_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a retry hint");
    assert_eq!(retry, 4000, "twice the lag");
    assert!(
        h.store.read(|s| s.node("newcomer").is_none()),
        "nothing written"
    );
    // The node already served keeps its session and heartbeats.
    let beat = h
        .client
        .heartbeat(HeartbeatRequest {
            session_id: served.session_id.clone(),
        })
        .await;
    assert!(beat.is_ok(), "{beat:?}");
    // Once the late spell is older than the admission window, it gets in.
    let started = Instant::now();
    loop {
        match h.client.session(request.clone()).await {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(started.elapsed() < DEADLINE, "still refused: {status:?}");
                tokio::time::sleep(PERIOD).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
    eprintln!("admitted again after {:?}", started.elapsed());
    assert_eq!(node_state(&h.node("newcomer")), NodeState::Ready);
}
