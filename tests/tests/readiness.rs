//! Standby readiness on real processes (2 prod + 2 dr controllers and a witness on loopback, a
//! stand-in application per site): consistency checks that compare a fingerprint of each site,
//! and passive checks that must fail on the standby.
//!
//! What a user relies on: a standby whose fingerprint differs from the active site's is shown
//! not ready, with both values, in `status` and `/metrics`, and an unforced failover to it is
//! refused until the fingerprints agree again; a standby whose application serves raises a
//! split-brain ALERT and an operator's failover or switchover to it is refused until an
//! operator acknowledges it.

use std::time::Duration;

use drover_tests::{lifecycle_spec, Rig};
use serde_json::Value;

/// Spec applied and observers agreeing that prod is up.
const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// Fingerprints or passive results reach the leader and change its verdict (checks every
/// 500ms, reports every second, a leader possibly just elected).
const VERDICT_TIMEOUT: Duration = Duration::from_secs(20);

/// A rig running prod, with `extra` (TOML of the `webshop` service) added to the lifecycle
/// spec, protecting with prod up.
fn rig(test: &str, extra: impl Fn(&Rig) -> String) -> Rig {
    let mut r = Rig::loopback(test);
    r.start_app("prod", "initial deployment");
    let extra = extra(&r);
    let text = lifecycle_spec(&r.apps).replacen(
        "initial_active = \"prod\"\n",
        &format!("initial_active = \"prod\"\n{extra}"),
        1,
    );
    r.apply_spec(&text, "the lifecycle spec with standby readiness checks");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    r
}

/// The readiness verdict of standby dr in `status --json`.
fn standby_dr(r: &mut Rig) -> Result<Value, String> {
    let v = r.service()?;
    v["standbys"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["site"] == "dr"))
        .cloned()
        .ok_or_else(|| format!("status shows no standby dr: {v}"))
}

/// `droverctl status` as text.
fn status_text(r: &mut Rig) -> String {
    r.c.ctl(&["status"]).stdout
}

/// The leader's `/metrics` lines starting with `prefix`.
fn leader_metrics(r: &mut Rig, prefix: &str) -> Result<Vec<String>, String> {
    let leader = r.c.wait_for_leader(Duration::from_secs(10));
    let (code, body) = r.c.http_get(leader, "/metrics")?;
    if code != 200 {
        return Err(format!("GET /metrics -> {code}"));
    }
    Ok(body.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect())
}

#[test]
fn a_consistency_mismatch_blocks_readiness_until_the_fingerprints_agree() {
    let mut r = rig("a_consistency_mismatch_blocks_readiness_until_the_fingerprints_agree", |r| {
        // Each site's nodes fingerprint their own site: `cat` of a file per site.
        r.write("fingerprint-prod", "v1\n");
        r.write("fingerprint-dr", "v2\n");
        let dir = r.c.root().display().to_string();
        format!(
            "  [[service.consistency]]\n  name = \"config\"\n  kind = \"exec\"\n  command = \
             [\"sh\", \"-c\", \"cat {dir}/fingerprint-$DROVER_SITE\"]\n  interval = \"500ms\"\n  \
             timeout = \"400ms\"\n"
        )
    });

    let dr = r.wait("dr not ready with both fingerprints shown", VERDICT_TIMEOUT, |r| {
        let dr = standby_dr(r)?;
        let c = &dr["consistency"][0];
        if dr["ready"] == false
            && c["state"] == "mismatch"
            && c["active"] == "v1"
            && c["standby"] == "v2"
        {
            Ok(dr)
        } else {
            Err(format!("standby dr: {dr}"))
        }
    });
    let reason = "consistency check config differs: prod (active) has \"v1\", dr has \"v2\"";
    if dr["reasons"][0] != reason {
        r.fail(format!("the reason should be {reason:?}: {dr}"));
    }
    let text = status_text(&mut r);
    for want in ["webshop -> dr: NOT READY", reason, "consistency config: mismatch"] {
        if !text.contains(want) {
            r.fail(format!("status should show {want:?}:\n{text}"));
        }
    }
    let metrics = leader_metrics(&mut r, "drover_").unwrap_or_else(|e| r.fail(e));
    for want in [
        "drover_standby_ready{service=\"webshop\",site=\"dr\"} 0",
        "drover_consistency_mismatch{service=\"webshop\",site=\"dr\",check=\"config\"} 1",
    ] {
        if !metrics.iter().any(|l| l == want) {
            r.fail(format!("/metrics should have {want:?}: {metrics:#?}"));
        }
    }
    // An operator's unforced failover is refused, naming the difference.
    let out = r.c.ctl(&["failover", "webshop", "--to", "dr", "--reason", "drill"]);
    if out.code == Some(0) || !out.stderr.contains(reason) || !out.stderr.contains("--force") {
        r.fail(format!("the failover should be refused with the reason: {out:?}"));
    }

    // dr's configuration is brought in line: dr is ready.
    r.write("fingerprint-dr", "v1\n");
    r.wait("dr ready once the fingerprints agree", VERDICT_TIMEOUT, |r| {
        let dr = standby_dr(r)?;
        if dr["ready"] == true && dr["consistency"][0]["state"] == "match" {
            Ok(())
        } else {
            Err(format!("standby dr: {dr}"))
        }
    });
    r.wait("/metrics to agree", VERDICT_TIMEOUT, |r| {
        let m = leader_metrics(r, "drover_standby_ready")?;
        if m.iter().any(|l| l == "drover_standby_ready{service=\"webshop\",site=\"dr\"} 1") {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    });
    let v = r.service().unwrap_or_else(|e| r.fail(e));
    if v["epoch"] != 1 || v["active_site"] != "prod" {
        r.fail(format!("nothing may have moved: {v}"));
    }
}

#[test]
fn a_serving_standby_raises_a_split_brain_alert_and_blocks_a_failover_to_it() {
    let mut r =
        rig("a_serving_standby_raises_a_split_brain_alert_and_blocks_a_failover_to_it", |r| {
            // dr's application must not answer while dr is standby.
            let dr = r.apps.sites().iter().find(|s| s.site == "dr").expect("a dr app").addr;
            format!(
            "  [[service.passive]]\n  name = \"app\"\n  site = \"dr\"\n  kind = \"http\"\n  url = \
             \"http://{dr}/healthz\"\n  expect_status = 200\n  interval = \"500ms\"\n  timeout = \
             \"400ms\"\n"
        )
        });
    // dr's application is not running: its passive check fails, as it should.
    r.wait("dr ready, its application not serving", VERDICT_TIMEOUT, |r| {
        let dr = standby_dr(r)?;
        if dr["ready"] == true && dr["passive"][0]["state"] == "not_serving" {
            Ok(())
        } else {
            Err(format!("standby dr: {dr}"))
        }
    });

    // Someone starts dr's application by hand: a possible split brain.
    r.start_app("dr", "started by hand");
    let alert = "ALERT: webshop: standby dr is serving: possible split brain (passive check app";
    r.wait("the split-brain alert in status", VERDICT_TIMEOUT, |r| {
        let text = status_text(r);
        if text.lines().next().is_some_and(|l| l.starts_with(alert)) {
            Ok(())
        } else {
            Err(text)
        }
    });
    let dr = standby_dr(&mut r).unwrap_or_else(|e| r.fail(e));
    if dr["ready"] != false || dr["passive"][0]["state"] != "serving" || dr["split_brain"].is_null()
    {
        r.fail(format!("dr should be serving and not ready: {dr}"));
    }
    let serving = leader_metrics(&mut r, "drover_standby_serving").unwrap_or_else(|e| r.fail(e));
    if serving != ["drover_standby_serving{service=\"webshop\",site=\"dr\",check=\"app\"} 1"] {
        r.fail(format!("/metrics should show dr serving: {serving:?}"));
    }

    // An operator's failover and switchover to dr are refused, saying how to go on.
    let out = r.c.ctl(&["failover", "webshop", "--to", "dr", "--reason", "drill"]);
    if out.code == Some(0)
        || !out.stderr.contains("standby dr is serving: possible split brain")
        || !out.stderr.contains("droverctl ack webshop --split-brain dr")
    {
        r.fail(format!("the failover to a serving dr should be refused: {out:?}"));
    }
    let out = r.c.ctl(&["switchover", "webshop", "--to", "dr"]);
    if out.code == Some(0) || !out.stderr.contains("possible split brain") {
        r.fail(format!("the switchover to a serving dr should be refused: {out:?}"));
    }
    let v = r.service().unwrap_or_else(|e| r.fail(e));
    if v["epoch"] != 1 || v["phase"] != "protecting" {
        r.fail(format!("nothing may have started: {v}"));
    }

    // An operator acknowledges it: the alert stays, dr no longer blocks, and it is recorded.
    let out = r.c.ctl(&["ack", "webshop", "--split-brain", "dr"]);
    if out.code != Some(0) || !out.stdout.contains("acknowledged at epoch 1") {
        r.fail(format!("ack --split-brain dr failed: {out:?}"));
    }
    r.wait("dr ready with the acknowledgement", VERDICT_TIMEOUT, |r| {
        let dr = standby_dr(r)?;
        let p = &dr["passive"][0];
        if dr["ready"] == true && p["acknowledged"] == true && p["state"] == "serving" {
            Ok(())
        } else {
            Err(format!("standby dr: {dr}"))
        }
    });
    if !status_text(&mut r).contains("acknowledged by an operator at epoch 1") {
        r.fail("the alert should still be shown, acknowledged");
    }
}
