//! Recovering without quorum (`drover-node recover`): prod-1, prod-2 and the witness are lost
//! together, and dr-1 and dr-2, a minority, refuse every write. The operator stops them,
//! runs `inspect` on both, `recover` on the more advanced one and `recover --follow` on the
//! other; started again, dr alone commits, lists only the survivors as voters and shows the
//! recovery in the history. A lost member restarted on its old data cannot disturb the new
//! generation; wiped and added again, a lost member catches up.

use std::process::Command;
use std::time::Duration;

use drover_tests::{
    run_with_deadline, Cluster, CmdOutput, NodeId, Rig, CATCH_UP_TIMEOUT, LEADER_TIMEOUT,
};
use serde_json::Value;

const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Detection (down_after 2 s), the fence step, the lease wait (lease_ttl 8 s, drift, grace),
/// activation and verification, on a loaded machine.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE: Duration = Duration::from_secs(20);
/// `inspect` and `recover` open a store and print; nothing in them waits on the network.
const OFFLINE_DEADLINE: Duration = Duration::from_secs(20);

fn node_cmd(c: &Cluster, id: NodeId, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(&c.bins().node);
    cmd.args(args).arg("--config").arg(c.config_path(id));
    run_with_deadline(&mut cmd, OFFLINE_DEADLINE)
}

fn run_ok(c: &mut Cluster, args: &[&str]) {
    let out = c.ctl(args);
    if !out.success() {
        c.fail(format!("droverctl {} failed: {}", args.join(" "), out.describe()));
    }
}

/// `last log id:  T-I` from `inspect`, as (T, I).
fn last_log_id(out: &CmdOutput) -> Option<(u64, u64)> {
    let line = out.stdout.lines().find_map(|l| l.trim().strip_prefix("last log id:"))?;
    let (term, index) = line.trim().split_once('-')?;
    Some((term.parse().ok()?, index.parse().ok()?))
}

fn voters(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["membership"] == "voter")
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn member_names(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// On the stopped survivors: `inspect` on each, `recover` on the one with the highest last
/// log id (after a `--dry-run`), `recover --follow` on the other. Returns (chosen, other).
fn recover_from_the_most_advanced(c: &mut Cluster, survivors: [NodeId; 2]) -> (NodeId, NodeId) {
    let mut seen = Vec::new();
    for id in survivors {
        let out = node_cmd(c, id, &["inspect"]);
        match last_log_id(&out) {
            Some(last) if out.success() => seen.push((last, id)),
            _ => c.fail(format!("inspect on {}: {}", c.name(id), out.describe())),
        }
    }
    seen.sort();
    let (chosen, other) = (seen[1].1, seen[0].1);
    let chosen_name = c.name(chosen).to_owned();
    eprintln!("inspect: {seen:?}; recovering from {chosen_name}");

    let flags = ["--survivors", "dr-1,dr-2", "--confirm-lost", "prod-1,prod-2,witness"];
    let dry = node_cmd(c, chosen, &[&["recover", "--dry-run"][..], &flags].concat());
    if !dry.success() || !dry.stdout.contains("RECOVERY WITHOUT QUORUM") {
        c.fail(format!("recover --dry-run: {}", dry.describe()));
    }
    let out = node_cmd(c, chosen, &[&["recover"][..], &flags].concat());
    if !out.success() || !out.stdout.contains("done: generation 1 written") {
        c.fail(format!("recover on {chosen_name}: {}", out.describe()));
    }
    eprintln!("{}", out.stdout);
    let out = node_cmd(c, other, &[&["recover"][..], &flags, &["--follow", &chosen_name]].concat());
    if !out.success() || !out.stdout.contains("done: this node's old store is in") {
        c.fail(format!("recover --follow on {}: {}", c.name(other), out.describe()));
    }
    (chosen, other)
}

#[test]
fn recover_without_quorum_from_the_most_advanced_survivor() {
    let mut c = Cluster::builder("recover").two_sites_and_witness().build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    for i in 0..5 {
        c.wait_for(&format!("note {i} to commit"), WRITE_TIMEOUT, |c| {
            c.note_add(&format!("before the loss {i}"))
        });
    }
    let [prod1, prod2, dr1, dr2, witness] =
        ["prod-1", "prod-2", "dr-1", "dr-2", "witness"].map(|n| c.id_of(n));

    // prod and the witness are lost together: dr alone is a minority and refuses writes.
    for id in [prod1, prod2, witness] {
        c.kill_9(id);
    }
    let refused = c.ctl(&["note", "add", "written without a quorum"]);
    if refused.success() {
        c.fail(format!("a write committed with only dr alive: {}", refused.describe()));
    }

    // recover refuses to touch the store of a running node.
    let out = node_cmd(
        &c,
        dr1,
        &["recover", "--survivors", "dr-1,dr-2", "--confirm-lost", "prod-1,prod-2,witness"],
    );
    if out.code != Some(2) || !out.stderr.contains("the node is running") {
        c.fail(format!("recover on a running node must refuse with exit 2: {}", out.describe()));
    }
    for id in [dr1, dr2] {
        c.terminate(id);
    }
    // ... and to go on unless every other voter is confirmed lost.
    let out = node_cmd(
        &c,
        dr1,
        &["recover", "--survivors", "dr-1,dr-2", "--confirm-lost", "prod-1,prod-2"],
    );
    if out.code != Some(2) || !out.stderr.contains("missing witness") {
        c.fail(format!(
            "recover without the witness confirmed lost must refuse: {}",
            out.describe()
        ));
    }

    let (chosen, other) = recover_from_the_most_advanced(&mut c, [dr1, dr2]);
    let chosen_name = c.name(chosen).to_owned();
    c.start_node(chosen);
    c.start_node(other);
    c.wait_for("a note to commit in the new generation", WRITE_TIMEOUT, |c| {
        c.note_add("after the recovery")
    });
    let status = c.wait_for("only dr-1 and dr-2 listed, both voters", SETTLE, |c| {
        let s = c.status_json()?;
        if voters(&s) == ["dr-1", "dr-2"] && member_names(&s) == ["dr-1", "dr-2"] {
            Ok(s)
        } else {
            Err(format!("{s}"))
        }
    });
    eprintln!("after recovery: leader {} term {}", status["leader_id"], status["term"]);
    let history = c.history_all(10).unwrap_or_else(|e| c.fail(format!("history: {e}")));
    let record = history.iter().find(|r| r["kind"] == "recovery").cloned();
    match record {
        Some(r)
            if r["text"].as_str().is_some_and(|t| {
                t.contains(&format!("on {chosen_name}"))
                    && t.contains("generation 1")
                    && t.contains("voters now dr-1, dr-2")
                    && t.contains("prod-1, prod-2, witness")
            }) => {}
        other => c.fail(format!("no recovery record in the history: {other:?} in {history:?}")),
    }
    // The survivor that followed holds the same history.
    c.wait_for(&format!("{} to apply the new generation", c.name(other)), CATCH_UP_TIMEOUT, |c| {
        let commit = c.status_json()?["commit_index"].as_u64().unwrap_or(u64::MAX);
        match c.metrics(other)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= commit => Ok(()),
            a => Err(format!("applied {a:?}, commit index {commit}")),
        }
    });

    // A lost member restarted on its old data: it still holds the old membership, and the
    // new generation refuses it (not a member) while it refuses the new generation's term.
    // (Asked through dr only: prod-2 answers with its own, old view.)
    c.start_node(prod2);
    std::thread::sleep(Duration::from_secs(8));
    c.wait_for("a note to commit beside prod-2 on its old data", WRITE_TIMEOUT, |c| {
        c.ctl_json_via(&[dr1, dr2], &["note", "add", "prod-2 is back on its old data"])
    });
    let s = c.ctl_json_via(&[dr1, dr2], &["status"]).unwrap_or_else(|e| c.fail(e));
    if voters(&s) != ["dr-1", "dr-2"] || member_names(&s) != ["dr-1", "dr-2"] {
        c.fail(format!("prod-2 on its old data changed the new generation: {s}"));
    }
    let old = c.status_local(prod2).unwrap_or_else(|e| c.fail(e));
    if old["term"].as_u64() >= s["term"].as_u64() || !old["leader_id"].is_null() {
        c.fail(format!("prod-2 on its old data must stay in its old term without a leader: {old}"));
    }
    c.kill_9(prod2);

    // prod-1 comes back the documented way: wiped, --rejoin, member add, promote.
    std::fs::remove_dir_all(c.data_dir(prod1)).unwrap_or_else(|e| c.fail(format!("wipe: {e}")));
    c.start_node_with(prod1, &["--rejoin"]);
    let (id, addr) = (prod1.to_string(), c.grpc_addr(prod1).to_string());
    c.wait_for("member add of prod-1", SETTLE, |c| {
        let out = c.ctl(&[
            "member",
            "add",
            "--id",
            &id,
            "--name",
            "prod-1",
            "--site",
            "prod",
            "--role",
            "controller",
            "--address",
            &addr,
        ]);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    let commit = c.status_json().ok().and_then(|s| s["commit_index"].as_u64()).unwrap_or(0);
    c.wait_for(&format!("prod-1 to catch up to {commit}"), CATCH_UP_TIMEOUT, |c| {
        match c.metrics(prod1)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= commit => Ok(()),
            a => Err(format!("prod-1 applied {a:?}")),
        }
    });
    run_ok(&mut c, &["member", "promote", &id]);
    c.wait_for("prod-1 listed as a voter", SETTLE, |c| {
        let s = c.status_json()?;
        if voters(&s) == ["dr-1", "dr-2", "prod-1"] {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    });
    c.wait_for("a note to commit with prod-1 back", WRITE_TIMEOUT, |c| {
        c.note_add("prod-1 is back")
    });
}

/// After the recovery the two dr nodes are a majority of the voters, so the cluster decides
/// again: an operator fails the service over to dr (automatic failover is off in this spec,
/// so the operator's `failover` is what moves it).
#[test]
fn after_recovery_an_operator_fails_the_service_over_to_dr() {
    let mut r = Rig::loopback("after_recovery_an_operator_fails_the_service_over_to_dr");
    r.start_app("prod", "initial deployment");
    let text = drover_tests::failover_spec(&r.apps)
        .replace("auto_failover = true", "auto_failover = false");
    assert!(text.contains("auto_failover = false"), "the spec did not change");
    r.apply_spec(&text, "the failover spec without automatic failover");
    r.wait_protecting_with_prod_up(Duration::from_secs(30));
    let [prod1, prod2, dr1, dr2, witness] =
        ["prod-1", "prod-2", "dr-1", "dr-2", "witness"].map(|n| r.c.id_of(n));
    // The prod site (controllers and application) and the witness are lost together.
    for id in [prod1, prod2, witness] {
        r.c.kill_9(id);
    }
    r.apps.stop("prod", "the prod site is lost");
    for id in [dr1, dr2] {
        r.c.terminate(id);
    }
    let (chosen, other) = recover_from_the_most_advanced(&mut r.c, [dr1, dr2]);
    r.c.start_node(chosen);
    r.c.start_node(other);
    r.talk_to(Some(vec![dr1, dr2]));
    let started =
        r.wait("the recovered cluster to take an operator's failover", FAILOVER_TIMEOUT, |r| {
            r.ctl_json(&[
                "failover",
                "webshop",
                "--to",
                "dr",
                "--reason",
                "prod site and witness lost",
            ])
        });
    if started["workflow_id"].as_u64().unwrap_or(0) == 0 {
        r.fail(format!("failover printed no workflow id: {started}"));
    }
    let v = r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    eprintln!("after recovery: {v}");
}
