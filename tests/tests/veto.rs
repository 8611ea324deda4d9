//! Veto hooks: a command that must exit 0 before an automatic failover starts (DESIGN 5,
//! gates). A hook that says no holds the failover; one that allows lets it run. Whichever
//! member leads, the witness included, the hooks run on a controller.

use std::time::{Duration, Instant};

use drover_tests::{failover_spec, AppSite, Apps, Cluster, Rig, LEADER_TIMEOUT};

/// Spec applied and observers agreeing that prod is up.
const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// From the outage to failed_over (see failover.rs).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

fn rig(test: &str) -> Rig {
    let mut c = Cluster::builder(test).two_sites_and_witness().build();
    let sites = vec![
        AppSite { site: "prod".into(), addr: c.loopback_addr(110), netns: None },
        AppSite { site: "dr".into(), addr: c.loopback_addr(111), netns: None },
    ];
    let apps = Apps::new(&c.root().join("apps"), &c.bins().node, sites, None);
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    Rig::new(c, apps)
}

/// The failover spec with one veto hook running `sh -c SCRIPT`.
fn apply_spec_with_veto(r: &mut Rig, script: &str) {
    let hook = format!(
        "initial_active = \"prod\"\n  [[service.veto]]\n  command = [\"sh\", \"-c\", {script:?}]\n  timeout = \"3s\"\n"
    );
    let text = failover_spec(&r.apps).replacen("initial_active = \"prod\"\n", &hook, 1);
    assert!(text.contains("[[service.veto]]"), "the hook was not inserted:\n{text}");
    r.apply_spec(&text, "the spec with a veto hook");
}

#[test]
fn a_veto_hook_that_says_no_holds_the_failover() {
    let mut r = rig("a_veto_hook_that_says_no_holds_the_failover");
    r.start_app("prod", "initial deployment");
    apply_spec_with_veto(&mut r, "echo change freeze in force >&2; exit 1");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    r.apps.kill_9("prod");
    // down_after (2s) passes, prod is down, every other gate holds: only the hook stops it.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let v = r.service().unwrap_or_else(|e| r.fail(format!("status failed: {e}")));
        if v["phase"] != "protecting" || v["epoch"] != 1 {
            r.fail(format!("a vetoed failover started anyway: {v}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = r.service().unwrap_or_else(|e| r.fail(e));
    if v["sites"]["prod"] != "down" {
        r.fail(format!("prod should be down by now (the veto, not detection, holds it): {v}"));
    }
    let logs: String =
        r.c.ids()
            .into_iter()
            .map(|id| std::fs::read_to_string(r.c.log_path(id)).unwrap_or_default())
            .collect();
    if !logs.contains("vetoed") || !logs.contains("change freeze in force") {
        r.fail("no node logged the veto with the hook's reason");
    }
}

#[test]
fn a_veto_hook_that_allows_lets_the_failover_run() {
    let mut r = rig("a_veto_hook_that_allows_lets_the_failover_run");
    r.start_app("prod", "initial deployment");
    apply_spec_with_veto(
        &mut r,
        "test \"$DROVER_FROM_SITE\" = prod && test \"$DROVER_TO_SITE\" = dr",
    );
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
    r.apps.kill_9("prod");
    let svc = r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    assert_eq!(svc["lease_site"], "dr", "{svc}");
}
