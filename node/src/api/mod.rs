//! The node's surfaces: gRPC services (the Raft transport between members and the admin API
//! used by droverctl) behind one authorization layer ([`authz`]), and the plain HTTP
//! endpoints (health, readiness, metrics).

pub mod admin;
pub mod authz;
pub mod http;
pub mod raft;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::consensus::network::{LeaderContact, PeerContacts};
use crate::consensus::store::StateHandle;
use crate::consensus::types::{NodeId, Raft};

/// What every surface needs to answer about this node; cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    /// This node's id.
    pub id: NodeId,
    /// This node's name.
    pub name: String,
    /// This node's site.
    pub site: String,
    /// The local Raft instance.
    pub raft: Raft,
    /// When each peer last answered.
    pub contacts: PeerContacts,
    /// When a leader was last heard (AppendEntries or a snapshot accepted).
    pub leader_contact: LeaderContact,
    /// The Raft timings the election guard works with.
    pub election: crate::decide::ElectionTimings,
    /// When this process started the node, for silence counted from start.
    pub started: tokio::time::Instant,
    /// True while this node leads without a quorum and stands back (see `decide::election`):
    /// it then neither decides failovers nor confirms leases (a read would send the
    /// heartbeats that keep its last followers from electing a leader a majority can reach).
    pub standing_back: Arc<std::sync::atomic::AtomicBool>,
    /// The last stand-back notice of the leader this node followed (a PreVote with
    /// `stood_back`, checked against the node's vote): the election guard campaigns on it, and
    /// the Raft service refuses that leader's AppendEntries for a while.
    pub stood_back_notice: raft::StandBackNotice,
    /// The applied replicated state.
    pub state: StateHandle,
    /// The leader's view of each service's sites (service -> site -> health), for status.
    pub health: HealthView,
    /// The leader's verdict of the readiness and lag gates of a failover of each service to
    /// each site (service -> site -> Ok or why not), for operators' unforced failovers.
    pub gates: GateView,
    /// The leader's readiness verdict of each standby of each service (service -> standbys in
    /// spec order), for status and metrics; empty on followers.
    pub readiness: ReadinessView,
    /// Services this node self-fenced, with the epoch.
    pub fenced: FencedView,
    /// Services whose lease this node believes its site holds right now (by its own clock,
    /// not self-fenced), with the epoch: the site's own view of whether it may serve.
    pub leases: LeaseView,
    /// Who may call what on the gRPC port; also logs refusals.
    pub authz: Arc<authz::Authorizer>,
    /// This node's own latest probe verdicts (service -> site -> verdict), whoever leads.
    pub own_health: HealthView,
    /// When each member last answered this node's presence check (sent while it hears no
    /// leader), for `status` on a member without a quorum.
    pub presence: PresenceView,
    /// Why this node can no longer persist (its durability probe failed), once it cannot:
    /// `/readyz` answers 503 with it and the node stops (`runtime::fatal`).
    pub storage_fault: crate::runtime::durability::StorageFault,
}

/// Leader-side health of each (service, site) as the detector sees it.
pub type HealthView = Arc<RwLock<BTreeMap<String, BTreeMap<String, String>>>>;
/// Leader-side gate verdicts of a failover, per service and target site.
pub type GateView = Arc<RwLock<BTreeMap<String, BTreeMap<String, Result<(), String>>>>>;
/// Leader-side readiness verdicts of each service's standbys.
pub type ReadinessView = Arc<RwLock<BTreeMap<String, Vec<crate::decide::StandbyReadiness>>>>;
/// Services this node has self-fenced, with the epoch it fenced at.
pub type FencedView = Arc<Mutex<BTreeMap<String, u64>>>;
/// When each member last answered this node's presence check.
pub type PresenceView = Arc<Mutex<BTreeMap<NodeId, tokio::time::Instant>>>;
/// Services whose lease this node believes it holds, with the epoch.
pub type LeaseView = Arc<Mutex<BTreeMap<String, u64>>>;
