use std::time::Duration;

use super::*;

/// The documented example (shared/examples/secure-transport.toml), copied verbatim.
const EXAMPLE: &str = include_str!("testdata/cluster.toml");

fn example() -> ClusterSpec {
    parse(EXAMPLE, "cluster.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Parses the example with `from` replaced by `to` (which must occur).
fn parse_edit(from: &str, to: &str) -> Result<ClusterSpec, SpecErrors> {
    assert!(EXAMPLE.contains(from), "{from:?} not in the example");
    parse(&EXAMPLE.replacen(from, to, 1), "cluster.toml")
}

/// Asserts that `r` failed with an error at `key` whose reason contains `needle`.
#[track_caller]
fn assert_error(r: &Result<ClusterSpec, SpecErrors>, key: &str, needle: &str) {
    let errs = match r {
        Ok(_) => panic!("expected an error at {key}, but the spec validated"),
        Err(e) => e,
    };
    assert!(
        errs.errors.iter().any(|e| e.key == key && e.reason.contains(needle)),
        "no error at {key} containing {needle:?}:\n{errs}"
    );
}

#[test]
fn example_parses_and_validates() {
    let spec = example();
    assert_eq!(spec.active_capable_sites().collect::<Vec<_>>(), ["prod", "dr"]);
    assert_eq!(spec.witness_site(), Some("witness"));
    // The example spells out the defaults, but for a shorter lease (it predates the 8s default).
    assert_eq!(spec.policy, Policy { lease_ttl: Duration::from_secs(6), ..Policy::default() });
    let svc = spec.service("file-transfer").unwrap();
    assert_eq!(svc.initial_active, "prod");
    assert_eq!(svc.max_lag_on_failover, Some(30.0));
    assert_eq!(svc.checks.len(), 2);
    assert_eq!(svc.checks[0].timeout, Duration::from_millis(800));
    assert_eq!(
        svc.checks[1].probe,
        CheckProbe::Http {
            url: "https://st.dr.example/healthcheck".into(),
            expect_status: 200,
            body_contains: None
        }
    );
    let lag = svc.lag.as_ref().unwrap();
    assert_eq!(lag.run_on, RunOn::Site("dr".into()));
    assert_eq!(lag.interval, Duration::from_secs(5));

    let fence = svc.runbook("prod", Phase::Fence);
    assert_eq!(fence.len(), 1);
    assert_eq!(fence[0].run_on, RunOn::Any);
    let StepAction::FenceAgent(f) = &fence[0].action else { panic!("{:?}", fence[0]) };
    assert_eq!(f.agent, "fence_ipmilan");
    assert_eq!(f.action, FenceAction::Off);
    assert_eq!(f.params["password_file"], "/etc/drover/ipmi.pass");

    let activate = svc.runbook("dr", Phase::Activate);
    assert_eq!(
        activate.iter().map(|s| s.action.kind()).collect::<Vec<_>>(),
        ["exec", "haproxy", "dns"]
    );
    assert_eq!(activate[0].retries, 2);
    assert_eq!(activate[0].timeout, Duration::from_secs(300));
    assert_eq!(activate[0].on_failure, OnFailure::Abort);
    assert_eq!(activate[0].backoff, Duration::from_secs(1));
    let StepAction::Haproxy(h) = &activate[1].action else { panic!() };
    assert_eq!(h.set[0].state, HaproxyState::Maint);
    assert_eq!(activate[1].timeout, Duration::from_secs(10), "haproxy default timeout");
    let StepAction::Dns(d) = &activate[2].action else { panic!() };
    assert_eq!(d.records[0].rtype, DnsRecordType::A);
    assert_eq!(d.records[0].ttl_secs, 30);
    assert_eq!(d.protocol, DnsProtocol::Tcp);
    assert!(svc.runbook("dr", Phase::Fence).is_empty());
    let verify = svc.runbook("dr", Phase::Verify);
    assert_eq!(verify[0].action, StepAction::Probe(ProbeStep { checks: "dr".into() }));
    assert!(spec.auto_failover_allowed("file-transfer", "prod", "dr"));
    // The DR site has no fencing: failing back automatically is not allowed.
    assert!(!spec.auto_failover_allowed("file-transfer", "dr", "prod"));
}

#[test]
fn defaults_apply_when_keys_are_omitted() {
    let text = r#"
[[site]]
name = "a"
[[site]]
name = "b"
[policy]
auto_failover = false
[[service]]
name = "s"
initial_active = "a"
[[service.check]]
site = "a"
kind = "tcp"
address = "a.example:80"
[[service.check]]
site = "b"
kind = "exec"
command = ["/bin/true"]
interval = "1500ms"
[[service.runbook.b.test]]
kind = "wait"
duration = "2s"
[[service.runbook.b.test]]
kind = "http"
url = "https://hooks.example/x"
"#;
    let spec = parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.witness_site(), None);
    let svc = &spec.services[0];
    assert_eq!(svc.checks[0].interval, Duration::from_secs(1));
    assert_eq!(svc.checks[0].timeout, Duration::from_millis(800), "80% of a 1s interval");
    assert_eq!(svc.checks[1].timeout, Duration::from_secs(1));
    let test = svc.runbook("b", Phase::Test);
    assert_eq!(test[0].timeout, Duration::from_secs(7));
    let StepAction::Http(h) = &test[1].action else { panic!() };
    assert_eq!((h.method.as_str(), h.expect_status), ("POST", 200));
    assert_eq!(test[1].run_on, RunOn::Any);
    let p = spec.policy_for("s").unwrap();
    assert!(!p.auto_failover);
    assert_eq!(p.cooldown, Duration::from_secs(1800));
    assert_eq!(p.commit, CommitMode::Auto);
}

#[test]
fn service_policy_override_is_merged() {
    let spec = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { down_after = \"5s\", commit = \"manual\" }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = spec.policy_for("file-transfer").unwrap();
    assert_eq!(p.down_after, Duration::from_secs(5));
    assert_eq!(p.commit, CommitMode::Manual);
    assert_eq!(p.up_after, Duration::from_secs(30));
    assert_eq!(spec.policy.down_after, Duration::from_secs(3));
    assert_eq!(spec.policy_for("nope"), None);

    // A merged rule broken by the override is reported at the override.
    let r = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { down_after = \"40s\" }",
    );
    assert_error(&r, "service[0].policy.up_after", "shorter than down_after 40s");
}

#[test]
fn unknown_key_is_refused_with_its_path() {
    let r = parse_edit("  retries = 2\n", "  retries = 2\n  colour = \"red\"\n");
    let errs = r.unwrap_err();
    assert_eq!(errs.errors.len(), 1, "{errs}");
    let e = &errs.errors[0];
    assert_eq!(e.key, "service[0].runbook.dr.activate[0].colour", "{errs}");
    assert!(e.reason.contains("unknown field `colour`"), "{errs}");
    let line = EXAMPLE[..EXAMPLE.find("  retries = 2\n").unwrap()].matches('\n').count() + 2;
    assert_eq!(e.line_col, Some((line, 3)), "{errs}");

    let r = parse_edit("cooldown = \"30m\"", "cooldown = \"30m\"\ncooldwn = \"1m\"");
    let errs = r.unwrap_err();
    assert_eq!(errs.errors[0].key, "policy.cooldwn", "{errs}");

    // A key that exists but belongs to another kind is refused by validation.
    let r = parse_edit("  retries = 2\n", "  retries = 2\n  url = \"https://x.example/\"\n");
    assert_error(&r, "service[0].runbook.dr.activate[0].url", "not a key of a \"exec\" step");
    let r = parse_edit("  expect_status = 200\n", "  address = \"x.example:1\"\n");
    assert_error(&r, "service[0].check[0].address", "not a key of a \"http\" check");
}

#[test]
fn syntax_error_has_line_and_column() {
    let errs = parse("[[site]\nname = \"a\"\n", "bad.toml").unwrap_err();
    assert_eq!(errs.errors.len(), 1);
    assert_eq!(errs.errors[0].line_col.map(|(l, _)| l), Some(1), "{errs}");
    let msg = errs.to_string();
    assert!(msg.starts_with("cluster spec bad.toml has 1 error:\n  line 1, column "), "{msg}");
}

#[test]
fn runbook_for_unknown_site_is_refused() {
    let r = parse_edit("[[service.runbook.dr.verify]]", "[[service.runbook.nowhere.verify]]");
    assert_error(&r, "service[0].runbook.nowhere", "unknown site \"nowhere\"; sites are prod, dr");
    let r = parse_edit(
        "run_on = \"dr\"\n  command = [\"/opt/st",
        "run_on = \"qa\"\n  command = [\"/opt/st",
    );
    assert_error(&r, "service[0].runbook.dr.activate[0].run_on", "unknown site \"qa\"");
    let r = parse_edit("site = \"dr\"\n  kind = \"http\"", "site = \"qa\"\n  kind = \"http\"");
    assert_error(&r, "service[0].check[1].site", "unknown site \"qa\"; sites are prod, dr");
    let r = parse_edit("[[service.runbook.dr.verify]]", "[[service.runbook.dr.verfy]]");
    assert_error(&r, "service[0].runbook.dr.verfy", "unknown phase \"verfy\"");
    let r = parse_edit("checks = \"dr\"", "checks = \"qa\"");
    assert_error(&r, "service[0].runbook.dr.verify[0].checks", "unknown site \"qa\"");
}

#[test]
fn negative_or_bad_durations_name_the_key() {
    let r = parse_edit("timeout = \"300s\"", "timeout = \"-5s\"");
    assert_error(&r, "service[0].runbook.dr.activate[0].timeout", "\"-5s\" is not a duration");
    let r = parse_edit("down_after = \"3s\"", "down_after = \"soon\"");
    assert_error(&r, "policy.down_after", "\"soon\" is not a duration");
    let r = parse_edit("timeout = \"300s\"", "timeout = \"2h\"");
    assert_error(&r, "service[0].runbook.dr.activate[0].timeout", "outside (0, 1h]");
    let r = parse_edit("timeout = \"800ms\"", "timeout = \"1s\"");
    assert_error(&r, "service[0].check[0].timeout", "not shorter than the interval 1s");
}

#[test]
fn every_error_is_listed() {
    let text = EXAMPLE
        .replacen("timeout = \"300s\"", "timeout = \"-5s\"", 1)
        .replacen("max_clock_drift = 0.01", "max_clock_drift = 0.2", 1)
        .replacen("site = \"dr\"\n  kind = \"http\"", "site = \"qa\"\n  kind = \"http\"", 1)
        .replacen("retries = 2", "retries = 11", 1)
        .replacen("agent = \"fence_ipmilan\"", "agent = \"ipmilan\"", 1)
        .replacen("value = \"203.0.113.20\"", "value = \"203.0.113.300\"", 1)
        .replacen("server = \"st/dr-edge\"", "server = \"dr-edge\"", 1);
    let errs = parse(&text, "cluster.toml").unwrap_err();
    let keys: Vec<&str> = errs.errors.iter().map(|e| e.key.as_str()).collect();
    for key in [
        "policy.max_clock_drift",
        "service[0].check[1].site",
        "service[0].check", // dr now has no health check
        "service[0].runbook.prod.fence[0].agent",
        "service[0].runbook.dr.activate[0].timeout",
        "service[0].runbook.dr.activate[0].retries",
        "service[0].runbook.dr.activate[1].set[1].server",
        "service[0].runbook.dr.activate[2].records[0].value",
    ] {
        assert!(keys.contains(&key), "{key} missing from:\n{errs}");
    }
    assert_eq!(errs.errors.len(), 8, "{errs}");
    let msg = errs.to_string();
    assert!(msg.starts_with("cluster spec cluster.toml has 8 errors:\n  "), "{msg}");
    assert_eq!(msg.lines().count(), 9);
    assert!(
        msg.contains("\n  service[0].runbook.dr.activate[0].timeout: \"-5s\" is not a duration"),
        "{msg}"
    );
}

#[test]
fn witness_with_runbook_or_check_is_refused() {
    let r = parse_edit("[[service.runbook.dr.verify]]", "[[service.runbook.witness.verify]]");
    assert_error(&r, "service[0].runbook.witness", "witness never runs steps");
    let r = parse_edit("site = \"dr\"\n  kind = \"http\"", "site = \"witness\"\n  kind = \"http\"");
    assert_error(&r, "service[0].check[1].site", "witness has no health checks");
    let r = parse_edit("initial_active = \"prod\"", "initial_active = \"witness\"");
    assert_error(&r, "service[0].initial_active", "witness is never active");
}

#[test]
fn site_rules() {
    let r = parse_edit("[[site]]\nname = \"dr\"\n", "");
    assert_error(&r, "site", "declare at least two non-witness sites");
    let r = parse_edit("name = \"dr\"\n", "name = \"dr\"\nwitness = true\n");
    assert_error(&r, "site", "at most one site may be the witness");
    let r = parse_edit("name = \"dr\"\n", "name = \"prod\"\n");
    assert_error(&r, "site[1].name", "site names must be unique");
    let r = parse_edit("name = \"dr\"\n", "name = \"DR\"\n");
    assert_error(&r, "site[1].name", "lowercase");
}

#[test]
fn auto_failover_needs_fencing_and_activation() {
    // No fence and no on_lease_lost for the active site.
    let text = EXAMPLE
        .replacen("[[service.runbook.prod.fence]]", "[[service.runbook.prod.test]]", 1)
        .replacen("[[service.runbook.prod.on_lease_lost]]", "[[service.runbook.prod.cleanup]]", 1);
    let r = parse(&text, "cluster.toml");
    assert_error(&r, "service[0].runbook.prod", "without fencing no automatic failover");
    // Either one alone is enough.
    parse_edit("[[service.runbook.prod.fence]]", "[[service.runbook.prod.test]]")
        .unwrap_or_else(|e| panic!("{e}"));
    // The standby needs an activate runbook.
    let text = EXAMPLE.replace("[[service.runbook.dr.activate]]", "[[service.runbook.dr.test]]");
    let r = parse(&text, "cluster.toml");
    assert_error(&r, "service[0].runbook.dr.activate", "no activate runbook");
    // Without automation both are fine.
    let text = text.replacen("auto_failover = true", "auto_failover = false", 1);
    parse(&text, "cluster.toml").unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn on_lease_lost_must_fit_the_grace_and_run_locally() {
    let r = parse_edit(
        "command = [\"/opt/st/bin/stop_all\"]\n  timeout = \"3s\"",
        "command = [\"/opt/st/bin/stop_all\"]\n  timeout = \"4s\"",
    );
    assert_error(&r, "service[0].runbook.prod.on_lease_lost", "may take up to 4s");
    let text = EXAMPLE.replacen(
        "[[service.runbook.prod.on_lease_lost]]          # self-fence when cut off from the cluster\n  kind = \"exec\"\n  run_on = \"prod\"",
        "[[service.runbook.prod.on_lease_lost]]\n  kind = \"exec\"\n  run_on = \"dr\"",
        1,
    );
    assert_ne!(text, EXAMPLE);
    let r = parse(&text, "cluster.toml");
    assert_error(&r, "service[0].runbook.prod.on_lease_lost[0].run_on", "must be \"prod\"");
}

#[test]
fn policy_rules() {
    let r = parse_edit("up_after = \"30s\"", "up_after = \"1s\"");
    assert_error(&r, "policy.up_after", "shorter than down_after 3s");
    let r = parse_edit("lease_ttl = \"6s\"", "lease_ttl = \"0s\"");
    assert_error(&r, "policy.lease_ttl", "shorter than 100ms");
    let r = parse_edit("max_clock_drift = 0.01", "max_clock_drift = -0.01");
    assert_error(&r, "policy.max_clock_drift", "outside [0, 0.1)");
    let r = parse_edit("commit = \"auto\"", "commit = \"later\"");
    assert_error(&r, "policy.commit", "use \"auto\" or \"manual\"");
    parse_edit("max_clock_drift = 0.01", "max_clock_drift = 0").unwrap_or_else(|e| panic!("{e}"));
    let r = parse_edit("commit = \"auto\"", "commit = \"auto\"\nreconcile_every = \"200ms\"");
    assert_error(&r, "policy.reconcile_every", "outside [1s, 24h]");
    let r = parse_edit("commit = \"auto\"", "commit = \"auto\"\nreconcile_every = \"2d\"");
    assert_error(&r, "policy.reconcile_every", "outside [1s, 24h]");
}

#[test]
fn drift_reconciliation_keys_default_and_override_per_service() {
    let spec = example();
    assert_eq!(spec.policy.reconcile_every, Duration::from_secs(30));
    assert!(spec.policy.repair);
    let spec = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { reconcile_every = \"2s\", repair = false }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = spec.policy_for("file-transfer").unwrap();
    assert_eq!((p.reconcile_every, p.repair), (Duration::from_secs(2), false));
    let r = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { reconcile_every = \"0s\" }",
    );
    assert_error(&r, "service[0].policy.reconcile_every", "outside [1s, 24h]");
}

#[test]
fn step_kind_rules() {
    let r = parse_edit("type = \"A\"", "type = \"AAAA\"");
    assert_error(&r, "service[0].runbook.dr.activate[2].records[0].value", "not an IPv6 address");
    let r = parse_edit("ttl = 30", "ttl = 86401");
    assert_error(&r, "service[0].runbook.dr.activate[2].records[0].ttl", "outside 0..=86400");
    let r = parse_edit("type = \"A\"", "type = \"MX\"");
    assert_error(&r, "service[0].runbook.dr.activate[2].records[0].type", "not one of A, AAAA");
    let r = parse_edit("name = \"st.example.\"", "name = \"st.other.\"");
    assert_error(&r, "service[0].runbook.dr.activate[2].records[0].name", "not inside zone");
    let r = parse_edit("state = \"maint\"", "state = \"off\"");
    assert_error(&r, "service[0].runbook.dr.activate[1].set[0].state", "ready, drain, maint");
    let r = parse_edit("action = \"off\"", "action = \"kill\"");
    assert_error(&r, "service[0].runbook.prod.fence[0].action", "off, on, reboot, status");
    let r = parse_edit("lanplus = \"1\" }", "lanplus = \"1\", action = \"on\" }");
    assert_error(&r, "service[0].runbook.prod.fence[0].params.action", "the step's action key");
    let r = parse_edit("kind = \"haproxy\"", "kind = \"nginx\"");
    assert_error(&r, "service[0].runbook.dr.activate[1].kind", "unknown step kind \"nginx\"");
    let r = parse_edit("command = [\"/opt/st/bin/start_all\"]", "command = []");
    assert_error(&r, "service[0].runbook.dr.activate[0].command", "must not be empty");
    let r = parse_edit(
        "  run_on = \"dr\"\n  command = [\"/opt/st/bin/start_all\"]",
        "  command = [\"/opt/st/bin/start_all\"]",
    );
    assert_error(&r, "service[0].runbook.dr.activate[0].run_on", "required for kind \"exec\"");
    let r = parse_edit("secret_file = \"/etc/drover/tsig.key\"", "secret_file = \"tsig.key\"");
    assert_error(&r, "service[0].runbook.dr.activate[2].tsig.secret_file", "absolute path");
    let with = |servers: &str| {
        parse_edit(
            "  server = \"ns1.example:53\"\n",
            &format!("  server = \"ns1.example:53\"\n  verify_servers = {servers}\n"),
        )
    };
    let ok = with("[\"ns2.example:53\"]").expect("verify_servers of another server");
    let Some(StepAction::Dns(d)) =
        ok.services[0].runbook("dr", Phase::Activate).get(2).map(|s| &s.action)
    else {
        panic!("dr.activate[2] is the dns step");
    };
    assert_eq!(d.verify_servers, vec!["ns2.example:53"]);
    let r = with("[\"ns2.example\"]");
    assert_error(&r, "service[0].runbook.dr.activate[2].verify_servers[0]", "host:port");
    let r = with("[\"ns1.example:53\"]");
    assert_error(&r, "service[0].runbook.dr.activate[2].verify_servers[0]", "always checked");
    let many: Vec<String> = (0..17).map(|i| format!("\"ns{i}.example:53\"")).collect();
    let r = with(&format!("[{}]", many.join(", ")));
    assert_error(&r, "service[0].runbook.dr.activate[2].verify_servers", "at most 16");
}

#[test]
fn json_round_trip_is_lossless() {
    let spec = example();
    let json = serde_json::to_string(&spec).unwrap();
    let back: ClusterSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    // Durations read like the TOML, with their unit.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["policy"]["cooldown"], "30m");
    assert_eq!(v["services"][0]["checks"][0]["timeout"], "800ms");
    assert_eq!(v["services"][0]["runbooks"]["dr"]["activate"][0]["kind"], "exec");

    // Odd values survive too.
    let spec = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 0.5\npolicy = { up_after = \"31s 500ms 7us\" }",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let back: ClusterSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    assert_eq!(back.policy_for("file-transfer").unwrap().up_after, Duration::new(31, 500_007_000));
}

#[test]
fn diff_describes_changes() {
    let old = example();
    assert!(diff(Some(&old), &old).is_empty());

    let second = EXAMPLE[EXAMPLE.find("[[service]]").unwrap()..].replacen(
        "name = \"file-transfer\"",
        "name = \"billing\"",
        1,
    );
    let text = EXAMPLE.replacen("down_after = \"3s\"", "down_after = \"5s\"", 1).replacen(
        "[[service.runbook.dr.verify]]",
        "[[service.runbook.dr.activate]]",
        1,
    ) + &second;
    let new = parse(&text, "cluster.toml").unwrap_or_else(|e| panic!("{e}"));
    let lines = diff(Some(&old), &new);
    assert_eq!(
        lines,
        [
            "~ policy.down_after: 3s -> 5s",
            "~ service file-transfer: runbook dr.activate changed (3 -> 4 steps)",
            "~ service file-transfer: runbook dr.verify removed (had 1 step)",
            "+ service billing",
        ]
    );
    let back = diff(Some(&new), &old);
    assert!(back.contains(&"- service billing".to_string()), "{back:?}");
    assert!(back.contains(&"~ policy.down_after: 5s -> 3s".to_string()), "{back:?}");

    let tweaked = parse_edit("timeout = \"800ms\"", "timeout = \"900ms\"").unwrap();
    assert_eq!(
        diff(Some(&old), &tweaked),
        ["~ service file-transfer: checks[0].timeout: 800ms -> 900ms"]
    );

    let first = diff(None, &old);
    assert_eq!(first[..3], ["+ site prod", "+ site dr", "+ site witness (witness)"]);
    assert!(first.contains(&"+ policy.lease_ttl: 6s".to_string()), "{first:?}");
    assert_eq!(first.last().unwrap(), "+ service file-transfer");
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, EXAMPLE).unwrap();
    let (spec, text) = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec, example());
    assert_eq!(text, EXAMPLE);
    let missing = dir.path().join("nope.toml");
    let msg = load(&missing).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("cluster spec {} has 1 error:\n  cannot read", missing.display())),
        "{msg}"
    );
}

/// The example with `hooks` (TOML text of `[[service.veto]]` tables) added to its service.
fn parse_with_veto(hooks: &str) -> Result<ClusterSpec, SpecErrors> {
    parse_edit("  # Replication lag", &format!("{hooks}\n  # Replication lag"))
}

#[test]
fn veto_hooks_are_parsed_with_defaults() {
    assert_eq!(example().services[0].veto, []);
    let spec = parse_with_veto(
        r#"
  [[service.veto]]
  command = ["/usr/local/bin/change-freeze", "--service", "st"]
  [[service.veto]]
  command = ["/usr/local/bin/ask-dba"]
  timeout = "2m"
  env = { TICKET_QUEUE = "dr-{service}" }
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let veto = &spec.services[0].veto;
    assert_eq!(
        veto[0],
        VetoHook {
            command: vec!["/usr/local/bin/change-freeze".into(), "--service".into(), "st".into()],
            timeout: Duration::from_secs(10),
            env: BTreeMap::new(),
        }
    );
    assert_eq!(veto[1].timeout, Duration::from_secs(120));
    assert_eq!(veto[1].env["TICKET_QUEUE"], "dr-{service}");

    // Run as a one-attempt exec step on the leader.
    let step = veto[1].step();
    assert_eq!((step.run_on, step.timeout, step.retries), (RunOn::Any, veto[1].timeout, 0));
    assert_eq!(
        step.action,
        StepAction::Exec(ExecStep { command: veto[1].command.clone(), env: veto[1].env.clone() })
    );

    // Committed as JSON and back; a spec committed before hooks existed still reads.
    let back: ClusterSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    let mut v = serde_json::to_value(example()).unwrap();
    assert_eq!(v["services"][0]["veto"], serde_json::json!([]));
    v["services"][0].as_object_mut().unwrap().remove("veto");
    assert_eq!(serde_json::from_value::<ClusterSpec>(v).unwrap(), example());

    assert_eq!(diff(Some(&example()), &spec), ["~ service file-transfer: veto: 0 -> 2 entries"]);
    let longer = parse_with_veto(
        "  [[service.veto]]\n  command = [\"/usr/local/bin/change-freeze\", \"--service\", \"st\"]\n  \
         timeout = \"30s\"\n  [[service.veto]]\n  command = [\"/usr/local/bin/ask-dba\"]\n  \
         timeout = \"2m\"\n  env = { TICKET_QUEUE = \"dr-{service}\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        diff(Some(&spec), &longer),
        ["~ service file-transfer: veto[0].timeout: 10s -> 30s"]
    );
}

#[test]
fn veto_hook_rules() {
    let r = parse_with_veto("  [[service.veto]]\n  timeout = \"5s\"\n");
    assert_error(&r, "service[0].veto[0].command", "is required");
    let r = parse_with_veto("  [[service.veto]]\n  command = []\n");
    assert_error(&r, "service[0].veto[0].command", "must not be empty");
    let r = parse_with_veto("  [[service.veto]]\n  command = [\" \"]\n");
    assert_error(&r, "service[0].veto[0].command[0]", "the program must not be empty");
    let r =
        parse_with_veto("  [[service.veto]]\n  command = [\"/bin/true\"]\n  timeout = \"0s\"\n");
    assert_error(&r, "service[0].veto[0].timeout", "0s is outside (0, 5m]");
    let r =
        parse_with_veto("  [[service.veto]]\n  command = [\"/bin/true\"]\n  timeout = \"6m\"\n");
    assert_error(&r, "service[0].veto[0].timeout", "6m is outside (0, 5m]");
    let r =
        parse_with_veto("  [[service.veto]]\n  command = [\"/bin/true\"]\n  timeout = \"soon\"\n");
    assert_error(&r, "service[0].veto[0].timeout", "\"soon\" is not a duration");
    parse_with_veto("  [[service.veto]]\n  command = [\"/bin/true\"]\n  timeout = \"5m\"\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = parse_with_veto(
        "  [[service.veto]]\n  command = [\"/bin/true\"]\n  env = { DROVER_EPOCH = \"1\", \"1X\" = \"\" }\n",
    );
    assert_error(&r, "service[0].veto[0].env.DROVER_EPOCH", "set by drover itself");
    assert_error(&r, "service[0].veto[0].env.1X", "not an environment variable name");

    // Unknown keys are refused with their path, like everywhere else.
    let r = parse_with_veto("  [[service.veto]]\n  command = [\"/bin/true\"]\n  retries = 2\n");
    let errs = r.unwrap_err();
    assert_eq!(errs.errors.len(), 1, "{errs}");
    assert_eq!(errs.errors[0].key, "service[0].veto[0].retries", "{errs}");
    assert!(errs.errors[0].reason.contains("unknown field `retries`"), "{errs}");

    // Every bad hook is listed, with its index.
    let r = parse_with_veto(
        "  [[service.veto]]\n  command = [\"/bin/true\"]\n  [[service.veto]]\n  command = []\n  \
         timeout = \"1h\"\n",
    );
    let errs = r.unwrap_err();
    let keys: Vec<&str> = errs.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["service[0].veto[1].timeout", "service[0].veto[1].command"], "{errs}");
}

#[test]
fn lease_timing_the_lease_code_cannot_use_is_refused() {
    let r = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { lease_ttl = \"1s 500ms 7us\" }",
    );
    assert!(
        r.as_ref().is_err_and(|e| e.to_string().contains("lease timing cannot be used")),
        "{r:?}"
    );
}

#[test]
fn tsig_algorithms_are_those_a_dns_step_can_sign_with() {
    let r = parse_edit("algorithm = \"hmac-sha256\"", "algorithm = \"hmac-sha1\"");
    assert_error(
        &r,
        "service[0].runbook.dr.activate[2].tsig.algorithm",
        "\"hmac-sha1\" is not one of hmac-sha256, hmac-sha384, hmac-sha512",
    );
    assert!(parse_edit("algorithm = \"hmac-sha256\"", "algorithm = \"hmac-sha512\"").is_ok());
}

#[test]
fn fence_agent_steps_are_those_fencing_the_site() {
    let text = EXAMPLE
        .replacen(
            "  [[service.runbook.prod.deactivate]]",
            "  [[service.runbook.prod.fence]]\n  kind = \"exec\"\n  run_on = \"dr\"\n  \
             command = [\"/bin/true\"]\n\n  [[service.runbook.prod.fence]]\n  \
             kind = \"fence_agent\"\n  agent = \"fence_virsh\"\n  run_on = \"dr\"\n  \
             params = { plug = \"st2\", ip = \"kvm.prod.example\" }\n\n  \
             [[service.runbook.dr.fence]]\n  kind = \"fence_agent\"\n  agent = \"fence_dr\"\n\n  \
             [[service.runbook.prod.deactivate]]",
            1,
        )
        .replacen(
            "  [[service.runbook.dr.activate]]",
            "  [[service.runbook.prod.on_lease_lost]]\n  kind = \"fence_agent\"\n  \
             agent = \"fence_self\"\n  timeout = \"1s\"\n\n  [[service.runbook.dr.activate]]",
            1,
        )
        .replacen("self_fence_grace = \"3s\"", "self_fence_grace = \"5s\"", 1);
    let spec = parse(&text, "cluster.toml").unwrap_or_else(|e| panic!("{e}"));
    let found: Vec<(&str, Phase, usize, &str, String, RunOn)> = spec
        .fence_agent_steps("prod")
        .iter()
        .map(|f| {
            (
                f.service,
                f.phase,
                f.index,
                f.agent.agent.as_str(),
                f.agent.target(),
                f.step.run_on.clone(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                "file-transfer",
                Phase::Fence,
                0,
                "fence_ipmilan",
                "ip=ipmi-st1.prod.example".into(),
                RunOn::Any
            ),
            (
                "file-transfer",
                Phase::Fence,
                2,
                "fence_virsh",
                "plug=st2".into(),
                RunOn::Site("dr".into())
            ),
            ("file-transfer", Phase::OnLeaseLost, 1, "fence_self", String::new(), RunOn::Any),
        ]
    );
    let dr: Vec<&str> =
        spec.fence_agent_steps("dr").iter().map(|f| f.agent.agent.as_str()).collect();
    assert_eq!(dr, ["fence_dr"]);
    assert!(spec.fence_agent_steps("witness").is_empty());
    assert!(spec.fence_agent_steps("nowhere").is_empty());
}

/// The worked example of docs/actuators.md (a classic DR runbook as a spec) validates, and
/// keeps its shape: what the document says about it stays true.
#[test]
fn the_classic_runbook_example_of_the_docs_validates() {
    let doc = include_str!("../../../docs/actuators.md");
    let section = doc
        .split("## Worked example: a classic DR runbook")
        .nth(1)
        .expect("docs/actuators.md has the worked example");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the worked example has a toml block");
    let spec = parse(block, "docs/actuators.md").unwrap_or_else(|e| panic!("{e}"));
    let svc = spec.service("st").expect("service st");
    let kinds = |site: &str, phase: Phase| -> Vec<&'static str> {
        svc.runbook(site, phase).iter().map(|s| s.action.kind()).collect()
    };
    assert_eq!(kinds("prod", Phase::Fence), ["exec", "exec", "fence_agent", "fence_agent"]);
    assert_eq!(kinds("prod", Phase::OnLeaseLost), ["exec", "exec"]);
    assert_eq!(kinds("dr", Phase::Activate), ["exec", "exec", "haproxy", "dns", "http"]);
    assert_eq!(kinds("dr", Phase::Verify), ["probe"]);
    assert_eq!(kinds("dr", Phase::Fence), ["exec", "exec", "fence_agent", "fence_agent"]);
    assert_eq!(kinds("dr", Phase::OnLeaseLost), ["exec", "exec"]);
    assert_eq!(
        kinds("prod", Phase::Activate),
        ["fence_agent", "fence_agent", "exec", "exec", "haproxy", "dns"]
    );
    assert_eq!(kinds("prod", Phase::Verify), ["probe"]);
}

#[test]
fn timings_are_related_to_each_other_and_to_raft() {
    // One failed run of a 1s check must not be an outage: down_after covers two runs.
    let r = parse_edit("down_after = \"3s\"", "down_after = \"200ms\"");
    assert_error(
        &r,
        "service[0].check[0].interval",
        "down_after must be at least 2 intervals (2s)",
    );
    // A service's own policy is held to the cluster policy's bounds.
    let r = parse_edit(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { lease_ttl = \"2h\" }",
    );
    assert_error(&r, "service[0].policy.lease_ttl", "longer than 1h");

    // lease_ttl against the Raft timings of node.toml (the defaults: 250ms, 1.25-2.5s).
    let raft = crate::config::RaftTimings::default().election();
    assert_eq!(raft.min_lease_ttl(), Duration::from_millis(7500));
    let enough =
        parse_edit("lease_ttl = \"6s\"", "lease_ttl = \"8s\"").unwrap_or_else(|e| panic!("{e}"));
    assert!(check_against_raft_timings(&enough, &raft).is_empty(), "8s is enough");
    for short in ["2s", "100ms"] {
        let spec = parse_edit("lease_ttl = \"6s\"", &format!("lease_ttl = \"{short}\""))
            .unwrap_or_else(|e| panic!("{e}"));
        let errors = check_against_raft_timings(&spec, &raft);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "policy.lease_ttl");
        assert!(errors[0].reason.contains("Use at least 7"), "{}", errors[0].reason);
    }
    let text = EXAMPLE.replacen("lease_ttl = \"6s\"", "lease_ttl = \"8s\"", 1).replacen(
        "max_lag_on_failover = 30",
        "max_lag_on_failover = 30\npolicy = { lease_ttl = \"3s\" }",
        1,
    );
    let spec = parse(&text, "cluster.toml").unwrap_or_else(|e| panic!("{e}"));
    let errors = check_against_raft_timings(&spec, &raft);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].key, "service[0].policy.lease_ttl");
}

/// A spec of `n` minimal services (sites prod, dr, witness; one tcp check each).
fn many_services(n: usize) -> String {
    let mut text = String::from(
        "[[site]]\nname = \"prod\"\n[[site]]\nname = \"dr\"\n[[site]]\nname = \"witness\"\nwitness = true\n\
         [policy]\nauto_failover = false\n",
    );
    for i in 0..n {
        text += &format!("[[service]]\nname = \"svc-{i}\"\ninitial_active = \"prod\"\n");
        for site in ["prod", "dr"] {
            text += &format!(
                "  [[service.check]]\n  site = \"{site}\"\n  kind = \"tcp\"\n  address = \"10.0.0.1:80\"\n"
            );
        }
    }
    text
}

#[test]
fn the_number_of_services_is_bounded() {
    let at_max = parse(&many_services(MAX_SERVICES), "cluster.toml");
    assert_eq!(at_max.unwrap_or_else(|e| panic!("{e}")).services.len(), MAX_SERVICES);
    let over = parse(&many_services(MAX_SERVICES + 1), "cluster.toml");
    assert_error(&over, "service", "301 services; a cluster protects at most 300");
}

/// The example with consistency and passive checks added before its lag probe.
fn with_readiness(extra: &str) -> Result<ClusterSpec, SpecErrors> {
    parse_edit(
        "  # Replication lag of the standby",
        &format!("{extra}\n  # Replication lag of the standby"),
    )
}

const CONSISTENCY_AND_PASSIVE: &str = r#"
  [[service.consistency]]
  name = "config"
  kind = "exec"
  command = ["sh", "-c", "cat /etc/st/*.conf | sha256sum"]
  interval = "30s"

  [[service.consistency]]
  name = "schema"
  kind = "http"
  url = "http://localhost:8080/schema-version"
  gate = false

  [[service.passive]]
  name = "st-port"
  site = "dr"
  kind = "tcp"
  address = "st.dr.example:22"
"#;

#[test]
fn consistency_and_passive_checks_parse_with_their_defaults() {
    let spec = with_readiness(CONSISTENCY_AND_PASSIVE).unwrap_or_else(|e| panic!("{e}"));
    let svc = spec.service("file-transfer").unwrap();
    assert_eq!(
        svc.consistency[0],
        ConsistencyCheck {
            name: "config".into(),
            source: FingerprintSource::Exec {
                command: vec!["sh".into(), "-c".into(), "cat /etc/st/*.conf | sha256sum".into()]
            },
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            gate: true,
        }
    );
    let schema = &svc.consistency[1];
    assert_eq!(
        (schema.interval, schema.timeout, schema.gate),
        (Duration::from_secs(10), Duration::from_secs(5), false)
    );
    let passive = &svc.passive[0];
    assert_eq!((passive.name.as_str(), passive.gate), ("st-port", true));
    assert_eq!(passive.check.site, "dr");
    assert_eq!(passive.check.probe, CheckProbe::Tcp { address: "st.dr.example:22".into() });
    // Replicated as JSON: both survive the round trip, and a spec committed before they
    // existed still reads (without them).
    let back: ClusterSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
    let mut old = serde_json::to_value(example()).unwrap();
    for svc in old["services"].as_array_mut().unwrap() {
        let svc = svc.as_object_mut().unwrap();
        assert!(svc.remove("consistency").is_some() && svc.remove("passive").is_some());
    }
    let old: ClusterSpec = serde_json::from_value(old).unwrap();
    assert!(old.services[0].consistency.is_empty() && old.services[0].passive.is_empty());
}

#[test]
fn bad_consistency_and_passive_checks_are_refused_with_their_keys() {
    let r = with_readiness(
        r#"
  [[service.consistency]]
  kind = "exec"
  command = ["true"]

  [[service.consistency]]
  name = "Config"
  kind = "tcp"

  [[service.consistency]]
  name = "same"
  kind = "http"
  url = "http://localhost/v"
  command = ["true"]

  [[service.consistency]]
  name = "same"
  kind = "exec"
  command = ["true"]
  interval = "1s"
  timeout = "2s"

  [[service.passive]]
  name = "on-witness"
  site = "witness"
  kind = "tcp"
  address = "w.example:1"

  [[service.passive]]
  site = "dr"
  kind = "exec"
"#,
    );
    assert_error(&r, "service[0].consistency[0].name", "is required");
    assert_error(&r, "service[0].consistency[1].name", "lowercase");
    assert_error(&r, "service[0].consistency[1].kind", "unknown consistency check kind \"tcp\"");
    assert_error(&r, "service[0].consistency[2].command", "not a key of an \"http\" consistency");
    assert_error(&r, "service[0].consistency[3].name", "\"same\" is also consistency[2]");
    assert_error(&r, "service[0].consistency[3].timeout", "not shorter than the interval");
    assert_error(&r, "service[0].passive[0].site", "is the witness");
    assert_error(&r, "service[0].passive[1].name", "is required");
    assert_error(&r, "service[0].passive[1].command", "is required for kind \"exec\"");
    // An unknown key in a passive table names its path.
    let r = with_readiness(
        "  [[service.passive]]\n  name = \"p\"\n  site = \"dr\"\n  kind = \"tcp\"\n  address = \"a:1\"\n  colour = \"red\"\n",
    );
    let e = r.unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}

#[test]
fn the_complete_example_of_the_docs_validates() {
    let doc = include_str!("../../../docs/cluster-spec.md");
    let section = doc.split("## A complete example").nth(1).expect("the docs have the section");
    let toml = section.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    let spec = parse(toml, "docs/cluster-spec.md").unwrap_or_else(|e| panic!("{e}"));
    let svc = &spec.services[0];
    assert_eq!((svc.consistency.len(), svc.passive.len()), (1, 1));
}
