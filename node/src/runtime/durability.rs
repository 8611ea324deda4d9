//! The durability probe's loop: every member checks, about once a second, that its store still
//! takes a synced write, and turns a failed or slow write into the node's storage fault.
//!
//! ```text
//!   decide::DurabilityCheck ──due──▶ store::DurabilityProbe::write (bounded by the timeout)
//!            ▲                                   │
//!            └──── record(outcome) ◀─────────────┘
//!                        │ Lost(why)
//!                        ▼
//!   NodeHandle::storage_fault := why ──▶ /readyz 503 with why
//!                                    └─▶ runtime::fatal ──▶ the node exits non-zero; its
//!                                        supervisor restarts it and a leader gives way at once
//! ```
//!
//! The schedule and the verdict are pure ([`crate::decide::durability`]); the write is the one
//! side effect. A real node makes it on a blocking thread so a hung disk cannot stall the async
//! threads and the timeout can fire; the simulator makes it inline ([`DiskWrites::Inline`]):
//! its disk answers at once, and a thread outside simulated time would make runs differ.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{debug, error};

use crate::consensus::store::DurabilityProbe;
use crate::decide::{DurabilityCheck, DurabilityParams, DurabilityVerdict, MonoTime, ProbeOutcome};

/// Why this node can no longer persist, once it cannot; `None` while it can. Set once by the
/// probe loop; read by `/readyz` and [`crate::runtime::fatal`].
pub type StorageFault = Arc<watch::Sender<Option<String>>>;

/// A fresh [`StorageFault`]: no fault.
pub fn no_fault() -> StorageFault {
    Arc::new(watch::channel(None).0)
}

/// How the probe's write is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskWrites {
    /// On tokio's blocking pool, bounded by the probe timeout (a real node).
    #[default]
    Blocking,
    /// On the calling task (the simulator, whose disk never blocks).
    Inline,
}

/// Starts the probe loop of a node's store; it ends when `stop` turns true or once it has
/// found a fault (written to `fault`, with one error log naming the store and what to do).
pub fn start(
    probe: DurabilityProbe,
    params: DurabilityParams,
    writes: DiskWrites,
    fault: StorageFault,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let origin = tokio::time::Instant::now();
        let now = || MonoTime::from_ms(origin.elapsed().as_millis() as u64);
        let mut check = DurabilityCheck::new(params, now());
        let mut counter: u64 = 0;
        loop {
            let wait = check.next_due().saturating_duration_since(now());
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if !check.due(now()) {
                continue;
            }
            counter = counter.wrapping_add(1);
            let outcome = write(&probe, counter, params, writes).await;
            match check.record(now(), outcome) {
                DurabilityVerdict::Durable => debug!(counter, "durability probe written"),
                DurabilityVerdict::Lost(why) => {
                    error!(
                        data_store = %probe.path().display(),
                        "this node cannot persist: {why}; it stops now so that it neither leads \
                         nor votes on a disk it cannot write (a leader gives way to another \
                         member). Free space on the disk holding {}, or check that disk (dmesg, \
                         SMART), then let the supervisor restart the node",
                        probe.path().display()
                    );
                    fault.send_replace(Some(why));
                    return;
                }
            }
        }
    });
}

async fn write(
    probe: &DurabilityProbe,
    counter: u64,
    params: DurabilityParams,
    writes: DiskWrites,
) -> ProbeOutcome {
    let result = match writes {
        DiskWrites::Inline => probe.write(counter).map_err(|e| e.to_string()),
        DiskWrites::Blocking => {
            let probe = probe.clone();
            let task = tokio::task::spawn_blocking(move || probe.write(counter));
            match tokio::time::timeout(params.timeout, task).await {
                Err(_) => return ProbeOutcome::TimedOut,
                Ok(Err(join)) => Err(format!("the probe's write task failed: {join}")),
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
            }
        }
    };
    match result {
        Ok(()) => ProbeOutcome::Written,
        Err(cause) => ProbeOutcome::Failed(cause),
    }
}
