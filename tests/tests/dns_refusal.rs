//! A `dns` step that the world refuses fails the failover at once, without its retries: the
//! companion TXT record of the name holds a newer epoch than the failover's (another
//! activation owns the records), so trying again could only overwrite them or wait in vain.
//!
//! ```text
//!   _drover.www.drover.test. TXT "7" written by hand (a newer owner)
//!   prod app killed ──▶ fence prod · activate dr (app start, dns with retries = 3)
//!                        dns: "holds epoch 7, newer than this step's epoch 2" ──▶ refused
//!                        ──▶ failover_failed after attempt 1; records untouched
//! ```

use std::time::Duration;

use drover::actuate::dns::Expected;
use drover_tests::servers::DnsServer;
use drover_tests::{failover_spec, steps, AppSite, Apps, Cluster, Rig, LEADER_TIMEOUT};

const ZONE: &str = "drover.test.";
const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// From the outage to failover_failed: down_after 2s, fence, app start, one dns attempt.
const FAILED_TIMEOUT: Duration = Duration::from_secs(45);

#[test]
fn a_refused_dns_step_fails_the_failover_without_retries() {
    let test = "a_refused_dns_step_fails_the_failover_without_retries";
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
  retries = 3
  backoff = "1s"
"#,
        head = failover_spec(&r.apps),
        server = knot.server(),
        name = key.name,
        algorithm = key.algorithm,
        secret = key.secret_file,
        dr_ip = dr.ip(),
    );
    r.apply_spec(&spec, "the spec with a dns step");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);

    // A newer activation (epoch 7) owns the name: its record points elsewhere.
    knot.set_by_hand(&format!("www.{ZONE}"), "198.18.7.7", 7, Expected::Absent);

    r.apps.kill_9("prod");
    let svc = r.wait("webshop failover_failed", FAILED_TIMEOUT, |r| {
        let v = r.service()?;
        if v["phase"] == "failover_failed" {
            Ok(v)
        } else {
            Err(format!("service {v}"))
        }
    });
    let all = steps(&svc);
    let Some(dns_step) = all.iter().find(|s| s["kind"] == "dns") else {
        r.fail(format!("the workflow has no dns step: {}", svc["workflow"]));
    };
    // A stopped step waits for `resume` (retry_wait) at the attempt that failed: the first.
    if dns_step["status"] != "retry_wait" || dns_step["attempt"] != 1 {
        r.fail(format!("the dns step should have stopped at attempt 1 of 4: {dns_step}"));
    }
    let detail = dns_step["detail"].as_str().unwrap_or("");
    if !detail.contains("step refused")
        || !detail.contains("holds epoch 7, newer than this step's epoch 2")
    {
        r.fail(format!("the dns step should say it was refused for epoch 7: {detail:?}"));
    }
    let alert = svc["alert"].as_str().unwrap_or("");
    if alert.is_empty() {
        r.fail(format!("a failed failover should raise an alert: {svc}"));
    }
    // The newer owner's records are untouched.
    let www = format!("www.{ZONE}");
    if knot.dig(&www, "A") != ["198.18.7.7"] || knot.dig(&format!("_drover.{www}"), "TXT") != ["7"]
    {
        r.fail(format!(
            "the records of epoch 7 must stay: {:?} {:?}",
            knot.dig(&www, "A"),
            knot.dig(&format!("_drover.{www}"), "TXT")
        ));
    }
}
