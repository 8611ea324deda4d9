//! Starts a node and wires its parts together:
//!
//! ```text
//!  node.toml ─▶ config::load ─▶ tls::load ─▶ store::open(data_dir) ─▶ openraft::Raft
//!                                                                      │
//!      gRPC listener (mTLS): api::authz ─▶ api::raft::RaftService + api::admin::AdminService
//!                                           + runtime::control::ControlService
//!      HTTP listener:        api::http (healthz, readyz, metrics)
//! ```
//!
//! On first start (empty data dir) the node proposes the configured initial membership; every
//! initial member does the same with the same list, which openraft accepts exactly once. Later
//! starts ignore the list: the data dir is the truth. Before that first proposal the node asks
//! its peers whether a cluster has already formed ([`presence`]): an empty data dir in a formed
//! cluster means lost data, and the node refuses to start unless told `--rejoin`. A node with
//! no initial member list (added with `droverctl member add`) knows no peer to ask: with an
//! empty data dir it starts only with `--rejoin`. Shutdown stops Raft first (so nothing is
//! acknowledged after it), then the listeners.

pub mod cli;
pub mod control;
pub mod durability;
pub mod election;
pub mod fence_test;
pub mod presence;
pub mod recover;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::admin::AdminService;
use crate::api::authz::{Authorizer, AuthzLayer};
use crate::api::raft::RaftService;
use crate::api::NodeHandle;
use crate::config::NodeConfig;
use crate::consensus::channel::Dialer;
use crate::consensus::network::{Network, PeerContacts};
use crate::consensus::store;
use crate::consensus::types::{Member, NodeId, Raft, Role};
use crate::probe::ProbeLimits;
use crate::tls::TlsMaterial;
use control::{DriverParts, LeaseClock, ProbeSupply};
use tonic::transport::server::Router;

/// Longest time the listeners get to finish in-flight requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {what} {addr}: {cause}; is another process using it? change listen.{what} in {config}")]
    Listen { what: &'static str, addr: std::net::SocketAddr, cause: std::io::Error, config: String },
    /// TLS material unusable for a server.
    #[error("{0}")]
    Tls(String),
    /// openraft refused to start.
    #[error("cannot start Raft: {0}")]
    Raft(String),
    /// The node ran but can no longer work (Raft stopped, or the store takes no writes): it
    /// exits non-zero so that its supervisor restarts it.
    #[error("{0}; exited so that the supervisor restarts the node")]
    Stopped(String),
    /// The data dir is empty but the node must not bootstrap (or cannot rejoin yet).
    #[error("{config}: {refusal}")]
    Refused {
        /// The node.toml path.
        config: String,
        /// Why.
        refusal: presence::Refusal,
    },
}

impl RuntimeError {
    /// True when the data dir is the problem (damaged, or empty where state was expected):
    /// the operator must re-sync the node, not just retry.
    pub fn is_data_problem(&self) -> bool {
        matches!(
            self,
            RuntimeError::Refused { .. }
                | RuntimeError::Store(
                    store::StoreError::Corrupt { .. } | store::StoreError::Read { .. }
                )
        )
    }
}

/// How `run` starts the node, beyond its config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// `--rejoin`: with an empty data dir, join the existing cluster as a fresh member
    /// (through `droverctl member add`) instead of refusing to start. Needed for the first
    /// start of a node with no `initial_member` list too.
    pub rejoin: bool,
}

/// Runs the node until `shutdown` resolves.
pub async fn run(
    cfg: NodeConfig,
    tls: Option<TlsMaterial>,
    options: StartOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let config_name = cfg.path.display().to_string();
    let server_tls = match &tls {
        Some(t) => Some(t.server_config().map_err(|e| RuntimeError::Tls(e.to_string()))?),
        None => None,
    };
    // Bind before touching the store, so a port clash changes nothing on disk.
    let grpc_listener =
        TcpListener::bind(cfg.listen_grpc).await.map_err(|cause| RuntimeError::Listen {
            what: "grpc",
            addr: cfg.listen_grpc,
            cause,
            config: config_name.clone(),
        })?;
    let http_listener =
        TcpListener::bind(cfg.listen_http).await.map_err(|cause| RuntimeError::Listen {
            what: "http",
            addr: cfg.listen_http,
            cause,
            config: config_name.clone(),
        })?;

    let stores = store::open(&cfg.data_dir, store::StoreOptions::default())?;
    // Decided before Raft starts and before the listeners serve, so a node that lost its data
    // never answers a vote with its vote forgotten.
    let plan = if store::is_pristine(&stores.0)? {
        if cfg.initial_members.is_empty() {
            let data_dir = cfg.data_dir.display().to_string();
            let plan = presence::plan_without_peers(cfg.id, options.rejoin, &data_dir).map_err(
                |refusal| RuntimeError::Refused { config: config_name.clone(), refusal },
            )?;
            Some(plan)
        } else {
            info!(
                peers = cfg.initial_members.len().saturating_sub(1),
                "empty data dir: asking the initial members whether a cluster has formed"
            );
            let answers = presence::ask_peers(cfg.id, &cfg.initial_members, tls.as_ref()).await;
            let plan = presence::plan(cfg.id, options.rejoin, &answers).map_err(|refusal| {
                RuntimeError::Refused { config: config_name.clone(), refusal }
            })?;
            Some(plan)
        }
    } else {
        if options.rejoin {
            warn!("--rejoin ignored: the data dir holds Raft state; this node starts as the member it was");
        }
        None
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let parts = DriverParts {
        actuator: Arc::new(crate::actuate::RealActuator::new()),
        probes: ProbeSupply::Real(ProbeLimits::default()),
        dialer: Dialer::default(),
        clock: LeaseClock::new(0),
        disk_writes: durability::DiskWrites::Blocking,
    };
    let identity =
        Identity { id: cfg.id, name: cfg.name.clone(), site: cfg.site.clone(), role: cfg.role };
    let raft_config = Arc::new(cfg.raft.to_openraft("drover"));
    let Assembled { node, router } =
        assemble(identity, raft_config, stores, parts, tls.map(Arc::new), stop_rx.clone()).await?;
    let raft = node.raft.clone();
    let grpc = {
        let mut stop = stop_rx.clone();
        let incoming = crate::tls::serve_incoming(grpc_listener, server_tls);
        tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let http = {
        let mut stop = stop_rx.clone();
        let app = crate::api::http::router(node.clone());
        tokio::spawn(async move {
            crate::api::http::serve(http_listener, app, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
            Ok::<(), std::io::Error>(())
        })
    };
    info!(
        node_id = cfg.id,
        name = %cfg.name,
        site = %cfg.site,
        role = %cfg.role,
        grpc = %cfg.listen_grpc,
        http = %cfg.listen_http,
        "node started"
    );

    match plan {
        Some(presence::StartPlan::Bootstrap) | None => {
            initialize_if_new(&raft, cfg.id, &cfg.initial_members).await;
        }
        Some(presence::StartPlan::Join) => info!(
            node_id = cfg.id,
            "empty data dir, not bootstrapping: waiting to be added with 'droverctl member add --id {}' and promoted with 'droverctl member promote {}'",
            cfg.id,
            cfg.id
        ),
    }

    let stopped = tokio::select! {
        _ = shutdown => None,
        why = fatal(&node) => Some(why),
    };
    if let Some(why) = &stopped {
        error!(
            "this node stopped being able to work: {why}; exiting so the node can be restarted \
             (free disk space or fix the data dir {} first if storage failed)",
            cfg.data_dir.display()
        );
    }
    info!("shutting down: stopping Raft, then the listeners");
    if let Err(e) = raft.shutdown().await {
        warn!(cause = %e, "Raft did not stop cleanly");
    }
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, async { (grpc.await, http.await) }).await {
        Ok((Ok(Ok(())), Ok(Ok(())))) => info!("stopped"),
        Ok((g, h)) => {
            warn!(grpc = ?g.map(|r| r.map_err(|e| e.to_string())), http = ?h.map(|r| r.map_err(|e| e.to_string())), "listeners stopped with errors")
        }
        Err(_) => warn!("listeners did not stop within {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
    match stopped {
        Some(why) => Err(RuntimeError::Stopped(why)),
        None => Ok(()),
    }
}

/// Resolves, with the reason, once the node can no longer work and must exit (its supervisor
/// restarts it): its Raft core stopped (a storage write failed: full disk, I/O error), or its
/// durability probe found that the store no longer takes writes ([`durability`]). A process
/// that lingers in either state still answers but can neither persist nor, as a leader, commit:
/// exiting lets the leader role move at once instead of in the middle of the next failover.
/// The simulator calls this too, and "exits" the node the same way.
pub async fn fatal(node: &NodeHandle) -> String {
    let mut metrics = node.raft.metrics();
    let mut fault = node.storage_fault.subscribe();
    loop {
        if let Err(fatal) = &metrics.borrow().running_state {
            return format!("Raft stopped on this node: {fatal}");
        }
        if let Some(why) = fault.borrow().clone() {
            return why;
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return "Raft metrics closed".to_string();
                }
            }
            _ = fault.changed() => {}
        }
    }
}

/// Who a node is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Raft node id.
    pub id: NodeId,
    /// Member name.
    pub name: String,
    /// Site.
    pub site: String,
    /// Controller or witness.
    pub role: Role,
}

/// The node's gRPC services behind the authorization layer.
pub type GrpcRouter = Router<tower::layer::util::Stack<AuthzLayer, tower::layer::util::Identity>>;

/// A node put together and running (Raft and the failover driver), with its gRPC services
/// ready to be served on whatever listener the caller has.
pub struct Assembled {
    /// The node's handle.
    pub node: NodeHandle,
    /// The Raft, admin and control services, behind the authorization layer.
    pub router: GrpcRouter,
}

/// Puts a node together from its stores and parts: starts Raft and the failover driver (whose
/// loops stop when `stop` turns true) and builds the gRPC services. A real node serves the
/// router on its mTLS listener; the simulator on a simulated one.
pub async fn assemble(
    identity: Identity,
    raft_config: Arc<openraft::Config>,
    (log_store, state_machine): (store::LogStore, store::StateMachine),
    parts: DriverParts,
    tls: Option<Arc<TlsMaterial>>,
    stop: watch::Receiver<bool>,
) -> Result<Assembled, RuntimeError> {
    let state = state_machine.state_handle();
    let durability_probe = log_store.durability_probe();
    let fence_marks = log_store.fence_marks();
    // A node restarted after it self-fenced keeps its marks: it neither renews nor serves at
    // that epoch, and reports itself fenced so the leader reactivates its site.
    let fenced = fence_marks.load().unwrap_or_else(|e| {
        warn!("cannot read this node's self-fence marks ({e}); starting without them");
        BTreeMap::new()
    });
    if !fenced.is_empty() {
        info!(?fenced, "this node self-fenced these services before it restarted");
    }
    let contacts = PeerContacts::default();
    let network = Network::new(identity.id, tls.clone(), contacts.clone(), parts.dialer.clone());
    let raft = Raft::new(identity.id, raft_config.clone(), network, log_store, state_machine)
        .await
        .map_err(|e| RuntimeError::Raft(e.to_string()))?;
    let election = crate::decide::ElectionTimings {
        heartbeat: Duration::from_millis(raft_config.heartbeat_interval),
        election_min: Duration::from_millis(raft_config.election_timeout_min),
        election_max: Duration::from_millis(raft_config.election_timeout_max),
    };
    let node = NodeHandle {
        id: identity.id,
        name: identity.name,
        site: identity.site.clone(),
        raft: raft.clone(),
        contacts,
        leader_contact: Default::default(),
        election,
        started: tokio::time::Instant::now(),
        standing_back: Default::default(),
        stood_back_notice: Default::default(),
        state,
        health: Default::default(),
        fenced: Arc::new(std::sync::Mutex::new(fenced.clone())),
        leases: Default::default(),
        // Certificates are checked whenever there are any; without TLS (--insecure-dev, the
        // simulator) there is nothing to check them against.
        authz: Authorizer::new(raft.clone(), tls.is_some()),
        own_health: Default::default(),
        gates: Default::default(),
        readiness: Default::default(),
        presence: Default::default(),
        storage_fault: durability::no_fault(),
    };
    let fence_tester = fence_test::FenceTester::new(
        node.clone(),
        identity.role,
        parts.actuator.clone(),
        control::PeerChannels::new(tls.clone(), parts.dialer.clone()),
    );
    durability::start(
        durability_probe,
        crate::decide::DurabilityParams::default(),
        parts.disk_writes,
        node.storage_fault.clone(),
        stop.clone(),
    );
    election::start(node.clone(), tls.clone(), parts.dialer.clone(), stop.clone());
    let control_service = control::start(
        node.clone(),
        identity.site,
        identity.role,
        parts,
        control::FenceRecord { marks: fence_marks, done: fenced },
        tls,
        stop,
    );
    let router = tonic::transport::Server::builder()
        // Long enough for the longest step a spec allows (RunStep); every client call carries
        // its own, shorter deadline.
        .timeout(crate::spec::MAX_TIMEOUT + Duration::from_secs(60))
        .concurrency_limit_per_connection(64)
        .layer(AuthzLayer(node.authz.clone()))
        .add_service(RaftService::server(node.clone()))
        .add_service(AdminService::server(node.clone(), fence_tester))
        .add_service(control_service);
    Ok(Assembled { node, router })
}

/// Proposes the initial membership on a node whose data dir is empty.
pub async fn initialize_if_new(raft: &Raft, id: NodeId, initial: &[(NodeId, Member)]) {
    match raft.is_initialized().await {
        Ok(true) => {
            info!("data dir holds cluster state; the initial_member list is ignored");
            return;
        }
        Ok(false) if initial.is_empty() => {
            info!("no cluster state and no initial_member list: waiting to be added with 'droverctl member add'");
            return;
        }
        Ok(false) => {}
        Err(e) => {
            warn!(cause = %e, "cannot read Raft state");
            return;
        }
    }
    let members: BTreeMap<NodeId, Member> = initial.iter().cloned().collect();
    match raft.initialize(members).await {
        Ok(()) => info!(node_id = id, members = initial.len(), "proposed the initial membership"),
        // Another initial member's vote or entries reached us first: the cluster is forming.
        Err(e) => info!(cause = %e, "initial membership not proposed by this node"),
    }
}
