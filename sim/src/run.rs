//! One run: a seed, a scenario, a cluster of real nodes on turmoil, the plan's faults applied
//! on time, the checkers after every few steps.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::check::{Bounds, Checker, Violation};
use crate::disk::SimDisk;
use crate::node::{self, Boot, Registry};
use crate::rng::SimRng;
use crate::scenario::{self, Fault};
use crate::trace::Trace;
use crate::world::{lock, FenceMode, Mutation, Order, Shared, Topology, World, PROD};
use crate::{det, spec};

/// Simulated time per step, by default: every timer and message delivery of a node lands on
/// a multiple of it. 10 ms is a tenth of the nodes' fastest loop (the controller's 100 ms
/// tick) and below any cross-site round trip worth simulating; `--tick-ms 1` resolves races
/// finer, at about half the speed (docs/benchmarks.md).
pub const DEFAULT_TICK: Duration = Duration::from_millis(10);
/// Finest and coarsest tick a run accepts.
pub const TICK_RANGE: std::ops::RangeInclusive<u64> = 1..=10;
/// Simulated time between two looks of the checkers, whatever the tick.
const CHECK_PERIOD: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The seed: every choice of the run follows from it.
    pub seed: u64,
    /// A scenario name, or `mix`.
    pub scenario: String,
    /// Simulated length.
    pub length: Duration,
    /// Cluster size: 3, 5 or 7.
    pub nodes: usize,
    /// Simulated time per step (within [`TICK_RANGE`] milliseconds).
    pub tick: Duration,
    /// A deliberate defect, for the mutation check.
    pub mutation: Option<Mutation>,
    /// Print every event as it happens.
    pub print_trace: bool,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The scenario that ran (the one `mix` picked).
    pub scenario: &'static str,
    /// Broken invariants (the run stops at the first).
    pub violations: Vec<Violation>,
    /// Failovers that committed.
    pub failovers: u32,
    /// Operators' switchovers that committed.
    pub switchovers: u32,
    /// Operators' switchovers that gave up and gave the service back to the old site.
    pub rolled_back: u32,
    /// From the loss of the active site to traffic on the standby.
    pub recovery: Option<Duration>,
    /// Simulated time covered.
    pub simulated: Duration,
    /// Wall-clock time taken.
    pub wall: Duration,
    /// Hash of the event trace.
    pub trace_hash: u64,
    /// Events in the trace.
    pub events: u64,
    /// The last events, for a report.
    pub tail: Vec<String>,
    /// Writes lost to crashes.
    pub lost_writes: u64,
}

/// Stack of the thread a run executes on.
const RUN_STACK: usize = 16 << 20;

/// Runs one seed. Panics only for an unknown scenario name (checked by the CLI first).
pub fn run(cfg: &RunConfig) -> Outcome {
    // The clock and randomness overrides are process-wide: one run at a time.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let wall_start = det::wall_now();
    det::activate(cfg.seed);
    drover::consensus::runtime::seed(cfg.seed);
    drover::decide::lease::mutation::set_no_lease_wait(cfg.mutation == Some(Mutation::NoLeaseWait));
    drover::decide::engine::mutation::set_no_reactivate(
        cfg.mutation == Some(Mutation::NoReactivate),
    );
    drover::decide::engine::mutation::set_early_activate(
        cfg.mutation == Some(Mutation::SwitchoverEarlyActivate),
    );
    drover::decide::reconcile::mutation::set_repair_old_epoch(
        cfg.mutation == Some(Mutation::RepairOldEpoch),
    );
    drover::decide::reconcile::mutation::set_no_repair(cfg.mutation == Some(Mutation::NoRepair));
    // A fresh thread per run: std seeds every HashMap from per-thread keys, drawn once per
    // thread (from the seeded generator, while the run is active) and then advanced by each
    // map made. On a reused thread a second run of a seed would iterate its maps in another
    // order than the first, and two runs of one seed in one process would differ.
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name(format!("sim-seed-{}", cfg.seed))
            .stack_size(RUN_STACK)
            .spawn_scoped(scope, || catch_unwind(AssertUnwindSafe(|| simulate(cfg))))
            .map(|handle| handle.join().unwrap_or_else(Err))
            .unwrap_or_else(|err| Err(Box::new(format!("cannot start the run's thread: {err}"))))
    });
    drover::decide::lease::mutation::set_no_lease_wait(false);
    drover::decide::engine::mutation::set_no_reactivate(false);
    drover::decide::engine::mutation::set_early_activate(false);
    drover::decide::reconcile::mutation::set_repair_old_epoch(false);
    drover::decide::reconcile::mutation::set_no_repair(false);
    det::deactivate();
    let wall = det::wall_now().saturating_sub(wall_start);
    match result {
        Ok(mut outcome) => {
            outcome.wall = wall;
            outcome
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            Outcome {
                seed: cfg.seed,
                scenario: "?",
                violations: vec![Violation {
                    invariant: "PANIC",
                    at: Duration::ZERO,
                    detail: format!("the node code panicked (an invariant assertion?): {what}"),
                }],
                failovers: 0,
                switchovers: 0,
                rolled_back: 0,
                recovery: None,
                simulated: Duration::ZERO,
                wall,
                trace_hash: 0,
                events: 0,
                tail: Vec::new(),
                lost_writes: 0,
            }
        }
    }
}

fn simulate(cfg: &RunConfig) -> Outcome {
    let mut rng = SimRng::new(cfg.seed);
    let topology = Topology::new(cfg.nodes);
    let plan = scenario::plan(&cfg.scenario, &mut rng.fork(), &topology, cfg.length)
        .unwrap_or_else(|| panic!("unknown scenario {:?}", cfg.scenario));
    let spec = Arc::new(spec::load(&plan.policy));
    let policy = spec.0.policy_for(crate::world::SERVICE).expect("spec has the service");
    let mut world = World::new(topology.clone(), rng.fork(), Trace::new(cfg.print_trace));
    world.mutation = cfg.mutation;
    world.trace.event(
        Duration::ZERO,
        "run",
        &format!(
            "seed {} scenario {} nodes {}{}",
            cfg.seed,
            plan.scenario,
            topology.nodes.len(),
            cfg.mutation.map(|m| format!(" mutation {}", m.name())).unwrap_or_default()
        ),
    );
    world.trace.event(
        Duration::ZERO,
        "run",
        &format!(
            "policy {}; {} forms the cluster and leads first",
            plan.policy.describe(),
            plan.first_leader
        ),
    );
    let world: Shared = Arc::new(Mutex::new(world));
    let registry: Registry = Arc::default();
    let disks: BTreeMap<String, SimDisk> = topology
        .nodes
        .iter()
        .map(|n| {
            let disk = match cfg.mutation {
                Some(Mutation::LyingDisk) => SimDisk::lying(),
                _ => SimDisk::new(),
            };
            (n.host.clone(), disk)
        })
        .collect();

    let mut sim = turmoil::Builder::new()
        .simulation_duration(plan.length + Duration::from_secs(3600))
        .tick_duration(cfg.tick)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(plan.max_latency)
        .rng_seed(cfg.seed)
        .build();
    for (i, n) in topology.nodes.iter().enumerate() {
        let mut drift = plan.drift_ppm.get(i).copied().unwrap_or(0);
        if cfg.mutation == Some(Mutation::ClockBeyondDrift) {
            drift = if n.site == PROD { -700_000 } else { 700_000 };
        }
        let boot = Boot {
            node: n.clone(),
            topology: topology.clone(),
            disk: disks[&n.host].clone(),
            world: world.clone(),
            registry: registry.clone(),
            spec: spec.clone(),
            drift_ppm: drift,
            initializer: n.host == plan.first_leader,
        };
        let host = n.host.clone();
        sim.host(n.host.as_str(), move || {
            tracing::Instrument::instrument(
                node::run(boot.clone()),
                tracing::info_span!("host", name = %host),
            )
        });
    }

    let election_timeout_max = Duration::from_millis(node::raft_config().election_timeout_max);
    let mut checker = Checker::new(
        topology.clone(),
        Bounds::new(election_timeout_max, policy.down_after, policy.lease_ttl)
            .with_drift(policy.reconcile_every, spec::dns_timeout(&spec.0)),
        spec::recovery_bound(&spec.0),
        plan.loss_at,
        plan.quiet_from,
    );
    let mut faults = plan.faults.clone().into_iter().peekable();
    let mut leader_crash: Option<Duration> = None;
    let mut executor_crash: Option<Duration> = None;
    let mut pending_restarts: Vec<(Duration, String)> = Vec::new();
    // Nodes that exited by themselves, restarted by their supervisor at the given time.
    let mut supervised: Vec<(Duration, String)> = Vec::new();
    let mut later: Vec<(Duration, Fault)> = Vec::new();
    let mut after_commit = plan.after_commit.clone();
    let mut crashed: Vec<String> = Vec::new();
    let mut steps: u64 = 0;
    let check_every = (CHECK_PERIOD.as_nanos() / cfg.tick.as_nanos().max(1)).max(1) as u64;
    let mut now = Duration::ZERO;
    while now < plan.length && checker.violations.is_empty() {
        let mut due: Vec<Fault> = Vec::new();
        while faults.peek().is_some_and(|(t, _)| *t <= now) {
            due.push(faults.next().expect("peeked").1);
        }
        // Faults timed from the first commit, once it is seen (none in the quiet period).
        if let Some(committed) = checker.committed_at.filter(|_| !after_commit.is_empty()) {
            for (delay, fault) in after_commit.drain(..) {
                if committed + delay < plan.quiet_from {
                    later.push((committed + delay, fault));
                }
            }
        }
        later.retain(|(t, f)| {
            if *t <= now {
                due.push(f.clone());
                false
            } else {
                true
            }
        });
        for fault in due {
            let fault = match fault {
                // Faults aimed at the current leader: resolved now.
                Fault::CrashLeader { restart_after } => {
                    let Some(host) = leader(&registry) else { continue };
                    if let Some(after) = restart_after {
                        pending_restarts.push((now + after, host.clone()));
                    }
                    Fault::Crash(host)
                }
                Fault::StallLeader { stall_for } => {
                    let Some(host) = leader(&registry) else { continue };
                    later.push((now + stall_for, Fault::Resume(host.clone())));
                    Fault::Stall(host)
                }
                Fault::DiskFullLeader { free_after } => {
                    let Some(host) = leader(&registry) else { continue };
                    later.push((
                        now + free_after,
                        Fault::DiskFull { host: host.clone(), full: false },
                    ));
                    Fault::DiskFull { host, full: true }
                }
                Fault::CrashExecutorInStep { restart_after } => {
                    executor_crash = Some(restart_after);
                    continue;
                }
                other => other,
            };
            if fault == Fault::HealAll {
                executor_crash = None;
                later.clear();
            }
            apply(&mut sim, &world, &registry, &disks, &mut crashed, &mut leader_crash, fault);
        }
        if let Some(restart_after) = executor_crash {
            if let Some(host) = dr_executor(&registry, &topology) {
                lock(&world).trace.event(
                    now,
                    "fault",
                    &format!("crash the executor {host} mid-step"),
                );
                crash(&mut sim, &world, &registry, &disks, &mut crashed, &host);
                pending_restarts.push((now + restart_after, host));
                executor_crash = None;
            }
        }
        if let Some(restart_after) = leader_crash {
            if let Some(host) = leader_in_workflow(&registry) {
                lock(&world).trace.event(
                    now,
                    "fault",
                    &format!("crash the leader {host} mid-workflow"),
                );
                crash(&mut sim, &world, &registry, &disks, &mut crashed, &host);
                pending_restarts.push((now + restart_after, host));
                leader_crash = None;
            }
        }
        pending_restarts.retain(|(at, host)| {
            if *at <= now {
                restart(&mut sim, &world, &mut crashed, host);
                false
            } else {
                true
            }
        });
        if let Err(e) = sim.step() {
            let mut w = lock(&world);
            let at = w.now;
            w.event("FAIL", &format!("node software stopped: {e}"));
            checker.violations.push(Violation {
                invariant: "PANIC",
                at,
                detail: format!("a node's software failed: {e}"),
            });
            break;
        }
        // A node that stopped itself (the real one exits non-zero) is restarted by its
        // supervisor after a delay; a crashed one waits for the scenario.
        for n in &topology.nodes {
            if !crashed.contains(&n.host) && !sim.is_host_running(n.host.as_str()) {
                let mut w = lock(&world);
                w.event(
                    "exit",
                    &format!("{} exited; restart in {:?}", n.host, node::RESTART_DELAY),
                );
                w.exited.insert(n.host.clone());
                crashed.push(n.host.clone());
                supervised.push((now + node::RESTART_DELAY, n.host.clone()));
            }
        }
        supervised.retain(|(at, host)| {
            if *at > now {
                return true;
            }
            // Still down only because it exited (not crashed or powered off since).
            if lock(&world).exited.remove(host) {
                restart(&mut sim, &world, &mut crashed, host);
            }
            false
        });
        steps += 1;
        now = sim.elapsed();
        det::set_sim_time(now);
        if steps.is_multiple_of(check_every) {
            let nodes = registry.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut w = lock(&world);
            w.now = now;
            checker.observe(&mut w, &nodes);
        }
    }
    let mut w = lock(&world);
    if checker.violations.is_empty() {
        checker.finish(&mut w);
    }
    w.trace.event(now, "run", &format!("end: {} violation(s)", checker.violations.len()));
    Outcome {
        seed: cfg.seed,
        scenario: plan.scenario,
        violations: checker.violations.clone(),
        failovers: checker.failovers,
        switchovers: checker.switchovers,
        rolled_back: checker.rolled_back,
        recovery: checker.recovery,
        simulated: now,
        wall: Duration::ZERO,
        trace_hash: w.trace.hash(),
        events: w.trace.len(),
        tail: w.trace.tail().cloned().collect(),
        lost_writes: disks.values().map(SimDisk::lost_writes).sum(),
    }
}

/// The host of the node leading in the highest term, if any.
fn leader(registry: &Registry) -> Option<String> {
    let nodes = registry.lock().unwrap_or_else(|p| p.into_inner()).clone();
    nodes
        .iter()
        .filter_map(|(host, n)| {
            let m = n.raft.metrics().borrow().clone();
            (m.state == openraft::ServerState::Leader).then(|| (m.current_term, host.clone()))
        })
        .max()
        .map(|(_, host)| host)
}

/// The dr controller running a step of dr's runbook right now, by the most advanced node's
/// state (an executor of `None` is the leader itself).
fn dr_executor(registry: &Registry, topology: &Topology) -> Option<String> {
    use drover::consensus::state::control::StepStatus;
    let nodes = registry.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (_, executor) = nodes
        .values()
        .map(|n| {
            n.state.read_applied(|applied, s| {
                let running = s.control.services.get(crate::world::SERVICE).and_then(|svc| {
                    let wf = svc.active_workflow()?;
                    wf.steps.iter().find_map(|step| match step.status {
                        StepStatus::Running { executor, .. }
                            if step.site == crate::world::DR && step.action.is_some() =>
                        {
                            Some(executor)
                        }
                        _ => None,
                    })
                });
                (applied.map(|l| l.index), running)
            })
        })
        .max_by_key(|(index, _)| *index)?;
    let host = match executor? {
        Some(id) => topology.nodes.iter().find(|n| n.id == id)?.host.clone(),
        None => leader(registry)?,
    };
    (topology.node(&host)?.site == crate::world::DR).then_some(host)
}

/// The host of the leader, if a failover workflow is running in its state.
fn leader_in_workflow(registry: &Registry) -> Option<String> {
    let nodes = registry.lock().unwrap_or_else(|p| p.into_inner()).clone();
    nodes.iter().find_map(|(host, n)| {
        let leading = n.raft.metrics().borrow().state == openraft::ServerState::Leader;
        let running =
            n.state.read(|s| s.control.services.values().any(|st| st.active_workflow().is_some()));
        (leading && running).then(|| host.clone())
    })
}

/// Makes turmoil's links match the world: a link with a stalled end holds its messages (a
/// paused process's peers keep sending into its socket buffers; they arrive when it resumes),
/// otherwise each direction is open or cut.
fn sync_links(sim: &mut turmoil::Sim<'_>, world: &Shared) {
    let w = lock(world);
    let nodes = &w.topology.nodes;
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            let (ha, hb) = (a.host.as_str(), b.host.as_str());
            if w.stalled.contains(&a.host) || w.stalled.contains(&b.host) {
                sim.hold(ha, hb);
                continue;
            }
            sim.release(ha, hb);
            for (x, y) in [(a, b), (b, a)] {
                if w.host_link(x, y) {
                    sim.repair_oneway(x.host.as_str(), y.host.as_str());
                } else {
                    sim.partition_oneway(x.host.as_str(), y.host.as_str());
                }
            }
        }
    }
}

fn crash(
    sim: &mut turmoil::Sim<'_>,
    world: &Shared,
    registry: &Registry,
    disks: &BTreeMap<String, SimDisk>,
    crashed: &mut Vec<String>,
    host: &str,
) {
    if crashed.iter().any(|h| h == host) {
        // A node that had exited by itself loses power now: it waits for the scenario's
        // restart, not its supervisor's, and loses what it had not synced.
        if lock(world).exited.remove(host) {
            if let Some(disk) = disks.get(host) {
                disk.crash();
            }
            lock(world).event("fault", &format!("{host} crashed"));
        }
        return;
    }
    sim.crash(host);
    registry.lock().unwrap_or_else(|p| p.into_inner()).remove(host);
    if let Some(disk) = disks.get(host) {
        disk.crash();
    }
    crashed.push(host.to_string());
    lock(world).event("fault", &format!("{host} crashed"));
}

fn restart(sim: &mut turmoil::Sim<'_>, world: &Shared, crashed: &mut Vec<String>, host: &str) {
    if let Some(i) = crashed.iter().position(|h| h == host) {
        crashed.remove(i);
        sim.bounce(host);
        lock(world).event("fault", &format!("{host} restarted"));
    }
}

#[allow(clippy::too_many_arguments)]
fn apply(
    sim: &mut turmoil::Sim<'_>,
    world: &Shared,
    registry: &Registry,
    disks: &BTreeMap<String, SimDisk>,
    crashed: &mut Vec<String>,
    leader_crash: &mut Option<Duration>,
    fault: Fault,
) {
    lock(world).event("fault", &format!("{fault:?}"));
    let site_hosts = |site: &str| -> Vec<String> {
        lock(world).topology.site_nodes(site).map(|n| n.host.clone()).collect()
    };
    match fault {
        Fault::AppHealth { site, healthy } => {
            if let Some(app) = lock(world).apps.get_mut(site) {
                app.healthy = healthy;
            }
        }
        Fault::Cut { from, to } => {
            lock(world).site_cuts.insert((from.to_string(), to.to_string()));
            sync_links(sim, world);
        }
        Fault::Heal { from, to } => {
            lock(world).site_cuts.remove(&(from.to_string(), to.to_string()));
            sync_links(sim, world);
        }
        Fault::Isolate(host) => {
            lock(world).isolated.insert(host);
            sync_links(sim, world);
        }
        Fault::Rejoin(host) => {
            lock(world).isolated.remove(&host);
            sync_links(sim, world);
        }
        Fault::Crash(host) => crash(sim, world, registry, disks, crashed, &host),
        Fault::Restart(host) => restart(sim, world, crashed, &host),
        Fault::PowerOff(site) => {
            lock(world).powered.insert(site.to_string(), false);
            for host in site_hosts(site) {
                crash(sim, world, registry, disks, crashed, &host);
            }
        }
        Fault::PowerOn(site) => {
            lock(world).powered.insert(site.to_string(), true);
            for host in site_hosts(site) {
                restart(sim, world, crashed, &host);
            }
        }
        Fault::CrashLeaderInWorkflow { restart_after } => *leader_crash = Some(restart_after),
        Fault::Fence(mode) => lock(world).fence = mode,
        Fault::DnsRefuses(on) => lock(world).dns_refuses = on,
        Fault::DnsIgnores(on) => lock(world).dns_ignores = on,
        Fault::DnsRevert => {
            lock(world).revert_dns();
        }
        Fault::Slowdown(factor) => lock(world).actuator_slowdown = factor.max(1),
        Fault::Loss(rate) => {
            lock(world).message_loss = rate;
            sim.set_fail_rate(rate);
        }
        Fault::CutLink { from, to } => {
            lock(world).link_cuts.insert((from, to));
            sync_links(sim, world);
        }
        Fault::HealLink { from, to } => {
            lock(world).link_cuts.remove(&(from, to));
            sync_links(sim, world);
        }
        Fault::Stall(host) => {
            lock(world).stalled.insert(host);
            sync_links(sim, world);
        }
        Fault::Resume(host) => {
            lock(world).stalled.remove(&host);
            sync_links(sim, world);
        }
        Fault::Switchover { to } => {
            let mut w = lock(world);
            let number = w.orders.len() as u32 + 1;
            w.orders.push(Order { number, to: to.to_string(), done: false });
        }
        Fault::AppRefuses { site, verb, refuses } => {
            let key = (site.to_string(), verb.to_string());
            let mut w = lock(world);
            if refuses {
                w.app_refuses.insert(key);
            } else {
                w.app_refuses.remove(&key);
            }
        }
        Fault::DiskFull { host, full } => {
            if let Some(disk) = disks.get(&host) {
                disk.set_full(full);
            }
            let mut w = lock(world);
            if full {
                w.disk_full.insert(host);
            } else {
                w.disk_full.remove(&host);
            }
        }
        // Resolved to a host by the run loop before they get here.
        Fault::CrashLeader { .. }
        | Fault::StallLeader { .. }
        | Fault::DiskFullLeader { .. }
        | Fault::CrashExecutorInStep { .. } => {}
        Fault::HealAll => {
            {
                let mut w = lock(world);
                w.site_cuts.clear();
                w.isolated.clear();
                w.link_cuts.clear();
                w.stalled.clear();
                w.message_loss = 0.0;
                for host in std::mem::take(&mut w.disk_full) {
                    if let Some(disk) = disks.get(&host) {
                        disk.set_full(false);
                    }
                }
                w.fence = FenceMode::Works;
                w.dns_refuses = false;
                w.dns_ignores = false;
                w.app_refuses.clear();
                w.actuator_slowdown = 1;
                for p in w.powered.values_mut() {
                    *p = true;
                }
            }
            sim.set_fail_rate(0.0);
            sync_links(sim, world);
            for host in crashed.clone() {
                restart(sim, world, crashed, &host);
            }
            *leader_crash = None;
        }
    }
}
