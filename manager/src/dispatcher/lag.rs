//! How far behind this manager is: how late a timer that should fire every
//! [`PROBE`] actually runs.
//!
//! A heartbeat is stamped when the dispatcher handles it, not when the agent
//! sent it. When the manager's runtime is saturated (thousands of agents
//! joining at once, TLS handshakes, a burst of scheduling), every heartbeat is
//! handled late by about as long as a woken task waits for a core, and a
//! healthy node can look silent for the grace period. Two rules use the lag:
//!
//! - the monitor adds it to the grace period, up to [`MAX_DISCOUNT`] grace
//!   periods more, so the manager's own delay is never charged to a node;
//! - a new session is admitted only while the lag stays under half a
//!   heartbeat period ([`super::session::admit`]): the nodes already served
//!   keep their heartbeats answered while the others come back later.
//!
//! The probe measures the delay of one timer task; a heartbeat waits about as
//! long for its connection's task and again for its request's, so this is a
//! lower bound of the harm, which is why the monitor takes the largest lag of
//! a whole grace period and not an average.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the probe wakes up.
pub(super) const PROBE: Duration = Duration::from_millis(100);

/// The longest past the lag is remembered for.
const HISTORY: Duration = Duration::from_secs(120);

/// Session admission looks at the lag of this last stretch.
pub(super) const ADMISSION_WINDOW: Duration = Duration::from_secs(1);

/// The monitor stretches the grace period by at most this many grace periods.
pub(super) const MAX_DISCOUNT: u32 = 2;

/// The recent lateness of the probe. Clone freely: clones share the samples.
#[derive(Clone, Default)]
pub(super) struct Lag {
    samples: Arc<Mutex<Samples>>,
}

/// Lateness samples, oldest first: (when the probe ran, how late).
#[derive(Default)]
struct Samples(VecDeque<(Instant, Duration)>);

impl Samples {
    fn record(&mut self, at: Instant, late: Duration) {
        while self
            .0
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > HISTORY)
        {
            self.0.pop_front();
        }
        // Only lateness is worth remembering; an on-time probe keeps the
        // queue short on an idle manager.
        if !late.is_zero() {
            self.0.push_back((at, late));
        }
    }

    fn max_within(&self, now: Instant, window: Duration) -> Duration {
        self.0
            .iter()
            .rev()
            .take_while(|(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|(_, late)| *late)
            .max()
            .unwrap_or_default()
    }
}

impl Lag {
    /// Record that the probe due at `due` ran at `at`.
    pub fn record(&self, due: Instant, at: Instant) {
        let late = at.saturating_duration_since(due);
        // Below a millisecond is the timer's own granularity, not load.
        let late = if late < Duration::from_millis(2) {
            Duration::ZERO
        } else {
            late
        };
        super::lock(&self.samples).record(at, late);
    }

    /// The largest lateness seen within `window` before `now`.
    pub fn recent(&self, now: Instant, window: Duration) -> Duration {
        super::lock(&self.samples).max_within(now, window)
    }

    /// Wake up every [`PROBE`] and record how late each wake-up was, until
    /// `token` is cancelled.
    pub async fn probe(&self, token: CancellationToken) {
        let mut due = Instant::now() + PROBE;
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            let now = Instant::now();
            self.record(due, now);
            due = now + PROBE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_lag_is_the_largest_within_the_window() {
        let lag = Lag::default();
        let t0 = Instant::now();
        lag.record(t0, t0 + Duration::from_millis(900));
        let t1 = t0 + Duration::from_secs(3);
        lag.record(t1, t1 + Duration::from_millis(200));
        let now = t1 + Duration::from_secs(1);
        assert_eq!(
            lag.recent(now, Duration::from_secs(5)),
            Duration::from_millis(900)
        );
        assert_eq!(
            lag.recent(now, Duration::from_secs(2)),
            Duration::from_millis(200),
            "the 900 ms spell is older than the window"
        );
        assert_eq!(
            lag.recent(now + Duration::from_secs(10), Duration::from_secs(2)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_timely_probe_records_nothing_and_old_samples_go() {
        let lag = Lag::default();
        let t0 = Instant::now();
        lag.record(t0, t0 + Duration::from_micros(500));
        assert!(super::super::lock(&lag.samples).0.is_empty());
        lag.record(t0, t0 + Duration::from_millis(50));
        let later = t0 + HISTORY + Duration::from_secs(1);
        lag.record(later, later + Duration::from_millis(5));
        assert_eq!(super::super::lock(&lag.samples).0.len(), 1);
    }

    #[tokio::test]
    async fn the_probe_sees_a_blocked_runtime() {
        let lag = Lag::default();
        let token = CancellationToken::new();
        let probe = tokio::spawn({
            let lag = lag.clone();
            let token = token.clone();
            async move { lag.probe(token).await }
        });
        // Let the probe arm its timer, then hold the runtime's only thread
        // well past it, as a saturated runtime would.
        tokio::task::yield_now().await;
        std::thread::sleep(PROBE * 4);
        // The probe runs (late) and again on time, at least twice.
        tokio::time::sleep(PROBE * 2 + PROBE / 2).await;
        let late = lag.recent(Instant::now(), Duration::from_secs(60));
        token.cancel();
        probe.await.unwrap();
        assert!(late >= PROBE * 2, "{late:?}");
    }
}
