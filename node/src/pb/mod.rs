//! Conversions between protobuf messages and domain types, in one place (STYLE.md 10).
//! Domain code never passes generated structs around.

use std::time::{SystemTime, UNIX_EPOCH};

use drover_proto::v1 as pb;

use crate::api::view::{ClusterView, MemberView};
use crate::consensus::state::HistoryRecord;

/// The status reply for a cluster view.
pub fn view_to_pb(view: &ClusterView) -> pb::StatusReply {
    pb::StatusReply {
        node_id: view.node_id,
        node_name: view.node_name.clone(),
        leader_id: view.leader_id,
        term: view.term,
        state: view.state_name().to_string(),
        last_log_index: view.last_log_index,
        commit_index: view.commit_index,
        applied_index: view.applied_index,
        members: view.members.iter().map(member_to_pb).collect(),
        history_seq: view.history_seq,
    }
}

fn member_to_pb(m: &MemberView) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.member.name.clone(),
        site: m.member.site.clone(),
        role: m.member.role.as_str().to_string(),
        address: m.member.address.clone(),
        membership: if m.voter { "voter" } else { "learner" }.to_string(),
        matched_index: m.matched_index,
        lag: m.lag,
        last_contact_ms: m.last_contact.map(|d| d.as_millis() as u64),
    }
}

/// A history record on the wire.
pub fn history_to_pb(r: &HistoryRecord) -> pb::HistoryRecord {
    pb::HistoryRecord {
        seq: r.seq,
        log_index: r.log_index,
        at_unix_ms: r.at_unix_ms,
        author: r.author.clone(),
        kind: r.kind.clone(),
        text: r.text.clone(),
    }
}

/// The wall clock in ms since the Unix epoch, for display fields only.
pub fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
