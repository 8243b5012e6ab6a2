//! Unit tests of the session registry and of admission (`session.rs`).

use super::*;

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
