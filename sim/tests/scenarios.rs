//! Fixed seeds for every named scenario, the regression seeds, the determinism check and the
//! mutation check. Each run is real nodes under simulated time: ~90 s simulated in seconds.

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

fn assert_clean(o: &Outcome) {
    assert!(
        o.violations.is_empty(),
        "seed {} scenario {}: {:?}\nlast events:\n{}",
        o.seed,
        o.scenario,
        o.violations,
        o.tail.join("\n")
    );
}

macro_rules! scenario_tests {
    ($($test:ident => $name:literal, failover: $failover:expr;)*) => {$(
        #[test]
        fn $test() {
            let o = run(&config(1, $name, 5));
            assert_clean(&o);
            assert_eq!(o.scenario, $name);
            if $failover {
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
}

#[test]
fn no_failover_when_nothing_may_trigger_one() {
    for name in ["app-flapping", "classic-split", "witness-cut-from-prod"] {
        let o = run(&config(2, name, 5));
        assert_clean(&o);
        assert_eq!(o.failovers, 0, "{name} must not fail over");
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
    ];
    for name in scenario::names() {
        assert!(tested.contains(&name), "scenario {name} has no fixed-seed test");
    }
}

#[test]
fn three_and_seven_node_clusters_fail_over_too() {
    for nodes in [3, 7] {
        let o = run(&config(3, "prod-isolated", nodes));
        assert_clean(&o);
        assert_eq!(o.failovers, 1, "{nodes} nodes");
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

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = run(&config(4, scenario::MIX, 5));
    let b = run(&config(4, scenario::MIX, 5));
    assert!(a.events > 10);
    assert_eq!((a.trace_hash, a.events), (b.trace_hash, b.events));
    let c = run(&config(5, scenario::MIX, 5));
    assert_ne!(a.trace_hash, c.trace_hash, "different seeds should differ");
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
