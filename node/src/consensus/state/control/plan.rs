//! Workflow plans: which runbook steps a workflow runs, in order, from the spec.

use super::*;

/// The phase of a service resting on `active`: protecting on its initial site, failed over
/// elsewhere (as after a spec apply).
pub(super) fn phase_of(active: &str, initial_active: Option<&str>) -> ServicePhase {
    if initial_active.is_none_or(|i| i == active) {
        ServicePhase::Protecting
    } else {
        ServicePhase::FailedOver
    }
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
    let step = |stage, site: &str, action: Option<Step>| WorkflowStep {
        stage,
        site: site.to_string(),
        action,
        status: StepStatus::Pending,
        attempt_base: 0,
        started_at_unix_ms: 0,
    };
    let mut plan = Vec::new();
    for s in svc.runbook(from, Phase::Fence) {
        plan.push(step(Stage::Fence, from, Some(s.clone())));
    }
    plan.push(step(Stage::LeaseWait, from, None));
    for s in svc.runbook(to, Phase::Activate) {
        plan.push(step(Stage::Activate, to, Some(s.clone())));
    }
    for s in svc.runbook(to, Phase::Verify) {
        plan.push(step(Stage::Verify, to, Some(s.clone())));
    }
    plan
}
