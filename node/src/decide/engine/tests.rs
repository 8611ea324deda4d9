//! Synchronous tests of the engine against the real replicated state: every proposal is applied
//! with `ControlState::apply` (the "Raft log") before `proposal_done`, as the runtime does.

use super::*;

const SPEC: &str = include_str!("../../spec/testdata/cluster.toml");
const SVC: &str = "file-transfer";
/// prod-1, prod-2, dr-1, dr-2, witness.
const ALL: [NodeId; 5] = [1, 2, 3, 4, 5];
const WITNESS: NodeId = 5;
/// Reports every second; stale after 5s.
const ROUND_MS: u64 = 1_000;
const FENCE_ON_PROD: (&str, &str) = ("action = \"off\"", "action = \"off\"\n  run_on = \"prod\"");

fn spec_text(edits: &[(&str, &str)]) -> String {
    let mut text = SPEC.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "test spec has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

fn members() -> BTreeMap<NodeId, Member> {
    let m = |name: &str, site: &str, role| Member {
        name: name.into(),
        site: site.into(),
        role,
        address: format!("{name}:7000"),
    };
    BTreeMap::from([
        (1, m("prod-1", "prod", Role::Controller)),
        (2, m("prod-2", "prod", Role::Controller)),
        (3, m("dr-1", "dr", Role::Controller)),
        (4, m("dr-2", "dr", Role::Controller)),
        (5, m("witness", "witness", Role::Witness)),
    ])
}

fn params(leader: &str) -> EngineParams {
    EngineParams {
        detect: DetectPolicy { stale_after: Duration::from_secs(5), ..DetectPolicy::default() },
        ..EngineParams::new(leader)
    }
}

/// Safe wait of the test spec: (6s + 3s) * 1.01 / 0.99, rounded up to the nanosecond, plus the
/// millisecond for clock truncation, in ms (rounded up).
fn safe_wait_ms() -> u64 {
    let lease = LeaseParams {
        lease_ttl: Duration::from_secs(6),
        max_clock_drift: 0.01,
        self_fence_grace: Duration::from_secs(3),
    };
    let ms = lease.safe_wait().as_nanos().div_ceil(1_000_000) as u64;
    assert_eq!(ms, 9_182);
    ms
}

/// The leader's world: the replicated state (applied in log order), the engine, the clocks,
/// what each observer sees, and how executors answer.
struct Sim {
    control: ControlState,
    next_index: u64,
    engine: Engine,
    now: MonoTime,
    unix_ms: i64,
    leader: String,
    voters: BTreeSet<NodeId>,
    members: BTreeMap<NodeId, Member>,
    reachable: BTreeSet<NodeId>,
    /// (observer, site) -> verdict, reported at every tick.
    seen: BTreeMap<(NodeId, String), Verdict>,
    /// (observer, site) -> readiness verdict, reported at every tick.
    ready: BTreeMap<(NodeId, String), Verdict>,
    /// Lag reported by dr-1 with its dr report.
    lag: Option<f64>,
    /// How executors answer a dispatched step (None: never).
    answer: fn(&StepDispatch) -> Option<Result<String, String>>,
    /// How the leader's veto hooks answer (None: not within the tick).
    veto_answer: fn(&[VetoHook]) -> Option<Result<(), String>>,
    /// Every `RunVeto`: when, and the command.
    veto_runs: Vec<(MonoTime, Command)>,
    /// Every applied proposal, in order.
    log: Vec<ControlRequest>,
    /// Why proposals were refused by the state machine.
    rejected: Vec<String>,
    dispatched: Vec<StepDispatch>,
    alerts: Vec<(MonoTime, String)>,
    /// (member, epoch): members that report having self-fenced, at every tick.
    fenced: Vec<(NodeId, u64)>,
}

impl Sim {
    fn new(edits: &[(&str, &str)]) -> Sim {
        Sim::with_leader(edits, "dr-1")
    }

    fn with_leader(edits: &[(&str, &str)], leader: &str) -> Sim {
        let text = spec_text(edits);
        let spec = crate::spec::parse(&text, "test").expect("test spec is valid");
        let mut control = ControlState::default();
        let applied = control.apply(
            1,
            &ControlRequest::ApplySpec {
                expected_version: None,
                spec: Box::new(spec),
                text,
                author: "op".into(),
                at_unix_ms: 0,
            },
        );
        assert_eq!(applied.rejected, None);
        let now = MonoTime::from_ms(1_000);
        let mut seen = BTreeMap::new();
        for o in ALL {
            for site in ["prod", "dr"] {
                seen.insert((o, site.to_string()), Verdict::Healthy);
            }
        }
        Sim {
            control,
            next_index: 2,
            engine: Engine::new(params(leader), now),
            now,
            unix_ms: 1_700_000_000_000,
            leader: leader.into(),
            voters: ALL.into(),
            members: members(),
            reachable: ALL.into(),
            seen,
            ready: BTreeMap::new(),
            lag: Some(0.0),
            answer: |_| Some(Ok("done".into())),
            veto_answer: |_| Some(Ok(())),
            veto_runs: Vec::new(),
            log: Vec::new(),
            rejected: Vec::new(),
            dispatched: Vec::new(),
            alerts: Vec::new(),
            fenced: Vec::new(),
        }
    }

    fn see_ready(&mut self, observers: &[NodeId], site: &str, verdict: Verdict) {
        for &o in observers {
            self.ready.insert((o, site.to_string()), verdict);
        }
    }

    fn see(&mut self, observers: &[NodeId], site: &str, verdict: Verdict) {
        for &o in observers {
            self.seen.insert((o, site.to_string()), verdict);
        }
    }

    /// Observers report, the engine ticks, proposals are applied in order (then
    /// `proposal_done`), dispatched steps are answered.
    fn tick(&mut self) -> Vec<Command> {
        for ((o, site), &verdict) in &self.seen {
            let lag = if *o == 3 && site == "dr" { self.lag } else { None };
            self.engine.probe_report(*o, SVC, site, verdict, lag, self.now);
        }
        for ((o, site), &verdict) in &self.ready {
            self.engine.readiness_report(*o, SVC, site, verdict, self.now);
        }
        for &(member, epoch) in &self.fenced {
            self.engine.fenced_report(member, SVC, epoch, self.now);
        }
        let obs = Observation {
            now: self.now,
            now_unix_ms: self.unix_ms,
            control: &self.control,
            voters: &self.voters,
            members: &self.members,
            reachable: &self.reachable,
        };
        let commands = self.engine.tick(&obs);
        for c in &commands {
            match c {
                Command::Propose(req) => {
                    self.propose(req.clone());
                    self.engine.proposal_done(SVC);
                }
                Command::RunStep(d) => {
                    self.dispatched.push((**d).clone());
                    if let Some(result) = (self.answer)(d) {
                        self.engine.step_result(
                            &d.service,
                            d.workflow_id,
                            d.step,
                            d.attempt,
                            result,
                        );
                    }
                }
                Command::RunVeto { service, hooks, .. } => {
                    assert_eq!(service, SVC);
                    self.veto_runs.push((self.now, c.clone()));
                    if let Some(result) = (self.veto_answer)(hooks) {
                        self.engine.veto_result(SVC, result);
                    }
                }
                Command::Alert { service, message } => {
                    assert_eq!(service, SVC);
                    self.alerts.push((self.now, message.clone()));
                }
            }
        }
        commands
    }

    /// Applies `req` at the next log index.
    fn propose(&mut self, req: ControlRequest) {
        let outcome = self.control.apply(self.next_index, &req);
        self.next_index += 1;
        if let Some(why) = outcome.rejected {
            self.rejected.push(why);
        }
        self.log.push(req);
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        self.unix_ms += ms as i64;
    }

    /// Ticks every `ROUND_MS` for `ms`; returns every command.
    fn run(&mut self, ms: u64) -> Vec<Command> {
        let mut all = Vec::new();
        for _ in 0..ms / ROUND_MS {
            self.advance(ROUND_MS);
            all.extend(self.tick());
        }
        all
    }

    /// Ticks until `done` holds (at most `limit_ms`); returns the commands.
    fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Sim) -> bool) -> Vec<Command> {
        let mut all = Vec::new();
        let mut waited = 0;
        while !done(self) {
            assert!(waited < limit_ms, "not done after {limit_ms}ms; log: {:#?}", self.log);
            self.advance(ROUND_MS);
            waited += ROUND_MS;
            all.extend(self.tick());
        }
        all
    }

    fn svc(&self) -> &ServiceState {
        &self.control.services[SVC]
    }

    fn wf(&self) -> &Workflow {
        self.svc().workflow.as_ref().expect("a workflow")
    }

    /// Status of step `i` of the workflow, if there is one.
    fn status(&self, i: usize) -> Option<&StepStatus> {
        self.svc().workflow.as_ref().map(|w| &w.steps[i].status)
    }

    fn new_leader(&mut self, leader: &str) {
        self.leader = leader.into();
        self.engine = Engine::new(params(leader), self.now);
    }

    /// prod is lost (dr-1, dr-2 and the witness see it unhealthy) and the automatic failover
    /// runs to its commit.
    fn fail_over_to_dr(&mut self) {
        self.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
        self.run_until(120_000, |s| s.svc().phase == ServicePhase::FailedOver);
        assert_eq!(self.rejected, Vec::<String>::new());
        self.see(&[3, 4, WITNESS], "prod", Verdict::Healthy);
    }
}

fn proposals(commands: &[Command]) -> Vec<&ControlRequest> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Propose(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn starts(log: &[ControlRequest]) -> usize {
    log.iter().filter(|r| matches!(r, ControlRequest::StartFailover { .. })).count()
}

/// One line per proposal, to compare sequences.
fn brief(req: &ControlRequest) -> String {
    match req {
        ControlRequest::StartFailover { from, to, automatic, .. } => {
            format!("start {from}->{to} auto={automatic}")
        }
        ControlRequest::StepStarted { step, attempt, executor, .. } => {
            format!("started {step}#{attempt} on {executor:?}")
        }
        ControlRequest::StartReactivation { site, expected_epoch, .. } => {
            format!("reactivate {site} from epoch {expected_epoch}")
        }
        ControlRequest::StepFinished { step, attempt, outcome, .. } => {
            format!("finished {step}#{attempt} {}", if outcome.is_ok() { "ok" } else { "err" })
        }
        other => format!("{other:?}"),
    }
}

fn briefs(log: &[ControlRequest]) -> Vec<String> {
    log.iter().map(brief).collect()
}

fn outcome_of(log: &[ControlRequest], step_index: usize) -> Vec<Result<String, String>> {
    log.iter()
        .filter_map(|r| match r {
            ControlRequest::StepFinished { step, outcome, .. } if *step == step_index => {
                Some(outcome.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn prod_down_from_a_quorum_fails_over_once_and_the_workflow_runs_to_commit() {
    let mut sim = Sim::new(&[FENCE_ON_PROD]);
    // All healthy: nothing at all.
    assert_eq!(sim.run(20_000), vec![]);

    // dr-1, dr-2 and the witness lose prod; prod's own nodes still see it healthy.
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    let lost_at = sim.now + Duration::from_millis(ROUND_MS);
    let mut start_at = None;
    while start_at.is_none() {
        sim.advance(ROUND_MS);
        let commands = sim.tick();
        if let Some(ControlRequest::StartFailover {
            force: false,
            from,
            to,
            expected_epoch,
            automatic,
            reason,
            author,
            ..
        }) = proposals(&commands).first()
        {
            assert_eq!((from.as_str(), to.as_str()), ("prod", "dr"));
            assert_eq!((*expected_epoch, *automatic, author.as_str()), (1, true, "dr-1"));
            assert_eq!(reason, "prod unhealthy from 3 of 5 observers for 3s");
            start_at = Some(sim.now);
        }
        assert!(sim.now < lost_at + Duration::from_secs(10), "no failover");
    }
    // down_after = 3s of an unhealthy quorum, not a tick earlier.
    assert_eq!(start_at, Some(lost_at + Duration::from_secs(3)));
    assert!(sim.alerts.iter().any(|(_, m)| m.contains("prod is down for file-transfer")));

    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailedOver);
    sim.run(30_000);

    assert_eq!(sim.rejected, Vec::<String>::new(), "no proposal was refused");
    assert_eq!(starts(&sim.log), 1, "exactly one failover");
    assert_eq!(
        briefs(&sim.log),
        [
            "start prod->dr auto=true",
            // The fence agent runs on prod-1 (the leader, dr-1, is not in prod).
            "started 0#1 on Some(1)",
            "finished 0#1 ok",
            "started 1#1 on None",
            "finished 1#1 ok",
            "started 2#1 on None",
            "finished 2#1 ok",
            "started 3#1 on None",
            "finished 3#1 ok",
            "started 4#1 on None",
            "finished 4#1 ok",
            "started 5#1 on None",
            "finished 5#1 ok",
        ]
    );
    assert_eq!(outcome_of(&sim.log, 1), [Ok("fencing confirmed by 1 step".to_string())]);
    assert_eq!(outcome_of(&sim.log, 5), [Ok("dr healthy from 5 of 5 observers".to_string())]);

    // The fence agent and the three activate steps were dispatched, each once, with the epoch.
    let kinds: Vec<(usize, &str, Option<NodeId>)> =
        sim.dispatched.iter().map(|d| (d.step, d.action.action.kind(), d.executor)).collect();
    assert_eq!(
        kinds,
        [(0, "fence_agent", Some(1)), (2, "exec", None), (3, "haproxy", None), (4, "dns", None)]
    );
    let fence = &sim.dispatched[0];
    assert_eq!((fence.epoch, fence.from_site.as_str(), fence.to_site.as_str()), (2, "prod", "dr"));
    assert_eq!((fence.service.as_str(), fence.attempt), (SVC, 1));
    // The fence agent's 60s timeout plus the 5s result grace, from its dispatch.
    assert_eq!(fence.deadline, start_at.unwrap() + Duration::from_millis(2 * ROUND_MS + 65_000));

    let s = sim.svc();
    assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 2, ServicePhase::FailedOver));
    assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 2)));
    assert_eq!(sim.engine.site_health(SVC, "prod"), SiteHealth::Down { since: start_at.unwrap() });
    assert_eq!(sim.engine.site_health(SVC, "dr"), SiteHealth::Up);
    // Without veto hooks, none are run.
    assert_eq!(sim.veto_runs, []);
}

/// Runs a minute of the given world and returns the log; asserts that no failover started.
fn no_failover(sim: &mut Sim) {
    sim.run(60_000);
    assert_eq!(starts(&sim.log), 0, "log: {:#?}", sim.log);
    assert_eq!(sim.svc().epoch, 1);
}

#[test]
fn one_observer_never_decides() {
    let mut sim = Sim::new(&[]);
    sim.see(&[3], "prod", Verdict::Unhealthy);
    no_failover(&mut sim);
    assert_eq!(sim.alerts, vec![]);

    // Even when the others cannot tell.
    let mut sim = Sim::new(&[]);
    sim.see(&[3], "prod", Verdict::Unhealthy);
    sim.see(&[1, 2, 4, WITNESS], "prod", Verdict::Unknown);
    no_failover(&mut sim);
}

#[test]
fn only_the_witness_losing_prod_is_no_failover() {
    let mut sim = Sim::new(&[]);
    sim.see(&[WITNESS], "prod", Verdict::Unhealthy);
    no_failover(&mut sim);
    assert_eq!(sim.engine.site_health(SVC, "prod"), SiteHealth::Up);
}

#[test]
fn flapping_shorter_than_down_after_is_no_failover() {
    let mut sim = Sim::new(&[]);
    // 2s unhealthy, 1s healthy, for three minutes: never 3s (down_after) in a row.
    for _ in 0..60 {
        sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
        sim.run(2_000);
        sim.see(&[3, 4, WITNESS], "prod", Verdict::Healthy);
        sim.run(1_000);
    }
    assert_eq!(starts(&sim.log), 0);
    // The same quorum held for 3s does fail over: the test above can fail.
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run(4_000);
    assert_eq!(starts(&sim.log), 1);
}

#[test]
fn auto_failover_off_alerts_instead() {
    let mut sim = Sim::new(&[("auto_failover = true", "auto_failover = false")]);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    no_failover(&mut sim);
    let alerts: Vec<&String> =
        sim.alerts.iter().map(|(_, m)| m).filter(|m| m.contains("auto_failover = false")).collect();
    // Rate-limited: one per minute.
    assert_eq!(alerts.len(), 1, "{:?}", sim.alerts);
}

#[test]
fn no_automatic_failback_from_dr() {
    let mut sim = Sim::new(&[]);
    sim.fail_over_to_dr();
    // As if reprotected and acknowledged (the reprotect workflow is not in the state machine
    // yet): only the "never fail back automatically" rule stands in the way.
    let s = sim.control.services.get_mut(SVC).unwrap();
    s.phase = ServicePhase::Protecting;
    s.mode = Automation::Auto;
    let before = sim.log.len();
    sim.see(&[1, 2, WITNESS], "dr", Verdict::Unhealthy);
    sim.run(60_000);
    assert_eq!(sim.log.len(), before, "{:#?}", &sim.log[before..]);
    assert!(matches!(sim.engine.site_health(SVC, "dr"), SiteHealth::Down { .. }));
    assert!(
        sim.alerts.iter().any(|(_, m)| m.contains("never fails back to prod automatically")),
        "{:?}",
        sim.alerts
    );
}

#[test]
fn cooldown_blocks_automatic_failover_until_it_ends() {
    let mut sim = Sim::new(&[]);
    sim.fail_over_to_dr();
    let Automation::Cooldown { until_unix_ms } = sim.svc().mode else { panic!("no cooldown") };
    // An operator fails back to prod; the engine carries it out (dr has no fence runbook, so
    // the plan is the lease wait alone).
    let epoch = sim.svc().epoch;
    sim.propose(ControlRequest::StartFailover {
        force: false,
        service: SVC.into(),
        from: "dr".into(),
        to: "prod".into(),
        expected_epoch: epoch,
        automatic: false,
        reason: "failback".into(),
        author: "op".into(),
        at_unix_ms: sim.unix_ms,
    });
    // Back on the primary, the service is protecting again; the cooldown is still on.
    sim.run_until(30_000, |s| s.svc().phase == ServicePhase::Protecting);
    assert_eq!((sim.svc().active_site.as_str(), sim.svc().epoch), ("prod", 3));
    assert_eq!(sim.rejected, Vec::<String>::new());

    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    let before = sim.log.len();
    sim.run(60_000);
    assert_eq!(sim.log.len(), before);
    assert!(sim.alerts.iter().any(|(_, m)| m.contains("in cooldown")), "{:?}", sim.alerts);

    // The cooldown ends (wall clock): the failover goes ahead.
    sim.unix_ms = until_unix_ms;
    sim.run(1_000);
    assert_eq!(brief(&sim.log[before]), "start prod->dr auto=true");
    assert_eq!(sim.svc().epoch, 4);
}

/// A readiness check for dr, so the engine has a readiness gate to apply.
const DR_READINESS: (&str, &str) = (
    "  # Replication lag",
    "  [[service.readiness]]\n  site = \"dr\"\n  kind = \"tcp\"\n  address = \"db.dr.example:5432\"\n\n  # Replication lag",
);

#[test]
fn an_unready_target_blocks_the_failover_with_an_alert() {
    let mut sim = Sim::new(&[DR_READINESS]);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    // dr's readiness checks fail everywhere.
    sim.see_ready(&ALL, "dr", Verdict::Unhealthy);
    sim.run(125_000);
    assert_eq!(starts(&sim.log), 0);
    let gate: Vec<(MonoTime, &str)> = sim
        .alerts
        .iter()
        .filter(|(_, m)| m.contains("blocked"))
        .map(|(t, m)| (*t, m.as_str()))
        .collect();
    // Once down_after passed, then once a minute.
    assert_eq!(gate.len(), 3, "{gate:?}");
    assert_eq!(
        gate[0].1,
        "failover of file-transfer to dr blocked: dr is not ready (its readiness checks pass \
         from 0 of 5 observers, 3 needed)"
    );
    assert_eq!(gate[1].0, gate[0].0 + Duration::from_secs(60));

    // dr becomes ready from a majority: the failover starts at the next tick.
    sim.see_ready(&[1, 3, 4], "dr", Verdict::Healthy);
    sim.run(1_000);
    assert_eq!(starts(&sim.log), 1);
}

#[test]
fn a_cold_standby_failing_its_health_checks_still_takes_over() {
    // Without readiness checks, dr's health checks (failing: its application is stopped, as
    // a cold standby's is) do not gate the failover; the verify step checks dr afterwards.
    let mut sim = Sim::new(&[]);
    sim.see(&ALL, "dr", Verdict::Unhealthy);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run(4_000);
    assert_eq!(starts(&sim.log), 1);
}

#[test]
fn replication_lag_above_the_maximum_blocks_the_failover() {
    let mut sim = Sim::new(&[]);
    sim.lag = Some(45.0);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    no_failover(&mut sim);
    assert!(
        sim.alerts.iter().any(|(_, m)| m
            == "failover of file-transfer to dr blocked: replication lag 45 > max_lag_on_failover 30"),
        "{:?}",
        sim.alerts
    );
    // No fresh lag: still blocked.
    sim.lag = None;
    sim.alerts.clear();
    sim.advance(60_000);
    sim.run(6_000);
    assert_eq!(starts(&sim.log), 0);
    assert!(
        sim.alerts.iter().any(|(_, m)| m.contains("replication lag unknown")),
        "{:?}",
        sim.alerts
    );
    // Caught up: it goes ahead.
    sim.lag = Some(30.0);
    sim.run(1_000);
    assert_eq!(starts(&sim.log), 1);
}

/// prod is lost with its controllers: no node can run the fence agent.
fn prod_lost_with_its_nodes(edits: &[(&str, &str)]) -> Sim {
    let mut sim = Sim::new(edits);
    sim.reachable = [3, 4, WITNESS].into();
    sim.see(&[1, 2], "prod", Verdict::Unknown);
    sim.see(&[1, 2], "dr", Verdict::Unknown);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(10_000, |s| s.svc().workflow.is_some());
    sim
}

#[test]
fn unconfirmed_fencing_waits_out_the_lease_before_activating() {
    let fence =
        ("action = \"off\"", "action = \"off\"\n  run_on = \"prod\"\n  on_failure = \"continue\"");
    let mut sim = prod_lost_with_its_nodes(&[fence]);
    // The engine first sees the workflow at the next tick.
    let first_seen = sim.now + Duration::from_millis(100);
    let safe = first_seen + Duration::from_millis(safe_wait_ms() + 1);
    let mut activated_at = None;
    for _ in 0..200 {
        sim.advance(100);
        sim.tick();
        let activating =
            sim.log.iter().any(|r| matches!(r, ControlRequest::StepStarted { step: 2, .. }));
        if activating && activated_at.is_none() {
            activated_at = Some(sim.now);
        }
    }
    assert_eq!(
        outcome_of(&sim.log, 0),
        [Err("no node of site prod is reachable".to_string())],
        "the fence step fails at once, without dispatching to anyone"
    );
    assert!(sim.dispatched.iter().all(|d| d.step != 0));
    let waited = outcome_of(&sim.log, 1);
    assert_eq!(
        waited,
        [Ok("lease of prod expired: waited 9.2s without confirmation that it stopped".to_string())]
    );
    let activated_at = activated_at.expect("activation started");
    assert!(activated_at >= safe, "activated at {activated_at}, safe from {safe}");
    assert!(activated_at <= safe + Duration::from_millis(300), "activated late: {activated_at}");
    assert_eq!(sim.rejected, Vec::<String>::new());
    assert_eq!(sim.svc().lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 2)));
}

#[test]
fn a_fence_step_that_aborts_stops_the_workflow_for_an_operator() {
    let mut sim = prod_lost_with_its_nodes(&[FENCE_ON_PROD]);
    sim.run(120_000);
    let wf = sim.wf();
    assert!(matches!(wf.state, WorkflowState::Failed { .. }), "{:?}", wf.state);
    assert_eq!(sim.svc().phase, ServicePhase::FailoverFailed);
    assert!(!sim.log.iter().any(|r| matches!(r, ControlRequest::StepStarted { step: 1.., .. })));
    let failed: Vec<_> =
        sim.alerts.iter().filter(|(_, m)| m.contains("droverctl resume")).collect();
    assert_eq!(failed.len(), 2, "rate-limited to one a minute: {:?}", sim.alerts);
}

#[test]
fn a_new_leader_reruns_a_running_step_as_the_next_attempt() {
    let mut sim = Sim::new(&[]);
    // dr-1 runs the failover up to start_all (step 2), whose result never comes.
    sim.answer = |d| (d.step != 2).then(|| Ok("done".to_string()));
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(30_000, |s| s.dispatched.iter().any(|d| d.step == 2));
    let old = sim.dispatched.last().unwrap().clone();
    assert_eq!((old.step, old.attempt, old.executor), (2, 1, None));

    // dr-1 loses leadership; dr-2 takes over with a fresh engine.
    sim.answer = |_| Some(Ok("done".into()));
    sim.new_leader("dr-2");
    let before = sim.log.len();
    sim.tick();
    assert_eq!(briefs(&sim.log[before..]), ["started 2#2 on None"]);
    // The old attempt's late result is ignored.
    sim.engine.step_result(SVC, old.workflow_id, 2, 1, Ok("late".into()));
    sim.run_until(30_000, |s| s.svc().phase == ServicePhase::FailedOver);

    assert_eq!(sim.rejected, Vec::<String>::new());
    let step2: Vec<String> = briefs(&sim.log).into_iter().filter(|b| b.contains(" 2#")).collect();
    assert_eq!(step2, ["started 2#1 on None", "started 2#2 on None", "finished 2#2 ok"]);
    assert_eq!(outcome_of(&sim.log, 2), [Ok("done".to_string())]);
    // Every step finished exactly once.
    let finished: Vec<usize> = sim
        .log
        .iter()
        .filter_map(|r| match r {
            ControlRequest::StepFinished { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(finished, [0, 1, 2, 3, 4, 5]);
    assert_eq!((sim.svc().active_site.as_str(), sim.svc().epoch), ("dr", 2));
}

#[test]
fn a_new_leader_waits_the_whole_lease_from_its_own_first_sight() {
    let fence =
        ("action = \"off\"", "action = \"off\"\n  run_on = \"prod\"\n  on_failure = \"continue\"");
    let mut sim = prod_lost_with_its_nodes(&[fence]);
    // The lease wait is running when leadership moves, 5s into it.
    sim.run_until(10_000, |s| matches!(s.status(1), Some(StepStatus::Running { .. })));
    sim.run(5_000);
    sim.new_leader("dr-2");
    let term_start = sim.now;
    let safe = term_start + Duration::from_millis(safe_wait_ms() + 1);
    let mut finished_at = None;
    for _ in 0..150 {
        sim.advance(100);
        sim.tick();
        if finished_at.is_none() && !outcome_of(&sim.log, 1).is_empty() {
            finished_at = Some(sim.now);
        }
    }
    // Re-run as attempt 2, ended after the full safe wait from the new term.
    let lease_wait: Vec<String> =
        briefs(&sim.log).into_iter().filter(|b| b.contains(" 1#")).collect();
    assert_eq!(lease_wait, ["started 1#1 on None", "started 1#2 on None", "finished 1#2 ok"]);
    let finished_at = finished_at.unwrap();
    assert!(
        finished_at >= safe && finished_at <= safe + Duration::from_millis(300),
        "{finished_at} vs {safe}"
    );
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn at_most_one_proposal_per_service_is_in_flight() {
    let mut sim = Sim::new(&[]);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run(3_000);
    // The runtime has not applied anything yet: drive the engine directly.
    let tick = |sim: &mut Sim| {
        for ((o, site), &verdict) in &sim.seen {
            sim.engine.probe_report(*o, SVC, site, verdict, Some(0.0), sim.now);
        }
        let obs = Observation {
            now: sim.now,
            now_unix_ms: sim.unix_ms,
            control: &sim.control,
            voters: &sim.voters,
            members: &sim.members,
            reachable: &sim.reachable,
        };
        sim.engine.tick(&obs)
    };
    sim.advance(1_000);
    let first = tick(&mut sim);
    assert_eq!(proposals(&first).len(), 1);
    for _ in 0..5 {
        sim.advance(1_000);
        assert_eq!(proposals(&tick(&mut sim)), Vec::<&ControlRequest>::new());
    }
    // Done (say the proposal was lost): the engine may propose again.
    sim.engine.proposal_done(SVC);
    sim.advance(1_000);
    let again: Vec<ControlRequest> = proposals(&tick(&mut sim)).into_iter().cloned().collect();
    assert_eq!(briefs(&again), ["start prod->dr auto=true"]);

    // Applied this time; the first step's start is then alone in flight too.
    sim.propose(again[0].clone());
    sim.engine.proposal_done(SVC);
    sim.advance(1_000);
    let started: Vec<ControlRequest> = proposals(&tick(&mut sim)).into_iter().cloned().collect();
    assert_eq!(briefs(&started), ["started 0#1 on None"]);
    sim.propose(started[0].clone());
    // Not yet done: the step is dispatched (not a proposal), its result is known, but its
    // finish waits for the start's proposal to be done.
    sim.advance(1_000);
    let commands = tick(&mut sim);
    let Some(Command::RunStep(d)) = commands.first() else { panic!("{commands:?}") };
    sim.engine.step_result(SVC, d.workflow_id, d.step, d.attempt, Ok("off".into()));
    sim.advance(1_000);
    assert_eq!(proposals(&tick(&mut sim)).len(), 0);
    sim.engine.proposal_done(SVC);
    sim.advance(1_000);
    let finished: Vec<ControlRequest> = proposals(&tick(&mut sim)).into_iter().cloned().collect();
    assert_eq!(briefs(&finished), ["finished 0#1 ok"]);
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn a_step_without_result_fails_at_its_deadline_and_is_retried_after_backoff() {
    let mut sim = Sim::new(&[]);
    sim.answer = |d| (d.step != 2).then(|| Ok("done".to_string()));
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(30_000, |s| s.dispatched.iter().any(|d| d.step == 2));
    let first = sim.dispatched.last().unwrap().clone();
    // start_all: 300s timeout + 5s grace.
    assert_eq!(first.deadline, sim.now + Duration::from_secs(305));
    sim.run_until(400_000, |s| !outcome_of(&s.log, 2).is_empty());
    assert_eq!(sim.now, first.deadline, "given up at the deadline");
    assert_eq!(
        outcome_of(&sim.log, 2),
        [Err("no result from the leader (dr-1) within 305s".to_string())]
    );
    // Backoff (1s) counted from when the engine saw the failed attempt.
    let failed_at = sim.now;
    sim.answer = |_| Some(Ok("done".into()));
    sim.run_until(10_000, |s| briefs(&s.log).iter().any(|b| b == "started 2#2 on Some(4)"));
    assert_eq!(sim.now, failed_at + Duration::from_secs(2));
    sim.run_until(30_000, |s| s.svc().phase == ServicePhase::FailedOver);
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn executors_are_reachable_controllers_of_the_site_never_the_witness() {
    let mut sim = Sim::with_leader(&[FENCE_ON_PROD], "witness");
    sim.reachable = [2, 4, WITNESS].into();
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailedOver);
    let executors: Vec<(usize, Option<NodeId>)> =
        sim.dispatched.iter().map(|d| (d.step, d.executor)).collect();
    // prod-2 fences (prod-1 is unreachable); dr-2 runs start_all; "any" steps of dr's
    // runbook go to a reachable controller of dr, since the leader is the witness; nothing
    // runs on the witness.
    assert_eq!(executors, [(0, Some(2)), (2, Some(4)), (3, Some(4)), (4, Some(4))]);
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn an_activate_step_with_no_reachable_node_waits_and_alerts() {
    let mut sim = Sim::with_leader(&[], "witness");
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(30_000, |s| matches!(s.status(1), Some(StepStatus::Succeeded { .. })));
    sim.reachable = [1, 2, WITNESS].into();
    sim.run(90_000);
    assert!(matches!(sim.wf().steps[2].status, StepStatus::Pending));
    let waits: Vec<_> =
        sim.alerts.iter().filter(|(_, m)| m.contains("no node of site dr is reachable")).collect();
    assert_eq!(waits.len(), 2, "{:?}", sim.alerts);
    assert!(waits[0].1.contains("waits at step 3 (activate exec on dr)"), "{}", waits[0].1);
    sim.reachable = ALL.into();
    sim.run_until(30_000, |s| s.svc().phase == ServicePhase::FailedOver);
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn a_probe_step_fails_at_its_timeout_when_the_site_stays_unhealthy() {
    let mut sim = Sim::new(&[]);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(30_000, |s| matches!(s.status(4), Some(StepStatus::Succeeded { .. })));
    // dr's checks fail from everywhere before verify starts.
    sim.see(&ALL, "dr", Verdict::Unhealthy);
    sim.run_until(120_000, |s| !outcome_of(&s.log, 5).is_empty());
    assert_eq!(
        outcome_of(&sim.log, 5),
        [Err("dr not healthy from a quorum of observers within 60s".to_string())]
    );
    assert_eq!(sim.svc().phase, ServicePhase::FailoverFailed);
    assert_eq!(sim.svc().active_site, "prod");
}

/// A veto hook for the service, with the given TOML lines after its command.
fn veto_hook(extra: &str) -> (&'static str, String) {
    (
        "  # Replication lag",
        format!(
            "  [[service.veto]]\n  command = [\"/usr/local/bin/ok-to-fail-over\"]\n{extra}\n  \
             # Replication lag"
        ),
    )
}

fn sim_with_veto(extra: &str) -> Sim {
    let (from, to) = veto_hook(extra);
    Sim::new(&[(from, to.as_str())])
}

/// When the `RunVeto`s were emitted.
fn veto_times(sim: &Sim) -> Vec<MonoTime> {
    sim.veto_runs.iter().map(|(at, _)| *at).collect()
}

#[test]
fn veto_hooks_that_pass_let_the_failover_start_at_the_next_tick() {
    let mut sim = sim_with_veto("");
    assert_eq!(sim.run(20_000), vec![]);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    let lost_at = sim.now + Duration::from_millis(ROUND_MS);
    sim.run_until(10_000, |s| !s.veto_runs.is_empty());

    // Asked for at the instant the failover would otherwise start, instead of proposing it.
    let (asked_at, run) = sim.veto_runs[0].clone();
    assert_eq!(asked_at, lost_at + Duration::from_secs(3));
    assert_eq!(
        run,
        Command::RunVeto {
            service: SVC.into(),
            from_site: "prod".into(),
            to_site: "dr".into(),
            hooks: vec![VetoHook {
                command: vec!["/usr/local/bin/ok-to-fail-over".into()],
                timeout: Duration::from_secs(10),
                env: BTreeMap::new(),
            }],
            // The hook's default 10s timeout plus the 5s result grace.
            deadline: asked_at + Duration::from_secs(15),
        }
    );
    assert_eq!(starts(&sim.log), 0);

    // The hook passed (within that tick): the failover is proposed at the next one.
    sim.run(1_000);
    assert_eq!(briefs(&sim.log), ["start prod->dr auto=true"]);
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailedOver);
    sim.run(120_000);
    assert_eq!(veto_times(&sim), [asked_at], "exactly one run of the hooks");
    assert_eq!(starts(&sim.log), 1);
    assert_eq!(sim.rejected, Vec::<String>::new());
    assert!(!sim.alerts.iter().any(|(_, m)| m.contains("veto")), "{:?}", sim.alerts);
}

#[test]
fn a_veto_blocks_the_failover_with_its_reason_and_the_hooks_run_again_a_minute_later() {
    let mut sim = sim_with_veto("");
    sim.veto_answer = |_| Some(Err("exec /usr/local/bin/ok-to-fail-over: exit 1: freeze".into()));
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(10_000, |s| !s.veto_runs.is_empty());
    let t0 = sim.now;
    sim.run(125_000);
    assert_eq!(starts(&sim.log), 0, "{:#?}", sim.log);

    // The veto is alerted at the tick after the run, and the hooks run again alert_every (60s)
    // after that; the alert repeats with each veto.
    let s = Duration::from_secs;
    assert_eq!(veto_times(&sim), [t0, t0 + s(61), t0 + s(122)]);
    let vetoed: Vec<(MonoTime, &str)> = sim
        .alerts
        .iter()
        .filter(|(_, m)| m.contains("vetoed"))
        .map(|(t, m)| (*t, m.as_str()))
        .collect();
    let msg = "failover of file-transfer to dr vetoed: exec /usr/local/bin/ok-to-fail-over: \
               exit 1: freeze";
    assert_eq!(vetoed, [(t0 + s(1), msg), (t0 + s(62), msg), (t0 + s(123), msg)]);

    // The hook changes its mind: the next run lets the failover go ahead.
    sim.veto_answer = |_| Some(Ok(()));
    sim.run_until(70_000, |s| starts(&s.log) == 1);
    assert_eq!(veto_times(&sim).last(), Some(&(t0 + s(183))));
    assert_eq!(sim.now, t0 + s(184));
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailedOver);
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn veto_hooks_without_a_verdict_by_the_deadline_are_a_veto() {
    let mut sim = sim_with_veto("  timeout = \"20s\"");
    sim.veto_answer = |_| None;
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(10_000, |s| !s.veto_runs.is_empty());
    let t0 = sim.now;
    sim.run_until(60_000, |s| s.alerts.iter().any(|(_, m)| m.contains("vetoed")));
    // One run in flight until its deadline (20s + 5s grace), then a veto.
    assert_eq!(sim.now, t0 + Duration::from_secs(25));
    assert_eq!(veto_times(&sim), [t0]);
    assert_eq!(
        sim.alerts.last().unwrap().1,
        "failover of file-transfer to dr vetoed: no verdict from its veto hooks within 25s \
         (20s of hook timeouts plus 5s grace); a hook that does not answer in time counts as a \
         veto"
    );
    // The verdict arriving late is ignored.
    sim.engine.veto_result(SVC, Ok(()));
    sim.run(30_000);
    assert_eq!(starts(&sim.log), 0);
    assert_eq!(veto_times(&sim), [t0]);
}

#[test]
fn a_verdict_arriving_after_the_site_came_back_is_ignored() {
    let mut sim = sim_with_veto("  timeout = \"5m\"");
    sim.veto_answer = |_| None;
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(10_000, |s| !s.veto_runs.is_empty());

    // prod recovers while the hook still runs; no second run while it does.
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Healthy);
    sim.run_until(40_000, |s| s.engine.site_health(SVC, "prod") == SiteHealth::Up);
    assert_eq!(sim.veto_runs.len(), 1);
    sim.engine.veto_result(SVC, Ok(()));
    sim.run(30_000);
    assert_eq!(starts(&sim.log), 0, "{:#?}", sim.log);

    // A new outage asks the hooks again; their pass for the old one does not count.
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(10_000, |s| s.veto_runs.len() == 2);
    assert_eq!(starts(&sim.log), 0);
    sim.engine.veto_result(SVC, Ok(()));
    sim.run(1_000);
    assert_eq!(briefs(&sim.log), ["start prod->dr auto=true"]);
}

#[test]
fn a_self_fenced_active_site_is_reactivated_once_its_member_reports_back() {
    let mut sim = Sim::new(&[]);
    sim.fail_over_to_dr();
    let before = sim.log.len();
    // Nothing without a report, nor for reports that do not fit: another epoch, a member of
    // a site that is not active, a witness.
    sim.fenced = vec![(4, 1), (1, 2), (WITNESS, 2)];
    sim.run(10_000);
    assert_eq!(sim.log.len(), before, "{:?}", briefs(&sim.log[before..]));
    // Nor while the reporting member is not reachable (yet) from the leader.
    sim.fenced = vec![(4, 2)];
    sim.reachable.remove(&4);
    sim.run(5_000);
    assert_eq!(sim.log.len(), before, "{:?}", briefs(&sim.log[before..]));
    sim.reachable.insert(4);

    // dr-2 self-fenced at epoch 2 and reaches the leader again.
    sim.fenced = vec![(4, 2)];
    sim.run_until(30_000, |s| s.svc().phase == ServicePhase::FailedOver && s.svc().epoch == 3);
    assert_eq!(
        briefs(&sim.log[before..]),
        [
            "reactivate dr from epoch 2",
            "started 0#1 on None",
            "finished 0#1 ok",
            "started 1#1 on None",
            "finished 1#1 ok",
            "started 2#1 on None",
            "finished 2#1 ok",
            "started 3#1 on None",
            "finished 3#1 ok",
        ]
    );
    let s = sim.svc();
    assert_eq!((s.active_site.as_str(), s.epoch), ("dr", 3));
    assert_eq!(s.lease.as_ref().map(|l| (l.site.as_str(), l.epoch)), Some(("dr", 3)));
    // The dr activate runbook ran again, with the new epoch as the fencing token.
    let reruns: Vec<(&str, u64, &str)> = sim
        .dispatched
        .iter()
        .filter(|d| d.workflow_id != sim.wf().id || d.epoch == 3)
        .map(|d| (d.action.action.kind(), d.epoch, d.to_site.as_str()))
        .filter(|(_, e, _)| *e == 3)
        .collect();
    assert_eq!(reruns, [("exec", 3, "dr"), ("haproxy", 3, "dr"), ("dns", 3, "dr")]);
    assert!(sim.alerts.iter().any(|(_, m)| m.contains("reactivating dr for file-transfer")));
    // The report of epoch 2 is spent: no second reactivation, no failover.
    let len = sim.log.len();
    sim.run(20_000);
    assert_eq!(sim.log.len(), len);
    assert_eq!(starts(&sim.log), 1);
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn a_stale_fence_report_does_not_reactivate() {
    let mut sim = Sim::new(&[]);
    sim.fail_over_to_dr();
    let before = sim.log.len();
    // Reported once, 6s ago (stale after 5s), and never again.
    sim.engine.fenced_report(4, SVC, 2, sim.now);
    sim.advance(6_000);
    sim.run(5_000);
    assert_eq!(sim.log.len(), before);
}

#[test]
fn a_reactivation_with_nobody_to_run_it_ends_failed_and_says_so() {
    let mut sim = Sim::with_leader(&[], "witness");
    sim.fail_over_to_dr();
    let before = sim.log.len();
    // dr-2 reports itself fenced; dr is unreachable from the leader right after the start.
    sim.fenced = vec![(4, 2)];
    sim.advance(ROUND_MS);
    let commands = sim.tick();
    assert!(matches!(proposals(&commands)[..], [ControlRequest::StartReactivation { .. }]));
    sim.reachable = [1, 2, WITNESS].into();
    sim.run(30_000);
    assert_eq!(
        briefs(&sim.log[before..]),
        [
            "reactivate dr from epoch 2",
            "started 0#1 on None",
            "finished 0#1 err",
            "started 0#2 on None",
            "finished 0#2 err",
            "started 0#3 on None",
            "finished 0#3 err",
        ],
        "attempts fail at once, without waiting for an executor"
    );
    let s = sim.svc();
    assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 3, ServicePhase::FailedOver));
    assert_eq!(s.active_workflow(), None);
    assert!(
        sim.alerts.iter().any(|(_, m)| m.starts_with(
            "reactivation of file-transfer on dr failed: file-transfer epoch 3: step 1 (activate \
             exec on dr) failed: no node of site dr is reachable"
        )),
        "{:?}",
        sim.alerts
    );
    assert!(sim.dispatched.iter().all(|d| d.epoch != 3), "nothing ran");
}

#[test]
fn a_failed_step_is_retried_on_another_executor_of_its_site() {
    let mut sim = Sim::with_leader(&[FENCE_ON_PROD], "witness");
    // start_all fails on dr-1, works elsewhere.
    sim.answer = |d| {
        Some(if d.step == 2 && d.executor == Some(3) {
            Err("start_all: exit 1".to_string())
        } else {
            Ok("done".to_string())
        })
    };
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailedOver);
    let step2: Vec<String> = briefs(&sim.log).into_iter().filter(|b| b.contains(" 2#")).collect();
    assert_eq!(
        step2,
        ["started 2#1 on Some(3)", "finished 2#1 err", "started 2#2 on Some(4)", "finished 2#2 ok"]
    );
    // The next step starts on the first choice again.
    assert!(briefs(&sim.log).contains(&"started 3#1 on Some(3)".to_string()));
}

#[test]
fn a_failover_that_fails_after_fencing_alerts_that_nobody_is_serving() {
    let mut sim = Sim::new(&[FENCE_ON_PROD]);
    sim.answer = |d| {
        Some(if d.step == 2 { Err("start_all: exit 1".to_string()) } else { Ok("done".into()) })
    };
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailoverFailed);
    sim.run(1_000);
    let expected = "file-transfer: nobody is serving: prod was fenced and dr failed to activate \
                    at step 3 (activate exec on dr): start_all: exit 1; fix the cause and run \
                    'droverctl resume file-transfer'";
    assert!(sim.alerts.iter().any(|(_, m)| m == expected), "{:?}", sim.alerts);
    assert_eq!(sim.svc().nobody_serving(SVC).as_deref(), Some(expected));
}

fn switchover_request(sim: &Sim, from: &str, to: &str) -> ControlRequest {
    ControlRequest::StartSwitchover {
        service: SVC.into(),
        from: from.into(),
        to: to.into(),
        expected_epoch: sim.svc().epoch,
        reason: "maintenance".into(),
        author: "alice".into(),
        at_unix_ms: sim.unix_ms,
    }
}

#[test]
fn a_confirmed_deactivation_releases_at_once_and_catch_up_waits_for_lag_zero() {
    let mut sim = Sim::new(&[]);
    sim.lag = Some(12.0);
    sim.propose(switchover_request(&sim, "prod", "dr"));
    // Deactivated; catch-up waits while the standby lags.
    sim.run(10_000);
    assert!(matches!(sim.status(0), Some(StepStatus::Succeeded { .. })));
    assert!(matches!(sim.status(1), Some(StepStatus::Running { .. })), "{:?}", sim.status(1));
    assert_eq!(sim.svc().lease.as_ref().map(|l| l.site.as_str()), Some("prod"));
    // Caught up: the lease is released and, the deactivation being confirmed, granted to dr
    // without the safe wait.
    sim.lag = Some(0.0);
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailedOver);
    let outcomes = outcome_of(&sim.log, 2);
    assert_eq!(outcomes, [Ok("deactivation confirmed by 1 step".to_string())]);
    assert_eq!(sim.svc().active_site, "dr");
    assert_eq!(sim.rejected, Vec::<String>::new());
}

#[test]
fn catch_up_gives_up_after_its_timeout_and_prod_is_restored() {
    let mut sim = Sim::new(&[
        ("cooldown = \"30m\"", "cooldown = \"30m\"\ncatch_up_timeout = \"20s\""),
        (
            "  [[service.runbook.dr.activate]]",
            "  [[service.runbook.prod.activate]]\n  kind = \"exec\"\n  run_on = \"prod\"\n  command = [\"/opt/st/bin/start_all\"]\n  timeout = \"60s\"\n\n  [[service.runbook.dr.activate]]",
        ),
    ]);
    sim.lag = Some(12.0);
    sim.propose(switchover_request(&sim, "prod", "dr"));
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::SwitchoverFailed);
    let caught = outcome_of(&sim.log, 1);
    assert_eq!(caught.len(), 1);
    let err = caught[0].clone().unwrap_err();
    assert!(err.contains("did not catch up within catch_up_timeout 20s"), "{err}");
    assert_eq!(sim.svc().active_site, "prod");
    assert_eq!(sim.svc().lease.as_ref().map(|l| l.site.as_str()), Some("prod"));
    let wf = sim.wf();
    assert!(matches!(wf.state, WorkflowState::RolledBack { .. }));
    assert!(wf.steps.iter().any(|s| s.stage == Stage::Restore));
    // Back on the primary: automatic failover protects it again.
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run_until(60_000, |s| s.svc().phase == ServicePhase::FailingOver);
}

#[test]
fn an_unconfirmed_deactivation_waits_out_the_lease_from_the_release() {
    // The deactivate step is `continue` on failure: the switchover goes on without it, and the
    // lease wait counts from the release (the lease wait's start), not from the switchover's.
    let mut sim = Sim::new(&[(
        "command = [\"/opt/st/bin/stop_all\"]\n  timeout = \"120s\"",
        "command = [\"/opt/st/bin/stop_all\"]\n  timeout = \"120s\"\n  on_failure = \"continue\"",
    )]);
    sim.answer =
        |d| Some(if d.step == 0 { Err("stop_all: exit 1".to_string()) } else { Ok("done".into()) });
    sim.lag = Some(3.0);
    sim.propose(switchover_request(&sim, "prod", "dr"));
    sim.run(20_000);
    assert!(matches!(sim.status(1), Some(StepStatus::Running { .. })));
    sim.lag = Some(0.0);
    let mut released = None;
    let mut granted = None;
    for _ in 0..60 {
        sim.run(1_000);
        if released.is_none() && sim.svc().lease.is_none() {
            released = Some(sim.now);
        }
        if granted.is_none() && sim.svc().lease.as_ref().is_some_and(|l| l.site == "dr") {
            granted = Some(sim.now);
        }
    }
    let waited = granted.unwrap().saturating_duration_since(released.unwrap());
    assert!(waited.as_millis() as u64 >= safe_wait_ms() - ROUND_MS, "{waited:?}");
    let outcome = outcome_of(&sim.log, 2)[0].clone().unwrap();
    assert!(outcome.contains("without confirmation that it stopped"), "{outcome}");
}

#[test]
fn a_pause_suppresses_automatic_failover_until_it_expires() {
    let mut sim = Sim::new(&[]);
    let until = sim.unix_ms + 30_000;
    sim.propose(ControlRequest::Pause {
        service: SVC.into(),
        reason: "network work".into(),
        until_unix_ms: Some(until),
        author: "alice".into(),
        at_unix_ms: sim.unix_ms,
    });
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    sim.run(20_000);
    assert_eq!(starts(&sim.log), 0);
    assert!(
        sim.alerts.iter().any(|(_, m)| m.contains("automatic action is paused for another")),
        "{:?}",
        sim.alerts
    );
    sim.run_until(30_000, |s| s.svc().phase == ServicePhase::FailingOver);
    assert!(sim.log.iter().any(|r| matches!(r, ControlRequest::PauseExpired { .. })));
    assert_eq!(sim.svc().paused, None);
}

/// A consistency check (every non-witness site fingerprints itself) and a passive check of dr.
const DR_CONSISTENCY_AND_PASSIVE: (&str, &str) = (
    "  # Replication lag",
    "  [[service.consistency]]\n  name = \"config\"\n  kind = \"exec\"\n  command = [\"cat\", \"/etc/st/version\"]\n\n  [[service.passive]]\n  name = \"st-port\"\n  site = \"dr\"\n  kind = \"tcp\"\n  address = \"st.dr.example:22\"\n\n  # Replication lag",
);

impl Sim {
    /// prod-1 and dr-1 report the fingerprints of their sites; every observer sees the
    /// passive check of dr with `passive`.
    fn fingerprints(&mut self, prod: &str, dr: &str, passive: Verdict) {
        self.engine.fingerprint_report(1, SVC, "prod", "config", Ok(prod.into()), self.now);
        self.engine.fingerprint_report(3, SVC, "dr", "config", Ok(dr.into()), self.now);
        for o in ALL {
            self.engine.passive_report(o, SVC, "st-port", passive, "probe".into(), self.now);
        }
    }

    fn standby(&self) -> crate::decide::StandbyReadiness {
        let obs = Observation {
            now: self.now,
            now_unix_ms: self.unix_ms,
            control: &self.control,
            voters: &self.voters,
            members: &self.members,
            reachable: &self.reachable,
        };
        let mut all = self.engine.standby_readiness(&obs, SVC);
        assert_eq!(all.len(), 1, "one standby: {all:?}");
        all.remove(0)
    }
}

#[test]
fn a_consistency_mismatch_blocks_the_failover_until_the_fingerprints_agree() {
    let mut sim = Sim::new(&[DR_CONSISTENCY_AND_PASSIVE]);
    sim.fingerprints("v1", "v2", Verdict::Unhealthy);
    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    for _ in 0..6 {
        sim.fingerprints("v1", "v2", Verdict::Unhealthy);
        sim.run(1_000);
    }
    assert_eq!(starts(&sim.log), 0);
    assert!(
        sim.alerts.iter().any(|(_, m)| m
            == "failover of file-transfer to dr blocked: consistency check config differs: prod \
                (active) has \"v1\", dr has \"v2\""),
        "{:?}",
        sim.alerts
    );
    let v = sim.standby();
    assert!(!v.ready);
    assert_eq!(v.consistency[0].state(), "mismatch");
    // The operator's view names the same reason.
    let obs_gate = {
        let obs = Observation {
            now: sim.now,
            now_unix_ms: sim.unix_ms,
            control: &sim.control,
            voters: &sim.voters,
            members: &sim.members,
            reachable: &sim.reachable,
        };
        sim.engine.failover_gates(&obs, SVC, "dr")
    };
    assert!(obs_gate.unwrap_err().contains("differs"));

    // dr's configuration is fixed: the failover starts at the next tick.
    sim.fingerprints("v1", "v1", Verdict::Unhealthy);
    sim.run(1_000);
    assert_eq!(starts(&sim.log), 1);
}

#[test]
fn a_serving_standby_is_alerted_and_blocks_the_failover_until_acknowledged() {
    let mut sim = Sim::new(&[DR_CONSISTENCY_AND_PASSIVE]);
    sim.fingerprints("v1", "v1", Verdict::Healthy);
    sim.run(1_000);
    // Alerted while prod is still up: a split brain does not wait for an outage.
    let alert = "file-transfer: standby dr is serving: possible split brain (passive check \
                 st-port passes from 5 of 5 observers (probe)); failover and switchover to dr \
                 are blocked until it stops serving or an operator runs 'droverctl ack \
                 file-transfer --split-brain dr'";
    assert!(sim.alerts.iter().any(|(_, m)| m == alert), "{:?}", sim.alerts);
    assert_eq!(sim.standby().split_brain_block().map(|r| r.key), Some("split_brain"));

    sim.see(&[3, 4, WITNESS], "prod", Verdict::Unhealthy);
    for _ in 0..6 {
        sim.fingerprints("v1", "v1", Verdict::Healthy);
        sim.run(1_000);
    }
    assert_eq!(starts(&sim.log), 0);
    assert!(sim.alerts.iter().any(|(_, m)| m.starts_with(
        "failover of file-transfer to dr blocked: file-transfer: standby dr is serving"
    )));

    // An operator acknowledges it: the alert stays in status, the failover goes ahead.
    sim.propose(ControlRequest::AckSplitBrain {
        service: SVC.into(),
        site: "dr".into(),
        author: "op".into(),
        at_unix_ms: 0,
    });
    assert!(sim.rejected.is_empty(), "{:?}", sim.rejected);
    let v = sim.standby();
    assert!(v.ready && v.passive[0].acknowledged, "{v:?}");
    assert!(v.split_brain_alert().is_some_and(|a| a.contains("acknowledged by an operator")));
    sim.fingerprints("v1", "v1", Verdict::Healthy);
    sim.run(1_000);
    assert_eq!(starts(&sim.log), 1);
}
