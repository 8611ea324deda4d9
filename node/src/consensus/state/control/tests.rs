use super::*;

const SPEC: &str = include_str!("../../../spec/testdata/cluster.toml");
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
            force: false,
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
    finish(c, wf, step, attempt, outcome, false)
}

fn finish(
    c: &mut ControlState,
    wf: u64,
    step: usize,
    attempt: u32,
    outcome: Result<String, String>,
    refused: bool,
) -> Outcome {
    c.apply(
        0,
        &ControlRequest::StepFinished {
            service: SVC.into(),
            workflow_id: wf,
            step,
            attempt,
            outcome,
            refused,
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
    assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("prod", 1, ServicePhase::Protecting));
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
    let resume = ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
    assert_eq!(c.apply(0, &resume).rejected, None);
    assert_eq!(started(&mut c, 10, 2, 4).rejected, None);
    assert_eq!(finished(&mut c, 10, 2, 4, true).rejected, None);
    run_all(&mut c, 10);
    assert_eq!(svc(&c).active_site, "dr");
}

#[test]
fn a_refused_step_fails_for_good_without_its_retries() {
    let mut c = ControlState::default();
    apply_spec(&mut c, spec_with("commit = \"auto\""), None);
    start(&mut c, 10, 1);
    run_until(&mut c, 10, 2);
    // dr.activate[0] has retries = 2, but the world refused attempt 1: no attempt 2.
    started(&mut c, 10, 2, 1);
    let why = Err("step refused: a newer epoch owns the records".to_string());
    assert_eq!(finish(&mut c, 10, 2, 1, why, true).rejected, None);
    assert_eq!(svc(&c).phase, ServicePhase::FailoverFailed);
    assert!(started(&mut c, 10, 2, 2).rejected.is_some(), "not retried");
    // An entry written before refusals were told apart reads as not refused.
    let old = r#"{"step_finished":{"service":"s","workflow_id":1,"step":0,"attempt":1,"outcome":{"Err":"x"},"author":"l","at_unix_ms":0}}"#;
    let req: ControlRequest = serde_json::from_str(old).expect("an old entry parses");
    assert!(matches!(req, ControlRequest::StepFinished { refused: false, .. }));
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
    let commit = ControlRequest::Commit { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
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
    assert!(reactivate(&mut c, 20, "prod", 2).rejected.unwrap().contains("active on dr, not prod"));
    assert_eq!(reactivate(&mut c, 20, "dr", 2).rejected, None);
    let s = svc(&c);
    assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 3, ServicePhase::Reactivating));
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
                force: false,
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
    let commit = ControlRequest::Commit { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
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
    let resume = ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
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
    let resume = ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
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

/// The test spec plus an activate runbook for prod and reprotect runbooks for both sites.
fn lifecycle_spec() -> ClusterSpec {
    let extra = r#"
  [[service.runbook.prod.activate]]
  kind = "exec"
  run_on = "prod"
  command = ["/opt/st/bin/start_all"]
  timeout = "60s"

  [[service.runbook.prod.reprotect]]
  kind = "exec"
  run_on = "prod"
  command = ["/opt/st/bin/replicate", "--from", "dr"]
  timeout = "60s"

  [[service.runbook.dr.reprotect]]
  kind = "exec"
  run_on = "dr"
  command = ["/opt/st/bin/replicate", "--to", "prod"]
  timeout = "60s"

  [[service.runbook.dr.verify]]"#;
    let text = SPEC.replacen("\n  [[service.runbook.dr.verify]]", extra, 1);
    crate::spec::parse(&text, "test").expect("test spec is valid")
}

fn switchover(c: &mut ControlState, index: u64, from: &str, to: &str, epoch: u64) -> Outcome {
    c.apply(
        index,
        &ControlRequest::StartSwitchover {
            service: SVC.into(),
            from: from.into(),
            to: to.into(),
            expected_epoch: epoch,
            reason: "maintenance".into(),
            author: "alice".into(),
            at_unix_ms: 2000,
        },
    )
}

fn reprotect(c: &mut ControlState, index: u64, epoch: u64) -> Outcome {
    c.apply(
        index,
        &ControlRequest::StartReprotect {
            service: SVC.into(),
            expected_epoch: epoch,
            reason: "replication reversed".into(),
            author: "alice".into(),
            at_unix_ms: 3000,
        },
    )
}

fn lease_of(c: &ControlState) -> Option<(String, u64)> {
    svc(c).lease.as_ref().map(|l| (l.site.clone(), l.epoch))
}

#[test]
fn a_switchover_keeps_the_old_lease_until_the_release_then_moves_and_commits() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    assert_eq!(switchover(&mut c, 10, "prod", "dr", 1).rejected, None);
    let s = svc(&c);
    assert_eq!((s.epoch, s.phase), (2, ServicePhase::SwitchingOver));
    let stages: Vec<Stage> = s.workflow.as_ref().unwrap().steps.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Deactivate,
            Stage::CatchUp,
            Stage::LeaseWait,
            Stage::Activate,
            Stage::Activate,
            Stage::Activate,
            Stage::Verify
        ]
    );
    // prod keeps the lease (at the new epoch) through deactivate and catch-up.
    assert_eq!(lease_of(&c), Some(("prod".into(), 2)));
    for step in 0..2 {
        started(&mut c, 10, step, 1);
        finished(&mut c, 10, step, 1, true);
        assert_eq!(lease_of(&c), Some(("prod".into(), 2)));
    }
    // The lease wait's start releases it; its success grants it to dr.
    started(&mut c, 10, 2, 1);
    assert_eq!(lease_of(&c), None);
    finished(&mut c, 10, 2, 1, true);
    assert_eq!(lease_of(&c), Some(("dr".into(), 2)));
    run_all(&mut c, 10);
    let s = svc(&c);
    assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("dr", 2, ServicePhase::FailedOver));
    assert_eq!(s.mode, Automation::Auto, "an operator's switchover starts no cooldown");
    assert_eq!(s.workflow.as_ref().unwrap().author, "alice");

    // Failback: a switchover back to prod, the primary: protecting again, epoch 3.
    assert_eq!(switchover(&mut c, 20, "dr", "prod", 2).rejected, None);
    run_all(&mut c, 20);
    let s = svc(&c);
    assert_eq!((s.active_site.as_str(), s.epoch, s.phase), ("prod", 3, ServicePhase::Protecting));
    assert_eq!(lease_of(&c), Some(("prod".into(), 3)));
}

#[test]
fn a_switchover_that_fails_before_the_release_restores_the_old_site() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    switchover(&mut c, 10, "prod", "dr", 1);
    started(&mut c, 10, 0, 1);
    let out = finished(&mut c, 10, 0, 1, false);
    assert!(out.record.unwrap().1.contains("abandoned: restoring prod"));
    let wf = svc(&c).workflow.clone().unwrap();
    assert!(wf.steps[1..7].iter().all(|s| matches!(s.status, StepStatus::Skipped { .. })));
    assert_eq!(wf.steps[7..].iter().map(|s| s.stage).collect::<Vec<_>>(), [Stage::Restore]);
    assert_eq!(lease_of(&c), Some(("prod".into(), 2)));
    assert!(svc(&c).active_workflow().is_some(), "restoring is still in progress");
    started(&mut c, 10, 7, 1);
    let out = finished(&mut c, 10, 7, 1, true);
    assert!(out.record.unwrap().1.contains("prod serves again at epoch 2"));
    let s = svc(&c);
    assert_eq!((s.active_site.as_str(), s.phase), ("prod", ServicePhase::SwitchoverFailed));
    assert!(matches!(s.workflow.as_ref().unwrap().state, WorkflowState::RolledBack { .. }));
    assert_eq!(s.active_workflow(), None);
    assert_eq!(s.nobody_serving(SVC), None);
    // A new switchover may start from there.
    assert_eq!(switchover(&mut c, 20, "prod", "dr", 2).rejected, None);
}

#[test]
fn a_switchover_whose_new_site_fails_to_activate_returns_to_the_old_site() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    switchover(&mut c, 10, "prod", "dr", 1);
    for step in 0..3 {
        started(&mut c, 10, step, 1);
        finished(&mut c, 10, step, 1, true);
    }
    assert_eq!(lease_of(&c), Some(("dr".into(), 2)));
    // dr.activate[0] has retries = 2: the third failure takes the way back.
    for attempt in 1..=3 {
        started(&mut c, 10, 3, attempt);
        let out = finished(&mut c, 10, 3, attempt, false);
        if attempt == 3 {
            let text = out.record.unwrap().1;
            assert!(text.contains("deactivating dr and returning to prod"), "{text}");
        }
    }
    let wf = svc(&c).workflow.clone().unwrap();
    let tail: Vec<Stage> = wf.steps[7..].iter().map(|s| s.stage).collect();
    // dr has no deactivate runbook in this spec: no undo step, the return waits out dr's lease.
    assert_eq!(tail, [Stage::Return, Stage::Restore]);
    assert!(wf.steps[4..7].iter().all(|s| matches!(s.status, StepStatus::Skipped { .. })));
    assert_eq!(svc(&c).phase, ServicePhase::SwitchingOver);
    started(&mut c, 10, 7, 1);
    assert_eq!(lease_of(&c), None, "the return's start releases dr's lease");
    finished(&mut c, 10, 7, 1, true);
    assert_eq!(lease_of(&c), Some(("prod".into(), 2)), "its success gives prod the lease back");
    // Restoring prod can fail too: then it stops for an operator, loudly.
    started(&mut c, 10, 8, 1);
    finished(&mut c, 10, 8, 1, false);
    let s = svc(&c);
    assert_eq!(s.phase, ServicePhase::SwitchoverFailed);
    assert!(s.active_workflow().is_some());
    let alert = s.nobody_serving(SVC).unwrap();
    assert!(alert.contains("the switchover to dr gave up after deactivating prod"), "{alert}");
    let resume = ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
    assert_eq!(c.apply(0, &resume).rejected, None);
    run_all(&mut c, 10);
    let s = svc(&c);
    assert_eq!((s.active_site.as_str(), s.phase), ("prod", ServicePhase::SwitchoverFailed));
    assert!(matches!(s.workflow.as_ref().unwrap().state, WorkflowState::RolledBack { .. }));
    assert_eq!(lease_of(&c), Some(("prod".into(), 2)));
}

#[test]
fn a_second_workflow_is_refused_naming_the_one_that_runs() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    assert_eq!(switchover(&mut c, 10, "prod", "dr", 1).rejected, None);
    let why = switchover(&mut c, 11, "prod", "dr", 2).rejected.unwrap();
    assert!(
        why.contains("switchover of file-transfer to dr (workflow 10, started by alice) at step 1"),
        "{why}"
    );
    assert!(why.contains("droverctl watch file-transfer"), "{why}");
    // Busy comes first, whatever else is wrong with the request.
    let to_self = switchover(&mut c, 11, "prod", "prod", 2).rejected.unwrap();
    assert!(to_self.contains("cannot start a switchover"), "{to_self}");
    assert!(start(&mut c, 12, 2).rejected.unwrap().contains("cannot start a failover"));
    assert!(reprotect(&mut c, 13, 2).rejected.unwrap().contains("cannot start a reprotect"));
    // A stale epoch is refused too, once the service is at rest.
    run_all(&mut c, 10);
    assert!(switchover(&mut c, 14, "dr", "prod", 1).rejected.unwrap().contains("epoch 2, not 1"));
}

#[test]
fn reprotect_makes_the_active_site_the_primary_and_rearms_failover_from_it() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    assert!(reprotect(&mut c, 5, 1).rejected.unwrap().contains("already protecting from prod"));
    start(&mut c, 10, 1);
    run_all(&mut c, 10);
    assert_eq!(svc(&c).phase, ServicePhase::FailedOver);
    assert_eq!(reprotect(&mut c, 20, 2).rejected, None);
    let s = svc(&c);
    assert_eq!((s.epoch, s.phase), (2, ServicePhase::Reprotecting));
    let wf = s.workflow.as_ref().unwrap();
    let sites: Vec<&str> = wf.steps.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, ["dr", "prod"], "the active site's reprotect runbook first");
    assert_eq!(lease_of(&c), Some(("dr".into(), 2)), "the lease stays");
    run_all(&mut c, 20);
    let s = svc(&c);
    assert_eq!((s.phase, s.primary.as_deref()), (ServicePhase::Protecting, Some("dr")));
    assert_eq!(s.primary_site("prod"), "dr");
    // A failover from dr is now a failover away from the primary.
    let back = ControlRequest::StartFailover {
        force: false,
        service: SVC.into(),
        from: "dr".into(),
        to: "prod".into(),
        expected_epoch: 2,
        automatic: true,
        reason: "dr down".into(),
        author: "leader".into(),
        at_unix_ms: 0,
    };
    assert_eq!(c.apply(30, &back).rejected, None);
    run_all(&mut c, 30);
    assert_eq!(svc(&c).phase, ServicePhase::FailedOver, "prod is not the primary any more");
}

#[test]
fn a_failed_reprotect_is_resumed_and_never_blocks_other_workflows() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    start(&mut c, 10, 1);
    run_all(&mut c, 10);
    reprotect(&mut c, 20, 2);
    started(&mut c, 20, 0, 1);
    finished(&mut c, 20, 0, 1, false);
    let s = svc(&c);
    assert_eq!(s.phase, ServicePhase::ReprotectFailed);
    assert_eq!(s.active_workflow(), None, "a failed reprotect holds nothing");
    assert_eq!(s.nobody_serving(SVC), None);
    let resume = ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
    assert_eq!(c.apply(0, &resume).rejected, None);
    assert_eq!(svc(&c).phase, ServicePhase::Reprotecting);
    run_all(&mut c, 20);
    assert_eq!(svc(&c).phase, ServicePhase::Protecting);
}

#[test]
fn a_pause_needs_a_reason_ends_by_resume_or_by_its_own_expiry() {
    let mut c = ControlState::default();
    apply_spec(&mut c, lifecycle_spec(), None);
    let pause = |reason: &str, until: Option<i64>| ControlRequest::Pause {
        service: SVC.into(),
        reason: reason.into(),
        until_unix_ms: until,
        author: "alice".into(),
        at_unix_ms: 1000,
    };
    assert!(c.apply(0, &pause(" ", None)).rejected.unwrap().contains("needs a reason"));
    assert!(c.apply(0, &pause("x", Some(500))).rejected.unwrap().contains("future"));
    let out = c.apply(0, &pause("db upgrade", Some(61_000)));
    assert_eq!(
        out.record.unwrap().1,
        "automatic action for file-transfer paused for 1m: db upgrade"
    );
    let expired = |until| ControlRequest::PauseExpired {
        service: SVC.into(),
        until_unix_ms: until,
        author: "leader".into(),
        at_unix_ms: 61_000,
    };
    assert!(c.apply(0, &expired(99)).rejected.is_some(), "only the pause that ends then");
    assert!(c.apply(0, &expired(61_000)).record.unwrap().1.contains("expired (db upgrade)"));
    assert_eq!(svc(&c).paused, None);
    c.apply(0, &pause("db upgrade", None));
    let resume = ControlRequest::Resume { service: SVC.into(), author: "op".into(), at_unix_ms: 0 };
    let out = c.apply(0, &resume);
    assert!(out.record.unwrap().1.contains("resumed (paused by alice: db upgrade)"));
    assert!(c.apply(0, &resume).rejected.unwrap().contains("nothing to resume"));
}

#[test]
fn a_split_brain_acknowledgement_holds_for_one_standby_at_the_current_epoch() {
    let mut c = ControlState::default();
    apply_spec(&mut c, spec_with("commit = \"auto\""), None);
    let ack = |site: &str| ControlRequest::AckSplitBrain {
        service: SVC.into(),
        site: site.into(),
        author: "op".into(),
        at_unix_ms: 0,
    };
    let active = c.apply(0, &ack("prod")).rejected.unwrap();
    assert!(active.contains("prod is the active site"), "{active}");
    let witness = c.apply(0, &ack("witness")).rejected.unwrap();
    assert!(witness.contains("not a site of the spec that can be active"), "{witness}");
    let done = c.apply(0, &ack("dr"));
    assert_eq!(done.rejected, None);
    assert_eq!(done.record.as_ref().map(|r| r.0), Some("ack"));
    assert!(svc(&c).split_brain_acknowledged("dr"));
    assert!(c.apply(0, &ack("dr")).rejected.unwrap().contains("already acknowledged"));
    // A failover is a new epoch: the acknowledgement no longer holds.
    start(&mut c, 10, 1);
    assert!(!svc(&c).split_brain_acknowledged("dr"));
}

fn drift_report(
    c: &mut ControlState,
    epoch: u64,
    wf: u64,
    step: usize,
    f: DriftFinding,
) -> Outcome {
    c.apply(
        0,
        &ControlRequest::Drift {
            service: SVC.into(),
            epoch,
            workflow_id: wf,
            step,
            finding: f,
            author: "leader".into(),
            at_unix_ms: 9000,
        },
    )
}

/// A committed failover to dr (workflow 10, epoch 2); its step 3 is the haproxy step, 4 the
/// dns step, 2 an exec step.
fn committed_failover() -> ControlState {
    let mut c = ControlState::default();
    apply_spec(&mut c, spec_with("commit = \"auto\""), None);
    assert_eq!(start(&mut c, 10, 1).rejected, None);
    run_all(&mut c, 10);
    let s = svc(&c);
    assert_eq!((s.phase, s.epoch), (ServicePhase::FailedOver, 2));
    assert_eq!(s.workflow.as_ref().unwrap().steps[3].kind(), "haproxy");
    c
}

fn detected(detail: &str) -> DriftFinding {
    DriftFinding::Detected { detail: detail.into() }
}

#[test]
fn drift_is_recorded_once_then_repaired_or_cleared() {
    let mut c = committed_failover();
    let o = drift_report(&mut c, 2, 10, 3, detected("app/dr is maint"));
    assert_eq!(o.rejected, None);
    let (kind, text) = o.record.unwrap();
    assert_eq!(kind, "drift");
    assert!(text.contains("step 4 (activate haproxy on dr) of failover workflow 10, epoch 2 drifted: app/dr is maint"), "{text}");
    assert_eq!(svc(&c).drift.len(), 1);
    // While it persists it is not recorded again.
    let again = drift_report(&mut c, 2, 10, 3, detected("app/dr is maint"));
    assert!(again.rejected.unwrap().contains("already recorded"));
    assert_eq!(again.record, None);
    // A failed repair keeps it and counts.
    let o =
        drift_report(&mut c, 2, 10, 3, DriftFinding::RepairFailed { error: "socket gone".into() });
    assert_eq!(o.record.unwrap().0, "drift_repair_failed");
    assert_eq!(svc(&c).drift[0].repairs_failed, 1);
    let alerts = svc(&c).drift_alerts(SVC, true);
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0].contains("1 repairs failed, the last: socket gone"), "{}", alerts[0]);
    // A repair clears it.
    let o = drift_report(&mut c, 2, 10, 3, DriftFinding::Repaired { detail: "set".into() });
    assert_eq!(o.record.unwrap().0, "drift_repaired");
    assert!(svc(&c).drift.is_empty());
    assert_eq!(svc(&c).drift_counts, DriftCounters { detected: 1, repaired: 1, repair_failed: 1 });
    // A repair or clearing of a drift not recorded changes nothing.
    let o = drift_report(&mut c, 2, 10, 3, DriftFinding::Repaired { detail: "set".into() });
    assert!(o.rejected.unwrap().contains("no drift is recorded"));
    // Found again, then it holds again without a repair.
    assert_eq!(drift_report(&mut c, 2, 10, 4, detected("A is 10.0.0.1")).rejected, None);
    let o =
        drift_report(&mut c, 2, 10, 4, DriftFinding::Cleared { detail: "A is 10.0.0.2".into() });
    assert_eq!(o.record.unwrap().0, "drift_cleared");
    assert!(svc(&c).drift.is_empty());
    assert_eq!(svc(&c).drift_counts.detected, 2);
}

#[test]
fn drift_of_a_stale_epoch_or_another_step_is_rejected() {
    let mut c = committed_failover();
    let before = c.clone();
    // A stale leader's report of the previous epoch.
    let o = drift_report(&mut c, 1, 10, 3, detected("x"));
    assert!(o.rejected.unwrap().contains("is at epoch 2"), "stale epoch");
    // A future epoch, another workflow, a step that is not a traffic step, no such step.
    assert!(drift_report(&mut c, 3, 10, 3, detected("x")).rejected.is_some());
    assert!(drift_report(&mut c, 2, 11, 3, detected("x")).rejected.is_some());
    let o = drift_report(&mut c, 2, 10, 2, detected("x"));
    assert!(o.rejected.unwrap().contains("not a traffic step"));
    assert!(drift_report(&mut c, 2, 10, 99, detected("x")).rejected.is_some());
    assert_eq!(c, before, "rejected reports change nothing");
}

#[test]
fn drift_is_not_recorded_while_a_workflow_runs_and_a_reprotect_keeps_the_move_checked() {
    let mut c = ControlState::default();
    apply_spec(&mut c, spec_with("commit = \"auto\""), None);
    assert_eq!(start(&mut c, 10, 1).rejected, None);
    let o = drift_report(&mut c, 2, 10, 3, detected("x"));
    assert!(o.rejected.is_some(), "not before the workflow committed");
    assert!(c.reconcilable(SVC, 10, 3, 2).unwrap_err().behind);
    run_all(&mut c, 10);
    assert_eq!(drift_report(&mut c, 2, 10, 3, detected("x")).rejected, None);
    // A reprotect replaces the workflow: the drift of the failover's step goes with it.
    let o = c.apply(
        20,
        &ControlRequest::StartReprotect {
            service: SVC.into(),
            expected_epoch: 2,
            reason: "back to normal".into(),
            author: "op".into(),
            at_unix_ms: 0,
        },
    );
    assert_eq!(o.rejected, None);
    // This spec has no reprotect runbook: the reprotect commits at once, and the failover's
    // drift stays recorded (its move still serves at this epoch).
    assert_eq!(svc(&c).phase, ServicePhase::Protecting);
    assert_eq!(svc(&c).drift.len(), 1);
    assert_eq!(svc(&c).traffic_workflow().map(|w| w.id), Some(10), "the failover still serves");
    assert!(c.reconcilable(SVC, 10, 3, 2).is_ok(), "its traffic steps are checked again");
    assert!(c.reconcilable(SVC, 20, 0, 2).is_err(), "the reprotect has no traffic step");
    let o = drift_report(&mut c, 2, 10, 3, DriftFinding::Repaired { detail: "set".into() });
    assert_eq!(o.rejected, None);
    assert!(svc(&c).drift.is_empty());
}

#[test]
fn reconcilable_is_judged_on_the_own_state_only() {
    let mut c = committed_failover();
    let r = c.reconcilable(SVC, 10, 3, 2).unwrap();
    assert_eq!(
        (r.epoch, r.from_site.as_str(), r.to_site.as_str(), r.repair),
        (2, "prod", "dr", true)
    );
    assert_eq!(r.step.action.kind(), "haproxy");
    let behind = c.reconcilable(SVC, 10, 3, 3).unwrap_err();
    assert!(behind.behind && behind.why.contains("has not caught up to epoch 3"), "{behind:?}");
    let stale = c.reconcilable(SVC, 10, 3, 1).unwrap_err();
    assert!(!stale.behind && stale.why.contains("superseded"), "{stale:?}");
    assert!(!c.reconcilable(SVC, 10, 2, 2).unwrap_err().behind, "an exec step is not reconciled");
    // A pause stops the repair, not the check.
    let o = c.apply(
        30,
        &ControlRequest::Pause {
            service: SVC.into(),
            reason: "maintenance".into(),
            until_unix_ms: None,
            author: "op".into(),
            at_unix_ms: 0,
        },
    );
    assert_eq!(o.rejected, None);
    assert!(!c.reconcilable(SVC, 10, 3, 2).unwrap().repair);
}
