//! The decision engine: plain, deterministic Rust that turns inputs into decisions.
//!
//! ```text
//!   inputs                                   engine                      outputs
//!   now: MonoTime (caller's monotonic clock) ┐
//!   probe reports (observer, service, site)  ├──▶ detect::Detector ──▶ DetectEvent (SiteDown, SiteUp)
//!   voter set (from committed membership)    ┘
//!   renewal sent / confirmed / revoked  ──────▶ lease::HolderLease ──▶ expired? self-fence deadline
//!   revocation commit, term start       ──────▶ lease::LeaseParams ──▶ safe activation time
//! ```
//!
//! Nothing here reads a clock, touches the network or disk, spawns tasks or draws random
//! numbers: time is an argument ([`MonoTime`], whole milliseconds from an origin the caller
//! picks), and every answer is a value. The node runtime, the witness and the simulator drive
//! the same code, and its tests are synchronous. Iteration orders are fixed (`BTreeMap`), so the
//! same inputs always give the same outputs in the same order.
//!
//! So far: [`detect`] (observer-quorum site health with hysteresis, DESIGN.md 3) and [`lease`]
//! (lease expiry and the safe wait before activating without confirmed fencing, DESIGN.md 6).

pub mod detect;
pub mod lease;
pub mod time;

pub use detect::{
    DetectEvent, DetectPolicy, DetectPolicyError, Detector, QuorumRule, SiteHealth, Verdict,
};
pub use lease::{HolderLease, LeaseParams, LeaseParamsError};
pub use time::MonoTime;
