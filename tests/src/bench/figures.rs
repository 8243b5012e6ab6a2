//! Printing figures (`key=value` on stdout) and the pure computations behind
//! them: percentiles, the manager's scheduler and Raft log lines.

use std::fmt::Display;
use std::io::Write;
use std::time::{Duration, SystemTime};

/// A figure in MiB with one decimal, or `unknown` when it could not be read.
pub fn mib_figure(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}"))
        .unwrap_or_else(|| "unknown".into())
}

/// Print one figure as `key=value` and flush, so a script (or a person
/// watching a long run) sees it at once.
pub fn figure(key: &str, value: impl Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{key}={value}");
    let _ = out.flush();
}

/// Progress for the person running the benchmark (stderr, never parsed).
pub fn note(message: impl Display) {
    eprintln!("shoal-bench: {message}");
}

/// Milliseconds of a duration, as printed in figures.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// How many nodes the manager marked DOWN for missed heartbeats, by its log.
pub fn nodes_marked_down(log: &str) -> usize {
    log.matches("node down: heartbeat failure").count()
}

/// The worst lateness of this process's own tokio timers since the last
/// [`LagProbe::take`]: how long a hollow agent's heartbeat could have waited
/// in the harness itself, before the manager had any part in it.
pub struct LagProbe {
    worst_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LagProbe {
    /// Wakes every 50 ms and records how late each wake-up was.
    pub fn start() -> LagProbe {
        use std::sync::atomic::Ordering;
        let worst_us = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let worst = worst_us.clone();
        let task = tokio::spawn(async move {
            const TICK: Duration = Duration::from_millis(50);
            loop {
                let before = std::time::Instant::now();
                tokio::time::sleep(TICK).await;
                let late = before.elapsed().saturating_sub(TICK);
                worst.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
            }
        });
        LagProbe { worst_us, task }
    }

    /// The worst lateness seen since the last call, in milliseconds.
    pub fn take(&self) -> u64 {
        self.worst_us.swap(0, std::sync::atomic::Ordering::Relaxed) / 1000
    }
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `p`-th percentile (0..=100) of `values` by the nearest-rank method;
/// `None` when there are no values.
pub fn percentile(values: &[u128], p: f64) -> Option<u128> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What the manager's `scheduling pass` log lines add up to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SchedulerPasses {
    pub passes: u64,
    pub assigned: u64,
    pub elapsed_ms: u64,
    pub max_pass_ms: u64,
}

/// Sum the scheduler's `scheduling pass assigned=N ... elapsed_ms=M` lines of a
/// manager log (colour codes, if any, are skipped).
pub fn scheduler_passes(log: &str) -> SchedulerPasses {
    let mut sum = SchedulerPasses::default();
    for line in log.lines().filter(|l| l.contains("scheduling pass")) {
        let clean = strip_ansi(line);
        let field = |name: &str| -> Option<u64> {
            clean
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        };
        let (Some(assigned), Some(elapsed)) = (field("assigned"), field("elapsed_ms")) else {
            continue;
        };
        sum.passes += 1;
        sum.assigned += assigned;
        sum.elapsed_ms += elapsed;
        sum.max_pass_ms = sum.max_pass_ms.max(elapsed);
    }
    sum
}

/// The sums of numeric fields over the log lines whose message is `message`
/// (`name=value` pairs after it; lines missing a field count it as 0), and
/// how many such lines there were.
pub fn sum_fields<const N: usize>(log: &str, message: &str, fields: [&str; N]) -> (u64, [f64; N]) {
    let mut sums = [0.0; N];
    let mut lines = 0;
    for line in log.lines().filter(|l| l.contains(message)) {
        let clean = strip_ansi(line);
        lines += 1;
        for (sum, name) in sums.iter_mut().zip(fields) {
            *sum += clean
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    (lines, sums)
}

/// A Raft event of a manager log, with the line's wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftEvent {
    pub at: SystemTime,
    pub kind: RaftEventKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftEventKind {
    /// raft-rs: an election timeout fired (a pre-vote round starts; the term
    /// moves only if a majority grants it).
    ElectionStarted,
    /// raft-rs: this manager won the election for `term`.
    BecameLeader { term: u64 },
    /// shoal: this manager's store leads in `term` (its no-op is applied, the
    /// leader-only components start, writes are served).
    StoreLeads { term: u64 },
}

/// The Raft events of a manager log (info level; lines start with an
/// RFC 3339 UTC timestamp, as tracing's default format writes them).
pub fn raft_events(log: &str) -> Vec<RaftEvent> {
    let mut events = Vec::new();
    for line in log.lines() {
        let clean = strip_ansi(line);
        let kind = if clean.contains("starting a new election") {
            RaftEventKind::ElectionStarted
        } else if let Some(rest) = clean.split("became leader at term ").nth(1) {
            let Some(term) = leading_number(rest) else {
                continue;
            };
            RaftEventKind::BecameLeader { term }
        } else if clean.contains("raft leadership changed") && clean.contains("is_leader=true") {
            let Some(term) = clean
                .split_whitespace()
                .find_map(|w| w.strip_prefix("term=")?.parse().ok())
            else {
                continue;
            };
            RaftEventKind::StoreLeads { term }
        } else {
            continue;
        };
        if let Some(at) = clean.split_whitespace().next().and_then(parse_utc) {
            events.push(RaftEvent { at, kind });
        }
    }
    events
}

fn leading_number(s: &str) -> Option<u64> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `2026-01-02T03:04:05.123456Z` as a `SystemTime` (the shared RFC 3339
/// parser; any number of fraction digits).
pub fn parse_utc(stamp: &str) -> Option<SystemTime> {
    let ns = u64::try_from(shoal_proto::rfc3339::parse_ns(stamp)?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `a / b` with two decimals, or `n/a` when `b` is zero.
pub fn ratio(a: u128, b: u128) -> String {
    if b == 0 {
        "n/a".into()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_fields_of_matching_lines() {
        let log = "\
2026-12-03T17:00:00Z  INFO shoal_manager::raft::work: raft work cycles=3 entries=10 apply_ms=1.5 persist_ms=2
2026-12-03T17:00:01Z  INFO shoal_manager::orchestrator::driver: orchestrator pass services=2 writes=5 decide_ms=4.25
2026-12-03T17:00:01Z  INFO shoal_manager::raft::work: raft work cycles=1 entries=2 apply_ms=0.5 persist_ms=1 checkpoint_ms=7
";
        let (lines, [cycles, apply, checkpoint]) =
            sum_fields(log, "raft work", ["cycles", "apply_ms", "checkpoint_ms"]);
        assert_eq!(lines, 2);
        assert_eq!((cycles, apply, checkpoint), (4.0, 2.0, 7.0));
        let (lines, [decide]) = sum_fields(log, "orchestrator pass", ["decide_ms"]);
        assert_eq!((lines, decide), (1, 4.25));
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
        assert_eq!(percentile(&v, 50.0), Some(5));
        assert_eq!(percentile(&v, 95.0), Some(10));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[42], 95.0), Some(42));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn counts_the_nodes_marked_down() {
        let log = "\x1b[33m WARN\x1b[0m shoal_manager::dispatcher::monitor: node down: heartbeat failure node.id=a silent_ms=6010\n\
                   INFO shoal_manager::dispatcher::monitor: session expired node.id=a\n\
                   WARN shoal_manager::dispatcher::monitor: node down: heartbeat failure node.id=b silent_ms=6200\n";
        assert_eq!(nodes_marked_down(log), 2);
        assert_eq!(nodes_marked_down(""), 0);
    }

    #[test]
    fn sums_scheduler_passes_with_and_without_colour() {
        let log = "\
2026-01-01T00:00:00Z  INFO shoal_manager::scheduler::driver: scheduler started nodes=3 pending=0
2026-01-01T00:00:01Z  INFO shoal_manager::scheduler::driver: scheduling pass assigned=1000 unplaceable=0 elapsed_ms=7
\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m scheduling pass \u{1b}[3massigned\u{1b}[0m=500 \u{1b}[3munplaceable\u{1b}[0m=2 \u{1b}[3melapsed_ms\u{1b}[0m=12
garbage scheduling pass without fields";
        let sum = scheduler_passes(log);
        assert_eq!(
            sum,
            SchedulerPasses {
                passes: 2,
                assigned: 1500,
                elapsed_ms: 19,
                max_pass_ms: 12
            }
        );
    }

    #[test]
    fn parses_log_timestamps() {
        let at = |s| parse_utc(s).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            at("2000-03-01T00:00:01.5Z"),
            Some(Duration::from_millis(951_868_801_500))
        );
        assert_eq!(
            at("2026-11-28T18:00:00.076460Z"),
            Some(Duration::new(1_795_888_800, 76_460_000))
        );
        assert_eq!(at("2026-13-01T00:00:00Z"), None);
        assert_eq!(at("not a time"), None);
    }

    #[test]
    fn reads_raft_events() {
        let log = "\
2026-11-28T18:00:00.076450Z  INFO raft::raft: starting a new election, raft_id: 2, term: 3
2026-11-28T18:00:00.076456Z  INFO raft::raft: became candidate at term 4, raft_id: 2, term: 4
2026-11-28T18:00:00.076460Z  INFO raft::raft: became leader at term 4, raft_id: 2, term: 4
2026-11-28T18:00:00.080299Z  INFO shoal_manager::raft::node: raft leadership changed term=4 leader_id=2 is_leader=false
2026-11-28T18:00:00.090299Z  INFO shoal_manager::raft::node: raft leadership changed term=4 leader_id=2 is_leader=true
garbage became leader at term 5";
        let kinds: Vec<RaftEventKind> = raft_events(log).iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                RaftEventKind::ElectionStarted,
                RaftEventKind::BecameLeader { term: 4 },
                RaftEventKind::StoreLeads { term: 4 },
            ]
        );
        let events = raft_events(log);
        assert_eq!(
            events[2].at.duration_since(events[1].at).unwrap(),
            Duration::from_micros(13_839)
        );
    }

    #[test]
    fn ratio_guards_zero() {
        assert_eq!(ratio(3, 2), "1.50");
        assert_eq!(ratio(3, 0), "n/a");
    }
}
