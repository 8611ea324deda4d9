//! Forged Control messages against a real failover setup (2 prod + 2 dr controllers and a
//! witness, the stand-in applications and runbooks of `failover.rs`), sent by a rogue client
//! built from the generated stubs:
//!
//! - `forged_probe_reports_do_not_fail_over`: "prod is down" reports in the name of other
//!   observers, every 50 ms for 10 s, to the leader, while prod is healthy.
//! - `run_step_only_from_the_leader_and_as_committed`: while dr's activate step runs, RunStep
//!   requests for that step with the admin certificate, a non-leader member's certificate, and
//!   the leader's own certificate with another from/to or repeated as is.

use std::time::{Duration, Instant};

use drover_tests::rogue::{pb, Creds, Rogue};
use drover_tests::{steps, unix_ms, Cluster, NodeId, Rig, LEADER_TIMEOUT, SERVICE};
use tonic::Code;

const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the forged reports are sent.
const FORGING: Duration = Duration::from_secs(10);

fn rig(test: &str) -> Rig {
    Rig::loopback(test)
}

fn rogue(c: &Cluster, target: NodeId, creds: &Creds) -> Rogue {
    Rogue::new(c.grpc_addr(target), c.name(target), creds)
}

fn prod_down(observer: NodeId) -> pb::ProbeReports {
    let report = |site: &str, verdict: &str| pb::ProbeReport {
        service: SERVICE.into(),
        site: site.into(),
        verdict: verdict.into(),
        detail: "forged".into(),
        age_ms: 0,
        lag: None,
        ready: Some("healthy".into()),
        ..Default::default()
    };
    pb::ProbeReports {
        observer,
        reports: vec![report("prod", "unhealthy"), report("dr", "healthy")],
        relayed: false,
        fenced: Vec::new(),
    }
}

#[test]
fn forged_probe_reports_do_not_fail_over() {
    let mut r = rig("forged_reports");
    r.start_app("prod", "initial deployment");
    r.apply_failover_spec();
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    let leader = r.c.wait_for_leader(LEADER_TIMEOUT);
    let certs = r.c.certs_dir();
    let ids = r.c.ids();
    let liar = ids.iter().copied().find(|&id| id != leader).unwrap();
    let admin = rogue(&r.c, leader, &Creds::named(&certs, "admin"));
    let member = rogue(&r.c, leader, &Creds::named(&certs, r.c.name(liar)));
    let since_ms = unix_ms();
    let mut problems = Vec::new();
    let started = Instant::now();
    while started.elapsed() < FORGING {
        for &observer in &ids {
            match admin.report_probes(prod_down(observer)) {
                Err(s) if s.code() == Code::PermissionDenied => {}
                other => problems
                    .push(format!("report as {observer} with the admin certificate: {other:?}")),
            }
            if observer != liar {
                match member.report_probes(prod_down(observer)) {
                    Err(s) if s.code() == Code::PermissionDenied => {}
                    other => problems.push(format!(
                        "report as {observer} with {}'s certificate: {other:?}",
                        r.c.name(liar)
                    )),
                }
            }
        }
        // The lying member may report its own (false) view: one vantage point decides nothing.
        let _ = member.report_probes(prod_down(liar));
        // Nor may it pass on "relayed" reports for observers that reach the leader themselves:
        // the leader takes relays only for observers it does not hear from.
        for &observer in ids.iter().filter(|&&o| o != liar) {
            let _ = member.report_probes(pb::ProbeReports { relayed: true, ..prod_down(observer) });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Past down_after (2s) with margin: still protecting in prod, nothing run.
    std::thread::sleep(Duration::from_secs(3));
    let svc = r.service().unwrap_or_else(|e| panic!("status: {e}"));
    if svc["phase"] != "protecting" || svc["active_site"] != "prod" || svc["epoch"] != 1 {
        problems.push(format!("the service moved: {svc}"));
    }
    problems.truncate(20);
    if !problems.is_empty() {
        r.fail(format!("forged probe reports got through:\n- {}", problems.join("\n- ")));
    }
    r.no_step_before(unix_ms(), &format!("the end of the forged reports (from {since_ms} ms)"));
}

#[test]
fn run_step_only_from_the_leader_and_as_committed() {
    let mut r = rig("forged_run_step");
    r.start_app("prod", "initial deployment");
    r.apply_failover_spec();
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    // dr's activate step (`app.sh start dr`) takes 8 s (its timeout is 10 s): time to send
    // requests while it runs.
    r.apps.slow_start("dr", 8);
    r.apps.kill_9("prod");
    let (svc, index, step) = r.wait("dr's activate step to run", FAILOVER_TIMEOUT, |r| {
        let svc = r.service()?;
        let all = steps(&svc);
        match all.iter().position(|s| s["stage"] == "activate" && s["status"] == "running") {
            Some(i) => Ok((svc.clone(), i, all[i].clone())),
            None => Err(format!("service {svc}")),
        }
    });
    let leader = r.c.wait_for_leader(LEADER_TIMEOUT);
    let wf = &svc["workflow"];
    let req = pb::RunStepRequest {
        service: SERVICE.into(),
        workflow_id: wf["id"].as_u64().unwrap_or(0),
        step: index as u64,
        attempt: step["attempt"].as_u64().unwrap_or(1) as u32,
        epoch: wf["epoch"].as_u64().unwrap_or(0),
        from_site: "prod".into(),
        to_site: "dr".into(),
    };
    let certs = r.c.certs_dir();
    let dr: Vec<NodeId> = ["dr-1", "dr-2"].iter().map(|n| r.c.id_of(n)).collect();
    let not_leader = ["prod-2", "witness", "prod-1"]
        .iter()
        .map(|n| r.c.id_of(n))
        .find(|&id| id != leader)
        .unwrap();
    let mut problems = Vec::new();
    // The node running the step refuses a second copy of it, even from the leader.
    // The leader runs a step of its own site itself; otherwise a dr node logs that it runs it.
    let running_line = format!("step={} attempt={}", index + 1, req.attempt);
    let runner = if dr.contains(&leader) {
        leader
    } else {
        r.c.wait_for("a dr node to log that it runs the step", Duration::from_secs(10), |c| {
            dr.iter()
                .copied()
                .find(|&id| {
                    std::fs::read_to_string(c.log_path(id)).is_ok_and(|log| {
                        log.lines().any(|l| {
                            l.contains("running step for the leader") && l.contains(&running_line)
                        })
                    })
                })
                .ok_or_else(|| format!("no dr node logged running {running_line} yet"))
        })
    };
    let leader_cert = Creds::named(&certs, r.c.name(leader));
    match rogue(&r.c, runner, &leader_cert).run_step(req.clone()) {
        Ok(reply) if !reply.ok && reply.detail.contains("already running") => {}
        other => problems.push(format!("the same RunStep again to the node running it: {other:?}")),
    }
    for &to in &dr {
        let name = r.c.name(to).to_owned();
        for (label, cert) in [
            ("admin", "admin".to_string()),
            ("a non-leader member's", r.c.name(not_leader).to_owned()),
        ] {
            match rogue(&r.c, to, &Creds::named(&certs, &cert)).run_step(req.clone()) {
                Err(s) if s.code() == Code::PermissionDenied => {}
                other => problems
                    .push(format!("RunStep to {name} with the {label} certificate: {other:?}")),
            }
        }
        // The leader's own certificate, with the environment swapped.
        let forged =
            pb::RunStepRequest { from_site: "dr".into(), to_site: "prod".into(), ..req.clone() };
        let leader_cert = Creds::named(&certs, r.c.name(leader));
        match rogue(&r.c, to, &leader_cert).run_step(forged) {
            Ok(reply) if !reply.ok && reply.detail.contains("refused") => {}
            other => problems.push(format!("RunStep to {name} with another from/to: {other:?}")),
        }
    }
    r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    // `app.sh start dr` ran once per attempt the leader made, never for a forged request.
    let attempts = r
        .service()
        .ok()
        .and_then(|s| steps(&s).get(index).and_then(|st| st["attempt"].as_u64()))
        .unwrap_or(1);
    let starts: Vec<String> = r
        .apps
        .ledger()
        .into_iter()
        .filter(|l| l.by != "harness" && l.site == "dr" && l.action == "start")
        .map(|l| l.raw)
        .collect();
    if starts.len() as u64 != attempts {
        problems.push(format!(
            "dr start ran {} times for {attempts} attempt(s): {starts:?}",
            starts.len()
        ));
    }
    if !problems.is_empty() {
        r.fail(format!("forged RunStep requests got through:\n- {}", problems.join("\n- ")));
    }
}
