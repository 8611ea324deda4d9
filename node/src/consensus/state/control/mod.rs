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
    /// A planned switchover runs: the active site is deactivated, the standby activated.
    SwitchingOver,
    /// A switchover stopped: before the old site's lease was released, the service went back
    /// to the old site (its activate runbook ran again); after it, an operator must resume.
    SwitchoverFailed,
    /// The reprotect runbooks run (e.g. replication reversed); the active site serves.
    Reprotecting,
    /// A reprotect step failed; `droverctl resume` retries it. The active site serves.
    ReprotectFailed,
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
            ServicePhase::SwitchingOver => "switching_over",
            ServicePhase::SwitchoverFailed => "switchover_failed",
            ServicePhase::Reprotecting => "reprotecting",
            ServicePhase::ReprotectFailed => "reprotect_failed",
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

/// An operator's pause of automatic action for a service (`droverctl pause`): detection and
/// alerts go on, no automatic failover or reactivation starts. A workflow already running is
/// not stopped by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Why, in the operator's words.
    pub reason: String,
    /// Who paused it (the certificate's identity).
    pub by: String,
    /// Proposer's wall clock when it was paused (display only).
    pub at_unix_ms: i64,
    /// When it ends by itself (proposer's wall clock; the leader proposes the expiry); None:
    /// until `droverctl resume`.
    pub until_unix_ms: Option<i64>,
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
    /// The active site's deactivate runbook (planned switchover: a graceful stop).
    Deactivate,
    /// Wait until the lag probe reports 0 after the deactivation (planned switchover);
    /// evaluated by the leader, bounded by `catch_up_timeout`.
    CatchUp,
    /// The old site's activate and verify runbooks again, after a switchover gave up.
    Restore,
    /// The new site's deactivate runbook, after a switchover failed to activate or verify it
    /// (it holds the lease): the way back to the old site starts here.
    Undo,
    /// The lease wait back: its start releases the new site's lease, its success grants the
    /// old site the lease again (at once when every undo step succeeded).
    Return,
    /// A site's reprotect runbook (e.g. reverse the replication direction).
    Reprotect,
}

impl Stage {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fence => "fence",
            Stage::LeaseWait => "lease_wait",
            Stage::Activate => "activate",
            Stage::Verify => "verify",
            Stage::Deactivate => "deactivate",
            Stage::CatchUp => "catch_up",
            Stage::Restore => "restore",
            Stage::Undo => "undo",
            Stage::Return => "return",
            Stage::Reprotect => "reprotect",
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
    /// Not run: the workflow took another path (a switchover that returned to its old site).
    Skipped {
        /// Why.
        reason: String,
    },
}

impl StepStatus {
    fn terminal(&self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded { .. } | StepStatus::Failed { .. } | StepStatus::Skipped { .. }
        )
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

    /// The step kind as written in the spec, or `lease_wait` / `catch_up` for the steps the
    /// leader evaluates itself.
    pub fn kind(&self) -> &'static str {
        match &self.action {
            Some(a) => a.action.kind(),
            None if self.stage == Stage::CatchUp => "catch_up",
            None if self.stage == Stage::Return => "lease_return",
            None => "lease_wait",
        }
    }

    /// `activate exec on dr`: stage, kind and site, for messages.
    pub fn describe(&self) -> String {
        format!("{} {} on {}", self.stage.as_str(), self.kind(), self.site)
    }

    /// The attempt number the next start must carry.
    pub fn next_attempt(&self) -> u32 {
        match &self.status {
            StepStatus::Pending | StepStatus::Skipped { .. } => self.attempt_base + 1,
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
    /// A switchover that gave up before releasing the old site's lease and returned the
    /// service to it (its activate runbook ran again). Ended.
    RolledBack {
        /// The failure that made it give up.
        reason: String,
    },
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
    /// Planned move: deactivate, catch up, release the lease, activate, verify.
    Switchover,
    /// After a move: the reprotect runbooks; the standby is protected again (`from == to`,
    /// the active site).
    Reprotect,
}

impl WorkflowKind {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowKind::Failover => "failover",
            WorkflowKind::Reactivate => "reactivate",
            WorkflowKind::Switchover => "switchover",
            WorkflowKind::Reprotect => "reprotect",
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
    /// Who started it: the leader's name for automatic workflows, else the operator's
    /// certificate identity.
    #[serde(default)]
    pub author: String,
    /// An operator's failover that skipped the readiness and lag gates (`--force`).
    #[serde(default)]
    pub force: bool,
}

impl Workflow {
    /// Index of the first step not yet done, if any.
    pub fn cursor(&self) -> Option<usize> {
        self.steps.iter().position(|s| !s.status.terminal())
    }

    /// True when the old site is confirmed stopped: every fence step (failover) or every
    /// deactivate step (switchover) ran and succeeded, and there was at least one.
    pub fn fence_confirmed(&self) -> bool {
        let stage = match self.kind {
            WorkflowKind::Switchover => Stage::Deactivate,
            _ => Stage::Fence,
        };
        let mut stop = self.steps.iter().filter(|s| s.stage == stage).peekable();
        stop.peek().is_some() && stop.all(|s| matches!(s.status, StepStatus::Succeeded { .. }))
    }

    /// The (from, to) sites step `i` runs with (`DROVER_FROM_SITE`, `DROVER_TO_SITE`): the
    /// workflow's, except on a switchover's way back (undo, restore), where the old site is
    /// the one taking the service.
    pub fn step_sites(&self, i: usize) -> (&str, &str) {
        match self.steps.get(i).map(|s| s.stage) {
            Some(Stage::Undo | Stage::Restore) => (&self.to, &self.from),
            _ => (&self.from, &self.to),
        }
    }

    /// A switchover gives up at `step`: the steps after it are skipped, and `then` (the
    /// restore, or the way back) is appended.
    fn give_up_after(&mut self, step: usize, then: Vec<WorkflowStep>) {
        let reason = format!("the switchover gave up at step {}", step + 1);
        for later in self.steps.iter_mut().skip(step + 1) {
            later.status = StepStatus::Skipped { reason: reason.clone() };
        }
        self.steps.extend(then);
    }

    /// True once the lease wait succeeded (the new site was granted the lease).
    pub fn lease_granted(&self) -> bool {
        self.steps.iter().any(|s| {
            s.stage == Stage::LeaseWait && matches!(s.status, StepStatus::Succeeded { .. })
        })
    }

    /// A switchover's way back, once the new site failed to activate: where the return's
    /// lease wait stands (None: no way back was taken).
    pub fn returning(&self) -> Option<&StepStatus> {
        self.steps.iter().find(|s| s.stage == Stage::Return).map(|s| &s.status)
    }

    /// True when every undo step (the new site's deactivation on the way back) succeeded and
    /// there was at least one.
    pub fn undo_confirmed(&self) -> bool {
        let mut undo = self.steps.iter().filter(|s| s.stage == Stage::Undo).peekable();
        undo.peek().is_some() && undo.all(|s| matches!(s.status, StepStatus::Succeeded { .. }))
    }

    /// "switchover of web to dr (workflow 42, started by alice) at step 2 of 5 (deactivate
    /// exec on prod), running": what a conflicting request is told.
    pub fn summary(&self, service: &str) -> String {
        let total = self.steps.len();
        let at = match self.cursor() {
            Some(i) => format!("at step {} of {total} ({})", i + 1, self.steps[i].describe()),
            None => format!("with all {total} steps done"),
        };
        let state = match &self.state {
            WorkflowState::Running => "running",
            WorkflowState::Paused { .. } => "paused",
            WorkflowState::Failed { .. } => "failed",
            WorkflowState::AwaitingCommit => "waiting for commit",
            WorkflowState::Committed => "committed",
            WorkflowState::RolledBack { .. } => "rolled back",
        };
        let by = if self.author.is_empty() {
            String::new()
        } else {
            format!(", started by {}", self.author)
        };
        let target = match self.kind {
            WorkflowKind::Reactivate | WorkflowKind::Reprotect => format!("on {}", self.to),
            _ => format!("to {}", self.to),
        };
        format!(
            "{} of {service} {target} (workflow {}{by}) {at}, {state}",
            self.kind.as_str(),
            self.id
        )
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
    /// An operator's pause of automatic action, if any.
    #[serde(default)]
    pub paused: Option<Pause>,
    /// The site automatic failover protects: it fails the service over only away from it.
    /// None: the spec's `initial_active`. A reprotect makes the active site the primary.
    #[serde(default)]
    pub primary: Option<String>,
    /// The committed move (failover, switchover, reactivation) of the current epoch, kept
    /// here when a reprotect replaces it as `workflow`: its traffic steps still hold what
    /// serves, so drift checks go on reading them back (see [`ServiceState::traffic_workflow`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_by: Option<Workflow>,
    /// Standby sites whose serving (a passing passive check: a possible split brain) an
    /// operator acknowledged, with the epoch acknowledged at (`droverctl ack SERVICE
    /// --split-brain SITE`): a failover or switchover to such a site is not blocked by its
    /// passive checks while the service's epoch is still that one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split_brain_acks: BTreeMap<String, u64>,
    /// Traffic steps of the committed workflow found drifted and not repaired yet (see
    /// [`drift`](self::Drift)).
    #[serde(default)]
    pub drift: Vec<Drift>,
    /// Drifts found and repaired so far.
    #[serde(default)]
    pub drift_counts: DriftCounters,
}

impl ServiceState {
    /// The committed workflow of the current epoch whose traffic steps are what serves: the
    /// service's `workflow` when it is a committed move, or the move a reprotect replaced
    /// (`moved_by`); `None` otherwise (no move yet, a workflow running or stopped).
    pub fn traffic_workflow(&self) -> Option<&Workflow> {
        let committed =
            |w: &&Workflow| w.state == WorkflowState::Committed && w.epoch == self.epoch;
        let current = self.workflow.as_ref().filter(committed)?;
        if current.kind == WorkflowKind::Reprotect {
            self.moved_by.as_ref().filter(committed)
        } else {
            Some(current)
        }
    }

    /// The workflow, if one is in progress (not yet committed). A reactivation that ended
    /// failed is not in progress: it leaves the service in its phase (see the module doc).
    ///
    /// A failover or switchover is in progress until it is committed or rolled back (a stopped
    /// one holds the service for `droverctl resume`); a reprotect while it runs or is stopped.
    pub fn active_workflow(&self) -> Option<&Workflow> {
        self.workflow.as_ref().filter(|w| match w.kind {
            WorkflowKind::Failover | WorkflowKind::Switchover => {
                !matches!(w.state, WorkflowState::Committed | WorkflowState::RolledBack { .. })
            }
            WorkflowKind::Reactivate => w.state == WorkflowState::Running,
            WorkflowKind::Reprotect => {
                !matches!(w.state, WorkflowState::Committed | WorkflowState::Failed { .. })
            }
        })
    }

    /// Whether an operator acknowledged that `site` serves while standby, at the current
    /// epoch (see [`ServiceState::split_brain_acks`]).
    pub fn split_brain_acknowledged(&self, site: &str) -> bool {
        self.split_brain_acks.get(site) == Some(&self.epoch)
    }

    /// The site automatic failover protects (moves away from): the primary a reprotect set,
    /// else the spec's `initial_active`.
    pub fn primary_site<'a>(&'a self, initial_active: &'a str) -> &'a str {
        self.primary.as_deref().unwrap_or(initial_active)
    }

    /// One alert per drifted traffic step: what drifted, since when, and what drover does
    /// about it. Empty when nothing drifted.
    pub fn drift_alerts(&self, service: &str, repair: bool) -> Vec<String> {
        let wf = self.workflow.as_ref();
        self.drift
            .iter()
            .map(|d| {
                let step = wf
                    .and_then(|w| w.steps.get(d.step))
                    .map_or_else(|| "?".to_string(), WorkflowStep::describe);
                let doing = match (&d.last_repair_error, repair, &self.paused) {
                    (_, false, _) => format!(
                        "repair is off for {service}: put it back by hand, or set repair = true"
                    ),
                    (_, true, Some(_)) => format!(
                        "{service} is paused, so it is not repaired: fix it by hand or run \
                         'droverctl resume {service}'"
                    ),
                    (Some(err), true, None) => format!(
                        "{} repairs failed, the last: {err}; fix the cause (drover keeps \
                         retrying)",
                        d.repairs_failed
                    ),
                    (None, true, None) => "drover is repairing it".to_string(),
                };
                format!(
                    "{service}: drift at step {} ({step}, epoch {}): {}; {doing}",
                    d.step + 1,
                    d.epoch,
                    d.detail
                )
            })
            .collect()
    }

    /// When a failover stopped (failed or paused) after it revoked the old site's lease, so
    /// that nobody serves the service until an operator acts: the alert that says exactly
    /// that, the step it stopped at and what to do. None otherwise.
    pub fn nobody_serving(&self, service: &str) -> Option<String> {
        let wf = self
            .workflow
            .as_ref()
            .filter(|w| matches!(w.kind, WorkflowKind::Failover | WorkflowKind::Switchover))?;
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
            Stage::Activate | Stage::Verify if wf.kind == WorkflowKind::Switchover => {
                format!("{from} was deactivated and {to} {how} to activate")
            }
            Stage::Activate | Stage::Verify => {
                format!("{from} was fenced and {to} {how} to activate")
            }
            Stage::Restore => format!(
                "the switchover to {to} gave up after deactivating {from}, and restoring {from} {how}"
            ),
            Stage::Deactivate | Stage::CatchUp => format!(
                "the switchover of {from} to {to} {how} while deactivating {from}"
            ),
            Stage::Undo | Stage::Return => format!(
                "{to} failed to activate for a switchover from {from}, and the way back to \
                 {from} {how} while deactivating {to}"
            ),
            Stage::Reprotect => return None,
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
        /// An operator's failover that skipped the readiness and lag gates (recorded).
        #[serde(default)]
        force: bool,
    },
    /// `droverctl switchover`: a planned move of `service` from `from` to `to` if the epoch is
    /// still `expected_epoch`: deactivate, catch up, release the lease, activate, verify.
    StartSwitchover {
        /// Service name.
        service: String,
        /// The active site now.
        from: String,
        /// The site to activate.
        to: String,
        /// Compare-and-set on the epoch.
        expected_epoch: u64,
        /// Why, in words.
        reason: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// `droverctl reprotect`: run the reprotect runbooks after a move, then protect the
    /// standby from the active site again, if the epoch is still `expected_epoch`.
    StartReprotect {
        /// Service name.
        service: String,
        /// Compare-and-set on the epoch.
        expected_epoch: u64,
        /// Why, in words.
        reason: String,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// `droverctl pause`: no automatic action for `service` until resumed or `until_unix_ms`.
    Pause {
        /// Service name.
        service: String,
        /// Why, in words (required).
        reason: String,
        /// When it ends by itself (proposer's wall clock); None: until resumed.
        until_unix_ms: Option<i64>,
        /// Who.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: i64,
    },
    /// The leader saw a pause's end pass: automatic action is armed again if the pause is
    /// still the one that ends at `until_unix_ms`.
    PauseExpired {
        /// Service name.
        service: String,
        /// The end of the pause that expired.
        until_unix_ms: i64,
        /// Who proposed it (the leader's name).
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
        /// The world refused the attempt (e.g. a DNS server holds a newer epoch, or another
        /// writer changed the records between read and update): the step fails for good at
        /// once, with no retry, and its `on_failure` decides. Absent (false) in entries written
        /// before refusals were told apart.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refused: bool,
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
    /// `droverctl resume`: end a pause of automatic action, and retry the step a paused or
    /// failed workflow stopped at (whichever of the two applies; both when both do).
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
    /// The leader's reconciler read back a traffic step of the committed workflow that
    /// established `epoch`, or ran it again: what it found (see [`DriftFinding`]). Rejected
    /// unless `epoch` is the service's current epoch.
    Drift {
        /// Service name.
        service: String,
        /// The epoch the check ran at.
        epoch: u64,
        /// The committed workflow.
        workflow_id: u64,
        /// Index of the step in its plan.
        step: usize,
        /// What was found or done.
        finding: DriftFinding,
        /// Who proposed it (the leader's name).
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
    /// `droverctl ack SERVICE --split-brain SITE`: an operator acknowledges that standby
    /// `site` serves (its passive checks pass) at the current epoch, so that a failover or
    /// switchover to it is no longer blocked by them.
    AckSplitBrain {
        /// Service name.
        service: String,
        /// The standby whose serving is acknowledged.
        site: String,
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
            | ControlRequest::Ack { author, .. }
            | ControlRequest::AckSplitBrain { author, .. }
            | ControlRequest::StartSwitchover { author, .. }
            | ControlRequest::StartReprotect { author, .. }
            | ControlRequest::Pause { author, .. }
            | ControlRequest::PauseExpired { author, .. }
            | ControlRequest::Drift { author, .. } => author,
        }
    }

    /// The service it concerns (None for a spec).
    pub fn service(&self) -> Option<&str> {
        match self {
            ControlRequest::ApplySpec { .. } => None,
            ControlRequest::StartFailover { service, .. }
            | ControlRequest::StepStarted { service, .. }
            | ControlRequest::StepFinished { service, .. }
            | ControlRequest::Commit { service, .. }
            | ControlRequest::Resume { service, .. }
            | ControlRequest::StartReactivation { service, .. }
            | ControlRequest::Ack { service, .. }
            | ControlRequest::AckSplitBrain { service, .. }
            | ControlRequest::StartSwitchover { service, .. }
            | ControlRequest::StartReprotect { service, .. }
            | ControlRequest::Pause { service, .. }
            | ControlRequest::PauseExpired { service, .. }
            | ControlRequest::Drift { service, .. } => Some(service),
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
            | ControlRequest::Ack { at_unix_ms, .. }
            | ControlRequest::AckSplitBrain { at_unix_ms, .. }
            | ControlRequest::StartSwitchover { at_unix_ms, .. }
            | ControlRequest::StartReprotect { at_unix_ms, .. }
            | ControlRequest::Pause { at_unix_ms, .. }
            | ControlRequest::PauseExpired { at_unix_ms, .. }
            | ControlRequest::Drift { at_unix_ms, .. } => *at_unix_ms,
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

mod drift;
mod plan;
mod start;
mod workflow;

pub use drift::{Drift, DriftCounters, DriftFinding, NotReconcilable, Reconcilable};
use plan::phase_of;
pub use plan::{
    plan_failover, plan_reactivation, plan_reprotect, plan_restore, plan_return, plan_switchover,
};

impl ControlState {
    /// Applies one control request at `log_index`.
    pub fn apply(&mut self, log_index: u64, req: &ControlRequest) -> Outcome {
        let before_epochs: BTreeMap<String, u64> =
            self.services.iter().map(|(k, v)| (k.clone(), v.epoch)).collect();
        let outcome = match req {
            ControlRequest::ApplySpec { expected_version, spec, text, author, at_unix_ms } => {
                self.apply_spec(*expected_version, spec, text, author, *at_unix_ms)
            }
            ControlRequest::StartFailover { .. } => self.start_failover(log_index, req),
            ControlRequest::StartSwitchover { .. } => self.start_switchover(log_index, req),
            ControlRequest::StartReprotect { .. } => self.start_reprotect(log_index, req),
            ControlRequest::StartReactivation { .. } => self.start_reactivation(log_index, req),
            ControlRequest::Pause { .. } => self.pause(req),
            ControlRequest::PauseExpired { service, until_unix_ms, .. } => {
                self.pause_expired(service, *until_unix_ms)
            }
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
                refused,
                at_unix_ms,
                ..
            } => self.step_finished(
                service,
                *workflow_id,
                *step,
                *attempt,
                outcome,
                *refused,
                *at_unix_ms,
            ),
            ControlRequest::Commit { service, at_unix_ms, .. } => {
                self.commit(service, *at_unix_ms, true)
            }
            ControlRequest::Resume { service, .. } => self.resume(service),
            ControlRequest::Ack { service, .. } => self.ack(service),
            ControlRequest::AckSplitBrain { service, site, .. } => {
                self.ack_split_brain(service, site)
            }
            ControlRequest::Drift {
                service,
                epoch,
                workflow_id,
                step,
                finding,
                at_unix_ms,
                ..
            } => self.drift(service, *epoch, *workflow_id, *step, finding, *at_unix_ms),
        };
        self.forget_stale_drift();
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
                    paused: None,
                    primary: None,
                    moved_by: None,
                    split_brain_acks: BTreeMap::new(),
                    drift: Vec::new(),
                    drift_counts: DriftCounters::default(),
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

    /// The rules that must hold after every entry; a violation is a bug and stops the node.
    pub fn check_invariants(&self) {
        for (name, s) in &self.services {
            // Drift is only ever recorded for the committed move that serves at the current
            // epoch ([`ServiceState::traffic_workflow`]), one entry per step.
            for (i, d) in s.drift.iter().enumerate() {
                let wf = s.traffic_workflow();
                assert!(
                    d.epoch == s.epoch
                        && wf.is_some_and(|w| w.id == d.workflow_id && d.step < w.steps.len()),
                    "{name}: drift of step {} at epoch {} outlived its committed workflow",
                    d.step,
                    d.epoch
                );
                assert!(
                    !s.drift[..i]
                        .iter()
                        .any(|o| o.workflow_id == d.workflow_id && o.step == d.step),
                    "{name}: drift of step {} recorded twice",
                    d.step
                );
            }
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
                    let lease = s.lease.as_ref().map(|l| l.site.as_str());
                    match wf.kind {
                        WorkflowKind::Reactivate | WorkflowKind::Reprotect => {
                            // Both keep the lease with the active site, at its epoch.
                            assert_eq!(
                                wf.from,
                                wf.to,
                                "{name}: {} moves the service",
                                wf.kind.as_str()
                            );
                            assert_eq!(
                                lease,
                                Some(s.active_site.as_str()),
                                "{name}: {} without the active site's lease",
                                wf.kind.as_str()
                            );
                            assert_eq!(wf.to, s.active_site, "{name}: acts on another site");
                        }
                        // On a switchover's way back: no lease from the return's start, the
                        // old site's once it succeeded.
                        _ if wf.returning().is_some_and(|r| !matches!(r, StepStatus::Pending)) => {
                            let returned =
                                matches!(wf.returning(), Some(StepStatus::Succeeded { .. }));
                            let want = returned.then_some(wf.from.as_str());
                            assert_eq!(lease, want, "{name}: lease on a switchover's way back");
                        }
                        // The old site may hold the lease only until the lease wait's start
                        // released it (a switchover's), the new one only after it succeeded.
                        _ if wf.lease_granted() => {
                            assert_eq!(
                                lease,
                                Some(wf.to.as_str()),
                                "{name}: new site without the lease after lease_wait"
                            );
                        }
                        _ => {
                            let released = wf.steps.iter().any(|st| {
                                st.stage == Stage::LeaseWait
                                    && !matches!(
                                        st.status,
                                        StepStatus::Pending | StepStatus::Skipped { .. }
                                    )
                            });
                            let old_may_hold = wf.kind == WorkflowKind::Switchover && !released;
                            match lease {
                                None => {}
                                Some(site) if site == wf.from && old_may_hold => {}
                                Some(site) if site == wf.to => {
                                    panic!("{name}: new site holds the lease before lease_wait")
                                }
                                Some(site) => {
                                    panic!("{name}: {site} holds a lease mid-{}", wf.kind.as_str())
                                }
                            }
                        }
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
mod tests;
