//! Starting workflows and moving them step by step: the entries that change a workflow.

use super::*;

impl ControlState {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_failover(
        &mut self,
        log_index: u64,
        service: &str,
        from: &str,
        to: &str,
        expected_epoch: u64,
        automatic: bool,
        reason: &str,
        at_unix_ms: i64,
    ) -> Outcome {
        let Some(spec) = self.spec.as_ref().map(|s| &s.spec) else {
            return rejected(
                "no cluster spec applied yet; run 'droverctl config apply -f cluster.toml'",
            );
        };
        if spec.site(to).is_none_or(|s| s.witness) || to == from {
            return rejected(format!("site {to} cannot take over service {service}"));
        }
        let plan = plan_failover(spec, service, from, to);
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        if state.epoch != expected_epoch {
            return rejected(format!(
                "service {service} is at epoch {}, not {expected_epoch}",
                state.epoch
            ));
        }
        if state.active_site != from {
            return rejected(format!(
                "service {service} is active on {}, not {from}",
                state.active_site
            ));
        }
        if !matches!(state.phase, ServicePhase::Protecting | ServicePhase::FailedOver) {
            return rejected(format!(
                "service {service} is {}; a failover can start only from protecting or failed_over",
                state.phase.as_str()
            ));
        }
        let revoked_terms = state.lease.as_ref().map(|l| l.terms).unwrap_or_default();
        state.epoch += 1;
        state.lease = None;
        state.phase = ServicePhase::FailingOver;
        state.workflow = Some(Workflow {
            kind: WorkflowKind::Failover,
            id: log_index,
            automatic,
            from: from.to_string(),
            to: to.to_string(),
            epoch: state.epoch,
            reason: reason.to_string(),
            started_at_unix_ms: at_unix_ms,
            steps: plan,
            state: WorkflowState::Running,
            revoked_terms,
        });
        let how = if automatic { "automatic" } else { "manual" };
        changed(
            "failover",
            format!(
                "{how} failover of {service} from {from} to {to} started, epoch {}: {reason}",
                state.epoch
            ),
        )
    }

    /// Starts a reactivation of `site`, the active site, which self-fenced at
    /// `expected_epoch`. The site keeps the lease, at a new epoch (S3: every activation gets a
    /// new fencing token); no other site holds or is granted it, so one site serving (S1) and
    /// fence before activate (S2: the site being activated is the one that fenced) still hold.
    pub(super) fn start_reactivation(
        &mut self,
        log_index: u64,
        service: &str,
        site: &str,
        expected_epoch: u64,
        reason: &str,
        at_unix_ms: i64,
    ) -> Outcome {
        let Some(spec) = self.spec.as_ref().map(|s| &s.spec) else {
            return rejected("no cluster spec applied yet");
        };
        let plan = plan_reactivation(spec, service, site);
        let terms = spec.policy_for(service).map(|p| LeaseTerms::of(&p)).unwrap_or_default();
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        if state.epoch != expected_epoch {
            return rejected(format!(
                "service {service} is at epoch {}, not {expected_epoch}",
                state.epoch
            ));
        }
        if state.active_site != site
            || state.lease.as_ref().is_none_or(|l| l.site != site || l.epoch != state.epoch)
        {
            return rejected(format!(
                "service {service} is not active on {site} with its lease; only the active site \
                 is reactivated"
            ));
        }
        if !matches!(state.phase, ServicePhase::Protecting | ServicePhase::FailedOver)
            || state.active_workflow().is_some()
        {
            return rejected(format!(
                "service {service} is {}; a reactivation can start only from protecting or \
                 failed_over",
                state.phase.as_str()
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
            started_at_unix_ms: at_unix_ms,
            steps: plan,
            revoked_terms: terms,
            state: WorkflowState::Running,
        });
        changed(
            "reactivate",
            format!("reactivation of {service} on {site} started, epoch {}: {reason}", state.epoch),
        )
    }

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
        let lease = state.lease.clone();
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
        if matches!(s.stage, Stage::Activate | Stage::Verify) {
            // Fence before activate: the new site runs nothing before it holds the lease,
            // which only lease_wait's success grants.
            let held = lease.as_ref().is_some_and(|l| l.site == wf.to && l.epoch == wf.epoch);
            assert!(
                held,
                "{service}: activate step {step} started before the new site holds the lease"
            );
        }
        s.status = StepStatus::Running { attempt, executor, started_at_unix_ms: at_unix_ms };
        s.started_at_unix_ms = at_unix_ms;
        Outcome { rejected: None, record: None, changed: true }
    }

    pub(super) fn step_finished(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        outcome: &Result<String, String>,
        at_unix_ms: i64,
    ) -> Outcome {
        let policy = self.spec.as_ref().and_then(|s| s.spec.policy_for(service));
        let commit_mode = policy.as_ref().map_or(CommitMode::Auto, |p| p.commit);
        let initial_active = self
            .spec
            .as_ref()
            .and_then(|s| s.spec.service(service))
            .map(|s| s.initial_active.clone());
        let terms = policy.as_ref().map(LeaseTerms::of).unwrap_or_default();
        let state = match Self::running_workflow(&mut self.services, service, workflow_id) {
            Ok(s) => s,
            Err(o) => return o,
        };
        let Some(wf) = state.workflow.as_mut() else { return rejected("no workflow") };
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
                format!("{label} succeeded: {detail}")
            }
            Err(error) if attempt - s.attempt_base < s.max_attempts() => {
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
                    state.phase = phase_of(&state.active_site, initial_active.as_deref());
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
                        state.phase = ServicePhase::FailoverFailed;
                    }
                }
                text
            }
        };
        let done = wf.state == WorkflowState::Running && wf.cursor().is_none();
        if done && wf.kind == WorkflowKind::Reactivate {
            wf.state = WorkflowState::Committed;
            state.phase = phase_of(&state.active_site, initial_active.as_deref());
            return changed(
                "step",
                format!(
                    "{record}; {} serves {service} again at epoch {}",
                    state.active_site, state.epoch
                ),
            );
        }
        if done {
            match commit_mode {
                CommitMode::Auto => {
                    let _ = self.commit(service, at_unix_ms, false);
                    return changed("step", format!("{record}; failover committed"));
                }
                CommitMode::Manual => {
                    wf.state = WorkflowState::AwaitingCommit;
                    state.phase = ServicePhase::PendingCommit;
                    return changed(
                        "step",
                        format!("{record}; verified, waiting for 'droverctl commit {service}'"),
                    );
                }
            }
        }
        changed("step", record)
    }

    pub(super) fn commit(&mut self, service: &str, at_unix_ms: i64, by_operator: bool) -> Outcome {
        let cooldown =
            self.spec.as_ref().and_then(|s| s.spec.policy_for(service)).map(|p| p.cooldown);
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        let Some(wf) = state.workflow.as_mut() else {
            return rejected(format!("service {service} has no failover to commit"));
        };
        if wf.kind == WorkflowKind::Reactivate {
            return rejected(format!("service {service} has no failover to commit"));
        }
        let ready = match wf.state {
            WorkflowState::AwaitingCommit => true,
            WorkflowState::Running => !by_operator && wf.cursor().is_none(),
            _ => false,
        };
        if !ready {
            return rejected(format!(
                "service {service} is {}; only a verified failover (pending_commit) can be committed",
                state.phase.as_str()
            ));
        }
        wf.state = WorkflowState::Committed;
        state.active_site = wf.to.clone();
        state.phase = ServicePhase::FailedOver;
        if wf.automatic {
            let ms = cooldown.map_or(0, |c| c.as_millis() as i64);
            state.mode = Automation::Cooldown { until_unix_ms: at_unix_ms.saturating_add(ms) };
        }
        changed(
            "commit",
            format!("failover of {service} to {} committed at epoch {}", wf.to, wf.epoch),
        )
    }

    pub(super) fn resume(&mut self, service: &str) -> Outcome {
        let Some(state) = self.services.get_mut(service) else {
            return rejected(format!("no service named {service}"));
        };
        let Some(wf) = state.workflow.as_mut() else {
            return rejected(format!("service {service} has no workflow to resume"));
        };
        if wf.kind == WorkflowKind::Reactivate {
            return rejected(format!(
                "the last workflow of {service} is a reactivation, which is not resumed: it \
                 starts again when the site self-fences again"
            ));
        }
        match wf.state {
            WorkflowState::Paused { .. } | WorkflowState::Failed { .. } => {
                wf.state = WorkflowState::Running;
                state.phase = ServicePhase::FailingOver;
                changed(
                    "resume",
                    format!(
                        "failover of {service} resumed at step {}",
                        wf.cursor().map_or(0, |c| c + 1)
                    ),
                )
            }
            _ => rejected(format!("the workflow of {service} is not paused or failed")),
        }
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
}
