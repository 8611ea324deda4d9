//! `drover-node demo`: a real 5-process cluster on this machine, no setup needed.
//!
//! It creates a dev CA and certificates, writes a node.toml per member (2 prod, 2 dr, 1 witness
//! on 127.0.0.11-15), starts the processes, and then shows what drover's consensus layer
//! guarantees: a leader is elected, entries commit, the leader is killed with SIGKILL, a new
//! leader takes over within the election timeout, the killed node restarts from its data dir
//! and catches up, and every acknowledged entry is still there. Everything is removed at the
//! end unless `--keep` is given.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use drover::client::{render, Client, ClientConfig};
use drover::tls::certs::{self, CertSubject};
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

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
}

impl Drop for Demo {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.terminate();
        }
        if self.keep {
            println!("\nkept {} (certs, node configs, data dirs, logs)", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn run(keep: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut demo = match setup(keep) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: demo setup failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(script(&mut demo)) {
        Ok(()) => {
            println!("\ndemo finished: leader failover without losing a committed entry.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: demo failed: {e}");
            eprintln!("node logs are in {}", demo.dir.display());
            demo.keep = true;
            ExitCode::FAILURE
        }
    }
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

fn setup(keep: bool) -> Result<Demo, String> {
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
    certs::init(&tls_dir, &subjects, &["admin".to_string()], false).map_err(|e| e.to_string())?;

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
             [raft]\nheartbeat_interval = \"100ms\"\nelection_timeout = [\"1000ms\", \"2000ms\"]\n{initial}",
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
    Ok(Demo { dir, keep, procs, tls_dir })
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

async fn note(c: &Client, text: &str) -> Result<pb::AddNoteReply, String> {
    let req = pb::AddNoteRequest { author: "demo".into(), text: text.into() };
    c.call(|mut a| {
        let req = req.clone();
        async move { a.add_note(req).await }
    })
    .await
    .map_err(|e| e.to_string())
}

fn name_of(s: &pb::StatusReply, id: u64) -> String {
    s.members.iter().find(|m| m.id == id).map_or_else(|| format!("node {id}"), |m| m.name.clone())
}

async fn script(demo: &mut Demo) -> Result<(), String> {
    println!("== drover demo: 2 prod nodes, 2 dr nodes and a witness, on this machine ==");
    println!("working dir {}\n", demo.dir.display());
    let started = Instant::now();
    for p in &mut demo.procs {
        p.start()?;
        println!(
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
    let leader = s.leader_id.unwrap_or(0);
    println!(
        "\nleader elected after {} ms: {}\n",
        started.elapsed().as_millis(),
        name_of(&s, leader)
    );

    let mut acked = Vec::new();
    for i in 1..=3 {
        let text = format!("entry {i} before the leader fails");
        let r = note(&all, &text).await?;
        acked.push(text);
        println!("committed note #{} at log index {}", r.seq, r.log_index);
    }
    let s = wait_for(&all, "replication", |s| s.members.iter().all(|m| m.lag == Some(0))).await?;
    print!("\n{}", render::status_table(&s));

    let victim =
        demo.procs.iter().position(|p| p.id == leader).ok_or("leader is not a demo process")?;
    println!("\n-- kill -9 the leader {} --", demo.procs[victim].name);
    let killed_at = Instant::now();
    demo.procs[victim].kill9();
    let others: Vec<u64> = demo.procs.iter().map(|p| p.id).filter(|id| *id != leader).collect();
    let survivors = client(demo, &others)?;
    let s =
        wait_for(&survivors, "a new leader", |s| s.leader_id.is_some_and(|l| l != leader)).await?;
    let new_leader = s.leader_id.unwrap_or(0);
    println!(
        "new leader {} elected {} ms after the kill (term {})",
        name_of(&s, new_leader),
        killed_at.elapsed().as_millis(),
        s.term
    );
    let text = "entry 4, written while the old leader is down".to_string();
    let r = note(&survivors, &text).await?;
    acked.push(text);
    println!("committed note #{} at log index {} with 4 of 5 members up", r.seq, r.log_index);

    println!("\n-- restart {} from its data dir --", demo.procs[victim].name);
    demo.procs[victim].start()?;
    let target = r.log_index;
    let s = wait_for(&all, "the restarted node to catch up", |s| {
        s.members.iter().any(|m| m.id == leader && m.matched_index.is_some_and(|i| i >= target))
    })
    .await?;
    println!("{} caught up to log index {}\n", name_of(&s, leader), target);
    print!("{}", render::status_table(&s));

    let h = all
        .call(
            |mut a| async move { a.history(pb::HistoryRequest { after_seq: 0, limit: 100 }).await },
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("\nreplicated history:");
    print!("{}", render::history_table(&h));
    for text in &acked {
        if !h.records.iter().any(|r| &r.text == text) {
            return Err(format!("acknowledged entry {text:?} is missing from the history"));
        }
    }
    println!("\nall {} acknowledged entries are present.", acked.len());
    Ok(())
}
