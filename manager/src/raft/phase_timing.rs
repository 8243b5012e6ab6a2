//! Where the Raft task's time goes: applying committed entries to the tables,
//! persisting the log (append, hard state, fsync), and writing the state
//! checkpoint. Summed over about a second and logged as one info line under
//! [`crate::FIGURES_TARGET`] while there is work, so a benchmark (or an
//! operator with `SHOAL_LOG=info,shoal::figures=info`) can break a run down by
//! phase without a profiler.

use std::time::{Duration, Instant};

/// How much work one summary line covers, at least.
const PERIOD: Duration = Duration::from_secs(1);

/// A phase of the Raft task's work.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    Apply,
    Persist,
    Checkpoint,
}

/// Time spent per phase since the last summary line.
#[derive(Debug)]
pub(crate) struct Work {
    since: Instant,
    cycles: u64,
    entries: u64,
    apply: Duration,
    persist: Duration,
    checkpoint: Duration,
}

impl Default for Work {
    fn default() -> Work {
        Work {
            since: Instant::now(),
            cycles: 0,
            entries: 0,
            apply: Duration::ZERO,
            persist: Duration::ZERO,
            checkpoint: Duration::ZERO,
        }
    }
}

impl Work {
    /// Add `spent` to `phase`.
    pub(crate) fn add(&mut self, phase: Phase, spent: Duration) {
        match phase {
            Phase::Apply => self.apply += spent,
            Phase::Persist => self.persist += spent,
            Phase::Checkpoint => self.checkpoint += spent,
        }
    }

    /// One Ready cycle that applied `entries` committed entries.
    pub(crate) fn cycle(&mut self, entries: usize) {
        self.cycles += 1;
        self.entries += entries as u64;
    }

    /// The summary, once a period has passed since the last one; `None`
    /// while the period runs or when there was nothing to time.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Summary> {
        if now.saturating_duration_since(self.since) < PERIOD {
            return None;
        }
        let work = std::mem::take(self);
        let busy = work.apply + work.persist + work.checkpoint;
        (busy > Duration::ZERO).then(|| Summary {
            cycles: work.cycles,
            entries: work.entries,
            apply_ms: ms(work.apply),
            persist_ms: ms(work.persist),
            checkpoint_ms: ms(work.checkpoint),
        })
    }

    /// Log the summary if one is due.
    pub(crate) fn log_if_due(&mut self) {
        if let Some(s) = self.take_due(Instant::now()) {
            tracing::info!(
                target: crate::FIGURES_TARGET,
                cycles = s.cycles,
                entries = s.entries,
                apply_ms = s.apply_ms,
                persist_ms = s.persist_ms,
                checkpoint_ms = s.checkpoint_ms,
                "raft work"
            );
        }
    }
}

/// One summary line's figures (milliseconds, with fractions).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub cycles: u64,
    pub entries: u64,
    pub apply_ms: f64,
    pub persist_ms: f64,
    pub checkpoint_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_each_phase_and_reports_once_a_period() {
        let mut work = Work::default();
        let start = work.since;
        work.add(Phase::Apply, Duration::from_millis(3));
        work.add(Phase::Persist, Duration::from_micros(2500));
        work.add(Phase::Apply, Duration::from_millis(1));
        work.cycle(7);
        work.cycle(1);
        assert_eq!(work.take_due(start + PERIOD / 2), None, "not yet a period");
        let s = work.take_due(start + PERIOD).expect("a period of work");
        assert_eq!((s.cycles, s.entries), (2, 8));
        assert_eq!((s.apply_ms, s.persist_ms), (4.0, 2.5));
        assert_eq!(s.checkpoint_ms, 0.0);
        // Counting starts again; an idle period logs nothing.
        assert_eq!(work.take_due(Instant::now() + PERIOD), None);
    }
}
