//! The simulated world outside the nodes: the sites' applications, power, the network's cuts
//! as the scenario set them, the DNS zone, and the ledger of everything actuators did. Nodes
//! see it only through their simulated probes and actuators; checkers read it directly.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover::consensus::types::{NodeId, Role};

use crate::rng::SimRng;
use crate::trace::Trace;

/// The sites of every simulated cluster.
pub const PROD: &str = "prod";
/// The disaster-recovery site.
pub const DR: &str = "dr";
/// The third site.
pub const WITNESS: &str = "witness";
/// The one protected service.
pub const SERVICE: &str = "app";

/// One simulated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    /// Raft id.
    pub id: NodeId,
    /// Host name on the simulated network (`p1`, `d2`, `w1`, ...).
    pub host: String,
    /// Site.
    pub site: String,
    /// Controller or witness.
    pub role: Role,
}

/// Which nodes exist: `size` = 3 (one per site), 5 (two controllers per site) or 7 (three).
#[derive(Debug, Clone)]
pub struct Topology {
    /// Every node, by id order.
    pub nodes: Vec<SimNode>,
}

impl Topology {
    /// The cluster of `size` nodes (3, 5 or 7): the controllers split evenly between prod and
    /// dr, one witness.
    pub fn new(size: usize) -> Topology {
        let per_site = (size.max(3) - 1) / 2;
        let mut nodes = Vec::new();
        for (site, letter) in [(PROD, 'p'), (DR, 'd')] {
            for i in 1..=per_site {
                nodes.push(SimNode {
                    id: nodes.len() as NodeId + 1,
                    host: format!("{letter}{i}"),
                    site: site.to_string(),
                    role: Role::Controller,
                });
            }
        }
        nodes.push(SimNode {
            id: nodes.len() as NodeId + 1,
            host: "w1".into(),
            site: WITNESS.into(),
            role: Role::Witness,
        });
        Topology { nodes }
    }

    /// The node on `host`.
    pub fn node(&self, host: &str) -> Option<&SimNode> {
        self.nodes.iter().find(|n| n.host == host)
    }

    /// The nodes of `site`.
    pub fn site_nodes<'a>(&'a self, site: &'a str) -> impl Iterator<Item = &'a SimNode> + 'a {
        self.nodes.iter().filter(move |n| n.site == site)
    }

    /// A majority of the voters.
    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }
}

/// A site's application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// Its health check passes (when the site has power and the prober can reach it).
    pub healthy: bool,
    /// It runs as the active instance (started by an activation, stopped by a fence, a
    /// self-fence or a deactivation).
    pub running: bool,
    /// It was stopped (fenced or self-fenced) and not started since: its health check fails,
    /// as a stopped application's would. A standby that never ran, or that a switchover
    /// deactivated gracefully, is not stopped.
    pub stopped: bool,
}

/// How the simulated fence agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceMode {
    /// Powers the target's application off when it can reach it.
    Works,
    /// Exits non-zero.
    Fails,
    /// Hangs until the step times out.
    Hangs,
}

/// Deliberate defects that the checkers must catch (`--mutate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Fencing is disabled: the fence agent reports success at once without fencing
    /// anything, so the leader skips the lease wait and activates while the old site, cut
    /// off, still runs and still believes it holds its lease.
    LyingFence,
    /// Every node's clock runs 60% slow, far outside `max_clock_drift`: the leader's lease
    /// wait ends while the old site's holders still believe their lease is valid.
    ClockBeyondDrift,
    /// Every node's disk acknowledges syncs without making anything durable (a volatile write
    /// cache that lies): a crash loses writes the node had acknowledged, so a restarted node
    /// forgets its vote and log entries the cluster counted as stored.
    LyingDisk,
    /// The lease wait is removed entirely (node feature `sim-mutations`): without fencing
    /// confirmation the leader activates the standby as soon as the revocation committed,
    /// while the old site's holders still believe their lease.
    NoLeaseWait,
    /// A self-fenced active site is never reactivated (node feature `sim-mutations`): the
    /// behaviour before reactivations existed, which A3 must find (issue 9 case 9).
    NoReactivate,
    /// Switchovers activate the new site first and deactivate the old one last, and their
    /// lease wait ends at once (node feature `sim-mutations`): a member of the old site that
    /// has not heard of the release still believes its lease while its application runs.
    SwitchoverEarlyActivate,
    /// A drift repair runs the step with the epoch before the current one (node feature
    /// `sim-mutations`): after a reload restored the previous zone, the repair is accepted
    /// with an epoch older than the newest the zone ever took (D2).
    RepairOldEpoch,
    /// Drift is found and recorded but never repaired (node feature `sim-mutations`): DNS
    /// stays where a revert or an ignored update left it (D1).
    NoRepair,
}

impl Mutation {
    /// Every mutation's `--mutate` name.
    pub const NAMES: &'static str = "lying-fence, clock-beyond-drift, lying-disk, \
        no-lease-wait, no-reactivate, switchover-early-activate, repair-old-epoch or no-repair";

    /// Parses a `--mutate` value.
    pub fn parse(s: &str) -> Option<Mutation> {
        match s {
            "lying-fence" => Some(Mutation::LyingFence),
            "clock-beyond-drift" => Some(Mutation::ClockBeyondDrift),
            "lying-disk" => Some(Mutation::LyingDisk),
            "no-lease-wait" => Some(Mutation::NoLeaseWait),
            "no-reactivate" => Some(Mutation::NoReactivate),
            "switchover-early-activate" => Some(Mutation::SwitchoverEarlyActivate),
            "repair-old-epoch" => Some(Mutation::RepairOldEpoch),
            "no-repair" => Some(Mutation::NoRepair),
            _ => None,
        }
    }

    /// The `--mutate` name.
    pub fn name(self) -> &'static str {
        match self {
            Mutation::LyingFence => "lying-fence",
            Mutation::ClockBeyondDrift => "clock-beyond-drift",
            Mutation::LyingDisk => "lying-disk",
            Mutation::NoLeaseWait => "no-lease-wait",
            Mutation::NoReactivate => "no-reactivate",
            Mutation::SwitchoverEarlyActivate => "switchover-early-activate",
            Mutation::RepairOldEpoch => "repair-old-epoch",
            Mutation::NoRepair => "no-repair",
        }
    }
}

/// An operator's order (`droverctl switchover app --to <site>`), carried out through
/// whichever node leads when it is due (see `node::operator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Its number in the run, from 1: the switchover's reason names it, so a node that finds
    /// it started (its answer lost to a leader change) does not ask again.
    pub number: u32,
    /// The site to switch over to.
    pub to: String,
    /// Carried out: the cluster accepted it, or it had nothing to do.
    pub done: bool,
}

impl Order {
    /// The reason the switchover carries, which names the order.
    pub fn reason(&self) -> String {
        format!("operator order {}: planned switchover to {}", self.number, self.to)
    }
}

/// Something an actuator did to the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// Simulated time it took effect.
    pub at: Duration,
    /// Host that ran it.
    pub host: String,
    /// What it did: `start dr`, `stop prod`, `fence prod`, `dns -> dr`.
    pub what: String,
    /// The epoch it carried.
    pub epoch: u64,
    /// Part of a self-fence (`on_lease_lost`): stopping with an old epoch is always allowed.
    pub self_fence: bool,
    /// It activates `site` (an application start outside a self-fence).
    pub activates: Option<String>,
}

/// An update the DNS server accepted (`dns` step or drift repair), applied or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsWrite {
    /// Simulated time.
    pub at: Duration,
    /// Host that sent it.
    pub host: String,
    /// The epoch it carried.
    pub epoch: u64,
    /// The site it points the name at.
    pub site: String,
    /// The server changed the zone (false: it answered success and dropped the update).
    pub applied: bool,
}

/// The shared world; every simulated host and the run loop hold one.
#[derive(Debug)]
pub struct World {
    /// The nodes.
    pub topology: Topology,
    /// Per site.
    pub apps: BTreeMap<String, App>,
    /// Per site: whether it has power.
    pub powered: BTreeMap<String, bool>,
    /// One-way site-level cuts (from, to).
    pub site_cuts: BTreeSet<(String, String)>,
    /// Hosts cut from every other host.
    pub isolated: BTreeSet<String>,
    /// One-way host-level cuts (from, to): per-link partitions.
    pub link_cuts: BTreeSet<(String, String)>,
    /// Hosts paused (a stopped process): their messages are held, their actuator waits.
    pub stalled: BTreeSet<String>,
    /// Hosts whose disk is full: every write fails.
    pub disk_full: BTreeSet<String>,
    /// Hosts whose node exited by itself (a storage fault) and awaits its supervisor's restart.
    pub exited: BTreeSet<String>,
    /// Random message loss rate in force (0: none).
    pub message_loss: f64,
    /// The DNS zone: (epoch of the last accepted update, site it points at).
    pub dns: (u64, String),
    /// The simulated fence agent.
    pub fence: FenceMode,
    /// Whether the DNS server refuses updates.
    pub dns_refuses: bool,
    /// Whether the DNS server answers success to updates but drops them (a server policy
    /// that silently ignores them).
    pub dns_ignores: bool,
    /// Every state an update put the zone in, oldest first, the initial one included and
    /// repeats left out (a revert goes back to the one before the last).
    pub dns_states: Vec<(u64, String)>,
    /// Every update the DNS server accepted, in order.
    pub dns_writes: Vec<DnsWrite>,
    /// (site, `start` | `stop`): a workflow's `sim-app` command on that site exits non-zero
    /// (an application that will not start, a stop script that fails); a self-fence's stop
    /// still works.
    pub app_refuses: BTreeSet<(String, String)>,
    /// The operator's orders, in the order given.
    pub orders: Vec<Order>,
    /// Actuator run times are multiplied by this.
    pub actuator_slowdown: u64,
    /// The defect under test, if any.
    pub mutation: Option<Mutation>,
    /// Everything actuators did, in order.
    pub ledger: Vec<Action>,
    /// The run's event trace.
    pub trace: Trace,
    /// Durations of actuator runs.
    pub rng: SimRng,
    /// Simulated time, set by the run loop every step.
    pub now: Duration,
}

/// A handle on the world.
pub type Shared = Arc<Mutex<World>>;

/// Locks the world (a panicked holder is the run's failure already; keep reading).
pub fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    /// A world with prod active and healthy, dr healthy on standby, DNS on prod at epoch 1.
    pub fn new(topology: Topology, rng: SimRng, trace: Trace) -> World {
        let app = |running| App { healthy: true, running, stopped: false };
        World {
            topology,
            apps: [(PROD.to_string(), app(true)), (DR.to_string(), app(false))].into(),
            powered: [PROD, DR, WITNESS].iter().map(|s| (s.to_string(), true)).collect(),
            site_cuts: BTreeSet::new(),
            isolated: BTreeSet::new(),
            link_cuts: BTreeSet::new(),
            stalled: BTreeSet::new(),
            disk_full: BTreeSet::new(),
            exited: BTreeSet::new(),
            message_loss: 0.0,
            dns: (1, PROD.to_string()),
            fence: FenceMode::Works,
            dns_refuses: false,
            dns_ignores: false,
            dns_states: vec![(1, PROD.to_string())],
            dns_writes: Vec::new(),
            app_refuses: BTreeSet::new(),
            orders: Vec::new(),
            actuator_slowdown: 1,
            mutation: None,
            ledger: Vec::new(),
            trace,
            rng,
            now: Duration::ZERO,
        }
    }

    /// Whether traffic can flow from site `a` to site `b` (a site always reaches itself).
    pub fn site_link(&self, a: &str, b: &str) -> bool {
        a == b || !self.site_cuts.contains(&(a.to_string(), b.to_string()))
    }

    /// Whether `from` can send to `to` (hosts), as far as cuts go (stalls hold messages but
    /// do not cut the link).
    pub fn host_link(&self, from: &SimNode, to: &SimNode) -> bool {
        !self.isolated.contains(&from.host)
            && !self.isolated.contains(&to.host)
            && self.site_link(&from.site, &to.site)
            && !self.link_cuts.contains(&(from.host.clone(), to.host.clone()))
    }

    /// Whether `a` and `b` can hold a conversation right now: linked both ways, neither
    /// stalled.
    pub fn connected(&self, a: &SimNode, b: &SimNode) -> bool {
        a.host == b.host
            || (self.host_link(a, b)
                && self.host_link(b, a)
                && !self.stalled.contains(&a.host)
                && !self.stalled.contains(&b.host))
    }

    /// Whether node `n` can hold a conversation (both ways) with the application of `site`.
    pub fn reaches_app(&self, n: &SimNode, site: &str) -> bool {
        n.site == site
            || (!self.isolated.contains(&n.host)
                && self.site_link(&n.site, site)
                && self.site_link(site, &n.site))
    }

    /// `site`'s health check passes from `n`'s point of view.
    pub fn app_healthy_from(&self, n: &SimNode, site: &str) -> bool {
        self.powered.get(site).copied().unwrap_or(false)
            && self.apps.get(site).is_some_and(|a| a.healthy && !a.stopped)
            && self.reaches_app(n, site)
    }

    /// Records an actuator's effect, at the current time.
    pub fn record(&mut self, mut action: Action) {
        action.at = self.now;
        let line = format!(
            "{} {} (epoch {}){}",
            action.host,
            action.what,
            action.epoch,
            if action.self_fence { " [self-fence]" } else { "" }
        );
        self.event("act", &line);
        self.ledger.push(action);
    }

    /// A reload restores the zone as it was before the last update that changed it: the name
    /// points at the site, with the epoch, it had before. Nothing changes if it is there
    /// already (a second reload with no update in between). Returns the state restored, if any.
    pub fn revert_dns(&mut self) -> Option<(u64, String)> {
        let last = self.dns_states.last()?;
        let previous = self.dns_states.iter().rev().find(|s| *s != last)?.clone();
        if previous == self.dns {
            return None;
        }
        let line = format!(
            "dns reverted from {} (epoch {}) to {} (epoch {})",
            self.dns.1, self.dns.0, previous.1, previous.0
        );
        self.event("fault", &line);
        self.dns = previous.clone();
        Some(previous)
    }

    /// Adds an event to the trace at the current simulated time.
    pub fn event(&mut self, kind: &str, what: &str) {
        self.trace.event(self.now, kind, what);
    }
}
