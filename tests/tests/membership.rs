//! Changing membership at runtime: a node started with no initial members is added as a
//! learner, catches up, is promoted to voter; another voter is removed. The cluster keeps
//! accepting writes throughout.

use std::time::Duration;

use drover_tests::{Cluster, NodeId, Role, CATCH_UP_TIMEOUT, LEADER_TIMEOUT};
use serde_json::Value;

const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(20);
const NOTES_BEFORE_JOIN: usize = 20;

fn member(status: &Value, id: NodeId) -> Option<Value> {
    status["members"].as_array()?.iter().find(|m| m["id"].as_u64() == Some(id)).cloned()
}

fn run_ok(c: &mut Cluster, args: &[&str]) {
    let out = c.ctl(args);
    if !out.success() {
        c.fail(format!("droverctl {} failed: {}", args.join(" "), out.describe()));
    }
}

#[test]
fn membership() {
    let mut c = Cluster::builder("membership")
        .node("prod-1", "prod", Role::Controller)
        .node("dr-1", "dr", Role::Controller)
        .node("witness", "witness", Role::Witness)
        .joiner("dr-2", "dr", Role::Controller)
        .build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    for i in 0..NOTES_BEFORE_JOIN {
        c.wait_for(&format!("note {i} to commit"), WRITE_TIMEOUT, |c| {
            c.note_add(&format!("before join {i}"))
        });
    }

    let joiner = c.id_of("dr-2");
    c.start_node(joiner);
    let (id, addr) = (joiner.to_string(), c.grpc_addr(joiner).to_string());
    run_ok(
        &mut c,
        &[
            "member",
            "add",
            "--id",
            &id,
            "--name",
            "dr-2",
            "--site",
            "dr",
            "--role",
            "controller",
            "--address",
            &addr,
        ],
    );

    // Added as a learner, with the declared identity.
    let status = c.wait_for("dr-2 to be listed as a learner", SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, joiner) {
            Some(m) if m["membership"] == "learner" => Ok(s),
            other => Err(format!("dr-2 entry {other:?} in {s}")),
        }
    });
    let m = member(&status, joiner).expect("checked above");
    if m["name"] != "dr-2"
        || m["site"] != "dr"
        || m["role"] != "controller"
        || m["address"] != addr.as_str()
    {
        c.fail(format!(
            "dr-2 should be listed as name dr-2, site dr, role controller, address {addr}: {m}"
        ));
    }
    let commit_after_add = status["commit_index"].as_u64().unwrap_or(0);

    // Catches up: the leader's matched index reaches what was committed, and dr-2 applied it.
    c.wait_for(
        &format!("dr-2 to catch up to commit index {commit_after_add}"),
        CATCH_UP_TIMEOUT,
        |c| {
            let s = c.status_json()?;
            let m = member(&s, joiner).ok_or_else(|| format!("dr-2 missing from {s}"))?;
            let last = s["last_log_index"].as_u64().unwrap_or(u64::MAX);
            match m["matched_index"].as_u64() {
                Some(matched)
                    if matched >= commit_after_add && last.saturating_sub(matched) <= 1 => {}
                _ => return Err(format!("dr-2 {m}, leader last_log_index {last}")),
            }
            let applied = c.metrics(joiner)?.get_u64("drover_raft_applied_index");
            match applied {
                Some(a) if a >= commit_after_add => Ok(()),
                other => Err(format!("dr-2 drover_raft_applied_index = {other:?}")),
            }
        },
    );

    run_ok(&mut c, &["member", "promote", &id]);
    c.wait_for("dr-2 to be listed as a voter", SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, joiner) {
            Some(m) if m["membership"] == "voter" => Ok(()),
            other => Err(format!("dr-2 entry {other:?}")),
        }
    });
    c.wait_for("GET /readyz on dr-2 to answer 200", SETTLE, |c| {
        match c.http_get(joiner, "/readyz")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}", body.trim())),
        }
    });

    // Remove a voter that is not the leader (so the change itself needs no leader handover).
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    let victim = [c.id_of("prod-1"), c.id_of("dr-1")]
        .into_iter()
        .find(|&v| v != leader)
        .expect("two candidates");
    let victim_name = c.name(victim).to_owned();
    run_ok(&mut c, &["member", "remove", &victim.to_string()]);
    c.wait_for(&format!("{victim_name} to no longer be a voter"), SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, victim) {
            Some(m) if m["membership"] == "voter" => {
                Err(format!("{victim_name} still listed: {m}"))
            }
            _ => Ok(()),
        }
    });
    // The reshaped cluster (old leader, witness, dr-2) still commits.
    c.wait_for("a note to commit after the removal", WRITE_TIMEOUT, |c| {
        c.note_add("after removal")
    });
}
