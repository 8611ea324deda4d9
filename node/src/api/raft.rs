//! The receiving end of the Raft transport: decodes a peer's request, checks it, hands it to
//! the local openraft instance, and encodes the answer (or openraft's refusal) back.
//! AppendEntries and snapshots accepted from a leader are noted as leader contact; `PreVote`
//! is drover's own (openraft 0.9 has none) and is answered here by
//! `decide::election::pre_vote_refusal`; a PreVote with `stood_back` is the notice of a leader
//! that stood back, noted ([`StandBackNotice`]) when it comes from the leader this node
//! follows, in that leader's term. From then on, for `ElectionTimings::notice_refusal`, that
//! leader's AppendEntries and snapshots are refused before openraft sees them: openraft would
//! count them as the leader's lease (and refuse every vote), though that leader cannot reach
//! a quorum.
//!
//! Checks before openraft sees anything (openraft trusts its peers; a term near `u64::MAX`
//! makes it panic on overflow and persists the vote first):
//! - the sender named in the request's vote (a candidate, or the leader) is the member whose
//!   certificate the caller presented ([`Authorizer::same_member`]);
//! - every term in the request is at most [`MAX_TERM_AHEAD`] beyond this node's current term
//!   (when it has a membership) and never above [`MAX_TERM`]; log entries are never newer than
//!   the sender's own vote.

use drover_proto::v1::raft_server::{Raft as RaftRpc, RaftServer};
use drover_proto::v1::{PreVoteReply, PreVoteRequest, RaftReply, RaftRequest};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use openraft::ServerState;
use openraft::{LogId, RaftLogId, Vote};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::authz::{caller_of, Caller};
use super::NodeHandle;
use crate::consensus::network::MAX_RAFT_MESSAGE_BYTES;
use crate::consensus::types::{NodeId, TypeConfig};
use crate::decide::election::pre_vote_refusal;

/// How far beyond this node's current term a request's term may be. Honest terms grow by one
/// per election round; 1000 rounds is far more than any real partition produces between two
/// contacts, and a member that did get further ahead still rejoins: the leader learns its
/// higher term from the refusal it answers the leader's heartbeats with, and elections
/// continue from there.
pub const MAX_TERM_AHEAD: u64 = 1000;
/// No term above this is ever accepted, even by a node without a membership (a joiner, which
/// must accept the cluster's current term whatever it is). Far beyond any real term, far below
/// where openraft's term arithmetic overflows.
pub const MAX_TERM: u64 = 1 << 48;

/// The last stand-back notice this node noted: from which leader, in which term, when (on the
/// node's monotonic clock).
#[derive(Debug, Clone, Default)]
pub struct StandBackNotice(Arc<Mutex<Option<(NodeId, u64, tokio::time::Instant)>>>);

impl StandBackNotice {
    fn note(&self, leader: NodeId, term: u64) {
        let now = tokio::time::Instant::now();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((leader, term, now));
    }

    /// Age of the last notice, if any.
    pub fn since(&self) -> Option<Duration> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).map(|(_, _, t)| t.elapsed())
    }

    /// Age of the last notice if it came from `leader` in `term`.
    pub fn since_from(&self, leader: NodeId, term: u64) -> Option<Duration> {
        let notice = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        notice.filter(|(l, t, _)| (*l, *t) == (leader, term)).map(|(_, _, at)| at.elapsed())
    }
}

/// gRPC service for append-entries, vote and install-snapshot from peers.
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

    /// Decodes the request and returns it with its caller.
    fn decode<T: DeserializeOwned>(req: Request<RaftRequest>) -> Result<(Caller, T), Status> {
        let caller = caller_of(&req)?;
        let body = serde_json::from_slice(&req.into_inner().payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable Raft request: {e}")))?;
        Ok((caller, body))
    }

    /// Refuses the AppendEntries or snapshot of a leader (`vote`) that told this node it stood
    /// back, for `notice_refusal` after the notice.
    fn refuse_stood_back(&self, method: &str, vote: &Vote<NodeId>) -> Result<(), Status> {
        let leader = vote.leader_id.node_id;
        let timings = &self.node.election;
        match self.node.stood_back_notice.since_from(leader, vote.leader_id.term) {
            Some(age) if age < timings.notice_refusal() => Err(Status::unavailable(format!(
                "{method} refused: node {leader} stood back for lack of a quorum in term {} {} \
                 ago; this member follows it again after {} unless it elects another leader",
                vote.leader_id.term,
                humantime::format_duration(Duration::from_millis(age.as_millis() as u64)),
                humantime::format_duration(timings.notice_refusal())
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a request whose vote is not the caller's or whose terms are out of bounds.
    fn admit(
        &self,
        caller: &Caller,
        method: &str,
        vote: &Vote<NodeId>,
        logged_terms: impl IntoIterator<Item = u64>,
    ) -> Result<(), Status> {
        let authz = &self.node.authz;
        authz.same_member(caller, method, "the vote's node", vote.leader_id.node_id)?;
        let (current, has_members) = {
            let metrics = self.node.raft.metrics();
            let m = metrics.borrow();
            let has_members = m.membership_config.membership().nodes().next().is_some();
            (m.current_term, has_members)
        };
        check_terms(current, has_members, vote.leader_id.term, logged_terms).map_err(|why| {
            let status = Status::invalid_argument(format!("{method} refused: {why}"));
            let who = match caller {
                Caller::Member { name, .. } => format!("node certificate of {name}"),
                other => format!("{other:?}"),
            };
            authz.refused(&who, method, "", &status)
        })
    }
}

/// Checks a request's vote term and the terms of the log ids it carries against this node's
/// `current` term. Pure.
pub fn check_terms(
    current: u64,
    has_members: bool,
    vote_term: u64,
    logged_terms: impl IntoIterator<Item = u64>,
) -> Result<(), String> {
    if vote_term > MAX_TERM {
        return Err(format!("term {vote_term} is above the largest term accepted ({MAX_TERM})"));
    }
    if has_members && vote_term > current.saturating_add(MAX_TERM_AHEAD) {
        return Err(format!(
            "term {vote_term} is more than {MAX_TERM_AHEAD} beyond this node's term {current}"
        ));
    }
    if let Some(t) = logged_terms.into_iter().find(|t| *t > vote_term) {
        return Err(format!(
            "it carries a log id of term {t}, newer than its own term {vote_term}"
        ));
    }
    Ok(())
}

fn log_term(id: &LogId<NodeId>) -> u64 {
    id.leader_id.term
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
        let (caller, r): (_, AppendEntriesRequest<TypeConfig>) = Self::decode(req)?;
        let logged = r
            .prev_log_id
            .iter()
            .chain(&r.leader_commit)
            .map(log_term)
            .chain(r.entries.iter().map(|e| log_term(e.get_log_id())));
        self.admit(&caller, "/drover.v1.Raft/AppendEntries", &r.vote, logged.collect::<Vec<_>>())?;
        self.refuse_stood_back("AppendEntries", &r.vote)?;
        let answer = self.node.raft.append_entries(r).await;
        if matches!(&answer, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.node.leader_contact.touch();
        }
        encode(answer)
    }

    async fn vote(&self, req: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (caller, r): (_, VoteRequest<NodeId>) = Self::decode(req)?;
        let logged = r.last_log_id.as_ref().map(log_term);
        self.admit(&caller, "/drover.v1.Raft/Vote", &r.vote, logged)?;
        encode(self.node.raft.vote(r).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (caller, r): (_, InstallSnapshotRequest<TypeConfig>) = Self::decode(req)?;
        let logged = r.meta.last_log_id.as_ref().map(log_term);
        self.admit(&caller, "/drover.v1.Raft/InstallSnapshot", &r.vote, logged)?;
        self.refuse_stood_back("InstallSnapshot", &r.vote)?;
        let answer = self.node.raft.install_snapshot(r).await;
        if answer.is_ok() {
            self.node.leader_contact.touch();
        }
        encode(answer)
    }

    async fn pre_vote(
        &self,
        req: Request<PreVoteRequest>,
    ) -> Result<Response<PreVoteReply>, Status> {
        let caller = caller_of(&req)?;
        let r = req.into_inner();
        let node = &self.node;
        node.authz.same_member(&caller, "/drover.v1.Raft/PreVote", "candidate", r.candidate)?;
        let (leading, voters, vote) = {
            let metrics = node.raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<_> = m.membership_config.membership().voter_ids().collect();
            (m.state == ServerState::Leader, voters, m.vote)
        };
        if r.stood_back {
            let follows = vote.is_committed()
                && vote.leader_id.node_id == r.candidate
                && vote.leader_id.term == r.term
                && r.candidate != node.id;
            let reason = if follows {
                node.stood_back_notice.note(r.candidate, r.term);
                tracing::info!(
                    leader = r.candidate,
                    term = r.term,
                    "the leader stood back for lack of a quorum: campaigning soon"
                );
                "noted: this member stops deferring to its leader".to_string()
            } else {
                format!(
                    "ignored: this member does not follow node {} in term {} (its vote: {vote})",
                    r.candidate, r.term
                )
            };
            return Ok(Response::new(PreVoteReply { granted: false, reason }));
        }
        if !voters.contains(&r.candidate) {
            return Ok(Response::new(PreVoteReply {
                granted: false,
                reason: format!("node {} is not a voter in this member's membership", r.candidate),
            }));
        }
        let timings = &node.election;
        let leading_with_quorum = leading
            && !node.standing_back.load(std::sync::atomic::Ordering::Relaxed)
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
            last_log_of(node),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_far_ahead_or_huge_are_refused() {
        assert!(check_terms(5, true, 6, [5, 6]).is_ok());
        assert!(check_terms(5, true, 5 + MAX_TERM_AHEAD, []).is_ok());
        let err = check_terms(5, true, 6 + MAX_TERM_AHEAD, []).unwrap_err();
        assert!(err.contains("more than 1000 beyond this node's term 5"), "{err}");
        assert!(check_terms(5, true, u64::MAX, []).unwrap_err().contains("largest term"));
        // A node without membership (a joiner) takes the cluster's term, whatever it is ...
        assert!(check_terms(0, false, 123_456, []).is_ok());
        // ... but never an absurd one.
        assert!(check_terms(0, false, u64::MAX, []).is_err());
        assert!(check_terms(u64::MAX, true, u64::MAX, []).is_err());
    }

    #[test]
    fn log_ids_newer_than_the_senders_term_are_refused() {
        let err = check_terms(5, true, 6, [5, u64::MAX]).unwrap_err();
        assert!(err.contains("newer than its own term 6"), "{err}");
    }
}
