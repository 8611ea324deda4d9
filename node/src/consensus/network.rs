//! The Raft transport: openraft's `RaftNetwork` over tonic gRPC with mutual TLS.
//!
//! ```text
//!  openraft replication task ──▶ PeerClient::append_entries ──JSON in RaftRequest──▶ peer's
//!  api::raft::RaftService ──▶ peer's openraft ──▶ RaftReply (payload | error) ──▶ back here
//! ```
//!
//! Raft messages are opaque to everything but consensus, so they cross the wire as JSON
//! payloads and are encoded/decoded only here and in `api::raft`. Every call has the deadline
//! openraft gives it; a peer that cannot be reached is reported as `Unreachable` so openraft
//! backs off. Each round trip answered by the peer's working Raft is recorded in
//! [`PeerContacts`] (for `status`, executor choice and the election guard's quorum check).

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use drover_proto::v1::raft_client::RaftClient;
use drover_proto::v1::{RaftReply, RaftRequest};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::types::{Member, NodeId, TypeConfig};
use crate::tls::TlsMaterial;

/// Largest gRPC message a member sends or accepts (log batches and snapshot chunks).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long establishing a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// When each peer last answered a Raft RPC, on this node's monotonic clock.
#[derive(Debug, Clone, Default)]
pub struct PeerContacts(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl PeerContacts {
    fn touch(&self, peer: NodeId) {
        let now = Instant::now();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, now);
    }

    /// Time since `peer` last answered, if it ever did.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&peer).map(|t| t.elapsed())
    }

    /// How long ago a majority of `voters` (`own` counting as just now) last answered: the
    /// age of the newest contact that still leaves a majority at least that fresh. `None` if
    /// fewer than a majority ever answered.
    pub fn quorum_age(
        &self,
        own: NodeId,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Option<Duration> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut ages: Vec<Option<Duration>> = voters
            .into_iter()
            .map(|v| if v == own { Some(Duration::ZERO) } else { map.get(&v).map(|t| t.elapsed()) })
            .collect();
        let majority = ages.len() / 2 + 1;
        // None (never answered) sorts after every age.
        ages.sort_by_key(|a| a.map_or((1, Duration::ZERO), |d| (0, d)));
        ages.get(majority - 1).copied().flatten()
    }
}

/// When this member last accepted AppendEntries or a snapshot from a leader, on its monotonic
/// clock: the election guard's measure of silence (`decide::election`).
#[derive(Debug, Clone, Default)]
pub struct LeaderContact(Arc<Mutex<Option<Instant>>>);

impl LeaderContact {
    /// A leader was heard now.
    pub fn touch(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Time since a leader was last heard, if ever since the process started.
    pub fn since(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed())
    }
}

/// Builds a gRPC endpoint for a member's `host:port`, over mutual TLS unless `tls` is `None`
/// (the `--insecure-dev` mode). The peer's certificate must carry `server_name`.
pub fn endpoint(
    address: &str,
    server_name: &str,
    tls: Option<&TlsMaterial>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls.client_tls(server_name))?;
    }
    Ok(ep)
}

/// Turns an [`Endpoint`] into a lazily connecting [`Channel`]: over the operating system's
/// TCP on a real node, over the simulator's network in `drover-sim`.
#[derive(Clone, Default)]
pub struct Dialer(Option<Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>>);

impl Dialer {
    /// Dials with `connect`, e.g. an `Endpoint::connect_with_connector_lazy` over a simulated
    /// TCP stack.
    pub fn custom(connect: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Dialer {
        Dialer(Some(Arc::new(connect)))
    }

    /// A channel that connects on first use (and reconnects after a failure).
    pub fn channel(&self, ep: Endpoint) -> Channel {
        match &self.0 {
            Some(connect) => connect(ep),
            None => ep.connect_lazy(),
        }
    }
}

/// Creates a [`PeerClient`] per replication target; shared by openraft's tasks.
#[derive(Clone)]
pub struct Network {
    own_id: NodeId,
    tls: Option<Arc<TlsMaterial>>,
    contacts: PeerContacts,
    dialer: Dialer,
}

impl Network {
    /// A network for node `own_id`; `tls = None` only in `--insecure-dev` mode (and in the
    /// simulator).
    pub fn new(
        own_id: NodeId,
        tls: Option<Arc<TlsMaterial>>,
        contacts: PeerContacts,
        dialer: Dialer,
    ) -> Self {
        Network { own_id, tls, contacts, dialer }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        let client = endpoint(&node.address, &node.name, self.tls.as_deref())
            .map(|ep| {
                RaftClient::new(self.dialer.channel(ep))
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            })
            .map_err(|e| format!("bad address {:?} for member {}: {e}", node.address, node.name));
        PeerClient { own_id: self.own_id, target, client, contacts: self.contacts.clone() }
    }
}

/// One peer's end of the transport.
pub struct PeerClient {
    own_id: NodeId,
    target: NodeId,
    client: Result<RaftClient<Channel>, String>,
    contacts: PeerContacts,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(msg) => return Err(Unreachable::new(&TransportError(msg.clone())).into()),
        };
        let payload = serde_json::to_vec(req)
            .map_err(|e| NetworkError::new(&TransportError(format!("encode {action}: {e}"))))?;
        let request = RaftRequest { payload };
        let fut = async {
            match action {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(
                    Timeout { action, id: self.own_id, target: self.target, timeout: ttl }.into()
                )
            }
            Ok(Err(status)) => return Err(status_to_rpc_error(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        // Only an answer from a working Raft counts as contact: a peer whose Raft core stopped
        // (full disk, storage error) still answers gRPC, with a fatal error.
        let answer = decode_reply(self.target, reply);
        if answer.is_ok() {
            self.contacts.touch(self.target);
        }
        answer
    }
}

fn status_to_rpc_error<E: Error>(status: &tonic::Status) -> RPCError<NodeId, Member, E> {
    let err = TransportError(describe_status(status));
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Unreachable::new(&err).into()
        }
        _ => NetworkError::new(&err).into(),
    }
}

/// Flattens a tonic status and its source chain into one line.
pub fn describe_status(status: &tonic::Status) -> String {
    let mut msg = format!("{}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

// The error type is openraft's; boxing it would only move the allocation elsewhere.
#[allow(clippy::result_large_err)]
fn decode_reply<Resp, E>(
    target: NodeId,
    reply: RaftReply,
) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
where
    Resp: DeserializeOwned,
    E: Error + DeserializeOwned,
{
    if !reply.error.is_empty() {
        let remote: RaftError<NodeId, E> = serde_json::from_slice(&reply.error).map_err(|e| {
            NetworkError::new(&TransportError(format!("undecodable error from {target}: {e}")))
        })?;
        return Err(RemoteError::new(target, remote).into());
    }
    serde_json::from_slice(&reply.payload).map_err(|e| {
        NetworkError::new(&TransportError(format!("undecodable reply from {target}: {e}"))).into()
    })
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }
}
