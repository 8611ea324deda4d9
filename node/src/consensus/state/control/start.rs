//! The entries that start a workflow or change what drover may do on its own: failover,
//! switchover, reprotect, reactivation, pause.
//!
//! A workflow starts only on a service at rest (no workflow in progress: see
//! [`ServiceState::active_workflow`]); a request for a busy service is rejected with the
//! workflow that holds it, so two operators racing get a clear answer and one of them wins.

use super::*;

/// What a start request checks against the service, whatever the workflow.
struct Expect<'a> {
    service: &'a str,
    epoch: u64,
    /// The site the request believes active, if it names one.
    active: Option<&'a str>,
    /// The workflow kind, for messages.
    kind: &'a str,
    at_unix_ms: i64,
}

/// The spec, when `to` can take `service` over from `from`: a spec is applied and `to` is
/// another site that can be active.
fn move_target<'a>(
    spec: Option<&'a VersionedSpec>,
    service: &str,
    from: &str,
    to: &str,
) -> Result<&'a ClusterSpec, Outcome> {
    let Some(spec) = spec.map(|s| &s.spec) else {
        return Err(rejected(
            "no cluster spec applied yet; run 'droverctl config apply -f cluster.toml'",
        ));
    };
    if to == from {
        return Err(rejected(format!("{to} is already the active site of {service}")));
    }
    if spec.site(to).is_none_or(|s| s.witness) {
        return Err(rejected(format!("site {to} cannot take over service {service}")));
    }
    Ok(spec)
}

/// The refusal of a `kind` start while `wf` holds the service: what holds it, and what to do.
fn busy(service: &str, wf: &Workflow, kind: &str, at_unix_ms: i64) -> Outcome {
    let age = (at_unix_ms - wf.started_at_unix_ms).max(0) / 1000;
    let next = match wf.state {
        WorkflowState::Running => format!("wait for it ('droverctl watch {service}')"),
        WorkflowState::AwaitingCommit => format!("commit it first ('droverctl commit {service}')"),
        _ => format!("resume it first ('droverctl resume {service}')"),
    };
    rejected(format!(
        "cannot start a {kind} of {service}: {} (started {age}s ago); {next}",
        wf.summary(service)
    ))
}

/// The spec, when a move of `service` from `from` to `to` can be planned at all: a spec is
/// applied, no workflow holds the service, and `to` is another site that can be active.
fn move_spec<'a>(
    control: &'a ControlState,
    service: &str,
    from: &str,
    to: &str,
    kind: &str,
    at_unix_ms: i64,
) -> Result<&'a ClusterSpec, Outcome> {
    if let Some(wf) = control.services.get(service).and_then(|s| s.active_workflow()) {
        return Err(busy(service, wf, kind, at_unix_ms));
    }
    move_target(control.spec.as_ref(), service, from, to)
}

/// Rejects the start when the service does not exist, is busy, or moved on since the
/// requester looked (epoch, active site).
fn check_start<'a>(
    services: &'a mut BTreeMap<String, ServiceState>,
    e: &Expect,
) -> Result<&'a mut ServiceState, Outcome> {
    let service = e.service;
    let state =
        services.get_mut(service).ok_or_else(|| rejected(format!("no service named {service}")))?;
    if let Some(wf) = state.active_workflow() {
        return Err(busy(service, wf, e.kind, e.at_unix_ms));
    }
    if state.epoch != e.epoch {
        return Err(rejected(format!(
            "service {service} is at epoch {}, not {}: it changed since you looked; check \
             'droverctl status' and try again",
            state.epoch, e.epoch
        )));
    }
    if let Some(active) = e.active.filter(|a| *a != state.active_site) {
        return Err(rejected(format!(
            "service {service} is active on {}, not {active}",
            state.active_site
        )));
    }
    Ok(state)
}

impl ControlState {
    /// Starts a failover (automatic or an operator's): epoch + 1, the old site's lease
    /// revoked at once, plan fence · lease wait · activate · verify.
    pub(super) fn start_failover(&mut self, log_index: u64, req: &ControlRequest) -> Outcome {
        let ControlRequest::StartFailover {
            service,
            from,
            to,
            expected_epoch,
            automatic,
            reason,
            author,
            at_unix_ms,
            force,
        } = req
        else {
            return rejected("not a failover request");
        };
        let spec = match move_spec(self, service, from, to, "failover", *at_unix_ms) {
            Ok(spec) => spec,
            Err(o) => return o,
        };
        let plan = plan_failover(spec, service, from, to);
        let e = Expect {
            service,
            epoch: *expected_epoch,
            active: Some(from),
            kind: "failover",
            at_unix_ms: *at_unix_ms,
        };
        let state = match check_start(&mut self.services, &e) {
            Ok(s) => s,
            Err(o) => return o,
        };
        let revoked_terms = state.lease.as_ref().map(|l| l.terms).unwrap_or_default();
        state.epoch += 1;
        state.lease = None;
        state.phase = ServicePhase::FailingOver;
        state.workflow = Some(Workflow {
            kind: WorkflowKind::Failover,
            id: log_index,
            automatic: *automatic,
            from: from.to_string(),
            to: to.to_string(),
            epoch: state.epoch,
            reason: reason.to_string(),
            started_at_unix_ms: *at_unix_ms,
            steps: plan,
            state: WorkflowState::Running,
            revoked_terms,
            author: author.clone(),
            force: *force,
        });
        let how = match (automatic, force) {
            (true, _) => "automatic",
            (false, true) => "forced manual",
            (false, false) => "manual",
        };
        changed(
            "failover",
            format!(
                "{how} failover of {service} from {from} to {to} started, epoch {}: {reason}",
                state.epoch
            ),
        )
    }

    /// Starts a planned switchover: epoch + 1 with the lease kept by the old site (at the new
    /// epoch) until the lease wait's start releases it; plan deactivate · catch up (when the
    /// service has a lag probe) · lease wait · activate · verify.
    ///
    /// Why S1-S3 hold: until the release, only the old site holds the lease and nothing of the
    /// new site runs (activate and verify need the lease: [`ControlState::check_invariants`]);
    /// the release is the revocation commit, from which the lease wait counts (or which the
    /// confirmed deactivation ends, as confirmed fencing ends a failover's); every step carries
    /// the new epoch. A switchover that gives up before the release runs the old site's
    /// activate runbook again while that site still holds the lease.
    pub(super) fn start_switchover(&mut self, log_index: u64, req: &ControlRequest) -> Outcome {
        let ControlRequest::StartSwitchover {
            service,
            from,
            to,
            expected_epoch,
            reason,
            author,
            at_unix_ms,
        } = req
        else {
            return rejected("not a switchover request");
        };
        let spec = match move_spec(self, service, from, to, "switchover", *at_unix_ms) {
            Ok(spec) => spec,
            Err(o) => return o,
        };
        let Some(svc) = spec.service(service) else {
            return rejected(format!("no service named {service}"));
        };
        if svc.runbook(to, Phase::Activate).is_empty() {
            return rejected(format!(
                "site {to} has no activate runbook for {service}: a switchover needs one"
            ));
        }
        let plan = plan_switchover(spec, service, from, to);
        let terms = spec.policy_for(service).map(|p| LeaseTerms::of(&p)).unwrap_or_default();
        let e = Expect {
            service,
            epoch: *expected_epoch,
            active: Some(from),
            kind: "switchover",
            at_unix_ms: *at_unix_ms,
        };
        let state = match check_start(&mut self.services, &e) {
            Ok(s) => s,
            Err(o) => return o,
        };
        // The old site's holders keep to the longer of the terms they renewed under and the
        // current policy's, so the wait after the release covers both.
        let terms = state.lease.as_ref().map_or(terms, |l| l.terms.max(terms));
        state.epoch += 1;
        state.lease = Some(Lease { site: from.to_string(), epoch: state.epoch, terms });
        state.phase = ServicePhase::SwitchingOver;
        state.workflow = Some(Workflow {
            kind: WorkflowKind::Switchover,
            id: log_index,
            automatic: false,
            from: from.to_string(),
            to: to.to_string(),
            epoch: state.epoch,
            reason: reason.to_string(),
            started_at_unix_ms: *at_unix_ms,
            steps: plan,
            state: WorkflowState::Running,
            revoked_terms: terms,
            author: author.clone(),
            force: false,
        });
        changed(
            "switchover",
            format!(
                "switchover of {service} from {from} to {to} started, epoch {}: {reason}",
                state.epoch
            ),
        )
    }

    /// Starts a reprotect of the active site: the reprotect runbooks (the active site's, then
    /// the others'); the lease and epoch stay as they are. With no reprotect runbook at all it
    /// is done at once.
    pub(super) fn start_reprotect(&mut self, log_index: u64, req: &ControlRequest) -> Outcome {
        let ControlRequest::StartReprotect { service, expected_epoch, reason, author, at_unix_ms } =
            req
        else {
            return rejected("not a reprotect request");
        };
        let Some(spec) = self.spec.as_ref().map(|s| &s.spec) else {
            return rejected(
                "no cluster spec applied yet; run 'droverctl config apply -f cluster.toml'",
            );
        };
        let initial = spec.service(service).map(|s| s.initial_active.clone()).unwrap_or_default();
        let e = Expect {
            service,
            epoch: *expected_epoch,
            active: None,
            kind: "reprotect",
            at_unix_ms: *at_unix_ms,
        };
        let state = match check_start(&mut self.services, &e) {
            Ok(s) => s,
            Err(o) => return o,
        };
        let active = state.active_site.clone();
        if state.primary_site(&initial) == active && state.phase == ServicePhase::Protecting {
            return rejected(format!(
                "service {service} is already protecting from {active}; reprotect follows a \
                 failover or switchover"
            ));
        }
        let plan = plan_reprotect(spec, service, &active);
        state.phase = ServicePhase::Reprotecting;
        // The move that made this epoch keeps its traffic steps under drift checks (a reprotect
        // again after a failed one keeps the one already kept).
        if let Some(moved) = state.traffic_workflow().cloned() {
            state.moved_by = Some(moved);
        }
        let mut wf = Workflow {
            kind: WorkflowKind::Reprotect,
            id: log_index,
            automatic: false,
            from: active.clone(),
            to: active.clone(),
            epoch: state.epoch,
            reason: reason.to_string(),
            started_at_unix_ms: *at_unix_ms,
            steps: plan,
            state: WorkflowState::Running,
            revoked_terms: LeaseTerms::default(),
            author: author.clone(),
            force: false,
        };
        let text =
            format!("reprotect of {service} on {active} started, epoch {}: {reason}", state.epoch);
        if wf.steps.is_empty() {
            wf.state = WorkflowState::Committed;
            state.workflow = Some(wf);
            state.primary = Some(active.clone());
            state.phase = ServicePhase::Protecting;
            return changed(
                "reprotect",
                format!(
                    "{text}; no reprotect runbook: {service} is protecting from {active} again"
                ),
            );
        }
        state.workflow = Some(wf);
        changed("reprotect", text)
    }

    /// Starts a reactivation of `site`, the active site, which self-fenced at
    /// `expected_epoch`. The site keeps the lease, at a new epoch (S3: every activation gets a
    /// new fencing token); no other site holds or is granted it, so one site serving (S1) and
    /// fence before activate (S2: the site being activated is the one that fenced) still hold.
    pub(super) fn start_reactivation(&mut self, log_index: u64, req: &ControlRequest) -> Outcome {
        let ControlRequest::StartReactivation {
            service,
            site,
            expected_epoch,
            reason,
            author,
            at_unix_ms,
        } = req
        else {
            return rejected("not a reactivation request");
        };
        let Some(spec) = self.spec.as_ref().map(|s| &s.spec) else {
            return rejected("no cluster spec applied yet");
        };
        let plan = plan_reactivation(spec, service, site);
        let terms = spec.policy_for(service).map(|p| LeaseTerms::of(&p)).unwrap_or_default();
        let e = Expect {
            service,
            epoch: *expected_epoch,
            active: Some(site),
            kind: "reactivation",
            at_unix_ms: *at_unix_ms,
        };
        let state = match check_start(&mut self.services, &e) {
            Ok(s) => s,
            Err(o) => return o,
        };
        if state.lease.as_ref().is_none_or(|l| l.site != *site || l.epoch != state.epoch) {
            return rejected(format!(
                "service {service} is not active on {site} with its lease; only the active site \
                 is reactivated"
            ));
        }
        if plan.iter().all(|s| s.stage != Stage::Activate) {
            return rejected(format!("site {site} has no activate runbook for {service}"));
        }
        state.epoch += 1;
        state.lease = Some(Lease { site: site.to_string(), epoch: state.epoch, terms });
        state.phase = ServicePhase::Reactivating;
        state.workflow = Some(Workflow {
            kind: WorkflowKind::Reactivate,
            id: log_index,
            automatic: true,
            from: site.to_string(),
            to: site.to_string(),
            epoch: state.epoch,
            reason: reason.to_string(),
            started_at_unix_ms: *at_unix_ms,
            steps: plan,
            revoked_terms: terms,
            state: WorkflowState::Running,
            author: author.clone(),
            force: false,
        });
        changed(
            "reactivate",
            format!("reactivation of {service} on {site} started, epoch {}: {reason}", state.epoch),
        )
    }

    /// Pauses automatic action for a service (replacing an earlier pause).
    pub(super) fn pause(&mut self, req: &ControlRequest) -> Outcome {
        let ControlRequest::Pause { service, reason, until_unix_ms, author, at_unix_ms } = req
        else {
            return rejected("not a pause request");
        };
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        if reason.trim().is_empty() {
            return rejected("a pause needs a reason (--reason)");
        }
        if until_unix_ms.is_some_and(|u| u <= *at_unix_ms) {
            return rejected("a pause must end in the future");
        }
        state.paused = Some(Pause {
            reason: reason.clone(),
            by: author.clone(),
            at_unix_ms: *at_unix_ms,
            until_unix_ms: *until_unix_ms,
        });
        let until = match until_unix_ms {
            Some(u) => format!(
                " for {}",
                humantime::format_duration(std::time::Duration::from_secs(
                    ((u - at_unix_ms) / 1000).max(0) as u64
                ))
            ),
            None => " until 'droverctl resume'".to_string(),
        };
        let running = match state.active_workflow() {
            Some(wf) => format!("; the {} in progress goes on", wf.kind.as_str()),
            None => String::new(),
        };
        changed("pause", format!("automatic action for {service} paused{until}: {reason}{running}"))
    }

    /// Ends a pause whose end passed, if it is still the pause that ends then.
    pub(super) fn pause_expired(&mut self, service: &str, until: i64) -> Outcome {
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        match &state.paused {
            Some(p) if p.until_unix_ms == Some(until) => {
                let text = format!(
                    "pause of {service} by {} expired ({}); automatic action is armed again",
                    p.by, p.reason
                );
                state.paused = None;
                changed("pause", text)
            }
            _ => rejected(format!("service {service} has no pause ending at {until}")),
        }
    }
}
