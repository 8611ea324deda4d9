//! Consensus: openraft's type configuration, the replicated state, the redb-backed log store
//! and state machine, and the gRPC network between members.
//!
//! ```text
//!  admin API ──client_write──▶ openraft ──append──▶ store::LogStore (redb, fsync)
//!                                 │  ▲
//!                      network ◀──┘  └──apply──▶ store::StateMachine ──▶ state::ClusterState
//! ```

pub mod channel;
pub mod network;
pub mod runtime;
pub mod state;
pub mod store;
pub mod types;
