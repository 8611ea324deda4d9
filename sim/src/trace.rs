//! The run's event trace: every fault, actuator action, leadership and phase change, with its
//! simulated time. Its hash is the run's fingerprint: the same seed and binary must give the
//! same hash (`--check-determinism`).

use std::collections::VecDeque;
use std::time::Duration;

/// Events kept for a violation report.
pub const TAIL: usize = 60;

/// The trace of one run.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    events: u64,
    tail: VecDeque<String>,
    print: bool,
}

impl Trace {
    /// A trace; with `print`, every event is also written to stdout as it happens.
    pub fn new(print: bool) -> Trace {
        Trace { hash: 0xcbf2_9ce4_8422_2325, events: 0, tail: VecDeque::new(), print }
    }

    /// Records one event.
    pub fn event(&mut self, at: Duration, kind: &str, what: &str) {
        let line = format!("{:>10.3}s {kind:<6} {what}", at.as_secs_f64());
        for b in line.bytes().chain([b'\n']) {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.events += 1;
        if self.print {
            println!("{line}");
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The FNV-1a hash of every event so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many events so far.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Whether nothing happened yet.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The last [`TAIL`] events.
    pub fn tail(&self) -> impl Iterator<Item = &String> {
        self.tail.iter()
    }
}
