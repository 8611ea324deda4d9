//! When a member must check that its disk still takes writes, and what a check's outcome
//! means.
//!
//! ```text
//!   now ──▶ DurabilityCheck::due? ──yes──▶ runtime writes the probe record (timeout)
//!                                                  │
//!   now, ProbeOutcome ◀────────────────────────────┘
//!        └──▶ DurabilityCheck::record ──▶ Durable (next check in `interval`)
//!                                       | Lost(why)  (the node must stop: see below)
//! ```
//!
//! Why: a leader whose disk filled writes nothing while the cluster is idle (heartbeats and
//! lease reads need no disk), so nothing tells it, or its followers, that it can no longer
//! commit; the first write a failover needs then fails and costs a leader change in the middle
//! of the failover. Every member therefore makes a small synced write every `interval`; one
//! that fails or takes longer than `timeout` means the node cannot persist, and it stops the
//! way a node whose Raft core stopped on a storage error does (not ready, exit, restart by the
//! supervisor), so a leader gives way while nothing depends on it yet.
//!
//! One failure is enough: the write is the store's own kind of write (one redb transaction,
//! fsync), so a node that cannot make it cannot append to the Raft log either.

use std::time::Duration;

use super::MonoTime;

/// How often the disk is checked and how long one check may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurabilityParams {
    /// Time between the end of one check and the start of the next.
    pub interval: Duration,
    /// Longest a check's write (commit with fsync included) may take before the disk counts as
    /// unable to persist.
    pub timeout: Duration,
}

impl Default for DurabilityParams {
    /// One check a second, each allowed 5 s: a healthy fsync takes milliseconds, and a disk
    /// that stalls for seconds stalls the Raft log just as long.
    fn default() -> Self {
        DurabilityParams { interval: Duration::from_secs(1), timeout: Duration::from_secs(5) }
    }
}

/// How one check's write went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Committed and synced.
    Written,
    /// The store refused it; the store's error text.
    Failed(String),
    /// It did not finish within [`DurabilityParams::timeout`].
    TimedOut,
}

/// What a check's outcome means for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurabilityVerdict {
    /// The disk takes writes.
    Durable,
    /// The node cannot persist; why, for the log and `/readyz`.
    Lost(String),
}

/// The schedule of checks of one node's store.
#[derive(Debug, Clone)]
pub struct DurabilityCheck {
    params: DurabilityParams,
    next_due: MonoTime,
}

impl DurabilityCheck {
    /// A schedule whose first check is due at `now`.
    pub fn new(params: DurabilityParams, now: MonoTime) -> DurabilityCheck {
        DurabilityCheck { params, next_due: now }
    }

    /// The parameters.
    pub fn params(&self) -> DurabilityParams {
        self.params
    }

    /// When the next check is due.
    pub fn next_due(&self) -> MonoTime {
        self.next_due
    }

    /// True when a check should start at `now`.
    pub fn due(&self, now: MonoTime) -> bool {
        now >= self.next_due
    }

    /// Records the outcome of the check that ended at `now` and schedules the next one.
    pub fn record(&mut self, now: MonoTime, outcome: ProbeOutcome) -> DurabilityVerdict {
        self.next_due = now.saturating_add(self.params.interval);
        match outcome {
            ProbeOutcome::Written => DurabilityVerdict::Durable,
            ProbeOutcome::Failed(cause) => {
                DurabilityVerdict::Lost(format!("a probe write to the data store failed: {cause}"))
            }
            ProbeOutcome::TimedOut => DurabilityVerdict::Lost(format!(
                "a probe write to the data store did not finish within {:?}",
                self.params.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> DurabilityCheck {
        DurabilityCheck::new(DurabilityParams::default(), MonoTime::from_ms(1_000))
    }

    #[test]
    fn the_first_check_is_due_at_once_and_the_next_one_an_interval_after_it_ends() {
        let mut c = check();
        assert!(c.due(MonoTime::from_ms(1_000)));
        assert_eq!(
            c.record(MonoTime::from_ms(1_020), ProbeOutcome::Written),
            DurabilityVerdict::Durable
        );
        assert!(!c.due(MonoTime::from_ms(2_019)));
        assert!(c.due(MonoTime::from_ms(2_020)));
        assert_eq!(c.next_due(), MonoTime::from_ms(2_020));
    }

    #[test]
    fn one_failed_write_means_the_node_cannot_persist() {
        let mut c = check();
        let verdict = c.record(
            MonoTime::from_ms(1_000),
            ProbeOutcome::Failed("No space left on device".into()),
        );
        let DurabilityVerdict::Lost(why) = verdict else { panic!("a failed write was accepted") };
        assert!(why.contains("No space left on device"), "{why}");
    }

    #[test]
    fn a_write_that_times_out_means_the_node_cannot_persist_and_says_how_long_it_waited() {
        let mut c = check();
        let DurabilityVerdict::Lost(why) =
            c.record(MonoTime::from_ms(6_000), ProbeOutcome::TimedOut)
        else {
            panic!("a timed-out write was accepted")
        };
        assert!(why.contains("5s"), "{why}");
    }
}
