//! The replicated cluster spec, `cluster.toml`: sites, the failover policy, and per service its
//! health checks, lag probe, runbooks and veto hooks.
//!
//! ```text
//! cluster.toml --toml/serde--> raw::File --validate--> ClusterSpec --serde_json--> Raft log
//!                (deny_unknown_fields)   (every rule; all         (identical on every node)
//!                                          errors listed)
//! ```
//!
//! Everything here is pure: [`parse`] turns text into a validated [`ClusterSpec`] or a
//! [`SpecErrors`] listing every problem as `key path: reason`; only [`load`] reads a file.
//! The validated form is what `droverctl config apply` proposes and the state machine stores;
//! durations in it serialize as humantime strings (`"3s"`, `"800ms"`) so its JSON reads like
//! the TOML. [`diff`] describes the change between two specs for `droverctl config diff`.

mod diff;
mod raw;
mod validate;
pub use validate::check_against_raft_timings;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use diff::diff;

/// The reserved `run_on` value meaning "any controller node" (in practice the leader).
pub const RUN_ON_ANY: &str = "any";

/// Most services one cluster protects: the tested maximum (`tests/tests/overload.rs`: 300
/// services with 1 s checks stay protecting, with a witness leader, debug builds, on a loaded
/// 2-core machine; node memory and CPU in docs/benchmarks.md). Lease renewals are batched (one
/// request per node and round); what gives out first beyond it is the leader: at 500 a
/// witness leader lost its quorum in one run of two, at 700 and 1,000 within 15 s of the apply.
pub const MAX_SERVICES: usize = 300;

/// Longest timeout (and check interval) accepted anywhere in the spec.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most retries a step may have.
pub const MAX_RETRIES: u32 = 10;
/// Largest DNS record TTL accepted, in seconds.
pub const MAX_DNS_TTL_SECS: u32 = 86_400;
/// TSIG algorithms a `dns` step may use (the HMACs the signer implements; hmac-sha1 and
/// hmac-sha224 are not among them).
pub const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];
/// Upper bound (exclusive) of `max_clock_drift`.
pub const MAX_CLOCK_DRIFT_LIMIT: f64 = 0.1;
/// Timeout of a veto hook that sets none.
pub const DEFAULT_VETO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest timeout a veto hook may have: it holds up the failover while it runs.
pub const MAX_VETO_TIMEOUT: Duration = Duration::from_secs(300);

/// A validated cluster spec; the only form the rest of the program sees. Built by [`parse`] or
/// [`load`], committed through Raft as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// The sites, in the order written: at least two that can be active, at most one witness.
    pub sites: Vec<Site>,
    /// Cluster-wide policy; services may override parts of it (see [`ClusterSpec::policy_for`]).
    pub policy: Policy,
    /// The services (protection groups), in the order written; names are unique.
    pub services: Vec<Service>,
}

/// A site: a location holding controller nodes (and the service's servers), or the witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Unique name (`[a-z0-9-]`, not `any`).
    pub name: String,
    /// A witness site votes and observes, is never active and never runs steps.
    pub witness: bool,
}

/// How a service's failover is decided and committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// A quorum of observers must see the active site unhealthy this long before it is down.
    #[serde(with = "humantime_serde")]
    pub down_after: Duration,
    /// A down site must look healthy this long before it counts as up again (>= `down_after`).
    #[serde(with = "humantime_serde")]
    pub up_after: Duration,
    /// Lease of the active site's nodes; they self-fence when they cannot renew it this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Bound on the relative clock *rate* drift between nodes (0.01 = 1%), in `[0, 0.1)`.
    pub max_clock_drift: f64,
    /// How long the `on_lease_lost` runbook may take to stop the site.
    #[serde(with = "humantime_serde")]
    pub self_fence_grace: Duration,
    /// No further automatic failover for this long after one (cleared by `droverctl ack`).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Whether the cluster fails over on its own when the active site is down.
    pub auto_failover: bool,
    /// Whether a failover commits on its own or stops at `pending_commit`.
    pub commit: CommitMode,
    /// How long a planned switchover waits, after the old site's deactivate runbook, for the
    /// lag probe to report 0 before it gives up and returns the service to the old site.
    #[serde(with = "humantime_serde", default = "default_catch_up_timeout")]
    pub catch_up_timeout: Duration,
    /// How often, after a failover or switchover committed, the effect of each of its traffic
    /// steps (`dns`, `haproxy`) is read back to find drift (a reload, an edit by hand).
    #[serde(with = "humantime_serde", default = "default_reconcile_every")]
    pub reconcile_every: Duration,
    /// Whether a traffic step found drifted is run again (at the current epoch), or only
    /// reported.
    #[serde(default = "default_repair")]
    pub repair: bool,
}

/// Default [`Policy::reconcile_every`]: 30 seconds.
pub const DEFAULT_RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Shortest [`Policy::reconcile_every`]: 1 second.
pub const MIN_RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// Longest [`Policy::reconcile_every`]: 24 hours.
pub const MAX_RECONCILE_EVERY: Duration = Duration::from_secs(24 * 3600);

fn default_reconcile_every() -> Duration {
    DEFAULT_RECONCILE_EVERY
}

fn default_repair() -> bool {
    true
}

/// Default [`Policy::catch_up_timeout`]: 5 minutes.
pub const DEFAULT_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Longest [`Policy::catch_up_timeout`]: 24 hours.
pub const MAX_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

fn default_catch_up_timeout() -> Duration {
    DEFAULT_CATCH_UP_TIMEOUT
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            down_after: Duration::from_secs(3),
            up_after: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(8),
            max_clock_drift: 0.01,
            self_fence_grace: Duration::from_secs(3),
            cooldown: Duration::from_secs(30 * 60),
            auto_failover: true,
            commit: CommitMode::Auto,
            catch_up_timeout: DEFAULT_CATCH_UP_TIMEOUT,
            reconcile_every: DEFAULT_RECONCILE_EVERY,
            repair: true,
        }
    }
}

/// A service's overrides of the cluster [`Policy`]; `None` keeps the cluster value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyOverride {
    /// Overrides [`Policy::down_after`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub down_after: Option<Duration>,
    /// Overrides [`Policy::up_after`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub up_after: Option<Duration>,
    /// Overrides [`Policy::lease_ttl`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<Duration>,
    /// Overrides [`Policy::max_clock_drift`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_clock_drift: Option<f64>,
    /// Overrides [`Policy::self_fence_grace`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub self_fence_grace: Option<Duration>,
    /// Overrides [`Policy::cooldown`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Overrides [`Policy::auto_failover`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_failover: Option<bool>,
    /// Overrides [`Policy::commit`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitMode>,
    /// Overrides [`Policy::catch_up_timeout`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub catch_up_timeout: Option<Duration>,
    /// Overrides [`Policy::reconcile_every`].
    #[serde(with = "humantime_serde::option", default, skip_serializing_if = "Option::is_none")]
    pub reconcile_every: Option<Duration>,
    /// Overrides [`Policy::repair`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<bool>,
}

impl PolicyOverride {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: &Policy) -> Policy {
        Policy {
            down_after: self.down_after.unwrap_or(base.down_after),
            up_after: self.up_after.unwrap_or(base.up_after),
            lease_ttl: self.lease_ttl.unwrap_or(base.lease_ttl),
            max_clock_drift: self.max_clock_drift.unwrap_or(base.max_clock_drift),
            self_fence_grace: self.self_fence_grace.unwrap_or(base.self_fence_grace),
            cooldown: self.cooldown.unwrap_or(base.cooldown),
            auto_failover: self.auto_failover.unwrap_or(base.auto_failover),
            commit: self.commit.unwrap_or(base.commit),
            catch_up_timeout: self.catch_up_timeout.unwrap_or(base.catch_up_timeout),
            reconcile_every: self.reconcile_every.unwrap_or(base.reconcile_every),
            repair: self.repair.unwrap_or(base.repair),
        }
    }
}

/// Whether a failover commits automatically or waits for `droverctl commit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommitMode {
    /// Commit as soon as the new site verifies.
    #[default]
    Auto,
    /// Stop at `pending_commit` until an operator commits or reverts.
    Manual,
}

/// A service (protection group): the unit that fails over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Unique name (`[a-z0-9-]`).
    pub name: String,
    /// The site that is active when the service is first created.
    pub initial_active: String,
    /// Overrides of the cluster policy for this service.
    pub policy: PolicyOverride,
    /// Largest replication lag (in the unit the lag probe reports) at which an unforced
    /// failover may proceed; `None` means no lag gate.
    pub max_lag_on_failover: Option<f64>,
    /// Health checks; every non-witness site has at least one.
    pub checks: Vec<Check>,
    /// Replication lag probe of the standby, if any.
    pub lag: Option<LagProbe>,
    /// Extra readiness checks of a standby (beyond its health checks).
    pub readiness: Vec<Check>,
    /// Runbooks: site -> phase -> steps (never empty lists).
    pub runbooks: BTreeMap<String, BTreeMap<Phase, Vec<Step>>>,
    /// Veto hooks, run in order by the leader once every other gate of an automatic failover
    /// holds; any of them failing vetoes it. Absent from specs committed before hooks existed.
    #[serde(default)]
    pub veto: Vec<VetoHook>,
    /// Consistency checks: fingerprints every non-witness site takes of itself, which must be
    /// equal on the active site and a standby. Absent from specs committed before they existed.
    #[serde(default)]
    pub consistency: Vec<ConsistencyCheck>,
    /// Passive checks: checks that must *fail* on a standby (its application must not serve
    /// while it is standby). Absent from specs committed before they existed.
    #[serde(default)]
    pub passive: Vec<PassiveCheck>,
}

impl Service {
    /// The steps of `site`'s `phase` runbook; empty when there is none.
    pub fn runbook(&self, site: &str, phase: Phase) -> &[Step] {
        self.runbooks.get(site).and_then(|r| r.get(&phase)).map_or(&[], Vec::as_slice)
    }

    /// The health checks of `site`.
    pub fn checks_for<'a>(&'a self, site: &'a str) -> impl Iterator<Item = &'a Check> + 'a {
        self.checks.iter().filter(move |c| c.site == site)
    }
}

/// A veto hook (`[[service.veto]]`): a command the leader runs before it proposes an automatic
/// failover. Exit 0 lets the failover go ahead; a non-zero exit, or not finishing within
/// `timeout`, vetoes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VetoHook {
    /// Program and arguments (no shell); `DROVER_*` variables are added by the executor.
    pub command: Vec<String>,
    /// Limit of one run (0 < timeout <= [`MAX_VETO_TIMEOUT`]); running out of time is a veto.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra environment; values may use `{placeholders}`.
    pub env: BTreeMap<String, String>,
}

impl VetoHook {
    /// The hook as the exec step the actuator runs: on the leader (`run_on = "any"`), one
    /// attempt bounded by the hook's timeout.
    pub fn step(&self) -> Step {
        Step {
            run_on: RunOn::Any,
            timeout: self.timeout,
            retries: 0,
            backoff: Duration::ZERO,
            on_failure: OnFailure::Abort,
            action: StepAction::Exec(ExecStep {
                command: self.command.clone(),
                env: self.env.clone(),
            }),
        }
    }
}

/// A health (or readiness) check of one site, run by every observer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Check {
    /// The site whose health it tells.
    pub site: String,
    /// What to probe.
    #[serde(flatten)]
    pub probe: CheckProbe,
    /// Time between two runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time after which a run counts as failed (< `interval`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckProbe {
    /// An HTTP(S) GET that must answer `expect_status` (and contain `body_contains`).
    Http {
        /// `http://` or `https://` URL.
        url: String,
        /// Status that means healthy.
        expect_status: u16,
        /// Text the body must contain, if set.
        body_contains: Option<String>,
    },
    /// A TCP connect to `host:port`.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// A command that must exit 0.
    Exec {
        /// Program and arguments (no shell).
        command: Vec<String>,
    },
}

/// Longest fingerprint a consistency check may report, in bytes (after trimming): a hash or a
/// version string, not a whole file.
pub const MAX_FINGERPRINT_BYTES: usize = 256;

/// A consistency check (`[[service.consistency]]`): every node of every non-witness site runs
/// it against its own site and reports the fingerprint it prints (a hash of a configuration
/// directory, a schema version). A standby whose fingerprint differs from the active site's is
/// not ready.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConsistencyCheck {
    /// Unique among the service's consistency checks (`[a-z0-9-]`); names it in status,
    /// alerts and metrics.
    pub name: String,
    /// How the fingerprint is obtained.
    #[serde(flatten)]
    pub source: FingerprintSource,
    /// Time between two runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time after which a run counts as failed (< `interval`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Whether a difference (or an unknown fingerprint) blocks an unforced failover to the
    /// standby; `false` only shows it.
    pub gate: bool,
}

/// How a consistency check obtains its fingerprint: at most [`MAX_FINGERPRINT_BYTES`] bytes
/// of text, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FingerprintSource {
    /// A command that must exit 0; its stdout is the fingerprint. It runs with
    /// `DROVER_SERVICE` and `DROVER_SITE` (the site of the node running it) set.
    Exec {
        /// Program and arguments (no shell).
        command: Vec<String>,
    },
    /// An HTTP GET that must answer 2xx; its body is the fingerprint.
    Http {
        /// `http://` or `https://` URL.
        url: String,
    },
}

/// A passive check (`[[service.passive]]`): a health check of `site` that must fail while
/// `site` is a standby. Every observer runs it, like a health check. When it passes, the
/// standby is serving: a possible split brain, alerted, and (with `gate`) blocking a failover
/// or switchover to it until an operator acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PassiveCheck {
    /// Unique among the service's passive checks (`[a-z0-9-]`).
    pub name: String,
    /// The check; `site` is the standby it watches.
    pub check: Check,
    /// Whether a passing check blocks failover and switchover to the site (until
    /// acknowledged); the alert is shown either way.
    pub gate: bool,
}

/// The standby's replication lag probe; it reports a number (e.g. seconds behind).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LagProbe {
    /// Where it runs: a site's node, or any node.
    pub run_on: RunOn,
    /// How the number is obtained.
    #[serde(flatten)]
    pub source: LagSource,
    /// Time between two runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Time after which a run counts as failed (< `interval`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// How a lag probe obtains its number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LagSource {
    /// A command that prints the lag on stdout.
    Exec {
        /// Program and arguments (no shell).
        command: Vec<String>,
    },
    /// An HTTP GET whose body is the lag.
    Http {
        /// `http://` or `https://` URL.
        url: String,
    },
}

/// Where a step or probe runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RunOn {
    /// Any controller node (normally the leader).
    Any,
    /// A node of the named site.
    Site(String),
}

impl From<String> for RunOn {
    fn from(s: String) -> Self {
        if s == RUN_ON_ANY {
            RunOn::Any
        } else {
            RunOn::Site(s)
        }
    }
}

impl From<RunOn> for String {
    fn from(r: RunOn) -> Self {
        match r {
            RunOn::Any => RUN_ON_ANY.to_string(),
            RunOn::Site(s) => s,
        }
    }
}

impl fmt::Display for RunOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOn::Any => f.write_str(RUN_ON_ANY),
            RunOn::Site(s) => f.write_str(s),
        }
    }
}

/// The runbooks a site may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stop the site for good when failing away from it.
    Fence,
    /// Start the service on the site.
    Activate,
    /// Graceful stop (planned switchover).
    Deactivate,
    /// Run locally by the site's own nodes when they lose the lease (self-fence).
    OnLeaseLost,
    /// Confirm the site serves after activation.
    Verify,
    /// Test failover in isolation.
    Test,
    /// Undo a test failover.
    Cleanup,
    /// Re-establish protection (e.g. reverse replication) after a failover.
    Reprotect,
}

impl Phase {
    /// Every phase, in workflow order.
    pub const ALL: [Phase; 8] = [
        Phase::Fence,
        Phase::Activate,
        Phase::Deactivate,
        Phase::OnLeaseLost,
        Phase::Verify,
        Phase::Test,
        Phase::Cleanup,
        Phase::Reprotect,
    ];

    /// The name used in `cluster.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Fence => "fence",
            Phase::Activate => "activate",
            Phase::Deactivate => "deactivate",
            Phase::OnLeaseLost => "on_lease_lost",
            Phase::Verify => "verify",
            Phase::Test => "test",
            Phase::Cleanup => "cleanup",
            Phase::Reprotect => "reprotect",
        }
    }

    /// Parses a `cluster.toml` phase name.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Where it runs.
    pub run_on: RunOn,
    /// Limit of one attempt (0 < timeout <= 1h).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra attempts after a failed one (<= [`MAX_RETRIES`]).
    pub retries: u32,
    /// Pause between attempts.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// What the workflow does when the last attempt fails.
    pub on_failure: OnFailure,
    /// What the step does.
    #[serde(flatten)]
    pub action: StepAction,
}

impl Step {
    /// Longest time the step can take: every attempt times out, with backoff in between.
    pub fn worst_case(&self) -> Duration {
        self.timeout * (self.retries + 1) + self.backoff * self.retries
    }
}

/// What the workflow does when a step fails for good.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop the workflow; the service goes to a `*_failed` phase.
    #[default]
    Abort,
    /// Record the failure and go on with the next step.
    Continue,
    /// Pause the workflow until an operator resumes, retries or aborts it.
    Pause,
}

/// A step's action, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepAction {
    /// Run a command.
    Exec(ExecStep),
    /// Call a webhook.
    Http(HttpStep),
    /// Sleep.
    Wait(WaitStep),
    /// Wait until a site's health checks pass from a quorum of observers.
    Probe(ProbeStep),
    /// Run a Pacemaker fence agent.
    FenceAgent(FenceAgentStep),
    /// RFC 2136 dynamic DNS update.
    Dns(DnsStep),
    /// HAProxy runtime API changes.
    Haproxy(HaproxyStep),
}

impl StepAction {
    /// The `kind` name used in `cluster.toml`.
    pub fn kind(&self) -> &'static str {
        match self {
            StepAction::Exec(_) => "exec",
            StepAction::Http(_) => "http",
            StepAction::Wait(_) => "wait",
            StepAction::Probe(_) => "probe",
            StepAction::FenceAgent(_) => "fence_agent",
            StepAction::Dns(_) => "dns",
            StepAction::Haproxy(_) => "haproxy",
        }
    }
}

/// Run a program (no shell); `DROVER_*` variables are added by the executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStep {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment; values may use `{placeholders}`.
    pub env: BTreeMap<String, String>,
}

/// Call a webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpStep {
    /// `http://` or `https://` URL.
    pub url: String,
    /// HTTP method (upper case).
    pub method: String,
    /// Status that means success.
    pub expect_status: u16,
    /// Request body template, if any.
    pub body: Option<String>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
}

/// Sleep for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitStep {
    /// How long.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// Wait until a site's health checks pass from a quorum of observers (bounded by the step
/// timeout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStep {
    /// The site whose checks must pass.
    pub checks: String,
}

/// Run a Pacemaker `fence_*` agent with key=value arguments on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceAgentStep {
    /// Agent program name, `fence_[a-z0-9_]+`.
    pub agent: String,
    /// What to do to the target.
    pub action: FenceAction,
    /// Agent arguments; a key ending in `_file` names an absolute path whose content is passed
    /// (without the suffix) instead, so secrets stay out of the spec.
    pub params: BTreeMap<String, String>,
}

/// A fence agent action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceAction {
    /// Power off.
    Off,
    /// Power on.
    On,
    /// Power cycle.
    Reboot,
    /// Query only.
    Status,
}

/// An RFC 2136 update of one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStep {
    /// Primary server, `host:port`.
    pub server: String,
    /// Zone, absolute (ends with `.`).
    pub zone: String,
    /// TSIG key, if the server requires one.
    pub tsig: Option<Tsig>,
    /// Records to set (each replaces the existing RRset of its name and type).
    pub records: Vec<DnsRecord>,
    /// Transport.
    pub protocol: DnsProtocol,
    /// More servers of the zone (`host:port`, e.g. its secondaries) that must answer the new
    /// records and epoch before the step succeeds; the updated `server` always must. Queried
    /// without TSIG; at most [`MAX_DNS_VERIFY_SERVERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_servers: Vec<String>,
}

/// Most `verify_servers` a `dns` step may list.
pub const MAX_DNS_VERIFY_SERVERS: usize = 16;

/// A TSIG key reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tsig {
    /// Key name.
    pub name: String,
    /// HMAC algorithm, e.g. `hmac-sha256`.
    pub algorithm: String,
    /// Absolute path of the file holding the base64 secret.
    pub secret_file: String,
}

/// One DNS record to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Absolute owner name inside the zone.
    pub name: String,
    /// Record type.
    #[serde(rename = "type")]
    pub rtype: DnsRecordType,
    /// TTL in seconds (<= [`MAX_DNS_TTL_SECS`]).
    pub ttl_secs: u32,
    /// Record data: an IPv4 address, IPv6 address or absolute name by type.
    pub value: String,
}

/// DNS record types drover can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsRecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    #[allow(clippy::upper_case_acronyms)]
    AAAA,
    /// Alias.
    #[allow(clippy::upper_case_acronyms)]
    CNAME,
}

/// DNS update transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsProtocol {
    /// TCP (default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// HAProxy runtime API changes through one socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxyStep {
    /// Absolute path of a UNIX socket, or `host:port`.
    pub socket: String,
    /// Changes, applied in order.
    pub set: Vec<HaproxySet>,
}

/// One HAProxy server change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxySet {
    /// `backend/server`.
    pub server: String,
    /// New administrative state.
    pub state: HaproxyState,
    /// New weight (0..=256), if set.
    pub weight: Option<u16>,
}

/// HAProxy server administrative state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaproxyState {
    /// Takes traffic.
    Ready,
    /// Finishes existing connections, takes no new ones.
    Drain,
    /// Out of service.
    Maint,
}

impl ClusterSpec {
    /// The policy of `service`: the cluster policy with the service's overrides applied;
    /// `None` if there is no such service.
    pub fn policy_for(&self, service: &str) -> Option<Policy> {
        self.service(service).map(|s| s.policy.apply(&self.policy))
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The site named `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// Names of the sites that can be active (every site but the witness), in spec order.
    pub fn active_capable_sites(&self) -> impl Iterator<Item = &str> {
        self.sites.iter().filter(|s| !s.witness).map(|s| s.name.as_str())
    }

    /// The witness site's name, if there is one.
    pub fn witness_site(&self) -> Option<&str> {
        self.sites.iter().find(|s| s.witness).map(|s| s.name.as_str())
    }

    /// The `fence_agent` steps that fence `site`, in spec order: per service, those of the
    /// site's `fence` runbook, then of its `on_lease_lost` runbook. What `droverctl fence test`
    /// runs (with action `status`).
    pub fn fence_agent_steps(&self, site: &str) -> Vec<FenceStepRef<'_>> {
        let mut found = Vec::new();
        for svc in &self.services {
            for phase in [Phase::Fence, Phase::OnLeaseLost] {
                for (index, step) in svc.runbook(site, phase).iter().enumerate() {
                    if let StepAction::FenceAgent(agent) = &step.action {
                        found.push(FenceStepRef { service: &svc.name, phase, index, step, agent });
                    }
                }
            }
        }
        found
    }

    /// Whether the spec allows an *automatic* failover of `service` from `from` to `to`:
    /// automation is on, `from` can be fenced (a `fence` or `on_lease_lost` runbook) and `to`
    /// has an `activate` runbook. Validation guarantees this away from `initial_active`; after
    /// roles swapped, the decision engine must ask again (e.g. the DR site may have no fencing).
    pub fn auto_failover_allowed(&self, service: &str, from: &str, to: &str) -> bool {
        let (Some(svc), Some(policy)) = (self.service(service), self.policy_for(service)) else {
            return false;
        };
        let capable = |s: &str| self.site(s).is_some_and(|s| !s.witness);
        policy.auto_failover
            && from != to
            && capable(from)
            && capable(to)
            && (!svc.runbook(from, Phase::Fence).is_empty()
                || !svc.runbook(from, Phase::OnLeaseLost).is_empty())
            && !svc.runbook(to, Phase::Activate).is_empty()
    }
}

/// Where a `fence_agent` step sits in the spec (see [`ClusterSpec::fence_agent_steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceStepRef<'a> {
    /// The service whose runbook holds it.
    pub service: &'a str,
    /// [`Phase::Fence`] or [`Phase::OnLeaseLost`].
    pub phase: Phase,
    /// 0-based position in that runbook (other kinds of steps counted too).
    pub index: usize,
    /// The step.
    pub step: &'a Step,
    /// Its fence agent action.
    pub agent: &'a FenceAgentStep,
}

impl FenceAgentStep {
    /// What the agent acts on, for display: its `plug`, `port` or `ip` parameter as
    /// `key=value`, the first present; empty when none is.
    pub fn target(&self) -> String {
        ["plug", "port", "ip"]
            .iter()
            .find_map(|k| self.params.get(*k).map(|v| format!("{k}={v}")))
            .unwrap_or_default()
    }
}

/// One problem in a cluster spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Key path, e.g. `service[0].runbook.dr.activate[1].timeout`; empty when unknown.
    pub key: String,
    /// 1-based line and column, for syntax and shape errors.
    pub line_col: Option<(usize, usize)>,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, col)) = self.line_col {
            write!(f, "line {line}, column {col}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

/// Every problem found in a cluster spec (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors {
    /// Where the spec came from (a file name, or e.g. `<stdin>`).
    pub source: String,
    /// The problems, in file order as far as possible.
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "cluster spec {} has {n} error{}:", self.source, if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Parses and validates cluster spec `text`; `source` names it in errors (e.g. the file name).
///
/// A TOML syntax or shape error (unknown key, wrong type, missing key) is reported alone, with
/// its line, column and key path; otherwise every rule is checked and every broken one listed.
pub fn parse(text: &str, source: &str) -> Result<ClusterSpec, SpecErrors> {
    let file: raw::File = toml::from_str(text).map_err(|err| {
        let pos = err.span().map(|s| s.start);
        SpecErrors {
            source: source.to_string(),
            errors: vec![SpecError {
                key: pos.and_then(|p| key_path_at(text, p)).unwrap_or_default(),
                line_col: pos.map(|p| crate::config::line_col(text, p)),
                reason: crate::config::one_line(err.message()),
            }],
        }
    })?;
    validate::validate(&file).map_err(|errors| SpecErrors { source: source.to_string(), errors })
}

/// Reads and validates the cluster spec at `path`; returns it with the raw text (kept so
/// `droverctl` can show or store exactly what the operator wrote).
pub fn load(path: &Path) -> Result<(ClusterSpec, String), SpecErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| SpecErrors {
        source: source.clone(),
        errors: vec![SpecError {
            key: String::new(),
            line_col: None,
            reason: format!("cannot read the file: {err}; pass the spec with -f <file>"),
        }],
    })?;
    let spec = parse(&text, &source)?;
    Ok((spec, text))
}

/// The key path (`service[0].check[1].colour`) of the innermost key or value at byte `pos`,
/// if the text is valid TOML and something there has a span.
fn key_path_at(text: &str, pos: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};

    fn in_span(span: std::ops::Range<usize>, pos: usize) -> bool {
        span.start <= pos && pos < span.end.max(span.start + 1)
    }

    fn walk_value(v: &toml::Spanned<DeValue<'_>>, path: &str, pos: usize) -> Option<String> {
        match v.get_ref() {
            DeValue::Table(t) => walk_table(t, path, pos),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
                let p = format!("{path}[{i}]");
                walk_value(item, &p, pos).or_else(|| in_span(item.span(), pos).then_some(p))
            }),
            _ => None,
        }
    }

    fn walk_table(t: &DeTable<'_>, path: &str, pos: usize) -> Option<String> {
        t.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{path}.{}", k.get_ref())
            };
            if in_span(k.span(), pos) {
                return Some(p);
            }
            walk_value(v, &p, pos).or_else(|| {
                (!v.get_ref().is_table() && !v.get_ref().is_array() && in_span(v.span(), pos))
                    .then_some(p)
            })
        })
    }

    let doc = DeTable::parse(text).ok()?;
    walk_table(doc.get_ref(), "", pos)
}

/// Serde for `Duration` as a humantime string (`"3s"`, `"1s 500ms"`); exact both ways.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.collect_str(&humantime::format_duration(*d)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
