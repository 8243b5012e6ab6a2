//! Exponential backoff with jitter, for reconnecting to managers and retrying
//! engine calls: 100 ms doubling to a 5 s cap, each delay drawn from the upper
//! half of its step so that a thousand agents that lost the same manager do not
//! come back in lockstep.

use std::time::Duration;

use rand::Rng;

const INITIAL: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(5);

/// Delays between attempts of one retried operation.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt (grows with each call).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Self::ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// Back to the first, short delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The largest delay of the `attempt`-th retry.
    fn ceiling(attempt: u32) -> Duration {
        INITIAL.saturating_mul(1u32 << attempt.min(16)).min(CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_jittered() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= INITIAL / 2 && first <= INITIAL, "{first:?}");
        let mut last = first;
        for _ in 0..40 {
            last = b.next_delay();
            assert!(last <= CAP);
        }
        assert!(last >= CAP / 2, "{last:?}");
        b.reset();
        assert!(b.next_delay() <= INITIAL);
    }
}
