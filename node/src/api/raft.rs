//! The receiving end of the Raft transport: decodes a peer's request, hands it to the local
//! openraft instance, and encodes the answer (or openraft's refusal) back. AppendEntries and
//! snapshots accepted from a leader are noted as leader contact; `PreVote` is drover's own
//! (openraft 0.9 has none) and is answered here by `decide::election::pre_vote_refusal`.

use drover_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use drover_proto::v1::{PreVoteReply, PreVoteRequest, RaftReply, RaftRequest};
use openraft::raft::AppendEntriesResponse;
use openraft::ServerState;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::NodeHandle;
use crate::consensus::network::MAX_RAFT_MESSAGE_BYTES;
use crate::decide::election::pre_vote_refusal;

/// gRPC service for append-entries, vote, install-snapshot and pre-vote from peers.
pub struct RaftService {
    node: NodeHandle,
}

impl RaftService {
    /// Wraps the node's Raft in a tonic server with drover's message size limits.
    pub fn server(node: NodeHandle) -> RaftServer<RaftService> {
        RaftServer::new(RaftService { node })
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftRequest>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft request: {e}")))
}

fn encode<T: Serialize, E: Serialize>(result: Result<T, E>) -> Result<Response<RaftReply>, Status> {
    let reply = match result {
        Ok(v) => RaftReply { payload: to_json(&v)?, error: Vec::new() },
        Err(e) => RaftReply { payload: Vec::new(), error: to_json(&e)? },
    };
    Ok(Response::new(reply))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(format!("cannot encode Raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let answer = self.node.raft.append_entries(decode(req)?).await;
        if matches!(&answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.node.leader_contact.touch();
        }
        encode(answer)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        encode(self.node.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let answer = self.node.raft.install_snapshot(decode(req)?).await;
        if answer.is_ok() {
            self.node.leader_contact.touch();
        }
        encode(answer)
    }

    async fn pre_vote(
        &self,
        req: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteReply>, Status> {
        let r = req.into_inner();
        let node = &self.node;
        let (leading, voters) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<_> = m.membership_config.membership().voter_ids().collect();
            (m.state == ServerState::Leader, voters)
        };
        if !voters.contains(&r.candidate) {
            return Ok(Response::new(PreVoteReply {
                granted: false,
                reason: format!("node {} is not a voter in this member's membership", r.candidate),
            }));
        }
        let own_log = last_log_of(node);
        let timings = &node.election;
        let leading_with_quorum = leading
            && node
                .contacts
                .quorum_age(node.id, voters.iter().copied())
                .is_some_and(|a| a <= timings.leader_lease());
        let refusal = pre_vote_refusal(
            timings,
            node.leader_contact.since(),
            node.started.elapsed(),
            leading_with_quorum,
            (r.last_log_term, r.last_log_index),
            own_log,
        );
        Ok(Response::new(PreVoteReply {
            granted: refusal.is_none(),
            reason: refusal.unwrap_or_default(),
        }))
    }
}

/// This member's last log id as (term, index); (0, 0) for an empty log.
pub(crate) fn last_log_of(node: &NodeHandle) -> (u64, u64) {
    let metrics = node.raft.data_metrics();
    let last = metrics.borrow().last_log;
    last.map_or((0, 0), |l| (l.leader_id.term, l.index))
}
