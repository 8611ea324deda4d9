//! The leader's decision engine: decides automatic failovers and carries failover workflows
//! through, one step at a time, by proposing entries and dispatching steps.
//!
//! ```text
//!  probe_report(observer, service, site, verdict, lag, at)
//!        │
//!        ▼
//!  one Detector per service ──▶ active site Down? ─▶ policy, mode, no failback, target, gates
//!  (down_after/up_after from the spec)                     │ all hold        │ one blocks
//!                                                          ▼                 ▼
//!                               veto hooks? ── yes ──▶ RunVeto         Alert (rate-limited)
//!                                    │ no        veto_result(service, Ok | Err(reason))
//!                                    ▼                 │ Ok             │ Err: Alert; again
//!                         Propose(StartFailover) ◀─────┘                   after alert_every
//!
//!  Observation.control (applied state) ──▶ workflow cursor step i
//!     Pending / RetryWait after backoff ──▶ Propose(StepStarted attempt a) ── "started by me"
//!     Running{a}, started by me        ──▶ RunStep | lease wait | probe, evaluated here
//!     Running{a}, not started by me    ──▶ Propose(StepStarted a+1)  (re-run)
//!     result of attempt a known        ──▶ Propose(StepFinished)
//!  step_result(service, workflow, step, attempt, result) ─┘
//! ```
//!
//! One [`Engine`] lives for one leadership term: the runtime creates it when its node becomes
//! leader ([`Engine::new`] with the current reading of the monotonic clock) and drops it when
//! the node stops leading. Everything the engine remembers (who started which attempt, when it
//! first saw a workflow) is therefore local to the term; everything that matters for safety is
//! in the replicated [`ControlState`], which the engine only reads and changes by proposals.
//!
//! # Protocol with the runtime
//!
//! - [`Engine::tick`] returns [`Command`]s in a fixed order (services by name). For each
//!   service there is at most one proposal in flight: after a [`Command::Propose`], the engine
//!   proposes nothing more for that service until [`Engine::proposal_done`]; the runtime calls
//!   it once the entry was applied (or refused), so the next tick sees its effect.
//! - [`Command::RunStep`] is executed by the runtime (locally or on the named executor) and
//!   reported back through [`Engine::step_result`]. Results for attempts or workflows the
//!   engine is not waiting for are ignored: ControlState accepts a finish only for the running
//!   attempt, and the engine only proposes one for an attempt it started itself.
//! - [`Command::RunVeto`] is executed by the runtime on the leader and reported back through
//!   [`Engine::veto_result`]; at most one run per service is in flight.
//!
//! # Veto hooks
//!
//! A service's `[[service.veto]]` hooks are the last gate of an automatic failover: once every
//! other gate holds for an outage, the engine asks for them to run instead of proposing. A pass
//! lets the next tick propose `StartFailover` (if the site is still down and the gates still
//! hold); a veto (a hook exited non-zero or ran out of time) is alerted, and the hooks run again
//! `alert_every` later while the outage lasts. A verdict belongs to the outage it was asked for
//! (the instant its site was declared down): it is ignored once the site came back up, and a
//! pass is used for one proposal only. No result by the run's deadline counts as a veto.
//!
//! # Re-runs after a leader change
//!
//! A step found `Running` that this engine did not start was started by an earlier leader (or
//! its result was lost with it). Its outcome is unknown, so the engine starts it again as the
//! next attempt; it never proposes a finish for an attempt it did not run. Steps must be
//! idempotent for this reason (DESIGN.md 5): a fence agent switching off a switched-off
//! machine, a `start_all` on a started site, a DNS update already done must all succeed. The
//! interrupted attempt does use one of the step's `retries + 1` attempts: with `retries = 0`,
//! a re-run that fails is final.
//!
//! # Fencing, and when the lease wait is the fallback
//!
//! Fence steps run on a reachable controller of the site they name (`run_on`). When no node of
//! that site is reachable (the usual case when a whole site is lost), the attempt finishes at
//! once with an error; once its retries are spent, the step's `on_failure` decides. With
//! `on_failure = "continue"` the workflow goes on to the lease wait, which then lasts the full
//! safe period: **a fence step whose fallback is the lease wait must say
//! `on_failure = "continue"`**; with `"abort"` (the default) or `"pause"` the workflow stops
//! for an operator instead. Steps of other stages with no reachable executor wait (and alert):
//! activating a site needs a node of that site.
//!
//! # Reactivation of a self-fenced active site
//!
//! A node of the active site that could not renew the lease for `lease_ttl` self-fences (it
//! runs `on_lease_lost` and stops serving) while the cluster still records its site active:
//! nobody would serve, and nothing would change that when the site is not detected down, or
//! when no failover may follow (no automatic failback). Such a node, once its `on_lease_lost`
//! runbook is done and it reaches the leader again, says so in its reports
//! ([`Engine::fenced_report`]). With no workflow in progress, a fresh such report from a
//! member of the active site at the service's current epoch makes the engine propose
//! `StartReactivation`: the site's activate (and verify) runbook again, at a new epoch, with
//! the lease kept by the site. It comes before a failover decision: a site that can start its
//! application again serves sooner than a failover; when it cannot, the reactivation ends
//! failed (an alert says so) and detection decides as usual. Activate steps of a reactivation
//! with no reachable executor fail their attempt at once (like fence steps), so a
//! reactivation never holds a service that may need a failover.
//!
//! # Retries go to another executor
//!
//! A step attempt that ran and failed is retried, when another suitable executor is
//! reachable, on one that has not failed it yet in this workflow (the `StepStarted` entry
//! records which); attempts stay bounded by the step's `retries`.
//!
//! The lease wait ends at once when every fence step succeeded, and otherwise at
//! [`LeaseParams::safe_activation_time`] from the first tick at which this engine saw the
//! workflow (see [`Engine::tick`] for why that instant is a valid reference).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

mod automatic;
mod workflow;

use automatic::{decide_failover, decide_reactivation, Inputs};
pub(crate) use workflow::choose_executor;
use workflow::drive_workflow;

use super::detect::{
    DetectEvent, DetectPolicy, DetectPolicyError, Detector, SiteHealth, Tally, Verdict,
};
use super::lease::LeaseParams;
use super::readiness::{
    self, FingerprintSeen, Fingerprints, PassiveResults, PassiveSeen, Reports, StandbyReadiness,
};
use super::time::MonoTime;
use crate::consensus::state::control::{
    Automation, ControlRequest, ControlState, LeaseTerms, ServicePhase, ServiceState, Stage,
    StepStatus, Workflow, WorkflowKind, WorkflowState, WorkflowStep,
};
use crate::consensus::types::{Member, NodeId, Role};
use crate::spec::{ClusterSpec, Policy, RunOn, Service, Step, StepAction, VetoHook};

/// Default [`EngineParams::step_result_grace`].
pub const DEFAULT_STEP_RESULT_GRACE: Duration = Duration::from_secs(5);
/// Default [`EngineParams::alert_every`].
pub const DEFAULT_ALERT_EVERY: Duration = Duration::from_secs(60);

/// Settings of an [`Engine`] that are not part of the replicated cluster spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineParams {
    /// This node's member name: the author of its proposals, and how it finds itself among the
    /// members.
    pub node_name: String,
    /// Detection thresholds. `stale_after` and `quorum` are used as given; `down_after` and
    /// `up_after` are replaced per service by the spec's policy.
    pub detect: DetectPolicy,
    /// Extra time past a step's timeout before the leader stops waiting for its result.
    pub step_result_grace: Duration,
    /// Shortest time between two alerts for the same service and reason.
    pub alert_every: Duration,
}

impl EngineParams {
    /// Defaults for the node named `node_name`: detection by a majority of all voters (so the
    /// verdict never depends on where the leader sits or who can reach it: DESIGN.md 3), 5s
    /// result grace, one alert per minute per (service, reason).
    pub fn new(node_name: impl Into<String>) -> EngineParams {
        EngineParams {
            node_name: node_name.into(),
            detect: DetectPolicy {
                quorum: super::detect::QuorumRule::MajorityOfVoters,
                ..DetectPolicy::default()
            },
            step_result_grace: DEFAULT_STEP_RESULT_GRACE,
            alert_every: DEFAULT_ALERT_EVERY,
        }
    }
}

/// What the leader knows at one tick.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The leader's monotonic clock.
    pub now: MonoTime,
    /// The leader's wall clock, ms since the Unix epoch: stamped on proposals for display, and
    /// compared with a cooldown's end (not a safety matter).
    pub now_unix_ms: i64,
    /// The leader's applied replicated state.
    pub control: &'a ControlState,
    /// Current Raft voters, who are the observers (the witness included).
    pub voters: &'a BTreeSet<NodeId>,
    /// Every member with its site and role.
    pub members: &'a BTreeMap<NodeId, Member>,
    /// Members that answered Raft RPCs recently (the leader itself included).
    pub reachable: &'a BTreeSet<NodeId>,
}

/// What the engine asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Propose this entry through Raft, then call [`Engine::proposal_done`] with its service.
    Propose(ControlRequest),
    /// Run this step attempt and report with [`Engine::step_result`].
    RunStep(Box<StepDispatch>),
    /// Run these veto hooks in order on the leader, stopping at the first that fails, and
    /// report with [`Engine::veto_result`].
    RunVeto {
        /// The service that would fail over.
        service: String,
        /// The site it would move away from (`DROVER_FROM_SITE`).
        from_site: String,
        /// The site it would move to (`DROVER_TO_SITE`).
        to_site: String,
        /// The hooks, in spec order.
        hooks: Vec<VetoHook>,
        /// When the engine stops waiting (its clock): the hooks' timeouts added up, plus the
        /// result grace. No result by then is a veto.
        deadline: MonoTime,
    },
    /// Log it and notify (webhooks). Already rate-limited per (service, reason).
    Alert {
        /// The service concerned.
        service: String,
        /// What happened and what an operator can do.
        message: String,
    },
}

/// One step attempt to run.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDispatch {
    /// Service name.
    pub service: String,
    /// The workflow's id.
    pub workflow_id: u64,
    /// Index of the step in the plan.
    pub step: usize,
    /// The attempt, as recorded by `StepStarted`.
    pub attempt: u32,
    /// Node that runs it; None: the leader itself.
    pub executor: Option<NodeId>,
    /// What to run.
    pub action: Step,
    /// The workflow's epoch: the fencing token the executor checks and passes on.
    pub epoch: u64,
    /// The site losing the service (`DROVER_FROM_SITE`).
    pub from_site: String,
    /// The site taking it over (`DROVER_TO_SITE`).
    pub to_site: String,
    /// When the leader stops waiting (its clock): the step's timeout plus the result grace.
    pub deadline: MonoTime,
}

/// The leader's decision engine for one leadership term; see the module doc.
#[derive(Debug)]
pub struct Engine {
    params: EngineParams,
    /// When this engine (and so this node's term as leader) started, on the leader's clock.
    term_started: MonoTime,
    /// Latest report per observer, per (service, site): replayed into a service's detector
    /// when it is (re)built.
    reports: Reports,
    /// Latest readiness verdict per observer, per (service, site).
    readiness: Reports,
    /// Freshest lag value per service, with when it was reported.
    lag: BTreeMap<String, (f64, MonoTime)>,
    /// Latest consistency fingerprint per reporting node, per (service, check).
    fingerprints: Fingerprints,
    /// Latest passive check result per observer, per (service, check).
    passive: PassiveResults,
    detection: BTreeMap<String, Detection>,
    /// Services with a proposal in flight.
    outstanding: BTreeSet<String>,
    /// Per service, what this engine did for the workflow in progress.
    runs: BTreeMap<String, Run>,
    /// Last alert per (service, reason).
    alerted: BTreeMap<(String, String), MonoTime>,
    /// Per service, the latest run of its veto hooks.
    vetoes: BTreeMap<String, VetoRun>,
    /// Per service, per member: the newest epoch it reported having self-fenced at (its
    /// on_lease_lost runbook done), and when.
    fenced: BTreeMap<String, BTreeMap<NodeId, (u64, MonoTime)>>,
}

/// A run of a service's veto hooks, for one outage.
#[derive(Debug)]
struct VetoRun {
    outage: Outage,
    state: VetoState,
}

/// An outage a failover is considered for: the active site, since when it is down, the target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outage {
    from: String,
    down_since: MonoTime,
    to: String,
}

#[derive(Debug)]
enum VetoState {
    /// `RunVeto` emitted; waiting for [`Engine::veto_result`] until `deadline`.
    Running { deadline: MonoTime },
    /// The result, not yet acted on.
    Done(Result<(), String>),
    /// Vetoed, alerted at `at`; the hooks run again from `at + alert_every`.
    Vetoed { at: MonoTime },
}

/// A service's detector, built for the detection policy it was built with.
#[derive(Debug)]
struct Detection {
    policy: DetectPolicy,
    detector: Result<Detector, DetectPolicyError>,
}

/// This engine's view of one workflow.
#[derive(Debug)]
struct Run {
    workflow_id: u64,
    /// The first tick at which this engine saw the workflow.
    first_seen: MonoTime,
    /// When this engine first saw each (step, failed attempt) waiting for a retry.
    retry_seen: BTreeMap<(usize, u32), MonoTime>,
    /// The attempt this engine started last.
    mine: Option<Mine>,
    /// Per step, the executors an attempt failed on: a retry goes elsewhere when it can.
    failed_on: BTreeMap<usize, BTreeSet<Option<NodeId>>>,
}

/// An attempt started by this engine.
#[derive(Debug)]
struct Mine {
    step: usize,
    attempt: u32,
    executor: Option<NodeId>,
    progress: Progress,
    /// The outcome, once known; proposed as `StepFinished` until the state moves on.
    result: Option<Result<String, String>>,
    /// The failure in `result` was a refusal by the world ([`Engine::step_refused`]): the
    /// step fails for good, without retries.
    refused: bool,
    /// Executors that could not run this attempt (unreachable, refused, died): not asked again
    /// for it.
    excluded: BTreeSet<NodeId>,
    /// Times this attempt went to another executor because one could not run it.
    reroutes: u32,
}

/// An attempt goes to another executor at most this often before it counts as failed.
const MAX_REROUTES: u32 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// Start proposed, nothing run yet.
    Started,
    /// Sent to an executor as a `RunStep`.
    Dispatched { deadline: MonoTime },
    /// Evaluated by the engine itself (lease wait, probe) since `since`.
    Evaluating { since: MonoTime },
    /// The executor could not run it; another one is to be chosen.
    Rerouting { why: String },
}

/// Where a tick's commands go, with the per-service proposal and alert limits.
struct Sink<'a> {
    out: &'a mut Vec<Command>,
    outstanding: &'a mut BTreeSet<String>,
    alerted: &'a mut BTreeMap<(String, String), MonoTime>,
    alert_every: Duration,
    now: MonoTime,
}

impl Sink<'_> {
    fn can_propose(&self, service: &str) -> bool {
        !self.outstanding.contains(service)
    }

    fn propose(&mut self, service: &str, req: ControlRequest) {
        debug_assert!(self.can_propose(service));
        self.outstanding.insert(service.to_string());
        self.out.push(Command::Propose(req));
    }

    fn alert(&mut self, service: &str, reason: &str, message: String) {
        let key = (service.to_string(), reason.to_string());
        if self.alerted.get(&key).is_some_and(|&last| self.now < last + self.alert_every) {
            return;
        }
        self.alerted.insert(key, self.now);
        self.out.push(Command::Alert { service: service.to_string(), message });
    }
}

/// One service as seen at this tick.
struct Svc<'a> {
    name: &'a str,
    svc: &'a Service,
    policy: &'a Policy,
    state: &'a ServiceState,
    spec: &'a ClusterSpec,
    det: Option<&'a Detector>,
    /// The freshest replication lag report, and when it arrived.
    lag: Option<(f64, MonoTime)>,
}

impl Engine {
    /// A fresh engine for a leadership term that started at `now` (the leader's clock).
    pub fn new(params: EngineParams, now: MonoTime) -> Engine {
        Engine {
            params,
            term_started: now,
            reports: BTreeMap::new(),
            readiness: BTreeMap::new(),
            lag: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
            passive: BTreeMap::new(),
            detection: BTreeMap::new(),
            outstanding: BTreeSet::new(),
            runs: BTreeMap::new(),
            alerted: BTreeMap::new(),
            vetoes: BTreeMap::new(),
            fenced: BTreeMap::new(),
        }
    }

    /// `member` self-fenced `service` at `epoch` (its on_lease_lost runbook is done) and says
    /// so at `at` (the leader's clock). Only the newest report per member counts.
    pub fn fenced_report(&mut self, member: NodeId, service: &str, epoch: u64, at: MonoTime) {
        let by = self.fenced.entry(service.to_string()).or_default();
        if by.get(&member).is_none_or(|&(e, old)| (e, old) <= (epoch, at)) {
            by.insert(member, (epoch, at));
        }
    }

    /// Records what `observer` saw of `site` for `service` at `at` (the leader's clock), and
    /// the replication lag it measured, if any (non-finite values are ignored). A report older
    /// than the observer's stored one is ignored.
    pub fn probe_report(
        &mut self,
        observer: NodeId,
        service: &str,
        site: &str,
        verdict: Verdict,
        lag: Option<f64>,
        at: MonoTime,
    ) {
        if let Some(lag) = lag.filter(|l| l.is_finite()) {
            let newest = self.lag.get(service).is_none_or(|&(_, old)| at >= old);
            if newest {
                self.lag.insert(service.to_string(), (lag, at));
            }
        }
        let latest = self.reports.entry((service.to_string(), site.to_string())).or_default();
        if latest.get(&observer).is_some_and(|&(_, old)| old > at) {
            return;
        }
        latest.insert(observer, (verdict, at));
        if let Some(Detection { detector: Ok(d), .. }) = self.detection.get_mut(service) {
            d.report(observer, service, site, verdict, at);
        }
    }

    /// How many fresh reports call `site` healthy or unhealthy for `service` now (None before
    /// the service has a detector). For status: a site nobody has reported on is "unknown".
    pub fn site_tally(&self, service: &str, site: &str, now: MonoTime) -> Option<Tally> {
        match self.detection.get(service) {
            Some(Detection { detector: Ok(d), .. }) => Some(d.tally(service, site, now)),
            _ => None,
        }
    }

    /// A readiness report: whether `site` could take `service` over, as `observer` sees it.
    pub fn readiness_report(
        &mut self,
        observer: NodeId,
        service: &str,
        site: &str,
        verdict: Verdict,
        at: MonoTime,
    ) {
        let latest = self.readiness.entry((service.to_string(), site.to_string())).or_default();
        if latest.get(&observer).is_none_or(|&(_, old)| old <= at) {
            latest.insert(observer, (verdict, at));
        }
    }

    /// A consistency fingerprint: `node`, a member of `site`, took `value` (or failed to, with
    /// why) of its own site for `service`'s check `check` at `at`. Only the newest per node
    /// counts; the verdict uses it only while `node` is a member of `site`.
    #[allow(clippy::too_many_arguments)]
    pub fn fingerprint_report(
        &mut self,
        node: NodeId,
        service: &str,
        site: &str,
        check: &str,
        value: Result<String, String>,
        at: MonoTime,
    ) {
        let by = self.fingerprints.entry((service.to_string(), check.to_string())).or_default();
        if by.get(&node).is_none_or(|old| old.at <= at) {
            by.insert(node, FingerprintSeen { site: site.to_string(), value, at });
        }
    }

    /// A passive check result: what `observer` saw of `service`'s passive check `check` at
    /// `at` (`Healthy`: it passes, the site serves).
    pub fn passive_report(
        &mut self,
        observer: NodeId,
        service: &str,
        check: &str,
        verdict: Verdict,
        detail: String,
        at: MonoTime,
    ) {
        let by = self.passive.entry((service.to_string(), check.to_string())).or_default();
        if by.get(&observer).is_none_or(|old| old.at <= at) {
            by.insert(observer, PassiveSeen { verdict, detail, at });
        }
    }

    /// The result of a dispatched step attempt. Ignored unless it is the attempt this engine
    /// dispatched and still waits for.
    pub fn step_result(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        result: Result<String, String>,
    ) {
        let Some(run) = self.runs.get_mut(service) else { return };
        if run.workflow_id != workflow_id {
            return;
        }
        if let Some(mine) = run.mine.as_mut() {
            let waiting = matches!(mine.progress, Progress::Dispatched { .. });
            if mine.step == step && mine.attempt == attempt && waiting && mine.result.is_none() {
                mine.result = Some(result);
            }
        }
    }

    /// The attempt ran and the world refused it (an actuator's `StepError::Refused`: e.g. a
    /// newer epoch owns the DNS records). Like a failed [`Engine::step_result`], except that
    /// the step is not retried: it fails for good and its `on_failure` decides at once.
    pub fn step_refused(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        why: String,
    ) {
        let Some(run) = self.runs.get_mut(service) else { return };
        if run.workflow_id != workflow_id {
            return;
        }
        if let Some(mine) = run.mine.as_mut() {
            let waiting = matches!(mine.progress, Progress::Dispatched { .. });
            if mine.step == step && mine.attempt == attempt && waiting && mine.result.is_none() {
                mine.result = Some(Err(why));
                mine.refused = true;
            }
        }
    }

    /// The executor of a dispatched attempt could not run it: unreachable, died mid-step (its
    /// outcome is unknown; steps are idempotent), or refused it (not caught up, not a
    /// controller). That costs no attempt: the attempt goes to another suitable executor at
    /// the next tick (that one is not asked again), up to `MAX_REROUTES` times, after which it
    /// counts as failed with `why`. Ignored unless it is the attempt this engine waits for.
    pub fn step_not_run(
        &mut self,
        service: &str,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        why: String,
    ) {
        let Some(run) = self.runs.get_mut(service) else { return };
        if run.workflow_id != workflow_id {
            return;
        }
        let Some(mine) = run.mine.as_mut() else { return };
        let waiting = matches!(mine.progress, Progress::Dispatched { .. });
        if mine.step != step || mine.attempt != attempt || !waiting || mine.result.is_some() {
            return;
        }
        mine.reroutes += 1;
        if mine.reroutes > MAX_REROUTES {
            mine.result =
                Some(Err(format!("no executor could run it ({} tries): {why}", mine.reroutes)));
            return;
        }
        if let Some(ex) = mine.executor {
            mine.excluded.insert(ex);
        }
        mine.progress = Progress::Rerouting { why };
    }

    /// The verdict of the veto hooks last run for `service`: `Ok` when every hook exited 0,
    /// `Err(reason)` when one vetoed the failover (exited non-zero or timed out). Ignored unless
    /// a run is in flight for it.
    pub fn veto_result(&mut self, service: &str, result: Result<(), String>) {
        if let Some(run) = self.vetoes.get_mut(service) {
            if matches!(run.state, VetoState::Running { .. }) {
                run.state = VetoState::Done(result);
            }
        }
    }

    /// The proposal last emitted for `service` was applied (or refused); the next tick may
    /// propose again for it.
    pub fn proposal_done(&mut self, service: &str) {
        self.outstanding.remove(service);
    }

    /// Whether an operator's unforced failover of `service` to `target` passes the readiness
    /// gates now (readiness checks, lag, consistency and passive checks): `Err(why)` names
    /// the first that blocks it. The leader publishes it for the admin API.
    pub fn failover_gates(
        &self,
        obs: &Observation,
        service: &str,
        target: &str,
    ) -> Result<(), String> {
        let verdict = self
            .standby_verdict(obs, service, target)
            .ok_or_else(|| format!("no service named {service}"))?;
        match verdict.blocker() {
            Some(r) => Err(r.text.clone()),
            None => Ok(()),
        }
    }

    /// The readiness verdict of every standby of `service` (every site that can be active
    /// but is not), in spec order; empty for an unknown service. For status and metrics.
    pub fn standby_readiness(&self, obs: &Observation, service: &str) -> Vec<StandbyReadiness> {
        let Some(spec) = obs.control.spec.as_ref().map(|v| &v.spec) else { return Vec::new() };
        let Some(state) = obs.control.services.get(service) else { return Vec::new() };
        spec.active_capable_sites()
            .filter(|site| *site != state.active_site)
            .filter_map(|site| self.standby_verdict(obs, service, site))
            .collect()
    }

    fn standby_verdict(
        &self,
        obs: &Observation,
        service: &str,
        target: &str,
    ) -> Option<StandbyReadiness> {
        let spec = &obs.control.spec.as_ref()?.spec;
        let svc = spec.service(service)?;
        let state = obs.control.services.get(service)?;
        Some(readiness::standby(&self.readiness_inputs(obs), svc, service, state, target))
    }

    fn readiness_inputs<'a>(&'a self, obs: &Observation<'a>) -> readiness::Inputs<'a> {
        readiness::Inputs {
            readiness: &self.readiness,
            lag: &self.lag,
            fingerprints: &self.fingerprints,
            passive: &self.passive,
            voters: obs.voters,
            members: obs.members,
            now: obs.now,
            stale_after: self.params.detect.stale_after,
        }
    }

    /// Detection's view of `site` for `service` (for status display); `Up` when unknown.
    pub fn site_health(&self, service: &str, site: &str) -> SiteHealth {
        match self.detection.get(service) {
            Some(Detection { detector: Ok(d), .. }) => d.health(service, site),
            _ => SiteHealth::Up,
        }
    }

    /// Decides, from the observation and the inputs received so far, what to do now.
    ///
    /// For every service that is both in the applied state and in the spec: with no workflow in
    /// progress, an automatic failover if the active site is down and every rule and gate
    /// holds; with one, the next move of its current step.
    ///
    /// The lease wait is measured from `first_seen`, the first tick at which this engine saw
    /// the workflow in the applied state. DESIGN.md 6 requires the reference to be no earlier
    /// than both the commit of the lease revocation and the start of this leader's term.
    /// `first_seen` is both: the workflow (and with it the revocation, which is the same
    /// `StartFailover` entry) was applied on this node, hence committed, before this tick read
    /// the clock; and the engine was created when the term started, before any of its ticks.
    /// (It is also `max(first_seen, term start)` that is passed to
    /// [`LeaseParams::safe_activation_time`], which adds a millisecond for clock truncation.)
    pub fn tick(&mut self, obs: &Observation) -> Vec<Command> {
        let mut out = Vec::new();
        let Some(spec) = obs.control.spec.as_ref().map(|v| &v.spec) else { return out };
        self.forget_removed(spec, obs.control);
        for (name, state) in &obs.control.services {
            let (Some(svc), Some(policy)) = (spec.service(name), spec.policy_for(name)) else {
                continue;
            };
            // A report counts until three of its check's intervals have passed without a new
            // one, and never less than the engine's default: slow checks are not "stale".
            let slowest = svc.checks.iter().map(|c| c.interval).max().unwrap_or_default();
            let stale_after = self.params.detect.stale_after.max(slowest * 3);
            self.update_detection(name, &policy, stale_after, obs, &mut out);
            let det = match self.detection.get(name) {
                Some(Detection { detector: Ok(d), .. }) => Some(d),
                _ => None,
            };
            let lag = self.lag.get(name.as_str()).copied();
            let s = Svc { name, svc, policy: &policy, state, spec, det, lag };
            let mut sink = Sink {
                out: &mut out,
                outstanding: &mut self.outstanding,
                alerted: &mut self.alerted,
                alert_every: self.params.alert_every,
                now: obs.now,
            };
            if let Some(pause) = &state.paused {
                if let Some(until) = pause.until_unix_ms.filter(|u| *u <= obs.now_unix_ms) {
                    if sink.can_propose(name) {
                        let req = ControlRequest::PauseExpired {
                            service: name.to_string(),
                            until_unix_ms: until,
                            author: self.params.node_name.clone(),
                            at_unix_ms: obs.now_unix_ms,
                        };
                        sink.propose(name, req);
                    }
                }
            }
            // A serving standby is alerted whatever the service is doing.
            let inputs = readiness::Inputs {
                readiness: &self.readiness,
                lag: &self.lag,
                fingerprints: &self.fingerprints,
                passive: &self.passive,
                voters: obs.voters,
                members: obs.members,
                now: obs.now,
                stale_after: self.params.detect.stale_after,
            };
            for site in spec.active_capable_sites().filter(|site| *site != state.active_site) {
                if !svc.passive.iter().any(|p| p.check.site == site) {
                    continue;
                }
                let verdict = readiness::standby(&inputs, svc, name, state, site);
                if let Some(text) = verdict.split_brain_alert() {
                    sink.alert(name, &format!("split_brain:{site}"), text.to_string());
                }
            }
            match state.active_workflow() {
                None if state.paused.is_some() => {
                    self.runs.remove(name);
                    self.vetoes.remove(name.as_str());
                    automatic::paused(&s, obs, &mut sink);
                }
                None => {
                    self.runs.remove(name);
                    let stale_after = self.params.detect.stale_after;
                    let fenced = self.fenced.get(name.as_str());
                    if decide_reactivation(&self.params, fenced, stale_after, &s, obs, &mut sink) {
                        continue;
                    }
                    let readiness = readiness::Inputs {
                        readiness: &self.readiness,
                        lag: &self.lag,
                        fingerprints: &self.fingerprints,
                        passive: &self.passive,
                        voters: obs.voters,
                        members: obs.members,
                        now: obs.now,
                        stale_after: self.params.detect.stale_after,
                    };
                    let inputs = Inputs { readiness, vetoes: &mut self.vetoes };
                    decide_failover(&self.params, inputs, &s, obs, &mut sink);
                }
                Some(wf) => {
                    // A failover is under way: any verdict of veto hooks is moot.
                    self.vetoes.remove(name);
                    let run =
                        self.runs.entry(name.clone()).or_insert_with(|| Run::new(wf.id, obs.now));
                    if run.workflow_id != wf.id {
                        *run = Run::new(wf.id, obs.now);
                    }
                    drive_workflow(&self.params, self.term_started, &s, wf, run, obs, &mut sink);
                }
            }
        }
        out
    }

    /// Drops what the engine keeps for services and sites that no longer exist.
    fn forget_removed(&mut self, spec: &ClusterSpec, control: &ControlState) {
        let known = |s: &str| spec.service(s).is_some() && control.services.contains_key(s);
        self.reports.retain(|(service, site), _| known(service) && spec.site(site).is_some());
        self.lag.retain(|service, _| known(service));
        self.readiness.retain(|(service, site), _| known(service) && spec.site(site).is_some());
        self.fingerprints.retain(|(service, check), _| {
            spec.service(service).is_some_and(|s| s.consistency.iter().any(|c| &c.name == check))
                && known(service)
        });
        self.passive.retain(|(service, check), _| {
            spec.service(service).is_some_and(|s| s.passive.iter().any(|p| &p.name == check))
                && known(service)
        });
        self.detection.retain(|service, _| known(service));
        self.runs.retain(|service, _| known(service));
        self.vetoes.retain(|service, _| known(service));
        self.fenced.retain(|service, _| known(service));
    }

    /// Makes sure `service` has a detector for its current policy and voters, advances it to
    /// now and alerts on its transitions.
    fn update_detection(
        &mut self,
        service: &str,
        policy: &Policy,
        stale_after: Duration,
        obs: &Observation,
        out: &mut Vec<Command>,
    ) {
        let wanted = DetectPolicy {
            down_after: policy.down_after,
            up_after: policy.up_after,
            stale_after,
            ..self.params.detect.clone()
        };
        if self.detection.get(service).is_none_or(|d| d.policy != wanted) {
            // A new or changed policy starts detection over from the latest report of each
            // observer. Replaying only the latest reports can make a quorum look younger than
            // it was, never older, so a rebuild may delay a failover but never hastens one.
            let detector =
                Detector::new(wanted.clone(), obs.voters.iter().copied()).map(|mut d| {
                    let mut replay: Vec<(MonoTime, NodeId, &str, Verdict)> = Vec::new();
                    for ((svc, site), latest) in &self.reports {
                        if svc == service {
                            replay.extend(
                                latest.iter().map(|(&o, &(v, at))| (at, o, site.as_str(), v)),
                            );
                        }
                    }
                    replay.sort_by_key(|&(at, o, site, _)| (at, o, site.to_string()));
                    for (at, observer, site, verdict) in replay {
                        d.report(observer, service, site, verdict, at);
                    }
                    d
                });
            self.detection.insert(service.to_string(), Detection { policy: wanted, detector });
        }
        let mut sink = Sink {
            out,
            outstanding: &mut self.outstanding,
            alerted: &mut self.alerted,
            alert_every: self.params.alert_every,
            now: obs.now,
        };
        let Some(detection) = self.detection.get_mut(service) else { return };
        let d = match &mut detection.detector {
            Ok(d) => d,
            Err(err) => {
                sink.alert(
                    service,
                    "detection",
                    format!("site health detection for {service} is off: {err}"),
                );
                return;
            }
        };
        if d.voters() != obs.voters {
            d.set_voters(obs.voters.iter().copied(), obs.now);
        }
        for event in d.evaluate(obs.now) {
            match event {
                DetectEvent::SiteDown { site, .. } => sink.alert(
                    service,
                    &format!("down:{site}"),
                    format!(
                        "{site} is down for {service}: unhealthy from a quorum of observers for {}",
                        secs(policy.down_after)
                    ),
                ),
                DetectEvent::SiteUp { site, .. } => sink.alert(
                    service,
                    &format!("up:{site}"),
                    format!(
                        "{site} is up again for {service}: healthy from a quorum of observers for {}",
                        secs(policy.up_after)
                    ),
                ),
            }
        }
    }
}

impl Run {
    fn new(workflow_id: u64, now: MonoTime) -> Run {
        Run {
            workflow_id,
            first_seen: now,
            retry_seen: BTreeMap::new(),
            mine: None,
            failed_on: BTreeMap::new(),
        }
    }
}

/// `3s`, `2.5s`: whole seconds when exact, else one decimal.
fn secs(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Planted defects for the simulator's mutation checks (feature `sim-mutations`).
#[cfg(feature = "sim-mutations")]
pub mod mutation {
    use std::sync::atomic::{AtomicBool, Ordering};

    static NO_REACTIVATE: AtomicBool = AtomicBool::new(false);
    static EARLY_ACTIVATE: AtomicBool = AtomicBool::new(false);

    /// Switchovers activate the new site before deactivating the old one, and end the lease
    /// wait at once (`drover-sim --mutate switchover-early-activate`). Process-wide; off by
    /// default.
    pub fn set_early_activate(on: bool) {
        EARLY_ACTIVATE.store(on, Ordering::SeqCst);
    }

    /// Whether switchovers activate early.
    pub fn early_activate() -> bool {
        EARLY_ACTIVATE.load(Ordering::SeqCst)
    }

    /// Never reactivates a self-fenced active site (`drover-sim --mutate no-reactivate`).
    /// Process-wide; off by default.
    pub fn set_no_reactivate(on: bool) {
        NO_REACTIVATE.store(on, Ordering::SeqCst);
    }

    /// Whether reactivation is off.
    pub fn no_reactivate() -> bool {
        NO_REACTIVATE.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests;
