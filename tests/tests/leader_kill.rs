//! Losing the leader to `kill -9`: the remaining nodes elect another leader and keep accepting
//! writes; the killed node restarts from its data dir and catches up.

use std::time::Duration;

use drover_tests::{Cluster, CATCH_UP_TIMEOUT, LEADER_TIMEOUT};

const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn leader_kill() {
    let mut c = Cluster::builder("leader_kill").two_sites_and_witness().build();
    c.start();
    let old_leader = c.wait_for_leader(LEADER_TIMEOUT);
    c.wait_for("the first note to commit", WRITE_TIMEOUT, |c| c.note_add("before the leader dies"));
    let old_term = c.status_json().ok().and_then(|s| s["term"].as_u64()).unwrap_or(0);

    c.kill_9(old_leader);

    let new_leader = c.wait_for(
        &format!("a leader other than the killed node {old_leader}"),
        LEADER_TIMEOUT,
        |c| {
            let s = c.status_json()?;
            match s["leader_id"].as_u64() {
                Some(l) if l != old_leader => Ok(l),
                _ => Err(format!("status {s}")),
            }
        },
    );
    let (seq, index) = c.wait_for("a note to commit under the new leader", WRITE_TIMEOUT, |c| {
        c.note_add("after the leader died")
    });
    let status =
        c.status_json().unwrap_or_else(|e| c.fail(format!("status after the failover: {e}")));
    let commit = status["commit_index"].as_u64().unwrap_or(0);
    if status["term"].as_u64().unwrap_or(0) <= old_term {
        c.fail(format!("the new leader {new_leader} must be in a term after {old_term}: {status}"));
    }
    if commit < index {
        c.fail(format!("note seq {seq} acknowledged at log index {index} but the leader's commit_index is {commit}"));
    }

    c.restart(old_leader);
    let name = c.name(old_leader).to_owned();
    c.wait_for(
        &format!("restarted {name} to apply up to commit index {commit} (/metrics)"),
        CATCH_UP_TIMEOUT,
        |c| {
            let applied = c.metrics(old_leader)?.get_u64("drover_raft_applied_index");
            match applied {
                Some(a) if a >= commit => Ok(()),
                other => Err(format!("drover_raft_applied_index = {other:?}")),
            }
        },
    );
    let local = c
        .status_local(old_leader)
        .unwrap_or_else(|e| c.fail(format!("`status --local` on {name}: {e}")));
    if local["applied_index"].as_u64().unwrap_or(0) < commit
        || local["leader_id"].as_u64().is_none()
    {
        c.fail(format!("`status --local` on restarted {name} should show applied_index >= {commit} and a leader: {local}"));
    }
    // The restarted node is a working member again: the cluster still takes writes with it back.
    c.wait_for("a note to commit after the restart", WRITE_TIMEOUT, |c| {
        c.note_add("after the restart")
    });
}
