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

use super::detect::{
    DetectEvent, DetectPolicy, DetectPolicyError, Detector, SiteHealth, Tally, Verdict,
};
use super::lease::LeaseParams;
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
    RunStep(StepDispatch),
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
            let s = Svc { name, svc, policy: &policy, state, spec, det };
            let mut sink = Sink {
                out: &mut out,
                outstanding: &mut self.outstanding,
                alerted: &mut self.alerted,
                alert_every: self.params.alert_every,
                now: obs.now,
            };
            match state.active_workflow() {
                None => {
                    self.runs.remove(name);
                    let stale_after = self.params.detect.stale_after;
                    let fenced = self.fenced.get(name.as_str());
                    if decide_reactivation(&self.params, fenced, stale_after, &s, obs, &mut sink) {
                        continue;
                    }
                    let inputs = Inputs {
                        lag: &self.lag,
                        readiness: &self.readiness,
                        vetoes: &mut self.vetoes,
                    };
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

/// Fresh "ready" readiness reports from voters for (service, site), and the voter count.
fn quorum_ready(
    readiness: &Reports,
    voters: &BTreeSet<NodeId>,
    service: &str,
    site: &str,
    now: MonoTime,
    stale_after: Duration,
) -> (usize, usize) {
    let ready = readiness.get(&(service.to_string(), site.to_string())).map_or(0, |by| {
        by.iter()
            .filter(|(id, (v, at))| {
                voters.contains(id)
                    && *v == Verdict::Healthy
                    && now.saturating_duration_since(*at) <= stale_after
            })
            .count()
    });
    (ready, voters.len())
}

/// Latest report per observer, per (service, site).
type Reports = BTreeMap<(String, String), BTreeMap<NodeId, (Verdict, MonoTime)>>;

/// What [`decide_failover`] reads (and, for veto runs, updates) besides the observation.
struct Inputs<'a> {
    lag: &'a BTreeMap<String, (f64, MonoTime)>,
    readiness: &'a Reports,
    vetoes: &'a mut BTreeMap<String, VetoRun>,
}

/// With no workflow in progress: proposes the reactivation of the active site when one of its
/// members reports (freshly, at the current epoch) that it self-fenced while the site still
/// holds the lease; alerts when the site cannot be reactivated, or when the last reactivation
/// failed. True when it acted (or waits for a proposal), so no failover is decided this tick.
fn decide_reactivation(
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
    if !matches!(state.phase, ServicePhase::Protecting | ServicePhase::FailedOver) {
        return false;
    }
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
fn decide_failover(
    params: &EngineParams,
    inputs: Inputs,
    s: &Svc,
    obs: &Observation,
    sink: &mut Sink,
) {
    let Inputs { lag, readiness, vetoes } = inputs;
    let (name, state, now) = (s.name, s.state, obs.now);
    if state.phase != ServicePhase::Protecting {
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
    if active != s.svc.initial_active {
        let msg = format!(
            "{active} is down for {name}; drover never fails back to {} automatically: an \
             operator must decide",
            s.svc.initial_active
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

    // Gates. The standby's health checks say nothing about whether it can take over (a cold
    // standby fails them by design); its readiness checks do, when the service has some.
    if s.svc.readiness.iter().any(|c| c.site == target) {
        let (ready, voters) =
            quorum_ready(readiness, obs.voters, name, target, now, params.detect.stale_after);
        let needed = voters / 2 + 1;
        if ready < needed {
            let msg = format!(
                "failover of {name} to {target} blocked: {target} is not ready (its readiness \
                 checks pass from {ready} of {voters} observers, {needed} needed)"
            );
            return sink.alert(name, "gate_ready", msg);
        }
    }
    if let Some(max) = s.svc.max_lag_on_failover {
        let stale_after = params.detect.stale_after;
        let blocked = match lag.get(name) {
            None => Some("replication lag unknown (no lag report yet)".to_string()),
            Some(&(_, at)) if now.saturating_duration_since(at) > stale_after => Some(format!(
                "replication lag unknown (the newest lag report is {} old; stale after {})",
                secs(now.saturating_duration_since(at)),
                secs(stale_after)
            )),
            Some(&(value, _)) if value > max => {
                Some(format!("replication lag {value} > max_lag_on_failover {max}"))
            }
            Some(_) => None,
        };
        if let Some(why) = blocked {
            return sink.alert(
                name,
                "gate_lag",
                format!("failover of {name} to {target} blocked: {why}"),
            );
        }
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

/// With a workflow in progress: the next move of its current step.
fn drive_workflow(
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
    match &wf.state {
        WorkflowState::Running => {}
        WorkflowState::Paused { reason } => {
            let msg = format!(
                "failover of {name} to {} is paused: {reason}; 'droverctl resume {name}' \
                 retries the step",
                wf.to
            );
            return sink.alert(name, "paused", msg);
        }
        WorkflowState::Failed { reason } => {
            let msg = s.state.nobody_serving(name).unwrap_or_else(|| {
                format!(
                    "failover of {name} to {} failed: {reason}; 'droverctl resume {name}' \
                     retries the step",
                    wf.to
                )
            });
            return sink.alert(name, "failed", msg);
        }
        WorkflowState::AwaitingCommit | WorkflowState::Committed => return,
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
        StepStatus::Succeeded { .. } | StepStatus::Failed { .. } => {}
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
        Err(why) if step.stage == Stage::Fence || wf.kind == WorkflowKind::Reactivate => {
            (None, Some(Err(why)))
        }
        Err(why) => {
            let msg = format!(
                "failover of {name} to {} waits at step {} ({}): {why}",
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
        // The lease wait.
        if mine.progress == Progress::Started {
            mine.progress = Progress::Evaluating { since: now };
        }
        if wf.fence_confirmed() {
            let n = wf.steps.iter().filter(|s| s.stage == Stage::Fence).count();
            let plural = if n == 1 { "" } else { "s" };
            mine.result = Some(Ok(format!("fencing confirmed by {n} step{plural}")));
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
        if now >= lease.safe_activation_time(first_seen, term_started) {
            mine.result = Some(Ok(format!(
                "lease of {} expired: waited {} without fencing confirmation",
                wf.from,
                secs(now.saturating_duration_since(first_seen))
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
            let deadline = now + action.timeout + params.step_result_grace;
            mine.progress = Progress::Dispatched { deadline };
            sink.out.push(Command::RunStep(StepDispatch {
                service: name.to_string(),
                workflow_id: wf.id,
                step: mine.step,
                attempt: mine.attempt,
                executor: mine.executor,
                action: action.clone(),
                epoch: wf.epoch,
                from_site: wf.from.clone(),
                to_site: wf.to.clone(),
                deadline,
            }));
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
fn choose_executor(
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
#[path = "engine_tests.rs"]
mod tests;
