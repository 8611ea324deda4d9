//! drover: consensus-driven disaster-recovery failover between two sites.
//!
//! The crate is laid out by responsibility (see `docs/architecture.md`):
//! - [`consensus`]: openraft type config, replicated state, redb storage, gRPC Raft network.
//! - [`config`]: the node-local `node.toml`, parsed and validated once.
//! - [`tls`]: mutual TLS for every gRPC connection, and the dev CA generator.
//! - [`api`]: gRPC services (Raft transport, admin) and the HTTP endpoints.
//! - [`runtime`]: starts a node and wires the parts together.
//! - [`pb`]: conversions between protobuf messages and domain types.

pub mod api;
pub mod client;
pub mod config;
pub mod consensus;
pub mod pb;
pub mod runtime;
pub mod tls;
