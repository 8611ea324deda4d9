//! drover: consensus-driven disaster-recovery failover between two sites.
//!
//! The crate is laid out by responsibility (see `docs/architecture.md`):
//! - [`consensus`]: openraft type config, replicated state, redb storage, gRPC Raft network.
//! - [`decide`]: the pure decision engine: site health detection, lease arithmetic.
//! - [`config`]: the node-local `node.toml`, parsed and validated once.
//! - [`tls`]: mutual TLS for every gRPC connection, and the dev CA generator.
//! - [`api`]: gRPC services (Raft transport, admin) and the HTTP endpoints.
//! - [`runtime`]: starts a node and wires the parts together.
//! - [`pb`]: conversions between protobuf messages and domain types.
//! - [`spec`]: the replicated cluster spec (`cluster.toml`): model, validation and diff.
//! - [`probe`]: health checks (http, tcp, exec) and lag probes, run in the background into
//!   per-site reports.
//! - [`actuate`]: actuators that carry out runbook steps (exec, webhook, wait, fence agents,
//!   HAProxy) behind a trait.
//! - `edge` (private): bounded child processes and the outbound HTTP(S) client they share.

pub mod actuate;
pub mod api;
pub mod client;
pub mod config;
pub mod consensus;
pub mod decide;
mod edge;
#[doc(hidden)]
pub mod fuzz;
pub mod pb;
pub mod probe;
pub mod runtime;
pub mod spec;
pub mod tls;
