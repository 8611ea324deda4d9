//! `droverctl status` on a member without a quorum (issue 9, "a quorum-less minority says
//! so"): a majority of the members is killed and the survivors are asked. What an operator
//! relies on: the answer says "no quorum: N of M members reachable", names the members the
//! survivor reaches, shows the survivor's own view of the sites' health, and never presents a
//! leader (not even the survivor's own former leadership) instead of "retry in a few seconds".

use std::time::Duration;

use drover_tests::{NodeId, Rig};

/// A survivor notices the silence (an election timeout), a former leader stands back after
/// its leader lease, presence checks run every second: generous on a loaded machine.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(45);

#[test]
fn status_on_a_member_without_quorum_says_so_with_what_it_reaches_and_sees() {
    let mut r =
        Rig::loopback("status_on_a_member_without_quorum_says_so_with_what_it_reaches_and_sees");
    r.start_app("prod", "initial deployment");
    r.apply_failover_spec();
    r.wait_protecting_with_prod_up(Duration::from_secs(30));
    let (prod, others): (Vec<NodeId>, Vec<NodeId>) =
        r.c.ids().into_iter().partition(|&id| r.c.site(id) == "prod");
    let leader_was = r.ctl_json(&["status"]).ok().and_then(|s| s["leader_id"].as_u64());
    // dr-1, dr-2 and the witness: 3 of 5, a majority.
    for &id in &others {
        r.c.kill_9(id);
    }
    let want = format!("no quorum: {} of 5 members reachable", prod.len());
    for &id in &prod {
        let name = r.c.name(id).to_owned();
        let status = r.wait(&format!("status on {name} to say {want:?}"), NOTICE_TIMEOUT, |r| {
            let s = r.c.ctl_json_at(id, &["status"])?;
            let quorum = s["quorum"].as_str().unwrap_or_default();
            let reachable: Vec<u64> = s["reachable"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64())
                .collect();
            let reaches_site = prod.iter().all(|p| reachable.contains(p));
            if quorum.starts_with(&want) && s["leader_id"].is_null() && reaches_site {
                Ok(s)
            } else {
                Err(format!("{s}"))
            }
        });
        let reachable: Vec<u64> = status["reachable"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64())
            .collect();
        if others.iter().any(|o| reachable.contains(o)) {
            r.fail(format!("{name} claims to reach a killed member: {status}"));
        }
        if Some(id) == leader_was
            && !status["quorum"].as_str().unwrap_or("").contains("stands back")
        {
            r.fail(format!("the former leader {name} must say it stands back: {status}"));
        }
        // Its own view of the sites: prod's application answers, dr's was never started.
        let svc = &status["services"][0];
        if svc["own_view"]["prod"] != "healthy" || svc["own_view"]["dr"] != "unhealthy" {
            r.fail(format!("{name} must show its own view of the sites: {status}"));
        }
        // The table says the same, first. While the former leader probes for a quorum (its
        // heartbeats on for a moment) its site-mate hears it and sends the caller there: the
        // answer is then that node's, and says the same.
        let out = r.c.ctl_at(id, &["status"]);
        let first = out.stdout.lines().next().unwrap_or_default().to_string();
        let said_by_prod =
            prod.iter().any(|&p| first.starts_with(&format!("{}: {want}", r.c.name(p))));
        if !out.success() || !said_by_prod {
            r.fail(format!("status table on {name}: {first:?}\n{}{}", out.stdout, out.stderr));
        }
        if !out.stdout.contains("prod=healthy (own view)") {
            r.fail(format!("status table on {name} must show its own view:\n{}", out.stdout));
        }
        eprintln!("{name}: {first}");
    }
}
