//! The checkers: DESIGN.md 7's invariants, evaluated against the true global state (every
//! node's applied state and lease belief, the world's applications and ledger) as the run
//! goes.
//!
//! - S1 at most one site serves: a site serves while its application runs, has power, and a
//!   live node of the site believes it holds the lease (by its own clock, not self-fenced).
//! - S2 an activation happens only while the site it replaces does not serve (fenced, or its
//!   lease expired from its own point of view).
//! - S3 epochs only grow: on every node, and in what actuators did (self-fences aside).
//! - S4 nothing committed is lost: every node that applied log index i applied the same entry
//!   (term) and reached the same state there.
//! - S5 no failover while the active site was healthy from a quorum's view for `down_after`.
//!   Only what drover starts by itself counts: an operator's switchover (and its way back, which
//!   keeps its epoch) or manual failover moves a healthy site on purpose.
//! - L1 once the active site is lost with a majority alive and connected, traffic is on the
//!   standby within the bound of `spec::recovery_bound`.
//! - L2 after the quiet period's healing, the cluster converges: one leader, all nodes at the
//!   same applied index.
//!
//! The availability checkers (DESIGN.md 7, issue 9) judge what drover does to a healthy site.
//! They work on the *true* connectivity the scenario set (cuts, stalls, crashes, full disks),
//! and count a member only while it is **sound**: its software runs, it is not stalled, its
//! disk is not full, its site has power. A member is *connected to a majority* while it is
//! sound and linked both ways to sound members making a majority of the voters with it. Runs
//! with random message loss are exempt (the checkers cannot see which links loss broke).
//!
//! - A1 drover never stops a healthy active site by itself. (a) A self-fence is wrong when the
//!   cluster still grants the site the lease at that epoch, the site's application is healthy
//!   and powered, and the fencing node had been connected to a majority for the renewal bound
//!   [`Bounds::renewal`] without a break: with a majority around it, a leader is elected
//!   within the election bound and a renewal gets through within two RPC deadlines; and some
//!   leader was followed by a majority for [`RENEWAL_CHANCE`] in the last two thirds of the
//!   lease (the lease outlasts one leader change: two leaders lost in a row, the second before
//!   anyone could renew with it, may legitimately cost the lease). (b) A
//!   failover is wrong when, for `down_after` + 1 s before it started, prod's application was
//!   healthy and powered (whether or not drover had stopped it), reachable from a majority of
//!   the voters' positions, a prod node was connected to a majority, and no self-fence at that
//!   epoch was judged legitimate by (a). An operator's workflow is no such failover (S5).
//! - A2 a connected majority has a leader: (a) whenever some majority of sound members is
//!   connected pairwise, a leader followed by a majority (sound members linked both ways to it
//!   that name it leader in its term; a leader that stood back for lack of a quorum leads
//!   nobody) appears within [`Bounds::election`]; (b) no ping-pong: a leader followed by a
//!   majority that is still sound and connected to a majority is never replaced, and never
//!   stands back while it has been connected to a majority for the leader lease plus 1.5 s
//!   (once it stood back after losing its majority, another may take its place).
//! - A3 a service always has a serving site (an application running, with power) or a
//!   running workflow (a failover, a reactivation, a switchover in any of its stages). Nobody serving and no workflow running (none, failed or
//!   paused) for [`Bounds::unserved`] while a connected majority exists and dr has power is a
//!   violation: a workflow that cannot finish must not leave the service dark.
//!
//! The drift checkers judge the reconciler (`decide::reconcile`) against the world's DNS zone:
//!
//! - D1 drift repaired within bound: once the workflow of the service's current epoch has
//!   committed with its `dns` step done, the zone points at that workflow's target site with
//!   that epoch again within [`Bounds::drift`] of any change (a reload restoring an old zone,
//!   an update the server dropped). The clock restarts while nothing can repair it: the
//!   server refuses or drops updates, no leader is followed by a majority (which includes
//!   runs with random message loss, as for A2), or the service is paused. A zone owned by a
//!   newer epoch is not drift (the reconciler never repairs over it).
//! - D2 no DNS update with an older epoch: no update the server accepts (a step's or a
//!   repair's, applied or dropped) carries an epoch older than the newest one it ever
//!   accepted. A reload restores an older epoch at the server, so its own prerequisite no
//!   longer stops such a write: only the writer's epoch does.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use drover::api::NodeHandle;
use drover::consensus::state::control::{StepStatus, WorkflowKind, WorkflowState};
use openraft::ServerState;

use crate::world::{Topology, World, DR, PROD, SERVICE};

/// The bounds of the availability checkers, derived from the Raft timings and the policy.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// A2: longest a connected majority may go without a leader: one election timeout to
    /// notice the loss, then up to two more election rounds (one split vote), plus 1 s of
    /// message and tick delays: `3 x election_timeout_max + 1 s` (10 s with the defaults).
    pub election: Duration,
    /// A1: how long a node connected to a majority may go without a confirmed renewal and
    /// still self-fence legitimately: an election, then a renewal and its retry, each within
    /// the node's 2 s RPC deadline: `election + 2 x 2 s`.
    pub renewal: Duration,
    /// A3: how long a service may have neither a serving site nor a running workflow while a
    /// majority is connected: detection (`down_after` + 2 s of reports and ticks), an
    /// election, and the renewal bound for the self-fence that may have started it.
    pub unserved: Duration,
    /// The policy's `down_after`.
    pub down_after: Duration,
    /// The Raft timing: the longest a follower waits for a leader before campaigning.
    pub election_timeout_max: Duration,
    /// The policy's `lease_ttl`.
    pub lease_ttl: Duration,
    /// D1: longest the zone may differ from what the committed workflow set while a leader
    /// is followed and the server takes updates: `2 x reconcile_every` (the next check is due
    /// at most one interval after the change, one more if a check in flight read the zone
    /// just before it), `3 x` the `dns` step's timeout (the check's read-back; the repair's
    /// read-back again, dispatched once the drift is committed; the update), the election
    /// timeout (a new leader's reconciler starts with the term, after its first commit), and
    /// 2 s for the drift entry's commit, ticks and round trips.
    pub drift: Duration,
}

/// A1: a leader followed by a majority for less than this gives a holder no dependable chance
/// to renew: a retry round (250 ms), the new leader's first commit and its read barrier (a
/// heartbeat round trip each, 250 ms), and the renewal's own round trip, with slack.
pub const RENEWAL_CHANCE: Duration = Duration::from_secs(1);

impl Bounds {
    /// The bounds for a cluster with `election_timeout_max` and a policy with `down_after`
    /// and `lease_ttl`.
    pub fn new(
        election_timeout_max: Duration,
        down_after: Duration,
        lease_ttl: Duration,
    ) -> Bounds {
        let election = election_timeout_max * 3 + Duration::from_secs(1);
        let renewal = election + Duration::from_secs(4);
        let unserved = down_after + Duration::from_secs(2) + election + renewal;
        Bounds {
            election,
            renewal,
            unserved,
            down_after,
            election_timeout_max,
            lease_ttl,
            drift: Duration::MAX,
        }
    }

    /// These bounds with D1's for a policy with `reconcile_every` and `dns` steps of
    /// `dns_timeout`.
    pub fn with_drift(self, reconcile_every: Duration, dns_timeout: Duration) -> Bounds {
        let drift = reconcile_every * 2
            + dns_timeout * 3
            + self.election_timeout_max
            + Duration::from_secs(2);
        Bounds { drift, ..self }
    }
}

/// Every name a [`Violation`] may carry.
pub const INVARIANTS: &[&str] =
    &["S1", "S2", "S3", "S4", "S5", "A1", "A2", "A3", "L1", "L2", "D1", "D2", "PANIC"];

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// One of [`INVARIANTS`].
    pub invariant: &'static str,
    /// Simulated time.
    pub at: Duration,
    /// What was seen.
    pub detail: String,
}

/// One node as the checker sees it.
struct Seen {
    applied: Option<(u64, u64)>,
    /// Hash of the applied state, computed only when the applied index moved since the last
    /// look (serialising the state every 10 ms for every node would dominate the run).
    state_hash: Option<u64>,
    epoch: u64,
    phase: String,
    believes_lease: Option<u64>,
    server_state: ServerState,
    leader: Option<u64>,
    term: u64,
    fenced: Option<u64>,
    workflow_running: bool,
    lease: Option<(String, u64)>,
    /// The service is paused (repairs are off).
    paused: bool,
    /// The service's workflow (in progress, or the last one).
    workflow: Option<SeenWorkflow>,
}

/// What the checkers need of a workflow.
#[derive(Debug, Clone, PartialEq)]
struct SeenWorkflow {
    id: u64,
    kind: WorkflowKind,
    /// Started by the engine by itself (a failover, a reactivation), not by an operator.
    automatic: bool,
    epoch: u64,
    state: WorkflowState,
    /// The site it moves the service to.
    to: String,
    /// One of its `dns` steps succeeded.
    dns_done: bool,
}

fn look(node: &NodeHandle, last_index: Option<u64>) -> Seen {
    let (applied, state_hash, epoch, phase, workflow_running, lease, paused, workflow) =
        node.state.read_applied(|applied, cluster| {
            let svc = cluster.control.services.get(SERVICE);
            let moved = applied.map(|l| l.index) != last_index;
            let state_hash = moved.then(|| {
                let mut h = std::hash::DefaultHasher::new();
                serde_json::to_string(&cluster.control.services).unwrap_or_default().hash(&mut h);
                cluster.last_seq.hash(&mut h);
                h.finish()
            });
            (
                applied.map(|l| (l.index, l.leader_id.term)),
                state_hash,
                svc.map_or(0, |s| s.epoch),
                svc.map_or(String::new(), |s| s.phase.as_str().to_string()),
                svc.and_then(|s| s.active_workflow())
                    .is_some_and(|w| w.state == WorkflowState::Running),
                svc.and_then(|s| s.lease.as_ref()).map(|l| (l.site.clone(), l.epoch)),
                svc.is_some_and(|s| s.paused.is_some()),
                svc.and_then(|s| s.workflow.as_ref()).map(|w| SeenWorkflow {
                    id: w.id,
                    kind: w.kind,
                    automatic: w.automatic,
                    epoch: w.epoch,
                    state: w.state.clone(),
                    to: w.to.clone(),
                    dns_done: w.steps.iter().any(|st| {
                        st.action.as_ref().is_some_and(|a| a.action.kind() == "dns")
                            && matches!(st.status, StepStatus::Succeeded { .. })
                    }),
                }),
            )
        });
    let fenced = node.fenced.lock().ok().and_then(|f| f.get(SERVICE).copied());
    let believes_lease = node.leases.lock().ok().and_then(|l| l.get(SERVICE).copied());
    let metrics = node.raft.metrics();
    let m = metrics.borrow();
    Seen {
        applied,
        state_hash,
        epoch,
        phase,
        believes_lease,
        server_state: m.state,
        leader: m.current_leader,
        term: m.current_term,
        fenced,
        workflow_running,
        lease,
        paused,
        workflow,
    }
}

/// The checkers' memory of the run.
pub struct Checker {
    /// Violations found (the run stops at the first).
    pub violations: Vec<Violation>,
    topology: Arc<Topology>,
    down_after: Duration,
    recovery_bound: Duration,
    loss_at: Option<Duration>,
    quiet_from: Duration,
    /// index -> (term, state hash) of the first node seen at that applied index.
    applied: HashMap<u64, (u64, u64, String)>,
    last_applied: BTreeMap<String, u64>,
    epoch_seen: BTreeMap<String, u64>,
    max_epoch: u64,
    phase_seen: String,
    leader_seen: Option<(u64, u64)>,
    /// Each node's last traced Raft view (state, term, leader, standing back).
    views: BTreeMap<String, (ServerState, u64, Option<u64>, bool)>,
    ledger_checked: usize,
    ledger_epoch: u64,
    /// Since when prod has been continuously healthy from a quorum's view.
    prod_healthy_since: Option<Duration>,
    /// Failovers that committed.
    pub failovers: u32,
    /// Operators' switchovers that committed.
    pub switchovers: u32,
    /// Operators' switchovers that gave up and gave the service back to the old site.
    pub rolled_back: u32,
    /// Switchovers counted already, by workflow id.
    switchovers_seen: std::collections::BTreeSet<u64>,
    /// Time from the loss to traffic on dr, once it happened.
    pub recovery: Option<Duration>,
    converged: bool,
    bounds: Bounds,
    /// Per host: since when it has been connected to a majority.
    connected_since: BTreeMap<String, Duration>,
    /// Since when a connected majority has had no leader followed by a majority.
    leaderless_since: Option<Duration>,
    /// The leader followed by a majority at the last look: (term, id, since).
    followed: Option<(u64, u64, Duration)>,
    /// The spans during which one leader was followed by a majority: (term, id, from, until;
    /// None while it lasts), the last two minutes of them.
    led: Vec<(u64, u64, Duration, Option<Duration>)>,
    /// Self-fences seen, (host, epoch).
    fences_seen: std::collections::BTreeSet<(String, u64)>,
    /// Epochs at which a self-fence was judged legitimate.
    legit_fence_epochs: std::collections::BTreeSet<u64>,
    /// Since when prod's application has been healthy by the scenario, powered, reachable
    /// from a majority of positions, with a prod node connected to a majority (A1 b).
    prod_fine_since: Option<Duration>,
    /// Since when nobody serves and no workflow runs, while a majority is connected (A3).
    unserved_since: Option<Duration>,
    /// When a workflow was first seen committed (the plan's `after_commit` faults count from
    /// here).
    pub committed_at: Option<Duration>,
    /// D1: since when the zone has differed from what the committed workflow set, with what
    /// it set: (since, (epoch, site)).
    drift_since: Option<(Duration, (u64, String))>,
    /// D2: DNS writes checked so far, and the newest epoch among them.
    dns_writes_checked: usize,
    dns_newest: (u64, Duration),
}

impl Checker {
    /// A checker for a run whose active site is lost at `loss_at` (if the plan says so).
    pub fn new(
        topology: Topology,
        bounds: Bounds,
        recovery_bound: Duration,
        loss_at: Option<Duration>,
        quiet_from: Duration,
    ) -> Checker {
        let down_after = bounds.down_after;
        Checker {
            violations: Vec::new(),
            topology: Arc::new(topology),
            down_after,
            recovery_bound,
            loss_at,
            quiet_from,
            applied: HashMap::new(),
            last_applied: BTreeMap::new(),
            epoch_seen: BTreeMap::new(),
            max_epoch: 0,
            phase_seen: String::new(),
            leader_seen: None,
            views: BTreeMap::new(),
            ledger_checked: 0,
            ledger_epoch: 0,
            prod_healthy_since: None,
            failovers: 0,
            switchovers: 0,
            rolled_back: 0,
            switchovers_seen: Default::default(),
            recovery: None,
            converged: false,
            bounds,
            connected_since: BTreeMap::new(),
            leaderless_since: None,
            followed: None,
            led: Vec::new(),
            fences_seen: Default::default(),
            legit_fence_epochs: Default::default(),
            prod_fine_since: None,
            unserved_since: None,
            committed_at: None,
            drift_since: None,
            dns_writes_checked: 0,
            dns_newest: (1, Duration::ZERO),
        }
    }

    fn violate(&mut self, world: &mut World, invariant: &'static str, detail: String) {
        world.event("FAIL", &format!("{invariant}: {detail}"));
        self.violations.push(Violation { invariant, at: world.now, detail });
    }

    /// Checks everything against the current state; `nodes` are the running nodes by host.
    pub fn observe(&mut self, world: &mut World, nodes: &BTreeMap<String, NodeHandle>) {
        let now = world.now;
        let seen: BTreeMap<String, Seen> = nodes
            .iter()
            .map(|(h, n)| (h.clone(), look(n, self.last_applied.get(h).copied())))
            .collect();

        // Each node's Raft view as it changes, for the trace.
        for (h, s) in &seen {
            let back = nodes
                .get(h)
                .is_some_and(|n| n.standing_back.load(std::sync::atomic::Ordering::Relaxed));
            let view = (s.server_state, s.term, s.leader, back);
            if self.views.get(h) != Some(&view) {
                self.views.insert(h.clone(), view);
                let line = format!(
                    "{h} {:?} term {} leader {}{}",
                    s.server_state,
                    s.term,
                    s.leader.map_or("-".to_string(), |l| l.to_string()),
                    if back { ", standing back" } else { "" },
                );
                world.trace.event(now, "view", &line);
            }
        }
        // Leadership and phase changes, for the trace.
        let leader = seen
            .values()
            .filter(|s| s.server_state == ServerState::Leader)
            .map(|s| (s.term, s.leader.unwrap_or(0)))
            .max();
        if leader.is_some() && leader != self.leader_seen {
            self.leader_seen = leader;
            if let Some((term, id)) = leader {
                world.trace.event(now, "raft", &format!("node {id} leads in term {term}"));
            }
        }

        for (host, s) in &seen {
            // S3 on every node.
            let before = self.epoch_seen.get(host).copied().unwrap_or(0);
            if s.epoch < before {
                self.violate(
                    world,
                    "S3",
                    format!("{host}'s epoch went from {before} back to {}", s.epoch),
                );
            }
            self.epoch_seen.insert(host.clone(), s.epoch.max(before));
            // S4: the same index means the same entry and the same state everywhere.
            if let (Some((index, term)), Some(state_hash)) = (s.applied, s.state_hash) {
                self.last_applied.insert(host.clone(), index);
                match self.applied.get(&index) {
                    None => {
                        self.applied.insert(index, (term, state_hash, host.clone()));
                    }
                    Some((t, h, first)) if *t != term || *h != state_hash => {
                        let detail = format!(
                            "{host} applied index {index} of term {term}, but {first} applied index {index} of term {t}{}",
                            if *t == term { " with a different resulting state" } else { "" }
                        );
                        self.violate(world, "S4", detail);
                    }
                    Some(_) => {}
                }
            }
        }

        // Workflow starts (S5) and commits, from the most advanced node. An operator's
        // workflow (a switchover, its way back, a manual failover) is no false failover: S5
        // and A1 (b) judge only what drover starts by itself.
        let mut failover_from_epoch = None;
        if let Some(top) = seen.values().max_by_key(|s| (s.epoch, s.applied)) {
            let by_operator = top
                .workflow
                .as_ref()
                .filter(|w| !w.automatic && w.epoch == top.epoch)
                .map(|w| w.kind.as_str());
            if top.epoch > self.max_epoch && self.max_epoch > 0 {
                if let Some(kind) = by_operator {
                    world.trace.event(
                        now,
                        "state",
                        &format!("operator's {kind} started: epoch {}", top.epoch),
                    );
                    self.max_epoch = top.epoch;
                }
            }
            if top.epoch > self.max_epoch {
                if self.max_epoch > 0 {
                    failover_from_epoch = Some(self.max_epoch);
                    world.trace.event(
                        now,
                        "state",
                        &format!("failover started: epoch {}", top.epoch),
                    );
                    if let Some(since) = self.prod_healthy_since {
                        let margin = Duration::from_secs(1);
                        if now.saturating_sub(since) > self.down_after + margin {
                            let detail = format!(
                                "failover to epoch {} started although prod was healthy from a quorum's view for the last {:.1}s (down_after {:?})",
                                top.epoch,
                                now.saturating_sub(since).as_secs_f64(),
                                self.down_after
                            );
                            self.violate(world, "S5", detail);
                        }
                    }
                }
                self.max_epoch = top.epoch;
            }
            if top.phase != self.phase_seen && !top.phase.is_empty() {
                world.trace.event(
                    now,
                    "state",
                    &format!("{SERVICE} is {} (epoch {})", top.phase, top.epoch),
                );
                let kind = top.workflow.as_ref().map(|w| w.kind);
                if top.phase == "failed_over" && kind != Some(WorkflowKind::Switchover) {
                    self.failovers += 1;
                }
                self.phase_seen = top.phase.clone();
            }
            if let Some(w) = top.workflow.as_ref().filter(|w| w.kind == WorkflowKind::Switchover) {
                let ended = match w.state {
                    WorkflowState::Committed => Some(true),
                    WorkflowState::RolledBack { .. } => Some(false),
                    _ => None,
                };
                if let Some(committed) = ended {
                    if self.switchovers_seen.insert(w.id) {
                        if committed {
                            self.switchovers += 1;
                        } else {
                            self.rolled_back += 1;
                        }
                    }
                }
            }
        }

        self.availability(world, nodes, &seen, failover_from_epoch);

        // S5's view: prod healthy, powered, and reachable from a quorum of running nodes.
        let topo = Arc::clone(&self.topology);
        let observers = topo
            .nodes
            .iter()
            .filter(|n| nodes.contains_key(&n.host) && world.app_healthy_from(n, PROD))
            .count();
        let prod_active = world.dns.1 == PROD;
        if prod_active && observers >= topo.quorum() {
            self.prod_healthy_since.get_or_insert(now);
        } else {
            self.prod_healthy_since = None;
        }

        // S1: which sites serve.
        let serving: Vec<&str> = [PROD, DR]
            .into_iter()
            .filter(|site| {
                let app = world.apps.get(*site).is_some_and(|a| a.running)
                    && world.powered.get(*site).copied().unwrap_or(false);
                app && topo
                    .site_nodes(site)
                    .any(|n| seen.get(&n.host).is_some_and(|s| s.believes_lease.is_some()))
            })
            .collect();
        if serving.len() > 1 {
            let beliefs: Vec<String> = seen
                .iter()
                .filter_map(|(h, s)| s.believes_lease.map(|e| format!("{h}@epoch{e}")))
                .collect();
            self.violate(
                world,
                "S1",
                format!("prod and dr both serve (lease believed by {})", beliefs.join(", ")),
            );
        }

        self.drift(world, &seen);

        // S2 and S3 on what actuators did since the last look.
        while self.ledger_checked < world.ledger.len() {
            let action = world.ledger[self.ledger_checked].clone();
            self.ledger_checked += 1;
            if !action.self_fence {
                if action.epoch < self.ledger_epoch {
                    let detail = format!(
                        "{} did '{}' with epoch {} after epoch {} had acted",
                        action.host, action.what, action.epoch, self.ledger_epoch
                    );
                    self.violate(world, "S3", detail);
                }
                self.ledger_epoch = self.ledger_epoch.max(action.epoch);
            }
            if let Some(site) = &action.activates {
                let old = if site == DR { PROD } else { DR };
                if serving.contains(&old) {
                    let detail = format!(
                        "{site} was activated (epoch {}) while {old} still served",
                        action.epoch
                    );
                    self.violate(world, "S2", detail);
                }
            }
        }

        // L1.
        if let Some(loss) = self.loss_at {
            let moved = world.dns.1 == DR && world.apps.get(DR).is_some_and(|a| a.running);
            if moved && self.recovery.is_none() && now >= loss {
                self.recovery = Some(now - loss);
                world.trace.event(
                    now,
                    "state",
                    &format!("traffic on dr {:.1}s after the loss", (now - loss).as_secs_f64()),
                );
            }
            if self.recovery.is_none() && now > loss + self.recovery_bound {
                let detail = format!(
                    "traffic still not on dr {:.0}s after prod was lost (bound {:.0}s)",
                    (now - loss).as_secs_f64(),
                    self.recovery_bound.as_secs_f64()
                );
                self.violate(world, "L1", detail);
                self.loss_at = None;
            }
        }

        // L2: after healing, one leader and every node at the same applied index.
        if now > self.quiet_from + Duration::from_secs(5) && !self.converged {
            let all_up = topo.nodes.iter().all(|n| seen.contains_key(&n.host));
            let leaders: Vec<_> =
                seen.values().filter(|s| s.server_state == ServerState::Leader).collect();
            let applied: Vec<_> = seen.values().map(|s| s.applied).collect();
            let agree =
                seen.values().all(|s| s.leader == seen.values().next().and_then(|f| f.leader));
            if all_up && leaders.len() == 1 && agree && applied.windows(2).all(|w| w[0] == w[1]) {
                self.converged = true;
                world.trace.event(
                    now,
                    "state",
                    "converged: one leader, every node at the same applied index",
                );
            }
        }
    }

    /// A1-A3 (see the module header).
    fn availability(
        &mut self,
        world: &mut World,
        nodes: &BTreeMap<String, NodeHandle>,
        seen: &BTreeMap<String, Seen>,
        failover_from_epoch: Option<u64>,
    ) {
        let now = world.now;
        let topo = Arc::clone(&self.topology);
        let all = &topo.nodes;
        let quorum = topo.quorum();
        let lossy = world.message_loss > 0.0;
        let sound: Vec<bool> = all
            .iter()
            .map(|n| {
                nodes.contains_key(&n.host)
                    && !world.stalled.contains(&n.host)
                    && !world.disk_full.contains(&n.host)
                    && world.powered.get(&n.site).copied().unwrap_or(false)
            })
            .collect();
        let adj: Vec<Vec<bool>> = all
            .iter()
            .enumerate()
            .map(|(i, a)| {
                all.iter()
                    .enumerate()
                    .map(|(j, b)| !lossy && sound[i] && sound[j] && world.connected(a, b))
                    .collect()
            })
            .collect();
        let to_majority = |i: usize| sound[i] && adj[i].iter().filter(|c| **c).count() >= quorum;
        for (i, n) in all.iter().enumerate() {
            if to_majority(i) {
                self.connected_since.entry(n.host.clone()).or_insert(now);
            } else {
                self.connected_since.remove(&n.host);
            }
        }
        let connected_for = |c: &Checker, host: &str| {
            c.connected_since.get(host).map_or(Duration::ZERO, |t| now.saturating_sub(*t))
        };
        // Some majority of sound members connected pairwise (n <= 7: every subset).
        let clique = (0u32..(1 << all.len())).any(|set| {
            let members: Vec<usize> = (0..all.len()).filter(|i| set & (1 << i) != 0).collect();
            members.len() >= quorum && members.iter().all(|&i| members.iter().all(|&j| adj[i][j]))
        });
        let top = seen.values().max_by_key(|s| (s.epoch, s.applied));

        // A2 (a): a leader followed by a majority, within the election bound. A leader that
        // stood back for lack of a quorum (heartbeats off, every voter told) leads nobody: a
        // connected majority may elect another (not ping-pong), and must have one in time.
        let standing_back = |host: &str| {
            nodes
                .get(host)
                .is_some_and(|n| n.standing_back.load(std::sync::atomic::Ordering::Relaxed))
        };
        let followed = all.iter().enumerate().find_map(|(i, l)| {
            let s = seen.get(&l.host)?;
            if s.server_state != ServerState::Leader || !sound[i] || standing_back(&l.host) {
                return None;
            }
            let followers = all
                .iter()
                .enumerate()
                .filter(|(j, m)| {
                    adj[i][*j]
                        && seen
                            .get(&m.host)
                            .is_some_and(|f| f.leader == Some(l.id) && f.term == s.term)
                })
                .count();
            (followers >= quorum).then_some((s.term, l.id, i))
        });
        if clique && followed.is_none() {
            let since = *self.leaderless_since.get_or_insert(now);
            if now.saturating_sub(since) > self.bounds.election {
                let hosts: Vec<&str> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| to_majority(*i))
                    .map(|(_, n)| n.host.as_str())
                    .collect();
                let leaders: Vec<String> = seen
                    .iter()
                    .filter(|(_, s)| s.server_state == ServerState::Leader)
                    .map(|(h, s)| format!("{h} (term {})", s.term))
                    .collect();
                let views: Vec<String> = seen
                    .iter()
                    .map(|(h, s)| {
                        let back = standing_back(h);
                        format!(
                            "{h} {:?} term {} leader {}{}",
                            s.server_state,
                            s.term,
                            s.leader.map_or("-".to_string(), |l| l.to_string()),
                            if back { " standing back" } else { "" }
                        )
                    })
                    .collect();
                let detail = format!(
                    "no leader followed by a majority for {:.1}s although a majority was connected ({}; bound {:.1}s = 3 x election_timeout_max + 1s); leaders: {}; views: {}",
                    now.saturating_sub(since).as_secs_f64(),
                    hosts.join(", "),
                    self.bounds.election.as_secs_f64(),
                    if leaders.is_empty() { "none".to_string() } else { leaders.join(", ") },
                    views.join("; ")
                );
                self.violate(world, "A2", detail);
                self.leaderless_since = None;
            }
        } else {
            self.leaderless_since = None;
        }
        // A2 (b): no ping-pong. The leader a majority followed is replaced by a newer one while
        // it stayed sound and connected to a majority all along (a leader that was stalled,
        // crashed or cut off in between may lose its place).
        // A leader that stands back gives up its place (replacing it is no ping-pong), but only
        // once it had lost its majority: standing back while connected to one for the leader
        // lease plus slack (a tick, a round trip, and a redial of a connection stuck by the
        // fault just healed: 1.5 s) is itself a violation.
        if let Some((term, id, _)) = self.followed {
            if let Some(old) = all.iter().position(|n| n.id == id && standing_back(&n.host)) {
                let host = all[old].host.clone();
                let for_ = connected_for(self, &host);
                let slack = Duration::from_millis(1500);
                if to_majority(old) && for_ >= self.bounds.election_timeout_max + slack {
                    let detail = format!(
                        "{host} (leader in term {term}) stood back although connected to a majority for {:.1}s",
                        for_.as_secs_f64()
                    );
                    self.violate(world, "A2", detail);
                }
                self.followed = None;
            }
        }
        // A leader that stepped down within its own term (openraft orders votes of one term by
        // node id: a split vote's other candidate with a higher id wins that comparison) was
        // not replaced while it led: the leaderless time that follows is A2 (a)'s to bound.
        // One that moved to a higher term was deposed, and stays judged by the rule below.
        if let Some((term, id, _)) = self.followed {
            let host = all.iter().find(|n| n.id == id).map(|n| n.host.as_str());
            let stepped_down = host
                .and_then(|h| seen.get(h))
                .is_some_and(|s| s.server_state != ServerState::Leader && s.term == term);
            if stepped_down {
                self.followed = None;
            }
        }
        if let Some((_, id, since)) = self.followed {
            let old = all.iter().position(|n| n.id == id);
            let all_along = old.is_some_and(|i| {
                to_majority(i)
                    && self.connected_since.get(&all[i].host).is_some_and(|t| *t <= since)
            });
            if !all_along {
                self.followed = None;
            }
        }
        if let Some((term, id, _)) = self.followed {
            let newer =
                seen.iter().find(|(_, s)| s.server_state == ServerState::Leader && s.term > term);
            let old = all.iter().position(|n| n.id == id);
            if let (Some((new_host, new)), Some(old)) = (newer, old) {
                let old_host = all[old].host.clone();
                let stable = to_majority(old)
                    && connected_for(self, &old_host) >= self.bounds.election_timeout_max;
                if stable {
                    let detail = format!(
                        "{new_host} took over in term {} from {old_host} (term {term}), which was still connected to a majority",
                        new.term
                    );
                    self.violate(world, "A2", detail);
                }
                self.followed = None;
            }
        }
        if let Some((term, id, _)) = followed {
            if self.followed.map(|(t, i, _)| (t, i)) != Some((term, id)) {
                self.followed = Some((term, id, now));
            }
        }
        let current = followed.map(|(term, id, _)| (term, id));
        let last = self.led.last_mut().filter(|l| l.3.is_none());
        if last.as_ref().map(|l| (l.0, l.1)) != current {
            if let Some(l) = last {
                l.3 = Some(now);
            }
            if let Some((term, id)) = current {
                self.led.push((term, id, now, None));
            }
        }
        self.led.retain(|l| {
            l.3.is_none_or(|until| now.saturating_sub(until) < Duration::from_secs(120))
        });

        // A1 (a): self-fences.
        let granted = top.and_then(|t| t.lease.clone());
        for (i, n) in all.iter().enumerate() {
            let Some(epoch) = seen.get(&n.host).and_then(|s| s.fenced) else { continue };
            if !self.fences_seen.insert((n.host.clone(), epoch)) {
                continue;
            }
            let app_fine = world.apps.get(&n.site).is_some_and(|a| a.healthy)
                && world.powered.get(&n.site).copied().unwrap_or(false);
            let still_granted = granted.as_ref() == Some(&(n.site.clone(), epoch));
            let for_ = connected_for(self, &n.host);
            // The lease outlasts one leader change, not a series: from a third of the lease on
            // a holder renews every 250 ms, so some leader must have lasted RENEWAL_CHANCE in
            // the last two thirds for a renewal to be owed.
            let since = now.saturating_sub(self.bounds.lease_ttl * 2 / 3);
            let chance = self.led.iter().any(|&(_, _, from, until)| {
                until.unwrap_or(now).min(now).saturating_sub(from.max(since)) >= RENEWAL_CHANCE
            });
            if app_fine && still_granted && to_majority(i) && for_ >= self.bounds.renewal && chance
            {
                let detail = format!(
                    "{} self-fenced at epoch {epoch} although the cluster still granted {} the lease, its application was healthy and {} had been connected to a majority for {:.1}s (renewal bound {:.1}s)",
                    n.host, n.site, n.host, for_.as_secs_f64(), self.bounds.renewal.as_secs_f64()
                );
                self.violate(world, "A1", detail);
            } else {
                world.trace.event(
                    now,
                    "state",
                    &format!("{} self-fenced at epoch {epoch}", n.host),
                );
                self.legit_fence_epochs.insert(epoch);
            }
        }

        // A1 (b): failovers away from a healthy, connected prod.
        if let (Some(from), Some(since)) = (failover_from_epoch, self.prod_fine_since) {
            let fine_for = now.saturating_sub(since);
            if fine_for > self.bounds.down_after + Duration::from_secs(1)
                && !self.legit_fence_epochs.contains(&from)
            {
                let detail = format!(
                    "failover from epoch {from} started although prod's application was healthy and prod connected to a majority for the last {:.1}s (down_after {:?}), with no legitimate self-fence",
                    fine_for.as_secs_f64(),
                    self.bounds.down_after
                );
                self.violate(world, "A1", detail);
            }
        }
        let prod_app = world.apps.get(PROD).is_some_and(|a| a.healthy)
            && world.powered.get(PROD).copied().unwrap_or(false)
            && all.iter().filter(|n| world.reaches_app(n, PROD)).count() >= quorum;
        let prod_connected = all.iter().enumerate().any(|(i, n)| n.site == PROD && to_majority(i));
        if prod_app && prod_connected && world.dns.1 == PROD && !lossy {
            self.prod_fine_since.get_or_insert(now);
        } else {
            self.prod_fine_since = None;
        }

        // A3: someone serves, or a workflow runs.
        let serving = [PROD, DR].iter().any(|site| {
            world.apps.get(*site).is_some_and(|a| a.running)
                && world.powered.get(*site).copied().unwrap_or(false)
        });
        let running = top.is_some_and(|t| t.workflow_running);
        let dr_powered = world.powered.get(DR).copied().unwrap_or(false);
        if !serving && !running && clique && dr_powered {
            let since = *self.unserved_since.get_or_insert(now);
            if now.saturating_sub(since) > self.bounds.unserved {
                let detail = format!(
                    "nothing served {SERVICE} for {:.1}s and no failover ran (phase {}) while a majority was connected (bound {:.1}s)",
                    now.saturating_sub(since).as_secs_f64(),
                    top.map_or("?", |t| t.phase.as_str()),
                    self.bounds.unserved.as_secs_f64()
                );
                self.violate(world, "A3", detail);
                self.unserved_since = None;
            }
        } else {
            self.unserved_since = None;
        }
    }

    /// D1 and D2 (see the module header).
    fn drift(&mut self, world: &mut World, seen: &BTreeMap<String, Seen>) {
        let now = world.now;
        let top = seen.values().max_by_key(|s| (s.epoch, s.applied));
        let committed = top.and_then(|t| {
            let wf = t.workflow.as_ref()?;
            (wf.state == WorkflowState::Committed && wf.epoch == t.epoch).then_some((t, wf))
        });
        if committed.is_some() && self.committed_at.is_none() {
            self.committed_at = Some(now);
        }
        // D1: what the committed workflow of the current epoch set, if it set DNS.
        let expected = committed
            .filter(|(t, wf)| {
                wf.dns_done && matches!(t.phase.as_str(), "protecting" | "failed_over")
            })
            .map(|(t, wf)| (t, (wf.epoch, wf.to.clone()), wf.kind));
        match expected {
            Some((t, set, kind)) if world.dns != set && world.dns.0 <= set.0 => {
                let leader_followed = self.led.last().is_some_and(|l| l.3.is_none());
                let relaxed =
                    world.dns_ignores || world.dns_refuses || !leader_followed || t.paused;
                if relaxed || self.drift_since.as_ref().is_none_or(|(_, s)| *s != set) {
                    self.drift_since = Some((now, set.clone()));
                }
                let since = self.drift_since.as_ref().map_or(now, |(t, _)| *t);
                if now.saturating_sub(since) > self.bounds.drift {
                    let detail = format!(
                        "DNS pointed at {} with epoch {} for {:.1}s (since the last time it could be repaired) after the committed {} of epoch {} set it to {}; bound {:.1}s = 2 x reconcile_every + 3 x the dns step's timeout + election_timeout_max + 2s",
                        world.dns.1,
                        world.dns.0,
                        now.saturating_sub(since).as_secs_f64(),
                        kind.as_str(),
                        set.0,
                        set.1,
                        self.bounds.drift.as_secs_f64()
                    );
                    self.violate(world, "D1", detail);
                    self.drift_since = None;
                }
            }
            _ => self.drift_since = None,
        }
        // D2: every update the server accepted since the last look.
        while self.dns_writes_checked < world.dns_writes.len() {
            let write = world.dns_writes[self.dns_writes_checked].clone();
            self.dns_writes_checked += 1;
            let (newest, at) = self.dns_newest;
            if write.epoch < newest {
                let detail = format!(
                    "{} updated DNS to {} with epoch {}{} although epoch {newest} had been written at {:.3}s",
                    write.host,
                    write.site,
                    write.epoch,
                    if write.applied { "" } else { " (accepted, ignored)" },
                    at.as_secs_f64(),
                );
                self.violate(world, "D2", detail);
            } else if write.epoch > newest {
                self.dns_newest = (write.epoch, write.at);
            }
        }
    }

    /// The end-of-run checks.
    pub fn finish(&mut self, world: &mut World) {
        if !self.converged {
            self.violate(
                world,
                "L2",
                "the healed cluster did not converge to one leader with every node at the same applied index".into(),
            );
        }
    }
}
