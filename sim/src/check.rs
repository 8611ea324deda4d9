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
//! - L1 once the active site is lost with a majority alive and connected, traffic is on the
//!   standby within the bound of `spec::recovery_bound`.
//! - L2 after the quiet period's healing, the cluster converges: one leader, all nodes at the
//!   same applied index.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use drover::api::NodeHandle;
use openraft::ServerState;

use crate::world::{Topology, World, DR, PROD, SERVICE};

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `S1` .. `L2`, or `PANIC`.
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
}

fn look(node: &NodeHandle, last_index: Option<u64>) -> Seen {
    let (applied, state_hash, epoch, phase) = node.state.read_applied(|applied, cluster| {
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
        )
    });
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
    ledger_checked: usize,
    ledger_epoch: u64,
    /// Since when prod has been continuously healthy from a quorum's view.
    prod_healthy_since: Option<Duration>,
    /// Failovers that committed.
    pub failovers: u32,
    /// Time from the loss to traffic on dr, once it happened.
    pub recovery: Option<Duration>,
    converged: bool,
}

impl Checker {
    /// A checker for a run whose active site is lost at `loss_at` (if the plan says so).
    pub fn new(
        topology: Topology,
        down_after: Duration,
        recovery_bound: Duration,
        loss_at: Option<Duration>,
        quiet_from: Duration,
    ) -> Checker {
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
            ledger_checked: 0,
            ledger_epoch: 0,
            prod_healthy_since: None,
            failovers: 0,
            recovery: None,
            converged: false,
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

        // Workflow starts (S5) and commits, from the most advanced node.
        if let Some(top) = seen.values().max_by_key(|s| (s.epoch, s.applied)) {
            if top.epoch > self.max_epoch {
                if self.max_epoch > 0 {
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
                if top.phase == "failed_over" {
                    self.failovers += 1;
                }
                self.phase_seen = top.phase.clone();
            }
        }

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
