//! A point-in-time view of the cluster from this node: who is a member, who leads, how far
//! each follower is behind. `status`, `/readyz` and `/metrics` all read it, so they agree.

use std::time::Duration;

use openraft::ServerState;

use std::collections::BTreeMap;

use super::NodeHandle;
use crate::consensus::state::control::ServiceState;
use crate::consensus::types::{Member, NodeId};

/// The cluster as this node sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// This node's id.
    pub node_id: NodeId,
    /// This node's name.
    pub node_name: String,
    /// The leader this node knows of.
    pub leader_id: Option<NodeId>,
    /// Current Raft term.
    pub term: u64,
    /// This node's Raft state.
    pub state: ServerState,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Highest index this node knows to be committed.
    pub commit_index: Option<u64>,
    /// Highest index applied to this node's state machine.
    pub applied_index: Option<u64>,
    /// Every member in the current membership config, voters first, by id.
    pub members: Vec<MemberView>,
    /// Seq of the newest history record applied here.
    pub history_seq: u64,
    /// Version of the applied spec (0 = none).
    pub spec_version: u64,
    /// Per service: its replicated state.
    pub services: Vec<(String, ServiceState)>,
    /// The leader's detector view (service -> site -> health); empty on followers.
    pub health: BTreeMap<String, BTreeMap<String, String>>,
    /// The leader's readiness verdict of each service's standbys; empty on followers.
    pub readiness: BTreeMap<String, Vec<crate::decide::StandbyReadiness>>,
    /// Per service: whether drift is repaired (the policy's `repair`), for the alerts.
    pub repair: BTreeMap<String, bool>,
}

/// One member as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Member id.
    pub id: NodeId,
    /// Name, site, role, address.
    pub member: Member,
    /// Voter (true) or learner (false).
    pub voter: bool,
    /// Leader only: last index replicated to it.
    pub matched_index: Option<u64>,
    /// Leader only: how many entries it is behind the leader's log.
    pub lag: Option<u64>,
    /// Leader only: time since it last answered a Raft RPC.
    pub last_contact: Option<Duration>,
}

impl ClusterView {
    /// Ready = member of a cluster with a known leader.
    pub fn ready(&self) -> bool {
        self.leader_id.is_some() && self.members.iter().any(|m| m.id == self.node_id)
    }

    /// The state's name as shown to users.
    pub fn state_name(&self) -> &'static str {
        state_name(self.state)
    }
}

/// The name of a Raft server state as shown to users.
pub fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl NodeHandle {
    /// Reads the current view from openraft's metrics and the applied state.
    pub async fn view(&self) -> ClusterView {
        let metrics = self.raft.metrics().borrow().clone();
        let commit_index =
            self.raft.with_raft_state(|st| st.committed.map(|l| l.index)).await.unwrap_or(None);
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader_last = metrics.last_log_index;
        let is_leader = metrics.state == ServerState::Leader;
        let mut members: Vec<MemberView> = membership
            .nodes()
            .map(|(id, member)| {
                let matched_index = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned())
                    .map(|m| m.map_or(0, |l| l.index));
                let (matched_index, lag) = if *id == self.id && is_leader {
                    (leader_last, Some(0))
                } else {
                    let lag = matched_index.map(|m| leader_last.unwrap_or(0).saturating_sub(m));
                    (matched_index, lag)
                };
                let last_contact = match (is_leader, *id == self.id) {
                    (true, true) => Some(Duration::ZERO),
                    (true, false) => self.contacts.since(*id),
                    _ => None,
                };
                MemberView {
                    id: *id,
                    member: member.clone(),
                    voter: voters.contains(id),
                    matched_index,
                    lag,
                    last_contact,
                }
            })
            .collect();
        members.sort_by_key(|m| (!m.voter, m.id));
        ClusterView {
            node_id: self.id,
            node_name: self.name.clone(),
            leader_id: metrics.current_leader,
            term: metrics.current_term,
            state: metrics.state,
            last_log_index: metrics.last_log_index,
            commit_index,
            applied_index: metrics.last_applied.map(|l| l.index),
            members,
            history_seq: self.state.read(|s| s.last_seq),
            spec_version: self.state.read(|s| s.control.spec.as_ref().map_or(0, |v| v.version)),
            services: self
                .state
                .read(|s| s.control.services.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            health: self.health.read().map(|h| h.clone()).unwrap_or_default(),
            readiness: self.readiness.read().map(|r| r.clone()).unwrap_or_default(),
            repair: self.state.read(|s| {
                let spec = s.control.spec.as_ref().map(|v| &v.spec);
                s.control
                    .services
                    .keys()
                    .map(|k| {
                        (k.clone(), spec.and_then(|sp| sp.policy_for(k)).is_some_and(|p| p.repair))
                    })
                    .collect()
            }),
        }
    }
}
