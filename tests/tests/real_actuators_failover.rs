//! A whole unplanned failover on the 2+2+1 multi-process cluster, driving the three real
//! actuators together, each a real server or agent from Debian's packages started by the test:
//!
//! ```text
//!   prod app killed ──▶ fence:    fence_dummy `off` on plug prod-app (run on a dr node),
//!                                 confirmed by `status`
//!                       activate: app.sh start dr
//!                                 haproxy: app/prod maint, app/dr ready (runtime API socket)
//!                                 dns: www.drover.test. A -> dr's address, TSIG, epoch 2 in
//!                                      _drover.www (Knot)
//!                       verify:   dr's health check from a quorum of observers
//! ```
//!
//! What a user relies on: afterwards requests through HAProxy reach dr and only dr, resolvers
//! get dr's address, the fence agent's power state is off, every step says what it did, and
//! nothing was done before the outage.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use drover_tests::servers::{Backend, DnsServer, Haproxy};
use drover_tests::{
    failover_spec_head, require_program, steps, unix_ms, AppSite, Apps, Cluster, Rig,
    LEADER_TIMEOUT,
};
use serde_json::Value;

const ZONE: &str = "drover.test.";
/// Spec applied and observers agreeing that prod is up.
const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// From the outage to failed_over: down_after 2s, fence (fence_dummy is a Python program run
/// twice, off then status: a few hundred ms), the app start, HAProxy and DNS steps, verify;
/// with margin for 5 debug processes on 2 cores.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(45);
/// Requests sent through HAProxy to see which sites answer.
const REQUESTS: usize = 8;

/// The cluster spec: the failover tests' sites, policies and checks ([`failover_spec_head`]),
/// with real actuators in the runbooks. `power_pointer` is a file holding the path of fence_dummy's power-state file
/// (passed as a `*_file` parameter, see docs/actuators.md).
fn spec(
    apps: &Apps,
    haproxy: &Haproxy,
    knot: &DnsServer,
    power_pointer: &Path,
    dr: SocketAddr,
) -> String {
    let script = apps.script();
    let script = script.display();
    let head = failover_spec_head(apps);
    let socket = haproxy.admin_socket();
    let socket = socket.display();
    let server = knot.server();
    let key = knot.key();
    let power = power_pointer.display();
    let dr_ip = dr.ip();
    format!(
        r#"{head}
  # Power prod's server off from the surviving site.
  [[service.runbook.prod.fence]]
  kind = "fence_agent"
  agent = "fence_dummy"
  run_on = "dr"
  action = "off"
  params = {{ plug = "prod-app", status_file_file = "{power}" }}
  timeout = "20s"

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

  [[service.runbook.dr.activate]]
  kind = "dns"
  run_on = "dr"
  server = "{server}"
  zone = "{ZONE}"
  tsig = {{ name = "{key_name}", algorithm = "{algorithm}", secret_file = "{secret_file}" }}
  records = [ {{ name = "www.{ZONE}", type = "A", ttl = 30, value = "{dr_ip}" }} ]
  timeout = "5s"

  [[service.runbook.dr.verify]]
  kind = "probe"
  checks = "dr"
  timeout = "20s"
"#,
        key_name = key.name,
        algorithm = key.algorithm,
        secret_file = key.secret_file,
    )
}

/// What `steps` says in order, as (stage, kind, status), leaving out the lease wait (taken or
/// skipped depending on how the fence went).
fn step_summary(all: &[Value]) -> Vec<(String, String, String)> {
    all.iter()
        .filter(|s| s["stage"] != "lease_wait")
        .map(|s| {
            let field = |k: &str| s[k].as_str().unwrap_or("").to_string();
            (field("stage"), field("kind"), field("status"))
        })
        .collect()
}

#[test]
fn failover_fences_with_an_agent_moves_haproxy_and_dns() {
    let test = "failover_fences_with_an_agent_moves_haproxy_and_dns";
    if require_program(test, "fence_dummy", "fence-agents").is_none() {
        return;
    }
    let Some(haproxy_bin) = require_program(test, "haproxy", "haproxy") else { return };

    let mut c = Cluster::builder(test).two_sites_and_witness().build();
    let (prod, dr) = (c.loopback_addr(100), c.loopback_addr(101));
    let sites = vec![
        AppSite { site: "prod".into(), addr: prod, netns: None },
        AppSite { site: "dr".into(), addr: dr, netns: None },
    ];
    let apps = Apps::new(&c.root().join("apps"), &c.bins().node, sites, None);
    let Some(knot) = DnsServer::knot(test, ZONE, &[("www", "A", &prod.ip().to_string())]) else {
        return;
    };
    let haproxy = Haproxy::start(
        &haproxy_bin,
        &[
            Backend { name: "prod", addr: prod, enabled: true },
            Backend { name: "dr", addr: dr, enabled: false },
        ],
    );
    let power = c.root().join("prod-app.power");
    std::fs::write(&power, "on").expect("write the power state");
    let pointer = c.root().join("prod-app.power.path");
    std::fs::write(&pointer, format!("{}\n", power.display())).expect("write the pointer");
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let mut r = Rig::new(c, apps);

    r.start_app("prod", "initial deployment");
    let text = spec(&r.apps, &haproxy, &knot, &pointer, dr);
    r.apply_spec(&text, "the spec with real actuators");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);

    // Before: traffic and name on prod, prod's power on.
    let www = format!("www.{ZONE}");
    let served_from = |site: &str| format!("ok: webshop served from {site}\n");
    if haproxy.answering("/healthz", REQUESTS) != [served_from("prod")] {
        let seen = haproxy.answering("/healthz", REQUESTS);
        r.fail(format!("before the outage HAProxy should reach prod only, got {seen:?}"));
    }
    if knot.dig(&www, "A") != [prod.ip().to_string()] {
        let seen = knot.dig(&www, "A");
        r.fail(format!("before the outage {www} should be prod's address, got {seen:?}"));
    }

    let outage_ms = unix_ms();
    r.apps.kill_9("prod");
    let svc = r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);

    // The workflow: fence by agent, then the three activate steps, then verify, all done.
    let all = steps(&svc);
    let summary = step_summary(&all);
    let expected: Vec<(String, String, String)> = [
        ("fence", "fence_agent"),
        ("activate", "exec"),
        ("activate", "haproxy"),
        ("activate", "dns"),
        ("verify", "probe"),
    ]
    .iter()
    .map(|(stage, kind)| (stage.to_string(), kind.to_string(), "succeeded".to_string()))
    .collect();
    if summary != expected {
        r.fail(format!("workflow steps {summary:?}, expected {expected:?}: {}", svc["workflow"]));
    }
    let detail = |kind: &str| {
        all.iter()
            .find(|s| s["kind"] == kind)
            .map_or(String::new(), |s| s["detail"].as_str().unwrap_or("").to_string())
    };
    let checks = [
        ("fence_agent", "target off (fence_dummy off: exit 0, then status: exit 2"),
        ("haproxy", "app/prod maint, app/dr ready set and read back"),
        ("dns", "(epoch 2, was none)"),
    ];
    for (kind, says) in checks {
        let d = detail(kind);
        if !d.contains(says) {
            r.fail(format!("the {kind} step's detail should say {says:?}: {d:?}"));
        }
    }

    // What the real systems now say.
    match std::fs::read_to_string(&power) {
        Ok(state) if state.trim() == "off" => {}
        other => r.fail(format!("fence_dummy's power state should be off: {other:?}")),
    }
    let answers = haproxy.answering("/healthz", REQUESTS);
    if answers != [served_from("dr")] {
        r.fail(format!("after the failover HAProxy should reach dr only, got {answers:?}"));
    }
    let seen = knot.dig(&www, "A");
    if seen != [dr.ip().to_string()] {
        r.fail(format!(
            "after the failover {www} should be dr's address {}, got {seen:?}",
            dr.ip()
        ));
    }
    let epoch = knot.dig(&format!("_drover.{www}"), "TXT");
    if epoch != ["2"] {
        r.fail(format!("_drover.{www} should hold epoch 2, got {epoch:?}"));
    }

    r.no_step_before(outage_ms, "the prod application was killed");
    eprintln!("workflow: {}", svc["workflow"]);
}
