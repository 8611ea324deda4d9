//! A self-fenced active site serves again (issue 9, case 9; DESIGN.md 7 A3).
//!
//! The active site's members stall (SIGSTOP) for longer than the lease but not for as long as
//! `down_after`: when they resume, their lease has run out on their own clocks and they
//! self-fence (`on_lease_lost` stops the application), while the cluster still records the
//! site active. What an operator relies on: drover starts the site again by itself (a
//! recorded `reactivate` workflow: the site's activate runbook at a new epoch), after which
//! `/v1/services/webshop/active` answers 200 on the site's nodes and its application serves;
//! no failover happens.

use std::thread;
use std::time::Duration;

use drover_tests::{failover_spec, unix_ms, NodeId, Rig, LEADER_TIMEOUT};

const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the spec's lease_ttl (8s) plus a renewal period, shorter than down_after (30s).
const STALL: Duration = Duration::from_secs(12);
/// From the end of the stall to prod serving again: self-fence (up to 2s), a report, the
/// activate runbook and its verify probe, on a loaded machine.
const BACK_TIMEOUT: Duration = Duration::from_secs(40);

/// The failover spec with an activate runbook for prod (so prod can be started again) and a
/// `down_after` longer than the stall plus the time to reactivate.
fn spec(r: &Rig) -> String {
    let script = r.apps.script();
    let script = script.display();
    failover_spec(&r.apps)
        .replace("down_after = \"2s\"", "down_after = \"30s\"")
        .replace("up_after = \"5s\"", "up_after = \"30s\"")
        + &format!(
            r#"
  [[service.runbook.prod.activate]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "start", "prod"]
  timeout = "10s"
  retries = 1
"#
        )
}

/// Kills (SIGKILL) and restarts leaders until one outside prod leads.
fn leader_outside_prod(r: &mut Rig) -> NodeId {
    for _ in 0..12 {
        let leader = r.wait("a leader", LEADER_TIMEOUT, |r| {
            let s = r.ctl_json(&["status"])?;
            s["leader_id"].as_u64().ok_or_else(|| format!("status {s}"))
        });
        if r.c.site(leader) != "prod" {
            return leader;
        }
        r.c.kill_9(leader);
        r.wait("another leader", LEADER_TIMEOUT, |r| {
            let s = r.ctl_json(&["status"])?;
            match s["leader_id"].as_u64() {
                Some(l) if l != leader => Ok(()),
                _ => Err(format!("status {s}")),
            }
        });
        r.c.restart(leader);
        thread::sleep(Duration::from_secs(2));
    }
    r.fail("could not move the leader out of prod in 12 tries");
}

#[test]
fn a_self_fenced_active_site_is_reactivated_and_serves_again_without_a_failover() {
    let mut r = Rig::loopback(
        "a_self_fenced_active_site_is_reactivated_and_serves_again_without_a_failover",
    );
    r.start_app("prod", "initial deployment");
    let text = spec(&r);
    r.apply_spec(&text, "the failover spec with a prod activate runbook");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    leader_outside_prod(&mut r);
    // The stalled members cannot answer; ask the others.
    let others: Vec<NodeId> = r.c.ids().into_iter().filter(|&id| r.c.site(id) != "prod").collect();
    r.talk_to(Some(others));

    let prod = r.site_ids("prod");
    let since = unix_ms();
    for &id in &prod {
        r.c.signal(id, libc::SIGSTOP);
    }
    thread::sleep(STALL);
    for &id in &prod {
        r.c.signal(id, libc::SIGCONT);
    }
    let resumed = unix_ms();

    // They self-fence: their lease ran out during the stall.
    r.wait("prod's self-fence (on_lease_lost)", Duration::from_secs(20), |r| {
        r.apps.find("prod", "stop", Some("lease lost"), Some(1)).ok_or("not yet".to_string())
    });
    // Then drover starts prod again at a new epoch, and /active follows.
    let start = r.wait("prod started again by its activate runbook", BACK_TIMEOUT, |r| {
        r.apps.find("prod", "start", None, Some(2)).ok_or("not yet".to_string())
    });
    for &id in &prod {
        let name = r.c.name(id).to_owned();
        r.wait(&format!("/v1/services/webshop/active on {name}: 200"), BACK_TIMEOUT, |r| {
            match r.c.http_get(id, "/v1/services/webshop/active")? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {}", body.trim())),
            }
        });
    }
    match r.apps.healthz("prod") {
        Ok((200, _)) => {}
        other => r.fail(format!("prod's application must serve again: {other:?}")),
    }
    let svc = r.wait("the service back in protecting", BACK_TIMEOUT, |r| {
        let svc = r.service()?;
        match svc["phase"].as_str() {
            Some("protecting") => Ok(svc),
            _ => Err(format!("{svc}")),
        }
    });
    if svc["active_site"] != "prod" || svc["epoch"] != 2 || svc["workflow"]["kind"] != "reactivate"
    {
        r.fail(format!("prod must be active at epoch 2 after a reactivation: {svc}"));
    }
    // No failover: nothing ran against prod but the self-fence and the start, nothing on dr.
    let ran: Vec<String> = r
        .apps
        .ledger()
        .into_iter()
        .filter(|l| l.by != "harness" && l.unix_ms >= since)
        .map(|l| l.raw)
        .collect();
    let expected = |l: &String| {
        l.contains("prod stop (lease lost) epoch=1") || l.contains("prod start epoch=2")
    };
    if ran.iter().any(|l| !expected(l)) || r.apps.find("dr", "start", None, None).is_some() {
        r.fail(format!("only the self-fence and prod's start may have run: {ran:?}"));
    }
    let history = r.ctl_json(&["history", "--limit", "1000"]).unwrap_or_default().to_string();
    if !history.contains("reactivation of webshop on prod started, epoch 2") {
        r.fail(format!("the reactivation must be in the history: {history}"));
    }
    eprintln!(
        "prod resumed at {resumed}, started again {:.1}s later",
        start.unix_ms.saturating_sub(resumed) as f64 / 1000.0
    );
}
