//! Time as an input: a reading of the caller's monotonic clock, in whole milliseconds.
//!
//! The engine never reads a clock. The driver (node runtime, witness, simulator) picks an
//! arbitrary origin, reads its monotonic clock, truncates the reading to whole milliseconds and
//! passes it in as a [`MonoTime`]. Readings from different nodes are not comparable: only
//! differences on one node's clock mean anything, and those drift from real time within
//! `max_clock_drift` (see [`super::lease`]).

use std::fmt;
use std::ops::Add;
use std::time::Duration;

/// One millisecond, the resolution of [`MonoTime`].
pub const TICK: Duration = Duration::from_millis(1);

/// A reading of one node's monotonic clock: milliseconds since an origin the caller chose.
///
/// Adding a [`Duration`] rounds a sub-millisecond remainder *up* and saturates at the largest
/// reading, so a deadline computed by addition is never earlier than the exact sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(u64);

impl MonoTime {
    /// The clock's origin.
    pub const ZERO: MonoTime = MonoTime(0);

    /// The reading `ms` milliseconds after the origin.
    pub const fn from_ms(ms: u64) -> MonoTime {
        MonoTime(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_ms(self) -> u64 {
        self.0
    }

    /// `self + d`, with a sub-millisecond remainder of `d` rounded up; saturates.
    pub fn saturating_add(self, d: Duration) -> MonoTime {
        let ms = d.as_nanos().div_ceil(1_000_000);
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_add(ms))
    }

    /// `self - d`, with a sub-millisecond remainder of `d` rounded up; saturates at the origin.
    pub fn saturating_sub(self, d: Duration) -> MonoTime {
        let ms = d.as_nanos().div_ceil(1_000_000);
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        MonoTime(self.0.saturating_sub(ms))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: MonoTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for MonoTime {
    type Output = MonoTime;

    /// Same as [`MonoTime::saturating_add`].
    fn add(self, d: Duration) -> MonoTime {
        self.saturating_add(d)
    }
}

impl fmt::Display for MonoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addition_rounds_sub_millisecond_remainders_up_and_saturates() {
        let t = MonoTime::from_ms(10);
        assert_eq!(t + Duration::from_millis(5), MonoTime::from_ms(15));
        assert_eq!(t + Duration::from_micros(5_001), MonoTime::from_ms(16));
        assert_eq!(t + Duration::ZERO, t);
        assert_eq!(
            MonoTime::from_ms(u64::MAX - 1) + Duration::from_secs(1),
            MonoTime::from_ms(u64::MAX)
        );
        assert_eq!(t.saturating_sub(Duration::from_micros(1)), MonoTime::from_ms(9));
        assert_eq!(t.saturating_sub(Duration::from_secs(1)), MonoTime::ZERO);
    }

    #[test]
    fn duration_since_is_zero_when_earlier_is_later() {
        let (a, b) = (MonoTime::from_ms(3), MonoTime::from_ms(10));
        assert_eq!(b.saturating_duration_since(a), Duration::from_millis(7));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
        assert_eq!(b.to_string(), "10ms");
    }
}
