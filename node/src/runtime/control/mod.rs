//! The failover driver: wires the pure decision engine to Raft, probes, actuators and peers.
//!
//! ```text
//!  every node:   Prober ──reports──▶ reporter loop ──gRPC ReportProbes──▶ leader
//!  leader:       controller loop: Engine::tick(observation) ──▶ Propose  ──▶ Raft client_write
//!                                                         ├──▶ RunStep ──▶ local actuator, or
//!                                                         │                gRPC RunStep on a node of the step's site
//!                                                         └──▶ RunVeto ──▶ hooks in order on the local actuator
//!                                                                          ──▶ Event::VetoResult ──▶ Engine::veto_result
//!                reconciler: Reconciler::tick(observation) ──▶ Check ──▶ local read-back, or gRPC
//!                                                         │             ReconcileStep on a node of the step's site
//!                                                         │     ──▶ Event::CheckResult ──▶ Reconciler::check_result
//!                                                         └──▶ Propose(Drift) ──▶ Raft client_write
//!  active site:  lease loop: RenewLeases, one per node and round for all its leases (one
//!                linearizable read on the leader), measured from the send; not renewed for
//!                lease_ttl, or revoked ──▶ run on_lease_lost locally
//! ```
//!
//! The engine decides; this module only carries out its commands and feeds it what happened.
//! Every channel is bounded and every remote call has a deadline.
//!
//! - `report.rs`   probe reports (and finished self-fences) to the leader
//! - `leader.rs`   the leader's loop: engine ticks, proposals, step dispatch, vetoes
//! - `executor.rs` running a step on a node of its site (epoch, workflow and attempt checks),
//!   and reading a committed traffic step back for drift (and running it again)
//! - `lease.rs`    the holder side: renewals, relays, expiry, self-fence; the leader's check
//! - `service.rs`  the Control gRPC service: hands each call to the parts above

mod executor;
mod leader;
mod lease;
mod report;
mod service;

pub(crate) use report::parse_verdict;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1 as pb;
use drover_proto::v1::control_client::ControlClient;
use drover_proto::v1::control_server::ControlServer;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::info;

use crate::actuate::Actuator;
use crate::api::NodeHandle;
use crate::consensus::channel::{endpoint, Dialer, PeerChannel};
use crate::consensus::store;
use crate::consensus::types::{Member, NodeId, Role};
use crate::decide::MonoTime;
use crate::probe::{ProbeLimits, ProbeSource, Prober};
use crate::spec::ClusterSpec;
use crate::tls::TlsMaterial;

pub use service::ControlService;

/// How often the leader's engine ticks.
const TICK: Duration = Duration::from_millis(100);
/// How often a node sends its probe results to the leader.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// Deadline of a report or lease RPC.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest an executor waits for its own state to reach a step's epoch.
const EPOCH_CATCH_UP: Duration = Duration::from_secs(3);
/// Period of the lease loop; expiry is checked one period early.
const LEASE_TICK: Duration = Duration::from_millis(50);
/// Largest Control request decoded, in bytes (a probe report of every service of the largest
/// spec fits many times over).
const MAX_CONTROL_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Capacity of the channels into the controller loop.
const CHANNEL_CAPACITY: usize = 1024;

/// What the failover driver needs; shared by its loops and its gRPC service.
#[derive(Clone)]
pub struct ControlCtx {
    /// The node.
    pub node: NodeHandle,
    /// This node's site.
    pub site: String,
    /// Controller or witness.
    pub role: Role,
    /// Runs steps.
    pub actuator: Arc<dyn Actuator>,
    /// gRPC channels to peers.
    pub peers: PeerChannels,
    /// The clock lease and detection arithmetic is done in.
    pub clock: LeaseClock,
    /// Into the controller loop.
    events: mpsc::Sender<Event>,
    /// Steps this node is running for the leader right now.
    steps_running: Arc<Mutex<HashSet<StepKey>>>,
    /// The leader's linearizable reads for lease confirmations, shared.
    reads: Arc<lease::ReadBarrier>,
    /// Per service, the epoch at which this node's on_lease_lost runbook last finished: the
    /// reporter tells the leader, which reactivates the site if it is still the active one.
    fence_done: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Where this node's self-fences are recorded, so they outlive a restart.
    fence_marks: store::FenceMarks,
}

/// This node's self-fences as its store kept them: where to record new ones, and the ones made
/// before it restarted (their on_lease_lost is over: it finished or the process died in it).
pub struct FenceRecord {
    /// The store's record.
    pub marks: store::FenceMarks,
    /// The marks read at startup.
    pub done: BTreeMap<String, u64>,
}

/// A step run: service, workflow id, step index, attempt.
type StepKey = (String, u64, u64, u32);

/// Something that happened, for the controller loop.
enum Event {
    Reports {
        observer: NodeId,
        reports: Vec<pb::ProbeReport>,
        /// Services the observer self-fenced, with the epoch.
        fenced: Vec<pb::SelfFenced>,
        received: Instant,
        /// Passed on by another member for an observer that could not reach the leader.
        relayed: bool,
    },
    StepResult {
        service: String,
        workflow_id: u64,
        step: usize,
        attempt: u32,
        result: Result<String, String>,
        /// The executor could not run the step (unreachable, died, refused): costs no attempt.
        not_run: bool,
        /// The step ran and the world refused it (`StepError::Refused`): no retry.
        refused: bool,
    },
    ProposalDone {
        /// The leadership term (engine) that proposed; a result for an earlier one is dropped.
        term: u64,
        service: String,
    },
    VetoResult {
        /// The leadership term (engine) that asked for the run; a result for an earlier one is
        /// dropped.
        term: u64,
        service: String,
        result: Result<(), String>,
    },
    /// A drift check (or repair) asked for by the reconciler of leadership term `term` ended.
    CheckResult {
        term: u64,
        service: String,
        workflow_id: u64,
        step: usize,
        outcome: crate::decide::CheckOutcome,
    },
    /// A `Drift` entry the reconciler of term `term` proposed was applied or refused.
    DriftProposalDone { term: u64, service: String },
}

/// Cached gRPC channels to members (each redialed when its member stops answering on it).
#[derive(Clone)]
pub struct PeerChannels {
    tls: Option<Arc<TlsMaterial>>,
    dialer: Dialer,
    cache: Arc<Mutex<HashMap<NodeId, (String, PeerChannel)>>>,
}

impl PeerChannels {
    /// Channels over mutual TLS (None: `--insecure-dev`), dialed by `dialer`.
    pub fn new(tls: Option<Arc<TlsMaterial>>, dialer: Dialer) -> Self {
        PeerChannels { tls, dialer, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A Control client for member `id` (its channel is created on first use, then reused).
    pub(crate) fn control(
        &self,
        id: NodeId,
        member: &Member,
    ) -> Result<ControlClient<PeerChannel>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, ch)) = cache.get(&id) {
            if *addr == member.address {
                return Ok(ControlClient::new(ch.clone()));
            }
        }
        let ep = endpoint(&member.address, &member.name, self.tls.as_deref())
            .map_err(|e| format!("bad address {} for {}: {e}", member.address, member.name))?;
        let ch = PeerChannel::new(ep, self.dialer.clone());
        cache.insert(id, (member.address.clone(), ch.clone()));
        Ok(ControlClient::new(ch))
    }
}

/// A node's monotonic clock for the engine and the lease loop: time since the driver started,
/// running at the node's clock rate. A real node runs at rate 1 (its clock's drift is what
/// `max_clock_drift` bounds); the simulator skews each node's rate within that bound.
#[derive(Debug, Clone, Copy)]
pub struct LeaseClock {
    origin: Instant,
    /// Rate error in parts per million: +1000 runs 0.1% fast.
    rate_ppm: i64,
}

impl LeaseClock {
    /// A clock starting now, `rate_ppm` parts per million fast (negative: slow).
    pub fn new(rate_ppm: i64) -> LeaseClock {
        LeaseClock { origin: Instant::now(), rate_ppm: rate_ppm.clamp(-999_999, 999_999) }
    }

    /// `at` on this clock.
    pub fn at(&self, at: Instant) -> MonoTime {
        let ms = at.saturating_duration_since(self.origin).as_millis() as i128;
        let skewed = ms * (1_000_000 + self.rate_ppm as i128) / 1_000_000;
        MonoTime::from_ms(skewed.max(0) as u64)
    }

    /// Now on this clock.
    pub fn now(&self) -> MonoTime {
        self.at(Instant::now())
    }
}

/// Where a node's probe results come from.
pub enum ProbeSupply {
    /// Run the spec's checks from this node ([`Prober`]).
    Real(ProbeLimits),
    /// Take them from elsewhere (the simulator).
    Given(Arc<dyn ProbeSource>),
}

/// What the driver acts and observes through; real on a node, simulated in `drover-sim`.
pub struct DriverParts {
    /// Runs steps.
    pub actuator: Arc<dyn Actuator>,
    /// Probe results.
    pub probes: ProbeSupply,
    /// How peers are dialed.
    pub dialer: Dialer,
    /// The clock lease arithmetic runs on.
    pub clock: LeaseClock,
    /// How the durability probe writes (see `runtime::durability`).
    pub disk_writes: crate::runtime::durability::DiskWrites,
}

fn unix_now_ms() -> i64 {
    crate::pb::unix_now_ms()
}

/// Starts the driver's loops; they stop when `stop` turns true. Returns the gRPC service.
pub fn start(
    node: NodeHandle,
    site: String,
    role: Role,
    parts: DriverParts,
    fences: FenceRecord,
    tls: Option<Arc<TlsMaterial>>,
    stop: watch::Receiver<bool>,
) -> ControlServer<ControlService> {
    let (events_tx, events_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let ctx = ControlCtx {
        site,
        role,
        actuator: parts.actuator,
        peers: PeerChannels::new(tls, parts.dialer),
        clock: parts.clock,
        events: events_tx,
        steps_running: Default::default(),
        reads: Arc::default(),
        fence_done: Arc::new(Mutex::new(fences.done)),
        fence_marks: fences.marks,
        node,
    };
    let probes: Arc<dyn ProbeSource> = match parts.probes {
        ProbeSupply::Real(limits) => {
            let (spec_tx, spec_rx) = watch::channel(None);
            tokio::spawn(spec_watch(ctx.clone(), spec_tx, stop.clone()));
            Arc::new(Prober::spawn(ctx.site.clone(), spec_rx, limits))
        }
        ProbeSupply::Given(source) => source,
    };
    tokio::spawn(report::reporter_loop(ctx.clone(), probes, stop.clone()));
    tokio::spawn(leader::controller_loop(ctx.clone(), events_rx, stop.clone()));
    if role == Role::Controller {
        tokio::spawn(lease::lease_loop(ctx.clone(), stop));
    }
    ControlServer::new(ControlService { ctx }).max_decoding_message_size(MAX_CONTROL_REQUEST_BYTES)
}

/// Publishes the applied spec to the prober whenever its version changes.
async fn spec_watch(
    ctx: ControlCtx,
    tx: watch::Sender<Option<Arc<ClusterSpec>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut version = 0;
    loop {
        let current =
            ctx.node.state.read(|s| s.control.spec.as_ref().map(|v| (v.version, v.spec.clone())));
        if let Some((v, spec)) = current {
            if v != version {
                version = v;
                info!(version, "cluster spec in force; probing its checks");
                let _ = tx.send(Some(Arc::new(spec)));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn leader_of(node: &NodeHandle) -> Option<(NodeId, Option<Member>)> {
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    m.current_leader.map(|id| (id, m.membership_config.membership().get_node(&id).cloned()))
}
