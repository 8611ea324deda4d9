//! A real partition between sites (network namespaces joined by a bridge, see
//! `drover_tests::netns`): prod is cut from everyone while its application keeps running.
//!
//! What a user relies on (DESIGN 6, S1/S2, L1, L2): prod's nodes lose the cluster and stop
//! prod themselves (`on_lease_lost`) before dr is started, although nobody could fence prod;
//! dr takes over within the bound; after the partition heals the cluster converges.
//!
//! Needs root and iproute2; skipped otherwise (see `require_netns`), never under
//! `DROVER_TEST_STRICT=1`.

use std::time::{Duration, Instant};

use drover_tests::netns::{require_netns, Sites};
use drover_tests::{step, steps, unix_ms, NodeId, Rig};

const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// Cut to failed_over: down_after 2s + fence attempt against an unreachable site + lease wait
/// (lease_ttl 5s × 1.01/0.99 + grace 2s) + activate + verify + margin.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Heal to a converged cluster.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn partition_prod_self_fences_before_dr_activates() {
    let test = "partition_prod_self_fences_before_dr_activates";
    if !require_netns(test) {
        return;
    }
    // Declared first so it is dropped last: the rig's processes go before the namespaces.
    let sites = Sites::new(test);
    let mut r = Rig::in_netns(test, &sites);
    let prod = r.site_ids("prod");
    let majority: Vec<NodeId> = r.c.ids().into_iter().filter(|id| !prod.contains(id)).collect();

    r.start_app("prod", "initial deployment");
    r.apply_failover_spec();
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);

    // The partition: prod cut from dr, the witness and the operator.
    let cut = Instant::now();
    let cut_ms = unix_ms();
    sites.cut("prod");
    r.talk_to(Some(majority.clone()));
    match (r.apps.healthz_from(Some(sites.ns("prod")), "prod"), r.apps.healthz("prod")) {
        (Ok((200, _)), Err(_)) => {}
        other => r.fail(format!(
            "after the cut prod's application must answer inside prod and not from outside: {other:?}"
        )),
    }

    let svc = r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    eprintln!("failover completed {:.1}s after the cut", cut.elapsed().as_secs_f64());

    // The ledger (one clock: every namespace shares this machine's): prod stopped itself on
    // losing its lease, before any dr start; nobody reached prod to fence it.
    let ledger = r.apps.ledger();
    if let Some(early) = ledger.iter().find(|l| l.by != "harness" && l.unix_ms < cut_ms) {
        let raw = early.raw.clone();
        r.fail(format!("drover ran a runbook step before the cut (at {cut_ms} ms): {raw:?}"));
    }
    let Some(lost) = ledger.iter().find(|l| l.is("prod", "stop", Some("lease lost"), None)) else {
        r.fail("prod's nodes never ran on_lease_lost: no `prod stop (lease lost)` in the ledger");
    };
    let Some(start) = ledger.iter().find(|l| l.site == "dr" && l.action == "start") else {
        r.fail("the ledger has no `dr start`");
    };
    if start.epoch != Some(2) {
        r.fail(format!("dr must be started at epoch 2: {:?}", start.raw));
    }
    if lost.unix_ms >= start.unix_ms {
        r.fail(format!(
            "prod must have stopped itself before dr started: lease lost at {} ms, dr start at {} ms \
             (both sites served at once for {} ms)",
            lost.unix_ms,
            start.unix_ms,
            lost.unix_ms - start.unix_ms
        ));
    }
    if !["prod-1", "prod-2"].contains(&lost.by.as_str()) {
        r.fail(format!("on_lease_lost must run on a prod node: {:?}", lost.raw));
    }
    if !["dr-1", "dr-2"].contains(&start.by.as_str()) {
        r.fail(format!("the activate step must run on a dr node: {:?}", start.raw));
    }
    if let Some(f) = ledger.iter().find(|l| l.is("prod", "stop", Some("fence"), None)) {
        let raw = f.raw.clone();
        r.fail(format!("prod was unreachable, yet a fence step ran there: {raw:?}"));
    }
    // The workflow: the fence step failed (prod unreachable) and was passed over; the lease
    // wait and dr's activation succeeded.
    let all = steps(&svc);
    let expect = [
        ("fence", "prod", "failed"),
        ("lease_wait", "", "succeeded"),
        ("activate", "dr", "succeeded"),
    ];
    for (stage, site, status) in expect {
        match step(&all, stage) {
            Some(s) if s["status"] == status && (site.is_empty() || s["site"] == site) => {}
            other => r.fail(format!(
                "expected the {stage} step to be {status}, got {other:?}; workflow {}",
                svc["workflow"]
            )),
        }
    }
    if r.apps.pid("prod").is_some() {
        r.fail("prod's application still runs after on_lease_lost");
    }
    match r.apps.healthz("dr") {
        Ok((200, body)) if body.contains("dr") => {}
        other => r.fail(format!("GET /healthz of the dr application from outside: {other:?}")),
    }

    // Heal: one leader, all five members, every node (prod's included) applied at least the
    // leader's commit index and agrees on who leads and on the service.
    sites.heal("prod");
    r.talk_to(None);
    let healed = Instant::now();
    let all_ids = r.c.ids();
    r.wait("a converged cluster after the heal", CONVERGE_TIMEOUT, |r| {
        let s = r.c.ctl_json_via(&majority, &["status"])?;
        let leader = s["leader_id"].as_u64().ok_or_else(|| format!("no leader: {s}"))?;
        let commit = s["commit_index"].as_u64().ok_or_else(|| format!("no commit index: {s}"))?;
        let members = s["members"].as_array().map_or(0, |m| m.len());
        if members != 5 {
            return Err(format!("{members} members instead of 5: {s}"));
        }
        for &id in &all_ids {
            let local = r.c.status_local(id)?;
            let name = r.c.name(id);
            if local["leader_id"].as_u64() != Some(leader) {
                return Err(format!(
                    "{name} sees leader {} instead of {leader}",
                    local["leader_id"]
                ));
            }
            if local["applied_index"].as_u64().unwrap_or(0) < commit {
                return Err(format!(
                    "{name} applied {} < commit index {commit}",
                    local["applied_index"]
                ));
            }
            let svc = local["services"]
                .as_array()
                .and_then(|a| a.iter().find(|v| v["name"] == "webshop"))
                .cloned();
            match svc {
                Some(v) if v["active_site"] == "dr" && v["epoch"] == 2 => {}
                other => return Err(format!("{name}'s state shows webshop as {other:?}")),
            }
        }
        Ok(())
    });
    eprintln!("converged {:.1}s after the heal", healed.elapsed().as_secs_f64());
}
