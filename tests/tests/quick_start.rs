//! The README's quick start, as a user runs it: `cargo run -p drover-node -- demo` names one
//! binary, and the demo (a real 5-process cluster failing a service over) succeeds.

use std::process::Command;
use std::time::Duration;

use drover_tests::{bins, run_with_deadline, workspace_root};

/// The demo takes under 20 s in a release build; debug processes on a busy 2-core machine get
/// more room.
const DEMO_DEADLINE: Duration = Duration::from_secs(240);

#[test]
fn the_demo_fails_a_service_over() {
    let out = run_with_deadline(Command::new(&bins().node).arg("demo"), DEMO_DEADLINE);
    assert!(out.success(), "`drover-node demo` failed: {}", out.describe());
    for needle in [
        "failover completed",
        "stand-in load balancer now routes to dr (epoch 2)",
        "demo finished: prod failed over to dr, fenced first, verified, committed.",
    ] {
        assert!(
            out.stdout.contains(needle),
            "the demo did not print {needle:?}: {}",
            out.describe()
        );
    }
}

/// `cargo run -p drover-node` must pick the node binary (the package also builds droverctl);
/// the profile does not matter for that, so this runs the debug build the tests already made.
#[test]
fn cargo_run_picks_the_node_binary() {
    let node = &bins().node;
    let target_dir = node
        .parent()
        .and_then(|profile| profile.parent())
        .expect("the binaries live in <target>/<profile>/");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = run_with_deadline(
        Command::new(cargo)
            .current_dir(workspace_root())
            .args(["run", "-q", "-p", "drover-node", "--target-dir"])
            .arg(target_dir)
            .args(["--", "--version"]),
        Duration::from_secs(600),
    );
    assert!(out.success(), "`cargo run -p drover-node -- --version` failed: {}", out.describe());
    assert!(out.stdout.starts_with("drover-node "), "unexpected output: {}", out.describe());
}
