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
//!
//! Large entries (a spec is up to 1 MiB) get two accommodations in `append_entries`:
//! - a batch is cut at [`MAX_APPEND_BYTES`] of encoded entries (a larger single entry goes
//!   alone) and the cut is reported to openraft as `PartialSuccess`, so no message approaches
//!   the transport's [`MAX_RAFT_MESSAGE_BYTES`], however many entries a follower is behind;
//! - openraft 0.9 gives every AppendEntries one heartbeat interval, which a megabyte may not
//!   fit in on a busy member. A send with entries runs in its own task, with a deadline that
//!   grows with its size ([`append_deadline`]); when openraft gives up and retries the same
//!   range, the retry waits for that send instead of starting over, so a large entry makes
//!   progress across retries instead of being cut off at every one.

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

use super::channel::{endpoint, Dialer, PeerChannel};
use super::types::{LogId, Member, NodeId, TypeConfig};
use crate::tls::TlsMaterial;

/// Largest gRPC message a member sends or accepts (log batches and snapshot chunks).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Encoded entries one AppendEntries carries at most; a single larger entry is sent alone.
pub const MAX_APPEND_BYTES: usize = 1024 * 1024;
/// The slowest transfer an AppendEntries with entries is given time for (see
/// [`append_deadline`]), in bytes per second.
const MIN_APPEND_BYTES_PER_SEC: u64 = 256 * 1024;
/// Longest deadline of one AppendEntries with entries.
const MAX_APPEND_DEADLINE: Duration = Duration::from_secs(30);

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

/// When this member last accepted AppendEntries or a snapshot from a leader, or last led
/// itself, on its monotonic clock: the election guard's measure of silence
/// (`decide::election`).
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
                RaftClient::new(PeerChannel::new(ep, self.dialer.clone()))
                    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            })
            .map_err(|e| format!("bad address {:?} for member {}: {e}", node.address, node.name));
        PeerClient {
            own_id: self.own_id,
            target,
            client,
            contacts: self.contacts.clone(),
            in_flight: None,
        }
    }
}

/// One peer's end of the transport.
pub struct PeerClient {
    own_id: NodeId,
    target: NodeId,
    client: Result<RaftClient<PeerChannel>, String>,
    contacts: PeerContacts,
    /// The AppendEntries with entries still on its way, if any.
    in_flight: Option<InFlight>,
}

type AppendResult =
    Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>>;

/// An AppendEntries sent in its own task (see the module doc).
struct InFlight {
    vote: openraft::Vote<NodeId>,
    prev: Option<LogId>,
    last: Option<LogId>,
    task: tokio::task::JoinHandle<AppendResult>,
}

/// How many of the entries (of these encoded sizes, in order) one AppendEntries carries: as
/// many as fit in `budget` bytes, and at least one.
pub fn bounded_prefix(sizes: &[usize], budget: usize) -> usize {
    let mut total = 0usize;
    for (i, size) in sizes.iter().enumerate() {
        total = total.saturating_add(*size);
        if total > budget {
            return i.max(1);
        }
    }
    sizes.len()
}

/// The deadline of an AppendEntries of `bytes` encoded entries: openraft's `hard_ttl`, or the
/// time to move them at `MIN_APPEND_BYTES_PER_SEC` if longer, at most `MAX_APPEND_DEADLINE`.
pub fn append_deadline(hard_ttl: Duration, bytes: usize) -> Duration {
    let transfer =
        Duration::from_millis((bytes as u64).saturating_mul(1000) / MIN_APPEND_BYTES_PER_SEC);
    hard_ttl.max(transfer).min(MAX_APPEND_DEADLINE)
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
        let payload = serde_json::to_vec(req)
            .map_err(|e| NetworkError::new(&TransportError(format!("encode {action}: {e}"))))?;
        send(
            self.client.clone(),
            self.own_id,
            self.target,
            self.contacts.clone(),
            action,
            payload,
            ttl,
        )
        .await
    }

    /// AppendEntries with entries: cut to [`MAX_APPEND_BYTES`], sent in its own task, and
    /// awaited again by a retry of the same range (see the module doc).
    async fn append(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> AppendResult {
        let asked = rpc.entries.last().map(|e| e.log_id);
        let same = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.vote == rpc.vote && f.prev == rpc.prev_log_id);
        if !same {
            // Only a new send pays for measuring its entries; a retry joins the one running.
            let sizes: Vec<usize> =
                rpc.entries.iter().map(|e| serde_json::to_vec(e).map_or(0, |v| v.len())).collect();
            let n = bounded_prefix(&sizes, MAX_APPEND_BYTES);
            rpc.entries.truncate(n);
            let last = rpc.entries.last().map(|e| e.log_id);
            let bytes: usize = sizes[..n].iter().sum();
            let ttl = append_deadline(option.hard_ttl(), bytes);
            let (vote, prev) = (rpc.vote, rpc.prev_log_id);
            let payload = serde_json::to_vec(&rpc).map_err(|e| {
                NetworkError::new(&TransportError(format!("encode AppendEntries: {e}")))
            })?;
            let (client, own_id, target, contacts) =
                (self.client.clone(), self.own_id, self.target, self.contacts.clone());
            let task = tokio::spawn(async move {
                send(client, own_id, target, contacts, RPCTypes::AppendEntries, payload, ttl).await
            });
            // A send of another range (or term) still running is left to finish on its own.
            self.in_flight = Some(InFlight { vote, prev, last, task });
        }
        let Some(f) = self.in_flight.as_mut() else { unreachable!("set above") };
        // If openraft drops this future at its deadline, the send goes on and stays here.
        let joined = (&mut f.task).await;
        let sent_last = f.last;
        self.in_flight = None;
        let reply = joined.map_err(|e| {
            RPCError::from(NetworkError::new(&TransportError(format!("AppendEntries task: {e}"))))
        })??;
        Ok(match reply {
            // Openraft asked for more than this send carried (it was cut, or the retry asks
            // for more): it learns how far the follower now matches.
            AppendEntriesResponse::Success if sent_last < asked => {
                AppendEntriesResponse::PartialSuccess(sent_last)
            }
            other => other,
        })
    }
}

/// One Raft RPC to `target`, bounded by `ttl`.
async fn send<Resp, E>(
    client: Result<RaftClient<PeerChannel>, String>,
    own_id: NodeId,
    target: NodeId,
    contacts: PeerContacts,
    action: RPCTypes,
    payload: Vec<u8>,
    ttl: Duration,
) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
where
    Resp: DeserializeOwned,
    E: Error + DeserializeOwned,
{
    {
        let mut client = match client {
            Ok(c) => c,
            Err(msg) => return Err(Unreachable::new(&TransportError(msg)).into()),
        };
        let request = RaftRequest { payload };
        let fut = async {
            match action {
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => return Err(Timeout { action, id: own_id, target, timeout: ttl }.into()),
            Ok(Err(status)) => return Err(status_to_rpc_error(&status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        // Only an answer from a working Raft counts as contact: a peer whose Raft core stopped
        // (full disk, storage error) still answers gRPC, with a fatal error.
        let answer = decode_reply(target, reply);
        if answer.is_ok() {
            contacts.touch(target);
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
        if rpc.entries.is_empty() {
            return self.call(RPCTypes::AppendEntries, &rpc, option.hard_ttl()).await;
        }
        self.append(rpc, option).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_by_bytes_but_carry_at_least_one_entry() {
        let mb = 1024 * 1024;
        assert_eq!(bounded_prefix(&[], MAX_APPEND_BYTES), 0);
        assert_eq!(bounded_prefix(&[10, 20, 30], MAX_APPEND_BYTES), 3);
        // Twenty ~1 MB entries: one per message, never all twenty at once.
        assert_eq!(bounded_prefix(&[mb + 100; 20], MAX_APPEND_BYTES), 1);
        assert_eq!(bounded_prefix(&[mb / 3; 20], MAX_APPEND_BYTES), 3);
        assert_eq!(bounded_prefix(&[5 * mb, 10], MAX_APPEND_BYTES), 1);
        const { assert!(MAX_APPEND_BYTES * 4 < MAX_RAFT_MESSAGE_BYTES) };
    }

    #[test]
    fn the_deadline_of_an_append_grows_with_its_size() {
        let hb = Duration::from_millis(150);
        assert_eq!(append_deadline(hb, 1000), hb);
        assert_eq!(append_deadline(hb, 1024 * 1024), Duration::from_secs(4));
        assert_eq!(append_deadline(hb, usize::MAX), MAX_APPEND_DEADLINE);
    }
}
