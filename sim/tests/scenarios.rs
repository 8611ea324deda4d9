//! Fixed seeds for every named scenario, the regression seeds, the determinism check and the
//! mutation check. Each run is real nodes under simulated time: ~90 s simulated in seconds.
//!
//! A run listed in `sim/known-failing.txt` (seed, scenario, nodes, invariant) is expected to
//! break that invariant on the current node code: its test asserts the checker finds it, and
//! fails once the fix lands, telling to delete the line.

use std::time::Duration;

use drover_sim::world::Mutation;
use drover_sim::{run, scenario, Outcome, RunConfig};

const LENGTH: Duration = Duration::from_secs(90);

fn config(seed: u64, scenario: &str, nodes: usize) -> RunConfig {
    RunConfig {
        seed,
        scenario: scenario.to_string(),
        length: LENGTH,
        nodes,
        tick: drover_sim::run::DEFAULT_TICK,
        mutation: None,
        print_trace: false,
    }
}

/// The known-failing runs: (seed, scenario, nodes) -> invariant.
fn known_failing() -> Vec<((u64, String, usize), String)> {
    let text = include_str!("../known-failing.txt");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [seed, name, nodes, invariant] = fields[..] else {
                panic!(
                    "bad known-failing line {line:?}: want <seed> <scenario> <nodes> <invariant>"
                )
            };
            let key = (seed.parse().unwrap(), name.to_string(), nodes.parse().unwrap());
            (key, invariant.to_string())
        })
        .collect()
}

/// A clean run, or, for a run listed as known-failing, a run that breaks the listed invariant.
fn assert_clean_on(o: &Outcome, nodes: usize) {
    let key = (o.seed, o.scenario.to_string(), nodes);
    let expected = known_failing().into_iter().find(|(k, _)| *k == key).map(|(_, inv)| inv);
    match expected {
        None => assert!(
            o.violations.is_empty(),
            "seed {} scenario {}: {:?}\nlast events:\n{}",
            o.seed,
            o.scenario,
            o.violations,
            o.tail.join("\n")
        ),
        Some(inv) => assert!(
            o.violations.iter().any(|v| v.invariant == inv),
            "seed {} scenario {} ({nodes} nodes) is listed in sim/known-failing.txt as breaking {inv}, but it found {:?}: if the node fix made it pass, delete its line",
            o.seed,
            o.scenario,
            o.violations
        ),
    }
}

fn assert_clean(o: &Outcome) {
    assert_clean_on(o, 5);
}

fn is_known_failing(seed: u64, name: &str, nodes: usize) -> bool {
    known_failing().iter().any(|(k, _)| *k == (seed, name.to_string(), nodes))
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal, failover: $failover:expr;)*) => {$(
        #[test]
        fn $test() {
            let o = run(&config(1, $name, 5));
            assert_clean(&o);
            assert_eq!(o.scenario, $name);
            if $failover && !is_known_failing(1, $name, 5) {
                assert_eq!(o.failovers, 1, "{} must fail over once", $name);
                assert!(o.recovery.is_some());
            }
        }
    )*};
}

scenario_tests! {
    app_crash => "app-crash", failover: true;
    app_flapping => "app-flapping", failover: false;
    prod_isolated => "prod-isolated", failover: true;
    classic_split => "classic-split", failover: false;
    witness_cut_from_prod => "witness-cut-from-prod", failover: false;
    one_way_cuts => "one-way-cuts", failover: false;
    node_crashes => "node-crashes", failover: false;
    prod_power_loss => "prod-power-loss", failover: true;
    leader_crash_mid_failover => "leader-crash-mid-failover", failover: true;
    lossy_network => "lossy-network", failover: false;
    slow_actuators => "slow-actuators", failover: false;
    drifting_isolation => "drifting-isolation", failover: true;
    leader_loss => "leader-loss", failover: false;
    split_dr_leader => "split-dr-leader", failover: false;
    bridge => "bridge", failover: false;
    member_stalls => "member-stalls", failover: false;
    dead_executor => "dead-executor", failover: true;
    // One failover, then a reactivation of dr (counted as a second workflow).
    dr_self_fence => "dr-self-fence", failover: false;
    link_faults => "link-faults", failover: false;
}

/// An operator's planned switchover prod -> dr commits, with a fault around it; and back.
#[test]
fn switchover_and_failback_commit() {
    for (name, switchovers) in [("switchover", 1), ("failback", 2)] {
        let o = run(&config(1, name, 5));
        assert_clean(&o);
        assert_eq!((o.switchovers, o.rolled_back), (switchovers, 0), "{name}");
        assert_eq!(o.failovers, 0, "{name}: an operator's switchover is no failover");
    }
}

/// A switchover that cannot finish gives the service back to prod: seed 1 (dr never passes
/// its checks: verification times out, the way back), 2 (dr's application will not start: the
/// way back) and 6 (prod's deactivation fails: restore before the release).
#[test]
fn a_failed_switchover_rolls_back_to_prod() {
    for seed in [1, 2, 6] {
        let o = run(&config(seed, "switchover-fails", 5));
        assert_clean(&o);
        assert_eq!((o.switchovers, o.rolled_back), (0, 1), "seed {seed}");
    }
}

#[test]
fn no_failover_when_nothing_may_trigger_one() {
    for name in ["app-flapping", "classic-split", "witness-cut-from-prod"] {
        let o = run(&config(2, name, 5));
        assert_clean(&o);
        if !is_known_failing(2, name, 5) {
            assert_eq!(o.failovers, 0, "{name} must not fail over");
        }
    }
}

#[test]
fn every_scenario_is_tested_here() {
    let tested = [
        "app-crash",
        "app-flapping",
        "prod-isolated",
        "classic-split",
        "witness-cut-from-prod",
        "one-way-cuts",
        "node-crashes",
        "prod-power-loss",
        "leader-crash-mid-failover",
        "lossy-network",
        "slow-actuators",
        "drifting-isolation",
        "leader-loss",
        "split-dr-leader",
        "bridge",
        "member-stalls",
        "dead-executor",
        "dr-self-fence",
        "link-faults",
        "switchover",
        "failback",
        "switchover-fails",
        "dns-drift",
    ];
    for name in scenario::names() {
        assert!(tested.contains(&name), "scenario {name} has no fixed-seed test");
    }
}

#[test]
fn three_and_seven_node_clusters_fail_over_too() {
    for nodes in [3, 7] {
        let o = run(&config(3, "prod-isolated", nodes));
        assert_clean_on(&o, nodes);
        if !is_known_failing(3, "prod-isolated", nodes) {
            assert_eq!(o.failovers, 1, "{nodes} nodes");
        }
    }
}

#[test]
fn regression_seeds_stay_fixed() {
    let text = include_str!("../regressions.txt");
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [seed, name, nodes, tick_ms] = fields[..] else {
            panic!("bad regression line {line:?}")
        };
        let tick = Duration::from_millis(tick_ms.parse().unwrap());
        let o =
            run(&RunConfig { tick, ..config(seed.parse().unwrap(), name, nodes.parse().unwrap()) });
        assert_clean(&o);
    }
}

/// The trace hash of `seed` under `mix`, run by the simulator binary in a process of its own
/// (as `--seed` replays it; a run is deterministic as the first in its process).
fn hash_in_a_fresh_process(seed: u64) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover-sim"))
        .args(["--seed", &seed.to_string(), "--scenario", scenario::MIX, "--minutes", "1.5"])
        .output()
        .expect("the simulator binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.rsplit_once(", trace ")
        .map(|(_, hash)| hash.trim().to_owned())
        .unwrap_or_else(|| panic!("no trace hash in the simulator's output: {text}"))
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = hash_in_a_fresh_process(4);
    assert_eq!(a, hash_in_a_fresh_process(4), "seed 4 twice");
    assert_ne!(a, hash_in_a_fresh_process(5), "different seeds should differ");
}

/// The checkers can fail: with fencing disabled, or clocks outside the drift the lease
/// arithmetic assumes, an isolated prod keeps serving while dr is activated, and a split
/// brain must be found within a few seeds.
#[test]
fn mutation_check_the_checkers_find_a_planted_split_brain() {
    for mutation in [Mutation::LyingFence, Mutation::ClockBeyondDrift] {
        let found = (1..=5).find_map(|seed| {
            let o =
                run(&RunConfig { mutation: Some(mutation), ..config(seed, "prod-isolated", 5) });
            o.violations.into_iter().find(|v| v.invariant == "S1" || v.invariant == "S2")
        });
        assert!(found.is_some(), "{} went unnoticed in 5 seeds", mutation.name());
    }
}

/// The lease wait is what keeps an unfenced old site from overlapping the new one: removed
/// entirely, with a policy whose lease outlasts detection and a fence agent that cannot reach
/// the isolated site, dr is activated while prod still holds its lease.
#[test]
fn mutation_check_the_checkers_find_a_missing_lease_wait() {
    let found = (1..=8).find_map(|seed| {
        let o = run(&RunConfig {
            mutation: Some(Mutation::NoLeaseWait),
            ..config(seed, "prod-isolated", 5)
        });
        o.violations.into_iter().find(|v| v.invariant == "S1" || v.invariant == "S2")
    });
    assert!(found.is_some(), "no-lease-wait went unnoticed in 8 seeds");
}

/// A3 can fail: without reactivation, dr (active after a failover) that self-fenced while cut
/// off stays dark once healed, with prod gone and no failback: nobody serves, nothing runs.
/// With reactivation the same seed is clean.
#[test]
fn mutation_check_a3_finds_a_self_fenced_site_left_dark() {
    let found = (1..=3).find_map(|seed| {
        let o = run(&RunConfig {
            mutation: Some(Mutation::NoReactivate),
            ..config(seed, "dr-self-fence", 5)
        });
        o.violations.into_iter().find(|v| v.invariant == "A3").map(|_| seed)
    });
    let seed = found.expect("no-reactivate went unnoticed in 3 seeds");
    let fixed = run(&config(seed, "dr-self-fence", 5));
    assert!(fixed.violations.is_empty(), "seed {seed}: {:?}", fixed.violations);
}

/// A switchover that activates the new site before deactivating the old one, with no lease
/// wait, is a split brain whenever a member of the old site has not heard of the release (its
/// members stalled or cut off at the order): S1 or S2 must find it within a few seeds, and the
/// same seed is clean without the defect.
#[test]
fn mutation_check_the_checkers_find_a_switchover_that_activates_early() {
    let found = (1..=4).find_map(|seed| {
        let o = run(&RunConfig {
            mutation: Some(Mutation::SwitchoverEarlyActivate),
            ..config(seed, "switchover", 5)
        });
        o.violations.into_iter().find(|v| v.invariant == "S1" || v.invariant == "S2").map(|_| seed)
    });
    let seed = found.expect("switchover-early-activate went unnoticed in 4 seeds");
    let fixed = run(&config(seed, "switchover", 5));
    assert!(fixed.violations.is_empty(), "seed {seed}: {:?}", fixed.violations);
}

/// DNS that drifts after a commit (reloads restoring the previous zone, updates the server
/// accepts and drops) is set back in time and never with an older epoch: seed 1 (a switchover
/// whose own update is dropped, then two reverts, one with updates dropped) and seed 19 (a
/// failover, then reverts).
#[test]
fn drift_is_repaired_in_time_with_the_current_epoch() {
    for seed in [1, 19] {
        let o = run(&config(seed, "dns-drift", 5));
        assert_clean(&o);
        assert_eq!(o.failovers + o.switchovers, 1, "seed {seed}");
    }
}

/// A repair that carries an older epoch is accepted after a reload restored that epoch at
/// the server (D2), and drift left unrepaired outlasts D1's bound; the same seeds are clean
/// without the defects.
#[test]
fn mutation_check_the_drift_checkers_find_bad_repairs() {
    for (mutation, invariant) in [(Mutation::RepairOldEpoch, "D2"), (Mutation::NoRepair, "D1")] {
        let found = (1..=3).find(|seed| {
            let o = run(&RunConfig { mutation: Some(mutation), ..config(*seed, "dns-drift", 5) });
            o.violations.iter().any(|v| v.invariant == invariant)
        });
        let seed = found.unwrap_or_else(|| panic!("{} went unnoticed in 3 seeds", mutation.name()));
        let fixed = run(&config(seed, "dns-drift", 5));
        assert!(fixed.violations.is_empty(), "seed {seed}: {:?}", fixed.violations);
    }
}

/// Every run listed in `sim/known-failing.txt` still breaks its invariant (and fails, telling
/// to delete its line, once the node is fixed).
#[test]
fn known_failing_runs_still_fail() {
    for ((seed, name, nodes), _) in known_failing() {
        let o = run(&config(seed, &name, nodes));
        assert_clean_on(&o, nodes);
    }
}

/// The crash model can fail too: with disks that acknowledge syncs without persisting, a
/// restarted node comes back without state it had applied, and a checker must notice.
#[test]
fn mutation_check_the_checkers_find_a_lying_disk() {
    let found = (1..=5).find_map(|seed| {
        let o = run(&RunConfig {
            mutation: Some(Mutation::LyingDisk),
            ..config(seed, "node-crashes", 5)
        });
        assert!(o.lost_writes > 0, "seed {seed}: the lying disks lost nothing in a crash");
        o.violations.into_iter().find(|v| v.invariant == "S3" || v.invariant == "S4")
    });
    assert!(found.is_some(), "lying-disk went unnoticed in 5 seeds");
}
