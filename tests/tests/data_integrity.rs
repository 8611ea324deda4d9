//! A node's data dir is never believed when damaged and never silently replaced: a truncated
//! file or one changed byte stops the node with one error naming the file and how to re-sync
//! (exit code 3, no panic); an empty or deleted data dir on a former member is refused instead
//! of bootstrapping a second history; `--rejoin` brings the node back as a fresh member
//! through `droverctl member remove/add/promote`, and it catches up with the others. The same
//! holds for a member that joined with `droverctl member add` (no initial member list).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use drover_tests::{Cluster, CmdOutput, NodeId, Role, CATCH_UP_TIMEOUT, LEADER_TIMEOUT};
use serde_json::Value;

const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(30);
/// A refused start must be over well within this (it asks its peers for at most 3 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// The exit code for a data dir that cannot be used as it is.
const EXIT_DATA: i32 = 3;
const MARKER: &str = "integrity-check epoch=1;";

/// prod-1, dr-1 and the witness, with notes committed (one carries [`MARKER`]) and applied on
/// dr-1, which is then stopped with SIGTERM.
fn cluster_with_stopped_member(test: &str) -> (Cluster, NodeId) {
    let mut c = Cluster::builder(test)
        .node("prod-1", "prod", Role::Controller)
        .node("dr-1", "dr", Role::Controller)
        .node("witness", "witness", Role::Witness)
        .build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let mut last_index = 0;
    for text in ["before 1", MARKER, "before 2"] {
        let (_, index) =
            c.wait_for(&format!("note {text:?} to commit"), WRITE_TIMEOUT, |c| c.note_add(text));
        last_index = index;
    }
    let dr = c.id_of("dr-1");
    c.wait_for(&format!("dr-1 to apply index {last_index}"), CATCH_UP_TIMEOUT, |c| {
        match c.metrics(dr)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= last_index => Ok(()),
            other => Err(format!("drover_raft_applied_index = {other:?}")),
        }
    });
    let status = c.terminate(dr);
    if status.code() != Some(0) {
        c.fail(format!("dr-1 should exit 0 on SIGTERM, got {status}"));
    }
    // dr-1 may have been the leader (the first election's choice): the others must elect
    // another before an admin command can commit.
    c.wait_for("a leader other than the stopped dr-1", LEADER_TIMEOUT, |c| {
        match c.status_json()?["leader_id"].as_u64() {
            Some(l) if l != dr => Ok(()),
            other => Err(format!("status names leader {other:?}")),
        }
    });
    (c, dr)
}

fn db_file(c: &Cluster, id: NodeId) -> PathBuf {
    c.data_dir(id).join("drover.redb")
}

/// Runs the node once (with `extra` flags) and checks it refused: exit code 3, no panic or
/// backtrace, and an `error:` line containing every one of `needles`.
fn expect_refusal(c: &mut Cluster, id: NodeId, case: &str, extra: &[&str], needles: &[&str]) {
    let config = c.config_path(id).to_path_buf();
    let out: CmdOutput = c.run_node_once_with(id, &config, extra, EXIT_DEADLINE);
    let mut problems = Vec::new();
    if out.code != Some(EXIT_DATA) {
        problems.push(format!("exit code should be {EXIT_DATA}"));
    }
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        if out.stderr.contains(bad) || out.stdout.contains(bad) {
            problems.push(format!("the output contains {bad:?}"));
        }
    }
    let found = out
        .stderr_lines()
        .iter()
        .any(|l| l.starts_with("error:") && needles.iter().all(|n| l.contains(n)));
    if !found {
        problems.push(format!("no `error:` line containing all of {needles:?}"));
    }
    if !problems.is_empty() {
        c.fail(format!("{case}: {}\n{}", problems.join("; "), out.describe()));
    }
}

/// Replaces every occurrence of `from` by `to` (same length) in `path`; returns the count.
fn patch(path: &std::path::Path, from: &str, to: &str) -> usize {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
        }
        i += 1;
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    hits
}

#[test]
fn damaged_data_file_is_refused_with_a_clear_error() {
    let (mut c, dr) = cluster_with_stopped_member("data_integrity_damaged");
    let file = db_file(&c, dr);
    let original = fs::read(&file).expect("read the data file");

    // One changed byte in a committed value (log entry and history row): redb does not see
    // it; the value's checksum does.
    let hits = patch(&file, MARKER, &MARKER.replace("epoch=1", "epoch=7"));
    if hits == 0 {
        c.fail(format!("{MARKER:?} not found in {}", file.display()));
    }
    expect_refusal(&mut c, dr, "one changed byte", &[], &["drover.redb", "checksum", "--rejoin"]);

    // Truncated: redb itself may fail or panic reading it; either way one clear error.
    for keep in [original.len() / 2, original.len() / 5] {
        fs::write(&file, &original[..keep]).expect("truncate");
        expect_refusal(
            &mut c,
            dr,
            &format!("truncated to {keep} of {} bytes", original.len()),
            &[],
            &["drover.redb"],
        );
    }

    // The untouched file still works: the node rejoins its cluster as the member it was.
    fs::write(&file, &original).expect("restore");
    c.start_node(dr);
    let commit = c.status_json().ok().and_then(|s| s["commit_index"].as_u64()).unwrap_or(0);
    c.wait_for("dr-1 to run again from its restored data", CATCH_UP_TIMEOUT, |c| {
        match c.metrics(dr)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= commit => Ok(()),
            other => Err(format!("drover_raft_applied_index = {other:?}, want {commit}")),
        }
    });
}

fn member(status: &Value, id: NodeId) -> Option<Value> {
    status["members"].as_array()?.iter().find(|m| m["id"].as_u64() == Some(id)).cloned()
}

fn run_ok(c: &mut Cluster, args: &[&str]) {
    let out = c.ctl(args);
    if !out.success() {
        c.fail(format!("droverctl {} failed: {}", args.join(" "), out.describe()));
    }
}

/// `droverctl member add` of `id` as the controller `name` of site dr, retried until it
/// succeeds (the node may still be starting).
fn add_member(c: &mut Cluster, id: NodeId, name: &str) {
    let (id_arg, addr) = (id.to_string(), c.grpc_addr(id).to_string());
    c.wait_for(&format!("member add of {name}"), SETTLE, |c| {
        let args = [
            "member",
            "add",
            "--id",
            &id_arg,
            "--name",
            name,
            "--site",
            "dr",
            "--role",
            "controller",
            "--address",
            &addr,
        ];
        let out = c.ctl(&args);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
}

/// Commits a note, waits for `id` to apply it, promotes `id` and waits until it is a voter.
fn catch_up_and_promote(c: &mut Cluster, id: NodeId, name: &str) {
    let (_, index) = c.wait_for("a note to commit", WRITE_TIMEOUT, |c| c.note_add("catch up"));
    c.wait_for(&format!("{name} to apply index {index}"), CATCH_UP_TIMEOUT, |c| {
        match c.metrics(id)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= index => Ok(()),
            other => Err(format!("drover_raft_applied_index = {other:?}")),
        }
    });
    run_ok(c, &["member", "promote", &id.to_string()]);
    c.wait_for(&format!("{name} to be a voter"), SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, id) {
            Some(m) if m["membership"] == "voter" => Ok(()),
            other => Err(format!("{name} entry {other:?}")),
        }
    });
}

#[test]
fn former_member_with_lost_data_refuses_then_rejoins() {
    let (mut c, dr) = cluster_with_stopped_member("data_integrity_lost");
    let file = db_file(&c, dr);
    let refusal = ["reports a formed cluster", "--rejoin", "droverctl member remove"];

    // An empty data file: the same as a new, empty store.
    fs::write(&file, b"").expect("empty the data file");
    expect_refusal(&mut c, dr, "empty data file", &[], &refusal);

    // The data dir deleted.
    fs::remove_dir_all(c.data_dir(dr)).expect("delete the data dir");
    expect_refusal(&mut c, dr, "deleted data dir", &[], &refusal);

    // --rejoin while the cluster still counts it as a voter (with the vote it forgot).
    expect_refusal(&mut c, dr, "--rejoin while a voter", &["--rejoin"], &["still lists"]);

    let (id, addr) = (dr.to_string(), c.grpc_addr(dr).to_string());
    run_ok(&mut c, &["member", "remove", &id]);
    c.wait_for("dr-1 to be removed", SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, dr) {
            None => Ok(()),
            Some(m) => Err(format!("still listed: {m}")),
        }
    });
    c.start_node_with(dr, &["--rejoin"]);
    c.wait_for("member add of the rejoining dr-1", SETTLE, |c| {
        let args = [
            "member",
            "add",
            "--id",
            &id,
            "--name",
            "dr-1",
            "--site",
            "dr",
            "--role",
            "controller",
            "--address",
            &addr,
        ];
        let out = c.ctl(&args);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    let (_, after_add) =
        c.wait_for("a note to commit", WRITE_TIMEOUT, |c| c.note_add("after rejoin"));
    c.wait_for(&format!("dr-1 to apply index {after_add}"), CATCH_UP_TIMEOUT, |c| {
        match c.metrics(dr)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= after_add => Ok(()),
            other => Err(format!("drover_raft_applied_index = {other:?}")),
        }
    });
    run_ok(&mut c, &["member", "promote", &id]);
    c.wait_for("dr-1 to be a voter again", SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, dr) {
            Some(m) if m["membership"] == "voter" => Ok(()),
            other => Err(format!("dr-1 entry {other:?}")),
        }
    });

    // The rejoined node holds the same history as a node that never lost its data, marker
    // included (history is read from the answering node's own applied state).
    let prod = c.id_of("prod-1");
    let records = |c: &Cluster, id: NodeId| -> Result<Vec<Value>, String> {
        let v = c.ctl_json_at(id, &["history", "--limit", "1000"])?;
        v["records"].as_array().cloned().ok_or_else(|| format!("no records in {v}"))
    };
    c.wait_for("dr-1's history to equal prod-1's", CATCH_UP_TIMEOUT, |c| {
        let (mine, theirs) = (records(c, dr)?, records(c, prod)?);
        if mine == theirs {
            Ok(())
        } else {
            Err(format!("dr-1 {mine:?}\nprod-1 {theirs:?}"))
        }
    });
    let shown = format!("{:?}", records(&c, dr).unwrap_or_default());
    if !shown.contains(MARKER) {
        c.fail(format!("the history lost {MARKER:?}: {shown}"));
    }
}

#[test]
fn member_added_later_with_lost_data_refuses_then_rejoins() {
    let mut c = Cluster::builder("data_integrity_joiner")
        .node("prod-1", "prod", Role::Controller)
        .node("dr-1", "dr", Role::Controller)
        .node("witness", "witness", Role::Witness)
        .joiner("dr-2", "dr", Role::Controller)
        .build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    let dr2 = c.id_of("dr-2");

    // Its first start: no initial_member list and an empty data dir; without --rejoin it
    // cannot tell that from lost data, and says so.
    let refusal = ["lists no initial_member", "--rejoin", "droverctl member remove"];
    expect_refusal(&mut c, dr2, "first start without --rejoin", &[], &refusal);

    // With --rejoin (the harness passes it to joiners): added, caught up, promoted.
    c.start_node(dr2);
    add_member(&mut c, dr2, "dr-2");
    catch_up_and_promote(&mut c, dr2, "dr-2");
    let (_, index) = c.wait_for("a marker note to commit", WRITE_TIMEOUT, |c| c.note_add(MARKER));
    c.wait_for(&format!("dr-2 to apply index {index}"), CATCH_UP_TIMEOUT, |c| {
        match c.metrics(dr2)?.get_u64("drover_raft_applied_index") {
            Some(a) if a >= index => Ok(()),
            other => Err(format!("drover_raft_applied_index = {other:?}")),
        }
    });

    // A voter now; its data dir is lost. Started as before (no flag), it refuses instead of
    // being caught up under its old voter entry with its vote forgotten.
    let status = c.terminate(dr2);
    if status.code() != Some(0) {
        c.fail(format!("dr-2 should exit 0 on SIGTERM, got {status}"));
    }
    fs::remove_dir_all(c.data_dir(dr2)).expect("delete the data dir");
    expect_refusal(&mut c, dr2, "lost data dir, no --rejoin", &[], &refusal);
    let status = c.status_json().unwrap_or_else(|e| c.fail(e));
    match member(&status, dr2) {
        Some(m) if m["membership"] == "voter" => {}
        other => c.fail(format!("the refused dr-2 should still be listed as a voter: {other:?}")),
    }

    // The documented recovery: remove, start with --rejoin, add, promote; it holds the
    // history again, marker included.
    run_ok(&mut c, &["member", "remove", &dr2.to_string()]);
    c.wait_for("dr-2 to be removed", SETTLE, |c| {
        let s = c.status_json()?;
        match member(&s, dr2) {
            None => Ok(()),
            Some(m) => Err(format!("still listed: {m}")),
        }
    });
    c.start_node(dr2);
    add_member(&mut c, dr2, "dr-2");
    catch_up_and_promote(&mut c, dr2, "dr-2");
    let v = c.ctl_json_at(dr2, &["history", "--limit", "1000"]).unwrap_or_else(|e| c.fail(e));
    if !v.to_string().contains(MARKER) {
        c.fail(format!("dr-2's history lost {MARKER:?}: {v}"));
    }
}
