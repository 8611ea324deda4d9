//! Drift reconciliation: after a failover or switchover committed, the leader reads back the
//! effect of each of its traffic steps every `reconcile_every`, records drift when it is first
//! found, and (with `repair = true`) has the step run again at the current epoch.
//!
//! ```text
//!  Observation.control ──▶ targets: the committed workflow of the current epoch, service
//!                          protecting / failed_over, its verifiable steps that succeeded
//!        │
//!        ▼ per target (service, workflow, step)
//!  no drift recorded, due (every reconcile_every) ─────────────▶ Check{repair: false}
//!  drift recorded, repair on, not paused, backoff over ────────▶ Check{repair: true}
//!  check_result(Holds | Drifted | Repaired | RepairFailed | NotRun)
//!        │   held until the next tick, then judged against the recorded drift:
//!        ▼
//!  Drifted,      nothing recorded ──▶ Propose(Drift{Detected})      (recorded once)
//!  Holds,        drift recorded   ──▶ Propose(Drift{Cleared})
//!  Repaired,     drift recorded   ──▶ Propose(Drift{Repaired})
//!  RepairFailed, drift recorded   ──▶ Propose(Drift{RepairFailed}), repair backoff doubles
//!  anything else                  ──▶ nothing (a drift that persists is not recorded again)
//! ```
//!
//! The repair is dispatched only once the drift is in the log: the audit trail comes first,
//! and a new leader knows of it. A pause stops the repair, never the check. The executor
//! checks the request against its own committed state and runs the step with the epoch it
//! reads there (see `runtime::control::executor`); this module decides only *when*.
//!
//! Like [`super::engine`], nothing here reads a clock or does I/O: the runtime and the
//! simulator call [`Reconciler::tick`] with an [`Observation`] and carry out the returned
//! [`ReconcileCommand`]s. One `Reconciler` lives for one leadership term.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::engine::{choose_executor, EngineParams, Observation};
use super::time::MonoTime;
use crate::actuate::verifiable;
use crate::consensus::state::control::{
    ControlRequest, DriftFinding, ServicePhase, ServiceState, StepStatus,
};
use crate::consensus::types::NodeId;
use crate::spec::Step;

/// Default [`ReconcileParams::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// Default [`ReconcileParams::repair_backoff_max`]: 10 minutes.
pub const DEFAULT_REPAIR_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);

/// Settings of a [`Reconciler`] that are not part of the cluster spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileParams {
    /// The leader's name and result grace (executor choice is the engine's).
    pub engine: EngineParams,
    /// Most checks and repairs out at once, over all services.
    pub max_in_flight: usize,
    /// Longest wait between two repairs of a drift whose repairs keep failing (the wait
    /// doubles from `reconcile_every` after each failure, up to the larger of this and
    /// `reconcile_every`).
    pub repair_backoff_max: Duration,
}

impl ReconcileParams {
    /// Defaults for the node named `node_name`.
    pub fn new(node_name: impl Into<String>) -> ReconcileParams {
        ReconcileParams {
            engine: EngineParams::new(node_name),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            repair_backoff_max: DEFAULT_REPAIR_BACKOFF_MAX,
        }
    }
}

/// One read-back (and, with `repair`, a run of the step if it drifted) to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckDispatch {
    /// Service name.
    pub service: String,
    /// The committed workflow.
    pub workflow_id: u64,
    /// Index of the step in its plan.
    pub step: usize,
    /// The service's epoch as the leader sees it; the executor uses its own, and refuses when
    /// they differ.
    pub epoch: u64,
    /// Node that runs it; None: the leader itself.
    pub executor: Option<NodeId>,
    /// The step, as committed (for the local run and messages).
    pub action: Step,
    /// Whether the executor runs the step again when the read-back finds drift.
    pub repair: bool,
    /// When the leader stops waiting (its clock).
    pub deadline: MonoTime,
}

/// What the reconciler asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ReconcileCommand {
    /// Carry out this check and report with [`Reconciler::check_result`].
    Check(CheckDispatch),
    /// Propose this `Drift` entry, then call [`Reconciler::proposal_done`] with its service.
    Propose(ControlRequest),
    /// Log it: a check could not run (at most once per check interval and step).
    Alert {
        /// The service concerned.
        service: String,
        /// What happened and when it is tried again.
        message: String,
    },
}

/// What a check found (or did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The step's effect holds (a repair request found nothing to repair).
    Holds(String),
    /// The effect no longer holds; no repair was asked for.
    Drifted(String),
    /// The effect had drifted and the step ran again successfully.
    Repaired(String),
    /// The effect had drifted and running the step again failed.
    RepairFailed(String),
    /// Nothing was checked: the executor was unreachable, refused, or could not read back.
    NotRun(String),
}

type Key = (String, u64, usize);

#[derive(Debug, Clone)]
struct Track {
    epoch: u64,
    /// The service's `reconcile_every` at the last tick.
    every: Duration,
    next_due: MonoTime,
    /// Deadline of the check out, if one is.
    in_flight: Option<MonoTime>,
    /// A result waiting to be judged at the next tick.
    result: Option<CheckOutcome>,
    repair_failures: u32,
    repair_not_before: MonoTime,
}

/// The leader's drift reconciler for one leadership term; see the module doc.
#[derive(Debug)]
pub struct Reconciler {
    params: ReconcileParams,
    tracks: BTreeMap<Key, Track>,
    /// Services with a `Drift` proposal in flight: nothing more is proposed or dispatched for
    /// them until [`Reconciler::proposal_done`].
    proposing: BTreeSet<String>,
}

/// A traffic step to reconcile, as found in the committed state.
struct Target<'a> {
    key: Key,
    epoch: u64,
    state: &'a ServiceState,
    step: usize,
    every: Duration,
    repair: bool,
}

/// The targets of `obs`: see the module doc.
fn targets<'a>(obs: &Observation<'a>) -> Vec<Target<'a>> {
    let Some(spec) = obs.control.spec.as_ref().map(|v| &v.spec) else { return Vec::new() };
    let mut out = Vec::new();
    for (name, s) in &obs.control.services {
        let Some(policy) = spec.policy_for(name) else { continue };
        if !matches!(s.phase, ServicePhase::Protecting | ServicePhase::FailedOver) {
            continue;
        }
        let Some(wf) = s.traffic_workflow() else { continue };
        for (i, st) in wf.steps.iter().enumerate() {
            let traffic = st.action.as_ref().is_some_and(|a| verifiable(&a.action));
            if traffic && matches!(st.status, StepStatus::Succeeded { .. }) {
                out.push(Target {
                    key: (name.clone(), wf.id, i),
                    epoch: s.epoch,
                    state: s,
                    step: i,
                    every: policy.reconcile_every,
                    repair: policy.repair && s.paused.is_none(),
                });
            }
        }
    }
    out
}

impl Reconciler {
    /// A reconciler for a leader whose term starts now.
    pub fn new(params: ReconcileParams) -> Reconciler {
        Reconciler { params, tracks: BTreeMap::new(), proposing: BTreeSet::new() }
    }

    /// Checks and repairs out now.
    pub fn in_flight(&self) -> usize {
        self.tracks.values().filter(|t| t.in_flight.is_some()).count()
    }

    /// Decides what is due at `obs.now`. A target seen for the first time is first checked
    /// `reconcile_every` later (its step just ran, or an earlier leader checked it).
    pub fn tick(&mut self, obs: &Observation) -> Vec<ReconcileCommand> {
        let now = obs.now;
        let targets = targets(obs);
        let live: BTreeSet<&Key> = targets.iter().map(|t| &t.key).collect();
        self.tracks.retain(|k, _| live.contains(k));
        let mut out = Vec::new();
        let mut in_flight = self.in_flight();
        for t in &targets {
            let track = self.tracks.entry(t.key.clone()).or_insert_with(|| Track {
                epoch: t.epoch,
                every: t.every,
                next_due: now + t.every,
                in_flight: None,
                result: None,
                repair_failures: 0,
                repair_not_before: now,
            });
            if track.epoch != t.epoch {
                // Same workflow, newer epoch cannot happen (a workflow has one epoch); be safe.
                *track = Track { epoch: t.epoch, next_due: now, ..track.clone() };
            }
            if track.every != t.every {
                // The policy changed: the next check is due by the new interval at the latest.
                track.next_due = track.next_due.min(now + t.every);
                track.every = t.every;
            }
            let (service, workflow_id, step) = (&t.key.0, t.key.1, t.step);
            let recorded =
                t.state.drift.iter().any(|d| d.workflow_id == workflow_id && d.step == step);
            if let Some(deadline) = track.in_flight {
                if now < deadline {
                    continue;
                }
                track.in_flight = None;
                in_flight -= 1;
                track.next_due = now + t.every;
                track.repair_not_before = track.repair_not_before.max(now + t.every);
                track.result = Some(CheckOutcome::NotRun("no answer in time".into()));
            }
            if self.proposing.contains(service) {
                continue;
            }
            if let Some(result) = track.result.take() {
                let finding_of_not_run =
                    matches!(result, CheckOutcome::NotRun(_)).then(|| result.clone());
                let finding = match (result, recorded) {
                    (CheckOutcome::Drifted(detail), false) => {
                        Some(DriftFinding::Detected { detail })
                    }
                    (CheckOutcome::Holds(detail), true) => Some(DriftFinding::Cleared { detail }),
                    (CheckOutcome::Repaired(detail), true) => {
                        Some(DriftFinding::Repaired { detail })
                    }
                    (CheckOutcome::RepairFailed(error), true) => {
                        Some(DriftFinding::RepairFailed { error })
                    }
                    _ => None,
                };
                if let Some(CheckOutcome::NotRun(why)) = &finding_of_not_run {
                    out.push(ReconcileCommand::Alert {
                        service: service.clone(),
                        message: format!(
                            "{service}: step {} of workflow {workflow_id} could not be checked \
                             for drift: {why}; checked again in {}",
                            step + 1,
                            humantime::format_duration(t.every)
                        ),
                    });
                }
                if let Some(finding) = finding {
                    self.proposing.insert(service.clone());
                    out.push(ReconcileCommand::Propose(ControlRequest::Drift {
                        service: service.clone(),
                        epoch: t.epoch,
                        workflow_id,
                        step,
                        finding,
                        author: self.params.engine.node_name.clone(),
                        at_unix_ms: obs.now_unix_ms,
                    }));
                    continue;
                }
            }
            let repair = recorded && t.repair && now >= track.repair_not_before;
            if !repair && now < track.next_due {
                continue;
            }
            if in_flight >= self.params.max_in_flight {
                continue;
            }
            let Some(wf) = t.state.traffic_workflow() else { continue };
            let ws = &wf.steps[step];
            let Some(action) = ws.action.clone() else { continue };
            let executor = match choose_executor(&self.params.engine, ws, obs, &BTreeSet::new()) {
                Ok(e) => e,
                Err(why) => {
                    // Nobody can check it now: try again at the next interval.
                    track.next_due = now + t.every;
                    track.repair_not_before = track.repair_not_before.max(now + t.every);
                    track.result = Some(CheckOutcome::NotRun(why));
                    continue;
                }
            };
            // A repair reads back, runs the step, and the step reads back itself.
            let runs = if repair { 2 } else { 1 };
            let deadline = now + action.timeout * runs + self.params.engine.step_result_grace;
            track.in_flight = Some(deadline);
            in_flight += 1;
            out.push(ReconcileCommand::Check(CheckDispatch {
                service: service.clone(),
                workflow_id,
                step,
                epoch: t.epoch,
                executor,
                action,
                repair,
                deadline,
            }));
        }
        out
    }

    /// What the check of step `step` of workflow `workflow_id` found, at `now`; judged at the
    /// next tick against the recorded drift. A result nobody waits for is ignored.
    pub fn check_result(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        outcome: CheckOutcome,
        now: MonoTime,
    ) {
        let key = (service.to_string(), workflow_id, step);
        let Some(track) = self.tracks.get_mut(&key) else { return };
        if track.in_flight.take().is_none() {
            return;
        }
        let every = track.every;
        track.next_due = now + every;
        match &outcome {
            CheckOutcome::Repaired(_) | CheckOutcome::Holds(_) => {
                track.repair_failures = 0;
                track.repair_not_before = now;
            }
            CheckOutcome::RepairFailed(_) => {
                track.repair_failures += 1;
                let max = self.params.repair_backoff_max;
                track.repair_not_before = now + repair_backoff(every, track.repair_failures, max);
            }
            CheckOutcome::NotRun(_) => {
                // A repair that could not run waits an interval, without counting as failed.
                track.repair_not_before = track.repair_not_before.max(now + every);
            }
            CheckOutcome::Drifted(_) => {}
        }
        track.result = Some(outcome);
    }

    /// The `Drift` proposal for `service` was applied (or refused): the next tick sees it.
    pub fn proposal_done(&mut self, service: &str) {
        self.proposing.remove(service);
    }
}

/// The wait before the next repair after `failures` failed ones in a row: `every`, then
/// doubling, at most the larger of `max` and `every`.
pub fn repair_backoff(every: Duration, failures: u32, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let wait = every.saturating_mul(1 << doublings);
    wait.min(max.max(every))
}

/// Planted defects for the simulator's mutation checks (feature `sim-mutations`).
#[cfg(feature = "sim-mutations")]
pub mod mutation {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REPAIR_OLD_EPOCH: AtomicBool = AtomicBool::new(false);
    static NO_REPAIR: AtomicBool = AtomicBool::new(false);

    /// A drift repair runs the step with the epoch before the one the executor's state holds
    /// (`drover-sim --mutate repair-old-epoch`). Process-wide; off by default.
    pub fn set_repair_old_epoch(on: bool) {
        REPAIR_OLD_EPOCH.store(on, Ordering::SeqCst);
    }

    /// Whether repairs use the older epoch.
    pub fn repair_old_epoch() -> bool {
        REPAIR_OLD_EPOCH.load(Ordering::SeqCst)
    }

    /// Drift is found and recorded but never repaired (`drover-sim --mutate no-repair`).
    /// Process-wide; off by default.
    pub fn set_no_repair(on: bool) {
        NO_REPAIR.store(on, Ordering::SeqCst);
    }

    /// Whether repairs are skipped.
    pub fn no_repair() -> bool {
        NO_REPAIR.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests;
