//! Whether this observer was on time for a check run, and what a late observer's timeout is
//! worth (DESIGN.md 3: "an observer that could not run a check on time reports unknown").
//!
//! ```text
//!  job tick (scheduled) ─▶ permit (queue) ─▶ run ─▶ ProbeResult{timed_out}
//!        │ start_delay                          │ overrun = latency - timeout
//!        └─────────── Lateness ◀────────────────┘ stall = worst runtime lag during the run
//!                         │                                 (StallMonitor)
//!                         ▼
//!          discount_late(result, lateness, tolerance) ─▶ Unknown if late and timed out
//! ```
//!
//! A timeout says "no answer in time". When the observer itself started the run late (its
//! checks queue behind the concurrency bound), or its runtime stalled while the run was in
//! flight (CPU starvation: the answer may have sat unread), or its timer fired late, the
//! missing answer is as likely the observer's fault as the site's: the run is `Unknown`, which
//! the detector counts as "did not answer", never as a vote against the site. An answer that
//! *is* evidence (refused connection, wrong status, non-zero exit) stays `Unhealthy` however
//! late the observer was. [`discount_late`] is pure; the clock readings come from the prober.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::ProbeResult;
use crate::decide::Verdict;
use crate::edge;

/// How late the observer was around one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lateness {
    /// From the run's scheduled tick to the moment it got its permit and started.
    pub start_delay: Duration,
    /// How much longer than its timeout the run took (the timer fired late).
    pub overrun: Duration,
    /// The worst lag of this process's runtime seen while the run was in flight.
    pub stall: Duration,
    /// Other runs waiting for a permit when this one started.
    pub queued: usize,
}

impl Lateness {
    /// The reason this observer counts as late under `tolerance`, if it does.
    fn why(&self, tolerance: Duration) -> Option<String> {
        if self.start_delay > tolerance {
            return Some(format!(
                "the run started {} late ({} other runs waiting for a slot)",
                edge::fmt_ms(self.start_delay),
                self.queued
            ));
        }
        if self.stall > tolerance {
            return Some(format!(
                "this node's runtime stalled for {} during the run",
                edge::fmt_ms(self.stall)
            ));
        }
        if self.overrun > tolerance {
            return Some(format!("the timeout fired {} late", edge::fmt_ms(self.overrun)));
        }
        None
    }
}

/// `result` as evidence about the site: a timeout while this observer was late (by more than
/// `tolerance`, see [`Lateness`]) becomes `Unknown`, with a detail saying so; every other
/// result is returned unchanged.
pub fn discount_late(result: ProbeResult, late: &Lateness, tolerance: Duration) -> ProbeResult {
    if !result.timed_out || result.verdict != Verdict::Unhealthy {
        return result;
    }
    match late.why(tolerance) {
        None => result,
        Some(why) => ProbeResult {
            verdict: Verdict::Unknown,
            detail: edge::shorten(
                &format!("observer overloaded, not counted: {} and {why}", result.detail),
                super::DETAIL_MAX,
            ),
            ..result
        },
    }
}

/// Samples kept by a [`StallMonitor`] (at one per period: the last ~12.8 s at 100 ms).
const STALL_SAMPLES: usize = 128;

/// Measures how late this process's tokio runtime wakes a sleeping task: a task sleeps
/// `period` again and again and records each oversleep. Dropping the monitor stops the task.
#[derive(Debug, Clone)]
pub struct StallMonitor {
    samples: Arc<Mutex<VecDeque<(Instant, Duration)>>>,
    _task: Arc<super::prober::AbortOnDrop>,
}

impl StallMonitor {
    /// Starts sampling on the current runtime every `period`.
    pub fn spawn(period: Duration) -> StallMonitor {
        let samples: Arc<Mutex<VecDeque<(Instant, Duration)>>> =
            Arc::new(Mutex::new(VecDeque::with_capacity(STALL_SAMPLES)));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                let asked = Instant::now();
                tokio::time::sleep(period).await;
                let woke = Instant::now();
                let lag = woke.saturating_duration_since(asked).saturating_sub(period);
                let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
                if s.len() == STALL_SAMPLES {
                    s.pop_front();
                }
                s.push_back((woke, lag));
            }
        });
        StallMonitor { samples, _task: Arc::new(super::prober::AbortOnDrop(task.abort_handle())) }
    }

    /// The worst lag of a wake-up at or after `since` (a wake-up measures the sleep before
    /// it, so one that ends after `since` overlaps the interval). Zero when none was seen.
    pub fn worst_since(&self, since: Instant) -> Duration {
        let s = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        s.iter()
            .rev()
            .take_while(|(at, _)| *at >= since)
            .map(|(_, lag)| *lag)
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(verdict: Verdict, timed_out: bool) -> ProbeResult {
        ProbeResult {
            verdict,
            latency: Duration::from_millis(800),
            detail: "timed out after 800ms".into(),
            lag: None,
            timed_out,
        }
    }

    const TOL: Duration = Duration::from_millis(250);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_timeout_of_an_observer_on_time_is_evidence() {
        let late = Lateness { start_delay: ms(100), overrun: ms(20), stall: ms(200), queued: 3 };
        assert_eq!(
            discount_late(result(Verdict::Unhealthy, true), &late, TOL).verdict,
            Verdict::Unhealthy
        );
    }

    #[test]
    fn a_timeout_of_a_late_observer_is_unknown() {
        for late in [
            Lateness { start_delay: ms(900), queued: 40, ..Lateness::default() },
            Lateness { stall: ms(600), ..Lateness::default() },
            Lateness { overrun: ms(300), ..Lateness::default() },
        ] {
            let r = discount_late(result(Verdict::Unhealthy, true), &late, TOL);
            assert_eq!(r.verdict, Verdict::Unknown, "{late:?}");
            assert!(
                r.detail.starts_with("observer overloaded, not counted: timed out"),
                "{}",
                r.detail
            );
        }
        let r = discount_late(
            result(Verdict::Unhealthy, true),
            &Lateness { start_delay: ms(900), queued: 40, ..Lateness::default() },
            TOL,
        );
        assert!(r.detail.contains("started 900ms late (40 other runs waiting"), "{}", r.detail);
    }

    #[test]
    fn an_answer_is_evidence_however_late_the_observer() {
        let late =
            Lateness { start_delay: ms(5000), overrun: ms(5000), stall: ms(5000), queued: 99 };
        for r in [result(Verdict::Unhealthy, false), result(Verdict::Healthy, false)] {
            assert_eq!(discount_late(r.clone(), &late, TOL), r);
        }
    }

    #[tokio::test]
    async fn the_monitor_sees_a_blocked_runtime() {
        let m = StallMonitor::spawn(ms(20));
        tokio::time::sleep(ms(100)).await;
        let before = Instant::now();
        // Block this (current-thread) runtime: the monitor's sleep overshoots by about this.
        std::thread::sleep(ms(400));
        tokio::time::sleep(ms(100)).await;
        let worst = m.worst_since(before);
        assert!(worst >= ms(300), "worst lag {worst:?}");
        assert_eq!(m.worst_since(Instant::now() + ms(1000)), Duration::ZERO);
    }
}
