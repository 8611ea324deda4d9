//! The replicated state: what every node has after applying the same committed entries.
//!
//! Applying is pure and deterministic (no clock reads, no I/O): the redb state machine and the
//! simulator call [`ClusterState::apply`] with the entry's log index and payload, and persist
//! the result themselves.
//!
//! Two parts: the append-only history (here) and the failover control state ([`control`]):
//! the spec, and per service its active site, epoch, lease, phase and workflow. Beside them,
//! the cluster's generation: how many times it was recovered without quorum ([`Recovery`]).

pub mod control;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::types::{Request, Response};

/// Most history records kept; older ones are compacted away (the oldest kept seq is reported).
pub const HISTORY_CAP: usize = 10_000;

/// Longest note text accepted, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// One record of the append-only history (who, when, what).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// 1-based, gapless, strictly increasing.
    pub seq: u64,
    /// Raft log index of the entry that produced it.
    pub log_index: u64,
    /// Proposer's wall clock, ms since the Unix epoch (display only).
    pub at_unix_ms: i64,
    /// Who: an operator name or a node name.
    pub author: String,
    /// What kind of record: `note`, `recovery`, or a failover record's kind.
    pub kind: String,
    /// What happened, in words.
    pub text: String,
    /// The service it concerns; empty for cluster-wide records (notes, specs, recoveries).
    #[serde(default)]
    pub service: String,
}

/// The application state every node converges to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Newest last; at most [`HISTORY_CAP`] records.
    pub history: VecDeque<HistoryRecord>,
    /// Seq of the newest record ever appended (0 = none).
    pub last_seq: u64,
    /// The spec and the per-service failover state.
    #[serde(default)]
    pub control: control::ControlState,
    /// How many times the cluster was recovered without quorum: 0 as bootstrapped, then the
    /// generation of the newest applied [`Recovery`].
    #[serde(default)]
    pub generation: u64,
}

/// What `drover-node recover` did, as the history keeps it: a new generation of the cluster
/// started from one survivor's log, with only the survivors as voters, after the operator
/// confirmed the other voters lost. See `runtime::recover` for the procedure and why it is
/// safe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// The new generation (1 for the first recovery).
    pub generation: u64,
    /// The term the new generation starts in.
    pub term: u64,
    /// Who ran the command (the operating-system user).
    pub by: String,
    /// The member it ran on, whose log the new generation continues.
    pub node: String,
    /// Where that log ended before the recovery, as `term-index` (`none` for an empty log).
    pub from_log: String,
    /// The voters of the new generation, by name.
    pub survivors: Vec<String>,
    /// The voters the operator confirmed lost (fenced or gone), removed from the membership.
    pub lost: Vec<String>,
    /// When it ran, ms since the Unix epoch (display only).
    pub at_unix_ms: i64,
}

impl Recovery {
    /// The history text.
    pub fn describe(&self) -> String {
        format!(
            "recovered without quorum on {} by {}: generation {} continues {}'s log (which \
             ended at {}) in term {}; voters now {}; confirmed lost and removed: {} (they rejoin \
             with a wiped data dir: 'run --rejoin', then 'droverctl member add')",
            self.node,
            self.by,
            self.generation,
            self.node,
            self.from_log,
            self.term,
            self.survivors.join(", "),
            self.lost.join(", ")
        )
    }
}

/// What one apply did to the history, so a store can persist just the difference.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The answer for the proposer.
    pub response: Response,
    /// The record appended, if any.
    pub appended: Option<HistoryRecord>,
    /// Seqs compacted away by the cap (oldest first).
    pub dropped_seqs: Vec<u64>,
    /// Whether [`ClusterState::control`] changed (the store then persists it).
    pub control_changed: bool,
    /// Whether [`ClusterState::generation`] changed (the store then persists it).
    pub generation_changed: bool,
}

impl ClusterState {
    /// Applies one committed request at `log_index`.
    ///
    /// Panics if `log_index` does not grow: entries are applied in log order, exactly once, and
    /// anything else is a consensus bug that must not be papered over.
    pub fn apply(&mut self, log_index: u64, req: &Request) -> Applied {
        if let Some(last) = self.history.back() {
            assert!(
                log_index > last.log_index,
                "entries applied out of order: index {log_index} after {}",
                last.log_index
            );
        }
        match req {
            Request::Note { author, text, at_unix_ms } => {
                let mut applied = self.record(log_index, *at_unix_ms, author, "note", text, "");
                applied.response.history_seq = applied.appended.as_ref().map(|r| r.seq);
                applied
            }
            Request::Control(c) => {
                let outcome = self.control.apply(log_index, c);
                let mut applied = match &outcome.record {
                    Some((kind, text)) => {
                        let service = c.service().unwrap_or_default();
                        self.record(log_index, c.at_unix_ms(), c.author(), kind, text, service)
                    }
                    None => Applied::default(),
                };
                applied.response.history_seq = applied.appended.as_ref().map(|r| r.seq);
                applied.response.rejected = outcome.rejected;
                applied.response.spec_version = self.control.spec.as_ref().map(|s| s.version);
                applied.control_changed = outcome.changed;
                applied
            }
            Request::Recovery(r) => {
                let mut applied =
                    self.record(log_index, r.at_unix_ms, &r.by, "recovery", &r.describe(), "");
                applied.response.history_seq = applied.appended.as_ref().map(|r| r.seq);
                // Generations only grow; a record naming an older one still goes in the history.
                if r.generation > self.generation {
                    self.generation = r.generation;
                    applied.generation_changed = true;
                }
                applied
            }
        }
    }

    /// Appends one history record, compacting the oldest past the cap.
    fn record(
        &mut self,
        log_index: u64,
        at_unix_ms: i64,
        author: &str,
        kind: &str,
        text: &str,
        service: &str,
    ) -> Applied {
        let mut text = text.to_string();
        truncate_utf8(&mut text, MAX_NOTE_BYTES);
        let record = HistoryRecord {
            seq: self.last_seq + 1,
            log_index,
            at_unix_ms,
            author: author.to_string(),
            kind: kind.to_string(),
            text,
            service: service.to_string(),
        };
        self.last_seq = record.seq;
        self.history.push_back(record.clone());
        let mut dropped_seqs = Vec::new();
        while self.history.len() > HISTORY_CAP {
            if let Some(old) = self.history.pop_front() {
                dropped_seqs.push(old.seq);
            }
        }
        Applied {
            response: Response::default(),
            appended: Some(record),
            dropped_seqs,
            control_changed: false,
            generation_changed: false,
        }
    }

    /// Seq of the oldest record still kept (`last_seq + 1` when the history is empty).
    pub fn first_seq(&self) -> u64 {
        self.history.front().map_or(self.last_seq + 1, |r| r.seq)
    }

    /// Records with `seq > after_seq`, oldest first, at most `limit`.
    pub fn history_after(&self, after_seq: u64, limit: usize) -> Vec<HistoryRecord> {
        self.history.iter().filter(|r| r.seq > after_seq).take(limit).cloned().collect()
    }

    /// Like [`ClusterState::history_after`], keeping only the records `keep` accepts (the
    /// limit counts kept records).
    pub fn history_matching(
        &self,
        after_seq: u64,
        limit: usize,
        keep: impl Fn(&HistoryRecord) -> bool,
    ) -> Vec<HistoryRecord> {
        self.history.iter().filter(|r| r.seq > after_seq && keep(r)).take(limit).cloned().collect()
    }
}

fn truncate_utf8(s: &mut String, max_bytes: usize) {
    if s.len() <= max_bytes {
        return;
    }
    let mut cut = max_bytes;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(text: &str) -> Request {
        Request::Note { author: "op".into(), text: text.into(), at_unix_ms: 1 }
    }

    #[test]
    fn notes_get_gapless_sequence_numbers() {
        let mut s = ClusterState::default();
        assert_eq!(s.apply(3, &note("a")).response.history_seq, Some(1));
        assert_eq!(s.apply(7, &note("b")).response.history_seq, Some(2));
        assert_eq!(s.history_after(1, 10).len(), 1);
        assert_eq!(s.first_seq(), 1);
    }

    #[test]
    fn history_is_capped_oldest_first() {
        let mut s = ClusterState::default();
        for i in 0..(HISTORY_CAP as u64 + 3) {
            s.apply(i + 1, &note("x"));
        }
        assert_eq!(s.history.len(), HISTORY_CAP);
        assert_eq!(s.first_seq(), 4);
        assert_eq!(s.last_seq, HISTORY_CAP as u64 + 3);
    }

    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        let mut s = ClusterState::default();
        let long = "é".repeat(MAX_NOTE_BYTES);
        let applied = s.apply(1, &note(&long));
        let text = applied.appended.unwrap().text;
        assert!(text.len() <= MAX_NOTE_BYTES);
    }

    #[test]
    fn a_recovery_is_recorded_and_raises_the_generation() {
        let mut s = ClusterState::default();
        let recovery = Recovery {
            generation: 1,
            term: 2003,
            by: "alice".into(),
            node: "dr-1".into(),
            from_log: "3-57".into(),
            survivors: vec!["dr-1".into(), "dr-2".into()],
            lost: vec!["prod-1".into(), "prod-2".into(), "witness".into()],
            at_unix_ms: 1,
        };
        let applied = s.apply(59, &Request::Recovery(recovery.clone()));
        let record = applied.appended.expect("a history record");
        assert_eq!((record.kind.as_str(), record.author.as_str()), ("recovery", "alice"));
        assert!(record.text.contains("on dr-1"), "{}", record.text);
        assert!(record.text.contains("voters now dr-1, dr-2"), "{}", record.text);
        assert!(record.text.contains("prod-1, prod-2, witness"), "{}", record.text);
        assert!(applied.generation_changed);
        assert_eq!(s.generation, 1);
        // An older generation never lowers it.
        let applied = s.apply(60, &Request::Recovery(Recovery { generation: 0, ..recovery }));
        assert!(!applied.generation_changed);
        assert_eq!(s.generation, 1);
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn applying_out_of_order_is_a_bug() {
        let mut s = ClusterState::default();
        s.apply(5, &note("a"));
        s.apply(5, &note("b"));
    }
}
