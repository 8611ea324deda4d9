//! The operator workflows of a DR pair's life on real processes (2 prod + 2 dr controllers and
//! a witness on loopback, a stand-in application per site, runbooks through `app.sh` with its
//! ledger): planned switchover and failback, failover then reprotect then an automatic
//! failover the other way, a forced failover past a readiness gate that says no, a pause with
//! an expiry, a switchover whose new site fails to start, two operators racing.
//!
//! What a user relies on: the old site is stopped before the new one starts, in both
//! directions, and each move is a new epoch; a switchover that cannot finish leaves the
//! service on the site it came from; every operator action is in the history under the
//! operator's identity.

use std::time::{Duration, Instant};

use drover_tests::{lifecycle_spec, LedgerLine, Rig};
use serde_json::Value;

/// Spec applied and observers agreeing that prod is up.
const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// A failover or switchover to its end (see failover.rs for the budget).
const MOVE_TIMEOUT: Duration = Duration::from_secs(40);

fn rig(test: &str) -> Rig {
    let mut r = Rig::loopback(test);
    r.start_app("prod", "initial deployment");
    let text = lifecycle_spec(&r.apps);
    r.apply_spec(&text, "the lifecycle spec");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    r
}

/// droverctl (as the admin, against every running node) with `args`; the exit code and output.
fn ctl(r: &mut Rig, args: &[&str]) -> (Option<i32>, String, String) {
    let out = r.c.ctl(args);
    (out.code, out.stdout, out.stderr)
}

/// Waits until the service is in `phase`, active on `site`, at `epoch`.
fn wait_state(r: &mut Rig, phase: &str, site: &str, epoch: u64) -> Value {
    r.wait(&format!("webshop {phase}, active {site}, epoch {epoch}"), MOVE_TIMEOUT, |r| {
        let v = r.service()?;
        if v["phase"] == phase && v["active_site"] == site && v["epoch"] == epoch {
            Ok(v)
        } else {
            Err(format!("service {v}"))
        }
    })
}

/// The first ledger line matching, or a failure naming it.
fn line(r: &mut Rig, site: &str, action: &str, why: Option<&str>, epoch: u64) -> LedgerLine {
    let ledger = r.apps.ledger();
    match ledger.into_iter().find(|l| l.is(site, action, why, Some(epoch))) {
        Some(l) => l,
        None => r.fail(format!(
            "the ledger has no `{site} {action}{} epoch={epoch}`",
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        )),
    }
}

/// The history texts with their authors.
fn history(r: &mut Rig) -> Vec<(String, String)> {
    let h = r.ctl_json(&["history", "--limit", "1000"]).unwrap_or_else(|e| r.fail(e));
    h["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|x| {
                    (
                        x["text"].as_str().unwrap_or("").to_string(),
                        x["author"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn switchover_and_failback_round_trip() {
    let mut r = rig("switchover_and_failback_round_trip");
    // The dry run first: the gates pass, and it shows the plan without changing anything.
    let (code, out, err) = ctl(&mut r, &["plan", "webshop", "--to", "dr", "--switchover"]);
    for want in ["deactivate", "lease_wait", "activate", "every gate passes"] {
        if code != Some(0) || !out.contains(want) {
            r.fail(format!("plan should show {want:?}; exit {code:?}\n{out}\n{err}"));
        }
    }
    let v = r.service().unwrap_or_else(|e| r.fail(e));
    if v["epoch"] != 1 || v["phase"] != "protecting" {
        r.fail(format!("plan must change nothing: {v}"));
    }
    let (code, out, err) = ctl(&mut r, &["switchover", "webshop", "--to", "dr", "--wait"]);
    if code != Some(0) {
        r.fail(format!("switchover --wait exited {code:?}\nstdout: {out}\nstderr: {err}"));
    }
    for want in ["switchover of webshop from prod to dr", "deactivate exec on prod", "committed"] {
        if !out.contains(want) {
            r.fail(format!("`switchover --wait` should print {want:?}; it printed:\n{out}"));
        }
    }
    wait_state(&mut r, "failed_over", "dr", 2);
    // prod stopped gracefully (its deactivate runbook) before dr started, at epoch 2, and
    // not by self-fencing.
    let stop = line(&mut r, "prod", "stop", Some("switchover"), 2);
    let start = line(&mut r, "dr", "start", None, 2);
    if stop.unix_ms >= start.unix_ms {
        r.fail(format!("prod must stop before dr starts: {:?} then {:?}", stop.raw, start.raw));
    }
    if let Some(l) = r.apps.ledger().into_iter().find(|l| l.why.as_deref() == Some("lease lost")) {
        r.fail(format!("a switchover must not self-fence the old site: {:?}", l.raw));
    }

    // Failback: a switchover back to prod, the primary: protecting again at epoch 3.
    let (code, out, err) = ctl(&mut r, &["switchover", "webshop", "--to", "prod", "--wait"]);
    if code != Some(0) {
        r.fail(format!("failback --wait exited {code:?}\nstdout: {out}\nstderr: {err}"));
    }
    wait_state(&mut r, "protecting", "prod", 3);
    let stop = line(&mut r, "dr", "stop", Some("switchover"), 3);
    let start = line(&mut r, "prod", "start", None, 3);
    if stop.unix_ms >= start.unix_ms {
        r.fail(format!("dr must stop before prod starts: {:?} then {:?}", stop.raw, start.raw));
    }
    // The history filtered to this service's switchovers: exactly the two starts.
    let h = r
        .ctl_json(&["history", "webshop", "--kind", "switchover", "--since", "10m"])
        .unwrap_or_else(|e| r.fail(e));
    let recs = h["records"].as_array().cloned().unwrap_or_default();
    if recs.len() != 2
        || recs.iter().any(|x| x["kind"] != "switchover" || x["service"] != "webshop")
    {
        r.fail(format!("history webshop --kind switchover: {h}"));
    }
    // Each move is in the history under the operator's identity, not a node's.
    let h = history(&mut r);
    let started: Vec<&(String, String)> =
        h.iter().filter(|(t, _)| t.starts_with("switchover of webshop from")).collect();
    if started.len() != 2
        || started.iter().any(|(_, a)| a.is_empty() || a.contains("prod-") || a.contains("dr-"))
    {
        r.fail(format!("expected two switchover records by the operator, got {started:?}"));
    }
}

#[test]
fn failover_reprotect_then_automatic_failover_the_other_way() {
    let mut r = rig("failover_reprotect_then_automatic_failover_the_other_way");
    r.apps.kill_9("prod");
    wait_state(&mut r, "failed_over", "dr", 2);
    // No automatic failover back to prod before a reprotect: dr is not the primary.
    let (code, out, err) = ctl(&mut r, &["reprotect", "webshop", "--wait"]);
    if code != Some(0) {
        r.fail(format!("reprotect --wait exited {code:?}\nstdout: {out}\nstderr: {err}"));
    }
    let v = wait_state(&mut r, "protecting", "dr", 2);
    for site in ["dr", "prod"] {
        line(&mut r, site, "note", Some("reprotect"), 2);
    }
    // The cooldown of the automatic failover still holds until acked.
    if !v["mode"].as_str().unwrap_or("").starts_with("cooldown") {
        r.fail(format!("reprotect must keep the cooldown: {v}"));
    }
    let (code, _, err) = ctl(&mut r, &["ack", "webshop"]);
    if code != Some(0) {
        r.fail(format!("ack failed: {err}"));
    }
    // dr is now what automatic failover protects: losing it fails over to prod.
    r.apps.kill_9("dr");
    wait_state(&mut r, "failed_over", "prod", 3);
    line(&mut r, "dr", "stop", Some("fence"), 3);
    line(&mut r, "prod", "start", None, 3);
}

#[test]
fn a_forced_failover_passes_a_readiness_check_that_says_no() {
    let mut r = Rig::loopback("a_forced_failover_passes_a_readiness_check_that_says_no");
    r.start_app("prod", "initial deployment");
    // dr's readiness check connects to a port nothing listens on: dr is never ready.
    let gate = "initial_active = \"prod\"\n  [[service.readiness]]\n  site = \"dr\"\n  kind = \"tcp\"\n  address = \"127.0.0.1:9\"\n  interval = \"500ms\"\n  timeout = \"400ms\"\n";
    let text = lifecycle_spec(&r.apps).replacen("initial_active = \"prod\"\n", gate, 1);
    r.apply_spec(&text, "the lifecycle spec with a failing readiness check");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    let refused =
        r.wait("the leader's gates to refuse the failover", Duration::from_secs(15), |r| {
            let (code, _, err) =
                ctl(r, &["failover", "webshop", "--to", "dr", "--reason", "drill"]);
            match code {
                Some(0) => {
                    Ok(Err("an unforced failover to an unready dr was accepted".to_string()))
                }
                _ if err.contains("dr is not ready") => Ok(Ok(err)),
                _ => Err(err),
            }
        });
    if let Err(e) = refused {
        r.fail(e);
    }
    if !refused.as_ref().is_ok_and(|e| e.contains("--force")) {
        r.fail(format!("the refusal should say how to force it: {refused:?}"));
    }
    let (code, out, err) = ctl(
        &mut r,
        &["failover", "webshop", "--to", "dr", "--reason", "prod storage lost", "--force"],
    );
    if code != Some(0) {
        r.fail(format!("forced failover exited {code:?}\nstdout: {out}\nstderr: {err}"));
    }
    wait_state(&mut r, "failed_over", "dr", 2);
    // Fencing still ran: prod was stopped before dr started.
    let stop = line(&mut r, "prod", "stop", Some("fence"), 2);
    let start = line(&mut r, "dr", "start", None, 2);
    if stop.unix_ms >= start.unix_ms {
        r.fail(format!(
            "prod must be fenced before dr starts: {:?} then {:?}",
            stop.raw, start.raw
        ));
    }
    let h = history(&mut r);
    if !h.iter().any(|(t, _)| {
        t.starts_with("forced manual failover of webshop") && t.contains("prod storage lost")
    }) {
        r.fail(format!("the history should record the forced failover and its reason: {h:?}"));
    }
}

#[test]
fn a_pause_holds_automatic_failover_and_its_expiry_rearms_it() {
    let mut r = rig("a_pause_holds_automatic_failover_and_its_expiry_rearms_it");
    let (code, out, err) =
        ctl(&mut r, &["pause", "webshop", "--reason", "network maintenance", "--for", "10s"]);
    if code != Some(0) || !out.contains("paused for 10s") {
        r.fail(format!("pause exited {code:?}\nstdout: {out}\nstderr: {err}"));
    }
    let paused_at = Instant::now();
    r.apps.kill_9("prod");
    // down_after is 2s: without the pause the failover would start ~2s from now.
    while paused_at.elapsed() < Duration::from_secs(8) {
        let v = r.service().unwrap_or_else(|e| r.fail(e));
        if v["phase"] != "protecting" || v["epoch"] != 1 {
            r.fail(format!("a failover started while automatic action was paused: {v}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_state(&mut r, "failed_over", "dr", 2);
    let h = history(&mut r);
    if !h.iter().any(|(t, _)| t.contains("pause of webshop") && t.contains("expired")) {
        r.fail(format!("the history should say the pause expired: {h:?}"));
    }
}

#[test]
fn a_switchover_whose_new_site_fails_to_start_returns_to_prod() {
    let mut r = rig("a_switchover_whose_new_site_fails_to_start_returns_to_prod");
    std::fs::write(r.apps.dir().join("fail-start-dr"), "").unwrap_or_else(|e| r.fail(e));
    // An operator watches before it starts: watch waits for the workflow, follows it, and
    // exits 1 when it fails.
    let endpoints = r.c.endpoints();
    let certs = r.c.certs_dir().to_string_lossy().into_owned();
    let watched = std::thread::scope(|s| {
        let c = &r.c;
        let args = ["--endpoint", &endpoints, "--tls-dir", &certs, "watch", "webshop"];
        let watch = s.spawn(move || c.ctl_raw(&args));
        std::thread::sleep(Duration::from_secs(1));
        let switch = c.ctl_raw(&[
            "--endpoint",
            &endpoints,
            "--tls-dir",
            &certs,
            "switchover",
            "webshop",
            "--to",
            "dr",
        ]);
        (switch, watch.join().expect("watch thread"))
    });
    let (switch, watch) = watched;
    if !switch.success() {
        r.fail(format!("the switchover was not accepted: {switch:?}"));
    }
    if watch.code != Some(1) || !watch.stderr.contains("rolled back") {
        r.fail(format!("watch of a switchover that rolls back must exit 1 and say so: {watch:?}"));
    }
    if !watch.stdout.contains("waiting for one of webshop to start")
        || !watch.stdout.contains("undo exec on dr")
    {
        r.fail(format!(
            "watch should wait for the workflow and show the way back: {}",
            watch.stdout
        ));
    }
    let v = wait_state(&mut r, "switchover_failed", "prod", 2);
    // prod was deactivated, dr failed to start, dr was deactivated, prod started again.
    let stop = line(&mut r, "prod", "stop", Some("switchover"), 2);
    let undo = line(&mut r, "dr", "stop", Some("switchover"), 2);
    let restart = line(&mut r, "prod", "start", None, 2);
    if !(stop.unix_ms <= undo.unix_ms && undo.unix_ms <= restart.unix_ms) {
        r.fail(format!(
            "expected prod stop, dr stop, prod start in order: {stop:?} {undo:?} {restart:?}"
        ));
    }
    if v["lease_site"] != "prod" {
        r.fail(format!("prod must hold the lease again: {v}"));
    }
    r.wait("the prod application to answer again", Duration::from_secs(20), |r| {
        match r.apps.healthz("prod")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    });
}

#[test]
fn two_operators_racing_one_switchover_wins() {
    let mut r = rig("two_operators_racing_one_switchover_wins");
    let args = |to: &'static str| {
        vec!["switchover".to_string(), "webshop".into(), "--to".into(), to.into()]
    };
    let endpoints = r.c.endpoints();
    let certs = r.c.certs_dir().to_string_lossy().into_owned();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [args("dr"), args("dr")]
            .into_iter()
            .map(|a| {
                let mut all = vec![
                    "--endpoint".to_string(),
                    endpoints.clone(),
                    "--tls-dir".into(),
                    certs.clone(),
                ];
                all.extend(a);
                let c = &r.c;
                s.spawn(move || c.ctl_raw(&all))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("droverctl thread")).collect()
    });
    let won = results.iter().filter(|o| o.success()).count();
    let lost: Vec<&String> = results.iter().filter(|o| !o.success()).map(|o| &o.stderr).collect();
    if won != 1
        || !lost
            .iter()
            .all(|e| e.contains("cannot start a switchover") || e.contains("epoch 2, not 1"))
    {
        r.fail(format!("expected one switchover and one clear conflict, got {results:?}"));
    }
    wait_state(&mut r, "failed_over", "dr", 2);
    let starts =
        history(&mut r).iter().filter(|(t, _)| t.starts_with("switchover of webshop")).count();
    if starts != 1 {
        r.fail(format!("exactly one switchover must have started, the history has {starts}"));
    }
}
