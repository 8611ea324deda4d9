//! The engine's decisions with no workflow in progress: reactivating a self-fenced active
//! site, and the automatic failover with its gates and veto hooks.

use super::*;

/// What [`decide_failover`] reads (and, for veto runs, updates) besides the observation.
pub(super) struct Inputs<'a> {
    pub(super) readiness: readiness::Inputs<'a>,
    pub(super) vetoes: &'a mut BTreeMap<String, VetoRun>,
}

/// With no workflow in progress: proposes the reactivation of the active site when one of its
/// members reports (freshly, at the current epoch) that it self-fenced while the site still
/// holds the lease; alerts when the site cannot be reactivated, or when the last reactivation
/// failed. True when it acted (or waits for a proposal), so no failover is decided this tick.
pub(super) fn decide_reactivation(
    params: &EngineParams,
    fenced: Option<&BTreeMap<NodeId, (u64, MonoTime)>>,
    stale_after: Duration,
    s: &Svc,
    obs: &Observation,
    sink: &mut Sink,
) -> bool {
    #[cfg(feature = "sim-mutations")]
    if mutation::no_reactivate() {
        return false;
    }
    let (name, state, now) = (s.name, s.state, obs.now);
    let active = state.active_site.as_str();
    if let Some(wf) = state.workflow.as_ref().filter(|w| w.kind == WorkflowKind::Reactivate) {
        if let (WorkflowState::Failed { reason }, true) = (&wf.state, wf.epoch == state.epoch) {
            let msg = format!(
                "reactivation of {name} on {active} failed: {reason}; {active} holds the lease at \
                 epoch {} but may not serve: drover fails it over when a quorum of observers \
                 sees it down and automatic failover is allowed; otherwise fix the cause on \
                 {active}",
                state.epoch
            );
            sink.alert(name, "reactivate_failed", msg);
        }
    }
    // At rest (no workflow in progress: the caller's condition) in any phase.
    let held = state.lease.as_ref().is_some_and(|l| l.site == active && l.epoch == state.epoch);
    if !held {
        return false;
    }
    // A fresh report of a member of the active site that it self-fenced at this epoch, from a
    // member the leader reaches again (it may run the activate runbook).
    let reporter = fenced.into_iter().flatten().find(|(id, &(epoch, at))| {
        epoch == state.epoch
            && now.saturating_duration_since(at) <= stale_after
            && obs.reachable.contains(id)
            && obs.members.get(id).is_some_and(|m| m.site == active && m.role == Role::Controller)
    });
    let Some((id, _)) = reporter else { return false };
    let who = obs.members.get(id).map_or_else(|| format!("node {id}"), |m| m.name.clone());
    if s.svc.runbook(active, crate::spec::Phase::Activate).is_empty() {
        let msg = format!(
            "{name}: nobody may be serving: {who} of the active site {active} self-fenced at \
             epoch {}, and {active} has no activate runbook to start it again; add one, or \
             restart the application on {active} by hand",
            state.epoch
        );
        sink.alert(name, "reactivate_impossible", msg);
        return false;
    }
    if !sink.can_propose(name) {
        return true;
    }
    let reason = format!(
        "{who} of {active} self-fenced at epoch {} and reaches the cluster again; {active} is \
         still the active site",
        state.epoch
    );
    sink.alert(name, "reactivate", format!("reactivating {active} for {name}: {reason}"));
    let req = ControlRequest::StartReactivation {
        service: name.to_string(),
        site: active.to_string(),
        expected_epoch: state.epoch,
        reason,
        author: params.node_name.clone(),
        at_unix_ms: obs.now_unix_ms,
    };
    sink.propose(name, req);
    true
}

/// With no workflow in progress: proposes an automatic failover when the active site is down
/// and every rule and gate holds (running the veto hooks first, if any); alerts when one blocks
/// it.
pub(super) fn decide_failover(
    params: &EngineParams,
    inputs: Inputs,
    s: &Svc,
    obs: &Observation,
    sink: &mut Sink,
) {
    let Inputs { readiness, vetoes } = inputs;
    let (name, state, now) = (s.name, s.state, obs.now);
    let primary = state.primary_site(&s.svc.initial_active);
    // Automatic failover protects the primary: while it is active and at rest (protecting,
    // or back on it after a switchover that gave up).
    let armed = state.phase == ServicePhase::Protecting
        || (state.phase == ServicePhase::SwitchoverFailed && state.active_site == primary);
    if !armed {
        return;
    }
    let Some(det) = s.det else { return };
    let active = state.active_site.as_str();
    let SiteHealth::Down { since } = det.health(name, active) else { return };
    if !s.policy.auto_failover {
        let msg = format!(
            "{active} is down for {name}, but automatic failover is off (auto_failover = false); \
             an operator must decide whether to fail over"
        );
        return sink.alert(name, "auto_failover_off", msg);
    }
    if let Automation::Cooldown { until_unix_ms } = state.mode {
        if until_unix_ms > obs.now_unix_ms {
            let left = Duration::from_millis((until_unix_ms - obs.now_unix_ms) as u64);
            let msg = format!(
                "{active} is down for {name}, but automatic failover is in cooldown for another \
                 {} after the last one; 'droverctl ack {name}' re-arms it",
                secs(left)
            );
            return sink.alert(name, "cooldown", msg);
        }
    }
    if active != primary {
        let msg = format!(
            "{active} is down for {name}; drover never fails back to {primary} automatically: \
             an operator must decide ('droverctl failover {name} --to {primary}')"
        );
        return sink.alert(name, "no_failback", msg);
    }
    let Some(target) =
        s.spec.active_capable_sites().find(|t| s.spec.auto_failover_allowed(name, active, t))
    else {
        let msg = format!(
            "{active} is down for {name}, but no site may take over automatically (it needs an \
             activate runbook, and {active} a fence or on_lease_lost runbook)"
        );
        return sink.alert(name, "no_target", msg);
    };

    let verdict = readiness::standby(&readiness, s.svc, name, state, target);
    if let Some(blocker) = verdict.blocker() {
        let msg = format!("failover of {name} to {target} blocked: {}", blocker.text);
        return sink.alert(name, blocker.key, msg);
    }
    let outage = Outage { from: active.to_string(), down_since: since, to: target.to_string() };
    if !veto_passed(params, vetoes, s, outage, now, sink) {
        return;
    }

    if !sink.can_propose(name) {
        return;
    }
    // A pass of the veto hooks is good for this proposal only.
    vetoes.remove(name);
    let a = det.tally(name, active, now);
    let formed = since.saturating_sub(s.policy.down_after);
    let reason = if a.quorum_unhealthy() {
        format!(
            "{active} unhealthy from {} of {} observers for {}",
            a.unhealthy,
            a.voters,
            secs(now.saturating_duration_since(formed))
        )
    } else {
        format!(
            "{active} declared down {} ago after being unhealthy from a quorum of observers for \
             {}; now {} of {} report it unhealthy",
            secs(now.saturating_duration_since(since)),
            secs(s.policy.down_after),
            a.unhealthy,
            a.voters
        )
    };
    let req = ControlRequest::StartFailover {
        service: name.to_string(),
        from: active.to_string(),
        to: target.to_string(),
        expected_epoch: state.epoch,
        automatic: true,
        force: false,
        reason,
        author: params.node_name.clone(),
        at_unix_ms: obs.now_unix_ms,
    };
    sink.propose(name, req);
}

/// The veto gate, once every other gate holds for `outage`: whether the service's veto hooks
/// (if any) passed for it. Otherwise asks for them to run (at most one run in flight), waits
/// for their verdict, or alerts a veto and waits `alert_every` before running them again.
fn veto_passed(
    params: &EngineParams,
    vetoes: &mut BTreeMap<String, VetoRun>,
    s: &Svc,
    outage: Outage,
    now: MonoTime,
    sink: &mut Sink,
) -> bool {
    let name = s.name;
    if s.svc.veto.is_empty() {
        vetoes.remove(name);
        return true;
    }
    let budget: Duration = s.svc.veto.iter().map(|h| h.timeout).sum();
    if let Some(run) = vetoes.get_mut(name) {
        if let VetoState::Running { deadline } = run.state {
            if now < deadline {
                return false;
            }
            run.state = VetoState::Done(Err(format!(
                "no verdict from its veto hooks within {} ({} of hook timeouts plus {} \
                 grace); a hook that does not answer in time counts as a veto",
                secs(budget + params.step_result_grace),
                secs(budget),
                secs(params.step_result_grace)
            )));
        }
    }
    // A verdict for an earlier outage (the site came back up since) is ignored.
    if let Some(run) = vetoes.get_mut(name).filter(|run| run.outage == outage) {
        match &run.state {
            VetoState::Done(Ok(())) => return true,
            VetoState::Done(Err(reason)) => {
                let msg = format!("failover of {name} to {} vetoed: {reason}", outage.to);
                run.state = VetoState::Vetoed { at: now };
                sink.alert(name, "veto", msg);
                return false;
            }
            VetoState::Vetoed { at } if now < *at + params.alert_every => return false,
            VetoState::Running { .. } | VetoState::Vetoed { .. } => {}
        }
    }
    let deadline = now + budget + params.step_result_grace;
    sink.out.push(Command::RunVeto {
        service: name.to_string(),
        from_site: outage.from.clone(),
        to_site: outage.to.clone(),
        hooks: s.svc.veto.clone(),
        deadline,
    });
    vetoes.insert(name.to_string(), VetoRun { outage, state: VetoState::Running { deadline } });
    false
}

/// With no workflow in progress while an operator paused automatic action: no decision, but
/// the outage an automatic failover would have answered is still alerted.
pub(super) fn paused(s: &Svc, obs: &Observation, sink: &mut Sink) {
    let (name, state) = (s.name, s.state);
    let (Some(pause), Some(det)) = (&state.paused, s.det) else { return };
    let active = state.active_site.as_str();
    if let SiteHealth::Down { .. } = det.health(name, active) {
        let until = match pause.until_unix_ms {
            Some(u) => format!(
                " for another {}",
                secs(Duration::from_millis((u - obs.now_unix_ms).max(0) as u64))
            ),
            None => String::new(),
        };
        let msg = format!(
            "{active} is down for {name}, but automatic action is paused{until} by {} ({}); \
             'droverctl resume {name}' re-arms it, 'droverctl failover {name} --to SITE' moves it",
            pause.by, pause.reason
        );
        sink.alert(name, "paused", msg);
    }
}
