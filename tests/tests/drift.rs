//! Drift after a committed failover, on the 2+2+1 multi-process cluster with a real HAProxy:
//!
//! ```text
//!   prod app killed ──▶ failover to dr: activate sets app/prod maint, app/dr ready
//!   HAProxy restarted (a reload without a state file) ──▶ app/prod ready, app/dr maint again
//!   ──▶ drover finds the drift within reconcile_every (1s), records it, runs the step again
//!       at the current epoch: traffic on dr again, history and /metrics say so
//!   paused, restarted again ──▶ drift found and shown (status ALERT, drover_drift 1), not
//!       repaired; resumed ──▶ repaired
//! ```
//!
//! and with a real Knot DNS server: a record edited by hand after the failover is found and
//! set again at the current epoch; a newer epoch written by hand is drift that is shown and
//! never overwritten.

use std::time::Duration;

use drover::actuate::dns::Expected;
use drover_tests::servers::{Backend, DnsServer, Haproxy};
use drover_tests::{
    failover_spec, failover_spec_head, require_program, AppSite, Apps, Cluster, Rig, LEADER_TIMEOUT,
};
use serde_json::Value;

const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// reconcile_every (1s) + the haproxy step's timeout (5s) for the check, the same again for
/// the repair, and margin for 5 debug processes on 2 cores.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(30);
const REQUESTS: usize = 8;

fn spec(apps: &Apps, haproxy: &Haproxy) -> String {
    let script = apps.script();
    let script = script.display();
    let head = failover_spec_head(apps).replacen(
        "commit = \"auto\"",
        "commit = \"auto\"\nreconcile_every = \"1s\"",
        1,
    );
    let socket = haproxy.admin_socket();
    let socket = socket.display();
    format!(
        r#"{head}
  [[service.runbook.prod.fence]]
  kind = "exec"
  run_on = "dr"
  command = ["{script}", "stop", "prod", "fenced"]
  timeout = "5s"

  [[service.runbook.prod.on_lease_lost]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "stop", "prod", "lease lost"]
  timeout = "2s"

  [[service.runbook.dr.activate]]
  kind = "exec"
  run_on = "dr"
  command = ["{script}", "start", "dr"]
  timeout = "10s"
  retries = 1

  [[service.runbook.dr.activate]]
  kind = "haproxy"
  run_on = "dr"
  socket = "{socket}"
  set = [ {{ server = "app/prod", state = "maint" }}, {{ server = "app/dr", state = "ready" }} ]
  timeout = "5s"

  [[service.runbook.dr.verify]]
  kind = "probe"
  checks = "dr"
  timeout = "20s"
"#
    )
}

/// The history records of `kind` for webshop.
fn records(r: &mut Rig, kind: &str) -> Vec<Value> {
    let all = r.c.history_all(50).unwrap_or_else(|e| r.fail(format!("history: {e}")));
    all.into_iter().filter(|x| x["kind"] == kind && x["service"] == "webshop").collect()
}

/// A drover metric of webshop on the first node that answers.
fn metric(r: &mut Rig, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let ids = r.c.ids();
    let m = ids.iter().find_map(|id| r.c.metrics(*id).ok())?;
    let mut all = vec![("service", "webshop")];
    all.extend_from_slice(labels);
    m.get(name, &all)
}

#[test]
fn haproxy_drift_after_a_failover_is_found_recorded_and_repaired() {
    let test = "haproxy_drift_after_a_failover_is_found_recorded_and_repaired";
    let Some(haproxy_bin) = require_program(test, "haproxy", "haproxy") else { return };

    let mut c = Cluster::builder(test).two_sites_and_witness().build();
    let (prod, dr) = (c.loopback_addr(100), c.loopback_addr(101));
    let sites = vec![
        AppSite { site: "prod".into(), addr: prod, netns: None },
        AppSite { site: "dr".into(), addr: dr, netns: None },
    ];
    let apps = Apps::new(&c.root().join("apps"), &c.bins().node, sites, None);
    let mut haproxy = Haproxy::start(
        &haproxy_bin,
        &[
            Backend { name: "prod", addr: prod, enabled: true },
            Backend { name: "dr", addr: dr, enabled: false },
        ],
    );
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let mut r = Rig::new(c, apps);
    r.start_app("prod", "initial deployment");
    let text = spec(&r.apps, &haproxy);
    r.apply_spec(&text, "the spec with an haproxy step, reconcile_every 1s");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);

    r.apps.kill_9("prod");
    r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    let served_from_dr = vec!["ok: webshop served from dr\n".to_string()];
    let answers = haproxy.answering("/healthz", REQUESTS);
    if answers != served_from_dr {
        r.fail(format!("after the failover HAProxy should reach dr only, got {answers:?}"));
    }
    // Some checks ran meanwhile and found nothing.
    std::thread::sleep(Duration::from_secs(3));
    if !records(&mut r, "drift").is_empty() {
        r.fail("a drift was recorded although HAProxy held the failover's states");
    }

    // A reload loses the runtime states: traffic goes back to (dead) prod.
    haproxy.restart();
    let reverted = haproxy.servers_state();
    eprintln!("after the restart: {reverted:?}");
    r.wait("the drift recorded and repaired, HAProxy reaching dr again", REPAIR_TIMEOUT, |r| {
        let drift = records(r, "drift");
        let repaired = records(r, "drift_repaired");
        let answers = haproxy.answering("/healthz", REQUESTS);
        if drift.len() == 1 && repaired.len() == 1 && answers == served_from_dr {
            Ok(())
        } else {
            Err(format!("drift {drift:?}, repaired {repaired:?}, HAProxy answers {answers:?}"))
        }
    });
    let drift = records(&mut r, "drift");
    let text = drift[0]["text"].as_str().unwrap_or_default().to_string();
    let expected = "webshop: step 4 (activate haproxy on dr) of failover workflow";
    if !(text.contains(expected)
        && text.contains("epoch 2 drifted")
        && text.contains("app/prod was set to maint"))
    {
        r.fail(format!("the drift record should name the step, epoch and server: {text:?}"));
    }
    let repaired = records(&mut r, "drift_repaired");
    let text = repaired[0]["text"].as_str().unwrap_or_default().to_string();
    if !text.contains("repaired at epoch 2") || !text.contains("set and read back") {
        r.fail(format!("the repair record should say what ran at which epoch: {text:?}"));
    }
    let state = haproxy.servers_state();
    let admin = |name: &str| state.iter().find(|(n, _, _)| n == name).map(|(_, a, _)| *a);
    if admin("prod").is_none_or(|a| a & 1 == 0) || admin("dr").is_none_or(|a| a & 1 != 0) {
        r.fail(format!("after the repair app/prod should be maint and app/dr ready: {state:?}"));
    }
    let detected = metric(&mut r, "drover_drift_detected_total", &[]);
    let ok = metric(&mut r, "drover_drift_repairs_total", &[("result", "ok")]);
    let gauge = metric(&mut r, "drover_drift", &[]);
    if detected != Some(1.0) || ok != Some(1.0) || gauge.is_some() {
        r.fail(format!(
            "metrics: drover_drift_detected_total {detected:?} (want 1), \
             drover_drift_repairs_total ok {ok:?} (want 1), drover_drift {gauge:?} (want none)"
        ));
    }

    // Paused: found and shown, never repaired; resumed: repaired.
    let out = r.c.ctl(&["pause", "webshop", "--reason", "drift test"]);
    if !out.success() {
        r.fail(format!("pause: {out:?}"));
    }
    haproxy.restart();
    r.wait("the second drift shown, not repaired", REPAIR_TIMEOUT, |r| {
        let v = r.service()?;
        let shown = v["drift"].as_array().is_some_and(|d| d.len() == 1);
        let gauge = metric(r, "drover_drift", &[("step", "4")]);
        if records(r, "drift").len() == 2 && shown && gauge == Some(1.0) {
            Ok(())
        } else {
            Err(format!("status {v}, drover_drift {gauge:?}"))
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    if records(&mut r, "drift").len() != 2 || records(&mut r, "drift_repaired").len() != 1 {
        r.fail("a drift that persists must not be recorded again, nor repaired while paused");
    }
    let status = r.c.ctl(&["status"]);
    if !status.stdout.contains("ALERT: webshop: drift at step 4")
        || !status.stdout.contains("is paused")
    {
        r.fail(format!("status should show the drift as an ALERT line: {}", status.stdout));
    }
    let out = r.c.ctl(&["resume", "webshop"]);
    if !out.success() {
        r.fail(format!("resume: {out:?}"));
    }
    r.wait("the second drift repaired after the resume", REPAIR_TIMEOUT, |r| {
        let repaired = records(r, "drift_repaired").len();
        let answers = haproxy.answering("/healthz", REQUESTS);
        if repaired == 2 && answers == served_from_dr {
            Ok(())
        } else {
            Err(format!("{repaired} repairs, HAProxy answers {answers:?}"))
        }
    });
}

const ZONE: &str = "drover.test.";

#[test]
fn dns_drift_is_repaired_at_the_current_epoch_and_a_newer_epoch_is_left_alone() {
    let test = "dns_drift_is_repaired_at_the_current_epoch_and_a_newer_epoch_is_left_alone";
    let mut c = Cluster::builder(test).two_sites_and_witness().build();
    let (prod, dr) = (c.loopback_addr(100), c.loopback_addr(101));
    let sites = vec![
        AppSite { site: "prod".into(), addr: prod, netns: None },
        AppSite { site: "dr".into(), addr: dr, netns: None },
    ];
    let apps = Apps::new(&c.root().join("apps"), &c.bins().node, sites, None);
    let prod_ip = prod.ip().to_string();
    let Some(knot) = DnsServer::knot(test, ZONE, &[("www", "A", &prod_ip)]) else { return };
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let mut r = Rig::new(c, apps);
    r.start_app("prod", "initial deployment");
    let key = knot.key();
    let head = failover_spec(&r.apps).replacen(
        "commit = \"auto\"",
        "commit = \"auto\"\nreconcile_every = \"1s\"",
        1,
    );
    let spec = format!(
        r#"{head}
  [[service.runbook.dr.activate]]
  kind = "dns"
  run_on = "dr"
  server = "{server}"
  zone = "{ZONE}"
  tsig = {{ name = "{name}", algorithm = "{algorithm}", secret_file = "{secret}" }}
  records = [ {{ name = "www.{ZONE}", type = "A", ttl = 30, value = "{dr_ip}" }} ]
  timeout = "5s"
"#,
        server = knot.server(),
        name = key.name,
        algorithm = key.algorithm,
        secret = key.secret_file,
        dr_ip = dr.ip(),
    );
    r.apply_spec(&spec, "the spec with a dns step, reconcile_every 1s");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    r.apps.kill_9("prod");
    r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    let www = format!("www.{ZONE}");
    let dr_ip = dr.ip().to_string();
    if knot.dig(&www, "A") != [dr_ip.clone()] {
        r.fail(format!(
            "after the failover {www} should be dr's address: {:?}",
            knot.dig(&www, "A")
        ));
    }

    // By hand, www back to prod (the epoch record kept at 2): found and set again.
    knot.set_by_hand(&www, &prod_ip, 2, Expected::Epoch(2));
    r.wait("the dns drift recorded and repaired", REPAIR_TIMEOUT, |r| {
        let drift = records(r, "drift");
        let repaired = records(r, "drift_repaired");
        let seen = knot.dig(&www, "A");
        if drift.len() == 1 && repaired.len() == 1 && seen == [dr_ip.clone()] {
            Ok(())
        } else {
            Err(format!("drift {drift:?}, repaired {repaired:?}, {www} is {seen:?}"))
        }
    });
    let text = records(&mut r, "drift")[0]["text"].as_str().unwrap_or_default().to_string();
    let names = format!("www.{ZONE} A answers {prod_ip} (the step sets {dr_ip})");
    if !text.contains("activate dns on dr") || !text.contains(&names) {
        r.fail(format!(
            "the drift record should name the step and what the server answered: {text:?}"
        ));
    }
    if knot.dig(&format!("_drover.{www}"), "TXT") != ["2"] {
        r.fail("the repair must write the current epoch, 2");
    }

    // A newer epoch (9) written by hand: drift, shown, never overwritten with epoch 2.
    knot.set_by_hand(&www, "198.18.9.9", 9, Expected::Epoch(2));
    r.wait("the newer epoch shown as drift", REPAIR_TIMEOUT, |r| {
        let drift = records(r, "drift");
        let status = r.c.ctl(&["status"]);
        if drift.len() == 2 && status.stdout.contains("holds epoch 9, newer") {
            Ok(())
        } else {
            Err(format!("drift {drift:?}, status {}", status.stdout))
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let seen = (knot.dig(&www, "A"), knot.dig(&format!("_drover.{www}"), "TXT"));
    if seen != (vec!["198.18.9.9".to_string()], vec!["9".to_string()]) {
        r.fail(format!("epoch 9's records must stay: {seen:?}"));
    }
    if records(&mut r, "drift_repaired").len() != 1 {
        r.fail("a newer epoch must not be repaired over");
    }
}
