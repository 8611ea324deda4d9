//! The leader's loop: one `Engine` per leadership term, fed with reports, step results and
//! veto verdicts, ticking every `TICK`; its commands are carried out here (proposals through
//! Raft, steps on the local actuator or an executor of the step's site, veto hooks).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use drover_proto::v1 as pb;
use openraft::ServerState;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::executor::{reconcile_for_leader, run_local, RunningGuard, REFUSED};
use super::report::parse_verdict;
use super::{unix_now_ms, ControlCtx, Event, REPORT_EVERY, TICK};

/// An observer that reported directly this recently is not spoken for by relays.
const DIRECT_FRESH: Duration = Duration::from_millis(REPORT_EVERY.as_millis() as u64 * 3);
use crate::actuate::{Actuator, StepContext, StepError};
use crate::consensus::state::control::ControlRequest;
use crate::consensus::types::{Member, NodeId, Request as RaftRequest, Role};
use crate::decide::{
    CheckDispatch, CheckOutcome, Command, Engine, EngineParams, MonoTime, Observation,
    ReconcileCommand, ReconcileParams, Reconciler, StepDispatch,
};
use crate::spec::VetoHook;

/// The leader's loop: one Engine per leadership term.
pub(super) async fn controller_loop(
    ctx: ControlCtx,
    mut events: mpsc::Receiver<Event>,
    mut stop: watch::Receiver<bool>,
) {
    let mut engine: Option<Engine> = None;
    // The drift reconciler, created and dropped with the engine.
    let mut reconciler: Option<Reconciler> = None;
    // When each observer last reported to this leader directly.
    let mut direct: BTreeMap<NodeId, Instant> = BTreeMap::new();
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
        let standing_back = ctx.node.standing_back.load(std::sync::atomic::Ordering::Relaxed);
        if state != ServerState::Leader || standing_back {
            reconciler = None;
            if engine.take().is_some() {
                info!("no longer the leader: failover decisions stop here");
                if let Ok(mut h) = ctx.node.health.write() {
                    h.clear();
                }
                if let Ok(mut g) = ctx.node.gates.write() {
                    g.clear();
                }
                if let Ok(mut r) = ctx.node.readiness.write() {
                    r.clear();
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
        let rec = reconciler
            .get_or_insert_with(|| Reconciler::new(ReconcileParams::new(ctx.node.name.clone())));
        match event {
            Some(Event::Reports { observer, reports, fenced, received, relayed }) => {
                // A relay cannot prove whose observation it carries: take relayed reports only
                // for an observer the leader does not hear from itself, so a member can never
                // speak for observers that reach the leader (a forged quorum).
                if !relayed {
                    direct.insert(observer, received);
                } else if direct
                    .get(&observer)
                    .is_some_and(|t| received.saturating_duration_since(*t) < DIRECT_FRESH)
                {
                    continue;
                }
                for f in fenced {
                    eng.fenced_report(observer, &f.service, f.epoch, ctx.clock.at(received));
                }
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
                    let taken = |age_ms: u64| {
                        ctx.clock.at(received
                            .checked_sub(Duration::from_millis(age_ms))
                            .unwrap_or(received))
                    };
                    for f in &r.fingerprints {
                        let value = if f.error.is_empty() {
                            Ok(f.value.clone())
                        } else {
                            Err(f.error.clone())
                        };
                        eng.fingerprint_report(
                            observer,
                            &r.service,
                            &r.site,
                            &f.check,
                            value,
                            taken(f.age_ms),
                        );
                    }
                    for p in &r.passive {
                        eng.passive_report(
                            observer,
                            &r.service,
                            &p.check,
                            parse_verdict(&p.verdict),
                            p.detail.clone(),
                            taken(p.age_ms),
                        );
                    }
                }
                continue;
            }
            Some(Event::StepResult {
                service,
                workflow_id,
                step,
                attempt,
                result,
                not_run,
                refused,
            }) => match result {
                Err(why) if not_run => eng.step_not_run(&service, workflow_id, step, attempt, why),
                Err(why) if refused => eng.step_refused(&service, workflow_id, step, attempt, why),
                result => eng.step_result(&service, workflow_id, step, attempt, result),
            },
            Some(Event::ProposalDone { term: asked_by, service }) if asked_by == term => {
                eng.proposal_done(&service)
            }
            Some(Event::ProposalDone { .. }) => {}
            Some(Event::VetoResult { term: asked_by, service, result }) if asked_by == term => {
                eng.veto_result(&service, result);
            }
            Some(Event::CheckResult { term: asked_by, service, workflow_id, step, outcome })
                if asked_by == term =>
            {
                rec.check_result(&service, workflow_id, step, outcome, ctx.clock.at(now));
            }
            Some(Event::DriftProposalDone { term: asked_by, service }) if asked_by == term => {
                rec.proposal_done(&service)
            }
            // A veto run, check or proposal asked for by an earlier term: its engine is gone.
            Some(
                Event::VetoResult { .. }
                | Event::CheckResult { .. }
                | Event::DriftProposalDone { .. },
            )
            | None => {}
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
            publish_gates(&ctx, eng, &obs);
            (commands, rec.tick(&obs))
        });
        let (commands, checks) = commands;
        for cmd in commands {
            match cmd {
                Command::Propose(req) => propose(&ctx, term, req, false),
                Command::RunStep(d) => dispatch(&ctx, *d, &members),
                Command::RunVeto { service, from_site, to_site, hooks, .. } => {
                    run_veto(&ctx, term, service, from_site, to_site, hooks)
                }
                Command::Alert { service, message } => warn!(service = %service, "{message}"),
            }
        }
        for cmd in checks {
            match cmd {
                ReconcileCommand::Check(d) => reconcile(&ctx, term, d, &members),
                ReconcileCommand::Propose(req) => propose(&ctx, term, req, true),
                ReconcileCommand::Alert { service, message } => {
                    warn!(service = %service, "{message}")
                }
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

/// The gates of a failover of every service to each of its other sites, and the readiness
/// verdict of every standby, for the admin API, status and metrics.
fn publish_gates(ctx: &ControlCtx, eng: &Engine, obs: &Observation) {
    let mut gates = BTreeMap::new();
    let mut readiness = BTreeMap::new();
    for name in obs.control.services.keys() {
        let standbys = eng.standby_readiness(obs, name);
        let sites = standbys
            .iter()
            .map(|v| {
                let verdict = match v.blocker() {
                    Some(r) => Err(r.text.clone()),
                    None => Ok(()),
                };
                (v.site.clone(), verdict)
            })
            .collect();
        gates.insert(name.clone(), sites);
        readiness.insert(name.clone(), standbys);
    }
    if let Ok(mut g) = ctx.node.gates.write() {
        *g = gates;
    }
    if let Ok(mut r) = ctx.node.readiness.write() {
        *r = readiness;
    }
}

/// Proposes `req`; once applied or refused, tells the engine (or, with `for_reconciler`, the
/// drift reconciler) of term `term`.
fn propose(ctx: &ControlCtx, term: u64, req: ControlRequest, for_reconciler: bool) {
    let raft = ctx.node.raft.clone();
    let events = ctx.events.clone();
    let service = req.service().unwrap_or_default().to_string();
    tokio::spawn(async move {
        if let ControlRequest::StartFailover { from, to, reason, .. } = &req {
            warn!(service = %service, from = %from, to = %to, "starting automatic failover: {reason}");
        }
        if let ControlRequest::StartReactivation { site, reason, .. } = &req {
            warn!(service = %service, site = %site, "reactivating the active site: {reason}");
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
        let done = if for_reconciler {
            Event::DriftProposalDone { term, service }
        } else {
            Event::ProposalDone { term, service }
        };
        let _ = events.send(done).await;
    });
}

fn dispatch(ctx: &ControlCtx, d: StepDispatch, members: &BTreeMap<NodeId, Member>) {
    let ctx = ctx.clone();
    let executor = d.executor.map(|id| (id, members.get(&id).cloned()));
    tokio::spawn(async move {
        let limit = d.action.timeout + Duration::from_secs(5);
        let (result, not_run) = match executor {
            Some((id, Some(member))) if id != ctx.node.id => {
                match run_remote(&ctx, id, &member, &d, limit).await {
                    Remote::Ran(result) => (result, false),
                    Remote::NotRun(why) => (Err((why, false)), true),
                }
            }
            // Never run a site-bound step elsewhere because its executor left the cluster.
            Some((id, None)) => {
                (Err((format!("executor node {id} is no longer a member"), false)), true)
            }
            _ => {
                // Registered like a step run for a remote leader, so that no request can start
                // a second copy of it on this node while it runs.
                let key = (d.service.clone(), d.workflow_id, d.step as u64, d.attempt);
                match RunningGuard::claim(&ctx, key) {
                    Some(_running) => (run_local(&ctx, &d.action, &context_of(&d)).await, false),
                    None => {
                        let why = "the same step attempt is already running on this node";
                        (Err((why.to_string(), false)), false)
                    }
                }
            }
        };
        match &result {
            Ok(detail) => {
                info!(service = %d.service, step = d.step + 1, attempt = d.attempt, epoch = d.epoch, "step done: {detail}")
            }
            Err((e, _)) => {
                warn!(service = %d.service, step = d.step + 1, attempt = d.attempt, epoch = d.epoch, "step failed: {e}")
            }
        }
        let (result, refused) = match result {
            Ok(detail) => (Ok(detail), false),
            Err((why, refused)) => (Err(why), refused),
        };
        let _ = ctx
            .events
            .send(Event::StepResult {
                service: d.service,
                workflow_id: d.workflow_id,
                step: d.step,
                attempt: d.attempt,
                result,
                not_run,
                refused,
            })
            .await;
    });
}

/// Carries out a drift check (or repair) on its executor, through the same checks against the
/// executor's own state whether it is this node or another, and reports what it found.
fn reconcile(ctx: &ControlCtx, term: u64, d: CheckDispatch, members: &BTreeMap<NodeId, Member>) {
    let ctx = ctx.clone();
    let executor = d.executor.map(|id| (id, members.get(&id).cloned()));
    tokio::spawn(async move {
        let req = pb::ReconcileStepRequest {
            service: d.service.clone(),
            workflow_id: d.workflow_id,
            step: d.step as u64,
            epoch: d.epoch,
            repair: d.repair,
        };
        let runs = if d.repair { 2 } else { 1 };
        let limit = d.action.timeout * runs + Duration::from_secs(5);
        let outcome = match executor {
            Some((id, Some(member))) if id != ctx.node.id => match ctx.peers.control(id, &member) {
                Err(why) => CheckOutcome::NotRun(why),
                Ok(mut client) => {
                    match tokio::time::timeout(limit, client.reconcile_step(req)).await {
                        Err(_) => CheckOutcome::NotRun(format!(
                            "no answer from {} within {}s",
                            member.name,
                            limit.as_secs()
                        )),
                        Ok(Err(status)) => CheckOutcome::NotRun(format!(
                            "{} could not check the step: {}",
                            member.name,
                            crate::consensus::network::describe_status(&status)
                        )),
                        Ok(Ok(reply)) => outcome_of(reply.into_inner(), &member.name),
                    }
                }
            },
            Some((id, None)) => CheckOutcome::NotRun(format!("node {id} is no longer a member")),
            _ => outcome_of(reconcile_for_leader(&ctx, req).await, &ctx.node.name),
        };
        match &outcome {
            CheckOutcome::Holds(detail) => {
                debug!(service = %d.service, step = d.step + 1, "no drift: {detail}")
            }
            CheckOutcome::NotRun(why) => {
                debug!(service = %d.service, step = d.step + 1, "drift check not run: {why}")
            }
            other => {
                warn!(service = %d.service, step = d.step + 1, epoch = d.epoch, "drift: {other:?}")
            }
        }
        let _ = ctx
            .events
            .send(Event::CheckResult {
                term,
                service: d.service,
                workflow_id: d.workflow_id,
                step: d.step,
                outcome,
            })
            .await;
    });
}

/// What an executor's answer to a drift check means, `on` naming the executor.
fn outcome_of(r: pb::ReconcileStepReply, on: &str) -> CheckOutcome {
    match r.outcome.as_str() {
        "holds" => CheckOutcome::Holds(format!("{} (on {on})", r.detail)),
        "drifted" => CheckOutcome::Drifted(format!("{} (on {on})", r.detail)),
        "repaired" => CheckOutcome::Repaired(format!(
            "{} (on {on}); it had drifted: {}",
            r.repair_detail, r.detail
        )),
        "repair_failed" => CheckOutcome::RepairFailed(format!(
            "{} (on {on}); the drift: {}",
            r.repair_detail, r.detail
        )),
        _ => CheckOutcome::NotRun(format!("{} (on {on})", r.detail)),
    }
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
pub(super) async fn veto_verdict(
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

/// What became of a step sent to an executor.
enum Remote {
    /// The executor ran it: its result (an error says whether the world refused it).
    Ran(Result<String, (String, bool)>),
    /// The executor could not run it (unreachable, died mid-step, refused it): another may.
    NotRun(String),
}

async fn run_remote(
    ctx: &ControlCtx,
    id: NodeId,
    member: &Member,
    d: &StepDispatch,
    limit: Duration,
) -> Remote {
    let mut client = match ctx.peers.control(id, member) {
        Ok(c) => c,
        Err(why) => return Remote::NotRun(why),
    };
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
        // The step may have run this long: its outcome is unknown, and counts as a failure.
        Err(_) => Remote::Ran(Err((
            format!("no answer from {} within {}s", member.name, limit.as_secs()),
            false,
        ))),
        Ok(Err(status)) => Remote::NotRun(format!(
            "{} could not run the step: {}",
            member.name,
            crate::consensus::network::describe_status(&status)
        )),
        Ok(Ok(reply)) => {
            let r = reply.into_inner();
            if r.ok {
                Remote::Ran(Ok(format!("{} on {}", r.detail, member.name)))
            } else if r.detail.starts_with(REFUSED) {
                Remote::NotRun(format!("{} on {}", r.detail, member.name))
            } else {
                Remote::Ran(Err((format!("{} on {}", r.detail, member.name), r.refused)))
            }
        }
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
