//! Harness for drover's black-box tests: real `drover-node`, `drover-witness` and `droverctl`
//! processes talking real gRPC over mutual TLS on loopback.
//!
//! ```text
//!  test fn ──> Cluster ──spawn──> drover-node / drover-witness   (one process group each,
//!    │            │                    │   stderr -> <tmp>/<name>/node.log)
//!    │            ├──run──> droverctl --endpoint .. --tls-dir <tmp>/certs ..
//!    │            └──HTTP/1.0 GET──> /healthz /readyz /metrics
//!    └── asserts on what a user sees: droverctl output, HTTP answers, exit codes
//! ```
//!
//! Everything is synchronous: std::process, threads for pipe draining, polling loops that
//! always carry a deadline. A wait that runs out panics with what it expected, the last thing
//! it observed and the tail of every node's log; the temp dir is then kept and its path printed.
//!
//! Authorization tests send what no honest client would through a rogue client built from the
//! generated stubs, with whatever certificate they choose ([`rogue::Rogue`]).
//!
//! Failover tests add a stand-in application per site driven by a runbook script that keeps a
//! ledger ([`Apps`]), and, as root, sites in network namespaces joined by a bridge
//! ([`netns::Sites`]), where a partition is a link taken down.
//!
//! The binaries are found (and built once per test process) by [`bins`]. Run the suite with
//! `cargo nextest run -p drover-tests` (or `cargo test -p drover-tests`); set
//! `DROVER_BIN_DIR=<target>/debug` to test binaries built elsewhere without rebuilding them.

mod app;
mod bins;
mod cluster;
mod http;
pub mod netns;
mod process;
pub mod require;
mod rig;
pub mod rogue;
pub mod servers;

pub use app::{failover_spec, failover_spec_head, lifecycle_spec, AppSite, Apps, LedgerLine};
pub use bins::{bins, workspace_root, Bins};
pub use cluster::{Cluster, ClusterBuilder, NodeId, Role, NETNS_GRPC_PORT, NETNS_HTTP_PORT};
pub use http::{http_get, parse_metrics, Metrics};
pub use process::{run_with_deadline, CmdOutput};
pub use require::{require_program, skip};
pub use rig::{step, steps, succeeded_step, unix_ms, Rig, SERVICE, STEADY};

use std::time::Duration;

/// How long a whole cluster gets to elect its first leader (5 debug-build processes on a
/// 2-core machine, possibly next to other tests).
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted or newly added node gets to catch up with the leader.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one droverctl invocation (its own `--timeout` is 5s; this only guards
/// against a hung client).
pub const CTL_DEADLINE: Duration = Duration::from_secs(20);
