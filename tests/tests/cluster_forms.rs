//! Two sites with two controllers each plus a witness form one Raft cluster from their
//! `[[initial_member]]` lists: one leader, five voters as declared, every node ready, and the
//! Raft metrics an operator alerts on are exported.

use std::time::Duration;

use drover_tests::{Cluster, NodeId, LEADER_TIMEOUT};

const SETTLE: Duration = Duration::from_secs(20);

#[test]
fn cluster_forms() {
    let mut c = Cluster::builder("cluster_forms").two_sites_and_witness().build();
    c.start();
    let leader = c.wait_for_leader(LEADER_TIMEOUT);

    // Every declared node is a voter with the name, site, role and address it was given.
    let expected: Vec<String> = c
        .ids()
        .into_iter()
        .map(|id| {
            format!("{id} {} {} {} {} voter", c.name(id), c.site(id), c.role(id), c.grpc_addr(id))
        })
        .collect();
    let status = c.wait_for("`status` to list the five declared nodes as voters", SETTLE, |c| {
        let s = c.status_json()?;
        let mut seen: Vec<(u64, String)> = s["members"]
            .as_array()
            .ok_or_else(|| format!("no members array in {s}"))?
            .iter()
            .map(|m| {
                let f = |k: &str| m[k].as_str().unwrap_or("<missing>").to_owned();
                let id = m["id"].as_u64().unwrap_or(0);
                (
                    id,
                    format!(
                        "{id} {} {} {} {} {}",
                        f("name"),
                        f("site"),
                        f("role"),
                        f("address"),
                        f("membership")
                    ),
                )
            })
            .collect();
        seen.sort();
        let seen: Vec<String> = seen.into_iter().map(|(_, line)| line).collect();
        if seen == expected {
            Ok(s)
        } else {
            Err(format!("members {seen:?}, expected {expected:?}"))
        }
    });
    // `status` is answered by the leader (an election right after start-up may have moved
    // leadership since `leader` was first seen; what matters is that the leader answers).
    if status["state"] != "leader" || status["node_id"] != status["leader_id"] {
        c.fail(format!(
            "`status` should be answered by the leader (state \"leader\"), got {status}"
        ));
    }
    let leader = status["leader_id"].as_u64().unwrap_or(leader);
    if status["term"].as_u64().unwrap_or(0) < 1 {
        c.fail(format!("a cluster with a leader must be in term >= 1, got {status}"));
    }

    for id in c.ids() {
        let name = c.name(id).to_owned();
        for path in ["/healthz", "/readyz"] {
            c.wait_for(&format!("GET {path} on {name} to answer 200"), SETTLE, |c| {
                match c.http_get(id, path)? {
                    (200, _) => Ok(()),
                    (code, body) => Err(format!("{code} {}", body.trim())),
                }
            });
        }
    }

    // Metrics: every node reports the same leader and the Raft progress gauges; the leader
    // reports replication lag per follower.
    for id in c.ids() {
        let name = c.name(id).to_owned();
        c.wait_for(
            &format!("/metrics on {name} to report leader {leader} and the Raft gauges"),
            SETTLE,
            |c| {
                let m = c.metrics(id)?;
                for gauge in
                    ["drover_raft_term", "drover_raft_commit_index", "drover_raft_applied_index"]
                {
                    m.get_u64(gauge).ok_or_else(|| format!("no {gauge} in {m:?}"))?;
                }
                match m.get_u64("drover_raft_leader_id") {
                    Some(l) if l == leader => {}
                    other => return Err(format!("drover_raft_leader_id = {other:?}")),
                }
                if m.get_u64("drover_raft_term") == Some(0) {
                    return Err("drover_raft_term = 0 with a leader elected".into());
                }
                if id == leader {
                    let followers: Vec<NodeId> =
                        c.ids().into_iter().filter(|&f| f != leader).collect();
                    for f in followers {
                        let label = f.to_string();
                        m.get("drover_raft_replication_lag", &[("follower", &label)]).ok_or_else(
                            || {
                                format!(
                                    "leader has no drover_raft_replication_lag{{follower=\"{f}\"}}"
                                )
                            },
                        )?;
                    }
                }
                Ok(())
            },
        );
    }
}
