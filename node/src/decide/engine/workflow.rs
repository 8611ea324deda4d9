//! The engine's moves with a workflow in progress: starting each step's attempts on a chosen
//! executor, evaluating the lease wait and probe steps itself, and proposing their results.

use super::*;

/// With a workflow in progress: the next move of its current step.
pub(super) fn drive_workflow(
    params: &EngineParams,
    term_started: MonoTime,
    s: &Svc,
    wf: &Workflow,
    run: &mut Run,
    obs: &Observation,
    sink: &mut Sink,
) {
    let (name, now) = (s.name, obs.now);
    let Some(i) = wf.cursor() else { return };
    let step = &wf.steps[i];
    if let StepStatus::RetryWait { attempt, .. } = step.status {
        run.retry_seen.entry((i, attempt)).or_insert(now);
    }
    let kind = wf.kind.as_str();
    match &wf.state {
        WorkflowState::Running => {}
        WorkflowState::Paused { reason } => {
            let msg = format!(
                "{kind} of {name} to {} is paused: {reason}; 'droverctl resume {name}' \
                 retries the step",
                wf.to
            );
            return sink.alert(name, "paused", msg);
        }
        WorkflowState::Failed { reason } => {
            let msg = s.state.nobody_serving(name).unwrap_or_else(|| {
                format!(
                    "{kind} of {name} to {} failed: {reason}; 'droverctl resume {name}' \
                     retries the step",
                    wf.to
                )
            });
            return sink.alert(name, "failed", msg);
        }
        WorkflowState::AwaitingCommit
        | WorkflowState::Committed
        | WorkflowState::RolledBack { .. } => return,
    }
    match &step.status {
        StepStatus::Pending => start_step(params, s, wf, i, run, obs, sink),
        StepStatus::RetryWait { attempt, .. } => {
            let backoff = step.action.as_ref().map_or(Duration::ZERO, |a| a.backoff);
            let seen = run.retry_seen.get(&(i, *attempt)).copied().unwrap_or(now);
            if now >= seen + backoff {
                start_step(params, s, wf, i, run, obs, sink);
            }
        }
        StepStatus::Running { attempt, .. } => {
            let attempt = *attempt;
            let first_seen = run.first_seen;
            match run.mine.as_mut() {
                Some(mine) if mine.step == i && mine.attempt == attempt => {
                    if mine.result.is_none() {
                        advance(params, term_started, first_seen, s, wf, mine, obs, sink);
                    }
                    if let Some(outcome) = mine.result.clone() {
                        if outcome.is_err() {
                            run.failed_on.entry(i).or_default().insert(mine.executor);
                        }
                        if sink.can_propose(name) {
                            let req = ControlRequest::StepFinished {
                                service: name.to_string(),
                                workflow_id: wf.id,
                                step: i,
                                attempt,
                                outcome,
                                refused: mine.refused,
                                author: params.node_name.clone(),
                                at_unix_ms: obs.now_unix_ms,
                            };
                            sink.propose(name, req);
                        }
                    }
                }
                // Started by an earlier leader (or by this one and since superseded): its
                // outcome is unknown, so run it again as the next attempt (steps are
                // idempotent). Never finish an attempt this engine did not run.
                _ => start_step(params, s, wf, i, run, obs, sink),
            }
        }
        StepStatus::Succeeded { .. } | StepStatus::Failed { .. } | StepStatus::Skipped { .. } => {}
    }
}

/// Proposes the start of step `i`'s next attempt on a chosen executor.
fn start_step(
    params: &EngineParams,
    s: &Svc,
    wf: &Workflow,
    i: usize,
    run: &mut Run,
    obs: &Observation,
    sink: &mut Sink,
) {
    let name = s.name;
    if !sink.can_propose(name) {
        return;
    }
    let step = &wf.steps[i];
    // A retry goes to an executor that has not failed this step yet, when one is reachable.
    let failed: BTreeSet<NodeId> =
        run.failed_on.get(&i).into_iter().flatten().flatten().copied().collect();
    let leader_failed = run.failed_on.get(&i).is_some_and(|f| f.contains(&None));
    let elsewhere = if failed.is_empty() && !leader_failed {
        None
    } else {
        choose_executor_avoiding(params, step, obs, &failed, leader_failed)
    };
    let chosen = match elsewhere {
        Some(executor) => Ok(executor),
        None => choose_executor(params, step, obs, &BTreeSet::new()),
    };
    let (executor, result) = match chosen {
        Ok(executor) => (executor, None),
        // No node can fence: record the attempt as failed, so retries and `on_failure` decide
        // (with "continue" the lease wait takes over). Nor can a reactivation wait: it must
        // not hold back a failover of a site that is gone.
        Err(why)
            if matches!(step.stage, Stage::Fence | Stage::Deactivate | Stage::Undo)
                || wf.kind == WorkflowKind::Reactivate =>
        {
            (None, Some(Err(why)))
        }
        Err(why) => {
            let msg = format!(
                "{} of {name} to {} waits at step {} ({}): {why}",
                wf.kind.as_str(),
                wf.to,
                i + 1,
                step.describe()
            );
            return sink.alert(name, "no_executor", msg);
        }
    };
    let attempt = step.next_attempt();
    let req = ControlRequest::StepStarted {
        service: name.to_string(),
        workflow_id: wf.id,
        step: i,
        attempt,
        executor,
        author: params.node_name.clone(),
        at_unix_ms: obs.now_unix_ms,
    };
    sink.propose(name, req);
    run.mine = Some(Mine {
        step: i,
        attempt,
        executor,
        progress: Progress::Started,
        result,
        refused: false,
        excluded: BTreeSet::new(),
        reroutes: 0,
    });
}

/// Moves an attempt this engine started towards a result: dispatches it, or evaluates it here
/// (lease wait, probe), or gives up on it at its deadline.
#[allow(clippy::too_many_arguments)]
fn advance(
    params: &EngineParams,
    term_started: MonoTime,
    first_seen: MonoTime,
    s: &Svc,
    wf: &Workflow,
    mine: &mut Mine,
    obs: &Observation,
    sink: &mut Sink,
) {
    let (name, now) = (s.name, obs.now);
    let step = &wf.steps[mine.step];
    let Some(action) = &step.action else {
        if mine.progress == Progress::Started {
            mine.progress = Progress::Evaluating { since: now };
        }
        let since = match mine.progress {
            Progress::Evaluating { since } => since,
            _ => now,
        };
        if step.stage == Stage::CatchUp {
            mine.result = catch_up(s, since, now);
            return;
        }
        // The lease wait (or, on a switchover's way back, the return of the lease).
        let returning = step.stage == Stage::Return;
        #[cfg(feature = "sim-mutations")]
        if wf.kind == WorkflowKind::Switchover && !returning && super::mutation::early_activate() {
            mine.result = Some(Ok("released (planted defect: no wait)".to_string()));
            return;
        }
        let confirmed = if returning { wf.undo_confirmed() } else { wf.fence_confirmed() };
        if confirmed {
            let (stage, what) = match wf.kind {
                _ if returning => (Stage::Undo, "deactivation"),
                WorkflowKind::Switchover => (Stage::Deactivate, "deactivation"),
                _ => (Stage::Fence, "fencing"),
            };
            let n = wf.steps.iter().filter(|s| s.stage == stage).count();
            let plural = if n == 1 { "" } else { "s" };
            mine.result = Some(Ok(format!("{what} confirmed by {n} step{plural}")));
            return;
        }
        // Wait by the longer of the revoked lease's own terms and the current policy's: the
        // holder keeps to the terms it was granted, whatever the spec says now.
        let terms = wf.revoked_terms.max(LeaseTerms::of(s.policy));
        let lease = LeaseParams::from(terms);
        if let Err(err) = lease.validate() {
            let msg = format!("the lease wait of {name} cannot end: {err}");
            return sink.alert(name, "lease_params", msg);
        }
        // A failover revoked the lease when it started (the workflow's first sight is after
        // that commit); a switchover releases it when this step starts (`since` is after the
        // commit of that start, which this engine saw applied).
        let revoked = match wf.kind {
            WorkflowKind::Switchover => since,
            _ => first_seen,
        };
        if now >= lease.safe_activation_time(revoked, term_started) {
            let site = if returning { &wf.to } else { &wf.from };
            mine.result = Some(Ok(format!(
                "lease of {site} expired: waited {} without confirmation that it stopped",
                secs(now.saturating_duration_since(revoked))
            )));
        }
        return;
    };
    if let StepAction::Probe(probe) = &action.action {
        let since = match mine.progress {
            Progress::Evaluating { since } => since,
            _ => {
                mine.progress = Progress::Evaluating { since: now };
                now
            }
        };
        let site = probe.checks.as_str();
        let t = s.det.map(|d| d.tally(name, site, now));
        if let Some(t) = t.filter(|t| t.quorum_healthy()) {
            mine.result =
                Some(Ok(format!("{site} healthy from {} of {} observers", t.healthy, t.voters)));
        } else if now >= since + action.timeout {
            mine.result = Some(Err(format!(
                "{site} not healthy from a quorum of observers within {}",
                secs(action.timeout)
            )));
        }
        return;
    }
    if let Progress::Rerouting { why } = mine.progress.clone() {
        match choose_executor(params, step, obs, &mine.excluded) {
            Ok(executor) => {
                let was = who_runs(params, obs, mine.executor);
                let now_runs = who_runs(params, obs, executor);
                let msg = format!(
                    "step {} of {name} ({}) attempt {}: {was} could not run it ({why}); {now_runs} \
                     runs it instead",
                    mine.step + 1,
                    step.describe(),
                    mine.attempt
                );
                sink.out.push(Command::Alert { service: name.to_string(), message: msg });
                mine.executor = executor;
                mine.progress = Progress::Started;
            }
            Err(none) => {
                // Every suitable executor was tried or none is reachable: ask again from the
                // start of the list (one may be back), after an alert.
                mine.excluded.clear();
                let msg = format!(
                    "step {} of {name} ({}) waits for an executor: {why}; {none}",
                    mine.step + 1,
                    step.describe()
                );
                return sink.alert(name, "no_executor", msg);
            }
        }
    }
    match mine.progress.clone() {
        Progress::Rerouting { .. } => {}
        Progress::Started | Progress::Evaluating { .. } => {
            let (from, to) = wf.step_sites(mine.step);
            let deadline = now + action.timeout + params.step_result_grace;
            mine.progress = Progress::Dispatched { deadline };
            sink.out.push(Command::RunStep(Box::new(StepDispatch {
                service: name.to_string(),
                workflow_id: wf.id,
                step: mine.step,
                attempt: mine.attempt,
                executor: mine.executor,
                action: action.clone(),
                epoch: wf.epoch,
                from_site: from.to_string(),
                to_site: to.to_string(),
                deadline,
            })));
        }
        Progress::Dispatched { deadline } if now >= deadline => {
            let who = who_runs(params, obs, mine.executor);
            mine.result = Some(Err(format!(
                "no result from {who} within {}",
                secs(action.timeout + params.step_result_grace)
            )));
        }
        Progress::Dispatched { .. } => {}
    }
}

/// The name of an executor for messages: `None` is the leader itself.
fn who_runs(params: &EngineParams, obs: &Observation, executor: Option<NodeId>) -> String {
    match executor {
        None => format!("the leader ({})", params.node_name),
        Some(id) => obs.members.get(&id).map_or(format!("node {id}"), |m| m.name.clone()),
    }
}

/// Who runs `step`: `Ok(None)` for the leader itself (and for what the engine evaluates),
/// `Ok(Some(id))` for another reachable controller not in `excluded`, `Err(why)` when no
/// suitable node is reachable. Witness members never run steps.
pub(crate) fn choose_executor(
    params: &EngineParams,
    step: &WorkflowStep,
    obs: &Observation,
    excluded: &BTreeSet<NodeId>,
) -> Result<Option<NodeId>, String> {
    let Some(action) = &step.action else { return Ok(None) };
    if let StepAction::Probe(_) = action.action {
        return Ok(None);
    }
    let me = obs.members.values().find(|m| m.name == params.node_name);
    let usable = |id: &NodeId, m: &Member| {
        m.role == Role::Controller && obs.reachable.contains(id) && !excluded.contains(id)
    };
    match &action.run_on {
        RunOn::Any => {
            if me.is_none_or(|m| m.role == Role::Controller) {
                return Ok(None);
            }
            // A witness leader hands the step to a controller, preferring one in the site
            // whose runbook the step comes from (for activate steps: the site taking over).
            obs.members
                .iter()
                .find(|(id, m)| m.site == step.site && usable(id, m))
                .or_else(|| obs.members.iter().find(|(id, m)| usable(id, m)))
                .map(|(id, _)| Some(*id))
                .ok_or_else(|| "no controller node is reachable".to_string())
        }
        RunOn::Site(site) => {
            if me.is_some_and(|m| m.role == Role::Controller && m.site == *site) {
                return Ok(None);
            }
            obs.members
                .iter()
                .find(|(id, m)| m.site == *site && usable(id, m))
                .map(|(id, _)| Some(*id))
                .ok_or_else(|| format!("no node of site {site} is reachable"))
        }
    }
}

/// An executor for `step` other than those that failed it (`failed`, and the leader itself
/// when `leader_failed`), or None when there is no such one.
fn choose_executor_avoiding(
    params: &EngineParams,
    step: &WorkflowStep,
    obs: &Observation,
    failed: &BTreeSet<NodeId>,
    leader_failed: bool,
) -> Option<Option<NodeId>> {
    let first = choose_executor(params, step, obs, failed).ok()?;
    if first.is_some() || !leader_failed {
        return Some(first);
    }
    // The leader itself failed it: look for another controller of the step's site (or any,
    // for `run_on = "any"`) among the members.
    let action = step.action.as_ref()?;
    let site = match &action.run_on {
        RunOn::Site(site) => Some(site.as_str()),
        RunOn::Any => None,
    };
    obs.members
        .iter()
        .find(|(id, m)| {
            m.name != params.node_name
                && m.role == Role::Controller
                && site.is_none_or(|s| m.site == s)
                && obs.reachable.contains(id)
                && !failed.contains(id)
        })
        .map(|(id, _)| Some(*id))
}

/// The catch-up step of a switchover, started at `since`: done when a lag report made after
/// the start says 0; failed when none did within the policy's `catch_up_timeout`; None while
/// it waits.
fn catch_up(s: &Svc, since: MonoTime, now: MonoTime) -> Option<Result<String, String>> {
    match s.lag {
        Some((lag, at)) if at >= since && lag <= 0.0 => {
            return Some(Ok(format!(
                "replication caught up (lag 0) after {}",
                secs(now.saturating_duration_since(since))
            )))
        }
        _ => {}
    }
    let timeout = s.policy.catch_up_timeout;
    if now < since + timeout {
        return None;
    }
    let last = match s.lag {
        Some((lag, at)) => format!(
            "the newest lag report says {lag}, {} ago",
            secs(now.saturating_duration_since(at))
        ),
        None => "no lag report arrived".to_string(),
    };
    Some(Err(format!(
        "replication did not catch up within catch_up_timeout {}: {last}",
        secs(timeout)
    )))
}
