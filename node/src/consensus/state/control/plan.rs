//! Workflow plans: which runbook steps a workflow runs, in order, from the spec.
//!
//! ```text
//!  failover     fence(from)* · lease_wait · activate(to)* · verify(to)*
//!  switchover   deactivate(from)* · catch_up (with a lag probe) · lease_wait · activate(to)* · verify(to)*
//!               gave up before lease_wait: the rest skipped, then restore = activate(from)* · verify(from)*
//!               failed to activate or verify `to`: the rest skipped, then undo = deactivate(to)* ·
//!               return (lease back to from) · restore
//!  reactivate   activate(site)* · verify(site)*
//!  reprotect    reprotect(active)* · reprotect(each other site)*
//! ```

use super::*;

/// The phase of a service resting on `active`: protecting on its primary site (the one
/// automatic failover protects), failed over elsewhere.
pub(super) fn phase_of(active: &str, primary: Option<&str>) -> ServicePhase {
    if primary.is_none_or(|p| p == active) {
        ServicePhase::Protecting
    } else {
        ServicePhase::FailedOver
    }
}

fn step(stage: Stage, site: &str, action: Option<Step>) -> WorkflowStep {
    WorkflowStep {
        stage,
        site: site.to_string(),
        action,
        status: StepStatus::Pending,
        attempt_base: 0,
        started_at_unix_ms: 0,
    }
}

/// `site`'s `phase` runbook as steps of `stage`.
fn runbook(
    svc: &crate::spec::Service,
    site: &str,
    phase: Phase,
    stage: Stage,
) -> Vec<WorkflowStep> {
    svc.runbook(site, phase).iter().map(|s| step(stage, site, Some(s.clone()))).collect()
}

/// Builds a reactivation plan: `site`'s activate runbook, then its verify runbook.
pub fn plan_reactivation(spec: &ClusterSpec, service: &str, site: &str) -> Vec<WorkflowStep> {
    plan_failover(spec, service, site, site)
        .into_iter()
        .filter(|s| matches!(s.stage, Stage::Activate | Stage::Verify))
        .collect()
}

/// Builds a failover plan from the spec's runbooks.
pub fn plan_failover(spec: &ClusterSpec, service: &str, from: &str, to: &str) -> Vec<WorkflowStep> {
    let Some(svc) = spec.service(service) else { return Vec::new() };
    let mut plan = runbook(svc, from, Phase::Fence, Stage::Fence);
    plan.push(step(Stage::LeaseWait, from, None));
    plan.extend(runbook(svc, to, Phase::Activate, Stage::Activate));
    plan.extend(runbook(svc, to, Phase::Verify, Stage::Verify));
    plan
}

/// Builds a switchover plan: `from`'s deactivate runbook, the catch-up wait when the service
/// has a lag probe, the lease wait (its start releases `from`'s lease), `to`'s activate and
/// verify runbooks.
pub fn plan_switchover(
    spec: &ClusterSpec,
    service: &str,
    from: &str,
    to: &str,
) -> Vec<WorkflowStep> {
    let Some(svc) = spec.service(service) else { return Vec::new() };
    #[cfg(feature = "sim-mutations")]
    if crate::decide::engine::mutation::early_activate() {
        // The planted defect: activate first, deactivate the old site last.
        let mut plan = vec![step(Stage::LeaseWait, from, None)];
        plan.extend(runbook(svc, to, Phase::Activate, Stage::Activate));
        plan.extend(runbook(svc, to, Phase::Verify, Stage::Verify));
        plan.extend(runbook(svc, from, Phase::Deactivate, Stage::Deactivate));
        return plan;
    }
    let mut plan = runbook(svc, from, Phase::Deactivate, Stage::Deactivate);
    if svc.lag.is_some() {
        plan.push(step(Stage::CatchUp, from, None));
    }
    plan.push(step(Stage::LeaseWait, from, None));
    plan.extend(runbook(svc, to, Phase::Activate, Stage::Activate));
    plan.extend(runbook(svc, to, Phase::Verify, Stage::Verify));
    plan
}

/// The steps that give a switchover's old site the service back: its activate and verify
/// runbooks, as `restore` steps.
pub fn plan_restore(spec: &ClusterSpec, service: &str, site: &str) -> Vec<WorkflowStep> {
    let Some(svc) = spec.service(service) else { return Vec::new() };
    let mut plan = runbook(svc, site, Phase::Activate, Stage::Restore);
    plan.extend(runbook(svc, site, Phase::Verify, Stage::Restore));
    plan
}

/// The way back of a switchover whose new site `to` failed to activate: `to`'s deactivate
/// runbook (undo), the return of the lease, then `from`'s activate and verify runbooks
/// (restore).
pub fn plan_return(spec: &ClusterSpec, service: &str, from: &str, to: &str) -> Vec<WorkflowStep> {
    let Some(svc) = spec.service(service) else { return Vec::new() };
    let mut plan = runbook(svc, to, Phase::Deactivate, Stage::Undo);
    plan.push(step(Stage::Return, to, None));
    plan.extend(plan_restore(spec, service, from));
    plan
}

/// Builds a reprotect plan: the active site's reprotect runbook, then every other site's.
pub fn plan_reprotect(spec: &ClusterSpec, service: &str, active: &str) -> Vec<WorkflowStep> {
    let Some(svc) = spec.service(service) else { return Vec::new() };
    let mut plan = runbook(svc, active, Phase::Reprotect, Stage::Reprotect);
    for site in spec.active_capable_sites().filter(|s| *s != active) {
        plan.extend(runbook(svc, site, Phase::Reprotect, Stage::Reprotect));
    }
    plan
}
