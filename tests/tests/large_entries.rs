//! Large log entries (issue 10): many applies of a large spec while a follower is down; when it
//! comes back it must catch up. The input: 20 applies of a ~1 MB spec make ~20 MB of
//! entries; without byte-bounded batches the leader's catch-up message is over the
//! transport's 16 MiB limit, and the follower never catches up.
//!
//! The cluster runs the release build (`release_binaries`): what is measured is whether
//! megabyte entries replicate on the build operators deploy. Measured on 2 shared cores: all
//! 20 applies commit and the follower catches up in about 4 s (the whole test takes about
//! 16 s). A debug build spends most of its time encoding and decoding the JSON of such
//! entries: a follower takes 0.3-0.9 s to append one, answers the heartbeats queued behind it
//! late, and the leader stands back for lack of a quorum during the applies.

use std::time::{Duration, Instant};

use drover_tests::{Cluster, LEADER_TIMEOUT};

/// Applies made while the follower is down.
const APPLIES: usize = 20;
/// Services per spec and the size of each one's filler argument: ~1 MB in all, under the
/// 1 MiB spec limit.
const SERVICES: usize = 120;
const FILLER: usize = 7900;
/// The follower restarted, until it applied everything the leader committed.
const CATCH_UP: Duration = Duration::from_secs(120);
/// One apply of a ~1 MB spec (5 processes on 2 shared cores).
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// A spec of `SERVICES` services whose on_lease_lost step carries a `FILLER`-byte argument
/// that differs with `round`, so every apply is a new version. Automatic failover is off: the
/// checks point nowhere (`down_after` at least two of their intervals, as validation wants).
fn big_spec(round: usize) -> String {
    let mut text = String::from(
        "[[site]]\nname = \"prod\"\n[[site]]\nname = \"dr\"\n[[site]]\nname = \"witness\"\n\
         witness = true\n\n[policy]\nauto_failover = false\ndown_after = \"30s\"\n\
         up_after = \"30s\"\n",
    );
    let filler: String = (0..FILLER).map(|i| char::from(b'a' + ((i + round) % 26) as u8)).collect();
    for i in 0..SERVICES {
        text += &format!(
            "\n[[service]]\nname = \"svc-{i:03}\"\ninitial_active = \"prod\"\n  \
             [[service.check]]\n  site = \"prod\"\n  kind = \"tcp\"\n  address = \"127.0.0.1:9\"\n  \
             interval = \"10s\"\n  [[service.check]]\n  site = \"dr\"\n  kind = \"tcp\"\n  \
             address = \"127.0.0.1:9\"\n  interval = \"10s\"\n  [[service.runbook.prod.on_lease_lost]]\n  kind = \"exec\"\n  \
             run_on = \"prod\"\n  timeout = \"1s\"\n  command = [\"/bin/true\", \"{round}-{filler}\"]\n"
        );
    }
    text
}

fn applied_index(c: &Cluster, id: u64) -> Result<u64, String> {
    let m = c.metrics(id)?;
    m.get("drover_raft_applied_index", &[])
        .map(|v| v as u64)
        .ok_or_else(|| "no drover_raft_applied_index".to_string())
}

#[test]
fn a_follower_catches_up_after_many_large_entries() {
    let mut c =
        Cluster::builder("large_entries").two_sites_and_witness().release_binaries().build();
    c.start();
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    let follower =
        c.ids().into_iter().find(|&id| id != leader && c.role(id) != drover_tests::Role::Witness);
    let follower = follower.unwrap_or_else(|| c.fail("no controller follower"));
    c.terminate(follower);

    let path = c.root().join("cluster.toml");
    for round in 0..APPLIES {
        let text = big_spec(round);
        assert!(text.len() > 950_000 && text.len() < 1 << 20, "spec is {} bytes", text.len());
        std::fs::write(&path, text).unwrap();
        let p = path.to_string_lossy().into_owned();
        c.wait_for(&format!("apply {} of {APPLIES}", round + 1), APPLY_TIMEOUT, |c| {
            c.ctl_json(&["config", "apply", "-f", &p]).map(|_| ())
        });
    }
    let target = c.wait_for("the leader's applied index", Duration::from_secs(30), |c| {
        let l = c.wait_for_leader(LEADER_TIMEOUT);
        applied_index(c, l)
    });

    let back = Instant::now();
    c.start_node(follower);
    let name = c.name(follower).to_owned();
    c.wait_for(&format!("{name} to apply index {target}"), CATCH_UP, |c| {
        match applied_index(c, follower)? {
            i if i >= target => Ok(()),
            i => Err(format!("{name} applied {i} of {target}")),
        }
    });
    eprintln!(
        "{name} caught up with {APPLIES} entries of ~1 MB in {:.1}s",
        back.elapsed().as_secs_f64()
    );
    // And its own state has the last spec version.
    let local = c.status_local(follower).unwrap_or_else(|e| c.fail(e));
    if local["spec_version"].as_u64() != Some(APPLIES as u64) {
        c.fail(format!("{name} has spec version {}, expected {APPLIES}", local["spec_version"]));
    }
}
