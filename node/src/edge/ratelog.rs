//! Rate limits for repeated warnings: one line per cause per interval, with a count of what
//! was left out, so a flood of bad connections cannot flood the log (STYLE.md 5).
//!
//! ```text
//!  warn site ──allow(cause, now)──▶ Some(suppressed) ─▶ log one line "(N more since)"
//!                                  None              ─▶ counted, not logged
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Per-cause log limiter. `allow` is pure arithmetic on the `now` it is given.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    /// Per cause: when its last line was logged, and how many were left out since.
    causes: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    /// At most one line per cause per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter { interval, causes: Mutex::new(HashMap::new()) }
    }

    /// `Some(n)` when a line for `cause` may be logged at `now` (`n`: how many were left out
    /// since the last one); `None` when it is left out (and counted).
    pub fn allow(&self, cause: &'static str, now: Instant) -> Option<u64> {
        let mut causes = self.causes.lock().unwrap_or_else(PoisonError::into_inner);
        match causes.get_mut(cause) {
            Some((last, left_out)) if now.saturating_duration_since(*last) < self.interval => {
                *left_out += 1;
                None
            }
            Some((last, left_out)) => {
                let n = *left_out;
                *last = now;
                *left_out = 0;
                Some(n)
            }
            None => {
                causes.insert(cause, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_interval_with_a_count() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow("a", t0), Some(0));
        assert_eq!(l.allow("b", t0), Some(0), "causes are limited separately");
        for i in 1..=99 {
            assert_eq!(l.allow("a", t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(l.allow("a", t0 + Duration::from_secs(10)), Some(99));
        assert_eq!(l.allow("a", t0 + Duration::from_secs(11)), None);
        assert_eq!(l.allow("a", t0 + Duration::from_secs(25)), Some(1));
    }
}
