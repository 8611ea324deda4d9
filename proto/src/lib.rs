//! drover's wire protocol. Generated code stays in this crate; the node converts it to domain
//! types in one place (`drover::pb`).
#![allow(clippy::all, missing_docs)]

/// Version 1 of the protocol: the internal Raft transport and the admin API.
pub mod v1 {
    tonic::include_proto!("drover.v1");
}
