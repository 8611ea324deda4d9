//! The cluster spec every simulated cluster runs: one service, active in prod, protected by
//! dr, with a fence agent, a self-fence, an activation, a DNS move and a verification, the
//! shape of a real DR runbook (see the step conventions in `fakes`).

use std::time::Duration;

use drover::decide::LeaseParams;
use drover::spec::{self, ClusterSpec, Phase};

use crate::world::{DR, PROD, SERVICE};

/// The spec's TOML.
pub const SPEC: &str = r#"# drover-sim's cluster spec
[[site]]
name = "prod"
[[site]]
name = "dr"
[[site]]
name = "witness"
witness = true

[policy]
down_after = "3s"
up_after = "5s"
lease_ttl = "8s"
max_clock_drift = 0.01
self_fence_grace = "2s"
cooldown = "30m"
auto_failover = true
commit = "auto"

[[service]]
name = "app"
initial_active = "prod"

  [[service.check]]
  site = "prod"
  kind = "tcp"
  address = "app.prod.sim:443"
  interval = "1s"
  timeout = "500ms"

  [[service.check]]
  site = "dr"
  kind = "tcp"
  address = "app.dr.sim:443"
  interval = "1s"
  timeout = "500ms"

  [[service.runbook.prod.fence]]
  kind = "fence_agent"
  agent = "fence_sim"
  run_on = "dr"
  params = { target = "prod" }
  action = "off"
  timeout = "3s"
  retries = 1
  backoff = "500ms"
  on_failure = "continue"

  [[service.runbook.prod.on_lease_lost]]
  kind = "exec"
  run_on = "prod"
  command = ["sim-app", "stop"]
  timeout = "1s"

  [[service.runbook.dr.activate]]
  kind = "exec"
  run_on = "dr"
  command = ["sim-app", "start"]
  timeout = "5s"
  retries = 2
  backoff = "1s"

  [[service.runbook.dr.activate]]
  kind = "dns"
  server = "ns.sim:53"
  zone = "sim.test."
  records = [{ name = "app.sim.test.", type = "A", value = "198.18.2.10", ttl = 30 }]
  timeout = "3s"
  retries = 2
  backoff = "1s"

  [[service.runbook.dr.verify]]
  kind = "probe"
  checks = "dr"
  timeout = "20s"
"#;

/// The parsed spec and its text.
pub fn load() -> (ClusterSpec, String) {
    match spec::parse(SPEC, "drover-sim spec") {
        Ok(s) => (s, SPEC.to_string()),
        Err(errors) => panic!("the simulator's own spec is invalid: {errors}"),
    }
}

/// Longest a failover may take once the active site is lost with a majority alive and
/// connected (L1): detection (`down_after` plus report and tick delays), a leader election,
/// every step of the plan at its worst, the lease wait, and a margin for the simulated
/// network's latency.
pub fn recovery_bound(spec: &ClusterSpec) -> Duration {
    let policy = spec.policy_for(SERVICE).expect("the spec has the service");
    let svc = spec.service(SERVICE).expect("the spec has the service");
    let steps: Duration = [(PROD, Phase::Fence), (DR, Phase::Activate), (DR, Phase::Verify)]
        .iter()
        .flat_map(|(site, phase)| svc.runbook(site, *phase).iter())
        .map(|s| s.worst_case())
        .sum();
    let lease_wait = LeaseParams {
        lease_ttl: policy.lease_ttl,
        max_clock_drift: policy.max_clock_drift,
        self_fence_grace: policy.self_fence_grace,
    }
    .safe_wait();
    let election = Duration::from_secs(10);
    policy.down_after + Duration::from_secs(2) + election + steps + lease_wait
}
