//! The failover driver: wires the pure decision engine to Raft, probes, actuators and peers.
//!
//! ```text
//!  every node:   Prober ──reports──▶ reporter loop ──gRPC ReportProbes──▶ leader
//!  leader:       controller loop: Engine::tick(observation) ──▶ Propose  ──▶ Raft client_write
//!                                                         ├──▶ RunStep ──▶ local actuator, or
//!                                                         │                gRPC RunStep on a node of the step's site
//!                                                         └──▶ RunVeto ──▶ hooks in order on the local actuator
//!                                                                          ──▶ Event::VetoResult ──▶ Engine::veto_result
//!  active site:  lease loop: RenewLease (linearizable read on the leader), measured from the
//!                send; not renewed for lease_ttl, or revoked ──▶ run on_lease_lost locally
//! ```
//!
//! The engine decides; this module only carries out its commands and feeds it what happened.
//! Every channel is bounded and every remote call has a deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1 as pb;
use drover_proto::v1::control_client::ControlClient;
use drover_proto::v1::control_server::{Control, ControlServer};
use openraft::ServerState;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, warn};

use crate::actuate::{Actuator, StepContext, StepError};
use crate::api::NodeHandle;
use crate::consensus::network::{endpoint, Dialer};
use crate::consensus::state::control::{ControlRequest, LeaseTerms, StepStatus};
use crate::consensus::types::{Member, NodeId, Request as RaftRequest, Role};
use crate::decide::{
    Command, Engine, EngineParams, HolderLease, LeaseParams, MonoTime, Observation, StepDispatch,
    Verdict,
};
use crate::probe::{ProbeLimits, ProbeSource, Prober};
use crate::spec::{ClusterSpec, Phase, Step, VetoHook};
use crate::tls::TlsMaterial;

/// How often the leader's engine ticks.
const TICK: Duration = Duration::from_millis(100);
/// How often a node sends its probe results to the leader.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Deadline of a report or lease RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest an executor waits for its own state to reach a step's epoch.
const EPOCH_CATCH_UP: Duration = Duration::from_secs(3);
/// Period of the lease loop; expiry is checked one period early.
const LEASE_TICK: Duration = Duration::from_millis(50);
/// Members asked to relay a lease renewal the leader did not answer.
const RELAYS_TRIED: usize = 2;
/// Capacity of the channels into the controller loop.
const CHANNEL_CAPACITY: usize = 1024;

/// What the failover driver needs; shared by its loops and its gRPC service.
#[derive(Clone)]
pub struct ControlCtx {
    /// The node.
    pub node: NodeHandle,
    /// This node's site.
    pub site: String,
    /// Controller or witness.
    pub role: Role,
    /// Runs steps.
    pub actuator: Arc<dyn Actuator>,
    /// gRPC channels to peers.
    pub peers: PeerChannels,
    /// The clock lease and detection arithmetic is done in.
    pub clock: LeaseClock,
    /// Into the controller loop.
    events: mpsc::Sender<Event>,
}

/// Something that happened, for the controller loop.
enum Event {
    Reports {
        observer: NodeId,
        reports: Vec<pb::ProbeReport>,
        received: Instant,
    },
    StepResult {
        service: String,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        result: Result<String, String>,
    },
    ProposalDone {
        /// The leadership term (engine) that proposed; a result for an earlier one is dropped.
        term: u64,
        service: String,
    },
    VetoResult {
        /// The leadership term (engine) that asked for the run; a result for an earlier one is
        /// dropped.
        term: u64,
        service: String,
        result: Result<(), String>,
    },
}

/// Cached lazy gRPC channels to members.
#[derive(Clone)]
pub struct PeerChannels {
    tls: Option<Arc<TlsMaterial>>,
    dialer: Dialer,
    cache: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl PeerChannels {
    /// Channels over mutual TLS (None: `--insecure-dev`), dialed by `dialer`.
    pub fn new(tls: Option<Arc<TlsMaterial>>, dialer: Dialer) -> Self {
        PeerChannels { tls, dialer, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A Control client for member `id` (its channel is created on first use, then reused).
    pub(crate) fn control(
        &self,
        id: NodeId,
        member: &Member,
    ) -> Result<ControlClient<Channel>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, ch)) = cache.get(&id) {
            if *addr == member.address {
                return Ok(ControlClient::new(ch.clone()));
            }
        }
        let ep = endpoint(&member.address, &member.name, self.tls.as_deref())
            .map_err(|e| format!("bad address {} for {}: {e}", member.address, member.name))?;
        let ch = self.dialer.channel(ep);
        cache.insert(id, (member.address.clone(), ch.clone()));
        Ok(ControlClient::new(ch))
    }
}

/// A node's monotonic clock for the engine and the lease loop: time since the driver started,
/// running at the node's clock rate. A real node runs at rate 1 (its clock's drift is what
/// `max_clock_drift` bounds); the simulator skews each node's rate within that bound.
#[derive(Debug, Clone, Copy)]
pub struct LeaseClock {
    origin: Instant,
    /// Rate error in parts per million: +1000 runs 0.1% fast.
    rate_ppm: i64,
}

impl LeaseClock {
    /// A clock starting now, `rate_ppm` parts per million fast (negative: slow).
    pub fn new(rate_ppm: i64) -> LeaseClock {
        LeaseClock { origin: Instant::now(), rate_ppm: rate_ppm.clamp(-999_999, 999_999) }
    }

    /// `at` on this clock.
    pub fn at(&self, at: Instant) -> MonoTime {
        let ms = at.saturating_duration_since(self.origin).as_millis() as i128;
        let skewed = ms * (1_000_000 + self.rate_ppm as i128) / 1_000_000;
        MonoTime::from_ms(skewed.max(0) as u64)
    }

    /// Now on this clock.
    pub fn now(&self) -> MonoTime {
        self.at(Instant::now())
    }
}

/// Where a node's probe results come from.
pub enum ProbeSupply {
    /// Run the spec's checks from this node ([`Prober`]).
    Real(ProbeLimits),
    /// Take them from elsewhere (the simulator).
    Given(Arc<dyn ProbeSource>),
}

/// What the driver acts and observes through; real on a node, simulated in `drover-sim`.
pub struct DriverParts {
    /// Runs steps.
    pub actuator: Arc<dyn Actuator>,
    /// Probe results.
    pub probes: ProbeSupply,
    /// How peers are dialed.
    pub dialer: Dialer,
    /// The clock lease arithmetic runs on.
    pub clock: LeaseClock,
}

fn unix_now_ms() -> i64 {
    crate::pb::unix_now_ms()
}

/// Starts the driver's loops; they stop when `stop` turns true. Returns the gRPC service.
pub fn start(
    node: NodeHandle,
    site: String,
    role: Role,
    parts: DriverParts,
    tls: Option<Arc<TlsMaterial>>,
    stop: watch::Receiver<bool>,
) -> ControlServer<ControlService> {
    let (events_tx, events_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let ctx = ControlCtx {
        site,
        role,
        actuator: parts.actuator,
        peers: PeerChannels::new(tls, parts.dialer),
        clock: parts.clock,
        events: events_tx,
        node,
    };
    let probes: Arc<dyn ProbeSource> = match parts.probes {
        ProbeSupply::Real(limits) => {
            let (spec_tx, spec_rx) = watch::channel(None);
            tokio::spawn(spec_watch(ctx.clone(), spec_tx, stop.clone()));
            Arc::new(Prober::spawn(ctx.site.clone(), spec_rx, limits))
        }
        ProbeSupply::Given(source) => source,
    };
    tokio::spawn(reporter_loop(ctx.clone(), probes, stop.clone()));
    tokio::spawn(controller_loop(ctx.clone(), events_rx, stop.clone()));
    if role == Role::Controller {
        tokio::spawn(lease_loop(ctx.clone(), stop));
    }
    ControlServer::new(ControlService { ctx })
}

/// Publishes the applied spec to the prober whenever its version changes.
async fn spec_watch(
    ctx: ControlCtx,
    tx: watch::Sender<Option<Arc<ClusterSpec>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut version = 0;
    loop {
        let current =
            ctx.node.state.read(|s| s.control.spec.as_ref().map(|v| (v.version, v.spec.clone())));
        if let Some((v, spec)) = current {
            if v != version {
                version = v;
                info!(version, "cluster spec in force; probing its checks");
                let _ = tx.send(Some(Arc::new(spec)));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn leader_of(node: &NodeHandle) -> Option<(NodeId, Option<Member>)> {
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    m.current_leader.map(|id| (id, m.membership_config.membership().get_node(&id).cloned()))
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "healthy",
        Verdict::Unhealthy => "unhealthy",
        Verdict::Unknown => "unknown",
    }
}

fn parse_verdict(s: &str) -> Verdict {
    match s {
        "healthy" => Verdict::Healthy,
        "unhealthy" => Verdict::Unhealthy,
        _ => Verdict::Unknown,
    }
}

/// Sends this node's probe results to the leader (or straight into the loop when leading).
async fn reporter_loop(
    ctx: ControlCtx,
    prober: Arc<dyn ProbeSource>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let reports: Vec<pb::ProbeReport> = prober
            .latest()
            .into_iter()
            .map(|r| pb::ProbeReport {
                service: r.service,
                site: r.site,
                verdict: verdict_name(r.verdict).to_string(),
                detail: r.detail,
                age_ms: now.saturating_duration_since(r.observed_at).as_millis() as u64,
                lag: r.lag,
                ready: r.ready.map(|v| verdict_name(v).to_string()),
            })
            .collect();
        if reports.is_empty() {
            continue;
        }
        let Some((leader, member)) = leader_of(&ctx.node) else { continue };
        if leader == ctx.node.id {
            let _ =
                ctx.events.try_send(Event::Reports { observer: leader, reports, received: now });
            continue;
        }
        let Some(member) = member else { continue };
        let Ok(mut client) = ctx.peers.control(leader, &member) else { continue };
        let req = pb::ProbeReports { observer: ctx.node.id, reports };
        match tokio::time::timeout(RPC_TIMEOUT, client.report_probes(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => debug!(leader, cause = %e.message(), "probe report not delivered"),
            Err(_) => debug!(leader, "probe report timed out"),
        }
    }
}

/// The leader's loop: one Engine per leadership term.
async fn controller_loop(
    ctx: ControlCtx,
    mut events: mpsc::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let mut engine: Option<Engine> = None;
    // Counts engines, so results of veto runs asked for by an earlier one are dropped.
    let mut term: u64 = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = tick.tick() => None,
            e = events.recv() => e,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (state, membership_config) = {
            let metrics = ctx.node.raft.metrics();
            let m = metrics.borrow();
            (m.state, m.membership_config.clone())
        };
        if state != ServerState::Leader {
            if engine.take().is_some() {
                info!("no longer the leader: failover decisions stop here");
                if let Ok(mut h) = ctx.node.health.write() {
                    h.clear();
                }
            }
            continue;
        }
        let now = Instant::now();
        let eng = engine.get_or_insert_with(|| {
            term += 1;
            info!("leading: failover decisions are made here");
            Engine::new(EngineParams::new(ctx.node.name.clone()), ctx.clock.at(now))
        });
        match event {
            Some(Event::Reports { observer, reports, received }) => {
                for r in reports {
                    let at =
                        received.checked_sub(Duration::from_millis(r.age_ms)).unwrap_or(received);
                    let at = ctx.clock.at(at);
                    eng.probe_report(
                        observer,
                        &r.service,
                        &r.site,
                        parse_verdict(&r.verdict),
                        r.lag,
                        at,
                    );
                    if let Some(ready) = &r.ready {
                        eng.readiness_report(
                            observer,
                            &r.service,
                            &r.site,
                            parse_verdict(ready),
                            at,
                        );
                    }
                }
                continue;
            }
            Some(Event::StepResult { service, workflow_id, step, attempt, result }) => {
                eng.step_result(&service, workflow_id, step, attempt, result);
            }
            Some(Event::ProposalDone { term: asked_by, service }) if asked_by == term => {
                eng.proposal_done(&service)
            }
            Some(Event::ProposalDone { .. }) => {}
            Some(Event::VetoResult { term: asked_by, service, result }) if asked_by == term => {
                eng.veto_result(&service, result);
            }
            // A veto run asked for by an earlier term: its engine is gone.
            Some(Event::VetoResult { .. }) | None => {}
        }
        let membership = membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: BTreeMap<NodeId, Member> =
            membership.nodes().map(|(i, m)| (*i, m.clone())).collect();
        let reachable: BTreeSet<NodeId> = members
            .keys()
            .copied()
            .filter(|id| {
                *id == ctx.node.id
                    || ctx.node.contacts.since(*id).is_some_and(|d| d < Duration::from_secs(3))
            })
            .collect();
        // The engine decides on the applied state in place (a pure, synchronous call; this
        // runs every TICK).
        let commands = ctx.node.state.read(|s| {
            let obs = Observation {
                now: ctx.clock.at(now),
                now_unix_ms: unix_now_ms(),
                control: &s.control,
                voters: &voters,
                members: &members,
                reachable: &reachable,
            };
            let commands = eng.tick(&obs);
            publish_health(&ctx, eng, obs.now, &s.control);
            commands
        });
        for cmd in commands {
            match cmd {
                Command::Propose(req) => propose(&ctx, term, req),
                Command::RunStep(d) => dispatch(&ctx, d, &members),
                Command::RunVeto { service, from_site, to_site, hooks, .. } => {
                    run_veto(&ctx, term, service, from_site, to_site, hooks)
                }
                Command::Alert { service, message } => warn!(service = %service, "{message}"),
            }
        }
    }
}

fn publish_health(
    ctx: &ControlCtx,
    eng: &Engine,
    now: MonoTime,
    control: &crate::consensus::state::control::ControlState,
) {
    let Some(spec) = control.spec.as_ref() else { return };
    let mut view = BTreeMap::new();
    for svc in control.services.keys() {
        let sites = spec
            .spec
            .active_capable_sites()
            .map(|site| {
                let observed =
                    eng.site_tally(svc, site, now).is_some_and(|t| t.healthy + t.unhealthy > 0);
                let health = if observed {
                    let h = format!("{:?}", eng.site_health(svc, site)).to_lowercase();
                    h.split([' ', '{']).next().unwrap_or("").to_string()
                } else {
                    "unknown".to_string()
                };
                (site.to_string(), health)
            })
            .collect();
        view.insert(svc.clone(), sites);
    }
    if let Ok(mut h) = ctx.node.health.write() {
        *h = view;
    }
}

fn service_of(req: &ControlRequest) -> String {
    match req {
        ControlRequest::ApplySpec { .. } => String::new(),
        ControlRequest::StartFailover { service, .. }
        | ControlRequest::StepStarted { service, .. }
        | ControlRequest::StepFinished { service, .. }
        | ControlRequest::Commit { service, .. }
        | ControlRequest::Resume { service, .. }
        | ControlRequest::Ack { service, .. } => service.clone(),
    }
}

fn propose(ctx: &ControlCtx, term: u64, req: ControlRequest) {
    let raft = ctx.node.raft.clone();
    let events = ctx.events.clone();
    let service = service_of(&req);
    tokio::spawn(async move {
        if let ControlRequest::StartFailover { from, to, reason, .. } = &req {
            warn!(service = %service, from = %from, to = %to, "starting automatic failover: {reason}");
        }
        match tokio::time::timeout(
            Duration::from_secs(10),
            raft.client_write(RaftRequest::Control(req)),
        )
        .await
        {
            Ok(Ok(resp)) => {
                if let Some(why) = resp.data.rejected {
                    debug!(service = %service, "proposal rejected: {why}");
                }
            }
            Ok(Err(e)) => warn!(service = %service, cause = %e, "proposal failed"),
            Err(_) => warn!(service = %service, "proposal not committed within 10s"),
        }
        let _ = events.send(Event::ProposalDone { term, service }).await;
    });
}

fn dispatch(ctx: &ControlCtx, d: StepDispatch, members: &BTreeMap<NodeId, Member>) {
    let ctx = ctx.clone();
    let executor = d.executor.map(|id| (id, members.get(&id).cloned()));
    tokio::spawn(async move {
        let limit = d.action.timeout + Duration::from_secs(5);
        let result = match executor {
            Some((id, Some(member))) if id != ctx.node.id => {
                run_remote(&ctx, id, &member, &d, limit).await
            }
            // Never run a site-bound step elsewhere because its executor left the cluster.
            Some((id, None)) => Err(format!("executor node {id} is no longer a member")),
            _ => run_local(&ctx, &d.action, &context_of(&d)).await,
        };
        match &result {
            Ok(detail) => {
                info!(service = %d.service, step = d.step + 1, attempt = d.attempt, epoch = d.epoch, "step done: {detail}")
            }
            Err(e) => {
                warn!(service = %d.service, step = d.step + 1, attempt = d.attempt, epoch = d.epoch, "step failed: {e}")
            }
        }
        let _ = ctx
            .events
            .send(Event::StepResult {
                service: d.service,
                workflow_id: d.workflow_id,
                step: d.step,
                attempt: d.attempt,
                result,
            })
            .await;
    });
}

/// Runs `service`'s veto hooks on this node (the leader) and reports the verdict to the
/// controller loop. Each hook gets the `DROVER_*` variables of the failover it would allow,
/// with the current epoch.
fn run_veto(
    ctx: &ControlCtx,
    term: u64,
    service: String,
    from_site: String,
    to_site: String,
    hooks: Vec<VetoHook>,
) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let epoch =
            ctx.node.state.read(|s| s.control.services.get(&service).map_or(0, |st| st.epoch));
        let result = if ctx.role == Role::Witness {
            // A witness never executes actions: a controller runs the hooks.
            let limit = hooks.iter().map(|h| h.timeout).sum::<Duration>() + Duration::from_secs(5);
            veto_on_controller(&ctx, &service, &from_site, &to_site, limit).await
        } else {
            let sc = StepContext {
                service: service.clone(),
                epoch,
                from_site: from_site.clone(),
                to_site: to_site.clone(),
                recovery_point: None,
                test: false,
            };
            veto_verdict(ctx.actuator.as_ref(), &hooks, &sc).await
        };
        if let Err(reason) = &result {
            warn!(service = %service, from = %from_site, to = %to_site, epoch, "failover vetoed: {reason}");
        }
        let _ = ctx.events.send(Event::VetoResult { term, service, result }).await;
    });
}

/// Asks a reachable controller (one of the site taking over first) to run the veto hooks.
async fn veto_on_controller(
    ctx: &ControlCtx,
    service: &str,
    from_site: &str,
    to_site: &str,
    limit: Duration,
) -> Result<(), String> {
    let members: Vec<(NodeId, Member)> = {
        let metrics = ctx.node.raft.metrics();
        let m = metrics.borrow();
        m.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
    };
    let recent =
        |id: &NodeId| ctx.node.contacts.since(*id).is_some_and(|d| d < Duration::from_secs(3));
    let controllers = members.iter().filter(|(id, m)| m.role == Role::Controller && recent(id));
    let mut ordered: Vec<&(NodeId, Member)> = controllers.collect();
    ordered.sort_by_key(|(id, m)| (m.site != to_site, *id));
    let Some((id, member)) = ordered.first() else {
        return Err("no controller node is reachable to run the veto hooks".to_string());
    };
    let mut client = ctx.peers.control(*id, member)?;
    let req = pb::RunVetoRequest {
        service: service.to_string(),
        from_site: from_site.to_string(),
        to_site: to_site.to_string(),
    };
    match tokio::time::timeout(limit, client.run_veto(req)).await {
        Ok(Ok(r)) if r.get_ref().allowed => Ok(()),
        Ok(Ok(r)) => Err(format!("{} (on {})", r.into_inner().reason, member.name)),
        Ok(Err(status)) => {
            Err(format!("{} could not run the veto hooks: {}", member.name, status.message()))
        }
        Err(_) => Err(format!("no veto verdict from {} within {}s", member.name, limit.as_secs())),
    }
}

/// Runs `hooks` in order as exec steps, stopping at the first that does not succeed: `Ok` when
/// every one exited 0, else why the failover is vetoed (a hook that timed out vetoes it too).
async fn veto_verdict(
    actuator: &dyn Actuator,
    hooks: &[VetoHook],
    sc: &StepContext,
) -> Result<(), String> {
    for (i, hook) in hooks.iter().enumerate() {
        let step = hook.step();
        let program = hook.command.first().map_or("", String::as_str);
        let which = format!("veto hook {} of {} ({program})", i + 1, hooks.len());
        // The actuator bounds the run by the hook's timeout; the margin only guards against
        // one that does not.
        let limit = hook.timeout + Duration::from_secs(1);
        let why = match tokio::time::timeout(limit, actuator.run(&step, sc)).await {
            Ok(Ok(out)) => {
                info!(service = %sc.service, epoch = sc.epoch, "{which} allows the failover: {}", out.detail);
                continue;
            }
            Ok(Err(StepError::Timeout { after, .. })) => timed_out(&which, after),
            Err(_) => timed_out(&which, hook.timeout),
            Ok(Err(StepError::Failed { reason, .. })) => format!("{which} said no: {reason}"),
            Ok(Err(other)) => format!("{which} could not run: {other}"),
        };
        return Err(why);
    }
    Ok(())
}

fn timed_out(which: &str, after: Duration) -> String {
    format!(
        "{which} did not finish within {}; a hook that times out counts as a veto",
        humantime::format_duration(after)
    )
}

fn context_of(d: &StepDispatch) -> StepContext {
    StepContext {
        service: d.service.clone(),
        epoch: d.epoch,
        from_site: d.from_site.clone(),
        to_site: d.to_site.clone(),
        recovery_point: None,
        test: false,
    }
}

async fn run_local(ctx: &ControlCtx, step: &Step, sc: &StepContext) -> Result<String, String> {
    match ctx.actuator.run(step, sc).await {
        Ok(out) => Ok(out.detail),
        Err(e) => {
            let tail = e.output_tail().lines().last().unwrap_or("").to_string();
            if tail.is_empty() {
                Err(e.to_string())
            } else {
                Err(format!("{e} (last output: {tail})"))
            }
        }
    }
}

async fn run_remote(
    ctx: &ControlCtx,
    id: NodeId,
    member: &Member,
    d: &StepDispatch,
    limit: Duration,
) -> Result<String, String> {
    let mut client = ctx.peers.control(id, member)?;
    let req = pb::RunStepRequest {
        service: d.service.clone(),
        workflow_id: d.workflow_id,
        step: d.step as u64,
        attempt: d.attempt,
        epoch: d.epoch,
        from_site: d.from_site.clone(),
        to_site: d.to_site.clone(),
    };
    match tokio::time::timeout(limit, client.run_step(req)).await {
        Err(_) => Err(format!("no answer from {} within {}s", member.name, limit.as_secs())),
        Ok(Err(status)) => {
            Err(format!("{} could not run the step: {}", member.name, status.message()))
        }
        Ok(Ok(reply)) => {
            let r = reply.into_inner();
            if r.ok {
                Ok(format!("{} on {}", r.detail, member.name))
            } else {
                Err(format!("{} on {}", r.detail, member.name))
            }
        }
    }
}

/// Per service: this node's view of its site's lease.
struct Holding {
    epoch: u64,
    lease: HolderLease,
    params: LeaseParams,
    started: MonoTime,
    last_sent: Option<MonoTime>,
}

/// Keeps the lease of this node's site while it is active, and self-fences when it cannot.
async fn lease_loop(ctx: ControlCtx, mut stop: watch::Receiver<bool>) {
    let mut holdings: BTreeMap<String, Holding> = BTreeMap::new();
    let (tx, mut rx) = mpsc::channel::<(String, u64, MonoTime, Renewal)>(64);
    let mut tick = tokio::time::interval(LEASE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((service, epoch, sent_at, renewal)) = rx.recv() => {
                if let Some(h) = holdings.get_mut(&service).filter(|h| h.epoch == epoch) {
                    match renewal {
                        Renewal::Granted => {
                            h.lease.on_renew_confirmed(sent_at);
                        }
                        // The leader read the committed state and says this site does not
                        // hold the lease: stop serving now (DESIGN.md 6).
                        Renewal::Refused(why) => {
                            spawn_self_fence(&ctx, &service, epoch, format!("the cluster refused the lease renewal: {why}"));
                        }
                        Renewal::Unknown => {}
                    }
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = ctx.clock.now();
        // Per service: the lease terms in force and the epoch of this site's lease, if it
        // holds one (read in place: this runs every LEASE_TICK on every node).
        let leases = ctx.node.state.read(|s| {
            let spec = &s.control.spec.as_ref()?.spec;
            let leases: Vec<(String, LeaseTerms, Option<u64>)> = s
                .control
                .services
                .iter()
                .filter_map(|(service, state)| {
                    let policy = spec.policy_for(service)?;
                    // A holder keeps to the terms its lease was granted under (the leader
                    // waits by at least those), whatever the spec says now.
                    let terms =
                        state.lease.as_ref().map(|l| l.terms).filter(|t| t.lease_ttl_ms > 0);
                    let terms = terms.unwrap_or_else(|| LeaseTerms::of(&policy));
                    let ours = state.lease.as_ref().filter(|l| l.site == ctx.site).map(|l| l.epoch);
                    Some((service.clone(), terms, ours))
                })
                .collect();
            Some(leases)
        });
        let Some(leases) = leases else { continue };
        let mut believed = BTreeMap::new();
        for (service, terms, ours) in &leases {
            let (params, ours) = (LeaseParams::from(*terms), *ours);
            let already_fenced =
                ctx.node.fenced.lock().map(|f| f.get(service).copied()).unwrap_or(None);
            match ours {
                Some(epoch) => {
                    let h = holdings.entry(service.clone()).or_insert_with(|| Holding {
                        epoch,
                        lease: HolderLease::new(&params),
                        params,
                        started: now,
                        last_sent: None,
                    });
                    if h.epoch != epoch {
                        *h = Holding {
                            epoch,
                            lease: HolderLease::new(&params),
                            params,
                            started: now,
                            last_sent: None,
                        };
                    }
                    if already_fenced == Some(epoch) {
                        continue;
                    }
                    let renew_every = params.lease_ttl / 3;
                    if h.last_sent.is_none_or(|t| now.saturating_duration_since(t) >= renew_every) {
                        h.last_sent = Some(now);
                        h.lease.on_renew_sent(now);
                        tokio::spawn(renew(ctx.clone(), service.clone(), epoch, now, tx.clone()));
                    }
                    // Checked one tick early, so the loop's period never makes a node fence late.
                    let soon = now.saturating_add(LEASE_TICK);
                    let expired = match h.lease.expiry() {
                        Some(_) => h.lease.expired(soon),
                        None => soon.saturating_duration_since(h.started) >= h.params.lease_ttl,
                    };
                    if expired {
                        let why = "the lease could not be renewed for lease_ttl".to_string();
                        spawn_self_fence(&ctx, service, epoch, why);
                    } else if h.lease.expiry().is_some() {
                        // Only a renewal the cluster confirmed makes the site believe it holds
                        // the lease: a node restarted on stale state must not serve on it.
                        believed.insert(service.clone(), epoch);
                    }
                }
                None => {
                    // This site held it (renewed or not) and the cluster took it away: stop
                    // serving at once.
                    if let Some(h) = holdings.remove(service) {
                        if already_fenced != Some(h.epoch) {
                            let why = "the cluster revoked this site's lease".to_string();
                            spawn_self_fence(&ctx, service, h.epoch, why);
                        }
                    }
                }
            }
        }
        if let Ok(mut leases) = ctx.node.leases.lock() {
            *leases = believed;
        }
    }
}

/// Asks the leader (or this node, when leading) to confirm the lease.
async fn renew(
    ctx: ControlCtx,
    service: String,
    epoch: u64,
    sent_at: MonoTime,
    tx: mpsc::Sender<(String, u64, MonoTime, Renewal)>,
) {
    let req = pb::RenewLeaseRequest {
        node_id: ctx.node.id,
        service: service.clone(),
        site: ctx.site.clone(),
        epoch,
        relayed: false,
    };
    let mut renewal = match leader_of(&ctx.node) {
        Some((leader, _)) if leader == ctx.node.id => {
            match confirm_lease(&ctx.node, ctx.node.id, &service, &ctx.site, epoch).await {
                Ok(()) => Renewal::Granted,
                Err(Refusal::NotHeld(why)) => Renewal::Refused(why),
                Err(Refusal::NotConfirmed(_)) => Renewal::Unknown,
            }
        }
        Some((leader, Some(member))) => ask_renewal(&ctx, leader, &member, req.clone()).await,
        _ => Renewal::Unknown,
    };
    // The leader did not answer: this node may be cut from it (a witness leading, unreachable
    // from this site only) while other members still reach it. Ask them to pass the renewal
    // on. The lease still counts from `sent_at`, so the extra hop only makes it shorter.
    if matches!(renewal, Renewal::Unknown) {
        let leader = leader_of(&ctx.node).map(|(id, _)| id);
        let members: Vec<(NodeId, Member)> = {
            let metrics = ctx.node.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().nodes().map(|(i, n)| (*i, n.clone())).collect()
        };
        // Members of other sites first: this site's peers are likely behind the same cut.
        let mut relays: Vec<(NodeId, Member)> = members
            .into_iter()
            .filter(|(id, _)| *id != ctx.node.id && Some(*id) != leader)
            .collect();
        relays.sort_by_key(|(id, m)| (m.site == ctx.site, *id));
        for (id, member) in relays.into_iter().take(RELAYS_TRIED) {
            renewal = ask_renewal(&ctx, id, &member, req.clone()).await;
            if !matches!(renewal, Renewal::Unknown) {
                break;
            }
        }
    }
    let _ = tx.send((service, epoch, sent_at, renewal)).await;
}

/// Sends a renewal to `member` (the leader, or a member relaying to it).
async fn ask_renewal(
    ctx: &ControlCtx,
    id: NodeId,
    member: &Member,
    req: pb::RenewLeaseRequest,
) -> Renewal {
    let Ok(mut client) = ctx.peers.control(id, member) else { return Renewal::Unknown };
    // A relay needs time for its own hop to the leader.
    let limit = if req.relayed { RPC_TIMEOUT } else { RPC_TIMEOUT * 2 };
    match tokio::time::timeout(limit, client.renew_lease(req)).await {
        Ok(Ok(r)) if r.get_ref().granted => Renewal::Granted,
        Ok(Ok(r)) if r.get_ref().held_elsewhere => Renewal::Refused(r.into_inner().reason),
        _ => Renewal::Unknown,
    }
}

/// What the leader answered to a lease renewal.
enum Renewal {
    Granted,
    /// The committed state says this site does not hold the lease at that epoch.
    Refused(String),
    /// No answer, no leader, or the leader could not confirm its leadership.
    Unknown,
}

/// Why the leader did not confirm a lease.
enum Refusal {
    /// Authoritative: the linearizable read says the lease is not the requester's.
    NotHeld(String),
    /// The read could not be confirmed (no quorum, leadership lost).
    NotConfirmed(String),
}

/// On the leader: a linearizable read, then the lease check.
async fn confirm_lease(
    node: &NodeHandle,
    requester: NodeId,
    service: &str,
    site: &str,
    epoch: u64,
) -> Result<(), Refusal> {
    match tokio::time::timeout(RPC_TIMEOUT, node.raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(Refusal::NotConfirmed(format!("not confirmed: {e}"))),
        Err(_) => return Err(Refusal::NotConfirmed("not confirmed in time".into())),
    }
    let member_site = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&requester)
        .map(|m| m.site.clone());
    if member_site.as_deref() != Some(site) {
        return Err(Refusal::NotHeld(format!("node {requester} is not a member of site {site}")));
    }
    let holds = node.state.read(|s| {
        s.control
            .services
            .get(service)
            .and_then(|st| st.lease.clone())
            .is_some_and(|l| l.site == site && l.epoch == epoch)
    });
    if holds {
        Ok(())
    } else {
        Err(Refusal::NotHeld(format!(
            "site {site} does not hold the lease of {service} at epoch {epoch}"
        )))
    }
}

/// Starts this site's on_lease_lost runbook in its own task (once per service and epoch), so
/// one service's self-fencing never delays another's.
fn spawn_self_fence(ctx: &ControlCtx, service: &str, epoch: u64, why: String) {
    if let Ok(mut f) = ctx.node.fenced.lock() {
        if f.get(service) == Some(&epoch) {
            return;
        }
        f.insert(service.to_string(), epoch);
    }
    if let Ok(mut leases) = ctx.node.leases.lock() {
        leases.remove(service);
    }
    let spec = ctx.node.state.read(|s| s.control.spec.as_ref().map(|v| v.spec.clone()));
    let Some(spec) = spec else { return };
    let (ctx, service) = (ctx.clone(), service.to_string());
    tokio::spawn(async move { self_fence(&ctx, &spec, &service, epoch, &why).await });
}

/// Runs this site's on_lease_lost runbook locally: every step in order, each with its
/// retries and backoff (the spec makes sure all of it fits in self_fence_grace).
async fn self_fence(ctx: &ControlCtx, spec: &ClusterSpec, service: &str, epoch: u64, why: &str) {
    error!(service, epoch, site = %ctx.site, "SELF-FENCING: {why}; running on_lease_lost");
    let steps = spec
        .service(service)
        .map(|s| s.runbook(&ctx.site, Phase::OnLeaseLost).to_vec())
        .unwrap_or_default();
    let sc = StepContext {
        service: service.to_string(),
        epoch,
        from_site: ctx.site.clone(),
        to_site: String::new(),
        recovery_point: None,
        test: false,
    };
    for (i, step) in steps.iter().enumerate() {
        for attempt in 1..=step.retries + 1 {
            match run_local(ctx, step, &sc).await {
                Ok(d) => {
                    info!(service, step = i + 1, attempt, "on_lease_lost step done: {d}");
                    break;
                }
                Err(e) if attempt <= step.retries => {
                    warn!(service, step = i + 1, attempt, "on_lease_lost step failed, retrying: {e}");
                    tokio::time::sleep(step.backoff).await;
                }
                Err(e) => error!(
                    service,
                    step = i + 1,
                    attempt,
                    "on_lease_lost step failed for good: {e}; this site may still be serving: stop it by hand"
                ),
            }
        }
    }
}

/// The internal gRPC service members use to work together.
pub struct ControlService {
    ctx: ControlCtx,
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn report_probes(
        &self,
        req: Request<pb::ProbeReports>,
    ) -> Result<Response<pb::ProbeAck>, Status> {
        let is_leader = self.ctx.node.raft.metrics().borrow().state == ServerState::Leader;
        if !is_leader {
            return Ok(Response::new(pb::ProbeAck { accepted: false }));
        }
        let r = req.into_inner();
        let accepted = self
            .ctx
            .events
            .try_send(Event::Reports {
                observer: r.observer,
                reports: r.reports,
                received: Instant::now(),
            })
            .is_ok();
        Ok(Response::new(pb::ProbeAck { accepted }))
    }

    async fn renew_lease(
        &self,
        req: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseReply>, Status> {
        let r = req.into_inner();
        let leader = leader_of(&self.ctx.node);
        if let Some((id, Some(member))) = leader.filter(|(id, _)| *id != self.ctx.node.id) {
            if r.relayed {
                let reason = "not the leader; a relayed renewal is not passed on again".into();
                return Ok(Response::new(pb::RenewLeaseReply {
                    granted: false,
                    reason,
                    held_elsewhere: false,
                }));
            }
            // The holder could not reach the leader: pass its renewal on, once.
            let relayed = pb::RenewLeaseRequest { relayed: true, ..r };
            let reply = match ask_renewal(&self.ctx, id, &member, relayed).await {
                Renewal::Granted => pb::RenewLeaseReply {
                    granted: true,
                    reason: String::new(),
                    held_elsewhere: false,
                },
                Renewal::Refused(reason) => {
                    pb::RenewLeaseReply { granted: false, reason, held_elsewhere: true }
                }
                Renewal::Unknown => pb::RenewLeaseReply {
                    granted: false,
                    reason: format!(
                        "the leader {} did not answer the relayed renewal",
                        member.name
                    ),
                    held_elsewhere: false,
                },
            };
            return Ok(Response::new(reply));
        }
        let reply = match confirm_lease(&self.ctx.node, r.node_id, &r.service, &r.site, r.epoch)
            .await
        {
            Ok(()) => {
                pb::RenewLeaseReply { granted: true, reason: String::new(), held_elsewhere: false }
            }
            Err(Refusal::NotHeld(reason)) => {
                pb::RenewLeaseReply { granted: false, reason, held_elsewhere: true }
            }
            Err(Refusal::NotConfirmed(reason)) => {
                pb::RenewLeaseReply { granted: false, reason, held_elsewhere: false }
            }
        };
        Ok(Response::new(reply))
    }

    async fn run_veto(
        &self,
        req: Request<pb::RunVetoRequest>,
    ) -> Result<Response<pb::RunVetoReply>, Status> {
        let r = req.into_inner();
        if self.ctx.role != Role::Controller {
            return Err(Status::failed_precondition("a witness never runs veto hooks"));
        }
        // The hooks come from this node's own copy of the spec, never from the request.
        let (hooks, epoch) = self.ctx.node.state.read(|s| {
            let hooks = s
                .control
                .spec
                .as_ref()
                .and_then(|v| v.spec.service(&r.service))
                .map(|svc| svc.veto.clone());
            (hooks, s.control.services.get(&r.service).map_or(0, |st| st.epoch))
        });
        let Some(hooks) = hooks else {
            return Err(Status::not_found(format!("no service {} in this node's spec", r.service)));
        };
        let sc = StepContext {
            service: r.service.clone(),
            epoch,
            from_site: r.from_site,
            to_site: r.to_site,
            recovery_point: None,
            test: false,
        };
        let reply = match veto_verdict(self.ctx.actuator.as_ref(), &hooks, &sc).await {
            Ok(()) => pb::RunVetoReply { allowed: true, reason: String::new() },
            Err(reason) => pb::RunVetoReply { allowed: false, reason },
        };
        Ok(Response::new(reply))
    }

    async fn fence_status(
        &self,
        req: Request<pb::FenceStatusRequest>,
    ) -> Result<Response<pb::FenceStatusReply>, Status> {
        let r = req.into_inner();
        let ctx = &self.ctx;
        let tester = super::fence_test::FenceTester::new(
            ctx.node.clone(),
            ctx.role,
            ctx.actuator.clone(),
            ctx.peers.clone(),
        );
        // The step comes from this node's own copy of the spec, never from the request.
        let result = tester
            .status_here(r.spec_version, &r.service, &r.site, &r.phase, r.step as usize)
            .await;
        let reply = match result {
            Ok(power) => pb::FenceStatusReply {
                ok: true,
                power: power.to_string(),
                detail: format!("target {power}"),
            },
            Err(detail) => pb::FenceStatusReply { ok: false, power: String::new(), detail },
        };
        Ok(Response::new(reply))
    }

    async fn run_step(
        &self,
        req: Request<pb::RunStepRequest>,
    ) -> Result<Response<pb::RunStepReply>, Status> {
        let r = req.into_inner();
        if self.ctx.role != Role::Controller {
            return Err(Status::failed_precondition("a witness never runs workflow steps"));
        }
        // The executor checks the step against its own replicated state: same epoch (the
        // fencing token), same workflow, and that very step started with that attempt. It
        // runs the step as committed there, never what the request carries. It waits briefly
        // for its state to catch up with the leader's.
        let deadline = Instant::now() + EPOCH_CATCH_UP;
        let step = loop {
            let seen = self.ctx.node.state.read(|s| {
                let st = s.control.services.get(&r.service)?;
                let wf = st.workflow.as_ref().filter(|w| w.id == r.workflow_id);
                let step = wf.and_then(|w| w.steps.get(r.step as usize));
                Some((st.epoch, step.map(|x| (x.status.clone(), x.action.clone()))))
            });
            let verdict = match seen {
                Some((epoch, _)) if epoch > r.epoch => Err(format!(
                    "refused: step of epoch {} but {} is at epoch {epoch} here; a newer failover superseded it",
                    r.epoch, r.service
                )),
                Some((epoch, Some((StepStatus::Running { attempt, .. }, Some(action)))))
                    if epoch == r.epoch && attempt == r.attempt =>
                {
                    Ok(action)
                }
                other => {
                    if Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(match other {
                        None => format!("refused: no service {} here", r.service),
                        Some((epoch, _)) if epoch < r.epoch => format!(
                            "refused: this node has not caught up to epoch {} of {} (it is at {epoch}); try another node",
                            r.epoch, r.service
                        ),
                        _ => format!(
                            "refused: step {} attempt {} of workflow {} is not running in this node's state",
                            r.step + 1,
                            r.attempt,
                            r.workflow_id
                        ),
                    })
                }
            };
            match verdict {
                Ok(step) => break step,
                Err(detail) => {
                    warn!(service = %r.service, "{detail}");
                    return Ok(Response::new(pb::RunStepReply {
                        ok: false,
                        detail,
                        output_tail: String::new(),
                    }));
                }
            }
        };
        let sc = StepContext {
            service: r.service.clone(),
            epoch: r.epoch,
            from_site: r.from_site,
            to_site: r.to_site,
            recovery_point: None,
            test: false,
        };
        info!(service = %r.service, epoch = r.epoch, step = r.step + 1, attempt = r.attempt, kind = step.action.kind(), "running step for the leader");
        let reply = match self.ctx.actuator.run(&step, &sc).await {
            Ok(out) => {
                pb::RunStepReply { ok: true, detail: out.detail, output_tail: out.output_tail }
            }
            Err(e) => pb::RunStepReply {
                ok: false,
                detail: e.to_string(),
                output_tail: e.output_tail().to_string(),
            },
        };
        Ok(Response::new(reply))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::actuate::RealActuator;

    fn hook(script: &str, timeout: Duration) -> VetoHook {
        VetoHook {
            command: vec!["sh".into(), "-c".into(), script.into()],
            timeout,
            env: BTreeMap::from([("WHO".to_string(), "{service} to {to_site}".to_string())]),
        }
    }

    fn context() -> StepContext {
        StepContext {
            service: "file-transfer".into(),
            epoch: 7,
            from_site: "prod".into(),
            to_site: "dr".into(),
            recovery_point: None,
            test: false,
        }
    }

    #[tokio::test]
    async fn veto_hooks_run_in_order_with_the_failover_env_until_one_says_no() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("trace");
        let t = trace.display();
        let second = Duration::from_secs(5);
        let passing = [
            hook(&format!("echo \"1 $DROVER_EPOCH $DROVER_FROM_SITE $WHO\" >> {t}"), second),
            hook(&format!("echo 2 >> {t}"), second),
        ];
        let actuator = RealActuator::new();
        assert_eq!(veto_verdict(&actuator, &passing, &context()).await, Ok(()));
        assert_eq!(std::fs::read_to_string(&trace).unwrap(), "1 7 prod file-transfer to dr\n2\n");

        std::fs::remove_file(&trace).unwrap();
        let vetoing = [
            hook(&format!("echo 1 >> {t}"), second),
            hook(&format!("echo 2 >> {t}; echo change freeze >&2; exit 3"), second),
            hook(&format!("echo 3 >> {t}"), second),
        ];
        let err = veto_verdict(&actuator, &vetoing, &context()).await.unwrap_err();
        assert!(err.starts_with("veto hook 2 of 3 (sh) said no: exec sh: exit"), "{err}");
        assert!(err.ends_with("change freeze"), "{err}");
        assert_eq!(std::fs::read_to_string(&trace).unwrap(), "1\n2\n", "stops at the veto");
    }

    #[tokio::test]
    async fn a_veto_hook_that_times_out_vetoes() {
        let hooks = [hook("sleep 10", Duration::from_millis(200))];
        let started = Instant::now();
        let err = veto_verdict(&RealActuator::new(), &hooks, &context()).await.unwrap_err();
        assert_eq!(
            err,
            "veto hook 1 of 1 (sh) did not finish within 200ms; a hook that times out counts as \
             a veto"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
}
