//! `droverctl fence test --site X` on a real 2+2+1 cluster with Debian's `fence_dummy`: each
//! fence_agent step that fences X answers `status` from a node where the step would run
//! (`run_on = "dr"` on a dr node even when a prod node gets the call), the output says what each
//! agent saw, and a broken step makes the command fail without hiding the others.

use drover_tests::{Cluster, NodeId, LEADER_TIMEOUT};
use serde_json::Value;

/// A spec whose prod site is fenced by three fence_agent steps (and one exec step, not
/// tested): on a dr node, on any node, and a self-fence on prod with a missing pointer file.
/// Automation is off: nothing fails over while the test runs.
fn spec(dir: &std::path::Path) -> String {
    // fence_dummy keeps its power state in the file named by `status_file`; the step passes
    // that path through a `*_file` parameter (a file holding the path).
    let pointer = |name: &str, power: &str| {
        let state = dir.join(format!("{name}.power"));
        std::fs::write(&state, power).expect("write power state");
        let pointer = dir.join(format!("{name}.pointer"));
        std::fs::write(&pointer, format!("{}\n", state.display())).expect("write pointer");
        pointer.display().to_string()
    };
    let (on, off) = (pointer("st1", "on"), pointer("st2", "off"));
    let missing = dir.join("missing.pointer").display().to_string();
    format!(
        r#"[[site]]
name = "prod"
[[site]]
name = "dr"
[[site]]
name = "witness"
witness = true

[policy]
auto_failover = false
self_fence_grace = "10s"

[[service]]
name = "webshop"
initial_active = "prod"
  [[service.check]]
  site = "prod"
  kind = "exec"
  command = ["true"]
  [[service.check]]
  site = "dr"
  kind = "exec"
  command = ["true"]

  [[service.runbook.prod.fence]]
  kind = "fence_agent"
  agent = "fence_dummy"
  run_on = "dr"
  action = "off"
  params = {{ plug = "st1", status_file_file = "{on}" }}
  timeout = "20s"

  [[service.runbook.prod.fence]]
  kind = "exec"
  run_on = "prod"
  command = ["true"]

  [[service.runbook.prod.fence]]
  kind = "fence_agent"
  agent = "fence_dummy"
  params = {{ plug = "st2", status_file_file = "{off}" }}
  timeout = "20s"

  [[service.runbook.prod.on_lease_lost]]
  kind = "fence_agent"
  agent = "fence_dummy"
  run_on = "prod"
  params = {{ status_file_file = "{missing}" }}
  timeout = "5s"

  [[service.runbook.dr.activate]]
  kind = "exec"
  run_on = "dr"
  command = ["true"]
"#
    )
}

#[test]
fn fence_test_runs_each_agent_status_where_its_step_runs() {
    let test = "fence_test_runs_each_agent_status_where_its_step_runs";
    if drover_tests::require_program(test, "fence_dummy", "fence-agents").is_none() {
        return;
    }
    let mut c = Cluster::builder(test).two_sites_and_witness().build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let path = c.root().join("cluster.toml");
    std::fs::write(&path, spec(c.root())).expect("write cluster.toml");
    let path = path.display().to_string();
    if let Err(e) = c.ctl_json(&["config", "apply", "-f", &path]) {
        c.fail(format!("applying the spec failed: {e}"));
    }

    // Asked at a prod node: the dr-bound step must run on a dr node.
    let prod1: NodeId = c.id_of("prod-1");
    let out = c.ctl_at(prod1, &["--json", "fence", "test", "--site", "prod"]);
    if out.code != Some(1) {
        c.fail(format!("expected exit 1 (one agent fails), got: {}", out.describe()));
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| c.fail(format!("not JSON ({e}): {}", out.describe())));
    let results = v["results"].as_array().cloned().unwrap_or_default();
    let row = |i: usize, key: &str| results.get(i).map_or(Value::Null, |r| r[key].clone());
    let summary: Vec<(Value, Value, Value, Value)> = (0..results.len())
        .map(|i| (row(i, "phase"), row(i, "step"), row(i, "target"), row(i, "power")))
        .collect();
    let expected = vec![
        ("fence".into(), 1.into(), "plug=st1".into(), "on".into()),
        ("fence".into(), 3.into(), "plug=st2".into(), "off".into()),
        ("on_lease_lost".into(), 1.into(), "".into(), Value::Null),
    ];
    if summary != expected {
        c.fail(format!("fence test results {summary:?}, expected {expected:?}; output: {v}"));
    }
    let node0 = row(0, "node").as_str().unwrap_or("").to_string();
    if !node0.starts_with("dr-") {
        c.fail(format!("the run_on = \"dr\" step ran on {node0:?}, not a dr node: {v}"));
    }
    if row(1, "node") != "prod-1" || row(2, "node") != "prod-1" {
        c.fail(format!(
            "steps for any node or for prod should run on prod-1, which got the call: {v}"
        ));
    }
    let error = row(2, "error").as_str().unwrap_or("").to_string();
    if !error.contains("status_file_file") || !error.contains("no such file") {
        c.fail(format!("the broken step's error should name the missing file: {v}"));
    }
    if !out.stderr.contains("1 of 3 fence agent(s) for site prod failed") {
        c.fail(format!("stderr should count the failures: {}", out.describe()));
    }

    // The table, asked at a dr node.
    let dr2 = c.id_of("dr-2");
    let out = c.ctl_at(dr2, &["fence", "test", "--site", "prod"]);
    let table = out.stdout.clone();
    let has = |needle: &str| table.contains(needle);
    if !(has("SERVICE")
        && has("webshop  fence #1")
        && has("fence_dummy")
        && has("plug=st1")
        && has("error: "))
    {
        c.fail(format!("unexpected table: {}", out.describe()));
    }

    // Nothing fences dr with an agent; the witness is never fenced.
    let none = c.ctl_at(prod1, &["fence", "test", "--site", "dr"]);
    if !(none.success() && none.stdout.contains("no fence_agent step fences site dr")) {
        c.fail(format!("fence test of dr: {}", none.describe()));
    }
    let witness = c.ctl_at(prod1, &["fence", "test", "--site", "witness"]);
    if witness.success() || !witness.stderr.contains("site witness is the witness") {
        c.fail(format!("fence test of the witness: {}", witness.describe()));
    }
}
