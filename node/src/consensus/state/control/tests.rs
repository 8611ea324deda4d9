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
