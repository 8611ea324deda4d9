//! The program of a simulated host: a real drover node (openraft, the redb store, the state
//! machine, the decision engine, the failover driver and its gRPC services) assembled with
//! simulated parts: the host's [`SimDisk`], turmoil TCP, the simulated actuator and probes,
//! and a lease clock at the node's drift.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover::api::NodeHandle;
use drover::config::RaftTimings;
use drover::consensus::state::control::ControlRequest;
use drover::consensus::store::{self, StoreOptions};
use drover::consensus::types::{Member, Request};
use drover::runtime::control::{DriverParts, LeaseClock, ProbeSupply};
use drover::runtime::durability::DiskWrites;
use drover::runtime::{assemble, initialize_if_new, Assembled, Identity};
use drover::spec::ClusterSpec;
use openraft::ServerState;
use tokio::sync::watch;

use crate::disk::SimDisk;
use crate::fakes::{SimActuator, SimProbes};
use crate::net::{self, GRPC_PORT};
use crate::world::{lock, Shared, SimNode, Topology, SERVICE};

/// The nodes' handles while their software runs, by host; the checkers read them.
pub type Registry = Arc<Mutex<BTreeMap<String, NodeHandle>>>;

/// What a host needs to (re)start its node.
#[derive(Clone)]
pub struct Boot {
    /// The node.
    pub node: SimNode,
    /// Every member.
    pub topology: Topology,
    /// Its disk (survives restarts).
    pub disk: SimDisk,
    /// The world.
    pub world: Shared,
    /// Where to publish the handle.
    pub registry: Registry,
    /// The spec the cluster applies once formed.
    pub spec: Arc<(ClusterSpec, String)>,
    /// The node's clock rate error.
    pub drift_ppm: i64,
    /// This node forms the cluster (proposes the initial membership, and so leads first);
    /// the others wait to be contacted.
    pub initializer: bool,
}

/// Raft timings of the simulated cluster: the defaults a real deployment starts from.
pub fn raft_config() -> Arc<openraft::Config> {
    Arc::new(RaftTimings::default().to_openraft("drover-sim"))
}

/// How long the supervisor waits before restarting a node that exited (systemd's `RestartSec`
/// in the shipped unit).
pub const RESTART_DELAY: Duration = Duration::from_secs(2);

/// Runs a node until the host is crashed, or until the node stops itself the way a real one
/// exits non-zero ([`drover::runtime::fatal`]: Raft stopped, or the store takes no writes;
/// or the store cannot be opened on a full disk). The host's software then returns, and the
/// run restarts it after [`RESTART_DELAY`], as a supervisor would.
pub async fn run(boot: Boot) -> turmoil::Result {
    let stores = match store::open_backend(boot.disk.backend(), "sim-disk", StoreOptions::default())
    {
        Ok(stores) => stores,
        // A real node exits here and is restarted; anything else is a bug worth a failed run.
        Err(e) if boot.disk.is_full() => {
            lock(&boot.world)
                .event("exit", &format!("{} cannot open its store: {e}", boot.node.host));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let parts = DriverParts {
        actuator: Arc::new(SimActuator { world: boot.world.clone(), node: boot.node.clone() }),
        probes: ProbeSupply::Given(Arc::new(SimProbes {
            world: boot.world.clone(),
            node: boot.node.clone(),
        })),
        dialer: net::dialer(),
        clock: LeaseClock::new(boot.drift_ppm),
        disk_writes: DiskWrites::Inline,
    };
    let identity = Identity {
        id: boot.node.id,
        name: boot.node.host.clone(),
        site: boot.node.site.clone(),
        role: boot.node.role,
    };
    let Assembled { node, router } =
        assemble(identity, raft_config(), stores, parts, None, stop_rx).await?;
    boot.registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(boot.node.host.clone(), node.clone());
    let incoming = net::incoming(GRPC_PORT).await?;
    tokio::spawn(router.serve_with_incoming(incoming));
    let members: Vec<_> = boot
        .topology
        .nodes
        .iter()
        .map(|n| {
            let member = Member {
                name: n.host.clone(),
                address: format!("{}:{GRPC_PORT}", n.host),
                site: n.site.clone(),
                role: n.role,
            };
            (n.id, member)
        })
        .collect();
    let fatal = {
        let node = node.clone();
        async move { drover::runtime::fatal(&node).await }
    };
    tokio::select! {
        why = fatal => {
            lock(&boot.world).event("exit", &format!("{} stops: {why}", boot.node.host));
            boot.registry.lock().unwrap_or_else(|p| p.into_inner()).remove(&boot.node.host);
            let _ = stop_tx.send(true);
            let _ = node.raft.shutdown().await;
            Ok(())
        }
        () = work(&boot, &node, &members) => Ok(()),
    }
}

/// What the node does besides its own loops: forms the cluster, applies the spec, and, while
/// it leads, carries out the operator's orders.
async fn work(boot: &Boot, node: &NodeHandle, members: &[(u64, Member)]) {
    if boot.initializer {
        initialize_if_new(&node.raft, boot.node.id, members).await;
    }
    // The operator's first `droverctl config apply`, done by whichever node leads first.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let leading = node.raft.metrics().borrow().state == ServerState::Leader;
        let has_spec = node.state.read(|s| s.control.spec.is_some());
        if leading && has_spec {
            operator(boot, node).await;
        }
        if leading && !has_spec {
            let request = ControlRequest::ApplySpec {
                expected_version: Some(0),
                spec: Box::new(boot.spec.0.clone()),
                text: boot.spec.1.clone(),
                author: "drover-sim".into(),
                at_unix_ms: drover::pb::unix_now_ms(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                node.raft.client_write(Request::Control(request)),
            )
            .await;
        }
    }
}

/// The operator's next order, as `droverctl switchover` would carry it out on the leader: read
/// the service's epoch and active site from this node's applied state, propose the switchover
/// with them, and try again later when the cluster rejects it or does not answer (an order is
/// proposed again only when no workflow of it is found: a start whose answer was lost counts).
async fn operator(boot: &Boot, node: &NodeHandle) {
    let Some(order) = lock(&boot.world).orders.iter().find(|o| !o.done).cloned() else { return };
    let reason = order.reason();
    let seen = node.state.read(|s| {
        let svc = s.control.services.get(SERVICE)?;
        let started = svc.workflow.as_ref().is_some_and(|w| w.reason == reason);
        Some((svc.epoch, svc.active_site.clone(), svc.active_workflow().is_some(), started))
    });
    let Some((epoch, active, busy, started)) = seen else { return };
    let finish = |what: String| {
        let mut w = lock(&boot.world);
        if let Some(o) = w.orders.iter_mut().find(|o| o.number == order.number) {
            o.done = true;
        }
        w.event("operator", &what);
    };
    if started {
        return finish(format!(
            "order {}: the switchover to {} was started",
            order.number, order.to
        ));
    }
    // An operator waits for the workflow in progress (`droverctl watch`) before asking.
    if busy {
        return;
    }
    if active == order.to {
        return finish(format!("order {}: {SERVICE} is already on {active}", order.number));
    }
    let request = ControlRequest::StartSwitchover {
        service: SERVICE.to_string(),
        from: active.clone(),
        to: order.to.clone(),
        expected_epoch: epoch,
        reason,
        author: "operator".into(),
        at_unix_ms: drover::pb::unix_now_ms(),
    };
    let asked = format!(
        "order {}: switchover of {SERVICE} from {active} to {} at epoch {epoch} through {}",
        order.number, order.to, boot.node.host
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        node.raft.client_write(Request::Control(request)),
    )
    .await;
    match answer {
        Ok(Ok(resp)) => match resp.data.rejected {
            None => finish(format!("{asked}: accepted")),
            Some(why) => lock(&boot.world).event("operator", &format!("{asked}: rejected: {why}")),
        },
        Ok(Err(e)) => lock(&boot.world).event("operator", &format!("{asked}: failed: {e}")),
        Err(_) => lock(&boot.world).event("operator", &format!("{asked}: no answer within 5s")),
    }
}
