//! The object checks and the witnesses on hand-made histories, good and bad.

use super::*;

/// A read of every task of service "s" seeing `tasks` (id, version).
fn list(tasks: &[(&str, u64)], call: u64, ret: u64) -> Read {
    Read {
        client: 0,
        cover: Cover::Scope("s".into()),
        seen: tasks
            .iter()
            .map(|(id, version)| seen(id, *version, None))
            .collect(),
        call,
        ret,
    }
}

/// A read of the one object `id`: `None` is "not found".
fn get(id: &str, version: Option<u64>, call: u64, ret: u64) -> Read {
    Read {
        client: 1,
        cover: Cover::Object(id.into()),
        seen: version.map(|v| seen(id, v, None)).into_iter().collect(),
        call,
        ret,
    }
}

fn seen(id: &str, version: u64, built_from: Option<u64>) -> Seen {
    Seen {
        object: id.into(),
        scope: "s".into(),
        version,
        built_from,
    }
}

fn bump(id: &str, call: u64, ret: u64) -> Bump {
    Bump {
        client: 2,
        object: id.into(),
        call,
        ret,
    }
}

fn flagged(reads: &[Read], bumps: &[Bump]) -> Vec<String> {
    let report = check_objects(reads, bumps);
    report.anomalies.iter().map(|a| a.key.clone()).collect()
}

fn explain(reads: &[Read], bumps: &[Bump]) -> String {
    let report = check_objects(reads, bumps);
    report.anomalies.iter().map(|a| a.to_string()).collect()
}

#[test]
fn objects_that_appear_change_and_go_in_order_pass() {
    let reads = [
        list(&[], 0, 10),
        list(&[("t1", 5)], 20, 30),
        get("t1", Some(7), 40, 50),
        list(&[("t1", 7), ("t2", 8)], 60, 70),
        list(&[("t2", 9)], 80, 90),
        get("t1", None, 100, 110),
    ];
    assert!(flagged(&reads, &[]).is_empty(), "{}", explain(&reads, &[]));
    let report = check_objects(&reads, &[]);
    // Four lists see (or miss) both tasks; two inspections see t1.
    assert_eq!((report.objects, report.observations), (2, 10));
    // Overlapping reads may come in either order.
    let overlapping = [list(&[("t1", 7)], 0, 50), list(&[("t1", 5)], 10, 60)];
    assert!(flagged(&overlapping, &[]).is_empty());
}

#[test]
fn a_version_going_back_is_stale() {
    let reads = [list(&[("t1", 7)], 0, 10), get("t1", Some(5), 20, 30)];
    assert_eq!(flagged(&reads, &[]), ["t1"]);
    let explanation = explain(&reads, &[]);
    assert!(
        explanation.contains("stale") && explanation.contains("saw version 5"),
        "{explanation}"
    );
}

#[test]
fn an_object_gone_and_back_is_resurrected() {
    let reads = [
        get("t1", Some(5), 0, 10),
        list(&[], 20, 30),
        get("t1", Some(5), 40, 50),
    ];
    assert_eq!(flagged(&reads, &[]), ["t1"]);
    assert!(explain(&reads, &[]).contains("resurrected"));
    // Absent before it appears, or after it is gone, is fine; so is an
    // absence that overlaps a sighting.
    assert!(flagged(&reads[..2], &[]).is_empty());
    assert!(flagged(&reads[1..], &[]).is_empty());
    let overlapping = [reads[0].clone(), list(&[], 5, 45), reads[2].clone()];
    assert!(flagged(&overlapping, &[]).is_empty());
    // Not found for an object never seen says nothing.
    assert!(flagged(&[get("t9", None, 0, 10)], &[]).is_empty());
}

#[test]
fn an_acknowledged_bump_must_show_in_later_reads() {
    let before = get("c", Some(5), 0, 10);
    let bumped = [bump("c", 20, 30)];
    // Seen after the bump: the version must have grown.
    assert_eq!(
        flagged(&[before.clone(), get("c", Some(5), 40, 50)], &bumped),
        ["c"]
    );
    assert!(explain(&[before.clone(), get("c", Some(5), 40, 50)], &bumped).contains("lost write"));
    assert!(flagged(&[before.clone(), get("c", Some(6), 40, 50)], &bumped).is_empty());
    // A read overlapping the bump may miss it; so may one when no read
    // preceded the bump (there is no floor to compare with).
    assert!(flagged(&[before.clone(), get("c", Some(5), 25, 50)], &bumped).is_empty());
    assert!(flagged(&[get("c", Some(5), 40, 50)], &bumped).is_empty());
    // A bump of another object does not count.
    assert!(flagged(&[before, get("c", Some(5), 40, 50)], &[bump("d", 20, 30)]).is_empty());
}

fn w(value: u64, result: OpResult, call: u64, ret: u64) -> Operation {
    Operation::new(3, Op::write("s", value), result, call, ret)
}

fn r(value: Option<u64>, call: u64, ret: u64) -> Operation {
    Operation::read(4, "s", value, call, ret)
}

/// A list read of service "s" at [call, ret] showing a task built from `value`.
fn built(value: u64, call: u64, ret: u64) -> Read {
    Read {
        seen: vec![seen("t1", 1, Some(value))],
        ..list(&[], call, ret)
    }
}

#[test]
fn a_task_built_from_a_value_bounds_the_write_of_that_value() {
    // The write of 2 is still unacknowledged when a task built from it is
    // seen: it was applied by then, so a later read of 1 is stale.
    let mut ops = vec![
        w(1, OpResult::Ok, 0, 10),
        w(2, OpResult::Unknown, 20, u64::MAX),
        r(Some(1), 60, 70),
    ];
    assert!(super::super::check(&ops).anomalies.is_empty());
    let witnessed = apply_witnesses(&mut ops, &[built(2, 30, 40)]);
    assert!(witnessed.anomalies.is_empty());
    assert_eq!(witnessed.bounded, 1);
    assert_eq!((ops[1].result, ops[1].ret), (OpResult::Ok, 40));
    assert_eq!(super::super::check(&ops).anomalies.len(), 1);
    // An acknowledged write returns no later than the witness.
    let mut ops = vec![w(2, OpResult::Ok, 20, 100), r(None, 60, 70)];
    assert!(super::super::check(&ops).anomalies.is_empty());
    assert_eq!(apply_witnesses(&mut ops, &[built(2, 30, 40)]).bounded, 1);
    assert_eq!(ops[0].ret, 40);
    // A witness after the write returned changes nothing.
    assert_eq!(apply_witnesses(&mut ops, &[built(2, 50, 60)]).bounded, 0);
    assert_eq!(super::super::check(&ops).anomalies.len(), 1);
}

#[test]
fn a_task_built_from_a_value_nobody_wrote_is_an_anomaly() {
    // Written only after the read returned, or by a write that failed.
    let mut late = vec![w(2, OpResult::Ok, 50, 60)];
    let anomalies = apply_witnesses(&mut late, &[built(2, 30, 40)]).anomalies;
    assert_eq!(anomalies.len(), 1);
    assert!(
        anomalies[0]
            .explanation
            .contains("no write invoked by then")
    );
    let mut failed = vec![w(2, OpResult::Failed, 0, 10)];
    let anomalies = apply_witnesses(&mut failed, &[built(2, 30, 40)]).anomalies;
    assert!(
        anomalies[0]
            .explanation
            .contains("a write of that value failed"),
        "{}",
        anomalies[0]
    );
}

#[test]
fn the_recorder_times_object_reads_and_bumps_on_the_register_clock() {
    let history = History::new();
    let write = history.invoke(0, Op::write("s", 1));
    history.complete(write, OpResult::Ok);
    let call = history.now();
    let ret = history.read_objects(1, call, Cover::Object("c".into()), Vec::new());
    let bump_call = history.now();
    history.bump(2, "c", bump_call);
    let (ops, reads, bumps) = (history.ops(), history.object_reads(), history.bumps());
    assert!(ops[0].ret <= reads[0].call && reads[0].call <= reads[0].ret);
    assert_eq!(reads[0].ret, ret);
    assert!(ret <= bumps[0].call && bumps[0].call <= bumps[0].ret);
}
