//! The decision engine: plain, deterministic Rust that turns inputs into decisions.
//!
//! ```text
//!   inputs                                   engine                      outputs
//!   now: MonoTime (caller's monotonic clock) ┐
//!   probe reports (observer, service, site)  ├──▶ detect::Detector ──▶ DetectEvent (SiteDown, SiteUp)
//!   voter set (from committed membership)    ┘
//!   renewal sent / confirmed / revoked  ──────▶ lease::HolderLease ──▶ expired? self-fence deadline
//!   revocation commit, term start       ──────▶ lease::LeaseParams ──▶ safe activation time
//!
//!   leader only, one per term:
//!   probe reports, step results,        ┐
//!   veto hook verdicts,                 │
//!   applied ControlState, voters,       ├──▶ engine::Engine ──▶ Propose(StartFailover | StepStarted
//!   members, reachability, now          ┘    (detect + lease)      | StepFinished), RunStep,
//!                                                                  RunVeto, Alert
//! ```
//!
//! Nothing here reads a clock, touches the network or disk, spawns tasks or draws random
//! numbers: time is an argument ([`MonoTime`], whole milliseconds from an origin the caller
//! picks), and every answer is a value. The node runtime, the witness and the simulator drive
//! the same code, and its tests are synchronous. Iteration orders are fixed (`BTreeMap`), so the
//! same inputs always give the same outputs in the same order.
//!
//! [`durability`] schedules each member's check that its disk still takes writes and judges
//! the outcome (a node that cannot persist must stop before a failover needs it).
//!
//! [`reconcile`] schedules, after a failover committed, the read-back of its traffic steps'
//! effect (drift), and decides what to record and when to have a drifted step run again.
//!
//! [`election`] decides when a member may start a Raft election (pre-vote) and when a leader
//! without a quorum stands back.
//!
//! Parts: [`detect`] (observer-quorum site health with hysteresis, DESIGN.md 3), [`lease`]
//! (lease expiry and the safe wait before activating without confirmed fencing, DESIGN.md 6),
//! [`readiness`] (whether each standby could take over now: readiness checks, lag,
//! consistency fingerprints, passive checks), and [`engine`], the leader's decision engine built on both: it decides automatic failovers
//! (quorum detection, policy, cooldown, no automatic failback, readiness and lag gates, veto
//! hooks) and
//! carries failover workflows through step by step (one proposal in flight per service,
//! executor choice, retries with backoff, the lease wait, probe steps, re-runs after a leader
//! change), emitting [`Command`]s for the runtime to carry out (DESIGN.md 5).

pub mod detect;
pub mod dry_run;
pub mod durability;
pub mod election;
pub mod engine;
pub mod lease;
pub mod readiness;
pub mod reconcile;
pub mod time;

pub use detect::{
    DetectEvent, DetectPolicy, DetectPolicyError, Detector, QuorumRule, SiteHealth, Tally, Verdict,
};
pub use durability::{DurabilityCheck, DurabilityParams, DurabilityVerdict, ProbeOutcome};
pub use election::{ElectionGuard, ElectionTimings, GuardCommand, GuardInput, RaftRole};
pub use engine::{Command, Engine, EngineParams, Observation, StepDispatch};
pub use lease::{HolderLease, LeaseParams, LeaseParamsError};
pub use readiness::{ConsistencyView, Fingerprint, PassiveView, Reason, StandbyReadiness};
pub use reconcile::{CheckDispatch, CheckOutcome, ReconcileCommand, ReconcileParams, Reconciler};
pub use time::MonoTime;
