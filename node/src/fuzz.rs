//! Entry points for fuzzing the parsers that read what other parties send or write: the
//! cluster spec, `node.toml`, Raft and Control payloads as they arrive on the gRPC port, and
//! DNS answers. Each takes arbitrary bytes and must return without panicking, whatever they
//! are (issue 10: no single message or file may panic a node).
//!
//! ```text
//!  fuzz/fuzz_targets/*.rs (cargo fuzz, nightly) ──┐
//!                                                 ├──▶ drover::fuzz::{cluster_spec, node_toml,
//!  fuzz::tests (proptest, stable, in CI) ─────────┘        raft_payload, control_payload, dns_answer}
//! ```
//!
//! The functions run the same code the node runs on that input (not copies of it) and throw
//! the result away. See docs/testing.md, "Fuzzing".

use std::path::Path;

use drover_proto::v1 as pb;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use prost::Message as _;

use crate::consensus::types::{NodeId, TypeConfig};

/// `cluster.toml` text, as `droverctl config apply` hands it to the leader.
pub fn cluster_spec(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::spec::parse(text, "cluster.toml");
    }
}

/// `node.toml` text (TLS files are looked up relative to a directory that does not exist, so
/// only parsing and validation run).
pub fn node_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse(text, Path::new("/nonexistent/node.toml"), true);
    }
}

/// The JSON payload of a `Raft` RPC, decoded as each of the three requests the transport
/// carries.
pub fn raft_payload(data: &[u8]) {
    let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(data);
    let _ = serde_json::from_slice::<VoteRequest<NodeId>>(data);
    let _ = serde_json::from_slice::<InstallSnapshotRequest<TypeConfig>>(data);
    if let Ok(req) = pb::RaftRequest::decode(data) {
        let _ = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&req.payload);
    }
}

/// A `Control` RPC body: probe reports (with their verdicts as the leader reads them), a
/// lease renewal, a step or veto request.
pub fn control_payload(data: &[u8]) {
    if let Ok(r) = pb::ProbeReports::decode(data) {
        for report in &r.reports {
            let _ = crate::runtime::control::parse_verdict(&report.verdict);
        }
    }
    let _ = pb::RenewLeasesRequest::decode(data);
    let _ = pb::RunStepRequest::decode(data);
    let _ = pb::RunVetoRequest::decode(data);
}

/// A DNS server's answer to an RFC 2136 update, unsigned.
pub fn dns_answer(data: &[u8]) {
    let _ = crate::actuate::dns::check_answer(data, None);
}

#[cfg(test)]
mod tests {
    //! The fuzz targets on stable, briefly: random bytes, and valid inputs with bytes changed.
    use proptest::prelude::*;

    use super::*;

    const SPEC: &str = include_str!("spec/testdata/cluster.toml");

    fn mutate(base: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
        let mut v = base.to_vec();
        for (at, byte) in edits {
            if !v.is_empty() {
                let i = at % v.len();
                v[i] = *byte;
            }
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn the_spec_parser_never_panics(edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..8),
                                        cut in any::<usize>()) {
            let mut v = mutate(SPEC.as_bytes(), &edits);
            v.truncate(cut % (v.len() + 1));
            cluster_spec(&v);
        }

        #[test]
        fn node_toml_never_panics(data in prop::collection::vec(any::<u8>(), 0..512),
                                  text in "[a-z_\\[\\]=\" .0-9\n]{0,300}") {
            node_toml(&data);
            node_toml(text.as_bytes());
        }

        #[test]
        fn raft_and_control_payloads_never_panic(data in prop::collection::vec(any::<u8>(), 0..1024)) {
            raft_payload(&data);
            control_payload(&data);
        }

        #[test]
        fn dns_answers_never_panic(data in prop::collection::vec(any::<u8>(), 0..512),
                                   edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            dns_answer(&data);
            // A well-formed header and question, then damaged.
            let base: Vec<u8> = vec![
                0x12, 0x34, 0xa8, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 7, b'e', b'x', b'a', b'm', b'p',
                b'l', b'e', 3, b'c', b'o', b'm', 0, 0, 6, 0, 1,
            ];
            dns_answer(&base);
            dns_answer(&mutate(&base, &edits));
        }
    }

    #[test]
    fn a_json_vote_with_a_huge_term_decodes_without_panicking() {
        raft_payload(br#"{"vote":{"leader_id":{"term":18446744073709551615,"node_id":1},"committed":false},"last_log_id":null}"#);
    }
}
