//! Many services checking the same two applications (issues 9 and 10): the observers cannot run
//! every check on time, and that must never look like an outage of the site they check.
//!
//! A 2+2+1 cluster on loopback protects `OVERLOAD_SERVICES` services, each with a 1 s http
//! check of prod's and of dr's application (the same two small servers for all of them) and
//! fast policies (down_after 2s). Both applications stay up the whole time. What a user relies
//! on: an observer that is late reports *unknown*, so no service fails over, no runbook step
//! runs, and prod keeps serving.
//!
//! `OVERLOAD_SERVICES` is the largest count a spec may have (`spec::MAX_SERVICES`, issue 10's
//! failing input): its active site must also keep every lease (one batched renewal per node
//! and round) and no node self-fences. Set `DROVER_OVERLOAD_SERVICES` to try another count
//! (above the maximum the spec is refused; raise `MAX_SERVICES` to explore, as
//! docs/benchmarks.md did).

use std::time::{Duration, Instant};

use drover_tests::{unix_ms, Apps, Cluster, Rig};
use serde_json::Value;

/// Services protected at once (see the module doc).
const OVERLOAD_SERVICES: usize = drover::spec::MAX_SERVICES;
/// How long every service must stay protecting in prod after the apply.
const WATCH: Duration = Duration::from_secs(40);
/// The spec applied and committed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn services() -> usize {
    std::env::var("DROVER_OVERLOAD_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(OVERLOAD_SERVICES)
}

/// `n` services `svc-000`.., active in prod, each with a 1 s http check of each site's
/// application and the test runbooks (fence and lease loss stop prod, activate starts dr).
fn many_services_spec(apps: &Apps, n: usize) -> String {
    let script = apps.script();
    let script = script.display();
    let mut text = String::from(
        r#"[[site]]
name = "prod"
[[site]]
name = "dr"
[[site]]
name = "witness"
witness = true

[policy]
down_after = "2s"
up_after = "5s"
lease_ttl = "8s"
max_clock_drift = 0.01
self_fence_grace = "2s"
cooldown = "30m"
auto_failover = true
commit = "auto"
"#,
    );
    for i in 0..n {
        text += &format!("\n[[service]]\nname = \"svc-{i:03}\"\ninitial_active = \"prod\"\n");
        for s in apps.sites() {
            text += &format!(
                "  [[service.check]]\n  site = \"{}\"\n  kind = \"http\"\n  \
                 url = \"http://{}/healthz\"\n  interval = \"1s\"\n",
                s.site, s.addr
            );
        }
        text += &format!(
            r#"  [[service.runbook.prod.fence]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "stop", "prod", "fence"]
  timeout = "3s"
  on_failure = "continue"
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
"#
        );
    }
    text
}

/// Every service protecting in prod at epoch 1, or what is not.
fn all_protecting_in_prod(status: &Value, n: usize) -> Result<(), String> {
    let svcs = status["services"].as_array().ok_or_else(|| format!("no services: {status}"))?;
    if svcs.len() != n {
        return Err(format!("{} services in status, expected {n}", svcs.len()));
    }
    let wrong: Vec<String> = svcs
        .iter()
        .filter(|s| s["phase"] != "protecting" || s["active_site"] != "prod" || s["epoch"] != 1)
        .map(|s| {
            format!("{} {} active {} epoch {}", s["name"], s["phase"], s["active_site"], s["epoch"])
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {n} not protecting in prod, e.g. {:?}",
            wrong.len(),
            &wrong[..3.min(wrong.len())]
        ))
    }
}

#[test]
fn many_services_overloading_the_observers_do_not_fail_over() {
    let n = services();
    let mut r = Rig::start_loopback(
        Cluster::builder("many_services_overload").two_sites_and_witness().build(),
    );
    r.start_app("prod", "initial deployment");
    r.start_app("dr", "standby warm");

    let text = many_services_spec(&r.apps, n);
    let path = r.write("cluster.toml", &text);
    let path = path.to_string_lossy().into_owned();
    let applied = unix_ms();
    r.wait("the many-services spec to be applied", APPLY_TIMEOUT, |r| {
        r.ctl_json(&["config", "apply", "-f", &path]).map(|_| ())
    });

    let start = Instant::now();
    let mut last_ok = None;
    while start.elapsed() < WATCH {
        let steps: Vec<String> = r
            .apps
            .ledger()
            .into_iter()
            .filter(|l| l.by != "harness" && l.unix_ms >= applied)
            .map(|l| l.raw)
            .collect();
        if !steps.is_empty() {
            r.fail(format!(
                "both applications answered throughout, yet {:.1}s after applying {n} services \
                 drover ran runbook steps: {steps:?}",
                start.elapsed().as_secs_f64()
            ));
        }
        // status can be slow under this load; a failed call is not a verdict.
        if let Ok(status) = r.ctl_json(&["status"]) {
            if let Err(e) = all_protecting_in_prod(&status, n) {
                if last_ok.is_some() || status["services"].as_array().map(Vec::len) == Some(n) {
                    r.fail(format!(
                        "both applications answered throughout, yet {:.1}s after applying {n} \
                         services: {e}",
                        start.elapsed().as_secs_f64()
                    ));
                }
            } else {
                last_ok = Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if last_ok.is_none() {
        r.fail("status never showed every service protecting in prod");
    }
    for site in ["prod", "dr"] {
        match r.apps.healthz(site) {
            Ok((200, _)) => {}
            other => r.fail(format!("the {site} application must still answer: {other:?}")),
        }
    }
    eprintln!("{n} services stayed protecting in prod for {WATCH:?}");
}
