//! The cluster spec every simulated cluster runs: one service, active in prod, protected by
//! dr, with a fence agent, a self-fence, an activation, a DNS move and a verification, the
//! shape of a real DR runbook (see the step conventions in `fakes`). Both sites also have a
//! deactivate runbook (a graceful stop) and an activate and verify runbook, so an operator's
//! switchover works both ways. The policy's timings are
//! chosen by the seed ([`SimPolicy::choose`]) or fixed by a scenario.

use std::time::Duration;

use crate::rng::SimRng;

use drover::decide::LeaseParams;
use drover::spec::{self, ClusterSpec, Phase};

use crate::world::{DR, PROD, SERVICE};

/// The failover policy of a run: the `[policy]` keys the simulator varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimPolicy {
    /// `down_after`.
    pub down_after: Duration,
    /// `up_after` (at least `down_after`).
    pub up_after: Duration,
    /// `lease_ttl`.
    pub lease_ttl: Duration,
    /// `self_fence_grace` (at least the `on_lease_lost` runbook's 1 s).
    pub self_fence_grace: Duration,
    /// dr's activate runbook starts with a `wait` of this length run on a dr controller (a
    /// slow start script), if set: a window in which its executor can die mid-step.
    pub activate_warmup: Option<Duration>,
    /// dr has an `on_lease_lost` runbook that stops its application (as prod has), so a dr
    /// that self-fences while active stops serving.
    pub dr_on_lease_lost: bool,
    /// `reconcile_every`, if the run sets it (the node's default of 30 s otherwise: the
    /// drift checks then start late in a run of a minute or two).
    pub reconcile_every: Option<Duration>,
}

impl Default for SimPolicy {
    /// The policy the simulator used before it varied it: `down_after` 3 s, `up_after` 5 s,
    /// `lease_ttl` 8 s, `self_fence_grace` 2 s.
    fn default() -> Self {
        SimPolicy {
            down_after: Duration::from_secs(3),
            up_after: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(8),
            self_fence_grace: Duration::from_secs(2),
            activate_warmup: None,
            dr_on_lease_lost: false,
            reconcile_every: None,
        }
    }
}

impl SimPolicy {
    /// A policy within the ranges an operator is told are safe (DESIGN.md 6: the lease must
    /// outlast an election, a renewal round and an RPC deadline, so no `lease_ttl` below the
    /// node's 7.5 s floor at the default Raft timings): `down_after` 2-8 s, `up_after` `down_after` + 0-4 s, `lease_ttl`
    /// 6-30 s, `self_fence_grace` 2-4 s, whole 500 ms steps.
    pub fn choose(rng: &mut SimRng) -> SimPolicy {
        let half_secs = |rng: &mut SimRng, lo: u64, hi: u64| {
            Duration::from_millis(rng.range(lo * 2, hi * 2) * 500)
        };
        let down_after = half_secs(rng, 2, 8);
        SimPolicy {
            down_after,
            up_after: down_after + half_secs(rng, 0, 4),
            lease_ttl: half_secs(rng, 8, 30),
            self_fence_grace: half_secs(rng, 2, 4),
            activate_warmup: None,
            dr_on_lease_lost: false,
            reconcile_every: None,
        }
    }

    /// One line for the trace.
    pub fn describe(&self) -> String {
        format!(
            "down_after {} up_after {} lease_ttl {} self_fence_grace {}{}",
            ms(self.down_after),
            ms(self.up_after),
            ms(self.lease_ttl),
            ms(self.self_fence_grace),
            self.activate_warmup.map(|w| format!(" activate_warmup {}", ms(w))).unwrap_or_default()
        ) + if self.dr_on_lease_lost { " dr_on_lease_lost" } else { "" }
            + &self
                .reconcile_every
                .map(|r| format!(" reconcile_every {}", ms(r)))
                .unwrap_or_default()
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The spec's TOML for `policy`.
pub fn text(policy: &SimPolicy) -> String {
    let mut text = SPEC
        .replace("{down_after}", &ms(policy.down_after))
        .replace("{up_after}", &ms(policy.up_after))
        .replace("{lease_ttl}", &ms(policy.lease_ttl))
        .replace("{self_fence_grace}", &ms(policy.self_fence_grace));
    let warmup = policy.activate_warmup.map(|w| {
        format!(
            "  [[service.runbook.dr.activate]]\n  kind = \"wait\"\n  run_on = \"dr\"\n  duration = \"{}\"\n  timeout = \"{}\"\n\n",
            ms(w),
            ms(w + Duration::from_secs(2))
        )
    });
    if let Some(every) = policy.reconcile_every {
        text = text.replacen(
            "commit = \"auto\"\n",
            &format!("commit = \"auto\"\nreconcile_every = \"{}\"\n", ms(every)),
            1,
        );
    }
    if policy.dr_on_lease_lost {
        text = text.replacen(
            "  [[service.runbook.dr.activate]]",
            "  [[service.runbook.dr.on_lease_lost]]\n  kind = \"exec\"\n  run_on = \"dr\"\n  command = [\"sim-app\", \"stop\"]\n  timeout = \"1s\"\n\n  [[service.runbook.dr.activate]]",
            1,
        );
    }
    if let Some(warmup) = warmup {
        text = text.replacen(
            "  [[service.runbook.dr.activate]]",
            &(warmup + "  [[service.runbook.dr.activate]]"),
            1,
        );
    }
    text
}

/// The spec's TOML, with `{placeholders}` for the policy's timings.
const SPEC: &str = r#"# drover-sim's cluster spec
[[site]]
name = "prod"
[[site]]
name = "dr"
[[site]]
name = "witness"
witness = true

[policy]
down_after = "{down_after}"
up_after = "{up_after}"
lease_ttl = "{lease_ttl}"
max_clock_drift = 0.01
self_fence_grace = "{self_fence_grace}"
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

  [[service.runbook.prod.deactivate]]
  kind = "exec"
  run_on = "prod"
  command = ["sim-app", "stop"]
  timeout = "3s"
  retries = 1
  backoff = "500ms"

  [[service.runbook.prod.activate]]
  kind = "exec"
  run_on = "prod"
  command = ["sim-app", "start"]
  timeout = "5s"
  retries = 2
  backoff = "1s"

  [[service.runbook.prod.activate]]
  kind = "dns"
  server = "ns.sim:53"
  zone = "sim.test."
  records = [{ name = "app.sim.test.", type = "A", value = "198.18.1.10", ttl = 30 }]
  timeout = "3s"
  retries = 2
  backoff = "1s"

  [[service.runbook.prod.verify]]
  kind = "probe"
  checks = "prod"
  timeout = "20s"

  [[service.runbook.dr.deactivate]]
  kind = "exec"
  run_on = "dr"
  command = ["sim-app", "stop"]
  timeout = "3s"
  retries = 1
  backoff = "500ms"

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

/// The parsed spec for `policy`, and its text.
pub fn load(policy: &SimPolicy) -> (ClusterSpec, String) {
    let text = text(policy);
    let parsed = match spec::parse(&text, "drover-sim spec") {
        Ok(s) => s,
        Err(errors) => panic!("the simulator's own spec is invalid ({policy:?}): {errors}"),
    };
    // What `config apply` refuses with the simulated cluster's Raft timings is never run.
    let raft = crate::node::raft_config();
    let timings = drover::decide::ElectionTimings {
        heartbeat: Duration::from_millis(raft.heartbeat_interval),
        election_min: Duration::from_millis(raft.election_timeout_min),
        election_max: Duration::from_millis(raft.election_timeout_max),
    };
    let refused = spec::check_against_raft_timings(&parsed, &timings);
    assert!(refused.is_empty(), "the simulator's spec would be refused ({policy:?}): {refused:?}");
    (parsed, text)
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

/// The longest timeout of the spec's `dns` steps (D1's bound counts it), 0 without any.
pub fn dns_timeout(spec: &ClusterSpec) -> Duration {
    let svc = spec.service(SERVICE).expect("the spec has the service");
    [PROD, DR]
        .iter()
        .flat_map(|site| svc.runbook(site, Phase::Activate).iter())
        .filter(|s| s.action.kind() == "dns")
        .map(|s| s.timeout)
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_the_seed_can_choose_is_a_valid_spec() {
        let mut rng = SimRng::new(7);
        for _ in 0..200 {
            let mut policy = SimPolicy::choose(&mut rng);
            if rng.chance(0.5) {
                policy.activate_warmup = Some(Duration::from_secs(4));
            }
            let (spec, _) = load(&policy);
            let p = spec.policy_for(SERVICE).unwrap();
            assert_eq!((p.down_after, p.lease_ttl), (policy.down_after, policy.lease_ttl));
            let activate = spec.service(SERVICE).unwrap().runbook(DR, Phase::Activate).len();
            assert_eq!(activate, 2 + usize::from(policy.activate_warmup.is_some()));
            // A switchover either way: each site has a deactivate and an activate runbook.
            for site in [PROD, DR] {
                let svc = spec.service(SERVICE).unwrap();
                assert!(!svc.runbook(site, Phase::Deactivate).is_empty(), "{site} deactivate");
                assert!(!svc.runbook(site, Phase::Activate).is_empty(), "{site} activate");
            }
        }
    }
}
