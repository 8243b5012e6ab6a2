//! A linearizability checker for the fault tests: clients record what they
//! asked the cluster and what came back, and [`check`] decides whether some
//! single order of those operations explains every answer. Reads of what the
//! clients do not write as registers (tasks, the cluster object) are checked
//! by [`objects`], which also turns what the tasks show into bounds on the
//! register writes.
//!
//! **Model.** The store is a map of independent registers, one per key (a
//! service name). A register starts absent. A write sets it to a `u64`; a read
//! returns the value or `None`. A write that failed with a definite error
//! never happened, and neither did a read that failed (a read changes
//! nothing, so dropping it loses no constraint). A write whose outcome is
//! unknown (a timeout, a lost leader) may take effect at any moment after its
//! invocation, even after the client gave up, or never: it is treated as
//! returning at +infinity, and it is allowed to remain unplaced.
//!
//! **Algorithm.** A history is linearizable if each operation can be given a
//! point between its invocation and its return so that the register, replayed
//! in the order of those points, gives every read its answer. Keys are
//! independent objects, so the history is linearizable exactly when each
//! key's sub-history is (Herlihy and Wing's locality), and each key is checked
//! on its own. Per key, a depth-first search builds the order one operation at
//! a time, in the manner of Wing and Gong refined by Lowe: the next operation
//! may be any unplaced one invoked no later than the earliest return among the
//! unplaced operations (anything invoked later would jump ahead of an
//! operation that finished before it began), provided the register allows it:
//! writes always, reads only if they saw the current value. A dead end undoes
//! the last placement and tries its next alternative. Two search nodes that
//! placed the same set of operations and reached the same value have the same
//! future, so each such pair is explored once (a hash set of bitset and value,
//! as Lowe and later Porcupine do). The search succeeds once every operation
//! with a known return is placed. Two refinements keep common histories fast:
//! a read that fits is placed without trying alternatives (see `search`),
//! and unknown writes nobody observed are left out
//! (see `drop_unobserved_unknown_writes`). The worst case is still
//! exponential, so each key gets a step budget and is reported as unknown
//! when the budget runs out.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub mod objects;

/// Search steps per key before [`check`] gives up on that key.
pub const DEFAULT_BUDGET: u64 = 1_000_000;

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write { key: String, value: u64 },
    Read { key: String },
}

impl Op {
    pub fn write(key: &str, value: u64) -> Self {
        Op::Write {
            key: key.to_owned(),
            value,
        }
    }

    pub fn read(key: &str) -> Self {
        Op::Read {
            key: key.to_owned(),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Op::Write { key, .. } | Op::Read { key } => key,
        }
    }
}

/// What came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// The write was applied.
    Ok,
    /// Definitely not applied (e.g. a validation error). A failed read is dropped.
    Failed,
    /// The write may have been applied, at any time after its invocation, or never.
    Unknown,
    /// A successful read; `None` means the key was absent.
    Read(Option<u64>),
}

/// One operation with its invocation (`call`) and completion (`ret`) times in
/// ticks (nanoseconds since the [`History`] was created, or anything monotonic).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub op: Op,
    pub result: OpResult,
    pub call: u64,
    /// `u64::MAX` while pending; ignored for unknown outcomes.
    pub ret: u64,
}

impl Operation {
    pub fn new(client: usize, op: Op, result: OpResult, call: u64, ret: u64) -> Self {
        Operation {
            client,
            op,
            result,
            call,
            ret,
        }
    }

    /// A successful write of `value` to `key`.
    pub fn write(client: usize, key: &str, value: u64, call: u64, ret: u64) -> Self {
        Self::new(client, Op::write(key, value), OpResult::Ok, call, ret)
    }

    /// A successful read of `key` that returned `value`.
    pub fn read(client: usize, key: &str, value: Option<u64>, call: u64, ret: u64) -> Self {
        Self::new(client, Op::read(key), OpResult::Read(value), call, ret)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = if self.ret == u64::MAX {
            "..".to_owned()
        } else {
            self.ret.to_string()
        };
        write!(f, "client {} ", self.client)?;
        match (&self.op, self.result) {
            (Op::Read { key }, OpResult::Read(v)) => write!(f, "read({key}) -> {}", show(v))?,
            (Op::Read { key }, r) => write!(f, "read({key}) {r:?}")?,
            (Op::Write { key, value }, r) => write!(f, "write({key}, {value}) {r:?}")?,
        }
        write!(f, " in [{}, {ret}]", self.call)
    }
}

fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "absent".to_owned(), |v| v.to_string())
}

/// Identifies an invocation in a [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(usize);

/// A recorder shared by the client tasks of a test. Times are taken under the
/// lock, so an operation completed before another was invoked always gets the
/// smaller timestamp.
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Recorded>>,
}

struct Recorded {
    origin: Instant,
    ops: Vec<Operation>,
    reads: Vec<objects::Read>,
    bumps: Vec<objects::Bump>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        let inner = Recorded {
            origin: Instant::now(),
            ops: Vec::new(),
            reads: Vec::new(),
            bumps: Vec::new(),
        };
        History {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Record that `client` is about to send `op`; call this before sending.
    pub fn invoke(&self, client: usize, op: Op) -> OpId {
        let mut rec = self.lock();
        let call = rec.now();
        rec.ops.push(Operation::new(
            client,
            op,
            OpResult::Unknown,
            call,
            u64::MAX,
        ));
        OpId(rec.ops.len() - 1)
    }

    /// Record the answer to `id`; call this after the reply arrived.
    pub fn complete(&self, id: OpId, result: OpResult) {
        let mut rec = self.lock();
        let ret = rec.now();
        let entry = &mut rec.ops[id.0];
        assert_eq!(entry.ret, u64::MAX, "operation {id:?} completed twice");
        let valid = match entry.op {
            Op::Write { .. } => !matches!(result, OpResult::Read(_)),
            Op::Read { .. } => !matches!(result, OpResult::Ok),
        };
        assert!(valid, "{result:?} is not an outcome of {:?}", entry.op);
        entry.result = result;
        entry.ret = ret;
    }

    /// Everything recorded so far; operations still pending count as unknown.
    pub fn ops(&self) -> Vec<Operation> {
        self.lock().ops.clone()
    }

    // A client task that panics mid-test must not take the history with it.
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Recorded {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }
}

/// A key whose history no order explains.
#[derive(Clone, Debug)]
pub struct Anomaly {
    pub key: String,
    pub explanation: String,
    /// The operations the explanation names.
    pub ops: Vec<Operation>,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {:?}: {}", self.key, self.explanation)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    /// At most one per key, in key order.
    pub anomalies: Vec<Anomaly>,
    /// Keys whose search ran out of budget: neither proven nor refuted.
    pub unknown_keys: Vec<String>,
    /// Operations that took part (failed writes and failed or pending reads excluded).
    pub ops_checked: usize,
}

/// Check `ops` with [`DEFAULT_BUDGET`] steps per key.
pub fn check(ops: &[Operation]) -> Report {
    check_with_budget(ops, DEFAULT_BUDGET)
}

pub fn check_with_budget(ops: &[Operation], budget: u64) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.op.key()).or_default().push(op);
    }
    let mut report = Report::default();
    for (key, ops) in by_key {
        let mut entries: Vec<Entry<'_>> = ops.iter().filter_map(|op| Entry::new(op)).collect();
        report.ops_checked += entries.len();
        drop_unobserved_unknown_writes(&mut entries);
        let key = key.to_owned();
        match unwritten_read(&entries, &ops).unwrap_or_else(|| search(&entries, budget)) {
            Verdict::Linearizable => {}
            Verdict::Unknown => report.unknown_keys.push(key),
            Verdict::Violation(explanation, ops) => {
                report.anomalies.push(Anomaly {
                    key,
                    explanation,
                    ops,
                });
            }
        }
    }
    report
}

enum Verdict {
    Linearizable,
    /// An explanation and the operations it names.
    Violation(String, Vec<Operation>),
    Unknown,
}

/// An operation that constrains the search: `ret` is `None` for unknown outcomes.
struct Entry<'a> {
    op: &'a Operation,
    kind: Kind,
    ret: Option<u64>,
}

#[derive(Clone, Copy)]
enum Kind {
    Write(u64),
    Read(Option<u64>),
}

impl<'a> Entry<'a> {
    fn new(op: &'a Operation) -> Option<Self> {
        let (kind, ret) = match (&op.op, op.result) {
            (Op::Write { value, .. }, OpResult::Ok) => (Kind::Write(*value), Some(op.ret)),
            (Op::Write { value, .. }, OpResult::Unknown) => (Kind::Write(*value), None),
            (Op::Read { .. }, OpResult::Read(v)) if op.ret != u64::MAX => {
                (Kind::Read(v), Some(op.ret))
            }
            _ => return None,
        };
        Some(Entry { op, kind, ret })
    }

    /// The register after this operation, or `None` if a read disagrees with `value`.
    fn step(&self, value: Option<u64>) -> Option<Option<u64>> {
        match self.kind {
            Kind::Write(v) => Some(Some(v)),
            Kind::Read(seen) => (seen == value).then_some(value),
        }
    }
}

/// An unknown write whose value no read returned can be left out: wherever it
/// is placed, no read sees its value, so the next write follows it with no read
/// in between and removing it changes no answer. Left in, it would be a
/// candidate at every step of the search and multiply its work.
fn drop_unobserved_unknown_writes(entries: &mut Vec<Entry<'_>>) {
    let read = |e: &Entry<'_>| if let Kind::Read(v) = e.kind { v } else { None };
    let observed: HashSet<u64> = entries.iter().filter_map(read).collect();
    entries
        .retain(|e| e.ret.is_some() || matches!(e.kind, Kind::Write(v) if observed.contains(&v)));
}

/// The cheap, clearly explained case: a read of a value that no write invoked
/// before the read returned could have produced.
fn unwritten_read(entries: &[Entry<'_>], all: &[&Operation]) -> Option<Verdict> {
    entries.iter().find_map(|read| {
        let (Kind::Read(Some(v)), Some(ret)) = (read.kind, read.ret) else {
            return None;
        };
        let writes_v =
            |e: &Entry<'_>| matches!(e.kind, Kind::Write(w) if w == v) && e.op.call <= ret;
        if entries.iter().any(writes_v) {
            return None;
        }
        let mut explanation = format!("{} returned a value no write could have produced", read.op);
        let mut ops = vec![read.op.clone()];
        let failed_v = |o: &&&Operation| matches!(o.op, Op::Write { value, .. } if value == v);
        if let Some(failed) = all
            .iter()
            .filter(|o| o.result == OpResult::Failed)
            .find(failed_v)
        {
            explanation.push_str(&format!("; a write of that value failed: {failed}"));
            ops.push((*failed).clone());
        }
        Some(Verdict::Violation(explanation, ops))
    })
}

/// Depth-first search over orders of `entries`, one placement per frame.
fn search(entries: &[Entry<'_>], budget: u64) -> Verdict {
    // Candidates are tried reads first, then writes, then unknown writes (which
    // never have to be placed), each in call order. A read that fits the current
    // value is placed with no alternative: it changes nothing, and every
    // unplaced operation returned no earlier than it was invoked, so any valid
    // order could have placed it here as well.
    let is_read = |i: usize| matches!(entries[i].kind, Kind::Read(_));
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].ret.is_none(), !is_read(i), entries[i].op.call));
    let mut placed = vec![0u64; entries.len().div_ceil(64)];
    let is_placed = |placed: &[u64], i: usize| placed[i / 64] & (1 << (i % 64)) != 0;
    let mut value = None;
    // Placed operations: (index in `entries`, value before it, where to resume in `order`).
    let mut stack: Vec<(usize, Option<u64>, usize)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // The deepest dead end (depth, stuck operation, value, its writer), for the explanation.
    let mut deepest: Option<DeadEnd> = None;
    let (mut cursor, mut steps) = (0, 0);
    'node: loop {
        // Whatever is placed next must come before the earliest unplaced return
        // (at equal times the call counts as before it). None left: success.
        let earliest_return = (0..entries.len())
            .filter(|&i| !is_placed(&placed, i))
            .filter_map(|i| Some((entries[i].ret?, i)))
            .min();
        let Some((limit, stuck)) = earliest_return else {
            return Verdict::Linearizable;
        };
        for (k, &i) in order.iter().enumerate().skip(cursor) {
            if entries[i].op.call > limit || is_placed(&placed, i) {
                continue;
            }
            steps += 1;
            if steps > budget {
                return Verdict::Unknown;
            }
            let Some(after) = entries[i].step(value) else {
                continue;
            };
            placed[i / 64] |= 1 << (i % 64);
            let resume = if is_read(i) { order.len() } else { k + 1 };
            if seen.insert((placed.clone(), after)) {
                stack.push((i, value, resume));
                (value, cursor) = (after, 0);
                continue 'node;
            }
            placed[i / 64] &= !(1 << (i % 64));
            if is_read(i) {
                break;
            }
        }
        if deepest.is_none_or(|(depth, ..)| stack.len() > depth) {
            let is_write = |f: &&(usize, _, _)| matches!(entries[f.0].kind, Kind::Write(_));
            let writer = stack.iter().rev().find(is_write).map(|f| f.0);
            deepest = Some((stack.len(), stuck, value, writer));
        }
        let Some((top, before, resume)) = stack.pop() else {
            return violation(entries, deepest);
        };
        placed[top / 64] &= !(1 << (top % 64));
        (value, cursor) = (before, resume);
    }
}

type DeadEnd = (usize, usize, Option<u64>, Option<usize>);

fn violation(entries: &[Entry<'_>], deepest: Option<DeadEnd>) -> Verdict {
    let (depth, stuck, value, writer) = deepest.expect("a failed search reached a dead end");
    let stuck = entries[stuck].op;
    let mut explanation = format!(
        "no order explains {stuck}: the longest consistent order places {depth} operation(s) \
         before it and leaves the value {}",
        show(value)
    );
    let mut ops = vec![stuck.clone()];
    if let Some(writer) = writer {
        explanation.push_str(&format!(", written by {}", entries[writer].op));
        ops.push(entries[writer].op.clone());
    }
    Verdict::Violation(explanation, ops)
}

#[cfg(test)]
mod tests;
