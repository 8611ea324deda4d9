//! Synchronous tests of the reconciler against the real replicated state: every proposal is
//! applied with `ControlState::apply` before `proposal_done`, as the runtime does.

use std::collections::BTreeMap;

use super::*;
use crate::consensus::state::control::ControlState;
use crate::consensus::types::{Member, Role};

const SPEC: &str = include_str!("../../spec/testdata/cluster.toml");
const SVC: &str = "file-transfer";
/// The committed failover's workflow id (the log index of its start).
const WF: u64 = 10;
/// Steps of the example's failover: 3 is its haproxy step, 4 its dns step (timeouts 10s).
const HAPROXY: usize = 3;
const DNS: usize = 4;
const EVERY_MS: u64 = 10_000;
/// A check's deadline: the step timeout plus the default 5s result grace.
const CHECK_MS: u64 = 15_000;

fn members() -> BTreeMap<NodeId, Member> {
    let m = |name: &str, site: &str, role| Member {
        name: name.into(),
        site: site.into(),
        role,
        address: format!("{name}:7000"),
    };
    BTreeMap::from([
        (1, m("prod-1", "prod", Role::Controller)),
        (3, m("dr-1", "dr", Role::Controller)),
        (5, m("witness", "witness", Role::Witness)),
    ])
}

struct World {
    control: ControlState,
    members: BTreeMap<NodeId, Member>,
    voters: BTreeSet<NodeId>,
    reachable: BTreeSet<NodeId>,
    rec: Reconciler,
    now: MonoTime,
    index: u64,
    /// Every `Drift` entry applied, with whether it was rejected.
    log: Vec<(DriftFinding, Option<String>)>,
}

fn at(ms: u64) -> MonoTime {
    MonoTime::from_ms(ms)
}

impl World {
    /// A failover to dr committed (epoch 2); policy edits in `policy` (TOML lines).
    fn committed(policy: &str, params: ReconcileParams) -> World {
        let w = World::failed_over(&format!("commit = \"auto\"\n{policy}"), params);
        assert_eq!(w.svc().phase, ServicePhase::FailedOver);
        w
    }

    /// A failover to dr with every step done (epoch 2); `policy` replaces the example's
    /// `commit = "auto"` line.
    fn failed_over(policy: &str, params: ReconcileParams) -> World {
        let text = SPEC.replacen("commit = \"auto\"", policy, 1);
        let spec = crate::spec::parse(&text, "test").expect("valid spec");
        let mut w = World {
            control: ControlState::default(),
            members: members(),
            voters: BTreeSet::from([1, 3, 5]),
            reachable: BTreeSet::from([1, 3, 5]),
            rec: Reconciler::new(params),
            now: at(0),
            index: 1,
            log: Vec::new(),
        };
        w.apply(ControlRequest::ApplySpec {
            expected_version: None,
            spec: Box::new(spec),
            text: String::new(),
            author: "op".into(),
            at_unix_ms: 0,
        });
        w.index = WF - 1;
        w.apply(ControlRequest::StartFailover {
            service: SVC.into(),
            from: "prod".into(),
            to: "dr".into(),
            expected_epoch: 1,
            automatic: false,
            reason: "test".into(),
            author: "op".into(),
            at_unix_ms: 0,
            force: false,
        });
        while let Some(i) = w.svc().workflow.as_ref().and_then(|wf| wf.cursor()) {
            let attempt = w.svc().workflow.as_ref().unwrap().steps[i].next_attempt();
            w.apply(ControlRequest::StepStarted {
                service: SVC.into(),
                workflow_id: WF,
                step: i,
                attempt,
                executor: None,
                author: "dr-1".into(),
                at_unix_ms: 0,
            });
            w.apply(ControlRequest::StepFinished {
                service: SVC.into(),
                workflow_id: WF,
                step: i,
                attempt,
                outcome: Ok("done".into()),
                refused: false,
                author: "dr-1".into(),
                at_unix_ms: 0,
            });
        }
        assert_eq!(w.svc().epoch, 2);
        w
    }

    fn svc(&self) -> &ServiceState {
        &self.control.services[SVC]
    }

    fn apply(&mut self, req: ControlRequest) -> Option<String> {
        self.index += 1;
        self.control.apply(self.index, &req).rejected
    }

    /// Ticks at `ms`; proposals are applied at once (and reported done); checks returned.
    fn tick(&mut self, ms: u64) -> Vec<ReconcileCommand> {
        self.now = at(ms);
        let obs = Observation {
            now: self.now,
            now_unix_ms: ms as i64,
            control: &self.control,
            voters: &self.voters,
            members: &self.members,
            reachable: &self.reachable,
        };
        let out = self.rec.tick(&obs);
        for cmd in &out {
            if let ReconcileCommand::Propose(req) = cmd {
                let ControlRequest::Drift { finding, service, .. } = req else {
                    panic!("the reconciler proposes Drift entries only: {req:?}")
                };
                let rejected = self.apply(req.clone());
                self.log.push((finding.clone(), rejected));
                self.rec.proposal_done(service);
            }
        }
        out
    }

    fn result(&mut self, ms: u64, step: usize, outcome: CheckOutcome) {
        self.rec.check_result(SVC, WF, step, outcome, at(ms));
    }
}

/// (step, repair) of the checks among `cmds`.
fn checks(cmds: &[ReconcileCommand]) -> Vec<(usize, bool)> {
    cmds.iter()
        .filter_map(|c| match c {
            ReconcileCommand::Check(d) => Some((d.step, d.repair)),
            _ => None,
        })
        .collect()
}

fn findings(cmds: &[ReconcileCommand]) -> Vec<DriftFinding> {
    cmds.iter()
        .filter_map(|c| match c {
            ReconcileCommand::Propose(ControlRequest::Drift { finding, .. }) => {
                Some(finding.clone())
            }
            _ => None,
        })
        .collect()
}

const TEN_S: &str = "reconcile_every = \"10s\"";

#[test]
fn traffic_steps_are_checked_every_interval_one_check_at_a_time() {
    let mut w = World::committed(TEN_S, ReconcileParams::new("dr-1"));
    assert!(w.tick(0).is_empty(), "first checked one interval after it is first seen");
    assert!(w.tick(EVERY_MS - 1).is_empty());
    let out = w.tick(EVERY_MS);
    assert_eq!(checks(&out), [(HAPROXY, false), (DNS, false)], "only the traffic steps");
    let ReconcileCommand::Check(d) = &out[0] else { unreachable!() };
    assert_eq!((d.epoch, d.workflow_id, d.executor), (2, WF, None), "run_on any: the leader");
    assert_eq!(d.deadline, at(EVERY_MS + CHECK_MS));
    assert_eq!(w.rec.in_flight(), 2);
    // Nothing new while they are out.
    assert!(checks(&w.tick(EVERY_MS + 5_000)).is_empty());
    w.result(EVERY_MS + 1_000, HAPROXY, CheckOutcome::Holds("held".into()));
    w.result(EVERY_MS + 2_000, DNS, CheckOutcome::Holds("held".into()));
    assert!(findings(&w.tick(EVERY_MS + 2_100)).is_empty(), "no drift, nothing recorded");
    assert!(checks(&w.tick(2 * EVERY_MS + 999)).is_empty());
    assert_eq!(checks(&w.tick(2 * EVERY_MS + 1_000)), [(HAPROXY, false)]);
    assert_eq!(checks(&w.tick(2 * EVERY_MS + 2_000)), [(DNS, false)]);
    // A result nobody waits for (a duplicate) changes nothing.
    w.result(2 * EVERY_MS + 2_100, HAPROXY, CheckOutcome::Drifted("late".into()));
    w.result(2 * EVERY_MS + 2_200, HAPROXY, CheckOutcome::Drifted("duplicate".into()));
    let out = w.tick(2 * EVERY_MS + 2_300);
    assert_eq!(findings(&out), [DriftFinding::Detected { detail: "late".into() }]);
}

#[test]
fn drift_is_recorded_once_then_repaired_at_once() {
    let mut w = World::committed(TEN_S, ReconcileParams::new("dr-1"));
    w.tick(0);
    w.tick(EVERY_MS);
    w.result(EVERY_MS + 100, HAPROXY, CheckOutcome::Drifted("dr-edge is maint".into()));
    w.result(EVERY_MS + 100, DNS, CheckOutcome::Holds("ok".into()));
    let out = w.tick(EVERY_MS + 200);
    assert_eq!(findings(&out), [DriftFinding::Detected { detail: "dr-edge is maint".into() }]);
    assert!(checks(&out).is_empty(), "the repair waits for the record");
    assert_eq!(w.svc().drift.len(), 1);
    // Recorded: the repair goes out at the next tick, not an interval later.
    let out = w.tick(EVERY_MS + 300);
    assert_eq!(checks(&out), [(HAPROXY, true)]);
    let ReconcileCommand::Check(d) = &out[0] else { unreachable!() };
    assert_eq!(d.deadline, at(EVERY_MS + 300 + 2 * 10_000 + 5_000), "read-back and run");
    w.result(EVERY_MS + 400, HAPROXY, CheckOutcome::Repaired("set ready".into()));
    assert_eq!(
        findings(&w.tick(EVERY_MS + 500)),
        [DriftFinding::Repaired { detail: "set ready".into() }]
    );
    assert!(w.svc().drift.is_empty());
    assert_eq!((w.svc().drift_counts.detected, w.svc().drift_counts.repaired), (1, 1));
    assert!(w.log.iter().all(|(_, rejected)| rejected.is_none()), "{:?}", w.log);
    // Back to checks every interval.
    assert!(!checks(&w.tick(2 * EVERY_MS + 399)).contains(&(HAPROXY, false)));
    assert_eq!(checks(&w.tick(2 * EVERY_MS + 400)), [(HAPROXY, false)]);
}

#[test]
fn a_drift_that_persists_is_not_recorded_again_and_clears_when_it_holds() {
    let mut w =
        World::committed("reconcile_every = \"10s\"\nrepair = false", ReconcileParams::new("dr-1"));
    w.tick(0);
    for round in 1..=3 {
        let t = round * EVERY_MS;
        assert_eq!(checks(&w.tick(t)), [(HAPROXY, false), (DNS, false)], "round {round}");
        w.result(t, HAPROXY, CheckOutcome::Drifted("maint".into()));
        w.result(t, DNS, CheckOutcome::Holds("ok".into()));
        let found = findings(&w.tick(t + 200));
        if round == 1 {
            assert_eq!(found, [DriftFinding::Detected { detail: "maint".into() }]);
        } else {
            assert!(found.is_empty(), "round {round}: still drifted, not recorded again");
        }
        assert!(checks(&w.tick(t + 300)).is_empty(), "repair = false: never a repair");
    }
    assert_eq!(w.svc().drift_counts.detected, 1);
    w.tick(4 * EVERY_MS);
    w.result(4 * EVERY_MS + 100, HAPROXY, CheckOutcome::Holds("fixed by hand".into()));
    let found = findings(&w.tick(4 * EVERY_MS + 200));
    assert_eq!(found, [DriftFinding::Cleared { detail: "fixed by hand".into() }]);
    assert!(w.svc().drift.is_empty());
}

#[test]
fn failed_repairs_back_off_and_each_is_recorded() {
    let mut w = World::committed(
        TEN_S,
        ReconcileParams {
            repair_backoff_max: Duration::from_secs(30),
            ..ReconcileParams::new("dr-1")
        },
    );
    w.tick(0);
    w.tick(EVERY_MS);
    w.result(EVERY_MS, HAPROXY, CheckOutcome::Drifted("maint".into()));
    w.result(EVERY_MS, DNS, CheckOutcome::Holds("ok".into()));
    w.tick(EVERY_MS + 1);
    let mut t = EVERY_MS + 2;
    // The waits after failures 1, 2, 3, 4: 10s, 20s, then capped at 30s. Meanwhile the
    // checks go on every interval (they would see a fix by hand) and find it still drifted.
    for wait in [10_000, 20_000, 30_000, 30_000] {
        let out = w.tick(t);
        assert!(checks(&out).contains(&(HAPROXY, true)), "repair at {t}: {out:?}");
        w.result(t, HAPROXY, CheckOutcome::RepairFailed("socket gone".into()));
        let found = findings(&w.tick(t + 1));
        assert_eq!(found, [DriftFinding::RepairFailed { error: "socket gone".into() }]);
        let mut repairs_before = 0;
        for ms in (t + 2..t + wait).step_by(500) {
            for (step, repair) in checks(&w.tick(ms)) {
                match (step, repair) {
                    (HAPROXY, true) => repairs_before += 1,
                    (HAPROXY, false) => w.result(ms, step, CheckOutcome::Drifted("maint".into())),
                    _ => w.result(ms, step, CheckOutcome::Holds("ok".into())),
                }
            }
        }
        assert_eq!(repairs_before, 0, "no repair within {wait}ms after a failure at {t}");
        t += wait;
    }
    assert_eq!(w.svc().drift[0].repairs_failed, 4);
    assert_eq!(w.svc().drift_counts.repair_failed, 4);
    assert_eq!(
        repair_backoff(Duration::from_secs(10), 1, Duration::from_secs(600)),
        Duration::from_secs(10)
    );
    assert_eq!(
        repair_backoff(Duration::from_secs(10), 4, Duration::from_secs(600)),
        Duration::from_secs(80)
    );
    assert_eq!(
        repair_backoff(Duration::from_secs(10), 40, Duration::from_secs(600)),
        Duration::from_secs(600)
    );
    // An interval longer than the cap is the floor.
    assert_eq!(
        repair_backoff(Duration::from_secs(3600), 5, Duration::from_secs(600)),
        Duration::from_secs(3600)
    );
}

#[test]
fn a_pause_stops_the_repair_not_the_check() {
    let mut w = World::committed(TEN_S, ReconcileParams::new("dr-1"));
    assert_eq!(
        w.apply(ControlRequest::Pause {
            service: SVC.into(),
            reason: "maintenance".into(),
            until_unix_ms: None,
            author: "op".into(),
            at_unix_ms: 0,
        }),
        None
    );
    w.tick(0);
    assert_eq!(checks(&w.tick(EVERY_MS)), [(HAPROXY, false), (DNS, false)]);
    w.result(EVERY_MS, HAPROXY, CheckOutcome::Drifted("maint".into()));
    assert_eq!(
        findings(&w.tick(EVERY_MS + 1)),
        [DriftFinding::Detected { detail: "maint".into() }]
    );
    assert!(checks(&w.tick(EVERY_MS + 2)).is_empty(), "paused: no repair");
    assert_eq!(checks(&w.tick(2 * EVERY_MS)), [(HAPROXY, false)], "still checked");
}

#[test]
fn nothing_is_reconciled_before_the_workflow_committed() {
    let policy = "commit = \"manual\"\nreconcile_every = \"10s\"";
    let mut w = World::failed_over(policy, ReconcileParams::new("dr-1"));
    assert_eq!(w.svc().phase, ServicePhase::PendingCommit);
    for ms in (0..5 * EVERY_MS).step_by(1_000) {
        assert!(w.tick(ms).is_empty(), "at {ms}");
    }
    let commit = ControlRequest::Commit { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
    assert_eq!(w.apply(commit), None);
    let t = 5 * EVERY_MS;
    assert!(w.tick(t).is_empty(), "first checked an interval after the commit");
    assert_eq!(checks(&w.tick(t + EVERY_MS)), [(HAPROXY, false), (DNS, false)]);
}

#[test]
fn checks_are_capped_and_go_where_the_step_runs() {
    let text = "reconcile_every = \"10s\"";
    let mut w = World::committed(
        text,
        ReconcileParams { max_in_flight: 1, ..ReconcileParams::new("witness") },
    );
    w.tick(0);
    let out = w.tick(EVERY_MS);
    assert_eq!(checks(&out), [(HAPROXY, false)], "one at a time");
    // A witness leader hands run_on = any steps to a reachable controller.
    let ReconcileCommand::Check(d) = &out[0] else { unreachable!() };
    assert!(d.executor.is_some_and(|id| id != 5), "{:?}", d.executor);
    w.result(EVERY_MS + 10, HAPROXY, CheckOutcome::Holds("ok".into()));
    assert_eq!(checks(&w.tick(EVERY_MS + 20)), [(DNS, false)]);
}

#[test]
fn a_check_that_could_not_run_is_alerted_and_tried_an_interval_later() {
    let mut w = World::committed(TEN_S, ReconcileParams::new("dr-1"));
    w.tick(0);
    w.tick(EVERY_MS);
    w.result(EVERY_MS + 10, HAPROXY, CheckOutcome::NotRun("dr-1 refused".into()));
    let out = w.tick(EVERY_MS + 20);
    assert!(findings(&out).is_empty());
    assert!(
        out.iter().any(|c| matches!(c, ReconcileCommand::Alert { message, .. }
            if message.contains("could not be checked for drift: dr-1 refused"))),
        "{out:?}"
    );
    w.result(EVERY_MS + 10, DNS, CheckOutcome::Holds("ok".into()));
    assert!(checks(&w.tick(2 * EVERY_MS + 9)).is_empty());
    assert_eq!(checks(&w.tick(2 * EVERY_MS + 10)), [(HAPROXY, false), (DNS, false)]);
    // No answer by the deadline counts the same.
    w.result(2 * EVERY_MS + 10, DNS, CheckOutcome::Holds("ok".into()));
    let out = w.tick(2 * EVERY_MS + 10 + CHECK_MS - 1);
    assert!(!out.iter().any(|c| matches!(c, ReconcileCommand::Alert { .. })), "{out:?}");
    let late = 2 * EVERY_MS + 10 + CHECK_MS;
    let out = w.tick(late);
    assert!(
        out.iter().any(|c| matches!(c, ReconcileCommand::Alert { message, .. }
            if message.contains("no answer in time"))),
        "{out:?}"
    );
    assert!(checks(&w.tick(late + EVERY_MS - 1)).iter().all(|(s, _)| *s != HAPROXY));
    assert!(checks(&w.tick(late + EVERY_MS)).contains(&(HAPROXY, false)));
}
