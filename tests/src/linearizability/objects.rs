//! Objects the clients read but do not write as registers: tasks (the
//! orchestrator writes them) and the cluster object (rotating a join token
//! writes it), checked from the reads alone.
//!
//! **Model.** Every object has a version, the Raft index of the entry that
//! last wrote it: it only grows while the object exists, and a deleted object
//! never comes back (ids are not reused). Who writes it and when is mostly
//! invisible to the clients. A [`Read`] answers at one point between its call
//! and its return, with either a whole *scope* ([`Cover::Scope`], every task
//! of one service: an object of that scope missing from the answer is absent
//! at that point) or one object ([`Cover::Object`], present with its version
//! or absent). A [`Bump`] is a client write acknowledged to have changed an
//! object: after it, the object's version is larger than any it had before
//! the bump was invoked.
//!
//! **Checks.** Reads that follow each other in real time (one returned before
//! the next was invoked) must see each object as a linearizable store shows it
//! at successive points. Per object, [`check_objects`] looks for the three
//! patterns that no such order explains:
//!
//! - *stale*: a read saw version `b` after an earlier read had returned `a > b`;
//! - *resurrected*: present, then absent, then present again;
//! - *lost bump*: a read saw version `b` after an acknowledged bump that began
//!   once an earlier read had returned `a >= b`.
//!
//! For the reads of one object without bumps the first two are also
//! sufficient: rank each read by the version it saw (an absence lowest if
//! some sighting follows it, highest otherwise); with neither pattern, no
//! read returned before a lower-ranked one began, and placing each read at
//! the latest invocation among itself and the lower-ranked reads gives an
//! order. With bumps, and across objects (checked one by one, so two objects
//! that disagree about a moment go unnoticed), the checks are necessary
//! conditions only: weaker than a search, but they never flag a correct
//! history.
//!
//! **Witnesses.** A task is built from its service's spec and keeps the
//! register value (the service's `gen` label) the service had when the
//! orchestrator created it ([`Seen::built_from`]). So the write of that value
//! was applied before any read that shows the task returned.
//! [`apply_witnesses`] turns this into a bound on the write in the register
//! history: an unknown write becomes one applied by then, an acknowledged one
//! returns no later than then. A value that no write invoked by then could
//! have produced, or only a failed one, is an anomaly.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::{Anomaly, History, Op, OpResult, Operation};

/// What a read covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cover {
    /// Every object of this scope: one missing from the answer is absent.
    Scope(String),
    /// This object alone: missing from the answer means not found.
    Object(String),
}

impl fmt::Display for Cover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cover::Scope(scope) => write!(f, "all of {scope}"),
            Cover::Object(object) => write!(f, "{object}"),
        }
    }
}

/// An object in a read's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub object: String,
    /// The scope the object belongs to (a task's service), for ever.
    pub scope: String,
    pub version: u64,
    /// The value of the register named `scope` it was built from, if any.
    pub built_from: Option<u64>,
}

/// An answered read, with its invocation and return times (see [`History`]).
#[derive(Clone, Debug)]
pub struct Read {
    pub client: usize,
    pub cover: Cover,
    pub seen: Vec<Seen>,
    pub call: u64,
    pub ret: u64,
}

impl fmt::Display for Read {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} read of {} in [{}, {}]",
            self.client, self.cover, self.call, self.ret
        )
    }
}

/// An acknowledged client write that changed `object`.
#[derive(Clone, Debug)]
pub struct Bump {
    pub client: usize,
    pub object: String,
    pub call: u64,
    pub ret: u64,
}

impl History {
    /// The current time, for the call of a read or bump about to be sent.
    pub fn now(&self) -> u64 {
        self.lock().now()
    }

    /// Record an answered read invoked at `call` (from [`History::now`]);
    /// returns its return time. Failed reads constrain nothing: leave them out.
    pub fn read_objects(&self, client: usize, call: u64, cover: Cover, seen: Vec<Seen>) -> u64 {
        let mut rec = self.lock();
        let ret = rec.now();
        rec.reads.push(Read {
            client,
            cover,
            seen,
            call,
            ret,
        });
        ret
    }

    /// Record that a write to `object` invoked at `call` was acknowledged now.
    pub fn bump(&self, client: usize, object: &str, call: u64) {
        let mut rec = self.lock();
        let ret = rec.now();
        rec.bumps.push(Bump {
            client,
            object: object.to_owned(),
            call,
            ret,
        });
    }

    pub fn object_reads(&self) -> Vec<Read> {
        self.lock().reads.clone()
    }

    pub fn bumps(&self) -> Vec<Bump> {
        self.lock().bumps.clone()
    }
}

#[derive(Clone, Debug, Default)]
pub struct ObjectReport {
    /// At most one per object, in object order.
    pub anomalies: Vec<Anomaly>,
    pub objects: usize,
    /// Object-in-a-read observations checked, absences included.
    pub observations: usize,
}

/// One read's view of one object: its version, or `None` for absent.
#[derive(Clone, Copy)]
struct Obs<'a> {
    read: &'a Read,
    version: Option<u64>,
}

/// Check every object seen in `reads` against the reads and `bumps`.
pub fn check_objects(reads: &[Read], bumps: &[Bump]) -> ObjectReport {
    let mut scope_of: HashMap<&str, &str> = HashMap::new();
    let mut in_scope: HashMap<&str, Vec<&str>> = HashMap::new();
    for seen in reads.iter().flat_map(|r| &r.seen) {
        if scope_of.insert(&seen.object, &seen.scope).is_none() {
            in_scope.entry(&seen.scope).or_default().push(&seen.object);
        }
    }
    let mut by_object: BTreeMap<&str, Vec<Obs<'_>>> = BTreeMap::new();
    for read in reads {
        let version = |object: &str| {
            read.seen
                .iter()
                .find(|s| s.object == object)
                .map(|s| s.version)
        };
        let objects: &[&str] = match &read.cover {
            Cover::Scope(scope) => in_scope.get(scope.as_str()).map_or(&[], Vec::as_slice),
            Cover::Object(object) => match scope_of.get_key_value(object.as_str()) {
                Some((known, _)) => std::slice::from_ref(known),
                // Never seen present: its absence says nothing.
                None => &[],
            },
        };
        for object in objects {
            by_object.entry(object).or_default().push(Obs {
                read,
                version: version(object),
            });
        }
    }
    let mut report = ObjectReport {
        objects: by_object.len(),
        ..Default::default()
    };
    for (object, obs) in by_object {
        report.observations += obs.len();
        let bumps: Vec<&Bump> = bumps.iter().filter(|b| b.object == object).collect();
        if let Some(explanation) = check_object(&obs, &bumps) {
            report.anomalies.push(Anomaly {
                key: object.to_owned(),
                explanation,
                ops: Vec::new(),
            });
        }
    }
    report
}

fn check_object(obs: &[Obs<'_>], bumps: &[&Bump]) -> Option<String> {
    // Present observations by return time, and for each prefix the one with
    // the highest version: what a read invoked at `t` must not go below.
    let mut present: Vec<(&Read, u64)> = obs
        .iter()
        .filter_map(|o| Some((o.read, o.version?)))
        .collect();
    present.sort_by_key(|(r, _)| r.ret);
    let highest = running_max(present.iter().map(|(_, v)| *v));
    let before = |t: u64| {
        let k = present.partition_point(|(r, _)| r.ret < t);
        (k > 0).then(|| present[highest[k - 1]])
    };
    for &(read, version) in &present {
        if let Some((earlier, seen)) = before(read.call)
            && seen > version
        {
            return Some(format!(
                "stale: {read} saw version {version} after {earlier} had returned version {seen}"
            ));
        }
    }

    // Each bump's floor: the highest version returned before it began.
    let mut floors: Vec<(&Bump, &Read, u64)> = bumps
        .iter()
        .filter_map(|b| before(b.call).map(|(r, v)| (*b, r, v)))
        .collect();
    floors.sort_by_key(|(b, ..)| b.ret);
    let highest_floor = running_max(floors.iter().map(|(.., v)| *v));
    for &(read, version) in &present {
        let k = floors.partition_point(|(b, ..)| b.ret < read.call);
        if k == 0 {
            continue;
        }
        let (bump, earlier, floor) = floors[highest_floor[k - 1]];
        if version <= floor {
            return Some(format!(
                "lost write: {read} saw version {version}, but client {}'s write \
                 acknowledged in [{}, {}] followed {earlier}, which had returned version {floor}",
                bump.client, bump.call, bump.ret
            ));
        }
    }

    let first = present.first()?.0;
    let last = present.iter().max_by_key(|(r, _)| r.call)?.0;
    obs.iter()
        .filter(|o| o.version.is_none())
        .find(|o| o.read.call > first.ret && o.read.ret < last.call)
        .map(|gone| {
            format!(
                "resurrected: present in {first}, absent in {}, present again in {last}",
                gone.read
            )
        })
}

/// For each prefix of `values`, the index of its (first) largest value.
fn running_max(values: impl Iterator<Item = u64>) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::new();
    let mut top = None;
    for (i, v) in values.enumerate() {
        if top.is_none_or(|t| v > t) {
            top = Some(v);
            best.push(i);
        } else {
            best.push(*best.last().expect("a previous index"));
        }
    }
    best
}

/// What [`apply_witnesses`] did.
#[derive(Clone, Debug, Default)]
pub struct Witnessed {
    /// Writes whose return the witnesses brought forward (unknown ones included).
    pub bounded: usize,
    /// Witnesses no write explains, at most one per key.
    pub anomalies: Vec<Anomaly>,
}

/// Bound the register writes in `ops` by what `reads` witnessed (see the
/// module doc).
pub fn apply_witnesses(ops: &mut [Operation], reads: &[Read]) -> Witnessed {
    // (key, value) -> the earliest return of a read showing an object built from it.
    let mut witnessed: BTreeMap<(&str, u64), &Read> = BTreeMap::new();
    for read in reads {
        for seen in &read.seen {
            if let Some(value) = seen.built_from {
                let entry = witnessed.entry((&seen.scope, value)).or_insert(read);
                if read.ret < entry.ret {
                    *entry = read;
                }
            }
        }
    }
    let mut anomalies: BTreeMap<String, Anomaly> = BTreeMap::new();
    let mut bounded = 0;
    for ((key, value), read) in witnessed {
        let writes = |o: &&mut Operation| matches!(&o.op, Op::Write { key: k, value: v } if k == key && *v == value);
        let mut candidates: Vec<&mut Operation> = ops
            .iter_mut()
            .filter(writes)
            .filter(|o| o.result != OpResult::Failed && o.call <= read.ret)
            .collect();
        match candidates.as_mut_slice() {
            [write] => {
                if write.result == OpResult::Unknown {
                    write.result = OpResult::Ok;
                    write.ret = read.ret;
                    bounded += 1;
                } else if read.ret < write.ret {
                    write.ret = read.ret;
                    bounded += 1;
                }
            }
            // Several writes of the value: which one is not known.
            [_, _, ..] => {}
            [] => {
                let failed = ops.iter().filter(|o| o.result == OpResult::Failed).find(
                    |o| matches!(&o.op, Op::Write { key: k, value: v } if k == key && *v == value),
                );
                let mut explanation = format!(
                    "{read} shows an object built from value {value}, which no write \
                     invoked by then could have produced"
                );
                if let Some(failed) = failed {
                    explanation.push_str(&format!("; a write of that value failed: {failed}"));
                }
                anomalies.entry(key.to_owned()).or_insert(Anomaly {
                    key: key.to_owned(),
                    explanation,
                    ops: failed.into_iter().cloned().collect(),
                });
            }
        }
    }
    Witnessed {
        bounded,
        anomalies: anomalies.into_values().collect(),
    }
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
