//! `drover-node demo`: a real 5-process cluster on this machine doing a real failover.
//!
//! It creates a dev CA and certificates, writes a node.toml per member (2 prod, 2 dr, 1 witness
//! on 127.0.0.11-15), starts the processes, applies a cluster spec whose runbooks are real
//! commands (a small script that starts and stops each site's stand-in application and writes
//! a ledger), starts the prod application, then kills it. drover detects the outage from a
//! quorum of observers, fences prod, activates dr, verifies it and commits, and the demo shows
//! each step as it happens. Everything is removed at the end unless `--keep` is given.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover::client::{render, Client, ClientConfig};
use drover::tls::certs::{self, AdminSubject, CertSubject};
use drover::tls::AdminRole;
use drover_proto::v1 as pb;

const MEMBERS: [(u64, &str, &str, &str); 5] = [
    (1, "prod-1", "prod", "controller"),
    (2, "prod-2", "prod", "controller"),
    (3, "dr-1", "dr", "controller"),
    (4, "dr-2", "dr", "controller"),
    (5, "witness", "witness", "witness"),
];

/// How long the demo waits for any one thing before giving up.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

struct Proc {
    id: u64,
    name: &'static str,
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
    grpc: SocketAddr,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.exe)
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Demo {
    dir: PathBuf,
    keep: bool,
    procs: Vec<Proc>,
    tls_dir: PathBuf,
    apps: Vec<(&'static str, SocketAddr)>,
    lb: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.terminate();
        }
        for (site, _) in &self.apps {
            if let Ok(pid) = fs::read_to_string(self.dir.join(format!("app-{site}.pid"))) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) on the demo application's pid, written by the demo's script.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
        if self.keep {
            println!("\nkept {} (certs, node configs, data dirs, logs)", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn run(keep: bool, runs: u32, default_policy: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = runs <= 1;
    let mut all = Vec::new();
    for run in 1..=runs.max(1) {
        let mut demo = match setup(keep, default_policy) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: demo setup failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        match rt.block_on(script(&mut demo, verbose)) {
            Ok(t) => {
                if verbose {
                    println!("\nphases: {}", t.describe());
                    println!("\ndemo finished: prod failed over to dr, fenced first, verified, committed.");
                } else {
                    println!("run {run:>2}/{runs}: {}", t.describe());
                }
                all.push(t);
            }
            Err(e) => {
                eprintln!("error: demo failed: {e}");
                eprintln!("node logs are in {}", demo.dir.display());
                demo.keep = true;
                return ExitCode::FAILURE;
            }
        }
    }
    if !verbose {
        print_summary(&all);
    }
    ExitCode::SUCCESS
}

/// Where the time from the outage to a verified failover went, in ms (leader's wall clock).
#[derive(Debug, Clone, Copy, Default)]
struct Timings {
    detection: i64,
    fence: i64,
    activate: i64,
    move_traffic: i64,
    verify: i64,
    total: i64,
}

impl Timings {
    const NAMES: [&'static str; 6] =
        ["detection", "fence+lease", "activate", "move traffic", "verify", "total"];

    fn values(&self) -> [i64; 6] {
        [self.detection, self.fence, self.activate, self.move_traffic, self.verify, self.total]
    }

    fn describe(&self) -> String {
        Self::NAMES
            .iter()
            .zip(self.values())
            .map(|(n, v)| format!("{n} {v} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// From the committed workflow's step timestamps.
    fn from_workflow(w: &pb::WorkflowStatus, outage_unix_ms: i64) -> Timings {
        let span = |pick: &dyn Fn(&pb::WorkflowStepStatus) -> bool| {
            let steps: Vec<_> = w.steps.iter().filter(|s| pick(s)).collect();
            let start = steps.iter().map(|s| s.started_at_unix_ms).min().unwrap_or(0);
            let end = steps.iter().map(|s| s.finished_at_unix_ms).max().unwrap_or(0);
            (end - start).max(0)
        };
        let traffic =
            |s: &pb::WorkflowStepStatus| matches!(s.kind.as_str(), "http" | "dns" | "haproxy");
        let end = w.steps.iter().map(|s| s.finished_at_unix_ms).max().unwrap_or(outage_unix_ms);
        Timings {
            detection: w.started_at_unix_ms - outage_unix_ms,
            fence: span(&|s| s.stage == "fence" || s.stage == "lease_wait"),
            activate: span(&|s| s.stage == "activate" && !traffic(s)),
            move_traffic: span(&|s| s.stage == "activate" && traffic(s)),
            verify: span(&|s| s.stage == "verify"),
            total: end - outage_unix_ms,
        }
    }
}

fn print_summary(all: &[Timings]) {
    println!("\n{} runs, ms from the outage (leader's wall clock):", all.len());
    let mut rows = vec![vec!["PHASE".to_string(), "MEDIAN".into(), "MAX".into()]];
    for (i, name) in Timings::NAMES.iter().enumerate() {
        let mut v: Vec<i64> = all.iter().map(|t| t.values()[i]).collect();
        v.sort_unstable();
        let median = if v.is_empty() { 0 } else { v[v.len() / 2] };
        rows.push(vec![
            name.to_string(),
            median.to_string(),
            v.last().copied().unwrap_or(0).to_string(),
        ]);
    }
    print!("{}", render::table(&rows));
}

fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on {ip}: {e}"))
}

fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.exists().then_some(p)
}

fn setup(keep: bool, default_policy: bool) -> Result<Demo, String> {
    let dir = std::env::temp_dir().join(format!("drover-demo-{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tls_dir = dir.join("certs");
    let node_exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let witness_exe = sibling("drover-witness").unwrap_or_else(|| node_exe.clone());

    let mut addrs = Vec::new();
    for (id, ..) in MEMBERS {
        let ip = Ipv4Addr::new(127, 0, 0, 10 + id as u8);
        addrs.push((ip, free_port(ip)?, free_port(ip)?));
    }
    let subjects: Vec<CertSubject> = MEMBERS
        .iter()
        .zip(&addrs)
        .map(|((_, name, ..), (ip, ..))| CertSubject {
            name: name.to_string(),
            hosts: vec![ip.to_string()],
        })
        .collect();
    let admin = AdminSubject { name: "admin".into(), role: AdminRole::Admin };
    certs::init(&tls_dir, &subjects, &[admin], false).map_err(|e| e.to_string())?;

    let mut initial = String::new();
    for ((id, name, site, role), (ip, grpc, _)) in MEMBERS.iter().zip(&addrs) {
        initial.push_str(&format!(
            "\n[[initial_member]]\nid = {id}\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"{role}\"\naddress = \"{ip}:{grpc}\"\n"
        ));
    }
    let mut procs = Vec::new();
    for ((id, name, site, role), (ip, grpc, http)) in MEMBERS.iter().zip(&addrs) {
        let config = dir.join(format!("{name}.toml"));
        let text = format!(
            "id = {id}\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"{role}\"\ndata_dir = \"{data}\"\n\n\
             [listen]\ngrpc = \"{ip}:{grpc}\"\nhttp = \"{ip}:{http}\"\n\n\
             [tls]\nca = \"{tls}/ca.pem\"\ncert = \"{tls}/{name}.pem\"\nkey = \"{tls}/{name}-key.pem\"\n\n\
             [raft]\nheartbeat_interval = \"250ms\"\nelection_timeout = [\"1250ms\", \"2500ms\"]\n{initial}",
            data = dir.join(format!("data-{name}")).display(),
            tls = tls_dir.display(),
        );
        fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let exe = if *role == "witness" { witness_exe.clone() } else { node_exe.clone() };
        procs.push(Proc {
            id: *id,
            name,
            exe,
            config,
            log: dir.join(format!("{name}.log")),
            grpc: SocketAddr::from((*ip, *grpc)),
            child: None,
        });
    }
    let apps = vec![
        (
            "prod",
            SocketAddr::from((
                Ipv4Addr::new(127, 0, 0, 21),
                free_port(Ipv4Addr::new(127, 0, 0, 21))?,
            )),
        ),
        (
            "dr",
            SocketAddr::from((
                Ipv4Addr::new(127, 0, 0, 22),
                free_port(Ipv4Addr::new(127, 0, 0, 22))?,
            )),
        ),
    ];
    let lb_ip = Ipv4Addr::new(127, 0, 0, 20);
    let lb = SocketAddr::from((lb_ip, free_port(lb_ip)?));
    write_app_script(&dir, &node_exe, &apps)?;
    fs::write(dir.join("cluster.toml"), cluster_toml(&dir, &apps, lb, default_policy))
        .map_err(|e| format!("cannot write cluster.toml: {e}"))?;
    Ok(Demo { dir, keep, procs, tls_dir, apps, lb })
}

fn client(demo: &Demo, only: &[u64]) -> Result<Client, String> {
    let endpoints = demo
        .procs
        .iter()
        .filter(|p| only.is_empty() || only.contains(&p.id))
        .map(|p| p.grpc.to_string())
        .collect();
    Client::new(ClientConfig {
        endpoints,
        ca: Some(demo.tls_dir.join("ca.pem")),
        cert: Some(demo.tls_dir.join("admin.pem")),
        key: Some(demo.tls_dir.join("admin-key.pem")),
        server_name: None,
        timeout: Duration::from_secs(2),
        insecure: false,
    })
    .map_err(|e| e.to_string())
}

async fn status(c: &Client, local: bool) -> Option<pb::StatusReply> {
    c.call(|mut a| async move { a.status(pb::StatusRequest { local }).await }).await.ok()
}

/// Polls until `ok` holds for the status answered through `c`.
async fn wait_for(
    c: &Client,
    what: &str,
    ok: impl Fn(&pb::StatusReply) -> bool,
) -> Result<pb::StatusReply, String> {
    let deadline = Instant::now() + STEP_DEADLINE;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = status(c, false).await {
            if ok(&s) {
                return Ok(s);
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("timed out after {STEP_DEADLINE:?} waiting for {what}; last status: {last:?}"))
}

fn name_of(s: &pb::StatusReply, id: u64) -> String {
    s.members.iter().find(|m| m.id == id).map_or_else(|| format!("node {id}"), |m| m.name.clone())
}

/// The runbook script: `app.sh start|stop SITE [why]`. Idempotent, as steps must be.
fn write_app_script(
    dir: &Path,
    exe: &Path,
    apps: &[(&'static str, SocketAddr)],
) -> Result<(), String> {
    let mut cases = String::new();
    for (site, addr) in apps {
        cases.push_str(&format!("  {site}) addr={addr} ;;\n"));
    }
    let script = format!(
        r#"#!/bin/sh
# Demo runbook: start or stop a site's stand-in application; every call is logged in ledger.txt
# with a millisecond timestamp from this machine's clock and the epoch drover passed.
set -u
action=$1; site=$2; why=${{3:-}}
dir='{dir}'
case $site in
{cases}  *) echo "unknown site $site" >&2; exit 2 ;;
esac
pidfile="$dir/app-$site.pid"
# Running: the process exists and is not a zombie (an exited app waits, as a zombie, until
# whatever adopted it reaps it, which can take seconds).
running() {{
  [ -f "$pidfile" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$(cat "$pidfile")/status" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}}
case $action in
start)
  if ! running; then
    nohup '{exe}' demo-app --listen "$addr" --site "$site" >>"$dir/app-$site.log" 2>&1 &
    echo $! >"$pidfile"
  fi ;;
stop)
  if running; then
    kill "$(cat "$pidfile")"
    i=0; while running && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
  fi
  rm -f "$pidfile" ;;
*) echo "usage: app.sh start|stop SITE" >&2; exit 2 ;;
esac
echo "$(date +%s%3N) $site $action${{why:+ ($why)}} epoch=${{DROVER_EPOCH:-none}}" >>"$dir/ledger.txt"
"#,
        dir = dir.display(),
        exe = exe.display(),
    );
    let path = dir.join("app.sh");
    fs::write(&path, script).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())
}

fn cluster_toml(
    dir: &Path,
    apps: &[(&'static str, SocketAddr)],
    lb: SocketAddr,
    default_policy: bool,
) -> String {
    let script = dir.join("app.sh");
    let script = script.display();
    // The demo's policy is faster than the defaults, so the demo is short; the benchmark can
    // use the defaults (no [policy] table, default check interval and timeout).
    let timing =
        if default_policy { "" } else { "  interval = \"500ms\"\n  timeout = \"400ms\"\n" };
    let policy = if default_policy {
        "# [policy]: all defaults\n"
    } else {
        "[policy]\ndown_after = \"2s\"\nup_after = \"5s\"\nlease_ttl = \"8s\"\nmax_clock_drift = 0.01\nself_fence_grace = \"2s\"\ncooldown = \"30m\"\nauto_failover = true\ncommit = \"auto\"\n"
    };
    let mut checks = String::new();
    for (site, addr) in apps {
        checks.push_str(&format!(
            "  [[service.check]]\n  site = \"{site}\"\n  kind = \"http\"\n  url = \"http://{addr}/healthz\"\n{timing}"
        ));
    }
    format!(
        r#"# The demo's cluster spec: one service, "webshop", active in prod, protected by dr.
[[site]]
name = "prod"
[[site]]
name = "dr"
[[site]]
name = "witness"
witness = true

{policy}
[[service]]
name = "webshop"
initial_active = "prod"
{checks}
  [[service.runbook.prod.fence]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "stop", "prod", "fence"]
  timeout = "5s"
  on_failure = "continue"          # unreachable prod: fall back to the lease wait

  [[service.runbook.prod.on_lease_lost]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "stop", "prod", "lease lost"]
  timeout = "2s"

  [[service.runbook.dr.activate]]
  kind = "exec"
  run_on = "dr"
  command = ["{script}", "start", "dr"]
  timeout = "10s"
  retries = 1

  [[service.runbook.dr.activate]]      # move traffic: tell the (stand-in) load balancer
  kind = "http"
  url = "http://{lb}/route"
  method = "POST"
  body = '{{"service": "{{service}}", "to": "{{to_site}}", "epoch": "{{epoch}}"}}'
  expect_status = 200
  timeout = "5s"

  [[service.runbook.dr.verify]]
  kind = "probe"
  checks = "dr"
  timeout = "20s"
"#
    )
}

/// The demo's stand-in application.
pub fn app(listen: SocketAddr, site: String) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let body = format!("ok: webshop served from {site}\n");
        let app =
            axum::Router::new().route("/healthz", axum::routing::get(move || async move { body }));
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(drover::runtime::cli::shutdown_signal());
        match serve.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run_script(demo: &Demo, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new(demo.dir.join("app.sh"))
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run app.sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("app.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn service(s: &pb::StatusReply) -> Option<&pb::ServiceStatus> {
    s.services.first()
}

/// Prints only in the verbose (single run) demo.
macro_rules! say {
    ($verbose:expr, $($arg:tt)*) => { if $verbose { println!($($arg)*) } };
}

async fn script(demo: &mut Demo, verbose: bool) -> Result<Timings, String> {
    say!(verbose, "== drover demo: 2 prod nodes, 2 dr nodes and a witness, on this machine ==");
    say!(verbose, "working dir {}\n", demo.dir.display());
    let lb = start_stand_in_lb(demo.lb).await?;
    let started = Instant::now();
    for p in &mut demo.procs {
        p.start()?;
        say!(
            verbose,
            "started {:<8} {} (gRPC {}, mTLS)",
            p.name,
            p.exe.file_name().and_then(|f| f.to_str()).unwrap_or("?"),
            p.grpc
        );
    }
    let all = client(demo, &[])?;
    let s = wait_for(&all, "a leader with all 5 members", |s| {
        s.leader_id.is_some() && s.members.len() == 5
    })
    .await?;
    say!(
        verbose,
        "leader {} elected after {} ms\n",
        name_of(&s, s.leader_id.unwrap_or(0)),
        started.elapsed().as_millis()
    );

    run_script(demo, &["start", "prod", "initial deployment"]).await?;
    say!(
        verbose,
        "prod application started at http://{}/healthz (dr's stays stopped: a cold standby)",
        demo.apps[0].1
    );
    let text = fs::read_to_string(demo.dir.join("cluster.toml")).map_err(|e| e.to_string())?;
    let req = pb::ConfigApplyRequest { text, expected_version: Some(0), author: String::new() };
    let r = all
        .call(|mut a| {
            let req = req.clone();
            async move { a.config_apply(req).await }
        })
        .await
        .map_err(|e| e.to_string())?;
    say!(
        verbose,
        "cluster spec version {} committed (see {}/cluster.toml)",
        r.version,
        demo.dir.display()
    );
    let s = wait_for(&all, "prod up and dr down as seen by a quorum", |s| {
        service(s).is_some_and(|v| {
            v.sites.iter().any(|h| h.site == "dr" && h.health == "down")
                && v.sites.iter().any(|h| h.site == "prod" && h.health == "up")
        })
    })
    .await?;
    if verbose {
        print!("\n{}", render::services_table(&s));
    }

    say!(verbose, "\n-- outage: the prod application dies (kill -9) --");
    let pid = fs::read_to_string(demo.dir.join("app-prod.pid")).map_err(|e| e.to_string())?;
    let pid: i32 = pid.trim().parse().map_err(|e| format!("bad pid file: {e}"))?;
    // SAFETY: kill(2) on the demo application's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let outage = Instant::now();
    let outage_unix_ms = drover::pb::unix_now_ms();
    let mut seen: Vec<String> = Vec::new();
    let deadline = outage + Duration::from_secs(60);
    let final_status = loop {
        if Instant::now() > deadline {
            return Err("the failover did not complete within 60 s; see the node logs".into());
        }
        if let Some(s) = status(&all, false).await {
            if let Some(v) = service(&s) {
                let mut lines = Vec::new();
                for h in &v.sites {
                    lines.push(format!("detector: {} is {}", h.site, h.health));
                }
                lines.push(format!(
                    "phase {} (epoch {}, lease {})",
                    v.phase,
                    v.epoch,
                    if v.lease_site.is_empty() { "revoked" } else { &v.lease_site }
                ));
                if let Some(w) = &v.workflow {
                    for (i, st) in w.steps.iter().enumerate() {
                        if st.status != "pending" {
                            lines.push(format!(
                                "step {} {} {} on {}: {}{}",
                                i + 1,
                                st.stage,
                                st.kind,
                                st.site,
                                st.status,
                                if st.detail.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", st.detail)
                                }
                            ));
                        }
                    }
                }
                for l in lines {
                    if !seen.contains(&l) {
                        say!(verbose, "{:>6.1}s  {l}", outage.elapsed().as_secs_f64());
                        seen.push(l);
                    }
                }
                if v.phase == "failed_over" && v.active_site == "dr" {
                    break s;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    say!(
        verbose,
        "\nfailover completed {:.1} s after the outage\n",
        outage.elapsed().as_secs_f64()
    );
    if verbose {
        print!("{}", render::services_table(&final_status));
    }

    let routed = lb.lock().map(|r| r.clone()).unwrap_or_default();
    say!(verbose, "\nstand-in load balancer now routes to {} (epoch {})", routed.0, routed.1);
    let body = http_get(demo.apps[1].1)
        .await
        .unwrap_or_else(|e| format!("(dr application does not answer: {e})"));
    say!(verbose, "\nGET http://{}/healthz -> {}", demo.apps[1].1, body.trim());
    let ledger = fs::read_to_string(demo.dir.join("ledger.txt")).unwrap_or_default();
    say!(verbose, "\nledger written by the runbook steps (ms timestamps, one clock):\n{ledger}");
    let h = all
        .call(|mut a| async move {
            a.history(pb::HistoryRequest { after_seq: 0, limit: 100, ..Default::default() }).await
        })
        .await
        .map_err(|e| e.to_string())?;
    say!(verbose, "replicated history:");
    if verbose {
        print!("{}", render::history_table(&h));
    }
    let w = service(&final_status)
        .and_then(|v| v.workflow.clone())
        .ok_or("no workflow in the final status")?;
    Ok(Timings::from_workflow(&w, outage_unix_ms))
}

/// The demo's stand-in load balancer: the "move traffic" webhook POSTs the new site and
/// epoch here; it refuses an epoch older than the one it already follows (a fencing token).
async fn start_stand_in_lb(addr: SocketAddr) -> Result<Arc<Mutex<(String, u64)>>, String> {
    use axum::http::StatusCode;
    let routed = Arc::new(Mutex::new(("prod".to_string(), 1u64)));
    let state = routed.clone();
    let app = axum::Router::new().route(
        "/route",
        axum::routing::post(move |body: String| {
            let state = state.clone();
            async move {
                let v: serde_json::Value = match serde_json::from_str(&body) {
                    Ok(v) => v,
                    Err(e) => return (StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
                };
                let site = v["to"].as_str().unwrap_or_default().to_string();
                let epoch = v["epoch"].as_str().and_then(|e| e.parse::<u64>().ok()).unwrap_or(0);
                let mut r = state.lock().unwrap_or_else(|p| p.into_inner());
                if epoch < r.1 {
                    return (StatusCode::CONFLICT, format!("stale epoch {epoch} < {}", r.1));
                }
                *r = (site.clone(), epoch);
                (StatusCode::OK, format!("routing to {site} at epoch {epoch}\n"))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(routed)
}

async fn http_get(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut buf))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}
