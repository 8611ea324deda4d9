//! The openraft type configuration: what a log entry carries, what applying it answers, and
//! what the cluster knows about each member.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use super::state::control::ControlRequest;
pub use super::state::Recovery;

/// A member's id: stable for the member's lifetime, never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// drover's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = super::runtime::DroverRuntime,
);

/// The Raft handle with drover's types.
pub type Raft = openraft::Raft<TypeConfig>;
/// Storage errors with drover's node id.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log id with drover's node id.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry with drover's types.
pub type Entry = openraft::Entry<TypeConfig>;
/// Membership as stored in the log and the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;

/// What a member is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A controller node in a site that can be active: runs probes and workflow steps.
    #[default]
    Controller,
    /// A voter in a third site: holds the log and votes, never acts, never becomes active.
    Witness,
}

impl Role {
    /// The name used in config files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Witness => "witness",
        }
    }

    /// Parses the config/wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "controller" => Some(Role::Controller),
            "witness" => Some(Role::Witness),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the cluster knows about a member; carried in Raft membership entries, so every node
/// knows every member's name, site, role and address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human name, unique in the cluster (e.g. `prod-1`); also the name in its TLS certificate.
    pub name: String,
    /// The site the member stands in (e.g. `prod`, `dr`, `witness`).
    pub site: String,
    /// Controller or witness.
    pub role: Role,
    /// `host:port` of its gRPC listener, as reachable from the other members.
    pub address: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {}, {})", self.name, self.site, self.role, self.address)
    }
}

/// A command proposed through the Raft log. Every entry carries the proposer's wall clock for
/// display only; nothing decides on it except the cooldown's end, which is not a safety matter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// An operator's note, appended to the replicated history.
    Note {
        /// Who wrote it.
        author: String,
        /// What they wrote.
        text: String,
        /// Proposer's wall clock, ms since the Unix epoch (display only).
        at_unix_ms: i64,
    },
    /// A change to the failover machinery: spec, workflows, operator decisions.
    Control(ControlRequest),
    /// A recovery without quorum (`drover-node recover`). Never proposed: the recover command
    /// writes it into the chosen survivor's log right after the membership entry that starts
    /// the new generation, and applying it records the recovery in the history.
    Recovery(Recovery),
}

/// What applying an entry answers to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Sequence number of the history record the entry produced, if any.
    pub history_seq: Option<u64>,
    /// Why the entry changed nothing (a compare-and-set lost, a stale workflow step...).
    /// Rejections are deterministic: every node rejects the same entry the same way.
    pub rejected: Option<String>,
    /// The spec version after the entry (for `config apply`).
    pub spec_version: Option<u64>,
}
