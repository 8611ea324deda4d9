//! A cluster of real drover processes in one temp dir.
//!
//! ```text
//! <tmp>/certs/{ca,admin,operator,viewer,<name>}{,-key}.pem
//!                                                from `droverctl certs init` (admin certificates
//!                                                with roles admin, operator, viewer)
//! <tmp>/<name>/node.toml                         written by the harness
//! <tmp>/<name>/data/                             the node's data_dir (created by the node)
//! <tmp>/<name>/node.log                          the node's stdout+stderr, appended across restarts
//! ```
//!
//! Each node listens on its own loopback address 127.A.B.(10+i), with A.B derived from the test
//! name, the pid and the clock so tests running in parallel do not meet; ports come from binding
//! port 0. Every node runs in its own process group with PR_SET_PDEATHSIG, and `Drop` kills
//! each group, so no node outlives its test. On a panic the temp dir is kept and its path printed.
//!
//! A node can instead be placed in a network namespace with its own IP
//! ([`ClusterBuilder::in_netns`], see `netns.rs`); droverctl and the harness's HTTP requests
//! then run from a namespace given with [`ClusterBuilder::client_netns`]. Every node process
//! gets `DROVER_TEST_NODE=<name>` and `DROVER_TEST_NODE_SITE=<site>` in its environment, which
//! the runbook commands it runs inherit.

use std::collections::hash_map::DefaultHasher;
use std::fmt::{self, Display};
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

use crate::bins::{bins, release_bins, Bins};
use crate::http::{http_get, parse_metrics, Metrics};
use crate::netns::{command_in, in_netns};
use crate::process::{run_with_deadline, CmdOutput};
use crate::CTL_DEADLINE;

/// A node's Raft id (the `id` key of node.toml).
pub type NodeId = u64;

/// What a node is: a controller (`drover-node`) or a witness (`drover-witness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Controller,
    Witness,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Witness => "witness",
        }
    }
}

impl Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lines of each node log quoted in a failure report.
const LOG_TAIL_LINES: usize = 40;
/// A node asked to stop with SIGTERM must be gone within this.
const TERMINATE_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between two probes of a polling wait.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Calls `probe` every `interval` until it returns `Ok` or `timeout` passes; `Err` carries
/// the last thing it observed. The waits of [`Cluster`] and `Rig` are built on it.
pub(crate) fn poll<S, T>(
    state: &mut S,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut(&mut S) -> Result<T, String>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        let last = match probe(state) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if started.elapsed() >= timeout {
            return Err(last);
        }
        thread::sleep(interval);
    }
}
/// Timeout of one HTTP request to a node.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Ports of a node placed in a network namespace (each such node has its own IP).
pub const NETNS_GRPC_PORT: u16 = 7400;
pub const NETNS_HTTP_PORT: u16 = 7401;

#[derive(Debug, Clone)]
struct NodeDecl {
    name: String,
    site: String,
    role: Role,
    joins_later: bool,
    /// Listen IP and network namespace, when not on the harness's loopback.
    place: Option<(Ipv4Addr, String)>,
}

/// Declares the nodes of a cluster; [`ClusterBuilder::build`] writes certs and configs.
pub struct ClusterBuilder {
    test_name: String,
    nodes: Vec<NodeDecl>,
    ctl_netns: Option<String>,
    release: bool,
}

impl ClusterBuilder {
    /// A node that is an initial member. Ids are given in declaration order, from 1.
    pub fn node(mut self, name: &str, site: &str, role: Role) -> Self {
        self.nodes.push(NodeDecl {
            name: name.into(),
            site: site.into(),
            role,
            joins_later: false,
            place: None,
        });
        self
    }

    /// A node with no `[[initial_member]]` list, not started by [`Cluster::start`]: it joins
    /// later through `droverctl member add`.
    pub fn joiner(mut self, name: &str, site: &str, role: Role) -> Self {
        self.nodes.push(NodeDecl {
            name: name.into(),
            site: site.into(),
            role,
            joins_later: true,
            place: None,
        });
        self
    }

    /// Runs the already declared node `name` inside network namespace `netns`, listening on
    /// `ip` (gRPC on port [`NETNS_GRPC_PORT`], HTTP on [`NETNS_HTTP_PORT`]; the IP is the
    /// certificate's SAN). The address must already exist in that namespace.
    pub fn in_netns(mut self, name: &str, netns: &str, ip: Ipv4Addr) -> Self {
        let decl = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("in_netns({name}): no node declared with that name"));
        decl.place = Some((ip, netns.to_owned()));
        self
    }

    /// Runs droverctl and the harness's HTTP requests from inside `netns` (needed once the
    /// nodes live in namespaces the test process cannot reach).
    pub fn client_netns(mut self, netns: &str) -> Self {
        self.ctl_netns = Some(netns.to_owned());
        self
    }

    /// Runs the release build of the binaries ([`crate::bins::release_bins`]) instead of the
    /// test's own profile.
    pub fn release_binaries(mut self) -> Self {
        self.release = true;
        self
    }

    /// The five-node layout most tests use: prod-1, prod-2, dr-1, dr-2 and a witness (ids 1..=5).
    pub fn two_sites_and_witness(self) -> Self {
        self.node("prod-1", "prod", Role::Controller)
            .node("prod-2", "prod", Role::Controller)
            .node("dr-1", "dr", Role::Controller)
            .node("dr-2", "dr", Role::Controller)
            .node("witness", "witness", Role::Witness)
    }

    /// Creates the temp dir, issues certificates with `droverctl certs init` and writes each
    /// node's node.toml. Starts nothing.
    pub fn build(self) -> Cluster {
        let bins = if self.release { release_bins().clone() } else { bins().clone() };
        let dir = tempfile::Builder::new()
            .prefix(&format!("drover-{}-", self.test_name))
            .tempdir()
            .expect("create the test temp dir");
        let root = dir.path().to_path_buf();
        let base = loopback_base(&self.test_name);

        // Hold every listener until all ports are chosen so no two nodes get the same one.
        let mut held = Vec::new();
        let mut free_port = |ip: Ipv4Addr| {
            let l = TcpListener::bind((ip, 0))
                .unwrap_or_else(|e| panic!("bind {ip}:0 to find a free port: {e}"));
            let port = l.local_addr().expect("local_addr").port();
            held.push(l);
            port
        };
        let mut nodes = Vec::new();
        for (i, decl) in self.nodes.iter().enumerate() {
            let (grpc, http, netns) = match &decl.place {
                Some((ip, ns)) => (
                    SocketAddr::from((*ip, NETNS_GRPC_PORT)),
                    SocketAddr::from((*ip, NETNS_HTTP_PORT)),
                    Some(ns.clone()),
                ),
                None => {
                    let ip = Ipv4Addr::new(127, base.0, base.1, 10 + i as u8);
                    (
                        SocketAddr::from((ip, free_port(ip))),
                        SocketAddr::from((ip, free_port(ip))),
                        None,
                    )
                }
            };
            let node_dir = root.join(&decl.name);
            fs::create_dir_all(&node_dir).expect("create node dir");
            let certs = root.join("certs");
            nodes.push(Node {
                id: i as NodeId + 1,
                name: decl.name.clone(),
                site: decl.site.clone(),
                role: decl.role,
                joins_later: decl.joins_later,
                grpc,
                http,
                netns,
                tls: [
                    certs.join("ca.pem"),
                    certs.join(format!("{}.pem", decl.name)),
                    certs.join(format!("{}-key.pem", decl.name)),
                ],
                config: node_dir.join("node.toml"),
                data_dir: node_dir.join("data"),
                log: node_dir.join("node.log"),
                child: None,
                last_exit: None,
                starts: 0,
            });
        }
        drop(held);

        let cluster = Cluster {
            dir: Some(dir),
            root,
            bins,
            nodes,
            reported: false,
            loopback: base,
            ctl_netns: self.ctl_netns,
        };
        let specs: Vec<(String, Ipv4Addr)> =
            cluster.nodes.iter().map(|n| (n.name.clone(), ip_of(n.grpc))).collect();
        let certs_dir = cluster.certs_dir();
        cluster.certs_init(&certs_dir, &specs, "admin");
        for id in cluster.ids() {
            cluster.write_config(id);
        }
        cluster
    }
}

struct Node {
    id: NodeId,
    name: String,
    site: String,
    role: Role,
    joins_later: bool,
    grpc: SocketAddr,
    http: SocketAddr,
    /// The network namespace the node runs in (`None`: the test's own, on loopback).
    netns: Option<String>,
    /// ca, cert, key
    tls: [PathBuf; 3],
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// How the last run ended, when it ended without the harness asking.
    last_exit: Option<ExitStatus>,
    starts: u32,
}

/// A set of drover processes sharing certs, plus the means to drive and observe them.
pub struct Cluster {
    /// `None` once kept on failure.
    dir: Option<TempDir>,
    root: PathBuf,
    bins: Bins,
    nodes: Vec<Node>,
    /// A failure report with log tails was already produced (so `Drop` does not repeat it).
    reported: bool,
    /// (A, B) of this cluster's loopback addresses 127.A.B.x.
    loopback: (u8, u8),
    /// Where droverctl and the harness's HTTP requests run (`None`: the test's namespace).
    ctl_netns: Option<String>,
}

impl Cluster {
    /// Starts declaring a cluster; `test_name` names the temp dir and seeds the loopback addresses.
    pub fn builder(test_name: &str) -> ClusterBuilder {
        ClusterBuilder {
            test_name: test_name.into(),
            nodes: Vec::new(),
            ctl_netns: None,
            release: false,
        }
    }

    // ---- layout -------------------------------------------------------------------------

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn bins(&self) -> &Bins {
        &self.bins
    }
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }
    pub fn id_of(&self, name: &str) -> NodeId {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
            .id
    }
    pub fn name(&self, id: NodeId) -> &str {
        &self.node(id).name
    }
    pub fn site(&self, id: NodeId) -> &str {
        &self.node(id).site
    }
    pub fn role(&self, id: NodeId) -> Role {
        self.node(id).role
    }
    pub fn grpc_addr(&self, id: NodeId) -> SocketAddr {
        self.node(id).grpc
    }
    pub fn http_addr(&self, id: NodeId) -> SocketAddr {
        self.node(id).http
    }
    pub fn config_path(&self, id: NodeId) -> &Path {
        &self.node(id).config
    }
    pub fn data_dir(&self, id: NodeId) -> &Path {
        &self.node(id).data_dir
    }
    pub fn log_path(&self, id: NodeId) -> &Path {
        &self.node(id).log
    }
    /// The network namespace node `id` runs in, if any.
    pub fn netns(&self, id: NodeId) -> Option<&str> {
        self.node(id).netns.as_deref()
    }
    /// An address of this cluster's loopback range (127.A.B.`host`, host >= 100 is never a
    /// node's) with a port that was free just now: for a test's own servers (applications).
    pub fn loopback_addr(&self, host: u8) -> SocketAddr {
        assert!(host >= 100, "127.A.B.{host}: hosts below 100 belong to nodes");
        let ip = Ipv4Addr::new(127, self.loopback.0, self.loopback.1, host);
        let l = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("bind {ip}:0 to find a free port: {e}"));
        l.local_addr().expect("local_addr")
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap_or_else(|| panic!("no node with id {id}"))
    }
    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap_or_else(|| panic!("no node with id {id}"))
    }

    // ---- certificates and config --------------------------------------------------------

    /// Runs `droverctl certs init --out dir --node NAME=IP .. --admin ADMIN --admin
    /// operator=operator --admin viewer=viewer`: `admin` gets role admin, and admin
    /// certificates named `operator` and `viewer` carry those roles.
    pub fn certs_init(&self, dir: &Path, nodes: &[(String, Ipv4Addr)], admin: &str) {
        let mut cmd = Command::new(&self.bins.ctl);
        cmd.args(["certs", "init", "--out"]).arg(dir);
        for (name, ip) in nodes {
            cmd.arg("--node").arg(format!("{name}={ip}"));
        }
        cmd.args(["--admin", admin, "--admin", "operator=operator", "--admin", "viewer=viewer"]);
        let out = run_with_deadline(&mut cmd, CTL_DEADLINE);
        assert!(out.success(), "`{cmd:?}` failed: {}", out.describe());
        for (name, _) in nodes {
            for file in [format!("{name}.pem"), format!("{name}-key.pem")] {
                assert!(
                    dir.join(&file).is_file(),
                    "`droverctl certs init` did not write {}",
                    dir.join(file).display()
                );
            }
        }
        for file in [
            "ca.pem".to_owned(),
            "ca-key.pem".to_owned(),
            format!("{admin}.pem"),
            format!("{admin}-key.pem"),
        ] {
            assert!(
                dir.join(&file).is_file(),
                "`droverctl certs init` did not write {}",
                dir.join(file).display()
            );
        }
    }

    /// Points a node's `[tls]` at other files (e.g. certs from a foreign CA) and rewrites its config.
    pub fn set_tls(&mut self, id: NodeId, ca: &Path, cert: &Path, key: &Path) {
        self.node_mut(id).tls = [ca.into(), cert.into(), key.into()];
        self.write_config(id);
    }

    /// The node.toml the harness writes for `id` (initial members: every non-joiner node).
    pub fn config_text(&self, id: NodeId) -> String {
        let n = self.node(id);
        let q = |s: &str| serde_json::to_string(s).expect("quote a string"); // JSON strings are TOML basic strings
        let p = |p: &Path| q(&p.to_string_lossy());
        let mut t = String::new();
        t += &format!(
            "id = {}\nname = {}\nsite = {}\nrole = {}\n",
            n.id,
            q(&n.name),
            q(&n.site),
            q(n.role.as_str())
        );
        t += &format!("data_dir = {}\n\n", p(&n.data_dir));
        t += &format!(
            "[listen]\ngrpc = {}\nhttp = {}\n\n",
            q(&n.grpc.to_string()),
            q(&n.http.to_string())
        );
        t += &format!(
            "[tls]\nca = {}\ncert = {}\nkey = {}\n\n",
            p(&n.tls[0]),
            p(&n.tls[1]),
            p(&n.tls[2])
        );
        t +=
            "[raft]\nheartbeat_interval = \"250ms\"\nelection_timeout = [\"1250ms\", \"2500ms\"]\n";
        t += "snapshot_after_entries = 5000\nkeep_entries_after_snapshot = 1000\n";
        if !n.joins_later {
            for m in self.nodes.iter().filter(|m| !m.joins_later) {
                t += &format!(
                    "\n[[initial_member]]\nid = {}\nname = {}\nsite = {}\nrole = {}\naddress = {}\n",
                    m.id,
                    q(&m.name),
                    q(&m.site),
                    q(m.role.as_str()),
                    q(&m.grpc.to_string())
                );
            }
        }
        t
    }

    fn write_config(&self, id: NodeId) {
        let n = self.node(id);
        fs::write(&n.config, self.config_text(id))
            .unwrap_or_else(|e| panic!("write {}: {e}", n.config.display()));
    }

    // ---- processes ----------------------------------------------------------------------

    /// Starts every node that is not a joiner.
    pub fn start(&mut self) {
        for id in self.ids() {
            if !self.node(id).joins_later {
                self.start_node(id);
            }
        }
    }

    /// Spawns the node's binary (`drover-node` or `drover-witness`) with `run --config`; a
    /// joiner with `--rejoin` too, as its operator would (a node without `initial_member`
    /// starts on an empty data dir only with it; ignored once the data dir holds state).
    pub fn start_node(&mut self, id: NodeId) {
        if self.node(id).joins_later {
            self.start_node_with(id, &["--rejoin"]);
        } else {
            self.start_node_with(id, &[]);
        }
    }

    /// [`Cluster::start_node`] with extra arguments after `run --config <path>` (`--rejoin`).
    pub fn start_node_with(&mut self, id: NodeId, extra: &[&str]) {
        let bin = match self.node(id).role {
            Role::Controller => self.bins.node.clone(),
            Role::Witness => self.bins.witness.clone(),
        };
        let n = self.node_mut(id);
        assert!(n.child.is_none(), "start_node({id}): {} is already running", n.name);
        n.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", n.log.display()));
        let _ = writeln!(log, "=== harness: start #{} of {} (id {}) ===", n.starts, n.name, n.id);
        let mut cmd = command_in(n.netns.as_deref(), &bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&n.config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .env("RUST_BACKTRACE", "1")
            // Inherited by the runbook commands the node runs: lets a test's script record
            // which node executed a step.
            .env("DROVER_TEST_NODE", &n.name)
            .env("DROVER_TEST_NODE_SITE", &n.site)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The node dies with the test even if the test process is SIGKILLed (no Drop).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        n.child = Some(child);
        n.last_exit = None;
    }

    /// True while the node's process runs (records how it ended otherwise).
    pub fn is_running(&mut self, id: NodeId) -> bool {
        let n = self.node_mut(id);
        if let Some(child) = n.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                n.last_exit = Some(status);
                n.child = None;
            }
        }
        n.child.is_some()
    }

    /// SIGKILL to the node's process group; returns once it is reaped.
    pub fn kill_9(&mut self, id: NodeId) {
        let n = self.node_mut(id);
        let mut child =
            n.child.take().unwrap_or_else(|| panic!("kill_9({id}): {} is not running", n.name));
        signal_group(&child, libc::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends `sig` (e.g. `SIGSTOP`, `SIGCONT`) to the node's process group, which keeps
    /// running (or stalls) as the signal says.
    pub fn signal(&mut self, id: NodeId, sig: libc::c_int) {
        let n = self.node_mut(id);
        let child =
            n.child.as_ref().unwrap_or_else(|| panic!("signal({id}): {} is not running", n.name));
        signal_group(child, sig);
    }

    /// SIGTERM, then waits for the exit; returns the exit status. Panics (with log tails) if the
    /// node is still running after [`TERMINATE_DEADLINE`].
    pub fn terminate(&mut self, id: NodeId) -> ExitStatus {
        let mut child = {
            let n = self.node_mut(id);
            n.child.take().unwrap_or_else(|| panic!("terminate({id}): {} is not running", n.name))
        };
        signal_group(&child, libc::SIGTERM);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if started.elapsed() > TERMINATE_DEADLINE {
                signal_group(&child, libc::SIGKILL);
                let _ = child.wait();
                let name = self.name(id).to_owned();
                self.fail(format!(
                    "{name} (id {id}) did not exit within {TERMINATE_DEADLINE:?} of SIGTERM"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a stopped node again from its data dir (terminating it first if it runs).
    pub fn restart(&mut self, id: NodeId) {
        if self.is_running(id) {
            self.terminate(id);
        }
        self.start_node(id);
    }

    /// Runs the node's binary in the foreground with `run --config <path>` and returns what it
    /// left behind; for configs that must be rejected. Killed after `deadline`.
    pub fn run_node_once(&self, id: NodeId, config: &Path, deadline: Duration) -> CmdOutput {
        self.run_node_once_with(id, config, &[], deadline)
    }

    /// [`Cluster::run_node_once`] with extra arguments after `run --config <path>`.
    pub fn run_node_once_with(
        &self,
        id: NodeId,
        config: &Path,
        extra: &[&str],
        deadline: Duration,
    ) -> CmdOutput {
        let bin = match self.node(id).role {
            Role::Controller => &self.bins.node,
            Role::Witness => &self.bins.witness,
        };
        let mut cmd = command_in(self.node(id).netns.as_deref(), bin);
        cmd.arg("run").arg("--config").arg(config).args(extra);
        run_with_deadline(&mut cmd, deadline)
    }

    // ---- droverctl ----------------------------------------------------------------------

    /// `--endpoint` value listing the gRPC address of every running node.
    pub fn endpoints(&mut self) -> String {
        let ids: Vec<NodeId> = self.ids().into_iter().filter(|&id| self.is_running(id)).collect();
        ids.iter().map(|&id| self.grpc_addr(id).to_string()).collect::<Vec<_>>().join(",")
    }

    /// Runs droverctl with exactly `args` (no flags added).
    pub fn ctl_raw<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> CmdOutput {
        let mut cmd = command_in(self.ctl_netns.as_deref(), &self.bins.ctl);
        cmd.args(args);
        run_with_deadline(&mut cmd, CTL_DEADLINE)
    }

    /// droverctl against every running node, as the admin: `--endpoint .. --tls-dir <certs>
    /// --timeout 5s <args>`. Global flags go before `args`, so `args` may start with `--json`.
    pub fn ctl(&mut self, args: &[&str]) -> CmdOutput {
        let endpoints = self.endpoints();
        self.ctl_endpoint(&endpoints, args)
    }

    /// droverctl against one node only.
    pub fn ctl_at(&self, id: NodeId, args: &[&str]) -> CmdOutput {
        self.ctl_endpoint(&self.grpc_addr(id).to_string(), args)
    }

    /// `droverctl --json <args>` against the given nodes only (e.g. the side of a partition
    /// the client can reach: an unreachable endpoint costs a whole `--timeout`).
    pub fn ctl_json_via(&self, ids: &[NodeId], args: &[&str]) -> Result<Value, String> {
        let endpoints =
            ids.iter().map(|&id| self.grpc_addr(id).to_string()).collect::<Vec<_>>().join(",");
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_of(&all, self.ctl_endpoint(&endpoints, &all))
    }

    fn ctl_endpoint(&self, endpoints: &str, args: &[&str]) -> CmdOutput {
        let certs = self.certs_dir();
        let mut all: Vec<String> = vec![
            "--endpoint".into(),
            endpoints.into(),
            "--tls-dir".into(),
            certs.to_string_lossy().into_owned(),
            "--timeout".into(),
            "5s".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        self.ctl_raw(&all)
    }

    /// `droverctl --json <args>` parsed; `Err` carries the exit status and stderr.
    pub fn ctl_json(&mut self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all);
        json_of(&all, out)
    }

    /// `droverctl --json <args>` against one node only.
    pub fn ctl_json_at(&self, id: NodeId, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        json_of(&all, self.ctl_at(id, &all))
    }

    /// `droverctl --json status` (answered by the leader).
    pub fn status_json(&mut self) -> Result<Value, String> {
        self.ctl_json(&["status"])
    }

    /// `droverctl --json status --local` sent to node `id` (its own view).
    pub fn status_local(&self, id: NodeId) -> Result<Value, String> {
        self.ctl_json_at(id, &["status", "--local"])
    }

    /// `droverctl --json note add TEXT`: the note's (seq, log_index) once committed.
    pub fn note_add(&mut self, text: &str) -> Result<(u64, u64), String> {
        let v = self.ctl_json(&["note", "add", text])?;
        match (v["seq"].as_u64(), v["log_index"].as_u64()) {
            (Some(seq), Some(index)) => Ok((seq, index)),
            _ => Err(format!("`note add` printed {v}, expected {{\"seq\":..,\"log_index\":..}}")),
        }
    }

    /// Every history record, paging with `--after` (at most `max_pages` pages of 100).
    pub fn history_all(&mut self, max_pages: usize) -> Result<Vec<Value>, String> {
        let mut records: Vec<Value> = Vec::new();
        for _ in 0..max_pages {
            let after = records.last().map(|r| r["seq"].as_u64().unwrap_or(0).to_string());
            let mut args = vec!["history", "--limit", "100"];
            if let Some(after) = after.as_deref() {
                args.extend(["--after", after]);
            }
            let page = self.ctl_json(&args)?;
            let page = page["records"]
                .as_array()
                .ok_or_else(|| {
                    format!("`history` printed {page}, expected an object with \"records\": [..]")
                })?
                .clone();
            if page.is_empty() {
                return Ok(records);
            }
            if let (Some(last), Some(first)) = (records.last(), page.first()) {
                if first["seq"].as_u64() <= last["seq"].as_u64() {
                    return Err(format!(
                        "`history --after {}` returned seq {} again",
                        last["seq"], first["seq"]
                    ));
                }
            }
            records.extend(page);
        }
        Err(format!("history has more than {max_pages} pages of 100 records"))
    }

    // ---- HTTP ---------------------------------------------------------------------------

    /// `GET path` on the node's HTTP listener: (status, body).
    pub fn http_get(&self, id: NodeId, path: &str) -> Result<(u16, String), String> {
        self.http_get_addr(self.http_addr(id), path)
    }

    /// `GET path` on any address, from where the harness's client runs (see
    /// [`ClusterBuilder::client_netns`]).
    pub fn http_get_addr(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        match &self.ctl_netns {
            None => http_get(addr, path, HTTP_TIMEOUT),
            Some(ns) => {
                let path = path.to_owned();
                in_netns(ns, move || http_get(addr, &path, HTTP_TIMEOUT))?
            }
        }
    }

    /// The node's `/metrics`, parsed; `Err` unless it answered 200 with parseable text.
    pub fn metrics(&self, id: NodeId) -> Result<Metrics, String> {
        match self.http_get(id, "/metrics")? {
            (200, body) => parse_metrics(&body),
            (code, body) => {
                Err(format!("GET /metrics on {} -> {code}: {}", self.name(id), body.trim()))
            }
        }
    }

    // ---- waiting ------------------------------------------------------------------------

    /// Polls `probe` until it returns `Ok` or `timeout` passes; then panics with `what`, the
    /// last `Err` and the tail of every node's log.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut(&mut Cluster) -> Result<T, String>,
    ) -> T {
        match poll(self, timeout, POLL_INTERVAL, probe) {
            Ok(v) => v,
            Err(last) => self.fail(format!(
                "timed out after {timeout:?} waiting for {what}\nlast observed: {last}"
            )),
        }
    }

    /// Waits until `droverctl status` names a leader and returns its id.
    pub fn wait_for_leader(&mut self, timeout: Duration) -> NodeId {
        self.wait_for("a leader (droverctl status with a non-null leader_id)", timeout, |c| {
            let s = c.status_json()?;
            s["leader_id"].as_u64().ok_or_else(|| format!("status without a leader: {s}"))
        })
    }

    /// Panics with `msg`, every node's state and log tail; keeps the temp dir.
    pub fn fail(&mut self, msg: impl Display) -> ! {
        let report = self.report();
        self.reported = true;
        panic!("{msg}\n{report}");
    }

    /// Node states and log tails, for failure messages.
    pub fn report(&mut self) -> String {
        let mut out = format!("test dir (kept): {}\n", self.root.display());
        for id in self.ids() {
            let running = self.is_running(id);
            let n = self.node(id);
            let state = match (running, n.last_exit, n.starts) {
                (true, _, _) => "running".to_owned(),
                (false, _, 0) => "never started".to_owned(),
                (false, Some(status), _) => format!("EXITED on its own: {status}"),
                (false, None, _) => "stopped by the harness".to_owned(),
            };
            let place = n.netns.as_deref().map(|ns| format!(", netns {ns}")).unwrap_or_default();
            out += &format!(
                "--- {} (id {}, {} {}, grpc {}, http {}{place}): {state}; last {LOG_TAIL_LINES} lines of {} ---\n{}\n",
                n.name,
                n.id,
                n.site,
                n.role,
                n.grpc,
                n.http,
                n.log.display(),
                tail(&n.log, LOG_TAIL_LINES)
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                signal_group(&child, libc::SIGKILL);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            if !self.reported {
                self.reported = true;
                eprintln!("{}", self.report());
            }
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("drover test dir kept for inspection: {}", kept.display());
            }
        }
    }
}

/// `droverctl` output parsed as JSON, or an error naming the command and what it printed.
fn json_of(args: &[&str], out: CmdOutput) -> Result<Value, String> {
    if !out.success() {
        return Err(format!("droverctl {}: {}", args.join(" "), out.describe()));
    }
    serde_json::from_str(&out.stdout).map_err(|e| {
        format!("droverctl {}: stdout is not JSON ({e}): {:?}", args.join(" "), out.stdout)
    })
}

fn signal_group(child: &Child, signal: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscalls on a pid we spawned (and that is its own process group leader).
    unsafe {
        if libc::kill(-pid, signal) != 0 {
            libc::kill(pid, signal);
        }
    }
}

fn ip_of(addr: SocketAddr) -> Ipv4Addr {
    match addr {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => unreachable!("the harness only uses IPv4 loopback"),
    }
}

/// (A, B) of 127.A.B.x: distinct per test and per process, never 127.0.0.x.
fn loopback_base(test_name: &str) -> (u8, u8) {
    let mut h = DefaultHasher::new();
    test_name.hash(&mut h);
    std::process::id().hash(&mut h);
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0).hash(&mut h);
    let v = h.finish();
    (1 + (v % 254) as u8, ((v >> 8) % 256) as u8)
}

/// The last `lines` lines of a file (reading at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return "(no log file)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
