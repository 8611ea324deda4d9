//! Moving a workflow step by step, and the operator's decisions on it: the entries that change
//! a workflow in progress.

use super::*;

/// Whether the planted defect `switchover-early-activate` is on (feature `sim-mutations`):
/// its plans deactivate the old site after the new one was activated, so the rule that the old
/// site is acted on only while it holds the lease is not asserted (the checkers must find it).
#[cfg(feature = "sim-mutations")]
fn early_activate() -> bool {
    crate::decide::engine::mutation::early_activate()
}

#[cfg(not(feature = "sim-mutations"))]
fn early_activate() -> bool {
    false
}

impl ControlState {
    pub(super) fn running_workflow<'a>(
        services: &'a mut BTreeMap<String, ServiceState>,
        service: &str,
        workflow_id: u64,
    ) -> Result<&'a mut ServiceState, Outcome> {
        let state = services
            .get_mut(service)
            .ok_or_else(|| rejected(format!("no service named {service}")))?;
        match &state.workflow {
            Some(w) if w.id == workflow_id && w.state == WorkflowState::Running => Ok(state),
            Some(w) if w.id == workflow_id => {
                Err(rejected(format!("workflow {workflow_id} of {service} is not running")))
            }
            _ => {
                Err(rejected(format!("workflow {workflow_id} of {service} is not the current one")))
            }
        }
    }

    pub(super) fn step_started(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        executor: Option<NodeId>,
        at_unix_ms: i64,
    ) -> Outcome {
        let state = match Self::running_workflow(&mut self.services, service, workflow_id) {
            Ok(s) => s,
            Err(o) => return o,
        };
        let Some(wf) = state.workflow.as_mut() else { return rejected("no workflow") };
        if wf.cursor() != Some(step) {
            return rejected(format!("step {step} is not the next step of workflow {workflow_id}"));
        }
        let s = &mut wf.steps[step];
        if attempt != s.next_attempt() {
            return rejected(format!(
                "step {step} expects attempt {}, not {attempt}",
                s.next_attempt()
            ));
        }
        let holds = |site: &str| {
            state.lease.as_ref().is_some_and(|l| l.site == site && l.epoch == wf.epoch)
        };
        match s.stage {
            Stage::Activate | Stage::Verify => {
                // Fence before activate: the new site runs nothing before it holds the lease,
                // which only lease_wait's success grants.
                assert!(
                    holds(&wf.to),
                    "{service}: activate step {step} started before the new site holds the lease"
                );
            }
            Stage::Restore | Stage::Deactivate | Stage::CatchUp if !early_activate() => {
                // The old site is acted on only while it still holds the lease.
                assert!(
                    holds(&wf.from),
                    "{service}: {} step {step} without the old site's lease",
                    s.stage.as_str()
                );
            }
            Stage::Undo => {
                // The new site is deactivated on the way back while it still holds the lease.
                assert!(holds(&wf.to), "{service}: undo step {step} without the new site's lease");
            }
            Stage::Return => {
                // The release of the new site's lease: the return's lease wait counts from here.
                if let Some(lease) = state.lease.take() {
                    assert_eq!(lease.site, wf.to, "{service}: returned a lease not the new site's");
                    wf.revoked_terms = wf.revoked_terms.max(lease.terms);
                }
            }
            Stage::LeaseWait if wf.kind == WorkflowKind::Switchover => {
                // The release: this entry is the revocation commit the lease wait counts from.
                if let Some(lease) = state.lease.take() {
                    assert_eq!(
                        lease.site, wf.from,
                        "{service}: released a lease not the old site's"
                    );
                    wf.revoked_terms = wf.revoked_terms.max(lease.terms);
                }
            }
            _ => {}
        }
        s.status = StepStatus::Running { attempt, executor, started_at_unix_ms: at_unix_ms };
        s.started_at_unix_ms = at_unix_ms;
        Outcome { rejected: None, record: None, changed: true }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn step_finished(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        outcome: &Result<String, String>,
        refused: bool,
        at_unix_ms: i64,
    ) -> Outcome {
        let spec = self.spec.as_ref().map(|s| &s.spec);
        let policy = spec.and_then(|s| s.policy_for(service));
        let commit_mode = policy.as_ref().map_or(CommitMode::Auto, |p| p.commit);
        let initial_active =
            spec.and_then(|s| s.service(service)).map(|s| s.initial_active.clone());
        let terms = policy.as_ref().map(LeaseTerms::of).unwrap_or_default();
        let state = match Self::running_workflow(&mut self.services, service, workflow_id) {
            Ok(s) => s,
            Err(o) => return o,
        };
        let primary = state.primary.clone().or(initial_active);
        let Some(wf) = state.workflow.as_mut() else { return rejected("no workflow") };
        // A switchover already on its way back does not turn around again.
        let turned_back = wf.steps.iter().any(|s| s.stage == Stage::Restore);
        let Some(s) = wf.steps.get_mut(step) else {
            return rejected(format!("workflow {workflow_id} has no step {step}"));
        };
        match &s.status {
            StepStatus::Running { attempt: a, .. } if *a == attempt => {}
            other => {
                // A duplicate finish (e.g. re-proposed after a leader change) or a late one.
                return rejected(format!(
                    "step {step} attempt {attempt} is not running ({other:?})"
                ));
            }
        }
        let label = format!("{service} epoch {}: step {} ({})", wf.epoch, step + 1, s.describe());
        let record = match outcome {
            Ok(detail) => {
                s.status = StepStatus::Succeeded {
                    attempt,
                    detail: detail.clone(),
                    finished_at_unix_ms: at_unix_ms,
                };
                if s.stage == Stage::LeaseWait {
                    assert!(
                        state.lease.is_none(),
                        "{service}: lease granted while another is held"
                    );
                    state.lease = Some(Lease { site: wf.to.clone(), epoch: wf.epoch, terms });
                }
                if s.stage == Stage::Return {
                    assert!(state.lease.is_none(), "{service}: lease returned while one is held");
                    state.lease = Some(Lease { site: wf.from.clone(), epoch: wf.epoch, terms });
                }
                format!("{label} succeeded: {detail}")
            }
            Err(error) if !refused && attempt - s.attempt_base < s.max_attempts() => {
                s.status = StepStatus::RetryWait { attempt, error: error.clone() };
                format!("{label} attempt {attempt} failed, will retry: {error}")
            }
            Err(error) if wf.kind == WorkflowKind::Reactivate => {
                // A reactivation that cannot finish gives the service back to detection (and so
                // to a failover when the site is down) instead of waiting for an operator.
                let text = format!("{label} failed: {error}");
                s.status = StepStatus::Failed { attempt, error: error.clone() };
                if s.on_failure() != OnFailure::Continue {
                    wf.state = WorkflowState::Failed { reason: text.clone() };
                    state.phase = phase_of(&state.active_site, primary.as_deref());
                    return changed(
                        "step",
                        format!(
                            "{text}; reactivation of {service} on {} ended failed",
                            state.active_site
                        ),
                    );
                }
                text
            }
            Err(error)
                if wf.kind == WorkflowKind::Switchover
                    && matches!(s.stage, Stage::Deactivate | Stage::CatchUp)
                    && s.on_failure() == OnFailure::Abort =>
            {
                // Before the release the old site still holds the lease: give the service back
                // to it (its activate and verify runbooks again) instead of stopping dark.
                let text = format!("{label} failed: {error}");
                s.status = StepStatus::Failed { attempt, error: error.clone() };
                let restore =
                    spec.map(|sp| plan_restore(sp, service, &wf.from)).unwrap_or_default();
                let from = wf.from.clone();
                let empty = restore.is_empty();
                wf.give_up_after(step, restore);
                if empty {
                    wf.state = WorkflowState::RolledBack { reason: text.clone() };
                    state.phase = ServicePhase::SwitchoverFailed;
                    return changed(
                        "step",
                        format!(
                            "{text}; switchover of {service} abandoned; {from} has no activate \
                             runbook to start it again: start it by hand if the deactivation \
                             stopped it"
                        ),
                    );
                }
                format!("{text}; switchover of {service} abandoned: restoring {from}")
            }
            Err(error)
                if wf.kind == WorkflowKind::Switchover
                    && matches!(s.stage, Stage::Activate | Stage::Verify)
                    && s.on_failure() == OnFailure::Abort
                    && !turned_back =>
            {
                // The new site holds the lease but does not serve: take the way back, as a
                // switchover in reverse (the new site's deactivate runbook, the lease back to
                // the old site, its activate runbook), instead of stopping dark.
                let text = format!("{label} failed: {error}");
                s.status = StepStatus::Failed { attempt, error: error.clone() };
                let back =
                    spec.map(|sp| plan_return(sp, service, &wf.from, &wf.to)).unwrap_or_default();
                wf.give_up_after(step, back);
                format!(
                    "{text}; switchover of {service} abandoned: deactivating {} and returning to {}",
                    wf.to, wf.from
                )
            }
            Err(error) => {
                let text = format!("{label} failed: {error}");
                match s.on_failure() {
                    OnFailure::Continue => {
                        s.status = StepStatus::Failed { attempt, error: error.clone() };
                    }
                    OnFailure::Pause => {
                        s.status = StepStatus::RetryWait { attempt, error: error.clone() };
                        s.attempt_base = attempt;
                        wf.state = WorkflowState::Paused { reason: text.clone() };
                    }
                    OnFailure::Abort => {
                        s.status = StepStatus::RetryWait { attempt, error: error.clone() };
                        s.attempt_base = attempt;
                        wf.state = WorkflowState::Failed { reason: text.clone() };
                        state.phase = match wf.kind {
                            WorkflowKind::Switchover => ServicePhase::SwitchoverFailed,
                            WorkflowKind::Reprotect => ServicePhase::ReprotectFailed,
                            _ => ServicePhase::FailoverFailed,
                        };
                    }
                }
                text
            }
        };
        let done = wf.state == WorkflowState::Running && wf.cursor().is_none();
        if !done {
            return changed("step", record);
        }
        match wf.kind {
            WorkflowKind::Reactivate => {
                wf.state = WorkflowState::Committed;
                state.phase = phase_of(&state.active_site, primary.as_deref());
                changed(
                    "step",
                    format!(
                        "{record}; {} serves {service} again at epoch {}",
                        state.active_site, state.epoch
                    ),
                )
            }
            WorkflowKind::Reprotect => {
                wf.state = WorkflowState::Committed;
                state.primary = Some(state.active_site.clone());
                state.phase = ServicePhase::Protecting;
                let cooldown = match state.mode {
                    Automation::Cooldown { .. } => format!(
                        "; the cooldown of the last automatic failover still holds: 'droverctl \
                         ack {service}' arms automatic failover now"
                    ),
                    Automation::Auto => String::new(),
                };
                changed(
                    "step",
                    format!(
                        "{record}; {service} is protecting from {} again (reprotected){cooldown}",
                        state.active_site
                    ),
                )
            }
            WorkflowKind::Switchover if wf.steps.iter().any(|s| s.stage == Stage::Restore) => {
                let reason = wf
                    .steps
                    .iter()
                    .find_map(|s| match &s.status {
                        StepStatus::Failed { error, .. } if s.stage != Stage::Restore => {
                            Some(error.clone())
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                wf.state = WorkflowState::RolledBack { reason: reason.clone() };
                state.phase = ServicePhase::SwitchoverFailed;
                changed(
                    "step",
                    format!(
                        "{record}; switchover of {service} to {} failed ({reason}); {} serves \
                         again at epoch {}",
                        wf.to, wf.from, wf.epoch
                    ),
                )
            }
            WorkflowKind::Failover | WorkflowKind::Switchover => match commit_mode {
                CommitMode::Auto => {
                    let kind = wf.kind.as_str();
                    let _ = self.commit(service, at_unix_ms, false);
                    changed("step", format!("{record}; {kind} committed"))
                }
                CommitMode::Manual => {
                    wf.state = WorkflowState::AwaitingCommit;
                    state.phase = ServicePhase::PendingCommit;
                    changed(
                        "step",
                        format!("{record}; verified, waiting for 'droverctl commit {service}'"),
                    )
                }
            },
        }
    }

    pub(super) fn commit(&mut self, service: &str, at_unix_ms: i64, by_operator: bool) -> Outcome {
        let spec = self.spec.as_ref().map(|s| &s.spec);
        let cooldown = spec.and_then(|s| s.policy_for(service)).map(|p| p.cooldown);
        let initial = spec.and_then(|s| s.service(service)).map(|s| s.initial_active.clone());
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        let Some(wf) = state.workflow.as_mut() else {
            return rejected(format!("service {service} has no failover to commit"));
        };
        if !matches!(wf.kind, WorkflowKind::Failover | WorkflowKind::Switchover) {
            return rejected(format!("service {service} has no failover or switchover to commit"));
        }
        let ready = match wf.state {
            WorkflowState::AwaitingCommit => true,
            WorkflowState::Running => !by_operator && wf.cursor().is_none(),
            _ => false,
        };
        if !ready {
            return rejected(format!(
                "service {service} is {}; only a verified failover or switchover (pending_commit) \
                 can be committed",
                state.phase.as_str()
            ));
        }
        wf.state = WorkflowState::Committed;
        state.active_site = wf.to.clone();
        let primary = state.primary.clone().or(initial);
        state.phase = phase_of(&state.active_site, primary.as_deref());
        if wf.automatic {
            let ms = cooldown.map_or(0, |c| c.as_millis() as i64);
            state.mode = Automation::Cooldown { until_unix_ms: at_unix_ms.saturating_add(ms) };
        }
        let next = match state.phase {
            ServicePhase::FailedOver => {
                format!("; 'droverctl reprotect {service}' protects it from {} again", wf.to)
            }
            _ => String::new(),
        };
        changed(
            "commit",
            format!(
                "{} of {service} to {} committed at epoch {}{next}",
                wf.kind.as_str(),
                wf.to,
                wf.epoch
            ),
        )
    }

    /// Ends a pause of automatic action and restarts a stopped workflow at its step; either
    /// or both, as they apply.
    pub(super) fn resume(&mut self, service: &str) -> Outcome {
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        let mut done = Vec::new();
        if let Some(p) = state.paused.take() {
            done.push(format!(
                "automatic action for {service} resumed (paused by {}: {})",
                p.by, p.reason
            ));
        }
        if let Some(wf) = state.workflow.as_mut() {
            let stopped =
                matches!(wf.state, WorkflowState::Paused { .. } | WorkflowState::Failed { .. });
            let resumable = matches!(
                wf.kind,
                WorkflowKind::Failover | WorkflowKind::Switchover | WorkflowKind::Reprotect
            );
            if stopped && resumable {
                wf.state = WorkflowState::Running;
                state.phase = match wf.kind {
                    WorkflowKind::Switchover => ServicePhase::SwitchingOver,
                    WorkflowKind::Reprotect => ServicePhase::Reprotecting,
                    _ => ServicePhase::FailingOver,
                };
                done.push(format!(
                    "{} of {service} resumed at step {}",
                    wf.kind.as_str(),
                    wf.cursor().map_or(0, |c| c + 1)
                ));
            }
        }
        if done.is_empty() {
            if state.workflow.as_ref().is_some_and(|w| w.kind == WorkflowKind::Reactivate) {
                return rejected(format!(
                    "nothing to resume for {service}: the last workflow is a reactivation, which \
                     is not resumed (it starts again when the site self-fences again), and \
                     automatic action is not paused"
                ));
            }
            return rejected(format!(
                "nothing to resume for {service}: automatic action is not paused and no \
                 workflow is stopped"
            ));
        }
        changed("resume", done.join("; "))
    }

    pub(super) fn ack(&mut self, service: &str) -> Outcome {
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        match state.mode {
            Automation::Cooldown { .. } => {
                state.mode = Automation::Auto;
                changed(
                    "ack",
                    format!("cooldown of {service} acknowledged; automatic failover armed"),
                )
            }
            Automation::Auto => rejected(format!("service {service} is not in cooldown")),
        }
    }

    /// Records an operator's acknowledgement that standby `site` of `service` serves, for the
    /// current epoch; acknowledgements of earlier epochs are dropped.
    pub(super) fn ack_split_brain(&mut self, service: &str, site: &str) -> Outcome {
        let capable =
            self.spec.as_ref().and_then(|v| v.spec.site(site)).is_some_and(|s| !s.witness);
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        if !capable {
            return rejected(format!(
                "{site} is not a site of the spec that can be active; name a standby site of \
                 {service}"
            ));
        }
        if state.active_site == site {
            return rejected(format!(
                "{site} is the active site of {service}; its application is expected to serve, \
                 there is no split brain to acknowledge there"
            ));
        }
        let epoch = state.epoch;
        if state.split_brain_acknowledged(site) {
            return rejected(format!(
                "the split-brain alert of {service} on {site} is already acknowledged at epoch \
                 {epoch}"
            ));
        }
        state.split_brain_acks.retain(|_, e| *e == epoch);
        state.split_brain_acks.insert(site.to_string(), epoch);
        changed(
            "ack",
            format!(
                "split-brain alert of {service} on {site} acknowledged at epoch {epoch}: a \
                 failover or switchover to {site} is no longer blocked by its passive checks \
                 until the epoch changes"
            ),
        )
    }
}
