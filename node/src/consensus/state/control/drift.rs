//! Drift of a committed failover's traffic steps: what the leader's reconciler found when it
//! read their effect back, recorded so that every node shows it and a new leader knows it.
//!
//! ```text
//!  check finds the effect gone ──▶ Drift{Detected}     ──▶ ServiceState.drift += entry   "drift"
//!  repair ran, read-back holds ──▶ Drift{Repaired}     ──▶ entry removed                 "drift_repaired"
//!  repair failed               ──▶ Drift{RepairFailed} ──▶ entry kept, failures + 1      "drift_repair_failed"
//!  check finds it holding again──▶ Drift{Cleared}      ──▶ entry removed                 "drift_cleared"
//! ```
//!
//! A report is accepted only for the service's current epoch, for the committed workflow that
//! established it, and for one of its verifiable steps that succeeded: a stale leader's report
//! changes nothing. A drift still present is recorded once (a second `Detected` is rejected),
//! so a drift that lasts does not flood the history. Entries that no longer belong to the
//! current epoch and committed workflow are dropped after every entry
//! ([`ControlState::forget_stale_drift`]).

use serde::{Deserialize, Serialize};

use super::{changed, rejected, ControlState, Outcome, ServicePhase, StepStatus, WorkflowState};
use crate::actuate::verifiable;

/// A traffic step whose effect was found gone, until it is repaired or holds again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The committed workflow the step belongs to.
    pub workflow_id: u64,
    /// The epoch it was found at (the service's current one).
    pub epoch: u64,
    /// Index of the step in the workflow's plan.
    pub step: usize,
    /// What the read-back found (one line).
    pub detail: String,
    /// Proposer's wall clock when it was found (display only).
    pub since_unix_ms: i64,
    /// Repairs that failed since it was found.
    pub repairs_failed: u32,
    /// Why the last repair failed, if one did.
    pub last_repair_error: Option<String>,
}

/// How many drifts were found and repaired for a service since it was created (the
/// `drover_drift_*_total` counters; replicated, so every node shows the same).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftCounters {
    /// Drifts found.
    pub detected: u64,
    /// Repairs that succeeded.
    pub repaired: u64,
    /// Repairs that failed.
    pub repair_failed: u64,
}

/// What the reconciler found for one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftFinding {
    /// The effect no longer holds: what the read-back found.
    Detected {
        /// One line from the read-back.
        detail: String,
    },
    /// The step ran again at the current epoch and its effect holds.
    Repaired {
        /// One line from the step's run.
        detail: String,
    },
    /// The step ran again and failed (or was refused).
    RepairFailed {
        /// Why.
        error: String,
    },
    /// A later read-back found the effect holding again, without a repair by drover.
    Cleared {
        /// One line from the read-back.
        detail: String,
    },
}

impl ControlState {
    /// Applies a reconciler's finding for step `step` of workflow `workflow_id` at `epoch`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn drift(
        &mut self,
        service: &str,
        epoch: u64,
        workflow_id: u64,
        step: usize,
        finding: &DriftFinding,
        at_unix_ms: i64,
    ) -> Outcome {
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service {service}"));
        };
        if epoch != state.epoch {
            return rejected(format!(
                "drift report of {service} for epoch {epoch}, but the service is at epoch {}: \
                 a newer workflow superseded it",
                state.epoch
            ));
        }
        if !matches!(state.phase, ServicePhase::Protecting | ServicePhase::FailedOver) {
            return rejected(format!(
                "drift report of {service} while it is {}: only a settled service is reconciled",
                state.phase.as_str()
            ));
        }
        let Some(wf) = state.traffic_workflow().filter(|w| w.id == workflow_id && w.epoch == epoch)
        else {
            return rejected(format!(
                "drift report of {service} for workflow {workflow_id}, which is not the \
                 committed workflow of epoch {epoch}"
            ));
        };
        let Some(ws) = wf.steps.get(step) else {
            return rejected(format!(
                "workflow {workflow_id} of {service} has no step {}",
                step + 1
            ));
        };
        let checkable = ws.action.as_ref().is_some_and(|a| verifiable(&a.action))
            && matches!(ws.status, StepStatus::Succeeded { .. });
        if !checkable {
            return rejected(format!(
                "step {} ({}) of workflow {workflow_id} of {service} is not a traffic step that \
                 succeeded; it is not reconciled",
                step + 1,
                ws.describe()
            ));
        }
        let what = format!(
            "{service}: step {} ({}) of {} workflow {workflow_id}, epoch {epoch}",
            step + 1,
            ws.describe(),
            wf.kind.as_str()
        );
        let found = state.drift.iter().position(|d| d.workflow_id == workflow_id && d.step == step);
        match (finding, found) {
            (DriftFinding::Detected { .. }, Some(_)) => {
                rejected(format!("{what}: its drift is already recorded"))
            }
            (DriftFinding::Detected { detail }, None) => {
                state.drift.push(Drift {
                    workflow_id,
                    epoch,
                    step,
                    detail: detail.clone(),
                    since_unix_ms: at_unix_ms,
                    repairs_failed: 0,
                    last_repair_error: None,
                });
                state.drift_counts.detected += 1;
                changed("drift", format!("{what} drifted: {detail}"))
            }
            (_, None) => rejected(format!("{what}: no drift is recorded for it")),
            (DriftFinding::Repaired { detail }, Some(i)) => {
                state.drift.remove(i);
                state.drift_counts.repaired += 1;
                changed("drift_repaired", format!("{what} repaired at epoch {epoch}: {detail}"))
            }
            (DriftFinding::RepairFailed { error }, Some(i)) => {
                let d = &mut state.drift[i];
                d.repairs_failed += 1;
                d.last_repair_error = Some(error.clone());
                state.drift_counts.repair_failed += 1;
                let n = d.repairs_failed;
                changed(
                    "drift_repair_failed",
                    format!(
                        "{what}: repair {n} failed: {error}; the drift stays, the repair is \
                         tried again later"
                    ),
                )
            }
            (DriftFinding::Cleared { detail }, Some(i)) => {
                state.drift.remove(i);
                changed(
                    "drift_cleared",
                    format!("{what} holds again (not repaired by drover): {detail}"),
                )
            }
        }
    }

    /// Drops drift entries that no longer belong to their service's current epoch and
    /// committed workflow (a new workflow started, or the step is gone).
    pub(super) fn forget_stale_drift(&mut self) {
        for s in self.services.values_mut() {
            if s.drift.is_empty() {
                continue;
            }
            let current = s.traffic_workflow().map(|w| w.id);
            let epoch = s.epoch;
            s.drift.retain(|d| Some(d.workflow_id) == current && d.epoch == epoch);
        }
    }
}

/// A committed traffic step an executor may read back (and run again), as its own replicated
/// state has it: see [`ControlState::reconcilable`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reconcilable {
    /// The step, as committed.
    pub step: crate::spec::Step,
    /// `DROVER_FROM_SITE` of the step's run.
    pub from_site: String,
    /// `DROVER_TO_SITE` of the step's run.
    pub to_site: String,
    /// The service's current epoch: the one a repair runs with.
    pub epoch: u64,
    /// Whether a repair is allowed: the policy's `repair` and no pause.
    pub repair: bool,
}

/// Why a step is not reconcilable here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReconcilable {
    /// The state here may only be behind the asker's (an older epoch, the workflow not yet
    /// committed): worth waiting a little for it to catch up.
    pub behind: bool,
    /// Why, in words.
    pub why: String,
}

impl ControlState {
    /// Whether step `step` of workflow `workflow_id` of `service` may be read back and run
    /// again for drift at `epoch`, judged only on this state: `epoch` is the service's current
    /// one, the service is protecting or failed over, the workflow is the committed one that
    /// established the epoch, and the step is a verifiable step that succeeded.
    pub fn reconcilable(
        &self,
        service: &str,
        workflow_id: u64,
        step: usize,
        epoch: u64,
    ) -> Result<Reconcilable, NotReconcilable> {
        let no = |behind: bool, why: String| Err(NotReconcilable { behind, why });
        let Some(s) = self.services.get(service) else {
            return no(true, format!("no service {service} in this node's state"));
        };
        if s.epoch < epoch {
            return no(
                true,
                format!(
                    "this node has not caught up to epoch {epoch} of {service} (it is at {})",
                    s.epoch
                ),
            );
        }
        if s.epoch > epoch {
            return no(
                false,
                format!(
                    "{service} is at epoch {} here, not {epoch}: a newer workflow superseded it",
                    s.epoch
                ),
            );
        }
        // The service's workflow, or the move a reprotect kept (`moved_by`).
        let Some(wf) = [s.workflow.as_ref(), s.moved_by.as_ref()]
            .into_iter()
            .flatten()
            .find(|w| w.id == workflow_id && w.epoch == epoch)
        else {
            return no(
                false,
                format!(
                    "workflow {workflow_id} does not belong to epoch {epoch} of {service} here"
                ),
            );
        };
        if wf.state != WorkflowState::Committed {
            return no(true, format!("workflow {workflow_id} of {service} is not committed here"));
        }
        if !matches!(s.phase, ServicePhase::Protecting | ServicePhase::FailedOver) {
            return no(
                false,
                format!(
                    "{service} is {} here; only a settled service is reconciled",
                    s.phase.as_str()
                ),
            );
        }
        if s.traffic_workflow().map(|w| w.id) != Some(workflow_id) {
            return no(
                false,
                format!("workflow {workflow_id} is not the move that serves {service} here"),
            );
        }
        let ws = wf.steps.get(step);
        let Some((ws, action)) = ws.and_then(|w| w.action.as_ref().map(|a| (w, a))) else {
            return no(
                false,
                format!("workflow {workflow_id} of {service} has no step {} to run", step + 1),
            );
        };
        if !verifiable(&action.action) || !matches!(ws.status, StepStatus::Succeeded { .. }) {
            return no(
                false,
                format!(
                    "step {} ({}) of workflow {workflow_id} is not a traffic step that succeeded",
                    step + 1,
                    ws.describe()
                ),
            );
        }
        let (from, to) = wf.step_sites(step);
        let policy = self.spec.as_ref().and_then(|v| v.spec.policy_for(service));
        Ok(Reconcilable {
            step: action.clone(),
            from_site: from.to_string(),
            to_site: to.to_string(),
            epoch: s.epoch,
            repair: policy.is_some_and(|p| p.repair) && s.paused.is_none(),
        })
    }
}
