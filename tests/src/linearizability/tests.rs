//! The checker on hand-made and generated histories, good and known-bad.

use super::*;

fn w(value: u64, call: u64, ret: u64) -> Operation {
    Operation::write(0, "a", value, call, ret)
}

fn r(value: Option<u64>, call: u64, ret: u64) -> Operation {
    Operation::read(1, "a", value, call, ret)
}

fn w_with(result: OpResult, value: u64, call: u64, ret: u64) -> Operation {
    Operation::new(2, Op::write("a", value), result, call, ret)
}

/// The keys with an anomaly, after checking that no key ran out of budget.
fn flagged(ops: &[Operation]) -> Vec<String> {
    let report = check(ops);
    assert!(report.unknown_keys.is_empty(), "{:?}", report.unknown_keys);
    report.anomalies.iter().map(|a| a.key.clone()).collect()
}

fn explain(ops: &[Operation]) -> String {
    check(ops).anomalies.iter().map(|a| a.to_string()).collect()
}

#[test]
fn sequential_history_passes() {
    let ops = [
        r(None, 0, 5),
        w(1, 10, 20),
        r(Some(1), 21, 30),
        w(2, 31, 40),
        r(Some(2), 41, 50),
    ];
    assert!(flagged(&ops).is_empty());
    assert_eq!(check(&ops).ops_checked, 5);
}

#[test]
fn overlapping_write_and_read_pass_in_either_order() {
    assert!(flagged(&[w(1, 0, 10), r(None, 5, 15)]).is_empty());
    assert!(flagged(&[w(1, 0, 10), r(Some(1), 5, 15)]).is_empty());
    // Touching intervals count as overlapping.
    assert!(flagged(&[w(1, 0, 10), r(None, 10, 15)]).is_empty());
}

#[test]
fn stale_read_after_a_completed_write_is_an_anomaly() {
    let ops = [w(0, 0, 10), w(1, 20, 30), r(Some(0), 40, 50)];
    assert_eq!(flagged(&ops), ["a"]);
    let explanation = explain(&ops);
    assert!(
        explanation.contains("read(a) -> 0") && explanation.contains("write(a, 1)"),
        "{explanation}"
    );
    assert_eq!(flagged(&[w(1, 0, 10), r(None, 20, 30)]), ["a"]);
}

#[test]
fn read_of_a_value_never_written_is_an_anomaly() {
    let ops = [w(1, 0, 10), r(Some(7), 5, 15)];
    assert_eq!(flagged(&ops), ["a"]);
    assert!(explain(&ops).contains("no write could have produced"));
    // A write invoked only after the read returned cannot explain it either.
    assert_eq!(flagged(&[r(Some(7), 0, 5), w(7, 10, 20)]), ["a"]);
}

#[test]
fn reads_going_backwards_are_an_anomaly() {
    // Each read overlaps the write of 1, so each alone is fine; together they
    // would need the register to go from 1 back to 0.
    let (first, second) = (r(Some(1), 30, 40), r(Some(0), 50, 60));
    let ops = [w(0, 0, 10), w(1, 20, 100), first.clone()];
    assert!(flagged(&ops).is_empty());
    assert!(flagged(&[w(0, 0, 10), w(1, 20, 100), second.clone()]).is_empty());
    assert_eq!(flagged(&[&ops[..], &[second]].concat()), ["a"]);
}

#[test]
fn unknown_writes_may_apply_late_or_never_and_failed_writes_never() {
    let unknown = w_with(OpResult::Unknown, 1, 0, 10);
    // Seen after the client gave up on it, or never seen.
    assert!(flagged(&[unknown.clone(), r(Some(1), 20, 30)]).is_empty());
    assert!(flagged(&[unknown.clone(), r(None, 20, 30), r(None, 40, 50)]).is_empty());
    // Once seen, it stays applied.
    assert_eq!(
        flagged(&[unknown, r(Some(1), 20, 30), r(None, 40, 50)]),
        ["a"]
    );
    // A failed write must not be observed.
    let failed = [w_with(OpResult::Failed, 1, 0, 10), r(Some(1), 20, 30)];
    assert_eq!(flagged(&failed), ["a"]);
    assert!(explain(&failed).contains("a write of that value failed"));
    assert_eq!(check(&failed).ops_checked, 1);
}

#[test]
fn keys_are_checked_independently() {
    let b = |mut op: Operation| {
        op.op = match op.op {
            Op::Write { value, .. } => Op::write("b", value),
            Op::Read { .. } => Op::read("b"),
        };
        op
    };
    let good_b = [
        b(w(1, 0, 10)),
        b(r(Some(1), 20, 30)),
        b(w(2, 40, 50)),
        b(r(Some(2), 60, 70)),
    ];
    let ops = [&good_b[..], &[w(1, 0, 10), r(None, 20, 30)]].concat();
    assert_eq!(flagged(&ops), ["a"]);
    assert_eq!(check(&ops).ops_checked, 6);
    assert!(flagged(&good_b).is_empty());
    let bad_b = [b(w(1, 0, 10)), b(r(None, 20, 30))];
    assert_eq!(flagged(&[&ops[..], &bad_b[..]].concat()), ["a", "b"]);
}

#[test]
fn recorder_times_operations_and_keeps_pending_writes_as_unknown() {
    let history = History::new();
    let write = history.invoke(0, Op::write("a", 1));
    history.complete(write, OpResult::Ok);
    let read = history.clone().invoke(1, Op::read("a"));
    history.complete(read, OpResult::Read(Some(1)));
    history.invoke(2, Op::write("a", 2)); // never completes: unknown
    history.invoke(3, Op::read("a")); // never completes: dropped
    let ops = history.ops();
    assert!(ops[0].call <= ops[0].ret && ops[0].ret <= ops[1].call && ops[1].call <= ops[1].ret);
    assert_eq!((ops[2].result, ops[2].ret), (OpResult::Unknown, u64::MAX));
    assert!(flagged(&ops).is_empty());
    assert_eq!((ops.len(), check(&ops).ops_checked), (4, 3));
}

/// splitmix64: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49EB_3113_3BA9);
        (z ^ (z >> 31)) % n
    }
}

/// Five clients run operations back to back on three keys; each operation
/// takes effect at a random point inside its interval (an unknown write
/// possibly later, or never), and reads return what a sequential map holds
/// at their point. Write values are unique.
fn linearizable_history(seed: u64) -> Vec<Operation> {
    let mut rng = Rng(seed);
    let (mut ops, mut effects) = (Vec::new(), Vec::new());
    for client in 0..5 {
        let mut now = 0;
        for _ in 0..60 {
            let call = now + rng.below(20);
            now = call + 1 + rng.below(40);
            let key = ["a", "b", "c"][rng.below(3) as usize];
            let point = call + rng.below(now - call + 1);
            let value = ops.len() as u64;
            let unknown_point = (rng.below(2) == 0).then(|| point + rng.below(100));
            let (op, result, point) = match rng.below(100) {
                0..50 => (Op::read(key), OpResult::Read(None), Some(point)),
                50..92 => (Op::write(key, value), OpResult::Ok, Some(point)),
                92..96 => (Op::write(key, value), OpResult::Unknown, unknown_point),
                _ => (Op::write(key, value), OpResult::Failed, None),
            };
            effects.extend(point.map(|p| (p, ops.len())));
            ops.push(Operation::new(client, op, result, call, now));
        }
    }
    effects.sort_unstable();
    let mut map = BTreeMap::new();
    for (_, i) in effects {
        match ops[i].op.clone() {
            Op::Write { key, value } => drop(map.insert(key, value)),
            Op::Read { key } => ops[i].result = OpResult::Read(map.get(&key).copied()),
        }
    }
    ops
}

/// Make one read return the value of a write that a later completed write
/// overwrote before the read began. Returns the read's key.
fn make_one_read_stale(ops: &mut [Operation]) -> String {
    let stale = ops.iter().enumerate().find_map(|(i, read)| {
        let Op::Read { key } = &read.op else {
            return None;
        };
        let done_before =
            |o: &&Operation| o.result == OpResult::Ok && o.op.key() == key && o.ret < read.call;
        let writes = || {
            ops.iter()
                .filter(|o| matches!(o.op, Op::Write { .. }))
                .filter(done_before)
        };
        let older = writes().find(|older| writes().any(|newer| older.ret < newer.call))?;
        let Op::Write { value, .. } = older.op else {
            return None;
        };
        Some((i, key.clone(), value))
    });
    let (i, key, value) = stale.expect("some read can be made stale");
    ops[i].result = OpResult::Read(Some(value));
    key
}

#[test]
fn random_linearizable_histories_pass_and_one_stale_read_fails() {
    for seed in 0..20 {
        let mut ops = linearizable_history(seed);
        assert!(flagged(&ops).is_empty(), "seed {seed}: {}", explain(&ops));
        let key = make_one_read_stale(&mut ops);
        assert_eq!(flagged(&ops), [key], "seed {seed}");
    }
}

#[test]
fn an_adversarial_history_stops_at_the_budget() {
    // 40 fully concurrent writes, then a read of "absent": refuting it means
    // trying every subset of the writes, far beyond any budget.
    let mut ops: Vec<_> = (0..40).map(|v| w(v, 0, 100)).collect();
    ops.extend([r(None, 200, 300), Operation::write(0, "b", 1, 0, 10)]);
    for report in [check_with_budget(&ops, 10_000), check(&ops)] {
        assert_eq!(report.unknown_keys, ["a"]);
        assert!(report.anomalies.is_empty());
    }
}
