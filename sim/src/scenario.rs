//! Named scenarios: what goes wrong, and when, chosen by the seed. Each scenario is a plan of
//! timed faults; every plan ends with a quiet period in which everything is healed and every
//! node runs, so the cluster must converge (L2).

use std::time::Duration;

use crate::rng::SimRng;
use crate::spec::SimPolicy;
use crate::world::{FenceMode, Topology, DR, PROD, WITNESS};

/// One fault (or repair) the run loop applies at its time.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The application of `site` starts or stops passing its health check.
    AppHealth { site: &'static str, healthy: bool },
    /// Traffic from site `from` to site `to` is dropped (one way).
    Cut { from: &'static str, to: &'static str },
    /// Traffic from `from` to `to` flows again.
    Heal { from: &'static str, to: &'static str },
    /// A host is cut from every other host.
    Isolate(String),
    /// An isolated host is reconnected.
    Rejoin(String),
    /// A host's software stops; its disk loses unsynced writes.
    Crash(String),
    /// A crashed host starts again from its disk.
    Restart(String),
    /// A site loses power: its hosts crash and its application is down.
    PowerOff(&'static str),
    /// A site's power returns: its hosts restart.
    PowerOn(&'static str),
    /// Once a failover workflow runs, the current leader crashes; it restarts after the delay.
    CrashLeaderInWorkflow { restart_after: Duration },
    /// The fence agent's behaviour.
    Fence(FenceMode),
    /// The DNS server refuses updates, or stops refusing.
    DnsRefuses(bool),
    /// Actuators take this many times longer.
    Slowdown(u64),
    /// Random link failures (turmoil's message loss) at this rate.
    Loss(f64),
    /// Traffic from host `from` to host `to` is dropped (one way): a per-link partition.
    CutLink { from: String, to: String },
    /// Traffic from host `from` to host `to` flows again.
    HealLink { from: String, to: String },
    /// A host pauses (SIGSTOP): every message to and from it is held until it resumes, and
    /// its actuator does nothing.
    Stall(String),
    /// A stalled host resumes: held messages are delivered.
    Resume(String),
    /// The host leading now stalls for this long.
    StallLeader { stall_for: Duration },
    /// The host leading now crashes; it restarts after the delay (never, if `None`: the
    /// quiet period restarts it).
    CrashLeader { restart_after: Option<Duration> },
    /// A host's disk fills up (every write fails) or is freed.
    DiskFull { host: String, full: bool },
    /// The host leading now gets a full disk, freed after the delay.
    DiskFullLeader { free_after: Duration },
    /// Once a workflow step runs on a controller of dr, that executor crashes mid-step; it
    /// restarts after the delay.
    CrashExecutorInStep { restart_after: Duration },
    /// The operator asks for a planned switchover of the service to `to` (`droverctl
    /// switchover app --to <to>`): whichever node leads proposes it, at the epoch and from the
    /// active site it reads, and again after a rejection until the cluster accepts it.
    Switchover { to: &'static str },
    /// A workflow's `sim-app <verb>` on `site` fails (`refuses`) or works again: an
    /// application that will not start, a stop script that fails.
    AppRefuses { site: &'static str, verb: &'static str, refuses: bool },
    /// The DNS server answers success to updates but drops them (`true`), or applies them
    /// again (`false`): a server whose policy silently ignores the update.
    DnsIgnores(bool),
    /// A reload of the DNS server restores the zone's previous state: the name points at the
    /// site, with the epoch, it had before its last change.
    DnsRevert,
    /// Everything back to normal but the applications' health: cuts, isolation, stalls,
    /// power, crashed hosts, full disks, actuators, refusing applications, loss.
    HealAll,
}

/// What a scenario does in one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Faults, by time.
    pub faults: Vec<(Duration, Fault)>,
    /// When the active site is lost such that a failover must follow (L1 is checked from
    /// here), if the scenario guarantees one.
    pub loss_at: Option<Duration>,
    /// Largest one-way message latency.
    pub max_latency: Duration,
    /// Per node, in host order: clock rate error in ppm.
    pub drift_ppm: Vec<i64>,
    /// When the quiet period starts (everything healed).
    pub quiet_from: Duration,
    /// The run's length.
    pub length: Duration,
    /// The failover policy (chosen by the seed unless the scenario needs its own).
    pub policy: SimPolicy,
    /// The host that forms the cluster and leads first.
    pub first_leader: String,
    /// Faults timed from the first commit of a workflow (failover or switchover) the run
    /// sees, instead of from the run's start; those that would fall in the quiet period are
    /// dropped.
    pub after_commit: Vec<(Duration, Fault)>,
}

/// The scenarios, with what each one does.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("app-crash", "prod's application stops passing its checks: failover to dr expected"),
    ("app-flapping", "prod's application flaps faster than down_after: no failover allowed"),
    ("prod-isolated", "prod is cut from dr and the witness: failover expected; prod self-fences, the fence agent cannot reach prod"),
    ("classic-split", "prod and dr cannot see each other, both see the witness: no failover allowed"),
    ("witness-cut-from-prod", "the witness is cut from prod only: no failover allowed"),
    ("one-way-cuts", "random one-way cuts between sites: safety only"),
    ("node-crashes", "random nodes crash (losing unsynced writes) and restart, prod's app may fail: safety only"),
    ("prod-power-loss", "prod loses power: failover expected; fencing cannot reach the dark site"),
    ("leader-crash-mid-failover", "prod's app fails, and the leader crashes in the middle of the workflow: the next leader finishes it"),
    ("lossy-network", "message loss, latency and jitter, then prod's app fails: safety only"),
    ("slow-actuators", "the fence agent fails or hangs, DNS refuses for a while, actuators are slow, prod's app fails: safety only"),
    ("drifting-isolation", "clocks drift at the edge of max_clock_drift and prod is isolated: failover expected"),
    ("leader-loss", "issue 9 case 1: the leader (dr or the witness) crashes, once or more: no self-fence, no failover"),
    ("split-dr-leader", "issue 9 case 2: classic split (prod and dr cut both ways) with the leader in dr: no self-fence, no failover"),
    ("bridge", "issue 9 case 3: one prod node down, the other leads and reaches only the witness: a connected majority must elect and keep the service served"),
    ("member-stalls", "issue 9 case 4: prod's nodes pause for 6s every 20s while its app fails for the same 6s (down_after 10s, lease_ttl 15s): no failover, no ping-pong"),
    ("dead-executor", "issue 9 case 5: prod's app fails; the dr node running the 4s first activate step dies: the failover must still end with dr serving"),
    ("dr-self-fence", "issue 9 case 9: prod's app fails and drover fails over to dr; later dr's nodes are cut off for longer than the lease and self-fence (stopping dr's app), in half the runs restart, then heal: drover must start dr again (A3)"),
    ("link-faults", "random per-link cuts (one way and both ways), stalls of members and of the leader, a full disk: availability and safety"),
    ("switchover", "an operator's planned switchover prod -> dr at a random time, with prod's members stalled or cut off, the leader crashed or stalled, members stalled or links cut around it: safety and availability"),
    ("failback", "a planned switchover prod -> dr, then back dr -> prod, each with a fault around it"),
    ("switchover-fails", "a planned switchover prod -> dr whose prod deactivation fails (restore prod), or whose dr activation or verification fails (the way back: undo dr, return the lease, restore prod)"),
    ("dns-drift", "a failover or a planned switchover to dr, then DNS drifts: reloads restore the previous zone, the server accepts updates but ignores them for a while (reconcile_every 2-6 s): drift repaired in time (D1), never with an older epoch (D2); not in mix"),
];

/// Scenarios `mix` does not draw: `mix` picks from the others with the seed's first draw, so
/// a scenario added to its list would change the run of every `mix` seed recorded so far.
pub const NOT_IN_MIX: &[&str] = &["dns-drift"];

/// The scenario names, for `--scenario`.
pub fn names() -> impl Iterator<Item = &'static str> {
    SCENARIOS.iter().map(|(n, _)| *n)
}

/// The name `mix` picks from: every scenario.
pub const MIX: &str = "mix";

fn secs(rng: &mut SimRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.range(lo * 1000, hi * 1000))
}

/// The plan of `scenario` (or, for [`MIX`], of one scenario the seed picks) for a run of
/// `length` on `topology`. `None` for an unknown name.
pub fn plan(
    scenario: &str,
    rng: &mut SimRng,
    topology: &Topology,
    length: Duration,
) -> Option<Plan> {
    let name: &'static str = if scenario == MIX {
        let mix: Vec<&(&'static str, &str)> =
            SCENARIOS.iter().filter(|(n, _)| !NOT_IN_MIX.contains(n)).collect();
        rng.pick(&mix).0
    } else {
        names().find(|n| *n == scenario)?
    };
    // dr-self-fence needs a failover, a stall longer than the lease and the A3 bound after it;
    // failback two switchovers with faults around each.
    let least = match name {
        "dr-self-fence" => 180,
        "failback" => 120,
        // A failover or switchover, then up to three reverts with their repairs.
        "dns-drift" => 150,
        _ => 60,
    };
    let length = length.max(Duration::from_secs(least));
    let quiet_from = length - Duration::from_secs(30).min(length / 3);
    // The cluster forms and applies its spec within the first ~10 s.
    let start = secs(rng, 15, 25);
    let window = quiet_from.saturating_sub(start + Duration::from_secs(10));
    let mut faults: Vec<(Duration, Fault)> = Vec::new();
    let mut loss_at = None;
    let mut max_latency = Duration::from_millis(rng.range(2, 30));
    // Every run: each node's clock drifts by up to 90% of max_clock_drift (1%).
    let mut drift_ppm: Vec<i64> =
        topology.nodes.iter().map(|_| rng.range(0, 18_000) as i64 - 9_000).collect();
    let other_hosts: Vec<String> = topology.nodes.iter().map(|n| n.host.clone()).collect();
    let mut policy = SimPolicy::choose(rng);
    let mut first_leader = rng.pick(&other_hosts).clone();
    let mut after_commit: Vec<(Duration, Fault)> = Vec::new();
    let hosts_of =
        |site: &str| -> Vec<String> { topology.site_nodes(site).map(|n| n.host.clone()).collect() };
    let at_random = |rng: &mut SimRng| start + window.mul_f64(rng.range(0, 1000) as f64 / 1000.0);
    match name {
        "app-crash" => {
            faults.push((start, Fault::AppHealth { site: PROD, healthy: false }));
            loss_at = Some(start);
        }
        "app-flapping" => {
            let mut t = start;
            let mut healthy = false;
            while t < quiet_from - Duration::from_secs(5) {
                faults.push((t, Fault::AppHealth { site: PROD, healthy }));
                // Down for less than down_after (3 s) minus detection slack.
                t += if healthy {
                    secs(rng, 1, 6)
                } else {
                    Duration::from_millis(rng.range(200, 2000))
                };
                healthy = !healthy;
            }
            faults.push((t, Fault::AppHealth { site: PROD, healthy: true }));
        }
        "prod-isolated" | "drifting-isolation" => {
            for other in [DR, WITNESS] {
                faults.push((start, Fault::Cut { from: PROD, to: other }));
                faults.push((start, Fault::Cut { from: other, to: PROD }));
            }
            loss_at = Some(start);
            if name == "drifting-isolation" {
                // Holders at prod run slow, the deciders fast: the worst case within bounds.
                drift_ppm = topology
                    .nodes
                    .iter()
                    .map(|n| if n.site == PROD { -9_900 } else { 9_900 })
                    .collect();
            }
        }
        "classic-split" => {
            faults.push((start, Fault::Cut { from: PROD, to: DR }));
            faults.push((start, Fault::Cut { from: DR, to: PROD }));
        }
        "witness-cut-from-prod" => {
            faults.push((start, Fault::Cut { from: PROD, to: WITNESS }));
            faults.push((start, Fault::Cut { from: WITNESS, to: PROD }));
        }
        "one-way-cuts" => {
            let sites = [PROD, DR, WITNESS];
            for _ in 0..rng.range(2, 6) {
                let at = start + window.mul_f64(rng.range(0, 1000) as f64 / 1000.0);
                let from = *rng.pick(&sites);
                let to = *rng.pick(&sites);
                if from != to {
                    faults.push((at, Fault::Cut { from, to }));
                    faults.push((at + secs(rng, 3, 30), Fault::Heal { from, to }));
                }
            }
        }
        "node-crashes" => {
            for _ in 0..rng.range(2, 6) {
                let at = start + window.mul_f64(rng.range(0, 1000) as f64 / 1000.0);
                let host = rng.pick(&other_hosts).clone();
                faults.push((at, Fault::Crash(host.clone())));
                faults.push((at + secs(rng, 1, 20), Fault::Restart(host)));
            }
            if rng.chance(0.5) {
                let at = start + window.mul_f64(rng.range(0, 1000) as f64 / 1000.0);
                faults.push((at, Fault::AppHealth { site: PROD, healthy: false }));
            }
        }
        "prod-power-loss" => {
            faults.push((start, Fault::PowerOff(PROD)));
            loss_at = Some(start);
        }
        "leader-crash-mid-failover" => {
            faults.push((start, Fault::AppHealth { site: PROD, healthy: false }));
            faults.push((start, Fault::CrashLeaderInWorkflow { restart_after: secs(rng, 3, 15) }));
            loss_at = Some(start);
        }
        "lossy-network" => {
            max_latency = Duration::from_millis(rng.range(20, 80));
            faults.push((Duration::from_secs(12), Fault::Loss(rng.range(1, 20) as f64 / 10_000.0)));
            faults
                .push((start + secs(rng, 5, 30), Fault::AppHealth { site: PROD, healthy: false }));
        }
        "slow-actuators" => {
            let mode = if rng.chance(0.5) { FenceMode::Fails } else { FenceMode::Hangs };
            faults.push((start, Fault::Fence(mode)));
            faults.push((start, Fault::Slowdown(rng.range(2, 4))));
            faults.push((start, Fault::DnsRefuses(true)));
            faults.push((start + secs(rng, 1, 12), Fault::DnsRefuses(false)));
            faults.push((start, Fault::AppHealth { site: PROD, healthy: false }));
        }
        "leader-loss" => {
            let candidates: Vec<String> = [hosts_of(DR), hosts_of(WITNESS)].concat();
            first_leader = rng.pick(&candidates).clone();
            // The shortest lease the Raft timings allow (7.5 s) up to 10 s: issue 9 ran with
            // 6-10 s, and `config apply` now refuses less than 7.5 s.
            policy.lease_ttl = Duration::from_millis(rng.range(15, 20) * 500);
            // Each crashed leader restarts before the next crash, so a majority always runs.
            let mut t = start;
            for _ in 0..rng.range(1, 3) {
                let restart_after = secs(rng, 2, 15);
                faults.push((t, Fault::CrashLeader { restart_after: Some(restart_after) }));
                t += restart_after + secs(rng, 5, 15);
                if t >= quiet_from {
                    break;
                }
            }
        }
        "split-dr-leader" => {
            first_leader = rng.pick(&hosts_of(DR)).clone();
            faults.push((start, Fault::Cut { from: PROD, to: DR }));
            faults.push((start, Fault::Cut { from: DR, to: PROD }));
        }
        "bridge" => {
            // The last prod node leads; the other prod nodes are down; the leader is cut
            // from every dr node both ways and reaches only the witness.
            let prod = hosts_of(PROD);
            first_leader = prod.last().cloned().unwrap_or_default();
            for host in &prod[..prod.len() - 1] {
                faults.push((start, Fault::Crash(host.clone())));
            }
            for dr in hosts_of(DR) {
                faults.push((start, Fault::CutLink { from: first_leader.clone(), to: dr.clone() }));
                faults.push((start, Fault::CutLink { from: dr, to: first_leader.clone() }));
            }
        }
        "member-stalls" => {
            policy = SimPolicy {
                down_after: Duration::from_secs(10),
                up_after: Duration::from_secs(10),
                lease_ttl: Duration::from_secs(15),
                ..policy
            };
            let mut t = start;
            while t + Duration::from_secs(6) < quiet_from {
                faults.push((t, Fault::AppHealth { site: PROD, healthy: false }));
                for host in hosts_of(PROD) {
                    faults.push((t, Fault::Stall(host.clone())));
                    faults.push((t + Duration::from_secs(6), Fault::Resume(host)));
                }
                faults.push((
                    t + Duration::from_secs(6),
                    Fault::AppHealth { site: PROD, healthy: true },
                ));
                t += Duration::from_secs(20);
            }
        }
        "dead-executor" => {
            // The leader outside dr, so that the executor is another member (as in issue 9).
            first_leader = rng.pick(&[hosts_of(PROD), hosts_of(WITNESS)].concat()).clone();
            policy.activate_warmup = Some(Duration::from_secs(4));
            faults.push((start, Fault::AppHealth { site: PROD, healthy: false }));
            faults.push((start, Fault::CrashExecutorInStep { restart_after: secs(rng, 5, 30) }));
            loss_at = Some(start);
        }
        "dr-self-fence" => {
            policy = SimPolicy { dr_on_lease_lost: true, ..SimPolicy::default() };
            first_leader = rng.pick(&[hosts_of(PROD), hosts_of(WITNESS)].concat()).clone();
            faults.push((start, Fault::AppHealth { site: PROD, healthy: false }));
            loss_at = Some(start);
            // Well after the failover committed: dr's nodes are cut from everyone for longer
            // than their lease (a simulated stall freezes the actuator too, so on_lease_lost
            // would not stop the application), self-fence, and come back.
            let at = start + secs(rng, 45, 55);
            let cut = policy.lease_ttl + secs(rng, 3, 8);
            // In half the runs dr's nodes also restart after they self-fenced (an operator
            // rebooting them, a crash): they must still know they fenced.
            let restart = rng.chance(0.5);
            for host in hosts_of(DR) {
                faults.push((at, Fault::Isolate(host.clone())));
                if restart {
                    faults.push((at + cut - Duration::from_secs(1), Fault::Crash(host.clone())));
                    faults.push((at + cut + Duration::from_secs(1), Fault::Restart(host.clone())));
                }
                faults.push((at + cut, Fault::Rejoin(host)));
            }
        }
        "link-faults" => {
            for _ in 0..rng.range(2, 6) {
                let at = at_random(rng);
                let until = at + secs(rng, 2, 25);
                match rng.range(0, 5) {
                    0 | 1 => {
                        let from = rng.pick(&other_hosts).clone();
                        let to = rng.pick(&other_hosts).clone();
                        if from != to {
                            let both = rng.chance(0.5);
                            faults
                                .push((at, Fault::CutLink { from: from.clone(), to: to.clone() }));
                            faults.push((
                                until,
                                Fault::HealLink { from: from.clone(), to: to.clone() },
                            ));
                            if both {
                                faults.push((
                                    at,
                                    Fault::CutLink { from: to.clone(), to: from.clone() },
                                ));
                                faults.push((until, Fault::HealLink { from: to, to: from }));
                            }
                        }
                    }
                    2 => {
                        let host = rng.pick(&other_hosts).clone();
                        faults.push((at, Fault::Stall(host.clone())));
                        faults.push((at + secs(rng, 1, 8), Fault::Resume(host)));
                    }
                    3 => faults.push((at, Fault::StallLeader { stall_for: secs(rng, 1, 8) })),
                    _ => faults.push((at, Fault::DiskFullLeader { free_after: secs(rng, 5, 30) })),
                }
            }
            if rng.chance(0.3) {
                faults.push((at_random(rng), Fault::AppHealth { site: PROD, healthy: false }));
            }
        }
        "switchover" => {
            let at = start + secs(rng, 0, 20).min(window);
            faults.push((at, Fault::Switchover { to: DR }));
            for _ in 0..rng.range(1, 2) {
                faults.extend(around_switchover(rng, at, PROD, topology));
            }
        }
        "failback" => {
            let at = start + secs(rng, 0, 10);
            faults.push((at, Fault::Switchover { to: DR }));
            faults.extend(around_switchover(rng, at, PROD, topology));
            // The next order waits for the first switchover to end; the operator gives it
            // half a minute or more.
            let back = at + secs(rng, 30, 45);
            faults.push((back, Fault::Switchover { to: PROD }));
            faults.extend(around_switchover(rng, back, DR, topology));
        }
        "switchover-fails" => {
            let at = start + secs(rng, 0, 15).min(window);
            let before = at.saturating_sub(Duration::from_secs(1));
            faults.push((at, Fault::Switchover { to: DR }));
            match rng.range(0, 2) {
                // prod's deactivation fails: the switchover gives up before the release and
                // restores prod (which never stopped).
                0 => {
                    faults.push((
                        before,
                        Fault::AppRefuses { site: PROD, verb: "stop", refuses: true },
                    ));
                    faults.push((
                        at + secs(rng, 15, 25),
                        Fault::AppRefuses { site: PROD, verb: "stop", refuses: false },
                    ));
                }
                // dr's application will not start: after the release, the way back.
                1 => {
                    faults.push((
                        before,
                        Fault::AppRefuses { site: DR, verb: "start", refuses: true },
                    ));
                    faults.push((
                        at + secs(rng, 20, 30),
                        Fault::AppRefuses { site: DR, verb: "start", refuses: false },
                    ));
                }
                // dr starts (and DNS moves to it) but never passes its checks: verification
                // times out, then the way back moves DNS to prod again.
                _ => {
                    faults.push((before, Fault::AppHealth { site: DR, healthy: false }));
                    faults.push((
                        at + secs(rng, 40, 50),
                        Fault::AppHealth { site: DR, healthy: true },
                    ));
                }
            }
            if rng.chance(0.3) {
                faults.extend(around_switchover(rng, at, PROD, topology));
            }
        }
        "dns-drift" => {
            // Short enough that several checks fit between the commit and the quiet period.
            policy.reconcile_every = Some(Duration::from_millis(rng.range(4, 12) * 500));
            // A short lease, so that a failover commits early and leaves time for drift.
            policy.lease_ttl = Duration::from_millis(rng.range(16, 24) * 500);
            if rng.chance(0.5) {
                faults.push((start, Fault::AppHealth { site: PROD, healthy: false }));
                loss_at = Some(start);
            } else {
                faults.push((start, Fault::Switchover { to: DR }));
                // The server drops the switchover's own update (it runs a few seconds after
                // the order): the workflow commits with DNS still on prod.
                if rng.chance(0.4) {
                    faults.push((start, Fault::DnsIgnores(true)));
                    faults.push((start + secs(rng, 3, 12), Fault::DnsIgnores(false)));
                }
            }
            let mut t = Duration::ZERO;
            for _ in 0..rng.range(1, 3) {
                t += secs(rng, 2, 25);
                after_commit.push((t, Fault::DnsRevert));
                // The server also drops updates for a while: repairs answered with success
                // change nothing, and the drift is found again.
                if rng.chance(0.4) {
                    let until = t + secs(rng, 1, 8);
                    after_commit.push((t, Fault::DnsIgnores(true)));
                    after_commit.push((until, Fault::DnsIgnores(false)));
                    t = until;
                }
            }
        }
        _ => return None,
    }
    faults.push((quiet_from, Fault::HealAll));
    faults.sort_by_key(|(t, _)| *t);
    Some(Plan {
        scenario: name,
        faults,
        loss_at,
        max_latency,
        drift_ppm,
        quiet_from,
        length,
        policy,
        first_leader,
        after_commit,
    })
}

/// One fault around an operator's switchover at `at` away from `from`: `from`'s members
/// stalled (their messages held: a member that has not heard of the release still believes
/// its lease) or cut from the other sites just before the order, the leader crashed while the
/// switchover runs or stalled just after the order, a member stalled, or a link cut both ways
/// near it.
fn around_switchover(
    rng: &mut SimRng,
    at: Duration,
    from: &'static str,
    topology: &Topology,
) -> Vec<(Duration, Fault)> {
    let hosts: Vec<String> = topology.nodes.iter().map(|n| n.host.clone()).collect();
    let site_hosts: Vec<String> = topology.site_nodes(from).map(|n| n.host.clone()).collect();
    let near = |rng: &mut SimRng| {
        (at + Duration::from_millis(rng.range(0, 7000))).saturating_sub(Duration::from_secs(2))
    };
    let mut faults = Vec::new();
    match rng.range(0, 5) {
        0 => {
            let from_t = at.saturating_sub(Duration::from_millis(rng.range(0, 1000)));
            let until = from_t + secs(rng, 4, 10);
            for host in site_hosts {
                faults.push((from_t, Fault::Stall(host.clone())));
                faults.push((until, Fault::Resume(host)));
            }
        }
        1 => {
            let from_t = at.saturating_sub(Duration::from_millis(rng.range(0, 1000)));
            let until = from_t + secs(rng, 3, 15);
            for other in [PROD, DR, WITNESS].into_iter().filter(|s| *s != from) {
                faults.push((from_t, Fault::Cut { from, to: other }));
                faults.push((from_t, Fault::Cut { from: other, to: from }));
                faults.push((until, Fault::Heal { from, to: other }));
                faults.push((until, Fault::Heal { from: other, to: from }));
            }
        }
        // Once the switchover runs (it takes about a second without faults).
        2 => faults.push((at, Fault::CrashLeaderInWorkflow { restart_after: secs(rng, 2, 15) })),
        3 => {
            let when = at + Duration::from_millis(rng.range(0, 800));
            faults.push((when, Fault::StallLeader { stall_for: secs(rng, 1, 8) }));
        }
        4 => {
            let when = near(rng);
            let host = rng.pick(&hosts).clone();
            faults.push((when, Fault::Stall(host.clone())));
            faults.push((when + secs(rng, 1, 8), Fault::Resume(host)));
        }
        _ => {
            let when = near(rng);
            let until = when + secs(rng, 2, 15);
            let a = rng.pick(&hosts).clone();
            let b = rng.pick(&hosts).clone();
            if a != b {
                faults.push((when, Fault::CutLink { from: a.clone(), to: b.clone() }));
                faults.push((when, Fault::CutLink { from: b.clone(), to: a.clone() }));
                faults.push((until, Fault::HealLink { from: a.clone(), to: b.clone() }));
                faults.push((until, Fault::HealLink { from: b, to: a }));
            }
        }
    }
    faults
}
