//! Every acknowledged write survives `kill -9` of the whole cluster: after all five nodes
//! restart from their data dirs, `history` holds each acknowledged note exactly once, with the
//! seq it was acknowledged with.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_tests::{Cluster, LEADER_TIMEOUT};

const NOTES: usize = 50;
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

#[test]
fn full_cluster_restart() {
    let mut c = Cluster::builder("full_cluster_restart").two_sites_and_witness().build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);

    // text -> acknowledged seq. A failed attempt is retried under a new text, since it may
    // still have committed: such texts may appear at most once, acknowledged ones exactly once.
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut unacked: Vec<String> = Vec::new();
    for i in 0..NOTES {
        let mut attempt = 0;
        let (text, seq) = c.wait_for(&format!("note {i} to commit"), WRITE_TIMEOUT, |c| {
            attempt += 1;
            let text = format!("restart-note-{i:03}-attempt-{attempt}");
            match c.note_add(&text) {
                Ok((seq, _)) => Ok((text, seq)),
                Err(e) => {
                    unacked.push(text);
                    Err(e)
                }
            }
        });
        if let Some((other, _)) = acked.iter().find(|(_, &s)| s == seq) {
            c.fail(format!("seq {seq} acknowledged twice: for {other:?} and for {text:?}"));
        }
        acked.insert(text, seq);
    }

    for id in c.ids() {
        c.kill_9(id);
    }
    for id in c.ids() {
        c.start_node(id);
    }
    c.wait_for_leader(LEADER_TIMEOUT);

    let records = c.wait_for("`history` after the restart", WRITE_TIMEOUT, |c| c.history_all(50));
    let mut problems = Vec::new();
    for (text, seq) in &acked {
        let found: Vec<&serde_json::Value> =
            records.iter().filter(|r| r["text"] == text.as_str()).collect();
        match found.as_slice() {
            [] => problems.push(format!("acknowledged note {text:?} (seq {seq}) is missing")),
            [r] if r["seq"].as_u64() != Some(*seq) => problems
                .push(format!("note {text:?} was acknowledged as seq {seq} but history has {r}")),
            [r] if r["kind"] != "note" => {
                problems.push(format!("note {text:?} has kind {} in {r}", r["kind"]))
            }
            [_] => {}
            many => problems.push(format!("note {text:?} appears {} times: {many:?}", many.len())),
        }
    }
    for text in &unacked {
        let n = records.iter().filter(|r| r["text"] == text.as_str()).count();
        if n > 1 {
            problems.push(format!("unacknowledged note {text:?} appears {n} times"));
        }
    }
    if !problems.is_empty() {
        c.fail(format!("after kill -9 of all nodes and a restart, history lost or duplicated acknowledged notes:\n  {}\n({} records in history)", problems.join("\n  "), records.len()));
    }
}
