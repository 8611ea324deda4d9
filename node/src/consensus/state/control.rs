//! The replicated failover state: the versioned cluster spec, and per service its active site,
//! epoch (the fencing token), lease, phase, automation mode and the workflow in progress.
//!
//! ```text
//!  ApplySpec ──▶ services appear in `protecting`, lease held by initial_active, epoch 1
//!  StartFailover(A→B) ──▶ epoch+1, lease revoked, plan = fence(A) · lease_wait · activate(B) · verify(B)
//!  StepStarted / StepFinished ──▶ steps run strictly in order; lease_wait's success grants B the lease
//!  last step done ──▶ commit (auto) or pending_commit (manual) ──▶ Commit ──▶ failed_over, active = B
//!
//!  StartReactivation(A, e) ──▶ A self-fenced at epoch e and its members reach the cluster again:
//!     epoch+1, lease to A at once (no other site is involved), plan = activate(A) · verify(A)
//!  last step done ──▶ back to protecting / failed_over, A active at the new epoch
//!  a step fails for good ──▶ the reactivation ends failed; the service is back in its phase
//!     (so detection may fail it over) and A's members keep the lease at the new epoch
//! ```
//!
//! Everything here is pure and deterministic. Entries that do not fit the current state (a
//! lost compare-and-set, a step of an old workflow, a duplicate finish after a leader change)
//! are *rejected*: they change nothing and the proposer is told why. The safety rules ("fence
//! before activate", "epochs only grow", "one lease holder") are checked where the state
//! changes and asserted again by [`ControlState::check_invariants`] after every entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::consensus::types::NodeId;
use crate::spec::{ClusterSpec, CommitMode, OnFailure, Phase, Step};

/// The spec as committed, with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionedSpec {
    /// 1 for the first spec, +1 at every apply.
    pub version: u64,
    /// The validated spec.
    pub spec: ClusterSpec,
    /// The TOML the operator applied (for `config show`).
    pub text: String,
    /// Who applied it.
    pub applied_by: String,
    /// Proposer's wall clock (display only).
    pub applied_at_unix_ms: i64,
}

/// The failover state of every service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    /// The current spec, once one was applied.
    pub spec: Option<VersionedSpec>,
    /// Per service, by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Services removed from the spec: their last active site and epoch, so a service added
    /// back continues from there (an epoch never goes back, S3).
    #[serde(default)]
    pub retired: BTreeMap<String, (String, u64)>,
}

/// Which site holds a service's lease, for which epoch, under which timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The site whose nodes may renew.
    pub site: String,
    /// The epoch the lease belongs to.
    pub epoch: u64,
    /// The timing the lease was granted under. Holders keep to it; a leader taking the lease
    /// away waits by the longer of it and the current spec's, so changing the policy while a
    /// lease is out can never shorten the wait below what its holder relies on.
    #[serde(default)]
    pub terms: LeaseTerms,
}

/// Lease timing, fixed when a lease is granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseTerms {
    /// `lease_ttl` in ms.
    pub lease_ttl_ms: u64,
    /// `self_fence_grace` in ms.
    pub self_fence_grace_ms: u64,
    /// `max_clock_drift` (a rate).
    pub max_clock_drift: f64,
}

impl LeaseTerms {
    /// The terms of a policy.
    pub fn of(policy: &crate::spec::Policy) -> LeaseTerms {
        LeaseTerms {
            lease_ttl_ms: policy.lease_ttl.as_millis() as u64,
            self_fence_grace_ms: policy.self_fence_grace.as_millis() as u64,
            max_clock_drift: policy.max_clock_drift,
        }
    }

    /// The longer of both, field by field.
    pub fn max(self, other: LeaseTerms) -> LeaseTerms {
        LeaseTerms {
            lease_ttl_ms: self.lease_ttl_ms.max(other.lease_ttl_ms),
            self_fence_grace_ms: self.self_fence_grace_ms.max(other.self_fence_grace_ms),
            max_clock_drift: self.max_clock_drift.max(other.max_clock_drift),
        }
    }
}

/// Where a service stands (DESIGN.md 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServicePhase {
    /// The active site serves; the standby is protected.
    Protecting,
    /// A failover workflow runs.
    FailingOver,
    /// The new site verified; waiting for an operator's commit (manual commit mode).
    PendingCommit,
    /// The failover committed; the new site is active. Reprotect returns to `protecting`.
    FailedOver,
    /// A failover step failed with `on_failure = abort`; an operator must resume it.
    FailoverFailed,
    /// The active site self-fenced while still recorded active; its activate runbook runs
    /// again (a `reactivate` workflow) so it serves again.
    Reactivating,
}

impl ServicePhase {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            ServicePhase::Protecting => "protecting",
            ServicePhase::FailingOver => "failing_over",
            ServicePhase::PendingCommit => "pending_commit",
            ServicePhase::FailedOver => "failed_over",
            ServicePhase::FailoverFailed => "failover_failed",
            ServicePhase::Reactivating => "reactivating",
        }
    }
}

/// Whether drover may act on its own for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Automation {
    /// Automatic failover allowed (if the policy enables it).
    Auto,
    /// After an automatic failover: no automatic action until an operator acks or it ends.
    Cooldown {
        /// End of the cooldown, proposer's wall clock (not a safety matter).
        until_unix_ms: i64,
    },
}

/// The stage a workflow step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The old site's fence runbook.
    Fence,
    /// Wait until the old site is fenced for sure: immediate when every fence step succeeded,
    /// else the safe lease wait. Its success grants the new site the lease.
    LeaseWait,
    /// The new site's activate runbook (start services, move traffic).
    Activate,
    /// The new site's verify runbook.
    Verify,
}

impl Stage {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fence => "fence",
            Stage::LeaseWait => "lease_wait",
            Stage::Activate => "activate",
            Stage::Verify => "verify",
        }
    }
}

/// Progress of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Started; a leader change may leave it here, and the next leader runs it again.
    Running {
        /// 1-based attempt number.
        attempt: u32,
        /// Node the step was sent to (None: the leader itself).
        executor: Option<NodeId>,
        /// Proposer's wall clock (display only).
        started_at_unix_ms: i64,
    },
    /// An attempt failed; another one is due after the step's backoff.
    RetryWait {
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: String,
    },
    /// Done.
    Succeeded {
        /// The attempt that succeeded.
        attempt: u32,
        /// One line from the executor.
        detail: String,
        /// Proposer's wall clock (display only).
        finished_at_unix_ms: i64,
    },
    /// Failed for good (`on_failure = continue` lets the workflow go on past it).
    Failed {
        /// The last attempt.
        attempt: u32,
        /// Why.
        error: String,
    },
}

impl StepStatus {
    fn terminal(&self) -> bool {
        matches!(self, StepStatus::Succeeded { .. } | StepStatus::Failed { .. })
    }
}

/// One step of a workflow's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStep {
    /// Which stage it belongs to.
    pub stage: Stage,
    /// The site whose runbook it comes from.
    pub site: String,
    /// What to run (None for `lease_wait`, which the leader carries out itself).
    pub action: Option<Step>,
    /// Progress.
    pub status: StepStatus,
    /// Attempts made before the last operator resume (a resume grants a fresh set of retries).
    #[serde(default)]
    pub attempt_base: u32,
    /// Proposer's wall clock when the latest attempt started (0: never). Display only.
    #[serde(default)]
    pub started_at_unix_ms: i64,
}

impl WorkflowStep {
    /// Attempts allowed since the last resume.
    fn max_attempts(&self) -> u32 {
        self.action.as_ref().map_or(1, |s| s.retries + 1)
    }

    fn on_failure(&self) -> OnFailure {
        self.action.as_ref().map_or(OnFailure::Abort, |s| s.on_failure)
    }

    /// The step kind as written in the spec, or `lease_wait`.
    pub fn kind(&self) -> &'static str {
        self.action.as_ref().map_or("lease_wait", |a| a.action.kind())
    }

    /// `activate exec on dr`: stage, kind and site, for messages.
    pub fn describe(&self) -> String {
        format!("{} {} on {}", self.stage.as_str(), self.kind(), self.site)
    }

    /// The attempt number the next start must carry.
    pub fn next_attempt(&self) -> u32 {
        match &self.status {
            StepStatus::Pending => self.attempt_base + 1,
            StepStatus::Running { attempt, .. }
            | StepStatus::RetryWait { attempt, .. }
            | StepStatus::Succeeded { attempt, .. }
            | StepStatus::Failed { attempt, .. } => attempt + 1,
        }
    }
}

/// Where a workflow stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowState {
    /// Steps are being run.
    Running,
    /// Stopped at a failed step (`on_failure = pause`); `droverctl resume` retries it.
    Paused {
        /// Why.
        reason: String,
    },
    /// Stopped at a failed step (`on_failure = abort`); `droverctl resume` retries it.
    Failed {
        /// Why.
        reason: String,
    },
    /// Every step is done; waiting for an operator's commit.
    AwaitingCommit,
    /// Committed.
    Committed,
}

/// What a workflow does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowKind {
    /// Move the service from one site to another: fence, lease wait, activate, verify.
    #[default]
    Failover,
    /// Start the active site again after it self-fenced (`from == to`): activate, verify.
    Reactivate,
}

impl WorkflowKind {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowKind::Failover => "failover",
            WorkflowKind::Reactivate => "reactivate",
        }
    }
}

/// A workflow in progress (or the last one, kept for status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// Failover (the default, for entries written before reactivations existed) or
    /// reactivation.
    #[serde(default)]
    pub kind: WorkflowKind,
    /// The log index of the entry that started it: unique, never reused.
    pub id: u64,
    /// Started by the decision engine (true) or by an operator.
    pub automatic: bool,
    /// The site losing the service.
    pub from: String,
    /// The site taking it over.
    pub to: String,
    /// The epoch this workflow establishes; every step carries it as the fencing token.
    pub epoch: u64,
    /// Why it started.
    pub reason: String,
    /// Proposer's wall clock (display only).
    pub started_at_unix_ms: i64,
    /// The plan, run strictly in order.
    pub steps: Vec<WorkflowStep>,
    /// The terms of the lease this workflow revoked: the lease wait must honour them.
    #[serde(default)]
    pub revoked_terms: LeaseTerms,
    /// Where it stands.
    pub state: WorkflowState,
}

impl Workflow {
    /// Index of the first step not yet done, if any.
    pub fn cursor(&self) -> Option<usize> {
        self.steps.iter().position(|s| !s.status.terminal())
    }

    /// True when every fence step ran and succeeded (and there was at least one).
    pub fn fence_confirmed(&self) -> bool {
        let mut fence = self.steps.iter().filter(|s| s.stage == Stage::Fence).peekable();
        fence.peek().is_some() && fence.all(|s| matches!(s.status, StepStatus::Succeeded { .. }))
    }
}

/// The failover state of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The site that serves (or served, during a failover).
    pub active_site: String,
    /// The fencing token: +1 at every failover start, never decreases.
    pub epoch: u64,
    /// Who may serve; None while a failover has revoked the old site's lease and the new
    /// site has not been granted it yet.
    pub lease: Option<Lease>,
    /// Where the service stands.
    pub phase: ServicePhase,
    /// Whether drover may act on its own.
    pub mode: Automation,
    /// The workflow in progress, or the last one.
    pub workflow: Option<Workflow>,
}

impl ServiceState {
    /// The workflow, if one is in progress (not yet committed). A reactivation that ended
    /// failed is not in progress: it leaves the service in its phase (see the module doc).
    pub fn active_workflow(&self) -> Option<&Workflow> {
        self.workflow.as_ref().filter(|w| match w.kind {
            WorkflowKind::Failover => w.state != WorkflowState::Committed,
            WorkflowKind::Reactivate => w.state == WorkflowState::Running,
        })
    }

    /// When a failover stopped (failed or paused) after it revoked the old site's lease, so
    /// that nobody serves the service until an operator acts: the alert that says exactly
    /// that, the step it stopped at and what to do. None otherwise.
    pub fn nobody_serving(&self, service: &str) -> Option<String> {
        let wf = self.workflow.as_ref().filter(|w| w.kind == WorkflowKind::Failover)?;
        let how = match &wf.state {
            WorkflowState::Failed { .. } => "failed",
            WorkflowState::Paused { .. } => "is paused",
            _ => return None,
        };
        let i = wf.cursor()?;
        let step = &wf.steps[i];
        let error = match &step.status {
            StepStatus::RetryWait { error, .. } | StepStatus::Failed { error, .. } => error.clone(),
            _ => "unknown error".to_string(),
        };
        let (from, to) = (&wf.from, &wf.to);
        let what = match step.stage {
            Stage::Fence | Stage::LeaseWait => format!(
                "{from}'s lease was revoked (its nodes stop serving) and the failover to {to} \
                 {how} while fencing {from}"
            ),
            Stage::Activate | Stage::Verify => {
                format!("{from} was fenced and {to} {how} to activate")
            }
        };
        Some(format!(
            "{service}: nobody is serving: {what} at step {} ({}): {error}; fix the cause and \
             run 'droverctl resume {service}'",
            i + 1,
            step.describe()
        ))
    }
}

/// A change to the control state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRequest {
    /// `droverctl config apply`: replace the spec if its version is still `expected_version`.
    ApplySpec {
        /// Compare-and-set: the version the operator diffed against (None = don't care).
        expected_version: Option<u64>,
        /// The validated spec.
        spec: Box<ClusterSpec>,
        /// The TOML it came from.
        text: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// Start a failover of `service` from `from` to `to` if the epoch is still `expected_epoch`.
    StartFailover {
        /// Service name.
        service: String,
        /// The active site now.
        from: String,
        /// The site to activate.
        to: String,
        /// Compare-and-set on the epoch.
        expected_epoch: u64,
        /// Decided by the engine (true) or by an operator.
        automatic: bool,
        /// Why, in words.
        reason: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// A step attempt was sent to its executor.
    StepStarted {
        /// Service name.
        service: String,
        /// The workflow's id.
        workflow_id: u64,
        /// Index in the plan.
        step: usize,
        /// Attempt number (must be the next one).
        attempt: u32,
        /// Executor node (None: the leader itself).
        executor: Option<NodeId>,
        /// Who proposed it (the leader's name).
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// A step attempt finished.
    StepFinished {
        /// Service name.
        service: String,
        /// The workflow's id.
        workflow_id: u64,
        /// Index in the plan.
        step: usize,
        /// The attempt that finished (must be the running one).
        attempt: u32,
        /// One line of detail, or the error.
        outcome: Result<String, String>,
        /// Who proposed it (the leader's name).
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// `droverctl commit`: commit a failover waiting in `pending_commit`.
    Commit {
        /// Service name.
        service: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// `droverctl resume`: retry the step a paused or failed workflow stopped at.
    Resume {
        /// Service name.
        service: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// Start `site`'s activate runbook again after its nodes self-fenced at `expected_epoch`
    /// while it stayed the active site (decided by the engine when they reach the cluster
    /// again).
    StartReactivation {
        /// Service name.
        service: String,
        /// The active site, which self-fenced.
        site: String,
        /// Compare-and-set on the epoch: the one the site self-fenced at.
        expected_epoch: u64,
        /// Why, in words.
        reason: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// `droverctl ack`: end a cooldown so automatic failover is armed again.
    Ack {
        /// Service name.
        service: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
}

impl ControlRequest {
    /// Who proposed it.
    pub fn author(&self) -> &str {
        match self {
            ControlRequest::ApplySpec { author, .. }
            | ControlRequest::StartFailover { author, .. }
            | ControlRequest::StepStarted { author, .. }
            | ControlRequest::StepFinished { author, .. }
            | ControlRequest::Commit { author, .. }
            | ControlRequest::Resume { author, .. }
            | ControlRequest::StartReactivation { author, .. }
            | ControlRequest::Ack { author, .. } => author,
        }
    }

    /// The proposer's wall clock.
    pub fn at_unix_ms(&self) -> i64 {
        match self {
            ControlRequest::ApplySpec { at_unix_ms, .. }
            | ControlRequest::StartFailover { at_unix_ms, .. }
            | ControlRequest::StepStarted { at_unix_ms, .. }
            | ControlRequest::StepFinished { at_unix_ms, .. }
            | ControlRequest::Commit { at_unix_ms, .. }
            | ControlRequest::Resume { at_unix_ms, .. }
            | ControlRequest::StartReactivation { at_unix_ms, .. }
            | ControlRequest::Ack { at_unix_ms, .. } => *at_unix_ms,
        }
    }
}

/// What applying a control request did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Why nothing changed, if so.
    pub rejected: Option<String>,
    /// A history record to append: (kind, text).
    pub record: Option<(&'static str, String)>,
    /// Whether the state changed.
    pub changed: bool,
}

fn rejected(why: impl Into<String>) -> Outcome {
    Outcome { rejected: Some(why.into()), record: None, changed: false }
}

fn changed(kind: &'static str, text: impl Into<String>) -> Outcome {
    Outcome { rejected: None, record: Some((kind, text.into())), changed: true }
}

/// The phase of a service resting on `active`: protecting on its initial site, failed over
/// elsewhere (as after a spec apply).
fn phase_of(active: &str, initial_active: Option<&str>) -> ServicePhase {
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

impl ControlState {
    /// Applies one control request at `log_index`.
    pub fn apply(&mut self, log_index: u64, req: &ControlRequest) -> Outcome {
        let before_epochs: BTreeMap<String, u64> =
            self.services.iter().map(|(k, v)| (k.clone(), v.epoch)).collect();
        let outcome = match req {
            ControlRequest::ApplySpec { expected_version, spec, text, author, at_unix_ms } => {
                self.apply_spec(*expected_version, spec, text, author, *at_unix_ms)
            }
            ControlRequest::StartFailover {
                service,
                from,
                to,
                expected_epoch,
                automatic,
                reason,
                at_unix_ms,
                ..
            } => self.start_failover(
                log_index,
                service,
                from,
                to,
                *expected_epoch,
                *automatic,
                reason,
                *at_unix_ms,
            ),
            ControlRequest::StepStarted {
                service,
                workflow_id,
                step,
                attempt,
                executor,
                at_unix_ms,
                ..
            } => self.step_started(service, *workflow_id, *step, *attempt, *executor, *at_unix_ms),
            ControlRequest::StepFinished {
                service,
                workflow_id,
                step,
                attempt,
                outcome,
                at_unix_ms,
                ..
            } => self.step_finished(service, *workflow_id, *step, *attempt, outcome, *at_unix_ms),
            ControlRequest::Commit { service, at_unix_ms, .. } => {
                self.commit(service, *at_unix_ms, true)
            }
            ControlRequest::Resume { service, .. } => self.resume(service),
            ControlRequest::StartReactivation {
                service,
                site,
                expected_epoch,
                reason,
                at_unix_ms,
                ..
            } => self.start_reactivation(
                log_index,
                service,
                site,
                *expected_epoch,
                reason,
                *at_unix_ms,
            ),
            ControlRequest::Ack { service, .. } => self.ack(service),
        };
        for (name, before) in before_epochs {
            if let Some(s) = self.services.get(&name) {
                assert!(
                    s.epoch >= before,
                    "epoch of {name} went backwards: {before} -> {}",
                    s.epoch
                );
            }
        }
        self.check_invariants();
        outcome
    }

    fn apply_spec(
        &mut self,
        expected_version: Option<u64>,
        spec: &ClusterSpec,
        text: &str,
        author: &str,
        at_unix_ms: i64,
    ) -> Outcome {
        let current = self.spec.as_ref().map_or(0, |s| s.version);
        if let Some(expected) = expected_version {
            if expected != current {
                return rejected(format!(
                    "the spec is at version {current}, not {expected}: someone applied a spec since you looked; run 'droverctl config diff' again"
                ));
            }
        }
        // A service may only go away, or lose its active site, when nothing runs for it.
        for (name, state) in &self.services {
            match spec.service(name) {
                None if state.active_workflow().is_some() => {
                    return rejected(format!(
                        "service {name} has a failover in progress and cannot be removed now"
                    ))
                }
                Some(_) if spec.site(&state.active_site).is_none_or(|s| s.witness) => {
                    return rejected(format!(
                        "service {name} is active on site {}, which the new spec removes",
                        state.active_site
                    ))
                }
                _ => {}
            }
        }
        let removed: Vec<String> =
            self.services.keys().filter(|n| spec.service(n).is_none()).cloned().collect();
        for name in removed {
            if let Some(old) = self.services.remove(&name) {
                self.retired.insert(name, (old.active_site, old.epoch));
            }
        }
        for svc in &spec.services {
            if self.services.contains_key(&svc.name) {
                continue;
            }
            let terms = spec.policy_for(&svc.name).map(|p| LeaseTerms::of(&p)).unwrap_or_default();
            // A service added back continues at a new epoch, on the site it was last active on
            // if that site can still be active.
            let (active, epoch) = match self.retired.remove(&svc.name) {
                Some((site, epoch)) if spec.site(&site).is_some_and(|s| !s.witness) => {
                    (site, epoch + 1)
                }
                Some((_, epoch)) => (svc.initial_active.clone(), epoch + 1),
                None => (svc.initial_active.clone(), 1),
            };
            let phase = if active == svc.initial_active {
                ServicePhase::Protecting
            } else {
                ServicePhase::FailedOver
            };
            self.services.insert(
                svc.name.clone(),
                ServiceState {
                    active_site: active.clone(),
                    epoch,
                    lease: Some(Lease { site: active, epoch, terms }),
                    phase,
                    mode: Automation::Auto,
                    workflow: None,
                },
            );
        }
        let version = current + 1;
        self.spec = Some(VersionedSpec {
            version,
            spec: spec.clone(),
            text: text.to_string(),
            applied_by: author.to_string(),
            applied_at_unix_ms: at_unix_ms,
        });
        changed(
            "spec",
            format!("cluster spec version {version} applied ({} services)", spec.services.len()),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start_failover(
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
    fn start_reactivation(
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

    fn running_workflow<'a>(
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

    fn step_started(
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

    fn step_finished(
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

    fn commit(&mut self, service: &str, at_unix_ms: i64, by_operator: bool) -> Outcome {
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

    fn resume(&mut self, service: &str) -> Outcome {
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

    fn ack(&mut self, service: &str) -> Outcome {
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

    /// The rules that must hold after every entry; a violation is a bug and stops the node.
    pub fn check_invariants(&self) {
        for (name, s) in &self.services {
            if let Some(lease) = &s.lease {
                assert!(
                    lease.epoch == s.epoch,
                    "{name}: lease epoch {} != epoch {}",
                    lease.epoch,
                    s.epoch
                );
            }
            match s.active_workflow() {
                Some(wf) => {
                    assert_eq!(
                        wf.epoch, s.epoch,
                        "{name}: workflow epoch differs from the service's"
                    );
                    if wf.kind == WorkflowKind::Reactivate {
                        // A reactivation keeps the lease with the active site, at its epoch.
                        assert_eq!(wf.from, wf.to, "{name}: reactivation moves the service");
                        let lease = s.lease.as_ref().map(|l| l.site.as_str());
                        assert_eq!(
                            lease,
                            Some(s.active_site.as_str()),
                            "{name}: reactivated site without the lease"
                        );
                        assert_eq!(wf.to, s.active_site, "{name}: reactivates another site");
                    } else if let Some(lease) = &s.lease {
                        // During a failover only the new site can hold the lease, and only
                        // after lease_wait succeeded.
                        assert_eq!(
                            lease.site, wf.to,
                            "{name}: old site holds a lease mid-failover"
                        );
                        let waited = wf.steps.iter().any(|st| {
                            st.stage == Stage::LeaseWait
                                && matches!(st.status, StepStatus::Succeeded { .. })
                        });
                        assert!(waited, "{name}: new site holds the lease before lease_wait");
                    }
                }
                None => {
                    let lease = s.lease.as_ref().map(|l| l.site.as_str());
                    assert_eq!(
                        lease,
                        Some(s.active_site.as_str()),
                        "{name}: lease not with the active site"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = include_str!("../../spec/testdata/cluster.toml");
    const SVC: &str = "file-transfer";

    fn spec_with(extra_policy: &str) -> ClusterSpec {
        let text = SPEC.replace("commit = \"auto\"", extra_policy);
        crate::spec::parse(&text, "test").expect("test spec is valid")
    }

    fn apply_spec(c: &mut ControlState, spec: ClusterSpec, expected: Option<u64>) -> Outcome {
        c.apply(
            1,
            &ControlRequest::ApplySpec {
                expected_version: expected,
                spec: Box::new(spec),
                text: String::new(),
                author: "op".into(),
                at_unix_ms: 0,
            },
        )
    }

    fn start(c: &mut ControlState, index: u64, epoch: u64) -> Outcome {
        c.apply(
            index,
            &ControlRequest::StartFailover {
                service: SVC.into(),
                from: "prod".into(),
                to: "dr".into(),
                expected_epoch: epoch,
                automatic: true,
                reason: "prod down".into(),
                author: "leader".into(),
                at_unix_ms: 1000,
            },
        )
    }

    fn started(c: &mut ControlState, wf: u64, step: usize, attempt: u32) -> Outcome {
        c.apply(
            0,
            &ControlRequest::StepStarted {
                service: SVC.into(),
                workflow_id: wf,
                step,
                attempt,
                executor: None,
                author: "leader".into(),
                at_unix_ms: 0,
            },
        )
    }

    fn finished(c: &mut ControlState, wf: u64, step: usize, attempt: u32, ok: bool) -> Outcome {
        let outcome = if ok { Ok("done".to_string()) } else { Err("boom".to_string()) };
        c.apply(
            0,
            &ControlRequest::StepFinished {
                service: SVC.into(),
                workflow_id: wf,
                step,
                attempt,
                outcome,
                author: "leader".into(),
                at_unix_ms: 5000,
            },
        )
    }

    fn svc(c: &ControlState) -> &ServiceState {
        &c.services[SVC]
    }

    /// Runs every step of the workflow to success.
    fn run_all(c: &mut ControlState, wf: u64) {
        while let Some(i) = svc(c).workflow.as_ref().and_then(|w| w.cursor()) {
            let a = svc(c).workflow.as_ref().unwrap().steps[i].next_attempt();
            assert_eq!(started(c, wf, i, a).rejected, None);
            assert_eq!(finished(c, wf, i, a, true).rejected, None);
        }
    }

    #[test]
    fn spec_apply_creates_services_and_compare_and_set_guards_it() {
        let mut c = ControlState::default();
        assert_eq!(apply_spec(&mut c, spec_with("commit = \"auto\""), Some(0)).rejected, None);
        let s = svc(&c);
        assert_eq!(
            (s.active_site.as_str(), s.epoch, s.phase),
            ("prod", 1, ServicePhase::Protecting)
        );
        assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("prod", 1)));
        assert_eq!(s.lease.as_ref().map(|l| l.terms.lease_ttl_ms), Some(6000));
        let lost = apply_spec(&mut c, spec_with("commit = \"auto\""), Some(0));
        assert!(lost.rejected.unwrap().contains("version 1, not 0"));
        assert_eq!(c.spec.as_ref().unwrap().version, 1);
        assert_eq!(apply_spec(&mut c, spec_with("commit = \"auto\""), Some(1)).rejected, None);
        assert_eq!(c.spec.as_ref().unwrap().version, 2);
    }

    #[test]
    fn failover_fences_waits_then_activates_and_commits() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        assert_eq!(start(&mut c, 10, 1).rejected, None);
        let s = svc(&c);
        assert_eq!((s.epoch, s.lease.clone(), s.phase), (2, None, ServicePhase::FailingOver));
        let wf = s.workflow.as_ref().unwrap();
        let stages: Vec<Stage> = wf.steps.iter().map(|s| s.stage).collect();
        assert_eq!(
            stages,
            [
                Stage::Fence,
                Stage::LeaseWait,
                Stage::Activate,
                Stage::Activate,
                Stage::Activate,
                Stage::Verify
            ]
        );
        // Steps run strictly in order.
        assert!(started(&mut c, 10, 2, 1).rejected.is_some());
        run_all(&mut c, 10);
        let s = svc(&c);
        assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 2, ServicePhase::FailedOver));
        assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 2)));
        assert!(
            matches!(s.mode, Automation::Cooldown { until_unix_ms } if until_unix_ms == 5000 + 30 * 60_000)
        );
        assert!(s.workflow.as_ref().unwrap().fence_confirmed());
    }

    #[test]
    fn a_stale_epoch_or_a_second_start_is_rejected() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        assert!(start(&mut c, 10, 7).rejected.unwrap().contains("epoch 1, not 7"));
        assert_eq!(start(&mut c, 10, 1).rejected, None);
        assert!(start(&mut c, 11, 2).rejected.is_some());
        assert_eq!(svc(&c).epoch, 2);
    }

    #[test]
    fn a_duplicate_finish_is_rejected_so_no_step_is_done_twice() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        started(&mut c, 10, 0, 1);
        assert_eq!(finished(&mut c, 10, 0, 1, true).rejected, None);
        assert!(finished(&mut c, 10, 0, 1, true).rejected.is_some());
        // A new leader re-runs a step left running: the next attempt number is required.
        started(&mut c, 10, 1, 1);
        assert!(started(&mut c, 10, 1, 1).rejected.is_some());
        assert_eq!(started(&mut c, 10, 1, 2).rejected, None);
        assert!(finished(&mut c, 10, 1, 1, true).rejected.is_some());
        assert_eq!(finished(&mut c, 10, 1, 2, true).rejected, None);
    }

    #[test]
    fn retries_then_abort_stops_the_workflow_until_resumed() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        run_until(&mut c, 10, 2);
        // dr.activate[0] has retries = 2: attempts 1 and 2 retry, 3 aborts.
        for attempt in 1..=3 {
            started(&mut c, 10, 2, attempt);
            finished(&mut c, 10, 2, attempt, false);
        }
        assert_eq!(svc(&c).phase, ServicePhase::FailoverFailed);
        assert!(started(&mut c, 10, 2, 4).rejected.is_some(), "a failed workflow runs nothing");
        let resume =
            ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
        assert_eq!(c.apply(0, &resume).rejected, None);
        assert_eq!(started(&mut c, 10, 2, 4).rejected, None);
        assert_eq!(finished(&mut c, 10, 2, 4, true).rejected, None);
        run_all(&mut c, 10);
        assert_eq!(svc(&c).active_site, "dr");
    }

    fn run_until(c: &mut ControlState, wf: u64, step: usize) {
        for i in 0..step {
            started(c, wf, i, 1);
            finished(c, wf, i, 1, true);
        }
    }

    #[test]
    fn manual_commit_waits_for_the_operator() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"manual\""), None);
        start(&mut c, 10, 1);
        run_all(&mut c, 10);
        assert_eq!(svc(&c).phase, ServicePhase::PendingCommit);
        assert_eq!(svc(&c).active_site, "prod");
        let commit =
            ControlRequest::Commit { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
        assert_eq!(c.apply(0, &commit).rejected, None);
        assert_eq!((svc(&c).active_site.as_str(), svc(&c).phase), ("dr", ServicePhase::FailedOver));
        assert!(c.apply(0, &commit).rejected.is_some());
    }

    #[test]
    fn a_service_removed_and_added_back_keeps_counting_epochs() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        run_all(&mut c, 10);
        assert_eq!((svc(&c).active_site.as_str(), svc(&c).epoch), ("dr", 2));
        let mut empty = spec_with("commit = \"auto\"");
        empty.services.clear();
        assert_eq!(apply_spec(&mut c, empty, None).rejected, None);
        assert!(c.services.is_empty());
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        let s = svc(&c);
        assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 3, ServicePhase::FailedOver));
        assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 3)));
    }

    #[test]
    fn ack_ends_the_cooldown() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        run_all(&mut c, 10);
        let ack = ControlRequest::Ack { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
        assert_eq!(c.apply(0, &ack).rejected, None);
        assert_eq!(svc(&c).mode, Automation::Auto);
        assert!(c.apply(0, &ack).rejected.is_some());
    }

    fn reactivate(c: &mut ControlState, index: u64, site: &str, epoch: u64) -> Outcome {
        c.apply(
            index,
            &ControlRequest::StartReactivation {
                service: SVC.into(),
                site: site.into(),
                expected_epoch: epoch,
                reason: "self-fenced".into(),
                author: "leader".into(),
                at_unix_ms: 7000,
            },
        )
    }

    #[test]
    fn a_self_fenced_active_site_is_reactivated_at_a_new_epoch_and_keeps_the_lease() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        // prod has no activate runbook: it cannot be reactivated.
        let no_runbook = reactivate(&mut c, 5, "prod", 1).rejected.unwrap();
        assert!(no_runbook.contains("no activate runbook"), "{no_runbook}");
        start(&mut c, 10, 1);
        run_all(&mut c, 10);
        let mode = svc(&c).mode.clone();
        assert!(reactivate(&mut c, 20, "dr", 1).rejected.unwrap().contains("epoch 2, not 1"));
        assert!(reactivate(&mut c, 20, "prod", 2).rejected.unwrap().contains("not active on"));
        assert_eq!(reactivate(&mut c, 20, "dr", 2).rejected, None);
        let s = svc(&c);
        assert_eq!(
            (s.active_site.as_str(), s.epoch, s.phase),
            ("dr", 3, ServicePhase::Reactivating)
        );
        assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 3)));
        let wf = s.workflow.as_ref().unwrap();
        assert_eq!(wf.kind, WorkflowKind::Reactivate);
        let stages: Vec<Stage> = wf.steps.iter().map(|s| s.stage).collect();
        assert_eq!(stages, [Stage::Activate, Stage::Activate, Stage::Activate, Stage::Verify]);
        assert!(s.active_workflow().is_some());
        // One workflow at a time: no failover (nor a second reactivation) while it runs.
        assert!(reactivate(&mut c, 21, "dr", 3).rejected.is_some());
        assert!(c
            .apply(
                22,
                &ControlRequest::StartFailover {
                    service: SVC.into(),
                    from: "dr".into(),
                    to: "prod".into(),
                    expected_epoch: 3,
                    automatic: false,
                    reason: "op".into(),
                    author: "op".into(),
                    at_unix_ms: 0,
                }
            )
            .rejected
            .is_some());
        run_all(&mut c, 20);
        let s = svc(&c);
        assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 3, ServicePhase::FailedOver));
        assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 3)));
        assert_eq!(s.active_workflow(), None);
        assert_eq!(s.mode, mode, "a reactivation leaves the automation mode alone");
        let commit =
            ControlRequest::Commit { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
        assert!(c.apply(0, &commit).rejected.is_some());
    }

    #[test]
    fn a_failed_reactivation_gives_the_service_back_to_its_phase() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        run_all(&mut c, 10);
        assert_eq!(reactivate(&mut c, 20, "dr", 2).rejected, None);
        // dr.activate[0] has retries = 2: the third failure ends the reactivation.
        for attempt in 1..=3 {
            assert_eq!(started(&mut c, 20, 0, attempt).rejected, None);
            let out = finished(&mut c, 20, 0, attempt, false);
            assert_eq!(out.rejected, None);
            if attempt == 3 {
                assert!(out.record.unwrap().1.contains("ended failed"));
            }
        }
        let s = svc(&c);
        assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 3, ServicePhase::FailedOver));
        assert!(matches!(s.workflow.as_ref().unwrap().state, WorkflowState::Failed { .. }));
        assert_eq!(s.active_workflow(), None, "detection decides again");
        assert_eq!(s.nobody_serving(SVC), None, "not a failover stopped after fencing");
        let resume =
            ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
        assert!(c.apply(0, &resume).rejected.unwrap().contains("reactivation"));
        // A new self-fence at the new epoch may start another one.
        assert_eq!(reactivate(&mut c, 30, "dr", 3).rejected, None);
        assert_eq!(svc(&c).epoch, 4);
    }

    #[test]
    fn a_failover_stopped_after_fencing_says_nobody_is_serving_and_what_to_do() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        assert_eq!(svc(&c).nobody_serving(SVC), None, "running: a failover is under way");
        run_until(&mut c, 10, 2);
        for attempt in 1..=3 {
            started(&mut c, 10, 2, attempt);
            finished(&mut c, 10, 2, attempt, false);
        }
        assert_eq!(
            svc(&c).nobody_serving(SVC).unwrap(),
            "file-transfer: nobody is serving: prod was fenced and dr failed to activate at step \
             3 (activate exec on dr): boom; fix the cause and run 'droverctl resume \
             file-transfer'"
        );
        let resume =
            ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
        c.apply(0, &resume);
        assert_eq!(svc(&c).nobody_serving(SVC), None);
    }

    #[test]
    #[should_panic(expected = "before the new site holds the lease")]
    fn activating_before_the_lease_wait_is_a_bug() {
        let mut c = ControlState::default();
        apply_spec(&mut c, spec_with("commit = \"auto\""), None);
        start(&mut c, 10, 1);
        started(&mut c, 10, 0, 1);
        finished(&mut c, 10, 0, 1, true);
        // Forge a plan where activate comes right after fencing, skipping lease_wait.
        let wf = c.services.get_mut(SVC).unwrap().workflow.as_mut().unwrap();
        wf.steps[1].status = StepStatus::Failed { attempt: 1, error: "forged".into() };
        started(&mut c, 10, 2, 1);
    }
}
