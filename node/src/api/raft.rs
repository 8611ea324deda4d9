//! The receiving end of the Raft transport: decodes a peer's request, hands it to the local
//! openraft instance, and encodes the answer (or openraft's refusal) back.

use drover_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use drover_proto::v1::{RaftReply, RaftRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::consensus::network::MAX_RAFT_MESSAGE_BYTES;
use crate::consensus::types::Raft;

/// gRPC service for append-entries, vote and install-snapshot from peers.
pub struct RaftService {
    raft: Raft,
}

impl RaftService {
    /// Wraps the local Raft in a tonic server with drover's message size limits.
    pub fn server(raft: Raft) -> RaftServer<RaftService> {
        RaftServer::new(RaftService { raft })
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
        encode(self.raft.append_entries(decode(req)?).await)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        encode(self.raft.vote(decode(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        encode(self.raft.install_snapshot(decode(req)?).await)
    }
}
