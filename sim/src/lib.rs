//! drover-sim: drover's real node stack (openraft, the redb store, the state machine, the
//! decision engine, the failover driver and its gRPC services) run under simulated time and
//! network, with the faults a DR pair meets, and checkers for DESIGN.md 7's invariants.
//!
//! ```text
//!  seed ─▶ scenario::plan ─▶ faults by time ─┐
//!                                            ▼
//!  run::run ── turmoil::Sim ── host p1..w1: node::run = drover::runtime::assemble(
//!     │                          SimDisk store, turmoil TCP gRPC, SimActuator, SimProbes,
//!     │                          LeaseClock at the node's drift)
//!     │            world (apps, power, cuts, DNS zone, actuator ledger, trace)
//!     └── every 10 ms: check::Checker::observe(world, every running node's state)
//! ```
//!
//! Everything follows the seed: turmoil's network and host runtimes, the plan, actuator
//! timings; the process's clocks and random sources are overridden ([`det`]). The same seed
//! and binary give the same trace hash.

pub mod check;
pub mod det;
pub mod disk;
pub mod fakes;
pub mod net;
pub mod node;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod spec;
pub mod trace;
pub mod world;

pub use run::{run, Outcome, RunConfig};
