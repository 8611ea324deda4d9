//! drover must never cause an outage (DESIGN.md 6 "the other half", 7 A1-A3): ordinary faults
//! of the control plane itself must not stop a healthy production site.
//!
//! Each test is a failing input found on the release binaries, now kept: the Raft leader
//! killed or stopped (any member, restarted after), members of the active site stalled
//! (SIGSTOP) for seconds, the classic split between the sites with the leader outside the
//! witness, and a partial partition that leaves the leader on a "bridge" to the witness
//! only. What a user relies on: the active site's application keeps serving, drover runs no
//! runbook step against it (no self-fence, no failover), leaders are not deposed by members
//! that were cut off or stalled, and a connected majority elects a leader.
//!
//! The loopback tests run everywhere; the partition tests need root and iproute2/nftables
//! (skipped with a message otherwise, never under `DROVER_TEST_STRICT=1`).

use std::thread;
use std::time::{Duration, Instant};

use drover_tests::netns::{have_nft, require_netns, Sites};
use drover_tests::{failover_spec, unix_ms, NodeId, Rig, LEADER_TIMEOUT};

const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
/// The failover spec's lease_ttl (8s) twice: a lease that was going to run out has.
const TWICE_THE_LEASE: Duration = Duration::from_secs(16);

/// Fails unless, since `since_ms`, drover ran no runbook step (the ledger has only the
/// harness's lines) and the service is still protecting in prod at epoch 1.
fn prod_untouched(r: &mut Rig, since_ms: u64, what: &str) {
    let ran: Vec<String> = r
        .apps
        .ledger()
        .into_iter()
        .filter(|l| l.by != "harness" && l.unix_ms >= since_ms)
        .map(|l| l.raw)
        .collect();
    if !ran.is_empty() {
        r.fail(format!("{what}: drover acted on a healthy prod: {ran:?}"));
    }
    let svc = r.wait("the service's status", Duration::from_secs(20), |r| r.service());
    if svc["phase"] != "protecting" || svc["active_site"] != "prod" || svc["epoch"] != 1 {
        r.fail(format!("{what}: the service must still be protecting in prod at epoch 1: {svc}"));
    }
    match r.apps.healthz("prod") {
        Ok((200, _)) => {}
        other => r.fail(format!("{what}: prod's application must still answer: {other:?}")),
    }
}

/// The current leader and term, as the running members agree.
fn leader_and_term(r: &mut Rig) -> (NodeId, u64) {
    r.wait("a leader", LEADER_TIMEOUT, |r| {
        let s = r.ctl_json(&["status"])?;
        match (s["leader_id"].as_u64(), s["term"].as_u64()) {
            (Some(l), Some(t)) => Ok((l, t)),
            _ => Err(format!("status {s}")),
        }
    })
}

/// Waits for a leader other than `old`.
fn new_leader(r: &mut Rig, old: NodeId) -> NodeId {
    r.wait(&format!("a leader other than {old}"), LEADER_TIMEOUT, |r| {
        let s = r.ctl_json(&["status"])?;
        match s["leader_id"].as_u64() {
            Some(l) if l != old => Ok(l),
            _ => Err(format!("status {s}")),
        }
    })
}

/// Kills (SIGKILL) and restarts leaders until one of `sites` leads; returns it. A killed
/// member runs no runbook, so this moves leadership without touching any application.
fn move_leader_to(r: &mut Rig, sites: &[&str]) -> NodeId {
    for _ in 0..12 {
        let (leader, _) = leader_and_term(r);
        if sites.contains(&r.c.site(leader)) {
            return leader;
        }
        r.c.kill_9(leader);
        new_leader(r, leader);
        r.c.restart(leader);
        thread::sleep(Duration::from_secs(2));
    }
    r.fail(format!("could not move the leader to {sites:?} in 12 tries"));
}

fn protecting_rig(r: &mut Rig, spec: &str) {
    r.start_app("prod", "initial deployment");
    r.apply_spec(spec, "the failover spec");
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);
}

#[test]
fn leader_loss_never_stops_a_healthy_prod() {
    let mut r = Rig::loopback("leader_loss_never_stops_a_healthy_prod");
    let spec = failover_spec(&r.apps);
    protecting_rig(&mut r, &spec);
    let since = unix_ms();
    let mut placements = Vec::new();
    // kill -9, SIGTERM (an upgrade), kill -9 of a leader placed outside prod.
    for round in 0..3 {
        let leader = if round == 2 {
            move_leader_to(&mut r, &["dr", "witness"])
        } else {
            leader_and_term(&mut r).0
        };
        placements.push(r.c.name(leader).to_owned());
        let t = Instant::now();
        if round == 1 {
            r.c.terminate(leader);
        } else {
            r.c.kill_9(leader);
        }
        let next = new_leader(&mut r, leader);
        eprintln!(
            "round {round}: leader {} lost; {} leads after {:.1}s",
            r.c.name(leader),
            r.c.name(next),
            t.elapsed().as_secs_f64()
        );
        thread::sleep(TWICE_THE_LEASE.saturating_sub(t.elapsed()));
        let what = format!("after losing leader {}", r.c.name(leader));
        prod_untouched(&mut r, since, &what);
        r.c.restart(leader);
        thread::sleep(Duration::from_secs(2));
    }
    eprintln!("leaders lost: {placements:?}");
    prod_untouched(&mut r, since, "at the end");
}

#[test]
fn stalled_prod_members_neither_depose_the_leader_nor_fail_over() {
    let mut r = Rig::loopback("stalled_prod_members_neither_depose_the_leader_nor_fail_over");
    // A 6 s stall is well inside a 15 s lease and shorter than down_after.
    let spec = failover_spec(&r.apps)
        .replace("lease_ttl = \"8s\"", "lease_ttl = \"15s\"")
        .replace("down_after = \"2s\"", "down_after = \"10s\"")
        .replace("up_after = \"5s\"", "up_after = \"10s\"");
    protecting_rig(&mut r, &spec);
    // The stalls are of prod's members; the leader sits elsewhere, so nothing is to change.
    move_leader_to(&mut r, &["dr", "witness"]);
    let since = unix_ms();
    let prod = r.site_ids("prod");
    for round in 0..2 {
        let (leader, term) = leader_and_term(&mut r);
        let app = r.apps.pid("prod");
        for &id in &prod {
            r.c.signal(id, libc::SIGSTOP);
        }
        if let Some(pid) = app {
            // SAFETY: a plain syscall on the harness's own child.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
        }
        thread::sleep(Duration::from_secs(6));
        for &id in &prod {
            r.c.signal(id, libc::SIGCONT);
        }
        if let Some(pid) = app {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        thread::sleep(Duration::from_secs(12));
        let (after, term_after) = leader_and_term(&mut r);
        if (after, term_after) != (leader, term) {
            r.fail(format!(
                "stall {round}: members back from a stall must not start elections that depose a \
                 leader a majority follows: leader {} term {term} before, {} term {term_after} after",
                r.c.name(leader),
                r.c.name(after)
            ));
        }
        prod_untouched(&mut r, since, &format!("after stall {round}"));
    }
}

/// A rig in network namespaces with nftables, or `None` (skipped) where they are missing.
fn netns_rig(test: &str) -> Option<(Sites, Rig)> {
    if !require_netns(test) {
        return None;
    }
    if !have_nft() {
        drover_tests::skip(&format!(
            "{test}: skipped: needs nft (Debian package nftables) for one-way cuts"
        ));
        return None;
    }
    let sites = Sites::new(test);
    let rig = Rig::in_netns(test, &sites);
    Some((sites, rig))
}

#[test]
fn classic_split_with_the_leader_in_dr_is_not_a_failover() {
    let test = "classic_split_with_the_leader_in_dr_is_not_a_failover";
    let Some((mut sites, mut r)) = netns_rig(test) else { return };
    let spec = failover_spec(&r.apps);
    protecting_rig(&mut r, &spec);
    let leader = move_leader_to(&mut r, &["dr"]);
    eprintln!("leader {} in dr; cutting prod from dr both ways", r.c.name(leader));
    let since = unix_ms();
    // prod and dr cannot reach each other; both reach the witness and both applications.
    sites.cut_one_way("prod", "dr");
    sites.cut_one_way("dr", "prod");
    thread::sleep(Duration::from_secs(20));
    prod_untouched(&mut r, since, "20s into the split");
    sites.heal_one_way();
    thread::sleep(Duration::from_secs(5));
    prod_untouched(&mut r, since, "after the heal");
    drop(r);
}

#[test]
fn partial_partition_a_connected_majority_elects_and_someone_serves() {
    let test = "partial_partition_a_connected_majority_elects_and_someone_serves";
    let Some((mut sites, mut r)) = netns_rig(test) else { return };
    let spec = failover_spec(&r.apps);
    protecting_rig(&mut r, &spec);
    // The bridge: the leader's site-mate down, the leader cut from the other site both ways,
    // still reaching the witness. Any controller leader will do (the witness reaches everyone).
    let leader = move_leader_to(&mut r, &["prod", "dr"]);
    let (site, far) = match r.c.site(leader) {
        "prod" => ("prod", "dr"),
        _ => ("dr", "prod"),
    };
    let other = r.site_ids(site).into_iter().find(|&id| id != leader).expect("two nodes a site");
    let majority: Vec<NodeId> = r.c.ids().into_iter().filter(|&id| r.c.site(id) != site).collect();
    eprintln!(
        "leader {} in {site}; {} down; the leader cut from {far}, reaching the witness only",
        r.c.name(leader),
        r.c.name(other)
    );
    r.c.kill_9(other);
    let since = unix_ms();
    let cut = Instant::now();
    sites.cut_one_way(site, far);
    sites.cut_one_way(far, site);
    // The far site's nodes and the witness are connected: they must elect one of them (A2),
    // although the old leader still reaches the witness.
    r.talk_to(Some(majority.clone()));
    let elected =
        r.wait("a leader among the far site and the witness", Duration::from_secs(20), |r| {
            let s = r.ctl_json(&["status"])?;
            match s["leader_id"].as_u64() {
                Some(l) if majority.contains(&l) => Ok(l),
                _ => Err(format!("status {s}")),
            }
        });
    eprintln!("{} elected {:.1}s after the cut", r.c.name(elected), cut.elapsed().as_secs_f64());
    // With the leader in prod, prod's remaining node reaches only the witness, not a majority:
    // it may keep its lease through the witness or lose it; either way the service must have a
    // serving site (A3): prod untouched, or a completed failover to dr. With the leader in dr,
    // prod is connected to the new majority and must be untouched (A1).
    thread::sleep(Duration::from_secs(15));
    let svc = r.wait("the service's status", Duration::from_secs(20), |r| r.service());
    if svc["phase"] == "protecting" && svc["active_site"] == "prod" {
        prod_untouched(&mut r, since, "15s into the partial partition");
    } else {
        let svc = r.wait_failed_over_to_dr(Duration::from_secs(30));
        eprintln!("prod lost its lease; the service failed over: {svc}");
    }
    sites.heal_one_way();
    drop(r);
}
